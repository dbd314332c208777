/* Rotary position embedding, rotate-half (Hugging Face) convention, in place:
 * one thread per (t, head, i < rotary_dims/2) rotates the pair (i, i + half)
 * of its head. With rotary_dims < head_dim (GPT-NeoX's partial rotary) the
 * dims from rotary_dims on are never read or written, so they keep their
 * bits. */
#include "kernels.cuh"

/* x (T, n_heads, head_dim); positions (T); inv_freq (half); half =
 * rotary_dims / 2 */
static __global__ void pb_rope_kernel(float *x, const int32_t *positions, const float *inv_freq, size_t total,
                                      int n_heads, int head_dim, int half, float scale) {
    for (size_t idx = blockIdx.x * (size_t)blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t i = idx % (size_t)half;
        const size_t row = idx / (size_t)half;  // t * n_heads + head
        const size_t t = row / (size_t)n_heads;
        /* The angle is rounded to float first, as in the C reference;
         * sincosf without fast-math is accurate to a couple of ulp. */
        const float angle = (float)positions[t] * inv_freq[i];
        float sin_angle, cos_angle;
        sincosf(angle, &sin_angle, &cos_angle);
        /* LongRoPE's attention factor scales cos and sin before they meet
         * x, as transformers does; 1 changes no bit */
        sin_angle *= scale;
        cos_angle *= scale;
        float *pair = x + row * (size_t)head_dim;  // (head_dim): this head's vector
        const float x0 = pair[i];
        const float x1 = pair[i + half];
        pair[i] = x0 * cos_angle - x1 * sin_angle;
        pair[i + half] = x1 * cos_angle + x0 * sin_angle;
    }
}

cudaError_t pb_cuda_launch_rope(cudaStream_t stream, float *x, const int32_t *positions, const float *inv_freq, int T,
                                int n_heads, int head_dim, int rotary_dims, float scale) {
    const int half = rotary_dims / 2;
    const size_t total = (size_t)T * (size_t)n_heads * (size_t)half;
    pb_rope_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(x, positions, inv_freq, total, n_heads,
                                                                          head_dim, half, scale);
    return cudaGetLastError();
}
