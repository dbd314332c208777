/* Host-visible extras of the CUDA backend (no CUDA types). The backend itself
 * is created through pb_backend_cuda_create() in backend.h. */
#ifndef PB_BACKEND_CUDA_H
#define PB_BACKEND_CUDA_H

#include "patchbay.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Loads the CUDA backend's module (libpatchbay_cuda.so, backend/cuda_module.h)
 * if no call has yet; every entry point below, and pb_backend_cuda_create,
 * does so itself. PB_ERR_UNSUPPORTED, naming the file and the loader's
 * reason, when it cannot be loaded (no CUDA libraries on this machine) or
 * the build has no CUDA; the outcome of the first try stands for the
 * process. Needs no GPU. */
pb_status pb_cuda_module_load(void);

/* NCCL's version code (e.g. 22703 for 2.27.3) in *out. PB_ERR_UNSUPPORTED in
 * builds without CUDA. Needs no GPU. */
pb_status pb_cuda_nccl_version(int *out);

/* The number of CUDA devices this process sees (cudaGetDeviceCount; no
 * device is touched, no context created). PB_ERR_UNSUPPORTED in builds
 * without CUDA or when the driver reports none usable. */
pb_status pb_cuda_device_count(int *count);

/* ---- NCCL gather of per-row metrics between GPU ranks (cuda/nccl_gather.cu)
 * Called by pb_ranks_gather_nccl (host/distributed/distribute.c) for --backend cuda
 * ranks. Compiled for sm_80/sm_90 but not yet run on a GPU. The MPI part
 * (broadcasting the id from rank 0) belongs to the caller, so this file
 * needs no MPI. */
enum { PB_NCCL_ID_BYTES = 128 }; /* NCCL_UNIQUE_ID_BYTES */
typedef struct pb_nccl_gather pb_nccl_gather;

/* Rank 0: a fresh ncclUniqueId in id, to broadcast to every rank. */
pb_status pb_nccl_id_create(unsigned char id[PB_NCCL_ID_BYTES]);
/* A non-blocking communicator (config.blocking = 0) of `size` ranks on the
 * current device, with its own stream. Waits for the initialisation at most
 * timeout_s, polling ncclCommGetAsyncError; past it, or on an asynchronous
 * error, aborts the communicator (ncclCommAbort) and returns PB_ERR_CUDA
 * naming this rank. */
pb_status pb_nccl_gather_create(pb_nccl_gather **out, const unsigned char id[PB_NCCL_ID_BYTES], int rank, int size,
                                double timeout_s);
/* recv (size * count doubles, device memory) = every rank's send (count
 * doubles, device memory) in rank order: one ncclAllGather, polled like the
 * initialisation. After a failure the communicator is aborted and every
 * later call fails. */
pb_status pb_nccl_gather_doubles(pb_nccl_gather *g, const double *send, double *recv, size_t count);
void pb_nccl_gather_free(pb_nccl_gather *g);

/* ---- benchmark helpers (cuda/gemm_ceiling.cu) ---------------------------- */

/* What bench programs print about a card. */
typedef struct pb_cuda_device_info {
    char name[256];
    int compute_major, compute_minor;
    int multiprocessors;
    size_t free_bytes, total_bytes; /* device memory when queried */
} pb_cuda_device_info;

/* Fills *out for CUDA device `device`. PB_ERR_UNSUPPORTED in builds without
 * CUDA or on a machine with no device (so benches can skip). */
pb_status pb_cuda_device_query(int device, pb_cuda_device_info *out);

/* The GEMM ceiling of a forward pass: times exactly the cuBLAS call the CUDA
 * backend's matmul makes (cublasGemmEx, 16-bit inputs, fp32 output,
 * CUBLAS_COMPUTE_32F, default math mode, for dtype bf16/f16; cublasSgemm
 * without TF32 for f32), alone, on buffers of its own filled with random
 * values. A pass runs, for each shape i, count[i] GEMMs
 * out (m_rows, n[i]) = x (m_rows, k[i]) @ w (n[i], k[i])^T. After one
 * warm-up pass, `repeats` passes are timed with CUDA events; their mean is
 * *seconds_per_pass. Allocates (and frees) one weight, one input and one
 * output buffer sized for the largest shape: PB_ERR_OOM names the bytes
 * needed and free. PB_ERR_UNSUPPORTED without CUDA or a device. */
pb_status pb_cuda_gemm_ceiling(int device, pb_dtype dtype, const int *n, const int *k, const int *count, int n_shapes,
                               int m_rows, int repeats, double *seconds_per_pass);
/* The host-to-device copy rate from pinned host memory: `bytes` copied
 * `repeats` times, timed with CUDA events, in bytes per second. The link
 * streamed weights cross (bench/sweep.c). PB_ERR_OOM when the pinned or
 * device buffer cannot be had; PB_ERR_UNSUPPORTED without CUDA or a device. */
pb_status pb_cuda_copy_ceiling(int device, size_t bytes, int repeats, double *bytes_per_s);

#ifdef __cplusplus
}
#endif
#endif
