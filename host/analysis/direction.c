/* Difference-in-means refusal direction (Arditi et al. 2024; see
 * direction.h). Everything runs on the executor in packed batches: the
 * chat-template prefix shared by all prompts is run once (per
 * intervention) and every prompt then resumes from its keys and values;
 * validation scores unembed only each prompt's last position. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "analysis/direction.h"
#include "model/exec.h"
#include "util/internal.h"
#include "patching/metric.h"
#include "model/model.h"
#include "formats/npy.h"
#include "util/outdir.h"

#define DEFAULT_MAX_LAYER_FRACTION 0.8
#define DEFAULT_KL_THRESHOLD 0.1
#define DEFAULT_BATCH_TOKENS 4096
#define MAX_INFERRED_POST 16

/* A flat list of prompts (pointers borrowed from the inputs). */
typedef struct prompt_list {
    int n;
    const int32_t **ids;
    int *T;
} prompt_list;

static pb_status list_append(prompt_list *l, const pb_prompt_set *s, int limit) {
    int take = limit > 0 && limit < s->n ? limit : s->n;
    for (int i = 0; i < take; i++) {
        l->ids[l->n] = s->ids[i];
        l->T[l->n] = s->T[i];
        l->n++;
    }
    return PB_OK;
}

static pb_status check_set(const pb_model *m, const pb_prompt_set *s, const char *name) {
    if (s->n <= 0 || !s->ids || !s->T)
        return pb_fail(PB_ERR_ARG, "direction: the %s prompt set is empty", name);
    for (int i = 0; i < s->n; i++) {
        if (!s->ids[i] || s->T[i] <= 0)
            return pb_fail(PB_ERR_ARG, "direction: %s prompt %d has no tokens", name, i);
        if (s->T[i] > m->cfg.context_length)
            return pb_fail(PB_ERR_ARG, "direction: %s prompt %d has %d tokens, more than the context length %d", name,
                           i, s->T[i], m->cfg.context_length);
        for (int t = 0; t < s->T[i]; t++)
            if (s->ids[i][t] < 0 || s->ids[i][t] >= m->cfg.vocab_size)
                return pb_fail(PB_ERR_ARG, "direction: %s prompt %d: token id %d at position %d is outside [0, %d)",
                               name, i, s->ids[i][t], t, m->cfg.vocab_size);
    }
    return PB_OK;
}

/* Longest common prefix of the prompts, at most min(T) - keep so every
 * prompt keeps `keep` positions of its own. */
static int common_prefix(const prompt_list *l, int keep) {
    int P = l->T[0];
    for (int i = 0; i < l->n; i++) {
        if (l->T[i] - keep < P)
            P = l->T[i] - keep;
        int k = 0;
        while (k < P && l->ids[i][k] == l->ids[0][k])
            k++;
        P = k;
    }
    return P > 0 ? P : 0;
}

/* P, or 0 when a prompt of l would rotate with other RoPE frequencies
 * than a prefix of P positions (LongRoPE picks them by length): the
 * prefix's keys must be the ones each prompt's own forward computes. */
static int rope_safe_prefix(const pb_model_config *c, const prompt_list *l, int P) {
    for (int i = 0; i < l->n; i++)
        if (pb_rope_uses_long_factors(c, l->T[i]) != pb_rope_uses_long_factors(c, P))
            return 0;
    return P;
}

static int common_suffix(const prompt_list *l) {
    int S = l->T[0];
    for (int i = 1; i < l->n; i++) {
        int k = 0;
        while (k < S && k < l->T[i] && l->ids[i][l->T[i] - 1 - k] == l->ids[0][l->T[0] - 1 - k])
            k++;
        S = k;
    }
    return S;
}

/* ---- batched runs ----------------------------------------------------------- */

typedef struct runner {
    pb_model *model;
    pb_exec *exec;
    int max_tokens, max_jobs;
    pb_exec_job *jobs; /* (max_jobs) host */
    float *prefix_kv;  /* device: k then v, each (n_layers, max(P, 1), kv_dim) */
    int prefix_capacity;
    float *last_rows;  /* device (max_jobs, d_model) */
    float *logits_dev; /* device (max_jobs, vocab) */
    int chunk_first;   /* index in the prompt list of the current chunk's first prompt */
    int job_offset;    /* jobs before the first prompt's (the shared prefix): 0 or 1 */
} runner;

static void runner_free(runner *r) {
    if (!r->model)
        return;
    pb_backend *b = r->model->backend;
    b->ops->free(b, r->prefix_kv);
    b->ops->free(b, r->last_rows);
    b->ops->free(b, r->logits_dev);
    pb_exec_free(r->exec);
    free(r->jobs);
    memset(r, 0, sizeof *r);
}

static pb_status runner_create(runner *r, pb_model *m, int max_tokens, int max_T, int max_prefix) {
    memset(r, 0, sizeof *r);
    r->model = m;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    if (max_tokens < max_T)
        max_tokens = max_T;
    r->max_tokens = max_tokens;
    r->max_jobs = max_tokens + 1; /* the prefix, and prompts of at least one new token each */
    r->prefix_capacity = max_prefix > 0 ? max_prefix : 1;
    size_t kv = (size_t)c->n_layers * r->prefix_capacity * c->n_kv_heads * c->head_dim;
    r->jobs = calloc((size_t)r->max_jobs, sizeof *r->jobs);
    if (!r->jobs)
        return pb_fail(PB_ERR_OOM, "direction: out of memory for jobs");
    PB_TRY(pb_exec_create(&r->exec, m, max_tokens, max_T));
    PB_TRY(b->ops->alloc(b, (void **)&r->prefix_kv, 2 * kv * sizeof(float)));
    PB_TRY(b->ops->alloc(b, (void **)&r->last_rows, (size_t)r->max_jobs * c->d_model * sizeof(float)));
    return PB_OK;
}

static pb_status ensure_logits(runner *r) {
    if (r->logits_dev)
        return PB_OK;
    pb_backend *b = r->model->backend;
    return b->ops->alloc(b, (void **)&r->logits_dev, (size_t)r->max_jobs * r->model->cfg.vocab_size * sizeof(float));
}

/* Runs every prompt of l: the shared prefix (P tokens of l->ids[0]) once,
 * then the prompts in packed chunks from position P, up to stop_step. The
 * prefix is job 0 of the first chunk (persistent mode, writing
 * r->prefix_kv) and the prompts read its keys in prefix mode: the executor
 * writes each persistent job's keys of a layer before any job's attention
 * of that layer runs, and orders jobs of equal start step by index, so
 * they are in place in time; later chunks read the kept buffer. hook sees
 * every job; r->job_offset says how many leading jobs are not prompts
 * (r->chunk_first + job - r->job_offset is the prompt's index). logits
 * (l->n, vocab) host, may be NULL: each prompt's last-position logits
 * (needs stop_step = final). */
static pb_status run_prompts(runner *r, const prompt_list *l, int P, int stop_step, pb_exec_hook_fn hook, void *user,
                             float *logits) {
    pb_model *m = r->model;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    size_t kv = (size_t)c->n_layers * r->prefix_capacity * c->n_kv_heads * c->head_dim;
    float *pk = r->prefix_kv, *pv = r->prefix_kv + kv;
    if (P > r->prefix_capacity)
        return pb_fail(PB_ERR_ARG, "direction: prefix of %d tokens exceeds the buffer of %d", P, r->prefix_capacity);
    if (logits)
        PB_TRY(ensure_logits(r));
    for (int first = 0; first < l->n;) {
        int offset = first == 0 && P > 0, n = 0, tokens = offset ? P : 0;
        while (first + n < l->n && offset + n < r->max_jobs && tokens + (l->T[first + n] - P) <= r->max_tokens) {
            tokens += l->T[first + n] - P;
            n++;
        }
        if (n == 0)
            return pb_fail(PB_ERR_ARG, "direction: prompt %d of %d tokens does not fit a batch of %d", first,
                           l->T[first], r->max_tokens);
        if (offset)
            r->jobs[0] = (pb_exec_job){
                .T = P, .p0 = 0, .ids = l->ids[0], .k_cache = pk, .v_cache = pv, .kv_capacity = r->prefix_capacity};
        for (int j = 0; j < n; j++)
            r->jobs[offset + j] = (pb_exec_job){.T = l->T[first + j],
                                                .p0 = P,
                                                .ids = l->ids[first + j],
                                                .k_prefix = pk,
                                                .v_prefix = pv,
                                                .kv_prefix_capacity = r->prefix_capacity};
        r->chunk_first = first;
        r->job_offset = offset;
        PB_TRY(pb_exec_run(r->exec, r->jobs, offset + n, stop_step, hook, user));
        if (logits) {
            for (int j = 0; j < n; j++)
                PB_TRY(
                    b->ops->copy(b, r->last_rows + (size_t)j * c->d_model,
                                 pb_exec_output(r->exec, offset + j) + (size_t)(l->T[first + j] - P - 1) * c->d_model,
                                 sizeof(float) * (size_t)c->d_model));
            PB_TRY(pb_exec_unembed(r->exec, r->logits_dev, r->last_rows, n, m->output.data, m->output.dtype,
                                   c->vocab_size));
            PB_TRY(b->ops->download(b, logits + (size_t)first * c->vocab_size, r->logits_dev,
                                    sizeof(float) * (size_t)n * c->vocab_size));
        }
        first += n;
    }
    return PB_OK;
}

/* ---- means ------------------------------------------------------------------ */

typedef struct means_hook {
    runner *r;
    int n_harmful; /* prompts [0, n_harmful) of the list are harmful */
    const prompt_list *l;
    int n_post;
    double *sum_harmful; /* (n_layers, n_post, d_model) */
    double *sum_harmless;
    float *scratch; /* (n_post, d_model) */
} means_hook;

static pb_status means_hook_fn(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    means_hook *h = user;
    pb_model *m = h->r->model;
    int d = m->cfg.d_model;
    if (hook != PB_HOOK_RESID_PRE || layer >= m->cfg.n_layers || job < h->r->job_offset)
        return PB_OK;
    int g = h->r->chunk_first + job - h->r->job_offset;
    int T = h->l->T[g];
    /* the last n_post rows: positions T - n_post .. T - 1 */
    PB_TRY(m->backend->ops->download(m->backend, h->scratch, data + (size_t)(T - h->n_post - p0) * d,
                                     sizeof(float) * (size_t)h->n_post * d));
    double *sum = (g < h->n_harmful ? h->sum_harmful : h->sum_harmless) + (size_t)layer * h->n_post * d;
    for (size_t i = 0; i < (size_t)h->n_post * d; i++)
        sum[i] += h->scratch[i];
    (void)n_rows;
    return PB_OK;
}

/* ---- scoring ---------------------------------------------------------------- */

static double mean_refusal(const float *logits, int n, int V, const int32_t *ids, int n_ids) {
    double s = 0;
    for (int i = 0; i < n; i++)
        s += pb_metric_refusal_score(logits + (size_t)i * V, V, ids, n_ids);
    return s / n;
}

static pb_status check_inputs(const pb_model *m, const pb_direction_inputs *in) {
    if (!m || !in)
        return pb_fail(PB_ERR_ARG, "direction: model and inputs are required");
    PB_TRY(check_set(m, &in->harmful_train, "harmful train"));
    PB_TRY(check_set(m, &in->harmless_train, "harmless train"));
    PB_TRY(check_set(m, &in->harmful_val, "harmful validation"));
    PB_TRY(check_set(m, &in->harmless_val, "harmless validation"));
    if (in->n_refusal_ids <= 0 || !in->refusal_ids)
        return pb_fail(PB_ERR_ARG, "direction: the refusal token set is empty");
    for (int i = 0; i < in->n_refusal_ids; i++)
        if (in->refusal_ids[i] < 0 || in->refusal_ids[i] >= m->cfg.vocab_size)
            return pb_fail(PB_ERR_ARG, "direction: refusal token id %d is outside [0, %d)", in->refusal_ids[i],
                           m->cfg.vocab_size);
    if (in->n_post < 0)
        return pb_fail(PB_ERR_ARG, "direction: n_post = %d must not be negative", in->n_post);
    if (in->layer_stride < 0 || in->max_train < 0 || in->max_val < 0 || in->max_batch_tokens < 0)
        return pb_fail(PB_ERR_ARG, "direction: layer_stride, max_train, max_val and max_batch_tokens must not be "
                                   "negative");
    if (in->max_layer_fraction < 0 || in->max_layer_fraction > 1 || isnan(in->max_layer_fraction))
        return pb_fail(PB_ERR_ARG, "direction: max_layer_fraction = %g outside [0, 1]", in->max_layer_fraction);
    if (in->kl_threshold < 0 || isnan(in->kl_threshold))
        return pb_fail(PB_ERR_ARG, "direction: kl_threshold = %g must not be negative", in->kl_threshold);
    return PB_OK;
}

void pb_direction_result_free(pb_direction_result *r) {
    if (!r)
        return;
    free(r->direction);
    free(r->difference);
    free(r->differences);
    free(r->candidates);
    memset(r, 0, sizeof *r);
}

typedef struct work {
    prompt_list train, val;   /* harmful prompts first, then harmless */
    prompt_list harmless_val; /* the harmless part of val */
    int nh_train, nn_train, nh_val, nn_val;
    int n_post;
    int P_train, P_val, P_harmless; /* common prefixes run once */
    double *sums;                   /* (2, n_layers, n_post, d_model) */
    float *scratch;
    float *val_logits;    /* (n_val, vocab) */
    double *ref_logprobs; /* (n_harmless_val, vocab) */
    runner r;
} work;

static void work_free(work *w) {
    free(w->train.ids);
    free(w->train.T);
    free(w->val.ids);
    free(w->val.T);
    free(w->sums);
    free(w->scratch);
    free(w->val_logits);
    free(w->ref_logprobs);
    runner_free(&w->r);
}

static int capped(int max, int n) { return max > 0 && max < n ? max : n; }

/* The train and validation lists (harmful first), the post-instruction
 * positions, the shared prefixes, and a runner sized for them. */
static pb_status prepare(pb_model *m, const pb_direction_inputs *in, work *w) {
    w->nh_train = capped(in->max_train, in->harmful_train.n);
    w->nn_train = capped(in->max_train, in->harmless_train.n);
    w->nh_val = capped(in->max_val, in->harmful_val.n);
    w->nn_val = capped(in->max_val, in->harmless_val.n);
    int n_train = w->nh_train + w->nn_train, n_val = w->nh_val + w->nn_val;
    w->train.ids = malloc(sizeof(int32_t *) * (size_t)n_train);
    w->train.T = malloc(sizeof(int) * (size_t)n_train);
    w->val.ids = malloc(sizeof(int32_t *) * (size_t)n_val);
    w->val.T = malloc(sizeof(int) * (size_t)n_val);
    if (!w->train.ids || !w->train.T || !w->val.ids || !w->val.T)
        return pb_fail(PB_ERR_OOM, "direction: out of memory");
    list_append(&w->train, &in->harmful_train, w->nh_train);
    list_append(&w->train, &in->harmless_train, w->nn_train);
    list_append(&w->val, &in->harmful_val, w->nh_val);
    list_append(&w->val, &in->harmless_val, w->nn_val);

    int n_post = in->n_post;
    if (n_post == 0) {
        n_post = common_suffix(&w->train);
        if (n_post > MAX_INFERRED_POST)
            n_post = MAX_INFERRED_POST;
        if (n_post == 0)
            return pb_fail(PB_ERR_ARG, "direction: the train prompts share no common suffix, so the post-instruction "
                                       "positions cannot be inferred; pass n_post");
    }
    w->n_post = n_post;
    int max_T = 0;
    for (int i = 0; i < w->train.n; i++) {
        if (w->train.T[i] < n_post)
            return pb_fail(PB_ERR_ARG, "direction: train prompt %d has %d tokens, fewer than n_post = %d", i,
                           w->train.T[i], n_post);
        if (w->train.T[i] > max_T)
            max_T = w->train.T[i];
    }
    for (int i = 0; i < w->val.n; i++)
        if (w->val.T[i] > max_T)
            max_T = w->val.T[i];
    w->P_train = rope_safe_prefix(&m->cfg, &w->train, common_prefix(&w->train, n_post));
    w->P_val = rope_safe_prefix(&m->cfg, &w->val, common_prefix(&w->val, 1));
    w->harmless_val = (prompt_list){.n = w->nn_val, .ids = w->val.ids + w->nh_val, .T = w->val.T + w->nh_val};
    w->P_harmless = rope_safe_prefix(&m->cfg, &w->harmless_val, common_prefix(&w->harmless_val, 1));
    /* P_harmless >= P_val: the harmless prompts are some of val's, and
     * when rope_safe_prefix zeroes P_harmless it zeroes P_val too */
    int P_max = w->P_train > w->P_harmless ? w->P_train : w->P_harmless;
    int batch = in->max_batch_tokens > 0 ? in->max_batch_tokens : DEFAULT_BATCH_TOKENS;
    return runner_create(&w->r, m, batch, max_T, P_max);
}

/* 1. Means of resid_pre at every layer and post-instruction position:
 * out->differences = harmful mean - harmless mean. */
static pb_status compute_means(const pb_model_config *c, pb_direction_result *out, work *w) {
    int d = c->d_model, L = c->n_layers, n_post = w->n_post;
    double t0 = pb_now_seconds();
    size_t table = (size_t)L * n_post * d;
    w->sums = calloc(2 * table, sizeof(double));
    w->scratch = malloc(sizeof(float) * (size_t)n_post * d);
    out->differences = malloc(sizeof(float) * table);
    if (!w->sums || !w->scratch || !out->differences)
        return pb_fail(PB_ERR_OOM, "direction: out of memory for the means");
    means_hook mh = {.r = &w->r,
                     .n_harmful = w->nh_train,
                     .l = &w->train,
                     .n_post = n_post,
                     .sum_harmful = w->sums,
                     .sum_harmless = w->sums + table,
                     .scratch = w->scratch};
    /* stop at the residual entering the last layer: nothing later is read */
    PB_TRY(run_prompts(&w->r, &w->train, w->P_train, pb_step_attention(L - 1), means_hook_fn, &mh, NULL));
    for (size_t i = 0; i < table; i++)
        out->differences[i] = (float)(w->sums[i] / w->nh_train - w->sums[table + i] / w->nn_train);
    out->seconds_means = pb_now_seconds() - t0;
    return PB_OK;
}

/* 2. Baselines on the validation prompts (harmful first, then harmless),
 * and the harmless prompts' reference log-probabilities for the KL. */
static pb_status compute_baselines(const pb_model_config *c, const pb_direction_inputs *in, pb_direction_result *out,
                                   work *w) {
    int V = c->vocab_size, nh_val = w->nh_val, nn_val = w->nn_val;
    w->val_logits = malloc(sizeof(float) * (size_t)(nh_val + nn_val) * V);
    w->ref_logprobs = malloc(sizeof(double) * (size_t)nn_val * V);
    if (!w->val_logits || !w->ref_logprobs)
        return pb_fail(PB_ERR_OOM, "direction: out of memory for validation logits");
    PB_TRY(run_prompts(&w->r, &w->val, w->P_val, 2 * c->n_layers, NULL, NULL, w->val_logits));
    out->baseline_harmful = mean_refusal(w->val_logits, nh_val, V, in->refusal_ids, in->n_refusal_ids);
    out->baseline_harmless = mean_refusal(w->val_logits + (size_t)nh_val * V, nn_val, V, in->refusal_ids,
                                          in->n_refusal_ids);
    for (int i = 0; i < nn_val; i++)
        pb_log_softmax(w->val_logits + (size_t)(nh_val + i) * V, V, w->ref_logprobs + (size_t)i * V);
    return PB_OK;
}

/* The validation prompts l (from prefix P) under one intervention, logits into w->val_logits. */
static pb_status run_intervened(pb_model *m, work *w, const pb_intervention *iv, const prompt_list *l, int P) {
    pb_intervention_hook h;
    PB_TRY(pb_intervention_hook_init(&h, m, iv, 1));
    pb_status status = run_prompts(&w->r, l, P, 2 * m->cfg.n_layers, pb_intervention_hook_fn, &h, w->val_logits);
    pb_intervention_hook_release(&h);
    return status;
}

/* Scores one candidate: the difference r (d_model) at layer cand->layer,
 * its unit direction into u. */
static pb_status score_candidate(pb_model *m, const pb_direction_inputs *in, const pb_direction_result *out, work *w,
                                 pb_direction_candidate *cand, const float *r, float *u) {
    int d = m->cfg.d_model, V = m->cfg.vocab_size, nh_val = w->nh_val, nn_val = w->nn_val;
    double norm2 = 0;
    for (int i = 0; i < d; i++)
        norm2 += (double)r[i] * r[i];
    cand->norm = sqrt(norm2);
    if (!(norm2 > 0)) {
        /* identical means: nothing to ablate or add */
        cand->ablation_score = out->baseline_harmful;
        cand->addition_score = out->baseline_harmless;
        cand->kl = 0;
        return PB_OK;
    }
    for (int i = 0; i < d; i++)
        u[i] = (float)(r[i] / cand->norm);
    /* ablation on all validation prompts (harmful score, harmless KL) */
    pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = u};
    PB_TRY(run_intervened(m, w, &ablate, &w->val, w->P_val));
    cand->ablation_score = mean_refusal(w->val_logits, nh_val, V, in->refusal_ids, in->n_refusal_ids);
    double kl = 0;
    for (int i = 0; i < nn_val; i++)
        kl += pb_metric_kl(w->ref_logprobs + (size_t)i * V, w->val_logits + (size_t)(nh_val + i) * V, V);
    cand->kl = kl / nn_val;
    /* addition of the raw difference at its layer, harmless prompts */
    pb_intervention add = {.kind = PB_INTERVENE_ADD, .layer = cand->layer, .direction = r, .scale = 1.0};
    PB_TRY(run_intervened(m, w, &add, &w->harmless_val, w->P_harmless));
    cand->addition_score = mean_refusal(w->val_logits, nn_val, V, in->refusal_ids, in->n_refusal_ids);
    return PB_OK;
}

/* 3. Candidates: layers 0, stride, ... below the fraction, every position. */
static pb_status score_candidates(pb_model *m, const pb_direction_inputs *in, pb_direction_result *out, work *w) {
    int d = m->cfg.d_model, L = m->cfg.n_layers, n_post = w->n_post;
    int stride = in->layer_stride > 0 ? in->layer_stride : 1;
    double fraction = in->max_layer_fraction > 0 ? in->max_layer_fraction : DEFAULT_MAX_LAYER_FRACTION;
    int n_layers_cand = 0;
    for (int l = 0; l < L && l < fraction * L; l += stride)
        n_layers_cand++;
    if (n_layers_cand == 0)
        return pb_fail(PB_ERR_ARG, "direction: max_layer_fraction = %g leaves no candidate layer", fraction);
    out->n_candidates = n_layers_cand * n_post;
    out->candidates = calloc((size_t)out->n_candidates, sizeof *out->candidates);
    float *u = malloc(sizeof(float) * (size_t)d);
    if (!out->candidates || !u) {
        free(u);
        return pb_fail(PB_ERR_OOM, "direction: out of memory for candidates");
    }
    pb_status status = PB_OK;
    for (int k = 0; k < out->n_candidates && status == PB_OK; k++) {
        pb_direction_candidate *cand = &out->candidates[k];
        int l = (k / n_post) * stride, q = k % n_post;
        cand->layer = l;
        cand->position = q - n_post;
        status = score_candidate(m, in, out, w, cand, out->differences + ((size_t)l * n_post + q) * d, u);
    }
    free(u);
    return status;
}

/* 4. The paper's rule: among candidates with KL below the threshold and
 * a positive addition score (layers were limited above), the lowest
 * ablation score. When none passes (a model that barely refuses never
 * reaches a positive addition score), the addition filter is dropped
 * but the KL filter kept, since a direction whose ablation wrecks the
 * harmless distribution "removes refusal" only by breaking the model;
 * only if no candidate passes even that is the lowest score overall
 * taken. */
static pb_status select_candidate(const pb_direction_inputs *in, pb_direction_result *out, int d, int n_post) {
    double kl_max = in->kl_threshold > 0 ? in->kl_threshold : DEFAULT_KL_THRESHOLD;
    int best = -1, best_kl = -1, best_any = -1;
    for (int k = 0; k < out->n_candidates; k++) {
        pb_direction_candidate *cand = &out->candidates[k];
        if (!(cand->norm > 0))
            continue;
        cand->passes = cand->kl < kl_max && cand->addition_score > 0;
        if (best_any < 0 || cand->ablation_score < out->candidates[best_any].ablation_score)
            best_any = k;
        if (cand->kl < kl_max && (best_kl < 0 || cand->ablation_score < out->candidates[best_kl].ablation_score))
            best_kl = k;
        if (cand->passes && (best < 0 || cand->ablation_score < out->candidates[best].ablation_score))
            best = k;
    }
    if (best_any < 0)
        return pb_fail(PB_ERR_ARG, "direction: the harmful and harmless means are identical at every candidate; "
                                   "the prompt sets do not differ");
    out->selected_passes = best >= 0;
    if (best < 0)
        best = best_kl >= 0 ? best_kl : best_any;
    const pb_direction_candidate *sel = &out->candidates[best];
    out->layer = sel->layer;
    out->position = sel->position;
    out->norm = sel->norm;
    out->ablation_score = sel->ablation_score;
    out->addition_score = sel->addition_score;
    out->kl = sel->kl;
    out->direction = malloc(sizeof(float) * (size_t)d);
    out->difference = malloc(sizeof(float) * (size_t)d);
    if (!out->direction || !out->difference)
        return pb_fail(PB_ERR_OOM, "direction: out of memory");
    const float *r = out->differences + ((size_t)sel->layer * n_post + (sel->position + n_post)) * d;
    memcpy(out->difference, r, sizeof(float) * (size_t)d);
    for (int i = 0; i < d; i++)
        out->direction[i] = (float)(r[i] / sel->norm);
    return PB_OK;
}

static pb_status compute(pb_model *m, const pb_direction_inputs *in, pb_direction_result *out, work *w) {
    const pb_model_config *c = &m->cfg;
    PB_TRY(prepare(m, in, w));
    out->d_model = c->d_model;
    out->n_layers = c->n_layers;
    out->n_post = w->n_post;
    PB_TRY(compute_means(c, out, w));
    out->n_harmful_train = w->nh_train; /* the counts the means used */
    out->n_harmless_train = w->nn_train;
    out->n_harmful_val = w->nh_val;
    out->n_harmless_val = w->nn_val;
    double t0 = pb_now_seconds();
    PB_TRY(compute_baselines(c, in, out, w));
    PB_TRY(score_candidates(m, in, out, w));
    out->seconds_candidates = pb_now_seconds() - t0;
    return select_candidate(in, out, c->d_model, w->n_post);
}

pb_status pb_direction_compute(pb_model *m, const pb_direction_inputs *in, pb_direction_result *out) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "direction: out is NULL");
    memset(out, 0, sizeof *out);
    PB_TRY(check_inputs(m, in));
    work w;
    memset(&w, 0, sizeof w);
    pb_status status = compute(m, in, out, &w);
    work_free(&w);
    if (status != PB_OK)
        pb_direction_result_free(out);
    return status;
}

/* ---- output ------------------------------------------------------------------ */

static json_t *real_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

/* direction.json's text (malloc'd, ending in a newline), or NULL. */
static char *direction_json(const pb_direction_result *r, const pb_direction_provenance *prov) {
    json_t *root = json_pack("{s:s, s:s, s:o, s:o, s:s, s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:o, s:b}", "schema",
                             "patchbay.direction/1", "method", "difference in means, Arditi et al. 2024", "model",
                             prov && prov->model_path ? json_string(prov->model_path) : json_null(), "prompts",
                             prov && prov->prompt_file ? json_string(prov->prompt_file) : json_null(), "direction",
                             "direction.npy", "differences", "differences.npy", "hook", "resid_pre", "layer", r->layer,
                             "position", r->position, "n_post", r->n_post, "d_model", r->d_model, "n_layers",
                             r->n_layers, "difference_norm", real_or_null(r->norm), "passes_filters",
                             r->selected_passes);
    if (!root)
        return NULL;
    json_object_set_new(root, "scores",
                        json_pack("{s:o, s:o, s:o, s:o, s:o}", "ablation_refusal_score_harmful",
                                  real_or_null(r->ablation_score), "addition_refusal_score_harmless",
                                  real_or_null(r->addition_score), "ablation_kl_harmless", real_or_null(r->kl),
                                  "baseline_refusal_score_harmful", real_or_null(r->baseline_harmful),
                                  "baseline_refusal_score_harmless", real_or_null(r->baseline_harmless)));
    json_object_set_new(root, "counts",
                        json_pack("{s:i, s:i, s:i, s:i}", "harmful_train", r->n_harmful_train, "harmless_train",
                                  r->n_harmless_train, "harmful_validation", r->n_harmful_val, "harmless_validation",
                                  r->n_harmless_val));
    json_object_set_new(
        root, "timing",
        json_pack("{s:f, s:f}", "means_seconds", r->seconds_means, "candidates_seconds", r->seconds_candidates));
    json_t *cands = json_array();
    for (int k = 0; k < r->n_candidates; k++) {
        const pb_direction_candidate *cd = &r->candidates[k];
        json_array_append_new(cands, json_pack("{s:i, s:i, s:o, s:o, s:o, s:o, s:b}", "layer", cd->layer, "position",
                                               cd->position, "norm", real_or_null(cd->norm), "ablation_score",
                                               real_or_null(cd->ablation_score), "addition_score",
                                               real_or_null(cd->addition_score), "kl", real_or_null(cd->kl), "passes",
                                               cd->passes));
    }
    json_object_set_new(root, "candidates", cands);
    char *text = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(root);
    if (!text)
        return NULL;
    size_t len = strlen(text);
    char *lined = realloc(text, len + 2);
    if (!lined) {
        free(text);
        return NULL;
    }
    memcpy(lined + len, "\n", 2);
    return lined;
}

pb_status pb_direction_write(const pb_direction_result *r, const char *dir, const pb_direction_provenance *prov) {
    if (!r || !dir || !r->direction)
        return pb_fail(PB_ERR_ARG, "direction: nothing to write");
    char *json = direction_json(r, prov);
    if (!json)
        return pb_fail(PB_ERR_OOM, "direction: out of memory for direction.json");
    /* One set: a failed write (a full disk) leaves none of the three, and
     * an earlier direction in dir stays whole until the new one is. */
    pb_file_set set;
    pb_status status = pb_file_set_begin(&set, dir);
    char path[4400];
    int64_t shape[3] = {r->d_model, 0, 0}, table_shape[3] = {r->n_layers, r->n_post, r->d_model};
    if (status == PB_OK && (status = pb_file_set_pending(&set, "differences.npy", path, sizeof path)) == PB_OK)
        status = pb_npy_write(path, r->differences, PB_NPY_F32, 3, table_shape);
    if (status == PB_OK && (status = pb_file_set_pending(&set, "direction.npy", path, sizeof path)) == PB_OK)
        status = pb_npy_write(path, r->direction, PB_NPY_F32, 1, shape);
    if (status == PB_OK && (status = pb_file_set_pending(&set, "direction.json", path, sizeof path)) == PB_OK)
        status = pb_write_file_atomic(path, json, strlen(json));
    free(json);
    if (status != PB_OK) {
        pb_file_set_discard(&set);
        return pb_fail_context(status, "direction: writing into %s (nothing of it kept)", dir);
    }
    return pb_file_set_commit(&set);
}
