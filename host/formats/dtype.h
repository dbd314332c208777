/* Weight storage types: element sizes and the fp32 <-> bf16/fp16
 * conversions every backend agrees on (round to nearest, ties to even;
 * NaN stays NaN; values beyond the fp16 range become +-Inf). */
#ifndef PB_DTYPE_H
#define PB_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"
#include "formats/quant.h"

/* Bytes per element of a scalar type: 4, 2, 2 (0 for block types). */
size_t pb_dtype_size(pb_dtype dtype);
/* 1 for ggml's quantised block types (PB_DTYPE_Q4_0 ... PB_DTYPE_Q6_K). */
int pb_dtype_is_quantised(pb_dtype dtype);
/* Elements per block: 1 for a scalar type, 32 or 256 for a quantised one. */
int pb_dtype_block(pb_dtype dtype);
/* Bytes of n elements (a multiple of pb_dtype_block). */
size_t pb_dtype_bytes(pb_dtype dtype, uint64_t n);
/* The ggml type id of a storage dtype, and back: 0 (PB_DTYPE_FILE, or a
 * ggml type with no dtype) when there is none. */
uint32_t pb_dtype_ggml(pb_dtype dtype);
int pb_dtype_from_ggml(uint32_t type, pb_dtype *out);

/* Narrowing; widening is pb_bf16_to_fp32 / pb_fp16_to_fp32 (quant.h). */
uint16_t pb_fp32_to_bf16(float x);
uint16_t pb_fp32_to_fp16(float x);

/* x rounded to dtype and back (the identity for PB_DTYPE_F32). */
float pb_dtype_round(pb_dtype dtype, float x);

/* dst (n elements of dtype) = src (n floats) converted; scalar types only. */
void pb_dtype_from_f32(pb_dtype dtype, void *dst, const float *src, size_t n);
/* dst (n floats) = src (n elements of dtype) widened (exact) or, for a
 * quantised type, decoded as quant.h does (n a multiple of the block). */
void pb_dtype_to_f32(pb_dtype dtype, float *dst, const void *src, size_t n);

#endif
