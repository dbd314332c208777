/* ggml tensor element types: block geometry for every type the GGUF spec
 * lists, and scalar dequantisation to fp32 for the types patchbay loads.
 * Block layouts follow ggml-common.h; all data is little-endian. */
#ifndef PB_QUANT_H
#define PB_QUANT_H

#include <stddef.h>
#include <stdint.h>
#include "patchbay.h"

/* ggml_type ids as stored in GGUF tensor infos. Gaps (4, 5, 31-33, 36-38)
 * are ids ggml retired; files never legitimately carry them. */
enum {
    PB_GGML_F32 = 0,
    PB_GGML_F16 = 1,
    PB_GGML_Q4_0 = 2,
    PB_GGML_Q4_1 = 3,
    PB_GGML_Q5_0 = 6,
    PB_GGML_Q5_1 = 7,
    PB_GGML_Q8_0 = 8,
    PB_GGML_Q8_1 = 9,
    PB_GGML_Q2_K = 10,
    PB_GGML_Q3_K = 11,
    PB_GGML_Q4_K = 12,
    PB_GGML_Q5_K = 13,
    PB_GGML_Q6_K = 14,
    PB_GGML_Q8_K = 15,
    PB_GGML_IQ2_XXS = 16,
    PB_GGML_IQ2_XS = 17,
    PB_GGML_IQ3_XXS = 18,
    PB_GGML_IQ1_S = 19,
    PB_GGML_IQ4_NL = 20,
    PB_GGML_IQ3_S = 21,
    PB_GGML_IQ2_S = 22,
    PB_GGML_IQ4_XS = 23,
    PB_GGML_I8 = 24,
    PB_GGML_I16 = 25,
    PB_GGML_I32 = 26,
    PB_GGML_I64 = 27,
    PB_GGML_F64 = 28,
    PB_GGML_IQ1_M = 29,
    PB_GGML_BF16 = 30,
    PB_GGML_TQ1_0 = 34,
    PB_GGML_TQ2_0 = 35,
    PB_GGML_MXFP4 = 39,
    PB_GGML_NVFP4 = 40,
    PB_GGML_Q1_0 = 41,
    PB_GGML_TYPE_LIMIT = 42 /* one past the largest id known here */
};

/* 1 when the block size and bytes of `type` are known (every type above). */
int pb_ggml_type_known(uint32_t type);
/* 1 when pb_dequantize handles `type`: F32 F16 BF16 Q4_0 Q4_1 Q5_0 Q5_1 Q8_0
 * Q2_K Q3_K Q4_K Q5_K Q6_K. */
int pb_ggml_type_dequantizable(uint32_t type);
/* "Q4_K", or "unknown" for an id not listed above. Static storage. */
const char *pb_ggml_type_name(uint32_t type);
/* Elements per block (1 for F32/F16/BF16), 0 for an unknown type. */
uint32_t pb_ggml_block_size(uint32_t type);
/* Bytes per block, 0 for an unknown type. */
size_t pb_ggml_block_bytes(uint32_t type);

/* Exact conversions: every half/bfloat value (subnormals, infinities, NaN
 * payloads included) is representable in fp32. */
float pb_fp16_to_fp32(uint16_t h);
float pb_bf16_to_fp32(uint16_t h);

/* Decodes n_elements values of `type` from data (little-endian blocks,
 * no alignment needed) into out (n_elements fp32). n_elements must be a
 * multiple of the block size: PB_ERR_ARG otherwise and for an unknown type,
 * PB_ERR_UNSUPPORTED for a known type this file cannot decode. */
pb_status pb_dequantize(float *out, const void *data, uint32_t type, uint64_t n_elements);

/* out (n_blocks Q8_0 blocks) = x (32 * n_blocks floats, finite) quantised
 * as ggml's reference quantize_row_q8_0 does: per block d = max |x| / 127
 * (stored as fp16), q = x * (1 / d) rounded half away from zero (the fp32
 * d, not the stored one). For random models kept quantised
 * (model/random_source.c). */
void pb_quantize_q8_0(void *out, const float *x, uint64_t n_blocks);

#endif
