/* util/file_hash: pb_hash64 against a one-shot reference written here from
 * the definition in file_hash.h (any split of the input, files of sizes
 * around the stripe and read-chunk bounds), every single-byte change seen,
 * and the cache: used when all five keys match (a planted value comes
 * back, so a resume reads no byte), missed after a write with the mtime set
 * back (ctime moved), a malformed cache ignored, other files' lines kept. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/file_hash.h"
#include "test_util.h"

static void expect_in(const char *text, const char *needle) {
    if (!strstr(text, needle))
        fail_msg("expected '%s' in:\n%s", needle, text);
}

/* ---- the reference: file_hash.h's definition, in one pass ------------- */

static const uint64_t R1 = 0x9E3779B185EBCA87ull, R2 = 0xC2B2AE3D27D4EB4Full, R3 = 0x165667B19E3779F9ull,
                      R4 = 0x85EBCA77C2B2AE63ull, R5 = 0x27D4EB2F165667C5ull;

static uint64_t rl(uint64_t x, int n) { return (x << n) | (x >> (64 - n)); }

static uint64_t reference_hash(const unsigned char *p, size_t n) {
    uint64_t lane[4] = {R5, 2 * R5, 3 * R5, 4 * R5};
    size_t stripes = n / 32;
    for (size_t s = 0; s < stripes; s++)
        for (int k = 0; k < 4; k++) {
            uint64_t w = 0;
            for (int b = 0; b < 8; b++)
                w |= (uint64_t)p[32 * s + 8 * k + b] << (8 * b);
            lane[k] = rl(lane[k] + w * R2, 31) * R1;
        }
    uint64_t acc = rl(lane[0], 1) + rl(lane[1], 7) + rl(lane[2], 12) + rl(lane[3], 18);
    for (int k = 0; k < 4; k++)
        acc = (acc ^ (rl(lane[k] * R2, 31) * R1)) * R1 + R4;
    acc ^= (uint64_t)n * R3;
    for (size_t i = 32 * stripes; i < n; i++)
        acc = rl(acc ^ (p[i] * R5), 11) * R1;
    acc ^= acc >> 33;
    acc *= R2;
    acc ^= acc >> 29;
    acc *= R3;
    acc ^= acc >> 32;
    return acc;
}

static unsigned char *random_bytes(size_t n, uint64_t seed) {
    unsigned char *p = malloc(n ? n : 1);
    assert_non_null(p);
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(tu_next(&seed) >> 56);
    return p;
}

static uint64_t streamed(const unsigned char *p, size_t n, size_t piece) {
    pb_hash64_state h;
    pb_hash64_init(&h);
    for (size_t at = 0; at < n; at += piece)
        pb_hash64_update(&h, p + at, n - at < piece ? n - at : piece);
    return pb_hash64_final(&h);
}

static void test_hash_matches_reference(void **state) {
    (void)state;
    static const size_t sizes[] = {0, 1, 7, 31, 32, 33, 63, 64, 65, 1000, 4096 + 17};
    static const size_t pieces[] = {1, 3, 31, 32, 33, 100000};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        unsigned char *p = random_bytes(sizes[i], 11 + i);
        uint64_t want = reference_hash(p, sizes[i]);
        for (size_t k = 0; k < sizeof pieces / sizeof *pieces; k++)
            if (streamed(p, sizes[i], pieces[k]) != want)
                fail_msg("size %zu in pieces of %zu: %016" PRIx64 ", reference %016" PRIx64, sizes[i], pieces[k],
                         streamed(p, sizes[i], pieces[k]), want);
        free(p);
    }
    /* The length counts: zeros of different lengths differ. */
    unsigned char zeros[64] = {0};
    assert_true(streamed(zeros, 32, 32) != streamed(zeros, 64, 64));
    assert_true(streamed(zeros, 0, 1) != streamed(zeros, 1, 1));
}

static char dir[64];

static int make_dir(void **state) { return tu_make_temp_dir(dir, sizeof dir, "pb_file_hash_"); }

static int remove_dir(void **state) {
    tu_remove_tree(dir);
    dir[0] = 0;
    return 0;
}

/* Files across the 4 MiB read chunk: pb_file_hash equals the reference of
 * the bytes, and flipping any one byte (first, a middle one past the first
 * MiB, last) changes it. */
static void test_file_every_byte(void **state) {
    (void)state;
    static const size_t sizes[] = {0, 33, (4u << 20) - 1, (4u << 20) + 33};
    char path[128];
    tu_path(path, sizeof path, dir, "model.bin");
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        size_t n = sizes[i];
        unsigned char *p = random_bytes(n, 100 + i);
        assert_int_equal(tu_write_file(path, p, n), 0);
        uint64_t hash = 0, size = 1;
        int cached = 1;
        assert_int_equal(pb_file_hash(path, NULL, &hash, &size, &cached), PB_OK);
        assert_int_equal(size, n);
        assert_int_equal(cached, 0);
        assert_true(hash == reference_hash(p, n));
        size_t at[3] = {0, n / 2 + (1u << 20) / 3, n ? n - 1 : 0};
        for (int k = 0; n > 0 && k < 3; k++) {
            if (at[k] >= n)
                continue;
            p[at[k]] ^= 0x10;
            assert_int_equal(tu_write_file(path, p, n), 0);
            uint64_t changed = 0;
            assert_int_equal(pb_file_hash(path, NULL, &changed, &size, NULL), PB_OK);
            if (changed == hash)
                fail_msg("size %zu: flipping byte %zu went unseen", n, at[k]);
            p[at[k]] ^= 0x10;
        }
        free(p);
    }
    assert_int_equal(pb_file_hash(dir, NULL, &(uint64_t){0}, &(uint64_t){0}, NULL), PB_ERR_IO);
    tu_path(path, sizeof path, dir, "missing.bin");
    assert_int_equal(pb_file_hash(path, NULL, &(uint64_t){0}, &(uint64_t){0}, NULL), PB_ERR_IO);
    expect_in(pb_last_error(), "missing.bin");
}

/* Rewrites the cache with one line: path's current keys and value. */
static void plant(const char *cache, const char *path, uint64_t value, const char *extra_line) {
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    FILE *f = fopen(cache, "w");
    assert_non_null(f);
    fprintf(f, "patchbay-file-hash 1\n%s%ju %ju %jd %jd %jd %016" PRIx64 "\n", extra_line, (uintmax_t)st.st_dev,
            (uintmax_t)st.st_ino, (intmax_t)st.st_size,
            (intmax_t)st.st_mtim.tv_sec * 1000000000 + (intmax_t)st.st_mtim.tv_nsec,
            (intmax_t)st.st_ctim.tv_sec * 1000000000 + (intmax_t)st.st_ctim.tv_nsec, value);
    fclose(f);
}

static void test_cache(void **state) {
    (void)state;
    char path[128], cache[128];
    tu_path(path, sizeof path, dir, "model.bin");
    tu_path(cache, sizeof cache, dir, "hash.cache");
    size_t n = (3u << 20) + 5;
    unsigned char *p = random_bytes(n, 7);
    assert_int_equal(tu_write_file(path, p, n), 0);
    uint64_t truth = reference_hash(p, n), hash = 0, size = 0;
    int cached = 1;
    /* First time: read, and the cache written. */
    assert_int_equal(pb_file_hash(path, cache, &hash, &size, &cached), PB_OK);
    assert_true(hash == truth);
    assert_int_equal(cached, 0);
    assert_int_equal(pb_file_hash(path, cache, &hash, &size, &cached), PB_OK);
    assert_true(hash == truth);
    assert_int_equal(cached, 1);
    /* A planted value for the same keys comes back: the file was not read. */
    plant(cache, path, 0x0123456789abcdefull, "1 2 3 4 5 00000000000000aa\n");
    assert_int_equal(pb_file_hash(path, cache, &hash, &size, &cached), PB_OK);
    assert_true(hash == 0x0123456789abcdefull);
    assert_int_equal(cached, 1);
    assert_int_equal(size, n);
    /* Changed past the first MiB, its mtime set back: ctime moved, so the
     * planted line no longer matches and the new bytes are hashed; the
     * other file's line is kept. */
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    p[n / 2] ^= 1;
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    assert_int_equal(pwrite(fd, p + n / 2, 1, (off_t)(n / 2)), 1);
    struct timespec times[2] = {st.st_atim, st.st_mtim};
    assert_int_equal(futimens(fd, times), 0);
    close(fd);
    assert_int_equal(pb_file_hash(path, cache, &hash, &size, &cached), PB_OK);
    assert_int_equal(cached, 0);
    assert_true(hash == reference_hash(p, n));
    char *text = tu_read_file(cache, NULL);
    assert_non_null(text);
    expect_in(text, "\n1 2 3 4 5 00000000000000aa\n");
    assert_null(strstr(text, "0123456789abcdef"));
    free(text);
    /* A malformed cache is no error. */
    assert_int_equal(tu_write_text(cache, "patchbay-file-hash 1\nnot a line\n\x01\x02"), 0);
    assert_int_equal(pb_file_hash(path, cache, &hash, &size, &cached), PB_OK);
    assert_int_equal(cached, 0);
    assert_true(hash == reference_hash(p, n));
    assert_int_equal(tu_write_text(cache, "something else entirely"), 0);
    assert_int_equal(pb_file_hash(path, cache, &hash, &size, &cached), PB_OK);
    assert_true(hash == reference_hash(p, n));
    free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hash_matches_reference),
        cmocka_unit_test_setup_teardown(test_file_every_byte, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_cache, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
