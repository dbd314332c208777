/* Batched generation (generate.h). Continuations are decoded in batches of
 * up to max_batch; a batch's prompts are prefilled together (packed jobs,
 * a token budget per run), then every step runs each live continuation's
 * newest token as a one-token job against its own KV cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/forward.h"
#include "model/generate.h"
#include "model/sample.h"
#include "util/internal.h"

/* Prefill runs pack at most this many prompt tokens (more when one prompt is longer). */
#define PB_GENERATE_PREFILL_TOKENS 2048
#define PB_GENERATE_DEFAULT_BATCH 64

typedef struct generator {
    pb_model *m;
    const pb_generate_job *job;
    const pb_generate_options *o;
    int K, max_new, batch, capacity; /* capacity: longest prompt + max_new */
    int prefill_tokens;              /* the executor's workspace: tokens one run packs */
    int64_t finished, total;         /* continuations, for the progress callback */
    size_t kv_stride;                /* floats of one cache's keys (or values): n_layers * capacity * kv_dim */
    pb_exec *exec;
    float *kv;         /* device (batch, 2, n_layers, capacity, kv_dim): keys, then values */
    float *rows;       /* device (batch, d_model): the last rows of a prefill run */
    float *dev_logits; /* device (batch, vocab) */
    float *logits;     /* host (batch, vocab) */
    int32_t *seq;      /* host (batch, capacity): each continuation's prompt and tokens so far */
    int *len;          /* (batch) tokens in seq */
    uint64_t *key;     /* (batch) each continuation's prompt key for the draws (pb_sample_prompt_key) */
    int *live;         /* (batch) slots still generating */
    pb_exec_job *jobs; /* (batch) */
    pb_sampler sampler;
} generator;

pb_status pb_generate_options_check(const pb_generate_options *o) {
    if (!o)
        return pb_fail(PB_ERR_ARG, "generate: options are required");
    if (o->max_new < 0)
        return pb_fail(PB_ERR_ARG, "generate: max_new = %d must not be negative", o->max_new);
    if (o->n_samples < 0 || o->max_batch < 0)
        return pb_fail(PB_ERR_ARG, "generate: n_samples = %d and max_batch = %d must not be negative", o->n_samples,
                       o->max_batch);
    const pb_sampling *s = o->sampling;
    if (s && (!isfinite(s->temperature) || s->temperature < 0))
        return pb_fail(PB_ERR_ARG, "generate: temperature %g must be finite and >= 0", s->temperature);
    if (s && s->top_k < 0)
        return pb_fail(PB_ERR_ARG, "generate: top_k = %d must not be negative", s->top_k);
    if (s && !(s->top_p >= 0 && s->top_p <= 1))
        return pb_fail(PB_ERR_ARG, "generate: top_p = %g must lie in [0, 1]", s->top_p);
    if (s && !(s->min_p >= 0 && s->min_p <= 1))
        return pb_fail(PB_ERR_ARG, "generate: min_p = %g must lie in [0, 1]", s->min_p);
    if (o->n_stop < 0 || (o->n_stop > 0 && !o->stop))
        return pb_fail(PB_ERR_ARG, "generate: %d stop strings but no array", o->n_stop);
    for (int i = 0; i < o->n_stop; i++)
        if (!o->stop[i] || !o->stop[i][0])
            return pb_fail(PB_ERR_ARG, "generate: stop string %d is empty", i);
    return PB_OK;
}

static pb_status check_prompts(const pb_model *m, const pb_generate_job *job, int max_new, int *longest) {
    if (job->n_prompts < 0 || (job->n_prompts > 0 && (!job->ids || !job->T)))
        return pb_fail(PB_ERR_ARG, "generate: %d prompts without ids or lengths", job->n_prompts);
    *longest = 0;
    for (int i = 0; i < job->n_prompts; i++) {
        if (pb_ids_check(m, job->ids[i], job->T[i], m->cfg.context_length) != PB_OK)
            return pb_fail_context(PB_ERR_ARG, "generate: prompt %d", i);
        if ((long long)job->T[i] + max_new > m->cfg.context_length)
            return pb_fail(PB_ERR_ARG, "generate: prompt %d: %d prompt + %d new tokens exceed the context length %d", i,
                           job->T[i], max_new, m->cfg.context_length);
        *longest = job->T[i] > *longest ? job->T[i] : *longest;
    }
    return PB_OK;
}

static void generator_free(generator *g) {
    pb_backend *b = g->m->backend;
    if (g->kv)
        b->ops->free(b, g->kv);
    if (g->rows)
        b->ops->free(b, g->rows);
    if (g->dev_logits)
        b->ops->free(b, g->dev_logits);
    pb_exec_free(g->exec);
    free(g->logits);
    free(g->seq);
    free(g->len);
    free(g->key);
    free(g->live);
    free(g->jobs);
    pb_sampler_release(&g->sampler);
}

static pb_status generator_init(generator *g, pb_model *m, const pb_generate_job *job, int longest) {
    const pb_model_config *c = &m->cfg;
    const pb_generate_options *o = job->options;
    *g = (generator){.m = m, .job = job, .o = o, .K = o->n_samples > 0 ? o->n_samples : 1, .max_new = o->max_new};
    int total = job->n_prompts * g->K, want = o->max_batch > 0 ? o->max_batch : PB_GENERATE_DEFAULT_BATCH;
    g->batch = total < want ? total : want;
    g->capacity = longest + o->max_new;
    g->kv_stride = (size_t)c->n_layers * g->capacity * c->n_kv_heads * c->head_dim;
    int tokens = longest > PB_GENERATE_PREFILL_TOKENS ? longest : PB_GENERATE_PREFILL_TOKENS;
    g->prefill_tokens = tokens = tokens > g->batch ? tokens : g->batch;
    pb_backend *b = m->backend;
    size_t kv_bytes = sizeof(float) * 2 * g->kv_stride * (size_t)g->batch;
    pb_status st = pb_exec_create(&g->exec, m, tokens, g->capacity);
    if (st == PB_OK && (st = b->ops->alloc(b, (void **)&g->kv, kv_bytes)) != PB_OK)
        st = pb_fail_context(st, "generate: KV caches for %d continuations of %d positions (%.1f MiB)", g->batch,
                             g->capacity, kv_bytes / 1048576.0);
    if (st == PB_OK)
        st = b->ops->alloc(b, (void **)&g->rows, sizeof(float) * (size_t)g->batch * c->d_model);
    if (st == PB_OK)
        st = b->ops->alloc(b, (void **)&g->dev_logits, sizeof(float) * (size_t)g->batch * c->vocab_size);
    if (st == PB_OK)
        st = pb_sampler_init(&g->sampler, c->vocab_size);
    g->logits = malloc(sizeof(float) * (size_t)g->batch * c->vocab_size);
    g->seq = malloc(sizeof(int32_t) * (size_t)g->batch * g->capacity);
    g->len = calloc((size_t)g->batch, sizeof(int));
    g->key = calloc((size_t)g->batch, sizeof(uint64_t));
    g->live = calloc((size_t)g->batch, sizeof(int));
    g->jobs = calloc((size_t)g->batch, sizeof(pb_exec_job));
    if (st == PB_OK && (!g->logits || !g->seq || !g->len || !g->key || !g->live || !g->jobs))
        st = pb_fail(PB_ERR_OOM, "generate: out of memory for a batch of %d", g->batch);
    return st;
}

static float *slot_k(const generator *g, int slot) { return g->kv + (size_t)slot * 2 * g->kv_stride; }
static float *slot_v(const generator *g, int slot) { return slot_k(g, slot) + g->kv_stride; }

/* Whether continuation s's text now contains a stop string. */
static pb_status hits_stop(const generator *g, const int32_t *out, int n, int *hit) {
    *hit = 0;
    if (g->o->n_stop == 0)
        return PB_OK;
    char *text = NULL;
    PB_TRY(pb_model_detokenize(g->m, out, n, &text));
    for (int i = 0; i < g->o->n_stop && !*hit; i++)
        *hit = strstr(text, g->o->stop[i]) != NULL;
    free(text);
    return PB_OK;
}

/* Chooses continuation s's next token from logits (vocab); records it,
 * and whether s goes on, in slot. */
static pb_status take_token(generator *g, int slot, int s, const float *logits, int32_t *out_ids, int *n_out) {
    const pb_model_config *c = &g->m->cfg;
    if (!g->o->sampling || g->o->sampling->temperature == 0)
        PB_TRY(pb_logits_check_finite(logits, (size_t)c->vocab_size, "generate"));
    uint64_t seed = g->o->sampling ? g->o->sampling->seed : 0;
    int32_t next = 0;
    PB_TRY(pb_sampler_next(&g->sampler, logits, g->o->sampling,
                           pb_sample_uniform(seed, g->key[slot], s % g->K, n_out[s]), &next));
    int32_t *out = out_ids + (size_t)s * g->max_new;
    out[n_out[s]++] = next;
    g->seq[(size_t)slot * g->capacity + g->len[slot]++] = next;
    int stop = 0;
    PB_TRY(hits_stop(g, out, n_out[s], &stop));
    g->live[slot] = !(next == c->eos_id || n_out[s] == g->max_new || stop);
    g->finished += !g->live[slot];
    return PB_OK;
}

/* Rows [0, T) of every layer's keys and values from one slot's cache into another's. */
static pb_status copy_prefix(const generator *g, int from, int to, int T) {
    pb_backend *b = g->m->backend;
    size_t layer = (size_t)g->capacity * g->m->cfg.n_kv_heads * g->m->cfg.head_dim;
    size_t bytes = sizeof(float) * (size_t)T * g->m->cfg.n_kv_heads * g->m->cfg.head_dim;
    for (int l = 0; l < g->m->cfg.n_layers; l++) {
        PB_TRY(b->ops->copy(b, slot_k(g, to) + l * layer, slot_k(g, from) + l * layer, bytes));
        PB_TRY(b->ops->copy(b, slot_v(g, to) + l * layer, slot_v(g, from) + l * layer, bytes));
    }
    return PB_OK;
}

/* Unembeds rows (device, (n, d_model)) and brings the logits to the host. */
static pb_status logits_of(generator *g, const float *rows, int n) {
    const pb_model_config *c = &g->m->cfg;
    pb_backend *b = g->m->backend;
    PB_TRY(pb_exec_unembed(g->exec, g->dev_logits, rows, n, g->m->output.data, g->m->output.dtype, c->vocab_size));
    return b->ops->download(b, g->logits, g->dev_logits, sizeof(float) * (size_t)n * c->vocab_size);
}

/* The slot of prompt p's first continuation in the batch starting at s0
 * (a batch may begin partway through a prompt's samples). */
static int first_slot_of(const generator *g, int s0, int p) { return (p * g->K > s0 ? p * g->K : s0) - s0; }

/* Prefills prompts [p_first, p_last] of the batch whose first continuation
 * is s0 (slot 0): one job per prompt into the slot of its sample 0, then
 * its keys and values copied to its other samples' slots, and each
 * continuation's first token. */
static pb_status prefill(generator *g, int s0, int p_first, int p_last, int s_end, int32_t *out_ids, int *n_out) {
    const pb_model_config *c = &g->m->cfg;
    pb_backend *b = g->m->backend;
    int n_jobs = 0;
    for (int p = p_first; p <= p_last; p++) {
        int slot = first_slot_of(g, s0, p);
        g->jobs[n_jobs++] = (pb_exec_job){.T = g->job->T[p],
                                          .ids = g->job->ids[p],
                                          .k_cache = slot_k(g, slot),
                                          .v_cache = slot_v(g, slot),
                                          .kv_capacity = g->capacity};
    }
    PB_TRY(pb_exec_run(g->exec, g->jobs, n_jobs, 2 * c->n_layers, g->job->hook, g->job->hook_user));
    for (int j = 0; j < n_jobs; j++)
        PB_TRY(b->ops->copy(b, g->rows + (size_t)j * c->d_model,
                            pb_exec_output(g->exec, j) + (size_t)(g->jobs[j].T - 1) * c->d_model,
                            sizeof(float) * (size_t)c->d_model));
    PB_TRY(logits_of(g, g->rows, n_jobs));
    for (int p = p_first; p <= p_last; p++) {
        int first = first_slot_of(g, s0, p) + s0, T = g->job->T[p];
        uint64_t key = pb_sample_prompt_key(g->job->ids[p], T);
        for (int s = first; s < (p + 1) * g->K && s < s_end; s++) {
            int slot = s - s0;
            if (s > first)
                PB_TRY(copy_prefix(g, first - s0, slot, T));
            memcpy(g->seq + (size_t)slot * g->capacity, g->job->ids[p], sizeof(int32_t) * (size_t)T);
            g->len[slot] = T;
            g->key[slot] = key;
            PB_TRY(take_token(g, slot, s, g->logits + (size_t)(p - p_first) * c->vocab_size, out_ids, n_out));
        }
    }
    return PB_OK;
}

/* Continuations [s0, s_end): prefill in runs of at most the token budget,
 * then decode until none is live. */
static pb_status run_batch(generator *g, int s0, int s_end, int32_t *out_ids, int *n_out) {
    const pb_model_config *c = &g->m->cfg;
    int p_end = (s_end - 1) / g->K;
    for (int p = s0 / g->K; p <= p_end;) {
        int q = p, tokens = g->job->T[p];
        while (q < p_end && tokens + g->job->T[q + 1] <= g->prefill_tokens)
            tokens += g->job->T[++q];
        PB_TRY(prefill(g, s0, p, q, s_end, out_ids, n_out));
        p = q + 1;
    }
    for (;;) {
        int n = 0;
        for (int slot = 0; slot < s_end - s0; slot++)
            if (g->live[slot]) {
                int32_t *seq = g->seq + (size_t)slot * g->capacity;
                g->jobs[n++] = (pb_exec_job){.T = g->len[slot],
                                             .p0 = g->len[slot] - 1,
                                             .ids = seq,
                                             .k_cache = slot_k(g, slot),
                                             .v_cache = slot_v(g, slot),
                                             .kv_capacity = g->capacity};
            }
        if (n == 0)
            return PB_OK;
        PB_TRY(pb_exec_run(g->exec, g->jobs, n, 2 * c->n_layers, g->job->hook, g->job->hook_user));
        /* One-token jobs: their outputs are consecutive rows. */
        PB_TRY(logits_of(g, pb_exec_output(g->exec, 0), n));
        for (int slot = 0, j = 0; slot < s_end - s0; slot++)
            if (g->live[slot])
                PB_TRY(take_token(g, slot, s0 + slot, g->logits + (size_t)j++ * c->vocab_size, out_ids, n_out));
        if (g->o->progress)
            g->o->progress(g->finished, g->total, g->o->progress_user);
    }
}

pb_status pb_generate_run(pb_model *m, const pb_generate_job *job, int32_t *out_ids, int *n_out) {
    if (!m || !job)
        return pb_fail(PB_ERR_ARG, "generate: model and job are required");
    PB_TRY(pb_generate_options_check(job->options));
    const pb_generate_options *o = job->options;
    int K = o->n_samples > 0 ? o->n_samples : 1, total = job->n_prompts * K, longest = 0;
    if (total > 0 && (!n_out || (o->max_new > 0 && !out_ids)))
        return pb_fail(PB_ERR_ARG, "generate: out_ids and n_out are required");
    PB_TRY(check_prompts(m, job, o->max_new, &longest));
    if (o->n_stop > 0 && !m->tokenizer)
        return pb_fail(PB_ERR_ARG, "generate: stop strings need the model's tokenizer, and this model has none (%s)",
                       m->text_error[0] ? m->text_error : "no vocabulary");
    for (int s = 0; s < total; s++)
        n_out[s] = 0;
    if (total == 0 || o->max_new == 0)
        return PB_OK;
    generator g;
    pb_status st = generator_init(&g, m, job, longest);
    g.total = total;
    for (int s0 = 0; st == PB_OK && s0 < total; s0 += g.batch) {
        int s_end = s0 + g.batch < total ? s0 + g.batch : total;
        st = run_batch(&g, s0, s_end, out_ids, n_out);
    }
    generator_free(&g);
    return st;
}
