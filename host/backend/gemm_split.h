/* How a GEMM out (rows, n) = x (rows, k) @ w (n, k)^T too large for a BLAS
 * with 32-bit sizes is cut into calls that fit: cuBLAS takes int
 * dimensions and its element offsets within one matrix must stay below
 * 2^31, while a sweep batch at 70B width (40000 rows x 128256 vocab) holds
 * 5e9 outputs. Pure arithmetic, so CI tests it without a GPU; the CUDA
 * backend's matmul runs each chunk as one call. Inline: the CUDA library
 * links before the host library that would otherwise hold it. */
#ifndef PB_GEMM_SPLIT_H
#define PB_GEMM_SPLIT_H

#include <stdint.h>

#include "util/internal.h"
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
static inline pb_status pb_gemm_split_plan(pb_gemm_split *out, int rows, int n, int k, int64_t max_elements) {
    /* plain assignments: this header is also C++ (the CUDA backend) */
    out->rows = rows;
    out->n = n;
    out->k = k;
    out->row_chunk = out->col_chunk = out->n_row_chunks = out->n_col_chunks = 0;
    if (rows < 0 || n < 0 || k < 0 || max_elements < 1)
        return pb_fail(PB_ERR_ARG, "gemm split: rows %d, n %d, k %d, max elements %lld", rows, n, k,
                       (long long)max_elements);
    if (rows == 0 || n == 0)
        return PB_OK;
    int64_t widest = n > k ? n : k; /* a row of out (n) or of x (k) */
    if (widest > max_elements)
        return pb_fail(PB_ERR_UNSUPPORTED, "gemm split: one row of %lld elements exceeds %lld per call",
                       (long long)widest, (long long)max_elements);
    int64_t row_chunk = max_elements / widest;
    /* k == 0 (an empty sum) reads no weight: one column chunk. */
    int64_t col_chunk = k ? max_elements / k : n;
    out->row_chunk = (int)(row_chunk < rows ? row_chunk : rows);
    out->col_chunk = (int)(col_chunk < n ? col_chunk : n);
    out->n_row_chunks = (int)(((int64_t)rows + out->row_chunk - 1) / out->row_chunk);
    out->n_col_chunks = (int)(((int64_t)n + out->col_chunk - 1) / out->col_chunk);
    if ((int64_t)out->n_row_chunks * out->n_col_chunks > INT32_MAX)
        return pb_fail(PB_ERR_UNSUPPORTED, "gemm split: %d x %d chunks are too many", out->n_row_chunks,
                       out->n_col_chunks);
    return PB_OK;
}

static inline int pb_gemm_split_count(const pb_gemm_split *s) { return s->n_row_chunks * s->n_col_chunks; }

/* Chunk i of pb_gemm_split_count, row chunks outer. */
static inline pb_gemm_chunk pb_gemm_split_chunk(const pb_gemm_split *s, int i) {
    int r = i / s->n_col_chunks, c = i % s->n_col_chunks;
    pb_gemm_chunk chunk;
    chunk.row0 = r * s->row_chunk;
    chunk.col0 = c * s->col_chunk;
    chunk.n_rows = s->rows - chunk.row0 < s->row_chunk ? s->rows - chunk.row0 : s->row_chunk;
    chunk.n_cols = s->n - chunk.col0 < s->col_chunk ? s->n - chunk.col0 : s->col_chunk;
    return chunk;
}

#endif
