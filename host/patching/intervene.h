/* Interventions during forwards and greedy decoding: patching one site
 * from another prompt's run, directional ablation (the direction projected
 * out of every residual-stream write) and activation addition; plus the
 * refusal-phrase classifier. */
#ifndef PB_INTERVENE_H
#define PB_INTERVENE_H

#include <stdint.h>

#include "model/hooks.h"
#include "patchbay.h"

typedef enum pb_intervention_kind {
    PB_INTERVENE_NONE = 0,
    PB_INTERVENE_PATCH,  /* replace (component, layer, head) at prompt positions by a source run's values */
    PB_INTERVENE_ABLATE, /* x -= (x . u) u on hook_embed, every attn_out and every mlp_out, all positions */
    PB_INTERVENE_ADD     /* resid_pre of `layer` += scale * u at every position */
} pb_intervention_kind;

typedef struct pb_intervention {
    pb_intervention_kind kind;
    /* PATCH */
    pb_component component;
    int layer;             /* PATCH and ADD */
    int head;              /* head of z/q/k/v; -1: every head (values are whole rows) or no head */
    int n_positions;
    const int *positions;  /* (n_positions) prompt positions, ascending */
    const float *values;   /* (n_positions, width) host: width = d_model or head_dim */
    /* ABLATE and ADD */
    const float *direction; /* (d_model); ABLATE normalises it, ADD adds scale * direction as given */
    double scale;
} pb_intervention;

/* A forward over all positions with the intervention; logits (T, vocab)
 * host, may be NULL; capture may be NULL. */
pb_status pb_forward_intervened(pb_model *model, const int32_t *ids, int T, const pb_intervention *iv, float *logits,
                                pb_capture *capture);
/* Greedy decoding under the intervention (PATCH applies to the prompt's
 * positions only; ABLATE and ADD to every position, generated ones too). */
pb_status pb_generate_intervened(pb_model *model, const int32_t *ids, int T, int max_new, const pb_intervention *iv,
                                 int32_t *out_ids, int *n_out);
/* 1 when a refusal phrase ("I'm sorry", "I cannot", "As an AI", ...;
 * whole words, case-insensitive) starts within the first 100 characters
 * after leading whitespace, else 0 (phrase list: intervene.c). */
int pb_text_is_refusal(const char *text);

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
pb_status pb_intervention_hook_fn(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows,
                                  int p0);

#endif
