/* A model of any family in model/arch.h from a weight source (weight_source.h: a GGUF file,
 * a Hugging Face folder or the random generator; this file knows no
 * format): hyperparameter checks, the canonical tensor list mapped to the
 * model's fields, shape checks for every tensor before any compute, and
 * placement in one weight arena on the backend (matrices in the chosen
 * storage dtype, vectors in fp32), plus the backend choice, RoPE
 * frequencies and the model's public getters. */
#define _POSIX_C_SOURCE 200809L
#include <assert.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/dtype.h"
#include "util/internal.h"
#include "model/adapter.h"
#include "model/model.h"
#include "model/stream.h"
#include "model/weight_source.h"
#include "text/model_text.h"
#include "patching/noise.h"

/* ---- hyperparameters -------------------------------------------------- */

/* The architecture fields: none negative or non-finite (0 is "off"). */
static pb_status pb_model_config_validate_arch(const pb_model_config *c) {
    struct {
        const char *name;
        float value;
    } scales[] = {{"embed_scale", c->embed_scale},
                  {"attn_scale", c->attn_scale},
                  {"attn_softcap", c->attn_softcap},
                  {"final_softcap", c->final_softcap},
                  {"rope_theta_local", c->rope_theta_local}};
    for (size_t i = 0; i < sizeof scales / sizeof scales[0]; i++)
        if (!(scales[i].value >= 0.0f) || !isfinite(scales[i].value))
            return pb_fail(PB_ERR_FORMAT, "model config: %s = %g must be finite and not negative", scales[i].name,
                           (double)scales[i].value);
    if (c->sliding_window < 0 || c->sliding_period < 0)
        return pb_fail(PB_ERR_FORMAT, "model config: sliding_window = %d and sliding_period = %d must not be negative",
                       c->sliding_window, c->sliding_period);
    if (c->activation != PB_ACTIVATION_SILU && c->activation != PB_ACTIVATION_GELU_TANH &&
        c->activation != PB_ACTIVATION_GELU)
        return pb_fail(PB_ERR_FORMAT, "model config: unknown activation %d", (int)c->activation);
    if (c->norm != PB_NORM_RMS && c->norm != PB_NORM_LAYER)
        return pb_fail(PB_ERR_FORMAT, "model config: unknown norm %d", (int)c->norm);
    if (c->position != PB_POSITION_ROPE && c->position != PB_POSITION_LEARNED)
        return pb_fail(PB_ERR_FORMAT, "model config: unknown position kind %d", (int)c->position);
    if (c->no_pre_norm && !c->sandwich_norm)
        return pb_fail(PB_ERR_FORMAT, "model config: no_pre_norm needs sandwich_norm (a model without any norm)");
    return PB_OK;
}

pb_status pb_model_config_validate(const pb_model_config *c) {
    struct {
        const char *name;
        int value;
    } sizes[] = {
        {"n_layers", c->n_layers},     {"d_model", c->d_model},
        {"n_heads", c->n_heads},       {"n_kv_heads", c->n_kv_heads},
        {"head_dim", c->head_dim},     {"d_mlp", c->d_mlp},
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
    if (c->rotary_dims < 0 || c->rotary_dims % 2 != 0 || c->rotary_dims > c->head_dim)
        return pb_fail(PB_ERR_FORMAT, "model config: rotary_dims = %d must be even and within [0, head_dim = %d]",
                       c->rotary_dims, c->head_dim);
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
    if (c->rope_scaling == PB_ROPE_SCALING_LONGROPE) {
        if (c->rope_original_context <= 0 || !(c->rope_attn_factor > 0.0f) || !isfinite(c->rope_attn_factor))
            return pb_fail(PB_ERR_FORMAT,
                           "model config: longrope needs original_max_position_embeddings (%d) > 0 and a positive "
                           "attention factor (%g)",
                           c->rope_original_context, (double)c->rope_attn_factor);
        int pairs = (c->rotary_dims > 0 ? c->rotary_dims : c->head_dim) / 2;
        for (int i = 0; i < pairs; i++)
            if (!(c->rope_short_factors[i] > 0.0f) || !(c->rope_long_factors[i] > 0.0f) ||
                !isfinite(c->rope_short_factors[i]) || !isfinite(c->rope_long_factors[i]))
                return pb_fail(PB_ERR_FORMAT,
                               "model config: longrope factor pair %d (short %g, long %g) must be positive", i,
                               (double)c->rope_short_factors[i], (double)c->rope_long_factors[i]);
    }
    return pb_model_config_validate_arch(c);
}

int pb_rope_uses_long_factors(const pb_model_config *c, int T) {
    return c->rope_scaling == PB_ROPE_SCALING_LONGROPE && T > c->rope_original_context;
}

float pb_rope_scale(const pb_model_config *c) {
    return c->rope_scaling == PB_ROPE_SCALING_LONGROPE ? c->rope_attn_factor : 1.0f;
}

void pb_rope_inv_freq(const pb_model_config *c, int long_factors, float *out) {
    int dims = c->rotary_dims > 0 ? c->rotary_dims : c->head_dim, half = dims / 2;
    for (int i = 0; i < half; i++) {
        /* fp32 like transformers: 1 / base^(2i / dim), dim the rotated dims. */
        float exponent = (float)(2 * i) / (float)dims;
        float inv = 1.0f / powf(c->rope_theta, exponent);
        if (c->rope_scaling == PB_ROPE_SCALING_LONGROPE) {
            /* transformers: 1 / (factor * base^(2i / dim)), one rounding */
            float factor = long_factors ? c->rope_long_factors[i] : c->rope_short_factors[i];
            inv = 1.0f / (factor * powf(c->rope_theta, exponent));
        } else if (c->rope_scaling == PB_ROPE_SCALING_LINEAR) {
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

/* ---- the list of tensors ---------------------------------------------- */

/* One tensor of the canonical list (weight_source.h) and where it goes. */
typedef struct wanted_tensor {
    pb_tensor_info want;   /* name and the shape the hyperparameters need */
    pb_tensor_info found;  /* as the source holds it (pass 1) */
    pb_matrix *matrix_dst; /* matrices: stored as `dtype` */
    pb_dtype dtype;        /* a matrix's storage (pass 1): the model's wdtype, or with FILE the file's */
    int layer;             /* a layer's tensor: its index; a global one: -1 */
    int place;             /* where pass 2 puts it (a place) */
    float **vector_dst;    /* vectors, and matrices the executor reads as fp32 (pos_embd): stored as fp32 */
    int fused_with_next;   /* the next tensor continues this one's rows (w_qkv, w_gate_up): no padding between */
} wanted_tensor;

/* Where a tensor lives: the arena, a layer slot of a streamed model (read
 * when the layer runs), or the file's own mapping (read in place). */
enum place { PLACE_ARENA = 0, PLACE_SLOT, PLACE_FILE };

/* The field each canonical tensor fills: in pb_model for the global ones, in
 * pb_layer_weights for a layer's (name after "blk.L."). Matrix fields are
 * pb_matrix, vector fields float *. */
typedef struct destination {
    const char *name;
    size_t offset;
    int fused_with_next;
    int fp32; /* a matrix stored as fp32, not wdtype (a float * field) */
} destination;

static const destination model_fields[] = {
    {"token_embd.weight", offsetof(pb_model, token_embd), 0, 0},
    {"position_embd.weight", offsetof(pb_model, pos_embd), 0, 1}, /* embed() reads it as PB_DTYPE_F32 */
    {"output_norm.weight", offsetof(pb_model, final_norm), 0, 0},
    {"output_norm.bias", offsetof(pb_model, final_norm_b), 0, 0},
    {"output.weight", offsetof(pb_model, output), 0, 0},
};

static const destination layer_fields[] = {
    {"attn_norm.weight", offsetof(pb_layer_weights, attn_norm), 0, 0},
    {"attn_norm.bias", offsetof(pb_layer_weights, attn_norm_b), 0, 0},
    {"attn_q.weight", offsetof(pb_layer_weights, wq), 1, 0},
    {"attn_k.weight", offsetof(pb_layer_weights, wk), 1, 0},
    {"attn_v.weight", offsetof(pb_layer_weights, wv), 0, 0},
    {"attn_q.bias", offsetof(pb_layer_weights, bq), 1, 0},
    {"attn_k.bias", offsetof(pb_layer_weights, bk), 1, 0},
    {"attn_v.bias", offsetof(pb_layer_weights, bv), 0, 0},
    {"attn_q_norm.weight", offsetof(pb_layer_weights, q_norm), 0, 0},
    {"attn_k_norm.weight", offsetof(pb_layer_weights, k_norm), 0, 0},
    {"attn_output.weight", offsetof(pb_layer_weights, wo), 0, 0},
    {"attn_output.bias", offsetof(pb_layer_weights, bo), 0, 0},
    {"post_attention_norm.weight", offsetof(pb_layer_weights, attn_post_norm), 0, 0},
    {"ffn_norm.weight", offsetof(pb_layer_weights, mlp_norm), 0, 0},
    {"ffn_norm.bias", offsetof(pb_layer_weights, mlp_norm_b), 0, 0},
    {"ffn_gate.weight", offsetof(pb_layer_weights, w_gate), 1, 0},
    {"ffn_up.weight", offsetof(pb_layer_weights, w_up), 0, 0},
    {"ffn_up.bias", offsetof(pb_layer_weights, b_up), 0, 0},
    {"ffn_down.weight", offsetof(pb_layer_weights, w_down), 0, 0},
    {"ffn_down.bias", offsetof(pb_layer_weights, b_down), 0, 0},
    {"post_ffw_norm.weight", offsetof(pb_layer_weights, mlp_post_norm), 0, 0},
};

/* Points w at its field: base is the model or the layer, name the
 * canonical name without "blk.L.". 0 when no field has that name. */
static int want_field(wanted_tensor *w, void *base, const destination *fields, size_t n_fields, const char *name) {
    for (size_t i = 0; i < n_fields; i++) {
        if (strcmp(fields[i].name, name) != 0)
            continue;
        char *field = (char *)base + fields[i].offset;
        if (w->want.n_dims == 2 && !fields[i].fp32)
            w->matrix_dst = (pb_matrix *)(void *)field;
        else
            w->vector_dst = (float **)(void *)field;
        w->fused_with_next = fields[i].fused_with_next;
        return 1;
    }
    return 0;
}

/* Fills `list` (pb_weight_list_count entries): the canonical list, each
 * with its destination. */
static void wanted_list(pb_model *m, wanted_tensor *list, int n) {
    for (int i = 0; i < n; i++) {
        wanted_tensor *w = &list[i];
        pb_weight_list_at(&m->cfg, i, &w->want);
        int layer, consumed = 0;
        w->layer = sscanf(w->want.name, "blk.%d.%n", &layer, &consumed) == 1 && consumed > 0 ? layer : -1;
        int ok = w->layer >= 0
                     ? want_field(w, &m->layers[layer], layer_fields, sizeof layer_fields / sizeof layer_fields[0],
                                  w->want.name + consumed)
                     : want_field(w, m, model_fields, sizeof model_fields / sizeof model_fields[0], w->want.name);
        assert(ok && "every canonical tensor has a field");
        (void)ok;
    }
}

static uint64_t wanted_elements(const wanted_tensor *w) { return w->want.n_elements; }

/* ---- loading ----------------------------------------------------------- */

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

/* The storage of tensor w: fp32 for a vector; for a matrix the model's
 * wdtype or, with PB_DTYPE_FILE, the file's quantised type where the matrix
 * is whole blocks of rows that are not transposed, else f32 (16-bit ones
 * too: a 16-bit matrix would round its inputs, and FILE computes what the
 * f32 load does). */
static pb_dtype storage_dtype(const pb_model *m, const wanted_tensor *w) {
    if (!w->matrix_dst)
        return PB_DTYPE_F32;
    if (m->wdtype != PB_DTYPE_FILE)
        return m->wdtype;
    pb_dtype stored;
    const pb_tensor_info *f = &w->found;
    if (!pb_dtype_from_ggml(f->type, &stored) || !pb_dtype_is_quantised(stored) || f->transposed ||
        f->shape[1] % pb_dtype_block(stored) != 0)
        return PB_DTYPE_F32;
    return stored;
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
static uint64_t arena_slot(const wanted_tensor *w) {
    uint64_t bytes = pb_dtype_bytes(w->dtype, wanted_elements(w));
    return w->fused_with_next ? bytes : (bytes + 63) / 64 * 64;
}

/* 1 when b starts where a's `bytes` end. */
static int adjacent(const void *a, size_t bytes, const void *b) {
    return a && b && (const char *)a + bytes == (const char *)b;
}

/* 1 when matrix b, of a's storage, starts where a's `rows` rows of d end. */
static int continues(const pb_matrix *a, size_t rows, size_t d, const pb_matrix *b) {
    return a->dtype == b->dtype && adjacent(a->data, pb_dtype_bytes(a->dtype, rows * d), b->data);
}

void pb_model_fuse_layer(pb_model *m, int l) {
    const pb_model_config *c = &m->cfg;
    size_t d = (size_t)c->d_model;
    size_t q_rows = (size_t)c->n_heads * c->head_dim, kv_rows = (size_t)c->n_kv_heads * c->head_dim;
    pb_matrix none = {NULL, PB_DTYPE_F32};
    pb_layer_weights *L = &m->layers[l];
    int qkv = continues(&L->wq, q_rows, d, &L->wk) && continues(&L->wk, kv_rows, d, &L->wv);
    int no_bias = !L->bq && !L->bk && !L->bv;
    int fused_bias = adjacent(L->bq, q_rows * sizeof(float), L->bk) && adjacent(L->bk, kv_rows * sizeof(float), L->bv);
    L->w_qkv = qkv && (no_bias || fused_bias) ? L->wq : none;
    L->b_qkv = L->w_qkv.data && fused_bias ? L->bq : NULL;
    L->w_gate_up = continues(&L->w_gate, (size_t)c->d_mlp, d, &L->w_up) ? L->w_gate : none;
}

void pb_model_fuse_views(pb_model *m) {
    for (int l = 0; l < m->cfg.n_layers; l++)
        pb_model_fuse_layer(m, l);
}

/* Pass 1: every tensor present, readable and of the shape the
 * hyperparameters need, before any compute, and each matrix's storage. */
static pb_status check_tensors(const pb_model *m, const pb_weight_source *src, wanted_tensor *list, int n) {
    for (int i = 0; i < n; i++) {
        const pb_tensor_info *want = &list[i].want, *got = &list[i].found;
        PB_TRY(pb_weight_source_find(src, want->name, &list[i].found));
        PB_TRY(pb_weight_source_check_readable(src, got));
        int ok = got->n_dims == want->n_dims;
        for (int d = 0; ok && d < got->n_dims; d++)
            ok = got->shape[d] == want->shape[d];
        if (!ok) {
            char have[96], need[96];
            if (got->n_dims == 1)
                snprintf(have, sizeof have, "(%lld)", (long long)got->shape[0]);
            else
                snprintf(have, sizeof have, "(%lld, %lld%s)", (long long)got->shape[0], (long long)got->shape[1],
                         got->n_dims > 2 ? ", ..." : "");
            if (want->n_dims == 1)
                snprintf(need, sizeof need, "(%lld)", (long long)want->shape[0]);
            else
                snprintf(need, sizeof need, "(%lld, %lld)", (long long)want->shape[0], (long long)want->shape[1]);
            return pb_fail(PB_ERR_FORMAT, "%s: tensor '%s' has shape %s (%d dims) but the hyperparameters need %s",
                           src->path, got->file_name, have, got->n_dims, need);
        }
        list[i].dtype = storage_dtype(m, &list[i]);
    }
    return PB_OK;
}

/* The sizes pass 2 needs for the places chosen. */
typedef struct layout {
    uint64_t arena;         /* bytes of the tensors placed in the arena (without slots and RoPE) */
    uint64_t slot;          /* bytes of one layer slot: the largest layer's streamed matrices */
    uint64_t largest;       /* floats of the largest tensor read whole into staging */
    uint64_t largest_bytes; /* bytes of the largest arena matrix converted on the host */
} layout;

/* 1 when w is a matrix kept as the file's quantised blocks: checked,
 * read and uploaded in chunks of rows, never staged whole as fp32. */
static int kept_quantised(const wanted_tensor *w) { return w->matrix_dst && pb_dtype_is_quantised(w->dtype); }

/* Sizes of the list as placed. */
static layout measure(const wanted_tensor *list, int n) {
    layout out = {0, 0, 0, 0};
    uint64_t layer_bytes = 0;
    for (int i = 0; i < n; i++) {
        const wanted_tensor *w = &list[i];
        if (i > 0 && w->layer != list[i - 1].layer)
            layer_bytes = 0;
        if (w->place == PLACE_SLOT) {
            layer_bytes += arena_slot(w);
            out.slot = layer_bytes > out.slot ? layer_bytes : out.slot;
        } else if (w->place == PLACE_ARENA) {
            out.arena += arena_slot(w);
            if (kept_quantised(w))
                continue; /* read in chunks, never whole */
            out.largest = wanted_elements(w) > out.largest ? wanted_elements(w) : out.largest;
            if (w->matrix_dst && pb_dtype_bytes(w->dtype, wanted_elements(w)) > out.largest_bytes)
                out.largest_bytes = pb_dtype_bytes(w->dtype, wanted_elements(w));
        }
    }
    return out;
}

/* 1 when the source's bytes of w are its storage as they lie (a GGUF
 * mapping, a stored random model): of the storage type, neither part of
 * another nor with rows to reorder. */
static int usable_in_place(const pb_weight_source *src, const wanted_tensor *w) {
    return pb_weight_source_has_raw(src) && !pb_tensor_is_view(&w->found) && !w->found.permuted_heads &&
           pb_dtype_ggml(w->dtype) == w->found.type;
}

/* Places for a streamed model: layer matrices in the slots, the global
 * ones in place where they can be (a host backend reading the file's
 * mapping; a device cannot), every other tensor in the arena. */
static void place_streamed(const pb_model *m, const pb_weight_source *src, wanted_tensor *list, int n) {
    /* by kind: a shape-only model plans for its kind on a host backend */
    int host = m->backend_kind != PB_BACKEND_CUDA && m->backend_kind != PB_BACKEND_CHECKED;
    for (int i = 0; i < n; i++) {
        wanted_tensor *w = &list[i];
        w->place = !w->matrix_dst                    ? PLACE_ARENA
                   : w->layer >= 0                   ? PLACE_SLOT
                   : host && usable_in_place(src, w) ? PLACE_FILE
                                                     : PLACE_ARENA;
    }
}

/* Host buffers for pass 2: staging (largest floats) and converted (the
 * largest matrix as stored, where that is not fp32). */
typedef struct staging_buffers {
    float *staging;
    void *converted;
} staging_buffers;

/* Pass 2 for one tensor: read it as fp32 on the host, check it, convert a
 * matrix to the storage dtype and upload it to `cursor` in the arena. */
static pb_status place_tensor(pb_model *m, const pb_weight_source *src, wanted_tensor *w, staging_buffers *buf,
                              char *cursor) {
    const char *name = w->found.file_name;
    float *staging = buf->staging;
    uint64_t count = wanted_elements(w);
    PB_TRY(pb_weight_source_read_f32(src, &w->found, staging));
    uint64_t bad = first_non_finite(staging, count);
    if (bad < count)
        return pb_fail(PB_ERR_NUMERIC, "%s: tensor '%s' holds a non-finite value (%g) at element %llu", src->path, name,
                       (double)staging[bad], (unsigned long long)bad);
    const void *bytes = staging;
    size_t n_bytes = sizeof(float) * (size_t)count;
    if (pb_dtype_is_quantised(w->dtype)) {
        /* the file's blocks, rows in Hugging Face order: the values just
         * checked, undecoded */
        PB_TRY(pb_weight_source_read_rows(src, &w->found, 0, w->found.shape[0], buf->converted));
        bytes = buf->converted;
        n_bytes = pb_dtype_bytes(w->dtype, count);
    } else if (w->dtype != PB_DTYPE_F32) {
        convert_parallel(w->dtype, buf->converted, staging, count);
        if (w->dtype == PB_DTYPE_F16) {
            /* finite in fp32 (checked above) but not in fp16: overflow */
            uint64_t j = first_f16_overflow(buf->converted, count);
            if (j < count)
                return pb_fail(PB_ERR_NUMERIC,
                               "%s: tensor '%s' element %llu = %g overflows f16 (max 65504); use bf16 or f32",
                               src->path, name, (unsigned long long)j, (double)staging[j]);
        }
        bytes = buf->converted;
        n_bytes = pb_dtype_size(w->dtype) * (size_t)count;
    }
    if (w->matrix_dst == &m->token_embd) {
        /* the values as stored (16-bit ones widened back; quantised ones
         * are decoded already), which the noise of a sweep scales by */
        if (bytes == buf->converted && !pb_dtype_is_quantised(w->dtype))
            pb_dtype_to_f32(w->dtype, staging, buf->converted, (size_t)count);
        m->embed_sigma = pb_noise_sigma(staging, (size_t)count);
        /* noise is added to the embeddings as the residual receives them:
         * scaled ones in Gemma */
        if (m->cfg.embed_scale > 0.0f)
            m->embed_sigma *= m->cfg.embed_scale;
    }
    PB_TRY(m->backend->ops->upload(m->backend, cursor, bytes, n_bytes));
    if (w->matrix_dst)
        *w->matrix_dst = (pb_matrix){cursor, w->dtype};
    else
        *w->vector_dst = (float *)(void *)cursor;
    return PB_OK;
}

/* Arena bytes of one set of RoPE frequencies, 64-aligned. */
static uint64_t rope_slot_bytes(const pb_model_config *c) {
    return ((uint64_t)c->head_dim / 2 * sizeof(float) + 63) / 64 * 64;
}

/* RoPE frequencies into the arena at cursor (two sets with a local base). GGUF files of Llama 3.1-style
 * models carry the scaling as per-frequency divisors in rope_freqs.weight;
 * staging holds at least head_dim / 2 floats. */
static pb_status place_rope(pb_model *m, const pb_weight_source *src, float *staging, char *cursor) {
    uint64_t half = (uint64_t)m->cfg.head_dim / 2;
    m->inv_freq_host = calloc(half, sizeof(float)); /* partial rotary fills rotary_dims / 2 of them */
    if (!m->inv_freq_host)
        return pb_fail(PB_ERR_OOM, "out of memory for RoPE frequencies");
    pb_rope_inv_freq(&m->cfg, 0, m->inv_freq_host);
    if (pb_weight_source_has(src, "rope_freqs.weight")) {
        pb_tensor_info freqs;
        PB_TRY(pb_weight_source_find(src, "rope_freqs.weight", &freqs));
        if (freqs.n_elements != half || freqs.type != PB_WEIGHT_TYPE_F32)
            return pb_fail(PB_ERR_FORMAT,
                           "%s: tensor 'rope_freqs.weight' must be F32 with %llu elements, has %s with %llu", src->path,
                           (unsigned long long)half, pb_weight_type_name(freqs.type),
                           (unsigned long long)freqs.n_elements);
        PB_TRY(pb_weight_source_read_f32(src, &freqs, staging));
        for (uint64_t i = 0; i < half; i++) {
            if (!(staging[i] > 0.0f) || !isfinite(staging[i]))
                return pb_fail(PB_ERR_FORMAT, "%s: 'rope_freqs.weight'[%llu] = %g is not a positive factor", src->path,
                               (unsigned long long)i, (double)staging[i]);
            m->inv_freq_host[i] /= staging[i];
        }
    }
    PB_TRY(m->backend->ops->upload(m->backend, cursor, m->inv_freq_host, sizeof(float) * half));
    m->inv_freq = (float *)(void *)cursor;
    if (m->cfg.rope_theta_local > 0.0f) {
        /* Sliding layers: their own base, never scaled (Gemma-3). */
        pb_model_config local = m->cfg;
        local.rope_theta = m->cfg.rope_theta_local;
        local.rope_scaling = PB_ROPE_SCALING_NONE;
        pb_rope_inv_freq(&local, 0, staging);
        cursor += rope_slot_bytes(&m->cfg);
        PB_TRY(m->backend->ops->upload(m->backend, cursor, staging, sizeof(float) * half));
        m->inv_freq_local = (float *)(void *)cursor;
    }
    if (m->cfg.rope_scaling == PB_ROPE_SCALING_LONGROPE) {
        /* LongRoPE: inv_freq holds the short factors' set, this the long one */
        memset(staging, 0, sizeof(float) * half);
        pb_rope_inv_freq(&m->cfg, 1, staging);
        cursor += rope_slot_bytes(&m->cfg);
        PB_TRY(m->backend->ops->upload(m->backend, cursor, staging, sizeof(float) * half));
        m->inv_freq_long = (float *)(void *)cursor;
    }
    return PB_OK;
}

/* Sets of RoPE frequencies the arena holds. */
static int rope_slots(const pb_model_config *c) {
    return 1 + (c->rope_theta_local > 0.0f) + (c->rope_scaling == PB_ROPE_SCALING_LONGROPE);
}

pb_status pb_model_norm(const pb_model *m, float *out, const float *x, const float *weight, const float *bias, int rows,
                        int d) {
    pb_backend *b = m->backend;
    if (m->cfg.norm == PB_NORM_LAYER)
        return b->ops->layernorm(b, out, x, weight, bias, rows, d, m->cfg.rms_eps);
    return b->ops->rmsnorm(b, out, x, weight, rows, d, m->cfg.rms_eps);
}

pb_attention_params pb_model_attention_params(const pb_model_config *c, int layer) {
    pb_attention_params p = {c->attn_scale > 0.0f ? c->attn_scale : 1.0f / sqrtf((float)c->head_dim), c->attn_softcap,
                             pb_layer_is_sliding(c, layer) ? c->sliding_window : 0};
    return p;
}

const float *pb_model_inv_freq(const pb_model *m, int layer, int T) {
    if (m->inv_freq_local && pb_layer_is_sliding(&m->cfg, layer))
        return m->inv_freq_local;
    return m->inv_freq_long && pb_rope_uses_long_factors(&m->cfg, T) ? m->inv_freq_long : m->inv_freq;
}

/* Allocates the arena (arena_bytes) and the host buffers for `largest`
 * elements. */
static pb_status alloc_buffers(pb_model *m, uint64_t largest, uint64_t largest_bytes, staging_buffers *buf) {
    pb_status status = m->backend->ops->alloc(m->backend, &m->arena, m->arena_bytes);
    if (status != PB_OK)
        return pb_fail_context(status, "allocating %.1f MiB of %s weights", (double)m->arena_bytes / (1 << 20),
                               pb_dtype_name(m->wdtype));
    buf->staging = malloc(sizeof(float) * (size_t)largest);
    if (m->wdtype != PB_DTYPE_F32)
        buf->converted = malloc((size_t)largest_bytes + 1);
    if (!buf->staging || (m->wdtype != PB_DTYPE_F32 && !buf->converted))
        return pb_fail(PB_ERR_OOM, "out of memory for a %llu-element staging buffer", (unsigned long long)largest);
    return PB_OK;
}

/* Floats one chunk of a streamed tensor's check decodes. */
#define CHECK_CHUNK_FLOATS ((size_t)1 << 20)

/* Chunk `k` of w (rows of at most CHECK_CHUNK_FLOATS values) decoded into
 * out; *count = its values, 0 past the end. raw holds the chunk's bytes. */
static pb_status read_chunk(const pb_weight_source *src, const wanted_tensor *w, int64_t k, void *raw, float *out,
                            size_t *count) {
    const pb_tensor_info *f = &w->found;
    int64_t cols = f->shape[1], per = (int64_t)(CHECK_CHUNK_FLOATS / (size_t)cols);
    per = per > 0 ? per : 1;
    int64_t first = k * per, rows = f->shape[0] - first < per ? f->shape[0] - first : per;
    *count = 0;
    if (rows <= 0)
        return PB_OK;
    pb_dtype stored;
    if (!pb_dtype_from_ggml(f->type, &stored))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: tensor '%s' (%s) cannot be streamed", src->path, f->file_name,
                       pb_ggml_type_name(f->type));
    PB_TRY(pb_weight_source_read_rows(src, f, first, rows, raw));
    *count = (size_t)(rows * cols);
    pb_dtype_to_f32(stored, out, raw, *count);
    return PB_OK;
}

/* A tensor pass 2 does not stage whole (a slot's, one read in place, a
 * kept-quantised one), checked chunk by chunk as place_tensor checks a
 * whole one: every value finite, and the embedding's standard deviation
 * for noise (pb_noise_sigma's two sums in its order). copy_to: backend
 * memory each chunk's bytes as stored go to as they are read (the arena's
 * place of a kept-quantised matrix), or NULL. */
static pb_status check_uncopied(pb_model *m, const pb_weight_source *src, const wanted_tensor *w, void *raw,
                                float *chunk, char *copy_to) {
    int embedding = w->matrix_dst == &m->token_embd;
    double sum = 0.0, mean = 0.0, var = 0.0;
    uint64_t seen = 0, n = wanted_elements(w);
    for (int pass = 0; pass < (embedding ? 2 : 1); pass++) {
        size_t count;
        seen = 0;
        for (int64_t k = 0; seen < n; k++) {
            PB_TRY(read_chunk(src, w, k, raw, chunk, &count));
            uint64_t bad = pass == 0 ? first_non_finite(chunk, count) : count; /* the second pass re-reads */
            if (bad < count)
                return pb_fail(PB_ERR_NUMERIC, "%s: tensor '%s' holds a non-finite value (%g) at element %llu",
                               src->path, w->found.file_name, (double)chunk[bad], (unsigned long long)(seen + bad));
            if (pass == 0 && copy_to) /* chunks are whole rows: seen elements are whole rows too */
                PB_TRY(m->backend->ops->upload(m->backend, copy_to + pb_dtype_bytes(w->dtype, seen), raw,
                                               pb_dtype_bytes(w->dtype, count)));
            for (size_t i = 0; embedding && i < count; i++) {
                double d = (double)chunk[i] - mean;
                if (pass == 0)
                    sum += chunk[i];
                else
                    var += d * d;
            }
            seen += count;
        }
        mean = sum / (double)n;
    }
    if (embedding)
        m->embed_sigma = sqrt(var / (double)n) * (m->cfg.embed_scale > 0.0f ? m->cfg.embed_scale : 1.0);
    return PB_OK;
}

/* The weight source's own record and bytes of an in-place tensor. */
static pb_status point_in_place(const pb_weight_source *src, wanted_tensor *w) {
    const void *data;
    uint64_t n_bytes;
    PB_TRY(pb_weight_source_raw(src, &w->found, &data, &n_bytes));
    *w->matrix_dst = (pb_matrix){(void *)(uintptr_t)data, w->dtype};
    return PB_OK;
}

/* The streamed tensors of list for pb_stream_create, grouped by layer
 * (the list's order), and first (n_layers + 1). */
static int stream_records(const pb_model *m, const wanted_tensor *list, int n, pb_stream_tensor *out, int *first) {
    int k = 0, layer = 0;
    uint64_t offset = 0;
    first[0] = 0;
    for (int i = 0; i < n; i++) {
        const wanted_tensor *w = &list[i];
        if (w->place != PLACE_SLOT)
            continue;
        for (; layer < w->layer; layer++, offset = 0)
            first[layer + 1] = k;
        out[k++] = (pb_stream_tensor){w->found, w->dtype, (size_t)offset,
                                      (size_t)((const char *)w->matrix_dst - (const char *)&m->layers[w->layer])};
        offset += arena_slot(w);
    }
    for (; layer < m->cfg.n_layers; layer++)
        first[layer + 1] = k;
    return k;
}

/* The stream of a streamed model: two slots after `cursor`, the source
 * handed over (*src NULL afterwards). */
static pb_status start_stream(pb_model *m, pb_weight_source **src, const wanted_tensor *list, int n, char *cursor,
                              uint64_t slot) {
    pb_stream_tensor *records = malloc(sizeof *records * (size_t)n);
    int *first = malloc(sizeof(int) * (size_t)(m->cfg.n_layers + 1));
    if (!records || !first) {
        free(records);
        free(first);
        return pb_fail(PB_ERR_OOM, "out of memory listing the streamed tensors");
    }
    stream_records(m, list, n, records, first);
    void *slots[2] = {cursor, cursor + slot};
    pb_weight_source *taken = *src;
    *src = NULL;
    pb_status status = pb_stream_create(&m->stream, m->backend, taken, records, first, m->cfg.n_layers, slots,
                                        (size_t)slot);
    free(records);
    free(first);
    return status;
}

/* What streaming needs, refused by name where it cannot run. */
static pb_status check_streamable(const pb_weight_source *src) {
    if (src->no_raw)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: --weights stream reads the file's own weights; a model with an adapter "
                       "merged into them is held resident",
                       src->path);
    if (!pb_weight_source_has_raw(src))
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: --weights stream reads a GGUF file's mapping (or a random model stored in a type, "
                       "NAME:LAYERS:TYPE); this is neither",
                       src->path);
    return PB_OK;
}

/* m->layout from the list as checked (places left resident): both ways
 * of holding the weights, and why streaming cannot run, if it cannot. */
static pb_status measure_layouts(pb_model *m, const pb_weight_source *src, wanted_tensor *list, int n) {
    const pb_model_config *c = &m->cfg;
    pb_weight_layout *out = &m->layout;
    uint64_t rope = (uint64_t)rope_slots(c) * rope_slot_bytes(c);
    out->layer_bytes = calloc((size_t)c->n_layers, sizeof *out->layer_bytes);
    if (!out->layer_bytes)
        return pb_fail(PB_ERR_OOM, "out of memory for %d layers' sizes", c->n_layers);
    out->resident = measure(list, n).arena + rope;
    if (check_streamable(src) != PB_OK) {
        snprintf(out->no_stream, sizeof out->no_stream, "%s", pb_last_error());
        pb_error_clear();
    }
    place_streamed(m, src, list, n);
    layout streamed = measure(list, n);
    uint64_t staging = 0;
    for (int i = 0; i < n; i++) {
        const wanted_tensor *w = &list[i];
        if (w->place == PLACE_SLOT) {
            uint64_t bytes = pb_stream_staging_for(src, w->dtype, &w->found);
            staging = bytes > staging ? bytes : staging;
            out->layer_bytes[w->layer] += pb_dtype_bytes(w->dtype, wanted_elements(w));
        }
        if (w->matrix_dst == &m->output || (c->tied_embeddings && w->matrix_dst == &m->token_embd))
            out->output_bytes = pb_dtype_bytes(w->dtype, wanted_elements(w));
        list[i].place = PLACE_ARENA;
    }
    out->slot = streamed.slot;
    out->stream_arena = streamed.arena + 2 * streamed.slot + rope;
    out->stream_host = staging + sizeof(float) * streamed.largest;
    return PB_OK;
}

uint64_t pb_weights_bytes(const pb_weight_layout *l, pb_weights_mode mode) {
    return mode == PB_WEIGHTS_STREAM ? l->stream_arena + l->stream_host : l->resident;
}

pb_status pb_weights_decide(const pb_weight_layout *l, pb_weights_mode mode, uint64_t cap, pb_weights_mode *chosen) {
    int stream = mode == PB_WEIGHTS_STREAM || (mode == PB_WEIGHTS_AUTO && cap > 0 && l->resident > cap);
    *chosen = stream ? PB_WEIGHTS_STREAM : PB_WEIGHTS_RESIDENT;
    if (!stream)
        return PB_OK;
    if (l->no_stream[0])
        return pb_fail(PB_ERR_UNSUPPORTED, "%s", l->no_stream);
    uint64_t need = pb_weights_bytes(l, PB_WEIGHTS_STREAM);
    if (cap > 0 && need > cap)
        return pb_fail(PB_ERR_OOM,
                       "--weights stream needs %.1f MiB of weight memory (%.1f MiB resident: norms, biases and "
                       "what cannot be read in place; two layer slots of %.1f MiB; %.1f MiB of staging), more than "
                       "--weight-memory %.1f MiB",
                       (double)need / (1 << 20), (double)(l->stream_arena - 2 * l->slot) / (1 << 20),
                       (double)l->slot / (1 << 20), (double)l->stream_host / (1 << 20), (double)cap / (1 << 20));
    return PB_OK;
}

/* Resident or streamed by pb_weights_decide; sets each tensor's place and
 * *out. */
static pb_status choose_layout(pb_model *m, const pb_weight_source *src, wanted_tensor *list, int n, layout *out) {
    PB_TRY(measure_layouts(m, src, list, n));
    pb_weights_mode chosen;
    PB_TRY(pb_weights_decide(&m->layout, m->weights, m->weight_memory, &chosen));
    m->weights = chosen;
    if (chosen == PB_WEIGHTS_STREAM)
        place_streamed(m, src, list, n);
    *out = measure(list, n);
    return PB_OK;
}

/* Pass 2 for tensor w at cursor: copied into the arena (whole, or a kept-
 * quantised one checked and copied in chunks), or checked and pointed at
 * the file (in place), or checked only (a slot's). */
static pb_status place_one(pb_model *m, const pb_weight_source *src, wanted_tensor *w, staging_buffers *buf,
                           char *cursor, void *chunk_raw, float *chunk) {
    if (w->place == PLACE_ARENA && !kept_quantised(w))
        return place_tensor(m, src, w, buf, cursor);
    int copied = w->place == PLACE_ARENA;
    PB_TRY(check_uncopied(m, src, w, chunk_raw, chunk, copied ? cursor : NULL));
    if (copied)
        *w->matrix_dst = (pb_matrix){cursor, w->dtype};
    return w->place == PLACE_FILE ? point_in_place(src, w) : PB_OK;
}

/* Pass 2 over the list: the arena's tensors in list order, then the two
 * slots (streamed), then the RoPE table. */
static pb_status place_all(pb_model *m, pb_weight_source **src, wanted_tensor *list, int n, const layout *lay,
                           staging_buffers *buf) {
    const pb_model_config *c = &m->cfg;
    /* chunks for the tensors checked or copied a chunk of rows at a time */
    float *chunk = malloc(sizeof(float) * CHECK_CHUNK_FLOATS * 2);
    void *chunk_raw = malloc(sizeof(float) * CHECK_CHUNK_FLOATS * 2);
    if (!chunk || !chunk_raw) {
        free(chunk);
        free(chunk_raw);
        return pb_fail(PB_ERR_OOM, "out of memory for the tensors' chunked checks");
    }
    char *cursor = m->arena;
    pb_status status = PB_OK;
    for (int i = 0; status == PB_OK && i < n; i++) {
        status = place_one(m, *src, &list[i], buf, cursor, chunk_raw, chunk);
        cursor += list[i].place == PLACE_ARENA ? arena_slot(&list[i]) : 0;
    }
    free(chunk);
    free(chunk_raw);
    PB_TRY(status);
    if (c->tied_embeddings)
        m->output = m->token_embd;
    pb_model_fuse_views(m);
    char *slots = cursor;
    if (m->weights == PB_WEIGHTS_STREAM)
        cursor += 2 * lay->slot;
    PB_TRY(place_rope(m, *src, buf->staging, cursor));
    return m->weights == PB_WEIGHTS_STREAM ? start_stream(m, src, list, n, slots, lay->slot) : PB_OK;
}

/* Pass 1 (check_tensors, choose_layout), then pass 2 (place_all). A
 * streamed model takes *src (set to NULL). */
static pb_status load_weights(pb_model *m, pb_weight_source **src) {
    const pb_model_config *c = &m->cfg;
    /* The file's header may claim any layer count: its last layer must be
     * there before tables sized by n_layers are allocated. */
    pb_tensor_info last;
    pb_status found = pb_weight_source_find_layer(*src, c->n_layers - 1, "attn_output.weight", &last);
    if (found != PB_OK)
        return pb_fail_context(found, "%d layers declared", c->n_layers);
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers)
        return pb_fail(PB_ERR_OOM, "out of memory for %d layers", c->n_layers);
    int n = pb_weight_list_count(c);
    wanted_tensor *list = calloc((size_t)n, sizeof *list);
    if (!list)
        return pb_fail(PB_ERR_OOM, "out of memory listing %d tensors", n);
    wanted_list(m, list, n);
    staging_buffers buf = {NULL, NULL};
    layout lay;
    pb_status status = check_tensors(m, *src, list, n);
    if (status == PB_OK && m->shape_only) {
        status = measure_layouts(m, *src, list, n);
        free(list);
        return status;
    }
    if (status == PB_OK)
        status = choose_layout(m, *src, list, n, &lay);
    if (status == PB_OK) {
        uint64_t slots = m->weights == PB_WEIGHTS_STREAM ? 2 * lay.slot : 0;
        m->arena_bytes = (size_t)(lay.arena + slots + (uint64_t)rope_slots(c) * rope_slot_bytes(c));
        status = alloc_buffers(m, lay.largest > (uint64_t)c->head_dim ? lay.largest : (uint64_t)c->head_dim,
                               lay.largest_bytes, &buf);
    }
    if (status == PB_OK)
        status = place_all(m, src, list, n, &lay, &buf);
    free(buf.converted);
    free(buf.staging);
    free(list);
    return status;
}

/* The model's hyperparameters, vocabulary, weights and text, from *src
 * (taken, *src NULL, when the model streams from it). */
static pb_status model_load(pb_model *m, pb_weight_source **src) {
    m->cfg = (*src)->cfg;
    PB_TRY(pb_model_text_vocab(m, *src));
    const pb_weight_source *text = *src; /* still open when a stream takes it */
    PB_TRY(load_weights(m, src));
    pb_model_text_load(m, text);
    return PB_OK;
}

const char *pb_backend_name(pb_backend_kind kind) {
    switch (kind) {
    case PB_BACKEND_CPU: return "cpu";
    case PB_BACKEND_REFERENCE: return "reference";
    case PB_BACKEND_CUDA: return "cuda";
    case PB_BACKEND_CHECKED: return "checked";
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
    else if (text && strcmp(text, "checked") == 0)
        *out = PB_BACKEND_CHECKED;
    else
        return pb_fail(PB_ERR_ARG, "unknown backend '%s' (expected cpu, reference, cuda or checked)",
                       text ? text : "(null)");
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
    m->weights = options ? options->weights : PB_WEIGHTS_RESIDENT;
    m->weight_memory = options ? options->weight_memory : 0;
    m->shape_only = options ? options->shape_only : 0;
    pb_status status = PB_OK;
    if (dtype != PB_DTYPE_F32 && dtype != PB_DTYPE_BF16 && dtype != PB_DTYPE_F16 && dtype != PB_DTYPE_FILE)
        status = pb_fail(PB_ERR_ARG, "weight dtype %s is not a load option (f32, bf16, f16 or file)",
                         pb_dtype_name(dtype));
    else if (m->weights != PB_WEIGHTS_RESIDENT && m->weights != PB_WEIGHTS_STREAM && m->weights != PB_WEIGHTS_AUTO)
        status = pb_fail(PB_ERR_ARG, "unknown weights mode %d", (int)m->weights);
    else if (kind != PB_BACKEND_CPU && kind != PB_BACKEND_REFERENCE && kind != PB_BACKEND_CUDA &&
             kind != PB_BACKEND_CHECKED)
        status = pb_fail(PB_ERR_ARG, "unknown backend %d", (int)kind);
    else if (m->shape_only || kind == PB_BACKEND_REFERENCE)
        /* shape-only: a host backend whatever the kind, so that every entry point cleans up after the executor
         * refuses to run (no device is needed to plan for one) */
        status = pb_backend_ref_create(&m->backend);
    else if (kind == PB_BACKEND_CUDA)
        status = pb_backend_cuda_create(&m->backend, options ? options->device : 0);
    else
        status = pb_backend_cpu_create(&m->backend, options ? options->n_threads : 0);
    if (status == PB_OK && kind == PB_BACKEND_CHECKED && !m->shape_only) {
        pb_backend *inner = m->backend;
        m->backend = NULL;
        status = pb_backend_checked_create(&m->backend, inner);
    }
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
    pb_weight_source *src = NULL;
    pb_status status = pb_weight_source_open(&src, path);
    if (status == PB_OK && options && options->n_adapters > 0)
        status = pb_adapter_source_wrap(&src, options->adapters, options->adapter_scales, options->n_adapters);
    if (status == PB_OK)
        status = model_load(m, &src);
    pb_weight_source_free(src); /* NULL when the model streams from it */
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
    if (options && options->n_adapters > 0)
        return pb_fail(PB_ERR_ARG, "adapters are merged into a model's file weights (--model), not a random model");
    pb_weight_source *src = NULL;
    PB_TRY(pb_weight_source_open_random(&src, name, seed));
    pb_model *m = NULL;
    pb_status status = model_new(&m, src->path, options);
    if (status == PB_OK && (status = model_load(m, &src)) != PB_OK)
        pb_model_free(m);
    pb_weight_source_free(src);
    if (status == PB_OK)
        *out = m;
    return status;
}

const char *pb_model_get_source(const pb_model *m) { return m->path; }

size_t pb_model_weight_bytes(const pb_model *m) { return m->arena_bytes; }

pb_status pb_model_weights_download(const pb_model *m, float *out, const void *src, pb_dtype dtype, size_t n) {
    if (dtype == PB_DTYPE_F32)
        return m->backend->ops->download(m->backend, out, src, n * sizeof(float));
    if (n % (size_t)pb_dtype_block(dtype) != 0)
        return pb_fail(PB_ERR_ARG, "downloading %zu %s weights: not whole blocks of %d", n, pb_dtype_name(dtype),
                       pb_dtype_block(dtype));
    size_t bytes = pb_dtype_bytes(dtype, n);
    void *raw = malloc(bytes + 1);
    if (!raw)
        return pb_fail(PB_ERR_OOM, "out of memory downloading %zu weights", n);
    pb_status status = m->backend->ops->download(m->backend, raw, src, bytes);
    if (status == PB_OK)
        pb_dtype_to_f32(dtype, out, raw, n);
    free(raw);
    return status;
}

int pb_model_streams_weights(const pb_model *m) { return m->stream != NULL; }

pb_status pb_model_layer_acquire(pb_model *m, int layer, int next) {
    return m->stream ? pb_stream_acquire(m->stream, m, layer, next) : PB_OK;
}

const char *pb_weights_mode_name(pb_weights_mode mode) {
    return mode == PB_WEIGHTS_STREAM ? "stream" : mode == PB_WEIGHTS_AUTO ? "auto" : "resident";
}

pb_status pb_weights_mode_parse(const char *text, pb_weights_mode *out) {
    static const pb_weights_mode modes[3] = {PB_WEIGHTS_RESIDENT, PB_WEIGHTS_STREAM, PB_WEIGHTS_AUTO};
    for (int i = 0; text && i < 3; i++)
        if (strcmp(text, pb_weights_mode_name(modes[i])) == 0) {
            *out = modes[i];
            return PB_OK;
        }
    return pb_fail(PB_ERR_ARG, "unknown weights mode '%s' (expected resident, stream or auto)", text ? text : "(null)");
}

int pb_model_has_quantised(const pb_model *m) {
    if (pb_dtype_is_quantised(m->token_embd.dtype) || pb_dtype_is_quantised(m->output.dtype) ||
        (m->stream && pb_stream_has_quantised(m->stream)))
        return 1;
    for (int l = 0; l < m->cfg.n_layers; l++) {
        const pb_layer_weights *L = &m->layers[l];
        const pb_matrix *all[7] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up, &L->w_down};
        for (int i = 0; i < 7; i++)
            if (pb_dtype_is_quantised(all[i]->dtype))
                return 1;
    }
    return 0;
}

void pb_model_free(pb_model *m) {
    if (!m)
        return;
    if (m->backend) {
        pb_stream_unpin(m->stream);
        m->backend->ops->free(m->backend, m->arena);
        pb_backend_destroy(m->backend);
    }
    pb_stream_free(m->stream); /* after the arena: in-place matrices point into its source's mapping */
    pb_model_text_free(m);
    free(m->layout.layer_bytes);
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
