/* Kernels that test the emulator itself (test_cuda_emulated.c,
 * test_emulator_*): written in CUDA and rewritten by generate.py like the
 * kernels of cuda/, but never compiled by nvcc. */
#include <cuda_runtime.h>

#include "pb_cuda_emu.h"

/* out (n) = in rotated by one within each block, through shared memory;
 * without the barrier a thread may read its neighbour's slot unwritten. */
static __global__ void pb_selftest_rotate_kernel(float *out, const float *in, int with_barrier) {
    __shared__ float slots[64];
    const unsigned i = threadIdx.x;
    slots[i] = in[blockIdx.x * blockDim.x + i];
    if (with_barrier)
        __syncthreads();
    out[blockIdx.x * blockDim.x + i] = slots[(i + 1) % blockDim.x];
}

extern "C" int pb_emu_selftest_rotate(float *out, const float *in, int blocks, int with_barrier) {
    pb_selftest_rotate_kernel<<<blocks, 64>>>(out, in, with_barrier);
    return cudaGetLastError();
}

/* Per lane of a (2, 64) block: the four shuffles of `lane + 100 * warp` as
 * doubles; and a static shared value read before any thread of the block
 * wrote it (it must not be the previous block's). */
static __global__ void pb_selftest_shuffle_kernel(double *out, float *stale) {
    __shared__ float previous;
    const unsigned linear = threadIdx.y * blockDim.x + threadIdx.x;
    const double mine = (double)(linear % 32 + 100 * (linear / 32));
    double *row = out + ((size_t)blockIdx.x * blockDim.x * blockDim.y + linear) * 4;
    row[0] = __shfl_xor_sync(0xffffffffu, mine, 5);
    row[1] = __shfl_down_sync(0xffffffffu, mine, 3);
    row[2] = __shfl_up_sync(0xffffffffu, mine, 7);
    row[3] = __shfl_sync(0xffffffffu, mine, 9);
    if (linear == 0)
        stale[blockIdx.x] = previous;
    __syncthreads();
    if (linear == 0)
        previous = (float)blockIdx.x;
}

extern "C" int pb_emu_selftest_shuffle(double *out, float *stale, int blocks) {
    pb_selftest_shuffle_kernel<<<blocks, dim3(64, 2)>>>(out, stale);
    return cudaGetLastError();
}
