/* Streamed weights' lanes and pinned host memory (backend.h's lane_release,
 * lane_upload, lane_wait, pin, unpin): a layer's copies run on a copy stream
 * of their own while the compute stream runs the layer before. Two events
 * per lane order them: lane_free[k] (recorded on the compute stream: what
 * was queued there before the lane's bytes are overwritten) is waited on by
 * the copy stream; lane_done[k] (recorded on the copy stream after each of
 * the lane's copies) is waited on by the compute stream. Neither wait
 * blocks the host. A copy from pageable memory (a GGUF mapping) is staged
 * by the driver and does not overlap; from pinned memory it does. */
#include "backend_cuda_impl.cuh"

pb_status pb_cuda_lanes_init(pb_cuda_backend *self) {
    PB_CUDA_CHECK(cudaStreamCreateWithFlags(&self->copy_stream, cudaStreamNonBlocking));
    for (int k = 0; k < 2; k++) {
        PB_CUDA_CHECK(cudaEventCreateWithFlags(&self->lane_free[k], cudaEventDisableTiming));
        PB_CUDA_CHECK(cudaEventCreateWithFlags(&self->lane_done[k], cudaEventDisableTiming));
    }
    return PB_OK;
}

void pb_cuda_lanes_destroy(pb_cuda_backend *self) {
    if (self->copy_stream)
        PB_CUDA_CHECK_VOID(cudaStreamSynchronize(self->copy_stream));
    for (int k = 0; k < 2; k++) {
        if (self->lane_free[k])
            PB_CUDA_CHECK_VOID(cudaEventDestroy(self->lane_free[k]));
        if (self->lane_done[k])
            PB_CUDA_CHECK_VOID(cudaEventDestroy(self->lane_done[k]));
    }
    if (self->copy_stream)
        PB_CUDA_CHECK_VOID(cudaStreamDestroy(self->copy_stream));
}

pb_status pb_cuda_lane_release(pb_backend *backend, int lane) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(lane == 0 || lane == 1, "lane_release");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaEventRecord(self->lane_free[lane], self->stream));
    PB_CUDA_CHECK(cudaStreamWaitEvent(self->copy_stream, self->lane_free[lane], 0));
    return PB_OK;
}

pb_status pb_cuda_lane_upload(pb_backend *backend, int lane, void *dst_device, const void *src_host, size_t bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (bytes == 0)
        return PB_OK;
    PB_CUDA_REQUIRE((lane == 0 || lane == 1) && dst_device != NULL && src_host != NULL, "lane_upload");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaMemcpyAsync(dst_device, src_host, bytes, cudaMemcpyHostToDevice, self->copy_stream));
    PB_CUDA_CHECK(cudaEventRecord(self->lane_done[lane], self->copy_stream));
    return PB_OK;
}

pb_status pb_cuda_lane_wait(pb_backend *backend, int lane) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(lane == 0 || lane == 1, "lane_wait");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaStreamWaitEvent(self->stream, self->lane_done[lane], 0));
    return PB_OK;
}

pb_status pb_cuda_pin(pb_backend *backend, const void *host, size_t bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(host != NULL && bytes > 0, "pin");
    PB_TRY(pb_cuda_enter(self));
    const cudaError_t err = cudaHostRegister(const_cast<void *>(host), bytes, cudaHostRegisterDefault);
    if (err != cudaSuccess) {
        (void)cudaGetLastError(); /* not sticky: no later launch check may see it */
        return pb_fail(PB_ERR_CUDA, "pinning %.1f MiB of host memory: %s", (double)bytes / (1 << 20),
                       cudaGetErrorString(err));
    }
    return PB_OK;
}

void pb_cuda_unpin(pb_backend *backend, const void *host) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (!host || pb_cuda_enter(self) != PB_OK)
        return;
    PB_CUDA_CHECK_VOID(cudaStreamSynchronize(self->copy_stream)); /* no copy from it in flight */
    PB_CUDA_CHECK_VOID(cudaHostUnregister(const_cast<void *>(host)));
}
