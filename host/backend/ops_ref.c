/* The reference backend: every op as the plainest single-threaded loop, with
 * double accumulation. It is the oracle the OpenBLAS and CUDA ops are tested
 * against, so it favours obviousness over speed. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backward_host.h"
#include "formats/dtype.h"
#include "util/internal.h"
#include "patching/metric.h"

static void ref_destroy(pb_backend *backend) { free(backend); }

static pb_status ref_alloc(pb_backend *backend, void **out, size_t bytes) {
    *out = malloc(bytes ? bytes : 1);
    if (!*out)
        return pb_fail(PB_ERR_OOM, "reference backend: out of memory allocating %zu bytes", bytes);
    return PB_OK;
}

static void ref_free(pb_backend *backend, void *ptr) { free(ptr); }

static pb_status ref_memcpy(pb_backend *backend, void *dst, const void *src, size_t bytes) {
    if (bytes)
        memmove(dst, src, bytes);
    return PB_OK;
}

static pb_status ref_synchronize(pb_backend *backend) { return PB_OK; }

/* Row r of a (rows, k) weight stored as dtype, widened or decoded to fp32. */
static void weight_row(float *out, const void *w, pb_dtype dtype, size_t r, int k) {
    pb_dtype_to_f32(dtype, out, (const char *)w + r * pb_dtype_bytes(dtype, (uint64_t)k), (size_t)k);
}

static pb_status ref_embed(pb_backend *backend, float *out, const void *table, pb_dtype table_dtype, const int32_t *ids,
                           int T, int d, float scale) {
    for (int t = 0; t < T; t++) {
        float *row = out + (size_t)t * d;
        weight_row(row, table, table_dtype, (size_t)ids[t], d);
        for (int i = 0; i < d; i++)
            row[i] *= scale;
    }
    return PB_OK;
}

static pb_status ref_rmsnorm(pb_backend *backend, float *out, const float *x, const float *weight, int rows, int d,
                             float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        double sum = 0.0;
        for (int i = 0; i < d; i++)
            sum += (double)xr[i] * xr[i];
        float scale = (float)(1.0 / sqrt(sum / d + eps));
        for (int i = 0; i < d; i++)
            out[(size_t)r * d + i] = xr[i] * scale * (weight ? weight[i] : 1.0f);
    }
    return PB_OK;
}

static pb_status ref_layernorm(pb_backend *backend, float *out, const float *x, const float *weight, const float *bias,
                               int rows, int d, float eps) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < d; i++)
            mean += xr[i];
        mean /= d;
        for (int i = 0; i < d; i++)
            var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        double inv = 1.0 / sqrt(var / d + eps);
        for (int i = 0; i < d; i++)
            out[(size_t)r * d + i] = (float)(((double)xr[i] - mean) * inv * (weight ? weight[i] : 1.0) +
                                             (bias ? bias[i] : 0.0));
    }
    return PB_OK;
}

static pb_status ref_matmul(pb_backend *backend, float *out, const float *x, const void *w, pb_dtype w_dtype,
                            const float *bias, int rows, int n, int k) {
    /* x rounded to a 16-bit w_dtype (used as it is for f32 and quantised
     * weights), then each weight row decoded once */
    float *xr = malloc(sizeof(float) * ((size_t)rows * k + (size_t)k));
    if (!xr)
        return pb_fail(PB_ERR_OOM, "reference matmul: out of memory for %d x %d inputs", rows, k);
    float *wrow = xr + (size_t)rows * k;
    for (size_t i = 0; i < (size_t)rows * k; i++)
        xr[i] = pb_dtype_round(w_dtype, x[i]);
    for (int j = 0; j < n; j++) {
        weight_row(wrow, w, w_dtype, (size_t)j, k);
        for (int r = 0; r < rows; r++) {
            double acc = bias ? bias[j] : 0.0;
            for (int i = 0; i < k; i++)
                acc += (double)xr[(size_t)r * k + i] * wrow[i];
            out[(size_t)r * n + j] = (float)acc;
        }
    }
    free(xr);
    return PB_OK;
}

static pb_status ref_rope(pb_backend *backend, float *x, const int32_t *positions, const float *inv_freq, int T,
                          int n_heads, int head_dim, int rotary_dims, float scale) {
    int half = rotary_dims / 2;
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                /* The angle is formed in fp32, as transformers does, and
                 * the scale applied to cos and sin before they meet x. */
                float angle = (float)positions[t] * inv_freq[i];
                float c = cosf(angle) * scale, s = sinf(angle) * scale;
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    return PB_OK;
}

static pb_status ref_attention(pb_backend *backend, float *out, const float *q, const float *k, const float *v, int T,
                               int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                               const pb_attention_params *params) {
    int group = n_heads / n_kv_heads;
    pb_attention_params a = pb_attention_params_or_default(params, head_dim);
    double *scores = malloc(sizeof(double) * (size_t)(T_kv > 0 ? T_kv : 1));
    if (!scores)
        return pb_fail(PB_ERR_OOM, "reference attention: out of memory for %d scores", T_kv);
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            const float *qv = q + ((size_t)t * n_heads + h) * head_dim;
            int kvh = h / group;
            int n_keys = q_start + t + 1;
            if (n_keys > T_kv)
                n_keys = T_kv;
            int first = pb_attention_first_key(&a, q_start + t);
            double max = -INFINITY;
            for (int j = first; j < n_keys; j++) {
                const float *kv = k + ((size_t)j * n_kv_heads + kvh) * head_dim;
                double dot = 0.0;
                for (int i = 0; i < head_dim; i++)
                    dot += (double)qv[i] * kv[i];
                scores[j] = dot * a.scale;
                if (a.softcap > 0.0f)
                    scores[j] = a.softcap * tanh(scores[j] / a.softcap);
                if (scores[j] > max)
                    max = scores[j];
            }
            double total = 0.0;
            for (int j = first; j < n_keys; j++) {
                scores[j] = exp(scores[j] - max);
                total += scores[j];
            }
            float *o = out + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < head_dim; i++) {
                double acc = 0.0;
                for (int j = first; j < n_keys; j++)
                    acc += scores[j] * v[((size_t)j * n_kv_heads + kvh) * head_dim + i];
                /* A query with no visible key (cannot happen causally) yields zeros. */
                o[i] = n_keys > first ? (float)(acc / total) : 0.0f;
            }
        }
    free(scores);
    return PB_OK;
}

/* act(g) in double: SiLU g * sigmoid(g), GELU's tanh form
 * g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))), or exact GELU
 * g/2 (1 + erf(g / sqrt 2)). */
static double activation(pb_activation act, double g) {
    if (act == PB_ACTIVATION_GELU_TANH)
        return 0.5 * g * (1.0 + tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)));
    if (act == PB_ACTIVATION_GELU)
        return 0.5 * g * (1.0 + erf(g * 0.7071067811865476));
    return g / (1.0 + exp(-g));
}

static pb_status ref_activate(pb_backend *backend, float *x, size_t n, pb_activation act) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)activation(act, x[i]);
    return PB_OK;
}

static pb_status ref_glu(pb_backend *backend, float *out, const float *gate, const float *up, size_t rows, size_t width,
                         size_t stride, pb_activation act) {
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < width; c++)
            out[r * width + c] = (float)(activation(act, gate[r * stride + c]) * up[r * stride + c]);
    return PB_OK;
}

static pb_status ref_softcap(pb_backend *backend, float *x, size_t n, float cap) {
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(cap * tanh((double)x[i] / cap));
    return PB_OK;
}

static pb_status ref_add(pb_backend *backend, float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
    return PB_OK;
}

/* One row of metric_rows: NaN for a non-finite logit or an index outside
 * the row (the caller then names the entry). */
static double metric_row(const float *x, int n_out, pb_metric_kind kind, const int32_t *positive, int n_positive,
                         const int32_t *negative, int n_negative, const double *ref_logprobs, int32_t ref, int n_ref) {
    for (int v = 0; v < n_out; v++)
        if (!isfinite(x[v]))
            return NAN;
    for (int i = 0; i < n_positive; i++)
        if (positive[i] < 0 || positive[i] >= n_out)
            return NAN;
    switch (kind) {
    case PB_METRIC_LOGIT_DIFF: {
        for (int i = 0; i < n_negative; i++)
            if (negative[i] < 0 || negative[i] >= n_out)
                return NAN;
        /* pb_metric_logit_diff's sums, in its order, over gathered columns */
        double pos = 0.0, neg = 0.0;
        for (int i = 0; i < n_positive; i++)
            pos += x[positive[i]];
        for (int i = 0; i < n_negative; i++)
            neg += x[negative[i]];
        return pos / n_positive - neg / n_negative;
    }
    case PB_METRIC_LOGPROB: return pb_metric_logprob(x, n_out, positive, n_positive);
    case PB_METRIC_REFUSAL_SCORE: return pb_metric_refusal_score(x, n_out, positive, n_positive);
    default: /* PB_METRIC_KL */
        if (ref < 0 || ref >= n_ref)
            return NAN;
        return pb_metric_kl(ref_logprobs + (size_t)ref * n_out, x, n_out);
    }
}

pb_status pb_metric_rows_host(double *out, const float *logits, int rows, int n_out, pb_metric_kind kind,
                              const int32_t *positive, int n_positive, const int32_t *negative, int n_negative,
                              const double *ref_logprobs, const int32_t *ref_row, int n_ref, int n_threads) {
    if (rows < 0 || n_out <= 0)
        return pb_fail(PB_ERR_ARG, "metric_rows: %d rows of %d logits", rows, n_out);
    switch (kind) {
    case PB_METRIC_LOGIT_DIFF:
        if (n_positive <= 0 || n_negative <= 0 || !positive || !negative)
            return pb_fail(PB_ERR_ARG, "metric_rows: logit_diff needs positive and negative indices");
        break;
    case PB_METRIC_LOGPROB:
    case PB_METRIC_REFUSAL_SCORE:
        if (n_positive <= 0 || !positive)
            return pb_fail(PB_ERR_ARG, "metric_rows: %s needs a token set",
                           kind == PB_METRIC_LOGPROB ? "logprob" : "refusal_score");
        n_negative = 0;
        break;
    case PB_METRIC_KL:
        if (n_ref <= 0 || !ref_logprobs || !ref_row)
            return pb_fail(PB_ERR_ARG, "metric_rows: kl needs reference log-probabilities and rows");
        n_positive = n_negative = 0;
        break;
    default: return pb_fail(PB_ERR_UNSUPPORTED, "metric_rows: metric kind %d is computed on the host", (int)kind);
    }
    if (rows == 0)
        return PB_OK;
    if (!out || !logits)
        return pb_fail(PB_ERR_ARG, "metric_rows: out and logits are required");
#pragma omp parallel for num_threads(n_threads > 0 ? n_threads : 1) if (n_threads > 1 && rows > 1)
    for (int r = 0; r < rows; r++)
        out[r] = metric_row(logits + (size_t)r * n_out, n_out, kind, positive, n_positive, negative, n_negative,
                            ref_logprobs, kind == PB_METRIC_KL ? ref_row[r] : 0, n_ref);
    return PB_OK;
}

static pb_status ref_metric_rows(pb_backend *backend, double *out, const float *logits, int rows, int n_out,
                                 pb_metric_kind kind, const int32_t *positive, int n_positive, const int32_t *negative,
                                 int n_negative, const double *ref_logprobs, const int32_t *ref_row, int n_ref) {
    return pb_metric_rows_host(out, logits, rows, n_out, kind, positive, n_positive, negative, n_negative, ref_logprobs,
                               ref_row, n_ref, 1);
}

pb_status pb_copy_regions_host(const pb_copy_region *regions, int n_regions) {
    for (int i = 0; i < n_regions; i++)
        if (regions[i].n)
            memmove(regions[i].dst, regions[i].src, sizeof(float) * regions[i].n);
    return PB_OK;
}

static pb_status ref_copy_regions(pb_backend *backend, const pb_copy_region *regions, int n_regions) {
    return pb_copy_regions_host(regions, n_regions);
}

pb_status pb_copy_rows_host(float *dst, size_t dst_stride, const float *src, size_t src_stride, size_t width,
                            size_t rows) {
    for (size_t r = 0; width && r < rows; r++)
        memcpy(dst + r * dst_stride, src + r * src_stride, sizeof(float) * width);
    return PB_OK;
}

static pb_status ref_copy_rows(pb_backend *backend, float *dst, size_t dst_stride, const float *src, size_t src_stride,
                               size_t width, size_t rows) {
    return pb_copy_rows_host(dst, dst_stride, src, src_stride, width, rows);
}

static const pb_backend_ops ref_ops = {
    .name = "reference",
    .destroy = ref_destroy,
    .alloc = ref_alloc,
    .free = ref_free,
    .upload = ref_memcpy,
    .download = ref_memcpy,
    .copy = ref_memcpy,
    .synchronize = ref_synchronize,
    .embed = ref_embed,
    .rmsnorm = ref_rmsnorm,
    .matmul = ref_matmul,
    .rope = ref_rope,
    .attention = ref_attention,
    .glu = ref_glu,
    .layernorm = ref_layernorm,
    .activate = ref_activate,
    .softcap = ref_softcap,
    .add = ref_add,
    .metric_rows = ref_metric_rows,
    .host_memory = 1,
    .copy_regions = ref_copy_regions,
    .copy_rows = ref_copy_rows,
    .matmul_dx = pb_matmul_dx_host,
    .norm_backward = pb_norm_backward_host,
    .glu_backward = pb_glu_backward_host,
    .attention_backward = pb_attention_backward_host,
};

pb_status pb_backend_ref_create(pb_backend **out) {
    *out = NULL;
    pb_backend *backend = calloc(1, sizeof *backend);
    if (!backend)
        return pb_fail(PB_ERR_OOM, "reference backend: out of memory");
    backend->ops = &ref_ops;
    *out = backend;
    return PB_OK;
}
