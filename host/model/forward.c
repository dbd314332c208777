/* pb_forward and pb_generate on top of the executor: a forward is one job
 * from the embedding over all positions; greedy decoding is a prefill job
 * and then one-token jobs against a persistent KV cache. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/capture.h"
#include "model/forward.h"
#include "util/internal.h"

static pb_status check_ids(const pb_model *m, const int32_t *ids, int T, int limit) {
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

static pb_status check_finite(const float *logits, size_t n, const char *what) {
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

typedef struct forward_hooks {
    pb_model *model;
    pb_capture *capture;
    const pb_forward_extras *extras;
} forward_hooks;

static pb_status forward_hook(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    forward_hooks *h = user;
    if (h->extras && h->extras->intervene)
        PB_TRY(h->extras->intervene(h->extras->intervene_user, job, hook, layer, data, n_rows, p0));
    if (hook == PB_HOOK_RESID_PRE && layer == h->model->cfg.n_layers)
        return PB_OK; /* the final residual has no hook name of its own */
    pb_capture_entry *e = pb_capture_find(h->capture, hook, layer);
    if (!e)
        return PB_OK;
    size_t row = (size_t)e->row_shape[0] * (size_t)(e->n_dims == 3 ? e->row_shape[1] : 1);
    return h->model->backend->ops->download(h->model->backend, e->data + (size_t)p0 * row, data,
                                            sizeof(float) * row * (size_t)n_rows);
}

static int same_shapes(const pb_model_config *a, const pb_model_config *b) {
    return a->n_layers == b->n_layers && a->d_model == b->d_model && a->n_heads == b->n_heads &&
           a->n_kv_heads == b->n_kv_heads && a->head_dim == b->head_dim;
}

pb_status pb_forward_ex(pb_model *m, const int32_t *ids, int T, const pb_forward_extras *extras, float *logits,
                        pb_capture *cap) {
    if (!m)
        return pb_fail(PB_ERR_ARG, "pb_forward: model is NULL");
    PB_TRY(check_ids(m, ids, T, m->cfg.context_length));
    if (cap) {
        if (!same_shapes(&cap->cfg, &m->cfg))
            return pb_fail(PB_ERR_ARG, "pb_forward: the capture set was made for another model");
        PB_TRY(pb_capture_prepare(cap, T));
    }
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    pb_exec *exec = NULL;
    kv_cache kv = {0};
    float *device_logits = NULL;
    pb_status status = pb_exec_create(&exec, m, T, T);
    if (status == PB_OK)
        status = kv_alloc(m, &kv, T);
    if (status == PB_OK && logits)
        status = b->ops->alloc(b, (void **)&device_logits, sizeof(float) * (size_t)T * c->vocab_size);
    if (status != PB_OK)
        goto done;
    pb_exec_job job = {.T = T,
                       .p0 = 0,
                       .start_step = 0,
                       .ids = ids,
                       .k_cache = kv.k,
                       .v_cache = kv.v,
                       .kv_capacity = T,
                       .embed_delta = extras ? extras->embed_delta : NULL};
    forward_hooks hooks = {.model = m, .capture = cap, .extras = extras};
    int want_hooks = cap || (extras && extras->intervene);
    if ((status = pb_exec_run(exec, &job, 1, 2 * c->n_layers, want_hooks ? forward_hook : NULL, &hooks)) != PB_OK)
        goto done;
    float *final = pb_exec_output(exec, 0);
    pb_capture_entry *ln = pb_capture_find(cap, PB_HOOK_LN_FINAL, -1);
    if (ln) {
        /* x / rms(x) before the weight (TransformerLens's hook_normalized). */
        float *scratch = NULL;
        if ((status = b->ops->alloc(b, (void **)&scratch, sizeof(float) * (size_t)T * c->d_model)) != PB_OK)
            goto done;
        status = b->ops->rmsnorm(b, scratch, final, NULL, T, c->d_model, c->rms_eps);
        if (status == PB_OK)
            status = b->ops->download(b, ln->data, scratch, sizeof(float) * (size_t)T * c->d_model);
        b->ops->free(b, scratch);
        if (status != PB_OK)
            goto done;
    }
    if (logits) {
        if ((status = pb_exec_unembed(exec, device_logits, final, T, m->output, c->vocab_size)) != PB_OK)
            goto done;
        status = b->ops->download(b, logits, device_logits, sizeof(float) * (size_t)T * c->vocab_size);
        if (status == PB_OK)
            status = check_finite(logits, (size_t)T * c->vocab_size, "forward");
    }
done:
    if (device_logits)
        b->ops->free(b, device_logits);
    kv_free(m, &kv);
    pb_exec_free(exec);
    return status;
}

pb_status pb_forward(pb_model *m, const int32_t *ids, int T, float *logits, pb_capture *cap) {
    return pb_forward_ex(m, ids, T, NULL, logits, cap);
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

pb_status pb_generate(pb_model *m, const int32_t *ids, int T, int max_new, int32_t *out_ids, int *n_out) {
    return pb_generate_ex(m, ids, T, max_new, NULL, NULL, out_ids, n_out);
}

pb_status pb_generate_ex(pb_model *m, const int32_t *ids, int T, int max_new, pb_exec_hook_fn intervene, void *user,
                         int32_t *out_ids, int *n_out) {
    if (!m || !n_out || (max_new > 0 && !out_ids))
        return pb_fail(PB_ERR_ARG, "pb_generate: model, out_ids and n_out are required");
    *n_out = 0;
    if (max_new < 0)
        return pb_fail(PB_ERR_ARG, "pb_generate: max_new = %d must not be negative", max_new);
    PB_TRY(check_ids(m, ids, T, m->cfg.context_length));
    if ((long long)T + max_new > m->cfg.context_length)
        return pb_fail(PB_ERR_ARG, "generate: %d prompt + %d new tokens exceed the context length %d", T, max_new,
                       m->cfg.context_length);
    if (max_new == 0)
        return PB_OK;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    int capacity = T + max_new;
    int32_t *seq = malloc(sizeof(int32_t) * (size_t)capacity);
    float *logits = malloc(sizeof(float) * (size_t)c->vocab_size);
    float *device_logits = NULL;
    pb_exec *exec = NULL;
    kv_cache kv = {0};
    pb_status status = seq && logits ? PB_OK : pb_fail(PB_ERR_OOM, "generate: out of memory");
    if (status == PB_OK)
        status = pb_exec_create(&exec, m, T, capacity);
    if (status == PB_OK)
        status = kv_alloc(m, &kv, capacity);
    if (status == PB_OK)
        status = b->ops->alloc(b, (void **)&device_logits, sizeof(float) * (size_t)c->vocab_size);
    if (status != PB_OK)
        goto done;
    memcpy(seq, ids, sizeof(int32_t) * (size_t)T);
    /* Prefill once, then one token per step against the growing cache. */
    for (int len = T, p0 = 0; status == PB_OK;) {
        pb_exec_job job = {
            .T = len, .p0 = p0, .start_step = 0, .ids = seq, .k_cache = kv.k, .v_cache = kv.v, .kv_capacity = capacity};
        if ((status = pb_exec_run(exec, &job, 1, 2 * c->n_layers, intervene, user)) != PB_OK)
            break;
        const float *last = pb_exec_output(exec, 0) + (size_t)(len - p0 - 1) * c->d_model;
        if ((status = pb_exec_unembed(exec, device_logits, last, 1, m->output, c->vocab_size)) != PB_OK ||
            (status = b->ops->download(b, logits, device_logits, sizeof(float) * (size_t)c->vocab_size)) != PB_OK ||
            (status = check_finite(logits, (size_t)c->vocab_size, "generate")) != PB_OK)
            break;
        int32_t next = argmax(logits, c->vocab_size);
        out_ids[(*n_out)++] = next;
        if (next == c->eos_id || *n_out == max_new)
            break;
        seq[len] = next;
        p0 = len++;
    }
done:
    if (device_logits)
        b->ops->free(b, device_logits);
    kv_free(m, &kv);
    pb_exec_free(exec);
    free(seq);
    free(logits);
    return status;
}
