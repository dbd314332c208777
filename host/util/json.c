/* JSON helpers for messages (json.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/json.h"

const char *pb_json_type_name(const json_t *value) {
    switch (json_typeof(value)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a real number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "an unknown JSON value";
}

const char *pb_json_describe(const json_t *value, char *buf, size_t size) {
    char *text = json_dumps(value, JSON_ENCODE_ANY | JSON_COMPACT);
    if (!text) {
        snprintf(buf, size, "(unprintable)");
        return buf;
    }
    if (strlen(text) >= size && size > 4)
        snprintf(buf, size, "%.*s...", (int)(size - 4), text);
    else
        snprintf(buf, size, "%s", text);
    free(text);
    return buf;
}
