/* The gradient fixtures' cases (tests/fixtures/grad/<model>, from
 * scripts/make_grad_reference.py) and their check against PyTorch
 * autograd on one backend: test_grad.c (reference and CPU backends) and
 * test_cuda_grad.c (CUDA) share them. Static functions: a test includes
 * this once. */
#ifndef PB_TEST_GRAD_CASES_H
#define PB_TEST_GRAD_CASES_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/grad.h"
#include "model/capture.h"
#include "model/forward.h"
#include "patching/metric.h"
#include "test_util.h"
#include "tolerances.h"

/* Fixture folders under grad/; a projection case names its model in
 * reference.json ("model"). */
static const char *fixtures[] = {
    "tiny_gqa",  "tiny_bias",     "tiny_qwen3", "tiny_gemma", "tiny_gemma2",          "tiny_gemma3",
    "tiny_gpt2", "tiny_gpt_neox", "tiny_phi3",  "tiny_olmo2", "tiny_bias_projection", "tiny_gemma2_projection"};

typedef struct grad_case {
    json_t *ref;
    int32_t ids[64], ref_ids[64], positive[8], negative[8];
    int T;
    pb_grad_metric metric;
    double *ref_logprobs;
    float *direction; /* projection's, (d_model) */
} grad_case;

static int read_ints(json_t *array, int32_t *out, int max) {
    size_t i;
    json_t *v;
    int n = 0;
    json_array_foreach(array, i, v) {
        assert_true(n < max);
        out[n++] = (int32_t)json_integer_value(v);
    }
    return n;
}

static pb_metric_kind kind_of(const char *name) {
    if (strcmp(name, "logit_diff") == 0)
        return PB_METRIC_LOGIT_DIFF;
    if (strcmp(name, "logprob") == 0)
        return PB_METRIC_LOGPROB;
    if (strcmp(name, "refusal_score") == 0)
        return PB_METRIC_REFUSAL_SCORE;
    if (strcmp(name, "projection") == 0)
        return PB_METRIC_PROJECTION;
    assert_string_equal(name, "kl");
    return PB_METRIC_KL;
}

/* The fixture's reference.json (parsed; the caller frees). */
static json_t *read_reference(const char *fixture) {
    char path[1024];
    snprintf(path, sizeof path, "%s/grad/%s/reference.json", tu_fixtures(), fixture);
    json_error_t err;
    json_t *ref = json_load_file(path, 0, &err);
    if (!ref)
        fail_msg("%s: %s (regenerate with scripts/make_grad_reference.py)", path, err.text);
    return ref;
}

/* A projection's direction, layer and hook from the fixture's metric. */
static void read_projection(grad_case *gc, json_t *metric, pb_model *m) {
    int d = pb_model_get_config(m)->d_model;
    json_t *direction = json_object_get(metric, "direction");
    assert_int_equal(json_array_size(direction), (size_t)d);
    gc->direction = malloc(sizeof(float) * (size_t)d);
    assert_non_null(gc->direction);
    for (int i = 0; i < d; i++)
        gc->direction[i] = (float)json_number_value(json_array_get(direction, (size_t)i));
    gc->metric.direction = gc->direction;
    gc->metric.layer = (int)json_integer_value(json_object_get(metric, "layer"));
    gc->metric.hook_post = strcmp(json_string_value(json_object_get(metric, "hook")), "resid_post") == 0;
}

/* The fixture's metric; for kl the reference distribution from the
 * engine's own forward of ref_ids (the script took transformers'). */
static void read_case(grad_case *gc, const char *fixture, pb_model *m) {
    gc->ref = read_reference(fixture);
    gc->T = read_ints(json_object_get(gc->ref, "ids"), gc->ids, 64);
    json_t *metric = json_object_get(gc->ref, "metric");
    gc->metric = (pb_grad_metric){.kind = kind_of(json_string_value(json_object_get(metric, "kind"))),
                                  .position = (int)json_integer_value(json_object_get(gc->ref, "position")),
                                  .positive = gc->positive,
                                  .negative = gc->negative};
    if (json_object_get(metric, "positive"))
        gc->metric.n_positive = read_ints(json_object_get(metric, "positive"), gc->positive, 8);
    if (json_object_get(metric, "negative"))
        gc->metric.n_negative = read_ints(json_object_get(metric, "negative"), gc->negative, 8);
    gc->ref_logprobs = NULL;
    gc->direction = NULL;
    if (gc->metric.kind == PB_METRIC_PROJECTION)
        read_projection(gc, metric, m);
    if (gc->metric.kind == PB_METRIC_KL) {
        int n = read_ints(json_object_get(gc->ref, "ref_ids"), gc->ref_ids, 64);
        int V = pb_model_get_config(m)->vocab_size;
        float *logits = malloc(sizeof(float) * (size_t)n * V);
        gc->ref_logprobs = malloc(sizeof(double) * (size_t)V);
        assert_non_null(logits && gc->ref_logprobs);
        CHECK_OK(pb_forward(m, gc->ref_ids, n, logits, NULL));
        pb_log_softmax(logits + (size_t)gc->metric.position * V, V, gc->ref_logprobs);
        gc->metric.ref_logprobs = gc->ref_logprobs;
        free(logits);
    }
}

static void free_case(grad_case *gc) {
    json_decref(gc->ref);
    free(gc->ref_logprobs);
    free(gc->direction);
}

/* Every hook's gradient against the fixture: the worst NMSE. */
static double compare(const char *model, pb_capture *grads, json_t *hooks) {
    double worst = 0.0;
    size_t i;
    json_t *h;
    json_array_foreach(hooks, i, h) {
        const char *name = json_string_value(h);
        char path[1024];
        snprintf(path, sizeof path, "%s/grad/%s/%s.npy", tu_fixtures(), model, name);
        int found = -1;
        for (int k = 0; k < pb_capture_count(grads); k++)
            if (strcmp(pb_capture_name(grads, k), name) == 0)
                found = k;
        if (found < 0)
            fail_msg("%s: no hook point %s", model, name);
        int n_dims;
        int64_t shape[3], want_shape[8];
        const float *got = pb_capture_data(grads, found, &n_dims, shape);
        float *want = tu_read_f32(path, n_dims, want_shape);
        size_t n = 1;
        for (int d = 0; d < n_dims; d++) {
            assert_int_equal(shape[d], want_shape[d]);
            n *= (size_t)shape[d];
        }
        double e = tu_nmse(got, want, n);
        if (e > PB_TOL_GRAD_NMSE)
            fail_msg("%s %s: NMSE %.3e > %.0e", model, name, e, PB_TOL_GRAD_NMSE);
        worst = e > worst ? e : worst;
        free(want);
    }
    return worst;
}

/* One fixture on one backend, its weights resident or streamed (each
 * layer read again as the backward reaches it). */
static void check_model(const char *fixture, pb_backend_kind backend, pb_weights_mode weights) {
    json_t *ref = read_reference(fixture);
    char path[1024];
    tu_fixture_file(path, sizeof path, json_string_value(json_object_get(ref, "model")), "model.gguf");
    json_decref(ref);
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2, .backend = backend, .weights = weights};
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    const char *model = fixture;
    grad_case gc;
    read_case(&gc, fixture, m);
    pb_capture *grads = NULL;
    CHECK_OK(pb_capture_create(&grads, m,
                               "blocks.*.hook_resid_*,blocks.*.hook_attn_out,blocks.*.hook_mlp_out,"
                               "blocks.*.attn.hook_[zqkv]"));
    double value;
    if (pb_gradients(m, gc.ids, gc.T, &gc.metric, grads, &value) != PB_OK)
        fail_msg("%s: %s", model, pb_last_error());
    double want = json_number_value(json_object_get(gc.ref, "value"));
    double worst = compare(model, grads, json_object_get(gc.ref, "hooks"));
    printf("[ MEASURE  ] %-22s %-9s %-8s %-13s value %.6f (torch %.6f); worst hook NMSE %.2e\n", model,
           pb_backend_name(backend), pb_weights_mode_name(weights),
           json_string_value(json_object_get(json_object_get(gc.ref, "metric"), "kind")), value, want, worst);
    assert_true(fabs(value - want) <= PB_TOL_GRAD_VALUE * (1.0 + fabs(want)));
    pb_capture_free(grads);
    free_case(&gc);
    pb_model_free(m);
}

#endif
