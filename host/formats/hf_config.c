/* Hugging Face config.json -> pb_model_config for llama, mistral and qwen2.
 * Defaults follow transformers' own config classes (checked against
 * transformers 5.x), so a checkpoint means the same here as there; what the
 * engine cannot reproduce (other activations, o_proj/MLP biases, other RoPE
 * variants) is refused instead of being run wrongly. */
#define _POSIX_C_SOURCE 200809L

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hf_config.h"
#include "util/internal.h"
#include "util/json.h"

/* transformers' RotaryEmbeddingConfigMixin.default_theta */
#define PB_DEFAULT_ROPE_THETA 10000.0

/* Absent and null both mean "not given" in transformers configs. */
static const json_t *get(const json_t *object, const char *key) {
    const json_t *value = json_object_get(object, key);
    return json_is_null(value) ? NULL : value;
}

/* A positive number under key into int_out (an integer that fits in an
 * int) or else float_out (a number within float range); fallback when
 * absent and not required. */
static pb_status read_positive(const char *path, const char *where, const json_t *object, const char *key, int required,
                               double fallback, int *int_out, float *float_out) {
    const json_t *value = get(object, key);
    if (!value) {
        if (required)
            return pb_fail(PB_ERR_FORMAT, "%s: missing key '%s%s'", path, where, key);
        if (int_out)
            *int_out = (int)fallback;
        else
            *float_out = (float)fallback;
        return PB_OK;
    }
    char text[64];
    if (int_out ? !json_is_integer(value) : !json_is_number(value))
        return pb_fail(PB_ERR_FORMAT, "%s: key '%s%s' is %s, expected a positive %s", path, where, key,
                       pb_json_describe(value, text, sizeof text), int_out ? "integer" : "number");
    if (int_out) {
        json_int_t v = json_integer_value(value);
        if (v <= 0 || v > INT_MAX)
            return pb_fail(PB_ERR_FORMAT, "%s: key '%s%s' is %lld, expected a positive integer that fits in an int",
                           path, where, key, (long long)v);
        *int_out = (int)v;
        return PB_OK;
    }
    double v = json_number_value(value);
    float f = (float)v;
    if (!(v > 0) || !isfinite(f) || f == 0.0f)
        return pb_fail(PB_ERR_FORMAT, "%s: key '%s%s' is %s, expected a positive number within float range", path,
                       where, key, pb_json_describe(value, text, sizeof text));
    *float_out = f;
    return PB_OK;
}

static pb_status read_positive_int(const char *path, const char *where, const json_t *object, const char *key,
                                   int required, int fallback, int *out) {
    return read_positive(path, where, object, key, required, fallback, out, NULL);
}

static pb_status read_positive_float(const char *path, const char *where, const json_t *object, const char *key,
                                     int required, double fallback, float *out) {
    return read_positive(path, where, object, key, required, fallback, NULL, out);
}

static pb_status read_bool(const char *path, const json_t *object, const char *key, int fallback, int *out) {
    const json_t *value = get(object, key);
    if (!value) {
        *out = fallback;
        return PB_OK;
    }
    char text[64];
    if (!json_is_boolean(value))
        return pb_fail(PB_ERR_FORMAT, "%s: key '%s' is %s, expected true or false", path, key,
                       pb_json_describe(value, text, sizeof text));
    *out = json_is_true(value);
    return PB_OK;
}

/* bos_token_id / eos_token_id: an id, a list of ids (the first is used), or
 * null/absent (-1). */
static pb_status read_token_id(const char *path, const json_t *object, const char *key, int *out) {
    const json_t *value = get(object, key);
    *out = -1;
    if (!value)
        return PB_OK;
    const json_t *id = value;
    if (json_is_array(value)) {
        if (json_array_size(value) == 0)
            return PB_OK;
        id = json_array_get(value, 0);
    }
    char text[64];
    if (!json_is_integer(id) || json_integer_value(id) < 0 || json_integer_value(id) > INT_MAX)
        return pb_fail(PB_ERR_FORMAT,
                       "%s: key '%s' is %s, expected a token id (a non-negative integer or a list of them)", path, key,
                       pb_json_describe(value, text, sizeof text));
    *out = (int)json_integer_value(id);
    return PB_OK;
}

/* The RoPE description, resolved the way transformers'
 * convert_rope_params_to_dict/standardize_rope_params do: a non-empty
 * rope_scaling wins over rope_parameters; the type is "rope_type", else
 * "type", else default; rope_theta comes from that dict, else the top level,
 * else 10000; llama3's original context defaults to max_position_embeddings. */
static pb_status read_rope(const char *path, const json_t *root, pb_model_config *cfg) {
    const json_t *scaling = get(root, "rope_scaling");
    const json_t *parameters = get(root, "rope_parameters");
    const json_t *rope = NULL;
    const char *where = NULL;
    char text[64];
    if (scaling && !(json_is_object(scaling) && json_object_size(scaling) == 0)) {
        rope = scaling;
        where = "rope_scaling";
    } else if (parameters) {
        rope = parameters;
        where = "rope_parameters";
    }
    if (rope && !json_is_object(rope))
        return pb_fail(PB_ERR_FORMAT, "%s: key '%s' is %s, expected an object or null", path, where,
                       pb_json_describe(rope, text, sizeof text));
    char prefix[32] = "";
    if (rope)
        snprintf(prefix, sizeof prefix, "%s.", where);

    if (rope) {
        /* transformers nests one dict per layer type for models with mixed
         * attention; none of ours do, and reading it flat would silently
         * drop the scaling. */
        const char *key;
        json_t *member;
        json_object_foreach((json_t *)rope, key, member) {
            if (json_is_object(member))
                return pb_fail(PB_ERR_UNSUPPORTED,
                               "%s: '%s' holds a per-layer-type entry '%s'; only one global RoPE "
                               "is supported",
                               path, where, key);
        }
    }

    /* rope_theta: the dict's value first, then the top level. */
    const json_t *theta_holder = rope && get(rope, "rope_theta") ? rope : root;
    PB_TRY(read_positive_float(path, theta_holder == rope ? prefix : "", theta_holder, "rope_theta", 0,
                               PB_DEFAULT_ROPE_THETA, &cfg->rope_theta));

    /* Partial rotary embeddings rotate only part of each head; the engine
     * rotates all of it. */
    const json_t *partial = rope && get(rope, "partial_rotary_factor") ? get(rope, "partial_rotary_factor")
                                                                       : get(root, "partial_rotary_factor");
    if (partial && !(json_is_number(partial) && json_number_value(partial) == 1.0))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: partial_rotary_factor %s is not supported (only 1.0)", path,
                       pb_json_describe(partial, text, sizeof text));

    cfg->rope_scaling = PB_ROPE_SCALING_NONE;
    if (!rope)
        return PB_OK;
    const json_t *type = get(rope, "rope_type");
    if (!type)
        type = get(rope, "type");
    if (!type)
        return PB_OK; /* transformers' default */
    if (!json_is_string(type))
        return pb_fail(PB_ERR_FORMAT, "%s: '%s' type is %s, expected a string", path, where,
                       pb_json_describe(type, text, sizeof text));
    const char *name = json_string_value(type);
    if (strcmp(name, "default") == 0)
        return PB_OK;
    if (strcmp(name, "linear") == 0) {
        cfg->rope_scaling = PB_ROPE_SCALING_LINEAR;
        return read_positive_float(path, prefix, rope, "factor", 1, 0, &cfg->rope_factor);
    }
    if (strcmp(name, "llama3") == 0) {
        cfg->rope_scaling = PB_ROPE_SCALING_LLAMA3;
        PB_TRY(read_positive_float(path, prefix, rope, "factor", 1, 0, &cfg->rope_factor));
        PB_TRY(read_positive_float(path, prefix, rope, "low_freq_factor", 1, 0, &cfg->rope_low_freq_factor));
        PB_TRY(read_positive_float(path, prefix, rope, "high_freq_factor", 1, 0, &cfg->rope_high_freq_factor));
        PB_TRY(read_positive_int(path, prefix, rope, "original_max_position_embeddings", 0, cfg->context_length,
                                 &cfg->rope_original_context));
        /* The llama3 formula interpolates between the two wavelengths and
         * divides by their difference. */
        if (!(cfg->rope_high_freq_factor > cfg->rope_low_freq_factor))
            return pb_fail(PB_ERR_FORMAT, "%s: %s high_freq_factor %g must exceed low_freq_factor %g", path, where,
                           (double)cfg->rope_high_freq_factor, (double)cfg->rope_low_freq_factor);
        return PB_OK;
    }
    return pb_fail(PB_ERR_UNSUPPORTED,
                   "%s: %s type '%s' is not supported (patchbay implements default, linear and llama3)", path, where,
                   name);
}

static pb_status read_config(const char *path, const json_t *root, pb_model_config *cfg) {
    char text[64];
    const json_t *model_type = get(root, "model_type");
    if (!model_type)
        return pb_fail(PB_ERR_FORMAT, "%s: missing key 'model_type'", path);
    if (!json_is_string(model_type))
        return pb_fail(PB_ERR_FORMAT, "%s: key 'model_type' is %s, expected a string", path,
                       pb_json_describe(model_type, text, sizeof text));
    const char *arch = json_string_value(model_type);
    int is_llama = strcmp(arch, "llama") == 0;
    int is_mistral = strcmp(arch, "mistral") == 0;
    int is_qwen2 = strcmp(arch, "qwen2") == 0;
    if (!is_llama && !is_mistral && !is_qwen2)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: model_type '%s' is not supported (llama, mistral and qwen2 are)", path,
                       arch);
    snprintf(cfg->arch, sizeof cfg->arch, "%s", arch);

    const json_t *act = get(root, "hidden_act");
    /* transformers maps "swish" to the same SiLU. */
    if (act && !(json_is_string(act) &&
                 (strcmp(json_string_value(act), "silu") == 0 || strcmp(json_string_value(act), "swish") == 0)))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: hidden_act %s is not supported (only \"silu\")", path,
                       pb_json_describe(act, text, sizeof text));

    PB_TRY(read_positive_int(path, "", root, "num_hidden_layers", 1, 0, &cfg->n_layers));
    PB_TRY(read_positive_int(path, "", root, "hidden_size", 1, 0, &cfg->d_model));
    PB_TRY(read_positive_int(path, "", root, "num_attention_heads", 1, 0, &cfg->n_heads));
    PB_TRY(read_positive_int(path, "", root, "num_key_value_heads", 0, cfg->n_heads, &cfg->n_kv_heads));
    PB_TRY(read_positive_int(path, "", root, "intermediate_size", 1, 0, &cfg->d_mlp));
    PB_TRY(read_positive_int(path, "", root, "vocab_size", 1, 0, &cfg->vocab_size));
    PB_TRY(read_positive_int(path, "", root, "max_position_embeddings", 1, 0, &cfg->context_length));
    PB_TRY(read_positive_float(path, "", root, "rms_norm_eps", 1, 0, &cfg->rms_eps));

    if (get(root, "head_dim")) {
        PB_TRY(read_positive_int(path, "", root, "head_dim", 1, 0, &cfg->head_dim));
    } else {
        if (cfg->d_model % cfg->n_heads != 0)
            return pb_fail(PB_ERR_FORMAT,
                           "%s: hidden_size %d is not divisible by num_attention_heads %d (and head_dim is not given)",
                           path, cfg->d_model, cfg->n_heads);
        cfg->head_dim = cfg->d_model / cfg->n_heads;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return pb_fail(PB_ERR_FORMAT, "%s: num_attention_heads %d is not divisible by num_key_value_heads %d", path,
                       cfg->n_heads, cfg->n_kv_heads);
    /* RoPE rotates pairs of dimensions. */
    if (cfg->head_dim % 2 != 0)
        return pb_fail(PB_ERR_FORMAT, "%s: head_dim %d is odd; RoPE needs an even head_dim", path, cfg->head_dim);

    PB_TRY(read_rope(path, root, cfg));

    if (is_qwen2) {
        cfg->has_qkv_bias = 1;
    } else if (is_llama) {
        int attention_bias, mlp_bias;
        PB_TRY(read_bool(path, root, "attention_bias", 0, &attention_bias));
        if (attention_bias)
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "%s: llama with attention_bias true also has an o_proj bias, which is "
                           "not supported",
                           path);
        PB_TRY(read_bool(path, root, "mlp_bias", 0, &mlp_bias));
        if (mlp_bias)
            return pb_fail(PB_ERR_UNSUPPORTED, "%s: llama with mlp_bias true is not supported", path);
        cfg->has_qkv_bias = 0;
    } else {
        /* transformers' MistralAttention builds q/k/v/o without bias whatever
         * the config says, so attention_bias is ignored here as there. */
        cfg->has_qkv_bias = 0;
    }
    PB_TRY(read_bool(path, root, "tie_word_embeddings", 0, &cfg->tied_embeddings));
    PB_TRY(read_token_id(path, root, "bos_token_id", &cfg->bos_id));
    PB_TRY(read_token_id(path, root, "eos_token_id", &cfg->eos_id));

    /* Sliding-window attention equals full attention while the sequence fits
     * in the window; the engine has only full attention, so the usable
     * context ends at the window. mistral applies sliding_window whenever it
     * is set; qwen2 only with use_sliding_window. */
    int window = 0;
    if (is_mistral || is_qwen2) {
        int use_window = 1;
        if (is_qwen2)
            PB_TRY(read_bool(path, root, "use_sliding_window", 0, &use_window));
        if (use_window)
            PB_TRY(read_positive_int(path, "", root, "sliding_window", 0, 0, &window));
    }
    if (window > 0 && window < cfg->context_length)
        cfg->context_length = window;
    return PB_OK;
}

pb_status pb_hf_config_read(pb_model_config *cfg, const char *config_json_path) {
    if (!cfg || !config_json_path)
        return pb_fail(PB_ERR_ARG, "pb_hf_config_read: NULL %s", cfg ? "path" : "cfg");
    memset(cfg, 0, sizeof *cfg);
    json_error_t error;
    /* Duplicate keys would make the value depend on the parser. */
    json_t *root = json_load_file(config_json_path, JSON_REJECT_DUPLICATES, &error);
    if (!root) {
        FILE *probe = fopen(config_json_path, "rb");
        if (!probe)
            return pb_fail(PB_ERR_IO, "%s: cannot open: %s", config_json_path, error.text);
        fclose(probe);
        return pb_fail(PB_ERR_FORMAT, "%s: not valid JSON: %s (line %d, column %d)", config_json_path, error.text,
                       error.line, error.column);
    }
    pb_model_config parsed;
    memset(&parsed, 0, sizeof parsed);
    pb_status status = PB_OK;
    if (!json_is_object(root))
        status = pb_fail(PB_ERR_FORMAT, "%s: top level is not a JSON object", config_json_path);
    else
        status = read_config(config_json_path, root, &parsed);
    json_decref(root);
    if (status == PB_OK)
        *cfg = parsed;
    return status;
}
