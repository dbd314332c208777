/* A finished (or partly run) sweep read once through the public getters,
 * for the writers of its outputs: sweep_write.c (results.json, .npy,
 * report.txt) and report_html.c (report.html). Also the names and
 * formatting both print the same way. */
#ifndef PB_SWEEP_VIEW_H
#define PB_SWEEP_VIEW_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model/components.h"
#include "patching/sweep_spec.h"
#include "patchbay.h"

typedef struct pb_site_view {
    pb_site_result r;
    int all_positions; /* patches every position together ("all") */
} pb_site_view;

typedef struct pb_sweep_view {
    const pb_sweep *sweep;
    const pb_model *model;
    const pb_model_config *cfg;
    const pb_sweep_spec *spec; /* pairs, metric, effect floor, significance threshold */
    int metric_residual_layer; /* options.metric_fn_residual_layer */
    int positions_from_end;    /* site positions are end-aligned (pairs differ in length) */
    pb_sweep_summary summary;
    int64_t n_sites;
    pb_site_view *sites; /* (n_sites) */
    int n_pairs;
    double *pair_base;   /* (n_pairs) */
    double *pair_source; /* (n_pairs) */
    int *pair_usable;    /* (n_pairs) */
    /* The position axis of <component>.npy: the distinct positions of the
     * component's single-position sites, in the order the spec lists them
     * (token indices; end-aligned negative ones when pairs differ in length). */
    int *columns[PB_COMPONENT_COUNT]; /* (n_columns[c]) */
    int n_columns[PB_COMPONENT_COUNT];
} pb_sweep_view;

/* Fills v from the getters; on failure v holds only what pb_sweep_view_free releases. */
pb_status pb_sweep_view_load(pb_sweep_view *v, const pb_sweep *sweep);
void pb_sweep_view_free(pb_sweep_view *v);
/* The column of a position on component c's axis, or -1. */
int pb_sweep_view_column(const pb_sweep_view *v, pb_component c, int position);
/* A pair's token index of a column label: in its base run (-1 when out of
 * range) and, through the position map, in its source run. */
void pb_sweep_view_resolve(const pb_sweep_view *v, int pair, int label, int *base, int *source);
/* 1 when every pair reads the metric with the same tokens. */
int pb_sweep_view_tokens_shared(const pb_sweep_view *v);
/* A pair's baselines as clean and corrupted (interchange: source and base). */
void pb_sweep_view_pair_values(const pb_sweep_view *v, int pair, double *clean, double *corrupted);
/* Pairs below the effect floor. */
int pb_sweep_view_pairs_below(const pb_sweep_view *v);

/* "denoising", "noising", "interchange". */
const char *pb_sweep_mode_name(pb_patch_mode mode);
/* pb_sweep_metric_name ("logit_diff", ...): sweep_spec.h, beside the parser. */

/* The metric and its arguments on one line, no newline:
 * "logit_diff (positive 7042 " Paris"; negative 8441 " Rome"; at position -1)";
 * per-pair tokens are summarised ("positive and negative tokens per pair"). */
void pb_sweep_print_metric(FILE *f, const pb_sweep_view *v);
/* A site's position: "7", "all", "3,4" (long groups shortened). */
void pb_sweep_format_position(const pb_site_view *site, char *buf, size_t size);

/* Ranking entries: descending key, then ascending index; NaN keys last. */
typedef struct pb_ranked {
    double key;
    int64_t index;
} pb_ranked;
int pb_ranked_compare(const void *pa, const void *pb);
/* Fills order (capacity n_sites) with the sites that have an effect, by
 * descending |effect|; returns how many. */
int64_t pb_sweep_view_rank_sites(const pb_sweep_view *v, pb_ranked *order);

#endif
