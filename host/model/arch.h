/* Architectures as data: one descriptor per model family (llama, mistral,
 * qwen2, qwen3, gemma, gemma2, gemma3, gpt2, gptneox, phi3, olmo2) saying how its files are named, what
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
    PB_WINDOW_PATTERN,         /* sliding and global layers alternate with a period (gemma2, gemma3) */
    PB_WINDOW_ALL              /* every layer slides when the file gives a window (phi3; GGUF 0 and config.json
                                  null: none), as transformers and llama.cpp run it */
} pb_window_rule;

/* How a canonical tensor sits in a Hugging Face tensor that holds more
 * than it (a fused projection): which block of rows it is. */
typedef enum pb_fused_split {
    PB_SPLIT_NONE = 0,
    PB_SPLIT_QKV,          /* rows [Q; K; V] (n_heads, n_kv_heads, n_kv_heads heads): Phi-3 qkv_proj, GPT-2 c_attn */
    PB_SPLIT_QKV_PER_HEAD, /* rows [q_h; k_h; v_h] for each head h in turn (GPT-NeoX query_key_value) */
    PB_SPLIT_HALVES        /* rows [first; second] of d_mlp each (Phi-3 gate_up_proj: [gate; up]) */
} pb_fused_split;

/* A tensor's canonical name (after "blk.L." for a layer's) and its Hugging
 * Face name (after the family's hf_layer_prefix and L "." for a layer's),
 * with where it sits when that tensor is fused and whether it is stored
 * transposed, (in, out) (GPT-2's Conv1D). */
typedef struct pb_arch_tensor_name {
    const char *canonical;
    const char *hf;
    pb_fused_split split;
    int part; /* with split: 0, 1 or 2 (q, k, v; gate, up) */
    int transposed;
} pb_arch_tensor_name;

/* The names of a family's config.json keys where they are not Llama's
 * (NULL: Llama's: num_hidden_layers, hidden_size, num_attention_heads,
 * intermediate_size, max_position_embeddings, rms_norm_eps). */
typedef struct pb_arch_hf_keys {
    const char *n_layers, *d_model, *n_heads, *d_mlp, *context, *eps;
} pb_arch_hf_keys;

typedef struct pb_arch {
    const char *name;                        /* GGUF general.architecture, and pb_model_config.arch */
    const char *hf_types[3];                 /* config.json model_type values it answers to, NULL-terminated */
    const char *hf_act_key;                  /* config.json key of the MLP activation */
    const char *hf_act_names[3];             /* its values meaning `activation`, the first named in messages;
                                               NULL-terminated; none: "silu", "swish" */
    pb_activation activation;                /* the only activation the family runs */
    pb_norm_kind norm;                       /* RMSNorm or LayerNorm (weight and bias) */
    pb_position_kind position;               /* RoPE or learned absolute positions */
    int partial_rotary;                      /* RoPE may turn part of each head (GGUF rope.dimension_count,
                                               config.json partial_rotary_factor / rotary_pct) */
    float hf_partial_rotary_default;         /* partial_rotary: config.json's default fraction */
    int plain_mlp;                           /* MLP without a gate */
    int dense_bias;                          /* biases on o_proj and the MLP */
    int parallel_default;                    /* attention and MLP in parallel unless the file says not
                                               (GGUF use_parallel_residual, config.json the same) */
    int no_pre_norm;                         /* norms after the sublayers only (with sandwich_norm) */
    int qk_norm_full;                        /* q/k norm over the whole projection */
    int hf_mlp_factor;                       /* > 0: d_mlp = factor * d_model when config.json omits it */
    int qk_norm;                             /* q_norm / k_norm per head */
    int sandwich_norm;                       /* post-attention and post-MLP norms */
    int embed_scaled;                        /* embeddings * sqrt(d_model) */
    float hf_norm_offset;                    /* safetensors norm weights are used as offset + w (GGUF: already added) */
    int gguf_permuted_qk;                    /* llama.cpp's converter interleaved Q/K rows per head */
    int qkv_bias;                            /* Q/K/V projections always have biases */
    int tied_default;                        /* tie_word_embeddings when config.json omits it */
    int gguf_tied_always;                    /* llama.cpp's graph reads the unembedding from token_embd and
                                                refuses an output.weight (gemma, gemma2, gemma3) */
    pb_window_rule window;                   /* how sliding windows apply */
    int sliding_period;                      /* PB_WINDOW_PATTERN: layer L is global iff (L + 1) % period == 0 */
    int gguf_window_default;                 /* PB_WINDOW_PATTERN: window when the GGUF omits it (0: no window) */
    int hf_window_default;                   /* PB_WINDOW_PATTERN: window when config.json omits it */
    float hf_rope_theta_default;             /* config.json without rope_theta (GGUF without freq_base: 10000) */
    float rope_theta_local;                  /* > 0: base of the sliding layers when the file omits it */
    int query_pre_attn_scalar;               /* > 0: scores scale by its -1/2 power (config.json default) */
    int gguf_large_layers;                   /* > 0: a GGUF with this many layers (the 27B) scales queries by
                                    (d_model / n_heads)^-1/2, any other by head_dim^-1/2 */
    int softcaps;                            /* the files may say attention and logit softcaps */
    float attn_softcap_default;              /* attention softcap when the file omits it (0: none) */
    float final_softcap_default;             /* logit softcap when the file omits it (0: none) */
    const char *hf_defaults;                 /* JSON: config.json keys' defaults in transformers' config class,
                                               where the family's checkpoints rely on them; NULL: none */
    const pb_arch_tensor_name *layer_names;  /* canonical -> Hugging Face, NULL-terminated */
    const pb_arch_tensor_name *global_names; /* the same for the global tensors; NULL: Llama's */
    const char *hf_layer_prefix;             /* "model.layers." when NULL */
    const char *hf_base_prefix;              /* the base model's prefix, which a checkpoint of the base model
                                                alone lacks ("transformer."); NULL: none */
    pb_arch_hf_keys hf_keys;
    const char *assumptions; /* what comes from the family, not the file */
} pb_arch;

/* The family whose GGUF name (pb_model_config.arch) is name, or NULL. */
const pb_arch *pb_arch_find(const char *name);
/* The family a config.json model_type names, or NULL. */
const pb_arch *pb_arch_find_hf(const char *model_type);
/* "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, gpt2, gptneox, phi3, olmo2" */
const char *pb_arch_supported(void);
/* PB_ERR_UNSUPPORTED: "WHERE: architecture 'NAME' is not supported
 * (supported: ...)". */
pb_status pb_arch_refuse(const char *where, const char *name);
/* The Hugging Face entry of canonical layer tensor suffix (after "blk.L.")
 * in this family, or NULL. */
const pb_arch_tensor_name *pb_arch_hf_layer_name(const pb_arch *arch, const char *canonical);
/* The same for a global tensor ("token_embd.weight"). */
const pb_arch_tensor_name *pb_arch_hf_global_name(const pb_arch *arch, const char *canonical);
/* 1 when the canonical name is a norm weight (its Hugging Face value is
 * offset by hf_norm_offset). */
int pb_arch_is_norm(const char *canonical);

#endif
