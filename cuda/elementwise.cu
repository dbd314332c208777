/* Memory-bound elementwise kernels: embedding gather, matmul bias, the MLP's
 * activation with a gate (glu) and without one (activate), logit
 * soft-capping and residual add. All are grid-stride loops over size_t
 * indices. */
#include "kernels.cuh"

/* out (T, d) = table (vocab, d)[ids (T)] * scale; ids are trusted to be <
 * vocab (the op has no vocab argument; the forward driver checks ids on the
 * host). One fp32 product, as the reference's (Gemma's sqrt(d_model); 1 for
 * the others, exact). */
static __global__ void pb_embed_kernel(float *out, const float *table, const int32_t *ids, size_t total, int d,
                                       float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)d;
        size_t c = i % (size_t)d;
        out[i] = table[(size_t)ids[t] * (size_t)d + c] * scale;
    }
}

cudaError_t pb_cuda_launch_embed(cudaStream_t stream, float *out, const float *table, const int32_t *ids, int T, int d,
                                 float scale) {
    size_t total = (size_t)T * (size_t)d;
    pb_embed_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(out, table, ids, total, d, scale);
    return cudaGetLastError();
}

/* out (rows, n) += bias (n) */
static __global__ void pb_add_bias_kernel(float *out, const float *bias, size_t total, int n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x)
        out[i] += bias[i % (size_t)n];
}

cudaError_t pb_cuda_launch_add_bias(cudaStream_t stream, float *out, const float *bias, int rows, int n) {
    size_t total = (size_t)rows * (size_t)n;
    pb_add_bias_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(out, bias, total, n);
    return cudaGetLastError();
}

/* act(g) in fp32 as torch computes it for fp32 tensors: SiLU g / (1 +
 * exp(-g)); GELU's tanh form g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3)))
 * with torch's order of operations (gelu(approximate='tanh')); exact GELU as
 * torch's kernel writes it, g * 0.5 * (1 + erf(g * M_SQRT1_2)). Plain expf,
 * tanhf and erff (no fast-math) keep it within a few ulp of the double
 * reference; where 1 + tanh or 1 + erf cancels (g ~ -5) both torch and this
 * lose the same digits. */
static __device__ __forceinline__ float pb_activation_value(float g, pb_cuda_activation act) {
    if (act == PB_CUDA_GELU_TANH) {
        const float cube = g * g * g;
        const float inner = 0.7978845608028654f * (g + 0.044715f * cube);
        return 0.5f * g * (1.0f + tanhf(inner));
    }
    if (act == PB_CUDA_GELU)
        return g * 0.5f * (1.0f + erff(g * 0.7071067811865476f));
    return g / (1.0f + expf(-g));
}

/* out (rows, width) = act(gate) * up; element (r, c) of gate and up at r *
 * stride + c (stride 2 * width: the halves of a fused gate/up GEMM's rows).
 * out may alias gate or up when stride == width: each element is read by the
 * thread that writes it. */
static __global__ void pb_glu_kernel(float *out, const float *gate, const float *up, size_t n, size_t width,
                                     size_t stride, pb_cuda_activation act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t in = i / width * stride + i % width;
        out[i] = pb_activation_value(gate[in], act) * up[in];
    }
}

cudaError_t pb_cuda_launch_glu(cudaStream_t stream, float *out, const float *gate, const float *up, size_t rows,
                               size_t width, size_t stride, pb_cuda_activation act) {
    size_t n = rows * width;
    pb_glu_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(out, gate, up, n, width, stride, act);
    return cudaGetLastError();
}

/* x (n) = act(x) in place: the MLP without a gate (GPT-2, GPT-NeoX). */
static __global__ void pb_activate_kernel(float *x, size_t n, pb_cuda_activation act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = pb_activation_value(x[i], act);
}

cudaError_t pb_cuda_launch_activate(cudaStream_t stream, float *x, size_t n, pb_cuda_activation act) {
    pb_activate_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(x, n, act);
    return cudaGetLastError();
}

/* x (n) = cap * tanh(x / cap) in place (Gemma 2's final-logit cap): fp32
 * division and tanhf, as torch does for fp32 logits. */
static __global__ void pb_softcap_kernel(float *x, size_t n, float cap) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        x[i] = cap * tanhf(x[i] / cap);
}

cudaError_t pb_cuda_launch_softcap(cudaStream_t stream, float *x, size_t n, float cap) {
    pb_softcap_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(x, n, cap);
    return cudaGetLastError();
}

/* No __restrict__: out may alias a or b (each element is read before it is
 * written by the same thread). */
static __global__ void pb_add_kernel(float *out, const float *a, const float *b, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

cudaError_t pb_cuda_launch_add(cudaStream_t stream, float *out, const float *a, const float *b, size_t n) {
    pb_add_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(out, a, b, n);
    return cudaGetLastError();
}
