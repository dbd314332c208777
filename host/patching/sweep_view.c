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

/* ---- everything read from the sweep, once -------------------------------- */

void pb_sweep_view_free(pb_sweep_view *v) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        free(v->columns[c]);
    free(v->sites);
    free(v->pair_base);
    free(v->pair_source);
    free(v->pair_usable);
}

/* Each component's position axis: its single-position sites' positions,
 * first appearance first (the spec's order). */
static pb_status view_columns(pb_sweep_view *v) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        v->columns[c] = malloc(sizeof(int) * ((size_t)v->n_sites + 1));
        if (!v->columns[c])
            return pb_fail(PB_ERR_OOM, "sweep results: out of memory for %lld sites", (long long)v->n_sites);
    }
    for (int64_t s = 0; s < v->n_sites; s++) {
        const pb_site_result *r = &v->sites[s].r;
        int c = (int)r->component;
        if (c < 0 || c >= PB_COMPONENT_COUNT)
            return pb_fail(PB_ERR_ARG, "sweep results: site %lld has component %d", (long long)s, c);
        if (r->position != INT32_MIN && pb_sweep_view_column(v, r->component, r->position) < 0)
            v->columns[c][v->n_columns[c]++] = r->position;
    }
    return PB_OK;
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
    for (int64_t s = 0; s < v->n_sites; s++) {
        pb_site_view *site = &v->sites[s];
        PB_TRY(pb_sweep_get_site(sweep, s, &site->r));
        site->all_positions = site->r.all_positions;
    }
    return view_columns(v);
}

int pb_sweep_view_column(const pb_sweep_view *v, pb_component c, int position) {
    for (int k = 0; k < v->n_columns[c]; k++)
        if (v->columns[c][k] == position)
            return k;
    return -1;
}

void pb_sweep_view_resolve(const pb_sweep_view *v, int pair, int label, int *base, int *source) {
    const pb_pair_spec *p = &v->spec->pairs[pair];
    int t = label < 0 ? p->base.T + label : label;
    *base = t >= 0 && t < p->base.T ? t : -1;
    *source = *base >= 0 ? p->position_map[*base] : -1;
}

int pb_sweep_view_tokens_shared(const pb_sweep_view *v) {
    const pb_pair_spec *a = &v->spec->pairs[0];
    for (int i = 1; i < v->spec->n_pairs; i++) {
        const pb_pair_spec *b = &v->spec->pairs[i];
        if (a->n_positive != b->n_positive || a->n_negative != b->n_negative ||
            (a->n_positive && memcmp(a->positive, b->positive, sizeof(int32_t) * (size_t)a->n_positive) != 0) ||
            (a->n_negative && memcmp(a->negative, b->negative, sizeof(int32_t) * (size_t)a->n_negative) != 0))
            return 0;
    }
    return 1;
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

/* "7042 " Paris", 8441 " Rome"": ids with their text, at most
 * PB_METRIC_MAX_IDS. */
static void print_tokens(FILE *f, const pb_model *model, const int32_t *ids, int n) {
    for (int i = 0; i < n && i < PB_METRIC_MAX_IDS; i++) {
        char text[64];
        fprintf(f, "%s%d", i ? ", " : "", (int)ids[i]);
        if (pb_model_token_text(model, ids[i], text, sizeof text) == PB_OK) {
            fputs(" \"", f);
            for (const char *c = text; *c; c++)
                if ((unsigned char)*c < 0x20)
                    fprintf(f, "\\x%02x", (unsigned char)*c);
                else
                    fputc(*c, f);
            fputc('"', f);
        }
    }
    if (n > PB_METRIC_MAX_IDS)
        fprintf(f, ", ... (%d in all)", n);
}

/* The token sets: pair 0's when every pair shares them. */
static void print_metric_tokens(FILE *f, const pb_sweep_view *v, int diff) {
    const pb_pair_spec *p = &v->spec->pairs[0];
    if (!pb_sweep_view_tokens_shared(v)) {
        fputs(diff ? "positive and negative tokens per pair (results.json: pairs)"
                   : "tokens per pair (results.json: pairs)",
              f);
        return;
    }
    fputs(diff ? "positive " : "tokens ", f);
    print_tokens(f, v->model, p->positive, p->n_positive);
    if (diff) {
        fputs("; negative ", f);
        print_tokens(f, v->model, p->negative, p->n_negative);
    }
}

void pb_sweep_print_metric(FILE *f, const pb_sweep_view *v) {
    const pb_metric_spec *m = &v->spec->metric;
    fprintf(f, "%s (", pb_sweep_metric_name(v->summary.metric));
    switch (v->summary.metric) {
    case PB_METRIC_LOGIT_DIFF: print_metric_tokens(f, v, 1); break;
    case PB_METRIC_LOGPROB:
    case PB_METRIC_REFUSAL_SCORE: print_metric_tokens(f, v, 0); break;
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
