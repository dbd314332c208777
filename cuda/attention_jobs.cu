/* Ragged causal attention for a patching batch (pb_backend_ops.attention_jobs):
 * many jobs at once, each a run of new queries whose keys are a prefix read in
 * place (k_prefix/v_prefix, e.g. a cached clean run) followed by the job's own
 * new keys. fp32 with an online softmax, as in attention.cu: no score buffer.
 *
 * Work rows: the jobs' queries numbered 0 .. total_rows - 1 in job order (job
 * j owns [first_j, first_j + n_j)). One block per (work row, head), grid
 * (total_rows, n_heads): rows on grid.x, whose limit is 2^31 - 1, since a
 * batch easily has more than 65535 rows. A block finds its job by binary
 * search over the descriptors' `first` (pb_cuda_find_job), then runs
 * pb_attend_block, as attention.cu does, over keys j = first .. p0 + t
 * (first: the start of the window of position p0 + t, else 0): j < p0 from
 * the prefix, the rest from the new keys at row j - p0. */
#include <math.h>

#include "kernels.cuh"

/* grid (rows of the launch, n_heads), block PB_ATTENTION_WARPS * 32, dynamic
 * shared memory pb_cuda_attention_shared_bytes(head_dim).
 * out, q (packed rows, n_heads, head_dim); jobs by value (__grid_constant__:
 * indexed in the parameter bank, not copied per thread). */
static __global__ void pb_attention_jobs_kernel(float *out, const float *q,
                                                const __grid_constant__ pb_cuda_attention_batch jobs, int n_heads,
                                                int n_kv_heads, int head_dim, pb_cuda_attention_score score) {
    extern __shared__ float shared[];
    const int row = blockIdx.x;
    const int h = blockIdx.y;
    const pb_cuda_attention_job &job = jobs.job[pb_cuda_find_job(jobs, row, 0)];
    const int t = row - job.first;                                          // query index within the job, 0 .. n - 1
    const size_t column = (size_t)(h / (n_heads / n_kv_heads)) * head_dim;  // the key-value head's slice
    const size_t q_offset = (((size_t)job.q_row + (size_t)t) * n_heads + h) * head_dim;
    /* keys first .. p0 + t: the prefix's p0 rows, then the job's own */
    const float *k_prefix = job.p0 ? job.k_prefix + column : NULL, *v_prefix = job.p0 ? job.v_prefix + column : NULL;
    const int first = pb_attention_window_start(score.window, job.p0 + t);
    pb_attend_block(out + q_offset, q + q_offset, first, job.p0 + t + 1, job.p0, k_prefix, v_prefix, job.k_new + column,
                    job.v_new + column, (size_t)n_kv_heads * head_dim, head_dim, score, shared);
}

cudaError_t pb_cuda_launch_attention_jobs(cudaStream_t stream, float *out, const float *q,
                                          const pb_cuda_attention_job *jobs, int n_jobs, int n_heads, int n_kv_heads,
                                          int head_dim, pb_cuda_attention_score score) {
    pb_cuda_attention_batch batch;
    for (int first = 0; first < n_jobs; first += PB_ATTENTION_JOBS_PER_LAUNCH) {
        const int count = n_jobs - first < PB_ATTENTION_JOBS_PER_LAUNCH ? n_jobs - first : PB_ATTENTION_JOBS_PER_LAUNCH;
        const int rows = pb_cuda_attention_batch_fill(&batch, jobs, first, count, 0);
        if (rows == 0)
            continue;
        const dim3 grid((unsigned)rows, (unsigned)n_heads);
        pb_attention_jobs_kernel<<<grid, PB_ATTENTION_WARPS * PB_CUDA_WARP, pb_cuda_attention_shared_bytes(head_dim),
                                   stream>>>(out, q, batch, n_heads, n_kv_heads, head_dim, score);
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess)
            return error;
    }
    return cudaSuccess;
}
