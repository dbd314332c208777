/* safetensors writer: header planned with jansson (insertion order kept),
 * data streamed (safetensors_write.h). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "formats/dtype.h"
#include "formats/safetensors.h"
#include "formats/safetensors_write.h"
#include "util/array.h"
#include "util/internal.h"

struct pb_st_writer {
    json_t *header;    /* name -> {dtype, shape, data_offsets} */
    uint64_t *n_bytes; /* (n) each tensor's size, in order */
    int64_t n;
    size_t cap;
    int64_t n_written;
    uint64_t data_len;
};

pb_status pb_st_writer_create(pb_st_writer **out) {
    *out = NULL;
    pb_st_writer *w = calloc(1, sizeof *w);
    json_t *meta = json_pack("{s:{s:s}}", "__metadata__", "format", "pt");
    if (!w || !meta) {
        free(w);
        json_decref(meta);
        return pb_fail(PB_ERR_OOM, "safetensors writer: out of memory");
    }
    w->header = meta;
    *out = w;
    return PB_OK;
}

void pb_st_writer_free(pb_st_writer *w) {
    if (!w)
        return;
    json_decref(w->header);
    free(w->n_bytes);
    free(w);
}

pb_status pb_st_writer_add(pb_st_writer *w, const char *name, pb_dtype dtype, int n_dims, const int64_t *shape) {
    if (dtype != PB_DTYPE_F32 && dtype != PB_DTYPE_F16 && dtype != PB_DTYPE_BF16)
        return pb_fail(PB_ERR_ARG, "safetensors writer: tensor '%s': dtype %s (F32, F16 or BF16)", name,
                       pb_dtype_name(dtype));
    if (n_dims < 0 || n_dims > 4)
        return pb_fail(PB_ERR_ARG, "safetensors writer: tensor '%s' has %d dimensions (0..4)", name, n_dims);
    if (json_object_get(w->header, name))
        return pb_fail(PB_ERR_ARG, "safetensors writer: tensor '%s' added twice", name);
    PB_TRY(pb_array_reserve(&w->n_bytes, &w->cap, (size_t)w->n + 1, sizeof *w->n_bytes, "tensors to write"));
    uint64_t n = 1;
    json_t *dims = json_array();
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0 || !pb_mul_u64(n, (uint64_t)shape[i], &n)) {
            json_decref(dims);
            return pb_fail(PB_ERR_ARG, "safetensors writer: tensor '%s': bad shape", name);
        }
        json_array_append_new(dims, json_integer(shape[i]));
    }
    uint64_t bytes = n * pb_dtype_size(dtype);
    json_t *entry = json_pack("{s:s, s:o, s:[I, I]}", "dtype", pb_safetensors_dtype_name(dtype), "shape", dims,
                              "data_offsets", (json_int_t)w->data_len, (json_int_t)(w->data_len + bytes));
    if (!entry || json_object_set_new(w->header, name, entry) != 0)
        return pb_fail(PB_ERR_OOM, "safetensors writer: out of memory");
    w->n_bytes[w->n++] = bytes;
    w->data_len += bytes;
    return PB_OK;
}

static pb_status put(FILE *f, const void *data, size_t n) {
    if (n && fwrite(data, 1, n, f) != n)
        return pb_fail(PB_ERR_IO, "safetensors writer: write failed (disk full?)");
    return PB_OK;
}

pb_status pb_st_writer_begin(pb_st_writer *w, FILE *f) {
    char *text = json_dumps(w->header, JSON_COMPACT);
    if (!text)
        return pb_fail(PB_ERR_OOM, "safetensors writer: out of memory");
    size_t len = strlen(text);
    size_t padded = (len + 7) / 8 * 8;
    uint8_t head[8];
    for (int i = 0; i < 8; i++)
        head[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    pb_status status = put(f, head, 8);
    if (status == PB_OK)
        status = put(f, text, len);
    for (size_t i = len; status == PB_OK && i < padded; i++)
        status = put(f, " ", 1);
    free(text);
    return status;
}

pb_status pb_st_writer_tensor(pb_st_writer *w, FILE *f, const void *data, uint64_t n_bytes) {
    if (w->n_written >= w->n)
        return pb_fail(PB_ERR_ARG, "safetensors writer: more tensors written than added (%lld)", (long long)w->n);
    if (n_bytes != w->n_bytes[w->n_written])
        return pb_fail(PB_ERR_ARG, "safetensors writer: tensor %lld takes %llu bytes, not %llu",
                       (long long)w->n_written, (unsigned long long)w->n_bytes[w->n_written],
                       (unsigned long long)n_bytes);
    w->n_written++;
    return put(f, data, (size_t)n_bytes);
}

pb_status pb_st_writer_end(const pb_st_writer *w) {
    if (w->n_written != w->n)
        return pb_fail(PB_ERR_ARG, "safetensors writer: %lld of %lld tensors written", (long long)w->n_written,
                       (long long)w->n);
    return PB_OK;
}
