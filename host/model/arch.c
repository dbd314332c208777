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
    {"attn_norm.weight", "input_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_q.weight", "self_attn.q_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_k.weight", "self_attn.k_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_v.weight", "self_attn.v_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_q.bias", "self_attn.q_proj.bias", PB_SPLIT_NONE, 0, 0},
    {"attn_k.bias", "self_attn.k_proj.bias", PB_SPLIT_NONE, 0, 0},
    {"attn_v.bias", "self_attn.v_proj.bias", PB_SPLIT_NONE, 0, 0},
    {"attn_q_norm.weight", "self_attn.q_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_k_norm.weight", "self_attn.k_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_output.weight", "self_attn.o_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.weight", "post_attention_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_gate.weight", "mlp.gate_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_up.weight", "mlp.up_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_down.weight", "mlp.down_proj.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

/* Gemma-2/3: post_attention_layernorm is the norm AFTER attention (the
 * sandwich), the MLP's input norm is pre_feedforward_layernorm. */
static const pb_arch_tensor_name sandwich_names[] = {
    {"attn_norm.weight", "input_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_q.weight", "self_attn.q_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_k.weight", "self_attn.k_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_v.weight", "self_attn.v_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_q_norm.weight", "self_attn.q_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_k_norm.weight", "self_attn.k_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_output.weight", "self_attn.o_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"post_attention_norm.weight", "post_attention_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.weight", "pre_feedforward_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_gate.weight", "mlp.gate_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_up.weight", "mlp.up_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_down.weight", "mlp.down_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"post_ffw_norm.weight", "post_feedforward_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

/* GPT-2 (under "transformer.h.L."): LayerNorms with biases, Conv1D
 * projections stored (in, out), Q/K/V fused in c_attn. */
static const pb_arch_tensor_name gpt2_names[] = {
    {"attn_norm.weight", "ln_1.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_norm.bias", "ln_1.bias", PB_SPLIT_NONE, 0, 0},
    {"attn_q.weight", "attn.c_attn.weight", PB_SPLIT_QKV, 0, 1},
    {"attn_k.weight", "attn.c_attn.weight", PB_SPLIT_QKV, 1, 1},
    {"attn_v.weight", "attn.c_attn.weight", PB_SPLIT_QKV, 2, 1},
    {"attn_q.bias", "attn.c_attn.bias", PB_SPLIT_QKV, 0, 0},
    {"attn_k.bias", "attn.c_attn.bias", PB_SPLIT_QKV, 1, 0},
    {"attn_v.bias", "attn.c_attn.bias", PB_SPLIT_QKV, 2, 0},
    {"attn_output.weight", "attn.c_proj.weight", PB_SPLIT_NONE, 0, 1},
    {"attn_output.bias", "attn.c_proj.bias", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.weight", "ln_2.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.bias", "ln_2.bias", PB_SPLIT_NONE, 0, 0},
    {"ffn_up.weight", "mlp.c_fc.weight", PB_SPLIT_NONE, 0, 1},
    {"ffn_up.bias", "mlp.c_fc.bias", PB_SPLIT_NONE, 0, 0},
    {"ffn_down.weight", "mlp.c_proj.weight", PB_SPLIT_NONE, 0, 1},
    {"ffn_down.bias", "mlp.c_proj.bias", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

static const pb_arch_tensor_name gpt2_globals[] = {
    {"token_embd.weight", "transformer.wte.weight", PB_SPLIT_NONE, 0, 0},
    {"position_embd.weight", "transformer.wpe.weight", PB_SPLIT_NONE, 0, 0},
    {"output_norm.weight", "transformer.ln_f.weight", PB_SPLIT_NONE, 0, 0},
    {"output_norm.bias", "transformer.ln_f.bias", PB_SPLIT_NONE, 0, 0},
    {"output.weight", "lm_head.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

/* GPT-NeoX (under "gpt_neox.layers.L."): query_key_value holds each
 * head's q, k and v rows in turn (llama.cpp's converter reorders them to
 * [Q; K; V] in attn_qkv). */
static const pb_arch_tensor_name gptneox_names[] = {
    {"attn_norm.weight", "input_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_norm.bias", "input_layernorm.bias", PB_SPLIT_NONE, 0, 0},
    {"attn_q.weight", "attention.query_key_value.weight", PB_SPLIT_QKV_PER_HEAD, 0, 0},
    {"attn_k.weight", "attention.query_key_value.weight", PB_SPLIT_QKV_PER_HEAD, 1, 0},
    {"attn_v.weight", "attention.query_key_value.weight", PB_SPLIT_QKV_PER_HEAD, 2, 0},
    {"attn_q.bias", "attention.query_key_value.bias", PB_SPLIT_QKV_PER_HEAD, 0, 0},
    {"attn_k.bias", "attention.query_key_value.bias", PB_SPLIT_QKV_PER_HEAD, 1, 0},
    {"attn_v.bias", "attention.query_key_value.bias", PB_SPLIT_QKV_PER_HEAD, 2, 0},
    {"attn_output.weight", "attention.dense.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_output.bias", "attention.dense.bias", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.weight", "post_attention_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.bias", "post_attention_layernorm.bias", PB_SPLIT_NONE, 0, 0},
    {"ffn_up.weight", "mlp.dense_h_to_4h.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_up.bias", "mlp.dense_h_to_4h.bias", PB_SPLIT_NONE, 0, 0},
    {"ffn_down.weight", "mlp.dense_4h_to_h.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_down.bias", "mlp.dense_4h_to_h.bias", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

static const pb_arch_tensor_name gptneox_globals[] = {
    {"token_embd.weight", "gpt_neox.embed_in.weight", PB_SPLIT_NONE, 0, 0},
    {"output_norm.weight", "gpt_neox.final_layer_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"output_norm.bias", "gpt_neox.final_layer_norm.bias", PB_SPLIT_NONE, 0, 0},
    {"output.weight", "embed_out.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

/* Phi-3: Llama's names with Q/K/V fused in qkv_proj and gate/up in
 * gate_up_proj. */
static const pb_arch_tensor_name phi3_names[] = {
    {"attn_norm.weight", "input_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_q.weight", "self_attn.qkv_proj.weight", PB_SPLIT_QKV, 0, 0},
    {"attn_k.weight", "self_attn.qkv_proj.weight", PB_SPLIT_QKV, 1, 0},
    {"attn_v.weight", "self_attn.qkv_proj.weight", PB_SPLIT_QKV, 2, 0},
    {"attn_output.weight", "self_attn.o_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_norm.weight", "post_attention_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_gate.weight", "mlp.gate_up_proj.weight", PB_SPLIT_HALVES, 0, 0},
    {"ffn_up.weight", "mlp.gate_up_proj.weight", PB_SPLIT_HALVES, 1, 0},
    {"ffn_down.weight", "mlp.down_proj.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

/* OLMo-2: no input norms; post_attention_layernorm is the norm AFTER
 * attention, post_feedforward_layernorm after the MLP. */
static const pb_arch_tensor_name olmo2_names[] = {
    {"attn_q.weight", "self_attn.q_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_k.weight", "self_attn.k_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_v.weight", "self_attn.v_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_q_norm.weight", "self_attn.q_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_k_norm.weight", "self_attn.k_norm.weight", PB_SPLIT_NONE, 0, 0},
    {"attn_output.weight", "self_attn.o_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"post_attention_norm.weight", "post_attention_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_gate.weight", "mlp.gate_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_up.weight", "mlp.up_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"ffn_down.weight", "mlp.down_proj.weight", PB_SPLIT_NONE, 0, 0},
    {"post_ffw_norm.weight", "post_feedforward_layernorm.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
};

/* Every other family's global tensors. */
static const pb_arch_tensor_name llama_globals[] = {
    {"token_embd.weight", "model.embed_tokens.weight", PB_SPLIT_NONE, 0, 0},
    {"output_norm.weight", "model.norm.weight", PB_SPLIT_NONE, 0, 0},
    {"output.weight", "lm_head.weight", PB_SPLIT_NONE, 0, 0},
    {NULL, NULL, PB_SPLIT_NONE, 0, 0},
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
     .hf_act_names = {"gelu_pytorch_tanh", "gelu", NULL}, /* transformers maps Gemma-1's legacy "gelu" to it */
     .activation = PB_ACTIVATION_GELU_TANH,
     .embed_scaled = 1,
     .hf_norm_offset = 1.0f,
     .tied_default = 1,
     .gguf_tied_always = 1,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = llama_names,
     .assumptions = "gemma (family, not in the file): embeddings * sqrt(d_model); GELU-tanh MLP; safetensors "
                    "norm weights used as 1 + w; query scale head_dim^-1/2"},
    {.name = "gemma2",
     .hf_types = {"gemma2", NULL},
     .hf_act_key = "hidden_activation",
     .hf_act_names = {"gelu_pytorch_tanh", NULL},
     .activation = PB_ACTIVATION_GELU_TANH,
     .sandwich_norm = 1,
     .embed_scaled = 1,
     .hf_norm_offset = 1.0f,
     .tied_default = 1,
     .gguf_tied_always = 1,
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
     .hf_act_names = {"gelu_pytorch_tanh", NULL},
     .activation = PB_ACTIVATION_GELU_TANH,
     .qk_norm = 1,
     .sandwich_norm = 1,
     .embed_scaled = 1,
     .hf_norm_offset = 1.0f,
     .tied_default = 1,
     .gguf_tied_always = 1,
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
    {.name = "gpt2",
     .hf_types = {"gpt2", NULL},
     .hf_act_key = "activation_function",
     .hf_act_names = {"gelu_new", "gelu_pytorch_tanh", NULL},
     .activation = PB_ACTIVATION_GELU_TANH,
     .norm = PB_NORM_LAYER,
     .position = PB_POSITION_LEARNED,
     .plain_mlp = 1,
     .dense_bias = 1,
     .qkv_bias = 1,
     .tied_default = 1,
     .hf_rope_theta_default = 10000.0f,
     .hf_mlp_factor = 4,
     .layer_names = gpt2_names,
     .global_names = gpt2_globals,
     .hf_layer_prefix = "transformer.h.",
     .hf_base_prefix = "transformer.",
     .hf_keys = {"n_layer", "n_embd", "n_head", "n_inner", "n_positions", "layer_norm_epsilon"},
     .assumptions = "gpt2 (family, not in the file): LayerNorm; learned positions, no RoPE; plain GELU-tanh MLP; "
                    "biases on every projection; n_kv_heads = n_heads, head_dim = d_model / n_heads; "
                    "safetensors Conv1D weights stored (in, out), transposed at load"},
    {.name = "gptneox",
     .hf_types = {"gpt_neox", NULL},
     .hf_act_key = "hidden_act",
     .hf_act_names = {"gelu", NULL},
     .activation = PB_ACTIVATION_GELU,
     .norm = PB_NORM_LAYER,
     .partial_rotary = 1,
     .hf_partial_rotary_default = 0.25f,
     .plain_mlp = 1,
     .dense_bias = 1,
     .qkv_bias = 1,
     .parallel_default = 1,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = gptneox_names,
     .global_names = gptneox_globals,
     .hf_layer_prefix = "gpt_neox.layers.",
     .hf_base_prefix = "gpt_neox.",
     .hf_keys = {NULL, NULL, NULL, NULL, NULL, "layer_norm_eps"},
     .assumptions = "gptneox (family, not in the file): LayerNorm; plain exact-GELU MLP; biases on every "
                    "projection; n_kv_heads = n_heads; RoPE on the first rotary_dims of each head (rotate-half "
                    "pairs); safetensors query_key_value interleaved per head, split at load"},
    {.name = "phi3",
     .hf_types = {"phi3", NULL},
     .hf_act_key = "hidden_act",
     .window = PB_WINDOW_ALL,
     .partial_rotary = 1, /* Phi-4-mini: partial_rotary_factor 0.75 */
     .hf_partial_rotary_default = 1.0f,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = phi3_names,
     .assumptions = "phi3 (family, not in the file): fused qkv_proj / attn_qkv split into Q, K, V rows and "
                    "gate_up_proj / ffn_up into gate and up halves at load; a sliding_window applies to every "
                    "layer"},
    {.name = "olmo2",
     .hf_types = {"olmo2", NULL},
     .hf_act_key = "hidden_act",
     .qk_norm = 1,
     .qk_norm_full = 1,
     .sandwich_norm = 1,
     .no_pre_norm = 1,
     .hf_rope_theta_default = 10000.0f,
     .layer_names = olmo2_names,
     .assumptions = "olmo2 (family, not in the file): no input norms, RMSNorm after attention and after the MLP; "
                    "RMSNorm over the whole q and k projections before RoPE"},
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
const char *pb_arch_supported(void) {
    return "llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, gpt2, gptneox, phi3, olmo2";
}

pb_status pb_arch_refuse(const char *where, const char *name) {
    return pb_fail(PB_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (supported: %s)", where, name,
                   pb_arch_supported());
}

const char *pb_arch_assumptions(const pb_model_config *cfg) {
    const pb_arch *arch = cfg ? pb_arch_find(cfg->arch) : NULL;
    return arch ? arch->assumptions : "";
}

static const pb_arch_tensor_name *find_name(const pb_arch_tensor_name *names, const char *canonical) {
    for (const pb_arch_tensor_name *n = names; n->canonical; n++)
        if (strcmp(n->canonical, canonical) == 0)
            return n;
    return NULL;
}

const pb_arch_tensor_name *pb_arch_hf_layer_name(const pb_arch *arch, const char *canonical) {
    return find_name(arch->layer_names, canonical);
}

const pb_arch_tensor_name *pb_arch_hf_global_name(const pb_arch *arch, const char *canonical) {
    return find_name(arch->global_names ? arch->global_names : llama_globals, canonical);
}

int pb_arch_is_norm(const char *canonical) {
    size_t len = strlen(canonical), tail = strlen("norm.weight");
    return len >= tail && strcmp(canonical + len - tail, "norm.weight") == 0;
}
