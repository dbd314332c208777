/* Hook point naming (TransformerLens conventions) and the capture set that
 * pb_forward fills. */
#define _POSIX_C_SOURCE 200809L
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/capture.h"
#include "model/components.h"
#include "model/hooks.h"
#include "util/internal.h"

/* The name of a kind after "blocks.L." (per-layer kinds: the component
 * table's hook), or the whole name of a once-per-model kind. */
static const char *hook_suffix(pb_hook_kind kind) {
    pb_component comp;
    if (pb_component_from_hook(kind, &comp))
        return pb_component_info_of(comp)->hook;
    switch (kind) {
    case PB_HOOK_EMBED: return "hook_embed";
    case PB_HOOK_ATTN_SCORES: return "attn.hook_attn_scores";
    case PB_HOOK_PATTERN: return "attn.hook_pattern";
    case PB_HOOK_ROT_Q: return "attn.hook_rot_q";
    case PB_HOOK_ROT_K: return "attn.hook_rot_k";
    case PB_HOOK_ATTN_POST_IN: return "ln1_post.hook_in";
    case PB_HOOK_MLP_POST_IN: return "ln2_post.hook_in";
    case PB_HOOK_POS_EMBED: return "hook_pos_embed";
    default: return "ln_final.hook_normalized";
    }
}

int pb_hook_is_pattern(pb_hook_kind kind) { return kind == PB_HOOK_ATTN_SCORES || kind == PB_HOOK_PATTERN; }

int pb_hook_kind_per_layer(pb_hook_kind kind) {
    return kind != PB_HOOK_EMBED && kind != PB_HOOK_LN_FINAL && kind != PB_HOOK_POS_EMBED;
}

int pb_hook_kind_exists(pb_hook_kind kind, const pb_model_config *cfg) {
    switch (kind) {
    case PB_HOOK_ATTN_POST_IN:
    case PB_HOOK_MLP_POST_IN: return cfg->sandwich_norm;
    case PB_HOOK_POS_EMBED: return cfg->position == PB_POSITION_LEARNED;
    case PB_HOOK_RESID_MID: return !cfg->parallel_block;
    default: return 1;
    }
}

void pb_hook_name(pb_hook_kind kind, int layer, char *buf, size_t size) {
    if (pb_hook_kind_per_layer(kind))
        snprintf(buf, size, "blocks.%d.%s", layer, hook_suffix(kind));
    else
        snprintf(buf, size, "%s", hook_suffix(kind));
}

int pb_hook_parse(const char *name, int n_layers, pb_hook_kind *kind, int *layer) {
    for (int k = 0; k < PB_HOOK_KIND_COUNT; k++) {
        if (!pb_hook_kind_per_layer((pb_hook_kind)k)) {
            if (strcmp(name, hook_suffix((pb_hook_kind)k)) == 0) {
                *kind = (pb_hook_kind)k;
                *layer = -1;
                return 1;
            }
            continue;
        }
        int l, consumed = 0;
        if (sscanf(name, "blocks.%d.%n", &l, &consumed) == 1 && consumed > 0 && l >= 0 && l < n_layers &&
            strcmp(name + consumed, hook_suffix((pb_hook_kind)k)) == 0) {
            char canonical[96];
            pb_hook_name((pb_hook_kind)k, l, canonical, sizeof canonical);
            if (strcmp(canonical, name) != 0) /* "blocks.01." or "blocks.+1." */
                continue;
            *kind = (pb_hook_kind)k;
            *layer = l;
            return 1;
        }
    }
    return 0;
}

int pb_hook_shape(pb_hook_kind kind, const pb_model_config *cfg, int64_t shape[2]) {
    pb_component comp;
    int heads = pb_component_from_hook(kind, &comp) ? pb_component_head_count(comp, cfg) : 0;
    if (kind == PB_HOOK_ROT_Q || kind == PB_HOOK_ROT_K)
        heads = kind == PB_HOOK_ROT_Q ? cfg->n_heads : cfg->n_kv_heads;
    if (heads) {
        shape[0] = heads;
        shape[1] = cfg->head_dim;
        return 2;
    }
    shape[0] = pb_hook_is_pattern(kind) ? cfg->n_heads : cfg->d_model;
    return 1;
}

/* ---- capture sets ----------------------------------------------------- */

static int pattern_matches(const char *pattern, const char *name) {
    char *copy = strdup(pattern);
    if (!copy)
        return 0;
    int matched = 0;
    char *save = NULL;
    for (char *glob = strtok_r(copy, ",", &save); glob && !matched; glob = strtok_r(NULL, ",", &save)) {
        while (*glob == ' ')
            glob++;
        size_t n = strlen(glob);
        while (n > 0 && glob[n - 1] == ' ')
            glob[--n] = 0;
        matched = n > 0 && fnmatch(glob, name, 0) == 0;
    }
    free(copy);
    return matched;
}

pb_status pb_capture_create(pb_capture **out, const pb_model *model, const char *pattern) {
    if (!out || !model || !pattern)
        return pb_fail(PB_ERR_ARG, "pb_capture_create: model and pattern are required");
    *out = NULL;
    const pb_model_config *cfg = pb_model_get_config(model);
    pb_capture *c = calloc(1, sizeof *c);
    if (!c)
        return pb_fail(PB_ERR_OOM, "out of memory for a capture set");
    c->cfg = *cfg;
    int slots = (cfg->n_layers + 1) * PB_HOOK_KIND_COUNT;
    c->index = malloc(sizeof(int) * (size_t)slots);
    c->entries = calloc((size_t)slots, sizeof *c->entries);
    if (!c->index || !c->entries) {
        pb_capture_free(c);
        return pb_fail(PB_ERR_OOM, "out of memory for a capture set");
    }
    for (int i = 0; i < slots; i++)
        c->index[i] = -1;
    /* Model order: embed, then each layer's hooks in compute order, then ln_final. */
    static const pb_hook_kind layer_order[] = {
        PB_HOOK_RESID_PRE, PB_HOOK_Q,           PB_HOOK_K,           PB_HOOK_V,       PB_HOOK_ROT_Q,
        PB_HOOK_ROT_K,     PB_HOOK_ATTN_SCORES, PB_HOOK_PATTERN,     PB_HOOK_Z,       PB_HOOK_ATTN_POST_IN,
        PB_HOOK_ATTN_OUT,  PB_HOOK_RESID_MID,   PB_HOOK_MLP_POST_IN, PB_HOOK_MLP_OUT, PB_HOOK_RESID_POST};
    static const pb_hook_kind embed_order[] = {PB_HOOK_EMBED, PB_HOOK_POS_EMBED};
    for (int l = -1; l <= cfg->n_layers; l++) {
        int n_kinds = l < 0 ? 2 : l == cfg->n_layers ? 1 : (int)(sizeof layer_order / sizeof layer_order[0]);
        for (int k = 0; k < n_kinds; k++) {
            pb_hook_kind kind = l < 0 ? embed_order[k] : l == cfg->n_layers ? PB_HOOK_LN_FINAL : layer_order[k];
            int layer = pb_hook_kind_per_layer(kind) ? l : -1;
            if (!pb_hook_kind_exists(kind, cfg))
                continue;
            char name[96];
            pb_hook_name(kind, layer, name, sizeof name);
            if (!pattern_matches(pattern, name))
                continue;
            pb_capture_entry *e = &c->entries[c->count];
            e->kind = kind;
            e->layer = layer;
            snprintf(e->name, sizeof e->name, "%s", name);
            e->n_dims = 1 + pb_hook_shape(kind, cfg, e->row_shape);
            if (pb_hook_is_pattern(kind))
                e->n_dims = 3; /* (n_heads, T, T) */
            c->index[pb_capture_slot(c, kind, layer)] = c->count++;
        }
    }
    if (c->count == 0) {
        pb_capture_free(c);
        return pb_fail(PB_ERR_ARG,
                       "hook pattern '%s' matches no hook point (names look like blocks.0.hook_resid_pre, "
                       "blocks.3.attn.hook_z, blocks.3.attn.hook_pattern, hook_embed, ln_final.hook_normalized; "
                       "layers 0..%d)",
                       pattern, cfg->n_layers - 1);
    }
    *out = c;
    return PB_OK;
}

pb_status pb_capture_layer(const pb_capture *from, int layer, pb_capture **out) {
    *out = NULL;
    int count = 0;
    for (int i = 0; i < from->count; i++)
        count += from->entries[i].layer == layer;
    if (count == 0)
        return PB_OK;
    pb_capture *c = calloc(1, sizeof *c);
    int slots = (from->cfg.n_layers + 1) * PB_HOOK_KIND_COUNT;
    if (c) {
        c->cfg = from->cfg;
        c->index = malloc(sizeof(int) * (size_t)slots);
        c->entries = calloc((size_t)count, sizeof *c->entries);
    }
    if (!c || !c->index || !c->entries) {
        pb_capture_free(c);
        return pb_fail(PB_ERR_OOM, "out of memory for a capture set");
    }
    for (int i = 0; i < slots; i++)
        c->index[i] = -1;
    for (int i = 0; i < from->count; i++) {
        const pb_capture_entry *e = &from->entries[i];
        if (e->layer != layer)
            continue;
        c->entries[c->count] = (pb_capture_entry){.kind = e->kind, .layer = e->layer, .n_dims = e->n_dims};
        memcpy(c->entries[c->count].name, e->name, sizeof e->name);
        memcpy(c->entries[c->count].row_shape, e->row_shape, sizeof e->row_shape);
        c->index[pb_capture_slot(c, e->kind, e->layer)] = c->count++;
    }
    *out = c;
    return PB_OK;
}

void pb_capture_free(pb_capture *c) {
    if (!c)
        return;
    if (c->entries)
        for (int i = 0; i < c->count; i++)
            free(c->entries[i].data);
    free(c->entries);
    free(c->index);
    free(c);
}

int pb_capture_count(const pb_capture *c) { return c ? c->count : 0; }

const char *pb_capture_name(const pb_capture *c, int i) {
    return c && i >= 0 && i < c->count ? c->entries[i].name : NULL;
}

const float *pb_capture_data(const pb_capture *c, int i, int *n_dims, int64_t shape[3]) {
    if (!c || i < 0 || i >= c->count || !c->entries[i].data)
        return NULL;
    const pb_capture_entry *e = &c->entries[i];
    if (n_dims)
        *n_dims = e->n_dims;
    if (shape && pb_hook_is_pattern(e->kind)) {
        shape[0] = e->row_shape[0];
        shape[1] = shape[2] = e->T;
    } else if (shape) {
        shape[0] = e->T;
        shape[1] = e->row_shape[0];
        shape[2] = e->n_dims == 3 ? e->row_shape[1] : 0;
    }
    return e->data;
}

pb_status pb_capture_prepare(pb_capture *c, int T) {
    for (int i = 0; i < c->count; i++) {
        pb_capture_entry *e = &c->entries[i];
        if (e->T != T || !e->data) {
            free(e->data);
            e->data = malloc(sizeof(float) * pb_capture_entry_floats(e, T));
            e->T = e->data ? T : 0;
            if (!e->data)
                return pb_fail(PB_ERR_OOM, "out of memory capturing %s for %d tokens", e->name, T);
        }
    }
    return PB_OK;
}
