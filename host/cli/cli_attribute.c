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

const char *pb_cli_method_name(const char *flag_value) {
    return strcmp(flag_value, "atp-star") == 0 ? "atp*" : flag_value;
}

/* The method the rewritten spec names: --method, else the spec's own
 * estimate, else atp; NULL (after printing why) for an exact spec. */
static const char *chosen_method(const json_t *root, const pb_cli_attribute *how) {
    const json_t *method = json_object_get(root, "method");
    const char *named = json_is_string(method) ? json_string_value(method) : NULL;
    if (how->method)
        return pb_cli_method_name(how->method);
    if (!method)
        return "atp";
    if (named && (strcmp(named, "atp") == 0 || strcmp(named, "atp*") == 0))
        return named;
    fprintf(stderr, "patchbay attribute: the spec's \"method\" is not \"atp\" or \"atp*\"; run it with patchbay "
                    "sweep\n");
    return NULL;
}

int pb_cli_spec_attribute(char **spec_text, const pb_cli_attribute *how) {
    json_t *root = json_loads(*spec_text, JSON_REJECT_DUPLICATES, NULL);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        return 0; /* the sweep's own parse says what is wrong with it */
    }
    const char *method = chosen_method(root, how);
    if (method && strcmp(method, "atp*") != 0 && (how->no_qk_fix || how->no_grad_drop)) {
        fprintf(stderr, "patchbay attribute: --no-qk-fix and --no-grad-drop switch AtP*'s corrections; add "
                        "--method atp*\n");
        method = NULL;
    }
    if (!method) {
        json_decref(root);
        return 2;
    }
    json_object_set_new(root, "method", json_string(method));
    if (how->no_qk_fix || how->no_grad_drop) {
        json_t *star = json_object_get(root, "atp_star");
        if (!json_is_object(star))
            json_object_set_new(root, "atp_star", star = json_object());
        if (how->no_qk_fix)
            json_object_set_new(star, "qk_fix", json_false());
        if (how->no_grad_drop)
            json_object_set_new(star, "grad_drop", json_false());
    }
    const char *verify = how->verify;
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
