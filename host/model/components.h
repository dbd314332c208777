/* The one table of patchable components: each component's spec name, its
 * TransformerLens hook (after "blocks.L."), its hook kind in the forward,
 * which heads it is split into, which half of its layer writes it and
 * whether it is the residual stream itself. Every part of patchbay that names,
 * parses or sizes a component reads this table. */
#ifndef PB_COMPONENTS_H
#define PB_COMPONENTS_H

#include "model/hooks.h"
#include "patchbay.h"

typedef enum pb_head_axis {
    PB_HEADS_NONE = 0, /* one d_model row per position */
    PB_HEADS_QUERY,    /* n_heads rows of head_dim (z, q) */
    PB_HEADS_KV,       /* n_kv_heads rows of head_dim (k, v) */
} pb_head_axis;

typedef enum pb_layer_half {
    PB_HALF_ATTENTION = 0, /* step pb_step_attention(L): resid_pre (read), attn_out, z, q, k, v */
    PB_HALF_MLP = 1,       /* step pb_step_mlp(L): resid_mid (read), mlp_out, resid_post */
} pb_layer_half;

typedef struct pb_component_info {
    const char *name; /* "resid_pre", "z": specs, results.json, the CLI */
    const char *hook; /* "hook_resid_pre", "attn.hook_z": TransformerLens */
    pb_hook_kind hook_kind;
    pb_head_axis heads;
    pb_layer_half half; /* the step of layer L that reads (resid_pre, resid_mid) or writes it */
    int residual;       /* 1: a state of the residual stream (resid_*); 0: a sublayer's activation */
} pb_component_info;

/* The row of a component; NULL when it is out of range. */
const pb_component_info *pb_component_info_of(pb_component component);
/* The component a hook kind patches; 0 when the kind is not patchable
 * (hook_embed, ln_final). */
int pb_component_from_hook(pb_hook_kind kind, pb_component *out);
/* The component named by its spec name or its hook ("z" or "attn.hook_z");
 * 0 when none is. */
int pb_component_parse(const char *name, pb_component *out);
/* Heads of the component in this model: n_heads, n_kv_heads, or 0 when it
 * is not split into heads. */
int pb_component_head_count(pb_component component, const pb_model_config *cfg);
/* Width of one position of its activation: n_heads * head_dim,
 * n_kv_heads * head_dim or d_model; and of the slice one site replaces
 * (head_dim for a head, else d_model). */
int pb_component_row_width(pb_component component, const pb_model_config *cfg);
int pb_component_slice_width(pb_component component, const pb_model_config *cfg);

#endif
