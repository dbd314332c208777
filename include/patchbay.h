/* patchbay public C API: status codes, errors, models, forward passes with
 * TransformerLens-named hook capture, greedy generation, patching sweeps and
 * their outputs, interventions, the refusal direction, report.html, .npy.
 * No CUDA types here; every handle is opaque. */
#ifndef PATCHBAY_H
#define PATCHBAY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The library's interface: exported from the shared libpatchbay (built
 * with hidden visibility, so only these are), plain in the static one. */
#if defined(__GNUC__)
#define PB_API __attribute__((visibility("default")))
#else
#define PB_API
#endif

typedef enum pb_status {
    PB_OK = 0,
    PB_ERR_IO,          /* a file could not be opened, read, mapped or written */
    PB_ERR_FORMAT,      /* a file's contents are malformed or contradict themselves */
    PB_ERR_ARG,         /* a caller passed an invalid argument */
    PB_ERR_OOM,         /* an allocation failed */
    PB_ERR_UNSUPPORTED, /* valid input this build cannot handle */
    PB_ERR_CUDA,        /* a CUDA, cuBLAS or NCCL call failed */
    PB_ERR_NUMERIC,     /* NaN or Inf where a finite number is required */
    PB_ERR_INTERRUPTED  /* stopped on request (pb_sweep_options.stop) between batches; completed rows are kept */
} pb_status;

/* Message describing the most recent failure on this thread ("" if none).
 * Valid until the next failing patchbay call on the same thread. */
PB_API const char *pb_last_error(void);
/* "PB_ERR_FORMAT" etc. */
PB_API const char *pb_status_name(pb_status status);

/* ---- model ---------------------------------------------------------- */

/* head_dim is at most 1024, so RoPE turns at most this many pairs. */
#define PB_MAX_ROPE_PAIRS 512

typedef enum pb_rope_scaling {
    PB_ROPE_SCALING_NONE = 0,
    PB_ROPE_SCALING_LINEAR,
    PB_ROPE_SCALING_LLAMA3,
    PB_ROPE_SCALING_LONGROPE /* Phi-3 128k / 3.5, Phi-4-mini: per-dimension short and long factors */
} pb_rope_scaling;

/* The MLP's activation: act(gate) * up, or act(up) without a gate. */
typedef enum pb_activation {
    PB_ACTIVATION_SILU = 0,  /* Llama, Mistral, Qwen2/3, Phi-3, OLMo-2 */
    PB_ACTIVATION_GELU_TANH, /* Gemma, GPT-2 ("gelu_new"): GELU with the tanh approximation */
    PB_ACTIVATION_GELU,      /* GPT-NeoX: exact GELU, x/2 (1 + erf(x / sqrt 2)) */
} pb_activation;

/* How a residual stream is normalised before (or after) a sublayer. */
typedef enum pb_norm_kind {
    PB_NORM_RMS = 0, /* x / rms(x) * w */
    PB_NORM_LAYER,   /* (x - mean) / std(x) * w + b: GPT-2, GPT-NeoX */
} pb_norm_kind;

/* Where positions enter. */
typedef enum pb_position_kind {
    PB_POSITION_ROPE = 0, /* rotary embeddings of q and k */
    PB_POSITION_LEARNED,  /* a learned row per position added to the token embedding (GPT-2) */
} pb_position_kind;

typedef struct pb_model_config {
    char arch[32]; /* "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3" */
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
    float rope_factor;           /* linear and llama3 */
    float rope_low_freq_factor;  /* llama3 */
    float rope_high_freq_factor; /* llama3 */
    int rope_original_context;   /* llama3, longrope (a sequence longer than this uses the long factors) */
    int has_qkv_bias;
    int tied_embeddings;
    int bos_id; /* -1 when unknown */
    int eos_id; /* -1 when unknown */
    /* The architecture beyond the Llama baseline, filled by the loader from
     * the family's descriptor and the file. Zero everywhere is plain Llama. */
    pb_activation activation;
    int qk_norm;               /* RMSNorm of every q and k head (head_dim weights) before RoPE: Qwen3, Gemma-3 */
    int sandwich_norm;         /* RMSNorm of the attention and MLP outputs before the residual add: Gemma-2/3 */
    float embed_scale;         /* embeddings are multiplied by it (Gemma: sqrt(d_model)); 0 means 1 */
    float attn_scale;          /* scores = q.k * attn_scale; 0 means 1 / sqrt(head_dim) */
    float attn_softcap;        /* > 0: scores = cap * tanh(scores / cap) before the mask (Gemma-2) */
    float final_softcap;       /* > 0: the same on the logits (Gemma-2) */
    int sliding_window;        /* > 0: on a sliding layer the query at i sees keys j with i - j < sliding_window */
    int sliding_period;        /* > 0: layer L is global (full causal) iff (L + 1) % sliding_period == 0, every
                             other layer slides; 0: every layer slides (when sliding_window > 0) */
    float rope_theta_local;    /* > 0: RoPE base of the sliding layers, never scaled (Gemma-3: 10000) */
    pb_norm_kind norm;         /* every norm of the model; rms_eps is its epsilon */
    pb_position_kind position; /* RoPE, or learned absolute embeddings (GPT-2: no RoPE) */
    int rotary_dims;           /* > 0: RoPE turns only the first rotary_dims of each head (GPT-NeoX
                                  rotary_pct); 0: all head_dim */
    int plain_mlp;             /* MLP without a gate: down(act(up x + b_up)) + b_down (GPT-2, GPT-NeoX) */
    int has_dense_bias;        /* biases on the attention output and the MLP projections (GPT-2, GPT-NeoX) */
    int parallel_block;        /* attention and MLP both read the block's input and add to it: no
                                  hook_resid_mid (GPT-NeoX use_parallel_residual) */
    int no_pre_norm;           /* sublayers read the raw residual; with sandwich_norm, norms after the
                                  sublayers only (OLMo-2) */
    int qk_norm_full;          /* with qk_norm: one norm over the whole q (n_heads * head_dim) and k
                                  (n_kv_heads * head_dim) projection, not per head (OLMo-2) */
    /* LongRoPE (rope_scaling PB_ROPE_SCALING_LONGROPE: Phi-3 128k, Phi-3.5,
     * Phi-4-mini): inv_freq[i] is divided by rope_long_factors[i] for a
     * sequence longer than rope_original_context, else by
     * rope_short_factors[i] (i < rotated dims / 2), and the rotated dims of q
     * and k are multiplied by rope_attn_factor */
    float rope_attn_factor;
    float rope_short_factors[PB_MAX_ROPE_PAIRS];
    float rope_long_factors[PB_MAX_ROPE_PAIRS];
} pb_model_config;

/* 1 when layer L attends through the sliding window. */
static inline int pb_layer_is_sliding(const pb_model_config *cfg, int layer) {
    if (cfg->sliding_window <= 0)
        return 0;
    return cfg->sliding_period <= 0 || (layer + 1) % cfg->sliding_period != 0;
}

/* What the loader took from the model family rather than from the file
 * (values GGUF does not store, Gemma's norm offset, the sliding pattern),
 * as one line of text for people to read; "" for the Llama baseline.
 * Borrowed static text. */
PB_API const char *pb_arch_assumptions(const pb_model_config *cfg);

typedef struct pb_model pb_model;

typedef enum pb_backend_kind {
    PB_BACKEND_CPU = 0,   /* OpenBLAS + OpenMP (the default) */
    PB_BACKEND_REFERENCE, /* naive single-threaded loops with double accumulation: the oracle; a row's
                             result never depends on what else is in its batch */
    PB_BACKEND_CUDA,      /* GPU 0; PB_ERR_UNSUPPORTED without CUDA or a device */
    PB_BACKEND_CHECKED    /* the cpu backend's arithmetic behind a device's memory boundary, every op's
                             buffers checked (host/backend/backend_checked.c): finds without a GPU what a
                             GPU run would trip over; slower than cpu */
} pb_backend_kind;

/* Storage type of the weight matrices (projections, embedding, unembedding);
 * norms, biases and every activation stay fp32. With a 16-bit type a
 * projection rounds its input activations to the same type and accumulates
 * in fp32, as cuBLAS does with bf16/fp16 tensor-core GEMMs.
 * PB_DTYPE_FILE keeps each matrix a GGUF stores in ggml's quantised blocks
 * (Q4_0 ... Q6_K) as it is, decoded into fp32 inside each projection with
 * fp32 inputs, and holds every other matrix as fp32: the results equal
 * those of the f32 load in a fraction of the memory (CPU and reference
 * backends). The quantised members name a matrix's storage and are not
 * load options. */
typedef enum pb_dtype {
    PB_DTYPE_F32 = 0,
    PB_DTYPE_BF16,
    PB_DTYPE_F16,
    PB_DTYPE_FILE, /* load option only: every matrix as stored */
    PB_DTYPE_Q4_0,
    PB_DTYPE_Q4_1,
    PB_DTYPE_Q5_0,
    PB_DTYPE_Q5_1,
    PB_DTYPE_Q8_0,
    PB_DTYPE_Q2_K,
    PB_DTYPE_Q3_K,
    PB_DTYPE_Q4_K,
    PB_DTYPE_Q5_K,
    PB_DTYPE_Q6_K,
} pb_dtype;

/* "f32", "bf16", "f16", "file", "q4_0" ... "q6_k" */
PB_API const char *pb_dtype_name(pb_dtype dtype);
/* Parses "f32"/"fp32"/"float32", "bf16"/"bfloat16", "f16"/"fp16"/"float16",
 * "file"/"native"; PB_ERR_ARG naming the accepted spellings otherwise. */
PB_API pb_status pb_dtype_parse(const char *text, pb_dtype *out);

/* Where the layers' weight matrices live. Resident: all in the backend's
 * memory from the load on. Stream: in the file (a GGUF), each layer's
 * matrices brought into one of two slots just before the layer runs (an
 * executor run advances every row of its batch through layer l before
 * l + 1, so each layer is read once per run); the embedding and
 * unembedding are read in place from the file's mapping where its bytes are
 * the storage (quantised with --dtype file, or f32) on a host backend, else
 * held resident (always on CUDA, whose slots are device memory). Auto:
 * resident when that fits weight_memory, else stream. */
typedef enum pb_weights_mode { PB_WEIGHTS_RESIDENT = 0, PB_WEIGHTS_STREAM, PB_WEIGHTS_AUTO } pb_weights_mode;

/* "resident", "stream", "auto" */
PB_API const char *pb_weights_mode_name(pb_weights_mode mode);
PB_API pb_status pb_weights_mode_parse(const char *text, pb_weights_mode *out);

typedef struct pb_load_options {
    int n_threads; /* CPU threads; <= 0 means all cores */
    pb_backend_kind backend;
    pb_dtype dtype; /* weight storage; PB_DTYPE_F32 (0) by default */
    int device;     /* CUDA device ordinal (PB_BACKEND_CUDA) */
    pb_weights_mode weights;
    size_t weight_memory; /* > 0: cap on the bytes the weights take in memory (stream, auto); the load is
                             refused, naming the numbers, when even streaming exceeds it */
    int shape_only;       /* 1: the hyperparameters, tokenizer and checked tensor table only, no weights read and
                             no device opened: for planning (pb_sweep_plan) a model this machine cannot hold;
                             running it is refused */
    /* LoRA adapters merged into the weights at load (PEFT folders:
     * adapter_config.json + adapter_model.safetensors), each times its
     * scale (adapter_scales NULL: 1); not with --weights stream. */
    const char *const *adapters;
    const float *adapter_scales;
    int n_adapters;
} pb_load_options;

/* "cpu", "reference", "cuda", "checked" */
PB_API const char *pb_backend_name(pb_backend_kind kind);
/* Parses "cpu", "reference" (or "ref"), "cuda" (or "gpu"), "checked". */
PB_API pb_status pb_backend_parse(const char *text, pb_backend_kind *out);

/* Loads a .gguf file or a Hugging Face checkpoint folder (config.json plus
 * model.safetensors or a sharded index). Every tensor shape is checked
 * against the hyperparameters before anything is computed. */
PB_API pb_status pb_model_load(pb_model **out, const char *path, const pb_load_options *options);
/* A model with seeded random weights at a named real shape, for benchmarks
 * and tests where real weights cannot be had. name is "smollm2-135m",
 * "llama3-8b", "llama3-70b", "qwen2-7b", "gemma3-270m" or "tiny", optionally followed by
 * ":LAYERS" to keep only the first LAYERS layers (e.g. "llama3-70b:4").
 * Projection and embedding weights are uniform with standard deviation 0.02,
 * norm weights uniform in [0.9, 1.1], biases uniform with standard deviation
 * 0.02; element i of tensor t is a pure function of (seed, t, i), so every
 * backend and dtype sees the same model. No tokenizer: token text is "<id>". */
PB_API pb_status pb_model_random(pb_model **out, const char *name, uint64_t seed, const pb_load_options *options);
/* Names pb_model_random accepts, comma-separated. */
PB_API const char *pb_model_random_names(void);
/* "path/to/model.gguf" or "random:NAME:LAYERS:SEED" */
PB_API const char *pb_model_get_source(const pb_model *model);
/* Bytes of weights resident in the backend's memory. */
PB_API size_t pb_model_weight_bytes(const pb_model *model);
/* 1 when some weight matrix is held in a quantised type (--dtype file). */
PB_API int pb_model_has_quantised(const pb_model *model);
/* 1 when the layers' weights stream from the file (pb_weights_mode). */
PB_API int pb_model_streams_weights(const pb_model *model);
PB_API void pb_model_free(pb_model *model);
/* Borrowed; valid until pb_model_free. */
PB_API const pb_model_config *pb_model_get_config(const pb_model *model);

/* Text of one token id (byte-level tokens decoded to raw bytes), written to
 * buf NUL-terminated. Returns PB_ERR_ARG for an id outside the vocabulary. */
PB_API pb_status pb_model_token_text(const pb_model *model, int id, char *buf, size_t buf_size);

/* ---- text ----------------------------------------------------------- */

/* Tokenizes UTF-8 text with the model's tokenizer, nothing added (no BOS:
 * pb_model_tokenize_plain is the prompt rule).
 * parse_special: text spelling a special token becomes that token (as in
 * chat templates). *ids is malloc'd (release with free()). */
PB_API pb_status pb_model_tokenize(const pb_model *model, const char *text, int parse_special, int32_t **ids,
                                   int *n_ids);
/* A plain-text prompt (no chat template) as every command and a sweep's
 * "bos" take it: tokenized (pb_model_tokenize), then the model's BOS put
 * first when bos = 1, never when bos = 0, and when bos = -1 as the model's
 * tokenizer does (its add_bos_token: Gemma yes, SmolLM2 and Llama-3 no), as
 * transformers' tokenizer(text) does. *bos_added (may be NULL): whether a
 * BOS was put. PB_ERR_ARG when bos = 1 and the model names no BOS token. */
PB_API pb_status pb_model_tokenize_plain(const pb_model *model, const char *text, int parse_special, int bos,
                                         int32_t **ids, int *n_ids, int *bos_added);
/* One user turn (after a system turn when given; system == NULL keeps the
 * template's default system behaviour) rendered with the model's chat
 * template plus the generation prompt, then tokenized, as transformers'
 * apply_chat_template(..., add_generation_prompt=True) does. */
PB_API pb_status pb_model_chat_tokenize(const pb_model *model, const char *system, const char *user, int32_t **ids,
                                        int *n_ids);
/* Decodes ids to text; *text is malloc'd. */
PB_API pb_status pb_model_detokenize(const pb_model *model, const int32_t *ids, int n_ids, char **text);
/* Overrides the detected chat template: a name ("chatml", "qwen3",
 * "llama3", "llama2", "gemma", "gemma3") or a file holding a Jinja template. */
PB_API pb_status pb_model_set_chat_template(pb_model *model, const char *name_or_file);

/* ---- hook capture --------------------------------------------------- */

/* A set of hook points to capture, chosen by TransformerLens name:
 * hook_embed, blocks.L.hook_resid_pre, blocks.L.hook_resid_mid,
 * blocks.L.hook_resid_post, blocks.L.hook_attn_out, blocks.L.hook_mlp_out,
 * blocks.L.attn.hook_z, blocks.L.attn.hook_q, blocks.L.attn.hook_k,
 * blocks.L.attn.hook_v, blocks.L.attn.hook_attn_scores,
 * blocks.L.attn.hook_pattern, ln_final.hook_normalized. The attention
 * patterns take n_heads * T * T floats per layer each.
 * The pattern is a comma-separated list of globs ('*' matches any run of
 * characters, '?' one character), e.g. "blocks.*.hook_resid_pre,hook_embed".
 * A pattern that matches no hook point is refused (PB_ERR_ARG). */
typedef struct pb_capture pb_capture;

PB_API pb_status pb_capture_create(pb_capture **out, const pb_model *model, const char *pattern);
PB_API void pb_capture_free(pb_capture *capture);
PB_API int pb_capture_count(const pb_capture *capture);
/* Borrowed; valid until pb_capture_free. */
PB_API const char *pb_capture_name(const pb_capture *capture, int index);
/* After a forward: the captured tensor, row-major, with its shape:
 * (T, d_model) for residual-width hooks, (T, n_heads, head_dim) for z and q,
 * (T, n_kv_heads, head_dim) for k and v, (n_heads, T, T) [head, query, key]
 * for attn.hook_attn_scores (q.k / sqrt(head_dim) after RoPE, -inf above
 * the diagonal, as TransformerLens) and attn.hook_pattern (their softmax,
 * 0 above the diagonal). Borrowed; valid until the next
 * forward with this capture or pb_capture_free. */
PB_API const float *pb_capture_data(const pb_capture *capture, int index, int *n_dims, int64_t shape[3]);

/* ---- logit lens ------------------------------------------------------ */

/* The logit lens: the final RMSNorm (with its weight) and the unembedding
 * applied to the residual stream entering every layer and to the last
 * layer's output, as TransformerLens's
 * cache.accumulated_resid(apply_ln=True) @ W_U (with incl_mid=False).
 * out (n_layers + 1, n_positions, vocab_size) float32, caller-allocated:
 * row 0 reads blocks.0.hook_resid_pre (the embeddings), row L + 1
 * blocks.L.hook_resid_post, so row n_layers is the model's own logits.
 * positions (n_positions) index the prompt, negative ones from its end;
 * positions NULL means every position (n_positions is then ignored and
 * out holds T positions). One forward pass. */
PB_API pb_status pb_logit_lens(pb_model *model, const int32_t *ids, int T, const int *positions, int n_positions,
                               float *out);

/* ---- forward and generation ----------------------------------------- */

/* Runs the model on ids[0..T). logits (T, vocab_size) may be NULL; capture
 * may be NULL. */
PB_API pb_status pb_forward(pb_model *model, const int32_t *ids, int T, float *logits, pb_capture *capture);

/* Greedy decoding with a KV cache: appends up to max_new tokens to
 * out_ids (capacity max_new), stopping after eos. *n_out receives the
 * number written. */
PB_API pb_status pb_generate(pb_model *model, const int32_t *ids, int T, int max_new, int32_t *out_ids, int *n_out);

/* How the next token is chosen: temperature, then top-k, top-p and min-p,
 * in the order of transformers' generate. Zero-initialised: greedy. */
typedef struct pb_sampling {
    double temperature; /* 0: greedy (the first largest logit; the rest ignored); > 0: logits / temperature */
    int top_k;          /* keep the k most likely tokens (and any tied with the k-th); 0: all */
    double top_p;       /* keep the most likely tokens while the mass before each is below top_p; 0 or 1: all */
    double min_p;       /* drop tokens less likely than min_p times the most likely; 0: none */
    uint64_t seed;      /* draw of sample k of a prompt at step t: a hash of (seed, the prompt's ids, k, t) */
} pb_sampling;

struct pb_intervention;

typedef struct pb_generate_options {
    int max_new;                 /* tokens per continuation, at most; it also ends after eos */
    int n_samples;               /* continuations per prompt; 0 means 1 */
    const pb_sampling *sampling; /* NULL: greedy */
    /* A continuation also ends with the token whose text completes one of
     * these strings (its ids and text include the string, as
     * transformers' stop_strings). Needs the model's tokenizer. */
    const char *const *stop;
    int n_stop;
    /* NULL: none. Applied to every prompt alike: a PATCH's positions index
     * each prompt (every prompt must be long enough). */
    const struct pb_intervention *iv;
    int max_batch; /* continuations decoded together (each holds a KV cache); 0: 64 */
    /* Called after every decoding step with the continuations finished so
     * far and their total; may be NULL. */
    void (*progress)(int64_t done, int64_t total, void *user);
    void *progress_user;
} pb_generate_options;

/* Many prompts at once, K continuations each, with batched KV caches:
 * out_ids (n_prompts * n_samples, max_new) row-major, continuation
 * s = prompt * n_samples + sample; n_out (n_prompts * n_samples) tokens
 * in each. Greedy gives pb_generate's tokens for every prompt. A
 * continuation's tokens depend only on the seed, its prompt's tokens and
 * its sample's index (and the model), not on max_batch, on the other
 * prompts or on the prompt's place among them (exactly so on the reference
 * backend, whose rows never depend on their neighbours). */
PB_API pb_status pb_generate_batch(pb_model *model, const int32_t *const *ids, const int *T, int n_prompts,
                                   const pb_generate_options *options, int32_t *out_ids, int *n_out);
/* The options' values alone, before any model: max_new, n_samples and
 * max_batch not negative, temperature finite and >= 0, top_k >= 0, top_p
 * and min_p in [0, 1], no empty stop string. */
PB_API pb_status pb_generate_options_check(const pb_generate_options *options);

/* ---- activation-patching sweeps (semantics: docs/patching.md) -------- */

typedef enum pb_patch_mode {
    PB_MODE_DENOISING = 0, /* run corrupted, patch clean activations in (sufficiency) */
    PB_MODE_NOISING,       /* run clean, patch corrupted activations in (necessity) */
    PB_MODE_INTERCHANGE    /* run base, patch source activations in at mapped positions */
} pb_patch_mode;

typedef enum pb_component {
    PB_COMPONENT_RESID_PRE = 0,
    PB_COMPONENT_RESID_MID,
    PB_COMPONENT_RESID_POST,
    PB_COMPONENT_ATTN_OUT,
    PB_COMPONENT_MLP_OUT,
    PB_COMPONENT_Z, /* one query head */
    PB_COMPONENT_Q, /* one query head, before RoPE */
    PB_COMPONENT_K, /* one key-value head, before RoPE */
    PB_COMPONENT_V, /* one key-value head */
    PB_COMPONENT_COUNT
} pb_component;

/* "resid_pre", ..., "v"; NULL for an invalid value. */
PB_API const char *pb_component_name(pb_component component);
/* TransformerLens hook name suffix: "hook_resid_pre", ..., "attn.hook_v". */
PB_API const char *pb_component_hook(pb_component component);

typedef enum pb_metric_kind {
    PB_METRIC_LOGIT_DIFF = 0,
    PB_METRIC_LOGPROB,
    PB_METRIC_REFUSAL_SCORE,
    PB_METRIC_KL,
    PB_METRIC_PROJECTION,
    PB_METRIC_CALLBACK
} pb_metric_kind;

/* A user metric: values are the logits (vocab_size) at the metric
 * position, or, when the callback asks for the residual, the residual
 * stream (d_model) entering `layer` at the metric position. */
typedef float (*pb_metric_fn)(const float *values, int n, void *user);

typedef struct pb_sweep_options {
    size_t max_memory;  /* bytes for batch activations; 0: 1 GiB, or with weights streamed the plan's budget
                           (pb_sweep_plan: on a device three quarters of what the weights and caches leave) */
    int max_batch_rows; /* 0: 256 at most, or with streamed weights on a device every row of a group of pairs
                           whose caches are built together (pb_plan.pairs_per_group), each batch as many as
                           max_memory allows */
    /* Called after each batch from the thread running the sweep. */
    void (*progress)(int64_t rows_done, int64_t rows_total, void *user);
    void *progress_user;
    /* Replaces the spec's metric when set. */
    pb_metric_fn metric_fn;
    void *metric_user;
    int metric_fn_residual_layer; /* -1: the callback gets logits; else the residual entering this layer (n_layers = final residual) */
    /* Also run rows whose source and base activations are bit-identical
     * (their effect is exactly 0): for tests and for measuring what the
     * skip saves. Rows that cannot reach the metric are never run. */
    int run_trivial_rows;
    /* When set, read before each pair and after each batch: non-zero makes
     * pb_sweep_run(_rows) stop after the current batch and return
     * PB_ERR_INTERRUPTED, keeping every completed row and baseline (write them
     * with pb_sweep_checkpoint_write). A signal handler may set it. */
    volatile int *stop;
} pb_sweep_options;

typedef struct pb_sweep pb_sweep;

/* Parses and checks a JSON spec against the model (docs/patching.md) and
 * plans the rows. spec_dir resolves relative file paths in the spec (NULL:
 * the working directory). Bad specs return PB_ERR_ARG with a message naming
 * the key path and the allowed range. */
PB_API pb_status pb_sweep_create(pb_sweep **out, pb_model *model, const char *spec_json, const char *spec_dir,
                                 const pb_sweep_options *options);
PB_API void pb_sweep_free(pb_sweep *sweep);

/* Runs every row not yet computed. */
PB_API pb_status pb_sweep_run(pb_sweep *sweep);
/* Runs the given rows only (a worker's share); rows already computed are skipped. */
PB_API pb_status pb_sweep_run_rows(pb_sweep *sweep, const int64_t *rows, int64_t n_rows);

typedef struct pb_sweep_summary {
    pb_patch_mode mode;
    pb_metric_kind metric;
    int n_pairs;
    int n_pairs_used; /* pairs whose |clean - corrupted| reaches the floor */
    int64_t n_sites;
    int64_t n_rows;          /* (pair, site) combinations */
    int64_t n_rows_executed; /* rows actually run (the rest are exactly 0 by construction) */
    int64_t n_rows_done;
    int64_t n_rows_restored;          /* done rows loaded from a checkpoint (pb_sweep_checkpoint_load) */
    int64_t n_rows_executed_restored; /* of n_rows_executed, those run before the checkpoint was written */
    double clean_baseline;            /* mean over pairs; in interchange: source */
    double corrupted_baseline;        /* in interchange: base */
    double total_effect;              /* clean - corrupted */
    int64_t n_significant;
    double circuit_fraction;
    double flops_executed; /* by the batched rows */
    double flops_naive;    /* one full forward per (pair, site) */
    double effect_floor;   /* pairs with |clean - corrupted| below it are excluded */
    double significance_threshold;
} pb_sweep_summary;

typedef struct pb_site_result {
    pb_component component;
    int layer;
    int head;          /* -1 when the component has no head */
    int position;      /* token index (negative: end-aligned); INT32_MIN when several positions were patched together */
    int all_positions; /* 1: every (mapped) position of each pair patched together */
    int n_positions;   /* else: the positions patched together (borrowed), negative = end-aligned */
    const int *positions;
    double patched;        /* mean over used pairs of the patched metric */
    double effect;         /* mean normalised effect; NaN when no pair is usable or not yet run */
    double standard_error; /* of the mean over pairs */
    int significant;
} pb_site_result;

PB_API pb_status pb_sweep_get_summary(const pb_sweep *sweep, pb_sweep_summary *summary);
PB_API int64_t pb_sweep_site_count(const pb_sweep *sweep);
PB_API pb_status pb_sweep_get_site(const pb_sweep *sweep, int64_t site, pb_site_result *result);
/* Per-pair values: base and source metric, and patched metric and
 * normalised effect of one site (NaN where undefined). */
PB_API pb_status pb_sweep_get_pair(const pb_sweep *sweep, int pair, double *base, double *source);
PB_API pb_status pb_sweep_get_row(const pb_sweep *sweep, int pair, int64_t site, double *patched, double *effect);

/* Estimated cost of a row, for splitting rows over workers so they finish
 * together: layers recomputed x positions recomputed, (n_layers - patch
 * layer) * (T - first patched position), from the site alone (whether a row
 * is trivial is known only once its pair's caches exist). -1 for a row out
 * of range. */
PB_API double pb_sweep_row_cost(const pb_sweep *sweep, int64_t row);
/* Done state of a row: 0 pending, 1 done (patched value known), 2 done and
 * trivial (patched == base by construction). -1 out of range. */
PB_API int pb_sweep_row_state(const pb_sweep *sweep, int64_t row);
/* Marks a row done with a value computed elsewhere (another worker);
 * trivial as above. executed: 1 when that worker ran it through the model
 * (it counts in n_rows_executed). */
PB_API pb_status pb_sweep_set_row(pb_sweep *sweep, int64_t row, double patched, int trivial, int executed);
/* Records a pair's baselines computed elsewhere. */
PB_API pb_status pb_sweep_set_pair(pb_sweep *sweep, int pair, double base, double source);
/* 1 when the pair's baselines are known. */
PB_API int pb_sweep_pair_ready(const pb_sweep *sweep, int pair);

/* ---- activation gradients (docs/patching.md, "Attribution patching") --- */

/* The metric a gradient is taken of, at `position` (0 .. T - 1):
 *   PB_METRIC_LOGIT_DIFF    mean logit of positive - mean logit of negative
 *   PB_METRIC_LOGPROB       log P(the distinct tokens of positive)
 *   PB_METRIC_REFUSAL_SCORE log P(that set) - log P(every other token)
 *   PB_METRIC_KL            KL(ref || model): ref_logprobs (vocab_size), the
 *                           reference distribution's log-probabilities, held fixed
 *   PB_METRIC_PROJECTION    <x, direction>, x the residual stream entering
 *                           `layer` (hook_post 0) or leaving it (1),
 *                           direction (d_model)
 * Token ids lie in the vocabulary. Every pointer is borrowed for the call. */
typedef struct pb_grad_metric {
    pb_metric_kind kind;
    int position;
    const int32_t *positive;
    int n_positive;
    const int32_t *negative;
    int n_negative;
    const double *ref_logprobs;
    const float *direction;
    int layer, hook_post;
} pb_grad_metric;

/* The metric's gradient with respect to activations, as PyTorch autograd
 * gives it on transformers' forward (the total derivative through every
 * later use; docs/patching.md): one forward of ids (T) holding every
 * layer's activations, then one backward pass, on the model's backend.
 * grads: a capture of model (pb_capture_create) of hook points of the
 * kinds hook_resid_pre, hook_resid_mid, hook_resid_post, hook_attn_out,
 * hook_mlp_out, attn.hook_z, attn.hook_q, attn.hook_k, attn.hook_v and
 * attn.hook_pattern (any other is refused by name, PB_ERR_ARG); each
 * receives d metric / d activation in the activation's shape
 * (pb_capture_data; rows after `position` are zero). *value = the metric.
 * A non-finite logit at the position (or projection) is PB_ERR_NUMERIC,
 * naming it; a pb_metric_fn callback has no derivative: PB_ERR_UNSUPPORTED. */
PB_API pb_status pb_gradients(pb_model *model, const int32_t *ids, int T, const pb_grad_metric *metric,
                              pb_capture *grads, double *value);

/* ---- planning (docs/patching.md, "Planning") ------------------------- */

/* What a plan may use; zeros take the defaults. */
typedef struct pb_plan_options {
    size_t device_memory;    /* bytes one rank may hold; 0: this machine's physical memory or its cgroup's limit,
                                if lower (cpu, reference, checked), the device's total (cuda, when present) */
    int n_ranks;             /* ranks (GPUs) splitting the rows; 0: one */
    pb_weights_mode weights; /* as the load's: auto holds the weights resident when they fit beside the caches
                                and one row's activations, else streams them */
    size_t weight_memory;    /* the load's cap (0: none) */
    size_t max_memory;       /* the sweep's batch budget (0: its default, 1 GiB; streamed on a device, all that
                                is left, as waves read every layer once) */
    double flops_per_s;      /* compute rate for the time bound (0: the backend's assumed rate) */
    double link_bytes_per_s; /* rate streamed layers arrive at (0: the backend's assumed rate) */
} pb_plan_options;

/* A sweep's plan, per rank where it says so. Run with the same model
 * options plus --weights, --weight-memory and --max-memory as planned, a
 * sweep sizes its batches (waves) the same way and streams the same bytes. */
typedef struct pb_plan {
    const char *method;      /* the spec's: "exact", "atp" or "atp*" (a static string) */
    int estimate;            /* 1: atp or atp*: rows estimated, no batches (but verification's); waves are groups
                                of pairs run together */
    pb_weights_mode weights; /* resident or stream */
    size_t weight_memory;    /* a cap that admits the plan's weights (the --weight-memory to pass) */
    size_t max_memory;       /* the batch budget (the --max-memory to pass) */
    size_t device_memory;    /* per rank, as given or found */
    int n_ranks;
    int rows_per_wave;         /* a batch's rows at most */
    int tokens_per_wave;       /* and tokens */
    int pairs_per_group;       /* exact: pairs whose run caches are built together (streamed, one read of the
                                  layers for the group's base prompts and one for its source prompts); 0 for an
                                  estimate */
    int64_t rows;              /* pending rows, all ranks */
    int64_t rows_run;          /* of those, rows that reach the metric (an upper bound on the rows run) */
    int64_t waves;             /* batches, all ranks */
    int64_t waves_max_rank;    /* on the busiest rank */
    int64_t base_runs;         /* exact: executor runs building run caches, all ranks (two per group) */
    double bytes_streamed;     /* layer bytes read per sweep, all ranks (0 resident) */
    double bytes_loaded;       /* weights read once at load, all ranks */
    uint64_t weights_resident; /* bytes the weights take held resident */
    uint64_t weights_streamed; /* and streamed (0 when the model cannot stream) */
    uint64_t peak_weights;     /* per rank at the plan's peak: the weights as planned */
    uint64_t peak_caches;      /* a group's run caches (pairs_per_group pairs, two each; those beyond one pair's
                                  within max_memory) and the metric's arrays (an estimate: its largest
                                  group's captures, logits and gradient scratch; on cuda or checked its scratch
                                  alone, the captures and logits being host memory: peak_host) */
    uint64_t peak_activations; /* the batch: executor workspace, patch values, logits, host scratch */
    uint64_t peak_total;       /* weights + caches + activations: what device_memory must hold */
    uint64_t peak_host;        /* an estimate on cuda or checked: its largest group's captures and logits, held in
                                  host memory beside the device's peak_total; else 0 */
    double flops;              /* all ranks: base runs and batches */
    double flops_per_s;        /* rates assumed */
    double link_bytes_per_s;
    double seconds_compute; /* the slowest rank's FLOPs at flops_per_s */
    double seconds_link;    /* its streamed bytes at link_bytes_per_s */
    double seconds_bound;   /* the larger: no run of this plan is faster */
    char why_not[512];      /* when the plan cannot run: why, with the numbers; else "" */
} pb_plan;

/* Plans the sweep's pending rows for options (NULL: defaults). The model
 * may be loaded shape-only (pb_load_options.shape_only). PB_ERR_OOM (the
 * plan filled and why_not set) when even streamed weights, one pair's caches
 * and one row's activations exceed the memory; PB_ERR_UNSUPPORTED when the
 * model must stream and cannot. */
PB_API pb_status pb_sweep_plan(const pb_sweep *sweep, const pb_plan_options *options, pb_plan *plan);

/* ---- checkpoints (preemption: docs/patching.md, "Checkpoints") -------- */

/* What a checkpoint must have been written for: the model file (path, size
 * and a 64-bit hash of every byte, util/file_hash.h; for a folder, of every
 * file in it: config, tokenizer and each shard), the spec (SHA-256 of its
 * canonical JSON: keys sorted, no whitespace) and the backend and compute
 * dtype. */
typedef struct pb_sweep_fingerprint {
    char model_path[1024];
    char model_digest[96]; /* "<bytes>:<16 hex digits>" */
    char spec_digest[72];  /* sha256 hex */
    char backend[32];      /* "cpu/f32", "reference/f32", "cuda/bf16", ... */
    int model_unchecked;   /* 1: no model digest (skip_model): loading skips the model check, writing is refused */
} pb_sweep_fingerprint;

/* How pb_sweep_fingerprint_compute_with hashes the model. */
typedef struct pb_fingerprint_options {
    /* A file caching model hashes by (device, inode, size, mtime, ctime):
     * a later run on the same unchanged file reads it instead of every byte.
     * NULL: no cache. Created or updated as needed; failures to write it are
     * ignored (it only saves time). */
    const char *hash_cache;
    /* 1: do not hash the model at all (ranks other than rank 0 of a job,
     * whose rank 0 checks the model for everyone). */
    int skip_model;
    /* LoRA adapters merged at load (pb_load_options): every file of each
     * folder and its scale are hashed into the model's digest. */
    const char *const *adapters;
    const float *adapter_scales;
    int n_adapters;
} pb_fingerprint_options;

/* model_path may be a pb_model_get_source() "random:..." name. Reads every
 * byte of the model (no cache): pb_sweep_fingerprint_compute_with with
 * options NULL. */
PB_API pb_status pb_sweep_fingerprint_compute(pb_sweep_fingerprint *fingerprint, const char *model_path,
                                              const char *spec_json, pb_backend_kind backend, pb_dtype dtype);
/* The same with options (may be NULL). */
PB_API pb_status pb_sweep_fingerprint_compute_with(pb_sweep_fingerprint *fingerprint, const char *model_path,
                                                   const char *spec_json, pb_backend_kind backend, pb_dtype dtype,
                                                   const pb_fingerprint_options *options);
/* Writes every done row (patched value, trivial flag) and every known pair
 * baseline to path (temporary file, fsync, rename). */
PB_API pb_status pb_sweep_checkpoint_write(const pb_sweep *sweep, const char *path,
                                           const pb_sweep_fingerprint *fingerprint);
/* Loads a checkpoint into a fresh sweep of the same spec and model: its done
 * rows are not run again. A checkpoint written for another model file, spec
 * or backend is refused with PB_ERR_ARG naming the mismatch; a truncated or
 * corrupt file with PB_ERR_FORMAT. */
PB_API pb_status pb_sweep_checkpoint_load(pb_sweep *sweep, const char *path, const pb_sweep_fingerprint *fingerprint);

/* Writes results.json, one .npy per component and report.txt into dir
 * (docs/patching.md). An existing non-empty dir is refused unless overwrite. */
PB_API pb_status pb_sweep_write(const pb_sweep *sweep, const char *dir, int overwrite);

/* The same outputs in memory, built as pb_sweep_write builds them (which
 * writes exactly these): every .npy array, results.json's and report.txt's
 * text. The caller owns them: pb_sweep_outputs_free. */
typedef struct pb_sweep_array {
    char name[48];    /* the .npy file's name without ".npy": "resid_pre", "z", "z_all", "attn_out_groups" */
    float *data;      /* (shape) row-major: [layer, pos], [layer, head, pos], ... */
    int n_dims;       /* 2 or 3 */
    int64_t shape[3]; /* unused dims 0 */
} pb_sweep_array;

typedef struct pb_sweep_outputs {
    char *results_json; /* NUL-terminated */
    char *report_text;  /* NUL-terminated */
    pb_sweep_array *arrays;
    int n_arrays;
} pb_sweep_outputs;

/* On failure out is left empty (safe to free). */
PB_API pb_status pb_sweep_outputs_build(const pb_sweep *sweep, pb_sweep_outputs *out);
PB_API void pb_sweep_outputs_free(pb_sweep_outputs *out);
/* 1 when name (no folder) is one a sweep's outputs use: results.json,
 * report.txt, report.html or a component's .npy. */
PB_API int pb_sweep_is_output_name(const char *name);

/* Token ids of a pair's prompts as the sweep planned them: source = 0 the
 * patched (base) run, 1 the run whose activations are patched in (clean in
 * denoising). Borrowed; valid until pb_sweep_free. */
PB_API pb_status pb_sweep_get_pair_tokens(const pb_sweep *sweep, int pair, int source, const int32_t **ids, int *T);
/* How a pair's prompt (source as above) became token ids. Plain text gets a
 * BOS as pb_model_tokenize_plain puts one; a chat template may begin with it
 * (SmolLM2's does). */
typedef struct pb_prompt_info {
    const char *text;    /* the text given, or NULL (token ids, or noise) */
    int chat;            /* 1: rendered with the model's chat template */
    const char *system;  /* chat: the system prompt given; NULL: the template's default */
    int is_noise;        /* the clean prompt's ids with noise on their embeddings */
    int starts_with_bos; /* the first id is the model's BOS token */
    int bos_added;       /* plain text: patchbay put the BOS first (the spec's "bos", else the tokenizer's
                            add_bos_token, as transformers' tokenizer does; Gemma) */
} pb_prompt_info;
PB_API pb_status pb_sweep_get_prompt_info(const pb_sweep *sweep, int pair, int source, pb_prompt_info *info);

/* ---- interventions during generation ------------------------------------ */

typedef enum pb_intervention_kind {
    PB_INTERVENE_NONE = 0,
    PB_INTERVENE_PATCH,  /* replace (component, layer, head) at prompt positions by a source run's values */
    PB_INTERVENE_ABLATE, /* x -= (x . u) u on hook_embed, hook_pos_embed, every attn_out and mlp_out, all positions */
    PB_INTERVENE_ADD     /* resid_pre of `layer` += scale * u at every position; layer n_layers: the final
                            residual (the last block's hook_resid_post), before the final norm */
} pb_intervention_kind;

/* Every pointer is borrowed for the duration of the call that takes it. */
typedef struct pb_intervention {
    pb_intervention_kind kind;
    /* PATCH */
    pb_component component;
    int layer; /* PATCH and ADD */
    int head;  /* head of z/q/k/v; -1: every head (values are whole rows) or no head */
    int n_positions;
    const int *positions; /* (n_positions) prompt positions, ascending */
    const float *values;  /* (n_positions, width) host: width = d_model or head_dim */
    /* ABLATE and ADD */
    const float *direction; /* (d_model); ABLATE normalises it, ADD adds scale * direction as given */
    double scale;
} pb_intervention;

/* A forward over all positions with the intervention; logits (T, vocab)
 * host, may be NULL; capture may be NULL. */
PB_API pb_status pb_forward_intervened(pb_model *model, const int32_t *ids, int T, const pb_intervention *iv,
                                       float *logits, pb_capture *capture);
/* Greedy decoding under the intervention (PATCH applies to the prompt's
 * positions only; ABLATE and ADD to every position, generated ones too). */
PB_API pb_status pb_generate_intervened(pb_model *model, const int32_t *ids, int T, int max_new,
                                        const pb_intervention *iv, int32_t *out_ids, int *n_out);
/* 1 when a refusal phrase ("I'm sorry", "I cannot", "As an AI", ...;
 * whole words, case-insensitive) starts within the first 100 characters
 * after leading whitespace, else 0 (phrase list: host/patching/intervene.c). */
PB_API int pb_text_is_refusal(const char *text);

/* A refusal rate over prompts, K continuations each, with a 95% interval
 * that treats prompts, not continuations, as the units: the K samples of
 * one prompt are not independent. */
typedef struct pb_rate {
    int n_prompts, n_samples; /* samples per prompt */
    int refused;              /* continuations judged refusals, of n_prompts * n_samples */
    double rate;              /* mean over prompts of each prompt's refused fraction */
    double low, high;         /* 95% interval */
    double n_effective;       /* the sample size the interval is computed at */
} pb_rate;

/* refused (n_prompts): how many of prompt i's n_samples continuations were
 * refusals. The interval is Wilson's score interval at the effective
 * sample size p(1 - p) / var (Kish; Korn and Graubard 1998), var the
 * variance of the mean of the prompts' fractions (between-prompt sample
 * variance / n_prompts), kept within [1, n_prompts * n_samples]; with no
 * variance (every prompt alike) at n_prompts. With one sample per prompt
 * (greedy), binomial data: Wilson's interval at n_prompts. */
PB_API pb_status pb_rate_estimate(const int *refused, int n_prompts, int n_samples, pb_rate *out);
/* A TransformerLens hook name that a patch can edit, "blocks.L.hook_resid_pre"
 * ... "blocks.L.attn.hook_v" with L < n_layers, as (component, layer).
 * PB_ERR_ARG for any other name (hook_embed and ln_final.hook_normalized
 * included). */
PB_API pb_status pb_hook_name_parse(const char *name, int n_layers, pb_component *component, int *layer);

/* ---- the refusal direction (difference in means, Arditi et al. 2024) ----- */

/* Prompts as token ids, already chat-templated; borrowed. */
typedef struct pb_prompt_set {
    int n;
    const int32_t *const *ids; /* (n) arrays of T[i] ids */
    const int *T;              /* (n) */
} pb_prompt_set;

typedef struct pb_direction_inputs {
    pb_prompt_set harmful_train, harmless_train;
    pb_prompt_set harmful_val, harmless_val;
    /* Post-instruction positions (the template tokens after the user
     * message, e.g. ChatML's "<|im_end|>\n<|im_start|>assistant\n"): the
     * last n_post positions of every prompt. 0: the longest common suffix
     * of all train prompts (at most 16 tokens). */
    int n_post;
    const int32_t *refusal_ids; /* (n_refusal_ids) the refusal token set of the score */
    int n_refusal_ids;
    /* Search limits; 0 picks the default. */
    int layer_stride;          /* candidate layers 0, s, 2s, ... (default 1) */
    double max_layer_fraction; /* candidates only at layers < fraction * n_layers (default 0.8) */
    double kl_threshold;       /* KL filter (default 0.1) */
    int max_train;             /* use at most this many prompts per train side (default: all) */
    int max_val;               /* at most this many per validation side (default: all) */
    int max_batch_tokens;      /* tokens packed into one executor run (default 4096) */
} pb_direction_inputs;

typedef struct pb_direction_candidate {
    int layer;
    int position;          /* negative: from the end (-1 = last token) */
    double norm;           /* |r(l, p)| */
    double ablation_score; /* mean refusal score, harmful validation, direction ablated */
    double addition_score; /* mean refusal score, harmless validation, r added at layer l */
    double kl;             /* mean KL(unablated || ablated), harmless validation, last position */
    int passes;            /* 1 when it passes every filter */
} pb_direction_candidate;

/* Owns its arrays: release with pb_direction_result_free. */
typedef struct pb_direction_result {
    int d_model, n_layers, n_post;
    int layer, position;                       /* the selected candidate; position negative (from the end) */
    float *direction;                          /* (d_model) unit */
    float *difference;                         /* (d_model) the raw mean difference r(layer, position) */
    double norm;                               /* |difference| */
    double ablation_score, addition_score, kl; /* of the selected candidate */
    int selected_passes; /* 0: no candidate passed every filter; the best ablation score under the KL filter (or, failing that, overall) was taken */
    double baseline_harmful, baseline_harmless; /* mean refusal scores without intervention */
    float *differences;                         /* (n_layers, n_post, d_model) r(l, p) for every layer and position */
    int n_candidates;
    pb_direction_candidate *candidates;                                   /* (n_candidates) */
    int n_harmful_train, n_harmless_train, n_harmful_val, n_harmless_val; /* counts used */
    double seconds_means, seconds_candidates;
} pb_direction_result;

/* Computes every candidate r(l, p) = mean resid_pre over harmful prompts -
 * mean over harmless prompts, scores each on the validation prompts by
 * directional ablation, activation addition and the KL ablation causes,
 * and selects one by the paper's rule. On failure out is left empty (safe
 * to free). Errors: PB_ERR_ARG with a message for empty sets, prompts
 * shorter than n_post, out-of-vocabulary ids, bad limits. */
PB_API pb_status pb_direction_compute(pb_model *model, const pb_direction_inputs *in, pb_direction_result *out);
/* Frees the arrays and empties r; r may already be empty. */
PB_API void pb_direction_result_free(pb_direction_result *r);

/* Provenance written into direction.json; borrowed. */
typedef struct pb_direction_provenance {
    const char *model_path;
    const char *prompt_file;
} pb_direction_provenance;

/* Writes dir/direction.npy (float32 (d_model,), unit: loads as the sweep's
 * projection metric direction), dir/differences.npy (float32 (n_layers,
 * n_post, d_model), every candidate) and dir/direction.json (schema
 * "patchbay.direction/1") as one set: all three, or on a failed write
 * (a full disk) none of them, an earlier direction in dir left whole.
 * Creates dir (mkdir -p) when missing. Checking that dir may be written
 * (empty, or the caller allows overwriting) is the caller's. */
PB_API pb_status pb_direction_write(const pb_direction_result *r, const char *dir, const pb_direction_provenance *prov);

/* ---- export of the direction-ablated ("abliterated") model ------------ */

/* The output's format; AUTO: the source's own (a GGUF file exports to
 * GGUF, a Hugging Face folder to safetensors). */
typedef enum pb_export_format { PB_EXPORT_AUTO = 0, PB_EXPORT_SAFETENSORS, PB_EXPORT_GGUF } pb_export_format;

typedef struct pb_export_options {
    pb_export_format format;
    /* Storage of the exported tensors: F32 (the default, 0), BF16 or F16;
     * GGUF also Q8_0 (matrices whose rows are whole blocks of 32; other
     * matrices F16). GGUF vectors (norms, biases) stay F32. */
    pb_dtype dtype;
    int overwrite; /* replace an existing output */
    /* Polled between tensors: once set, PB_ERR_INTERRUPTED and no output. */
    const volatile int *stop;
    /* Called after each tensor is written (done of total); may be NULL. */
    void (*progress)(int64_t done, int64_t total, void *user); /* as pb_sweep_options.progress */
    void *progress_user;
    /* LoRA adapters merged into the exported weights first (as
     * pb_load_options's); not where an adapted matrix is part of a fused
     * tensor in the file (Phi-3, GPT-2, GPT-NeoX). */
    const char *const *adapters;
    const float *adapter_scales;
    int n_adapters;
} pb_export_options;

/* What an export wrote. */
typedef struct pb_export_summary {
    int64_t n_tensors; /* written, the untied unembedding included */
    int64_t n_edited;  /* of them, with the direction projected out */
    int untied;        /* 1: the source tied the unembedding to the embedding; the export stores it apart */
    uint64_t n_bytes;  /* of tensor data */
} pb_export_summary;

/* Writes the model at model_path (a GGUF file or a Hugging Face folder)
 * with the unit direction u = direction / |direction| (d_model floats)
 * projected out of everything that writes into the residual stream, as in
 * Arditi et al. 2024: the embedding rows and any learned position table
 * (E <- E - (E u) u^T), every attention-output and MLP-down matrix
 * (W <- (I - u u^T) W) and their biases. Every other tensor is kept (only
 * converted to the chosen storage). A tied unembedding is written apart,
 * unedited, and the config says it is untied. The result computes what
 * the source computes under run-time ablation (pb_intervention ABLATE).
 * out_path: a folder for safetensors (model.safetensors, config.json and
 * the source folder's tokenizer and other small files), a file for GGUF
 * (every key of the source kept, general.file_type set). Everything is
 * written under temporary names and renamed into place at the end: a
 * failed or interrupted export leaves no output. Families with a norm
 * between a block's output and the residual stream (gemma2, gemma3,
 * olmo2) cannot be edited this way: PB_ERR_UNSUPPORTED names the family.
 * PB_ERR_ARG: a direction of the wrong length, not finite or zero, a
 * format the source cannot be exported to, an output that exists without
 * overwrite. summary may be NULL. */
PB_API pb_status pb_export_ablated(const char *model_path, const float *direction, int d_model,
                                   const pb_export_options *options, const char *out_path, pb_export_summary *summary);

/* ---- report.html ------------------------------------------------------- */

/* One generated text: a harmful/harmless baseline, with ablation, with addition... */
typedef struct pb_report_generation {
    const char *label;
    const char *prompt;
    const char *text;
    int refused; /* 1 refused, 0 complied, < 0 not judged */
} pb_report_generation;

/* `refused` of the `n` prompts' continuations under `label` refused. */
typedef struct pb_report_rate {
    const char *label;
    int n;            /* prompts */
    int refused;      /* continuations judged refusals, of n * max(n_samples, 1) */
    int n_samples;    /* continuations per prompt; 0: one, and no interval */
    double low, high; /* 95% interval of the rate (pb_rate_estimate) when n_samples > 0 */
} pb_report_rate;

/* Everything the sweep itself does not know. Every pointer is borrowed and
 * may be NULL (counts 0). */
typedef struct pb_report_extras {
    const char *title; /* e.g. "Refusal analysis: SmolLM2-135M-Instruct"; NULL: from the model path */
    /* Column labels of the position heatmaps: the decoded tokens of the
     * reference prompt. Position p >= 0 reads label p; a negative
     * (end-aligned) p reads label n_position_labels + p. NULL: the tokens
     * of pair 0's clean prompt (interchange: its base prompt), as the
     * model decodes them. */
    const char *const *position_labels;
    int n_position_labels;
    /* Whose tokens position_labels are, shown on every position axis
     * ("pair 0's clean prompt"); NULL: "the reference prompt". Without
     * position_labels the report says which prompt it labelled with. */
    const char *position_labels_from;
    const pb_report_generation *generations;
    int n_generations;
    const pb_report_rate *rates;
    int n_rates;
    const char *direction_summary; /* free text (selected layer/position and scores) */
    const char *notes;             /* free text */
    double wall_seconds;           /* total run time; <= 0 to omit */
    /* The file beside the report that holds the numbers above (rates,
     * scores, texts), named in the page's footer; NULL: they are on this
     * page only, and the footer says so. */
    const char *extras_file;
} pb_report_extras;

/* Writes a finished sweep as one self-contained HTML5 page (inline CSS and
 * SVG) to path (a temporary name, then renamed). Reads the sweep only;
 * extras may be NULL. A missing directory is PB_ERR_IO and leaves no file. */
PB_API pb_status pb_report_html_write(const pb_sweep *sweep, const char *path, const pb_report_extras *extras);

/* ---- patterns.html: attention patterns as heatmaps -------------------- */

/* How many of capture's hook points are blocks.L.attn.hook_pattern. */
PB_API int pb_capture_pattern_count(const pb_capture *capture);
/* Writes the attention patterns capture holds after a pb_forward over
 * ids[0..T) as one self-contained HTML5 page (inline CSS and SVG) to path
 * (a temporary name, then renamed): the prompt's tokens, then for each
 * captured blocks.L.attn.hook_pattern one query x key heatmap per head,
 * coloured 0..1, axes labelled with the token pieces (pb_model_token_text:
 * "<id>" without a tokenizer), the causal upper triangle blank, each map
 * downloadable as SVG or PNG. PB_ERR_ARG when capture holds no
 * hook_pattern or none for this T; a missing directory is PB_ERR_IO and
 * leaves no file. */
PB_API pb_status pb_patterns_html_write(const pb_model *model, const pb_capture *capture, const int32_t *ids, int T,
                                        const char *path);

/* ---- .npy files (format 1.0, C order) ----------------------------------- */

typedef enum pb_npy_dtype { PB_NPY_F32 = 0, PB_NPY_I32 } pb_npy_dtype;

/* Writes through a temporary file renamed into place, so a killed run
 * never leaves half a file under the final name. */
PB_API pb_status pb_npy_write(const char *path, const void *data, pb_npy_dtype dtype, int n_dims, const int64_t *shape);
/* Reads a whole file; *data is malloc'd (release with free()). shape has
 * room for 8 dims. float64 and int64 files are converted on read. */
PB_API pb_status pb_npy_read(const char *path, void **data, pb_npy_dtype dtype, int *n_dims, int64_t shape[8]);

#ifdef __cplusplus
}
#endif
#endif
