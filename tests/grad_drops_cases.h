/* GradDrop's passes run together (pb_grad_drops; with the whole pass,
 * pb_grad_whole_drops) against the same passes one at a time
 * (pb_grad_pass_drop; the whole: pb_grad_pass_from), on seeded random
 * models: shared by
 * test_grad_drops.c (host backends) and test_cuda_grad.c (CUDA). Include
 * after cmocka.h. */
#ifndef PB_TEST_GRAD_DROPS_CASES_H
#define PB_TEST_GRAD_DROPS_CASES_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/grad.h"
#include "model/capture.h"
#include "model/model.h"
#include "test_util.h"
#include "tolerances.h"

#define HOOKS "blocks.*.hook_resid_*,blocks.*.hook_attn_out,blocks.*.hook_mlp_out,blocks.*.attn.hook_[zqkv]"

/* One model's forward, the whole pass and every drop's pass alone. */
typedef struct drops_case {
    pb_model *m;
    int T, lo, hi, bottom;
    int32_t ids[9];
    float direction[1024];
    pb_grad_metric metric;
    pb_capture *acts, *whole;
    float *logits;      /* (vocab_size) the metric position's */
    double value;       /* the whole pass's */
    pb_capture **alone; /* (hi + 1) drop l's pass by pb_grad_pass_drop; NULL below lo */
    /* what the callback saw */
    int calls;
    unsigned char seen[32][32]; /* [drop][layer] */
    double worst;
    int bitwise;  /* reference backend: each equal bit for bit */
    double bound; /* else the NMSE bound */
} drops_case;

/* The random model `name` (pb_model_random, seed 7): fp32 resident, or
 * with weight_memory > 0 streamed under that cap in its stored type. */
static pb_model *drops_model(const char *name, pb_backend_kind backend, size_t weight_memory) {
    pb_load_options o = {.n_threads = 2,
                         .backend = backend,
                         .dtype = weight_memory ? PB_DTYPE_FILE : PB_DTYPE_F32,
                         .weights = weight_memory ? PB_WEIGHTS_STREAM : PB_WEIGHTS_RESIDENT,
                         .weight_memory = weight_memory};
    pb_model *m = NULL;
    if (pb_model_random(&m, name, 7, &o) != PB_OK)
        fail_msg("random model %s: %s", name, pb_last_error());
    return m;
}

/* The forward, the whole pass and the passes one at a time; projection:
 * the metric reads resid_pre of the last layer (its top layer is the one
 * below). */
static void drops_setup(drops_case *k, pb_model *m, int projection) {
    const pb_model_config *c = pb_model_get_config(m);
    memset(k, 0, sizeof *k);
    assert_true(c->n_layers <= 32);
    k->m = m;
    k->T = 9;
    for (int t = 0; t < k->T; t++)
        k->ids[t] = (int32_t)((t * 37 + 11) % c->vocab_size);
    assert_true(c->d_model <= 1024);
    for (int i = 0; i < c->d_model; i++)
        k->direction[i] = (float)sin(0.7 * i + 0.3);
    static const int32_t positive[] = {3, 5}, negative[] = {8};
    k->metric = projection ? (pb_grad_metric){.kind = PB_METRIC_PROJECTION,
                                              .position = k->T - 2,
                                              .direction = k->direction,
                                              .layer = c->n_layers - 1}
                           : (pb_grad_metric){.kind = PB_METRIC_LOGIT_DIFF,
                                              .position = k->T - 1,
                                              .positive = positive,
                                              .n_positive = 2,
                                              .negative = negative,
                                              .n_negative = 1};
    k->hi = pb_grad_metric_top_layer(&k->metric, c->n_layers);
    float *logits = malloc(sizeof(float) * (size_t)k->T * (size_t)c->vocab_size);
    assert_non_null(logits);
    CHECK_OK(pb_capture_create(&k->acts, m, "blocks.*"));
    CHECK_OK(pb_capture_create(&k->whole, m, HOOKS));
    CHECK_OK(pb_forward(m, k->ids, k->T, logits, k->acts));
    k->logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    assert_non_null(k->logits);
    memcpy(k->logits, logits + (size_t)k->metric.position * c->vocab_size, sizeof(float) * (size_t)c->vocab_size);
    CHECK_OK(pb_grad_pass_from(m, k->T, k->acts, k->logits, &k->metric, k->whole, &k->value));
    k->alone = calloc((size_t)k->hi + 1, sizeof *k->alone);
    assert_non_null(k->alone);
    for (int l = 0; l <= k->hi; l++) {
        pb_grad_drop drop = {l, pb_capture_find_data(k->whole, PB_HOOK_RESID_POST, l)};
        CHECK_OK(pb_capture_create(&k->alone[l], m, HOOKS));
        CHECK_OK(pb_grad_pass_drop(m, k->T, k->acts, NULL, &k->metric, &drop, k->alone[l], NULL));
    }
    free(logits);
}

static void drops_teardown(drops_case *k) {
    for (int l = 0; k->alone && l <= k->hi; l++)
        pb_capture_free(k->alone[l]);
    free(k->alone);
    pb_capture_free(k->acts);
    pb_capture_free(k->whole);
    free(k->logits);
}

/* got equals want: bit for bit, or within the case's NMSE bound. */
static void entries_equal(drops_case *k, const pb_capture_entry *got, const pb_capture_entry *want) {
    size_t len = pb_capture_entry_floats(got, k->T);
    double nmse = tu_nmse(got->data, want->data, len);
    k->worst = nmse > k->worst ? nmse : k->worst;
    if (k->bitwise)
        assert_memory_equal(got->data, want->data, sizeof(float) * len);
    else if (!(nmse <= k->bound))
        fail_msg("NMSE %.3e over the bound %.1e", nmse, k->bound);
}

/* pb_grad_layer_fn: each drop lo..hi at each layer from it down to the
 * bottom, once, a drop's layers from the top down; each gradient equals
 * the drop's pass alone. */
static pb_status drops_compare(void *user, int layer, int drop, pb_capture *grads) {
    drops_case *k = user;
    assert_true(drop >= k->lo && drop <= k->hi && layer >= k->bottom && layer <= drop);
    assert_int_equal(k->seen[drop][layer], 0);
    assert_true(layer == drop || k->seen[drop][layer + 1]);
    k->seen[drop][layer] = 1;
    k->calls++;
    int n = 0;
    for (int i = 0; i < grads->count; i++) {
        pb_capture_entry *e = &grads->entries[i], *want = pb_capture_find(k->alone[drop], e->kind, e->layer);
        assert_int_equal(e->layer, layer);
        assert_non_null(want);
        entries_equal(k, e, want);
        n++;
    }
    assert_int_equal(n, pb_capture_count(k->alone[drop]) / pb_model_get_config(k->m)->n_layers);
    return PB_OK;
}

/* pb_grad_whole_drops' whole pass against pb_grad_pass_from's: equal at
 * layers from bottom up, zero below; the same value. */
static void whole_compare(drops_case *k, pb_capture *got, double value) {
    assert_true(value == k->value);
    for (int i = 0; i < got->count; i++) {
        pb_capture_entry *e = &got->entries[i], *want = pb_capture_find(k->whole, e->kind, e->layer);
        size_t len = pb_capture_entry_floats(e, k->T);
        if (e->layer < k->bottom) {
            for (size_t x = 0; x < len; x++)
                assert_true(e->data[x] == 0.0f);
            continue;
        }
        entries_equal(k, e, want);
    }
}

/* pb_grad_drops over drops lo..hi down to bottom in batches of `batch`
 * (with_whole: pb_grad_whole_drops, its whole pass checked too); every
 * expected call made. */
static void drops_run(drops_case *k, int lo, int bottom, int batch, int with_whole) {
    k->lo = lo;
    k->bottom = bottom;
    k->calls = 0;
    memset(k->seen, 0, sizeof k->seen);
    pb_grad_drop_job job = {k->T, k->acts, &k->metric, k->whole, drops_compare, k, NULL, NULL};
    if (with_whole) {
        double value = NAN;
        CHECK_OK(pb_capture_create(&job.whole, k->m, HOOKS));
        job.logits = k->metric.kind == PB_METRIC_PROJECTION ? NULL : k->logits;
        job.value = &value;
        CHECK_OK(pb_grad_whole_drops(k->m, &job, 1, lo, k->hi, bottom, batch));
        whole_compare(k, job.whole, value);
        pb_capture_free(job.whole);
    } else {
        CHECK_OK(pb_grad_drops(k->m, &job, 1, lo, k->hi, bottom, batch));
    }
    int want = 0;
    for (int L = bottom; L <= k->hi; L++)
        want += k->hi - (L > lo ? L : lo) + 1;
    assert_int_equal(k->calls, want);
}

/* The passes together in every arrangement below, on the random
 * model `name` on backend. */
static void check_drops(const char *name, pb_backend_kind backend, int projection) {
    drops_case k;
    drops_setup(&k, drops_model(name, backend, 0), projection);
    k.bitwise = backend == PB_BACKEND_REFERENCE;
    k.bound = backend == PB_BACKEND_CUDA ? PB_TOL_GRAD_NMSE : PB_TOL_GRAD_DROPS_NMSE;
    for (int with_whole = 0; with_whole <= 1; with_whole++) {
        drops_run(&k, 0, 0, 0, with_whole);    /* every pass in one batch */
        drops_run(&k, 0, 0, 2, with_whole);    /* in turns */
        drops_run(&k, 1, 1, 0, with_whole);    /* the lowest site above layer 0 */
        drops_run(&k, 1, 0, 1, with_whole);    /* one at a time (the first turn: the whole pass and one drop) */
        drops_run(&k, k.hi, 0, 0, with_whole); /* the top drop alone */
    }
    printf("[ MEASURE  ] %-16s %-9s %-11s drops 0..%d together vs alone: worst NMSE %.2e\n", name,
           pb_backend_name(backend), projection ? "projection" : "logit_diff", k.hi, k.worst);
    drops_teardown(&k);
    pb_model_free(k.m);
}

#endif
