/* The CUDA metric_rows op (cuda/metric.cu) against the reference backend's
 * (metric.c in double): every kind on seeded random logits at real
 * vocabulary sizes (128256: Llama 3; 49152: SmolLM2) and odd ones, with a
 * huge logit, repeated ids, non-finite rows and a KL reference whose
 * probabilities underflow; then a sweep on tiny_gqa on the CUDA backend
 * with the op and with it hidden (the host path over downloaded logits).
 * Without a CUDA device (or in a build without CUDA) it exits 77: skipped. */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "model/model.h"
#include "patching/sweep_access.h"
#include "test_util.h"
#include "tolerances.h"

static pb_backend *g_ref;
static pb_backend *g_cuda;

static const char *const kind_name[4] = {"logit_diff", "logprob", "refusal_score", "kl"};

static void *device_copy(pb_backend *b, const void *host, size_t bytes) {
    void *ptr = NULL;
    CHECK_OK(b->ops->alloc(b, &ptr, bytes));
    CHECK_OK(b->ops->upload(b, ptr, host, bytes));
    return ptr;
}

/* Runs kind on both backends over logits (rows, V) and returns the worst
 * tu_rel_diff; rows listed in nan_rows must come out NaN on both. */
static double compare_kind(pb_metric_kind kind, const float *logits, int rows, int V, const int32_t *pos, int n_pos,
                           const int32_t *neg, int n_neg, const double *ref, int n_ref, const int32_t *ref_row,
                           const unsigned char *nan_rows) {
    double *got[2];
    pb_backend *backends[2] = {g_ref, g_cuda};
    for (int k = 0; k < 2; k++) {
        pb_backend *b = backends[k];
        float *d_logits = device_copy(b, logits, sizeof(float) * (size_t)rows * V);
        int32_t *d_pos = device_copy(b, pos, sizeof(int32_t) * (size_t)n_pos);
        int32_t *d_neg = device_copy(b, neg, sizeof(int32_t) * (size_t)n_neg);
        double *d_ref = device_copy(b, ref, sizeof(double) * (size_t)n_ref * V);
        int32_t *d_ref_row = device_copy(b, ref_row, sizeof(int32_t) * (size_t)rows);
        double *d_out = NULL;
        CHECK_OK(b->ops->alloc(b, (void **)&d_out, sizeof(double) * (size_t)rows));
        got[k] = malloc(sizeof(double) * (size_t)rows);
        assert_non_null(got[k]);
        CHECK_OK(b->ops->metric_rows(b, d_out, d_logits, rows, V, kind, d_pos, n_pos, d_neg, n_neg, d_ref, d_ref_row,
                                     n_ref));
        CHECK_OK(b->ops->download(b, got[k], d_out, sizeof(double) * (size_t)rows));
        b->ops->free(b, d_logits);
        b->ops->free(b, d_pos);
        b->ops->free(b, d_neg);
        b->ops->free(b, d_ref);
        b->ops->free(b, d_ref_row);
        b->ops->free(b, d_out);
    }
    double worst = 0.0;
    for (int r = 0; r < rows; r++) {
        if (nan_rows[r])
            assert_true(isnan(got[0][r]) && isnan(got[1][r]));
        else
            assert_true(isfinite(got[0][r]));
        double d = tu_rel_diff(got[1][r], got[0][r]);
        if (d > PB_TOL_CUDA_METRIC)
            fail_msg("%s V %d row %d: cuda %.17g, reference %.17g", kind_name[kind], V, r, got[1][r], got[0][r]);
        worst = fmax(worst, d);
    }
    free(got[0]);
    free(got[1]);
    return worst;
}

/* log_softmax of x (V) in double. */
static void log_softmax(const float *x, int V, double *out) {
    double max = -INFINITY, sum = 0.0;
    for (int v = 0; v < V; v++)
        max = fmax(max, x[v]);
    for (int v = 0; v < V; v++)
        sum += exp(x[v] - max);
    for (int v = 0; v < V; v++)
        out[v] = x[v] - (max + log(sum));
}

static void test_metric_vs_reference(void **state) {
    (void)state;
    static const int sizes[5] = {128256, 49152, 1000, 257, 37};
    for (int s = 0; s < 5; s++) {
        const int V = sizes[s], rows = 19;
        float *x = malloc(sizeof(float) * (size_t)rows * V);
        double *ref = malloc(sizeof(double) * 3 * (size_t)V);
        int32_t ref_row[19];
        unsigned char nan_rows[19] = {0};
        assert_non_null(x);
        assert_non_null(ref);
        /* logits uniform in [-12, 12): typical final-layer spreads */
        tu_fill(x, (size_t)rows * V, 100 + (uint64_t)s, 12.0f);
        for (int v = 0; v < V; v++)
            x[V + v] *= 0.01f;             /* nearly flat */
        x[2 * (size_t)V + 5] = 3.0e4f;     /* huge, inside the set */
        x[3 * (size_t)V + V - 1] = 3.0e4f; /* huge, outside it */
        x[4 * (size_t)V + V / 2] = NAN;
        x[5 * (size_t)V + 1] = -INFINITY;
        x[6 * (size_t)V + V - 1] = INFINITY;
        nan_rows[4] = nan_rows[5] = nan_rows[6] = 1;
        /* references: a random row, the huge-logit row (probabilities 0
         * almost everywhere), a flat row */
        log_softmax(x + 8 * (size_t)V, V, ref);
        log_softmax(x + 2 * (size_t)V, V, ref + V);
        log_softmax(x + 1 * (size_t)V, V, ref + 2 * (size_t)V);
        for (int r = 0; r < rows; r++)
            ref_row[r] = r % 3;
        int32_t pos[5] = {0, 5, V - 2, 5, V / 3}, neg[3] = {2, 7, 2};
        double worst[4];
        for (int kind = 0; kind < 4; kind++)
            worst[kind] = compare_kind((pb_metric_kind)kind, x, rows, V, pos, 5, neg, 3, ref, 3, ref_row, nan_rows);
        printf("[ MEASURE  ] cuda vs reference metric_rows, V %6d, %d rows: max relative diff logit_diff %.2e, "
               "logprob %.2e, refusal_score %.2e, kl %.2e\n",
               V, rows, worst[0], worst[1], worst[2], worst[3]);
        free(x);
        free(ref);
    }
}

/* A set that is the whole vocabulary; an id outside the row; refused
 * arguments, including a vocabulary too large for the token bitmap. */
static void test_metric_edges(void **state) {
    (void)state;
    float x[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    int32_t ids[4] = {3, 2, 1, 0}, bad = 4;
    float *d_x = device_copy(g_cuda, x, sizeof x);
    int32_t *d_ids = device_copy(g_cuda, ids, sizeof ids), *d_bad = device_copy(g_cuda, &bad, sizeof bad);
    double *d_out = NULL, out = 0.0;
    CHECK_OK(g_cuda->ops->alloc(g_cuda, (void **)&d_out, sizeof(double)));
    CHECK_OK(g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 4, PB_METRIC_LOGPROB, d_ids, 4, NULL, 0, NULL, NULL, 0));
    CHECK_OK(g_cuda->ops->download(g_cuda, &out, d_out, sizeof out));
    assert_true(fabs(out) <= PB_TOL_METRIC_WHOLE_VOCABULARY);
    CHECK_OK(
        g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 4, PB_METRIC_REFUSAL_SCORE, d_ids, 4, NULL, 0, NULL, NULL, 0));
    CHECK_OK(g_cuda->ops->download(g_cuda, &out, d_out, sizeof out));
    assert_true(isinf(out) && out > 0);
    CHECK_OK(g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 4, PB_METRIC_LOGPROB, d_bad, 1, NULL, 0, NULL, NULL, 0));
    CHECK_OK(g_cuda->ops->download(g_cuda, &out, d_out, sizeof out));
    assert_true(isnan(out));
    assert_int_equal(
        g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 4, PB_METRIC_PROJECTION, d_ids, 1, NULL, 0, NULL, NULL, 0),
        PB_ERR_UNSUPPORTED);
    assert_int_equal(
        g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 0, PB_METRIC_LOGPROB, d_ids, 1, NULL, 0, NULL, NULL, 0),
        PB_ERR_ARG);
    assert_int_equal(g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 4, PB_METRIC_KL, NULL, 0, NULL, 0, NULL, NULL, 0),
                     PB_ERR_ARG);
    /* refused on the host before any launch: the buffers are never read */
    assert_int_equal(g_cuda->ops->metric_rows(g_cuda, d_out, d_x, 1, 400000, PB_METRIC_REFUSAL_SCORE, d_ids, 1, NULL, 0,
                                              NULL, NULL, 0),
                     PB_ERR_UNSUPPORTED);
    CHECK_OK(g_cuda->ops->synchronize(g_cuda));
    g_cuda->ops->free(g_cuda, d_x);
    g_cuda->ops->free(g_cuda, d_ids);
    g_cuda->ops->free(g_cuda, d_bad);
    g_cuda->ops->free(g_cuda, d_out);
}

/* ---- a sweep on the CUDA backend with and without the op ------------------ */

static const char *const metric_specs[4] = {
    "{\"kind\": \"logit_diff\", \"positive\": [3, 50], \"negative\": [7, 120]}",
    "{\"kind\": \"logprob\", \"tokens\": [3, 50, 64]}",
    "{\"kind\": \"refusal_score\", \"tokens\": [50, 3]}",
    "{\"kind\": \"kl\"}",
};

static void test_sweep_with_and_without_op(void **state) {
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny_gqa", tu_fixtures());
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2, .backend = PB_BACKEND_CUDA, .device = 0};
    CHECK_OK(pb_model_load(&m, path, &o));
    for (int kind = 0; kind < 4; kind++) {
        char *spec = NULL;
        assert_true(asprintf(&spec,
                             "{\"mode\": \"denoising\", \"pairs\": ["
                             "{\"clean\": {\"ids\": [5, 17, 33, 9, 120, 64, 2, 77]},"
                             " \"corrupted\": {\"ids\": [5, 17, 40, 9, 120, 91, 2, 77]}},"
                             "{\"clean\": {\"ids\": [11, 3, 98, 42, 7, 7, 60, 1]},"
                             " \"corrupted\": {\"ids\": [11, 3, 98, 15, 7, 7, 60, 100]}}],"
                             " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\"},"
                             " {\"component\": \"z\", \"layers\": \"all\"}], \"metric\": %s}",
                             metric_specs[kind]) > 0);
        pb_sweep *op = NULL, *host = NULL;
        CHECK_OK(tu_run_sweep(m, spec, 1, &op));
        CHECK_OK(tu_run_sweep(m, spec, 0, &host));
        /* Values (and baselines) obey PB_TOL_CUDA_METRIC: both paths read
         * the same device logits, only the metric arithmetic differs. An
         * effect e = (v - b) / (s - b) then moves by at most
         * 2 (1 + |e|) tol M / |s - b|, M = max(1, |v|, |b|, |s|); the
         * check allows twice that. */
        double worst_value = 0.0, worst_effect = 0.0;
        for (int p = 0; p < pb_sweep_spec_of(op)->n_pairs; p++) {
            double b1, s1, b2, s2;
            pb_sweep_get_pair(op, p, &b1, &s1);
            pb_sweep_get_pair(host, p, &b2, &s2);
            worst_value = fmax(worst_value, fmax(tu_rel_diff(b1, b2), tu_rel_diff(s1, s2)));
            for (int64_t i = 0; i < pb_sweep_site_count(op); i++) {
                double v1, e1, v2, e2;
                pb_sweep_get_row(op, p, i, &v1, &e1);
                pb_sweep_get_row(host, p, i, &v2, &e2);
                assert_true(isfinite(v1));
                worst_value = fmax(worst_value, tu_rel_diff(v1, v2));
                worst_effect = fmax(worst_effect, tu_abs_diff(e1, e2));
                if (isnan(e2))
                    continue;
                double scale = fmax(1.0, fmax(fabs(v2), fmax(fabs(b2), fabs(s2))));
                double bound = 4.0 * (1.0 + fabs(e2)) * PB_TOL_CUDA_METRIC * scale / fabs(s2 - b2);
                if (tu_abs_diff(e1, e2) > bound)
                    fail_msg("%s pair %d site %lld: effect %.17g with the op, %.17g without (bound %.2e)",
                             kind_name[kind], p, (long long)i, e1, e2, bound);
            }
        }
        printf("[ MEASURE  ] cuda sweep %s with vs without metric_rows: max relative diff of values %.2e, "
               "max |diff| of effects %.2e\n",
               kind_name[kind], worst_value, worst_effect);
        assert_true(worst_value <= PB_TOL_CUDA_METRIC);
        pb_sweep_free(op);
        pb_sweep_free(host);
        free(spec);
    }
    pb_model_free(m);
}

static int group_setup(void **state) {
    (void)state;
    if (pb_backend_ref_create(&g_ref) != PB_OK) {
        fprintf(stderr, "pb_backend_ref_create: %s\n", pb_last_error());
        return -1;
    }
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    pb_backend_destroy(g_ref);
    pb_backend_destroy(g_cuda);
    g_ref = g_cuda = NULL;
    return 0;
}

int main(void) {
    int exit_code = tu_cuda_exit_code(pb_backend_cuda_create(&g_cuda, 0));
    if (exit_code != 0)
        return exit_code;
    if (!g_cuda->ops->metric_rows) {
        fprintf(stderr, "the CUDA backend has no metric_rows op\n");
        pb_backend_destroy(g_cuda);
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metric_vs_reference),
        cmocka_unit_test(test_metric_edges),
        cmocka_unit_test(test_sweep_with_and_without_op),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown) == 0 ? 0 : 1;
}
