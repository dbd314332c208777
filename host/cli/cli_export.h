/* patchbay export: the model with the refusal direction projected out of
 * its weights (pb_export_ablated), written as safetensors or GGUF. */
#ifndef PB_CLI_EXPORT_H
#define PB_CLI_EXPORT_H

#include <stdio.h>

int pb_cli_export(int argc, char **argv);
void pb_cli_export_options(FILE *out, const char *cmd);

#endif
