/* The activation backward pass (issue 18): the derivative of one metric
 * at one position with respect to every hook point's activation, the total
 * derivative through every later use, as PyTorch autograd gives it on
 * transformers' forward (scripts/make_grad_reference.py). Written from the
 * forward's definitions op by op (docs/patching.md) against the backend's
 * ops, the four backward ones among them (backend.h): on the reference
 * backend every sum in double (the oracle the others are tested against);
 * on the CPU backend the weight products, most of the time, are OpenBLAS
 * sgemm with fp32 sums, as its forward's; on CUDA cuBLAS sgemm and
 * cuda/backward.cu's kernels, summing in double. Activations come from one
 * forward with a capture (host memory: on a device each one a step reads
 * is uploaded, each gradient asked for downloaded); what no hook holds
 * (norm outputs, the MLP's pre-activations, the attention scores) is
 * recomputed per layer. The metric's derivative on the logits is taken on
 * the host, in double, from the forward's logits. */
#ifndef PB_GRAD_H
#define PB_GRAD_H

#include <stdint.h>

#include "patchbay.h"

/* pb_grad_metric and pb_gradients (the pass on ids) are public: patchbay.h. */

/* The highest layer whose output the metric reads: n_layers - 1 on the
 * logits; for projection the layer below the residual slot it reads
 * (resid_post of L is the slot resid_pre of L + 1 receives), -1 for the
 * embedding's (resid_pre of layer 0). No layer above it has a gradient. */
int pb_grad_metric_top_layer(const pb_grad_metric *mt, int n_layers);

/* The hook points of the forward's activations a pass reads (a capture
 * pattern; those a model lacks match nothing): the residual stream, q, k
 * and v before and after RoPE and the q/k norms, and the inputs of
 * sandwich post norms. The rest (norm outputs, the MLP's
 * pre-activations, the attention's scores) is recomputed per layer. */
#define PB_GRAD_ACT_HOOKS \
    "blocks.*.hook_resid_*,blocks.*.attn.hook_[qkv],blocks.*.attn.hook_rot_[qk],blocks.*.ln[12]_post.hook_in"

/* pb_gradients from a forward already run (a noise-corrupted one too): acts, a capture of m over T tokens
 * holding at every layer the hook points PB_GRAD_ACT_HOOKS names
 * (PB_ERR_ARG naming the first one it lacks), and that forward's logits
 * at the metric's position (vocab_size; may be NULL for projection). */
pb_status pb_grad_pass_from(pb_model *m, int T, pb_capture *acts, const float *logits, const pb_grad_metric *metric,
                            pb_capture *grads, double *value);

/* Bytes `passes` passes running together (1: pb_grad_pass_drop's;
 * pb_grad_drops runs a batch) allocate beside the captures for T tokens:
 * per-token buffers, and on a device backend (device != 0) the uploaded
 * activations, the pattern's gradient and the attention backward's
 * scratch (the backend's, kept); a 16-bit or quantised weight's decoded
 * tile (the backend's dequantisation scratch, shared with the forward) is
 * not counted. */
size_t pb_grad_scratch_bytes(const pb_model_config *c, int T, int device, int passes);

/* GradDrop (AtP*, attribution/atp.h): a pass in which one layer's two
 * writes into the residual stream (attn_out and mlp_out) pass no gradient
 * back. That layer's own hook points get zero; the residual's gradient
 * goes by it unchanged (resid_pre = resid_mid = resid_post there). */
typedef struct pb_grad_drop {
    int layer;
    /* NULL, or (T, d_model): d metric / d resid_post of `layer` from the
     * whole pass (it is the same with or without the drop). The pass then
     * starts there: hook points above the layer are left zero, and logits
     * and value may be NULL (*value is not set). */
    const float *resid_post_grad;
} pb_grad_drop;
/* pb_grad_pass_from with the drop (NULL: none). */
pb_status pb_grad_pass_drop(pb_model *m, int T, pb_capture *acts, const float *logits, const pb_grad_metric *metric,
                            const pb_grad_drop *drop, pb_capture *grads, double *value);

/* pb_grad_pass_from for several prompts (one pair's base runs each, say),
 * run together layer by layer from the top: each layer's weights are read
 * once for all of them (streamed weights). Each job's gradients and value
 * are what pb_grad_pass_from gives it. */
typedef struct pb_grad_job {
    int T;
    pb_capture *acts;
    const float *logits; /* the metric position's (vocab_size) */
    const pb_grad_metric *metric;
    pb_capture *grads;
    double *value;
} pb_grad_job;
pb_status pb_grad_passes(pb_model *m, const pb_grad_job *jobs, int n);

/* GradDrop's passes for the drops of layers lo..hi of each of n prompts,
 * run together and layer by layer: from layer hi down to `bottom`, each
 * layer's weights are read once for every pass that has reached it, its
 * products taken over all of one prompt's passes' rows in one call. Drop
 * l's pass is pb_grad_pass_drop's resumed from whole's resid_post of l
 * (whole: the prompt's pass without a drop, pb_grad_pass_from's
 * gradients; it holds every hook point asked for). After layer L, for
 * every prompt and every drop l >= L among lo..hi (l = hi first), the
 * prompt's fn gets that pass's gradients at layer L's hook points named in
 * whole, in a capture of that layer only, valid during the call: at
 * layers up to l they are what pb_grad_pass_drop gives (bit for bit where
 * the backend's products sum each row alone, as the reference backend's
 * do). At most `batch` drops run at once (0: pb_grad_drop_batch's), more
 * take turns, each turn reading its layers again; memory beyond acts and
 * whole: pb_grad_scratch_bytes for each prompt's batch and one layer's
 * capture per pass. */
typedef pb_status (*pb_grad_layer_fn)(void *user, int layer, int drop, pb_capture *grads);
typedef struct pb_grad_drop_job {
    int T;
    pb_capture *acts;
    const pb_grad_metric *metric;
    pb_capture *whole;
    pb_grad_layer_fn fn;
    void *user;
    const float *logits; /* pb_grad_whole_drops: the metric position's (vocab_size; NULL for projection) */
    double *value;       /* pb_grad_whole_drops: the metric's value */
} pb_grad_drop_job;
pb_status pb_grad_drops(pb_model *m, const pb_grad_drop_job *jobs, int n, int lo, int hi, int bottom, int batch);

/* pb_grad_pass_from and then pb_grad_drops in one descent: each prompt's
 * whole pass (filling whole, zeroed first, from logits; *value) runs as
 * one more pass of the first turn, from the metric's top layer hi (as
 * pb_grad_metric_top_layer) down to bottom, and each drop's pass starts
 * from it as it passes the drop's layer. So the layers are read once less
 * than pb_grad_passes then pb_grad_drops read them. whole's hook points
 * below bottom are left zero; every other gradient is what those two give
 * (bit for bit where the backend's products sum each row alone). The
 * first turn holds the whole pass and batch - 1 drops (at least one). */
pb_status pb_grad_whole_drops(pb_model *m, const pb_grad_drop_job *jobs, int n, int lo, int hi, int bottom, int batch);
/* The drops of pb_grad_whole_drops' first turn when batch passes run at
 * once: the whole pass takes a place (batch - 1, at least one). */
int pb_grad_whole_turn_drops(int batch);

/* The drops pb_grad_drops runs at once for n prompts of T[i] tokens: as
 * many as fit PB_GRAD_DROP_SCRATCH for all of them beside the shared
 * buffers (at least one, at most the layers). */
#define PB_GRAD_DROP_SCRATCH ((size_t)1 << 30)
int pb_grad_drop_batch(const pb_model_config *c, const int *T, int n, int device);

#endif
