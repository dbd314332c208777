/* Tests for host/util/host_memory.c against control-group trees written
 * here: a cgroup v2 limit on the job's group or one above it ("max" below
 * it), v1's memory controller alone or named with others, a namespaced
 * mount that shows the group as its root, a limit above the physical
 * memory, and files that name no memory limit or hold no number (the
 * physical memory stands). This machine's figure: positive, at most its
 * physical memory. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "test_util.h"
#include "util/host_memory.h"

#define GIB ((size_t)1 << 30)

static char dir[256], self[512], root[512];

static int make_dir(void **state) {
    (void)state;
    if (tu_make_temp_dir(dir, sizeof dir, "pb_host_memory_") != 0)
        return -1;
    snprintf(self, sizeof self, "%s/self_cgroup", dir);
    snprintf(root, sizeof root, "%s/cgroup", dir);
    return mkdir(root, 0700);
}

static int remove_dir(void **state) {
    (void)state;
    tu_remove_tree(dir);
    return 0;
}

/* text into root/rel, its folders made. */
static void put(const char *rel, const char *text) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", root, rel);
    for (char *slash = strchr(path + strlen(root) + 1, '/'); slash; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        mkdir(path, 0700);
        *slash = '/';
    }
    assert_int_equal(tu_write_text(path, text), 0);
}

static size_t limit(size_t physical) { return pb_host_memory_limit(self, root, physical); }

/* v2: the job's group says max, the one above it 4 GiB: 4 GiB, unless the
 * machine has less. */
static void test_v2(void **state) {
    (void)state;
    assert_int_equal(tu_write_text(self, "0::/job/step\n"), 0);
    put("job/step/memory.max", "max\n");
    put("job/memory.max", "4294967296\n");
    put("memory.max", "max\n");
    assert_int_equal(limit(16 * GIB), 4 * GIB);
    assert_int_equal(limit(2 * GIB), 2 * GIB);
    put("job/step/memory.max", "3221225472\n");
    assert_int_equal(limit(16 * GIB), 3 * GIB);
}

/* v1: the memory controller's line, alone or named with others; the other
 * controllers' lines are not read; v1's "unlimited" is a huge number. */
static void test_v1(void **state) {
    (void)state;
    assert_int_equal(tu_write_text(self, "5:cpu,cpuacct:/slurm/job_7\n4:memory:/slurm/job_7\n0::/\n"), 0);
    put("memory/slurm/job_7/memory.limit_in_bytes", "6442450944\n");
    put("memory/memory.limit_in_bytes", "9223372036854771712\n");
    put("cpu,cpuacct/slurm/job_7/memory.limit_in_bytes", "1\n");
    assert_int_equal(limit(16 * GIB), 6 * GIB);
    assert_int_equal(tu_write_text(self, "4:cpuacct,memory,pids:/slurm/job_7\n"), 0);
    assert_int_equal(limit(16 * GIB), 6 * GIB);
    /* "memoryx" is another controller */
    assert_int_equal(tu_write_text(self, "4:memoryx:/slurm/job_7\n"), 0);
    assert_int_equal(limit(16 * GIB), 16 * GIB);
}

/* A namespaced mount shows the process its own group as the root while
 * /proc/self/cgroup names the full path: the root's limit is found. */
static void test_namespaced(void **state) {
    (void)state;
    assert_int_equal(tu_write_text(self, "4:memory:/process_api/ac2064\n"), 0);
    put("memory/memory.limit_in_bytes", "1073741824\n");
    assert_int_equal(limit(16 * GIB), GIB);
    assert_int_equal(tu_write_text(self, "0::/user.slice/session-3.scope\n"), 0);
    put("memory.max", "2147483648\n");
    assert_int_equal(limit(16 * GIB), 2 * GIB);
}

/* Nothing to read, nothing that names a memory limit, or no number: the
 * physical memory. */
static void test_no_limit(void **state) {
    (void)state;
    assert_int_equal(limit(16 * GIB), 16 * GIB); /* no self file */
    assert_int_equal(tu_write_text(self, "0::/\n"), 0);
    assert_int_equal(limit(16 * GIB), 16 * GIB); /* no memory.max */
    put("memory.max", "max\n");
    assert_int_equal(limit(16 * GIB), 16 * GIB);
    put("memory.max", "12x\n");
    assert_int_equal(limit(16 * GIB), 16 * GIB);
    put("memory.max", "\n");
    assert_int_equal(limit(16 * GIB), 16 * GIB);
    assert_int_equal(tu_write_text(self, "garbage\n1:cpu:/\n"), 0);
    assert_int_equal(limit(16 * GIB), 16 * GIB);
}

/* This machine: something, and no more than sysconf's physical memory. */
static void test_this_machine(void **state) {
    (void)state;
    size_t bytes = 0, physical = (size_t)sysconf(_SC_PHYS_PAGES) * (size_t)sysconf(_SC_PAGESIZE);
    assert_int_equal(pb_host_memory(&bytes), PB_OK);
    printf("[ MEASURE  ] this machine: %.2f GiB usable of %.2f GiB physical\n", (double)bytes / GIB,
           (double)physical / GIB);
    assert_true(bytes > 0);
    assert_true(bytes <= physical);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_v2, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_v1, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_namespaced, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_no_limit, make_dir, remove_dir),
        cmocka_unit_test(test_this_machine),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
