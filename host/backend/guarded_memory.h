/* Guarded memory: the "device" memory of the checked backend
 * (backend_checked.c). Each allocation is a mapping of its own, its bytes
 * ending against an inaccessible guard page, first filled with 0xff bytes
 * (NaN as floats, -1 as int32: device memory is not zeroed), and kept
 * inaccessible (PROT_NONE) except while an op that was handed it runs.
 * So the host touching it between ops faults, as it would on a GPU.
 * Freed allocations are unmapped but stay known for a while, so that a
 * stale pointer is named as one. Not thread-safe: one caller at a time. */
#ifndef PB_GUARDED_MEMORY_H
#define PB_GUARDED_MEMORY_H

#include <stddef.h>

#include "patchbay.h"

typedef struct pb_guarded_block {
    char *base;   /* what alloc returned: 64-byte aligned */
    size_t bytes; /* as asked */
    char *map;    /* the mapping: a guard page, the body, a guard page */
    size_t body;  /* the body's bytes: a whole number of pages, base's bytes at its end */
    int live;     /* 0 once freed (then map is unmapped) */
    int open;     /* readable and writable now */
} pb_guarded_block;

typedef struct pb_guarded_memory {
    pb_guarded_block *blocks; /* sorted by base */
    int n, n_freed;
    size_t cap;
    pb_guarded_block **opened; /* the blocks open now (no block moves while any is) */
    int n_opened;
    size_t cap_opened;
    size_t live_bytes;
    size_t page;
} pb_guarded_memory;

void pb_guarded_init(pb_guarded_memory *g);
/* Unmaps every live block and forgets every block. */
void pb_guarded_release(pb_guarded_memory *g);

pb_status pb_guarded_alloc(pb_guarded_memory *g, void **out, size_t bytes);
/* 0: freed; -1: ptr is not the base of a block; -2: freed already. */
int pb_guarded_free(pb_guarded_memory *g, void *ptr);

/* The block whose bytes [base, base + bytes) hold p, live or freed, or
 * NULL. A freed block's range may since hold other memory. */
pb_guarded_block *pb_guarded_find(pb_guarded_memory *g, const void *p);

/* Makes a live block readable and writable until pb_guarded_close_all. */
pb_status pb_guarded_open(pb_guarded_memory *g, pb_guarded_block *b);
void pb_guarded_close_all(pb_guarded_memory *g);

#endif
