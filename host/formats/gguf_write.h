/* GGUF v3 writer (little-endian). Everything before the tensor data is
 * planned first: the keys (copied verbatim from another file or set here)
 * and the tensor infos, each tensor's offset following from its type and
 * shape. pb_gguf_writer_begin writes that head; then each tensor's bytes
 * go out in the order the tensors were added, each padded to the
 * alignment, so a model of any size streams through one tensor at a time.
 * The file layout is the one formats/gguf.c reads and checks. */
#ifndef PB_GGUF_WRITE_H
#define PB_GGUF_WRITE_H

#include <stdint.h>
#include <stdio.h>

#include "formats/gguf.h"
#include "patchbay.h"

typedef struct pb_gguf_writer pb_gguf_writer;

/* alignment: of every tensor's data (a power of two; the file's
 * general.alignment when it has one, else 32). */
pb_status pb_gguf_writer_create(pb_gguf_writer **out, uint32_t alignment);
void pb_gguf_writer_free(pb_gguf_writer *w);

/* Appends src's index-th key as stored. A key already present is
 * PB_ERR_ARG. */
pb_status pb_gguf_writer_copy_key(pb_gguf_writer *w, const pb_gguf *src, int64_t index);
pb_status pb_gguf_writer_set_u32(pb_gguf_writer *w, const char *key, uint32_t value);
pb_status pb_gguf_writer_set_string(pb_gguf_writer *w, const char *key, const char *value);

/* A tensor of ne (ggml order: ne[0] contiguous; n_dims 1..4) and ggml
 * type; ne[0] must be a multiple of the type's block. */
pb_status pb_gguf_writer_add_tensor(pb_gguf_writer *w, const char *name, int n_dims, const int64_t ne[4],
                                    uint32_t type);
/* The bytes tensor `index` (in the order added) takes. */
uint64_t pb_gguf_writer_tensor_bytes(const pb_gguf_writer *w, int64_t index);

/* Writes magic, version, counts, keys, tensor infos and the padding up to
 * the data section. */
pb_status pb_gguf_writer_begin(pb_gguf_writer *w, FILE *f);
/* The next tensor's data: exactly pb_gguf_writer_tensor_bytes bytes, then
 * its padding. */
pb_status pb_gguf_writer_tensor(pb_gguf_writer *w, FILE *f, const void *data, uint64_t n_bytes);
/* PB_ERR_ARG unless every tensor was written. */
pb_status pb_gguf_writer_end(const pb_gguf_writer *w);

#endif
