/* Parsing and loading of the shared model options (cli_model.h). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_model.h"
#include "patchbay_tool.h"

/* The library's parsers as PB_OPT_PARSE functions. */
static pb_status parse_backend(const char *value, void *target) { return pb_backend_parse(value, target); }
static pb_status parse_dtype(const char *value, void *target) { return pb_dtype_parse(value, target); }
static pb_status parse_weights(const char *value, void *target) { return pb_weights_mode_parse(value, target); }

/* --adapter PATH[:SCALE]: a trailing ":number" is the scale (default 1). */
static pb_status parse_adapter(const char *value, void *target) {
    pb_cli_model *o = target;
    int n = o->load.n_adapters;
    if (n >= PB_CLI_MAX_ADAPTERS)
        return pb_fail(PB_ERR_ARG, "at most %d adapters", PB_CLI_MAX_ADAPTERS);
    size_t len = strlen(value);
    float scale = 1.0f;
    const char *colon = strrchr(value, ':');
    char *end = NULL;
    if (colon && colon[1]) {
        double s = strtod(colon + 1, &end);
        if (*end == 0 && isfinite(s)) {
            scale = (float)s;
            len = (size_t)(colon - value);
        }
    }
    if (len == 0 || len >= sizeof o->adapter_paths[n])
        return pb_fail(PB_ERR_ARG, "'%s' is not an adapter folder (PATH or PATH:SCALE)", value);
    memcpy(o->adapter_paths[n], value, len);
    o->adapter_paths[n][len] = 0;
    o->adapter_names[n] = o->adapter_paths[n];
    o->adapter_scales[n] = scale;
    o->load.adapters = o->adapter_names;
    o->load.adapter_scales = o->adapter_scales;
    o->load.n_adapters = n + 1;
    return PB_OK;
}

void pb_cli_model_table(pb_cli_model *o, pb_cli_option table[PB_CLI_MODEL_OPTIONS + 1]) {
    const pb_cli_option options[PB_CLI_MODEL_OPTIONS + 1] = {
        {.flag = "--model",
         .kind = PB_OPT_STRING,
         .target = &o->path,
         .shared = 1,
         .value = "PATH",
         .help = "a .gguf file or a Hugging Face checkpoint folder (config.json + safetensors)"},
        {.flag = "--random-model",
         .kind = PB_OPT_STRING,
         .target = &o->random_name,
         .shared = 1,
         .value = "NAME[:LAYERS[:TYPE]]",
         .help = "seeded random weights at a real shape instead of --model (tiny, smollm2-135m, llama3-8b, "
                 "llama3-70b, qwen2-7b, gemma3-270m; :LAYERS keeps the first LAYERS layers; :TYPE f16, bf16 or "
                 "q8_0 stores the matrices in that type in host memory, which --weights stream streams from); no "
                 "tokenizer: give ids"},
        {.flag = "--seed",
         .kind = PB_OPT_U64,
         .target = &o->seed,
         .max = UINT64_MAX,
         .shared = 1,
         .value = "N",
         .help = "seed of --random-model (default 0)"},
        {.flag = "--threads",
         .kind = PB_OPT_UINT,
         .target = &o->load.n_threads,
         .max = 4096,
         .shared = 1,
         .value = "N",
         .help = "CPU threads (default: all cores)"},
        {.flag = "--device",
         .kind = PB_OPT_UINT,
         .target = &o->load.device,
         .given = &o->device_given,
         .max = 1024,
         .shared = 1,
         .value = "N",
         .help = "CUDA device ordinal (default: a sweep rank's node-local rank modulo the devices, else 0)"},
        {.flag = "--backend",
         .kind = PB_OPT_PARSE,
         .target = &o->load.backend,
         .parse = parse_backend,
         .shared = 1,
         .value = "cpu|reference|cuda|checked",
         .help = "where to compute (default cpu; cuda needs a GPU build and device; checked: cpu's arithmetic "
                 "behind a device's memory boundary, every op's buffers checked, to find what a GPU would trip over)"},
        {.flag = "--dtype",
         .kind = PB_OPT_PARSE,
         .target = &o->load.dtype,
         .parse = parse_dtype,
         .shared = 1,
         .value = "f32|bf16|f16|file",
         .help = "storage of the weight matrices (default f32); 16-bit weights round each projection's input "
                 "to that type and accumulate in fp32; file keeps a GGUF's quantised matrices (Q4_0 ... Q6_K) "
                 "as stored, decoded inside each projection, the rest f32: the f32 results in a fraction of "
                 "the memory (decoded on the device with --backend cuda)"},
        {.flag = "--weights",
         .kind = PB_OPT_PARSE,
         .target = &o->load.weights,
         .parse = parse_weights,
         .shared = 1,
         .value = "resident|stream|auto",
         .help = "where the layers' weights live (default resident): stream reads each layer from the GGUF "
                 "into one of two slots when the layer runs (every row of a batch passes a layer before the "
                 "next), so a model larger than memory can be swept; auto streams when resident weights would "
                 "exceed --weight-memory (a GGUF, or --random-model NAME:LAYERS:TYPE)"},
        {.flag = "--weight-memory",
         .kind = PB_OPT_SIZE,
         .target = &o->load.weight_memory,
         .shared = 1,
         .value = "SIZE",
         .help = "cap on the weights' memory for stream and auto (apart from --max-memory, which sizes "
                 "batches); a model that cannot run within it, even streamed, is refused with the numbers"},
        {.flag = "--adapter",
         .kind = PB_OPT_PARSE,
         .parse = parse_adapter,
         .target = o,
         .shared = 1,
         .value = "PATH[:SCALE]",
         .help = "a LoRA adapter merged into the weights at load, times SCALE (default 1): a PEFT folder "
                 "(adapter_config.json + adapter_model.safetensors) or llama.cpp's GGUF LoRA file; repeatable, up "
                 "to 8; resident weights only"},
        {0},
    };
    memcpy(table, options, sizeof options);
}

void pb_cli_common_table(pb_cli_common *c, pb_cli_model *model, int *overwrite, const char *overwrite_commands,
                         int *no_progress, const char *no_progress_commands) {
    pb_cli_model_table(model, c->model);
    pb_cli_option *t = c->table;
    *t++ = (pb_cli_option){.flag = "--overwrite",
                           .kind = PB_OPT_FLAG,
                           .target = overwrite,
                           .help = "replace existing outputs (otherwise an --out folder must be absent or empty, an "
                                   "output file absent)",
                           .commands = overwrite_commands};
    if (no_progress)
        *t++ = (pb_cli_option){.flag = "--no-progress",
                               .kind = PB_OPT_FLAG,
                               .target = no_progress,
                               .help = "no progress bar on stderr",
                               .commands = no_progress_commands};
    *t++ = (pb_cli_option){.flag = NULL, .kind = PB_OPT_TABLE, .target = c->model};
    *t = (pb_cli_option){0};
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
