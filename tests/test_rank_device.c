/* The CUDA device each rank picks (host/distributed/rank_device.c), with the launcher's
 * environment and the device count faked: two ranks on a node with two
 * GPUs take different ones, --device wins, one GPU is shared. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "distributed/rank_device.h"

/* A fake environment: NULL-terminated name/value pairs. */
static const char *const *g_env;

static const char *fake_env(const char *name) {
    for (const char *const *p = g_env; p && p[0]; p += 2)
        if (strcmp(p[0], name) == 0)
            return p[1];
    return NULL;
}

/* The device of a rank launched with environment `env`, as the command
 * line chooses it: requested is --device (-1: not given). */
static int device_of(const char *const *env, int requested, int device_count) {
    g_env = env;
    return pb_rank_device_choose(requested, pb_rank_local_from_env(fake_env), device_count);
}

static void test_two_ranks_two_devices(void **state) {
    (void)state;
    /* mpirun -n 2 on one node (Open MPI), and srun with two tasks */
    const char *const ompi0[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "0", "OMPI_COMM_WORLD_RANK", "0", NULL};
    const char *const ompi1[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "1", "OMPI_COMM_WORLD_RANK", "1", NULL};
    const char *const srun0[] = {"SLURM_LOCALID", "0", "SLURM_PROCID", "2", NULL};
    const char *const srun1[] = {"SLURM_LOCALID", "1", "SLURM_PROCID", "3", NULL};
    assert_int_equal(device_of(ompi0, -1, 2), 0);
    assert_int_equal(device_of(ompi1, -1, 2), 1);
    assert_int_equal(device_of(srun0, -1, 2), 0);
    assert_int_equal(device_of(srun1, -1, 2), 1);
    /* more ranks than devices: round robin */
    const char *const ompi2[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "2", NULL};
    const char *const ompi3[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "3", NULL};
    assert_int_equal(device_of(ompi2, -1, 2), 0);
    assert_int_equal(device_of(ompi3, -1, 2), 1);
}

static void test_explicit_device_wins(void **state) {
    (void)state;
    const char *const ompi0[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "0", NULL};
    const char *const ompi1[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "1", NULL};
    assert_int_equal(device_of(ompi0, 1, 2), 1);
    assert_int_equal(device_of(ompi1, 1, 2), 1);
    assert_int_equal(device_of(ompi1, 0, 2), 0);
    /* taken as given: the backend refuses one out of range, naming it */
    assert_int_equal(device_of(ompi0, 5, 2), 5);
}

static void test_one_device_is_shared(void **state) {
    (void)state;
    const char *const ompi0[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "0", NULL};
    const char *const ompi1[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "1", NULL};
    assert_int_equal(device_of(ompi0, -1, 1), 0);
    assert_int_equal(device_of(ompi1, -1, 1), 0);
    /* no device seen, no launcher: 0, and the backend says what is missing */
    assert_int_equal(device_of(ompi1, -1, 0), 0);
    assert_int_equal(device_of(NULL, -1, 2), 0);
}

static void test_local_rank_sources(void **state) {
    (void)state;
    g_env = NULL;
    assert_int_equal(pb_rank_local_from_env(fake_env), -1);
    const char *const mpich[] = {"MPI_LOCALRANKID", "3", NULL};
    const char *const mvapich[] = {"MV2_COMM_WORLD_LOCAL_RANK", "2", NULL};
    const char *const pmi[] = {"PMI_LOCAL_RANK", "4", NULL};
    const char *const pals[] = {"PALS_LOCAL_RANKID", "6", NULL};
    const char *const *single[] = {mpich, mvapich, pmi, pals};
    const int want[] = {3, 2, 4, 6};
    for (int i = 0; i < 4; i++) {
        g_env = single[i];
        assert_int_equal(pb_rank_local_from_env(fake_env), want[i]);
    }
    /* mpirun inside a Slurm allocation: the MPI launcher's rank, not the
     * batch step's SLURM_LOCALID */
    const char *const both[] = {"SLURM_LOCALID", "0", "OMPI_COMM_WORLD_LOCAL_RANK", "1", NULL};
    g_env = both;
    assert_int_equal(pb_rank_local_from_env(fake_env), 1);
    /* a value that is not a non-negative integer is skipped */
    const char *const bad[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "x1", "MPI_LOCALRANKID", "-1", "SLURM_LOCALID", "2", NULL};
    g_env = bad;
    assert_int_equal(pb_rank_local_from_env(fake_env), 2);
    const char *const empty[] = {"OMPI_COMM_WORLD_LOCAL_RANK", "", NULL};
    g_env = empty;
    assert_int_equal(pb_rank_local_from_env(fake_env), -1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_two_ranks_two_devices),
        cmocka_unit_test(test_explicit_device_wins),
        cmocka_unit_test(test_one_device_is_shared),
        cmocka_unit_test(test_local_rank_sources),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
