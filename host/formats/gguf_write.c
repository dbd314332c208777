/* GGUF v3 writer: keys and tensor infos planned in memory, tensor data
 * streamed (gguf_write.h). */
#include <stdlib.h>
#include <string.h>

#include "formats/gguf_write.h"
#include "formats/quant.h"
#include "util/array.h"
#include "util/internal.h"

#define PB_GGUF_WRITE_VERSION 3u

typedef struct {
    char *name;
    uint32_t n_dims;
    int64_t ne[4];
    uint32_t type;
    uint64_t n_bytes;
    uint64_t offset; /* in the data section */
} pb_gguf_out_tensor;

struct pb_gguf_writer {
    uint32_t alignment;
    uint8_t *keys; /* the key records, back to back, as they will be written */
    size_t keys_len, keys_cap;
    char **key_names; /* (n_keys) for refusing duplicates */
    int64_t n_keys;
    pb_gguf_out_tensor *tensors; /* (n_tensors) */
    int64_t n_tensors;
    size_t tensors_cap;
    uint64_t data_len; /* the data section so far, padded */
    int64_t n_written; /* tensors whose data went out */
};

pb_status pb_gguf_writer_create(pb_gguf_writer **out, uint32_t alignment) {
    *out = NULL;
    if (alignment == 0 || (alignment & (alignment - 1)) != 0)
        return pb_fail(PB_ERR_ARG, "gguf writer: alignment %u is not a power of two", alignment);
    pb_gguf_writer *w = calloc(1, sizeof *w);
    if (!w)
        return pb_fail(PB_ERR_OOM, "gguf writer: out of memory");
    w->alignment = alignment;
    *out = w;
    return PB_OK;
}

void pb_gguf_writer_free(pb_gguf_writer *w) {
    if (!w)
        return;
    for (int64_t i = 0; i < w->n_keys; i++)
        free(w->key_names[i]);
    for (int64_t i = 0; i < w->n_tensors; i++)
        free(w->tensors[i].name);
    free(w->key_names);
    free(w->tensors);
    free(w->keys);
    free(w);
}

static pb_status append(pb_gguf_writer *w, const void *data, size_t n) {
    PB_TRY(pb_array_reserve(&w->keys, &w->keys_cap, w->keys_len + n, 1, "bytes of gguf key records"));
    memcpy(w->keys + w->keys_len, data, n);
    w->keys_len += n;
    return PB_OK;
}

static pb_status append_u32(pb_gguf_writer *w, uint32_t v) {
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    return append(w, b, 4);
}

static pb_status append_u64(pb_gguf_writer *w, uint64_t v) {
    uint8_t b[8];
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    return append(w, b, 8);
}

static pb_status append_string(pb_gguf_writer *w, const char *s, size_t len) {
    PB_TRY(append_u64(w, len));
    return append(w, s, len);
}

/* Remembers the key's name; a second key of the same name is refused. */
static pb_status note_key(pb_gguf_writer *w, const char *key, size_t len) {
    for (int64_t i = 0; i < w->n_keys; i++)
        if (strlen(w->key_names[i]) == len && memcmp(w->key_names[i], key, len) == 0)
            return pb_fail(PB_ERR_ARG, "gguf writer: key '%.*s' written twice", (int)len, key);
    char **grown = realloc(w->key_names, (size_t)(w->n_keys + 1) * sizeof *grown); /* keys are few */
    if (!grown)
        return pb_fail(PB_ERR_OOM, "gguf writer: out of memory");
    w->key_names = grown;
    char *copy = malloc(len + 1);
    if (!copy)
        return pb_fail(PB_ERR_OOM, "gguf writer: out of memory");
    memcpy(copy, key, len);
    copy[len] = '\0';
    w->key_names[w->n_keys++] = copy;
    return PB_OK;
}

pb_status pb_gguf_writer_copy_key(pb_gguf_writer *w, const pb_gguf *src, int64_t index) {
    const char *key;
    size_t key_len;
    pb_gguf_value_type type;
    const void *record;
    size_t record_len;
    PB_TRY(pb_gguf_key_at(src, index, &key, &key_len, &type));
    PB_TRY(pb_gguf_key_record(src, index, &record, &record_len));
    PB_TRY(note_key(w, key, key_len));
    return append(w, record, record_len);
}

pb_status pb_gguf_writer_set_u32(pb_gguf_writer *w, const char *key, uint32_t value) {
    PB_TRY(note_key(w, key, strlen(key)));
    PB_TRY(append_string(w, key, strlen(key)));
    PB_TRY(append_u32(w, PB_GGUF_UINT32));
    return append_u32(w, value);
}

pb_status pb_gguf_writer_set_string(pb_gguf_writer *w, const char *key, const char *value) {
    PB_TRY(note_key(w, key, strlen(key)));
    PB_TRY(append_string(w, key, strlen(key)));
    PB_TRY(append_u32(w, PB_GGUF_STRING));
    return append_string(w, value, strlen(value));
}

static uint64_t pad_to(uint64_t n, uint32_t alignment) { return (n + alignment - 1) / alignment * alignment; }

pb_status pb_gguf_writer_add_tensor(pb_gguf_writer *w, const char *name, int n_dims, const int64_t ne[4],
                                    uint32_t type) {
    if (n_dims < 1 || n_dims > 4)
        return pb_fail(PB_ERR_ARG, "gguf writer: tensor '%s' has %d dimensions (1..4)", name, n_dims);
    uint32_t block = pb_ggml_block_size(type);
    if (block == 0)
        return pb_fail(PB_ERR_ARG, "gguf writer: tensor '%s': unknown type %u", name, type);
    if (ne[0] % block != 0)
        return pb_fail(PB_ERR_ARG, "gguf writer: tensor '%s': rows of %lld are not whole %s blocks of %u", name,
                       (long long)ne[0], pb_ggml_type_name(type), block);
    uint64_t n = 1;
    for (int i = 0; i < n_dims; i++)
        if (ne[i] < 1 || !pb_mul_u64(n, (uint64_t)ne[i], &n))
            return pb_fail(PB_ERR_ARG, "gguf writer: tensor '%s': bad shape", name);
    PB_TRY(pb_array_reserve(&w->tensors, &w->tensors_cap, (size_t)w->n_tensors + 1, sizeof *w->tensors,
                            "tensors to write"));
    pb_gguf_out_tensor *t = &w->tensors[w->n_tensors];
    memset(t, 0, sizeof *t);
    size_t len = strlen(name);
    t->name = malloc(len + 1);
    if (t->name)
        memcpy(t->name, name, len + 1);
    if (!t->name)
        return pb_fail(PB_ERR_OOM, "gguf writer: out of memory");
    t->n_dims = (uint32_t)n_dims;
    for (int i = 0; i < 4; i++)
        t->ne[i] = i < n_dims ? ne[i] : 1;
    t->type = type;
    t->n_bytes = n / block * pb_ggml_block_bytes(type);
    t->offset = w->data_len;
    w->data_len = pad_to(w->data_len + t->n_bytes, w->alignment);
    w->n_tensors++;
    return PB_OK;
}

uint64_t pb_gguf_writer_tensor_bytes(const pb_gguf_writer *w, int64_t index) {
    return index >= 0 && index < w->n_tensors ? w->tensors[index].n_bytes : 0;
}

static pb_status put(FILE *f, const void *data, size_t n) {
    if (n && fwrite(data, 1, n, f) != n)
        return pb_fail(PB_ERR_IO, "gguf writer: write failed (disk full?)");
    return PB_OK;
}

static pb_status put_padding(FILE *f, uint64_t n) {
    static const uint8_t zeros[64];
    while (n > 0) {
        size_t k = n < sizeof zeros ? (size_t)n : sizeof zeros;
        PB_TRY(put(f, zeros, k));
        n -= k;
    }
    return PB_OK;
}

pb_status pb_gguf_writer_begin(pb_gguf_writer *w, FILE *f) {
    /* the header and the tensor infos go through the key buffer's helpers:
     * assembled after the keys, then written at once */
    size_t keys_end = w->keys_len;
    PB_TRY(append(w, "GGUF", 4));
    PB_TRY(append_u32(w, PB_GGUF_WRITE_VERSION));
    PB_TRY(append_u64(w, (uint64_t)w->n_tensors));
    PB_TRY(append_u64(w, (uint64_t)w->n_keys));
    size_t head_end = w->keys_len;
    PB_TRY(put(f, w->keys + keys_end, head_end - keys_end));
    PB_TRY(put(f, w->keys, keys_end));
    w->keys_len = keys_end;
    uint64_t written = (head_end - keys_end) + keys_end;
    for (int64_t i = 0; i < w->n_tensors; i++) {
        const pb_gguf_out_tensor *t = &w->tensors[i];
        PB_TRY(append_string(w, t->name, strlen(t->name)));
        PB_TRY(append_u32(w, t->n_dims));
        for (uint32_t d = 0; d < t->n_dims; d++)
            PB_TRY(append_u64(w, (uint64_t)t->ne[d]));
        PB_TRY(append_u32(w, t->type));
        PB_TRY(append_u64(w, t->offset));
        PB_TRY(put(f, w->keys + keys_end, w->keys_len - keys_end));
        written += w->keys_len - keys_end;
        w->keys_len = keys_end;
    }
    return put_padding(f, pad_to(written, w->alignment) - written);
}

pb_status pb_gguf_writer_tensor(pb_gguf_writer *w, FILE *f, const void *data, uint64_t n_bytes) {
    if (w->n_written >= w->n_tensors)
        return pb_fail(PB_ERR_ARG, "gguf writer: more tensors written than added (%lld)", (long long)w->n_tensors);
    const pb_gguf_out_tensor *t = &w->tensors[w->n_written];
    if (n_bytes != t->n_bytes)
        return pb_fail(PB_ERR_ARG, "gguf writer: tensor '%s' takes %llu bytes, not %llu", t->name,
                       (unsigned long long)t->n_bytes, (unsigned long long)n_bytes);
    PB_TRY(put(f, data, (size_t)n_bytes));
    w->n_written++;
    return put_padding(f, pad_to(n_bytes, w->alignment) - n_bytes);
}

pb_status pb_gguf_writer_end(const pb_gguf_writer *w) {
    if (w->n_written != w->n_tensors)
        return pb_fail(PB_ERR_ARG, "gguf writer: %lld of %lld tensors written", (long long)w->n_written,
                       (long long)w->n_tensors);
    return PB_OK;
}
