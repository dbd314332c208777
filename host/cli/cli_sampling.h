/* The generation options that generate, refusal-rate and refusal-analysis
 * share: how tokens are chosen (--temperature, --top-k, --top-p, --min-p,
 * --sample-seed), how many continuations per prompt (--samples), how many
 * decode together (--batch) and where a continuation stops (--stop,
 * repeatable). Defaults: greedy, one sample, batches of 64. */
#ifndef PB_CLI_SAMPLING_H
#define PB_CLI_SAMPLING_H

#include <stddef.h>

#include "cli/options.h"
#include "patchbay.h"

enum { PB_CLI_MAX_STOP = 8, PB_CLI_SAMPLING_OPTIONS = 8 };

typedef struct pb_cli_sampling {
    pb_sampling sampling;
    int samples, batch;
    const char *stop[PB_CLI_MAX_STOP]; /* borrowed from argv */
    int n_stop;
} pb_cli_sampling;

/* Defaults into s and the options writing into s into table
 * (PB_CLI_SAMPLING_OPTIONS entries plus the end), taken by `commands`
 * (space-separated; NULL: every command parsing the table). */
void pb_cli_sampling_table(pb_cli_sampling *s, const char *commands, pb_cli_option table[PB_CLI_SAMPLING_OPTIONS + 1]);

/* Checks the values (before a model loads): 1, or 0 after saying why. */
int pb_cli_sampling_check(const char *cmd, const pb_cli_sampling *s);

/* The generation options they describe (max_new and the intervention are the caller's). */
pb_generate_options pb_cli_sampling_options(const pb_cli_sampling *s, int max_new);

/* "greedy" or "sampled: temperature 0.7, top-p 0.9, seed 0, 4 samples per prompt". */
void pb_cli_sampling_describe(const pb_cli_sampling *s, char *buf, size_t size);

#endif
