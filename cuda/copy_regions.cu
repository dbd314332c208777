/* Batched copies (pb_backend_ops.copy_regions): the patch writes of a
 * patching batch, every row's site at every patched position, in one launch
 * per PB_COPY_REGIONS_PER_LAUNCH regions instead of one cudaMemcpyAsync each.
 * The region list travels by value as the kernel's parameter (3 KiB, within
 * the 4 KiB every architecture accepts), so nothing is uploaded and nothing
 * waits: the call is as asynchronous as the copies it replaces.
 *
 * One block per region; its threads copy the region's floats with a stride
 * of the block. Regions never overlap one another's destinations (the
 * caller's contract), so blocks are independent. */
#include <string.h>

#include "kernels.cuh"

/* __grid_constant__: the list stays in the parameter bank when indexed by
 * blockIdx, instead of being copied to each thread's local memory. */
static __global__ void pb_copy_regions_kernel(const __grid_constant__ pb_cuda_copy_regions regions) {
    const pb_cuda_copy_region region = regions.r[blockIdx.x];
    for (size_t i = threadIdx.x; i < region.n; i += blockDim.x)
        region.dst[i] = region.src[i];
}

cudaError_t pb_cuda_launch_copy_regions(cudaStream_t stream, const pb_cuda_copy_region *regions, int n_regions) {
    pb_cuda_copy_regions batch;
    for (int first = 0; first < n_regions; first += PB_COPY_REGIONS_PER_LAUNCH) {
        const int count = n_regions - first < PB_COPY_REGIONS_PER_LAUNCH ? n_regions - first
                                                                         : PB_COPY_REGIONS_PER_LAUNCH;
        memcpy(batch.r, regions + first, sizeof(pb_cuda_copy_region) * (size_t)count);
        batch.n = count;
        pb_copy_regions_kernel<<<(unsigned)count, PB_CUDA_BLOCK, 0, stream>>>(batch);
        const cudaError_t error = cudaGetLastError();
        if (error != cudaSuccess)
            return error;
    }
    return cudaSuccess;
}
