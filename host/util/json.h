/* Helpers over jansson shared by every reader of JSON (sweep specs,
 * config.json, safetensors headers, checkpoints): the words and renderings
 * their error messages use. */
#ifndef PB_JSON_H
#define PB_JSON_H

#include <stddef.h>

#include <jansson.h>

/* "an object", "an integer", ... for messages. */
const char *pb_json_type_name(const json_t *value);
/* A compact rendering of value in buf (cut with "..." to fit); returns buf. */
const char *pb_json_describe(const json_t *value, char *buf, size_t size);

#endif
