/* Tests for host/util/outdir.c: whole-file reads of inputs that may be
 * pipes or devices (the size cap at its exact boundary, a stop flag that
 * is already set, a folder refused, a FIFO read to its end) and sets of
 * output files (nothing in place before the commit, everything after it;
 * a discard leaves the folder as it was).
 * The write probe that refuses a checkpoint place before any work (missing
 * folder, a file for a folder, a folder for the file, a read-only place),
 * leaving no probe behind; and the removal of stale temporary files
 * "<name>.tmp.<pid>": a dead process's go, a live one's (this process's,
 * its parent's) stay, and so does anything that only looks alike. */
#define _GNU_SOURCE
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

/* path's text into buf (size bytes, NUL-terminated). */
static void read_text_into(const char *path, char *buf, size_t size) {
    size_t n = 0;
    char *text = tu_read_file(path, &n);
    assert_non_null(text);
    snprintf(buf, size, "%s", text);
    free(text);
}

static int make_dir(void **state) {
    (void)state;
    return tu_make_temp_dir(dir, sizeof dir, "pb_outdir_");
}

static int remove_dir(void **state) {
    (void)state;
    chmod(dir, 0700); /* test_probe makes it read-only */
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

/* Writes text to a set's pending file for name. */
static void add_to_set(pb_file_set *set, const char *name, const char *text) {
    char path[4400];
    assert_int_equal(pb_file_set_pending(set, name, path, sizeof path), PB_OK);
    assert_non_null(strstr(path, ".tmp."));
    assert_int_equal(tu_write_text(path, text), 0);
}

/* A set in a folder that holds an earlier file of one of its names: until
 * the commit the earlier file is untouched and no new name exists; the
 * commit puts every file in place and leaves nothing pending. */
static void test_file_set_commit(void **state) {
    (void)state;
    char path[512], names[1024], text[64];
    snprintf(path, sizeof path, "%s/a.npy", dir);
    assert_int_equal(tu_write_text(path, "old a"), 0);
    pb_file_set set;
    assert_int_equal(pb_file_set_begin(&set, dir), PB_OK);
    add_to_set(&set, "a.npy", "new a");
    add_to_set(&set, "b.npy", "new b");
    char b[512];
    snprintf(b, sizeof b, "%s/b.npy", dir);
    assert_int_not_equal(access(b, F_OK), 0);
    read_text_into(path, text, sizeof text);
    assert_string_equal(text, "old a");
    assert_int_equal(pb_file_set_commit(&set), PB_OK);
    tu_list_dir(dir, names, sizeof names);
    assert_string_equal(names, "a.npy b.npy");
    read_text_into(path, text, sizeof text);
    assert_string_equal(text, "new a");
}

/* Discarding removes the pending files and the folders begin made, and
 * nothing that was there before. */
static void test_file_set_discard(void **state) {
    (void)state;
    char out[512], names[1024], path[512];
    snprintf(path, sizeof path, "%s/keep.txt", dir);
    assert_int_equal(tu_write_text(path, "kept"), 0);
    snprintf(out, sizeof out, "%s/x/y", dir);
    pb_file_set set;
    assert_int_equal(pb_file_set_begin(&set, out), PB_OK);
    add_to_set(&set, "a.npy", "a");
    add_to_set(&set, "b.npy", "b");
    pb_file_set_discard(&set);
    tu_list_dir(dir, names, sizeof names);
    assert_string_equal(names, "keep.txt");

    /* in an existing folder: only the pending files go */
    assert_int_equal(pb_file_set_begin(&set, dir), PB_OK);
    add_to_set(&set, "a.npy", "a");
    pb_file_set_discard(&set);
    tu_list_dir(dir, names, sizeof names);
    assert_string_equal(names, "keep.txt");
    assert_int_equal(pb_file_set_begin(&set, dir), PB_OK);
    assert_int_equal(pb_file_set_pending(&set, "sub/a.npy", path, sizeof path), PB_ERR_ARG);
    pb_file_set_discard(&set);
}

static void expect_refused(const char *path, const char *needle) {
    pb_status st = pb_file_probe_writable(path);
    if (st != PB_ERR_IO || !strstr(pb_last_error(), needle))
        fail_msg("%s: expected PB_ERR_IO naming '%s', got %s: %s", path, needle, pb_status_name(st), pb_last_error());
}

static void test_probe(void **state) {
    (void)state;
    char path[512], names[1024];
    /* Writable: accepted, nothing left behind. */
    tu_path(path, sizeof path, dir, "run.checkpoint");
    assert_int_equal(pb_file_probe_writable(path), PB_OK);
    tu_list_dir(dir, names, sizeof names);
    assert_string_equal(names, "");
    /* A missing folder, named. */
    snprintf(path, sizeof path, "%s/missing/run.checkpoint", dir);
    expect_refused(path, "missing");
    expect_refused(path, "No such file or directory");
    /* A regular file where the folder should be. */
    char file[128];
    tu_path(file, sizeof file, dir, "file");
    assert_int_equal(tu_write_text(file, "x"), 0);
    snprintf(path, sizeof path, "%s/run.checkpoint", file);
    expect_refused(path, "is not a folder");
    /* A folder where the file should be. */
    expect_refused(dir, "it is a folder");
    /* Read-only: a folder without write permission for a user; root writes
     * there anyway, so root gets /proc, where no file can be created. */
    if (geteuid() != 0) {
        char ro[128];
        tu_path(ro, sizeof ro, dir, "ro");
        assert_int_equal(mkdir(ro, 0500), 0);
        snprintf(path, sizeof path, "%s/run.checkpoint", ro);
        expect_refused(path, "cannot create a file in");
    } else {
        expect_refused("/proc/pb_outdir_test.checkpoint", "cannot create a file in /proc");
    }
    tu_list_dir(dir, names, sizeof names);
    assert_string_equal(names, geteuid() != 0 ? "file ro" : "file");
}

/* A pid no process has: a child that has exited and been reaped. */
static pid_t dead_pid(void) {
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0)
        _exit(0);
    assert_int_equal(waitpid(child, NULL, 0), child);
    return child;
}

static void touch(const char *name) {
    char path[256];
    tu_path(path, sizeof path, dir, name);
    assert_int_equal(tu_write_text(path, "partial"), 0);
}

static void test_stale_temps(void **state) {
    (void)state;
    char name[128], names[1024], want[1024];
    long dead = (long)dead_pid(), self = (long)getpid(), parent = (long)getppid();
    touch("results.json");
    snprintf(name, sizeof name, "results.json.tmp.%ld", dead);
    touch(name);
    snprintf(name, sizeof name, "z.npy.tmp.%ld", dead);
    touch(name);
    snprintf(name, sizeof name, "run.checkpoint.tmp.%ld", dead);
    touch(name);
    snprintf(name, sizeof name, "mine.tmp.%ld", self);
    touch(name);
    snprintf(name, sizeof name, "parent.tmp.%ld", parent);
    touch(name);
    touch("notes.tmp.12x");
    touch(".tmp.1");
    char sub[256];
    snprintf(name, sizeof name, "folder.tmp.%ld", dead);
    tu_path(sub, sizeof sub, dir, name);
    assert_int_equal(mkdir(sub, 0700), 0);

    /* Only the checkpoint's own temporaries. */
    int removed = -1;
    assert_int_equal(pb_remove_stale_temps(dir, "run.checkpoint", &removed), PB_OK);
    assert_int_equal(removed, 1);
    snprintf(name, sizeof name, "run.checkpoint.tmp.%ld", dead);
    tu_path(sub, sizeof sub, dir, name);
    assert_false(tu_file_exists(sub));
    /* Any name: the dead process's two files go, nothing else. */
    assert_int_equal(pb_remove_stale_temps(dir, NULL, &removed), PB_OK);
    assert_int_equal(removed, 2);
    tu_list_dir(dir, names, sizeof names);
    snprintf(want, sizeof want, ".tmp.1 folder.tmp.%ld mine.tmp.%ld notes.tmp.12x parent.tmp.%ld results.json", dead,
             self, parent);
    assert_string_equal(names, want);
    /* Again: nothing left to remove; a missing folder is no error. */
    assert_int_equal(pb_remove_stale_temps(dir, NULL, &removed), PB_OK);
    assert_int_equal(removed, 0);
    tu_path(sub, sizeof sub, dir, "missing");
    assert_int_equal(pb_remove_stale_temps(sub, NULL, &removed), PB_OK);
    assert_int_equal(removed, 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_read_input_cap, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_input_refusals, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_read_input_fifo, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_file_set_commit, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_file_set_discard, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_probe, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_stale_temps, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
