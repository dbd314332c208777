/* The CUDA backend: owns one device, one stream and one cuBLAS handle bound to
 * it; implements pb_backend_ops (backend.h). Activations are fp32; weight
 * matrices are fp32 (cublasSgemm, no TF32) or bf16/fp16 (cublasGemmEx on
 * tensor cores with the activations rounded to the weight type and fp32
 * accumulation). Argument checks happen here on the host; kernels live one
 * op per file (kernels.cuh).
 *
 * Ordering: every op is enqueued on the backend's stream. upload copies the
 * caller's bytes into pinned staging and queues the transfer without waiting
 * (so the caller's buffer is free at return, and ids, positions and patch
 * values reach the device truly asynchronously); only uploads past
 * PB_CUDA_STAGING_MAX_UPLOAD wait. download synchronises the stream before
 * returning, so its result may be read at once; copy and the compute ops
 * are asynchronous, and a kernel that faults reports at the next download
 * or synchronize (or, with PB_CUDA_SYNC=1, at once, naming the kernel:
 * PB_CUDA_LAUNCHED). Work on another stream (NCCL) must synchronize first to
 * see an upload. attention_jobs waits for
 * the stream once before it launches: its job list comes from host memory. */
#include <stdio.h>
#include <stdlib.h>

#include <stddef.h>
#include <string.h>

#include "backend_cuda_impl.cuh"

extern "C" {
#include "backend/gemm_split.h"
#include "formats/dtype.h"
}

/* ---- lifetime and memory ------------------------------------------------ */

static void pb_cuda_destroy(pb_backend *backend) {
    if (!backend)
        return;
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (self->device >= 0)
        PB_CUDA_CHECK_VOID(cudaSetDevice(self->device));
    if (self->stream)
        PB_CUDA_CHECK_VOID(cudaStreamSynchronize(self->stream));
    pb_cuda_lanes_destroy(self);
    if (self->round_scratch)
        PB_CUDA_CHECK_VOID(cudaFree(self->round_scratch));
    if (self->dequant_scratch)
        PB_CUDA_CHECK_VOID(cudaFree(self->dequant_scratch));
    if (self->backward_scratch)
        PB_CUDA_CHECK_VOID(cudaFree(self->backward_scratch));
    for (int i = 0; i < PB_CUDA_STAGING_SLOTS; i++)
        if (self->staging_done[i])
            PB_CUDA_CHECK_VOID(cudaEventDestroy(self->staging_done[i]));
    if (self->staging)
        PB_CUDA_CHECK_VOID(cudaFreeHost(self->staging));
    free(self->attention_jobs_host);
    if (self->cublas)
        PB_CUBLAS_CHECK_VOID(cublasDestroy(self->cublas));
    if (self->stream)
        PB_CUDA_CHECK_VOID(cudaStreamDestroy(self->stream));
    free(self);
}

/* cudaMalloc with out-of-memory reported as "need X, have Y". */
static pb_status pb_cuda_malloc(pb_cuda_backend *self, void **out, size_t bytes) {
    void *ptr = NULL;
    cudaError_t err = cudaMalloc(&ptr, bytes);
    if (err == cudaErrorMemoryAllocation) {
        (void)cudaGetLastError(); /* clear it: an allocation failure is not sticky */
        size_t free_bytes = 0, total_bytes = 0;
        PB_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
        return pb_fail(PB_ERR_OOM,
                       "cuda alloc on device %d: need %zu bytes (%.2f GiB), have %zu free (%.2f GiB of %.2f GiB)",
                       self->device, bytes, (double)bytes / (1u << 30), free_bytes, (double)free_bytes / (1u << 30),
                       (double)total_bytes / (1u << 30));
    }
    PB_CUDA_CHECK(err);
    *out = ptr;
    return PB_OK;
}

static pb_status pb_cuda_alloc(pb_backend *backend, void **out, size_t bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(out != NULL, "alloc");
    *out = NULL;
    if (bytes == 0)
        return PB_OK;
    PB_TRY(pb_cuda_enter(self));
    return pb_cuda_malloc(self, out, bytes);
}

static pb_status pb_cuda_memory_info(pb_backend *backend, size_t *free_bytes, size_t *total_bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(free_bytes != NULL && total_bytes != NULL, "memory_info");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return PB_OK;
}

pb_status pb_cuda_scratch(pb_cuda_backend *self, void **buffer, size_t *capacity, size_t n, size_t size) {
    if (n <= *capacity)
        return PB_OK;
    PB_CUDA_CHECK(cudaStreamSynchronize(self->stream));
    if (*buffer)
        PB_CUDA_CHECK(cudaFree(*buffer));
    *buffer = NULL;
    *capacity = 0;
    PB_TRY(pb_cuda_malloc(self, buffer, n * size));
    *capacity = n;
    return PB_OK;
}

/* The 16-bit copy of a matmul's input, of at least n elements. */
static pb_status pb_cuda_round_scratch(pb_cuda_backend *self, size_t n) {
    void *buffer = self->round_scratch;
    pb_status status = pb_cuda_scratch(self, &buffer, &self->round_scratch_elems, n, sizeof(uint16_t));
    self->round_scratch = (uint16_t *)buffer;
    return status;
}

/* The decoded rows of a 16-bit or quantised matrix, at least n floats. */
static pb_status pb_cuda_dequant_scratch(pb_cuda_backend *self, size_t n) {
    void *buffer = self->dequant_scratch;
    pb_status status = pb_cuda_scratch(self, &buffer, &self->dequant_scratch_elems, n, sizeof(float));
    self->dequant_scratch = (float *)buffer;
    return status;
}

pb_status pb_cuda_dequant_tile(pb_cuda_backend *self, int n, int k, int *rows) {
    size_t tile = PB_CUDA_DEQUANT_MAX_ELEMS / (size_t)k;
    tile = tile < 1 ? 1 : tile > (size_t)n ? (size_t)n : tile;
    *rows = (int)tile;
    return pb_cuda_dequant_scratch(self, tile * (size_t)k);
}

pb_status pb_cuda_dequant_rows_to_scratch(pb_cuda_backend *self, const void *w, pb_dtype w_dtype, int row0, int rows,
                                          int k) {
    const size_t row_bytes = pb_dtype_bytes(w_dtype, (uint64_t)k);
    PB_CUDA_LAUNCHED(self, "dequant_rows",
                     pb_cuda_launch_dequant_rows(self->stream, self->dequant_scratch,
                                                 (const char *)w + (size_t)row0 * row_bytes, pb_dtype_ggml(w_dtype),
                                                 row_bytes, rows, k));
    return PB_OK;
}

static void pb_cuda_free(pb_backend *backend, void *ptr) {
    if (!ptr)
        return;
    pb_cuda_backend *self = pb_cuda_self(backend);
    self->rounded_x = NULL; /* the address may come back holding other data */
    PB_CUDA_CHECK_VOID(cudaSetDevice(self->device));
    PB_CUDA_CHECK_VOID(cudaFree(ptr));
}

/* The next staging slot, once its last copy has finished (normally long
 * since). */
static pb_status pb_cuda_staging_slot(pb_cuda_backend *self, unsigned char **out) {
    const int slot = self->staging_next;
    self->staging_next = (slot + 1) % PB_CUDA_STAGING_SLOTS;
    PB_CUDA_CHECK(cudaEventSynchronize(self->staging_done[slot]));
    *out = self->staging + (size_t)slot * PB_CUDA_STAGING_SLOT_BYTES;
    return PB_OK;
}

/* Records the slot just taken as in use until the stream passes here. */
static pb_status pb_cuda_staging_queued(pb_cuda_backend *self) {
    const int slot = (self->staging_next + PB_CUDA_STAGING_SLOTS - 1) % PB_CUDA_STAGING_SLOTS;
    PB_CUDA_CHECK(cudaEventRecord(self->staging_done[slot], self->stream));
    return PB_OK;
}

static pb_status pb_cuda_upload(pb_backend *backend, void *dst_device, const void *src_host, size_t bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (bytes == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dst_device != NULL && src_host != NULL, "upload");
    PB_TRY(pb_cuda_enter(self));
    if (!self->staging || bytes > PB_CUDA_STAGING_MAX_UPLOAD) {
        PB_CUDA_CHECK(cudaMemcpyAsync(dst_device, src_host, bytes, cudaMemcpyHostToDevice, self->stream));
        PB_CUDA_CHECK(cudaStreamSynchronize(self->stream));
        return PB_OK;
    }
    /* through pinned slots, chunk by chunk: no wait for the device */
    for (size_t done = 0; done < bytes;) {
        const size_t n = bytes - done < PB_CUDA_STAGING_SLOT_BYTES ? bytes - done : PB_CUDA_STAGING_SLOT_BYTES;
        unsigned char *slot = NULL;
        PB_TRY(pb_cuda_staging_slot(self, &slot));
        memcpy(slot, (const unsigned char *)src_host + done, n);
        PB_CUDA_CHECK(
            cudaMemcpyAsync((unsigned char *)dst_device + done, slot, n, cudaMemcpyHostToDevice, self->stream));
        PB_TRY(pb_cuda_staging_queued(self));
        done += n;
    }
    return PB_OK;
}

static pb_status pb_cuda_download(pb_backend *backend, void *dst_host, const void *src_device, size_t bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (bytes == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dst_host != NULL && src_device != NULL, "download");
    PB_TRY(pb_cuda_enter(self));
    if (!self->staging || bytes > PB_CUDA_STAGING_SLOT_BYTES) {
        PB_CUDA_CHECK(cudaMemcpyAsync(dst_host, src_device, bytes, cudaMemcpyDeviceToHost, self->stream));
        PB_CUDA_CHECK(cudaStreamSynchronize(self->stream));
        return PB_OK;
    }
    /* small results (metric values, rows): DMA into a pinned slot */
    unsigned char *slot = NULL;
    PB_TRY(pb_cuda_staging_slot(self, &slot));
    PB_CUDA_CHECK(cudaMemcpyAsync(slot, src_device, bytes, cudaMemcpyDeviceToHost, self->stream));
    PB_TRY(pb_cuda_staging_queued(self));
    PB_CUDA_CHECK(cudaStreamSynchronize(self->stream));
    memcpy(dst_host, slot, bytes);
    return PB_OK;
}

static pb_status pb_cuda_copy(pb_backend *backend, void *dst_device, const void *src_device, size_t bytes) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (bytes == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dst_device != NULL && src_device != NULL, "copy");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaMemcpyAsync(dst_device, src_device, bytes, cudaMemcpyDeviceToDevice, self->stream));
    return PB_OK;
}

static pb_status pb_cuda_synchronize(pb_backend *backend) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaStreamSynchronize(self->copy_stream)); /* streamed weights read ahead */
    PB_CUDA_CHECK(cudaStreamSynchronize(self->stream));
    return PB_OK;
}

/* ---- ops ------------------------------------------------------------------ */

/* Storage a matrix may have: fp32, 16-bit, or a GGUF's quantised blocks
 * (--dtype file, decoded on the device: dequant.cu). */
static int pb_cuda_dtype_ok(pb_dtype dtype) {
    return dtype == PB_DTYPE_F32 || dtype == PB_DTYPE_BF16 || dtype == PB_DTYPE_F16 || pb_dtype_is_quantised(dtype);
}

static pb_status pb_cuda_embed(pb_backend *backend, float *out, const void *table, pb_dtype table_dtype,
                               const int32_t *ids, int T, int d, float scale) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t n = 0;
    PB_TRY(pb_cuda_count(&n, "embed", T, d, 1));
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && table != NULL && ids != NULL, "embed");
    PB_CUDA_REQUIRE(pb_cuda_dtype_ok(table_dtype), "embed");
    PB_TRY(pb_cuda_enter(self));
    if (table_dtype == PB_DTYPE_F32)
        PB_CUDA_LAUNCHED(self, "embed",
                         pb_cuda_launch_embed(self->stream, out, (const float *)table, ids, T, d, scale));
    else if (pb_dtype_is_quantised(table_dtype))
        PB_CUDA_LAUNCHED(
            self, "dequant_gather",
            pb_cuda_launch_dequant_gather(self->stream, out, table, pb_dtype_ggml(table_dtype), ids, T, d, scale));
    else
        PB_CUDA_LAUNCHED(self, "embed16",
                         pb_cuda_launch_embed16(self->stream, out, (const uint16_t *)table,
                                                table_dtype == PB_DTYPE_BF16, ids, T, d, scale));
    return PB_OK;
}

static pb_status pb_cuda_rmsnorm(pb_backend *backend, float *out, const float *x, const float *weight, int rows, int d,
                                 float eps) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t n = 0;
    PB_TRY(pb_cuda_count(&n, "rmsnorm", rows, d, 1));
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && x != NULL, "rmsnorm");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "rmsnorm", pb_cuda_launch_rmsnorm(self->stream, out, x, weight, rows, d, eps));
    return PB_OK;
}

/* One chunk of matmul: out[row0.., col0..] (ld n) = x[row0..] (ld k) @
 * w[col0..]^T (ld k), x already 16-bit (the round scratch) for 16-bit w.
 * Row-major out (rows, n) = x (rows, k) @ w (n, k)^T is, read column-major,
 * out^T (n, rows) = w^T^T (n, k) @ x^T (k, rows): A = w seen as
 * column-major (k, n), transposed; B = x seen as column-major (k, rows);
 * C = out seen as column-major (n, rows). */
static pb_status pb_cuda_gemm_chunk(pb_cuda_backend *self, float *out, const void *x, const void *w, pb_dtype w_dtype,
                                    pb_gemm_chunk c, int n, int k, float alpha, float beta) {
    float *c_ptr = out + (size_t)c.row0 * n + c.col0;
    if (w_dtype == PB_DTYPE_F32) {
        PB_CUBLAS_CHECK(cublasSgemm(self->cublas, CUBLAS_OP_T, CUBLAS_OP_N, c.n_cols, c.n_rows, k, &alpha,
                                    (const float *)w + (size_t)c.col0 * k, k, (const float *)x + (size_t)c.row0 * k, k,
                                    &beta, c_ptr, n));
        PB_CUDA_LAUNCHED(self, "cublasSgemm", cudaSuccess);
        return PB_OK;
    }
    const cudaDataType_t type = w_dtype == PB_DTYPE_BF16 ? CUDA_R_16BF : CUDA_R_16F;
    PB_CUBLAS_CHECK(cublasGemmEx(self->cublas, CUBLAS_OP_T, CUBLAS_OP_N, c.n_cols, c.n_rows, k, &alpha,
                                 (const uint16_t *)w + (size_t)c.col0 * k, type, k,
                                 (const uint16_t *)x + (size_t)c.row0 * k, type, k, &beta, c_ptr, CUDA_R_32F, n,
                                 CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    PB_CUDA_LAUNCHED(self, "cublasGemmEx", cudaSuccess);
    return PB_OK;
}

/* out (rows, n) (ld n) = x (rows, k) @ w^T for quantised w (n rows of k):
 * tiles of w's rows decoded into the fp32 scratch, each multiplied in fp32
 * (the f32 load's arithmetic: --dtype file equals it). */
static pb_status pb_cuda_matmul_quantised(pb_cuda_backend *self, float *out, const float *x, const void *w,
                                          pb_dtype w_dtype, int rows, int n, int k) {
    int tile = 0;
    PB_TRY(pb_cuda_dequant_tile(self, n, k, &tile));
    const float alpha = 1.0f, beta = 0.0f;
    for (int col0 = 0; col0 < n; col0 += tile) {
        const int cols = n - col0 < tile ? n - col0 : tile;
        PB_TRY(pb_cuda_dequant_rows_to_scratch(self, w, w_dtype, col0, cols, k));
        pb_gemm_split split;
        PB_TRY(pb_gemm_split_plan(&split, rows, cols, k, PB_GEMM_MAX_ELEMENTS));
        for (int i = 0; i < pb_gemm_split_count(&split); i++)
            PB_TRY(pb_cuda_gemm_chunk(self, out + col0, x, self->dequant_scratch, PB_DTYPE_F32,
                                      pb_gemm_split_chunk(&split, i), n, k, alpha, beta));
    }
    return PB_OK;
}

static pb_status pb_cuda_matmul(pb_backend *backend, float *out, const float *x, const void *w, pb_dtype w_dtype,
                                const float *bias, int rows, int n, int k) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t out_count = 0, unused = 0;
    PB_TRY(pb_cuda_count(&out_count, "matmul", rows, n, 1));
    PB_TRY(pb_cuda_count(&unused, "matmul", rows, k, 1));
    PB_TRY(pb_cuda_count(&unused, "matmul", n, k, 1));
    if (out_count == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL, "matmul");
    PB_CUDA_REQUIRE(k == 0 || (x != NULL && w != NULL), "matmul");
    PB_CUDA_REQUIRE(pb_cuda_dtype_ok(w_dtype), "matmul");
    /* not pb_cuda_enter: a matmul keeps the rounded input of the last one */
    PB_CUDA_CHECK(cudaSetDevice(self->device));
    const float *out_end = out + out_count;
    if (self->rounded_x && out < self->rounded_x + self->rounded_count && self->rounded_x < out_end)
        self->rounded_x = NULL; /* this output overwrites the rounded input */
    if (k == 0) {
        /* An empty sum: out = bias (or 0). Not left to cuBLAS, whose k == 0
         * handling of C is not documented. */
        PB_CUDA_CHECK(cudaMemsetAsync(out, 0, out_count * sizeof(float), self->stream));
    } else if (pb_dtype_is_quantised(w_dtype)) {
        PB_TRY(pb_cuda_matmul_quantised(self, out, x, w, w_dtype, rows, n, k));
    } else {
        const float alpha = 1.0f, beta = 0.0f;
        const void *b_input = x; /* x, or its 16-bit copy */
        if (w_dtype != PB_DTYPE_F32) {
            /* Tensor cores want both inputs 16-bit: round x into the
             * scratch, then bf16/fp16 x bf16/fp16 -> fp32 with fp32
             * accumulation (CUBLAS_COMPUTE_32F). */
            const size_t x_count = (size_t)rows * (size_t)k;
            if (!(self->rounded_x == x && self->rounded_count == x_count && self->rounded_dtype == (int)w_dtype)) {
                self->rounded_x = NULL;
                PB_TRY(pb_cuda_round_scratch(self, x_count));
                PB_CUDA_LAUNCHED(
                    self, "round16",
                    pb_cuda_launch_round16(self->stream, self->round_scratch, x, x_count, w_dtype == PB_DTYPE_BF16));
                /* kept only if the output cannot overwrite x */
                if (!(out < x + x_count && x < out_end)) {
                    self->rounded_x = x;
                    self->rounded_count = x_count;
                    self->rounded_dtype = (int)w_dtype;
                }
            }
            b_input = self->round_scratch;
        }
        /* Past 2^31 elements in one matrix (a long sweep batch at 70B width)
         * cuBLAS's int sizes no longer hold: one call per chunk (gemm_split.h). */
        pb_gemm_split split;
        PB_TRY(pb_gemm_split_plan(&split, rows, n, k, PB_GEMM_MAX_ELEMENTS));
        for (int i = 0; i < pb_gemm_split_count(&split); i++)
            PB_TRY(
                pb_cuda_gemm_chunk(self, out, b_input, w, w_dtype, pb_gemm_split_chunk(&split, i), n, k, alpha, beta));
    }
    if (bias)
        PB_CUDA_LAUNCHED(self, "add_bias", pb_cuda_launch_add_bias(self->stream, out, bias, rows, n));
    return PB_OK;
}

static pb_status pb_cuda_layernorm(pb_backend *backend, float *out, const float *x, const float *weight,
                                   const float *bias, int rows, int d, float eps) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t n = 0;
    PB_TRY(pb_cuda_count(&n, "layernorm", rows, d, 1));
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && x != NULL, "layernorm");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "layernorm", pb_cuda_launch_layernorm(self->stream, out, x, weight, bias, rows, d, eps));
    return PB_OK;
}

static pb_status pb_cuda_activate(pb_backend *backend, float *x, size_t n, pb_activation act) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    pb_cuda_activation kernel_act;
    if (!pb_cuda_activation_of(act, &kernel_act))
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda activate: activation %d", (int)act);
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(x != NULL, "activate");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "activate", pb_cuda_launch_activate(self->stream, x, n, kernel_act));
    return PB_OK;
}

static pb_status pb_cuda_rope(pb_backend *backend, float *x, const int32_t *positions, const float *inv_freq, int T,
                              int n_heads, int head_dim, int rotary_dims, float scale) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t n = 0;
    PB_TRY(pb_cuda_count(&n, "rope", T, n_heads, head_dim));
    PB_CUDA_REQUIRE(rotary_dims > 0 && rotary_dims <= head_dim && rotary_dims % 2 == 0, "rope");
    PB_CUDA_REQUIRE(scale > 0.0f && isfinite(scale), "rope");
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(x != NULL && positions != NULL && inv_freq != NULL, "rope");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(
        self, "rope",
        pb_cuda_launch_rope(self->stream, x, positions, inv_freq, T, n_heads, head_dim, rotary_dims, scale));
    return PB_OK;
}

static pb_status pb_cuda_attention(pb_backend *backend, float *out, const float *q, const float *k, const float *v,
                                   int T, int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                                   const pb_attention_params *params) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    size_t q_count = 0, kv_count = 0;
    PB_TRY(pb_cuda_count(&q_count, "attention", T, n_heads, head_dim));
    PB_TRY(pb_cuda_count(&kv_count, "attention", T_kv, n_kv_heads, head_dim));
    PB_CUDA_REQUIRE(n_heads > 0 && n_kv_heads > 0 && head_dim > 0, "attention");
    PB_CUDA_REQUIRE(n_heads % n_kv_heads == 0, "attention");
    PB_CUDA_REQUIRE(q_start >= 0 && (int64_t)q_start + T <= T_kv, "attention");
    if (T == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && q != NULL && k != NULL && v != NULL, "attention");
    if (n_heads > 65535)
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda attention: n_heads %d exceeds the grid limit 65535", n_heads);
    const size_t shared_bytes = pb_cuda_attention_shared_bytes(head_dim);
    if (shared_bytes > 48 * 1024)
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda attention: head_dim %d needs %zu bytes of shared memory (max 49152)",
                       head_dim, shared_bytes);
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "attention",
                     pb_cuda_launch_attention(self->stream, out, q, k, v, T, q_start, n_heads, n_kv_heads, head_dim,
                                              pb_cuda_attention_score_of(params, head_dim)));
    return PB_OK;
}

/* A host descriptor array of at least n jobs (grown, kept). */
static pb_status pb_cuda_attention_job_buffers(pb_cuda_backend *self, size_t n) {
    if (n <= self->attention_jobs_capacity)
        return PB_OK;
    pb_cuda_attention_job *host = (pb_cuda_attention_job *)realloc(self->attention_jobs_host,
                                                                   n * sizeof(pb_cuda_attention_job));
    if (!host)
        return pb_fail(PB_ERR_OOM, "cuda attention_jobs: out of host memory for %zu job descriptors", n);
    self->attention_jobs_host = host;
    self->attention_jobs_capacity = n;
    return PB_OK;
}

/* Ragged causal attention (backend.h). The descriptors are built in the
 * backend's host array and go to the kernels by value, PB_ATTENTION_JOBS_
 * PER_LAUNCH jobs per launch (kernels.cuh): no upload, no synchronisation,
 * and the caller's `jobs` is free at return. */
static pb_status pb_cuda_attention_jobs(pb_backend *backend, float *out, const float *q, const pb_attention_job *jobs,
                                        int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                        const pb_attention_params *params) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(n_jobs >= 0, "attention_jobs");
    PB_CUDA_REQUIRE(n_heads > 0 && n_kv_heads > 0 && head_dim > 0, "attention_jobs");
    PB_CUDA_REQUIRE(n_heads % n_kv_heads == 0, "attention_jobs");
    if (n_jobs == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(jobs != NULL, "attention_jobs");
    int64_t total_rows = 0;
    for (int j = 0; j < n_jobs; j++) {
        const pb_attention_job *job = &jobs[j];
        size_t unused = 0;
        if (job->n < 0 || job->p0 < 0 || job->q_row < 0)
            return pb_fail(PB_ERR_ARG, "cuda attention_jobs: job %d has n %d, p0 %d, q_row %d (negative)", j, job->n,
                           job->p0, job->q_row);
        if (job->n == 0)
            continue;
        const int lacks_new = job->k_new == NULL || job->v_new == NULL;
        const int lacks_prefix = job->p0 > 0 && (job->k_prefix == NULL || job->v_prefix == NULL);
        if (lacks_new || lacks_prefix)
            return pb_fail(PB_ERR_ARG, "cuda attention_jobs: job %d (n %d, p0 %d) lacks its %s keys", j, job->n,
                           job->p0, lacks_new ? "new" : "prefix");
        /* Row and key indices (q_row + n, p0 + n) fit int, element offsets
         * size_t. */
        if ((int64_t)job->q_row + job->n > INT32_MAX || (int64_t)job->p0 + job->n > INT32_MAX)
            return pb_fail(PB_ERR_ARG, "cuda attention_jobs: job %d (q_row %d, n %d, p0 %d) overflows int", j,
                           job->q_row, job->n, job->p0);
        PB_TRY(pb_cuda_count(&unused, "attention_jobs", (int64_t)job->q_row + job->n, n_heads, head_dim));
        PB_TRY(pb_cuda_count(&unused, "attention_jobs", (int64_t)job->p0 + job->n, n_kv_heads, head_dim));
        total_rows += job->n;
    }
    if (total_rows == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && q != NULL, "attention_jobs");
    if (total_rows > INT32_MAX)
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda attention_jobs: %lld query rows exceed the grid limit %d",
                       (long long)total_rows, INT32_MAX);
    if (n_heads > 65535)
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda attention_jobs: n_heads %d exceeds the grid limit 65535", n_heads);
    const size_t shared_bytes = pb_cuda_attention_shared_bytes(head_dim);
    if (shared_bytes > 48 * 1024)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "cuda attention_jobs: head_dim %d needs %zu bytes of shared memory (max 49152)", head_dim,
                       shared_bytes);
    PB_TRY(pb_cuda_enter(self));
    PB_TRY(pb_cuda_attention_job_buffers(self, (size_t)n_jobs));
    const int tile_q = pb_cuda_attention_tile_queries(n_heads, n_kv_heads);
    int with_queries = 0; /* jobs with n > 0: empty ones do not lower the average */
    pb_cuda_describe_jobs(self->attention_jobs_host, jobs, n_jobs, tile_q, NULL, NULL, &with_queries);
    /* The tiled kernel reads each key once per tile of queries (times the
     * query heads of a GQA group); it pays off when the jobs average at
     * least a quarter tile of queries (prefill, patching suffixes). Short
     * jobs (decoding, patches near the end) keep the one-block-per-query
     * kernel. It loads 16-byte vectors, so every row must be 16-byte
     * aligned (head_dim % 4 == 0 and every base pointer). */
    int aligned = ((uintptr_t)out | (uintptr_t)q) % 16 == 0;
    for (int j = 0; j < n_jobs && aligned; j++)
        aligned = ((uintptr_t)jobs[j].k_new | (uintptr_t)jobs[j].v_new | (uintptr_t)jobs[j].k_prefix |
                   (uintptr_t)jobs[j].v_prefix) %
                      16 ==
                  0;
    const int applies = self->attention_kernel != 1 && pb_cuda_attention_tiled_ok(head_dim) && aligned;
    const size_t tiled_bytes = pb_cuda_attention_tiled_shared_bytes(head_dim);
    if (applies && self->attention_kernel == 2 && tiled_bytes > self->shared_optin_bytes)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "cuda attention_jobs: the tiled kernel at head_dim %d needs %zu bytes of shared memory, the "
                       "device allows %zu per block (PB_CUDA_ATTENTION=tiled)",
                       head_dim, tiled_bytes, self->shared_optin_bytes);
    const int tiled = applies && tiled_bytes <= self->shared_optin_bytes &&
                      (self->attention_kernel == 2 || total_rows >= (int64_t)with_queries * (tile_q / 4));
    const pb_cuda_attention_job *desc = self->attention_jobs_host;
    const pb_cuda_attention_score score = pb_cuda_attention_score_of(params, head_dim);
    if (tiled)
        PB_CUDA_LAUNCHED(
            self, "attention_tiled",
            pb_cuda_launch_attention_tiled(self->stream, out, q, desc, n_jobs, n_heads, n_kv_heads, head_dim, score));
    else
        PB_CUDA_LAUNCHED(
            self, "attention_jobs",
            pb_cuda_launch_attention_jobs(self->stream, out, q, desc, n_jobs, n_heads, n_kv_heads, head_dim, score));
    return PB_OK;
}

static_assert(sizeof(pb_cuda_copy_region) == sizeof(pb_copy_region) &&
                  offsetof(pb_cuda_copy_region, src) == offsetof(pb_copy_region, src) &&
                  offsetof(pb_cuda_copy_region, n) == offsetof(pb_copy_region, n),
              "pb_cuda_copy_region must match backend.h's pb_copy_region");

/* Batched copies (backend.h): one launch per PB_COPY_REGIONS_PER_LAUNCH
 * regions with the list as the kernel's by-value parameter, so the caller's
 * array is free at return without any synchronisation. */
static pb_status pb_cuda_op_copy_regions(pb_backend *backend, const pb_copy_region *regions, int n_regions) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    PB_CUDA_REQUIRE(n_regions >= 0, "copy_regions");
    if (n_regions == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(regions != NULL, "copy_regions");
    for (int i = 0; i < n_regions; i++)
        if (regions[i].n && (!regions[i].dst || !regions[i].src))
            return pb_fail(PB_ERR_ARG, "cuda copy_regions: region %d of %zu floats has a NULL pointer", i,
                           regions[i].n);
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "copy_regions",
                     pb_cuda_launch_copy_regions(self->stream, (const pb_cuda_copy_region *)regions, n_regions));
    return PB_OK;
}

/* copy_rows (backend.h): one 2D copy on the stream, asynchronous. */
static pb_status pb_cuda_copy_rows(pb_backend *backend, float *dst, size_t dst_stride, const float *src,
                                   size_t src_stride, size_t width, size_t rows) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (width == 0 || rows == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(dst != NULL && src != NULL, "copy_rows");
    PB_CUDA_REQUIRE(dst_stride >= width && src_stride >= width, "copy_rows");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_stride * sizeof(float), src, src_stride * sizeof(float),
                                    width * sizeof(float), rows, cudaMemcpyDeviceToDevice, self->stream));
    return PB_OK;
}

static pb_status pb_cuda_glu(pb_backend *backend, float *out, const float *gate, const float *up, size_t rows,
                             size_t width, size_t stride, pb_activation act) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    pb_cuda_activation kernel_act;
    if (!pb_cuda_activation_of(act, &kernel_act))
        return pb_fail(PB_ERR_UNSUPPORTED, "cuda glu: activation %d", (int)act);
    if (rows == 0 || width == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && gate != NULL && up != NULL && stride >= width, "glu");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "glu", pb_cuda_launch_glu(self->stream, out, gate, up, rows, width, stride, kernel_act));
    return PB_OK;
}

static pb_status pb_cuda_softcap(pb_backend *backend, float *x, size_t n, float cap) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(x != NULL && cap > 0.0f, "softcap");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "softcap", pb_cuda_launch_softcap(self->stream, x, n, cap));
    return PB_OK;
}

static pb_status pb_cuda_add(pb_backend *backend, float *out, const float *a, const float *b, size_t n) {
    pb_cuda_backend *self = pb_cuda_self(backend);
    if (n == 0)
        return PB_OK;
    PB_CUDA_REQUIRE(out != NULL && a != NULL && b != NULL, "add");
    PB_TRY(pb_cuda_enter(self));
    PB_CUDA_LAUNCHED(self, "add", pb_cuda_launch_add(self->stream, out, a, b, n));
    return PB_OK;
}

/* Positional: the struct is C, and this file is C++ (no designated
 * initialisers before C++20). Order follows pb_backend_ops. */
static const pb_backend_ops pb_cuda_ops = {
    "cuda",
    pb_cuda_destroy,
    pb_cuda_alloc,
    pb_cuda_free,
    pb_cuda_upload,
    pb_cuda_download,
    pb_cuda_copy,
    pb_cuda_synchronize,
    pb_cuda_embed,
    pb_cuda_rmsnorm,
    pb_cuda_layernorm,
    pb_cuda_activate,
    pb_cuda_matmul,
    pb_cuda_rope,
    pb_cuda_attention,
    pb_cuda_glu,
    pb_cuda_softcap,
    pb_cuda_add,
    pb_cuda_attention_jobs,
    pb_cuda_memory_info,
    pb_cuda_metric_rows,
    0, /* host_memory: device memory is not host memory */
    pb_cuda_op_copy_regions,
    pb_cuda_copy_rows,
    pb_cuda_lane_release,
    pb_cuda_lane_upload,
    pb_cuda_lane_wait,
    pb_cuda_pin,
    pb_cuda_unpin,
    pb_cuda_matmul_dx,
    pb_cuda_norm_backward,
    pb_cuda_glu_backward,
    pb_cuda_attention_backward,
};

static pb_status pb_cuda_init(pb_cuda_backend *self, int device) {
    const char *kernel = getenv("PB_CUDA_ATTENTION");
    if (kernel && *kernel && strcmp(kernel, "auto") != 0) {
        if (strcmp(kernel, "rows") == 0)
            self->attention_kernel = 1;
        else if (strcmp(kernel, "tiled") == 0)
            self->attention_kernel = 2;
        else
            return pb_fail(PB_ERR_ARG, "PB_CUDA_ATTENTION=%s: expected auto, rows or tiled", kernel);
    }
    PB_TRY(pb_cuda_sync_mode_parse(getenv("PB_CUDA_SYNC"), &self->sync_launches));
    PB_CUDA_CHECK(cudaSetDevice(device));
    self->device = device;
    int optin = 0;
    PB_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
    self->shared_optin_bytes = optin > 0 ? (size_t)optin : 48 * 1024;
    /* Non-blocking: the backend's work never waits on the legacy default
     * stream that other libraries may use. */
    PB_CUDA_CHECK(cudaStreamCreateWithFlags(&self->stream, cudaStreamNonBlocking));
    PB_CUBLAS_CHECK(cublasCreate(&self->cublas));
    PB_CUBLAS_CHECK(cublasSetStream(self->cublas, self->stream));
    /* Full fp32: no TF32 tensor-core shortcut, so matmul tracks the CPU
     * reference to fp32 rounding. */
    PB_CUBLAS_CHECK(cublasSetMathMode(self->cublas, CUBLAS_DEFAULT_MATH));
    for (int i = 0; i < PB_CUDA_STAGING_SLOTS; i++)
        PB_CUDA_CHECK(cudaEventCreateWithFlags(&self->staging_done[i], cudaEventDisableTiming));
    PB_TRY(pb_cuda_lanes_init(self));
    void *pinned = NULL;
    if (cudaHostAlloc(&pinned, PB_CUDA_STAGING_SLOTS * PB_CUDA_STAGING_SLOT_BYTES, cudaHostAllocDefault) == cudaSuccess)
        self->staging = (unsigned char *)pinned;
    else
        (void)cudaGetLastError(); /* no pinned memory: the direct paths, not a failure */
    return PB_OK;
}

extern "C" pb_status pb_backend_cuda_create(pb_backend **out, int device) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "pb_backend_cuda_create: out is NULL");
    *out = NULL;
    int count = 0;
    PB_CUDA_CHECK_AS(PB_ERR_UNSUPPORTED, cudaGetDeviceCount(&count));
    if (count <= 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "cudaGetDeviceCount reports no CUDA device");
    if (device < 0 || device >= count)
        return pb_fail(PB_ERR_ARG, "pb_backend_cuda_create: device %d out of range (%d present)", device, count);

    pb_cuda_backend *self = (pb_cuda_backend *)calloc(1, sizeof *self);
    if (!self)
        return pb_fail(PB_ERR_OOM, "pb_backend_cuda_create: out of host memory");
    self->base.ops = &pb_cuda_ops;
    self->base.impl = self;
    self->device = -1;
    pb_status status = pb_cuda_init(self, device);
    if (status != PB_OK) {
        pb_cuda_destroy(&self->base); /* its failures keep the init's message (PB_CUDA_CHECK_VOID) */
        return status;
    }
    *out = &self->base;
    return PB_OK;
}

extern "C" pb_status pb_cuda_device_count(int *count) {
    if (!count)
        return pb_fail(PB_ERR_ARG, "pb_cuda_device_count: count is NULL");
    *count = 0;
    PB_CUDA_CHECK_AS(PB_ERR_UNSUPPORTED, cudaGetDeviceCount(count));
    return PB_OK;
}

extern "C" pb_status pb_cuda_nccl_version(int *out) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "pb_cuda_nccl_version: out is NULL");
    *out = 0;
    PB_NCCL_CHECK(ncclGetVersion(out));
    return PB_OK;
}
