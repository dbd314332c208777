/* Synthetic models at real shapes: the named configurations and the seeded
 * counter-based generator that fills their weights. */
#ifndef PB_MODEL_RANDOM_H
#define PB_MODEL_RANDOM_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

/* What a weight tensor holds, which sets its distribution. */
typedef enum pb_random_kind {
    PB_RANDOM_MATRIX, /* uniform, standard deviation 0.02 */
    PB_RANDOM_NORM,   /* uniform in [0.9, 1.1] */
    PB_RANDOM_BIAS    /* uniform, standard deviation 0.02 */
} pb_random_kind;

/* Parses "NAME" or "NAME:LAYERS" into the named shape's config, with
 * n_layers cut to LAYERS (1 .. the full count); a third field after
 * another colon (the weights' stored type) is the random source's to read
 * (random_source.c). PB_ERR_ARG names the accepted names or the bad layer
 * count. */
pb_status pb_random_config(pb_model_config *out, const char *spec);

/* out (n) = elements [0, n) of tensor number `tensor` of the model with this
 * seed; element i depends only on (seed, tensor, i). */
void pb_random_fill(float *out, size_t n, uint64_t seed, int tensor, pb_random_kind kind);
/* out (n) = elements [first, first + n) of the same tensor. */
void pb_random_fill_from(float *out, uint64_t first, size_t n, uint64_t seed, int tensor, pb_random_kind kind);

#endif
