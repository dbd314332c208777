/* pb_logit_lens (patchbay.h): the final norm and the unembedding applied to
 * the residual stream entering every layer and to the last layer's output,
 * read at the hook points of one plain forward pass. */
#include <stdlib.h>
#include <string.h>

#include "model/forward.h"
#include "model/model.h"
#include "util/internal.h"

typedef struct lens_run {
    pb_model *model;
    const int *positions; /* host (n_positions), resolved to 0 .. T-1 */
    int n_positions;
    float *rows;   /* device (n_positions, d_model): the residual at the positions */
    float *normed; /* device (n_positions, d_model) */
    float *logits; /* device (n_positions, vocab) */
    float *out;    /* host (n_layers + 1, n_positions, vocab) */
} lens_run;

/* The residual entering layer L (L = n_layers: after the last layer) is
 * seen at hook_resid_pre of L; the hook only reads it. */
static pb_status lens_hook(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    (void)job;
    (void)n_rows;
    (void)p0; /* a plain forward: one job, rows 0 .. T-1 */
    if (hook != PB_HOOK_RESID_PRE)
        return PB_OK;
    lens_run *r = user;
    pb_model *m = r->model;
    pb_backend *b = m->backend;
    const pb_model_config *c = &m->cfg;
    size_t d = (size_t)c->d_model, vocab = (size_t)c->vocab_size, n = (size_t)r->n_positions;
    for (size_t i = 0; i < n; i++)
        PB_TRY(b->ops->copy(b, r->rows + i * d, data + (size_t)r->positions[i] * d, sizeof(float) * d));
    PB_TRY(pb_model_norm(m, r->normed, r->rows, m->final_norm, m->final_norm_b, r->n_positions, c->d_model));
    PB_TRY(b->ops->matmul(b, r->logits, r->normed, m->output.data, m->output.dtype, NULL, r->n_positions, c->vocab_size,
                          c->d_model));
    if (c->final_softcap > 0.0f)
        PB_TRY(b->ops->softcap(b, r->logits, n * vocab, c->final_softcap));
    return b->ops->download(b, r->out + (size_t)layer * n * vocab, r->logits, sizeof(float) * n * vocab);
}

/* positions resolved against T into a malloc'd array (NULL: every one). */
static pb_status resolve_positions(const int *positions, int n_positions, int T, int **out, int *n_out) {
    int n = positions ? n_positions : T;
    if (n <= 0)
        return pb_fail(PB_ERR_ARG, "pb_logit_lens: need at least one position (got %d)", n);
    int *p = malloc(sizeof(int) * (size_t)n);
    if (!p)
        return pb_fail(PB_ERR_OOM, "pb_logit_lens: out of memory");
    for (int i = 0; i < n; i++) {
        int q = positions ? positions[i] : i;
        p[i] = q < 0 ? q + T : q;
        if (p[i] < 0 || p[i] >= T) {
            free(p);
            return pb_fail(PB_ERR_ARG, "pb_logit_lens: position %d is outside a prompt of %d tokens", q, T);
        }
    }
    *out = p;
    *n_out = n;
    return PB_OK;
}

pb_status pb_logit_lens(pb_model *model, const int32_t *ids, int T, const int *positions, int n_positions, float *out) {
    if (!model || !ids || !out)
        return pb_fail(PB_ERR_ARG, "pb_logit_lens: model, ids and out are required");
    if (T <= 0)
        return pb_fail(PB_ERR_ARG, "pb_logit_lens: need at least one token id (got T = %d)", T);
    lens_run r = {.model = model, .out = out};
    int *resolved = NULL;
    PB_TRY(resolve_positions(positions, n_positions, T, &resolved, &r.n_positions));
    r.positions = resolved;
    pb_backend *b = model->backend;
    const pb_model_config *c = &model->cfg;
    size_t n = (size_t)r.n_positions;
    pb_status st = b->ops->alloc(b, (void **)&r.rows, sizeof(float) * n * (size_t)c->d_model);
    if (st == PB_OK)
        st = b->ops->alloc(b, (void **)&r.normed, sizeof(float) * n * (size_t)c->d_model);
    if (st == PB_OK)
        st = b->ops->alloc(b, (void **)&r.logits, sizeof(float) * n * (size_t)c->vocab_size);
    pb_forward_extras extras = {.intervene = lens_hook, .intervene_user = &r};
    if (st == PB_OK)
        st = pb_forward_ex(model, ids, T, &extras, NULL, NULL);
    if (r.rows)
        b->ops->free(b, r.rows);
    if (r.normed)
        b->ops->free(b, r.normed);
    if (r.logits)
        b->ops->free(b, r.logits);
    free(resolved);
    return st;
}
