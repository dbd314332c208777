/* patchbay export --model M --direction DIR/direction.npy --out OUT: reads
 * the direction, hands the rest to pb_export_ablated with a progress bar
 * and a Ctrl-C that leaves no output, and says what was written. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_export.h"
#include "cli/cli_intervene_shared.h"
#include "cli/cli_model.h"
#include "cli/cli_text.h"
#include "cli/progress.h"
#include "cli/stop_signal.h"
#include "patchbay.h"

typedef struct export_options {
    pb_cli_model model;
    const char *direction, *out, *format, *type;
    int overwrite, no_progress, verify;
} export_options;

static const char *const format_choices[] = {"auto", "safetensors", "gguf", NULL};
static const char *const type_choices[] = {"f32", "bf16", "f16", "q8_0", NULL};

static void export_table(export_options *o, pb_cli_tables *t) {
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, NULL, &o->no_progress, NULL);
    pb_cli_option *table = t->table;
    table[0] = (pb_cli_option){.flag = "--direction",
                               .kind = PB_OPT_STRING,
                               .target = &o->direction,
                               .value = "FILE.npy",
                               .help = "the direction to project out (patchbay direction's direction.npy; required)"};
    table[1] = (pb_cli_option){.flag = "--out",
                               .kind = PB_OPT_STRING,
                               .target = &o->out,
                               .value = "PATH",
                               .help = "a folder (safetensors) or a .gguf file (required)"};
    table[2] = (pb_cli_option){.flag = "--format",
                               .kind = PB_OPT_CHOICE,
                               .target = &o->format,
                               .choices = format_choices,
                               .choices_text = "auto, safetensors or gguf",
                               .value = "FMT",
                               .help = "auto (default): the source's own format"};
    table[3] = (pb_cli_option){.flag = "--outtype",
                               .kind = PB_OPT_CHOICE,
                               .target = &o->type,
                               .choices = type_choices,
                               .choices_text = "f32, bf16, f16 or q8_0",
                               .value = "TYPE",
                               .help = "storage of the exported tensors: f32 (default), bf16, f16, q8_0 (GGUF)"};
    table[4] = (pb_cli_option){.flag = "--verify",
                               .kind = PB_OPT_FLAG,
                               .target = &o->verify,
                               .help = "then load the export and the source (with its adapters) and print the largest "
                                       "|logit difference| against run-time ablation on a short prompt"};
    table[5] = (pb_cli_option){.kind = PB_OPT_TABLE, .target = t->common.table};
    table[6] = (pb_cli_option){0};
}

void pb_cli_export_options(FILE *out, const char *cmd) {
    export_options o;
    pb_cli_tables t;
    export_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

static int check_options(const export_options *o) {
    if (!o->direction || !o->out) {
        fprintf(stderr, "patchbay export: --direction FILE.npy and --out PATH are required\n");
        return 0;
    }
    if (!o->model.path) {
        fprintf(stderr, "patchbay export: --model PATH is required (a GGUF file or a Hugging Face folder)%s\n",
                o->model.random_name ? "; a random model has no files to export" : "");
        return 0;
    }
    if (o->model.load.dtype != PB_DTYPE_F32) {
        fprintf(stderr, "patchbay export: --dtype sets how a model is held in memory; the exported tensors' storage "
                        "is --outtype f32|bf16|f16|q8_0\n");
        return 0;
    }
    return 1;
}

static pb_export_options library_options(const export_options *o, pb_progress *progress) {
    pb_export_options e = {.overwrite = o->overwrite,
                           .stop = &pb_cli_stop,
                           .adapters = o->model.load.adapters,
                           .adapter_scales = o->model.load.adapter_scales,
                           .n_adapters = o->model.load.n_adapters};
    if (o->format)
        e.format = strcmp(o->format, "gguf") == 0          ? PB_EXPORT_GGUF
                   : strcmp(o->format, "safetensors") == 0 ? PB_EXPORT_SAFETENSORS
                                                           : PB_EXPORT_AUTO;
    if (o->type)
        e.dtype = strcmp(o->type, "bf16") == 0   ? PB_DTYPE_BF16
                  : strcmp(o->type, "f16") == 0  ? PB_DTYPE_F16
                  : strcmp(o->type, "q8_0") == 0 ? PB_DTYPE_Q8_0
                                                 : PB_DTYPE_F32;
    if (!o->no_progress) {
        e.progress = pb_progress_callback;
        e.progress_user = progress;
    }
    return e;
}

/* The prompt --verify runs: a chat-templated request, or (no tokenizer)
 * eight ids. *ids malloc'd. */
static int verify_ids(pb_model *m, int32_t **ids, int *T) {
    if (pb_model_chat_tokenize(m, NULL, "How do I pick a lock?", ids, T) == PB_OK && *T > 0)
        return 1;
    *T = 8;
    *ids = malloc(sizeof(int32_t) * 8);
    for (int i = 0; *ids && i < 8; i++)
        (*ids)[i] = (int32_t)((7 * i + 1) % pb_model_get_config(m)->vocab_size);
    return *ids != NULL;
}

/* --verify: both models in memory at once, the source with its adapters. */
static int verify_export(const export_options *o, const float *direction) {
    pb_model *source = NULL, *exported = NULL;
    pb_load_options plain = o->model.load;
    plain.adapters = NULL;
    plain.n_adapters = 0;
    int32_t *ids = NULL;
    float *want = NULL, *got = NULL;
    int T = 0, ok = 0;
    if (pb_model_load(&source, o->model.path, &o->model.load) == PB_OK &&
        pb_model_load(&exported, o->out, &plain) == PB_OK && verify_ids(source, &ids, &T)) {
        size_t n = (size_t)T * (size_t)pb_model_get_config(source)->vocab_size;
        want = malloc(sizeof(float) * n);
        got = malloc(sizeof(float) * n);
        pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = direction};
        if (want && got && pb_forward_intervened(source, ids, T, &ablate, want, NULL) == PB_OK &&
            pb_forward(exported, ids, T, got, NULL) == PB_OK) {
            double diff = 0, scale = 0, err2 = 0, ref2 = 0;
            for (size_t i = 0; i < n; i++) {
                double e = (double)got[i] - want[i];
                diff = fmax(diff, fabs(e));
                scale = fmax(scale, fabs((double)want[i]));
                err2 += e * e;
                ref2 += (double)want[i] * want[i];
            }
            printf("verify: the export's logits vs the source's under run-time ablation, %d positions x %d: "
                   "max |difference| %.3g (logits up to %.3g), NMSE %.3g\n",
                   T, pb_model_get_config(source)->vocab_size, diff, scale, ref2 > 0 ? err2 / ref2 : 0.0);
            ok = 1;
        }
    }
    if (!ok)
        fprintf(stderr, "patchbay export: --verify: %s\n", *pb_last_error() ? pb_last_error() : "out of memory");
    free(want);
    free(got);
    free(ids);
    pb_model_free(exported);
    pb_model_free(source);
    return ok;
}

int pb_cli_export(int argc, char **argv) {
    export_options o;
    memset(&o, 0, sizeof o);
    pb_cli_tables t;
    export_table(&o, &t);
    const pb_cli_parser parser = {.prefix = "patchbay export",
                                  .command_prefix = "patchbay export",
                                  .missing_value = "%s: option %s needs a value\n",
                                  .unknown = "%s: unknown option '%s' (see patchbay help export)\n",
                                  .command = "export"};
    if (!pb_cli_parse(&parser, t.table, argc, argv, 1) || !pb_cli_model_check(&o.model, "export") || !check_options(&o))
        return 2;
    float *direction = NULL;
    int d = 0;
    if (!pb_cli_direction_read("export", o.direction, 0, &direction, &d))
        return 2;
    pb_cli_stop_install();
    pb_progress progress;
    pb_progress_init(&progress, stderr, "export", -1);
    progress.unit = "tensors";
    pb_export_options eo = library_options(&o, &progress);
    pb_export_summary sum;
    pb_status status = pb_export_ablated(o.model.path, direction, d, &eo, o.out, &sum);
    if (!o.no_progress)
        pb_progress_finish(&progress);
    if (status != PB_OK) {
        free(direction);
        const char *message = pb_last_error(); /* the library's own start with "export: " */
        fprintf(stderr, "patchbay %s%s\n", strncmp(message, "export: ", 8) == 0 ? "" : "export: ", message);
        return status == PB_ERR_ARG ? 2 : 1;
    }
    printf("wrote %s: %lld tensors (%lld with the direction projected out)%s, %.1f MiB of %s\n", o.out,
           (long long)sum.n_tensors, (long long)sum.n_edited, sum.untied ? ", the tied unembedding stored apart" : "",
           (double)sum.n_bytes / (1024.0 * 1024.0), o.type ? o.type : "f32");
    int verified = !o.verify || verify_export(&o, direction);
    free(direction);
    return verified ? 0 : 1;
}
