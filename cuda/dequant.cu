/* Quantised ggml weight rows decoded to fp32 on the device, bit for bit as
 * host/formats/quant.c's pb_dequantize (whose comments document the block
 * layouts): the scratch that a quantised matrix's tile is decoded into
 * before cuBLAS must hold the numbers the CPU backends multiply by.
 *
 * One thread per output element decodes it from its block: reads the
 * block's fp16 scales and its own bits, and evaluates quant.c's expression
 * in quant.c's order (products first, each rounded to fp32, then the
 * offset). Every product that an addition follows is exact in fp32 (an
 * fp16 scale times integers of at most 11 bits: at most 22 significant
 * bits), so a fused d * q - m would round the same; this file is still
 * compiled with -fmad=false (its emulator copy with -ffp-contract=off,
 * CMakeLists.txt) so that no future expression here can fuse where that
 * stops being true. No product or difference here is an fp32 subnormal
 * (all are multiples of 2^-24), so flush-to-zero cannot matter. Blocks are
 * read byte by byte: they have no alignment, as in a GGUF. */
#include "kernels.cuh"

extern "C" {
#include "formats/quant.h"
}

/* fp16 to fp32 exactly as quant.c's pb_fp16_to_fp32: subnormals scaled by
 * 2^-24 (exact, normal in fp32), Inf and NaN with their payload kept. */
static __device__ __forceinline__ float pb_dequant_half(const uint8_t *p) {
    const unsigned h = (unsigned)p[0] | ((unsigned)p[1] << 8);
    const unsigned sign = (h & 0x8000u) << 16, exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
    if (exponent == 0)
        return __uint_as_float(sign | __float_as_uint((float)mantissa * 0x1p-24f));
    const unsigned exponent32 = exponent == 0x1fu ? 0xffu : exponent - 15u + 127u;
    return __uint_as_float(sign | (exponent32 << 23) | (mantissa << 13));
}

/* the fifth bit of element j of a Q5_0/Q5_1 block: bit j of the
 * little-endian word qh */
static __device__ __forceinline__ int pb_dequant_bit5(const uint8_t *qh, int j) { return (qh[j / 8] >> (j % 8)) & 1; }

/* element j (< 32) of a 32-element block at x */
static __device__ __forceinline__ float pb_dequant_q4_0(const uint8_t *x, int j) {
    const uint8_t byte = x[2 + j % 16];
    const int q = j < 16 ? byte & 0x0f : byte >> 4;
    return pb_dequant_half(x) * (float)(q - 8);
}

static __device__ __forceinline__ float pb_dequant_q4_1(const uint8_t *x, int j) {
    const uint8_t byte = x[4 + j % 16];
    const float p = pb_dequant_half(x) * (float)(j < 16 ? byte & 0x0f : byte >> 4);
    return p + pb_dequant_half(x + 2);
}

static __device__ __forceinline__ float pb_dequant_q5_0(const uint8_t *x, int j) {
    const uint8_t byte = x[6 + j % 16];
    const int q = (j < 16 ? byte & 0x0f : byte >> 4) | (pb_dequant_bit5(x + 2, j) << 4);
    return pb_dequant_half(x) * (float)(q - 16);
}

static __device__ __forceinline__ float pb_dequant_q5_1(const uint8_t *x, int j) {
    const uint8_t byte = x[8 + j % 16];
    const int q = (j < 16 ? byte & 0x0f : byte >> 4) | (pb_dequant_bit5(x + 4, j) << 4);
    const float p = pb_dequant_half(x) * (float)q;
    return p + pb_dequant_half(x + 2);
}

static __device__ __forceinline__ float pb_dequant_q8_0(const uint8_t *x, int j) {
    return (float)(int8_t)x[2 + j] * pb_dequant_half(x);
}

/* Element j (< 256) of a super-block at x. In Q2_K and Q3_K element j is
 * the 2-bit field at shift 2 * (j % 128 / 32) of qs byte 32 * (j / 128) +
 * j % 32, and its 16-element group, scale s = j / 16. */
static __device__ __forceinline__ float pb_dequant_q2_k(const uint8_t *x, int j) {
    const uint8_t sc = x[j / 16];
    const int q = (x[16 + 32 * (j / 128) + j % 32] >> (2 * (j % 128 / 32))) & 3;
    const float dl = pb_dequant_half(x + 80) * (float)(sc & 0x0f);
    const float ml = pb_dequant_half(x + 82) * (float)(sc >> 4);
    const float p = dl * (float)q;
    return p - ml;
}

/* The third bit is bit j / 32 of hmask[j % 32]; clear, it subtracts 4. */
static __device__ __forceinline__ float pb_dequant_q3_k(const uint8_t *x, int j) {
    const uint8_t *packed = x + 96;
    const int s = j / 16;
    const int low_scale = (packed[s % 8] >> (4 * (s / 8))) & 0x0f;
    const int high_scale = (packed[8 + s % 4] >> (2 * (s / 4))) & 0x03;
    const int low = (x[32 + 32 * (j / 128) + j % 32] >> (2 * (j % 128 / 32))) & 3;
    const int sub = (x[j % 32] >> (j / 32)) & 1 ? 0 : 4;
    const float dl = pb_dequant_half(x + 108) * (float)((low_scale | (high_scale << 4)) - 32);
    return dl * (float)(low - sub);
}

/* quant.c's pb_scale_min_k4: 6-bit scale and min of sub-block s (< 8) */
static __device__ __forceinline__ void pb_dequant_scale_min_k4(const uint8_t *q, int s, int *scale, int *min_value) {
    if (s < 4) {
        *scale = q[s] & 63;
        *min_value = q[s + 4] & 63;
    } else {
        *scale = (q[s + 4] & 0x0f) | ((q[s - 4] >> 6) << 4);
        *min_value = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
    }
}

/* Q4_K/Q5_K: element j is in sub-block s = j / 32, the low (s even) or high
 * nibble of qs byte 32 * (j / 64) + j % 32; Q5_K's fifth bit is bit s of
 * qh[j % 32]. */
static __device__ __forceinline__ float pb_dequant_k4(const uint8_t *x, int j, int q) {
    int scale, min_value;
    pb_dequant_scale_min_k4(x + 4, j / 32, &scale, &min_value);
    const float d1 = pb_dequant_half(x) * (float)scale;
    const float m1 = pb_dequant_half(x + 2) * (float)min_value;
    const float p = d1 * (float)q;
    return p - m1;
}

static __device__ __forceinline__ int pb_dequant_nibble_k4(const uint8_t *qs, int j) {
    const uint8_t byte = qs[32 * (j / 64) + j % 32];
    return (j / 32) % 2 ? byte >> 4 : byte & 0x0f;
}

static __device__ __forceinline__ float pb_dequant_q4_k(const uint8_t *x, int j) {
    return pb_dequant_k4(x, j, pb_dequant_nibble_k4(x + 16, j));
}

static __device__ __forceinline__ float pb_dequant_q5_k(const uint8_t *x, int j) {
    const int high = (x[16 + j % 32] >> (j / 32)) & 1;
    return pb_dequant_k4(x, j, pb_dequant_nibble_k4(x + 48, j) | (high << 4));
}

/* Q6_K: in half h = j / 128, element l + 32 r takes the low (r < 2) or high
 * nibble of ql[64 h + l + 32 (r & 1)], bits 2r..2r+1 of qh[32 h + l] and
 * scale 8 h + l / 16 + 2 r. */
static __device__ __forceinline__ float pb_dequant_q6_k(const uint8_t *x, int j) {
    const int h = j / 128, r = j % 128 / 32, l = j % 32;
    const uint8_t low_byte = x[64 * h + l + 32 * (r & 1)];
    const int low = r < 2 ? low_byte & 0x0f : low_byte >> 4;
    const int high = (x[128 + 32 * h + l] >> (2 * r)) & 3;
    const float ds = pb_dequant_half(x + 208) * (float)(int8_t)x[192 + 8 * h + l / 16 + 2 * r];
    return ds * (float)((low | (high << 4)) - 32);
}

/* Element j of the block at x of `type` (one of pb_dequant_geometry's). */
static __device__ __forceinline__ float pb_dequant_element(uint32_t type, const uint8_t *x, int j) {
    switch (type) {
    case PB_GGML_F16: return pb_dequant_half(x);
    case PB_GGML_BF16: return __uint_as_float(((unsigned)x[0] | ((unsigned)x[1] << 8)) << 16);
    case PB_GGML_Q4_0: return pb_dequant_q4_0(x, j);
    case PB_GGML_Q4_1: return pb_dequant_q4_1(x, j);
    case PB_GGML_Q5_0: return pb_dequant_q5_0(x, j);
    case PB_GGML_Q5_1: return pb_dequant_q5_1(x, j);
    case PB_GGML_Q8_0: return pb_dequant_q8_0(x, j);
    case PB_GGML_Q2_K: return pb_dequant_q2_k(x, j);
    case PB_GGML_Q3_K: return pb_dequant_q3_k(x, j);
    case PB_GGML_Q4_K: return pb_dequant_q4_k(x, j);
    case PB_GGML_Q5_K: return pb_dequant_q5_k(x, j);
    default: return pb_dequant_q6_k(x, j);
    }
}

/* Elements and bytes per block of the types decoded here (quant.c's
 * table); 0 for the others. */
static int pb_dequant_geometry(uint32_t type, int *block_bytes) {
    switch (type) {
    case PB_GGML_F16:
    case PB_GGML_BF16: *block_bytes = 2; return 1;
    case PB_GGML_Q4_0: *block_bytes = 18; return 32;
    case PB_GGML_Q4_1: *block_bytes = 20; return 32;
    case PB_GGML_Q5_0: *block_bytes = 22; return 32;
    case PB_GGML_Q5_1: *block_bytes = 24; return 32;
    case PB_GGML_Q8_0: *block_bytes = 34; return 32;
    case PB_GGML_Q2_K: *block_bytes = 84; return 256;
    case PB_GGML_Q3_K: *block_bytes = 110; return 256;
    case PB_GGML_Q4_K: *block_bytes = 144; return 256;
    case PB_GGML_Q5_K: *block_bytes = 176; return 256;
    case PB_GGML_Q6_K: *block_bytes = 210; return 256;
    default: *block_bytes = 0; return 0;
    }
}

/* out (rows, k) from rows of k / block blocks, row r at src + r * row_bytes */
static __global__ void pb_dequant_rows_kernel(float *out, const uint8_t *src, uint32_t type, size_t row_bytes, int k,
                                              int block, int block_bytes, size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t row = i / (size_t)k;
        const int column = (int)(i % (size_t)k);
        const uint8_t *x = src + row * row_bytes + (size_t)(column / block) * (size_t)block_bytes;
        out[i] = pb_dequant_element(type, x, column % block);
    }
}

cudaError_t pb_cuda_launch_dequant_rows(cudaStream_t stream, float *out, const void *src, uint32_t ggml_type,
                                        size_t row_bytes, int rows, int k) {
    int block_bytes;
    const int block = pb_dequant_geometry(ggml_type, &block_bytes);
    if (block == 0 || k % block != 0)
        return cudaErrorInvalidValue;
    const size_t total = (size_t)rows * (size_t)k;
    pb_dequant_rows_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(
        out, (const uint8_t *)src, ggml_type, row_bytes, k, block, block_bytes, total);
    return cudaGetLastError();
}

/* out (T, d) = row ids[t] of the table (rows of d / block blocks, row_bytes
 * apart) decoded, times scale (the embedding of quantised tokens: decoded
 * first, then scaled, as the CPU backend does it) */
static __global__ void pb_dequant_gather_kernel(float *out, const uint8_t *table, uint32_t type, size_t row_bytes,
                                                const int32_t *ids, int d, int block, int block_bytes, float scale,
                                                size_t total) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total; i += (size_t)gridDim.x * blockDim.x) {
        const size_t t = i / (size_t)d;
        const int column = (int)(i % (size_t)d);
        const uint8_t *x = table + (size_t)ids[t] * row_bytes + (size_t)(column / block) * (size_t)block_bytes;
        const float v = pb_dequant_element(type, x, column % block);
        out[i] = scale == 1.0f ? v : v * scale;
    }
}

cudaError_t pb_cuda_launch_dequant_gather(cudaStream_t stream, float *out, const void *table, uint32_t ggml_type,
                                          const int32_t *ids, int T, int d, float scale) {
    int block_bytes;
    const int block = pb_dequant_geometry(ggml_type, &block_bytes);
    if (block == 0 || d % block != 0)
        return cudaErrorInvalidValue;
    const size_t total = (size_t)T * (size_t)d, row_bytes = (size_t)(d / block) * (size_t)block_bytes;
    pb_dequant_gather_kernel<<<pb_cuda_grid_for(total), PB_CUDA_BLOCK, 0, stream>>>(
        out, (const uint8_t *)table, ggml_type, row_bytes, ids, d, block, block_bytes, scale, total);
    return cudaGetLastError();
}
