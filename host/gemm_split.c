/* GEMM row and column chunks for 32-bit BLAS sizes (gemm_split.h). */
#include "gemm_split.h"

#include "internal.h"

pb_status pb_gemm_split_plan(pb_gemm_split *out, int rows, int n, int k, int64_t max_elements) {
    *out = (pb_gemm_split){.rows = rows, .n = n, .k = k};
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

int pb_gemm_split_count(const pb_gemm_split *s) { return s->n_row_chunks * s->n_col_chunks; }

pb_gemm_chunk pb_gemm_split_chunk(const pb_gemm_split *s, int i) {
    int r = i / s->n_col_chunks, c = i % s->n_col_chunks;
    pb_gemm_chunk chunk = {.row0 = r * s->row_chunk, .col0 = c * s->col_chunk};
    chunk.n_rows = s->rows - chunk.row0 < s->row_chunk ? s->rows - chunk.row0 : s->row_chunk;
    chunk.n_cols = s->n - chunk.col0 < s->col_chunk ? s->n - chunk.col0 : s->col_chunk;
    return chunk;
}
