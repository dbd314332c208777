/* The one growth rule for arrays filled one element (or one chunk) at a
 * time: the capacity doubles, from 16 elements, until it holds what is
 * needed, with the byte count checked for overflow. */
#ifndef PB_ARRAY_H
#define PB_ARRAY_H

#include <stddef.h>

#include "patchbay.h"

/* Makes the array at *items (a T **, passed as void *: *capacity elements of
 * `size` bytes) hold at least `need` elements. PB_ERR_OOM (the message
 * names `what`, e.g. "token ids") on overflow or a failed allocation, with
 * *items and *capacity as they were. */
pb_status pb_array_reserve(void *items, size_t *capacity, size_t need, size_t size, const char *what);

#endif
