/* Chat templates, recognised from a model's tokenizer.chat_template (or
 * named explicitly) and rendered in C: ChatML (SmolLM2, Qwen2), Qwen3,
 * Llama-3, Llama-2 / Mistral [INST], Gemma (1/2), Gemma-3, Phi-3 / Phi-3.5,
 * OLMo-2 / Tulu 3. Rendering yields text that spells the template's special
 * tokens; encode it with parse_special = 1. */
#ifndef PB_CHAT_TEMPLATE_H
#define PB_CHAT_TEMPLATE_H

#include "patchbay.h"

typedef enum pb_chat_format {
    PB_CHAT_CHATML = 0,
    PB_CHAT_LLAMA3,
    PB_CHAT_LLAMA2,
    PB_CHAT_GEMMA,
    PB_CHAT_GEMMA3, /* Gemma-3: BOS, the system message folded into the first user turn */
    PB_CHAT_QWEN3,  /* ChatML without a default system prompt; rendered as transformers does without
                       enable_thinking (thinking on: the generation prompt is "<|im_start|>assistant\n") */
    PB_CHAT_PHI3,   /* "<|user|>\n" U "<|end|>\n<|assistant|>\n" (Phi-3, Phi-3.5) */
    PB_CHAT_OLMO2   /* "<|user|>\n" U "\n<|assistant|>\n" (OLMo-2 Instruct, Tulu 3) */
} pb_chat_format;

/* Where a system prompt goes. */
typedef enum pb_chat_system_style {
    PB_CHAT_SYSTEM_TURN = 0,  /* a turn of its own (ChatML, Llama-3) */
    PB_CHAT_SYSTEM_SYS_BLOCK, /* Llama-2: "<<SYS>>\n" S "\n<</SYS>>\n\n" folded into the first [INST] */
    PB_CHAT_SYSTEM_PREFIX,    /* Mistral (v0.2 update, v0.3): S "\n\n" before the user text inside [INST];
                                 Gemma-3: S "\n\n" (S unstripped) before the stripped user text */
    PB_CHAT_SYSTEM_NONE,      /* Gemma-2, Mistral v0.1/v0.2 originals: the template raises on a system
                                 message, so rendering one is refused */
    PB_CHAT_SYSTEM_DROPPED    /* the original Phi-3-mini: no system branch, so the template drops a system
                                 message without a word; rendering one is refused rather than lose it */
} pb_chat_system_style;

typedef struct pb_chat_template {
    pb_chat_format format;
    char name[32];        /* "chatml", "qwen3", "llama3", "llama2", "gemma", "gemma3", "phi3", "olmo2" */
    char *default_system; /* system prompt the template adds when none is given, or NULL */
    char *bos; /* BOS text the template emits ("<s>", "<|begin_of_text|>", "<bos>", "<|endoftext|>") or NULL */
    /* Details read from the template text (defaults when forced by name). */
    pb_chat_system_style system_style;
    int trim;              /* the template strips message text (Jinja |trim, .strip()): Llama-3, Llama-2, Gemma */
    int skip_empty_system; /* Phi-3.5: a system message with empty content adds no turn ({% if ... and
                              message['content'] %}) */
    char *system_preamble; /* Llama-3.1+: text that always opens the system turn, even with no system
                                  message ("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n"),
                                  or NULL. The date is the template's literal fallback, never today's. */
    char inst_open[16];    /* [INST] family: "[INST] " (Llama-2, Mistral v0.1/v0.3) or " [INST] " (v0.2 update) */
    char inst_close[16];   /* " [/INST]" or "[/INST]" (Mistral v0.3) */
} pb_chat_template;

/* Recognises template_text (a Jinja chat template). name, when not NULL,
 * forces a format ("chatml", "qwen3", "llama3", "llama2", "gemma", "gemma3", "phi3", "olmo2") and template_text
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
 * an explicit empty system turn where the format has one (Phi-3.5: none,
 * as its template skips empty content). A system prompt (even "") for a
 * format without a system role (PB_CHAT_SYSTEM_NONE, _DROPPED) is refused
 * with PB_ERR_UNSUPPORTED. *text is malloc'd. */
pb_status pb_chat_template_render(const pb_chat_template *t, const char *system, const char *user, char **text);

#endif
