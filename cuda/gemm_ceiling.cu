/* Benchmark helpers of the CUDA backend: a card's name and memory, and the
 * GEMM ceiling of a forward pass -- the cuBLAS calls the backend's matmul
 * makes, timed alone at a forward's shapes, so a bench can say how close the
 * whole forward gets to its GEMMs (bench/gpu_prefill.c). Owns its stream,
 * cuBLAS handle and buffers for the duration of one call. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda_check.h"
#include "kernels.cuh"

extern "C" {
#include "backend/backend_cuda.h"
}

/* A device count of zero and "no driver" both mean: nothing to run on. */
static pb_status pb_ceiling_check_device(int device) {
    int count = 0;
    PB_CUDA_CHECK_AS(PB_ERR_UNSUPPORTED, cudaGetDeviceCount(&count));
    if (count <= 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "cudaGetDeviceCount reports no CUDA device");
    if (device < 0 || device >= count)
        return pb_fail(PB_ERR_ARG, "CUDA device %d out of range (%d present)", device, count);
    PB_CUDA_CHECK(cudaSetDevice(device));
    return PB_OK;
}

extern "C" pb_status pb_cuda_device_query(int device, pb_cuda_device_info *out) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "pb_cuda_device_query: out is NULL");
    memset(out, 0, sizeof *out);
    PB_TRY(pb_ceiling_check_device(device));
    cudaDeviceProp prop;
    PB_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
    snprintf(out->name, sizeof out->name, "%s", prop.name);
    out->compute_major = prop.major;
    out->compute_minor = prop.minor;
    out->multiprocessors = prop.multiProcessorCount;
    PB_CUDA_CHECK(cudaMemGetInfo(&out->free_bytes, &out->total_bytes));
    return PB_OK;
}

/* out (n) = uniform values in [-scale, scale) from a hash of (seed, i), in
 * the element type. Zeros would flatter the ceiling: tensor cores draw less
 * power, and clock higher, on zero inputs. */
static __global__ void pb_ceiling_fill_kernel(void *out, size_t n, int elem_kind, uint32_t seed, float scale) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
        uint32_t x = (uint32_t)i * 2654435761u ^ seed;
        x ^= x >> 16;
        x *= 0x7feb352du;
        x ^= x >> 15;
        x *= 0x846ca68bu;
        x ^= x >> 16;
        const float value = scale * ((float)(x >> 8) * (2.0f / 16777216.0f) - 1.0f);
        if (elem_kind == 0)
            ((float *)out)[i] = value;
        else if (elem_kind == 1)
            ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(value);
        else
            ((__half *)out)[i] = __float2half_rn(value);
    }
}

typedef struct pb_ceiling_state {
    cudaStream_t stream;
    cublasHandle_t cublas;
    cudaEvent_t start, stop;
    void *w;    /* (max n * k) of dtype: one weight buffer for every shape */
    void *x;    /* (m_rows, max k) of dtype */
    float *out; /* (m_rows, max n) */
} pb_ceiling_state;

/* cudaMalloc with out-of-memory said as "need X, have Y". */
static pb_status pb_ceiling_malloc(void **out, size_t bytes, const char *what) {
    cudaError_t err = cudaMalloc(out, bytes);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError();
        size_t free_bytes = 0, total_bytes = 0;
        PB_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
        return pb_fail(PB_ERR_OOM,
                       "gemm ceiling: %s needs %.2f GiB of device memory, %.2f GiB of %.2f GiB free (free the "
                       "model first or use fewer rows)",
                       what, (double)bytes / (1u << 30), (double)free_bytes / (1u << 30),
                       (double)total_bytes / (1u << 30));
    }
    PB_CUDA_CHECK(err);
    return PB_OK;
}

/* One pass: every shape, count[i] times, exactly as pb_cuda_matmul calls
 * cuBLAS (row-major out = x @ w^T read column-major; see backend_cuda.cu). */
static pb_status pb_ceiling_pass(const pb_ceiling_state *s, pb_dtype dtype, const int *n, const int *k,
                                 const int *count, int n_shapes, int m_rows) {
    const float alpha = 1.0f, beta = 0.0f;
    const cudaDataType_t type = dtype == PB_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    for (int i = 0; i < n_shapes; i++)
        for (int c = 0; c < count[i]; c++) {
            if (dtype == PB_DTYPE_F32)
                PB_CUBLAS_CHECK(cublasSgemm(s->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n[i], m_rows, k[i], &alpha,
                                            (const float *)s->w, k[i], (const float *)s->x, k[i], &beta, s->out, n[i]));
            else
                PB_CUBLAS_CHECK(cublasGemmEx(s->cublas, CUBLAS_OP_T, CUBLAS_OP_N, n[i], m_rows, k[i], &alpha, s->w,
                                             type, k[i], s->x, type, k[i], &beta, s->out, CUDA_R_32F, n[i],
                                             CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
        }
    return PB_OK;
}

static pb_status pb_ceiling_run(pb_ceiling_state *s, int device, pb_dtype dtype, const int *n, const int *k,
                                const int *count, int n_shapes, int m_rows, int repeats, double *seconds_per_pass) {
    PB_TRY(pb_ceiling_check_device(device));
    size_t max_w = 0, max_n = 0, max_k = 0;
    for (int i = 0; i < n_shapes; i++) {
        if (n[i] <= 0 || k[i] <= 0 || count[i] < 0)
            return pb_fail(PB_ERR_ARG, "gemm ceiling: shape %d is (n %d, k %d) x %d", i, n[i], k[i], count[i]);
        max_w = (size_t)n[i] * k[i] > max_w ? (size_t)n[i] * k[i] : max_w;
        max_n = (size_t)n[i] > max_n ? (size_t)n[i] : max_n;
        max_k = (size_t)k[i] > max_k ? (size_t)k[i] : max_k;
    }
    const size_t elem = dtype == PB_DTYPE_F32 ? sizeof(float) : sizeof(uint16_t);
    const int elem_kind = dtype == PB_DTYPE_F32 ? 0 : dtype == PB_DTYPE_BF16 ? 1 : 2;

    PB_CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    PB_CUBLAS_CHECK(cublasCreate(&s->cublas));
    PB_CUBLAS_CHECK(cublasSetStream(s->cublas, s->stream));
    /* The backend's math mode: no TF32 for f32 (backend_cuda.cu). */
    PB_CUBLAS_CHECK(cublasSetMathMode(s->cublas, CUBLAS_DEFAULT_MATH));
    PB_CUDA_CHECK(cudaEventCreate(&s->start));
    PB_CUDA_CHECK(cudaEventCreate(&s->stop));
    PB_TRY(pb_ceiling_malloc(&s->w, max_w * elem, "the weight buffer"));
    PB_TRY(pb_ceiling_malloc(&s->x, (size_t)m_rows * max_k * elem, "the input buffer"));
    PB_TRY(pb_ceiling_malloc((void **)&s->out, (size_t)m_rows * max_n * sizeof(float), "the output buffer"));
    /* Weights at the random models' scale (std 0.02), inputs like RMSNorm
     * outputs (order 1). */
    pb_ceiling_fill_kernel<<<pb_cuda_grid_for(max_w), PB_CUDA_BLOCK, 0, s->stream>>>(s->w, max_w, elem_kind, 1u,
                                                                                     0.035f);
    PB_CUDA_CHECK(cudaGetLastError());
    const size_t x_count = (size_t)m_rows * max_k;
    pb_ceiling_fill_kernel<<<pb_cuda_grid_for(x_count), PB_CUDA_BLOCK, 0, s->stream>>>(s->x, x_count, elem_kind, 2u,
                                                                                       1.7f);
    PB_CUDA_CHECK(cudaGetLastError());

    /* Warm-up: cuBLAS picks and loads its kernels, the clocks ramp up. */
    PB_TRY(pb_ceiling_pass(s, dtype, n, k, count, n_shapes, m_rows));
    PB_CUDA_CHECK(cudaStreamSynchronize(s->stream));
    PB_CUDA_CHECK(cudaEventRecord(s->start, s->stream));
    for (int r = 0; r < repeats; r++)
        PB_TRY(pb_ceiling_pass(s, dtype, n, k, count, n_shapes, m_rows));
    PB_CUDA_CHECK(cudaEventRecord(s->stop, s->stream));
    PB_CUDA_CHECK(cudaEventSynchronize(s->stop));
    float ms = 0.0f;
    PB_CUDA_CHECK(cudaEventElapsedTime(&ms, s->start, s->stop));
    *seconds_per_pass = (double)ms * 1e-3 / repeats;
    return PB_OK;
}

static void pb_ceiling_release(pb_ceiling_state *s) {
    if (s->stream)
        PB_CUDA_CHECK_VOID(cudaStreamSynchronize(s->stream));
    if (s->out)
        PB_CUDA_CHECK_VOID(cudaFree(s->out));
    if (s->x)
        PB_CUDA_CHECK_VOID(cudaFree(s->x));
    if (s->w)
        PB_CUDA_CHECK_VOID(cudaFree(s->w));
    if (s->start)
        PB_CUDA_CHECK_VOID(cudaEventDestroy(s->start));
    if (s->stop)
        PB_CUDA_CHECK_VOID(cudaEventDestroy(s->stop));
    if (s->cublas)
        PB_CUBLAS_CHECK_VOID(cublasDestroy(s->cublas));
    if (s->stream)
        PB_CUDA_CHECK_VOID(cudaStreamDestroy(s->stream));
}

extern "C" pb_status pb_cuda_gemm_ceiling(int device, pb_dtype dtype, const int *n, const int *k, const int *count,
                                          int n_shapes, int m_rows, int repeats, double *seconds_per_pass) {
    if (!n || !k || !count || !seconds_per_pass || n_shapes <= 0 || m_rows <= 0 || repeats <= 0)
        return pb_fail(PB_ERR_ARG, "pb_cuda_gemm_ceiling: need shapes, m_rows > 0, repeats > 0 and an output");
    *seconds_per_pass = 0.0;
    if (dtype != PB_DTYPE_F32 && dtype != PB_DTYPE_BF16 && dtype != PB_DTYPE_F16)
        return pb_fail(PB_ERR_ARG, "pb_cuda_gemm_ceiling: unknown dtype %d", (int)dtype);
    pb_ceiling_state state;
    memset(&state, 0, sizeof state);
    pb_status status = pb_ceiling_run(&state, device, dtype, n, k, count, n_shapes, m_rows, repeats, seconds_per_pass);
    pb_ceiling_release(&state); /* its failures keep the run's message (PB_CUDA_CHECK_VOID) */
    return status;
}

/* Host-to-device copy rate, the link streamed weights cross: `bytes` copied
 * `repeats` times (after one warm-up copy) from pinned host memory
 * (cudaHostAlloc) into device memory on a stream of its own, timed with
 * events. */
extern "C" pb_status pb_cuda_copy_ceiling(int device, size_t bytes, int repeats, double *bytes_per_s) {
    if (!bytes_per_s || bytes == 0 || repeats < 1)
        return pb_fail(PB_ERR_ARG, "pb_cuda_copy_ceiling: bytes > 0, repeats >= 1 and an output are required");
    *bytes_per_s = 0.0;
    PB_TRY(pb_ceiling_check_device(device));
    void *host = NULL, *dev = NULL;
    cudaStream_t stream = NULL;
    cudaEvent_t start = NULL, stop = NULL;
    pb_status status = PB_OK;
    float ms = 0.0f;
    if (cudaHostAlloc(&host, bytes, cudaHostAllocDefault) != cudaSuccess) {
        (void)cudaGetLastError();
        return pb_fail(PB_ERR_OOM, "copy ceiling: cannot pin %.2f GiB of host memory", (double)bytes / (1u << 30));
    }
    memset(host, 1, bytes); /* touched: no first-use faults in the timing */
    status = pb_ceiling_malloc(&dev, bytes, "the copy's destination");
    if (status == PB_OK && (cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) != cudaSuccess ||
                            cudaEventCreate(&start) != cudaSuccess || cudaEventCreate(&stop) != cudaSuccess))
        status = pb_fail(PB_ERR_CUDA, "copy ceiling: %s", cudaGetErrorString(cudaGetLastError()));
    for (int r = -1; status == PB_OK && r < repeats; r++) {
        if (r == 0 && cudaEventRecord(start, stream) != cudaSuccess)
            status = pb_fail(PB_ERR_CUDA, "copy ceiling: cudaEventRecord failed");
        if (status == PB_OK && cudaMemcpyAsync(dev, host, bytes, cudaMemcpyHostToDevice, stream) != cudaSuccess)
            status = pb_fail(PB_ERR_CUDA, "copy ceiling: %s", cudaGetErrorString(cudaGetLastError()));
    }
    if (status == PB_OK && (cudaEventRecord(stop, stream) != cudaSuccess || cudaEventSynchronize(stop) != cudaSuccess ||
                            cudaEventElapsedTime(&ms, start, stop) != cudaSuccess))
        status = pb_fail(PB_ERR_CUDA, "copy ceiling: timing failed: %s", cudaGetErrorString(cudaGetLastError()));
    if (status == PB_OK && ms > 0.0f)
        *bytes_per_s = (double)bytes * repeats / (ms * 1e-3);
    if (start)
        cudaEventDestroy(start);
    if (stop)
        cudaEventDestroy(stop);
    if (stream)
        cudaStreamDestroy(stream);
    if (dev)
        cudaFree(dev);
    cudaFreeHost(host);
    return status;
}
