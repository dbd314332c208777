/* A Hugging Face config.json (formats/hf_config.c) through a scratch file:
 * the hyperparameters, rope scaling of both transformers layouts and the
 * token ids, each refused when the engine cannot run it. */
#include <stdint.h>

#include "formats/hf_config.h"
#include "fuzz_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    fuzz_scratch_input(path, sizeof path, "config.json", data, size);
    pb_model_config cfg;
    (void)fuzz_note("config", pb_hf_config_read(&cfg, path));
    return 0;
}
