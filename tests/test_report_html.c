/* pb_report_html_write on a real sweep of tests/fixtures/tiny_gqa: one
 * well-formed page, every heatmap with rows x cols cells whose tooltips
 * carry the hook name and the getters' values, all caller text escaped
 * (token labels shown with visible whitespace), no external resources, NaN
 * cells for an unrun sweep, and an atomic write that leaves nothing behind
 * when the directory is missing. Each heatmap on its component's own scale
 * (the max |effect| of its .npy array), every pair's prompts with their
 * tokens, an SVG and a PNG download per heatmap, and one head map per
 * position (end-aligned when pairs differ in length).
 *
 * `test_report_html --write PATH` writes the report with the test's extras
 * to PATH and exits 0 (1 on failure) without running the tests: the
 * headless-browser test (tests/test_report_browser.sh) renders that file. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "patchbay.h"
#include "analysis/report_html.h"
#include "test_util.h"

/* Two pairs of six tokens that differ at position 2: per-position resid_pre
 * and attn_out, every z head at the last position. */
static const char *const spec =
    "{\"mode\": \"denoising\","
    " \"pairs\": [{\"clean\": {\"ids\": [5, 17, 33, 60, 7, 90]}, \"corrupted\": {\"ids\": [5, 17, 44, 60, 7, 90]}},"
    "            {\"clean\": {\"ids\": [9, 3, 70, 21, 100, 11]}, \"corrupted\": {\"ids\": [9, 3, 12, 21, 100, 11]}}],"
    " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},"
    "           {\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"each\"},"
    "           {\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"}],"
    " \"metric\": {\"kind\": \"logit_diff\", \"positive\": {\"ids\": [18]}, \"negative\": {\"ids\": [53]}}}";

enum { N_LAYERS = 2, N_POSITIONS = 6, N_HEADS = 4 };

/* Chat-template tokens, markup, a newline, quotes, a space and a byte that is not UTF-8. */
static const char *const position_labels[N_POSITIONS] = {"<|im_start|>",       "user", "\n",
                                                         "say \"hi\" & 'bye'", " the", "\xff<end>"};

static const pb_report_generation generations[] = {
    {"harmful, baseline", "How do I pick a lock?", "I can't help with <that> & \"won't\".", 1},
    {"harmful, direction ablated", "How do I pick a lock?", "Sure:\n1. Insert a tension wrench", 0},
    {"harmless, direction added", "Write a poem", "I'm sorry, I cannot.", -1},
};
static const pb_report_rate rates[] = {
    {"harmful, baseline", 10, 9, 0, 0, 0},      {"harmful, ablated", 10, 3, 0, 0, 0},
    {"harmless <added>", 8, 0, 0, 0, 0},        {"empty", 0, 0, 0, 0, 0},
    {"harmless, sampled", 8, 5, 4, 0.05, 0.31},
};

static const pb_report_extras test_extras = {
    .title = "Refusal analysis: tiny <gqa> & \"friends\"",
    .position_labels = position_labels,
    .n_position_labels = N_POSITIONS,
    .position_labels_from = "pair 0's chat-templated prompt",
    .generations = generations,
    .n_generations = 3,
    .rates = rates,
    .n_rates = 5,
    .direction_summary = "layer 1, position -1: score 2.50 <best>",
    .notes = "Notes with <script>alert(1)</script> inside.",
    .wall_seconds = 75.5,
};

typedef struct fixture {
    pb_model *model;
    pb_sweep *sweep;
    char dir[64]; /* a fresh temporary directory per test */
    char path[128];
    char *html; /* the written report */
} fixture;

static pb_model *load_tiny(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny_gqa/model.gguf", tu_fixtures());
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2};
    if (pb_model_load(&m, path, &o) != PB_OK) {
        fprintf(stderr, "loading %s: %s\n", path, pb_last_error());
        return NULL;
    }
    return m;
}

static pb_sweep *make_sweep(pb_model *m, int run) {
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, spec, NULL, NULL) != PB_OK) {
        fprintf(stderr, "pb_sweep_create: %s\n", pb_last_error());
        return NULL;
    }
    if (run && pb_sweep_run(s) != PB_OK) {
        fprintf(stderr, "pb_sweep_run: %s\n", pb_last_error());
        pb_sweep_free(s);
        return NULL;
    }
    return s;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->model = load_tiny();
    f->sweep = f->model ? make_sweep(f->model, 1) : NULL;
    *state = f;
    return f->sweep ? 0 : -1;
}

static int teardown(void **state) {
    fixture *f = *state;
    return tu_free_sweep_fixture(f, f->sweep, f->model);
}

/* A fresh directory holding the report written with the test's extras. */
static int write_report(void **state) {
    fixture *f = *state;
    if (tu_make_temp_dir(f->dir, sizeof f->dir, "pb_report_html_") != 0)
        return -1;
    snprintf(f->path, sizeof f->path, "%s/report.html", f->dir);
    if (pb_report_html_write(f->sweep, f->path, &test_extras) != PB_OK) {
        fprintf(stderr, "pb_report_html_write: %s\n", pb_last_error());
        return -1;
    }
    f->html = tu_read_file(f->path, NULL);
    return f->html ? 0 : -1;
}

static int remove_report(void **state) {
    fixture *f = *state;
    free(f->html);
    f->html = NULL;
    tu_remove_tree(f->dir); /* nothing when dir is "" */
    f->dir[0] = 0;
    return 0;
}

/* ---- helpers ---------------------------------------------------------------- */

static int count(const char *haystack, const char *needle) {
    int n = 0;
    size_t len = strlen(needle);
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + len, needle))
        n++;
    return n;
}

static void expect_in(const char *text, const char *needle) {
    if (!strstr(text, needle))
        fail_msg("expected to find '%s' in the report", needle);
}

static void expect_not_in(const char *text, const char *needle) {
    const char *p = strstr(text, needle);
    if (p)
        fail_msg("did not expect '%s' in the report (at byte %td: '%.60s')", needle, p - text, p);
}

/* The text of heatmap `id`'s <svg ...>...</svg>, malloc'd; its declared size in *rows, *cols. */
static char *heatmap(const char *html, const char *id, int *rows, int *cols) {
    char open[96];
    snprintf(open, sizeof open, "<svg class=\"heatmap\" id=\"heatmap-%s\" ", id);
    const char *start = strstr(html, open);
    if (!start)
        fail_msg("no heatmap %s", id);
    if (sscanf(start + strlen(open), "data-rows=\"%d\" data-cols=\"%d\"", rows, cols) != 2)
        fail_msg("heatmap %s: no data-rows/data-cols", id);
    const char *end = strstr(start, "</svg>");
    assert_non_null(end);
    size_t n = (size_t)(end - start);
    char *out = malloc(n + 1);
    memcpy(out, start, n);
    out[n] = 0;
    return out;
}

/* The tooltip of the i-th cell of an SVG (row-major), malloc'd. */
static char *cell_title(const char *svg, int index) {
    const char *p = svg;
    for (int i = 0; i <= index; i++) {
        p = strstr(p, "<rect class=\"cell\"");
        if (!p)
            fail_msg("cell %d missing", index);
        p++;
    }
    const char *t = strstr(p, "<title>"), *end = t ? strstr(t, "</title>") : NULL;
    if (!t || !end || t > strstr(p, "</rect>"))
        fail_msg("cell %d has no <title>", index);
    t += strlen("<title>");
    char *out = malloc((size_t)(end - t) + 1);
    memcpy(out, t, (size_t)(end - t));
    out[end - t] = 0;
    return out;
}

static int valid_utf8(const unsigned char *s) {
    while (*s) {
        int len = *s < 0x80 ? 1 : (*s >> 5) == 6 ? 2 : (*s >> 4) == 14 ? 3 : (*s >> 3) == 30 ? 4 : 0;
        if (!len)
            return 0;
        for (int i = 1; i < len; i++)
            if ((s[i] & 0xC0) != 0x80)
                return 0;
        s += len;
    }
    return 1;
}

/* ---- tests ------------------------------------------------------------------ */

static void test_page_structure(void **state) {
    fixture *f = *state;
    const char *html = f->html;
    assert_int_equal(strncmp(html, "<!DOCTYPE html>\n<html lang=\"en\">", 32), 0);
    assert_int_equal(count(html, "<html"), 1);
    assert_int_equal(count(html, "</html>"), 1);
    assert_int_equal(count(html, "<body>"), 1);
    assert_int_equal(count(html, "</body>"), 1);
    expect_in(html, "<meta charset=\"utf-8\">");
    assert_true(valid_utf8((const unsigned char *)html));
    /* Header: mode, metric, pairs, baselines, rows, FLOPs, wall time. */
    pb_sweep_summary sum;
    assert_int_equal(pb_sweep_get_summary(f->sweep, &sum), PB_OK);
    char buf[160];
    expect_in(html, "<td>denoising <span");
    expect_in(html, "logit_diff (positive 18 &quot;n&quot;; negative 53 &quot;G&quot;; at position -1)");
    snprintf(buf, sizeof buf, "<tr><th>Pairs</th><td>%d (%d used)</td></tr>", sum.n_pairs, sum.n_pairs_used);
    expect_in(html, buf);
    snprintf(buf, sizeof buf, "clean baseline</div><div class=\"v\">%.4f<", sum.clean_baseline);
    expect_in(html, buf);
    snprintf(buf, sizeof buf, "corrupted baseline</div><div class=\"v\">%.4f<", sum.corrupted_baseline);
    expect_in(html, buf);
    snprintf(buf, sizeof buf, "<div class=\"v\">%.4f<", sum.total_effect);
    expect_in(html, buf);
    snprintf(buf, sizeof buf, "rows executed</div><div class=\"v\">%lld of %lld<", (long long)sum.n_rows_executed,
             (long long)sum.n_rows);
    expect_in(html, buf);
    assert_true(sum.flops_naive > 0);
    snprintf(buf, sizeof buf, "FLOPs saved</div><div class=\"v\">%.1f%%<",
             100.0 * (1 - sum.flops_executed / sum.flops_naive));
    expect_in(html, buf);
    expect_in(html, "wall time</div><div class=\"v\">1 min 15 s<");
    /* The extras' sections, in order. */
    const char *rates_at = strstr(html, "id=\"refusal-rates\""), *gen_at = strstr(html, "id=\"generations\"");
    const char *dir_at = strstr(html, "id=\"direction\""), *notes_at = strstr(html, "id=\"notes\"");
    assert_non_null(rates_at);
    assert_true(rates_at < gen_at && gen_at < dir_at && dir_at < notes_at);
}

/* Every heatmap holds rows x cols cells, tiny_gqa's sizes; tooltips name the
 * hook and carry the getters' effect ± stderr. */
static void test_heatmap_cells(void **state) {
    fixture *f = *state;
    const char *html = f->html;
    assert_int_equal(count(html, "<svg class=\"heatmap\""), 3);
    static const struct {
        const char *id, *hook;
        pb_component component;
        int rows, cols;
    } expected[] = {
        {"resid_pre", "hook_resid_pre", PB_COMPONENT_RESID_PRE, N_LAYERS, N_POSITIONS},
        {"attn_out", "hook_attn_out", PB_COMPONENT_ATTN_OUT, N_LAYERS, N_POSITIONS},
        {"z", "attn.hook_z", PB_COMPONENT_Z, N_LAYERS, N_HEADS},
    };
    int64_t n_sites = pb_sweep_site_count(f->sweep);
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        int rows = 0, cols = 0;
        char *svg = heatmap(html, expected[i].id, &rows, &cols);
        assert_int_equal(rows, expected[i].rows);
        assert_int_equal(cols, expected[i].cols);
        assert_int_equal(count(svg, "<rect class=\"cell\""), rows * cols);
        assert_int_equal(count(svg, "<rect "), rows * cols + 3); /* + background, the legend's bar and n/a swatch */
        /* Each site's cell: row = layer, column = position (or head). */
        int seen = 0;
        for (int64_t s = 0; s < n_sites; s++) {
            pb_site_result r;
            assert_int_equal(pb_sweep_get_site(f->sweep, s, &r), PB_OK);
            if (r.component != expected[i].component)
                continue;
            int col = r.head >= 0 ? r.head : r.position;
            char *title = cell_title(svg, r.layer * cols + col);
            char prefix[96], value[96];
            if (r.head >= 0)
                snprintf(prefix, sizeof prefix, "blocks.%d.%s head %d pos %d ", r.layer, expected[i].hook, r.head,
                         r.position);
            else
                snprintf(prefix, sizeof prefix, "blocks.%d.%s pos %d ", r.layer, expected[i].hook, r.position);
            snprintf(value, sizeof value, ": %.4f ± %.4f", r.effect, r.standard_error);
            if (strncmp(title, prefix, strlen(prefix)) != 0 || !strstr(title, value))
                fail_msg("cell (%d, %d) of %s: tooltip '%s', expected '%s...%s'", r.layer, col, expected[i].id, title,
                         prefix, value);
            free(title);
            seen++;
        }
        assert_int_equal(seen, rows * cols);
        free(svg);
    }
    /* Head heatmap: said to be at the last position. */
    expect_in(html, "Layer × query head at pos 5 ");
    /* Column labels: the escaped tokens, whitespace made visible. */
    char *svg;
    int rows, cols;
    svg = heatmap(html, "resid_pre", &rows, &cols);
    assert_int_equal(count(svg, "class=\"col-label token\""), N_POSITIONS);
    expect_in(svg, "&lt;|im_start|&gt;</text>");
    expect_in(svg, ">↵</text>");
    expect_in(svg, ">·the</text>");
    expect_in(svg, "<title>position 3: say·&quot;hi&quot;·&amp;·&#39;bye&#39;</title>");
    free(svg);
}

static void test_escaping_and_self_contained(void **state) {
    fixture *f = *state;
    const char *html = f->html;
    expect_not_in(html, "<|im_start|>");
    expect_not_in(html, "<gqa>");
    expect_not_in(html, "<that>");
    expect_not_in(html, "<best>");
    expect_not_in(html, "<added>");
    expect_not_in(html, "<end>");
    expect_not_in(html, "\xff");
    expect_in(html, "\\xFF&lt;end&gt;");
    expect_in(html, "<title>Refusal analysis: tiny &lt;gqa&gt; &amp; &quot;friends&quot;</title>");
    expect_in(html, "<h1>Refusal analysis: tiny &lt;gqa&gt; &amp; &quot;friends&quot;</h1>");
    expect_in(html, "Notes with &lt;script&gt;alert(1)&lt;/script&gt; inside.");
    assert_int_equal(count(html, "<script"), 1); /* ours only */
    /* Self-contained: no URLs, no external sheets, scripts, images or fonts. */
    expect_not_in(html, "http://");
    expect_not_in(html, "https://");
    expect_not_in(html, "<link");
    expect_not_in(html, "src=");
    expect_not_in(html, "@import");
    for (const char *p = strstr(html, "url("); p; p = strstr(p + 4, "url("))
        if (p[4] != '#')
            fail_msg("url() that is not a fragment: %.40s", p);
}

static void test_top_sites_and_extras(void **state) {
    fixture *f = *state;
    const char *html = f->html;
    /* Top sites: the largest |effect| first, formatted like the tooltips. */
    const char *table = strstr(html, "<table class=\"top-sites\">");
    assert_non_null(table);
    int64_t n_sites = pb_sweep_site_count(f->sweep), best = -1;
    double best_abs = -1;
    int n_finite = 0;
    for (int64_t s = 0; s < n_sites; s++) {
        pb_site_result r;
        assert_int_equal(pb_sweep_get_site(f->sweep, s, &r), PB_OK);
        if (isnan(r.effect))
            continue;
        n_finite++;
        if (fabs(r.effect) > best_abs) {
            best_abs = fabs(r.effect);
            best = s;
        }
    }
    assert_true(best >= 0);
    const char *end = strstr(table, "</table>");
    int rows = 0;
    for (const char *p = strstr(table, "<tr><td"); p && p < end; p = strstr(p + 1, "<tr><td"))
        rows++;
    assert_int_equal(rows, n_finite < 20 ? n_finite : 20);
    pb_site_result r;
    assert_int_equal(pb_sweep_get_site(f->sweep, best, &r), PB_OK);
    char first[256];
    snprintf(first, sizeof first, "<tr><td class=\"num\">1</td><td><code>blocks.%d.%s</code></td>", r.layer,
             pb_component_hook(r.component));
    expect_in(table, first);
    snprintf(first, sizeof first, "</span>%.4f ± %.4f</td>", r.effect, r.standard_error);
    expect_in(table, first);
    /* Rates: k / n and the percentage; none for n = 0. */
    expect_in(html, "<tr><td>harmful, baseline</td><td class=\"num\">9 / 10</td><td class=\"num\">90.0%");
    /* K samples per prompt: the continuations counted, the interval shown and drawn */
    expect_in(html, "<td class=\"num\">5 / 32 <span class=\"note\">(8 prompts × 4)</span></td><td "
                    "class=\"num\">15.6%</td><td class=\"num\">5.0–31.0%</td>");
    expect_in(html, "<span class=\"ci\" style=\"left:5.0%;width:26.0%\"></span>");
    expect_in(html, "<tr><td>harmful, ablated</td><td class=\"num\">3 / 10</td><td class=\"num\">30.0%");
    expect_in(html, "<tr><td>harmless &lt;added&gt;</td><td class=\"num\">0 / 8</td><td class=\"num\">0.0%");
    expect_in(html, "<tr><td>empty</td><td class=\"num\">0 / 0</td><td class=\"num\">–</td><td></td><td></td></tr>");
    /* Generations: escaped, newlines kept, judged. */
    expect_in(html, "<h3>harmful, baseline<span class=\"badge refused\">refused</span></h3>");
    expect_in(html, "<h3>harmful, direction ablated<span class=\"badge complied\">complied</span></h3>");
    expect_in(html, "<span class=\"badge unjudged\">not judged</span>");
    expect_in(html, "<pre class=\"text\">I can&#39;t help with &lt;that&gt; &amp; &quot;won&#39;t&quot;.</pre>");
    expect_in(html, "<pre class=\"text\">Sure:\n1. Insert a tension wrench</pre>");
    expect_in(html, "<pre class=\"prompt\">How do I pick a lock?</pre>");
    expect_in(html, "<pre class=\"direction\">layer 1, position -1: score 2.50 &lt;best&gt;</pre>");
}

/* An unrun sweep: every cell grey with an n/a tooltip, no top sites; no extras. */
static void test_nan_cells_without_extras(void **state) {
    fixture *f = *state;
    pb_sweep *s = make_sweep(f->model, 0);
    assert_non_null(s);
    char path[160];
    snprintf(path, sizeof path, "%s/unrun.html", f->dir);
    assert_int_equal(pb_report_html_write(s, path, NULL), PB_OK);
    char *html = tu_read_file(path, NULL);
    assert_non_null(html);
    int rows, cols;
    char *svg = heatmap(html, "resid_pre", &rows, &cols);
    assert_int_equal(count(svg, "<rect class=\"cell\""), N_LAYERS * N_POSITIONS);
    assert_int_equal(count(svg, "fill=\"#c8c8c8\" data-nan=\"1\"><title>"), N_LAYERS * N_POSITIONS);
    char *title = cell_title(svg, 0);
    assert_int_equal(strncmp(title, "blocks.0.hook_resid_pre pos 0", 29), 0);
    expect_in(title, ": n/a (no usable pair, or not run)");
    free(title);
    free(svg);
    expect_in(html, "<p>No site has an effect.</p>");
    expect_in(html, "<tr><th>Pairs</th><td>2 (0 used)</td></tr>");
    expect_in(html, "<div class=\"v\">n/a<"); /* baselines unknown */
    expect_in(html, "<title>Activation patching: model.gguf</title>");
    expect_not_in(html, "id=\"refusal-rates\"");
    expect_not_in(html, "id=\"generations\"");
    expect_not_in(html, "wall time");
    assert_true(valid_utf8((const unsigned char *)html));
    free(html);
    pb_sweep_free(s);
}

/* A missing directory: PB_ERR_IO, no file and no temporary left; bad arguments refused. */
static void test_write_failures(void **state) {
    fixture *f = *state;
    char path[192];
    snprintf(path, sizeof path, "%s/missing/report.html", f->dir);
    assert_int_equal(pb_report_html_write(f->sweep, path, &test_extras), PB_ERR_IO);
    assert_true(strlen(pb_last_error()) > 0);
    assert_int_equal(access(path, F_OK), -1);
    snprintf(path, sizeof path, "%s/missing", f->dir);
    assert_int_equal(access(path, F_OK), -1);
    /* The directory holds exactly the report of the setup: no temporary names. */
    DIR *d = opendir(f->dir);
    assert_non_null(d);
    int n = 0;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            assert_string_equal(e->d_name, "report.html");
            n++;
        }
    closedir(d);
    assert_int_equal(n, 1);
    assert_int_equal(pb_report_html_write(NULL, f->path, NULL), PB_ERR_ARG);
    assert_int_equal(pb_report_html_write(f->sweep, NULL, NULL), PB_ERR_ARG);
    assert_int_equal(pb_report_html_write(f->sweep, "", NULL), PB_ERR_ARG);
    pb_report_extras bad = {.n_rates = -1};
    assert_int_equal(pb_report_html_write(f->sweep, f->path, &bad), PB_ERR_ARG);
}

/* The attribute `name="..."` of the first tag at or after p, as a double. */
static double attribute_number(const char *p, const char *name) {
    char key[64];
    snprintf(key, sizeof key, " %s=\"", name);
    const char *a = strstr(p, key);
    if (!a)
        fail_msg("no %s attribute", name);
    return strtod(a + strlen(key), NULL);
}

/* The largest |value| of a float32 .npy file (NaN cells skipped). */
static double npy_max_abs(const char *dir, const char *name, int n_dims) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s.npy", dir, name);
    int64_t shape[8];
    float *x = tu_read_f32(path, n_dims, shape);
    int64_t n = 1;
    for (int d = 0; d < n_dims; d++)
        n *= shape[d];
    double max_abs = 0;
    for (int64_t i = 0; i < n; i++)
        if (isfinite(x[i]) && fabs(x[i]) > max_abs)
            max_abs = fabs(x[i]);
    free(x);
    return max_abs;
}

/* Each heatmap's scale is its own component's: data-range is the largest
 * |value| of that component's .npy array as pb_sweep_write writes it, the
 * legend's ends are ±that, and the cell holding it has the scale's end
 * colour (a shared scale would give it a paler one). */
static void test_scale_per_component(void **state) {
    fixture *f = *state;
    char dir[128];
    snprintf(dir, sizeof dir, "%s/sweep", f->dir);
    assert_int_equal(pb_sweep_write(f->sweep, dir, 0), PB_OK);
    static const struct {
        const char *id;
        pb_component component;
        int n_dims;
    } maps[] = {
        {"resid_pre", PB_COMPONENT_RESID_PRE, 2}, {"attn_out", PB_COMPONENT_ATTN_OUT, 2}, {"z", PB_COMPONENT_Z, 3}};
    for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++) {
        double want = npy_max_abs(dir, maps[i].id, maps[i].n_dims);
        int rows, cols;
        char *svg = heatmap(f->html, maps[i].id, &rows, &cols);
        double got = attribute_number(svg, "data-range");
        if (!(fabs(got - want) <= 1e-6 * want))
            fail_msg("%s: scale %.9g, the array's max |effect| %.9g", maps[i].id, got, want);
        char tick[64];
        snprintf(tick, sizeof tick, "class=\"tick scale-max\">%+.3g</text>", got);
        expect_in(svg, tick);
        snprintf(tick, sizeof tick, "class=\"tick scale-min\">%+.3g</text>", -got);
        expect_in(svg, tick);
        /* The site with the largest |effect|: the end colour of its sign. */
        pb_site_result best = {0};
        double best_abs = -1;
        for (int64_t s = 0; s < pb_sweep_site_count(f->sweep); s++) {
            pb_site_result r;
            assert_int_equal(pb_sweep_get_site(f->sweep, s, &r), PB_OK);
            if (r.component == maps[i].component && isfinite(r.effect) && fabs(r.effect) > best_abs) {
                best_abs = fabs(r.effect);
                best = r;
            }
        }
        const char *cell = svg;
        int index = best.layer * cols + (best.head >= 0 ? best.head : best.position);
        for (int k = 0; k <= index; k++)
            cell = strstr(cell + 1, "<rect class=\"cell\"");
        assert_non_null(cell);
        const char *fill = best.effect > 0 ? "fill=\"#b2182b\"" : "fill=\"#2166ac\"";
        if (strncmp(strstr(cell, "fill="), fill, strlen(fill)) != 0)
            fail_msg("%s: the cell of max |effect| %.4f is %.16s, expected %s", maps[i].id, best.effect,
                     strstr(cell, "fill="), fill);
        free(svg);
    }
}

/* The prompt block of one run of a pair: its tokens' ids in order, and how
 * many are marked as differing from the other prompt. */
static int prompt_ids(const char *html, int pair, const char *run, int32_t *ids, int capacity, int *n_differs) {
    char open[96];
    snprintf(open, sizeof open, "<div class=\"prompt\" data-pair=\"%d\" data-run=\"%s\">", pair, run);
    const char *p = strstr(html, open);
    if (!p)
        fail_msg("no prompt block for pair %d's %s run", pair, run);
    const char *end = strstr(p, "</div></div>");
    assert_non_null(end);
    int n = 0;
    *n_differs = 0;
    for (const char *t = strstr(p, "<span class=\"tok"); t && t < end; t = strstr(t + 1, "<span class=\"tok")) {
        assert_true(n < capacity);
        *n_differs += strncmp(t, "<span class=\"tok differs\"", 25) == 0;
        ids[n++] = (int32_t)attribute_number(t, "data-id");
    }
    return n;
}

/* Every pair's clean and corrupted prompts are shown with their tokens in
 * order (the spec's ids), the differing position marked, and the position
 * axes say whose tokens label them. */
static void test_prompts_shown(void **state) {
    fixture *f = *state;
    static const int32_t clean[2][N_POSITIONS] = {{5, 17, 33, 60, 7, 90}, {9, 3, 70, 21, 100, 11}};
    static const int32_t corrupted[2][N_POSITIONS] = {{5, 17, 44, 60, 7, 90}, {9, 3, 12, 21, 100, 11}};
    for (int pair = 0; pair < 2; pair++) {
        int32_t ids[16];
        int n_differs;
        assert_int_equal(prompt_ids(f->html, pair, "clean", ids, 16, &n_differs), N_POSITIONS);
        assert_memory_equal(ids, clean[pair], sizeof clean[pair]);
        assert_int_equal(n_differs, 1);
        assert_int_equal(prompt_ids(f->html, pair, "corrupted", ids, 16, &n_differs), N_POSITIONS);
        assert_memory_equal(ids, corrupted[pair], sizeof corrupted[pair]);
        assert_int_equal(n_differs, 1);
    }
    /* The caller's labels, named as the caller named them, on each position axis. */
    int rows, cols;
    char *svg = heatmap(f->html, "resid_pre", &rows, &cols);
    expect_in(svg, ">position · tokens of pair 0&#39;s chat-templated prompt</text>");
    free(svg);
}

/* Every heatmap has one SVG and one PNG download link of its own. */
static void test_every_heatmap_exports(void **state) {
    fixture *f = *state;
    int n = 0;
    for (const char *p = strstr(f->html, "<svg class=\"heatmap\" id=\"heatmap-"); p;
         p = strstr(p + 1, "<svg class=\"heatmap\" id=\"heatmap-")) {
        char id[64], link[256];
        assert_int_equal(sscanf(p, "<svg class=\"heatmap\" id=\"heatmap-%63[^\"]\"", id), 1);
        snprintf(link, sizeof link, "class=\"export-svg\" data-for=\"heatmap-%s\" download=\"%s.svg\"", id, id);
        assert_int_equal(count(f->html, link), 1);
        snprintf(link, sizeof link, "class=\"export-png\" data-for=\"heatmap-%s\" download=\"%s.png\"", id, id);
        assert_int_equal(count(f->html, link), 1);
        n++;
    }
    assert_int_equal(n, 3);
    assert_int_equal(count(f->html, "class=\"export-svg\""), n);
    assert_int_equal(count(f->html, "class=\"export-png\""), n);
}

/* Pairs of unequal length (end-aligned positions) with every z head at
 * every position: the mean map, then one layer x head map per position whose
 * cells carry that site's getter values; the mean map's cells are the mean
 * of those; the note says positions count from the end. */
static void test_head_maps_per_position(void **state) {
    fixture *f = *state;
    static const char *const unequal =
        "{\"mode\": \"denoising\","
        " \"pairs\": [{\"clean\": {\"ids\": [5, 17, 33, 60, 7, 90]}, \"corrupted\": {\"ids\": [5, 17, 44, 60, 7, 90]}},"
        "            {\"clean\": {\"ids\": [3, 70, 21, 100, 11]}, \"corrupted\": {\"ids\": [3, 12, 21, 100, 11]}}],"
        " \"sites\": [{\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"each\"}],"
        " \"metric\": {\"kind\": \"logit_diff\", \"positive\": {\"ids\": [18]}, \"negative\": {\"ids\": [53]}}}";
    pb_sweep *s = NULL;
    assert_int_equal(tu_run_sweep(f->model, unequal, 1, &s), PB_OK);
    char path[160];
    snprintf(path, sizeof path, "%s/unequal.html", f->dir);
    assert_int_equal(pb_report_html_write(s, path, NULL), PB_OK);
    char *html = tu_read_file(path, NULL);
    assert_non_null(html);
    expect_in(html, "positions count from the end of each prompt");
    assert_int_equal(count(html, "<svg class=\"heatmap\""), 1 + 5); /* the mean, positions -5..-1 */
    double sum[N_LAYERS][N_HEADS] = {{0}};
    for (int64_t i = 0; i < pb_sweep_site_count(s); i++) {
        pb_site_result r;
        assert_int_equal(pb_sweep_get_site(s, i, &r), PB_OK);
        assert_true(r.position >= -5 && r.position <= -1);
        char id[32], want[96];
        snprintf(id, sizeof id, "z_pos%d", r.position);
        int rows, cols;
        char *svg = heatmap(html, id, &rows, &cols);
        char *title = cell_title(svg, r.layer * N_HEADS + r.head);
        snprintf(want, sizeof want, "blocks.%d.attn.hook_z head %d pos %d ", r.layer, r.head, r.position);
        assert_int_equal(strncmp(title, want, strlen(want)), 0);
        snprintf(want, sizeof want, ": %.4f ± %.4f", r.effect, r.standard_error);
        expect_in(title, want);
        free(title);
        free(svg);
        sum[r.layer][r.head] += r.effect;
    }
    int rows, cols;
    char *svg = heatmap(html, "z", &rows, &cols);
    for (int layer = 0; layer < N_LAYERS; layer++)
        for (int head = 0; head < N_HEADS; head++) {
            char *title = cell_title(svg, layer * N_HEADS + head), want[64];
            snprintf(want, sizeof want, "mean over 5 positions: %.4f (min", sum[layer][head] / 5);
            expect_in(title, want);
            free(title);
        }
    free(svg);
    free(html);
    pb_sweep_free(s);
}

/* --write PATH: the report for the browser test. */
static int write_only(const char *path) {
    pb_model *m = load_tiny();
    pb_sweep *s = m ? make_sweep(m, 1) : NULL;
    int ok = s && pb_report_html_write(s, path, &test_extras) == PB_OK;
    if (s && !ok)
        fprintf(stderr, "pb_report_html_write %s: %s\n", path, pb_last_error());
    pb_sweep_free(s);
    pb_model_free(m);
    return ok ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write") == 0)
        return write_only(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: %s [--write PATH]\n", argv[0]);
        return 2;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_page_structure, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_heatmap_cells, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_escaping_and_self_contained, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_top_sites_and_extras, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_nan_cells_without_extras, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_write_failures, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_scale_per_component, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_prompts_shown, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_every_heatmap_exports, write_report, remove_report),
        cmocka_unit_test_setup_teardown(test_head_maps_per_position, write_report, remove_report),
    };
    return cmocka_run_group_tests_name("report_html", tests, setup, teardown) ? 1 : 0;
}
