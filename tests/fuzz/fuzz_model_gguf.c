/* A whole model from a GGUF file (model/model.c, formats/gguf_source.c,
 * text/model_text.c): hyperparameters read from the metadata, every
 * tensor's name, type and shape checked against them, the weights
 * dequantised into the reference backend, then the vocabulary, tokenizer
 * and chat template loaded from the same file and used once, as
 * `patchbay sweep --model FILE` would. Through a scratch file (the loader
 * maps a path); the seed is a one-layer model of d_model 4. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "patchbay.h"

static void use_text(const pb_model *model) {
    int32_t *ids = NULL;
    int n = 0;
    if (pb_model_tokenize(model, "Hello there", 1, &ids, &n) == PB_OK) {
        char *text = NULL;
        if (pb_model_detokenize(model, ids, n, &text) == PB_OK)
            free(text);
    }
    free(ids);
    ids = NULL;
    if (pb_model_chat_tokenize(model, NULL, "Hi", &ids, &n) == PB_OK)
        free(ids);
    char buf[64];
    (void)pb_model_token_text(model, 0, buf, sizeof buf);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    fuzz_scratch_input(path, sizeof path, "model.gguf", data, size);
    pb_load_options options = {.n_threads = 1, .backend = PB_BACKEND_REFERENCE};
    pb_model *model = NULL;
    if (fuzz_note("model", pb_model_load(&model, path, &options)) == PB_OK) {
        use_text(model);
        pb_model_free(model);
    }
    return 0;
}
