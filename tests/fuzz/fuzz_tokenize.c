/* Prompt text through real tokenizers (text/tokenizer.c): SmolLM2's
 * byte-level BPE from tests/fixtures (tokenizer.json) and the SentencePiece
 * one of spm_bpe.gguf, loaded once. The input is the text: invalid UTF-8
 * must be refused cleanly, and whatever encodes must decode. The first
 * byte picks the tokenizer and whether special tokens are parsed. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "text/tokenizer.h"

static pb_tokenizer *tokenizers[2];
static pb_gguf *spm_gguf;

static void free_tokenizers(void) {
    for (int i = 0; i < 2; i++)
        pb_tokenizer_free(tokenizers[i]);
    pb_gguf_close(spm_gguf);
}

/* PB_FIXTURES, else tests/fixtures below the working directory. */
static void load_tokenizers(void) {
    const char *fixtures = getenv("PB_FIXTURES");
    if (!fixtures)
        fixtures = "tests/fixtures";
    char path[1024];
    snprintf(path, sizeof path, "%s/tokenizer/smollm2_tokenizer.json", fixtures);
    if (pb_tokenizer_from_json(&tokenizers[0], path) != PB_OK) {
        fprintf(stderr, "fuzz_tokenize: %s (set PB_FIXTURES)\n", pb_last_error());
        abort();
    }
    snprintf(path, sizeof path, "%s/tokenizer/spm_bpe.gguf", fixtures);
    if (pb_gguf_open(&spm_gguf, path) != PB_OK || pb_tokenizer_from_gguf(&tokenizers[1], spm_gguf) != PB_OK) {
        fprintf(stderr, "fuzz_tokenize: %s (set PB_FIXTURES)\n", pb_last_error());
        abort();
    }
    atexit(free_tokenizers);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!tokenizers[0])
        load_tokenizers();
    if (size == 0)
        return 0;
    const pb_tokenizer *tok = tokenizers[data[0] & 1];
    int special = (data[0] >> 1) & 1;
    int32_t *ids = NULL;
    int n = 0;
    if (fuzz_note("encode", pb_tokenizer_encode(tok, (const char *)data + 1, size - 1, special, &ids, &n)) == PB_OK) {
        char *text = NULL;
        if (pb_tokenizer_decode(tok, ids, n, &text) == PB_OK)
            free(text);
    }
    free(ids);
    return 0;
}
