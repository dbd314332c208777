/* The activation backward pass and attribution patching on the CUDA
 * backend (cuda/backward.cu, cuda/backward_ops.cu, through
 * attribution/grad.h) against the same PyTorch fixtures the host
 * backends meet (test_grad.c, test_atp.c), at the same bounds:
 *  - the gradient at every hook point of every grad fixture (ten tiny
 *    models of every family feature, the five metric kinds) within
 *    PB_TOL_GRAD_NMSE, and the metric's value;
 *  - AtP on the nine oracle specs and AtP* (both corrections, the QK fix
 *    alone, GradDrop alone) within PB_TOL_ATP_ESTIMATE;
 *  - GradDrop's passes run together (pb_grad_drops, several passes' rows
 *    in one cuBLAS product) against the passes one at a time on random
 *    models of 4 and 5 layers, within PB_TOL_GRAD_NMSE (grad_drops_cases.h).
 * fp32 weights: the products are cuBLAS sgemm (fp32 sums, as the CPU
 * backend's OpenBLAS), the rest sums in double as on the host.
 * Without a CUDA device (or in a build without CUDA) it exits 77: skipped.
 * PB_CUDA_TEST_STAND_IN=cpu|reference runs the harness on that backend
 * instead (a check of the harness, not of the GPU). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "atp_cases.h"
#include "backend/backend_cuda.h"
#include "grad_cases.h"
#include "grad_drops_cases.h"

static pb_backend_kind g_device = PB_BACKEND_CUDA;

static void test_gradients(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        check_model(fixtures[i], g_device, PB_WEIGHTS_RESIDENT);
}

static void test_atp(void **state) {
    (void)state;
    atp_setup setup = {g_device, 0, PB_WEIGHTS_RESIDENT};
    assert_true(tu_visit_cases("atp", check_case, &setup) >= 9);
}

static void test_drops_together(void **state) {
    (void)state;
    check_drops("tiny", g_device, 0);
    check_drops("gemma3-270m:5", g_device, 1);
}

static void test_atp_star(void **state) {
    (void)state;
    atp_setup setup = {g_device, 0, PB_WEIGHTS_RESIDENT};
    assert_true(tu_visit_cases("atp_star", check_case, &setup) >= 15);
}

int main(void) {
    int exit_code = tu_cuda_device(&g_device);
    if (exit_code != 0)
        return exit_code;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gradients),
        cmocka_unit_test(test_atp),
        cmocka_unit_test(test_atp_star),
        cmocka_unit_test(test_drops_together),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
