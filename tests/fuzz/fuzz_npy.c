/* .npy files (formats/npy.c), as direction files and id arrays are read:
 * through a scratch file, as float32 and as int32. A caller trusts the
 * shape it gets back, so every element the shape promises is read. */
#include <stdint.h>
#include <stdlib.h>

#include "formats/npy.h"
#include "fuzz_util.h"

static volatile uint32_t sink;

static void read_as(const char *path, pb_npy_dtype dtype) {
    void *values = NULL;
    int n_dims = 0;
    int64_t shape[8];
    if (fuzz_note(dtype == PB_NPY_F32 ? "f32" : "i32", pb_npy_read(path, &values, dtype, &n_dims, shape)) != PB_OK)
        return;
    uint64_t count = 1;
    for (int i = 0; i < n_dims; i++) {
        if (shape[i] < 0)
            abort(); /* a shape the reader accepted must be usable as sizes */
        if (shape[i] && count > UINT64_MAX / (uint64_t)shape[i])
            abort();
        count *= (uint64_t)shape[i];
    }
    const uint32_t *words = values;
    for (uint64_t i = 0; i < count; i++)
        sink ^= words[i];
    free(values);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    fuzz_scratch_input(path, sizeof path, "array.npy", data, size);
    read_as(path, PB_NPY_F32);
    read_as(path, PB_NPY_I32);
    return 0;
}
