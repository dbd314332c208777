/* Choosing the next token from one row of logits: greedy, or sampled
 * after temperature, top-k, top-p and min-p, in that order (the order of
 * transformers' generate). Each draw's uniform number is a hash of (seed,
 * the prompt's tokens, sample, step), so a continuation depends on nothing
 * but those and the logits: not on the batch size, nor on which other
 * prompts run beside it or in which order, and two interventions on the
 * same prompt use the same random numbers. */
#ifndef PB_SAMPLE_H
#define PB_SAMPLE_H

#include <stdint.h>

#include "patchbay.h"

/* Work space of one sampler: room for a vocabulary's probabilities and
 * indices, reused across calls. */
typedef struct pb_sampler {
    int vocab_size;
    double *prob;    /* (vocab_size) */
    double *scratch; /* (vocab_size): top-k's selection */
    struct pb_sample_rank {
        double prob;
        int32_t token;
    } * ranked; /* (vocab_size): top-p's candidates, most likely first once sorted */
} pb_sampler;

pb_status pb_sampler_init(pb_sampler *s, int vocab_size);
void pb_sampler_release(pb_sampler *s);

/* A prompt's key for the draws: a hash of its T token ids. */
uint64_t pb_sample_prompt_key(const int32_t *ids, int T);
/* The uniform number in [0, 1) of (seed, prompt key, sample, step). */
double pb_sample_uniform(uint64_t seed, uint64_t prompt_key, int sample, int step);

/* Probability of every token after the filters of sp (sum 1 over the kept
 * tokens, 0 elsewhere) into prob (vocab_size). sp NULL or temperature 0:
 * all mass on the first largest logit. */
pb_status pb_sampler_probabilities(pb_sampler *s, const float *logits, const pb_sampling *sp, double *prob);

/* The token for logits (vocab_size): greedy (sp NULL or temperature 0:
 * the first largest logit), else drawn from pb_sampler_probabilities with
 * u (pb_sample_uniform) by the cumulative sum in token-id order. */
pb_status pb_sampler_next(pb_sampler *s, const float *logits, const pb_sampling *sp, double u, int32_t *token);

#endif
