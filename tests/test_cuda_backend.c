/* Parity of the CUDA backend with the reference backend (ops_ref.c): every op
 * of pb_backend_ops on seeded random inputs of odd sizes, compared by NMSE
 * (sum (cuda - ref)^2 / sum ref^2) with NaN/Inf parity, and PB_GUARD sentinel
 * floats after every output that must survive the op untouched.
 * Without a CUDA device (or in a build without CUDA) it exits 77: skipped. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend.h"
#include "backend_cuda.h"
#include "tolerances.h"

/* CUDA-vs-reference tolerances. They belong in tolerances.h; until they are
 * added there, these defaults apply (and give way to tolerances.h once it
 * defines them).
 * Elementwise ops (rmsnorm, rope, swiglu, add): looser than the CPU's
 * PB_TOL_ELEMENTWISE_NMSE because the GPU's expf/sincosf are 1-2 ulp and the
 * reference computes parts in double: relative ~1e-7, NMSE ~1e-13; 1e-10
 * leaves three orders of headroom while any indexing mistake gives NMSE ~1. */
#ifndef PB_TOL_CUDA_ELEMENTWISE_NMSE
#define PB_TOL_CUDA_ELEMENTWISE_NMSE 1e-10
#endif
/* Reductions (matmul over k, attention over T_kv): fp32 sums in another
 * order than the reference's double sums; relative error ~ sqrt(k) * 2^-24
 * (~1e-6 at k = 515, NMSE ~1e-12). cuBLAS runs without TF32
 * (CUBLAS_DEFAULT_MATH); TF32 alone would give NMSE ~1e-7 and fail. */
#ifndef PB_TOL_CUDA_OP_NMSE
#define PB_TOL_CUDA_OP_NMSE 1e-9
#endif

/* Floats appended to every output buffer, set to PB_SENTINEL. */
#define PB_GUARD 16
#define PB_SENTINEL 12345.0f

static pb_backend *g_ref;
static pb_backend *g_cuda;

#define CHECK_OK(expr)                                                                               \
    do {                                                                                             \
        pb_status check_status_ = (expr);                                                            \
        if (check_status_ != PB_OK)                                                                  \
            fail_msg("%s -> %s: %s", #expr, pb_status_name(check_status_), pb_last_error());         \
    } while (0)

/* ---- random inputs ---------------------------------------------------- */

static uint64_t g_rng;

static void rng_seed(uint64_t seed) { g_rng = seed * 0x9e3779b97f4a7c15ull + 1; }

/* xorshift64*: uniform in [lo, hi). */
static float rng_uniform(float lo, float hi) {
    g_rng ^= g_rng >> 12;
    g_rng ^= g_rng << 25;
    g_rng ^= g_rng >> 27;
    uint64_t bits = (g_rng * 0x2545f4914f6cdd1dull) >> 40; /* 24 bits */
    return lo + (hi - lo) * ((float)bits / 16777216.0f);
}

static float *host_random(size_t n, float lo, float hi) {
    float *x = malloc(sizeof(float) * (n ? n : 1));
    assert_non_null(x);
    for (size_t i = 0; i < n; i++)
        x[i] = rng_uniform(lo, hi);
    return x;
}

/* ---- a tensor held by both backends ------------------------------------ */

typedef struct twin {
    void *ref;  /* (n + PB_GUARD) floats, or bytes for int tensors */
    void *cuda;
    size_t n;   /* floats the op may touch */
} twin;

static void *backend_buffer(pb_backend *backend, const void *host, size_t bytes) {
    void *ptr = NULL;
    CHECK_OK(backend->ops->alloc(backend, &ptr, bytes));
    assert_non_null(ptr);
    CHECK_OK(backend->ops->upload(backend, ptr, host, bytes));
    return ptr;
}

/* n floats from host (or all sentinel when host is NULL), then the guard. */
static twin twin_floats(const float *host, size_t n) {
    float *staged = malloc(sizeof(float) * (n + PB_GUARD));
    assert_non_null(staged);
    for (size_t i = 0; i < n + PB_GUARD; i++)
        staged[i] = (host && i < n) ? host[i] : PB_SENTINEL;
    twin t = {backend_buffer(g_ref, staged, sizeof(float) * (n + PB_GUARD)),
              backend_buffer(g_cuda, staged, sizeof(float) * (n + PB_GUARD)), n};
    free(staged);
    return t;
}

static twin twin_ints(const int32_t *host, size_t n) {
    twin t = {backend_buffer(g_ref, host, sizeof(int32_t) * n), backend_buffer(g_cuda, host, sizeof(int32_t) * n),
              n};
    return t;
}

static void twin_free(twin *t) {
    g_ref->ops->free(g_ref, t->ref);
    g_cuda->ops->free(g_cuda, t->cuda);
    t->ref = t->cuda = NULL;
}

static int float_class(float x) {
    if (isnan(x))
        return 1;
    if (isinf(x))
        return x > 0 ? 2 : 3;
    return 0;
}

/* Downloads both copies of t, checks the guards, NaN/Inf parity and
 * NMSE <= tolerance over the finite elements; prints the NMSE. */
static void twin_compare(const twin *t, double tolerance, const char *what) {
    size_t total = t->n + PB_GUARD;
    float *ref = malloc(sizeof(float) * total);
    float *cuda = malloc(sizeof(float) * total);
    assert_non_null(ref);
    assert_non_null(cuda);
    CHECK_OK(g_cuda->ops->synchronize(g_cuda));
    CHECK_OK(g_ref->ops->download(g_ref, ref, t->ref, sizeof(float) * total));
    CHECK_OK(g_cuda->ops->download(g_cuda, cuda, t->cuda, sizeof(float) * total));

    for (size_t i = t->n; i < total; i++) {
        if (cuda[i] != PB_SENTINEL)
            fail_msg("%s: cuda wrote past the end: guard float %zu is %g", what, i - t->n, (double)cuda[i]);
        if (ref[i] != PB_SENTINEL)
            fail_msg("%s: reference wrote past the end: guard float %zu is %g", what, i - t->n, (double)ref[i]);
    }
    double err = 0.0, norm = 0.0;
    size_t non_finite = 0;
    for (size_t i = 0; i < t->n; i++) {
        if (float_class(cuda[i]) != float_class(ref[i]))
            fail_msg("%s: element %zu is %g on cuda but %g in the reference", what, i, (double)cuda[i],
                     (double)ref[i]);
        if (float_class(ref[i]) != 0) {
            non_finite++;
            continue;
        }
        double diff = (double)cuda[i] - (double)ref[i];
        err += diff * diff;
        norm += (double)ref[i] * ref[i];
    }
    double nmse = norm > 0.0 ? err / norm : (err == 0.0 ? 0.0 : INFINITY);
    printf("  %-44s n=%-7zu nmse=%.3e (tol %.0e)%s\n", what, t->n, nmse, tolerance,
           non_finite ? " [non-finite parity ok]" : "");
    if (!(nmse <= tolerance))
        fail_msg("%s: nmse %.3e exceeds %.0e", what, nmse, tolerance);
    free(ref);
    free(cuda);
}

/* ---- tests ------------------------------------------------------------- */

static void test_memory(void **state) {
    (void)state;
    rng_seed(1);
    const size_t n = 1001;
    float *host = host_random(n, -1.0f, 1.0f);
    twin src = twin_floats(host, n);
    twin dst = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->copy(g_ref, dst.ref, src.ref, sizeof(float) * n));
    CHECK_OK(g_cuda->ops->copy(g_cuda, dst.cuda, src.cuda, sizeof(float) * n));
    twin_compare(&dst, 0.0, "upload+copy+download 1001");

    float *back = malloc(sizeof(float) * n);
    assert_non_null(back);
    CHECK_OK(g_cuda->ops->download(g_cuda, back, src.cuda, sizeof(float) * n));
    assert_memory_equal(back, host, sizeof(float) * n);
    /* zero-byte transfers are no-ops */
    CHECK_OK(g_cuda->ops->upload(g_cuda, dst.cuda, host, 0));
    CHECK_OK(g_cuda->ops->download(g_cuda, back, dst.cuda, 0));
    g_cuda->ops->free(g_cuda, NULL);
    free(back);
    twin_free(&src);
    twin_free(&dst);
    free(host);
}

static void test_embed(void **state) {
    (void)state;
    rng_seed(2);
    const int vocab = 11, T = 13, d = 67;
    float *table_host = host_random((size_t)vocab * d, -1.0f, 1.0f);
    int32_t ids_host[13];
    for (int t = 0; t < T; t++)
        ids_host[t] = (int32_t)((t * 7 + 3) % vocab);
    ids_host[T - 1] = vocab - 1; /* the last row of the table */
    twin table = twin_floats(table_host, (size_t)vocab * d);
    twin ids = twin_ints(ids_host, (size_t)T);
    twin out = twin_floats(NULL, (size_t)T * d);
    CHECK_OK(g_ref->ops->embed(g_ref, out.ref, table.ref, PB_DTYPE_F32, ids.ref, T, d));
    CHECK_OK(g_cuda->ops->embed(g_cuda, out.cuda, table.cuda, PB_DTYPE_F32, ids.cuda, T, d));
    twin_compare(&out, 0.0, "embed vocab=11 T=13 d=67 (exact)");
    twin_free(&table);
    twin_free(&ids);
    twin_free(&out);
    free(table_host);
}

static void run_rmsnorm(int rows, int d, int with_weight, int nan_row, const char *what) {
    float *x_host = host_random((size_t)rows * d, -3.0f, 3.0f);
    float *w_host = host_random((size_t)d, 0.5f, 1.5f);
    if (nan_row >= 0)
        x_host[(size_t)nan_row * d + d / 2] = NAN;
    twin x = twin_floats(x_host, (size_t)rows * d);
    twin w = twin_floats(w_host, (size_t)d);
    twin out = twin_floats(NULL, (size_t)rows * d);
    CHECK_OK(g_ref->ops->rmsnorm(g_ref, out.ref, x.ref, with_weight ? w.ref : NULL, rows, d, 1e-5f));
    CHECK_OK(g_cuda->ops->rmsnorm(g_cuda, out.cuda, x.cuda, with_weight ? w.cuda : NULL, rows, d, 1e-5f));
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&x);
    twin_free(&w);
    twin_free(&out);
    free(x_host);
    free(w_host);
}

static void test_rmsnorm(void **state) {
    (void)state;
    rng_seed(3);
    run_rmsnorm(7, 67, 1, -1, "rmsnorm rows=7 d=67");
    run_rmsnorm(7, 67, 0, -1, "rmsnorm rows=7 d=67 weight=NULL");
    run_rmsnorm(3, 4099, 1, -1, "rmsnorm rows=3 d=4099");
    run_rmsnorm(1, 1, 1, -1, "rmsnorm rows=1 d=1");
    run_rmsnorm(7, 67, 1, 2, "rmsnorm rows=7 d=67 NaN in row 2");
}

static void run_matmul(int rows, int n, int k, int with_bias, int nan_row, const char *what) {
    float *x_host = host_random((size_t)rows * k, -1.0f, 1.0f);
    float *w_host = host_random((size_t)n * k, -1.0f, 1.0f);
    float *b_host = host_random((size_t)n, -1.0f, 1.0f);
    if (nan_row >= 0)
        x_host[(size_t)nan_row * k] = NAN;
    twin x = twin_floats(x_host, (size_t)rows * k);
    twin w = twin_floats(w_host, (size_t)n * k);
    twin b = twin_floats(b_host, (size_t)n);
    twin out = twin_floats(NULL, (size_t)rows * n);
    CHECK_OK(g_ref->ops->matmul(g_ref, out.ref, x.ref, w.ref, PB_DTYPE_F32, with_bias ? b.ref : NULL, rows, n, k));
    CHECK_OK(g_cuda->ops->matmul(g_cuda, out.cuda, x.cuda, w.cuda, PB_DTYPE_F32, with_bias ? b.cuda : NULL, rows, n, k));
    twin_compare(&out, PB_TOL_CUDA_OP_NMSE, what);
    twin_free(&x);
    twin_free(&w);
    twin_free(&b);
    twin_free(&out);
    free(x_host);
    free(w_host);
    free(b_host);
}

static void test_matmul(void **state) {
    (void)state;
    rng_seed(4);
    run_matmul(7, 53, 67, 1, -1, "matmul rows=7 n=53 k=67 bias");
    run_matmul(7, 53, 67, 0, -1, "matmul rows=7 n=53 k=67");
    run_matmul(13, 301, 515, 1, -1, "matmul rows=13 n=301 k=515 bias");
    run_matmul(1, 1, 1, 1, -1, "matmul rows=1 n=1 k=1 bias");
    run_matmul(7, 53, 67, 1, 3, "matmul rows=7 n=53 k=67 NaN in row 3");
}

static void run_rope(int T, int n_heads, int head_dim, int first_position, const char *what) {
    const int half = head_dim / 2;
    float *x_host = host_random((size_t)T * n_heads * head_dim, -1.0f, 1.0f);
    float *freq_host = malloc(sizeof(float) * (size_t)half);
    int32_t *pos_host = malloc(sizeof(int32_t) * (size_t)T);
    assert_non_null(freq_host);
    assert_non_null(pos_host);
    for (int i = 0; i < half; i++)
        freq_host[i] = powf(10000.0f, -2.0f * (float)i / (float)head_dim);
    for (int t = 0; t < T; t++)
        pos_host[t] = first_position + t;
    twin x = twin_floats(x_host, (size_t)T * n_heads * head_dim);
    twin freq = twin_floats(freq_host, (size_t)half);
    twin pos = twin_ints(pos_host, (size_t)T);
    CHECK_OK(g_ref->ops->rope(g_ref, x.ref, pos.ref, freq.ref, T, n_heads, head_dim));
    CHECK_OK(g_cuda->ops->rope(g_cuda, x.cuda, pos.cuda, freq.cuda, T, n_heads, head_dim));
    twin_compare(&x, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&x);
    twin_free(&freq);
    twin_free(&pos);
    free(x_host);
    free(freq_host);
    free(pos_host);
}

static void test_rope(void **state) {
    (void)state;
    rng_seed(5);
    run_rope(13, 3, 18, 0, "rope T=13 heads=3 head_dim=18 pos 0..");
    run_rope(13, 3, 18, 5, "rope T=13 heads=3 head_dim=18 pos 5..");
    run_rope(7, 4, 128, 4090, "rope T=7 heads=4 head_dim=128 pos 4090..");
}

/* k and v rows at or beyond key_limit are filled with large values: the
 * causal mask must keep every query from reading them. */
static void run_attention(int T, int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                          const char *what) {
    const size_t q_count = (size_t)T * n_heads * head_dim;
    const size_t kv_count = (size_t)T_kv * n_kv_heads * head_dim;
    float *q_host = host_random(q_count, -2.0f, 2.0f);
    float *k_host = host_random(kv_count, -2.0f, 2.0f);
    float *v_host = host_random(kv_count, -1.0f, 1.0f);
    const size_t key_limit = (size_t)(q_start + T) * n_kv_heads * head_dim;
    for (size_t i = key_limit; i < kv_count; i++) {
        k_host[i] = 50.0f;
        v_host[i] = 1000.0f;
    }
    twin q = twin_floats(q_host, q_count);
    twin k = twin_floats(k_host, kv_count);
    twin v = twin_floats(v_host, kv_count);
    twin out = twin_floats(NULL, q_count);
    CHECK_OK(g_ref->ops->attention(g_ref, out.ref, q.ref, k.ref, v.ref, T, T_kv, q_start, n_heads, n_kv_heads,
                                   head_dim));
    CHECK_OK(g_cuda->ops->attention(g_cuda, out.cuda, q.cuda, k.cuda, v.cuda, T, T_kv, q_start, n_heads,
                                    n_kv_heads, head_dim));
    twin_compare(&out, PB_TOL_CUDA_OP_NMSE, what);
    twin_free(&q);
    twin_free(&k);
    twin_free(&v);
    twin_free(&out);
    free(q_host);
    free(k_host);
    free(v_host);
}

static void test_attention(void **state) {
    (void)state;
    rng_seed(6);
    run_attention(13, 13, 0, 4, 2, 67, "attention T=13 T_kv=13 H=4 KV=2 hd=67");
    run_attention(5, 19, 14, 6, 2, 64, "attention T=5 T_kv=19 q_start=14 H=6 KV=2");
    run_attention(4, 20, 6, 4, 4, 32, "attention T=4 T_kv=20 q_start=6 (masked tail)");
    run_attention(33, 33, 0, 2, 2, 128, "attention T=33 T_kv=33 H=KV=2 hd=128");
    run_attention(3, 300, 297, 8, 1, 96, "attention T=3 T_kv=300 q_start=297 KV=1");
    run_attention(1, 1, 0, 1, 1, 1, "attention T=1 T_kv=1 hd=1");
}

static void test_swiglu(void **state) {
    (void)state;
    rng_seed(7);
    const size_t n = 1001;
    float *gate_host = host_random(n, -8.0f, 8.0f);
    float *up_host = host_random(n, -2.0f, 2.0f);
    twin gate = twin_floats(gate_host, n);
    twin up = twin_floats(up_host, n);
    twin out = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->swiglu(g_ref, out.ref, gate.ref, up.ref, n));
    CHECK_OK(g_cuda->ops->swiglu(g_cuda, out.cuda, gate.cuda, up.cuda, n));
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, "swiglu n=1001");
    twin_free(&gate);
    twin_free(&up);
    twin_free(&out);

    gate_host[10] = NAN;
    up_host[20] = NAN;
    gate = twin_floats(gate_host, n);
    up = twin_floats(up_host, n);
    out = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->swiglu(g_ref, out.ref, gate.ref, up.ref, n));
    CHECK_OK(g_cuda->ops->swiglu(g_cuda, out.cuda, gate.cuda, up.cuda, n));
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, "swiglu n=1001 with NaN");
    twin_free(&gate);
    twin_free(&up);
    twin_free(&out);
    free(gate_host);
    free(up_host);
}

static void test_add(void **state) {
    (void)state;
    rng_seed(8);
    const size_t n = 1001;
    float *a_host = host_random(n, -1.0f, 1.0f);
    float *b_host = host_random(n, -1.0f, 1.0f);
    a_host[5] = NAN;
    b_host[6] = INFINITY;
    b_host[7] = -INFINITY;
    twin a = twin_floats(a_host, n);
    twin b = twin_floats(b_host, n);
    twin out = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->add(g_ref, out.ref, a.ref, b.ref, n));
    CHECK_OK(g_cuda->ops->add(g_cuda, out.cuda, a.cuda, b.cuda, n));
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, "add n=1001 with NaN/Inf");
    /* out aliasing a: the residual update x += y */
    CHECK_OK(g_ref->ops->add(g_ref, a.ref, a.ref, b.ref, n));
    CHECK_OK(g_cuda->ops->add(g_cuda, a.cuda, a.cuda, b.cuda, n));
    twin_compare(&a, PB_TOL_CUDA_ELEMENTWISE_NMSE, "add n=1001 in place (out == a)");
    twin_free(&a);
    twin_free(&b);
    twin_free(&out);
    free(a_host);
    free(b_host);
}

static void expect_status(pb_status got, pb_status want, const char *what) {
    if (got != want)
        fail_msg("%s: got %s, want %s (%s)", what, pb_status_name(got), pb_status_name(want), pb_last_error());
    if (pb_last_error()[0] == '\0')
        fail_msg("%s: %s without a message", what, pb_status_name(got));
    printf("  %-44s %s: %s\n", what, pb_status_name(got), pb_last_error());
}

static void test_errors(void **state) {
    (void)state;
    float *buffer = NULL;
    CHECK_OK(g_cuda->ops->alloc(g_cuda, (void **)&buffer, 4096));
    const pb_backend_ops *ops = g_cuda->ops;
    expect_status(ops->attention(g_cuda, buffer, buffer, buffer, buffer, 2, 2, 0, 3, 2, 8), PB_ERR_ARG,
                  "attention n_heads % n_kv_heads != 0");
    expect_status(ops->attention(g_cuda, buffer, buffer, buffer, buffer, 4, 5, 2, 2, 2, 8), PB_ERR_ARG,
                  "attention q_start + T > T_kv");
    expect_status(ops->rope(g_cuda, buffer, (const int32_t *)buffer, buffer, 2, 2, 7), PB_ERR_ARG,
                  "rope odd head_dim");
    expect_status(ops->matmul(g_cuda, buffer, buffer, buffer, PB_DTYPE_F32, NULL, -1, 4, 4), PB_ERR_ARG, "matmul rows < 0");
    ops->free(g_cuda, buffer);

    void *huge = NULL;
    pb_status status = ops->alloc(g_cuda, &huge, (size_t)1 << 50); /* 1 PiB */
    expect_status(status, PB_ERR_OOM, "alloc 1 PiB");
    assert_null(huge);
    assert_non_null(strstr(pb_last_error(), "need"));
    assert_non_null(strstr(pb_last_error(), "free"));
    /* the backend still works after a refused allocation */
    CHECK_OK(ops->alloc(g_cuda, (void **)&buffer, 64));
    CHECK_OK(ops->synchronize(g_cuda));
    ops->free(g_cuda, buffer);
}

static void test_nccl_linked(void **state) {
    (void)state;
    int version = 0;
    CHECK_OK(pb_cuda_nccl_version(&version));
    printf("  NCCL version code %d\n", version);
    assert_true(version > 0);
}

static int group_setup(void **state) {
    (void)state;
    pb_status status = pb_backend_ref_create(&g_ref);
    if (status != PB_OK) {
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
    pb_status status = pb_backend_cuda_create(&g_cuda, 0);
    if (status == PB_ERR_UNSUPPORTED) {
        printf("skipping: no CUDA device: %s\n", pb_last_error());
        return 77;
    }
    if (status != PB_OK) {
        fprintf(stderr, "pb_backend_cuda_create: %s: %s\n", pb_status_name(status), pb_last_error());
        return 1;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory),    cmocka_unit_test(test_embed),     cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_matmul),    cmocka_unit_test(test_rope),      cmocka_unit_test(test_attention),
        cmocka_unit_test(test_swiglu),    cmocka_unit_test(test_add),       cmocka_unit_test(test_errors),
        cmocka_unit_test(test_nccl_linked),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown) == 0 ? 0 : 1;
}
