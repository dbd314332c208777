/* Weight storage types: element sizes and the fp32 <-> bf16/fp16
 * conversions every backend agrees on (round to nearest, ties to even;
 * NaN stays NaN; values beyond the fp16 range become +-Inf). */
#ifndef PB_DTYPE_H
#define PB_DTYPE_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"
#include "formats/quant.h"

/* Bytes per element: 4, 2, 2. */
size_t pb_dtype_size(pb_dtype dtype);

/* Narrowing; widening is pb_bf16_to_fp32 / pb_fp16_to_fp32 (quant.h). */
uint16_t pb_fp32_to_bf16(float x);
uint16_t pb_fp32_to_fp16(float x);

/* x rounded to dtype and back (the identity for PB_DTYPE_F32). */
float pb_dtype_round(pb_dtype dtype, float x);

/* dst (n elements of dtype) = src (n floats) converted. */
void pb_dtype_from_f32(pb_dtype dtype, void *dst, const float *src, size_t n);
/* dst (n floats) = src (n elements of dtype) widened; exact. */
void pb_dtype_to_f32(pb_dtype dtype, float *dst, const void *src, size_t n);

#endif
