/* Backend ops: exact hand-computed cases for the reference ops, then every
 * CPU (OpenBLAS/OpenMP) op against the reference on odd sizes, with guard
 * sentinels after each output to catch overruns. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "backend/backend.h"
#include "test_util.h"
#include "tolerances.h"

#define GUARD 16
#define SENTINEL 12345.0f

static float *alloc_guarded(size_t n) {
    float *p = malloc(sizeof(float) * (n + GUARD));
    assert_non_null(p);
    for (size_t i = 0; i < n + GUARD; i++)
        p[i] = SENTINEL;
    return p;
}

static void check_guard(const float *p, size_t n, const char *what) {
    for (size_t i = n; i < n + GUARD; i++)
        if (p[i] != SENTINEL)
            fail_msg("%s wrote past its output (index %zu)", what, i);
}

typedef struct pair {
    pb_backend *ref;
    pb_backend *cpu;
} pair;

static int setup(void **state) {
    pair *p = calloc(1, sizeof *p);
    if (pb_backend_ref_create(&p->ref) != PB_OK || pb_backend_cpu_create(&p->cpu, 2) != PB_OK)
        return -1;
    *state = p;
    return 0;
}

static int teardown(void **state) {
    pair *p = *state;
    pb_backend_destroy(p->ref);
    pb_backend_destroy(p->cpu);
    free(p);
    return 0;
}

static void test_ref_exact_cases(void **state) {
    pb_backend *b = ((pair *)*state)->ref;
    /* rmsnorm of (3, 4): rms = sqrt(12.5) */
    float x[2] = {3, 4}, w[2] = {1, 2}, out[2];
    assert_int_equal(b->ops->rmsnorm(b, out, x, w, 1, 2, 0.0f), PB_OK);
    assert_float_equal(out[0], 3 / sqrt(12.5), 1e-6);
    assert_float_equal(out[1], 2 * 4 / sqrt(12.5), 1e-6);
    /* matmul with bias: (1,2) @ [[1,2],[3,4],[5,6]]^T + (1,1,1) */
    float a[2] = {1, 2}, m[6] = {1, 2, 3, 4, 5, 6}, bias[3] = {1, 1, 1}, mo[3];
    assert_int_equal(b->ops->matmul(b, mo, a, m, PB_DTYPE_F32, bias, 1, 3, 2), PB_OK);
    assert_float_equal(mo[0], 6, 0);
    assert_float_equal(mo[1], 12, 0);
    assert_float_equal(mo[2], 18, 0);
    /* RoPE at position 0 is the identity; at position p it rotates pair
     * (i, i+half) by p * inv_freq[i]. */
    float v[4] = {1, 2, 3, 4}, inv[2] = {0.5f, 0.25f};
    int32_t pos0 = 0, pos2 = 2;
    assert_int_equal(b->ops->rope(b, v, &pos0, inv, 1, 1, 4, 4, 1.0f), PB_OK);
    assert_float_equal(v[0], 1, 0);
    assert_float_equal(v[3], 4, 0);
    assert_int_equal(b->ops->rope(b, v, &pos2, inv, 1, 1, 4, 4, 1.0f), PB_OK);
    assert_float_equal(v[0], 1 * cosf(1.0f) - 3 * sinf(1.0f), 1e-6);
    assert_float_equal(v[2], 3 * cosf(1.0f) + 1 * sinf(1.0f), 1e-6);
    assert_float_equal(v[1], 2 * cosf(0.5f) - 4 * sinf(0.5f), 1e-6);
    /* LongRoPE's attention factor scales the rotated pair: at position 0
     * it is a plain multiply, at 2 the rotation times the factor */
    float r[4] = {1, 2, 3, 4};
    assert_int_equal(b->ops->rope(b, r, &pos0, inv, 1, 1, 4, 4, 1.5f), PB_OK);
    assert_float_equal(r[0], 1.5, 0);
    assert_float_equal(r[3], 6, 0);
    assert_int_equal(b->ops->rope(b, r, &pos2, inv, 1, 1, 4, 2, 2.0f), PB_OK);
    assert_float_equal(r[0], 2 * (1.5f * cosf(1.0f) - 3 * sinf(1.0f)), 1e-5);
    assert_float_equal(r[1], 2 * (3 * cosf(1.0f) + 1.5f * sinf(1.0f)), 1e-5);
    assert_float_equal(r[2], 4.5, 0); /* past rotary_dims = 2: untouched */
    assert_float_equal(r[3], 6, 0);
    /* Attention: the first query sees only the first key, so it returns
     * v[0]; a zero query weighs visible keys equally. */
    float q[4] = {0, 0, 0, 0}, k[4] = {1, 0, 0, 1}, vv[4] = {2, 4, 6, 8}, z[4];
    assert_int_equal(b->ops->attention(b, z, q, k, vv, 2, 2, 0, 1, 1, 2, NULL), PB_OK);
    assert_float_equal(z[0], 2, 0);
    assert_float_equal(z[1], 4, 0);
    assert_float_equal(z[2], 4, 1e-6);
    assert_float_equal(z[3], 6, 1e-6);
    /* swiglu: silu(0) = 0, silu(x) = x * sigmoid(x) */
    float g[2] = {0, 1}, u[2] = {5, 2}, s[2];
    assert_int_equal(b->ops->glu(b, s, g, u, 1, 2, 2, PB_ACTIVATION_SILU), PB_OK);
    assert_float_equal(s[0], 0, 0);
    assert_float_equal(s[1], 2 / (1 + exp(-1.0)), 1e-6);
}

static void compare(const float *fast, const float *ref, size_t n, double tol, const char *what) {
    double e = tu_nmse(fast, ref, n);
    for (size_t i = 0; i < n; i++)
        if (isnan(fast[i]) != isnan(ref[i]) || isinf(fast[i]) != isinf(ref[i]))
            fail_msg("%s: NaN/Inf mismatch at %zu", what, i);
    if (!(e <= tol))
        fail_msg("%s: NMSE %.3g > %.3g", what, e, tol);
}

/* Issue 16's ops: LayerNorm against hand values and the CPU against the
 * reference (with and without weight and bias, in place, a large mean);
 * the three activations with and without a gate; RoPE over part of each
 * head leaves the rest bit-identical and turns the part as a head of that
 * size. */
static void test_layernorm_activations_partial_rope(void **state) {
    pair *p = *state;
    pb_backend *bs[2] = {p->ref, p->cpu};
    float four[4] = {1, 2, 3, 4}, out4[4];
    assert_int_equal(p->ref->ops->layernorm(p->ref, out4, four, NULL, NULL, 1, 4, 0.0f), PB_OK);
    /* mean 2.5, variance 1.25 */
    for (int i = 0; i < 4; i++)
        assert_true(fabs(out4[i] - (four[i] - 2.5) / sqrt(1.25)) < 1e-6);
    const int rows = 5, d = 96;
    float *x = alloc_guarded((size_t)rows * d), *w = alloc_guarded(d), *bias = alloc_guarded(d);
    tu_fill(x, (size_t)rows * d, 11, 1.0f);
    for (int i = 0; i < d; i++)
        x[d + i] += 1000.0f; /* row 1: a large mean over small spread */
    tu_fill(w, d, 12, 1.0f);
    tu_fill(bias, d, 13, 0.5f);
    float *out[2];
    for (int variant = 0; variant < 3; variant++) {
        for (int i = 0; i < 2; i++) {
            out[i] = alloc_guarded((size_t)rows * d);
            memcpy(out[i], x, sizeof(float) * (size_t)rows * d);
            const float *in = variant == 2 ? out[i] : x; /* 2: in place */
            assert_int_equal(
                bs[i]->ops->layernorm(bs[i], out[i], in, variant ? w : NULL, variant ? bias : NULL, rows, d, 1e-5f),
                PB_OK);
            check_guard(out[i], (size_t)rows * d, "layernorm");
        }
        compare(out[1], out[0], (size_t)rows * d, PB_TOL_ELEMENTWISE_NMSE, "layernorm");
        free(out[0]);
        free(out[1]);
    }
    /* exact GELU at 1: 0.841344746 */
    float one = 1.0f;
    assert_int_equal(p->ref->ops->activate(p->ref, &one, 1, PB_ACTIVATION_GELU), PB_OK);
    assert_true(fabs(one - 0.841344746) < 1e-6);
    const pb_activation acts[3] = {PB_ACTIVATION_SILU, PB_ACTIVATION_GELU_TANH, PB_ACTIVATION_GELU};
    for (int a = 0; a < 3; a++) {
        for (int i = 0; i < 2; i++) {
            out[i] = alloc_guarded((size_t)rows * d);
            memcpy(out[i], x, sizeof(float) * (size_t)rows * d);
            assert_int_equal(bs[i]->ops->activate(bs[i], out[i], (size_t)rows * d, acts[a]), PB_OK);
            check_guard(out[i], (size_t)rows * d, "activate");
        }
        compare(out[1], out[0], (size_t)rows * d, PB_TOL_ELEMENTWISE_NMSE, "activate");
        for (int i = 0; i < 2; i++)
            assert_int_equal(bs[i]->ops->glu(bs[i], out[i], x, w, 1, (size_t)d, (size_t)d, acts[a]), PB_OK);
        compare(out[1], out[0], (size_t)d, PB_TOL_ELEMENTWISE_NMSE, "glu");
        free(out[0]);
        free(out[1]);
    }
    /* partial rotary: 16 of 64 dims of 3 heads at 4 positions */
    const int T = 4, heads = 3, hd = 64, rot = 16;
    float inv[8];
    for (int i = 0; i < rot / 2; i++)
        inv[i] = 1.0f / powf(10000.0f, (float)(2 * i) / rot);
    int32_t pos[4] = {0, 1, 5, 9};
    float *q = alloc_guarded((size_t)T * heads * hd), *head = alloc_guarded(rot);
    tu_fill(q, (size_t)T * heads * hd, 14, 1.0f);
    for (int i = 0; i < 2; i++) {
        out[i] = alloc_guarded((size_t)T * heads * hd);
        memcpy(out[i], q, sizeof(float) * (size_t)T * heads * hd);
        assert_int_equal(bs[i]->ops->rope(bs[i], out[i], pos, inv, T, heads, hd, rot, 1.0f), PB_OK);
        check_guard(out[i], (size_t)T * heads * hd, "rope");
    }
    compare(out[1], out[0], (size_t)T * heads * hd, PB_TOL_ELEMENTWISE_NMSE, "partial rope");
    for (int t = 0; t < T; t++)
        for (int h = 0; h < heads; h++) {
            size_t at = ((size_t)t * heads + h) * hd;
            assert_memory_equal(out[0] + at + rot, q + at + rot, sizeof(float) * (size_t)(hd - rot));
            memcpy(head, q + at, sizeof(float) * rot);
            assert_int_equal(p->ref->ops->rope(p->ref, head, &pos[t], inv, 1, 1, rot, rot, 1.0f), PB_OK);
            assert_memory_equal(head, out[0] + at, sizeof(float) * rot);
        }
    free(out[0]);
    free(out[1]);
    free(head);
    free(q);
    free(bias);
    free(w);
    free(x);
}

static void test_cpu_matches_reference(void **state) {
    pair *p = *state;
    pb_backend *bs[2] = {p->ref, p->cpu};
    const int rows = 7, n = 67, k = 131, d = 67;
    float *x = alloc_guarded((size_t)rows * k), *w = alloc_guarded((size_t)n * k), *bias = alloc_guarded(n);
    float *nw = alloc_guarded(d);
    tu_fill(x, (size_t)rows * k, 1, 1.0f);
    tu_fill(w, (size_t)n * k, 2, 0.3f);
    tu_fill(bias, n, 3, 0.5f);
    tu_fill(nw, d, 4, 1.0f);
    float *out[2];
    /* matmul, with and without bias, and the single-row (gemv) path */
    for (int variant = 0; variant < 3; variant++) {
        int r = variant == 2 ? 1 : rows;
        for (int i = 0; i < 2; i++) {
            out[i] = alloc_guarded((size_t)r * n);
            assert_int_equal(bs[i]->ops->matmul(bs[i], out[i], x, w, PB_DTYPE_F32, variant == 1 ? NULL : bias, r, n, k),
                             PB_OK);
            check_guard(out[i], (size_t)r * n, "matmul");
        }
        compare(out[1], out[0], (size_t)r * n, PB_TOL_OP_NMSE, "matmul");
        free(out[0]);
        free(out[1]);
    }
    /* rmsnorm with and without weight */
    for (int variant = 0; variant < 2; variant++) {
        for (int i = 0; i < 2; i++) {
            out[i] = alloc_guarded((size_t)rows * d);
            assert_int_equal(bs[i]->ops->rmsnorm(bs[i], out[i], x, variant ? NULL : nw, rows, d, 1e-5f), PB_OK);
            check_guard(out[i], (size_t)rows * d, "rmsnorm");
        }
        compare(out[1], out[0], (size_t)rows * d, PB_TOL_ELEMENTWISE_NMSE, "rmsnorm");
        free(out[0]);
        free(out[1]);
    }
    /* swiglu and add */
    for (int i = 0; i < 2; i++) {
        out[i] = alloc_guarded((size_t)n * k);
        assert_int_equal(bs[i]->ops->glu(bs[i], out[i], w, x, (size_t)rows, (size_t)k, (size_t)k, PB_ACTIVATION_SILU),
                         PB_OK);
        check_guard(out[i], (size_t)rows * k, "swiglu");
    }
    compare(out[1], out[0], (size_t)rows * k, PB_TOL_ELEMENTWISE_NMSE, "swiglu");
    for (int i = 0; i < 2; i++) {
        assert_int_equal(bs[i]->ops->add(bs[i], out[i], w, x, (size_t)rows * k), PB_OK);
        check_guard(out[i], (size_t)rows * k, "add");
    }
    compare(out[1], out[0], (size_t)rows * k, 0.0, "add");
    free(out[0]);
    free(out[1]);
    free(x);
    free(w);
    free(bias);
    free(nw);
}

static void test_cpu_rope_attention_embed(void **state) {
    pair *p = *state;
    pb_backend *bs[2] = {p->ref, p->cpu};
    const int T = 13, n_heads = 6, n_kv = 2, hd = 18, vocab = 11;
    /* q_start > 0 with T_kv > T: a suffix attending to a cached prefix. */
    const int cases[2][2] = {{0, 13}, {9, 22}};
    size_t qn = (size_t)T * n_heads * hd;
    float *inv = alloc_guarded(hd / 2);
    for (int i = 0; i < hd / 2; i++)
        inv[i] = powf(10000.0f, -2.0f * i / hd);
    int32_t pos[13];
    for (int c = 0; c < 2; c++) {
        int q_start = cases[c][0], T_kv = cases[c][1];
        size_t kn = (size_t)T_kv * n_kv * hd;
        float *q = alloc_guarded(qn), *k = alloc_guarded(kn), *v = alloc_guarded(kn);
        tu_fill(q, qn, 10 + c, 1.0f);
        tu_fill(k, kn, 20 + c, 1.0f);
        tu_fill(v, kn, 30 + c, 1.0f);
        float *rq[2], *z[2];
        for (int t = 0; t < T; t++)
            pos[t] = q_start + t;
        for (int i = 0; i < 2; i++) {
            rq[i] = alloc_guarded(qn);
            memcpy(rq[i], q, sizeof(float) * qn);
            assert_int_equal(bs[i]->ops->rope(bs[i], rq[i], pos, inv, T, n_heads, hd, hd, 1.0f), PB_OK);
            check_guard(rq[i], qn, "rope");
            z[i] = alloc_guarded(qn);
            assert_int_equal(bs[i]->ops->attention(bs[i], z[i], q, k, v, T, T_kv, q_start, n_heads, n_kv, hd, NULL),
                             PB_OK);
            check_guard(z[i], qn, "attention");
        }
        compare(rq[1], rq[0], qn, PB_TOL_ELEMENTWISE_NMSE, "rope");
        compare(z[1], z[0], qn, PB_TOL_OP_NMSE, "attention");
        for (int i = 0; i < 2; i++) {
            free(rq[i]);
            free(z[i]);
        }
        free(q);
        free(k);
        free(v);
    }
    /* embed */
    float *table = alloc_guarded((size_t)vocab * hd), *e[2];
    tu_fill(table, (size_t)vocab * hd, 40, 1.0f);
    int32_t ids[5] = {0, 10, 3, 3, 7};
    for (int i = 0; i < 2; i++) {
        e[i] = alloc_guarded((size_t)5 * hd);
        assert_int_equal(bs[i]->ops->embed(bs[i], e[i], table, PB_DTYPE_F32, ids, 5, hd, 1.0f), PB_OK);
        check_guard(e[i], (size_t)5 * hd, "embed");
    }
    compare(e[1], e[0], (size_t)5 * hd, 0.0, "embed");
    assert_memory_equal(e[1] + hd, table + 10 * hd, sizeof(float) * hd);
    free(e[0]);
    free(e[1]);
    free(table);
    free(inv);
}

/* attention_jobs (ragged jobs, prefix read in place) against the
 * reference attention of each job over its assembled keys. */
static void test_cpu_attention_jobs(void **state) {
    pair *p = *state;
    const int n_heads = 6, n_kv = 3, hd = 10, qd = n_heads * hd, kvd = n_kv * hd;
    const int shapes[4][2] = {{0, 5}, {7, 1}, {3, 4}, {12, 2}}; /* (p0, n) */
    int rows = 0;
    pb_attention_job jobs[4];
    float *prefix[4], *fresh[4], *vprefix[4], *vfresh[4];
    for (int j = 0; j < 4; j++)
        rows += shapes[j][1];
    float *q = alloc_guarded((size_t)rows * qd), *out = alloc_guarded((size_t)rows * qd);
    float *want = alloc_guarded((size_t)rows * qd);
    tu_fill(q, (size_t)rows * qd, 50, 1.0f);
    int row = 0;
    for (int j = 0; j < 4; j++) {
        int p0 = shapes[j][0], n = shapes[j][1], T = p0 + n;
        float *k = alloc_guarded((size_t)T * kvd), *v = alloc_guarded((size_t)T * kvd);
        tu_fill(k, (size_t)T * kvd, 60 + j, 1.0f);
        tu_fill(v, (size_t)T * kvd, 70 + j, 1.0f);
        prefix[j] = k;
        vprefix[j] = v;
        fresh[j] = k + (size_t)p0 * kvd;
        vfresh[j] = v + (size_t)p0 * kvd;
        jobs[j] = (pb_attention_job){.q_row = row,
                                     .n = n,
                                     .p0 = p0,
                                     .k_prefix = prefix[j],
                                     .v_prefix = vprefix[j],
                                     .k_new = fresh[j],
                                     .v_new = vfresh[j]};
        assert_int_equal(p->ref->ops->attention(p->ref, want + (size_t)row * qd, q + (size_t)row * qd, k, v, n, T, p0,
                                                n_heads, n_kv, hd, NULL),
                         PB_OK);
        row += n;
    }
    assert_non_null(p->cpu->ops->attention_jobs);
    assert_int_equal(p->cpu->ops->attention_jobs(p->cpu, out, q, jobs, 4, n_heads, n_kv, hd, NULL), PB_OK);
    check_guard(out, (size_t)rows * qd, "attention_jobs");
    compare(out, want, (size_t)rows * qd, PB_TOL_OP_NMSE, "attention_jobs");
    for (int j = 0; j < 4; j++) {
        free(prefix[j]);
        free(vprefix[j]);
    }
    free(q);
    free(out);
    free(want);
}

/* OpenBLAS's thread count is the process's: a CPU backend's products run
 * with its own count even after another backend (a second model loaded
 * with other threads) set a different one. The shapes are the tiny
 * model's batch products, where OpenBLAS's 1- and 2-thread sums differ
 * on some machines (an AMD EPYC: up to 6e-7 in a sweep's effects). */
static void test_cpu_threads_are_the_backends(void **state) {
    (void)state;
    const int shapes[3][3] = {{2560, 96, 64}, {2560, 64, 96}, {512, 128, 64}};
    pb_backend *one = NULL, *two = NULL;
    CHECK_OK(pb_backend_cpu_create(&one, 1));
    int differ = 0;
    for (int s = 0; s < 3; s++) {
        int rows = shapes[s][0], n = shapes[s][1], k = shapes[s][2];
        float *x = malloc(sizeof(float) * (size_t)rows * k), *w = malloc(sizeof(float) * (size_t)n * k);
        float *before = malloc(sizeof(float) * (size_t)rows * n), *after = malloc(sizeof(float) * (size_t)rows * n);
        float *other = malloc(sizeof(float) * (size_t)rows * n);
        assert_true(x && w && before && after && other);
        tu_fill(x, (size_t)rows * k, 11 + (uint64_t)s, 1.0f);
        tu_fill(w, (size_t)n * k, 12 + (uint64_t)s, 0.3f);
        CHECK_OK(one->ops->matmul(one, before, x, w, PB_DTYPE_F32, NULL, rows, n, k));
        if (!two)
            CHECK_OK(pb_backend_cpu_create(&two, 2));
        CHECK_OK(two->ops->matmul(two, other, x, w, PB_DTYPE_F32, NULL, rows, n, k));
        CHECK_OK(one->ops->matmul(one, after, x, w, PB_DTYPE_F32, NULL, rows, n, k));
        differ += memcmp(before, other, sizeof(float) * (size_t)rows * n) != 0;
        assert_memory_equal(before, after, sizeof(float) * (size_t)rows * n);
        free(x);
        free(w);
        free(before);
        free(after);
        free(other);
    }
    printf("  %d of 3 shapes sum differently on 2 threads than on 1 here\n", differ);
    pb_backend_destroy(one);
    pb_backend_destroy(two);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_threads_are_the_backends), cmocka_unit_test(test_ref_exact_cases),
        cmocka_unit_test(test_cpu_matches_reference),        cmocka_unit_test(test_layernorm_activations_partial_rope),
        cmocka_unit_test(test_cpu_rope_attention_embed),     cmocka_unit_test(test_cpu_attention_jobs),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
