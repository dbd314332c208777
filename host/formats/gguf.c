/* GGUF reader: mapping, validation, key/value lookup and tensor views.
 * Layout (v2/v3, little-endian): "GGUF", u32 version, u64 tensor count,
 * u64 kv count, the kvs (u64-length key, u32 type, value), the tensor infos
 * (name, u32 n_dims, u64 dims, u32 type, u64 offset), padding to
 * general.alignment, then the data section the offsets are relative to.
 * Everything a later call could trip over is checked in open, and every
 * count or length is compared with the bytes left before it is used, so a
 * hostile file can neither over-read nor make us allocate much more than
 * its own size. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/gguf.h"
#include "util/array.h"
#include "util/internal.h"
#include "formats/quant.h"

#define PB_GGUF_DEFAULT_ALIGNMENT 32u
#define PB_GGUF_HEADER_BYTES 24u
/* Smallest possible encodings, so that a count can be refused against the
 * bytes left before anything is allocated for it. */
#define PB_GGUF_MIN_KV_BYTES (8u + 1u + 4u + 1u)                    /* key len, key, type, u8 */
#define PB_GGUF_MIN_TENSOR_INFO_BYTES (8u + 1u + 4u + 8u + 4u + 8u) /* name len, name, n_dims, dim, type, offset */
#define PB_GGUF_NAME_BUF 96

typedef struct {
    const char *data;
    uint64_t len;
} pb_gguf_string;

typedef struct {
    const char *key; /* into the mapping, not NUL-terminated */
    size_t key_len;
    uint32_t type;         /* pb_gguf_value_type */
    const uint8_t *value;  /* scalar bytes, string bytes, or the first array element */
    uint64_t len;          /* string length or array count */
    uint32_t elem_type;    /* arrays only */
    uint64_t first_string; /* string arrays: first entry in pb_gguf.strings */
    size_t record_start;   /* the whole record (key length .. value) in the file, for copying it */
    size_t record_len;
} pb_gguf_kv;

/* Open-addressing hash of names to indices; slots hold index + 1, 0 = empty. */
typedef struct {
    size_t *slots;
    size_t mask;
} pb_gguf_name_index;

struct pb_gguf {
    const uint8_t *base;
    size_t size;
    void *mapping; /* NULL for borrowed buffers */
    size_t mapping_size;
    uint32_t version;
    uint32_t alignment;
    uint64_t data_offset;
    pb_gguf_kv *kvs; /* (n_kv) */
    int64_t n_kv;
    pb_gguf_string *strings; /* (n_strings) every string-array element, array by array */
    uint64_t n_strings;
    pb_gguf_tensor *tensors; /* (n_tensors) */
    int64_t n_tensors;
    char *names; /* NUL-terminated tensor names, back to back */
    pb_gguf_name_index kv_index;
    pb_gguf_name_index tensor_index;
};

/* Per-tensor facts needed only while opening. */
typedef struct {
    size_t name_len;
    uint64_t offset; /* relative to the data section */
} pb_gguf_info_extra;

typedef struct {
    pb_gguf *gguf;
    const uint8_t *base;
    size_t size;
    size_t pos;
    const char *source; /* path for messages; NULL for buffers */
} pb_gguf_parser;

/* ---- small helpers ---------------------------------------------------- */

static const char *const pb_gguf_value_type_names[] = {
    "uint8", "int8",   "uint16", "int16",  "uint32", "int32",   "float32",
    "bool",  "string", "array",  "uint64", "int64",  "float64",
};

const char *pb_gguf_value_type_name(uint32_t type) {
    return type <= PB_GGUF_FLOAT64 ? pb_gguf_value_type_names[type] : "unknown";
}

/* Bytes of one scalar value, 0 for string/array/unknown. */
static size_t pb_gguf_scalar_size(uint32_t type) {
    switch (type) {
    case PB_GGUF_UINT8:
    case PB_GGUF_INT8:
    case PB_GGUF_BOOL: return 1;
    case PB_GGUF_UINT16:
    case PB_GGUF_INT16: return 2;
    case PB_GGUF_UINT32:
    case PB_GGUF_INT32:
    case PB_GGUF_FLOAT32: return 4;
    case PB_GGUF_UINT64:
    case PB_GGUF_INT64:
    case PB_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static uint32_t pb_gguf_le32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static uint64_t pb_gguf_le64(const uint8_t *p) {
    return (uint64_t)pb_gguf_le32(p) | ((uint64_t)pb_gguf_le32(p + 4) << 32);
}

/* Names come from the file, so they are escaped and clipped before they go
 * into a message. */
static const char *pb_gguf_printable(char buf[PB_GGUF_NAME_BUF], const char *s, size_t len) {
    size_t out = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (out + 8 >= PB_GGUF_NAME_BUF) {
            memcpy(buf + out, "...", 4);
            return buf;
        }
        if (c >= 0x20 && c < 0x7f && c != '\\') {
            buf[out++] = (char)c;
        } else {
            snprintf(buf + out, PB_GGUF_NAME_BUF - out, "\\x%02x", c);
            out += 4;
        }
    }
    buf[out] = '\0';
    return buf;
}

static pb_status pb_gguf_parse_fail(const pb_gguf_parser *p, const char *fmt, ...) PB_PRINTF(2, 3);
static pb_status pb_gguf_parse_fail(const pb_gguf_parser *p, const char *fmt, ...) {
    char message[768];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    if (p->source)
        return pb_fail(PB_ERR_FORMAT, "gguf: %s: %s", p->source, message);
    return pb_fail(PB_ERR_FORMAT, "gguf: %s", message);
}

/* Checks that n more bytes exist; the description is only formatted when
 * they do not, so the common path costs a comparison. */
static pb_status pb_gguf_need(const pb_gguf_parser *p, uint64_t n, const char *fmt, ...) PB_PRINTF(3, 4);
static pb_status pb_gguf_need(const pb_gguf_parser *p, uint64_t n, const char *fmt, ...) {
    size_t left = p->size - p->pos;
    if (n <= left)
        return PB_OK;
    char what[512];
    va_list args;
    va_start(args, fmt);
    vsnprintf(what, sizeof what, fmt, args);
    va_end(args);
    return pb_gguf_parse_fail(p, "truncated file: %s needs %llu bytes at offset %zu but only %zu are left", what,
                              (unsigned long long)n, p->pos, left);
}

static uint32_t pb_gguf_take_u32(pb_gguf_parser *p) {
    uint32_t v = pb_gguf_le32(p->base + p->pos);
    p->pos += 4;
    return v;
}

static uint64_t pb_gguf_take_u64(pb_gguf_parser *p) {
    uint64_t v = pb_gguf_le64(p->base + p->pos);
    p->pos += 8;
    return v;
}

/* ---- name index --------------------------------------------------------- */

static uint64_t pb_gguf_hash(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ull;
    }
    return h;
}

typedef void (*pb_gguf_name_fn)(const pb_gguf *gguf, size_t i, const char **s, size_t *len);

static void pb_gguf_kv_name(const pb_gguf *gguf, size_t i, const char **s, size_t *len) {
    *s = gguf->kvs[i].key;
    *len = gguf->kvs[i].key_len;
}

static void pb_gguf_tensor_name(const pb_gguf *gguf, size_t i, const char **s, size_t *len) {
    *s = gguf->tensors[i].name;
    *len = strlen(gguf->tensors[i].name);
}

/* Returns the index of `name`, or -1. */
static int64_t pb_gguf_index_find(const pb_gguf *gguf, const pb_gguf_name_index *index, pb_gguf_name_fn name_of,
                                  const char *name, size_t len) {
    if (!index->slots)
        return -1;
    for (size_t slot = (size_t)pb_gguf_hash(name, len) & index->mask;; slot = (slot + 1) & index->mask) {
        size_t entry = index->slots[slot];
        if (entry == 0)
            return -1;
        const char *s;
        size_t s_len;
        name_of(gguf, entry - 1, &s, &s_len);
        if (s_len == len && memcmp(s, name, len) == 0)
            return (int64_t)(entry - 1);
    }
}

/* Indexes names 0..n-1. On a duplicate, *duplicate_of receives the earlier
 * index and *duplicate the later one and PB_ERR_FORMAT is returned without
 * a message (the caller knows what the names are). */
static pb_status pb_gguf_index_build(const pb_gguf *gguf, pb_gguf_name_index *index, size_t n, pb_gguf_name_fn name_of,
                                     size_t *duplicate_of, size_t *duplicate) {
    size_t cap = 16;
    while (cap < 2 * n)
        cap *= 2;
    index->slots = calloc(cap, sizeof *index->slots);
    if (!index->slots)
        return pb_fail(PB_ERR_OOM, "gguf: out of memory for a %zu-slot name index", cap);
    index->mask = cap - 1;
    for (size_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        name_of(gguf, i, &s, &len);
        size_t slot = (size_t)pb_gguf_hash(s, len) & index->mask;
        for (; index->slots[slot] != 0; slot = (slot + 1) & index->mask) {
            const char *other;
            size_t other_len;
            name_of(gguf, index->slots[slot] - 1, &other, &other_len);
            if (other_len == len && memcmp(other, s, len) == 0) {
                *duplicate_of = index->slots[slot] - 1;
                *duplicate = i;
                return PB_ERR_FORMAT;
            }
        }
        index->slots[slot] = i + 1;
    }
    return PB_OK;
}

/* ---- key/value section ---------------------------------------------------- */

/* Parses the value of kv `i` (key already read and printable in `key`). */
static pb_status pb_gguf_parse_value(pb_gguf_parser *p, pb_gguf_kv *kv, int64_t i, const char *key,
                                     size_t *strings_cap) {
    pb_gguf *g = p->gguf;
    size_t scalar = pb_gguf_scalar_size(kv->type);
    if (scalar) {
        PB_TRY(
            pb_gguf_need(p, scalar, "kv %lld ('%s') %s value", (long long)i, key, pb_gguf_value_type_name(kv->type)));
        kv->value = p->base + p->pos;
        if (kv->type == PB_GGUF_BOOL && kv->value[0] > 1)
            return pb_gguf_parse_fail(p, "kv %lld ('%s'): bool value %u is neither 0 nor 1", (long long)i, key,
                                      kv->value[0]);
        p->pos += scalar;
        return PB_OK;
    }
    if (kv->type == PB_GGUF_STRING) {
        PB_TRY(pb_gguf_need(p, 8, "kv %lld ('%s') string length", (long long)i, key));
        kv->len = pb_gguf_take_u64(p);
        PB_TRY(pb_gguf_need(p, kv->len, "kv %lld ('%s') string value", (long long)i, key));
        kv->value = p->base + p->pos;
        p->pos += (size_t)kv->len;
        return PB_OK;
    }
    if (kv->type != PB_GGUF_ARRAY)
        return pb_gguf_parse_fail(p, "kv %lld ('%s'): unknown value type %u", (long long)i, key, kv->type);

    PB_TRY(pb_gguf_need(p, 12, "kv %lld ('%s') array header", (long long)i, key));
    kv->elem_type = pb_gguf_take_u32(p);
    kv->len = pb_gguf_take_u64(p);
    if (kv->elem_type == PB_GGUF_ARRAY)
        return pb_gguf_parse_fail(p, "kv %lld ('%s'): nested array (array of arrays) is not allowed", (long long)i,
                                  key);
    if (kv->elem_type != PB_GGUF_STRING && pb_gguf_scalar_size(kv->elem_type) == 0)
        return pb_gguf_parse_fail(p, "kv %lld ('%s'): unknown array element type %u", (long long)i, key, kv->elem_type);
    size_t left = p->size - p->pos;
    if (kv->elem_type != PB_GGUF_STRING) {
        size_t elem = pb_gguf_scalar_size(kv->elem_type);
        if (kv->len > left / elem)
            return pb_gguf_parse_fail(
                p, "kv %lld ('%s'): array length %llu of %s needs more than the %zu bytes left at offset %zu",
                (long long)i, key, (unsigned long long)kv->len, pb_gguf_value_type_name(kv->elem_type), left, p->pos);
        kv->value = p->base + p->pos;
        if (kv->elem_type == PB_GGUF_BOOL) {
            for (uint64_t j = 0; j < kv->len; j++)
                if (kv->value[j] > 1)
                    return pb_gguf_parse_fail(p, "kv %lld ('%s'): bool array element %llu is %u, neither 0 nor 1",
                                              (long long)i, key, (unsigned long long)j, kv->value[j]);
        }
        p->pos += (size_t)kv->len * elem;
        return PB_OK;
    }

    /* Strings: each needs at least its 8-byte length. Walk them once to
     * validate, then index them so that lookups by position are O(1). */
    if (kv->len > left / 8)
        return pb_gguf_parse_fail(
            p, "kv %lld ('%s'): array length %llu of strings needs more than the %zu bytes left at offset %zu",
            (long long)i, key, (unsigned long long)kv->len, left, p->pos);
    kv->value = p->base + p->pos;
    size_t start = p->pos;
    for (uint64_t j = 0; j < kv->len; j++) {
        PB_TRY(pb_gguf_need(p, 8, "kv %lld ('%s') array element %llu string length", (long long)i, key,
                            (unsigned long long)j));
        uint64_t len = pb_gguf_take_u64(p);
        PB_TRY(pb_gguf_need(p, len, "kv %lld ('%s') array element %llu string value", (long long)i, key,
                            (unsigned long long)j));
        p->pos += (size_t)len;
    }
    kv->first_string = g->n_strings;
    PB_TRY(pb_array_reserve(&g->strings, strings_cap, (size_t)(g->n_strings + kv->len), sizeof *g->strings,
                            "gguf array strings"));
    for (size_t pos = start, j = 0; j < kv->len; j++) {
        uint64_t len = pb_gguf_le64(p->base + pos);
        g->strings[g->n_strings++] = (pb_gguf_string){(const char *)p->base + pos + 8, len};
        pos += 8 + (size_t)len;
    }
    return PB_OK;
}

/* A length-prefixed name (a kv's key, a tensor's name) in place: raw and len
 * point into the file, printable gets its printable form. Messages name the
 * owner ("kv 3"), the field ("key") and what an empty one is called. */
static pb_status pb_gguf_take_name(pb_gguf_parser *p, const char *owner, long long index, const char *field,
                                   const char *empty, const char **raw, size_t *len, char printable[PB_GGUF_NAME_BUF]) {
    PB_TRY(pb_gguf_need(p, 8, "%s %lld %s length", owner, index, field));
    uint64_t n = pb_gguf_take_u64(p);
    if (n == 0)
        return pb_gguf_parse_fail(p, "%s %lld: %s", owner, index, empty);
    PB_TRY(pb_gguf_need(p, n, "%s %lld %s (length %llu)", owner, index, field, (unsigned long long)n));
    *raw = (const char *)p->base + p->pos;
    *len = (size_t)n;
    p->pos += *len;
    pb_gguf_printable(printable, *raw, *len);
    if (memchr(*raw, '\0', *len))
        return pb_gguf_parse_fail(p, "%s %lld: %s '%s' contains a NUL byte", owner, index, field, printable);
    return PB_OK;
}

/* The head of a kv or tensor-info record: grows *items to hold record i,
 * zeroes it and reads its name (pb_gguf_take_name). */
static pb_status pb_gguf_take_record(pb_gguf_parser *p, void **items, size_t *capacity, size_t size, uint64_t i,
                                     const char *owner, const char *field, const char *empty, const char **raw,
                                     size_t *len, char printable[PB_GGUF_NAME_BUF]) {
    PB_TRY(pb_array_reserve(items, capacity, (size_t)i + 1, size, "gguf records"));
    memset((char *)*items + (size_t)i * size, 0, size);
    return pb_gguf_take_name(p, owner, (long long)i, field, empty, raw, len, printable);
}

static pb_status pb_gguf_parse_kvs(pb_gguf_parser *p, uint64_t n_kv) {
    pb_gguf *g = p->gguf;
    size_t kv_cap = 0, strings_cap = 0;
    char key[PB_GGUF_NAME_BUF];
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *raw_key;
        size_t key_len, start = p->pos;
        PB_TRY(pb_gguf_take_record(p, (void **)&g->kvs, &kv_cap, sizeof *g->kvs, i, "kv", "key", "empty key", &raw_key,
                                   &key_len, key));
        pb_gguf_kv *kv = &g->kvs[i];
        kv->record_start = start;
        kv->key = raw_key;
        kv->key_len = key_len;
        PB_TRY(pb_gguf_need(p, 4, "kv %lld ('%s') value type", (long long)i, key));
        kv->type = pb_gguf_take_u32(p);
        g->n_kv = (int64_t)i + 1;
        PB_TRY(pb_gguf_parse_value(p, kv, (int64_t)i, key, &strings_cap));
        kv->record_len = p->pos - start;
    }
    size_t first = 0, second = 0;
    pb_status status = pb_gguf_index_build(g, &g->kv_index, (size_t)g->n_kv, pb_gguf_kv_name, &first, &second);
    if (status == PB_ERR_FORMAT)
        return pb_gguf_parse_fail(p, "duplicate key '%s' (kv %zu and kv %zu)",
                                  pb_gguf_printable(key, g->kvs[second].key, g->kvs[second].key_len), first, second);
    return status;
}

/* ---- tensor infos ---------------------------------------------------------- */

static pb_status pb_gguf_parse_tensor_infos(pb_gguf_parser *p, uint64_t n_tensors, pb_gguf_info_extra **extra) {
    pb_gguf *g = p->gguf;
    size_t cap = 0, extra_cap = 0;
    char name[PB_GGUF_NAME_BUF];
    for (uint64_t i = 0; i < n_tensors; i++) {
        PB_TRY(pb_array_reserve(extra, &extra_cap, (size_t)i + 1, sizeof **extra, "gguf tensor infos"));
        const char *raw_name;
        size_t name_len;
        PB_TRY(pb_gguf_take_record(p, (void **)&g->tensors, &cap, sizeof *g->tensors, i, "tensor", "name",
                                   "empty tensor name", &raw_name, &name_len, name));
        pb_gguf_tensor *t = &g->tensors[i];
        /* Points into the file until the names are copied out below. */
        t->name = raw_name;
        (*extra)[i].name_len = (size_t)name_len;
        g->n_tensors = (int64_t)i + 1;

        PB_TRY(pb_gguf_need(p, 4, "tensor '%s' n_dims", name));
        t->n_dims = pb_gguf_take_u32(p);
        if (t->n_dims < 1 || t->n_dims > 4)
            return pb_gguf_parse_fail(p, "tensor '%s': n_dims %u is outside 1..4", name, t->n_dims);
        PB_TRY(pb_gguf_need(p, 8ull * t->n_dims, "tensor '%s' dims", name));
        uint64_t n_elements = 1;
        for (uint32_t d = 0; d < 4; d++) {
            uint64_t dim = 1;
            if (d < t->n_dims) {
                dim = pb_gguf_take_u64(p);
                if (dim == 0)
                    return pb_gguf_parse_fail(p, "tensor '%s': dim %u (ne[%u]) is 0", name, d, d);
                if (!pb_mul_u64(n_elements, dim, &n_elements) || n_elements > (uint64_t)INT64_MAX)
                    return pb_gguf_parse_fail(p, "tensor '%s': element count overflows at dim %u (ne[%u] = %llu)", name,
                                              d, d, (unsigned long long)dim);
            }
            t->ne[d] = (int64_t)dim;
        }
        t->n_elements = n_elements;

        PB_TRY(pb_gguf_need(p, 4, "tensor '%s' type", name));
        t->type = pb_gguf_take_u32(p);
        if (!pb_ggml_type_known(t->type))
            return pb_gguf_parse_fail(p, "tensor '%s': unknown ggml type %u", name, t->type);
        uint32_t block_size = pb_ggml_block_size(t->type);
        if ((uint64_t)t->ne[0] % block_size != 0)
            return pb_gguf_parse_fail(p,
                                      "tensor '%s': row length ne[0] = %lld is not a multiple of the %s block size %u",
                                      name, (long long)t->ne[0], pb_ggml_type_name(t->type), block_size);
        /* Up to 8 bytes per element (F64, I64) times up to 2^63 elements. */
        if (!pb_mul_u64(n_elements / block_size, pb_ggml_block_bytes(t->type), &t->n_bytes))
            return pb_gguf_parse_fail(p, "tensor '%s': byte size of %llu %s elements overflows", name,
                                      (unsigned long long)n_elements, pb_ggml_type_name(t->type));

        PB_TRY(pb_gguf_need(p, 8, "tensor '%s' data offset", name));
        uint64_t offset = pb_gguf_take_u64(p);
        if (offset % g->alignment != 0)
            return pb_gguf_parse_fail(p, "tensor '%s': data offset %llu is not aligned to %u", name,
                                      (unsigned long long)offset, g->alignment);
        (*extra)[i].offset = offset;
    }
    return PB_OK;
}

typedef struct {
    uint64_t start, end;
    size_t index;
} pb_gguf_range;

static int pb_gguf_range_cmp(const void *a, const void *b) {
    const pb_gguf_range *x = a, *y = b;
    if (x->start != y->start)
        return x->start < y->start ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

/* The tensors' data regions, sorted by offset (ranges, absolute), must tile
 * the data section as GGUF writers lay it out: the first at offset 0, each
 * next one where the one before ends rounded up to general.alignment, and
 * nothing after the last one but its padding. An overlap, a gap wider than
 * the padding or bytes no tensor owns are refused: such a file was not
 * written by a GGUF writer, and bytes that no tensor names can hide
 * anything. The order of the tensor infos is free. */
static pb_status pb_gguf_check_layout(pb_gguf_parser *p, const pb_gguf_range *ranges, size_t n,
                                      const pb_gguf_info_extra *extra) {
    const pb_gguf *g = p->gguf;
    char name[PB_GGUF_NAME_BUF], other[PB_GGUF_NAME_BUF];
#define PB_GGUF_RANGE_NAME(buf, r) pb_gguf_printable(buf, g->tensors[(r)->index].name, extra[(r)->index].name_len)
    uint64_t base = g->data_offset, expected = 0; /* where the next region must start, relative */
    for (size_t i = 1; i < n; i++) {
        const pb_gguf_range *a = &ranges[i - 1], *b = &ranges[i];
        if (b->start < a->end)
            return pb_gguf_parse_fail(
                p, "tensor '%s' (data offset %llu) overlaps tensor '%s' (data offset %llu, %llu bytes)",
                PB_GGUF_RANGE_NAME(name, b), (unsigned long long)(b->start - base), PB_GGUF_RANGE_NAME(other, a),
                (unsigned long long)(a->start - base), (unsigned long long)(a->end - a->start));
    }
    for (size_t i = 0; i < n; i++) {
        const pb_gguf_range *a = i ? &ranges[i - 1] : NULL, *b = &ranges[i];
        uint64_t start = b->start - base;
        if (start != expected && !a)
            return pb_gguf_parse_fail(p,
                                      "tensor '%s': the first tensor data starts at data offset %llu, not 0 "
                                      "(%llu bytes of the data section belong to no tensor)",
                                      PB_GGUF_RANGE_NAME(name, b), (unsigned long long)start,
                                      (unsigned long long)start);
        if (start != expected)
            return pb_gguf_parse_fail(p,
                                      "tensor '%s' (data offset %llu) leaves a %llu-byte gap after tensor '%s' "
                                      "(which ends at %llu; padded to alignment %u, the next tensor starts at %llu): "
                                      "tensor data must be packed",
                                      PB_GGUF_RANGE_NAME(name, b), (unsigned long long)start,
                                      (unsigned long long)(start - expected), PB_GGUF_RANGE_NAME(other, a),
                                      (unsigned long long)(a->end - base), g->alignment, (unsigned long long)expected);
        /* end <= file size: rounding up cannot wrap */
        expected = (b->end - base + g->alignment - 1) / g->alignment * g->alignment;
    }
    uint64_t section = p->size - base, last_end = ranges[n - 1].end - base;
    if (section > expected)
        return pb_gguf_parse_fail(p,
                                  "%llu bytes after the last tensor data (tensor '%s' ends at data offset %llu; "
                                  "padded to alignment %u, the data section would end at %llu) belong to no tensor",
                                  (unsigned long long)(section - last_end), PB_GGUF_RANGE_NAME(name, &ranges[n - 1]),
                                  (unsigned long long)last_end, g->alignment, (unsigned long long)expected);
#undef PB_GGUF_RANGE_NAME
    return PB_OK;
}

/* Copies the names out, indexes them, and places every tensor in the data
 * section: inside the file, packed as pb_gguf_check_layout says. */
static pb_status pb_gguf_place_tensors(pb_gguf_parser *p, const pb_gguf_info_extra *extra) {
    pb_gguf *g = p->gguf;
    size_t n = (size_t)g->n_tensors;
    char name[PB_GGUF_NAME_BUF];

    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += extra[i].name_len + 1; /* names lie inside the file: no overflow */
    g->names = malloc(total ? total : 1);
    if (!g->names)
        return pb_fail(PB_ERR_OOM, "gguf: out of memory for %zu bytes of tensor names", total);
    for (size_t i = 0, pos = 0; i < n; i++) {
        memcpy(g->names + pos, g->tensors[i].name, extra[i].name_len);
        g->names[pos + extra[i].name_len] = '\0';
        g->tensors[i].name = g->names + pos;
        pos += extra[i].name_len + 1;
    }
    size_t first = 0, second = 0;
    pb_status status = pb_gguf_index_build(g, &g->tensor_index, n, pb_gguf_tensor_name, &first, &second);
    if (status == PB_ERR_FORMAT)
        return pb_gguf_parse_fail(p, "duplicate tensor name '%s' (tensors %zu and %zu)",
                                  pb_gguf_printable(name, g->tensors[second].name, extra[second].name_len), first,
                                  second);
    PB_TRY(status);

    /* The data section starts at the next multiple of the alignment. */
    uint64_t data_offset = ((uint64_t)p->pos + g->alignment - 1) / g->alignment * g->alignment;
    g->data_offset = data_offset;
    if (n == 0)
        return PB_OK; /* writers may omit the padding when there is no data */
    if (data_offset > p->size)
        return pb_gguf_parse_fail(p,
                                  "truncated file: data section starts at offset %llu (tensor infos end at %zu, "
                                  "padded to alignment %u) but the file ends at %zu",
                                  (unsigned long long)data_offset, p->pos, g->alignment, p->size);

    pb_gguf_range *ranges = malloc(n * sizeof *ranges);
    if (!ranges)
        return pb_fail(PB_ERR_OOM, "gguf: out of memory for %zu tensor ranges", n);
    status = PB_OK;
    for (size_t i = 0; i < n && status == PB_OK; i++) {
        pb_gguf_tensor *t = &g->tensors[i];
        uint64_t offset = extra[i].offset, start, end;
        if (!pb_add_u64(data_offset, offset, &start) || !pb_add_u64(start, t->n_bytes, &end) || end > p->size) {
            status = pb_gguf_parse_fail(p,
                                        "tensor '%s': data at offset %llu + %llu bytes extends past the end of the "
                                        "file (data section %llu..%zu)",
                                        pb_gguf_printable(name, t->name, extra[i].name_len), (unsigned long long)offset,
                                        (unsigned long long)t->n_bytes, (unsigned long long)data_offset, p->size);
            break;
        }
        t->data = p->base + start;
        ranges[i] = (pb_gguf_range){start, end, i};
    }
    if (status == PB_OK) {
        qsort(ranges, n, sizeof *ranges, pb_gguf_range_cmp);
        status = pb_gguf_check_layout(p, ranges, n, extra);
    }
    free(ranges);
    return status;
}

/* ---- open/close ---------------------------------------------------------------- */

static pb_status pb_gguf_parse(pb_gguf_parser *p) {
    pb_gguf *g = p->gguf;
    PB_TRY(pb_gguf_need(p, 4, "header magic"));
    if (memcmp(p->base, "GGUF", 4) != 0) {
        char magic[PB_GGUF_NAME_BUF];
        return pb_gguf_parse_fail(p, "bad magic '%s' (expected 'GGUF')",
                                  pb_gguf_printable(magic, (const char *)p->base, 4));
    }
    p->pos = 4;
    PB_TRY(pb_gguf_need(p, 4, "header version"));
    g->version = pb_gguf_take_u32(p);
    if (g->version == 0x02000000u || g->version == 0x03000000u)
        return pb_fail(PB_ERR_UNSUPPORTED, "gguf: %s%sbig-endian GGUF (version field 0x%08x) is not supported",
                       p->source ? p->source : "", p->source ? ": " : "", g->version);
    if (g->version != 2 && g->version != 3)
        return pb_gguf_parse_fail(p, "version %u is not supported (only 2 and 3)", g->version);
    PB_TRY(pb_gguf_need(p, 16, "header tensor and kv counts"));
    uint64_t n_tensors = pb_gguf_take_u64(p);
    uint64_t n_kv = pb_gguf_take_u64(p);
    size_t left = p->size - p->pos;
    if (n_kv > left / PB_GGUF_MIN_KV_BYTES)
        return pb_gguf_parse_fail(p, "kv count %llu is impossible: the %zu bytes after the header hold at most %zu kvs",
                                  (unsigned long long)n_kv, left, left / PB_GGUF_MIN_KV_BYTES);
    size_t left_for_infos = left - (size_t)n_kv * PB_GGUF_MIN_KV_BYTES;
    if (n_tensors > left_for_infos / PB_GGUF_MIN_TENSOR_INFO_BYTES)
        return pb_gguf_parse_fail(p,
                                  "tensor count %llu is impossible: the %zu bytes after the header and %llu kvs hold "
                                  "at most %zu tensor infos",
                                  (unsigned long long)n_tensors, left, (unsigned long long)n_kv,
                                  left_for_infos / PB_GGUF_MIN_TENSOR_INFO_BYTES);

    PB_TRY(pb_gguf_parse_kvs(p, n_kv));

    g->alignment = PB_GGUF_DEFAULT_ALIGNMENT;
    int64_t at = pb_gguf_index_find(g, &g->kv_index, pb_gguf_kv_name, "general.alignment", 17);
    if (at >= 0) {
        const pb_gguf_kv *kv = &g->kvs[at];
        if (kv->type != PB_GGUF_UINT32)
            return pb_gguf_parse_fail(p, "key 'general.alignment' has type %s, expected uint32",
                                      pb_gguf_value_type_name(kv->type));
        uint32_t alignment = pb_gguf_le32(kv->value);
        if (alignment == 0 || (alignment & (alignment - 1)) != 0)
            return pb_gguf_parse_fail(p, "general.alignment %u is not a power of two", alignment);
        g->alignment = alignment;
    }

    pb_gguf_info_extra *extra = NULL;
    pb_status status = pb_gguf_parse_tensor_infos(p, n_tensors, &extra);
    if (status == PB_OK)
        status = pb_gguf_place_tensors(p, extra);
    free(extra);
    return status;
}

static pb_status pb_gguf_open_impl(pb_gguf **out, const void *data, size_t size, const char *source) {
    static const uint8_t empty[1] = {0};
    pb_gguf *g = calloc(1, sizeof *g);
    if (!g)
        return pb_fail(PB_ERR_OOM, "gguf: out of memory");
    g->base = size ? data : empty;
    g->size = size;
    pb_gguf_parser parser = {g, g->base, size, 0, source};
    pb_status status = pb_gguf_parse(&parser);
    if (status != PB_OK) {
        pb_gguf_close(g);
        return status;
    }
    *out = g;
    return PB_OK;
}

pb_status pb_gguf_open_buffer(pb_gguf **out, const void *data, size_t size) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "gguf: open_buffer: out is NULL");
    *out = NULL;
    if (!data && size)
        return pb_fail(PB_ERR_ARG, "gguf: open_buffer: data is NULL but size is %zu", size);
    return pb_gguf_open_impl(out, data, size, NULL);
}

pb_status pb_gguf_open(pb_gguf **out, const char *path) {
    if (!out || !path)
        return pb_fail(PB_ERR_ARG, "gguf: open: %s is NULL", out ? "path" : "out");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block the open */
    if (fd < 0)
        return pb_fail(PB_ERR_IO, "gguf: cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int err = errno;
        close(fd);
        return pb_fail(PB_ERR_IO, "gguf: cannot stat '%s': %s", path, strerror(err));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return pb_fail(PB_ERR_IO, "gguf: '%s' is not a regular file", path);
    }
    if ((uint64_t)st.st_size > SIZE_MAX) {
        close(fd);
        return pb_fail(PB_ERR_IO, "gguf: '%s' is too large to map (%lld bytes)", path, (long long)st.st_size);
    }
    size_t size = (size_t)st.st_size;
    void *mapping = NULL;
    if (size > 0) {
        mapping = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (mapping == MAP_FAILED) {
            int err = errno;
            close(fd);
            return pb_fail(PB_ERR_IO, "gguf: cannot map '%s' (%zu bytes): %s", path, size, strerror(err));
        }
    }
    close(fd); /* the mapping keeps the file alive */
    pb_gguf *g = NULL;
    pb_status status = pb_gguf_open_impl(&g, mapping, size, path);
    if (status != PB_OK) {
        if (mapping)
            munmap(mapping, size);
        return status;
    }
    g->mapping = mapping;
    g->mapping_size = size;
    *out = g;
    return PB_OK;
}

void pb_gguf_close(pb_gguf *gguf) {
    if (!gguf)
        return;
    if (gguf->mapping)
        munmap(gguf->mapping, gguf->mapping_size);
    free(gguf->kvs);
    free(gguf->strings);
    free(gguf->tensors);
    free(gguf->names);
    free(gguf->kv_index.slots);
    free(gguf->tensor_index.slots);
    free(gguf);
}

/* ---- queries ------------------------------------------------------------------ */

uint32_t pb_gguf_version(const pb_gguf *gguf) { return gguf ? gguf->version : 0; }
uint32_t pb_gguf_alignment(const pb_gguf *gguf) { return gguf ? gguf->alignment : 0; }
int64_t pb_gguf_key_count(const pb_gguf *gguf) { return gguf ? gguf->n_kv : 0; }

static const pb_gguf_kv *pb_gguf_lookup(const pb_gguf *gguf, const char *key) {
    int64_t i = pb_gguf_index_find(gguf, &gguf->kv_index, pb_gguf_kv_name, key, strlen(key));
    return i < 0 ? NULL : &gguf->kvs[i];
}

int pb_gguf_has_key(const pb_gguf *gguf, const char *key) { return gguf && key && pb_gguf_lookup(gguf, key) != NULL; }

pb_status pb_gguf_key_at(const pb_gguf *gguf, int64_t index, const char **key, size_t *len, pb_gguf_value_type *type) {
    if (!gguf || !key || !len || !type)
        return pb_fail(PB_ERR_ARG, "gguf: key_at: NULL argument");
    if (index < 0 || index >= gguf->n_kv)
        return pb_fail(PB_ERR_ARG, "gguf: key index %lld is outside 0..%lld", (long long)index,
                       (long long)gguf->n_kv - 1);
    *key = gguf->kvs[index].key;
    *len = gguf->kvs[index].key_len;
    *type = (pb_gguf_value_type)gguf->kvs[index].type;
    return PB_OK;
}

pb_status pb_gguf_key_record(const pb_gguf *gguf, int64_t index, const void **data, size_t *len) {
    if (!gguf || !data || !len)
        return pb_fail(PB_ERR_ARG, "gguf: key_record: NULL argument");
    if (index < 0 || index >= gguf->n_kv)
        return pb_fail(PB_ERR_ARG, "gguf: key index %lld is outside 0..%lld", (long long)index,
                       (long long)gguf->n_kv - 1);
    *data = gguf->base + gguf->kvs[index].record_start;
    *len = gguf->kvs[index].record_len;
    return PB_OK;
}

/* Finds key or fails naming it. */
static pb_status pb_gguf_require(const pb_gguf *gguf, const char *key, const void *out, const pb_gguf_kv **kv) {
    if (!gguf || !key || !out)
        return pb_fail(PB_ERR_ARG, "gguf: get '%s': NULL argument", key ? key : "(null)");
    *kv = pb_gguf_lookup(gguf, key);
    if (!*kv)
        return pb_fail(PB_ERR_FORMAT, "gguf: missing key '%s'", key);
    return PB_OK;
}

static pb_status pb_gguf_wrong_type(const char *key, const pb_gguf_kv *kv, const char *expected) {
    if (kv->type == PB_GGUF_ARRAY)
        return pb_fail(PB_ERR_FORMAT, "gguf: key '%s' has type array of %s, expected %s", key,
                       pb_gguf_value_type_name(kv->elem_type), expected);
    return pb_fail(PB_ERR_FORMAT, "gguf: key '%s' has type %s, expected %s", key, pb_gguf_value_type_name(kv->type),
                   expected);
}

/* 1 and the value when kv holds an integer type. */
static int pb_gguf_integer(const pb_gguf_kv *kv, int64_t *value, uint64_t *unsigned_value, int *is_unsigned) {
    const uint8_t *v = kv->value;
    *is_unsigned = 0;
    switch (kv->type) {
    case PB_GGUF_UINT8: *value = v[0]; break;
    case PB_GGUF_INT8: *value = (int8_t)v[0]; break;
    case PB_GGUF_UINT16: *value = (uint16_t)(v[0] | (v[1] << 8)); break;
    case PB_GGUF_INT16: *value = (int16_t)(uint16_t)(v[0] | (v[1] << 8)); break;
    case PB_GGUF_UINT32: *value = pb_gguf_le32(v); break;
    case PB_GGUF_INT32: *value = (int32_t)pb_gguf_le32(v); break;
    case PB_GGUF_INT64: *value = (int64_t)pb_gguf_le64(v); break;
    case PB_GGUF_UINT64:
        *unsigned_value = pb_gguf_le64(v);
        *is_unsigned = 1;
        *value = (int64_t)(*unsigned_value & (uint64_t)INT64_MAX);
        break;
    default: return 0;
    }
    return 1;
}

pb_status pb_gguf_get_int(const pb_gguf *gguf, const char *key, int64_t *out) {
    const pb_gguf_kv *kv;
    PB_TRY(pb_gguf_require(gguf, key, out, &kv));
    int64_t value;
    uint64_t unsigned_value = 0;
    int is_unsigned;
    if (!pb_gguf_integer(kv, &value, &unsigned_value, &is_unsigned))
        return pb_gguf_wrong_type(key, kv, "an integer");
    if (is_unsigned && unsigned_value > (uint64_t)INT64_MAX)
        return pb_fail(PB_ERR_FORMAT, "gguf: key '%s' value %llu does not fit in int64", key,
                       (unsigned long long)unsigned_value);
    *out = value;
    return PB_OK;
}

pb_status pb_gguf_get_float(const pb_gguf *gguf, const char *key, double *out) {
    const pb_gguf_kv *kv;
    PB_TRY(pb_gguf_require(gguf, key, out, &kv));
    if (kv->type == PB_GGUF_FLOAT32) {
        uint32_t bits = pb_gguf_le32(kv->value);
        float f;
        memcpy(&f, &bits, sizeof f);
        *out = f;
        return PB_OK;
    }
    if (kv->type == PB_GGUF_FLOAT64) {
        uint64_t bits = pb_gguf_le64(kv->value);
        memcpy(out, &bits, sizeof *out);
        return PB_OK;
    }
    int64_t value;
    uint64_t unsigned_value = 0;
    int is_unsigned;
    if (!pb_gguf_integer(kv, &value, &unsigned_value, &is_unsigned))
        return pb_gguf_wrong_type(key, kv, "a float or integer");
    *out = is_unsigned ? (double)unsigned_value : (double)value;
    return PB_OK;
}

/* Which elements an array getter accepts. */
typedef enum { PB_GGUF_ELEMENTS_ANY, PB_GGUF_ELEMENTS_STRING, PB_GGUF_ELEMENTS_NUMERIC } pb_gguf_elements;

/* pb_gguf_require, then the getter's second output (second_name, NULL when
 * it has none) and the key's type: what every typed getter checks first. */
static pb_status pb_gguf_require_type(const pb_gguf *gguf, const char *key, const void *out, const void *second,
                                      const char *second_name, pb_gguf_value_type type, pb_gguf_elements elements,
                                      const char *expected, const pb_gguf_kv **kv) {
    PB_TRY(pb_gguf_require(gguf, key, out, kv));
    if (second_name && !second)
        return pb_fail(PB_ERR_ARG, "gguf: get '%s': %s is NULL", key, second_name);
    int elements_ok = elements == PB_GGUF_ELEMENTS_ANY ||
                      (elements == PB_GGUF_ELEMENTS_STRING) == ((*kv)->elem_type == PB_GGUF_STRING);
    if ((*kv)->type != type || !elements_ok)
        return pb_gguf_wrong_type(key, *kv, expected);
    return PB_OK;
}

pb_status pb_gguf_get_bool(const pb_gguf *gguf, const char *key, int *out) {
    const pb_gguf_kv *kv;
    PB_TRY(pb_gguf_require_type(gguf, key, out, NULL, NULL, PB_GGUF_BOOL, PB_GGUF_ELEMENTS_ANY, "bool", &kv));
    *out = kv->value[0];
    return PB_OK;
}

pb_status pb_gguf_get_string(const pb_gguf *gguf, const char *key, const char **data, size_t *len) {
    const pb_gguf_kv *kv;
    PB_TRY(pb_gguf_require_type(gguf, key, data, len, "len", PB_GGUF_STRING, PB_GGUF_ELEMENTS_ANY, "string", &kv));
    *data = (const char *)kv->value;
    *len = (size_t)kv->len;
    return PB_OK;
}

pb_status pb_gguf_get_array_info(const pb_gguf *gguf, const char *key, pb_gguf_value_type *elem_type, uint64_t *count) {
    const pb_gguf_kv *kv;
    PB_TRY(
        pb_gguf_require_type(gguf, key, elem_type, count, "count", PB_GGUF_ARRAY, PB_GGUF_ELEMENTS_ANY, "array", &kv));
    *elem_type = (pb_gguf_value_type)kv->elem_type;
    *count = kv->len;
    return PB_OK;
}

pb_status pb_gguf_get_array_string(const pb_gguf *gguf, const char *key, uint64_t index, const char **data,
                                   size_t *len) {
    const pb_gguf_kv *kv;
    PB_TRY(pb_gguf_require_type(gguf, key, data, len, "len", PB_GGUF_ARRAY, PB_GGUF_ELEMENTS_STRING, "array of string",
                                &kv));
    if (index >= kv->len)
        return pb_fail(PB_ERR_ARG, "gguf: key '%s': index %llu is out of range (array has %llu strings)", key,
                       (unsigned long long)index, (unsigned long long)kv->len);
    const pb_gguf_string *s = &gguf->strings[kv->first_string + index];
    *data = s->data;
    *len = (size_t)s->len;
    return PB_OK;
}

pb_status pb_gguf_get_array_data(const pb_gguf *gguf, const char *key, const void **data) {
    const pb_gguf_kv *kv;
    PB_TRY(pb_gguf_require_type(gguf, key, data, NULL, NULL, PB_GGUF_ARRAY, PB_GGUF_ELEMENTS_NUMERIC, "numeric array",
                                &kv));
    *data = kv->value;
    return PB_OK;
}

int64_t pb_gguf_tensor_count(const pb_gguf *gguf) { return gguf ? gguf->n_tensors : 0; }

const pb_gguf_tensor *pb_gguf_tensor_at(const pb_gguf *gguf, int64_t index) {
    if (!gguf || index < 0 || index >= gguf->n_tensors)
        return NULL;
    return &gguf->tensors[index];
}

const pb_gguf_tensor *pb_gguf_find_tensor(const pb_gguf *gguf, const char *name) {
    if (!gguf || !name)
        return NULL;
    int64_t i = pb_gguf_index_find(gguf, &gguf->tensor_index, pb_gguf_tensor_name, name, strlen(name));
    return i < 0 ? NULL : &gguf->tensors[i];
}
