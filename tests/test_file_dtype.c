/* --dtype file: every matrix kept as the file stores it (a GGUF's quantised
 * blocks decoded inside each projection) against the same file dequantised
 * to f32 at load, which is what the numerics must equal:
 *   - every oracle patching case on its model's Q8_0 GGUF (written by
 *     llama.cpp's converter: permuted Q/K rows, fused q/k/v and gate/up
 *     parts) on the reference backend, equal within 1e-6 (in fact to the
 *     bit: the same decoded values summed in the same order), and on the CPU
 *     backend within its blocked-GEMM bound;
 *   - the real SmolLM2 (Q4_1 with a Q8_0 embedding) and Gemma 3 270M
 *     (Q4_K_M: Q5_0, Q4_K, Q6_K and Q8_0 mixed inside a layer) forwards, with
 *     the weights' memory of each storage;
 *   - what cannot be kept is refused or falls back by name. */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "formats/dtype.h"
#include "model/model.h"
#include "patching/sweep.h"
#include "test_util.h"
#include "tolerances.h"

#define Q8_FILE "model.q8_0.gguf"

static pb_model *load_as(const char *path, pb_backend_kind backend, pb_dtype dtype) {
    pb_load_options o = {.n_threads = 2, .backend = backend, .dtype = dtype};
    pb_model *m = NULL;
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s as %s: %s", path, pb_dtype_name(dtype), pb_last_error());
    return m;
}

/* The file an oracle case's model is tested from: the real SmolLM2 as
 * fetched, else the tiny model's Q8_0 GGUF. 0 when absent. */
static int case_model_path(const char *model, char *path, size_t size) {
    if (strcmp(model, "smollm2") == 0)
        return tu_model_path(path, size) != NULL;
    tu_fixture_file(path, size, model, Q8_FILE);
    return tu_file_exists(path);
}

/* One oracle case on one backend: the file-dtype sweep against the f32
 * one of the same file. */
static int check_case_on(const tu_oracle_case *c, pb_backend_kind backend, double tol) {
    const char *model = json_string_value(json_object_get(c->expected, "model"));
    char path[1400];
    if (!case_model_path(model, path, sizeof path)) {
        printf("[ SKIPPED  ] %s: %s not present\n", c->name, path);
        return 0;
    }
    pb_model *kept = load_as(path, backend, PB_DTYPE_FILE), *wide = load_as(path, backend, PB_DTYPE_F32);
    /* tiny_gemma2's rows (72, 80 wide) are no whole Q8_0 blocks: the
     * converter wrote f16 there, which file holds as f32 */
    assert_true(pb_model_has_quantised(kept) == (strcmp(model, "tiny_gemma2") != 0));
    assert_false(pb_model_has_quantised(wide));
    pb_sweep *a = tu_run_case_sweep(kept, c), *b = tu_run_case_sweep(wide, c);
    assert_int_equal(a->n_sites, b->n_sites);
    double diff = tu_sweep_difference(a, b);
    printf("[ MEASURE  ] %-30s %-9s %s %5.1f of %5.1f MiB of weights: max |d| %.2e (bound %.0e)\n", c->name,
           pb_backend_name(backend), model, (double)pb_model_weight_bytes(kept) / (1 << 20),
           (double)pb_model_weight_bytes(wide) / (1 << 20), diff, tol);
    assert_true(diff <= tol);
    pb_sweep_free(a);
    pb_sweep_free(b);
    pb_model_free(kept);
    pb_model_free(wide);
    return 1;
}

static int check_case_reference(const tu_oracle_case *c, void *ctx) {
    (void)ctx;
    /* the naive backend on the real model would take minutes: the CPU
     * backend covers it */
    if (strcmp(json_string_value(json_object_get(c->expected, "model")), "smollm2") == 0)
        return 0;
    return check_case_on(c, PB_BACKEND_REFERENCE, PB_TOL_INVARIANT_REF);
}

static int check_case_cpu(const tu_oracle_case *c, void *ctx) {
    (void)ctx;
    int real = strcmp(json_string_value(json_object_get(c->expected, "model")), "smollm2") == 0;
    return check_case_on(c, PB_BACKEND_CPU, real ? PB_TOL_SMOLLM2_SWEEP_CPU : PB_TOL_FILE_DTYPE_CPU);
}

static void test_oracle_cases_reference(void **state) {
    (void)state;
    assert_true(tu_visit_path_cases("patching", check_case_reference, NULL, 20));
}

static void test_oracle_cases_cpu(void **state) {
    (void)state;
    assert_true(tu_visit_path_cases("patching", check_case_cpu, NULL, 20));
}

/* Logits of ids under both storages of path on backend: max |d| and NMSE. */
static void compare_forward(const char *what, const char *path, pb_backend_kind backend, const int32_t *ids, int T,
                            double nmse_bound) {
    pb_model *kept = load_as(path, backend, PB_DTYPE_FILE), *wide = load_as(path, backend, PB_DTYPE_F32);
    int V = pb_model_get_config(kept)->vocab_size;
    float *a = malloc(sizeof(float) * (size_t)T * V), *b = malloc(sizeof(float) * (size_t)T * V);
    assert_non_null(a);
    assert_non_null(b);
    CHECK_OK(pb_forward(kept, ids, T, a, NULL));
    CHECK_OK(pb_forward(wide, ids, T, b, NULL));
    double nmse = tu_nmse(a, b, (size_t)T * V), diff = tu_max_abs_diff(a, b, (size_t)T * V);
    printf("[ MEASURE  ] %s %s: weights %.1f MiB kept vs %.1f MiB f32 (%.2fx less); logits NMSE %.3g, max |d| %.3g\n",
           what, pb_backend_name(backend), (double)pb_model_weight_bytes(kept) / (1 << 20),
           (double)pb_model_weight_bytes(wide) / (1 << 20),
           (double)pb_model_weight_bytes(wide) / (double)pb_model_weight_bytes(kept), nmse, diff);
    assert_true(nmse <= nmse_bound);
    if (nmse_bound == 0.0)
        assert_memory_equal(a, b, sizeof(float) * (size_t)T * V);
    assert_true(pb_model_weight_bytes(kept) * 3 < pb_model_weight_bytes(wide));
    free(a);
    free(b);
    pb_model_free(kept);
    pb_model_free(wide);
}

/* SmolLM2 Q4_1 (its embedding, tied to the output, Q8_0): the types kept,
 * the logits of the dequantised model. */
static void test_smollm2(void **state) {
    (void)state;
    char path[1024];
    if (!tu_model_path(path, sizeof path))
        skip();
    pb_model *m = load_as(path, PB_BACKEND_CPU, PB_DTYPE_FILE);
    assert_int_equal(m->token_embd.dtype, PB_DTYPE_Q8_0);
    assert_ptr_equal(m->output.data, m->token_embd.data);
    assert_int_equal(m->layers[0].wq.dtype, PB_DTYPE_Q4_1);
    assert_int_equal(m->layers[29].w_down.dtype, PB_DTYPE_Q4_1);
    assert_non_null(m->layers[3].w_qkv.data); /* all Q4_1: still one GEMM */
    pb_model_free(m);
    static const int32_t ids[12] = {1, 4093, 314, 253, 2995, 28, 198, 37, 19, 1022, 30, 2};
    compare_forward("smollm2", path, PB_BACKEND_CPU, ids, 12, PB_TOL_FILE_DTYPE_CPU_NMSE);
    /* the naive backend sums the same decoded values in the same order */
    compare_forward("smollm2", path, PB_BACKEND_REFERENCE, ids, 3, 0.0);
}

/* Gemma 3 270M Q4_K_M: five storage types, q/k/v of one layer in two of
 * them (no fused GEMM there), gate/up in one (fused). */
static void test_gemma3_mixed_types(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/models/gemma-3-270m-q4_k_m.gguf", tu_source_dir());
    if (!tu_file_exists(path))
        skip();
    pb_model *m = load_as(path, PB_BACKEND_CPU, PB_DTYPE_FILE);
    const pb_layer_weights *L = &m->layers[0];
    assert_int_equal(m->token_embd.dtype, PB_DTYPE_Q8_0);
    assert_int_equal(L->wq.dtype, PB_DTYPE_Q5_0);
    assert_int_equal(L->wv.dtype, PB_DTYPE_Q8_0);
    assert_int_equal(L->wo.dtype, PB_DTYPE_Q4_K);
    assert_int_equal(L->w_down.dtype, PB_DTYPE_Q6_K);
    assert_null(L->w_qkv.data);
    assert_non_null(L->w_gate_up.data);
    pb_model_free(m);
    static const int32_t ids[10] = {2, 105, 2364, 107, 9259, 236764, 1217, 659, 106, 107};
    compare_forward("gemma-3-270m", path, PB_BACKEND_CPU, ids, 10, PB_TOL_FILE_DTYPE_CPU_NMSE);
}

/* A Q8_0 tiny model's matrices come back from the device as the decoded
 * values the f32 load holds, bit for bit (the permuted Q/K rows and the
 * parts of fused tensors included). */
static void test_tiny_matrices_decode_to_f32(void **state) {
    (void)state;
    static const char *models[3] = {"tiny_gqa", "tiny_phi3", "tiny_gpt_neox"};
    for (int i = 0; i < 3; i++) {
        char path[1024];
        tu_fixture_file(path, sizeof path, models[i], Q8_FILE);
        pb_model *kept = load_as(path, PB_BACKEND_CPU, PB_DTYPE_FILE), *wide = load_as(path, PB_BACKEND_CPU, 0);
        const pb_model_config *c = pb_model_get_config(kept);
        size_t d = (size_t)c->d_model, q = (size_t)c->n_heads * c->head_dim, kv = (size_t)c->n_kv_heads * c->head_dim;
        const pb_layer_weights *A = &kept->layers[1], *B = &wide->layers[1];
        const pb_matrix *a[4] = {&A->wq, &A->wk, &A->wv, &A->w_up}, *b[4] = {&B->wq, &B->wk, &B->wv, &B->w_up};
        size_t n[4] = {q * d, kv * d, kv * d, (size_t)c->d_mlp * d};
        for (int k = 0; k < 4; k++) {
            float *x = malloc(sizeof(float) * n[k]), *y = malloc(sizeof(float) * n[k]);
            assert_non_null(x);
            assert_non_null(y);
            assert_int_equal(a[k]->dtype, PB_DTYPE_Q8_0);
            CHECK_OK(pb_model_weights_download(kept, x, a[k]->data, a[k]->dtype, n[k]));
            CHECK_OK(pb_model_weights_download(wide, y, b[k]->data, PB_DTYPE_F32, n[k]));
            assert_memory_equal(x, y, sizeof(float) * n[k]);
            free(x);
            free(y);
        }
        pb_model_free(kept);
        pb_model_free(wide);
    }
}

/* f32 files stay f32; a quantised storage is not a load option. */
static void test_file_dtype_edges(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    pb_model_free(m);
    char path[1024];
    tu_fixture_file(path, sizeof path, "tiny_gqa", "model.gguf");
    m = load_as(path, PB_BACKEND_CPU, PB_DTYPE_FILE);
    assert_int_equal(m->layers[0].wq.dtype, PB_DTYPE_F32);
    assert_false(pb_model_has_quantised(m));
    pb_model_free(m);
    pb_load_options o = {.backend = PB_BACKEND_CPU, .dtype = PB_DTYPE_Q8_0};
    assert_int_equal(pb_model_load(&m, path, &o), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "q8_0 is not a load option"));
    pb_dtype parsed;
    assert_int_equal(pb_dtype_parse("file", &parsed), PB_OK);
    assert_int_equal(parsed, PB_DTYPE_FILE);
    assert_int_equal(pb_dtype_parse("q4_k", &parsed), PB_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_dtype_edges),
        cmocka_unit_test(test_tiny_matrices_decode_to_f32),
        cmocka_unit_test(test_oracle_cases_reference),
        cmocka_unit_test(test_oracle_cases_cpu),
        cmocka_unit_test(test_smollm2),
        cmocka_unit_test(test_gemma3_mixed_types),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
