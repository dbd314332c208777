/* The CUDA backend's backward ops (backend.h): the weight products by
 * cuBLAS in fp32 (16-bit and quantised matrices decoded on the device in
 * row tiles first, exactly), the rest by backward.cu's kernels. Sizes are
 * checked here, as backend_cuda.cu checks the forward's. */
#include "backend_cuda_impl.cuh"

extern "C" {
#include "formats/dtype.h"
}

/* cuBLAS takes int sizes: each operand of a product stays under 2^31
 * elements (the forward splits its big ones, gemm_split.h; a backward
 * product is at most the unembedding, 128k x 8k at 70B: 2^30). */
static pb_status pb_cuda_dx_sizes(int rows, int n, int k) {
    size_t a = 0, b = 0, c = 0;
    PB_TRY(pb_cuda_count(&a, "matmul_dx", rows, n, 1));
    PB_TRY(pb_cuda_count(&b, "matmul_dx", n, k, 1));
    PB_TRY(pb_cuda_count(&c, "matmul_dx", rows, k, 1));
    if (a > INT32_MAX || b > INT32_MAX || c > INT32_MAX)
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda matmul_dx: a (%d, %d) x (%d, %d) product exceeds 2^31 elements", rows,
                       n, n, k);
    return PB_OK;
}

/* dx (rows, k) = beta dx + dy[:, col0 .. col0 + cols] (ld n) @ w (cols, k)
 * fp32. Column-major, dx^T (k, rows) = w^T (k, cols) @ dy^T (cols, rows):
 * w row-major is w^T column-major with ld k, dy likewise with ld n. */
static pb_status pb_cuda_dx_gemm(pb_cuda_backend *self, float *dx, const float *dy, const float *w, int rows, int n,
                                 int col0, int cols, int k, float beta) {
    const float alpha = 1.0f;
    PB_CUBLAS_CHECK(
        cublasSgemm(self->cublas, CUBLAS_OP_N, CUBLAS_OP_N, k, rows, cols, &alpha, w, k, dy + col0, n, &beta, dx, k));
    PB_CUDA_LAUNCHED(self, "cublasSgemm", cudaSuccess);
    return PB_OK;
}

pb_status pb_cuda_matmul_dx(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype, int rows,
                            int n, int k, int accumulate) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_TRY(pb_cuda_dx_sizes(rows, n, k));
    if (rows == 0 || k == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dx != NULL && (n == 0 || (dy != NULL && w != NULL)), "matmul_dx");
    PB_CUDA_REQUIRE(w_dtype == PB_DTYPE_F32 || w_dtype == PB_DTYPE_BF16 || w_dtype == PB_DTYPE_F16 ||
                        pb_dtype_is_quantised(w_dtype),
                    "matmul_dx");
    PB_TRY(pb_cuda_enter(self));
    float beta = accumulate ? 1.0f : 0.0f;
    if (n == 0) {
        /* an empty sum: dx stays (accumulate) or becomes zero */
        if (!accumulate)
            PB_CUDA_CHECK(cudaMemsetAsync(dx, 0, sizeof(float) * (size_t)rows * (size_t)k, self->stream));
        return PB_OK;
    }
    if (w_dtype == PB_DTYPE_F32)
        return pb_cuda_dx_gemm(self, dx, dy, (const float *)w, rows, n, 0, n, k, beta);
    int tile = 0;
    PB_TRY(pb_cuda_dequant_tile(self, n, k, &tile));
    for (int col0 = 0; col0 < n; col0 += tile, beta = 1.0f) {
        const int cols = n - col0 < tile ? n - col0 : tile;
        PB_TRY(pb_cuda_dequant_rows_to_scratch(self, w, w_dtype, col0, cols, k));
        PB_TRY(pb_cuda_dx_gemm(self, dx, dy, self->dequant_scratch, rows, n, col0, cols, k, beta));
    }
    return PB_OK;
}

pb_status pb_cuda_norm_backward(pb_backend *backend, float *dx, const float *x, const float *weight, const float *dy,
                                int rows, int d, float eps, int centred, int accumulate) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t n = 0;
    PB_TRY(pb_cuda_count(&n, "norm_backward", rows, d, 1));
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dx != NULL && x != NULL && dy != NULL, "norm_backward");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "norm_backward",
                     pb_cuda_launch_norm_backward(self->stream, dx, x, weight, dy, rows, d, eps, centred, accumulate));
    return PB_OK;
}

pb_status pb_cuda_glu_backward(pb_backend *backend, float *d_gate, float *d_up, const float *dh, const float *gate,
                               const float *up, size_t n, pb_activation act) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    pb_cuda_activation kernel_act;
    if (!pb_cuda_activation_of(act, &kernel_act))
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda glu_backward: activation %d", (int)act);
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(d_up != NULL && dh != NULL && up != NULL && (!gate || d_gate != NULL), "glu_backward");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "glu_backward",
                     pb_cuda_launch_glu_backward(self->stream, d_gate, d_up, dh, gate, up, n, kernel_act));
    return PB_OK;
}

pb_status pb_cuda_attention_backward(pb_backend *backend, float *dq, float *dk, float *dv, float *dpattern,
                                     const float *q, const float *k, const float *v, const float *dz, int T,
                                     int n_heads, int n_kv_heads, int head_dim, const pb_attention_params *params) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t q_count = 0, kv_count = 0, pattern = 0;
    PB_TRY(pb_cuda_count(&q_count, "attention_backward", T, n_heads, head_dim));
    PB_TRY(pb_cuda_count(&kv_count, "attention_backward", T, n_kv_heads, head_dim));
    PB_TRY(pb_cuda_count(&pattern, "attention_backward", n_heads, T, T));
    PB_CUDA_REQUIRE(n_heads > 0 && n_kv_heads > 0 && head_dim > 0 && n_heads % n_kv_heads == 0, "attention_backward");
    if (T == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dq != NULL && dk != NULL && dv != NULL && q != NULL && k != NULL && v != NULL && dz != NULL,
                    "attention_backward");
    if (n_heads > 65535)
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda attention_backward: n_heads %d exceeds the grid limit 65535", n_heads);
    const int chunk = pb_attention_backward_chunk(T, n_heads, n_kv_heads);
    void *buffer = self->backward_scratch;
    pb_status status = pb_cuda_scratch(self, &buffer, &self->backward_scratch_elems,
                                       pb_cuda_attention_backward_scratch(T, chunk * (n_heads / n_kv_heads)),
                                       sizeof(double));
    self->backward_scratch = (double *)buffer;
    PB_TRY(status);
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "attention_backward",
                     pb_cuda_launch_attention_backward(self->stream, dq, dk, dv, dpattern, q, k, v, dz,
                                                       self->backward_scratch, chunk, T, n_heads, n_kv_heads, head_dim,
                                                       pb_cuda_attention_score_of(params, head_dim)));
    return PB_OK;
}
