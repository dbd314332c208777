/* Tests for host/util/outdir.c's whole-file reads of inputs that may be
 * pipes or devices: the size cap at its exact boundary, a stop flag that
 * is already set, a folder refused, and a FIFO read to its end. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"
#include "util/internal.h"
#include "util/outdir.h"

static char dir[256];

static int make_dir(void **state) {
    (void)state;
    return tu_make_temp_dir(dir, sizeof dir, "pb_outdir_");
}

static int remove_dir(void **state) {
    (void)state;
    tu_remove_tree(dir);
    return 0;
}

/* A file of exactly the cap reads whole; one byte more is refused, naming
 * the file and the cap in MiB. */
static void test_read_input_cap(void **state) {
    (void)state;
    size_t cap = (size_t)1 << 20;
    char *bytes = malloc(cap + 1);
    assert_non_null(bytes);
    for (size_t i = 0; i <= cap; i++)
        bytes[i] = (char)('a' + i % 26);
    char path[512];
    snprintf(path, sizeof path, "%s/input", dir);
    assert_int_equal(tu_write_file(path, bytes, cap), 0);
    char *text = NULL;
    size_t size = 0;
    assert_int_equal(pb_read_input_file(path, cap, NULL, &text, &size), PB_OK);
    assert_int_equal(size, cap);
    assert_memory_equal(text, bytes, cap);
    assert_int_equal(text[cap], 0);
    free(text);

    assert_int_equal(tu_write_file(path, bytes, cap + 1), 0);
    text = (char *)path;
    assert_int_equal(pb_read_input_file(path, cap, NULL, &text, &size), PB_ERR_ARG);
    assert_null(text);
    assert_non_null(strstr(pb_last_error(), "holds more than 1 MiB"));
    assert_non_null(strstr(pb_last_error(), path));
    free(bytes);

    assert_int_equal(pb_read_input_file("/dev/zero", cap, NULL, &text, &size), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "/dev/zero holds more than 1 MiB"));
    /* an empty file is an empty string */
    assert_int_equal(tu_write_file(path, "", 0), 0);
    assert_int_equal(pb_read_input_file(path, cap, NULL, &text, &size), PB_OK);
    assert_int_equal(size, 0);
    assert_string_equal(text, "");
    free(text);
}

/* A stop flag already set: given up before anything is read; a folder is
 * refused by name. */
static void test_read_input_refusals(void **state) {
    (void)state;
    volatile int stop = 1;
    char *text = NULL;
    assert_int_equal(pb_read_input_file("/dev/zero", 1 << 20, &stop, &text, NULL), PB_ERR_INTERRUPTED);
    assert_null(text);
    assert_non_null(strstr(pb_last_error(), "reading /dev/zero was interrupted by a signal"));
    assert_int_equal(pb_read_input_file(dir, 1 << 20, NULL, &text, NULL), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), "it is a directory"));
    assert_int_equal(pb_read_input_file("/nonexistent/spec.json", 1 << 20, NULL, &text, NULL), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), "/nonexistent/spec.json"));
}

/* A FIFO whose writer comes after the reader opened it (the open does not
 * block, the read waits for it) is read to the writer's end. */
static void test_read_input_fifo(void **state) {
    (void)state;
    char fifo[512];
    snprintf(fifo, sizeof fifo, "%s/fifo", dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        FILE *f = fopen(fifo, "w"); /* blocks until the reader has opened it */
        if (!f)
            _exit(1);
        for (int i = 0; i < 10000; i++)
            fprintf(f, "line %d\n", i);
        _exit(fclose(f) == 0 ? 0 : 1);
    }
    char *text = NULL;
    size_t size = 0;
    pb_status status = pb_read_input_file(fifo, 1 << 20, NULL, &text, &size);
    int child;
    assert_int_equal(waitpid(pid, &child, 0), pid);
    assert_int_equal(status, PB_OK);
    assert_true(WIFEXITED(child) && WEXITSTATUS(child) == 0);
    size_t want = 0;
    for (int i = 0; i < 10000; i++)
        want += (size_t)snprintf(NULL, 0, "line %d\n", i);
    assert_int_equal(size, want);
    assert_non_null(strstr(text, "line 9999\n"));
    free(text);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_input_cap, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_input_refusals, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_input_fifo, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
