/* The model as the forward driver sees it (model.c loads it from a weight
 * source, weight_source.h): hyperparameters, the backend, weights carved
 * from one backend allocation, RoPE frequencies, and the text side
 * (vocabulary, tokenizer, chat template; text/model_text.c). */
#ifndef PB_MODEL_H
#define PB_MODEL_H

#include "backend/backend.h"
#include "text/chat_template.h"
#include "patchbay.h"
#include "text/vocab.h"

typedef struct pb_tokenizer pb_tokenizer;

/* A weight matrix in backend memory, (rows, cols) row-major, and its
 * storage: the model's wdtype, or with PB_DTYPE_FILE the file's own type
 * (quantised rows are whole blocks, so a row starts at r *
 * pb_dtype_bytes(dtype, cols)). */
typedef struct pb_matrix {
    void *data;
    pb_dtype dtype;
} pb_matrix;

typedef struct pb_layer_weights {
    /* Matrices are pb_matrix, vectors fp32. */
    float *attn_norm; /* (d_model) */
    pb_matrix wq;     /* (n_heads * head_dim, d_model), Hugging Face row order */
    pb_matrix wk;     /* (n_kv_heads * head_dim, d_model) */
    pb_matrix wv;     /* (n_kv_heads * head_dim, d_model) */
    float *bq;        /* (n_heads * head_dim) or NULL */
    float *bk;        /* (n_kv_heads * head_dim) or NULL */
    float *bv;        /* (n_kv_heads * head_dim) or NULL */
    pb_matrix wo;     /* (d_model, n_heads * head_dim) */
    float *mlp_norm;  /* (d_model) */
    pb_matrix w_gate; /* (d_mlp, d_model) */
    pb_matrix w_up;   /* (d_mlp, d_model) */
    pb_matrix w_down; /* (d_model, d_mlp) */
    /* Beyond Llama (NULL where the architecture lacks them); norm weights
     * are stored as multiplied, Gemma's 1 + w already added. */
    float *q_norm;         /* (head_dim) qk_norm: every query head; (n_heads * head_dim) with qk_norm_full */
    float *k_norm;         /* (head_dim) qk_norm: every key head; (n_kv_heads * head_dim) with qk_norm_full */
    float *attn_norm_b;    /* (d_model) PB_NORM_LAYER: the bias of attn_norm */
    float *mlp_norm_b;     /* (d_model) PB_NORM_LAYER: the bias of mlp_norm */
    float *bo;             /* (d_model) has_dense_bias: attention output projection */
    float *b_up;           /* (d_mlp) has_dense_bias */
    float *b_down;         /* (d_model) has_dense_bias */
    float *attn_post_norm; /* (d_model) sandwich_norm: the attention output before the residual add */
    float *mlp_post_norm;  /* (d_model) sandwich_norm: the MLP output before the residual add */
    /* Fused projections: the load places wq, wk, wv (and bq, bk, bv; w_gate,
     * w_up) back to back in the arena, so these are views of the same
     * memory, one matrix per input for one GEMM (exec.c). data NULL when
     * the layout is not contiguous or the parts' storage differs (then the
     * executor multiplies separately). */
    pb_matrix w_qkv;     /* (n_heads * head_dim + 2 * n_kv_heads * head_dim, d_model) == wq */
    float *b_qkv;        /* (n_heads * head_dim + 2 * n_kv_heads * head_dim) == bq, or NULL */
    pb_matrix w_gate_up; /* (2 * d_mlp, d_model) == w_gate */
} pb_layer_weights;

/* What the weights take, resident and streamed, measured from the file's
 * tensor table by every load (a shape-only one too): the load decides with
 * it (pb_weights_decide) and the planner reports and decides with it. */
typedef struct pb_weight_layout {
    uint64_t resident;     /* arena bytes when resident: every tensor as stored, RoPE tables */
    uint64_t stream_arena; /* arena bytes when streamed: the tensors that stay (norms, biases, globals not read in
                              place), the two layer slots, RoPE tables */
    uint64_t stream_host;  /* host buffers a streamed model holds besides: the slot's staging, the load's checks */
    uint64_t slot;         /* bytes of one layer slot */
    uint64_t *layer_bytes; /* (n_layers) bytes bringing layer l into its slot reads (the stream's counter) */
    uint64_t output_bytes; /* the unembedding matrix as stored */
    char no_stream[320];   /* why this model cannot stream (backend, source, dtype), or "" */
} pb_weight_layout;

/* The load's rule: resident or stream for `mode` under a weight cap (0:
 * none); auto streams when resident exceeds the cap. PB_ERR_OOM with the
 * numbers when the stream exceeds the cap, PB_ERR_UNSUPPORTED (the reason)
 * when the model must stream and cannot. */
pb_status pb_weights_decide(const pb_weight_layout *layout, pb_weights_mode mode, uint64_t cap,
                            pb_weights_mode *chosen);
/* Bytes the weights take under a decided mode. */
uint64_t pb_weights_bytes(const pb_weight_layout *layout, pb_weights_mode mode);

struct pb_model {
    pb_model_config cfg;
    char *path; /* as given to pb_model_load, or "random:NAME:LAYERS:SEED" */
    pb_backend_kind backend_kind;
    pb_backend *backend;
    pb_dtype wdtype; /* storage of the weight matrices as asked (dtype.h): every one's, or PB_DTYPE_FILE */
    void *arena;     /* every weight below, one backend allocation */
    size_t arena_bytes;
    pb_weights_mode weights;  /* as loaded: resident or stream */
    size_t weight_memory;     /* the cap asked for (0: none) */
    struct pb_stream *stream; /* streamed layers (model/stream.h), or NULL when resident */
    pb_weight_layout layout;  /* both ways of holding the weights, measured at load */
    int shape_only;           /* pb_load_options.shape_only: no weights; a host backend that runs nothing */
    pb_matrix token_embd;     /* (vocab_size, d_model) */
    double embed_sigma;   /* standard deviation of token_embd's values (pb_noise_sigma) times embed_scale, set at load
                                 so that noise never downloads the table */
    float *final_norm;    /* (d_model) */
    float *final_norm_b;  /* (d_model) PB_NORM_LAYER, else NULL */
    float *pos_embd;      /* (context_length, d_model) PB_POSITION_LEARNED, else NULL */
    pb_matrix output;     /* (vocab_size, d_model); == token_embd when tied */
    float *inv_freq;      /* (head_dim / 2) in backend memory */
    float *inv_freq_host; /* (head_dim / 2) */
    float
        *inv_freq_local;  /* (head_dim / 2) in backend memory: sliding layers' RoPE (rope_theta_local > 0), else NULL */
    float *inv_freq_long; /* (head_dim / 2) in backend memory: LongRoPE's long factors (inv_freq: the short), else
                             NULL */
    pb_layer_weights *layers; /* (n_layers) */
    pb_vocab vocab;
    /* text (model_text.c); a missing or unsupported tokenizer or template
     * leaves these empty and the reason in text_error / chat_error */
    pb_tokenizer *tokenizer;
    pb_chat_template chat;
    int has_chat;
    int add_bos; /* the tokenizer puts BOS before plain text (GGUF tokenizer.ggml.add_bos_token,
                    tokenizer_config.json add_bos_token): Gemma */
    char text_error[512];
    char chat_error[512];
};

/* 1 when the model's backend keeps its memory apart from the host's (cuda,
 * checked). By kind, so that a shape-only model (a plan, which runs on a
 * host stand-in) is sized as the backend it plans for. */
static inline int pb_model_on_device(const pb_model *m) {
    return m->backend_kind == PB_BACKEND_CUDA || m->backend_kind == PB_BACKEND_CHECKED;
}

/* Checks hyperparameters for consistency (positive sizes, divisibility,
 * limits the kernels rely on). */
pb_status pb_model_config_validate(const pb_model_config *cfg);
/* RoPE inverse frequencies with the config's scaling: out (rotated dims /
 * 2); LongRoPE's long factors when long_factors, else its short ones. */
void pb_rope_inv_freq(const pb_model_config *cfg, int long_factors, float *out);
/* LongRoPE's rule, transformers': a sequence of T positions (the largest
 * position + 1) uses the long factors iff T > rope_original_context. 0 for
 * every other RoPE. */
int pb_rope_uses_long_factors(const pb_model_config *cfg, int T);
/* What RoPE multiplies the rotated dimensions by: LongRoPE's attention
 * factor, else 1. */
float pb_rope_scale(const pb_model_config *cfg);
/* out (rows, d) = the model's norm (RMSNorm or LayerNorm, cfg.norm) of x
 * with weight and bias (either may be NULL: not applied). out may be x. */
pb_status pb_model_norm(const pb_model *model, float *out, const float *x, const float *weight, const float *bias,
                        int rows, int d);
/* Layer L's attention: scale, softcap, and window when it slides. */
pb_attention_params pb_model_attention_params(const pb_model_config *cfg, int layer);
/* Layer L's RoPE frequencies in backend memory for a sequence of T
 * positions (local on sliding layers when the model has a local base;
 * LongRoPE's set for T, pb_rope_uses_long_factors). */
const float *pb_model_inv_freq(const pb_model *model, int layer, int T);
/* Sets each layer's fused views (w_qkv, b_qkv, w_gate_up) where its
 * matrices are contiguous, and clears them where they are not. */
void pb_model_fuse_views(pb_model *model);
/* The same for layer l alone (a streamed layer when it arrives). */
void pb_model_fuse_layer(pb_model *model, int layer);
/* Makes layer l's matrices usable: with streamed weights, reads them into
 * their slot unless it holds them, then starts reading layer `next`, the
 * one the caller will acquire next (-1: none; model/stream.h); a no-op
 * when resident. The executor calls it before each layer runs. */
pb_status pb_model_layer_acquire(pb_model *model, int layer, int next);
/* out (n floats) = n weight elements of dtype at backend memory src
 * (whole blocks of a quantised type), widened or decoded on the host. */
pb_status pb_model_weights_download(const pb_model *model, float *out, const void *src, pb_dtype dtype, size_t n);

#endif
