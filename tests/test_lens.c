/* The logit lens (pb_logit_lens): every layer's lens logits against
 * transformers' lm_head(norm(hidden_states[l])) on the tiny models and
 * SmolLM2 (tests/fixtures/lens_patterns, scripts/make_lens_pattern_reference.py),
 * its last row against the model's own logits (an exact invariant), chosen
 * and negative positions against the all-positions run, and the refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

/* <fixtures>/lens_patterns/NAME_SUFFIX into path. */
static void case_file(char *path, size_t size, const char *name, const char *suffix) {
    snprintf(path, size, "%s/lens_patterns/%s_%s", tu_fixtures(), name, suffix);
}

/* The lens of every position against the fixture's columns: NMSE per row. */
static void check_lens_case(const char *name) {
    pb_model *m = tu_load_case_model_or_skip(name);
    const pb_model_config *c = pb_model_get_config(m);
    char path[1200];
    int T, n_columns;
    case_file(path, sizeof path, name, "ids.npy");
    int32_t *ids = tu_read_ids(path, &T);
    case_file(path, sizeof path, name, "lens_columns.npy");
    int32_t *columns = tu_read_ids(path, &n_columns);
    int64_t shape[8];
    case_file(path, sizeof path, name, "lens_logits.npy");
    float *want = tu_read_f32(path, 3, shape); /* (n_layers + 1, T, n_columns) */
    assert_int_equal(shape[0], c->n_layers + 1);
    assert_int_equal(shape[1], T);
    assert_int_equal(shape[2], n_columns);
    size_t rows = (size_t)(c->n_layers + 1), V = (size_t)c->vocab_size;
    float *lens = malloc(sizeof(float) * rows * (size_t)T * V);
    float *got = malloc(sizeof(float) * (size_t)T * (size_t)n_columns);
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    assert_int_equal(pb_logit_lens(m, ids, T, NULL, 0, lens), PB_OK);
    double worst = 0.0;
    for (size_t r = 0; r < rows; r++) {
        for (int t = 0; t < T; t++)
            for (int j = 0; j < n_columns; j++)
                got[(size_t)t * n_columns + j] = lens[(r * T + t) * V + (size_t)columns[j]];
        double e = tu_nmse(got, want + r * (size_t)T * n_columns, (size_t)T * n_columns);
        worst = e > worst ? e : worst;
        if (!(e <= PB_TOL_LENS_NMSE))
            fail_msg("%s lens row %zu: NMSE %.3g > %.3g", name, r, e, PB_TOL_LENS_NMSE);
    }
    /* The last row is the model's own logits: the same norm and unembedding. */
    assert_int_equal(pb_forward(m, ids, T, logits, NULL), PB_OK);
    const float *last = lens + (rows - 1) * (size_t)T * V;
    for (size_t i = 0; i < (size_t)T * V; i++)
        if (last[i] != logits[i])
            fail_msg("%s: lens final_post[%zu] %.9g != logits %.9g", name, i, (double)last[i], (double)logits[i]);
    printf("[ MEASURE  ] %s: lens logits vs transformers, worst row NMSE %.2e (%zu rows x %d positions x %d "
           "columns)\n",
           name, worst, rows, T, n_columns);
    free(lens);
    free(got);
    free(logits);
    free(want);
    free(columns);
    free(ids);
    pb_model_free(m);
}

static void test_lens_tiny_gqa(void **state) { check_lens_case("tiny_gqa"); }
static void test_lens_tiny_bias(void **state) { check_lens_case("tiny_bias"); }
static void test_lens_smollm2(void **state) { check_lens_case("smollm2"); }

/* Chosen positions (negative from the end) give the rows of the
 * all-positions run: bit for bit on the reference backend, whose rows are
 * computed independently, and within PB_TOL_INVARIANT_CPU on the CPU
 * backend, whose sgemm rounds a row by how many rows share the call. */
static void check_lens_positions(pb_backend_kind backend) {
    pb_load_options o = {.backend = backend};
    pb_model *m = tu_load_case_model("tiny_bias", &o);
    assert_non_null(m);
    const pb_model_config *c = pb_model_get_config(m);
    char path[1200];
    int T;
    case_file(path, sizeof path, "tiny_bias", "ids.npy");
    int32_t *ids = tu_read_ids(path, &T);
    size_t rows = (size_t)(c->n_layers + 1), V = (size_t)c->vocab_size;
    float *all = malloc(sizeof(float) * rows * (size_t)T * V), *some = malloc(sizeof(float) * rows * 3 * V);
    assert_int_equal(pb_logit_lens(m, ids, T, NULL, 0, all), PB_OK);
    const int positions[3] = {-1, 0, 5}, resolved[3] = {T - 1, 0, 5};
    assert_int_equal(pb_logit_lens(m, ids, T, positions, 3, some), PB_OK);
    double worst = 0.0;
    for (size_t r = 0; r < rows; r++)
        for (int p = 0; p < 3; p++) {
            const float *a = some + (r * 3 + (size_t)p) * V, *b = all + (r * T + (size_t)resolved[p]) * V;
            if (backend == PB_BACKEND_REFERENCE)
                assert_memory_equal(a, b, sizeof(float) * V);
            for (size_t v = 0; v < V; v++)
                worst = fmax(worst, fabs((double)a[v] - b[v]));
        }
    printf("[ MEASURE  ] lens at 3 chosen positions vs all, %s backend: max |d| %.2e\n", pb_backend_name(backend),
           worst);
    assert_true(worst <= PB_TOL_INVARIANT_CPU);
    /* Refusals name the problem. */
    const int outside[1] = {T};
    assert_int_equal(pb_logit_lens(m, ids, T, outside, 1, some), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "outside a prompt of"));
    assert_int_equal(pb_logit_lens(m, ids, T, positions, 0, some), PB_ERR_ARG);
    assert_int_equal(pb_logit_lens(m, ids, 0, NULL, 0, some), PB_ERR_ARG);
    assert_int_equal(pb_logit_lens(NULL, ids, T, NULL, 0, some), PB_ERR_ARG);
    free(all);
    free(some);
    free(ids);
    pb_model_free(m);
}

static void test_lens_positions(void **state) {
    (void)state;
    check_lens_positions(PB_BACKEND_REFERENCE);
    check_lens_positions(PB_BACKEND_CPU);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lens_tiny_gqa),
        cmocka_unit_test(test_lens_tiny_bias),
        cmocka_unit_test(test_lens_smollm2),
        cmocka_unit_test(test_lens_positions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
