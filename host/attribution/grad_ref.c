/* The reference activation backward pass (grad_ref.h). One forward with a
 * capture of every per-layer hook point, then, from the metric down: the
 * metric's derivative on the logits, the final soft-cap, the unembedding
 * and the final norm at the metric's position, and per layer from the last
 * the MLP and attention sublayers in reverse (post norm, projections, the
 * activation or the attention's softmax, RoPE, q/k norms, pre norm), each
 * adding its input's gradient into the residual's. */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/grad_ref.h"
#include "backend/backend.h"
#include "model/capture.h"
#include "model/model.h"
#include "patching/metric.h"
#include "util/internal.h"

typedef struct grad_ctx {
    pb_model *m;
    const pb_model_config *c;
    pb_backend *ref; /* naive ops on host memory: the recomputations */
    int T;
    int drop;          /* GradDrop's layer, or -1 */
    pb_capture *acts;  /* the forward's activations (the caller's) */
    pb_capture *grads; /* the caller's: what it asks for */
    float *w;          /* (largest matrix) one weight matrix as f32 */
    float *vec[2];     /* (widest vector) a norm's weight and bias */
    float *xn;         /* (T, d_model) a sublayer's input, recomputed */
    float *pre[2];     /* (T, d_mlp) the MLP's gate and up pre-activations */
    float *dh[2];      /* (T, max(d_mlp, n_heads * head_dim)) gradients inside a sublayer */
    float *dsub;       /* (T, d_model) the sublayer output's gradient before its post norm */
    float *dxn;        /* (T, d_model) the sublayer input's gradient */
    float *dres[2];    /* (T, d_model) the residual's gradient: current, and the next one built */
    double *att[3];    /* (T, max(n_heads, n_kv_heads) * head_dim) attention gradients: q, k, v */
    double *probs;     /* (T) one query's probabilities */
    int32_t *neg_pos;  /* (T) -t: RoPE's inverse rotation */
} grad_ctx;

/* ---- host helpers --------------------------------------------------------- */

static const float *act(grad_ctx *g, pb_hook_kind kind, int layer) {
    return pb_capture_find_data(g->acts, kind, layer);
}

static void store(grad_ctx *g, pb_hook_kind kind, int layer, const float *src, size_t width) {
    pb_capture_entry *e = pb_capture_find(g->grads, kind, layer);
    if (e)
        memcpy(e->data, src, sizeof(float) * (size_t)g->T * width);
}

static pb_status matrix(grad_ctx *g, const pb_matrix *w, size_t rows, size_t cols) {
    return pb_model_weights_download(g->m, g->w, w->data, w->dtype, rows * cols);
}

/* vec[slot] = the n-float backend vector v, or NULL when v is. */
static pb_status vector(grad_ctx *g, int slot, const float *v, size_t n, const float **out) {
    *out = NULL;
    if (!v)
        return PB_OK;
    PB_TRY(g->m->backend->ops->download(g->m->backend, g->vec[slot], v, sizeof(float) * n));
    *out = g->vec[slot];
    return PB_OK;
}

/* dx (rows, k) = dy (rows, n) @ g->w (n, k), or += with accumulate. On
 * the CPU backend an OpenBLAS sgemm (fp32 sums, as its forward); on the
 * reference backend sums in double, one row per thread (the same result on
 * any thread count). */
static pb_status matmul_dx(grad_ctx *g, float *dx, const float *dy, int rows, int n, int k, int accumulate) {
    const float *w = g->w;
    if (g->m->backend_kind == PB_BACKEND_CPU) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, k, n, 1.0f, dy, n, w, k, accumulate ? 1.0f : 0.0f,
                    dx, k);
        return PB_OK;
    }
    double *acc = calloc((size_t)rows * (size_t)k, sizeof(double));
    if (!acc)
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for a (%d, %d) product", rows, k);
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        double *ar = acc + (size_t)r * k;
        for (int i = 0; i < n; i++) {
            double d = dy[(size_t)r * n + i];
            if (d == 0.0)
                continue;
            const float *wr = w + (size_t)i * k;
            for (int j = 0; j < k; j++)
                ar[j] += d * wr[j];
        }
        for (int j = 0; j < k; j++)
            dx[(size_t)r * k + j] = (float)(accumulate ? dx[(size_t)r * k + j] + ar[j] : ar[j]);
    }
    free(acc);
    return PB_OK;
}

/* dx (rows, d) += the gradient through y = norm(x) * w (+ b) given dy:
 * RMSNorm x / sqrt(mean x^2 + eps), or with layer centring first. w NULL
 * means ones. */
static void norm_backward(float *dx, const float *x, const float *w, const float *dy, int rows, int d, float eps,
                          int layer) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d, *gr = dy + (size_t)r * d;
        double mean = 0.0, ms = 0.0, gsum = 0.0, gx = 0.0;
        for (int i = 0; layer && i < d; i++)
            mean += xr[i];
        mean /= d;
        for (int i = 0; i < d; i++)
            ms += (xr[i] - mean) * (xr[i] - mean);
        double inv = 1.0 / sqrt(ms / d + eps);
        for (int i = 0; i < d; i++) {
            double gi = gr[i] * (w ? w[i] : 1.0);
            gsum += gi;
            gx += gi * (xr[i] - mean) * inv;
        }
        for (int i = 0; i < d; i++) {
            double gi = gr[i] * (w ? w[i] : 1.0), xhat = (xr[i] - mean) * inv;
            double di = layer ? inv * (gi - gsum / d - xhat * gx / d) : inv * (gi - xhat * gx / d);
            dx[(size_t)r * d + i] += (float)di;
        }
    }
}

/* act'(x) and act(x) in double (ops_ref.c's definitions). */
static double activation_grad(pb_activation a, double x, double *value) {
    if (a == PB_ACTIVATION_GELU_TANH) {
        double u = 0.7978845608028654 * (x + 0.044715 * x * x * x), t = tanh(u);
        *value = 0.5 * x * (1.0 + t);
        return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x);
    }
    if (a == PB_ACTIVATION_GELU) {
        *value = 0.5 * x * (1.0 + erf(x * 0.7071067811865476));
        return 0.5 * (1.0 + erf(x * 0.7071067811865476)) + x * exp(-0.5 * x * x) * 0.3989422804014327;
    }
    double s = 1.0 / (1.0 + exp(-x));
    *value = x * s;
    return s * (1.0 + x * (1.0 - s));
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
        status = pb_fail(PB_ERR_UNSUPPORTED,
                         "gradient metric: %s is not differentiated here (logit_diff, logprob, "
                         "refusal_score, kl with its reference distribution)",
                         mt->kind == PB_METRIC_KL ? "kl without ref_logprobs" : "this kind");
    }
    free(lsm);
    free(in);
    return status;
}

/* dres (T, d) = the residual's gradient after the last layer: the metric
 * through the final soft-cap, the unembedding and the final norm, at the
 * metric's position only. */
static pb_status head_backward(grad_ctx *g, const pb_grad_metric *mt, const float *logits, double *value) {
    const pb_model_config *c = g->c;
    int V = c->vocab_size, d = c->d_model, pos = mt->position;
    double *dl = malloc(sizeof(double) * (size_t)V);
    float *dy = malloc(sizeof(float) * (size_t)d);
    if (!dl || !dy) {
        free(dl);
        free(dy);
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for %d logits", V);
    }
    const float *row = logits + (size_t)pos * V;
    pb_status status = metric_grad(mt, row, V, dl, value);
    if (status == PB_OK)
        status = matrix(g, &g->m->output, (size_t)V, (size_t)d);
    for (int v = 0; status == PB_OK && c->final_softcap > 0.0f && v < V; v++) {
        double t = row[v] / c->final_softcap;
        dl[v] *= 1.0 - t * t;
    }
    if (status == PB_OK) {
#pragma omp parallel for schedule(static)
        for (int i = 0; i < d; i++) {
            double acc = 0.0;
            for (int v = 0; v < V; v++)
                acc += dl[v] * g->w[(size_t)v * d + i];
            dy[i] = (float)acc;
        }
    }
    const float *w = NULL, *final = act(g, PB_HOOK_RESID_POST, c->n_layers - 1);
    memset(g->dres[0], 0, sizeof(float) * (size_t)g->T * d);
    if (status == PB_OK && (status = vector(g, 0, g->m->final_norm, (size_t)d, &w)) == PB_OK)
        norm_backward(g->dres[0] + (size_t)pos * d, final + (size_t)pos * d, w, dy, 1, d, c->rms_eps,
                      c->norm == PB_NORM_LAYER);
    free(dl);
    free(dy);
    return status;
}

/* The projection metric's start: *value = <x, u> at the metric position,
 * g->dres[0] = u there (the gradient of the slot it reads, which resid_pre
 * of the layer above also names). */
static void projection_start(grad_ctx *g, const pb_grad_metric *mt, double *value) {
    const pb_model_config *c = g->c;
    size_t d = (size_t)c->d_model, row = (size_t)mt->position * d;
    int slot = mt->layer + (mt->hook_post ? 1 : 0);
    const float *x = act(g, mt->hook_post ? PB_HOOK_RESID_POST : PB_HOOK_RESID_PRE, mt->layer) + row;
    double acc = 0.0;
    for (size_t i = 0; i < d; i++)
        acc += (double)x[i] * mt->direction[i];
    if (value)
        *value = acc;
    memset(g->dres[0], 0, sizeof(float) * (size_t)g->T * d);
    memcpy(g->dres[0] + row, mt->direction, sizeof(float) * d);
    if (slot < c->n_layers)
        store(g, PB_HOOK_RESID_PRE, slot, g->dres[0], d);
}

int pb_grad_metric_top_layer(const pb_grad_metric *mt, int n_layers) {
    if (mt->kind != PB_METRIC_PROJECTION)
        return n_layers - 1;
    return mt->layer + (mt->hook_post ? 1 : 0) - 1;
}

/* ---- sublayers ------------------------------------------------------------ */

/* g->xn (T, d) = the sublayer's input: the norm of x, or x itself. */
static pb_status sublayer_input(grad_ctx *g, const float *x, const float *w, const float *b) {
    const pb_model_config *c = g->c;
    size_t n = (size_t)g->T * c->d_model;
    if (c->no_pre_norm) {
        memcpy(g->xn, x, sizeof(float) * n);
        return PB_OK;
    }
    const float *wh, *bh;
    PB_TRY(vector(g, 0, w, (size_t)c->d_model, &wh));
    PB_TRY(vector(g, 1, b, (size_t)c->d_model, &bh));
    pb_backend *r = g->ref;
    if (c->norm == PB_NORM_LAYER)
        return r->ops->layernorm(r, g->xn, x, wh, bh, g->T, c->d_model, c->rms_eps);
    return r->ops->rmsnorm(r, g->xn, x, wh, g->T, c->d_model, c->rms_eps);
}

/* accum (T, d) += the gradient through the sublayer's pre norm of x, given
 * g->dxn, the gradient of its output. */
static pb_status pre_norm_backward(grad_ctx *g, float *accum, const float *x, const float *w) {
    const pb_model_config *c = g->c;
    size_t n = (size_t)g->T * c->d_model;
    if (c->no_pre_norm) {
        for (size_t i = 0; i < n; i++)
            accum[i] += g->dxn[i];
        return PB_OK;
    }
    const float *wh;
    PB_TRY(vector(g, 0, w, (size_t)c->d_model, &wh));
    norm_backward(accum, x, wh, g->dxn, g->T, c->d_model, c->rms_eps, c->norm == PB_NORM_LAYER);
    return PB_OK;
}

/* g->dsub = the gradient of the sublayer's output before its post norm
 * (sandwich norms), given dout, the gradient of what it adds. */
static pb_status post_norm_backward(grad_ctx *g, const float *dout, pb_hook_kind post_in, int L, const float *w) {
    const pb_model_config *c = g->c;
    size_t n = (size_t)g->T * c->d_model;
    if (!c->sandwich_norm) {
        memcpy(g->dsub, dout, sizeof(float) * n);
        return PB_OK;
    }
    const float *wh;
    PB_TRY(vector(g, 0, w, (size_t)c->d_model, &wh));
    memset(g->dsub, 0, sizeof(float) * n);
    norm_backward(g->dsub, act(g, post_in, L), wh, dout, g->T, c->d_model, c->rms_eps, c->norm == PB_NORM_LAYER);
    return PB_OK;
}

/* accum += the gradient through layer L's MLP reading residual x, given
 * dout, the gradient of what the MLP adds. */
static pb_status mlp_backward(grad_ctx *g, int L, const float *x, const float *dout, float *accum) {
    const pb_model_config *c = g->c;
    const pb_layer_weights *W = &g->m->layers[L];
    int T = g->T, d = c->d_model, f = c->d_mlp;
    PB_TRY(post_norm_backward(g, dout, PB_HOOK_MLP_POST_IN, L, W->mlp_post_norm));
    PB_TRY(sublayer_input(g, x, W->mlp_norm, W->mlp_norm_b));
    /* the pre-activations by the model's own product (host memory) */
    pb_backend *own = g->m->backend;
    PB_TRY(own->ops->matmul(own, g->pre[1], g->xn, W->w_up.data, W->w_up.dtype, W->b_up, T, f, d));
    if (!c->plain_mlp)
        PB_TRY(own->ops->matmul(own, g->pre[0], g->xn, W->w_gate.data, W->w_gate.dtype, NULL, T, f, d));
    PB_TRY(matrix(g, &W->w_down, (size_t)d, (size_t)f));
    PB_TRY(matmul_dx(g, g->dh[0], g->dsub, T, d, f, 0)); /* d of the activations */
    for (size_t i = 0; i < (size_t)T * f; i++) {
        double a, da = activation_grad(c->activation, c->plain_mlp ? g->pre[1][i] : g->pre[0][i], &a);
        if (c->plain_mlp) {
            g->dh[1][i] = (float)(g->dh[0][i] * da);
        } else {
            g->dh[1][i] = (float)(g->dh[0][i] * a);                 /* d up */
            g->dh[0][i] = (float)(g->dh[0][i] * g->pre[1][i] * da); /* d gate */
        }
    }
    PB_TRY(matrix(g, &W->w_up, (size_t)f, (size_t)d));
    PB_TRY(matmul_dx(g, g->dxn, g->dh[1], T, f, d, 0));
    if (!c->plain_mlp) {
        PB_TRY(matrix(g, &W->w_gate, (size_t)f, (size_t)d));
        PB_TRY(matmul_dx(g, g->dxn, g->dh[0], T, f, d, 1));
    }
    return pre_norm_backward(g, accum, x, W->mlp_norm);
}

/* g->att[0..2] (double, (T, heads * head_dim)) = the gradients of the
 * rotated queries and keys and of the values through layer L's softmax
 * attention (scale, soft-cap, causal window), given dz (T, n_heads * head_dim). */
static void softmax_attention_backward(grad_ctx *g, int L, const float *dz) {
    const pb_model_config *c = g->c;
    int T = g->T, H = c->n_heads, hd = c->head_dim, group = c->n_heads / c->n_kv_heads;
    size_t qd = (size_t)H * hd, kvd = (size_t)c->n_kv_heads * hd;
    const float *q = act(g, PB_HOOK_ROT_Q, L), *k = act(g, PB_HOOK_ROT_K, L), *v = act(g, PB_HOOK_V, L);
    pb_capture_entry *dpattern = pb_capture_find(g->grads, PB_HOOK_PATTERN, L); /* (H, T, T), zeroed */
    pb_attention_params p = pb_model_attention_params(c, L);
    memset(g->att[0], 0, sizeof(double) * (size_t)T * qd);
    memset(g->att[1], 0, sizeof(double) * (size_t)T * kvd);
    memset(g->att[2], 0, sizeof(double) * (size_t)T * kvd);
    double *P = g->probs;
    for (int h = 0; h < H; h++)
        for (int i = 0; i < T; i++) {
            const float *qi = q + i * qd + (size_t)h * hd, *dzi = dz + i * qd + (size_t)h * hd;
            size_t kv0 = (size_t)(h / group) * hd;
            int first = pb_attention_first_key(&p, i);
            double max = -INFINITY, total = 0.0, dot_sum = 0.0;
            for (int j = first; j <= i; j++) {
                double s = 0.0;
                for (int e = 0; e < hd; e++)
                    s += (double)qi[e] * k[j * kvd + kv0 + e];
                s *= p.scale;
                P[j] = p.softcap > 0.0f ? p.softcap * tanh(s / p.softcap) : s;
                max = P[j] > max ? P[j] : max;
            }
            for (int j = first; j <= i; j++)
                total += (P[j] = exp(P[j] - max));
            for (int j = first; j <= i; j++) {
                double dp = 0.0;
                P[j] /= total;
                for (int e = 0; e < hd; e++) {
                    dp += (double)dzi[e] * v[j * kvd + kv0 + e];
                    g->att[2][j * kvd + kv0 + e] += P[j] * dzi[e];
                }
                dot_sum += P[j] * dp;
                P[j + T] = dp; /* P holds 2 T: probabilities, then their gradients */
                if (dpattern)
                    dpattern->data[((size_t)h * T + i) * T + j] = (float)dp;
            }
            for (int j = first; j <= i; j++) {
                double ds = P[j] * (P[j + T] - dot_sum);
                if (p.softcap > 0.0f) {
                    /* the capped score is log P + max + log total; recompute tanh from the raw score */
                    double s = 0.0;
                    for (int e = 0; e < hd; e++)
                        s += (double)qi[e] * k[j * kvd + kv0 + e];
                    double t = tanh(s * p.scale / p.softcap);
                    ds *= 1.0 - t * t;
                }
                ds *= p.scale;
                for (int e = 0; e < hd; e++) {
                    g->att[0][i * qd + (size_t)h * hd + e] += ds * k[j * kvd + kv0 + e];
                    g->att[1][j * kvd + kv0 + e] += ds * qi[e];
                }
            }
        }
}

/* out (T, heads * head_dim) = the gradient through RoPE and the q/k norms
 * of d (double, of the rotated rows) back to the projection's output
 * (pre, the hook_q/k activations); also stored at `hook`. */
static pb_status rotary_norm_backward(grad_ctx *g, int L, const double *d, int heads, const float *norm_w,
                                      pb_hook_kind hook, float *out) {
    const pb_model_config *c = g->c;
    int T = g->T, hd = c->head_dim, width = heads * hd;
    float *rot = g->dh[1];
    for (size_t i = 0; i < (size_t)T * width; i++)
        rot[i] = (float)d[i];
    if (c->position == PB_POSITION_ROPE) {
        /* the rotation's transpose: the same rotation at the negated angles */
        int dims = c->rotary_dims > 0 ? c->rotary_dims : hd;
        pb_backend *r = g->ref;
        const float *inv_freq = pb_model_inv_freq(g->m, L, T);
        PB_TRY(r->ops->rope(r, rot, g->neg_pos, inv_freq, T, heads, hd, dims, pb_rope_scale(c)));
    }
    if (!c->qk_norm) {
        memcpy(out, rot, sizeof(float) * (size_t)T * width);
    } else {
        const float *wh;
        int full = c->qk_norm_full;
        PB_TRY(vector(g, 0, norm_w, (size_t)(full ? width : hd), &wh));
        memset(out, 0, sizeof(float) * (size_t)T * width);
        norm_backward(out, act(g, hook, L), wh, rot, full ? T : T * heads, full ? width : hd, c->rms_eps, 0);
    }
    store(g, hook, L, out, (size_t)width);
    return PB_OK;
}

/* accum += the gradient through layer L's attention reading residual x,
 * given dout, the gradient of what the attention adds. */
static pb_status attention_backward(grad_ctx *g, int L, const float *x, const float *dout, float *accum) {
    const pb_model_config *c = g->c;
    const pb_layer_weights *W = &g->m->layers[L];
    int T = g->T, d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    PB_TRY(post_norm_backward(g, dout, PB_HOOK_ATTN_POST_IN, L, W->attn_post_norm));
    PB_TRY(matrix(g, &W->wo, (size_t)d, (size_t)qd));
    float *dz = g->dh[0];
    PB_TRY(matmul_dx(g, dz, g->dsub, T, d, qd, 0));
    store(g, PB_HOOK_Z, L, dz, (size_t)qd);
    softmax_attention_backward(g, L, dz);
    float *dq = g->dh[0], *dk = g->pre[0], *dv = g->pre[1]; /* dz is spent */
    PB_TRY(rotary_norm_backward(g, L, g->att[0], c->n_heads, W->q_norm, PB_HOOK_Q, dq));
    PB_TRY(rotary_norm_backward(g, L, g->att[1], c->n_kv_heads, W->k_norm, PB_HOOK_K, dk));
    for (size_t i = 0; i < (size_t)T * kvd; i++)
        dv[i] = (float)g->att[2][i];
    store(g, PB_HOOK_V, L, dv, (size_t)kvd);
    PB_TRY(matrix(g, &W->wq, (size_t)qd, (size_t)d));
    PB_TRY(matmul_dx(g, g->dxn, dq, T, qd, d, 0));
    PB_TRY(matrix(g, &W->wk, (size_t)kvd, (size_t)d));
    PB_TRY(matmul_dx(g, g->dxn, dk, T, kvd, d, 1));
    PB_TRY(matrix(g, &W->wv, (size_t)kvd, (size_t)d));
    PB_TRY(matmul_dx(g, g->dxn, dv, T, kvd, d, 1));
    return pre_norm_backward(g, accum, x, W->attn_norm);
}

/* g->dres[0]: the gradient of layer L's output on entry, of its input on
 * return (dres[1] is the scratch it is built in). */
static pb_status layer_backward(grad_ctx *g, int L) {
    const pb_model_config *c = g->c;
    size_t n = (size_t)g->T * c->d_model;
    float *dpost = g->dres[0], *dnext = g->dres[1];
    const float *pre = act(g, PB_HOOK_RESID_PRE, L);
    store(g, PB_HOOK_RESID_POST, L, dpost, (size_t)c->d_model);
    if (L == g->drop) {
        /* GradDrop: only the skip path; the layer's own points stay zero */
        store(g, PB_HOOK_RESID_MID, L, dpost, (size_t)c->d_model);
        store(g, PB_HOOK_RESID_PRE, L, dpost, (size_t)c->d_model);
        return PB_OK;
    }
    store(g, PB_HOOK_MLP_OUT, L, dpost, (size_t)c->d_model);
    memcpy(dnext, dpost, sizeof(float) * n);
    if (c->parallel_block) {
        /* out = in + attn(in) + mlp(in): both sublayers see dpost */
        store(g, PB_HOOK_ATTN_OUT, L, dpost, (size_t)c->d_model);
        PB_TRY(mlp_backward(g, L, pre, dpost, dnext));
        PB_TRY(attention_backward(g, L, pre, dpost, dnext));
    } else {
        PB_TRY(mlp_backward(g, L, act(g, PB_HOOK_RESID_MID, L), dpost, dnext));
        store(g, PB_HOOK_RESID_MID, L, dnext, (size_t)c->d_model);
        store(g, PB_HOOK_ATTN_OUT, L, dnext, (size_t)c->d_model);
        memcpy(dpost, dnext, sizeof(float) * n); /* dpost now: the residual between the sublayers */
        PB_TRY(attention_backward(g, L, pre, dpost, dnext));
    }
    g->dres[0] = dnext;
    g->dres[1] = dpost;
    store(g, PB_HOOK_RESID_PRE, L, dnext, (size_t)c->d_model);
    return PB_OK;
}

/* ---- the pass ------------------------------------------------------------- */

static pb_status check_supported(const pb_model *m, const pb_grad_metric *mt, int T) {
    if (!m->backend->ops->host_memory)
        return pb_fail(PB_ERR_UNSUPPORTED, "the gradient reference runs on the CPU backends, not %s",
                       m->backend->ops->name);
    if (pb_model_streams_weights(m))
        return pb_fail(PB_ERR_UNSUPPORTED, "the gradient reference needs resident weights, not --weights stream");
    if (!mt || mt->position < 0 || mt->position >= T)
        return pb_fail(PB_ERR_ARG, "gradient: metric position %d outside the %d tokens", mt ? mt->position : -1, T);
    if (mt->kind == PB_METRIC_PROJECTION && (!mt->direction || mt->layer < 0 || mt->layer >= m->cfg.n_layers))
        return pb_fail(PB_ERR_ARG, "gradient metric projection: needs a direction and a layer in [0, %d), not %d",
                       m->cfg.n_layers, mt->layer);
    return PB_OK;
}

/* ctx_alloc's sizes, in floats or doubles as named. */
typedef struct scratch_sizes {
    size_t largest, vec, wide, heads;
} scratch_sizes;

static scratch_sizes scratch_of(const pb_model_config *c) {
    size_t d = (size_t)c->d_model, f = (size_t)c->d_mlp;
    size_t qd = (size_t)c->n_heads * c->head_dim, wide = f > qd ? f : qd;
    size_t heads = (size_t)(c->n_heads > c->n_kv_heads ? c->n_heads : c->n_kv_heads) * c->head_dim;
    size_t largest = (size_t)c->vocab_size * d, qkv = (qd + 2 * (size_t)c->n_kv_heads * c->head_dim) * d;
    largest = largest > f * d ? largest : f * d;
    largest = largest > qkv ? largest : qkv;
    return (scratch_sizes){largest, wide > d ? wide : d, wide, heads};
}

size_t pb_grad_reference_scratch_bytes(const pb_model_config *c, int T) {
    scratch_sizes z = scratch_of(c);
    size_t t = (size_t)T, d = (size_t)c->d_model;
    /* ctx_alloc's buffers, matmul_dx's double sums, head_backward's logit gradient */
    return sizeof(float) * (z.largest + 2 * z.vec + 4 * t * z.wide + 5 * t * d) +
           sizeof(double) * (3 * t * z.heads + 2 * t + t * z.wide + (size_t)c->vocab_size) + sizeof(int32_t) * t;
}

static pb_status ctx_alloc(grad_ctx *g) {
    scratch_sizes z = scratch_of(g->c);
    size_t T = (size_t)g->T, d = (size_t)g->c->d_model;
    g->w = malloc(sizeof(float) * z.largest);
    int ok = g->w != NULL;
    for (int i = 0; i < 2; i++) {
        ok &= (g->vec[i] = malloc(sizeof(float) * z.vec)) != NULL;
        ok &= (g->pre[i] = malloc(sizeof(float) * T * z.wide)) != NULL;
        ok &= (g->dh[i] = malloc(sizeof(float) * T * z.wide)) != NULL;
        ok &= (g->dres[i] = malloc(sizeof(float) * T * d)) != NULL;
    }
    for (int i = 0; i < 3; i++)
        ok &= (g->att[i] = malloc(sizeof(double) * T * z.heads)) != NULL;
    ok &= (g->xn = malloc(sizeof(float) * T * d)) != NULL;
    ok &= (g->dsub = malloc(sizeof(float) * T * d)) != NULL;
    ok &= (g->dxn = malloc(sizeof(float) * T * d)) != NULL;
    ok &= (g->probs = malloc(sizeof(double) * 2 * T)) != NULL;
    ok &= (g->neg_pos = malloc(sizeof(int32_t) * T)) != NULL;
    for (size_t t = 0; ok && t < T; t++)
        g->neg_pos[t] = -(int32_t)t;
    return ok ? PB_OK : pb_fail(PB_ERR_OOM, "gradient: out of memory for %zu tokens' scratch", T);
}

static void ctx_free(grad_ctx *g) {
    free(g->w);
    for (int i = 0; i < 2; i++) {
        free(g->vec[i]);
        free(g->pre[i]);
        free(g->dh[i]);
        free(g->dres[i]);
    }
    for (int i = 0; i < 3; i++)
        free(g->att[i]);
    free(g->xn);
    free(g->dsub);
    free(g->dxn);
    free(g->probs);
    free(g->neg_pos);
    pb_backend_destroy(g->ref);
}

/* The kinds the backward reads at every layer of acts (grad_ref.h). */
static pb_status check_acts(const pb_model_config *c, pb_capture *acts) {
    static const pb_hook_kind kinds[] = {PB_HOOK_RESID_PRE,  PB_HOOK_Q,          PB_HOOK_K,
                                         PB_HOOK_V,          PB_HOOK_ROT_Q,      PB_HOOK_ROT_K,
                                         PB_HOOK_RESID_MID,  PB_HOOK_RESID_POST, PB_HOOK_ATTN_POST_IN,
                                         PB_HOOK_MLP_POST_IN};
    for (int L = 0; L < c->n_layers; L++)
        for (size_t k = 0; k < sizeof kinds / sizeof kinds[0]; k++)
            if (pb_hook_kind_exists(kinds[k], c) && !pb_capture_find(acts, kinds[k], L)) {
                char name[96];
                pb_hook_name(kinds[k], L, name, sizeof name);
                return pb_fail(PB_ERR_ARG, "gradient: the forward's captures lack %s (capture \"blocks.*\")", name);
            }
    return PB_OK;
}

pb_status pb_grad_reference(pb_model *m, const int32_t *ids, int T, const pb_grad_metric *metric, pb_capture *grads,
                            double *value) {
    if (!m || !ids || !grads || !value)
        return pb_fail(PB_ERR_ARG, "pb_grad_reference: model, ids, grads and value are required");
    PB_TRY(check_supported(m, metric, T));
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)m->cfg.vocab_size);
    if (!logits)
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for %d tokens' logits", T);
    pb_capture *acts = NULL;
    pb_status status = pb_capture_create(&acts, m, "blocks.*");
    if (status == PB_OK)
        status = pb_forward(m, ids, T, logits, acts);
    if (status == PB_OK)
        status = pb_grad_reference_from(m, T, acts, logits, metric, grads, value);
    pb_capture_free(acts);
    free(logits);
    return status;
}

pb_status pb_grad_reference_from(pb_model *m, int T, pb_capture *acts, const float *logits,
                                 const pb_grad_metric *metric, pb_capture *grads, double *value) {
    return pb_grad_reference_drop(m, T, acts, logits, metric, NULL, grads, value);
}

pb_status pb_grad_reference_drop(pb_model *m, int T, pb_capture *acts, const float *logits,
                                 const pb_grad_metric *metric, const pb_grad_drop *drop, pb_capture *grads,
                                 double *value) {
    int resume = drop && drop->resid_post_grad;
    int on_logits = !metric || metric->kind != PB_METRIC_PROJECTION;
    if (!m || !acts || !grads || (!resume && ((on_logits && !logits) || !value)))
        return pb_fail(PB_ERR_ARG, "gradient: model, acts, grads, and unless resumed logits and value, are required");
    PB_TRY(check_supported(m, metric, T));
    PB_TRY(check_acts(&m->cfg, acts));
    if (drop && (drop->layer < 0 || drop->layer >= m->cfg.n_layers))
        return pb_fail(PB_ERR_ARG, "gradient: drop layer %d outside the model's %d layers", drop->layer,
                       m->cfg.n_layers);
    grad_ctx g = {.m = m, .c = &m->cfg, .T = T, .drop = drop ? drop->layer : -1, .acts = acts, .grads = grads};
    pb_status status = pb_backend_ref_create(&g.ref);
    if (status == PB_OK)
        status = ctx_alloc(&g);
    if (status == PB_OK)
        status = pb_capture_prepare(grads, T);
    for (int i = 0; status == PB_OK && i < grads->count; i++)
        memset(grads->entries[i].data, 0, sizeof(float) * pb_capture_entry_floats(&grads->entries[i], T));
    int top = resume ? drop->layer : pb_grad_metric_top_layer(metric, m->cfg.n_layers);
    if (status == PB_OK && resume)
        memcpy(g.dres[0], drop->resid_post_grad, sizeof(float) * (size_t)T * (size_t)m->cfg.d_model);
    else if (status == PB_OK && !on_logits)
        projection_start(&g, metric, value);
    else if (status == PB_OK)
        status = head_backward(&g, metric, logits, value);
    for (int L = top; status == PB_OK && L >= 0; L--)
        status = layer_backward(&g, L);
    ctx_free(&g);
    return status;
}
