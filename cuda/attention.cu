/* Causal grouped-query attention of one sequence in fp32 with an online
 * softmax: no (T, T_kv) score buffer is ever formed. One block per (query t,
 * head h) runs pb_attend_block (kernels.cuh) over keys first .. q_start + t,
 * first the window's start (0 without a window). */
#include <math.h>

#include "kernels.cuh"

size_t pb_cuda_attention_shared_bytes(int head_dim) {
    /* q (head_dim) | acc (W, head_dim) | m (W) | l (W) */
    return sizeof(float) * ((size_t)head_dim * (1 + PB_ATTENTION_WARPS) + 2 * PB_ATTENTION_WARPS);
}

/* grid (T, n_heads), block PB_ATTENTION_WARPS * 32.
 * out, q (T, n_heads, head_dim); k, v (T_kv, n_kv_heads, head_dim) */
static __global__ void pb_attention_kernel(float *out, const float *q, const float *k, const float *v, int q_start,
                                           int n_heads, int n_kv_heads, int head_dim, pb_cuda_attention_score score) {
    extern __shared__ float shared[];
    const int t = blockIdx.x;
    const int h = blockIdx.y;
    const size_t column = (size_t)(h / (n_heads / n_kv_heads)) * head_dim;  // the key-value head's slice
    const size_t q_offset = ((size_t)t * n_heads + h) * head_dim;
    const int n_keys = q_start + t + 1;
    const int first = pb_attention_window_start(score.window, q_start + t);
    pb_attend_block(out + q_offset, q + q_offset, first, n_keys, n_keys, k + column, v + column, NULL, NULL,
                    (size_t)n_kv_heads * head_dim, head_dim, score, shared);
}

cudaError_t pb_cuda_launch_attention(cudaStream_t stream, float *out, const float *q, const float *k, const float *v,
                                     int T, int q_start, int n_heads, int n_kv_heads, int head_dim,
                                     pb_cuda_attention_score score) {
    const dim3 grid((unsigned)T, (unsigned)n_heads);
    pb_attention_kernel<<<grid, PB_ATTENTION_WARPS * PB_CUDA_WARP, pb_cuda_attention_shared_bytes(head_dim), stream>>>(
        out, q, k, v, q_start, n_heads, n_kv_heads, head_dim, score);
    return cudaGetLastError();
}
