/* Parity of the CUDA backend with the reference backend (ops_ref.c): every op
 * of pb_backend_ops (the backward ones too) on seeded random inputs of odd sizes, compared by NMSE
 * (sum (cuda - ref)^2 / sum ref^2) with NaN/Inf parity, and PB_GUARD sentinel
 * floats after every output that must survive the op untouched.
 * Without a CUDA device (or in a build without CUDA) it exits 77: skipped.
 * PB_CUDA_TEST_STAND_IN=cpu runs the parity checks with the CPU backend in
 * place of CUDA (the CUDA-only checks skip): a check of this file's own
 * logic on a machine without a GPU; =checked with the checked backend
 * (backend_checked.c), which also checks that every buffer handed to an op
 * is the backend's memory, whole, and that the host never touches it. */
#define _POSIX_C_SOURCE 200809L
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
#include "test_util.h"
#include "formats/dtype.h"
#include "formats/quant.h"
#include "tolerances.h"

/* Floats appended to every output buffer, set to PB_SENTINEL. */
#define PB_GUARD 16
#define PB_SENTINEL 12345.0f

static pb_backend *g_ref;
static pb_backend *g_cuda;
static int g_stand_in; /* g_cuda is another backend standing in for CUDA */

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
    void *ref; /* (n + PB_GUARD) floats, or bytes for int tensors */
    void *cuda;
    size_t n; /* floats the op may touch */
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
    twin t = {backend_buffer(g_ref, host, sizeof(int32_t) * n), backend_buffer(g_cuda, host, sizeof(int32_t) * n), n};
    return t;
}

/* bytes of raw data (a 16-bit table or weight), no guard. */
static twin twin_bytes(const void *host, size_t bytes) {
    twin t = {backend_buffer(g_ref, host, bytes), backend_buffer(g_cuda, host, bytes), bytes};
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
            fail_msg("%s: element %zu is %g on cuda but %g in the reference", what, i, (double)cuda[i], (double)ref[i]);
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
    CHECK_OK(g_ref->ops->embed(g_ref, out.ref, table.ref, PB_DTYPE_F32, ids.ref, T, d, 1.0f));
    CHECK_OK(g_cuda->ops->embed(g_cuda, out.cuda, table.cuda, PB_DTYPE_F32, ids.cuda, T, d, 1.0f));
    twin_compare(&out, 0.0, "embed vocab=11 T=13 d=67 (exact)");
    /* Gemma's sqrt(d_model) scale: one fp32 product on both sides */
    CHECK_OK(g_ref->ops->embed(g_ref, out.ref, table.ref, PB_DTYPE_F32, ids.ref, T, d, 45.254833995939045f));
    CHECK_OK(g_cuda->ops->embed(g_cuda, out.cuda, table.cuda, PB_DTYPE_F32, ids.cuda, T, d, 45.254833995939045f));
    twin_compare(&out, 0.0, "embed f32 scale sqrt(2048) (exact)");
    twin_free(&table);
    twin_free(&ids);
    twin_free(&out);
    free(table_host);
}

/* in_place: out == x (the per-head q/k norms). */
static void run_rmsnorm(int rows, int d, int with_weight, int nan_row, int in_place, const char *what) {
    float *x_host = host_random((size_t)rows * d, -3.0f, 3.0f);
    float *w_host = host_random((size_t)d, 0.5f, 1.5f);
    if (nan_row >= 0)
        x_host[(size_t)nan_row * d + d / 2] = NAN;
    twin x = twin_floats(x_host, (size_t)rows * d);
    twin w = twin_floats(w_host, (size_t)d);
    twin out = twin_floats(NULL, (size_t)rows * d);
    twin *result = in_place ? &x : &out;
    CHECK_OK(g_ref->ops->rmsnorm(g_ref, result->ref, x.ref, with_weight ? w.ref : NULL, rows, d, 1e-5f));
    CHECK_OK(g_cuda->ops->rmsnorm(g_cuda, result->cuda, x.cuda, with_weight ? w.cuda : NULL, rows, d, 1e-5f));
    twin_compare(result, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&x);
    twin_free(&w);
    twin_free(&out);
    free(x_host);
    free(w_host);
}

static void test_rmsnorm(void **state) {
    (void)state;
    rng_seed(3);
    run_rmsnorm(7, 67, 1, -1, 0, "rmsnorm rows=7 d=67");
    run_rmsnorm(7, 67, 0, -1, 0, "rmsnorm rows=7 d=67 weight=NULL");
    run_rmsnorm(3, 4099, 1, -1, 0, "rmsnorm rows=3 d=4099");
    run_rmsnorm(1, 1, 1, -1, 0, "rmsnorm rows=1 d=1");
    run_rmsnorm(7, 67, 1, 2, 0, "rmsnorm rows=7 d=67 NaN in row 2");
    /* q/k norms: rows = T * n_heads, d = head_dim, in place */
    run_rmsnorm(13 * 8, 128, 1, 5, 1, "rmsnorm in place T=13 x 8 heads hd=128");
    run_rmsnorm(7 * 4, 256, 1, -1, 1, "rmsnorm in place T=7 x 4 heads hd=256");
}

/* Rows of `mean` plus noise in [-3, 3): at mean 1e3 a variance taken as
 * E[x^2] - E[x]^2, or sums kept in fp32, misses the tolerance. weight and
 * bias each present or NULL; in_place: out == x. */
static void run_layernorm(int rows, int d, float mean, int with_weight, int with_bias, int nan_row, int in_place,
                          const char *what) {
    const size_t n = (size_t)rows * d;
    float *x_host = host_random(n, mean - 3.0f, mean + 3.0f);
    float *w_host = host_random((size_t)d, 0.5f, 1.5f);
    float *b_host = host_random((size_t)d, -1.0f, 1.0f);
    if (nan_row >= 0)
        x_host[(size_t)nan_row * d + d / 2] = NAN;
    twin x = twin_floats(x_host, n);
    twin w = twin_floats(w_host, (size_t)d);
    twin b = twin_floats(b_host, (size_t)d);
    twin out = twin_floats(NULL, n);
    twin *result = in_place ? &x : &out;
    CHECK_OK(g_ref->ops->layernorm(g_ref, result->ref, x.ref, with_weight ? w.ref : NULL, with_bias ? b.ref : NULL,
                                   rows, d, 1e-5f));
    CHECK_OK(g_cuda->ops->layernorm(g_cuda, result->cuda, x.cuda, with_weight ? w.cuda : NULL,
                                    with_bias ? b.cuda : NULL, rows, d, 1e-5f));
    twin_compare(result, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&x);
    twin_free(&w);
    twin_free(&b);
    twin_free(&out);
    free(x_host);
    free(w_host);
    free(b_host);
}

static void test_layernorm(void **state) {
    (void)state;
    rng_seed(23);
    run_layernorm(7, 1, 0.0f, 1, 1, -1, 0, "layernorm rows=7 d=1 (output = bias)");
    run_layernorm(7, 64, 0.0f, 1, 1, -1, 0, "layernorm rows=7 d=64");
    run_layernorm(7, 64, 0.0f, 0, 0, -1, 0, "layernorm rows=7 d=64 weight, bias NULL");
    run_layernorm(5, 768, 1e3f, 1, 1, -1, 0, "layernorm rows=5 d=768 mean 1e3");
    run_layernorm(5, 768, -1e3f, 0, 1, -1, 0, "layernorm rows=5 d=768 mean -1e3 weight NULL");
    run_layernorm(3, 1000, 1e3f, 1, 0, -1, 0, "layernorm rows=3 d=1000 mean 1e3 bias NULL");
    run_layernorm(7, 64, 0.0f, 1, 1, 2, 0, "layernorm rows=7 d=64 NaN in row 2");
    run_layernorm(13, 768, 1e3f, 1, 1, -1, 1, "layernorm in place rows=13 d=768 mean 1e3");
    run_layernorm(4, 1000, 0.0f, 0, 0, -1, 1, "layernorm in place rows=4 d=1000 no weight/bias");
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
    CHECK_OK(
        g_cuda->ops->matmul(g_cuda, out.cuda, x.cuda, w.cuda, PB_DTYPE_F32, with_bias ? b.cuda : NULL, rows, n, k));
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

/* rotary_dims < head_dim (GPT-NeoX's partial rotary): the dims from
 * rotary_dims on must come back from the device bit-identical. */
static void run_rope_scaled(int T, int n_heads, int head_dim, int rotary_dims, int first_position, float scale,
                            const char *what) {
    const int half = rotary_dims / 2;
    const size_t n = (size_t)T * n_heads * head_dim;
    float *x_host = host_random(n, -1.0f, 1.0f);
    float *freq_host = malloc(sizeof(float) * (size_t)half);
    int32_t *pos_host = malloc(sizeof(int32_t) * (size_t)T);
    float *x_back = malloc(sizeof(float) * n);
    assert_non_null(freq_host);
    assert_non_null(pos_host);
    assert_non_null(x_back);
    for (int i = 0; i < half; i++)
        freq_host[i] = powf(10000.0f, -2.0f * (float)i / (float)rotary_dims);
    for (int t = 0; t < T; t++)
        pos_host[t] = first_position + t;
    twin x = twin_floats(x_host, n);
    twin freq = twin_floats(freq_host, (size_t)half);
    twin pos = twin_ints(pos_host, (size_t)T);
    CHECK_OK(g_ref->ops->rope(g_ref, x.ref, pos.ref, freq.ref, T, n_heads, head_dim, rotary_dims, scale));
    CHECK_OK(g_cuda->ops->rope(g_cuda, x.cuda, pos.cuda, freq.cuda, T, n_heads, head_dim, rotary_dims, scale));
    twin_compare(&x, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    CHECK_OK(g_cuda->ops->download(g_cuda, x_back, x.cuda, sizeof(float) * n));
    for (size_t row = 0; row < (size_t)T * n_heads; row++) {
        const size_t at = row * head_dim + rotary_dims;
        if (memcmp(x_back + at, x_host + at, sizeof(float) * (size_t)(head_dim - rotary_dims)) != 0)
            fail_msg("%s: head row %zu changed past rotary_dims %d", what, row, rotary_dims);
    }
    twin_free(&x);
    twin_free(&freq);
    twin_free(&pos);
    free(x_host);
    free(x_back);
    free(freq_host);
    free(pos_host);
}

static void run_rope(int T, int n_heads, int head_dim, int rotary_dims, int first_position, const char *what) {
    run_rope_scaled(T, n_heads, head_dim, rotary_dims, first_position, 1.0f, what);
}

static void test_rope(void **state) {
    (void)state;
    rng_seed(5);
    run_rope(13, 3, 18, 18, 0, "rope T=13 heads=3 head_dim=18 pos 0..");
    run_rope(13, 3, 18, 18, 5, "rope T=13 heads=3 head_dim=18 pos 5..");
    run_rope(7, 4, 128, 128, 4090, "rope T=7 heads=4 head_dim=128 pos 4090..");
}

/* Partial rotary: Pythia-70m's 16 of 64, all 32 of 32 given explicitly,
 * the smallest pair (2 of 8). */
static void test_rope_partial(void **state) {
    (void)state;
    rng_seed(24);
    run_rope(13, 3, 64, 16, 0, "rope partial hd=64 rotary 16 pos 0..");
    run_rope(7, 4, 64, 16, 2040, "rope partial hd=64 rotary 16 pos 2040..");
    run_rope(13, 3, 32, 32, 5, "rope partial hd=32 rotary 32 (all) pos 5..");
    run_rope(9, 2, 8, 2, 100, "rope partial hd=8 rotary 2 pos 100..");
}

/* LongRoPE's attention factor on the rotated dims (Phi-4-mini: 96 of 128). */
static void test_rope_scaled(void **state) {
    (void)state;
    run_rope_scaled(7, 4, 128, 96, 4090, 1.1902380714f, "rope scaled hd=128 rotary 96 pos 4090..");
    run_rope_scaled(13, 3, 96, 96, 0, 1.1902380714f, "rope scaled hd=96 pos 0..");
}

/* k and v rows at or beyond key_limit are filled with large values: the
 * causal mask must keep every query from reading them. With `with_nan`, one
 * query element and one element of key row 1 are NaN (needs T >= 3): the
 * outputs that read them must be NaN as in the reference, including those
 * where the NaN key is the only key one of the kernel's warps sees. */
static void run_attention_nan(int T, int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim, int with_nan,
                              const pb_attention_params *params, float q_range, const char *what) {
    const size_t q_count = (size_t)T * n_heads * head_dim;
    const size_t kv_count = (size_t)T_kv * n_kv_heads * head_dim;
    float *q_host = host_random(q_count, -q_range, q_range);
    float *k_host = host_random(kv_count, -2.0f, 2.0f);
    float *v_host = host_random(kv_count, -1.0f, 1.0f);
    const size_t key_limit = (size_t)(q_start + T) * n_kv_heads * head_dim;
    for (size_t i = key_limit; i < kv_count; i++) {
        k_host[i] = 50.0f;
        v_host[i] = 1000.0f;
    }
    if (with_nan) {
        assert_true(T >= 3 && head_dim >= 1);
        q_host[((size_t)2 * n_heads + (size_t)(n_heads - 1)) * head_dim + (size_t)head_dim / 2] = NAN;
        k_host[(size_t)1 * n_kv_heads * head_dim] = NAN;
    }
    twin q = twin_floats(q_host, q_count);
    twin k = twin_floats(k_host, kv_count);
    twin v = twin_floats(v_host, kv_count);
    twin out = twin_floats(NULL, q_count);
    CHECK_OK(g_ref->ops->attention(g_ref, out.ref, q.ref, k.ref, v.ref, T, T_kv, q_start, n_heads, n_kv_heads, head_dim,
                                   params));
    CHECK_OK(g_cuda->ops->attention(g_cuda, out.cuda, q.cuda, k.cuda, v.cuda, T, T_kv, q_start, n_heads, n_kv_heads,
                                    head_dim, params));
    twin_compare(&out, PB_TOL_CUDA_OP_NMSE, what);
    twin_free(&q);
    twin_free(&k);
    twin_free(&v);
    twin_free(&out);
    free(q_host);
    free(k_host);
    free(v_host);
}

static void run_attention(int T, int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim, const char *what) {
    run_attention_nan(T, T_kv, q_start, n_heads, n_kv_heads, head_dim, 0, NULL, 2.0f, what);
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
    run_attention_nan(13, 13, 0, 4, 2, 67, 1, NULL, 2.0f, "attention T=13 H=4 KV=2 hd=67 NaN in q and k");
}

/* Gemma's and Qwen3's score shapes (pb_attention_params): a query scale
 * other than 1/sqrt(head_dim), soft caps that bind (scores ~1e2 capped at
 * 5; Gemma 2's 50), sliding windows of 1, under the prefix q_start, past
 * T_kv and exactly T, with GQA and head_dim 256. */
static void test_attention_params(void **state) {
    (void)state;
    rng_seed(20);
    const pb_attention_params scaled = {1.0f / 12.0f, 0.0f, 0};
    run_attention_nan(5, 14, 9, 4, 2, 128, 0, &scaled, 2.0f, "attention scale 1/12 hd=128 GQA");
    const pb_attention_params capped = {1.0f / sqrtf(32.0f), 5.0f, 0};
    run_attention_nan(4, 64, 60, 2, 2, 32, 0, &capped, 24.0f, "attention softcap 5 binding (scores ~1e2)");
    const pb_attention_params gemma2 = {1.0f / 16.0f, 50.0f, 0};
    run_attention_nan(3, 33, 30, 4, 2, 256, 0, &gemma2, 24.0f, "attention softcap 50 scale 1/16 hd=256 GQA");
    const int windows[] = {1, 7, 1000, 12};
    const char *names[] = {"attention window 1 T=12 q_start=20", "attention window 7 < q_start=20 T=12",
                           "attention window 1000 > T_kv=32", "attention window 12 = T, q_start=20"};
    for (int w = 0; w < 4; w++) {
        const pb_attention_params windowed = {1.0f / 8.0f, 0.0f, windows[w]};
        run_attention_nan(12, 32, 20, 6, 2, 64, 0, &windowed, 2.0f, names[w]);
    }
    /* a NaN key (row 1) outside every window but the first queries' */
    const pb_attention_params local = {0.0625f, 20.0f, 3};
    run_attention_nan(13, 13, 0, 8, 2, 256, 1, &local, 12.0f, "attention window 3 softcap 20 hd=256 NaN in q, k");
}

/* act (SiLU, GELU-tanh or exact GELU) on plain rows, with NaN in gate and up, and on
 * the halves of a fused gate/up output. */
static void run_glu(pb_activation act, const char *name) {
    char what[96];
    const size_t n = 1001;
    float *gate_host = host_random(n, -8.0f, 8.0f);
    float *up_host = host_random(n, -2.0f, 2.0f);
    twin gate = twin_floats(gate_host, n);
    twin up = twin_floats(up_host, n);
    twin out = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->glu(g_ref, out.ref, gate.ref, up.ref, 7, 143, 143, act));
    CHECK_OK(g_cuda->ops->glu(g_cuda, out.cuda, gate.cuda, up.cuda, 7, 143, 143, act));
    snprintf(what, sizeof what, "%s n=1001", name);
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&gate);
    twin_free(&up);
    twin_free(&out);

    gate_host[10] = NAN;
    up_host[20] = NAN;
    gate = twin_floats(gate_host, n);
    up = twin_floats(up_host, n);
    out = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->glu(g_ref, out.ref, gate.ref, up.ref, 7, 143, 143, act));
    CHECK_OK(g_cuda->ops->glu(g_cuda, out.cuda, gate.cuda, up.cuda, 7, 143, 143, act));
    snprintf(what, sizeof what, "%s n=1001 with NaN", name);
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&gate);
    twin_free(&up);
    twin_free(&out);

    /* a fused gate/up output (7 rows of 2 x 71 values): each half read
     * with stride 142, out (7, 71) dense */
    gate = twin_floats(gate_host, 7 * 142);
    out = twin_floats(NULL, 7 * 71);
    CHECK_OK(g_ref->ops->glu(g_ref, out.ref, gate.ref, (const float *)gate.ref + 71, 7, 71, 142, act));
    CHECK_OK(g_cuda->ops->glu(g_cuda, out.cuda, gate.cuda, (const float *)gate.cuda + 71, 7, 71, 142, act));
    snprintf(what, sizeof what, "%s fused halves 7 x 71, stride 142", name);
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&gate);
    twin_free(&out);
    free(gate_host);
    free(up_host);
}

static void test_swiglu(void **state) {
    (void)state;
    rng_seed(7);
    run_glu(PB_ACTIVATION_SILU, "swiglu");
}

/* The edges of a GELU gate apart (their size would swamp the NMSE): |g|
 * whose cube overflows fp32, +-Inf (Inf; -Inf * 0 = NaN in both), NaN, and
 * g ~ -5 where 1 + tanh (1 + erf) cancels. */
static void run_glu_edges(pb_activation act, const char *what) {
    const float edges[] = {-100.0f, 100.0f, 0.0f, 1e20f, -1e20f, INFINITY, -INFINITY, NAN, -5.0f, -4.5f, 3e-20f};
    const size_t n = sizeof edges / sizeof edges[0];
    float up_host[sizeof edges / sizeof edges[0]];
    for (size_t i = 0; i < n; i++)
        up_host[i] = 1.5f;
    twin gate = twin_floats(edges, n), up = twin_floats(up_host, n), out = twin_floats(NULL, n);
    CHECK_OK(g_ref->ops->glu(g_ref, out.ref, gate.ref, up.ref, 1, n, n, act));
    CHECK_OK(g_cuda->ops->glu(g_cuda, out.cuda, gate.cuda, up.cuda, 1, n, n, act));
    twin_compare(&out, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&gate);
    twin_free(&up);
    twin_free(&out);
}

/* GELU-tanh (Gemma) and exact GELU (GPT-NeoX) as SiLU above, then their
 * edges. */
static void test_glu_gelu(void **state) {
    (void)state;
    rng_seed(21);
    run_glu(PB_ACTIVATION_GELU_TANH, "glu gelu_tanh");
    run_glu_edges(PB_ACTIVATION_GELU_TANH, "glu gelu_tanh edges (Inf, NaN, 1e20, -5)");
    run_glu(PB_ACTIVATION_GELU, "glu gelu exact");
    run_glu_edges(PB_ACTIVATION_GELU, "glu gelu exact edges (Inf, NaN, 1e20, -5)");
}

/* activate in place (the MLP without a gate), each activation on x in
 * [-8, 8) with a NaN, then on the edges apart. */
static void test_activate(void **state) {
    (void)state;
    rng_seed(25);
    const pb_activation acts[] = {PB_ACTIVATION_SILU, PB_ACTIVATION_GELU_TANH, PB_ACTIVATION_GELU};
    const char *names[] = {"silu", "gelu_tanh", "gelu exact"};
    const float edges[] = {-100.0f, 100.0f, 0.0f, 1e20f, -1e20f, INFINITY, -INFINITY, NAN, -5.0f, -4.5f, 3e-20f};
    const size_t n = 1001, n_edges = sizeof edges / sizeof edges[0];
    for (int a = 0; a < 3; a++) {
        char what[96];
        float *x_host = host_random(n, -8.0f, 8.0f);
        x_host[10] = NAN;
        twin x = twin_floats(x_host, n);
        CHECK_OK(g_ref->ops->activate(g_ref, x.ref, n, acts[a]));
        CHECK_OK(g_cuda->ops->activate(g_cuda, x.cuda, n, acts[a]));
        snprintf(what, sizeof what, "activate %s n=1001 with NaN", names[a]);
        twin_compare(&x, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
        twin_free(&x);
        twin e = twin_floats(edges, n_edges);
        CHECK_OK(g_ref->ops->activate(g_ref, e.ref, n_edges, acts[a]));
        CHECK_OK(g_cuda->ops->activate(g_cuda, e.cuda, n_edges, acts[a]));
        snprintf(what, sizeof what, "activate %s edges (Inf, NaN, 1e20, -5)", names[a]);
        twin_compare(&e, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
        twin_free(&e);
        free(x_host);
    }
}

/* In place, values far beyond the cap (|x| to 200 for caps 30 and 5),
 * +-Inf (+-cap), NaN, signed zeros. */
static void test_softcap(void **state) {
    (void)state;
    rng_seed(22);
    const size_t n = 1001;
    const float caps[] = {30.0f, 5.0f};
    for (int c = 0; c < 2; c++) {
        float *x_host = host_random(n, -200.0f, 200.0f);
        const float edges[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 1e-30f, 1e30f};
        for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
            x_host[i] = edges[i];
        twin x = twin_floats(x_host, n);
        CHECK_OK(g_ref->ops->softcap(g_ref, x.ref, n, caps[c]));
        CHECK_OK(g_cuda->ops->softcap(g_cuda, x.cuda, n, caps[c]));
        twin_compare(&x, PB_TOL_CUDA_ELEMENTWISE_NMSE, c == 0 ? "softcap 30 |x| to 200" : "softcap 5 |x| to 200");
        twin_free(&x);
        free(x_host);
    }
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

/* copy_regions: 300 regions (three launches of at most 128) of assorted
 * lengths, from a source buffer into disjoint places of a destination,
 * against the reference backend's; untouched destination floats keep the
 * sentinel on both sides. */
static void test_copy_regions(void **state) {
    (void)state;
    rng_seed(13);
    enum { N_REGIONS = 300, SRC = 40000, DST = 80000 };
    float *src_host = host_random(SRC, -1.0f, 1.0f);
    src_host[17] = NAN;
    twin src = twin_floats(src_host, SRC), dst = twin_floats(NULL, DST);
    pb_copy_region *ref_regions = malloc(sizeof *ref_regions * N_REGIONS);
    pb_copy_region *cuda_regions = malloc(sizeof *cuda_regions * N_REGIONS);
    assert_non_null(ref_regions);
    assert_non_null(cuda_regions);
    size_t at = 0;
    for (int i = 0; i < N_REGIONS; i++) {
        size_t n = i % 7 == 3 ? 0 : 1 + (size_t)(rng_uniform(0.0f, 1.0f) * 250.0f); /* some empty */
        size_t from = (size_t)(rng_uniform(0.0f, 1.0f) * (float)(SRC - 256));
        at += (size_t)(rng_uniform(0.0f, 1.0f) * 8.0f); /* gaps stay sentinels */
        assert_true(at + n <= DST);
        ref_regions[i] = (pb_copy_region){(float *)dst.ref + at, (const float *)src.ref + from, n};
        cuda_regions[i] = (pb_copy_region){(float *)dst.cuda + at, (const float *)src.cuda + from, n};
        at += n;
    }
    CHECK_OK(g_ref->ops->copy_regions(g_ref, ref_regions, N_REGIONS));
    assert_non_null(g_cuda->ops->copy_regions);
    CHECK_OK(g_cuda->ops->copy_regions(g_cuda, cuda_regions, N_REGIONS));
    memset(cuda_regions, 0, sizeof *cuda_regions * N_REGIONS); /* the caller's array is free at return */
    twin_compare(&dst, 0.0, "copy_regions 300 regions, NaN carried, gaps untouched");
    CHECK_OK(g_cuda->ops->copy_regions(g_cuda, NULL, 0));
    twin_free(&src);
    twin_free(&dst);
    free(ref_regions);
    free(cuda_regions);
    free(src_host);
}

static void expect_status(pb_status got, pb_status want, const char *what) {
    if (got != want)
        fail_msg("%s: got %s, want %s (%s)", what, pb_status_name(got), pb_status_name(want), pb_last_error());
    if (pb_last_error()[0] == '\0')
        fail_msg("%s: %s without a message", what, pb_status_name(got));
    printf("  %-44s %s: %s\n", what, pb_status_name(got), pb_last_error());
}

/* ---- 16-bit weights ------------------------------------------------------ */

/* A table of vocab x d random floats stored as dtype, with a NaN, +Inf (for
 * fp16 a value beyond its range) and -Inf in it: widening is exact, so the
 * gather must match bit for bit. */
static void run_embed16(pb_dtype dtype, int vocab, int T, int d, float scale, const char *what) {
    const size_t table_count = (size_t)vocab * d;
    float *table_host = host_random(table_count, -2.0f, 2.0f);
    table_host[0] = NAN;                                                   /* row 0 */
    table_host[table_count - 1] = dtype == PB_DTYPE_F16 ? 1e6f : INFINITY; /* row vocab - 1 */
    table_host[(size_t)(vocab / 2) * d] = -INFINITY;                       /* row vocab / 2 */
    uint16_t *table16 = malloc(sizeof(uint16_t) * table_count);
    int32_t *ids_host = malloc(sizeof(int32_t) * (size_t)T);
    assert_non_null(table16);
    assert_non_null(ids_host);
    pb_dtype_from_f32(dtype, table16, table_host, table_count);
    for (int t = 0; t < T; t++)
        ids_host[t] = (int32_t)((t * 7 + 3) % vocab);
    ids_host[0] = 0;
    ids_host[T - 1] = vocab - 1;
    ids_host[T / 2] = vocab / 2;
    twin table = twin_bytes(table16, sizeof(uint16_t) * table_count);
    twin ids = twin_ints(ids_host, (size_t)T);
    twin out = twin_floats(NULL, (size_t)T * d);
    CHECK_OK(g_ref->ops->embed(g_ref, out.ref, table.ref, dtype, ids.ref, T, d, scale));
    CHECK_OK(g_cuda->ops->embed(g_cuda, out.cuda, table.cuda, dtype, ids.cuda, T, d, scale));
    twin_compare(&out, 0.0, what);
    twin_free(&table);
    twin_free(&ids);
    twin_free(&out);
    free(table_host);
    free(table16);
    free(ids_host);
}

static void test_embed16(void **state) {
    (void)state;
    rng_seed(9);
    run_embed16(PB_DTYPE_BF16, 11, 13, 67, 1.0f, "embed bf16 vocab=11 T=13 d=67 (exact)");
    run_embed16(PB_DTYPE_F16, 11, 13, 67, 1.0f, "embed f16 vocab=11 T=13 d=67 (exact)");
    run_embed16(PB_DTYPE_BF16, 5, 3, 1, 1.0f, "embed bf16 vocab=5 T=3 d=1 (exact)");
    /* Gemma's scale (sqrt(2048)): widening exact, then one fp32 product */
    run_embed16(PB_DTYPE_BF16, 11, 13, 67, 45.254833995939045f, "embed bf16 scale sqrt(2048) (exact)");
    run_embed16(PB_DTYPE_F16, 11, 13, 67, 45.254833995939045f, "embed f16 scale sqrt(2048) (exact)");
}

/* A random integer in [-limit, limit] times scale. */
static float grid_value(int limit, float scale) {
    int m = (int)floorf(rng_uniform(-(float)limit, (float)limit + 1.0f));
    m = m > limit ? limit : (m < -limit ? -limit : m);
    return (float)m * scale;
}

/* out (rows, n) = x (rows, k) @ w (n, k)^T (+ bias) with w stored as dtype.
 * On the grid (exact_grid): x and bias are multiples of 2^-12 in [-1, 1], w
 * multiples of 2^-4 in [-2, 2] (exact in bf16 and fp16); x rounded to dtype
 * stays a multiple of 2^-12 (rounding ties included), so every product is a
 * multiple of 2^-16 and, with k <= 31, every partial sum (|s| < 2^6) needs 22
 * significant bits: exact in fp32, and in a tensor core's aligned sum too,
 * with 2 bits to spare. Any summation order gives the reference's result
 * exactly, and only the rounding of x can differ. Otherwise uniform random
 * values;
 * nan_row gets a NaN in x, inf_row a value beyond fp16's range (+Inf once
 * rounded to fp16; finite in bf16). */
static void run_matmul16(pb_dtype dtype, int rows, int n, int k, int with_bias, int exact_grid, int nan_row,
                         int inf_row, const char *what) {
    const size_t x_count = (size_t)rows * k, w_count = (size_t)n * k;
    float *x_host = host_random(x_count, -1.0f, 1.0f);
    float *w_host = host_random(w_count, -1.0f, 1.0f);
    float *b_host = host_random((size_t)n, -1.0f, 1.0f);
    if (exact_grid) {
        assert_true(k <= 31);
        for (size_t i = 0; i < x_count; i++)
            x_host[i] = grid_value(4096, 1.0f / 4096.0f);
        for (size_t i = 0; i < w_count; i++)
            w_host[i] = grid_value(32, 1.0f / 16.0f);
        for (int i = 0; i < n; i++)
            b_host[i] = grid_value(4096, 1.0f / 4096.0f);
    }
    if (nan_row >= 0)
        x_host[(size_t)nan_row * k + k / 2] = NAN;
    if (inf_row >= 0)
        x_host[(size_t)inf_row * k + k - 1] = 1e5f;
    uint16_t *w16 = malloc(sizeof(uint16_t) * w_count);
    assert_non_null(w16);
    pb_dtype_from_f32(dtype, w16, w_host, w_count);
    twin x = twin_floats(x_host, x_count);
    twin w = twin_bytes(w16, sizeof(uint16_t) * w_count);
    twin b = twin_floats(b_host, (size_t)n);
    twin out = twin_floats(NULL, (size_t)rows * n);
    CHECK_OK(g_ref->ops->matmul(g_ref, out.ref, x.ref, w.ref, dtype, with_bias ? b.ref : NULL, rows, n, k));
    CHECK_OK(g_cuda->ops->matmul(g_cuda, out.cuda, x.cuda, w.cuda, dtype, with_bias ? b.cuda : NULL, rows, n, k));
    twin_compare(&out, exact_grid ? 0.0 : PB_TOL_CUDA_OP16_NMSE, what);
    twin_free(&x);
    twin_free(&w);
    twin_free(&b);
    twin_free(&out);
    free(x_host);
    free(w_host);
    free(b_host);
    free(w16);
}

static void test_matmul16(void **state) {
    (void)state;
    rng_seed(10);
    const pb_dtype dtypes[] = {PB_DTYPE_BF16, PB_DTYPE_F16};
    for (size_t i = 0; i < sizeof dtypes / sizeof dtypes[0]; i++) {
        const pb_dtype dtype = dtypes[i];
        char what[96];
        const char *name = pb_dtype_name(dtype);
        snprintf(what, sizeof what, "matmul %s rows=7 n=53 k=67 bias", name);
        run_matmul16(dtype, 7, 53, 67, 1, 0, -1, -1, what);
        snprintf(what, sizeof what, "matmul %s rows=7 n=53 k=67", name);
        run_matmul16(dtype, 7, 53, 67, 0, 0, -1, -1, what);
        snprintf(what, sizeof what, "matmul %s rows=13 n=301 k=515 bias", name);
        run_matmul16(dtype, 13, 301, 515, 1, 0, -1, -1, what);
        snprintf(what, sizeof what, "matmul %s rows=1 n=1 k=1 bias", name);
        run_matmul16(dtype, 1, 1, 1, 1, 0, -1, -1, what);
        snprintf(what, sizeof what, "matmul %s rows=7 n=53 k=67 NaN row 3, 1e5 row 5", name);
        run_matmul16(dtype, 7, 53, 67, 1, 0, 3, 5, what);
        snprintf(what, sizeof what, "matmul %s rows=5 n=37 k=29 bias, exact grid", name);
        run_matmul16(dtype, 5, 37, 29, 1, 1, -1, -1, what);
        snprintf(what, sizeof what, "matmul %s rows=33 n=130 k=31, exact grid", name);
        run_matmul16(dtype, 33, 130, 31, 0, 1, -1, -1, what);
    }
    /* growing the rounding scratch after a small call, then a small call
     * again with the large scratch */
    run_matmul16(PB_DTYPE_BF16, 64, 96, 1024, 1, 0, -1, -1, "matmul bf16 rows=64 n=96 k=1024 bias");
    run_matmul16(PB_DTYPE_BF16, 3, 5, 7, 1, 0, -1, -1, "matmul bf16 rows=3 n=5 k=7 bias");
}

/* The CUDA backend rounds a matmul's input once for consecutive matmuls of
 * the same input (q, k, v). Each of these must still see the input as it is
 * now: three weights on one x; x rewritten by another op (upload, add) and
 * multiplied again; x rewritten by a matmul's own output; a fresh buffer
 * after free. Every result against the reference on the same data. */
static void test_matmul16_reuse(void **state) {
    (void)state;
    rng_seed(12);
    enum { ROWS = 9, N = 40, K = 40 };
    float *x_host = host_random((size_t)ROWS * K, -1.0f, 1.0f);
    float *x2_host = host_random((size_t)ROWS * K, -1.0f, 1.0f);
    twin x = twin_floats(x_host, (size_t)ROWS * K);
    twin w[3], out = twin_floats(NULL, (size_t)ROWS * N);
    uint16_t *w16 = malloc(sizeof(uint16_t) * N * K);
    assert_non_null(w16);
    for (int i = 0; i < 3; i++) {
        float *wf = host_random((size_t)N * K, -1.0f, 1.0f);
        pb_dtype_from_f32(PB_DTYPE_BF16, w16, wf, (size_t)N * K);
        w[i] = twin_bytes(w16, sizeof(uint16_t) * N * K);
        free(wf);
    }
#define BOTH_MATMUL(o, xx, ww)                                                                                  \
    do {                                                                                                        \
        CHECK_OK(g_ref->ops->matmul(g_ref, (o).ref, (xx).ref, (ww).ref, PB_DTYPE_BF16, NULL, ROWS, N, K));      \
        CHECK_OK(g_cuda->ops->matmul(g_cuda, (o).cuda, (xx).cuda, (ww).cuda, PB_DTYPE_BF16, NULL, ROWS, N, K)); \
    } while (0)
    for (int i = 0; i < 3; i++) {
        BOTH_MATMUL(out, x, w[i]);
        twin_compare(&out, PB_TOL_CUDA_OP16_NMSE, "matmul bf16 reuse: weight i of three on one input");
    }
    /* x rewritten by an upload, then by an add: each multiplication sees it */
    CHECK_OK(g_ref->ops->upload(g_ref, x.ref, x2_host, sizeof(float) * ROWS * K));
    CHECK_OK(g_cuda->ops->upload(g_cuda, x.cuda, x2_host, sizeof(float) * ROWS * K));
    BOTH_MATMUL(out, x, w[0]);
    twin_compare(&out, PB_TOL_CUDA_OP16_NMSE, "matmul bf16 reuse: input rewritten by upload");
    CHECK_OK(g_ref->ops->add(g_ref, x.ref, x.ref, x.ref, (size_t)ROWS * K));
    CHECK_OK(g_cuda->ops->add(g_cuda, x.cuda, x.cuda, x.cuda, (size_t)ROWS * K));
    BOTH_MATMUL(out, x, w[0]);
    twin_compare(&out, PB_TOL_CUDA_OP16_NMSE, "matmul bf16 reuse: input rewritten by add");
    /* a matmul writing into another input's buffer (N == K, rows alike):
     * the next matmul of that buffer must use the new values */
    twin y = twin_floats(x2_host, (size_t)ROWS * K);
    BOTH_MATMUL(out, y, w[1]); /* y rounded and remembered */
    BOTH_MATMUL(y, x, w[2]);   /* y overwritten by a matmul's output */
    BOTH_MATMUL(out, y, w[1]);
    twin_compare(&out, PB_TOL_CUDA_OP16_NMSE, "matmul bf16 reuse: input rewritten by a matmul");
#undef BOTH_MATMUL
    twin_free(&y);
    twin_free(&x);
    twin_free(&out);
    for (int i = 0; i < 3; i++)
        twin_free(&w[i]);
    free(w16);
    free(x_host);
    free(x2_host);
}

/* ---- ragged attention ------------------------------------------------------- */

typedef struct job_spec {
    int n, p0;
    int null_prefix; /* pass NULL prefix pointers (only with p0 == 0) */
} job_spec;

/* attention_jobs on the CUDA backend against the reference backend's
 * `attention` run job by job on the job's keys assembled (prefix, then new
 * keys), as exec.c does for backends without attention_jobs.
 * Layout: with `scattered`, jobs' query rows are packed in reverse job order
 * with one untouched row between jobs (q_row need not follow job order);
 * otherwise packed in order, back to back. New keys sit at the job's query
 * rows of packed k/v buffers (as in exec.c); each prefix lives in a buffer of
 * p0 + 3 rows whose 3 extra rows, like the gap rows, hold large values that
 * no query may read. out starts as 0.5 everywhere; rows no job owns must
 * keep it. With a sliding window in params, the prefix keys and values in
 * the 64-key tiles wholly before every window of their job are NaN: a kernel
 * that reads them instead of skipping them gives NaN. */
static void run_attention_jobs_with(const job_spec *specs, int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                    int scattered, const pb_attention_params *params, const char *what) {
    const size_t qd = (size_t)n_heads * head_dim, kvd = (size_t)n_kv_heads * head_dim;
    int *q_row = malloc(sizeof(int) * (size_t)n_jobs);
    size_t *prefix_at = malloc(sizeof(size_t) * (size_t)n_jobs);
    assert_non_null(q_row);
    assert_non_null(prefix_at);
    int rows = 0;
    size_t prefix_rows = 0;
    for (int i = 0; i < n_jobs; i++) {
        const int j = scattered ? n_jobs - 1 - i : i;
        q_row[j] = rows;
        rows += specs[j].n + (scattered ? 1 : 0);
        prefix_at[i] = prefix_rows;
        prefix_rows += (size_t)specs[i].p0 + 3;
    }
    unsigned char *owned = calloc((size_t)rows + 1, 1);
    assert_non_null(owned);
    for (int j = 0; j < n_jobs; j++)
        for (int t = 0; t < specs[j].n; t++)
            owned[q_row[j] + t] = 1;

    float *q_host = host_random((size_t)rows * qd, -2.0f, 2.0f);
    float *k_host = host_random((size_t)rows * kvd, -2.0f, 2.0f);
    float *v_host = host_random((size_t)rows * kvd, -1.0f, 1.0f);
    float *kp_host = host_random(prefix_rows * kvd, -2.0f, 2.0f);
    float *vp_host = host_random(prefix_rows * kvd, -1.0f, 1.0f);
    float *out_host = malloc(sizeof(float) * ((size_t)rows * qd + 1));
    assert_non_null(out_host);
    for (size_t i = 0; i < (size_t)rows * qd; i++)
        out_host[i] = 0.5f;
    for (int r = 0; r < rows; r++)
        if (!owned[r])
            for (size_t i = 0; i < kvd; i++) {
                k_host[(size_t)r * kvd + i] = 50.0f;
                v_host[(size_t)r * kvd + i] = 1000.0f;
            }
    for (int j = 0; j < n_jobs; j++)
        for (size_t r = (size_t)specs[j].p0; r < (size_t)specs[j].p0 + 3; r++)
            for (size_t i = 0; i < kvd; i++) {
                kp_host[(prefix_at[j] + r) * kvd + i] = 50.0f;
                vp_host[(prefix_at[j] + r) * kvd + i] = 1000.0f;
            }
    for (int j = 0; params && params->window > 0 && j < n_jobs; j++) {
        const size_t unread = (size_t)pb_attention_first_key(params, specs[j].p0) / 64 * 64;
        for (size_t i = 0; i < unread * kvd; i++)
            kp_host[prefix_at[j] * kvd + i] = vp_host[prefix_at[j] * kvd + i] = NAN;
    }

    twin q = twin_floats(q_host, (size_t)rows * qd);
    twin k = twin_floats(k_host, (size_t)rows * kvd);
    twin v = twin_floats(v_host, (size_t)rows * kvd);
    twin kp = twin_floats(kp_host, prefix_rows * kvd);
    twin vp = twin_floats(vp_host, prefix_rows * kvd);
    twin out = twin_floats(out_host, (size_t)rows * qd);

    /* the reference, job by job on assembled keys */
    for (int j = 0; j < n_jobs; j++) {
        const int n = specs[j].n, p0 = specs[j].p0;
        if (n == 0)
            continue;
        const size_t keys = (size_t)p0 + n;
        float *k_all = malloc(sizeof(float) * keys * kvd);
        float *v_all = malloc(sizeof(float) * keys * kvd);
        assert_non_null(k_all);
        assert_non_null(v_all);
        memcpy(k_all, kp_host + prefix_at[j] * kvd, sizeof(float) * (size_t)p0 * kvd);
        memcpy(v_all, vp_host + prefix_at[j] * kvd, sizeof(float) * (size_t)p0 * kvd);
        memcpy(k_all + (size_t)p0 * kvd, k_host + (size_t)q_row[j] * kvd, sizeof(float) * (size_t)n * kvd);
        memcpy(v_all + (size_t)p0 * kvd, v_host + (size_t)q_row[j] * kvd, sizeof(float) * (size_t)n * kvd);
        float *k_ref = backend_buffer(g_ref, k_all, sizeof(float) * keys * kvd);
        float *v_ref = backend_buffer(g_ref, v_all, sizeof(float) * keys * kvd);
        CHECK_OK(g_ref->ops->attention(g_ref, (float *)out.ref + (size_t)q_row[j] * qd,
                                       (const float *)q.ref + (size_t)q_row[j] * qd, k_ref, v_ref, n, (int)keys, p0,
                                       n_heads, n_kv_heads, head_dim, params));
        g_ref->ops->free(g_ref, k_ref);
        g_ref->ops->free(g_ref, v_ref);
        free(k_all);
        free(v_all);
    }

    /* the CUDA backend, all jobs in one call */
    pb_attention_job *jobs = calloc((size_t)n_jobs + 1, sizeof *jobs);
    assert_non_null(jobs);
    for (int j = 0; j < n_jobs; j++) {
        const int has_prefix = !(specs[j].null_prefix && specs[j].p0 == 0);
        jobs[j].q_row = q_row[j];
        jobs[j].n = specs[j].n;
        jobs[j].p0 = specs[j].p0;
        jobs[j].k_prefix = has_prefix ? (const float *)kp.cuda + prefix_at[j] * kvd : NULL;
        jobs[j].v_prefix = has_prefix ? (const float *)vp.cuda + prefix_at[j] * kvd : NULL;
        /* a job without queries needs no keys at all */
        jobs[j].k_new = specs[j].n ? (const float *)k.cuda + (size_t)q_row[j] * kvd : NULL;
        jobs[j].v_new = specs[j].n ? (const float *)v.cuda + (size_t)q_row[j] * kvd : NULL;
    }
    CHECK_OK(
        g_cuda->ops->attention_jobs(g_cuda, out.cuda, q.cuda, jobs, n_jobs, n_heads, n_kv_heads, head_dim, params));
    /* The host array may be reused at once: scribbling on it must not
     * change what the queued kernel reads. */
    memset(jobs, 0xff, sizeof *jobs * (size_t)n_jobs);

    twin_compare(&out, PB_TOL_CUDA_OP_NMSE, what);
    float *got = malloc(sizeof(float) * ((size_t)rows * qd + 1));
    assert_non_null(got);
    CHECK_OK(g_cuda->ops->download(g_cuda, got, out.cuda, sizeof(float) * (size_t)rows * qd));
    for (int r = 0; r < rows; r++)
        if (!owned[r])
            for (size_t i = 0; i < qd; i++)
                if (got[(size_t)r * qd + i] != 0.5f)
                    fail_msg("%s: row %d belongs to no job but element %zu became %g", what, r, i,
                             (double)got[(size_t)r * qd + i]);

    free(got);
    free(jobs);
    twin_free(&q);
    twin_free(&k);
    twin_free(&v);
    twin_free(&kp);
    twin_free(&vp);
    twin_free(&out);
    free(q_host);
    free(k_host);
    free(v_host);
    free(kp_host);
    free(vp_host);
    free(out_host);
    free(owned);
    free(q_row);
    free(prefix_at);
}

static void run_attention_jobs(const job_spec *specs, int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                               int scattered, const char *what) {
    run_attention_jobs_with(specs, n_jobs, n_heads, n_kv_heads, head_dim, scattered, NULL, what);
}

/* attention_jobs with Gemma's and Qwen3's score shapes: sliding windows of
 * 1, under a key tile (5), of one and more tiles (64, 100), exactly the
 * longest job's keys (340) and past every job's, with whole key tiles before
 * the windows (poisoned, run_attention_jobs_with); a binding soft cap; a
 * query scale; Gemma 2's window + cap + scale at head_dim 256; a window at a
 * GQA group of 8 (8 positions per tiled block). Jobs long enough that the
 * backend's own choice is mostly the tiled kernel; test_attention_jobs_kernels
 * forces each kernel. */
static void test_attention_jobs_params(void **state) {
    (void)state;
    rng_seed(23);
    char what[128];
    const job_spec skipping[] = {{40, 300, 0}, {70, 0, 1}, {1, 200, 0}, {17, 63, 0}, {0, 9, 0}};
    const int windows[] = {64, 1, 5, 100, 340, 5000};
    for (int w = 0; w < 6; w++) {
        const pb_attention_params params = {0.125f, 0.0f, windows[w]};
        snprintf(what, sizeof what, "attention_jobs window %d, prefixes to 300", windows[w]);
        run_attention_jobs_with(skipping, 5, 4, 2, 64, 1, &params, what);
    }
    const pb_attention_params capped = {1.0f, 5.0f, 0};
    run_attention_jobs_with(skipping, 5, 4, 2, 64, 0, &capped, "attention_jobs softcap 5 binding (scale 1)");
    const pb_attention_params scaled = {1.0f / 12.0f, 0.0f, 0};
    const job_spec llama[] = {{70, 0, 1}, {20, 50, 0}};
    run_attention_jobs_with(llama, 2, 8, 2, 128, 1, &scaled, "attention_jobs scale 1/12 H=8 KV=2 hd=128");
    const pb_attention_params gemma2 = {0.0625f, 50.0f, 100};
    const job_spec gemma[] = {{70, 0, 1}, {13, 260, 0}};
    run_attention_jobs_with(gemma, 2, 8, 4, 256, 1, &gemma2, "attention_jobs window 100 softcap 50 hd=256");
    const pb_attention_params group_window = {0.25f, 0.0f, 20};
    const job_spec groups[] = {{30, 100, 0}, {9, 0, 1}, {17, 40, 0}};
    run_attention_jobs_with(groups, 3, 8, 1, 32, 1, &group_window, "attention_jobs window 20 GQA group 8 hd=32");
}

static void test_attention_jobs(void **state) {
    (void)state;
    rng_seed(11);
    assert_non_null(g_cuda->ops->attention_jobs);
    /* prefixes and none, NULL prefix pointers, single queries (decode
     * steps), a job without queries */
    const job_spec mixed[] = {{5, 7, 0}, {1, 0, 1}, {9, 0, 0}, {1, 20, 0}, {0, 5, 0}, {3, 0, 1}, {13, 33, 0}};
    const int n_mixed = (int)(sizeof mixed / sizeof mixed[0]);
    run_attention_jobs(mixed, n_mixed, 6, 2, 64, 1, "attention_jobs 7 jobs H=6 KV=2 hd=64 scattered");
    run_attention_jobs(mixed, n_mixed, 6, 2, 64, 0, "attention_jobs 7 jobs H=6 KV=2 hd=64 packed");
    run_attention_jobs(mixed, n_mixed, 4, 4, 67, 1, "attention_jobs 7 jobs H=KV=4 hd=67 scattered");
    const job_spec wide[] = {{4, 10, 0}, {1, 300, 0}, {2, 0, 1}};
    run_attention_jobs(wide, 3, 2, 1, 256, 1, "attention_jobs 3 jobs H=2 KV=1 hd=256 p0<=300");
    const job_spec single[] = {{1, 0, 1}};
    run_attention_jobs(single, 1, 1, 1, 1, 0, "attention_jobs 1 job n=1 H=KV=1 hd=1");
    const job_spec leading_empty[] = {{0, 0, 1}, {0, 4, 0}, {2, 1, 0}, {0, 2, 0}};
    run_attention_jobs(leading_empty, 4, 2, 2, 8, 1, "attention_jobs empty jobs around one");

    /* a patching batch: many short jobs over a shared-length prefix, the
     * SmolLM2 head layout; run twice (the second with fewer jobs reuses the
     * grown descriptor buffers) */
    enum { MANY = 300 };
    job_spec *many = malloc(sizeof(job_spec) * MANY);
    assert_non_null(many);
    int many_rows = 0;
    for (int j = 0; j < MANY; j++) {
        many[j].n = (int)floorf(rng_uniform(0.0f, 6.0f));
        many[j].p0 = (int)floorf(rng_uniform(0.0f, 41.0f));
        many[j].null_prefix = j % 3 == 0;
        many_rows += many[j].n;
    }
    printf("  (%d jobs, %d query rows)\n", MANY, many_rows);
    run_attention_jobs(many, MANY, 9, 3, 64, 1, "attention_jobs 300 jobs H=9 KV=3 hd=64 scattered");
    run_attention_jobs(many, MANY / 3, 9, 3, 64, 0, "attention_jobs 100 jobs H=9 KV=3 hd=64 packed");
    free(many);

    /* no jobs, or jobs without queries: nothing to do */
    CHECK_OK(g_cuda->ops->attention_jobs(g_cuda, NULL, NULL, NULL, 0, 2, 1, 8, NULL));
    const pb_attention_job empty = {0, 0, 3, NULL, NULL, NULL, NULL};
    CHECK_OK(g_cuda->ops->attention_jobs(g_cuda, NULL, NULL, &empty, 1, 2, 1, 8, NULL));
    CHECK_OK(g_cuda->ops->synchronize(g_cuda));
}

/* ---- the backward ops (attribution's gradient pass) -------------------- */

/* dx (+)= dy @ w with w stored as dtype (f32, bf16, f16 or Q8_0; decoded
 * exactly on both sides): cuBLAS fp32 sums against the reference's double. */
static void run_matmul_dx(pb_dtype dtype, int rows, int n, int k, int accumulate, const char *what) {
    float *dy_host = host_random((size_t)rows * n, -1.0f, 1.0f);
    float *w_host = host_random((size_t)n * k, -1.0f, 1.0f);
    float *dx_host = host_random((size_t)rows * k, -1.0f, 1.0f);
    size_t bytes = pb_dtype_bytes(dtype, (uint64_t)n * (uint64_t)k);
    void *stored = malloc(bytes);
    assert_non_null(stored);
    if (dtype == PB_DTYPE_Q8_0)
        pb_quantize_q8_0(stored, w_host, (uint64_t)n * (uint64_t)k / 32);
    else
        pb_dtype_from_f32(dtype, stored, w_host, (size_t)n * (size_t)k);
    twin dy = twin_floats(dy_host, (size_t)rows * n), w = twin_bytes(stored, bytes);
    twin dx = twin_floats(dx_host, (size_t)rows * k);
    CHECK_OK(g_ref->ops->matmul_dx(g_ref, dx.ref, dy.ref, w.ref, dtype, rows, n, k, accumulate));
    CHECK_OK(g_cuda->ops->matmul_dx(g_cuda, dx.cuda, dy.cuda, w.cuda, dtype, rows, n, k, accumulate));
    twin_compare(&dx, PB_TOL_CUDA_OP_NMSE, what);
    twin_free(&dy);
    twin_free(&w);
    twin_free(&dx);
    free(dy_host);
    free(w_host);
    free(dx_host);
    free(stored);
}

static void run_norm_backward(int rows, int d, float mean, int centred, int with_weight, int accumulate,
                              const char *what) {
    float *x_host = host_random((size_t)rows * d, mean - 3.0f, mean + 3.0f);
    float *w_host = host_random((size_t)d, 0.5f, 1.5f);
    float *dy_host = host_random((size_t)rows * d, -1.0f, 1.0f);
    float *dx_host = host_random((size_t)rows * d, -1.0f, 1.0f);
    twin x = twin_floats(x_host, (size_t)rows * d), w = twin_floats(w_host, (size_t)d);
    twin dy = twin_floats(dy_host, (size_t)rows * d), dx = twin_floats(dx_host, (size_t)rows * d);
    CHECK_OK(g_ref->ops->norm_backward(g_ref, dx.ref, x.ref, with_weight ? w.ref : NULL, dy.ref, rows, d, 1e-5f,
                                       centred, accumulate));
    CHECK_OK(g_cuda->ops->norm_backward(g_cuda, dx.cuda, x.cuda, with_weight ? w.cuda : NULL, dy.cuda, rows, d, 1e-5f,
                                        centred, accumulate));
    twin_compare(&dx, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&x);
    twin_free(&w);
    twin_free(&dy);
    twin_free(&dx);
    free(x_host);
    free(w_host);
    free(dy_host);
    free(dx_host);
}

static void run_glu_backward(pb_activation act, int gated, const char *what) {
    const size_t n = 4099;
    float *gate_host = host_random(n, -6.0f, 6.0f), *up_host = host_random(n, -6.0f, 6.0f);
    float *dh_host = host_random(n, -1.0f, 1.0f);
    twin gate = twin_floats(gate_host, n), up = twin_floats(up_host, n), dh = twin_floats(dh_host, n);
    twin d_up = twin_floats(NULL, n);
    /* d_gate over dh, as the gradient pass writes it */
    CHECK_OK(g_ref->ops->glu_backward(g_ref, dh.ref, d_up.ref, dh.ref, gated ? gate.ref : NULL, up.ref, n, act));
    CHECK_OK(g_cuda->ops->glu_backward(g_cuda, dh.cuda, d_up.cuda, dh.cuda, gated ? gate.cuda : NULL, up.cuda, n, act));
    twin_compare(&d_up, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_compare(&dh, PB_TOL_CUDA_ELEMENTWISE_NMSE, what);
    twin_free(&gate);
    twin_free(&up);
    twin_free(&dh);
    twin_free(&d_up);
    free(gate_host);
    free(up_host);
    free(dh_host);
}

/* dq, dk, dv and the pattern's gradient (its buffer starts as the guard
 * value: outside each window it must stay that). */
static void run_attention_backward(int T, int n_heads, int n_kv_heads, int head_dim, const pb_attention_params *p,
                                   const char *what) {
    const size_t qn = (size_t)T * n_heads * head_dim, kvn = (size_t)T * n_kv_heads * head_dim;
    float *q_host = host_random(qn, -2.0f, 2.0f), *k_host = host_random(kvn, -2.0f, 2.0f);
    float *v_host = host_random(kvn, -1.0f, 1.0f), *dz_host = host_random(qn, -1.0f, 1.0f);
    twin q = twin_floats(q_host, qn), k = twin_floats(k_host, kvn), v = twin_floats(v_host, kvn);
    twin dz = twin_floats(dz_host, qn);
    twin dq = twin_floats(NULL, qn), dk = twin_floats(NULL, kvn), dv = twin_floats(NULL, kvn);
    twin dp = twin_floats(NULL, (size_t)n_heads * T * T);
    CHECK_OK(g_ref->ops->attention_backward(g_ref, dq.ref, dk.ref, dv.ref, dp.ref, q.ref, k.ref, v.ref, dz.ref, T,
                                            n_heads, n_kv_heads, head_dim, p));
    CHECK_OK(g_cuda->ops->attention_backward(g_cuda, dq.cuda, dk.cuda, dv.cuda, dp.cuda, q.cuda, k.cuda, v.cuda,
                                             dz.cuda, T, n_heads, n_kv_heads, head_dim, p));
    twin *outs[4] = {&dq, &dk, &dv, &dp};
    static const char *names[4] = {"dq", "dk", "dv", "dpattern"};
    for (int i = 0; i < 4; i++) {
        char label[96];
        snprintf(label, sizeof label, "%s %s", what, names[i]);
        twin_compare(outs[i], PB_TOL_CUDA_ELEMENTWISE_NMSE, label);
    }
    twin *all[8] = {&q, &k, &v, &dz, &dq, &dk, &dv, &dp};
    for (int i = 0; i < 8; i++)
        twin_free(all[i]);
    free(q_host);
    free(k_host);
    free(v_host);
    free(dz_host);
}

static void test_backward(void **state) {
    (void)state;
    rng_seed(21);
    run_matmul_dx(PB_DTYPE_F32, 7, 53, 67, 0, "matmul_dx f32 rows=7 n=53 k=67");
    run_matmul_dx(PB_DTYPE_F32, 13, 301, 515, 1, "matmul_dx f32 rows=13 n=301 k=515 accumulate");
    run_matmul_dx(PB_DTYPE_BF16, 9, 130, 96, 0, "matmul_dx bf16 rows=9 n=130 k=96");
    run_matmul_dx(PB_DTYPE_F16, 9, 130, 96, 1, "matmul_dx f16 rows=9 n=130 k=96 accumulate");
    run_matmul_dx(PB_DTYPE_Q8_0, 5, 77, 128, 0, "matmul_dx q8_0 rows=5 n=77 k=128");
    run_matmul_dx(PB_DTYPE_F32, 1, 4099, 67, 0, "matmul_dx f32 one row n=4099 (the head)");
    run_norm_backward(7, 67, 0.0f, 0, 1, 0, "norm_backward rms rows=7 d=67");
    run_norm_backward(3, 4099, 0.0f, 0, 0, 1, "norm_backward rms rows=3 d=4099 accumulate");
    run_norm_backward(4, 768, 1e3f, 1, 1, 1, "norm_backward layer rows=4 d=768 mean 1e3");
    run_norm_backward(13 * 8, 128, 0.0f, 0, 1, 0, "norm_backward per head T=13 x 8 hd=128");
    run_glu_backward(PB_ACTIVATION_SILU, 1, "glu_backward silu gated");
    run_glu_backward(PB_ACTIVATION_GELU_TANH, 1, "glu_backward gelu_tanh gated");
    run_glu_backward(PB_ACTIVATION_GELU, 0, "glu_backward gelu plain");
    run_attention_backward(37, 8, 2, 64, NULL, "attention_backward T=37 8/2 hd=64");
    run_attention_backward(300, 2, 1, 128, NULL, "attention_backward T=300 2/1 hd=128");
    pb_attention_params capped = {0.0625f, 50.0f, 0}, window = {0.125f, 0.0f, 16}, both = {0.0625f, 50.0f, 100};
    run_attention_backward(45, 4, 4, 96, &capped, "attention_backward softcap 50");
    run_attention_backward(45, 4, 2, 64, &window, "attention_backward window 16");
    run_attention_backward(130, 4, 2, 256, &both, "attention_backward softcap, window 100, hd=256");
}

static void test_memory_info(void **state) {
    (void)state;
    if (g_stand_in && !g_cuda->ops->memory_info)
        skip();
    assert_non_null(g_cuda->ops->memory_info);
    size_t free_bytes = 0, total_bytes = 0;
    CHECK_OK(g_cuda->ops->memory_info(g_cuda, &free_bytes, &total_bytes));
    printf("  memory_info: %zu bytes free of %zu (%.2f of %.2f GiB)\n", free_bytes, total_bytes,
           (double)free_bytes / (1u << 30), (double)total_bytes / (1u << 30));
    assert_true(total_bytes >= ((size_t)1 << 30));
    assert_true(free_bytes > 0);
    assert_true(free_bytes <= total_bytes);
}

static void test_errors(void **state) {
    (void)state;
    if (g_stand_in)
        skip();
    float *buffer = NULL;
    CHECK_OK(g_cuda->ops->alloc(g_cuda, (void **)&buffer, 4096));
    const pb_backend_ops *ops = g_cuda->ops;
    expect_status(ops->attention(g_cuda, buffer, buffer, buffer, buffer, 2, 2, 0, 3, 2, 8, NULL), PB_ERR_ARG,
                  "attention n_heads % n_kv_heads != 0");
    expect_status(ops->attention(g_cuda, buffer, buffer, buffer, buffer, 4, 5, 2, 2, 2, 8, NULL), PB_ERR_ARG,
                  "attention q_start + T > T_kv");
    expect_status(ops->rope(g_cuda, buffer, (const int32_t *)buffer, buffer, 2, 2, 7, 7, 1.0f), PB_ERR_ARG,
                  "rope odd rotary_dims = head_dim");
    const int bad_rotary[][2] = {{8, 7}, {8, 0}, {8, 10}, {8, -2}}; /* head_dim, rotary_dims */
    for (int i = 0; i < 4; i++) {
        char what[64];
        snprintf(what, sizeof what, "rope head_dim %d rotary_dims %d", bad_rotary[i][0], bad_rotary[i][1]);
        expect_status(
            ops->rope(g_cuda, buffer, (const int32_t *)buffer, buffer, 2, 2, bad_rotary[i][0], bad_rotary[i][1], 1.0f),
            PB_ERR_ARG, what);
        assert_non_null(strstr(pb_last_error(), "rope"));
    }
    expect_status(ops->layernorm(g_cuda, buffer, buffer, NULL, NULL, -1, 8, 1e-5f), PB_ERR_ARG, "layernorm rows < 0");
    assert_non_null(strstr(pb_last_error(), "layernorm"));
    expect_status(ops->layernorm(g_cuda, NULL, buffer, NULL, NULL, 2, 8, 1e-5f), PB_ERR_ARG, "layernorm out NULL");
    assert_non_null(strstr(pb_last_error(), "layernorm"));
    expect_status(ops->activate(g_cuda, buffer, 4, (pb_activation)7), PB_ERR_UNSUPPORTED,
                  "activate unknown activation");
    expect_status(ops->activate(g_cuda, NULL, 4, PB_ACTIVATION_GELU), PB_ERR_ARG, "activate x NULL");
    CHECK_OK(ops->glu(g_cuda, buffer, buffer, buffer, 1, 4, 4, PB_ACTIVATION_GELU));
    CHECK_OK(ops->activate(g_cuda, buffer, 4, PB_ACTIVATION_GELU));
    expect_status(ops->softcap(g_cuda, buffer, 4, 0.0f), PB_ERR_ARG, "softcap cap 0");
    expect_status(ops->glu(g_cuda, buffer, buffer, buffer, 1, 4, 4, (pb_activation)7), PB_ERR_UNSUPPORTED,
                  "glu unknown activation");
    expect_status(ops->matmul(g_cuda, buffer, buffer, buffer, PB_DTYPE_F32, NULL, -1, 4, 4), PB_ERR_ARG,
                  "matmul rows < 0");
    pb_attention_job job = {0, 2, 1, buffer, buffer, buffer, buffer};
    expect_status(ops->attention_jobs(g_cuda, buffer, buffer, &job, 1, 3, 2, 8, NULL), PB_ERR_ARG,
                  "attention_jobs n_heads % n_kv_heads != 0");
    expect_status(ops->attention_jobs(g_cuda, buffer, buffer, &job, -1, 2, 2, 8, NULL), PB_ERR_ARG,
                  "attention_jobs n_jobs < 0");
    job.k_prefix = NULL;
    expect_status(ops->attention_jobs(g_cuda, buffer, buffer, &job, 1, 2, 2, 8, NULL), PB_ERR_ARG,
                  "attention_jobs p0 > 0 without a prefix");
    job.k_prefix = buffer;
    job.v_new = NULL;
    expect_status(ops->attention_jobs(g_cuda, buffer, buffer, &job, 1, 2, 2, 8, NULL), PB_ERR_ARG,
                  "attention_jobs n > 0 without new keys");
    job.v_new = buffer;
    job.n = -1;
    expect_status(ops->attention_jobs(g_cuda, buffer, buffer, &job, 1, 2, 2, 8, NULL), PB_ERR_ARG,
                  "attention_jobs n < 0");
    job.n = 1;
    expect_status(ops->attention_jobs(g_cuda, buffer, buffer, &job, 1, 1, 1, 4096, NULL), PB_ERR_UNSUPPORTED,
                  "attention_jobs head_dim 4096 (shared memory)");
    CHECK_OK(ops->synchronize(g_cuda));
    ops->free(g_cuda, buffer);

    void *huge = NULL;
    pb_status status = ops->alloc(g_cuda, &huge, (size_t)1 << 50); /* 1 PiB */
    expect_status(status, PB_ERR_OOM, "alloc 1 PiB");
    assert_null(huge);
    assert_non_null(strstr(pb_last_error(), "need"));
    assert_non_null(strstr(pb_last_error(), "have"));
    assert_non_null(strstr(pb_last_error(), "free"));
    /* the backend still works after a refused allocation: memory, and ops
     * that match the reference */
    CHECK_OK(ops->alloc(g_cuda, (void **)&buffer, 64));
    CHECK_OK(ops->synchronize(g_cuda));
    ops->free(g_cuda, buffer);
    rng_seed(12);
    run_matmul(7, 53, 67, 1, -1, "matmul rows=7 n=53 k=67 bias, after OOM");
    run_matmul16(PB_DTYPE_BF16, 7, 53, 67, 1, 0, -1, -1, "matmul bf16 rows=7 n=53 k=67 bias, after OOM");
    const job_spec after[] = {{3, 4, 0}, {2, 0, 1}};
    run_attention_jobs(after, 2, 4, 2, 32, 1, "attention_jobs 2 jobs, after OOM");
}

static void test_nccl_linked(void **state) {
    (void)state;
    if (g_stand_in)
        skip();
    int version = 0;
    CHECK_OK(pb_cuda_nccl_version(&version));
    printf("  NCCL version code %d\n", version);
    assert_true(version > 0);
}

/* Both attention_jobs kernels on every case above: the one-block-per-query
 * kernel and the tiled one (cuda/attention_tiled.cu), each forced through
 * PB_CUDA_ATTENTION on a backend of its own (by default the backend picks
 * per call from the jobs' average length, so the cases above alone would
 * not reach both). */
static void test_attention_jobs_kernels(void **state) {
    if (g_stand_in)
        skip();
    static const char *modes[2] = {"rows", "tiled"};
    pb_backend *saved = g_cuda;
    for (int k = 0; k < 2; k++) {
        setenv("PB_CUDA_ATTENTION", modes[k], 1);
        pb_backend *forced = NULL;
        pb_status status = pb_backend_cuda_create(&forced, 0);
        unsetenv("PB_CUDA_ATTENTION");
        if (status != PB_OK)
            fail_msg("CUDA backend with PB_CUDA_ATTENTION=%s: %s", modes[k], pb_last_error());
        printf("[ MEASURE  ] attention_jobs kernel forced: %s\n", modes[k]);
        g_cuda = forced;
        test_attention_jobs(state);
        test_attention_jobs_params(state);
        g_cuda = saved;
        pb_backend_destroy(forced);
    }
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
    const char *stand_in = getenv("PB_CUDA_TEST_STAND_IN");
    g_stand_in = stand_in && *stand_in;
    int checked = g_stand_in && strcmp(stand_in, "checked") == 0;
    if (g_stand_in && !checked && strcmp(stand_in, "cpu") != 0) {
        fprintf(stderr, "PB_CUDA_TEST_STAND_IN: \"cpu\" or \"checked\", not \"%s\"\n", stand_in);
        return 1;
    }
    if (g_stand_in)
        printf("note: PB_CUDA_TEST_STAND_IN: the %s backend stands in for CUDA; nothing here tests the GPU\n",
               stand_in);
    pb_status created = g_stand_in ? pb_backend_cpu_create(&g_cuda, 0) : pb_backend_cuda_create(&g_cuda, 0);
    if (created == PB_OK && checked) {
        pb_backend *inner = g_cuda;
        created = pb_backend_checked_create(&g_cuda, inner);
    }
    int exit_code = tu_cuda_exit_code(created);
    if (exit_code != 0)
        return exit_code;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_memory),
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_partial),
        cmocka_unit_test(test_rope_scaled),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_params),
        cmocka_unit_test(test_softcap),
        cmocka_unit_test(test_glu_gelu),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_activate),
        cmocka_unit_test(test_add),
        cmocka_unit_test(test_embed16),
        cmocka_unit_test(test_matmul16),
        cmocka_unit_test(test_matmul16_reuse),
        cmocka_unit_test(test_copy_regions),
        cmocka_unit_test(test_attention_jobs),
        cmocka_unit_test(test_attention_jobs_params),
        cmocka_unit_test(test_attention_jobs_kernels),
        cmocka_unit_test(test_backward),
        cmocka_unit_test(test_memory_info),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_nccl_linked),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown) == 0 ? 0 : 1;
}
