/* pb_patterns_html_write: patterns.html, the attention patterns a forward
 * captured, as one self-contained page (inline CSS and SVG, the shared
 * export script of svg_heatmap.c).
 *
 *   prompt     the decoded text and each token (piece and id)
 *   layers     for each captured blocks.L.attn.hook_pattern, in capture
 *              order, one query x key heatmap per head: colour 0..1 on one
 *              sequential scale, rows (query) and columns (key) labelled
 *              with the token pieces, the causal upper triangle left blank
 *
 * Structure for tests and tools: every heatmap is <svg class="heatmap
 * pattern" id="pattern-L<layer>-H<head>" data-layer data-head data-rows
 * data-cols> holding one <rect class="cell" data-q data-k data-value> per
 * cell with k <= q (T (T + 1) / 2 of them), data-value the captured float
 * written with 9 significant digits (read back exactly), and a <title>. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "analysis/svg_heatmap.h"
#include "patchbay.h"
#include "util/internal.h"
#include "formats/npy.h"

enum {
    LABEL_MAX_CHARS = 12, /* longer token labels are cut with an ellipsis */
    TOKEN_TEXT_MAX = 256  /* bytes of one token's text */
};

static const char *const pattern_suffix = ".attn.hook_pattern";

typedef struct pattern_page {
    const pb_model *model;
    const pb_capture *capture;
    const int32_t *ids;
    int T;
    char (*tokens)[TOKEN_TEXT_MAX]; /* (T) each token's text */
} pattern_page;

/* The layer of a "blocks.L.attn.hook_pattern" name, or -1. */
static int pattern_layer(const char *name) {
    int layer = -1, end = 0;
    if (sscanf(name, "blocks.%d%n", &layer, &end) != 1 || layer < 0 || strcmp(name + end, pattern_suffix) != 0)
        return -1;
    return layer;
}

int pb_capture_pattern_count(const pb_capture *capture) {
    int n = 0;
    for (int i = 0; capture && i < pb_capture_count(capture); i++)
        n += pattern_layer(pb_capture_name(capture, i)) >= 0;
    return n;
}

typedef struct grid {
    int cell, left, top, grid, legend_x, width, height, label_every;
} grid;

static grid grid_layout(int T) {
    grid g;
    g.cell = T <= 12 ? 28 : T <= 24 ? 20 : T <= 48 ? 12 : 8;
    g.label_every = g.cell >= 11 ? 1 : 2;
    g.left = 120;
    g.top = 110;
    g.grid = T * g.cell;
    g.legend_x = g.left + g.grid + 24;
    g.width = g.legend_x + 70;
    g.height = g.top + (g.grid > 120 ? g.grid : 120) + 12;
    return g;
}

/* One token label: the piece (cut), its position, piece and id in the title. */
static void put_token_label(FILE *f, const pattern_page *p, const char *axis, int pos) {
    fprintf(f, "<title>%s %d: ", axis, pos);
    pb_html_put_escaped(f, p->tokens[pos], PB_HTML_LABEL, 0);
    fprintf(f, " (id %d)</title>", (int)p->ids[pos]);
    pb_html_put_escaped(f, p->tokens[pos], PB_HTML_LABEL, LABEL_MAX_CHARS);
    fputs("</text>", f);
}

static void put_axes(FILE *f, const pattern_page *p, const grid *g) {
    fprintf(f, "<text class=\"axis-title\" x=\"%d\" y=\"14\">key</text>\n", g->left);
    fprintf(f,
            "<text class=\"axis-title\" transform=\"translate(14,%d) rotate(-90)\" "
            "text-anchor=\"middle\">query</text>\n",
            g->top + g->grid / 2);
    for (int t = 0; t < p->T; t += g->label_every) {
        int c = t * g->cell + g->cell / 2;
        fprintf(f, "<text class=\"row-label token\" x=\"%d\" y=\"%d\" text-anchor=\"end\">", g->left - 6,
                g->top + c + 4);
        put_token_label(f, p, "query", t);
        fprintf(f, "<text class=\"col-label token\" transform=\"translate(%d,%d) rotate(-55)\">", g->left + c + 3,
                g->top - 6);
        put_token_label(f, p, "key", t);
    }
    fputc('\n', f);
}

/* The cells on and below the diagonal; above it the page stays blank. */
static void put_cells(FILE *f, const pattern_page *p, const grid *g, const float *a, int layer, int head) {
    char colour[8];
    for (int q = 0; q < p->T; q++) {
        for (int k = 0; k <= q; k++) {
            float value = a[((size_t)head * (size_t)p->T + (size_t)q) * (size_t)p->T + (size_t)k];
            pb_colour_sequential(value, colour);
            fprintf(f,
                    "<rect class=\"cell\" x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"%s\" data-q=\"%d\" "
                    "data-k=\"%d\" data-value=\"%.9g\"><title>blocks.%d.attn.hook_pattern head %d, query %d ",
                    g->left + k * g->cell, g->top + q * g->cell, g->cell, g->cell, colour, q, k, (double)value, layer,
                    head, q);
            pb_html_put_escaped(f, p->tokens[q], PB_HTML_LABEL, LABEL_MAX_CHARS);
            fprintf(f, " → key %d ", k);
            pb_html_put_escaped(f, p->tokens[k], PB_HTML_LABEL, LABEL_MAX_CHARS);
            fprintf(f, ": %.4f</title></rect>", (double)value);
        }
        fputc('\n', f);
    }
}

/* The colour bar from 0 (bottom) to 1 (top). */
static void put_legend(FILE *f, const grid *g, const char *id) {
    int h = g->grid < 100 ? 100 : g->grid > 300 ? 300 : g->grid, x = g->legend_x, y = g->top;
    fprintf(f, "<defs><linearGradient id=\"scale-%s\" x1=\"0\" y1=\"0\" x2=\"0\" y2=\"1\">", id);
    for (int i = 0; i <= 4; i++) {
        char colour[8];
        pb_colour_sequential(1 - i / 4.0, colour);
        fprintf(f, "<stop offset=\"%g\" stop-color=\"%s\"/>", i / 4.0, colour);
    }
    fprintf(f,
            "</linearGradient></defs>\n<g class=\"legend\"><text x=\"%d\" y=\"%d\" class=\"axis-title\">"
            "attention</text>",
            x, y - 8);
    fprintf(f,
            "<rect x=\"%d\" y=\"%d\" width=\"14\" height=\"%d\" fill=\"url(#scale-%s)\" stroke=\"#888\" "
            "stroke-width=\"0.5\"/>",
            x, y, h, id);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick scale-max\">1</text>", x + 19, y + 4);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick\">0.5</text>", x + 19, y + h / 2 + 4);
    fprintf(f, "<text x=\"%d\" y=\"%d\" class=\"tick scale-min\">0</text></g>\n", x + 19, y + h + 4);
}

static void put_head(FILE *f, const pattern_page *p, const float *a, int layer, int head) {
    grid g = grid_layout(p->T);
    char id[64];
    snprintf(id, sizeof id, "pattern-L%d-H%d", layer, head);
    fprintf(f, "<figure class=\"heatmap-figure\">\n<figcaption><h3>Head %d</h3>", head);
    pb_svg_put_export_links(f, id, id);
    fprintf(f,
            "</figcaption>\n<div class=\"scroll\"><svg class=\"heatmap pattern\" id=\"%s\" data-layer=\"%d\" "
            "data-head=\"%d\" data-rows=\"%d\" data-cols=\"%d\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
            "role=\"img\">\n<title>blocks.%d.attn.hook_pattern head %d: query × key</title>\n",
            id, layer, head, p->T, p->T, g.width, g.height, g.width, g.height, layer, head);
    fprintf(f, "<rect class=\"background\" width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", g.width, g.height);
    put_axes(f, p, &g);
    put_cells(f, p, &g, a, layer, head);
    put_legend(f, &g, id);
    fputs("</svg></div>\n<div class=\"cell-info\">Hover a cell for its value.</div>\n</figure>\n", f);
}

static void put_prompt(FILE *f, const pattern_page *p) {
    fputs("<section id=\"prompt\">\n<h2>Prompt</h2>\n<pre class=\"prompt-text\">", f);
    for (int t = 0; t < p->T; t++)
        pb_html_put_escaped(f, p->tokens[t], PB_HTML_TEXT, 0);
    fprintf(f,
            "</pre>\n<p class=\"label\">%d tokens (piece, position as subscript; hover for the id)</p>\n"
            "<div class=\"tokens\">",
            p->T);
    for (int t = 0; t < p->T; t++) {
        fprintf(f, "<span class=\"tok\" title=\"position %d, id %d\">", t, (int)p->ids[t]);
        pb_html_put_escaped(f, p->tokens[t], PB_HTML_LABEL, 0);
        fprintf(f, "<sub>%d</sub></span>", t);
    }
    fputs("</div>\n</section>\n", f);
}

static const char *const patterns_style =
    "body{font-family:'DejaVu Sans',system-ui,sans-serif;font-size:14px;color:#1d1f23;background:#fafafa;"
    "margin:0;line-height:1.45}\nmain{max-width:1280px;margin:0 auto;padding:20px 28px 48px}\n"
    "h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:30px 0 10px;padding-bottom:4px;"
    "border-bottom:1px solid #ddd}h3{font-size:15px;margin:0 0 2px}\n"
    "code{font-family:'DejaVu Sans Mono',monospace;font-size:12.5px;color:#444}.label{color:#666}\n"
    ".figures{display:flex;flex-wrap:wrap;gap:16px;align-items:flex-start}\n"
    ".heatmap-figure{flex:0 1 auto;margin:0;background:#fff;border:1px solid #e1e1e1;border-radius:6px;"
    "padding:12px 14px;max-width:100%;box-sizing:border-box}\n.scroll{overflow-x:auto}\n"
    ".export{font-size:12px;margin:0 0 4px}.export a{color:#2166ac}\n"
    ".cell-info{font-family:'DejaVu Sans Mono',monospace;font-size:12px;color:#444;min-height:16px;margin-top:4px}\n"
    ".tokens{display:flex;flex-wrap:wrap;gap:3px}\n"
    ".tok{font-family:'DejaVu Sans Mono',monospace;font-size:12.5px;background:#f1f1f1;border:1px solid #ddd;"
    "border-radius:3px;padding:0 4px;white-space:pre}.tok sub{color:#888;font-size:9.5px;margin-left:2px}\n"
    "pre{white-space:pre-wrap;word-break:break-word;background:#f6f6f6;border:1px solid #eee;border-radius:4px;"
    "padding:8px 10px;font-family:'DejaVu Sans Mono',monospace;font-size:12.5px}\n"
    "footer{color:#888;font-size:12px;margin-top:30px}\n";

static void put_layers(FILE *f, const pattern_page *p) {
    for (int i = 0; i < pb_capture_count(p->capture); i++) {
        const char *name = pb_capture_name(p->capture, i);
        int layer = pattern_layer(name), n_dims = 0;
        int64_t shape[3];
        const float *a = layer >= 0 ? pb_capture_data(p->capture, i, &n_dims, shape) : NULL;
        if (!a)
            continue;
        fprintf(f, "<section class=\"layer\" id=\"layer-%d\">\n<h2>Layer %d <code>%s</code></h2>\n", layer, layer,
                name);
        fputs("<div class=\"figures\">\n", f);
        for (int h = 0; h < (int)shape[0]; h++)
            put_head(f, p, a, layer, h);
        fputs("</div>\n</section>\n", f);
    }
}

static void put_page(FILE *f, const pattern_page *p) {
    const char *source = pb_model_get_source(p->model), *base = strrchr(source, '/');
    base = base && base[1] ? base + 1 : source;
    fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>Attention patterns: ",
          f);
    pb_html_put_escaped(f, base, PB_HTML_TEXT, 0);
    fprintf(f, "</title>\n<style>\n%s</style>\n<style id=\"svg-style\">\n%s</style>\n</head>\n<body>\n<main>\n",
            patterns_style, pb_svg_heatmap_style);
    fputs("<h1>Attention patterns: ", f);
    pb_html_put_escaped(f, base, PB_HTML_TEXT, 0);
    fputs("</h1>\n", f);
    put_prompt(f, p);
    fputs("<p>Each map is one head's <code>attn.hook_pattern</code> [query, key]: row q holds the softmax "
          "weights query q gives each key k ≤ q (they sum to 1). Colour from 0 (white) to 1 (dark blue), the "
          "same scale for every map; above the diagonal (future keys, masked) is blank. Hover a cell for its "
          "value; each figure downloads as SVG or PNG.</p>\n",
          f);
    put_layers(f, p);
    fprintf(f,
            "<footer>Written by patchbay forward. The values are those of the .npy files beside this page."
            "</footer>\n</main>\n<script>\n%s</script>\n</body>\n</html>\n",
            pb_svg_page_script);
}

/* Every hook_pattern in the capture holds (n_heads, T, T) for this T. */
static pb_status check_capture(const pb_capture *capture, int T) {
    if (pb_capture_pattern_count(capture) == 0)
        return pb_fail(PB_ERR_ARG, "patterns.html: the capture holds no blocks.L.attn.hook_pattern");
    for (int i = 0; i < pb_capture_count(capture); i++) {
        int n_dims = 0;
        int64_t shape[3];
        if (pattern_layer(pb_capture_name(capture, i)) < 0)
            continue;
        const float *a = pb_capture_data(capture, i, &n_dims, shape);
        if (!a || n_dims != 3 || shape[1] != T || shape[2] != T)
            return pb_fail(PB_ERR_ARG,
                           "patterns.html: %s holds no (heads, %d, %d) pattern (run a forward over "
                           "the %d ids first)",
                           pb_capture_name(capture, i), T, T, T);
    }
    return PB_OK;
}

static pb_status build_page(const pattern_page *p, char **page, size_t *size) {
    FILE *f = open_memstream(page, size);
    if (!f)
        return pb_fail(PB_ERR_OOM, "patterns.html: cannot open a memory stream");
    put_page(f, p);
    int bad = ferror(f);
    if (fclose(f) != 0 || bad)
        return pb_fail(PB_ERR_OOM, "patterns.html: out of memory while building the page");
    return PB_OK;
}

pb_status pb_patterns_html_write(const pb_model *model, const pb_capture *capture, const int32_t *ids, int T,
                                 const char *path) {
    if (!model || !capture || !ids || T <= 0 || !path || !*path)
        return pb_fail(PB_ERR_ARG, "pb_patterns_html_write: model, capture, ids (T > 0) and path are required");
    pb_status st = check_capture(capture, T);
    if (st != PB_OK)
        return st;
    pattern_page p = {model, capture, ids, T, malloc((size_t)T * sizeof *p.tokens)};
    if (!p.tokens)
        return pb_fail(PB_ERR_OOM, "patterns.html: out of memory for %d token labels", T);
    for (int t = 0; st == PB_OK && t < T; t++)
        st = pb_model_token_text(model, ids[t], p.tokens[t], TOKEN_TEXT_MAX);
    char *page = NULL;
    size_t size = 0;
    if (st == PB_OK)
        st = build_page(&p, &page, &size);
    if (st == PB_OK && (st = pb_write_file_atomic(path, page, size)) != PB_OK)
        st = pb_fail_context(st, "patterns.html");
    free(page);
    free(p.tokens);
    return st;
}
