/* Internals of pb_capture, shared by hooks.c (which builds it) and
 * forward.c (which fills it). */
#ifndef PB_CAPTURE_H
#define PB_CAPTURE_H

#include "model/hooks.h"

typedef struct pb_capture_entry {
    char name[96];
    pb_hook_kind kind;
    int layer;            /* -1 for model-level hooks */
    int n_dims;           /* 2 or 3 including T */
    int64_t row_shape[2]; /* pattern kinds (pb_hook_is_pattern): (n_heads) */
    int T;
    float *data; /* (T, row_shape...) host memory; pattern kinds (n_heads, T, T) */
} pb_capture_entry;

struct pb_capture {
    pb_model_config cfg;
    int count;
    pb_capture_entry *entries;
    int *index; /* ((n_layers + 1) * PB_HOOK_KIND_COUNT) -> entry or -1 */
};

/* Model-level hooks use the slot of layer n_layers. */
static inline int pb_capture_slot(const pb_capture *c, pb_hook_kind kind, int layer) {
    return (layer < 0 ? c->cfg.n_layers : layer) * PB_HOOK_KIND_COUNT + (int)kind;
}
static inline pb_capture_entry *pb_capture_find(pb_capture *c, pb_hook_kind kind, int layer) {
    if (!c)
        return NULL;
    int i = c->index[pb_capture_slot(c, kind, layer)];
    return i < 0 ? NULL : &c->entries[i];
}
/* The activation of hook `kind` at `layer`, or NULL when c lacks it. */
static inline float *pb_capture_find_data(pb_capture *c, pb_hook_kind kind, int layer) {
    pb_capture_entry *e = pb_capture_find(c, kind, layer);
    return e ? e->data : NULL;
}
/* Floats an entry holds for T tokens: per position a row, or one
 * (n_heads, T) slice of a pattern. */
static inline size_t pb_capture_entry_floats(const pb_capture_entry *e, int T) {
    size_t row = pb_hook_is_pattern(e->kind) ? (size_t)e->row_shape[0] * (size_t)T
                                             : (size_t)e->row_shape[0] * (size_t)(e->n_dims == 3 ? e->row_shape[1] : 1);
    return row * (size_t)T;
}
/* Whether c was made for a model of cfg's shapes (layers, widths, heads):
 * its buffers are sized by its own configuration. */
static inline int pb_capture_fits(const pb_capture *c, const pb_model_config *cfg) {
    const pb_model_config *a = &c->cfg;
    return a->n_layers == cfg->n_layers && a->d_model == cfg->d_model && a->n_heads == cfg->n_heads &&
           a->n_kv_heads == cfg->n_kv_heads && a->head_dim == cfg->head_dim;
}
/* Sizes every entry's buffer for T tokens. */
pb_status pb_capture_prepare(pb_capture *c, int T);
/* *out = a capture set of the hook points `from` holds at `layer` (the
 * same names and shapes, for the same model; no buffers yet), or NULL
 * when it holds none there: no pattern is matched again. */
pb_status pb_capture_layer(const pb_capture *from, int layer, pb_capture **out);

#endif
