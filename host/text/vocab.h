/* Token id -> bytes, from GGUF tokenizer metadata or a tokenizer.json. */
#ifndef PB_VOCAB_H
#define PB_VOCAB_H

#include <stddef.h>

#include "patchbay.h"

typedef struct pb_gguf pb_gguf;

typedef struct pb_vocab {
    int n_tokens;
    char *bytes;     /* all decoded tokens back to back */
    size_t *offsets; /* (n_tokens + 1) into bytes */
} pb_vocab;

/* Missing tokenizer metadata is not an error: the vocabulary stays empty
 * and tokens print as "<id>". */
pb_status pb_vocab_from_gguf(pb_vocab *vocab, const pb_gguf *gguf);
pb_status pb_vocab_from_tokenizer_json(pb_vocab *vocab, const char *path);
void pb_vocab_free(pb_vocab *vocab);
/* Decodes a byte-level (GPT-2) token string into raw bytes: out needs at
 * most len bytes. Returns the decoded length. */
size_t pb_vocab_byte_level_decode(const char *token, size_t len, char *out);

#endif
