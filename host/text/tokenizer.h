/* Text <-> token ids, built from GGUF tokenizer metadata or a Hugging Face
 * tokenizer.json: byte-level BPE (GPT-2 style vocabulary and merges, with
 * the pre-tokenizer split regex of each model family, run with PCRE2's
 * Unicode properties) and SentencePiece-style BPE (Llama-2/Gemma vocabulary
 * with scores and <0xNN> byte fallback). Special and added tokens are
 * matched literally before BPE when asked to. */
#ifndef PB_TOKENIZER_H
#define PB_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

typedef struct pb_gguf pb_gguf;
typedef struct pb_tokenizer pb_tokenizer;

/* PB_ERR_UNSUPPORTED names the tokenizer model or pre-tokenizer when it is
 * not one this build implements. */
pb_status pb_tokenizer_from_gguf(pb_tokenizer **out, const pb_gguf *gguf);
pb_status pb_tokenizer_from_json(pb_tokenizer **out, const char *tokenizer_json_path);
void pb_tokenizer_free(pb_tokenizer *tok);

/* Encodes len bytes of UTF-8 text without adding BOS/EOS. parse_special:
 * text spelling a special/added token ("<|im_start|>") becomes that token
 * (as transformers does for chat templates); otherwise it is plain text.
 * *ids is malloc'd. Invalid UTF-8 is refused (PB_ERR_ARG, byte offset). */
pb_status pb_tokenizer_encode(const pb_tokenizer *tok, const char *text, size_t len, int parse_special, int32_t **ids,
                              int *n_ids);
/* Decodes ids to UTF-8 (special tokens included as their text); *text is
 * malloc'd and NUL-terminated. */
pb_status pb_tokenizer_decode(const pb_tokenizer *tok, const int32_t *ids, int n_ids, char **text);
int pb_tokenizer_vocab_size(const pb_tokenizer *tok);
/* The id of a token spelled exactly `text` in the vocabulary, or -1. */
int pb_tokenizer_token_id(const pb_tokenizer *tok, const char *text);

#endif
