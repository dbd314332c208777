/* pb_array_reserve (array.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/array.h"
#include "util/internal.h"

#define PB_ARRAY_FIRST 16 /* elements of a first allocation */

pb_status pb_array_reserve(void *items, size_t *capacity, size_t need, size_t size, const char *what) {
    if (need <= *capacity)
        return PB_OK;
    size_t cap = *capacity ? *capacity : PB_ARRAY_FIRST;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    uint64_t bytes;
    if (!pb_mul_u64(cap, size, &bytes) || bytes > SIZE_MAX)
        return pb_fail(PB_ERR_OOM, "%zu %s of %zu bytes each overflow the address space", cap, what, size);
    void *old; /* *items is some T *: read and written as bytes, not through a void ** */
    memcpy(&old, items, sizeof old);
    void *grown = realloc(old, (size_t)bytes);
    if (!grown)
        return pb_fail(PB_ERR_OOM, "out of memory for %zu %s (%zu bytes)", cap, what, (size_t)bytes);
    memcpy(items, &grown, sizeof grown);
    *capacity = cap;
    return PB_OK;
}
