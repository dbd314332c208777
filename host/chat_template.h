/* Chat templates, recognised from a model's tokenizer.chat_template (or
 * named explicitly) and rendered in C: ChatML (SmolLM2, Qwen2), Llama-3,
 * Llama-2 / Mistral [INST], Gemma. Rendering yields text that spells the
 * template's special tokens; encode it with parse_special = 1. */
#ifndef PB_CHAT_TEMPLATE_H
#define PB_CHAT_TEMPLATE_H

#include "patchbay.h"

typedef enum pb_chat_format {
    PB_CHAT_CHATML = 0,
    PB_CHAT_LLAMA3,
    PB_CHAT_LLAMA2,
    PB_CHAT_GEMMA
} pb_chat_format;

typedef struct pb_chat_template {
    pb_chat_format format;
    char name[32];             /* "chatml", "llama3", "llama2", "gemma" */
    char *default_system;      /* system prompt the template adds when none is given, or NULL */
    char *bos;                 /* BOS text the template emits ("<s>", "<|begin_of_text|>", "<bos>") or NULL */
} pb_chat_template;

/* Recognises template_text (a Jinja chat template). name, when not NULL,
 * forces a format ("chatml", "llama3", "llama2", "gemma") and template_text
 * may then be NULL; a file path is also accepted as name (its contents are
 * recognised). bos_text is the model's BOS token text (may be NULL).
 * Unrecognised: PB_ERR_UNSUPPORTED with a message saying how to pass a
 * template explicitly (--chat-template NAME|FILE). */
pb_status pb_chat_template_init(pb_chat_template *out, const char *template_text, const char *name,
                                const char *bos_text);
void pb_chat_template_free(pb_chat_template *t);

/* One user turn (optionally after a system turn) followed by the
 * generation prompt, exactly as transformers' apply_chat_template(...,
 * add_generation_prompt=True) renders it. system == NULL: the template's
 * default behaviour (its default system prompt, if any); system == "":
 * an explicit empty system turn where the format has one. *text is
 * malloc'd. */
pb_status pb_chat_template_render(const pb_chat_template *t, const char *system, const char *user, char **text);

#endif
