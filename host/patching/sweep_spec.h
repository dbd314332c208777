/* A parsed, validated sweep spec (JSON format and meaning: docs/patching.md).
 * Parsing checks everything against the model's hyperparameters so that
 * the planner and the engine can trust every index in here. */
#ifndef PB_SWEEP_SPEC_H
#define PB_SWEEP_SPEC_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

typedef struct pb_prompt_spec {
    int32_t *ids; /* (T) */
    int T;
    /* How the ids came about, for the record (results.json, the CLI's notice). */
    char *text;   /* the prompt's text when given as text, else NULL */
    int chat;     /* 1: text rendered with the chat template */
    char *system; /* chat: the system prompt given, NULL = the template's default */
    int bos;      /* plain text: 1 BOS asked for, 0 refused, -1 as the model's tokenizer does */
    /* Gaussian-noise corruption of the *clean* prompt (only for a pair's
     * corrupted side): ids are then the clean prompt's ids. */
    int is_noise;
    double noise_scale;   /* multiple of the embedding standard deviation */
    int *noise_positions; /* (n_noise_positions), non-negative, in the order given */
    int n_noise_positions;
    uint64_t noise_seed;
} pb_prompt_spec;

/* 1 when patchbay put the model's BOS before a plain text prompt (its
 * "bos", else the tokenizer's add_bos_token); patching/sweep_tokens.c. */
int pb_prompt_bos_added(const pb_prompt_spec *prompt, const pb_model *model);

typedef struct pb_pair_spec {
    /* Resolved by mode: denoising base = corrupted, source = clean;
     * noising base = clean, source = corrupted; interchange as given. */
    pb_prompt_spec base;
    pb_prompt_spec source;
    int clean_is_source; /* 1 for denoising and interchange, 0 for noising */
    int *position_map;   /* (base.T): source position for each base position, -1 = unmapped */
    /* The metric's tokens for this pair (logit_diff, logprob, refusal_score):
     * the pair's own ("positive"/"negative"/"tokens" keys of the pair) or a
     * copy of the metric's. Always filled for those kinds. */
    int32_t *positive; /* logit_diff positive ids; logprob / refusal_score token set */
    int n_positive;
    int32_t *negative; /* logit_diff negative ids */
    int n_negative;
    int own_positive, own_negative; /* 1: given by the pair */
} pb_pair_spec;

typedef enum pb_position_mode {
    PB_POSITIONS_ALL = 0, /* every position together: one site */
    PB_POSITIONS_EACH,    /* one site per position */
    PB_POSITIONS_LAST,    /* one site at the last position */
    PB_POSITIONS_LIST,    /* one site per listed index (negative: from the end) */
    PB_POSITIONS_GROUPS   /* one site per listed group, patched together */
} pb_position_mode;

typedef struct pb_site_spec {
    pb_component component;
    int *layers; /* (n_layers) in the order given; "all" expands to 0..n_layers-1 */
    int n_layers;
    int *heads; /* (n_heads); NULL/0 for components without heads; "all" expands */
    int n_heads;
    pb_position_mode position_mode;
    int *positions; /* LIST: (n_positions) indices; GROUPS: all groups' indices back to back */
    int n_positions;
    int *group_sizes; /* GROUPS: (n_groups) */
    int n_groups;
} pb_site_spec;

typedef struct pb_metric_spec {
    pb_metric_kind kind;
    /* The default token sets (NULL when every pair gives its own); what a
     * pair uses is in pb_pair_spec.positive / negative. */
    int32_t *positive; /* logit_diff positive ids; logprob / refusal_score token set */
    int n_positive;
    int32_t *negative; /* logit_diff negative ids */
    int n_negative;
    int position; /* metric position; negative counts from the end; default -1 */
    /* projection */
    float *direction; /* (d_model), already normalised to unit length */
    int layer;        /* residual layer */
    int hook_post;    /* 0: resid_pre of layer; 1: resid_post of layer */
    char *direction_path;
} pb_metric_spec;

/* How a sweep's rows get their patched metric: a patched forward each
 * (exact), attribution patching's first-order estimate from one gradient
 * per pair, or AtP* (Kramar et al. 2024: the QK fix and GradDrop;
 * attribution/atp.h). */
typedef enum pb_sweep_method { PB_METHOD_EXACT = 0, PB_METHOD_ATP, PB_METHOD_ATP_STAR } pb_sweep_method;

typedef struct pb_sweep_spec {
    pb_patch_mode mode;
    pb_sweep_method method; /* "method": "exact" (default), "atp" or "atp*" */
    /* "atp_star": {"qk_fix": bool, "grad_drop": bool} with "atp*", both
     * true by default: AtP*'s two corrections, each switchable. */
    int qk_fix, grad_drop;
    /* "verify": {"top": K, "control": N, "seed": S} with "atp" or "atp*": the exact
     * engine on the K sites the estimate ranks highest and N others drawn
     * with the seed (attribution/atp.h); top 0: none. */
    int verify_top, verify_control;
    uint64_t verify_seed;
    pb_pair_spec *pairs;
    int n_pairs;
    pb_site_spec *sites;
    int n_sites;
    pb_metric_spec metric;
    double significance_threshold; /* default 0.1 */
    double effect_floor;           /* default 1e-4 */
    int chat_default;              /* text prompts without "chat": 1 chat template (default), 0 plain */
    int bos_default;               /* plain text prompts without "bos": 1 BOS, 0 none, -1 as the tokenizer (default) */
} pb_sweep_spec;

/* Parses json_text into spec. spec_dir resolves relative paths (NULL: the
 * working directory). Errors: PB_ERR_ARG naming the key path ("sites[1].
 * layers[2]") and the allowed range; PB_ERR_IO / PB_ERR_FORMAT for the
 * direction file. On failure spec is left empty (safe to free). */
pb_status pb_sweep_spec_parse(pb_sweep_spec *spec, const char *json_text, const char *spec_dir,
                              const pb_model_config *cfg);

/* Turns text into ids for prompts ({"text": ..., "chat": true, "system":
 * ...}) and token sets (["I", "Sorry"]): chat = 1 applies the chat
 * template (system NULL: its default); chat = 0 tokenizes plain text, with
 * the model's BOS first when bos = 1, or bos = -1 and the model's tokenizer
 * adds one (Gemma); bos = 0 never. *ids malloc'd. */
typedef pb_status (*pb_spec_tokenize_fn)(void *user, const char *text, int chat, int bos, const char *system,
                                         int32_t **ids, int *n_ids);
/* The text of one token id into buf (for messages naming the tokens a
 * string produced). */
typedef pb_status (*pb_spec_token_text_fn)(void *user, int id, char *buf, size_t size);
typedef struct pb_spec_text {
    pb_spec_tokenize_fn tokenize;     /* NULL: text is refused with PB_ERR_UNSUPPORTED */
    pb_spec_token_text_fn token_text; /* NULL: messages give ids only */
    void *user;
} pb_spec_text;
/* As pb_sweep_spec_parse, with text accepted through text (NULL: refused). */
pb_status pb_sweep_spec_parse_text(pb_sweep_spec *spec, const char *json_text, const char *spec_dir,
                                   const pb_model_config *cfg, const pb_spec_text *text);
void pb_sweep_spec_free(pb_sweep_spec *spec);

/* The spec name of a metric kind: "logit_diff", ..., "callback"; the
 * parser's messages and the writers of results both use it. */
const char *pb_sweep_metric_name(pb_metric_kind kind);
/* "exact", "atp", "atp*". */
const char *pb_sweep_method_name(pb_sweep_method method);
/* What the spec's method makes of its effects, for reports: "exact (a
 * patched forward per row)", or which estimate and whether it is signed. */
const char *pb_sweep_method_description(const pb_sweep_spec *spec);

#endif
