/* The family table (arch.h). Values the files do not store come from the
 * reference implementations: llama.cpp (src/models/gemma*.cpp,
 * src/llama-hparams.h, src/llama-model.cpp; vendor/llama.cpp of
 * llama-cpp-python 0.3.36) for GGUF, transformers 5.x's config classes for
 * config.json; the report of issue 15 lists file and line of each. */
#include <string.h>

#include "model/arch.h"
#include "util/internal.h"

/* Llama's layer names; q_norm/k_norm are listed only when the config has
 * qk_norm, the biases only with Q/K/V biases. */
static const pb_arch_tensor_name llama_names[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_q.bias", "self_attn.q_proj.bias"},
    {"attn_k.bias", "self_attn.k_proj.bias"},
    {"attn_v.bias", "self_attn.v_proj.bias"},
    {"attn_q_norm.weight", "self_attn.q_norm.weight"},
    {"attn_k_norm.weight", "self_attn.k_norm.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"ffn_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    {NULL, NULL},
};

/* Gemma-2/3: post_attention_layernorm is the norm AFTER attention (the
 * sandwich), the MLP's input norm is pre_feedforward_layernorm. */
static const pb_arch_tensor_name sandwich_names[] = {
    {"attn_norm.weight", "input_layernorm.weight"},
    {"attn_q.weight", "self_attn.q_proj.weight"},
    {"attn_k.weight", "self_attn.k_proj.weight"},
    {"attn_v.weight", "self_attn.v_proj.weight"},
    {"attn_q_norm.weight", "self_attn.q_norm.weight"},
    {"attn_k_norm.weight", "self_attn.k_norm.weight"},
    {"attn_output.weight", "self_attn.o_proj.weight"},
    {"post_attention_norm.weight", "post_attention_layernorm.weight"},
    {"ffn_norm.weight", "pre_feedforward_layernorm.weight"},
    {"ffn_gate.weight", "mlp.gate_proj.weight"},
    {"ffn_up.weight", "mlp.up_proj.weight"},
    {"ffn_down.weight", "mlp.down_proj.weight"},
    {"post_ffw_norm.weight", "post_feedforward_layernorm.weight"},
    {NULL, NULL},
};

/* Fields left out are 0 / NULL: the Llama baseline. */
static const pb_arch families[] = {
    {.name = "llama",
     .hf_types = {"llama", NULL},
     .hf_act_key = "hidden_act",
     .gguf_permuted_qk = 1,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = llama_names,
     .assumptions = ""},
    {.name = "mistral",
     .hf_types = {"mistral", NULL},
     .hf_act_key = "hidden_act",
     .gguf_permuted_qk = 1,
     .window = PB_WINDOW_CONTEXT,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = llama_names,
     .assumptions = ""},
    {.name = "qwen2",
     .hf_types = {"qwen2", NULL},
     .hf_act_key = "hidden_act",
     .qkv_bias = 1,
     .window = PB_WINDOW_CONTEXT_IF_USED,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = llama_names,
     .assumptions = ""},
    {.name = "qwen3",
     .hf_types = {"qwen3", NULL},
     .hf_act_key = "hidden_act",
     .qk_norm = 1,
     .window = PB_WINDOW_CONTEXT_IF_USED,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = llama_names,
     .assumptions = "qwen3 (family): RMSNorm of every q and k head before RoPE"},
    {.name = "gemma",
     .hf_types = {"gemma", NULL},
     .hf_act_key = "hidden_act",
     .activation = PB_ACTIVATION_GELU_TANH,
     .embed_scaled = 1,
     .hf_norm_offset = 1.0f,
     .tied_default = 1,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = llama_names,
     .assumptions = "gemma (family, not in the file): embeddings * sqrt(d_model); GELU-tanh MLP; safetensors "
                    "norm weights used as 1 + w; query scale head_dim^-1/2"},
    {.name = "gemma2",
     .hf_types = {"gemma2", NULL},
     .hf_act_key = "hidden_activation",
     .activation = PB_ACTIVATION_GELU_TANH,
     .sandwich_norm = 1,
     .embed_scaled = 1,
     .hf_norm_offset = 1.0f,
     .tied_default = 1,
     .window = PB_WINDOW_PATTERN,
     .sliding_period = 2,
     .gguf_window_default = 4096,
     .hf_window_default = 4096,
     .hf_rope_theta_default = 10000.0f,
     .query_pre_attn_scalar = 256,
     .gguf_large_layers = 46,
     .softcaps = 1,
     .attn_softcap_default = 50.0f,
     .final_softcap_default = 30.0f,
     .layer_names = sandwich_names,
     .assumptions = "gemma2 (family, not in the file): embeddings * sqrt(d_model); GELU-tanh MLP; sandwich norms; "
                    "safetensors norm weights used as 1 + w; sliding and global layers alternate, layer 0 sliding "
                    "(period 2); GGUF: window 4096 and softcaps 50 (attention) / 30 (logits) when absent, query "
                    "scale (d_model/n_heads)^-1/2 at 46 layers (27B) else head_dim^-1/2; one RoPE base for all "
                    "layers"},
    {.name = "gemma3",
     .hf_types = {"gemma3_text", "gemma3", NULL},
     .hf_act_key = "hidden_activation",
     .activation = PB_ACTIVATION_GELU_TANH,
     .qk_norm = 1,
     .sandwich_norm = 1,
     .embed_scaled = 1,
     .hf_norm_offset = 1.0f,
     .tied_default = 1,
     .window = PB_WINDOW_PATTERN,
     .sliding_period = 6,
     .gguf_window_default = 0,
     .hf_window_default = 4096,
     .hf_rope_theta_default = 1000000.0f,
     .rope_theta_local = 10000.0f,
     .query_pre_attn_scalar = 256,
     .gguf_large_layers = 62,
     .softcaps = 1,
     /* transformers 5 Gemma3TextConfig */
     .hf_defaults = "{\"vocab_size\": 262208, \"hidden_size\": 2304, \"intermediate_size\": 9216, "
                    "\"num_hidden_layers\": 26, \"num_attention_heads\": 8, \"num_key_value_heads\": 4, "
                    "\"head_dim\": 256, \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-06}",
     .layer_names = sandwich_names,
     .assumptions = "gemma3 (family, not in the file): embeddings * sqrt(d_model); GELU-tanh MLP; q/k norms and "
                    "sandwich norms; safetensors norm weights used as 1 + w; layer L global iff (L + 1) % 6 == 0, "
                    "else sliding; sliding layers' RoPE base 10000 when absent, never scaled; GGUF: query scale "
                    "(d_model/n_heads)^-1/2 at 62 layers (27B) else head_dim^-1/2, no window when "
                    "attention.sliding_window is absent"},
};

#define N_FAMILIES (sizeof families / sizeof families[0])

const pb_arch *pb_arch_find(const char *name) {
    for (size_t i = 0; name && i < N_FAMILIES; i++)
        if (strcmp(families[i].name, name) == 0)
            return &families[i];
    return NULL;
}

const pb_arch *pb_arch_find_hf(const char *model_type) {
    for (size_t i = 0; model_type && i < N_FAMILIES; i++)
        for (const char *const *t = families[i].hf_types; *t; t++)
            if (strcmp(*t, model_type) == 0)
                return &families[i];
    return NULL;
}

/* The table's names in order (test_arch checks the two agree). */
const char *pb_arch_supported(void) { return "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3"; }

pb_status pb_arch_refuse(const char *where, const char *name) {
    return pb_fail(PB_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (supported: %s)", where, name,
                   pb_arch_supported());
}

const char *pb_arch_assumptions(const pb_model_config *cfg) {
    const pb_arch *arch = cfg ? pb_arch_find(cfg->arch) : NULL;
    return arch ? arch->assumptions : "";
}

const char *pb_arch_hf_layer_name(const pb_arch *arch, const char *canonical) {
    for (const pb_arch_tensor_name *n = arch->layer_names; n->canonical; n++)
        if (strcmp(n->canonical, canonical) == 0)
            return n->hf;
    return NULL;
}

int pb_arch_is_norm(const char *canonical) {
    size_t len = strlen(canonical), tail = strlen("norm.weight");
    return len >= tail && strcmp(canonical + len - tail, "norm.weight") == 0;
}
