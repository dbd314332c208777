/* Tokenizer metadata in GGUF (text/vocab.c, text/tokenizer.c): the input is
 * a GGUF file opened in memory; its tokenizer.ggml.* keys become a
 * vocabulary and a tokenizer (byte-level or SentencePiece BPE), which then
 * encode and decode a fixed text, as loading a model and tokenizing a
 * prompt would. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

static const char sample[] = "Hello, world! It's 2024: caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd <s> </s> <|im_start|>user\n"
                             "  spaces\t\ttabs 12345678 \xf0\x9f\x98\x80";

static void encode_decode(const pb_tokenizer *tok) {
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        int n = 0;
        if (pb_tokenizer_encode(tok, sample, sizeof sample - 1, special, &ids, &n) == PB_OK) {
            char *text = NULL;
            if (pb_tokenizer_decode(tok, ids, n, &text) == PB_OK)
                free(text);
        }
        free(ids);
    }
    (void)pb_tokenizer_token_id(tok, "<s>");
    (void)pb_tokenizer_vocab_size(tok);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pb_gguf *g = NULL;
    if (fuzz_note("gguf", pb_gguf_open_buffer(&g, data, size)) != PB_OK)
        return 0;
    pb_vocab vocab;
    if (fuzz_note("vocab", pb_vocab_from_gguf(&vocab, g)) == PB_OK)
        pb_vocab_free(&vocab);
    pb_tokenizer *tok = NULL;
    if (fuzz_note("tokenizer", pb_tokenizer_from_gguf(&tok, g)) == PB_OK) {
        encode_decode(tok);
        pb_tokenizer_free(tok);
    }
    pb_gguf_close(g);
    return 0;
}
