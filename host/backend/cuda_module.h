/* The seam between the library and the CUDA backend's module.
 *
 * The CUDA backend (cuda/) is built as its own shared object,
 * libpatchbay_cuda.so, and loaded on first use (host/backend/cuda_loader.c).
 * A process that never asks for CUDA maps none of cudart, cuBLAS or NCCL,
 * and a build with CUDA still runs, on the CPU, where those libraries are
 * missing (a login node, a CPU-only partition).
 *
 * Two tables cross the seam, each way once, when the module is opened:
 *  - pb_cuda_host: what the module calls in the library (its error state and
 *    the weight storage types), so each keeps one home;
 *  - pb_cuda_entry: the entry points of backend_cuda.h and pb_backend_cuda_create,
 *    which the library's functions of the same names forward to.
 * The module exports nothing else (-fvisibility=hidden, -Wl,--no-undefined).
 * Both sides compare the ABI number and the sizes below, so a module of
 * another build is refused with a message instead of misread. */
#ifndef PB_CUDA_MODULE_H
#define PB_CUDA_MODULE_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "util/internal.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PB_CUDA_MODULE_ABI 1
#define PB_CUDA_MODULE_FILE "libpatchbay_cuda.so"
#define PB_CUDA_MODULE_OPEN "pb_cuda_module_open" /* the one symbol the module exports */

typedef struct pb_cuda_host {
    int abi;                  /* PB_CUDA_MODULE_ABI */
    size_t backend_ops_bytes; /* sizeof(pb_backend_ops): the module fills one */
    size_t entry_bytes;       /* sizeof(pb_cuda_entry) */
    pb_status (*fail)(pb_status status, const char *fmt, ...);
    pb_status (*fail_cleanup)(pb_status status, const char *fmt, ...);
    void (*error_save)(pb_error_saved *saved);
    void (*error_restore)(const pb_error_saved *saved);
    int (*dtype_is_quantised)(pb_dtype dtype);
    size_t (*dtype_bytes)(pb_dtype dtype, uint64_t n);
    uint32_t (*dtype_ggml)(pb_dtype dtype);
} pb_cuda_host;

typedef struct pb_cuda_entry {
    int abi; /* PB_CUDA_MODULE_ABI */
    pb_status (*backend_create)(pb_backend **out, int device);
    pb_status (*device_count)(int *count);
    pb_status (*nccl_version)(int *out);
    pb_status (*nccl_id_create)(unsigned char id[PB_NCCL_ID_BYTES]);
    pb_status (*nccl_gather_create)(pb_nccl_gather **out, const unsigned char id[PB_NCCL_ID_BYTES], int rank, int size,
                                    double timeout_s);
    pb_status (*nccl_gather_doubles)(pb_nccl_gather *g, const double *send, double *recv, size_t count);
    void (*nccl_gather_free)(pb_nccl_gather *g);
    pb_status (*device_query)(int device, pb_cuda_device_info *out);
    pb_status (*gemm_ceiling)(int device, pb_dtype dtype, const int *n, const int *k, const int *count, int n_shapes,
                              int m_rows, int repeats, double *seconds_per_pass);
    pb_status (*copy_ceiling)(int device, size_t bytes, int repeats, double *bytes_per_s);
} pb_cuda_entry;

/* The module's one export: keeps host (which outlives the module: the
 * library's static table) and fills *entry. PB_ERR_UNSUPPORTED, through
 * host->fail when the sizes allow, when the two sides were built apart. */
typedef pb_status (*pb_cuda_module_open_fn)(const pb_cuda_host *host, pb_cuda_entry *entry);

#ifdef __cplusplus
}
#endif
#endif
