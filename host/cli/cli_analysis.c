/* patchbay refusal-analysis: the project's main job in one command. On the
 * shipped harmful/harmless pairs it measures baseline behaviour (texts and
 * refusal rates), runs the patching sweep averaged over several pairs,
 * finds the refusal direction, measures refusal with it ablated and
 * added, and writes results.json, the .npy heatmaps, report.txt,
 * direction.npy/json and report.html. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_analysis.h"
#include "cli/cli_model.h"
#include "util/clock.h"
#include "analysis/direction.h"
#include "util/internal.h"
#include "patching/intervene.h"
#include "util/outdir.h"
#include "cli/progress.h"
#include "analysis/report_html.h"
#include "patching/sweep.h"

typedef struct analysis_options {
    pb_cli_model model;
    const char *pairs_path;
    const char *out;
    const char *chat_template;
    int sweep_pairs;
    int max_new;
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

static int parse_args(int argc, char **argv, analysis_options *o) {
    memset(o, 0, sizeof *o);
    o->pairs_path = "data/refusal_pairs.json";
    o->sweep_pairs = 8;
    o->max_new = 32;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--overwrite") == 0) { o->overwrite = 1; continue; }
        if (strcmp(a, "--no-progress") == 0) { o->no_progress = 1; continue; }
        if (!next) {
            fprintf(stderr, "patchbay refusal-analysis: option %s needs a value\n", a);
            return 0;
        }
        char *end = NULL;
        int taken = pb_cli_model_option(&o->model, "refusal-analysis", a, next);
        if (taken < 0) return 0;
        else if (taken) { /* a model option */ }
        else if (strcmp(a, "--pairs") == 0) o->pairs_path = next;
        else if (strcmp(a, "--out") == 0) o->out = next;
        else if (strcmp(a, "--chat-template") == 0) o->chat_template = next;
        else if (strcmp(a, "--sweep-pairs") == 0) o->sweep_pairs = (int)strtol(next, &end, 10);
        else if (strcmp(a, "--max-new-tokens") == 0) o->max_new = (int)strtol(next, &end, 10);
        else {
            fprintf(stderr, "patchbay refusal-analysis: unknown option '%s'\n", a);
            return 0;
        }
        if (end && (*end || o->sweep_pairs < 1 || o->max_new < 1)) {
            fprintf(stderr, "patchbay refusal-analysis: %s expects a positive integer, got '%s'\n", a, next);
            return 0;
        }
        i++;
    }
    if (!pb_cli_model_check(&o->model, "refusal-analysis"))
        return 0;
    if (!o->out) {
        fprintf(stderr, "patchbay refusal-analysis: --out DIR is required\n");
        return 0;
    }
    return 1;
}

static pb_status load_pairs(analysis *an, const char *path) {
    json_error_t err;
    an->data = json_load_file(path, JSON_REJECT_DUPLICATES, &err);
    if (!an->data)
        return pb_fail(PB_ERR_IO, "%s: %s (line %d)", path, err.text, err.line);
    json_t *pairs = json_object_get(an->data, "pairs"), *tokens = json_object_get(an->data, "refusal_tokens");
    if (!json_is_array(pairs) || json_array_size(pairs) == 0 || !json_is_array(tokens) || !json_array_size(tokens))
        return pb_fail(PB_ERR_FORMAT, "%s: needs a non-empty \"pairs\" array and \"refusal_tokens\"", path);
    an->n_pairs = (int)json_array_size(pairs);
    an->pairs = calloc((size_t)an->n_pairs, sizeof *an->pairs);
    an->refusal_ids = calloc(json_array_size(tokens), sizeof *an->refusal_ids);
    if (!an->pairs || !an->refusal_ids)
        return pb_fail(PB_ERR_OOM, "out of memory for %d pairs", an->n_pairs);
    for (size_t i = 0; i < json_array_size(tokens); i++) {
        const char *t = json_string_value(json_array_get(tokens, i));
        int32_t *ids = NULL;
        int n = 0;
        if (!t || pb_model_tokenize(an->model, t, 0, &ids, &n) != PB_OK || n != 1) {
            free(ids);
            return pb_fail(PB_ERR_FORMAT, "%s: refusal_tokens[%zu] must be a string of exactly one token", path, i);
        }
        an->refusal_ids[an->n_refusal_ids++] = ids[0];
        free(ids);
    }
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
        PB_TRY(pb_model_chat_tokenize(an->model, NULL, pp->harmful, &pp->harmful_ids, &pp->T_harmful));
        PB_TRY(pb_model_chat_tokenize(an->model, NULL, pp->harmless, &pp->harmless_ids, &pp->T_harmless));
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

/* Greedy continuation as text, and whether it reads as a refusal. */
static pb_status generate_text(analysis *an, const int32_t *ids, int T, int max_new, const pb_intervention *iv,
                               char **text, int *refused) {
    int32_t *out = malloc(sizeof(int32_t) * (size_t)max_new);
    if (!out)
        return pb_fail(PB_ERR_OOM, "out of memory");
    int n = 0;
    pb_status st = pb_generate_intervened(an->model, ids, T, max_new, iv, out, &n);
    if (st == PB_OK && n > 0 && out[n - 1] == an->model->cfg.eos_id)
        n--; /* the end-of-turn token is not part of the answer */
    if (st == PB_OK)
        st = pb_model_detokenize(an->model, out, n, text);
    free(out);
    if (st == PB_OK)
        *refused = pb_text_is_refusal(*text);
    return st;
}

/* Refusal rate over the validation pairs' harmful or harmless side. */
static pb_status refusal_rate(analysis *an, int harmful, int max_new, const pb_intervention *iv, int *n, int *k) {
    *n = *k = 0;
    for (int i = 0; i < an->n_pairs; i++) {
        const prompt_pair *p = &an->pairs[i];
        if (!p->validation)
            continue;
        char *text = NULL;
        int refused = 0;
        PB_TRY(generate_text(an, harmful ? p->harmful_ids : p->harmless_ids, harmful ? p->T_harmful : p->T_harmless,
                             max_new, iv, &text, &refused));
        free(text);
        (*n)++;
        *k += refused;
    }
    return PB_OK;
}

/* The default spec: denoising (clean = harmful, corrupted = harmless) over
 * the first n validation pairs; resid_pre, attn_out and mlp_out at every
 * layer and position, z of every head at the last position; logit
 * difference between the refusal and compliance token sets. */
static char *default_spec(const analysis *an, int n) {
    json_t *spec = json_object(), *pairs = json_array(), *sites = json_array(), *metric = json_object();
    json_object_set_new(spec, "mode", json_string("denoising"));
    for (int i = 0, used = 0; i < an->n_pairs && used < n; i++) {
        if (!an->pairs[i].validation)
            continue;
        json_array_append_new(pairs, json_pack("{s:{s:s},s:{s:s}}", "clean", "text", an->pairs[i].harmful,
                                               "corrupted", "text", an->pairs[i].harmless));
        used++;
    }
    const char *components[3] = {"resid_pre", "attn_out", "mlp_out"};
    for (int c = 0; c < 3; c++)
        json_array_append_new(sites, json_pack("{s:s,s:s,s:s}", "component", components[c], "layers", "all",
                                               "positions", "each"));
    json_array_append_new(sites, json_pack("{s:s,s:s,s:s,s:s}", "component", "z", "layers", "all", "heads", "all",
                                           "positions", "last"));
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

static void progress_cb(int64_t done, int64_t total, void *user) { pb_progress_update(user, done, total); }

static pb_status collect_sets(const analysis *an, int validation, int harmful, pb_prompt_set *set,
                              const int32_t ***ids, int **T) {
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

int pb_cli_refusal_analysis(int argc, char **argv) {
    analysis_options o;
    if (!parse_args(argc, argv, &o))
        return 2;
    /* Refused before any compute; created now because direction.* is written first. */
    if (pb_out_dir_create(o.out, o.overwrite) != PB_OK)
        return fail("--out");
    double t0 = pb_now_seconds();
    analysis an = {0};
    if (pb_cli_model_load(&o.model, &an.model) != PB_OK)
        return fail("loading the model");
    if (o.chat_template && pb_model_set_chat_template(an.model, o.chat_template) != PB_OK) {
        analysis_free(&an);
        return fail("--chat-template");
    }
    int rc = 1;
    pb_sweep *sweep = NULL;
    pb_direction_result dir = {0};
    char *spec = NULL, *texts[4] = {0};
    const int32_t **set_ids[4] = {0};
    int *set_T[4] = {0};
    const char **labels = NULL;
    int T_min = 0;
    if (load_pairs(&an, o.pairs_path) != PB_OK) {
        fail("reading the prompt pairs");
        goto done;
    }
    const prompt_pair *first = NULL;
    for (int i = 0; i < an.n_pairs && !first; i++)
        if (an.pairs[i].validation)
            first = &an.pairs[i];
    if (!first) {
        fprintf(stderr, "patchbay refusal-analysis: %s has no validation pairs\n", o.pairs_path);
        goto done;
    }

    /* 1. baseline behaviour */
    fprintf(stderr, "patchbay: [1/5] baseline generations and refusal rates on the validation pairs\n");
    int refused[4] = {0};
    int n_rates[4] = {0}, k_rates[4] = {0};
    if (generate_text(&an, first->harmful_ids, first->T_harmful, o.max_new, NULL, &texts[0], &refused[0]) != PB_OK ||
        generate_text(&an, first->harmless_ids, first->T_harmless, o.max_new, NULL, &texts[1], &refused[1]) != PB_OK ||
        refusal_rate(&an, 1, o.max_new, NULL, &n_rates[0], &k_rates[0]) != PB_OK ||
        refusal_rate(&an, 0, o.max_new, NULL, &n_rates[1], &k_rates[1]) != PB_OK) {
        fail("baseline generation");
        goto done;
    }
    fprintf(stderr, "patchbay:   refusal rate harmful %d/%d, harmless %d/%d\n", k_rates[0], n_rates[0], k_rates[1],
            n_rates[1]);

    /* 2. the patching sweep */
    fprintf(stderr, "patchbay: [2/5] patching sweep over %d validation pairs\n", o.sweep_pairs);
    spec = default_spec(&an, o.sweep_pairs);
    pb_progress progress;
    pb_progress_init(&progress, stderr, "sweep", -1);
    pb_sweep_options so = {.metric_fn_residual_layer = -1, .progress = o.no_progress ? NULL : progress_cb,
                           .progress_user = &progress};
    if (!spec || pb_sweep_create(&sweep, an.model, spec, NULL, &so) != PB_OK || pb_sweep_run(sweep) != PB_OK) {
        fail("the patching sweep");
        goto done;
    }
    if (!o.no_progress)
        pb_progress_finish(&progress);

    /* 3. the refusal direction */
    fprintf(stderr, "patchbay: [3/5] refusal direction (difference in means, train split; scored on validation)\n");
    /* Budget: the whole default run stays within minutes on two cores. */
    pb_direction_inputs din = {.refusal_ids = an.refusal_ids, .n_refusal_ids = an.n_refusal_ids, .layer_stride = 3,
                               .max_train = 32, .max_val = 8};
    pb_prompt_set *sets[4] = {&din.harmful_train, &din.harmless_train, &din.harmful_val, &din.harmless_val};
    for (int k = 0; k < 4; k++)
        if (collect_sets(&an, k >= 2, k % 2 == 0, sets[k], &set_ids[k], &set_T[k]) != PB_OK)
            goto done;
    pb_direction_provenance prov = {.model_path = pb_model_get_source(an.model), .prompt_file = o.pairs_path};
    if (pb_direction_compute(an.model, &din, &dir) != PB_OK || pb_direction_write(&dir, o.out, &prov) != PB_OK) {
        fail("the refusal direction");
        goto done;
    }

    /* 4. refusal with the direction ablated (harmful) and added (harmless) */
    fprintf(stderr, "patchbay: [4/5] refusal rates with the direction ablated and added\n");
    pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = dir.direction};
    pb_intervention add = {.kind = PB_INTERVENE_ADD, .direction = dir.direction, .scale = dir.norm,
                           .layer = dir.layer};
    if (generate_text(&an, first->harmful_ids, first->T_harmful, o.max_new, &ablate, &texts[2], &refused[2]) !=
            PB_OK ||
        generate_text(&an, first->harmless_ids, first->T_harmless, o.max_new, &add, &texts[3], &refused[3]) != PB_OK ||
        refusal_rate(&an, 1, o.max_new, &ablate, &n_rates[2], &k_rates[2]) != PB_OK ||
        refusal_rate(&an, 0, o.max_new, &add, &n_rates[3], &k_rates[3]) != PB_OK) {
        fail("generation under the direction");
        goto done;
    }

    /* 5. outputs */
    fprintf(stderr, "patchbay: [5/5] writing %s\n", o.out);
    if (pb_sweep_write(sweep, o.out, 1) != PB_OK) {
        fail("writing the sweep's results");
        goto done;
    }
    /* Column labels: the reference prompt's tokens, end-aligned like the sweep's positions. */
    const pb_pair_spec *ref = &sweep->spec.pairs[0];
    T_min = ref->source.T;
    for (int i = 0; i < sweep->spec.n_pairs; i++)
        if (sweep->spec.pairs[i].base.T < T_min)
            T_min = sweep->spec.pairs[i].base.T;
    labels = calloc((size_t)T_min, sizeof *labels);
    for (int i = 0; labels && i < T_min; i++) {
        char *piece = NULL;
        const int32_t *id = ref->source.ids + (ref->source.T - T_min + i);
        labels[i] = pb_model_detokenize(an.model, id, 1, &piece) == PB_OK ? piece : NULL;
    }
    pb_report_generation gens[4] = {
        {"harmful, baseline", first->harmful, texts[0], refused[0]},
        {"harmless, baseline", first->harmless, texts[1], refused[1]},
        {"harmful, refusal direction ablated", first->harmful, texts[2], refused[2]},
        {"harmless, refusal direction added", first->harmless, texts[3], refused[3]},
    };
    pb_report_rate rates[4] = {
        {"harmful (validation), baseline", n_rates[0], k_rates[0]},
        {"harmless (validation), baseline", n_rates[1], k_rates[1]},
        {"harmful (validation), direction ablated", n_rates[2], k_rates[2]},
        {"harmless (validation), direction added", n_rates[3], k_rates[3]},
    };
    char summary[1024], notes[1024];
    snprintf(summary, sizeof summary,
             "Selected candidate: layer %d, position %d (from the end); |r| = %.3f. Mean refusal score on validation "
             "prompts: harmful %.3f -> %.3f with the direction ablated; harmless %.3f -> %.3f with it added; KL of "
             "the harmless distribution under ablation %.4f.%s Written to direction.npy / direction.json.",
             dir.layer, dir.position, dir.norm, dir.baseline_harmful, dir.ablation_score, dir.baseline_harmless,
             dir.addition_score, dir.kl,
             dir.selected_passes ? ""
                                 : " No candidate passed every filter (the paper asks for a positive addition score); "
                                   "the lowest ablation score among candidates with KL below the threshold was "
                                   "taken.");
    snprintf(notes, sizeof notes,
             "Sweep: denoising over %d validation pairs (clean = harmful, corrupted = harmless), metric = mean logit "
             "of the refusal tokens minus mean logit of the compliance tokens at the last position. Refusal is judged "
             "by phrase matching on %d-token greedy continuations.",
             sweep->spec.n_pairs, o.max_new);
    pb_report_extras extras = {.title = "Refusal analysis", .position_labels = labels, .n_position_labels = T_min,
                               .generations = gens, .n_generations = 4, .rates = rates, .n_rates = 4,
                               .direction_summary = summary, .notes = notes, .wall_seconds = pb_now_seconds() - t0};
    char path[4200];
    snprintf(path, sizeof path, "%s/report.html", o.out);
    if (pb_report_html_write(sweep, path, &extras) != PB_OK) {
        fail("writing report.html");
        goto done;
    }

    /* The findings on stdout. */
    printf("refusal analysis of %s (%.1f s)\n", pb_model_get_source(an.model), pb_now_seconds() - t0);
    for (int k = 0; k < 4; k++)
        printf("  refusal rate, %-42s %2d / %2d  (%.0f%%)\n", rates[k].label, rates[k].refused, rates[k].n,
               rates[k].n ? 100.0 * rates[k].refused / rates[k].n : 0.0);
    for (int k = 0; k < 4; k++)
        printf("  %s: %s\n    -> %s%s\n", gens[k].label, gens[k].prompt, gens[k].text,
               gens[k].refused ? "   [refusal]" : "");
    printf("  direction: layer %d, position %d, ablation score %.3f (baseline %.3f), addition score %.3f (baseline "
           "%.3f), KL %.4f\n",
           dir.layer, dir.position, dir.ablation_score, dir.baseline_harmful, dir.addition_score,
           dir.baseline_harmless, dir.kl);
    snprintf(path, sizeof path, "%s/report.txt", o.out);
    FILE *f = fopen(path, "r");
    char line[512];
    while (f && fgets(line, sizeof line, f))
        fputs(line, stdout);
    if (f)
        fclose(f);
    printf("wrote results.json, report.txt, report.html, the .npy heatmaps and direction.npy/json to %s\n", o.out);
    rc = 0;
done:
    for (int i = 0; labels && i < T_min; i++)
        free((void *)labels[i]);
    free(labels);
    for (int k = 0; k < 4; k++) {
        free(texts[k]);
        free(set_ids[k]);
        free(set_T[k]);
    }
    free(spec);
    pb_direction_result_free(&dir);
    pb_sweep_free(sweep);
    analysis_free(&an);
    return rc;
}
