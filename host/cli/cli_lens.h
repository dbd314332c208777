/* The logit-lens command: per layer and position, the top tokens and an
 * optional logit difference read through the final norm and unembedding
 * (pb_logit_lens), printed and, with --out, written as lens.json and .npy. */
#ifndef PB_CLI_LENS_H
#define PB_CLI_LENS_H

#include <stdio.h>

/* argv[0] is the command name; returns the exit status. */
int pb_cli_logit_lens(int argc, char **argv);
/* Its options, one line each, for the help. */
void pb_cli_logit_lens_options(FILE *out, const char *cmd);

#endif
