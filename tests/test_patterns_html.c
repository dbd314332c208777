/* patterns.html (pb_patterns_html_write): the attention patterns of a
 * forward as query x key heatmaps. Checked against the capture itself
 * (pb_capture_data, read independently of the page): one heatmap per
 * (layer, head), every cell on or below the diagonal exactly once with the
 * captured value, nothing above it, and every position's token piece (from
 * the vocabulary, escaped by a naive reference here) on both axes.
 *
 * `test_patterns_html --write PATH` writes tiny_gqa's page for the browser
 * test (tests/test_report_browser.sh). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "patchbay.h"
#include "test_util.h"

enum { T_IDS = 7, MAX_T = 16 };
static const int32_t ids[T_IDS] = {1, 5, 3, 17, 4, 42, 9}; /* <|im_start|>, space and newline among them */

typedef struct fixture {
    char dir[256], path[300];
    pb_model *model;
    pb_capture *capture;
} fixture;

/* Runs model over ids with every hook_pattern (and one other hook) captured. */
static fixture *forward_fixture(pb_model *m) {
    fixture *fx = calloc(1, sizeof *fx);
    assert_non_null(fx);
    fx->model = m;
    assert_int_equal(tu_make_temp_dir(fx->dir, sizeof fx->dir, "pb_patterns"), 0);
    snprintf(fx->path, sizeof fx->path, "%s/patterns.html", fx->dir);
    assert_int_equal(pb_capture_create(&fx->capture, m, "blocks.*.attn.hook_pattern,blocks.0.hook_resid_pre"), PB_OK);
    assert_int_equal(pb_forward(m, ids, T_IDS, NULL, fx->capture), PB_OK);
    return fx;
}

static int setup_tiny(void **state) {
    *state = forward_fixture(tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU));
    return 0;
}

static int setup_random(void **state) {
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2};
    assert_int_equal(pb_model_random(&m, "tiny", 7, &o), PB_OK);
    *state = forward_fixture(m);
    return 0;
}

static int teardown(void **state) {
    fixture *fx = *state;
    pb_capture_free(fx->capture);
    pb_model_free(fx->model);
    tu_remove_tree(fx->dir);
    free(fx);
    return 0;
}

static char *write_page(fixture *fx) {
    if (pb_patterns_html_write(fx->model, fx->capture, ids, T_IDS, fx->path) != PB_OK)
        fail_msg("pb_patterns_html_write: %s", pb_last_error());
    char *html = tu_read_file(fx->path, NULL);
    assert_non_null(html);
    return html;
}

static int count(const char *haystack, const char *needle) {
    int n = 0;
    for (const char *p = strstr(haystack, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

/* The value of attribute `name` ("data-q=\"") in the tag at p. */
static const char *attribute(const char *p, const char *name) {
    const char *end = strchr(p, '>');
    const char *a = strstr(p, name);
    assert_non_null(a);
    assert_true(a < end);
    return a + strlen(name);
}

/* Checks one heatmap's cells against its head of the captured pattern. */
static void check_heatmap(const char *svg, const float *pattern, int head, int T) {
    const char *end = strstr(svg, "</svg>");
    assert_non_null(end);
    int seen[MAX_T][MAX_T] = {{0}}, cells = 0;
    for (const char *p = strstr(svg, "<rect class=\"cell\""); p && p < end; p = strstr(p + 1, "<rect class=\"cell\"")) {
        int q = atoi(attribute(p, "data-q=\"")), k = atoi(attribute(p, "data-k=\""));
        float value = strtof(attribute(p, "data-value=\""), NULL);
        assert_true(q >= 0 && q < T && k >= 0 && k < T);
        assert_true(k <= q); /* the causal upper triangle stays blank */
        assert_int_equal(seen[q][k]++, 0);
        assert_true(value == pattern[((size_t)head * T + q) * T + k]); /* exact: 9 digits round-trip a float */
        cells++;
    }
    assert_int_equal(cells, T * (T + 1) / 2);
}

static void test_one_heatmap_per_layer_and_head(void **state) {
    fixture *fx = *state;
    char *html = write_page(fx);
    int maps = 0;
    for (int i = 0; i < pb_capture_count(fx->capture); i++) {
        int layer = -1, n_dims = 0;
        int64_t shape[3];
        if (sscanf(pb_capture_name(fx->capture, i), "blocks.%d.attn.hook_pattern", &layer) != 1 ||
            !strstr(pb_capture_name(fx->capture, i), "hook_pattern"))
            continue;
        const float *pattern = pb_capture_data(fx->capture, i, &n_dims, shape);
        assert_int_equal(n_dims, 3);
        assert_int_equal(shape[1], T_IDS);
        for (int h = 0; h < (int)shape[0]; h++) {
            char id[64];
            snprintf(id, sizeof id, "id=\"pattern-L%d-H%d\"", layer, h);
            assert_int_equal(count(html, id), 1);
            check_heatmap(strstr(html, id), pattern, h, T_IDS);
            for (int q = 0; q < T_IDS; q++) /* what the page leaves blank is 0 in the capture too */
                for (int k = q + 1; k < T_IDS; k++)
                    assert_true(pattern[((size_t)h * T_IDS + q) * T_IDS + k] == 0.0f);
            maps++;
        }
    }
    assert_int_equal(maps, pb_model_get_config(fx->model)->n_layers * pb_model_get_config(fx->model)->n_heads);
    assert_int_equal(count(html, "<svg class=\"heatmap pattern\""), maps);
    assert_int_equal(count(html, "class=\"export-svg\""), maps);
    assert_int_equal(count(html, "class=\"export-png\""), maps);
    assert_null(strstr(html, "resid_pre")); /* only the patterns are drawn */
    assert_null(strstr(html, "http"));      /* self-contained */
    free(html);
}

/* A naive HTML escape of a token as the labels show it: whitespace made
 * visible, the five special characters as entities. */
static void reference_label(const char *token, char *out, size_t size) {
    out[0] = 0;
    for (const char *c = token; *c; c++) {
        const char *s = *c == '&'    ? "&amp;"
                        : *c == '<'  ? "&lt;"
                        : *c == '>'  ? "&gt;"
                        : *c == '"'  ? "&quot;"
                        : *c == '\'' ? "&#39;"
                        : *c == ' '  ? "·"
                        : *c == '\n' ? "↵"
                        : *c == '\t' ? "⇥"
                                     : NULL;
        char one[2] = {*c, 0};
        strncat(out, s ? s : one, size - strlen(out) - 1);
    }
}

/* Every position's token on the query and the key axis, and in the prompt. */
static void test_token_labels(void **state) {
    fixture *fx = *state;
    char *html = write_page(fx);
    for (int t = 0; t < T_IDS; t++) {
        char token[256], label[512], want[700];
        assert_int_equal(pb_model_token_text(fx->model, ids[t], token, sizeof token), PB_OK);
        reference_label(token, label, sizeof label);
        for (int axis = 0; axis < 2; axis++) {
            snprintf(want, sizeof want, "<title>%s %d: %s (id %d)</title>", axis ? "key" : "query", t, label,
                     (int)ids[t]);
            if (!strstr(html, want))
                fail_msg("no axis label %s", want);
        }
        snprintf(want, sizeof want, "<span class=\"tok\" title=\"position %d, id %d\">%s<sub>%d</sub></span>", t,
                 (int)ids[t], label, t);
        if (!strstr(html, want))
            fail_msg("the prompt does not show %s", want);
    }
    free(html);
}

/* Without a tokenizer (a random model) the labels are the ids. */
static void test_id_labels_without_tokenizer(void **state) {
    fixture *fx = *state;
    char *html = write_page(fx);
    char want[128];
    for (int t = 0; t < T_IDS; t++) {
        snprintf(want, sizeof want, "<title>query %d: &lt;%d&gt; (id %d)</title>", t, (int)ids[t], (int)ids[t]);
        if (!strstr(html, want))
            fail_msg("no id label %s", want);
    }
    free(html);
}

static void test_refusals_leave_no_file(void **state) {
    fixture *fx = *state;
    pb_capture *other = NULL;
    assert_int_equal(pb_capture_create(&other, fx->model, "blocks.0.hook_resid_pre"), PB_OK);
    assert_int_equal(pb_forward(fx->model, ids, T_IDS, NULL, other), PB_OK);
    assert_int_equal(pb_patterns_html_write(fx->model, other, ids, T_IDS, fx->path), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "hook_pattern"));
    pb_capture_free(other);
    assert_int_equal(pb_patterns_html_write(fx->model, fx->capture, ids, T_IDS - 1, fx->path), PB_ERR_ARG);
    assert_int_not_equal(access(fx->path, F_OK), 0);
    char missing[400];
    snprintf(missing, sizeof missing, "%s/no/such/dir/patterns.html", fx->dir);
    assert_int_equal(pb_patterns_html_write(fx->model, fx->capture, ids, T_IDS, missing), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), "patterns.html"));
    char names[512];
    tu_list_dir(fx->dir, names, sizeof names);
    assert_string_equal(names, ""); /* no temporary left behind either */
}

/* --write PATH: tiny_gqa's page, for the browser test. */
static int write_only(const char *path) {
    void *state = NULL;
    setup_tiny(&state);
    fixture *fx = state;
    pb_status st = pb_patterns_html_write(fx->model, fx->capture, ids, T_IDS, path);
    if (st != PB_OK)
        fprintf(stderr, "pb_patterns_html_write: %s\n", pb_last_error());
    teardown(&state);
    return st == PB_OK ? 0 : 1;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--write") == 0)
        return write_only(argv[2]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_one_heatmap_per_layer_and_head, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_token_labels, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_refusals_leave_no_file, setup_tiny, teardown),
        cmocka_unit_test_setup_teardown(test_id_labels_without_tokenizer, setup_random, teardown),
        cmocka_unit_test_setup_teardown(test_one_heatmap_per_layer_and_head, setup_random, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
