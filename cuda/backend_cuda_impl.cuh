/* The CUDA backend's private state and the host-side helpers its ops share,
 * so that ops other than the basic ones (backend_cuda.cu) can live in files
 * of their own. C++ (nvcc) only; the C side sees backend.h alone. */
#ifndef PB_BACKEND_CUDA_IMPL_CUH
#define PB_BACKEND_CUDA_IMPL_CUH

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_check.h"
#include "kernels.cuh"

extern "C" {
#include "backend/backend_cuda.h"
}

/* Pinned host staging for uploads and small downloads: PB_CUDA_STAGING_SLOTS
 * slots of PB_CUDA_STAGING_SLOT_BYTES, used in turn, each with the event
 * recorded after its last copy. */
#define PB_CUDA_STAGING_SLOTS 8
#define PB_CUDA_STAGING_SLOT_BYTES ((size_t)1 << 20)
/* Uploads past this go straight from the caller's memory and wait (weights
 * at load: one big copy, no host memcpy through the slots). */
#define PB_CUDA_STAGING_MAX_UPLOAD ((size_t)64 << 20)

/* The most fp32 elements a quantised matrix is decoded into at once (256
 * MiB): wider matrices (a 128k-row unembedding) go through in row tiles. */
#define PB_CUDA_DEQUANT_MAX_ELEMS ((size_t)64 << 20)

typedef struct pb_cuda_backend {
    pb_backend base; /* base.impl points back here */
    int device;
    cudaStream_t stream;
    cublasHandle_t cublas;
    /* The 16-bit copy of a matmul's input: grown to the largest seen, kept. */
    uint16_t *round_scratch;
    size_t round_scratch_elems;
    /* A quantised matrix's rows decoded to fp32 before cuBLAS (--dtype
     * file): grown up to PB_CUDA_DEQUANT_MAX_ELEMS, kept. */
    float *dequant_scratch;
    size_t dequant_scratch_elems;
    /* The attention backward's probabilities and scores' gradients
     * (backward_ops.cu): grown to the largest pass seen, kept. */
    double *backward_scratch;
    size_t backward_scratch_elems;
    /* attention_jobs' descriptors, built here and passed to the kernels by
     * value; grown to the largest batch seen, kept. */
    pb_cuda_attention_job *attention_jobs_host;
    size_t attention_jobs_capacity;
    /* attention_jobs kernel choice: 0 auto, 1 always the per-query kernel,
     * 2 the tiled one wherever it applies (PB_CUDA_ATTENTION=auto|rows|tiled,
     * read at creation; for tests). */
    int attention_kernel;
    /* The device's shared memory per block with the opt-in
     * (cudaDevAttrMaxSharedMemoryPerBlockOptin; 227 KiB on Hopper), read at
     * creation: the tiled attention kernel needs more than 48 KiB. */
    size_t shared_optin_bytes;
    /* PB_CUDA_SYNC=1 (read at creation; a debug mode): every kernel launch
     * is followed by a stream synchronisation, so a fault is reported by
     * the op that launched the kernel, naming it (PB_CUDA_LAUNCHED). */
    int sync_launches;
    /* round_scratch holds rounded_x (rounded_count elements) rounded to
     * rounded_dtype: consecutive matmuls of one input (q, k, v; gate, up)
     * round it once. Any op other than matmul may write device memory, so
     * pb_cuda_enter forgets it (rounded_x = NULL), as do free and a matmul
     * whose output overlaps it. */
    const float *rounded_x;
    size_t rounded_count;
    int rounded_dtype;
    /* (PB_CUDA_STAGING_SLOTS * PB_CUDA_STAGING_SLOT_BYTES) pinned host
     * memory, or NULL when cudaHostAlloc refused it (then uploads and
     * downloads go direct and wait, as pageable copies must). */
    unsigned char *staging;
    cudaEvent_t staging_done[PB_CUDA_STAGING_SLOTS];
    int staging_next;
    /* Streamed weights' copies (weight_lanes.cu): their stream, and per
     * lane the events that order it against `stream`. */
    cudaStream_t copy_stream;
    cudaEvent_t lane_free[2], lane_done[2];
} pb_cuda_backend;

static inline pb_cuda_backend *pb_cuda_self(pb_backend *backend) { return (pb_cuda_backend *)backend->impl; }

/* Makes the backend's device current, so several backends on different
 * devices can be driven from one thread. */
static inline pb_status pb_cuda_enter(pb_cuda_backend *self) {
    self->rounded_x = NULL; /* this op may write what was rounded */
    PB_CUDA_CHECK(cudaSetDevice(self->device));
    return PB_OK;
}

/* *out = a * b * c for non-negative ints; PB_ERR_ARG on a negative factor or
 * overflow. */
static inline pb_status pb_cuda_count(size_t *out, const char *op, int64_t a, int64_t b, int64_t c) {
    uint64_t ab = 0, abc = 0;
    if (a < 0 || b < 0 || c < 0)
        return pb_fail(PB_ERR_ARG, "cuda %s: negative size (%lld, %lld, %lld)", op, (long long)a, (long long)b,
                       (long long)c);
    if (!pb_mul_u64((uint64_t)a, (uint64_t)b, &ab) || !pb_mul_u64(ab, (uint64_t)c, &abc) || abc > SIZE_MAX / 4)
        return pb_fail(PB_ERR_ARG, "cuda %s: size %lld x %lld x %lld overflows", op, (long long)a, (long long)b,
                       (long long)c);
    *out = (size_t)abc;
    return PB_OK;
}

#define PB_CUDA_REQUIRE(cond, op)                                                     \
    do {                                                                              \
        if (!(cond))                                                                  \
            return pb_fail(PB_ERR_ARG, "cuda %s: invalid argument: %s", (op), #cond); \
    } while (0)

/* *out = the kernels' name for act (kernels.cuh); 0 for an activation the
 * kernels lack, which the op refuses with PB_ERR_UNSUPPORTED. */
static inline int pb_cuda_activation_of(pb_activation act, pb_cuda_activation *out) {
    switch ((int)act) { /* an int: act may hold any value the C caller passed */
    case PB_ACTIVATION_SILU: *out = PB_CUDA_SILU; return 1;
    case PB_ACTIVATION_GELU_TANH: *out = PB_CUDA_GELU_TANH; return 1;
    case PB_ACTIVATION_GELU: *out = PB_CUDA_GELU; return 1;
    }
    return 0;
}

/* PB_CUDA_SYNC's value: unset, "" or "0" off, "1" on, anything else
 * PB_ERR_ARG (a typo must not silently leave the debug mode off). */
static inline pb_status pb_cuda_sync_mode_parse(const char *value, int *sync_launches) {
    *sync_launches = 0;
    if (!value || !*value || strcmp(value, "0") == 0)
        return PB_OK;
    if (strcmp(value, "1") != 0)
        return pb_fail(PB_ERR_ARG, "PB_CUDA_SYNC=%s: expected 0 or 1", value);
    *sync_launches = 1;
    return PB_OK;
}

/* After a kernel (or a cuBLAS call) was enqueued on self->stream:
 * launch_error is what its launcher returned (cudaGetLastError: a launch the
 * device refused). Without PB_CUDA_SYNC a fault while the kernel runs shows
 * at the next synchronising call, under that call's name; with it the
 * stream is synchronised here and the fault is reported naming `kernel`. */
static inline pb_status pb_cuda_launched(pb_cuda_backend *self, const char *kernel, cudaError_t launch_error,
                                         const char *file, int line) {
    if (launch_error != cudaSuccess)
        return pb_fail(PB_ERR_CUDA, "launching kernel %s failed at %s:%d: %s (%s)", kernel, file, line,
                       cudaGetErrorString(launch_error), cudaGetErrorName(launch_error));
    if (!self->sync_launches)
        return PB_OK;
    const cudaError_t run_error = cudaStreamSynchronize(self->stream);
    if (run_error != cudaSuccess)
        return pb_fail(PB_ERR_CUDA, "kernel %s launched at %s:%d failed while running (PB_CUDA_SYNC=1): %s (%s)",
                       kernel, file, line, cudaGetErrorString(run_error), cudaGetErrorName(run_error));
    return PB_OK;
}

/* Returns from the enclosing op when the launch of `kernel` failed (see
 * pb_cuda_launched); `launch` is the launcher call, or cudaSuccess after a
 * cuBLAS call that was checked already. */
#define PB_CUDA_LAUNCHED(self, kernel, launch) PB_TRY(pb_cuda_launched((self), (kernel), (launch), __FILE__, __LINE__))

/* *buffer of at least n elements of `size` bytes (*capacity of them now),
 * grown and kept. Growing waits for the stream, since queued GEMMs may
 * still read the old buffer. */
pb_status pb_cuda_scratch(pb_cuda_backend *self, void **buffer, size_t *capacity, size_t n, size_t size);
/* A 16-bit or quantised matrix of n rows of k decoded to fp32 a tile of
 * rows at a time (at most PB_CUDA_DEQUANT_MAX_ELEMS floats): *rows per
 * tile, with self->dequant_scratch grown to hold one. */
pb_status pb_cuda_dequant_tile(pb_cuda_backend *self, int n, int k, int *rows);
/* self->dequant_scratch (rows, k) = rows row0 .. row0 + rows of w (rows of
 * k, stored as w_dtype) decoded (dequant.cu), queued on the stream. */
pb_status pb_cuda_dequant_rows_to_scratch(pb_cuda_backend *self, const void *w, pb_dtype w_dtype, int row0, int rows,
                                          int k);

/* The backward ops (backend.h), in backward_ops.cu. */
pb_status pb_cuda_matmul_dx(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype, int rows,
                            int n, int k, int accumulate);
pb_status pb_cuda_norm_backward(pb_backend *backend, float *dx, const float *x, const float *weight, const float *dy,
                                int rows, int d, float eps, int centred, int accumulate);
pb_status pb_cuda_glu_backward(pb_backend *backend, float *d_gate, float *d_up, const float *dh, const float *gate,
                               const float *up, size_t n, pb_activation act);
pb_status pb_cuda_attention_backward(pb_backend *backend, float *dq, float *dk, float *dv, float *dpattern,
                                     const float *q, const float *k, const float *v, const float *dz, int T,
                                     int n_heads, int n_kv_heads, int head_dim, const pb_attention_params *params);

/* The lanes and pinning of streamed weights (backend.h), in weight_lanes.cu. */
pb_status pb_cuda_lanes_init(pb_cuda_backend *self);
void pb_cuda_lanes_destroy(pb_cuda_backend *self);
pb_status pb_cuda_lane_release(pb_backend *backend, int lane);
pb_status pb_cuda_lane_upload(pb_backend *backend, int lane, void *dst_device, const void *src_host, size_t bytes);
pb_status pb_cuda_lane_wait(pb_backend *backend, int lane);
pb_status pb_cuda_pin(pb_backend *backend, const void *host, size_t bytes);
void pb_cuda_unpin(pb_backend *backend, const void *host);

/* metric_rows (backend.h), in metric.cu. */
pb_status pb_cuda_metric_rows(pb_backend *backend, double *out, const float *logits, int rows, int n_out,
                              pb_metric_kind kind, const int32_t *positive, int n_positive, const int32_t *negative,
                              int n_negative, const double *ref_logprobs, const int32_t *ref_row, int n_ref);

/* The kernels' copy of backend.h's pb_attention_params (NULL: Llama's
 * defaults); a window <= 0 is none, a softcap <= 0 none, as in the reference. */
static inline pb_cuda_attention_score pb_cuda_attention_score_of(const pb_attention_params *params, int head_dim) {
    const pb_attention_params a = pb_attention_params_or_default(params, head_dim);
    pb_cuda_attention_score score;
    score.scale = a.scale;
    score.softcap = a.softcap > 0.0f ? a.softcap : 0.0f;
    score.window = a.window > 0 ? a.window : 0;
    return score;
}

/* desc (n_jobs) = jobs as the ragged attention kernels read them: work rows
 * (`first`) and query tiles of tile_q queries (`first_tile`, for the tiled
 * kernel: pb_cuda_attention_tile_queries) numbered across the jobs in order.
 * *rows, *tiles: their totals; *with_queries: jobs with n > 0 (each output
 * may be NULL). */
static inline void pb_cuda_describe_jobs(pb_cuda_attention_job *desc, const pb_attention_job *jobs, int n_jobs,
                                         int tile_q, int64_t *rows, int64_t *tiles, int *with_queries) {
    int64_t first = 0, first_tile = 0;
    int queries = 0;
    for (int j = 0; j < n_jobs; j++) {
        desc[j].k_prefix = jobs[j].k_prefix;
        desc[j].v_prefix = jobs[j].v_prefix;
        desc[j].k_new = jobs[j].k_new;
        desc[j].v_new = jobs[j].v_new;
        desc[j].first = (int)first; /* the caller checked the total fits int */
        desc[j].first_tile = (int)first_tile;
        desc[j].q_row = jobs[j].q_row;
        desc[j].n = jobs[j].n;
        desc[j].p0 = jobs[j].p0;
        first += jobs[j].n;
        first_tile += (jobs[j].n + tile_q - 1) / tile_q;
        queries += jobs[j].n > 0;
    }
    if (rows)
        *rows = first;
    if (tiles)
        *tiles = first_tile;
    if (with_queries)
        *with_queries = queries;
}

#endif
