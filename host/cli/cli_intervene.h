/* Command-line commands built on interventions: generate (greedy, with an
 * optional patch, directional ablation or activation addition, printed
 * beside the plain continuation), refusal-rate (share of prompts whose
 * greedy continuation reads as a refusal) and direction (the
 * difference-in-means refusal direction). main() dispatches to these;
 * argv[0] is the command name; the return value is the exit status
 * (0 ok, 1 failure, 2 bad usage). */
#ifndef PB_CLI_INTERVENE_H
#define PB_CLI_INTERVENE_H

#include <stdio.h>

int pb_cli_generate(int argc, char **argv);
int pb_cli_refusal_rate(int argc, char **argv);
int pb_cli_direction(int argc, char **argv);

/* The options command (one of the three) takes, one line each, for the
 * help. */
void pb_cli_intervene_options(FILE *out, const char *cmd);

#endif
