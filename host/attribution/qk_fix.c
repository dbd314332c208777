/* AtP*'s QK fix (qk_fix.h): the patched rows of one site through the q/k
 * norm and RoPE by the model's own ops, then per touched attention row
 * the exact softmax before and after, dotted with the pattern's gradient. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/qk_fix.h"
#include "backend/backend.h"
#include "model/capture.h"
#include "model/model.h"
#include "util/internal.h"

struct pb_qk_fix {
    pb_model *m;
    int T;
    pb_capture *base, *source;
    float *rot;      /* (T, widest projection) the site's patched rows, rotated */
    int32_t *pos;    /* (T) the site's base positions */
    char *changed;   /* (T, max heads) which heads of which patched row moved */
    int *row_of;     /* (T) base position -> patched row index, or -1 */
    double *base_p;  /* (T) one attention row's probabilities, base */
    double *patch_p; /* (T) the same row patched */
    /* a device backend's copies of rot and pos (NULL on host memory): the
     * norm and RoPE run there, by the kernels the forward ran, so that an
     * unpatched head comes back with the forward's bits */
    float *dev_rot;
    int32_t *dev_pos;
};

void pb_qk_fix_free(pb_qk_fix *f) {
    if (!f)
        return;
    free(f->rot);
    free(f->pos);
    free(f->changed);
    free(f->row_of);
    free(f->base_p);
    free(f->patch_p);
    pb_backend *b = f->m ? f->m->backend : NULL;
    if (b) {
        b->ops->free(b, f->dev_rot);
        b->ops->free(b, f->dev_pos);
    }
    free(f);
}

pb_status pb_qk_fix_create(pb_qk_fix **out, pb_model *m, int base_T, pb_capture *base, pb_capture *source) {
    *out = NULL;
    const pb_model_config *c = &m->cfg;
    size_t T = (size_t)base_T, heads = (size_t)(c->n_heads > c->n_kv_heads ? c->n_heads : c->n_kv_heads);
    size_t width = heads * (size_t)c->head_dim;
    pb_qk_fix *f = calloc(1, sizeof *f);
    if (!f)
        return pb_fail(PB_ERR_OOM, "qk fix: out of memory");
    *f = (pb_qk_fix){.m = m, .T = base_T, .base = base, .source = source};
    f->rot = malloc(sizeof(float) * T * width);
    f->pos = malloc(sizeof(int32_t) * T);
    f->changed = malloc(T * heads);
    f->row_of = malloc(sizeof(int) * T);
    f->base_p = malloc(sizeof(double) * T);
    f->patch_p = malloc(sizeof(double) * T);
    if (!f->rot || !f->pos || !f->changed || !f->row_of || !f->base_p || !f->patch_p) {
        pb_qk_fix_free(f);
        return pb_fail(PB_ERR_OOM, "qk fix: out of memory for %d tokens", base_T);
    }
    pb_backend *b = m->backend;
    pb_status status = PB_OK;
    if (!b->ops->host_memory) {
        status = b->ops->alloc(b, (void **)&f->dev_rot, sizeof(float) * T * width);
        if (status == PB_OK)
            status = b->ops->alloc(b, (void **)&f->dev_pos, sizeof(int32_t) * T);
    }
    if (status != PB_OK) {
        pb_qk_fix_free(f);
        return status;
    }
    *out = f;
    return PB_OK;
}

/* f->rot (n, width) through the layer's q/k norm and RoPE, in place, by
 * the model's backend (on a device: there and back). */
static pb_status norm_and_rotate(pb_qk_fix *f, int is_q, int layer, int n, int heads) {
    pb_model *m = f->m;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    int hd = c->head_dim, width = heads * hd;
    size_t bytes = sizeof(float) * (size_t)n * (size_t)width;
    float *rot = f->dev_rot ? f->dev_rot : f->rot;
    int32_t *pos = f->dev_pos ? f->dev_pos : f->pos;
    if (f->dev_rot) {
        PB_TRY(b->ops->upload(b, f->dev_rot, f->rot, bytes));
        PB_TRY(b->ops->upload(b, f->dev_pos, f->pos, sizeof(int32_t) * (size_t)n));
    }
    if (c->qk_norm) {
        const float *w = is_q ? m->layers[layer].q_norm : m->layers[layer].k_norm;
        if (c->qk_norm_full)
            PB_TRY(b->ops->rmsnorm(b, rot, rot, w, n, width, c->rms_eps));
        else
            PB_TRY(b->ops->rmsnorm(b, rot, rot, w, n * heads, hd, c->rms_eps));
    }
    if (c->position == PB_POSITION_ROPE) {
        int dims = c->rotary_dims > 0 ? c->rotary_dims : hd;
        PB_TRY(b->ops->rope(b, rot, pos, pb_model_inv_freq(m, layer, f->T), n, heads, hd, dims, pb_rope_scale(c)));
    }
    return f->dev_rot ? b->ops->download(b, f->rot, f->dev_rot, bytes) : PB_OK;
}

/* f->rot (n, heads * head_dim): the base rows at the positions with one
 * head's slice from the source, through the norm and RoPE of the layer;
 * f->changed: which heads differ from the base's rotated rows. */
static pb_status patched_rows(pb_qk_fix *f, int is_q, int layer, int head, const int *positions,
                              const int *source_positions, int n) {
    const pb_model_config *c = &f->m->cfg;
    int hd = c->head_dim, heads = is_q ? c->n_heads : c->n_kv_heads, width = heads * hd;
    const float *pre = pb_capture_find_data(f->base, is_q ? PB_HOOK_Q : PB_HOOK_K, layer);
    const float *src = pb_capture_find_data(f->source, is_q ? PB_HOOK_Q : PB_HOOK_K, layer);
    const float *rot = pb_capture_find_data(f->base, is_q ? PB_HOOK_ROT_Q : PB_HOOK_ROT_K, layer);
    if (!pre || !src || !rot)
        return pb_fail(PB_ERR_ARG, "qk fix: the runs' captures lack layer %d's queries or keys", layer);
    for (int i = 0; i < n; i++) {
        float *row = f->rot + (size_t)i * width;
        memcpy(row, pre + (size_t)positions[i] * width, sizeof(float) * (size_t)width);
        memcpy(row + (size_t)head * hd, src + (size_t)source_positions[i] * width + (size_t)head * hd,
               sizeof(float) * (size_t)hd);
        f->pos[i] = positions[i];
    }
    PB_TRY(norm_and_rotate(f, is_q, layer, n, heads));
    for (int i = 0; i < n; i++)
        for (int h = 0; h < heads; h++)
            f->changed[(size_t)i * heads + h] = memcmp(f->rot + (size_t)i * width + (size_t)h * hd,
                                                       rot + (size_t)positions[i] * width + (size_t)h * hd,
                                                       sizeof(float) * (size_t)hd) != 0;
    return PB_OK;
}

/* One attention score: q.k scaled, soft-capped as the layer does. */
static double score(const pb_attention_params *p, const float *q, const float *k, int hd) {
    double s = 0.0;
    for (int e = 0; e < hd; e++)
        s += (double)q[e] * k[e];
    s *= p->scale;
    return p->softcap > 0.0f ? p->softcap * tanh(s / p->softcap) : s;
}

/* probs[first..t] = softmax of the scores in place. */
static void softmax_row(double *probs, int first, int t) {
    double max = -INFINITY, total = 0.0;
    for (int j = first; j <= t; j++)
        max = probs[j] > max ? probs[j] : max;
    for (int j = first; j <= t; j++)
        total += (probs[j] = exp(probs[j] - max));
    for (int j = first; j <= t; j++)
        probs[j] /= total;
}

/* sum over keys of (patched - base) probability times its gradient for the
 * row of query t in head h, its keys' scores already in the buffers. */
static double row_change(pb_qk_fix *f, int first, int t, const float *dp_row) {
    softmax_row(f->base_p, first, t);
    softmax_row(f->patch_p, first, t);
    double total = 0.0;
    for (int j = first; j <= t; j++)
        total += (f->patch_p[j] - f->base_p[j]) * dp_row[j];
    return total;
}

static int row_has_gradient(const float *dp_row, int first, int t) {
    for (int j = first; j <= t; j++)
        if (dp_row[j] != 0.0f)
            return 1;
    return 0;
}

/* Query patches: each patched row's moved heads, its own keys unchanged. */
static double query_estimate(pb_qk_fix *f, int layer, int n, const float *dpattern) {
    const pb_model_config *c = &f->m->cfg;
    int T = f->T, hd = c->head_dim, H = c->n_heads, group = c->n_heads / c->n_kv_heads;
    size_t qd = (size_t)H * hd, kvd = (size_t)c->n_kv_heads * hd;
    const float *q = pb_capture_find_data(f->base, PB_HOOK_ROT_Q, layer),
                *k = pb_capture_find_data(f->base, PB_HOOK_ROT_K, layer);
    pb_attention_params p = pb_model_attention_params(c, layer);
    double total = 0.0;
    for (int i = 0; i < n; i++)
        for (int h = 0; h < H; h++) {
            int t = f->pos[i], first = pb_attention_first_key(&p, t);
            const float *dp_row = dpattern + ((size_t)h * T + t) * T;
            if (!f->changed[(size_t)i * H + h] || !row_has_gradient(dp_row, first, t))
                continue;
            const float *qb = q + (size_t)t * qd + (size_t)h * hd, *qp = f->rot + (size_t)i * qd + (size_t)h * hd;
            for (int j = first; j <= t; j++) {
                const float *kj = k + (size_t)j * kvd + (size_t)(h / group) * hd;
                f->base_p[j] = score(&p, qb, kj, hd);
                f->patch_p[j] = score(&p, qp, kj, hd);
            }
            total += row_change(f, first, t, dp_row);
        }
    return total;
}

/* Key patches: every row of every query head whose window holds a moved key. */
static double key_estimate(pb_qk_fix *f, int layer, int n, const float *dpattern) {
    const pb_model_config *c = &f->m->cfg;
    int T = f->T, hd = c->head_dim, H = c->n_heads, Hkv = c->n_kv_heads, group = c->n_heads / c->n_kv_heads;
    size_t qd = (size_t)H * hd, kvd = (size_t)Hkv * hd;
    const float *q = pb_capture_find_data(f->base, PB_HOOK_ROT_Q, layer),
                *k = pb_capture_find_data(f->base, PB_HOOK_ROT_K, layer);
    pb_attention_params p = pb_model_attention_params(c, layer);
    for (int t = 0; t < T; t++)
        f->row_of[t] = -1;
    for (int i = 0; i < n; i++)
        f->row_of[f->pos[i]] = i;
    double total = 0.0;
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) {
            int first = pb_attention_first_key(&p, t), g = h / group, touched = 0;
            const float *dp_row = dpattern + ((size_t)h * T + t) * T;
            for (int j = first; j <= t && !touched; j++)
                touched = f->row_of[j] >= 0 && f->changed[(size_t)f->row_of[j] * Hkv + g];
            if (!touched || !row_has_gradient(dp_row, first, t))
                continue;
            const float *qt = q + (size_t)t * qd + (size_t)h * hd;
            for (int j = first; j <= t; j++) {
                const float *kb = k + (size_t)j * kvd + (size_t)g * hd;
                f->base_p[j] = score(&p, qt, kb, hd);
                f->patch_p[j] = f->row_of[j] >= 0
                                    ? score(&p, qt, f->rot + (size_t)f->row_of[j] * kvd + (size_t)g * hd, hd)
                                    : f->base_p[j];
            }
            total += row_change(f, first, t, dp_row);
        }
    return total;
}

pb_status pb_qk_fix_estimate(pb_qk_fix *f, pb_component component, int layer, int head, const int *positions,
                             const int *source_positions, int n, const float *dpattern, double *estimate) {
    *estimate = 0.0;
    if (component != PB_COMPONENT_Q && component != PB_COMPONENT_K)
        return pb_fail(PB_ERR_ARG, "qk fix: %s is neither a query nor a key", pb_component_name(component));
    if (!dpattern)
        return pb_fail(PB_ERR_ARG, "qk fix: no pattern gradient for layer %d", layer);
    if (n <= 0)
        return PB_OK;
    int is_q = component == PB_COMPONENT_Q;
    PB_TRY(patched_rows(f, is_q, layer, head, positions, source_positions, n));
    *estimate = is_q ? query_estimate(f, layer, n, dpattern) : key_estimate(f, layer, n, dpattern);
    return PB_OK;
}
