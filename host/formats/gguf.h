/* GGUF (v2/v3, little-endian) reader: maps a file read-only, validates the
 * whole header, key/value section and tensor infos before handing it out,
 * and serves typed key lookups and tensor views into the mapping. */
#ifndef PB_GGUF_H
#define PB_GGUF_H

#include <stddef.h>
#include <stdint.h>
#include "patchbay.h"

typedef enum {
    PB_GGUF_UINT8 = 0,
    PB_GGUF_INT8 = 1,
    PB_GGUF_UINT16 = 2,
    PB_GGUF_INT16 = 3,
    PB_GGUF_UINT32 = 4,
    PB_GGUF_INT32 = 5,
    PB_GGUF_FLOAT32 = 6,
    PB_GGUF_BOOL = 7,
    PB_GGUF_STRING = 8,
    PB_GGUF_ARRAY = 9,
    PB_GGUF_UINT64 = 10,
    PB_GGUF_INT64 = 11,
    PB_GGUF_FLOAT64 = 12
} pb_gguf_value_type;

typedef struct pb_gguf pb_gguf;

typedef struct pb_gguf_tensor {
    const char *name; /* NUL-terminated copy; valid until pb_gguf_close */
    uint32_t n_dims;  /* 1..4 */
    int64_t ne[4];    /* ggml order: ne[0] is the contiguous row length; unused dims = 1 */
    uint32_t type;    /* PB_GGML_* (see quant.h) */
    uint64_t n_elements;
    uint64_t n_bytes;
    const void *data; /* into the mapping, aligned to general.alignment relative to
                           the file start; valid until pb_gguf_close */
} pb_gguf_tensor;

/* Maps path read-only. Every structural rule is checked here, so later
 * getters only fail on a missing key or a type the caller did not expect.
 * Tensor data must tile the data section as GGUF writers lay it out:
 * sorted by offset, the first region at 0, each next at the previous end
 * rounded up to general.alignment, nothing after the last but its padding
 * (the order of the infos is free); overlaps, gaps and unowned bytes are
 * refused.
 * PB_ERR_IO when the file cannot be opened or mapped, PB_ERR_FORMAT when
 * its contents are malformed, PB_ERR_UNSUPPORTED for big-endian files. */
pb_status pb_gguf_open(pb_gguf **out, const char *path);
/* Same checks on a caller's buffer, which is borrowed: it must outlive the
 * returned handle. */
pb_status pb_gguf_open_buffer(pb_gguf **out, const void *data, size_t size);
void pb_gguf_close(pb_gguf *gguf);

uint32_t pb_gguf_version(const pb_gguf *gguf);
/* general.alignment, or 32 when absent. */
uint32_t pb_gguf_alignment(const pb_gguf *gguf);
int pb_gguf_has_key(const pb_gguf *gguf, const char *key);
/* Key count and the i-th key in file order (not NUL-terminated, into the
 * mapping), for listing a file's metadata. */
int64_t pb_gguf_key_count(const pb_gguf *gguf);
pb_status pb_gguf_key_at(const pb_gguf *gguf, int64_t index, const char **key, size_t *len, pb_gguf_value_type *type);
/* The i-th key's whole record as stored (key length, key, value type,
 * value), into the mapping: a writer copies it verbatim
 * (formats/gguf_write.h). */
pb_status pb_gguf_key_record(const pb_gguf *gguf, int64_t index, const void **data, size_t *len);
/* "uint32", "string", ...; "unknown" otherwise. */
const char *pb_gguf_value_type_name(uint32_t type);

/* Getters: a missing key is PB_ERR_FORMAT "gguf: missing key '...'"; a key
 * of another type is PB_ERR_FORMAT naming the key, the expected and the
 * actual type; NULL arguments are PB_ERR_ARG. */
/* Any integer type; a uint64 above INT64_MAX is refused. */
pb_status pb_gguf_get_int(const pb_gguf *gguf, const char *key, int64_t *out);
/* float32/float64 and the integer types. */
pb_status pb_gguf_get_float(const pb_gguf *gguf, const char *key, double *out);
pb_status pb_gguf_get_bool(const pb_gguf *gguf, const char *key, int *out);
/* Not NUL-terminated; points into the mapping, valid until pb_gguf_close. */
pb_status pb_gguf_get_string(const pb_gguf *gguf, const char *key, const char **data, size_t *len);
pb_status pb_gguf_get_array_info(const pb_gguf *gguf, const char *key, pb_gguf_value_type *elem_type, uint64_t *count);
/* O(1): string arrays are indexed at open. index >= count is PB_ERR_ARG. */
pb_status pb_gguf_get_array_string(const pb_gguf *gguf, const char *key, uint64_t index, const char **data,
                                   size_t *len);
/* Numeric (and bool) arrays: raw little-endian elements, packed and possibly
 * unaligned (memcpy them out), into the mapping. String arrays are refused. */
pb_status pb_gguf_get_array_data(const pb_gguf *gguf, const char *key, const void **data);

int64_t pb_gguf_tensor_count(const pb_gguf *gguf);
/* NULL when index is out of range. File order. */
const pb_gguf_tensor *pb_gguf_tensor_at(const pb_gguf *gguf, int64_t index);
/* NULL if absent. Hashed. */
const pb_gguf_tensor *pb_gguf_find_tensor(const pb_gguf *gguf, const char *name);

#endif
