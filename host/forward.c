/* The forward driver: runs the layers through the backend ops, captures
 * hook points on request, and decodes greedily with a KV cache. It knows
 * nothing of which backend executes the ops. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "capture.h"
#include "internal.h"
#include "model.h"

/* Activations for up to max_T new tokens and a KV cache of `capacity`
 * positions, carved from one backend allocation. */
typedef struct run_state {
    int max_T;
    int capacity;
    void *arena;
    float *x;        /* (max_T, d_model) residual stream */
    float *xn;       /* (max_T, d_model) normalised input of a sublayer */
    float *q;        /* (max_T, n_heads * head_dim) */
    float *z;        /* (max_T, n_heads * head_dim) */
    float *sub_out;  /* (max_T, d_model) attention or MLP output */
    float *gate;     /* (max_T, d_mlp) */
    float *up;       /* (max_T, d_mlp) */
    float *logits;   /* (max_T, vocab_size) */
    int32_t *ids;    /* (max_T) */
    int32_t *pos;    /* (max_T) */
    float *k_cache;  /* (n_layers, capacity, n_kv_heads * head_dim), keys after RoPE */
    float *v_cache;  /* (n_layers, capacity, n_kv_heads * head_dim) */
} run_state;

static void state_free(pb_model *m, run_state *s) {
    if (s->arena)
        m->backend->ops->free(m->backend, s->arena);
    memset(s, 0, sizeof *s);
}

static pb_status state_alloc(pb_model *m, run_state *s, int max_T, int capacity, int logit_rows) {
    const pb_model_config *c = &m->cfg;
    memset(s, 0, sizeof *s);
    size_t d = (size_t)c->d_model, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t T = (size_t)max_T;
    /* Each piece rounded to 16 floats keeps 64-byte alignment. */
    size_t sizes[] = {T * d, T * d, T * qd, T * qd, T * d, T * (size_t)c->d_mlp, T * (size_t)c->d_mlp,
                      (size_t)logit_rows * (size_t)c->vocab_size, T, T,
                      (size_t)c->n_layers * (size_t)capacity * kvd, (size_t)c->n_layers * (size_t)capacity * kvd};
    void **slots[] = {(void **)&s->x, (void **)&s->xn, (void **)&s->q, (void **)&s->z, (void **)&s->sub_out,
                      (void **)&s->gate, (void **)&s->up, (void **)&s->logits, (void **)&s->ids, (void **)&s->pos,
                      (void **)&s->k_cache, (void **)&s->v_cache};
    size_t n = sizeof sizes / sizeof sizes[0], total = 0;
    for (size_t i = 0; i < n; i++)
        total += (sizes[i] + 15) / 16 * 16;
    pb_status status = m->backend->ops->alloc(m->backend, &s->arena, total * sizeof(float));
    if (status != PB_OK)
        return pb_fail_context(status, "activations for %d tokens (%.1f MiB)", max_T,
                               (double)total * sizeof(float) / (1 << 20));
    float *cursor = s->arena;
    for (size_t i = 0; i < n; i++) {
        *slots[i] = cursor;
        cursor += (sizes[i] + 15) / 16 * 16;
    }
    s->max_T = max_T;
    s->capacity = capacity;
    return PB_OK;
}

/* Copies rows [0, T) of a device tensor into a capture entry, if wanted. */
static pb_status capture_store(pb_model *m, pb_capture *cap, pb_hook_kind kind, int layer, const float *src,
                               int T) {
    pb_capture_entry *e = pb_capture_find(cap, kind, layer);
    if (!e)
        return PB_OK;
    size_t row = (size_t)e->row_shape[0] * (size_t)(e->n_dims == 3 ? e->row_shape[1] : 1);
    return m->backend->ops->download(m->backend, e->data, src, sizeof(float) * row * (size_t)T);
}

/* Runs T new tokens at positions pos0 .. pos0+T-1 (earlier positions'
 * keys and values are already in the cache). Writes logits of every new
 * position, or of the last one only, to logits_host when it is not NULL. */
static pb_status run_tokens(pb_model *m, run_state *s, const int32_t *ids, int T, int pos0, pb_capture *cap,
                            float *logits_host, int last_only) {
    const pb_model_config *c = &m->cfg;
    const pb_backend_ops *ops = m->backend->ops;
    pb_backend *b = m->backend;
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    size_t Td = (size_t)T * (size_t)d;

    int32_t *positions = malloc(sizeof(int32_t) * (size_t)T);
    if (!positions)
        return pb_fail(PB_ERR_OOM, "out of memory for %d positions", T);
    for (int t = 0; t < T; t++)
        positions[t] = pos0 + t;
    pb_status st = ops->upload(b, s->pos, positions, sizeof(int32_t) * (size_t)T);
    free(positions);
    PB_TRY(st);
    PB_TRY(ops->upload(b, s->ids, ids, sizeof(int32_t) * (size_t)T));

    PB_TRY(ops->embed(b, s->x, m->token_embd, s->ids, T, d));
    PB_TRY(capture_store(m, cap, PB_HOOK_EMBED, -1, s->x, T));
    for (int l = 0; l < c->n_layers; l++) {
        const pb_layer_weights *L = &m->layers[l];
        float *k_new = s->k_cache + ((size_t)l * s->capacity + pos0) * kvd;
        float *v_new = s->v_cache + ((size_t)l * s->capacity + pos0) * kvd;
        PB_TRY(capture_store(m, cap, PB_HOOK_RESID_PRE, l, s->x, T));
        /* attention */
        PB_TRY(ops->rmsnorm(b, s->xn, s->x, L->attn_norm, T, d, c->rms_eps));
        PB_TRY(ops->matmul(b, s->q, s->xn, L->wq, L->bq, T, qd, d));
        PB_TRY(ops->matmul(b, k_new, s->xn, L->wk, L->bk, T, kvd, d));
        PB_TRY(ops->matmul(b, v_new, s->xn, L->wv, L->bv, T, kvd, d));
        PB_TRY(capture_store(m, cap, PB_HOOK_Q, l, s->q, T));
        PB_TRY(capture_store(m, cap, PB_HOOK_K, l, k_new, T));
        PB_TRY(capture_store(m, cap, PB_HOOK_V, l, v_new, T));
        PB_TRY(ops->rope(b, s->q, s->pos, m->inv_freq, T, c->n_heads, c->head_dim));
        PB_TRY(ops->rope(b, k_new, s->pos, m->inv_freq, T, c->n_kv_heads, c->head_dim));
        PB_TRY(ops->attention(b, s->z, s->q, s->k_cache + (size_t)l * s->capacity * kvd,
                              s->v_cache + (size_t)l * s->capacity * kvd, T, pos0 + T, pos0, c->n_heads,
                              c->n_kv_heads, c->head_dim));
        PB_TRY(capture_store(m, cap, PB_HOOK_Z, l, s->z, T));
        PB_TRY(ops->matmul(b, s->sub_out, s->z, L->wo, NULL, T, d, qd));
        PB_TRY(capture_store(m, cap, PB_HOOK_ATTN_OUT, l, s->sub_out, T));
        PB_TRY(ops->add(b, s->x, s->x, s->sub_out, Td));
        PB_TRY(capture_store(m, cap, PB_HOOK_RESID_MID, l, s->x, T));
        /* MLP */
        PB_TRY(ops->rmsnorm(b, s->xn, s->x, L->mlp_norm, T, d, c->rms_eps));
        PB_TRY(ops->matmul(b, s->gate, s->xn, L->w_gate, NULL, T, c->d_mlp, d));
        PB_TRY(ops->matmul(b, s->up, s->xn, L->w_up, NULL, T, c->d_mlp, d));
        PB_TRY(ops->swiglu(b, s->gate, s->gate, s->up, (size_t)T * (size_t)c->d_mlp));
        PB_TRY(ops->matmul(b, s->sub_out, s->gate, L->w_down, NULL, T, d, c->d_mlp));
        PB_TRY(capture_store(m, cap, PB_HOOK_MLP_OUT, l, s->sub_out, T));
        PB_TRY(ops->add(b, s->x, s->x, s->sub_out, Td));
        PB_TRY(capture_store(m, cap, PB_HOOK_RESID_POST, l, s->x, T));
    }
    if (pb_capture_find(cap, PB_HOOK_LN_FINAL, -1)) {
        PB_TRY(ops->rmsnorm(b, s->xn, s->x, NULL, T, d, c->rms_eps));
        PB_TRY(capture_store(m, cap, PB_HOOK_LN_FINAL, -1, s->xn, T));
    }
    if (!logits_host)
        return ops->synchronize(b);
    int first = last_only ? T - 1 : 0, rows = T - first;
    PB_TRY(ops->rmsnorm(b, s->xn, s->x + (size_t)first * d, m->final_norm, rows, d, c->rms_eps));
    PB_TRY(ops->matmul(b, s->logits, s->xn, m->output, NULL, rows, c->vocab_size, d));
    PB_TRY(ops->download(b, logits_host, s->logits, sizeof(float) * (size_t)rows * (size_t)c->vocab_size));
    return ops->synchronize(b);
}

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

pb_status pb_forward(pb_model *m, const int32_t *ids, int T, float *logits, pb_capture *cap) {
    if (!m)
        return pb_fail(PB_ERR_ARG, "pb_forward: model is NULL");
    PB_TRY(check_ids(m, ids, T, m->cfg.context_length));
    if (cap) {
        if (cap->cfg.n_layers != m->cfg.n_layers || cap->cfg.d_model != m->cfg.d_model)
            return pb_fail(PB_ERR_ARG, "pb_forward: the capture set was made for another model");
        PB_TRY(pb_capture_prepare(cap, T));
    }
    run_state s;
    PB_TRY(state_alloc(m, &s, T, T, logits ? T : 0));
    pb_status status = run_tokens(m, &s, ids, T, 0, cap, logits, 0);
    state_free(m, &s);
    if (status == PB_OK && logits)
        status = check_finite(logits, (size_t)T * (size_t)m->cfg.vocab_size, "forward");
    return status;
}

static int argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

pb_status pb_generate(pb_model *m, const int32_t *ids, int T, int max_new, int32_t *out_ids, int *n_out) {
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
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.vocab_size);
    if (!logits)
        return pb_fail(PB_ERR_OOM, "out of memory for logits");
    run_state s;
    pb_status status = state_alloc(m, &s, T, T + max_new, 1);
    /* Prefill once, then one token per step against the growing cache. */
    if (status == PB_OK)
        status = run_tokens(m, &s, ids, T, 0, NULL, logits, 1);
    int pos = T;
    while (status == PB_OK) {
        status = check_finite(logits, (size_t)m->cfg.vocab_size, "generate");
        if (status != PB_OK)
            break;
        int32_t next = argmax(logits, m->cfg.vocab_size);
        out_ids[(*n_out)++] = next;
        if (next == m->cfg.eos_id || *n_out == max_new)
            break;
        status = run_tokens(m, &s, &next, 1, pos++, NULL, logits, 1);
    }
    state_free(m, &s);
    free(logits);
    return status;
}
