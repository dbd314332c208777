/* Stand-in for cuda_bf16.h under the CPU emulator: __nv_bfloat16 and the
 * conversions the kernels use, with the device's semantics (round to nearest
 * even, NaN to the canonical 0x7fff); independent of host/formats/dtype.c, as in
 * cuda_fp16.h. */
#ifndef PB_EMU_CUDA_BF16_H
#define PB_EMU_CUDA_BF16_H

#include <math.h>
#include <stdint.h>
#include <string.h>

struct __nv_bfloat16 {
    uint16_t bits;
};

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short bits) { return __nv_bfloat16{bits}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 h) { return h.bits; }

inline float __bfloat162float(__nv_bfloat16 h) {
    const uint32_t bits = (uint32_t)h.bits << 16;
    float value;
    memcpy(&value, &bits, sizeof value);
    return value;
}

inline __nv_bfloat16 __float2bfloat16_rn(float x) {
    const uint16_t sign = signbit(x) ? 0x8000u : 0u;
    if (isnan(x))
        return __nv_bfloat16{0x7fffu};
    if (isinf(x))
        return __nv_bfloat16{(uint16_t)(sign | 0x7f80u)};
    const double a = fabs((double)x);
    int binary_exponent = 0;
    frexp(a, &binary_exponent);
    int e = binary_exponent - 1;
    if (a == 0.0 || e < -126)
        e = -126;
    /* round to a multiple of the quantum 2^(e-7), ties to even; the result
     * is a float exactly (or 2^128: Inf) */
    const double rounded = ldexp(nearbyint(ldexp(a, 7 - e)), e - 7);
    if (rounded >= ldexp(1.0, 128))
        return __nv_bfloat16{(uint16_t)(sign | 0x7f80u)};
    const float narrow = (float)rounded;
    uint32_t bits;
    memcpy(&bits, &narrow, sizeof bits);
    return __nv_bfloat16{(uint16_t)(sign | (bits >> 16))};
}

#endif
