/* The random weight source: a named shape's hyperparameters (model_random.c)
 * and, for every tensor of the canonical list, pb_random_fill with the
 * tensor's position in that list.
 *
 * Spec "NAME[:LAYERS[:TYPE]]". Without TYPE (or with f32) nothing is stored:
 * read_f32 generates, and there are no raw bytes. With TYPE f16, bf16 or
 * q8_0 the matrices are stored in that type (norms and biases in f32, as
 * GGUF files keep them) in this process's memory, each generated whole at
 * its first use: raw hands the bytes out, so the model can keep them
 * (--dtype file), read them in place or stream them, and a backend may pin
 * them (a stand-in for a large model's weights in host memory). read_f32
 * then decodes the stored bytes, so every path sees the same values. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/dtype.h"
#include "model/model.h"
#include "model/model_random.h"
#include "model/weight_source.h"
#include "util/internal.h"

/* Stored tensors start on their own pages and fill whole pages, so that
 * pinning one never touches another's. */
#define RANDOM_PAGE ((size_t)4096)
/* Values generated (fp32) per step before they are stored. */
#define RANDOM_CHUNK ((size_t)1 << 24)

typedef struct random_source {
    pb_weight_source base;
    uint64_t seed;
    pb_weight_type matrix_type; /* F32: nothing stored */
    int n_tensors;
    void **bytes;  /* (n_tensors): the stored bytes, NULL until first use */
    float *values; /* (RANDOM_CHUNK) generation scratch */
} random_source;

static int stores(const random_source *s) { return s->matrix_type != PB_WEIGHT_TYPE_F32; }

static pb_weight_type type_of(const random_source *s, const pb_tensor_info *info) {
    return info->n_dims == 2 ? s->matrix_type : PB_WEIGHT_TYPE_F32;
}

static pb_status random_find(const pb_weight_source *src, const char *name, pb_tensor_info *info, int *found) {
    const random_source *s = (const random_source *)src;
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
    info->type = type_of(s, info);
    info->n_bytes = info->n_elements / pb_ggml_block_size(info->type) * pb_ggml_block_bytes(info->type);
    return PB_OK;
}

static pb_random_kind kind_of(const pb_tensor_info *info) {
    size_t len = strlen(info->name);
    return info->n_dims == 2                                        ? PB_RANDOM_MATRIX
           : len >= 5 && strcmp(info->name + len - 5, ".bias") == 0 ? PB_RANDOM_BIAS
                                                                    : PB_RANDOM_NORM;
}

/* out (n values of type, n a multiple of its block) = x stored, in
 * parallel spans of whole blocks. */
static void store_values(pb_weight_type type, void *out, const float *x, size_t n) {
    const size_t span = (size_t)1 << 16; /* a multiple of every block */
    size_t block = pb_ggml_block_size(type), block_bytes = pb_ggml_block_bytes(type);
#pragma omp parallel for schedule(static)
    for (size_t first = 0; first < n; first += span) {
        size_t count = n - first < span ? n - first : span;
        char *dst = (char *)out + first / block * block_bytes;
        if (type == PB_GGML_Q8_0)
            pb_quantize_q8_0(dst, x + first, count / block);
        else if (type == PB_GGML_F32)
            memcpy(dst, x + first, count * sizeof(float));
        else
            pb_dtype_from_f32(type == PB_GGML_BF16 ? PB_DTYPE_BF16 : PB_DTYPE_F16, dst, x + first, count);
    }
}

/* The stored bytes of info's tensor, generated at the first call. The
 * source is const for the loader; generating once is its own business. */
static pb_status stored_bytes(const random_source *cs, const pb_tensor_info *info, const void **data) {
    random_source *s = (random_source *)(uintptr_t)cs;
    if (info->index < 0 || info->index >= s->n_tensors)
        return pb_fail(PB_ERR_ARG, "%s: tensor '%s' is not in the model's list", s->base.path, info->name);
    if (!s->bytes[info->index]) {
        size_t size = (info->n_bytes + RANDOM_PAGE - 1) / RANDOM_PAGE * RANDOM_PAGE;
        char *out = aligned_alloc(RANDOM_PAGE, size);
        if (!out)
            return pb_fail(PB_ERR_OOM, "%s: out of memory generating tensor '%s' (%.1f MiB)", s->base.path, info->name,
                           (double)size / (1 << 20));
        pb_weight_type type = type_of(s, info);
        size_t block = pb_ggml_block_size(type), block_bytes = pb_ggml_block_bytes(type);
        for (size_t first = 0; first < info->n_elements; first += RANDOM_CHUNK) {
            size_t n = info->n_elements - first < RANDOM_CHUNK ? (size_t)(info->n_elements - first) : RANDOM_CHUNK;
            pb_random_fill_from(s->values, first, n, s->seed, info->index, kind_of(info));
            store_values(type, out + first / block * block_bytes, s->values, n);
        }
        s->bytes[info->index] = out;
    }
    *data = s->bytes[info->index];
    return PB_OK;
}

static pb_status random_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out) {
    const random_source *s = (const random_source *)src;
    if (!stores(s)) {
        pb_random_fill(out, (size_t)info->n_elements, s->seed, info->index, kind_of(info));
        return PB_OK;
    }
    const void *data;
    PB_TRY(stored_bytes(s, info, &data));
    return pb_dequantize(out, data, info->type, info->n_elements);
}

static pb_status random_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data,
                            uint64_t *n_bytes) {
    const random_source *s = (const random_source *)src;
    if (!stores(s))
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "%s: tensor '%s' has no stored bytes (a random model is generated; NAME:LAYERS:TYPE stores "
                       "one)",
                       src->path, info->name);
    PB_TRY(stored_bytes(s, info, data));
    *n_bytes = info->n_bytes;
    return PB_OK;
}

static void random_free(pb_weight_source *src) {
    random_source *s = (random_source *)src;
    for (int i = 0; s->bytes && i < s->n_tensors; i++)
        free(s->bytes[i]);
    free(s->bytes);
    free(s->values);
    pb_weight_source_release(src);
}

static const pb_weight_source_ops random_ops = {random_find, random_read_f32, random_raw, random_free};

/* The TYPE of "NAME:LAYERS:TYPE" (F32 when absent). */
static pb_status parse_type(const char *spec, pb_weight_type *type) {
    const char *colon = strchr(spec, ':');
    const char *second = colon ? strchr(colon + 1, ':') : NULL;
    *type = PB_WEIGHT_TYPE_F32;
    if (!second)
        return PB_OK;
    static const struct {
        const char *name;
        pb_weight_type type;
    } types[] = {{"f32", PB_GGML_F32}, {"f16", PB_GGML_F16}, {"bf16", PB_GGML_BF16}, {"q8_0", PB_GGML_Q8_0}};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        if (strcmp(second + 1, types[i].name) == 0) {
            *type = types[i].type;
            return PB_OK;
        }
    return pb_fail(PB_ERR_ARG, "random model '%s': weight type '%s' is not one of f32, f16, bf16, q8_0", spec,
                   second + 1);
}

/* Every matrix's rows must be whole blocks of the stored type. */
static pb_status check_blocks(const random_source *s) {
    uint32_t block = pb_ggml_block_size(s->matrix_type);
    for (int i = 0; i < s->n_tensors; i++) {
        pb_tensor_info info;
        pb_weight_list_at(&s->base.cfg, i, &info);
        if (info.n_dims == 2 && info.shape[1] % block != 0)
            return pb_fail(PB_ERR_ARG, "%s: tensor '%s' has rows of %lld values, not whole %s blocks of %u",
                           s->base.path, info.name, (long long)info.shape[1], pb_ggml_type_name(s->matrix_type), block);
    }
    return PB_OK;
}

static pb_status random_init(random_source *s, const char *spec, pb_weight_type type, uint64_t seed) {
    PB_TRY(pb_random_config(&s->base.cfg, spec));
    s->seed = seed;
    s->matrix_type = type;
    PB_TRY(pb_model_config_validate(&s->base.cfg));
    if (!stores(s))
        return PB_OK;
    s->n_tensors = pb_weight_list_count(&s->base.cfg);
    s->bytes = calloc((size_t)s->n_tensors, sizeof *s->bytes);
    s->values = malloc(sizeof(float) * RANDOM_CHUNK);
    if (!s->bytes || !s->values)
        return pb_fail(PB_ERR_OOM, "%s: out of memory", s->base.path);
    s->base.owns_raw = 1;
    return check_blocks(s);
}

pb_status pb_weight_source_open_random(pb_weight_source **out, const char *spec, uint64_t seed) {
    if (!out || !spec)
        return pb_fail(PB_ERR_ARG, "pb_weight_source_open_random: out and spec are required");
    *out = NULL;
    pb_weight_type type;
    PB_TRY(parse_type(spec, &type));
    pb_model_config cfg;
    PB_TRY(pb_random_config(&cfg, spec));
    char name[192];
    int name_len = (int)strcspn(spec, ":");
    if (type == PB_WEIGHT_TYPE_F32)
        snprintf(name, sizeof name, "random:%.*s:%d:%llu", name_len, spec, cfg.n_layers, (unsigned long long)seed);
    else
        snprintf(name, sizeof name, "random:%.*s:%d:%s:%llu", name_len, spec, cfg.n_layers, pb_ggml_type_name(type),
                 (unsigned long long)seed);
    random_source *s = pb_weight_source_alloc(out, sizeof *s, &random_ops, name);
    if (!s)
        return PB_ERR_OOM;
    pb_status status = random_init(s, spec, type, seed);
    if (status != PB_OK) {
        random_free(&s->base);
        return status;
    }
    *out = &s->base;
    return PB_OK;
}
