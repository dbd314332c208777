/* The seam between the model and the files its weights come from: one
 * interface (find a tensor by its canonical name, its shape and storage
 * type, read it as fp32 or hand out its raw bytes) that the GGUF reader
 * (formats/gguf_source.c), the safetensors reader with config.json
 * (formats/safetensors_source.c) and the random generator
 * (model/random_source.c) each implement, plus the canonical tensor list of
 * a Llama-family model. The model (model.c) knows no format. */
#ifndef PB_WEIGHT_SOURCE_H
#define PB_WEIGHT_SOURCE_H

#include <stddef.h>
#include <stdint.h>

#include "model/arch.h"
#include "patchbay.h"

typedef struct pb_gguf pb_gguf;
typedef struct pb_weight_source pb_weight_source;

/* Storage types are ggml type ids (formats/quant.h): a GGUF tensor's own;
 * F32, F16 or BF16 for safetensors; the random generator's F32, or the type
 * its spec names for matrices (random_source.c). */
typedef uint32_t pb_weight_type;
#define PB_WEIGHT_TYPE_F32 0u /* == PB_GGML_F32 */

/* Canonical names are GGUF's: "token_embd.weight", "output_norm.weight",
 * "output.weight", "blk.L.attn_q.weight" ... "blk.L.ffn_down.weight",
 * "rope_freqs.weight". Each source maps them to its own files' names. */
typedef struct pb_tensor_info {
    char name[96];       /* canonical */
    char file_name[128]; /* the name in the source's files (for messages); set even when absent */
    int n_dims;          /* 1..4 */
    int64_t shape[4];    /* row-major: shape[n_dims - 1] is contiguous; unused dims 1 */
    pb_weight_type type;
    uint64_t n_elements;
    uint64_t n_bytes;   /* of the stored (raw) bytes */
    int permuted_heads; /* raw rows interleaved per head for RoPE by llama.cpp's converter (GGUF llama
                              Q/K): the number of heads, else 0; read_f32 hands out Hugging Face order */
    const void *handle; /* the source's own record of the tensor */
    int index;          /* position in the canonical list (random source), else -1 */
    /* A view of the file tensor `handle` (pb_tensor_part_set): transposed
     * (a Conv1D stored (in, out)) and/or rows of a fused projection (file
     * rows, after transposing, are part_groups blocks of part_group_rows;
     * the tensor is part_rows rows from part_offset of each block). shape
     * and n_elements above are the view's; read_f32 reads the whole file
     * tensor (file_elements) and hands out the view; raw is refused. */
    int transposed;
    int64_t part_groups; /* 0: not a part */
    int64_t part_group_rows, part_offset, part_rows;
    int64_t file_shape[2]; /* as stored: (rows, cols), or (n, 1) for a vector */
    uint64_t file_elements;
} pb_tensor_info;

typedef struct pb_weight_source_ops {
    /* Fills info for the canonical name; *found = 0 when the source has no
     * such tensor (info->file_name still names what was looked for).
     * PB_ERR_ARG for a name the source cannot map. */
    pb_status (*find)(const pb_weight_source *src, const char *name, pb_tensor_info *info, int *found);
    /* out (n_elements floats) = the tensor dequantised / converted, rows in
     * Hugging Face order, norm weights as the model multiplies by them
     * (Gemma's 1 + w from safetensors; model/arch.h). */
    pb_status (*read_f32)(const pb_weight_source *src, const pb_tensor_info *info, float *out);
    /* The stored bytes as they are in the file (quantised, permuted; Gemma's
     * safetensors norms without the 1 read_f32 adds), into
     * the source's mapping: valid until pb_weight_source_free.
     * PB_ERR_UNSUPPORTED where there are none (random). */
    pb_status (*raw)(const pb_weight_source *src, const pb_tensor_info *info, const void **data, uint64_t *n_bytes);
    void (*free)(pb_weight_source *src);
} pb_weight_source_ops;

struct pb_weight_source {
    const pb_weight_source_ops *ops;
    pb_model_config cfg; /* hyperparameters, read and validated at open */
    char *path;          /* as opened, or "random:NAME:LAYERS:SEED"; for messages */
    /* Where the tokenizer and chat template live (text/model_text.c): the
     * GGUF file's metadata, or a Hugging Face folder; both NULL for random. */
    const pb_gguf *gguf;
    const char *folder;
    /* 1 when raw hands out every tensor's bytes from this process's own
     * memory (a random model stored in a type), which a backend may pin. */
    int owns_raw;
    /* 1 when raw does not hand out every tensor (an adapter merged into
     * some: model/adapter.h): nothing is used in place or streamed. */
    int no_raw;
};

/* path: a GGUF file, or a Hugging Face folder (config.json plus
 * safetensors). Reads and validates the hyperparameters (the same
 * pb_model_config as always: GGUF keys, or config.json). */
pb_status pb_weight_source_open(pb_weight_source **out, const char *path);
/* spec "NAME" or "NAME:LAYERS" (model_random.h); weights from the seed. */
pb_status pb_weight_source_open_random(pb_weight_source **out, const char *spec, uint64_t seed);
/* Per-format constructors behind pb_weight_source_open. */
pb_status pb_gguf_source_open(pb_weight_source **out, const char *path);
pb_status pb_safetensors_source_open(pb_weight_source **out, const char *folder);
/* Undoes llama.cpp's Q/K row interleave for RoPE: data (n_heads * head_dim,
 * cols) from GGUF row order to Hugging Face's. */
pb_status pb_gguf_unpermute_heads(float *data, int n_heads, int head_dim, int64_t cols);
/* The inverse: Hugging Face's row order to GGUF's (a writer of GGUF). */
pb_status pb_gguf_permute_heads(float *data, int n_heads, int head_dim, int64_t cols);
void pb_weight_source_free(pb_weight_source *src);
/* For the constructors: a zeroed source of `size` bytes (a struct that
 * starts with pb_weight_source) with ops and a copy of path; *out = NULL
 * until the constructor hands it out. NULL (PB_ERR_OOM recorded) when out
 * of memory. release frees what alloc made. */
void *pb_weight_source_alloc(pb_weight_source **out, size_t size, const pb_weight_source_ops *ops, const char *path);
void pb_weight_source_release(pb_weight_source *src);

/* 1 when raw hands out every tensor's stored bytes, valid while the source
 * is open: a GGUF file's mapping, or memory the source owns. */
int pb_weight_source_has_raw(const pb_weight_source *src);
/* Fills info; a tensor the source lacks is PB_ERR_FORMAT "PATH: missing
 * tensor 'FILE_NAME'". */
pb_status pb_weight_source_find(const pb_weight_source *src, const char *name, pb_tensor_info *info);
/* The same for layer `layer` of a per-layer name ("attn_q.weight"). */
pb_status pb_weight_source_find_layer(const pb_weight_source *src, int layer, const char *name, pb_tensor_info *info);
/* 1 when the source holds the tensor. */
int pb_weight_source_has(const pb_weight_source *src, const char *name);
/* PB_ERR_UNSUPPORTED naming the tensor and its type when read_f32 cannot
 * decode it. */
pb_status pb_weight_source_check_readable(const pb_weight_source *src, const pb_tensor_info *info);
pb_status pb_weight_source_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out);
pb_status pb_weight_source_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data,
                               uint64_t *n_bytes);
/* out = rows [first, first + n) of a matrix's stored bytes (quantised
 * blocks as they are) in Hugging Face row order: rows of a fused tensor's
 * part taken, llama.cpp's Q/K head interleave undone; each row shape[1] /
 * block blocks. The same values read_f32 hands out, undecoded.
 * PB_ERR_UNSUPPORTED for a transposed view or rows that are not whole
 * blocks. */
pb_status pb_weight_source_read_rows(const pb_weight_source *src, const pb_tensor_info *info, int64_t first, int64_t n,
                                     void *out);
/* Makes info (filled with the file tensor's own shape) a view of it:
 * part `part` of a fused tensor laid out as `split`, transposed first
 * when `transposed`. PB_ERR_FORMAT naming the file tensor when its shape
 * is not the fused shape cfg needs. */
pb_status pb_tensor_part_set(const pb_model_config *cfg, const char *path, pb_tensor_info *info, pb_fused_split split,
                             int part, int transposed);
/* 1 when read_f32 must read the whole file tensor and extract the view. */
int pb_tensor_is_view(const pb_tensor_info *info);
/* out (info->n_elements) = the view of whole (info->file_elements, the
 * file tensor as fp32). */
void pb_tensor_part_extract(const pb_tensor_info *info, const float *whole, float *out);
/* "F32", "Q4_K", ... */
const char *pb_weight_type_name(pb_weight_type type);

/* The canonical list: every tensor a model with this config loads, in load
 * order (token_embd, position_embd with learned positions, output_norm,
 * output_norm.bias with LayerNorm, output unless tied, then per layer
 * attn_norm (and .bias with LayerNorm) unless no_pre_norm, attn_q/k/v,
 * their biases when the config has them, attn_q_norm/attn_k_norm
 * (head_dim, or the whole projection with qk_norm_full) with qk_norm,
 * attn_output (and .bias with has_dense_bias), post_attention_norm with
 * sandwich_norm, ffn_norm (and .bias) unless no_pre_norm, ffn_gate unless
 * plain_mlp, ffn_up, ffn_down (each with .bias with has_dense_bias),
 * post_ffw_norm with sandwich_norm), with the shapes the hyperparameters
 * need (name, file_name, shape, n_elements, index; type F32). */
int pb_weight_list_count(const pb_model_config *cfg);
void pb_weight_list_at(const pb_model_config *cfg, int index, pb_tensor_info *info);
/* Index of a canonical name in the list, or -1. */
int pb_weight_list_find(const pb_model_config *cfg, const char *name);
/* The Hugging Face name of a canonical one in a text checkpoint of cfg's
 * family ("model.layers.L.post_feedforward_layernorm.weight"; model/arch.h);
 * PB_ERR_ARG when there is none. */
pb_status pb_weight_hf_name(const pb_model_config *cfg, const char *name, char *out, size_t size);
/* The same, with the family's entry (fused split, transposed) in *entry. */
pb_status pb_weight_hf_tensor(const pb_model_config *cfg, const char *name, char *out, size_t size,
                              const pb_arch_tensor_name **entry);

#endif
