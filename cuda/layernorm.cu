/* LayerNorm: one block per row; the mean, then the variance about it (two
 * passes, so a row with a large mean and a small spread keeps its digits),
 * each summed in double by a block reduction; then the normalisation, with
 * the optional weight and bias. In place as well (out == x). */
#include "kernels.cuh"

/* out (rows, d); x (rows, d); weight, bias (d) or NULL.
 * Double sums: with fp32 ones a row of mean 1e3 and spread 1 (a residual
 * stream with a large constant direction) loses ~1e-4 of its centred
 * values to the mean's rounding, where the reference (double) loses
 * nothing; the kernel is memory-bound, so the double adds cost no time
 * that shows. The centred, scaled value is rounded to fp32 once, then the
 * weight and bias apply in fp32 (as backend_cpu.c does).
 * In place: every thread reads its elements of the row into both sums
 * before the reductions' barriers, so the row is whole until the last
 * pass, in which each thread reads x_row[i] and writes out_row[i] and
 * touches nothing else of the row. No __restrict__ for that reason. */
static __global__ void pb_layernorm_kernel(float *out, const float *x, const float *weight, const float *bias, int d,
                                           float eps) {
    const size_t row = blockIdx.x;
    const float *x_row = x + row * (size_t)d;  // (d)
    float *out_row = out + row * (size_t)d;    // (d)

    __shared__ double partial[PB_CUDA_BLOCK / PB_CUDA_WARP];
    __shared__ double total;
    double sum = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        sum += (double)x_row[i];
    const double mean = pb_block_reduce_double(sum, 0, partial, &total) / d;

    double sum_squares = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const double centred = (double)x_row[i] - mean;
        sum_squares += centred * centred;
    }
    const double inv_std = 1.0 / sqrt(pb_block_reduce_double(sum_squares, 0, partial, &total) / d + (double)eps);

    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float y = (float)(((double)x_row[i] - mean) * inv_std);
        out_row[i] = (weight ? y * weight[i] : y) + (bias ? bias[i] : 0.0f);
    }
}

cudaError_t pb_cuda_launch_layernorm(cudaStream_t stream, float *out, const float *x, const float *weight,
                                     const float *bias, int rows, int d, float eps) {
    pb_layernorm_kernel<<<(unsigned)rows, PB_CUDA_BLOCK, 0, stream>>>(out, x, weight, bias, d, eps);
    return cudaGetLastError();
}
