/* The metric_rows op (backend.h) of the CPU backends: (1) against naive
 * double loops written here from docs/patching.md, for every kind, with a
 * huge logit, odd vocabulary sizes, repeated ids, non-finite logits and a
 * token set that is the whole vocabulary; (2) a sweep on tiny_gqa run with
 * the op and with the op hidden (the host path) gives the same numbers and
 * the same error message for a non-finite logit; (3) a backend reporting
 * little free memory (memory_info) gets smaller batches with the same
 * values, or a refusal that names free device memory. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "backend/backend.h"
#include "model/model.h"
#include "patching/sweep_access.h"
#include "test_util.h"
#include "tolerances.h"

/* ---- naive definitions ----------------------------------------------------- */

/* logsumexp of x over the columns with mask[v] == want (-inf over none). */
static double naive_lse(const float *x, int V, const unsigned char *mask, int want) {
    double max = -INFINITY, sum = 0.0;
    int any = 0;
    for (int v = 0; v < V; v++)
        if (mask[v] == want && (!any || x[v] > max)) {
            max = x[v];
            any = 1;
        }
    if (!any)
        return -INFINITY;
    for (int v = 0; v < V; v++)
        if (mask[v] == want)
            sum += exp(x[v] - max);
    return max + log(sum);
}

/* The value docs/patching.md defines, NaN when a logit is not finite. */
static double naive_metric(pb_metric_kind kind, const float *x, int V, const int32_t *pos, int n_pos,
                           const int32_t *neg, int n_neg, const double *ref) {
    for (int v = 0; v < V; v++)
        if (!isfinite(x[v]))
            return NAN;
    if (kind == PB_METRIC_LOGIT_DIFF) {
        double a = 0.0, b = 0.0;
        for (int i = 0; i < n_pos; i++)
            a += x[pos[i]];
        for (int i = 0; i < n_neg; i++)
            b += x[neg[i]];
        return a / n_pos - b / n_neg;
    }
    unsigned char *set = calloc((size_t)V, 1), *none = calloc((size_t)V, 1);
    assert_non_null(set);
    assert_non_null(none);
    for (int i = 0; i < n_pos; i++)
        set[pos[i]] = 1;
    double lse_all = naive_lse(x, V, none, 0), value;
    if (kind == PB_METRIC_LOGPROB) {
        value = naive_lse(x, V, set, 1) - lse_all;
    } else if (kind == PB_METRIC_REFUSAL_SCORE) {
        value = naive_lse(x, V, set, 1) - naive_lse(x, V, set, 0);
    } else {
        value = 0.0;
        for (int v = 0; v < V; v++) {
            double p = exp(ref[v]);
            if (p > 0.0)
                value += p * (ref[v] - (x[v] - lse_all));
        }
    }
    free(set);
    free(none);
    return value;
}

/* ---- the op against the loops ----------------------------------------------- */

static const char *const kind_name[4] = {"logit_diff", "logprob", "refusal_score", "kl"};

typedef struct op_case {
    int V;
    int rows;
    float *logits; /* (rows, V) */
    int32_t pos[8], neg[8];
    int n_pos, n_neg;
    double *ref; /* (2, V) */
    int32_t ref_row[16];
} op_case;

/* Rows: random; flat; a huge logit inside the set; a huge logit outside it;
 * NaN; -inf (which metric.c alone would sum as 0); +inf. */
static void case_fill(op_case *c, int V, uint64_t seed) {
    memset(c, 0, sizeof *c);
    c->V = V;
    c->rows = 7;
    c->logits = malloc(sizeof(float) * (size_t)c->rows * V);
    c->ref = malloc(sizeof(double) * 2 * (size_t)V);
    assert_non_null(c->logits);
    assert_non_null(c->ref);
    tu_fill(c->logits, (size_t)c->rows * V, seed, 8.0f);
    for (int v = 0; v < V; v++)
        c->logits[V + v] *= 0.0625f;
    /* ids: first, last-but-one, a repeat; columns a block size never divides */
    int32_t pos[4] = {0, 5, V - 2, 5}, neg[3] = {2, 7, 2};
    memcpy(c->pos, pos, sizeof pos);
    memcpy(c->neg, neg, sizeof neg);
    c->n_pos = 4;
    c->n_neg = 3;
    c->logits[2 * (size_t)V + 5] = 3.0e4f;
    c->logits[3 * (size_t)V + V - 1] = 3.0e4f;
    c->logits[4 * (size_t)V + V / 2] = NAN;
    c->logits[5 * (size_t)V + 1] = -INFINITY;
    c->logits[6 * (size_t)V + V - 1] = INFINITY;
    /* reference distributions: log-softmax of a random row and of the row
     * with a huge logit (p underflows to 0 almost everywhere) */
    unsigned char *none = calloc((size_t)V, 1);
    assert_non_null(none);
    for (int k = 0; k < 2; k++) {
        const float *x = c->logits + (size_t)(k == 0 ? 0 : 2) * V;
        double lse = naive_lse(x, V, none, 0);
        for (int v = 0; v < V; v++)
            c->ref[(size_t)k * V + v] = x[v] - lse;
    }
    free(none);
    for (int r = 0; r < c->rows; r++)
        c->ref_row[r] = r % 2 ? 0 : 1;
}

static void case_free(op_case *c) {
    free(c->logits);
    free(c->ref);
}

/* Backend memory holding a copy of host data. */
static void *device_copy(pb_backend *b, const void *host, size_t bytes) {
    void *ptr = NULL;
    CHECK_OK(b->ops->alloc(b, &ptr, bytes));
    CHECK_OK(b->ops->upload(b, ptr, host, bytes));
    return ptr;
}

/* Runs the op for one kind on case c; returns the worst relative difference
 * from the naive loops and checks that non-finite rows are NaN. */
static double op_vs_naive(pb_backend *b, const op_case *c, pb_metric_kind kind) {
    size_t V = (size_t)c->V;
    float *logits = device_copy(b, c->logits, sizeof(float) * c->rows * V);
    int32_t *pos = device_copy(b, c->pos, sizeof(int32_t) * (size_t)c->n_pos);
    int32_t *neg = device_copy(b, c->neg, sizeof(int32_t) * (size_t)c->n_neg);
    double *ref = device_copy(b, c->ref, sizeof(double) * 2 * V);
    int32_t *ref_row = device_copy(b, c->ref_row, sizeof(int32_t) * (size_t)c->rows);
    double *out = NULL, got[16];
    CHECK_OK(b->ops->alloc(b, (void **)&out, sizeof(double) * (size_t)c->rows));
    CHECK_OK(b->ops->metric_rows(b, out, logits, c->rows, c->V, kind, pos, c->n_pos, neg, c->n_neg, ref, ref_row, 2));
    CHECK_OK(b->ops->download(b, got, out, sizeof(double) * (size_t)c->rows));
    double worst = 0.0;
    for (int r = 0; r < c->rows; r++) {
        const float *x = c->logits + (size_t)r * V;
        double want = naive_metric(kind, x, c->V, c->pos, c->n_pos, c->neg, c->n_neg,
                                   c->ref + (size_t)c->ref_row[r] * V);
        if (r >= 4)
            assert_true(isnan(got[r]));
        else
            assert_true(isfinite(got[r]));
        double d = tu_rel_diff(got[r], want);
        if (d > PB_TOL_METRIC_OP_CPU)
            fail_msg("%s %s V %d row %d: op %.17g, naive %.17g", b->ops->name, kind_name[kind], c->V, r, got[r], want);
        worst = fmax(worst, d);
    }
    b->ops->free(b, logits);
    b->ops->free(b, pos);
    b->ops->free(b, neg);
    b->ops->free(b, ref);
    b->ops->free(b, ref_row);
    b->ops->free(b, out);
    return worst;
}

static pb_backend *make_backend(int k) {
    pb_backend *b = NULL;
    if (k == 0)
        CHECK_OK(pb_backend_ref_create(&b));
    else
        CHECK_OK(pb_backend_cpu_create(&b, 2));
    assert_non_null(b->ops->metric_rows);
    return b;
}

static void test_op_matches_naive(void **state) {
    (void)state;
    static const int sizes[3] = {37, 1000, 49157};
    for (int k = 0; k < 2; k++) {
        pb_backend *b = make_backend(k);
        double worst = 0.0;
        for (int s = 0; s < 3; s++) {
            op_case c;
            case_fill(&c, sizes[s], 11 + (uint64_t)s);
            for (int kind = 0; kind < 4; kind++)
                worst = fmax(worst, op_vs_naive(b, &c, (pb_metric_kind)kind));
            case_free(&c);
        }
        printf("[ MEASURE  ] metric_rows (%s backend) vs naive loops: max relative diff %.2e\n", b->ops->name, worst);
        pb_backend_destroy(b);
    }
}

/* A token set that is the whole vocabulary: logprob 0, refusal_score +inf
 * (the complement is empty), not NaN: the caller reports it as a
 * non-finite value, not as a bad logit. */
static void test_op_whole_vocabulary_set(void **state) {
    (void)state;
    float x[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    int32_t ids[4] = {3, 2, 1, 0};
    for (int k = 0; k < 2; k++) {
        pb_backend *b = make_backend(k);
        double out[1];
        CHECK_OK(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_LOGPROB, ids, 4, NULL, 0, NULL, NULL, 0));
        assert_true(fabs(out[0]) <= PB_TOL_METRIC_WHOLE_VOCABULARY);
        CHECK_OK(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_REFUSAL_SCORE, ids, 4, NULL, 0, NULL, NULL, 0));
        assert_true(isinf(out[0]) && out[0] > 0);
        /* an id outside the row: NaN, never a read out of bounds */
        int32_t bad = 4;
        CHECK_OK(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_LOGPROB, &bad, 1, NULL, 0, NULL, NULL, 0));
        assert_true(isnan(out[0]));
        int32_t ref_row = 1;
        double ref[4] = {-1.0, -1.0, -2.0, -3.0};
        CHECK_OK(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_KL, NULL, 0, NULL, 0, ref, &ref_row, 1));
        assert_true(isnan(out[0]));
        /* refused arguments */
        assert_int_equal(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_PROJECTION, ids, 1, NULL, 0, NULL, NULL, 0),
                         PB_ERR_UNSUPPORTED);
        assert_int_equal(b->ops->metric_rows(b, out, x, 1, 0, PB_METRIC_LOGPROB, ids, 1, NULL, 0, NULL, NULL, 0),
                         PB_ERR_ARG);
        assert_int_equal(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_LOGIT_DIFF, ids, 1, NULL, 0, NULL, NULL, 0),
                         PB_ERR_ARG);
        assert_int_equal(b->ops->metric_rows(b, out, x, 1, 4, PB_METRIC_KL, NULL, 0, NULL, 0, NULL, NULL, 0),
                         PB_ERR_ARG);
        /* no rows: nothing to do */
        CHECK_OK(b->ops->metric_rows(b, NULL, NULL, 0, 4, PB_METRIC_LOGPROB, ids, 1, NULL, 0, NULL, NULL, 0));
        pb_backend_destroy(b);
    }
}

/* ---- a sweep with and without the op ------------------------------------------ */

static const char *const metric_specs[4] = {
    "{\"kind\": \"logit_diff\", \"positive\": [3, 50], \"negative\": [7, 120]}",
    "{\"kind\": \"logprob\", \"tokens\": [3, 50, 64]}",
    "{\"kind\": \"refusal_score\", \"tokens\": [50, 3]}",
    "{\"kind\": \"kl\"}",
};

static char *sweep_spec(const char *mode, const char *metric) {
    char *text = NULL;
    int n = asprintf(&text,
                     "{\"mode\": \"%s\", \"pairs\": ["
                     "{\"clean\": {\"ids\": [5, 17, 33, 9, 120, 64, 2, 77]},"
                     " \"corrupted\": {\"ids\": [5, 17, 40, 9, 120, 91, 2, 77]}},"
                     "{\"clean\": {\"ids\": [11, 3, 98, 42, 7, 7, 60, 1]},"
                     " \"corrupted\": {\"ids\": [11, 3, 98, 15, 7, 7, 60, 100]}}],"
                     " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\"},"
                     " {\"component\": \"z\", \"layers\": \"all\"}, {\"component\": \"k\", \"layers\": [1]}],"
                     " \"metric\": %s}",
                     mode, metric);
    assert_true(n > 0);
    return text;
}

static void test_sweep_with_and_without_op(void **state) {
    (void)state;
    static const pb_backend_kind backends[2] = {PB_BACKEND_REFERENCE, PB_BACKEND_CPU};
    static const char *const modes[2] = {"denoising", "noising"};
    for (int k = 0; k < 2; k++) {
        pb_model *m = tu_load_model("tiny_gqa", NULL, backends[k]);
        double worst = 0.0;
        int64_t compared = 0;
        for (int kind = 0; kind < 4; kind++)
            for (int md = 0; md < 2; md++) {
                char *spec = sweep_spec(modes[md], metric_specs[kind]);
                pb_sweep *op = NULL, *host = NULL;
                CHECK_OK(tu_run_sweep(m, spec, 1, &op));
                CHECK_OK(tu_run_sweep(m, spec, 0, &host));
                assert_int_equal(pb_sweep_row_count(op), pb_sweep_row_count(host));
                for (int p = 0; p < pb_sweep_spec_of(op)->n_pairs; p++) {
                    double b1, s1, b2, s2;
                    pb_sweep_get_pair(op, p, &b1, &s1);
                    pb_sweep_get_pair(host, p, &b2, &s2);
                    worst = fmax(worst, fmax(fabs(b1 - b2), fabs(s1 - s2)));
                    for (int64_t i = 0; i < pb_sweep_site_count(op); i++) {
                        double v1, e1, v2, e2;
                        pb_sweep_get_row(op, p, i, &v1, &e1);
                        pb_sweep_get_row(host, p, i, &v2, &e2);
                        assert_true(isfinite(v1));
                        worst = fmax(worst, fmax(tu_abs_diff(v1, v2), tu_abs_diff(e1, e2)));
                        compared++;
                    }
                }
                pb_sweep_free(op);
                pb_sweep_free(host);
                free(spec);
            }
        printf("[ MEASURE  ] sweep with vs without metric_rows (%s backend): %lld rows over 4 metrics x 2 modes, "
               "max |diff| of values and effects %.2e\n",
               m->backend->ops->name, (long long)compared, worst);
        assert_true(worst <= PB_TOL_METRIC_OP_SWEEP);
        pb_model_free(m);
    }
}

/* A NaN in the unembedding row of token 50 (a metric token; no prompt uses
 * it, and the model ties its embeddings): both paths fail with the same
 * message naming the pair and the entry. */
static void test_sweep_nonfinite_message(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    if (m->wdtype != PB_DTYPE_F32) {
        pb_model_free(m);
        skip();
    }
    float *row = (float *)m->output.data + (size_t)50 * m->cfg.d_model; /* CPU backend: host memory */
    float saved = row[3];
    row[3] = NAN;
    static const int kinds[3] = {0, 1, 3};
    for (int i = 0; i < 3; i++) {
        char *spec = sweep_spec("denoising", metric_specs[kinds[i]]);
        char message[2][1024];
        for (int with_op = 1; with_op >= 0; with_op--) {
            pb_sweep *s = NULL;
            assert_int_equal(tu_run_sweep(m, spec, with_op, &s), PB_ERR_NUMERIC);
            snprintf(message[with_op], sizeof message[with_op], "%s", pb_last_error());
        }
        printf("[ MEASURE  ] %s with a NaN unembedding row: \"%s\"\n", kind_name[kinds[i]], message[1]);
        assert_string_equal(message[0], message[1]);
        assert_non_null(strstr(message[1], "non-finite logit nan (pair 0, vocabulary entry"));
        /* logit_diff reads the selected rows (3, 50, 7, 120): column 1 */
        assert_non_null(strstr(message[1], kinds[i] == 0 ? "entry 1)" : "entry 50)"));
        free(spec);
    }
    row[3] = saved;
    pb_model_free(m);
}

/* ---- batches sized by free device memory ---------------------------------- */

static size_t g_fake_free;

/* memory_info of a backend that pretends to have g_fake_free bytes free. */
static pb_status fake_memory_info(pb_backend *backend, size_t *free_bytes, size_t *total_bytes) {
    (void)backend;
    *free_bytes = g_fake_free;
    *total_bytes = g_fake_free;
    return PB_OK;
}

/* Runs the sweep on the reference backend as if it reported g_fake_free
 * free bytes; NULL with the status in *status on failure. */
static pb_sweep *run_with_free(pb_model *m, const char *spec, size_t free_bytes, pb_status *status) {
    const pb_backend_ops *saved = m->backend->ops;
    pb_backend_ops faked = *saved;
    faked.memory_info = fake_memory_info;
    g_fake_free = free_bytes;
    m->backend->ops = &faked;
    pb_sweep *s = NULL;
    *status = pb_sweep_create(&s, m, spec, NULL, NULL);
    if (*status == PB_OK)
        *status = pb_sweep_run(s);
    m->backend->ops = saved;
    if (*status != PB_OK) {
        pb_sweep_free(s);
        s = NULL;
    }
    return s;
}

/* Plenty of free memory leaves the default budget; little free memory
 * makes more, smaller batches with the same values (the reference backend
 * computes each row alone); too little fails naming free memory. */
static void test_sweep_sizes_batches_by_free_memory(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_REFERENCE);
    char *spec = sweep_spec("denoising", metric_specs[1]);
    pb_status status;
    pb_sweep *roomy = run_with_free(m, spec, (size_t)1 << 40, &status);
    CHECK_OK(status);
    pb_sweep *tight = run_with_free(m, spec, (size_t)256 << 10, &status);
    CHECK_OK(status);
    printf("[ MEASURE  ] batches with 1 TiB free: %lld; with 256 KiB free: %lld\n",
           (long long)pb_sweep_batch_count(roomy), (long long)pb_sweep_batch_count(tight));
    assert_true(pb_sweep_batch_count(tight) > pb_sweep_batch_count(roomy));
    double worst = 0.0;
    for (int p = 0; p < pb_sweep_spec_of(roomy)->n_pairs; p++)
        for (int64_t i = 0; i < pb_sweep_site_count(roomy); i++) {
            double a, b;
            pb_sweep_get_row(roomy, p, i, &a, NULL);
            pb_sweep_get_row(tight, p, i, &b, NULL);
            worst = fmax(worst, tu_abs_diff(a, b));
        }
    assert_true(worst <= PB_TOL_METRIC_OP_SWEEP);
    pb_sweep_free(roomy);
    pb_sweep_free(tight);
    assert_null(run_with_free(m, spec, (size_t)16 << 10, &status));
    assert_int_equal(status, PB_ERR_OOM);
    printf("[ MEASURE  ] with 16 KiB free: \"%s\"\n", pb_last_error());
    assert_non_null(strstr(pb_last_error(), "free device memory"));
    free(spec);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_op_matches_naive),
        cmocka_unit_test(test_op_whole_vocabulary_set),
        cmocka_unit_test(test_sweep_with_and_without_op),
        cmocka_unit_test(test_sweep_nonfinite_message),
        cmocka_unit_test(test_sweep_sizes_batches_by_free_memory),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
