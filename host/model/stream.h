/* Streamed layer weights (--weights stream): the weight source stays open,
 * and each layer's matrices are copied from it into one of two slots of the
 * model's arena. When the executor reaches layer l (pb_model_layer_acquire)
 * and says which layer it needs next, that one's copies are queued at once,
 * on the backend's lanes (backend.h: a queue beside the compute, so they
 * run while layer l computes) where it has them. Matrices whose bytes lie
 * in the source as the slot stores them are copied from there (pinned
 * first where the source owns them); the rest are read through host
 * staging. The kernel is asked to read the layer after next ahead from a
 * GGUF mapping (madvise) and may drop an evicted layer's pages. Slot s
 * holds layers l with l % 2 == s; a layer already in its slot is not read
 * again, so the layers read are those a run without read-ahead reads. */
#ifndef PB_STREAM_H
#define PB_STREAM_H

#include <stddef.h>

#include "model/model.h"
#include "model/weight_source.h"

/* One streamed matrix: where the file keeps it, how it is stored in the
 * slot, and which pb_layer_weights field points at it. */
typedef struct pb_stream_tensor {
    pb_tensor_info info; /* as the source found it */
    pb_dtype dtype;      /* storage in the slot */
    size_t offset;       /* in the slot, bytes */
    size_t field;        /* offsetof(pb_layer_weights, the pb_matrix) */
} pb_stream_tensor;

typedef struct pb_stream pb_stream;

/* Takes src (freed by pb_stream_free, also on failure) and a copy of the
 * tensors, grouped by layer: tensors[first[l] .. first[l + 1]) are layer
 * l's, first has n_layers + 1 entries. slots: two regions of slot_bytes in
 * the model's backend memory. */
pb_status pb_stream_create(pb_stream **out, pb_backend *backend, pb_weight_source *src, const pb_stream_tensor *tensors,
                           const int *first, int n_layers, void *slots[2], size_t slot_bytes);
/* Unpins what the stream pinned: before the backend goes. */
void pb_stream_unpin(pb_stream *stream);
void pb_stream_free(pb_stream *stream);
/* Makes layer l's matrices ready in its slot for the compute queued from
 * now (queuing their copies unless the slot holds or is receiving them),
 * with m->layers[l]'s fields pointing at them and its views fused; then
 * queues the copies of layer `next` (-1: none) into the other slot. A
 * slot's previous layer has its fields cleared. */
pb_status pb_stream_acquire(pb_stream *stream, pb_model *m, int layer, int next);
/* Host staging bytes reading one matrix of storage dtype from src takes: 0
 * when it is copied from the source's bytes in place; its bytes as stored
 * where those are the storage; else fp32 to decode it into, plus its bytes
 * narrowed where the slot holds 16-bit values (a slot holds f32, bf16,
 * f16 or the file's quantised blocks). Counted with the weights' memory. */
size_t pb_stream_staging_for(const pb_weight_source *src, pb_dtype dtype, const pb_tensor_info *info);
/* 1 when a streamed matrix is stored quantised. */
int pb_stream_has_quantised(const pb_stream *stream);
/* Layers read and bytes moved since creation. */
void pb_stream_counters(const pb_stream *stream, long long *layers_read, double *bytes_read);

#endif
