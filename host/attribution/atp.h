/* Attribution patching (AtP; Nanda 2023, Syed et al. 2023) of a sweep's
 * rows ("method": "atp" in the spec): instead of one patched forward per
 * row, each row's patched metric is estimated to first order from one
 * gradient of its pair's base run,
 *
 *   patched ~= base + sum over the site's base positions p of
 *              (a_source(map p) - a_base(p)) . d metric / d a (p)
 *
 * a the site's activation (a head's slice for z, q, k, v), the gradient by
 * the reference backward pass (grad.h). The rows then go through the
 * sweep's statistics and writers as exact rows do; results.json records the
 * method. */
#ifndef PB_ATP_H
#define PB_ATP_H

#include <stdint.h>

#include "patchbay.h"

/* Estimates rows (indices pair * n_sites + site) of s and their pairs'
 * base and source metrics (pb_sweep_set_row / pb_sweep_set_pair): two
 * forwards and one backward per pair, on the model's backend, the pairs
 * in groups (pb_atp_group).
 * PB_ERR_UNSUPPORTED naming what the estimate does not cover: a callback
 * metric, a backend without the backward ops. */
pb_status pb_atp_run_rows(pb_sweep *s, const int64_t *rows, int64_t n_rows);

/* The estimate's memory at its peak for one pair of T-token runs of m
 * (beside the weights and the executor's workspace): the base run's
 * captures of what the backward reads and of the sites' hook points, the
 * source run's and the gradients' of the sites' hook points, both runs'
 * logits, and the larger of a gradient pass's scratch and GradDrop's (a
 * batch of passes, a layer's gradients each). s's spec says which
 * corrections run and where the sites lie. *host_bytes (may be NULL): of
 * *bytes, the captures and logits, which are host memory on every backend;
 * on a device's (cuda, checked) only the rest is the device's. */
pb_status pb_atp_peak_bytes(const pb_sweep *s, int T, uint64_t *bytes, uint64_t *host_bytes);

/* FLOPs of one pair's estimate over T tokens: a forward of each run and
 * the backward pass, and with grad_drop GradDrop's passes (a model of the
 * passes: the planner's and bench_sweep's count). */
double pb_atp_flops(const pb_model_config *c, int T, int grad_drop);

/* Pairs run in groups: a group's forwards in one run of the executor,
 * its backward passes (and GradDrop's) layer by layer together, so
 * streamed weights are read once per group, not per pair. The next group
 * of pairs[0..n) (an estimate's, in order): as many as fit budget (a run's
 * is its sweep's, pb_sweep_memory_budget; a plan's the --max-memory it
 * recommends) with each pair's pb_atp_peak_bytes and the executor's
 * workspace for all their tokens, at least one; then GradDrop's passes at
 * once per pair widened to what the budget still holds (fewer turns,
 * fewer reads). A budget of 0: one pair, the fewest passes at once. */
typedef struct pb_atp_group_shape {
    int pairs;
    int drop_batch;      /* GradDrop's passes at once per pair (pb_grad_drops' batch; 0: its own) */
    uint64_t bytes;      /* the group's memory (what the budget bounds) */
    uint64_t host_bytes; /* of bytes, the captures and logits: host memory on every backend */
} pb_atp_group_shape;
pb_atp_group_shape pb_atp_group(const pb_sweep *s, const int *pairs, int n, size_t budget);

/* Bytes of streamed layers a group reads at most (a layer still in its
 * slot is not read again): its two runs of forwards and its backward
 * passes read every layer once, GradDrop's first turn among them (the
 * whole pass and drop_batch - 1 drops), and each later turn of GradDrop's
 * passes (drop_batch drops at once) the layers below its highest.
 * layer_bytes (n_layers): each layer's bytes. */
double pb_atp_stream_bytes(const pb_sweep *s, int drop_batch, const uint64_t *layer_bytes);

/* One verified site: its estimated and exact mean effects. */
typedef struct pb_atp_check {
    int64_t site;
    double estimate, exact;
    int control; /* 1: drawn at random, not among the estimate's top */
} pb_atp_check;

/* The exact engine's verdict on an estimate ("verify" in the spec). */
typedef struct pb_atp_verification {
    int top, n_control;
    uint64_t seed;
    int n_checks;
    pb_atp_check *checks;  /* top sites by |estimate|, descending, then the control sample */
    double recall;         /* of the exact top `top` among the checked sites, the share in the estimate's top */
    int unsigned_estimate; /* GradDrop's: ranked against |exact| */
    double spearman;       /* rank correlation of estimate and exact (|exact| when unsigned) over the checked sites */
    int worst_miss;        /* index into checks of the control site of largest |exact|, or -1 */
    int misses;            /* control sites whose |exact| exceeds the smallest |exact| of the top */
} pb_atp_verification;

/* Runs the exact engine on the verified sites of s (every row of theirs,
 * all pairs: a twin sweep of the same spec, method exact) once every row
 * of s is estimated, and keeps the verdict in s for its writers
 * (pb_sweep_verification). A no-op when the spec asks for none. */
pb_status pb_atp_verify(pb_sweep *s);
void pb_atp_verification_free(pb_atp_verification *v);
/* pb_atp_verify, then one line into summary (size bytes) saying what it
 * found: "" when the spec asks for no verification. */
pb_status pb_atp_verify_summary(pb_sweep *s, char *summary, size_t size);
/* The verdict of a verification that ran, as one line into summary ("the
 * exact engine on the top K sites ...: recall ..., Spearman ..."): "" when
 * none ran. For the writers of results, which read the sweep only. */
void pb_atp_verification_describe(const pb_sweep *s, char *summary, size_t size);

#endif
