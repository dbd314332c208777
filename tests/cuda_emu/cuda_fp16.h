/* Stand-in for cuda_fp16.h under the CPU emulator: __half and the
 * conversions the kernels use, with the device's semantics: round to
 * nearest even, overflow to Inf, NaN to the canonical 0x7fff.
 *
 * Written independently of host/formats/dtype.c (in double arithmetic rather than
 * bit tricks) so that comparing the round16 kernel with dtype.c also checks
 * the two roundings against each other. */
#ifndef PB_EMU_CUDA_FP16_H
#define PB_EMU_CUDA_FP16_H

#include <math.h>
#include <stdint.h>

struct __half {
    uint16_t bits;
};

inline __half __ushort_as_half(unsigned short bits) { return __half{bits}; }
inline unsigned short __half_as_ushort(__half h) { return h.bits; }

inline float __half2float(__half h) {
    const int exponent = (h.bits >> 10) & 31, mantissa = h.bits & 1023;
    const double sign = (h.bits & 0x8000u) ? -1.0 : 1.0;
    if (exponent == 31)
        return mantissa ? (float)NAN : (float)(sign * INFINITY);
    if (exponent == 0)
        return (float)(sign * ldexp(mantissa, -24));
    return (float)(sign * ldexp(1024 + mantissa, exponent - 25));
}

inline __half __float2half_rn(float x) {
    const uint16_t sign = signbit(x) ? 0x8000u : 0u;
    if (isnan(x))
        return __half{0x7fffu};
    const double a = fabs((double)x);
    if (a >= 65520.0) /* halfway between the largest half, 65504, and 2^16: ties to even go up */
        return __half{(uint16_t)(sign | 0x7c00u)};
    int binary_exponent = 0;
    frexp(a, &binary_exponent);
    int e = binary_exponent - 1; /* a in [2^e, 2^(e+1)) */
    if (a == 0.0 || e < -14)
        e = -14; /* subnormals share the smallest normal's quantum */
    /* a in units of the quantum 2^(e-10): exact; nearbyint rounds ties to even */
    const double units = nearbyint(ldexp(a, 10 - e));
    /* units in [0, 2048]; 2048 carries into the exponent by the addition */
    return __half{(uint16_t)(sign | (uint16_t)(((e + 14) << 10) + (int)units))};
}

#endif
