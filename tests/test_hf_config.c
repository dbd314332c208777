/* Tests for host/formats/hf_config.c: config.json files in the transformers 4 and 5
 * layouts map onto pb_model_config with transformers' defaults, and configs
 * the engine cannot run are refused with a message naming the key; the
 * Gemma-1/2/3 and Qwen3 families with their architecture fields. Also
 * reads the tiny_gqa / tiny_bias fixtures when they have been generated. */
#define _POSIX_C_SOURCE 200809L

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hf_config.h"
#include "util/internal.h"
#include "test_util.h"

/* Writes text to <scratch>/config.json and reads it. */
static pb_status read_text(void **state, const char *text, pb_model_config *cfg) {
    tu_scratch *scratch = *state;
    char path[512];
    tu_path(path, sizeof path, scratch->dir, "config.json");
    assert_int_equal(tu_write_text(path, text), 0);
    return pb_hf_config_read(cfg, path);
}

static void read_ok(void **state, const char *text, pb_model_config *cfg) {
    pb_status status = read_text(state, text, cfg);
    if (status != PB_OK)
        print_error("%s\n", pb_last_error());
    assert_int_equal(status, PB_OK);
}

static void expect_refused(void **state, const char *text, pb_status expected, const char *needle) {
    pb_model_config cfg;
    memset(&cfg, 0x5a, sizeof cfg);
    pb_status status = read_text(state, text, &cfg);
    if (status != expected || !strstr(pb_last_error(), needle))
        print_error("got %s \"%s\", expected %s containing \"%s\"\n", pb_status_name(status), pb_last_error(),
                    pb_status_name(expected), needle);
    assert_int_equal(status, expected);
    assert_non_null(strstr(pb_last_error(), needle));
    /* left zeroed on failure */
    assert_int_equal(cfg.n_layers, 0);
    assert_int_equal(cfg.arch[0], '\0');
}

/* Llama 3.1-style: GQA, llama3 rope scaling, eos list (transformers 4 layout). */
static const char *const llama3_v4 =
    "{\"architectures\": [\"LlamaForCausalLM\"], \"model_type\": \"llama\", \"hidden_act\": \"silu\","
    " \"hidden_size\": 2048, \"intermediate_size\": 8192, \"num_hidden_layers\": 16,"
    " \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"head_dim\": 64,"
    " \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-05, \"rope_theta\": 500000.0,"
    " \"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
    "   \"original_max_position_embeddings\": 8192, \"rope_type\": \"llama3\"},"
    " \"tie_word_embeddings\": true, \"vocab_size\": 128256, \"attention_bias\": false, \"mlp_bias\": false,"
    " \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009], \"torch_dtype\": \"bfloat16\"}";

static void check_llama3(const pb_model_config *cfg) {
    assert_string_equal(cfg->arch, "llama");
    assert_int_equal(cfg->n_layers, 16);
    assert_int_equal(cfg->d_model, 2048);
    assert_int_equal(cfg->n_heads, 32);
    assert_int_equal(cfg->n_kv_heads, 8);
    assert_int_equal(cfg->head_dim, 64);
    assert_int_equal(cfg->d_mlp, 8192);
    assert_int_equal(cfg->vocab_size, 128256);
    assert_int_equal(cfg->context_length, 131072);
    assert_true(cfg->rms_eps == 1e-05f);
    assert_true(cfg->rope_theta == 500000.0f);
    assert_int_equal(cfg->rope_scaling, PB_ROPE_SCALING_LLAMA3);
    assert_true(cfg->rope_factor == 32.0f);
    assert_true(cfg->rope_low_freq_factor == 1.0f);
    assert_true(cfg->rope_high_freq_factor == 4.0f);
    assert_int_equal(cfg->rope_original_context, 8192);
    assert_int_equal(cfg->has_qkv_bias, 0);
    assert_int_equal(cfg->tied_embeddings, 1);
    assert_int_equal(cfg->bos_id, 128000);
    assert_int_equal(cfg->eos_id, 128001);
}

static void test_llama3_gqa_v4_layout(void **state) {
    pb_model_config cfg;
    read_ok(state, llama3_v4, &cfg);
    check_llama3(&cfg);
}

/* The same model as transformers 5's save_pretrained writes it. */
static void test_llama3_gqa_v5_layout(void **state) {
    pb_model_config cfg;
    read_ok(state,
            "{\"model_type\": \"llama\", \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"intermediate_size\": 8192,"
            " \"num_hidden_layers\": 16, \"num_attention_heads\": 32, \"num_key_value_heads\": 8, \"head_dim\": 64,"
            " \"max_position_embeddings\": 131072, \"rms_norm_eps\": 1e-05, \"pad_token_id\": null,"
            " \"rope_parameters\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0,"
            "   \"original_max_position_embeddings\": 8192, \"rope_theta\": 500000.0, \"rope_type\": \"llama3\"},"
            " \"tie_word_embeddings\": true, \"vocab_size\": 128256, \"attention_bias\": false,"
            " \"bos_token_id\": 128000, \"eos_token_id\": [128001, 128008, 128009]}",
            &cfg);
    check_llama3(&cfg);
}

static void test_qwen2_explicit_head_dim(void **state) {
    pb_model_config cfg;
    read_ok(state,
            "{\"model_type\": \"qwen2\", \"hidden_act\": \"silu\", \"hidden_size\": 1024, \"intermediate_size\": 2816,"
            " \"num_hidden_layers\": 4, \"num_attention_heads\": 16, \"num_key_value_heads\": 2, \"head_dim\": 128,"
            " \"max_position_embeddings\": 32768, \"rms_norm_eps\": 1e-06, \"rope_theta\": 1000000.0,"
            " \"rope_scaling\": null, \"sliding_window\": 4096, \"use_sliding_window\": false,"
            " \"tie_word_embeddings\": true, \"vocab_size\": 151936, \"bos_token_id\": null,"
            " \"eos_token_id\": 151643}",
            &cfg);
    assert_string_equal(cfg.arch, "qwen2");
    assert_int_equal(cfg.head_dim, 128); /* not hidden_size / heads = 64 */
    assert_int_equal(cfg.n_kv_heads, 2);
    assert_int_equal(cfg.has_qkv_bias, 1);
    assert_int_equal(cfg.tied_embeddings, 1);
    assert_int_equal(cfg.bos_id, -1);
    assert_int_equal(cfg.eos_id, 151643);
    assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_NONE);
    assert_true(cfg.rope_theta == 1000000.0f);
    assert_int_equal(cfg.context_length, 32768); /* window unused */
}

static void test_defaults_filled(void **state) {
    pb_model_config cfg;
    read_ok(state,
            "{\"model_type\": \"llama\", \"hidden_size\": 256, \"intermediate_size\": 688,"
            " \"num_hidden_layers\": 2, \"num_attention_heads\": 8, \"head_dim\": null,"
            " \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-06, \"vocab_size\": 1000}",
            &cfg);
    assert_int_equal(cfg.n_kv_heads, 8);
    assert_int_equal(cfg.head_dim, 32);
    assert_true(cfg.rope_theta == 10000.0f);
    assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_NONE);
    assert_int_equal(cfg.has_qkv_bias, 0);
    assert_int_equal(cfg.tied_embeddings, 0);
    assert_int_equal(cfg.bos_id, -1);
    assert_int_equal(cfg.eos_id, -1);
}

/* The keys of a small llama config; each rope case appends its own. */
#define LLAMA_HEAD                                                                                            \
    "{\"model_type\": \"llama\", \"hidden_size\": 256, \"intermediate_size\": 688, \"num_hidden_layers\": 2," \
    " \"num_attention_heads\": 8, \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-06, \"vocab_size\": 1000"

static void test_rope_variants(void **state) {
    pb_model_config cfg;
    /* transformers 4 "type" spelling */
    read_ok(state, LLAMA_HEAD ", \"rope_scaling\": {\"type\": \"linear\", \"factor\": 2.0}}", &cfg);
    assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_LINEAR);
    assert_true(cfg.rope_factor == 2.0f);
    /* what transformers 5 writes for LlamaConfig(rope_scaling={"type": "linear", ...}) */
    read_ok(state,
            LLAMA_HEAD ", \"rope_parameters\": {\"factor\": 4.0, \"rope_theta\": 20000.0,"
                       " \"rope_type\": \"linear\", \"type\": \"linear\"}}",
            &cfg);
    assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_LINEAR);
    assert_true(cfg.rope_factor == 4.0f);
    assert_true(cfg.rope_theta == 20000.0f);
    /* "default" inside rope_parameters, theta from there */
    read_ok(state,
            "{\"model_type\": \"mistral\", \"hidden_size\": 256, \"intermediate_size\": 688, \"num_hidden_layers\": 2,"
            " \"num_attention_heads\": 8, \"num_key_value_heads\": 2, \"max_position_embeddings\": 131072,"
            " \"rms_norm_eps\": 1e-06, \"vocab_size\": 1000, \"sliding_window\": 4096, \"attention_bias\": true,"
            " \"rope_parameters\": {\"rope_theta\": 1000000.0, \"rope_type\": \"default\"}}",
            &cfg);
    assert_string_equal(cfg.arch, "mistral");
    assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_NONE);
    assert_true(cfg.rope_theta == 1000000.0f);
    /* MistralAttention has no biases whatever attention_bias says */
    assert_int_equal(cfg.has_qkv_bias, 0);
    /* full attention equals sliding-window attention only inside the window */
    assert_int_equal(cfg.context_length, 4096);
    /* llama3 without original_max_position_embeddings: transformers uses max_position_embeddings */
    read_ok(state,
            LLAMA_HEAD ", \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0,"
                       " \"low_freq_factor\": 1.0, \"high_freq_factor\": 4.0}}",
            &cfg);
    assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_LLAMA3);
    assert_int_equal(cfg.rope_original_context, 512);
}

/* The keys every refused case shares; each case appends the rest (and one
 * case repeats rms_norm_eps on purpose, to check duplicates are refused). */
#define BASE_HEAD                                                                        \
    "{\"model_type\": \"llama\", \"intermediate_size\": 688, \"num_hidden_layers\": 2, " \
    "\"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-06, \"vocab_size\": 1000"

static void test_refused(void **state) {
    static const struct {
        const char *text;
        pb_status status;
        const char *needle;
    } cases[] = {
        {BASE_HEAD ", \"num_attention_heads\": 8}", PB_ERR_FORMAT, "config.json: missing key 'hidden_size'"},
        {"{\"model_type\": \"bloom\", \"hidden_size\": 256}", PB_ERR_UNSUPPORTED,
         "config.json: model_type: architecture 'bloom' is not supported (supported: llama, mistral, qwen2, qwen3, gemma, "
         "gemma2, gemma3, gpt2, gptneox, phi3, olmo2)"},
        {"{\"hidden_size\": 256}", PB_ERR_FORMAT, "config.json: missing key 'model_type'"},
        {BASE_HEAD ", \"hidden_size\": \"256\", \"num_attention_heads\": 8}", PB_ERR_FORMAT,
         "key 'hidden_size' is \"256\", expected a positive integer"},
        {BASE_HEAD ", \"hidden_size\": 256.0, \"num_attention_heads\": 8}", PB_ERR_FORMAT,
         "key 'hidden_size' is 256.0, expected a positive integer"},
        {BASE_HEAD ", \"hidden_size\": 0, \"num_attention_heads\": 8}", PB_ERR_FORMAT,
         "key 'hidden_size' is 0, expected a positive integer"},
        {BASE_HEAD ", \"hidden_size\": -256, \"num_attention_heads\": 8}", PB_ERR_FORMAT, "is -256"},
        {BASE_HEAD ", \"hidden_size\": 4294967296, \"num_attention_heads\": 8}", PB_ERR_FORMAT, "is 4294967296"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8,"
                   " \"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0}}",
         PB_ERR_UNSUPPORTED, "rope_scaling type 'yarn' is not supported"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8,"
                   " \"rope_parameters\": {\"rope_type\": \"dynamic\", \"factor\": 4.0}}",
         PB_ERR_UNSUPPORTED, "rope_parameters type 'dynamic' is not supported"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8,"
                   " \"rope_scaling\": {\"rope_type\": \"llama3\", \"factor\": 8.0, \"high_freq_factor\": 4.0}}",
         PB_ERR_FORMAT, "missing key 'rope_scaling.low_freq_factor'"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8,"
                   " \"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": \"2\"}}",
         PB_ERR_FORMAT, "key 'rope_scaling.factor' is \"2\""},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"partial_rotary_factor\": 0.5}",
         PB_ERR_UNSUPPORTED, "partial_rotary_factor 0.5"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"hidden_act\": \"gelu\"}", PB_ERR_UNSUPPORTED,
         "hidden_act \"gelu\" is not supported"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"num_key_value_heads\": 3}", PB_ERR_FORMAT,
         "num_attention_heads 8 is not divisible by num_key_value_heads 3"},
        {BASE_HEAD ", \"hidden_size\": 250, \"num_attention_heads\": 8}", PB_ERR_FORMAT,
         "hidden_size 250 is not divisible by num_attention_heads 8"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"head_dim\": 33}", PB_ERR_FORMAT,
         "head_dim 33 is odd"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"attention_bias\": true}", PB_ERR_UNSUPPORTED,
         "o_proj bias"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"mlp_bias\": true}", PB_ERR_UNSUPPORTED,
         "mlp_bias"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"tie_word_embeddings\": \"yes\"}",
         PB_ERR_FORMAT, "key 'tie_word_embeddings' is \"yes\", expected true or false"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"eos_token_id\": \"</s>\"}", PB_ERR_FORMAT,
         "key 'eos_token_id' is \"</s>\""},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"rms_norm_eps\": 0}", PB_ERR_FORMAT,
         "not valid JSON: duplicate object key"},
        {BASE_HEAD ", \"hidden_size\": 256, \"num_attention_heads\": 8, \"rope_theta\": -1.0}", PB_ERR_FORMAT,
         "key 'rope_theta' is -1.0, expected a positive number"},
        {"{\"model_type\": ", PB_ERR_FORMAT, "not valid JSON"},
        {"[1]", PB_ERR_FORMAT, "top level is not a JSON object"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(state, cases[i].text, cases[i].status, cases[i].needle);
}

/* ---- families beyond Llama (model/arch.c) ---------------------------- */

/* Gemma-1: GELU-tanh (its legacy "gelu" means the same in transformers),
 * embeddings scaled by sqrt(hidden_size) rounded to fp32 from double, tied
 * by default, query scale left at head_dim^-1/2. */
static void test_gemma(void **state) {
    pb_model_config c;
    read_ok(state,
            "{\"model_type\": \"gemma\", \"hidden_act\": \"gelu\", \"hidden_size\": 640, \"intermediate_size\": 96,"
            " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 1, \"head_dim\": 32,"
            " \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-06, \"vocab_size\": 300}",
            &c);
    assert_string_equal(c.arch, "gemma");
    assert_int_equal(c.activation, PB_ACTIVATION_GELU_TANH);
    assert_true(c.embed_scale == (float)sqrt(640.0));
    assert_true(c.tied_embeddings);
    assert_true(c.attn_scale == 0.0f && c.sliding_window == 0 && c.final_softcap == 0.0f);
    assert_false(c.qk_norm || c.sandwich_norm || c.has_qkv_bias);
}

/* Gemma-2 with transformers' defaults: window 4096 on every other layer
 * starting with layer 0, softcaps 50 / 30, query_pre_attn_scalar 256. */
static void test_gemma2_defaults(void **state) {
    pb_model_config c;
    read_ok(state,
            "{\"model_type\": \"gemma2\", \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 64,"
            " \"intermediate_size\": 96, \"num_hidden_layers\": 4, \"num_attention_heads\": 4, \"head_dim\": 16,"
            " \"max_position_embeddings\": 8192, \"rms_norm_eps\": 1e-06, \"vocab_size\": 300}",
            &c);
    assert_string_equal(c.arch, "gemma2");
    assert_true(c.sandwich_norm && !c.qk_norm && c.tied_embeddings);
    assert_true(c.attn_scale == 0.0625f && c.attn_softcap == 50.0f && c.final_softcap == 30.0f);
    assert_int_equal(c.sliding_window, 4096);
    assert_int_equal(c.context_length, 8192); /* the window is per layer, not a context cap */
    assert_true(pb_layer_is_sliding(&c, 0) && !pb_layer_is_sliding(&c, 1) && pb_layer_is_sliding(&c, 2));
    assert_true(c.rope_theta == 10000.0f && c.rope_theta_local == 0.0f);
    /* null softcaps and window: none */
    read_ok(state,
            "{\"model_type\": \"gemma2\", \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 4,"
            " \"num_attention_heads\": 4, \"head_dim\": 16, \"max_position_embeddings\": 8192,"
            " \"rms_norm_eps\": 1e-06, \"vocab_size\": 300, \"attn_logit_softcapping\": null,"
            " \"final_logit_softcapping\": null, \"sliding_window\": null, \"query_pre_attn_scalar\": 144}",
            &c);
    assert_true(c.attn_softcap == 0.0f && c.final_softcap == 0.0f && c.sliding_window == 0);
    assert_true(c.attn_scale == (float)pow(144.0, -0.5));
}

/* Gemma-3 as transformers 5 writes it: rope_parameters per layer type (the
 * global layers' linear scaling, the sliding layers' own base) and
 * layer_types, checked against the period its first global layer sets. */
static void test_gemma3_v5_layout(void **state) {
    pb_model_config c;
    read_ok(state,
            "{\"model_type\": \"gemma3_text\", \"hidden_activation\": \"gelu_pytorch_tanh\", \"hidden_size\": 72,"
            " \"intermediate_size\": 64, \"num_hidden_layers\": 7, \"num_attention_heads\": 4,"
            " \"num_key_value_heads\": 1, \"head_dim\": 20, \"max_position_embeddings\": 64,"
            " \"rms_norm_eps\": 1e-06, \"vocab_size\": 320, \"query_pre_attn_scalar\": 20, \"sliding_window\": 4,"
            " \"final_logit_softcapping\": 3.0, \"attn_logit_softcapping\": null,"
            " \"layer_types\": [\"sliding_attention\", \"sliding_attention\", \"sliding_attention\","
            "   \"sliding_attention\", \"sliding_attention\", \"full_attention\", \"sliding_attention\"],"
            " \"rope_parameters\": {\"full_attention\": {\"rope_theta\": 100000.0, \"rope_type\": \"linear\","
            "   \"factor\": 8.0}, \"sliding_attention\": {\"rope_theta\": 5000.0, \"rope_type\": \"default\"}}}",
            &c);
    assert_string_equal(c.arch, "gemma3");
    assert_true(c.qk_norm && c.sandwich_norm && c.tied_embeddings);
    assert_true(c.attn_scale == (float)pow(20.0, -0.5) && c.embed_scale == (float)sqrt(72.0));
    assert_true(c.attn_softcap == 0.0f && c.final_softcap == 3.0f);
    assert_true(c.sliding_window == 4 && c.sliding_period == 6);
    assert_true(c.rope_theta == 100000.0f && c.rope_scaling == PB_ROPE_SCALING_LINEAR && c.rope_factor == 8.0f);
    assert_true(c.rope_theta_local == 5000.0f);
}

/* A multimodal Gemma-3 (Gemma3ForConditionalGeneration) as published: the
 * text settings under text_config, most of them left to Gemma3TextConfig's
 * defaults, the transformers 4 RoPE keys, tie_word_embeddings at the top. */
static void test_gemma3_multimodal(void **state) {
    pb_model_config c;
    read_ok(state,
            "{\"architectures\": [\"Gemma3ForConditionalGeneration\"], \"model_type\": \"gemma3\","
            " \"eos_token_id\": [1, 106], \"tie_word_embeddings\": true,"
            " \"text_config\": {\"model_type\": \"gemma3_text\", \"hidden_size\": 2560,"
            "   \"intermediate_size\": 10240, \"num_hidden_layers\": 34, \"sliding_window\": 1024,"
            "   \"rope_scaling\": {\"factor\": 8.0, \"rope_type\": \"linear\"}},"
            " \"vision_config\": {\"model_type\": \"siglip_vision_model\"}}",
            &c);
    assert_string_equal(c.arch, "gemma3");
    assert_true(c.n_heads == 8 && c.n_kv_heads == 4 && c.head_dim == 256 && c.vocab_size == 262208);
    assert_true(c.context_length == 131072 && c.rms_eps == 1e-6f);
    assert_true(c.rope_theta == 1000000.0f && c.rope_scaling == PB_ROPE_SCALING_LINEAR && c.rope_factor == 8.0f);
    assert_true(c.rope_theta_local == 10000.0f && c.sliding_window == 1024 && c.sliding_period == 6);
    assert_true(c.attn_scale == 0.0625f && c.tied_embeddings && c.eos_id == 1);
}

/* Qwen3: q/k norms, no biases, untied unless said. */
static void test_qwen3(void **state) {
    pb_model_config c;
    read_ok(state,
            "{\"model_type\": \"qwen3\", \"hidden_act\": \"silu\", \"hidden_size\": 64, \"intermediate_size\": 96,"
            " \"num_hidden_layers\": 2, \"num_attention_heads\": 4, \"num_key_value_heads\": 2, \"head_dim\": 32,"
            " \"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-06, \"vocab_size\": 300,"
            " \"rope_theta\": 1000000, \"attention_bias\": false, \"use_sliding_window\": false,"
            " \"sliding_window\": null}",
            &c);
    assert_string_equal(c.arch, "qwen3");
    assert_true(c.qk_norm && !c.sandwich_norm && !c.has_qkv_bias && !c.tied_embeddings);
    assert_true(c.activation == PB_ACTIVATION_SILU && c.embed_scale == 0.0f && c.attn_scale == 0.0f);
    assert_int_equal(c.context_length, 4096);
}

#define GEMMA3_HEAD                                                                                               \
    "{\"model_type\": \"gemma3_text\", \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 4," \
    " \"num_attention_heads\": 4, \"head_dim\": 16, \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-06,"   \
    " \"vocab_size\": 300"

static void test_families_refused(void **state) {
    static const struct {
        const char *text;
        pb_status status;
        const char *needle;
    } cases[] = {
        {"{\"model_type\": \"phi\"}", PB_ERR_UNSUPPORTED,
         "architecture 'phi' is not supported (supported: llama, mistral, qwen2, qwen3, gemma, gemma2, gemma3, gpt2, "
         "gptneox, phi3, olmo2)"},
        {GEMMA3_HEAD ", \"hidden_activation\": \"gelu\"}", PB_ERR_UNSUPPORTED,
         "hidden_activation \"gelu\" is not supported for gemma3 (only \"gelu_pytorch_tanh\")"},
        {"{\"model_type\": \"gemma2\", \"hidden_activation\": \"silu\"}", PB_ERR_UNSUPPORTED,
         "hidden_activation \"silu\" is not supported for gemma2"},
        {GEMMA3_HEAD ", \"layer_types\": [\"sliding_attention\", \"full_attention\", \"full_attention\","
                     " \"sliding_attention\"]}",
         PB_ERR_UNSUPPORTED, "layer_types: layer 2 is global, but the pattern must be 'layer L global iff (L + 1) % 2"},
        {GEMMA3_HEAD ", \"layer_types\": [\"sliding_attention\", \"full_attention\"]}", PB_ERR_FORMAT,
         "key 'layer_types' is"},
        {GEMMA3_HEAD ", \"layer_types\": [\"sliding_attention\", \"chunked_attention\", \"full_attention\","
                     " \"sliding_attention\"]}",
         PB_ERR_FORMAT, "layer_types[1] is \"chunked_attention\""},
        {GEMMA3_HEAD ", \"rope_parameters\": {\"full_attention\": {\"rope_type\": \"default\"},"
                     " \"sliding_attention\": {\"rope_type\": \"linear\", \"factor\": 2.0}}}",
         PB_ERR_UNSUPPORTED, "rope_parameters.sliding_attention type \"linear\" is not supported"},
        {GEMMA3_HEAD ", \"use_bidirectional_attention\": true}", PB_ERR_UNSUPPORTED, "use_bidirectional_attention"},
        {GEMMA3_HEAD ", \"query_pre_attn_scalar\": 0}", PB_ERR_FORMAT, "key 'query_pre_attn_scalar' is 0"},
        {"{\"model_type\": \"gemma3\", \"text_config\": [1]}", PB_ERR_FORMAT,
         "key 'text_config' is [1], expected an object"},
        {"{\"model_type\": \"gemma3\", \"text_config\": {\"hidden_size\": 64, \"rms_norm_eps\": -1}}", PB_ERR_FORMAT,
         "key 'text_config.rms_norm_eps' is -1"},
        {"{\"model_type\": \"qwen3\", \"hidden_size\": 64, \"intermediate_size\": 96, \"num_hidden_layers\": 2,"
         " \"num_attention_heads\": 4, \"max_position_embeddings\": 512, \"rms_norm_eps\": 1e-06,"
         " \"vocab_size\": 300, \"attention_bias\": true}",
         PB_ERR_UNSUPPORTED, "qwen3 with attention_bias true"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(state, cases[i].text, cases[i].status, cases[i].needle);
}

/* GPT-2 as the hub writes it: its own key names, n_inner null (4 *
 * n_embd), gelu_new, LayerNorm epsilon, tied; learned positions over
 * n_positions, no RoPE, biases everywhere, plain MLP. */
static void test_gpt2(void **state) {
    pb_model_config cfg;
    read_ok(state,
            "{\"model_type\": \"gpt2\", \"activation_function\": \"gelu_new\", \"n_embd\": 768, \"n_head\": 12,"
            " \"n_layer\": 12, \"n_positions\": 1024, \"n_ctx\": 1024, \"n_inner\": null,"
            " \"layer_norm_epsilon\": 1e-05, \"vocab_size\": 50257, \"bos_token_id\": 50256, \"eos_token_id\": 50256}",
            &cfg);
    assert_string_equal(cfg.arch, "gpt2");
    assert_true(cfg.n_layers == 12 && cfg.d_model == 768 && cfg.n_heads == 12 && cfg.n_kv_heads == 12);
    assert_true(cfg.head_dim == 64 && cfg.d_mlp == 3072 && cfg.context_length == 1024 && cfg.vocab_size == 50257);
    assert_true(cfg.rms_eps == 1e-05f);
    assert_int_equal(cfg.activation, PB_ACTIVATION_GELU_TANH);
    assert_int_equal(cfg.norm, PB_NORM_LAYER);
    assert_int_equal(cfg.position, PB_POSITION_LEARNED);
    assert_true(cfg.plain_mlp && cfg.has_dense_bias && cfg.has_qkv_bias && cfg.tied_embeddings);
    assert_true(!cfg.parallel_block && !cfg.no_pre_norm && !cfg.qk_norm && cfg.rotary_dims == 0);
    assert_true(cfg.bos_id == 50256 && cfg.eos_id == 50256);
    read_ok(state,
            "{\"model_type\": \"gpt2\", \"n_embd\": 8, \"n_head\": 2, \"n_layer\": 1, \"n_positions\": 4,"
            " \"n_inner\": 20, \"layer_norm_epsilon\": 1e-05, \"vocab_size\": 9}",
            &cfg);
    assert_int_equal(cfg.d_mlp, 20);
}

/* GPT-NeoX (Pythia) in both layouts: transformers 4 (rotary_pct,
 * rotary_emb_base) and 5 (rope_parameters with partial_rotary_factor):
 * rotary_dims = int(head_dim * fraction); use_parallel_residual defaults
 * to true; untied. */
static void test_gptneox(void **state) {
    static const char *const texts[] = {
        "{\"model_type\": \"gpt_neox\", \"hidden_act\": \"gelu\", \"hidden_size\": 512, \"num_attention_heads\": 8,"
        " \"num_hidden_layers\": 6, \"intermediate_size\": 2048, \"max_position_embeddings\": 2048,"
        " \"layer_norm_eps\": 1e-05, \"rotary_pct\": 0.25, \"rotary_emb_base\": 10000, \"tie_word_embeddings\": false,"
        " \"use_parallel_residual\": true, \"vocab_size\": 50304, \"bos_token_id\": 0, \"eos_token_id\": 0}",
        "{\"model_type\": \"gpt_neox\", \"hidden_act\": \"gelu\", \"hidden_size\": 512, \"num_attention_heads\": 8,"
        " \"num_hidden_layers\": 6, \"intermediate_size\": 2048, \"max_position_embeddings\": 2048,"
        " \"layer_norm_eps\": 1e-05, \"rope_parameters\": {\"partial_rotary_factor\": 0.25, \"rope_theta\": 10000,"
        " \"rope_type\": \"default\"}, \"vocab_size\": 50304}",
    };
    for (int i = 0; i < 2; i++) {
        pb_model_config cfg;
        read_ok(state, texts[i], &cfg);
        assert_string_equal(cfg.arch, "gptneox");
        assert_true(cfg.head_dim == 64 && cfg.rotary_dims == 16 && cfg.rope_theta == 10000.0f);
        assert_int_equal(cfg.activation, PB_ACTIVATION_GELU);
        assert_int_equal(cfg.norm, PB_NORM_LAYER);
        assert_int_equal(cfg.position, PB_POSITION_ROPE);
        assert_true(cfg.plain_mlp && cfg.has_dense_bias && cfg.has_qkv_bias && cfg.parallel_block);
        assert_true(!cfg.tied_embeddings && cfg.rms_eps == 1e-05f && cfg.d_mlp == 2048);
    }
    pb_model_config cfg;
    read_ok(state,
            "{\"model_type\": \"gpt_neox\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
            " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"layer_norm_eps\": 1e-05,"
            " \"use_parallel_residual\": false, \"vocab_size\": 8}",
            &cfg);
    assert_true(!cfg.parallel_block && cfg.rotary_dims == 4); /* rotary_pct default 0.25 of 16 */
}

/* Phi-3: llama-like, every layer slides when sliding_window is set (null:
 * none); OLMo-2: post norms only, full-width q/k norms. */
static void test_phi3_olmo2(void **state) {
    pb_model_config cfg;
    read_ok(state,
            "{\"model_type\": \"phi3\", \"hidden_act\": \"silu\", \"hidden_size\": 3072, \"num_attention_heads\": 32,"
            " \"num_key_value_heads\": 32, \"num_hidden_layers\": 32, \"intermediate_size\": 8192,"
            " \"max_position_embeddings\": 4096, \"original_max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-05,"
            " \"rope_theta\": 10000.0, \"rope_scaling\": null, \"sliding_window\": 2047,"
            " \"tie_word_embeddings\": false, \"vocab_size\": 32064}",
            &cfg);
    assert_string_equal(cfg.arch, "phi3");
    assert_true(cfg.sliding_window == 2047 && cfg.sliding_period == 0 && cfg.context_length == 4096);
    assert_true(!cfg.plain_mlp && !cfg.has_dense_bias && !cfg.has_qkv_bias && cfg.norm == PB_NORM_RMS);
    read_ok(state,
            "{\"model_type\": \"phi3\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
            " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05,"
            " \"sliding_window\": null, \"vocab_size\": 8}",
            &cfg);
    assert_int_equal(cfg.sliding_window, 0);
    read_ok(state,
            "{\"model_type\": \"olmo2\", \"hidden_act\": \"silu\", \"hidden_size\": 2048, \"num_attention_heads\": 16,"
            " \"num_key_value_heads\": 16, \"num_hidden_layers\": 16, \"intermediate_size\": 8192,"
            " \"max_position_embeddings\": 4096, \"rms_norm_eps\": 1e-06, \"rope_theta\": 500000,"
            " \"attention_bias\": false, \"tie_word_embeddings\": false, \"vocab_size\": 100352}",
            &cfg);
    assert_string_equal(cfg.arch, "olmo2");
    assert_true(cfg.qk_norm && cfg.qk_norm_full && cfg.sandwich_norm && cfg.no_pre_norm);
    assert_true(!cfg.plain_mlp && cfg.norm == PB_NORM_RMS && cfg.rope_theta == 500000.0f);
}

/* What the new families cannot run, refused naming the key and value. */
static void test_new_families_refused(void **state) {
    static const struct {
        const char *text;
        pb_status status;
        const char *needle;
    } cases[] = {
        {"{\"model_type\": \"gpt2\", \"activation_function\": \"relu\"}", PB_ERR_UNSUPPORTED,
         "activation_function \"relu\" is not supported for gpt2 (only \"gelu_new\")"},
        {"{\"model_type\": \"gpt_neox\", \"hidden_act\": \"gelu_new\"}", PB_ERR_UNSUPPORTED,
         "hidden_act \"gelu_new\" is not supported for gptneox (only \"gelu\")"},
        {"{\"model_type\": \"gpt_neox\", \"hidden_act\": \"gelu_fast\"}", PB_ERR_UNSUPPORTED,
         "hidden_act \"gelu_fast\" is not supported for gptneox"},
        {"{\"model_type\": \"phi3\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"original_max_position_embeddings\": 4,"
         " \"rope_scaling\": {\"type\": \"longrope\", \"long_factor\": [1.0], \"short_factor\": [1.0]}}",
         PB_ERR_FORMAT, "expected a list of 8 numbers (one per rotated pair)"},
        {"{\"model_type\": \"phi3\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"original_max_position_embeddings\": 4, \"partial_rotary_factor\": 0.25, \"rope_scaling\": {\"type\":"
         " \"longrope\", \"long_factor\": [1.0, 2.0], \"short_factor\": [1.0, -1.0]}}",
         PB_ERR_FORMAT, "'rope_scaling.short_factor'[1] is -1"},
        {"{\"model_type\": \"phi3\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"rope_scaling\": {\"type\": \"su\"}}",
         PB_ERR_FORMAT, "missing key 'rope_scaling.original_max_position_embeddings'"},
        {"{\"model_type\": \"phi3\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"partial_rotary_factor\": 0.5625}",
         PB_ERR_FORMAT, "partial_rotary_factor 0.5625 turns 9 dimensions of each head"},
        {"{\"model_type\": \"qwen2\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"partial_rotary_factor\": 0.75}",
         PB_ERR_UNSUPPORTED, "partial_rotary_factor 0.75 is not supported for qwen2 (only 1.0)"},
        {"{\"model_type\": \"gpt_neox\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"layer_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"attention_bias\": false}",
         PB_ERR_UNSUPPORTED, "attention_bias false (no attention biases) is not supported for gptneox"},
        {"{\"model_type\": \"gpt_neox\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"layer_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"rotary_pct\": 0.1}",
         PB_ERR_FORMAT, "rotary_pct 0.1 turns 1 dimensions of each head: RoPE needs a positive even number"},
        {"{\"model_type\": \"gpt2\", \"n_embd\": 8, \"n_head\": 2, \"n_layer\": 1, \"vocab_size\": 9}", PB_ERR_FORMAT,
         "missing key 'n_positions'"},
        {"{\"model_type\": \"olmo2\", \"hidden_size\": 64, \"num_attention_heads\": 4, \"num_hidden_layers\": 1,"
         " \"intermediate_size\": 8, \"max_position_embeddings\": 8, \"rms_norm_eps\": 1e-05, \"vocab_size\": 8,"
         " \"attention_bias\": true}",
         PB_ERR_UNSUPPORTED, "olmo2 with attention_bias true"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        expect_refused(state, cases[i].text, cases[i].status, cases[i].needle);
}

static void test_missing_file_and_args(void **state) {
    (void)state;
    pb_model_config cfg;
    assert_int_equal(pb_hf_config_read(&cfg, "/nonexistent/pb/config.json"), PB_ERR_IO);
    assert_non_null(strstr(pb_last_error(), "/nonexistent/pb/config.json"));
    assert_int_equal(pb_hf_config_read(NULL, "x"), PB_ERR_ARG);
    assert_int_equal(pb_hf_config_read(&cfg, NULL), PB_ERR_ARG);
}

/* ---- generated fixtures --------------------------------------------- */

static int json_int_or(const json_t *root, const char *key, int fallback) {
    const json_t *v = json_object_get(root, key);
    return json_is_integer(v) ? (int)json_integer_value(v) : fallback;
}

/* Checks a save_pretrained config against its own contents, computing each
 * field independently of the reader (the fixture generator may change sizes). */
static void check_fixture(const char *name) {
    const char *fixtures = getenv("PB_FIXTURES");
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/config.json", fixtures ? fixtures : "tests/fixtures", name);
    FILE *probe = fopen(path, "rb");
    if (!probe) {
        print_message("skipping: %s not generated\n", path);
        skip();
        return;
    }
    fclose(probe);
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);
    assert_non_null(root);
    const char *model_type = json_string_value(json_object_get(root, "model_type"));
    assert_non_null(model_type);
    int attention_bias = json_is_true(json_object_get(root, "attention_bias"));

    pb_model_config cfg;
    pb_status status = pb_hf_config_read(&cfg, path);
    if (strcmp(model_type, "llama") == 0 && attention_bias) {
        assert_int_equal(status, PB_ERR_UNSUPPORTED);
        json_decref(root);
        return;
    }
    if (status != PB_OK)
        print_error("%s\n", pb_last_error());
    assert_int_equal(status, PB_OK);
    assert_string_equal(cfg.arch, model_type);
    int d_model = json_int_or(root, "hidden_size", -1);
    int n_heads = json_int_or(root, "num_attention_heads", -1);
    assert_int_equal(cfg.n_layers, json_int_or(root, "num_hidden_layers", -1));
    assert_int_equal(cfg.d_model, d_model);
    assert_int_equal(cfg.n_heads, n_heads);
    assert_int_equal(cfg.n_kv_heads, json_int_or(root, "num_key_value_heads", n_heads));
    assert_int_equal(cfg.head_dim, json_int_or(root, "head_dim", d_model / n_heads));
    assert_int_equal(cfg.d_mlp, json_int_or(root, "intermediate_size", -1));
    assert_int_equal(cfg.vocab_size, json_int_or(root, "vocab_size", -1));
    assert_true(cfg.rms_eps == (float)json_number_value(json_object_get(root, "rms_norm_eps")));
    assert_int_equal(cfg.tied_embeddings, json_is_true(json_object_get(root, "tie_word_embeddings")));
    assert_int_equal(cfg.has_qkv_bias, strcmp(model_type, "qwen2") == 0 ? 1 : 0);
    int bos = json_int_or(root, "bos_token_id", -1);
    assert_int_equal(cfg.bos_id, bos);
    const json_t *eos = json_object_get(root, "eos_token_id");
    int eos_id = json_is_integer(eos)                         ? (int)json_integer_value(eos)
                 : json_is_array(eos) && json_array_size(eos) ? (int)json_integer_value(json_array_get(eos, 0))
                                                              : -1;
    assert_int_equal(cfg.eos_id, eos_id);
    /* transformers 5 keeps theta in rope_parameters; 4 at the top level */
    const json_t *rope = json_object_get(root, "rope_parameters");
    const json_t *theta = json_object_get(rope, "rope_theta");
    if (!theta)
        theta = json_object_get(root, "rope_theta");
    assert_true(cfg.rope_theta == (theta ? (float)json_number_value(theta) : 10000.0f));
    const char *rope_type = json_string_value(json_object_get(rope, "rope_type"));
    if (rope_type && strcmp(rope_type, "llama3") == 0) {
        assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_LLAMA3);
        assert_true(cfg.rope_factor == (float)json_number_value(json_object_get(rope, "factor")));
        assert_true(cfg.rope_low_freq_factor == (float)json_number_value(json_object_get(rope, "low_freq_factor")));
        assert_true(cfg.rope_high_freq_factor == (float)json_number_value(json_object_get(rope, "high_freq_factor")));
        assert_int_equal(cfg.rope_original_context,
                         json_integer_value(json_object_get(rope, "original_max_position_embeddings")));
    } else if (!rope_type || strcmp(rope_type, "default") == 0) {
        assert_int_equal(cfg.rope_scaling, PB_ROPE_SCALING_NONE);
    }
    json_decref(root);
}

static void test_fixture_tiny_gqa(void **state) {
    (void)state;
    check_fixture("tiny_gqa");
}

static void test_fixture_tiny_bias(void **state) {
    (void)state;
    check_fixture("tiny_bias");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_llama3_gqa_v4_layout, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_llama3_gqa_v5_layout, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_qwen2_explicit_head_dim, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_defaults_filled, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_rope_variants, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_refused, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gemma, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gemma2_defaults, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gemma3_v5_layout, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gemma3_multimodal, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_qwen3, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_families_refused, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gpt2, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_gptneox, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_phi3_olmo2, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test_setup_teardown(test_new_families_refused, tu_scratch_setup, tu_scratch_teardown),
        cmocka_unit_test(test_missing_file_and_args),
        cmocka_unit_test(test_fixture_tiny_gqa),
        cmocka_unit_test(test_fixture_tiny_bias),
    };
    return cmocka_run_group_tests_name("hf_config", tests, NULL, NULL);
}
