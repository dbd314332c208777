/* The model options every command shares: where the weights come from
 * (--model PATH or --random-model NAME[:LAYERS] [--seed N]), where they run
 * (--backend cpu|reference|cuda, --device N, --threads N) and how they are
 * stored (--dtype f32|bf16|f16). */
#ifndef PB_CLI_MODEL_H
#define PB_CLI_MODEL_H

#include <stdint.h>

#include "patchbay.h"

typedef struct pb_cli_model {
    const char *path;         /* --model */
    const char *random_name;  /* --random-model */
    uint64_t seed;            /* --seed, for --random-model */
    pb_load_options load;     /* --backend, --dtype, --device, --threads */
    int device_given;         /* 1 when --device was on the command line: it beats the rank's own choice */
} pb_cli_model;

/* The options' help text, for usage messages. */
extern const char *pb_cli_model_help;

/* If `flag` is one of the options above, takes `value` into o and returns 1;
 * returns 0 for any other flag; -1 (message on stderr, prefixed by cmd) for
 * a bad value. */
int pb_cli_model_option(pb_cli_model *o, const char *cmd, const char *flag, const char *value);

/* 1 when exactly one of --model / --random-model was given; otherwise prints
 * why (prefixed by cmd) and returns 0. */
int pb_cli_model_check(const pb_cli_model *o, const char *cmd);

/* Loads the model the options describe. */
pb_status pb_cli_model_load(const pb_cli_model *o, pb_model **out);

/* What the model is called in messages and fingerprints: the path, or the
 * random model's "random:NAME:LAYERS:SEED". Valid while `model` lives. */
const char *pb_cli_model_name(const pb_cli_model *o, const pb_model *model);

#endif
