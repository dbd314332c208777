/* .npy reading and writing: round trips of float32 and int32 arrays of 0
 * to 4 dims, the bytes of a written header (NumPy format 1.0), files that
 * NumPy wrote, refusals of malformed files, and atomic writes that leave
 * no temporary file behind. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <math.h>
#include <string.h>
#include <unistd.h>

#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"

static char tmp_dir[64];

static int make_dir(void **state) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pb_npy_XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

/* Removes every file in tmp_dir, then tmp_dir. */
static int remove_dir(void **state) {
    DIR *d = opendir(tmp_dir);
    if (!d)
        return -1;
    char path[512];
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(path, sizeof path, "%s/%s", tmp_dir, e->d_name);
        unlink(path);
    }
    closedir(d);
    return rmdir(tmp_dir);
}

static void tmp_path(char *buf, size_t size, const char *name) { snprintf(buf, size, "%s/%s", tmp_dir, name); }

static unsigned char *read_bytes(const char *path, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    *size = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc(*size + 1);
    assert_int_equal(fread(buf, 1, *size, f), *size);
    fclose(f);
    buf[*size] = 0;
    return buf;
}

static void write_bytes(const char *path, const void *data, size_t size) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, size, f), size);
    assert_int_equal(fclose(f), 0);
}

/* Number of entries in tmp_dir besides . and .. */
static int count_entries(void) {
    DIR *d = opendir(tmp_dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    closedir(d);
    return n;
}

static const int64_t shapes[5][4] = {{0}, {5}, {2, 3}, {2, 3, 4}, {2, 1, 3, 2}};

/* Writes arrays of 0..4 dims holding `values` (cycled) and reads them back. */
static void round_trip(pb_npy_dtype dtype, const void *values, size_t n_values) {
    for (int dims = 0; dims <= 4; dims++) {
        size_t count = 1;
        for (int i = 0; i < dims; i++)
            count *= (size_t)shapes[dims][i];
        uint32_t *data = malloc(4 * count);
        for (size_t i = 0; i < count; i++)
            memcpy(&data[i], (const char *)values + 4 * (i % n_values), 4);
        char path[256];
        tmp_path(path, sizeof path, dtype == PB_NPY_F32 ? "f32.npy" : "i32.npy");
        if (pb_npy_write(path, data, dtype, dims, shapes[dims]) != PB_OK)
            fail_msg("%s", pb_last_error());
        void *back = NULL;
        int n_dims = -1;
        int64_t shape[8];
        if (pb_npy_read(path, &back, dtype, &n_dims, shape) != PB_OK)
            fail_msg("%d dims: %s", dims, pb_last_error());
        assert_int_equal(n_dims, dims);
        for (int i = 0; i < dims; i++)
            assert_int_equal(shape[i], shapes[dims][i]);
        /* Bitwise: NaN, -0 and subnormals come back as they went in. */
        assert_memory_equal(back, data, 4 * count);
        free(back);
        free(data);
        assert_int_equal(count_entries(), 1);
    }
}

static void test_round_trip_f32(void **state) {
    const float values[] = {1.5f, -0.0f, 3.0e38f, -1.0e-40f /* subnormal */, INFINITY, NAN, 0.1f, -7.25f};
    round_trip(PB_NPY_F32, values, sizeof values / sizeof values[0]);
}

static void test_round_trip_i32(void **state) {
    const int32_t values[] = {0, 1, -1, INT32_MAX, INT32_MIN, 123456789, -42};
    round_trip(PB_NPY_I32, values, sizeof values / sizeof values[0]);
}

/* The header must be what np.save writes: magic, version 1.0, a little
 * endian length, the dict text, space padding to a multiple of 64 and a
 * final '\n'. */
static void expect_header(int n_dims, const int64_t *shape, const char *dict, size_t data_bytes) {
    char path[256];
    tmp_path(path, sizeof path, "header.npy");
    float zeros[24] = {0};
    assert_int_equal(pb_npy_write(path, zeros, PB_NPY_F32, n_dims, shape), PB_OK);
    size_t size;
    unsigned char *b = read_bytes(path, &size);
    assert_memory_equal(b, "\x93NUMPY", 6);
    assert_int_equal(b[6], 1);
    assert_int_equal(b[7], 0);
    size_t header_len = b[8] | (size_t)b[9] << 8;
    assert_int_equal((10 + header_len) % 64, 0);
    assert_int_equal(size, 10 + header_len + data_bytes);
    size_t dict_len = strlen(dict);
    assert_true(dict_len < header_len);
    if (memcmp(b + 10, dict, dict_len) != 0)
        fail_msg("header is '%.*s', expected '%s'", (int)header_len, (const char *)b + 10, dict);
    for (size_t i = 10 + dict_len; i < 10 + header_len - 1; i++)
        assert_int_equal(b[i], ' ');
    assert_int_equal(b[10 + header_len - 1], '\n');
    free(b);
}

static void test_header_bytes(void **state) {
    const int64_t two_three[2] = {2, 3}, five[1] = {5}, big[3] = {1, 2, 12};
    expect_header(2, two_three, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
    expect_header(1, five, "{'descr': '<f4', 'fortran_order': False, 'shape': (5,), }", 20);
    expect_header(0, NULL, "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", 4);
    expect_header(3, big, "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2, 12), }", 96);
    /* int32 says so in descr. */
    char path[256];
    tmp_path(path, sizeof path, "int.npy");
    int32_t v[2] = {7, 8};
    int64_t two[1] = {2};
    assert_int_equal(pb_npy_write(path, v, PB_NPY_I32, 1, two), PB_OK);
    size_t size;
    unsigned char *b = read_bytes(path, &size);
    assert_non_null(strstr((const char *)b + 10, "'descr': '<i4'"));
    assert_memory_equal(b + size - 8, v, 8);
    free(b);
}

/* Files written by NumPy (the tiny model fixtures). */
static void test_read_numpy_files(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny_gqa/ids.npy", tu_fixtures());
    void *data = NULL;
    int n_dims;
    int64_t shape[8];
    if (pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_int_equal(n_dims, 1);
    assert_int_equal(shape[0], 12);
    const int32_t expected[12] = {124, 124, 125, 127, 22, 117, 14, 33, 0, 41, 68, 15};
    assert_memory_equal(data, expected, sizeof expected);
    free(data);
    /* Integers are not floats. */
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape), PB_ERR_FORMAT);
    assert_null(data);

    /* logits.npy: the values are the file's last T * vocab * 4 bytes. */
    snprintf(path, sizeof path, "%s/tiny_gqa/logits.npy", tu_fixtures());
    if (pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_int_equal(n_dims, 2);
    assert_int_equal(shape[0], 12);
    assert_int_equal(shape[1], 128);
    size_t size;
    unsigned char *raw = read_bytes(path, &size);
    assert_true(size > 12 * 128 * 4);
    assert_memory_equal(data, raw + size - 12 * 128 * 4, 12 * 128 * 4);
    for (int i = 0; i < 12 * 128; i++)
        assert_true(isfinite(((float *)data)[i]));
    free(raw);
    free(data);
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape), PB_ERR_FORMAT);
    assert_non_null(strstr(pb_last_error(), "<f4"));
}

/* Reads `bytes` as a .npy file and expects `status` with a message that
 * names the file and contains `needle`. */
static void expect_refusal(const void *bytes, size_t size, pb_npy_dtype dtype, pb_status status, const char *needle) {
    char path[256];
    tmp_path(path, sizeof path, "bad.npy");
    write_bytes(path, bytes, size);
    void *data = (void *)&data; /* must be reset to NULL */
    int n_dims;
    int64_t shape[8];
    pb_status got = pb_npy_read(path, &data, dtype, &n_dims, shape);
    if (got != status)
        fail_msg("expected %s for '%s', got %s (%s)", pb_status_name(status), needle, pb_status_name(got),
                 pb_last_error());
    assert_null(data);
    if (!strstr(pb_last_error(), needle) || !strstr(pb_last_error(), path))
        fail_msg("message lacks '%s' or the path: %s", needle, pb_last_error());
    unlink(path);
}

/* Replaces the first `from` in buf[0..size) by `to` of the same length. */
static void patch(unsigned char *buf, size_t size, const char *from, const char *to) {
    size_t n = strlen(from);
    assert_int_equal(strlen(to), n);
    for (size_t i = 0; i + n <= size; i++)
        if (memcmp(buf + i, from, n) == 0) {
            memcpy(buf + i, to, n);
            return;
        }
    fail_msg("'%s' not found", from);
}

static void test_refusals(void **state) {
    char path[256];
    tmp_path(path, sizeof path, "good.npy");
    const float values[6] = {1, 2, 3, 4, 5, 6};
    const int64_t shape[2] = {2, 3};
    assert_int_equal(pb_npy_write(path, values, PB_NPY_F32, 2, shape), PB_OK);
    size_t size;
    unsigned char *good = read_bytes(path, &size);
    unlink(path);
    unsigned char *bad = malloc(size);

    memcpy(bad, good, size);
    bad[5] = 'X'; /* \x93NUMPX */
    expect_refusal(bad, size, PB_NPY_F32, PB_ERR_FORMAT, "bad magic");
    expect_refusal(good, size - 4, PB_NPY_F32, PB_ERR_FORMAT, "data");
    expect_refusal(good, size - 24, PB_NPY_F32, PB_ERR_FORMAT, "data");
    expect_refusal(good, 40, PB_NPY_F32, PB_ERR_FORMAT, "header");
    expect_refusal(good, 9, PB_NPY_F32, PB_ERR_FORMAT, "not a .npy file");
    expect_refusal(good, 0, PB_NPY_F32, PB_ERR_FORMAT, "not a .npy file");
    /* One edit of the header text each: the edit, then what it must give. */
    static const struct {
        const char *from, *to;
        pb_status status;
        const char *needle;
    } edits[] = {
        {"False", "True ", PB_ERR_UNSUPPORTED, "Fortran"}, {"<f4", "<f2", PB_ERR_UNSUPPORTED, "<f2"},
        {"<f4", ">f4", PB_ERR_UNSUPPORTED, ">f4"},         {"'shape'", "'shapX'", PB_ERR_FORMAT, "shape"},
        {"(2, 3)", "(2, x)", PB_ERR_FORMAT, "shape"},
    };
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        print_message("header edit %s -> %s\n", edits[i].from, edits[i].to);
        memcpy(bad, good, size);
        patch(bad, size, edits[i].from, edits[i].to);
        expect_refusal(bad, size, PB_NPY_F32, edits[i].status, edits[i].needle);
    }
    memcpy(bad, good, size);
    bad[6] = 9; /* version 9.0 */
    expect_refusal(bad, size, PB_NPY_F32, PB_ERR_FORMAT, "version 9");
    /* A float file read as integers. */
    expect_refusal(good, size, PB_NPY_I32, PB_ERR_FORMAT, "<f4");
    /* The untouched bytes still read: the refusals above are the edits'. */
    write_bytes(path, good, size);
    void *data;
    int n_dims;
    int64_t back[8];
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_F32, &n_dims, back), PB_OK);
    assert_memory_equal(data, values, sizeof values);
    free(data);
    unlink(path);
    free(bad);
    free(good);

    tmp_path(path, sizeof path, "missing.npy");
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_F32, &n_dims, back), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), path));
}

/* Inputs the fuzzer found (tests/fuzz/regressions/npy/), each refused
 * with a message. shape-product-wraps: a shape of three dims of 2^32 and
 * more, whose element count wrapped to a size the empty data passed. */
static void test_fuzz_regressions(void **state) {
    size_t size = 0;
    char *bytes = tu_fuzz_input("npy", "shape-product-wraps.npy", &size);
    expect_refusal(bytes, size, PB_NPY_F32, PB_ERR_FORMAT, "more elements than fit in 64 bits");
    free(bytes);
}

/* Writes a version 1.0 file with the given descr and 1-d length by hand
 * (the writer only makes 4-byte types). */
static void write_npy64(const char *path, const char *descr, int n, const void *data) {
    unsigned char buf[128 + 64];
    memset(buf, ' ', 128);
    memcpy(buf, "\x93NUMPY\x01\x00\x76\x00", 10); /* header_len 118 */
    int len = snprintf((char *)buf + 10, 118, "{'descr': '%s', 'fortran_order': False, 'shape': (%d,), }", descr, n);
    buf[10 + len] = ' ';
    buf[127] = '\n';
    memcpy(buf + 128, data, (size_t)n * 8);
    write_bytes(path, buf, 128 + (size_t)n * 8);
}

/* int64 and float64 files (NumPy's defaults) are converted on read; an
 * int64 that does not fit in int32 is refused, not wrapped. */
static void test_read_64bit(void **state) {
    char path[256];
    tmp_path(path, sizeof path, "wide.npy");
    void *data;
    int n_dims;
    int64_t shape[8];
    const int64_t ints[3] = {5, -7, INT32_MAX};
    write_npy64(path, "<i8", 3, ints);
    if (pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_int_equal(n_dims, 1);
    assert_int_equal(shape[0], 3);
    const int32_t narrow[3] = {5, -7, INT32_MAX};
    assert_memory_equal(data, narrow, sizeof narrow);
    free(data);
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape), PB_ERR_FORMAT);

    const int64_t too_wide[2] = {5, (int64_t)1 << 32 | 5}; /* would wrap to 5 */
    write_npy64(path, "<i8", 2, too_wide);
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape), PB_ERR_FORMAT);
    assert_null(data);
    assert_non_null(strstr(pb_last_error(), "4294967301"));

    const double doubles[3] = {1.5, -2.25, 1e-3};
    write_npy64(path, "<f8", 3, doubles);
    if (pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    const float singles[3] = {1.5f, -2.25f, (float)1e-3};
    assert_memory_equal(data, singles, sizeof singles);
    free(data);
}

static void test_write_atomic(void **state) {
    char path[256];
    tmp_path(path, sizeof path, "blob.bin");
    assert_int_equal(pb_write_file_atomic(path, "first", 5), PB_OK);
    assert_int_equal(pb_write_file_atomic(path, "second!", 7), PB_OK);
    size_t size;
    unsigned char *b = read_bytes(path, &size);
    assert_int_equal(size, 7);
    assert_memory_equal(b, "second!", 7);
    free(b);
    /* Only the file itself: no blob.bin.tmp.<pid> left behind. */
    DIR *d = opendir(tmp_dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        n++;
        if (strcmp(e->d_name, "blob.bin") != 0)
            fail_msg("unexpected file %s after an atomic write", e->d_name);
    }
    closedir(d);
    assert_int_equal(n, 1);
    unlink(path);

    char missing[300];
    snprintf(missing, sizeof missing, "%s/no/such/dir/x.npy", tmp_dir);
    assert_int_equal(pb_write_file_atomic(missing, "x", 1), PB_ERR_IO);
    if (!strstr(pb_last_error(), missing))
        fail_msg("message does not name %s: %s", missing, pb_last_error());
    const float one = 1.0f;
    assert_int_equal(pb_npy_write(missing, &one, PB_NPY_F32, 0, NULL), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), missing));
    assert_int_equal(count_entries(), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_round_trip_f32, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_round_trip_i32, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_header_bytes, make_dir, remove_dir),
        cmocka_unit_test(test_read_numpy_files),
        cmocka_unit_test_setup_teardown(test_refusals, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_fuzz_regressions, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_64bit, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_write_atomic, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
