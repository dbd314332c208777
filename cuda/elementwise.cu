/* Memory-bound elementwise kernels: embedding gather, matmul bias, SwiGLU and
 * residual add. All are grid-stride loops over size_t indices. */
#include "kernels.cuh"

/* out (T, d) = table (vocab, d)[ids (T)]; ids are trusted to be < vocab (the
 * op has no vocab argument; the forward driver checks ids on the host). */
static __global__ void pb_embed_kernel(float *out, const float *table, const int32_t *ids, size_t total, int d) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        size_t t = i / (size_t)d;
        size_t c = i % (size_t)d;
        out[i] = table[(size_t)ids[t] * (size_t)d + c];
    }
}

cudaError_t pb_cuda_launch_embed(cudaStream_t stream, float *out, const float *table, const int32_t *ids, int T,
                                 int d) {
    size_t total = (size_t)T * (size_t)d;
    pb_embed_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(out, table, ids, total, d);
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

/* silu(g) * u = g / (1 + exp(-g)) * u. Plain expf (no fast-math) so the
 * result stays within a few ulp of the CPU reference. */
static __global__ void pb_swiglu_kernel(float *out, const float *gate, const float *up, size_t n, size_t width,
                                        size_t stride) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        size_t in = i / width * stride + i % width;
        float g = gate[in];
        out[i] = g / (1.0f + expf(-g)) * up[in];
    }
}

cudaError_t pb_cuda_launch_swiglu(cudaStream_t stream, float *out, const float *gate, const float *up, size_t rows,
                                  size_t width, size_t stride) {
    size_t n = rows * width;
    pb_swiglu_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(out, gate, up, n, width, stride);
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
