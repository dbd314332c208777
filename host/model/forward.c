/* pb_forward and pb_generate on top of the executor: a forward is one job
 * from the embedding over all positions; greedy decoding is a prefill job
 * and then one-token jobs against a persistent KV cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/capture.h"
#include "model/forward.h"
#include "model/generate.h"
#include "util/internal.h"

pb_status pb_ids_check(const pb_model *m, const int32_t *ids, int T, int limit) {
    if (!ids || T <= 0)
        return pb_fail(PB_ERR_ARG, "forward: need at least one token id (got T = %d)", T);
    if (T > limit)
        return pb_fail(PB_ERR_ARG, "forward: %d tokens exceed the model's context length %d", T, limit);
    for (int t = 0; t < T; t++)
        if (ids[t] < 0 || ids[t] >= m->cfg.vocab_size)
            return pb_fail(PB_ERR_ARG, "forward: token id %d at position %d is outside the vocabulary [0, %d)", ids[t],
                           t, m->cfg.vocab_size);
    return PB_OK;
}

pb_status pb_logits_check_finite(const float *logits, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(logits[i]))
            return pb_fail(PB_ERR_NUMERIC, "%s: non-finite logit %g at flat index %zu", what, (double)logits[i], i);
    return PB_OK;
}

/* Keys and values of every layer for `capacity` positions. */
typedef struct kv_cache {
    void *arena;
    float *k, *v; /* (n_layers, capacity, kv_dim) */
} kv_cache;

static pb_status kv_alloc(pb_model *m, kv_cache *kv, int capacity) {
    size_t n = (size_t)m->cfg.n_layers * capacity * m->cfg.n_kv_heads * m->cfg.head_dim;
    PB_TRY(m->backend->ops->alloc(m->backend, &kv->arena, 2 * n * sizeof(float)));
    kv->k = kv->arena;
    kv->v = kv->k + n;
    return PB_OK;
}

static void kv_free(pb_model *m, kv_cache *kv) { m->backend->ops->free(m->backend, kv->arena); }

/* Attention patterns (attn.hook_attn_scores, attn.hook_pattern) are no
 * activation the executor holds: they are recomputed on the host from the
 * layer's queries after q/k norm and RoPE (hook_rot_q) and its keys after
 * RoPE (read from the KV cache once the layer's attention ran, at hook_z),
 * so every backend gives them the same way. */
typedef struct pattern_work {
    int T;
    float *q, *k; /* host (T, n_heads * head_dim), (T, kv_dim), after RoPE */
    double *row;  /* host (T): one query's scores */
} pattern_work;

static pb_status pattern_work_init(pb_model *m, pattern_work *w, int T) {
    const pb_model_config *c = &m->cfg;
    w->T = T;
    w->q = malloc(sizeof(float) * (size_t)T * c->n_heads * c->head_dim);
    w->k = malloc(sizeof(float) * (size_t)T * c->n_kv_heads * c->head_dim);
    w->row = malloc(sizeof(double) * (size_t)T);
    if (!w->q || !w->k || !w->row)
        return pb_fail(PB_ERR_OOM, "out of memory for attention patterns of %d tokens", T);
    return PB_OK;
}

static void pattern_work_free(pb_model *m, pattern_work *w) {
    free(w->q);
    free(w->k);
    free(w->row);
}

/* scores (n_heads, T, T) = q.k * scale, soft-capped, with -inf where the
 * query does not see the key (above the diagonal, outside a sliding
 * window): TransformerLens's hook_attn_scores; pattern its row softmax
 * (hook_pattern); either may be NULL. */
static void attention_patterns(const pb_model_config *c, int layer, const pattern_work *w, float *scores,
                               float *pattern) {
    int T = w->T, hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    int qd = c->n_heads * hd, kvd = c->n_kv_heads * hd;
    pb_attention_params a = pb_model_attention_params(c, layer);
    double *row = w->row;
    for (int h = 0; h < c->n_heads; h++)
        for (int i = 0; i < T; i++) {
            const float *q = w->q + (size_t)i * qd + (size_t)h * hd;
            int first = pb_attention_first_key(&a, i);
            double max = -INFINITY, sum = 0.0;
            for (int j = first; j <= i; j++) {
                const float *k = w->k + (size_t)j * kvd + (size_t)(h / group) * hd;
                double dot = 0.0;
                for (int d = 0; d < hd; d++)
                    dot += (double)q[d] * (double)k[d];
                row[j] = dot * a.scale;
                if (a.softcap > 0.0f)
                    row[j] = a.softcap * tanh(row[j] / a.softcap);
                max = row[j] > max ? row[j] : max;
            }
            for (int j = first; j <= i; j++)
                sum += exp(row[j] - max);
            size_t at = ((size_t)h * T + (size_t)i) * T;
            for (int j = 0; j < T; j++) {
                int seen = j >= first && j <= i;
                if (scores)
                    scores[at + j] = seen ? (float)row[j] : -INFINITY;
                if (pattern)
                    pattern[at + j] = seen ? (float)(exp(row[j] - max) / sum) : 0.0f;
            }
        }
}

typedef struct forward_hooks {
    pb_model *model;
    pb_capture *capture;
    const pb_forward_extras *extras;
    const float *k_cache; /* device (n_layers, T, kv_dim) */
    pattern_work patterns;
} forward_hooks;

/* At hook_rot_q: the queries; at hook_z: the keys and the patterns. */
static pb_status pattern_hook(forward_hooks *h, pb_hook_kind hook, int layer, const float *data) {
    pb_capture_entry *scores = pb_capture_find(h->capture, PB_HOOK_ATTN_SCORES, layer);
    pb_capture_entry *pattern = pb_capture_find(h->capture, PB_HOOK_PATTERN, layer);
    if (!scores && !pattern)
        return PB_OK;
    pb_model *m = h->model;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    pattern_work *w = &h->patterns;
    size_t T = (size_t)w->T, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    if (hook == PB_HOOK_ROT_Q)
        return b->ops->download(b, w->q, data, sizeof(float) * T * qd);
    PB_TRY(b->ops->download(b, w->k, h->k_cache + (size_t)layer * T * kvd, sizeof(float) * T * kvd));
    attention_patterns(c, layer, w, scores ? scores->data : NULL, pattern ? pattern->data : NULL);
    return PB_OK;
}

static pb_status forward_hook(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    forward_hooks *h = user;
    if (h->extras && h->extras->intervene)
        PB_TRY(h->extras->intervene(h->extras->intervene_user, job, hook, layer, data, n_rows, p0));
    if (hook == PB_HOOK_RESID_PRE && layer == h->model->cfg.n_layers)
        return PB_OK; /* the final residual has no hook name of its own */
    if (h->patterns.q && (hook == PB_HOOK_ROT_Q || hook == PB_HOOK_Z))
        PB_TRY(pattern_hook(h, hook, layer, data));
    pb_capture_entry *e = pb_capture_find(h->capture, hook, layer);
    if (!e)
        return PB_OK;
    size_t row = (size_t)e->row_shape[0] * (size_t)(e->n_dims == 3 ? e->row_shape[1] : 1);
    return h->model->backend->ops->download(h->model->backend, e->data + (size_t)p0 * row, data,
                                            sizeof(float) * row * (size_t)n_rows);
}

/* Whether the capture holds an attention pattern or scores. */
static int wants_patterns(const pb_capture *cap) {
    for (int i = 0; cap && i < cap->count; i++)
        if (pb_hook_is_pattern(cap->entries[i].kind))
            return 1;
    return 0;
}

/* The hooks of every prompt of a run, by job index. */
static pb_status batch_hook(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    return forward_hook((forward_hooks *)user + job, job, hook, layer, data, n_rows, p0);
}

/* Prompt p's state: its checks, KV cache and hooks. */
static pb_status prompt_open(pb_model *m, const pb_forward_prompt *p, const pb_forward_extras *extras, forward_hooks *h,
                             kv_cache *kv) {
    PB_TRY(pb_ids_check(m, p->ids, p->T, m->cfg.context_length));
    if (p->capture) {
        if (!pb_capture_fits(p->capture, &m->cfg))
            return pb_fail(PB_ERR_ARG, "pb_forward: the capture set was made for another model");
        PB_TRY(pb_capture_prepare(p->capture, p->T));
    }
    PB_TRY(kv_alloc(m, kv, p->T));
    *h = (forward_hooks){.model = m, .capture = p->capture, .extras = extras, .k_cache = kv->k};
    return wants_patterns(p->capture) ? pattern_work_init(m, &h->patterns, p->T) : PB_OK;
}

/* After the run: prompt p's final normalised residual (where captured)
 * and logits (where asked for, from position logits_from on, through the
 * (T, vocab) scratch). */
static pb_status prompt_finish(pb_model *m, pb_exec *exec, int j, const pb_forward_prompt *p, float *device_logits) {
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    int T = p->T;
    float *final = pb_exec_output(exec, j);
    pb_capture_entry *ln = pb_capture_find(p->capture, PB_HOOK_LN_FINAL, -1);
    if (ln) {
        /* x / rms(x), or (x - mean) / std for LayerNorm, before the weight
         * and bias (TransformerLens's hook_normalized). */
        float *scratch = NULL;
        PB_TRY(b->ops->alloc(b, (void **)&scratch, sizeof(float) * (size_t)T * c->d_model));
        pb_status status = pb_model_norm(m, scratch, final, NULL, NULL, T, c->d_model);
        if (status == PB_OK)
            status = b->ops->download(b, ln->data, scratch, sizeof(float) * (size_t)T * c->d_model);
        b->ops->free(b, scratch);
        PB_TRY(status);
    }
    if (!p->logits)
        return PB_OK;
    int from = p->logits_from, rows = T - from;
    size_t n = (size_t)rows * c->vocab_size;
    PB_TRY(pb_exec_unembed(exec, device_logits, final + (size_t)from * c->d_model, rows, m->output.data,
                           m->output.dtype, c->vocab_size));
    PB_TRY(b->ops->download(b, p->logits, device_logits, sizeof(float) * n));
    return pb_logits_check_finite(p->logits, n, "forward");
}

/* The prompts' forwards as one run of the executor; extras' intervention
 * (if any) at every prompt's hook points. */
static pb_status forward_prompts(pb_model *m, const pb_forward_prompt *prompts, int n,
                                 const pb_forward_extras *extras) {
    if (!m || !prompts || n < 1)
        return pb_fail(PB_ERR_ARG, "pb_forward: model and at least one prompt are required");
    pb_exec_job *jobs = calloc((size_t)n, sizeof *jobs);
    forward_hooks *hooks = calloc((size_t)n, sizeof *hooks);
    kv_cache *kv = calloc((size_t)n, sizeof *kv);
    pb_exec *exec = NULL;
    float *device_logits = NULL;
    int tokens = 0, max_T = 0, logit_rows = 0, want_hooks = extras && extras->intervene;
    pb_status status = jobs && hooks && kv ? PB_OK : pb_fail(PB_ERR_OOM, "forward: out of memory for %d prompts", n);
    for (int j = 0; status == PB_OK && j < n; j++) {
        const pb_forward_prompt *p = &prompts[j];
        status = prompt_open(m, p, extras, &hooks[j], &kv[j]);
        if (status == PB_OK && p->logits && (p->logits_from < 0 || p->logits_from >= p->T))
            status = pb_fail(PB_ERR_ARG, "forward: logits from position %d of a %d-token prompt", p->logits_from, p->T);
        jobs[j] = (pb_exec_job){.T = p->T,
                                .ids = p->ids,
                                .k_cache = kv[j].k,
                                .v_cache = kv[j].v,
                                .kv_capacity = p->T,
                                .embed_delta = p->embed_delta};
        tokens += p->T;
        max_T = p->T > max_T ? p->T : max_T;
        if (p->logits && p->T - p->logits_from > logit_rows)
            logit_rows = p->T - p->logits_from;
        want_hooks |= p->capture != NULL;
    }
    if (status == PB_OK)
        status = pb_exec_create(&exec, m, tokens, max_T);
    if (status == PB_OK && logit_rows)
        status = m->backend->ops->alloc(m->backend, (void **)&device_logits,
                                        sizeof(float) * (size_t)logit_rows * m->cfg.vocab_size);
    if (status == PB_OK)
        status = pb_exec_run(exec, jobs, n, 2 * m->cfg.n_layers, want_hooks ? batch_hook : NULL, hooks);
    for (int j = 0; status == PB_OK && j < n; j++)
        status = prompt_finish(m, exec, j, &prompts[j], device_logits);
    for (int j = 0; hooks && kv && j < n; j++) {
        pattern_work_free(m, &hooks[j].patterns);
        if (kv[j].arena)
            kv_free(m, &kv[j]);
    }
    if (device_logits)
        m->backend->ops->free(m->backend, device_logits);
    pb_exec_free(exec);
    free(jobs);
    free(hooks);
    free(kv);
    return status;
}

pb_status pb_forward_batch(pb_model *m, const pb_forward_prompt *prompts, int n) {
    return forward_prompts(m, prompts, n, NULL);
}

pb_status pb_forward_ex(pb_model *m, const int32_t *ids, int T, const pb_forward_extras *extras, float *logits,
                        pb_capture *cap) {
    pb_forward_prompt p = {
        .ids = ids, .T = T, .embed_delta = extras ? extras->embed_delta : NULL, .logits = logits, .capture = cap};
    return forward_prompts(m, &p, 1, extras);
}

pb_status pb_forward(pb_model *m, const int32_t *ids, int T, float *logits, pb_capture *cap) {
    return pb_forward_ex(m, ids, T, NULL, logits, cap);
}

pb_status pb_generate(pb_model *m, const int32_t *ids, int T, int max_new, int32_t *out_ids, int *n_out) {
    if (!m || !n_out || (max_new > 0 && !out_ids))
        return pb_fail(PB_ERR_ARG, "pb_generate: model, out_ids and n_out are required");
    *n_out = 0;
    pb_generate_options o = {.max_new = max_new};
    pb_generate_job job = {.ids = &ids, .T = &T, .n_prompts = 1, .options = &o};
    return pb_generate_run(m, &job, out_ids, n_out);
}
