/* The activation backward pass's kernels (backend.h's four backward ops;
 * written from the definitions in host/backend/backward_host.c, and like
 * them summing in double): the norms' backward, one block per row; the
 * MLP activation's, elementwise; the attention's in two kernels, one block
 * per (query, head) that recomputes the row's probabilities, writes them
 * and the scores' gradients to scratch and sums the query's gradient, then
 * one block per (key, key-value head) that sums the key's and the value's
 * gradients over the queries that see the key. No atomics: each output
 * element is summed by one thread in a fixed order (heads, then queries,
 * as the host's loops), so reruns give the same bits. The scratch holds
 * one chunk of key-value heads (with their query heads) at a time. */
#include "kernels.cuh"

#define PB_BACKWARD_WARPS (PB_CUDA_BLOCK / PB_CUDA_WARP)

/* One row per block: mean (centred only), inverse deviation, then the two
 * sums the gradient needs, gsum = sum g_i and gx = sum g_i xhat_i with
 * g = dy * weight; dx_i = inv (g_i - [gsum / d] - xhat_i gx / d). dx does
 * not alias x or dy. */
static __global__ void pb_norm_backward_kernel(float *dx, const float *x, const float *weight, const float *dy, int d,
                                               float eps, int centred, int accumulate) {
    __shared__ double partial[PB_BACKWARD_WARPS];
    __shared__ double total;
    const size_t row = blockIdx.x;
    const float *x_row = x + row * (size_t)d;    // (d)
    const float *dy_row = dy + row * (size_t)d;  // (d)
    float *dx_row = dx + row * (size_t)d;        // (d)

    double mean = 0.0;
    if (centred) {
        double sum = 0.0;
        for (int i = threadIdx.x; i < d; i += blockDim.x)
            sum += (double)x_row[i];
        mean = pb_block_reduce_double(sum, 0, partial, &total) / d;
    }
    double squares = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const double c = (double)x_row[i] - mean;
        squares += c * c;
    }
    const double inv = 1.0 / sqrt(pb_block_reduce_double(squares, 0, partial, &total) / d + (double)eps);
    double gsum = 0.0, gx = 0.0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const double g = (double)dy_row[i] * (weight ? (double)weight[i] : 1.0);
        gsum += g;
        gx += g * ((double)x_row[i] - mean) * inv;
    }
    gsum = pb_block_reduce_double(gsum, 0, partial, &total);
    gx = pb_block_reduce_double(gx, 0, partial, &total);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const double g = (double)dy_row[i] * (weight ? (double)weight[i] : 1.0);
        const double xhat = ((double)x_row[i] - mean) * inv;
        const double di = centred ? inv * (g - gsum / d - xhat * gx / d) : inv * (g - xhat * gx / d);
        dx_row[i] = accumulate ? dx_row[i] + (float)di : (float)di;
    }
}

cudaError_t pb_cuda_launch_norm_backward(cudaStream_t stream, float *dx, const float *x, const float *weight,
                                         const float *dy, int rows, int d, float eps, int centred, int accumulate) {
    pb_norm_backward_kernel<<<(unsigned)rows, PB_CUDA_BLOCK, 0, stream>>>(dx, x, weight, dy, d, eps, centred,
                                                                          accumulate);
    return cudaGetLastError();
}

/* act'(x), and act(x) in *value, in double: the forward's definitions
 * (elementwise.cu) differentiated. */
static __device__ __forceinline__ double pb_activation_grad(double x, pb_cuda_activation act, double *value) {
    if (act == PB_CUDA_GELU_TANH) {
        const double t = tanh(0.7978845608028654 * (x + 0.044715 * x * x * x));
        *value = 0.5 * x * (1.0 + t);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
    }
    if (act == PB_CUDA_GELU) {
        const double e = erf(x * 0.7071067811865476);
        *value = 0.5 * x * (1.0 + e);
        return 0.5 * (1.0 + e) + x * exp(-0.5 * x * x) * 0.3989422804014327;
    }
    const double s = 1.0 / (1.0 + exp(-x));
    *value = x * s;
    return s * (1.0 + x * (1.0 - s));
}

/* Each element read and written by one thread: d_gate may alias dh. */
static __global__ void pb_glu_backward_kernel(float *d_gate, float *d_up, const float *dh, const float *gate,
                                              const float *up, size_t n, pb_cuda_activation act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        const double h = dh[i];
        double a;
        if (!gate) {
            d_up[i] = (float)(h * pb_activation_grad(up[i], act, &a));
            continue;
        }
        const double da = pb_activation_grad(gate[i], act, &a);
        d_up[i] = (float)(h * a);
        d_gate[i] = (float)(h * up[i] * da);
    }
}

cudaError_t pb_cuda_launch_glu_backward(cudaStream_t stream, float *d_gate, float *d_up, const float *dh,
                                        const float *gate, const float *up, size_t n, pb_cuda_activation act) {
    pb_glu_backward_kernel<<<pb_cuda_grid_for(n), PB_CUDA_BLOCK, 0, stream>>>(d_gate, d_up, dh, gate, up, n, act);
    return cudaGetLastError();
}

/* q.k * scale of one query and key rows (head_dim), in double. */
static __device__ __forceinline__ double pb_raw_score(const float *q_row, const float *k_row, int head_dim,
                                                      float scale) {
    double dot = 0.0;
    for (int e = 0; e < head_dim; e++)
        dot += (double)q_row[e] * k_row[e];
    return dot * scale;
}

/* Block (query i, head h); threads over the keys j the query sees. Row i
 * of head h in probs and dscores (each (n_heads, T, T)): the softmax of
 * the capped scores, then ds_j = P_j (G_j - sum_j' P_j' G_j') times the
 * cap's derivative and the scale, with G_j = dz_i . v_j (also dpattern's
 * entry). dq_i = sum_j ds_j k_j, one thread per element in key order. */
static __global__ void pb_attention_backward_rows_kernel(float *dq, float *dpattern, const float *q, const float *k,
                                                         const float *v, const float *dz, double *probs,
                                                         double *dscores, int T, int n_heads, int group, int head_dim,
                                                         int h0, pb_cuda_attention_score score) {
    __shared__ double partial[PB_BACKWARD_WARPS];
    __shared__ double total;
    const int i = blockIdx.x, h = h0 + (int)blockIdx.y;
    const size_t qd = (size_t)n_heads * head_dim, kvd = (size_t)(n_heads / group) * head_dim;
    const size_t kv0 = (size_t)(h / group) * head_dim;
    const float *q_row = q + (size_t)i * qd + (size_t)h * head_dim;    // (head_dim)
    const float *dz_row = dz + (size_t)i * qd + (size_t)h * head_dim;  // (head_dim)
    const size_t row = ((size_t)h * T + i) * T;                        /* in dpattern */
    const size_t chunk_row = ((size_t)(h - h0) * T + i) * T;           /* in the chunk's scratch */
    double *P = probs + chunk_row;                                     // (T): keys first .. i
    double *S = dscores + chunk_row;                                   // (T)
    const int first = pb_attention_window_start(score.window, i);

    double local = -INFINITY;
    for (int j = first + threadIdx.x; j <= i; j += blockDim.x) {
        const double s = pb_raw_score(q_row, k + (size_t)j * kvd + kv0, head_dim, score.scale);
        P[j] = score.softcap > 0.0f ? score.softcap * tanh(s / score.softcap) : s;
        local = fmax(local, P[j]);
    }
    const double max = pb_block_reduce_double(local, 1, partial, &total);
    local = 0.0;
    for (int j = first + threadIdx.x; j <= i; j += blockDim.x)
        local += (P[j] = exp(P[j] - max));
    const double sum = pb_block_reduce_double(local, 0, partial, &total);
    local = 0.0;
    for (int j = first + threadIdx.x; j <= i; j += blockDim.x) {
        const float *v_row = v + (size_t)j * kvd + kv0;
        double g = 0.0;
        for (int e = 0; e < head_dim; e++)
            g += (double)dz_row[e] * v_row[e];
        P[j] /= sum;
        S[j] = g;
        if (dpattern)
            dpattern[row + j] = (float)g;
        local += P[j] * g;
    }
    const double dot_sum = pb_block_reduce_double(local, 0, partial, &total);
    for (int j = first + threadIdx.x; j <= i; j += blockDim.x) {
        double ds = P[j] * (S[j] - dot_sum);
        if (score.softcap > 0.0f) {
            const double t = tanh(pb_raw_score(q_row, k + (size_t)j * kvd + kv0, head_dim, score.scale) /
                                  score.softcap);
            ds *= 1.0 - t * t;
        }
        S[j] = ds * score.scale;
    }
    __syncthreads(); /* every S[j] of the row written, before any thread sums them */
    for (int e = threadIdx.x; e < head_dim; e += blockDim.x) {
        double acc = 0.0;
        for (int j = first; j <= i; j++)
            acc += S[j] * k[(size_t)j * kvd + kv0 + e];
        dq[(size_t)i * qd + (size_t)h * head_dim + e] = (float)acc;
    }
}

/* Block (key j, key-value head g); threads over head_dim. The queries that
 * see key j are i = j .. j + window - 1 (all i >= j without a window). */
static __global__ void pb_attention_backward_keys_kernel(float *dk, float *dv, const float *q, const float *dz,
                                                         const double *probs, const double *dscores, int T, int n_heads,
                                                         int group, int head_dim, int window, int g0) {
    const int j = blockIdx.x, g = g0 + (int)blockIdx.y;
    const size_t qd = (size_t)n_heads * head_dim, kvd = (size_t)(n_heads / group) * head_dim;
    const long long reach = window > 0 ? (long long)j + window - 1 : (long long)T - 1;
    const int last = reach < T - 1 ? (int)reach : T - 1;
    for (int e = threadIdx.x; e < head_dim; e += blockDim.x) {
        double ak = 0.0, av = 0.0;
        for (int h = g * group; h < (g + 1) * group; h++)
            for (int i = j; i <= last; i++) {
                const size_t at = ((size_t)(h - g0 * group) * T + i) * T + j; /* in the chunk */
                const size_t qi = (size_t)i * qd + (size_t)h * head_dim + e;
                ak += dscores[at] * q[qi];
                av += probs[at] * dz[qi];
            }
        dk[(size_t)j * kvd + (size_t)g * head_dim + e] = (float)ak;
        dv[(size_t)j * kvd + (size_t)g * head_dim + e] = (float)av;
    }
}

size_t pb_cuda_attention_backward_scratch(int T, int n_heads) { return 2 * (size_t)n_heads * T * T; }

cudaError_t pb_cuda_launch_attention_backward(cudaStream_t stream, float *dq, float *dk, float *dv, float *dpattern,
                                              const float *q, const float *k, const float *v, const float *dz,
                                              double *scratch, int chunk_kv_heads, int T, int n_heads, int n_kv_heads,
                                              int head_dim, pb_cuda_attention_score score) {
    const int group = n_heads / n_kv_heads;
    for (int g0 = 0; g0 < n_kv_heads; g0 += chunk_kv_heads) {
        const int kv = n_kv_heads - g0 < chunk_kv_heads ? n_kv_heads - g0 : chunk_kv_heads;
        double *probs = scratch, *dscores = scratch + (size_t)kv * group * T * T;
        const dim3 rows((unsigned)T, (unsigned)(kv * group)), keys((unsigned)T, (unsigned)kv);
        pb_attention_backward_rows_kernel<<<rows, PB_CUDA_BLOCK, 0, stream>>>(
            dq, dpattern, q, k, v, dz, probs, dscores, T, n_heads, group, head_dim, g0 * group, score);
        cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess)
            return error;
        pb_attention_backward_keys_kernel<<<keys, PB_CUDA_BLOCK, 0, stream>>>(dk, dv, q, dz, probs, dscores, T, n_heads,
                                                                              group, head_dim, score.window, g0);
        if ((error = cudaGetLastError()) != cudaSuccess)
            return error;
    }
    return cudaSuccess;
}
