/* The C side of the emulated launchers (pb_cuda_emu.h): kernels.cuh's
 * launchers have C++ linkage, the test is C. */
#include <string.h>
#include <stdlib.h>

#include "backend_cuda_impl.cuh"

extern "C" {
#include "pb_cuda_emu.h"
}

int pb_emu_embed(float *out, const float *table, const int32_t *ids, int T, int d, float scale) {
    return pb_cuda_launch_embed(nullptr, out, table, ids, T, d, scale);
}

int pb_emu_embed16(float *out, const uint16_t *table, int is_bf16, const int32_t *ids, int T, int d, float scale) {
    return pb_cuda_launch_embed16(nullptr, out, table, is_bf16, ids, T, d, scale);
}

int pb_emu_round16(uint16_t *out, const float *x, size_t n, int is_bf16) {
    return pb_cuda_launch_round16(nullptr, out, x, n, is_bf16);
}

int pb_emu_rmsnorm(float *out, const float *x, const float *weight, int rows, int d, float eps) {
    return pb_cuda_launch_rmsnorm(nullptr, out, x, weight, rows, d, eps);
}

int pb_emu_add_bias(float *out, const float *bias, int rows, int n) {
    return pb_cuda_launch_add_bias(nullptr, out, bias, rows, n);
}

int pb_emu_layernorm(float *out, const float *x, const float *weight, const float *bias, int rows, int d, float eps) {
    return pb_cuda_launch_layernorm(nullptr, out, x, weight, bias, rows, d, eps);
}

int pb_emu_rope(float *x, const int32_t *positions, const float *inv_freq, int T, int n_heads, int head_dim,
                int rotary_dims, float scale) {
    return pb_cuda_launch_rope(nullptr, x, positions, inv_freq, T, n_heads, head_dim, rotary_dims, scale);
}

size_t pb_emu_attention_shared_bytes(int head_dim) { return pb_cuda_attention_shared_bytes(head_dim); }

int pb_emu_attention(float *out, const float *q, const float *k, const float *v, int T, int q_start, int n_heads,
                     int n_kv_heads, int head_dim, const pb_attention_params *params) {
    return pb_cuda_launch_attention(nullptr, out, q, k, v, T, q_start, n_heads, n_kv_heads, head_dim,
                                    pb_cuda_attention_score_of(params, head_dim));
}

static int g_attention_tiled; /* pb_emu_set_attention_tiled */

void pb_emu_set_attention_tiled(int tiled) { g_attention_tiled = tiled; }

int pb_emu_attention_tiled_ok(int head_dim) { return pb_cuda_attention_tiled_ok(head_dim); }

int pb_emu_attention_jobs(float *out, const float *q, const pb_attention_job *jobs, int n_jobs, int n_heads,
                          int n_kv_heads, int head_dim, const pb_attention_params *params) {
    pb_cuda_attention_job *desc = (pb_cuda_attention_job *)calloc((size_t)(n_jobs ? n_jobs : 1), sizeof *desc);
    if (!desc)
        return cudaErrorInvalidValue;
    int64_t rows = 0;
    /* what backend_cuda.cu does */
    pb_cuda_describe_jobs(desc, jobs, n_jobs, pb_cuda_attention_tile_queries(n_heads, n_kv_heads), &rows, NULL, NULL);
    const int tiled = g_attention_tiled && pb_cuda_attention_tiled_ok(head_dim);
    const pb_cuda_attention_score score = pb_cuda_attention_score_of(params, head_dim);
    const cudaError_t error = rows == 0 ? cudaSuccess
                              : tiled   ? pb_cuda_launch_attention_tiled(nullptr, out, q, desc, n_jobs, n_heads,
                                                                         n_kv_heads, head_dim, score)
                                        : pb_cuda_launch_attention_jobs(nullptr, out, q, desc, n_jobs, n_heads,
                                                                        n_kv_heads, head_dim, score);
    free(desc);
    return error;
}

long long pb_emu_attention_tiled_key_tiles(const pb_attention_job *jobs, int n_jobs, int n_heads, int n_kv_heads,
                                           int window) {
    pb_cuda_attention_job *desc = (pb_cuda_attention_job *)calloc((size_t)(n_jobs ? n_jobs : 1), sizeof *desc);
    if (!desc)
        return -1;
    const int tile_q = pb_cuda_attention_tile_queries(n_heads, n_kv_heads);
    pb_cuda_describe_jobs(desc, jobs, n_jobs, tile_q, NULL, NULL, NULL);
    const long long tiles = (long long)pb_cuda_attention_tiled_key_tiles(desc, n_jobs, tile_q, window);
    free(desc);
    return tiles;
}

int pb_emu_glu(float *out, const float *gate, const float *up, size_t rows, size_t width, size_t stride,
               pb_activation act) {
    pb_cuda_activation kernel_act;
    if (!pb_cuda_activation_of(act, &kernel_act)) /* as backend_cuda.cu refuses it */
        return cudaErrorInvalidValue;
    return pb_cuda_launch_glu(nullptr, out, gate, up, rows, width, stride, kernel_act);
}

int pb_emu_activate(float *x, size_t n, pb_activation act) {
    pb_cuda_activation kernel_act;
    if (!pb_cuda_activation_of(act, &kernel_act))
        return cudaErrorInvalidValue;
    return pb_cuda_launch_activate(nullptr, x, n, kernel_act);
}

int pb_emu_softcap(float *x, size_t n, float cap) { return pb_cuda_launch_softcap(nullptr, x, n, cap); }

int pb_emu_copy_regions(const pb_copy_region *regions, int n_regions) {
    /* as backend_cuda.cu's pb_cuda_op_copy_regions calls it */
    return pb_cuda_launch_copy_regions(nullptr, (const pb_cuda_copy_region *)regions, n_regions);
}

int pb_emu_add(float *out, const float *a, const float *b, size_t n) {
    return pb_cuda_launch_add(nullptr, out, a, b, n);
}

int pb_emu_dequant_rows(float *out, const void *src, uint32_t ggml_type, size_t row_bytes, int rows, int k) {
    return pb_cuda_launch_dequant_rows(nullptr, out, src, ggml_type, row_bytes, rows, k);
}

int pb_emu_dequant_gather(float *out, const void *table, uint32_t ggml_type, const int32_t *ids, int T, int d,
                          float scale) {
    return pb_cuda_launch_dequant_gather(nullptr, out, table, ggml_type, ids, T, d, scale);
}

static int g_sync_launches; /* pb_emu_set_sync_launches */

void pb_emu_set_sync_launches(int sync) { g_sync_launches = sync; }

pb_status pb_emu_sync_mode_parse(const char *value, int *sync_launches) {
    return pb_cuda_sync_mode_parse(value, sync_launches);
}

pb_status pb_emu_metric_rows(double *out, const float *logits, int rows, int n_out, pb_metric_kind kind,
                             const int32_t *positive, int n_positive, const int32_t *negative, int n_negative,
                             const double *ref_logprobs, const int32_t *ref_row, int n_ref) {
    pb_cuda_backend self = {};
    self.base.impl = &self;
    self.device = 0;
    self.sync_launches = g_sync_launches;
    return pb_cuda_metric_rows(&self.base, out, logits, rows, n_out, kind, positive, n_positive, negative, n_negative,
                               ref_logprobs, ref_row, n_ref);
}

int pb_emu_norm_backward(float *dx, const float *x, const float *weight, const float *dy, int rows, int d, float eps,
                         int centred, int accumulate) {
    return pb_cuda_launch_norm_backward(nullptr, dx, x, weight, dy, rows, d, eps, centred, accumulate);
}

int pb_emu_glu_backward(float *d_gate, float *d_up, const float *dh, const float *gate, const float *up, size_t n,
                        pb_activation act) {
    pb_cuda_activation kernel_act;
    if (!pb_cuda_activation_of(act, &kernel_act))
        return cudaErrorInvalidValue;
    return pb_cuda_launch_glu_backward(nullptr, d_gate, d_up, dh, gate, up, n, kernel_act);
}

int pb_emu_attention_backward(float *dq, float *dk, float *dv, float *dpattern, const float *q, const float *k,
                              const float *v, const float *dz, int T, int n_heads, int n_kv_heads, int head_dim,
                              const pb_attention_params *params, int chunk_kv_heads) {
    const size_t n = pb_cuda_attention_backward_scratch(T, chunk_kv_heads * (n_heads / n_kv_heads));
    double *scratch = (double *)malloc(sizeof(double) * (n ? n : 1));
    if (!scratch)
        return cudaErrorMemoryAllocation;
    /* poisoned: the kernels must read only what they wrote */
    for (size_t i = 0; i < n; i++)
        scratch[i] = NAN;
    int status = pb_cuda_launch_attention_backward(nullptr, dq, dk, dv, dpattern, q, k, v, dz, scratch, chunk_kv_heads,
                                                   T, n_heads, n_kv_heads, head_dim,
                                                   pb_cuda_attention_score_of(params, head_dim));
    free(scratch);
    return status;
}
