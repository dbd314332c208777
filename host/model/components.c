/* The component table (components.h) and the public name lookups. */
#include <string.h>

#include "model/components.h"

static const pb_component_info table[PB_COMPONENT_COUNT] = {
    [PB_COMPONENT_RESID_PRE] = {"resid_pre", "hook_resid_pre", PB_HOOK_RESID_PRE, PB_HEADS_NONE, PB_HALF_ATTENTION, 1},
    [PB_COMPONENT_RESID_MID] = {"resid_mid", "hook_resid_mid", PB_HOOK_RESID_MID, PB_HEADS_NONE, PB_HALF_MLP, 1},
    [PB_COMPONENT_RESID_POST] = {"resid_post", "hook_resid_post", PB_HOOK_RESID_POST, PB_HEADS_NONE, PB_HALF_MLP, 1},
    [PB_COMPONENT_ATTN_OUT] = {"attn_out", "hook_attn_out", PB_HOOK_ATTN_OUT, PB_HEADS_NONE, PB_HALF_ATTENTION, 0},
    [PB_COMPONENT_MLP_OUT] = {"mlp_out", "hook_mlp_out", PB_HOOK_MLP_OUT, PB_HEADS_NONE, PB_HALF_MLP, 0},
    [PB_COMPONENT_Z] = {"z", "attn.hook_z", PB_HOOK_Z, PB_HEADS_QUERY, PB_HALF_ATTENTION, 0},
    [PB_COMPONENT_Q] = {"q", "attn.hook_q", PB_HOOK_Q, PB_HEADS_QUERY, PB_HALF_ATTENTION, 0},
    [PB_COMPONENT_K] = {"k", "attn.hook_k", PB_HOOK_K, PB_HEADS_KV, PB_HALF_ATTENTION, 0},
    [PB_COMPONENT_V] = {"v", "attn.hook_v", PB_HOOK_V, PB_HEADS_KV, PB_HALF_ATTENTION, 0},
};

const pb_component_info *pb_component_info_of(pb_component component) {
    int c = (int)component;
    return c >= 0 && c < PB_COMPONENT_COUNT ? &table[c] : NULL;
}

const char *pb_component_name(pb_component component) {
    const pb_component_info *info = pb_component_info_of(component);
    return info ? info->name : NULL;
}

const char *pb_component_hook(pb_component component) {
    const pb_component_info *info = pb_component_info_of(component);
    return info ? info->hook : NULL;
}

int pb_component_from_hook(pb_hook_kind kind, pb_component *out) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        if (table[c].hook_kind == kind) {
            *out = (pb_component)c;
            return 1;
        }
    return 0;
}

int pb_component_parse(const char *name, pb_component *out) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        if (strcmp(name, table[c].name) == 0 || strcmp(name, table[c].hook) == 0) {
            *out = (pb_component)c;
            return 1;
        }
    return 0;
}

int pb_component_head_count(pb_component component, const pb_model_config *cfg) {
    const pb_component_info *info = pb_component_info_of(component);
    if (!info)
        return 0;
    switch (info->heads) {
    case PB_HEADS_QUERY: return cfg->n_heads;
    case PB_HEADS_KV: return cfg->n_kv_heads;
    case PB_HEADS_NONE: break;
    }
    return 0;
}

static int has_heads(pb_component component) {
    const pb_component_info *info = pb_component_info_of(component);
    return info && info->heads != PB_HEADS_NONE;
}

int pb_component_row_width(pb_component component, const pb_model_config *cfg) {
    return has_heads(component) ? pb_component_head_count(component, cfg) * cfg->head_dim : cfg->d_model;
}

int pb_component_slice_width(pb_component component, const pb_model_config *cfg) {
    return has_heads(component) ? cfg->head_dim : cfg->d_model;
}
