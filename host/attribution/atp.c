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

/* A forward of prompt capturing the hook points `hooks`; logits (T, V)
 * into *logits (the caller frees). */
static pb_status capture_run(pb_model *m, const pb_prompt_spec *prompt, const char *hooks, pb_capture **out,
                             float **logits) {
    *logits = malloc(sizeof(float) * (size_t)prompt->T * (size_t)m->cfg.vocab_size);
    if (!*logits)
        return pb_fail(PB_ERR_OOM, "atp: out of memory for %d tokens' logits", prompt->T);
    float *delta;
    PB_TRY(embed_delta(m, prompt, &delta));
    pb_forward_extras extras = {.embed_delta = delta};
    pb_status status = pb_capture_create(out, m, hooks);
    if (status == PB_OK)
        status = pb_forward_ex(m, prompt->ids, prompt->T, &extras, *logits, *out);
    free(delta);
    return status;
}

/* The pair's two runs, the base run's gradient from the base run's own
 * forward (its captures hold what the backward reads), both metric values. */
static pb_status pair_runs(pb_sweep *s, int pair, atp_pair *a) {
    pb_model *m = (pb_model *)(uintptr_t)pb_sweep_model(s);
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    const pb_pair_spec *p = &spec->pairs[pair];
    int V = m->cfg.vocab_size;
    float *base_logits = NULL, *source_logits = NULL;
    pb_status status = capture_run(m, &p->base, "blocks.*", &a->base, &base_logits);
    if (status == PB_OK)
        status = capture_run(m, &p->source, ATP_HOOKS, &a->source, &source_logits);
    if (status == PB_OK && spec->metric.kind == PB_METRIC_KL) {
        const pb_prompt_spec *clean = p->clean_is_source ? &p->source : &p->base;
        const float *row = (p->clean_is_source ? source_logits : base_logits) +
                           (size_t)pb_sweep_metric_position(s, clean->T) * V;
        if (!(a->ref_logprobs = malloc(sizeof(double) * (size_t)V)))
            status = pb_fail(PB_ERR_OOM, "atp: out of memory for the reference distribution");
        else
            pb_log_softmax(row, V, a->ref_logprobs);
    }
    if (status == PB_OK) {
        a->source_value = metric_value(spec, p, source_logits + (size_t)pb_sweep_metric_position(s, p->source.T) * V, V,
                                       a->ref_logprobs);
        pb_grad_metric gm = {spec->metric.kind, pb_sweep_metric_position(s, p->base.T),
                             p->positive,       p->n_positive,
                             p->negative,       p->n_negative,
                             a->ref_logprobs};
        status = pb_capture_create(&a->grads, m, ATP_HOOKS);
        if (status == PB_OK)
            status = pb_grad_reference_from(m, p->base.T, a->base, base_logits, &gm, a->grads, &a->base_value);
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

/* ---- verification --------------------------------------------------------- */

void pb_atp_verification_free(pb_atp_verification *v) {
    if (!v)
        return;
    free(v->checks);
    v->checks = NULL;
}

typedef struct ranked_site {
    double key; /* sorted descending; NaN last */
    int64_t site;
} ranked_site;

static int by_key_descending(const void *pa, const void *pb) {
    const ranked_site *a = pa, *b = pb;
    int na = a->key != a->key, nb = b->key != b->key;
    if (na || nb)
        return na - nb;
    return a->key < b->key ? 1 : a->key > b->key ? -1 : (a->site > b->site) - (a->site < b->site);
}

static uint64_t next_random(uint64_t *state) {
    uint64_t x = (*state += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static double site_effect(const pb_sweep *s, int64_t site) {
    pb_site_result r;
    return pb_sweep_get_site(s, site, &r) == PB_OK ? r.effect : NAN;
}

/* v->checks: the top sites by |estimate|, then a control sample drawn
 * from the rest (a partial Fisher-Yates shuffle seeded by the spec). */
static pb_status choose_checks(const pb_sweep *s, pb_atp_verification *v) {
    int64_t n = pb_sweep_site_count(s);
    ranked_site *order = malloc(sizeof *order * (size_t)n);
    if (!order)
        return pb_fail(PB_ERR_OOM, "verify: out of memory for %lld sites", (long long)n);
    for (int64_t i = 0; i < n; i++)
        order[i] = (ranked_site){fabs(site_effect(s, i)), i};
    qsort(order, (size_t)n, sizeof *order, by_key_descending);
    int top = v->top < n ? v->top : (int)n;
    int64_t rest = n - top;
    int control = v->n_control < rest ? v->n_control : (int)rest;
    v->checks = calloc((size_t)(top + control > 0 ? top + control : 1), sizeof *v->checks);
    if (!v->checks) {
        free(order);
        return pb_fail(PB_ERR_OOM, "verify: out of memory for %d checks", top + control);
    }
    uint64_t state = v->seed;
    for (int i = 0; i < control; i++) {
        int64_t j = top + i + (int64_t)(next_random(&state) % (uint64_t)(n - top - i));
        ranked_site t = order[top + i];
        order[top + i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < top + control; i++)
        v->checks[i] = (pb_atp_check){order[i].site, site_effect(s, order[i].site), NAN, i >= top};
    v->n_checks = top + control;
    v->top = top;
    v->n_control = control;
    free(order);
    return PB_OK;
}

/* The exact mean effects of the checked sites, every pair, from a twin. */
static pb_status run_exact(const pb_sweep *s, pb_atp_verification *v) {
    int64_t n_sites = pb_sweep_site_count(s);
    int n_pairs = pb_sweep_spec_of(s)->n_pairs;
    pb_sweep *exact = NULL;
    PB_TRY(pb_sweep_create_exact_twin(s, &exact));
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)v->n_checks * (size_t)n_pairs + 1);
    pb_status status = rows ? PB_OK : pb_fail(PB_ERR_OOM, "verify: out of memory for its rows");
    int64_t k = 0;
    for (int p = 0; status == PB_OK && p < n_pairs; p++) /* pair-major: one pair's caches at a time */
        for (int i = 0; i < v->n_checks; i++)
            rows[k++] = (int64_t)p * n_sites + v->checks[i].site;
    if (status == PB_OK)
        status = pb_sweep_run_rows(exact, rows, k);
    for (int i = 0; status == PB_OK && i < v->n_checks; i++)
        v->checks[i].exact = site_effect(exact, v->checks[i].site);
    free(rows);
    pb_sweep_free(exact);
    return status;
}

/* ranks (1-based, ties averaged) of x (n). */
static void rank_values(const double *x, int n, double *out) {
    for (int i = 0; i < n; i++) {
        int below = 0, equal = 0;
        for (int j = 0; j < n; j++) {
            below += x[j] < x[i];
            equal += x[j] == x[i];
        }
        out[i] = below + (equal + 1) / 2.0;
    }
}

/* Spearman's rho over the checks with both effects defined. */
static double spearman(const pb_atp_verification *v) {
    int n = 0;
    double *x = malloc(sizeof(double) * 4 * (size_t)(v->n_checks + 1)), *y = x + v->n_checks + 1;
    if (!x)
        return NAN;
    for (int i = 0; i < v->n_checks; i++)
        if (!isnan(v->checks[i].estimate) && !isnan(v->checks[i].exact)) {
            x[n] = v->checks[i].estimate;
            y[n++] = v->checks[i].exact;
        }
    double *rx = y + v->n_checks + 1, *ry = rx + v->n_checks + 1, sxy = 0, sxx = 0, syy = 0;
    rank_values(x, n, rx);
    rank_values(y, n, ry);
    for (int i = 0; i < n; i++) {
        double a = rx[i] - (n + 1) / 2.0, b = ry[i] - (n + 1) / 2.0;
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    free(x);
    return n > 1 && sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

/* recall of the exact top among the checks, and the control's misses. */
static void summarise(pb_atp_verification *v) {
    ranked_site *order = malloc(sizeof *order * (size_t)(v->n_checks + 1));
    int hits = 0;
    double floor = INFINITY;
    for (int i = 0; order && i < v->n_checks; i++)
        order[i] = (ranked_site){fabs(v->checks[i].exact), i};
    if (order)
        qsort(order, (size_t)v->n_checks, sizeof *order, by_key_descending);
    for (int i = 0; order && i < v->top; i++)
        hits += !v->checks[order[i].site].control;
    v->recall = order && v->top > 0 ? (double)hits / v->top : NAN;
    for (int i = 0; i < v->top; i++)
        floor = fmin(floor, fabs(v->checks[i].exact));
    v->worst_miss = -1;
    v->misses = 0;
    for (int i = v->top; i < v->n_checks; i++) {
        double e = fabs(v->checks[i].exact);
        v->misses += e > floor;
        if (!isnan(e) && (v->worst_miss < 0 || e > fabs(v->checks[v->worst_miss].exact)))
            v->worst_miss = i;
    }
    v->spearman = spearman(v);
    free(order);
}

pb_status pb_atp_verify(pb_sweep *s) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    if (spec->method != PB_METHOD_ATP || spec->verify_top <= 0)
        return PB_OK;
    pb_atp_verification *v = calloc(1, sizeof *v);
    if (!v)
        return pb_fail(PB_ERR_OOM, "verify: out of memory");
    *v = (pb_atp_verification){.top = spec->verify_top, .n_control = spec->verify_control, .seed = spec->verify_seed};
    pb_status status = choose_checks(s, v);
    if (status == PB_OK)
        status = run_exact(s, v);
    if (status != PB_OK) {
        pb_atp_verification_free(v);
        free(v);
        return pb_fail_context(status, "verifying the estimate");
    }
    summarise(v);
    pb_sweep_set_verification(s, v);
    return PB_OK;
}

pb_status pb_atp_verify_summary(pb_sweep *s, char *summary, size_t size) {
    if (size)
        summary[0] = 0;
    if (!pb_sweep_verification(s))
        PB_TRY(pb_atp_verify(s));
    const pb_atp_verification *v = pb_sweep_verification(s);
    if (!v || !size)
        return PB_OK;
    int n = snprintf(summary, size,
                     "verify: the exact engine on the top %d sites by |estimate| and %d control sites: recall of "
                     "the exact top %d %.2f, Spearman %.3f, %d control sites above the top's smallest |exact|",
                     v->top, v->n_control, v->top, v->recall, v->spearman, v->misses);
    if (v->worst_miss >= 0 && n > 0 && (size_t)n < size) {
        pb_site_result r;
        const pb_atp_check *c = &v->checks[v->worst_miss];
        char head[32] = "";
        if (pb_sweep_get_site(s, c->site, &r) == PB_OK) {
            int used = r.head >= 0 ? snprintf(head, sizeof head, " head %d", r.head) : 0;
            if (r.position != INT32_MIN && used >= 0 && (size_t)used < sizeof head)
                snprintf(head + used, sizeof head - (size_t)used, " position %d", r.position);
            snprintf(summary + n, size - (size_t)n, " (largest: %s layer %d%s, exact %.3f, estimate %.3f)",
                     pb_component_name(r.component), r.layer, head, c->exact, c->estimate);
        }
    }
    return PB_OK;
}
