/* pb_report_html_write: report.html, one self-contained page.
 *
 *   header     model, mode, metric, pairs, baselines, rows executed, FLOPs saved, wall time
 *   heatmaps   one inline SVG per component and position kind: residual-width components as
 *              layer x position (columns labelled by the prompt's tokens), head components as
 *              layer x head (at their one position, or the mean over several, said in the
 *              caption); a diverging scale centred at 0 shared by every heatmap
 *   tables     the top sites by |effect|, refusal rates, generated texts, direction, notes
 *
 * Structure for tests and tools: every heatmap is <svg class="heatmap"
 * id="heatmap-<component>[_all|_groups]" data-rows data-cols> holding exactly
 * rows x cols <rect class="cell">, each with a <title> tooltip. Values come from
 * the sweep's getters through pb_sweep_view, as results.json's do. The page is
 * built in memory and written with pb_write_file_atomic. */
#define _POSIX_C_SOURCE 200809L
#include "analysis/report_html.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/internal.h"
#include "model/model.h"
#include "formats/npy.h"
#include "patching/sweep_view.h"
#include "util/utf8.h"

enum {
    TOP_SITES = 20,
    LABEL_MAX_CHARS = 16, /* longer token labels are cut with an ellipsis */
    VARIANT_EACH = 0,     /* one site per position */
    VARIANT_ALL,          /* every position together */
    VARIANT_GROUPS,       /* listed groups of positions together */
    N_VARIANTS
};

/* ---- text ----------------------------------------------------------------- */

typedef enum escape_mode {
    ESCAPE_TEXT, /* keeps newlines and tabs (for <pre> and pre-wrap) */
    ESCAPE_LABEL /* shows whitespace: space "·", newline "↵", tab "⇥", CR "\r" */
} escape_mode;

/* Writes s HTML-escaped (&, <, >, both quotes), so it is safe in text and in
 * attribute values. Invalid UTF-8 and control bytes become a visible "\xNN".
 * max_chars > 0 cuts after that many characters with "…". */
static void put_escaped(FILE *f, const char *text, escape_mode mode, int max_chars) {
    if (!text)
        return;
    const unsigned char *s = (const unsigned char *)text;
    size_t n = strlen(text);
    int chars = 0;
    for (size_t i = 0; i < n;) {
        if (max_chars > 0 && chars == max_chars) {
            fputs("…", f);
            return;
        }
        unsigned c = s[i];
        int len = (int)pb_utf8_length(s + i, n - i);
        chars++;
        if (len > 1) {
            fwrite(s + i, 1, (size_t)len, f);
            i += (size_t)len;
            continue;
        }
        i++;
        if (len == 0) {
            fprintf(f, "\\x%02X", c);
            continue;
        }
        switch (c) {
        case '&': fputs("&amp;", f); continue;
        case '<': fputs("&lt;", f); continue;
        case '>': fputs("&gt;", f); continue;
        case '"': fputs("&quot;", f); continue;
        case '\'': fputs("&#39;", f); continue;
        default: break;
        }
        if (mode == ESCAPE_LABEL) {
            const char *shown = c == ' ' ? "·" : c == '\n' ? "↵" : c == '\t' ? "⇥" : c == '\r' ? "\\r" : NULL;
            if (shown) {
                fputs(shown, f);
                continue;
            }
        } else if (c == '\n' || c == '\t') {
            fputc((int)c, f);
            continue;
        }
        if (c < 0x20 || c == 0x7F)
            fprintf(f, "\\x%02X", c);
        else
            fputc((int)c, f);
    }
}

static void put_text(FILE *f, const char *s) { put_escaped(f, s, ESCAPE_TEXT, 0); }

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

/* Diverging scale: blue (negative), white (0), red (positive); stops at |t| = 0, 0.5, 1. */
static const unsigned char scale_red[3][3] = {{255, 255, 255}, {244, 165, 130}, {178, 24, 43}};
static const unsigned char scale_blue[3][3] = {{255, 255, 255}, {146, 197, 222}, {33, 102, 172}};
static const char *const nan_colour = "#c8c8c8";

static void effect_colour(double value, double range, char out[8]) {
    if (isnan(value)) {
        snprintf(out, 8, "%s", nan_colour);
        return;
    }
    double t = value / range;
    t = t > 1 ? 1 : t < -1 ? -1 : t;
    const unsigned char(*stops)[3] = t >= 0 ? scale_red : scale_blue;
    double a = fabs(t) * 2;
    int k = a >= 1 ? 1 : 0;
    double u = a - k;
    int rgb[3];
    for (int i = 0; i < 3; i++)
        rgb[i] = (int)lround(stops[k][i] + (stops[k + 1][i] - stops[k][i]) * u);
    snprintf(out, 8, "#%02x%02x%02x", rgb[0] & 255, rgb[1] & 255, rgb[2] & 255);
}

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
    char **owned; /* decoded from the model when the caller gave none */
} labels;

static void labels_free(labels *l) {
    if (l->owned)
        for (int i = 0; i < l->n; i++)
            free(l->owned[i]);
    free(l->owned);
}

/* The caller's labels, else pair 0's base prompt as the model decodes it
 * (tokens it cannot decode stay unlabelled). */
static pb_status labels_load(labels *l, const pb_sweep_view *v, const pb_report_extras *extras) {
    memset(l, 0, sizeof *l);
    if (extras && extras->position_labels && extras->n_position_labels > 0) {
        l->text = extras->position_labels;
        l->n = extras->n_position_labels;
        return PB_OK;
    }
    if (v->spec->n_pairs < 1 || !v->spec->pairs[0].base.ids)
        return PB_OK;
    const pb_prompt_spec *prompt = &v->spec->pairs[0].base;
    l->owned = calloc((size_t)prompt->T + 1, sizeof *l->owned);
    if (!l->owned)
        return pb_fail(PB_ERR_OOM, "report.html: out of memory");
    l->n = prompt->T;
    char buf[256];
    for (int i = 0; i < prompt->T; i++) {
        if (pb_model_token_text(v->model, prompt->ids[i], buf, sizeof buf) != PB_OK)
            continue;
        l->owned[i] = strdup(buf);
        if (!l->owned[i])
            return pb_fail(PB_ERR_OOM, "report.html: out of memory");
    }
    l->text = (const char *const *)l->owned;
    return PB_OK;
}

/* The token at a spec position (negative: end-aligned), or NULL. */
static const char *label_at(const labels *l, int position) {
    int i = position >= 0 ? position : l->n + position;
    return i >= 0 && i < l->n ? l->text[i] : NULL;
}

/* ---- heatmaps ------------------------------------------------------------- */

typedef struct cell_value {
    double effect;   /* NaN: no value */
    double stderr_;  /* NaN when the cell is a mean over positions */
    double min, max; /* over the positions averaged */
    int n_sites;     /* sites behind the cell (0: not patched) */
    int n_finite;
    int key; /* the position column or group of a single-site cell */
} cell_value;

/* Residual width: the cell's one site. Heads: the mean over the positions
 * (or groups) that have a site. */
static cell_value cell_at(const pb_sweep_view *v, const component_sites *g, int variant, int layer, int col) {
    cell_value out = {NAN, NAN, NAN, NAN, 0, 0, -1};
    int heads = g->n_heads ? g->n_heads : 1, n_keys = g->n_keys[variant];
    int head = g->n_heads ? col : 0;
    int key_lo = g->n_heads ? 0 : col, key_hi = g->n_heads ? n_keys : col + 1;
    double sum = 0;
    for (int k = key_lo; k < key_hi; k++) {
        int64_t s = g->first[variant][((int64_t)layer * heads + head) * n_keys + k];
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

/* Head components: the position keys that have any site (how many, and the first). */
static int keys_used(const component_sites *g, int variant, int n_layers, int *first_key) {
    int n_keys = g->n_keys[variant], heads = g->n_heads ? g->n_heads : 1, count = 0;
    *first_key = -1;
    for (int k = 0; k < n_keys; k++) {
        int any = 0;
        for (int64_t i = 0; i < (int64_t)n_layers * heads && !any; i++)
            any = g->first[variant][i * n_keys + k] >= 0;
        if (any && count++ == 0)
            *first_key = k;
    }
    return count;
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
            put_escaped(f, token, ESCAPE_LABEL, LABEL_MAX_CHARS);
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

static layout heatmap_layout(int rows, int cols, int token_columns) {
    layout L;
    L.cell_w = cols <= 12 ? 48 : cols <= 24 ? 34 : cols <= 48 ? 26 : 18;
    L.cell_h = rows <= 8 ? 26 : rows <= 16 ? 20 : 16;
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

static void put_legend(FILE *f, const layout *L, const char *id, double range) {
    int bar_h = L->legend_h;
    int x = L->legend_x, y = L->top;
    char buf[32];
    fprintf(f, "<defs><linearGradient id=\"scale-%s\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\">", id);
    static const double offsets[5] = {0, 0.25, 0.5, 0.75, 1};
    for (int i = 0; i < 5; i++) {
        char colour[8];
        effect_colour(range * (1 - 2 * offsets[i]), range, colour);
        fprintf(f, "<stop offset=\"%g\" stop-color=\"%s\"/>", offsets[i], colour);
    }
    fputs("</linearGradient></defs>\n", f);
    fprintf(f, "<g class=\"legend\"><text x=\"%d\" y=\"%d\" class=\"axis-title\">effect</text>", x, y - 8);
    fprintf(
        f,
        "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"%d\" fill=\"url(#scale-%s)\" stroke=\"#888\" stroke-width=\"0.5\"/>",
        x, y, bar_h, id);
    snprintf(buf, sizeof buf, "%+.3g", range);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">%s</text>", x + 19, y + 4, buf);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">0</text>", x + 19, y + bar_h / 2 + 4);
    snprintf(buf, sizeof buf, "%+.3g", -range);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">%s</text>", x + 19, y + bar_h + 4, buf);
    fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"10\" fill=\"%s\" stroke=\"#888\" stroke-width=\"0.5\"/>",
            x, y + bar_h + 14, nan_colour);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">n/a</text></g>\n", x + 19, y + bar_h + 23);
}

/* One <figure>: caption and the SVG. */
/* The cells of a heatmap (rows layers, columns L->cols), each with its
 * hover title and, where it fits, its value. */
static void put_cells(FILE *f, const pb_sweep_view *v, const component_sites *g, const labels *l, const layout *L,
                      pb_component c, int variant, double range) {
    const char *hook = pb_component_hook(c);
    int heads = g->n_heads, rows = v->cfg->n_layers, cols = heads ? heads : g->n_keys[variant];
    int first_key = -1, n_keys_used = heads ? keys_used(g, variant, rows, &first_key) : 0;
    int show_values = L->cell_w >= 34 && L->cell_h >= 20;
    char colour[8], e[32], se[32], lo[32], hi[32];
    for (int layer = 0; layer < rows; layer++) {
        for (int col = 0; col < cols; col++) {
            cell_value cv = cell_at(v, g, variant, layer, col);
            int x = L->left + col * L->cell_w, y = L->top + layer * L->cell_h;
            effect_colour(cv.effect, range, colour);
            fprintf(f, "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\"%s><title>", x, y,
                    L->cell_w, L->cell_h, colour, isnan(cv.effect) ? " data-nan=\"1\"" : "");
            fprintf(f, "blocks.%d.%s ", layer, hook);
            if (!heads) {
                put_key_text(f, v, g, l, variant, col);
            } else {
                fprintf(f, "head %d ", col);
                if (cv.n_sites == 1 || (cv.n_sites == 0 && n_keys_used == 1))
                    put_key_text(f, v, g, l, variant, cv.n_sites == 1 ? cv.key : first_key);
                else
                    fprintf(f, "mean over %d %s", cv.n_sites, variant == VARIANT_GROUPS ? "groups" : "positions");
            }
            fputs(": ", f);
            if (cv.n_sites == 0)
                fputs("not patched", f);
            else if (isnan(cv.effect))
                fputs("n/a (no usable pair, or not run)", f);
            else if (cv.n_sites == 1)
                fprintf(f, "%s ± %s", format_number(cv.effect, e, sizeof e), format_number(cv.stderr_, se, sizeof se));
            else
                fprintf(f, "%s (min %s, max %s over %d)", format_number(cv.effect, e, sizeof e),
                        format_number(cv.min, lo, sizeof lo), format_number(cv.max, hi, sizeof hi), cv.n_finite);
            fputs("</title></rect>", f);
            if (show_values && !isnan(cv.effect))
                fprintf(f, "<text class=\"value%s\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%.2f</text>",
                        fabs(cv.effect / range) > 0.55 ? " light" : "", x + L->cell_w / 2, y + L->cell_h / 2 + 4,
                        fabs(cv.effect) < 0.005 ? 0.0 : cv.effect); /* no "-0.00" */
        }
        fputc('\n', f);
    }
}

static void put_heatmap(FILE *f, const pb_sweep_view *v, const component_sites *g, const labels *l, pb_component c,
                        int variant, double range) {
    static const char *const suffix[N_VARIANTS] = {"", "_all", "_groups"};
    const int n_layers = v->cfg->n_layers;
    const char *name = pb_component_name(c), *hook = pb_component_hook(c);
    char id[48];
    snprintf(id, sizeof id, "%s%s", name, suffix[variant]);
    int heads = g->n_heads, rows = n_layers, cols = heads ? heads : g->n_keys[variant];
    int token_columns = !heads && variant == VARIANT_EACH && l->n > 0;
    int first_key = -1, n_keys_used = heads ? keys_used(g, variant, n_layers, &first_key) : 0;
    layout L = heatmap_layout(rows, cols, token_columns);

    fprintf(f, "<figure class=\"heatmap-figure\">\n<figcaption><h3>%s <code>blocks.L.%s</code></h3><p>", name, hook);
    if (!heads) {
        fputs(variant == VARIANT_EACH  ? "Layer × position: each position patched alone."
              : variant == VARIANT_ALL ? "Layer: every position patched together."
                                       : "Layer × group: each listed group of positions patched together.",
              f);
    } else {
        fprintf(f, "Layer × %s head ", pb_component_info_of(c)->heads == PB_HEADS_KV ? "key-value" : "query");
        if (n_keys_used == 1) {
            fputs("at ", f);
            put_key_text(f, v, g, l, variant, first_key);
            fputs(".", f);
        } else if (variant == VARIANT_GROUPS) {
            fprintf(f, "— mean over %d groups of positions (each patched on its own).", n_keys_used);
        } else {
            fprintf(f, "— mean over %d positions (each patched on its own).", n_keys_used);
        }
    }
    fputs("</p></figcaption>\n", f);
    fprintf(f,
            "<div class=\"scroll\"><svg class=\"heatmap\" id=\"heatmap-%s\" data-rows=\"%d\" data-cols=\"%d\" "
            "width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\">\n",
            id, rows, cols, L.width, L.height, L.width, L.height);
    fprintf(f, "<title>%s: %d rows (layers) × %d columns</title>\n", id, rows, cols);

    /* Axis titles and labels. */
    fprintf(
        f,
        "<text class=\"axis-title\" transform=\"translate(14,%d) rotate(-90)\" text-anchor=\"middle\">layer</text>\n",
        L.top + L.grid_h / 2);
    for (int layer = 0; layer < rows; layer++)
        fprintf(f, "<text class=\"row-label\" x=\"%d\" y=\"%d\" text-anchor=\"end\">%d</text>", L.left - 6,
                L.top + layer * L.cell_h + L.cell_h / 2 + 4, layer);
    fputc('\n', f);
    int label_every = L.cell_w >= 18 ? 1 : 2;
    for (int col = 0; col < cols; col++) {
        int cx = L.left + col * L.cell_w + L.cell_w / 2;
        if (token_columns) {
            int p = g->columns[col];
            const char *token = label_at(l, p);
            fprintf(f, "<text class=\"col-label token\" transform=\"translate(%d,%d) rotate(-55)\">", cx + 3,
                    L.top - 6);
            fprintf(f, "<title>position %d: ", p);
            put_escaped(f, token, ESCAPE_LABEL, 0);
            fputs("</title>", f);
            put_escaped(f, token ? token : "", ESCAPE_LABEL, LABEL_MAX_CHARS);
            fputs("</text>", f);
        }
        if (col % label_every == 0) {
            int y = L.top + L.grid_h + 14;
            if (heads)
                fprintf(f, "<text class=\"col-label\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>", cx, y, col);
            else if (variant == VARIANT_EACH)
                fprintf(f, "<text class=\"col-label\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%d</text>", cx, y,
                        g->columns[col]);
            else {
                fprintf(f, "<text class=\"col-label\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">", cx, y);
                put_key_text(f, v, g, l, variant, col);
                fputs("</text>", f);
            }
        }
    }
    fprintf(f, "\n<text class=\"axis-title\" x=\"%d\" y=\"%d\" text-anchor=\"middle\">%s</text>\n",
            L.left + L.grid_w / 2, L.top + L.grid_h + 32,
            heads                     ? "head"
            : variant == VARIANT_EACH ? "position"
                                      : "");

    put_cells(f, v, g, l, &L, c, variant, range);
    put_legend(f, &L, id, range);
    fputs("</svg></div>\n</figure>\n", f);
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
    "svg.heatmap{display:block;font-family:'DejaVu Sans',sans-serif}\n"
    "svg .row-label,svg .col-label{font-size:11px;fill:#333}svg .token{font-family:'DejaVu Sans Mono',monospace}\n"
    "svg .axis-title{font-size:12px;fill:#555;font-weight:600}svg .tick{font-size:11px;fill:#333}\n"
    "svg .value{font-size:10px;fill:#222;pointer-events:none}svg .value.light{fill:#fff}\n"
    "rect.cell{stroke:#e4e4e4;stroke-width:1}rect.cell:hover{stroke:#111;stroke-width:2}\n"
    ".swatch{display:inline-block;width:11px;height:11px;border:1px solid #999;margin-right:6px;vertical-align:-1px}\n"
    ".sig{color:#b2182b;font-weight:700}\n"
    ".bar{display:block;height:9px;background:#b2182b}"
    ".bar-bg{display:block;width:140px;height:9px;background:#eee;margin-top:5px}\n"
    ".generation{background:#fff;border:1px solid #e1e1e1;border-radius:6px;padding:10px 14px;margin:0 0 12px}\n"
    ".generation h3 .badge{font-size:11.5px;font-weight:600;border-radius:10px;padding:1px 8px;margin-left:8px}\n"
    ".badge.refused{background:#fbe3e4;color:#9f1c2b}.badge.complied{background:#e2f0e5;color:#1f6b35}"
    ".badge.unjudged{background:#eee;color:#555}\n"
    "pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;border:1px solid #eee;border-radius:4px;"
    "padding:8px 10px;margin:4px 0;font-family:'DejaVu Sans Mono',monospace;font-size:12.5px}\n"
    ".label{font-size:12px;color:#666;margin-top:6px}\n"
    ".prose{white-space:pre-wrap}\n"
    "#hover-info{position:sticky;bottom:0;background:#fffffff0;border-top:1px solid #ddd;padding:6px 28px;"
    "font-family:'DejaVu Sans Mono',monospace;font-size:12.5px;color:#333;min-height:18px}\n"
    "footer{color:#888;font-size:12px;margin-top:30px}\n";

/* Optional: the hovered cell's tooltip also shown in the bar at the bottom. */
static const char *const page_script =
    "(function () {\n"
    "  var info = document.getElementById('hover-info');\n"
    "  if (!info) return;\n"
    "  document.addEventListener('mouseover', function (event) {\n"
    "    var target = event.target;\n"
    "    if (!target.classList || !target.classList.contains('cell')) return;\n"
    "    var title = target.querySelector('title');\n"
    "    if (title) info.textContent = title.textContent;\n"
    "  });\n"
    "  document.body.setAttribute('data-script', 'ok'); /* for tests: the script ran to its end */\n"
    "})();\n";

static void put_card(FILE *f, const char *key, const char *value) {
    fputs("<div class=\"card\"><div class=\"k\">", f);
    put_text(f, key);
    fputs("</div><div class=\"v\">", f);
    put_text(f, value);
    fputs("</div></div>\n", f);
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
    snprintf(buf, sizeof buf, "%lld of %lld", (long long)sum->n_rows_executed, (long long)sum->n_rows);
    put_card(f, "rows executed", buf);
    if (sum->flops_naive > 0) {
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
    fprintf(f, "<tr><th>Rows</th><td>%lld sites × %d pairs = %lld rows; %lld executed, %lld done",
            (long long)sum->n_sites, sum->n_pairs, (long long)sum->n_rows, (long long)sum->n_rows_executed,
            (long long)sum->n_rows_done);
    fputs(" <span class=\"label\">(the rest are exactly 0 by construction)</span></td></tr>\n", f);
    if (sum->flops_naive > 0) {
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

static void put_top_sites(FILE *f, const pb_sweep_view *v, const labels *l, double range, pb_ranked *order) {
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
        effect_colour(r->effect, range, colour);
        fprintf(f, "<tr><td class=\"num\">%lld</td><td><code>blocks.%d.%s</code></td><td class=\"num\">",
                (long long)(i + 1), r->layer, pb_component_hook(r->component));
        if (r->head >= 0)
            fprintf(f, "%d", r->head);
        else
            fputs("–", f);
        fprintf(f, "</td><td class=\"num\">%s</td><td><code>", position);
        if (r->position != INT32_MIN)
            put_escaped(f, label_at(l, r->position), ESCAPE_LABEL, 24);
        fprintf(f, "</code></td><td class=\"num\"><span class=\"swatch\" style=\"background:%s\"></span>%s ± %s</td>",
                colour, format_number(r->effect, e, sizeof e), format_number(r->standard_error, se, sizeof se));
        fprintf(f, "<td>%s</td></tr>\n", r->significant ? "<span class=\"sig\">✓ significant</span>" : "");
    }
    fputs("</table>\n", f);
}

static void put_extras(FILE *f, const pb_report_extras *x) {
    if (x->rates && x->n_rates > 0) {
        fputs("<h2 id=\"refusal-rates\">Refusal rates</h2>\n<table class=\"rates\">\n"
              "<tr><th>condition</th><th>refused</th><th>rate</th><th></th></tr>\n",
              f);
        for (int i = 0; i < x->n_rates; i++) {
            const pb_report_rate *r = &x->rates[i];
            fputs("<tr><td>", f);
            put_text(f, r->label);
            fprintf(f, "</td><td class=\"num\">%d / %d</td><td class=\"num\">", r->refused, r->n);
            if (r->n > 0) {
                double pct = 100.0 * r->refused / r->n;
                double w = pct < 0 ? 0 : pct > 100 ? 100 : pct;
                fprintf(
                    f,
                    "%.1f%%</td><td><span class=\"bar-bg\"><span class=\"bar\" style=\"width:%.1f%%\"></span></span>",
                    pct, w);
            } else {
                fputs("–</td><td>", f);
            }
            fputs("</td></tr>\n", f);
        }
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

/* The largest |effect| of any cell any heatmap shows (mean cells included), 1 when none. */
static double scale_range(const pb_sweep_view *v, const component_sites *cs) {
    double range = 0;
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        const component_sites *g = &cs[c];
        for (int k = 0; k < N_VARIANTS; k++) {
            if (!g->used[k])
                continue;
            int cols = g->n_heads ? g->n_heads : g->n_keys[k];
            for (int layer = 0; layer < v->cfg->n_layers; layer++)
                for (int col = 0; col < cols; col++) {
                    cell_value cv = cell_at(v, g, k, layer, col);
                    if (!isnan(cv.effect) && fabs(cv.effect) > range)
                        range = fabs(cv.effect);
                }
        }
    }
    return range > 0 && isfinite(range) ? range : 1.0;
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
    fprintf(f, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<main>\n<h1>", page_style);
    if (extras && extras->title)
        put_text(f, extras->title);
    else {
        fputs("Activation patching: ", f);
        put_text(f, base);
    }
    fputs("</h1>\n<p class=\"subtitle\">patchbay activation-patching report</p>\n<section id=\"summary\">\n", f);
    put_summary(f, v, extras);
    fputs("</section>\n", f);

    double range = scale_range(v, cs);
    fputs("<section id=\"heatmaps\">\n<h2>Heatmaps</h2>\n", f);
    fprintf(f,
            "<p>Colour: the mean normalised effect over the %d used pair%s, on one scale (±%.3g) for every "
            "heatmap. Red: the patch moves the metric towards the source run (1 = all the way); blue: away "
            "from it; grey: no value. Hover a cell for its hook, position, head and effect ± standard "
            "error.</p>\n",
            v->summary.n_pairs_used, v->summary.n_pairs_used == 1 ? "" : "s", range);
    int any = 0;
    fputs("<div class=\"figures\">\n", f);
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        for (int k = 0; k < N_VARIANTS; k++)
            if (cs[c].used[k]) {
                put_heatmap(f, v, &cs[c], l, (pb_component)c, k, range);
                any = 1;
            }
    fputs("</div>\n", f);
    if (!any)
        fputs("<p>No sites.</p>\n", f);
    fputs("</section>\n<section>\n", f);
    put_top_sites(f, v, l, range, order);
    fputs("</section>\n", f);
    if (extras) {
        fputs("<section id=\"extras\">\n", f);
        put_extras(f, extras);
        fputs("</section>\n", f);
    }
    fputs("<footer>Written by patchbay. Every number here is also in results.json (docs/patching.md defines "
          "them).</footer>\n</main>\n<div id=\"hover-info\">Hover a heatmap cell to see its value here.</div>\n",
          f);
    fprintf(f, "<script>\n%s</script>\n</body>\n</html>\n", page_script);
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
