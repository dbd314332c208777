/* The CUDA backend end to end: whole forwards (logits and every captured hook)
 * and greedy generation of models on the GPU against the same models on the
 * CPU backend, with fp32, bf16 and fp16 weight storage. Models: the tiny GGUF
 * fixtures (tiny_gqa, tiny_bias), seeded random weights at SmolLM2-135M's
 * shape cut to 4 layers, and the real SmolLM2 GGUF when models/ has it
 * (skipped with a note otherwise).
 *
 * Without a CUDA device (or in a build without CUDA) it exits 77: skipped.
 * PB_CUDA_TEST_STAND_IN=reference (or cpu) runs every comparison with that
 * backend in place of CUDA: a check of this file's own logic and a preview of
 * the measures on a machine without a GPU (the reference backend is slow). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

/* The backend under test: CUDA, or the stand-in. */
static pb_backend_kind g_device = PB_BACKEND_CUDA;

/* ---- models and runs ---------------------------------------------------- */

/* A GGUF file (path) or a random model (random_name, seed). */
typedef struct model_source {
    const char *label;
    const char *path;
    const char *random_name;
    uint64_t seed;
} model_source;

static pb_model *open_model(const model_source *source, pb_backend_kind backend, pb_dtype dtype) {
    pb_load_options options = {.n_threads = 0, .backend = backend, .dtype = dtype, .device = 0};
    pb_model *model = NULL;
    pb_status status = source->path ? pb_model_load(&model, source->path, &options)
                                    : pb_model_random(&model, source->random_name, source->seed, &options);
    if (status != PB_OK)
        fail_msg("%s on %s in %s: %s: %s", source->label, pb_backend_name(backend), pb_dtype_name(dtype),
                 pb_status_name(status), pb_last_error());
    return model;
}

/* One forward's results. */
typedef struct run {
    float *logits;       /* (T, vocab) */
    pb_capture *capture; /* every hook point, or NULL */
} run;

static run forward(pb_model *model, const int32_t *ids, int T, int with_hooks) {
    run r = {NULL, NULL};
    size_t count = (size_t)T * (size_t)pb_model_get_config(model)->vocab_size;
    r.logits = malloc(sizeof(float) * count);
    assert_non_null(r.logits);
    if (with_hooks)
        CHECK_OK(pb_capture_create(&r.capture, model, "*"));
    CHECK_OK(pb_forward(model, ids, T, r.logits, r.capture));
    return r;
}

static void run_free(run *r) {
    free(r->logits);
    pb_capture_free(r->capture);
    r->logits = NULL;
    r->capture = NULL;
}

/* ---- comparison ----------------------------------------------------------- */

/* What one comparison (possibly over several prompts) measured. */
typedef struct measure {
    double err, norm;           /* logits: sum (got - want)^2, sum want^2 */
    double worst_position_nmse; /* the worst single position's logits NMSE */
    int argmax_same, positions;
    int hooks_compared;
    double worst_hook_nmse;
    char worst_hook[96];
    double first_projection_nmse; /* worst of blocks.0.attn.hook_q/k/v */
    double layer_worst[64];       /* worst hook of blocks.L, L < 64 */
    int n_layers_seen;
} measure;

static double measure_nmse(const measure *m) { return m->norm > 0.0 ? m->err / m->norm : m->err; }

static int argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best])
            best = i;
    return best;
}

/* Adds got vs want (T positions, V logits each) to m; with captures on both
 * sides, also every hook. */
static void measure_add(measure *m, const run *got, const run *want, int T, int V, const char *what) {
    for (int t = 0; t < T; t++) {
        const float *a = got->logits + (size_t)t * V, *b = want->logits + (size_t)t * V;
        double err = 0.0, norm = 0.0;
        for (int i = 0; i < V; i++) {
            double diff = (double)a[i] - (double)b[i];
            err += diff * diff;
            norm += (double)b[i] * b[i];
        }
        if (!(err == err && norm == norm))
            fail_msg("%s: position %d has non-finite logits", what, t);
        double nmse = norm > 0.0 ? err / norm : err;
        if (nmse > m->worst_position_nmse)
            m->worst_position_nmse = nmse;
        m->err += err;
        m->norm += norm;
        m->argmax_same += argmax(a, V) == argmax(b, V);
        m->positions++;
    }
    if (!got->capture || !want->capture)
        return;
    assert_int_equal(pb_capture_count(got->capture), pb_capture_count(want->capture));
    for (int i = 0; i < pb_capture_count(got->capture); i++) {
        const char *name = pb_capture_name(got->capture, i);
        assert_string_equal(name, pb_capture_name(want->capture, i));
        if (strstr(name, "hook_attn_scores"))
            continue; /* -inf above the diagonal leaves NMSE undefined; hook_pattern, its softmax, is compared */
        int got_dims = 0, want_dims = 0;
        int64_t got_shape[3], want_shape[3];
        const float *a = pb_capture_data(got->capture, i, &got_dims, got_shape);
        const float *b = pb_capture_data(want->capture, i, &want_dims, want_shape);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(got_dims, want_dims);
        size_t count = 1;
        for (int d = 0; d < got_dims; d++) {
            assert_int_equal(got_shape[d], want_shape[d]);
            count *= (size_t)got_shape[d];
        }
        double nmse = tu_nmse(a, b, count);
        if (!(nmse == nmse))
            fail_msg("%s: hook %s has non-finite values", what, name);
        if (nmse >= m->worst_hook_nmse) {
            m->worst_hook_nmse = nmse;
            snprintf(m->worst_hook, sizeof m->worst_hook, "%s", name);
        }
        if ((strcmp(name, "blocks.0.attn.hook_q") == 0 || strcmp(name, "blocks.0.attn.hook_k") == 0 ||
             strcmp(name, "blocks.0.attn.hook_v") == 0) &&
            nmse > m->first_projection_nmse)
            m->first_projection_nmse = nmse;
        int layer = -1;
        if (sscanf(name, "blocks.%d.", &layer) == 1 && layer >= 0 && layer < 64) {
            if (nmse > m->layer_worst[layer])
                m->layer_worst[layer] = nmse;
            if (layer + 1 > m->n_layers_seen)
                m->n_layers_seen = layer + 1;
        }
        m->hooks_compared++;
    }
}

static void measure_print(const measure *m, const char *what) {
    printf("[ MEASURE  ] %s: logits NMSE %.3g (worst position %.3g), argmax %d/%d (%.1f%%)", what, measure_nmse(m),
           m->worst_position_nmse, m->argmax_same, m->positions,
           m->positions ? 100.0 * m->argmax_same / m->positions : 0.0);
    if (m->hooks_compared) {
        printf(", %d hooks, worst NMSE %.3g (%s), first projections %.3g; worst per layer:", m->hooks_compared,
               m->worst_hook_nmse, m->worst_hook, m->first_projection_nmse);
        for (int layer = 0; layer < m->n_layers_seen; layer++)
            printf(" %.2g", m->layer_worst[layer]);
    }
    printf("\n");
}

/* Logits and (when compared) every hook within tolerance. */
static void expect_all(const measure *m, double tolerance, const char *what) {
    if (!(measure_nmse(m) <= tolerance))
        fail_msg("%s: logits NMSE %.3g exceeds %.0e", what, measure_nmse(m), tolerance);
    if (m->hooks_compared && !(m->worst_hook_nmse <= tolerance))
        fail_msg("%s: hook %s NMSE %.3g exceeds %.0e", what, m->worst_hook, m->worst_hook_nmse, tolerance);
}

static void expect_argmax(const measure *m, double fraction, const char *what) {
    if (!((double)m->argmax_same >= fraction * m->positions))
        fail_msg("%s: argmax agrees at %d of %d positions, below %.0f%%", what, m->argmax_same, m->positions,
                 100.0 * fraction);
}

/* ---- inputs --------------------------------------------------------------- */

/* T seeded ids in [0, vocab). */
static int32_t *random_ids(int T, int vocab, uint64_t seed) {
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    assert_non_null(ids);
    uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (int t = 0; t < T; t++)
        ids[t] = (int32_t)(tu_next(&state) % (uint64_t)vocab);
    return ids;
}

/* ---- the checks ------------------------------------------------------------ */

/* fp32 on both sides: logits and every hook within PB_TOL_CUDA_MODEL_F32_NMSE. */
static void check_f32(const model_source *source, const int32_t *ids, int T) {
    pb_model *device = open_model(source, g_device, PB_DTYPE_F32);
    pb_model *cpu = open_model(source, PB_BACKEND_CPU, PB_DTYPE_F32);
    const int V = pb_model_get_config(cpu)->vocab_size;
    char what[160];
    snprintf(what, sizeof what, "%s f32 %s vs cpu, T=%d", source->label, pb_backend_name(g_device), T);
    run got = forward(device, ids, T, 1), want = forward(cpu, ids, T, 1);
    measure m;
    memset(&m, 0, sizeof m);
    measure_add(&m, &got, &want, T, V, what);
    measure_print(&m, what);
    expect_all(&m, PB_TOL_CUDA_MODEL_F32_NMSE, what);
    run_free(&got);
    run_free(&want);
    pb_model_free(device);
    pb_model_free(cpu);
}

/* 16-bit weights on the device: against the CPU with the same dtype (the
 * first projections within PB_TOL_CUDA_MODEL_FIRST_PROJECTION_NMSE, the
 * sharp check; logits and every hook within PB_TOL_CUDA_MODEL_SAME_DTYPE_NMSE)
 * and against the CPU in fp32 (logits NMSE). The tiny fixtures and the random
 * models have randomly initialised weights and near-flat logits, whose argmax
 * the storage type alone moves (measured on the CPU backend, bf16 vs f32: 11
 * of 12 positions agree on tiny_bias, 46 of 48 on random smollm2-135m:4), so
 * here argmax agreement is reported, not asserted (test_smollm2 asserts it
 * on the real model). */
static void check_16bit(const model_source *source, pb_dtype dtype, const int32_t *ids, int T) {
    pb_model *device = open_model(source, g_device, dtype);
    pb_model *cpu_same = open_model(source, PB_BACKEND_CPU, dtype);
    pb_model *cpu_f32 = open_model(source, PB_BACKEND_CPU, PB_DTYPE_F32);
    const int V = pb_model_get_config(cpu_f32)->vocab_size;
    run got = forward(device, ids, T, 1), same = forward(cpu_same, ids, T, 1), f32 = forward(cpu_f32, ids, T, 0);
    char what[160];

    measure m;
    memset(&m, 0, sizeof m);
    snprintf(what, sizeof what, "%s %s %s vs cpu %s, T=%d", source->label, pb_dtype_name(dtype),
             pb_backend_name(g_device), pb_dtype_name(dtype), T);
    measure_add(&m, &got, &same, T, V, what);
    measure_print(&m, what);
    expect_all(&m, PB_TOL_CUDA_MODEL_SAME_DTYPE_NMSE, what);
    if (!(m.first_projection_nmse <= PB_TOL_CUDA_MODEL_FIRST_PROJECTION_NMSE))
        fail_msg("%s: first projections (blocks.0.attn.hook_q/k/v) NMSE %.3g exceeds %.0e", what,
                 m.first_projection_nmse, PB_TOL_CUDA_MODEL_FIRST_PROJECTION_NMSE);

    memset(&m, 0, sizeof m);
    snprintf(what, sizeof what, "%s %s %s vs cpu f32, T=%d", source->label, pb_dtype_name(dtype),
             pb_backend_name(g_device), T);
    measure_add(&m, &got, &f32, T, V, what);
    measure_print(&m, what);
    expect_all(&m, PB_TOL_CUDA_MODEL_16BIT_NMSE, what);

    run_free(&got);
    run_free(&same);
    run_free(&f32);
    pb_model_free(device);
    pb_model_free(cpu_same);
    pb_model_free(cpu_f32);
}

static const char *const g_tiny[] = {"tiny_gqa", "tiny_bias"};

static model_source tiny_source(const char *name, char *path, size_t path_size) {
    tu_fixture_file(path, path_size, name, "model.gguf");
    model_source source = {name, path, NULL, 0};
    return source;
}

/* Calls check on each tiny model with its ids.npy. */
static void for_each_tiny(void (*check)(const model_source *source, const int32_t *ids, int T)) {
    for (size_t i = 0; i < sizeof g_tiny / sizeof g_tiny[0]; i++) {
        char path[1024], ids_path[1024];
        model_source source = tiny_source(g_tiny[i], path, sizeof path);
        tu_fixture_file(ids_path, sizeof ids_path, g_tiny[i], "ids.npy");
        int T = 0;
        int32_t *ids = tu_read_ids(ids_path, &T);
        check(&source, ids, T);
        free(ids);
    }
}

static void test_tiny_f32(void **state) {
    (void)state;
    for_each_tiny(check_f32);
}

static void check_tiny_16bit(const model_source *source, const int32_t *ids, int T) {
    const pb_dtype dtypes[] = {PB_DTYPE_BF16, PB_DTYPE_F16};
    for (size_t d = 0; d < sizeof dtypes / sizeof dtypes[0]; d++)
        check_16bit(source, dtypes[d], ids, T);
}

static void test_tiny_16bit(void **state) {
    (void)state;
    for_each_tiny(check_tiny_16bit);
}

/* Seeded random weights at SmolLM2-135M's shape (d_model 576, 9 heads over 3
 * key-value heads of 64, vocab 49152), 4 layers: the real model's kernels
 * and sizes without its file. */
static void test_random_smollm2(void **state) {
    (void)state;
    const model_source source = {"random smollm2-135m:4", NULL, "smollm2-135m:4", 7};
    const int T = 48;
    int32_t *ids = random_ids(T, 49152, 11);
    check_f32(&source, ids, T);
    check_16bit(&source, PB_DTYPE_BF16, ids, T);
    check_16bit(&source, PB_DTYPE_F16, ids, T);
    free(ids);
}

/* The real SmolLM2-135M-Instruct (Q4_1 GGUF, dequantised on load) on the
 * chat-templated prompts of tests/fixtures/smollm2 (115 positions in all). */
static void test_smollm2(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", tu_source_dir());
    if (!tu_file_exists(path)) {
        printf("  note: %s is absent (scripts/fetch-model.sh fetches it): SmolLM2 checks skipped\n", path);
        skip();
    }
    const model_source source = {"SmolLM2-135M", path, NULL, 0};
    pb_model *device_f32 = open_model(&source, g_device, PB_DTYPE_F32);
    pb_model *device_bf16 = open_model(&source, g_device, PB_DTYPE_BF16);
    pb_model *cpu_f32 = open_model(&source, PB_BACKEND_CPU, PB_DTYPE_F32);
    const int V = pb_model_get_config(cpu_f32)->vocab_size;
    measure f32, bf16;
    memset(&f32, 0, sizeof f32);
    memset(&bf16, 0, sizeof bf16);
    for (int prompt = 0; prompt < 3; prompt++) {
        char ids_path[1024], file[64];
        snprintf(file, sizeof file, "prompt_%d_ids.npy", prompt);
        tu_fixture_file(ids_path, sizeof ids_path, "smollm2", file);
        int T = 0;
        int32_t *ids = tu_read_ids(ids_path, &T);
        run want = forward(cpu_f32, ids, T, 0);
        run got = forward(device_f32, ids, T, 0);
        measure_add(&f32, &got, &want, T, V, "SmolLM2 f32");
        run_free(&got);
        got = forward(device_bf16, ids, T, 0);
        measure_add(&bf16, &got, &want, T, V, "SmolLM2 bf16");
        run_free(&got);
        run_free(&want);
        free(ids);
    }
    char what[160];
    snprintf(what, sizeof what, "SmolLM2 f32 %s vs cpu f32, 3 chat prompts", pb_backend_name(g_device));
    measure_print(&f32, what);
    expect_all(&f32, PB_TOL_CUDA_MODEL_F32_NMSE, what);
    snprintf(what, sizeof what, "SmolLM2 bf16 %s vs cpu f32, 3 chat prompts", pb_backend_name(g_device));
    measure_print(&bf16, what);
    expect_all(&bf16, PB_TOL_CUDA_MODEL_16BIT_NMSE, what);
    expect_argmax(&bf16, PB_TOL_CUDA_MODEL_16BIT_ARGMAX, what);
    assert_true(bf16.positions >= 100);
    pb_model_free(device_f32);
    pb_model_free(device_bf16);
    pb_model_free(cpu_f32);
}

/* Greedy decoding with the KV cache (prefill, then one query per step against
 * the cached prefix: attention_jobs with p0 > 0) gives the CPU's tokens. */
static void check_generate(const model_source *source, const int32_t *ids, int T) {
    pb_model *device = open_model(source, g_device, PB_DTYPE_F32);
    pb_model *cpu = open_model(source, PB_BACKEND_CPU, PB_DTYPE_F32);
    const int prompt = T < 8 ? T : 8;
    int max_new = pb_model_get_config(cpu)->context_length - prompt;
    if (max_new > 24)
        max_new = 24;
    assert_true(max_new > 0);
    int32_t got[24], want[24];
    int n_got = 0, n_want = 0;
    CHECK_OK(pb_generate(device, ids, prompt, max_new, got, &n_got));
    CHECK_OK(pb_generate(cpu, ids, prompt, max_new, want, &n_want));
    assert_int_equal(n_got, n_want);
    for (int t = 0; t < n_want; t++)
        if (got[t] != want[t])
            fail_msg("%s: greedy token %d is %d on %s, %d on cpu", source->label, t, got[t], pb_backend_name(g_device),
                     want[t]);
    printf("[ MEASURE  ] %s f32 greedy: %d tokens after a %d-token prompt identical on %s and cpu\n", source->label,
           n_want, prompt, pb_backend_name(g_device));
    pb_model_free(device);
    pb_model_free(cpu);
}

static void test_generate(void **state) {
    (void)state;
    for_each_tiny(check_generate);
}

int main(void) {
    int exit_code = tu_cuda_device(&g_device);
    if (exit_code != 0)
        return exit_code;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tiny_f32), cmocka_unit_test(test_tiny_16bit), cmocka_unit_test(test_random_smollm2),
        cmocka_unit_test(test_smollm2),  cmocka_unit_test(test_generate),
    };
    return cmocka_run_group_tests(tests, NULL, NULL) == 0 ? 0 : 1;
}
