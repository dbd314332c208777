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

/* ---- difference-in-means direction ---------------------------------------- */

/* Prompts as token ids, already chat-templated. */
typedef struct pb_prompt_set {
    int n;
    const int32_t *const *ids; /* (n) arrays of T[i] ids */
    const int *T;              /* (n) */
} pb_prompt_set;

typedef struct pb_direction_inputs {
    pb_prompt_set harmful_train, harmless_train;
    pb_prompt_set harmful_val, harmless_val;
    /* Post-instruction positions (the template tokens after the user
     * message, e.g. ChatML's "<|im_end|>\n<|im_start|>assistant\n"): the
     * last n_post positions of every prompt. 0: the longest common suffix
     * of all train prompts (at most 16 tokens). */
    int n_post;
    const int32_t *refusal_ids; /* (n_refusal_ids) the refusal token set of the score */
    int n_refusal_ids;
    /* Search limits; 0 picks the default. */
    int layer_stride;           /* candidate layers 0, s, 2s, ... (default 1) */
    double max_layer_fraction;  /* candidates only at layers < fraction * n_layers (default 0.8) */
    double kl_threshold;        /* KL filter (default 0.1) */
    int max_train;              /* use at most this many prompts per train side (default: all) */
    int max_val;                /* at most this many per validation side (default: all) */
    int max_batch_tokens;       /* tokens packed into one executor run (default 4096) */
} pb_direction_inputs;

typedef struct pb_direction_candidate {
    int layer;
    int position;          /* negative: from the end (-1 = last token) */
    double norm;           /* |r(l, p)| */
    double ablation_score; /* mean refusal score, harmful validation, direction ablated */
    double addition_score; /* mean refusal score, harmless validation, r added at layer l */
    double kl;             /* mean KL(unablated || ablated), harmless validation, last position */
    int passes;            /* 1 when it passes every filter */
} pb_direction_candidate;

typedef struct pb_direction_result {
    int d_model, n_layers, n_post;
    int layer, position;       /* the selected candidate; position negative (from the end) */
    float *direction;          /* (d_model) unit */
    float *difference;         /* (d_model) the raw mean difference r(layer, position) */
    double norm;               /* |difference| */
    double ablation_score, addition_score, kl; /* of the selected candidate */
    int selected_passes;       /* 0: no candidate passed every filter; the best ablation score under the KL filter (or, failing that, overall) was taken */
    double baseline_harmful, baseline_harmless; /* mean refusal scores without intervention */
    float *differences;        /* (n_layers, n_post, d_model) r(l, p) for every layer and position */
    int n_candidates;
    pb_direction_candidate *candidates; /* (n_candidates) */
    int n_harmful_train, n_harmless_train, n_harmful_val, n_harmless_val; /* counts used */
    double seconds_means, seconds_candidates;
} pb_direction_result;

/* Computes every candidate, scores them and selects one. On failure out is
 * left empty (safe to free). Errors: PB_ERR_ARG with a message for empty
 * sets, prompts shorter than n_post, out-of-vocabulary ids, bad limits. */
pb_status pb_direction_compute(pb_model *model, const pb_direction_inputs *in, pb_direction_result *out);
void pb_direction_result_free(pb_direction_result *r);

/* Provenance written into direction.json. */
typedef struct pb_direction_provenance {
    const char *model_path;
    const char *prompt_file;
} pb_direction_provenance;

/* Writes dir/direction.npy (float32 (d_model,), unit: loads as the sweep's
 * projection metric direction) and dir/direction.json (schema
 * "patchbay.direction/1"), each atomically. dir must exist. */
pb_status pb_direction_write(const pb_direction_result *r, const char *dir, const pb_direction_provenance *prov);

#endif
