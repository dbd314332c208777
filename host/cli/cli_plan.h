/* The plan command: loads a model shape-only (hyperparameters, tokenizer,
 * tensor table; no weights) and prints how a sweep of a spec would run
 * (pb_sweep_plan): resident or streamed weights, waves, bytes moved, the
 * peak memory per rank and a lower bound on the time, with the options
 * that make patchbay sweep run it so; refuses, with the numbers, a sweep
 * that cannot fit. */
#ifndef PB_CLI_PLAN_H
#define PB_CLI_PLAN_H

#include <stdio.h>

#include "cli/cli_model.h"
#include "patchbay.h"

/* argv[0] is the command name; returns the exit status. */
int pb_cli_plan(int argc, char **argv);
/* Its options, one line each, for the help. */
void pb_cli_plan_options(FILE *out, const char *cmd);
/* patchbay sweep's one line "patchbay: plan: ..." on f: the plan of the
 * loaded model as it holds its weights, the --weight-memory and
 * --max-memory given, over n_ranks; nothing when no plan can be made (the
 * sweep's own checks then say why). */
void pb_cli_plan_line(FILE *f, const pb_sweep *sweep, const pb_model *model, const pb_cli_model *options,
                      size_t max_memory, int n_ranks);

#endif
