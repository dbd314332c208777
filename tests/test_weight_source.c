/* The weight-source interface (model/weight_source.h): the tiny fixture
 * model through its GGUF and its safetensors copy gives the same names,
 * shapes and floats; raw() hands out a tensor's bytes exactly as they are in
 * the file, for every layer (F32 tiny model; the quantised SmolLM2 GGUF when
 * present); the random source equals pb_model_random's weights; bad names
 * and layers are refused with messages naming the tensor. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdint.h>
#include <string.h>

#include "formats/gguf.h"
#include "model/model.h"
#include "model/weight_source.h"
#include "patchbay.h"
#include "test_util.h"

static void fixture(char *buf, size_t size, const char *relative) {
    snprintf(buf, size, "%s/%s", tu_fixtures(), relative);
}

static pb_weight_source *open_source(const char *path) {
    pb_weight_source *src = NULL;
    if (pb_weight_source_open(&src, path) != PB_OK)
        fail_msg("opening %s: %s", path, pb_last_error());
    return src;
}

static float *read_all(const pb_weight_source *src, const pb_tensor_info *info) {
    float *out = malloc(sizeof(float) * (size_t)info->n_elements);
    assert_non_null(out);
    if (pb_weight_source_read_f32(src, info, out) != PB_OK)
        fail_msg("reading %s: %s", info->name, pb_last_error());
    return out;
}

/* GGUF and safetensors copies of the same model: same hyperparameters, and
 * every canonical tensor has the same shape and the same floats. */
static void check_formats_agree(const char *model) {
    char gguf_path[1024], folder[1024], relative[256];
    snprintf(relative, sizeof relative, "%s/model.gguf", model);
    fixture(gguf_path, sizeof gguf_path, relative);
    fixture(folder, sizeof folder, model);
    pb_weight_source *g = open_source(gguf_path), *s = open_source(folder);
    assert_non_null(g->gguf);
    assert_null(g->folder);
    assert_null(s->gguf);
    assert_string_equal(s->folder, folder);
    const pb_model_config *a = &g->cfg, *b = &s->cfg;
    assert_int_equal(a->n_layers, b->n_layers);
    assert_int_equal(a->d_model, b->d_model);
    assert_int_equal(a->n_heads, b->n_heads);
    assert_int_equal(a->n_kv_heads, b->n_kv_heads);
    assert_int_equal(a->d_mlp, b->d_mlp);
    assert_int_equal(a->vocab_size, b->vocab_size);
    assert_int_equal(a->has_qkv_bias, b->has_qkv_bias);
    assert_int_equal(a->tied_embeddings, b->tied_embeddings);

    int n = pb_weight_list_count(a);
    assert_int_equal(n, pb_weight_list_count(b));
    for (int i = 0; i < n; i++) {
        pb_tensor_info want, from_gguf, from_st;
        pb_weight_list_at(a, i, &want);
        assert_int_equal(pb_weight_list_find(a, want.name), i);
        assert_int_equal(pb_weight_source_find(g, want.name, &from_gguf), PB_OK);
        assert_int_equal(pb_weight_source_find(s, want.name, &from_st), PB_OK);
        assert_string_equal(from_gguf.name, want.name);
        assert_string_equal(from_st.name, want.name);
        assert_string_equal(from_gguf.file_name, want.name); /* GGUF names are the canonical ones */
        char hf[128];
        assert_int_equal(pb_weight_hf_name(b, want.name, hf, sizeof hf), PB_OK);
        assert_string_equal(from_st.file_name, hf);
        assert_int_equal(from_gguf.n_dims, want.n_dims);
        assert_int_equal(from_st.n_dims, want.n_dims);
        for (int d = 0; d < want.n_dims; d++) {
            assert_int_equal(from_gguf.shape[d], want.shape[d]);
            assert_int_equal(from_st.shape[d], want.shape[d]);
        }
        assert_int_equal(from_gguf.n_elements, from_st.n_elements);
        float *x = read_all(g, &from_gguf), *y = read_all(s, &from_st);
        /* both copies hold the same fp32 values; the GGUF's Q/K rows come
         * back un-permuted */
        if (from_gguf.type == PB_WEIGHT_TYPE_F32 && from_st.type == PB_WEIGHT_TYPE_F32)
            assert_memory_equal(x, y, sizeof(float) * (size_t)from_gguf.n_elements);
        else if (tu_max_abs_diff(x, y, (size_t)from_gguf.n_elements) > 1e-2)
            fail_msg("%s: %s and %s differ by %g", want.name, pb_weight_type_name(from_gguf.type),
                     pb_weight_type_name(from_st.type), tu_max_abs_diff(x, y, (size_t)from_gguf.n_elements));
        free(x);
        free(y);
    }
    pb_weight_source_free(g);
    pb_weight_source_free(s);
}

static void test_formats_agree_gqa(void **state) { check_formats_agree("tiny_gqa"); }
static void test_formats_agree_bias(void **state) { check_formats_agree("tiny_bias"); }

/* raw() of each layer's tensors is the file's bytes at the tensor's offset:
 * the file read with fread and parsed again as a buffer, independently of
 * the source's mapping. Returns the number of tensors compared. */
static int check_raw_layers(const char *path, uint32_t expect_type) {
    uint8_t *bytes = NULL;
    size_t size = 0;
    bytes = (uint8_t *)tu_read_file(path, &size);
    assert_non_null(bytes);
    pb_gguf *copy = NULL;
    assert_int_equal(pb_gguf_open_buffer(&copy, bytes, size), PB_OK);
    pb_weight_source *src = open_source(path);
    const char *per_layer[] = {"attn_q.weight",   "attn_k.weight", "attn_v.weight",   "attn_output.weight",
                               "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight", "attn_norm.weight"};
    int compared = 0, typed = 0;
    for (int l = 0; l < src->cfg.n_layers; l++) {
        for (size_t k = 0; k < sizeof per_layer / sizeof per_layer[0]; k++) {
            pb_tensor_info info;
            assert_int_equal(pb_weight_source_find_layer(src, l, per_layer[k], &info), PB_OK);
            const void *raw = NULL;
            uint64_t n_bytes = 0;
            assert_int_equal(pb_weight_source_raw(src, &info, &raw, &n_bytes), PB_OK);
            const pb_gguf_tensor *t = pb_gguf_find_tensor(copy, info.name);
            assert_non_null(t);
            size_t offset = (size_t)((const uint8_t *)t->data - bytes);
            assert_int_equal(offset % pb_gguf_alignment(copy), 0);
            assert_int_equal(n_bytes, t->n_bytes);
            assert_int_equal(info.n_bytes, t->n_bytes);
            assert_int_equal(info.type, t->type);
            assert_true(offset + n_bytes <= size);
            assert_true(raw != (const void *)t->data); /* the source's own mapping */
            assert_memory_equal(raw, bytes + offset, (size_t)n_bytes);
            typed += info.type == expect_type;
            compared++;
        }
    }
    assert_true(typed > 0);
    pb_weight_source_free(src);
    pb_gguf_close(copy);
    free(bytes);
    return compared;
}

static void test_raw_every_layer_tiny(void **state) {
    char path[1024];
    fixture(path, sizeof path, "tiny_gqa/model.gguf");
    assert_int_equal(check_raw_layers(path, PB_WEIGHT_TYPE_F32), 2 * 8);
}

/* The quantised SmolLM2 file: raw() hands out Q4_1 blocks (20 bytes per 32
 * weights), not floats. */
static void test_raw_quantised(void **state) {
    char path[1024];
    if (!tu_model_path(path, sizeof path)) {
        skip(); /* models/SmolLM2-135M-Instruct.Q4_1.gguf is absent (scripts/fetch-model.sh) */
        return;
    }
    assert_int_equal(check_raw_layers(path, 3 /* PB_GGML_Q4_1 */), 30 * 8);
    pb_weight_source *src = open_source(path);
    pb_tensor_info info;
    assert_int_equal(pb_weight_source_find_layer(src, 29, "ffn_up.weight", &info), PB_OK);
    assert_string_equal(pb_weight_type_name(info.type), "Q4_1");
    assert_int_equal(info.n_bytes, info.n_elements / 32 * 20);
    pb_weight_source_free(src);
}

/* The random source's floats are the weights pb_model_random uploads. */
static void test_random_matches_model(void **state) {
    pb_weight_source *src = NULL;
    assert_int_equal(pb_weight_source_open_random(&src, "tiny:2", 11), PB_OK);
    assert_string_equal(src->path, "random:tiny:2:11");
    assert_null(src->gguf);
    assert_null(src->folder);
    pb_load_options options = {.backend = PB_BACKEND_CPU, .dtype = PB_DTYPE_F32, .n_threads = 1};
    pb_model *m = NULL;
    assert_int_equal(pb_model_random(&m, "tiny:2", 11, &options), PB_OK);
    assert_memory_equal(&src->cfg, pb_model_get_config(m), sizeof src->cfg);
    struct {
        const char *name;
        const void *weights;
    } checks[] = {
        {"token_embd.weight", m->token_embd.data},        {"output_norm.weight", m->final_norm},
        {"blk.0.attn_q.weight", m->layers[0].wq.data},    {"blk.0.attn_norm.weight", m->layers[0].attn_norm},
        {"blk.1.attn_k.weight", m->layers[1].wk.data},    {"blk.1.ffn_down.weight", m->layers[1].w_down.data},
        {"blk.1.ffn_norm.weight", m->layers[1].mlp_norm},
    };
    for (size_t i = 0; i < sizeof checks / sizeof checks[0]; i++) {
        pb_tensor_info info;
        assert_int_equal(pb_weight_source_find(src, checks[i].name, &info), PB_OK);
        float *expect = read_all(src, &info);
        float *got = malloc(sizeof(float) * (size_t)info.n_elements);
        assert_non_null(got);
        assert_int_equal(pb_model_weights_download(m, got, checks[i].weights, PB_DTYPE_F32, (size_t)info.n_elements),
                         PB_OK);
        assert_memory_equal(got, expect, sizeof(float) * (size_t)info.n_elements);
        free(got);
        free(expect);
    }
    /* no file, so no raw bytes */
    pb_tensor_info info;
    assert_int_equal(pb_weight_source_find(src, "blk.0.attn_q.weight", &info), PB_OK);
    const void *raw = (const void *)&info;
    uint64_t n_bytes = 1;
    assert_int_equal(pb_weight_source_raw(src, &info, &raw, &n_bytes), PB_ERR_UNSUPPORTED);
    assert_null(raw);
    assert_int_equal(n_bytes, 0);
    assert_non_null(strstr(pb_last_error(), "blk.0.attn_q.weight"));
    pb_model_free(m);
    pb_weight_source_free(src);
}

static void expect_refused(const pb_weight_source *src, const char *name, pb_status status, const char *needle) {
    pb_tensor_info info;
    pb_status got = pb_weight_source_find(src, name, &info);
    if (got != status)
        fail_msg("%s: '%s' gave %s, expected %s", src->path, name, pb_status_name(got), pb_status_name(status));
    if (!strstr(pb_last_error(), needle))
        fail_msg("%s: '%s': message should name '%s': %s", src->path, name, needle, pb_last_error());
    assert_false(pb_weight_source_has(src, name));
}

static void test_bad_names_refused(void **state) {
    char path[1024];
    fixture(path, sizeof path, "tiny_gqa/model.gguf");
    pb_weight_source *g = open_source(path);
    fixture(path, sizeof path, "tiny_gqa");
    pb_weight_source *s = open_source(path);
    pb_weight_source *r = NULL;
    assert_int_equal(pb_weight_source_open_random(&r, "tiny", 1), PB_OK);

    expect_refused(g, "blk.0.attn_nope.weight", PB_ERR_FORMAT, "missing tensor 'blk.0.attn_nope.weight'");
    expect_refused(g, "blk.2.attn_q.weight", PB_ERR_FORMAT, "'blk.2.attn_q.weight'");
    expect_refused(s, "blk.0.attn_nope.weight", PB_ERR_ARG, "'blk.0.attn_nope.weight'");
    expect_refused(s, "blk.2.attn_q.weight", PB_ERR_FORMAT, "missing tensor 'model.layers.2.self_attn.q_proj.weight'");
    expect_refused(s, "rope_freqs.weight", PB_ERR_FORMAT, "'rope_freqs.weight'");
    expect_refused(r, "blk.4.attn_q.weight", PB_ERR_FORMAT, "'blk.4.attn_q.weight'");
    expect_refused(r, "output.weight", PB_ERR_FORMAT, "'output.weight'"); /* tied */

    pb_tensor_info info;
    assert_int_equal(pb_weight_source_find_layer(g, 2, "attn_q.weight", &info), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "attn_q.weight"));
    assert_int_equal(pb_weight_source_find_layer(s, -1, "attn_q.weight", &info), PB_ERR_ARG);
    assert_int_equal(pb_weight_source_find(g, NULL, &info), PB_ERR_ARG);
    assert_int_equal(pb_weight_source_open(NULL, path), PB_ERR_ARG);

    pb_weight_source *none = (pb_weight_source *)&info; /* a refusal must reset it */
    assert_int_equal(pb_weight_source_open(&none, "/nonexistent/model.gguf"), PB_ERR_IO);
    assert_null(none);
    assert_non_null(strstr(pb_last_error(), "/nonexistent/model.gguf"));
    none = (pb_weight_source *)&info;
    assert_int_equal(pb_weight_source_open_random(&none, "gpt2", 1), PB_ERR_ARG);
    assert_null(none);
    pb_weight_source_free(NULL);

    pb_weight_source_free(g);
    pb_weight_source_free(s);
    pb_weight_source_free(r);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_formats_agree_gqa),    cmocka_unit_test(test_formats_agree_bias),
        cmocka_unit_test(test_raw_every_layer_tiny), cmocka_unit_test(test_raw_quantised),
        cmocka_unit_test(test_random_matches_model), cmocka_unit_test(test_bad_names_refused),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
