/* Streamed layer weights (--weights stream): the weight source stays open,
 * each layer's matrices are read from it into one of two slots of the
 * model's arena when the executor reaches the layer (pb_model_layer_acquire),
 * and the kernel is asked to read the following layer's pages ahead
 * (madvise) and may drop the evicted one's. Slot s holds layers l with
 * l % 2 == s; a layer already in its slot is not read again. */
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
pb_status pb_stream_create(pb_stream **out, pb_weight_source *src, const pb_stream_tensor *tensors, const int *first,
                           int n_layers, void *slots[2], size_t slot_bytes);
void pb_stream_free(pb_stream *stream);
/* Brings layer l's matrices into its slot (reading the file unless the slot
 * holds it already), points m->layers[l]'s fields at them and fuses its
 * views; clears the fields of the layer the slot held before. */
pb_status pb_stream_acquire(pb_stream *stream, pb_model *m, int layer);
/* Host staging bytes reading one matrix of storage dtype takes: its bytes
 * as stored where those are the storage, else as fp32 (a slot holds f32 or
 * the file's quantised blocks; model.c refuses the rest). Counted with the
 * weights' memory. */
size_t pb_stream_staging_for(pb_dtype dtype, const pb_tensor_info *info);
/* 1 when a streamed matrix is stored quantised. */
int pb_stream_has_quantised(const pb_stream *stream);
/* Layers read and bytes moved since creation. */
void pb_stream_counters(const pb_stream *stream, long long *layers_read, double *bytes_read);

#endif
