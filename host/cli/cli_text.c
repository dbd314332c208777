/* Prompt options, token pieces, the text-only model load and the decode
 * command (cli_text.h). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_model.h"
#include "cli/cli_text.h"
#include "cli/ids.h"
#include "patchbay_tool.h"

void pb_cli_prompt_table(pb_cli_prompt *p, const char *text_commands, const char *ids_commands,
                         const char *template_commands, const char *no_chat_commands,
                         pb_cli_option table[PB_CLI_PROMPT_OPTIONS + 1]) {
    const pb_cli_option options[PB_CLI_PROMPT_OPTIONS + 1] = {
        {.flag = "--text",
         .kind = PB_OPT_STRING,
         .target = &p->text,
         .value = "TEXT",
         .help = "the prompt as text, tokenized plainly unless --chat: no template, a BOS first where the model's "
                 "tokenizer puts one (Gemma: yes; SmolLM2: no), as transformers' tokenizer(text) and sweeps do",
         .commands = text_commands},
        {.flag = "--chat",
         .kind = PB_OPT_FLAG,
         .target = &p->chat,
         .help = "put --text through the model's chat template (a user turn plus the generation prompt)",
         .commands = text_commands},
        {.flag = "--no-chat",
         .kind = PB_OPT_FLAG,
         .target = &p->no_chat,
         .help = "no chat template: --text as it is (the default of forward and tokenize); sweep: the spec's text "
                 "prompts that do not say \"chat\"",
         .commands = no_chat_commands},
        {.flag = "--system",
         .kind = PB_OPT_STRING,
         .target = &p->system,
         .value = "TEXT",
         .help = "system message of --chat (default: the template's own, e.g. SmolLM2's default prompt)",
         .commands = text_commands},
        {.flag = "--bos",
         .kind = PB_OPT_FLAG,
         .target = &p->bos,
         .help = "put the model's BOS token before plain --text, also where its tokenizer does not "
                 "(TransformerLens's prepend_bos=True)",
         .commands = text_commands},
        {.flag = "--no-bos",
         .kind = PB_OPT_FLAG,
         .target = &p->no_bos,
         .help = "no BOS token before plain --text, also where the model's tokenizer puts one (Gemma)",
         .commands = text_commands},
        {.flag = "--ids",
         .kind = PB_OPT_STRING,
         .target = &p->ids,
         .value = "1,2,3",
         .help = "the prompt as token ids (commas, spaces or brackets between them)",
         .commands = ids_commands},
        {.flag = "--ids-file",
         .kind = PB_OPT_STRING,
         .target = &p->ids_file,
         .value = "FILE",
         .help = "token ids from a file as tokenize prints them ('#' comments), or an int32 .npy",
         .commands = ids_commands},
        {.flag = "--chat-template",
         .kind = PB_OPT_STRING,
         .target = &p->chat_template,
         .value = "NAME|FILE",
         .help = "override the model's chat template (chatml, qwen3, llama3, llama2, gemma, gemma3, phi3, olmo2, "
                 "or a Jinja file)",
         .commands = template_commands},
        {0},
    };
    memcpy(table, options, sizeof options);
}

int pb_cli_prompt_check(const char *cmd, const pb_cli_prompt *p, int need_text_or_ids) {
    int given = !!p->text + !!p->ids + !!p->ids_file;
    if (given > 1 || (need_text_or_ids && given == 0)) {
        fprintf(stderr, "patchbay %s: give exactly one of --text, --ids or --ids-file\n", cmd);
        return 2;
    }
    if (p->chat && p->no_chat) {
        fprintf(stderr, "patchbay %s: --chat and --no-chat contradict each other\n", cmd);
        return 2;
    }
    if (!p->text && (p->chat || p->no_chat || p->system || p->bos || p->no_bos)) {
        fprintf(stderr, "patchbay %s: --chat, --no-chat, --system, --bos and --no-bos go with --text\n", cmd);
        return 2;
    }
    if (p->bos && p->no_bos) {
        fprintf(stderr, "patchbay %s: --bos and --no-bos contradict each other\n", cmd);
        return 2;
    }
    if (p->system && !p->chat) {
        fprintf(stderr, "patchbay %s: --system needs --chat\n", cmd);
        return 2;
    }
    if ((p->bos || p->no_bos) && p->chat) {
        fprintf(stderr, "patchbay %s: %s goes with plain text; with --chat the template decides the BOS\n", cmd,
                p->bos ? "--bos" : "--no-bos");
        return 2;
    }
    return 0;
}

int pb_cli_prompt_template(const char *cmd, pb_model *m, const char *chat_template) {
    if (!chat_template || pb_model_set_chat_template(m, chat_template) == PB_OK)
        return 1;
    fprintf(stderr, "patchbay %s: --chat-template: %s\n", cmd, pb_last_error());
    return 0;
}

/* Says how the text became ids: no silent template or BOS. */
static void text_notice(const char *cmd, const pb_model *m, const pb_cli_prompt *p, const int32_t *ids, int T,
                        int bos_added) {
    int bos = pb_model_get_config(m)->bos_id;
    int starts_bos = T > 0 && bos >= 0 && ids[0] == bos;
    const char *plain_bos = p->bos      ? "prepended (--bos)"
                            : bos_added ? "prepended (the tokenizer's add_bos_token, as transformers does; --no-bos "
                                          "drops it)"
                            : p->no_bos ? "not prepended (--no-bos)"
                                        : "not prepended (the tokenizer adds none; --bos prepends it)";
    fprintf(stderr, "patchbay %s: --text: %d tokens; chat template %s; BOS %s\n", cmd, T,
            p->chat ? (p->system ? "applied (with --system)" : "applied (with the template's default system prompt)")
                    : "not applied (--chat applies it)",
            !p->chat     ? plain_bos
            : starts_bos ? "present (the template's)"
                         : "not present");
}

int pb_cli_prompt_ids(const char *cmd, pb_model *m, const pb_cli_prompt *p, int32_t **ids, int *T) {
    *ids = NULL;
    *T = 0;
    pb_status st;
    if (p->ids || p->ids_file) {
        st = p->ids ? pb_ids_parse(p->ids, "--ids", ids, T) : pb_ids_read_file(p->ids_file, ids, T);
        if (st == PB_OK)
            return 0;
        fprintf(stderr, "patchbay %s: reading token ids: %s\n", cmd, pb_last_error());
        return 2;
    }
    int bos_added = 0, bos_rule = p->bos ? 1 : p->no_bos ? 0 : -1; /* -1: as the model's tokenizer */
    st = p->chat ? pb_model_chat_tokenize(m, p->system, p->text, ids, T)
                 : pb_model_tokenize_plain(m, p->text, 0, bos_rule, ids, T, &bos_added);
    if (st != PB_OK) {
        fprintf(stderr, "patchbay %s: %s: %s\n", cmd, p->chat ? "applying the chat template" : "tokenizing",
                pb_last_error());
        return st == PB_ERR_ARG ? 2 : 1;
    }
    if (*T <= 0) {
        fprintf(stderr, "patchbay %s: --text tokenizes to nothing\n", cmd);
        free(*ids);
        *ids = NULL;
        return 2;
    }
    text_notice(cmd, m, p, *ids, *T, bos_added);
    return 0;
}

pb_status pb_cli_text_model_load(const pb_cli_model *o, pb_model **out) {
    if (o->random_name)
        return pb_cli_model_load(o, out);
    return pb_model_load_text(out, o->path);
}

/* ---- pieces ------------------------------------------------------------ */

/* bytes as a quoted string: JSON escapes, valid UTF-8 kept, other bytes as
 * \xNN (so that a piece holding part of a character still shows). */
static void quote_bytes(const char *bytes, size_t n, char *buf, size_t size) {
    size_t o = 0;
    const unsigned char *s = (const unsigned char *)bytes;
#define PUT(...) (o += (size_t)snprintf(o < size ? buf + o : NULL, o < size ? size - o : 0, __VA_ARGS__))
    PUT("\"");
    for (size_t i = 0; i < n;) {
        size_t len = s[i] < 0x80 ? 1 : pb_utf8_length(s + i, n - i);
        if (s[i] == '"' || s[i] == '\\')
            PUT("\\%c", s[i]);
        else if (s[i] == '\n')
            PUT("\\n");
        else if (s[i] == '\t')
            PUT("\\t");
        else if (s[i] < 0x20 || s[i] == 0x7f || len == 0)
            PUT("\\x%02x", s[i]);
        else
            PUT("%.*s", (int)len, (const char *)s + i);
        i += len ? len : 1;
    }
    PUT("\"");
#undef PUT
    if (o >= size && size > 4)
        snprintf(buf + size - 5, 5, "...\"");
}

void pb_cli_piece_quoted(const pb_model *m, int32_t id, char *buf, size_t size) {
    char piece[1024];
    if (pb_model_token_text(m, id, piece, sizeof piece) != PB_OK)
        snprintf(piece, sizeof piece, "<%d>", (int)id);
    quote_bytes(piece, strlen(piece), buf, size);
}

void pb_cli_print_pieces(FILE *out, const pb_model *m, const int32_t *ids, int n) {
    fprintf(out, "%-5s %-8s %s\n", "pos", "id", "piece");
    for (int i = 0; i < n; i++) {
        char quoted[4200];
        pb_cli_piece_quoted(m, ids[i], quoted, sizeof quoted);
        fprintf(out, "%-5d %-8d %s\n", i, (int)ids[i], quoted);
    }
}

/* text with ill-formed UTF-8 replaced by U+FFFD, as transformers' decode
 * shows it (a JSON string must be valid UTF-8); malloc'd. */
static char *lossy_utf8(const char *text) {
    size_t n = strlen(text);
    char *out = malloc(3 * n + 1), *o = out;
    if (!out)
        return NULL;
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t len = pb_utf8_length(s + i, n - i);
        if (len) {
            memcpy(o, s + i, len);
            o += len;
            i += len;
        } else {
            memcpy(o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    *o = 0;
    return out;
}

/* ---- decode ------------------------------------------------------------ */

typedef struct decode_options {
    pb_cli_model model;
    pb_cli_prompt prompt;
    int json, pieces, overwrite;
} decode_options;

static void decode_table(decode_options *o, pb_cli_tables *t) {
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, "", NULL, NULL);
    pb_cli_prompt_table(&o->prompt, "", "decode", "", "", t->prompt);
    pb_cli_option *table = t->table;
    table[0] = (pb_cli_option){.flag = "--json",
                               .kind = PB_OPT_FLAG,
                               .target = &o->json,
                               .help = "print {\"text\", \"tokens\": [{\"id\", \"piece\"}]} as JSON"};
    table[1] = (pb_cli_option){.flag = "--pieces",
                               .kind = PB_OPT_FLAG,
                               .target = &o->pieces,
                               .help = "after the text, one line per token: position, id, quoted piece"};
    table[2] = (pb_cli_option){.kind = PB_OPT_TABLE, .target = t->prompt};
    table[3] = (pb_cli_option){.kind = PB_OPT_TABLE, .target = t->common.table};
    table[4] = (pb_cli_option){0};
}

void pb_cli_decode_options(FILE *out, const char *cmd) {
    decode_options o;
    pb_cli_tables t;
    decode_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

/* All of stdin, NUL-terminated; NULL on failure. */
static char *read_stdin(void) {
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap);
    while (buf) {
        n += fread(buf + n, 1, cap - n - 1, stdin);
        if (n < cap - 1)
            break;
        char *grown = realloc(buf, cap *= 2);
        if (!grown)
            free(buf);
        buf = grown;
    }
    if (buf)
        buf[n] = 0;
    return buf;
}

/* The ids from the arguments, --ids, --ids-file or stdin (--ids-file -):
 * 0 or 2 after saying why. */
static int decode_ids(const decode_options *o, const char **args, int n_args, int32_t **ids, int *T) {
    int sources = (n_args > 0) + !!o->prompt.ids + !!o->prompt.ids_file;
    if (sources != 1) {
        fprintf(stderr, "patchbay decode: give the ids as arguments, or exactly one of --ids or --ids-file\n");
        return 2;
    }
    pb_status st;
    if (o->prompt.ids_file && strcmp(o->prompt.ids_file, "-") == 0) {
        char *text = read_stdin();
        st = text ? pb_ids_parse(text, "stdin", ids, T) : pb_fail(PB_ERR_IO, "cannot read stdin");
        free(text);
    } else if (o->prompt.ids_file) {
        st = pb_ids_read_file(o->prompt.ids_file, ids, T);
    } else {
        size_t len = 1;
        for (int i = 0; i < n_args; i++)
            len += strlen(args[i]) + 1;
        char *joined = malloc(len);
        if (!joined)
            return 2;
        joined[0] = 0;
        for (int i = 0; i < n_args; i++)
            strcat(strcat(joined, args[i]), " ");
        st = pb_ids_parse(o->prompt.ids ? o->prompt.ids : joined, o->prompt.ids ? "--ids" : "the arguments", ids, T);
        free(joined);
    }
    if (st == PB_OK)
        return 0;
    fprintf(stderr, "patchbay decode: %s\n", pb_last_error());
    return 2;
}

static int print_decode_json(const pb_model *m, const char *text, const int32_t *ids, int T) {
    json_t *root = json_object(), *tokens = json_array();
    char *lossy = lossy_utf8(text);
    json_object_set_new(root, "text", json_string(lossy ? lossy : ""));
    free(lossy);
    for (int i = 0; i < T; i++) {
        char piece[1024];
        if (pb_model_token_text(m, ids[i], piece, sizeof piece) != PB_OK)
            piece[0] = 0;
        char *fixed = lossy_utf8(piece);
        json_array_append_new(tokens, json_pack("{s:i, s:s}", "id", (int)ids[i], "piece", fixed ? fixed : ""));
        free(fixed);
    }
    json_object_set_new(root, "tokens", tokens);
    int ok = json_dumpf(root, stdout, JSON_INDENT(1) | JSON_ENSURE_ASCII) == 0;
    putchar('\n');
    json_decref(root);
    return ok ? 0 : 1;
}

int pb_cli_decode(int argc, char **argv) {
    decode_options o;
    memset(&o, 0, sizeof o);
    pb_cli_tables t;
    decode_table(&o, &t);
    const char **args = calloc((size_t)argc + 1, sizeof *args);
    int n_args = 0, rc = 2;
    int32_t *ids = NULL;
    int T = 0;
    const pb_cli_parser parser = {.prefix = "patchbay decode",
                                  .command_prefix = "patchbay decode",
                                  .missing_value = "%s: option %s needs a value\n",
                                  .unknown = "%s: unknown option '%s' (see patchbay help decode)\n",
                                  .command = "decode",
                                  .positional = args,
                                  .n_positional = &n_args};
    pb_model *m = NULL;
    char *text = NULL;
    if (!args || !pb_cli_parse(&parser, t.table, argc, argv, 1) || !pb_cli_model_check(&o.model, "decode") ||
        decode_ids(&o, args, n_args, &ids, &T))
        goto done;
    rc = 1;
    if (pb_cli_text_model_load(&o.model, &m) != PB_OK || pb_model_detokenize(m, ids, T, &text) != PB_OK) {
        fprintf(stderr, "patchbay decode: %s\n", pb_last_error());
        goto done;
    }
    if (o.json) {
        rc = print_decode_json(m, text, ids, T);
        goto done;
    }
    printf("%s\n", text);
    if (o.pieces)
        pb_cli_print_pieces(stdout, m, ids, T);
    rc = 0;
done:
    free(text);
    pb_model_free(m);
    free(ids);
    free(args);
    return rc;
}
