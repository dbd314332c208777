/* Architectures as data: one descriptor per model family (llama, mistral,
 * qwen2, qwen3, gemma, gemma2, gemma3) saying how its files are named, what
 * its blocks compute beyond the Llama baseline, which hyperparameters the
 * family fixes where a file does not store them, and how its tensors are
 * named in Hugging Face checkpoints. The GGUF and config.json readers and
 * the tensor list look families up here instead of branching on names;
 * adding a family is a row in arch.c, its name mapping and tests. */
#ifndef PB_ARCH_H
#define PB_ARCH_H

#include <stddef.h>

#include "patchbay.h"

/* How a family's sliding-window attention reaches pb_model_config. */
typedef enum pb_window_rule {
    PB_WINDOW_NONE = 0,        /* full causal attention on every layer (llama, gemma) */
    PB_WINDOW_CONTEXT,         /* config.json sliding_window caps the usable context (mistral) */
    PB_WINDOW_CONTEXT_IF_USED, /* the same, only with use_sliding_window true (qwen2, qwen3) */
    PB_WINDOW_PATTERN          /* sliding and global layers alternate with a period (gemma2, gemma3) */
} pb_window_rule;

/* A layer tensor's canonical name (after "blk.L.") and its Hugging Face
 * name (after "model.layers.L."). */
typedef struct pb_arch_tensor_name {
    const char *canonical;
    const char *hf;
} pb_arch_tensor_name;

typedef struct pb_arch {
    const char *name;                       /* GGUF general.architecture, and pb_model_config.arch */
    const char *hf_types[3];                /* config.json model_type values it answers to, NULL-terminated */
    const char *hf_act_key;                 /* config.json key of the MLP activation */
    pb_activation activation;               /* the only activation the family runs */
    int qk_norm;                            /* q_norm / k_norm per head */
    int sandwich_norm;                      /* post-attention and post-MLP norms */
    int embed_scaled;                       /* embeddings * sqrt(d_model) */
    float hf_norm_offset;                   /* safetensors norm weights are used as offset + w (GGUF: already added) */
    int gguf_permuted_qk;                   /* llama.cpp's converter interleaved Q/K rows per head */
    int qkv_bias;                           /* Q/K/V projections always have biases */
    int tied_default;                       /* tie_word_embeddings when config.json omits it */
    pb_window_rule window;                  /* how sliding windows apply */
    int sliding_period;                     /* PB_WINDOW_PATTERN: layer L is global iff (L + 1) % period == 0 */
    int gguf_window_default;                /* PB_WINDOW_PATTERN: window when the GGUF omits it (0: no window) */
    int hf_window_default;                  /* PB_WINDOW_PATTERN: window when config.json omits it */
    float hf_rope_theta_default;            /* config.json without rope_theta (GGUF without freq_base: 10000) */
    float rope_theta_local;                 /* > 0: base of the sliding layers when the file omits it */
    int query_pre_attn_scalar;              /* > 0: scores scale by its -1/2 power (config.json default) */
    int gguf_large_layers;                  /* > 0: a GGUF with this many layers (the 27B) scales queries by
                                    (d_model / n_heads)^-1/2, any other by head_dim^-1/2 */
    int softcaps;                           /* the files may say attention and logit softcaps */
    float attn_softcap_default;             /* attention softcap when the file omits it (0: none) */
    float final_softcap_default;            /* logit softcap when the file omits it (0: none) */
    const char *hf_defaults;                /* JSON: config.json keys' defaults in transformers' config class,
                                               where the family's checkpoints rely on them; NULL: none */
    const pb_arch_tensor_name *layer_names; /* canonical -> Hugging Face, NULL-terminated */
    const char *assumptions;                /* what comes from the family, not the file */
} pb_arch;

/* The family whose GGUF name (pb_model_config.arch) is name, or NULL. */
const pb_arch *pb_arch_find(const char *name);
/* The family a config.json model_type names, or NULL. */
const pb_arch *pb_arch_find_hf(const char *model_type);
/* "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3" */
const char *pb_arch_supported(void);
/* PB_ERR_UNSUPPORTED: "WHERE: architecture 'NAME' is not supported
 * (supported: ...)". */
pb_status pb_arch_refuse(const char *where, const char *name);
/* The Hugging Face name of canonical layer tensor suffix (after "blk.L.")
 * in this family, or NULL. */
const char *pb_arch_hf_layer_name(const pb_arch *arch, const char *canonical);
/* 1 when the canonical name is a norm weight (its Hugging Face value is
 * offset by hf_norm_offset). */
int pb_arch_is_norm(const char *canonical);

#endif
