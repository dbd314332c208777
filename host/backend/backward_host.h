/* The backward ops of backend.h on host memory, sums in double, with the
 * ops' own signatures (the backend argument unused): the reference
 * backend's four, and the CPU backend's except its weight products
 * (OpenBLAS sgemm, as its forward's). Contracts in backend.h. */
#ifndef PB_BACKWARD_HOST_H
#define PB_BACKWARD_HOST_H

#include <stddef.h>

#include "backend/backend.h"

pb_status pb_matmul_dx_host(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype, int rows,
                            int n, int k, int accumulate);
pb_status pb_norm_backward_host(pb_backend *backend, float *dx, const float *x, const float *weight, const float *dy,
                                int rows, int d, float eps, int centred, int accumulate);
pb_status pb_glu_backward_host(pb_backend *backend, float *d_gate, float *d_up, const float *dh, const float *gate,
                               const float *up, size_t n, pb_activation act);
pb_status pb_attention_backward_host(pb_backend *backend, float *dq, float *dk, float *dv, float *dpattern,
                                     const float *q, const float *k, const float *v, const float *dz, int T,
                                     int n_heads, int n_kv_heads, int head_dim, const pb_attention_params *params);

#endif
