/* RMSNorm: one block per row, sum of squares accumulated in fp32 by a block
 * reduction (warp shuffles, then one warp over the per-warp partials), then
 * the normalisation; in place as well (out == x). */
#include "kernels.cuh"

/* Sum of `value` over the block, returned to every thread. blockDim.x must be
 * a multiple of the warp size. */
static __device__ float pb_block_sum(float value) {
    __shared__ float partial[PB_CUDA_BLOCK / PB_CUDA_WARP];
    __shared__ float total;
    const int lane = threadIdx.x % PB_CUDA_WARP;
    const int warp = threadIdx.x / PB_CUDA_WARP;
    const int n_warps = blockDim.x / PB_CUDA_WARP;

    value = pb_warp_sum(value);
    if (lane == 0)
        partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
        float sum = lane < n_warps ? partial[lane] : 0.0f;
        sum = pb_warp_sum(sum);
        if (lane == 0)
            total = sum;
    }
    __syncthreads();
    return total;
}

/* out (rows, d); x (rows, d); weight (d) or NULL. out may be x (in place:
 * the per-head q/k norms, rows = T * n_heads, d = head_dim): a row belongs to
 * one block, whose every thread reads its elements of the row into the sum of
 * squares before pb_block_sum's barriers, so the whole row is reduced before
 * any write; the second pass then reads x_row[i] and writes out_row[i] in the
 * same thread, which read and writes nothing else of the row. No
 * __restrict__ for that reason. */
static __global__ void pb_rmsnorm_kernel(float *out, const float *x, const float *weight, int d, float eps) {
    const size_t row = blockIdx.x;
    const float *x_row = x + row * (size_t)d;  // (d)
    float *out_row = out + row * (size_t)d;    // (d)

    float sum_squares = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        sum_squares += x_row[i] * x_row[i];
    sum_squares = pb_block_sum(sum_squares);

    /* 1/sqrtf rather than rsqrtf: rsqrtf is only good to 2 ulp. */
    const float inv_rms = 1.0f / sqrtf(sum_squares / (float)d + eps);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float y = x_row[i] * inv_rms;
        out_row[i] = weight ? y * weight[i] : y;
    }
}

cudaError_t pb_cuda_launch_rmsnorm(cudaStream_t stream, float *out, const float *x, const float *weight, int rows,
                                   int d, float eps) {
    pb_rmsnorm_kernel<<<(unsigned)rows, PB_CUDA_BLOCK, 0, stream>>>(out, x, weight, d, eps);
    return cudaGetLastError();
}
