/* The CUDA backend as a module loaded on first use (backend/cuda_module.h):
 * CPU work maps no CUDA library; a module that is missing, not a library,
 * not ours or built apart is refused by name (one built apart is let go:
 * unmapped), and the refusal stands for the process; the real one loads beside the program, answers (NCCL's
 * version), and its errors reach pb_last_error(). Needs no GPU: on a
 * machine with one, the same checks hold. The refusals run in children
 * forked before this process loads the module. */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "test_util.h"

/* 1 when a library whose file name holds `name` is mapped in this process. */
static int mapped(const char *name) {
    FILE *maps = fopen("/proc/self/maps", "r");
    assert_non_null(maps);
    char line[4096];
    int found = 0;
    while (!found && fgets(line, sizeof line, maps))
        found = strstr(line, name) != NULL;
    fclose(maps);
    return found;
}

static void test_cpu_work_maps_no_cuda(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    const int32_t ids[4] = {1, 2, 3, 4};
    float *logits = malloc(sizeof(float) * 4 * (size_t)pb_model_get_config(m)->vocab_size);
    assert_non_null(logits);
    assert_int_equal(pb_forward(m, ids, 4, logits, NULL), PB_OK);
    free(logits);
    pb_model_free(m);
    assert_false(mapped("libcudart"));
    assert_false(mapped("libcublas"));
    assert_false(mapped("libnccl"));
    assert_false(mapped("libpatchbay_cuda"));
}

#ifdef PB_HAVE_CUDA
/* In a child with PB_CUDA_MODULE=module: the backend is refused with
 * PB_ERR_UNSUPPORTED and a message holding `expect`, twice (the outcome of
 * the one load stands), leaving *out NULL. Exit 0 when all of it held. */
static void expect_refused(const char *module, const char *expect, const char *let_go) {
    pid_t child = fork();
    assert_true(child >= 0);
    if (child == 0) {
        signal(SIGSEGV, SIG_DFL); /* a crash ends the child, not cmocka's handler in it */
        signal(SIGBUS, SIG_DFL);
        setenv("PB_CUDA_MODULE", module, 1);
        int ok = 1;
        for (int attempt = 0; attempt < 2; attempt++) {
            pb_backend *b = (pb_backend *)&ok; /* must come back NULL */
            pb_status status = pb_backend_cuda_create(&b, 0);
            const char *message = pb_last_error();
            if (status != PB_ERR_UNSUPPORTED || b || !strstr(message, expect) || !strstr(message, module)) {
                fprintf(stderr, "%s: %s: %s\n", module, pb_status_name(status), message);
                ok = 0;
            }
        }
        int version = 1;
        if (pb_cuda_nccl_version(&version) != PB_ERR_UNSUPPORTED || version != 0)
            ok = 0;
        if (let_go && mapped(let_go)) {
            fprintf(stderr, "%s: refused but still mapped\n", module);
            ok = 0;
        }
        _exit(ok ? 0 : 1);
    }
    int status = 0;
    assert_int_equal(waitpid(child, &status, 0), child);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}
#endif

static void test_bad_modules_refused(void **state) {
    (void)state;
#ifndef PB_HAVE_CUDA
    skip();
#else
    assert_false(mapped("libpatchbay_cuda")); /* the children must start unloaded */
    expect_refused("/nonexistent/libpatchbay_cuda.so", "could not be loaded", NULL);
    char path[4096];
    assert_true(tu_fixture_path(path, sizeof path, "tiny_gqa/model.gguf"));
    expect_refused(path, "could not be loaded", NULL); /* not a shared object */
    Dl_info libc;
    assert_true(dladdr((void *)printf, &libc) && libc.dli_fname);
    expect_refused(libc.dli_fname, "is not patchbay's CUDA backend", NULL);
    const char *build = getenv("PB_BUILD_DIR");
    assert_non_null(build);
    tu_path(path, sizeof path, build, "libpb_cuda_module_foreign.so");
    expect_refused(path, "built apart", "libpb_cuda_module_foreign.so"); /* and let go */
#endif
}

static void test_module_loads_and_answers(void **state) {
    (void)state;
#ifndef PB_HAVE_CUDA
    assert_int_equal(pb_cuda_module_load(), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), "no CUDA backend"));
#else
    unsetenv("PB_CUDA_MODULE");                                          /* the one beside this program */
    if (pb_cuda_module_load() != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_true(mapped("libpatchbay_cuda.so"));
    assert_true(mapped("libcublas"));
    int version = 0;
    if (pb_cuda_nccl_version(&version) != PB_OK)
        fail_msg("%s", pb_last_error());
    printf("  NCCL version code %d, through the module\n", version);
    assert_true(version >= 20000);
    pb_nccl_gather_free(NULL);
#endif
}

/* A failure inside the module is recorded where the library keeps its
 * errors: no device (no driver here) or, on a GPU, a device out of range. */
static void test_module_errors_reach_library(void **state) {
    (void)state;
#ifndef PB_HAVE_CUDA
    skip();
#else
    pb_backend *b = NULL;
    pb_status status = pb_backend_cuda_create(&b, 1 << 20);
    printf("  device 2^20: %s: %s\n", pb_status_name(status), pb_last_error());
    assert_int_not_equal(status, PB_OK);
    assert_null(b);
    assert_true(strstr(pb_last_error(), "cudaGetDeviceCount") || strstr(pb_last_error(), "out of range"));
    pb_cuda_device_info info;
    assert_int_not_equal(pb_cuda_device_query(-1, &info), PB_OK);
    assert_true(pb_last_error()[0] != 0);
#endif
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_work_maps_no_cuda),
        cmocka_unit_test(test_bad_modules_refused),
        cmocka_unit_test(test_module_loads_and_answers),
        cmocka_unit_test(test_module_errors_reach_library),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
