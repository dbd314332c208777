/* AtP*'s QK fix (Kramar et al. 2024, "AtP*: An efficient and scalable
 * method for localizing LLM behaviour to components", section 3.1.1): a
 * query or key feeds the attention softmax at once, where a gradient
 * misjudges large moves (saturation). So for a q or k site the patched
 * attention probabilities are computed exactly, and only what follows
 * them is linearised:
 *
 *   estimate = sum over the heads h and query positions t the patch
 *              touches, and keys s, of
 *              (A'_h[t, s] - A_h[t, s]) * d metric / d A_h[t, s]
 *
 * A the base run's probabilities (hook_pattern), A' those with the site's
 * pre-RoPE query (or key) rows replaced by the source run's and taken
 * through the layer's q/k norm and RoPE at their base positions. A key
 * patch changes the columns of every query head of its group; a query
 * patch changes its own rows; a norm over the whole projection (OLMo-2)
 * carries a one-head patch into every head of the row, and the estimate
 * follows it. Host memory; scores and sums in double. */
#ifndef PB_QK_FIX_H
#define PB_QK_FIX_H

#include "patchbay.h"

typedef struct pb_qk_fix pb_qk_fix;

/* For one pair: base, a capture of the base run holding hook_q, hook_k,
 * hook_rot_q and hook_rot_k of every layer (PB_GRAD_ACT_HOOKS does);
 * source, one of the source run holding hook_q and hook_k of the layers
 * with q or k sites. Both stay the caller's. */
pb_status pb_qk_fix_create(pb_qk_fix **out, pb_model *m, int base_T, pb_capture *base, pb_capture *source);
void pb_qk_fix_free(pb_qk_fix *f);

/* *estimate for patching component (PB_COMPONENT_Q or _K) of `head` at
 * `layer` at the n base positions `positions` from the source positions
 * `source_positions`, given dpattern (n_heads, T, T), d metric / d
 * hook_pattern of that layer at the base run. */
pb_status pb_qk_fix_estimate(pb_qk_fix *f, pb_component component, int layer, int head, const int *positions,
                             const int *source_positions, int n, const float *dpattern, double *estimate);

#endif
