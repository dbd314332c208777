/* Check macros for CUDA runtime, cuBLAS and NCCL calls, shared by every file
 * in cuda/. A failing call records its own text, file, line and the library's
 * error string through pb_fail() and makes the enclosing function return the
 * status: library code never exit()s or abort()s.
 *
 * Only cuda/ files include this header (it pulls in the CUDA headers). */
#ifndef PB_CUDA_CHECK_H
#define PB_CUDA_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <nccl.h>

/* The host headers have no __cplusplus guards of their own; everything they
 * declare (pb_fail, pb_backend_*_create) has C linkage. */
extern "C" {
#include "backend/backend.h"
#include "util/internal.h"
}

/* Returns `status` from the enclosing function when `call` fails. */
#define PB_CUDA_CHECK_AS(status, call)                                                         \
    do {                                                                                       \
        cudaError_t pb_cuda_err_ = (call);                                                     \
        if (pb_cuda_err_ != cudaSuccess)                                                       \
            return pb_fail((status), "%s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__, \
                           cudaGetErrorString(pb_cuda_err_), cudaGetErrorName(pb_cuda_err_));  \
    } while (0)

#define PB_CUDA_CHECK(call) PB_CUDA_CHECK_AS(PB_ERR_CUDA, call)

/* For paths that cannot return a status (free, destroy): records the failure
 * for pb_last_error() unless one is already pending (pb_fail_cleanup), and
 * carries on. Such paths mostly run after a failure, on a device whose
 * sticky error makes every call fail: the first message names the cause. */
#define PB_CUDA_CHECK_VOID(call)                                                                         \
    do {                                                                                                 \
        cudaError_t pb_cuda_err_ = (call);                                                               \
        if (pb_cuda_err_ != cudaSuccess)                                                                 \
            (void)pb_fail_cleanup(PB_ERR_CUDA, "%s failed at %s:%d: %s (%s)", #call, __FILE__, __LINE__, \
                                  cudaGetErrorString(pb_cuda_err_), cudaGetErrorName(pb_cuda_err_));     \
    } while (0)

#define PB_CUBLAS_CHECK(call)                                                                \
    do {                                                                                     \
        cublasStatus_t pb_cublas_status_ = (call);                                           \
        if (pb_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                      \
            return pb_fail(PB_ERR_CUDA, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, \
                           cublasGetStatusString(pb_cublas_status_));                        \
    } while (0)

#define PB_CUBLAS_CHECK_VOID(call)                                                                  \
    do {                                                                                            \
        cublasStatus_t pb_cublas_status_ = (call);                                                  \
        if (pb_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                             \
            (void)pb_fail_cleanup(PB_ERR_CUDA, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, \
                                  cublasGetStatusString(pb_cublas_status_));                        \
    } while (0)

#define PB_NCCL_CHECK(call)                                                                  \
    do {                                                                                     \
        ncclResult_t pb_nccl_result_ = (call);                                               \
        if (pb_nccl_result_ != ncclSuccess)                                                  \
            return pb_fail(PB_ERR_CUDA, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, \
                           ncclGetErrorString(pb_nccl_result_));                             \
    } while (0)

/* For non-blocking communicators: ncclInProgress is not a failure (the
 * caller polls ncclCommGetAsyncError until the operation settles). */
#define PB_NCCL_CHECK_ASYNC(call)                                                            \
    do {                                                                                     \
        ncclResult_t pb_nccl_result_ = (call);                                               \
        if (pb_nccl_result_ != ncclSuccess && pb_nccl_result_ != ncclInProgress)             \
            return pb_fail(PB_ERR_CUDA, "%s failed at %s:%d: %s", #call, __FILE__, __LINE__, \
                           ncclGetErrorString(pb_nccl_result_));                             \
    } while (0)

#endif
