/* Parsing and loading of the shared model options (cli_model.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_model.h"

const char *pb_cli_model_help =
    "model options (every command):\n"
    "  --model PATH            a .gguf file or a Hugging Face checkpoint folder (config.json + safetensors)\n"
    "  --random-model NAME[:LAYERS]  seeded random weights at a real shape instead of --model: tiny,\n"
    "                          smollm2-135m, llama3-8b, llama3-70b, qwen2-7b; :LAYERS keeps the first\n"
    "                          LAYERS layers (e.g. llama3-70b:4); no tokenizer, so give token ids\n"
    "  --seed N                seed of --random-model (default 0)\n"
    "  --backend cpu|reference|cuda   where to compute (default cpu; cuda needs a GPU build and device)\n"
    "  --device N              CUDA device ordinal (default: a sweep rank's node-local rank modulo the\n"
    "                          devices, else 0)\n"
    "  --dtype f32|bf16|f16    storage of the weight matrices (default f32); with 16-bit weights each\n"
    "                          projection rounds its input to that type and accumulates in fp32\n"
    "  --threads N             CPU threads (default: all cores)\n";

static int parse_uint(const char *cmd, const char *flag, const char *value, unsigned long long max,
                      unsigned long long *out) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno || end == value || *end || value[0] == '-' || v > max) {
        fprintf(stderr, "patchbay %s: %s expects a non-negative integer (at most %llu), got '%s'\n", cmd, flag, max,
                value);
        return 0;
    }
    *out = v;
    return 1;
}

int pb_cli_model_option(pb_cli_model *o, const char *cmd, const char *flag, const char *value) {
    unsigned long long v = 0;
    if (strcmp(flag, "--model") == 0) {
        o->path = value;
    } else if (strcmp(flag, "--random-model") == 0) {
        o->random_name = value;
    } else if (strcmp(flag, "--seed") == 0) {
        if (!parse_uint(cmd, flag, value, UINT64_MAX, &v))
            return -1;
        o->seed = (uint64_t)v;
    } else if (strcmp(flag, "--threads") == 0) {
        if (!parse_uint(cmd, flag, value, 4096, &v))
            return -1;
        o->load.n_threads = (int)v;
    } else if (strcmp(flag, "--device") == 0) {
        if (!parse_uint(cmd, flag, value, 1024, &v))
            return -1;
        o->load.device = (int)v;
        o->device_given = 1;
    } else if (strcmp(flag, "--backend") == 0) {
        if (pb_backend_parse(value, &o->load.backend) != PB_OK) {
            fprintf(stderr, "patchbay %s: --backend: %s\n", cmd, pb_last_error());
            return -1;
        }
    } else if (strcmp(flag, "--dtype") == 0) {
        if (pb_dtype_parse(value, &o->load.dtype) != PB_OK) {
            fprintf(stderr, "patchbay %s: --dtype: %s\n", cmd, pb_last_error());
            return -1;
        }
    } else {
        return 0;
    }
    return 1;
}

int pb_cli_model_check(const pb_cli_model *o, const char *cmd) {
    if (!!o->path == !!o->random_name) {
        fprintf(stderr, "patchbay %s: give exactly one of --model PATH or --random-model NAME\n", cmd);
        return 0;
    }
    return 1;
}

pb_status pb_cli_model_load(const pb_cli_model *o, pb_model **out) {
    if (o->random_name)
        return pb_model_random(out, o->random_name, o->seed, &o->load);
    return pb_model_load(out, o->path, &o->load);
}

const char *pb_cli_model_name(const pb_cli_model *o, const pb_model *model) {
    return model ? pb_model_get_source(model) : o->path ? o->path : o->random_name;
}
