/* The executor: one code path that runs transformer layers for a batch of
 * ragged "jobs" through the backend ops. A plain forward is one job from
 * the embedding; greedy decoding is a one-token job over a growing KV
 * cache; a patching batch is many jobs, each starting at its own layer
 * from a cached residual, recomputing only its own suffix of positions and
 * overwriting its own site. All jobs' tokens are packed into one matrix so
 * every projection is one GEMM for the whole batch. */
#ifndef PB_EXEC_H
#define PB_EXEC_H

#include <stdint.h>

#include "model/hooks.h"
#include "model/model.h"

/* Steps: 2L is layer L's attention block, 2L+1 its MLP block, 2*n_layers
 * the final residual. A job starting at step s begins with the residual
 * stream entering that step. */
static inline int pb_step_attention(int layer) { return 2 * layer; }
static inline int pb_step_mlp(int layer) { return 2 * layer + 1; }

/* Overwrite of one site inside a job, applied at a hook point:
 * (PB_HOOK_RESID_PRE, L) for L in 0..n_layers (n_layers = final residual),
 * (PB_HOOK_RESID_MID, L), (PB_HOOK_Q/K/V, L) before RoPE, (PB_HOOK_Z, L),
 * (PB_HOOK_ATTN_OUT, L), (PB_HOOK_MLP_OUT, L). */
typedef struct pb_exec_patch {
    pb_hook_kind hook;
    int layer;
    int head; /* query head (Q, Z) or key-value head (K, V); -1 for residual-width hooks */
    int n_positions;
    const int *positions; /* (n_positions) host; every one >= the job's p0 */
    const float *values;  /* device (n_positions, width): width = d_model, or head_dim for a head */
} pb_exec_patch;

typedef struct pb_exec_job {
    int T;  /* sequence length */
    int p0; /* first position recomputed; earlier ones come from the KV prefix */
    int start_step;
    const int32_t *ids;       /* host (T): used when start_step == 0 */
    const float *embed_delta; /* device (T, d_model) or NULL: added to the embeddings (start_step 0) */
    const float *init_x;      /* device (T, d_model): residual entering start_step (start_step > 0) */
    /* Keys (after RoPE) and values. Persistent mode (kv_prefix == NULL):
     * kv (n_layers, kv_capacity, kv_dim) holds rows [0, p0) already and
     * receives rows [p0, T). Prefix mode: rows [0, p0) of layer L are read
     * from kv_prefix (n_layers, kv_prefix_capacity, kv_dim) into a scratch
     * buffer, so nothing of the job's own keys outlives the layer. */
    float *k_cache, *v_cache;
    int kv_capacity;
    const float *k_prefix, *v_prefix;
    int kv_prefix_capacity;
    const pb_exec_patch *patch; /* NULL: no patch */
} pb_exec_job;

/* Called at every hook point for every active job, rows [p0, T) of that
 * job's activation: data (T - p0, width) in device memory, writable (an
 * intervention may change it, a capture may copy it). */
typedef pb_status (*pb_exec_hook_fn)(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows,
                                     int p0);

typedef struct pb_exec pb_exec;

/* Workspace for up to max_tokens packed tokens and sequences up to max_T. */
pb_status pb_exec_create(pb_exec **out, pb_model *model, int max_tokens, int max_T);
void pb_exec_free(pb_exec *exec);
/* Bytes of workspace pb_exec_create would allocate. */
size_t pb_exec_workspace_bytes(const pb_model_config *cfg, int max_tokens, int max_T);

/* Runs jobs from their start steps up to and including stop_step (the
 * residual entering stop_step is the output). hook may be NULL.
 * Guarantee callers may rely on: within a layer, a persistent-mode job's
 * new keys and values are in its cache before the attention of any job
 * that started at the same step or later and comes after it in index
 * order, so one run can hold a shared prefix (job 0) and the prompts that
 * read it in prefix mode.
 * On a device backend the run may still be executing when this returns
 * (its ids and positions go up in one upload, which on CUDA is queued
 * through pinned staging, not waited for): read its results through the backend (download, synchronize),
 * which orders after it, and expect a device fault there. */
pb_status pb_exec_run(pb_exec *exec, const pb_exec_job *jobs, int n_jobs, int stop_step, pb_exec_hook_fn hook,
                      void *hook_user);
/* After a run: the residual entering stop_step for job j, rows [p0, T):
 * device (T - p0, d_model). Valid until the next run. */
float *pb_exec_output(pb_exec *exec, int job);
/* FLOPs the last runs executed (projections, attention, accumulated). */
double pb_exec_flops(const pb_exec *exec);
/* FLOPs pb_exec_run counts for one job of T positions from p0 at `step`
 * (2L: layer L's attention, 2L + 1: its MLP): matrix products and
 * attention scores, not norms or activations. */
double pb_exec_step_flops(const pb_model_config *cfg, int step, int p0, int T);

/* Final RMSNorm then unembedding of `rows` residual rows (device,
 * (rows, d_model)): out (rows, n_out) = norm(x) @ w^T with w (n_out,
 * d_model) device, stored as w_dtype (the output matrix or a gathered
 * subset of its rows). */
pb_status pb_exec_unembed(pb_exec *exec, float *out, const float *x, int rows, const void *w, pb_dtype w_dtype,
                          int n_out);

#endif
