/* What every weight source shares: the canonical tensor list (names, load
 * order, shapes from the hyperparameters) and its Hugging Face names, the
 * choice of source for a path, and the checks and messages around the
 * per-format ops. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/quant.h"
#include "model/arch.h"
#include "model/weight_source.h"
#include "util/internal.h"

_Static_assert(PB_WEIGHT_TYPE_F32 == PB_GGML_F32, "weight types are ggml type ids");

/* A size from the hyperparameters. */
typedef enum dim {
    DIM_NONE,
    DIM_D_MODEL,
    DIM_Q_ROWS,
    DIM_KV_ROWS,
    DIM_D_MLP,
    DIM_VOCAB,
    DIM_CONTEXT,
    DIM_Q_NORM, /* head_dim, or n_heads * head_dim with qk_norm_full */
    DIM_K_NORM  /* head_dim, or n_kv_heads * head_dim with qk_norm_full */
} dim;

/* When a tensor is part of the model. */
typedef enum presence {
    ALWAYS,
    WITH_QKV_BIAS,
    WITH_QK_NORM,
    WITH_SANDWICH_NORM,
    WITH_PRE_NORM,      /* not no_pre_norm */
    WITH_PRE_NORM_BIAS, /* not no_pre_norm, LayerNorm */
    WITH_NORM_BIAS,     /* LayerNorm */
    WITH_DENSE_BIAS,    /* has_dense_bias */
    WITH_GATE,          /* not plain_mlp */
    WITH_LEARNED_POS,   /* PB_POSITION_LEARNED */
    WITH_UNTIED         /* not tied_embeddings */
} presence;

typedef struct canonical_tensor {
    const char *name; /* canonical, after "blk.L." for a layer's */
    dim rows, cols;   /* cols DIM_NONE: a vector */
    presence when;
} canonical_tensor;

/* Global tensors (Hugging Face names per family: model/arch.c). */
static const canonical_tensor global_tensors[] = {
    {"token_embd.weight", DIM_VOCAB, DIM_D_MODEL, ALWAYS},
    {"position_embd.weight", DIM_CONTEXT, DIM_D_MODEL, WITH_LEARNED_POS},
    {"output_norm.weight", DIM_D_MODEL, DIM_NONE, ALWAYS},
    {"output_norm.bias", DIM_D_MODEL, DIM_NONE, WITH_NORM_BIAS},
    {"output.weight", DIM_VOCAB, DIM_D_MODEL, WITH_UNTIED},
};
#define N_GLOBAL_TENSORS (int)(sizeof global_tensors / sizeof global_tensors[0])

/* One layer's tensors in load order: q, k, v (and their biases; gate and
 * up) back to back, which the fused views rely on (model.c). Their Hugging
 * Face names depend on the family (model/arch.c). */
static const canonical_tensor layer_tensors[] = {
    {"attn_norm.weight", DIM_D_MODEL, DIM_NONE, WITH_PRE_NORM},
    {"attn_norm.bias", DIM_D_MODEL, DIM_NONE, WITH_PRE_NORM_BIAS},
    {"attn_q.weight", DIM_Q_ROWS, DIM_D_MODEL, ALWAYS},
    {"attn_k.weight", DIM_KV_ROWS, DIM_D_MODEL, ALWAYS},
    {"attn_v.weight", DIM_KV_ROWS, DIM_D_MODEL, ALWAYS},
    {"attn_q.bias", DIM_Q_ROWS, DIM_NONE, WITH_QKV_BIAS},
    {"attn_k.bias", DIM_KV_ROWS, DIM_NONE, WITH_QKV_BIAS},
    {"attn_v.bias", DIM_KV_ROWS, DIM_NONE, WITH_QKV_BIAS},
    {"attn_q_norm.weight", DIM_Q_NORM, DIM_NONE, WITH_QK_NORM},
    {"attn_k_norm.weight", DIM_K_NORM, DIM_NONE, WITH_QK_NORM},
    {"attn_output.weight", DIM_D_MODEL, DIM_Q_ROWS, ALWAYS},
    {"attn_output.bias", DIM_D_MODEL, DIM_NONE, WITH_DENSE_BIAS},
    {"post_attention_norm.weight", DIM_D_MODEL, DIM_NONE, WITH_SANDWICH_NORM},
    {"ffn_norm.weight", DIM_D_MODEL, DIM_NONE, WITH_PRE_NORM},
    {"ffn_norm.bias", DIM_D_MODEL, DIM_NONE, WITH_PRE_NORM_BIAS},
    {"ffn_gate.weight", DIM_D_MLP, DIM_D_MODEL, WITH_GATE},
    {"ffn_up.weight", DIM_D_MLP, DIM_D_MODEL, ALWAYS},
    {"ffn_up.bias", DIM_D_MLP, DIM_NONE, WITH_DENSE_BIAS},
    {"ffn_down.weight", DIM_D_MODEL, DIM_D_MLP, ALWAYS},
    {"ffn_down.bias", DIM_D_MODEL, DIM_NONE, WITH_DENSE_BIAS},
    {"post_ffw_norm.weight", DIM_D_MODEL, DIM_NONE, WITH_SANDWICH_NORM},
};
#define N_LAYER_TENSORS (int)(sizeof layer_tensors / sizeof layer_tensors[0])

/* 1 when the config's model has tensor t. */
static int present(const pb_model_config *c, const canonical_tensor *t) {
    switch (t->when) {
    case ALWAYS: return 1;
    case WITH_QKV_BIAS: return c->has_qkv_bias;
    case WITH_QK_NORM: return c->qk_norm;
    case WITH_SANDWICH_NORM: return c->sandwich_norm;
    case WITH_PRE_NORM: return !c->no_pre_norm;
    case WITH_PRE_NORM_BIAS: return !c->no_pre_norm && c->norm == PB_NORM_LAYER;
    case WITH_NORM_BIAS: return c->norm == PB_NORM_LAYER;
    case WITH_DENSE_BIAS: return c->has_dense_bias;
    case WITH_GATE: return !c->plain_mlp;
    case WITH_LEARNED_POS: return c->position == PB_POSITION_LEARNED;
    case WITH_UNTIED: return !c->tied_embeddings;
    }
    return 0;
}

static int64_t dim_size(const pb_model_config *c, dim d) {
    switch (d) {
    case DIM_D_MODEL: return c->d_model;
    case DIM_Q_ROWS: return (int64_t)c->n_heads * c->head_dim;
    case DIM_KV_ROWS: return (int64_t)c->n_kv_heads * c->head_dim;
    case DIM_D_MLP: return c->d_mlp;
    case DIM_VOCAB: return c->vocab_size;
    case DIM_CONTEXT: return c->context_length;
    case DIM_Q_NORM: return c->qk_norm_full ? (int64_t)c->n_heads * c->head_dim : c->head_dim;
    case DIM_K_NORM: return c->qk_norm_full ? (int64_t)c->n_kv_heads * c->head_dim : c->head_dim;
    case DIM_NONE: break;
    }
    return 0;
}

static int count_present(const pb_model_config *c, const canonical_tensor *table, int n) {
    int k = 0;
    for (int i = 0; i < n; i++)
        k += present(c, &table[i]);
    return k;
}

static int n_globals(const pb_model_config *c) { return count_present(c, global_tensors, N_GLOBAL_TENSORS); }

static int per_layer(const pb_model_config *c) { return count_present(c, layer_tensors, N_LAYER_TENSORS); }

int pb_weight_list_count(const pb_model_config *c) { return n_globals(c) + c->n_layers * per_layer(c); }

/* The k-th present row of table. */
static const canonical_tensor *nth_present(const pb_model_config *c, const canonical_tensor *table, int n, int k) {
    for (int i = 0; i < n; i++) {
        if (!present(c, &table[i]))
            continue;
        if (k-- == 0)
            return &table[i];
    }
    return NULL; /* unreachable for k < count_present */
}

/* The table row of list entry `index`, and its layer (-1 for a global). */
static const canonical_tensor *list_entry(const pb_model_config *c, int index, int *layer) {
    *layer = -1;
    if (index < n_globals(c))
        return nth_present(c, global_tensors, N_GLOBAL_TENSORS, index);
    index -= n_globals(c);
    *layer = index / per_layer(c);
    return nth_present(c, layer_tensors, N_LAYER_TENSORS, index % per_layer(c));
}

void pb_weight_list_at(const pb_model_config *c, int index, pb_tensor_info *info) {
    int layer;
    const canonical_tensor *t = list_entry(c, index, &layer);
    memset(info, 0, sizeof *info);
    if (layer < 0)
        snprintf(info->name, sizeof info->name, "%s", t->name);
    else
        snprintf(info->name, sizeof info->name, "blk.%d.%s", layer, t->name);
    snprintf(info->file_name, sizeof info->file_name, "%s", info->name);
    info->n_dims = t->cols == DIM_NONE ? 1 : 2;
    info->shape[0] = dim_size(c, t->rows);
    info->shape[1] = t->cols == DIM_NONE ? 1 : dim_size(c, t->cols);
    info->shape[2] = info->shape[3] = 1;
    info->n_elements = (uint64_t)info->shape[0] * (uint64_t)info->shape[1];
    info->type = PB_WEIGHT_TYPE_F32;
    info->index = index;
}

/* Splits "blk.L.SUFFIX" into L and SUFFIX; 0 when name is not a layer's. */
static int split_layer_name(const char *name, int *layer, const char **suffix) {
    int consumed = 0;
    if (sscanf(name, "blk.%d.%n", layer, &consumed) != 1 || consumed == 0 || *layer < 0)
        return 0;
    *suffix = name + consumed;
    return 1;
}

int pb_weight_list_find(const pb_model_config *c, const char *name) {
    int n = pb_weight_list_count(c);
    for (int i = 0; i < n_globals(c); i++)
        if (strcmp(name, nth_present(c, global_tensors, N_GLOBAL_TENSORS, i)->name) == 0)
            return i;
    int layer;
    const char *suffix;
    if (!split_layer_name(name, &layer, &suffix) || layer >= c->n_layers)
        return -1;
    for (int i = n_globals(c) + layer * per_layer(c); i < n; i++) {
        int at;
        const canonical_tensor *t = list_entry(c, i, &at);
        if (at != layer)
            break;
        if (strcmp(t->name, suffix) == 0)
            return i;
    }
    return -1;
}

pb_status pb_weight_hf_tensor(const pb_model_config *c, const char *name, char *out, size_t size,
                              const pb_arch_tensor_name **entry) {
    snprintf(out, size, "%s", name);
    *entry = NULL;
    const pb_arch *arch = pb_arch_find(c->arch);
    if (!arch)
        return pb_arch_refuse("Hugging Face tensor names", c->arch);
    int layer;
    const char *suffix;
    const pb_arch_tensor_name *hf = NULL;
    if (split_layer_name(name, &layer, &suffix) && (hf = pb_arch_hf_layer_name(arch, suffix)))
        snprintf(out, size, "%s%d.%s", arch->hf_layer_prefix ? arch->hf_layer_prefix : "model.layers.", layer, hf->hf);
    else if ((hf = pb_arch_hf_global_name(arch, name)))
        snprintf(out, size, "%s", hf->hf);
    else
        return pb_fail(PB_ERR_ARG, "tensor '%s' has no Hugging Face name in %s models (not a canonical tensor name)",
                       name, c->arch);
    *entry = hf;
    return PB_OK;
}

pb_status pb_weight_hf_name(const pb_model_config *c, const char *name, char *out, size_t size) {
    const pb_arch_tensor_name *entry;
    return pb_weight_hf_tensor(c, name, out, size, &entry);
}

/* ---- views of fused and transposed file tensors ------------------------ */

/* The fused layout's blocks: *groups blocks of *group_rows rows, the part
 * *rows rows from *offset of each; 0 for a layout the config cannot have. */
static int64_t fused_layout(const pb_model_config *c, pb_fused_split split, int part, int64_t *groups,
                            int64_t *group_rows, int64_t *offset, int64_t *rows) {
    int64_t q = (int64_t)c->n_heads * c->head_dim, kv = (int64_t)c->n_kv_heads * c->head_dim;
    *groups = 1;
    *group_rows = *offset = *rows = 0;
    switch (split) {
    case PB_SPLIT_QKV:
        *group_rows = q + 2 * kv;
        *offset = part == 0 ? 0 : part == 1 ? q : q + kv;
        *rows = part == 0 ? q : kv;
        break;
    case PB_SPLIT_QKV_PER_HEAD: /* multi-head attention only: one k and one v per head */
        if (c->n_kv_heads != c->n_heads)
            return 0;
        *groups = c->n_heads;
        *group_rows = 3 * (int64_t)c->head_dim;
        *offset = part * (int64_t)c->head_dim;
        *rows = c->head_dim;
        break;
    case PB_SPLIT_HALVES:
        *group_rows = 2 * (int64_t)c->d_mlp;
        *offset = part * (int64_t)c->d_mlp;
        *rows = c->d_mlp;
        break;
    case PB_SPLIT_NONE: return 0;
    }
    return *groups * *group_rows;
}

pb_status pb_tensor_part_set(const pb_model_config *c, const char *path, pb_tensor_info *info, pb_fused_split split,
                             int part, int transposed) {
    if (info->n_dims > 2 || (transposed && info->n_dims != 2))
        return pb_fail(PB_ERR_FORMAT, "%s: tensor '%s' has %d dims, expected %s", path, info->file_name, info->n_dims,
                       transposed ? "2 (a Conv1D weight, stored (in, out))" : "1 or 2");
    info->file_shape[0] = info->shape[0];
    info->file_shape[1] = info->n_dims == 2 ? info->shape[1] : 1;
    info->file_elements = info->n_elements;
    info->transposed = transposed;
    if (transposed) { /* the view is (out, in) */
        info->shape[0] = info->file_shape[1];
        info->shape[1] = info->file_shape[0];
    }
    if (split == PB_SPLIT_NONE)
        return PB_OK;
    int64_t groups, group_rows, offset, rows;
    int64_t need = fused_layout(c, split, part, &groups, &group_rows, &offset, &rows);
    if (need == 0)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: tensor '%s' interleaves q, k and v per head, which needs n_kv_heads (%d) == n_heads (%d)",
                       path, info->file_name, c->n_kv_heads, c->n_heads);
    if (info->shape[0] != need)
        return pb_fail(PB_ERR_FORMAT, "%s: fused tensor '%s' has %lld rows%s, but the hyperparameters need %lld (%s)",
                       path, info->file_name, (long long)info->shape[0], transposed ? " (as (out, in))" : "",
                       (long long)need, split == PB_SPLIT_HALVES ? "2 * d_mlp" : "q, k and v rows");
    info->part_groups = groups;
    info->part_group_rows = group_rows;
    info->part_offset = offset;
    info->part_rows = rows;
    info->shape[0] = groups * rows;
    info->n_elements = (uint64_t)info->shape[0] * (uint64_t)(info->n_dims == 2 ? info->shape[1] : 1);
    return PB_OK;
}

int pb_tensor_is_view(const pb_tensor_info *info) { return info->transposed || info->part_groups > 0; }

void pb_tensor_part_extract(const pb_tensor_info *info, const float *whole, float *out) {
    int64_t cols = info->n_dims == 2 ? info->shape[1] : 1; /* of the view */
    int64_t groups = info->part_groups > 0 ? info->part_groups : 1;
    int64_t group_rows = info->part_groups > 0 ? info->part_group_rows : info->shape[0];
    int64_t offset = info->part_offset, rows = info->part_groups > 0 ? info->part_rows : info->shape[0];
    for (int64_t g = 0; g < groups; g++)
        for (int64_t j = 0; j < rows; j++) {
            int64_t src_row = g * group_rows + offset + j; /* a row of the (transposed) file tensor */
            float *dst = out + (g * rows + j) * cols;
            if (!info->transposed) {
                memcpy(dst, whole + src_row * cols, sizeof(float) * (size_t)cols);
                continue;
            }
            for (int64_t k = 0; k < cols; k++) /* file (cols, all rows): element (k, src_row) */
                dst[k] = whole[k * info->file_shape[1] + src_row];
        }
}

/* ---- the interface ------------------------------------------------------ */

static const char *file_kind(mode_t mode) {
    return S_ISFIFO(mode)   ? "a FIFO (named pipe)"
           : S_ISCHR(mode)  ? "a character device"
           : S_ISBLK(mode)  ? "a block device"
           : S_ISSOCK(mode) ? "a socket"
                            : "not a regular file";
}

/* A model is a regular file (GGUF) or a folder (Hugging Face): anything
 * else (a FIFO would block the open forever, a device has no end) is
 * refused before it is opened, and so are the folder's own files. */
static pb_status check_model_path(const char *path, int *is_folder) {
    struct stat st;
    *is_folder = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    if (*is_folder) {
        static const char *const names[] = {"config.json", "model.safetensors", "model.safetensors.index.json",
                                            "tokenizer.json", "tokenizer_config.json"};
        char file[4096];
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
            snprintf(file, sizeof file, "%s/%s", path, names[i]);
            if (stat(file, &st) == 0 && !S_ISREG(st.st_mode))
                return pb_fail(PB_ERR_IO, "model folder %s: %s is %s, not a regular file", path, names[i],
                               file_kind(st.st_mode));
        }
        return PB_OK;
    }
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
        return pb_fail(PB_ERR_IO, "model %s is %s: a model is a regular file (GGUF) or a folder (Hugging Face)", path,
                       file_kind(st.st_mode));
    return PB_OK; /* a missing file is named by the format's open */
}

pb_status pb_weight_source_open(pb_weight_source **out, const char *path) {
    if (!out || !path)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_open: out and path are required");
    *out = NULL;
    int is_folder;
    PB_TRY(check_model_path(path, &is_folder));
    return is_folder ? pb_safetensors_source_open(out, path) : pb_gguf_source_open(out, path);
}

void *pb_weight_source_alloc(pb_weight_source **out, size_t size, const pb_weight_source_ops *ops, const char *path) {
    *out = NULL;
    pb_weight_source *src = calloc(1, size);
    if (!src || !(src->path = strdup(path))) {
        free(src);
        pb_fail(PB_ERR_OOM, "out of memory opening %s", path);
        return NULL;
    }
    src->ops = ops;
    return src;
}

void pb_weight_source_release(pb_weight_source *src) {
    free(src->path);
    free(src);
}

void pb_weight_source_free(pb_weight_source *src) {
    if (src)
        src->ops->free(src);
}

pb_status pb_weight_source_find(const pb_weight_source *src, const char *name, pb_tensor_info *info) {
    if (!src || !name || !info)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_find: source, name and info are required");
    int found = 0;
    PB_TRY(src->ops->find(src, name, info, &found));
    if (!found)
        return pb_fail(PB_ERR_FORMAT, "%s: missing tensor '%s'", src->path, info->file_name);
    return PB_OK;
}

pb_status pb_weight_source_find_layer(const pb_weight_source *src, int layer, const char *name, pb_tensor_info *info) {
    if (!src || !name || !info)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_find_layer: source, name and info are required");
    if (layer < 0 || layer >= src->cfg.n_layers)
        return pb_fail(PB_ERR_ARG, "%s: layer %d of tensor '%s' is outside [0, %d)", src->path, layer, name,
                       src->cfg.n_layers);
    char full[96];
    snprintf(full, sizeof full, "blk.%d.%s", layer, name);
    return pb_weight_source_find(src, full, info);
}

int pb_weight_source_has(const pb_weight_source *src, const char *name) {
    pb_tensor_info info;
    int found = 0;
    pb_error_saved saved;
    pb_error_save(&saved); /* a name the source cannot map is only absent here */
    int has = src->ops->find(src, name, &info, &found) == PB_OK && found;
    pb_error_restore(&saved);
    return has;
}

pb_status pb_weight_source_check_readable(const pb_weight_source *src, const pb_tensor_info *info) {
    if (!pb_ggml_type_dequantizable(info->type))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: tensor '%s' has type %s, which patchbay cannot dequantise", src->path,
                       info->file_name, pb_ggml_type_name(info->type));
    return PB_OK;
}

pb_status pb_weight_source_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out) {
    if (!src || !info || !out)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_read_f32: source, info and out are required");
    return src->ops->read_f32(src, info, out);
}

pb_status pb_weight_source_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data,
                               uint64_t *n_bytes) {
    if (!src || !info || !data || !n_bytes)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_raw: source, info, data and n_bytes are required");
    *data = NULL;
    *n_bytes = 0;
    if (pb_tensor_is_view(info))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: tensor '%s' is %s in the file: it has no raw bytes of its own",
                       src->path, info->name, info->part_groups > 0 ? "part of a fused tensor" : "transposed");
    return src->ops->raw(src, info, data, n_bytes);
}

/* The file row holding row r of the view info (Hugging Face order): a
 * part's rows within each group, llama.cpp's per-head interleave of Q/K
 * undone (GGUF row h*hd + 2i + j holds row h*hd + j*hd/2 + i). */
static int64_t file_row(const pb_tensor_info *info, int64_t r) {
    if (info->part_groups > 0)
        return r / info->part_rows * info->part_group_rows + info->part_offset + r % info->part_rows;
    if (info->permuted_heads) {
        int64_t hd = info->shape[0] / info->permuted_heads, half = hd / 2, within = r % hd;
        return r - within + 2 * (within % half) + within / half;
    }
    return r;
}

int pb_weight_source_has_raw(const pb_weight_source *src) {
    return !src->no_raw && (src->gguf != NULL || src->owns_raw);
}

pb_status pb_weight_source_read_rows(const pb_weight_source *src, const pb_tensor_info *info, int64_t first, int64_t n,
                                     void *out) {
    uint32_t block = pb_ggml_block_size(info->type);
    if (info->transposed || info->n_dims != 2 || block == 0 || info->shape[1] % block != 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: tensor '%s' (%s) cannot be kept as stored: %s", src->path,
                       info->file_name, pb_ggml_type_name(info->type),
                       info->transposed ? "it is transposed in the file" : "its rows are not whole blocks");
    const void *data;
    uint64_t n_bytes;
    PB_TRY(src->ops->raw(src, info, &data, &n_bytes));
    size_t row_bytes = (size_t)(info->shape[1] / block) * pb_ggml_block_bytes(info->type);
    int64_t file_rows = info->part_groups > 0 ? info->file_shape[0] : info->shape[0];
    if (n_bytes < row_bytes * (uint64_t)file_rows)
        return pb_fail(PB_ERR_FORMAT, "%s: tensor '%s' holds %llu bytes, fewer than its %lld rows of %zu", src->path,
                       info->file_name, (unsigned long long)n_bytes, (long long)file_rows, row_bytes);
    if (first < 0 || n < 0 || first + n > info->shape[0])
        return pb_fail(PB_ERR_ARG, "%s: rows %lld..%lld of tensor '%s', which has %lld", src->path, (long long)first,
                       (long long)(first + n), info->file_name, (long long)info->shape[0]);
    for (int64_t r = 0; r < n; r++)
        memcpy((char *)out + (size_t)r * row_bytes, (const char *)data + (size_t)file_row(info, first + r) * row_bytes,
               row_bytes);
    return PB_OK;
}

const char *pb_weight_type_name(pb_weight_type type) { return pb_ggml_type_name(type); }
