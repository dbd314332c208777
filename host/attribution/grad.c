/* The activation backward pass (grad.h). One forward with a capture of
 * every per-layer hook point, then, from the metric down: the metric's
 * derivative on the logits (host, double), the final soft-cap, the
 * unembedding and the final norm at the metric's position, and per layer
 * from the last the MLP and attention sublayers in reverse (post norm,
 * projections, the activation or the attention's softmax, RoPE, q/k norms,
 * pre norm), each adding its input's gradient into the residual's.
 *
 * Every tensor the pass computes with lives in the model backend's memory
 * and goes through its ops (backend.h, the backward four among them); the
 * captures are host memory, so on a device backend each activation a step
 * reads is uploaded first and each gradient asked for is downloaded. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/grad.h"
#include "backend/backend.h"
#include "model/capture.h"
#include "model/forward.h"
#include "model/model.h"
#include "patching/metric.h"
#include "util/internal.h"

/* Device copies of the activations a step reads: one slot per kind read
 * at the same time (the two post-norm inputs are never). */
enum { SLOT_PRE, SLOT_MID, SLOT_ROT_Q, SLOT_ROT_K, SLOT_V, SLOT_Q, SLOT_K, SLOT_POST_IN, N_SLOTS };

/* Several passes can run together (GradDrop's, pb_grad_drops): S of them,
 * each with its own gradients, over the same forward's activations. A
 * per-pass buffer holds the passes' rows one after another, (S, T, width),
 * so a weight product takes all S * T rows in one call; ops that also read
 * an activation (norms, the activation function, attention, RoPE) run per
 * pass on its T rows. */
typedef struct grad_ctx {
    pb_model *m;
    const pb_model_config *c;
    pb_backend *b; /* the model's: every buffer below is its memory */
    int T;
    int S;                /* the passes running now (a prefix of the `capacity` allocated) */
    int capacity;         /* the passes the per-pass buffers hold */
    int drop;             /* GradDrop's layer, or -1 (one pass) */
    pb_capture *acts;     /* the forward's activations (the caller's, host) */
    pb_capture **grads;   /* (S) each pass's gradients asked for (host) */
    pb_capture *one;      /* a single pass's: grads = &one */
    float *slot[N_SLOTS]; /* (T, widest) activations uploaded; NULL on host memory */
    size_t slot_floats;
    float *xn;        /* (T, d_model) a sublayer's input, recomputed */
    float *pre[2];    /* (T, d_mlp) the MLP's gate and up pre-activations */
    float *dh[2];     /* (S, T, max(d_mlp, n_heads * head_dim)) gradients inside a sublayer */
    float *dsub;      /* (S, T, d_model) the sublayer output's gradient before its post norm */
    float *dxn;       /* (S, T, d_model) the sublayer input's gradient */
    float *dres[2];   /* (S, T, d_model) the residual's gradient: current, and the next one built */
    float *att[3];    /* (S, T, heads * head_dim) attention gradients: rotated q, rotated k, v */
    float *dpattern;  /* (n_heads, T, T) device backends, when a pattern is asked for */
    float *dlogits;   /* (vocab_size) the metric's gradient on its position's logits */
    int32_t *neg_pos; /* (T) -t: RoPE's inverse rotation */
} grad_ctx;

/* Where pass s's rows begin in a per-pass buffer of width floats per token. */
static size_t pass_at(const grad_ctx *g, int s, size_t width) { return (size_t)s * (size_t)g->T * width; }

/* ---- moving data ---------------------------------------------------------- */

/* *out = the forward's activation (kind, layer) in backend memory. */
static pb_status act(grad_ctx *g, pb_hook_kind kind, int layer, int slot, const float **out) {
    pb_capture_entry *e = pb_capture_find(g->acts, kind, layer);
    if (g->b->ops->host_memory) {
        *out = e->data;
        return PB_OK;
    }
    size_t n = pb_capture_entry_floats(e, g->T);
    if (n > g->slot_floats)
        return pb_fail(PB_ERR_ARG, "gradient: activation of %zu floats, more than its %zu-float slot", n,
                       g->slot_floats);
    PB_TRY(g->b->ops->upload(g->b, g->slot[slot], e->data, sizeof(float) * n));
    *out = g->slot[slot];
    return PB_OK;
}

/* Each pass's gradient at (kind, layer), where asked for: its T rows of
 * width in src (S, T, width). */
static pb_status store(grad_ctx *g, pb_hook_kind kind, int layer, const float *src, size_t width) {
    for (int s = 0; s < g->S; s++) {
        pb_capture_entry *e = pb_capture_find(g->grads[s], kind, layer);
        if (e)
            PB_TRY(
                g->b->ops->download(g->b, e->data, src + pass_at(g, s, width), sizeof(float) * (size_t)g->T * width));
    }
    return PB_OK;
}

static pb_status copy(grad_ctx *g, float *dst, const float *src, size_t n) {
    return g->b->ops->copy(g->b, dst, src, sizeof(float) * n);
}

/* dst (n, backend memory) = src (host). */
static pb_status upload(grad_ctx *g, float *dst, const float *src, size_t n) {
    return g->b->ops->upload(g->b, dst, src, sizeof(float) * n);
}

/* dst (T, d) = zero but row `row` = src (d, host); src NULL: all zero. */
static pb_status upload_row(grad_ctx *g, float *dst, int row, const float *src) {
    size_t d = (size_t)g->c->d_model;
    float *host = calloc((size_t)g->T * d, sizeof(float));
    if (!host)
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for %d tokens", g->T);
    if (src)
        memcpy(host + (size_t)row * d, src, sizeof(float) * d);
    pb_status status = upload(g, dst, host, (size_t)g->T * d);
    free(host);
    return status;
}

/* ---- the metric ----------------------------------------------------------- */

/* dl (V) = d metric / d logits (one position's, V of them); *value. */
static pb_status metric_grad(const pb_grad_metric *mt, const float *logits, int V, double *dl, double *value) {
    memset(dl, 0, sizeof(double) * (size_t)V);
    for (int i = 0; i < mt->n_positive + mt->n_negative; i++) {
        int32_t id = i < mt->n_positive ? mt->positive[i] : mt->negative[i - mt->n_positive];
        if (id < 0 || id >= V)
            return pb_fail(PB_ERR_ARG, "gradient metric: token %d outside the vocabulary of %d", id, V);
    }
    if (mt->kind == PB_METRIC_LOGIT_DIFF) {
        if (mt->n_positive < 1 || mt->n_negative < 1)
            return pb_fail(PB_ERR_ARG, "gradient metric logit_diff: needs positive and negative tokens");
        double sp = 0.0, sn = 0.0;
        for (int i = 0; i < mt->n_positive; i++) {
            dl[mt->positive[i]] += 1.0 / mt->n_positive;
            sp += logits[mt->positive[i]];
        }
        for (int i = 0; i < mt->n_negative; i++) {
            dl[mt->negative[i]] -= 1.0 / mt->n_negative;
            sn += logits[mt->negative[i]];
        }
        *value = sp / mt->n_positive - sn / mt->n_negative;
        return PB_OK;
    }
    double *lsm = malloc(sizeof(double) * (size_t)V);
    char *in = calloc((size_t)V, 1);
    if (!lsm || !in) {
        free(lsm);
        free(in);
        return pb_fail(PB_ERR_OOM, "gradient metric: out of memory for %d logits", V);
    }
    pb_log_softmax(logits, V, lsm);
    for (int i = 0; i < mt->n_positive; i++)
        in[mt->positive[i]] = 1;
    double set = -INFINITY, rest = -INFINITY; /* log-probabilities of the set and of its complement */
    for (int v = 0; v < V; v++) {
        double *side = in[v] ? &set : &rest;
        *side = *side > lsm[v] ? *side + log1p(exp(lsm[v] - *side)) : lsm[v] + log1p(exp(*side - lsm[v]));
    }
    pb_status status = PB_OK;
    if (mt->kind == PB_METRIC_LOGPROB || mt->kind == PB_METRIC_REFUSAL_SCORE) {
        /* logprob: log P(set); refusal: log P(set) - log P(rest) */
        int refusal = mt->kind == PB_METRIC_REFUSAL_SCORE;
        for (int v = 0; v < V; v++) {
            double p = exp(lsm[v]);
            dl[v] = in[v] ? exp(lsm[v] - set) - p : -p;
            if (refusal)
                dl[v] -= in[v] ? -p : exp(lsm[v] - rest) - p;
        }
        *value = refusal ? set - rest : set;
    } else if (mt->kind == PB_METRIC_KL && mt->ref_logprobs) {
        double mass = 0.0;
        for (int v = 0; v < V; v++)
            mass += exp(mt->ref_logprobs[v]);
        for (int v = 0; v < V; v++)
            dl[v] = mass * exp(lsm[v]) - exp(mt->ref_logprobs[v]);
        *value = pb_metric_kl(mt->ref_logprobs, logits, V);
    } else {
        status = pb_fail(mt->kind == PB_METRIC_KL ? PB_ERR_ARG : PB_ERR_UNSUPPORTED,
                         "gradient metric: %s is not differentiated (logit_diff, logprob, refusal_score, "
                         "kl with its reference distribution, projection)",
                         mt->kind == PB_METRIC_KL         ? "kl without ref_logprobs"
                         : mt->kind == PB_METRIC_CALLBACK ? "a callback metric (pb_metric_fn)"
                                                          : "this kind");
    }
    free(lsm);
    free(in);
    return status;
}

/* dres (T, d) = the residual's gradient after the last layer: the metric
 * through the final soft-cap, the unembedding and the final norm, at the
 * metric's position only. */
static pb_status head_backward(grad_ctx *g, const pb_grad_metric *mt, const float *row, double *value) {
    const pb_model_config *c = g->c;
    int V = c->vocab_size, d = c->d_model, pos = mt->position;
    double *dl = malloc(sizeof(double) * (size_t)V);
    float *dlf = malloc(sizeof(float) * (size_t)V);
    pb_status status = dl && dlf ? PB_OK : pb_fail(PB_ERR_OOM, "gradient: out of memory for %d logits", V);
    for (int v = 0; status == PB_OK && v < V; v++)
        if (!isfinite(row[v]))
            status = pb_fail(PB_ERR_NUMERIC, "gradient: the logit of token %d at position %d is %g", v, pos,
                             (double)row[v]);
    if (status == PB_OK)
        status = metric_grad(mt, row, V, dl, value);
    for (int v = 0; status == PB_OK && v < V; v++) {
        double t = c->final_softcap > 0.0f ? row[v] / c->final_softcap : 0.0;
        dlf[v] = (float)(dl[v] * (1.0 - t * t));
    }
    if (status == PB_OK)
        status = upload(g, g->dlogits, dlf, (size_t)V);
    free(dl);
    free(dlf);
    PB_TRY(status);
    pb_backend *b = g->b;
    const float *final;
    float *dy = g->dxn; /* (1, d) */
    PB_TRY(b->ops->matmul_dx(b, dy, g->dlogits, g->m->output.data, g->m->output.dtype, 1, V, d, 0));
    PB_TRY(act(g, PB_HOOK_RESID_POST, c->n_layers - 1, SLOT_PRE, &final));
    PB_TRY(upload_row(g, g->dres[0], 0, NULL));
    return b->ops->norm_backward(b, g->dres[0] + (size_t)pos * d, final + (size_t)pos * d, g->m->final_norm, dy, 1, d,
                                 c->rms_eps, c->norm == PB_NORM_LAYER, 0);
}

/* The projection metric's start: *value = <x, u> at the metric position,
 * g->dres[0] = u there (the gradient of the slot it reads, which resid_pre
 * of the layer above also names). */
static pb_status projection_start(grad_ctx *g, const pb_grad_metric *mt, double *value) {
    const pb_model_config *c = g->c;
    size_t d = (size_t)c->d_model, row = (size_t)mt->position * d;
    int slot = mt->layer + (mt->hook_post ? 1 : 0);
    const float *x = pb_capture_find_data(g->acts, mt->hook_post ? PB_HOOK_RESID_POST : PB_HOOK_RESID_PRE, mt->layer) +
                     row;
    double acc = 0.0;
    for (size_t i = 0; i < d; i++)
        acc += (double)x[i] * mt->direction[i];
    if (!isfinite(acc))
        return pb_fail(PB_ERR_NUMERIC,
                       "gradient: the projection at position %d is %g (a non-finite residual or direction)",
                       mt->position, acc);
    if (value)
        *value = acc;
    PB_TRY(upload_row(g, g->dres[0], mt->position, mt->direction));
    return slot < c->n_layers ? store(g, PB_HOOK_RESID_PRE, slot, g->dres[0], d) : PB_OK;
}

/* A pass's start from the metric: *value and the residual's gradient
 * where the metric reads it (row: the logits at the metric's position,
 * unused for projection). */
static pb_status metric_start(grad_ctx *g, const pb_grad_metric *mt, const float *row, double *value) {
    return mt->kind == PB_METRIC_PROJECTION ? projection_start(g, mt, value) : head_backward(g, mt, row, value);
}

int pb_grad_metric_top_layer(const pb_grad_metric *mt, int n_layers) {
    if (mt->kind != PB_METRIC_PROJECTION)
        return n_layers - 1;
    return mt->layer + (mt->hook_post ? 1 : 0) - 1;
}

/* ---- sublayers ------------------------------------------------------------ */

/* g->xn (T, d) = the sublayer's input: the norm of x, or x itself, by the
 * model's own op (as the forward computed it). */
static pb_status sublayer_input(grad_ctx *g, const float *x, const float *w, const float *b) {
    const pb_model_config *c = g->c;
    pb_backend *be = g->b;
    if (c->no_pre_norm)
        return copy(g, g->xn, x, (size_t)g->T * c->d_model);
    if (c->norm == PB_NORM_LAYER)
        return be->ops->layernorm(be, g->xn, x, w, b, g->T, c->d_model, c->rms_eps);
    return be->ops->rmsnorm(be, g->xn, x, w, g->T, c->d_model, c->rms_eps);
}

/* accum (T, d) += the gradient through the sublayer's pre norm of x, given
 * g->dxn, the gradient of its output. */
static pb_status pre_norm_backward(grad_ctx *g, float *accum, const float *x, const float *w) {
    const pb_model_config *c = g->c;
    pb_backend *b = g->b;
    size_t d = (size_t)c->d_model;
    if (c->no_pre_norm)
        return b->ops->add(b, accum, accum, g->dxn, (size_t)g->S * g->T * d);
    for (int s = 0; s < g->S; s++)
        PB_TRY(b->ops->norm_backward(b, accum + pass_at(g, s, d), x, w, g->dxn + pass_at(g, s, d), g->T, c->d_model,
                                     c->rms_eps, c->norm == PB_NORM_LAYER, 1));
    return PB_OK;
}

/* g->dsub = the gradient of the sublayer's output before its post norm
 * (sandwich norms), given dout, the gradient of what it adds. */
static pb_status post_norm_backward(grad_ctx *g, const float *dout, pb_hook_kind post_in, int L, const float *w) {
    const pb_model_config *c = g->c;
    size_t d = (size_t)c->d_model;
    if (!c->sandwich_norm)
        return copy(g, g->dsub, dout, (size_t)g->S * g->T * d);
    const float *x;
    PB_TRY(act(g, post_in, L, SLOT_POST_IN, &x));
    for (int s = 0; s < g->S; s++)
        PB_TRY(g->b->ops->norm_backward(g->b, g->dsub + pass_at(g, s, d), x, w, dout + pass_at(g, s, d), g->T,
                                        c->d_model, c->rms_eps, c->norm == PB_NORM_LAYER, 0));
    return PB_OK;
}

/* accum += the gradient through layer L's MLP reading residual x, given
 * dout, the gradient of what the MLP adds. */
static pb_status mlp_backward(grad_ctx *g, int L, const float *x, const float *dout, float *accum) {
    const pb_model_config *c = g->c;
    const pb_layer_weights *W = &g->m->layers[L];
    pb_backend *b = g->b;
    int T = g->T, rows = g->S * T, d = c->d_model, f = c->d_mlp;
    PB_TRY(post_norm_backward(g, dout, PB_HOOK_MLP_POST_IN, L, W->mlp_post_norm));
    PB_TRY(sublayer_input(g, x, W->mlp_norm, W->mlp_norm_b));
    /* the pre-activations, recomputed by the model's own product (once for every pass) */
    PB_TRY(b->ops->matmul(b, g->pre[1], g->xn, W->w_up.data, W->w_up.dtype, W->b_up, T, f, d));
    if (!c->plain_mlp)
        PB_TRY(b->ops->matmul(b, g->pre[0], g->xn, W->w_gate.data, W->w_gate.dtype, NULL, T, f, d));
    PB_TRY(b->ops->matmul_dx(b, g->dh[0], g->dsub, W->w_down.data, W->w_down.dtype, rows, d, f, 0)); /* d activations */
    for (int s = 0; s < g->S; s++) {
        float *da = g->dh[0] + pass_at(g, s, (size_t)f);
        PB_TRY(b->ops->glu_backward(b, da, g->dh[1] + pass_at(g, s, (size_t)f), da, c->plain_mlp ? NULL : g->pre[0],
                                    g->pre[1], (size_t)T * f, c->activation));
    }
    PB_TRY(b->ops->matmul_dx(b, g->dxn, g->dh[1], W->w_up.data, W->w_up.dtype, rows, f, d, 0));
    if (!c->plain_mlp)
        PB_TRY(b->ops->matmul_dx(b, g->dxn, g->dh[0], W->w_gate.data, W->w_gate.dtype, rows, f, d, 1));
    return pre_norm_backward(g, accum, x, W->mlp_norm);
}

/* *out = the gradient through RoPE and the q/k norms of d (T, heads *
 * head_dim; of the rotated rows, rotated back in place) to the
 * projection's output (the hook_q/k activations), in d itself or in
 * `normed`; also stored at `hook`. */
static pb_status rotary_norm_backward(grad_ctx *g, int L, float *d, int heads, const float *norm_w, pb_hook_kind hook,
                                      float *normed, const float **out) {
    const pb_model_config *c = g->c;
    pb_backend *b = g->b;
    int T = g->T, hd = c->head_dim, width = heads * hd;
    if (c->position == PB_POSITION_ROPE) {
        /* the rotation's transpose: the same rotation at the negated angles */
        int dims = c->rotary_dims > 0 ? c->rotary_dims : hd;
        const float *inv_freq = pb_model_inv_freq(g->m, L, T);
        for (int s = 0; s < g->S; s++)
            PB_TRY(b->ops->rope(b, d + pass_at(g, s, (size_t)width), g->neg_pos, inv_freq, T, heads, hd, dims,
                                pb_rope_scale(c)));
    }
    *out = d;
    if (c->qk_norm) {
        const float *x;
        int full = c->qk_norm_full;
        PB_TRY(act(g, hook, L, hook == PB_HOOK_Q ? SLOT_Q : SLOT_K, &x));
        for (int s = 0; s < g->S; s++)
            PB_TRY(b->ops->norm_backward(b, normed + pass_at(g, s, (size_t)width), x, norm_w,
                                         d + pass_at(g, s, (size_t)width), full ? T : T * heads, full ? width : hd,
                                         c->rms_eps, 0, 0));
        *out = normed;
    }
    return store(g, hook, L, *out, (size_t)width);
}

/* The softmax attention's backward of layer L: g->att = d rotated q, d
 * rotated k, d v, given dz (S, T, heads * head_dim); each pass's pattern
 * gradient where asked for. */
static pb_status softmax_backward(grad_ctx *g, int L, const float *dz) {
    const pb_model_config *c = g->c;
    pb_backend *b = g->b;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    const float *q, *k, *v;
    PB_TRY(act(g, PB_HOOK_ROT_Q, L, SLOT_ROT_Q, &q));
    PB_TRY(act(g, PB_HOOK_ROT_K, L, SLOT_ROT_K, &k));
    PB_TRY(act(g, PB_HOOK_V, L, SLOT_V, &v));
    pb_attention_params p = pb_model_attention_params(c, L);
    for (int s = 0; s < g->S; s++) {
        pb_capture_entry *pattern = pb_capture_find(g->grads[s], PB_HOOK_PATTERN, L); /* (H, T, T), zeroed */
        float *dpattern = !pattern ? NULL : b->ops->host_memory ? pattern->data : g->dpattern;
        PB_TRY(b->ops->attention_backward(b, g->att[0] + pass_at(g, s, qd), g->att[1] + pass_at(g, s, kvd),
                                          g->att[2] + pass_at(g, s, kvd), dpattern, q, k, v, dz + pass_at(g, s, qd),
                                          g->T, c->n_heads, c->n_kv_heads, c->head_dim, &p));
        if (pattern && !b->ops->host_memory)
            PB_TRY(b->ops->download(b, pattern->data, g->dpattern,
                                    sizeof(float) * (size_t)c->n_heads * (size_t)g->T * (size_t)g->T));
    }
    return PB_OK;
}

/* accum += the gradient through layer L's attention reading residual x,
 * given dout, the gradient of what the attention adds. */
static pb_status attention_backward(grad_ctx *g, int L, const float *x, const float *dout, float *accum) {
    const pb_model_config *c = g->c;
    const pb_layer_weights *W = &g->m->layers[L];
    pb_backend *b = g->b;
    int T = g->S * g->T, d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    PB_TRY(post_norm_backward(g, dout, PB_HOOK_ATTN_POST_IN, L, W->attn_post_norm));
    float *dz = g->dh[0];
    PB_TRY(b->ops->matmul_dx(b, dz, g->dsub, W->wo.data, W->wo.dtype, T, d, qd, 0));
    PB_TRY(store(g, PB_HOOK_Z, L, dz, (size_t)qd));
    PB_TRY(softmax_backward(g, L, dz));
    const float *dq, *dk, *dv = g->att[2]; /* dz is spent: dh[0] may hold the normed dq */
    PB_TRY(rotary_norm_backward(g, L, g->att[0], c->n_heads, W->q_norm, PB_HOOK_Q, g->dh[0], &dq));
    PB_TRY(rotary_norm_backward(g, L, g->att[1], c->n_kv_heads, W->k_norm, PB_HOOK_K, g->dh[1], &dk));
    PB_TRY(store(g, PB_HOOK_V, L, dv, (size_t)kvd));
    PB_TRY(b->ops->matmul_dx(b, g->dxn, dq, W->wq.data, W->wq.dtype, T, qd, d, 0));
    PB_TRY(b->ops->matmul_dx(b, g->dxn, dk, W->wk.data, W->wk.dtype, T, kvd, d, 1));
    PB_TRY(b->ops->matmul_dx(b, g->dxn, dv, W->wv.data, W->wv.dtype, T, kvd, d, 1));
    return pre_norm_backward(g, accum, x, W->attn_norm);
}

/* g->dres[0]: the gradient of layer L's output on entry, of its input on
 * return (dres[1] is the scratch it is built in). */
static pb_status layer_backward(grad_ctx *g, int L) {
    const pb_model_config *c = g->c;
    size_t n = (size_t)g->S * g->T * c->d_model, d = (size_t)c->d_model;
    float *dpost = g->dres[0], *dnext = g->dres[1];
    const float *pre;
    PB_TRY(store(g, PB_HOOK_RESID_POST, L, dpost, d));
    if (L == g->drop) {
        /* GradDrop: only the skip path; the layer's own points stay zero */
        PB_TRY(store(g, PB_HOOK_RESID_MID, L, dpost, d));
        return store(g, PB_HOOK_RESID_PRE, L, dpost, d);
    }
    PB_TRY(act(g, PB_HOOK_RESID_PRE, L, SLOT_PRE, &pre));
    PB_TRY(store(g, PB_HOOK_MLP_OUT, L, dpost, d));
    PB_TRY(copy(g, dnext, dpost, n));
    if (c->parallel_block) {
        /* out = in + attn(in) + mlp(in): both sublayers see dpost */
        PB_TRY(store(g, PB_HOOK_ATTN_OUT, L, dpost, d));
        PB_TRY(mlp_backward(g, L, pre, dpost, dnext));
        PB_TRY(attention_backward(g, L, pre, dpost, dnext));
    } else {
        const float *mid;
        PB_TRY(act(g, PB_HOOK_RESID_MID, L, SLOT_MID, &mid));
        PB_TRY(mlp_backward(g, L, mid, dpost, dnext));
        PB_TRY(store(g, PB_HOOK_RESID_MID, L, dnext, d));
        PB_TRY(store(g, PB_HOOK_ATTN_OUT, L, dnext, d));
        PB_TRY(copy(g, dpost, dnext, n)); /* dpost now: the residual between the sublayers */
        PB_TRY(attention_backward(g, L, pre, dpost, dnext));
    }
    g->dres[0] = dnext;
    g->dres[1] = dpost;
    return store(g, PB_HOOK_RESID_PRE, L, dnext, d);
}

/* ---- the pass ------------------------------------------------------------- */

static pb_status check_supported(const pb_model *m, const pb_grad_metric *mt, int T) {
    const pb_backend_ops *ops = m->backend->ops;
    if (!ops->matmul_dx || !ops->norm_backward || !ops->glu_backward || !ops->attention_backward)
        return pb_fail(PB_ERR_UNSUPPORTED, "the gradient pass has no backward ops on the %s backend", ops->name);
    if (!mt || mt->position < 0 || mt->position >= T)
        return pb_fail(PB_ERR_ARG, "gradient: metric position %d outside the %d tokens", mt ? mt->position : -1, T);
    if (mt->kind == PB_METRIC_PROJECTION && (!mt->direction || mt->layer < 0 || mt->layer >= m->cfg.n_layers))
        return pb_fail(PB_ERR_ARG, "gradient metric projection: needs a direction and a layer in [0, %d), not %d",
                       m->cfg.n_layers, mt->layer);
    return PB_OK;
}

/* ctx_alloc's sizes in floats: per token a sublayer's widest inner row,
 * the attention's widest row, an uploaded activation's widest row. */
typedef struct scratch_sizes {
    size_t wide, heads, act;
} scratch_sizes;

static scratch_sizes scratch_of(const pb_model_config *c) {
    size_t d = (size_t)c->d_model, f = (size_t)c->d_mlp;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t wide = f > qd ? f : qd, heads = qd > kvd ? qd : kvd;
    return (scratch_sizes){wide, heads, heads > d ? heads : d};
}

/* Bytes of one more pass running beside the others: its rows of the
 * per-pass buffers, and on the host matmul_dx's double sums over them
 * (the widest: T rows of the widest sublayer). */
static size_t per_pass_bytes(const pb_model_config *c, int T, int device) {
    scratch_sizes z = scratch_of(c);
    size_t t = (size_t)T, d = (size_t)c->d_model;
    size_t bytes = sizeof(float) * (2 * t * z.wide + 4 * t * d + 3 * t * z.heads);
    return device ? bytes : bytes + sizeof(double) * t * (z.wide > d ? z.wide : d);
}

size_t pb_grad_scratch_bytes(const pb_model_config *c, int T, int device, int passes) {
    scratch_sizes z = scratch_of(c);
    size_t t = (size_t)T, d = (size_t)c->d_model, V = (size_t)c->vocab_size, H = (size_t)c->n_heads;
    /* ctx_alloc's shared buffers; on a device the activation slots; on
     * the host the attention backward's double sums (one pass at a time) */
    size_t bytes = sizeof(float) * (2 * t * z.wide + t * d + V) + sizeof(int32_t) * t +
                   (size_t)(passes > 1 ? passes : 1) * per_pass_bytes(c, T, device);
    if (device) { /* the pattern's gradient, and the attention backward's probabilities and scores' gradients */
        size_t chunk_heads = (size_t)pb_attention_backward_chunk(T, c->n_heads, c->n_kv_heads) *
                             (size_t)(c->n_heads / c->n_kv_heads);
        return bytes + sizeof(float) * (N_SLOTS * t * z.act + H * t * t) + sizeof(double) * 2 * chunk_heads * t * t;
    }
    return bytes + sizeof(double) * (3 * t * z.heads + 2 * t);
}

int pb_grad_drop_batch(const pb_model_config *c, const int *T, int n, int device) {
    size_t each = 0; /* one pass of every prompt */
    for (int i = 0; i < n; i++)
        each += per_pass_bytes(c, T[i], device);
    size_t passes = each ? PB_GRAD_DROP_SCRATCH / each : 1;
    return passes < 1 ? 1 : passes > (size_t)c->n_layers ? c->n_layers : (int)passes;
}

static int asks_pattern(const pb_capture *grads) {
    for (int i = 0; grads && i < grads->count; i++)
        if (grads->entries[i].kind == PB_HOOK_PATTERN)
            return 1;
    return 0;
}

/* g's buffers for g->capacity passes; `pattern`: some pass asks for a
 * pattern's gradient. */
static pb_status ctx_alloc(grad_ctx *g, int pattern) {
    scratch_sizes z = scratch_of(g->c);
    size_t T = (size_t)g->T, d = (size_t)g->c->d_model, V = (size_t)g->c->vocab_size, P = (size_t)g->capacity;
    pb_backend *b = g->b;
    float **bufs[] = {&g->pre[0],  &g->pre[1],  &g->dh[0],  &g->dh[1],  &g->xn,     &g->dsub,   &g->dxn,
                      &g->dres[0], &g->dres[1], &g->att[0], &g->att[1], &g->att[2], &g->dlogits};
    size_t sizes[] = {T * z.wide, T * z.wide, P * T * z.wide,  P * T * z.wide,  T * d,           P * T * d, P * T * d,
                      P * T * d,  P * T * d,  P * T * z.heads, P * T * z.heads, P * T * z.heads, V};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        PB_TRY(b->ops->alloc(b, (void **)bufs[i], sizeof(float) * sizes[i]));
    for (int i = 0; !b->ops->host_memory && i < N_SLOTS; i++)
        PB_TRY(b->ops->alloc(b, (void **)&g->slot[i], sizeof(float) * T * z.act));
    g->slot_floats = T * z.act;
    if (!b->ops->host_memory && pattern) {
        size_t n = (size_t)g->c->n_heads * T * T;
        float *zeros = calloc(n, sizeof(float));
        if (!zeros)
            return pb_fail(PB_ERR_OOM, "gradient: out of memory for the pattern's gradient");
        pb_status status = b->ops->alloc(b, (void **)&g->dpattern, sizeof(float) * n);
        if (status == PB_OK)
            status = upload(g, g->dpattern, zeros, n);
        free(zeros);
        PB_TRY(status);
    }
    int32_t *neg = malloc(sizeof(int32_t) * T);
    if (!neg)
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for %zu tokens", T);
    for (size_t t = 0; t < T; t++)
        neg[t] = -(int32_t)t;
    pb_status status = b->ops->alloc(b, (void **)&g->neg_pos, sizeof(int32_t) * T);
    if (status == PB_OK)
        status = b->ops->upload(b, g->neg_pos, neg, sizeof(int32_t) * T);
    free(neg);
    return status;
}

static void ctx_free(grad_ctx *g) {
    pb_backend *b = g->b;
    float *bufs[] = {g->pre[0],  g->pre[1],  g->dh[0],  g->dh[1],  g->xn,     g->dsub,    g->dxn,
                     g->dres[0], g->dres[1], g->att[0], g->att[1], g->att[2], g->dlogits, g->dpattern};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        b->ops->free(b, bufs[i]);
    for (int i = 0; i < N_SLOTS; i++)
        b->ops->free(b, g->slot[i]);
    b->ops->free(b, g->neg_pos);
}

/* The hook points a pass fills (patchbay.h, pb_gradients); the caller's
 * capture, made for this model, may name no other. */
static pb_status check_grads(const pb_capture *grads, const pb_model_config *c) {
    if (!pb_capture_fits(grads, c))
        return pb_fail(PB_ERR_ARG, "gradient: the gradients' capture set was made for another model");
    for (int i = 0; i < grads->count; i++)
        switch (grads->entries[i].kind) {
        case PB_HOOK_RESID_PRE:
        case PB_HOOK_RESID_MID:
        case PB_HOOK_RESID_POST:
        case PB_HOOK_ATTN_OUT:
        case PB_HOOK_MLP_OUT:
        case PB_HOOK_Z:
        case PB_HOOK_Q:
        case PB_HOOK_K:
        case PB_HOOK_V:
        case PB_HOOK_PATTERN: break;
        default:
            return pb_fail(PB_ERR_ARG,
                           "gradient: no gradient is taken at %s (the pass gives hook_resid_pre/mid/post, "
                           "hook_attn_out, hook_mlp_out and attn.hook_z/q/k/v/pattern)",
                           grads->entries[i].name);
        }
    return PB_OK;
}

/* The kinds the backward reads at every layer of acts (grad.h). */
static pb_status check_acts(const pb_model_config *c, pb_capture *acts) {
    static const pb_hook_kind kinds[] = {PB_HOOK_RESID_PRE,  PB_HOOK_Q,          PB_HOOK_K,
                                         PB_HOOK_V,          PB_HOOK_ROT_Q,      PB_HOOK_ROT_K,
                                         PB_HOOK_RESID_MID,  PB_HOOK_RESID_POST, PB_HOOK_ATTN_POST_IN,
                                         PB_HOOK_MLP_POST_IN};
    if (!pb_capture_fits(acts, c))
        return pb_fail(PB_ERR_ARG, "gradient: the forward's capture set was made for another model");
    for (int L = 0; L < c->n_layers; L++)
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            if (pb_hook_kind_exists(kinds[k], c) && !pb_capture_find(acts, kinds[k], L)) {
                char name[96];
                pb_hook_name(kinds[k], L, name, sizeof name);
                return pb_fail(PB_ERR_ARG, "gradient: the forward's captures lack %s (capture %s)", name,
                               PB_GRAD_ACT_HOOKS);
            }
    return PB_OK;
}

pb_status pb_gradients(pb_model *m, const int32_t *ids, int T, const pb_grad_metric *metric, pb_capture *grads,
                       double *value) {
    if (!m || !ids || !grads || !value)
        return pb_fail(PB_ERR_ARG, "pb_gradients: model, ids, grads and value are required");
    PB_TRY(check_supported(m, metric, T));
    PB_TRY(check_grads(grads, &m->cfg));
    float *logits = malloc(sizeof(float) * (size_t)m->cfg.vocab_size); /* the metric position's */
    if (!logits)
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for a position's logits");
    pb_capture *acts = NULL;
    pb_status status = pb_capture_create(&acts, m, PB_GRAD_ACT_HOOKS);
    pb_forward_prompt run = {.ids = ids, .T = T, .logits = logits, .capture = acts, .logits_from = metric->position};
    if (status == PB_OK)
        status = pb_forward_batch(m, &run, 1);
    if (status == PB_OK)
        status = pb_grad_pass_from(m, T, acts, logits, metric, grads, value);
    pb_capture_free(acts);
    free(logits);
    return status;
}

pb_status pb_grad_pass_from(pb_model *m, int T, pb_capture *acts, const float *logits, const pb_grad_metric *metric,
                            pb_capture *grads, double *value) {
    return pb_grad_pass_drop(m, T, acts, logits, metric, NULL, grads, value);
}

/* c shaped for T tokens, every entry zero: where a pass adds its
 * gradients. */
static pb_status capture_zeroed(pb_capture *c, int T) {
    PB_TRY(pb_capture_prepare(c, T));
    for (int i = 0; i < c->count; i++)
        memset(c->entries[i].data, 0, sizeof(float) * pb_capture_entry_floats(&c->entries[i], T));
    return PB_OK;
}

/* g (in place) ready for one pass from its start: checked, its buffers
 * allocated, grads zeroed, the gradient above *top (the layer it starts
 * at) taken: from the metric, or the resumed drop's. */
static pb_status pass_open(grad_ctx *g, pb_model *m, int T, pb_capture *acts, const float *logits,
                           const pb_grad_metric *metric, const pb_grad_drop *drop, pb_capture *grads, double *value,
                           int *top) {
    int resume = drop && drop->resid_post_grad;
    int on_logits = !metric || metric->kind != PB_METRIC_PROJECTION;
    *g = (grad_ctx){.m = m, .b = m ? m->backend : NULL, .T = T, .S = 1, .capacity = 1, .drop = -1, .acts = acts};
    if (!m || !acts || !grads || (!resume && ((on_logits && !logits) || !value)))
        return pb_fail(PB_ERR_ARG, "gradient: model, acts, grads, and unless resumed logits and value, are required");
    PB_TRY(check_supported(m, metric, T));
    PB_TRY(check_grads(grads, &m->cfg));
    PB_TRY(check_acts(&m->cfg, acts));
    if (drop && (drop->layer < 0 || drop->layer >= m->cfg.n_layers))
        return pb_fail(PB_ERR_ARG, "gradient: drop layer %d outside the model's %d layers", drop->layer,
                       m->cfg.n_layers);
    g->c = &m->cfg;
    g->drop = drop ? drop->layer : -1;
    g->one = grads;
    g->grads = &g->one;
    PB_TRY(capture_zeroed(grads, T));
    PB_TRY(ctx_alloc(g, asks_pattern(grads)));
    *top = resume ? drop->layer : pb_grad_metric_top_layer(metric, m->cfg.n_layers);
    if (resume)
        return upload(g, g->dres[0], drop->resid_post_grad, (size_t)T * (size_t)m->cfg.d_model);
    return metric_start(g, metric, logits, value);
}

pb_status pb_grad_pass_drop(pb_model *m, int T, pb_capture *acts, const float *logits, const pb_grad_metric *metric,
                            const pb_grad_drop *drop, pb_capture *grads, double *value) {
    grad_ctx g;
    int top = -1;
    pb_status status = pass_open(&g, m, T, acts, logits, metric, drop, grads, value, &top);
    for (int L = top; status == PB_OK && L >= 0; L--) {
        /* streamed weights: layer L in its slot, L - 1 read meanwhile (a
         * dropped layer's matrices are not read: only its skip path runs) */
        if (L != g.drop)
            status = pb_model_layer_acquire(m, L, L > 0 ? L - 1 : -1);
        if (status == PB_OK)
            status = layer_backward(&g, L);
    }
    if (status == PB_OK)
        status = m->backend->ops->synchronize(m->backend);
    if (g.b)
        ctx_free(&g);
    return status;
}

pb_status pb_grad_passes(pb_model *m, const pb_grad_job *jobs, int n) {
    if (!m || !jobs || n < 1)
        return pb_fail(PB_ERR_ARG, "gradient: model and at least one pass are required");
    grad_ctx *g = calloc((size_t)n, sizeof *g);
    int *top = malloc(sizeof(int) * (size_t)n), highest = -1, opened = 0;
    pb_status status = g && top ? PB_OK : pb_fail(PB_ERR_OOM, "gradient: out of memory for %d passes", n);
    for (; status == PB_OK && opened < n; opened++) {
        const pb_grad_job *j = &jobs[opened];
        status = pass_open(&g[opened], m, j->T, j->acts, j->logits, j->metric, NULL, j->grads, j->value, &top[opened]);
        highest = status == PB_OK && top[opened] > highest ? top[opened] : highest;
    }
    for (int L = highest; status == PB_OK && L >= 0; L--) {
        /* streamed weights: layer L read once for every pass */
        status = pb_model_layer_acquire(m, L, L > 0 ? L - 1 : -1);
        for (int i = 0; status == PB_OK && i < n; i++)
            if (top[i] >= L)
                status = layer_backward(&g[i], L);
    }
    if (status == PB_OK)
        status = m->backend->ops->synchronize(m->backend);
    for (int i = 0; g && i < opened; i++)
        if (g[i].b)
            ctx_free(&g[i]);
    free(g);
    free(top);
    return status;
}

/* ---- GradDrop's passes together ------------------------------------------ */

/* *out = a zeroed capture of the hook points whole holds at layer L (NULL
 * when it holds none there), freeing the one *out held. */
static pb_status layer_capture(pb_capture *whole, int L, int T, pb_capture **out) {
    pb_capture_free(*out);
    PB_TRY(pb_capture_layer(whole, L, out));
    return *out ? capture_zeroed(*out, T) : PB_OK;
}

/* Drop `L`'s pass starts at its layer as pb_grad_pass_drop's does: the
 * residual's gradient goes by unchanged (pass i's rows), the layer's own
 * hook points stay zero. */
static pb_status drop_start(grad_ctx *g, pb_capture *whole, int L, int i, pb_capture *grads) {
    size_t n = (size_t)g->T * (size_t)g->c->d_model;
    const float *dpost = pb_capture_find_data(whole, PB_HOOK_RESID_POST, L);
    PB_TRY(upload(g, g->dres[0] + pass_at(g, i, (size_t)g->c->d_model), dpost, n));
    static const pb_hook_kind residual[] = {PB_HOOK_RESID_PRE, PB_HOOK_RESID_MID, PB_HOOK_RESID_POST};
    for (size_t k = 0; k < sizeof residual / sizeof residual[0]; k++) {
        float *e = pb_capture_find_data(grads, residual[k], L);
        if (e)
            memcpy(e, dpost, sizeof(float) * n);
    }
    return PB_OK;
}

/* One job's passes of a turn (drops first..top): pass w + i is drop top -
 * i's, so at layer L those above it, a prefix, run as one batch; with the
 * whole pass (w = 1) that is pass 0, before them all. */
typedef struct drop_state {
    grad_ctx g;
    int w;             /* 1: pass 0 is the whole pass, its gradients the job's whole */
    pb_capture **caps; /* (passes) each pass's gradients at the current layer (pass 0's: whole) */
} drop_state;

static pb_status drops_open(drop_state *d, pb_model *m, const pb_grad_drop_job *j, int passes, int whole) {
    d->g = (grad_ctx){.m = m, .c = &m->cfg, .b = m->backend, .T = j->T, .drop = -1, .acts = j->acts};
    d->w = whole;
    if (!(d->caps = calloc((size_t)passes, sizeof *d->caps)))
        return pb_fail(PB_ERR_OOM, "GradDrop: out of memory for %d passes", passes);
    d->g.grads = d->caps;
    d->g.capacity = passes;
    PB_TRY(ctx_alloc(&d->g, asks_pattern(j->whole)));
    if (!whole)
        return PB_OK;
    /* the whole pass's start, as pass_open's */
    d->caps[0] = j->whole;
    d->g.S = 1;
    return metric_start(&d->g, j->metric, j->logits, j->value);
}

static void drops_close(drop_state *d) {
    for (int i = d->w; d->caps && i < d->g.capacity; i++) /* pass 0's, whole, is the caller's */
        pb_capture_free(d->caps[i]);
    free(d->caps);
    ctx_free(&d->g);
}

/* Layer L (its weights in place) for one job's passes first..top, after
 * the whole pass where it runs too. */
static pb_status drops_layer(drop_state *d, const pb_grad_drop_job *j, int first, int top, int L) {
    grad_ctx *g = &d->g;
    int w = d->w, n = top - first + 1, running = w + (top - L < n ? top - L : n), live = running + (L >= first);
    for (int i = w; i < live; i++)
        PB_TRY(layer_capture(j->whole, L, g->T, &d->caps[i]));
    g->S = running;
    if (running > 0)
        PB_TRY(layer_backward(g, L)); /* the whole pass's resid_post of L lands in whole first */
    if (L >= first)
        PB_TRY(drop_start(g, j->whole, L, running, d->caps[running]));
    PB_TRY(g->b->ops->synchronize(g->b));
    for (int i = w; i < live; i++)
        if (d->caps[i])
            PB_TRY(j->fn(j->user, L, top - (i - w), d->caps[i]));
    return PB_OK;
}

/* Every job's passes of drops first..top (and the whole pass first, with
 * whole), from layer top down to bottom: each layer read once for all of
 * them. */
static pb_status drops_turn(pb_model *m, const pb_grad_drop_job *jobs, int n, int first, int top, int bottom,
                            int whole) {
    drop_state *d = calloc((size_t)n, sizeof *d);
    if (!d)
        return pb_fail(PB_ERR_OOM, "GradDrop: out of memory for %d prompts", n);
    pb_status status = PB_OK;
    int opened = 0;
    for (; status == PB_OK && opened < n; opened++)
        status = drops_open(&d[opened], m, &jobs[opened], top - first + 1 + whole, whole);
    for (int L = top; status == PB_OK && L >= bottom; L--) {
        /* streamed weights: L in its slot, L - 1 read meanwhile (top: the
         * skip path only, unless the whole pass runs it) */
        if (L < top || whole)
            status = pb_model_layer_acquire(m, L, L > bottom ? L - 1 : -1);
        for (int i = 0; status == PB_OK && i < n; i++)
            status = drops_layer(&d[i], &jobs[i], first, top, L);
    }
    for (int i = 0; i < opened; i++)
        drops_close(&d[i]);
    free(d);
    return status;
}

static pb_status drops_check(pb_model *m, const pb_grad_drop_job *j, int lo, int hi) {
    if (!j->acts || !j->whole || !j->fn)
        return pb_fail(PB_ERR_ARG, "GradDrop: acts, the whole pass's gradients and a callback are required");
    PB_TRY(check_supported(m, j->metric, j->T));
    PB_TRY(check_grads(j->whole, &m->cfg));
    PB_TRY(check_acts(&m->cfg, j->acts));
    for (int L = lo; L <= hi; L++) {
        pb_capture_entry *e = pb_capture_find(j->whole, PB_HOOK_RESID_POST, L);
        if (!e || e->T != j->T)
            return pb_fail(PB_ERR_ARG,
                           "GradDrop: the whole pass's gradients lack resid_post of layer %d over %d tokens", L, j->T);
    }
    return PB_OK;
}

/* Each job's whole capture ready to be filled: its shape, zeroed. */
static pb_status whole_prepare(pb_model *m, const pb_grad_drop_job *j, int hi) {
    int on_logits = j->metric && j->metric->kind != PB_METRIC_PROJECTION;
    if (!j->whole || !j->value || (on_logits && !j->logits))
        return pb_fail(PB_ERR_ARG, "gradient: the whole pass needs its capture, value and (but for projection) logits");
    PB_TRY(check_supported(m, j->metric, j->T));
    if (pb_grad_metric_top_layer(j->metric, m->cfg.n_layers) != hi)
        return pb_fail(PB_ERR_ARG, "gradient: the whole pass starts at layer %d, not the drops' top %d",
                       pb_grad_metric_top_layer(j->metric, m->cfg.n_layers), hi);
    PB_TRY(check_grads(j->whole, &m->cfg));
    return capture_zeroed(j->whole, j->T);
}

/* The common start: the range, each job checked (with the whole pass,
 * whole_prepare first), *batch chosen where it is <= 0. */
static pb_status drops_begin(pb_model *m, const pb_grad_drop_job *jobs, int n, int lo, int hi, int bottom, int whole,
                             int *batch) {
    if (!m || !jobs || n < 1)
        return pb_fail(PB_ERR_ARG, "GradDrop: model and at least one prompt are required");
    if (bottom < 0 || bottom > lo || lo > hi || hi >= m->cfg.n_layers)
        return pb_fail(PB_ERR_ARG, "GradDrop: drops %d..%d down to layer %d, not 0 <= bottom <= lo <= hi < %d", lo, hi,
                       bottom, m->cfg.n_layers);
    int *T = malloc(sizeof(int) * (size_t)n);
    if (!T)
        return pb_fail(PB_ERR_OOM, "GradDrop: out of memory for %d prompts", n);
    pb_status status = PB_OK;
    for (int i = 0; status == PB_OK && i < n; i++) {
        status = whole ? whole_prepare(m, &jobs[i], hi) : PB_OK;
        if (status == PB_OK)
            status = drops_check(m, &jobs[i], lo, hi);
        T[i] = jobs[i].T;
    }
    if (status == PB_OK && *batch <= 0)
        *batch = pb_grad_drop_batch(&m->cfg, T, n, !m->backend->ops->host_memory);
    free(T);
    return status;
}

pb_status pb_grad_drops(pb_model *m, const pb_grad_drop_job *jobs, int n, int lo, int hi, int bottom, int batch) {
    pb_status status = drops_begin(m, jobs, n, lo, hi, bottom, 0, &batch);
    for (int top = hi; status == PB_OK && top >= lo; top -= batch)
        status = drops_turn(m, jobs, n, top - batch + 1 > lo ? top - batch + 1 : lo, top, bottom, 0);
    return status;
}

int pb_grad_whole_turn_drops(int batch) { return batch > 1 ? batch - 1 : 1; }

pb_status pb_grad_whole_drops(pb_model *m, const pb_grad_drop_job *jobs, int n, int lo, int hi, int bottom, int batch) {
    pb_status status = drops_begin(m, jobs, n, lo, hi, bottom, 1, &batch);
    int first_turn = pb_grad_whole_turn_drops(batch);
    if (status == PB_OK)
        status = drops_turn(m, jobs, n, hi - first_turn + 1 > lo ? hi - first_turn + 1 : lo, hi, bottom, 1);
    for (int top = hi - first_turn; status == PB_OK && top >= lo; top -= batch)
        status = drops_turn(m, jobs, n, top - batch + 1 > lo ? top - batch + 1 : lo, top, bottom, 0);
    return status;
}
