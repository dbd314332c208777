/* The checked backend (backend_checked.c) against what it promises: its
 * ops give the CPU backend's results bit for bit; every misuse a GPU run
 * would trip over is refused by name (a host pointer as device memory, a
 * buffer short of what the op touches, a freed one, overlapping outputs,
 * device memory as an upload's source, the lanes' protocol); the host
 * touching its memory between ops faults; new memory reads as NaN. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "test_util.h"

/* Floats of the small buffers below. */
#define ROWS_SMALL 24

static pb_backend *g_checked, *g_cpu;

static int setup(void **state) {
    (void)state;
    pb_backend *inner = NULL;
    if (pb_backend_cpu_create(&inner, 1) != PB_OK || pb_backend_checked_create(&g_checked, inner) != PB_OK ||
        pb_backend_cpu_create(&g_cpu, 1) != PB_OK)
        return -1;
    return 0;
}

static int teardown(void **state) {
    (void)state;
    pb_backend_destroy(g_checked);
    pb_backend_destroy(g_cpu);
    return 0;
}

/* Fails unless status is PB_ERR_ARG with a message holding every part. */
static void expect_refusal(pb_status status, const char *part1, const char *part2) {
    if (status != PB_ERR_ARG)
        fail_msg("expected PB_ERR_ARG (%s, %s), got %s: %s", part1, part2, pb_status_name(status), pb_last_error());
    const char *message = pb_last_error();
    if (!strstr(message, part1) || (part2 && !strstr(message, part2)))
        fail_msg("message \"%s\" lacks \"%s\" / \"%s\"", message, part1, part2 ? part2 : "");
    printf("  refused: %s\n", message);
}

/* A device buffer of n floats holding host[0 .. n). */
static float *device_copy(const float *host, size_t n) {
    float *d = NULL;
    CHECK_OK(g_checked->ops->alloc(g_checked, (void **)&d, n * sizeof(float)));
    CHECK_OK(g_checked->ops->upload(g_checked, d, host, n * sizeof(float)));
    return d;
}

static void fill(float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (float)((i * 37 + 11) % 23) - 5.0f;
}

/* 1 when a child process reading *p (host code touching the memory) dies. */
static int read_faults(const float *p) {
    fflush(NULL);
    pid_t child = fork();
    if (child == 0) {
        signal(SIGSEGV, SIG_DFL);
        volatile float value = *(volatile const float *)p;
        (void)value;
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_same_results_as_cpu(void **state) {
    (void)state;
    enum { ROWS = 5, N = 7, K = 33 };
    float x[ROWS * K], w[N * K], bias[N], want[ROWS * N], got[ROWS * N];
    fill(x, ROWS * K, 0.25f);
    fill(w, N * K, 0.125f);
    fill(bias, N, 1.0f);
    CHECK_OK(g_cpu->ops->matmul(g_cpu, want, x, w, PB_DTYPE_F32, bias, ROWS, N, K));
    float *dx = device_copy(x, ROWS * K), *dw = device_copy(w, N * K), *db = device_copy(bias, N), *dout = NULL;
    CHECK_OK(g_checked->ops->alloc(g_checked, (void **)&dout, sizeof got));
    CHECK_OK(g_checked->ops->matmul(g_checked, dout, dx, dw, PB_DTYPE_F32, db, ROWS, N, K));
    CHECK_OK(g_checked->ops->download(g_checked, got, dout, sizeof got));
    assert_memory_equal(got, want, sizeof got);
    /* in place where backend.h allows it */
    CHECK_OK(g_checked->ops->rmsnorm(g_checked, dx, dx, NULL, ROWS, K, 1e-5f));
    CHECK_OK(g_cpu->ops->rmsnorm(g_cpu, x, x, NULL, ROWS, K, 1e-5f));
    float normed[ROWS * K];
    CHECK_OK(g_checked->ops->download(g_checked, normed, dx, sizeof normed));
    assert_memory_equal(normed, x, sizeof normed);
    g_checked->ops->free(g_checked, dx);
    g_checked->ops->free(g_checked, dw);
    g_checked->ops->free(g_checked, db);
    g_checked->ops->free(g_checked, dout);
}

static void test_memory_is_the_devices(void **state) {
    (void)state;
    const pb_backend_ops *ops = g_checked->ops;
    assert_int_equal(ops->host_memory, 0);
    float *d = NULL, back[40];
    CHECK_OK(ops->alloc(g_checked, (void **)&d, sizeof back));
    CHECK_OK(ops->download(g_checked, back, d, sizeof back));
    for (int i = 0; i < 40; i++)
        assert_true(isnan(back[i])); /* not zeroed */
    assert_true(read_faults(d));     /* the host cannot touch it between ops */
    float small[ROWS_SMALL];
    fill(small, ROWS_SMALL, 1.0f);
    CHECK_OK(ops->upload(g_checked, d, small, sizeof small));
    CHECK_OK(ops->activate(g_checked, d, ROWS_SMALL, PB_ACTIVATION_SILU));
    assert_true(read_faults(d)); /* nor after an op */
    float host_copy[ROWS_SMALL] = {0};
    assert_true(!read_faults(host_copy));
    ops->free(g_checked, d);
}

static void test_pointers_refused(void **state) {
    (void)state;
    const pb_backend_ops *ops = g_checked->ops;
    float host[64], *d = NULL, *e = NULL;
    fill(host, 64, 1.0f);
    CHECK_OK(ops->alloc(g_checked, (void **)&d, 64 * sizeof(float)));
    CHECK_OK(ops->alloc(g_checked, (void **)&e, 64 * sizeof(float)));
    CHECK_OK(ops->upload(g_checked, d, host, sizeof host));
    /* a host pointer where device memory belongs: the bug c78a832 fixed */
    expect_refusal(ops->add(g_checked, d, d, host, 64), "add: b", "not this backend's memory");
    /* a buffer short of what the op reads */
    expect_refusal(ops->add(g_checked, d, d, d + 8, 64), "add: b needs 256 bytes from offset 32", "32 past");
    expect_refusal(ops->rmsnorm(g_checked, e, d, NULL, 9, 8, 1e-5f), "rmsnorm: out needs 288", NULL);
    /* outputs overlapping inputs, in part or where the op does not allow it */
    expect_refusal(ops->add(g_checked, d + 1, d, e, 32), "add: ", "overlap (in part)");
    expect_refusal(ops->matmul(g_checked, d, d, e, PB_DTYPE_F32, NULL, 2, 4, 4), "matmul: out and x overlap",
                   "does not allow");
    const pb_copy_region clash[2] = {{e, d, 8}, {e + 4, d + 16, 8}};
    expect_refusal(ops->copy_regions(g_checked, clash, 2), "copy_regions: a region's dst and a region's dst", NULL);
    /* device memory where host memory belongs */
    expect_refusal(ops->upload(g_checked, e, d, 16), "upload: src_host", "where host memory belongs");
    expect_refusal(ops->download(g_checked, e, d, 16), "download: dst_host", "where host memory belongs");
    /* a freed buffer */
    ops->free(g_checked, e);
    expect_refusal(ops->add(g_checked, d, d, e, 16), "add: b", "freed earlier");
    ops->free(g_checked, d);
}

static void test_free_twice_poisons(void **state) {
    (void)state;
    pb_backend *inner = NULL, *b = NULL;
    CHECK_OK(pb_backend_cpu_create(&inner, 1));
    CHECK_OK(pb_backend_checked_create(&b, inner));
    float *d = NULL;
    CHECK_OK(b->ops->alloc(b, (void **)&d, 64));
    b->ops->free(b, d);
    b->ops->free(b, d);
    expect_refusal(b->ops->synchronize(b), "free of", "freed already");
    pb_backend_destroy(b);
}

/* The lanes run their copies at lane_wait: uploads need a release, ops may
 * not touch bytes still to come, and the source must hold still. */
static void test_lanes(void **state) {
    (void)state;
    pb_backend *inner = NULL, *b = NULL;
    CHECK_OK(pb_backend_cpu_create(&inner, 1));
    CHECK_OK(pb_backend_checked_create(&b, inner));
    const pb_backend_ops *ops = b->ops;
    float host[32], back[32], *slot = NULL;
    fill(host, 32, 1.0f);
    CHECK_OK(ops->alloc(b, (void **)&slot, sizeof host));
    expect_refusal(ops->lane_upload(b, 0, slot, host, sizeof host), "lane_upload on lane 0", "no lane_release");
    CHECK_OK(ops->lane_release(b, 0));
    CHECK_OK(ops->lane_upload(b, 0, slot, host, sizeof host));
    expect_refusal(ops->activate(b, slot, 32, PB_ACTIVATION_SILU), "activate: x", "no lane_wait");
    CHECK_OK(ops->lane_wait(b, 0));
    CHECK_OK(ops->download(b, back, slot, sizeof back));
    assert_memory_equal(back, host, sizeof back);
    CHECK_OK(ops->lane_release(b, 1));
    CHECK_OK(ops->lane_upload(b, 1, slot, host, sizeof host));
    host[3] += 1.0f; /* the caller reuses its buffer too early */
    expect_refusal(ops->lane_wait(b, 1), "lane 1", "changed before the copy ran");
    expect_refusal(ops->lane_release(b, 2), "lane_release: lane 2", NULL);
    ops->free(b, slot);
    pb_backend_destroy(b);
}

/* A model on the checked backend: the forward equals the CPU's bit for bit. */
static void test_model_forward(void **state) {
    (void)state;
    char path[1024];
    tu_fixture_file(path, sizeof path, "tiny_gqa", "model.gguf");
    float *logits[2] = {NULL, NULL};
    const int32_t ids[6] = {3, 17, 42, 5, 99, 7};
    int vocab = 0;
    for (int k = 0; k < 2; k++) {
        pb_load_options options = {0};
        options.backend = k ? PB_BACKEND_CHECKED : PB_BACKEND_CPU;
        options.n_threads = 1;
        pb_model *m = NULL;
        CHECK_OK(pb_model_load(&m, path, &options));
        vocab = pb_model_get_config(m)->vocab_size;
        logits[k] = malloc(sizeof(float) * 6 * (size_t)vocab);
        assert_non_null(logits[k]);
        CHECK_OK(pb_forward(m, ids, 6, logits[k], NULL));
        pb_model_free(m);
    }
    assert_memory_equal(logits[0], logits[1], sizeof(float) * 6 * (size_t)vocab);
    free(logits[0]);
    free(logits[1]);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_results_as_cpu),
        cmocka_unit_test(test_memory_is_the_devices),
        cmocka_unit_test(test_pointers_refused),
        cmocka_unit_test(test_free_twice_poisons),
        cmocka_unit_test(test_lanes),
        cmocka_unit_test(test_model_forward),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
