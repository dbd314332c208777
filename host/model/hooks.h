/* TransformerLens hook points: names, kinds and shapes. */
#ifndef PB_HOOKS_H
#define PB_HOOKS_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

typedef enum pb_hook_kind {
    PB_HOOK_EMBED = 0,  /* hook_embed                (T, d_model) */
    PB_HOOK_RESID_PRE,  /* blocks.L.hook_resid_pre   (T, d_model) */
    PB_HOOK_RESID_MID,  /* blocks.L.hook_resid_mid   (T, d_model) */
    PB_HOOK_RESID_POST, /* blocks.L.hook_resid_post  (T, d_model) */
    PB_HOOK_ATTN_OUT,   /* blocks.L.hook_attn_out    (T, d_model) */
    PB_HOOK_MLP_OUT,    /* blocks.L.hook_mlp_out     (T, d_model) */
    PB_HOOK_Z,          /* blocks.L.attn.hook_z      (T, n_heads, head_dim) */
    PB_HOOK_Q,          /* blocks.L.attn.hook_q      (T, n_heads, head_dim), before RoPE */
    PB_HOOK_K,          /* blocks.L.attn.hook_k      (T, n_kv_heads, head_dim), before RoPE */
    PB_HOOK_V,          /* blocks.L.attn.hook_v      (T, n_kv_heads, head_dim) */
    PB_HOOK_LN_FINAL,   /* ln_final.hook_normalized  (T, d_model), x / rms(x) before the weight */
    PB_HOOK_ATTN_SCORES, /* blocks.L.attn.hook_attn_scores (n_heads, T, T): q.k / sqrt(head_dim), -inf above the diagonal */
    PB_HOOK_PATTERN, /* blocks.L.attn.hook_pattern     (n_heads, T, T): softmax of the scores, 0 above the diagonal */
    PB_HOOK_ROT_Q,   /* blocks.L.attn.hook_rot_q  (T, n_heads, head_dim): after q/k norm and RoPE */
    PB_HOOK_ROT_K,   /* blocks.L.attn.hook_rot_k  (T, n_kv_heads, head_dim): after q/k norm and RoPE */
    /* Sandwich-norm models only (Gemma-2/3), patchbay's names for points
     * TransformerLens does not hook: a sublayer's output before its post
     * norm; hook_attn_out / hook_mlp_out are after it, as in TransformerLens
     * (what is added to the residual). */
    PB_HOOK_ATTN_POST_IN, /* blocks.L.ln1_post.hook_in (T, d_model): o_proj output */
    PB_HOOK_MLP_POST_IN,  /* blocks.L.ln2_post.hook_in (T, d_model): down_proj output */
    PB_HOOK_POS_EMBED,    /* hook_pos_embed (T, d_model): learned position embeddings only (GPT-2) */
    PB_HOOK_KIND_COUNT
} pb_hook_kind;

/* Whether a kind exists once per layer (else once per model). */
int pb_hook_kind_per_layer(pb_hook_kind kind);
/* Whether the model has the kind at all: the post-norm inputs in
 * sandwich-norm models only, hook_pos_embed with learned positions only,
 * no hook_resid_mid in parallel blocks. */
int pb_hook_kind_exists(pb_hook_kind kind, const pb_model_config *cfg);
/* Writes the TransformerLens name of (kind, layer) into buf. */
void pb_hook_name(pb_hook_kind kind, int layer, char *buf, size_t size);
/* Parses a hook name; returns 0 if it names no hook point of this model. */
int pb_hook_parse(const char *name, int n_layers, pb_hook_kind *kind, int *layer);
/* Row shape after T: (d_model), (n_heads, head_dim) or (n_kv_heads, head_dim);
 * for the attention-pattern kinds (n_heads): their tensor is (n_heads, T, T). */
int pb_hook_shape(pb_hook_kind kind, const pb_model_config *cfg, int64_t shape[2]);
/* 1 for attn.hook_attn_scores and attn.hook_pattern: (n_heads, query, key)
 * tensors, computed by pb_forward from the layer's queries and keys rather
 * than seen by the executor. */
int pb_hook_is_pattern(pb_hook_kind kind);

#endif
