/* A whole model from a Hugging Face folder (formats/safetensors_source.c,
 * formats/hf_config.c, model/model.c, text/model_text.c): config.json,
 * model.safetensors and tokenizer_config.json (its chat template), given in
 * that order in one input separated by the line "\n--file--\n" (a missing
 * part is an empty file). The hyperparameters are checked against every
 * tensor's name, dtype and shape, the weights converted into the reference
 * backend, and the chat template used once, as `patchbay sweep --model DIR`
 * would. The seed is a one-layer model of d_model 4. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "patchbay.h"

static const char *const names[3] = {"config.json", "model.safetensors", "tokenizer_config.json"};
static char dir[256], files[3][320];

static void remove_folder(void) {
    for (int i = 0; i < 3; i++)
        remove(files[i]);
    remove(dir);
}

static void make_folder(void) {
    if (!fuzz_scratch_path(dir, sizeof dir, "hf_model"))
        abort();
    mkdir(dir, 0700);
    for (int i = 0; i < 3; i++)
        snprintf(files[i], sizeof files[i], "%s/%s", dir, names[i]);
    atexit(remove_folder);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0])
        make_folder();
    fuzz_part parts[3] = {{0}};
    int n = fuzz_split(data, size, "\n--file--\n", parts, 3);
    for (int i = 0; i < 3; i++)
        fuzz_write_file(files[i], i < n ? parts[i].data : NULL, i < n ? parts[i].size : 0);
    pb_load_options options = {.n_threads = 1, .backend = PB_BACKEND_REFERENCE};
    pb_model *model = NULL;
    if (fuzz_note("model", pb_model_load(&model, dir, &options)) != PB_OK)
        return 0;
    int32_t *ids = NULL;
    int n_ids = 0;
    if (fuzz_note("chat", pb_model_chat_tokenize(model, "Be brief.", "Hi", &ids, &n_ids)) == PB_OK)
        free(ids);
    pb_model_free(model);
    return 0;
}
