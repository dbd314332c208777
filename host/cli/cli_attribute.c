/* patchbay attribute's spec rewrite (cli_attribute.h). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_attribute.h"

/* "top:K[,control:N][,seed:S]" -> {"top": K, ...}; NULL when malformed. */
static json_t *parse_verify(const char *text) {
    json_t *out = json_object();
    char *copy = strdup(text), *save = NULL;
    int ok = out && copy, has_top = 0;
    for (char *item = copy ? strtok_r(copy, ",", &save) : NULL; ok && item; item = strtok_r(NULL, ",", &save)) {
        char *colon = strchr(item, ':'), *end = NULL;
        if (!colon) {
            ok = 0;
            break;
        }
        *colon = 0;
        long long value = strtoll(colon + 1, &end, 10);
        ok = end != colon + 1 && !*end && value >= 0 &&
             (strcmp(item, "top") == 0 || strcmp(item, "control") == 0 || strcmp(item, "seed") == 0);
        has_top |= strcmp(item, "top") == 0;
        if (ok)
            ok = json_object_set_new(out, item, json_integer(value)) == 0;
    }
    free(copy);
    if (!ok || !has_top) {
        json_decref(out);
        return NULL;
    }
    return out;
}

int pb_cli_spec_attribute(char **spec_text, const char *verify) {
    json_t *root = json_loads(*spec_text, JSON_REJECT_DUPLICATES, NULL);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return 0; /* the sweep's own parse says what is wrong with it */
    }
    const json_t *method = json_object_get(root, "method");
    if (method && !(json_is_string(method) && strcmp(json_string_value(method), "atp") == 0)) {
        fprintf(stderr, "patchbay attribute: the spec's \"method\" is not \"atp\"; run it with patchbay sweep\n");
        json_decref(root);
        return 2;
    }
    json_object_set_new(root, "method", json_string("atp"));
    if (verify) {
        json_t *v = parse_verify(verify);
        if (!v) {
            fprintf(stderr, "patchbay attribute: --verify %s: expected top:K[,control:N][,seed:S]\n", verify);
            json_decref(root);
            return 2;
        }
        json_object_set_new(root, "verify", v);
    }
    char *text = json_dumps(root, JSON_PRESERVE_ORDER | JSON_INDENT(1));
    json_decref(root);
    if (!text) {
        fprintf(stderr, "patchbay attribute: out of memory rewriting the spec\n");
        return 2;
    }
    free(*spec_text);
    *spec_text = text;
    return 0;
}
