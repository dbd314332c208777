/* The backward ops on host memory (backward_host.h), written from the
 * forward's definitions in ops_ref.c, every sum in double. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backward_host.h"
#include "formats/dtype.h"
#include "util/internal.h"

pb_status pb_matmul_dx_host(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype, int rows,
                            int n, int k, int accumulate) {
    size_t nk = (size_t)n * (size_t)k;
    float *wide = w_dtype == PB_DTYPE_F32 ? NULL : malloc(sizeof(float) * (nk ? nk : 1));
    double *acc = calloc((size_t)rows * (size_t)k + 1, sizeof(double));
    if (!acc || (w_dtype != PB_DTYPE_F32 && !wide)) {
        free(wide);
        free(acc);
        return pb_fail(PB_ERR_OOM, "gradient: out of memory for a (%d, %d) product", rows, k);
    }
    const float *wf = wide ? wide : (const float *)w;
    if (wide) /* rows are whole blocks: the matrix decodes as one run */
        pb_dtype_to_f32(w_dtype, wide, w, nk);
        /* one row per thread: the same sums on any thread count */
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        double *ar = acc + (size_t)r * k;
        for (int i = 0; i < n; i++) {
            double d = dy[(size_t)r * n + i];
            if (d == 0.0)
                continue;
            const float *wr = wf + (size_t)i * k;
            for (int j = 0; j < k; j++)
                ar[j] += d * wr[j];
        }
        float *out = dx + (size_t)r * k;
        for (int j = 0; j < k; j++)
            out[j] = (float)(accumulate ? out[j] + ar[j] : ar[j]);
    }
    free(wide);
    free(acc);
    return PB_OK;
}

pb_status pb_norm_backward_host(pb_backend *backend, float *dx, const float *x, const float *weight, const float *dy,
                                int rows, int d, float eps, int centred, int accumulate) {
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d, *gr = dy + (size_t)r * d;
        double mean = 0.0, ms = 0.0, gsum = 0.0, gx = 0.0;
        for (int i = 0; centred && i < d; i++)
            mean += xr[i];
        mean /= d;
        for (int i = 0; i < d; i++)
            ms += (xr[i] - mean) * (xr[i] - mean);
        double inv = 1.0 / sqrt(ms / d + eps);
        for (int i = 0; i < d; i++) {
            double gi = gr[i] * (weight ? weight[i] : 1.0);
            gsum += gi;
            gx += gi * (xr[i] - mean) * inv;
        }
        float *out = dx + (size_t)r * d;
        for (int i = 0; i < d; i++) {
            double gi = gr[i] * (weight ? weight[i] : 1.0), xhat = (xr[i] - mean) * inv;
            double di = centred ? inv * (gi - gsum / d - xhat * gx / d) : inv * (gi - xhat * gx / d);
            out[i] = accumulate ? out[i] + (float)di : (float)di;
        }
    }
    return PB_OK;
}

/* act'(x), and act(x) in *value, in double (ops_ref.c's definitions). */
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

pb_status pb_glu_backward_host(pb_backend *backend, float *d_gate, float *d_up, const float *dh, const float *gate,
                               const float *up, size_t n, pb_activation act) {
    for (size_t i = 0; i < n; i++) {
        double a, h = dh[i];
        if (!gate) {
            d_up[i] = (float)(h * activation_grad(act, up[i], &a));
            continue;
        }
        double da = activation_grad(act, gate[i], &a);
        d_up[i] = (float)(h * a);
        d_gate[i] = (float)(h * up[i] * da);
    }
    return PB_OK;
}

/* The raw score q.k * scale of one query and key, in double. */
static double raw_score(const float *q, const float *k, int hd, float scale) {
    double s = 0.0;
    for (int e = 0; e < hd; e++)
        s += (double)q[e] * k[e];
    return s * scale;
}

/* One query row (head h, query i): probabilities P[first..i] recomputed,
 * their gradients G = dz.v, then the scores' gradients into the double
 * accumulators aq (qd wide rows), ak, av (kvd wide rows). */
static void attention_row_backward(double *aq, double *ak, double *av, float *dpattern_row, double *P, double *G,
                                   const float *q, const float *k, const float *v, const float *dz, int i, int h,
                                   int group, int hd, size_t qd, size_t kvd, const pb_attention_params *p) {
    const float *qi = q + i * qd + (size_t)h * hd, *dzi = dz + i * qd + (size_t)h * hd;
    size_t kv0 = (size_t)(h / group) * hd;
    int first = pb_attention_first_key(p, i);
    double max = -INFINITY, total = 0.0, dot_sum = 0.0;
    for (int j = first; j <= i; j++) {
        double s = raw_score(qi, k + j * kvd + kv0, hd, p->scale);
        P[j] = p->softcap > 0.0f ? p->softcap * tanh(s / p->softcap) : s;
        max = P[j] > max ? P[j] : max;
    }
    for (int j = first; j <= i; j++)
        total += (P[j] = exp(P[j] - max));
    for (int j = first; j <= i; j++) {
        double dp = 0.0;
        P[j] /= total;
        for (int e = 0; e < hd; e++) {
            dp += (double)dzi[e] * v[j * kvd + kv0 + e];
            av[j * kvd + kv0 + e] += P[j] * dzi[e];
        }
        dot_sum += P[j] * dp;
        G[j] = dp;
        if (dpattern_row)
            dpattern_row[j] = (float)dp;
    }
    for (int j = first; j <= i; j++) {
        double ds = P[j] * (G[j] - dot_sum);
        if (p->softcap > 0.0f) {
            double t = tanh(raw_score(qi, k + j * kvd + kv0, hd, p->scale) / p->softcap);
            ds *= 1.0 - t * t;
        }
        ds *= p->scale;
        for (int e = 0; e < hd; e++) {
            aq[i * qd + (size_t)h * hd + e] += ds * k[j * kvd + kv0 + e];
            ak[j * kvd + kv0 + e] += ds * qi[e];
        }
    }
}

pb_status pb_attention_backward_host(pb_backend *backend, float *dq, float *dk, float *dv, float *dpattern,
                                     const float *q, const float *k, const float *v, const float *dz, int T,
                                     int n_heads, int n_kv_heads, int head_dim, const pb_attention_params *params) {
    pb_attention_params p = pb_attention_params_or_default(params, head_dim);
    size_t qd = (size_t)n_heads * head_dim, kvd = (size_t)n_kv_heads * head_dim, t = (size_t)T;
    double *aq = calloc(t * qd + 2 * t * kvd + 2 * t + 1, sizeof(double));
    if (!aq)
        return pb_fail(PB_ERR_OOM, "attention backward: out of memory for %d tokens", T);
    double *ak = aq + t * qd, *av = ak + t * kvd, *P = av + t * kvd, *G = P + t;
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < T; i++) {
            float *row = dpattern ? dpattern + ((size_t)h * t + (size_t)i) * t : NULL;
            attention_row_backward(aq, ak, av, row, P, G, q, k, v, dz, i, h, n_heads / n_kv_heads, head_dim, qd, kvd,
                                   &p);
        }
    for (size_t i = 0; i < t * qd; i++)
        dq[i] = (float)aq[i];
    for (size_t i = 0; i < t * kvd; i++) {
        dk[i] = (float)ak[i];
        dv[i] = (float)av[i];
    }
    free(aq);
    return PB_OK;
}
