/* What generate, refusal-rate and direction share (private to
 * cli_intervene.c, cli_prompts.c, cli_rate.c and cli_direction.c; export,
 * cli_export.c, reads its direction file here too): their one
 * option set and its parser, the model and text helpers, interventions
 * built from flags (--patch, --ablate-direction, --add-direction) and the
 * prompt files refusal-rate and direction read. Functions that can fail
 * return 1, or 0 after saying why on stderr, unless noted. */
#ifndef PB_CLI_INTERVENE_SHARED_H
#define PB_CLI_INTERVENE_SHARED_H

#include <stdint.h>

#include "cli/cli_model.h"
#include "cli/cli_sampling.h"
#include "patchbay.h"

typedef struct pb_cli_iv_options {
    pb_cli_model model;
    const char *prompt, *system, *chat_template, *ids, *ids_file;
    int no_chat;
    int max_new;
    pb_cli_sampling gen; /* generate, refusal-rate */
    /* interventions */
    const char *patch_site, *from_text, *from_ids;
    const char *ablate_file, *add_file;
    double scale;
    int scale_given;
    int layer;
    /* refusal-rate */
    const char *prompts, *split, *side, *json_out;
    int verbose;
    int limit;
    int no_progress; /* refusal-rate: no progress bar */
    /* direction */
    const char *out;
    int overwrite;
    int train, val, layer_stride, n_post;
    double max_layer_fraction, kl_threshold;
} pb_cli_iv_options;

typedef struct pb_cli_iv_build {
    pb_intervention iv;
    float *direction; /* owned */
    float *values;    /* owned */
    int *positions;   /* owned */
    char description[512];
} pb_cli_iv_build;

typedef struct pb_cli_prompt_item {
    char *id;
    char *text;
    int harmful; /* 1 harmful, 0 harmless, -1 unlabelled (text file) */
    char *split;
} pb_cli_prompt_item;

typedef struct pb_cli_prompt_file {
    pb_cli_prompt_item *items;
    int n;
    size_t cap;
    char **refusal_tokens;
    int n_refusal_tokens;
} pb_cli_prompt_file;

/* Parses argv (argv[0] is the command) into o and checks the combination. */
int pb_cli_iv_parse(int argc, char **argv, pb_cli_iv_options *o);
/* "patchbay CMD: WHAT: <pb_last_error()>" on stderr; returns 1. */
int pb_cli_iv_fail(const char *cmd, const char *what);
/* The model the options name, or NULL after saying why. */
pb_model *pb_cli_iv_load_model(const char *cmd, const pb_cli_iv_options *o);
/* A user message as ids: chat-templated unless --no-chat; *ids malloc'd. */
int pb_cli_iv_text_ids(const char *cmd, pb_model *m, const pb_cli_iv_options *o, const char *text, int32_t **ids,
                       int *T);
/* The ids as text (malloc'd), or NULL. */
char *pb_cli_iv_decode(pb_model *m, const int32_t *ids, int n);

void pb_cli_iv_build_free(pb_cli_iv_build *b);
/* --patch SITE from the source run src_ids for a base prompt of T_base tokens. */
int pb_cli_iv_build_patch(const char *cmd, pb_model *m, const char *site, const int32_t *src_ids, int T_src, int T_base,
                          pb_cli_iv_build *b);
/* A direction file (.npy, 1-d float32) into *out (malloc'd) and its length
 * into *d (may be NULL); d_model > 0: it must have that many values. */
int pb_cli_direction_read(const char *cmd, const char *path, int d_model, float **out, int *d);
/* --ablate-direction or --add-direction (none: b->iv.kind NONE). */
int pb_cli_iv_build_direction(const char *cmd, pb_model *m, const pb_cli_iv_options *o, pb_cli_iv_build *b);

/* refusal_pairs.json (each pair's harmful and harmless request and the
 * refusal tokens) or a text file with one prompt per line. */
int pb_cli_prompt_file_load(const char *cmd, const char *path, pb_cli_prompt_file *f);
void pb_cli_prompt_file_free(pb_cli_prompt_file *f);
/* Whether a prompt of `split` belongs to --split want ("all", "validation"/"val", "train", ...). */
int pb_cli_split_matches(const char *want, const char *split);

#endif
