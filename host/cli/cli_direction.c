/* patchbay direction: the difference-in-means refusal direction from a
 * prompt file's train and validation prompts (pb_direction_compute), written
 * as direction.npy, differences.npy and direction.json. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_intervene.h"
#include "cli/cli_intervene_shared.h"
#include "patchbay.h"
#include "patchbay_tool.h"

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
static int refusal_token_ids(pb_model *m, const pb_cli_prompt_file *f, int32_t *refusal, int *n_refusal) {
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
static int collect_id_lists(const char *cmd, pb_model *m, const pb_cli_iv_options *o, const pb_cli_prompt_file *f,
                            id_lists *L) {
    for (int s = 0; s < 4; s++) {
        L->ids[s] = calloc((size_t)f->n, sizeof(int32_t *));
        L->T[s] = calloc((size_t)f->n, sizeof(int));
        if (!L->ids[s] || !L->T[s])
            return 0;
    }
    int limits[4] = {o->train ? o->train : 32, o->train ? o->train : 32, o->val ? o->val : 8, o->val ? o->val : 8};
    for (int i = 0; i < f->n; i++) {
        const pb_cli_prompt_item *it = &f->items[i];
        int val = pb_cli_split_matches("validation", it->split) && *it->split;
        int train = strcmp(it->split, "train") == 0;
        if (!val && !train)
            continue;
        int s = (val ? 2 : 0) + (it->harmful ? 0 : 1);
        if (L->n[s] >= limits[s])
            continue;
        if (!pb_cli_iv_text_ids(cmd, m, o, it->text, &L->ids[s][L->n[s]], &L->T[s][L->n[s]]))
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
static int direction_compute_write(const char *cmd, pb_model *m, const pb_cli_iv_options *o,
                                   const pb_cli_prompt_file *f, const int32_t *refusal, int n_refusal) {
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
            ok = !pb_cli_iv_fail(cmd, "computing the direction");
        else if (pb_direction_write(&r, o->out, &prov) != PB_OK)
            ok = !pb_cli_iv_fail(cmd, "writing the direction");
        else
            print_direction(&r, o->out);
    }
    pb_direction_result_free(&r);
    id_lists_free(&L);
    return ok;
}

/* The options and the prompt file the direction needs: 0, or the exit status. */
static int direction_inputs(const char *cmd, const pb_cli_iv_options *o, pb_cli_prompt_file *f) {
    if (!o->prompts || !o->out) {
        fprintf(stderr, "patchbay direction: --prompts FILE and --out DIR are required\n");
        return 2;
    }
    if (!pb_cli_prompt_file_load(cmd, o->prompts, f))
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
        pb_cli_prompt_file_free(f);
    return rc;
}

int pb_cli_direction(int argc, char **argv) {
    const char *cmd = "direction";
    pb_cli_iv_options o;
    if (!pb_cli_iv_parse(argc, argv, &o))
        return 2;
    pb_cli_prompt_file f;
    int rc = direction_inputs(cmd, &o, &f);
    if (rc)
        return rc;
    pb_model *m = pb_cli_iv_load_model(cmd, &o);
    int32_t *refusal = malloc(sizeof(int32_t) * (size_t)f.n_refusal_tokens);
    int n_refusal = 0;
    rc = m && refusal && refusal_token_ids(m, &f, refusal, &n_refusal) &&
                 direction_compute_write(cmd, m, &o, &f, refusal, n_refusal)
             ? 0
             : 1;
    free(refusal);
    pb_cli_prompt_file_free(&f);
    pb_model_free(m);
    return rc;
}
