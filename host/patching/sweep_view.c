/* pb_sweep_view: a sweep read once through its getters, shared by the
 * writers of results.json/.npy/report.txt (sweep_write.c) and report.html
 * (report_html.c), plus the names and formatting they print alike. */
#define _POSIX_C_SOURCE 200809L
#include "patching/sweep_view.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/internal.h"
#include "model/model.h"
#include "patching/sweep_access.h"

enum { PB_METRIC_MAX_IDS = 10 };

const char *pb_sweep_mode_name(pb_patch_mode mode) {
    switch (mode) {
    case PB_MODE_DENOISING: return "denoising";
    case PB_MODE_NOISING: return "noising";
    case PB_MODE_INTERCHANGE: return "interchange";
    }
    return "unknown";
}

const char *pb_sweep_metric_name(pb_metric_kind kind) {
    switch (kind) {
    case PB_METRIC_LOGIT_DIFF: return "logit_diff";
    case PB_METRIC_LOGPROB: return "logprob";
    case PB_METRIC_REFUSAL_SCORE: return "refusal_score";
    case PB_METRIC_KL: return "kl";
    case PB_METRIC_PROJECTION: return "projection";
    case PB_METRIC_CALLBACK: return "callback";
    }
    return "unknown";
}

/* ---- everything read from the sweep, once -------------------------------- */

void pb_sweep_view_free(pb_sweep_view *v) {
    free(v->sites);
    free(v->pair_base);
    free(v->pair_source);
    free(v->pair_usable);
}

pb_status pb_sweep_view_load(pb_sweep_view *v, const pb_sweep *sweep) {
    memset(v, 0, sizeof *v);
    v->sweep = sweep;
    v->model = pb_sweep_model(sweep);
    v->cfg = &v->model->cfg;
    v->spec = pb_sweep_spec_of(sweep);
    v->metric_residual_layer = pb_sweep_metric_residual_layer(sweep);
    v->positions_from_end = pb_sweep_positions_from_end(sweep);
    PB_TRY(pb_sweep_get_summary(sweep, &v->summary));
    v->n_sites = pb_sweep_site_count(sweep);
    v->n_pairs = v->summary.n_pairs;
    if (v->n_sites < 0 || v->n_pairs < 0)
        return pb_fail(PB_ERR_ARG, "sweep results: the sweep reports %lld sites and %d pairs", (long long)v->n_sites,
                       v->n_pairs);
    v->sites = calloc((size_t)v->n_sites + 1, sizeof *v->sites);
    v->pair_base = calloc((size_t)v->n_pairs + 1, sizeof *v->pair_base);
    v->pair_source = calloc((size_t)v->n_pairs + 1, sizeof *v->pair_source);
    v->pair_usable = calloc((size_t)v->n_pairs + 1, sizeof *v->pair_usable);
    if (!v->sites || !v->pair_base || !v->pair_source || !v->pair_usable)
        return pb_fail(PB_ERR_OOM, "sweep results: out of memory for %lld sites", (long long)v->n_sites);
    double floor_value = v->spec->effect_floor;
    for (int i = 0; i < v->n_pairs; i++) {
        PB_TRY(pb_sweep_get_pair(sweep, i, &v->pair_base[i], &v->pair_source[i]));
        double gap = fabs(v->pair_source[i] - v->pair_base[i]);
        v->pair_usable[i] = isfinite(gap) && gap >= floor_value;
    }
    int lo = 0, hi = -1;
    if (v->positions_from_end) {
        int t_min = 0;
        for (int i = 0; i < v->spec->n_pairs; i++)
            if (i == 0 || v->spec->pairs[i].base.T < t_min)
                t_min = v->spec->pairs[i].base.T;
        lo = -t_min;
    } else {
        for (int i = 0; i < v->spec->n_pairs; i++)
            if (v->spec->pairs[i].base.T - 1 > hi)
                hi = v->spec->pairs[i].base.T - 1;
    }
    for (int64_t s = 0; s < v->n_sites; s++) {
        pb_site_view *site = &v->sites[s];
        PB_TRY(pb_sweep_get_site(sweep, s, &site->r));
        site->all_positions = site->r.all_positions;
        if (site->r.position != INT32_MIN) {
            if (site->r.position < lo)
                lo = site->r.position;
            if (site->r.position > hi)
                hi = site->r.position;
        }
    }
    /* End-aligned: -T_min .. -1 */
    if (v->positions_from_end && hi < -1)
        hi = -1;
    v->first_position = lo;
    v->n_columns = hi >= lo ? hi - lo + 1 : 0;
    return PB_OK;
}

void pb_sweep_view_pair_values(const pb_sweep_view *v, int i, double *clean, double *corrupted) {
    int clean_is_source = i < v->spec->n_pairs ? v->spec->pairs[i].clean_is_source : 1;
    *clean = clean_is_source ? v->pair_source[i] : v->pair_base[i];
    *corrupted = clean_is_source ? v->pair_base[i] : v->pair_source[i];
}

int pb_sweep_view_pairs_below(const pb_sweep_view *v) {
    int n_below = 0;
    for (int i = 0; i < v->n_pairs; i++)
        n_below += !v->pair_usable[i];
    return n_below;
}

int64_t pb_sweep_view_rank_sites(const pb_sweep_view *v, pb_ranked *order) {
    int64_t n = 0;
    for (int64_t s = 0; s < v->n_sites; s++) {
        if (isnan(v->sites[s].r.effect))
            continue;
        order[n].key = fabs(v->sites[s].r.effect);
        order[n].index = s;
        n++;
    }
    qsort(order, (size_t)n, sizeof *order, pb_ranked_compare);
    return n;
}

int pb_ranked_compare(const void *pa, const void *pb) {
    const pb_ranked *a = pa, *b = pb;
    int a_nan = isnan(a->key), b_nan = isnan(b->key);
    if (a_nan != b_nan)
        return a_nan - b_nan;
    if (!a_nan && a->key != b->key)
        return a->key > b->key ? -1 : 1;
    return (a->index > b->index) - (a->index < b->index);
}

static void print_ids(FILE *f, const int32_t *ids, int n) {
    for (int i = 0; i < n && i < PB_METRIC_MAX_IDS; i++)
        fprintf(f, "%s%d", i ? ", " : "", (int)ids[i]);
    if (n > PB_METRIC_MAX_IDS)
        fprintf(f, ", ... (%d in all)", n);
}

void pb_sweep_print_metric(FILE *f, const pb_sweep_view *v) {
    const pb_metric_spec *m = &v->spec->metric;
    fprintf(f, "%s (", pb_sweep_metric_name(v->summary.metric));
    switch (v->summary.metric) {
    case PB_METRIC_LOGIT_DIFF:
        fputs("positive ids ", f);
        print_ids(f, m->positive, m->n_positive);
        fputs("; negative ids ", f);
        print_ids(f, m->negative, m->n_negative);
        break;
    case PB_METRIC_LOGPROB:
    case PB_METRIC_REFUSAL_SCORE:
        fputs("tokens ", f);
        print_ids(f, m->positive, m->n_positive);
        break;
    case PB_METRIC_KL: fputs("KL(p_clean || p_run)", f); break;
    case PB_METRIC_PROJECTION:
        fprintf(f, "direction %s on %s of layer %d", m->direction_path ? m->direction_path : "(inline)",
                m->hook_post ? "resid_post" : "resid_pre", m->layer);
        break;
    case PB_METRIC_CALLBACK:
        if (v->metric_residual_layer >= 0)
            fprintf(f, "user function of the residual entering layer %d", v->metric_residual_layer);
        else
            fputs("user function of the logits", f);
        break;
    }
    fprintf(f, "; at position %d)", m->position);
}

void pb_sweep_format_position(const pb_site_view *site, char *buf, size_t size) {
    const pb_site_result *r = &site->r;
    if (r->position != INT32_MIN) {
        snprintf(buf, size, "%d", r->position);
        return;
    }
    if (site->all_positions || !r->positions || r->n_positions == 0) {
        snprintf(buf, size, "all");
        return;
    }
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < r->n_positions; i++) {
        char piece[16];
        snprintf(piece, sizeof piece, "%s%d", i ? "," : "", r->positions[i]);
        if (used + strlen(piece) + 4 >= size) {
            snprintf(buf + used, size - used, ",..");
            return;
        }
        used += (size_t)snprintf(buf + used, size - used, "%s", piece);
    }
}
