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
    pb_backend *backend;
    pb_weight_source *src;
    pb_stream_tensor *tensors;
    int *first; /* (n_layers + 1) */
    int n_layers;
    char *slot[2];
    size_t slot_bytes;
    int held[2];         /* the layer in each slot (its copies perhaps still queued), or -1 */
    int queued[2];       /* 1 until the compute has been made to wait for the slot's copies */
    const void **pinned; /* (tensors) the source bytes pinned for each, or NULL */
    void *raw;           /* host: one matrix as stored */
    float *wide;         /* host: one matrix decoded to fp32 (the slot's storage), or NULL when none is */
    size_t raw_bytes;    /* of raw */
    size_t wide_bytes;   /* of wide */
    long long layers_read;
    double bytes_read;
};

/* 1 when the file's bytes are the slot's storage: the same type, read as
 * rows (quantised blocks, or f32 as f32); else the slot holds fp32. */
static int stored_as_is(pb_dtype dtype, const pb_tensor_info *info) { return pb_dtype_ggml(dtype) == info->type; }

/* 1 when the source's bytes, as they lie, are the slot's: stored as is,
 * with no rows to reorder or pick. They are copied from there, with no
 * host staging. */
static int copied_in_place(const pb_weight_source *src, pb_dtype dtype, const pb_tensor_info *info) {
    return stored_as_is(dtype, info) && pb_weight_source_has_raw(src) && !info->permuted_heads && !info->transposed &&
           !pb_tensor_is_view(info);
}

/* Host staging one matrix takes: raw (its bytes as stored where those are
 * the slot's, or as converted to the slot's 16-bit type) and wide (fp32,
 * where it is decoded first). None when it is copied in place. */
static void staging_needs(const pb_weight_source *src, pb_dtype dtype, const pb_tensor_info *info, size_t *raw,
                          size_t *wide) {
    *raw = *wide = 0;
    if (copied_in_place(src, dtype, info))
        return;
    if (stored_as_is(dtype, info)) {
        *raw = pb_dtype_bytes(dtype, info->n_elements);
        return;
    }
    *wide = sizeof(float) * info->n_elements;
    *raw = dtype == PB_DTYPE_F32 ? 0 : pb_dtype_bytes(dtype, info->n_elements);
}

size_t pb_stream_staging_for(const pb_weight_source *src, pb_dtype dtype, const pb_tensor_info *info) {
    size_t raw, wide;
    staging_needs(src, dtype, info, &raw, &wide);
    return raw + wide;
}

/* Sizes the host staging for the largest matrix of each path. */
static pb_status alloc_staging(pb_stream *s) {
    for (int i = 0; i < s->first[s->n_layers]; i++) {
        const pb_stream_tensor *t = &s->tensors[i];
        size_t raw, wide;
        staging_needs(s->src, t->dtype, &t->info, &raw, &wide);
        s->raw_bytes = raw > s->raw_bytes ? raw : s->raw_bytes;
        s->wide_bytes = wide > s->wide_bytes ? wide : s->wide_bytes;
    }
    s->raw = s->raw_bytes ? malloc(s->raw_bytes) : NULL;
    s->wide = s->wide_bytes ? malloc(s->wide_bytes) : NULL;
    if ((s->raw_bytes && !s->raw) || (s->wide_bytes && !s->wide))
        return pb_fail(PB_ERR_OOM, "streaming: out of memory for %.1f MiB of staging",
                       (double)(s->raw_bytes + s->wide_bytes) / (1 << 20));
    return PB_OK;
}

pb_status pb_stream_create(pb_stream **out, pb_backend *backend, pb_weight_source *src, const pb_stream_tensor *tensors,
                           const int *first, int n_layers, void *slots[2], size_t slot_bytes) {
    *out = NULL;
    pb_stream *s = calloc(1, sizeof *s);
    size_t n = (size_t)first[n_layers];
    if (s) {
        s->tensors = malloc(sizeof *s->tensors * (n ? n : 1));
        s->first = malloc(sizeof(int) * (size_t)(n_layers + 1));
        s->pinned = calloc(n ? n : 1, sizeof *s->pinned);
    }
    if (!s || !s->tensors || !s->first || !s->pinned) {
        if (s)
            pb_stream_free(s);
        else
            pb_weight_source_free(src);
        return pb_fail(PB_ERR_OOM, "streaming: out of memory for %zu tensors", n);
    }
    s->backend = backend;
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

void pb_stream_unpin(pb_stream *s) {
    for (int i = 0; s && i < s->first[s->n_layers]; i++)
        if (s->pinned[i]) {
            s->backend->ops->unpin(s->backend, s->pinned[i]);
            s->pinned[i] = NULL;
        }
}

void pb_stream_free(pb_stream *s) {
    if (!s)
        return;
    if (s->pinned && s->first)
        pb_stream_unpin(s);
    free(s->pinned);
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
 * failures are ignored. A GGUF file's mapping only: MADV_DONTNEED on memory
 * a source owns would discard its bytes. */
static void advise_layer(const pb_stream *s, int l, int advice) {
    if (l < 0 || l >= s->n_layers || !s->src->gguf) /* a source's own memory is no mapping to drop */
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

/* The source's bytes of tensor i, pinned at their first use where the
 * source owns them and the backend pins (a failed pin only slows). */
static pb_status bytes_in_place(pb_stream *s, int i, const void **data) {
    uint64_t n_bytes;
    PB_TRY(pb_weight_source_raw(s->src, &s->tensors[i].info, data, &n_bytes));
    pb_backend *b = s->backend;
    if (s->src->owns_raw && b->ops->pin && !s->pinned[i]) {
        if (b->ops->pin(b, *data, (size_t)n_bytes) == PB_OK)
            s->pinned[i] = *data;
        else
            pb_error_clear();
    }
    return PB_OK;
}

/* Matrix i into slot k at its offset: from the source's bytes on the
 * lane's queue, or read (reordered; or decoded, and narrowed to a 16-bit
 * slot) into host staging and uploaded in order with the compute. */
static pb_status fill_tensor(pb_stream *s, int i, int k) {
    const pb_stream_tensor *t = &s->tensors[i];
    pb_backend *b = s->backend;
    char *dst = s->slot[k] + t->offset;
    size_t bytes = pb_dtype_bytes(t->dtype, t->info.n_elements);
    s->bytes_read += (double)bytes;
    if (copied_in_place(s->src, t->dtype, &t->info)) {
        const void *data;
        PB_TRY(bytes_in_place(s, i, &data));
        return b->ops->lane_upload ? b->ops->lane_upload(b, k, dst, data, bytes) : b->ops->upload(b, dst, data, bytes);
    }
    const void *host = s->raw;
    if (stored_as_is(t->dtype, &t->info)) {
        PB_TRY(pb_weight_source_read_rows(s->src, &t->info, 0, t->info.shape[0], s->raw));
    } else {
        PB_TRY(pb_weight_source_read_f32(s->src, &t->info, s->wide));
        if (t->dtype == PB_DTYPE_F32)
            host = s->wide;
        else /* a 16-bit slot (model.c allows no quantised conversion) */
            pb_dtype_from_f32(t->dtype, s->raw, s->wide, (size_t)t->info.n_elements);
    }
    return b->ops->upload(b, dst, host, bytes);
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

/* Queues layer l's copies into its slot, once the compute queued so far
 * is done with the layer the slot held (dropped: its fields cleared, its
 * pages advised away), and points m->layers[l] at the slot. */
static pb_status fill_slot(pb_stream *s, pb_model *m, int l) {
    pb_backend *b = s->backend;
    int k = l % 2;
    /* the slot's bytes are overwritten below: copies on the lane wait for
     * the queued compute; without lanes, wait here (a host backend: no-op) */
    PB_TRY(b->ops->lane_release ? b->ops->lane_release(b, k) : b->ops->synchronize(b));
    if (s->held[k] >= 0) {
        point_layer(s, m, s->held[k], NULL);
        advise_layer(s, s->held[k], MADV_DONTNEED);
    }
    s->held[k] = -1;
    for (int i = s->first[l]; i < s->first[l + 1]; i++)
        PB_TRY(fill_tensor(s, i, k));
    s->held[k] = l;
    s->queued[k] = 1;
    s->layers_read++;
    point_layer(s, m, l, s->slot[k]);
    return PB_OK;
}

pb_status pb_stream_acquire(pb_stream *s, pb_model *m, int l, int next) {
    if (l < 0 || l >= s->n_layers || next >= s->n_layers || next == l)
        return pb_fail(PB_ERR_ARG, "streaming: layer %d (then %d) of %d", l, next, s->n_layers);
    pb_backend *b = s->backend;
    int k = l % 2;
    if (s->held[k] != l)
        PB_TRY(fill_slot(s, m, l));
    if (s->queued[k] && b->ops->lane_wait)
        PB_TRY(b->ops->lane_wait(b, k));
    s->queued[k] = 0;
    if (next >= 0 && s->held[next % 2] != next) {
        if (next % 2 == k)
            return pb_fail(PB_ERR_ARG, "streaming: layers %d and %d share a slot", l, next);
        PB_TRY(fill_slot(s, m, next)); /* its copies overlap layer l's compute */
    }
    advise_layer(s, next >= 0 && next + 1 < s->n_layers ? next + 1 : l + 1 < s->n_layers ? l + 1 : 0, MADV_WILLNEED);
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
