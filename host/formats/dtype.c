/* fp32 <-> bf16 / fp16 by bit manipulation, so the host's conversions are
 * the same on every compiler and match CUDA's __float2bfloat16_rn and
 * __float2half_rn (round to nearest even). Widening is quant.h's. */
#include <assert.h>
#include <math.h>
#include <string.h>
#include <strings.h>

#include "formats/dtype.h"
#include "util/internal.h"
#include "formats/quant.h"

/* Every dtype: its name and ggml type id (0 for FILE, which stores none). */
static const struct {
    pb_dtype dtype;
    const char *name;
    uint32_t ggml;
} dtypes[] = {
    {PB_DTYPE_F32, "f32", PB_GGML_F32},    {PB_DTYPE_BF16, "bf16", PB_GGML_BF16},
    {PB_DTYPE_F16, "f16", PB_GGML_F16},    {PB_DTYPE_FILE, "file", 0},
    {PB_DTYPE_Q4_0, "q4_0", PB_GGML_Q4_0}, {PB_DTYPE_Q4_1, "q4_1", PB_GGML_Q4_1},
    {PB_DTYPE_Q5_0, "q5_0", PB_GGML_Q5_0}, {PB_DTYPE_Q5_1, "q5_1", PB_GGML_Q5_1},
    {PB_DTYPE_Q8_0, "q8_0", PB_GGML_Q8_0}, {PB_DTYPE_Q2_K, "q2_k", PB_GGML_Q2_K},
    {PB_DTYPE_Q3_K, "q3_k", PB_GGML_Q3_K}, {PB_DTYPE_Q4_K, "q4_k", PB_GGML_Q4_K},
    {PB_DTYPE_Q5_K, "q5_k", PB_GGML_Q5_K}, {PB_DTYPE_Q6_K, "q6_k", PB_GGML_Q6_K},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

const char *pb_dtype_name(pb_dtype dtype) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dtype)
            return dtypes[i].name;
    return "unknown";
}

pb_status pb_dtype_parse(const char *text, pb_dtype *out) {
    static const struct {
        const char *name;
        pb_dtype dtype;
    } names[] = {
        {"f32", PB_DTYPE_F32},       {"fp32", PB_DTYPE_F32},    {"float32", PB_DTYPE_F32}, {"bf16", PB_DTYPE_BF16},
        {"bfloat16", PB_DTYPE_BF16}, {"f16", PB_DTYPE_F16},     {"fp16", PB_DTYPE_F16},    {"float16", PB_DTYPE_F16},
        {"file", PB_DTYPE_FILE},     {"native", PB_DTYPE_FILE},
    };
    for (size_t i = 0; text && i < sizeof names / sizeof names[0]; i++)
        if (strcasecmp(text, names[i].name) == 0) {
            *out = names[i].dtype;
            return PB_OK;
        }
    return pb_fail(PB_ERR_ARG, "unknown dtype '%s' (expected f32, bf16, f16 or file)", text ? text : "(null)");
}

size_t pb_dtype_size(pb_dtype dtype) {
    return dtype == PB_DTYPE_F32 ? 4 : dtype == PB_DTYPE_BF16 || dtype == PB_DTYPE_F16 ? 2 : 0;
}

int pb_dtype_is_quantised(pb_dtype dtype) { return dtype >= PB_DTYPE_Q4_0 && dtype <= PB_DTYPE_Q6_K; }

int pb_dtype_block(pb_dtype dtype) {
    return pb_dtype_is_quantised(dtype) ? (int)pb_ggml_block_size(pb_dtype_ggml(dtype)) : 1;
}

size_t pb_dtype_bytes(pb_dtype dtype, uint64_t n) {
    if (!pb_dtype_is_quantised(dtype))
        return pb_dtype_size(dtype) * (size_t)n;
    uint32_t type = pb_dtype_ggml(dtype);
    return (size_t)(n / pb_ggml_block_size(type)) * pb_ggml_block_bytes(type);
}

uint32_t pb_dtype_ggml(pb_dtype dtype) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype == dtype)
            return dtypes[i].ggml;
    return 0;
}

int pb_dtype_from_ggml(uint32_t type, pb_dtype *out) {
    for (size_t i = 0; i < N_DTYPES; i++)
        if (dtypes[i].dtype != PB_DTYPE_FILE && dtypes[i].ggml == type) {
            *out = dtypes[i].dtype;
            return 1;
        }
    return 0;
}

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

uint16_t pb_fp32_to_bf16(float x) {
    uint32_t u = float_bits(x);
    if ((u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((u >> 16) | 0x0040u); /* NaN: keep sign, force a quiet mantissa bit */
    /* Add half an ulp of bf16 minus one, plus the lowest kept bit: ties go
     * to the even neighbour. Overflow rounds into Inf as it should. */
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

uint16_t pb_fp32_to_fp16(float x) {
    uint32_t u = float_bits(x);
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
    uint32_t abs = u & 0x7fffffffu;
    if (abs > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00u); /* NaN */
    if (abs >= 0x477ff000u)                /* >= 65520: rounds to Inf (or is Inf) */
        return (uint16_t)(sign | 0x7c00u);
    if (abs < 0x38800000u) {
        /* Subnormal or zero in fp16: count in units of its ulp 2^-24 (the
         * scaling is exact) and round to the nearest integer, ties to even;
         * 1024 units is the smallest normal, which the encoding gives too. */
        float scaled = bits_float(abs) * 16777216.0f; /* * 2^24, exact */
        float rounded = nearbyintf(scaled);           /* ties to even in the default mode */
        return (uint16_t)(sign | (uint16_t)rounded);
    }
    /* Normal: rebias the exponent (127 -> 15) and round 13 dropped bits. */
    uint32_t mant_round = abs + 0xfffu + ((abs >> 13) & 1u);
    return (uint16_t)(sign | (uint16_t)((mant_round - 0x38000000u) >> 13));
}

float pb_dtype_round(pb_dtype dtype, float x) {
    switch (dtype) {
    case PB_DTYPE_BF16: return pb_bf16_to_fp32(pb_fp32_to_bf16(x));
    case PB_DTYPE_F16: return pb_fp16_to_fp32(pb_fp32_to_fp16(x));
    default: return x;
    }
}

void pb_dtype_from_f32(pb_dtype dtype, void *dst, const float *src, size_t n) {
    if (dtype == PB_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    uint16_t *out = dst;
    if (dtype == PB_DTYPE_BF16)
        for (size_t i = 0; i < n; i++)
            out[i] = pb_fp32_to_bf16(src[i]);
    else
        for (size_t i = 0; i < n; i++)
            out[i] = pb_fp32_to_fp16(src[i]);
}

void pb_dtype_to_f32(pb_dtype dtype, float *dst, const void *src, size_t n) {
    if (dtype == PB_DTYPE_F32) {
        memcpy(dst, src, n * sizeof(float));
        return;
    }
    if (pb_dtype_is_quantised(dtype)) {
        /* n is a whole number of blocks of a type quant.c decodes: the
         * loader stored only such matrices */
        pb_status status = pb_dequantize(dst, src, pb_dtype_ggml(dtype), n);
        assert(status == PB_OK);
        (void)status;
        return;
    }
    const uint16_t *in = src;
    if (dtype == PB_DTYPE_BF16)
        for (size_t i = 0; i < n; i++)
            dst[i] = pb_bf16_to_fp32(in[i]);
    else
        for (size_t i = 0; i < n; i++)
            dst[i] = pb_fp16_to_fp32(in[i]);
}
