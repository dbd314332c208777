/* Batched generation on the executor: many prompts, K continuations each,
 * one KV cache per continuation, every decoding step one executor run of
 * one-token jobs and one unembedding GEMM for all of them. A prompt is
 * prefilled once and its keys and values copied to its other K - 1
 * caches. Tokens are chosen by model/sample.h, so a continuation depends
 * only on (seed, its prompt's tokens, sample index) and its logits: the
 * same alone or in any batch, on a backend whose rows do not depend on
 * their neighbours (the reference backend). */
#ifndef PB_GENERATE_H
#define PB_GENERATE_H

#include "model/exec.h"
#include "patchbay.h"

typedef struct pb_generate_job {
    const int32_t *const *ids; /* (n_prompts) prompts of T[i] ids each */
    const int *T;              /* (n_prompts) */
    int n_prompts;
    const pb_generate_options *options;
    /* Called at every hook point of the prefill and of every step (an
     * intervention); may be NULL. Its job index is the run's, not a
     * prompt's. */
    pb_exec_hook_fn hook;
    void *hook_user;
} pb_generate_job;

/* Generates for every prompt and sample: out_ids (n_prompts * n_samples,
 * max_new), continuation s = prompt * n_samples + sample; n_out
 * (n_prompts * n_samples) tokens written to each. */
pb_status pb_generate_run(pb_model *model, const pb_generate_job *job, int32_t *out_ids, int *n_out);

#endif
