/* safetensors writer: the header (every tensor's name, dtype, shape and
 * byte range, in the order added; padded with spaces to 8 bytes as the
 * official writers do) is planned first, then the tensors' bytes stream
 * out one at a time in that order. What formats/safetensors.c reads. */
#ifndef PB_SAFETENSORS_WRITE_H
#define PB_SAFETENSORS_WRITE_H

#include <stdint.h>
#include <stdio.h>

#include "patchbay.h"

typedef struct pb_st_writer pb_st_writer;

pb_status pb_st_writer_create(pb_st_writer **out);
void pb_st_writer_free(pb_st_writer *w);
/* dtype F32, F16 or BF16; shape row-major (n_dims 0..4). A name already
 * added is PB_ERR_ARG. */
pb_status pb_st_writer_add(pb_st_writer *w, const char *name, pb_dtype dtype, int n_dims, const int64_t *shape);
/* Header length, header JSON (with {"__metadata__": {"format": "pt"}}). */
pb_status pb_st_writer_begin(pb_st_writer *w, FILE *f);
/* The next tensor's bytes, exactly as many as its dtype and shape take. */
pb_status pb_st_writer_tensor(pb_st_writer *w, FILE *f, const void *data, uint64_t n_bytes);
/* PB_ERR_ARG unless every tensor was written. */
pb_status pb_st_writer_end(const pb_st_writer *w);

#endif
