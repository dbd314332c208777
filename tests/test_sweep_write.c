/* pb_sweep_write against the getters it reports (results.json entry by
 * entry, every .npy cell, the report's lines and ordering), its directory
 * rules (no temporary files left, a non-empty directory refused and left
 * byte-identical, --overwrite replacing stale outputs, a failed overwrite
 * (file size limit) leaving the old set as it was). The CLI's size
 * parser and progress lines: test_cli_progress.c. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"

/* Two pairs of six tokens that differ at position 2; per-position resid_pre,
 * every z head at the last position, attn_out over all positions. */
static const char *const main_spec =
    "{\"mode\": \"denoising\","
    " \"pairs\": [{\"clean\": {\"ids\": [5, 17, 33, 60, 7, 90]}, \"corrupted\": {\"ids\": [5, 17, 44, 60, 7, 90]}},"
    "            {\"clean\": {\"ids\": [9, 3, 70, 21, 100, 11]}, \"corrupted\": {\"ids\": [9, 3, 12, 21, 100, 11]}}],"
    " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},"
    "           {\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"},"
    "           {\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"all\"}],"
    " \"metric\": {\"kind\": \"logit_diff\", \"positive\": {\"ids\": [18]}, \"negative\": {\"ids\": [53]}}}";

typedef struct fixture {
    pb_model *model;
    pb_sweep *sweep;
    char dir[64]; /* a fresh temporary directory per test */
} fixture;

static pb_sweep *make_sweep(pb_model *m, const char *spec, int run) {
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, spec, NULL, NULL) != PB_OK)
        fail_msg("pb_sweep_create: %s", pb_last_error());
    if (run && pb_sweep_run(s) != PB_OK)
        fail_msg("pb_sweep_run: %s", pb_last_error());
    return s;
}

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->model = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    f->sweep = make_sweep(f->model, main_spec, 1);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    return tu_free_sweep_fixture(f, f->sweep, f->model);
}

static int make_dir(void **state) {
    fixture *f = *state;
    return tu_make_temp_dir(f->dir, sizeof f->dir, "pb_sweep_write_");
}

static int remove_dir(void **state) {
    fixture *f = *state;
    tu_remove_tree(f->dir); /* nothing when dir is "" */
    f->dir[0] = 0;
    return 0;
}

static json_t *load_results(const char *dir) {
    char path[1024];
    if (snprintf(path, sizeof path, "%s/results.json", dir) >= (int)sizeof path)
        fail_msg("path too long");
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root)
        fail_msg("%s: %s (line %d)", path, err.text, err.line);
    return root;
}

/* A JSON number or null equals x (null for NaN), bit for bit: the writer
 * prints 17 significant digits, which round-trip doubles. */
static void expect_number(json_t *j, double x, const char *what) {
    if (isnan(x)) {
        if (!json_is_null(j))
            fail_msg("%s: expected null for NaN", what);
        return;
    }
    if (!json_is_number(j))
        fail_msg("%s: expected a number", what);
    if (json_number_value(j) != x)
        fail_msg("%s: %.17g in the file, %.17g from the getter", what, json_number_value(j), x);
}

static const char *const main_files = "attn_out_all.npy report.txt resid_pre.npy results.json z.npy";

static void write_ok(const pb_sweep *s, const char *dir, int overwrite) {
    if (pb_sweep_write(s, dir, overwrite) != PB_OK)
        fail_msg("pb_sweep_write: %s", pb_last_error());
}

/* ---- results.json ---------------------------------------------------------- */

static void test_results_json(void **state) {
    fixture *f = *state;
    const pb_sweep *s = f->sweep;
    write_ok(s, f->dir, 0);
    json_t *root = load_results(f->dir);
    assert_string_equal(json_string_value(json_object_get(root, "schema")), "patchbay.sweep/2");
    pb_sweep_summary sum;
    assert_int_equal(pb_sweep_get_summary(s, &sum), PB_OK);
    int64_t n_sites = pb_sweep_site_count(s);
    assert_int_equal(n_sites, 22); /* 2 layers x 6 positions + 2 x 4 heads + 2 */
    assert_int_equal(json_integer_value(json_object_get(root, "n_sites")), n_sites);
    assert_int_equal(json_integer_value(json_object_get(root, "n_rows")), sum.n_rows);
    assert_int_equal(json_integer_value(json_object_get(root, "n_rows_executed")), sum.n_rows_executed);
    assert_int_equal(json_integer_value(json_object_get(root, "n_significant")), sum.n_significant);
    assert_int_equal(json_integer_value(json_object_get(root, "n_pairs")), 2);
    assert_int_equal(json_integer_value(json_object_get(root, "n_pairs_used")), sum.n_pairs_used);
    assert_string_equal(json_string_value(json_object_get(root, "mode")), "denoising");
    expect_number(json_object_get(root, "clean_baseline"), sum.clean_baseline, "clean_baseline");
    expect_number(json_object_get(root, "corrupted_baseline"), sum.corrupted_baseline, "corrupted_baseline");
    expect_number(json_object_get(root, "total_effect"), sum.total_effect, "total_effect");
    expect_number(json_object_get(root, "circuit_fraction"), sum.circuit_fraction, "circuit_fraction");
    expect_number(json_object_get(root, "flops_executed"), sum.flops_executed, "flops_executed");
    expect_number(json_object_get(root, "flops_naive"), sum.flops_naive, "flops_naive");
    expect_number(json_object_get(root, "significance_threshold"), 0.1, "significance_threshold");
    expect_number(json_object_get(root, "effect_floor"), 1e-4, "effect_floor");
    assert_true(json_is_false(json_object_get(root, "positions_aligned_from_end")));
    char model_path[1024];
    snprintf(model_path, sizeof model_path, "%s/tiny_gqa/model.gguf", tu_fixtures());
    assert_string_equal(json_string_value(json_object_get(root, "model")), model_path);
    json_t *mc = json_object_get(root, "model_config");
    assert_int_equal(json_integer_value(json_object_get(mc, "n_layers")), 2);
    assert_int_equal(json_integer_value(json_object_get(mc, "n_heads")), 4);
    assert_int_equal(json_integer_value(json_object_get(mc, "n_kv_heads")), 2);
    assert_int_equal(json_integer_value(json_object_get(mc, "vocab_size")), 128);
    json_t *metric = json_object_get(root, "metric");
    assert_string_equal(json_string_value(json_object_get(metric, "kind")), "logit_diff");
    /* tokens as ids with their text (the tiny model's vocabulary: id 18 is "n", 53 "G") */
    json_t *positive = json_array_get(json_object_get(metric, "positive"), 0);
    assert_int_equal(json_integer_value(json_object_get(positive, "id")), 18);
    assert_string_equal(json_string_value(json_object_get(positive, "text")), "n");
    json_t *negative = json_array_get(json_object_get(metric, "negative"), 0);
    assert_int_equal(json_integer_value(json_object_get(negative, "id")), 53);
    assert_string_equal(json_string_value(json_object_get(negative, "text")), "G");
    assert_true(json_is_false(json_object_get(metric, "tokens_per_pair")));
    assert_int_equal(json_integer_value(json_object_get(metric, "position")), -1);

    /* Pairs: in denoising the source is clean. */
    json_t *pairs = json_object_get(root, "pairs");
    assert_int_equal(json_array_size(pairs), 2);
    for (int i = 0; i < 2; i++) {
        json_t *p = json_array_get(pairs, (size_t)i);
        double base, source;
        assert_int_equal(pb_sweep_get_pair(s, i, &base, &source), PB_OK);
        assert_int_equal(json_integer_value(json_object_get(p, "index")), i);
        expect_number(json_object_get(p, "base"), base, "pairs[].base");
        expect_number(json_object_get(p, "source"), source, "pairs[].source");
        expect_number(json_object_get(p, "clean"), source, "pairs[].clean");
        expect_number(json_object_get(p, "corrupted"), base, "pairs[].corrupted");
        assert_true(json_is_true(json_object_get(p, "usable")));
    }

    /* Every site, in order, as the getters give it. */
    json_t *sites = json_object_get(root, "sites");
    assert_int_equal(json_array_size(sites), n_sites);
    double max_abs[2] = {-1, -1};
    for (int64_t i = 0; i < n_sites; i++) {
        json_t *e = json_array_get(sites, (size_t)i);
        pb_site_result r;
        assert_int_equal(pb_sweep_get_site(s, i, &r), PB_OK);
        char hook[96];
        snprintf(hook, sizeof hook, "blocks.%d.%s", r.layer, pb_component_hook(r.component));
        assert_string_equal(json_string_value(json_object_get(e, "component")), pb_component_name(r.component));
        assert_string_equal(json_string_value(json_object_get(e, "hook")), hook);
        assert_int_equal(json_integer_value(json_object_get(e, "layer")), r.layer);
        json_t *head = json_object_get(e, "head");
        if (r.head < 0)
            assert_true(json_is_null(head));
        else
            assert_int_equal(json_integer_value(head), r.head);
        json_t *position = json_object_get(e, "position");
        if (r.position == INT32_MIN) {
            assert_true(json_is_null(position));
            assert_true(json_is_true(json_object_get(e, "all_positions"))); /* attn_out "all" */
        } else {
            assert_int_equal(json_integer_value(position), r.position);
            assert_true(json_is_null(json_object_get(e, "positions")));
        }
        expect_number(json_object_get(e, "effect"), r.effect, "effect");
        expect_number(json_object_get(e, "patched"), r.patched, "patched");
        expect_number(json_object_get(e, "stderr"), r.standard_error, "stderr");
        assert_int_equal(json_is_true(json_object_get(e, "significant")), r.significant);
        json_t *pe = json_object_get(e, "per_pair_effect"), *pp = json_object_get(e, "per_pair_patched");
        assert_int_equal(json_array_size(pe), 2);
        assert_int_equal(json_array_size(pp), 2);
        for (int p = 0; p < 2; p++) {
            double patched, effect;
            assert_int_equal(pb_sweep_get_row(s, p, i, &patched, &effect), PB_OK);
            expect_number(json_array_get(pe, (size_t)p), effect, "per_pair_effect");
            expect_number(json_array_get(pp, (size_t)p), patched, "per_pair_patched");
        }
        if (fabs(r.effect) > max_abs[r.layer])
            max_abs[r.layer] = fabs(r.effect);
    }

    /* Both layers, by descending max |effect|. */
    json_t *top = json_object_get(root, "top_layers");
    assert_int_equal(json_array_size(top), 2);
    int first = max_abs[1] > max_abs[0] ? 1 : 0;
    assert_int_equal(json_integer_value(json_object_get(json_array_get(top, 0), "layer")), first);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(top, 1), "layer")), 1 - first);
    expect_number(json_object_get(json_array_get(top, 0), "max_abs_effect"), max_abs[first], "top_layers[0]");

    /* The axes say what the .npy files hold. */
    json_t *axes = json_object_get(root, "npy_axes");
    assert_int_equal(json_object_size(axes), 3);
    json_t *z = json_object_get(axes, "z.npy");
    assert_int_equal(json_array_size(json_object_get(z, "shape")), 3);
    assert_int_equal(json_integer_value(json_array_get(json_object_get(z, "shape"), 1)), 4);
    assert_string_equal(json_string_value(json_array_get(json_object_get(z, "axes"), 1)), "head");
    json_t *labels = json_object_get(json_object_get(axes, "resid_pre.npy"), "positions");
    assert_int_equal(json_array_size(labels), 6);
    for (int t = 0; t < 6; t++)
        assert_int_equal(json_integer_value(json_array_get(labels, (size_t)t)), t);
    assert_non_null(json_object_get(axes, "attn_out_all.npy"));
    json_decref(root);
}

/* ---- .npy ------------------------------------------------------------------ */

static float *read_npy(const char *dir, const char *name, int n_dims_want, const int64_t *shape_want) {
    char path[256];
    int64_t shape[8];
    float *data = tu_read_f32(tu_path(path, sizeof path, dir, name), n_dims_want, shape);
    for (int i = 0; i < n_dims_want; i++)
        if (shape[i] != shape_want[i])
            fail_msg("%s: axis %d has %lld, expected %lld", name, i, (long long)shape[i], (long long)shape_want[i]);
    return data;
}

static void expect_cell(float got, double effect, const char *what) {
    float want = (float)effect;
    if (!(got == want || (isnan(got) && isnan(want))))
        fail_msg("%s: cell %.9g, site effect %.9g", what, (double)got, effect);
}

static void test_npy_cells(void **state) {
    fixture *f = *state;
    const pb_sweep *s = f->sweep;
    write_ok(s, f->dir, 0);
    /* z at "last" only: one position column (5) */
    const int64_t resid_shape[2] = {2, 6}, z_shape[3] = {2, 4, 1}, attn_shape[1] = {2};
    float *resid = read_npy(f->dir, "resid_pre.npy", 2, resid_shape);
    float *z = read_npy(f->dir, "z.npy", 3, z_shape);
    float *attn = read_npy(f->dir, "attn_out_all.npy", 1, attn_shape);
    int hit_resid[12] = {0}, hit_z[8] = {0}, hit_attn[2] = {0};
    for (int64_t i = 0; i < pb_sweep_site_count(s); i++) {
        pb_site_result r;
        assert_int_equal(pb_sweep_get_site(s, i, &r), PB_OK);
        switch (r.component) {
        case PB_COMPONENT_RESID_PRE:
            expect_cell(resid[r.layer * 6 + r.position], r.effect, "resid_pre.npy");
            hit_resid[r.layer * 6 + r.position] = 1;
            break;
        case PB_COMPONENT_Z:
            assert_int_equal(r.position, 5);
            expect_cell(z[r.layer * 4 + r.head], r.effect, "z.npy");
            hit_z[r.layer * 4 + r.head] = 1;
            break;
        case PB_COMPONENT_ATTN_OUT:
            assert_int_equal(r.position, INT32_MIN);
            expect_cell(attn[r.layer], r.effect, "attn_out_all.npy");
            hit_attn[r.layer] = 1;
            break;
        default: fail_msg("unexpected component %d", (int)r.component);
        }
    }
    /* Every cell is some site's: none is NaN. */
    for (int i = 0; i < 12; i++)
        assert_true(hit_resid[i] && !isnan(resid[i]));
    for (int i = 0; i < 8; i++)
        assert_true(hit_z[i] && !isnan(z[i]));
    assert_true(hit_attn[0] && hit_attn[1]);
    free(resid);
    free(z);
    free(attn);
}

/* ---- report.txt -------------------------------------------------------------- */

static void expect_in(const char *text, const char *needle) {
    if (!strstr(text, needle))
        fail_msg("expected '%s' in:\n%s", needle, text);
}

static void test_report(void **state) {
    fixture *f = *state;
    const pb_sweep *s = f->sweep;
    write_ok(s, f->dir, 0);
    char path[256], line[256];
    snprintf(path, sizeof path, "%s/report.txt", f->dir);
    char *text = tu_read_file(path, NULL);
    assert_non_null(text);
    pb_sweep_summary sum;
    assert_int_equal(pb_sweep_get_summary(s, &sum), PB_OK);
    expect_in(text, "\nMode: denoising\n");
    expect_in(text, "\nMetric: logit_diff (positive 18 \"n\"; negative 53 \"G\"; at position -1)\n");
    expect_in(text, "\nLayers: 0-1 (2)\n");
    snprintf(line, sizeof line, "\nSites patched: 22 (rows executed: %lld of 44)\n", (long long)sum.n_rows_executed);
    expect_in(text, line);
    snprintf(line, sizeof line, "\nClean baseline: %.4f\n", sum.clean_baseline);
    expect_in(text, line);
    snprintf(line, sizeof line, "\nCorrupted baseline: %.4f\n", sum.corrupted_baseline);
    expect_in(text, line);
    snprintf(line, sizeof line, "\nTotal effect: %.4f\n", sum.total_effect);
    expect_in(text, line);
    snprintf(line, sizeof line, "\nSignificant sites (|effect| >= 0.10): %lld of 22 (circuit fraction %.3f)\n",
             (long long)sum.n_significant, sum.circuit_fraction);
    expect_in(text, line);
    expect_in(text, "\nTop causal layers: ");
    assert_null(strstr(text, "WARNING"));

    /* The table: 15 rows, ranks 1..15, |effect| not increasing, and the
     * first row is the site with the largest |effect|. */
    const char *table = strstr(text, "\nTop 15 effects:\n");
    assert_non_null(table);
    table = strchr(table + 1, '\n') + 1;
    table = strchr(table, '\n') + 1; /* the column header */
    double previous = INFINITY, largest = 0;
    for (int64_t i = 0; i < pb_sweep_site_count(s); i++) {
        pb_site_result r;
        pb_sweep_get_site(s, i, &r);
        if (fabs(r.effect) > largest)
            largest = fabs(r.effect);
    }
    int rows = 0;
    while (*table && *table != '\n') {
        int rank;
        char hook[96], head[16], position[40];
        double effect, err;
        if (sscanf(table, "%d %95s %15s %39s %lf ± %lf", &rank, hook, head, position, &effect, &err) != 6)
            fail_msg("cannot read table row: %.80s", table);
        assert_int_equal(rank, rows + 1);
        assert_true(fabs(effect) <= previous + 1e-9);
        if (rows == 0)
            assert_true(fabs(fabs(effect) - largest) <= 5e-5);
        assert_true(strncmp(hook, "blocks.", 7) == 0);
        previous = fabs(effect);
        rows++;
        table = strchr(table, '\n') + 1;
    }
    assert_int_equal(rows, 15);
    free(text);
}

/* ---- the directory ------------------------------------------------------------ */

static void test_no_temp_files_and_overwrite(void **state) {
    fixture *f = *state;
    char subdir[128], names[1024], path[256];
    /* A missing directory (and its parent) is created. */
    snprintf(subdir, sizeof subdir, "%s/a/b", f->dir);
    write_ok(f->sweep, subdir, 0);
    tu_list_dir(subdir, names, sizeof names);
    assert_string_equal(names, main_files);

    /* Again without overwrite: refused by name, every byte left as it was. */
    static const char *const files[] = {"attn_out_all.npy", "report.txt", "resid_pre.npy", "results.json", "z.npy"};
    char *before[5];
    size_t before_size[5];
    for (int i = 0; i < 5; i++) {
        snprintf(path, sizeof path, "%s/%s", subdir, files[i]);
        before[i] = tu_read_file(path, &before_size[i]);
        assert_non_null(before[i]);
    }
    assert_int_equal(pb_sweep_write(f->sweep, subdir, 0), PB_ERR_ARG);
    expect_in(pb_last_error(), subdir);
    expect_in(pb_last_error(), "--overwrite");
    for (int i = 0; i < 5; i++) {
        size_t size;
        snprintf(path, sizeof path, "%s/%s", subdir, files[i]);
        char *after = tu_read_file(path, &size);
        assert_non_null(after);
        assert_int_equal(size, before_size[i]);
        assert_memory_equal(after, before[i], size);
        free(after);
    }
    tu_list_dir(subdir, names, sizeof names);
    assert_string_equal(names, main_files);

    /* With overwrite: a stale output of another sweep (q.npy) goes, a
     * file that is not ours stays. */
    snprintf(path, sizeof path, "%s/q.npy", subdir);
    FILE *stale = fopen(path, "wb");
    assert_non_null(stale);
    fclose(stale);
    snprintf(path, sizeof path, "%s/notes.txt", subdir);
    FILE *notes = fopen(path, "wb");
    assert_non_null(notes);
    fputs("mine\n", notes);
    fclose(notes);
    write_ok(f->sweep, subdir, 1);
    tu_list_dir(subdir, names, sizeof names);
    assert_string_equal(names, "attn_out_all.npy notes.txt report.txt resid_pre.npy results.json z.npy");
    /* Same sweep, same bytes. */
    for (int i = 0; i < 5; i++) {
        size_t size;
        snprintf(path, sizeof path, "%s/%s", subdir, files[i]);
        char *after = tu_read_file(path, &size);
        assert_int_equal(size, before_size[i]);
        assert_memory_equal(after, before[i], size);
        free(after);
        free(before[i]);
    }

    /* Under a regular file: refused, nothing created. */
    snprintf(path, sizeof path, "%s/notes.txt/out", subdir);
    assert_int_not_equal(pb_sweep_write(f->sweep, path, 0), PB_OK);
    snprintf(path, sizeof path, "%s/notes.txt", subdir);
    assert_int_equal(pb_sweep_write(f->sweep, path, 1), PB_ERR_ARG);
    expect_in(pb_last_error(), "not a directory");
    tu_list_dir(subdir, names, sizeof names);
    assert_string_equal(names, "attn_out_all.npy notes.txt report.txt resid_pre.npy results.json z.npy");
}

/* Every file of dir (by name) byte for byte; the names in names. */
static void snapshot(const char *dir, char *names, size_t names_size, char **data, size_t *sizes, int max) {
    tu_list_dir(dir, names, names_size);
    char copy[1024], path[1024];
    snprintf(copy, sizeof copy, "%s", names);
    int i = 0;
    for (char *name = strtok(copy, " "); name; name = strtok(NULL, " ")) {
        assert_true(i < max);
        snprintf(path, sizeof path, "%s/%s", dir, name);
        data[i] = tu_read_file(path, &sizes[i]);
        assert_non_null(data[i]);
        i++;
    }
    data[i] = NULL;
}

/* A nearly full disk, as a file size limit (RLIMIT_FSIZE; SIGXFSZ ignored
 * so a write fails with EFBIG instead of ending the process): --overwrite
 * of another sweep's set fails on its large results.json, after its small
 * files were written; the old set must be left whole, byte for byte, with
 * no temporary file and none of the new set's names. Without the limit the
 * same write replaces it. */
static void test_failed_overwrite_keeps_old(void **state) {
    fixture *f = *state;
    char *spec = strdup(main_spec); /* another set: mlp_out per position instead of z */
    const char *zsite = "{\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"}";
    const char *mlp = "{\"component\": \"mlp_out\", \"layers\": \"all\", \"positions\": \"each\"}";
    char *z = strstr(spec, zsite);
    assert_non_null(z);
    assert_true(strlen(mlp) <= strlen(zsite));
    memmove(z + strlen(mlp), z + strlen(zsite), strlen(z + strlen(zsite)) + 1);
    memcpy(z, mlp, strlen(mlp));
    pb_sweep *other = make_sweep(f->model, spec, 1);
    free(spec);
    write_ok(f->sweep, f->dir, 0);
    char names[1024], names_after[1024], *before[16], *after[16];
    size_t before_size[16], after_size[16];
    snapshot(f->dir, names, sizeof names, before, before_size, 15);
    assert_string_equal(names, main_files);

    struct rlimit old_limit, small;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &old_limit), 0);
    small = old_limit;
    small.rlim_cur = 4096; /* above every .npy and report.txt of the new set, below its results.json */
    void (*old_handler)(int) = signal(SIGXFSZ, SIG_IGN);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &small), 0);
    pb_status st = pb_sweep_write(other, f->dir, 1);
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &old_limit), 0);
    signal(SIGXFSZ, old_handler);
    assert_int_equal(st, PB_ERR_IO);
    expect_in(pb_last_error(), "results.json");
    expect_in(pb_last_error(), strerror(EFBIG));

    snapshot(f->dir, names_after, sizeof names_after, after, after_size, 15);
    assert_string_equal(names_after, names);
    for (int i = 0; before[i]; i++) {
        assert_int_equal(after_size[i], before_size[i]);
        assert_memory_equal(after[i], before[i], before_size[i]);
        free(after[i]);
        free(before[i]);
    }
    write_ok(other, f->dir, 1);
    tu_list_dir(f->dir, names, sizeof names);
    assert_string_equal(names, "attn_out_all.npy mlp_out.npy report.txt resid_pre.npy results.json");
    pb_sweep_free(other);
}

/* Pairs of different lengths (end-aligned positions), a pair whose clean and
 * corrupted runs are the same (below the floor), position groups next to
 * "all", and a sweep written before it ran. */
static void test_groups_alignment_and_floor(void **state) {
    fixture *f = *state;
    const char *spec =
        "{\"mode\": \"noising\","
        " \"pairs\": [{\"clean\": {\"ids\": [5, 17, 33, 60, 7, 90, 4]}, \"corrupted\": {\"ids\": [5, 17, 44, 60, 7, 90, 4]}},"
        "            {\"clean\": {\"ids\": [9, 3, 70, 21, 100, 11]}, \"corrupted\": {\"ids\": [9, 3, 70, 21, 100, 11]}},"
        "            {\"clean\": {\"ids\": [8, 70, 21, 100, 12]}, \"corrupted\": {\"ids\": [8, 71, 21, 100, 12]}}],"
        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [1], \"positions\": \"each\"},"
        "           {\"component\": \"k\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": [[-4, -3], [-2, -1]]},"
        "           {\"component\": \"k\", \"layers\": [0], \"heads\": [1], \"positions\": \"all\"}],"
        " \"metric\": {\"kind\": \"logprob\", \"tokens\": {\"ids\": [18, 19]}}}";
    pb_sweep *s = make_sweep(f->model, spec, 1);
    write_ok(s, f->dir, 0);
    char names[1024], path[256];
    tu_list_dir(f->dir, names, sizeof names);
    assert_string_equal(names, "k_all.npy k_groups.npy report.txt resid_pre.npy results.json");

    json_t *root = load_results(f->dir);
    assert_true(json_is_true(json_object_get(root, "positions_aligned_from_end")));
    assert_string_equal(json_string_value(json_object_get(root, "mode")), "noising");
    assert_string_equal(json_string_value(json_object_get(json_object_get(root, "metric"), "kind")), "logprob");
    /* Noising: the base run is clean. */
    json_t *pair0 = json_array_get(json_object_get(root, "pairs"), 0);
    double base, source;
    pb_sweep_get_pair(s, 0, &base, &source);
    expect_number(json_object_get(pair0, "clean"), base, "noising clean");
    expect_number(json_object_get(pair0, "corrupted"), source, "noising corrupted");
    json_t *pair1 = json_array_get(json_object_get(root, "pairs"), 1);
    assert_true(json_is_false(json_object_get(pair1, "usable")));
    assert_true(json_is_null(
        json_array_get(json_object_get(json_array_get(json_object_get(root, "sites"), 0), "per_pair_effect"), 1)));
    json_t *axes = json_object_get(root, "npy_axes");
    json_t *labels = json_object_get(json_object_get(axes, "resid_pre.npy"), "positions");
    assert_int_equal(json_array_size(labels), 5); /* T_min = 5: -5 .. -1 */
    for (int i = 0; i < 5; i++)
        assert_int_equal(json_integer_value(json_array_get(labels, (size_t)i)), i - 5);
    json_t *groups = json_object_get(json_object_get(axes, "k_groups.npy"), "groups");
    assert_int_equal(json_array_size(groups), 2);
    assert_int_equal(json_integer_value(json_array_get(json_array_get(groups, 1), 0)), -2);

    /* Each axis holds what the spec asked: resid_pre layer 1 only, k_all layer 0 head 1 only. */
    const int64_t resid_shape[2] = {1, 5}, group_shape[3] = {2, 2, 2}, all_shape[2] = {1, 1};
    float *resid = read_npy(f->dir, "resid_pre.npy", 2, resid_shape);
    float *kg = read_npy(f->dir, "k_groups.npy", 3, group_shape);
    float *ka = read_npy(f->dir, "k_all.npy", 2, all_shape);
    for (int64_t i = 0; i < pb_sweep_site_count(s); i++) {
        pb_site_result r;
        pb_sweep_get_site(s, i, &r);
        json_t *e = json_array_get(json_object_get(root, "sites"), (size_t)i);
        if (r.component == PB_COMPONENT_RESID_PRE) {
            assert_true(r.position < 0);
            assert_int_equal(r.layer, 1);
            expect_cell(resid[r.position + 5], r.effect, "aligned resid_pre.npy");
        } else if (json_is_true(json_object_get(e, "all_positions"))) {
            assert_true(r.layer == 0 && r.head == 1);
            expect_cell(ka[0], r.effect, "k_all.npy");
        } else {
            int group = r.positions[0] == -4 ? 0 : 1;
            expect_cell(kg[(r.layer * 2 + r.head) * 2 + group], r.effect, "k_groups.npy");
            assert_int_equal(json_array_size(json_object_get(e, "positions")), 2);
        }
    }
    json_t *resid_layers = json_object_get(json_object_get(axes, "resid_pre.npy"), "layers");
    assert_int_equal(json_array_size(resid_layers), 1);
    assert_int_equal(json_integer_value(json_array_get(resid_layers, 0)), 1);
    json_t *all_heads = json_object_get(json_object_get(axes, "k_all.npy"), "heads");
    assert_int_equal(json_array_size(all_heads), 1);
    assert_int_equal(json_integer_value(json_array_get(all_heads, 0)), 1);
    free(resid);
    free(kg);
    free(ka);
    json_decref(root);

    snprintf(path, sizeof path, "%s/report.txt", f->dir);
    char *text = tu_read_file(path, NULL);
    expect_in(text, "\nMode: noising\n");
    expect_in(text, "\nMetric: logprob (tokens 18 \"n\", 19 \"o\"; at position -1)\n");
    expect_in(text, "\nLayers: 0-1 (2)\n");
    expect_in(text, "WARNING: 1 of 3 pairs are below the effect floor");
    char line[128];
    double b1, s1;
    pb_sweep_get_pair(s, 1, &b1, &s1);
    snprintf(line, sizeof line, "  pair 1: clean %.6f, corrupted %.6f\n", b1, s1);
    expect_in(text, line);
    free(text);
    pb_sweep_free(s);

    /* Written before running: every effect null, the report says so. */
    s = make_sweep(f->model, main_spec, 0);
    snprintf(path, sizeof path, "%s/unrun", f->dir);
    write_ok(s, path, 0);
    snprintf(path, sizeof path, "%s/unrun", f->dir);
    root = load_results(path);
    json_t *first = json_array_get(json_object_get(root, "sites"), 0);
    assert_true(json_is_null(json_object_get(first, "effect")));
    assert_int_equal(json_integer_value(json_object_get(root, "n_rows_done")), 0);
    json_decref(root);
    snprintf(path, sizeof path, "%s/unrun/report.txt", f->dir);
    text = tu_read_file(path, NULL);
    expect_in(text, "\nRows done: 0 of 44");
    expect_in(text, "(no site has an effect)");
    free(text);
    pb_sweep_free(s);
}

int main(void) {
    const struct CMUnitTest with_sweep[] = {
        cmocka_unit_test_setup_teardown(test_results_json, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_npy_cells, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_report, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_no_temp_files_and_overwrite, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_failed_overwrite_keeps_old, make_dir, remove_dir),
        cmocka_unit_test_setup_teardown(test_groups_alignment_and_floor, make_dir, remove_dir),
    };
    return cmocka_run_group_tests_name("sweep_write", with_sweep, setup, teardown) ? 1 : 0;
}
