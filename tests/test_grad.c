/* The activation backward pass (pb_gradients, attribution/grad.h) against
 * PyTorch autograd on transformers' forward (tests/fixtures/grad/<model>,
 * from scripts/make_grad_reference.py): for one tiny model of each family
 * feature and every metric kind (the four on logits, and the projection
 * of the residual stream at a middle slot and at the top), the gradient at every
 * hook point (resid_pre/mid/post, attn_out, mlp_out, z, q, k, v of every
 * layer) within PB_TOL_GRAD_NMSE, and the metric's value; on the reference
 * and the CPU backends, and with streamed weights. A finite difference
 * through the engine's own forward agrees with the gradient to first
 * order, and what the pass does not give is refused by name. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "grad_cases.h"

static void test_against_autograd_reference(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        check_model(fixtures[i], PB_BACKEND_REFERENCE, PB_WEIGHTS_RESIDENT);
}

static void test_against_autograd_cpu(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        check_model(fixtures[i], PB_BACKEND_CPU, PB_WEIGHTS_RESIDENT);
}

/* --weights stream: the backward reads each layer again, from the top */
static void test_against_autograd_streamed(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof fixtures / sizeof fixtures[0]; i++)
        check_model(fixtures[i], PB_BACKEND_CPU, PB_WEIGHTS_STREAM);
}

/* Adds eps * u to one hook point's activation (host memory backends). */
typedef struct nudge {
    pb_hook_kind kind;
    int layer;
    const float *u; /* (T, width) */
    size_t width;
    float eps;
} nudge;

static pb_status apply_nudge(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    (void)job;
    const nudge *n = user;
    if (hook != n->kind || layer != n->layer)
        return PB_OK;
    for (size_t i = 0; i < (size_t)n_rows * n->width; i++)
        data[i] += n->eps * n->u[(size_t)p0 * n->width + i];
    return PB_OK;
}

/* The metric (metric.c, not the gradient code) after the nudge. */
static double nudged_metric(pb_model *m, const grad_case *gc, nudge *n) {
    int V = pb_model_get_config(m)->vocab_size;
    float *logits = malloc(sizeof(float) * (size_t)gc->T * V);
    assert_non_null(logits);
    pb_forward_extras extras = {.intervene = apply_nudge, .intervene_user = n};
    CHECK_OK(pb_forward_ex(m, gc->ids, gc->T, &extras, logits, NULL));
    const float *row = logits + (size_t)gc->metric.position * V;
    float selected[16];
    for (int i = 0; i < gc->metric.n_positive + gc->metric.n_negative; i++)
        selected[i] = row[i < gc->metric.n_positive ? gc->positive[i] : gc->negative[i - gc->metric.n_positive]];
    double value = pb_metric_logit_diff(selected, gc->metric.n_positive, gc->metric.n_negative);
    free(logits);
    return value;
}

/* Finite differences through the engine's forward: (f(a + eps u) -
 * f(a - eps u)) / 2 eps against <grad, u> for a random direction u at
 * three hook points of tiny_gemma (GELU, the embedding scale, 1 + w
 * norms) on the reference backend: first-order agreement within
 * PB_TOL_GRAD_FINITE_DIFF relative. */
static void test_finite_difference(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gemma", "model.gguf", PB_BACKEND_REFERENCE);
    grad_case gc;
    read_case(&gc, "tiny_gemma", m);
    assert_int_equal(gc.metric.kind, PB_METRIC_LOGIT_DIFF);
    pb_capture *grads = NULL;
    CHECK_OK(pb_capture_create(&grads, m, "blocks.0.hook_resid_mid,blocks.1.attn.hook_k,blocks.1.attn.hook_z"));
    double value;
    CHECK_OK(pb_gradients(m, gc.ids, gc.T, &gc.metric, grads, &value));
    for (int k = 0; k < pb_capture_count(grads); k++) {
        pb_capture_entry *e = &grads->entries[k];
        size_t width = (size_t)e->row_shape[0] * (size_t)(e->n_dims == 3 ? e->row_shape[1] : 1);
        float *u = malloc(sizeof(float) * (size_t)gc.T * width);
        assert_non_null(u);
        tu_fill(u, (size_t)gc.T * width, 77 + (uint64_t)k, 1.0f);
        double dot = 0.0;
        for (size_t i = 0; i < (size_t)gc.T * width; i++)
            dot += (double)u[i] * e->data[i];
        nudge n = {e->kind, e->layer, u, width, 1e-2f};
        double up = nudged_metric(m, &gc, &n);
        n.eps = -1e-2f;
        double down = nudged_metric(m, &gc, &n);
        double fd = (up - down) / 2e-2;
        printf("[ MEASURE  ] tiny_gemma %-26s finite difference %.6f, gradient %.6f\n", e->name, fd, dot);
        assert_true(fabs(fd - dot) <= PB_TOL_GRAD_FINITE_DIFF * (fabs(dot) + 1e-3));
        free(u);
    }
    pb_capture_free(grads);
    free_case(&gc);
    pb_model_free(m);
}

/* From a forward already run: equal to running it, bit for bit; a capture
 * lacking what the backward reads is refused naming the hook. */
static void test_from_forward(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_REFERENCE);
    grad_case gc;
    read_case(&gc, "tiny_gqa", m);
    pb_capture *a = NULL, *b = NULL, *acts = NULL, *thin = NULL;
    CHECK_OK(pb_capture_create(&a, m, "blocks.*.hook_resid_pre"));
    CHECK_OK(pb_capture_create(&b, m, "blocks.*.hook_resid_pre"));
    CHECK_OK(pb_capture_create(&acts, m, "blocks.*"));
    CHECK_OK(pb_capture_create(&thin, m, "blocks.*.hook_resid_pre"));
    float *logits = malloc(sizeof(float) * (size_t)gc.T * (size_t)pb_model_get_config(m)->vocab_size);
    assert_non_null(logits);
    float *row = logits + (size_t)gc.metric.position * pb_model_get_config(m)->vocab_size; /* the metric's */
    double va, vb;
    CHECK_OK(pb_gradients(m, gc.ids, gc.T, &gc.metric, a, &va));
    CHECK_OK(pb_forward(m, gc.ids, gc.T, logits, acts));
    CHECK_OK(pb_grad_pass_from(m, gc.T, acts, row, &gc.metric, b, &vb));
    assert_true(va == vb);
    for (int k = 0; k < pb_capture_count(a); k++)
        assert_memory_equal(a->entries[k].data, b->entries[k].data,
                            sizeof(float) * (size_t)gc.T * (size_t)a->entries[k].row_shape[0]);
    CHECK_OK(pb_forward(m, gc.ids, gc.T, logits, thin));
    assert_int_equal(pb_grad_pass_from(m, gc.T, thin, row, &gc.metric, b, &vb), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "lack blocks.0.attn.hook_q"));
    /* a non-finite logit at the metric's position: named, no gradient */
    CHECK_OK(pb_forward(m, gc.ids, gc.T, logits, acts));
    row[7] = NAN;
    assert_int_equal(pb_grad_pass_from(m, gc.T, acts, row, &gc.metric, b, &vb), PB_ERR_NUMERIC);
    assert_non_null(strstr(pb_last_error(), "logit of token 7"));
    free(logits);
    pb_capture_free(a);
    pb_capture_free(b);
    pb_capture_free(acts);
    pb_capture_free(thin);
    free_case(&gc);
    pb_model_free(m);
}

/* Floats of a capture entry over T tokens. */
/* What pb_gradients cannot give is refused by name, nothing computed: a
 * hook point the pass does not fill, kl without its reference, a callback
 * metric, a position outside the prompt, a projection without a layer, a
 * capture set made for another model. */
static void test_refusals(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    grad_case gc;
    read_case(&gc, "tiny_gqa", m);
    pb_capture *grads = NULL, *embed = NULL;
    CHECK_OK(pb_capture_create(&grads, m, "blocks.*.hook_resid_pre"));
    CHECK_OK(pb_capture_create(&embed, m, "hook_embed,blocks.0.hook_resid_pre"));
    double value = 0.0;
    assert_int_equal(pb_gradients(m, gc.ids, gc.T, &gc.metric, embed, &value), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "no gradient is taken at hook_embed"));
    pb_grad_metric bad = gc.metric;
    bad.kind = PB_METRIC_KL;
    bad.ref_logprobs = NULL;
    assert_int_equal(pb_gradients(m, gc.ids, gc.T, &bad, grads, &value), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "kl without ref_logprobs"));
    bad.kind = PB_METRIC_CALLBACK;
    assert_int_equal(pb_gradients(m, gc.ids, gc.T, &bad, grads, &value), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), "callback"));
    bad = gc.metric;
    bad.position = gc.T;
    assert_int_equal(pb_gradients(m, gc.ids, gc.T, &bad, grads, &value), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "outside the"));
    bad = gc.metric;
    bad.kind = PB_METRIC_PROJECTION;
    bad.layer = 99;
    assert_int_equal(pb_gradients(m, gc.ids, gc.T, &bad, grads, &value), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "projection"));
    /* a capture set of another model (other widths) */
    pb_model *other = tu_load_model("tiny_bias", "model.gguf", PB_BACKEND_CPU);
    pb_capture *foreign = NULL;
    CHECK_OK(pb_capture_create(&foreign, other, "blocks.0.hook_resid_pre"));
    assert_int_equal(pb_gradients(m, gc.ids, gc.T, &gc.metric, foreign, &value), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "made for another model"));
    pb_capture_free(foreign);
    pb_model_free(other);
    pb_capture_free(grads);
    pb_capture_free(embed);
    free_case(&gc);
    pb_model_free(m);
}

static size_t entry_size(const pb_capture_entry *e, int T) {
    if (e->kind == PB_HOOK_PATTERN) /* (n_heads, T, T) */
        return (size_t)e->row_shape[0] * (size_t)T * (size_t)T;
    return (size_t)e->row_shape[0] * (size_t)(e->n_dims == 3 ? e->row_shape[1] : 1) * (size_t)T;
}

static int all_zero(const pb_capture_entry *e, int T) {
    for (size_t i = 0; i < entry_size(e, T); i++)
        if (e->data[i] != 0.0f)
            return 0;
    return 1;
}

#define GRAD_HOOKS \
    "blocks.*.hook_resid_*,blocks.*.hook_attn_out,blocks.*.hook_mlp_out,blocks.*.attn.hook_[zqkv],blocks.*.attn.hook_pattern"

/* The attention pattern's gradient is the value-side identity
 * dA[h, i, j] = dz[i, h] . v[j, group(h)] (z's gradient is checked against
 * autograd above). GradDrop at layer l (AtP*): the gradients above l are
 * the whole pass's, l's own points zero, its residual points all equal to
 * the whole pass's resid_post there, and something below l moves; a pass
 * resumed at l from that resid_post equals it bit for bit at l and below
 * and leaves the layers above zero. */
static void test_pattern_and_drop(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(m);
    grad_case gc;
    read_case(&gc, "tiny_gqa", m);
    int T = gc.T, L = c->n_layers, H = c->n_heads, hd = c->head_dim, group = c->n_heads / c->n_kv_heads, drop = L - 1;
    pb_capture *acts = NULL, *full = NULL, *dropped = NULL, *resumed = NULL;
    CHECK_OK(pb_capture_create(&acts, m, "blocks.*"));
    CHECK_OK(pb_capture_create(&full, m, GRAD_HOOKS));
    CHECK_OK(pb_capture_create(&dropped, m, GRAD_HOOKS));
    CHECK_OK(pb_capture_create(&resumed, m, GRAD_HOOKS));
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    assert_non_null(logits);
    CHECK_OK(pb_forward(m, gc.ids, T, logits, acts));
    double v_full, v_drop;
    CHECK_OK(
        pb_grad_pass_from(m, T, acts, logits + (size_t)gc.metric.position * c->vocab_size, &gc.metric, full, &v_full));
    double worst = 0.0;
    for (int l = 0; l < L; l++) {
        const float *dA = pb_capture_find(full, PB_HOOK_PATTERN, l)->data;
        const float *dz = pb_capture_find(full, PB_HOOK_Z, l)->data, *v = pb_capture_find(acts, PB_HOOK_V, l)->data;
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++)
                for (int j = 0; j <= i; j++) {
                    double want = 0.0;
                    for (int e = 0; e < hd; e++)
                        want += (double)dz[(size_t)i * H * hd + (size_t)h * hd + e] *
                                v[(size_t)j * c->n_kv_heads * hd + (size_t)(h / group) * hd + e];
                    double got = dA[((size_t)h * T + i) * T + j];
                    worst = fmax(worst, fabs(got - want) / (fabs(want) + 1e-6));
                    assert_true(fabs(got - want) <= 1e-5 * (fabs(want) + 1e-6));
                }
    }
    printf("[ MEASURE  ] pattern gradient vs dz . v: worst relative %.2e\n", worst);
    pb_grad_drop d = {drop, NULL};
    CHECK_OK(pb_grad_pass_drop(m, T, acts, logits + (size_t)gc.metric.position * c->vocab_size, &gc.metric, &d, dropped,
                               &v_drop));
    assert_true(v_drop == v_full);
    d.resid_post_grad = pb_capture_find(full, PB_HOOK_RESID_POST, drop)->data;
    CHECK_OK(pb_grad_pass_drop(m, T, acts, NULL, &gc.metric, &d, resumed, NULL));
    int moved = 0;
    for (int k = 0; k < pb_capture_count(full); k++) {
        pb_capture_entry *f = &full->entries[k], *e = &dropped->entries[k], *r = &resumed->entries[k];
        size_t bytes = sizeof(float) * entry_size(f, T);
        int residual = f->kind == PB_HOOK_RESID_PRE || f->kind == PB_HOOK_RESID_MID || f->kind == PB_HOOK_RESID_POST;
        if (f->layer > drop) {
            assert_memory_equal(e->data, f->data, bytes);
            assert_true(all_zero(r, T));
            continue;
        }
        assert_memory_equal(r->data, e->data, bytes);
        if (f->layer == drop && residual)
            assert_memory_equal(e->data, pb_capture_find(full, PB_HOOK_RESID_POST, drop)->data, bytes);
        else if (f->layer == drop)
            assert_true(all_zero(e, T));
        else
            moved += memcmp(e->data, f->data, bytes) != 0;
    }
    assert_true(moved > 0);
    free(logits);
    pb_capture_free(acts);
    pb_capture_free(full);
    pb_capture_free(dropped);
    pb_capture_free(resumed);
    free_case(&gc);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_autograd_reference),
        cmocka_unit_test(test_against_autograd_cpu),
        cmocka_unit_test(test_against_autograd_streamed),
        cmocka_unit_test(test_finite_difference),
        cmocka_unit_test(test_from_forward),
        cmocka_unit_test(test_pattern_and_drop),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
