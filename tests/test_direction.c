/* The difference-in-means direction (host/analysis/direction.c) on tiny_gqa with
 * synthetic "harmful" and "harmless" prompts sharing a chat-like prefix
 * and suffix: the means equal naive means of captured activations, every
 * candidate's scores equal full intervened forwards, the selection follows
 * the rule, outputs reload (and load as a sweep projection metric), and bad
 * inputs are refused with messages. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "analysis/direction.h"
#include "patching/intervene.h"
#include "patching/metric.h"
#include "formats/npy.h"
#include "test_util.h"

#define N_TRAIN 6
#define N_VAL 4
#define N_POST 3
#define MAX_T 24

static const int32_t prefix[4] = {1, 5, 6, 7};
static const int32_t suffix[N_POST] = {8, 9, 11};
static const int32_t refusal_ids[2] = {10, 20};

typedef struct synthetic {
    int32_t ids[4][N_TRAIN][MAX_T]; /* harmful train, harmless train, harmful val, harmless val */
    int T[4][N_TRAIN];
    const int32_t *ptr[4][N_TRAIN];
} synthetic;

/* prefix + 3..7 instruction tokens (harmful from 40..59, harmless from
 * 70..89) + suffix */
static void make_prompts(synthetic *s) {
    uint64_t state = 12345;
    for (int set = 0; set < 4; set++)
        for (int i = 0; i < N_TRAIN; i++) {
            int n = 0, words = 3 + (int)(tu_next(&state) % 5), base = set % 2 == 0 ? 40 : 70;
            for (int k = 0; k < 4; k++)
                s->ids[set][i][n++] = prefix[k];
            for (int k = 0; k < words; k++)
                s->ids[set][i][n++] = base + (int32_t)(tu_next(&state) % 20);
            for (int k = 0; k < N_POST; k++)
                s->ids[set][i][n++] = suffix[k];
            s->T[set][i] = n;
            s->ptr[set][i] = s->ids[set][i];
        }
}

static pb_prompt_set set_of(synthetic *s, int set, int n) {
    return (pb_prompt_set){.n = n, .ids = s->ptr[set], .T = s->T[set]};
}

static pb_direction_inputs inputs_of(synthetic *s) {
    return (pb_direction_inputs){.harmful_train = set_of(s, 0, N_TRAIN),
                                 .harmless_train = set_of(s, 1, N_TRAIN),
                                 .harmful_val = set_of(s, 2, N_VAL),
                                 .harmless_val = set_of(s, 3, N_VAL),
                                 .refusal_ids = refusal_ids,
                                 .n_refusal_ids = 2,
                                 .max_batch_tokens = 40};
}

/* Captured resid_pre of layer `layer` at the last N_POST positions, summed. */
static void naive_means(pb_model *m, synthetic *s, double *out /* (n_layers, N_POST, d) */) {
    const pb_model_config *c = pb_model_get_config(m);
    int d = c->d_model, L = c->n_layers;
    memset(out, 0, sizeof(double) * (size_t)L * N_POST * d);
    pb_capture *cap;
    assert_int_equal(pb_capture_create(&cap, m, "blocks.*.hook_resid_pre"), PB_OK);
    for (int set = 0; set < 2; set++)
        for (int i = 0; i < N_TRAIN; i++) {
            int T = s->T[set][i];
            assert_int_equal(pb_forward(m, s->ptr[set][i], T, NULL, cap), PB_OK);
            for (int h = 0; h < pb_capture_count(cap); h++) {
                int layer, n_dims;
                int64_t shape[3];
                assert_int_equal(sscanf(pb_capture_name(cap, h), "blocks.%d.", &layer), 1);
                const float *x = pb_capture_data(cap, h, &n_dims, shape);
                for (int q = 0; q < N_POST; q++)
                    for (int k = 0; k < d; k++)
                        out[((size_t)layer * N_POST + q) * d + k] += (set == 0 ? 1.0 : -1.0) *
                                                                     x[(size_t)(T - N_POST + q) * d + k] / N_TRAIN;
            }
        }
    pb_capture_free(cap);
}

/* Mean refusal score (or KL vs plain) over a validation set with a full
 * intervened forward per prompt. */
static double full_score(pb_model *m, synthetic *s, int set, const pb_intervention *iv, int kl) {
    const pb_model_config *c = pb_model_get_config(m);
    int V = c->vocab_size;
    float *logits = malloc(sizeof(float) * MAX_T * V), *plain = malloc(sizeof(float) * MAX_T * V);
    double *ref = malloc(sizeof(double) * V), sum = 0;
    for (int i = 0; i < N_VAL; i++) {
        int T = s->T[set][i];
        assert_int_equal(pb_forward_intervened(m, s->ptr[set][i], T, iv, logits, NULL), PB_OK);
        const float *last = logits + (size_t)(T - 1) * V;
        if (kl) {
            assert_int_equal(pb_forward(m, s->ptr[set][i], T, plain, NULL), PB_OK);
            pb_log_softmax(plain + (size_t)(T - 1) * V, V, ref);
            sum += pb_metric_kl(ref, last, V);
        } else {
            sum += pb_metric_refusal_score(last, V, refusal_ids, 2);
        }
    }
    free(logits);
    free(plain);
    free(ref);
    return sum / N_VAL;
}

static void check_backend(pb_backend_kind backend, double tol_means, double tol_scores, const char *name) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, backend);
    const pb_model_config *c = pb_model_get_config(m);
    int d = c->d_model, L = c->n_layers;
    synthetic s;
    make_prompts(&s);
    pb_direction_inputs in = inputs_of(&s);
    pb_direction_result r;
    if (pb_direction_compute(m, &in, &r) != PB_OK)
        fail_msg("pb_direction_compute: %s", pb_last_error());
    /* n_post inferred from the common suffix */
    assert_int_equal(r.n_post, N_POST);
    assert_int_equal(r.n_layers, L);
    double *want = malloc(sizeof(double) * (size_t)L * N_POST * d);
    naive_means(m, &s, want);
    double worst = 0;
    for (size_t i = 0; i < (size_t)L * N_POST * d; i++)
        worst = fmax(worst, fabs(r.differences[i] - want[i]));
    /* layers 0, 1 below 0.8 * 2 = 1.6: 2 layers x 3 positions */
    assert_int_equal(r.n_candidates, 2 * N_POST);
    double worst_score = 0;
    int n_passing = 0;
    for (int k = 0; k < r.n_candidates; k++) {
        const pb_direction_candidate *cd = &r.candidates[k];
        assert_int_equal(cd->layer, k / N_POST);
        assert_int_equal(cd->position, k % N_POST - N_POST);
        const float *diff = r.differences + ((size_t)cd->layer * N_POST + (cd->position + N_POST)) * d;
        double n2 = 0;
        for (int i = 0; i < d; i++)
            n2 += (double)diff[i] * diff[i];
        assert_true(fabs(sqrt(n2) - cd->norm) <= 1e-9 * cd->norm);
        if (cd->norm == 0) {
            /* layer 0 at the shared suffix: the same tokens' embeddings */
            assert_int_equal(cd->passes, 0);
            continue;
        }
        float u[64];
        for (int i = 0; i < d; i++)
            u[i] = (float)(diff[i] / cd->norm);
        pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = u};
        pb_intervention add = {.kind = PB_INTERVENE_ADD, .layer = cd->layer, .direction = diff, .scale = 1.0};
        worst_score = fmax(worst_score, fabs(full_score(m, &s, 2, &ablate, 0) - cd->ablation_score));
        worst_score = fmax(worst_score, fabs(full_score(m, &s, 3, &add, 0) - cd->addition_score));
        worst_score = fmax(worst_score, fabs(full_score(m, &s, 3, &ablate, 1) - cd->kl));
        assert_int_equal(cd->passes, cd->kl < 0.1 && cd->addition_score > 0);
        n_passing += cd->passes;
    }
    assert_true(fabs(full_score(m, &s, 2, NULL, 0) - r.baseline_harmful) <= tol_scores);
    assert_true(fabs(full_score(m, &s, 3, NULL, 0) - r.baseline_harmless) <= tol_scores);
    printf("[ MEASURE  ] %s: max |means - naive| %.2e, max |scores - full forwards| %.2e; %d of %d candidates "
           "pass; selected layer %d position %d (ablation %.3f, addition %.3f, kl %.4f; baselines %.3f / %.3f)\n",
           name, worst, worst_score, n_passing, r.n_candidates, r.layer, r.position, r.ablation_score, r.addition_score,
           r.kl, r.baseline_harmful, r.baseline_harmless);
    assert_true(worst <= tol_means);
    assert_true(worst_score <= tol_scores);
    /* the selection rule */
    assert_int_equal(r.selected_passes, n_passing > 0);
    for (int k = 0; k < r.n_candidates; k++)
        if (r.candidates[k].passes || !r.selected_passes)
            assert_true(r.ablation_score <= r.candidates[k].ablation_score);
    if (r.selected_passes)
        assert_true(r.kl < 0.1 && r.addition_score > 0 && r.layer < 0.8 * L);
    double n2 = 0;
    for (int i = 0; i < d; i++)
        n2 += (double)r.direction[i] * r.direction[i];
    assert_true(fabs(sqrt(n2) - 1) <= 1e-6);
    free(want);
    pb_direction_result_free(&r);
    pb_direction_result_free(&r); /* twice: safe */
    pb_model_free(m);
}

static void test_means_scores_and_selection(void **state) {
    /* reference backend: rows independent of batching, so the packed,
     * prefix-sharing runs match single forwards to rounding of the sums */
    check_backend(PB_BACKEND_REFERENCE, 1e-6, 1e-6, "reference");
    /* OpenBLAS: results move with the batch shape (tolerances.h) */
    check_backend(PB_BACKEND_CPU, 1e-5, 1e-4, "cpu");
}

static void test_knobs(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    synthetic s;
    make_prompts(&s);
    pb_direction_inputs in = inputs_of(&s);
    in.n_post = 2;
    in.max_train = 3;
    in.max_val = 2;
    in.max_layer_fraction = 1.0;
    pb_direction_result r;
    if (pb_direction_compute(m, &in, &r) != PB_OK)
        fail_msg("pb_direction_compute: %s", pb_last_error());
    assert_int_equal(r.n_post, 2);
    assert_int_equal(r.n_candidates, 2 * 2); /* layers 0 and 1, 2 positions */
    assert_int_equal(r.n_harmful_train, 3);
    assert_int_equal(r.n_harmless_train, 3);
    assert_int_equal(r.n_harmful_val, 2);
    assert_int_equal(r.n_harmless_val, 2);
    /* resid_pre of layer 0 at the shared suffix is the same embeddings on
     * both sides: those candidates are zero and never selected */
    assert_int_equal(r.layer, 1);
    assert_true(r.candidates[0].norm == 0 && r.candidates[1].norm == 0);
    pb_direction_result_free(&r);
    in.layer_stride = 2; /* layer 0 only: nothing to select */
    pb_status st = pb_direction_compute(m, &in, &r);
    assert_int_equal(st, PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "identical"));
    pb_model_free(m);
}

/* A refusal set of half the vocabulary and a loose KL bound make some
 * candidates pass and some fail: the rule picks the lowest ablation score
 * among those that pass, not overall. */
static void test_selection_rule(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    synthetic s;
    make_prompts(&s);
    pb_direction_inputs in = inputs_of(&s);
    int32_t half[64];
    for (int i = 0; i < 64; i++)
        half[i] = 2 * i + 1;
    in.refusal_ids = half;
    in.n_refusal_ids = 64;
    in.kl_threshold = 0.7;
    pb_direction_result r;
    assert_int_equal(pb_direction_compute(m, &in, &r), PB_OK);
    int passing = 0, best_overall = 0;
    for (int k = 0; k < r.n_candidates; k++) {
        const pb_direction_candidate *cd = &r.candidates[k];
        printf("[ MEASURE  ] candidate layer %d position %d: ablation %.4f addition %.4f kl %.4f%s\n", cd->layer,
               cd->position, cd->ablation_score, cd->addition_score, cd->kl, cd->passes ? " passes" : "");
        passing += cd->passes;
        assert_int_equal(cd->passes, cd->norm > 0 && cd->kl < 0.7 && cd->addition_score > 0);
        if (cd->norm > 0 && cd->ablation_score < r.candidates[best_overall].ablation_score)
            best_overall = k;
    }
    assert_true(passing > 0);
    assert_int_equal(r.selected_passes, 1);
    /* here the filter matters: the overall lowest ablation score fails it */
    assert_true(!r.candidates[best_overall].passes);
    assert_true(r.ablation_score > r.candidates[best_overall].ablation_score);
    assert_true(r.kl < 0.7 && r.addition_score > 0);
    for (int k = 0; k < r.n_candidates; k++)
        if (r.candidates[k].passes)
            assert_true(r.ablation_score <= r.candidates[k].ablation_score);
    pb_direction_result_free(&r);
    pb_model_free(m);
}

static void test_outputs_reload(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    const pb_model_config *c = pb_model_get_config(m);
    synthetic s;
    make_prompts(&s);
    pb_direction_inputs in = inputs_of(&s);
    pb_direction_result r;
    assert_int_equal(pb_direction_compute(m, &in, &r), PB_OK);
    char dir[] = "/tmp/pb_direction_XXXXXX";
    assert_non_null(mkdtemp(dir));
    pb_direction_provenance prov = {.model_path = "tiny_gqa", .prompt_file = "synthetic"};
    assert_int_equal(pb_direction_write(&r, dir, &prov), PB_OK);
    char path[1200];
    snprintf(path, sizeof path, "%s/direction.npy", dir);
    int64_t shape[8];
    float *data = tu_read_f32(path, 1, shape);
    assert_int_equal(shape[0], c->d_model);
    assert_memory_equal(data, r.direction, sizeof(float) * (size_t)c->d_model);
    free(data);
    snprintf(path, sizeof path, "%s/differences.npy", dir);
    data = tu_read_f32(path, 3, shape);
    assert_int_equal(shape[0] * shape[1] * shape[2], (int64_t)c->n_layers * N_POST * c->d_model);
    free(data);
    snprintf(path, sizeof path, "%s/direction.json", dir);
    json_error_t err;
    json_t *j = json_load_file(path, 0, &err);
    if (!j)
        fail_msg("direction.json: %s", err.text);
    assert_string_equal(json_string_value(json_object_get(j, "schema")), "patchbay.direction/1");
    assert_int_equal(json_integer_value(json_object_get(j, "layer")), r.layer);
    assert_int_equal(json_integer_value(json_object_get(j, "position")), r.position);
    assert_int_equal(json_array_size(json_object_get(j, "candidates")), (size_t)r.n_candidates);
    assert_string_equal(json_string_value(json_object_get(j, "model")), "tiny_gqa");
    json_t *scores = json_object_get(j, "scores");
    assert_true(fabs(json_real_value(json_object_get(scores, "ablation_refusal_score_harmful")) - r.ablation_score) <=
                1e-6 * (1 + fabs(r.ablation_score)));
    json_decref(j);
    /* the sweep loads it as a projection metric */
    char *spec = NULL;
    assert_true(asprintf(&spec,
                         "{\"mode\": \"denoising\", \"pairs\": [{\"clean\": {\"ids\": [1, 5, 6, 7, 40, 8, 9, 11]},"
                         " \"corrupted\": {\"ids\": [1, 5, 6, 7, 70, 8, 9, 11]}}],"
                         " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0], \"positions\": \"last\"}],"
                         " \"metric\": {\"kind\": \"projection\", \"direction\": \"direction.npy\", \"layer\": %d}}",
                         r.layer) > 0);
    pb_sweep *sw = NULL;
    if (pb_sweep_create(&sw, m, spec, dir, NULL) != PB_OK)
        fail_msg("sweep with the direction: %s", pb_last_error());
    pb_sweep_free(sw);
    free(spec);
    const char *names[3] = {"direction.npy", "differences.npy", "direction.json"};
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
    pb_direction_result_free(&r);
    pb_model_free(m);
}

static void expect_refused(pb_model *m, const pb_direction_inputs *in, const char *fragment) {
    pb_direction_result r;
    pb_status st = pb_direction_compute(m, in, &r);
    if (st != PB_ERR_ARG)
        fail_msg("expected PB_ERR_ARG mentioning '%s', got %s", fragment, pb_status_name(st));
    if (!strstr(pb_last_error(), fragment))
        fail_msg("message '%s' does not mention '%s'", pb_last_error(), fragment);
    assert_null(r.candidates);
    assert_null(r.direction);
}

static void test_bad_inputs(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    synthetic s;
    make_prompts(&s);
    pb_direction_inputs in = inputs_of(&s);
    in.harmful_train.n = 0;
    expect_refused(m, &in, "harmful train prompt set is empty");
    in = inputs_of(&s);
    in.harmless_val.n = 0;
    expect_refused(m, &in, "harmless validation prompt set is empty");
    in = inputs_of(&s);
    in.n_refusal_ids = 0;
    expect_refused(m, &in, "refusal token set is empty");
    in = inputs_of(&s);
    int32_t bad_refusal[1] = {128};
    in.refusal_ids = bad_refusal;
    in.n_refusal_ids = 1;
    expect_refused(m, &in, "refusal token id 128");
    in = inputs_of(&s);
    in.n_post = 30;
    expect_refused(m, &in, "fewer than n_post");
    in = inputs_of(&s);
    in.max_layer_fraction = 1.5;
    expect_refused(m, &in, "max_layer_fraction");
    in = inputs_of(&s);
    s.ids[1][2][3] = 500;
    expect_refused(m, &in, "harmless train prompt 2: token id 500");
    s.ids[1][2][3] = 7;
    /* no common suffix: n_post cannot be inferred */
    s.ids[0][0][s.T[0][0] - 1] = 99;
    in = inputs_of(&s);
    expect_refused(m, &in, "no common suffix");
    /* identical sets: every difference is zero (exactly so on the
     * reference backend, whose rows do not depend on their batch) */
    pb_model *ref = tu_load_model("tiny_gqa", NULL, PB_BACKEND_REFERENCE);
    make_prompts(&s);
    in = inputs_of(&s);
    in.harmless_train = in.harmful_train;
    expect_refused(ref, &in, "identical");
    pb_model_free(ref);
    assert_int_equal(pb_direction_compute(m, NULL, &(pb_direction_result){0}), PB_ERR_ARG);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_means_scores_and_selection),
        cmocka_unit_test(test_knobs),
        cmocka_unit_test(test_selection_rule),
        cmocka_unit_test(test_outputs_reload),
        cmocka_unit_test(test_bad_inputs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
