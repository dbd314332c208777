/* Seeded Gaussian noise: xoshiro256** + Box-Muller (cosine branch only). */
#include <math.h>

#include "patching/noise.h"

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
