/* The GGUF weight source: hyperparameters from the file's keys, tensors
 * under their own (canonical) names, dequantised to fp32 with llama.cpp's
 * Q/K row permutation undone, or handed out raw from the mapping. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"
#include "formats/quant.h"
#include "model/arch.h"
#include "model/model.h"
#include "model/weight_source.h"
#include "util/internal.h"

typedef struct gguf_source {
    pb_weight_source base;
    pb_gguf *gguf;
    int permuted_qk; /* llama.cpp permuted Q/K rows (the family's descriptor says) */
} gguf_source;

/* ---- hyperparameters from GGUF metadata ------------------------------- */

/* ARCH.SUFFIX into *as_int (a positive int32) or *as_float, whichever is
 * not NULL; fallback when the file lacks it and it is not required. */
static pb_status gguf_hyperparameter(const pb_gguf *g, const char *arch, const char *suffix, int required,
                                     double fallback, int *as_int, float *as_float) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!pb_gguf_has_key(g, key)) {
        if (required)
            return pb_fail(PB_ERR_FORMAT, "gguf: missing hyperparameter '%s'", key);
        if (as_int)
            *as_int = (int)fallback;
        else
            *as_float = (float)fallback;
        return PB_OK;
    }
    if (as_float) {
        double value;
        PB_TRY(pb_gguf_get_float(g, key, &value));
        *as_float = (float)value;
        return PB_OK;
    }
    int64_t value;
    PB_TRY(pb_gguf_get_int(g, key, &value));
    if (value <= 0 || value > INT32_MAX)
        return pb_fail(PB_ERR_FORMAT, "gguf: hyperparameter '%s' = %lld is out of range", key, (long long)value);
    *as_int = (int)value;
    return PB_OK;
}

static pb_status gguf_int(const pb_gguf *g, const char *arch, const char *suffix, int *out, int required,
                          int fallback) {
    return gguf_hyperparameter(g, arch, suffix, required, fallback, out, NULL);
}

static pb_status gguf_float(const pb_gguf *g, const char *arch, const char *suffix, float *out, int required,
                            float fallback) {
    return gguf_hyperparameter(g, arch, suffix, required, fallback, NULL, out);
}

/* One more than the largest N of a 'blk.N.' tensor name: the layers the
 * tensor table holds (0 when none). The table is bounded by the file. */
static int64_t gguf_layers_held(const pb_gguf *g) {
    int64_t held = 0;
    for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++) {
        const char *s = pb_gguf_tensor_at(g, i)->name;
        if (strncmp(s, "blk.", 4) != 0 || s[4] < '0' || s[4] > '9')
            continue;
        int64_t n = 0;
        for (s += 4; *s >= '0' && *s <= '9' && n <= INT32_MAX; s++)
            n = n * 10 + (*s - '0');
        if (*s == '.' && n < INT32_MAX && n + 1 > held)
            held = n + 1;
    }
    return held;
}

/* ARCH.block_count must be the number of layers the file holds: checked
 * before anything is sized by it, and named as the key that is wrong. */
static pb_status check_block_count(const pb_gguf *g, const char *path, const char *arch, int n_layers) {
    int64_t held = gguf_layers_held(g);
    if (n_layers == held)
        return PB_OK;
    char missing[96] = "";
    if (n_layers > held)
        snprintf(missing, sizeof missing, "; tensor blk.%d.attn_norm.weight is missing", n_layers - 1);
    if (held == 0)
        return pb_fail(PB_ERR_FORMAT, "%s: %s.block_count: %d layers declared, but the file holds no layer tensors%s",
                       path, arch, n_layers, missing);
    return pb_fail(PB_ERR_FORMAT,
                   "%s: %s.block_count: %d layers declared, but the file holds %lld (tensors blk.0 to blk.%lld)%s",
                   path, arch, n_layers, (long long)held, (long long)(held - 1), missing);
}

/* The head dimension is ARCH.attention.key_length, else embedding_length /
 * head_count (llama.cpp's rule); ARCH.rope.dimension_count, when given,
 * must equal it, or in a family with partial rotary (gptneox, phi3) be fewer and
 * even: the rotary dimensions. */
static pb_status gguf_head_dim(pb_model_config *c, const pb_gguf *g, const char *path, const pb_arch *arch) {
    const char *a = arch->name;
    PB_TRY(gguf_int(g, a, "attention.key_length", &c->head_dim, 0, c->d_model / c->n_heads));
    int rope_dims = 0;
    PB_TRY(gguf_int(g, a, "rope.dimension_count", &rope_dims, 0, c->head_dim));
    char key_length[128];
    snprintf(key_length, sizeof key_length, "%s.attention.key_length", a);
    const char *from = pb_gguf_has_key(g, key_length) ? key_length : "embedding_length / head_count";
    if (rope_dims > c->head_dim)
        return pb_fail(PB_ERR_FORMAT,
                       "%s: %s.rope.dimension_count = %d is more than the head dimension %d (%s): a head cannot "
                       "rotate more dimensions than it has",
                       path, a, rope_dims, c->head_dim, from);
    if (rope_dims < c->head_dim && !arch->partial_rotary)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: %s.rope.dimension_count = %d is less than the head dimension %d (%s): partial rotary "
                       "embeddings are not supported for %s",
                       path, a, rope_dims, c->head_dim, from, a);
    if (rope_dims % 2 != 0)
        return pb_fail(PB_ERR_FORMAT, "%s: %s.rope.dimension_count = %d is odd: RoPE turns pairs of dimensions", path,
                       a, rope_dims);
    c->rotary_dims = rope_dims < c->head_dim ? rope_dims : 0;
    return PB_OK;
}

/* tokenizer.ggml.KEY (bos_token_id, eos_token_id), when present, must be an
 * integer id inside the vocabulary: *id, or -1 when absent. */
static pb_status gguf_token_id(const pb_gguf *g, const char *path, const char *key, int vocab_size, int *id) {
    *id = -1;
    char full[96];
    snprintf(full, sizeof full, "tokenizer.ggml.%s", key);
    if (!pb_gguf_has_key(g, full))
        return PB_OK;
    int64_t value;
    pb_status status = pb_gguf_get_int(g, full, &value);
    if (status != PB_OK)
        return pb_fail_context(status, "%s", path);
    if (value < 0 || value >= vocab_size)
        return pb_fail(PB_ERR_FORMAT, "%s: %s = %lld is outside the vocabulary (ids 0 to %d)", path, full,
                       (long long)value, vocab_size - 1);
    *id = (int)value;
    return PB_OK;
}

/* ARCH.rope.scaling.type: none or linear (with its factor); llama.cpp's
 * converter writes the global layers' scaling there (Gemma-3's linear 8). */
static pb_status gguf_rope_scaling(pb_model_config *c, const pb_gguf *g, const char *path, const char *a) {
    char scaling_key[128];
    snprintf(scaling_key, sizeof scaling_key, "%s.rope.scaling.type", a);
    if (pb_gguf_has_key(g, scaling_key)) {
        const char *type;
        size_t len;
        PB_TRY(pb_gguf_get_string(g, scaling_key, &type, &len));
        if (len == 6 && memcmp(type, "linear", 6) == 0) {
            c->rope_scaling = PB_ROPE_SCALING_LINEAR;
            PB_TRY(gguf_float(g, a, "rope.scaling.factor", &c->rope_factor, 1, 0));
        } else if (!(len == 4 && memcmp(type, "none", 4) == 0)) {
            return pb_fail(PB_ERR_UNSUPPORTED, "%s: rope scaling type '%.*s' is not supported", path, (int)len, type);
        }
    }
    return PB_OK;
}

/* One LongRoPE factor tensor (F32, one factor per rotated pair) into out. */
static pb_status gguf_rope_factors(const pb_gguf *g, const char *path, const char *name, int pairs, float *out) {
    const pb_gguf_tensor *t = pb_gguf_find_tensor(g, name);
    if (!t)
        return pb_fail(PB_ERR_FORMAT,
                       "%s: LongRoPE needs both 'rope_factors_short.weight' and "
                       "'rope_factors_long.weight'; '%s' is missing",
                       path, name);
    if (t->type != PB_GGML_F32 || t->n_elements != (uint64_t)pairs)
        return pb_fail(PB_ERR_FORMAT,
                       "%s: tensor '%s' must be F32 with %d elements (one per rotated pair), has %s "
                       "with %llu",
                       path, name, pairs, pb_ggml_type_name(t->type), (unsigned long long)t->n_elements);
    memcpy(out, t->data, sizeof(float) * (size_t)pairs);
    for (int i = 0; i < pairs; i++)
        if (!(out[i] > 0.0f) || !isfinite(out[i]))
            return pb_fail(PB_ERR_FORMAT, "%s: '%s'[%d] = %g is not a positive factor", path, name, i, (double)out[i]);
    return PB_OK;
}

/* LongRoPE, as llama.cpp's converter writes it for Phi-3 (128k, 3.5,
 * Phi-4-mini): the tensors rope_factors_short / rope_factors_long,
 * ARCH.rope.scaling.original_context_length and ARCH.rope.scaling.attn_factor
 * (when absent: sqrt(1 + ln(factor) / ln(original)), factor = context_length
 * / original, as the converter computes it). */
static pb_status gguf_longrope(pb_model_config *c, const pb_gguf *g, const char *path, const char *a) {
    if (!pb_gguf_find_tensor(g, "rope_factors_short.weight") && !pb_gguf_find_tensor(g, "rope_factors_long.weight"))
        return PB_OK;
    if (c->rope_scaling != PB_ROPE_SCALING_NONE)
        return pb_fail(PB_ERR_FORMAT, "%s: LongRoPE factor tensors together with %s.rope.scaling.type", path, a);
    int pairs = (c->rotary_dims > 0 ? c->rotary_dims : c->head_dim) / 2;
    c->rope_scaling = PB_ROPE_SCALING_LONGROPE;
    PB_TRY(gguf_rope_factors(g, path, "rope_factors_short.weight", pairs, c->rope_short_factors));
    PB_TRY(gguf_rope_factors(g, path, "rope_factors_long.weight", pairs, c->rope_long_factors));
    PB_TRY(gguf_int(g, a, "rope.scaling.original_context_length", &c->rope_original_context, 1, 0));
    double factor = (double)c->context_length / c->rope_original_context, fallback = 1.0;
    if (factor > 1.0 && c->rope_original_context > 1)
        fallback = sqrt(1.0 + log(factor) / log((double)c->rope_original_context));
    c->rope_factor = (float)factor;
    return gguf_float(g, a, "rope.scaling.attn_factor", &c->rope_attn_factor, 0, (float)fallback);
}

/* key (present) as a non-negative int32 into *out: 0 is a value here
 * ("none", "every layer"), unlike the sizes gguf_int reads. */
static pb_status gguf_count(const pb_gguf *g, const char *path, const char *key, int *out) {
    int64_t value;
    pb_status status = pb_gguf_get_int(g, key, &value);
    if (status != PB_OK)
        return pb_fail_context(status, "%s", path);
    if (value < 0 || value > INT32_MAX)
        return pb_fail(PB_ERR_FORMAT, "%s: %s = %lld is out of range", path, key, (long long)value);
    *out = (int)value;
    return PB_OK;
}

/* ARCH.attention.sliding_window_pattern, when present: a period (llama.cpp's
 * rule: layer L slides iff L % n < n - 1, ours with period n) or one bool
 * per layer, which must follow the family's period. */
static pb_status gguf_sliding_pattern(pb_model_config *c, const pb_gguf *g, const char *path, const char *a) {
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", a);
    if (!pb_gguf_has_key(g, key))
        return PB_OK;
    pb_gguf_value_type type;
    uint64_t count;
    pb_error_saved saved;
    pb_error_save(&saved);
    if (pb_gguf_get_array_info(g, key, &type, &count) != PB_OK) {
        pb_error_restore(&saved);
        return gguf_count(g, path, key, &c->sliding_period);
    }
    const uint8_t *flags;
    if (type != PB_GGUF_BOOL || count != (uint64_t)c->n_layers)
        return pb_fail(PB_ERR_FORMAT, "%s: %s must be %d bools (one per layer), is %llu of type %s", path, key,
                       c->n_layers, (unsigned long long)count, pb_gguf_value_type_name(type));
    PB_TRY(pb_gguf_get_array_data(g, key, (const void **)&flags));
    for (int l = 0; l < c->n_layers; l++)
        if ((flags[l] != 0) != pb_layer_is_sliding(c, l))
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "%s: %s: layer %d is %s, but %s models have layer L global iff (L + 1) %% %d == 0; "
                           "other patterns are not supported",
                           path, key, l, flags[l] ? "sliding" : "global", a, c->sliding_period);
    return PB_OK;
}

/* The block's shape beyond Llama: norms, positions, MLP, biases, parallel
 * sublayers (ARCH.use_parallel_residual, the family's default when absent). */
static pb_status gguf_blocks(pb_model_config *c, const pb_gguf *g, const char *path, const pb_arch *arch) {
    c->norm = arch->norm;
    c->position = arch->position;
    c->plain_mlp = arch->plain_mlp;
    c->has_dense_bias = arch->dense_bias;
    c->no_pre_norm = arch->no_pre_norm;
    c->qk_norm_full = arch->qk_norm_full;
    c->parallel_block = arch->parallel_default;
    char key[128];
    snprintf(key, sizeof key, "%s.use_parallel_residual", arch->name);
    if (pb_gguf_has_key(g, key)) {
        pb_status status = pb_gguf_get_bool(g, key, &c->parallel_block);
        if (status != PB_OK)
            return pb_fail_context(status, "%s", path);
        c->parallel_block = c->parallel_block != 0;
    }
    return PB_OK;
}

/* ARCH.attention.sliding_window for a family whose every layer slides
 * (phi3): llama.cpp's converter writes 0 for none. */
static pb_status gguf_window_all(pb_model_config *c, const pb_gguf *g, const char *path, const char *a) {
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window", a);
    if (!pb_gguf_has_key(g, key))
        return PB_OK;
    PB_TRY(gguf_count(g, path, key, &c->sliding_window));
    c->sliding_period = 0; /* every layer */
    return PB_OK;
}

/* The architecture beyond Llama: the family's traits, and the keys
 * llama.cpp's converter writes for it, with llama.cpp's values where the
 * file has none (model/arch.c). */
static pb_status gguf_family(pb_model_config *c, const pb_gguf *g, const char *path, const pb_arch *arch) {
    const char *a = arch->name;
    c->activation = arch->activation;
    c->qk_norm = arch->qk_norm;
    c->sandwich_norm = arch->sandwich_norm;
    PB_TRY(gguf_blocks(c, g, path, arch));
    if (arch->embed_scaled)
        c->embed_scale = (float)sqrt((double)c->d_model); /* as torch: computed in double, rounded to fp32 */
    if (arch->query_pre_attn_scalar > 0) {
        /* llama.cpp: the 27B scales by (d_model / n_heads)^-1/2, every other size by head_dim^-1/2 */
        int scalar = c->n_layers == arch->gguf_large_layers ? c->d_model / c->n_heads : c->head_dim;
        c->attn_scale = (float)pow((double)scalar, -0.5);
    }
    if (arch->softcaps) {
        PB_TRY(gguf_float(g, a, "attn_logit_softcapping", &c->attn_softcap, 0, arch->attn_softcap_default));
        PB_TRY(gguf_float(g, a, "final_logit_softcapping", &c->final_softcap, 0, arch->final_softcap_default));
        if (!(c->attn_softcap >= 0.0f) || !(c->final_softcap >= 0.0f) || !isfinite(c->attn_softcap) ||
            !isfinite(c->final_softcap))
            return pb_fail(PB_ERR_FORMAT,
                           "%s: %s.attn_logit_softcapping = %g / final_logit_softcapping = %g must "
                           "be finite and not negative",
                           path, a, (double)c->attn_softcap, (double)c->final_softcap);
    }
    if (arch->window == PB_WINDOW_ALL)
        return gguf_window_all(c, g, path, a);
    char key[128];
    snprintf(key, sizeof key, "%s.attention.sliding_window_pattern", a);
    if (arch->window == PB_WINDOW_NONE && pb_gguf_has_key(g, key))
        /* llama.cpp's converter writes OLMo-3 as olmo2 with sliding layers */
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: %s: sliding-window layers (OLMo-3 written as %s) are not supported; %s runs full causal "
                       "attention",
                       path, key, a, a);
    if (arch->window != PB_WINDOW_PATTERN)
        return PB_OK;
    snprintf(key, sizeof key, "%s.attention.sliding_window", a);
    if (pb_gguf_has_key(g, key) || arch->gguf_window_default > 0)
        PB_TRY(gguf_int(g, a, "attention.sliding_window", &c->sliding_window, 0, arch->gguf_window_default));
    if (c->sliding_window <= 0)
        return PB_OK;
    c->sliding_period = arch->sliding_period;
    PB_TRY(gguf_sliding_pattern(c, g, path, a));
    return gguf_float(g, a, "rope.freq_base_swa", &c->rope_theta_local, 0, arch->rope_theta_local);
}

static pb_status config_from_gguf(pb_model_config *c, const pb_gguf *g, const char *path) {
    memset(c, 0, sizeof *c);
    const char *name;
    size_t name_len;
    PB_TRY(pb_gguf_get_string(g, "general.architecture", &name, &name_len));
    if (name_len >= sizeof c->arch)
        name_len = sizeof c->arch - 1;
    memcpy(c->arch, name, name_len);
    const pb_arch *arch = pb_arch_find(c->arch);
    if (!arch)
        return pb_arch_refuse(path, c->arch);
    const char *a = c->arch;
    PB_TRY(gguf_int(g, a, "block_count", &c->n_layers, 1, 0));
    PB_TRY(check_block_count(g, path, a, c->n_layers));
    PB_TRY(gguf_int(g, a, "embedding_length", &c->d_model, 1, 0));
    PB_TRY(gguf_int(g, a, "feed_forward_length", &c->d_mlp, 1, 0));
    PB_TRY(gguf_int(g, a, "attention.head_count", &c->n_heads, 1, 0));
    PB_TRY(gguf_int(g, a, "attention.head_count_kv", &c->n_kv_heads, 0, c->n_heads));
    PB_TRY(gguf_int(g, a, "context_length", &c->context_length, 1, 0));
    PB_TRY(gguf_head_dim(c, g, path, arch));
    int value_length = 0;
    PB_TRY(gguf_int(g, a, "attention.value_length", &value_length, 0, c->head_dim));
    if (value_length != c->head_dim)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: value_length %d differs from key_length %d", path, value_length,
                       c->head_dim);
    /* LayerNorm families store their epsilon under another key */
    PB_TRY(gguf_float(g, a,
                      arch->norm == PB_NORM_LAYER ? "attention.layer_norm_epsilon" : "attention.layer_norm_rms_epsilon",
                      &c->rms_eps, 1, 0));
    PB_TRY(gguf_float(g, a, "rope.freq_base", &c->rope_theta, 0, 10000.0f));
    PB_TRY(gguf_rope_scaling(c, g, path, a));
    PB_TRY(gguf_longrope(c, g, path, a));
    int n_tokens = 0;
    if (pb_gguf_has_key(g, "tokenizer.ggml.tokens")) {
        pb_gguf_value_type type;
        uint64_t count;
        PB_TRY(pb_gguf_get_array_info(g, "tokenizer.ggml.tokens", &type, &count));
        n_tokens = count > INT32_MAX ? 0 : (int)count;
    }
    const pb_gguf_tensor *embd = pb_gguf_find_tensor(g, "token_embd.weight");
    int embd_rows = embd && embd->n_dims == 2 && embd->ne[1] <= INT32_MAX ? (int)embd->ne[1] : 0;
    PB_TRY(gguf_int(g, a, "vocab_size", &c->vocab_size, 0, n_tokens ? n_tokens : embd_rows));
    c->has_qkv_bias = pb_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL ||
                      pb_gguf_find_tensor(g, "blk.0.attn_qkv.bias") != NULL;
    c->tied_embeddings = pb_gguf_find_tensor(g, "output.weight") == NULL;
    PB_TRY(gguf_token_id(g, path, "bos_token_id", c->vocab_size, &c->bos_id));
    PB_TRY(gguf_token_id(g, path, "eos_token_id", c->vocab_size, &c->eos_id));
    return gguf_family(c, g, path, arch);
}

/* llama.cpp's converter reorders each Q/K head's rows so that rotation pairs
 * are adjacent (interleaved RoPE). Put them back in Hugging Face's
 * rotate-half order so hook_q/hook_k match transformers. GGUF row
 * h*hd + 2i + j holds Hugging Face row h*hd + j*hd/2 + i. data (n_heads *
 * head_dim, cols). */
/* Moves each head's rows between llama.cpp's interleaved order and Hugging
 * Face's: row r of a head in the file is row (r % 2) * head_dim / 2 + r / 2
 * of Hugging Face's. */
static pb_status reorder_heads(float *data, int n_heads, int head_dim, int64_t cols, int to_hf) {
    size_t head_floats = (size_t)head_dim * (size_t)cols;
    float *tmp = malloc(sizeof(float) * head_floats);
    if (!tmp)
        return pb_fail(PB_ERR_OOM, "out of memory reordering Q/K heads");
    for (int h = 0; h < n_heads; h++) {
        float *head = data + (size_t)h * head_floats;
        memcpy(tmp, head, sizeof(float) * head_floats);
        for (int r = 0; r < head_dim; r++) {
            size_t file_row = (size_t)r, hf_row = (size_t)((r % 2) * (head_dim / 2) + r / 2);
            size_t to = to_hf ? hf_row : file_row, from = to_hf ? file_row : hf_row;
            memcpy(head + to * (size_t)cols, tmp + from * (size_t)cols, sizeof(float) * (size_t)cols);
        }
    }
    free(tmp);
    return PB_OK;
}

pb_status pb_gguf_unpermute_heads(float *data, int n_heads, int head_dim, int64_t cols) {
    return reorder_heads(data, n_heads, head_dim, cols, 1);
}

pb_status pb_gguf_permute_heads(float *data, int n_heads, int head_dim, int64_t cols) {
    return reorder_heads(data, n_heads, head_dim, cols, 0);
}

/* ---- tensors ------------------------------------------------------------ */

/* Heads whose rows llama.cpp interleaved in tensor `name`, or 0. */
static int permuted_heads(const gguf_source *s, const char *name) {
    int layer, consumed = 0;
    if (!s->permuted_qk || sscanf(name, "blk.%d.%n", &layer, &consumed) != 1 || consumed == 0)
        return 0;
    const char *suffix = name + consumed;
    if (strcmp(suffix, "attn_q.weight") == 0 || strcmp(suffix, "attn_q.bias") == 0)
        return s->base.cfg.n_heads;
    if (strcmp(suffix, "attn_k.weight") == 0 || strcmp(suffix, "attn_k.bias") == 0)
        return s->base.cfg.n_kv_heads;
    return 0;
}

/* Where llama.cpp's converter fused a canonical tensor: Q, K and V (and
 * their biases) in blk.L.attn_qkv as rows [Q; K; V] (gpt2, gptneox, phi3),
 * gate and up in blk.L.ffn_up as rows [gate; up] (phi3: 2 * d_mlp rows,
 * no ffn_gate). The fused tensor's name into fused; 0 when none. */
static int gguf_fused_name(const gguf_source *s, const char *name, char *fused, size_t size, pb_fused_split *split,
                           int *part) {
    static const struct {
        const char *suffix, *fused;
        pb_fused_split split;
        int part;
    } parts[] = {
        {"attn_q.weight", "attn_qkv.weight", PB_SPLIT_QKV, 0},
        {"attn_k.weight", "attn_qkv.weight", PB_SPLIT_QKV, 1},
        {"attn_v.weight", "attn_qkv.weight", PB_SPLIT_QKV, 2},
        {"attn_q.bias", "attn_qkv.bias", PB_SPLIT_QKV, 0},
        {"attn_k.bias", "attn_qkv.bias", PB_SPLIT_QKV, 1},
        {"attn_v.bias", "attn_qkv.bias", PB_SPLIT_QKV, 2},
        {"ffn_gate.weight", "ffn_up.weight", PB_SPLIT_HALVES, 0},
        {"ffn_up.weight", "ffn_up.weight", PB_SPLIT_HALVES, 1},
    };
    int layer, consumed = 0;
    if (sscanf(name, "blk.%d.%n", &layer, &consumed) != 1 || consumed == 0)
        return 0;
    for (size_t i = 0; i < sizeof parts / sizeof parts[0]; i++) {
        if (strcmp(name + consumed, parts[i].suffix) != 0)
            continue;
        if (parts[i].split == PB_SPLIT_HALVES) {
            /* only a gated MLP without ffn_gate keeps both halves in ffn_up */
            char gate[96];
            snprintf(gate, sizeof gate, "blk.%d.ffn_gate.weight", layer);
            if (s->base.cfg.plain_mlp || pb_gguf_find_tensor(s->gguf, gate))
                return 0;
        }
        snprintf(fused, size, "blk.%d.%s", layer, parts[i].fused);
        *split = parts[i].split;
        *part = parts[i].part;
        return 1;
    }
    return 0;
}

static pb_status gguf_find(const pb_weight_source *src, const char *name, pb_tensor_info *info, int *found) {
    const gguf_source *s = (const gguf_source *)src;
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", name);
    snprintf(info->file_name, sizeof info->file_name, "%s", name);
    info->index = -1;
    char fused[96];
    pb_fused_split split = PB_SPLIT_NONE;
    int part = 0;
    /* the canonical tensor itself unless only its fused one is there */
    const pb_gguf_tensor *t = NULL;
    if (gguf_fused_name(s, name, fused, sizeof fused, &split, &part) &&
        (split == PB_SPLIT_HALVES || !pb_gguf_find_tensor(s->gguf, name)))
        t = pb_gguf_find_tensor(s->gguf, fused);
    if (t) {
        snprintf(info->file_name, sizeof info->file_name, "%s", fused);
    } else {
        t = pb_gguf_find_tensor(s->gguf, name);
        split = PB_SPLIT_NONE;
    }
    *found = t != NULL;
    if (!t)
        return PB_OK;
    info->n_dims = (int)t->n_dims;
    for (int i = 0; i < 4; i++)
        info->shape[i] = i < info->n_dims ? t->ne[info->n_dims - 1 - i] : 1; /* ggml lists the contiguous dim first */
    info->type = t->type;
    info->n_elements = t->n_elements;
    info->n_bytes = t->n_bytes;
    info->permuted_heads = permuted_heads(s, name);
    info->handle = t;
    return split == PB_SPLIT_NONE ? PB_OK : pb_tensor_part_set(&src->cfg, src->path, info, split, part, 0);
}

static pb_status gguf_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out) {
    const pb_gguf_tensor *t = info->handle;
    if (pb_tensor_is_view(info)) {
        float *whole = malloc(sizeof(float) * (size_t)t->n_elements);
        if (!whole)
            return pb_fail(PB_ERR_OOM, "%s: out of memory reading fused tensor '%s'", src->path, info->file_name);
        pb_status status = pb_dequantize(whole, t->data, t->type, t->n_elements);
        if (status == PB_OK)
            pb_tensor_part_extract(info, whole, out);
        free(whole);
        return status == PB_OK ? PB_OK : pb_fail_context(status, "%s: tensor '%s'", src->path, info->file_name);
    }
    pb_status status = pb_dequantize(out, t->data, t->type, t->n_elements);
    if (status != PB_OK)
        return pb_fail_context(status, "%s: tensor '%s'", src->path, info->file_name);
    if (info->permuted_heads)
        return pb_gguf_unpermute_heads(out, info->permuted_heads, (int)(info->shape[0] / info->permuted_heads),
                                       info->n_dims == 2 ? info->shape[1] : 1);
    return PB_OK;
}

static pb_status gguf_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data,
                          uint64_t *n_bytes) {
    const pb_gguf_tensor *t = info->handle;
    *data = t->data;
    *n_bytes = t->n_bytes;
    return PB_OK;
}

static void gguf_free(pb_weight_source *src) {
    pb_gguf_close(((gguf_source *)src)->gguf);
    pb_weight_source_release(src);
}

static const pb_weight_source_ops gguf_ops = {gguf_find, gguf_read_f32, gguf_raw, gguf_free};

pb_status pb_gguf_source_open(pb_weight_source **out, const char *path) {
    gguf_source *s = pb_weight_source_alloc(out, sizeof *s, &gguf_ops, path);
    if (!s)
        return PB_ERR_OOM;
    pb_status status = pb_gguf_open(&s->gguf, path);
    if (status == PB_OK)
        status = config_from_gguf(&s->base.cfg, s->gguf, path);
    if (status == PB_OK && (status = pb_model_config_validate(&s->base.cfg)) != PB_OK)
        pb_fail_context(status, "%s", path);
    if (status != PB_OK) {
        gguf_free(&s->base);
        return status;
    }
    s->base.gguf = s->gguf;
    s->permuted_qk = pb_arch_find(s->base.cfg.arch)->gguf_permuted_qk;
    *out = &s->base;
    return PB_OK;
}
