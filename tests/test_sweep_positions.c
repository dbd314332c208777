/* Every spec position form (integers, negatives, duplicates, ranges,
 * "each", "last", groups, "all", unequal lengths, interchange maps) gives .npy
 * files whose shapes, axis labels and cells agree with results.json's
 * per-site records, read back from the files as a user would: each site
 * record is placed by the axes npy_axes states and must hold its effect,
 * every cell must be some site's, and no cell is NaN. The per-pair token
 * indices of the position axis are checked against each pair's prompt
 * lengths and map. Per-pair metric tokens: a two-pair sweep whose pairs
 * carry their own tokens equals, value for value, two one-pair sweeps with
 * those tokens as the metric's. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"

/* Pairs of the tiny model (vocabulary 128): two of six tokens, one of five. */
#define PAIR6A "{'clean':{'ids':[5,17,33,60,7,90]},'corrupted':{'ids':[5,17,44,60,7,90]}}"
#define PAIR6B "{'clean':{'ids':[9,3,70,21,100,11]},'corrupted':{'ids':[9,3,12,21,100,11]}}"
#define PAIR5 "{'clean':{'ids':[8,70,21,100,12]},'corrupted':{'ids':[8,71,21,100,12]}}"
#define METRIC "{'kind':'logit_diff','positive':[18],'negative':[53]}"

typedef enum source_map { MAP_IDENTITY = 0, MAP_END_ALIGNED, MAP_LISTED } source_map;

typedef struct position_case {
    const char *name;
    const char *mode;  /* NULL: denoising */
    const char *pairs; /* NULL: [PAIR6A, PAIR6B] */
    const char *sites;
    const char *file; /* the .npy checked for labels */
    int n_labels;     /* of its position axis; 0: no position axis */
    int labels[8];    /* what the spec asked, resolved */
    int n_dims;       /* the file's shape */
    int64_t shape[3];
    source_map map;   /* how a base position reads its source position */
    int listed[2][2]; /* MAP_LISTED: [base, source] pairs */
} position_case;

static const position_case cases[] = {
    {"ints", .sites = "[{'component':'resid_pre','layers':'all','positions':[1,3]}]", .file = "resid_pre.npy",
     .n_labels = 2, .labels = {1, 3}, .n_dims = 2, .shape = {2, 2}},
    /* -1 is the last token (5): column 1 holds it, no NaN column for "-1" */
    {"negatives", .sites = "[{'component':'resid_pre','layers':'all','positions':[2,-1]}]", .file = "resid_pre.npy",
     .n_labels = 2, .labels = {2, 5}, .n_dims = 2, .shape = {2, 2}},
    /* -1 names token 5 again and -6 token 0: the first listing stays, in the order asked */
    {"duplicates", .sites = "[{'component':'mlp_out','layers':'all','positions':[5,-1,2,-6]}]", .file = "mlp_out.npy",
     .n_labels = 3, .labels = {5, 2, 0}, .n_dims = 2, .shape = {2, 3}},
    /* ranges, Python slice style, END excluded */
    {"range", .sites = "[{'component':'resid_pre','layers':'all','positions':'1:4'}]", .file = "resid_pre.npy",
     .n_labels = 3, .labels = {1, 2, 3}, .n_dims = 2, .shape = {2, 3}},
    {"range_from_end", .sites = "[{'component':'attn_out','layers':[0],'positions':'-2:'}]", .file = "attn_out.npy",
     .n_labels = 2, .labels = {4, 5}, .n_dims = 2, .shape = {1, 2}},
    {"each", .sites = "[{'component':'attn_out','layers':[1],'positions':'each'}]", .file = "attn_out.npy",
     .n_labels = 6, .labels = {0, 1, 2, 3, 4, 5}, .n_dims = 2, .shape = {1, 6}},
    {"last", .sites = "[{'component':'z','layers':'all','heads':'all','positions':'last'}]", .file = "z.npy",
     .n_labels = 1, .labels = {5}, .n_dims = 3, .shape = {2, 4, 1}},
    {"heads_per_position", .sites = "[{'component':'q','layers':[0],'heads':[3,1],'positions':[0,-2]}]",
     .file = "q.npy", .n_labels = 2, .labels = {0, 4}, .n_dims = 3, .shape = {1, 2, 2}},
    {"groups", .sites = "[{'component':'k','layers':'all','heads':'all','positions':[[0,1,2],[-2,-1]]}]",
     .file = "k_groups.npy", .n_dims = 3, .shape = {2, 2, 2}},
    {"all", .sites = "[{'component':'v','layers':'all','heads':'all','positions':'all'}]", .file = "v_all.npy",
     .n_dims = 2, .shape = {2, 2}},
    {"mixed",
     .sites = "[{'component':'resid_pre','layers':'all','positions':[-1,0]},"
              "{'component':'z','layers':[1],'heads':[0],'positions':'each'},"
              "{'component':'attn_out','layers':'all','positions':'all'}]",
     .file = "resid_pre.npy", .n_labels = 2, .labels = {5, 0}, .n_dims = 2, .shape = {2, 2}},
    /* pairs of 6 and 5 tokens: end-aligned labels, -1 the last token of each */
    {"unequal_each", .pairs = "[" PAIR6A "," PAIR5 "]",
     .sites = "[{'component':'resid_mid','layers':'all','positions':'each'}]", .file = "resid_mid.npy", .n_labels = 5,
     .labels = {-5, -4, -3, -2, -1}, .n_dims = 2, .shape = {2, 5}},
    {"unequal_range", .pairs = "[" PAIR6A "," PAIR5 "]",
     .sites = "[{'component':'mlp_out','layers':'all','positions':'-3:'}]", .file = "mlp_out.npy", .n_labels = 3,
     .labels = {-3, -2, -1}, .n_dims = 2, .shape = {2, 3}},
    {"unequal_list", .pairs = "[" PAIR6A "," PAIR5 "]",
     .sites = "[{'component':'resid_post','layers':[0],'positions':[0,-1,-2]}]", .file = "resid_post.npy",
     .n_labels = 3, .labels = {0, -1, -2}, .n_dims = 2, .shape = {1, 3}},
    /* interchange, base 5 tokens, source 7: base position p reads source p + 2 */
    {"interchange_negatives", .mode = "interchange",
     .pairs = "[{'base':{'ids':[8,70,21,100,12]},'source':{'ids':[1,2,8,71,21,100,12]},'position_map':'last-4'}]",
     .sites = "[{'component':'resid_pre','layers':'all','positions':[-4,-3,-2,-1]}]", .file = "resid_pre.npy",
     .n_labels = 4, .labels = {1, 2, 3, 4}, .n_dims = 2, .shape = {2, 4}, .map = MAP_END_ALIGNED},
    {"interchange_each", .mode = "interchange",
     .pairs = "[{'base':{'ids':[8,70,21,100,12]},'source':{'ids':[1,2,8,71,21,100,12]},'position_map':'last-2'}]",
     .sites = "[{'component':'z','layers':'all','heads':[2],'positions':'each'}]", .file = "z.npy", .n_labels = 2,
     .labels = {3, 4}, .n_dims = 3, .shape = {2, 1, 2}, .map = MAP_END_ALIGNED},
    {"interchange_listed_map", .mode = "interchange",
     .pairs = "[{'base':{'ids':[8,70,21,100,12]},'source':{'ids':[1,2,8,71,21,100,12]},'position_map':[[0,1],[4,6]]},"
              "{'base':{'ids':[9,3,70,21,11]},'source':{'ids':[4,9,3,12,21,100,11]},'position_map':[[0,1],[4,6]]}]",
     .sites = "[{'component':'mlp_out','layers':'all','positions':'each'}]", .file = "mlp_out.npy", .n_labels = 2,
     .labels = {0, 4}, .n_dims = 2, .shape = {2, 2}, .map = MAP_LISTED, .listed = {{0, 1}, {4, 6}}},
    /* interchange whose base runs differ in length (5 and 6): end-aligned */
    {"interchange_unequal", .mode = "interchange",
     .pairs = "[{'base':{'ids':[8,70,21,100,12]},'source':{'ids':[1,2,8,71,21,100,12]},'position_map':'last-2'},"
              "{'base':{'ids':[5,17,33,60,7,90]},'source':{'ids':[5,17,44,60,7,90]},'position_map':'last-2'}]",
     .sites = "[{'component':'resid_pre','layers':'all','positions':'each'}]", .file = "resid_pre.npy", .n_labels = 2,
     .labels = {-2, -1}, .n_dims = 2, .shape = {2, 2}, .map = MAP_END_ALIGNED},
};

typedef struct fixture {
    pb_model *model;
    char dir[64];
} fixture;

static int setup(void **state) {
    fixture *f = calloc(1, sizeof *f);
    f->model = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    *state = f;
    return 0;
}

static int teardown(void **state) {
    fixture *f = *state;
    pb_model_free(f->model);
    free(f);
    return 0;
}

/* The spec with ' for " (the table stays readable). */
static char *spec_text(const position_case *c) {
    char *text = malloc(8192);
    snprintf(text, 8192, "{'mode':'%s','pairs':%s,'sites':%s,'metric':%s}", c->mode ? c->mode : "denoising",
             c->pairs ? c->pairs : "[" PAIR6A "," PAIR6B "]", c->sites, METRIC);
    for (char *p = text; *p; p++)
        if (*p == '\'')
            *p = '"';
    return text;
}

static json_t *load_json(const char *dir, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err);
    if (!root)
        fail_msg("%s: %s", path, err.text);
    return root;
}

static int index_of_int(const json_t *list, long long value) {
    for (size_t i = 0; i < json_array_size(list); i++)
        if (json_integer_value(json_array_get(list, i)) == value)
            return (int)i;
    return -1;
}

static int index_of_group(const json_t *groups, const json_t *positions) {
    for (size_t i = 0; i < json_array_size(groups); i++)
        if (json_equal(json_array_get(groups, i), (json_t *)positions))
            return (int)i;
    return -1;
}

/* The file a site record lands in. */
static void site_file(const json_t *site, char *name, size_t size) {
    const char *component = json_string_value(json_object_get(site, "component"));
    const char *suffix = !json_is_null(json_object_get(site, "position"))       ? ""
                         : json_is_true(json_object_get(site, "all_positions")) ? "_all"
                                                                                : "_groups";
    snprintf(name, size, "%s%s.npy", component, suffix);
}

/* The flat cell of a site in its file, from npy_axes alone; -1 when an axis lacks it. */
static long long site_cell(const json_t *axes, const json_t *site) {
    long long cell = index_of_int(json_object_get(axes, "layers"), json_integer_value(json_object_get(site, "layer")));
    const json_t *shape = json_object_get(axes, "shape"), *names = json_object_get(axes, "axes");
    if (cell < 0)
        return -1;
    for (size_t d = 1; d < json_array_size(names); d++) {
        const char *axis = json_string_value(json_array_get(names, d));
        int k = -1;
        if (strcmp(axis, "head") == 0)
            k = index_of_int(json_object_get(axes, "heads"), json_integer_value(json_object_get(site, "head")));
        else if (strcmp(axis, "position") == 0)
            k = index_of_int(json_object_get(axes, "positions"), json_integer_value(json_object_get(site, "position")));
        else if (strcmp(axis, "group") == 0)
            k = index_of_group(json_object_get(axes, "groups"), json_object_get(site, "positions"));
        if (k < 0)
            return -1;
        cell = cell * json_integer_value(json_array_get(shape, d)) + k;
    }
    return cell;
}

typedef struct npy_file {
    char name[64];
    float *data;
    int64_t n;
    int *hit;
} npy_file;

/* Reads every file npy_axes names, checking its shape against the axes. */
static int read_files(const char *dir, const json_t *npy_axes, npy_file *files, int max) {
    int n = 0;
    const char *name;
    json_t *axes;
    json_object_foreach((json_t *)npy_axes, name, axes) {
        assert_true(n < max);
        npy_file *f = &files[n++];
        snprintf(f->name, sizeof f->name, "%s", name);
        char path[256];
        const json_t *want = json_object_get(axes, "shape");
        int n_dims = (int)json_array_size(want);
        int64_t shape[8];
        float *data = tu_read_f32(tu_path(path, sizeof path, dir, name), n_dims, shape);
        assert_int_equal(n_dims, json_array_size(json_object_get(axes, "axes")));
        f->n = 1;
        for (int d = 0; d < n_dims; d++) {
            assert_int_equal(shape[d], json_integer_value(json_array_get(want, (size_t)d)));
            f->n *= shape[d];
        }
        assert_int_equal(json_array_size(json_object_get(axes, "layers")), shape[0]);
        f->data = data;
        f->hit = calloc((size_t)f->n + 1, sizeof *f->hit);
    }
    return n;
}

/* Every site record's effect sits in its cell; every cell is some site's; no NaN. */
static void check_cells(const char *dir, const json_t *root) {
    const json_t *npy_axes = json_object_get(root, "npy_axes");
    npy_file files[3 * 9];
    int n_files = read_files(dir, npy_axes, files, 3 * 9);
    const json_t *sites = json_object_get(root, "sites");
    for (size_t s = 0; s < json_array_size(sites); s++) {
        const json_t *site = json_array_get(sites, s);
        char name[64];
        site_file(site, name, sizeof name);
        npy_file *f = NULL;
        for (int i = 0; i < n_files; i++)
            if (strcmp(files[i].name, name) == 0)
                f = &files[i];
        if (!f)
            fail_msg("site %zu belongs in %s, which npy_axes does not list", s, name);
        long long cell = site_cell(json_object_get(npy_axes, name), site);
        if (cell < 0 || cell >= f->n)
            fail_msg("site %zu: npy_axes of %s has no cell for it", s, name);
        const json_t *effect = json_object_get(site, "effect");
        assert_true(json_is_number(effect));
        if (f->data[cell] != (float)json_number_value(effect))
            fail_msg("%s cell %lld: %.9g, site %zu's effect %.9g", name, cell, (double)f->data[cell], s,
                     json_number_value(effect));
        f->hit[cell] = 1;
    }
    for (int i = 0; i < n_files; i++) {
        for (int64_t k = 0; k < files[i].n; k++) {
            if (!files[i].hit[k] || isnan(files[i].data[k]))
                fail_msg("%s cell %lld: %s", files[i].name, (long long)k,
                         files[i].hit[k] ? "NaN" : "no site record is there");
        }
        free(files[i].data);
        free(files[i].hit);
    }
}

/* The token index of each label in each pair's prompts, from their lengths and the map. */
static void check_position_index(const position_case *c, const json_t *root) {
    const json_t *axes = json_object_get(json_object_get(root, "npy_axes"), c->file);
    const json_t *index = json_object_get(axes, "position_index");
    int interchange = c->mode && strcmp(c->mode, "interchange") == 0;
    const char *base_key = interchange ? "base" : "corrupted", *source_key = interchange ? "source" : "clean";
    assert_int_equal(json_array_size(index), c->n_labels);
    const json_t *pairs = json_object_get(root, "pairs");
    for (int k = 0; k < c->n_labels; k++) {
        const json_t *column = json_array_get(index, (size_t)k);
        for (size_t i = 0; i < json_array_size(pairs); i++) {
            const json_t *prompts = json_object_get(json_array_get(pairs, i), "prompts");
            int T_base = (int)json_array_size(json_object_get(json_object_get(prompts, base_key), "ids"));
            int T_source = (int)json_array_size(json_object_get(json_object_get(prompts, source_key), "ids"));
            int base = c->labels[k] < 0 ? T_base + c->labels[k] : c->labels[k], source = base;
            if (c->map == MAP_END_ALIGNED)
                source = base + T_source - T_base;
            for (int m = 0; c->map == MAP_LISTED && m < 2; m++)
                if (c->listed[m][0] == base)
                    source = c->listed[m][1];
            assert_int_equal(json_integer_value(json_array_get(json_object_get(column, base_key), i)), base);
            assert_int_equal(json_integer_value(json_array_get(json_object_get(column, source_key), i)), source);
        }
    }
}

static void run_case(fixture *f, const position_case *c) {
    char *spec = spec_text(c);
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, f->model, spec, NULL, NULL) != PB_OK || pb_sweep_run(s) != PB_OK)
        fail_msg("%s: %s", c->name, pb_last_error());
    assert_int_equal(tu_make_temp_dir(f->dir, sizeof f->dir, "pb_positions_"), 0);
    if (pb_sweep_write(s, f->dir, 0) != PB_OK)
        fail_msg("%s: %s", c->name, pb_last_error());
    json_t *root = load_json(f->dir, "results.json");
    const json_t *axes = json_object_get(json_object_get(root, "npy_axes"), c->file);
    if (!axes)
        fail_msg("%s: npy_axes lacks %s", c->name, c->file);
    const json_t *shape = json_object_get(axes, "shape");
    assert_int_equal(json_array_size(shape), c->n_dims);
    for (int d = 0; d < c->n_dims; d++)
        assert_int_equal(json_integer_value(json_array_get(shape, (size_t)d)), c->shape[d]);
    const json_t *labels = json_object_get(axes, "positions");
    assert_int_equal(json_array_size(labels), c->n_labels);
    for (int k = 0; k < c->n_labels; k++)
        assert_int_equal(json_integer_value(json_array_get(labels, (size_t)k)), c->labels[k]);
    if (c->n_labels)
        check_position_index(c, root);
    check_cells(f->dir, root);
    print_message("%-24s %s shape ok, %zu sites placed\n", c->name, c->file,
                  json_array_size(json_object_get(root, "sites")));
    json_decref(root);
    tu_remove_tree(f->dir);
    pb_sweep_free(s);
    free(spec);
}

static void test_position_forms(void **state) {
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        run_case(*state, &cases[i]);
}

/* ---- per-pair metric tokens ------------------------------------------------ */

static pb_sweep *sweep_of(pb_model *m, const char *spec_single_quoted) {
    char spec[4096];
    snprintf(spec, sizeof spec, "%s", spec_single_quoted);
    for (char *p = spec; *p; p++)
        if (*p == '\'')
            *p = '"';
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, spec, NULL, NULL) != PB_OK || pb_sweep_run(s) != PB_OK)
        fail_msg("%s\n%s", pb_last_error(), spec);
    return s;
}

/* Pair i of `both` equals the one pair of `alone`, bit for bit. */
static void expect_same_pair(const pb_sweep *both, int i, const pb_sweep *alone) {
    double b0, s0, b1, s1;
    assert_int_equal(pb_sweep_get_pair(both, i, &b0, &s0), PB_OK);
    assert_int_equal(pb_sweep_get_pair(alone, 0, &b1, &s1), PB_OK);
    assert_true(b0 == b1 && s0 == s1);
    assert_int_equal(pb_sweep_site_count(both), pb_sweep_site_count(alone));
    for (int64_t site = 0; site < pb_sweep_site_count(both); site++) {
        double p0, e0, p1, e1;
        assert_int_equal(pb_sweep_get_row(both, i, site, &p0, &e0), PB_OK);
        assert_int_equal(pb_sweep_get_row(alone, 0, site, &p1, &e1), PB_OK);
        if (!(p0 == p1) || !(e0 == e1))
            fail_msg("pair %d site %lld: %.17g / %.17g together, %.17g / %.17g alone", i, (long long)site, p0, e0, p1,
                     e1);
    }
}

#define SITES "[{'component':'resid_pre','layers':'all','positions':'each'},{'component':'z','layers':'all'}]"

static void test_per_pair_tokens(void **state) {
    fixture *f = *state;
    /* logit_diff: each pair its own positive and negative; the second takes the metric's negative */
    pb_sweep *both = sweep_of(
        f->model,
        "{'mode':'denoising','pairs':["
        "{'clean':{'ids':[5,17,33,60,7,90]},'corrupted':{'ids':[5,17,44,60,7,90]},'positive':[18],'negative':{'ids':[53,9]}},"
        "{'clean':{'ids':[9,3,70,21,100,11]},'corrupted':{'ids':[9,3,12,21,100,11]},'positive':{'ids':[40]}}],"
        "'sites':" SITES ",'metric':{'kind':'logit_diff','negative':[77]}}");
    pb_sweep *first = sweep_of(f->model, "{'mode':'denoising','pairs':[" PAIR6A "],'sites':" SITES
                                         ",'metric':{'kind':'logit_diff','positive':[18],'negative':[53,9]}}");
    pb_sweep *second = sweep_of(f->model, "{'mode':'denoising','pairs':[" PAIR6B "],'sites':" SITES
                                          ",'metric':{'kind':'logit_diff','positive':[40],'negative':[77]}}");
    expect_same_pair(both, 0, first);
    expect_same_pair(both, 1, second);
    /* and they differ from one metric for both: the tokens reached the metric */
    pb_sweep *shared = sweep_of(f->model, "{'mode':'denoising','pairs':[" PAIR6A "," PAIR6B "],'sites':" SITES
                                          ",'metric':{'kind':'logit_diff','positive':[18],'negative':[53,9]}}");
    double b0, s0, b1, s1;
    pb_sweep_get_pair(both, 1, &b0, &s0);
    pb_sweep_get_pair(shared, 1, &b1, &s1);
    assert_true(b0 != b1);
    pb_sweep_free(shared);
    pb_sweep_free(both);
    pb_sweep_free(first);
    pb_sweep_free(second);

    /* logprob in noising: "tokens" per pair, the first pair taking the metric's */
    both = sweep_of(f->model, "{'mode':'noising','pairs':[" PAIR6A ",{'clean':{'ids':[9,3,70,21,100,11]},"
                              "'corrupted':{'ids':[9,3,12,21,100,11]},'tokens':[3,4,5]}],"
                              "'sites':" SITES ",'metric':{'kind':'logprob','tokens':[18]}}");
    first = sweep_of(f->model, "{'mode':'noising','pairs':[" PAIR6A "],'sites':" SITES
                               ",'metric':{'kind':'logprob','tokens':[18]}}");
    second = sweep_of(f->model, "{'mode':'noising','pairs':[" PAIR6B "],'sites':" SITES
                                ",'metric':{'kind':'logprob','tokens':[3,4,5]}}");
    expect_same_pair(both, 0, first);
    expect_same_pair(both, 1, second);
    /* results.json names each pair's tokens */
    assert_int_equal(tu_make_temp_dir(f->dir, sizeof f->dir, "pb_positions_"), 0);
    assert_int_equal(pb_sweep_write(both, f->dir, 0), PB_OK);
    json_t *root = load_json(f->dir, "results.json");
    const json_t *pair1 = json_array_get(json_object_get(root, "pairs"), 1);
    assert_int_equal(json_array_size(json_object_get(pair1, "tokens")), 3);
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(pair1, "tokens"), 2), "id")), 5);
    assert_true(json_is_true(json_object_get(json_object_get(root, "metric"), "tokens_per_pair")));
    json_decref(root);
    tu_remove_tree(f->dir);
    pb_sweep_free(both);
    pb_sweep_free(first);
    pb_sweep_free(second);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_position_forms),
        cmocka_unit_test(test_per_pair_tokens),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
