/* Text in and out of the command line: the prompt options that forward,
 * tokenize and logit-lens share (--text or --ids/--ids-file, --chat or
 * --no-chat, --system, --chat-template, --bos or --no-bos) with the notice of what was
 * applied, token pieces as printable strings, and the decode command. */
#ifndef PB_CLI_TEXT_H
#define PB_CLI_TEXT_H

#include <stdint.h>
#include <stdio.h>

#include "cli/cli_model.h"
#include "cli/cli_sampling.h"
#include "cli/options.h"
#include "patchbay.h"

typedef struct pb_cli_prompt {
    const char *text, *ids, *ids_file, *system, *chat_template;
    int chat, no_chat, bos, no_bos;
} pb_cli_prompt;

enum { PB_CLI_PROMPT_OPTIONS = 9 };
/* Fills table (PB_CLI_PROMPT_OPTIONS entries plus the end) with the prompt
 * options, writing into p. text_commands take --text and its switches,
 * ids_commands --ids and --ids-file, template_commands --chat-template,
 * no_chat_commands --no-chat (space-separated command names; NULL: every
 * command). */
void pb_cli_prompt_table(pb_cli_prompt *p, const char *text_commands, const char *ids_commands,
                         const char *template_commands, const char *no_chat_commands,
                         pb_cli_option table[PB_CLI_PROMPT_OPTIONS + 1]);

/* Where a command's option tables live while it parses argv or prints its
 * help (one layout for every command): the shared model options (common),
 * the prompt options for the commands that take a prompt (filled by
 * pb_cli_prompt_table, else unused), the generation options (likewise) and the command's own rows, which
 * reach the shared ones through PB_OPT_TABLE entries and end with the
 * PB_OPT_END; at most PB_CLI_COMMAND_ROWS in all. t must outlive the parse. */
enum { PB_CLI_COMMAND_ROWS = 32 };
typedef struct pb_cli_tables {
    pb_cli_common common;
    pb_cli_option prompt[PB_CLI_PROMPT_OPTIONS + 1];
    pb_cli_option sampling[PB_CLI_SAMPLING_OPTIONS + 1]; /* the commands that generate (pb_cli_sampling_table) */
    pb_cli_option table[PB_CLI_COMMAND_ROWS];
} pb_cli_tables;

/* Applies --chat-template to a loaded model: 1, or 0 after saying why. */
int pb_cli_prompt_template(const char *cmd, pb_model *m, const char *chat_template);

/* The prompt's ids: --ids / --ids-file as given, or --text through the chat
 * template (--chat) or plain (default; a BOS first as the model's tokenizer
 * puts one, pb_model_tokenize_plain, or as --bos / --no-bos say). Says on
 * stderr what was applied when the text was tokenized. Returns 0, or the
 * exit status (2 bad usage, 1 failure) after saying why; *ids malloc'd. */
int pb_cli_prompt_ids(const char *cmd, pb_model *m, const pb_cli_prompt *p, int32_t **ids, int *T);
/* Checks the options' combination before a model loads: 0 or 2. */
int pb_cli_prompt_check(const char *cmd, const pb_cli_prompt *p, int need_text_or_ids);

/* The text of one token as a quoted, escaped string ("\" Paris\"",
 * invalid UTF-8 bytes as \xNN), written to buf. */
void pb_cli_piece_quoted(const pb_model *m, int32_t id, char *buf, size_t size);
/* One line per token: position, id, quoted piece. */
void pb_cli_print_pieces(FILE *out, const pb_model *m, const int32_t *ids, int n);

/* patchbay decode; argv[0] is the command. Ids as arguments, --ids,
 * --ids-file (- for stdin). */
/* The model's text side alone for --model (pb_model_load_text: no weights
 * read, any architecture), the whole random model for --random-model (whose
 * missing tokenizer then says so): what tokenize and decode need. */
pb_status pb_cli_text_model_load(const pb_cli_model *o, pb_model **out);

int pb_cli_decode(int argc, char **argv);
void pb_cli_decode_options(FILE *out, const char *cmd);

#endif
