/* Attribution patching of a sweep's rows (atp.h). Per pair: a forward of
 * the source run and the gradient pass of the base run (which runs the
 * base forward), both with every layer's hook points captured; then per
 * row the dot product of the activation difference with the gradient
 * over the site's positions and slice. */
#include <stdlib.h>
#include <string.h>

#include "attribution/atp.h"
#include "attribution/grad_ref.h"
#include "model/capture.h"
#include "model/components.h"
#include "model/forward.h"
#include "model/model.h"
#include "patching/metric.h"
#include "patching/noise.h"
#include "patching/sweep_access.h"
#include "util/internal.h"

/* Hook points whose gradients grad_ref.h gives: every component's. */
#define ATP_HOOKS "blocks.*.hook_resid_*,blocks.*.hook_attn_out,blocks.*.hook_mlp_out,blocks.*.attn.hook_[zqkv]"

typedef struct atp_pair {
    pb_capture *base, *source, *grads;
    double base_value, source_value;
    double *ref_logprobs; /* kl: the clean run's, (vocab) */
    int *positions;       /* (base T) */
} atp_pair;

static void pair_free(atp_pair *a) {
    pb_capture_free(a->base);
    pb_capture_free(a->source);
    pb_capture_free(a->grads);
    free(a->ref_logprobs);
    free(a->positions);
    memset(a, 0, sizeof *a);
}

static pb_status check_supported(const pb_sweep *s) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    if (pb_sweep_metric_is_callback(s) || spec->metric.kind == PB_METRIC_PROJECTION)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "\"method\": \"atp\" estimates metrics on the logits (logit_diff, "
                       "logprob, refusal_score, kl), not %s",
                       pb_sweep_metric_is_callback(s) ? "a callback metric" : "projection");
    return PB_OK;
}

/* *out = the prompt's embedding offsets (noise corruption), or NULL. */
static pb_status embed_delta(const pb_model *m, const pb_prompt_spec *prompt, float **out) {
    *out = NULL;
    if (!prompt->is_noise)
        return PB_OK;
    if (!(*out = malloc(sizeof(float) * (size_t)prompt->T * (size_t)m->cfg.d_model)))
        return pb_fail(PB_ERR_OOM, "atp: out of memory for noise");
    return pb_noise_embed_delta(*out, prompt->T, m->cfg.d_model, prompt->noise_positions, prompt->n_noise_positions,
                                prompt->noise_scale, m->embed_sigma, prompt->noise_seed);
}

/* The metric of one position's logits (metric.c), for the source run. */
static double metric_value(const pb_sweep_spec *spec, const pb_pair_spec *p, const float *row, int V,
                           const double *ref) {
    switch (spec->metric.kind) {
    case PB_METRIC_LOGIT_DIFF: {
        double sp = 0.0, sn = 0.0;
        for (int i = 0; i < p->n_positive; i++)
            sp += row[p->positive[i]];
        for (int i = 0; i < p->n_negative; i++)
            sn += row[p->negative[i]];
        return sp / p->n_positive - sn / p->n_negative;
    }
    case PB_METRIC_LOGPROB: return pb_metric_logprob(row, V, p->positive, p->n_positive);
    case PB_METRIC_REFUSAL_SCORE: return pb_metric_refusal_score(row, V, p->positive, p->n_positive);
    default: return pb_metric_kl(ref, row, V);
    }
}

/* A forward of prompt with every layer's hook points captured; logits
 * (T, V) into *logits (the caller frees). */
static pb_status capture_run(pb_model *m, const pb_prompt_spec *prompt, pb_capture **out, float **logits) {
    *logits = malloc(sizeof(float) * (size_t)prompt->T * (size_t)m->cfg.vocab_size);
    if (!*logits)
        return pb_fail(PB_ERR_OOM, "atp: out of memory for %d tokens' logits", prompt->T);
    float *delta;
    PB_TRY(embed_delta(m, prompt, &delta));
    pb_forward_extras extras = {.embed_delta = delta};
    pb_status status = pb_capture_create(out, m, ATP_HOOKS);
    if (status == PB_OK)
        status = pb_forward_ex(m, prompt->ids, prompt->T, &extras, *logits, *out);
    free(delta);
    return status;
}

/* The base run's gradient (grads) and metric value. */
static pb_status base_gradient(pb_model *m, const pb_prompt_spec *prompt, const pb_grad_metric *gm, atp_pair *a) {
    float *delta;
    PB_TRY(embed_delta(m, prompt, &delta));
    pb_status status = pb_capture_create(&a->grads, m, ATP_HOOKS);
    if (status == PB_OK)
        status = pb_grad_reference_ex(m, prompt->ids, prompt->T, delta, gm, a->grads, &a->base_value);
    free(delta);
    return status;
}

static int metric_position(const pb_sweep_spec *spec, int T) {
    return spec->metric.position < 0 ? T + spec->metric.position : spec->metric.position;
}

/* The pair's two runs, the base run's gradient, both metric values. */
static pb_status pair_runs(pb_sweep *s, int pair, atp_pair *a) {
    pb_model *m = (pb_model *)(uintptr_t)pb_sweep_model(s);
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    const pb_pair_spec *p = &spec->pairs[pair];
    int V = m->cfg.vocab_size;
    float *base_logits = NULL, *source_logits = NULL;
    pb_status status = capture_run(m, &p->base, &a->base, &base_logits);
    if (status == PB_OK)
        status = capture_run(m, &p->source, &a->source, &source_logits);
    if (status == PB_OK && spec->metric.kind == PB_METRIC_KL) {
        const pb_prompt_spec *clean = p->clean_is_source ? &p->source : &p->base;
        const float *row = (p->clean_is_source ? source_logits : base_logits) +
                           (size_t)metric_position(spec, clean->T) * V;
        if (!(a->ref_logprobs = malloc(sizeof(double) * (size_t)V)))
            status = pb_fail(PB_ERR_OOM, "atp: out of memory for the reference distribution");
        else
            pb_log_softmax(row, V, a->ref_logprobs);
    }
    if (status == PB_OK) {
        a->source_value = metric_value(spec, p, source_logits + (size_t)metric_position(spec, p->source.T) * V, V,
                                       a->ref_logprobs);
        pb_grad_metric gm = {
            spec->metric.kind, metric_position(spec, p->base.T), p->positive, p->n_positive, p->negative, p->n_negative,
            a->ref_logprobs};
        status = base_gradient(m, &p->base, &gm, a);
    }
    if (status == PB_OK && !(a->positions = malloc(sizeof(int) * (size_t)p->base.T)))
        status = pb_fail(PB_ERR_OOM, "atp: out of memory for %d positions", p->base.T);
    free(base_logits);
    free(source_logits);
    return status;
}

/* The row's estimate of patched - base. */
static double row_estimate(const pb_sweep *s, int pair, int64_t site, atp_pair *a) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    const pb_model_config *c = &pb_sweep_model(s)->cfg;
    pb_site_result r;
    if (pb_sweep_get_site(s, site, &r) != PB_OK)
        return 0.0;
    const pb_component_info *info = pb_component_info_of(r.component);
    pb_capture_entry *base = pb_capture_find(a->base, info->hook_kind, r.layer);
    pb_capture_entry *src = pb_capture_find(a->source, info->hook_kind, r.layer);
    pb_capture_entry *grad = pb_capture_find(a->grads, info->hook_kind, r.layer);
    size_t width = (size_t)base->row_shape[0] * (size_t)(base->n_dims == 3 ? base->row_shape[1] : 1);
    size_t first = r.head >= 0 ? (size_t)r.head * (size_t)c->head_dim : 0;
    size_t len = r.head >= 0 ? (size_t)c->head_dim : width;
    int n = pb_sweep_site_positions(s, site, pair, a->positions);
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        int pb = a->positions[i], ps = spec->pairs[pair].position_map[pb];
        const float *b = base->data + (size_t)pb * width + first, *x = src->data + (size_t)ps * width + first;
        const float *g = grad->data + (size_t)pb * width + first;
        for (size_t e = 0; e < len; e++)
            total += ((double)x[e] - b[e]) * g[e];
    }
    return total;
}

pb_status pb_atp_run_rows(pb_sweep *s, const int64_t *rows, int64_t n_rows) {
    PB_TRY(check_supported(s));
    int64_t n_sites = pb_sweep_site_count(s);
    atp_pair a = {0};
    int current = -1;
    pb_status status = PB_OK;
    for (int64_t i = 0; status == PB_OK && i < n_rows; i++) {
        int pair = (int)(rows[i] / n_sites);
        if (pb_sweep_row_state(s, rows[i]) == 1)
            continue;
        if (pair != current) {
            pair_free(&a);
            current = pair;
            if ((status = pair_runs(s, pair, &a)) == PB_OK)
                status = pb_sweep_set_pair(s, pair, a.base_value, a.source_value);
            if (status != PB_OK)
                status = pb_fail_context(status, "atp: pair %d", pair);
        }
        if (status == PB_OK)
            status = pb_sweep_set_row(s, rows[i], a.base_value + row_estimate(s, pair, rows[i] % n_sites, &a), 0, 0);
    }
    pair_free(&a);
    return status;
}
