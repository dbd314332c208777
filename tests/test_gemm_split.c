/* The row and column chunks of GEMMs too large for 32-bit BLAS sizes
 * (host/backend/gemm_split.h), the arithmetic the CUDA backend's matmul runs: at the
 * real shapes (70B-width sweep batches), every chunk within the limit, the
 * chunks tiling the output exactly once, each as large as the limit allows;
 * and, with a tiny limit, the chunked product on the reference backend equal
 * bit for bit to the unchunked one. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/gemm_split.h"

/* Checks a plan's invariants without materialising its output: each chunk
 * fits, row chunks cover [0, rows) and column chunks [0, n) in order, and a
 * chunk one row or column larger would not fit. */
static void expect_valid_plan(int rows, int n, int k, int64_t limit, int64_t *calls) {
    pb_gemm_split s;
    assert_int_equal(pb_gemm_split_plan(&s, rows, n, k, limit), PB_OK);
    int count = pb_gemm_split_count(&s);
    *calls = count;
    int64_t next_row = 0, next_col = 0;
    for (int i = 0; i < count; i++) {
        pb_gemm_chunk c = pb_gemm_split_chunk(&s, i);
        assert_true(c.n_rows > 0 && c.n_cols > 0);
        /* out spans (n_rows - 1) * n + n_cols with leading dimension n */
        assert_true((int64_t)c.n_rows * n <= limit);
        assert_true((int64_t)c.n_rows * k <= limit);
        assert_true((int64_t)c.n_cols * k <= limit);
        assert_int_equal(c.col0, next_col);
        if (c.col0 == 0)
            assert_int_equal(c.row0, next_row);
        next_col = c.col0 + c.n_cols == n ? 0 : c.col0 + c.n_cols;
        if (next_col == 0)
            next_row = c.row0 + c.n_rows;
        /* maximal: only the last chunk of a dimension may be short */
        if (c.row0 + c.n_rows < rows)
            assert_true((int64_t)(c.n_rows + 1) * (n > k ? n : k) > limit);
        if (c.col0 + c.n_cols < n)
            assert_true((int64_t)(c.n_cols + 1) * k > limit);
    }
    assert_int_equal(next_row, rows);
}

static void test_real_shapes(void **state) {
    (void)state;
    struct {
        int rows, n, k;
        int64_t min_calls;
    } cases[] = {
        {40000, 128256, 8192, 3}, /* unembedding of a long sweep batch at 70B width: 5.1e9 outputs */
        {8192, 28672, 8192, 1},   /* an MLP up projection of 8192 tokens: 2.3e8, one call */
        {131072, 28672, 8192, 2}, /* the same at 128k tokens: 3.8e9 */
        {300000, 8192, 28672, 4}, /* a down projection whose input x is 8.6e9 elements */
        {1, 128256, 8192, 1},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t calls;
        expect_valid_plan(cases[i].rows, cases[i].n, cases[i].k, PB_GEMM_MAX_ELEMENTS, &calls);
        print_message("[ MEASURE  ] %d x %d x %d: %lld cuBLAS calls\n", cases[i].rows, cases[i].n, cases[i].k,
                      (long long)calls);
        assert_true(calls >= cases[i].min_calls);
        if ((int64_t)cases[i].rows * cases[i].n <= PB_GEMM_MAX_ELEMENTS &&
            (int64_t)cases[i].rows * cases[i].k <= PB_GEMM_MAX_ELEMENTS)
            assert_int_equal(calls, 1); /* what fits is never split */
    }
    /* A weight past the limit: columns split as well. */
    int64_t calls;
    expect_valid_plan(100, 300000, 8192, PB_GEMM_MAX_ELEMENTS, &calls);
    assert_true(calls >= 2);
}

static void test_small_limits_and_edges(void **state) {
    (void)state;
    int64_t calls;
    for (int rows = 1; rows <= 9; rows++)
        for (int n = 1; n <= 9; n++)
            for (int k = 0; k <= 5; k++)
                for (int64_t limit = 9; limit <= 40; limit += 7)
                    expect_valid_plan(rows, n, k, limit, &calls);
    pb_gemm_split s;
    assert_int_equal(pb_gemm_split_plan(&s, 0, 5, 5, 100), PB_OK);
    assert_int_equal(pb_gemm_split_count(&s), 0);
    assert_int_equal(pb_gemm_split_plan(&s, 5, 0, 5, 100), PB_OK);
    assert_int_equal(pb_gemm_split_count(&s), 0);
    assert_int_equal(pb_gemm_split_plan(&s, 4, 101, 5, 100), PB_ERR_UNSUPPORTED); /* one out row too wide */
    assert_int_equal(pb_gemm_split_plan(&s, 4, 5, 101, 100), PB_ERR_UNSUPPORTED); /* one x row too wide */
    assert_int_equal(pb_gemm_split_plan(&s, -1, 5, 5, 100), PB_ERR_ARG);
    assert_int_equal(pb_gemm_split_plan(&s, 1, 5, 5, 0), PB_ERR_ARG);
}

/* The chunks, run one by one on the reference backend into their places of
 * the output, give the unchunked product bit for bit. */
static void test_chunked_product_equals_whole(void **state) {
    (void)state;
    enum { ROWS = 13, N = 11, K = 7 };
    pb_backend *ref = NULL;
    assert_int_equal(pb_backend_ref_create(&ref), PB_OK);
    float x[ROWS * K], w[N * K], whole[ROWS * N], chunked[ROWS * N], part[ROWS * N];
    for (int i = 0; i < ROWS * K; i++)
        x[i] = (float)((i * 37) % 17) / 8.0f - 1.0f;
    for (int i = 0; i < N * K; i++)
        w[i] = (float)((i * 53) % 19) / 9.0f - 1.0f;
    assert_int_equal(ref->ops->matmul(ref, whole, x, w, PB_DTYPE_F32, NULL, ROWS, N, K), PB_OK);
    const int64_t limits[] = {K, 2 * K + 3, 30, 77};
    for (size_t l = 0; l < sizeof limits / sizeof limits[0]; l++) {
        pb_gemm_split s;
        assert_int_equal(pb_gemm_split_plan(&s, ROWS, N, K, limits[l] < N ? N : limits[l]), PB_OK);
        memset(chunked, 0xff, sizeof chunked);
        for (int i = 0; i < pb_gemm_split_count(&s); i++) {
            pb_gemm_chunk c = pb_gemm_split_chunk(&s, i);
            assert_int_equal(ref->ops->matmul(ref, part, x + (size_t)c.row0 * K, w + (size_t)c.col0 * K, PB_DTYPE_F32,
                                              NULL, c.n_rows, c.n_cols, K),
                             PB_OK);
            for (int r = 0; r < c.n_rows; r++)
                memcpy(chunked + (size_t)(c.row0 + r) * N + c.col0, part + (size_t)r * c.n_cols,
                       sizeof(float) * c.n_cols);
        }
        assert_memory_equal(chunked, whole, sizeof whole);
    }
    pb_backend_destroy(ref);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_shapes),
        cmocka_unit_test(test_small_limits_and_edges),
        cmocka_unit_test(test_chunked_product_equals_whole),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
