/* What the library's own readers of a sweep need beyond the public getters
 * of patchbay.h, as functions: the view (sweep_view.c) reads the model, the
 * spec and the position axis; checkpoints (checkpoint.c) and the ranks of a
 * distributed sweep (distribute.c) read and merge work counters (rows and
 * pair baselines go through the public pb_sweep_row_state / pb_sweep_set_row /
 * pb_sweep_pair_ready / pb_sweep_set_pair). Only sweep.c sees struct pb_sweep (sweep.h). */
#ifndef PB_SWEEP_ACCESS_H
#define PB_SWEEP_ACCESS_H

#include <stdint.h>

#include "patchbay.h"
#include "patching/sweep_spec.h"

const pb_model *pb_sweep_model(const pb_sweep *sweep);
const pb_sweep_spec *pb_sweep_spec_of(const pb_sweep *sweep);
/* options.metric_fn_residual_layer: -1 unless a callback metric reads a residual. */
int pb_sweep_metric_residual_layer(const pb_sweep *sweep);
/* 1 when site positions are end-aligned (negative) because pairs differ in length. */
int pb_sweep_positions_from_end(const pb_sweep *sweep);
int64_t pb_sweep_row_count(const pb_sweep *sweep);
/* Executor batches run so far, and the GEMM rows they packed (benchmarks, tests). */
int64_t pb_sweep_batch_count(const pb_sweep *sweep);
int64_t pb_sweep_tokens_packed(const pb_sweep *sweep);
/* 1 when the metric is computed on the device (the backend's metric_rows). */
int pb_sweep_metric_on_device(const pb_sweep *sweep);

/* Work of this process since the sweep was created or restored: rows
 * executed and their FLOPs, not counting those a checkpoint brought in. */
void pb_sweep_work_done_here(const pb_sweep *sweep, int64_t *rows_executed, double *flops_executed);
/* Adds work done elsewhere (another rank). */
void pb_sweep_add_work(pb_sweep *sweep, int64_t rows_executed, double flops_executed);
/* Adds work a checkpoint brought in: rows_restored done rows, of which
 * rows_executed were run (not trivial), costing flops_executed. */
void pb_sweep_add_restored(pb_sweep *sweep, int64_t rows_restored, int64_t rows_executed, double flops_executed);

#endif
