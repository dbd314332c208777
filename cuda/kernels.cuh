/* Kernel launchers of the CUDA backend, grouped by kind of op in .cu files
 * (elementwise.cu holds several small ops, convert.cu the 16-bit ones,
 * attention a file per variant), and the small device helpers they share. Each launcher enqueues its kernel on `stream` and
 * returns cudaGetLastError() (launch-configuration errors); errors raised while
 * the kernel runs surface at the next synchronising call.
 *
 * Sizes are validated by backend_cuda.cu before any launcher is called: every
 * count here is positive and every pointer valid device memory. */
#ifndef PB_CUDA_KERNELS_CUH
#define PB_CUDA_KERNELS_CUH

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <cuda_runtime.h>

#define PB_CUDA_WARP 32
/* Threads per block of the elementwise and row kernels. */
#define PB_CUDA_BLOCK 256
/* Grid-stride kernels never launch more blocks than this. */
#define PB_CUDA_MAX_BLOCKS 65535u
/* Warps per (query, head) block in attention; each keeps its own online
 * softmax state over a strided subset of the keys. */
#define PB_ATTENTION_WARPS 4

static inline unsigned pb_cuda_grid_for(size_t n) {
    size_t blocks = (n + PB_CUDA_BLOCK - 1) / PB_CUDA_BLOCK;
    return blocks > PB_CUDA_MAX_BLOCKS ? PB_CUDA_MAX_BLOCKS : (unsigned)blocks;
}

static __device__ __forceinline__ float pb_warp_sum(float value) {
    for (int offset = PB_CUDA_WARP / 2; offset > 0; offset /= 2)
        value += __shfl_xor_sync(0xffffffffu, value, offset);
    return value;
}

/* The sum (or with take_max the maximum) of `value` over the block in
 * double, returned to every thread. partial (one per warp) and total are
 * the caller's __shared__ storage: a header declares none, since the
 * kernel emulator rewrites only .cu files. blockDim.x must be a multiple of
 * the warp size. A second call may follow at once: every thread has read
 * *total before it reaches the next call's first barrier, and warp 0 reads
 * partial before this call's second one. */
static __device__ __forceinline__ double pb_block_reduce_double(double value, int take_max, double *partial,
                                                                double *total) {
    const int lane = threadIdx.x % PB_CUDA_WARP;
    const int warp = threadIdx.x / PB_CUDA_WARP;
    const int n_warps = blockDim.x / PB_CUDA_WARP;

    for (int offset = PB_CUDA_WARP / 2; offset > 0; offset /= 2) {
        const double other = __shfl_xor_sync(0xffffffffu, value, offset);
        value = take_max ? fmax(value, other) : value + other;
    }
    if (lane == 0)
        partial[warp] = value;
    __syncthreads();
    if (warp == 0) {
        double r = lane < n_warps ? partial[lane] : take_max ? -INFINITY : 0.0;
        for (int offset = PB_CUDA_WARP / 2; offset > 0; offset /= 2) {
            const double other = __shfl_xor_sync(0xffffffffu, r, offset);
            r = take_max ? fmax(r, other) : r + other;
        }
        if (lane == 0)
            *total = r;
    }
    __syncthreads();
    return *total;
}

/* How one layer's attention turns q.k into a weight (backend.h's
 * pb_attention_params, which the backend copies field by field): score =
 * dot * scale, then softcap * tanh(score / softcap) when softcap > 0; a query at
 * position i sees keys j with i - window < j <= i (window 0: all j <= i). */
typedef struct pb_cuda_attention_score {
    float scale;
    float softcap;
    int window;
} pb_cuda_attention_score;

/* The score of a visible key from its dot product, in fp32, in the
 * reference's order: scale, then the cap (tanhf, not a fast-math tanh). */
static __device__ __forceinline__ float pb_attention_score(float dot, const pb_cuda_attention_score &score) {
    const float scaled = dot * score.scale;
    return score.softcap > 0.0f ? score.softcap * tanhf(scaled / score.softcap) : scaled;
}

/* The first key a query at `position` sees: 0, or its window's start. Host
 * and device: the tiled kernel's tile range and its host-side count share it. */
static __host__ __device__ __forceinline__ int pb_attention_window_start(int window, int position) {
    const int first = window > 0 ? position - window + 1 : 0;
    return first > 0 ? first : 0;
}

/* One query head's attention, computed by one block of PB_ATTENTION_WARPS
 * warps (attention.cu, attention_jobs.cu): out_row (head_dim) = softmax over
 * keys first_key <= j < n_keys of pb_attention_score(q_row . k_j), applied to
 * the v_j. Keys j < split come from rows j of (k_a, v_a), the rest from rows
 * j - split of (k_b, v_b); rows are kv_stride floats apart (the key-value
 * head's slice already added). fp32 with an online softmax: warp w walks keys
 * first_key + w, first_key + w + W, ... (a sliding window costs its width,
 * not the prefix) keeping its running max m, denominator l and unnormalised
 * output acc (head_dim, in shared memory, lane-strided), then the warps'
 * states merge: out = sum_w e^(m_w - M) acc_w / sum_w e^(m_w - M) l_w. No
 * key: zeros. shared: (head_dim) q | (W, head_dim) acc | (W) m | (W) l, as
 * sized by pb_cuda_attention_shared_bytes. Every thread of the block must
 * call it. */
static __device__ __forceinline__ void pb_attend_block(float *out_row, const float *q_row, int first_key, int n_keys,
                                                       int split, const float *k_a, const float *v_a, const float *k_b,
                                                       const float *v_b, size_t kv_stride, int head_dim,
                                                       const pb_cuda_attention_score &score_params, float *shared) {
    float *q_shared = shared;                                             // (head_dim)
    float *acc_all = q_shared + head_dim;                                 // (W, head_dim)
    float *max_shared = acc_all + (size_t)PB_ATTENTION_WARPS * head_dim;  // (W)
    float *sum_shared = max_shared + PB_ATTENTION_WARPS;                  // (W)
    const int lane = threadIdx.x % PB_CUDA_WARP;
    const int warp = threadIdx.x / PB_CUDA_WARP;
    float *acc = acc_all + (size_t)warp * head_dim;  // (head_dim)

    for (int i = threadIdx.x; i < head_dim; i += blockDim.x)
        q_shared[i] = q_row[i];
    for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
        acc[i] = 0.0f;
    __syncthreads();

    float running_max = -INFINITY;
    float running_sum = 0.0f;
    for (int j = first_key + warp; j < n_keys; j += PB_ATTENTION_WARPS) {
        const float *k_row = j < split ? k_a + (size_t)j * kv_stride : k_b + (size_t)(j - split) * kv_stride;
        const float *v_row = j < split ? v_a + (size_t)j * kv_stride : v_b + (size_t)(j - split) * kv_stride;
        float dot = 0.0f;
        for (int i = lane; i < head_dim; i += PB_CUDA_WARP)
            dot += q_shared[i] * k_row[i];
        const float score = pb_attention_score(pb_warp_sum(dot), score_params);
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
        /* A warp that saw no key (m = -inf, l = 0, acc = 0) weighs 0, and no
         * exp(-inf - -inf) = NaN arises when no warp saw one. */
        weights[w] = max_shared[w] == -INFINITY ? 0.0f : expf(max_shared[w] - global_max);
        total += weights[w] * sum_shared[w];
    }
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float value = 0.0f;
        for (int w = 0; w < PB_ATTENTION_WARPS; w++)
            value += weights[w] * acc_all[(size_t)w * head_dim + i];
        out_row[i] = total == 0.0f ? 0.0f : value / total;  // no keys: zeros
    }
}

/* out (T, d) = table (vocab, d)[ids (T)] * scale (one fp32 product) */
cudaError_t pb_cuda_launch_embed(cudaStream_t stream, float *out, const float *table, const int32_t *ids, int T, int d,
                                 float scale);
/* out (T, d) = table (vocab, d) of bf16 (is_bf16) or fp16 [ids (T)], widened,
 * times scale (one fp32 product) */
cudaError_t pb_cuda_launch_embed16(cudaStream_t stream, float *out, const uint16_t *table, int is_bf16,
                                   const int32_t *ids, int T, int d, float scale);
/* out (n) of bf16 (is_bf16) or fp16 = x (n) rounded to nearest even */
cudaError_t pb_cuda_launch_round16(cudaStream_t stream, uint16_t *out, const float *x, size_t n, int is_bf16);
/* out (rows, d); x (rows, d); weight (d) or NULL */
cudaError_t pb_cuda_launch_rmsnorm(cudaStream_t stream, float *out, const float *x, const float *weight, int rows,
                                   int d, float eps);
/* out (rows, d) = (x - mean) / sqrt(var + eps) * weight + bias per row;
 * x (rows, d); weight, bias (d) or NULL; out may be x */
cudaError_t pb_cuda_launch_layernorm(cudaStream_t stream, float *out, const float *x, const float *weight,
                                     const float *bias, int rows, int d, float eps);
/* out (rows, n) += bias (n) */
cudaError_t pb_cuda_launch_add_bias(cudaStream_t stream, float *out, const float *bias, int rows, int n);
/* x (T, n_heads, head_dim) in place over the first rotary_dims (even, <=
 * head_dim) of each head; positions (T); inv_freq (rotary_dims / 2); cos
 * and sin multiplied by scale (LongRoPE's attention factor, else 1) */
cudaError_t pb_cuda_launch_rope(cudaStream_t stream, float *x, const int32_t *positions, const float *inv_freq, int T,
                                int n_heads, int head_dim, int rotary_dims, float scale);
/* Dynamic shared memory one attention block needs for this head_dim. */
size_t pb_cuda_attention_shared_bytes(int head_dim);
/* out, q (T, n_heads, head_dim); k, v (T_kv, n_kv_heads, head_dim) */
cudaError_t pb_cuda_launch_attention(cudaStream_t stream, float *out, const float *q, const float *k, const float *v,
                                     int T, int q_start, int n_heads, int n_kv_heads, int head_dim,
                                     pb_cuda_attention_score score);
/* One job of pb_cuda_launch_attention_jobs, as the kernel reads it from
 * device memory: pb_attention_job (backend.h) plus the job's first work row. */
typedef struct pb_cuda_attention_job {
    const float *k_prefix; /* (p0, kv_dim); unread when p0 == 0 (may be NULL) */
    const float *v_prefix;
    const float *k_new; /* (n, kv_dim) */
    const float *v_new;
    int first;      /* work rows [first, first + n): sum of n over the jobs before */
    int first_tile; /* tiled kernel: tiles [first_tile, + ceil(n / tile queries)), summed likewise */
    int q_row;      /* packed row of query 0 in q and out */
    int n;
    int p0;
} pb_cuda_attention_job;

/* Jobs per launch of the ragged attention kernels. The launchers take the
 * whole list in host memory and launch once per PB_ATTENTION_JOBS_PER_LAUNCH
 * jobs, each launch carrying its jobs by value as a kernel parameter (under
 * 4 KiB): nothing is uploaded and nothing waits, and the caller's list is
 * free at return. */
#define PB_ATTENTION_JOBS_PER_LAUNCH 64
typedef struct pb_cuda_attention_batch {
    pb_cuda_attention_job job[PB_ATTENTION_JOBS_PER_LAUNCH]; /* first, first_tile rebased to 0 */
    int n_jobs;
} pb_cuda_attention_batch;
/* Kernel parameters are limited to 4 KiB on every architecture we build for
 * (before CUDA 12.1); the kernels' other parameters take under 64 bytes. */
static_assert(sizeof(pb_cuda_attention_batch) + 64 <= 4096, "attention jobs per launch exceed the parameter limit");

/* The job of a launch holding work item `item` (a query row, or with tiles
 * a tile): the last job whose first (first_tile) is <= item. A job with no
 * queries starts where its successor does, so it is never the one found. */
static __device__ __forceinline__ int pb_cuda_find_job(const pb_cuda_attention_batch &jobs, int item, int tiles) {
    int lo = 0, hi = jobs.n_jobs - 1;
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if ((tiles ? jobs.job[mid].first_tile : jobs.job[mid].first) <= item)
            lo = mid;
        else
            hi = mid - 1;
    }
    return lo;
}

/* Ragged causal attention (backend.h, attention_jobs); shared memory as
 * pb_cuda_attention_shared_bytes(head_dim).
 * out, q (packed rows, n_heads, head_dim) device memory; jobs (n_jobs) HOST
 * memory, `first` ascending from 0 (a job's n may be 0). */
cudaError_t pb_cuda_launch_attention_jobs(cudaStream_t stream, float *out, const float *q,
                                          const pb_cuda_attention_job *jobs, int n_jobs, int n_heads, int n_kv_heads,
                                          int head_dim, pb_cuda_attention_score score);
/* The tiled variant (attention_tiled.cu) for jobs with many queries: whether
 * it takes this head_dim (the rows must also be 16-byte aligned), its tile
 * height in queries of one job (it depends on the GQA group, whose heads
 * share a block), its shared memory (more than 48 KiB from head_dim 65 on:
 * check it against cudaDevAttrMaxSharedMemoryPerBlockOptin). */
int pb_cuda_attention_tiled_ok(int head_dim);
int pb_cuda_attention_tile_queries(int n_heads, int n_kv_heads);
size_t pb_cuda_attention_tiled_shared_bytes(int head_dim);
/* Same contract as pb_cuda_launch_attention_jobs (jobs in host memory,
 * first_tile ascending from 0). */
cudaError_t pb_cuda_launch_attention_tiled(cudaStream_t stream, float *out, const float *q,
                                           const pb_cuda_attention_job *jobs, int n_jobs, int n_heads, int n_kv_heads,
                                           int head_dim, pb_cuda_attention_score score);
/* Key tiles the tiled kernel visits for the query tiles of jobs (n_jobs,
 * host memory) at tile_q queries per tile: what a sliding window saves,
 * computed with the kernel's own tile range (pb_tile_key_range). */
int64_t pb_cuda_attention_tiled_key_tiles(const pb_cuda_attention_job *jobs, int n_jobs, int tile_q, int window);
/* Copies jobs[first .. first + count) into *batch with first and
 * first_tile rebased to 0; returns the launch's rows, or with tile_q > 0
 * (the tiled kernel's queries per tile) its tiles. */
static inline int pb_cuda_attention_batch_fill(pb_cuda_attention_batch *batch, const pb_cuda_attention_job *jobs,
                                               int first, int count, int tile_q) {
    const int row0 = jobs[first].first, tile0 = jobs[first].first_tile;
    const pb_cuda_attention_job *last = &jobs[first + count - 1];
    for (int j = 0; j < count; j++) {
        batch->job[j] = jobs[first + j];
        batch->job[j].first -= row0;
        batch->job[j].first_tile -= tile0;
    }
    batch->n_jobs = count;
    return tile_q > 0 ? last->first_tile - tile0 + (last->n + tile_q - 1) / tile_q : last->first - row0 + last->n;
}
/* Up to PB_COPY_REGIONS_PER_LAUNCH regions of a batched copy, passed to the
 * kernel by value: region i copies n floats from src to dst. The layout of
 * one region is backend.h's pb_copy_region. */
#define PB_COPY_REGIONS_PER_LAUNCH 128
typedef struct pb_cuda_copy_region {
    float *dst;
    const float *src;
    size_t n;
} pb_cuda_copy_region;
typedef struct pb_cuda_copy_regions {
    pb_cuda_copy_region r[PB_COPY_REGIONS_PER_LAUNCH];
    int n; /* 1 .. PB_COPY_REGIONS_PER_LAUNCH */
} pb_cuda_copy_regions;
static_assert(sizeof(pb_cuda_copy_regions) <= 4096, "copy regions per launch exceed the parameter limit");
/* regions (n_regions) in host memory, free at return: one launch per
 * PB_COPY_REGIONS_PER_LAUNCH of them, each carrying its list by value. */
cudaError_t pb_cuda_launch_copy_regions(cudaStream_t stream, const pb_cuda_copy_region *regions, int n_regions);
/* The MLP activations the kernels compute: patchbay.h's pb_activation as
 * the kernels see it (backend_cuda_impl.cuh's pb_cuda_activation_of maps
 * one to the other and refuses the rest). */
typedef enum pb_cuda_activation {
    PB_CUDA_SILU,      /* g / (1 + e^-g) */
    PB_CUDA_GELU_TANH, /* g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))) */
    PB_CUDA_GELU,      /* g/2 (1 + erf(g / sqrt 2)) */
} pb_cuda_activation;
/* out (rows, width) = act(gate) * up; gate and up rows `stride` apart */
cudaError_t pb_cuda_launch_glu(cudaStream_t stream, float *out, const float *gate, const float *up, size_t rows,
                               size_t width, size_t stride, pb_cuda_activation act);
/* x (n) = act(x), in place */
cudaError_t pb_cuda_launch_activate(cudaStream_t stream, float *x, size_t n, pb_cuda_activation act);
/* x (n) = cap * tanh(x / cap), in place */
cudaError_t pb_cuda_launch_softcap(cudaStream_t stream, float *x, size_t n, float cap);
/* out (n) = a + b; out may alias a or b */
cudaError_t pb_cuda_launch_add(cudaStream_t stream, float *out, const float *a, const float *b, size_t n);
/* out (rows, k) fp32 = rows of quantised ggml_type blocks (quant.h's ids:
 * F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0 Q2_K..Q6_K), row r at src + r *
 * row_bytes (k a multiple of the type's block size; row_bytes = k / block *
 * block_bytes, or more for a column tile of wider rows), decoded bit for bit
 * as host/formats/quant.c's pb_dequantize (dequant.cu). src has no
 * alignment. cudaErrorInvalidValue for a type it does not decode (F32
 * included) or a k that is no multiple of the block, launching nothing. */
cudaError_t pb_cuda_launch_dequant_rows(cudaStream_t stream, float *out, const void *src, uint32_t ggml_type,
                                        size_t row_bytes, int rows, int k);
/* out (T, d) fp32 = the table's rows ids[t] (each d elements of ggml_type,
 * whole blocks, packed) decoded as pb_dequant_rows decodes them, then
 * multiplied by scale unless it is 1: the embedding of a quantised token
 * table. cudaErrorInvalidValue as pb_cuda_launch_dequant_rows. */
cudaError_t pb_cuda_launch_dequant_gather(cudaStream_t stream, float *out, const void *table, uint32_t ggml_type,
                                          const int32_t *ids, int T, int d, float scale);

/* ---- the activation backward pass (backward.cu; backend.h's contracts) ---- */
/* dx (rows, d) = (or += with accumulate) the gradient through
 * norm(x) * weight given dy; RMSNorm, or LayerNorm when centred; weight
 * (d) or NULL. One block per row, sums in double. */
cudaError_t pb_cuda_launch_norm_backward(cudaStream_t stream, float *dx, const float *x, const float *weight,
                                         const float *dy, int rows, int d, float eps, int centred, int accumulate);
/* d_up (n), d_gate (n) from dh (n) through act(gate) * up, or with gate
 * NULL through act(up) (d_gate unused); in double. d_gate may alias dh. */
cudaError_t pb_cuda_launch_glu_backward(cudaStream_t stream, float *d_gate, float *d_up, const float *dh,
                                        const float *gate, const float *up, size_t n, pb_cuda_activation act);
/* Doubles of scratch pb_cuda_launch_attention_backward needs for a chunk
 * of n_heads query heads (chunk_kv_heads * n_heads / n_kv_heads). */
size_t pb_cuda_attention_backward_scratch(int T, int n_heads);
/* The gradient through causal self-attention over T tokens (positions
 * 0 .. T - 1): dq (T, n_heads * head_dim), dk, dv (T, n_kv_heads *
 * head_dim) from dz (T, n_heads * head_dim); dpattern (n_heads, T, T) or
 * NULL, written inside each query's window. scratch: the probabilities
 * and the scores' gradients of chunk_kv_heads key-value heads' queries at
 * a time (pb_cuda_attention_backward_scratch doubles for those query
 * heads), two launches per chunk. Sums in double. */
cudaError_t pb_cuda_launch_attention_backward(cudaStream_t stream, float *dq, float *dk, float *dv, float *dpattern,
                                              const float *q, const float *k, const float *v, const float *dz,
                                              double *scratch, int chunk_kv_heads, int T, int n_heads, int n_kv_heads,
                                              int head_dim, pb_cuda_attention_score score);

#endif
