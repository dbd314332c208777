/* The refusal-analysis command (the project's main job). */
#ifndef PB_CLI_ANALYSIS_H
#define PB_CLI_ANALYSIS_H

#include <stdio.h>

/* argv[0] is the command name; returns the exit status. */
int pb_cli_refusal_analysis(int argc, char **argv);
/* Its options, one line each, for the help. */
void pb_cli_refusal_analysis_options(FILE *out, const char *cmd);

#endif
