/* metric_rows on the device (backend.h): one metric value per row of logits,
 * so that a patching batch brings back one double per row instead of its
 * (rows, vocab) logits. The arithmetic is metric.c's, in double: log-sum-exp
 * with the maximum of the same set subtracted, so large logits and token
 * sets with probability near 1 stay exact; only the summation order differs.
 *
 * One block of PB_CUDA_BLOCK threads per row. Pass 0 flags non-finite logits
 * and bad indices (the row gets NaN; the caller names the entry); pass 1
 * takes the maxima, pass 2 the sums of exponentials, pass 3 (kl only) the
 * sum of p_ref * (log p_ref - log p). logprob and refusal_score test
 * membership in the token set through a bitmap of the row's columns in
 * shared memory; logit_diff reads its few columns on one thread, in
 * metric.c's order. */
#include <math.h>

#include "backend_cuda_impl.cuh"

/* The token-set bitmap is one bit per column in dynamic shared memory. A
 * block may use 48 KiB of shared memory without opting in; 1 KiB of that
 * is left to the kernel's static scratch. 47 KiB cover 385024 columns. */
#define PB_METRIC_MAX_BITMAP_BYTES (47 * 1024)

static __device__ double pb_metric_warp_reduce(double value, bool is_max) {
    for (int offset = PB_CUDA_WARP / 2; offset > 0; offset /= 2) {
        const double other = __shfl_xor_sync(0xffffffffu, value, offset);
        value = is_max ? fmax(value, other) : value + other;
    }
    return value;
}

/* Sum (or max) of `value` over the block, returned to every thread.
 * scratch: PB_CUDA_WARP + 1 doubles of shared memory. Every thread of the
 * block must call it (it synchronises); blockDim.x is a multiple of 32. */
static __device__ double pb_metric_block_reduce(double value, bool is_max, double *scratch) {
    const int lane = threadIdx.x % PB_CUDA_WARP;
    const int warp = threadIdx.x / PB_CUDA_WARP;
    const int n_warps = blockDim.x / PB_CUDA_WARP;
    value = pb_metric_warp_reduce(value, is_max);
    __syncthreads(); /* every thread has read the previous call's result */
    if (lane == 0)
        scratch[warp] = value;
    __syncthreads();
    if (warp == 0) {
        double total = lane < n_warps ? scratch[lane] : (is_max ? -INFINITY : 0.0);
        total = pb_metric_warp_reduce(total, is_max);
        if (lane == 0)
            scratch[PB_CUDA_WARP] = total;
    }
    __syncthreads();
    return scratch[PB_CUDA_WARP];
}

static __device__ __forceinline__ bool pb_metric_member(const unsigned *bitmap, int column) {
    return (bitmap[column / 32] >> (column % 32)) & 1u;
}

/* The steps of pb_metric_kernel. Every thread of the block calls each of them
 * (the ones that reduce synchronise); scratch is the kernel's PB_CUDA_WARP + 1
 * doubles for pb_metric_block_reduce. */

/* Pass 0: whether the row's result is NaN, the same on every thread: a
 * non-finite logit, an index outside the row, or (kl) a reference row
 * outside ref_logprobs. */
static __device__ __forceinline__ bool pb_metric_row_is_bad(const float *x, int n_out, int kind,
                                                            const int32_t *positive, int n_positive,
                                                            const int32_t *negative, int n_negative,
                                                            const int32_t *ref_row, size_t row, int n_ref,
                                                            double *scratch) {
    double bad = 0.0;
    for (int v = threadIdx.x; v < n_out; v += blockDim.x)
        if (!isfinite(x[v]))
            bad = 1.0;
    for (int i = threadIdx.x; i < n_positive; i += blockDim.x)
        if (positive[i] < 0 || positive[i] >= n_out)
            bad = 1.0;
    for (int i = threadIdx.x; i < n_negative; i += blockDim.x)
        if (negative[i] < 0 || negative[i] >= n_out)
            bad = 1.0;
    if (kind == PB_METRIC_KL && threadIdx.x == 0 && (ref_row[row] < 0 || ref_row[row] >= n_ref))
        bad = 1.0;
    bad = pb_metric_block_reduce(bad, true, scratch);
    return bad != 0.0;
}

/* logit_diff: a handful of columns, read by one thread in metric.c's order. */
static __device__ __forceinline__ void pb_metric_logit_diff(double *out_row, const float *x, const int32_t *positive,
                                                            int n_positive, const int32_t *negative, int n_negative) {
    if (threadIdx.x == 0) {
        double pos = 0.0, neg = 0.0;
        for (int i = 0; i < n_positive; i++)
            pos += x[positive[i]];
        for (int i = 0; i < n_negative; i++)
            neg += x[negative[i]];
        *out_row = pos / n_positive - neg / n_negative;
    }
}

/* The token set as a bitmap of the row's n_out columns. */
static __device__ __forceinline__ void pb_metric_fill_bitmap(unsigned *bitmap, int n_out, const int32_t *positive,
                                                             int n_positive) {
    const int words = n_out / 32 + (n_out % 32 != 0);
    for (int w = threadIdx.x; w < words; w += blockDim.x)
        bitmap[w] = 0u;
    __syncthreads();
    /* repeated ids set the same bit: the set is the distinct ids */
    for (int i = threadIdx.x; i < n_positive; i += blockDim.x)
        atomicOr(&bitmap[positive[i] / 32], 1u << (positive[i] % 32));
    __syncthreads();
}

/* A value for all columns, the token set, and the rest (set and rest only
 * when the kind uses a set). */
struct pb_metric_parts {
    double all, set, rest;
};

/* Pass 1: maxima over all columns, the set, and the rest. */
static __device__ __forceinline__ pb_metric_parts pb_metric_maxima(const float *x, int n_out, bool uses_set,
                                                                   const unsigned *bitmap, double *scratch) {
    double max_all = -INFINITY, max_set = -INFINITY, max_rest = -INFINITY;
    for (int v = threadIdx.x; v < n_out; v += blockDim.x) {
        const double value = x[v];
        max_all = fmax(max_all, value);
        if (uses_set) {
            if (pb_metric_member(bitmap, v))
                max_set = fmax(max_set, value);
            else
                max_rest = fmax(max_rest, value);
        }
    }
    max_all = pb_metric_block_reduce(max_all, true, scratch);
    if (uses_set) {
        max_set = pb_metric_block_reduce(max_set, true, scratch);
        max_rest = pb_metric_block_reduce(max_rest, true, scratch);
    }
    return pb_metric_parts{max_all, max_set, max_rest};
}

/* Pass 2: sums of e^(x - max) of each part. An empty part (the rest, when
 * the set is every column) adds nothing: its log-sum-exp is -inf + log 0 =
 * -inf, as in metric.c. */
static __device__ __forceinline__ pb_metric_parts pb_metric_exp_sums(const float *x, int n_out, bool uses_set,
                                                                     const unsigned *bitmap, pb_metric_parts max,
                                                                     double *scratch) {
    double sum_all = 0.0, sum_set = 0.0, sum_rest = 0.0;
    for (int v = threadIdx.x; v < n_out; v += blockDim.x) {
        const double value = x[v];
        sum_all += exp(value - max.all);
        if (uses_set) {
            if (pb_metric_member(bitmap, v))
                sum_set += exp(value - max.set);
            else
                sum_rest += exp(value - max.rest);
        }
    }
    sum_all = pb_metric_block_reduce(sum_all, false, scratch);
    if (uses_set) {
        sum_set = pb_metric_block_reduce(sum_set, false, scratch);
        sum_rest = pb_metric_block_reduce(sum_rest, false, scratch);
    }
    return pb_metric_parts{sum_all, sum_set, sum_rest};
}

/* Pass 3 (kl): sum over p_ref > 0 of p_ref (log p_ref - log p), returned to
 * every thread. ref: the row's reference log-probabilities (n_out). */
static __device__ __forceinline__ double pb_metric_kl_sum(const float *x, const double *ref, int n_out, double lse_all,
                                                          double *scratch) {
    double kl = 0.0;
    for (int v = threadIdx.x; v < n_out; v += blockDim.x) {
        const double p = exp(ref[v]);
        if (p > 0.0)
            kl += p * (ref[v] - ((double)x[v] - lse_all));
    }
    return pb_metric_block_reduce(kl, false, scratch);
}

/* grid (rows), block PB_CUDA_BLOCK; dynamic shared memory: the bitmap,
 * (n_out + 31) / 32 words, for logprob and refusal_score.
 * out (rows); logits (rows, n_out); positive (n_positive); negative
 * (n_negative); ref_logprobs (n_ref, n_out); ref_row (rows). */
static __global__ void pb_metric_kernel(double *out, const float *logits, int n_out, int kind, const int32_t *positive,
                                        int n_positive, const int32_t *negative, int n_negative,
                                        const double *ref_logprobs, const int32_t *ref_row, int n_ref) {
    extern __shared__ unsigned bitmap[];  // ((n_out + 31) / 32)
    __shared__ double scratch[PB_CUDA_WARP + 1];
    const size_t row = blockIdx.x;
    const float *x = logits + row * (size_t)n_out;  // (n_out)
    const bool uses_set = kind == PB_METRIC_LOGPROB || kind == PB_METRIC_REFUSAL_SCORE;

    if (pb_metric_row_is_bad(x, n_out, kind, positive, n_positive, negative, n_negative, ref_row, row, n_ref,
                             scratch)) { /* block-uniform: the whole block leaves */
        if (threadIdx.x == 0)
            out[row] = NAN;
        return;
    }
    if (kind == PB_METRIC_LOGIT_DIFF) {
        pb_metric_logit_diff(&out[row], x, positive, n_positive, negative, n_negative);
        return;
    }

    if (uses_set)
        pb_metric_fill_bitmap(bitmap, n_out, positive, n_positive);
    const pb_metric_parts max = pb_metric_maxima(x, n_out, uses_set, bitmap, scratch);
    const pb_metric_parts sum = pb_metric_exp_sums(x, n_out, uses_set, bitmap, max, scratch);
    const double lse_all = max.all + log(sum.all);

    if (kind == PB_METRIC_LOGPROB || kind == PB_METRIC_REFUSAL_SCORE) {
        if (threadIdx.x == 0) {
            const double lse_set = max.set + log(sum.set);
            out[row] = kind == PB_METRIC_LOGPROB ? lse_set - lse_all : lse_set - (max.rest + log(sum.rest));
        }
        return;
    }

    const double *ref = ref_logprobs + (size_t)ref_row[row] * (size_t)n_out;  // (n_out)
    const double kl = pb_metric_kl_sum(x, ref, n_out, lse_all, scratch);
    if (threadIdx.x == 0)
        out[row] = kl;
}

pb_status pb_cuda_metric_rows(pb_backend *backend, double *out, const float *logits, int rows, int n_out,
                              pb_metric_kind kind, const int32_t *positive, int n_positive, const int32_t *negative,
                              int n_negative, const double *ref_logprobs, const int32_t *ref_row, int n_ref) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t unused = 0;
    PB_TRY(pb_cuda_count(&unused, "metric_rows", rows, n_out, 1));
    PB_CUDA_REQUIRE(n_out > 0, "metric_rows");
    /* Only the arrays a kind reads are passed on; the others become empty. */
    switch (kind) {
    case PB_METRIC_LOGIT_DIFF:
        PB_CUDA_REQUIRE(n_positive > 0 && n_negative > 0 && positive != NULL && negative != NULL, "metric_rows");
        ref_logprobs = NULL;
        ref_row = NULL;
        n_ref = 0;
        break;
    case PB_METRIC_LOGPROB:
    case PB_METRIC_REFUSAL_SCORE:
        PB_CUDA_REQUIRE(n_positive > 0 && positive != NULL, "metric_rows");
        negative = NULL;
        n_negative = 0;
        ref_logprobs = NULL;
        ref_row = NULL;
        n_ref = 0;
        break;
    case PB_METRIC_KL:
        PB_CUDA_REQUIRE(n_ref > 0 && ref_logprobs != NULL && ref_row != NULL, "metric_rows");
        positive = negative = NULL;
        n_positive = n_negative = 0;
        break;
    default: return pb_fail(PB_ERR_UNSUPPORTED, "cuda metric_rows: metric kind %d is computed on the host", (int)kind);
    }
    if (rows == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && logits != NULL, "metric_rows");
    size_t shared_bytes = 0;
    if (kind == PB_METRIC_LOGPROB || kind == PB_METRIC_REFUSAL_SCORE) {
        shared_bytes = sizeof(unsigned) * (((size_t)n_out + 31) / 32);
        if (shared_bytes > PB_METRIC_MAX_BITMAP_BYTES)
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "cuda metric_rows: a vocabulary of %d needs a %zu-byte token bitmap (max %d)", n_out,
                           shared_bytes, PB_METRIC_MAX_BITMAP_BYTES);
    }
    PB_TRY(pb_cuda_enter(self));
    pb_metric_kernel<<<(unsigned)rows, PB_CUDA_BLOCK, shared_bytes, self->stream>>>(
        out, logits, n_out, (int)kind, positive, n_positive, negative, n_negative, ref_logprobs, ref_row, n_ref);
    PB_CUDA_LAUNCHED(self, "metric", cudaGetLastError());
    return PB_OK;
}
