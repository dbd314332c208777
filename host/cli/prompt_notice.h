/* What the sweep and plan commands do with a spec's prompts: say before a
 * sweep runs whether a chat template (and which system prompt) and a BOS
 * token went in, one line per kind of prompt; --no-chat, the switch to
 * plain text; the folder relative paths in a spec resolve against. */
#ifndef PB_CLI_PROMPT_NOTICE_H
#define PB_CLI_PROMPT_NOTICE_H

#include <stdio.h>

#include "patchbay.h"

/* Lines "patchbay: prompts: ..." on f, one per kind of prompt (chat template
 * with one system prompt, plain text, token ids, noise). */
void pb_cli_prompt_notice(FILE *f, const pb_sweep *sweep, const pb_model *model);

/* --no-chat: *spec_text (malloc'd JSON) with the top-level "chat": false,
 * the default of text prompts that do not say. A text that is not a JSON
 * object is left for the spec parser to refuse. 0, or 1 out of memory. */
int pb_cli_spec_plain_text(char **spec_text);

#endif
