/* Host-visible extras of the CUDA backend (no CUDA types). The backend itself
 * is created through pb_backend_cuda_create() in backend.h. */
#ifndef PB_BACKEND_CUDA_H
#define PB_BACKEND_CUDA_H

#include "patchbay.h"

#ifdef __cplusplus
extern "C" {
#endif

/* NCCL's version code (e.g. 22703 for 2.27.3) in *out. PB_ERR_UNSUPPORTED in
 * builds without CUDA. Needs no GPU. */
pb_status pb_cuda_nccl_version(int *out);

#ifdef __cplusplus
}
#endif
#endif
