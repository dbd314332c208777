/* What the library's own readers of a sweep need beyond the public getters
 * of patchbay.h, as functions: the view (sweep_view.c) reads the model, the
 * spec and the position axis; checkpoints (checkpoint.c) and the ranks of a
 * distributed sweep (distribute.c) read and merge work counters (rows and
 * pair baselines go through the public pb_sweep_row_state / pb_sweep_set_row /
 * pb_sweep_pair_ready / pb_sweep_set_pair); attribution patching
 * (attribution/atp.c) reads the sites' positions. Only sweep.c sees struct
 * pb_sweep (sweep.h). */
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
/* The metric's token position in a run of T tokens (the spec's, negative
 * counting from the end). */
int pb_sweep_metric_position(const pb_sweep *sweep, int T);
/* 1 when the sweep's metric is the caller's callback (options.metric_fn). */
int pb_sweep_metric_is_callback(const pb_sweep *sweep);
/* out (at most the pair's base T) = the base positions site patches in
 * pair, ascending; returns their count. The source position of base
 * position p is the pair's position_map[p]. */
int pb_sweep_site_positions(const pb_sweep *sweep, int64_t site, int pair, int *out);
/* A new sweep of the same spec, model and options with "method": "exact"
 * and no verification: the rows an estimate is checked against. */
pb_status pb_sweep_create_exact_twin(const pb_sweep *sweep, pb_sweep **out);
/* The estimate's verification (attribution/atp.h): taken over (freed with
 * the sweep), and read back; NULL when none ran. */
struct pb_atp_verification;
void pb_sweep_set_verification(pb_sweep *sweep, struct pb_atp_verification *verification);
const struct pb_atp_verification *pb_sweep_verification(const pb_sweep *sweep);

/* Batches under an activation budget (bytes): what a run allocates, and
 * what the planner (plan.c) reports. */
typedef struct pb_batch_shape {
    int max_T;           /* the longest prompt */
    int max_rows;        /* rows a batch holds at most */
    int max_tokens;      /* tokens (rows' positions from their first patched one) a batch holds at most */
    size_t need_min;     /* bytes one row of max_T tokens needs */
    size_t arena_floats; /* the batch's patch values, gathered residuals and logits */
    size_t device_bytes; /* executor workspace, that arena and the metric's arrays */
    size_t host_bytes;   /* the batch's host scratch */
    int group_pairs;     /* pairs whose run caches are built together, the base prompts in one executor run and
                            the source prompts in another (pb_sweep_run_shape; 1 from pb_sweep_batch_shape) */
    size_t group_caches; /* bytes of those caches beyond one pair's, set aside from the budget (0 for one pair) */
} pb_batch_shape;

/* PB_ERR_OOM (numbers in the message) when budget < need_min. streamed:
 * the weights stream (a run: as loaded; a plan: as planned); on a device a
 * batch then holds as many of a pair's rows as budget allows, else 256 at
 * most (pb_sweep_options.max_batch_rows overrides both); a pair's caches
 * built at a time (group_pairs 1). */
pb_status pb_sweep_batch_shape(const pb_sweep *sweep, size_t budget, int max_T, int streamed, pb_batch_shape *out);
/* The shape a run of an exact sweep uses: resident weights (layer_bytes
 * NULL) pb_sweep_batch_shape's, a pair's caches built at a time; streamed,
 * as each executor run reads every layer, the group of pairs (2, 4, ...,
 * every pair) whose caches built together read the fewest layer bytes over
 * every row, done or not (so that every run and rank forms the same
 * groups), with batches in what the group's caches beyond one pair's
 * (pb_sweep_cache_bytes of the longest prompt) leave of budget, which on a
 * device may hold every row of the group (the rows of pairs that share the
 * metric's tokens share batches). */
pb_status pb_sweep_run_shape(const pb_sweep *sweep, size_t budget, int max_T, const uint64_t *layer_bytes,
                             pb_batch_shape *out);
/* Tokens of the longest prompt, base or source. */
int pb_sweep_max_T(const pb_sweep *sweep);
/* The batch budget of a sweep given no --max-memory, weights resident. */
#define PB_SWEEP_DEFAULT_MEMORY ((size_t)1 << 30)
/* *budget: the sweep's memory for what it holds at once (an exact sweep's
 * batches, an estimate's groups of pairs): --max-memory; when none was
 * given, on streamed weights the plan's budget (pb_sweep_plan: on a device
 * all that the weights and caches leave, on the CPU 1 GiB within them),
 * else PB_SWEEP_DEFAULT_MEMORY. The plan's refusal when the memory cannot
 * hold one row. */
pb_status pb_sweep_memory_budget(const pb_sweep *sweep, size_t *budget);
/* (plan.c) The batch budget pb_sweep_plan gives for options, found
 * without counting the waves. */
pb_status pb_sweep_plan_budget(const pb_sweep *sweep, const pb_plan_options *options, size_t *budget);
/* Bytes of one run cache of T tokens (a pair holds two at a time). */
size_t pb_sweep_cache_bytes(const pb_sweep *sweep, int T);

/* What running `rows` (those pending) would do, counted without running:
 * the order, batching and skips of pb_sweep_run_rows. */
typedef struct pb_wave_counts {
    int64_t waves;       /* executor batches */
    int64_t rows;        /* rows in them: an upper bound, as rows found bit-identical at run time are skipped
                          (exact with run_trivial_rows) */
    int64_t pairs;       /* pairs whose baselines are computed */
    int64_t base_runs;   /* executor runs building caches: two per group of pairs (pb_batch_shape.group_pairs) */
    double flops_rows;   /* the batches' executor FLOPs with their unembedding (pb_sweep_summary.flops_executed) */
    double flops_base;   /* the base runs' FLOPs, with the baselines' unembedding */
    int64_t layers_read; /* streamed: layers read into a slot, simulated slot by slot */
    double bytes_read;   /* and their bytes (the stream's counter) */
} pb_wave_counts;

/* layer_bytes: (n_layers) bytes each streamed layer's read moves, or NULL
 * for resident weights. */
pb_status pb_sweep_count_waves(const pb_sweep *sweep, const int64_t *rows, int64_t n_rows, const pb_batch_shape *shape,
                               const uint64_t *layer_bytes, pb_wave_counts *out);

/* Work of this process since the sweep was created or restored: rows
 * executed and their FLOPs, not counting those a checkpoint brought in. */
void pb_sweep_work_done_here(const pb_sweep *sweep, int64_t *rows_executed, double *flops_executed);
/* Adds work done elsewhere (another rank). */
void pb_sweep_add_work(pb_sweep *sweep, int64_t rows_executed, double flops_executed);
/* Adds work a checkpoint brought in: rows_restored done rows, of which
 * rows_executed were run (not trivial), costing flops_executed. */
void pb_sweep_add_restored(pb_sweep *sweep, int64_t rows_restored, int64_t rows_executed, double flops_executed);

#endif
