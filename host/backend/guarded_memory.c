/* Guarded memory (guarded_memory.h): one anonymous mapping per block. */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "backend/guarded_memory.h"
#include "util/array.h"
#include "util/internal.h"

/* Freed blocks remembered before they are all forgotten at once. */
#define GUARDED_FREED_KEPT 4096
/* Blocks of at least this many bytes are laid on huge pages. */
#define GUARDED_HUGE ((size_t)2 << 20)

void pb_guarded_init(pb_guarded_memory *g) {
    memset(g, 0, sizeof *g);
    long page = sysconf(_SC_PAGESIZE);
    g->page = page > 0 ? (size_t)page : 4096;
}

void pb_guarded_release(pb_guarded_memory *g) {
    pb_guarded_close_all(g);
    for (int i = 0; i < g->n; i++)
        if (g->blocks[i].live)
            munmap(g->blocks[i].map, g->blocks[i].body + 2 * g->page);
    free(g->blocks);
    free(g->opened);
    pb_guarded_init(g);
}

/* Index of the first block whose base is above p. */
static int upper_bound(const pb_guarded_memory *g, const void *p) {
    int lo = 0, hi = g->n;
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if ((const char *)g->blocks[mid].base <= (const char *)p)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

pb_guarded_block *pb_guarded_find(pb_guarded_memory *g, const void *p) {
    int i = upper_bound(g, p) - 1;
    if (i < 0)
        return NULL;
    pb_guarded_block *b = &g->blocks[i];
    size_t extent = b->bytes ? b->bytes : 1;
    return (const char *)p < b->base + extent ? b : NULL;
}

/* Drops every freed block (their ranges may be mapped again). */
static void forget_freed(pb_guarded_memory *g) {
    int kept = 0;
    for (int i = 0; i < g->n; i++)
        if (g->blocks[i].live)
            g->blocks[kept++] = g->blocks[i];
    g->n = kept;
    g->n_freed = 0;
}

/* Drops the freed blocks whose mapping the new one [map, map + bytes) reuses. */
static void forget_overlapped(pb_guarded_memory *g, const char *map, size_t bytes) {
    int kept = 0;
    for (int i = 0; i < g->n; i++) {
        const pb_guarded_block *b = &g->blocks[i];
        int reused = !b->live && b->map < map + bytes && map < b->map + b->body + 2 * g->page;
        if (reused)
            g->n_freed--;
        else
            g->blocks[kept++] = *b;
    }
    g->n = kept;
}

static pb_status insert(pb_guarded_memory *g, const pb_guarded_block *b) {
    PB_TRY(pb_array_reserve(&g->blocks, &g->cap, (size_t)g->n + 1, sizeof *g->blocks, "checked-backend blocks"));
    int at = upper_bound(g, b->base);
    memmove(&g->blocks[at + 1], &g->blocks[at], sizeof *g->blocks * (size_t)(g->n - at));
    g->blocks[at] = *b;
    g->n++;
    return PB_OK;
}

/* A guard page, a body of `body` bytes starting on a multiple of `unit`
 * (a page, or a huge page so that opening and closing a large block
 * changes a few page-table entries, not one per 4 KiB), a guard page; all
 * inaccessible. *out = the first guard page. */
static pb_status map_block(const pb_guarded_memory *g, size_t body, size_t unit, char **out) {
    size_t slack = unit > g->page ? unit : 0, bytes = body + 2 * g->page;
    char *map = mmap(NULL, bytes + slack, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (map == MAP_FAILED)
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory mapping %zu bytes", body);
    char *start = map;
    if (slack) {
        uintptr_t first = ((uintptr_t)map + g->page + unit - 1) / unit * unit; /* the body's start */
        start = (char *)(first - g->page);
        if (start > map)
            munmap(map, (size_t)(start - map));
        if (map + bytes + slack > start + bytes)
            munmap(start + bytes, (size_t)(map + bytes + slack - (start + bytes)));
    }
    *out = start;
    return PB_OK;
}

pb_status pb_guarded_alloc(pb_guarded_memory *g, void **out, size_t bytes) {
    *out = NULL;
    if (g->n_opened)
        return pb_fail(PB_ERR_ARG, "checked backend: alloc while an op runs");
    size_t used = bytes ? (bytes + 63) / 64 * 64 : 64;
    size_t unit = used >= GUARDED_HUGE ? GUARDED_HUGE : g->page;
    size_t body = (used + unit - 1) / unit * unit;
    if (body < used || body + 2 * g->page + unit < body)
        return pb_fail(PB_ERR_OOM, "checked backend: %zu bytes cannot be mapped", bytes);
    char *map = NULL;
    PB_TRY(map_block(g, body, unit, &map));
    pb_guarded_block b = {map + g->page + (body - used), bytes, map, body, 1, 0};
    /* the body's last `used` bytes, filled as device memory is not: with NaN */
    if (mprotect(map + g->page, body, PROT_READ | PROT_WRITE) != 0) {
        munmap(map, body + 2 * g->page);
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory for %zu bytes", bytes);
    }
    if (unit == GUARDED_HUGE)
        (void)madvise(map + g->page, body, MADV_HUGEPAGE); /* advice: a failure only slows */
    memset(b.base, 0xff, used);
    mprotect(map + g->page, body, PROT_NONE);
    forget_overlapped(g, map, body + 2 * g->page);
    if (g->n_freed > GUARDED_FREED_KEPT)
        forget_freed(g);
    pb_status status = insert(g, &b);
    if (status != PB_OK) {
        munmap(map, body + 2 * g->page);
        return status;
    }
    g->live_bytes += bytes;
    *out = b.base;
    return PB_OK;
}

int pb_guarded_free(pb_guarded_memory *g, void *ptr) {
    pb_guarded_block *b = pb_guarded_find(g, ptr);
    if (!b || b->base != (char *)ptr)
        return -1;
    if (!b->live)
        return -2;
    munmap(b->map, b->body + 2 * g->page);
    b->live = 0;
    b->open = 0;
    g->live_bytes -= b->bytes;
    g->n_freed++;
    return 0;
}

pb_status pb_guarded_open(pb_guarded_memory *g, pb_guarded_block *b) {
    if (b->open)
        return PB_OK;
    PB_TRY(pb_array_reserve(&g->opened, &g->cap_opened, (size_t)g->n_opened + 1, sizeof *g->opened,
                            "open checked-backend blocks"));
    if (mprotect(b->map + g->page, b->body, PROT_READ | PROT_WRITE) != 0)
        return pb_fail(PB_ERR_OOM, "checked backend: cannot open a block of %zu bytes", b->bytes);
    b->open = 1;
    g->opened[g->n_opened++] = b;
    return PB_OK;
}

void pb_guarded_close_all(pb_guarded_memory *g) {
    for (int i = 0; i < g->n_opened; i++) {
        pb_guarded_block *b = g->opened[i];
        if (b->live)
            mprotect(b->map + g->page, b->body, PROT_NONE);
        b->open = 0;
    }
    g->n_opened = 0;
}
