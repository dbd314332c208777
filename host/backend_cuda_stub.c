/* The CUDA backend's entry points in builds without CUDA: each one says so.
 * With CUDA (PB_HAVE_CUDA defined by CMake) the real ones live in cuda/. */
#ifndef PB_HAVE_CUDA

#include <stddef.h>

#include "backend.h"
#include "backend_cuda.h"
#include "internal.h"

pb_status pb_backend_cuda_create(pb_backend **out, int device) {
    (void)device;
    if (out)
        *out = NULL;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

pb_status pb_cuda_nccl_version(int *out) {
    if (out)
        *out = 0;
    return pb_fail(PB_ERR_UNSUPPORTED, "this build has no CUDA backend (configure with -DPB_CUDA=ON)");
}

#else
/* ISO C wants at least one declaration per translation unit. */
typedef int pb_backend_cuda_stub_unused;
#endif
