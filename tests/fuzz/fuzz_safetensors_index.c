/* A sharded safetensors checkpoint (formats/safetensors.c): the input is
 * model.safetensors.index.json, then up to two shards, separated by the
 * line "\n--shard--\n"; the shards are written beside the index as
 * model-00001-of-00002.safetensors and model-00002-of-00002.safetensors (a
 * missing part is an empty file) and the folder is opened, as
 * pb_model_load opens a Hugging Face checkpoint; every tensor is then found
 * by name and converted to fp32 from its shard. */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "formats/safetensors.h"
#include "fuzz_util.h"

static const char *const shard_names[2] = {"model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};

static char dir[256], files[3][320];

static void make_folder(void) {
    if (!fuzz_scratch_path(dir, sizeof dir, "sharded"))
        abort();
    mkdir(dir, 0700);
    snprintf(files[0], sizeof files[0], "%s/model.safetensors.index.json", dir);
    for (int i = 0; i < 2; i++)
        snprintf(files[i + 1], sizeof files[i + 1], "%s/%s", dir, shard_names[i]);
}

static void remove_folder(void) {
    for (int i = 0; i < 3; i++)
        remove(files[i]);
    remove(dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) {
        make_folder();
        atexit(remove_folder);
    }
    fuzz_part parts[3] = {{0}};
    int n = fuzz_split(data, size, "\n--shard--\n", parts, 3);
    for (int i = 0; i < 3; i++)
        fuzz_write_file(files[i], i < n ? parts[i].data : NULL, i < n ? parts[i].size : 0);
    pb_safetensors *st = NULL;
    if (fuzz_note("safetensors", pb_safetensors_open(&st, dir)) == PB_OK) {
        for (int64_t i = 0; i < pb_safetensors_count(st); i++) {
            const pb_st_tensor *t = pb_safetensors_at(st, i);
            if (pb_safetensors_find(st, t->name) != t)
                abort();
            if (t->n_elements > (1u << 20))
                continue;
            float *out = malloc((size_t)t->n_elements * sizeof *out + 1);
            if (!out)
                abort();
            pb_st_tensor_to_f32(t, out); /* every byte of the shard the tensor claims */
            free(out);
        }
        pb_safetensors_close(st);
    }
    return 0;
}
