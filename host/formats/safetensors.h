/* safetensors reader: one .safetensors file, or a Hugging Face checkpoint
 * folder (model.safetensors, or model.safetensors.index.json plus shards).
 * Every file is mmapped read-only and fully validated on open (header JSON,
 * dtypes, shapes, offsets covering the data section exactly); tensors point
 * into the mappings. */
#ifndef PB_SAFETENSORS_H
#define PB_SAFETENSORS_H

#include <stdint.h>

#include "patchbay.h"

/* Tensor element types: pb_dtype of patchbay.h (F32, F16, BF16). */

typedef struct pb_st_tensor {
    const char *name; /* NUL-terminated */
    pb_dtype dtype;
    int n_dims;       /* 0..4 (0 = scalar) */
    int64_t shape[4]; /* row-major as in the header; shape[n_dims-1] is contiguous */
    uint64_t n_elements;
    uint64_t n_bytes;
    /* Into the mapping; valid until pb_safetensors_close. Not necessarily
     * aligned to the element size: the format only aligns data when the
     * writer padded the header (the official writers pad to 8 bytes). */
    const void *data;
} pb_st_tensor;

typedef struct pb_safetensors pb_safetensors;

/* path: a .safetensors file, a model.safetensors.index.json file, or a
 * folder holding model.safetensors or model.safetensors.index.json (the
 * single file wins when both exist, as in transformers). Sharded: every
 * shard named in weight_map is opened and mmapped; each tensor must be in
 * the shard the index names; a tensor in a shard but not in the index, or
 * named in the index but missing, is an error. Tensor names are unique
 * across all shards. */
pb_status pb_safetensors_open(pb_safetensors **out, const char *path);
void pb_safetensors_close(pb_safetensors *st);
/* Tensors in shard order (order of first mention in weight_map), and
 * within a shard in data-offset order. */
int64_t pb_safetensors_count(const pb_safetensors *st);
/* NULL when index is out of range. Borrowed; valid until close. */
const pb_st_tensor *pb_safetensors_at(const pb_safetensors *st, int64_t index);
/* NULL if absent (binary search over a sorted name index). */
const pb_st_tensor *pb_safetensors_find(const pb_safetensors *st, const char *name);
/* fp32 copy of a tensor's elements: out (n_elements). Exact for all three
 * dtypes (every F16 and BF16 value is representable in F32). */
void pb_st_tensor_to_f32(const pb_st_tensor *tensor, float *out);
/* The header's name of a dtype: "F32", "F16", "BF16"; "?" for any other. */
const char *pb_safetensors_dtype_name(pb_dtype dtype);

#endif
