/* Loading a Llama-family model from GGUF or a Hugging Face checkpoint:
 * hyperparameters, shape checks for every tensor before any compute, and
 * dequantisation into one weight arena on the backend (matrices in the
 * chosen storage dtype, vectors in fp32). Synthetic models (model_random.c)
 * go through the same path with a generator as their source. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/dtype.h"
#include "formats/gguf.h"
#include "formats/hf_config.h"
#include "util/internal.h"
#include "model/model.h"
#include "model/model_random.h"
#include "text/model_text.h"
#include "patching/noise.h"
#include "formats/quant.h"
#include "formats/safetensors.h"

/* ---- hyperparameters -------------------------------------------------- */

pb_status pb_model_config_validate(const pb_model_config *c) {
    struct { const char *name; int value; } sizes[] = {
        {"n_layers", c->n_layers}, {"d_model", c->d_model}, {"n_heads", c->n_heads},
        {"n_kv_heads", c->n_kv_heads}, {"head_dim", c->head_dim}, {"d_mlp", c->d_mlp},
        {"vocab_size", c->vocab_size}, {"context_length", c->context_length},
    };
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        if (sizes[i].value <= 0)
            return pb_fail(PB_ERR_FORMAT, "model config: %s = %d must be positive", sizes[i].name, sizes[i].value);
    if (c->n_heads % c->n_kv_heads != 0)
        return pb_fail(PB_ERR_FORMAT, "model config: n_heads = %d is not a multiple of n_kv_heads = %d", c->n_heads,
                       c->n_kv_heads);
    if (c->head_dim % 2 != 0 || c->head_dim > 1024)
        return pb_fail(PB_ERR_FORMAT, "model config: head_dim = %d must be even and at most 1024", c->head_dim);
    if (!(c->rms_eps > 0.0f) || !isfinite(c->rms_eps))
        return pb_fail(PB_ERR_FORMAT, "model config: rms_eps = %g must be positive", (double)c->rms_eps);
    if (!(c->rope_theta > 0.0f) || !isfinite(c->rope_theta))
        return pb_fail(PB_ERR_FORMAT, "model config: rope_theta = %g must be positive", (double)c->rope_theta);
    if (c->rope_scaling != PB_ROPE_SCALING_NONE && !(c->rope_factor > 0.0f))
        return pb_fail(PB_ERR_FORMAT, "model config: rope scaling factor = %g must be positive",
                       (double)c->rope_factor);
    if (c->rope_scaling == PB_ROPE_SCALING_LLAMA3 &&
        (!(c->rope_high_freq_factor > c->rope_low_freq_factor) || c->rope_original_context <= 0))
        return pb_fail(PB_ERR_FORMAT,
                       "model config: llama3 rope scaling needs high_freq_factor (%g) > low_freq_factor (%g) "
                       "and original_max_position_embeddings (%d) > 0",
                       (double)c->rope_high_freq_factor, (double)c->rope_low_freq_factor, c->rope_original_context);
    return PB_OK;
}

void pb_rope_inv_freq(const pb_model_config *c, float *out) {
    int half = c->head_dim / 2;
    for (int i = 0; i < half; i++) {
        /* fp32 like transformers: 1 / base^(2i / dim). */
        float exponent = (float)(2 * i) / (float)c->head_dim;
        float inv = 1.0f / powf(c->rope_theta, exponent);
        if (c->rope_scaling == PB_ROPE_SCALING_LINEAR) {
            inv /= c->rope_factor;
        } else if (c->rope_scaling == PB_ROPE_SCALING_LLAMA3) {
            /* Llama 3.1: long wavelengths are slowed by `factor`, short ones
             * kept, and the band between interpolated smoothly. */
            float low_wavelen = (float)c->rope_original_context / c->rope_low_freq_factor;
            float high_wavelen = (float)c->rope_original_context / c->rope_high_freq_factor;
            float wavelen = 2.0f * 3.14159265358979323846f / inv;
            if (wavelen > low_wavelen) {
                inv = inv / c->rope_factor;
            } else if (wavelen >= high_wavelen) {
                float smooth = ((float)c->rope_original_context / wavelen - c->rope_low_freq_factor) /
                               (c->rope_high_freq_factor - c->rope_low_freq_factor);
                inv = (1.0f - smooth) * inv / c->rope_factor + smooth * inv;
            }
        }
        out[i] = inv;
    }
}

/* ---- weight sources --------------------------------------------------- */

/* One logical tensor the model needs, with its row-major shape. */
typedef struct wanted_tensor {
    char gguf_name[96];
    char hf_name[128];
    int n_dims;
    int64_t shape[2]; /* (rows, cols) or (n) */
    void **matrix_dst;  /* matrices: stored as the model's wdtype */
    float **vector_dst; /* vectors: stored as fp32 */
    int optional;     /* biases */
    int unpermute_heads; /* GGUF llama Q/K: number of heads to un-permute, else 0 */
    int fused_with_next; /* the next tensor continues this one's rows (w_qkv, w_gate_up): no padding between */
} wanted_tensor;

typedef struct source {
    pb_gguf *gguf;
    pb_safetensors *st;
    const char *path;
    int random;    /* no file: pb_random_fill with this seed */
    uint64_t seed;
} source;

/* Finds a wanted tensor and checks its shape; *found = 0 if absent. */
static pb_status source_check(const source *src, const wanted_tensor *w, int *found) {
    int64_t shape[4] = {1, 1, 1, 1};
    int n_dims;
    const char *name;
    if (src->random) {
        *found = 1;
        return PB_OK;
    }
    if (src->gguf) {
        name = w->gguf_name;
        const pb_gguf_tensor *t = pb_gguf_find_tensor(src->gguf, name);
        *found = t != NULL;
        if (!t)
            return PB_OK;
        if (!pb_ggml_type_dequantizable(t->type))
            return pb_fail(PB_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which patchbay cannot dequantise",
                           src->path, name, pb_ggml_type_name(t->type));
        n_dims = (int)t->n_dims;
        for (int i = 0; i < n_dims; i++)
            shape[i] = t->ne[n_dims - 1 - i]; /* ggml lists the contiguous dim first */
    } else {
        name = w->hf_name;
        const pb_st_tensor *t = pb_safetensors_find(src->st, name);
        *found = t != NULL;
        if (!t)
            return PB_OK;
        n_dims = t->n_dims;
        for (int i = 0; i < n_dims; i++)
            shape[i] = t->shape[i];
    }
    int ok = n_dims == w->n_dims;
    for (int i = 0; ok && i < n_dims; i++)
        ok = shape[i] == w->shape[i];
    if (!ok) {
        char got[96], want[96];
        if (n_dims == 1) snprintf(got, sizeof got, "(%lld)", (long long)shape[0]);
        else snprintf(got, sizeof got, "(%lld, %lld%s)", (long long)shape[0], (long long)shape[1], n_dims > 2 ? ", ..." : "");
        if (w->n_dims == 1) snprintf(want, sizeof want, "(%lld)", (long long)w->shape[0]);
        else snprintf(want, sizeof want, "(%lld, %lld)", (long long)w->shape[0], (long long)w->shape[1]);
        return pb_fail(PB_ERR_FORMAT, "%s: tensor '%s' has shape %s (%d dims) but the hyperparameters need %s",
                       src->path, name, got, n_dims, want);
    }
    return PB_OK;
}

/* Dequantises (or generates) tensor number `index` to fp32 into host memory
 * `out`. */
static pb_status source_read(const source *src, const wanted_tensor *w, int index, float *out) {
    if (src->random) {
        const char *name = w->gguf_name;
        size_t len = strlen(name);
        pb_random_kind kind = w->n_dims == 2 ? PB_RANDOM_MATRIX
                              : len >= 5 && strcmp(name + len - 5, ".bias") == 0 ? PB_RANDOM_BIAS
                                                                                 : PB_RANDOM_NORM;
        pb_random_fill(out, (size_t)(w->shape[0] * (w->n_dims == 2 ? w->shape[1] : 1)), src->seed, index, kind);
    } else if (src->gguf) {
        const pb_gguf_tensor *t = pb_gguf_find_tensor(src->gguf, w->gguf_name);
        pb_status status = pb_dequantize(out, t->data, t->type, t->n_elements);
        if (status != PB_OK)
            return pb_fail_context(status, "%s: tensor '%s'", src->path, w->gguf_name);
    } else {
        pb_st_tensor_to_f32(pb_safetensors_find(src->st, w->hf_name), out);
    }
    return PB_OK;
}

/* llama.cpp's converter reorders each Q/K head's rows so that rotation pairs
 * are adjacent (interleaved RoPE). Put them back in Hugging Face's
 * rotate-half order so hook_q/hook_k match transformers. GGUF row
 * h*hd + 2i + j holds Hugging Face row h*hd + j*hd/2 + i. */
static pb_status unpermute_heads(float *data, int n_heads, int head_dim, int64_t cols) {
    size_t head_floats = (size_t)head_dim * (size_t)cols;
    float *tmp = malloc(sizeof(float) * head_floats);
    if (!tmp)
        return pb_fail(PB_ERR_OOM, "out of memory un-permuting Q/K heads");
    for (int h = 0; h < n_heads; h++) {
        float *head = data + (size_t)h * head_floats;
        memcpy(tmp, head, sizeof(float) * head_floats);
        for (int r = 0; r < head_dim; r++) {
            int i = r / 2, j = r % 2;
            int hf_row = j * (head_dim / 2) + i;
            memcpy(head + (size_t)hf_row * (size_t)cols, tmp + (size_t)r * (size_t)cols, sizeof(float) * (size_t)cols);
        }
    }
    free(tmp);
    return PB_OK;
}

/* ---- hyperparameters from GGUF metadata --------------------------------- */

static pb_status gguf_int(const pb_gguf *g, const char *arch, const char *suffix, int *out, int required, int fallback) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!pb_gguf_has_key(g, key)) {
        if (required)
            return pb_fail(PB_ERR_FORMAT, "gguf: missing hyperparameter '%s'", key);
        *out = fallback;
        return PB_OK;
    }
    int64_t value;
    PB_TRY(pb_gguf_get_int(g, key, &value));
    if (value <= 0 || value > INT32_MAX)
        return pb_fail(PB_ERR_FORMAT, "gguf: hyperparameter '%s' = %lld is out of range", key, (long long)value);
    *out = (int)value;
    return PB_OK;
}

static pb_status gguf_float(const pb_gguf *g, const char *arch, const char *suffix, float *out, int required,
                            float fallback) {
    char key[128];
    snprintf(key, sizeof key, "%s.%s", arch, suffix);
    if (!pb_gguf_has_key(g, key)) {
        if (required)
            return pb_fail(PB_ERR_FORMAT, "gguf: missing hyperparameter '%s'", key);
        *out = fallback;
        return PB_OK;
    }
    double value;
    PB_TRY(pb_gguf_get_float(g, key, &value));
    *out = (float)value;
    return PB_OK;
}

static pb_status config_from_gguf(pb_model_config *c, const pb_gguf *g, const char *path) {
    memset(c, 0, sizeof *c);
    const char *arch;
    size_t arch_len;
    PB_TRY(pb_gguf_get_string(g, "general.architecture", &arch, &arch_len));
    if (arch_len >= sizeof c->arch)
        arch_len = sizeof c->arch - 1;
    memcpy(c->arch, arch, arch_len);
    if (strcmp(c->arch, "llama") != 0 && strcmp(c->arch, "qwen2") != 0 && strcmp(c->arch, "mistral") != 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: architecture '%s' is not supported (llama, mistral, qwen2 are)", path,
                       c->arch);
    const char *a = c->arch;
    PB_TRY(gguf_int(g, a, "block_count", &c->n_layers, 1, 0));
    PB_TRY(gguf_int(g, a, "embedding_length", &c->d_model, 1, 0));
    PB_TRY(gguf_int(g, a, "feed_forward_length", &c->d_mlp, 1, 0));
    PB_TRY(gguf_int(g, a, "attention.head_count", &c->n_heads, 1, 0));
    PB_TRY(gguf_int(g, a, "attention.head_count_kv", &c->n_kv_heads, 0, c->n_heads));
    PB_TRY(gguf_int(g, a, "context_length", &c->context_length, 1, 0));
    int default_head_dim = c->d_model / c->n_heads;
    PB_TRY(gguf_int(g, a, "rope.dimension_count", &c->head_dim, 0, default_head_dim));
    PB_TRY(gguf_int(g, a, "attention.key_length", &c->head_dim, 0, c->head_dim));
    int value_length = 0;
    PB_TRY(gguf_int(g, a, "attention.value_length", &value_length, 0, c->head_dim));
    if (value_length != c->head_dim)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: value_length %d differs from key_length %d", path, value_length,
                       c->head_dim);
    PB_TRY(gguf_float(g, a, "attention.layer_norm_rms_epsilon", &c->rms_eps, 1, 0));
    PB_TRY(gguf_float(g, a, "rope.freq_base", &c->rope_theta, 0, 10000.0f));
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
    c->has_qkv_bias = pb_gguf_find_tensor(g, "blk.0.attn_q.bias") != NULL;
    c->tied_embeddings = pb_gguf_find_tensor(g, "output.weight") == NULL;
    c->bos_id = c->eos_id = -1;
    int64_t id;
    if (pb_gguf_has_key(g, "tokenizer.ggml.bos_token_id") &&
        pb_gguf_get_int(g, "tokenizer.ggml.bos_token_id", &id) == PB_OK && id >= 0 && id < c->vocab_size)
        c->bos_id = (int)id;
    if (pb_gguf_has_key(g, "tokenizer.ggml.eos_token_id") &&
        pb_gguf_get_int(g, "tokenizer.ggml.eos_token_id", &id) == PB_OK && id >= 0 && id < c->vocab_size)
        c->eos_id = (int)id;
    return PB_OK;
}

/* ---- the list of tensors ---------------------------------------------- */

static void want_named(wanted_tensor *w, const char *gguf_name, const char *hf_name, int64_t rows, int64_t cols) {
    memset(w, 0, sizeof *w);
    snprintf(w->gguf_name, sizeof w->gguf_name, "%s", gguf_name);
    snprintf(w->hf_name, sizeof w->hf_name, "%s", hf_name);
    w->n_dims = cols ? 2 : 1;
    w->shape[0] = rows;
    w->shape[1] = cols;
}

static void want_matrix(wanted_tensor *w, const char *gguf_name, const char *hf_name, int64_t rows, int64_t cols,
                        void **dst) {
    want_named(w, gguf_name, hf_name, rows, cols);
    w->matrix_dst = dst;
}

static void want_vector(wanted_tensor *w, const char *gguf_name, const char *hf_name, int64_t rows, int64_t cols,
                        float **dst) {
    want_named(w, gguf_name, hf_name, rows, cols);
    w->vector_dst = dst;
}

/* Matrix fields are void *, vector fields float *: the field's type picks. */
#define want(w, g, h, rows, cols, dst) \
    _Generic((dst), void **: want_matrix, float **: want_vector)(w, g, h, rows, cols, dst)

/* Fills `list` (capacity 4 + 12 * n_layers) and returns the count. */
static int wanted_list(pb_model *m, wanted_tensor *list, int permuted_qk) {
    const pb_model_config *c = &m->cfg;
    int64_t d = c->d_model, q_rows = (int64_t)c->n_heads * c->head_dim, kv_rows = (int64_t)c->n_kv_heads * c->head_dim;
    int n = 0;
    want(&list[n++], "token_embd.weight", "model.embed_tokens.weight", c->vocab_size, d, &m->token_embd);
    want(&list[n++], "output_norm.weight", "model.norm.weight", d, 0, &m->final_norm);
    if (!c->tied_embeddings)
        want(&list[n++], "output.weight", "lm_head.weight", c->vocab_size, d, &m->output);
    for (int l = 0; l < c->n_layers; l++) {
        pb_layer_weights *L = &m->layers[l];
        char g[96], h[128];
#define WANT(gs, hs, rows, cols, field)                                   \
    do {                                                                  \
        snprintf(g, sizeof g, "blk.%d.%s", l, gs);                        \
        snprintf(h, sizeof h, "model.layers.%d.%s", l, hs);               \
        want(&list[n++], g, h, rows, cols, &L->field);                    \
    } while (0)
        WANT("attn_norm.weight", "input_layernorm.weight", d, 0, attn_norm);
        WANT("attn_q.weight", "self_attn.q_proj.weight", q_rows, d, wq);
        if (permuted_qk) list[n - 1].unpermute_heads = c->n_heads;
        list[n - 1].fused_with_next = 1;
        WANT("attn_k.weight", "self_attn.k_proj.weight", kv_rows, d, wk);
        if (permuted_qk) list[n - 1].unpermute_heads = c->n_kv_heads;
        list[n - 1].fused_with_next = 1;
        WANT("attn_v.weight", "self_attn.v_proj.weight", kv_rows, d, wv);
        if (c->has_qkv_bias) {
            WANT("attn_q.bias", "self_attn.q_proj.bias", q_rows, 0, bq);
            if (permuted_qk) list[n - 1].unpermute_heads = c->n_heads;
            list[n - 1].fused_with_next = 1;
            WANT("attn_k.bias", "self_attn.k_proj.bias", kv_rows, 0, bk);
            if (permuted_qk) list[n - 1].unpermute_heads = c->n_kv_heads;
            list[n - 1].fused_with_next = 1;
            WANT("attn_v.bias", "self_attn.v_proj.bias", kv_rows, 0, bv);
        }
        WANT("attn_output.weight", "self_attn.o_proj.weight", d, q_rows, wo);
        WANT("ffn_norm.weight", "post_attention_layernorm.weight", d, 0, mlp_norm);
        WANT("ffn_gate.weight", "mlp.gate_proj.weight", c->d_mlp, d, w_gate);
        list[n - 1].fused_with_next = 1;
        WANT("ffn_up.weight", "mlp.up_proj.weight", c->d_mlp, d, w_up);
        WANT("ffn_down.weight", "mlp.down_proj.weight", d, c->d_mlp, w_down);
#undef WANT
    }
    return n;
}

static uint64_t wanted_elements(const wanted_tensor *w) {
    return (uint64_t)w->shape[0] * (uint64_t)(w->n_dims == 2 ? w->shape[1] : 1);
}

/* ---- loading ----------------------------------------------------------- */

static int is_directory(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Index of the first non-finite element of x (n), or n. Threaded: a
 * 70B-shape tensor has billions of elements. */
static uint64_t first_non_finite(const float *x, uint64_t n) {
    uint64_t first = n;
#pragma omp parallel for reduction(min : first) schedule(static) if (n > 65536)
    for (uint64_t j = 0; j < n; j++)
        if (!isfinite(x[j]) && j < first)
            first = j;
    return first;
}

/* Index of the first fp16 Inf in h (n), or n. */
static uint64_t first_f16_overflow(const uint16_t *h, uint64_t n) {
    uint64_t first = n;
#pragma omp parallel for reduction(min : first) schedule(static) if (n > 65536)
    for (uint64_t j = 0; j < n; j++)
        if ((h[j] & 0x7c00u) == 0x7c00u && j < first)
            first = j;
    return first;
}

/* pb_dtype_from_f32 over threads, in chunks (the result is the same). */
static void convert_parallel(pb_dtype dtype, void *dst, const float *src, uint64_t n) {
    const uint64_t chunk = 1u << 20;
    int64_t n_chunks = (int64_t)((n + chunk - 1) / chunk);
    size_t elem = pb_dtype_size(dtype);
#pragma omp parallel for schedule(static)
    for (int64_t c = 0; c < n_chunks; c++) {
        uint64_t lo = (uint64_t)c * chunk, len = n - lo < chunk ? n - lo : chunk;
        pb_dtype_from_f32(dtype, (char *)dst + lo * elem, src + lo, (size_t)len);
    }
}

/* Bytes tensor w takes in the arena, rounded up to 64 so every tensor
 * starts 64-byte aligned, except where the next tensor continues its rows
 * (a fused matrix): there, exactly its bytes. */
static uint64_t arena_slot(const pb_model *m, const wanted_tensor *w) {
    uint64_t elem = w->n_dims == 2 ? pb_dtype_size(m->wdtype) : sizeof(float);
    uint64_t bytes = wanted_elements(w) * elem;
    return w->fused_with_next ? bytes : (bytes + 63) / 64 * 64;
}

/* 1 when b starts where a's `bytes` end. */
static int adjacent(const void *a, size_t bytes, const void *b) {
    return a && b && (const char *)a + bytes == (const char *)b;
}

void pb_model_fuse_views(pb_model *m) {
    const pb_model_config *c = &m->cfg;
    size_t elem = pb_dtype_size(m->wdtype), d = (size_t)c->d_model;
    size_t q_rows = (size_t)c->n_heads * c->head_dim, kv_rows = (size_t)c->n_kv_heads * c->head_dim;
    for (int l = 0; l < c->n_layers; l++) {
        pb_layer_weights *L = &m->layers[l];
        int qkv = adjacent(L->wq, q_rows * d * elem, L->wk) && adjacent(L->wk, kv_rows * d * elem, L->wv);
        int no_bias = !L->bq && !L->bk && !L->bv;
        int fused_bias = adjacent(L->bq, q_rows * sizeof(float), L->bk) && adjacent(L->bk, kv_rows * sizeof(float), L->bv);
        L->w_qkv = qkv && (no_bias || fused_bias) ? L->wq : NULL;
        L->b_qkv = L->w_qkv && fused_bias ? L->bq : NULL;
        L->w_gate_up = adjacent(L->w_gate, (size_t)c->d_mlp * d * elem, L->w_up) ? L->w_gate : NULL;
    }
}

static pb_status load_weights(pb_model *m, const source *src, int permuted_qk) {
    const pb_model_config *c = &m->cfg;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return pb_fail(PB_ERR_OOM, "out of memory for %d layers", c->n_layers);
    int capacity = 4 + 12 * c->n_layers;
    wanted_tensor *list = calloc((size_t)capacity, sizeof *list);
    if (!list)
        return pb_fail(PB_ERR_OOM, "out of memory listing %d tensors", capacity);
    pb_status status = PB_OK;
    float *staging = NULL;
    void *converted = NULL;
    int n = wanted_list(m, list, permuted_qk);

    /* Pass 1: every tensor present with the right shape, before any compute. */
    uint64_t total = 0, largest = 0;
    for (int i = 0; i < n; i++) {
        int found;
        if ((status = source_check(src, &list[i], &found)) != PB_OK)
            goto done;
        if (!found) {
            status = pb_fail(PB_ERR_FORMAT, "%s: missing tensor '%s'", src->path,
                             src->gguf ? list[i].gguf_name : list[i].hf_name);
            goto done;
        }
        total += arena_slot(m, &list[i]);
        if (wanted_elements(&list[i]) > largest)
            largest = wanted_elements(&list[i]);
    }
    uint64_t half = (uint64_t)c->head_dim / 2;
    total += (half * sizeof(float) + 63) / 64 * 64;

    m->arena_bytes = (size_t)total;
    if ((status = m->backend->ops->alloc(m->backend, &m->arena, m->arena_bytes)) != PB_OK) {
        pb_fail_context(status, "allocating %.1f MiB of %s weights", (double)m->arena_bytes / (1 << 20),
                        pb_dtype_name(m->wdtype));
        goto done;
    }
    staging = malloc(sizeof(float) * (size_t)largest);
    if (m->wdtype != PB_DTYPE_F32)
        converted = malloc(pb_dtype_size(m->wdtype) * (size_t)largest);
    if (!staging || (m->wdtype != PB_DTYPE_F32 && !converted)) {
        status = pb_fail(PB_ERR_OOM, "out of memory for a %llu-element staging buffer", (unsigned long long)largest);
        goto done;
    }

    /* Pass 2: dequantise each tensor on the host, convert matrices to the
     * storage dtype, and place it in the arena. */
    char *cursor = m->arena;
    for (int i = 0; i < n; i++) {
        wanted_tensor *w = &list[i];
        const char *name = src->gguf || src->random ? w->gguf_name : w->hf_name;
        uint64_t count = wanted_elements(w);
        if ((status = source_read(src, w, i, staging)) != PB_OK)
            goto done;
        if (w->unpermute_heads &&
            (status = unpermute_heads(staging, w->unpermute_heads, c->head_dim, w->n_dims == 2 ? w->shape[1] : 1)) !=
                PB_OK)
            goto done;
        uint64_t bad = first_non_finite(staging, count);
        if (bad < count) {
            status = pb_fail(PB_ERR_NUMERIC, "%s: tensor '%s' holds a non-finite value (%g) at element %llu",
                             src->path, name, (double)staging[bad], (unsigned long long)bad);
            goto done;
        }
        const void *bytes = staging;
        size_t n_bytes = sizeof(float) * (size_t)count;
        if (w->n_dims == 2 && m->wdtype != PB_DTYPE_F32) {
            convert_parallel(m->wdtype, converted, staging, count);
            if (m->wdtype == PB_DTYPE_F16) {
                /* finite in fp32 (checked above) but not in fp16: overflow */
                uint64_t j = first_f16_overflow(converted, count);
                if (j < count) {
                    status = pb_fail(PB_ERR_NUMERIC,
                                     "%s: tensor '%s' element %llu = %g overflows f16 (max 65504); use bf16 or f32",
                                     src->path, name, (unsigned long long)j, (double)staging[j]);
                    goto done;
                }
            }
            bytes = converted;
            n_bytes = pb_dtype_size(m->wdtype) * (size_t)count;
        }
        if (w->matrix_dst == &m->token_embd) {
            /* the values as stored (16-bit ones widened back), which the
             * noise of a sweep scales by */
            if (bytes == converted)
                pb_dtype_to_f32(m->wdtype, staging, converted, (size_t)count);
            m->embed_sigma = pb_noise_sigma(staging, (size_t)count);
        }
        if ((status = m->backend->ops->upload(m->backend, cursor, bytes, n_bytes)) != PB_OK)
            goto done;
        if (w->matrix_dst)
            *w->matrix_dst = cursor;
        else
            *w->vector_dst = (float *)(void *)cursor;
        cursor += arena_slot(m, w);
    }
    if (c->tied_embeddings)
        m->output = m->token_embd;
    pb_model_fuse_views(m);

    /* RoPE frequencies: GGUF files of Llama 3.1-style models carry the
     * scaling as per-frequency divisors in rope_freqs.weight. */
    m->inv_freq_host = malloc(sizeof(float) * half);
    if (!m->inv_freq_host) {
        status = pb_fail(PB_ERR_OOM, "out of memory for RoPE frequencies");
        goto done;
    }
    pb_rope_inv_freq(c, m->inv_freq_host);
    const pb_gguf_tensor *freqs = src->gguf ? pb_gguf_find_tensor(src->gguf, "rope_freqs.weight") : NULL;
    if (freqs) {
        if (freqs->n_elements != half || freqs->type != PB_GGML_F32) {
            status = pb_fail(PB_ERR_FORMAT, "%s: tensor 'rope_freqs.weight' must be F32 with %llu elements, has %s with %llu",
                             src->path, (unsigned long long)half, pb_ggml_type_name(freqs->type),
                             (unsigned long long)freqs->n_elements);
            goto done;
        }
        pb_dequantize(staging, freqs->data, freqs->type, half);
        for (uint64_t i = 0; i < half; i++) {
            if (!(staging[i] > 0.0f) || !isfinite(staging[i])) {
                status = pb_fail(PB_ERR_FORMAT, "%s: 'rope_freqs.weight'[%llu] = %g is not a positive factor",
                                 src->path, (unsigned long long)i, (double)staging[i]);
                goto done;
            }
            m->inv_freq_host[i] /= staging[i];
        }
    }
    if ((status = m->backend->ops->upload(m->backend, cursor, m->inv_freq_host, sizeof(float) * half)) != PB_OK)
        goto done;
    m->inv_freq = (float *)(void *)cursor;
done:
    free(converted);
    free(staging);
    free(list);
    return status;
}

static pb_status model_load(pb_model *m, const char *path) {
    source src = {.path = path};
    pb_status status;
    if (is_directory(path)) {
        char file[4096];
        snprintf(file, sizeof file, "%s/config.json", path);
        if ((status = pb_hf_config_read(&m->cfg, file)) != PB_OK)
            return status;
        if ((status = pb_model_config_validate(&m->cfg)) != PB_OK)
            return pb_fail_context(status, "%s", file);
        if ((status = pb_safetensors_open(&src.st, path)) != PB_OK)
            return status;
        snprintf(file, sizeof file, "%s/tokenizer.json", path);
        struct stat st;
        if (stat(file, &st) == 0 && (status = pb_vocab_from_tokenizer_json(&m->vocab, file)) != PB_OK)
            goto done;
        status = load_weights(m, &src, 0);
        if (status == PB_OK)
            pb_model_text_from_folder(m, path);
    } else {
        if ((status = pb_gguf_open(&src.gguf, path)) != PB_OK)
            return status;
        if ((status = config_from_gguf(&m->cfg, src.gguf, path)) != PB_OK)
            goto done;
        if ((status = pb_model_config_validate(&m->cfg)) != PB_OK) {
            pb_fail_context(status, "%s", path);
            goto done;
        }
        if ((status = pb_vocab_from_gguf(&m->vocab, src.gguf)) != PB_OK)
            goto done;
        /* llama.cpp permutes Q/K for llama-architecture models only. */
        int permuted = strcmp(m->cfg.arch, "llama") == 0 || strcmp(m->cfg.arch, "mistral") == 0;
        status = load_weights(m, &src, permuted);
        if (status == PB_OK)
            pb_model_text_from_gguf(m, src.gguf);
    }
done:
    pb_gguf_close(src.gguf);
    pb_safetensors_close(src.st);
    return status;
}

const char *pb_backend_name(pb_backend_kind kind) {
    switch (kind) {
    case PB_BACKEND_CPU: return "cpu";
    case PB_BACKEND_REFERENCE: return "reference";
    case PB_BACKEND_CUDA: return "cuda";
    }
    return "unknown";
}

pb_status pb_backend_parse(const char *text, pb_backend_kind *out) {
    if (text && strcmp(text, "cpu") == 0)
        *out = PB_BACKEND_CPU;
    else if (text && (strcmp(text, "reference") == 0 || strcmp(text, "ref") == 0))
        *out = PB_BACKEND_REFERENCE;
    else if (text && (strcmp(text, "cuda") == 0 || strcmp(text, "gpu") == 0))
        *out = PB_BACKEND_CUDA;
    else
        return pb_fail(PB_ERR_ARG, "unknown backend '%s' (expected cpu, reference or cuda)", text ? text : "(null)");
    return PB_OK;
}

/* A model with its backend and storage dtype chosen, weights not loaded. */
static pb_status model_new(pb_model **out, const char *path, const pb_load_options *options) {
    *out = NULL;
    pb_model *m = calloc(1, sizeof *m);
    if (!m)
        return pb_fail(PB_ERR_OOM, "out of memory for a model");
    m->path = strdup(path);
    if (!m->path) {
        free(m);
        return pb_fail(PB_ERR_OOM, "out of memory for a model");
    }
    pb_backend_kind kind = options ? options->backend : PB_BACKEND_CPU;
    pb_dtype dtype = options ? options->dtype : PB_DTYPE_F32;
    m->backend_kind = kind;
    m->wdtype = dtype;
    pb_status status = PB_OK;
    if (dtype != PB_DTYPE_F32 && dtype != PB_DTYPE_BF16 && dtype != PB_DTYPE_F16)
        status = pb_fail(PB_ERR_ARG, "unknown weight dtype %d", (int)dtype);
    else if (kind == PB_BACKEND_REFERENCE)
        status = pb_backend_ref_create(&m->backend);
    else if (kind == PB_BACKEND_CUDA)
        status = pb_backend_cuda_create(&m->backend, options ? options->device : 0);
    else if (kind == PB_BACKEND_CPU)
        status = pb_backend_cpu_create(&m->backend, options ? options->n_threads : 0);
    else
        status = pb_fail(PB_ERR_ARG, "unknown backend %d", (int)kind);
    if (status != PB_OK) {
        pb_model_free(m);
        return status;
    }
    *out = m;
    return PB_OK;
}

pb_status pb_model_load(pb_model **out, const char *path, const pb_load_options *options) {
    if (!out || !path)
        return pb_fail(PB_ERR_ARG, "pb_model_load: out and path are required");
    pb_model *m = NULL;
    PB_TRY(model_new(&m, path, options));
    pb_status status = model_load(m, path);
    if (status != PB_OK) {
        pb_model_free(m);
        return status;
    }
    *out = m;
    return PB_OK;
}

pb_status pb_model_random(pb_model **out, const char *name, uint64_t seed, const pb_load_options *options) {
    if (!out || !name)
        return pb_fail(PB_ERR_ARG, "pb_model_random: out and name are required");
    *out = NULL;
    pb_model_config cfg;
    PB_TRY(pb_random_config(&cfg, name));
    char source_name[160];
    snprintf(source_name, sizeof source_name, "random:%.*s:%d:%llu", (int)strcspn(name, ":"), name, cfg.n_layers,
             (unsigned long long)seed);
    pb_model *m = NULL;
    PB_TRY(model_new(&m, source_name, options));
    m->cfg = cfg;
    source src = {.path = m->path, .random = 1, .seed = seed};
    pb_status status = pb_model_config_validate(&m->cfg);
    if (status == PB_OK)
        status = load_weights(m, &src, 0);
    if (status != PB_OK) {
        pb_model_free(m);
        return status;
    }
    snprintf(m->text_error, sizeof m->text_error, "%s has no tokenizer (a random model): give token ids", m->path);
    snprintf(m->chat_error, sizeof m->chat_error, "%s has no chat template (a random model): give token ids",
             m->path);
    *out = m;
    return PB_OK;
}

const char *pb_model_get_source(const pb_model *m) { return m->path; }

size_t pb_model_weight_bytes(const pb_model *m) { return m->arena_bytes; }

pb_status pb_model_weights_download(const pb_model *m, float *out, const void *src, size_t n) {
    if (m->wdtype == PB_DTYPE_F32)
        return m->backend->ops->download(m->backend, out, src, n * sizeof(float));
    uint16_t *raw = malloc(n * sizeof(uint16_t) + 1);
    if (!raw)
        return pb_fail(PB_ERR_OOM, "out of memory downloading %zu weights", n);
    pb_status status = m->backend->ops->download(m->backend, raw, src, n * sizeof(uint16_t));
    if (status == PB_OK)
        pb_dtype_to_f32(m->wdtype, out, raw, n);
    free(raw);
    return status;
}

void pb_model_free(pb_model *m) {
    if (!m)
        return;
    if (m->backend) {
        m->backend->ops->free(m->backend, m->arena);
        pb_backend_destroy(m->backend);
    }
    pb_model_text_free(m);
    free(m->layers);
    free(m->path);
    free(m->inv_freq_host);
    pb_vocab_free(&m->vocab);
    free(m);
}

const pb_model_config *pb_model_get_config(const pb_model *m) { return &m->cfg; }

pb_status pb_model_token_text(const pb_model *m, int id, char *buf, size_t buf_size) {
    if (id < 0 || id >= m->cfg.vocab_size)
        return pb_fail(PB_ERR_ARG, "token id %d is outside the vocabulary [0, %d)", id, m->cfg.vocab_size);
    if (buf_size == 0)
        return pb_fail(PB_ERR_ARG, "token text: empty buffer");
    if (id >= m->vocab.n_tokens) {
        snprintf(buf, buf_size, "<%d>", id);
        return PB_OK;
    }
    size_t len = m->vocab.offsets[id + 1] - m->vocab.offsets[id];
    if (len >= buf_size)
        len = buf_size - 1;
    memcpy(buf, m->vocab.bytes + m->vocab.offsets[id], len);
    buf[len] = 0;
    return PB_OK;
}
