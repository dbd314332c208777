/* Gaussian noise for corrupted runs (Meng et al. 2022), from a generator
 * simple enough to reproduce anywhere (docs/patching.md). */
#ifndef PB_NOISE_H
#define PB_NOISE_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

/* Standard deviation of all n entries of x (population, two-pass, double). */
double pb_noise_sigma(const float *x, size_t n);

/* out (n_positions, d) = scale * sigma * N(0, 1) samples: xoshiro256**
 * seeded by four splitmix64 outputs from `seed`; each sample takes two
 * uniforms u1, u2 = (next >> 11) * 2^-53 and is
 * sqrt(-2 ln(1 - u1)) * cos(2 pi u2), in double, rounded to float after
 * scaling. Rows follow the listed positions, columns the dimensions. */
void pb_noise_fill(float *out, int n_positions, int d, double scale, double sigma, uint64_t seed);

/* out (T, d) = the embedding offsets of a noise-corrupted prompt: row
 * positions[i] = pb_noise_fill's row i, every other row 0 (host memory). */
pb_status pb_noise_embed_delta(float *out, int T, int d, const int *positions, int n_positions, double scale,
                               double sigma, uint64_t seed);

#endif
