/* util/outdir: the write probe that refuses a checkpoint place before any
 * work (missing folder, a file for a folder, a folder for the file, a
 * read-only place), leaving no probe behind; and the removal of stale
 * temporary files "<name>.tmp.<pid>": a dead process's go, a live one's
 * (this process's, its parent's) stay, and so does anything that only
 * looks alike (not digits, not a regular file, another prefix). */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/outdir.h"
#include "test_util.h"

static char dir[64];

static int make_dir(void **state) { return tu_make_temp_dir(dir, sizeof dir, "pb_outdir_"); }

static int remove_dir(void **state) {
    chmod(dir, 0700);
    tu_remove_tree(dir);
    dir[0] = 0;
    return 0;
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
        cmocka_unit_test_setup_teardown(test_probe, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_stale_temps, make_dir, remove_dir),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
