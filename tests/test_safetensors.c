/* Tests for host/formats/safetensors.c: valid single and sharded files read back
 * exactly, and hand-corrupted files refused with a message that names the
 * problem (in the spirit of ggml's test-gguf). Files are written from C into
 * a scratch directory per test. */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/internal.h"
#include "formats/safetensors.h"
#include "test_util.h"

/* Builds a safetensors image in memory: u64 LE header length, header JSON,
 * data. Returns a malloc'ed buffer and its size in *size (NULL on OOM). */
static uint8_t *st_build(const char *header, const void *data, size_t data_size, size_t *size) {
    size_t header_len = strlen(header);
    uint8_t *image = malloc(8 + header_len + data_size + 1);
    if (!image)
        return NULL;
    for (int i = 0; i < 8; i++)
        image[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    memcpy(image + 8, header, header_len);
    if (data_size)
        memcpy(image + 8 + header_len, data, data_size);
    *size = 8 + header_len + data_size;
    return image;
}

/* Writes a safetensors file from a header JSON string and data bytes. */
static int st_write_safetensors(const char *path, const char *header, const void *data, size_t data_size) {
    size_t size;
    uint8_t *image = st_build(header, data, data_size, &size);
    if (!image)
        return -1;
    int rc = tu_write_file(path, image, size);
    free(image);
    return rc;
}

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void put_f32(uint8_t *p, float f) {
    uint32_t bits;
    memcpy(&bits, &f, sizeof bits);
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(bits >> (8 * i));
}

static int contains(const char *haystack, const char *needle) { return strstr(haystack, needle) != NULL; }

/* Opens path, expects `expected` and a message containing `needle`. */
static void expect_refused_at(const char *path, pb_status expected, const char *needle, const char *label) {
    pb_safetensors *st = (pb_safetensors *)(uintptr_t)1; /* must be reset to NULL */
    pb_status status = pb_safetensors_open(&st, path);
    if (status != expected || !contains(pb_last_error(), needle) || st != NULL)
        print_error("case '%s': got %s \"%s\", expected %s containing \"%s\"\n", label, pb_status_name(status),
                    pb_last_error(), pb_status_name(expected), needle);
    assert_int_equal(status, expected);
    assert_non_null(strstr(pb_last_error(), needle));
    assert_null(st);
}

/* ---- valid files ---------------------------------------------------- */

/* Header with every dtype, a scalar at an unaligned offset, an empty tensor
 * and __metadata__; padded with spaces as the official writer does. */
static const char *const mixed_header =
    "{\"__metadata__\": {\"format\": \"pt\"},"
    " \"a\": {\"dtype\": \"F32\", \"shape\": [2, 2], \"data_offsets\": [0, 16]},"
    " \"b\": {\"dtype\": \"F16\", \"shape\": [6], \"data_offsets\": [16, 28]},"
    " \"c\": {\"dtype\": \"BF16\", \"shape\": [3], \"data_offsets\": [28, 34]},"
    " \"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [34, 38]},"
    " \"e\": {\"dtype\": \"F16\", \"shape\": [0, 3], \"data_offsets\": [38, 38]}}     ";
#define MIXED_DATA_SIZE 38

static void fill_mixed_data(uint8_t *data) {
    put_f32(data + 0, 1.0f);
    put_f32(data + 4, -2.5f);
    put_f32(data + 8, 65504.0f);
    put_f32(data + 12, 0.15625f);
    put_u16(data + 16, 0x3c00); /* 1.0 */
    put_u16(data + 18, 0xc100); /* -2.5 */
    put_u16(data + 20, 0x7bff); /* 65504, largest finite fp16 */
    put_u16(data + 22, 0x0001); /* 2^-24, smallest subnormal */
    put_u16(data + 24, 0x7c00); /* +inf */
    put_u16(data + 26, 0x8000); /* -0 */
    put_u16(data + 28, 0x4049); /* bf16 of pi: 3.140625 */
    put_u16(data + 30, 0xc020); /* -2.5 */
    put_u16(data + 32, 0x3f80); /* 1.0 */
    put_f32(data + 34, 7.0f);
}

static void check_mixed(const pb_safetensors *st) {
    assert_int_equal(pb_safetensors_count(st), 5);
    /* data-offset order */
    const char *order[] = {"a", "b", "c", "s", "e"};
    for (int i = 0; i < 5; i++)
        assert_string_equal(pb_safetensors_at(st, i)->name, order[i]);
    assert_null(pb_safetensors_at(st, -1));
    assert_null(pb_safetensors_at(st, 5));
    assert_null(pb_safetensors_find(st, "missing"));
    assert_null(pb_safetensors_find(st, "__metadata__"));

    float out[6];
    const pb_st_tensor *a = pb_safetensors_find(st, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, PB_DTYPE_F32);
    assert_int_equal(a->n_dims, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->shape[1], 2);
    assert_int_equal(a->n_elements, 4);
    assert_int_equal(a->n_bytes, 16);
    pb_st_tensor_to_f32(a, out);
    assert_true(out[0] == 1.0f && out[1] == -2.5f && out[2] == 65504.0f && out[3] == 0.15625f);

    const pb_st_tensor *b = pb_safetensors_find(st, "b");
    assert_non_null(b);
    assert_int_equal(b->dtype, PB_DTYPE_F16);
    assert_int_equal(b->n_bytes, 12);
    pb_st_tensor_to_f32(b, out);
    assert_true(out[0] == 1.0f);
    assert_true(out[1] == -2.5f);
    assert_true(out[2] == 65504.0f);
    assert_true(out[3] == ldexpf(1.0f, -24));
    assert_true(isinf(out[4]) && out[4] > 0);
    assert_true(out[5] == 0.0f && signbit(out[5]));

    const pb_st_tensor *c = pb_safetensors_find(st, "c");
    assert_non_null(c);
    assert_int_equal(c->dtype, PB_DTYPE_BF16);
    pb_st_tensor_to_f32(c, out);
    assert_true(out[0] == 3.140625f);
    assert_true(out[1] == -2.5f);
    assert_true(out[2] == 1.0f);

    const pb_st_tensor *s = pb_safetensors_find(st, "s");
    assert_non_null(s);
    assert_int_equal(s->n_dims, 0);
    assert_int_equal(s->n_elements, 1);
    pb_st_tensor_to_f32(s, out);
    assert_true(out[0] == 7.0f);

    const pb_st_tensor *e = pb_safetensors_find(st, "e");
    assert_non_null(e);
    assert_int_equal(e->n_dims, 2);
    assert_int_equal(e->shape[0], 0);
    assert_int_equal(e->shape[1], 3);
    assert_int_equal(e->n_elements, 0);
    assert_int_equal(e->n_bytes, 0);
    pb_st_tensor_to_f32(e, out); /* writes nothing */
}

/* The mixed-dtype file as bytes (malloc'd; its size in *size). */
static uint8_t *build_mixed(size_t *size) {
    uint8_t data[MIXED_DATA_SIZE];
    fill_mixed_data(data);
    uint8_t *image = st_build(mixed_header, data, sizeof data, size);
    assert_non_null(image);
    return image;
}

/* Writes the mixed-dtype file to path. */
static void write_mixed(const char *path) {
    uint8_t data[MIXED_DATA_SIZE];
    fill_mixed_data(data);
    assert_int_equal(st_write_safetensors(path, mixed_header, data, sizeof data), 0);
}

static void test_read_all_dtypes(void **state) {
    tu_scratch *scratch = *state;
    char path[512];
    write_mixed(tu_path(path, sizeof path, scratch->dir, "mixed.safetensors"));

    pb_safetensors *st = NULL;
    pb_status status = pb_safetensors_open(&st, path);
    if (status != PB_OK)
        print_error("%s\n", pb_last_error());
    assert_int_equal(status, PB_OK);
    check_mixed(st);
    pb_safetensors_close(st);
}

static void test_open_folder_single(void **state) {
    tu_scratch *scratch = *state;
    char path[512];
    write_mixed(tu_path(path, sizeof path, scratch->dir, "model.safetensors"));

    pb_safetensors *st = NULL;
    assert_int_equal(pb_safetensors_open(&st, scratch->dir), PB_OK);
    check_mixed(st);
    pb_safetensors_close(st);
}

static void test_empty_file_of_tensors(void **state) {
    /* A header with no tensors and an empty data section is valid. */
    tu_scratch *scratch = *state;
    char path[512];
    tu_path(path, sizeof path, scratch->dir, "none.safetensors");
    assert_int_equal(st_write_safetensors(path, "{\"__metadata__\": {}}", NULL, 0), 0);
    pb_safetensors *st = NULL;
    assert_int_equal(pb_safetensors_open(&st, path), PB_OK);
    assert_int_equal(pb_safetensors_count(st), 0);
    assert_null(pb_safetensors_find(st, "a"));
    pb_safetensors_close(st);
}

static void test_close_null_and_bad_args(void **state) {
    (void)state;
    pb_safetensors_close(NULL);
    assert_int_equal(pb_safetensors_count(NULL), 0);
    assert_null(pb_safetensors_at(NULL, 0));
    assert_null(pb_safetensors_find(NULL, "a"));
    pb_safetensors *st = NULL;
    assert_int_equal(pb_safetensors_open(NULL, "x"), PB_ERR_ARG);
    assert_int_equal(pb_safetensors_open(&st, NULL), PB_ERR_ARG);
    assert_int_equal(pb_safetensors_open(&st, "/nonexistent/pb/model.safetensors"), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), "/nonexistent/pb/model.safetensors"));
}

/* ---- sharded -------------------------------------------------------- */

#define SHARD1 "model-00001-of-00002.safetensors"
#define SHARD2 "model-00002-of-00002.safetensors"

static const char *const shard1_header = "{\"x\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                                         " \"y\": {\"dtype\": \"BF16\", \"shape\": [1, 2], \"data_offsets\": [8, 12]}}";
static const char *const shard2_header = "{\"z\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]}}";
static const char *const good_index = "{\"metadata\": {\"total_size\": 16}, \"weight_map\": {"
                                      "\"x\": \"" SHARD1 "\", \"y\": \"" SHARD1 "\", \"z\": \"" SHARD2 "\"}}";

/* Writes the two shards (optionally with different headers) and an index. */
static void write_sharded(const char *dir, const char *header1, const char *header2, const char *index) {
    uint8_t data1[12], data2[4];
    put_f32(data1, 0.5f);
    put_f32(data1 + 4, -1.0f);
    put_u16(data1 + 8, 0x4049);
    put_u16(data1 + 10, 0xbf80); /* -1.0 */
    put_u16(data2, 0x3c00);
    put_u16(data2 + 2, 0x4000); /* 2.0 */
    char path[512];
    /* shard1's header either ends at byte 12 (x and y) or at 8 (x alone) */
    size_t size1 = strstr(header1, "[8, 12]") ? 12 : 8;
    assert_int_equal(st_write_safetensors(tu_path(path, sizeof path, dir, SHARD1), header1, data1, size1), 0);
    if (header2)
        assert_int_equal(st_write_safetensors(tu_path(path, sizeof path, dir, SHARD2), header2, data2, 4), 0);
    assert_int_equal(tu_write_text(tu_path(path, sizeof path, dir, "model.safetensors.index.json"), index), 0);
}

static void test_sharded(void **state) {
    tu_scratch *scratch = *state;
    write_sharded(scratch->dir, shard1_header, shard2_header, good_index);

    char index_path[512];
    tu_path(index_path, sizeof index_path, scratch->dir, "model.safetensors.index.json");
    const char *paths[] = {scratch->dir, index_path};
    for (int p = 0; p < 2; p++) {
        pb_safetensors *st = NULL;
        pb_status status = pb_safetensors_open(&st, paths[p]);
        if (status != PB_OK)
            print_error("%s\n", pb_last_error());
        assert_int_equal(status, PB_OK);
        assert_int_equal(pb_safetensors_count(st), 3);
        assert_string_equal(pb_safetensors_at(st, 0)->name, "x");
        assert_string_equal(pb_safetensors_at(st, 1)->name, "y");
        assert_string_equal(pb_safetensors_at(st, 2)->name, "z");
        float out[2];
        pb_st_tensor_to_f32(pb_safetensors_find(st, "x"), out);
        assert_true(out[0] == 0.5f && out[1] == -1.0f);
        const pb_st_tensor *y = pb_safetensors_find(st, "y");
        assert_int_equal(y->n_dims, 2);
        pb_st_tensor_to_f32(y, out);
        assert_true(out[0] == 3.140625f && out[1] == -1.0f);
        pb_st_tensor_to_f32(pb_safetensors_find(st, "z"), out);
        assert_true(out[0] == 1.0f && out[1] == 2.0f);
        pb_safetensors_close(st);
    }
}

static void test_sharded_refused(void **state) {
    tu_scratch *scratch = *state;
    char sub[512];
    static const struct {
        const char *label, *header1, *header2, *index;
        pb_status status;
        const char *needle;
    } cases[] = {
        {"index names a missing shard file", shard1_header, NULL, good_index, PB_ERR_IO,
         "names shard '" SHARD2 "', which cannot be opened"},
        {"index names a tensor not in its shard", shard1_header, shard2_header,
         "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"y\": \"" SHARD1 "\", \"z\": \"" SHARD2 "\", \"w\": \"" SHARD2
         "\"}}",
         PB_ERR_FORMAT, "names tensor 'w' in shard " SHARD2 ", which does not hold it"},
        {"shard holds a tensor the index does not list", shard1_header, shard2_header,
         "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"z\": \"" SHARD2 "\"}}", PB_ERR_FORMAT,
         "holds tensor 'y', which the index does not list"},
        {"index places a tensor in the wrong shard", shard1_header, shard2_header,
         "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"y\": \"" SHARD2 "\", \"z\": \"" SHARD2 "\"}}", PB_ERR_FORMAT,
         "places tensor 'y' in " SHARD2 ", but it is in " SHARD1},
        {"same tensor in two shards", shard1_header,
         "{\"x\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]}}",
         "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"y\": \"" SHARD1 "\", \"z\": \"" SHARD2 "\"}}", PB_ERR_FORMAT,
         "tensor 'x' appears twice"},
        {"index not JSON", shard1_header, shard2_header, "{\"weight_map\": ", PB_ERR_FORMAT, "not valid JSON"},
        {"index without weight_map", shard1_header, shard2_header, "{\"metadata\": {}}", PB_ERR_FORMAT,
         "missing 'weight_map'"},
        {"index with empty weight_map", shard1_header, shard2_header, "{\"weight_map\": {}}", PB_ERR_FORMAT,
         "'weight_map' is empty"},
        {"shard name with a path", shard1_header, shard2_header, "{\"weight_map\": {\"x\": \"../" SHARD1 "\"}}",
         PB_ERR_FORMAT, "not a plain file name"},
        {"duplicate key in index", shard1_header, shard2_header,
         "{\"weight_map\": {\"x\": \"" SHARD1 "\", \"x\": \"" SHARD2 "\"}}", PB_ERR_FORMAT, "duplicate"},
        {"corrupt shard", shard1_header, "{\"z\": {\"dtype\": \"F16\", \"shape\": [3], \"data_offsets\": [0, 4]}}",
         good_index, PB_ERR_FORMAT, SHARD2 ": tensor 'z': shape [3] of F16 needs 6 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char name[32];
        snprintf(name, sizeof name, "case%zu", i);
        tu_path(sub, sizeof sub, scratch->dir, name);
        assert_int_equal(mkdir(sub, 0700), 0);
        write_sharded(sub, cases[i].header1, cases[i].header2, cases[i].index);
        expect_refused_at(sub, cases[i].status, cases[i].needle, cases[i].label);
    }
}

static void test_folder_without_weights(void **state) {
    tu_scratch *scratch = *state;
    expect_refused_at(scratch->dir, PB_ERR_IO, "neither model.safetensors nor model.safetensors.index.json",
                      "empty folder");
}

/* ---- corrupted single files ----------------------------------------- */

static void test_refused_raw(void **state) {
    tu_scratch *scratch = *state;
    char path[512];
    tu_path(path, sizeof path, scratch->dir, "raw.safetensors");

    uint8_t bytes[64] = {0};
    assert_int_equal(tu_write_file(path, bytes, 5), 0);
    expect_refused_at(path, PB_ERR_FORMAT, "file is 5 bytes, shorter than the 8-byte", "short file");

    assert_int_equal(tu_write_file(path, bytes, 0), 0);
    expect_refused_at(path, PB_ERR_FORMAT, "file is 0 bytes", "empty file");

    /* length 2^40 */
    memset(bytes, 0, sizeof bytes);
    bytes[5] = 1;
    assert_int_equal(tu_write_file(path, bytes, 16), 0);
    expect_refused_at(path, PB_ERR_FORMAT, "header length 1099511627776 exceeds the 100000000-byte cap",
                      "huge header length");

    /* length 2^64-1: must not wrap when added to 8 */
    memset(bytes, 0xff, 8);
    assert_int_equal(tu_write_file(path, bytes, 16), 0);
    expect_refused_at(path, PB_ERR_FORMAT, "header length 18446744073709551615 exceeds", "max header length");

    /* length 100, only 10 bytes follow */
    memset(bytes, 0, sizeof bytes);
    bytes[0] = 100;
    memcpy(bytes + 8, "{}        ", 10);
    assert_int_equal(tu_write_file(path, bytes, 18), 0);
    expect_refused_at(path, PB_ERR_FORMAT, "header length 100 runs past the end of the file (10 bytes",
                      "header past EOF");
}

typedef struct refused_case {
    const char *label;
    const char *header;
    size_t data_size;
    pb_status status;
    const char *needle;
} refused_case;

#define T(name, dtype, shape, b, e) \
    "\"" name "\": {\"dtype\": \"" dtype "\", \"shape\": " shape ", \"data_offsets\": [" #b ", " #e "]}"

static const refused_case refused_cases[] = {
    {"header not JSON", "{\"a\": ", 0, PB_ERR_FORMAT, "header is not valid JSON"},
    {"header not JSON (line)", "{\n\"a\": nope}", 0, PB_ERR_FORMAT, "(line 2"},
    {"header not an object", "[1, 2]", 0, PB_ERR_FORMAT, "header is an array, not a JSON object"},
    {"entry not an object", "{\"a\": 3}", 0, PB_ERR_FORMAT, "tensor 'a': entry is an integer, not an object"},
    {"missing dtype", "{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, PB_ERR_FORMAT,
     "tensor 'a': missing 'dtype'"},
    {"missing shape", "{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, PB_ERR_FORMAT,
     "tensor 'a': missing 'shape'"},
    {"missing data_offsets", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, PB_ERR_FORMAT,
     "tensor 'a': missing 'data_offsets'"},
    {"unexpected key", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"extra\": 1}}", 4,
     PB_ERR_FORMAT, "tensor 'a': unexpected key 'extra'"},
    {"dtype not a string", "{\"a\": {\"dtype\": 3, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4, PB_ERR_FORMAT,
     "'dtype' is an integer, not a string"},
    {"dtype unknown", "{" T("a", "I64", "[1]", 0, 8) "}", 8, PB_ERR_UNSUPPORTED,
     "tensor 'a': dtype 'I64' is not supported (patchbay reads only F32, F16 and BF16"},
    {"dtype nonsense", "{" T("a", "Q4", "[1]", 0, 1) "}", 1, PB_ERR_UNSUPPORTED, "dtype 'Q4' is not supported"},
    {"shape not an array", "{" T("a", "F32", "4", 0, 4) "}", 4, PB_ERR_FORMAT, "'shape' is an integer, not an array"},
    {"shape negative", "{" T("a", "F32", "[2, -1]", 0, 4) "}", 4, PB_ERR_FORMAT,
     "tensor 'a': shape[1] is negative (-1)"},
    {"shape not integer", "{" T("a", "F32", "[1.5]", 0, 4) "}", 4, PB_ERR_FORMAT,
     "shape[0] is a real number, not an integer"},
    {"five dims", "{" T("a", "F32", "[1, 1, 1, 1, 1]", 0, 4) "}", 4, PB_ERR_FORMAT,
     "tensor 'a': shape has 5 dimensions; at most 4"},
    {"shape product overflow", "{" T("a", "F32", "[4294967296, 4294967296]", 0, 4) "}", 4, PB_ERR_FORMAT,
     "tensor 'a': shape [4294967296, 4294967296] of F32 overflows"},
    {"byte size overflow", "{" T("a", "F32", "[9223372036854775807]", 0, 4) "}", 4, PB_ERR_FORMAT,
     "shape [9223372036854775807] of F32 overflows 64-bit byte size"},
    {"size mismatch", "{" T("a", "F32", "[3]", 0, 8) "}", 8, PB_ERR_FORMAT,
     "tensor 'a': shape [3] of F32 needs 12 bytes but data_offsets [0, 8] span 8"},
    {"offsets not a pair", "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4, PB_ERR_FORMAT,
     "'data_offsets' must be an array [begin, end]"},
    {"offset negative", "{" T("a", "F32", "[1]", -4, 0) "}", 4, PB_ERR_FORMAT, "data_offsets[0] is negative (-4)"},
    {"offsets reversed", "{" T("a", "F32", "[1]", 8, 4) "}", 8, PB_ERR_FORMAT,
     "data_offsets [8, 4] end before they begin"},
    {"offset past end", "{" T("a", "F32", "[4]", 0, 16) "}", 8, PB_ERR_FORMAT,
     "tensor 'a': data_offsets [0, 16] run past the data section (8 bytes)"},
    {"overlap", "{" T("a", "F32", "[2]", 0, 8) ", " T("b", "F32", "[2]", 4, 12) "}", 12, PB_ERR_FORMAT,
     "tensor 'b': data_offsets [4, 12] overlap tensor 'a', which ends at 8"},
    {"same range twice", "{" T("a", "F32", "[2]", 0, 8) ", " T("b", "F32", "[2]", 0, 8) "}", 8, PB_ERR_FORMAT,
     "overlap tensor 'a'"},
    {"gap", "{" T("a", "F32", "[1]", 0, 4) ", " T("b", "F32", "[1]", 8, 12) "}", 12, PB_ERR_FORMAT,
     "gap in the data section: bytes [4, 8) before tensor 'b'"},
    {"gap at start", "{" T("a", "F32", "[1]", 4, 8) "}", 8, PB_ERR_FORMAT, "bytes [0, 4) before tensor 'a'"},
    {"trailing bytes", "{" T("a", "F32", "[1]", 0, 4) "}", 8, PB_ERR_FORMAT,
     "4 trailing bytes: the data section is 8 bytes but the tensors end at 4"},
    {"empty tensor inside another", "{" T("a", "F32", "[2]", 0, 8) ", " T("e", "F32", "[0]", 4, 4) "}", 8,
     PB_ERR_FORMAT, "overlap"},
    {"duplicate name", "{" T("a", "F32", "[1]", 0, 4) ", " T("a", "F32", "[1]", 4, 8) "}", 8, PB_ERR_FORMAT,
     "duplicate object key"},
    {"metadata not strings", "{\"__metadata__\": {\"format\": 1}}", 0, PB_ERR_FORMAT,
     "'__metadata__' key 'format' is an integer, not a string"},
    {"metadata not an object", "{\"__metadata__\": [\"pt\"]}", 0, PB_ERR_FORMAT,
     "'__metadata__' is an array, not an object of strings"},
};

static void test_refused_headers(void **state) {
    tu_scratch *scratch = *state;
    char path[512];
    tu_path(path, sizeof path, scratch->dir, "bad.safetensors");
    uint8_t data[64] = {0};
    for (size_t i = 0; i < sizeof refused_cases / sizeof refused_cases[0]; i++) {
        const refused_case *c = &refused_cases[i];
        assert_true(c->data_size <= sizeof data);
        assert_int_equal(st_write_safetensors(path, c->header, data, c->data_size), 0);
        expect_refused_at(path, c->status, c->needle, c->label);
        /* every message names the file */
        assert_non_null(strstr(pb_last_error(), path));
    }
}

/* ---- fuzzing-lite --------------------------------------------------- */

static void test_every_truncation_refused(void **state) {
    tu_scratch *scratch = *state;
    size_t size;
    uint8_t *image = build_mixed(&size);
    char path[512];
    tu_path(path, sizeof path, scratch->dir, "cut.safetensors");
    for (size_t n = 0; n < size; n++) {
        assert_int_equal(tu_write_file(path, image, n), 0);
        pb_safetensors *st = NULL;
        pb_status status = pb_safetensors_open(&st, path);
        if (status == PB_OK)
            print_error("truncation to %zu of %zu bytes was accepted\n", n, size);
        assert_int_not_equal(status, PB_OK);
        assert_null(st);
        assert_true(strlen(pb_last_error()) > 0);
    }
    /* and the whole image is accepted */
    assert_int_equal(tu_write_file(path, image, size), 0);
    pb_safetensors *st = NULL;
    assert_int_equal(pb_safetensors_open(&st, path), PB_OK);
    pb_safetensors_close(st);
    free(image);
}

/* Every byte of the header and length field overwritten with a few values:
 * whatever is accepted must keep every tensor inside the file (the
 * conversion below reads each one; ASan would catch an overrun). */
static void test_byte_corruption_never_crashes(void **state) {
    tu_scratch *scratch = *state;
    size_t size;
    uint8_t *image = build_mixed(&size);
    char path[512];
    tu_path(path, sizeof path, scratch->dir, "flip.safetensors");
    static const uint8_t values[] = {0x00, 0xff, '"', '9', '[', '}'};
    float out[64];
    int accepted = 0;
    for (size_t pos = 0; pos < size - MIXED_DATA_SIZE; pos++) {
        for (size_t v = 0; v < sizeof values; v++) {
            uint8_t saved = image[pos];
            image[pos] = values[v];
            assert_int_equal(tu_write_file(path, image, size), 0);
            image[pos] = saved;
            pb_safetensors *st = NULL;
            if (pb_safetensors_open(&st, path) != PB_OK) {
                assert_null(st);
                continue;
            }
            accepted++;
            for (int64_t i = 0; i < pb_safetensors_count(st); i++) {
                const pb_st_tensor *t = pb_safetensors_at(st, i);
                assert_true(t->n_bytes <= MIXED_DATA_SIZE);
                assert_true(t->n_elements <= sizeof out / sizeof out[0]);
                pb_st_tensor_to_f32(t, out);
                assert_ptr_equal(pb_safetensors_find(st, t->name), t);
            }
            pb_safetensors_close(st);
        }
    }
    /* Edits inside the metadata string stay valid, so the accepted path is
     * exercised too. */
    assert_true(accepted > 0);
    free(image);
}

/* ---- generated fixtures --------------------------------------------- */

/* The checkpoints transformers' save_pretrained wrote (another script
 * generates them; skipped when absent): every tensor readable and finite,
 * the embedding shaped (vocab_size, hidden_size) as config.json says. */
static void check_fixture_checkpoint(const char *name) {
    const char *fixtures = getenv("PB_FIXTURES");
    char dir[1024], config[1100];
    snprintf(dir, sizeof dir, "%s/%s", fixtures ? fixtures : "tests/fixtures", name);
    snprintf(config, sizeof config, "%s/config.json", dir);
    json_error_t error;
    json_t *root = json_load_file(config, 0, &error);
    if (!root) {
        print_message("skipping: %s not generated\n", config);
        skip();
        return;
    }
    pb_safetensors *st = NULL;
    pb_status status = pb_safetensors_open(&st, dir);
    if (status != PB_OK)
        print_error("%s\n", pb_last_error());
    assert_int_equal(status, PB_OK);
    assert_true(pb_safetensors_count(st) > 0);
    const pb_st_tensor *embed = pb_safetensors_find(st, "model.embed_tokens.weight");
    assert_non_null(embed);
    assert_int_equal(embed->n_dims, 2);
    assert_int_equal(embed->shape[0], json_integer_value(json_object_get(root, "vocab_size")));
    assert_int_equal(embed->shape[1], json_integer_value(json_object_get(root, "hidden_size")));
    for (int64_t i = 0; i < pb_safetensors_count(st); i++) {
        const pb_st_tensor *t = pb_safetensors_at(st, i);
        float *values = malloc((size_t)(t->n_elements ? t->n_elements : 1) * sizeof *values);
        assert_non_null(values);
        pb_st_tensor_to_f32(t, values);
        for (uint64_t j = 0; j < t->n_elements; j++)
            assert_true(isfinite(values[j]));
        free(values);
    }
    pb_safetensors_close(st);
    json_decref(root);
}

static void test_fixture_tiny_gqa(void **state) {
    (void)state;
    check_fixture_checkpoint("tiny_gqa");
}

static void test_fixture_tiny_bias(void **state) {
    (void)state;
    check_fixture_checkpoint("tiny_bias");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_all_dtypes, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_open_folder_single, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_empty_file_of_tensors, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_close_null_and_bad_args, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_sharded, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_sharded_refused, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_folder_without_weights, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_refused_raw, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_refused_headers, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_every_truncation_refused, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_byte_corruption_never_crashes, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test(test_fixture_tiny_gqa),
        cmocka_unit_test(test_fixture_tiny_bias),
    };
    return cmocka_run_group_tests_name("safetensors", tests, NULL, NULL);
}
