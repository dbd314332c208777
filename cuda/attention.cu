/* Causal grouped-query attention in fp32 with an online softmax: no (T, T_kv)
 * score buffer is ever formed.
 *
 * One block per (query t, head h), PB_ATTENTION_WARPS warps. Warp w walks keys
 * j = w, w + W, ... <= q_start + t, keeping its own running max m, running
 * denominator l and unnormalised output acc (head_dim, in shared memory, each
 * lane owning dims lane, lane + 32, ...). At the end the warps' states are
 * merged: out = sum_w e^(m_w - M) acc_w / sum_w e^(m_w - M) l_w, M = max m_w.
 * A row with no keys at all (impossible with the causal layout) gives 0. */
#include <math.h>

#include "kernels.cuh"

size_t pb_cuda_attention_shared_bytes(int head_dim) {
    /* q (head_dim) | acc (W, head_dim) | m (W) | l (W) */
    return sizeof(float) * ((size_t)head_dim * (1 + PB_ATTENTION_WARPS) + 2 * PB_ATTENTION_WARPS);
}

/* grid (T, n_heads), block PB_ATTENTION_WARPS * 32.
 * out, q (T, n_heads, head_dim); k, v (T_kv, n_kv_heads, head_dim) */
static __global__ void pb_attention_kernel(float *out, const float *q, const float *k, const float *v, int q_start,
                                           int n_heads, int n_kv_heads, int head_dim, float scale) {
    extern __shared__ float shared[];
    float *q_shared = shared;                                           // (head_dim)
    float *acc_all = q_shared + head_dim;                               // (W, head_dim)
    float *max_shared = acc_all + (size_t)PB_ATTENTION_WARPS * head_dim;  // (W)
    float *sum_shared = max_shared + PB_ATTENTION_WARPS;                // (W)

    const int t = blockIdx.x;
    const int h = blockIdx.y;
    const int kv_head = h / (n_heads / n_kv_heads);
    const int lane = threadIdx.x % PB_CUDA_WARP;
    const int warp = threadIdx.x / PB_CUDA_WARP;
    const size_t q_offset = ((size_t)t * n_heads + h) * head_dim;
    const size_t kv_row_stride = (size_t)n_kv_heads * head_dim;
    const float *k_head = k + (size_t)kv_head * head_dim;
    const float *v_head = v + (size_t)kv_head * head_dim;
    float *acc = acc_all + (size_t)warp * head_dim;  // (head_dim)

    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
        q_shared[i] = q[q_offset + i];
    for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
        acc[i] = 0.0f;
    __syncthreads();

    float running_max = -INFINITY;
    float running_sum = 0.0f;
    const int last_key = q_start + t;
    for (int j = warp; j <= last_key; j += PB_ATTENTION_WARPS) {
        const float *k_row = k_head + (size_t)j * kv_row_stride;  // (head_dim)
        const float *v_row = v_head + (size_t)j * kv_row_stride;  // (head_dim)
        float dot = 0.0f;
        for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
            dot += q_shared[i] * k_row[i];
        const float score = pb_warp_sum(dot) * scale;
        const float new_max = fmaxf(running_max, score);
        /* First key: exp(-inf - finite) = 0 wipes the empty state. NaN
         * scores propagate through p into sum and acc. */
        const float correction = expf(running_max - new_max);
        const float p = expf(score - new_max);
        running_sum = running_sum * correction + p;
        for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
            acc[i] = acc[i] * correction + p * v_row[i];
        running_max = new_max;
    }
    if (lane == 0) {
        max_shared[warp] = running_max;
        sum_shared[warp] = running_sum;
    }
    __syncthreads();

    float global_max = -INFINITY;
    for (int w = 0; w < PB_ATTENTION_WARPS; w++)
        global_max = fmaxf(global_max, max_shared[w]);
    float weights[PB_ATTENTION_WARPS];
    float total = 0.0f;
    for (int w = 0; w < PB_ATTENTION_WARPS; w++) {
        /* A warp that saw no key has m = -inf, l = 0, acc = 0: weight 0
         * (and no exp(-inf - -inf) = NaN when no warp saw a key). */
        weights[w] = max_shared[w] == -INFINITY ? 0.0f : expf(max_shared[w] - global_max);
        total += weights[w] * sum_shared[w];
    }
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float value = 0.0f;
        for (int w = 0; w < PB_ATTENTION_WARPS; w++)
            value += weights[w] * acc_all[(size_t)w * head_dim + i];
        out[q_offset + i] = total == 0.0f ? 0.0f : value / total;
    }
}

cudaError_t pb_cuda_launch_attention(cudaStream_t stream, float *out, const float *q, const float *k, const float *v,
                                     int T, int q_start, int n_heads, int n_kv_heads, int head_dim) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    const dim3 grid((unsigned)T, (unsigned)n_heads);
    pb_attention_kernel<<<grid, PB_ATTENTION_WARPS * PB_CUDA_WARP, pb_cuda_attention_shared_bytes(head_dim),
                          stream>>>(out, q, k, v, q_start, n_heads, n_kv_heads, head_dim, scale);
    return cudaGetLastError();
}
