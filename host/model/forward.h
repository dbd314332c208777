/* Forward passes with extras the public pb_forward does not expose: an
 * embedding perturbation and an intervention called at every hook point.
 * pb_forward_ex serves interventions (patching/intervene.c) and the naive
 * patching reference of the tests. Generation is model/generate.h. */
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

/* One prompt of pb_forward_batch. */
typedef struct pb_forward_prompt {
    const int32_t *ids; /* host (T) */
    int T;
    const float *embed_delta; /* backend memory (T, d_model), or NULL: added to the embeddings */
    float *logits;            /* host (T - logits_from, vocab_size), or NULL */
    pb_capture *capture;      /* or NULL */
    int logits_from;          /* the first position whose logits are computed (0: all; T - 1: the last) */
} pb_forward_prompt;

/* The n prompts' forwards (as pb_forward_ex without an intervention) in
 * one run of the executor: every layer's weights go through all of them
 * at once, so streamed weights are read once for the batch. The
 * executor's workspace holds all their tokens. */
pb_status pb_forward_batch(pb_model *model, const pb_forward_prompt *prompts, int n);

/* ids[0..T) are token ids of the model's vocabulary, 1 <= T <= limit. */
pb_status pb_ids_check(const pb_model *model, const int32_t *ids, int T, int limit);
/* Every one of logits[0..n) is finite (PB_ERR_NUMERIC naming `what` and the index otherwise). */
pb_status pb_logits_check_finite(const float *logits, size_t n, const char *what);

#endif
