/* The error message behind pb_last_error(): pb_fail always records, a
 * cleanup failure (pb_fail_cleanup) never replaces a pending one, and a
 * saved message comes back whole after cleanup that used pb_fail. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <string.h>

#include "util/internal.h"

static void test_fail_always_records(void **state) {
    (void)state;
    pb_error_clear();
    assert_string_equal(pb_last_error(), "");
    assert_int_equal(pb_fail(PB_ERR_IO, "first %d", 1), PB_ERR_IO);
    assert_int_equal(pb_fail(PB_ERR_ARG, "second %d", 2), PB_ERR_ARG);
    assert_string_equal(pb_last_error(), "second 2");
    pb_error_clear();
}

static void test_cleanup_failure_keeps_the_pending_one(void **state) {
    (void)state;
    pb_error_clear();
    /* nothing pending: a cleanup failure is all there is to say */
    assert_int_equal(pb_fail_cleanup(PB_ERR_CUDA, "cudaFree failed"), PB_ERR_CUDA);
    assert_string_equal(pb_last_error(), "cudaFree failed");
    pb_error_clear();
    (void)pb_fail(PB_ERR_CUDA, "kernel rmsnorm failed");
    (void)pb_fail_cleanup(PB_ERR_CUDA, "cudaFree failed");
    (void)pb_fail_cleanup(PB_ERR_CUDA, "cudaStreamDestroy failed");
    assert_string_equal(pb_last_error(), "kernel rmsnorm failed");
    /* context added to the first failure keeps it pending */
    (void)pb_fail_context(PB_ERR_CUDA, "pair %d", 3);
    (void)pb_fail_cleanup(PB_ERR_CUDA, "cudaFree failed");
    assert_string_equal(pb_last_error(), "pair 3: kernel rmsnorm failed");
    pb_error_clear();
}

static void test_save_restore_round_trip(void **state) {
    (void)state;
    pb_error_clear();
    char longest[PB_ERROR_CAPACITY];
    memset(longest, 'x', sizeof longest - 1);
    longest[sizeof longest - 1] = 0;
    (void)pb_fail(PB_ERR_CUDA, "%s", longest);
    pb_error_saved saved;
    pb_error_save(&saved);
    (void)pb_fail(PB_ERR_CUDA, "cudaStreamSynchronize failed while finishing a batch");
    pb_error_restore(&saved);
    assert_string_equal(pb_last_error(), longest); /* all 1023 bytes */
    (void)pb_fail_cleanup(PB_ERR_CUDA, "cudaFree failed");
    assert_string_equal(pb_last_error(), longest); /* still pending */

    /* restoring "nothing pending" lets a later cleanup failure record */
    pb_error_clear();
    pb_error_save(&saved);
    (void)pb_fail(PB_ERR_CUDA, "transient");
    pb_error_restore(&saved);
    assert_string_equal(pb_last_error(), "");
    (void)pb_fail_cleanup(PB_ERR_CUDA, "cudaFree failed");
    assert_string_equal(pb_last_error(), "cudaFree failed");
    pb_error_clear();
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fail_always_records),
        cmocka_unit_test(test_cleanup_failure_keeps_the_pending_one),
        cmocka_unit_test(test_save_restore_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
