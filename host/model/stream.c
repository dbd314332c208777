/* Streamed layer weights (stream.h). */
#define _DEFAULT_SOURCE
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "formats/dtype.h"
#include "model/stream.h"
#include "util/internal.h"

struct pb_stream {
    pb_weight_source *src;
    pb_stream_tensor *tensors;
    int *first; /* (n_layers + 1) */
    int n_layers;
    char *slot[2];
    size_t slot_bytes;
    int held[2];       /* the layer in each slot, or -1 */
    void *raw;         /* host: one matrix as stored */
    float *wide;       /* host: one matrix decoded to fp32 (the slot's storage), or NULL when none is */
    size_t raw_bytes;  /* of raw */
    size_t wide_bytes; /* of wide */
    long long layers_read;
    double bytes_read;
};

/* 1 when the file's bytes are the slot's storage: the same type, read as
 * rows (quantised blocks, or f32 as f32); else the slot holds fp32. */
static int stored_as_is(pb_dtype dtype, const pb_tensor_info *info) { return pb_dtype_ggml(dtype) == info->type; }

size_t pb_stream_staging_for(pb_dtype dtype, const pb_tensor_info *info) {
    return stored_as_is(dtype, info) ? pb_dtype_bytes(dtype, info->n_elements) : sizeof(float) * info->n_elements;
}

/* Sizes the host staging for the largest matrix of each path. */
static pb_status alloc_staging(pb_stream *s) {
    for (int i = 0; i < s->first[s->n_layers]; i++) {
        const pb_stream_tensor *t = &s->tensors[i];
        size_t bytes = pb_stream_staging_for(t->dtype, &t->info);
        size_t *most = stored_as_is(t->dtype, &t->info) ? &s->raw_bytes : &s->wide_bytes;
        *most = bytes > *most ? bytes : *most;
    }
    s->raw = s->raw_bytes ? malloc(s->raw_bytes) : NULL;
    s->wide = s->wide_bytes ? malloc(s->wide_bytes) : NULL;
    if ((s->raw_bytes && !s->raw) || (s->wide_bytes && !s->wide))
        return pb_fail(PB_ERR_OOM, "streaming: out of memory for %.1f MiB of staging",
                       (double)(s->raw_bytes + s->wide_bytes) / (1 << 20));
    return PB_OK;
}

pb_status pb_stream_create(pb_stream **out, pb_weight_source *src, const pb_stream_tensor *tensors, const int *first,
                           int n_layers, void *slots[2], size_t slot_bytes) {
    *out = NULL;
    pb_stream *s = calloc(1, sizeof *s);
    size_t n = (size_t)first[n_layers];
    if (s) {
        s->tensors = malloc(sizeof *s->tensors * (n ? n : 1));
        s->first = malloc(sizeof(int) * (size_t)(n_layers + 1));
    }
    if (!s || !s->tensors || !s->first) {
        if (s)
            pb_stream_free(s);
        else
            pb_weight_source_free(src);
        return pb_fail(PB_ERR_OOM, "streaming: out of memory for %zu tensors", n);
    }
    s->src = src;
    memcpy(s->tensors, tensors, sizeof *s->tensors * n);
    memcpy(s->first, first, sizeof(int) * (size_t)(n_layers + 1));
    s->n_layers = n_layers;
    s->slot[0] = slots[0];
    s->slot[1] = slots[1];
    s->slot_bytes = slot_bytes;
    s->held[0] = s->held[1] = -1;
    pb_status status = alloc_staging(s);
    if (status != PB_OK) {
        pb_stream_free(s);
        return status;
    }
    *out = s;
    return PB_OK;
}

void pb_stream_free(pb_stream *s) {
    if (!s)
        return;
    pb_weight_source_free(s->src);
    free(s->tensors);
    free(s->first);
    free(s->raw);
    free(s->wide);
    free(s);
}

/* Asks the kernel about layer l's pages in the file's mapping: read them
 * ahead (MADV_WILLNEED) or drop them from this process (MADV_DONTNEED; a
 * read-only file mapping refaults them from the page cache). Advice only:
 * failures are ignored, and sources without raw bytes have none to give. */
static void advise_layer(const pb_stream *s, int l, int advice) {
    if (l < 0 || l >= s->n_layers)
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (int i = s->first[l]; i < s->first[l + 1]; i++) {
        const void *data;
        uint64_t n_bytes;
        if (s->src->ops->raw(s->src, &s->tensors[i].info, &data, &n_bytes) != PB_OK) {
            pb_error_clear();
            continue;
        }
        uintptr_t start = (uintptr_t)data / page * page, end = (uintptr_t)data + n_bytes;
        (void)madvise((void *)start, end - start, advice);
    }
}

/* One matrix into the slot at its offset. */
static pb_status fill_tensor(pb_stream *s, pb_model *m, const pb_stream_tensor *t, char *slot) {
    pb_backend *b = m->backend;
    size_t bytes = pb_dtype_bytes(t->dtype, t->info.n_elements);
    const void *host = s->raw;
    if (stored_as_is(t->dtype, &t->info)) {
        PB_TRY(pb_weight_source_read_rows(s->src, &t->info, 0, t->info.shape[0], s->raw));
    } else {
        PB_TRY(pb_weight_source_read_f32(s->src, &t->info, s->wide));
        host = s->wide;
    }
    s->bytes_read += (double)bytes;
    return b->ops->upload(b, slot + t->offset, host, bytes);
}

/* Points (or, with slot NULL, clears) layer l's streamed fields. */
static void point_layer(const pb_stream *s, pb_model *m, int l, char *slot) {
    for (int i = s->first[l]; i < s->first[l + 1]; i++) {
        const pb_stream_tensor *t = &s->tensors[i];
        pb_matrix *field = (pb_matrix *)(void *)((char *)&m->layers[l] + t->field);
        *field = (pb_matrix){slot ? slot + t->offset : NULL, t->dtype};
    }
    pb_model_fuse_layer(m, l);
}

pb_status pb_stream_acquire(pb_stream *s, pb_model *m, int l) {
    if (l < 0 || l >= s->n_layers)
        return pb_fail(PB_ERR_ARG, "streaming: layer %d of %d", l, s->n_layers);
    int k = l % 2;
    if (s->held[k] == l)
        return PB_OK;
    /* the slot's bytes are overwritten below: wait for the runs queued on
     * the layer it held (on a host backend, a no-op) */
    PB_TRY(m->backend->ops->synchronize(m->backend));
    if (s->held[k] >= 0) {
        point_layer(s, m, s->held[k], NULL);
        advise_layer(s, s->held[k], MADV_DONTNEED);
    }
    s->held[k] = -1;
    for (int i = s->first[l]; i < s->first[l + 1]; i++)
        PB_TRY(fill_tensor(s, m, &s->tensors[i], s->slot[k]));
    s->held[k] = l;
    s->layers_read++;
    point_layer(s, m, l, s->slot[k]);
    advise_layer(s, l + 1 < s->n_layers ? l + 1 : 0, MADV_WILLNEED);
    return PB_OK;
}

int pb_stream_has_quantised(const pb_stream *s) {
    for (int i = 0; i < s->first[s->n_layers]; i++)
        if (pb_dtype_is_quantised(s->tensors[i].dtype))
            return 1;
    return 0;
}

void pb_stream_counters(const pb_stream *s, long long *layers_read, double *bytes_read) {
    *layers_read = s->layers_read;
    *bytes_read = s->bytes_read;
}
