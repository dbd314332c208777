/* Tests for host/formats/gguf.c: valid v2/v3 files built in memory read back
 * exactly; hand-corrupted files are refused with PB_ERR_FORMAT and a
 * message naming the problem; every prefix of a valid file and random byte
 * flips never crash; the real model (optional) opens with the expected
 * shapes and every tensor dequantises to finite values. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "formats/gguf.h"
#include "util/internal.h"
#include "test_util.h"
#include "formats/quant.h"

/* ---- a tiny GGUF writer --------------------------------------------------- */

typedef struct {
    uint8_t *data;
    size_t size, cap;
    uint64_t n_kv, n_tensors;
} gguf_writer;

typedef struct {
    const char *name;
    uint32_t n_dims;
    uint64_t ne[4];
    uint32_t type;
    uint64_t offset;
} tensor_spec;

#define AUTO_OFFSET UINT64_MAX

static void put(gguf_writer *w, const void *p, size_t n) {
    if (w->size + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->size + n)
            cap *= 2;
        w->data = realloc(w->data, cap);
        assert_non_null(w->data);
        w->cap = cap;
    }
    if (n)
        memcpy(w->data + w->size, p, n);
    w->size += n;
}

static void put_le(gguf_writer *w, uint64_t v, int bytes) {
    uint8_t b[8];
    for (int i = 0; i < bytes; i++)
        b[i] = (uint8_t)(v >> (8 * i));
    put(w, b, (size_t)bytes);
}
static void put_u8(gguf_writer *w, uint8_t v) { put_le(w, v, 1); }
static void put_u32(gguf_writer *w, uint32_t v) { put_le(w, v, 4); }
static void put_u64(gguf_writer *w, uint64_t v) { put_le(w, v, 8); }
static void put_str(gguf_writer *w, const char *s) {
    put_u64(w, strlen(s));
    put(w, s, strlen(s));
}
static void patch_u32(gguf_writer *w, size_t at, uint32_t v) {
    for (int i = 0; i < 4; i++)
        w->data[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}
static void patch_u64(gguf_writer *w, size_t at, uint64_t v) {
    for (int i = 0; i < 8; i++)
        w->data[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

/* Header with zero counts; finish() patches the real ones in. */
static gguf_writer begin(uint32_t version) {
    gguf_writer w = {0};
    put(&w, "GGUF", 4);
    put_u32(&w, version);
    put_u64(&w, 0);
    put_u64(&w, 0);
    return w;
}

static void finish(gguf_writer *w) {
    patch_u64(w, 8, w->n_tensors);
    patch_u64(w, 16, w->n_kv);
}

static void key(gguf_writer *w, const char *k, uint32_t type) {
    put_str(w, k);
    put_u32(w, type);
    w->n_kv++;
}
static void kv_u32(gguf_writer *w, const char *k, uint32_t v) {
    key(w, k, PB_GGUF_UINT32);
    put_u32(w, v);
}
static void kv_u64(gguf_writer *w, const char *k, uint64_t v) {
    key(w, k, PB_GGUF_UINT64);
    put_u64(w, v);
}
static void kv_str(gguf_writer *w, const char *k, const char *v) {
    key(w, k, PB_GGUF_STRING);
    put_str(w, v);
}
static void kv_bool(gguf_writer *w, const char *k, uint8_t v) {
    key(w, k, PB_GGUF_BOOL);
    put_u8(w, v);
}
static void kv_f32(gguf_writer *w, const char *k, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    key(w, k, PB_GGUF_FLOAT32);
    put_u32(w, bits);
}
static void kv_f64(gguf_writer *w, const char *k, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    key(w, k, PB_GGUF_FLOAT64);
    put_u64(w, bits);
}
static void kv_array_header(gguf_writer *w, const char *k, uint32_t elem_type, uint64_t count) {
    key(w, k, PB_GGUF_ARRAY);
    put_u32(w, elem_type);
    put_u64(w, count);
}
static void kv_array_str(gguf_writer *w, const char *k, const char *const *v, size_t n) {
    kv_array_header(w, k, PB_GGUF_STRING, n);
    for (size_t i = 0; i < n; i++)
        put_str(w, v[i]);
}

static uint64_t tensor_bytes(const tensor_spec *t) {
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims; d++)
        n *= t->ne[d];
    return n / pb_ggml_block_size(t->type) * pb_ggml_block_bytes(t->type);
}

static void tensor_info(gguf_writer *w, const tensor_spec *t, uint64_t offset) {
    put_str(w, t->name);
    put_u32(w, t->n_dims);
    for (uint32_t d = 0; d < t->n_dims; d++)
        put_u64(w, d < 4 ? t->ne[d] : 1); /* n_dims > 4 only in refusal tests */
    put_u32(w, t->type);
    put_u64(w, offset);
    w->n_tensors++;
}

static void pad_to(gguf_writer *w, uint32_t alignment) {
    while (w->size % alignment)
        put_u8(w, 0);
}

static uint8_t data_byte(uint64_t i) { return (uint8_t)(i * 7 + 3); }

/* Tensor infos (AUTO_OFFSET places each after the previous, aligned),
 * padding, then the data section: enough for every tensor with an offset
 * below 64 KiB, plus `extra_data` bytes. Returns the data section's start. */
static size_t tensors(gguf_writer *w, const tensor_spec *ts, size_t n, uint32_t alignment, int64_t extra_data) {
    uint64_t next = 0, end = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t offset = ts[i].offset;
        if (offset == AUTO_OFFSET)
            offset = (next + alignment - 1) / alignment * alignment;
        tensor_info(w, &ts[i], offset);
        /* Far-away offsets belong to refusal tests: no data for them. */
        if (pb_ggml_type_known(ts[i].type) && ts[i].n_dims <= 4 && offset < (1u << 16)) {
            next = offset + tensor_bytes(&ts[i]);
            if (next > end)
                end = next;
        }
    }
    pad_to(w, alignment);
    size_t start = w->size;
    int64_t total = (int64_t)end + extra_data;
    for (int64_t i = 0; i < total; i++)
        put_u8(w, data_byte((uint64_t)i));
    finish(w);
    return start;
}

/* ---- the reference valid file ----------------------------------------------- */

static const char *const token_strings[] = {"<s>", "hello", "", "\xc4\xa0world"};

static const tensor_spec valid_tensors[] = {
    {"token_embd.weight", 2, {8, 4}, PB_GGML_F32, AUTO_OFFSET},
    {"blk.0.attn_q.weight", 2, {64, 2}, PB_GGML_Q8_0, AUTO_OFFSET},
    {"blk.0.ffn_down.weight", 3, {256, 1, 2}, PB_GGML_Q4_K, AUTO_OFFSET},
    {"output_norm.weight", 1, {8}, PB_GGML_F16, AUTO_OFFSET},
    {"blk.0.attn_k.weight", 4, {32, 2, 1, 3}, PB_GGML_Q4_1, AUTO_OFFSET},
};
#define N_VALID_TENSORS (sizeof valid_tensors / sizeof valid_tensors[0])

/* Every value type once, a string array, numeric arrays, five tensors. */
static gguf_writer make_valid(uint32_t version, uint32_t alignment, size_t *data_start) {
    gguf_writer w = begin(version);
    kv_str(&w, "general.architecture", "llama");
    kv_u32(&w, "llama.block_count", 30);
    if (alignment != 32 || version == 3)
        kv_u32(&w, "general.alignment", alignment);
    key(&w, "t.u8", PB_GGUF_UINT8);
    put_u8(&w, 200);
    key(&w, "t.i8", PB_GGUF_INT8);
    put_u8(&w, (uint8_t)-5);
    key(&w, "t.u16", PB_GGUF_UINT16);
    put_le(&w, 60000, 2);
    key(&w, "t.i16", PB_GGUF_INT16);
    put_le(&w, (uint16_t)-1234, 2);
    key(&w, "t.i32", PB_GGUF_INT32);
    put_u32(&w, (uint32_t)-70000);
    kv_u64(&w, "t.u64", 1ull << 40);
    kv_u64(&w, "t.u64_huge", UINT64_MAX);
    key(&w, "t.i64", PB_GGUF_INT64);
    put_u64(&w, (uint64_t)-5000000000ll);
    kv_f32(&w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    kv_f64(&w, "t.f64", 0.125);
    kv_bool(&w, "t.bool", 1);
    kv_str(&w, "t.empty_string", "");
    kv_array_str(&w, "tokenizer.ggml.tokens", token_strings, 4);
    kv_array_header(&w, "tokenizer.ggml.token_type", PB_GGUF_INT32, 3);
    put_u32(&w, 1);
    put_u32(&w, (uint32_t)-2);
    put_u32(&w, 3);
    kv_array_header(&w, "t.bools", PB_GGUF_BOOL, 2);
    put_u8(&w, 0);
    put_u8(&w, 1);
    kv_array_header(&w, "t.empty_array", PB_GGUF_FLOAT32, 0);
    size_t start = tensors(&w, valid_tensors, N_VALID_TENSORS, alignment, 0);
    if (data_start)
        *data_start = start;
    return w;
}

/* ---- assertions ------------------------------------------------------------- */

/* Opens an exact-size copy (so ASan sees any over-read) and expects
 * PB_ERR_FORMAT with `expected` in the message. Frees the writer. */
/* The table case being checked (named in the failure message), or "". */
static const char *refused_case = "";

static void expect_refused_status(gguf_writer *w, pb_status expected_status, const char *expected) {
    uint8_t *copy = malloc(w->size ? w->size : 1);
    assert_non_null(copy);
    if (w->size)
        memcpy(copy, w->data, w->size);
    pb_gguf *g = (pb_gguf *)0x1;
    pb_status status = pb_gguf_open_buffer(&g, copy, w->size);
    if (status != expected_status || strstr(pb_last_error(), expected) == NULL) {
        fprintf(stderr, "%s%sexpected %s with '%s'; got %s: %s\n", refused_case, *refused_case ? ": " : "",
                pb_status_name(expected_status), expected, pb_status_name(status), pb_last_error());
    }
    assert_int_equal(status, expected_status);
    assert_null(g);
    assert_non_null(strstr(pb_last_error(), expected));
    free(copy);
    free(w->data);
    w->data = NULL;
}

static void expect_refused(gguf_writer *w, const char *expected) { expect_refused_status(w, PB_ERR_FORMAT, expected); }

static void truncate_to(gguf_writer *w, size_t size) {
    assert_true(size <= w->size);
    w->size = size;
}

/* A truncated-file case: the file build makes, cut to `cut` bytes (or, when
 * cut is negative, with -cut bytes dropped off its end), is refused with
 * expected in the message. */
typedef struct truncation_case {
    const char *name;
    gguf_writer (*build)(void);
    long cut;
    const char *expected;
} truncation_case;

static void check_truncations(const truncation_case *cases, size_t n) {
    for (size_t i = 0; i < n; i++) {
        gguf_writer w = cases[i].build();
        truncate_to(&w, cases[i].cut >= 0 ? (size_t)cases[i].cut : w.size - (size_t)-cases[i].cut);
        refused_case = cases[i].name;
        expect_refused(&w, cases[i].expected);
        refused_case = "";
    }
}
#define CHECK_TRUNCATIONS(cases) check_truncations(cases, sizeof cases / sizeof cases[0])

/* ---- valid files ------------------------------------------------------------- */

static void check_valid(uint32_t version, uint32_t alignment) {
    size_t data_start = 0;
    gguf_writer w = make_valid(version, alignment, &data_start);
    assert_int_equal(data_start % alignment, 0);
    pb_gguf *g = NULL;
    pb_status status = pb_gguf_open_buffer(&g, w.data, w.size);
    if (status != PB_OK)
        fprintf(stderr, "%s\n", pb_last_error());
    assert_int_equal(status, PB_OK);
    assert_int_equal(pb_gguf_version(g), version);
    assert_int_equal(pb_gguf_alignment(g), alignment);
    assert_int_equal(pb_gguf_key_count(g), 18 + (alignment != 32 || version == 3));

    int64_t i64;
    double f;
    int b;
    const char *s;
    size_t len;
    assert_int_equal(pb_gguf_get_int(g, "llama.block_count", &i64), PB_OK);
    assert_int_equal(i64, 30);
    assert_int_equal(pb_gguf_get_int(g, "t.u8", &i64), PB_OK);
    assert_int_equal(i64, 200);
    assert_int_equal(pb_gguf_get_int(g, "t.i8", &i64), PB_OK);
    assert_int_equal(i64, -5);
    assert_int_equal(pb_gguf_get_int(g, "t.u16", &i64), PB_OK);
    assert_int_equal(i64, 60000);
    assert_int_equal(pb_gguf_get_int(g, "t.i16", &i64), PB_OK);
    assert_int_equal(i64, -1234);
    assert_int_equal(pb_gguf_get_int(g, "t.i32", &i64), PB_OK);
    assert_int_equal(i64, -70000);
    assert_int_equal(pb_gguf_get_int(g, "t.u64", &i64), PB_OK);
    assert_true(i64 == (int64_t)1 << 40);
    assert_int_equal(pb_gguf_get_int(g, "t.i64", &i64), PB_OK);
    assert_true(i64 == -5000000000ll);
    assert_int_equal(pb_gguf_get_int(g, "t.u64_huge", &i64), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "'t.u64_huge' value 18446744073709551615 does not fit in int64"));
    assert_int_equal(pb_gguf_get_float(g, "t.u64_huge", &f), PB_OK);
    assert_true(f == 18446744073709551615.0);

    assert_int_equal(pb_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &f), PB_OK);
    assert_true(f == (double)1e-5f);
    assert_int_equal(pb_gguf_get_float(g, "t.f64", &f), PB_OK);
    assert_true(f == 0.125);
    assert_int_equal(pb_gguf_get_float(g, "t.i16", &f), PB_OK);
    assert_true(f == -1234.0);
    assert_int_equal(pb_gguf_get_bool(g, "t.bool", &b), PB_OK);
    assert_int_equal(b, 1);
    assert_int_equal(pb_gguf_get_string(g, "general.architecture", &s, &len), PB_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "llama", 5);
    assert_int_equal(pb_gguf_get_string(g, "t.empty_string", &s, &len), PB_OK);
    assert_int_equal(len, 0);

    pb_gguf_value_type elem;
    uint64_t count;
    assert_int_equal(pb_gguf_get_array_info(g, "tokenizer.ggml.tokens", &elem, &count), PB_OK);
    assert_int_equal(elem, PB_GGUF_STRING);
    assert_int_equal(count, 4);
    for (uint64_t i = 4; i-- > 0;) {
        assert_int_equal(pb_gguf_get_array_string(g, "tokenizer.ggml.tokens", i, &s, &len), PB_OK);
        assert_int_equal(len, strlen(token_strings[i]));
        assert_memory_equal(s, token_strings[i], len);
    }
    assert_int_equal(pb_gguf_get_array_string(g, "tokenizer.ggml.tokens", 4, &s, &len), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "index 4 is out of range (array has 4 strings)"));
    assert_int_equal(pb_gguf_get_array_data(g, "tokenizer.ggml.tokens", (const void **)&s), PB_ERR_FORMAT);
    assert_non_null(
        strstr(pb_last_error(), "'tokenizer.ggml.tokens' has type array of string, expected numeric array"));

    const void *raw;
    assert_int_equal(pb_gguf_get_array_info(g, "tokenizer.ggml.token_type", &elem, &count), PB_OK);
    assert_int_equal(elem, PB_GGUF_INT32);
    assert_int_equal(count, 3);
    assert_int_equal(pb_gguf_get_array_data(g, "tokenizer.ggml.token_type", &raw), PB_OK);
    int32_t types[3];
    memcpy(types, raw, sizeof types);
    assert_int_equal(types[0], 1);
    assert_int_equal(types[1], -2);
    assert_int_equal(types[2], 3);
    assert_int_equal(pb_gguf_get_array_info(g, "t.empty_array", &elem, &count), PB_OK);
    assert_int_equal(count, 0);
    assert_int_equal(pb_gguf_get_array_data(g, "t.bools", &raw), PB_OK);
    assert_int_equal(((const uint8_t *)raw)[1], 1);

    /* Missing keys and wrong types name the key and both types. */
    assert_false(pb_gguf_has_key(g, "llama.nope"));
    assert_true(pb_gguf_has_key(g, "t.bool"));
    assert_int_equal(pb_gguf_get_int(g, "llama.nope", &i64), PB_ERR_FORMAT);
    assert_string_equal(pb_last_error(), "gguf: missing key 'llama.nope'");
    assert_int_equal(pb_gguf_get_int(g, "general.architecture", &i64), PB_ERR_FORMAT);
    assert_string_equal(pb_last_error(), "gguf: key 'general.architecture' has type string, expected an integer");
    assert_int_equal(pb_gguf_get_string(g, "llama.block_count", &s, &len), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "'llama.block_count' has type uint32, expected string"));
    assert_int_equal(pb_gguf_get_bool(g, "t.u8", &b), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "'t.u8' has type uint8, expected bool"));
    assert_int_equal(pb_gguf_get_float(g, "t.bool", &f), PB_ERR_FORMAT);
    assert_int_equal(pb_gguf_get_array_info(g, "t.f64", &elem, &count), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "'t.f64' has type float64, expected array"));
    assert_int_equal(pb_gguf_get_int(g, NULL, &i64), PB_ERR_ARG);
    assert_int_equal(pb_gguf_get_int(g, "t.u8", NULL), PB_ERR_ARG);

    const char *k;
    pb_gguf_value_type kt;
    assert_int_equal(pb_gguf_key_at(g, 0, &k, &len, &kt), PB_OK);
    assert_int_equal(len, strlen("general.architecture"));
    assert_memory_equal(k, "general.architecture", len);
    assert_int_equal(kt, PB_GGUF_STRING);
    assert_int_equal(pb_gguf_key_at(g, pb_gguf_key_count(g), &k, &len, &kt), PB_ERR_ARG);

    /* Tensors: file order, hashed lookup, shapes, and data where the
     * writer put it. */
    assert_int_equal(pb_gguf_tensor_count(g), N_VALID_TENSORS);
    assert_null(pb_gguf_tensor_at(g, -1));
    assert_null(pb_gguf_tensor_at(g, (int64_t)N_VALID_TENSORS));
    assert_null(pb_gguf_find_tensor(g, "missing.weight"));
    assert_null(pb_gguf_find_tensor(g, "token_embd.weigh"));
    uint64_t offset = 0;
    for (size_t i = 0; i < N_VALID_TENSORS; i++) {
        const tensor_spec *spec = &valid_tensors[i];
        const pb_gguf_tensor *t = pb_gguf_tensor_at(g, (int64_t)i);
        assert_non_null(t);
        assert_ptr_equal(pb_gguf_find_tensor(g, spec->name), t);
        assert_string_equal(t->name, spec->name);
        assert_int_equal(t->n_dims, spec->n_dims);
        uint64_t n = 1;
        for (uint32_t d = 0; d < 4; d++) {
            int64_t expected = d < spec->n_dims ? (int64_t)spec->ne[d] : 1;
            assert_int_equal(t->ne[d], expected);
            n *= (uint64_t)expected;
        }
        assert_int_equal(t->type, spec->type);
        assert_int_equal(t->n_elements, n);
        assert_int_equal(t->n_bytes, tensor_bytes(spec));
        offset = (offset + alignment - 1) / alignment * alignment;
        assert_ptr_equal(t->data, w.data + data_start + offset);
        assert_int_equal(((const uint8_t *)t->data)[0], data_byte(offset));
        assert_int_equal(((const uint8_t *)t->data)[t->n_bytes - 1], data_byte(offset + t->n_bytes - 1));
        offset += t->n_bytes;
    }
    pb_gguf_close(g);
    free(w.data);
}

static void test_valid_v3(void **state) {
    (void)state;
    check_valid(3, 32);
}
static void test_valid_v2(void **state) {
    (void)state;
    check_valid(2, 32);
}
static void test_valid_alignment_64(void **state) {
    (void)state;
    check_valid(3, 64);
}
static void test_valid_alignment_1(void **state) {
    (void)state;
    check_valid(3, 1);
}

static void test_valid_no_tensors_no_padding(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    kv_str(&w, "general.architecture", "llama");
    finish(&w);
    pb_gguf *g = NULL;
    assert_int_equal(pb_gguf_open_buffer(&g, w.data, w.size), PB_OK);
    assert_int_equal(pb_gguf_tensor_count(g), 0);
    assert_null(pb_gguf_find_tensor(g, "x"));
    pb_gguf_close(g);
    free(w.data);

    w = begin(3);
    finish(&w);
    assert_int_equal(pb_gguf_open_buffer(&g, w.data, w.size), PB_OK);
    assert_int_equal(pb_gguf_key_count(g), 0);
    assert_false(pb_gguf_has_key(g, "general.alignment"));
    pb_gguf_close(g);
    free(w.data);
}

static void test_arguments(void **state) {
    (void)state;
    pb_gguf *g = NULL;
    pb_gguf_close(NULL);
    assert_int_equal(pb_gguf_open_buffer(NULL, "GGUF", 4), PB_ERR_ARG);
    assert_int_equal(pb_gguf_open_buffer(&g, NULL, 10), PB_ERR_ARG);
    assert_int_equal(pb_gguf_open(&g, NULL), PB_ERR_ARG);
    assert_int_equal(pb_gguf_open(NULL, "x"), PB_ERR_ARG);
    assert_int_equal(pb_gguf_open_buffer(&g, NULL, 0), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "header magic"));
    assert_null(g);
    assert_int_equal(pb_gguf_tensor_count(NULL), 0);
    assert_null(pb_gguf_tensor_at(NULL, 0));
    assert_null(pb_gguf_find_tensor(NULL, "x"));
    assert_false(pb_gguf_has_key(NULL, "x"));
}

static void test_open_file(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    char path[512];
    assert_true(tu_write_temp(path, sizeof path, w.data, w.size));
    pb_gguf *g = NULL;
    assert_int_equal(pb_gguf_open(&g, path), PB_OK);
    assert_int_equal(pb_gguf_tensor_count(g), N_VALID_TENSORS);
    const pb_gguf_tensor *t = pb_gguf_find_tensor(g, "blk.0.attn_q.weight");
    assert_non_null(t);
    assert_int_equal((uintptr_t)t->data % 32, 0); /* the mapping is page-aligned */
    pb_gguf_close(g);

    /* A corrupt file's message names the path. */
    patch_u32(&w, 4, 1);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(w.data, 1, w.size, f), w.size);
    fclose(f);
    assert_int_equal(pb_gguf_open(&g, path), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), path));
    assert_non_null(strstr(pb_last_error(), "version 1 is not supported"));
    assert_null(g);

    /* Empty file. */
    f = fopen(path, "wb");
    assert_non_null(f);
    fclose(f);
    assert_int_equal(pb_gguf_open(&g, path), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "truncated file: header magic"));
    remove(path);
    free(w.data);
}

static void test_open_missing_file(void **state) {
    (void)state;
    pb_gguf *g = (pb_gguf *)0x1;
    assert_int_equal(pb_gguf_open(&g, "/nonexistent/dir/model.gguf"), PB_ERR_IO);
    assert_null(g);
    assert_non_null(strstr(pb_last_error(), "/nonexistent/dir/model.gguf"));
    assert_non_null(strstr(pb_last_error(), "No such file or directory"));
    assert_int_equal(pb_gguf_open(&g, "/"), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), "not a regular file"));
}

/* ---- corrupted files: header ---------------------------------------------------- */

static gguf_writer build_valid(void) { return make_valid(3, 32, NULL); }

static void test_truncated_header(void **state) {
    (void)state;
    static const truncation_case cases[] = {
        {"magic", build_valid, 2, "truncated file: header magic"},
        {"version", build_valid, 6, "truncated file: header version"},
        {"counts", build_valid, 20, "truncated file: header tensor and kv counts"},
    };
    CHECK_TRUNCATIONS(cases);
}

static void test_bad_magic(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    memcpy(w.data, "GGML", 4);
    expect_refused(&w, "bad magic 'GGML'");
    w = make_valid(3, 32, NULL);
    memcpy(w.data, "\x00\x01GU", 4);
    expect_refused(&w, "bad magic '\\x00\\x01GU'");
}

static void test_version_1(void **state) {
    (void)state;
    gguf_writer w = make_valid(1, 32, NULL);
    expect_refused(&w, "version 1 is not supported");
}

static void test_version_99(void **state) {
    (void)state;
    gguf_writer w = make_valid(99, 32, NULL);
    expect_refused(&w, "version 99 is not supported");
}

static void test_big_endian(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    patch_u32(&w, 4, 0x03000000u);
    expect_refused_status(&w, PB_ERR_UNSUPPORTED, "big-endian");
}

static void test_huge_tensor_count(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    patch_u64(&w, 8, 1ull << 60);
    expect_refused(&w, "tensor count 1152921504606846976 is impossible");
    w = make_valid(3, 32, NULL);
    patch_u64(&w, 8, UINT64_MAX);
    expect_refused(&w, "tensor count 18446744073709551615");
}

static void test_huge_kv_count(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    patch_u64(&w, 16, 1ull << 60);
    expect_refused(&w, "kv count 1152921504606846976 is impossible");
    w = make_valid(3, 32, NULL);
    patch_u64(&w, 16, UINT64_MAX);
    expect_refused(&w, "kv count 18446744073709551615");
}

/* ---- corrupted files: key/value section --------------------------------------------- */

/* One kv with a long key so that the kv-count check passes while the cut
 * falls inside the part under test. */
#define LONG_KEY "general.a_rather_long_key_name_for_truncation"

/* Version-3 files with one or two kvs for the truncation cases. */
static gguf_writer build_long_u32(void) {
    gguf_writer w = begin(3);
    kv_u32(&w, LONG_KEY, 7);
    finish(&w);
    return w;
}
static gguf_writer build_two_long_u32(void) {
    gguf_writer w = begin(3);
    kv_u32(&w, LONG_KEY, 7);
    kv_u32(&w, LONG_KEY ".2", 7);
    finish(&w);
    return w;
}
static gguf_writer build_long_u64(void) {
    gguf_writer w = begin(3);
    kv_u64(&w, LONG_KEY, 7);
    finish(&w);
    return w;
}
static gguf_writer build_name_str(void) {
    gguf_writer w = begin(3);
    kv_str(&w, "general.name", "SmolLM2 135M Instruct, a small model");
    finish(&w);
    return w;
}
static gguf_writer build_long_str(void) {
    gguf_writer w = begin(3);
    kv_str(&w, LONG_KEY, "x");
    finish(&w);
    return w;
}
static gguf_writer build_u32_array(void) {
    gguf_writer w = begin(3);
    kv_array_header(&w, LONG_KEY, PB_GGUF_UINT32, 10);
    for (uint32_t i = 0; i < 10; i++)
        put_u32(&w, i);
    finish(&w);
    return w;
}
static gguf_writer build_str_array(void) {
    gguf_writer w = begin(3);
    kv_array_str(&w, LONG_KEY, token_strings, 4);
    finish(&w);
    return w;
}

static void test_truncated_kv_key(void **state) {
    (void)state;
    static const truncation_case cases[] = {
        {"key bytes", build_long_u32, 24 + 8 + 20,
         "truncated file: kv 0 key (length 45) needs 45 bytes at offset 32 but only 20 are left"},
        /* Cut 4 bytes into the second kv's 8-byte key length. */
        {"second key length", build_two_long_u32, -((8 + 47 + 8) - 4), "truncated file: kv 1 key length"},
    };
    CHECK_TRUNCATIONS(cases);
}

static void test_truncated_kv_type(void **state) {
    (void)state;
    static const truncation_case cases[] = {
        {"value type", build_long_u32, -6, "truncated file: kv 0 ('" LONG_KEY "') value type"},
    };
    CHECK_TRUNCATIONS(cases);
}

static void test_truncated_kv_value(void **state) {
    (void)state;
    static const truncation_case cases[] = {
        {"uint64 value", build_long_u64, -3, "truncated file: kv 0 ('" LONG_KEY "') uint64 value needs 8 bytes"},
    };
    CHECK_TRUNCATIONS(cases);
}

static void test_truncated_string(void **state) {
    (void)state;
    static const truncation_case cases[] = {
        {"string bytes", build_name_str, -10, "truncated file: kv 0 ('general.name') string value needs 36 bytes"},
        {"string length", build_long_str, -(1 + 4), "truncated file: kv 0 ('" LONG_KEY "') string length"},
    };
    CHECK_TRUNCATIONS(cases);
}

static void test_truncated_array(void **state) {
    (void)state;
    static const truncation_case cases[] = {
        {"uint32 elements", build_u32_array, -2,
         "kv 0 ('" LONG_KEY "'): array length 10 of uint32 needs more than the 38 bytes left"},
        {"string element", build_str_array, -3,
         "truncated file: kv 0 ('" LONG_KEY "') array element 3 string value needs 7 bytes"},
        {"array header", build_str_array, 24 + 8 + 45 + 4 + 6, "truncated file: kv 0 ('" LONG_KEY "') array header"},
    };
    CHECK_TRUNCATIONS(cases);
}

static void test_huge_string_length(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    /* The first kv is general.architecture: header, key length, key, type. */
    patch_u64(&w, 24 + 8 + 20 + 4, 1ull << 60);
    expect_refused(&w, "kv 0 ('general.architecture') string value needs 1152921504606846976 bytes");
}

static void test_huge_array_length(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    kv_array_header(&w, "t.array", PB_GGUF_INT64, 1ull << 60);
    put_u64(&w, 1);
    put_u64(&w, 2);
    finish(&w);
    expect_refused(&w, "array length 1152921504606846976 of int64 needs more than the 16 bytes left");
    w = begin(3);
    kv_array_header(&w, "t.strings", PB_GGUF_STRING, UINT64_MAX);
    put_str(&w, "a");
    finish(&w);
    expect_refused(&w, "array length 18446744073709551615 of strings");
}

static void test_nested_array(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    kv_array_header(&w, "t.nested", PB_GGUF_ARRAY, 1);
    put_u32(&w, PB_GGUF_UINT8);
    put_u64(&w, 1);
    put_u8(&w, 1);
    finish(&w);
    expect_refused(&w, "kv 0 ('t.nested'): nested array");
}

static void test_unknown_value_type(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    key(&w, "t.weird", 13);
    put_u64(&w, 0);
    put_u64(&w, 0);
    finish(&w);
    expect_refused(&w, "kv 0 ('t.weird'): unknown value type 13");
    w = begin(3);
    kv_array_header(&w, "t.weird_array", 99, 1);
    put_u64(&w, 0);
    finish(&w);
    expect_refused(&w, "kv 0 ('t.weird_array'): unknown array element type 99");
}

static void test_duplicate_key(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    kv_u32(&w, "llama.block_count", 30);
    kv_str(&w, "general.name", "x");
    kv_u32(&w, "llama.block_count", 31);
    finish(&w);
    expect_refused(&w, "duplicate key 'llama.block_count' (kv 0 and kv 2)");
}

static void test_empty_key(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    kv_str(&w, "general.name", "x");
    kv_u32(&w, "", 1);
    kv_u32(&w, "padding.so.the.count.check.passes", 1);
    finish(&w);
    expect_refused(&w, "kv 1: empty key");
}

static void test_key_with_nul(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    put_u64(&w, 5);
    put(&w, "ab\0cd", 5);
    put_u32(&w, PB_GGUF_UINT32);
    put_u32(&w, 1);
    w.n_kv = 1;
    finish(&w);
    expect_refused(&w, "kv 0: key 'ab\\x00cd' contains a NUL byte");
}

static void test_bool_not_0_or_1(void **state) {
    (void)state;
    gguf_writer w = begin(3);
    kv_bool(&w, "t.flag", 2);
    finish(&w);
    expect_refused(&w, "kv 0 ('t.flag'): bool value 2 is neither 0 nor 1");
    w = begin(3);
    kv_array_header(&w, "t.flags", PB_GGUF_BOOL, 3);
    put_u8(&w, 1);
    put_u8(&w, 0);
    put_u8(&w, 255);
    finish(&w);
    expect_refused(&w, "kv 0 ('t.flags'): bool array element 2 is 255");
}

static void test_alignment_wrong_type(void **state) {
    (void)state;
    static const tensor_spec t = {"a", 1, {8}, PB_GGML_F32, AUTO_OFFSET};
    gguf_writer w = begin(3);
    kv_u64(&w, "general.alignment", 32);
    tensors(&w, &t, 1, 32, 0);
    expect_refused(&w, "key 'general.alignment' has type uint64, expected uint32");
    w = begin(3);
    kv_str(&w, "general.alignment", "32");
    tensors(&w, &t, 1, 32, 0);
    expect_refused(&w, "key 'general.alignment' has type string, expected uint32");
}

static void test_alignment_not_power_of_two(void **state) {
    (void)state;
    static const tensor_spec t = {"a", 1, {8}, PB_GGML_F32, 0};
    gguf_writer w = begin(3);
    kv_u32(&w, "general.alignment", 48);
    tensors(&w, &t, 1, 48, 0);
    expect_refused(&w, "general.alignment 48 is not a power of two");
}

static void test_alignment_zero(void **state) {
    (void)state;
    static const tensor_spec t = {"a", 1, {8}, PB_GGML_F32, 0};
    gguf_writer w = begin(3);
    kv_u32(&w, "general.alignment", 0);
    tensors(&w, &t, 1, 32, 0);
    expect_refused(&w, "general.alignment 0 is not a power of two");
}

/* ---- corrupted files: tensor infos ------------------------------------------------ */

/* Tensor-info truncations: a valid file cut at `cut` bytes into the info
 * of its second tensor. */
static void expect_info_cut(size_t cut, const char *expected) {
    static const tensor_spec ts[] = {
        {"first.tensor.with.a.long.name.weight", 1, {64}, PB_GGML_F32, AUTO_OFFSET},
        {"second.tensor.with.a.long.name.weight", 2, {64, 2}, PB_GGML_F32, AUTO_OFFSET},
    };
    gguf_writer w = begin(3);
    kv_str(&w, "general.name", "a file long enough for the count checks to pass");
    tensor_info(&w, &ts[0], 0);
    size_t second = w.size;
    tensor_info(&w, &ts[1], 256);
    finish(&w);
    truncate_to(&w, second + cut);
    expect_refused(&w, expected);
}

static void test_truncated_tensor_info(void **state) {
    (void)state;
    expect_info_cut(4, "truncated file: tensor 1 name length");
    expect_info_cut(8 + 10, "truncated file: tensor 1 name (length 37)");
    expect_info_cut(8 + 37 + 2, "truncated file: tensor 'second.tensor.with.a.long.name.weight' n_dims");
    expect_info_cut(8 + 37 + 4 + 12, "truncated file: tensor 'second.tensor.with.a.long.name.weight' dims needs 16");
    expect_info_cut(8 + 37 + 4 + 16 + 3, "truncated file: tensor 'second.tensor.with.a.long.name.weight' type");
    expect_info_cut(8 + 37 + 4 + 16 + 4 + 7,
                    "truncated file: tensor 'second.tensor.with.a.long.name.weight' data offset");
}

static void test_truncated_padding(void **state) {
    (void)state;
    size_t data_start = 0;
    gguf_writer w = make_valid(3, 32, &data_start);
    /* Cut inside the padding (the infos end somewhere before data_start). */
    size_t infos_end = data_start;
    while (infos_end > 0 && w.data[infos_end - 1] == 0)
        infos_end--;
    assert_true(infos_end < data_start);
    truncate_to(&w, data_start - 1);
    expect_refused(&w, "truncated file: data section starts at offset");
}

static void test_truncated_data(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    truncate_to(&w, w.size - 1);
    expect_refused(&w, "tensor 'blk.0.attn_k.weight': data at offset");
    w = make_valid(3, 32, NULL);
    truncate_to(&w, w.size - 1);
    expect_refused(&w, "extends past the end of the file");
}

static void test_duplicate_tensor_name(void **state) {
    (void)state;
    static const tensor_spec ts[] = {
        {"blk.0.attn_q.weight", 1, {32}, PB_GGML_F32, AUTO_OFFSET},
        {"blk.0.attn_k.weight", 1, {32}, PB_GGML_F32, AUTO_OFFSET},
        {"blk.0.attn_q.weight", 1, {32}, PB_GGML_F32, AUTO_OFFSET},
    };
    gguf_writer w = begin(3);
    tensors(&w, ts, 3, 32, 0);
    expect_refused(&w, "duplicate tensor name 'blk.0.attn_q.weight' (tensors 0 and 2)");
}

static void test_empty_tensor_name(void **state) {
    (void)state;
    static const tensor_spec ts[] = {
        {"a", 1, {32}, PB_GGML_F32, AUTO_OFFSET},
        {"", 1, {32}, PB_GGML_F32, AUTO_OFFSET},
    };
    gguf_writer w = begin(3);
    tensors(&w, ts, 2, 32, 0);
    expect_refused(&w, "tensor 1: empty tensor name");
}

static void expect_tensor_refused(tensor_spec t, const char *expected) {
    static const tensor_spec first = {"ok.weight", 1, {32}, PB_GGML_F32, AUTO_OFFSET};
    tensor_spec ts[2] = {first, t};
    gguf_writer w = begin(3);
    kv_str(&w, "general.architecture", "llama");
    tensors(&w, ts, 2, 32, 256);
    expect_refused(&w, expected);
}

static void test_n_dims_0(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 0, {0}, PB_GGML_F32, 128},
                          "tensor 'bad.weight': n_dims 0 is outside 1..4");
}

static void test_n_dims_5(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 5, {1, 1, 1, 1}, PB_GGML_F32, 128},
                          "tensor 'bad.weight': n_dims 5 is outside 1..4");
}

static void test_dim_0(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 2, {8, 0}, PB_GGML_F32, 128},
                          "tensor 'bad.weight': dim 1 (ne[1]) is 0");
}

static void test_dims_overflow(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 3, {1ull << 32, 1ull << 20, 1ull << 20}, PB_GGML_F32, 128},
                          "tensor 'bad.weight': element count overflows at dim 2");
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {1ull << 63}, PB_GGML_F32, 128},
                          "tensor 'bad.weight': element count overflows at dim 0 (ne[0] = 9223372036854775808)");
}

static void test_byte_size_overflow(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 2, {1ull << 31, 1ull << 31}, PB_GGML_F64, 128},
                          "tensor 'bad.weight': byte size of 4611686018427387904 F64 elements overflows");
}

static void test_unknown_tensor_type(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {32}, 4, 128}, "tensor 'bad.weight': unknown ggml type 4");
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {32}, 1000, 128},
                          "tensor 'bad.weight': unknown ggml type 1000");
}

static void test_row_not_multiple_of_block(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 2, {33, 32}, PB_GGML_Q4_0, 128},
                          "tensor 'bad.weight': row length ne[0] = 33 is not a multiple of the Q4_0 block size 32");
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {128}, PB_GGML_Q6_K, 128},
                          "not a multiple of the Q6_K block size 256");
}

static void test_misaligned_offset(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {8}, PB_GGML_F32, 144},
                          "tensor 'bad.weight': data offset 144 is not aligned to 32");
    static const tensor_spec t = {"a.weight", 1, {8}, PB_GGML_F32, 32};
    gguf_writer w = begin(3);
    kv_u32(&w, "general.alignment", 64);
    tensors(&w, &t, 1, 64, 0);
    expect_refused(&w, "tensor 'a.weight': data offset 32 is not aligned to 64");
}

static void test_offset_past_end(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {8}, PB_GGML_F32, 1u << 20},
                          "tensor 'bad.weight': data at offset 1048576 + 32 bytes extends past the end");
    /* start + size wraps around 2^64. */
    expect_tensor_refused((tensor_spec){"bad.weight", 1, {64}, PB_GGML_F32, UINT64_MAX - 31},
                          "tensor 'bad.weight': data at offset 18446744073709551584 + 256 bytes extends past the end");
}

static void test_data_overlap(void **state) {
    (void)state;
    static const tensor_spec ts[] = {
        {"a.weight", 1, {64}, PB_GGML_F32, 0},
        {"b.weight", 1, {64}, PB_GGML_F32, 512},
        {"c.weight", 1, {64}, PB_GGML_F32, 224},
    };
    gguf_writer w = begin(3);
    tensors(&w, ts, 3, 32, 0);
    expect_refused(&w, "tensor 'c.weight' (data offset 224) overlaps tensor 'a.weight' (data offset 0, 256 bytes)");
    static const tensor_spec same[] = {
        {"a.weight", 1, {8}, PB_GGML_F32, 64},
        {"b.weight", 1, {8}, PB_GGML_F32, 64},
    };
    w = begin(3);
    tensors(&w, same, 2, 32, 0);
    expect_refused(&w, "tensor 'b.weight' (data offset 64) overlaps tensor 'a.weight'");
}

/* Tensor data laid out other than a GGUF writer lays it out (regions packed
 * in offset order, each at the previous end rounded up to the alignment,
 * nothing after the last but its padding) is refused; the infos' order is
 * free. */
typedef struct layout_case {
    const char *name;
    tensor_spec tensors[3];
    size_t n;
    int64_t extra_data;   /* bytes after the tensors' data */
    const char *expected; /* NULL: the file opens */
} layout_case;

static const layout_case layout_cases[] = {
    {"a 64-byte gap between two regions",
     {{"a.weight", 1, {64}, PB_GGML_F32, 0}, {"b.weight", 1, {8}, PB_GGML_F32, 256 + 64}},
     2,
     0,
     "tensor 'b.weight' (data offset 320) leaves a 64-byte gap after tensor 'a.weight' (which ends at 256; padded "
     "to alignment 32, the next tensor starts at 256): tensor data must be packed"},
    {"a gap wider than the padding after an unaligned end",
     {{"a.weight", 1, {5}, PB_GGML_F32, 0}, {"b.weight", 1, {8}, PB_GGML_F32, 64}},
     2,
     0,
     "tensor 'b.weight' (data offset 64) leaves a 32-byte gap after tensor 'a.weight' (which ends at 20"},
    {"the first region not at offset 0",
     {{"a.weight", 1, {8}, PB_GGML_F32, 32}},
     1,
     0,
     "tensor 'a.weight': the first tensor data starts at data offset 32, not 0"},
    {"bytes after the last region",
     {{"a.weight", 1, {8}, PB_GGML_F32, 0}, {"b.weight", 1, {8}, PB_GGML_F32, 32}},
     2,
     32,
     "32 bytes after the last tensor data (tensor 'b.weight' ends at data offset 64; padded to alignment 32, the "
     "data section would end at 64) belong to no tensor"},
    {"padding after the last region, then more",
     {{"a.weight", 1, {5}, PB_GGML_F32, 0}},
     1,
     12 + 1,
     "13 bytes after the last tensor data (tensor 'a.weight' ends at data offset 20; padded to alignment 32"},
    {"regions overlapping",
     {{"a.weight", 1, {64}, PB_GGML_F32, 0}, {"b.weight", 1, {64}, PB_GGML_F32, 224}},
     2,
     0,
     "tensor 'b.weight' (data offset 224) overlaps tensor 'a.weight' (data offset 0, 256 bytes)"},
    {"infos out of offset order, packed: valid",
     {{"b.weight", 1, {8}, PB_GGML_F32, 32}, {"a.weight", 1, {5}, PB_GGML_F32, 0}},
     2,
     0,
     NULL},
    {"the last region's padding present: valid", {{"a.weight", 1, {5}, PB_GGML_F32, 0}}, 1, 12, NULL},
};

static void test_data_layout(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof layout_cases / sizeof layout_cases[0]; i++) {
        const layout_case *c = &layout_cases[i];
        gguf_writer w = begin(3);
        tensors(&w, c->tensors, c->n, 32, c->extra_data);
        refused_case = c->name;
        if (c->expected) {
            expect_refused(&w, c->expected);
        } else {
            pb_gguf *g = NULL;
            pb_status status = pb_gguf_open_buffer(&g, w.data, w.size);
            if (status != PB_OK)
                fprintf(stderr, "%s: %s\n", c->name, pb_last_error());
            assert_int_equal(status, PB_OK);
            assert_int_equal(pb_gguf_tensor_count(g), (int64_t)c->n);
            pb_gguf_close(g);
            free(w.data);
        }
        refused_case = "";
    }
}

static void test_tensor_name_escaped(void **state) {
    (void)state;
    expect_tensor_refused((tensor_spec){"bad\n\x01name", 0, {0}, PB_GGML_F32, 128},
                          "tensor 'bad\\x0a\\x01name': n_dims 0");
}

/* ---- robustness ------------------------------------------------------------------ */

/* Every proper prefix of a valid file must be refused cleanly. */
static void test_every_prefix_refused(void **state) {
    (void)state;
    for (uint32_t version = 2; version <= 3; version++) {
        gguf_writer w = make_valid(version, 32, NULL);
        for (size_t n = 0; n < w.size; n++) {
            uint8_t *copy = malloc(n ? n : 1);
            assert_non_null(copy);
            memcpy(copy, w.data, n);
            pb_gguf *g = (pb_gguf *)0x1;
            pb_status status = pb_gguf_open_buffer(&g, copy, n);
            if (status != PB_ERR_FORMAT)
                fprintf(stderr, "prefix %zu of %zu: %s %s\n", n, w.size, pb_status_name(status), pb_last_error());
            assert_int_equal(status, PB_ERR_FORMAT);
            assert_null(g);
            assert_true(strlen(pb_last_error()) > 0);
            free(copy);
        }
        free(w.data);
    }
}

/* Random byte overwrites: whatever the outcome, no crash, and a file that
 * opens has every tensor inside the buffer. */
static void test_random_corruption(void **state) {
    (void)state;
    gguf_writer w = make_valid(3, 32, NULL);
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    int opened = 0;
    for (int iter = 0; iter < 4000; iter++) {
        uint8_t *copy = malloc(w.size);
        assert_non_null(copy);
        memcpy(copy, w.data, w.size);
        int flips = 1 + iter % 4;
        for (int k = 0; k < flips; k++) {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            size_t at = (size_t)(rng % w.size);
            copy[at] = (uint8_t)(rng >> 32);
        }
        pb_gguf *g = NULL;
        pb_status status = pb_gguf_open_buffer(&g, copy, w.size);
        if (status == PB_OK) {
            opened++;
            for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++) {
                const pb_gguf_tensor *t = pb_gguf_tensor_at(g, i);
                const uint8_t *p = t->data;
                assert_true(p >= copy && p + t->n_bytes <= copy + w.size);
            }
            pb_gguf_close(g);
        } else {
            assert_null(g);
            assert_true(status == PB_ERR_FORMAT || status == PB_ERR_UNSUPPORTED);
        }
        free(copy);
    }
    assert_true(opened > 0); /* flips in data bytes leave the file valid */
    free(w.data);
}

/* ---- the real model ------------------------------------------------------------------ */

static void test_real_model(void **state) {
    (void)state;
    char path[1024];
    if (!tu_model_path(path, sizeof path)) {
        fprintf(stderr, "skipping: real model not found (set PB_MODEL, or put " TU_SMOLLM2_FILE
                        " under $PB_SOURCE_DIR/models)\n");
        skip();
    }
    pb_gguf *g = NULL;
    pb_status status = pb_gguf_open(&g, path);
    if (status != PB_OK)
        fprintf(stderr, "%s\n", pb_last_error());
    assert_int_equal(status, PB_OK);
    assert_int_equal(pb_gguf_version(g), 3);
    int64_t n;
    assert_int_equal(pb_gguf_get_int(g, "llama.block_count", &n), PB_OK);
    assert_int_equal(n, 30);
    assert_int_equal(pb_gguf_tensor_count(g), 272);
    const char *s;
    size_t len;
    assert_int_equal(pb_gguf_get_string(g, "general.architecture", &s, &len), PB_OK);
    assert_int_equal(len, 5);
    assert_memory_equal(s, "llama", 5);
    pb_gguf_value_type elem;
    uint64_t count;
    assert_int_equal(pb_gguf_get_array_info(g, "tokenizer.ggml.tokens", &elem, &count), PB_OK);
    assert_int_equal(elem, PB_GGUF_STRING);
    assert_int_equal(count, 49152);
    assert_int_equal(pb_gguf_get_array_string(g, "tokenizer.ggml.tokens", count - 1, &s, &len), PB_OK);

    const pb_gguf_tensor *t = pb_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->type, PB_GGML_Q8_0);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], 576);
    assert_int_equal(t->ne[1], 49152);
    assert_int_equal(t->ne[2], 1);
    assert_int_equal(t->n_bytes, 576ull * 49152 / 32 * 34);
    t = pb_gguf_find_tensor(g, "blk.29.ffn_down.weight");
    assert_non_null(t);
    assert_int_equal(t->ne[0], 1536);
    assert_int_equal(t->ne[1], 576);
    pb_gguf_close(g);
}

/* Every tensor of the real model dequantises, and to finite values. */
static void test_real_model_dequantizes(void **state) {
    (void)state;
    char path[1024];
    if (!tu_model_path(path, sizeof path)) {
        fprintf(stderr, "skipping: real model not found (set PB_MODEL, or put " TU_SMOLLM2_FILE
                        " under $PB_SOURCE_DIR/models)\n");
        skip();
    }
    pb_gguf *g = NULL;
    assert_int_equal(pb_gguf_open(&g, path), PB_OK);
    uint64_t largest = 0;
    for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++)
        if (pb_gguf_tensor_at(g, i)->n_elements > largest)
            largest = pb_gguf_tensor_at(g, i)->n_elements;
    float *out = malloc(largest * sizeof *out);
    assert_non_null(out);
    for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++) {
        const pb_gguf_tensor *t = pb_gguf_tensor_at(g, i);
        assert_true(pb_ggml_type_dequantizable(t->type));
        assert_int_equal(pb_dequantize(out, t->data, t->type, t->n_elements), PB_OK);
        for (uint64_t j = 0; j < t->n_elements; j++) {
            if (!isfinite(out[j])) {
                fprintf(stderr, "%s[%llu] = %g\n", t->name, (unsigned long long)j, out[j]);
                fail();
            }
        }
    }
    free(out);
    pb_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_v3),
        cmocka_unit_test(test_valid_v2),
        cmocka_unit_test(test_valid_alignment_64),
        cmocka_unit_test(test_valid_alignment_1),
        cmocka_unit_test(test_valid_no_tensors_no_padding),
        cmocka_unit_test(test_arguments),
        cmocka_unit_test(test_open_file),
        cmocka_unit_test(test_open_missing_file),
        cmocka_unit_test(test_truncated_header),
        cmocka_unit_test(test_bad_magic),
        cmocka_unit_test(test_version_1),
        cmocka_unit_test(test_version_99),
        cmocka_unit_test(test_big_endian),
        cmocka_unit_test(test_huge_tensor_count),
        cmocka_unit_test(test_huge_kv_count),
        cmocka_unit_test(test_truncated_kv_key),
        cmocka_unit_test(test_truncated_kv_type),
        cmocka_unit_test(test_truncated_kv_value),
        cmocka_unit_test(test_truncated_string),
        cmocka_unit_test(test_truncated_array),
        cmocka_unit_test(test_huge_string_length),
        cmocka_unit_test(test_huge_array_length),
        cmocka_unit_test(test_nested_array),
        cmocka_unit_test(test_unknown_value_type),
        cmocka_unit_test(test_duplicate_key),
        cmocka_unit_test(test_empty_key),
        cmocka_unit_test(test_key_with_nul),
        cmocka_unit_test(test_bool_not_0_or_1),
        cmocka_unit_test(test_alignment_wrong_type),
        cmocka_unit_test(test_alignment_not_power_of_two),
        cmocka_unit_test(test_alignment_zero),
        cmocka_unit_test(test_truncated_tensor_info),
        cmocka_unit_test(test_truncated_padding),
        cmocka_unit_test(test_truncated_data),
        cmocka_unit_test(test_duplicate_tensor_name),
        cmocka_unit_test(test_empty_tensor_name),
        cmocka_unit_test(test_n_dims_0),
        cmocka_unit_test(test_n_dims_5),
        cmocka_unit_test(test_dim_0),
        cmocka_unit_test(test_dims_overflow),
        cmocka_unit_test(test_byte_size_overflow),
        cmocka_unit_test(test_unknown_tensor_type),
        cmocka_unit_test(test_row_not_multiple_of_block),
        cmocka_unit_test(test_misaligned_offset),
        cmocka_unit_test(test_offset_past_end),
        cmocka_unit_test(test_data_overlap),
        cmocka_unit_test(test_tensor_name_escaped),
        cmocka_unit_test(test_data_layout),
        cmocka_unit_test(test_every_prefix_refused),
        cmocka_unit_test(test_random_corruption),
        cmocka_unit_test(test_real_model),
        cmocka_unit_test(test_real_model_dequantizes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
