/* Internals of a sweep: the expanded sites, per-pair run caches, the row
 * table and results. Built and read by sweep.c alone (planning, batching,
 * statistics) and its white-box test (tests/test_sweep.c). Everyone else
 * reads a sweep through patchbay.h's getters or, inside the library,
 * sweep_access.h; the writers of results (sweep_write.c, report_html.c)
 * through the view of sweep_view.h. */
#ifndef PB_SWEEP_H
#define PB_SWEEP_H

#include <stdint.h>

#include "model/exec.h"
#include "patching/sweep_spec.h"

/* One site as reported: (component, layer, head, positions). Positions are
 * spec-level: non-negative indices, or negative end-aligned indices when
 * pairs differ in length; all_positions means every (mapped) position. */
typedef struct pb_site {
    pb_component component;
    int layer;
    int head;          /* -1 when none */
    int spec_position; /* reported "position"; INT32_MIN when several positions together */
    int all_positions;
    int n_positions;
    int *positions; /* (n_positions) into pb_sweep.site_positions */
    int spec_entry; /* index of the "sites" entry it came from */
} pb_site;

/* Activations of one run (a pair's base or source side), in backend memory. */
typedef struct pb_run_cache {
    int T;
    void *arena;
    size_t arena_floats;
    float *mirror; /* host copy of the arena (device backends, while the pair's rows are planned), or NULL */
    /* Past the mirror cap: a host copy of one (component, layer) block,
     * (T, row width), the one slab_src points to in the arena. */
    float *slab;
    const float *slab_src;
    size_t slab_capacity; /* floats */
    float *resid;         /* (n_layers + 1, T, d_model): resid_pre of each layer; [n_layers] = final residual */
    float *resid_mid;     /* (n_layers, T, d_model) */
    float *k, *v;         /* (n_layers, T, kv_dim): keys after RoPE, values */
    float *hooks[PB_COMPONENT_COUNT]; /* (n_layers, T, width) for components the sites read and that the
                                         arrays above do not already hold; NULL otherwise */
    float *embed_delta;               /* (T, d_model) noise, or NULL */
} pb_run_cache;

enum { PB_ROW_PENDING = 0, PB_ROW_DONE = 1 };

struct pb_sweep {
    pb_model *model;
    pb_sweep_spec spec;
    pb_sweep_options options;
    int metric_step; /* the residual entering this step feeds the metric */
    /* sites */
    pb_site *sites;
    int64_t n_sites;
    int *site_positions;
    int positions_aligned_from_end;
    /* per pair */
    pb_run_cache *base;          /* (n_pairs) */
    pb_run_cache *source;        /* (n_pairs) */
    int *cache_ready;            /* (n_pairs) caches built */
    uint8_t *baseline_ready;     /* (n_pairs) base_value and source_value known */
    double *base_value;          /* (n_pairs) metric of the base run */
    double *source_value;        /* (n_pairs) metric of the source run */
    double *clean_logprobs_host; /* KL only: (n_pairs, vocab) log-softmax of the clean run */
    /* rows: index = pair * n_sites + site */
    int64_t n_rows;
    uint8_t *row_state;   /* PB_ROW_* */
    uint8_t *row_trivial; /* 1: patched == base by construction (not run) */
    double *patched;      /* (n_rows) metric of the patched run */
    /* logit_diff: device (n_unembed, d_model) of the model's wdtype, the rows
     * of the output matrix the metric reads; pair i's positive then negative
     * ids from row pair_unembed[i] (pairs with the same tokens share rows). */
    void *unembed_rows;
    int n_unembed;
    int *pair_unembed; /* (n_pairs) logit_diff, else NULL */
    /* When the backend has metric_rows and the metric is logit_diff, logprob,
     * refusal_score or kl, metrics are computed on the device and only one
     * double per row is downloaded. */
    int metric_on_device;
    void *metric_arena;            /* device: the three arrays below, one allocation */
    double *clean_logprobs_device; /* KL: device (n_pairs, vocab), clean_logprobs_host uploaded; else NULL */
    int32_t *metric_ids; /* device: each pair's columns of the logits the metric reads, positive then negative */
    int *pair_ids_at;    /* (n_pairs) where pair i's columns start in metric_ids (shared when equal), or NULL */
    double flops_executed;
    double flops_naive;
    int64_t n_rows_executed;
    int64_t n_rows_done;
    int64_t n_rows_restored;          /* done rows loaded from a checkpoint */
    int64_t n_rows_executed_restored; /* of n_rows_executed, run before the checkpoint */
    double flops_executed_restored;   /* of flops_executed, before the checkpoint */
    int64_t n_batches;
    size_t mirror_max_bytes; /* host mirror cap of a pair's caches (PB_MIRROR_MAX_BYTES; tests lower it) */
    int64_t tokens_packed;   /* over all batches: the GEMM row counts */
    /* what made it, for an exact twin (pb_sweep_create_exact_twin) */
    char *spec_json, *spec_dir;
    struct pb_atp_verification *verification; /* owned; NULL until pb_atp_verify */
};

/* Per-pair normalised effect of a row: (patched - base) / (source - base),
 * NaN when the pair is below the effect floor or the row is not done. */
double pb_sweep_row_effect(const pb_sweep *sweep, int pair, int64_t site);
/* 1 when |source - base| >= effect_floor. */
int pb_sweep_pair_usable(const pb_sweep *sweep, int pair);

#endif
