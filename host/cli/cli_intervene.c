/* The generate, refusal-rate and direction commands (see cli_intervene.h).
 * Text goes through the model's tokenizer and chat template
 * (pb_model_chat_tokenize); --ids / --ids-file bypass both. */
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
#include "cli/cli_model.h"
#include "cli/cli_text.h"
#include "cli/ids.h"
#include "cli/options.h"
#include "cli/progress.h"
#include "patchbay.h"
#include "patchbay_tool.h"

/* ---- options -------------------------------------------------------------- */

typedef struct cli {
    pb_cli_model model;
    const char *prompt, *system, *ids, *ids_file;
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
    /* direction */
    const char *out;
    int overwrite;
    int train, val, layer_stride, n_post;
    double max_layer_fraction, kl_threshold;
} cli;

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
    {.flag = "--no-chat",
     .kind = PB_OPT_FLAG,
     .help = "tokenize the text as it is, without the chat template (no BOS is added either)",
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
     .help = "layer of --add-direction",
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
static void option_targets(cli *o, void *targets[N_OPTION_ROWS]) {
    void *t[] = {&o->prompt,      &o->system,     &o->no_chat,      &o->ids,      &o->ids_file,
                 &o->max_new,     &o->patch_site, &o->from_text,    &o->from_ids, &o->ablate_file,
                 &o->add_file,    &o->layer,      &o->scale,        &o->prompts,  &o->split,
                 &o->side,        &o->limit,      &o->json_out,     &o->verbose,  &o->out,
                 &o->train,       &o->val,        &o->layer_stride, &o->n_post,   &o->max_layer_fraction,
                 &o->kl_threshold};
    _Static_assert(sizeof t / sizeof t[0] == N_OPTION_ROWS, "one target per option row");
    memcpy(targets, t, sizeof t);
}

/* One table for generate, refusal-rate and direction, each row naming the
 * commands that take it, in t->table. */
static void cli_table(cli *o, pb_cli_tables *t) {
    pb_cli_option *table = t->table;
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, DIRECTION, NULL, NULL);
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
    cli o;
    pb_cli_tables t;
    cli_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

static int usage_error(const char *cmd, const char *msg, const char *arg) {
    fprintf(stderr, "patchbay %s: %s%s%s (see patchbay help %s)\n", cmd, msg, arg ? " " : "", arg ? arg : "", cmd);
    return 0;
}

/* argv[0] is the command. */
static int parse_cli(int argc, char **argv, cli *o) {
    const char *cmd = argv[0];
    *o = (cli){.max_new = 32, .layer = -1, .scale = 1.0};
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

static int fail_msg(const char *cmd, const char *what) {
    const char *e = pb_last_error();
    fprintf(stderr, "patchbay %s: %s%s%s\n", cmd, what, *e ? ": " : "", e);
    return 1;
}

static pb_model *load_model(const char *cmd, const cli *o) {
    pb_model *m = NULL;
    if (pb_cli_model_load(&o->model, &m) != PB_OK) {
        fail_msg(cmd, "cannot load model");
        return NULL;
    }
    return m;
}

/* ---- ids and text ----------------------------------------------------------- */

/* A user message as ids: chat-templated unless no_chat. */
static int text_ids(const char *cmd, pb_model *m, const cli *o, const char *text, int32_t **ids, int *T) {
    pb_status st = o->no_chat ? pb_model_tokenize(m, text, 0, ids, T)
                              : pb_model_chat_tokenize(m, o->system, text, ids, T);
    if (st != PB_OK)
        return !fail_msg(cmd, o->no_chat ? "tokenizing" : "applying the chat template");
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
static char *decode(pb_model *m, const int32_t *ids, int n) {
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

typedef struct iv_build {
    pb_intervention iv;
    float *direction; /* owned */
    float *values;    /* owned */
    int *positions;   /* owned */
    char description[512];
} iv_build;

static void iv_build_free(iv_build *b) {
    free(b->direction);
    free(b->values);
    free(b->positions);
    memset(b, 0, sizeof *b);
}

static int load_direction(const char *cmd, const pb_model_config *c, const char *path, float **out) {
    void *data;
    int n_dims;
    int64_t shape[8];
    if (pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape) != PB_OK)
        return !fail_msg(cmd, "reading the direction");
    if (n_dims != 1 || shape[0] != c->d_model) {
        fprintf(stderr, "patchbay %s: %s must hold a 1-d float array of d_model = %d values\n", cmd, path, c->d_model);
        free(data);
        return 0;
    }
    *out = data;
    return 1;
}

/* difference_norm from direction.json in the directory of path; NaN if absent. */
static double sibling_difference_norm(const char *path) {
    char json_path[4096];
    const char *slash = strrchr(path, '/');
    int dir_len = slash ? (int)(slash - path) : 1;
    snprintf(json_path, sizeof json_path, "%.*s/direction.json", dir_len, slash ? path : ".");
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
                                iv_build *b) {
    const pb_model_config *c = pb_model_get_config(m);
    pb_capture *cap = NULL;
    int ok = 1;
    if (pb_capture_create(&cap, m, name) != PB_OK)
        ok = !fail_msg(cmd, "--patch");
    if (ok && pb_forward(m, src_ids, T_src, NULL, cap) != PB_OK)
        ok = !fail_msg(cmd, "running the --from prompt");
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
static int build_patch(const char *cmd, pb_model *m, const char *site, const int32_t *src_ids, int T_src, int T_base,
                       iv_build *b) {
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
static int build_direction_iv(const char *cmd, pb_model *m, const cli *o, iv_build *b) {
    const pb_model_config *c = pb_model_get_config(m);
    if (o->ablate_file) {
        if (!load_direction(cmd, c, o->ablate_file, &b->direction))
            return 0;
        b->iv = (pb_intervention){.kind = PB_INTERVENE_ABLATE, .direction = b->direction};
        snprintf(b->description, sizeof b->description, "ablate direction %s", o->ablate_file);
    } else if (o->add_file) {
        if (!load_direction(cmd, c, o->add_file, &b->direction))
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
    char *text = decode(m, ids, n);
    print_line(label, text);
    print_ids(ids_label, ids, n);
    free(text);
}

int pb_cli_generate(int argc, char **argv) {
    const char *cmd = "generate";
    cli o;
    if (!parse_cli(argc, argv, &o))
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
        fail_msg(cmd, "reading token ids");
        free(ids);
        return 2;
    }
    pb_model *m = load_model(cmd, &o);
    int rc = 1;
    iv_build b;
    memset(&b, 0, sizeof b);
    int32_t *out = NULL, *plain = NULL;
    char *prompt_text = NULL;
    if (!m)
        goto done;
    if (o.prompt && !text_ids(cmd, m, &o, o.prompt, &ids, &T))
        goto done;
    if (o.from_text && !text_ids(cmd, m, &o, o.from_text, &src, &T_src))
        goto done;
    if (o.patch_site ? !build_patch(cmd, m, o.patch_site, src, T_src, T, &b) : !build_direction_iv(cmd, m, &o, &b))
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
        fail_msg(cmd, "generate failed");
        goto done;
    }
    go.iv = NULL;
    if (active && pb_generate_batch(m, &prompt_ids, &T, 1, &go, plain, n_plain) != PB_OK) {
        fail_msg(cmd, "generate failed");
        goto done;
    }
    prompt_text = decode(m, ids, T);
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
    iv_build_free(&b);
    pb_model_free(m);
    return rc;
}

/* ---- prompt files --------------------------------------------------------------------- */

typedef struct prompt_item {
    char *id;
    char *text;
    int harmful; /* 1 harmful, 0 harmless, -1 unlabelled (text file) */
    char *split;
} prompt_item;

typedef struct prompt_file {
    prompt_item *items;
    int n, cap;
    char **refusal_tokens;
    int n_refusal_tokens;
} prompt_file;

static void prompt_file_free(prompt_file *f) {
    for (int i = 0; i < f->n; i++) {
        free(f->items[i].id);
        free(f->items[i].text);
        free(f->items[i].split);
    }
    free(f->items);
    for (int i = 0; i < f->n_refusal_tokens; i++)
        free(f->refusal_tokens[i]);
    free(f->refusal_tokens);
    memset(f, 0, sizeof *f);
}

static int add_item(prompt_file *f, const char *id, const char *text, int harmful, const char *split) {
    if (f->n == f->cap) {
        int cap = f->cap ? 2 * f->cap : 64;
        prompt_item *grown = realloc(f->items, sizeof *grown * (size_t)cap);
        if (!grown)
            return 0;
        f->items = grown;
        f->cap = cap;
    }
    prompt_item *it = &f->items[f->n];
    it->id = strdup(id);
    it->text = strdup(text);
    it->split = strdup(split ? split : "");
    it->harmful = harmful;
    if (!it->id || !it->text || !it->split) {
        free(it->id);
        free(it->text);
        free(it->split);
        return 0;
    }
    f->n++;
    return 1;
}

/* The "id" of pairs[i]: a string, an integer, else its index. */
static void pair_id(json_t *e, size_t i, char id[64]) {
    json_t *idv = json_object_get(e, "id");
    if (json_is_string(idv))
        snprintf(id, 64, "%s", json_string_value(idv));
    else if (json_is_integer(idv))
        snprintf(id, 64, "%lld", (long long)json_integer_value(idv));
    else
        snprintf(id, 64, "%zu", i);
}

/* "refusal_tokens" of a refusal_pairs.json, when present. */
static int read_refusal_tokens(const char *cmd, const char *path, json_t *root, prompt_file *f) {
    json_t *tokens = json_object_get(root, "refusal_tokens");
    if (!json_is_array(tokens) || json_array_size(tokens) == 0)
        return 1;
    f->refusal_tokens = calloc(json_array_size(tokens), sizeof(char *));
    if (!f->refusal_tokens)
        return 0;
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const char *t = json_string_value(json_array_get(tokens, i));
        if (!t) {
            fprintf(stderr, "patchbay %s: %s: refusal_tokens[%zu] must be a string\n", cmd, path, i);
            return 0;
        }
        if (!(f->refusal_tokens[f->n_refusal_tokens++] = strdup(t)))
            return 0;
    }
    return 1;
}

/* refusal_pairs.json: each pair's harmful and harmless prompt, and the refusal tokens. */
static int read_pairs_json(const char *cmd, const char *path, const char *text, prompt_file *f) {
    json_error_t err;
    json_t *root = json_loads(text, 0, &err);
    json_t *pairs = root ? json_object_get(root, "pairs") : NULL;
    int ok = 1;
    if (!root) {
        fprintf(stderr, "patchbay %s: %s:%d:%d: %s\n", cmd, path, err.line, err.column, err.text);
        ok = 0;
    } else if (!json_is_array(pairs)) {
        fprintf(stderr, "patchbay %s: %s: \"pairs\" must be an array\n", cmd, path);
        ok = 0;
    }
    for (size_t i = 0; ok && i < json_array_size(pairs); i++) {
        json_t *e = json_array_get(pairs, i);
        const char *harmful = json_string_value(json_object_get(e, "harmful"));
        const char *harmless = json_string_value(json_object_get(e, "harmless"));
        const char *split = json_string_value(json_object_get(e, "split"));
        char id[64];
        pair_id(e, i, id);
        if (!harmful || !harmless) {
            fprintf(stderr, "patchbay %s: %s: pairs[%zu] needs string \"harmful\" and \"harmless\"\n", cmd, path, i);
            ok = 0;
            break;
        }
        ok = add_item(f, id, harmful, 1, split) && add_item(f, id, harmless, 0, split);
    }
    ok = ok && read_refusal_tokens(cmd, path, root, f);
    json_decref(root);
    return ok;
}

/* One prompt per line; blank lines and '#' comments skipped. Edits text. */
static int read_prompt_lines(char *text, prompt_file *f) {
    int ok = 1, line_no = 0;
    for (char *line = text; ok && line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = 0;
        line_no++;
        size_t len = strlen(line);
        if (len && line[len - 1] == '\r')
            line[--len] = 0;
        const char *s = line;
        while (*s == ' ' || *s == '\t')
            s++;
        if (*s && *s != '#') {
            char id[32];
            snprintf(id, sizeof id, "line%d", line_no);
            ok = add_item(f, id, s, -1, NULL);
        }
        line = nl ? nl + 1 : NULL;
    }
    return ok;
}

/* refusal_pairs.json or one prompt per line. */
static int load_prompt_file(const char *cmd, const char *path, prompt_file *f) {
    memset(f, 0, sizeof *f);
    char *text = NULL;
    if (pb_read_input_file(path, PB_INPUT_MAX_BYTES, NULL, &text, NULL) != PB_OK)
        return !fail_msg(cmd, "--prompts");
    const char *p = text;
    while (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n')
        p++;
    int ok = *p == '{' ? read_pairs_json(cmd, path, text, f) : read_prompt_lines(text, f);
    free(text);
    if (ok && f->n == 0) {
        fprintf(stderr, "patchbay %s: %s holds no prompts\n", cmd, path);
        ok = 0;
    }
    if (!ok)
        prompt_file_free(f);
    return ok;
}

static int split_matches(const char *want, const char *split) {
    if (!want || strcmp(want, "all") == 0 || !*split)
        return 1;
    if (strcmp(want, "validation") == 0 || strcmp(want, "val") == 0)
        return strcmp(split, "validation") == 0 || strcmp(split, "val") == 0;
    return strcmp(want, split) == 0;
}

/* ---- refusal-rate ----------------------------------------------------------------------- */

/* The prompts of one refusal-rate run, tokenized, and what became of them. */
typedef struct rate_run_state {
    int n, K, width;           /* prompts, samples per prompt, max_new (at least 1) */
    const prompt_item **items; /* (n) borrowed */
    int32_t **ids;             /* (n) */
    int *T;                    /* (n) */
    int32_t *out;              /* (n * K, width) */
    int *n_out;                /* (n * K) */
    int *refused;              /* (n) refusals of K */
} rate_run_state;

static void rate_state_free(rate_run_state *r) {
    for (int i = 0; r->ids && i < r->n; i++)
        free(r->ids[i]);
    free(r->items);
    free(r->ids);
    free(r->T);
    free(r->out);
    free(r->n_out);
    free(r->refused);
    memset(r, 0, sizeof *r);
}

static const char *side_name(const prompt_item *it) {
    return it->harmful < 0 ? "prompt" : it->harmful ? "harmful" : "harmless";
}

/* The prompts the run takes (split, side, --limit), tokenized: 1, or 0 after saying why. */
static int rate_select(const char *cmd, pb_model *m, const cli *o, const prompt_file *f, const char *split,
                       const char *side, rate_run_state *r) {
    memset(r, 0, sizeof *r);
    r->K = o->gen.samples;
    r->width = o->max_new > 0 ? o->max_new : 1;
    r->items = calloc((size_t)f->n, sizeof *r->items);
    r->ids = calloc((size_t)f->n, sizeof *r->ids);
    r->T = calloc((size_t)f->n, sizeof *r->T);
    if (!r->items || !r->ids || !r->T)
        return !fail_msg(cmd, "out of memory");
    int count[2] = {0, 0};
    for (int i = 0; i < f->n; i++) {
        const prompt_item *it = &f->items[i];
        int cls = it->harmful != 0;
        if (!split_matches(split, it->split) ||
            (it->harmful >= 0 && strcmp(side, "both") && (it->harmful == 1) != (strcmp(side, "harmful") == 0)) ||
            (o->limit && count[cls] >= o->limit))
            continue;
        if (!text_ids(cmd, m, o, it->text, &r->ids[r->n], &r->T[r->n]))
            return 0;
        r->items[r->n++] = it;
        count[cls]++;
    }
    size_t rows = (size_t)(r->n > 0 ? r->n : 1) * r->K;
    r->out = malloc(sizeof(int32_t) * rows * r->width);
    r->n_out = calloc(rows, sizeof(int));
    r->refused = calloc((size_t)(r->n > 0 ? r->n : 1), sizeof(int));
    if (!r->out || !r->n_out || !r->refused)
        return !fail_msg(cmd, "out of memory");
    return 1;
}

/* Every continuation: all prompts in one batched call, or (--patch, whose
 * positions depend on each prompt's length) one call per prompt. */
static int rate_generate(const char *cmd, pb_model *m, const cli *o, const int32_t *src, int T_src, iv_build *b,
                         rate_run_state *r) {
    pb_generate_options go = pb_cli_sampling_options(&o->gen, o->max_new);
    pb_progress progress;
    pb_progress_init(&progress, stderr, "generate", -1);
    progress.unit = "continuations";
    go.progress = pb_progress_callback;
    go.progress_user = &progress;
    pb_status st = PB_OK;
    if (!o->patch_site) {
        go.iv = b->iv.kind ? &b->iv : NULL;
        st = pb_generate_batch(m, (const int32_t *const *)r->ids, r->T, r->n, &go, r->out, r->n_out);
    }
    for (int i = 0; o->patch_site && st == PB_OK && i < r->n; i++) {
        iv_build_free(b);
        if (!build_patch(cmd, m, o->patch_site, src, T_src, r->T[i], b))
            return 0;
        go.iv = &b->iv;
        go.progress = NULL;
        st = pb_generate_batch(m, (const int32_t *const *)&r->ids[i], &r->T[i], 1, &go,
                               r->out + (size_t)i * r->K * r->width, r->n_out + (size_t)i * r->K);
        pb_progress_update(&progress, i + 1, r->n);
    }
    if (st != PB_OK)
        return !fail_msg(cmd, "generate failed");
    pb_progress_finish(&progress);
    return 1;
}

static void print_verbose_line(const prompt_item *it, int refused, const char *text) {
    char *flat = strdup(text);
    for (char *q = flat; q && *q; q++)
        if (*q == '\n' || *q == '\r')
            *q = ' ';
    printf("%-9s %-8s %-10s %s -> %s\n", refused ? "REFUSED" : "complied", side_name(it), it->id, it->text,
           flat ? flat : text);
    fflush(stdout);
    free(flat);
}

/* Judges every continuation; one JSON item per prompt into items. */
static int rate_judge(const char *cmd, pb_model *m, const cli *o, rate_run_state *r, json_t *items) {
    for (int i = 0; i < r->n; i++) {
        json_t *texts = json_array(), *refusals = json_array();
        for (int k = 0; k < r->K; k++) {
            size_t s = (size_t)i * r->K + k;
            char *text = decode(m, r->out + s * r->width, r->n_out[s]);
            if (!text)
                return !fail_msg(cmd, "decoding");
            int refused = pb_text_is_refusal(text);
            r->refused[i] += refused;
            if (o->verbose)
                print_verbose_line(r->items[i], refused, text);
            json_array_append_new(texts, json_string(text));
            json_array_append_new(refusals, json_boolean(refused));
            free(text);
        }
        json_t *e = json_object();
        json_object_set_new(e, "id", json_string(r->items[i]->id));
        json_object_set_new(e, "side", json_string(side_name(r->items[i])));
        json_object_set_new(e, "prompt", json_string(r->items[i]->text));
        json_object_set_new(e, "continuations", texts);
        json_object_set_new(e, "refusals", refusals);
        json_object_set_new(e, "refused", json_integer(r->refused[i]));
        json_array_append_new(items, e);
    }
    return 1;
}

/* A rate on stdout: "harmful: 23/27 refused (85.2%; 95% CI 67.5-94.1%)". */
static void print_rate(const char *name, const pb_rate *rate) {
    printf("%s: %d/%d refused (%.1f%%; 95%% CI %.1f-%.1f%%", name, rate->refused, rate->n_prompts * rate->n_samples,
           100 * rate->rate, 100 * rate->low, 100 * rate->high);
    if (rate->n_samples > 1)
        printf("; %d prompts x %d samples, effective n %.1f", rate->n_prompts, rate->n_samples, rate->n_effective);
    printf(")\n");
}

/* The rates per side on stdout, and as JSON. */
static json_t *rate_sides(const prompt_file *f, const rate_run_state *r) {
    json_t *sides = json_object();
    int *counts = malloc(sizeof(int) * (size_t)(r->n > 0 ? r->n : 1));
    for (int cls = 1; counts && cls >= 0; cls--) {
        int n = 0;
        for (int i = 0; i < r->n; i++)
            if ((r->items[i]->harmful != 0) == cls)
                counts[n++] = r->refused[i];
        pb_rate rate;
        if (n == 0 || pb_rate_estimate(counts, n, r->K, &rate) != PB_OK)
            continue;
        const char *name = cls ? (f->items[0].harmful < 0 ? "prompts" : "harmful") : "harmless";
        print_rate(name, &rate);
        json_object_set_new(sides, name,
                            json_pack("{s:i,s:i,s:i,s:f,s:[f,f],s:f}", "prompts", rate.n_prompts, "samples",
                                      rate.n_samples, "refused", rate.refused, "rate", rate.rate, "ci95", rate.low,
                                      rate.high, "n_effective", rate.n_effective));
    }
    free(counts);
    return sides;
}

/* --json OUT: schema patchbay.refusal_rate/2. Takes sides. */
static int write_rate_json(const char *cmd, const pb_model *m, const cli *o, const char *split, const iv_build *b,
                           json_t *sides, json_t *items) {
    char how[256];
    pb_cli_sampling_describe(&o->gen, how, sizeof how);
    const pb_sampling *sp = &o->gen.sampling;
    json_t *report = json_object();
    json_object_set_new(report, "schema", json_string("patchbay.refusal_rate/2"));
    json_object_set_new(report, "model", json_string(pb_model_get_source(m)));
    json_object_set_new(report, "prompts", json_string(o->prompts));
    json_object_set_new(report, "split", json_string(split));
    json_object_set_new(report, "max_new_tokens", json_integer(o->max_new));
    json_object_set_new(report, "decoding",
                        json_pack("{s:s,s:f,s:i,s:f,s:f,s:I,s:i}", "description", how, "temperature", sp->temperature,
                                  "top_k", sp->top_k, "top_p", sp->top_p > 0 ? sp->top_p : 1.0, "min_p", sp->min_p,
                                  "seed", (json_int_t)sp->seed, "samples", o->gen.samples));
    json_object_set_new(report, "intervention",
                        b->description[0] ? json_string(b->description)
                        : o->patch_site   ? json_string(o->patch_site)
                                          : json_null());
    json_object_set_new(report, "sides", sides);
    json_object_set(report, "items", items);
    char *dump = json_dumps(report, JSON_INDENT(2));
    json_decref(report);
    if (!dump || pb_write_file_atomic(o->json_out, dump, strlen(dump)) != PB_OK) {
        free(dump);
        return !fail_msg(cmd, "writing --json");
    }
    free(dump);
    return 1;
}

/* The source prompt of --patch (--from-ids or --from) and the direction
 * interventions, announced on stdout. */
static int rate_intervention(const char *cmd, pb_model *m, const cli *o, int32_t **src, int *T_src, iv_build *b) {
    if (o->from_ids && pb_ids_parse(o->from_ids, "--from-ids", src, T_src) != PB_OK)
        return !fail_msg(cmd, "reading token ids");
    if (o->from_text && !text_ids(cmd, m, o, o->from_text, src, T_src))
        return 0;
    if (!o->patch_site && !build_direction_iv(cmd, m, o, b))
        return 0;
    if (b->description[0])
        printf("intervention: %s\n", b->description);
    else if (!o->patch_site)
        printf("intervention: none\n");
    char how[256];
    pb_cli_sampling_describe(&o->gen, how, sizeof how);
    printf("decoding: %s, at most %d new tokens\n", how, o->max_new);
    return 1;
}

/* Runs every wanted prompt and reports: the exit status. */
static int rate_run(const char *cmd, pb_model *m, const cli *o, const prompt_file *f, const char *split,
                    const char *side, iv_build *b, const int32_t *src, int T_src) {
    rate_run_state r;
    json_t *items = json_array();
    int rc = 1;
    double t0 = pb_now_seconds();
    if (!rate_select(cmd, m, o, f, split, side, &r))
        goto done;
    if (r.n == 0) {
        fprintf(stderr, "patchbay refusal-rate: no prompt of %s matches --split %s --side %s\n", o->prompts, split,
                side);
        rc = 2;
        goto done;
    }
    if (!rate_generate(cmd, m, o, src, T_src, b, &r) || !rate_judge(cmd, m, o, &r, items))
        goto done;
    json_t *sides = rate_sides(f, &r);
    fprintf(stderr, "patchbay refusal-rate: %d prompts x %d sample%s in %.1f s\n", r.n, r.K, r.K == 1 ? "" : "s",
            pb_now_seconds() - t0);
    if (o->json_out) {
        if (!write_rate_json(cmd, m, o, split, b, sides, items))
            goto done;
    } else {
        json_decref(sides);
    }
    rc = 0;
done:
    json_decref(items);
    rate_state_free(&r);
    return rc;
}

int pb_cli_refusal_rate(int argc, char **argv) {
    const char *cmd = "refusal-rate";
    cli o;
    if (!parse_cli(argc, argv, &o))
        return 2;
    if (!o.prompts) {
        fprintf(stderr, "patchbay refusal-rate: --prompts FILE is required\n");
        return 2;
    }
    const char *side = o.side ? o.side : "both";
    if (strcmp(side, "harmful") && strcmp(side, "harmless") && strcmp(side, "both")) {
        fprintf(stderr, "patchbay refusal-rate: --side must be harmful, harmless or both (got '%s')\n", side);
        return 2;
    }
    /* Refused before any work, as every command refuses to replace outputs. */
    if (o.json_out && pb_out_file_check(o.json_out, o.overwrite) != PB_OK) {
        fprintf(stderr, "patchbay refusal-rate: --json: %s\n", pb_last_error());
        return 2;
    }
    const char *split = o.split ? o.split : "validation";
    prompt_file f;
    if (!load_prompt_file(cmd, o.prompts, &f))
        return 2;
    pb_model *m = load_model(cmd, &o);
    int rc = 1;
    iv_build b;
    memset(&b, 0, sizeof b);
    int32_t *src = NULL;
    int T_src = 0;
    if (m && rate_intervention(cmd, m, &o, &src, &T_src, &b))
        rc = rate_run(cmd, m, &o, &f, split, side, &b, src, T_src);
    free(src);
    iv_build_free(&b);
    prompt_file_free(&f);
    pb_model_free(m);
    return rc;
}

/* ---- direction ----------------------------------------------------------------------------- */

typedef struct id_lists {
    int32_t **ids[4];
    int *T[4];
    int n[4];
} id_lists;

/* --out, before any work: an empty or missing folder, or --overwrite (the
 * rule of every command; pb_direction_write makes the folder). */
static int check_out_dir(const char *cmd, const char *dir, int overwrite) {
    if (pb_out_dir_check(dir, overwrite) == PB_OK)
        return 1;
    fprintf(stderr, "patchbay %s: --out: %s\n", cmd, pb_last_error());
    return 0;
}

/* Refusal token strings as ids: the first token of each string, without repeats. */
static int refusal_token_ids(pb_model *m, const prompt_file *f, int32_t *refusal, int *n_refusal) {
    *n_refusal = 0;
    for (int i = 0; i < f->n_refusal_tokens; i++) {
        int32_t *t = NULL;
        int n = 0;
        if (pb_model_tokenize(m, f->refusal_tokens[i], 0, &t, &n) != PB_OK || n == 0) {
            free(t);
            fprintf(stderr, "patchbay direction: refusal token '%s' does not tokenize%s%s\n", f->refusal_tokens[i],
                    *pb_last_error() ? ": " : "", pb_last_error());
            return 0;
        }
        if (n > 1)
            fprintf(stderr, "patchbay direction: refusal token '%s' is %d tokens; using its first (id %d)\n",
                    f->refusal_tokens[i], n, t[0]);
        int dup = 0;
        for (int k = 0; k < *n_refusal; k++)
            dup |= refusal[k] == t[0];
        if (!dup)
            refusal[(*n_refusal)++] = t[0];
        free(t);
    }
    return 1;
}

static void id_lists_free(id_lists *L) {
    for (int s = 0; s < 4; s++) {
        for (int i = 0; i < L->n[s]; i++)
            free(L->ids[s][i]);
        free(L->ids[s]);
        free(L->T[s]);
    }
}

/* The prompts as ids in four sets: 0 harmful train, 1 harmless train, 2
 * harmful val, 3 harmless val, each up to its limit (--train, --val). */
static int collect_id_lists(const char *cmd, pb_model *m, const cli *o, const prompt_file *f, id_lists *L) {
    for (int s = 0; s < 4; s++) {
        L->ids[s] = calloc((size_t)f->n, sizeof(int32_t *));
        L->T[s] = calloc((size_t)f->n, sizeof(int));
        if (!L->ids[s] || !L->T[s])
            return 0;
    }
    int limits[4] = {o->train ? o->train : 32, o->train ? o->train : 32, o->val ? o->val : 8, o->val ? o->val : 8};
    for (int i = 0; i < f->n; i++) {
        const prompt_item *it = &f->items[i];
        int val = split_matches("validation", it->split) && *it->split;
        int train = strcmp(it->split, "train") == 0;
        if (!val && !train)
            continue;
        int s = (val ? 2 : 0) + (it->harmful ? 0 : 1);
        if (L->n[s] >= limits[s])
            continue;
        if (!text_ids(cmd, m, o, it->text, &L->ids[s][L->n[s]], &L->T[s][L->n[s]]))
            return 0;
        L->n[s]++;
    }
    return 1;
}

/* The template's tokens after the user message: the common suffix of two
 * different templated messages (the prompts' own common suffix may include
 * shared punctuation). */
static int template_post_tokens(pb_model *m, const char *system) {
    int32_t *a = NULL, *c = NULL;
    int na = 0, nc = 0, n_post = 0;
    if (pb_model_chat_tokenize(m, system, "Hello", &a, &na) == PB_OK &&
        pb_model_chat_tokenize(m, system, "Bye", &c, &nc) == PB_OK)
        while (n_post < na && n_post < nc && a[na - 1 - n_post] == c[nc - 1 - n_post])
            n_post++;
    free(a);
    free(c);
    return n_post;
}

static void print_direction(const pb_direction_result *r, const char *out) {
    printf("selected: layer %d, position %d (of the last %d post-instruction tokens), |r| = %.4f%s\n", r->layer,
           r->position, r->n_post, r->norm, r->selected_passes ? "" : " (no candidate passed every filter)");
    printf("refusal score, harmful validation: %.3f baseline -> %.3f with the direction ablated\n", r->baseline_harmful,
           r->ablation_score);
    printf("refusal score, harmless validation: %.3f baseline -> %.3f with r added at layer %d\n", r->baseline_harmless,
           r->addition_score, r->layer);
    printf("KL on harmless validation under ablation: %.4f\n", r->kl);
    printf("candidates: %d; means %.1f s, scoring %.1f s\n", r->n_candidates, r->seconds_means, r->seconds_candidates);
    printf("wrote %s/direction.npy, %s/direction.json, %s/differences.npy\n", out, out, out);
}

/* Tokenizes the sets, computes the direction and writes it: 1 on success. */
static int direction_compute_write(const char *cmd, pb_model *m, const cli *o, const prompt_file *f,
                                   const int32_t *refusal, int n_refusal) {
    id_lists L;
    memset(&L, 0, sizeof L);
    pb_direction_result r;
    memset(&r, 0, sizeof r);
    int ok = collect_id_lists(cmd, m, o, f, &L);
    if (ok) {
        pb_direction_inputs in = {
            .harmful_train = {.n = L.n[0], .ids = (const int32_t *const *)L.ids[0], .T = L.T[0]},
            .harmless_train = {.n = L.n[1], .ids = (const int32_t *const *)L.ids[1], .T = L.T[1]},
            .harmful_val = {.n = L.n[2], .ids = (const int32_t *const *)L.ids[2], .T = L.T[2]},
            .harmless_val = {.n = L.n[3], .ids = (const int32_t *const *)L.ids[3], .T = L.T[3]},
            .n_post = o->n_post ? o->n_post : template_post_tokens(m, o->system),
            .refusal_ids = refusal,
            .n_refusal_ids = n_refusal,
            /* stride 3 keeps SmolLM2 (30 layers) within ~3 minutes on 2 cores; 1 is the paper's full search */
            .layer_stride = o->layer_stride ? o->layer_stride : 3,
            .max_layer_fraction = o->max_layer_fraction,
            .kl_threshold = o->kl_threshold};
        fprintf(stderr,
                "patchbay direction: %d + %d train, %d + %d validation prompts (harmful + harmless), %d "
                "refusal token ids\n",
                L.n[0], L.n[1], L.n[2], L.n[3], n_refusal);
        pb_direction_provenance prov = {.model_path = pb_model_get_source(m), .prompt_file = o->prompts};
        if (pb_direction_compute(m, &in, &r) != PB_OK)
            ok = !fail_msg(cmd, "computing the direction");
        else if (pb_direction_write(&r, o->out, &prov) != PB_OK)
            ok = !fail_msg(cmd, "writing the direction");
        else
            print_direction(&r, o->out);
    }
    pb_direction_result_free(&r);
    id_lists_free(&L);
    return ok;
}

/* The options and the prompt file the direction needs: 0, or the exit status. */
static int direction_inputs(const char *cmd, const cli *o, prompt_file *f) {
    if (!o->prompts || !o->out) {
        fprintf(stderr, "patchbay direction: --prompts FILE and --out DIR are required\n");
        return 2;
    }
    if (!load_prompt_file(cmd, o->prompts, f))
        return 2;
    int rc = 0;
    if (f->items[0].harmful < 0) {
        fprintf(stderr, "patchbay direction: %s must be a refusal_pairs.json file (harmful and harmless pairs)\n",
                o->prompts);
        rc = 2;
    } else if (f->n_refusal_tokens == 0) {
        fprintf(stderr, "patchbay direction: %s has no \"refusal_tokens\"\n", o->prompts);
        rc = 2;
    } else if (!check_out_dir(cmd, o->out, o->overwrite)) {
        rc = 2;
    }
    if (rc)
        prompt_file_free(f);
    return rc;
}

int pb_cli_direction(int argc, char **argv) {
    const char *cmd = "direction";
    cli o;
    if (!parse_cli(argc, argv, &o))
        return 2;
    prompt_file f;
    int rc = direction_inputs(cmd, &o, &f);
    if (rc)
        return rc;
    pb_model *m = load_model(cmd, &o);
    int32_t *refusal = malloc(sizeof(int32_t) * (size_t)f.n_refusal_tokens);
    int n_refusal = 0;
    rc = m && refusal && refusal_token_ids(m, &f, refusal, &n_refusal) &&
                 direction_compute_write(cmd, m, &o, &f, refusal, n_refusal)
             ? 0
             : 1;
    free(refusal);
    prompt_file_free(&f);
    pb_model_free(m);
    return rc;
}
