/* Ragged causal attention, tiled (pb_backend_ops.attention_jobs for jobs with
 * many queries: prefill and patching suffixes). Same semantics as
 * attention_jobs.cu, which stays the kernel for short jobs, head sizes this
 * one does not take, and the single-sequence op.
 *
 * One block per (tile of PB_TILE_Q queries of one job, query head): the
 * tile's queries are loaded once, then keys and values stream through shared
 * memory PB_TILE_K at a time, so each key and value row is read from global
 * memory once per tile instead of once per query. fp32 throughout, with an
 * online softmax per query row; no score buffer beyond one
 * (PB_TILE_Q, PB_TILE_K) tile.
 *
 * Threads: 128 = 32 rows x 4. Thread (r, part) owns query row r of the tile;
 * for scores it takes keys part*4 .. part*4+3 of each key tile, for the
 * output the float4 column groups part, part+4, part+8, ... of the row. The
 * four threads of a row are adjacent lanes of one warp, so row maxima and
 * sums are warp shuffles and the probabilities they share pass through
 * shared memory under __syncwarp. Shared rows are padded by 4 floats, which
 * keeps the float4 loads of the 8 rows (or 4 keys) a warp touches at once
 * in distinct banks.
 *
 * Needs head_dim % 4 == 0 and head_dim <= PB_TILE_MAX_HEAD_DIM (checked by
 * the caller, pb_cuda_attention_tiled_ok). */
#include <math.h>

#include "kernels.cuh"

#define PB_TILE_Q PB_ATTENTION_TILE_Q
#define PB_TILE_K 16
#define PB_TILE_THREADS 128
#define PB_TILE_MAX_HEAD_DIM 128
/* Probability rows padded by one: the 8 rows a warp reads at once fall in
 * distinct banks. */
#define PB_TILE_P_STRIDE (PB_TILE_K + 1)

int pb_cuda_attention_tiled_ok(int head_dim) {
    return head_dim > 0 && head_dim % 4 == 0 && head_dim <= PB_TILE_MAX_HEAD_DIM;
}

int pb_cuda_attention_tile_queries(void) { return PB_TILE_Q; }

size_t pb_cuda_attention_tiled_shared_bytes(int head_dim) {
    const size_t stride = (size_t)head_dim + 4;
    /* Q (TILE_Q, stride) | K (TILE_K, stride) | V (TILE_K, stride) | P (TILE_Q, P_STRIDE) */
    return sizeof(float) * (stride * (PB_TILE_Q + 2 * PB_TILE_K) + (size_t)PB_TILE_Q * PB_TILE_P_STRIDE);
}

/* grid (tiles of the launch, n_heads), block PB_TILE_THREADS, dynamic shared
 * memory pb_cuda_attention_tiled_shared_bytes(head_dim).
 * out, q (packed rows, n_heads, head_dim); jobs by value (__grid_constant__),
 * first_tile ascending from 0 (job j owns tiles [first_tile, first_tile +
 * ceil(n / PB_TILE_Q))). */
static __global__ void __launch_bounds__(PB_TILE_THREADS)
    pb_attention_tiled_kernel(float *out, const float *q, const __grid_constant__ pb_cuda_attention_batch jobs,
                              int n_heads, int n_kv_heads, int head_dim, float scale) {
    extern __shared__ float4 shared4[];
    const int stride4 = head_dim / 4 + 1;                                  // float4 per padded row
    float4 *q_tile = shared4;                                              // (TILE_Q, stride4)
    float4 *k_tile = q_tile + (size_t)PB_TILE_Q * stride4;                 // (TILE_K, stride4)
    float4 *v_tile = k_tile + (size_t)PB_TILE_K * stride4;                 // (TILE_K, stride4)
    float *p_tile = (float *)(v_tile + (size_t)PB_TILE_K * stride4);       // (TILE_Q, P_STRIDE)

    const int tile = blockIdx.x;
    const int h = blockIdx.y;
    const pb_cuda_attention_job &job = jobs.job[pb_cuda_find_job(jobs, tile, 1)];
    const int t0 = (tile - job.first_tile) * PB_TILE_Q;  // first query of the tile within the job
    const int n_q = min(PB_TILE_Q, job.n - t0);          // queries in this tile, 1 .. TILE_Q
    const int kv_head = h / (n_heads / n_kv_heads);
    const int hd4 = head_dim / 4;
    const size_t kv_stride = (size_t)n_kv_heads * head_dim;
    const size_t column = (size_t)kv_head * head_dim;

    const int tid = threadIdx.x;
    const int r = tid / 4;     // query row of the tile
    const int part = tid % 4;  // which quarter of the keys / column groups

    /* Q tile, rows past n_q zero (their results are never written). */
    for (int idx = tid; idx < PB_TILE_Q * hd4; idx += PB_TILE_THREADS) {
        const int row = idx / hd4, c4 = idx % hd4;
        float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (row < n_q) {
            const float *src = q + (((size_t)job.q_row + t0 + row) * n_heads + h) * head_dim + 4 * c4;
            value = make_float4(src[0], src[1], src[2], src[3]);
        }
        q_tile[(size_t)row * stride4 + c4] = value;
    }

    const int position = job.p0 + t0 + r;  // this row's query position: it attends keys 0 .. position
    const int n_keys = job.p0 + t0 + n_q;  // keys any row of the tile attends
    float running_max = -INFINITY, running_sum = 0.0f;
    float4 acc[PB_TILE_MAX_HEAD_DIM / 16];  // column groups part, part + 4, ...: (hd4 / 4 rounded up)
    for (int g = 0; g < PB_TILE_MAX_HEAD_DIM / 16; g++)
        acc[g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);

    for (int k0 = 0; k0 < n_keys; k0 += PB_TILE_K) {
        /* Nobody still reads the previous tile's K, V or probabilities (and
         * the Q tile is complete, the first time round). */
        __syncthreads();
        for (int idx = tid; idx < PB_TILE_K * hd4; idx += PB_TILE_THREADS) {
            const int kk = idx / hd4, c4 = idx % hd4;
            const int j = k0 + kk;
            float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
            if (j < n_keys) {
                const float *ks, *vs;
                if (j < job.p0) {
                    ks = job.k_prefix + (size_t)j * kv_stride + column + 4 * c4;
                    vs = job.v_prefix + (size_t)j * kv_stride + column + 4 * c4;
                } else {
                    ks = job.k_new + (size_t)(j - job.p0) * kv_stride + column + 4 * c4;
                    vs = job.v_new + (size_t)(j - job.p0) * kv_stride + column + 4 * c4;
                }
                kv = make_float4(ks[0], ks[1], ks[2], ks[3]);
                vv = make_float4(vs[0], vs[1], vs[2], vs[3]);
            }
            k_tile[(size_t)kk * stride4 + c4] = kv;
            v_tile[(size_t)kk * stride4 + c4] = vv;
        }
        __syncthreads();

        /* Scores of row r against keys part*4 .. part*4+3 of the tile, in
         * the reference's order: sum over dimensions, then times scale. */
        float score[4];
        for (int kk = 0; kk < 4; kk++)
            score[kk] = 0.0f;
        const float4 *q_row = q_tile + (size_t)r * stride4;
        for (int c4 = 0; c4 < hd4; c4++) {
            const float4 a = q_row[c4];
            for (int kk = 0; kk < 4; kk++) {
                const float4 b = k_tile[(size_t)(part * 4 + kk) * stride4 + c4];
                score[kk] += a.x * b.x;
                score[kk] += a.y * b.y;
                score[kk] += a.z * b.z;
                score[kk] += a.w * b.w;
            }
        }
        float tile_max = -INFINITY;
        for (int kk = 0; kk < 4; kk++) {
            const int j = k0 + part * 4 + kk;
            score[kk] = j <= position && r < n_q ? score[kk] * scale : -INFINITY;  // causal mask
            tile_max = fmaxf(tile_max, score[kk]);
        }
        /* the row's four threads are lanes 4m .. 4m+3 of one warp */
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 2));
        const float new_max = fmaxf(running_max, tile_max);
        /* A row with no key yet (all masked so far) keeps its empty state:
         * no exp(-inf - -inf) = NaN. */
        const float correction = new_max == -INFINITY ? 1.0f : expf(running_max - new_max);
        float tile_sum = 0.0f;
        for (int kk = 0; kk < 4; kk++) {
            const float p = new_max == -INFINITY ? 0.0f : expf(score[kk] - new_max);
            p_tile[r * PB_TILE_P_STRIDE + part * 4 + kk] = p;
            tile_sum += p;
        }
        tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 1);
        tile_sum += __shfl_xor_sync(0xffffffffu, tile_sum, 2);
        running_sum = running_sum * correction + tile_sum;
        running_max = new_max;
        __syncwarp();  // the row's probabilities, written by its four lanes, are read by all four

        /* acc (this thread's column groups) = acc * correction + P[r, :] V */
        float p_row[PB_TILE_K];
        for (int kk = 0; kk < PB_TILE_K; kk++)
            p_row[kk] = p_tile[r * PB_TILE_P_STRIDE + kk];
        for (int g = 0; g < PB_TILE_MAX_HEAD_DIM / 16; g++) {
            const int c4 = part + 4 * g;
            if (c4 >= hd4)
                break;
            float4 sum = make_float4(acc[g].x * correction, acc[g].y * correction, acc[g].z * correction,
                                     acc[g].w * correction);
            for (int kk = 0; kk < PB_TILE_K; kk++) {
                const float p = p_row[kk];
                const float4 v = v_tile[(size_t)kk * stride4 + c4];
                sum.x += p * v.x;
                sum.y += p * v.y;
                sum.z += p * v.z;
                sum.w += p * v.w;
            }
            acc[g] = sum;
        }
    }

    if (r >= n_q)
        return;
    float *dst = out + (((size_t)job.q_row + t0 + r) * n_heads + h) * head_dim;
    const float inv = running_sum == 0.0f ? 0.0f : 1.0f / running_sum;  // no key at all: zeros
    for (int g = 0; g < PB_TILE_MAX_HEAD_DIM / 16; g++) {
        const int c4 = part + 4 * g;
        if (c4 >= hd4)
            break;
        dst[4 * c4 + 0] = running_sum == 0.0f ? 0.0f : acc[g].x * inv;
        dst[4 * c4 + 1] = running_sum == 0.0f ? 0.0f : acc[g].y * inv;
        dst[4 * c4 + 2] = running_sum == 0.0f ? 0.0f : acc[g].z * inv;
        dst[4 * c4 + 3] = running_sum == 0.0f ? 0.0f : acc[g].w * inv;
    }
}

cudaError_t pb_cuda_launch_attention_tiled(cudaStream_t stream, float *out, const float *q,
                                           const pb_cuda_attention_job *jobs, int n_jobs, int n_heads,
                                           int n_kv_heads, int head_dim) {
    const float scale = 1.0f / sqrtf((float)head_dim);
    pb_cuda_attention_batch batch;
    for (int first = 0; first < n_jobs; first += PB_ATTENTION_JOBS_PER_LAUNCH) {
        const int count = n_jobs - first < PB_ATTENTION_JOBS_PER_LAUNCH ? n_jobs - first : PB_ATTENTION_JOBS_PER_LAUNCH;
        const int tiles = pb_cuda_attention_batch_fill(&batch, jobs, first, count, 1);
        if (tiles == 0)
            continue;
        const dim3 grid((unsigned)tiles, (unsigned)n_heads);
        pb_attention_tiled_kernel<<<grid, PB_TILE_THREADS, pb_cuda_attention_tiled_shared_bytes(head_dim), stream>>>(
            out, q, batch, n_heads, n_kv_heads, head_dim, scale);
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess)
            return error;
    }
    return cudaSuccess;
}
