/* Interventions during forwards and greedy decoding: patching one site
 * from another prompt's run, directional ablation (the direction projected
 * out of every residual-stream write) and activation addition; plus the
 * refusal-phrase classifier. */
#ifndef PB_INTERVENE_H
#define PB_INTERVENE_H

#include <stdint.h>

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
    int head;              /* -1 when the component has no head */
    int n_positions;
    const int *positions;  /* (n_positions) prompt positions, ascending */
    const float *values;   /* (n_positions, width) host: width = d_model or head_dim */
    /* ABLATE and ADD */
    const float *direction; /* (d_model), unit length */
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
/* 1 when the text starts like a refusal ("I'm sorry", "I cannot", "As an
 * AI", ...; case-insensitive, after leading whitespace), else 0. */
int pb_text_is_refusal(const char *text);

#endif
