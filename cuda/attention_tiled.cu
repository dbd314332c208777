/* Ragged causal attention, tiled (pb_backend_ops.attention_jobs for jobs with
 * many queries: prefill and patching suffixes). Same semantics as
 * attention_jobs.cu, which stays the kernel for short jobs, head sizes this
 * one does not take, and the single-sequence op. fp32 on the CUDA cores
 * throughout (no tensor cores: the fp32 model must match the CPU to NMSE
 * 1e-9), with an online softmax; no score buffer beyond one tile.
 *
 * A block owns PB_TILE_ROWS = 64 query rows: `tile positions` consecutive
 * queries of one job times the `group_heads` query heads that share one
 * key-value head (GQA), row r = (position r / group_heads, head r %
 * group_heads), so every key and value row it stages serves all of them.
 * Keys and values stream through shared memory PB_TILE_K = 64 at a time;
 * key tiles past the tile's last query are never visited (causal), nor,
 * with a sliding window, those wholly before the window of its first query
 * (pb_tile_key_range: a query tile costs at most ceil(window / 64) + 2 key
 * tiles, whatever the prefix), and only tiles that cross the diagonal or a
 * window's start are masked. Scores are scaled and soft-capped as
 * pb_attention_score (kernels.cuh) before the mask.
 *
 * Register tiling, 256 threads as 16 x 16: thread (ty, tx) owns rows 4ty ..
 * 4ty+3. For the (64, 64) scores it computes keys tx, tx+16, tx+32, tx+48
 * of those rows (16 scores, 16 FMA per 8 float4 loads from shared memory);
 * for the (64, head_dim) output, columns 4tx + 64g (g < D / 64) of them (4 x
 * 4G accumulators, 16G FMA per 4 + 4G float4 loads per 4 keys). A row's 16
 * threads are the lanes of one half-warp, so its maxima are shuffles and its
 * probabilities pass through shared memory under __syncwarp.
 *
 * Shared memory (floats), D = head_dim rounded up to 64, 128 or 256:
 *   Q (64, D + 4) | K (64, D + 4), reused for P (64, 68) | V (64, D)
 * Banks: the old layout (32 x 4 threads, keys part*4 .. part*4+3) had two
 * conflicts: the four key rows a warp read at once were 4 padded rows apart
 * (4 x 33 float4, the same bank quarter for part 0 and 2: 2-way), and the
 * probability stores r*17 + part*4 + kk hit equal banks for rows 4 apart
 * (2-way). Now, with 16-byte accesses served 8 lanes at a time:
 *   - K reads: lanes tx = 0..7 read rows tx + 16j, consecutive rows whose
 *     D + 4 float stride (D / 4 + 1 float4, odd) puts them in 8 distinct
 *     16-byte bank groups; the other half-warp reads the same addresses.
 *   - Q and P reads: the warp reads two rows 4 apart, which the +4 padding
 *     (4 x (D / 4 + 1) and 4 x 17 float4, both = 4 mod 8) keeps apart.
 *   - P stores (scalar): 16 consecutive floats per half-warp, the halves 4
 *     rows = 272 floats = 16 banks apart: all 32 banks.
 *   - V reads: 16 consecutive float4 of one row, the halves broadcast.
 *   - staging stores: consecutive float4 of one row.
 * Two blocks fit an SM at D = 128 (98 KiB each), one at D = 256 (194 KiB),
 * which needs the opt-in above 48 KiB (cudaFuncSetAttribute here; the
 * backend checks the device's limit first).
 *
 * Needs head_dim % 4 == 0, head_dim <= PB_TILE_MAX_HEAD_DIM and 16-byte
 * aligned rows (checked by the caller, pb_cuda_attention_tiled_ok and the
 * backend's pointer check). */
#include <math.h>

#include "kernels.cuh"

#define PB_TILE_ROWS 64
#define PB_TILE_K 64
#define PB_TILE_THREADS 256
#define PB_TILE_MAX_HEAD_DIM 256
/* At most this many query heads per block: 8 positions per tile at least. */
#define PB_TILE_MAX_GROUP_HEADS 8
#define PB_TILE_P_STRIDE (PB_TILE_K + 4)

int pb_cuda_attention_tiled_ok(int head_dim) {
    return head_dim > 0 && head_dim % 4 == 0 && head_dim <= PB_TILE_MAX_HEAD_DIM;
}

/* Query heads per block: the largest power of two dividing the GQA group,
 * up to PB_TILE_MAX_GROUP_HEADS (it must divide PB_TILE_ROWS). */
static int pb_tile_group_heads(int n_heads, int n_kv_heads) {
    const int group = n_heads / n_kv_heads;
    int heads = 1;
    while (heads < PB_TILE_MAX_GROUP_HEADS && group % (heads * 2) == 0)
        heads *= 2;
    return heads;
}

int pb_cuda_attention_tile_queries(int n_heads, int n_kv_heads) {
    return PB_TILE_ROWS / pb_tile_group_heads(n_heads, n_kv_heads);
}

/* The compiled head size a head_dim runs under. */
static int pb_tile_padded_head_dim(int head_dim) { return head_dim <= 64 ? 64 : head_dim <= 128 ? 128 : 256; }

size_t pb_cuda_attention_tiled_shared_bytes(int head_dim) {
    const size_t d = (size_t)pb_tile_padded_head_dim(head_dim);
    /* Q (ROWS, d + 4) | K (TILE_K, d + 4), later P (ROWS, P_STRIDE) | V (TILE_K, d) */
    return sizeof(float) * ((size_t)PB_TILE_ROWS * (d + 4) + (size_t)PB_TILE_K * (d + 4) + (size_t)PB_TILE_K * d);
}

static_assert(PB_TILE_ROWS == 64 && PB_TILE_K == 64 && PB_TILE_THREADS == 256, "the thread layout assumes these");
static_assert(PB_TILE_ROWS * PB_TILE_P_STRIDE <= PB_TILE_K * (64 + 4), "P must fit in the K tile");

/* The steps of pb_attention_tiled_kernel, in the order it runs them. tx, ty:
 * the thread's place in the 16 x 16 layout (keys tx + 16j, output columns
 * 4tx + 64g, rows 4ty .. 4ty + 3). */

/* Q tile: row r = (position r / group_heads, head head0 + r % group_heads),
 * whose group_heads heads lie side by side in q. Rows past n_pos zero
 * (their results are never written). */
template <int D>
static __device__ __forceinline__ void pb_tile_load_q(float *q_tile, const float *q, const pb_cuda_attention_job &job,
                                                      int t0, int n_pos, int n_heads, int head0, int group_heads,
                                                      int head_dim) {
    constexpr int QS = D + 4;
    const int hd4 = head_dim / 4;
    for (int idx = threadIdx.x; idx < PB_TILE_ROWS * hd4; idx += PB_TILE_THREADS) {
        const int r = idx / hd4, c4 = idx % hd4;
        const int pos = r / group_heads;
        float4 value = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (pos < n_pos)
            value = *(const float4 *)(q +
                                      (((size_t)job.q_row + t0 + pos) * n_heads + head0 + r % group_heads) * head_dim +
                                      4 * c4);
        *(float4 *)(q_tile + r * QS + 4 * c4) = value;
    }
}

/* K and V rows k0 .. k0 + 63 (zeros past n_keys and past head_dim): D / 16
 * independent 16-byte loads of each per thread in flight. column: the
 * key-value head's first column; kv_stride: floats between key rows. */
template <int D>
static __device__ __forceinline__ void pb_tile_load_kv(float *k_tile, float *v_tile, const pb_cuda_attention_job &job,
                                                       int k0, int n_keys, size_t column, size_t kv_stride, int hd4) {
    constexpr int KS = D + 4, VS = D;
#pragma unroll 4
    for (int it = 0; it < PB_TILE_K * (D / 4) / PB_TILE_THREADS; it++) {
        const int idx = threadIdx.x + it * PB_TILE_THREADS;
        const int kk = idx / (D / 4), c4 = idx % (D / 4);
        const int j = k0 + kk;
        float4 kv = make_float4(0.0f, 0.0f, 0.0f, 0.0f), vv = kv;
        if (j < n_keys && c4 < hd4) {
            const size_t offset = column + 4 * (size_t)c4;
            const float *ks = j < job.p0 ? job.k_prefix + (size_t)j * kv_stride + offset
                                         : job.k_new + (size_t)(j - job.p0) * kv_stride + offset;
            const float *vs = j < job.p0 ? job.v_prefix + (size_t)j * kv_stride + offset
                                         : job.v_new + (size_t)(j - job.p0) * kv_stride + offset;
            kv = *(const float4 *)ks;
            vv = *(const float4 *)vs;
        }
        *(float4 *)(k_tile + kk * KS + 4 * c4) = kv;
        *(float4 *)(v_tile + kk * VS + 4 * c4) = vv;
    }
}

/* s = the dot products of rows 4ty+i with keys tx + 16j (not yet scaled: the
 * reference's order is the dot product, then times scale). */
template <int D>
static __device__ __forceinline__ void pb_tile_dot_scores(float (&s)[4][4], const float *q_tile, const float *k_tile,
                                                          int hd4, int tx, int ty) {
    constexpr int QS = D + 4, KS = D + 4;
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            s[i][j] = 0.0f;
#pragma unroll 2
    for (int c4 = 0; c4 < hd4; c4++) {
        float4 a[4], b[4];
        for (int i = 0; i < 4; i++)
            a[i] = *(const float4 *)(q_tile + (4 * ty + i) * QS + 4 * c4);
        for (int j = 0; j < 4; j++)
            b[j] = *(const float4 *)(k_tile + (tx + 16 * j) * KS + 4 * c4);
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 4; j++) {
                s[i][j] += a[i].x * b[j].x;
                s[i][j] += a[i].y * b[j].y;
                s[i][j] += a[i].z * b[j].z;
                s[i][j] += a[i].w * b[j].w;
            }
    }
}

/* Keys [*begin, *end) some query of positions first_position ..
 * last_position sees, *begin rounded down to a key tile: the key tiles a
 * query tile visits (host and device). */
static __host__ __device__ __forceinline__ void pb_tile_key_range(int first_position, int last_position, int window,
                                                                  int *begin, int *end) {
    *begin = pb_attention_window_start(window, first_position) / PB_TILE_K * PB_TILE_K;
    *end = last_position + 1;
}

/* Scores (pb_attention_score) and the mask (masked: the key tile crosses
 * the diagonal or a window's start; keys past n_keys lie past every row's
 * position, so the mask covers them too), then the online-softmax step: the
 * row maxima over its 16 lanes, the probabilities p = e^(s - new max) and the
 * correction e^(old max - new max) the earlier sums and outputs take.
 * running_sum: this lane's share. A row whose keys all lie in later tiles
 * (a window starting past this one) sees only -inf here and keeps its empty
 * state (max -inf, sum 0, acc 0) until its first visible key. */
static __device__ __forceinline__ void pb_tile_online_softmax(float (&s)[4][4], float (&p)[4][4],
                                                              float (&correction)[4], float (&running_max)[4],
                                                              float (&running_sum)[4], const int (&position)[4],
                                                              bool masked, int k0, int tx,
                                                              const pb_cuda_attention_score &score) {
    for (int i = 0; i < 4; i++) {
        float tile_max = -INFINITY;
        const int first_key = pb_attention_window_start(score.window, position[i]);
        for (int j = 0; j < 4; j++) {
            const int key = k0 + tx + 16 * j;
            const bool visible = !masked || (key <= position[i] && key >= first_key);
            s[i][j] = visible ? pb_attention_score(s[i][j], score) : -INFINITY;
            tile_max = fmaxf(tile_max, s[i][j]);
        }
        for (int offset = 1; offset < 16; offset *= 2)  // the row's 16 lanes
            tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, offset));
        const float new_max = fmaxf(running_max[i], tile_max);
        /* A row with no key yet keeps its empty state: no exp(-inf - -inf). */
        correction[i] = new_max == -INFINITY ? 1.0f : expf(running_max[i] - new_max);
        float sum = 0.0f;
        for (int j = 0; j < 4; j++) {
            p[i][j] = new_max == -INFINITY ? 0.0f : expf(s[i][j] - new_max);
            sum += p[i][j];
        }
        running_sum[i] = running_sum[i] * correction[i] + sum;
        running_max[i] = new_max;
    }
}

/* Once every thread's scores have read K, P takes its place: this thread's
 * 16 probabilities, which the same half-warp reads back (hence __syncwarp). */
static __device__ __forceinline__ void pb_tile_store_p(float *p_tile, const float (&p)[4][4], int tx, int ty) {
    __syncthreads();
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 4; j++)
            p_tile[(4 * ty + i) * PB_TILE_P_STRIDE + tx + 16 * j] = p[i][j];
    __syncwarp();
}

/* acc = acc * correction + P V over the keys of the tile at k0, 4 at a time. */
template <int D>
static __device__ __forceinline__ void pb_tile_accumulate_pv(float4 (&acc)[4][D / 64], const float (&correction)[4],
                                                             const float *p_tile, const float *v_tile, int k0,
                                                             int n_keys, int tx, int ty) {
    constexpr int VS = D, PS = PB_TILE_P_STRIDE, G = D / 64;
    for (int i = 0; i < 4; i++)
        for (int g = 0; g < G; g++) {
            acc[i][g].x *= correction[i];
            acc[i][g].y *= correction[i];
            acc[i][g].z *= correction[i];
            acc[i][g].w *= correction[i];
        }
    const int key_end = min(PB_TILE_K, n_keys - k0);  // past it P is 0 and V is 0
    for (int kk = 0; kk < key_end; kk += 4) {
        float4 pr[4];
        for (int i = 0; i < 4; i++)
            pr[i] = *(const float4 *)(p_tile + (4 * ty + i) * PS + kk);
#pragma unroll
        for (int u = 0; u < 4; u++) {
            for (int g = 0; g < G; g++) {
                const float4 v = *(const float4 *)(v_tile + (kk + u) * VS + 4 * tx + 64 * g);
                for (int i = 0; i < 4; i++) {
                    const float pu = u == 0 ? pr[i].x : u == 1 ? pr[i].y : u == 2 ? pr[i].z : pr[i].w;
                    acc[i][g].x += pu * v.x;
                    acc[i][g].y += pu * v.y;
                    acc[i][g].z += pu * v.z;
                    acc[i][g].w += pu * v.w;
                }
            }
        }
    }
}

/* out rows of this thread: acc divided by the row's sum over its 16 lanes
 * (no key at all: zeros); rows past n_pos are not written. */
template <int D>
static __device__ __forceinline__ void
pb_tile_write_output(float *out, const float4 (&acc)[4][D / 64], const float (&running_sum)[4],
                     const pb_cuda_attention_job &job, int t0, int n_pos, int n_heads, int head0, int group_heads,
                     int head_dim, int tx, int ty) {
    constexpr int G = D / 64;
    for (int i = 0; i < 4; i++) {
        float total = running_sum[i];
        for (int offset = 1; offset < 16; offset *= 2)
            total += __shfl_xor_sync(0xffffffffu, total, offset);
        const int r = 4 * ty + i, pos = r / group_heads;
        if (pos >= n_pos)
            continue;
        float *dst = out + (((size_t)job.q_row + t0 + pos) * n_heads + head0 + r % group_heads) * head_dim;
        const float inv = total == 0.0f ? 0.0f : 1.0f / total;
        for (int g = 0; g < G; g++) {
            const int col = 4 * tx + 64 * g;
            if (col < head_dim)
                *(float4 *)(dst + col) = make_float4(acc[i][g].x * inv, acc[i][g].y * inv, acc[i][g].z * inv,
                                                     acc[i][g].w * inv);
        }
    }
}

/* grid (tiles of the launch, n_heads / group_heads), block PB_TILE_THREADS,
 * dynamic shared memory pb_cuda_attention_tiled_shared_bytes(head_dim);
 * D = pb_tile_padded_head_dim(head_dim).
 * out, q (packed rows, n_heads, head_dim); jobs by value (__grid_constant__),
 * first_tile ascending from 0 (job j owns tiles [first_tile, first_tile +
 * ceil(n / tile positions))). */
template <int D>
static __global__ void __launch_bounds__(PB_TILE_THREADS, D <= 128 ? 2 : 1)
    pb_attention_tiled_kernel(float *out, const float *q, const __grid_constant__ pb_cuda_attention_batch jobs,
                              int n_heads, int n_kv_heads, int head_dim, int group_heads,
                              pb_cuda_attention_score score) {
    constexpr int QS = D + 4, KS = D + 4, G = D / 64;
    extern __shared__ float4 shared4[];
    float *q_tile = (float *)shared4;            // (ROWS, QS)
    float *k_tile = q_tile + PB_TILE_ROWS * QS;  // (TILE_K, KS)
    float *p_tile = k_tile;                      // (ROWS, PB_TILE_P_STRIDE), once the scores are read
    float *v_tile = k_tile + PB_TILE_K * KS;     // (TILE_K, D)

    const int head0 = blockIdx.y * group_heads;
    const pb_cuda_attention_job &job = jobs.job[pb_cuda_find_job(jobs, blockIdx.x, 1)];
    const int tile_positions = PB_TILE_ROWS / group_heads;
    /* A job's tiles run last query tile first: the causal triangle's heavy
     * tiles start early and the light ones fill the tail of the grid. */
    const int job_tiles = (job.n + tile_positions - 1) / tile_positions;
    const int t0 = (job_tiles - 1 - ((int)blockIdx.x - job.first_tile)) * tile_positions;
    const int n_pos = min(tile_positions, job.n - t0);  // queries of this tile, 1 .. tile_positions
    const int kv_head = head0 / (n_heads / n_kv_heads);
    const int hd4 = head_dim / 4;
    const size_t kv_stride = (size_t)n_kv_heads * head_dim;
    const size_t column = (size_t)kv_head * head_dim;
    const int first_position = job.p0 + t0;  // the tile's first query attends keys .. first_position
    const int last_position = first_position + n_pos - 1;
    int k_begin, n_keys;  // key tiles from k_begin (a tile start) up to the keys any row attends, n_keys
    pb_tile_key_range(first_position, last_position, score.window, &k_begin, &n_keys);
    /* Keys from here on lie in every row's window: tiles wholly in
     * [window_all, first_position] need no mask. */
    const int window_all = pb_attention_window_start(score.window, last_position);

    const int tid = threadIdx.x;
    const int tx = tid % 16;  // keys tx + 16j; output columns 4tx + 64g
    const int ty = tid / 16;  // rows 4ty .. 4ty + 3 (a half-warp per ty)

    pb_tile_load_q<D>(q_tile, q, job, t0, n_pos, n_heads, head0, group_heads, head_dim);

    int position[4];  // query position of each of this thread's rows
    for (int i = 0; i < 4; i++)
        position[i] = first_position + (4 * ty + i) / group_heads;
    float running_max[4], running_sum[4];  // running_sum: this lane's share of the row's sum
    float4 acc[4][G];                      // (row i, columns 4tx + 64g .. + 3), unnormalised
    for (int i = 0; i < 4; i++) {
        running_max[i] = -INFINITY;
        running_sum[i] = 0.0f;
        for (int g = 0; g < G; g++)
            acc[i][g] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }

    for (int k0 = k_begin; k0 < n_keys; k0 += PB_TILE_K) {
        /* Nobody still reads the last tile's P (in K's place) or V, and the Q
         * tile is complete the first time round. */
        __syncthreads();
        pb_tile_load_kv<D>(k_tile, v_tile, job, k0, n_keys, column, kv_stride, hd4);
        __syncthreads();

        float s[4][4], p[4][4], correction[4];
        pb_tile_dot_scores<D>(s, q_tile, k_tile, hd4, tx, ty);
        /* Masks only on tiles that cross the diagonal or a window's start. */
        const bool masked = k0 + PB_TILE_K - 1 > first_position || k0 < window_all;
        pb_tile_online_softmax(s, p, correction, running_max, running_sum, position, masked, k0, tx, score);
        pb_tile_store_p(p_tile, p, tx, ty);
        pb_tile_accumulate_pv<D>(acc, correction, p_tile, v_tile, k0, n_keys, tx, ty);
    }

    pb_tile_write_output<D>(out, acc, running_sum, job, t0, n_pos, n_heads, head0, group_heads, head_dim, tx, ty);
}

template <int D>
static cudaError_t pb_launch_tiled(cudaStream_t stream, float *out, const float *q, const pb_cuda_attention_job *jobs,
                                   int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                   pb_cuda_attention_score score) {
    const int group_heads = pb_tile_group_heads(n_heads, n_kv_heads);
    const int tile_positions = PB_TILE_ROWS / group_heads;
    const size_t shared_bytes = pb_cuda_attention_tiled_shared_bytes(head_dim);
    auto *const kernel = pb_attention_tiled_kernel<D>;
    if (shared_bytes > 48 * 1024) {
        /* Past 48 KiB a kernel must opt in; the caller checked the device's
         * limit (cudaDevAttrMaxSharedMemoryPerBlockOptin). */
        const cudaError_t error = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                       (int)shared_bytes);
        if (error != cudaSuccess)
            return error;
    }
    pb_cuda_attention_batch batch;
    for (int first = 0; first < n_jobs; first += PB_ATTENTION_JOBS_PER_LAUNCH) {
        const int count = n_jobs - first < PB_ATTENTION_JOBS_PER_LAUNCH ? n_jobs - first : PB_ATTENTION_JOBS_PER_LAUNCH;
        const int tiles = pb_cuda_attention_batch_fill(&batch, jobs, first, count, tile_positions);
        if (tiles == 0)
            continue;
        const dim3 grid((unsigned)tiles, (unsigned)(n_heads / group_heads));
        kernel<<<grid, PB_TILE_THREADS, shared_bytes, stream>>>(out, q, batch, n_heads, n_kv_heads, head_dim,
                                                                group_heads, score);
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess)
            return error;
    }
    return cudaSuccess;
}

cudaError_t pb_cuda_launch_attention_tiled(cudaStream_t stream, float *out, const float *q,
                                           const pb_cuda_attention_job *jobs, int n_jobs, int n_heads, int n_kv_heads,
                                           int head_dim, pb_cuda_attention_score score) {
    switch (pb_tile_padded_head_dim(head_dim)) {
    case 64: return pb_launch_tiled<64>(stream, out, q, jobs, n_jobs, n_heads, n_kv_heads, head_dim, score);
    case 128: return pb_launch_tiled<128>(stream, out, q, jobs, n_jobs, n_heads, n_kv_heads, head_dim, score);
    default: return pb_launch_tiled<256>(stream, out, q, jobs, n_jobs, n_heads, n_kv_heads, head_dim, score);
    }
}

int64_t pb_cuda_attention_tiled_key_tiles(const pb_cuda_attention_job *jobs, int n_jobs, int tile_q, int window) {
    int64_t visited = 0;
    for (int j = 0; j < n_jobs; j++)
        for (int t0 = 0; t0 < jobs[j].n; t0 += tile_q) {
            const int n_pos = jobs[j].n - t0 < tile_q ? jobs[j].n - t0 : tile_q;
            int begin, end;
            pb_tile_key_range(jobs[j].p0 + t0, jobs[j].p0 + t0 + n_pos - 1, window, &begin, &end);
            visited += (end - begin + PB_TILE_K - 1) / PB_TILE_K;
        }
    return visited;
}
