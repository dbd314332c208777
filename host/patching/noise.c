/* Seeded Gaussian noise: xoshiro256** + Box-Muller (cosine branch only). */
#include <math.h>

#include <stdlib.h>
#include <string.h>

#include "patching/noise.h"
#include "util/internal.h"

static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t s[4]) {
    uint64_t result = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return result;
}

static double uniform(uint64_t s[4]) { return (double)(xoshiro_next(s) >> 11) * 0x1.0p-53; }

double pb_noise_sigma(const float *x, size_t n) {
    if (n == 0)
        return 0.0;
    double mean = 0.0;
    for (size_t i = 0; i < n; i++)
        mean += x[i];
    mean /= (double)n;
    double var = 0.0;
    for (size_t i = 0; i < n; i++)
        var += ((double)x[i] - mean) * ((double)x[i] - mean);
    return sqrt(var / (double)n);
}

void pb_noise_fill(float *out, int n_positions, int d, double scale, double sigma, uint64_t seed) {
    uint64_t state = seed, s[4];
    for (int i = 0; i < 4; i++)
        s[i] = splitmix64(&state);
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t i = 0; i < (size_t)n_positions * (size_t)d; i++) {
        double u1 = uniform(s), u2 = uniform(s);
        double z = sqrt(-2.0 * log(1.0 - u1)) * cos(two_pi * u2);
        out[i] = (float)(scale * sigma * z);
    }
}

pb_status pb_noise_embed_delta(float *out, int T, int d, const int *positions, int n_positions, double scale,
                               double sigma, uint64_t seed) {
    float *rows = malloc(sizeof(float) * (size_t)(n_positions > 0 ? n_positions : 1) * (size_t)d);
    if (!rows)
        return pb_fail(PB_ERR_OOM, "out of memory for noise");
    memset(out, 0, sizeof(float) * (size_t)T * (size_t)d);
    pb_noise_fill(rows, n_positions, d, scale, sigma, seed);
    for (int i = 0; i < n_positions; i++)
        memcpy(out + (size_t)positions[i] * d, rows + (size_t)i * d, sizeof(float) * (size_t)d);
    free(rows);
    return PB_OK;
}
