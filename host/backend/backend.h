/* The compute backend interface. The executor (model/exec.c), and through
 * it the forward passes (model/forward.c) and the patching engine
 * (patching/), are written against these ops only; the CPU backend
 * (backend_cpu.c), the naive reference backend (ops_ref.c) and the CUDA
 * backend (cuda/) implement them.
 *
 * Memory: every tensor an op touches lives in memory from ops->alloc of the
 * same backend ("device memory": plain host memory for the CPU backends).
 * Shapes are row-major, last index fastest. */
#ifndef PB_BACKEND_H
#define PB_BACKEND_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

typedef struct pb_backend pb_backend;

typedef struct pb_attention_job {
    int q_row;             /* first packed row of the job's queries and outputs */
    int n;                 /* queries (new tokens) */
    int p0;                /* prefix length: position of the first query */
    const float *k_prefix; /* (p0, kv_dim), may be NULL when p0 == 0 */
    const float *v_prefix;
    const float *k_new; /* (n, kv_dim) */
    const float *v_new;
} pb_attention_job;

/* How one layer's attention turns q.k into weights. */
typedef struct pb_attention_params {
    float scale;   /* score = q.k * scale (1 / sqrt(head_dim) in Llama) */
    float softcap; /* > 0: score = softcap * tanh(score / softcap), before the mask */
    int window;    /* > 0: the query at position i sees keys j with i - window < j <= i; 0: all j <= i */
} pb_attention_params;

/* params, or the Llama defaults (scale 1 / sqrt(head_dim)) when NULL. */
static inline pb_attention_params pb_attention_params_or_default(const pb_attention_params *params, int head_dim) {
    if (params)
        return *params;
    pb_attention_params plain = {1.0f / sqrtf((float)head_dim), 0.0f, 0};
    return plain;
}

/* First key a query at `position` sees: 0, or the window's start. */
static inline int pb_attention_first_key(const pb_attention_params *params, int position) {
    int first = params->window > 0 ? position - params->window + 1 : 0;
    return first > 0 ? first : 0;
}

/* One region of a batched copy: n floats from src to dst (backend memory). */
typedef struct pb_copy_region {
    float *dst;
    const float *src;
    size_t n;
} pb_copy_region;

/* The most bytes a device backend's attention backward holds at once for
 * the probabilities and the scores' gradients (2 * heads * T^2 doubles):
 * the heads go through in chunks of key-value heads under it, or one
 * key-value head's queries at a time where those alone need more. */
#define PB_ATTENTION_BACKWARD_SCRATCH ((size_t)1 << 30)

/* Key-value heads per chunk of the attention backward under that cap. */
static inline int pb_attention_backward_chunk(int T, int n_heads, int n_kv_heads) {
    size_t per_kv = 2 * sizeof(double) * (size_t)(n_heads / n_kv_heads) * (size_t)T * (size_t)T;
    size_t chunk = per_kv ? PB_ATTENTION_BACKWARD_SCRATCH / per_kv : (size_t)n_kv_heads;
    return chunk < 1 ? 1 : chunk > (size_t)n_kv_heads ? n_kv_heads : (int)chunk;
}

typedef struct pb_backend_ops {
    const char *name;
    void (*destroy)(pb_backend *backend);

    pb_status (*alloc)(pb_backend *backend, void **out, size_t bytes);
    void (*free)(pb_backend *backend, void *ptr); /* ptr may be NULL */
    pb_status (*upload)(pb_backend *backend, void *dst_device, const void *src_host, size_t bytes);
    pb_status (*download)(pb_backend *backend, void *dst_host, const void *src_device, size_t bytes);
    pb_status (*copy)(pb_backend *backend, void *dst_device, const void *src_device, size_t bytes);
    pb_status (*synchronize)(pb_backend *backend);

    /* out (T, d) = table[ids[t]] widened (or decoded) to fp32, times scale
     * (in fp32; 1: none), with table (vocab, d) of table_dtype (a quantised
     * one: CPU backends only); ids (T) in device memory. */
    pb_status (*embed)(pb_backend *backend, float *out, const void *table, pb_dtype table_dtype, const int32_t *ids,
                       int T, int d, float scale);
    /* out (rows, d) = x / sqrt(mean(x^2) + eps) * weight; weight (d) may be NULL (no scaling); out may be x. */
    pb_status (*rmsnorm)(pb_backend *backend, float *out, const float *x, const float *weight, int rows, int d,
                         float eps);
    /* out (rows, d) = (x - mean(x)) / sqrt(var(x) + eps) * weight + bias, the
     * variance without Bessel's correction; weight and bias (d) may each be
     * NULL (not applied); out may be x. */
    pb_status (*layernorm)(pb_backend *backend, float *out, const float *x, const float *weight, const float *bias,
                           int rows, int d, float eps);
    /* In place: x (n) = act(x), the MLP's activation without a gate. */
    pb_status (*activate)(pb_backend *backend, float *x, size_t n, pb_activation act);
    /* out (rows, n) = x (rows, k) @ w (n, k)^T + bias (n); bias may be NULL.
     * w is stored as w_dtype. For a 16-bit w_dtype, x is first rounded to
     * w_dtype (round to nearest even) and the products are summed in fp32
     * or wider: the contract of a bf16/fp16 tensor-core GEMM, kept by every
     * backend so they agree to summation order. A quantised w_dtype (CPU
     * backends only; rows of k / block blocks) is decoded to fp32 and x is
     * used as it is: the product of the dequantised matrix. */
    pb_status (*matmul)(pb_backend *backend, float *out, const float *x, const void *w, pb_dtype w_dtype,
                        const float *bias, int rows, int n, int k);
    /* In place, rotate-half (Hugging Face) convention over the first
     * rotary_dims (even, <= head_dim) of each head: x (T, n_heads, head_dim);
     * pair (i, i + rotary_dims/2) of position positions[t] rotates by
     * positions[t] * inv_freq[i] with its cosine and sine each multiplied
     * by scale (LongRoPE's attention factor; 1 otherwise, which changes no
     * bit); inv_freq (rotary_dims/2); positions (T); dims from rotary_dims
     * on are left as they are (GPT-NeoX). */
    pb_status (*rope)(pb_backend *backend, float *x, const int32_t *positions, const float *inv_freq, int T,
                      int n_heads, int head_dim, int rotary_dims, float scale);
    /* Causal grouped-query attention, scores shaped by params (host memory;
     * NULL: scale 1/sqrt(head_dim), no softcap, no window).
     * out (T, n_heads, head_dim); q (T, n_heads, head_dim);
     * k, v (T_kv, n_kv_heads, head_dim). Query t sits at position q_start + t
     * and attends keys 0 .. q_start + t (all < T_kv), within the window.
     * Query head h reads key-value head h / (n_heads / n_kv_heads). */
    pb_status (*attention)(pb_backend *backend, float *out, const float *q, const float *k, const float *v, int T,
                           int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                           const pb_attention_params *params);
    /* out (rows, width) = act(gate) * up, where gate and up hold rows of
     * `width` values `stride` apart (stride >= width: the two halves of a
     * fused gate/up GEMM's output, stride 2 * width; or plain (rows, width)
     * buffers, stride width). out may alias gate or up when stride == width. */
    pb_status (*glu)(pb_backend *backend, float *out, const float *gate, const float *up, size_t rows, size_t width,
                     size_t stride, pb_activation act);
    /* In place: x (n) = cap * tanh(x / cap), in fp32 as torch computes it. */
    pb_status (*softcap)(pb_backend *backend, float *x, size_t n, float cap);
    /* out (n) = a + b; out may alias a or b. */
    pb_status (*add)(pb_backend *backend, float *out, const float *a, const float *b, size_t n);
    /* Causal attention for many ragged sequences at once (a patching
     * batch). Job j's queries are packed rows [q_row, q_row + n) of q and
     * out; query t sits at position p0 + t and attends the p0 prefix keys
     * k_prefix/v_prefix (p0, kv_dim) and the new keys k_new/v_new rows
     * 0 .. t (n, kv_dim). `jobs` is host memory. Optional: when NULL the
     * executor assembles each job's keys and calls `attention` per job. */
    pb_status (*attention_jobs)(pb_backend *backend, float *out, const float *q, const struct pb_attention_job *jobs,
                                int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                const pb_attention_params *params);
    /* Free and total bytes of the backend's memory, for sizing caches and
     * batches. Optional: NULL (the CPU backends) means unknown, and the
     * caller's --max-memory alone rules. */
    pb_status (*memory_info)(pb_backend *backend, size_t *free_bytes, size_t *total_bytes);
    /* out (rows) = the metric of each row of logits (rows, n_out), in double
     * with the arithmetic of metric.c (docs/patching.md), so that only one
     * number per row leaves the device:
     *   PB_METRIC_LOGIT_DIFF    mean(row[positive]) - mean(row[negative])
     *   PB_METRIC_LOGPROB       logsumexp(row[set]) - logsumexp(row)
     *   PB_METRIC_REFUSAL_SCORE logsumexp(row[set]) - logsumexp(row[not set])
     *   PB_METRIC_KL            sum_v p (ref_v - log_softmax(row)_v), p = e^ref_v > 0,
     *                           ref = ref_logprobs[ref_row[r]]
     * positive (n_positive), negative (n_negative) hold column indices into
     * the row; "set" is the distinct entries of positive. negative is read
     * by logit_diff only; ref_logprobs (n_ref, n_out) (log-probabilities)
     * and ref_row (rows) by kl only. Every array is device memory.
     * A row with a non-finite logit anywhere in its n_out columns (or an
     * index out of range) gets NaN, so that the caller can fetch that row
     * and say which entry. Other kinds: PB_ERR_UNSUPPORTED. Optional: when
     * NULL the caller downloads the logits and computes on the host. */
    pb_status (*metric_rows)(pb_backend *backend, double *out, const float *logits, int rows, int n_out,
                             pb_metric_kind kind, const int32_t *positive, int n_positive, const int32_t *negative,
                             int n_negative, const double *ref_logprobs, const int32_t *ref_row, int n_ref);
    /* 1 when the backend's memory is plain host memory (the CPU backends):
     * callers may read it directly instead of downloading. */
    int host_memory;
    /* Every region of `regions` (host array, n_regions entries) copied, in
     * one go where the backend can: the patch writes of a batch (each row's
     * site, at every patched position). No destination may overlap another
     * region. Optional: NULL means one `copy` per region. */
    pb_status (*copy_regions)(pb_backend *backend, const pb_copy_region *regions, int n_regions);
    /* A strided block copy: dst (rows, width) with row stride dst_stride =
     * src (rows, width) with row stride src_stride, strides in floats; the
     * split of a fused GEMM's output (exec.c). dst must not overlap src.
     * Optional: NULL means one `copy` per row. */
    pb_status (*copy_rows)(pb_backend *backend, float *dst, size_t dst_stride, const float *src, size_t src_stride,
                           size_t width, size_t rows);
    /* Streamed weights (model/stream.c): copies into one of two lanes (a
     * lane is a region of device memory, a layer's slot) on a queue of
     * their own, so that the next layer's upload runs during this layer's
     * compute. lane_release: the lane's next copies wait for the compute
     * queued so far (which may still read the lane's old bytes).
     * lane_upload: queues dst_device = src_host (bytes); src_host must stay
     * unchanged until the copy is done (memory the caller keeps), and
     * overlaps only where it is pinned (pin). lane_wait: the compute queued
     * after it waits for the lane's copies. Optional, all three or none:
     * NULL means upload, which runs in order with the compute. */
    pb_status (*lane_release)(pb_backend *backend, int lane);
    pb_status (*lane_upload)(pb_backend *backend, int lane, void *dst_device, const void *src_host, size_t bytes);
    pb_status (*lane_wait)(pb_backend *backend, int lane);
    /* Page-locks host memory the caller keeps (bytes from host) so that
     * copies from it run asynchronously at the link's full rate, and
     * unlocks it; unpin takes the same host pointer. Optional: NULL where
     * it means nothing (the host backends). A failed pin is not an error
     * for the caller: copies still work, slower. */
    pb_status (*pin)(pb_backend *backend, const void *host, size_t bytes);
    void (*unpin)(pb_backend *backend, const void *host);

    /* ---- the activation backward pass (attribution/grad.c) ----------
     * Optional, all four or none: NULL means the backend has no backward,
     * and the pass refuses it by name. Derivatives only with respect to
     * activations, never weights. */

    /* dx (rows, k) = dy (rows, n) @ w (n, k), or dx += that with
     * accumulate: the transpose of matmul's product. w is stored as w_dtype
     * (any dtype matmul takes) and decoded to fp32 exactly; the products
     * are summed in fp32 or wider. */
    pb_status (*matmul_dx)(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype, int rows,
                           int n, int k, int accumulate);
    /* dx (rows, d) = (or += with accumulate) the gradient through
     * y = norm(x) * weight (+ bias) given dy (rows, d): RMSNorm, or with
     * centred LayerNorm (rmsnorm's and layernorm's definitions, eps as
     * theirs). weight (d) may be NULL (ones); a bias does not enter. */
    pb_status (*norm_backward)(pb_backend *backend, float *dx, const float *x, const float *weight, const float *dy,
                               int rows, int d, float eps, int centred, int accumulate);
    /* The MLP's activation, elementwise over n, given dh (n), the gradient
     * of its output: with a gate, h = act(gate) * up, so d_up = dh *
     * act(gate) and d_gate = dh * up * act'(gate); without (gate NULL,
     * h = act(up)), d_up = dh * act'(up) and d_gate is not written. Sums
     * in fp32 or wider; d_gate may alias dh; d_up may not alias gate. */
    pb_status (*glu_backward)(pb_backend *backend, float *d_gate, float *d_up, const float *dh, const float *gate,
                              const float *up, size_t n, pb_activation act);
    /* The gradient through causal self-attention over T tokens (positions
     * 0 .. T - 1, every key its own run's), given dz (T, n_heads *
     * head_dim), the output's: dq (T, n_heads * head_dim) of the scaled
     * scores' queries, dk and dv (T, n_kv_heads * head_dim), overwritten,
     * with q, k (rotated) and v as attention reads them and its scores
     * (params: scale, soft-cap, window; host memory). dpattern (n_heads,
     * T, T) or NULL: d / d the probabilities, written inside each query's
     * window, the rest left as it is. The probabilities are recomputed; a
     * device backend holds them for at most PB_ATTENTION_BACKWARD_SCRATCH
     * bytes of heads at a time. */
    pb_status (*attention_backward)(pb_backend *backend, float *dq, float *dk, float *dv, float *dpattern,
                                    const float *q, const float *k, const float *v, const float *dz, int T, int n_heads,
                                    int n_kv_heads, int head_dim, const pb_attention_params *params);
} pb_backend_ops;

struct pb_backend {
    const pb_backend_ops *ops;
    void *impl;
};

/* OpenBLAS + OpenMP: the default. n_threads <= 0 means all cores. */
pb_status pb_backend_cpu_create(pb_backend **out, int n_threads);
/* Naive single-threaded loops: the oracle every faster op is tested against. */
pb_status pb_backend_ref_create(pb_backend **out);
/* copy_regions on host memory (the CPU backends' op). */
pb_status pb_copy_regions_host(const pb_copy_region *regions, int n_regions);
/* copy_rows on host memory (the CPU backends' op). */
pb_status pb_copy_rows_host(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t width,
                            size_t rows);
/* metric_rows for backends whose memory is host memory (ops_ref.c): rows
 * split over n_threads OpenMP threads (1: serial), each computed alone by
 * metric.c, so the result does not depend on n_threads. */
pb_status pb_metric_rows_host(double *out, const float *logits, int rows, int n_out, pb_metric_kind kind,
                              const int32_t *positive, int n_positive, const int32_t *negative, int n_negative,
                              const double *ref_logprobs, const int32_t *ref_row, int n_ref, int n_threads);
/* The checked backend (backend_checked.c) around inner, a host backend
 * with every op (cpu), which it owns from here on, even on failure. */
pb_status pb_backend_checked_create(pb_backend **out, pb_backend *inner);
/* CUDA backend on device `device`; PB_ERR_UNSUPPORTED in builds without CUDA
 * or when no device is present (message says which). */
pb_status pb_backend_cuda_create(pb_backend **out, int device);

static inline void pb_backend_destroy(pb_backend *backend) {
    if (backend)
        backend->ops->destroy(backend);
}

#endif
