/* Interventions during forwards and greedy decoding: patching one site
 * from another prompt's run, directional ablation (the direction projected
 * out of every residual-stream write) and activation addition; plus the
 * refusal-phrase classifier. */
#ifndef PB_INTERVENE_H
#define PB_INTERVENE_H

#include <stdint.h>

#include "model/hooks.h"
#include "patchbay.h"

/* pb_intervention, pb_forward_intervened, pb_generate_intervened and
 * pb_text_is_refusal are public: include/patchbay.h. */

/* ---- the executor hook behind pb_forward_intervened, for code that drives
 * the executor with many jobs at once (direction.c) ---- */

typedef struct pb_intervention_hook {
    pb_model *model;
    const pb_intervention *iv;
    double *u;               /* (d_model): ABLATE the unit direction; ADD scale * direction */
    float *scratch;          /* host rows being edited */
    size_t scratch_capacity; /* floats */
} pb_intervention_hook;

/* Checks iv against the model and a prompt of T tokens (iv NULL or NONE: OK). */
pb_status pb_intervention_check(const pb_model *model, const pb_intervention *iv, int T);
/* Prepares h for iv (borrowed until release); T: prompt length for PATCH. */
pb_status pb_intervention_hook_init(pb_intervention_hook *h, pb_model *model, const pb_intervention *iv, int T);
void pb_intervention_hook_release(pb_intervention_hook *h);
/* A pb_exec_hook_fn; user is a pb_intervention_hook. ABLATE and ADD edit
 * every job alike; PATCH edits any job's rows at the listed positions. */
pb_status pb_intervention_hook_fn(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0);

#endif
