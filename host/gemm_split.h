/* How a GEMM out (rows, n) = x (rows, k) @ w (n, k)^T too large for a BLAS
 * with 32-bit sizes is cut into calls that fit: cuBLAS takes int
 * dimensions and its element offsets within one matrix must stay below
 * 2^31, while a sweep batch at 70B width (40000 rows x 128256 vocab) holds
 * 5e9 outputs. Pure arithmetic, so CI tests it without a GPU; the CUDA
 * backend's matmul runs each chunk as one call. */
#ifndef PB_GEMM_SPLIT_H
#define PB_GEMM_SPLIT_H

#include <stdint.h>

#include "patchbay.h"

/* Most elements one matrix of one call may span (x, w or out). */
#define PB_GEMM_MAX_ELEMENTS ((int64_t)INT32_MAX)

typedef struct pb_gemm_split {
    int rows, n, k;
    int row_chunk; /* rows per call: row_chunk * n and row_chunk * k fit */
    int col_chunk; /* output columns (rows of w) per call: col_chunk * k fits */
    int n_row_chunks, n_col_chunks;
} pb_gemm_split;

/* One call of a split: out rows [row0, row0 + n_rows), columns [col0,
 * col0 + n_cols). x rows start at row0 * k, w rows at col0 * k, out at
 * row0 * n + col0 with leading dimension n. */
typedef struct pb_gemm_chunk {
    int row0, n_rows, col0, n_cols;
} pb_gemm_chunk;

/* The largest chunks with every matrix of a call within max_elements
 * (PB_GEMM_MAX_ELEMENTS for cuBLAS). PB_ERR_ARG for negative sizes or
 * max_elements < 1, PB_ERR_UNSUPPORTED when a single row of x or of out
 * does not fit (k or n > max_elements). rows == 0 or n == 0: no chunks. */
pb_status pb_gemm_split_plan(pb_gemm_split *out, int rows, int n, int k, int64_t max_elements);
int pb_gemm_split_count(const pb_gemm_split *split);
/* Chunk i of pb_gemm_split_count, row chunks outer. */
pb_gemm_chunk pb_gemm_split_chunk(const pb_gemm_split *split, int i);

#endif
