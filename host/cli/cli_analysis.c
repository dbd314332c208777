/* patchbay refusal-analysis: the project's main job in one command. On the
 * shipped harmful/harmless pairs it measures baseline behaviour (texts and
 * refusal rates), runs the patching sweep averaged over several pairs,
 * finds the refusal direction, measures refusal with it ablated and
 * added, and writes results.json, the .npy heatmaps, report.txt,
 * direction.npy/json and report.html. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli_analysis.h"
#include "cli/cli_attribute.h"
#include "cli/cli_model.h"
#include "cli/cli_sampling.h"
#include "cli/cli_text.h"
#include "cli/options.h"
#include "cli/progress.h"
#include "cli/prompt_notice.h"
#include "patchbay.h"
#include "patchbay_tool.h"

/* Returns the status of a failed call (the CLI's own PB_TRY). */
#define PB_STATUS_CHAIN(call)        \
    do {                             \
        pb_status chained_ = (call); \
        if (chained_ != PB_OK)       \
            return chained_;         \
    } while (0)

typedef struct analysis_options {
    pb_cli_model model;
    const char *pairs_path;
    const char *out;
    const char *chat_template;
    int sweep_pairs;
    const char *method; /* the sweep's: "exact", "atp", "atp*" or "atp-star" */
    int max_new;
    int layer_stride;    /* the direction's candidate layers */
    double kl_threshold; /* the direction selector's KL filter */
    pb_cli_sampling gen;
    int overwrite;
    int no_progress;
} analysis_options;

typedef struct prompt_pair {
    int id;
    int validation;
    const char *harmful, *harmless; /* borrowed from the JSON */
    int32_t *harmful_ids, *harmless_ids;
    int T_harmful, T_harmless;
} prompt_pair;

typedef struct analysis {
    pb_model *model;
    json_t *data;
    prompt_pair *pairs;
    int n_pairs;
    int32_t *refusal_ids;
    int n_refusal_ids;
} analysis;

static int fail(const char *what) {
    fprintf(stderr, "patchbay refusal-analysis: %s: %s\n", what, pb_last_error());
    return 1;
}

enum { ANALYSIS_OPTIONS = 10 };

static const char *const method_choices[] = {"exact", "atp", "atp*", "atp-star", NULL};

_Static_assert(ANALYSIS_OPTIONS + 1 <= PB_CLI_COMMAND_ROWS, "analysis options fit pb_cli_tables");

/* The command's option table (ANALYSIS_OPTIONS entries plus the end) in
 * t->table, writing into o. */
static void analysis_table(analysis_options *o, pb_cli_tables *t) {
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, NULL, &o->no_progress, NULL);
    pb_cli_sampling_table(&o->gen, NULL, t->sampling);
    const pb_cli_option options[ANALYSIS_OPTIONS + 1] = {
        {.flag = "--out", .kind = PB_OPT_STRING, .target = &o->out, .value = "DIR", .help = "output folder (required)"},
        {.flag = "--pairs",
         .kind = PB_OPT_STRING,
         .target = &o->pairs_path,
         .value = "FILE",
         .help = "harmful/harmless pairs and refusal tokens (default data/refusal_pairs.json)"},
        {.flag = "--chat-template",
         .kind = PB_OPT_STRING,
         .target = &o->chat_template,
         .value = "NAME|FILE",
         .help = "override the model's chat template (chatml, qwen3, llama3, llama2, gemma, gemma3, phi3, olmo2, "
                 "or a Jinja file)"},
        {.flag = "--sweep-pairs",
         .kind = PB_OPT_POSITIVE,
         .target = &o->sweep_pairs,
         .value = "N",
         .help = "pairs the patching sweep averages over (default 8)"},
        {.flag = "--method",
         .kind = PB_OPT_CHOICE,
         .target = &o->method,
         .choices = method_choices,
         .choices_text = "exact, atp, atp* or atp-star",
         .value = "exact|atp|atp*",
         .help = "how the patching sweep gets its effects: exact patched runs (default), or estimated by "
                 "attribution patching, AtP or AtP* (atp-star: the same, spelled for the shell)"},
        {.flag = "--max-new-tokens",
         .kind = PB_OPT_POSITIVE,
         .target = &o->max_new,
         .value = "N",
         .help = "tokens generated per continuation (default 32)"},
        {.flag = "--layer-stride",
         .kind = PB_OPT_POSITIVE,
         .target = &o->layer_stride,
         .value = "S",
         .help = "the direction's candidate layers every S layers (default 3; 1 = every layer)"},
        {.flag = "--kl-threshold",
         .kind = PB_OPT_DOUBLE,
         .target = &o->kl_threshold,
         .value = "K",
         .help = "the direction selector's largest KL on harmless prompts when ablating (default 0.1, as Arditi et "
                 "al.)"},
        {.flag = NULL, .kind = PB_OPT_TABLE, .target = t->sampling},
        {.flag = NULL, .kind = PB_OPT_TABLE, .target = t->common.table},
        {0},
    };
    memcpy(t->table, options, sizeof options);
}

void pb_cli_refusal_analysis_options(FILE *out, const char *cmd) {
    analysis_options o;
    pb_cli_tables t;
    analysis_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

static int parse_args(int argc, char **argv, analysis_options *o) {
    *o = (analysis_options){.pairs_path = "data/refusal_pairs.json",
                            .sweep_pairs = 8,
                            .method = "exact",
                            .max_new = 32,
                            .layer_stride = 3,
                            .kl_threshold = 0.1};
    pb_cli_tables t;
    analysis_table(o, &t);
    const pb_cli_parser parser = {.prefix = "patchbay refusal-analysis",
                                  .command_prefix = "patchbay refusal-analysis",
                                  .missing_value = "%s: option %s needs a value\n",
                                  .unknown = "%s: unknown option '%s' (see patchbay help refusal-analysis)\n",
                                  .command = "refusal-analysis"};
    if (!pb_cli_parse(&parser, t.table, argc, argv, 1) || !pb_cli_model_check(&o->model, "refusal-analysis") ||
        !pb_cli_sampling_check("refusal-analysis", &o->gen))
        return 0;
    if (!o->out) {
        fprintf(stderr, "patchbay refusal-analysis: --out DIR is required\n");
        return 0;
    }
    return 1;
}

/* data[key]: a non-empty array of strings that are one token each, as
 * written (no BOS); their ids into ids (may be NULL: checked only). */
static pb_status token_set(const analysis *an, const char *path, const char *key, int32_t *ids_out, int *n_out) {
    json_t *tokens = json_object_get(an->data, key);
    if (!json_is_array(tokens) || json_array_size(tokens) == 0)
        return pb_fail(PB_ERR_FORMAT, "%s: needs a non-empty \"%s\" array of one-token strings", path, key);
    *n_out = 0;
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const char *t = json_string_value(json_array_get(tokens, i));
        int32_t *ids = NULL;
        int n = 0;
        if (!t || pb_model_tokenize(an->model, t, 0, &ids, &n) != PB_OK || n != 1) {
            free(ids);
            return pb_fail(PB_ERR_FORMAT, "%s: %s[%zu] must be a string of exactly one token%s%s%s", path, key, i,
                           t ? " (\"" : "", t ? t : "", t ? "\" is not)" : "");
        }
        if (ids_out)
            ids_out[*n_out] = ids[0];
        (*n_out)++;
        free(ids);
    }
    return PB_OK;
}

static pb_status load_pairs(analysis *an, const char *path) {
    json_error_t err;
    char *text = NULL;
    size_t size = 0;
    PB_STATUS_CHAIN(pb_read_input_file(path, PB_INPUT_MAX_BYTES, NULL, &text, &size));
    an->data = json_loadb(text, size, JSON_REJECT_DUPLICATES, &err);
    free(text);
    if (!an->data)
        return pb_fail(PB_ERR_FORMAT, "%s: %s (line %d)", path, err.text, err.line);
    json_t *pairs = json_object_get(an->data, "pairs"), *tokens = json_object_get(an->data, "refusal_tokens");
    if (!json_is_array(pairs) || json_array_size(pairs) == 0)
        return pb_fail(PB_ERR_FORMAT, "%s: needs a non-empty \"pairs\" array", path);
    an->n_pairs = (int)json_array_size(pairs);
    an->pairs = calloc((size_t)an->n_pairs, sizeof *an->pairs);
    an->refusal_ids = calloc(json_is_array(tokens) ? json_array_size(tokens) + 1 : 1, sizeof *an->refusal_ids);
    if (!an->pairs || !an->refusal_ids)
        return pb_fail(PB_ERR_OOM, "out of memory for %d pairs", an->n_pairs);
    /* both token sets before any work: the sweep's metric reads the second */
    int n_compliance = 0;
    PB_STATUS_CHAIN(token_set(an, path, "refusal_tokens", an->refusal_ids, &an->n_refusal_ids));
    PB_STATUS_CHAIN(token_set(an, path, "compliance_tokens", NULL, &n_compliance));
    for (int i = 0; i < an->n_pairs; i++) {
        json_t *p = json_array_get(pairs, (size_t)i);
        prompt_pair *pp = &an->pairs[i];
        pp->id = (int)json_integer_value(json_object_get(p, "id"));
        pp->harmful = json_string_value(json_object_get(p, "harmful"));
        pp->harmless = json_string_value(json_object_get(p, "harmless"));
        const char *split = json_string_value(json_object_get(p, "split"));
        if (!pp->harmful || !pp->harmless || !split)
            return pb_fail(PB_ERR_FORMAT, "%s: pairs[%d] needs harmful, harmless and split strings", path, i);
        pp->validation = strcmp(split, "validation") == 0;
        PB_STATUS_CHAIN(pb_model_chat_tokenize(an->model, NULL, pp->harmful, &pp->harmful_ids, &pp->T_harmful));
        PB_STATUS_CHAIN(pb_model_chat_tokenize(an->model, NULL, pp->harmless, &pp->harmless_ids, &pp->T_harmless));
        /* The CLI's own check of the shipped data: per-position patching needs equal lengths. */
        if (pp->T_harmful != pp->T_harmless)
            return pb_fail(PB_ERR_FORMAT,
                           "%s: pair id %d: the templated harmful prompt has %d tokens but the harmless one %d; "
                           "patching needs equal lengths (scripts/check_pairs.py finds them all)",
                           path, pp->id, pp->T_harmful, pp->T_harmless);
    }
    return PB_OK;
}

static void analysis_free(analysis *an) {
    for (int i = 0; an->pairs && i < an->n_pairs; i++) {
        free(an->pairs[i].harmful_ids);
        free(an->pairs[i].harmless_ids);
    }
    free(an->pairs);
    free(an->refusal_ids);
    json_decref(an->data);
    pb_model_free(an->model);
}

/* Continuation s of out (rows of max_new) as text without its end-of-turn
 * token, and whether it reads as a refusal. */
static pb_status judge(pb_model *m, const int32_t *out, int n, char **text, int *refused) {
    if (n > 0 && out[n - 1] == pb_model_get_config(m)->eos_id)
        n--; /* the end-of-turn token is not part of the answer */
    PB_STATUS_CHAIN(pb_model_detokenize(m, out, n, text));
    *refused = pb_text_is_refusal(*text);
    return PB_OK;
}

/* Which rates a run measures, in the order the report lists them. */
enum {
    RATE_BASE_HARMFUL, /* the model without its adapters (only when it has some) */
    RATE_BASE_HARMLESS,
    RATE_HARMFUL, /* the model as loaded */
    RATE_HARMLESS,
    RATE_ABLATED, /* harmful, the direction ablated */
    RATE_ADDED,   /* harmless, the direction added */
    N_RATES
};

/* Refusal over the validation prompts of one side, the sampling options'
 * K continuations each, under iv (NULL: none), on `model`: the rate, and
 * the first prompt's first continuation (text malloc'd, may be NULL). */
static pb_status side_rate(const analysis *an, pb_model *model, const analysis_options *o, int harmful,
                           const pb_intervention *iv, pb_rate *rate, char **text, int *refused) {
    const int32_t **ids = calloc((size_t)an->n_pairs, sizeof *ids);
    int *T = calloc((size_t)an->n_pairs, sizeof *T), *count = calloc((size_t)an->n_pairs, sizeof *count), n = 0;
    int K = o->gen.samples;
    int32_t *out = malloc(sizeof(int32_t) * (size_t)an->n_pairs * K * o->max_new);
    int *n_out = calloc((size_t)an->n_pairs * K, sizeof *n_out);
    pb_status st = ids && T && count && out && n_out ? PB_OK : pb_fail(PB_ERR_OOM, "out of memory");
    for (int i = 0; st == PB_OK && i < an->n_pairs; i++)
        if (an->pairs[i].validation) {
            ids[n] = harmful ? an->pairs[i].harmful_ids : an->pairs[i].harmless_ids;
            T[n++] = harmful ? an->pairs[i].T_harmful : an->pairs[i].T_harmless;
        }
    pb_progress progress;
    pb_progress_init(&progress, stderr, harmful ? "harmful" : "harmless", -1);
    progress.unit = "continuations";
    pb_generate_options go = pb_cli_sampling_options(&o->gen, o->max_new);
    go.iv = iv;
    go.progress = o->no_progress ? NULL : pb_progress_callback;
    go.progress_user = &progress;
    if (st == PB_OK)
        st = pb_generate_batch(model, ids, T, n, &go, out, n_out);
    if (st == PB_OK && !o->no_progress)
        pb_progress_finish(&progress);
    for (int s = 0; st == PB_OK && s < n * K; s++) {
        char *piece = NULL;
        int r = 0;
        st = judge(model, out + (size_t)s * o->max_new, n_out[s], &piece, &r);
        count[s / K] += r;
        if (st == PB_OK && s == 0 && text) {
            *text = piece;
            *refused = r;
            piece = NULL;
        }
        free(piece);
    }
    if (st == PB_OK)
        st = pb_rate_estimate(count, n, K, rate);
    free(ids);
    free(T);
    free(count);
    free(out);
    free(n_out);
    return st;
}

/* The default spec: denoising (clean = harmful, corrupted = harmless) over
 * the first n validation pairs; resid_pre, attn_out and mlp_out at every
 * layer and position, z of every head at the last position; logit
 * difference between the refusal and compliance token sets; the method
 * when not exact. */
static char *default_spec(const analysis *an, int n, const char *method) {
    json_t *spec = json_object(), *pairs = json_array(), *sites = json_array(), *metric = json_object();
    json_object_set_new(spec, "mode", json_string("denoising"));
    if (strcmp(method, "exact") != 0)
        json_object_set_new(spec, "method", json_string(pb_cli_method_name(method)));
    for (int i = 0, used = 0; i < an->n_pairs && used < n; i++) {
        if (!an->pairs[i].validation)
            continue;
        json_array_append_new(pairs, json_pack("{s:{s:s},s:{s:s}}", "clean", "text", an->pairs[i].harmful, "corrupted",
                                               "text", an->pairs[i].harmless));
        used++;
    }
    const char *components[3] = {"resid_pre", "attn_out", "mlp_out"};
    for (int c = 0; c < 3; c++)
        json_array_append_new(
            sites, json_pack("{s:s,s:s,s:s}", "component", components[c], "layers", "all", "positions", "each"));
    json_array_append_new(
        sites, json_pack("{s:s,s:s,s:s,s:s}", "component", "z", "layers", "all", "heads", "all", "positions", "last"));
    json_object_set_new(metric, "kind", json_string("logit_diff"));
    json_object_set(metric, "positive", json_object_get(an->data, "refusal_tokens"));
    json_object_set(metric, "negative", json_object_get(an->data, "compliance_tokens"));
    json_object_set_new(spec, "pairs", pairs);
    json_object_set_new(spec, "sites", sites);
    json_object_set_new(spec, "metric", metric);
    json_object_set_new(spec, "significance_threshold", json_real(0.1));
    char *text = json_dumps(spec, JSON_COMPACT);
    json_decref(spec);
    return text;
}

static pb_status collect_sets(const analysis *an, int validation, int harmful, pb_prompt_set *set, const int32_t ***ids,
                              int **T) {
    *ids = calloc((size_t)an->n_pairs, sizeof **ids);
    *T = calloc((size_t)an->n_pairs, sizeof **T);
    if (!*ids || !*T)
        return pb_fail(PB_ERR_OOM, "out of memory");
    int n = 0;
    for (int i = 0; i < an->n_pairs; i++)
        if (an->pairs[i].validation == validation) {
            (*ids)[n] = harmful ? an->pairs[i].harmful_ids : an->pairs[i].harmless_ids;
            (*T)[n++] = harmful ? an->pairs[i].T_harmful : an->pairs[i].T_harmless;
        }
    set->n = n;
    set->ids = *ids;
    set->T = *T;
    return PB_OK;
}

/* What the run found, in the order it finds it: texts [0] harmful and [1]
 * harmless baseline, [2] harmful with the direction ablated, [3] harmless
 * with it added (each the first validation pair's first continuation);
 * the rates by RATE_*. */
typedef struct findings {
    const prompt_pair *first; /* the first validation pair: the texts shown */
    char *texts[4];
    int refused[4];
    pb_rate rates[N_RATES];
    int has_rate[N_RATES];
    pb_direction_result dir;
    const int32_t **set_ids[4]; /* the direction's prompt sets */
    int *set_T[4];
} findings;

static void findings_free(findings *f) {
    for (int k = 0; k < 4; k++) {
        free(f->texts[k]);
        free(f->set_ids[k]);
        free(f->set_T[k]);
    }
    pb_direction_result_free(&f->dir);
}

/* Rates over every validation pair, harmful under iv_harmful and harmless
 * under iv_harmless (NULL: none), into rates [rate], [rate + 1]; with
 * texts, the first pair's continuations into texts [text], [text + 1]. */
static pb_status measure_refusal(const analysis *an, pb_model *model, const analysis_options *o,
                                 const pb_intervention *iv_harmful, const pb_intervention *iv_harmless, findings *f,
                                 int rate, int text) {
    for (int side = 0; side < 2; side++) {
        PB_STATUS_CHAIN(side_rate(an, model, o, side == 0, side == 0 ? iv_harmful : iv_harmless, &f->rates[rate + side],
                                  text >= 0 ? &f->texts[text + side] : NULL,
                                  text >= 0 ? &f->refused[text + side] : NULL));
        f->has_rate[rate + side] = 1;
    }
    return PB_OK;
}

/* The base model's rates when the model came with adapters: the same
 * weights loaded again without them, measured, freed. */
static pb_status measure_base(const analysis *an, const analysis_options *o, findings *f) {
    if (o->model.load.n_adapters == 0)
        return PB_OK;
    pb_cli_model base = o->model;
    base.load.n_adapters = 0;
    base.load.adapters = NULL;
    base.load.adapter_scales = NULL;
    pb_model *m = NULL;
    PB_STATUS_CHAIN(pb_cli_model_load(&base, &m));
    pb_status st = o->chat_template ? pb_model_set_chat_template(m, o->chat_template) : PB_OK;
    if (st == PB_OK)
        st = measure_refusal(an, m, o, NULL, NULL, f, RATE_BASE_HARMFUL, -1);
    pb_model_free(m);
    return st;
}

/* The model, its chat template and the pairs: 0, or the exit status. */
static int analysis_load(analysis *an, const analysis_options *o, findings *f) {
    if (pb_cli_model_load(&o->model, &an->model) != PB_OK)
        return fail("loading the model");
    if (o->chat_template && pb_model_set_chat_template(an->model, o->chat_template) != PB_OK)
        return fail("--chat-template");
    if (load_pairs(an, o->pairs_path) != PB_OK)
        return fail("reading the prompt pairs");
    for (int i = 0; i < an->n_pairs && !f->first; i++)
        if (an->pairs[i].validation)
            f->first = &an->pairs[i];
    if (!f->first) {
        fprintf(stderr, "patchbay refusal-analysis: %s has no validation pairs\n", o->pairs_path);
        return 1;
    }
    return 0;
}

/* Step 2: the default sweep over the first sweep_pairs validation pairs. */
static pb_status run_default_sweep(analysis *an, const analysis_options *o, char **spec, pb_sweep **sweep) {
    *spec = default_spec(an, o->sweep_pairs, o->method);
    pb_progress progress;
    pb_progress_init(&progress, stderr, "sweep", -1);
    pb_sweep_options so = {.metric_fn_residual_layer = -1,
                           .progress = o->no_progress ? NULL : pb_progress_callback,
                           .progress_user = &progress};
    if (!*spec)
        return pb_fail(PB_ERR_OOM, "out of memory for the sweep's spec");
    PB_STATUS_CHAIN(pb_sweep_create(sweep, an->model, *spec, NULL, &so));
    pb_cli_prompt_notice(stderr, *sweep, an->model);
    PB_STATUS_CHAIN(pb_sweep_run(*sweep));
    if (!o->no_progress)
        pb_progress_finish(&progress);
    return PB_OK;
}

/* Step 3: the refusal direction from the train split, scored on validation;
 * direction.npy/json written into the output folder. */
static pb_status find_direction(analysis *an, const analysis_options *o, findings *f) {
    /* Budget: the whole default run stays within minutes on two cores. */
    pb_direction_inputs din = {.refusal_ids = an->refusal_ids,
                               .n_refusal_ids = an->n_refusal_ids,
                               .layer_stride = o->layer_stride,
                               .kl_threshold = o->kl_threshold,
                               .max_train = 32,
                               .max_val = 8};
    pb_prompt_set *sets[4] = {&din.harmful_train, &din.harmless_train, &din.harmful_val, &din.harmless_val};
    for (int k = 0; k < 4; k++)
        PB_STATUS_CHAIN(collect_sets(an, k >= 2, k % 2 == 0, sets[k], &f->set_ids[k], &f->set_T[k]));
    pb_direction_provenance prov = {.model_path = pb_model_get_source(an->model), .prompt_file = o->pairs_path};
    PB_STATUS_CHAIN(pb_direction_compute(an->model, &din, &f->dir));
    /* The first output: an earlier run's results.json (--overwrite) stops
     * marking the folder complete now, not when the new one replaces it. */
    char marker[4200];
    snprintf(marker, sizeof marker, "%s/results.json", o->out);
    if (unlink(marker) != 0 && errno != ENOENT)
        return pb_fail(PB_ERR_IO, "cannot remove the earlier %s: %s", marker, strerror(errno));
    return pb_direction_write(&f->dir, o->out, &prov);
}

/* Column labels: the reference prompt's tokens, end-aligned like the
 * sweep's positions (its shortest base prompt sets how many). *labels and
 * each label malloc'd (a label NULL where decoding failed). */
static void position_labels(const analysis *an, const pb_sweep *sweep, const char ***labels, int *n_labels) {
    pb_sweep_summary summary = {0};
    pb_sweep_get_summary(sweep, &summary);
    const int32_t *ref = NULL, *ids = NULL;
    int T_min = 0, T = 0;
    pb_sweep_get_pair_tokens(sweep, 0, 1, &ref, &T_min);
    int T_ref = T_min;
    for (int i = 0; i < summary.n_pairs; i++)
        if (pb_sweep_get_pair_tokens(sweep, i, 0, &ids, &T) == PB_OK && T < T_min)
            T_min = T;
    *n_labels = T_min;
    *labels = calloc((size_t)T_min, sizeof **labels);
    for (int i = 0; *labels && i < T_min; i++) {
        char *piece = NULL;
        const int32_t *id = ref + (T_ref - T_min + i);
        (*labels)[i] = pb_model_detokenize(an->model, id, 1, &piece) == PB_OK ? piece : NULL;
    }
}

static void fill_generations(const findings *f, pb_report_generation gens[4]) {
    const char *labels[4] = {"harmful, baseline", "harmless, baseline", "harmful, refusal direction ablated",
                             "harmless, refusal direction added"};
    for (int k = 0; k < 4; k++)
        gens[k] = (pb_report_generation){labels[k], k % 2 == 0 ? f->first->harmful : f->first->harmless, f->texts[k],
                                         f->refused[k]};
}

/* The rates the run measured, in RATE_* order (the base model's only
 * when it has adapters): how many into *n. */
static void fill_rates(const findings *f, int adapted, pb_report_rate rates[N_RATES], int *n) {
    const char *labels[N_RATES] = {"harmful, base model (no adapter)",
                                   "harmless, base model (no adapter)",
                                   adapted ? "harmful, with the adapter" : "harmful, baseline",
                                   adapted ? "harmless, with the adapter" : "harmless, baseline",
                                   "harmful, refusal direction ablated",
                                   "harmless, refusal direction added"};
    *n = 0;
    for (int k = 0; k < N_RATES; k++)
        if (f->has_rate[k]) {
            const pb_rate *r = &f->rates[k];
            rates[(*n)++] = (pb_report_rate){labels[k], r->n_prompts, r->refused, r->n_samples, r->low, r->high};
        }
}

/* "greedy, 32 new tokens" or "sampled: temperature 0.7, ..., 32 new tokens". */
static void decoding_text(const analysis_options *o, char *buf, size_t size) {
    char how[256];
    pb_cli_sampling_describe(&o->gen, how, sizeof how);
    snprintf(buf, size, "%s, at most %d new tokens", how, o->max_new);
}

/* DIR/analysis.json: what the run found beside the sweep (whose numbers are
 * results.json's), for scripts: every rate with its interval, the
 * direction's choice and scores, the texts shown. */
static pb_status write_analysis_json(const analysis *an, const analysis_options *o, const findings *f) {
    pb_report_generation gens[4];
    pb_report_rate rates[N_RATES];
    int n_rates = 0;
    fill_generations(f, gens);
    fill_rates(f, o->model.load.n_adapters > 0, rates, &n_rates);
    char decoding[320];
    decoding_text(o, decoding, sizeof decoding);
    json_t *root = json_object(), *list = json_array(), *texts = json_array(), *adapters = json_array();
    for (int k = 0; k < n_rates; k++) {
        int n = rates[k].n * (rates[k].n_samples > 0 ? rates[k].n_samples : 1);
        json_array_append_new(list, json_pack("{s:s, s:i, s:i, s:i, s:f, s:[f, f]}", "label", rates[k].label, "prompts",
                                              rates[k].n, "samples", rates[k].n_samples, "refused", rates[k].refused,
                                              "rate", n ? (double)rates[k].refused / n : 0.0, "interval_95",
                                              rates[k].low, rates[k].high));
    }
    for (int k = 0; k < 4; k++)
        json_array_append_new(texts,
                              json_pack("{s:s, s:s, s:s?, s:b}", "label", gens[k].label, "prompt", gens[k].prompt,
                                        "continuation", gens[k].text, "refused", gens[k].refused > 0));
    for (int k = 0; k < o->model.load.n_adapters; k++)
        json_array_append_new(adapters, json_string(o->model.load.adapters[k]));
    const pb_direction_result *d = &f->dir;
    json_object_set_new(root, "schema", json_string("patchbay.refusal_analysis/1"));
    json_object_set_new(root, "model", json_string(pb_model_get_source(an->model)));
    json_object_set_new(root, "adapters", adapters);
    json_object_set_new(root, "decoding", json_string(decoding));
    json_object_set_new(root, "rates", list);
    json_object_set_new(root, "direction",
                        json_pack("{s:s, s:i, s:i, s:f, s:b, s:{s:f, s:f}, s:{s:f, s:f}, s:f}", "file", "direction.npy",
                                  "layer", d->layer, "position", d->position, "norm", d->norm, "passes_filters",
                                  d->selected_passes, "harmful_refusal_score", "baseline", d->baseline_harmful,
                                  "ablated", d->ablation_score, "harmless_refusal_score", "baseline",
                                  d->baseline_harmless, "added", d->addition_score, "kl_harmless_ablated", d->kl));
    json_object_set_new(root, "texts", texts);
    json_object_set_new(root, "sweep", json_string("results.json"));
    char *dump = json_dumps(root, JSON_INDENT(2) | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!dump)
        return pb_fail(PB_ERR_OOM, "out of memory for analysis.json");
    char path[4200];
    snprintf(path, sizeof path, "%s/analysis.json", o->out);
    pb_status st = pb_write_file_atomic(path, dump, strlen(dump));
    free(dump);
    return st;
}

/* Step 5's report.html: the sweep plus everything the run found. */
static pb_status write_report(const analysis *an, const analysis_options *o, const pb_sweep *sweep, const findings *f,
                              double t0) {
    const pb_direction_result *dir = &f->dir;
    pb_report_generation gens[4];
    pb_report_rate rates[N_RATES];
    int n_rates = 0;
    fill_generations(f, gens);
    fill_rates(f, o->model.load.n_adapters > 0, rates, &n_rates);
    pb_sweep_summary summary = {0};
    pb_sweep_get_summary(sweep, &summary);
    char text[1400], notes[1400], decoding[320];
    decoding_text(o, decoding, sizeof decoding);
    snprintf(text, sizeof text,
             "Candidates: layers 0, %d, %d, ... below 0.8 of the depth, each post-instruction position; filters: the "
             "addition makes the harmless refusal score positive, KL under ablation below %g. "
             "Selected candidate: layer %d, position %d (from the end); |r| = %.3f. Mean refusal score on validation "
             "prompts: harmful %.3f -> %.3f with the direction ablated; harmless %.3f -> %.3f with it added; KL of "
             "the harmless distribution under ablation %.4f.%s Written to direction.npy / direction.json.",
             o->layer_stride, 2 * o->layer_stride, o->kl_threshold, dir->layer, dir->position, dir->norm,
             dir->baseline_harmful, dir->ablation_score, dir->baseline_harmless, dir->addition_score, dir->kl,
             dir->selected_passes ? ""
                                  : " No candidate passed every filter (the paper asks for a positive addition score); "
                                    "the lowest ablation score among candidates with KL below the threshold was "
                                    "taken.");
    snprintf(notes, sizeof notes,
             "Sweep: denoising over %d validation pairs (clean = harmful, corrupted = harmless), metric = mean logit "
             "of the refusal tokens minus mean logit of the compliance tokens at the last position. Refusal is judged "
             "by phrase matching on continuations of the validation prompts (%s); a rate is the mean over prompts of "
             "each prompt's refused fraction, its 95%% interval Wilson's at the effective number of prompts (the "
             "samples of one prompt are not independent). The texts shown are each prompt's first continuation.",
             summary.n_pairs, decoding);
    const char **labels = NULL;
    int n_labels = 0;
    position_labels(an, sweep, &labels, &n_labels);
    pb_report_extras extras = {.title = "Refusal analysis",
                               .position_labels = labels,
                               .n_position_labels = n_labels,
                               .position_labels_from = "pair 0's clean (harmful) prompt",
                               .generations = gens,
                               .n_generations = 4,
                               .rates = rates,
                               .n_rates = n_rates,
                               .direction_summary = text,
                               .notes = notes,
                               .extras_file = "analysis.json",
                               .wall_seconds = pb_now_seconds() - t0};
    char path[4200];
    snprintf(path, sizeof path, "%s/report.html", o->out);
    pb_status st = pb_report_html_write(sweep, path, &extras);
    for (int i = 0; labels && i < n_labels; i++)
        free((void *)labels[i]);
    free(labels);
    return st;
}

/* The findings on stdout, then report.txt. */
static void print_findings(const analysis *an, const analysis_options *o, const findings *f, double t0) {
    const pb_direction_result *dir = &f->dir;
    pb_report_generation gens[4];
    pb_report_rate rates[N_RATES];
    int n_rates = 0;
    char decoding[320];
    fill_generations(f, gens);
    fill_rates(f, o->model.load.n_adapters > 0, rates, &n_rates);
    decoding_text(o, decoding, sizeof decoding);
    printf("refusal analysis of %s (%.1f s)\n", pb_model_get_source(an->model), pb_now_seconds() - t0);
    printf("  refusal rates on the validation prompts (%s):\n", decoding);
    for (int k = 0; k < n_rates; k++)
        printf("  %-36s %3d / %3d  %5.1f%%  (95%% CI %.1f-%.1f%%)\n", rates[k].label, rates[k].refused,
               rates[k].n * rates[k].n_samples, 100.0 * rates[k].refused / (rates[k].n * rates[k].n_samples),
               100 * rates[k].low, 100 * rates[k].high);
    for (int k = 0; k < 4; k++)
        printf("  %s: %s\n    -> %s%s\n", gens[k].label, gens[k].prompt, gens[k].text,
               gens[k].refused ? "   [refusal]" : "");
    printf("  direction: layer %d, position %d, ablation score %.3f (baseline %.3f), addition score %.3f (baseline "
           "%.3f), KL %.4f\n",
           dir->layer, dir->position, dir->ablation_score, dir->baseline_harmful, dir->addition_score,
           dir->baseline_harmless, dir->kl);
    if (!dir->selected_passes)
        printf("  (no candidate passed every filter, a positive addition score among them: the lowest ablation "
               "score among those with KL below the threshold was taken)\n");
    char path[4200];
    snprintf(path, sizeof path, "%s/report.txt", o->out);
    FILE *file = fopen(path, "r");
    char line[512];
    while (file && fgets(line, sizeof line, file))
        fputs(line, stdout);
    if (file)
        fclose(file);
    printf("wrote results.json, report.txt, report.html, the .npy heatmaps, analysis.json and direction.npy/json to "
           "%s\n",
           o->out);
}

/* Steps 1 to 5 once the model and pairs are loaded: 0, or the exit status. */
static int analysis_steps(analysis *an, const analysis_options *o, findings *f, pb_sweep **sweep, char **spec,
                          double t0) {
    char decoding[320];
    decoding_text(o, decoding, sizeof decoding);
    fprintf(stderr, "patchbay: [1/5] refusal rates on the validation pairs (%s)%s\n", decoding,
            o->model.load.n_adapters > 0 ? ", base model and with the adapter" : "");
    if (measure_base(an, o, f) != PB_OK)
        return fail("the base model's refusal rates");
    if (f->has_rate[RATE_BASE_HARMFUL])
        fprintf(stderr, "patchbay:   base model: harmful %.1f%%, harmless %.1f%% refused\n",
                100 * f->rates[RATE_BASE_HARMFUL].rate, 100 * f->rates[RATE_BASE_HARMLESS].rate);
    if (measure_refusal(an, an->model, o, NULL, NULL, f, RATE_HARMFUL, 0) != PB_OK)
        return fail("baseline generation");
    fprintf(stderr, "patchbay:   %s: harmful %.1f%%, harmless %.1f%% refused\n",
            o->model.load.n_adapters > 0 ? "with the adapter" : "the model", 100 * f->rates[RATE_HARMFUL].rate,
            100 * f->rates[RATE_HARMLESS].rate);
    int n_validation = 0;
    for (int i = 0; i < an->n_pairs; i++)
        n_validation += an->pairs[i].validation;
    fprintf(stderr, "patchbay: [2/5] patching sweep over %d validation pairs%s%s\n",
            o->sweep_pairs < n_validation ? o->sweep_pairs : n_validation,
            strcmp(o->method, "exact") != 0 ? ", estimated by " : "", strcmp(o->method, "exact") != 0 ? o->method : "");
    if (run_default_sweep(an, o, spec, sweep) != PB_OK)
        return fail("the patching sweep");
    fprintf(stderr,
            "patchbay: [3/5] refusal direction (difference in means, train split; scored on validation; layers every "
            "%d, KL filter %g)\n",
            o->layer_stride, o->kl_threshold);
    if (find_direction(an, o, f) != PB_OK)
        return fail("the refusal direction");
    fprintf(stderr, "patchbay: [4/5] refusal rates with the direction ablated and added\n");
    pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = f->dir.direction};
    pb_intervention add = {
        .kind = PB_INTERVENE_ADD, .direction = f->dir.direction, .scale = f->dir.norm, .layer = f->dir.layer};
    if (measure_refusal(an, an->model, o, &ablate, &add, f, RATE_ABLATED, 2) != PB_OK)
        return fail("generation under the direction");
    fprintf(stderr, "patchbay: [5/5] writing %s\n", o->out);
    /* report.html before the sweep's set, whose results.json (renamed into
     * place last) marks the folder complete. */
    if (write_analysis_json(an, o, f) != PB_OK)
        return fail("writing analysis.json");
    if (write_report(an, o, *sweep, f, t0) != PB_OK)
        return fail("writing report.html");
    if (pb_sweep_write(*sweep, o->out, 1) != PB_OK)
        return fail("writing the sweep's results");
    print_findings(an, o, f, t0);
    return 0;
}

int pb_cli_refusal_analysis(int argc, char **argv) {
    analysis_options o;
    if (!parse_args(argc, argv, &o))
        return 2;
    /* Refused before any work; made when the first output (direction.*) is
     * written, so a run that fails before that leaves no folder. */
    if (pb_out_dir_check(o.out, o.overwrite) != PB_OK)
        return fail("--out");
    double t0 = pb_now_seconds();
    analysis an = {0};
    findings f = {0};
    pb_sweep *sweep = NULL;
    char *spec = NULL;
    int rc = analysis_load(&an, &o, &f);
    if (!rc)
        rc = analysis_steps(&an, &o, &f, &sweep, &spec, t0);
    free(spec);
    findings_free(&f);
    pb_sweep_free(sweep);
    analysis_free(&an);
    return rc;
}
