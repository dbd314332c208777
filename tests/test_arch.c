/* Tests for host/model/arch.c and the loaders that follow it: the family
 * table and its Hugging Face names, the canonical tensor list with q/k and
 * sandwich norms, GGUF metadata of gemma2/gemma3 as llama.cpp's converter
 * writes it (with llama.cpp's values where a file is silent), Gemma's +1
 * norm offset for safetensors and none for GGUF, the multimodal layouts, and
 * the new tensors' shape checks. Every model here is written by the test:
 * d_model 8, 2 heads of 8, 1 KV head, d_mlp 12, 16 tokens, F32. Then
 * GPT-2, GPT-NeoX, Phi-3 and OLMo-2 (2 heads of 4) in both formats, each
 * laid out as its writer does (fused, interleaved, transposed), every
 * canonical tensor read back equal to the one truth. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "model/arch.h"
#include "model/model.h"
#include "model/weight_source.h"
#include "patchbay.h"
#include "test_util.h"

/* ---- writing small models ---------------------------------------------- */

/* GGUF metadata under construction. */
typedef struct gguf_keys {
    tu_bytes b;
    uint64_t n;
} gguf_keys;

static void kv_u32(gguf_keys *k, const char *key, uint32_t v) {
    tu_put_str(&k->b, key);
    tu_put_u32(&k->b, 4);
    tu_put_u32(&k->b, v);
    k->n++;
}
static void kv_f32(gguf_keys *k, const char *key, float v) {
    tu_put_str(&k->b, key);
    tu_put_u32(&k->b, 6);
    tu_put(&k->b, &v, 4);
    k->n++;
}
static void kv_str(gguf_keys *k, const char *key, const char *v) {
    tu_put_str(&k->b, key);
    tu_put_u32(&k->b, 8);
    tu_put_str(&k->b, v);
    k->n++;
}
static void kv_bools(gguf_keys *k, const char *key, const uint8_t *v, int n) {
    tu_put_str(&k->b, key);
    tu_put_u32(&k->b, 9);
    tu_put_u32(&k->b, 7);
    tu_put_u64(&k->b, (uint64_t)n);
    tu_put(&k->b, v, (size_t)n);
    k->n++;
}

/* How a written model departs from its config. */
typedef struct variant {
    const char *skip;   /* canonical name left out */
    const char *resize; /* canonical name of a vector written 2 longer */
    const char *body;   /* safetensors: what "model." is written as */
    const char *head;   /* safetensors: prefix of lm_head.weight */
} variant;

/* Stored element i of canonical tensor t: norms near 0.25 (so 1 + w is
 * told apart from w), everything else small. */
static float stored_value(const char *name, uint64_t i, int t) {
    if (pb_arch_is_norm(name))
        return 0.25f + 0.01f * (float)((i + (uint64_t)t) % 5);
    return 0.02f * (float)((i * 7 + (uint64_t)t * 3) % 11) - 0.1f;
}

/* Tensor t of the canonical list as written: info (shape changed for
 * v->resize) and its values (malloc'd); 0 when v skips it. */
static int written_tensor(const pb_model_config *c, const variant *v, int t, pb_tensor_info *info, float **data) {
    pb_weight_list_at(c, t, info);
    if (v->skip && strcmp(info->name, v->skip) == 0)
        return 0;
    if (v->resize && strcmp(info->name, v->resize) == 0) {
        info->shape[0] += 2;
        info->n_elements = (uint64_t)(info->shape[0] * info->shape[1]);
    }
    *data = malloc(sizeof(float) * info->n_elements);
    assert_non_null(*data);
    for (uint64_t i = 0; i < info->n_elements; i++)
        (*data)[i] = stored_value(info->name, i, t);
    return 1;
}

/* A GGUF of cfg's tensors with the given metadata (consumed). */
static void write_gguf(const char *path, const pb_model_config *c, const variant *v, gguf_keys *keys) {
    tu_bytes infos = {0}, data = {0}, file = {0};
    uint64_t n_tensors = 0;
    for (int t = 0; t < pb_weight_list_count(c); t++) {
        pb_tensor_info info;
        float *x;
        if (!written_tensor(c, v, t, &info, &x))
            continue;
        tu_put_str(&infos, info.name);
        tu_put_u32(&infos, (uint32_t)info.n_dims);
        for (int d = info.n_dims - 1; d >= 0; d--) /* ggml: contiguous dimension first */
            tu_put_u64(&infos, (uint64_t)info.shape[d]);
        tu_put_u32(&infos, 0); /* F32 */
        tu_put_u64(&infos, data.n);
        tu_put(&data, x, sizeof(float) * info.n_elements);
        while (data.n % 32)
            tu_put(&data, "", 1);
        free(x);
        n_tensors++;
    }
    tu_put(&file, "GGUF", 4);
    tu_put_u32(&file, 3);
    tu_put_u64(&file, n_tensors);
    tu_put_u64(&file, keys->n);
    tu_put(&file, keys->b.data, keys->b.n);
    tu_put(&file, infos.data, infos.n);
    while (file.n % 32)
        tu_put(&file, "", 1);
    tu_put(&file, data.data, data.n);
    assert_int_equal(tu_write_file(path, file.data, file.n), 0);
    free(keys->b.data);
    free(infos.data);
    free(data.data);
    free(file.data);
}

/* The metadata llama.cpp's converter writes for every family. */
static gguf_keys base_keys(const pb_model_config *c) {
    gguf_keys k = {{0}, 0};
    char key[96];
    kv_str(&k, "general.architecture", c->arch);
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", c->arch, suffix), key)
    kv_u32(&k, ARCH_KEY("block_count"), (uint32_t)c->n_layers);
    kv_u32(&k, ARCH_KEY("context_length"), (uint32_t)c->context_length);
    kv_u32(&k, ARCH_KEY("embedding_length"), (uint32_t)c->d_model);
    kv_u32(&k, ARCH_KEY("feed_forward_length"), (uint32_t)c->d_mlp);
    kv_u32(&k, ARCH_KEY("attention.head_count"), (uint32_t)c->n_heads);
    kv_u32(&k, ARCH_KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    kv_u32(&k, ARCH_KEY("attention.key_length"), (uint32_t)c->head_dim);
    kv_u32(&k, ARCH_KEY("attention.value_length"), (uint32_t)c->head_dim);
    kv_f32(&k, ARCH_KEY("attention.layer_norm_rms_epsilon"), c->rms_eps);
#undef ARCH_KEY
    return k;
}

/* The small model's hyperparameters in family `arch` (its traits set as
 * the loader would, so the canonical list has the family's tensors). */
static pb_model_config small_config(const char *arch, int n_layers) {
    const pb_arch *a = pb_arch_find(arch);
    assert_non_null(a);
    pb_model_config c = {.n_layers = n_layers,
                         .d_model = 8,
                         .n_heads = 2,
                         .n_kv_heads = 1,
                         .head_dim = 8,
                         .d_mlp = 12,
                         .vocab_size = 16,
                         .context_length = 64,
                         .rms_eps = 1e-6f,
                         .rope_theta = 10000.0f,
                         .tied_embeddings = 1,
                         .qk_norm = a->qk_norm,
                         .sandwich_norm = a->sandwich_norm,
                         .has_qkv_bias = a->qkv_bias};
    snprintf(c.arch, sizeof c.arch, "%s", arch);
    return c;
}

/* A Hugging Face folder of cfg's tensors: model.safetensors (names through
 * pb_weight_hf_name and v's layout) and config.json text. */
static void write_folder(const char *dir, const pb_model_config *c, const variant *v, const char *config_json) {
    tu_bytes header = {0}, data = {0}, file = {0};
    tu_put(&header, "{", 1);
    for (int t = 0; t < pb_weight_list_count(c); t++) {
        pb_tensor_info info;
        float *x;
        if (!written_tensor(c, v, t, &info, &x))
            continue;
        char hf[160], name[200], entry[400];
        assert_int_equal(pb_weight_hf_name(c, info.name, hf, sizeof hf), PB_OK);
        if (strncmp(hf, "model.", 6) == 0)
            snprintf(name, sizeof name, "%s%s", v->body ? v->body : "model.", hf + 6);
        else
            snprintf(name, sizeof name, "%s%s", v->head ? v->head : "", hf);
        int len = info.n_dims == 1
                      ? snprintf(entry, sizeof entry, "%s\"%s\": {\"dtype\": \"F32\", \"shape\": [%lld], ",
                                 header.n > 1 ? ", " : "", name, (long long)info.shape[0])
                      : snprintf(entry, sizeof entry, "%s\"%s\": {\"dtype\": \"F32\", \"shape\": [%lld, %lld], ",
                                 header.n > 1 ? ", " : "", name, (long long)info.shape[0], (long long)info.shape[1]);
        tu_put(&header, entry, (size_t)len);
        len = snprintf(entry, sizeof entry, "\"data_offsets\": [%zu, %zu]}", data.n,
                       data.n + sizeof(float) * info.n_elements);
        tu_put(&header, entry, (size_t)len);
        tu_put(&data, x, sizeof(float) * info.n_elements);
        free(x);
    }
    tu_put(&header, "}", 1);
    while (header.n % 8)
        tu_put(&header, " ", 1);
    tu_put_u64(&file, header.n);
    tu_put(&file, header.data, header.n);
    tu_put(&file, data.data, data.n);
    char path[512];
    tu_path(path, sizeof path, dir, "model.safetensors");
    assert_int_equal(tu_write_file(path, file.data, file.n), 0);
    tu_path(path, sizeof path, dir, "config.json");
    assert_int_equal(tu_write_text(path, config_json), 0);
    free(header.data);
    free(data.data);
    free(file.data);
}

static const char *const gemma3_json =
    "{\"model_type\": \"gemma3_text\", \"hidden_size\": 8, \"intermediate_size\": 12, \"num_hidden_layers\": 2,"
    " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 8, \"max_position_embeddings\": 64,"
    " \"rms_norm_eps\": 1e-06, \"vocab_size\": 16, \"sliding_window\": 4, \"query_pre_attn_scalar\": 8}";

static pb_weight_source *open_ok(const char *path) {
    pb_weight_source *src = NULL;
    if (pb_weight_source_open(&src, path) != PB_OK)
        fail_msg("opening %s: %s", path, pb_last_error());
    return src;
}

static void expect_open_refused(const char *path, pb_status status, const char *needle) {
    pb_weight_source *src = NULL;
    pb_status got = pb_weight_source_open(&src, path);
    if (got != status || !strstr(pb_last_error(), needle))
        fail_msg("%s: got %s \"%s\", expected %s containing \"%s\"", path, pb_status_name(got), pb_last_error(),
                 pb_status_name(status), needle);
    assert_null(src);
}

/* ---- the table ----------------------------------------------------------- */

/* pb_arch_supported lists the table in order; every family answers to its
 * names; the Hugging Face names follow each family's mapping. */
static void test_table(void **state) {
    (void)state;
    char list[256];
    snprintf(list, sizeof list, "%s", pb_arch_supported());
    int n = 0;
    for (char *save = NULL, *name = strtok_r(list, ", ", &save); name; name = strtok_r(NULL, ", ", &save), n++) {
        const pb_arch *a = pb_arch_find(name);
        assert_non_null(a);
        for (const char *const *t = a->hf_types; *t; t++)
            assert_ptr_equal(pb_arch_find_hf(*t), a);
        assert_non_null(pb_arch_hf_layer_name(a, "ffn_down.weight"));
    }
    assert_int_equal(n, 11);
    assert_null(pb_arch_find("phi2"));
    assert_null(pb_arch_find_hf("gpt_neox_japanese"));
    assert_ptr_equal(pb_arch_find_hf("gemma3"), pb_arch_find("gemma3")); /* multimodal */
    assert_true(pb_arch_find("llama")->gguf_permuted_qk && pb_arch_find("mistral")->gguf_permuted_qk);
    assert_false(pb_arch_find("qwen3")->gguf_permuted_qk || pb_arch_find("gemma3")->gguf_permuted_qk);

    static const struct {
        const char *arch, *canonical, *hf;
    } names[] = {
        {"llama", "blk.2.ffn_norm.weight", "model.layers.2.post_attention_layernorm.weight"},
        {"gemma", "blk.2.ffn_norm.weight", "model.layers.2.post_attention_layernorm.weight"},
        {"gemma2", "blk.2.ffn_norm.weight", "model.layers.2.pre_feedforward_layernorm.weight"},
        {"gemma2", "blk.2.post_attention_norm.weight", "model.layers.2.post_attention_layernorm.weight"},
        {"gemma3", "blk.0.post_ffw_norm.weight", "model.layers.0.post_feedforward_layernorm.weight"},
        {"gemma3", "blk.1.attn_k_norm.weight", "model.layers.1.self_attn.k_norm.weight"},
        {"qwen3", "blk.1.attn_q_norm.weight", "model.layers.1.self_attn.q_norm.weight"},
        {"gemma3", "output_norm.weight", "model.norm.weight"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        pb_model_config c = small_config(names[i].arch, 3);
        char hf[128];
        assert_int_equal(pb_weight_hf_name(&c, names[i].canonical, hf, sizeof hf), PB_OK);
        assert_string_equal(hf, names[i].hf);
    }
    pb_model_config llama = small_config("llama", 3);
    char hf[128];
    assert_int_equal(pb_weight_hf_name(&llama, "blk.0.post_ffw_norm.weight", hf, sizeof hf), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "'blk.0.post_ffw_norm.weight' has no Hugging Face name in llama"));
    assert_string_equal(pb_arch_assumptions(&llama), "");
    pb_model_config gemma3 = small_config("gemma3", 3);
    assert_non_null(strstr(pb_arch_assumptions(&gemma3), "(L + 1) % 6 == 0"));
}

/* A Gemma-3 layer lists 13 tensors: the q/k norms (head_dim) after the
 * projections and the sandwich norms (d_model) around the MLP, with q, k, v
 * and gate, up still consecutive (the fused views need them adjacent). */
static void test_tensor_list(void **state) {
    (void)state;
    pb_model_config c = small_config("gemma3", 2);
    assert_int_equal(pb_weight_list_count(&c), 2 + 2 * 13);
    static const char *const layer[] = {
        "attn_norm.weight",    "attn_q.weight",      "attn_k.weight",      "attn_v.weight",
        "attn_q_norm.weight",  "attn_k_norm.weight", "attn_output.weight", "post_attention_norm.weight",
        "ffn_norm.weight",     "ffn_gate.weight",    "ffn_up.weight",      "ffn_down.weight",
        "post_ffw_norm.weight"};
    for (int k = 0; k < 13; k++) {
        pb_tensor_info info;
        char want[96];
        snprintf(want, sizeof want, "blk.1.%s", layer[k]);
        pb_weight_list_at(&c, 2 + 13 + k, &info);
        assert_string_equal(info.name, want);
        assert_int_equal(pb_weight_list_find(&c, want), 2 + 13 + k);
        if (strstr(layer[k], "_q_norm") || strstr(layer[k], "_k_norm"))
            assert_true(info.n_dims == 1 && info.shape[0] == c.head_dim);
        if (strstr(layer[k], "post_"))
            assert_true(info.n_dims == 1 && info.shape[0] == c.d_model);
    }
    pb_model_config qwen3 = small_config("qwen3", 2);
    assert_int_equal(pb_weight_list_count(&qwen3), 2 + 2 * 11);
    pb_model_config llama = small_config("llama", 2);
    assert_int_equal(pb_weight_list_count(&llama), 2 + 2 * 9);
    assert_int_equal(pb_weight_list_find(&llama, "blk.0.attn_q_norm.weight"), -1);
}

/* ---- GGUF metadata -------------------------------------------------------- */

/* Writes <scratch>/NAME.gguf of cfg with keys and opens it. */
static pb_weight_source *gguf_source(void **state, const char *name, const pb_model_config *c, gguf_keys *keys) {
    char path[512], file[64];
    snprintf(file, sizeof file, "%s.gguf", name);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, file);
    variant none = {0};
    write_gguf(path, c, &none, keys);
    return open_ok(path);
}

/* Gemma-3 as llama.cpp's converter writes it. Without
 * attention.sliding_window no layer slides (llama.cpp's rule); with it,
 * the period is 6, the sliding layers' base 10000 unless
 * rope.freq_base_swa says otherwise, and the global layers keep the rope
 * scaling. Queries scale by head_dim^-1/2 below the 27B's 62 layers. */
static void test_gguf_gemma3(void **state) {
    pb_model_config c = small_config("gemma3", 7);
    gguf_keys k = base_keys(&c);
    pb_weight_source *src = gguf_source(state, "plain", &c, &k);
    const pb_model_config *got = &src->cfg;
    assert_string_equal(got->arch, "gemma3");
    assert_true(got->qk_norm && got->sandwich_norm && got->tied_embeddings);
    assert_int_equal(got->activation, PB_ACTIVATION_GELU_TANH);
    assert_true(got->embed_scale == (float)sqrt(8.0) && got->attn_scale == (float)pow(8.0, -0.5));
    assert_true(got->sliding_window == 0 && got->rope_theta_local == 0.0f && got->rope_theta == 10000.0f);
    assert_true(got->attn_softcap == 0.0f && got->final_softcap == 0.0f);
    pb_weight_source_free(src);

    k = base_keys(&c);
    kv_u32(&k, "gemma3.attention.sliding_window", 4);
    kv_f32(&k, "gemma3.rope.freq_base", 1000000.0f);
    kv_str(&k, "gemma3.rope.scaling.type", "linear");
    kv_f32(&k, "gemma3.rope.scaling.factor", 8.0f);
    src = gguf_source(state, "window", &c, &k);
    got = &src->cfg;
    assert_true(got->sliding_window == 4 && got->sliding_period == 6 && got->rope_theta_local == 10000.0f);
    assert_true(got->rope_theta == 1000000.0f && got->rope_scaling == PB_ROPE_SCALING_LINEAR);
    assert_true(got->rope_factor == 8.0f);
    assert_true(pb_layer_is_sliding(got, 4) && !pb_layer_is_sliding(got, 5) && pb_layer_is_sliding(got, 6));
    pb_weight_source_free(src);

    static const uint8_t pattern[7] = {1, 1, 1, 1, 1, 0, 1};
    k = base_keys(&c);
    kv_u32(&k, "gemma3.attention.sliding_window", 4);
    kv_f32(&k, "gemma3.rope.freq_base_swa", 5000.0f);
    kv_bools(&k, "gemma3.attention.sliding_window_pattern", pattern, 7);
    kv_f32(&k, "gemma3.final_logit_softcapping", 30.0f);
    src = gguf_source(state, "pattern", &c, &k);
    assert_true(src->cfg.rope_theta_local == 5000.0f && src->cfg.sliding_period == 6);
    assert_true(src->cfg.final_softcap == 30.0f);
    pb_weight_source_free(src);

    k = base_keys(&c);
    kv_u32(&k, "gemma3.attention.sliding_window", 4);
    kv_u32(&k, "gemma3.attention.sliding_window_pattern", 2);
    src = gguf_source(state, "period", &c, &k);
    assert_true(src->cfg.sliding_period == 2 && !pb_layer_is_sliding(&src->cfg, 1));
    pb_weight_source_free(src);
}

/* Gemma-2: llama.cpp's window 4096 and softcaps 50 / 30 when the file is
 * silent, layer 0 sliding; the 46-layer 27B scales queries by
 * (d_model / n_heads)^-1/2 instead of head_dim^-1/2. */
static void test_gguf_gemma2(void **state) {
    pb_model_config c = small_config("gemma2", 2);
    gguf_keys k = base_keys(&c);
    pb_weight_source *src = gguf_source(state, "small", &c, &k);
    const pb_model_config *got = &src->cfg;
    assert_true(got->sandwich_norm && !got->qk_norm);
    assert_true(got->sliding_window == 4096 && got->sliding_period == 2 && got->rope_theta_local == 0.0f);
    assert_true(pb_layer_is_sliding(got, 0) && !pb_layer_is_sliding(got, 1));
    assert_true(got->attn_softcap == 50.0f && got->final_softcap == 30.0f);
    assert_true(got->attn_scale == (float)pow(8.0, -0.5));
    pb_weight_source_free(src);

    c = small_config("gemma2", 46);
    k = base_keys(&c);
    kv_f32(&k, "gemma2.attn_logit_softcapping", 20.0f);
    kv_u32(&k, "gemma2.attention.sliding_window", 16);
    src = gguf_source(state, "large", &c, &k);
    assert_true(src->cfg.attn_scale == 0.5f); /* (8 / 2)^-1/2 */
    assert_true(src->cfg.attn_softcap == 20.0f && src->cfg.sliding_window == 16);
    pb_weight_source_free(src);
}

static void test_gguf_refused(void **state) {
    char path[512];
    variant none = {0};
    pb_model_config c = small_config("llama", 2);
    snprintf(c.arch, sizeof c.arch, "phi2");
    gguf_keys k = base_keys(&c);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "phi2.gguf");
    write_gguf(path, &c, &none, &k);
    expect_open_refused(path, PB_ERR_UNSUPPORTED,
                        "phi2.gguf: architecture 'phi2' is not supported (supported: llama, mistral, qwen2, qwen3, "
                        "gemma, gemma2, gemma3, gpt2, gptneox, phi3, olmo2)");

    c = small_config("gemma3", 7);
    static const uint8_t pattern[7] = {1, 0, 1, 1, 1, 0, 1};
    k = base_keys(&c);
    kv_u32(&k, "gemma3.attention.sliding_window", 4);
    kv_bools(&k, "gemma3.attention.sliding_window_pattern", pattern, 7);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "pattern.gguf");
    write_gguf(path, &c, &none, &k);
    expect_open_refused(path, PB_ERR_UNSUPPORTED,
                        "gemma3.attention.sliding_window_pattern: layer 1 is global, but gemma3 models have layer L "
                        "global iff (L + 1) % 6 == 0");
}

/* ---- loading: the norm offset, layouts, shape checks ------------------------ */

/* <scratch>/NAME, created. */
static void scratch_folder(void **state, const char *name, char *dir, size_t size) {
    tu_path(dir, size, ((tu_scratch *)*state)->dir, name);
    assert_int_equal(mkdir(dir, 0700), 0);
}

static pb_model *load_ok(const char *path) {
    pb_load_options o = {.n_threads = 1, .backend = PB_BACKEND_REFERENCE};
    pb_model *m = NULL;
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    return m;
}

/* The vector the model holds for canonical tensor `name` equals the file's
 * stored values plus offset, exactly (fp32). */
static void expect_vector(const pb_model *m, const float *field, const char *name, float offset) {
    pb_tensor_info info;
    int t = pb_weight_list_find(&m->cfg, name);
    assert_true(t >= 0);
    pb_weight_list_at(&m->cfg, t, &info);
    float got[64];
    assert_true(info.n_elements <= 64 && field != NULL);
    assert_int_equal(m->backend->ops->download(m->backend, got, field, sizeof(float) * info.n_elements), PB_OK);
    for (uint64_t i = 0; i < info.n_elements; i++)
        if (got[i] != stored_value(name, i, t) + offset)
            fail_msg("%s[%llu] = %g, expected %g + %g", name, (unsigned long long)i, (double)got[i],
                     (double)stored_value(name, i, t), (double)offset);
}

static void expect_norms(const pb_model *m, float offset) {
    const pb_layer_weights *L = &m->layers[1];
    expect_vector(m, L->attn_norm, "blk.1.attn_norm.weight", offset);
    expect_vector(m, L->q_norm, "blk.1.attn_q_norm.weight", offset);
    expect_vector(m, L->k_norm, "blk.1.attn_k_norm.weight", offset);
    expect_vector(m, L->attn_post_norm, "blk.1.post_attention_norm.weight", offset);
    expect_vector(m, L->mlp_norm, "blk.1.ffn_norm.weight", offset);
    expect_vector(m, L->mlp_post_norm, "blk.1.post_ffw_norm.weight", offset);
    expect_vector(m, m->final_norm, "output_norm.weight", offset);
    /* the new vectors leave q, k, v and gate, up adjacent: one GEMM each */
    assert_non_null(L->w_qkv.data);
    assert_non_null(L->w_gate_up.data);
}

/* The same stored Gemma-3 values: a GGUF (llama.cpp's converter already
 * added Gemma's 1) loads them as they are, a safetensors checkpoint (w as
 * transformers stores it) loads 1 + w for every norm weight, and the
 * matrices agree. */
static void test_norm_offset(void **state) {
    pb_model_config c = small_config("gemma3", 2);
    char gguf[512], folder[512];
    tu_path(gguf, sizeof gguf, ((tu_scratch *)*state)->dir, "m.gguf");
    gguf_keys k = base_keys(&c);
    kv_u32(&k, "gemma3.attention.sliding_window", 4);
    variant none = {0};
    write_gguf(gguf, &c, &none, &k);
    scratch_folder(state, "hf", folder, sizeof folder);
    write_folder(folder, &c, &none, gemma3_json);
    pb_model *g = load_ok(gguf), *s = load_ok(folder);
    expect_norms(g, 0.0f);
    expect_norms(s, 1.0f);
    float a[16 * 8], b[16 * 8];
    assert_int_equal(pb_model_weights_download(g, a, g->layers[1].wq.data, g->layers[1].wq.dtype, 16 * 8), PB_OK);
    assert_int_equal(pb_model_weights_download(s, b, s->layers[1].wq.data, s->layers[1].wq.dtype, 16 * 8), PB_OK);
    assert_memory_equal(a, b, sizeof a);
    assert_true(g->cfg.attn_scale == s->cfg.attn_scale && g->cfg.embed_scale == s->cfg.embed_scale);
    assert_true(g->cfg.sliding_window == s->cfg.sliding_window && g->cfg.sliding_period == s->cfg.sliding_period);
    pb_model_free(g);
    pb_model_free(s);
}

/* Gemma3ForConditionalGeneration checkpoints: the text tower under
 * model.language_model. (transformers 5) or language_model.model.
 * (earlier), settings under text_config; both load their text model. */
static void test_multimodal_layouts(void **state) {
    static const variant layouts[] = {{.body = "model.language_model."},
                                      {.body = "language_model.model.", .head = "language_model."}};
    static const char *const q_norm[] = {"model.language_model.layers.0.self_attn.q_norm.weight",
                                         "language_model.model.layers.0.self_attn.q_norm.weight"};
    char config[1024];
    snprintf(config, sizeof config,
             "{\"model_type\": \"gemma3\", \"architectures\": "
             "[\"Gemma3ForConditionalGeneration\"], \"text_config\": %s}",
             gemma3_json);
    pb_model_config c = small_config("gemma3", 2);
    for (int i = 0; i < 2; i++) {
        char folder[512], name[16];
        snprintf(name, sizeof name, "mm%d", i);
        scratch_folder(state, name, folder, sizeof folder);
        write_folder(folder, &c, &layouts[i], config);
        pb_weight_source *src = open_ok(folder);
        pb_tensor_info info;
        assert_int_equal(pb_weight_source_find(src, "blk.0.attn_q_norm.weight", &info), PB_OK);
        assert_string_equal(info.file_name, q_norm[i]);
        pb_weight_source_free(src);
        pb_model *m = load_ok(folder);
        expect_norms(m, 1.0f);
        pb_model_free(m);
    }
}

static void expect_load_refused(const char *path, const char *needle) {
    pb_model *m = NULL;
    pb_status status = pb_model_load(&m, path, NULL);
    if (status != PB_ERR_FORMAT || !strstr(pb_last_error(), needle))
        fail_msg("%s: got %s \"%s\", expected PB_ERR_FORMAT containing \"%s\"", path, pb_status_name(status),
                 pb_last_error(), needle);
    assert_null(m);
}

/* The new tensors are shape-checked before compute, and a missing one is
 * named as the file names it. */
static void test_new_tensor_shapes(void **state) {
    pb_model_config c = small_config("gemma3", 2);
    char path[512];
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "k_norm.gguf");
    gguf_keys k = base_keys(&c);
    variant resized = {.resize = "blk.1.attn_k_norm.weight"};
    write_gguf(path, &c, &resized, &k);
    expect_load_refused(path, "tensor 'blk.1.attn_k_norm.weight' has shape (10) (1 dims) but the hyperparameters "
                              "need (8)");

    scratch_folder(state, "post", path, sizeof path);
    variant post = {.resize = "blk.0.post_attention_norm.weight"};
    write_folder(path, &c, &post, gemma3_json);
    expect_load_refused(path, "tensor 'model.layers.0.post_attention_layernorm.weight' has shape (10)");

    scratch_folder(state, "missing", path, sizeof path);
    variant missing = {.skip = "blk.0.post_ffw_norm.weight"};
    write_folder(path, &c, &missing, gemma3_json);
    expect_load_refused(path, "missing tensor 'model.layers.0.post_feedforward_layernorm.weight'");
}

/* ---- GPT-2, GPT-NeoX, Phi-3, OLMo-2: both formats ------------------------- */

/* A tensor as a file holds it: row-major (rows, cols), cols 1 for a vector. */
typedef struct file_tensor {
    char name[128];
    int n_dims;
    int64_t rows, cols;
    float *data;
} file_tensor;

typedef struct file_tensors {
    file_tensor t[128];
    int n;
} file_tensors;

/* Adds a copy of x (rows, cols) under name, stored transposed (cols, rows)
 * when transposed (a Conv1D weight). */
static void ft_add(file_tensors *f, const char *name, int n_dims, int64_t rows, int64_t cols, const float *x,
                   int transposed) {
    assert_true(f->n < 128);
    file_tensor *t = &f->t[f->n++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->n_dims = n_dims;
    t->rows = transposed ? cols : rows;
    t->cols = transposed ? rows : cols;
    t->data = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(t->data);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t c = 0; c < cols; c++)
            t->data[transposed ? c * rows + r : r * cols + c] = x[r * cols + c];
}

static void ft_free(file_tensors *f) {
    for (int i = 0; i < f->n; i++)
        free(f->t[i].data);
    f->n = 0;
}

static void gguf_file(const char *path, gguf_keys *keys, file_tensors *f) {
    tu_bytes infos = {0}, data = {0}, file = {0};
    for (int i = 0; i < f->n; i++) {
        const file_tensor *t = &f->t[i];
        tu_put_str(&infos, t->name);
        tu_put_u32(&infos, (uint32_t)t->n_dims);
        if (t->n_dims == 2)
            tu_put_u64(&infos, (uint64_t)t->cols); /* ggml: contiguous dimension first */
        tu_put_u64(&infos, (uint64_t)t->rows);
        tu_put_u32(&infos, 0);
        tu_put_u64(&infos, data.n);
        tu_put(&data, t->data, sizeof(float) * (size_t)(t->rows * t->cols));
        while (data.n % 32)
            tu_put(&data, "", 1);
    }
    tu_put(&file, "GGUF", 4);
    tu_put_u32(&file, 3);
    tu_put_u64(&file, (uint64_t)f->n);
    tu_put_u64(&file, keys->n);
    tu_put(&file, keys->b.data, keys->b.n);
    tu_put(&file, infos.data, infos.n);
    while (file.n % 32)
        tu_put(&file, "", 1);
    tu_put(&file, data.data, data.n);
    assert_int_equal(tu_write_file(path, file.data, file.n), 0);
    free(keys->b.data);
    free(infos.data);
    free(data.data);
    free(file.data);
}

static void safetensors_folder(const char *dir, file_tensors *f, const char *config_json) {
    tu_bytes header = {0}, data = {0}, file = {0};
    tu_put(&header, "{", 1);
    for (int i = 0; i < f->n; i++) {
        const file_tensor *t = &f->t[i];
        char entry[400], shape[64];
        if (t->n_dims == 1)
            snprintf(shape, sizeof shape, "[%lld]", (long long)t->rows);
        else
            snprintf(shape, sizeof shape, "[%lld, %lld]", (long long)t->rows, (long long)t->cols);
        size_t bytes_n = sizeof(float) * (size_t)(t->rows * t->cols);
        int len = snprintf(entry, sizeof entry,
                           "%s\"%s\": {\"dtype\": \"F32\", \"shape\": %s, \"data_offsets\": [%zu, %zu]}", i ? ", " : "",
                           t->name, shape, data.n, data.n + bytes_n);
        tu_put(&header, entry, (size_t)len);
        tu_put(&data, t->data, bytes_n);
    }
    tu_put(&header, "}", 1);
    while (header.n % 8)
        tu_put(&header, " ", 1);
    tu_put_u64(&file, header.n);
    tu_put(&file, header.data, header.n);
    tu_put(&file, data.data, data.n);
    char path[512];
    tu_path(path, sizeof path, dir, "model.safetensors");
    assert_int_equal(tu_write_file(path, file.data, file.n), 0);
    tu_path(path, sizeof path, dir, "config.json");
    assert_int_equal(tu_write_text(path, config_json), 0);
    free(header.data);
    free(data.data);
    free(file.data);
}

/* Every canonical tensor's values, distinct everywhere (a misplaced row or
 * a missed transpose cannot match by chance). */
typedef struct truth {
    pb_model_config cfg;
    float *values[160];
} truth;

static float truth_value(int t, uint64_t i) {
    return (float)((int)((i * 2654435761u + (uint64_t)t * 40503u) % 2001u) - 1000) / 4096.0f;
}

static void truth_make(truth *w, const pb_model_config *c) {
    w->cfg = *c;
    int n = pb_weight_list_count(c);
    assert_true(n <= 160);
    for (int t = 0; t < n; t++) {
        pb_tensor_info info;
        pb_weight_list_at(c, t, &info);
        w->values[t] = malloc(sizeof(float) * info.n_elements);
        assert_non_null(w->values[t]);
        for (uint64_t i = 0; i < info.n_elements; i++)
            w->values[t][i] = truth_value(t, i);
    }
}

static void truth_free(truth *w) {
    for (int t = 0; t < pb_weight_list_count(&w->cfg); t++)
        free(w->values[t]);
}

/* The values and shape of canonical tensor NAME (printf-style). */
static const float *truth_at(const truth *w, pb_tensor_info *info, const char *format, ...) {
    char name[96];
    va_list ap;
    va_start(ap, format);
    vsnprintf(name, sizeof name, format, ap);
    va_end(ap);
    int t = pb_weight_list_find(&w->cfg, name);
    if (t < 0)
        fail_msg("no canonical tensor %s", name);
    pb_weight_list_at(&w->cfg, t, info);
    return w->values[t];
}

/* Adds canonical tensor NAME under file name FILE (%d: the layer). */
static void ft_canonical(file_tensors *f, const truth *w, int layer, const char *name, const char *file,
                         int transposed) {
    pb_tensor_info info;
    char canonical[96], file_name[128];
    snprintf(canonical, sizeof canonical, name, layer);
    snprintf(file_name, sizeof file_name, file, layer);
    const float *x = truth_at(w, &info, "%s", canonical);
    ft_add(f, file_name, info.n_dims, info.shape[0], info.shape[1], x, transposed);
}

/* Layer L's q, k, v (SUFFIX "weight" or "bias") as one fused tensor:
 * [Q; K; V] rows, or per head [q_h; k_h; v_h] (GPT-NeoX), transposed for a
 * Conv1D. */
static void ft_fused_qkv(file_tensors *f, const truth *w, int layer, const char *suffix, const char *file, int per_head,
                         int transposed) {
    pb_tensor_info qi, ki, vi;
    const float *q = truth_at(w, &qi, "blk.%d.attn_q.%s", layer, suffix);
    const float *k = truth_at(w, &ki, "blk.%d.attn_k.%s", layer, suffix);
    const float *v = truth_at(w, &vi, "blk.%d.attn_v.%s", layer, suffix);
    int64_t cols = qi.shape[1], rows = qi.shape[0] + ki.shape[0] + vi.shape[0], hd = w->cfg.head_dim;
    float *x = malloc(sizeof(float) * (size_t)(rows * cols));
    assert_non_null(x);
    if (!per_head) {
        memcpy(x, q, sizeof(float) * qi.n_elements);
        memcpy(x + qi.n_elements, k, sizeof(float) * ki.n_elements);
        memcpy(x + qi.n_elements + ki.n_elements, v, sizeof(float) * vi.n_elements);
    } else {
        for (int h = 0; h < w->cfg.n_heads; h++)
            for (int p = 0; p < 3; p++)
                memcpy(x + (h * 3 + p) * hd * cols,
                       (p == 0   ? q
                        : p == 1 ? k
                                 : v) +
                           h * hd * cols,
                       sizeof(float) * (size_t)(hd * cols));
    }
    char name[128];
    snprintf(name, sizeof name, file, layer);
    ft_add(f, name, qi.n_dims, rows, cols, x, transposed);
    free(x);
}

/* Layer L's gate and up as rows [gate; up] (Phi-3). */
static void ft_fused_gate_up(file_tensors *f, const truth *w, int layer, const char *file) {
    pb_tensor_info gi, ui;
    const float *g = truth_at(w, &gi, "blk.%d.ffn_gate.weight", layer);
    const float *u = truth_at(w, &ui, "blk.%d.ffn_up.weight", layer);
    float *x = malloc(sizeof(float) * 2 * gi.n_elements);
    assert_non_null(x);
    memcpy(x, g, sizeof(float) * gi.n_elements);
    memcpy(x + gi.n_elements, u, sizeof(float) * ui.n_elements);
    char name[128];
    snprintf(name, sizeof name, file, layer);
    ft_add(f, name, 2, 2 * gi.shape[0], gi.shape[1], x, 0);
    free(x);
}

/* Every canonical tensor read from the source equals the truth exactly. */
static void expect_truth(const pb_weight_source *src, const truth *w) {
    for (int t = 0; t < pb_weight_list_count(&w->cfg); t++) {
        pb_tensor_info want, got;
        pb_weight_list_at(&w->cfg, t, &want);
        if (pb_weight_source_find(src, want.name, &got) != PB_OK)
            fail_msg("%s: %s", src->path, pb_last_error());
        assert_int_equal(got.n_dims, want.n_dims);
        assert_true(got.shape[0] == want.shape[0] && got.shape[1] == want.shape[1]);
        float *x = malloc(sizeof(float) * want.n_elements);
        assert_non_null(x);
        assert_int_equal(pb_weight_source_read_f32(src, &got, x), PB_OK);
        for (uint64_t i = 0; i < want.n_elements; i++)
            if (x[i] != w->values[t][i])
                fail_msg("%s: %s (file '%s')[%llu] = %g, expected %g", src->path, want.name, got.file_name,
                         (unsigned long long)i, (double)x[i], (double)w->values[t][i]);
        free(x);
    }
}

/* The config a family's files describe: d_model 8, 2 heads of 4, vocab 16,
 * context 16, the family's traits. */
static pb_model_config family_config(const char *arch, int n_kv_heads, int d_mlp) {
    const pb_arch *a = pb_arch_find(arch);
    assert_non_null(a);
    pb_model_config c = {.n_layers = 2,
                         .d_model = 8,
                         .n_heads = 2,
                         .n_kv_heads = n_kv_heads,
                         .head_dim = 4,
                         .d_mlp = d_mlp,
                         .vocab_size = 16,
                         .context_length = 16,
                         .rms_eps = 1e-5f,
                         .rope_theta = 10000.0f,
                         .tied_embeddings = a->tied_default,
                         .has_qkv_bias = a->qkv_bias,
                         .activation = a->activation,
                         .qk_norm = a->qk_norm,
                         .sandwich_norm = a->sandwich_norm,
                         .norm = a->norm,
                         .position = a->position,
                         .plain_mlp = a->plain_mlp,
                         .has_dense_bias = a->dense_bias,
                         .parallel_block = a->parallel_default,
                         .no_pre_norm = a->no_pre_norm,
                         .qk_norm_full = a->qk_norm_full};
    snprintf(c.arch, sizeof c.arch, "%s", arch);
    return c;
}

/* Both files of a family: <scratch>/NAME.gguf and <scratch>/NAME/, opened,
 * every tensor checked against the truth, the configs' shared fields
 * compared with want's, and both loaded as models. */
static void expect_both_formats(void **state, const char *name, const truth *w, gguf_keys *keys, file_tensors *gguf,
                                file_tensors *hf, const char *config_json) {
    char path[512], folder[512], file[64];
    snprintf(file, sizeof file, "%s.gguf", name);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, file);
    gguf_file(path, keys, gguf);
    scratch_folder(state, name, folder, sizeof folder);
    safetensors_folder(folder, hf, config_json);
    ft_free(gguf);
    ft_free(hf);
    const char *paths[2] = {path, folder};
    for (int i = 0; i < 2; i++) {
        pb_weight_source *src = open_ok(paths[i]);
        const pb_model_config *got = &src->cfg, *c = &w->cfg;
        assert_string_equal(got->arch, c->arch);
        assert_true(got->n_layers == c->n_layers && got->d_model == c->d_model && got->n_heads == c->n_heads &&
                    got->n_kv_heads == c->n_kv_heads && got->head_dim == c->head_dim && got->d_mlp == c->d_mlp &&
                    got->context_length == c->context_length && got->vocab_size == c->vocab_size);
        assert_true(got->rms_eps == c->rms_eps && got->rope_theta == c->rope_theta);
        assert_int_equal(got->activation, c->activation);
        assert_int_equal(got->norm, c->norm);
        assert_int_equal(got->position, c->position);
        assert_int_equal(got->rotary_dims, c->rotary_dims);
        assert_int_equal(got->plain_mlp, c->plain_mlp);
        assert_int_equal(got->has_dense_bias, c->has_dense_bias);
        assert_int_equal(got->has_qkv_bias, c->has_qkv_bias);
        assert_int_equal(got->parallel_block, c->parallel_block);
        assert_int_equal(got->no_pre_norm, c->no_pre_norm);
        assert_int_equal(got->qk_norm, c->qk_norm);
        assert_int_equal(got->qk_norm_full, c->qk_norm_full);
        assert_int_equal(got->sandwich_norm, c->sandwich_norm);
        assert_int_equal(got->tied_embeddings, c->tied_embeddings);
        assert_int_equal(got->sliding_window, c->sliding_window);
        assert_int_equal(got->sliding_period, c->sliding_period);
        expect_truth(src, w);
        /* a part of a fused tensor, or a transposed one, has no raw tu_bytes */
        pb_tensor_info q;
        const void *raw;
        uint64_t n_bytes;
        assert_int_equal(pb_weight_source_find(src, "blk.0.attn_q.weight", &q), PB_OK);
        assert_int_equal(pb_weight_source_raw(src, &q, &raw, &n_bytes),
                         pb_tensor_is_view(&q) ? PB_ERR_UNSUPPORTED : PB_OK);
        assert_true(pb_tensor_is_view(&q) == (strcmp(c->arch, "olmo2") != 0));
        pb_weight_source_free(src);
        pb_model *m = load_ok(paths[i]);
        /* the split q, k, v (and gate, up) still sit back to back */
        assert_non_null(m->layers[1].w_qkv.data);
        assert_true(!m->cfg.plain_mlp == (m->layers[1].w_gate_up.data != NULL));
        assert_true((m->cfg.position == PB_POSITION_LEARNED) == (m->pos_embd != NULL));
        assert_true((m->cfg.norm == PB_NORM_LAYER) == (m->final_norm_b != NULL && m->layers[0].mlp_norm_b != NULL));
        assert_true(m->cfg.has_dense_bias == (m->layers[0].bo != NULL && m->layers[0].b_down != NULL));
        assert_true(m->cfg.no_pre_norm == (m->layers[0].attn_norm == NULL));
        pb_model_free(m);
    }
}

/* Writes the norms and biases both formats share in a LayerNorm family. */
static gguf_keys family_keys(const pb_model_config *c) {
    gguf_keys k = {{0}, 0};
    char key[96];
    kv_str(&k, "general.architecture", c->arch);
#define ARCH_KEY(suffix) (snprintf(key, sizeof key, "%s.%s", c->arch, suffix), key)
    kv_u32(&k, ARCH_KEY("block_count"), (uint32_t)c->n_layers);
    kv_u32(&k, ARCH_KEY("context_length"), (uint32_t)c->context_length);
    kv_u32(&k, ARCH_KEY("embedding_length"), (uint32_t)c->d_model);
    kv_u32(&k, ARCH_KEY("feed_forward_length"), (uint32_t)c->d_mlp);
    kv_u32(&k, ARCH_KEY("attention.head_count"), (uint32_t)c->n_heads);
    if (c->n_kv_heads != c->n_heads)
        kv_u32(&k, ARCH_KEY("attention.head_count_kv"), (uint32_t)c->n_kv_heads);
    kv_f32(&k, ARCH_KEY(c->norm == PB_NORM_LAYER ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon"),
           c->rms_eps);
#undef ARCH_KEY
    return k;
}

static void kv_bool(gguf_keys *k, const char *key, int v) {
    uint8_t b = (uint8_t)(v != 0);
    tu_put_str(&k->b, key);
    tu_put_u32(&k->b, 7);
    tu_put(&k->b, &b, 1);
    k->n++;
}

/* GPT-2: GGUF as llama.cpp's converter writes it (attn_qkv [Q; K; V],
 * Conv1D weights already transposed to (out, in), no output.weight: tied),
 * safetensors as the hub's gpt2 (Conv1D (in, out), c_attn fused, no
 * "transformer." prefix: a base-model checkpoint); both give the same
 * canonical tensors, learned positions (context, d_model), LayerNorm biases. */
static void test_gpt2(void **state) {
    pb_model_config c = family_config("gpt2", 2, 32); /* n_inner null: 4 * n_embd */
    truth w;
    truth_make(&w, &c);
    file_tensors g = {.n = 0}, h = {.n = 0};
    static const char *const globals[][3] = {{"token_embd.weight", "wte.weight"},
                                             {"position_embd.weight", "wpe.weight"},
                                             {"output_norm.weight", "ln_f.weight"},
                                             {"output_norm.bias", "ln_f.bias"}};
    for (int i = 0; i < 4; i++) {
        ft_canonical(&g, &w, 0, globals[i][0], globals[i][0], 0);
        ft_canonical(&h, &w, 0, globals[i][0], globals[i][1], 0);
    }
    static const struct {
        const char *canonical, *hf;
        int conv1d;
    } layer[] = {
        {"blk.%d.attn_norm.weight", "h.%d.ln_1.weight", 0},
        {"blk.%d.attn_norm.bias", "h.%d.ln_1.bias", 0},
        {"blk.%d.attn_output.weight", "h.%d.attn.c_proj.weight", 1},
        {"blk.%d.attn_output.bias", "h.%d.attn.c_proj.bias", 0},
        {"blk.%d.ffn_norm.weight", "h.%d.ln_2.weight", 0},
        {"blk.%d.ffn_norm.bias", "h.%d.ln_2.bias", 0},
        {"blk.%d.ffn_up.weight", "h.%d.mlp.c_fc.weight", 1},
        {"blk.%d.ffn_up.bias", "h.%d.mlp.c_fc.bias", 0},
        {"blk.%d.ffn_down.weight", "h.%d.mlp.c_proj.weight", 1},
        {"blk.%d.ffn_down.bias", "h.%d.mlp.c_proj.bias", 0},
    };
    for (int l = 0; l < 2; l++) {
        ft_fused_qkv(&g, &w, l, "weight", "blk.%d.attn_qkv.weight", 0, 0);
        ft_fused_qkv(&g, &w, l, "bias", "blk.%d.attn_qkv.bias", 0, 0);
        ft_fused_qkv(&h, &w, l, "weight", "h.%d.attn.c_attn.weight", 0, 1);
        ft_fused_qkv(&h, &w, l, "bias", "h.%d.attn.c_attn.bias", 0, 0);
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
            ft_canonical(&g, &w, l, layer[i].canonical, layer[i].canonical, 0);
            ft_canonical(&h, &w, l, layer[i].canonical, layer[i].hf, layer[i].conv1d);
        }
    }
    /* the Conv1D weight really is stored (in, out) = (d_model, 3 * d_model) */
    assert_true(h.t[4].rows == 8 && h.t[4].cols == 24 && strcmp(h.t[4].name, "h.0.attn.c_attn.weight") == 0);
    gguf_keys k = family_keys(&c);
    expect_both_formats(
        state, "gpt2", &w, &k, &g, &h,
        "{\"model_type\": \"gpt2\", \"activation_function\": \"gelu_new\", \"n_embd\": 8, \"n_head\": 2,"
        " \"n_layer\": 2, \"n_positions\": 16, \"n_inner\": null, \"layer_norm_epsilon\": 1e-05,"
        " \"vocab_size\": 16, \"bos_token_id\": 0, \"eos_token_id\": 0}");
    /* with bf16 matrices, the learned positions stay fp32 (the executor
     * embeds them as PB_DTYPE_F32): exactly the file's values */
    char path[512];
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "gpt2.gguf");
    pb_load_options o = {.n_threads = 1, .backend = PB_BACKEND_REFERENCE, .dtype = PB_DTYPE_BF16};
    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, path, &o), PB_OK);
    pb_tensor_info info;
    const float *want = truth_at(&w, &info, "position_embd.weight");
    float got[16 * 8];
    assert_int_equal(m->backend->ops->download(m->backend, got, m->pos_embd, sizeof got), PB_OK);
    assert_memory_equal(got, want, sizeof got);
    pb_model_free(m);
    truth_free(&w);
}

/* GPT-NeoX (Pythia): safetensors query_key_value interleaved per head, the
 * GGUF's attn_qkv [Q; K; V] (llama.cpp's converter reorders it): the same
 * wq/wk/wv/bq/bk/bv. rotary_pct 0.5 of head_dim 4: 2 rotary dimensions,
 * accepted for gptneox (GGUF rope.dimension_count 2); use_parallel_residual
 * false read from both. */
static void test_gptneox(void **state) {
    pb_model_config c = family_config("gptneox", 2, 12);
    c.tied_embeddings = 0;
    c.rotary_dims = 2;
    c.parallel_block = 0;
    truth w;
    truth_make(&w, &c);
    file_tensors g = {.n = 0}, h = {.n = 0};
    static const char *const globals[][2] = {{"token_embd.weight", "gpt_neox.embed_in.weight"},
                                             {"output_norm.weight", "gpt_neox.final_layer_norm.weight"},
                                             {"output_norm.bias", "gpt_neox.final_layer_norm.bias"},
                                             {"output.weight", "embed_out.weight"}};
    for (int i = 0; i < 4; i++) {
        ft_canonical(&g, &w, 0, globals[i][0], globals[i][0], 0);
        ft_canonical(&h, &w, 0, globals[i][0], globals[i][1], 0);
    }
    static const char *const layer[][2] = {
        {"blk.%d.attn_norm.weight", "gpt_neox.layers.%d.input_layernorm.weight"},
        {"blk.%d.attn_norm.bias", "gpt_neox.layers.%d.input_layernorm.bias"},
        {"blk.%d.attn_output.weight", "gpt_neox.layers.%d.attention.dense.weight"},
        {"blk.%d.attn_output.bias", "gpt_neox.layers.%d.attention.dense.bias"},
        {"blk.%d.ffn_norm.weight", "gpt_neox.layers.%d.post_attention_layernorm.weight"},
        {"blk.%d.ffn_norm.bias", "gpt_neox.layers.%d.post_attention_layernorm.bias"},
        {"blk.%d.ffn_up.weight", "gpt_neox.layers.%d.mlp.dense_h_to_4h.weight"},
        {"blk.%d.ffn_up.bias", "gpt_neox.layers.%d.mlp.dense_h_to_4h.bias"},
        {"blk.%d.ffn_down.weight", "gpt_neox.layers.%d.mlp.dense_4h_to_h.weight"},
        {"blk.%d.ffn_down.bias", "gpt_neox.layers.%d.mlp.dense_4h_to_h.bias"},
    };
    for (int l = 0; l < 2; l++) {
        ft_fused_qkv(&g, &w, l, "weight", "blk.%d.attn_qkv.weight", 0, 0);
        ft_fused_qkv(&g, &w, l, "bias", "blk.%d.attn_qkv.bias", 0, 0);
        ft_fused_qkv(&h, &w, l, "weight", "gpt_neox.layers.%d.attention.query_key_value.weight", 1, 0);
        ft_fused_qkv(&h, &w, l, "bias", "gpt_neox.layers.%d.attention.query_key_value.bias", 1, 0);
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
            ft_canonical(&g, &w, l, layer[i][0], layer[i][0], 0);
            ft_canonical(&h, &w, l, layer[i][0], layer[i][1], 0);
        }
    }
    gguf_keys k = family_keys(&c);
    kv_u32(&k, "gptneox.rope.dimension_count", 2);
    kv_bool(&k, "gptneox.use_parallel_residual", 0);
    expect_both_formats(state, "neox", &w, &k, &g, &h,
                        "{\"model_type\": \"gpt_neox\", \"hidden_act\": \"gelu\", \"hidden_size\": 8,"
                        " \"num_attention_heads\": 2, \"num_hidden_layers\": 2, \"intermediate_size\": 12,"
                        " \"max_position_embeddings\": 16, \"layer_norm_eps\": 1e-05, \"rotary_pct\": 0.5,"
                        " \"rotary_emb_base\": 10000, \"use_parallel_residual\": false,"
                        " \"tie_word_embeddings\": false, \"vocab_size\": 16}");
    truth_free(&w);
}

/* Phi-3: qkv_proj [Q; K; V] (GQA: 2 query heads, 1 KV head) and
 * gate_up_proj [gate; up] split at load; the GGUF keeps them fused too
 * (attn_qkv, ffn_up of 2 * d_mlp rows, no ffn_gate). sliding_window 8
 * (GGUF attention.sliding_window) slides every layer. */
static void test_phi3(void **state) {
    pb_model_config c = family_config("phi3", 1, 12);
    c.sliding_window = 8;
    truth w;
    truth_make(&w, &c);
    file_tensors g = {.n = 0}, h = {.n = 0};
    static const char *const globals[][2] = {{"token_embd.weight", "model.embed_tokens.weight"},
                                             {"output_norm.weight", "model.norm.weight"},
                                             {"output.weight", "lm_head.weight"}};
    for (int i = 0; i < 3; i++) {
        ft_canonical(&g, &w, 0, globals[i][0], globals[i][0], 0);
        ft_canonical(&h, &w, 0, globals[i][0], globals[i][1], 0);
    }
    static const char *const layer[][2] = {
        {"blk.%d.attn_norm.weight", "model.layers.%d.input_layernorm.weight"},
        {"blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight"},
        {"blk.%d.ffn_norm.weight", "model.layers.%d.post_attention_layernorm.weight"},
        {"blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight"},
    };
    for (int l = 0; l < 2; l++) {
        ft_fused_qkv(&g, &w, l, "weight", "blk.%d.attn_qkv.weight", 0, 0);
        ft_fused_qkv(&h, &w, l, "weight", "model.layers.%d.self_attn.qkv_proj.weight", 0, 0);
        ft_fused_gate_up(&g, &w, l, "blk.%d.ffn_up.weight");
        ft_fused_gate_up(&h, &w, l, "model.layers.%d.mlp.gate_up_proj.weight");
        for (size_t i = 0; i < sizeof layer / sizeof layer[0]; i++) {
            ft_canonical(&g, &w, l, layer[i][0], layer[i][0], 0);
            ft_canonical(&h, &w, l, layer[i][0], layer[i][1], 0);
        }
    }
    gguf_keys k = family_keys(&c);
    kv_u32(&k, "phi3.rope.dimension_count", 4);
    kv_u32(&k, "phi3.attention.sliding_window", 8);
    expect_both_formats(state, "phi3", &w, &k, &g, &h,
                        "{\"model_type\": \"phi3\", \"hidden_act\": \"silu\", \"hidden_size\": 8,"
                        " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"num_hidden_layers\": 2,"
                        " \"intermediate_size\": 12, \"max_position_embeddings\": 16, \"rms_norm_eps\": 1e-05,"
                        " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"sliding_window\": 8,"
                        " \"tie_word_embeddings\": false, \"vocab_size\": 16}");
    truth_free(&w);
}

/* OLMo-2: no input norms, post-attention and post-MLP norms, q_norm over
 * n_heads * head_dim and k_norm over n_kv_heads * head_dim; the GGUF names
 * them as llama.cpp does (no Q/K row permutation). */
static void test_olmo2(void **state) {
    pb_model_config c = family_config("olmo2", 1, 12);
    c.tied_embeddings = 0;
    truth w;
    truth_make(&w, &c);
    pb_tensor_info info;
    truth_at(&w, &info, "blk.0.attn_q_norm.weight");
    assert_true(info.n_dims == 1 && info.shape[0] == 8);
    truth_at(&w, &info, "blk.0.attn_k_norm.weight");
    assert_true(info.n_dims == 1 && info.shape[0] == 4);
    file_tensors g = {.n = 0}, h = {.n = 0};
    static const char *const names[][2] = {
        {"token_embd.weight", "model.embed_tokens.weight"},
        {"output_norm.weight", "model.norm.weight"},
        {"output.weight", "lm_head.weight"},
        {"blk.%d.attn_q.weight", "model.layers.%d.self_attn.q_proj.weight"},
        {"blk.%d.attn_k.weight", "model.layers.%d.self_attn.k_proj.weight"},
        {"blk.%d.attn_v.weight", "model.layers.%d.self_attn.v_proj.weight"},
        {"blk.%d.attn_q_norm.weight", "model.layers.%d.self_attn.q_norm.weight"},
        {"blk.%d.attn_k_norm.weight", "model.layers.%d.self_attn.k_norm.weight"},
        {"blk.%d.attn_output.weight", "model.layers.%d.self_attn.o_proj.weight"},
        {"blk.%d.post_attention_norm.weight", "model.layers.%d.post_attention_layernorm.weight"},
        {"blk.%d.ffn_gate.weight", "model.layers.%d.mlp.gate_proj.weight"},
        {"blk.%d.ffn_up.weight", "model.layers.%d.mlp.up_proj.weight"},
        {"blk.%d.ffn_down.weight", "model.layers.%d.mlp.down_proj.weight"},
        {"blk.%d.post_ffw_norm.weight", "model.layers.%d.post_feedforward_layernorm.weight"},
    };
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        for (int l = 0; l < (i < 3 ? 1 : 2); l++) {
            ft_canonical(&g, &w, l, names[i][0], names[i][0], 0);
            ft_canonical(&h, &w, l, names[i][0], names[i][1], 0);
        }
    gguf_keys k = family_keys(&c);
    expect_both_formats(state, "olmo2", &w, &k, &g, &h,
                        "{\"model_type\": \"olmo2\", \"hidden_act\": \"silu\", \"hidden_size\": 8,"
                        " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"num_hidden_layers\": 2,"
                        " \"intermediate_size\": 12, \"max_position_embeddings\": 16, \"rms_norm_eps\": 1e-05,"
                        " \"rope_theta\": 10000, \"attention_bias\": false, \"tie_word_embeddings\": false,"
                        " \"vocab_size\": 16}");
    truth_free(&w);
}

/* The new families' GGUF refusals: partial rotary outside gptneox and phi3,
 * an odd rotary count, half of LongRoPE's factors, a fused tensor of the wrong
 * size (named as the file names it). */
static void test_new_families_refused(void **state) {
    char path[512];
    static const struct {
        const char *arch, *file, *key;
        uint32_t rope_dims;
        const char *needle;
    } cases[] = {
        {"olmo2", "partial.gguf", "olmo2.rope.dimension_count", 2,
         "olmo2.rope.dimension_count = 2 is less than the head dimension"},
        {"gptneox", "odd.gguf", "gptneox.rope.dimension_count", 3,
         "gptneox.rope.dimension_count = 3 is odd: RoPE turns pairs of dimensions"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pb_model_config c = family_config(cases[i].arch, 2, 12);
        gguf_keys k = family_keys(&c);
        kv_u32(&k, cases[i].key, cases[i].rope_dims);
        tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, cases[i].file);
        variant none = {0};
        write_gguf(path, &c, &none, &k);
        expect_open_refused(path, i == 0 ? PB_ERR_UNSUPPORTED : PB_ERR_FORMAT, cases[i].needle);
    }

    /* OLMo-3, which llama.cpp's converter writes as olmo2 with sliding layers */
    pb_model_config olmo = family_config("olmo2", 1, 12);
    gguf_keys ko = family_keys(&olmo);
    static const uint8_t olmo3_pattern[2] = {1, 1};
    kv_u32(&ko, "olmo2.attention.sliding_window", 4);
    kv_bools(&ko, "olmo2.attention.sliding_window_pattern", olmo3_pattern, 2);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "olmo3.gguf");
    variant none = {0};
    write_gguf(path, &olmo, &none, &ko);
    expect_open_refused(path, PB_ERR_UNSUPPORTED,
                        "olmo2.attention.sliding_window_pattern: sliding-window layers (OLMo-3 written as olmo2) are "
                        "not supported");

    /* LongRoPE: the converter writes rope_factors_long and _short; one alone is malformed */
    pb_model_config c = family_config("phi3", 1, 12);
    truth w;
    truth_make(&w, &c);
    file_tensors g = {.n = 0};
    for (int t = 0; t < pb_weight_list_count(&c); t++) {
        pb_tensor_info info;
        pb_weight_list_at(&c, t, &info);
        ft_add(&g, info.name, info.n_dims, info.shape[0], info.shape[1], w.values[t], 0);
    }
    static const float factors[2] = {1.0f, 1.0f};
    ft_add(&g, "rope_factors_long.weight", 1, 2, 1, factors, 0);
    gguf_keys k = family_keys(&c);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "longrope.gguf");
    gguf_file(path, &k, &g);
    ft_free(&g);
    expect_open_refused(path, PB_ERR_FORMAT,
                        "LongRoPE needs both 'rope_factors_short.weight' and 'rope_factors_long.weight'; "
                        "'rope_factors_short.weight' is missing");

    /* a fused attn_qkv one row short (values: zeros, large enough for any tensor here) */
    truth_free(&w);
    c = family_config("gpt2", 2, 32);
    float *zeros = calloc((size_t)c.context_length * c.d_model + (size_t)c.vocab_size * c.d_model, sizeof(float));
    assert_non_null(zeros);
    for (int t = 0; t < pb_weight_list_count(&c); t++) {
        pb_tensor_info info;
        pb_weight_list_at(&c, t, &info);
        if (strstr(info.name, "attn_q.") || strstr(info.name, "attn_k.") || strstr(info.name, "attn_v."))
            continue;
        assert_true(info.n_elements <= (uint64_t)(c.context_length + c.vocab_size) * (uint64_t)c.d_model);
        ft_add(&g, info.name, info.n_dims, info.shape[0], info.shape[1], zeros, 0);
    }
    for (int l = 0; l < 2; l++) {
        char name[64];
        snprintf(name, sizeof name, "blk.%d.attn_qkv.weight", l);
        ft_add(&g, name, 2, 23, 8, zeros, 0);
        snprintf(name, sizeof name, "blk.%d.attn_qkv.bias", l);
        ft_add(&g, name, 1, 24, 1, zeros, 0);
    }
    free(zeros);
    k = family_keys(&c);
    tu_path(path, sizeof path, ((tu_scratch *)*state)->dir, "short.gguf");
    gguf_file(path, &k, &g);
    ft_free(&g);
    expect_load_refused(path, "fused tensor 'blk.0.attn_qkv.weight' has 23 rows, but the hyperparameters need 24 "
                              "(q, k and v rows)");
}

/* The new tensor lists: GPT-2's learned positions (context, d_model) and
 * LayerNorm biases, no gate; OLMo-2's full-width q/k norms and no input
 * norms. */
static void test_new_tensor_lists(void **state) {
    (void)state;
    pb_model_config gpt2 = family_config("gpt2", 2, 32);
    /* token_embd, position_embd, output_norm (+ bias); tied: no output */
    assert_int_equal(pb_weight_list_count(&gpt2), 4 + 2 * 16);
    pb_tensor_info info;
    pb_weight_list_at(&gpt2, 1, &info);
    assert_string_equal(info.name, "position_embd.weight");
    assert_true(info.n_dims == 2 && info.shape[0] == 16 && info.shape[1] == 8);
    assert_int_equal(pb_weight_list_find(&gpt2, "blk.0.ffn_gate.weight"), -1);
    assert_true(pb_weight_list_find(&gpt2, "blk.1.ffn_down.bias") > 0);
    pb_model_config olmo2 = family_config("olmo2", 1, 12);
    olmo2.tied_embeddings = 0;
    assert_int_equal(pb_weight_list_count(&olmo2), 3 + 2 * 11);
    assert_int_equal(pb_weight_list_find(&olmo2, "blk.0.attn_norm.weight"), -1);
    assert_int_equal(pb_weight_list_find(&olmo2, "blk.0.ffn_norm.weight"), -1);
    char hf[128];
    assert_int_equal(pb_weight_hf_name(&gpt2, "blk.1.attn_k.weight", hf, sizeof hf), PB_OK);
    assert_string_equal(hf, "transformer.h.1.attn.c_attn.weight");
    assert_int_equal(pb_weight_hf_name(&gpt2, "position_embd.weight", hf, sizeof hf), PB_OK);
    assert_string_equal(hf, "transformer.wpe.weight");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_tensor_list),
        cmocka_unit_test_setup_teardown(test_gguf_gemma3, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gguf_gemma2, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gguf_refused, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_norm_offset, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_multimodal_layouts, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_new_tensor_shapes, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test(test_new_tensor_lists),
        cmocka_unit_test_setup_teardown(test_gpt2, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gptneox, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_phi3, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_olmo2, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_new_families_refused, tu_scratch_setup, tu_scratch_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
