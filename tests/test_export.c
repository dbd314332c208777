/* Export of the direction-ablated model (analysis/export.c,
 * pb_export_ablated):
 * - for seven families (tied and untied unembeddings, biases, learned
 *   positions, GPT-2's transposed Conv1D, GPT-NeoX's parallel blocks,
 *   Phi-3's fused projections, Gemma's scaled embedding), from the
 *   Hugging Face folder and from the GGUF file (but tied Gemma, whose
 *   GGUF llama.cpp reads only tied: refused), the fp32 export's logits
 *   equal the source's under run-time ablation (pb_forward_intervened
 *   ABLATE) within 1e-5 on the reference backend, and differ from the
 *   source's plain logits;
 * - transformers' logits (fixture tests/fixtures/export) of the exported
 *   safetensors and of the source under ablation hooks equal the engine's
 *   on its exports from the folder and from the GGUF;
 * - an exact invariant, independent of the run-time ablation: in the
 *   exported model every write into the residual stream (hook_embed,
 *   hook_pos_embed, every hook_attn_out and hook_mlp_out) is orthogonal to
 *   the direction;
 * - the GGUF keeps every key of its source byte for byte (general.file_type
 *   set), the untied output.weight is the source's embedding bit for bit;
 *   the safetensors folder says tie_word_embeddings false and carries the
 *   tokenizer unchanged;
 * - LoRA adapters merged into the export (tiny_gqa from the GGUF puts the
 *   merged Q/K rows back in llama.cpp's order) equal the adapted source
 *   under run-time ablation; adapters on fused tensors are refused;
 * - bf16, f16 and Q8_0 exports load and stay near the fp32 export (their
 *   error is printed);
 * - SmolLM2 (Q4_1, when present): the fp32 export against run-time
 *   ablation on the reference backend (PB_TOL_EXPORT_SMOLLM2_MAX_ABS), and
 *   greedy continuations of that file equal llama.cpp's (fixture made with
 *   llama-cpp-python, scripts/make_llama_cpp_export_fixture.py);
 * - a tied gemma GGUF (llama.cpp refuses an output.weight there), gemma2,
 *   gemma3 and olmo2 are refused by name, as are bad directions, a format
 *   the source cannot go to, Q8_0 safetensors and an existing output; an
 *   interrupted export leaves nothing. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/gguf.h"
#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

typedef struct family {
    const char *name;
    int tied;
} family;

static const family families[] = {
    {"tiny_gqa", 1},  {"tiny_bias", 0},  {"tiny_gpt2", 1},  {"tiny_gpt_neox", 0},
    {"tiny_phi3", 0}, {"tiny_qwen3", 0}, {"tiny_gemma", 1},
};
enum { N_FAMILIES = sizeof families / sizeof families[0] };

static float *random_direction(int d, uint64_t seed) {
    float *u = malloc(sizeof(float) * (size_t)d);
    assert_non_null(u);
    tu_fill(u, (size_t)d, seed, 1.0f);
    return u;
}

static pb_model *load_on(const char *path, pb_backend_kind backend) {
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2, .backend = backend};
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    return m;
}

static pb_model *load_path(const char *path) { return load_on(path, PB_BACKEND_CPU); }

static float *logits_of(pb_model *m, const int32_t *ids, int T, const pb_intervention *iv) {
    const pb_model_config *c = pb_model_get_config(m);
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    assert_non_null(logits);
    if (pb_forward_intervened(m, ids, T, iv, logits, NULL) != PB_OK)
        fail_msg("forward: %s", pb_last_error());
    return logits;
}

static void export_or_fail(const char *src, const float *u, int d, pb_dtype dtype, const char *out) {
    pb_export_options o = {.dtype = dtype};
    pb_export_summary sum;
    if (pb_export_ablated(src, u, d, &o, out, &sum) != PB_OK)
        fail_msg("export %s -> %s: %s", src, out, pb_last_error());
    assert_true(sum.n_edited > 0);
}

/* Every residual write of the exported model is orthogonal to u:
 * |x . u| <= 1e-5 |x| |u| row by row. */
static void expect_writes_orthogonal(pb_model *m, const int32_t *ids, int T, const float *u, const char *what) {
    pb_capture *cap = NULL;
    if (pb_capture_create(&cap, m, "hook_*embed,blocks.*.hook_attn_out,blocks.*.hook_mlp_out") != PB_OK)
        fail_msg("%s", pb_last_error());
    if (pb_forward(m, ids, T, NULL, cap) != PB_OK)
        fail_msg("%s", pb_last_error());
    double worst = tu_worst_alignment(cap, u, pb_model_get_config(m)->d_model);
    printf("  %s: %d residual writes, worst |x.u| / (|x||u|) %.2e\n", what, pb_capture_count(cap), worst);
    assert_true(worst <= 1e-5);
    pb_capture_free(cap);
}

/* One family from one source (folder or GGUF): export fp32, compare. */
static void check_family_source(const family *f, const char *file, const char *dir, double *worst) {
    char src[1024], ids_path[1024], out[1400];
    tu_fixture_file(src, sizeof src, f->name, file);
    tu_fixture_file(ids_path, sizeof ids_path, f->name, "ids.npy");
    snprintf(out, sizeof out, "%s/%s%s", dir, f->name, file ? ".gguf" : "");
    int T;
    int32_t *ids = tu_read_ids(ids_path, &T);
    pb_model *source = load_on(src, PB_BACKEND_REFERENCE);
    int d = pb_model_get_config(source)->d_model;
    float *u = random_direction(d, 0xab1e + (uint64_t)d);
    export_or_fail(src, u, d, PB_DTYPE_F32, out);
    pb_model *exported = load_on(out, PB_BACKEND_REFERENCE);
    assert_int_equal(pb_model_get_config(exported)->tied_embeddings, 0);
    pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = u};
    float *want = logits_of(source, ids, T, &ablate);
    float *plain = logits_of(source, ids, T, NULL);
    float *got = logits_of(exported, ids, T, NULL);
    size_t n = (size_t)T * (size_t)pb_model_get_config(source)->vocab_size;
    double diff = tu_max_abs_diff(got, want, n), moved = tu_max_abs_diff(plain, want, n);
    printf("  %-14s %-6s max |export - run-time ablation| %.2e (the ablation moves logits by %.2e)\n", f->name,
           file ? "gguf" : "folder", diff, moved);
    assert_true(diff <= PB_TOL_EXPORT_LOGITS_MAX_ABS);
    assert_true(moved > 100 * PB_TOL_EXPORT_LOGITS_MAX_ABS);
    if (diff > *worst)
        *worst = diff;
    expect_writes_orthogonal(exported, ids, T, u, f->name);
    free(want);
    free(plain);
    free(got);
    free(u);
    free(ids);
    pb_model_free(exported);
    pb_model_free(source);
}

static void test_export_equals_runtime_ablation(void **state) {
    const tu_scratch *s = *state;
    double worst = 0;
    for (int i = 0; i < N_FAMILIES; i++) {
        check_family_source(&families[i], NULL, s->dir, &worst);
        if (strcmp(families[i].name, "tiny_gemma") != 0) /* a tied gemma GGUF is refused (test_refusals) */
            check_family_source(&families[i], "model.gguf", s->dir, &worst);
    }
    printf("worst over %d families, %d exports: %.2e\n", N_FAMILIES, 2 * N_FAMILIES - 1, worst);
}

static void expect_refused(const char *src, const float *u, int d, const pb_export_options *o, const char *out,
                           pb_status want, const char *needle);

/* LoRA adapters merged into the export (tests/fixtures/lora: every
 * projection of tiny_gqa, whose GGUF interleaves Q/K rows, and tiny_qwen3):
 * the export equals the source with the adapter loaded under run-time
 * ablation, from the folder and from the GGUF; the merge matters (the
 * export without it differs); adapters on fused or transposed tensors
 * (phi3, gpt2) are refused by name. */
static void test_adapters(void **state) {
    const tu_scratch *s = *state;
    const char *models[] = {"tiny_gqa", "tiny_qwen3"};
    for (int k = 0; k < 2; k++) {
        char adapter[1024], ids_path[1024];
        tu_fixture_file(adapter, sizeof adapter, "lora", models[k]);
        tu_fixture_file(ids_path, sizeof ids_path, models[k], "ids.npy");
        const char *adapters[] = {adapter};
        int T;
        int32_t *ids = tu_read_ids(ids_path, &T);
        for (int g = 0; g < 2; g++) {
            char src[1024], out[1400], plain_out[1400];
            tu_fixture_file(src, sizeof src, models[k], g ? "model.gguf" : NULL);
            snprintf(out, sizeof out, "%s/%s-lora%s", s->dir, models[k], g ? ".gguf" : "");
            snprintf(plain_out, sizeof plain_out, "%s/%s-plain%s", s->dir, models[k], g ? ".gguf" : "");
            pb_model *source = NULL;
            pb_load_options lo = {.backend = PB_BACKEND_REFERENCE, .adapters = adapters, .n_adapters = 1};
            if (pb_model_load(&source, src, &lo) != PB_OK)
                fail_msg("%s", pb_last_error());
            int d = pb_model_get_config(source)->d_model;
            float *u = random_direction(d, 23);
            pb_export_options o = {.adapters = adapters, .n_adapters = 1};
            if (pb_export_ablated(src, u, d, &o, out, NULL) != PB_OK)
                fail_msg("export with the adapter: %s", pb_last_error());
            export_or_fail(src, u, d, PB_DTYPE_F32, plain_out);
            pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = u};
            float *want = logits_of(source, ids, T, &ablate);
            pb_model *merged = load_on(out, PB_BACKEND_REFERENCE), *plain = load_on(plain_out, PB_BACKEND_REFERENCE);
            float *got = logits_of(merged, ids, T, NULL), *without = logits_of(plain, ids, T, NULL);
            size_t n = (size_t)T * (size_t)pb_model_get_config(source)->vocab_size;
            double diff = tu_max_abs_diff(got, want, n), adapter_moves = tu_max_abs_diff(without, want, n);
            printf("  %-10s %-6s + LoRA: max |export - run-time ablation| %.2e (the adapter moves logits %.2e)\n",
                   models[k], g ? "gguf" : "folder", diff, adapter_moves);
            assert_true(diff <= PB_TOL_EXPORT_LOGITS_MAX_ABS);
            assert_true(adapter_moves > 100 * PB_TOL_EXPORT_LOGITS_MAX_ABS);
            free(want);
            free(got);
            free(without);
            free(u);
            pb_model_free(merged);
            pb_model_free(plain);
            pb_model_free(source);
        }
        free(ids);
    }
    const char *fused[] = {"tiny_phi3", "tiny_gpt2"};
    for (int k = 0; k < 2; k++)
        for (int g = 0; g < 2; g++) {
            char adapter[1024], src[1024], out[1400];
            tu_fixture_file(adapter, sizeof adapter, "lora", fused[k]);
            tu_fixture_file(src, sizeof src, fused[k], g ? "model.gguf" : NULL);
            snprintf(out, sizeof out, "%s/refused%s", s->dir, g ? ".gguf" : "");
            const char *adapters[] = {adapter};
            pb_export_options o = {.adapters = adapters, .n_adapters = 1};
            float *u = random_direction(64, 29);
            expect_refused(src, u, 64, &o, out, PB_ERR_UNSUPPORTED, "merged adapters export only where");
            free(u);
        }
}

/* tests/fixtures/export (scripts/make_export_reference.py): transformers'
 * logits of the exported safetensors, and of the source with the direction
 * projected out by forward hooks; the engine's export from the folder and
 * from the GGUF, run by the engine, against both. */
static void test_transformers_reference(void **state) {
    const tu_scratch *s = *state;
    const char *cases[] = {"export/llama_tied", "export/qwen2_untied"};
    for (int k = 0; k < 2; k++) {
        char src[1024], path[1024], out[1400];
        tu_fixture_file(src, sizeof src, cases[k], NULL);
        tu_fixture_file(path, sizeof path, cases[k], "ids.npy");
        int T;
        int32_t *ids = tu_read_ids(path, &T);
        int64_t shape[8];
        tu_fixture_file(path, sizeof path, cases[k], "direction.npy");
        float *u = tu_read_f32(path, 1, shape);
        tu_fixture_file(path, sizeof path, cases[k], "logits_export.npy");
        float *hf_export = tu_read_f32(path, 2, shape);
        tu_fixture_file(path, sizeof path, cases[k], "logits_ablated.npy");
        float *hf_ablated = tu_read_f32(path, 2, shape);
        size_t n = (size_t)shape[0] * (size_t)shape[1];
        assert_int_equal(shape[0], T);
        for (int g = 0; g < 2; g++) {
            char from[1100];
            snprintf(from, sizeof from, "%s%s", src, g ? "/model.gguf" : "");
            snprintf(out, sizeof out, "%s/case%d%s", s->dir, k, g ? ".gguf" : "");
            pb_model *probe = load_path(from);
            int d = pb_model_get_config(probe)->d_model;
            pb_model_free(probe);
            export_or_fail(from, u, d, PB_DTYPE_F32, out);
            pb_model *m = load_path(out);
            assert_int_equal((size_t)pb_model_get_config(m)->vocab_size, (size_t)shape[1]);
            float *got = logits_of(m, ids, T, NULL);
            double vs_export = tu_max_abs_diff(got, hf_export, n), vs_ablated = tu_max_abs_diff(got, hf_ablated, n);
            printf("  %-20s %-6s engine on the export vs transformers on it %.2e, vs transformers' hooks %.2e\n",
                   cases[k], g ? "gguf" : "folder", vs_export, vs_ablated);
            assert_true(vs_export <= PB_TOL_TINY_LOGITS_MAX_ABS);
            assert_true(vs_ablated <= PB_TOL_TINY_LOGITS_MAX_ABS);
            free(got);
            pb_model_free(m);
        }
        free(hf_export);
        free(hf_ablated);
        free(u);
        free(ids);
    }
}

/* GGUF: keys kept byte for byte; output.weight = the source's token_embd. */
static void test_gguf_keeps_keys_and_unties(void **state) {
    const tu_scratch *s = *state;
    char src[1024], out[1400];
    tu_fixture_file(src, sizeof src, "tiny_gqa", "model.gguf");
    snprintf(out, sizeof out, "%s/gqa.gguf", s->dir);
    float *u = random_direction(64, 7);
    export_or_fail(src, u, 64, PB_DTYPE_F32, out);
    pb_gguf *a = NULL, *b = NULL;
    assert_int_equal(pb_gguf_open(&a, src), PB_OK);
    assert_int_equal(pb_gguf_open(&b, out), PB_OK);
    int64_t kept = 0;
    for (int64_t i = 0; i < pb_gguf_key_count(a); i++) {
        const char *key;
        size_t len;
        pb_gguf_value_type type;
        const void *ra, *rb;
        size_t na, nb;
        assert_int_equal(pb_gguf_key_at(a, i, &key, &len, &type), PB_OK);
        if (len == strlen("general.file_type") && memcmp(key, "general.file_type", len) == 0)
            continue;
        int64_t j = 0;
        for (; j < pb_gguf_key_count(b); j++) {
            const char *kb;
            size_t lb;
            pb_gguf_value_type tb;
            assert_int_equal(pb_gguf_key_at(b, j, &kb, &lb, &tb), PB_OK);
            if (lb == len && memcmp(kb, key, len) == 0)
                break;
        }
        if (j == pb_gguf_key_count(b))
            fail_msg("key '%.*s' lost", (int)len, key);
        assert_int_equal(pb_gguf_key_record(a, i, &ra, &na), PB_OK);
        assert_int_equal(pb_gguf_key_record(b, j, &rb, &nb), PB_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(ra, rb, na);
        kept++;
    }
    int64_t file_type = -1;
    assert_int_equal(pb_gguf_get_int(b, "general.file_type", &file_type), PB_OK);
    assert_int_equal(file_type, 0);
    const pb_gguf_tensor *embd = pb_gguf_find_tensor(a, "token_embd.weight");
    const pb_gguf_tensor *output = pb_gguf_find_tensor(b, "output.weight");
    assert_null(pb_gguf_find_tensor(a, "output.weight"));
    assert_non_null(output);
    assert_int_equal(embd->type, 0);
    assert_int_equal(output->n_bytes, embd->n_bytes);
    assert_memory_equal(output->data, embd->data, embd->n_bytes);
    printf("%lld keys kept byte for byte; output.weight = the source's token_embd\n", (long long)kept);
    pb_gguf_close(a);
    pb_gguf_close(b);
    free(u);
}

/* safetensors: config.json untied, tokenizer files carried unchanged. */
static void test_folder_config_and_tokenizer(void **state) {
    const tu_scratch *s = *state;
    char src[1024], out[1400], path[1600], orig[1600];
    tu_fixture_file(src, sizeof src, "tiny_gpt2", NULL);
    snprintf(out, sizeof out, "%s/gpt2", s->dir);
    float *u = random_direction(64, 9);
    export_or_fail(src, u, 64, PB_DTYPE_BF16, out);
    snprintf(path, sizeof path, "%s/config.json", out);
    json_t *config = json_load_file(path, 0, NULL);
    assert_non_null(config);
    assert_true(json_is_false(json_object_get(config, "tie_word_embeddings")));
    json_t *dtype = json_object_get(config, "dtype") ? json_object_get(config, "dtype")
                                                     : json_object_get(config, "torch_dtype");
    assert_string_equal(json_string_value(dtype), "bfloat16");
    json_decref(config);
    const char *carried[] = {"tokenizer.json", "tokenizer_config.json", "generation_config.json"};
    for (int i = 0; i < 3; i++) {
        size_t na, nb;
        snprintf(path, sizeof path, "%s/%s", out, carried[i]);
        snprintf(orig, sizeof orig, "%s/%s", src, carried[i]);
        char *a = tu_read_file(orig, &na), *b = tu_read_file(path, &nb);
        assert_non_null(b);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, na);
        free(a);
        free(b);
    }
    free(u);
}

/* bf16, f16 and Q8_0 against the fp32 export. */
static void test_storage_types(void **state) {
    const tu_scratch *s = *state;
    char src[1024], ids_path[1024], out[1400];
    tu_fixture_file(src, sizeof src, "tiny_gqa", "model.gguf");
    tu_fixture_file(ids_path, sizeof ids_path, "tiny_gqa", "ids.npy");
    int T;
    int32_t *ids = tu_read_ids(ids_path, &T);
    float *u = random_direction(64, 11);
    snprintf(out, sizeof out, "%s/f32.gguf", s->dir);
    export_or_fail(src, u, 64, PB_DTYPE_F32, out);
    pb_model *m = load_path(out);
    float *ref = logits_of(m, ids, T, NULL);
    size_t n = (size_t)T * (size_t)pb_model_get_config(m)->vocab_size;
    double scale = 0;
    for (size_t i = 0; i < n; i++)
        scale = fmax(scale, fabs(ref[i]));
    pb_model_free(m);
    const pb_dtype types[] = {PB_DTYPE_BF16, PB_DTYPE_F16, PB_DTYPE_Q8_0};
    const char *names[] = {"bf16", "f16", "q8_0"};
    /* Sanity bounds, not targets: a random tiny model's logits carry each
     * type's rounding through two layers (measured 1.3e-4, 2.0e-6, 1.6e-3). */
    const double max_nmse[] = {1e-3, 1e-4, 1e-2};
    for (int k = 0; k < 3; k++) {
        snprintf(out, sizeof out, "%s/%s.gguf", s->dir, names[k]);
        export_or_fail(src, u, 64, types[k], out);
        m = load_path(out);
        float *got = logits_of(m, ids, T, NULL);
        double diff = tu_max_abs_diff(got, ref, n);
        double nmse = tu_nmse(got, ref, n);
        printf("  %-5s export vs fp32 export: max |d logit| %.2e (logits up to %.2f), NMSE %.2e\n", names[k], diff,
               scale, nmse);
        assert_true(diff > 0);
        assert_true(nmse < max_nmse[k]);
        free(got);
        pb_model_free(m);
    }
    free(ref);
    free(u);
    free(ids);
}

/* llama.cpp's greedy continuations of the same export
 * (tests/fixtures/export/llama_cpp_smollm2.json,
 * scripts/make_llama_cpp_export_fixture.py) equal the engine's: every
 * case; in a sanitizer build the last, the shortest (one path, the Release
 * suite checks all). */
static void expect_llama_cpp_continuations(const char *exported_path) {
    char path[1024];
    tu_fixture_file(path, sizeof path, "export", "llama_cpp_smollm2.json");
    json_error_t error;
    json_t *ref = json_load_file(path, 0, &error);
    if (!ref)
        fail_msg("%s: %s", path, error.text);
    pb_model *m = load_path(exported_path);
    size_t k;
    json_t *c;
    json_t *cases = json_object_get(ref, "cases");
    json_array_foreach(cases, k, c) {
        if (tu_sanitized() && k + 1 < json_array_size(cases))
            continue;
        json_t *prompt = json_object_get(c, "prompt_ids"), *want = json_object_get(c, "export_ids");
        int T = (int)json_array_size(prompt), n_want = (int)json_array_size(want), n_out = 0;
        int32_t ids[256], out[64];
        assert_true(T <= 256 && n_want <= 64);
        for (int i = 0; i < T; i++)
            ids[i] = (int32_t)json_integer_value(json_array_get(prompt, (size_t)i));
        if (pb_generate(m, ids, T, n_want, out, &n_out) != PB_OK)
            fail_msg("generate: %s", pb_last_error());
        assert_int_equal(n_out, n_want);
        for (int i = 0; i < n_want; i++)
            if (out[i] != (int32_t)json_integer_value(json_array_get(want, (size_t)i)))
                fail_msg("case %zu token %d: engine %d, llama.cpp %lld", k, i, out[i],
                         (long long)json_integer_value(json_array_get(want, (size_t)i)));
        printf("  llama.cpp and the engine decode the same %d tokens: %s\n", n_want,
               json_string_value(json_object_get(c, "export_text")));
    }
    pb_model_free(m);
    json_decref(ref);
}

/* SmolLM2 (Q4_1 GGUF, 30 layers; skipped when absent): the fp32 export of
 * the dequantised weights vs run-time ablation on the Q4_1 file, over 10
 * positions (4 in a sanitizer build). */
static void test_smollm2(void **state) {
    const tu_scratch *s = *state;
    char src[1024], out[1400];
    if (!tu_model_path(src, sizeof src))
        skip();
    snprintf(out, sizeof out, "%s/smollm2.gguf", s->dir);
    pb_model *source = load_on(src, PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(source);
    char direction[1024];
    int64_t shape[8];
    tu_fixture_file(direction, sizeof direction, "export", "smollm2_direction.npy");
    float *u = tu_read_f32(direction, 1, shape); /* the refusal direction of the main job */
    assert_int_equal(shape[0], c->d_model);
    export_or_fail(src, u, c->d_model, PB_DTYPE_F32, out);
    pb_model *exported = load_on(out, PB_BACKEND_REFERENCE);
    const int32_t ids[] = {1, 504, 3458, 282, 4763, 314, 260, 2379, 30, 2};
    int T = tu_sanitized() ? 4 : (int)(sizeof ids / sizeof *ids); /* the same path over fewer positions */
    pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = u};
    float *want = logits_of(source, ids, T, &ablate);
    float *plain = logits_of(source, ids, T, NULL);
    float *got = logits_of(exported, ids, T, NULL);
    size_t n = (size_t)T * (size_t)c->vocab_size;
    double diff = tu_max_abs_diff(got, want, n), moved = tu_max_abs_diff(plain, want, n);
    printf("SmolLM2: max |export - run-time ablation| %.2e over %d positions x %d logits (ablation moves %.2e)\n", diff,
           T, c->vocab_size, moved);
    assert_true(diff <= PB_TOL_EXPORT_SMOLLM2_MAX_ABS);
    assert_true(moved > 100 * PB_TOL_EXPORT_SMOLLM2_MAX_ABS);
    expect_writes_orthogonal(exported, ids, T, u, "SmolLM2");
    expect_llama_cpp_continuations(out);
    free(want);
    free(plain);
    free(got);
    free(u);
    pb_model_free(exported);
    pb_model_free(source);
}

static int exists(const char *path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void expect_refused(const char *src, const float *u, int d, const pb_export_options *o, const char *out,
                           pb_status want, const char *needle) {
    pb_status got = pb_export_ablated(src, u, d, o, out, NULL);
    if (got != want || !strstr(pb_last_error(), needle))
        fail_msg("export %s: %s (%s), expected %s mentioning '%s'", src, pb_status_name(got), pb_last_error(),
                 pb_status_name(want), needle);
    printf("  refused: %s\n", pb_last_error());
}

static void test_refusals(void **state) {
    const tu_scratch *s = *state;
    char src[1024], gguf[1024], out[1400];
    float *u = random_direction(80, 13);
    pb_export_options o = {0};
    snprintf(out, sizeof out, "%s/refused", s->dir);
    const char *post_norm[] = {"tiny_gemma2", "tiny_gemma3", "tiny_olmo2"};
    const char *names[] = {"gemma2", "gemma3", "olmo2"};
    for (int i = 0; i < 3; i++) {
        tu_fixture_file(src, sizeof src, post_norm[i], NULL);
        expect_refused(src, u, 80, &o, out, PB_ERR_UNSUPPORTED, names[i]);
        assert_false(exists(out));
    }
    tu_fixture_file(gguf, sizeof gguf, "tiny_gemma", "model.gguf");
    char gemma_out[1500];
    snprintf(gemma_out, sizeof gemma_out, "%s/gemma.gguf", s->dir);
    expect_refused(gguf, u, 80, &o, gemma_out, PB_ERR_UNSUPPORTED, "refuses an output.weight");
    assert_false(exists(gemma_out));
    tu_fixture_file(src, sizeof src, "tiny_gqa", NULL);
    tu_fixture_file(gguf, sizeof gguf, "tiny_gqa", "model.gguf");
    expect_refused(src, u, 80, &o, out, PB_ERR_ARG, "d_model is 64");
    float bad[64];
    memcpy(bad, u, sizeof bad);
    bad[5] = NAN;
    expect_refused(src, bad, 64, &o, out, PB_ERR_NUMERIC, "not finite");
    memset(bad, 0, sizeof bad);
    expect_refused(src, bad, 64, &o, out, PB_ERR_ARG, "zero");
    pb_export_options to_gguf = {.format = PB_EXPORT_GGUF};
    expect_refused(src, u, 64, &to_gguf, out, PB_ERR_UNSUPPORTED, "exports to safetensors only");
    expect_refused(src, u, 64, &to_gguf, out, PB_ERR_UNSUPPORTED, "convert_hf_to_gguf.py turns the result into a GGUF");
    pb_export_options to_st = {.format = PB_EXPORT_SAFETENSORS};
    expect_refused(gguf, u, 64, &to_st, out, PB_ERR_UNSUPPORTED, "from_pretrained(gguf_file=...)");
    /* an output named for the other format: a GGUF export to x.safetensors, a folder export to x.gguf */
    char misnamed[1500];
    snprintf(misnamed, sizeof misnamed, "%s/ablated.safetensors", s->dir);
    expect_refused(gguf, u, 64, &o, misnamed, PB_ERR_ARG, "names a safetensors file, but the export is a GGUF file");
    assert_false(exists(misnamed));
    snprintf(misnamed, sizeof misnamed, "%s/ablated.gguf", s->dir);
    expect_refused(src, u, 64, &o, misnamed, PB_ERR_ARG, "names a GGUF file, but the export is a safetensors folder");
    assert_false(exists(misnamed));
    pb_export_options q8 = {.dtype = PB_DTYPE_Q8_0};
    expect_refused(src, u, 64, &q8, out, PB_ERR_ARG, "Q8_0 is for GGUF");
    assert_false(exists(out));
    /* an existing output is kept whole without overwrite */
    char existing[1500];
    snprintf(existing, sizeof existing, "%s/existing.gguf", s->dir);
    assert_int_equal(tu_write_text(existing, "keep me"), 0);
    expect_refused(gguf, u, 64, &o, existing, PB_ERR_ARG, "overwrite");
    size_t n;
    char *kept = tu_read_file(existing, &n);
    assert_int_equal(n, 7);
    free(kept);
    /* interrupted: nothing is left, the folder included */
    volatile int stop = 1;
    pb_export_options stopped = {.stop = &stop};
    expect_refused(src, u, 64, &stopped, out, PB_ERR_INTERRUPTED, "interrupted");
    assert_false(exists(out));
    snprintf(out, sizeof out, "%s/stopped.gguf", s->dir);
    expect_refused(gguf, u, 64, &stopped, out, PB_ERR_INTERRUPTED, "interrupted");
    char listing[2048];
    tu_list_dir(s->dir, listing, sizeof listing);
    assert_null(strstr(listing, "stopped"));
    assert_null(strstr(listing, ".tmp."));
    free(u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_export_equals_runtime_ablation, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_transformers_reference, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_adapters, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gguf_keeps_keys_and_unties, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_folder_config_and_tokenizer, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_storage_types, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_refusals, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_smollm2, tu_scratch_setup, tu_scratch_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
