/* Tokenizer metadata in GGUF (text/vocab.c, text/tokenizer.c): the input is
 * a GGUF file opened in memory; its tokenizer.ggml.* keys become a
 * vocabulary and a tokenizer (byte-level or SentencePiece BPE), which then
 * encode and decode a fixed text, as loading a model and tokenizing a
 * prompt would. */
#include <stdint.h>

#include "formats/gguf.h"
#include "fuzz_util.h"
#include "text/tokenizer.h"
#include "text/vocab.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    pb_gguf *g = NULL;
    if (fuzz_note("gguf", pb_gguf_open_buffer(&g, data, size)) != PB_OK)
        return 0;
    pb_vocab vocab;
    if (fuzz_note("vocab", pb_vocab_from_gguf(&vocab, g)) == PB_OK)
        pb_vocab_free(&vocab);
    pb_tokenizer *tok = NULL;
    if (fuzz_note("tokenizer", pb_tokenizer_from_gguf(&tok, g)) == PB_OK) {
        fuzz_tokenizer_exercise(tok);
        pb_tokenizer_free(tok);
    }
    pb_gguf_close(g);
    return 0;
}
