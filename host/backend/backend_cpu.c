/* The CPU backend: OpenBLAS sgemm for projections, OpenMP for the rest.
 * fp32 throughout; reductions accumulate in fp32 except where noted. */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/backward_host.h"
#include "formats/dtype.h"
#include "util/internal.h"

/* OpenBLAS exports this; cblas.h of some builds does not declare it. */
void openblas_set_num_threads(int num_threads);

typedef struct cpu_backend {
    pb_backend base;
    int n_threads;
} cpu_backend;

static int cpu_threads(pb_backend *backend) { return ((cpu_backend *)backend)->n_threads; }

/* OpenBLAS's thread count is the process's, and its sums depend on it:
 * set to this backend's before its products, as a backend made since (a
 * model loaded with other threads) may have changed it. */
static atomic_int blas_threads;
static void blas_use(pb_backend *backend) {
    int n = cpu_threads(backend);
    if (atomic_exchange(&blas_threads, n) != n)
        openblas_set_num_threads(n);
}

static void cpu_destroy(pb_backend *backend) { free(backend); }

static pb_status cpu_alloc(pb_backend *backend, void **out, size_t bytes) {
    /* 64-byte alignment keeps rows friendly to sgemm and vector loads. */
    size_t rounded = (bytes + 63) / 64 * 64;
    *out = aligned_alloc(64, rounded ? rounded : 64);
    if (!*out)
        return pb_fail(PB_ERR_OOM, "CPU backend: out of memory allocating %zu bytes", bytes);
    return PB_OK;
}

static void cpu_free(pb_backend *backend, void *ptr) { free(ptr); }

static pb_status cpu_memcpy(pb_backend *backend, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src)
        memmove(dst, src, bytes);
    return PB_OK;
}

static pb_status cpu_synchronize(pb_backend *backend) { return PB_OK; }

static pb_status cpu_embed(pb_backend *backend, float *out, const void *table, pb_dtype table_dtype, const int32_t *ids,
                           int T, int d, float scale) {
    size_t row_bytes = pb_dtype_bytes(table_dtype, (uint64_t)d);
    for (int t = 0; t < T; t++)
        pb_dtype_to_f32(table_dtype, out + (size_t)t * d, (const char *)table + (size_t)ids[t] * row_bytes, (size_t)d);
    for (size_t i = 0; scale != 1.0f && i < (size_t)T * d; i++)
        out[i] *= scale;
    return PB_OK;
}

static pb_status cpu_rmsnorm(pb_backend *backend, float *out, const float *x, const float *weight, int rows, int d,
                             float eps) {
#pragma omp parallel for num_threads(cpu_threads(backend)) if (rows > 4)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        float *o = out + (size_t)r * d;
        /* Double accumulation: the norm feeds every later layer, and rows
         * of a few thousand squares lose bits in fp32. */
        double sum = 0.0;
        for (int i = 0; i < d; i++)
            sum += (double)xr[i] * xr[i];
        float scale = (float)(1.0 / sqrt(sum / d + eps));
        if (weight)
            for (int i = 0; i < d; i++)
                o[i] = xr[i] * scale * weight[i];
        else
            for (int i = 0; i < d; i++)
                o[i] = xr[i] * scale;
    }
    return PB_OK;
}

/* Output columns per widened weight block of a 16-bit or quantised matmul. */
#define CPU_WIDEN_ROWS 256

/* out (rows, k) fp32 = rows of w_dtype from w, row_bytes apart, in
 * parallel (each row decodes alone: the result is the same). */
static void widen_rows(pb_backend *backend, pb_dtype w_dtype, float *out, const char *w, size_t row_bytes, int rows,
                       int k) {
#pragma omp parallel for num_threads(cpu_threads(backend)) if (rows >= 16)
    for (int r = 0; r < rows; r++)
        pb_dtype_to_f32(w_dtype, out + (size_t)r * k, w + (size_t)r * row_bytes, (size_t)k);
}

static pb_status cpu_matmul(pb_backend *backend, float *out, const float *x, const void *w, pb_dtype w_dtype,
                            const float *bias, int rows, int n, int k) {
    float beta = 0.0f;
    blas_use(backend);
    if (bias) {
        for (int r = 0; r < rows; r++)
            memcpy(out + (size_t)r * n, bias, sizeof(float) * (size_t)n);
        beta = 1.0f;
    }
    /* Always sgemm, never sgemv for one row: a row's result must not
     * depend on how many rows share the call, so a patching batch equals
     * its rows run one by one. */
    if (w_dtype == PB_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, n, k, 1.0f, x, k, w, k, beta, out, n);
        return PB_OK;
    }
    /* 16-bit weights: x rounded to w_dtype, weights widened block by block
     * (exact), then sgemm. Products of two 16-bit values are exact in fp32,
     * so only the summation order differs from a tensor-core GEMM.
     * Quantised weights: decoded block by block (the values a dequantised
     * model holds), x as it is. */
    size_t x_count = (size_t)rows * k, block = (size_t)CPU_WIDEN_ROWS * k;
    float *xr = malloc(sizeof(float) * (x_count + block));
    if (!xr)
        return pb_fail(PB_ERR_OOM, "CPU matmul: out of memory widening a %d x %d %s weight", n, k,
                       pb_dtype_name(w_dtype));
    float *wide = xr + x_count;
    for (size_t i = 0; i < x_count; i++)
        xr[i] = pb_dtype_round(w_dtype, x[i]);
    size_t row_bytes = pb_dtype_bytes(w_dtype, (uint64_t)k);
    for (int c0 = 0; c0 < n; c0 += CPU_WIDEN_ROWS) {
        int cols = n - c0 < CPU_WIDEN_ROWS ? n - c0 : CPU_WIDEN_ROWS;
        widen_rows(backend, w_dtype, wide, (const char *)w + (size_t)c0 * row_bytes, row_bytes, cols, k);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, cols, k, 1.0f, xr, k, wide, k, beta, out + c0, n);
    }
    free(xr);
    return PB_OK;
}

static pb_status cpu_rope(pb_backend *backend, float *x, const int32_t *positions, const float *inv_freq, int T,
                          int n_heads, int head_dim, int rotary_dims, float scale) {
    int half = rotary_dims / 2;
#pragma omp parallel for num_threads(cpu_threads(backend)) if (T > 4)
    for (int t = 0; t < T; t++) {
        float cosines[PB_MAX_ROPE_PAIRS], sines[PB_MAX_ROPE_PAIRS]; /* head_dim <= 1024 is checked at load */
        for (int i = 0; i < half; i++) {
            float angle = (float)positions[t] * inv_freq[i];
            cosines[i] = cosf(angle) * scale;
            sines[i] = sinf(angle) * scale;
        }
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                float a = v[i], b = v[i + half];
                v[i] = a * cosines[i] - b * sines[i];
                v[i + half] = b * cosines[i] + a * sines[i];
            }
        }
    }
    return PB_OK;
}

/* One query head over keys first .. n_keys - 1: keys j < split come from
 * (k_a, v_a), the rest from (k_b, v_b) at row j - split; rows are
 * kv_stride floats apart and the head's slice starts at `column`. Scores
 * shaped by a (scale, softcap), softmax with the maximum subtracted; o gets
 * zeros when there is no key. */
static void attend(float *o, const float *qv, int first, int n_keys, int split, const float *k_a, const float *v_a,
                   const float *k_b, const float *v_b, size_t kv_stride, size_t column, int head_dim,
                   const pb_attention_params *a, float *scores) {
    float max = -INFINITY;
    for (int j = first; j < n_keys; j++) {
        const float *kv = (j < split ? k_a + (size_t)j * kv_stride : k_b + (size_t)(j - split) * kv_stride) + column;
        float dot = 0.0f;
        for (int i = 0; i < head_dim; i++)
            dot += qv[i] * kv[i];
        scores[j] = dot * a->scale;
        if (a->softcap > 0.0f)
            scores[j] = a->softcap * tanhf(scores[j] / a->softcap);
        max = scores[j] > max ? scores[j] : max;
    }
    float total = 0.0f;
    for (int j = first; j < n_keys; j++) {
        scores[j] = expf(scores[j] - max);
        total += scores[j];
    }
    memset(o, 0, sizeof(float) * (size_t)head_dim);
    if (n_keys <= first)
        return;
    float inv_total = 1.0f / total;
    for (int j = first; j < n_keys; j++) {
        const float *vv = (j < split ? v_a + (size_t)j * kv_stride : v_b + (size_t)(j - split) * kv_stride) + column;
        float p = scores[j] * inv_total;
        for (int i = 0; i < head_dim; i++)
            o[i] += p * vv[i];
    }
}

static pb_status cpu_attention(pb_backend *backend, float *out, const float *q, const float *k, const float *v, int T,
                               int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                               const pb_attention_params *params) {
    int group = n_heads / n_kv_heads;
    size_t kvd = (size_t)n_kv_heads * head_dim;
    pb_attention_params a = pb_attention_params_or_default(params, head_dim);
    float *scores_all = malloc(sizeof(float) * (size_t)cpu_threads(backend) * (size_t)(T_kv > 0 ? T_kv : 1));
    if (!scores_all)
        return pb_fail(PB_ERR_OOM, "CPU attention: out of memory for %d x %d scores", cpu_threads(backend), T_kv);
#pragma omp parallel for collapse(2) schedule(dynamic, 4) num_threads(cpu_threads(backend))
    for (int t = 0; t < T; t++)
        for (int h = 0; h < n_heads; h++) {
            int n_keys = q_start + t + 1 < T_kv ? q_start + t + 1 : T_kv;
            attend(out + ((size_t)t * n_heads + h) * head_dim, q + ((size_t)t * n_heads + h) * head_dim,
                   pb_attention_first_key(&a, q_start + t), n_keys, T_kv, k, v, NULL, NULL, kvd,
                   (size_t)(h / group) * head_dim, head_dim, &a,
                   scores_all + (size_t)omp_get_thread_num() * (size_t)T_kv);
        }
    free(scores_all);
    return PB_OK;
}

/* One (job, query, head) per iteration, all jobs in one parallel region:
 * a batch of short suffixes would otherwise pay a region per job. */
static pb_status cpu_attention_jobs(pb_backend *backend, float *out, const float *q, const pb_attention_job *jobs,
                                    int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                    const pb_attention_params *params) {
    int group = n_heads / n_kv_heads, qd = n_heads * head_dim;
    size_t kvd = (size_t)n_kv_heads * head_dim;
    pb_attention_params a = pb_attention_params_or_default(params, head_dim);
    int64_t *first = malloc(sizeof(int64_t) * (size_t)(n_jobs + 1));
    int max_keys = 1;
    if (!first)
        return pb_fail(PB_ERR_OOM, "CPU attention: out of memory for %d jobs", n_jobs);
    first[0] = 0;
    for (int j = 0; j < n_jobs; j++) {
        first[j + 1] = first[j] + (int64_t)jobs[j].n * n_heads;
        if (jobs[j].p0 + jobs[j].n > max_keys)
            max_keys = jobs[j].p0 + jobs[j].n;
    }
    int threads = cpu_threads(backend);
    float *scores_all = malloc(sizeof(float) * (size_t)threads * (size_t)max_keys);
    if (!scores_all) {
        free(first);
        return pb_fail(PB_ERR_OOM, "CPU attention: out of memory for %d x %d scores", threads, max_keys);
    }
    int64_t total = first[n_jobs];
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads)
    for (int64_t item = 0; item < total; item++) {
        int lo = 0, hi = n_jobs - 1; /* the job holding this item */
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (first[mid] <= item)
                lo = mid;
            else
                hi = mid - 1;
        }
        const pb_attention_job *job = &jobs[lo];
        int t = (int)((item - first[lo]) / n_heads), h = (int)((item - first[lo]) % n_heads);
        size_t row = (size_t)(job->q_row + t) * qd + (size_t)h * head_dim;
        attend(out + row, q + row, pb_attention_first_key(&a, job->p0 + t), job->p0 + t + 1, job->p0, job->k_prefix,
               job->v_prefix, job->k_new, job->v_new, kvd, (size_t)(h / group) * head_dim, head_dim, &a,
               scores_all + (size_t)omp_get_thread_num() * (size_t)max_keys);
    }
    free(scores_all);
    free(first);
    return PB_OK;
}

/* act(g) in fp32, as torch computes each. */
static inline float activation(pb_activation act, float g) {
    switch (act) {
    case PB_ACTIVATION_GELU_TANH: return 0.5f * g * (1.0f + tanhf(0.7978845608f * (g + 0.044715f * g * g * g)));
    case PB_ACTIVATION_GELU: return 0.5f * g * (1.0f + erff(g * 0.70710678f));
    default: return g / (1.0f + expf(-g));
    }
}

static pb_status cpu_glu(pb_backend *backend, float *out, const float *gate, const float *up, size_t rows, size_t width,
                         size_t stride, pb_activation act) {
#pragma omp parallel for num_threads(cpu_threads(backend)) if (rows * width > 65536)
    for (size_t r = 0; r < rows; r++)
        for (size_t c = 0; c < width; c++)
            out[r * width + c] = activation(act, gate[r * stride + c]) * up[r * stride + c];
    return PB_OK;
}

static pb_status cpu_activate(pb_backend *backend, float *x, size_t n, pb_activation act) {
#pragma omp parallel for num_threads(cpu_threads(backend)) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        x[i] = activation(act, x[i]);
    return PB_OK;
}

/* Double accumulation of the mean and the variance, as in cpu_rmsnorm. */
static pb_status cpu_layernorm(pb_backend *backend, float *out, const float *x, const float *weight, const float *bias,
                               int rows, int d, float eps) {
#pragma omp parallel for num_threads(cpu_threads(backend)) if (rows > 4)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * d;
        float *o = out + (size_t)r * d;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < d; i++)
            mean += xr[i];
        mean /= d;
        for (int i = 0; i < d; i++)
            var += ((double)xr[i] - mean) * ((double)xr[i] - mean);
        double inv = 1.0 / sqrt(var / d + eps);
        /* centred in double: a large mean would eat float bits */
        for (int i = 0; i < d; i++)
            o[i] = (float)(((double)xr[i] - mean) * inv) * (weight ? weight[i] : 1.0f) + (bias ? bias[i] : 0.0f);
    }
    return PB_OK;
}

static pb_status cpu_softcap(pb_backend *backend, float *x, size_t n, float cap) {
#pragma omp parallel for num_threads(cpu_threads(backend)) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        x[i] = cap * tanhf(x[i] / cap);
    return PB_OK;
}

static pb_status cpu_add(pb_backend *backend, float *out, const float *a, const float *b, size_t n) {
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
    return PB_OK;
}

/* The reference arithmetic (metric.c per row), rows over the threads. */
static pb_status cpu_metric_rows(pb_backend *backend, double *out, const float *logits, int rows, int n_out,
                                 pb_metric_kind kind, const int32_t *positive, int n_positive, const int32_t *negative,
                                 int n_negative, const double *ref_logprobs, const int32_t *ref_row, int n_ref) {
    return pb_metric_rows_host(out, logits, rows, n_out, kind, positive, n_positive, negative, n_negative, ref_logprobs,
                               ref_row, n_ref, cpu_threads(backend));
}

static pb_status cpu_copy_regions(pb_backend *backend, const pb_copy_region *regions, int n_regions) {
    return pb_copy_regions_host(regions, n_regions);
}

static pb_status cpu_copy_rows(pb_backend *backend, float *dst, size_t dst_stride, const float *src, size_t src_stride,
                               size_t width, size_t rows) {
    return pb_copy_rows_host(dst, dst_stride, src, src_stride, width, rows);
}

/* dx (rows, k) (+)= dy (rows, n) @ w (n, k): sgemm with fp32 sums, as the
 * forward's products; 16-bit and quantised weights decoded block by block
 * (exact) and summed into dx block after block. */
static pb_status cpu_matmul_dx(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype,
                               int rows, int n, int k, int accumulate) {
    float beta = accumulate ? 1.0f : 0.0f;
    blas_use(backend);
    if (w_dtype == PB_DTYPE_F32) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, k, n, 1.0f, dy, n, w, k, beta, dx, k);
        return PB_OK;
    }
    float *wide = malloc(sizeof(float) * (size_t)CPU_WIDEN_ROWS * (size_t)k);
    if (!wide)
        return pb_fail(PB_ERR_OOM, "CPU gradient: out of memory widening a %d x %d %s weight", n, k,
                       pb_dtype_name(w_dtype));
    size_t row_bytes = pb_dtype_bytes(w_dtype, (uint64_t)k);
    for (int i0 = 0; i0 < n; i0 += CPU_WIDEN_ROWS, beta = 1.0f) {
        int block = n - i0 < CPU_WIDEN_ROWS ? n - i0 : CPU_WIDEN_ROWS;
        widen_rows(backend, w_dtype, wide, (const char *)w + (size_t)i0 * row_bytes, row_bytes, block, k);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, k, block, 1.0f, dy + i0, n, wide, k, beta, dx, k);
    }
    free(wide);
    return PB_OK;
}

static const pb_backend_ops cpu_ops = {
    .name = "cpu",
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_memcpy,
    .download = cpu_memcpy,
    .copy = cpu_memcpy,
    .synchronize = cpu_synchronize,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .matmul = cpu_matmul,
    .rope = cpu_rope,
    .attention = cpu_attention,
    .attention_jobs = cpu_attention_jobs,
    .glu = cpu_glu,
    .layernorm = cpu_layernorm,
    .activate = cpu_activate,
    .softcap = cpu_softcap,
    .add = cpu_add,
    .metric_rows = cpu_metric_rows,
    .host_memory = 1,
    .copy_regions = cpu_copy_regions,
    .copy_rows = cpu_copy_rows,
    .matmul_dx = cpu_matmul_dx,
    .norm_backward = pb_norm_backward_host,
    .glu_backward = pb_glu_backward_host,
    .attention_backward = pb_attention_backward_host,
};

pb_status pb_backend_cpu_create(pb_backend **out, int n_threads) {
    *out = NULL;
    cpu_backend *backend = calloc(1, sizeof *backend);
    if (!backend)
        return pb_fail(PB_ERR_OOM, "CPU backend: out of memory");
    backend->base.ops = &cpu_ops;
    backend->n_threads = n_threads > 0 ? n_threads : omp_get_num_procs();
    blas_use(&backend->base);
    *out = &backend->base;
    return PB_OK;
}
