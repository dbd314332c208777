/* The options of generate, refusal-rate and direction, what they share
 * (cli_intervene_shared.h: text, interventions from flags) and the generate
 * command; refusal-rate is cli_rate.c, direction cli_direction.c, their
 * prompt files cli_prompts.c. Text goes through the model's tokenizer and
 * chat template (pb_model_chat_tokenize); --ids / --ids-file bypass both. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli/cli_intervene.h"
#include "cli/cli_intervene_shared.h"
#include "cli/cli_model.h"
#include "cli/cli_text.h"
#include "cli/ids.h"
#include "cli/options.h"
#include "cli/progress.h"
#include "patchbay.h"
#include "patchbay_tool.h"

/* ---- options -------------------------------------------------------------- */

#define GENERATE_RATE "generate refusal-rate"
#define TEXT_COMMANDS "generate refusal-rate direction"
#define RATE "refusal-rate"
#define DIRECTION "direction"

/* The table's rows: each names the commands that take it. */
static const pb_cli_option option_rows[] = {
    {.flag = "--prompt", .kind = PB_OPT_STRING, .value = "TEXT", .help = "the user message", .commands = "generate"},
    {.flag = "--system",
     .kind = PB_OPT_STRING,
     .value = "TEXT",
     .help = "system message of the chat template (default: the template's own)",
     .commands = TEXT_COMMANDS},
    {.flag = "--chat-template",
     .kind = PB_OPT_STRING,
     .value = "NAME|FILE",
     .help = "override the model's chat template (chatml, qwen3, llama3, llama2, gemma, gemma3, phi3, olmo2, "
             "or a Jinja file); a GGUF without one (Gemma 3 270M's) needs it for chat prompts",
     .commands = TEXT_COMMANDS},
    {.flag = "--no-chat",
     .kind = PB_OPT_FLAG,
     .help = "tokenize the text plainly, without the chat template (a BOS first where the model's tokenizer "
             "puts one: Gemma)",
     .commands = GENERATE_RATE},
    {.flag = "--ids",
     .kind = PB_OPT_STRING,
     .value = "1,2,3",
     .help = "token ids instead of --prompt",
     .commands = "generate"},
    {.flag = "--ids-file",
     .kind = PB_OPT_STRING,
     .value = "FILE",
     .help = "token ids from a file (commas or whitespace, '#' comments, or an int32 .npy)",
     .commands = "generate"},
    {.flag = "--max-new-tokens",
     .kind = PB_OPT_INT,
     .min = 0,
     .value = "N",
     .help = "tokens to generate per continuation (default 32)",
     .commands = GENERATE_RATE},
    {.flag = "--patch",
     .kind = PB_OPT_STRING,
     .value = "SITE",
     .help = "patch SITE = HOOK[:HEAD][@POS,...] from the --from run, e.g. blocks.10.attn.hook_z:3@-1",
     .commands = GENERATE_RATE},
    {.flag = "--from",
     .kind = PB_OPT_STRING,
     .value = "TEXT",
     .help = "source prompt of --patch (templated like --prompt; positions aligned from the end)",
     .commands = GENERATE_RATE},
    {.flag = "--from-ids",
     .kind = PB_OPT_STRING,
     .value = "1,2,3",
     .help = "source ids of --patch",
     .commands = GENERATE_RATE},
    {.flag = "--ablate-direction",
     .kind = PB_OPT_STRING,
     .value = "FILE.npy",
     .help = "project the direction out of every residual write",
     .commands = GENERATE_RATE},
    {.flag = "--add-direction",
     .kind = PB_OPT_STRING,
     .value = "FILE.npy",
     .help = "add scale * direction to resid_pre of --layer",
     .commands = GENERATE_RATE},
    {.flag = "--layer",
     .kind = PB_OPT_INT,
     .min = 0,
     .value = "L",
     .help = "layer of --add-direction: resid_pre of L, 0..n_layers (n_layers: the last block's output)",
     .commands = GENERATE_RATE},
    {.flag = "--scale",
     .kind = PB_OPT_DOUBLE,
     .value = "A",
     .help = "scale of --add-direction (default: difference_norm from direction.json beside FILE, else 1)",
     .commands = GENERATE_RATE},
    {.flag = "--prompts",
     .kind = PB_OPT_STRING,
     .value = "FILE",
     .help = "data/refusal_pairs.json-style pairs, or a text file with one prompt per line",
     .commands = RATE " " DIRECTION},
    {.flag = "--split",
     .kind = PB_OPT_STRING,
     .value = "NAME",
     .help = "validation (default), train, test or all",
     .commands = RATE},
    {.flag = "--side",
     .kind = PB_OPT_STRING,
     .value = "SIDE",
     .help = "harmful, harmless or both (default)",
     .commands = RATE},
    {.flag = "--limit",
     .kind = PB_OPT_INT,
     .min = 1,
     .value = "N",
     .help = "at most N prompts per side",
     .commands = RATE},
    {.flag = "--json",
     .kind = PB_OPT_STRING,
     .value = "OUT",
     .help = "also write the rates as JSON to OUT",
     .commands = RATE},
    {.flag = "--verbose", .kind = PB_OPT_FLAG, .help = "print every prompt's continuation", .commands = RATE},
    {.flag = "--out", .kind = PB_OPT_STRING, .value = "DIR", .help = "output folder (required)", .commands = DIRECTION},
    {.flag = "--train",
     .kind = PB_OPT_INT,
     .min = 1,
     .value = "N",
     .help = "training pairs (default 32)",
     .commands = DIRECTION},
    {.flag = "--val",
     .kind = PB_OPT_INT,
     .min = 1,
     .value = "N",
     .help = "validation pairs (default 8)",
     .commands = DIRECTION},
    {.flag = "--layer-stride",
     .kind = PB_OPT_INT,
     .min = 1,
     .value = "S",
     .help = "candidate layers every S layers (default 3; 1 = every layer)",
     .commands = DIRECTION},
    {.flag = "--n-post",
     .kind = PB_OPT_INT,
     .min = 1,
     .value = "N",
     .help = "candidate positions (default: the chat template's tokens after the user message)",
     .commands = DIRECTION},
    {.flag = "--max-layer-fraction",
     .kind = PB_OPT_DOUBLE,
     .value = "F",
     .help = "candidate layers below F * n_layers (default 0.8)",
     .commands = DIRECTION},
    {.flag = "--kl-threshold",
     .kind = PB_OPT_DOUBLE,
     .value = "K",
     .help = "largest KL on harmless prompts when ablating (default 0.1)",
     .commands = DIRECTION},
};
enum { N_OPTION_ROWS = sizeof option_rows / sizeof option_rows[0] };
_Static_assert(N_OPTION_ROWS + 3 <= PB_CLI_COMMAND_ROWS, "intervene options fit pb_cli_tables");

/* The rows' targets in o, in option_rows' order. */
static void option_targets(pb_cli_iv_options *o, void *targets[N_OPTION_ROWS]) {
    void *t[] = {&o->prompt,        &o->system,
                 &o->chat_template, &o->no_chat,
                 &o->ids,           &o->ids_file,
                 &o->max_new,       &o->patch_site,
                 &o->from_text,     &o->from_ids,
                 &o->ablate_file,   &o->add_file,
                 &o->layer,         &o->scale,
                 &o->prompts,       &o->split,
                 &o->side,          &o->limit,
                 &o->json_out,      &o->verbose,
                 &o->out,           &o->train,
                 &o->val,           &o->layer_stride,
                 &o->n_post,        &o->max_layer_fraction,
                 &o->kl_threshold};
    _Static_assert(sizeof t / sizeof t[0] == N_OPTION_ROWS, "one target per option row");
    memcpy(targets, t, sizeof t);
}

/* One table for generate, refusal-rate and direction, each row naming the
 * commands that take it, in t->table. */
static void cli_table(pb_cli_iv_options *o, pb_cli_tables *t) {
    pb_cli_option *table = t->table;
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, DIRECTION " " RATE, &o->no_progress, RATE);
    void *targets[N_OPTION_ROWS];
    option_targets(o, targets);
    for (int i = 0; i < N_OPTION_ROWS; i++) {
        table[i] = option_rows[i];
        table[i].target = targets[i];
        if (strcmp(table[i].flag, "--scale") == 0)
            table[i].given = &o->scale_given;
    }
    pb_cli_sampling_table(&o->gen, GENERATE_RATE, t->sampling);
    table[N_OPTION_ROWS] = (pb_cli_option){.kind = PB_OPT_TABLE, .target = t->sampling};
    table[N_OPTION_ROWS + 1] = (pb_cli_option){.kind = PB_OPT_TABLE, .target = t->common.table};
    table[N_OPTION_ROWS + 2] = (pb_cli_option){0};
}

void pb_cli_intervene_options(FILE *out, const char *cmd) {
    pb_cli_iv_options o;
    pb_cli_tables t;
    cli_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

static int usage_error(const char *cmd, const char *msg, const char *arg) {
    fprintf(stderr, "patchbay %s: %s%s%s (see patchbay help %s)\n", cmd, msg, arg ? " " : "", arg ? arg : "", cmd);
    return 0;
}

/* argv[0] is the command. */
int pb_cli_iv_parse(int argc, char **argv, pb_cli_iv_options *o) {
    const char *cmd = argv[0];
    *o = (pb_cli_iv_options){.max_new = 32, .layer = -1, .scale = 1.0};
    pb_cli_tables t;
    cli_table(o, &t);
    char prefix[128];
    snprintf(prefix, sizeof prefix, "patchbay %s", cmd);
    const pb_cli_parser parser = {.prefix = prefix,
                                  .command_prefix = prefix,
                                  .missing_value = "%s: option needs a value: %s (see patchbay help)\n",
                                  .unknown = "%s: unknown option %s (see patchbay help)\n",
                                  .command = cmd};
    if (!pb_cli_parse(&parser, t.table, argc, argv, 1) || !pb_cli_model_check(&o->model, cmd) ||
        !pb_cli_sampling_check(cmd, &o->gen))
        return 0;
    int n_iv = !!o->patch_site + !!o->ablate_file + !!o->add_file;
    if (n_iv > 1)
        return usage_error(cmd, "give at most one of --patch, --ablate-direction, --add-direction", NULL);
    if (o->patch_site && !!o->from_text == !!o->from_ids)
        return usage_error(cmd, "--patch needs exactly one of --from TEXT or --from-ids IDS", NULL);
    if (!o->patch_site && (o->from_text || o->from_ids))
        return usage_error(cmd, "--from/--from-ids only go with --patch", NULL);
    if (o->add_file && o->layer < 0)
        return usage_error(cmd, "--add-direction needs --layer L", NULL);
    if (!o->add_file && (o->layer >= 0 || o->scale_given))
        return usage_error(cmd, "--layer and --scale only go with --add-direction", NULL);
    return 1;
}

int pb_cli_iv_fail(const char *cmd, const char *what) {
    const char *e = pb_last_error();
    fprintf(stderr, "patchbay %s: %s%s%s\n", cmd, what, *e ? ": " : "", e);
    return 1;
}

pb_model *pb_cli_iv_load_model(const char *cmd, const pb_cli_iv_options *o) {
    pb_model *m = NULL;
    if (pb_cli_model_load(&o->model, &m) != PB_OK) {
        pb_cli_iv_fail(cmd, "cannot load model");
        return NULL;
    }
    if (!pb_cli_prompt_template(cmd, m, o->chat_template)) {
        pb_model_free(m);
        return NULL;
    }
    return m;
}

/* ---- ids and text ----------------------------------------------------------- */

/* A user message as ids: chat-templated unless no_chat (then plain, with a
 * BOS where the model's tokenizer puts one). */
int pb_cli_iv_text_ids(const char *cmd, pb_model *m, const pb_cli_iv_options *o, const char *text, int32_t **ids,
                       int *T) {
    pb_status st = o->no_chat ? pb_model_tokenize_plain(m, text, 0, -1, ids, T, NULL)
                              : pb_model_chat_tokenize(m, o->system, text, ids, T);
    if (st != PB_OK)
        return !pb_cli_iv_fail(cmd, o->no_chat ? "tokenizing" : "applying the chat template");
    if (*T <= 0) {
        /* the caller frees *ids on every failure: hand back none */
        free(*ids);
        *ids = NULL;
        fprintf(stderr, "patchbay %s: the prompt tokenizes to nothing\n", cmd);
        return 0;
    }
    return 1;
}

/* The tokenizer's decoding; without a tokenizer (a checkpoint folder with
 * no tokenizer.json) the vocabulary's token texts, concatenated. */
char *pb_cli_iv_decode(pb_model *m, const int32_t *ids, int n) {
    char *text = NULL;
    if (n > 0 && pb_model_detokenize(m, ids, n, &text) == PB_OK)
        return text;
    size_t size = 0;
    FILE *mem = open_memstream(&text, &size);
    if (!mem)
        return NULL;
    char piece[1024];
    for (int i = 0; i < n; i++)
        if (pb_model_token_text(m, ids[i], piece, sizeof piece) == PB_OK)
            fputs(piece, mem);
    fclose(mem);
    return text;
}

/* ---- interventions from flags ---------------------------------------------------- */

void pb_cli_iv_build_free(pb_cli_iv_build *b) {
    free(b->direction);
    free(b->values);
    free(b->positions);
    memset(b, 0, sizeof *b);
}

int pb_cli_direction_read(const char *cmd, const char *path, int d_model, float **out, int *d) {
    void *data;
    int n_dims;
    int64_t shape[8];
    if (pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape) != PB_OK)
        return !pb_cli_iv_fail(cmd, "reading the direction");
    if (n_dims != 1 || shape[0] < 1 || shape[0] > (1 << 24) || (d_model > 0 && shape[0] != d_model)) {
        if (d_model > 0)
            fprintf(stderr, "patchbay %s: %s must hold a 1-d float array of d_model = %d values\n", cmd, path, d_model);
        else
            fprintf(stderr, "patchbay %s: %s must hold a 1-d float array of d_model values\n", cmd, path);
        free(data);
        return 0;
    }
    *out = data;
    if (d)
        *d = (int)shape[0];
    return 1;
}

/* difference_norm from direction.json in the directory of path; NaN if absent. */
static double sibling_difference_norm(const char *path) {
    char dir[4096], json_path[4200];
    pb_path_folder(path, dir, sizeof dir);
    snprintf(json_path, sizeof json_path, "%s/direction.json", dir);
    json_t *j = json_load_file(json_path, 0, NULL);
    double v = NAN;
    if (j && json_is_number(json_object_get(j, "difference_norm")))
        v = json_number_value(json_object_get(j, "difference_norm"));
    json_decref(j);
    return v;
}

/* SITE = HOOK[:HEAD][@POS,...]: the hook name (into name), the head (-1:
 * none given), the text after '@' (NULL: none) and what the hook patches. */
static int parse_site(const char *cmd, const pb_model_config *c, const char *site, char name[256], int *head,
                      const char **at, pb_component *comp, int *layer) {
    *at = strchr(site, '@');
    size_t hook_len = *at ? (size_t)(*at - site) : strlen(site);
    if (hook_len >= 256) {
        fprintf(stderr, "patchbay %s: --patch site too long\n", cmd);
        return 0;
    }
    memcpy(name, site, hook_len);
    name[hook_len] = 0;
    *head = -1;
    char *colon = strchr(name, ':');
    if (colon) {
        *colon = 0;
        char *end;
        long h = strtol(colon + 1, &end, 10);
        if (*end || end == colon + 1 || h < 0 || h > 100000) {
            fprintf(stderr, "patchbay %s: --patch %s: head '%s' is not a non-negative integer\n", cmd, site, colon + 1);
            return 0;
        }
        *head = (int)h;
    }
    if (pb_hook_name_parse(name, c->n_layers, comp, layer) != PB_OK) {
        fprintf(stderr,
                "patchbay %s: --patch %s: '%s' is not a patchable hook of this model (blocks.L.hook_resid_pre, "
                "hook_resid_mid, hook_resid_post, hook_attn_out, hook_mlp_out, attn.hook_z/q/k/v with L < %d)\n",
                cmd, site, name, c->n_layers);
        return 0;
    }
    return 1;
}

/* Sorts base positions ascending, carrying their source positions along. */
static void sort_positions(int *base, int *src, int n) {
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && base[k - 1] > base[k]; k--) {
            int t = base[k];
            base[k] = base[k - 1];
            base[k - 1] = t;
            t = src[k];
            src[k] = src[k - 1];
            src[k - 1] = t;
        }
}

/* The positions after '@' (end-aligned between the prompts) into base and
 * src, ascending and without repeats; *n of them. */
static int listed_positions(const char *cmd, const char *site, const char *list, int T_base, int T_src, int *base,
                            int *src, int *n) {
    *n = 0;
    for (const char *p = list; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && *end != ',')) {
            fprintf(stderr, "patchbay %s: --patch %s: bad position list after '@'\n", cmd, site);
            return 0;
        }
        long b = v < 0 ? T_base + v : v, s = b - T_base + T_src;
        if (b < 0 || b >= T_base || s < 0 || s >= T_src) {
            fprintf(stderr,
                    "patchbay %s: --patch %s: position %ld is outside the prompts aligned from the end "
                    "(%d and %d tokens)\n",
                    cmd, site, v, T_base, T_src);
            return 0;
        }
        if (*n >= T_base) {
            fprintf(stderr, "patchbay %s: --patch %s: more positions than tokens\n", cmd, site);
            return 0;
        }
        base[*n] = (int)b;
        src[(*n)++] = (int)s;
        p = *end ? end + 1 : end;
    }
    sort_positions(base, src, *n);
    for (int i = 1; i < *n; i++)
        if (base[i] == base[i - 1]) {
            fprintf(stderr, "patchbay %s: --patch %s: position listed twice\n", cmd, site);
            return 0;
        }
    if (*n == 0) {
        fprintf(stderr, "patchbay %s: --patch %s: no positions after '@'\n", cmd, site);
        return 0;
    }
    return 1;
}

/* The source prompt's values of hook `name` (one head, or whole rows) at
 * src_pos into b->values. */
static int capture_patch_values(const char *cmd, pb_model *m, const char *site, const char *name,
                                const int32_t *src_ids, int T_src, int head, int has_heads, const int *src_pos, int n,
                                pb_cli_iv_build *b) {
    const pb_model_config *c = pb_model_get_config(m);
    pb_capture *cap = NULL;
    int ok = 1;
    if (pb_capture_create(&cap, m, name) != PB_OK)
        ok = !pb_cli_iv_fail(cmd, "--patch");
    if (ok && pb_forward(m, src_ids, T_src, NULL, cap) != PB_OK)
        ok = !pb_cli_iv_fail(cmd, "running the --from prompt");
    if (ok) {
        int n_dims;
        int64_t shape[3];
        const float *data = pb_capture_data(cap, 0, &n_dims, shape); /* (T_src, width) */
        int row = (int)(shape[1] * (n_dims == 3 ? shape[2] : 1));
        int slice = head >= 0 ? c->head_dim : row;
        int heads = n_dims == 3 ? (int)shape[1] : 0;
        if (head >= heads && has_heads) {
            fprintf(stderr, "patchbay %s: --patch %s: head %d outside [0, %d)\n", cmd, site, head, heads);
            ok = 0;
        }
        b->values = ok ? malloc(sizeof(float) * (size_t)n * slice) : NULL;
        if (ok && !b->values)
            ok = 0;
        for (int i = 0; ok && i < n; i++)
            memcpy(b->values + (size_t)i * slice,
                   data + (size_t)src_pos[i] * row + (head >= 0 ? (size_t)head * c->head_dim : 0),
                   sizeof(float) * (size_t)slice);
    }
    pb_capture_free(cap);
    return ok;
}

/* SITE = HOOK[:HEAD][@POS,...] against a base prompt of T_base tokens and
 * the source prompt's ids; fills the patch with the source's captured values. */
int pb_cli_iv_build_patch(const char *cmd, pb_model *m, const char *site, const int32_t *src_ids, int T_src, int T_base,
                          pb_cli_iv_build *b) {
    const pb_model_config *c = pb_model_get_config(m);
    char name[256];
    const char *at;
    int head, layer;
    pb_component comp;
    if (!parse_site(cmd, c, site, name, &head, &at, &comp, &layer))
        return 0;
    int has_heads = comp == PB_COMPONENT_Z || comp == PB_COMPONENT_Q || comp == PB_COMPONENT_K ||
                    comp == PB_COMPONENT_V;
    if (head >= 0 && !has_heads) {
        fprintf(stderr, "patchbay %s: --patch %s: %s has no heads\n", cmd, site, name);
        return 0;
    }
    /* base positions, ascending, and their end-aligned source positions */
    int n_common = T_base < T_src ? T_base : T_src;
    b->positions = malloc(sizeof(int) * (size_t)T_base);
    int *src_pos = malloc(sizeof(int) * (size_t)T_base);
    int n = 0, ok = b->positions && src_pos;
    if (ok && at) {
        ok = listed_positions(cmd, site, at + 1, T_base, T_src, b->positions, src_pos, &n);
    } else if (ok) {
        for (int i = 0; i < n_common; i++) {
            b->positions[n] = T_base - n_common + i;
            src_pos[n++] = T_src - n_common + i;
        }
    }
    ok = ok && capture_patch_values(cmd, m, site, name, src_ids, T_src, head, has_heads, src_pos, n, b);
    free(src_pos);
    if (!ok)
        return 0;
    b->iv = (pb_intervention){.kind = PB_INTERVENE_PATCH,
                              .component = comp,
                              .layer = layer,
                              .head = head,
                              .n_positions = n,
                              .positions = b->positions,
                              .values = b->values};
    snprintf(b->description, sizeof b->description, "patch %s at %d position%s from the source prompt", site, n,
             n == 1 ? "" : "s");
    return 1;
}

/* The direction interventions (patch needs the base prompt: build_patch). */
int pb_cli_iv_build_direction(const char *cmd, pb_model *m, const pb_cli_iv_options *o, pb_cli_iv_build *b) {
    const pb_model_config *c = pb_model_get_config(m);
    if (o->ablate_file) {
        if (!pb_cli_direction_read(cmd, o->ablate_file, c->d_model, &b->direction, NULL))
            return 0;
        b->iv = (pb_intervention){.kind = PB_INTERVENE_ABLATE, .direction = b->direction};
        snprintf(b->description, sizeof b->description, "ablate direction %s", o->ablate_file);
    } else if (o->add_file) {
        if (!pb_cli_direction_read(cmd, o->add_file, c->d_model, &b->direction, NULL))
            return 0;
        double scale = o->scale;
        if (!o->scale_given) {
            double norm = sibling_difference_norm(o->add_file);
            if (isfinite(norm))
                scale = norm;
        }
        b->iv = (pb_intervention){
            .kind = PB_INTERVENE_ADD, .layer = o->layer, .direction = b->direction, .scale = scale};
        snprintf(b->description, sizeof b->description, "add %g x direction %s at resid_pre of layer %d", scale,
                 o->add_file, o->layer);
    }
    return 1;
}

/* ---- generate --------------------------------------------------------------------- */

/* generate prints every continuation: a few. */
#define PB_CLI_MAX_SAMPLES_SHOWN 64

static void print_line(const char *label, const char *text) {
    printf("%s: ", label);
    fputs(text ? text : "(could not decode)", stdout);
    printf("\n");
}

static void print_ids(const char *label, const int32_t *ids, int n) {
    printf("%s: ", label);
    for (int i = 0; i < n; i++)
        printf("%s%d", i ? "," : "", ids[i]);
    printf("\n");
}

/* Continuation k of K as text and ids; "continuation" alone when K is 1. */
static void print_sample(pb_model *m, int k, int K, const char *what, const int32_t *ids, int n) {
    char label[96], ids_label[128];
    if (K > 1)
        snprintf(label, sizeof label, "%s %d/%d", what, k + 1, K);
    else
        snprintf(label, sizeof label, "%s", what);
    snprintf(ids_label, sizeof ids_label, "%s ids", label);
    char *text = pb_cli_iv_decode(m, ids, n);
    print_line(label, text);
    print_ids(ids_label, ids, n);
    free(text);
}

int pb_cli_generate(int argc, char **argv) {
    const char *cmd = "generate";
    pb_cli_iv_options o;
    if (!pb_cli_iv_parse(argc, argv, &o))
        return 2;
    if ((!!o.prompt + !!o.ids + !!o.ids_file) != 1) {
        fprintf(stderr, "patchbay generate: give exactly one of --prompt, --ids or --ids-file\n");
        return 2;
    }
    if (o.gen.samples > PB_CLI_MAX_SAMPLES_SHOWN) {
        fprintf(stderr, "patchbay generate: at most %d --samples (refusal-rate takes more)\n",
                PB_CLI_MAX_SAMPLES_SHOWN);
        return 2;
    }
    int32_t *ids = NULL, *src = NULL;
    int T = 0, T_src = 0;
    pb_status st = PB_OK;
    if (o.ids)
        st = pb_ids_parse(o.ids, "--ids", &ids, &T);
    else if (o.ids_file)
        st = pb_ids_read_file(o.ids_file, &ids, &T);
    if (st == PB_OK && o.from_ids)
        st = pb_ids_parse(o.from_ids, "--from-ids", &src, &T_src);
    if (st != PB_OK) {
        pb_cli_iv_fail(cmd, "reading token ids");
        free(ids);
        return 2;
    }
    pb_model *m = pb_cli_iv_load_model(cmd, &o);
    int rc = 1;
    pb_cli_iv_build b;
    memset(&b, 0, sizeof b);
    int32_t *out = NULL, *plain = NULL;
    char *prompt_text = NULL;
    if (!m)
        goto done;
    if (o.prompt && !pb_cli_iv_text_ids(cmd, m, &o, o.prompt, &ids, &T))
        goto done;
    if (o.from_text && !pb_cli_iv_text_ids(cmd, m, &o, o.from_text, &src, &T_src))
        goto done;
    if (o.patch_site ? !pb_cli_iv_build_patch(cmd, m, o.patch_site, src, T_src, T, &b)
                     : !pb_cli_iv_build_direction(cmd, m, &o, &b))
        goto done;
    int active = b.iv.kind != PB_INTERVENE_NONE, K = o.gen.samples, width = o.max_new > 0 ? o.max_new : 1;
    int n[PB_CLI_MAX_SAMPLES_SHOWN], n_plain[PB_CLI_MAX_SAMPLES_SHOWN];
    out = malloc(sizeof(int32_t) * (size_t)width * K);
    plain = malloc(sizeof(int32_t) * (size_t)width * K);
    if (!out || !plain) {
        fprintf(stderr, "patchbay generate: out of memory\n");
        goto done;
    }
    pb_generate_options go = pb_cli_sampling_options(&o.gen, o.max_new);
    const int32_t *prompt_ids = ids;
    go.iv = active ? &b.iv : NULL;
    if (pb_generate_batch(m, &prompt_ids, &T, 1, &go, out, n) != PB_OK) {
        pb_cli_iv_fail(cmd, "generate failed");
        goto done;
    }
    go.iv = NULL;
    if (active && pb_generate_batch(m, &prompt_ids, &T, 1, &go, plain, n_plain) != PB_OK) {
        pb_cli_iv_fail(cmd, "generate failed");
        goto done;
    }
    prompt_text = pb_cli_iv_decode(m, ids, T);
    print_line("prompt", prompt_text);
    if (K > 1 || o.gen.sampling.temperature > 0) {
        char how[256];
        pb_cli_sampling_describe(&o.gen, how, sizeof how);
        printf("decoding: %s\n", how);
    }
    if (active)
        printf("intervention: %s\n", b.description);
    for (int k = 0; k < K; k++)
        print_sample(m, k, K, "continuation", out + (size_t)k * width, n[k]);
    for (int k = 0; active && k < K; k++)
        print_sample(m, k, K, "without intervention", plain + (size_t)k * width, n_plain[k]);
    rc = 0;
done:
    free(prompt_text);
    free(out);
    free(plain);
    free(ids);
    free(src);
    pb_cli_iv_build_free(&b);
    pb_model_free(m);
    return rc;
}
