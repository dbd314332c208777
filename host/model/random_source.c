/* The random weight source: a named shape's hyperparameters (model_random.c)
 * and, for every tensor of the canonical list, pb_random_fill with the
 * tensor's position in that list. No file, so no raw bytes. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "model/model_random.h"
#include "model/weight_source.h"
#include "util/internal.h"

typedef struct random_source {
    pb_weight_source base;
    uint64_t seed;
} random_source;

static pb_status random_find(const pb_weight_source *src, const char *name, pb_tensor_info *info, int *found) {
    int index = pb_weight_list_find(&src->cfg, name);
    *found = index >= 0;
    if (index < 0) {
        memset(info, 0, sizeof *info);
        snprintf(info->name, sizeof info->name, "%s", name);
        snprintf(info->file_name, sizeof info->file_name, "%s", name);
        info->index = -1;
        return PB_OK;
    }
    pb_weight_list_at(&src->cfg, index, info);
    info->n_bytes = info->n_elements * sizeof(float);
    return PB_OK;
}

static pb_status random_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out) {
    const random_source *s = (const random_source *)src;
    size_t len = strlen(info->name);
    pb_random_kind kind = info->n_dims == 2                                        ? PB_RANDOM_MATRIX
                          : len >= 5 && strcmp(info->name + len - 5, ".bias") == 0 ? PB_RANDOM_BIAS
                                                                                   : PB_RANDOM_NORM;
    pb_random_fill(out, (size_t)info->n_elements, s->seed, info->index, kind);
    return PB_OK;
}

static pb_status random_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data,
                            uint64_t *n_bytes) {
    return pb_fail(PB_ERR_UNSUPPORTED, "%s: tensor '%s' has no stored bytes (a random model is generated)", src->path,
                   info->name);
}

static void random_free(pb_weight_source *src) { pb_weight_source_release(src); }

static const pb_weight_source_ops random_ops = {random_find, random_read_f32, random_raw, random_free};

pb_status pb_weight_source_open_random(pb_weight_source **out, const char *spec, uint64_t seed) {
    if (!out || !spec)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_open_random: out and spec are required");
    *out = NULL;
    pb_model_config cfg;
    PB_TRY(pb_random_config(&cfg, spec));
    char name[160];
    snprintf(name, sizeof name, "random:%.*s:%d:%llu", (int)strcspn(spec, ":"), spec, cfg.n_layers,
             (unsigned long long)seed);
    random_source *s = pb_weight_source_alloc(out, sizeof *s, &random_ops, name);
    if (!s)
        return PB_ERR_OOM;
    s->base.cfg = cfg;
    s->seed = seed;
    pb_status status = pb_model_config_validate(&s->base.cfg);
    if (status != PB_OK) {
        random_free(&s->base);
        return status;
    }
    *out = &s->base;
    return PB_OK;
}
