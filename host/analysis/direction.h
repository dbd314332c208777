/* The refusal direction by difference in means (Arditi et al. 2024,
 * "Refusal in Language Models Is Mediated by a Single Direction"):
 * candidates r(l, p) = mean resid_pre over harmful prompts - mean over
 * harmless prompts at layer l and post-instruction position p; each is
 * scored on validation prompts by directional ablation (harmful refusal
 * score, want low), activation addition (harmless refusal score, want high)
 * and the KL divergence ablation causes on harmless prompts (want small);
 * the paper's rule picks one.
 */
#ifndef PB_DIRECTION_H
#define PB_DIRECTION_H

#include <stdint.h>

#include "model/hooks.h"
#include "patching/intervene.h"

/* The types and functions (pb_direction_inputs, pb_direction_result,
 * pb_direction_compute, pb_direction_write, ...) are public:
 * include/patchbay.h. */

#endif
