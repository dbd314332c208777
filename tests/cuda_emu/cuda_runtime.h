/* Stand-in for the CUDA runtime header when cuda/ kernels are compiled for
 * the CPU emulator: everything lives in emulator.h. */
#ifndef PB_EMU_CUDA_RUNTIME_H
#define PB_EMU_CUDA_RUNTIME_H
#include "emulator.h"
#endif
