/* Sweep spec parsing (host/patching/sweep_spec.c) against a hand-made config, no
 * model needed: valid specs of every mode with every parsed field checked,
 * and a table of refusals, each asserting the status and that the message
 * names the key path and the bad value or the allowed range. Projection
 * direction files are written into a temporary folder by the group setup.
 * Specs are written with ' for " to keep them readable. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/npy.h"
#include "patchbay.h"
#include "patching/sweep_spec.h"

static char tmp_dir[64];

static pb_model_config test_config(void) {
    pb_model_config c = {
        .arch = "llama",
        .n_layers = 4,
        .d_model = 8,
        .n_heads = 4,
        .n_kv_heads = 2,
        .head_dim = 2,
        .d_mlp = 16,
        .vocab_size = 50,
        .context_length = 64,
        .rms_eps = 1e-5f,
        .rope_theta = 10000.0f,
        .bos_id = -1,
        .eos_id = -1,
    };
    return c;
}

/* ' -> " ; caller frees. */
static char *unquote(const char *text) {
    char *s = strdup(text);
    assert_non_null(s);
    for (char *p = s; *p; p++)
        if (*p == '\'')
            *p = '"';
    return s;
}

static pb_status parse_in(pb_sweep_spec *spec, const char *text, const char *dir) {
    pb_model_config cfg = test_config();
    char *json = unquote(text);
    pb_status status = pb_sweep_spec_parse(spec, json, dir, &cfg);
    free(json);
    return status;
}

static void parse_ok(pb_sweep_spec *spec, const char *text) {
    pb_status status = parse_in(spec, text, tmp_dir);
    if (status != PB_OK)
        fail_msg("spec refused (%s): %s\nspec: %s", pb_status_name(status), pb_last_error(), text);
}

static void assert_ints(const int *got, int n_got, const int *want, int n_want) {
    assert_int_equal(n_got, n_want);
    for (int i = 0; i < n_want; i++)
        if (got[i] != want[i])
            fail_msg("index %d: got %d, want %d", i, got[i], want[i]);
}

static void assert_ids(const int32_t *got, int n_got, const int *want, int n_want) {
    assert_int_equal(n_got, n_want);
    for (int i = 0; i < n_want; i++)
        if (got[i] != want[i])
            fail_msg("index %d: got %d, want %d", i, (int)got[i], want[i]);
}

#define INTS(...) ((const int[]){__VA_ARGS__}), (int)(sizeof((const int[]){__VA_ARGS__}) / sizeof(int))

static void write_direction(const char *name, const float *data, int n_dims, const int64_t *shape) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", tmp_dir, name);
    if (pb_npy_write(path, data, PB_NPY_F32, n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
}

/* Direction files: dir_1d (8,) = (3, 0, 4, 0, ...); dir_rows (4, 8) with
 * row l, entry i = (l+1)(i+1), sign alternating; bad_shape (3, 8);
 * zero (8,); nan (8,) with a NaN at 2; zero_row (4, 8) with row 1 zero. */
static int group_setup(void **state) {
    (void)state;
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pb_spec_XXXXXX");
    if (!mkdtemp(tmp_dir))
        return -1;
    float v1[8] = {3, 0, 4, 0, 0, 0, 0, 0};
    write_direction("dir_1d.npy", v1, 1, (int64_t[]){8});
    float rows[4 * 8];
    for (int l = 0; l < 4; l++)
        for (int i = 0; i < 8; i++)
            rows[l * 8 + i] = (float)((l + 1) * (i + 1)) * (i % 2 ? -1.0f : 1.0f);
    write_direction("dir_rows.npy", rows, 2, (int64_t[]){4, 8});
    float bad[3 * 8] = {1};
    write_direction("bad_shape.npy", bad, 2, (int64_t[]){3, 8});
    float zero[8] = {0};
    write_direction("zero.npy", zero, 1, (int64_t[]){8});
    float with_nan[8] = {1, 2, NAN, 4, 5, 6, 7, 8};
    write_direction("nan.npy", with_nan, 1, (int64_t[]){8});
    float zero_row[4 * 8];
    for (int i = 0; i < 32; i++)
        zero_row[i] = i / 8 == 1 ? 0.0f : 1.0f;
    write_direction("zero_row.npy", zero_row, 2, (int64_t[]){4, 8});
    return 0;
}

static int group_teardown(void **state) {
    (void)state;
    const char *names[] = {"dir_1d.npy", "dir_rows.npy", "bad_shape.npy", "zero.npy", "nan.npy", "zero_row.npy"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[256];
        snprintf(path, sizeof path, "%s/%s", tmp_dir, names[i]);
        unlink(path);
    }
    rmdir(tmp_dir);
    return 0;
}

/* ---- component names --------------------------------------------------- */

static void test_component_names(void **state) {
    (void)state;
    const char *names[] = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "q", "k", "v"};
    const char *hooks[] = {"hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                           "attn.hook_z",    "attn.hook_q",    "attn.hook_k",     "attn.hook_v"};
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        assert_string_equal(pb_component_name((pb_component)c), names[c]);
        assert_string_equal(pb_component_hook((pb_component)c), hooks[c]);
    }
    assert_null(pb_component_name(PB_COMPONENT_COUNT));
    assert_null(pb_component_hook(PB_COMPONENT_COUNT));
    assert_null(pb_component_name((pb_component)-1));
}

/* ---- valid specs -------------------------------------------------------- */

/* The example in the brief / docs/patching.md style. */
static void test_doc_example(void **state) {
    (void)state;
    pb_sweep_spec s;
    parse_ok(&s, "{'mode':'denoising','pairs':[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]}}],"
                 "'sites':[{'component':'resid_pre','layers':'all','positions':'each'},"
                 "{'component':'z','layers':[3,2],'heads':'all','positions':'last'}],"
                 "'metric':{'kind':'logit_diff','positive':{'ids':[40]},'negative':{'ids':[1,2]}},"
                 "'significance_threshold':0.1}");
    assert_int_equal(s.mode, PB_MODE_DENOISING);
    assert_int_equal(s.n_pairs, 1);
    const pb_pair_spec *p = &s.pairs[0];
    assert_ids(p->base.ids, p->base.T, INTS(1, 4, 3)); /* denoising: base = corrupted */
    assert_ids(p->source.ids, p->source.T, INTS(1, 2, 3));
    assert_int_equal(p->base.is_noise, 0);
    assert_int_equal(p->source.is_noise, 0);
    assert_int_equal(p->clean_is_source, 1);
    assert_ints(p->position_map, p->base.T, INTS(0, 1, 2));

    assert_int_equal(s.n_sites, 2);
    assert_int_equal(s.sites[0].component, PB_COMPONENT_RESID_PRE);
    assert_ints(s.sites[0].layers, s.sites[0].n_layers, INTS(0, 1, 2, 3));
    assert_null(s.sites[0].heads);
    assert_int_equal(s.sites[0].n_heads, 0);
    assert_int_equal(s.sites[0].position_mode, PB_POSITIONS_EACH);
    assert_null(s.sites[0].positions);
    assert_int_equal(s.sites[1].component, PB_COMPONENT_Z);
    assert_ints(s.sites[1].layers, s.sites[1].n_layers, INTS(3, 2));
    assert_ints(s.sites[1].heads, s.sites[1].n_heads, INTS(0, 1, 2, 3));
    assert_int_equal(s.sites[1].position_mode, PB_POSITIONS_LAST);

    assert_int_equal(s.metric.kind, PB_METRIC_LOGIT_DIFF);
    assert_ids(s.metric.positive, s.metric.n_positive, INTS(40));
    assert_ids(s.metric.negative, s.metric.n_negative, INTS(1, 2));
    assert_int_equal(s.metric.position, -1);
    assert_null(s.metric.direction);
    assert_null(s.metric.direction_path);
    assert_true(s.significance_threshold == 0.1);
    assert_true(s.effect_floor == 1e-4);
    pb_sweep_spec_free(&s);
    assert_null(s.pairs);
    assert_int_equal(s.n_pairs, 0);
    pb_sweep_spec_free(&s); /* twice is fine: free zeroes */
    pb_sweep_spec_free(NULL);
}

static void test_denoising_full(void **state) {
    (void)state;
    pb_sweep_spec s;
    parse_ok(&s, "{'mode':'denoising','description':'every field',"
                 "'pairs':[{'clean':{'ids':[5,6,7,8]},'corrupted':{'noise':{'scale':3.0,'positions':[0,-1],'seed':7}}},"
                 "{'clean':{'ids':[9,10,11,12,13]},'corrupted':{'ids':[9,10,14,12,13]}}],"
                 "'sites':[{'component':'k','layers':[1]},"
                 "{'component':'v','layers':'all','heads':[1]},"
                 "{'component':'resid_mid','layers':[0],'positions':[0,-1,2]},"
                 "{'component':'attn_out','layers':[2],'positions':[[0,1],[-1],[1,-2]]},"
                 "{'component':'mlp_out','layers':[3],'positions':'all'},"
                 "{'component':'attn.hook_q','layers':[0,3],'heads':[3,0]},"
                 "{'component':'hook_resid_post','layers':[2]}],"
                 "'metric':{'kind':'logprob','tokens':[5,6],'position':-2},"
                 "'significance_threshold':0.25,'effect_floor':0.001}");
    assert_int_equal(s.n_pairs, 2);
    const pb_pair_spec *p = &s.pairs[0];
    /* base = corrupted = noisy copy of the clean ids */
    assert_int_equal(p->base.is_noise, 1);
    assert_ids(p->base.ids, p->base.T, INTS(5, 6, 7, 8));
    assert_true(p->base.noise_scale == 3.0);
    assert_ints(p->base.noise_positions, p->base.n_noise_positions, INTS(0, 3));
    assert_int_equal(p->base.noise_seed, 7);
    assert_int_equal(p->source.is_noise, 0);
    assert_ids(p->source.ids, p->source.T, INTS(5, 6, 7, 8));
    assert_null(p->source.noise_positions);
    assert_int_equal(p->clean_is_source, 1);
    assert_ints(p->position_map, p->base.T, INTS(0, 1, 2, 3));
    p = &s.pairs[1];
    assert_ids(p->base.ids, p->base.T, INTS(9, 10, 14, 12, 13));
    assert_ids(p->source.ids, p->source.T, INTS(9, 10, 11, 12, 13));
    assert_ints(p->position_map, p->base.T, INTS(0, 1, 2, 3, 4));

    assert_int_equal(s.n_sites, 7);
    const pb_site_spec *site = &s.sites[0];
    assert_int_equal(site->component, PB_COMPONENT_K);
    assert_ints(site->layers, site->n_layers, INTS(1));
    assert_ints(site->heads, site->n_heads, INTS(0, 1)); /* k: n_kv_heads, default "all" */
    assert_int_equal(site->position_mode, PB_POSITIONS_EACH);
    site = &s.sites[1];
    assert_int_equal(site->component, PB_COMPONENT_V);
    assert_ints(site->layers, site->n_layers, INTS(0, 1, 2, 3));
    assert_ints(site->heads, site->n_heads, INTS(1));
    site = &s.sites[2];
    assert_int_equal(site->component, PB_COMPONENT_RESID_MID);
    assert_int_equal(site->position_mode, PB_POSITIONS_LIST);
    assert_ints(site->positions, site->n_positions, INTS(0, -1, 2)); /* kept as given */
    assert_null(site->group_sizes);
    assert_int_equal(site->n_groups, 0);
    site = &s.sites[3];
    assert_int_equal(site->component, PB_COMPONENT_ATTN_OUT);
    assert_int_equal(site->position_mode, PB_POSITIONS_GROUPS);
    assert_ints(site->positions, site->n_positions, INTS(0, 1, -1, 1, -2));
    assert_ints(site->group_sizes, site->n_groups, INTS(2, 1, 2));
    site = &s.sites[4];
    assert_int_equal(site->component, PB_COMPONENT_MLP_OUT);
    assert_int_equal(site->position_mode, PB_POSITIONS_ALL);
    assert_null(site->heads);
    site = &s.sites[5];
    assert_int_equal(site->component, PB_COMPONENT_Q);
    assert_ints(site->layers, site->n_layers, INTS(0, 3));
    assert_ints(site->heads, site->n_heads, INTS(3, 0));
    site = &s.sites[6];
    assert_int_equal(site->component, PB_COMPONENT_RESID_POST);

    assert_int_equal(s.metric.kind, PB_METRIC_LOGPROB);
    assert_ids(s.metric.positive, s.metric.n_positive, INTS(5, 6));
    assert_null(s.metric.negative);
    assert_int_equal(s.metric.position, -2);
    assert_true(s.significance_threshold == 0.25);
    assert_true(s.effect_floor == 0.001);
    pb_sweep_spec_free(&s);
}

static void test_noising_full(void **state) {
    (void)state;
    pb_sweep_spec s;
    parse_ok(&s, "{'mode':'noising',"
                 "'pairs':[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,2,4]}},"
                 "{'clean':{'ids':[7,8,9]},'corrupted':{'noise':{'scale':0.5,'positions':[-2]}}}],"
                 "'sites':[{'component':'resid_pre','layers':[0],'positions':[[0,1,2]]}],"
                 "'metric':{'kind':'refusal_score','tokens':{'ids':[3,4,9]},'position':2}}");
    assert_int_equal(s.mode, PB_MODE_NOISING);
    const pb_pair_spec *p = &s.pairs[0];
    assert_ids(p->base.ids, p->base.T, INTS(1, 2, 3)); /* noising: base = clean */
    assert_ids(p->source.ids, p->source.T, INTS(1, 2, 4));
    assert_int_equal(p->clean_is_source, 0);
    assert_ints(p->position_map, p->base.T, INTS(0, 1, 2));
    p = &s.pairs[1];
    assert_int_equal(p->base.is_noise, 0);
    assert_int_equal(p->source.is_noise, 1);
    assert_ids(p->source.ids, p->source.T, INTS(7, 8, 9));
    assert_true(p->source.noise_scale == 0.5);
    assert_ints(p->source.noise_positions, p->source.n_noise_positions, INTS(1));
    assert_int_equal(p->source.noise_seed, 0); /* default */
    assert_int_equal(s.sites[0].position_mode, PB_POSITIONS_GROUPS);
    assert_ints(s.sites[0].group_sizes, s.sites[0].n_groups, INTS(3));
    assert_int_equal(s.metric.kind, PB_METRIC_REFUSAL_SCORE);
    assert_ids(s.metric.positive, s.metric.n_positive, INTS(3, 4, 9));
    assert_int_equal(s.metric.position, 2);
    assert_true(s.significance_threshold == 0.1);
    assert_true(s.effect_floor == 1e-4);
    pb_sweep_spec_free(&s);
}

static void test_interchange_full(void **state) {
    (void)state;
    pb_sweep_spec s;
    parse_ok(&s, "{'mode':'interchange',"
                 "'pairs':[{'base':{'ids':[1,2,3,4]},'source':{'ids':[5,6,7,8,9,10]},'position_map':'last'},"
                 "{'base':{'ids':[1,2,3,4,5]},'source':{'ids':[6,7,8]},'position_map':'last-2'},"
                 "{'base':{'ids':[1,2,3,4]},'source':{'ids':[6,7,8]},'position_map':[[0,1],[-1,-1],[2,0]]},"
                 "{'base':{'ids':[11,12]},'source':{'ids':[13,14]}}],"
                 "'sites':[{'component':'z','layers':[1],'heads':[2],'positions':'last'},"
                 "{'component':'resid_post','layers':[0,1],'positions':[-1]},"
                 "{'component':'mlp_out','layers':[0],'positions':'each'}],"
                 "'metric':{'kind':'projection','direction':'dir_rows.npy','layer':2,'hook':'resid_post'}}");
    assert_int_equal(s.mode, PB_MODE_INTERCHANGE);
    assert_int_equal(s.n_pairs, 4);
    for (int i = 0; i < 4; i++)
        assert_int_equal(s.pairs[i].clean_is_source, 1);
    const pb_pair_spec *p = &s.pairs[0];
    assert_ids(p->base.ids, p->base.T, INTS(1, 2, 3, 4));
    assert_ids(p->source.ids, p->source.T, INTS(5, 6, 7, 8, 9, 10));
    assert_ints(p->position_map, p->base.T, INTS(-1, -1, -1, 5));
    p = &s.pairs[1];
    assert_ints(p->position_map, p->base.T, INTS(-1, -1, -1, 1, 2));
    p = &s.pairs[2];
    assert_ints(p->position_map, p->base.T, INTS(1, -1, 0, 2));
    p = &s.pairs[3];
    assert_ints(p->position_map, p->base.T, INTS(0, 1));

    assert_int_equal(s.sites[0].position_mode, PB_POSITIONS_LAST);
    assert_ints(s.sites[1].positions, s.sites[1].n_positions, INTS(-1));
    assert_int_equal(s.sites[2].position_mode, PB_POSITIONS_EACH);

    assert_int_equal(s.metric.kind, PB_METRIC_PROJECTION);
    assert_int_equal(s.metric.layer, 2);
    assert_int_equal(s.metric.hook_post, 1);
    assert_int_equal(s.metric.position, -1);
    assert_string_equal(s.metric.direction_path, "dir_rows.npy");
    /* row 2 of dir_rows: 3 * (i+1) * (+1, -1, ...), normalised */
    double norm = 0.0;
    for (int i = 0; i < 8; i++)
        norm += 9.0 * (i + 1) * (i + 1);
    norm = sqrt(norm);
    double unit = 0.0;
    for (int i = 0; i < 8; i++) {
        double want = 3.0 * (i + 1) * (i % 2 ? -1.0 : 1.0) / norm;
        assert_true(fabs(s.metric.direction[i] - want) < 1e-6);
        unit += (double)s.metric.direction[i] * s.metric.direction[i];
    }
    assert_true(fabs(unit - 1.0) < 1e-6);
    pb_sweep_spec_free(&s);
}

/* 1-D direction, default hook, relative to spec_dir and absolute with no
 * spec_dir. */
static void test_projection_paths(void **state) {
    (void)state;
    pb_sweep_spec s;
    parse_ok(&s, "{'mode':'denoising','pairs':[{'clean':{'ids':[1,2]},'corrupted':{'ids':[3,2]}}],"
                 "'sites':[{'component':'resid_pre','layers':[0]}],"
                 "'metric':{'kind':'projection','direction':'dir_1d.npy','layer':3,'position':0}}");
    assert_int_equal(s.metric.hook_post, 0);
    assert_int_equal(s.metric.layer, 3);
    assert_int_equal(s.metric.position, 0);
    const float want[8] = {0.6f, 0, 0.8f, 0, 0, 0, 0, 0};
    for (int i = 0; i < 8; i++)
        assert_true(fabsf(s.metric.direction[i] - want[i]) < 1e-7f);
    pb_sweep_spec_free(&s);

    char text[512];
    snprintf(text, sizeof text,
             "{'mode':'denoising','pairs':[{'clean':{'ids':[1,2]},'corrupted':{'ids':[3,2]}}],"
             "'sites':[{'component':'resid_pre','layers':[0]}],"
             "'metric':{'kind':'projection','direction':'%s/dir_1d.npy','layer':0,'hook':'resid_pre'}}",
             tmp_dir);
    assert_int_equal(parse_in(&s, text, NULL), PB_OK);
    assert_non_null(s.metric.direction);
    assert_true(fabsf(s.metric.direction[0] - 0.6f) < 1e-7f);
    pb_sweep_spec_free(&s);
}

static void test_kl_and_bare_tokens(void **state) {
    (void)state;
    pb_sweep_spec s;
    parse_ok(&s, "{'mode':'denoising','pairs':[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[4,2,3]}}],"
                 "'sites':[{'component':'v','layers':[0],'heads':'all','positions':[-3]}],"
                 "'metric':{'kind':'kl','position':-3}}");
    assert_int_equal(s.metric.kind, PB_METRIC_KL);
    assert_int_equal(s.metric.position, -3);
    assert_null(s.metric.positive);
    assert_ints(s.sites[0].heads, s.sites[0].n_heads, INTS(0, 1));
    pb_sweep_spec_free(&s);

    parse_ok(&s, "{'mode':'noising','pairs':[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[4,2,3]}}],"
                 "'sites':[{'component':'resid_pre','layers':[0]}],"
                 "'metric':{'kind':'logit_diff','positive':[0,49],'negative':{'ids':[48]}}}");
    assert_ids(s.metric.positive, s.metric.n_positive, INTS(0, 49));
    assert_ids(s.metric.negative, s.metric.n_negative, INTS(48));
    pb_sweep_spec_free(&s);
}

/* Prompts of exactly context_length tokens pass; one more is refused. */
static void test_context_length(void **state) {
    (void)state;
    for (int T = 64; T <= 65; T++) {
        char ids[512] = "";
        size_t used = 0;
        for (int i = 0; i < T; i++)
            used += (size_t)snprintf(ids + used, sizeof ids - used, "%s%d", i ? "," : "", i % 50);
        char text[1400];
        snprintf(text, sizeof text,
                 "{'mode':'denoising',"
                 "'pairs':[{'clean':{'ids':[%s]},'corrupted':{'noise':{'scale':1,'positions':[0]}}}],"
                 "'sites':[{'component':'resid_pre','layers':[0]}],'metric':{'kind':'kl'}}",
                 ids);
        pb_sweep_spec s;
        pb_status status = parse_in(&s, text, tmp_dir);
        if (T == 64) {
            assert_int_equal(status, PB_OK);
            assert_int_equal(s.pairs[0].base.T, 64);
        } else {
            assert_int_equal(status, PB_ERR_ARG);
            assert_non_null(strstr(pb_last_error(), "pairs[0].clean.ids: 65 tokens exceed"));
            assert_non_null(strstr(pb_last_error(), "context_length 64"));
            assert_null(s.pairs);
        }
        pb_sweep_spec_free(&s);
    }
}

static void test_null_arguments(void **state) {
    (void)state;
    pb_model_config cfg = test_config();
    pb_sweep_spec s;
    assert_int_equal(pb_sweep_spec_parse(NULL, "{}", NULL, &cfg), PB_ERR_ARG);
    assert_int_equal(pb_sweep_spec_parse(&s, NULL, NULL, &cfg), PB_ERR_ARG);
    assert_int_equal(pb_sweep_spec_parse(&s, "{}", NULL, NULL), PB_ERR_ARG);
    pb_sweep_spec_free(&s);
}

/* ---- refusals ------------------------------------------------------------ */

typedef struct refusal {
    const char *name;
    const char *raw; /* the whole spec, when set; else built from the parts */
    const char *mode, *pairs, *sites, *metric, *extra;
    pb_status status;
    const char *needles[3];
} refusal;

#define PAIR3 "{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]}}"
#define PAIR5 "{'clean':{'ids':[1,2,3,4,5]},'corrupted':{'ids':[1,2,3,4,6]}}"
#define SITE "{'component':'resid_pre','layers':'all'}"
#define METRIC "{'kind':'logit_diff','positive':[40],'negative':[1]}"
#define IPAIR(map) "{'base':{'ids':[1,2,3]},'source':{'ids':[4,5]},'position_map':" map "}"
#define PROJ(file, layer) "{'kind':'projection','direction':'" file "','layer':" layer "}"

static const refusal refusals[] = {
    /* top level */
    {"not_json", .raw = "{'mode': 'denoising',", .status = PB_ERR_ARG, .needles = {"not valid JSON", "line 1"}},
    {"top_level_array", .raw = "[1, 2]", .needles = {"top level", "array"}},
    {"duplicate_key", .raw = "{'mode':'noising','mode':'denoising'}", .needles = {"not valid JSON", "duplicate"}},
    {"missing_mode", .raw = "{'pairs':[" PAIR3 "],'sites':[" SITE "],'metric':" METRIC "}",
     .needles = {"spec: missing required key 'mode'"}},
    {"missing_pairs", .raw = "{'mode':'denoising','sites':[" SITE "],'metric':" METRIC "}",
     .needles = {"missing required key 'pairs'"}},
    {"missing_sites", .raw = "{'mode':'denoising','pairs':[" PAIR3 "],'metric':" METRIC "}",
     .needles = {"missing required key 'sites'"}},
    {"missing_metric", .raw = "{'mode':'denoising','pairs':[" PAIR3 "],'sites':[" SITE "]}",
     .needles = {"missing required key 'metric'"}},
    {"unknown_mode", .mode = "patching", .needles = {"spec: mode: \"patching\" is not a mode", "\"interchange\""}},
    {"mode_wrong_type", .raw = "{'mode':1,'pairs':[" PAIR3 "],'sites':[" SITE "],'metric':" METRIC "}",
     .needles = {"spec: mode: expected", "got an integer 1"}},
    {"unknown_top_level_key", .extra = ",'sights':[]",
     .needles = {"spec: sights: unknown key", "mode, pairs, sites, metric, significance_threshold"}},
    {"significance_negative", .extra = ",'significance_threshold':-0.5",
     .needles = {"spec: significance_threshold: -0.5 must be >= 0"}},
    {"significance_wrong_type", .extra = ",'significance_threshold':'0.1'",
     .needles = {"spec: significance_threshold: expected a number, got a string \"0.1\""}},
    {"effect_floor_zero", .extra = ",'effect_floor':0", .needles = {"spec: effect_floor: 0 must be > 0"}},
    {"effect_floor_negative", .extra = ",'effect_floor':-1e-3", .needles = {"spec: effect_floor: -0.001 must be > 0"}},
    {"description_wrong_type", .extra = ",'description':5", .needles = {"spec: description: expected a string"}},

    /* pairs and prompts */
    {"empty_pairs", .pairs = "[]", .needles = {"spec: pairs: is empty"}},
    {"pairs_wrong_type", .pairs = "{}", .needles = {"spec: pairs: expected a non-empty array", "got an object"}},
    {"pair_wrong_type", .pairs = "[" PAIR3 ",7]",
     .needles = {"spec: pairs[1]: expected an object", "got an integer 7"}},
    {"pair_missing_clean", .pairs = "[{'corrupted':{'ids':[1]}}]",
     .needles = {"spec: pairs[0]: missing required key 'clean'"}},
    {"pair_unknown_key", .pairs = "[{'clean':{'ids':[1]},'corrupted':{'ids':[2]},'position_map':'last'}]",
     .needles = {"spec: pairs[0].position_map: unknown key", "clean, corrupted"}},
    {"unequal_lengths", .pairs = "[" PAIR3 "," PAIR3 "," PAIR3 ",{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,2]}}]",
     .needles = {"spec: pairs[3]: clean has 3 tokens but corrupted has 2; noising and denoising need equal lengths",
                 "use mode \"interchange\" with a position_map"}},
    {"id_out_of_range", .pairs = "[{'clean':{'ids':[1,2,50]},'corrupted':{'ids':[1,4,3]}}]",
     .needles = {"spec: pairs[0].clean.ids[2]: 50 is out of range [0, 49]", "vocab_size 50"}},
    {"negative_id", .pairs = "[" PAIR3 ",{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,-4,3]}}]",
     .needles = {"spec: pairs[1].corrupted.ids[1]: -4 is out of range [0, 49]"}},
    {"id_wrong_type", .pairs = "[{'clean':{'ids':[1,2.5]},'corrupted':{'ids':[1,4]}}]",
     .needles = {"spec: pairs[0].clean.ids[1]: expected an integer, got a real number 2.5"}},
    {"empty_ids", .pairs = "[{'clean':{'ids':[]},'corrupted':{'ids':[1]}}]",
     .needles = {"spec: pairs[0].clean.ids: is empty", "token id"}},
    {"prompt_unknown_key", .pairs = "[{'clean':{'ids':[1],'tokens':[1]},'corrupted':{'ids':[1]}}]",
     .needles = {"spec: pairs[0].clean.tokens: unknown key", "ids, text"}},
    {"text_prompt", .pairs = "[{'clean':{'text':'The Eiffel Tower is in'},'corrupted':{'ids':[1]}}]",
     .status = PB_ERR_UNSUPPORTED, .needles = {"spec: pairs[0].clean.text", "tokenizer", "parsed without one"}},
    {"noise_scale_zero", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'noise':{'scale':0,'positions':[0]}}}]",
     .needles = {"spec: pairs[0].corrupted.noise.scale: 0 must be > 0"}},
    {"noise_scale_negative", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'noise':{'scale':-2,'positions':[0]}}}]",
     .needles = {"spec: pairs[0].corrupted.noise.scale: -2 must be > 0"}},
    {"noise_position_out_of_range",
     .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'noise':{'scale':3,'positions':[0,3]}}}]",
     .needles = {"spec: pairs[0].corrupted.noise.positions[1]: 3 is out of range [-3, 2]",
                 "clean prompt has 3 tokens"}},
    {"noise_position_duplicate",
     .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'noise':{'scale':3,'positions':[2,-1]}}}]",
     .needles = {"spec: pairs[0].corrupted.noise.positions[1]: -1 names position 2",
                 "noise.positions[0] already lists"}},
    {"noise_seed_negative",
     .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'noise':{'scale':3,'positions':[0],'seed':-1}}}]",
     .needles = {"spec: pairs[0].corrupted.noise.seed: -1 must be a non-negative integer"}},
    {"noise_unknown_key",
     .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'noise':{'scale':3,'positions':[0],'sigma':1}}}]",
     .needles = {"spec: pairs[0].corrupted.noise.sigma: unknown key", "scale, positions, seed"}},
    {"noise_and_ids", .pairs = "[{'clean':{'ids':[1]},'corrupted':{'ids':[1],'noise':{'scale':3,'positions':[0]}}}]",
     .needles = {"spec: pairs[0].corrupted: give either"}},
    {"noise_in_interchange", .mode = "interchange",
     .pairs = "[{'base':{'ids':[1,2]},'source':{'noise':{'scale':3,'positions':[0]}}}]",
     .needles = {"spec: pairs[0].source: noise corruption is only for modes \"denoising\" and \"noising\""}},
    {"interchange_clean_key", .mode = "interchange", .pairs = "[" PAIR3 "]",
     .needles = {"spec: pairs[0].clean: unknown key", "base, source, position_map"}},

    /* position maps */
    {"map_last_0", .mode = "interchange", .pairs = "[" IPAIR("'last-0'") "]",
     .needles = {"spec: pairs[0].position_map: \"last-0\": K = 0 is out of range [1, 2]"}},
    {"map_last_99", .mode = "interchange", .pairs = "[" IPAIR("'last-99'") "]",
     .needles = {"spec: pairs[0].position_map: \"last-99\": K = 99 is out of range [1, 2]",
                 "base has 3 tokens, source has 2"}},
    {"map_first", .mode = "interchange", .pairs = "[" IPAIR("'first'") "]",
     .needles = {"spec: pairs[0].position_map: \"first\" is not a position map", "\"last-K\""}},
    {"map_last_minus", .mode = "interchange", .pairs = "[" IPAIR("'last--1'") "]",
     .needles = {"spec: pairs[0].position_map: \"last--1\" is not a position map"}},
    {"map_entry_out_of_range", .mode = "interchange", .pairs = "[" IPAIR("[[0,0],[3,1]]") "]",
     .needles = {"spec: pairs[0].position_map[1][0]: 3 is out of range [-3, 2]", "base has 3 tokens"}},
    {"map_source_out_of_range", .mode = "interchange", .pairs = "[" IPAIR("[[0,2]]") "]",
     .needles = {"spec: pairs[0].position_map[0][1]: 2 is out of range [-2, 1]", "source has 2 tokens"}},
    {"map_duplicate_base", .mode = "interchange", .pairs = "[" IPAIR("[[0,0],[-3,1]]") "]",
     .needles = {"spec: pairs[0].position_map[1][0]: base position 0 (-3) is mapped twice"}},
    {"map_entry_wrong_shape", .mode = "interchange", .pairs = "[" IPAIR("[[0,0,1]]") "]",
     .needles = {"spec: pairs[0].position_map[0]: expected a [base_position, source_position] pair"}},
    {"map_empty", .mode = "interchange", .pairs = "[" IPAIR("[]") "]",
     .needles = {"spec: pairs[0].position_map: is empty"}},
    {"interchange_unequal_without_map", .mode = "interchange",
     .pairs = "[{'base':{'ids':[1,2]},'source':{'ids':[4,5]}},{'base':{'ids':[1,2,3]},'source':{'ids':[4,5]}}]",
     .needles = {"spec: pairs[1]: base has 3 tokens but source has 2", "needs a position_map"}},

    /* sites */
    {"empty_sites", .sites = "[]", .needles = {"spec: sites: is empty"}},
    {"unknown_component", .sites = "[" SITE ",{'component':'resid','layers':[0]}]",
     .needles = {"spec: sites[1].component: \"resid\" is not a component", "resid_pre, resid_mid", "attn.hook_z"}},
    {"site_unknown_key", .sites = "[{'component':'z','layers':[0],'head':[0]}]",
     .needles = {"spec: sites[0].head: unknown key", "component, layers, heads, positions"}},
    {"layers_out_of_range", .sites = "[{'component':'resid_pre','layers':[0,1,4]}]",
     .needles = {"spec: sites[0].layers[2]: 4 is out of range [0, 3]", "n_layers 4"}},
    {"layers_missing", .sites = "[{'component':'resid_pre'}]",
     .needles = {"spec: sites[0]: missing required key 'layers'"}},
    {"layers_wrong_type", .sites = "[{'component':'resid_pre','layers':3}]",
     .needles = {"spec: sites[0].layers: expected \"all\" or an array of integers, got an integer 3"}},
    {"layers_bad_string", .sites = "[{'component':'resid_pre','layers':'every'}]",
     .needles = {"spec: sites[0].layers: \"every\" is not allowed", "\"all\""}},
    {"layers_empty", .sites = "[{'component':'resid_pre','layers':[]}]",
     .needles = {"spec: sites[0].layers: is empty", "layer"}},
    {"duplicate_layer", .sites = "[{'component':'resid_pre','layers':[1,2,1]}]",
     .needles = {"spec: sites[0].layers[2]: 1 is listed twice (also at sites[0].layers[0])"}},
    {"heads_on_resid_pre", .sites = "[{'component':'resid_pre','layers':[0],'heads':[0]}]",
     .needles = {"spec: sites[0].heads: resid_pre has no heads"}},
    {"head_out_of_range_for_k", .sites = "[{'component':'k','layers':[0],'heads':[0,2]}]",
     .needles = {"spec: sites[0].heads[1]: 2 is out of range [0, 1]", "n_kv_heads 2"}},
    {"head_out_of_range_for_z", .sites = "[{'component':'z','layers':[0],'heads':[4]}]",
     .needles = {"spec: sites[0].heads[0]: 4 is out of range [0, 3]", "n_heads 4"}},
    {"duplicate_head", .sites = "[{'component':'q','layers':[0],'heads':[3,3]}]",
     .needles = {"spec: sites[0].heads[1]: 3 is listed twice"}},
    {"positions_out_of_range_shorter_pair", .pairs = "[" PAIR5 "," PAIR3 "]",
     .sites = "[{'component':'resid_pre','layers':[0],'positions':[0,4]}]",
     .needles = {"spec: sites[0].positions[1]: 4 is out of range [-3, 2] for pairs[1].corrupted, which has 3 tokens"}},
    {"positions_negative_out_of_range", .pairs = "[" PAIR5 "," PAIR3 "]",
     .sites = "[{'component':'resid_pre','layers':[0],'positions':[-4]}]",
     .needles = {"spec: sites[0].positions[0]: -4 is out of range [-3, 2] for pairs[1]"}},
    {"positions_duplicate", .sites = "[{'component':'resid_pre','layers':[0],'positions':[1,1]}]",
     .needles = {"spec: sites[0].positions[1]: 1 is listed twice"}},
    {"positions_mixed", .sites = "[{'component':'resid_pre','layers':[0],'positions':[[0,1],2]}]",
     .needles = {"spec: sites[0].positions: mixes integers and lists"}},
    {"positions_bad_string", .sites = "[{'component':'resid_pre','layers':[0],'positions':'first'}]",
     .needles = {"spec: sites[0].positions: \"first\" is not allowed", "\"each\""}},
    {"positions_wrong_element", .sites = "[{'component':'resid_pre','layers':[0],'positions':[0,'1']}]",
     .needles = {"spec: sites[0].positions[1]: expected an integer or an array of integers, got a string"}},
    {"positions_empty", .sites = "[{'component':'resid_pre','layers':[0],'positions':[]}]",
     .needles = {"spec: sites[0].positions: is empty"}},
    {"empty_group", .sites = "[{'component':'resid_pre','layers':[0],'positions':[[0],[]]}]",
     .needles = {"spec: sites[0].positions[1]: is an empty group"}},
    {"group_duplicate", .sites = "[{'component':'resid_pre','layers':[0],'positions':[[0,1,0]]}]",
     .needles = {"spec: sites[0].positions[0][2]: 0 is listed twice (also at sites[0].positions[0][0])"}},
    {"group_same_token", .sites = "[{'component':'resid_pre','layers':[0],'positions':[[1],[2,-1]]}]",
     .needles = {"spec: sites[0].positions[1][1]: -1 and 2", "both name position 2 of pairs[0].corrupted"}},
    {"range_not_a_range", .sites = "[{'component':'resid_pre','layers':[0],'positions':'1:x'}]",
     .needles = {"spec: sites[0].positions: \"1:x\" is not a range", "\"START:END\""}},
    {"range_empty", .sites = "[{'component':'resid_pre','layers':[0],'positions':'2:-1'}]",
     .needles = {"spec: sites[0].positions: \"2:-1\" is empty (positions 2 .. 1)"}},
    {"range_out_of_range", .sites = "[{'component':'resid_pre','layers':[0],'positions':'1:5'}]",
     .needles = {"spec: sites[0].positions: 3 is out of range [-3, 2]"}},
    {"range_both_ends_unequal", .pairs = "[" PAIR5 "," PAIR3 "]",
     .sites = "[{'component':'resid_pre','layers':[0],'positions':'1:-1'}]",
     .needles = {"\"1:-1\" counts from both ends, and the prompts differ in length"}},
    {"group_out_of_range", .sites = "[{'component':'resid_pre','layers':[0],'positions':[[0,3]]}]",
     .needles = {"spec: sites[0].positions[0][1]: 3 is out of range [-3, 2] for pairs[0].corrupted"}},
    {"position_not_in_map", .mode = "interchange",
     .pairs = "[{'base':{'ids':[1,2]},'source':{'ids':[4,5]}}," IPAIR("'last'") "]",
     .sites = "[{'component':'resid_pre','layers':[0],'positions':[-1,0]}]",
     .needles = {"spec: sites[0].positions[1]: base position 0 (0) is not mapped by pairs[1].position_map"}},
    {"group_not_in_map", .mode = "interchange", .pairs = "[" IPAIR("'last-2'") "]",
     .sites = "[{'component':'resid_pre','layers':[0],'positions':[[1,2],[0]]}]",
     .needles = {"spec: sites[0].positions[1][0]: base position 0 (0) is not mapped by pairs[0].position_map"}},
    {"last_not_in_map", .mode = "interchange", .pairs = "[" IPAIR("[[0,0]]") "]",
     .sites = "[{'component':'resid_pre','layers':[0],'positions':'last'}]",
     .needles = {"spec: sites[0].positions: base position 2 (-1) is not mapped by pairs[0].position_map"}},

    /* metric */
    {"metric_wrong_type", .metric = "'logit_diff'", .needles = {"spec: metric: expected an object"}},
    {"metric_unknown_kind", .metric = "{'kind':'accuracy'}",
     .needles = {"spec: metric.kind: \"accuracy\" is not a metric", "\"logit_diff\"", "\"projection\""}},
    {"metric_missing_kind", .metric = "{'tokens':[1]}", .needles = {"spec: metric: missing required key 'kind'"}},
    {"logit_diff_missing_negative", .metric = "{'kind':'logit_diff','positive':[40]}",
     .needles = {"spec: metric: missing required key 'negative'"}},
    {"metric_unknown_key", .metric = "{'kind':'kl','tokens':[1]}",
     .needles = {"spec: metric.tokens: unknown key", "kind, position"}},
    {"token_out_of_vocab", .metric = "{'kind':'logit_diff','positive':[40,50],'negative':[1]}",
     .needles = {"spec: metric.positive[1]: 50 is out of range [0, 49]", "vocab_size 50"}},
    {"token_out_of_vocab_ids", .metric = "{'kind':'logprob','tokens':{'ids':[-1]}}",
     .needles = {"spec: metric.tokens.ids[0]: -1 is out of range [0, 49]"}},
    {"token_duplicate", .metric = "{'kind':'refusal_score','tokens':[5,6,5]}",
     .needles = {"spec: metric.tokens[2]: 5 is listed twice"}},
    {"tokens_empty", .metric = "{'kind':'logprob','tokens':[]}", .needles = {"spec: metric.tokens: is empty"}},
    {"tokens_wrong_type", .metric = "{'kind':'logprob','tokens':7}",
     .needles =
         {"spec: metric.tokens: expected {\"ids\": [...]}, an array of token ids, a string or an array of strings, got an integer 7"}},
    {"tokens_text", .metric = "{'kind':'logit_diff','positive':{'text':' Paris'},'negative':[1]}",
     .status = PB_ERR_UNSUPPORTED, .needles = {"spec: metric.positive.text", "tokenizer"}},
    {"overlapping_positive_negative", .metric = "{'kind':'logit_diff','positive':[40,2],'negative':[7,2]}",
     .needles = {"spec: metric.negative[1]: token id 2 is also in metric.positive"}},
    /* per-pair tokens */
    {"pair_tokens_missing", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'positive':[5]}]",
     .metric = "{'kind':'logit_diff','positive':[40]}",
     .needles = {"spec: metric: missing required key 'negative'", "\"negative\" in every pair; pairs[0] has none"}},
    {"pair_tokens_second_missing",
     .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'tokens':[5]}," PAIR3 "]",
     .metric = "{'kind':'logprob'}", .needles = {"spec: metric: missing required key 'tokens'", "pairs[1] has none"}},
    {"pair_tokens_wrong_kind", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'tokens':[5]}]",
     .metric = "{'kind':'kl'}", .needles = {"spec: pairs[0].tokens: metric kl has no \"tokens\" tokens"}},
    {"pair_tokens_diff_key", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'tokens':[5]}]",
     .needles = {"spec: pairs[0].tokens: metric logit_diff has no \"tokens\" tokens",
                 "takes \"positive\" and \"negative\""}},
    {"pair_token_out_of_vocab",
     .pairs = "[" PAIR3 ",{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'positive':[50]}]",
     .needles = {"spec: pairs[1].positive[0]: 50 is out of range [0, 49]"}},
    {"pair_tokens_overlap", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'negative':[40]}]",
     .needles = {"spec: pairs[0].negative[0]: token id 40 is also in metric.positive"}},
    {"pair_answer_key", .pairs = "[{'clean':{'ids':[1,2,3]},'corrupted':{'ids':[1,4,3]},'answer':[40]}]",
     .needles = {"spec: pairs[0].answer: unknown key", "positive, negative, tokens"}},
    {"chat_wrong_type", .extra = ",'chat':'no'", .needles = {"spec: chat: expected true or false"}},
    {"metric_position_out_of_range", .pairs = "[" PAIR5 "," PAIR3 "]", .metric = "{'kind':'kl','position':3}",
     .needles = {"spec: metric.position: 3 is out of range [-3, 2] for pairs[1]", "which has 3 tokens"}},
    {"metric_position_source_shorter", .mode = "interchange", .pairs = "[" IPAIR("'last'") "]",
     .metric = "{'kind':'kl','position':-3}",
     .needles = {"spec: metric.position: -3 is out of range [-2, 1] for pairs[0].source, which has 2 tokens"}},
    {"metric_position_wrong_type", .metric = "{'kind':'kl','position':'last'}",
     .needles = {"spec: metric.position: expected an integer, got a string \"last\""}},
    {"projection_missing_file", .metric = PROJ("missing.npy", "0"), .status = PB_ERR_IO,
     .needles = {"spec: metric.direction: ", "missing.npy"}},
    {"projection_wrong_shape", .metric = PROJ("bad_shape.npy", "0"),
     .needles = {"spec: metric.direction: ", "has shape (3, 8); expected (8,) (d_model) or (4, 8)"}},
    {"projection_zero_vector", .metric = PROJ("zero.npy", "0"), .needles = {"zero.npy has zero norm"}},
    {"projection_zero_row", .metric = PROJ("zero_row.npy", "1"), .needles = {"zero_row.npy row 1", "zero norm"}},
    {"projection_nan", .metric = PROJ("nan.npy", "0"), .needles = {"nan.npy holds nan at flat index 2", "finite"}},
    {"projection_layer_out_of_range", .metric = PROJ("dir_1d.npy", "4"),
     .needles = {"spec: metric.layer: 4 is out of range [0, 3]"}},
    {"projection_layer_missing", .metric = "{'kind':'projection','direction':'dir_1d.npy'}",
     .needles = {"spec: metric: missing required key 'layer'"}},
    {"projection_bad_hook", .metric = "{'kind':'projection','direction':'dir_1d.npy','layer':0,'hook':'resid_mid'}",
     .needles = {"spec: metric.hook: \"resid_mid\" is not allowed", "\"resid_post\""}},
    {"projection_direction_wrong_type", .metric = "{'kind':'projection','direction':[1,0],'layer':0}",
     .needles = {"spec: metric.direction: expected a path to a .npy file, got an array"}},
};

static void test_refusal(void **state) {
    const refusal *r = *state;
    char built[2048];
    const char *text = r->raw;
    if (!text) {
        snprintf(built, sizeof built, "{'mode':'%s','pairs':%s,'sites':%s,'metric':%s%s}",
                 r->mode ? r->mode : "denoising", r->pairs ? r->pairs : "[" PAIR3 "]",
                 r->sites ? r->sites : "[" SITE "]", r->metric ? r->metric : METRIC, r->extra ? r->extra : "");
        text = built;
    }
    pb_status want = r->status ? r->status : PB_ERR_ARG;
    pb_sweep_spec s;
    memset(&s, 0xAB, sizeof s); /* the parser must clear it */
    pb_status got = parse_in(&s, text, tmp_dir);
    if (got != want)
        fail_msg("%s: got %s (%s), want %s\nspec: %s", r->name, pb_status_name(got), pb_last_error(),
                 pb_status_name(want), text);
    for (int i = 0; i < 3 && r->needles[i]; i++)
        if (!strstr(pb_last_error(), r->needles[i]))
            fail_msg("%s: message lacks \"%s\":\n  %s", r->name, r->needles[i], pb_last_error());
    print_message("%-40s %s\n", r->name, pb_last_error());
    /* left empty: nothing to leak, safe to free */
    assert_null(s.pairs);
    assert_null(s.sites);
    assert_int_equal(s.n_pairs, 0);
    assert_int_equal(s.n_sites, 0);
    assert_null(s.metric.positive);
    assert_null(s.metric.direction);
    assert_null(s.metric.direction_path);
    pb_sweep_spec_free(&s);
}

/* A stand-in tokenizer: one token per byte (id = byte % 50), a chat
 * template that adds two tokens (7, 8) around the text, and a BOS (1) before
 * plain text when bos is 1; the last bos asked for is kept. */
static int fake_calls_chat, fake_last_bos;
static pb_status fake_tokenize(void *user, const char *text, int chat, int bos, const char *system, int32_t **ids,
                               int *n) {
    (void)user;
    size_t len = strlen(text);
    int extra = chat ? 2 + (system ? 1 : 0) : 0;
    *ids = malloc(sizeof(int32_t) * (len + (size_t)extra + 1));
    int k = 0;
    fake_last_bos = bos;
    if (!chat && bos == 1)
        (*ids)[k++] = 1;
    if (chat) {
        fake_calls_chat++;
        (*ids)[k++] = 7;
        if (system)
            (*ids)[k++] = 9;
    }
    for (size_t i = 0; i < len; i++)
        (*ids)[k++] = (unsigned char)text[i] % 50;
    if (chat)
        (*ids)[k++] = 8;
    *n = k;
    return PB_OK;
}

static const pb_spec_text fake_text = {.tokenize = fake_tokenize};

/* "bos" on plain text: the spec's default, a prompt's own, -1 (the
 * tokenizer's choice) when neither says; refused with a chat prompt. */
static void test_text_bos(void **state) {
    (void)state;
    pb_model_config cfg = test_config();
    pb_sweep_spec spec;
    const char *tail = " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
                       " \"metric\": {\"kind\": \"logprob\", \"tokens\": [\"x\"]}}";
    char json[1024];
    snprintf(json, sizeof json,
             "{\"mode\": \"denoising\", \"chat\": false, \"bos\": true, \"pairs\": [{\"clean\": {\"text\": \"abc\"},"
             " \"corrupted\": {\"text\": \"abd\"}}],%s",
             tail);
    if (pb_sweep_spec_parse_text(&spec, json, NULL, &cfg, &fake_text) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_true(spec.pairs[0].base.T == 4 && spec.pairs[0].base.ids[0] == 1 && spec.pairs[0].base.bos == 1);
    assert_int_equal(fake_last_bos, 0); /* the token set's string is tokenized without one */
    pb_sweep_spec_free(&spec);
    snprintf(json, sizeof json,
             "{\"mode\": \"denoising\", \"chat\": false, \"pairs\": [{\"clean\": {\"text\": \"abc\", \"bos\": false},"
             " \"corrupted\": {\"text\": \"abd\"}}],%s",
             tail);
    assert_int_equal(pb_sweep_spec_parse_text(&spec, json, NULL, &cfg, &fake_text), PB_OK);
    assert_int_equal(spec.pairs[0].source.bos, 0);
    assert_int_equal(spec.pairs[0].base.bos, -1);
    pb_sweep_spec_free(&spec);
    snprintf(json, sizeof json,
             "{\"mode\": \"denoising\", \"pairs\": [{\"clean\": {\"text\": \"abc\", \"bos\": true},"
             " \"corrupted\": {\"text\": \"abd\"}}],%s",
             tail);
    assert_int_equal(pb_sweep_spec_parse_text(&spec, json, NULL, &cfg, &fake_text), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "pairs[0].clean.bos"));
    assert_non_null(strstr(pb_last_error(), "the template decides"));
    snprintf(json, sizeof json,
             "{\"mode\": \"denoising\", \"bos\": \"yes\", \"pairs\": [{\"clean\": {\"text\": \"abc\"},"
             " \"corrupted\": {\"text\": \"abd\"}}],%s",
             tail);
    assert_int_equal(pb_sweep_spec_parse_text(&spec, json, NULL, &cfg, &fake_text), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "bos"));
}

static void test_text_prompts_and_token_strings(void **state) {
    (void)state;
    pb_model_config cfg = test_config();
    pb_sweep_spec spec;
    const char *json =
        "{\"mode\": \"denoising\", \"pairs\": [{\"clean\": {\"text\": \"abc\"},"
        " \"corrupted\": {\"text\": \"abd\", \"system\": \"s\"}}],"
        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
        " \"metric\": {\"kind\": \"logit_diff\", \"positive\": [\"a\"], \"negative\": {\"text\": [\"b\", \"c\"]}}}";
    fake_calls_chat = 0;
    /* unequal lengths: the system prompt adds a token */
    assert_int_equal(pb_sweep_spec_parse_text(&spec, json, NULL, &cfg, &fake_text), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "pairs[0]"));
    const char *equal =
        "{\"mode\": \"denoising\", \"pairs\": [{\"clean\": {\"text\": \"abc\"},"
        " \"corrupted\": {\"text\": \"abd\"}}],"
        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
        " \"metric\": {\"kind\": \"logit_diff\", \"positive\": [\"a\"], \"negative\": {\"text\": [\"b\", \"c\"]}}}";
    assert_int_equal(pb_sweep_spec_parse_text(&spec, equal, NULL, &cfg, &fake_text), PB_OK);
    assert_int_equal(spec.pairs[0].source.T, 5); /* 7 a b c 8 */
    assert_int_equal(spec.pairs[0].source.ids[0], 7);
    assert_int_equal(spec.pairs[0].source.ids[3], 'c' % 50);
    assert_int_equal(spec.metric.positive[0], 'a' % 50);
    assert_int_equal(spec.metric.n_negative, 2);
    assert_int_equal(spec.metric.negative[1], 'c' % 50);
    pb_sweep_spec_free(&spec);
    /* a multi-token string in a token set */
    const char *multi = "{\"mode\": \"denoising\", \"pairs\": [{\"clean\": {\"ids\": [1, 2]},"
                        " \"corrupted\": {\"ids\": [1, 3]}}],"
                        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
                        " \"metric\": {\"kind\": \"logprob\", \"tokens\": [\"ab\"]}}";
    assert_int_equal(pb_sweep_spec_parse_text(&spec, multi, NULL, &cfg, &fake_text), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "metric.tokens[0]"));
    assert_non_null(strstr(pb_last_error(), "2 tokens"));
    /* a pair's answer as one string; a multi-token one names the pair */
    const char *answers =
        "{\"mode\": \"denoising\", \"chat\": false, \"pairs\": [{\"clean\": {\"text\": \"abc\"},"
        " \"corrupted\": {\"text\": \"abd\", \"chat\": true}, \"positive\": \"x\", \"negative\": [\"y\"]}],"
        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
        " \"metric\": {\"kind\": \"logit_diff\"}}";
    assert_int_equal(pb_sweep_spec_parse_text(&spec, answers, NULL, &cfg, &fake_text), PB_ERR_ARG);
    /* the corrupted prompt's own "chat": true beats the spec's false: 5 tokens against 3 */
    assert_non_null(strstr(pb_last_error(), "clean has 3 tokens but corrupted has 5"));
    const char *plain = "{\"mode\": \"denoising\", \"chat\": false, \"pairs\": [{\"clean\": {\"text\": \"abc\"},"
                        " \"corrupted\": {\"text\": \"abd\"}, \"positive\": \"x\", \"negative\": [\"y\"]}],"
                        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
                        " \"metric\": {\"kind\": \"logit_diff\"}}";
    assert_int_equal(pb_sweep_spec_parse_text(&spec, plain, NULL, &cfg, &fake_text), PB_OK);
    assert_int_equal(spec.pairs[0].base.T, 3);
    assert_int_equal(spec.pairs[0].base.chat, 0);
    assert_string_equal(spec.pairs[0].base.text, "abd");
    assert_int_equal(spec.pairs[0].n_positive, 1);
    assert_int_equal(spec.pairs[0].positive[0], 'x' % 50);
    assert_int_equal(spec.pairs[0].negative[0], 'y' % 50);
    assert_true(spec.pairs[0].own_positive && spec.pairs[0].own_negative);
    assert_null(spec.metric.positive);
    pb_sweep_spec_free(&spec);
    const char *long_answer = "{\"mode\": \"denoising\", \"pairs\": [{\"clean\": {\"ids\": [1, 2]},"
                              " \"corrupted\": {\"ids\": [1, 3]}}, {\"clean\": {\"ids\": [1, 2]},"
                              " \"corrupted\": {\"ids\": [1, 3]}, \"tokens\": \"pq\"}],"
                              " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0]}],"
                              " \"metric\": {\"kind\": \"logprob\", \"tokens\": [3]}}";
    assert_int_equal(pb_sweep_spec_parse_text(&spec, long_answer, NULL, &cfg, &fake_text), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "pairs[1].tokens"));
    assert_non_null(strstr(pb_last_error(), "\"pq\" is 2 tokens: 12 \"?\", 13 \"?\""));
    /* without a tokenizer the same spec is refused as unsupported */
    assert_int_equal(pb_sweep_spec_parse(&spec, equal, NULL, &cfg), PB_ERR_UNSUPPORTED);
}

int main(void) {
    const struct CMUnitTest fixed[] = {
        cmocka_unit_test(test_component_names),    cmocka_unit_test(test_doc_example),
        cmocka_unit_test(test_denoising_full),     cmocka_unit_test(test_noising_full),
        cmocka_unit_test(test_interchange_full),   cmocka_unit_test(test_projection_paths),
        cmocka_unit_test(test_kl_and_bare_tokens), cmocka_unit_test(test_context_length),
        cmocka_unit_test(test_null_arguments),     cmocka_unit_test(test_text_prompts_and_token_strings),
        cmocka_unit_test(test_text_bos),
    };
    size_t n_fixed = sizeof fixed / sizeof fixed[0];
    size_t n_refusals = sizeof refusals / sizeof refusals[0];
    struct CMUnitTest *tests = calloc(n_fixed + n_refusals, sizeof *tests);
    if (!tests)
        return 1;
    memcpy(tests, fixed, sizeof fixed);
    for (size_t i = 0; i < n_refusals; i++) {
        tests[n_fixed + i] = (struct CMUnitTest){
            .name = refusals[i].name,
            .test_func = test_refusal,
            .initial_state = (void *)&refusals[i],
        };
    }
    int failed = _cmocka_run_group_tests("sweep_spec", tests, n_fixed + n_refusals, group_setup, group_teardown);
    free(tests);
    return failed;
}
