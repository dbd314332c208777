/* A Hugging Face tokenizer.json (text/tokenizer.c, text/vocab.c) through a
 * scratch file: the vocabulary table, then the tokenizer (model, merges,
 * pre-tokenizer split patterns compiled by PCRE2, added tokens), which
 * encodes and decodes a fixed text as a prompt would be. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

static const char sample[] = "Hello, world! It's 2024: caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd <|im_start|>user\n"
                             "  spaces\t\ttabs 12345678 <s> \xf0\x9f\x98\x80";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    if (!path[0] && !fuzz_scratch_path(path, sizeof path, "tokenizer.json"))
        abort();
    fuzz_write_file(path, data, size);
    pb_vocab vocab;
    if (fuzz_note("vocab", pb_vocab_from_tokenizer_json(&vocab, path)) == PB_OK)
        pb_vocab_free(&vocab);
    pb_tokenizer *tok = NULL;
    if (fuzz_note("tokenizer", pb_tokenizer_from_json(&tok, path)) != PB_OK)
        return 0;
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
    pb_tokenizer_free(tok);
    return 0;
}
