/* Hugging Face config.json -> pb_model_config for every family of
 * model/arch.h (each family's own key names: GPT-2's n_embd, n_layer ...).
 * Defaults follow transformers' own config classes (checked against
 * transformers 5.x), so a checkpoint means the same here as there; what the
 * engine cannot reproduce (other activations, missing biases, RoPE variants
 * other than linear, llama3 and LongRoPE, partial rotary outside GPT-NeoX and
 * Phi-3) is refused instead
 * of being run wrongly. */
#define _POSIX_C_SOURCE 200809L

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hf_config.h"
#include "model/arch.h"
#include "util/internal.h"
#include "util/json.h"

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

/* The fraction of each head RoPE turns: partial_rotary_factor (in the
 * RoPE dict, else the top level; GPT-NeoX's older configs: rotary_pct),
 * the family's default when absent. Only a family with partial rotary
 * (gptneox, phi3) may turn less than all of it; rotary_dims must be even. */
static pb_status read_partial_rotary(const char *path, const json_t *root, const json_t *rope, const pb_arch *arch,
                                     pb_model_config *cfg) {
    const char *key = "partial_rotary_factor";
    const json_t *partial = rope ? get(rope, key) : NULL;
    if (!partial)
        partial = get(root, key);
    if (!partial && arch->partial_rotary && get(root, "rotary_pct"))
        partial = get(root, key = "rotary_pct");
    double fraction = arch->partial_rotary ? arch->hf_partial_rotary_default : 1.0;
    char text[64];
    if (partial && !(json_is_number(partial) && json_number_value(partial) > 0.0 && json_number_value(partial) <= 1.0))
        return pb_fail(PB_ERR_FORMAT, "%s: %s %s must be a number in (0, 1]", path, key,
                       pb_json_describe(partial, text, sizeof text));
    if (partial)
        fraction = json_number_value(partial);
    if (fraction != 1.0 && !arch->partial_rotary)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: %s %s is not supported for %s (only 1.0)", path, key,
                       pb_json_describe(partial, text, sizeof text), arch->name);
    int dims = (int)(fraction * cfg->head_dim); /* transformers: int(head_dim * partial_rotary_factor) */
    if (dims % 2 != 0 || dims <= 0)
        return pb_fail(PB_ERR_FORMAT, "%s: %s %g turns %d dimensions of each head: RoPE needs a positive even number",
                       path, key, fraction, dims);
    cfg->rotary_dims = dims < cfg->head_dim ? dims : 0;
    return PB_OK;
}

/* rope[key]: one positive number per rotated pair into out. */
static pb_status read_factor_list(const char *path, const char *prefix, const json_t *rope, const char *key,
                                  const pb_model_config *cfg, float *out) {
    int pairs = (cfg->rotary_dims > 0 ? cfg->rotary_dims : cfg->head_dim) / 2;
    const json_t *list = get(rope, key);
    char text[64];
    if (!list)
        return pb_fail(PB_ERR_FORMAT, "%s: missing key '%s%s'", path, prefix, key);
    if (!json_is_array(list) || json_array_size(list) != (size_t)pairs)
        return pb_fail(PB_ERR_FORMAT, "%s: key '%s%s' is %s, expected a list of %d numbers (one per rotated pair)",
                       path, prefix, key, pb_json_describe(list, text, sizeof text), pairs);
    for (int i = 0; i < pairs; i++) {
        const json_t *item = json_array_get(list, (size_t)i);
        float f = json_is_number(item) ? (float)json_number_value(item) : 0.0f;
        if (!(f > 0.0f) || !isfinite(f))
            return pb_fail(PB_ERR_FORMAT, "%s: '%s%s'[%d] is %s, expected a positive number", path, prefix, key, i,
                           pb_json_describe(item, text, sizeof text));
        out[i] = f;
    }
    return PB_OK;
}

/* LongRoPE as transformers' _compute_longrope_parameters reads it: the
 * original context from the top level (Phi-3's own key, which
 * standardize_rope_params lets win), else the dict; factor from the dict,
 * else max_position_embeddings / original; attention_factor from the dict,
 * else sqrt(1 + ln(factor) / ln(original)) (1 when factor <= 1). */
static pb_status read_longrope(const char *path, const char *prefix, const json_t *root, const json_t *rope,
                               pb_model_config *cfg) {
    const char *key = "original_max_position_embeddings";
    cfg->rope_scaling = PB_ROPE_SCALING_LONGROPE;
    if (get(root, key))
        PB_TRY(read_positive_int(path, "", root, key, 1, 0, &cfg->rope_original_context));
    else
        PB_TRY(read_positive_int(path, prefix, rope, key, 1, 0, &cfg->rope_original_context));
    float factor;
    PB_TRY(read_positive_float(path, prefix, rope, "factor", 0,
                               (double)cfg->context_length / cfg->rope_original_context, &factor));
    double fallback = 1.0;
    if (factor > 1.0f && cfg->rope_original_context > 1)
        fallback = sqrt(1.0 + log((double)factor) / log((double)cfg->rope_original_context));
    PB_TRY(read_positive_float(path, prefix, rope, "attention_factor", 0, fallback, &cfg->rope_attn_factor));
    cfg->rope_factor = factor;
    PB_TRY(read_factor_list(path, prefix, rope, "short_factor", cfg, cfg->rope_short_factors));
    return read_factor_list(path, prefix, rope, "long_factor", cfg, cfg->rope_long_factors);
}

/* The RoPE description, resolved the way transformers'
 * convert_rope_params_to_dict/standardize_rope_params do: a non-empty
 * rope_scaling wins over rope_parameters; the type is "rope_type", else
 * "type", else default; rope_theta comes from that dict, else the top level,
 * else the family's default (transformers' default_theta: 10000, Gemma-3's
 * global layers 1e6); llama3's original context defaults to
 * max_position_embeddings. */
static pb_status read_rope(const char *path, const json_t *root, const pb_arch *arch, double default_theta,
                           pb_model_config *cfg) {
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

    /* rope_theta: the dict's value first, then the top level (GPT-NeoX's
     * older configs: rotary_emb_base). */
    const json_t *theta_holder = rope && get(rope, "rope_theta") ? rope : root;
    const char *theta_key = theta_holder == root && !get(root, "rope_theta") && get(root, "rotary_emb_base")
                                ? "rotary_emb_base"
                                : "rope_theta";
    PB_TRY(read_positive_float(path, theta_holder == rope ? prefix : "", theta_holder, theta_key, 0, default_theta,
                               &cfg->rope_theta));
    PB_TRY(read_partial_rotary(path, root, rope, arch, cfg));

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
    if (strcmp(name, "longrope") == 0 || strcmp(name, "su") == 0)
        return read_longrope(path, prefix, root, rope, cfg);
    return pb_fail(PB_ERR_UNSUPPORTED,
                   "%s: %s type '%s' is not supported (patchbay implements default, linear, llama3 and longrope)", path,
                   where, name);
}

/* Where the text model's settings live: the top level, or text_config
 * for a multimodal checkpoint (Gemma3ForConditionalGeneration), whose text
 * tower is all that is loaded. */
typedef struct config_view {
    const char *path;
    const json_t *top;
    const json_t *root; /* top or its text_config */
    const char *where;  /* "" or "text_config." for messages */
    const pb_arch *arch;
} config_view;

static pb_status read_family(config_view *v) {
    char text[64];
    const json_t *model_type = get(v->top, "model_type");
    if (!model_type)
        return pb_fail(PB_ERR_FORMAT, "%s: missing key 'model_type'", v->path);
    if (!json_is_string(model_type))
        return pb_fail(PB_ERR_FORMAT, "%s: key 'model_type' is %s, expected a string", v->path,
                       pb_json_describe(model_type, text, sizeof text));
    v->arch = pb_arch_find_hf(json_string_value(model_type));
    if (!v->arch) {
        char where[600];
        snprintf(where, sizeof where, "%s: model_type", v->path);
        return pb_arch_refuse(where, json_string_value(model_type));
    }
    v->root = v->top;
    v->where = "";
    const json_t *text_config = get(v->top, "text_config");
    if (text_config) {
        if (!json_is_object(text_config))
            return pb_fail(PB_ERR_FORMAT, "%s: key 'text_config' is %s, expected an object", v->path,
                           pb_json_describe(text_config, text, sizeof text));
        v->root = text_config;
        v->where = "text_config.";
    }
    return PB_OK;
}

/* The MLP activation: the family's own, under the names transformers
 * gives it for the family (Gemma-1's legacy "gelu", Llama's "swish");
 * anything else would run wrongly. */
static pb_status read_activation(const config_view *v, pb_model_config *cfg) {
    const json_t *act = get(v->root, v->arch->hf_act_key);
    cfg->activation = v->arch->activation;
    if (!act)
        return PB_OK;
    static const char *const silu[] = {"silu", "swish", NULL};
    const char *const *names = v->arch->hf_act_names[0] ? v->arch->hf_act_names : silu;
    const char *name = json_is_string(act) ? json_string_value(act) : "";
    for (const char *const *n = names; *n; n++)
        if (strcmp(name, *n) == 0)
            return PB_OK;
    char text[64];
    return pb_fail(PB_ERR_UNSUPPORTED, "%s: %s%s %s is not supported for %s (only \"%s\")", v->path, v->where,
                   v->arch->hf_act_key, pb_json_describe(act, text, sizeof text), v->arch->name, names[0]);
}

/* key, or Llama's name for it when the family has none of its own. */
static const char *key_or(const char *key, const char *llama) { return key ? key : llama; }

static pb_status read_sizes(const config_view *v, pb_model_config *cfg) {
    const char *path = v->path, *w = v->where;
    const json_t *r = v->root;
    const pb_arch_hf_keys *k = &v->arch->hf_keys;
    int mlp_factor = v->arch->hf_mlp_factor;
    PB_TRY(read_positive_int(path, w, r, key_or(k->n_layers, "num_hidden_layers"), 1, 0, &cfg->n_layers));
    PB_TRY(read_positive_int(path, w, r, key_or(k->d_model, "hidden_size"), 1, 0, &cfg->d_model));
    PB_TRY(read_positive_int(path, w, r, key_or(k->n_heads, "num_attention_heads"), 1, 0, &cfg->n_heads));
    PB_TRY(read_positive_int(path, w, r, "num_key_value_heads", 0, cfg->n_heads, &cfg->n_kv_heads));
    /* GPT-2's n_inner: null means 4 * n_embd */
    PB_TRY(read_positive_int(path, w, r, key_or(k->d_mlp, "intermediate_size"), mlp_factor == 0,
                             (double)mlp_factor * cfg->d_model, &cfg->d_mlp));
    PB_TRY(read_positive_int(path, w, r, "vocab_size", 1, 0, &cfg->vocab_size));
    PB_TRY(read_positive_int(path, w, r, key_or(k->context, "max_position_embeddings"), 1, 0, &cfg->context_length));
    PB_TRY(read_positive_float(path, w, r, key_or(k->eps, "rms_norm_eps"), 1, 0, &cfg->rms_eps));
    if (get(r, "head_dim")) {
        PB_TRY(read_positive_int(path, w, r, "head_dim", 1, 0, &cfg->head_dim));
    } else {
        if (cfg->d_model % cfg->n_heads != 0)
            return pb_fail(PB_ERR_FORMAT, "%s: %s %d is not divisible by %s %d (and head_dim is not given)", path,
                           key_or(k->d_model, "hidden_size"), cfg->d_model, key_or(k->n_heads, "num_attention_heads"),
                           cfg->n_heads);
        cfg->head_dim = cfg->d_model / cfg->n_heads;
    }
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return pb_fail(PB_ERR_FORMAT, "%s: num_attention_heads %d is not divisible by num_key_value_heads %d", path,
                       cfg->n_heads, cfg->n_kv_heads);
    /* RoPE rotates pairs of dimensions. */
    if (cfg->head_dim % 2 != 0)
        return pb_fail(PB_ERR_FORMAT, "%s: head_dim %d is odd; RoPE needs an even head_dim", path, cfg->head_dim);
    return PB_OK;
}

/* Q/K/V biases: qwen2 always has them (attention_bias is not read there,
 * nor by mistral, whose attention is built without bias whatever the config
 * says); elsewhere attention_bias true adds an o_proj bias the engine lacks. */
static pb_status read_biases(const config_view *v, pb_model_config *cfg) {
    cfg->has_qkv_bias = v->arch->qkv_bias;
    cfg->has_dense_bias = v->arch->dense_bias;
    int attention_bias = 1, mlp_bias = 0;
    if (v->arch->dense_bias) {
        /* GPT-NeoX: attention_bias (default true) puts biases on q, k, v
         * and dense together; GPT-2 always has them */
        PB_TRY(read_bool(v->path, v->root, "attention_bias", 1, &attention_bias));
        if (!attention_bias)
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "%s: %sattention_bias false (no attention biases) is not supported for %s", v->path,
                           v->where, v->arch->name);
        return PB_OK;
    }
    attention_bias = 0;
    if (!v->arch->qkv_bias && v->arch->window != PB_WINDOW_CONTEXT)
        PB_TRY(read_bool(v->path, v->root, "attention_bias", 0, &attention_bias));
    if (attention_bias)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: %s with attention_bias true also has an o_proj bias, which is not supported", v->path,
                       v->arch->name);
    PB_TRY(read_bool(v->path, v->root, "mlp_bias", 0, &mlp_bias));
    if (mlp_bias)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: %s with mlp_bias true is not supported", v->path, v->arch->name);
    return PB_OK;
}

/* Sliding windows of mistral and qwen2/3: equal to full attention while
 * the sequence fits in the window; the engine runs them as full attention,
 * so the usable context ends at the window. mistral applies sliding_window
 * whenever it is set; qwen2/3 only with use_sliding_window. */
static pb_status read_window_context(const config_view *v, pb_model_config *cfg) {
    int window = 0, use_window = v->arch->window == PB_WINDOW_CONTEXT;
    if (v->arch->window == PB_WINDOW_NONE)
        return PB_OK;
    if (v->arch->window == PB_WINDOW_ALL) {
        /* Phi-3: transformers masks every layer to the window when
         * sliding_window is set (null: none); so does llama.cpp */
        cfg->sliding_period = 0;
        return read_positive_int(v->path, v->where, v->root, "sliding_window", 0, 0, &cfg->sliding_window);
    }
    if (v->arch->window == PB_WINDOW_CONTEXT_IF_USED)
        PB_TRY(read_bool(v->path, v->root, "use_sliding_window", 0, &use_window));
    if (use_window)
        PB_TRY(read_positive_int(v->path, v->where, v->root, "sliding_window", 0, 0, &window));
    if (window > 0 && window < cfg->context_length)
        cfg->context_length = window;
    return PB_OK;
}

/* Gemma-3's two RoPEs: the global layers' base and scaling, and the
 * sliding layers' base, never scaled. transformers 5 writes rope_parameters
 * with one dict per layer type; older configs rope_theta, rope_scaling (for
 * the global layers) and rope_local_base_freq. */
static pb_status read_rope_by_layer_type(const config_view *v, pb_model_config *cfg) {
    const json_t *params = get(v->root, "rope_parameters");
    const json_t *full = json_is_object(params) ? get(params, "full_attention") : NULL;
    const json_t *sliding = json_is_object(params) ? get(params, "sliding_attention") : NULL;
    const pb_arch *a = v->arch;
    if (!full && !sliding) {
        PB_TRY(read_rope(v->path, v->root, a, a->hf_rope_theta_default, cfg));
        return read_positive_float(v->path, v->where, v->root, "rope_local_base_freq", 0, a->rope_theta_local,
                                   &cfg->rope_theta_local);
    }
    json_t *global = json_object(); /* {"rope_parameters": full_attention} */
    if (!global || (full && json_object_set(global, "rope_parameters", (json_t *)full) != 0)) {
        json_decref(global);
        return pb_fail(PB_ERR_OOM, "%s: out of memory reading rope_parameters", v->path);
    }
    pb_status status = read_rope(v->path, global, a, a->hf_rope_theta_default, cfg);
    json_decref(global);
    PB_TRY(status);
    cfg->rope_theta_local = a->rope_theta_local;
    if (!sliding)
        return PB_OK;
    const json_t *type = get(sliding, "rope_type");
    char text[64];
    if (type && !(json_is_string(type) && strcmp(json_string_value(type), "default") == 0))
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: rope_parameters.sliding_attention type %s is not supported (the sliding layers' RoPE is "
                       "never scaled)",
                       v->path, pb_json_describe(type, text, sizeof text));
    return read_positive_float(v->path, "rope_parameters.sliding_attention.", sliding, "rope_theta", 0,
                               a->rope_theta_local, &cfg->rope_theta_local);
}

/* A softcap: absent is the family's default, null none, else a positive
 * number. */
static pb_status read_softcap(const config_view *v, const char *key, float fallback, float *out) {
    const json_t *value = json_object_get(v->root, key);
    *out = 0.0f;
    if (json_is_null(value))
        return PB_OK;
    return read_positive_float(v->path, v->where, v->root, key, 0, fallback, out);
}

/* layer_types (one "sliding_attention" / "full_attention" per layer) must
 * be what a period expresses (layer L global iff (L + 1) % period == 0, the
 * period set by the first global layer; none: every layer slides). */
static pb_status check_layer_types(const config_view *v, const json_t *types, pb_model_config *cfg) {
    char text[64];
    if (!json_is_array(types) || json_array_size(types) != (size_t)cfg->n_layers)
        return pb_fail(PB_ERR_FORMAT, "%s: key '%slayer_types' is %s, expected a list of %d layer types", v->path,
                       v->where, pb_json_describe(types, text, sizeof text), cfg->n_layers);
    cfg->sliding_period = 0;
    for (int l = 0; l < cfg->n_layers; l++) {
        const char *t = json_string_value(json_array_get(types, (size_t)l));
        if (!t || (strcmp(t, "sliding_attention") != 0 && strcmp(t, "full_attention") != 0))
            return pb_fail(PB_ERR_FORMAT,
                           "%s: %slayer_types[%d] is %s, expected \"sliding_attention\" or "
                           "\"full_attention\"",
                           v->path, v->where, l, pb_json_describe(json_array_get(types, (size_t)l), text, sizeof text));
        if (!cfg->sliding_period && strcmp(t, "full_attention") == 0)
            cfg->sliding_period = l + 1;
    }
    for (int l = 0; l < cfg->n_layers; l++) {
        int sliding = strcmp(json_string_value(json_array_get(types, (size_t)l)), "sliding_attention") == 0;
        if (sliding != pb_layer_is_sliding(cfg, l))
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "%s: %slayer_types: layer %d is %s, but the pattern must be 'layer L global iff (L + 1) %% "
                           "%d == 0' (the first global layer is %d); other patterns are not supported",
                           v->path, v->where, l, sliding ? "sliding" : "global", cfg->sliding_period,
                           cfg->sliding_period - 1);
    }
    return PB_OK;
}

/* Gemma-2/3: a window on the sliding layers, which alternate with global
 * ones by the family's period, sliding_window_pattern, or layer_types. */
static pb_status read_sliding_pattern(const config_view *v, pb_model_config *cfg) {
    const json_t *window = json_object_get(v->root, "sliding_window");
    if (window && json_is_null(window))
        return PB_OK; /* transformers: no window on any layer */
    PB_TRY(read_positive_int(v->path, v->where, v->root, "sliding_window", 0, v->arch->hf_window_default,
                             &cfg->sliding_window));
    cfg->sliding_period = v->arch->sliding_period;
    PB_TRY(read_positive_int(v->path, v->where, v->root, "sliding_window_pattern", 0, cfg->sliding_period,
                             &cfg->sliding_period));
    const json_t *types = get(v->root, "layer_types");
    return types ? check_layer_types(v, types, cfg) : PB_OK;
}

/* The architecture beyond Llama: the family's traits and what config.json
 * says of them (transformers' defaults where it says nothing). */
static pb_status read_architecture(const config_view *v, pb_model_config *cfg) {
    const pb_arch *a = v->arch;
    cfg->qk_norm = a->qk_norm;
    cfg->sandwich_norm = a->sandwich_norm;
    cfg->norm = a->norm;
    cfg->position = a->position;
    cfg->plain_mlp = a->plain_mlp;
    cfg->no_pre_norm = a->no_pre_norm;
    cfg->qk_norm_full = a->qk_norm_full;
    cfg->parallel_block = a->parallel_default;
    if (a->parallel_default)
        PB_TRY(read_bool(v->path, v->root, "use_parallel_residual", 1, &cfg->parallel_block));
    if (a->embed_scaled)
        cfg->embed_scale = (float)sqrt((double)cfg->d_model); /* torch: hidden_size**0.5 rounded to fp32 */
    if (a->query_pre_attn_scalar > 0) {
        float scalar;
        PB_TRY(read_positive_float(v->path, v->where, v->root, "query_pre_attn_scalar", 0, a->query_pre_attn_scalar,
                                   &scalar));
        cfg->attn_scale = (float)pow((double)scalar, -0.5);
    }
    if (a->softcaps) {
        PB_TRY(read_softcap(v, "attn_logit_softcapping", a->attn_softcap_default, &cfg->attn_softcap));
        PB_TRY(read_softcap(v, "final_logit_softcapping", a->final_softcap_default, &cfg->final_softcap));
    }
    int bidirectional = 0;
    PB_TRY(read_bool(v->path, v->root, "use_bidirectional_attention", 0, &bidirectional));
    if (bidirectional)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: %suse_bidirectional_attention true is not supported (causal only)",
                       v->path, v->where);
    return a->window == PB_WINDOW_PATTERN ? read_sliding_pattern(v, cfg) : read_window_context(v, cfg);
}

static pb_status read_text_config(config_view *v, pb_model_config *cfg) {
    const char *path = v->path;
    PB_TRY(read_activation(v, cfg));
    PB_TRY(read_sizes(v, cfg));
    if (v->arch->rope_theta_local > 0.0f)
        PB_TRY(read_rope_by_layer_type(v, cfg));
    else
        PB_TRY(read_rope(path, v->root, v->arch, v->arch->hf_rope_theta_default, cfg));
    PB_TRY(read_biases(v, cfg));
    /* a multimodal checkpoint may keep these at the top level */
    const json_t *top = v->top, *r = v->root;
    PB_TRY(read_bool(path, get(r, "tie_word_embeddings") ? r : top, "tie_word_embeddings", v->arch->tied_default,
                     &cfg->tied_embeddings));
    PB_TRY(read_token_id(path, get(r, "bos_token_id") ? r : top, "bos_token_id", &cfg->bos_id));
    PB_TRY(read_token_id(path, get(r, "eos_token_id") ? r : top, "eos_token_id", &cfg->eos_id));
    return read_architecture(v, cfg);
}

static pb_status read_config(const char *path, const json_t *top, pb_model_config *cfg) {
    config_view v = {path, top, top, "", NULL};
    PB_TRY(read_family(&v));
    snprintf(cfg->arch, sizeof cfg->arch, "%s", v.arch->name);
    if (!v.arch->hf_defaults)
        return read_text_config(&v, cfg);
    /* the family's config class defaults under what the file says (a
     * multimodal Gemma-3's text_config names little more than its sizes) */
    json_error_t error;
    json_t *merged = json_loads(v.arch->hf_defaults, 0, &error);
    if (!merged || json_object_update(merged, (json_t *)v.root) != 0) {
        json_decref(merged);
        return pb_fail(PB_ERR_OOM, "%s: out of memory merging %s defaults", path, v.arch->name);
    }
    v.root = merged;
    pb_status status = read_text_config(&v, cfg);
    json_decref(merged);
    return status;
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
