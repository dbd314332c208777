/* patchbay refusal-rate: every wanted prompt of a prompt file decoded in
 * one batched call (one call per prompt under --patch, whose positions
 * depend on the prompt's length), each continuation judged by the refusal
 * phrases, each side's rate with its 95% interval over prompts; --json
 * writes them all (patchbay.refusal_rate/2). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_intervene.h"
#include "cli/cli_intervene_shared.h"
#include "cli/ids.h"
#include "cli/progress.h"
#include "patchbay.h"
#include "patchbay_tool.h"

/* ---- refusal-rate ----------------------------------------------------------------------- */

/* The prompts of one refusal-rate run, tokenized, and what became of them. */
typedef struct rate_run_state {
    int n, K, width;                  /* prompts, samples per prompt, max_new (at least 1) */
    const pb_cli_prompt_item **items; /* (n) borrowed */
    int32_t **ids;                    /* (n) */
    int *T;                           /* (n) */
    int32_t *out;                     /* (n * K, width) */
    int *n_out;                       /* (n * K) */
    int *refused;                     /* (n) refusals of K */
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

static const char *side_name(const pb_cli_prompt_item *it) {
    return it->harmful < 0 ? "prompt" : it->harmful ? "harmful" : "harmless";
}

/* The prompts the run takes (split, side, --limit), tokenized: 1, or 0 after saying why. */
static int rate_select(const char *cmd, pb_model *m, const pb_cli_iv_options *o, const pb_cli_prompt_file *f,
                       const char *split, const char *side, rate_run_state *r) {
    memset(r, 0, sizeof *r);
    r->K = o->gen.samples;
    r->width = o->max_new > 0 ? o->max_new : 1;
    r->items = calloc((size_t)f->n, sizeof *r->items);
    r->ids = calloc((size_t)f->n, sizeof *r->ids);
    r->T = calloc((size_t)f->n, sizeof *r->T);
    if (!r->items || !r->ids || !r->T)
        return !pb_cli_iv_fail(cmd, "out of memory");
    int count[2] = {0, 0};
    for (int i = 0; i < f->n; i++) {
        const pb_cli_prompt_item *it = &f->items[i];
        int cls = it->harmful != 0;
        if (!pb_cli_split_matches(split, it->split) ||
            (it->harmful >= 0 && strcmp(side, "both") && (it->harmful == 1) != (strcmp(side, "harmful") == 0)) ||
            (o->limit && count[cls] >= o->limit))
            continue;
        if (!pb_cli_iv_text_ids(cmd, m, o, it->text, &r->ids[r->n], &r->T[r->n]))
            return 0;
        r->items[r->n++] = it;
        count[cls]++;
    }
    size_t rows = (size_t)(r->n > 0 ? r->n : 1) * r->K;
    r->out = malloc(sizeof(int32_t) * rows * r->width);
    r->n_out = calloc(rows, sizeof(int));
    r->refused = calloc((size_t)(r->n > 0 ? r->n : 1), sizeof(int));
    if (!r->out || !r->n_out || !r->refused)
        return !pb_cli_iv_fail(cmd, "out of memory");
    return 1;
}

/* Every continuation: all prompts in one batched call, or (--patch, whose
 * positions depend on each prompt's length) one call per prompt. */
static int rate_generate(const char *cmd, pb_model *m, const pb_cli_iv_options *o, const int32_t *src, int T_src,
                         pb_cli_iv_build *b, rate_run_state *r) {
    pb_generate_options go = pb_cli_sampling_options(&o->gen, o->max_new);
    pb_progress progress;
    pb_progress_init(&progress, o->no_progress ? NULL : stderr, "generate", -1);
    progress.unit = "continuations";
    go.progress = pb_progress_callback;
    go.progress_user = &progress;
    pb_status st = PB_OK;
    if (!o->patch_site) {
        go.iv = b->iv.kind ? &b->iv : NULL;
        st = pb_generate_batch(m, (const int32_t *const *)r->ids, r->T, r->n, &go, r->out, r->n_out);
    }
    for (int i = 0; o->patch_site && st == PB_OK && i < r->n; i++) {
        pb_cli_iv_build_free(b);
        if (!pb_cli_iv_build_patch(cmd, m, o->patch_site, src, T_src, r->T[i], b))
            return 0;
        go.iv = &b->iv;
        go.progress = NULL;
        st = pb_generate_batch(m, (const int32_t *const *)&r->ids[i], &r->T[i], 1, &go,
                               r->out + (size_t)i * r->K * r->width, r->n_out + (size_t)i * r->K);
        pb_progress_update(&progress, i + 1, r->n);
    }
    if (st != PB_OK)
        return !pb_cli_iv_fail(cmd, "generate failed");
    pb_progress_finish(&progress);
    return 1;
}

static void print_verbose_line(const pb_cli_prompt_item *it, int refused, const char *text) {
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
static int rate_judge(const char *cmd, pb_model *m, const pb_cli_iv_options *o, rate_run_state *r, json_t *items) {
    for (int i = 0; i < r->n; i++) {
        json_t *texts = json_array(), *refusals = json_array();
        for (int k = 0; k < r->K; k++) {
            size_t s = (size_t)i * r->K + k;
            char *text = pb_cli_iv_decode(m, r->out + s * r->width, r->n_out[s]);
            if (!text)
                return !pb_cli_iv_fail(cmd, "decoding");
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
static json_t *rate_sides(const pb_cli_prompt_file *f, const rate_run_state *r) {
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
static int write_rate_json(const char *cmd, const pb_model *m, const pb_cli_iv_options *o, const char *split,
                           const pb_cli_iv_build *b, json_t *sides, json_t *items) {
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
        return !pb_cli_iv_fail(cmd, "writing --json");
    }
    free(dump);
    return 1;
}

/* The source prompt of --patch (--from-ids or --from) and the direction
 * interventions, announced on stdout. */
static int rate_intervention(const char *cmd, pb_model *m, const pb_cli_iv_options *o, int32_t **src, int *T_src,
                             pb_cli_iv_build *b) {
    if (o->from_ids && pb_ids_parse(o->from_ids, "--from-ids", src, T_src) != PB_OK)
        return !pb_cli_iv_fail(cmd, "reading token ids");
    if (o->from_text && !pb_cli_iv_text_ids(cmd, m, o, o->from_text, src, T_src))
        return 0;
    if (!o->patch_site && !pb_cli_iv_build_direction(cmd, m, o, b))
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
static int rate_run(const char *cmd, pb_model *m, const pb_cli_iv_options *o, const pb_cli_prompt_file *f,
                    const char *split, const char *side, pb_cli_iv_build *b, const int32_t *src, int T_src) {
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
    pb_cli_iv_options o;
    if (!pb_cli_iv_parse(argc, argv, &o))
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
    pb_cli_prompt_file f;
    if (!pb_cli_prompt_file_load(cmd, o.prompts, &f))
        return 2;
    pb_model *m = pb_cli_iv_load_model(cmd, &o);
    int rc = 1;
    pb_cli_iv_build b;
    memset(&b, 0, sizeof b);
    int32_t *src = NULL;
    int T_src = 0;
    if (m && rate_intervention(cmd, m, &o, &src, &T_src, &b))
        rc = rate_run(cmd, m, &o, &f, split, side, &b, src, T_src);
    free(src);
    pb_cli_iv_build_free(&b);
    pb_cli_prompt_file_free(&f);
    pb_model_free(m);
    return rc;
}
