/* Forward passes with extras the public pb_forward does not expose: an
 * embedding perturbation and an intervention called at every hook point.
 * pb_forward_ex serves interventions (patching/intervene.c) and the naive
 * patching reference of the tests; pb_generate_ex greedy decoding under an
 * intervention. Both run on the executor (exec.h). */
#ifndef PB_FORWARD_H
#define PB_FORWARD_H

#include "model/exec.h"

typedef struct pb_forward_extras {
    const float *embed_delta;  /* device (T, d_model) or NULL */
    pb_exec_hook_fn intervene; /* may modify activations; called before capture */
    void *intervene_user;
} pb_forward_extras;

pb_status pb_forward_ex(pb_model *model, const int32_t *ids, int T, const pb_forward_extras *extras, float *logits,
                        pb_capture *capture);

/* Greedy decoding with an intervention called at every hook point of the
 * prefill (rows 0 .. T) and of every decoding step (one row at its
 * position p0); intervene may be NULL. */
pb_status pb_generate_ex(pb_model *model, const int32_t *ids, int T, int max_new, pb_exec_hook_fn intervene, void *user,
                         int32_t *out_ids, int *n_out);

#endif
