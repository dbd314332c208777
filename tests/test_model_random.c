/* Seeded random models (model_random.c, pb_model_random): the generator
 * against an independent numpy re-implementation, the "tiny" random model
 * against transformers' LlamaForCausalLM built from those weights
 * (tests/fixtures/random_model, from scripts/make_random_model_reference.py),
 * the named shapes against their published configs, determinism, CPU vs
 * reference backend, bf16/f16 storage, and truncated real shapes
 * (smollm2-135m:1; qwen2-7b:1, with qkv biases, under PB_TEST_HEAVY=1) run
 * on the CPU and checked at position 0 against a forward written out here. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "formats/dtype.h"
#include "model/model.h"
#include "model/model_random.h"
#include "model/weight_source.h"
#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

static const uint64_t fixture_seed = 7;

static pb_model *random_model(const char *name, uint64_t seed, pb_backend_kind backend, pb_dtype dtype) {
    pb_load_options o = {.n_threads = 2, .backend = backend, .dtype = dtype};
    pb_model *m = NULL;
    if (pb_model_random(&m, name, seed, &o) != PB_OK)
        fail_msg("pb_model_random(%s, %llu, %s, %s): %s", name, (unsigned long long)seed, pb_backend_name(backend),
                 pb_dtype_name(dtype), pb_last_error());
    return m;
}

static json_t *load_reference(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/random_model/reference.json", tu_fixtures());
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root)
        fail_msg("%s: %s (regenerate with scripts/make_random_model_reference.py)", path, err.text);
    assert_string_equal(json_string_value(json_object_get(root, "magic")), "patchbay-fixture");
    assert_int_equal(json_integer_value(json_object_get(root, "version")), 1);
    assert_int_equal(json_integer_value(json_object_get(root, "seed")), (json_int_t)fixture_seed);
    return root;
}

static float *load_npy(const char *name, int *n_dims, int64_t shape[8]) {
    char path[1024];
    snprintf(path, sizeof path, "%s/random_model/%s.npy", tu_fixtures(), name);
    void *data = NULL;
    if (pb_npy_read(path, &data, PB_NPY_F32, n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    return data;
}

static int32_t *load_ids(int *T) {
    char path[1024];
    tu_fixture_file(path, sizeof path, "random_model", "ids.npy");
    return tu_read_ids(path, T);
}

static pb_random_kind kind_of(const char *text) {
    if (strcmp(text, "norm") == 0)
        return PB_RANDOM_NORM;
    if (strcmp(text, "bias") == 0)
        return PB_RANDOM_BIAS;
    assert_string_equal(text, "matrix");
    return PB_RANDOM_MATRIX;
}

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

/* Widened weights of a matrix (rows x cols) of the model, malloc'd. */
static float *matrix_f32(const pb_model *m, const pb_matrix *w, size_t n) {
    float *out = malloc(sizeof(float) * n);
    assert_non_null(out);
    if (pb_model_weights_download(m, out, w->data, w->dtype, n) != PB_OK)
        fail_msg("%s", pb_last_error());
    return out;
}

static float *vector_f32(const pb_model *m, const float *v, size_t n) {
    float *out = malloc(sizeof(float) * n);
    assert_non_null(out);
    assert_int_equal(m->backend->ops->download(m->backend, out, v, sizeof(float) * n), PB_OK);
    return out;
}

/* ---- (a) the generator ------------------------------------------------ */

/* pb_random_fill against numpy, bit for bit; then the tiny model's loaded
 * tensors against the same cases, which checks the loader's tensor
 * numbering (tensor 0 embedding, 1 final norm, 3 layer 0 Q, 37 layer 3
 * down projection). */
static void test_generator_matches_numpy(void **state) {
    json_t *root = load_reference();
    json_t *cases = json_object_get(root, "generator_cases");
    assert_true(json_array_size(cases) >= 8);
    pb_model *m = random_model("tiny", fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F32);
    int n_model_checked = 0;
    for (size_t c = 0; c < json_array_size(cases); c++) {
        json_t *item = json_array_get(cases, c);
        uint64_t seed = strtoull(json_string_value(json_object_get(item, "seed")), NULL, 10);
        int tensor = (int)json_integer_value(json_object_get(item, "tensor"));
        size_t offset = (size_t)json_integer_value(json_object_get(item, "offset"));
        pb_random_kind kind = kind_of(json_string_value(json_object_get(item, "kind")));
        json_t *bits = json_object_get(item, "bits");
        size_t n = json_array_size(bits);
        assert_true(n == 16);
        float *got = malloc(sizeof(float) * (offset + n));
        assert_non_null(got);
        pb_random_fill(got, offset + n, seed, tensor, kind);
        for (size_t i = 0; i < n; i++) {
            uint32_t want = (uint32_t)json_integer_value(json_array_get(bits, i));
            if (float_bits(got[offset + i]) != want)
                fail_msg("seed %llu tensor %d element %zu: 0x%08x (%.9g), numpy 0x%08x", (unsigned long long)seed,
                         tensor, offset + i, float_bits(got[offset + i]), (double)got[offset + i], want);
        }
        /* The model's copy of the same tensor. */
        if (seed == fixture_seed && offset == 0 && (tensor == 0 || tensor == 1 || tensor == 3 || tensor == 37)) {
            const pb_model_config *cfg = pb_model_get_config(m);
            float *loaded;
            if (tensor == 1)
                loaded = vector_f32(m, m->final_norm, (size_t)cfg->d_model);
            else {
                const pb_matrix *w = tensor == 0   ? &m->token_embd
                                     : tensor == 3 ? &m->layers[0].wq
                                                   : &m->layers[3].w_down;
                loaded = matrix_f32(m, w, n);
            }
            assert_memory_equal(loaded, got, sizeof(float) * n);
            free(loaded);
            n_model_checked++;
        }
        free(got);
    }
    assert_int_equal(n_model_checked, 4);
    pb_model_free(m);
    json_decref(root);
}

/* The documented distributions, on a large sample. */
static void test_generator_distribution(void **state) {
    enum { N = 1 << 18 };
    float *x = malloc(sizeof(float) * N);
    assert_non_null(x);
    const pb_random_kind kinds[] = {PB_RANDOM_MATRIX, PB_RANDOM_BIAS, PB_RANDOM_NORM};
    for (int k = 0; k < 3; k++) {
        pb_random_fill(x, N, 11, 5, kinds[k]);
        double sum = 0, sum_sq = 0, lo = INFINITY, hi = -INFINITY;
        for (int i = 0; i < N; i++) {
            sum += x[i];
            sum_sq += (double)x[i] * x[i];
            lo = fmin(lo, x[i]);
            hi = fmax(hi, x[i]);
        }
        double mean = sum / N, std = sqrt(sum_sq / N - mean * mean);
        if (kinds[k] == PB_RANDOM_NORM) {
            assert_true(lo >= 0.9 - PB_TOL_RANDOM_NORM_RANGE && hi <= 1.1 + PB_TOL_RANDOM_NORM_RANGE);
            assert_true(fabs(mean - 1.0) < PB_TOL_RANDOM_NORM_MEAN);
        } else {
            assert_true(fabs(mean) < PB_TOL_RANDOM_MATRIX_MEAN);
            assert_true(fabs(std - 0.02) < PB_TOL_RANDOM_MATRIX_STD);
        }
    }
    free(x);
}

/* ---- (b) the tiny random model is a Llama ------------------------------- */

static void test_tiny_matches_transformers(void **state) {
    json_t *root = load_reference();
    int T;
    int32_t *ids = load_ids(&T);
    json_t *hooks = json_object_get(root, "hooks");
    char pattern[1024] = "";
    for (size_t i = 0; i < json_array_size(hooks); i++) {
        strncat(pattern, i ? "," : "", sizeof pattern - strlen(pattern) - 1);
        strncat(pattern, json_string_value(json_array_get(hooks, i)), sizeof pattern - strlen(pattern) - 1);
    }
    pb_model *m = random_model("tiny", fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F32);
    const pb_model_config *c = pb_model_get_config(m);
    assert_string_equal(pb_model_get_source(m), "random:tiny:4:7");
    pb_capture *cap = NULL;
    assert_int_equal(pb_capture_create(&cap, m, pattern), PB_OK);
    assert_int_equal(pb_capture_count(cap), (int)json_array_size(hooks));
    float *logits = malloc(sizeof(float) * (size_t)T * c->vocab_size);
    assert_int_equal(pb_forward(m, ids, T, logits, cap), PB_OK);

    double worst_hook = 0;
    for (int i = 0; i < pb_capture_count(cap); i++) {
        int n_dims, ref_dims;
        int64_t shape[3], ref_shape[8];
        const float *got = pb_capture_data(cap, i, &n_dims, shape);
        float *ref = load_npy(pb_capture_name(cap, i), &ref_dims, ref_shape);
        assert_int_equal(ref_dims, n_dims);
        size_t count = 1;
        for (int d = 0; d < n_dims; d++) {
            assert_int_equal(ref_shape[d], shape[d]);
            count *= (size_t)shape[d];
        }
        double e = tu_nmse(got, ref, count);
        if (!(e <= PB_TOL_TINY_HOOK_NMSE))
            fail_msg("hook %s: NMSE %.3g > %.3g", pb_capture_name(cap, i), e, PB_TOL_TINY_HOOK_NMSE);
        worst_hook = fmax(worst_hook, e);
        free(ref);
    }
    int ref_dims;
    int64_t ref_shape[8];
    float *ref = load_npy("logits", &ref_dims, ref_shape);
    assert_int_equal(ref_dims, 2);
    assert_int_equal(ref_shape[0], T);
    assert_int_equal(ref_shape[1], c->vocab_size);
    size_t n = (size_t)T * c->vocab_size;
    double max_abs = tu_max_abs_diff(logits, ref, n), nmse = tu_nmse(logits, ref, n);
    print_message("[ MEASURE  ] tiny random model vs transformers: logits max |diff| %.3g, NMSE %.3g; worst hook "
                  "NMSE %.3g\n",
                  max_abs, nmse, worst_hook);
    assert_true(max_abs <= PB_TOL_TINY_LOGITS_MAX_ABS);
    assert_true(nmse <= PB_TOL_RANDOM_LOGITS_NMSE);
    free(ref);
    free(logits);
    free(ids);
    pb_capture_free(cap);
    pb_model_free(m);
    json_decref(root);
}

/* ---- (c) names and configs ---------------------------------------------- */

/* Hyperparameters as published in each model's config.json. A zero (or
 * NULL) field is not checked; tied and qkv_bias are -1 when not checked. */
typedef struct named_config {
    const char *name, *arch;
    int n_layers, d_model, n_heads, n_kv_heads, head_dim, d_mlp, vocab_size;
    float rope_theta, rms_eps;
    int tied, qkv_bias;
} named_config;

static const named_config named_configs[] = {
    {"llama3-8b", "llama", 32, 4096, 32, 8, 128, 14336, 128256, 500000.0f, 1e-5f, 0, 0},
    {"llama3-70b", "llama", 80, 8192, 64, 8, 128, 28672, 128256, 0, 0, 0, -1},
    {"qwen2-7b", "qwen2", 28, 3584, 28, 4, 128, 18944, 152064, 1000000.0f, 1e-6f, 0, 1},
    {"smollm2-135m", "llama", 30, 576, 9, 3, 64, 1536, 49152, 100000.0f, 0, 1, -1},
    {"tiny", NULL, 4, 64, 0, 0, 0, 0, 512, 0, 0, 1, -1},
    {"gemma3-270m", "gemma3", 18, 640, 4, 1, 256, 2048, 262144, 1000000.0f, 1e-6f, 1, 0},
};

#define EXPECT_FIELD(e, c, field, check)                                                                     \
    do {                                                                                                     \
        if ((check) && (c).field != (e)->field)                                                              \
            fail_msg("%s: " #field " is %g, expected %g", (e)->name, (double)(c).field, (double)(e)->field); \
    } while (0)

static void check_named_config(const named_config *e) {
    pb_model_config c;
    if (pb_random_config(&c, e->name) != PB_OK)
        fail_msg("%s: %s", e->name, pb_last_error());
    if (e->arch && strcmp(c.arch, e->arch) != 0)
        fail_msg("%s: arch is '%s', expected '%s'", e->name, c.arch, e->arch);
    EXPECT_FIELD(e, c, n_layers, e->n_layers);
    EXPECT_FIELD(e, c, d_model, e->d_model);
    EXPECT_FIELD(e, c, n_heads, e->n_heads);
    EXPECT_FIELD(e, c, n_kv_heads, e->n_kv_heads);
    EXPECT_FIELD(e, c, head_dim, e->head_dim);
    EXPECT_FIELD(e, c, d_mlp, e->d_mlp);
    EXPECT_FIELD(e, c, vocab_size, e->vocab_size);
    EXPECT_FIELD(e, c, rope_theta, e->rope_theta != 0);
    EXPECT_FIELD(e, c, rms_eps, e->rms_eps != 0);
    if (e->tied >= 0 && c.tied_embeddings != e->tied)
        fail_msg("%s: tied_embeddings is %d, expected %d", e->name, c.tied_embeddings, e->tied);
    if (e->qkv_bias >= 0 && c.has_qkv_bias != e->qkv_bias)
        fail_msg("%s: has_qkv_bias is %d, expected %d", e->name, c.has_qkv_bias, e->qkv_bias);
}

static void test_named_configs(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof named_configs / sizeof named_configs[0]; i++)
        check_named_config(&named_configs[i]);

    /* Llama 3's rope scaling. */
    pb_model_config c;
    assert_int_equal(pb_random_config(&c, "llama3-8b"), PB_OK);
    assert_int_equal(c.rope_scaling, PB_ROPE_SCALING_LLAMA3);
    assert_true(c.rope_factor == 8.0f && c.rope_low_freq_factor == 1.0f && c.rope_high_freq_factor == 4.0f);
    assert_int_equal(c.rope_original_context, 8192);

    /* Every advertised name parses and validates. */
    const char *names[] = {"tiny", "smollm2-135m", "llama3-8b", "llama3-70b", "qwen2-7b", "gemma3-270m"};
    for (int i = 0; i < 6; i++) {
        assert_non_null(strstr(pb_model_random_names(), names[i]));
        assert_int_equal(pb_random_config(&c, names[i]), PB_OK);
        assert_int_equal(pb_model_config_validate(&c), PB_OK);
    }

    /* Gemma-3 270M: every architecture field of google/gemma-3-270m's config. */
    assert_int_equal(pb_random_config(&c, "gemma3-270m"), PB_OK);
    assert_int_equal(c.activation, PB_ACTIVATION_GELU_TANH);
    assert_true(c.qk_norm && c.sandwich_norm);
    assert_true(c.embed_scale == (float)sqrt(640.0) && c.attn_scale == 1.0f / 16.0f);
    assert_true(c.sliding_window == 512 && c.sliding_period == 6 && c.rope_theta_local == 10000.0f);
    assert_true(pb_layer_is_sliding(&c, 4) && !pb_layer_is_sliding(&c, 5));

    /* :LAYERS keeps the first LAYERS layers and nothing else changes. */
    pb_model_config full, cut;
    assert_int_equal(pb_random_config(&full, "llama3-70b"), PB_OK);
    assert_int_equal(pb_random_config(&cut, "llama3-70b:2"), PB_OK);
    assert_int_equal(cut.n_layers, 2);
    cut.n_layers = full.n_layers;
    assert_memory_equal(&cut, &full, sizeof full);
    assert_int_equal(pb_random_config(&cut, "llama3-70b:80"), PB_OK);
    assert_int_equal(cut.n_layers, 80);
    assert_int_equal(pb_random_config(&cut, "tiny:1"), PB_OK);
    assert_int_equal(cut.n_layers, 1);
}

static void expect_refused(const char *spec, const char *needle1, const char *needle2) {
    pb_model_config c;
    pb_status st = pb_random_config(&c, spec);
    if (st != PB_ERR_ARG)
        fail_msg("'%s': %s, expected PB_ERR_ARG", spec, pb_status_name(st));
    if (!strstr(pb_last_error(), needle1) || (needle2 && !strstr(pb_last_error(), needle2)))
        fail_msg("'%s': message should contain '%s'%s%s: %s", spec, needle1, needle2 ? " and " : "",
                 needle2 ? needle2 : "", pb_last_error());
    /* The loader gives the same refusal and no model. */
    pb_model *m = (pb_model *)&c; /* any non-NULL value: a refusal must reset it */
    pb_load_options o = {.n_threads = 1};
    assert_int_equal(pb_model_random(&m, spec, 1, &o), PB_ERR_ARG);
    assert_null(m);
    assert_non_null(strstr(pb_last_error(), needle1));
}

static void test_bad_names_refused(void **state) {
    expect_refused("llama4", "'llama4'", "tiny, smollm2-135m");
    expect_refused("gpt2:2", "'gpt2'", "qwen2-7b");
    expect_refused("", "empty", "tiny");
    expect_refused("tiny:0", "'0'", "[1, 4]");
    expect_refused("tiny:abc", "'abc'", "[1, 4]");
    expect_refused("tiny:999", "'999'", "[1, 4]");
    expect_refused("llama3-70b:81", "'81'", "[1, 80]");
    expect_refused("tiny:", "''", "[1, 4]");
    expect_refused("tiny:2x", "'2x'", NULL);
    expect_refused("tiny:-1", "'-1'", NULL);
    expect_refused("tiny:2x:bf16", "'2x'", NULL);
    pb_model *m = NULL;
    assert_int_equal(pb_model_random(&m, NULL, 1, NULL), PB_ERR_ARG);
    assert_int_equal(pb_model_random(NULL, "tiny", 1, NULL), PB_ERR_ARG);
}

/* NAME:LAYERS:TYPE stores the generator's values in that type: raw bytes
 * equal to pb_random_fill's values narrowed here (bf16, f16) or quantised
 * (q8_0) block by block, norms kept f32; read_f32 decodes them. */
static void test_stored_types(void **state) {
    (void)state;
    const char *specs[3] = {"smollm2-135m:1:bf16", "smollm2-135m:1:f16", "smollm2-135m:1:q8_0"};
    for (int i = 0; i < 3; i++) {
        pb_weight_source *src = NULL;
        CHECK_OK(pb_weight_source_open_random(&src, specs[i], 5));
        assert_true(pb_weight_source_has_raw(src));
        pb_tensor_info info, norm;
        CHECK_OK(pb_weight_source_find(src, "blk.0.attn_k.weight", &info));
        CHECK_OK(pb_weight_source_find(src, "blk.0.attn_norm.weight", &norm));
        assert_int_equal(norm.type, PB_WEIGHT_TYPE_F32);
        size_t n = (size_t)info.n_elements;
        float *values = malloc(n * sizeof(float)), *decoded = malloc(n * sizeof(float));
        uint8_t *want = malloc(n * 2);
        assert_non_null(values && decoded && want);
        pb_random_fill(values, n, 5, info.index, PB_RANDOM_MATRIX);
        for (size_t j = 0; j < n; j++) {
            uint16_t h = i == 0 ? pb_fp32_to_bf16(values[j]) : pb_fp32_to_fp16(values[j]);
            want[2 * j] = (uint8_t)(h & 0xff);
            want[2 * j + 1] = (uint8_t)(h >> 8);
        }
        if (i == 2)
            pb_quantize_q8_0(want, values, n / 32);
        const void *data;
        uint64_t n_bytes;
        CHECK_OK(pb_weight_source_raw(src, &info, &data, &n_bytes));
        assert_int_equal(n_bytes, i == 2 ? n / 32 * 34 : n * 2);
        assert_memory_equal(data, want, (size_t)n_bytes);
        CHECK_OK(pb_weight_source_read_f32(src, &info, decoded));
        CHECK_OK(pb_dequantize(values, data, info.type, n));
        assert_memory_equal(decoded, values, n * sizeof(float));
        free(values);
        free(decoded);
        free(want);
        pb_weight_source_free(src);
    }
}

/* No tokenizer: the text calls say so; token text is "<id>". */
static void test_no_tokenizer(void **state) {
    pb_model *m = random_model("tiny:2", 9, PB_BACKEND_CPU, PB_DTYPE_F32);
    assert_string_equal(pb_model_get_source(m), "random:tiny:2:9");
    assert_int_equal(pb_model_get_config(m)->n_layers, 2);
    int32_t *ids = NULL;
    int n = 0;
    assert_int_not_equal(pb_model_tokenize(m, "hi", 0, &ids, &n), PB_OK);
    assert_non_null(strstr(pb_last_error(), "no tokenizer"));
    assert_null(ids);
    assert_int_not_equal(pb_model_chat_tokenize(m, NULL, "hi", &ids, &n), PB_OK);
    assert_null(ids);
    pb_model_free(m);
}

/* ---- (d) determinism and backends ---------------------------------------- */

static float *tiny_logits(uint64_t seed, pb_backend_kind backend, pb_dtype dtype, const int32_t *ids, int T) {
    pb_model *m = random_model("tiny", seed, backend, dtype);
    size_t n = (size_t)T * pb_model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * n);
    assert_non_null(logits);
    if (pb_forward(m, ids, T, logits, NULL) != PB_OK)
        fail_msg("%s", pb_last_error());
    for (size_t i = 0; i < n; i++)
        assert_true(isfinite(logits[i]));
    pb_model_free(m);
    return logits;
}

/* T ids spread over tiny's vocabulary, fixed. */
static int32_t *long_prompt(int T) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    assert_non_null(ids);
    uint64_t s = 12345;
    for (int t = 0; t < T; t++)
        ids[t] = (int32_t)(tu_next(&s) % 512);
    return ids;
}

static void test_determinism_and_backends(void **state) {
    int T;
    int32_t *ids = load_ids(&T);
    size_t n = (size_t)T * 512;
    float *a = tiny_logits(fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F32, ids, T);
    float *b = tiny_logits(fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F32, ids, T);
    float *other = tiny_logits(fixture_seed + 1, PB_BACKEND_CPU, PB_DTYPE_F32, ids, T);
    float *ref = tiny_logits(fixture_seed, PB_BACKEND_REFERENCE, PB_DTYPE_F32, ids, T);
    assert_memory_equal(a, b, sizeof(float) * n);
    double other_nmse = tu_nmse(other, a, n), backends = tu_nmse(a, ref, n);
    print_message("[ MEASURE  ] seed 7 vs seed 8 logits NMSE %.3g; cpu vs reference NMSE %.3g\n", other_nmse, backends);
    assert_true(other_nmse > PB_TOL_RANDOM_SEEDS_MIN_NMSE); /* independent weights: ~2 */
    assert_true(backends <= PB_TOL_OP_NMSE);
    free(a);
    free(b);
    free(other);
    free(ref);
    free(ids);
}

/* ---- (e) storage dtypes -------------------------------------------------- */

/* Every weight of the 16-bit model is the f32 model's weight rounded. */
static void expect_rounded(const pb_model *f32, const pb_model *narrow, pb_dtype dtype) {
    const pb_model_config *c = pb_model_get_config(f32);
    size_t d = (size_t)c->d_model, q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
    size_t changed = 0, total = 0;
    for (int l = -1; l < c->n_layers; l++) {
        const pb_layer_weights *A = l >= 0 ? &f32->layers[l] : NULL, *B = l >= 0 ? &narrow->layers[l] : NULL;
        const pb_matrix *wa[7], *wb[7];
        size_t count[7];
        int k = 0;
        if (l < 0) {
            wa[k] = &f32->token_embd, wb[k] = &narrow->token_embd, count[k++] = (size_t)c->vocab_size * d;
        } else {
            wa[k] = &A->wq, wb[k] = &B->wq, count[k++] = q * d;
            wa[k] = &A->wk, wb[k] = &B->wk, count[k++] = kv * d;
            wa[k] = &A->wv, wb[k] = &B->wv, count[k++] = kv * d;
            wa[k] = &A->wo, wb[k] = &B->wo, count[k++] = d * q;
            wa[k] = &A->w_gate, wb[k] = &B->w_gate, count[k++] = (size_t)c->d_mlp * d;
            wa[k] = &A->w_up, wb[k] = &B->w_up, count[k++] = (size_t)c->d_mlp * d;
            wa[k] = &A->w_down, wb[k] = &B->w_down, count[k++] = d * (size_t)c->d_mlp;
        }
        for (int i = 0; i < k; i++) {
            float *x = matrix_f32(f32, wa[i], count[i]), *y = matrix_f32(narrow, wb[i], count[i]);
            for (size_t j = 0; j < count[i]; j++) {
                float want = pb_dtype_round(dtype, x[j]);
                if (float_bits(y[j]) != float_bits(want))
                    fail_msg("%s layer %d matrix %d element %zu: %.9g, expected %.9g (from %.9g)", pb_dtype_name(dtype),
                             l, i, j, (double)y[j], (double)want, (double)x[j]);
                changed += y[j] != x[j];
            }
            total += count[i];
            free(x);
            free(y);
        }
        /* Norm weights stay fp32, unrounded. */
        const float *va = l >= 0 ? A->attn_norm : f32->final_norm, *vb = l >= 0 ? B->attn_norm : narrow->final_norm;
        float *x = vector_f32(f32, va, d), *y = vector_f32(narrow, vb, d);
        assert_memory_equal(x, y, sizeof(float) * d);
        free(x);
        free(y);
    }
    assert_ptr_equal(narrow->output.data, narrow->token_embd.data); /* tied */
    /* A 16-bit copy that equalled the f32 one would prove nothing. */
    assert_true(changed > total / 2);
}

static void test_dtype_weights_rounded(void **state) {
    pb_model *f32 = random_model("tiny", fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F32);
    pb_model *bf16 = random_model("tiny", fixture_seed, PB_BACKEND_CPU, PB_DTYPE_BF16);
    pb_model *f16 = random_model("tiny", fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F16);
    expect_rounded(f32, bf16, PB_DTYPE_BF16);
    expect_rounded(f32, f16, PB_DTYPE_F16);
    /* Half the bytes for the matrices. */
    assert_true(pb_model_weight_bytes(bf16) < pb_model_weight_bytes(f32) * 6 / 10);
    assert_int_equal(pb_model_weight_bytes(bf16), pb_model_weight_bytes(f16));
    pb_model_free(f32);
    pb_model_free(bf16);
    pb_model_free(f16);
}

static int argmax(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best])
            best = i;
    return best;
}

/* Logits of tiny with these weights and backend on ids (T); with layer-0
 * q, k, v copied into qkv (3 x T x d_q or d_kv, packed) when non-NULL. */
static float *tiny_logits_qkv(pb_backend_kind backend, pb_dtype dtype, const int32_t *ids, int T, float *qkv) {
    pb_model *m = random_model("tiny", fixture_seed, backend, dtype);
    size_t n = (size_t)T * pb_model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * n);
    assert_non_null(logits);
    pb_capture *cap = NULL;
    assert_int_equal(pb_capture_create(&cap, m, "blocks.0.attn.hook_q,blocks.0.attn.hook_k,blocks.0.attn.hook_v"),
                     PB_OK);
    if (pb_forward(m, ids, T, logits, cap) != PB_OK)
        fail_msg("%s", pb_last_error());
    for (int i = 0; i < 3; i++) {
        int n_dims;
        int64_t shape[3];
        const float *x = pb_capture_data(cap, i, &n_dims, shape);
        size_t count = (size_t)(shape[0] * shape[1] * shape[2]);
        memcpy(qkv, x, sizeof(float) * count);
        qkv += count;
    }
    pb_capture_free(cap);
    pb_model_free(m);
    return logits;
}

static void test_dtype_forward(void **state) {
    enum { T = 128, V = 512, QKV = T * (64 + 32 + 32) };
    int32_t *ids = long_prompt(T);
    size_t n = (size_t)T * V;
    float *qkv_cpu = malloc(sizeof(float) * QKV), *qkv_ref = malloc(sizeof(float) * QKV);
    assert_non_null(qkv_cpu);
    assert_non_null(qkv_ref);
    float *f32 = tiny_logits(fixture_seed, PB_BACKEND_CPU, PB_DTYPE_F32, ids, T);
    const pb_dtype narrow[2] = {PB_DTYPE_BF16, PB_DTYPE_F16};
    const double logits_tol[2] = {PB_TOL_BF16_BACKENDS_LOGITS_NMSE, PB_TOL_F16_BACKENDS_LOGITS_NMSE};
    double vs_f32[2];
    for (int k = 0; k < 2; k++) {
        float *cpu = tiny_logits_qkv(PB_BACKEND_CPU, narrow[k], ids, T, qkv_cpu);
        float *ref = tiny_logits_qkv(PB_BACKEND_REFERENCE, narrow[k], ids, T, qkv_ref);
        for (size_t i = 0; i < n; i++)
            assert_true(isfinite(cpu[i]));
        double qkv_backends = tu_nmse(qkv_cpu, qkv_ref, QKV), backends = tu_nmse(cpu, ref, n);
        vs_f32[k] = tu_nmse(cpu, f32, n);
        int agree = 0;
        for (int t = 0; t < T; t++)
            agree += argmax(cpu + (size_t)t * V, V) == argmax(f32 + (size_t)t * V, V);
        print_message("[ MEASURE  ] tiny %s, %d tokens: cpu vs reference layer-0 qkv NMSE %.3g, logits NMSE %.3g; "
                      "vs f32 weights: logits NMSE %.3g, argmax agreement %d/%d\n",
                      pb_dtype_name(narrow[k]), T, qkv_backends, backends, vs_f32[k], agree, T);
        assert_true(qkv_backends <= PB_TOL_OP_NMSE);
        assert_true(backends <= logits_tol[k]);
        assert_true(vs_f32[k] <= PB_TOL_BF16_VS_F32_NMSE);
        assert_true(vs_f32[k] > 0); /* the rounding did happen */
        assert_true(agree >= PB_TOL_MIN_BF16_ARGMAX_AGREEMENT * T);
        free(cpu);
        free(ref);
    }
    assert_true(vs_f32[1] < vs_f32[0]); /* f16 keeps 10 mantissa bits, bf16 7 */
    free(qkv_cpu);
    free(qkv_ref);
    free(f32);
    free(ids);
}

/* ---- (f) a truncated real shape ------------------------------------------ */

static double rms_scale(const double *x, int d, double eps) {
    double s = 0;
    for (int i = 0; i < d; i++)
        s += x[i] * x[i];
    return 1.0 / sqrt(s / d + eps);
}

/* out (n) = W (n, k) @ round(x) + bias, W widened, sums in double. */
static void hand_matmul(double *out, const pb_model *m, const pb_matrix *w, const float *bias, const double *x, int n,
                        int k) {
    float *xr = malloc(sizeof(float) * (size_t)k), *row = malloc(sizeof(float) * (size_t)k);
    float *b = bias ? vector_f32(m, bias, (size_t)n) : NULL;
    assert_non_null(xr);
    assert_non_null(row);
    for (int i = 0; i < k; i++)
        xr[i] = pb_dtype_round(w->dtype, (float)x[i]);
    size_t row_bytes = pb_dtype_bytes(w->dtype, (uint64_t)k);
    for (int r = 0; r < n; r++) {
        if (pb_model_weights_download(m, row, (const char *)w->data + (size_t)r * row_bytes, w->dtype, (size_t)k) !=
            PB_OK)
            fail_msg("%s", pb_last_error());
        double s = b ? b[r] : 0.0;
        for (int i = 0; i < k; i++)
            s += (double)row[i] * xr[i];
        out[r] = s;
    }
    free(b);
    free(xr);
    free(row);
}

/* Logits at position 0 (vocab) of a one-layer model, written out: at
 * position 0 attention attends only to itself, so each query head's output
 * is the value vector of its key-value head, and RoPE and q/k do not
 * matter. */
static void hand_forward_position0(const pb_model *m, int32_t id, double *logits) {
    const pb_model_config *c = pb_model_get_config(m);
    assert_int_equal(c->n_layers, 1);
    int d = c->d_model, hd = c->head_dim, kv = c->n_kv_heads * hd, q = c->n_heads * hd;
    double *x = calloc((size_t)d, sizeof(double)), *h = calloc((size_t)d, sizeof(double));
    double *v = calloc((size_t)kv, sizeof(double)), *z = calloc((size_t)q, sizeof(double));
    double *gate = calloc((size_t)c->d_mlp, sizeof(double)), *up = calloc((size_t)c->d_mlp, sizeof(double));
    double *o = calloc((size_t)d, sizeof(double));
    pb_matrix embd_row = {(char *)m->token_embd.data + pb_dtype_bytes(m->token_embd.dtype, (uint64_t)id * d),
                          m->token_embd.dtype};
    float *row = matrix_f32(m, &embd_row, (size_t)d);
    for (int i = 0; i < d; i++)
        x[i] = row[i]; /* (d_model) */
    free(row);
    const pb_layer_weights *L = &m->layers[0];
    float *norm = vector_f32(m, L->attn_norm, (size_t)d);
    double s = rms_scale(x, d, c->rms_eps);
    for (int i = 0; i < d; i++)
        h[i] = x[i] * s * norm[i];
    free(norm);
    hand_matmul(v, m, &L->wv, L->bv, h, kv, d); /* (n_kv_heads * head_dim) */
    int group = c->n_heads / c->n_kv_heads;
    for (int head = 0; head < c->n_heads; head++)
        memcpy(z + (size_t)head * hd, v + (size_t)(head / group) * hd, sizeof(double) * (size_t)hd);
    hand_matmul(o, m, &L->wo, NULL, z, d, q);
    for (int i = 0; i < d; i++)
        x[i] += o[i];
    norm = vector_f32(m, L->mlp_norm, (size_t)d);
    s = rms_scale(x, d, c->rms_eps);
    for (int i = 0; i < d; i++)
        h[i] = x[i] * s * norm[i];
    free(norm);
    hand_matmul(gate, m, &L->w_gate, NULL, h, c->d_mlp, d);
    hand_matmul(up, m, &L->w_up, NULL, h, c->d_mlp, d);
    for (int i = 0; i < c->d_mlp; i++)
        gate[i] = gate[i] / (1.0 + exp(-gate[i])) * up[i];
    hand_matmul(o, m, &L->w_down, NULL, gate, d, c->d_mlp);
    for (int i = 0; i < d; i++)
        x[i] += o[i];
    norm = vector_f32(m, m->final_norm, (size_t)d);
    s = rms_scale(x, d, c->rms_eps);
    for (int i = 0; i < d; i++)
        h[i] = x[i] * s * norm[i];
    free(norm);
    hand_matmul(logits, m, &m->output, NULL, h, c->vocab_size, d);
    free(x);
    free(h);
    free(v);
    free(z);
    free(gate);
    free(up);
    free(o);
}

/* A one-layer cut of a real shape in bf16 on the CPU: runs on 4 tokens,
 * and position 0 matches the forward written out above. */
static void check_real_shape(const char *name, const int32_t ids[4]) {
    const uint64_t seed = 3;
    pb_model *m = random_model(name, seed, PB_BACKEND_CPU, PB_DTYPE_BF16);
    const pb_model_config *c = pb_model_get_config(m);
    char source[96];
    snprintf(source, sizeof source, "random:%.*s:1:3", (int)strcspn(name, ":"), name);
    assert_string_equal(pb_model_get_source(m), source);
    assert_int_equal(c->n_layers, 1);
    if (c->tied_embeddings) {
        assert_ptr_equal(m->output.data, m->token_embd.data);
    } else {
        /* tensor 2 is the unembedding, its own weights */
        assert_ptr_not_equal(m->output.data, m->token_embd.data);
        float want[16], *got = matrix_f32(m, &m->output, 16);
        pb_random_fill(want, 16, seed, 2, PB_RANDOM_MATRIX);
        for (int i = 0; i < 16; i++)
            assert_true(got[i] == pb_dtype_round(PB_DTYPE_BF16, want[i]));
        free(got);
    }
    if (c->has_qkv_bias) {
        /* the biases follow v: tensors 7, 8, 9 of an untied model */
        assert_non_null(m->layers[0].bq);
        float want[16], *got = vector_f32(m, m->layers[0].bk, 16);
        pb_random_fill(want, 16, seed, 8, PB_RANDOM_BIAS);
        assert_memory_equal(got, want, sizeof want);
        free(got);
    }
    size_t V = (size_t)c->vocab_size;
    float *logits = malloc(sizeof(float) * 4 * V);
    double *want = malloc(sizeof(double) * V);
    float *want_f = malloc(sizeof(float) * V);
    assert_non_null(logits);
    assert_non_null(want);
    assert_non_null(want_f);
    assert_int_equal(pb_forward(m, ids, 4, logits, NULL), PB_OK);
    for (size_t i = 0; i < 4 * V; i++)
        assert_true(isfinite(logits[i]));
    /* Later positions see the earlier ones: not a copy of position 0. */
    assert_true(tu_nmse(logits + V, logits, V) > PB_TOL_HAND_FORWARD_POSITIONS_MIN_NMSE);
    hand_forward_position0(m, ids[0], want);
    for (size_t i = 0; i < V; i++)
        want_f[i] = (float)want[i];
    double nmse = tu_nmse(logits, want_f, V);
    print_message("[ MEASURE  ] %s bf16, position 0 vs hand forward: NMSE %.3g, max |diff| %.3g, %.0f MiB of "
                  "weights\n",
                  name, nmse, tu_max_abs_diff(logits, want_f, V), (double)pb_model_weight_bytes(m) / (1 << 20));
    assert_true(nmse <= PB_TOL_HAND_FORWARD_NMSE);
    free(logits);
    free(want);
    free(want_f);
    pb_model_free(m);
}

/* ---- (f) fused projections ------------------------------------------------ */

/* Logits (T, vocab) and every q, k, v and mlp_out hook of m on ids, one
 * malloc'd buffer; *count gets its length. */
static float *forward_all(pb_model *m, const int32_t *ids, int T, size_t *count) {
    const pb_model_config *c = pb_model_get_config(m);
    pb_capture *cap = NULL;
    if (pb_capture_create(&cap, m,
                          "blocks.*.attn.hook_q,blocks.*.attn.hook_k,blocks.*.attn.hook_v,"
                          "blocks.*.hook_mlp_out") != PB_OK)
        fail_msg("%s", pb_last_error());
    size_t total = (size_t)T * c->vocab_size;
    for (int i = 0; i < pb_capture_count(cap); i++)
        total += (size_t)T * c->d_model * 2; /* wider than any captured row */
    float *out = calloc(total, sizeof(float));
    assert_non_null(out);
    if (pb_forward(m, ids, T, out, cap) != PB_OK)
        fail_msg("%s", pb_last_error());
    size_t used = (size_t)T * c->vocab_size;
    for (int i = 0; i < pb_capture_count(cap); i++) {
        int n_dims;
        int64_t shape[3];
        const float *x = pb_capture_data(cap, i, &n_dims, shape);
        size_t n = (size_t)(shape[0] * shape[1] * (n_dims == 3 ? shape[2] : 1));
        memcpy(out + used, x, sizeof(float) * n);
        used += n;
    }
    pb_capture_free(cap);
    *count = used;
    return out;
}

/* The load lays q/k/v (and their biases) and gate/up out back to back, and
 * the executor multiplies each group as one GEMM. Every hook (q, k, v,
 * mlp_out) and the logits must be what separate GEMMs give: bit for bit on
 * the reference backend (each output element is the same dot product);
 * on OpenBLAS, whose edge kernels may sum an element in another order when
 * the width changes, within PB_TOL_OP_NMSE for f32 and within the 16-bit
 * backend bounds otherwise (an ulp there can flip the next layer's input
 * rounding, as between backends). 16-bit weights round the input once
 * either way. With and without biases (tiny_bias). */
static void test_fused_projections(void **state) {
    (void)state;
    enum { T = 24 };
    int32_t *ids = long_prompt(T);
    char bias_path[1024];
    snprintf(bias_path, sizeof bias_path, "%s/tiny_bias/model.gguf", tu_fixtures());
    const pb_backend_kind backends[2] = {PB_BACKEND_REFERENCE, PB_BACKEND_CPU};
    const pb_dtype dtypes[3] = {PB_DTYPE_F32, PB_DTYPE_BF16, PB_DTYPE_F16};
    for (int with_bias = 0; with_bias < 2; with_bias++)
        for (int bk = 0; bk < 2; bk++)
            for (int dt = 0; dt < 3; dt++) {
                pb_model *m = NULL;
                if (with_bias) {
                    pb_load_options o = {.backend = backends[bk], .dtype = dtypes[dt]};
                    if (pb_model_load(&m, bias_path, &o) != PB_OK)
                        fail_msg("%s", pb_last_error());
                    assert_non_null(m->layers[0].bq);
                } else {
                    m = random_model("tiny", fixture_seed, backends[bk], dtypes[dt]);
                }
                const pb_model_config *c = pb_model_get_config(m);
                for (int t = 0; t < T; t++)
                    ids[t] %= c->vocab_size;
                for (int l = 0; l < c->n_layers; l++) {
                    const pb_layer_weights *L = &m->layers[l];
                    assert_ptr_equal(L->w_qkv.data, L->wq.data);
                    assert_ptr_equal(L->b_qkv, L->bq);
                    assert_ptr_equal(L->w_gate_up.data, L->w_gate.data);
                }
                size_t n_fused, n_split;
                float *fused = forward_all(m, ids, T, &n_fused);
                for (int l = 0; l < c->n_layers; l++) {
                    m->layers[l].w_qkv.data = m->layers[l].w_gate_up.data = NULL;
                    m->layers[l].b_qkv = NULL;
                }
                float *split = forward_all(m, ids, T, &n_split);
                assert_int_equal(n_fused, n_split);
                double nmse = tu_nmse(fused, split, n_fused);
                print_message("[ MEASURE  ] fused vs separate projections (%s, %s, %s biases): NMSE %.3g%s\n",
                              backends[bk] == PB_BACKEND_CPU ? "cpu" : "reference", pb_dtype_name(dtypes[dt]),
                              with_bias ? "with" : "no", nmse,
                              memcmp(fused, split, sizeof(float) * n_fused) == 0 ? " (bit-identical)" : "");
                if (backends[bk] == PB_BACKEND_REFERENCE)
                    assert_memory_equal(fused, split, sizeof(float) * n_fused);
                else
                    assert_true(nmse <= (dtypes[dt] == PB_DTYPE_F32    ? PB_TOL_OP_NMSE
                                         : dtypes[dt] == PB_DTYPE_BF16 ? PB_TOL_BF16_BACKENDS_LOGITS_NMSE
                                                                       : PB_TOL_F16_BACKENDS_LOGITS_NMSE));
                free(fused);
                free(split);
                pb_model_free(m);
            }
    free(ids);
}

static void test_truncated_real_shape(void **state) {
    const int32_t ids[4] = {49151, 0, 7777, 9};
    check_real_shape("smollm2-135m:1", ids);
}

/* qwen2-7b:1 (qkv biases, untied, 152064 x 3584 embedding and unembedding):
 * 2.5 GiB of bf16 weights and ~6 GB peak memory, 15-30 s on two cores, so
 * only with PB_TEST_HEAVY=1. */
static void test_truncated_qwen2_7b(void **state) {
    const char *heavy = getenv("PB_TEST_HEAVY");
    if (!heavy || strcmp(heavy, "1") != 0) {
        print_message("skipping: qwen2-7b:1 needs ~6 GB and ~20 s; set PB_TEST_HEAVY=1 to run it\n");
        skip();
    }
    const int32_t ids[4] = {151643, 0, 77777, 9};
    check_real_shape("qwen2-7b:1", ids);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_generator_matches_numpy),
        cmocka_unit_test(test_generator_distribution),
        cmocka_unit_test(test_tiny_matches_transformers),
        cmocka_unit_test(test_named_configs),
        cmocka_unit_test(test_bad_names_refused),
        cmocka_unit_test(test_stored_types),
        cmocka_unit_test(test_no_tokenizer),
        cmocka_unit_test(test_determinism_and_backends),
        cmocka_unit_test(test_dtype_weights_rounded),
        cmocka_unit_test(test_dtype_forward),
        cmocka_unit_test(test_fused_projections),
        cmocka_unit_test(test_truncated_real_shape),
        cmocka_unit_test(test_truncated_qwen2_7b),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
