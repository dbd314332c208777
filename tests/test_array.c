/* Tests for host/util/array.c: capacities against the doubling rule worked
 * out by hand, contents kept across growth, a need already met costing
 * nothing, and requests whose bytes overflow or cannot be allocated
 * refused with PB_ERR_OOM, the array and its capacity left as they were. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/array.h"

/* Under AddressSanitizer an allocation no machine has must come back NULL, as
 * from malloc, rather than end the process: test_refusals asks for one. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "allocator_may_return_null=1"; }

/* From empty: 16 elements, then doubling until the need is met. */
static void test_growth_rule(void **state) {
    (void)state;
    int32_t *v = NULL;
    size_t cap = 0;
    assert_int_equal(pb_array_reserve(&v, &cap, 0, sizeof *v, "ids"), PB_OK);
    assert_null(v);
    assert_int_equal(cap, 0);
    assert_int_equal(pb_array_reserve(&v, &cap, 1, sizeof *v, "ids"), PB_OK);
    assert_non_null(v);
    assert_int_equal(cap, 16);
    assert_int_equal(pb_array_reserve(&v, &cap, 17, sizeof *v, "ids"), PB_OK);
    assert_int_equal(cap, 32);
    assert_int_equal(pb_array_reserve(&v, &cap, 100, sizeof *v, "ids"), PB_OK);
    assert_int_equal(cap, 128);
    free(v);
}

/* Filled one at a time through many growths: every element survives, and
 * a need within the capacity leaves the array where it is. */
static void test_contents_kept(void **state) {
    (void)state;
    int64_t *v = NULL;
    size_t cap = 0, n = 0;
    for (int64_t i = 0; i < 5000; i++) {
        assert_int_equal(pb_array_reserve(&v, &cap, n + 1, sizeof *v, "values"), PB_OK);
        assert_true(cap >= n + 1);
        v[n++] = i * 7 - 3;
    }
    for (size_t i = 0; i < n; i++)
        assert_int_equal(v[i], (int64_t)i * 7 - 3);
    int64_t *before = v;
    size_t cap_before = cap;
    assert_int_equal(pb_array_reserve(&v, &cap, cap, sizeof *v, "values"), PB_OK);
    assert_ptr_equal(v, before);
    assert_int_equal(cap, cap_before);
    free(v);
}

/* Bytes past SIZE_MAX, and an allocation no machine has: PB_ERR_OOM with
 * the caller's name for the elements in the message; nothing changes. */
static void test_refusals(void **state) {
    (void)state;
    char *v = NULL;
    size_t cap = 0;
    assert_int_equal(pb_array_reserve(&v, &cap, 3, 1, "bytes"), PB_OK);
    memcpy(v, "ab", 3);
    char *before = v;
    assert_int_equal(pb_array_reserve(&v, &cap, SIZE_MAX / 2 + 2, 4, "wide things"), PB_ERR_OOM);
    assert_non_null(strstr(pb_last_error(), "wide things"));
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 16);
    assert_int_equal(pb_array_reserve(&v, &cap, SIZE_MAX / 4, 1, "huge things"), PB_ERR_OOM);
    assert_non_null(strstr(pb_last_error(), "huge things"));
    assert_ptr_equal(v, before);
    assert_int_equal(cap, 16);
    assert_string_equal(v, "ab");
    free(v);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_growth_rule),
        cmocka_unit_test(test_contents_kept),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
