/* One .safetensors file (formats/safetensors.c): header length, header
 * JSON, dtypes, shapes and data offsets. The reader maps a path, so each
 * input goes through a scratch file; every tensor it hands out is then
 * found by name and converted to fp32, reading all of its bytes. */
#include <stdint.h>
#include <stdlib.h>

#include "formats/safetensors.h"
#include "fuzz_util.h"

static void read_tensors(const pb_safetensors *st) {
    for (int64_t i = 0; i < pb_safetensors_count(st); i++) {
        const pb_st_tensor *t = pb_safetensors_at(st, i);
        if (pb_safetensors_find(st, t->name) != t)
            abort(); /* the name index must agree with the list */
        if (t->n_elements > (1u << 20))
            continue;
        float *out = malloc((size_t)t->n_elements * sizeof *out + 1);
        if (!out)
            abort();
        pb_st_tensor_to_f32(t, out);
        free(out);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    fuzz_scratch_input(path, sizeof path, "model.safetensors", data, size);
    pb_safetensors *st = NULL;
    if (fuzz_note("safetensors", pb_safetensors_open(&st, path)) == PB_OK) {
        read_tensors(st);
        pb_safetensors_close(st);
    }
    return 0;
}
