/* The command line's own helpers (host/cli/progress.h): the --max-memory
 * size parser and the sweep progress lines, for logs and for terminals. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/progress.h"
#include "patchbay.h"

static void expect_in(const char *text, const char *needle) {
    if (!strstr(text, needle))
        fail_msg("expected '%s' in:\n%s", needle, text);
}

/* ---- progress.h ------------------------------------------------------------------ */

static void expect_size(const char *text, size_t want) {
    size_t got = 0;
    if (pb_parse_size(text, &got) != PB_OK)
        fail_msg("'%s' refused: %s", text, pb_last_error());
    if (got != want)
        fail_msg("'%s' -> %zu, expected %zu", text, got, want);
}

static void expect_bad_size(const char *text, const char *message) {
    size_t got = 12345;
    assert_int_equal(pb_parse_size(text, &got), PB_ERR_ARG);
    assert_int_equal(got, 12345);
    expect_in(pb_last_error(), message);
}

static void test_parse_size(void **state) {
    expect_size("100000", 100000);
    expect_size("512M", 512ull << 20);
    expect_size("512m", 512ull << 20);
    expect_size("2G", 2ull << 30);
    expect_size("1.5GiB", 3ull << 29);
    expect_size("64k", 65536);
    expect_size("64KiB", 65536);
    expect_size("2MB", 2000000);
    expect_size("1T", 1ull << 40);
    expect_size("100B", 100);
    expect_size("0.1K", 102); /* 102.4 bytes, rounded down */
    expect_size("18446744073709551615", SIZE_MAX);
    expect_bad_size("", "empty");
    expect_bad_size("abc", "'abc' is not a size");
    expect_bad_size("-5M", "'-5M' is not a size");
    expect_bad_size("2X", "unknown unit 'X'");
    expect_bad_size("2GG", "unknown unit 'GG'");
    expect_bad_size("1e3", "unknown unit 'e3'");
    expect_bad_size("1.2.3", "not a size");
    expect_bad_size("1.5", "not a whole number of bytes");
    expect_bad_size("0", "must be positive");
    expect_bad_size("0.0001K", "must be positive");
    expect_bad_size("18446744073709551616", "too large");
    expect_bad_size("100000000000T", "too large");
    expect_bad_size(" 2G", "not a size");
}

static char *captured(FILE *f) {
    fflush(f);
    long n = ftell(f);
    rewind(f);
    char *buf = calloc((size_t)n + 1, 1);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    return buf;
}

static int count_lines(const char *text) {
    int n = 0;
    for (; *text; text++)
        n += *text == '\n';
    return n;
}

/* In a log: a line per tenth of the work (and one per 30 s when slow), then
 * the final line with the total time. */
static void test_progress_log_lines(void **state) {
    FILE *f = tmpfile();
    assert_non_null(f);
    pb_progress p;
    pb_progress_init(&p, f, "sweep", -1); /* a file is not a terminal */
    assert_int_equal(p.tty, 0);
    pb_progress_update_at(&p, 0, 5000, 100.0);
    for (int done = 50; done <= 5000; done += 50)
        pb_progress_update_at(&p, done, 5000, 100.0 + done / 1000.0);
    pb_progress_finish_at(&p, 105.0);
    char *text = captured(f);
    assert_int_equal(count_lines(text), 10); /* 10%..90%, then the final line */
    assert_null(strchr(text, '\r'));
    expect_in(text, "sweep [###...........................] 500/5000 rows  1000.0 rows/s  ETA 0:05\n");
    expect_in(text, "sweep [###########################...] 4500/5000 rows  1000.0 rows/s  ETA 0:01\n");
    expect_in(text, "sweep [##############################] 5000/5000 rows  1000.0 rows/s  done in 5.0 s\n");
    free(text);
    fclose(f);

    /* Slow: a line every 30 s even within one tenth. */
    f = tmpfile();
    pb_progress_init(&p, f, "sweep", 0);
    pb_progress_update_at(&p, 0, 1000, 0.0);
    pb_progress_update_at(&p, 10, 1000, 31.0);
    pb_progress_update_at(&p, 20, 1000, 40.0);
    pb_progress_update_at(&p, 30, 1000, 62.0);
    pb_progress_finish_at(&p, 3600.0 * 2 + 62.0);
    text = captured(f);
    assert_int_equal(count_lines(text), 3);
    expect_in(text, "10/1000 rows  0.3 rows/s  ETA 51:09\n");
    expect_in(text, "30/1000 rows  0.5 rows/s  ETA 33:25\n");
    expect_in(text, "30/1000 rows  0.0 rows/s  stopped after 2:01:02\n");
    free(text);
    fclose(f);
}

/* On a terminal: one line redrawn with '\r' at most ten times a second. */
static void test_progress_terminal(void **state) {
    FILE *f = tmpfile();
    pb_progress p;
    pb_progress_init(&p, f, "sweep", 1);
    pb_progress_update_at(&p, 0, 100, 0.0);
    for (int done = 1; done <= 100; done++)
        pb_progress_update_at(&p, done, 100, done * 0.01); /* 100 updates over 1 s */
    pb_progress_finish_at(&p, 1.0);
    pb_progress_finish_at(&p, 2.0); /* once only */
    char *text = captured(f);
    int redraws = 0;
    for (const char *c = text; *c; c++)
        redraws += *c == '\r';
    assert_in_range(redraws, 10, 12); /* ~10 redraws + the final line */
    assert_int_equal(count_lines(text), 1);
    expect_in(text, "\rsweep [##############################] 100/100 rows  100.0 rows/s  done in 1.0 s\033[K\n");
    free(text);
    fclose(f);

    /* A finish before any update prints nothing. */
    f = tmpfile();
    pb_progress_init(&p, f, "sweep", 1);
    pb_progress_finish_at(&p, 1.0);
    assert_int_equal(ftell(f), 0);
    fclose(f);
}

int main(void) {
    const struct CMUnitTest helpers[] = {
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_progress_log_lines),
        cmocka_unit_test(test_progress_terminal),
    };
    return cmocka_run_group_tests_name("progress", helpers, NULL, NULL) ? 1 : 0;
}
