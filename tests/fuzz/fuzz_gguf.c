/* GGUF header, key/value section and tensor table (formats/gguf.c), opened
 * from the input in memory; then every getter a loader would call, on every
 * key and tensor, so a table that validates but lies shows up as an
 * out-of-bounds read. Dequantises the first row of each small tensor. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"
#include "formats/quant.h"
#include "fuzz_util.h"

/* Bytes of one element of a numeric array. */
static size_t elem_bytes(pb_gguf_value_type type) {
    switch (type) {
    case PB_GGUF_UINT8:
    case PB_GGUF_INT8:
    case PB_GGUF_BOOL: return 1;
    case PB_GGUF_UINT16:
    case PB_GGUF_INT16: return 2;
    case PB_GGUF_UINT32:
    case PB_GGUF_INT32:
    case PB_GGUF_FLOAT32: return 4;
    default: return 8;
    }
}

static volatile uint8_t sink;

static void touch(const void *data, size_t n) {
    if (n) {
        sink ^= ((const uint8_t *)data)[0];
        sink ^= ((const uint8_t *)data)[n - 1];
    }
}

static void read_array(const pb_gguf *g, const char *key) {
    pb_gguf_value_type elem;
    uint64_t count = 0;
    if (pb_gguf_get_array_info(g, key, &elem, &count) != PB_OK || count == 0)
        return;
    if (elem == PB_GGUF_STRING) {
        uint64_t picks[3] = {0, count / 2, count - 1};
        for (int i = 0; i < 3; i++) {
            const char *s;
            size_t len;
            if (pb_gguf_get_array_string(g, key, picks[i], &s, &len) == PB_OK)
                touch(s, len);
        }
        return;
    }
    const void *data;
    if (pb_gguf_get_array_data(g, key, &data) == PB_OK)
        touch(data, (size_t)count * elem_bytes(elem));
}

static void read_key(const pb_gguf *g, int64_t i) {
    const char *name;
    size_t len;
    pb_gguf_value_type type;
    if (pb_gguf_key_at(g, i, &name, &len, &type) != PB_OK)
        return;
    char key[256];
    if (len >= sizeof key)
        return;
    memcpy(key, name, len);
    key[len] = '\0';
    int64_t iv;
    double fv;
    int bv;
    const char *s;
    size_t slen;
    (void)pb_gguf_get_int(g, key, &iv);
    (void)pb_gguf_get_float(g, key, &fv);
    (void)pb_gguf_get_bool(g, key, &bv);
    if (pb_gguf_get_string(g, key, &s, &slen) == PB_OK)
        touch(s, slen);
    (void)pb_gguf_value_type_name(type);
    if (type == PB_GGUF_ARRAY)
        read_array(g, key);
}

static void read_tensor(const pb_gguf *g, const pb_gguf_tensor *t) {
    touch(t->data, (size_t)t->n_bytes);
    if (pb_gguf_find_tensor(g, t->name) == NULL)
        abort(); /* every listed tensor must be found by its name */
    uint64_t row = (uint64_t)t->ne[0];
    if (row == 0 || row > 4096 || !pb_ggml_type_dequantizable(t->type))
        return;
    float *out = malloc(row * sizeof *out);
    if (out)
        (void)pb_dequantize(out, t->data, t->type, row);
    free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pb_gguf *g = NULL;
    if (fuzz_note("gguf", pb_gguf_open_buffer(&g, data, size)) != PB_OK)
        return 0;
    (void)pb_gguf_version(g);
    (void)pb_gguf_alignment(g);
    (void)pb_gguf_has_key(g, "general.architecture");
    for (int64_t i = 0; i < pb_gguf_key_count(g); i++)
        read_key(g, i);
    for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++)
        read_tensor(g, pb_gguf_tensor_at(g, i));
    pb_gguf_close(g);
    return 0;
}
