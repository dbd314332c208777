/* Ragged causal attention for a patching batch (pb_backend_ops.attention_jobs):
 * many jobs at once, each a run of new queries whose keys are a prefix read in
 * place (k_prefix/v_prefix, e.g. a cached clean run) followed by the job's own
 * new keys. fp32 with an online softmax, as in attention.cu: no score buffer.
 *
 * Work rows: the jobs' queries numbered 0 .. total_rows - 1 in job order (job
 * j owns [first_j, first_j + n_j)). One block per (work row, head), grid
 * (total_rows, n_heads): rows on grid.x, whose limit is 2^31 - 1, since a
 * batch easily has more than 65535 rows. A block finds its job by binary
 * search over the descriptors' `first`, then runs the same warp-strided online
 * softmax as pb_attention_kernel over keys j = 0 .. p0 + t: j < p0 from the
 * prefix, the rest from the new keys at row j - p0. */
#include <math.h>

#include "kernels.cuh"

/* grid (rows of the launch, n_heads), block PB_ATTENTION_WARPS * 32, dynamic
 * shared memory pb_cuda_attention_shared_bytes(head_dim).
 * out, q (packed rows, n_heads, head_dim); jobs by value (__grid_constant__:
 * indexed in the parameter bank, not copied per thread). */
static __global__ void pb_attention_jobs_kernel(float *out, const float *q,
                                                const __grid_constant__ pb_cuda_attention_batch jobs, int n_heads,
                                                int n_kv_heads, int head_dim, float scale) {
    extern __shared__ float shared[];
    float *q_shared = shared;                                             // (head_dim)
    float *acc_all = q_shared + head_dim;                                 // (W, head_dim)
    float *max_shared = acc_all + (size_t)PB_ATTENTION_WARPS * head_dim;  // (W)
    float *sum_shared = max_shared + PB_ATTENTION_WARPS;                  // (W)

    const int row = blockIdx.x;
    const int h = blockIdx.y;

    /* The job holding this work row: the last one with first <= row. A job
     * with n == 0 has the same `first` as its successor, so it is never the
     * last such job (and the final job, if empty, has first == total_rows). */
    int lo = 0, hi = jobs.n_jobs - 1;
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if (jobs.job[mid].first <= row)
            lo = mid;
        else
            hi = mid - 1;
    }
    const pb_cuda_attention_job job = jobs.job[lo];
    const int t = row - job.first;  // query index within the job, 0 .. n - 1

    const int kv_head = h / (n_heads / n_kv_heads);
    const int lane = threadIdx.x % PB_CUDA_WARP;
    const int warp = threadIdx.x / PB_CUDA_WARP;
    const size_t q_offset = (((size_t)job.q_row + (size_t)t) * n_heads + h) * head_dim;
    const size_t kv_row_stride = (size_t)n_kv_heads * head_dim;
    const size_t column = (size_t)kv_head * head_dim;
    float *acc = acc_all + (size_t)warp * head_dim;  // (head_dim)

    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
        q_shared[i] = q[q_offset + i];
    for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
        acc[i] = 0.0f;
    __syncthreads();

    float running_max = -INFINITY;
    float running_sum = 0.0f;
    const int n_keys = job.p0 + t + 1;
    for (int j = warp; j < n_keys; j += PB_ATTENTION_WARPS) {
        const float *k_row, *v_row;  // (head_dim) each
        if (j < job.p0) {
            k_row = job.k_prefix + (size_t)j * kv_row_stride + column;
            v_row = job.v_prefix + (size_t)j * kv_row_stride + column;
        } else {
            k_row = job.k_new + (size_t)(j - job.p0) * kv_row_stride + column;
            v_row = job.v_new + (size_t)(j - job.p0) * kv_row_stride + column;
        }
        float dot = 0.0f;
        for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
            dot += q_shared[i] * k_row[i];
        const float score = pb_warp_sum(dot) * scale;
        const float new_max = fmaxf(running_max, score);
        /* First key: exp(-inf - finite) = 0 wipes the empty state. */
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
        /* A warp that saw no key (m = -inf, l = 0, acc = 0) weighs 0, and no
         * exp(-inf - -inf) = NaN arises when no warp saw one. */
        weights[w] = max_shared[w] == -INFINITY ? 0.0f : expf(max_shared[w] - global_max);
        total += weights[w] * sum_shared[w];
    }
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float value = 0.0f;
        for (int w = 0; w < PB_ATTENTION_WARPS; w++)
            value += weights[w] * acc_all[(size_t)w * head_dim + i];
        out[q_offset + i] = total == 0.0f ? 0.0f : value / total;  // no keys: zeros
    }
}

cudaError_t pb_cuda_launch_attention_jobs(cudaStream_t stream, float *out, const float *q,
                                          const pb_cuda_attention_job *jobs, int n_jobs, int n_heads,
                                          int n_kv_heads, int head_dim) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    pb_cuda_attention_batch batch;
    for (int first = 0; first < n_jobs; first += PB_ATTENTION_JOBS_PER_LAUNCH) {
        const int count = n_jobs - first < PB_ATTENTION_JOBS_PER_LAUNCH ? n_jobs - first : PB_ATTENTION_JOBS_PER_LAUNCH;
        const int rows = pb_cuda_attention_batch_fill(&batch, jobs, first, count, 0);
        if (rows == 0)
            continue;
        const dim3 grid((unsigned)rows, (unsigned)n_heads);
        pb_attention_jobs_kernel<<<grid, PB_ATTENTION_WARPS * PB_CUDA_WARP, pb_cuda_attention_shared_bytes(head_dim),
                                   stream>>>(out, q, batch, n_heads, n_kv_heads, head_dim, scale);
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess)
            return error;
    }
    return cudaSuccess;
}
