/* Small helpers for the model and op tests: comparison statistics, seeded
 * random numbers, fixture paths. */
#ifndef PB_TEST_UTIL_MODEL_H
#define PB_TEST_UTIL_MODEL_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "util/outdir.h"

/* sum (a - b)^2 / sum b^2, with 0/0 = 0. */
static inline double tu_nmse(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den == 0.0 ? num : num / den;
}

static inline double tu_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d)
            m = d;
    }
    return m;
}

/* xorshift64*: reproducible across platforms. */
static inline uint64_t tu_next(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [-scale, scale). */
static inline void tu_fill(float *x, size_t n, uint64_t seed, float scale) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (2.0f * (float)((tu_next(&s) >> 40) / 16777216.0) - 1.0f);
}

static inline const char *tu_fixtures(void) {
    const char *dir = getenv("PB_FIXTURES");
    return dir ? dir : "tests/fixtures";
}

static inline const char *tu_source_dir(void) {
    const char *dir = getenv("PB_SOURCE_DIR");
    return dir ? dir : ".";
}

/* The whole file (NUL-terminated, malloc'd), or NULL; size may be NULL. */
static inline char *tu_read_file(const char *path, size_t *size) {
    char *text = NULL;
    return pb_read_text_file(path, &text, size) == PB_OK ? text : NULL;
}

#endif
