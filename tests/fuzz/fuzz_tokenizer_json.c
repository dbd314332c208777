/* A Hugging Face tokenizer.json (text/tokenizer.c, text/vocab.c) through a
 * scratch file: the vocabulary table, then the tokenizer (model, merges,
 * pre-tokenizer split patterns compiled by PCRE2, added tokens), which
 * encodes and decodes a fixed text as a prompt would be (fuzz_util.c). */
#include <stdint.h>

#include "fuzz_util.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    fuzz_scratch_input(path, sizeof path, "tokenizer.json", data, size);
    pb_vocab vocab;
    if (fuzz_note("vocab", pb_vocab_from_tokenizer_json(&vocab, path)) == PB_OK)
        pb_vocab_free(&vocab);
    pb_tokenizer *tok = NULL;
    if (fuzz_note("tokenizer", pb_tokenizer_from_json(&tok, path)) != PB_OK)
        return 0;
    fuzz_tokenizer_exercise(tok);
    pb_tokenizer_free(tok);
    return 0;
}
