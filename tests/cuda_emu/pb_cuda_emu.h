/* C entry points to the cuda/ kernel launchers compiled for the CPU
 * emulator (launchers.cpp), for tests/test_cuda_emulated.c. Pointers are
 * host memory; each returns the launcher's cudaError_t as an int (0:
 * success). See kernels.cuh for the shapes. */
#ifndef PB_CUDA_EMU_H
#define PB_CUDA_EMU_H

#include <stddef.h>
#include <stdint.h>

#include "backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Threads of a block run forward (0, 1, ...) or in reverse between
 * barriers: a race-free kernel gives the same bits either way. */
void pb_emu_set_reverse_order(int reverse);

int pb_emu_embed(float *out, const float *table, const int32_t *ids, int T, int d, float scale);
int pb_emu_embed16(float *out, const uint16_t *table, int is_bf16, const int32_t *ids, int T, int d, float scale);
int pb_emu_round16(uint16_t *out, const float *x, size_t n, int is_bf16);
int pb_emu_rmsnorm(float *out, const float *x, const float *weight, int rows, int d, float eps);
int pb_emu_add_bias(float *out, const float *bias, int rows, int n);
int pb_emu_layernorm(float *out, const float *x, const float *weight, const float *bias, int rows, int d, float eps);
int pb_emu_rope(float *x, const int32_t *positions, const float *inv_freq, int T, int n_heads, int head_dim,
                int rotary_dims, float scale);
size_t pb_emu_attention_shared_bytes(int head_dim);
/* params as backend.h's (NULL: the defaults), converted as backend_cuda.cu
 * does. */
int pb_emu_attention(float *out, const float *q, const float *k, const float *v, int T, int q_start, int n_heads,
                     int n_kv_heads, int head_dim, const pb_attention_params *params);
/* Builds the kernel's descriptors from `jobs` as backend_cuda.cu does
 * (`first` = the sum of n over the jobs before, `first_tile` likewise in
 * tiles) and launches the one-block-per-query kernel, or, after
 * pb_emu_set_attention_tiled(1) and where it applies
 * (pb_emu_attention_tiled_ok), the tiled one. */
void pb_emu_set_attention_tiled(int tiled);
int pb_emu_attention_tiled_ok(int head_dim);
int pb_emu_attention_jobs(float *out, const float *q, const pb_attention_job *jobs, int n_jobs, int n_heads,
                          int n_kv_heads, int head_dim, const pb_attention_params *params);
/* The key tiles the tiled kernel visits for these jobs (its own tile range). */
long long pb_emu_attention_tiled_key_tiles(const pb_attention_job *jobs, int n_jobs, int n_heads, int n_kv_heads,
                                           int window);
/* glu and activate return cudaErrorInvalidValue for an activation the
 * kernels lack (the backend's PB_ERR_UNSUPPORTED), launching nothing. */
int pb_emu_glu(float *out, const float *gate, const float *up, size_t rows, size_t width, size_t stride,
               pb_activation act);
int pb_emu_activate(float *x, size_t n, pb_activation act);
int pb_emu_softcap(float *x, size_t n, float cap);
int pb_emu_add(float *out, const float *a, const float *b, size_t n);
/* cuda/dequant.cu: out (rows, k) from rows of quantised ggml blocks at
 * src + r * row_bytes; cudaErrorInvalidValue, launching nothing, for a type
 * it does not decode. */
int pb_emu_dequant_rows(float *out, const void *src, uint32_t ggml_type, size_t row_bytes, int rows, int k);
int pb_emu_dequant_gather(float *out, const void *table, uint32_t ggml_type, const int32_t *ids, int T, int d,
                          float scale);
/* cuda/copy_regions.cu as backend_cuda.cu drives it. */
int pb_emu_copy_regions(const pb_copy_region *regions, int n_regions);
/* cuda/metric.cu's pb_cuda_metric_rows on an emulated backend (device 0). */
pb_status pb_emu_metric_rows(double *out, const float *logits, int rows, int n_out, pb_metric_kind kind,
                             const int32_t *positive, int n_positive, const int32_t *negative, int n_negative,
                             const double *ref_logprobs, const int32_t *ref_row, int n_ref);
/* The PB_CUDA_SYNC debug mode of the emulated backend that
 * pb_emu_metric_rows builds (0 off, 1 on), and a fault (a cudaError_t) that
 * the next stream synchronisation reports, as one raised while a kernel ran. */
void pb_emu_set_sync_launches(int sync);
void pb_emu_set_stream_fault(int error);
/* backend_cuda_impl.cuh's reading of PB_CUDA_SYNC. */
pb_status pb_emu_sync_mode_parse(const char *value, int *sync_launches);
/* The backward kernels (backward.cu); the attention's scratch, for
 * chunk_kv_heads key-value heads at a time, is allocated here, filled with
 * NaN first. glu_backward refuses an activation the kernels lack as glu
 * does. */
int pb_emu_norm_backward(float *dx, const float *x, const float *weight, const float *dy, int rows, int d, float eps,
                         int centred, int accumulate);
int pb_emu_glu_backward(float *d_gate, float *d_up, const float *dh, const float *gate, const float *up, size_t n,
                        pb_activation act);
int pb_emu_attention_backward(float *dq, float *dk, float *dv, float *dpattern, const float *q, const float *k,
                              const float *v, const float *dz, int T, int n_heads, int n_kv_heads, int head_dim,
                              const pb_attention_params *params, int chunk_kv_heads);

/* The emulator's own checks (selftest.cu). out, in (blocks * 64): out =
 * in rotated by one within each block of 64 threads, with or without the
 * __syncthreads between the shared-memory write and read. */
int pb_emu_selftest_rotate(float *out, const float *in, int blocks, int with_barrier);
/* out (blocks, 128, 4): per thread of a (64, 2) block, its four shuffles of
 * lane + 100 * warp (xor 5, down 3, up 7, from lane 9); stale (blocks): a
 * static __shared__ float as each block first reads it. */
int pb_emu_selftest_shuffle(double *out, float *stale, int blocks);

#ifdef __cplusplus
}
#endif

#endif
