/* ggml type table and scalar dequantisers (fp32 out). Each decoder follows
 * the block struct in ggml-common.h and evaluates in the same order as
 * ggml's reference dequantize_row_* (product, then offset, in fp32), so the
 * output matches ggml and gguf-py bit for bit. Products are stored in a
 * named float before the subtraction so that a compiler allowed to contract
 * within an expression (clang's default) cannot fuse them into an FMA. */
#include <string.h>

#include <math.h>

#include "util/internal.h"
#include "formats/dtype.h"
#include "formats/quant.h"

#define QK_K 256

typedef struct {
    const char *name;
    uint32_t block_size;
    uint32_t block_bytes;
} pb_ggml_type_info;

static const pb_ggml_type_info pb_ggml_types[PB_GGML_TYPE_LIMIT] = {
    [PB_GGML_F32] = {"F32", 1, 4},
    [PB_GGML_F16] = {"F16", 1, 2},
    [PB_GGML_Q4_0] = {"Q4_0", 32, 2 + 16},
    [PB_GGML_Q4_1] = {"Q4_1", 32, 2 + 2 + 16},
    [PB_GGML_Q5_0] = {"Q5_0", 32, 2 + 4 + 16},
    [PB_GGML_Q5_1] = {"Q5_1", 32, 2 + 2 + 4 + 16},
    [PB_GGML_Q8_0] = {"Q8_0", 32, 2 + 32},
    [PB_GGML_Q8_1] = {"Q8_1", 32, 4 + 4 + 32},
    [PB_GGML_Q2_K] = {"Q2_K", QK_K, 2 + 2 + QK_K / 16 + QK_K / 4},
    [PB_GGML_Q3_K] = {"Q3_K", QK_K, 2 + QK_K / 4 + QK_K / 8 + 12},
    [PB_GGML_Q4_K] = {"Q4_K", QK_K, 2 + 2 + QK_K / 2 + 12},
    [PB_GGML_Q5_K] = {"Q5_K", QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12},
    [PB_GGML_Q6_K] = {"Q6_K", QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16},
    [PB_GGML_Q8_K] = {"Q8_K", QK_K, 4 + QK_K + QK_K / 8},
    [PB_GGML_IQ2_XXS] = {"IQ2_XXS", QK_K, 2 + QK_K / 4},
    [PB_GGML_IQ2_XS] = {"IQ2_XS", QK_K, 2 + QK_K / 4 + QK_K / 32},
    [PB_GGML_IQ3_XXS] = {"IQ3_XXS", QK_K, 2 + QK_K / 4 + QK_K / 8},
    [PB_GGML_IQ1_S] = {"IQ1_S", QK_K, 2 + QK_K / 8 + QK_K / 16},
    [PB_GGML_IQ4_NL] = {"IQ4_NL", 32, 2 + 16},
    [PB_GGML_IQ3_S] = {"IQ3_S", QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4},
    [PB_GGML_IQ2_S] = {"IQ2_S", QK_K, 2 + QK_K / 4 + QK_K / 16},
    [PB_GGML_IQ4_XS] = {"IQ4_XS", QK_K, 2 + 2 + QK_K / 2 + QK_K / 64},
    [PB_GGML_I8] = {"I8", 1, 1},
    [PB_GGML_I16] = {"I16", 1, 2},
    [PB_GGML_I32] = {"I32", 1, 4},
    [PB_GGML_I64] = {"I64", 1, 8},
    [PB_GGML_F64] = {"F64", 1, 8},
    [PB_GGML_IQ1_M] = {"IQ1_M", QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32},
    [PB_GGML_BF16] = {"BF16", 1, 2},
    [PB_GGML_TQ1_0] = {"TQ1_0", QK_K, 2 + 4 * 13},
    [PB_GGML_TQ2_0] = {"TQ2_0", QK_K, 2 + 64},
    [PB_GGML_MXFP4] = {"MXFP4", 32, 1 + 16},
    [PB_GGML_NVFP4] = {"NVFP4", 64, 4 + 32},
    [PB_GGML_Q1_0] = {"Q1_0", 128, 2 + 16},
};

int pb_ggml_type_known(uint32_t type) { return type < PB_GGML_TYPE_LIMIT && pb_ggml_types[type].name != NULL; }

int pb_ggml_type_dequantizable(uint32_t type) {
    switch (type) {
    case PB_GGML_F32:
    case PB_GGML_F16:
    case PB_GGML_BF16:
    case PB_GGML_Q4_0:
    case PB_GGML_Q4_1:
    case PB_GGML_Q5_0:
    case PB_GGML_Q5_1:
    case PB_GGML_Q8_0:
    case PB_GGML_Q2_K:
    case PB_GGML_Q3_K:
    case PB_GGML_Q4_K:
    case PB_GGML_Q5_K:
    case PB_GGML_Q6_K: return 1;
    default: return 0;
    }
}

const char *pb_ggml_type_name(uint32_t type) { return pb_ggml_type_known(type) ? pb_ggml_types[type].name : "unknown"; }

uint32_t pb_ggml_block_size(uint32_t type) { return pb_ggml_type_known(type) ? pb_ggml_types[type].block_size : 0; }

size_t pb_ggml_block_bytes(uint32_t type) { return pb_ggml_type_known(type) ? pb_ggml_types[type].block_bytes : 0; }

static float pb_bits_to_fp32(uint32_t bits) {
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

float pb_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
    uint32_t exponent = (h >> 10) & 0x1fu;
    uint32_t mantissa = h & 0x3ffu;
    if (exponent == 0x1fu) /* inf or NaN; the payload is kept */
        return pb_bits_to_fp32(sign | 0x7f800000u | (mantissa << 13));
    if (exponent == 0) {
        if (mantissa == 0)
            return pb_bits_to_fp32(sign);
        /* Subnormal half: normal in fp32, so shift the leading one into the
         * implicit bit and lower the exponent to match. */
        int e = -14;
        while (!(mantissa & 0x400u)) {
            mantissa <<= 1;
            e--;
        }
        mantissa &= 0x3ffu;
        return pb_bits_to_fp32(sign | ((uint32_t)(e + 127) << 23) | (mantissa << 13));
    }
    return pb_bits_to_fp32(sign | ((exponent - 15 + 127) << 23) | (mantissa << 13));
}

float pb_bf16_to_fp32(uint16_t h) { return pb_bits_to_fp32((uint32_t)h << 16); }

static uint16_t pb_le16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }
static uint32_t pb_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static float pb_half_at(const uint8_t *p) { return pb_fp16_to_fp32(pb_le16(p)); }

/* ---- 32-element blocks ------------------------------------------------ */

/* block_q4_0 { half d; uint8 qs[16]; }: low nibbles are elements 0..15,
 * high nibbles 16..31, value (q - 8) * d. */
static void pb_dequantize_q4_0(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 18, y += 32) {
        float d = pb_half_at(x);
        const uint8_t *qs = x + 2;
        for (int j = 0; j < 16; j++) {
            y[j] = d * (float)((qs[j] & 0x0f) - 8);
            y[j + 16] = d * (float)((qs[j] >> 4) - 8);
        }
    }
}

/* block_q4_1 { half d; half m; uint8 qs[16]; }: value q * d + m. */
static void pb_dequantize_q4_1(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 20, y += 32) {
        float d = pb_half_at(x), m = pb_half_at(x + 2);
        const uint8_t *qs = x + 4;
        for (int j = 0; j < 16; j++) {
            float lo = d * (float)(qs[j] & 0x0f);
            float hi = d * (float)(qs[j] >> 4);
            y[j] = lo + m;
            y[j + 16] = hi + m;
        }
    }
}

/* block_q5_0 { half d; uint8 qh[4]; uint8 qs[16]; }: bit j of the
 * little-endian qh word is the fifth bit of element j; value (q - 16) * d. */
static void pb_dequantize_q5_0(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 22, y += 32) {
        float d = pb_half_at(x);
        uint32_t qh = pb_le32(x + 2);
        const uint8_t *qs = x + 6;
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
            int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            y[j] = d * (float)(q0 - 16);
            y[j + 16] = d * (float)(q1 - 16);
        }
    }
}

/* block_q5_1 { half d; half m; uint8 qh[4]; uint8 qs[16]; }: q * d + m. */
static void pb_dequantize_q5_1(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 24, y += 32) {
        float d = pb_half_at(x), m = pb_half_at(x + 2);
        uint32_t qh = pb_le32(x + 4);
        const uint8_t *qs = x + 8;
        for (int j = 0; j < 16; j++) {
            int q0 = (qs[j] & 0x0f) | (int)(((qh >> j) & 1u) << 4);
            int q1 = (qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1u) << 4);
            float lo = d * (float)q0;
            float hi = d * (float)q1;
            y[j] = lo + m;
            y[j + 16] = hi + m;
        }
    }
}

/* block_q8_0 { half d; int8 qs[32]; }: value q * d. */
static void pb_dequantize_q8_0(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 34, y += 32) {
        float d = pb_half_at(x);
        for (int j = 0; j < 32; j++)
            y[j] = (float)(int8_t)x[2 + j] * d;
    }
}

void pb_quantize_q8_0(void *out, const float *x, uint64_t n_blocks) {
    uint8_t *y = out;
    for (uint64_t i = 0; i < n_blocks; i++, x += 32, y += 34) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        float d = amax / 127.0f, inv = d > 0.0f ? 1.0f / d : 0.0f;
        uint16_t h = pb_fp32_to_fp16(d);
        y[0] = (uint8_t)(h & 0xff);
        y[1] = (uint8_t)(h >> 8);
        for (int j = 0; j < 32; j++)
            y[2 + j] = (uint8_t)(int8_t)roundf(x[j] * inv);
    }
}

/* ---- 256-element super-blocks ------------------------------------------ */

/* block_q2_K { uint8 scales[16]; uint8 qs[64]; half d; half dmin; }.
 * Each 128-element half uses 32 qs bytes four times (2-bit fields at shifts
 * 0, 2, 4, 6); each group of 16 elements has its own 4-bit scale (low
 * nibble) and 4-bit min (high nibble). */
static void pb_dequantize_q2_k(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 84) {
        const uint8_t *scales = x, *q = x + 16;
        float d = pb_half_at(x + 80), dmin = pb_half_at(x + 82);
        int is = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int k = 0; k < 2; k++) {
                    uint8_t sc = scales[is++];
                    float dl = d * (float)(sc & 0x0f);
                    float ml = dmin * (float)(sc >> 4);
                    for (int l = 0; l < 16; l++) {
                        float p = dl * (float)((q[k * 16 + l] >> shift) & 3);
                        *y++ = p - ml;
                    }
                }
            }
        }
    }
}

/* block_q3_K { uint8 hmask[32]; uint8 qs[64]; uint8 scales[12]; half d; }.
 * Same element order as Q2_K; the third bit comes from hmask (bit b of
 * hmask[l] for the b-th group of 32), and a CLEAR bit subtracts 4. The 16
 * 6-bit scales: low 4 bits in nibbles of bytes 0..7 (scale s uses byte s%8,
 * nibble s/8), high 2 bits in bytes 8..11 (byte 8 + s%4, bits 2*(s/4)). */
static void pb_dequantize_q3_k(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 110) {
        const uint8_t *hmask = x, *q = x + 32, *packed = x + 96;
        float d = pb_half_at(x + 108);
        int scales[16];
        for (int s = 0; s < 16; s++) {
            int low = (packed[s % 8] >> (4 * (s / 8))) & 0x0f;
            int high = (packed[8 + s % 4] >> (2 * (s / 4))) & 0x03;
            scales[s] = (low | (high << 4)) - 32;
        }
        int is = 0, bit = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, bit++) {
                for (int k = 0; k < 2; k++) {
                    float dl = d * (float)scales[is++];
                    for (int l = 0; l < 16; l++) {
                        int low = (q[k * 16 + l] >> shift) & 3;
                        int sub = (hmask[k * 16 + l] >> bit) & 1 ? 0 : 4;
                        *y++ = dl * (float)(low - sub);
                    }
                }
            }
        }
    }
}

/* Q4_K/Q5_K pack eight 6-bit scales and eight 6-bit mins into 12 bytes
 * (ggml's get_scale_min_k4): sub-blocks 0..3 keep theirs in the low six bits
 * of bytes j (scale) and j+4 (min); sub-blocks 4..7 take their low four bits
 * from byte j+4's nibbles and their top two bits from the spare top bits of
 * bytes j-4 (scale) and j (min). */
static void pb_scale_min_k4(int j, const uint8_t *q, uint8_t *scale, uint8_t *min) {
    if (j < 4) {
        *scale = q[j] & 63;
        *min = q[j + 4] & 63;
    } else {
        *scale = (uint8_t)((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *min = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* block_q4_K { half d; half dmin; uint8 scales[12]; uint8 qs[128]; }.
 * Each 64-element chunk reads 32 qs bytes: low nibbles are the first 32
 * elements (sub-block 2c), high nibbles the next 32 (sub-block 2c+1);
 * value d*scale*q - dmin*min. */
static void pb_dequantize_q4_k(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 144) {
        float d = pb_half_at(x), dmin = pb_half_at(x + 2);
        const uint8_t *scales = x + 4, *q = x + 16;
        for (int chunk = 0; chunk < 4; chunk++, q += 32) {
            uint8_t sc, m;
            pb_scale_min_k4(2 * chunk, scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            pb_scale_min_k4(2 * chunk + 1, scales, &sc, &m);
            float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                float p = d1 * (float)(q[l] & 0x0f);
                *y++ = p - m1;
            }
            for (int l = 0; l < 32; l++) {
                float p = d2 * (float)(q[l] >> 4);
                *y++ = p - m2;
            }
        }
    }
}

/* block_q5_K { half d; half dmin; uint8 scales[12]; uint8 qh[32];
 * uint8 qs[128]; }: Q4_K plus a fifth bit, bit s of qh[l] for sub-block s. */
static void pb_dequantize_q5_k(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 176) {
        float d = pb_half_at(x), dmin = pb_half_at(x + 2);
        const uint8_t *scales = x + 4, *qh = x + 16, *ql = x + 48;
        for (int chunk = 0; chunk < 4; chunk++, ql += 32) {
            uint8_t sc, m;
            int s1 = 2 * chunk, s2 = 2 * chunk + 1;
            pb_scale_min_k4(s1, scales, &sc, &m);
            float d1 = d * (float)sc, m1 = dmin * (float)m;
            pb_scale_min_k4(s2, scales, &sc, &m);
            float d2 = d * (float)sc, m2 = dmin * (float)m;
            for (int l = 0; l < 32; l++) {
                int q = (ql[l] & 0x0f) | (((qh[l] >> s1) & 1) << 4);
                float p = d1 * (float)q;
                *y++ = p - m1;
            }
            for (int l = 0; l < 32; l++) {
                int q = (ql[l] >> 4) | (((qh[l] >> s2) & 1) << 4);
                float p = d2 * (float)q;
                *y++ = p - m2;
            }
        }
    }
}

/* block_q6_K { uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d; }.
 * Each 128-element half reads 64 ql bytes and 32 qh bytes: element l + 32r
 * (r = 0..3) takes the low (r even) or high (r odd) nibble of ql[l + 32(r&1)]
 * and bits 2r..2r+1 of qh[l]; its scale is scales[l/16 + 2r]; value
 * (d*scale) * (q - 32). */
static void pb_dequantize_q6_k(float *y, const uint8_t *x, uint64_t n_blocks) {
    for (uint64_t i = 0; i < n_blocks; i++, x += 210) {
        const uint8_t *ql = x, *qh = x + 128;
        const int8_t *scales = (const int8_t *)(x + 192);
        float d = pb_half_at(x + 208);
        for (int half = 0; half < 2; half++, ql += 64, qh += 32, scales += 8, y += 128) {
            for (int r = 0; r < 4; r++) {
                for (int l = 0; l < 32; l++) {
                    uint8_t low_byte = ql[l + 32 * (r & 1)];
                    int low = (r < 2) ? (low_byte & 0x0f) : (low_byte >> 4);
                    int high = (qh[l] >> (2 * r)) & 3;
                    int q = (low | (high << 4)) - 32;
                    float ds = d * (float)scales[l / 16 + 2 * r];
                    y[32 * r + l] = ds * (float)q;
                }
            }
        }
    }
}

/* ---- entry point --------------------------------------------------------- */

pb_status pb_dequantize(float *out, const void *data, uint32_t type, uint64_t n_elements) {
    if (!pb_ggml_type_known(type))
        return pb_fail(PB_ERR_ARG, "dequantize: unknown ggml type id %u", type);
    if (!pb_ggml_type_dequantizable(type))
        return pb_fail(PB_ERR_UNSUPPORTED, "dequantize: ggml type %s (%u) is not supported", pb_ggml_type_name(type),
                       type);
    uint32_t block_size = pb_ggml_block_size(type);
    if (n_elements % block_size != 0)
        return pb_fail(PB_ERR_ARG, "dequantize: n_elements %llu is not a multiple of the %s block size %u",
                       (unsigned long long)n_elements, pb_ggml_type_name(type), block_size);
    if (n_elements == 0)
        return PB_OK;
    if (out == NULL || data == NULL)
        return pb_fail(PB_ERR_ARG, "dequantize: NULL %s for %llu %s elements", out == NULL ? "output" : "data",
                       (unsigned long long)n_elements, pb_ggml_type_name(type));
    const uint8_t *x = data;
    uint64_t n_blocks = n_elements / block_size;
    switch (type) {
    case PB_GGML_F32: memcpy(out, x, n_elements * sizeof(float)); break;
    case PB_GGML_F16:
        for (uint64_t i = 0; i < n_elements; i++)
            out[i] = pb_half_at(x + 2 * i);
        break;
    case PB_GGML_BF16:
        for (uint64_t i = 0; i < n_elements; i++)
            out[i] = pb_bf16_to_fp32(pb_le16(x + 2 * i));
        break;
    case PB_GGML_Q4_0: pb_dequantize_q4_0(out, x, n_blocks); break;
    case PB_GGML_Q4_1: pb_dequantize_q4_1(out, x, n_blocks); break;
    case PB_GGML_Q5_0: pb_dequantize_q5_0(out, x, n_blocks); break;
    case PB_GGML_Q5_1: pb_dequantize_q5_1(out, x, n_blocks); break;
    case PB_GGML_Q8_0: pb_dequantize_q8_0(out, x, n_blocks); break;
    case PB_GGML_Q2_K: pb_dequantize_q2_k(out, x, n_blocks); break;
    case PB_GGML_Q3_K: pb_dequantize_q3_k(out, x, n_blocks); break;
    case PB_GGML_Q4_K: pb_dequantize_q4_k(out, x, n_blocks); break;
    case PB_GGML_Q5_K: pb_dequantize_q5_k(out, x, n_blocks); break;
    case PB_GGML_Q6_K: pb_dequantize_q6_k(out, x, n_blocks); break;
    default:
        return pb_fail(PB_ERR_UNSUPPORTED, "dequantize: ggml type %s (%u) is not supported", pb_ggml_type_name(type),
                       type);
    }
    return PB_OK;
}
