/* The prompt files of refusal-rate and direction (cli_intervene_shared.h):
 * data/refusal_pairs.json-style pairs with their split and refusal tokens,
 * or plain text with one prompt per line. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_intervene.h"
#include "cli/cli_intervene_shared.h"
#include "patchbay.h"
#include "patchbay_tool.h"

void pb_cli_prompt_file_free(pb_cli_prompt_file *f) {
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

static int add_item(pb_cli_prompt_file *f, const char *id, const char *text, int harmful, const char *split) {
    if (pb_array_reserve(&f->items, &f->cap, (size_t)f->n + 1, sizeof *f->items, "prompts") != PB_OK)
        return 0;
    pb_cli_prompt_item *it = &f->items[f->n];
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
static int read_refusal_tokens(const char *cmd, const char *path, json_t *root, pb_cli_prompt_file *f) {
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
static int read_pairs_json(const char *cmd, const char *path, const char *text, pb_cli_prompt_file *f) {
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
static int read_prompt_lines(char *text, pb_cli_prompt_file *f) {
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
int pb_cli_prompt_file_load(const char *cmd, const char *path, pb_cli_prompt_file *f) {
    memset(f, 0, sizeof *f);
    char *text = NULL;
    if (pb_read_input_file(path, PB_INPUT_MAX_BYTES, NULL, &text, NULL) != PB_OK)
        return !pb_cli_iv_fail(cmd, "--prompts");
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
        pb_cli_prompt_file_free(f);
    return ok;
}

int pb_cli_split_matches(const char *want, const char *split) {
    if (!want || strcmp(want, "all") == 0 || !*split)
        return 1;
    if (strcmp(want, "validation") == 0 || strcmp(want, "val") == 0)
        return strcmp(split, "validation") == 0 || strcmp(split, "val") == 0;
    return strcmp(want, split) == 0;
}
