/* The sweep's notice about its prompts, and --no-chat (prompt_notice.h). */
#include "cli/prompt_notice.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

enum { NOTICE_MAX_KINDS = 8 };

typedef enum prompt_kind { KIND_CHAT = 0, KIND_PLAIN, KIND_IDS, KIND_NOISE } prompt_kind;

typedef struct notice_kind {
    prompt_kind kind;
    const char *system; /* KIND_CHAT: NULL = the template's default */
    int count, with_bos, bos_added;
} notice_kind;

static prompt_kind kind_of(const pb_prompt_info *info) {
    if (info->is_noise)
        return KIND_NOISE;
    if (!info->text)
        return KIND_IDS;
    return info->chat ? KIND_CHAT : KIND_PLAIN;
}

static int same_system(const char *a, const char *b) { return a == b || (a && b && strcmp(a, b) == 0); }

/* Adds a prompt to its kind (a new kind while there is room); 1 if counted. */
static int count_prompt(notice_kind *kinds, int *n_kinds, const pb_prompt_info *info) {
    prompt_kind k = kind_of(info);
    for (int i = 0; i < *n_kinds; i++) {
        if (kinds[i].kind == k && (k != KIND_CHAT || same_system(kinds[i].system, info->system))) {
            kinds[i].count++;
            kinds[i].with_bos += info->starts_with_bos;
            kinds[i].bos_added += info->bos_added;
            return 1;
        }
    }
    if (*n_kinds == NOTICE_MAX_KINDS)
        return 0;
    kinds[(*n_kinds)++] = (notice_kind){k, info->system, 1, info->starts_with_bos, info->bos_added};
    return 1;
}

static void print_kind(FILE *f, const notice_kind *k, int total, const char *bos_text) {
    fprintf(f, "patchbay: prompts: %d of %d ", k->count, total);
    switch (k->kind) {
    case KIND_CHAT:
        fputs("text, chat template applied (system prompt: ", f);
        if (k->system)
            fprintf(f, "\"%.60s%s\"", k->system, strlen(k->system) > 60 ? "..." : "");
        else
            fputs("default of the template", f);
        fputs(")", f);
        break;
    case KIND_PLAIN: fputs("text, plain (no chat template)", f); break;
    case KIND_IDS: fputs("token ids, used as given", f); break;
    case KIND_NOISE: fputs("noise on the clean prompt's embeddings", f); break;
    }
    if (k->bos_added == k->count) {
        fprintf(f, ", BOS added: yes, %s (the tokenizer's add_bos_token; \"bos\": false in the spec turns it off)\n",
                bos_text);
        return;
    }
    if (k->bos_added > 0)
        fprintf(f, ", BOS added: to %d", k->bos_added);
    else
        fprintf(f, ", BOS added: no");
    if (k->with_bos == k->count)
        fprintf(f, " (each starts with the model's BOS %s)", bos_text);
    else if (k->with_bos > 0)
        fprintf(f, " (%d start with the model's BOS %s)", k->with_bos, bos_text);
    fputc('\n', f);
}

void pb_cli_prompt_notice(FILE *f, const pb_sweep *sweep, const pb_model *model) {
    pb_sweep_summary summary;
    if (pb_sweep_get_summary(sweep, &summary) != PB_OK)
        return;
    notice_kind kinds[NOTICE_MAX_KINDS];
    int n_kinds = 0, total = 2 * summary.n_pairs, uncounted = 0;
    for (int pair = 0; pair < summary.n_pairs; pair++) {
        for (int side = 0; side < 2; side++) {
            pb_prompt_info info;
            if (pb_sweep_get_prompt_info(sweep, pair, side, &info) == PB_OK && !count_prompt(kinds, &n_kinds, &info))
                uncounted++;
        }
    }
    char bos[80] = "token";
    const pb_model_config *cfg = pb_model_get_config(model);
    char text[64];
    if (cfg->bos_id >= 0 && pb_model_token_text(model, cfg->bos_id, text, sizeof text) == PB_OK)
        snprintf(bos, sizeof bos, "%s", text);
    for (int i = 0; i < n_kinds; i++)
        print_kind(f, &kinds[i], total, bos);
    if (uncounted)
        fprintf(f, "patchbay: prompts: %d of %d with other system prompts (results.json: pairs[].prompts)\n", uncounted,
                total);
}

int pb_cli_spec_plain_text(char **spec_text) {
    json_t *root = json_loads(*spec_text, JSON_REJECT_DUPLICATES, NULL);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return 0;
    }
    char *text = NULL;
    if (json_object_set_new(root, "chat", json_false()) == 0)
        text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(1));
    json_decref(root);
    if (!text)
        return 1;
    free(*spec_text);
    *spec_text = text;
    return 0;
}
