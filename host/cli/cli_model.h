/* The model options every command shares: where the weights come from
 * (--model PATH or --random-model NAME[:LAYERS] [--seed N]), where they run
 * (--backend cpu|reference|cuda|checked, --device N, --threads N), how they are
 * stored (--dtype f32|bf16|f16|file, --weights resident|stream|auto,
 * --weight-memory SIZE) and LoRA adapters merged into them (--adapter). */
#ifndef PB_CLI_MODEL_H
#define PB_CLI_MODEL_H

#include <stdint.h>

#include "cli/options.h"
#include "patchbay.h"

enum { PB_CLI_MAX_ADAPTERS = 8 };

typedef struct pb_cli_model {
    const char *path;        /* --model */
    const char *random_name; /* --random-model */
    uint64_t seed;           /* --seed, for --random-model */
    pb_load_options load;    /* --backend, --dtype, --device, --threads, --weights, --weight-memory */
    int device_given;        /* 1 when --device was on the command line: it beats the rank's own choice */
    /* --adapter PATH[:SCALE], repeatable: load.adapters points here */
    char adapter_paths[PB_CLI_MAX_ADAPTERS][1024];
    const char *adapter_names[PB_CLI_MAX_ADAPTERS];
    float adapter_scales[PB_CLI_MAX_ADAPTERS];
} pb_cli_model;

enum { PB_CLI_MODEL_OPTIONS = 10 };
/* Fills table (PB_CLI_MODEL_OPTIONS entries plus the PB_OPT_END) with the
 * options above, writing into o; a command's own table reaches them
 * through a PB_OPT_TABLE entry (options.h). */
void pb_cli_model_table(pb_cli_model *o, pb_cli_option table[PB_CLI_MODEL_OPTIONS + 1]);

/* The options the model-running commands share: --overwrite (taken by the
 * space-separated overwrite_commands; NULL: by all), --no-progress (left
 * out when no_progress is NULL; taken by no_progress_commands) and the model
 * options. A command's
 * table reaches them through {.kind = PB_OPT_TABLE, .target = c->table};
 * c must outlive the parse. */
typedef struct pb_cli_common {
    pb_cli_option model[PB_CLI_MODEL_OPTIONS + 1];
    pb_cli_option table[4];
} pb_cli_common;
void pb_cli_common_table(pb_cli_common *c, pb_cli_model *model, int *overwrite, const char *overwrite_commands,
                         int *no_progress, const char *no_progress_commands);

/* 1 when exactly one of --model / --random-model was given; otherwise prints
 * why (prefixed by cmd) and returns 0. */
int pb_cli_model_check(const pb_cli_model *o, const char *cmd);

/* Loads the model the options describe. */
pb_status pb_cli_model_load(const pb_cli_model *o, pb_model **out);

#endif
