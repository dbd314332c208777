/* Attribution patching of a sweep's rows (atp.h). Per pair: a forward of
 * each run with every layer's hook points captured, and the gradient pass
 * of the base run from the base forward's captures; then per
 * row the dot product of the activation difference with the gradient
 * over the site's positions and slice. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/atp.h"
#include "attribution/grad.h"
#include "attribution/qk_fix.h"
#include "model/capture.h"
#include "model/components.h"
#include "model/forward.h"
#include "model/exec.h"
#include "model/model.h"
#include "patching/metric.h"
#include "patching/noise.h"
#include "patching/sweep_access.h"
#include "util/internal.h"

/* One pair of a group (pairs run together: their forwards in one run of
 * the executor, their backward passes layer by layer together). */
typedef struct atp_pair {
    pb_sweep *s;
    int pair;
    const int64_t *rows; /* (n) its rows not done yet */
    int64_t n;
    double *est; /* (n) each row's estimated patched - base */
    int *layer;  /* (n) GradDrop: each row's site layer */
    double *acc; /* (n) GradDrop: sum over drops of |estimate| */
    pb_capture *base, *source, *grads;
    float *base_logits, *source_logits; /* the metric position's (vocab) until the gradient pass; NULL for
                                           projection */
    pb_qk_fix *qk;                      /* with the QK fix */
    pb_grad_metric metric;              /* the base run's metric, for the gradient passes */
    int T;                              /* the base run's tokens */
    double base_value, source_value;
    double *ref_logprobs;  /* kl: the clean run's, (vocab) */
    int *positions;        /* (base T) */
    int *source_positions; /* (base T) */
} atp_pair;

static void pair_free(atp_pair *a) {
    pb_capture_free(a->base);
    pb_capture_free(a->source);
    pb_capture_free(a->grads);
    pb_qk_fix_free(a->qk);
    free(a->base_logits);
    free(a->source_logits);
    free(a->est);
    free(a->layer);
    free(a->acc);
    free(a->ref_logprobs);
    free(a->positions);
    free(a->source_positions);
    memset(a, 0, sizeof *a);
}

static pb_status check_supported(const pb_sweep *s) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    if (pb_sweep_metric_is_callback(s))
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "\"method\": \"%s\" differentiates the spec's metrics (logit_diff, logprob, "
                       "refusal_score, kl, projection), not a callback metric",
                       pb_sweep_method_name(spec->method));
    if (spec->grad_drop && pb_sweep_model(s)->cfg.n_layers < 2)
        return pb_fail(PB_ERR_UNSUPPORTED, "GradDrop averages over the other layers; this model has one");
    return PB_OK;
}

/* Which of a pair's captures a hook set is for. */
typedef enum { HOOKS_BASE, HOOKS_SOURCE, HOOKS_GRADS } hooks_for;

/* *out (malloc'd) = the hook points one of a pair's captures needs, no
 * more: the sites' (their component's hook at their layers) in every
 * one; the base run's also what the backward reads (PB_GRAD_ACT_HOOKS);
 * the source run's the residual slot a projection metric reads; the
 * gradients' the pattern at each layer holding a q or k site (QK fix)
 * and resid_post at every layer (GradDrop's passes start there). */
static pb_status estimate_hooks(const pb_sweep *s, hooks_for which, char **out) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    int L = pb_sweep_model(s)->cfg.n_layers;
    size_t kinds = PB_HOOK_KIND_COUNT, size = sizeof PB_GRAD_ACT_HOOKS + kinds * (size_t)L * 96;
    char *text = malloc(size), *flags = calloc(kinds * (size_t)L, 1); /* [kind][layer] */
    if (!text || !flags) {
        free(text);
        free(flags);
        return pb_fail(PB_ERR_OOM, "atp: out of memory");
    }
    for (int64_t i = 0, n = pb_sweep_site_count(s); i < n; i++) {
        pb_site_result r;
        if (pb_sweep_get_site(s, i, &r) != PB_OK)
            continue;
        flags[(size_t)pb_component_info_of(r.component)->hook_kind * L + r.layer] = 1;
        if (which == HOOKS_GRADS && spec->qk_fix && (r.component == PB_COMPONENT_Q || r.component == PB_COMPONENT_K))
            flags[(size_t)PB_HOOK_PATTERN * L + r.layer] = 1;
    }
    if (which == HOOKS_SOURCE && spec->metric.kind == PB_METRIC_PROJECTION)
        flags[(size_t)(spec->metric.hook_post ? PB_HOOK_RESID_POST : PB_HOOK_RESID_PRE) * L + spec->metric.layer] = 1;
    for (int l = 0; which == HOOKS_GRADS && spec->grad_drop && l < L; l++)
        flags[(size_t)PB_HOOK_RESID_POST * L + l] = 1;
    size_t used = (size_t)sprintf(text, "%s", which == HOOKS_BASE ? PB_GRAD_ACT_HOOKS : "");
    for (size_t k = 0; k < kinds; k++) {
        int all = 1;
        for (int l = 0; l < L; l++)
            all &= flags[k * L + l];
        for (int l = 0; l < L; l++) {
            char name[96];
            if (!flags[k * L + l] || (all && l > 0))
                continue;
            pb_hook_name((pb_hook_kind)k, l, name, sizeof name);
            /* every layer: one glob, blocks.*.<hook> */
            used += (size_t)sprintf(text + used, "%s%s%s", used ? "," : "", all ? "blocks.*." : "",
                                    all ? strchr(name + strlen("blocks."), '.') + 1 : name);
        }
    }
    free(flags);
    *out = text;
    return PB_OK;
}

/* The three hook sets of a pair's captures (estimate_hooks). */
typedef struct hook_sets {
    char *base, *source, *grads;
} hook_sets;

static void hook_sets_free(hook_sets *h) {
    free(h->base);
    free(h->source);
    free(h->grads);
}

static pb_status hook_sets_make(const pb_sweep *s, hook_sets *h) {
    *h = (hook_sets){0};
    pb_status status = estimate_hooks(s, HOOKS_BASE, &h->base);
    if (status == PB_OK)
        status = estimate_hooks(s, HOOKS_SOURCE, &h->source);
    if (status == PB_OK)
        status = estimate_hooks(s, HOOKS_GRADS, &h->grads);
    if (status != PB_OK)
        hook_sets_free(h);
    return status;
}

/* *out = the prompt's embedding offsets (noise corruption) in the model
 * backend's memory, where the forward reads them, or NULL. */
static pb_status embed_delta(const pb_model *m, const pb_prompt_spec *prompt, float **out) {
    *out = NULL;
    if (!prompt->is_noise)
        return PB_OK;
    size_t n = (size_t)prompt->T * (size_t)m->cfg.d_model;
    pb_backend *b = m->backend;
    float *host = malloc(sizeof(float) * n);
    if (!host)
        return pb_fail(PB_ERR_OOM, "atp: out of memory for noise");
    pb_status status = pb_noise_embed_delta(host, prompt->T, m->cfg.d_model, prompt->noise_positions,
                                            prompt->n_noise_positions, prompt->noise_scale, m->embed_sigma,
                                            prompt->noise_seed);
    if (status == PB_OK)
        status = b->ops->alloc(b, (void **)out, sizeof(float) * n);
    if (status == PB_OK)
        status = b->ops->upload(b, *out, host, sizeof(float) * n);
    free(host);
    if (status != PB_OK && *out) {
        b->ops->free(b, *out);
        *out = NULL;
    }
    return status;
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

/* The projection metric of a run whose captures hold the residual stream. */
static double projection_value(const pb_metric_spec *mt, pb_capture *run, int position, int d) {
    const pb_capture_entry *e = pb_capture_find(run, mt->hook_post ? PB_HOOK_RESID_POST : PB_HOOK_RESID_PRE, mt->layer);
    return pb_metric_projection(e->data + (size_t)position * d, mt->direction, d);
}

/* The forwards of a group's pairs, both runs of each, in one run of the
 * executor: the base runs capturing hooks->base, the source runs
 * hooks->source, every run's logits at the metric's position (none for
 * projection, which reads the residual stream). */
static pb_status group_forwards(pb_sweep *s, atp_pair *a, int G, const hook_sets *hooks) {
    pb_model *m = (pb_model *)(uintptr_t)pb_sweep_model(s);
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    size_t V = (size_t)m->cfg.vocab_size;
    pb_forward_prompt *runs = calloc(2 * (size_t)G, sizeof *runs);
    float **delta = calloc(2 * (size_t)G, sizeof *delta);
    pb_status status = runs && delta ? PB_OK : pb_fail(PB_ERR_OOM, "atp: out of memory for %d pairs", G);
    for (int k = 0; status == PB_OK && k < 2 * G; k++) {
        atp_pair *p = &a[k / 2];
        int source = k % 2;
        const pb_prompt_spec *prompt = source ? &spec->pairs[p->pair].source : &spec->pairs[p->pair].base;
        float **logits = source ? &p->source_logits : &p->base_logits;
        pb_capture **capture = source ? &p->source : &p->base;
        if (spec->metric.kind != PB_METRIC_PROJECTION && !(*logits = malloc(sizeof(float) * V)))
            status = pb_fail(PB_ERR_OOM, "atp: out of memory for a position's logits");
        if (status == PB_OK)
            status = embed_delta(m, prompt, &delta[k]);
        if (status == PB_OK)
            status = pb_capture_create(capture, m, source ? hooks->source : hooks->base);
        runs[k] = (pb_forward_prompt){.ids = prompt->ids,
                                      .T = prompt->T,
                                      .embed_delta = delta[k],
                                      .logits = *logits,
                                      .capture = *capture,
                                      .logits_from = pb_sweep_metric_position(s, prompt->T)};
    }
    if (status == PB_OK)
        status = pb_forward_batch(m, runs, 2 * G);
    for (int k = 0; delta && k < 2 * G; k++) /* the results are downloaded: the run has read the offsets */
        if (delta[k])
            m->backend->ops->free(m->backend, delta[k]);
    free(runs);
    free(delta);
    return status;
}

/* After the forwards: the pair's metric values (the source run's; KL's
 * reference distribution), its gradient metric and gradients' capture. */
static pb_status pair_metric(pb_sweep *s, atp_pair *a, const hook_sets *hooks) {
    pb_model *m = (pb_model *)(uintptr_t)pb_sweep_model(s);
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    const pb_pair_spec *p = &spec->pairs[a->pair];
    int V = m->cfg.vocab_size;
    if (spec->metric.kind == PB_METRIC_KL) {
        const float *row = p->clean_is_source ? a->source_logits : a->base_logits;
        if (!(a->ref_logprobs = malloc(sizeof(double) * (size_t)V)))
            return pb_fail(PB_ERR_OOM, "atp: out of memory for the reference distribution");
        pb_log_softmax(row, V, a->ref_logprobs);
    }
    int source_position = pb_sweep_metric_position(s, p->source.T);
    a->source_value = spec->metric.kind == PB_METRIC_PROJECTION
                          ? projection_value(&spec->metric, a->source, source_position, m->cfg.d_model)
                          : metric_value(spec, p, a->source_logits, V, a->ref_logprobs);
    a->metric = (pb_grad_metric){.kind = spec->metric.kind,
                                 .position = pb_sweep_metric_position(s, p->base.T),
                                 .positive = p->positive,
                                 .n_positive = p->n_positive,
                                 .negative = p->negative,
                                 .n_negative = p->n_negative,
                                 .ref_logprobs = a->ref_logprobs,
                                 .direction = spec->metric.direction,
                                 .layer = spec->metric.layer,
                                 .hook_post = spec->metric.hook_post};
    a->T = p->base.T;
    a->positions = malloc(sizeof(int) * (size_t)p->base.T);
    a->source_positions = malloc(sizeof(int) * (size_t)p->base.T);
    if (!a->positions || !a->source_positions)
        return pb_fail(PB_ERR_OOM, "atp: out of memory for %d positions", p->base.T);
    return pb_capture_create(&a->grads, m, hooks->grads);
}

/* Every base run's whole gradient from its own forward's captures, the
 * group's passes together: a[g].grads and base_value. */
static pb_status whole_passes(pb_model *m, atp_pair *a, int G) {
    pb_grad_job *jobs = calloc((size_t)G, sizeof *jobs);
    if (!jobs)
        return pb_fail(PB_ERR_OOM, "atp: out of memory for %d pairs", G);
    for (int g = 0; g < G; g++)
        jobs[g] = (pb_grad_job){a[g].T, a[g].base, a[g].base_logits, &a[g].metric, a[g].grads, &a[g].base_value};
    pb_status status = pb_grad_passes(m, jobs, G);
    free(jobs);
    return status;
}

/* A group's runs: the forwards, the source runs' metric values, the QK
 * fix's state; and unless GradDrop takes them into its descent
 * (grad_drop), the whole gradients and base values (whole_passes). */
static pb_status group_runs(pb_sweep *s, atp_pair *a, int G, const hook_sets *hooks) {
    pb_model *m = (pb_model *)(uintptr_t)pb_sweep_model(s);
    PB_TRY(group_forwards(s, a, G, hooks));
    for (int g = 0; g < G; g++)
        PB_TRY(pair_metric(s, &a[g], hooks));
    if (!pb_sweep_spec_of(s)->grad_drop)
        PB_TRY(whole_passes(m, a, G));
    for (int g = 0; pb_sweep_spec_of(s)->qk_fix && g < G; g++)
        PB_TRY(pb_qk_fix_create(&a[g].qk, m, a[g].T, a[g].base, a[g].source));
    return PB_OK;
}

/* *estimate of the row's patched - base from the gradients in grads:
 * the QK fix's for q and k sites when on, else the activation difference
 * dotted with the gradient over the site's positions and slice. */
static pb_status row_estimate(const pb_sweep *s, int pair, int64_t site, atp_pair *a, pb_capture *grads,
                              double *estimate) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    const pb_model_config *c = &pb_sweep_model(s)->cfg;
    pb_site_result r;
    *estimate = 0.0;
    PB_TRY(pb_sweep_get_site(s, site, &r));
    int n = pb_sweep_site_positions(s, site, pair, a->positions);
    for (int i = 0; i < n; i++)
        a->source_positions[i] = spec->pairs[pair].position_map[a->positions[i]];
    if (a->qk && (r.component == PB_COMPONENT_Q || r.component == PB_COMPONENT_K)) {
        return pb_qk_fix_estimate(a->qk, r.component, r.layer, r.head, a->positions, a->source_positions, n,
                                  pb_capture_find_data(grads, PB_HOOK_PATTERN, r.layer), estimate);
    }
    const pb_component_info *info = pb_component_info_of(r.component);
    pb_capture_entry *base = pb_capture_find(a->base, info->hook_kind, r.layer);
    pb_capture_entry *src = pb_capture_find(a->source, info->hook_kind, r.layer);
    pb_capture_entry *grad = pb_capture_find(grads, info->hook_kind, r.layer);
    size_t width = (size_t)base->row_shape[0] * (size_t)(base->n_dims == 3 ? base->row_shape[1] : 1);
    size_t first = r.head >= 0 ? (size_t)r.head * (size_t)c->head_dim : 0;
    size_t len = r.head >= 0 ? (size_t)c->head_dim : width;
    double total = 0.0;
    for (int i = 0; i < n; i++) {
        const float *b = base->data + (size_t)a->positions[i] * width + first;
        const float *x = src->data + (size_t)a->source_positions[i] * width + first;
        const float *g = grad->data + (size_t)a->positions[i] * width + first;
        for (size_t e = 0; e < len; e++)
            total += ((double)x[e] - b[e]) * g[e];
    }
    *estimate = total;
    return PB_OK;
}

static int site_layer(const pb_sweep *s, int64_t site) {
    pb_site_result r;
    return pb_sweep_get_site(s, site, &r) == PB_OK ? r.layer : 0;
}

/* pb_grad_layer_fn: drop `drop`'s pass of pair a reached `layer`; its
 * rows there. */
static pb_status drop_layer(void *user, int layer, int drop, pb_capture *grads) {
    (void)drop;
    atp_pair *a = user;
    int64_t n_sites = pb_sweep_site_count(a->s);
    for (int64_t i = 0; i < a->n; i++) {
        double e;
        if (a->layer[i] != layer)
            continue;
        PB_TRY(row_estimate(a->s, a->pair, a->rows[i] % n_sites, a, grads, &e));
        a->acc[i] += fabs(e);
    }
    return PB_OK;
}

/* GradDrop: each row's AtP* value is
 *
 *   (1 / (L - 1)) sum over layers l of |estimate with layer l's writes
 *   passing no gradient back|
 *
 * signed as source - base so that the normalised effect is its magnitude.
 * A drop at l leaves every gradient above l as it was, and a drop above
 * the layers the metric reads (projection) changes nothing: those terms
 * are the whole estimate's (grad_drop_finish adds them). The others come
 * from pb_grad_whole_drops (into acc): the whole pass and every drop's
 * pass of every pair of the group at once, down to the lowest site's
 * layer; the whole pass fills grads and base_value as whole_passes does. */
static pb_status grad_drop(pb_sweep *s, atp_pair *a, int G, int batch) {
    pb_model *m = (pb_model *)(uintptr_t)pb_sweep_model(s);
    int64_t n_sites = pb_sweep_site_count(s);
    int L = m->cfg.n_layers, lowest = L, top = pb_grad_metric_top_layer(&a[0].metric, L);
    pb_grad_drop_job *jobs = calloc((size_t)G, sizeof *jobs);
    pb_status status = jobs ? PB_OK : pb_fail(PB_ERR_OOM, "GradDrop: out of memory for %d pairs", G);
    for (int g = 0; status == PB_OK && g < G; g++) {
        atp_pair *p = &a[g];
        size_t n = (size_t)(p->n > 0 ? p->n : 1);
        p->acc = malloc(sizeof(double) * n);
        p->layer = malloc(sizeof(int) * n);
        if (!p->acc || !p->layer) {
            status = pb_fail(PB_ERR_OOM, "GradDrop: out of memory for %lld rows", (long long)p->n);
            break;
        }
        for (int64_t i = 0; i < p->n; i++) {
            p->layer[i] = site_layer(s, p->rows[i] % n_sites);
            p->acc[i] = 0.0;
            lowest = p->layer[i] < lowest ? p->layer[i] : lowest;
        }
        jobs[g] = (pb_grad_drop_job){.T = p->T,
                                     .acts = p->base,
                                     .metric = &p->metric,
                                     .whole = p->grads,
                                     .fn = drop_layer,
                                     .user = p,
                                     .logits = p->base_logits,
                                     .value = &p->base_value};
    }
    if (status == PB_OK)
        status = lowest <= top ? pb_grad_whole_drops(m, jobs, G, lowest, top, lowest, batch) : whole_passes(m, a, G);
    free(jobs);
    return status;
}

/* GradDrop's sums completed: each row's est holds its whole estimate on
 * entry, its AtP* value on return. */
static void grad_drop_finish(const pb_sweep *s, atp_pair *a, int G) {
    int L = pb_sweep_model(s)->cfg.n_layers, top = pb_grad_metric_top_layer(&a[0].metric, L);
    for (int g = 0; g < G; g++) {
        double sign = a[g].source_value >= a[g].base_value ? 1.0 : -1.0;
        for (int64_t i = 0; i < a[g].n; i++) {
            int layer = a[g].layer[i], above = L - (layer > top ? layer : top + 1);
            double acc = a[g].acc[i] + (layer + above) * fabs(a[g].est[i]); /* drops below the site, above the top */
            a[g].est[i] = sign * acc / (L - 1);
        }
    }
}

/* One group's rows (a[g].rows, each pair's not done yet): the runs,
 * every row's estimate, GradDrop's when on (drop_batch passes at once). */
static pb_status group_rows(pb_sweep *s, atp_pair *a, int G, int drop_batch, const hook_sets *hooks) {
    int64_t n_sites = pb_sweep_site_count(s);
    pb_status status = PB_OK;
    for (int g = 0; status == PB_OK && g < G; g++)
        if (!(a[g].est = malloc(sizeof(double) * (size_t)(a[g].n > 0 ? a[g].n : 1))))
            status = pb_fail(PB_ERR_OOM, "atp: out of memory for %lld rows", (long long)a[g].n);
    int drop = pb_sweep_spec_of(s)->grad_drop;
    if (status == PB_OK)
        status = group_runs(s, a, G, hooks);
    if (status == PB_OK && drop)
        status = grad_drop(s, a, G, drop_batch);
    for (int g = 0; g < G; g++) {
        free(a[g].base_logits);
        free(a[g].source_logits);
        a[g].base_logits = a[g].source_logits = NULL;
    }
    for (int g = 0; status == PB_OK && g < G; g++) {
        status = pb_sweep_set_pair(s, a[g].pair, a[g].base_value, a[g].source_value);
        for (int64_t i = 0; status == PB_OK && i < a[g].n; i++)
            status = row_estimate(s, a[g].pair, a[g].rows[i] % n_sites, &a[g], a[g].grads, &a[g].est[i]);
    }
    if (status == PB_OK && drop)
        grad_drop_finish(s, a, G);
    for (int g = 0; status == PB_OK && g < G; g++)
        for (int64_t i = 0; status == PB_OK && i < a[g].n; i++)
            status = pb_sweep_set_row(s, a[g].rows[i], a[g].base_value + a[g].est[i], 0, 0);
    if (status != PB_OK)
        status = G == 1 ? pb_fail_context(status, "%s: pair %d", pb_sweep_method_name(pb_sweep_spec_of(s)->method),
                                          a[0].pair)
                        : pb_fail_context(status, "%s: pairs %d..%d", pb_sweep_method_name(pb_sweep_spec_of(s)->method),
                                          a[0].pair, a[G - 1].pair);
    return status;
}

/* *bytes of a capture of pattern over T tokens (pb_capture_prepare's
 * sizes); *layer_max (may be NULL): the most any one layer's entries take. */
static pb_status capture_bytes(const pb_model *m, const char *pattern, int T, uint64_t *bytes, uint64_t *layer_max) {
    pb_capture *c = NULL;
    PB_TRY(pb_capture_create(&c, m, pattern));
    uint64_t *per_layer = calloc((size_t)m->cfg.n_layers + 1, sizeof(uint64_t));
    if (!per_layer) {
        pb_capture_free(c);
        return pb_fail(PB_ERR_OOM, "atp: out of memory");
    }
    *bytes = 0;
    for (int i = 0; i < c->count; i++) {
        uint64_t b = sizeof(float) * (uint64_t)pb_capture_entry_floats(&c->entries[i], T);
        *bytes += b;
        per_layer[c->entries[i].layer < 0 ? m->cfg.n_layers : c->entries[i].layer] += b;
    }
    for (int l = 0; layer_max && l <= m->cfg.n_layers; l++)
        *layer_max = l == 0 || per_layer[l] > *layer_max ? per_layer[l] : *layer_max;
    free(per_layer);
    pb_capture_free(c);
    return PB_OK;
}

/* A pair's memory for T tokens (its base run's; the source run's is
 * counted as long): what it holds through its group's passes (captures,
 * logits), its whole pass's scratch, and one layer's gradients (a
 * GradDrop pass's capture). */
typedef struct pair_bytes {
    uint64_t held, pass, layer;
} pair_bytes;

static pb_status pair_bytes_of(const pb_sweep *s, const hook_sets *hooks, int T, pair_bytes *out) {
    const pb_model *m = pb_sweep_model(s);
    uint64_t base, source, grads;
    PB_TRY(capture_bytes(m, hooks->base, T, &base, NULL));
    PB_TRY(capture_bytes(m, hooks->source, T, &source, NULL));
    PB_TRY(capture_bytes(m, hooks->grads, T, &grads, &out->layer));
    out->held = base + source + grads + 2 * sizeof(float) * (uint64_t)m->cfg.vocab_size; /* the metric row's logits */
    out->pass = pb_grad_scratch_bytes(&m->cfg, T, pb_model_on_device(m), 1);
    return PB_OK;
}

/* The memory of G pairs of T[g] tokens run as a group, beside the
 * executor's: what they hold, and the larger of their whole passes'
 * scratch and GradDrop's (`batch` passes per pair, 0: pb_grad_drop_batch's,
 * a layer's gradients each). *host: of that, the captures and logits,
 * host memory on every backend. */
static uint64_t group_bytes(const pb_sweep *s, const pair_bytes *b, const int *T, int G, int batch, uint64_t *host) {
    const pb_model *m = pb_sweep_model(s);
    int device = pb_model_on_device(m);
    uint64_t held = 0, passes = 0, drops = 0, drop_captures = 0;
    for (int g = 0; g < G; g++) {
        held += b[g].held;
        passes += b[g].pass;
    }
    if (pb_sweep_spec_of(s)->grad_drop) {
        batch = batch > 0 ? batch : pb_grad_drop_batch(&m->cfg, T, G, device);
        for (int g = 0; g < G; g++) {
            drops += pb_grad_scratch_bytes(&m->cfg, T[g], device, batch);
            drop_captures += (uint64_t)batch * b[g].layer;
        }
    }
    int drops_larger = drops + drop_captures > passes;
    *host = held + (drops_larger ? drop_captures : 0);
    return held + (drops_larger ? drops + drop_captures : passes);
}

pb_status pb_atp_peak_bytes(const pb_sweep *s, int T, uint64_t *bytes, uint64_t *host_bytes) {
    hook_sets hooks;
    pair_bytes b;
    PB_TRY(hook_sets_make(s, &hooks));
    pb_status status = pair_bytes_of(s, &hooks, T, &b);
    hook_sets_free(&hooks);
    PB_TRY(status);
    uint64_t host;
    *bytes = group_bytes(s, &b, &T, 1, 0, &host);
    if (host_bytes)
        *host_bytes = host;
    return PB_OK;
}

/* GradDrop's passes per pair for a group of G pairs whose memory with
 * the default batch is shape's: as many as the budget holds (all the
 * layers at most), the default at least; shape's bytes updated. */
static int widest_drop_batch(const pb_sweep *s, const pair_bytes *b, const int *T, int G, uint64_t exec, size_t budget,
                             pb_atp_group_shape *shape) {
    const pb_model *m = pb_sweep_model(s);
    int least = pb_grad_drop_batch(&m->cfg, T, G, pb_model_on_device(m));
    for (int batch = m->cfg.n_layers; pb_sweep_spec_of(s)->grad_drop && batch > least; batch--) {
        uint64_t host, with = group_bytes(s, b, T, G, batch, &host) + exec;
        if (with <= budget) {
            shape->bytes = with;
            shape->host_bytes = host;
            return batch;
        }
    }
    return least;
}

pb_atp_group_shape pb_atp_group(const pb_sweep *s, const int *pairs, int n, size_t budget) {
    const pb_model *m = pb_sweep_model(s);
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    pair_bytes *b = malloc(sizeof *b * (size_t)(n > 0 ? n : 1));
    int *T = malloc(sizeof(int) * (size_t)(n > 0 ? n : 1));
    hook_sets hooks = {0};
    pb_atp_group_shape shape = {0};
    uint64_t exec = 0;
    int tokens = 0, max_T = 0, failed = !b || !T || hook_sets_make(s, &hooks) != PB_OK;
    for (int G = 0; !failed && G < n; G++) {
        const pb_pair_spec *p = &spec->pairs[pairs[G]];
        if (G > 0 && p->base.T == T[G - 1]) /* a pair's bytes depend on its tokens only */
            b[G] = b[G - 1];
        else if ((failed = pair_bytes_of(s, &hooks, p->base.T, &b[G]) != PB_OK))
            break;
        T[G] = p->base.T;
        int t = tokens + p->base.T + p->source.T, longest = p->base.T > p->source.T ? p->base.T : p->source.T;
        longest = longest > max_T ? longest : max_T;
        uint64_t host, e = pb_exec_workspace_bytes(&m->cfg, t, longest),
                       with = group_bytes(s, b, T, G + 1, 0, &host) + e;
        if (G > 0 && with > budget)
            break;
        shape = (pb_atp_group_shape){G + 1, 0, with, host};
        exec = e;
        tokens = t;
        max_T = longest;
    }
    if (failed) /* out of memory counting: the group as it stands, at least one pair */
        pb_error_clear();
    if (shape.pairs == 0)
        shape.pairs = 1;
    else
        shape.drop_batch = widest_drop_batch(s, b, T, shape.pairs, exec, budget, &shape);
    hook_sets_free(&hooks);
    free(b);
    free(T);
    return shape;
}

/* The pairs of rows (sorted by pair) with a row not done yet, each
 * pair's such rows in todo: a[k].pair, .rows, .n; *n_pairs of them. */
static pb_status pending_pairs(pb_sweep *s, const int64_t *rows, int64_t n_rows, int64_t *todo, atp_pair *a,
                               int *n_pairs) {
    int64_t n_sites = pb_sweep_site_count(s), k = 0;
    *n_pairs = 0;
    for (int64_t i = 0, j; i < n_rows; i = j) {
        int pair = (int)(rows[i] / n_sites);
        atp_pair *p = &a[*n_pairs];
        *p = (atp_pair){.s = s, .pair = pair, .rows = todo + k};
        for (j = i; j < n_rows && rows[j] / n_sites == pair; j++)
            if (pb_sweep_row_state(s, rows[j]) != 1)
                todo[k++] = rows[j];
        p->n = todo + k - p->rows;
        *n_pairs += p->n > 0;
    }
    return PB_OK;
}

pb_status pb_atp_run_rows(pb_sweep *s, const int64_t *rows, int64_t n_rows) {
    PB_TRY(check_supported(s));
    int64_t n_sites = pb_sweep_site_count(s);
    size_t n = (size_t)(n_rows > 0 ? n_rows : 1), runs = 1; /* runs of rows of one pair */
    for (int64_t i = 1; i < n_rows; i++)
        runs += rows[i] / n_sites != rows[i - 1] / n_sites;
    int64_t *todo = malloc(sizeof(int64_t) * n);
    atp_pair *a = calloc(runs, sizeof *a);
    int *pairs = malloc(sizeof(int) * runs);
    hook_sets hooks = {0};
    int n_pairs = 0;
    pb_status status = todo && a && pairs ? PB_OK
                                          : pb_fail(PB_ERR_OOM, "atp: out of memory for %lld rows", (long long)n_rows);
    if (status == PB_OK)
        status = hook_sets_make(s, &hooks);
    if (status == PB_OK)
        status = pending_pairs(s, rows, n_rows, todo, a, &n_pairs);
    for (int k = 0; k < n_pairs; k++)
        pairs[k] = a[k].pair;
    size_t budget = 0;
    if (status == PB_OK)
        status = pb_sweep_memory_budget(s, &budget);
    for (int k = 0, G; status == PB_OK && k < n_pairs; k += G) {
        pb_atp_group_shape shape = pb_atp_group(s, pairs + k, n_pairs - k, budget);
        G = shape.pairs;
        status = group_rows(s, a + k, G, shape.drop_batch, &hooks);
        for (int g = 0; g < G; g++)
            pair_free(&a[k + g]);
    }
    for (int k = 0; a && k < n_pairs; k++)
        pair_free(&a[k]);
    hook_sets_free(&hooks);
    free(todo);
    free(a);
    free(pairs);
    return status;
}

/* FLOPs of one pair's estimate, a model of the passes atp.c runs: a
 * forward of each run (logits at the metric's position), and backward passes
 * whose products are the forward's transposed (the same FLOPs, the
 * attention's twice) plus the MLP's pre-activations recomputed and the
 * unembedding at the metric's position; GradDrop adds its passes, the
 * one for layer l running layers l..0. The QK fix's softmaxes are not
 * counted (a row of T keys per touched query). */
double pb_atp_flops(const pb_model_config *c, int T, int grad_drop) {
    double d = c->d_model, V = c->vocab_size, forward = 2.0 * d * V,
           *layer = calloc((size_t)c->n_layers, sizeof(double));
    if (!layer)
        return 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        double attention = pb_exec_step_flops(c, 2 * l, 0, T), mlp = pb_exec_step_flops(c, 2 * l + 1, 0, T);
        forward += attention + mlp;
        layer[l] = attention + mlp + (c->plain_mlp ? 2.0 : 4.0) * T * d * c->d_mlp;
    }
    double backward = 2.0 * d * V, drops = 0.0, below = 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        backward += layer[l];
        below += layer[l];
        drops += below; /* the pass for l: layers l..0 */
    }
    free(layer);
    return 2.0 * forward + backward + (grad_drop ? drops : 0.0);
}

double pb_atp_stream_bytes(const pb_sweep *s, int drop_batch, const uint64_t *layer_bytes) {
    const pb_model_config *c = &pb_sweep_model(s)->cfg;
    double all = 0.0, drops = 0.0;
    int batch = drop_batch > 0 ? drop_batch : 1;
    for (int l = 0; l < c->n_layers; l++)
        all += (double)layer_bytes[l];
    /* the first turn of drops carries the whole pass (pb_grad_whole_drops),
     * whose read it is; each later turn of drops top - batch + 1..top
     * reads the layers below top */
    int first_turn = pb_grad_whole_turn_drops(batch);
    for (int top = c->n_layers - 1 - first_turn; pb_sweep_spec_of(s)->grad_drop && top >= 0; top -= batch)
        for (int l = 0; l < top; l++)
            drops += (double)layer_bytes[l];
    return 3.0 * all + drops;
}
