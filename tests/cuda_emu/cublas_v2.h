/* Stand-in for cuBLAS under the CPU emulator: only the names cuda_check.h
 * and backend_cuda_impl.cuh mention. No cuBLAS call can run here. */
#ifndef PB_EMU_CUBLAS_V2_H
#define PB_EMU_CUBLAS_V2_H
typedef struct pb_emu_cublas *cublasHandle_t;
typedef enum cublasStatus_t { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
const char *cublasGetStatusString(cublasStatus_t status);
#endif
