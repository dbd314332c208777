/* 16-bit weight support: the embedding gather from a bf16/fp16 table and the
 * rounding of fp32 activations to bf16/fp16 ahead of a tensor-core GEMM.
 * Conversions are CUDA's round-to-nearest-even intrinsics, the same rounding
 * the host's dtype.c implements bit by bit. */
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.cuh"

static __device__ __forceinline__ float pb_widen(uint16_t bits, int is_bf16) {
    if (is_bf16)
        return __uint_as_float((unsigned)bits << 16); /* bf16 is the top half of an fp32 */
    return __half2float(__ushort_as_half(bits));
}

/* out (T, d) = widen(table (vocab, d)[ids (T)]) * scale: the widening is
 * exact, then one fp32 product, as the reference's. */
static __global__ void pb_embed16_kernel(float *out, const uint16_t *table, int is_bf16, const int32_t *ids,
                                         size_t total, int d, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)d;
        size_t c = i % (size_t)d;
        out[i] = pb_widen(table[(size_t)ids[t] * (size_t)d + c], is_bf16) * scale;
    }
}

cudaError_t pb_cuda_launch_embed16(cudaStream_t stream, float *out, const uint16_t *table, int is_bf16,
                                   const int32_t *ids, int T, int d, float scale) {
    size_t total = (size_t)T * (size_t)d;
    pb_embed16_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(out, table, is_bf16, ids, total, d, scale);
    return cudaGetLastError();
}

/* out (n) = round_to_16(x (n)) */
static __global__ void pb_round16_kernel(uint16_t *out, const float *x, size_t n, int is_bf16) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = is_bf16 ? __bfloat16_as_ushort(__float2bfloat16_rn(x[i])) : __half_as_ushort(__float2half_rn(x[i]));
}

cudaError_t pb_cuda_launch_round16(cudaStream_t stream, uint16_t *out, const float *x, size_t n, int is_bf16) {
    pb_round16_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(out, x, n, is_bf16);
    return cudaGetLastError();
}
