/* patchbay public C API: status codes, errors, models, forward passes with
 * TransformerLens-named hook capture, greedy generation.
 * No CUDA types here; every handle is opaque. */
#ifndef PATCHBAY_H
#define PATCHBAY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum pb_status {
    PB_OK = 0,
    PB_ERR_IO,          /* a file could not be opened, read, mapped or written */
    PB_ERR_FORMAT,      /* a file's contents are malformed or contradict themselves */
    PB_ERR_ARG,         /* a caller passed an invalid argument */
    PB_ERR_OOM,         /* an allocation failed */
    PB_ERR_UNSUPPORTED, /* valid input this build cannot handle */
    PB_ERR_CUDA,        /* a CUDA, cuBLAS or NCCL call failed */
    PB_ERR_NUMERIC      /* NaN or Inf where a finite number is required */
} pb_status;

/* Message describing the most recent failure on this thread ("" if none).
 * Valid until the next failing patchbay call on the same thread. */
const char *pb_last_error(void);
/* "PB_ERR_FORMAT" etc. */
const char *pb_status_name(pb_status status);

/* ---- model ---------------------------------------------------------- */

typedef enum pb_rope_scaling {
    PB_ROPE_SCALING_NONE = 0,
    PB_ROPE_SCALING_LINEAR,
    PB_ROPE_SCALING_LLAMA3
} pb_rope_scaling;

typedef struct pb_model_config {
    char arch[32];          /* "llama", "qwen2", "mistral" */
    int n_layers;
    int d_model;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int d_mlp;
    int vocab_size;
    int context_length;
    float rms_eps;
    float rope_theta;
    pb_rope_scaling rope_scaling;
    float rope_factor;              /* linear and llama3 */
    float rope_low_freq_factor;     /* llama3 */
    float rope_high_freq_factor;    /* llama3 */
    int rope_original_context;      /* llama3 */
    int has_qkv_bias;
    int tied_embeddings;
    int bos_id;                     /* -1 when unknown */
    int eos_id;                     /* -1 when unknown */
} pb_model_config;

typedef struct pb_model pb_model;

typedef struct pb_load_options {
    int n_threads;      /* CPU threads; <= 0 means all cores */
} pb_load_options;

/* Loads a .gguf file or a Hugging Face checkpoint folder (config.json plus
 * model.safetensors or a sharded index). Every tensor shape is checked
 * against the hyperparameters before anything is computed. */
pb_status pb_model_load(pb_model **out, const char *path, const pb_load_options *options);
void pb_model_free(pb_model *model);
/* Borrowed; valid until pb_model_free. */
const pb_model_config *pb_model_get_config(const pb_model *model);

/* Text of one token id (byte-level tokens decoded to raw bytes), written to
 * buf NUL-terminated. Returns PB_ERR_ARG for an id outside the vocabulary. */
pb_status pb_model_token_text(const pb_model *model, int id, char *buf, size_t buf_size);

/* ---- hook capture --------------------------------------------------- */

/* A set of hook points to capture, chosen by TransformerLens name:
 * hook_embed, blocks.L.hook_resid_pre, blocks.L.hook_resid_mid,
 * blocks.L.hook_resid_post, blocks.L.hook_attn_out, blocks.L.hook_mlp_out,
 * blocks.L.attn.hook_z, blocks.L.attn.hook_q, blocks.L.attn.hook_k,
 * blocks.L.attn.hook_v, ln_final.hook_normalized.
 * The pattern is a comma-separated list of globs ('*' matches any run of
 * characters, '?' one character), e.g. "blocks.*.hook_resid_pre,hook_embed".
 * A pattern that matches no hook point is refused (PB_ERR_ARG). */
typedef struct pb_capture pb_capture;

pb_status pb_capture_create(pb_capture **out, const pb_model *model, const char *pattern);
void pb_capture_free(pb_capture *capture);
int pb_capture_count(const pb_capture *capture);
/* Borrowed; valid until pb_capture_free. */
const char *pb_capture_name(const pb_capture *capture, int index);
/* After a forward: the captured tensor, row-major, with its shape:
 * (T, d_model) for residual-width hooks, (T, n_heads, head_dim) for z and q,
 * (T, n_kv_heads, head_dim) for k and v. Borrowed; valid until the next
 * forward with this capture or pb_capture_free. */
const float *pb_capture_data(const pb_capture *capture, int index, int *n_dims, int64_t shape[3]);

/* ---- forward and generation ----------------------------------------- */

/* Runs the model on ids[0..T). logits (T, vocab_size) may be NULL; capture
 * may be NULL. */
pb_status pb_forward(pb_model *model, const int32_t *ids, int T, float *logits, pb_capture *capture);

/* Greedy decoding with a KV cache: appends up to max_new tokens to
 * out_ids (capacity max_new), stopping after eos. *n_out receives the
 * number written. */
pb_status pb_generate(pb_model *model, const int32_t *ids, int T, int max_new,
                      int32_t *out_ids, int *n_out);

#ifdef __cplusplus
}
#endif
#endif
