/* pb_report_html_write: report.html, one self-contained page.
 *
 *   header     model, mode, metric, pairs, baselines, rows executed, FLOPs saved, wall time
 *   prompts    each pair's two prompts: decoded text and tokens (ids from
 *              pb_sweep_get_pair_tokens, text from the model's vocabulary), differing
 *              positions marked
 *   heatmaps   one inline SVG per component and position kind: residual-width components as
 *              layer x position (columns labelled by pair 0's clean prompt, or the caller's
 *              labels, and the axis says whose), head components as layer x head (at their
 *              one position; at several, the mean and then one map per position); each
 *              component on its own diverging scale, centred at 0 and ending at its largest
 *              |effect|, written in its legend; SVG and PNG downloads per figure
 *   tables     the top sites by |effect|, refusal rates, generated texts, direction, notes
 *
 * Structure for tests and tools: every heatmap is <svg class="heatmap"
 * id="heatmap-<component>[_all|_groups][_pos<p>|<group>]" data-rows data-cols
 * data-range> holding exactly rows x cols <rect class="cell">, each with a
 * <title> tooltip; data-range is the component's largest |effect|. Values come
 * from the sweep's getters through pb_sweep_view, as results.json's do. The
 * page is built in memory and written with pb_write_file_atomic. */
#define _POSIX_C_SOURCE 200809L
#include "analysis/report_html.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/svg_heatmap.h"
#include "attribution/atp.h"
#include "util/internal.h"
#include "model/model.h"
#include "formats/npy.h"
#include "patching/sweep_view.h"
#include "util/utf8.h"

enum {
    TOP_SITES = 20,
    LABEL_MAX_CHARS = 16, /* longer token labels are cut with an ellipsis */
    MAX_KEY_MAPS = 32,    /* head components: one map per position up to this many positions */
    PAIRS_OPEN = 4,       /* pairs whose prompts are shown open; the rest are folded */
    PAIRS_SHOWN = 64,     /* pairs whose prompts are shown at all */
    VARIANT_EACH = 0,     /* one site per position */
    VARIANT_ALL,          /* every position together */
    VARIANT_GROUPS,       /* listed groups of positions together */
    N_VARIANTS
};

/* ---- text ----------------------------------------------------------------- */

static void put_text(FILE *f, const char *s) { pb_html_put_escaped(f, s, PB_HTML_TEXT, 0); }

/* Effects and baselines: 4 decimals, "n/a" for NaN. */
static const char *format_number(double x, char *buf, size_t size) {
    if (isnan(x))
        snprintf(buf, size, "n/a");
    else if (fabs(x) < 1e4)
        snprintf(buf, size, "%.4f", x);
    else
        snprintf(buf, size, "%.4g", x);
    return buf;
}

static void put_duration(FILE *f, double seconds) {
    if (seconds < 60)
        fprintf(f, "%.1f s", seconds);
    else if (seconds < 3600)
        fprintf(f, "%d min %02d s", (int)(seconds / 60), (int)fmod(seconds, 60));
    else
        fprintf(f, "%d h %02d min", (int)(seconds / 3600), (int)fmod(seconds / 60, 60));
}

/* ---- colours -------------------------------------------------------------- */

/* ---- the sites of each component, by (layer, head, position or group) ---- */

typedef struct component_sites {
    int n_heads; /* 0: residual width */
    int used[N_VARIANTS];
    int n_keys[N_VARIANTS];     /* position columns, 1, groups */
    int64_t *first[N_VARIANTS]; /* (n_layers, max(n_heads, 1), n_keys): first site of each cell, -1 none */
    int n_groups;
    const pb_site_view **groups; /* (n_sites) the first site of each group, in order of appearance */
    const int *columns;          /* the position of each column (the view's axis of the component) */
} component_sites;

static void sites_free(component_sites *cs) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        for (int k = 0; k < N_VARIANTS; k++)
            free(cs[c].first[k]);
        free(cs[c].groups);
    }
}

static int variant_of(const pb_site_view *site) {
    if (site->r.position != INT32_MIN)
        return VARIANT_EACH;
    return site->all_positions ? VARIANT_ALL : VARIANT_GROUPS;
}

static int find_group(const component_sites *cs, const pb_site_result *r) {
    for (int i = 0; i < cs->n_groups; i++) {
        const pb_site_result *g = &cs->groups[i]->r;
        if (g->n_positions == r->n_positions &&
            (r->n_positions == 0 || memcmp(g->positions, r->positions, sizeof(int) * (size_t)r->n_positions) == 0))
            return i;
    }
    return -1;
}

/* Key of a site within its variant: position column, 0, or group index. */
static int site_key(const pb_sweep_view *v, const component_sites *cs, const pb_site_view *site) {
    switch (variant_of(site)) {
    case VARIANT_EACH: return pb_sweep_view_column(v, site->r.component, site->r.position);
    case VARIANT_ALL: return 0;
    default: return find_group(cs, &site->r);
    }
}

static pb_status sites_build(const pb_sweep_view *v, component_sites *cs) {
    const int n_layers = v->cfg->n_layers;
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        cs[c].n_heads = pb_component_head_count((pb_component)c, v->cfg);
        cs[c].groups = calloc((size_t)v->n_sites + 1, sizeof *cs[c].groups);
        if (!cs[c].groups)
            return pb_fail(PB_ERR_OOM, "report.html: out of memory");
    }
    for (int64_t s = 0; s < v->n_sites; s++) {
        const pb_site_view *site = &v->sites[s];
        int c = (int)site->r.component;
        if (c < 0 || c >= PB_COMPONENT_COUNT)
            return pb_fail(PB_ERR_ARG, "report.html: site %lld has component %d", (long long)s, c);
        int variant = variant_of(site);
        cs[c].used[variant] = 1;
        if (variant == VARIANT_GROUPS && find_group(&cs[c], &site->r) < 0)
            cs[c].groups[cs[c].n_groups++] = site;
    }
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        cs[c].n_keys[VARIANT_EACH] = v->n_columns[c];
        cs[c].columns = v->columns[c];
        cs[c].n_keys[VARIANT_ALL] = 1;
        cs[c].n_keys[VARIANT_GROUPS] = cs[c].n_groups;
        int heads = cs[c].n_heads ? cs[c].n_heads : 1;
        for (int k = 0; k < N_VARIANTS; k++) {
            if (!cs[c].used[k])
                continue;
            size_t count = (size_t)n_layers * (size_t)heads * (size_t)cs[c].n_keys[k];
            cs[c].first[k] = malloc((count ? count : 1) * sizeof(int64_t));
            if (!cs[c].first[k])
                return pb_fail(PB_ERR_OOM, "report.html: out of memory for a %zu-cell heatmap", count);
            for (size_t i = 0; i < count; i++)
                cs[c].first[k][i] = -1;
        }
    }
    for (int64_t s = 0; s < v->n_sites; s++) {
        const pb_site_view *site = &v->sites[s];
        component_sites *g = &cs[site->r.component];
        int heads = g->n_heads ? g->n_heads : 1, variant = variant_of(site);
        int head = g->n_heads ? site->r.head : 0, key = site_key(v, g, site);
        if (site->r.layer < 0 || site->r.layer >= n_layers || head < 0 || head >= heads || key < 0 ||
            key >= g->n_keys[variant])
            continue; /* e.g. a head component patched without one head: only in the tables */
        int64_t *cell = &g->first[variant][((int64_t)site->r.layer * heads + head) * g->n_keys[variant] + key];
        if (*cell < 0)
            *cell = s; /* a cell listed twice keeps its first site, as the .npy files do */
    }
    return PB_OK;
}

/* ---- position labels ------------------------------------------------------ */

typedef struct labels {
    const char *const *text; /* (n) */
    int n;
    char **owned;   /* decoded from the model when the caller gave none */
    char *differs;  /* (n) 1 where pair 0's other prompt has another token; NULL: not compared */
    char from[160]; /* whose tokens these are: "pair 0's clean prompt" */
    char other[32]; /* the prompt compared with: "corrupted" */
} labels;

static void labels_free(labels *l) {
    if (l->owned)
        for (int i = 0; i < l->n; i++)
            free(l->owned[i]);
    free(l->owned);
    free(l->differs);
}

/* "clean", "corrupted", "base", "source" for a pair's run (source = 1: the
 * run whose activations are patched in). */
static const char *run_name(const pb_sweep_view *v, int pair, int source) {
    if (v->summary.mode == PB_MODE_INTERCHANGE)
        return source ? "source" : "base";
    int clean_is_source = pair < v->spec->n_pairs ? v->spec->pairs[pair].clean_is_source : 1;
    return source == clean_is_source ? "clean" : "corrupted";
}

/* Pair 0's prompt that names the columns: the clean one (denoising and
 * noising share positions, and the clean prompt is the one a reader knows),
 * the base one in interchange (positions are the base run's). Its tokens
 * are decoded with the model's vocabulary; a token it cannot decode stays
 * unlabelled. */
static pb_status labels_decode(labels *l, const pb_sweep_view *v) {
    int source = v->summary.mode == PB_MODE_INTERCHANGE ? 0 : v->spec->pairs[0].clean_is_source;
    const int32_t *ids = NULL, *other = NULL;
    int T = 0, T_other = 0;
    PB_TRY(pb_sweep_get_pair_tokens(v->sweep, 0, source, &ids, &T));
    PB_TRY(pb_sweep_get_pair_tokens(v->sweep, 0, !source, &other, &T_other));
    snprintf(l->from, sizeof l->from, "pair 0's %s prompt", run_name(v, 0, source));
    l->owned = calloc((size_t)T + 1, sizeof *l->owned);
    l->differs = calloc((size_t)T + 1, 1);
    if (!l->owned || !l->differs)
        return pb_fail(PB_ERR_OOM, "report.html: out of memory");
    l->n = T;
    int compare = v->summary.mode != PB_MODE_INTERCHANGE && T_other == T, any = 0;
    char buf[256];
    for (int i = 0; i < T; i++) {
        l->differs[i] = compare && ids[i] != other[i];
        any |= l->differs[i];
        if (pb_model_token_text(v->model, ids[i], buf, sizeof buf) != PB_OK)
            continue;
        l->owned[i] = strdup(buf);
        if (!l->owned[i])
            return pb_fail(PB_ERR_OOM, "report.html: out of memory");
    }
    l->text = (const char *const *)l->owned;
    if (any) /* e.g. not for a noise corruption, which keeps the clean tokens */
        snprintf(l->other, sizeof l->other, "%s", run_name(v, 0, !source));
    return PB_OK;
}

/* The caller's labels (said to come from extras->position_labels_from),
 * else pair 0's prompt as labels_decode reads it. */
static pb_status labels_load(labels *l, const pb_sweep_view *v, const pb_report_extras *extras) {
    memset(l, 0, sizeof *l);
    if (extras && extras->position_labels && extras->n_position_labels > 0) {
        l->text = extras->position_labels;
        l->n = extras->n_position_labels;
        snprintf(l->from, sizeof l->from, "%s",
                 extras->position_labels_from ? extras->position_labels_from : "the reference prompt");
        return PB_OK;
    }
    if (v->n_pairs < 1)
        return PB_OK;
    return labels_decode(l, v);
}

/* The label index of a spec position (negative: end-aligned), or -1. */
static int label_index(const labels *l, int position) {
    int i = position >= 0 ? position : l->n + position;
    return i >= 0 && i < l->n ? i : -1;
}

/* The token at a spec position, or NULL. */
static const char *label_at(const labels *l, int position) {
    int i = label_index(l, position);
    return i >= 0 ? l->text[i] : NULL;
}

/* ---- heatmaps ------------------------------------------------------------- */

/* One heatmap: a component's sites of one variant, all of them or (head
 * components) those at one position key. */
typedef struct heatmap_spec {
    const component_sites *g;
    pb_component component;
    int variant;
    int key;        /* head components: the one position (or group) shown; -1: the mean over every key */
    double max_abs; /* the largest |effect| in the component's array (0: none) */
    double range;   /* the colour scale's end: max_abs, or 1 when there is no value */
    char id[64];    /* "z", "z_pos3", "resid_pre_all" */
} heatmap_spec;

typedef struct cell_value {
    double effect;   /* NaN: no value */
    double stderr_;  /* NaN when the cell is a mean over positions */
    double min, max; /* over the positions averaged */
    int n_sites;     /* sites behind the cell (0: not patched) */
    int n_finite;
    int key; /* the position column or group of a single-site cell */
} cell_value;

/* Residual width: the cell's one site. Heads: the site at key, or (key -1)
 * the mean over the positions (or groups) that have a site. */
static cell_value cell_at(const pb_sweep_view *v, const heatmap_spec *m, int layer, int col) {
    const component_sites *g = m->g;
    cell_value out = {NAN, NAN, NAN, NAN, 0, 0, -1};
    int heads = g->n_heads ? g->n_heads : 1, n_keys = g->n_keys[m->variant];
    int head = g->n_heads ? col : 0;
    int key_lo = g->n_heads ? (m->key >= 0 ? m->key : 0) : col;
    int key_hi = g->n_heads ? (m->key >= 0 ? m->key + 1 : n_keys) : col + 1;
    double sum = 0;
    for (int k = key_lo; k < key_hi; k++) {
        int64_t s = g->first[m->variant][((int64_t)layer * heads + head) * n_keys + k];
        if (s < 0)
            continue;
        const pb_site_result *r = &v->sites[s].r;
        out.n_sites++;
        out.key = k;
        out.stderr_ = r->standard_error;
        if (isnan(r->effect))
            continue;
        out.n_finite++;
        sum += r->effect;
        if (out.n_finite == 1 || r->effect < out.min)
            out.min = r->effect;
        if (out.n_finite == 1 || r->effect > out.max)
            out.max = r->effect;
    }
    if (out.n_finite)
        out.effect = sum / out.n_finite;
    if (out.n_sites != 1)
        out.stderr_ = NAN;
    return out;
}

/* Head components: whether position key has any site. */
static int key_used(const component_sites *g, int variant, int n_layers, int key) {
    int n_keys = g->n_keys[variant], heads = g->n_heads ? g->n_heads : 1;
    for (int64_t i = 0; i < (int64_t)n_layers * heads; i++)
        if (g->first[variant][i * n_keys + key] >= 0)
            return 1;
    return 0;
}

/* Head components: the position keys that have any site (how many, and the first). */
static int keys_used(const component_sites *g, int variant, int n_layers, int *first_key) {
    int count = 0;
    *first_key = -1;
    for (int k = 0; k < g->n_keys[variant]; k++)
        if (key_used(g, variant, n_layers, k) && count++ == 0)
            *first_key = k;
    return count;
}

/* The largest |effect| over every cell of a component's variant: the
 * largest |value| of its .npy array, which holds the same first sites. */
static double component_max_abs(const pb_sweep_view *v, const component_sites *g, int variant) {
    int heads = g->n_heads ? g->n_heads : 1;
    int64_t n = (int64_t)v->cfg->n_layers * heads * g->n_keys[variant];
    double max_abs = 0;
    for (int64_t i = 0; i < n; i++) {
        int64_t s = g->first[variant][i];
        double e = s >= 0 ? fabs(v->sites[s].r.effect) : NAN;
        if (isfinite(e) && e > max_abs)
            max_abs = e;
    }
    return max_abs;
}

/* "pos 5 (“tok”)", "all positions", "positions 3,4,5" for a key of a variant. */
static void put_key_text(FILE *f, const pb_sweep_view *v, const component_sites *g, const labels *l, int variant,
                         int key) {
    if (variant == VARIANT_EACH) {
        int p = g->columns[key];
        const char *token = label_at(l, p);
        fprintf(f, "pos %d", p);
        if (token) {
            fputs(" “", f);
            pb_html_put_escaped(f, token, PB_HTML_LABEL, LABEL_MAX_CHARS);
            fputs("”", f);
        }
    } else if (variant == VARIANT_ALL) {
        fputs("all positions", f);
    } else {
        char buf[64];
        pb_sweep_format_position(g->groups[key], buf, sizeof buf);
        fprintf(f, "positions %s", buf);
    }
}

typedef struct layout {
    int left, top, cell_w, cell_h, grid_w, grid_h, width, height, legend_x, legend_h;
} layout;

/* compact: small multiples (one head map per position), narrower cells without values. */
static layout heatmap_layout(int rows, int cols, int token_columns, int compact) {
    layout L;
    L.cell_w = compact ? 22 : cols <= 12 ? 40 : cols <= 24 ? 34 : cols <= 48 ? 26 : 18;
    L.cell_h = compact && rows > 8 ? 14 : rows <= 8 ? 26 : rows <= 16 ? 20 : 16;
    L.left = 64;
    L.top = token_columns ? 104 : 40;
    L.grid_w = cols * L.cell_w;
    L.grid_h = rows * L.cell_h;
    L.legend_x = L.left + L.grid_w + (token_columns ? 56 : 28);
    L.width = L.legend_x + 90;
    L.legend_h = L.grid_h < 90 ? 90 : L.grid_h > 300 ? 300 : L.grid_h;
    L.height = L.top + (L.grid_h + 40 > L.legend_h + 30 ? L.grid_h + 40 : L.legend_h + 30) + 4;
    return L;
}

/* The colour bar from -range to +range, its ends written out (the scale of
 * this heatmap alone), and the n/a swatch. */
static void put_legend(FILE *f, const layout *L, const char *id, double range) {
    int bar_h = L->legend_h;
    int x = L->legend_x, y = L->top;
    char buf[32];
    fprintf(f, "<defs><linearGradient id=\"scale-%s\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\">", id);
    static const double offsets[5] = {0, 0.25, 0.5, 0.75, 1};
    for (int i = 0; i < 5; i++) {
        char colour[8];
        pb_colour_diverging(range * (1 - 2 * offsets[i]), range, colour);
        fprintf(f, "<stop offset=\"%g\" stop-color=\"%s\"/>", offsets[i], colour);
    }
    fputs("</linearGradient></defs>\n", f);
    fprintf(f, "<g class=\"legend\"><text x=\"%d\" y=\"%d\" class=\"axis-title\">effect</text>", x, y - 8);
    fprintf(
        f,
        "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"%d\" fill=\"url(#scale-%s)\" stroke=\"#888\" stroke-width=\"0.5\"/>",
        x, y, bar_h, id);
    snprintf(buf, sizeof buf, "%+.3g", range);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick scale-max\">%s</text>", x + 19, y + 4, buf);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">0</text>", x + 19, y + bar_h / 2 + 4);
    snprintf(buf, sizeof buf, "%+.3g", -range);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick scale-min\">%s</text>", x + 19, y + bar_h + 4, buf);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"10\" fill=\"%s\" stroke=\"#888\" stroke-width=\"0.5\"/>",
            x, y + bar_h + 14, pb_colour_nan);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">n/a</text></g>\n", x + 19, y + bar_h + 23);
}

/* A cell's hover title after its hook: where, and its value. */
static void put_cell_title(FILE *f, const pb_sweep_view *v, const labels *l, const heatmap_spec *m, int col,
                           const cell_value *cv, int first_key, int n_keys_used) {
    char e[32], se[32], lo[32], hi[32];
    if (!m->g->n_heads) {
        put_key_text(f, v, m->g, l, m->variant, col);
    } else {
        fprintf(f, "head %d ", col);
        if (cv->n_sites == 1 || (cv->n_sites == 0 && (m->key >= 0 || n_keys_used == 1)))
            put_key_text(f, v, m->g, l, m->variant, cv->n_sites == 1 ? cv->key : m->key >= 0 ? m->key : first_key);
        else
            fprintf(f, "mean over %d %s", cv->n_sites, m->variant == VARIANT_GROUPS ? "groups" : "positions");
    }
    fputs(": ", f);
    if (cv->n_sites == 0)
        fputs("not patched", f);
    else if (isnan(cv->effect))
        fputs("n/a (no usable pair, or not run)", f);
    else if (cv->n_sites == 1)
        fprintf(f, "%s ± %s", format_number(cv->effect, e, sizeof e),
                v->summary.n_pairs_used > 1 ? format_number(cv->stderr_, se, sizeof se) : "n/a (one pair)");
    else
        fprintf(f, "%s (min %s, max %s over %d)", format_number(cv->effect, e, sizeof e),
                format_number(cv->min, lo, sizeof lo), format_number(cv->max, hi, sizeof hi), cv->n_finite);
}

/* The cells of a heatmap (rows layers, columns positions or heads), each
 * with its hover title and, where it fits, its value. */
static void put_cells(FILE *f, const pb_sweep_view *v, const labels *l, const layout *L, const heatmap_spec *m) {
    const char *hook = pb_component_hook(m->component);
    int heads = m->g->n_heads, rows = v->cfg->n_layers, cols = heads ? heads : m->g->n_keys[m->variant];
    int first_key = -1, n_keys_used = heads ? keys_used(m->g, m->variant, rows, &first_key) : 0;
    int show_values = L->cell_w >= 34 && L->cell_h >= 20;
    char colour[8];
    for (int layer = 0; layer < rows; layer++) {
        for (int col = 0; col < cols; col++) {
            cell_value cv = cell_at(v, m, layer, col);
            int x = L->left + col * L->cell_w, y = L->top + layer * L->cell_h;
            pb_colour_diverging(cv.effect, m->range, colour);
            fprintf(f, "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"%s><title>", x, y,
                    L->cell_w, L->cell_h, colour, isnan(cv.effect) ? " data-nan=\"1\"" : "");
            fprintf(f, "blocks.%d.%s ", layer, hook);
            put_cell_title(f, v, l, m, col, &cv, first_key, n_keys_used);
            fputs("</title></rect>", f);
            if (show_values && !isnan(cv.effect))
                fprintf(f, "<text class=\"value%s\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2f</text>",
                        fabs(cv.effect / m->range) > 0.55 ? " light" : "", x + L->cell_w / 2, y + L->cell_h / 2 + 4,
                        fabs(cv.effect) < 0.005 ? 0.0 : cv.effect); /* no "-0.00" */
        }
        fputc('\n', f);
    }
}

/* The token above a position column, bold where pair 0's other prompt has
 * another token, with the full token in its title. */
static void put_token_label(FILE *f, const labels *l, int p, int cx, int top) {
    int i = label_index(l, p);
    const char *token = i >= 0 ? l->text[i] : NULL;
    int differs = i >= 0 && l->differs && l->differs[i];
    fprintf(f, "<text class=\"col-label token%s\" transform=\"translate(%d,%d) rotate(-55)\">",
            differs ? " differs" : "", cx + 3, top - 6);
    fprintf(f, "<title>position %d: ", p);
    pb_html_put_escaped(f, token, PB_HTML_LABEL, 0);
    if (differs)
        fprintf(f, " (the %s prompt has another token here)", l->other);
    fputs("</title>", f);
    pb_html_put_escaped(f, token ? token : "", PB_HTML_LABEL, LABEL_MAX_CHARS);
    fputs("</text>", f);
}

/* Row and column labels and the axis titles; a position axis says whose
 * tokens label it, and that it counts from the end when it does. */
static void put_axes(FILE *f, const pb_sweep_view *v, const labels *l, const layout *L, const heatmap_spec *m,
                     int token_columns) {
    int heads = m->g->n_heads, rows = v->cfg->n_layers, cols = heads ? heads : m->g->n_keys[m->variant];
    fprintf(
        f,
        "<text class=\"axis-title\" transform=\"translate(14,%d) rotate(-90)\" text-anchor=\"middle\">layer</text>\n",
        L->top + L->grid_h / 2);
    for (int layer = 0; layer < rows; layer++)
        fprintf(f, "<text class=\"row-label\" x=\"%d\" y=\"%d\" text-anchor=\"end\">%d</text>", L->left - 6,
                L->top + layer * L->cell_h + L->cell_h / 2 + 4, layer);
    fputc('\n', f);
    int label_every = L->cell_w >= 18 ? 1 : 2;
    for (int col = 0; col < cols; col++) {
        int cx = L->left + col * L->cell_w + L->cell_w / 2, y = L->top + L->grid_h + 14;
        if (token_columns)
            put_token_label(f, l, m->g->columns[col], cx, L->top);
        if (col % label_every != 0)
            continue;
        fprintf(f, "<text class=\"col-label\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">", cx, y);
        if (heads)
            fprintf(f, "%d", col);
        else if (m->variant == VARIANT_EACH)
            fprintf(f, "%d", m->g->columns[col]);
        else
            put_key_text(f, v, m->g, l, m->variant, col);
        fputs("</text>", f);
    }
    fprintf(f, "\n<text class=\"axis-title\" x=\"%d\" y=\"%d\">", L->left, L->top + L->grid_h + 32);
    if (heads) {
        fputs("head", f);
    } else if (m->variant == VARIANT_EACH) {
        fputs(v->positions_from_end ? "position from the end" : "position", f);
        if (token_columns) {
            fputs(" · tokens of ", f);
            put_text(f, l->from);
        }
    }
    fputs("</text>\n", f);
}

/* The figure's caption: what is patched, at which position. */
static void put_caption(FILE *f, const pb_sweep_view *v, const labels *l, const heatmap_spec *m) {
    const char *name = pb_component_name(m->component), *hook = pb_component_hook(m->component);
    int first_key = -1, n_keys_used = m->g->n_heads ? keys_used(m->g, m->variant, v->cfg->n_layers, &first_key) : 0;
    fprintf(f, "<figcaption><h3>%s <code>blocks.L.%s</code></h3><p>", name, hook);
    if (!m->g->n_heads) {
        fputs(m->variant == VARIANT_EACH  ? "Layer × position: each position patched alone."
              : m->variant == VARIANT_ALL ? "Layer: every position patched together."
                                          : "Layer × group: each listed group of positions patched together.",
              f);
    } else {
        fprintf(f, "Layer × %s head ",
                pb_component_info_of(m->component)->heads == PB_HEADS_KV ? "key-value" : "query");
        if (m->key >= 0 || n_keys_used == 1) {
            fputs("at ", f);
            put_key_text(f, v, m->g, l, m->variant, m->key >= 0 ? m->key : first_key);
            fputs(".", f);
        } else {
            fprintf(f, "— mean over %d %s (each patched on its own; one map per %s follows).", n_keys_used,
                    m->variant == VARIANT_GROUPS ? "groups of positions" : "positions",
                    m->variant == VARIANT_GROUPS ? "group" : "position");
        }
    }
    fprintf(f, " Scale ±%.3g: the largest |effect| of %s.</p>", m->range, name);
    char svg_id[80];
    snprintf(svg_id, sizeof svg_id, "heatmap-%s", m->id);
    pb_svg_put_export_links(f, svg_id, m->id);
    fputs("</figcaption>\n", f);
}

/* One <figure>: caption with its export links, the SVG, a line for the hovered cell. */
static void put_heatmap(FILE *f, const pb_sweep_view *v, const labels *l, const heatmap_spec *m) {
    int heads = m->g->n_heads, rows = v->cfg->n_layers, cols = heads ? heads : m->g->n_keys[m->variant];
    int token_columns = !heads && m->variant == VARIANT_EACH && l->n > 0;
    layout L = heatmap_layout(rows, cols, token_columns, m->key >= 0);
    if (token_columns) { /* room for the position axis's title, about 7.5 px a character */
        int chars = 40;
        for (const char *c = l->from; *c; c++)
            chars += ((unsigned char)*c & 0xC0) != 0x80;
        if (L.left + chars * 15 / 2 > L.width)
            L.width = L.left + chars * 15 / 2;
    }
    fputs("<figure class=\"heatmap-figure\">\n", f);
    put_caption(f, v, l, m);
    fprintf(f,
            "<div class=\"scroll\"><svg class=\"heatmap\" id=\"heatmap-%s\" data-rows=\"%d\" data-cols=\"%d\" "
            "data-range=\"%.17g\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n",
            m->id, rows, cols, m->max_abs, L.width, L.height, L.width, L.height);
    fprintf(f, "<title>%s: %d rows (layers) × %d columns</title>\n", m->id, rows, cols);
    fprintf(f, "<rect class=\"background\" width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", L.width, L.height);
    put_axes(f, v, l, &L, m, token_columns);
    put_cells(f, v, l, &L, m);
    put_legend(f, &L, m->id, m->range);
    fputs("</svg></div>\n<div class=\"cell-info\">Hover a cell for its value.</div>\n</figure>\n", f);
}

/* Every heatmap of one component's variant: the map itself and, for head
 * components patched at several positions (or groups), one map per
 * position after the mean. All on the component's own scale. */
static void put_component(FILE *f, const pb_sweep_view *v, const component_sites *g, const labels *l, pb_component c,
                          int variant) {
    static const char *const suffix[N_VARIANTS] = {"", "_all", "_groups"};
    heatmap_spec m = {g, c, variant, -1, 0, 1, ""};
    m.max_abs = component_max_abs(v, g, variant);
    m.range = m.max_abs > 0 ? m.max_abs : 1;
    snprintf(m.id, sizeof m.id, "%s%s", pb_component_name(c), suffix[variant]);
    put_heatmap(f, v, l, &m);
    int first_key = -1, n_keys_used = g->n_heads ? keys_used(g, variant, v->cfg->n_layers, &first_key) : 0;
    if (n_keys_used < 2 || n_keys_used > MAX_KEY_MAPS)
        return;
    for (int key = 0; key < g->n_keys[variant]; key++) {
        if (!key_used(g, variant, v->cfg->n_layers, key))
            continue;
        m.key = key;
        if (variant == VARIANT_EACH)
            snprintf(m.id, sizeof m.id, "%s_pos%d", pb_component_name(c), g->columns[key]);
        else
            snprintf(m.id, sizeof m.id, "%s%s%d", pb_component_name(c), suffix[variant], key);
        put_heatmap(f, v, l, &m);
    }
}

/* ---- the page ------------------------------------------------------------- */

static const char *const page_style =
    "body{font-family:'DejaVu Sans',system-ui,sans-serif;font-size:14px;color:#1d1f23;background:#fafafa;"
    "margin:0;line-height:1.45}\n"
    "main{max-width:1280px;margin:0 auto;padding:20px 28px 48px}\n"
    "h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:30px 0 10px;padding-bottom:4px;"
    "border-bottom:1px solid #ddd}h3{font-size:15px;margin:0 0 2px}\n"
    ".subtitle{color:#666;margin:0 0 16px}code{font-family:'DejaVu Sans Mono',monospace;font-size:12.5px;"
    "color:#444}\n"
    ".cards{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0 14px}\n"
    ".card{background:#fff;border:1px solid #e1e1e1;border-radius:6px;padding:8px 14px;min-width:120px}\n"
    ".card .k{font-size:11.5px;color:#666;text-transform:uppercase;letter-spacing:.03em}"
    ".card .v{font-size:18px;font-weight:600;font-variant-numeric:tabular-nums}\n"
    "table{border-collapse:collapse;background:#fff;border:1px solid #e1e1e1}\n"
    "th,td{padding:4px 10px;text-align:left;border-bottom:1px solid #eee;vertical-align:top}\n"
    "th{background:#f3f3f3;font-weight:600;font-size:13px}\n"
    "td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}\n"
    "table.summary th{background:#fff;width:170px;color:#555;font-weight:normal}\n"
    ".warn{background:#fff4e5;border:1px solid #f0b46a;border-radius:6px;padding:8px 12px;margin:10px 0}\n"
    ".figures{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}\n"
    ".heatmap-figure{flex:0 1 auto;width:min-content;min-width:340px;max-width:100%;box-sizing:border-box;margin:0;background:#fff;border:1px solid #e1e1e1;border-radius:6px;padding:12px 14px}\n"
    ".heatmap-figure p{margin:0 0 6px;color:#555}\n"
    ".scroll{overflow-x:auto}\n"
    ".export{font-size:12px;margin:0 0 4px}.export a{color:#2166ac}\n"
    ".cell-info{font-family:'DejaVu Sans Mono',monospace;font-size:12px;color:#444;min-height:16px;margin-top:4px}\n"
    ".pair{background:#fff;border:1px solid #e1e1e1;border-radius:6px;padding:8px 14px;margin:0 0 10px}\n"
    ".prompt{margin:4px 0 8px}.prompt .run{font-weight:600;font-size:13px}\n"
    ".tokens{display:flex;flex-wrap:wrap;gap:3px;margin-top:3px}\n"
    ".tok{font-family:'DejaVu Sans Mono',monospace;font-size:12.5px;background:#f1f1f1;border:1px solid #ddd;"
    "border-radius:3px;padding:0 4px;white-space:pre}.tok sub{color:#888;font-size:9.5px;margin-left:2px}\n"
    ".tok.differs{background:#fde0c5;border-color:#e08a3c;font-weight:700}.tok.noised{background:#d9e8f5}\n"
    "details summary{cursor:pointer;color:#2166ac;margin:6px 0}\n"
    ".swatch{display:inline-block;width:11px;height:11px;border:1px solid #999;margin-right:6px;vertical-align:-1px}\n"
    ".sig{color:#b2182b;font-weight:700}\n"
    ".bar{display:block;height:9px;background:#b2182b}"
    ".bar-bg{display:block;position:relative;width:140px;height:9px;background:#eee;margin-top:5px}\n"
    ".ci{position:absolute;top:3px;height:3px;background:#222}.note{color:#777;font-size:12px}\n"
    ".generation{background:#fff;border:1px solid #e1e1e1;border-radius:6px;padding:10px 14px;margin:0 0 12px}\n"
    ".generation h3 .badge{font-size:11.5px;font-weight:600;border-radius:10px;padding:1px 8px;margin-left:8px}\n"
    ".badge.refused{background:#fbe3e4;color:#9f1c2b}.badge.complied{background:#e2f0e5;color:#1f6b35}"
    ".badge.unjudged{background:#eee;color:#555}\n"
    "pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;border:1px solid #eee;border-radius:4px;"
    "padding:8px 10px;margin:4px 0;font-family:'DejaVu Sans Mono',monospace;font-size:12.5px}\n"
    ".label{font-size:12px;color:#666;margin-top:6px}\n"
    ".prose{white-space:pre-wrap}\n"
    "footer{color:#888;font-size:12px;margin-top:30px}\n";

static void put_card(FILE *f, const char *key, const char *value) {
    fputs("<div class=\"card\"><div class=\"k\">", f);
    put_text(f, key);
    fputs("</div><div class=\"v\">", f);
    put_text(f, value);
    fputs("</div></div>\n", f);
}

/* The summary table's rows line (and an estimate's verification). */
static void put_rows(FILE *f, const pb_sweep_view *v, int estimate) {
    const pb_sweep_summary *sum = &v->summary;
    if (estimate) {
        fprintf(f, "<tr><th>Rows</th><td>%lld sites × %d pairs = %lld rows, each estimated", (long long)sum->n_sites,
                sum->n_pairs, (long long)sum->n_rows);
        fputs(" <span class=\"label\">(no patched forward per row)</span></td></tr>\n", f);
    } else {
        fprintf(f, "<tr><th>Rows</th><td>%lld sites × %d pairs = %lld rows; %lld executed, %lld done",
                (long long)sum->n_sites, sum->n_pairs, (long long)sum->n_rows, (long long)sum->n_rows_executed,
                (long long)sum->n_rows_done);
        fputs(" <span class=\"label\">(the rest are exactly 0 by construction)</span></td></tr>\n", f);
    }
    char verdict[512];
    pb_atp_verification_describe(v->sweep, verdict, sizeof verdict);
    if (verdict[0]) {
        fputs("<tr><th>Verification</th><td>", f);
        put_text(f, verdict);
        fputs("</td></tr>\n", f);
    }
}

/* The warning naming the pairs left out of every mean (below the effect floor), if any. */
static void put_pairs_below(FILE *f, const pb_sweep_view *v) {
    int interchange = v->summary.mode == PB_MODE_INTERCHANGE;
    int n_below = pb_sweep_view_pairs_below(v);
    if (n_below) {
        fprintf(f,
                "<div class=\"warn\"><b>%d of %d pairs are below the effect floor</b> (|%s − %s| &lt; %g): their "
                "normalised effects are undefined and they are left out of every mean.<ul>",
                n_below, v->n_pairs, interchange ? "source" : "clean", interchange ? "base" : "corrupted",
                v->spec->effect_floor);
        for (int i = 0; i < v->n_pairs; i++) {
            if (v->pair_usable[i])
                continue;
            double clean, corrupted;
            pb_sweep_view_pair_values(v, i, &clean, &corrupted);
            fprintf(f, "<li>pair %d: %s %.6f, %s %.6f</li>", i, interchange ? "source" : "clean", clean,
                    interchange ? "base" : "corrupted", corrupted);
        }
        fputs("</ul></div>\n", f);
    }
}

static void put_summary(FILE *f, const pb_sweep_view *v, const pb_report_extras *extras) {
    const pb_sweep_summary *sum = &v->summary;
    const pb_model_config *cfg = v->cfg;
    int interchange = sum->mode == PB_MODE_INTERCHANGE;
    char buf[128], num[32];

    fputs("<div class=\"cards\">\n", f);
    put_card(f, interchange ? "source baseline" : "clean baseline",
             format_number(sum->clean_baseline, num, sizeof num));
    put_card(f, interchange ? "base baseline" : "corrupted baseline",
             format_number(sum->corrupted_baseline, num, sizeof num));
    put_card(f, interchange ? "total effect (source − base)" : "total effect (clean − corrupted)",
             format_number(sum->total_effect, num, sizeof num));
    snprintf(buf, sizeof buf, "%lld of %lld", (long long)sum->n_significant, (long long)sum->n_sites);
    put_card(f, "significant sites", buf);
    int estimate = v->spec->method != PB_METHOD_EXACT;
    snprintf(buf, sizeof buf, "%lld of %lld", (long long)(estimate ? sum->n_rows : sum->n_rows_executed),
             (long long)sum->n_rows);
    put_card(f, estimate ? "rows estimated" : "rows executed", buf);
    if (sum->flops_naive > 0 && !estimate) {
        snprintf(buf, sizeof buf, "%.1f%%", 100.0 * (1.0 - sum->flops_executed / sum->flops_naive));
        put_card(f, "FLOPs saved", buf);
    }
    if (extras && extras->wall_seconds > 0) {
        char *text = NULL;
        size_t size = 0;
        FILE *m = open_memstream(&text, &size);
        if (m) {
            put_duration(m, extras->wall_seconds);
            if (fclose(m) == 0)
                put_card(f, "wall time", text);
        }
        free(text);
    }
    fputs("</div>\n<table class=\"summary\">\n", f);

    fputs("<tr><th>Model</th><td>", f);
    put_text(f, v->model->path ? v->model->path : "(unknown)");
    fputs(" <span class=\"label\">(", f);
    put_text(f, cfg->arch);
    fprintf(f, ", %d layers, d_model %d, %d query heads, %d key-value heads)</span></td></tr>\n", cfg->n_layers,
            cfg->d_model, cfg->n_heads, cfg->n_kv_heads);
    fprintf(f, "<tr><th>Mode</th><td>%s <span class=\"label\">(%s)</span></td></tr>\n", pb_sweep_mode_name(sum->mode),
            sum->mode == PB_MODE_DENOISING ? "run corrupted, patch clean activations in: sufficiency"
            : sum->mode == PB_MODE_NOISING ? "run clean, patch corrupted activations in: necessity"
                                           : "run base, patch source activations in at mapped positions");
    fputs("<tr><th>Method</th><td>", f);
    put_text(f, pb_sweep_method_description(v->spec));
    fputs("</td></tr>\n", f);
    fputs("<tr><th>Metric</th><td>", f);
    char *metric = NULL;
    size_t metric_size = 0;
    FILE *m = open_memstream(&metric, &metric_size);
    if (m) {
        pb_sweep_print_metric(m, v);
        if (fclose(m) == 0)
            put_text(f, metric);
    }
    free(metric);
    fputs("</td></tr>\n", f);
    fprintf(f, "<tr><th>Pairs</th><td>%d (%d used)</td></tr>\n", sum->n_pairs, sum->n_pairs_used);
    fprintf(f,
            "<tr><th>Effect</th><td>(patched − base) / (source − base), mean ± standard error over used pairs; "
            "significant when |effect| ≥ %g (circuit fraction %.3f)</td></tr>\n",
            v->spec->significance_threshold, sum->circuit_fraction);
    put_rows(f, v, estimate);
    if (sum->flops_naive > 0 && !estimate) {
        fprintf(f, "<tr><th>Compute</th><td>%.3g FLOPs executed, %.3g for one forward per row", sum->flops_executed,
                sum->flops_naive);
        if (sum->flops_executed > 0)
            fprintf(f, " (%.1f× less)", sum->flops_naive / sum->flops_executed);
        fputs("</td></tr>\n", f);
    }
    if (extras && extras->wall_seconds > 0) {
        fputs("<tr><th>Wall time</th><td>", f);
        put_duration(f, extras->wall_seconds);
        fputs("</td></tr>\n", f);
    }
    fputs("</table>\n", f);

    if (sum->n_rows_done < sum->n_rows)
        fprintf(f,
                "<p class=\"warn\">Only %lld of %lld rows are done: the effects of the rest are missing (grey).</p>\n",
                (long long)sum->n_rows_done, (long long)sum->n_rows);
    put_pairs_below(f, v);
}

static void put_top_sites(FILE *f, const pb_sweep_view *v, const component_sites *cs, const labels *l,
                          pb_ranked *order) {
    int64_t n = pb_sweep_view_rank_sites(v, order);
    int64_t shown = n < TOP_SITES ? n : TOP_SITES;
    fprintf(f, "<h2 id=\"top-sites\">Top %lld sites by |effect|</h2>\n", (long long)shown);
    if (shown == 0) {
        fputs("<p>No site has an effect.</p>\n", f);
        return;
    }
    fputs("<table class=\"top-sites\">\n<tr><th>#</th><th>hook</th><th>head</th><th>position</th><th>token</th>"
          "<th>effect ± stderr</th><th>significant</th></tr>\n",
          f);
    char colour[8], e[32], se[32], position[64];
    for (int64_t i = 0; i < shown; i++) {
        const pb_site_view *site = &v->sites[order[i].index];
        const pb_site_result *r = &site->r;
        pb_sweep_format_position(site, position, sizeof position);
        double range = component_max_abs(v, &cs[r->component], variant_of(site));
        pb_colour_diverging(r->effect, range > 0 ? range : 1, colour);
        fprintf(f, "<tr><td class=\"num\">%lld</td><td><code>blocks.%d.%s</code></td><td class=\"num\">",
                (long long)(i + 1), r->layer, pb_component_hook(r->component));
        if (r->head >= 0)
            fprintf(f, "%d", r->head);
        else
            fputs("–", f);
        fprintf(f, "</td><td class=\"num\">%s</td><td><code>", position);
        if (r->position != INT32_MIN)
            pb_html_put_escaped(f, label_at(l, r->position), PB_HTML_LABEL, 24);
        fprintf(f, "</code></td><td class=\"num\"><span class=\"swatch\" style=\"background:%s\"></span>%s ± %s</td>",
                colour, format_number(r->effect, e, sizeof e),
                v->summary.n_pairs_used > 1 ? format_number(r->standard_error, se, sizeof se) : "n/a");
        fprintf(f, "<td>%s</td></tr>\n", r->significant ? "<span class=\"sig\">✓ significant</span>" : "");
    }
    fputs("</table>\n", f);
}

/* One row of the rates table: counts, rate, interval, and a bar with the
 * interval drawn over it. */
static void put_rate(FILE *f, const pb_report_rate *r) {
    int K = r->n_samples > 0 ? r->n_samples : 1, total = r->n * K;
    fputs("<tr><td>", f);
    put_text(f, r->label);
    fprintf(f, "</td><td class=\"num\">%d / %d", r->refused, total);
    if (K > 1)
        fprintf(f, " <span class=\"note\">(%d prompts × %d)</span>", r->n, K);
    fputs("</td><td class=\"num\">", f);
    if (total <= 0) {
        fputs("–</td><td></td><td></td></tr>\n", f);
        return;
    }
    double pct = 100.0 * r->refused / total, w = pct < 0 ? 0 : pct > 100 ? 100 : pct;
    fprintf(f, "%.1f%%</td><td class=\"num\">", pct);
    if (r->n_samples > 0)
        fprintf(f, "%.1f–%.1f%%", 100 * r->low, 100 * r->high);
    fprintf(f, "</td><td><span class=\"bar-bg\"><span class=\"bar\" style=\"width:%.1f%%\"></span>", w);
    if (r->n_samples > 0 && r->high >= r->low)
        fprintf(f, "<span class=\"ci\" style=\"left:%.1f%%;width:%.1f%%\"></span>", 100 * r->low,
                100 * (r->high - r->low));
    fputs("</span></td></tr>\n", f);
}

static void put_extras(FILE *f, const pb_report_extras *x) {
    if (x->rates && x->n_rates > 0) {
        fputs("<h2 id=\"refusal-rates\">Refusal rates</h2>\n<table class=\"rates\">\n"
              "<tr><th>condition</th><th>refused</th><th>rate</th><th>95% interval</th><th></th></tr>\n",
              f);
        for (int i = 0; i < x->n_rates; i++)
            put_rate(f, &x->rates[i]);
        fputs("</table>\n", f);
    }
    if (x->generations && x->n_generations > 0) {
        fputs("<h2 id=\"generations\">Generations</h2>\n", f);
        for (int i = 0; i < x->n_generations; i++) {
            const pb_report_generation *g = &x->generations[i];
            fputs("<div class=\"generation\"><h3>", f);
            put_text(f, g->label ? g->label : "(unlabelled)");
            if (g->refused > 0)
                fputs("<span class=\"badge refused\">refused</span>", f);
            else if (g->refused == 0)
                fputs("<span class=\"badge complied\">complied</span>", f);
            else
                fputs("<span class=\"badge unjudged\">not judged</span>", f);
            fputs("</h3>\n", f);
            if (g->prompt) {
                fputs("<div class=\"label\">prompt</div><pre class=\"prompt\">", f);
                put_text(f, g->prompt);
                fputs("</pre>\n", f);
            }
            fputs("<div class=\"label\">generated</div><pre class=\"text\">", f);
            put_text(f, g->text);
            fputs("</pre></div>\n", f);
        }
    }
    if (x->direction_summary) {
        fputs("<h2 id=\"direction\">Refusal direction</h2>\n<pre class=\"direction\">", f);
        put_text(f, x->direction_summary);
        fputs("</pre>\n", f);
    }
    if (x->notes) {
        fputs("<h2 id=\"notes\">Notes</h2>\n<p class=\"prose\">", f);
        put_text(f, x->notes);
        fputs("</p>\n", f);
    }
}

/* ---- the prompts ------------------------------------------------------------ */

/* What a run is for, beside its name. */
static const char *run_role(int source) {
    return source ? "its activations are patched in" : "the run that is patched";
}

/* One prompt of a pair: its decoded text and its tokens, each with its
 * position and id; a token that differs from the other prompt's at the
 * same position (same lengths only) is marked, as are noised positions. */
static void put_prompt(FILE *f, const pb_sweep_view *v, int pair, int source) {
    const int32_t *ids = NULL, *other = NULL;
    int T = 0, T_other = 0;
    if (pb_sweep_get_pair_tokens(v->sweep, pair, source, &ids, &T) != PB_OK)
        return;
    if (pb_sweep_get_pair_tokens(v->sweep, pair, !source, &other, &T_other) != PB_OK || T_other != T)
        other = NULL;
    const pb_prompt_spec *spec = source ? &v->spec->pairs[pair].source : &v->spec->pairs[pair].base;
    fprintf(f,
            "<div class=\"prompt\" data-pair=\"%d\" data-run=\"%s\"><div class=\"run\">%s <span class=\"label\">(%s; "
            "%d tokens)</span></div>\n",
            pair, run_name(v, pair, source), run_name(v, pair, source), run_role(source), T);
    char *text = NULL;
    if (spec->is_noise) {
        fprintf(f,
                "<p class=\"label\">the clean prompt's tokens with Gaussian noise (%g × the embedding standard "
                "deviation) added to the embeddings at the marked positions</p>\n",
                spec->noise_scale);
    } else if (pb_model_detokenize(v->model, ids, T, &text) == PB_OK) {
        fputs("<pre class=\"prompt-text\">", f);
        put_text(f, text);
        fputs("</pre>\n", f);
    }
    free(text);
    fputs("<div class=\"tokens\">", f);
    char buf[256];
    for (int i = 0; i < T; i++) {
        int noised = 0;
        for (int k = 0; k < spec->n_noise_positions && spec->is_noise; k++)
            noised |= spec->noise_positions[k] == i;
        int differs = other && other[i] != ids[i];
        fprintf(f, "<span class=\"tok%s%s\" data-pos=\"%d\" data-id=\"%d\" title=\"position %d · id %d%s\">",
                differs ? " differs" : "", noised ? " noised" : "", i, ids[i], i, ids[i],
                differs  ? " · the other prompt differs here"
                : noised ? " · noised"
                         : "");
        if (pb_model_token_text(v->model, ids[i], buf, sizeof buf) == PB_OK)
            pb_html_put_escaped(f, buf, PB_HTML_LABEL, 24);
        fprintf(f, "<sub>%d</sub></span>", i);
    }
    fputs("</div></div>\n", f);
}

/* Every pair's prompts (the first PAIRS_OPEN open, the rest folded, at most
 * PAIRS_SHOWN), clean before corrupted (interchange: base before source). */
static void put_prompts(FILE *f, const pb_sweep_view *v) {
    int interchange = v->summary.mode == PB_MODE_INTERCHANGE;
    fputs("<section id=\"prompts\">\n<h2>Prompts</h2>\n<p>Each pair's prompts as the model read them: the decoded "
          "text, then its tokens (· a space, ↵ a newline; the small number is the position). Marked tokens differ "
          "from the pair's other prompt at the same position.</p>\n",
          f);
    int shown = v->n_pairs < PAIRS_SHOWN ? v->n_pairs : PAIRS_SHOWN;
    char a[32], b[32];
    for (int i = 0; i < shown && i < v->spec->n_pairs; i++) {
        if (i == PAIRS_OPEN)
            fprintf(f, "<details><summary>%d more pairs</summary>\n", shown - PAIRS_OPEN);
        double clean, corrupted;
        pb_sweep_view_pair_values(v, i, &clean, &corrupted);
        fprintf(f, "<div class=\"pair\" id=\"pair-%d\"><h3>pair %d <span class=\"label\">%s metric %s · %s metric %s%s",
                i, i, interchange ? "source" : "clean", format_number(clean, a, sizeof a),
                interchange ? "base" : "corrupted", format_number(corrupted, b, sizeof b),
                v->pair_usable[i] ? "" : " · below the effect floor, left out");
        fputs("</span></h3>\n", f);
        int first = interchange ? 0 : v->spec->pairs[i].clean_is_source;
        put_prompt(f, v, i, first);
        put_prompt(f, v, i, !first);
        fputs("</div>\n", f);
    }
    if (shown > PAIRS_OPEN)
        fputs("</details>\n", f);
    if (v->n_pairs > shown)
        fprintf(f, "<p>… and %d more pairs, not shown.</p>\n", v->n_pairs - shown);
    fputs("</section>\n", f);
}

/* How the position columns map onto the prompts. */
static void put_positions_note(FILE *f, const pb_sweep_view *v, const labels *l) {
    int t_min = 0, t_max = 0;
    for (int i = 0; i < v->n_pairs; i++) {
        const int32_t *ids;
        int T = 0;
        if (pb_sweep_get_pair_tokens(v->sweep, i, 0, &ids, &T) != PB_OK)
            continue;
        t_min = i == 0 || T < t_min ? T : t_min;
        t_max = T > t_max ? T : t_max;
    }
    fputs("<p class=\"positions-note\">", f);
    if (l->n > 0) {
        fputs("Position columns are labelled with the tokens of ", f);
        put_text(f, l->from);
        if (l->other[0])
            fprintf(f, " (bold: pair 0's %s prompt has another token there)", l->other);
        fputs(". ", f);
    }
    if (v->positions_from_end)
        fprintf(f,
                "The pairs' prompts differ in length (%d to %d tokens in the patched runs), so positions count from "
                "the end of each prompt: column −k is the k-th last token of every pair's prompt. ",
                t_min, t_max);
    else if (v->n_pairs > 1)
        fputs("Column p is position p of every pair's prompts. ", f);
    if (v->summary.mode == PB_MODE_INTERCHANGE)
        fputs("Positions are the base run's; each pair's position map says which source position is patched into "
              "each.",
              f);
    fputs("</p>\n", f);
}

static void put_page(FILE *f, const pb_sweep_view *v, const component_sites *cs, const labels *l,
                     const pb_report_extras *extras, pb_ranked *order) {
    const char *path = v->model->path ? v->model->path : "model";
    const char *base = strrchr(path, '/');
    base = base && base[1] ? base + 1 : path;
    fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>",
          f);
    if (extras && extras->title)
        put_text(f, extras->title);
    else {
        fputs("Activation patching: ", f);
        put_text(f, base);
    }
    fprintf(f, "</title>\n<style>\n%s</style>\n<style id=\"svg-style\">\n%s</style>\n</head>\n<body>\n<main>\n<h1>",
            page_style, pb_svg_heatmap_style);
    if (extras && extras->title)
        put_text(f, extras->title);
    else {
        fputs("Activation patching: ", f);
        put_text(f, base);
    }
    fputs("</h1>\n<p class=\"subtitle\">patchbay activation-patching report</p>\n<section id=\"summary\">\n", f);
    put_summary(f, v, extras);
    fputs("</section>\n", f);

    put_prompts(f, v);
    fputs("<section id=\"heatmaps\">\n<h2>Heatmaps</h2>\n", f);
    fprintf(f,
            "<p>Colour: the mean normalised effect over the %d used pair%s. Each component has its own scale, "
            "symmetric around 0 and ending at its largest |effect| (its legend says the value). Red: the patch "
            "moves the metric towards the source run (1 = all the way); blue: away from it; grey: no value. "
            "Hover a cell for its hook, position, head and effect ± standard error; each figure downloads as "
            "SVG or PNG.</p>\n",
            v->summary.n_pairs_used, v->summary.n_pairs_used == 1 ? "" : "s");
    put_positions_note(f, v, l);
    int any = 0;
    fputs("<div class=\"figures\">\n", f);
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        for (int k = 0; k < N_VARIANTS; k++)
            if (cs[c].used[k]) {
                put_component(f, v, &cs[c], l, (pb_component)c, k);
                any = 1;
            }
    fputs("</div>\n", f);
    if (!any)
        fputs("<p>No sites.</p>\n", f);
    fputs("</section>\n<section>\n", f);
    put_top_sites(f, v, cs, l, order);
    fputs("</section>\n", f);
    if (extras) {
        fputs("<section id=\"extras\">\n", f);
        put_extras(f, extras);
        fputs("</section>\n", f);
    }
    fputs("<footer>Written by patchbay. Every number of the sweep is also in results.json (docs/patching.md defines "
          "them)",
          f);
    if (extras && extras->extras_file) {
        fputs("; the rates, scores and texts of this page's last sections, in ", f);
        put_text(f, extras->extras_file);
    } else if (extras)
        fputs("; this page's last sections (rates, scores, texts) are on this page only", f);
    fputs(".</footer>\n</main>\n", f);
    fprintf(f, "<script>\n%s</script>\n</body>\n</html>\n", pb_svg_page_script);
}

pb_status pb_report_html_write(const pb_sweep *sweep, const char *path, const pb_report_extras *extras) {
    if (!sweep || !path || !*path)
        return pb_fail(PB_ERR_ARG, "pb_report_html_write: sweep and path are required");
    if (extras && (extras->n_position_labels < 0 || extras->n_generations < 0 || extras->n_rates < 0))
        return pb_fail(PB_ERR_ARG, "pb_report_html_write: negative counts in extras");
    pb_sweep_view v;
    component_sites cs[PB_COMPONENT_COUNT];
    memset(cs, 0, sizeof cs);
    labels l;
    memset(&l, 0, sizeof l);
    pb_ranked *order = NULL;
    char *page = NULL;
    size_t page_size = 0;
    pb_status st = pb_sweep_view_load(&v, sweep);
    if (st == PB_OK)
        st = sites_build(&v, cs);
    if (st == PB_OK)
        st = labels_load(&l, &v, extras);
    if (st == PB_OK) {
        order = malloc(((size_t)v.n_sites + 1) * sizeof *order);
        if (!order)
            st = pb_fail(PB_ERR_OOM, "report.html: out of memory");
    }
    if (st == PB_OK) {
        FILE *f = open_memstream(&page, &page_size);
        if (!f) {
            st = pb_fail(PB_ERR_OOM, "report.html: cannot open a memory stream");
        } else {
            put_page(f, &v, cs, &l, extras, order);
            int bad = ferror(f);
            if (fclose(f) != 0 || bad)
                st = pb_fail(PB_ERR_OOM, "report.html: out of memory while building the page");
        }
    }
    if (st == PB_OK) {
        st = pb_write_file_atomic(path, page, page_size);
        if (st != PB_OK)
            st = pb_fail_context(st, "report.html");
    }
    free(page);
    free(order);
    labels_free(&l);
    sites_free(cs);
    pb_sweep_view_free(&v);
    return st;
}
