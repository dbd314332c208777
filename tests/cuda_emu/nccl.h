/* Stand-in for NCCL under the CPU emulator: only the names cuda_check.h
 * mentions. */
#ifndef PB_EMU_NCCL_H
#define PB_EMU_NCCL_H
typedef enum ncclResult_t { ncclSuccess = 0, ncclInProgress = 7 } ncclResult_t;
const char *ncclGetErrorString(ncclResult_t result);
#endif
