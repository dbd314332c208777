/* The CUDA backend's entry points in builds without CUDA: each one says so.
 * With CUDA (PB_HAVE_CUDA defined by CMake) the real ones live in cuda/. */
#ifndef PB_HAVE_CUDA

#include <stddef.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "util/internal.h"

pb_status pb_backend_cuda_create(pb_backend **out, int device) {
    (void)device;
    if (out)
        *out = NULL;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

pb_status pb_cuda_device_count(int *count) {
    if (count)
        *count = 0;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

pb_status pb_cuda_nccl_version(int *out) {
    if (out)
        *out = 0;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

pb_status pb_nccl_id_create(unsigned char id[PB_NCCL_ID_BYTES]) {
    (void)id;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend, hence no NCCL");
}

pb_status pb_nccl_gather_create(pb_nccl_gather **out, const unsigned char id[PB_NCCL_ID_BYTES], int rank, int size,
                                double timeout_s) {
    (void)id;
    (void)rank;
    (void)size;
    (void)timeout_s;
    if (out)
        *out = NULL;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend, hence no NCCL");
}

pb_status pb_nccl_gather_doubles(pb_nccl_gather *g, const double *send, double *recv, size_t count) {
    (void)g;
    (void)send;
    (void)recv;
    (void)count;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend, hence no NCCL");
}

void pb_nccl_gather_free(pb_nccl_gather *g) { (void)g; }

pb_status pb_cuda_device_query(int device, pb_cuda_device_info *out) {
    (void)device;
    if (out)
        memset(out, 0, sizeof *out);
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

pb_status pb_cuda_gemm_ceiling(int device, pb_dtype dtype, const int *n, const int *k, const int *count, int n_shapes,
                               int m_rows, int repeats, double *seconds_per_pass) {
    (void)device;
    (void)dtype;
    (void)n;
    (void)k;
    (void)count;
    (void)n_shapes;
    (void)m_rows;
    (void)repeats;
    if (seconds_per_pass)
        *seconds_per_pass = 0.0;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

pb_status pb_cuda_copy_ceiling(int device, size_t bytes, int repeats, double *bytes_per_s) {
    (void)device;
    (void)bytes;
    (void)repeats;
    if (bytes_per_s)
        *bytes_per_s = 0.0;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

#else
/* ISO C wants at least one declaration per translation unit. */
typedef int pb_backend_cuda_stub_unused;
#endif
