/* Sweep spec JSON -> pb_sweep_spec, checked against the model's
 * hyperparameters (format and meaning: docs/patching.md), plus the component
 * names. Every refusal names the key path ("sites[1].layers[2]") and what
 * was allowed, so a user can fix the spec without reading this file; after
 * a successful parse the planner and the engine can trust every index. */
#define _POSIX_C_SOURCE 200809L

#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/internal.h"
#include "util/json.h"
#include "formats/npy.h"
#include "model/components.h"
#include "patching/sweep_spec.h"

/* ---- freeing --------------------------------------------------------- */

static void prompt_free(pb_prompt_spec *prompt) {
    free(prompt->ids);
    free(prompt->noise_positions);
    free(prompt->text);
    free(prompt->system);
}

void pb_sweep_spec_free(pb_sweep_spec *spec) {
    if (!spec)
        return;
    for (int i = 0; i < spec->n_pairs && spec->pairs; i++) {
        prompt_free(&spec->pairs[i].base);
        prompt_free(&spec->pairs[i].source);
        free(spec->pairs[i].position_map);
        free(spec->pairs[i].positive);
        free(spec->pairs[i].negative);
    }
    free(spec->pairs);
    for (int i = 0; i < spec->n_sites && spec->sites; i++) {
        free(spec->sites[i].layers);
        free(spec->sites[i].heads);
        free(spec->sites[i].positions);
        free(spec->sites[i].group_sizes);
    }
    free(spec->sites);
    free(spec->metric.positive);
    free(spec->metric.negative);
    free(spec->metric.direction);
    free(spec->metric.direction_path);
    memset(spec, 0, sizeof *spec);
}

/* ---- helpers: paths, types, messages ---------------------------------- */

/* Key paths are short ("sites[12].positions[3][4]"); a longer one is cut,
 * which only shortens a message. */
#define PB_SPEC_PATH_CAP 256

typedef struct spec_parser {
    const pb_model_config *cfg;
    pb_spec_tokenize_fn tokenize; /* NULL: text is refused */
    pb_spec_token_text_fn token_text;
    void *tokenize_user;
    const char *spec_dir;
    pb_sweep_spec *spec;
    int max_base_T; /* over all pairs, once pairs are parsed */
} spec_parser;

/* out = parent + sep + tail, cut to fit. Built by hand rather than with
 * snprintf so that -Wformat-truncation has nothing to warn about. */
static void path_join(char out[PB_SPEC_PATH_CAP], const char *parent, const char *sep, const char *tail) {
    size_t used = 0;
    const char *parts[3] = {parent, sep, tail};
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(parts[i]);
        if (len > PB_SPEC_PATH_CAP - 1 - used)
            len = PB_SPEC_PATH_CAP - 1 - used;
        memmove(out + used, parts[i], len);
        used += len;
    }
    out[used] = 0;
}

static void path_key(char out[PB_SPEC_PATH_CAP], const char *parent, const char *key) {
    path_join(out, parent, parent[0] ? "." : "", key);
}

static void path_index(char out[PB_SPEC_PATH_CAP], const char *parent, size_t index) {
    char tail[32];
    snprintf(tail, sizeof tail, "[%zu]", index);
    path_join(out, parent, "", tail);
}

static void *spec_calloc(size_t count, size_t size, pb_status *status) {
    void *p = calloc(count ? count : 1, size);
    if (!p)
        *status = pb_fail(PB_ERR_OOM, "spec: out of memory");
    return p;
}

#define ALLOC_OR_RETURN(ptr, count)                                          \
    do {                                                                     \
        pb_status alloc_status_ = PB_OK;                                     \
        (ptr) = spec_calloc((size_t)(count), sizeof *(ptr), &alloc_status_); \
        if (!(ptr))                                                          \
            return alloc_status_;                                            \
    } while (0)

static pb_status type_error(const char *path, const char *expected, const json_t *value) {
    if (json_is_null(value))
        return pb_fail(PB_ERR_ARG, "spec: %s: expected %s, got null", path, expected);
    char text[96];
    return pb_fail(PB_ERR_ARG, "spec: %s: expected %s, got %s %s", path, expected, pb_json_type_name(value),
                   pb_json_describe(value, text, sizeof text));
}

/* Refuses any key of object not in allowed (NULL-terminated). */
static pb_status check_keys(const json_t *object, const char *path, const char *const *allowed) {
    const char *key;
    json_t *value;
    json_object_foreach((json_t *)object, key, value) {
        (void)value;
        int known = 0;
        for (int i = 0; allowed[i] && !known; i++)
            known = strcmp(key, allowed[i]) == 0;
        if (known)
            continue;
        char list[512] = "";
        size_t used = 0;
        for (int i = 0; allowed[i]; i++) {
            int n = snprintf(list + used, sizeof list - used, "%s%s", i ? ", " : "", allowed[i]);
            if (n < 0 || (size_t)n >= sizeof list - used)
                break;
            used += (size_t)n;
        }
        char key_path[PB_SPEC_PATH_CAP];
        path_key(key_path, path, key);
        return pb_fail(PB_ERR_ARG, "spec: %s: unknown key; allowed keys here: %s", key_path, list);
    }
    return PB_OK;
}

static pb_status get_required(const json_t *object, const char *path, const char *key, json_t **out) {
    *out = json_object_get(object, key);
    if (*out)
        return PB_OK;
    if (path[0])
        return pb_fail(PB_ERR_ARG, "spec: %s: missing required key '%s'", path, key);
    return pb_fail(PB_ERR_ARG, "spec: missing required key '%s'", key);
}

/* An integer in [lo, hi]; note is appended to the range message. */
static pb_status read_int(const json_t *value, const char *path, long long lo, long long hi, const char *note,
                          int *out) {
    if (!json_is_integer(value))
        return type_error(path, "an integer", value);
    long long v = json_integer_value(value);
    if (v < lo || v > hi)
        return pb_fail(PB_ERR_ARG, "spec: %s: %lld is out of range [%lld, %lld]%s", path, v, lo, hi, note ? note : "");
    *out = (int)v;
    return PB_OK;
}

static pb_status read_number(const json_t *value, const char *path, double *out) {
    if (!json_is_number(value))
        return type_error(path, "a number", value);
    *out = json_number_value(value);
    if (!isfinite(*out))
        return pb_fail(PB_ERR_ARG, "spec: %s: %g is not a finite number", path, *out);
    return PB_OK;
}

static pb_status text_unsupported(const char *path) {
    return pb_fail(PB_ERR_UNSUPPORTED,
                   "spec: %s: text needs the model's tokenizer, and this spec was parsed without one; pass "
                   "token ids instead ({\"ids\": [...]})",
                   path);
}

typedef struct int_list_rules {
    long long lo, hi; /* allowed values, inclusive */
    int resolve;      /* > 0: a negative value counts from the end of a run of this length */
    int unique;       /* refuse a value (after resolving) listed twice */
    const char *note; /* appended to range messages */
    const char *what; /* "token id", "layer": for the empty-list message */
} int_list_rules;

/* A non-empty array of integers checked against rules; *out is malloc'd
 * (NULL on failure), values resolved. */
static pb_status read_int_list(const json_t *value, const char *path, const int_list_rules *rules, int **out,
                               int *count) {
    *out = NULL;
    *count = 0;
    if (!json_is_array(value))
        return type_error(path, "an array of integers", value);
    size_t n = json_array_size(value);
    if (n == 0)
        return pb_fail(PB_ERR_ARG, "spec: %s: is empty; expected at least one %s", path, rules->what);
    if (n > INT_MAX)
        return pb_fail(PB_ERR_ARG, "spec: %s: %zu entries are too many", path, n);
    pb_status status = PB_OK;
    int *values = spec_calloc(n, sizeof *values, &status);
    if (!values)
        return status;
    /* first[v - base]: where resolved value v was first listed, -1 if not yet */
    long long base = rules->resolve > 0 ? 0 : rules->lo;
    size_t range = rules->resolve > 0 ? (size_t)rules->resolve : (size_t)(rules->hi - rules->lo + 1);
    int *first = NULL;
    if (rules->unique) {
        first = spec_calloc(range, sizeof *first, &status);
        if (!first) {
            free(values);
            return status;
        }
        for (size_t i = 0; i < range; i++)
            first[i] = -1;
    }
    for (size_t i = 0; i < n; i++) {
        char item[PB_SPEC_PATH_CAP];
        path_index(item, path, i);
        int v = 0;
        status = read_int(json_array_get(value, i), item, rules->lo, rules->hi, rules->note, &v);
        if (status != PB_OK)
            break;
        int resolved = v < 0 && rules->resolve > 0 ? v + rules->resolve : v;
        if (first) {
            int *seen = &first[resolved - base];
            if (*seen >= 0) {
                if (resolved != v)
                    status = pb_fail(PB_ERR_ARG, "spec: %s: %d names position %d, which %s[%d] already lists", item, v,
                                     resolved, path, *seen);
                else
                    status = pb_fail(PB_ERR_ARG, "spec: %s: %d is listed twice (also at %s[%d])", item, v, path, *seen);
                break;
            }
            *seen = (int)i;
        }
        values[i] = resolved;
    }
    free(first);
    if (status != PB_OK) {
        free(values);
        return status;
    }
    *out = values;
    *count = (int)n;
    return PB_OK;
}

static pb_status to_int32(int *values, int n, int32_t **out) {
    pb_status status = PB_OK;
    *out = spec_calloc((size_t)n, sizeof **out, &status);
    if (*out)
        for (int i = 0; i < n; i++)
            (*out)[i] = values[i];
    free(values);
    return status;
}

/* The spec's name of a pair's base or source run, as a key path. */
static const char *run_key(pb_patch_mode mode, int is_base) {
    switch (mode) {
    case PB_MODE_DENOISING: return is_base ? "corrupted" : "clean";
    case PB_MODE_NOISING: return is_base ? "clean" : "corrupted";
    case PB_MODE_INTERCHANGE: break;
    }
    return is_base ? "base" : "source";
}

/* ---- prompts and pairs ----------------------------------------------- */

/* {"text": "...", "chat": true, "system": "...", "bos": true}: the text
 * through the model's tokenizer, chat-templated unless "chat" is false;
 * plain text gets the model's BOS as "bos" (or the spec's default) says. */
static pb_status parse_text_prompt(const spec_parser *sp, const json_t *value, const char *path, pb_prompt_spec *out) {
    char sub[PB_SPEC_PATH_CAP];
    path_key(sub, path, "text");
    if (!sp->tokenize)
        return text_unsupported(sub);
    static const char *const keys[] = {"text", "chat", "system", "bos", NULL};
    PB_TRY(check_keys(value, path, keys));
    const json_t *text = json_object_get(value, "text"), *chat = json_object_get(value, "chat");
    const json_t *bos = json_object_get(value, "bos");
    const json_t *system = json_object_get(value, "system");
    if (!json_is_string(text))
        return type_error(sub, "a string", text);
    if (chat && !json_is_boolean(chat)) {
        path_key(sub, path, "chat");
        return type_error(sub, "true or false", chat);
    }
    if (system && !json_is_string(system)) {
        path_key(sub, path, "system");
        return type_error(sub, "a string", system);
    }
    if (bos && !json_is_boolean(bos)) {
        path_key(sub, path, "bos");
        return type_error(sub, "true or false", bos);
    }
    int use_chat = chat ? json_is_true(chat) : sp->spec->chat_default;
    if (system && !use_chat) {
        path_key(sub, path, "system");
        return pb_fail(PB_ERR_ARG, "spec: %s: a system prompt needs \"chat\": true", sub);
    }
    if (bos && use_chat) {
        path_key(sub, path, "bos");
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: \"bos\" goes with plain text; with the chat template the template "
                       "decides the BOS",
                       sub);
    }
    int use_bos = bos ? json_is_true(bos) : sp->spec->bos_default;
    int32_t *ids = NULL;
    int n = 0;
    pb_status status = sp->tokenize(sp->tokenize_user, json_string_value(text), use_chat, use_bos,
                                    system ? json_string_value(system) : NULL, &ids, &n);
    if (status != PB_OK)
        return pb_fail_context(status, "spec: %s", sub);
    if (n <= 0 || n > sp->cfg->context_length) {
        free(ids);
        return pb_fail(PB_ERR_ARG, "spec: %s: the text is %d tokens; it must be 1 .. %d (context_length)", sub, n,
                       sp->cfg->context_length);
    }
    out->ids = ids;
    out->T = n;
    out->chat = use_chat;
    out->bos = use_bos;
    out->text = strdup(json_string_value(text));
    out->system = system ? strdup(json_string_value(system)) : NULL;
    if (!out->text || (system && !out->system))
        return pb_fail(PB_ERR_OOM, "spec: out of memory");
    return PB_OK;
}

static pb_status parse_prompt(const spec_parser *sp, const json_t *value, const char *path, pb_prompt_spec *out) {
    if (!json_is_object(value))
        return type_error(path, "an object {\"ids\": [...]} or {\"text\": \"...\"}", value);
    char sub[PB_SPEC_PATH_CAP];
    if (json_object_get(value, "text"))
        return parse_text_prompt(sp, value, path, out);
    static const char *const keys[] = {"ids", "text", NULL};
    PB_TRY(check_keys(value, path, keys));
    json_t *ids;
    PB_TRY(get_required(value, path, "ids", &ids));
    path_key(sub, path, "ids");
    char note[64];
    snprintf(note, sizeof note, " (vocab_size %d)", sp->cfg->vocab_size);
    int_list_rules rules = {.lo = 0, .hi = sp->cfg->vocab_size - 1, .note = note, .what = "token id"};
    int *values;
    int n;
    PB_TRY(read_int_list(ids, sub, &rules, &values, &n));
    if (n > sp->cfg->context_length) {
        free(values);
        return pb_fail(PB_ERR_ARG, "spec: %s: %d tokens exceed the model's context_length %d", sub, n,
                       sp->cfg->context_length);
    }
    out->T = n;
    return to_int32(values, n, &out->ids);
}

/* {"noise": {...}}: the clean prompt with Gaussian noise on its embeddings. */
static pb_status parse_noise(const json_t *noise, const char *path, const pb_prompt_spec *clean, pb_prompt_spec *out) {
    if (!json_is_object(noise))
        return type_error(path, "an object {\"scale\": ..., \"positions\": [...], \"seed\": ...}", noise);
    static const char *const keys[] = {"scale", "positions", "seed", NULL};
    PB_TRY(check_keys(noise, path, keys));
    char sub[PB_SPEC_PATH_CAP];
    json_t *value;

    PB_TRY(get_required(noise, path, "scale", &value));
    path_key(sub, path, "scale");
    PB_TRY(read_number(value, sub, &out->noise_scale));
    if (!(out->noise_scale > 0))
        return pb_fail(PB_ERR_ARG, "spec: %s: %g must be > 0 (a multiple of the embedding standard deviation)", sub,
                       out->noise_scale);

    PB_TRY(get_required(noise, path, "positions", &value));
    path_key(sub, path, "positions");
    char note[96];
    snprintf(note, sizeof note, " (the clean prompt has %d tokens)", clean->T);
    int_list_rules rules = {.lo = -(long long)clean->T,
                            .hi = clean->T - 1,
                            .resolve = clean->T,
                            .unique = 1,
                            .note = note,
                            .what = "position"};
    PB_TRY(read_int_list(value, sub, &rules, &out->noise_positions, &out->n_noise_positions));

    value = json_object_get(noise, "seed");
    if (value) {
        path_key(sub, path, "seed");
        if (!json_is_integer(value))
            return type_error(sub, "a non-negative integer", value);
        if (json_integer_value(value) < 0)
            return pb_fail(PB_ERR_ARG, "spec: %s: %lld must be a non-negative integer", sub,
                           (long long)json_integer_value(value));
        out->noise_seed = (uint64_t)json_integer_value(value);
    }

    pb_status status = PB_OK;
    out->ids = spec_calloc((size_t)clean->T, sizeof *out->ids, &status);
    if (!out->ids)
        return status;
    memcpy(out->ids, clean->ids, sizeof *out->ids * (size_t)clean->T);
    out->T = clean->T;
    out->is_noise = 1;
    return PB_OK;
}

static pb_status parse_corrupted(const spec_parser *sp, const json_t *value, const char *path,
                                 const pb_prompt_spec *clean, pb_prompt_spec *out) {
    if (!json_is_object(value))
        return type_error(path, "an object {\"ids\": [...]} or {\"noise\": {...}}", value);
    json_t *noise = json_object_get(value, "noise");
    if (!noise)
        return parse_prompt(sp, value, path, out);
    static const char *const keys[] = {"ids", "text", "noise", NULL};
    PB_TRY(check_keys(value, path, keys));
    if (json_object_size(value) != 1)
        return pb_fail(PB_ERR_ARG, "spec: %s: give either a prompt (ids) or noise, not both", path);
    char sub[PB_SPEC_PATH_CAP];
    path_key(sub, path, "noise");
    return parse_noise(noise, sub, clean, out);
}

/* "last", "last-K", [[base, source], ...] or absent (identity; equal lengths only). */
static pb_status parse_position_map(const json_t *value, const char *pair_path, int T_base, int T_source, int *map) {
    char path[PB_SPEC_PATH_CAP];
    path_key(path, pair_path, "position_map");
    for (int i = 0; i < T_base; i++)
        map[i] = -1;
    if (!value) {
        if (T_base != T_source)
            return pb_fail(PB_ERR_ARG,
                           "spec: %s: base has %d tokens but source has %d; interchange between different lengths "
                           "needs a position_map (\"last\", \"last-K\" or [[base_position, source_position], ...])",
                           pair_path, T_base, T_source);
        for (int i = 0; i < T_base; i++)
            map[i] = i;
        return PB_OK;
    }
    if (json_is_string(value)) {
        const char *s = json_string_value(value);
        int shortest = T_base < T_source ? T_base : T_source;
        long long K = -1;
        if (strcmp(s, "last") == 0) {
            K = 1;
        } else if (strncmp(s, "last-", 5) == 0 && s[5] && strspn(s + 5, "0123456789") == strlen(s + 5) &&
                   strlen(s + 5) <= 9) {
            K = strtoll(s + 5, NULL, 10);
        } else {
            return pb_fail(PB_ERR_ARG,
                           "spec: %s: \"%s\" is not a position map; expected \"last\", \"last-K\" (K >= 1) or a list "
                           "of [base_position, source_position] pairs",
                           path, s);
        }
        if (K < 1 || K > shortest)
            return pb_fail(PB_ERR_ARG,
                           "spec: %s: \"%s\": K = %lld is out of range [1, %d] (base has %d tokens, source has %d)",
                           path, s, K, shortest, T_base, T_source);
        for (int i = 0; i < K; i++)
            map[T_base - K + i] = T_source - (int)K + i;
        return PB_OK;
    }
    if (!json_is_array(value))
        return type_error(path, "\"last\", \"last-K\" or an array of [base_position, source_position] pairs", value);
    size_t n = json_array_size(value);
    if (n == 0)
        return pb_fail(PB_ERR_ARG, "spec: %s: is empty; expected at least one [base_position, source_position] pair",
                       path);
    char note_base[64], note_source[64];
    snprintf(note_base, sizeof note_base, " (base has %d tokens)", T_base);
    snprintf(note_source, sizeof note_source, " (source has %d tokens)", T_source);
    for (size_t i = 0; i < n; i++) {
        char entry_path[PB_SPEC_PATH_CAP], item[PB_SPEC_PATH_CAP];
        path_index(entry_path, path, i);
        const json_t *entry = json_array_get(value, i);
        if (!json_is_array(entry) || json_array_size(entry) != 2)
            return type_error(entry_path, "a [base_position, source_position] pair", entry);
        int b = 0, s = 0;
        path_index(item, entry_path, 0);
        PB_TRY(read_int(json_array_get(entry, 0), item, -(long long)T_base, T_base - 1, note_base, &b));
        int rb = b < 0 ? b + T_base : b;
        if (map[rb] >= 0)
            return pb_fail(PB_ERR_ARG, "spec: %s: base position %d (%d) is mapped twice", item, rb, b);
        path_index(item, entry_path, 1);
        PB_TRY(read_int(json_array_get(entry, 1), item, -(long long)T_source, T_source - 1, note_source, &s));
        map[rb] = s < 0 ? s + T_source : s;
    }
    return PB_OK;
}

static pb_status parse_pair(const spec_parser *sp, const json_t *value, const char *path, pb_pair_spec *pair) {
    pb_patch_mode mode = sp->spec->mode;
    if (!json_is_object(value))
        return type_error(path,
                          mode == PB_MODE_INTERCHANGE ? "an object {\"base\": ..., \"source\": ...}"
                                                      : "an object {\"clean\": ..., \"corrupted\": ...}",
                          value);
    char sub[PB_SPEC_PATH_CAP];
    json_t *first, *second;
    if (mode == PB_MODE_INTERCHANGE) {
        static const char *const keys[] = {"base", "source", "position_map", "positive", "negative", "tokens", NULL};
        PB_TRY(check_keys(value, path, keys));
        PB_TRY(get_required(value, path, "base", &first));
        PB_TRY(get_required(value, path, "source", &second));
        const json_t *sides[2] = {first, second};
        pb_prompt_spec *outs[2] = {&pair->base, &pair->source};
        for (int i = 0; i < 2; i++) {
            path_key(sub, path, i ? "source" : "base");
            if (json_is_object(sides[i]) && json_object_get(sides[i], "noise"))
                return pb_fail(PB_ERR_ARG,
                               "spec: %s: noise corruption is only for modes \"denoising\" and \"noising\"; "
                               "interchange patches between two token prompts",
                               sub);
            PB_TRY(parse_prompt(sp, sides[i], sub, outs[i]));
        }
        pair->clean_is_source = 1;
        pb_status status = PB_OK;
        pair->position_map = spec_calloc((size_t)pair->base.T, sizeof *pair->position_map, &status);
        if (!pair->position_map)
            return status;
        return parse_position_map(json_object_get(value, "position_map"), path, pair->base.T, pair->source.T,
                                  pair->position_map);
    }
    static const char *const keys[] = {"clean", "corrupted", "positive", "negative", "tokens", NULL};
    PB_TRY(check_keys(value, path, keys));
    PB_TRY(get_required(value, path, "clean", &first));
    PB_TRY(get_required(value, path, "corrupted", &second));
    int denoising = mode == PB_MODE_DENOISING;
    pb_prompt_spec *clean = denoising ? &pair->source : &pair->base;
    pb_prompt_spec *corrupted = denoising ? &pair->base : &pair->source;
    pair->clean_is_source = denoising;
    path_key(sub, path, "clean");
    PB_TRY(parse_prompt(sp, first, sub, clean));
    path_key(sub, path, "corrupted");
    PB_TRY(parse_corrupted(sp, second, sub, clean, corrupted));
    if (clean->T != corrupted->T)
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: clean has %d tokens but corrupted has %d; noising and denoising need equal "
                       "lengths (use mode \"interchange\" with a position_map)",
                       path, clean->T, corrupted->T);
    pb_status status = PB_OK;
    pair->position_map = spec_calloc((size_t)pair->base.T, sizeof *pair->position_map, &status);
    if (!pair->position_map)
        return status;
    for (int i = 0; i < pair->base.T; i++)
        pair->position_map[i] = i;
    return PB_OK;
}

/* ---- sites ----------------------------------------------------------- */

static pb_status parse_component(const json_t *value, const char *path, pb_component *out) {
    if (!json_is_string(value))
        return type_error(path, "a component name", value);
    const char *s = json_string_value(value);
    if (pb_component_parse(s, out))
        return PB_OK;
    char list[256] = "";
    size_t used = 0;
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", c ? ", " : "",
                                 pb_component_name((pb_component)c));
    char text[96];
    return pb_fail(PB_ERR_ARG,
                   "spec: %s: %s is not a component; expected one of %s (or its hook name, e.g. hook_resid_pre, "
                   "attn.hook_z)",
                   path, pb_json_describe(value, text, sizeof text), list);
}

/* "all" (or absent) or a list of distinct indices in [0, count). */
static pb_status parse_index_list(const json_t *value, const char *path, int count, const char *note, const char *what,
                                  int **out, int *n) {
    if (!value || json_is_string(value)) {
        if (value && strcmp(json_string_value(value), "all") != 0) {
            char text[96];
            return pb_fail(PB_ERR_ARG, "spec: %s: %s is not allowed; expected \"all\" or an array of %ss", path,
                           pb_json_describe(value, text, sizeof text), what);
        }
        pb_status status = PB_OK;
        *out = spec_calloc((size_t)count, sizeof **out, &status);
        if (!*out)
            return status;
        for (int i = 0; i < count; i++)
            (*out)[i] = i;
        *n = count;
        return PB_OK;
    }
    if (!json_is_array(value))
        return type_error(path, "\"all\" or an array of integers", value);
    int_list_rules rules = {.lo = 0, .hi = count - 1, .unique = 1, .note = note, .what = what};
    return read_int_list(value, path, &rules, out, n);
}

/* Checks one site position index p against every pair: in range for the
 * base run, and mapped in interchange. */
static pb_status check_site_position(const spec_parser *sp, const char *path, long long p) {
    const pb_sweep_spec *spec = sp->spec;
    for (int i = 0; i < spec->n_pairs; i++) {
        const pb_pair_spec *pair = &spec->pairs[i];
        int T = pair->base.T;
        if (p < -T || p >= T)
            return pb_fail(PB_ERR_ARG, "spec: %s: %lld is out of range [%d, %d] for pairs[%d].%s, which has %d tokens",
                           path, p, -T, T - 1, i, run_key(spec->mode, 1), T);
        int resolved = (int)(p < 0 ? p + T : p);
        if (spec->mode == PB_MODE_INTERCHANGE && pair->position_map[resolved] < 0)
            return pb_fail(PB_ERR_ARG,
                           "spec: %s: base position %d (%lld) is not mapped by pairs[%d].position_map; a site "
                           "position outside the map cannot be patched",
                           path, resolved, p, i);
    }
    return PB_OK;
}

/* One bound of a range ("" = absent), into *out. */
static int range_bound(const char *text, size_t len, int *present, long long *out) {
    char buf[24];
    *present = len > 0;
    if (!*present)
        return 1;
    if (len >= sizeof buf)
        return 0;
    memcpy(buf, text, len);
    buf[len] = 0;
    char *end = NULL;
    *out = strtoll(buf, &end, 10);
    return end && *end == 0 && end != buf;
}

/* "START:END" (END excluded, either omitted, negative from the end, as a
 * Python slice): one site per position, a list as if written out. With
 * prompts of one length it is resolved against it; otherwise both bounds
 * must count from the same end, so that the range names the same slots in
 * every pair. */
static pb_status parse_position_range(const spec_parser *sp, const char *text, const char *path, pb_site_spec *site) {
    const char *colon = strchr(text, ':');
    int has_lo, has_hi;
    long long lo = 0, hi = 0;
    if (!range_bound(text, (size_t)(colon - text), &has_lo, &lo) ||
        !range_bound(colon + 1, strlen(colon + 1), &has_hi, &hi))
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: \"%s\" is not a range; expected \"START:END\" with integers, e.g. \"2:5\", "
                       "\"-4:\"",
                       path, text);
    const pb_sweep_spec *spec = sp->spec;
    int equal = 1;
    for (int i = 1; i < spec->n_pairs; i++)
        equal &= spec->pairs[i].base.T == spec->pairs[0].base.T;
    int T = spec->pairs[0].base.T;
    if (equal) {
        lo = has_lo ? (lo < 0 ? lo + T : lo) : 0;
        hi = has_hi ? (hi < 0 ? hi + T : hi) : T;
    } else if ((!has_lo || lo >= 0) && has_hi && hi >= 0) {
        lo = has_lo ? lo : 0;
    } else if (has_lo && lo < 0 && (!has_hi || hi < 0)) {
        hi = has_hi ? hi : 0;
    } else {
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: \"%s\" counts from both ends, and the prompts differ in length; give both bounds "
                       "from the start (\"0:5\") or both from the end (\"-4:\")",
                       path, text);
    }
    if (lo >= hi)
        return pb_fail(PB_ERR_ARG, "spec: %s: \"%s\" is empty (positions %lld .. %lld)", path, text, lo, hi - 1);
    pb_status status = PB_OK;
    site->positions = spec_calloc((size_t)(hi - lo), sizeof *site->positions, &status);
    if (!site->positions)
        return status;
    site->position_mode = PB_POSITIONS_LIST;
    for (long long p = lo; p < hi; p++) {
        PB_TRY(check_site_position(sp, path, p));
        site->positions[site->n_positions++] = (int)p;
    }
    return PB_OK;
}

/* "all", "each", "last" or "START:END". */
static pb_status parse_position_word(const spec_parser *sp, const json_t *value, const char *path, pb_site_spec *site) {
    const char *s = json_string_value(value);
    if (strchr(s, ':'))
        return parse_position_range(sp, s, path, site);
    if (strcmp(s, "all") == 0) {
        site->position_mode = PB_POSITIONS_ALL;
    } else if (strcmp(s, "each") == 0) {
        site->position_mode = PB_POSITIONS_EACH;
    } else if (strcmp(s, "last") == 0) {
        site->position_mode = PB_POSITIONS_LAST;
        PB_TRY(check_site_position(sp, path, -1));
    } else {
        char text[96];
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: %s is not allowed; expected \"all\", \"each\", \"last\", \"START:END\", [p, ...] "
                       "or [[p, ...], ...]",
                       path, pb_json_describe(value, text, sizeof text));
    }
    return PB_OK;
}

/* The shape of a position array: [p, ...] (*groups = 0) or [[p, ...], ...]
 * (*groups = 1), and how many positions it lists in all. */
static pb_status position_array_shape(const json_t *value, const char *path, int *groups, size_t *total) {
    size_t n = json_array_size(value);
    if (n == 0)
        return pb_fail(PB_ERR_ARG, "spec: %s: is empty; expected at least one position", path);
    if (n > INT_MAX)
        return pb_fail(PB_ERR_ARG, "spec: %s: %zu entries are too many", path, n);
    size_t n_ints = 0;
    *total = 0;
    for (size_t i = 0; i < n; i++) {
        const json_t *item = json_array_get(value, i);
        char item_path[PB_SPEC_PATH_CAP];
        path_index(item_path, path, i);
        if (json_is_integer(item))
            n_ints++;
        else if (json_is_array(item))
            *total += json_array_size(item);
        else
            return type_error(item_path, "an integer or an array of integers", item);
    }
    if (n_ints != 0 && n_ints != n)
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: mixes integers and lists; give either [p, ...] (one site per position) or "
                       "[[p, ...], ...] (one site per group)",
                       path);
    *groups = n_ints == 0;
    if (!*groups)
        *total = n;
    if (*total > INT_MAX)
        return pb_fail(PB_ERR_ARG, "spec: %s: %zu positions are too many", path, *total);
    return PB_OK;
}

/* Duplicate detection by stamping: raw values lie in [-max_T, max_T) once
 * range-checked, and resolved values of one pair in [0, T). */
typedef struct position_marks {
    int max_T;
    long long *raw_mark, *resolved_mark; /* (2 max_T), (max_T) */
    int *raw_where, *resolved_where;     /* index in the group of the stamped value */
} position_marks;

/* Appends one group's (or the whole list's) positions to site->positions,
 * refusing a value listed twice in it. */
static pb_status parse_position_group(const spec_parser *sp, position_marks *mk, const json_t *group,
                                      const char *group_path, long long stamp, pb_site_spec *site, size_t *at) {
    size_t size = json_array_size(group);
    for (size_t j = 0; j < size; j++) {
        char item_path[PB_SPEC_PATH_CAP];
        path_index(item_path, group_path, j);
        const json_t *item = json_array_get(group, j);
        if (!json_is_integer(item))
            return type_error(item_path, "an integer", item);
        long long p = json_integer_value(item);
        PB_TRY(check_site_position(sp, item_path, p));
        /* in range for every pair, so |p| <= max_T */
        size_t raw_index = (size_t)(p + mk->max_T);
        if (mk->raw_mark[raw_index] == stamp)
            return pb_fail(PB_ERR_ARG, "spec: %s: %lld is listed twice (also at %s[%d])", item_path, p, group_path,
                           mk->raw_where[raw_index]);
        mk->raw_mark[raw_index] = stamp;
        mk->raw_where[raw_index] = (int)j;
        site->positions[(*at)++] = (int)p;
        site->n_positions = (int)*at;
    }
    return PB_OK;
}

/* Inside group g (its size members end at site->positions + at), two
 * indices naming one token of some pair (2 and -1 when T = 3) would patch
 * it twice. */
static pb_status check_group_tokens(const spec_parser *sp, position_marks *mk, const pb_site_spec *site, size_t g,
                                    size_t at, size_t size, const char *group_path) {
    for (int i = 0; i < sp->spec->n_pairs; i++) {
        int T = sp->spec->pairs[i].base.T;
        long long pair_stamp = (long long)g * sp->spec->n_pairs + i + 1;
        const int *members = site->positions + (at - size);
        for (size_t j = 0; j < size; j++) {
            int r = members[j] < 0 ? members[j] + T : members[j];
            if (mk->resolved_mark[r] == pair_stamp) {
                int k = mk->resolved_where[r];
                char item_path[PB_SPEC_PATH_CAP];
                path_index(item_path, group_path, j);
                return pb_fail(PB_ERR_ARG, "spec: %s: %d and %d (at %s[%d]) both name position %d of pairs[%d].%s",
                               item_path, members[j], members[k], group_path, k, r, i, run_key(sp->spec->mode, 1));
            }
            mk->resolved_mark[r] = pair_stamp;
            mk->resolved_where[r] = (int)j;
        }
    }
    return PB_OK;
}

/* [p, ...] or [[p, ...], ...] into site->positions (and group_sizes). */
static pb_status parse_position_array(const spec_parser *sp, const json_t *value, const char *path,
                                      pb_site_spec *site) {
    int groups = 0;
    size_t total = 0, n = json_array_size(value);
    PB_TRY(position_array_shape(value, path, &groups, &total));
    position_marks mk = {.max_T = sp->max_base_T};
    int max_T = mk.max_T;
    pb_status status = PB_OK;
    mk.raw_mark = spec_calloc((size_t)2 * (size_t)max_T, sizeof *mk.raw_mark, &status);
    mk.resolved_mark = mk.raw_mark ? spec_calloc((size_t)max_T, sizeof *mk.resolved_mark, &status) : NULL;
    mk.raw_where = mk.resolved_mark ? spec_calloc((size_t)2 * (size_t)max_T, sizeof *mk.raw_where, &status) : NULL;
    mk.resolved_where = mk.raw_where ? spec_calloc((size_t)max_T, sizeof *mk.resolved_where, &status) : NULL;
    if (mk.resolved_where) {
        site->position_mode = groups ? PB_POSITIONS_GROUPS : PB_POSITIONS_LIST;
        site->positions = spec_calloc(total, sizeof *site->positions, &status);
        if (site->positions && groups) {
            site->group_sizes = spec_calloc(n, sizeof *site->group_sizes, &status);
            site->n_groups = site->group_sizes ? (int)n : 0;
        }
    }
    long long stamp = 0; /* one per group (LIST: one for the whole list) */
    size_t at = 0;
    for (size_t g = 0; g < (groups ? n : 1) && status == PB_OK; g++) {
        char group_path[PB_SPEC_PATH_CAP];
        const json_t *group = value;
        if (groups) {
            path_index(group_path, path, g);
            group = json_array_get(value, g);
            if (json_array_size(group) == 0) {
                status = pb_fail(PB_ERR_ARG, "spec: %s: is an empty group; each group needs at least one position",
                                 group_path);
                break;
            }
            site->group_sizes[g] = (int)json_array_size(group);
        } else {
            path_join(group_path, path, "", "");
        }
        stamp++;
        status = parse_position_group(sp, &mk, group, group_path, stamp, site, &at);
        if (status == PB_OK && groups)
            status = check_group_tokens(sp, &mk, site, g, at, json_array_size(group), group_path);
    }
    free(mk.raw_mark);
    free(mk.resolved_mark);
    free(mk.raw_where);
    free(mk.resolved_where);
    return status;
}

static pb_status parse_positions(const spec_parser *sp, const json_t *value, const char *path, pb_site_spec *site) {
    if (!value) {
        site->position_mode = PB_POSITIONS_EACH;
        return PB_OK;
    }
    if (json_is_string(value))
        return parse_position_word(sp, value, path, site);
    if (!json_is_array(value))
        return type_error(path, "\"all\", \"each\", \"last\", an array of integers or an array of arrays", value);
    return parse_position_array(sp, value, path, site);
}

static pb_status parse_site(const spec_parser *sp, const json_t *value, const char *path, pb_site_spec *site) {
    if (!json_is_object(value))
        return type_error(path, "an object {\"component\": ..., \"layers\": ...}", value);
    static const char *const keys[] = {"component", "layers", "heads", "positions", NULL};
    PB_TRY(check_keys(value, path, keys));
    const pb_model_config *cfg = sp->cfg;
    char sub[PB_SPEC_PATH_CAP], note[96];
    json_t *item;

    PB_TRY(get_required(value, path, "component", &item));
    path_key(sub, path, "component");
    PB_TRY(parse_component(item, sub, &site->component));
    if (site->component == PB_COMPONENT_RESID_MID && cfg->parallel_block)
        return pb_fail(PB_ERR_ARG,
                       "spec: %s: resid_mid does not exist in this model: its attention and MLP run in parallel "
                       "(%s), as in TransformerLens, which has no hook_resid_mid for such blocks",
                       sub, cfg->arch);

    PB_TRY(get_required(value, path, "layers", &item));
    path_key(sub, path, "layers");
    snprintf(note, sizeof note, " (n_layers %d)", cfg->n_layers);
    PB_TRY(parse_index_list(item, sub, cfg->n_layers, note, "layer", &site->layers, &site->n_layers));

    pb_head_axis axis = pb_component_info_of(site->component)->heads;
    int query_heads = axis == PB_HEADS_QUERY, kv_heads = axis == PB_HEADS_KV;
    item = json_object_get(value, "heads");
    path_key(sub, path, "heads");
    if (!query_heads && !kv_heads) {
        if (item)
            return pb_fail(PB_ERR_ARG,
                           "spec: %s: %s has no heads; heads apply to z and q (query heads) and k and v (key-value "
                           "heads)",
                           sub, pb_component_name(site->component));
    } else {
        int count = pb_component_head_count(site->component, cfg);
        if (query_heads)
            snprintf(note, sizeof note, " (n_heads %d)", count);
        else
            snprintf(note, sizeof note, " (%s indexes key-value heads; n_kv_heads %d)",
                     pb_component_name(site->component), count);
        /* absent: "all" */
        PB_TRY(parse_index_list(item, sub, count, note, "head", &site->heads, &site->n_heads));
    }

    path_key(sub, path, "positions");
    return parse_positions(sp, json_object_get(value, "positions"), sub, site);
}

/* ---- metric ---------------------------------------------------------- */

/* {"ids": [...]} or a bare array: distinct token ids. */
/* The refusal of a token string that is not one token, naming the tokens it
 * produced: '" Parisian" is 2 tokens: 12 " Par", 55 "isian"'. */
static pb_status not_one_token(const spec_parser *sp, const char *path, const char *text, const int32_t *ids, int n) {
    char listing[512] = "";
    size_t used = 0;
    for (int i = 0; i < n && used + 64 < sizeof listing; i++) {
        char piece[64] = "?";
        if (sp->token_text && sp->token_text(sp->tokenize_user, ids[i], piece, sizeof piece) != PB_OK)
            snprintf(piece, sizeof piece, "?");
        used += (size_t)snprintf(listing + used, sizeof listing - used, "%s%d \"%s\"", i ? ", " : ": ", (int)ids[i],
                                 piece);
    }
    return pb_fail(PB_ERR_ARG,
                   "spec: %s: \"%s\" is %d tokens%s; a metric token must be exactly one token (give its id, or "
                   "text that is one token)",
                   path, text, n, listing);
}

/* Token strings ("I", "Sorry") to ids: each must be exactly one token. */
static pb_status parse_token_strings(const spec_parser *sp, const json_t *strings, const char *path, int32_t **out,
                                     int *n) {
    if (!sp->tokenize)
        return text_unsupported(path);
    if (!json_is_array(strings) || json_array_size(strings) == 0)
        return type_error(path, "a non-empty array of strings", strings);
    size_t count = json_array_size(strings);
    if (count > INT_MAX)
        return pb_fail(PB_ERR_ARG, "spec: %s: %zu entries are too many", path, count);
    pb_status status = PB_OK;
    int32_t *ids = spec_calloc(count, sizeof *ids, &status);
    if (!ids)
        return status;
    for (size_t i = 0; i < count && status == PB_OK; i++) {
        char item[PB_SPEC_PATH_CAP];
        path_index(item, path, i);
        const json_t *s = json_array_get(strings, i);
        if (!json_is_string(s)) {
            status = type_error(item, "a string", s);
            break;
        }
        int32_t *piece = NULL;
        int n_piece = 0;
        status = sp->tokenize(sp->tokenize_user, json_string_value(s), 0, 0, NULL, &piece, &n_piece);
        if (status != PB_OK) {
            pb_fail_context(status, "spec: %s", item);
            break;
        }
        if (n_piece != 1)
            status = not_one_token(sp, item, json_string_value(s), piece, n_piece);
        else
            ids[i] = piece[0];
        for (size_t k = 0; status == PB_OK && k < i; k++)
            if (ids[k] == ids[i])
                status = pb_fail(PB_ERR_ARG, "spec: %s: \"%s\" is the same token (%d) as %s[%zu]", item,
                                 json_string_value(s), (int)ids[i], path, k);
        free(piece);
    }
    if (status != PB_OK) {
        free(ids);
        return status;
    }
    *out = ids;
    *n = (int)count;
    return PB_OK;
}

static pb_status parse_tokens(const spec_parser *sp, const json_t *value, const char *path, int32_t **out, int *n) {
    char sub[PB_SPEC_PATH_CAP];
    const json_t *ids = value;
    path_join(sub, path, "", "");
    if (json_is_array(value) && json_array_size(value) > 0 && json_is_string(json_array_get(value, 0)))
        return parse_token_strings(sp, value, path, out, n);
    if (json_is_string(value)) { /* one token as text: " Paris" */
        json_t *one = json_pack("[O]", value);
        if (!one)
            return pb_fail(PB_ERR_OOM, "spec: out of memory");
        pb_status status = parse_token_strings(sp, one, path, out, n);
        json_decref(one);
        return status;
    }
    if (json_is_object(value)) {
        if (json_object_get(value, "text")) {
            static const char *const text_keys[] = {"text", NULL};
            PB_TRY(check_keys(value, path, text_keys));
            path_key(sub, path, "text");
            return parse_token_strings(sp, json_object_get(value, "text"), sub, out, n);
        }
        static const char *const keys[] = {"ids", "text", NULL};
        PB_TRY(check_keys(value, path, keys));
        json_t *got;
        PB_TRY(get_required(value, path, "ids", &got));
        ids = got;
        path_key(sub, path, "ids");
    } else if (!json_is_array(value)) {
        return type_error(path, "{\"ids\": [...]}, an array of token ids, a string or an array of strings", value);
    }
    char note[64];
    snprintf(note, sizeof note, " (vocab_size %d)", sp->cfg->vocab_size);
    int_list_rules rules = {.lo = 0, .hi = sp->cfg->vocab_size - 1, .unique = 1, .note = note, .what = "token id"};
    int *values;
    PB_TRY(read_int_list(ids, sub, &rules, &values, n));
    return to_int32(values, *n, out);
}

static pb_status parse_direction(const spec_parser *sp, const json_t *value, pb_metric_spec *metric) {
    const pb_model_config *cfg = sp->cfg;
    const char *path = "metric.direction";
    if (!json_is_string(value))
        return type_error(path, "a path to a .npy file", value);
    const char *given = json_string_value(value);
    if (!given[0])
        return pb_fail(PB_ERR_ARG, "spec: %s: is empty; expected a path to a .npy file", path);
    metric->direction_path = strdup(given);
    if (!metric->direction_path)
        return pb_fail(PB_ERR_OOM, "spec: out of memory");

    int relative = given[0] != '/' && sp->spec_dir && sp->spec_dir[0];
    size_t size = strlen(given) + (relative ? strlen(sp->spec_dir) + 1 : 0) + 1;
    pb_status status = PB_OK;
    char *full = spec_calloc(size, 1, &status);
    if (!full)
        return status;
    if (relative)
        snprintf(full, size, "%s/%s", sp->spec_dir, given);
    else
        snprintf(full, size, "%s", given);

    void *data = NULL;
    int n_dims = 0;
    int64_t shape[8];
    status = pb_npy_read(full, &data, PB_NPY_F32, &n_dims, shape);
    if (status != PB_OK) {
        free(full);
        return pb_fail_context(status, "spec: %s", path);
    }
    const float *x = data;
    const float *row = NULL;
    if (n_dims == 1 && shape[0] == cfg->d_model)
        row = x;
    else if (n_dims == 2 && shape[0] == cfg->n_layers && shape[1] == cfg->d_model)
        row = x + (size_t)metric->layer * (size_t)cfg->d_model;
    if (!row) {
        char got[160] = "(";
        size_t used = 1;
        for (int i = 0; i < n_dims && used < sizeof got; i++)
            used += (size_t)snprintf(got + used, sizeof got - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
        if (used < sizeof got)
            snprintf(got + used, sizeof got - used, n_dims == 1 ? ",)" : ")");
        status = pb_fail(PB_ERR_ARG,
                         "spec: %s: %s has shape %s; expected (%d,) (d_model) or (%d, %d) (n_layers, d_model)", path,
                         full, got, cfg->d_model, cfg->n_layers, cfg->d_model);
        goto done;
    }
    size_t count = 1;
    for (int i = 0; i < n_dims; i++)
        count *= (size_t)shape[i];
    for (size_t i = 0; i < count; i++) {
        if (!isfinite(x[i])) {
            status = pb_fail(PB_ERR_ARG, "spec: %s: %s holds %g at flat index %zu; the direction must be finite", path,
                             full, (double)x[i], i);
            goto done;
        }
    }
    double norm = 0.0;
    for (int i = 0; i < cfg->d_model; i++)
        norm += (double)row[i] * row[i];
    norm = sqrt(norm);
    if (!(norm > 0.0)) {
        if (n_dims == 2)
            status = pb_fail(PB_ERR_ARG, "spec: %s: %s row %d (metric.layer) has zero norm; a direction cannot be zero",
                             path, full, metric->layer);
        else
            status = pb_fail(PB_ERR_ARG, "spec: %s: %s has zero norm; a direction cannot be zero", path, full);
        goto done;
    }
    metric->direction = spec_calloc((size_t)cfg->d_model, sizeof *metric->direction, &status);
    if (!metric->direction)
        goto done;
    for (int i = 0; i < cfg->d_model; i++)
        metric->direction[i] = (float)(row[i] / norm);
done:
    free(data);
    free(full);
    return status;
}

/* metric.kind, and the keys that kind allows. */
static pb_status parse_metric_kind(const json_t *value, const char *path, pb_metric_spec *metric) {
    json_t *item;
    PB_TRY(get_required(value, path, "kind", &item));
    if (!json_is_string(item))
        return type_error("metric.kind", "\"logit_diff\", \"logprob\", \"refusal_score\", \"kl\" or \"projection\"",
                          item);
    static const char *const kinds[] = {"logit_diff", "logprob", "refusal_score", "kl", "projection"};
    static const pb_metric_kind kind_values[] = {PB_METRIC_LOGIT_DIFF, PB_METRIC_LOGPROB, PB_METRIC_REFUSAL_SCORE,
                                                 PB_METRIC_KL, PB_METRIC_PROJECTION};
    int kind = -1;
    for (int i = 0; i < 5; i++)
        if (strcmp(json_string_value(item), kinds[i]) == 0)
            kind = i;
    if (kind < 0) {
        char text[96];
        return pb_fail(PB_ERR_ARG,
                       "spec: metric.kind: %s is not a metric; expected \"logit_diff\", \"logprob\", "
                       "\"refusal_score\", \"kl\" or \"projection\"",
                       pb_json_describe(item, text, sizeof text));
    }
    metric->kind = kind_values[kind];

    static const char *const keys_logit_diff[] = {"kind", "position", "positive", "negative", NULL};
    static const char *const keys_tokens[] = {"kind", "position", "tokens", NULL};
    static const char *const keys_kl[] = {"kind", "position", NULL};
    static const char *const keys_projection[] = {"kind", "position", "direction", "layer", "hook", NULL};
    const char *const *keys = metric->kind == PB_METRIC_LOGIT_DIFF   ? keys_logit_diff
                              : metric->kind == PB_METRIC_KL         ? keys_kl
                              : metric->kind == PB_METRIC_PROJECTION ? keys_projection
                                                                     : keys_tokens;
    return check_keys(value, path, keys);
}

/* metric.position (default -1), in range for every run of every pair. */
static pb_status parse_metric_position(const spec_parser *sp, const json_t *value, pb_metric_spec *metric) {
    metric->position = -1;
    json_t *item = json_object_get(value, "position");
    if (!item)
        return PB_OK;
    if (!json_is_integer(item))
        return type_error("metric.position", "an integer", item);
    long long p = json_integer_value(item);
    const pb_sweep_spec *spec = sp->spec;
    for (int i = 0; i < spec->n_pairs; i++) {
        for (int is_base = 1; is_base >= 0; is_base--) {
            int T = is_base ? spec->pairs[i].base.T : spec->pairs[i].source.T;
            if (p < -T || p >= T)
                return pb_fail(PB_ERR_ARG,
                               "spec: metric.position: %lld is out of range [%d, %d] for pairs[%d].%s, which has "
                               "%d tokens",
                               p, -T, T - 1, i, run_key(spec->mode, is_base), T);
        }
    }
    metric->position = (int)p;
    return PB_OK;
}

/* A projection metric's layer, hook and direction. */
static pb_status parse_metric_projection(const spec_parser *sp, const json_t *value, const char *path,
                                         pb_metric_spec *metric) {
    const pb_model_config *cfg = sp->cfg;
    json_t *item;
    char note[64];
    snprintf(note, sizeof note, " (n_layers %d)", cfg->n_layers);
    PB_TRY(get_required(value, path, "layer", &item));
    PB_TRY(read_int(item, "metric.layer", 0, cfg->n_layers - 1, note, &metric->layer));
    item = json_object_get(value, "hook");
    if (item) {
        if (!json_is_string(item))
            return type_error("metric.hook", "\"resid_pre\" or \"resid_post\"", item);
        const char *hook = json_string_value(item);
        if (strcmp(hook, "resid_pre") == 0) {
            metric->hook_post = 0;
        } else if (strcmp(hook, "resid_post") == 0) {
            metric->hook_post = 1;
        } else {
            char text[96];
            return pb_fail(PB_ERR_ARG, "spec: metric.hook: %s is not allowed; expected \"resid_pre\" or \"resid_post\"",
                           pb_json_describe(item, text, sizeof text));
        }
    }
    PB_TRY(get_required(value, path, "direction", &item));
    return parse_direction(sp, item, metric);
}

/* One token set of the metric ("metric.positive"), when given. */
static pb_status parse_metric_tokens(const spec_parser *sp, const json_t *metric, const char *key, int32_t **out,
                                     int *n) {
    const json_t *item = json_object_get(metric, key);
    if (!item)
        return PB_OK;
    char path[PB_SPEC_PATH_CAP];
    path_key(path, "metric", key);
    return parse_tokens(sp, item, path, out, n);
}

static pb_status parse_metric(const spec_parser *sp, const json_t *value) {
    const char *path = "metric";
    pb_metric_spec *metric = &sp->spec->metric;
    if (!json_is_object(value))
        return type_error(path, "an object {\"kind\": ...}", value);
    PB_TRY(parse_metric_kind(value, path, metric));
    PB_TRY(parse_metric_position(sp, value, metric));
    /* Token sets may instead be given by every pair (parse_pair_tokens). */
    switch (metric->kind) {
    case PB_METRIC_LOGIT_DIFF:
        PB_TRY(parse_metric_tokens(sp, value, "positive", &metric->positive, &metric->n_positive));
        PB_TRY(parse_metric_tokens(sp, value, "negative", &metric->negative, &metric->n_negative));
        break;
    case PB_METRIC_LOGPROB:
    case PB_METRIC_REFUSAL_SCORE:
        PB_TRY(parse_metric_tokens(sp, value, "tokens", &metric->positive, &metric->n_positive));
        break;
    case PB_METRIC_KL:
    case PB_METRIC_CALLBACK: break;
    case PB_METRIC_PROJECTION: return parse_metric_projection(sp, value, path, metric);
    }
    return PB_OK;
}

const char *pb_sweep_metric_name(pb_metric_kind kind) {
    switch (kind) {
    case PB_METRIC_LOGIT_DIFF: return "logit_diff";
    case PB_METRIC_LOGPROB: return "logprob";
    case PB_METRIC_REFUSAL_SCORE: return "refusal_score";
    case PB_METRIC_KL: return "kl";
    case PB_METRIC_PROJECTION: return "projection";
    case PB_METRIC_CALLBACK: return "callback";
    }
    return "unknown";
}

const char *pb_sweep_method_description(const pb_sweep_spec *spec) {
    if (spec->method == PB_METHOD_EXACT)
        return "exact (a patched forward per row)";
    if (spec->method == PB_METHOD_ATP)
        return "atp (attribution patching: first-order estimates from one gradient per pair, no patched runs)";
    if (spec->qk_fix && spec->grad_drop)
        return "atp* (AtP* with the QK fix and GradDrop: |effect| signed as the total effect, no patched runs)";
    if (spec->grad_drop)
        return "atp* (AtP* with GradDrop: |effect| signed as the total effect, no patched runs)";
    return spec->qk_fix ? "atp* (AtP* with the QK fix: signed estimates, no patched runs)"
                        : "atp* (AtP* with neither correction: AtP's signed estimates, no patched runs)";
}

const char *pb_sweep_method_name(pb_sweep_method method) {
    return method == PB_METHOD_ATP ? "atp" : method == PB_METHOD_ATP_STAR ? "atp*" : "exact";
}

/* A pair's token set: its own (pairs[i].<key>) or a copy of the metric's. */
static pb_status pair_token_set(const spec_parser *sp, const json_t *pair, size_t index, const char *key,
                                const int32_t *fallback, int n_fallback, int32_t **out, int *n, int *own) {
    char path[PB_SPEC_PATH_CAP], pair_path[PB_SPEC_PATH_CAP];
    path_index(pair_path, "pairs", index);
    path_key(path, pair_path, key);
    const json_t *item = json_object_get(pair, key);
    *own = item != NULL;
    if (item)
        return parse_tokens(sp, item, path, out, n);
    if (!fallback)
        return pb_fail(PB_ERR_ARG,
                       "spec: metric: missing required key '%s' (metric %s needs it, or \"%s\" in every pair; %s has "
                       "none)",
                       key, pb_sweep_metric_name(sp->spec->metric.kind), key, pair_path);
    pb_status status = PB_OK;
    *out = spec_calloc((size_t)n_fallback, sizeof **out, &status);
    if (!*out)
        return status;
    memcpy(*out, fallback, sizeof **out * (size_t)n_fallback);
    *n = n_fallback;
    return PB_OK;
}

/* A logit_diff token on both sides: named where each side was given. */
static pb_status overlap_error(int i, const pb_pair_spec *p, int a) {
    char negative[64], positive[64];
    if (p->own_negative)
        snprintf(negative, sizeof negative, "pairs[%d].negative[%d]", i, a);
    else
        snprintf(negative, sizeof negative, "metric.negative[%d]", a);
    if (p->own_positive)
        snprintf(positive, sizeof positive, "pairs[%d].positive", i);
    else
        snprintf(positive, sizeof positive, "metric.positive");
    return pb_fail(PB_ERR_ARG,
                   "spec: %s: token id %d is also in %s; a token cannot count on both sides of a logit difference",
                   negative, (int)p->negative[a], positive);
}

/* Per-pair metric tokens (after the metric): each pair's own
 * "positive"/"negative" (logit_diff) or "tokens" (logprob, refusal_score),
 * else the metric's. */
static pb_status parse_pair_tokens(const spec_parser *sp, const json_t *pairs) {
    pb_sweep_spec *spec = sp->spec;
    const pb_metric_spec *m = &spec->metric;
    int diff = m->kind == PB_METRIC_LOGIT_DIFF;
    int sets = diff || m->kind == PB_METRIC_LOGPROB || m->kind == PB_METRIC_REFUSAL_SCORE;
    static const char *const keys[] = {"positive", "negative", "tokens"};
    for (int i = 0; i < spec->n_pairs; i++) {
        const json_t *pair = json_array_get(pairs, (size_t)i);
        pb_pair_spec *p = &spec->pairs[i];
        for (int k = 0; k < 3; k++) {
            int allowed = diff ? k < 2 : sets && k == 2;
            if (json_object_get(pair, keys[k]) && !allowed)
                return pb_fail(PB_ERR_ARG, "spec: pairs[%d].%s: metric %s has no \"%s\" tokens%s", i, keys[k],
                               pb_sweep_metric_name(m->kind), keys[k],
                               diff   ? " (logit_diff takes \"positive\" and \"negative\")"
                               : sets ? " (it takes \"tokens\")"
                                      : "");
        }
        if (!sets)
            continue;
        PB_TRY(pair_token_set(sp, pair, (size_t)i, diff ? "positive" : "tokens", m->positive, m->n_positive,
                              &p->positive, &p->n_positive, &p->own_positive));
        if (!diff)
            continue;
        PB_TRY(pair_token_set(sp, pair, (size_t)i, "negative", m->negative, m->n_negative, &p->negative, &p->n_negative,
                              &p->own_negative));
        for (int a = 0; a < p->n_negative; a++)
            for (int k = 0; k < p->n_positive; k++)
                if (p->negative[a] == p->positive[k])
                    return overlap_error(i, p, a);
    }
    return PB_OK;
}

/* ---- top level ------------------------------------------------------- */

/* "verify": {"top": K, "control": N (default K), "seed": S (default 0)},
 * only with "method": "atp" or "atp*". */
static pb_status parse_verify(pb_sweep_spec *spec, const json_t *item) {
    spec->verify_top = spec->verify_control = 0;
    spec->verify_seed = 0;
    if (!item)
        return PB_OK;
    if (spec->method == PB_METHOD_EXACT)
        return pb_fail(PB_ERR_ARG, "spec: verify: checks an estimate; it needs \"method\": \"atp\" or \"atp*\"");
    if (!json_is_object(item))
        return type_error("verify", "an object {\"top\": K, \"control\": N, \"seed\": S}", item);
    static const char *const keys[] = {"top", "control", "seed", NULL};
    PB_TRY(check_keys(item, "verify", keys));
    const json_t *top = json_object_get(item, "top"), *control = json_object_get(item, "control");
    const json_t *seed = json_object_get(item, "seed");
    if (!json_is_integer(top) || json_integer_value(top) < 1 || json_integer_value(top) > 1000000)
        return type_error("verify.top", "an integer in [1, 1000000]", top ? top : json_null());
    spec->verify_top = (int)json_integer_value(top);
    spec->verify_control = spec->verify_top;
    if (control &&
        (!json_is_integer(control) || json_integer_value(control) < 0 || json_integer_value(control) > 1000000))
        return type_error("verify.control", "an integer in [0, 1000000]", control);
    if (control)
        spec->verify_control = (int)json_integer_value(control);
    if (seed && (!json_is_integer(seed) || json_integer_value(seed) < 0))
        return type_error("verify.seed", "a non-negative integer", seed);
    if (seed)
        spec->verify_seed = (uint64_t)json_integer_value(seed);
    return PB_OK;
}

/* "atp_star": {"qk_fix": bool, "grad_drop": bool}, only with "atp*"
 * (both default true). */
static pb_status parse_atp_star(pb_sweep_spec *spec, const json_t *item) {
    spec->qk_fix = spec->grad_drop = spec->method == PB_METHOD_ATP_STAR;
    if (!item)
        return PB_OK;
    if (spec->method != PB_METHOD_ATP_STAR)
        return pb_fail(PB_ERR_ARG, "spec: atp_star: switches AtP*'s corrections; it needs \"method\": \"atp*\"");
    if (!json_is_object(item))
        return type_error("atp_star", "an object {\"qk_fix\": true|false, \"grad_drop\": true|false}", item);
    static const char *const keys[] = {"qk_fix", "grad_drop", NULL};
    PB_TRY(check_keys(item, "atp_star", keys));
    const json_t *qk = json_object_get(item, "qk_fix"), *gd = json_object_get(item, "grad_drop");
    if (qk && !json_is_boolean(qk))
        return type_error("atp_star.qk_fix", "true or false", qk);
    if (gd && !json_is_boolean(gd))
        return type_error("atp_star.grad_drop", "true or false", gd);
    if (qk)
        spec->qk_fix = json_is_true(qk);
    if (gd)
        spec->grad_drop = json_is_true(gd);
    return PB_OK;
}

/* The top level's optional settings: method, atp_star and verify,
 * description, chat, bos, significance_threshold, effect_floor. */
static pb_status parse_settings(pb_sweep_spec *spec, const json_t *root) {
    json_t *item;
    spec->method = PB_METHOD_EXACT;
    item = json_object_get(root, "method");
    const char *name = json_is_string(item) ? json_string_value(item) : "";
    if (item && strcmp(name, "exact") != 0 && strcmp(name, "atp") != 0 && strcmp(name, "atp*") != 0)
        return type_error("method",
                          "\"exact\" (a patched forward per row), \"atp\" (attribution patching) or \"atp*\" "
                          "(AtP with the QK fix and GradDrop)",
                          item);
    if (item)
        spec->method = strcmp(name, "atp") == 0    ? PB_METHOD_ATP
                       : strcmp(name, "atp*") == 0 ? PB_METHOD_ATP_STAR
                                                   : PB_METHOD_EXACT;
    PB_TRY(parse_atp_star(spec, json_object_get(root, "atp_star")));
    PB_TRY(parse_verify(spec, json_object_get(root, "verify")));

    item = json_object_get(root, "description");
    if (item && !json_is_string(item))
        return type_error("description", "a string", item);
    /* The default for text prompts that do not say: the chat template. */
    spec->chat_default = 1;
    item = json_object_get(root, "chat");
    if (item && !json_is_boolean(item))
        return type_error("chat", "true or false (the default for text prompts without \"chat\")", item);
    if (item)
        spec->chat_default = json_is_true(item);
    /* Plain text's BOS: the tokenizer's choice unless the spec says. */
    spec->bos_default = -1;
    item = json_object_get(root, "bos");
    if (item && !json_is_boolean(item))
        return type_error("bos", "true or false (the default for plain text prompts without \"bos\")", item);
    if (item)
        spec->bos_default = json_is_true(item);

    spec->significance_threshold = 0.1;
    item = json_object_get(root, "significance_threshold");
    if (item) {
        PB_TRY(read_number(item, "significance_threshold", &spec->significance_threshold));
        if (spec->significance_threshold < 0)
            return pb_fail(PB_ERR_ARG, "spec: significance_threshold: %g must be >= 0", spec->significance_threshold);
    }
    spec->effect_floor = 1e-4;
    item = json_object_get(root, "effect_floor");
    if (item) {
        PB_TRY(read_number(item, "effect_floor", &spec->effect_floor));
        if (!(spec->effect_floor > 0))
            return pb_fail(PB_ERR_ARG, "spec: effect_floor: %g must be > 0 (in the metric's units)",
                           spec->effect_floor);
    }
    return PB_OK;
}

static pb_status parse_root(spec_parser *sp, const json_t *root) {
    pb_sweep_spec *spec = sp->spec;
    if (!json_is_object(root))
        return pb_fail(PB_ERR_ARG, "spec: expected a JSON object at the top level, got %s", pb_json_type_name(root));
    static const char *const keys[] = {"mode",         "pairs",       "sites", "metric", "significance_threshold",
                                       "effect_floor", "description", "chat",  "bos",    "method",
                                       "atp_star",     "verify",      NULL};
    PB_TRY(check_keys(root, "", keys));
    json_t *mode, *pairs, *sites, *metric;
    PB_TRY(get_required(root, "", "mode", &mode));
    PB_TRY(get_required(root, "", "pairs", &pairs));
    PB_TRY(get_required(root, "", "sites", &sites));
    PB_TRY(get_required(root, "", "metric", &metric));

    if (!json_is_string(mode))
        return type_error("mode", "\"denoising\", \"noising\" or \"interchange\"", mode);
    const char *m = json_string_value(mode);
    if (strcmp(m, "denoising") == 0) {
        spec->mode = PB_MODE_DENOISING;
    } else if (strcmp(m, "noising") == 0) {
        spec->mode = PB_MODE_NOISING;
    } else if (strcmp(m, "interchange") == 0) {
        spec->mode = PB_MODE_INTERCHANGE;
    } else {
        char text[96];
        return pb_fail(PB_ERR_ARG,
                       "spec: mode: %s is not a mode; expected \"denoising\", \"noising\" or \"interchange\"",
                       pb_json_describe(mode, text, sizeof text));
    }

    PB_TRY(parse_settings(spec, root));

    if (!json_is_array(pairs))
        return type_error("pairs", "a non-empty array of prompt pairs", pairs);
    size_t n = json_array_size(pairs);
    if (n == 0)
        return pb_fail(PB_ERR_ARG, "spec: pairs: is empty; expected at least one prompt pair");
    if (n > INT_MAX)
        return pb_fail(PB_ERR_ARG, "spec: pairs: %zu pairs are too many", n);
    ALLOC_OR_RETURN(spec->pairs, n);
    spec->n_pairs = (int)n;
    for (size_t i = 0; i < n; i++) {
        char path[PB_SPEC_PATH_CAP];
        path_index(path, "pairs", i);
        PB_TRY(parse_pair(sp, json_array_get(pairs, i), path, &spec->pairs[i]));
        if (spec->pairs[i].base.T > sp->max_base_T)
            sp->max_base_T = spec->pairs[i].base.T;
    }

    if (!json_is_array(sites))
        return type_error("sites", "a non-empty array of site entries", sites);
    n = json_array_size(sites);
    if (n == 0)
        return pb_fail(PB_ERR_ARG, "spec: sites: is empty; expected at least one site entry");
    if (n > INT_MAX)
        return pb_fail(PB_ERR_ARG, "spec: sites: %zu entries are too many", n);
    ALLOC_OR_RETURN(spec->sites, n);
    spec->n_sites = (int)n;
    for (size_t i = 0; i < n; i++) {
        char path[PB_SPEC_PATH_CAP];
        path_index(path, "sites", i);
        PB_TRY(parse_site(sp, json_array_get(sites, i), path, &spec->sites[i]));
    }

    PB_TRY(parse_metric(sp, metric));
    return parse_pair_tokens(sp, pairs);
}

pb_status pb_sweep_spec_parse(pb_sweep_spec *spec, const char *json_text, const char *spec_dir,
                              const pb_model_config *cfg) {
    return pb_sweep_spec_parse_text(spec, json_text, spec_dir, cfg, NULL);
}

pb_status pb_sweep_spec_parse_text(pb_sweep_spec *spec, const char *json_text, const char *spec_dir,
                                   const pb_model_config *cfg, const pb_spec_text *text) {
    if (!spec)
        return pb_fail(PB_ERR_ARG, "pb_sweep_spec_parse: spec is NULL");
    memset(spec, 0, sizeof *spec);
    if (!json_text || !cfg)
        return pb_fail(PB_ERR_ARG, "pb_sweep_spec_parse: %s is NULL", json_text ? "cfg" : "json_text");
    if (cfg->n_layers <= 0 || cfg->d_model <= 0 || cfg->n_heads <= 0 || cfg->n_kv_heads <= 0 || cfg->vocab_size <= 0 ||
        cfg->context_length <= 0)
        return pb_fail(PB_ERR_ARG, "pb_sweep_spec_parse: the model config has a non-positive dimension");
    json_error_t error;
    json_t *root = json_loads(json_text, JSON_REJECT_DUPLICATES, &error);
    if (!root)
        return pb_fail(PB_ERR_ARG, "spec: not valid JSON: %s (line %d, column %d)", error.text, error.line,
                       error.column);
    spec_parser sp = {.cfg = cfg,
                      .tokenize = text ? text->tokenize : NULL,
                      .token_text = text ? text->token_text : NULL,
                      .tokenize_user = text ? text->user : NULL,
                      .spec_dir = spec_dir,
                      .spec = spec};
    pb_status status = parse_root(&sp, root);
    json_decref(root);
    if (status != PB_OK)
        pb_sweep_spec_free(spec);
    return status;
}
