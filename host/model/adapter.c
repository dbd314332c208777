/* LoRA adapters merged at load (adapter.h). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/safetensors.h"
#include "model/adapter.h"
#include "util/internal.h"

#define LORA_PREFIX "base_model.model."

typedef struct lora {
    char *path;
    pb_safetensors *st;
    double scale; /* user scale * lora_alpha / r (or / sqrt(r) with rsLoRA) */
    int r;
    unsigned char *used; /* (tensors of st) */
} lora;

typedef struct adapter_source {
    pb_weight_source base;
    pb_weight_source *inner;
    lora *loras;
    int n;
    unsigned char *adapted; /* (canonical list) 1 where some adapter targets the matrix */
} adapter_source;

/* ---- adapter_config.json ---------------------------------------------------- */

/* PB_ERR_UNSUPPORTED when the config sets an option the merge does not
 * implement to anything but its off value. */
static pb_status refuse_options(const lora *l, json_t *cfg) {
    static const char *const lists[] = {"rank_pattern",        "alpha_pattern",           "modules_to_save",
                                        "layers_to_transform", "layers_pattern",          "layer_replication",
                                        "target_parameters",   "trainable_token_indices", "alora_invocation_tokens"};
    static const char *const flags[] = {"use_dora", "lora_bias", "use_qalora", "use_bdlora"};
    json_t *v;
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (json_is_true(json_object_get(cfg, flags[i])))
            return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: %s is not supported, only plain LoRA", l->path, flags[i]);
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        v = json_object_get(cfg, lists[i]);
        int empty = !v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0) ||
                    (json_is_array(v) && json_array_size(v) == 0);
        if (!empty)
            return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: %s is not supported (it must be empty or null)", l->path,
                           lists[i]);
    }
    v = json_object_get(cfg, "bias");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "none") == 0))
        return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: bias \"%s\" is not supported, only \"none\"", l->path,
                       json_is_string(v) ? json_string_value(v) : "(not a string)");
    return PB_OK;
}

static pb_status read_config(lora *l, float user_scale) {
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_config.json", l->path);
    json_error_t err;
    json_t *cfg = json_load_file(path, 0, &err);
    if (!cfg)
        return pb_fail(PB_ERR_FORMAT, "adapter %s: %s (line %d)", path, err.text, err.line);
    pb_status status = PB_OK;
    json_t *type = json_object_get(cfg, "peft_type"), *r = json_object_get(cfg, "r");
    json_t *alpha = json_object_get(cfg, "lora_alpha");
    if (!json_is_string(type) || strcmp(json_string_value(type), "LORA") != 0)
        status = pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: peft_type is %s, only LORA is supported", path,
                         json_is_string(type) ? json_string_value(type) : "missing");
    else if (!json_is_integer(r) || json_integer_value(r) < 1 || !json_is_number(alpha))
        status = pb_fail(PB_ERR_FORMAT, "adapter %s: needs an integer r >= 1 and a number lora_alpha", path);
    else
        status = refuse_options(l, cfg);
    if (status == PB_OK) {
        l->r = (int)json_integer_value(r);
        double rank = json_is_true(json_object_get(cfg, "use_rslora")) ? sqrt((double)l->r) : (double)l->r;
        l->scale = (double)user_scale * json_number_value(alpha) / rank;
    }
    json_decref(cfg);
    return status;
}

static pb_status lora_open(lora *l, const char *folder, float user_scale) {
    if (!(l->path = strdup(folder)))
        return pb_fail(PB_ERR_OOM, "adapter %s: out of memory", folder);
    PB_TRY(read_config(l, user_scale));
    char path[4200];
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", folder);
    PB_TRY(pb_safetensors_open(&l->st, path));
    l->used = calloc((size_t)pb_safetensors_count(l->st) + 1, 1);
    return l->used ? PB_OK : pb_fail(PB_ERR_OOM, "adapter %s: out of memory", folder);
}

static void lora_close(lora *l) {
    pb_safetensors_close(l->st);
    free(l->used);
    free(l->path);
}

/* ---- targets ---------------------------------------------------------------- */

/* module (the Hugging Face name without ".weight") of a canonical matrix;
 * 0 when it is not one (a bias, a norm, a name the family lacks). */
static int module_of(const pb_model_config *cfg, const char *name, char *module, size_t size) {
    const pb_arch_tensor_name *entry;
    size_t n;
    if (pb_weight_hf_tensor(cfg, name, module, size, &entry) != PB_OK || (n = strlen(module)) < 7 ||
        strcmp(module + n - 7, ".weight") != 0)
        return 0;
    module[n - 7] = 0;
    return 1;
}

/* The pair of l for module (both NULL when l has neither). */
static pb_status lora_pair(const lora *l, const char *module, const pb_st_tensor **a, const pb_st_tensor **b) {
    char name[300];
    snprintf(name, sizeof name, "%s%s.lora_A.weight", LORA_PREFIX, module);
    *a = pb_safetensors_find(l->st, name);
    snprintf(name, sizeof name, "%s%s.lora_B.weight", LORA_PREFIX, module);
    *b = pb_safetensors_find(l->st, name);
    if ((*a == NULL) != (*b == NULL))
        return pb_fail(PB_ERR_FORMAT, "adapter %s: %s has lora_%s but not lora_%s", l->path, module, *a ? "A" : "B",
                       *a ? "B" : "A");
    return PB_OK;
}

/* (rows, cols) of the whole matrix the tensor is (part of), as a Linear
 * weight (out, in). */
static void linear_shape(const pb_tensor_info *info, int64_t *rows, int64_t *cols) {
    if (!pb_tensor_is_view(info)) {
        *rows = info->shape[0];
        *cols = info->shape[1];
    } else {
        *rows = info->transposed ? info->file_shape[1] : info->file_shape[0];
        *cols = info->transposed ? info->file_shape[0] : info->file_shape[1];
    }
}

static void mark_used(lora *l, const pb_st_tensor *t) {
    for (int64_t i = 0, n = pb_safetensors_count(l->st); i < n; i++)
        if (pb_safetensors_at(l->st, i) == t)
            l->used[i] = 1;
}

/* Checks l's pair for the canonical matrix `name` of the base, if any. */
static pb_status check_target(adapter_source *s, lora *l, int index, const char *name) {
    char module[256];
    const pb_st_tensor *a, *b;
    if (!module_of(&s->base.cfg, name, module, sizeof module))
        return PB_OK;
    PB_TRY(lora_pair(l, module, &a, &b));
    if (!a)
        return PB_OK;
    pb_tensor_info info;
    PB_TRY(pb_weight_source_find(s->inner, name, &info));
    int64_t rows, cols;
    linear_shape(&info, &rows, &cols);
    if (info.n_dims != 2 || a->n_dims != 2 || b->n_dims != 2 || a->shape[0] != l->r || a->shape[1] != cols ||
        b->shape[0] != rows || b->shape[1] != l->r)
        return pb_fail(PB_ERR_FORMAT,
                       "adapter %s: %s: lora_A is (%lld, %lld) and lora_B (%lld, %lld), but the model's %s is "
                       "(%lld, %lld) as (out, in) and r is %d: it needs A (%d, %lld) and B (%lld, %d)",
                       l->path, module, (long long)a->shape[0], (long long)(a->n_dims > 1 ? a->shape[1] : 0),
                       (long long)b->shape[0], (long long)(b->n_dims > 1 ? b->shape[1] : 0), info.file_name,
                       (long long)rows, (long long)cols, l->r, l->r, (long long)cols, (long long)rows, l->r);
    mark_used(l, a);
    mark_used(l, b);
    s->adapted[index] = 1;
    return PB_OK;
}

/* Every canonical matrix against every adapter; then every adapter tensor
 * must have found its matrix. */
static pb_status check_targets(adapter_source *s) {
    const pb_model_config *cfg = &s->base.cfg;
    for (int l = 0; l < s->n; l++) {
        for (int i = 0, n = pb_weight_list_count(cfg); i < n; i++) {
            pb_tensor_info info;
            pb_weight_list_at(cfg, i, &info);
            PB_TRY(check_target(s, &s->loras[l], i, info.name));
        }
        for (int64_t i = 0, n = pb_safetensors_count(s->loras[l].st); i < n; i++)
            if (!s->loras[l].used[i])
                return pb_fail(PB_ERR_FORMAT,
                               "adapter %s: tensor '%s' targets no weight matrix of this model (%s; a tied "
                               "unembedding or an embedding cannot be adapted)",
                               s->loras[l].path, pb_safetensors_at(s->loras[l].st, i)->name, cfg->arch);
    }
    return PB_OK;
}

/* ---- the source ------------------------------------------------------------- */

static int is_adapted(const adapter_source *s, const char *name) {
    int i = pb_weight_list_find(&s->base.cfg, name);
    return i >= 0 && s->adapted[i];
}

static pb_status ad_find(const pb_weight_source *src, const char *name, pb_tensor_info *info, int *found) {
    const adapter_source *s = (const adapter_source *)src;
    PB_TRY(s->inner->ops->find(s->inner, name, info, found));
    if (*found && is_adapted(s, name)) { /* merged: read as f32, never as stored */
        info->type = PB_WEIGHT_TYPE_F32;
        info->n_bytes = info->n_elements * sizeof(float);
    }
    return PB_OK;
}

/* out (the view of info) += scale * (B @ A), the whole product taken
 * through the view's rows. */
static pb_status add_delta(const lora *l, const pb_tensor_info *info, const pb_st_tensor *ta, const pb_st_tensor *tb,
                           float *out) {
    int64_t rows, cols, r = l->r;
    linear_shape(info, &rows, &cols);
    float *a = malloc(sizeof(float) * (size_t)(r * cols)), *b = malloc(sizeof(float) * (size_t)(rows * r));
    float *delta = malloc(sizeof(float) * (size_t)(rows * cols));
    float *view = pb_tensor_is_view(info) ? malloc(sizeof(float) * (size_t)info->n_elements) : delta;
    pb_status status = a && b && delta && view ? PB_OK : pb_fail(PB_ERR_OOM, "adapter %s: out of memory", l->path);
    if (status == PB_OK) {
        pb_st_tensor_to_f32(ta, a);
        pb_st_tensor_to_f32(tb, b);
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) {
                double acc = 0.0;
                for (int64_t k = 0; k < r; k++)
                    acc += (double)b[i * r + k] * a[k * cols + j];
                delta[i * cols + j] = (float)(l->scale * acc);
            }
        if (view != delta) { /* rows of the merged whole, as a Linear weight */
            pb_tensor_info linear = *info;
            linear.transposed = 0;
            pb_tensor_part_extract(&linear, delta, view);
        }
        for (uint64_t i = 0; i < info->n_elements; i++)
            out[i] += view[i];
    }
    if (view != delta)
        free(view);
    free(a);
    free(b);
    free(delta);
    return status;
}

static pb_status ad_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out) {
    const adapter_source *s = (const adapter_source *)src;
    if (!is_adapted(s, info->name))
        return s->inner->ops->read_f32(s->inner, info, out);
    pb_tensor_info base;
    PB_TRY(pb_weight_source_find(s->inner, info->name, &base));
    PB_TRY(s->inner->ops->read_f32(s->inner, &base, out));
    char module[256];
    module_of(&src->cfg, info->name, module, sizeof module);
    for (int l = 0; l < s->n; l++) {
        const pb_st_tensor *a, *b;
        PB_TRY(lora_pair(&s->loras[l], module, &a, &b));
        if (a)
            PB_TRY(add_delta(&s->loras[l], &base, a, b, out));
    }
    return PB_OK;
}

static pb_status ad_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data, uint64_t *n_bytes) {
    const adapter_source *s = (const adapter_source *)src;
    if (is_adapted(s, info->name))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: '%s' is merged with an adapter; its stored bytes are not its weights",
                       src->path, info->file_name);
    return s->inner->ops->raw(s->inner, info, data, n_bytes);
}

static void ad_free(pb_weight_source *src) {
    adapter_source *s = (adapter_source *)src;
    for (int l = 0; l < s->n; l++)
        lora_close(&s->loras[l]);
    free(s->loras);
    free(s->adapted);
    pb_weight_source_free(s->inner);
    pb_weight_source_release(src);
}

static const pb_weight_source_ops adapter_ops = {
    .find = ad_find, .read_f32 = ad_read_f32, .raw = ad_raw, .free = ad_free};

pb_status pb_adapter_source_wrap(pb_weight_source **src, const char *const *paths, const float *scales, int n) {
    if (!src || !*src || n < 1 || !paths)
        return pb_fail(PB_ERR_ARG, "pb_adapter_source_wrap: a source and at least one adapter are required");
    pb_weight_source *inner = *src, *out = NULL;
    adapter_source *s = pb_weight_source_alloc(&out, sizeof *s, &adapter_ops, inner->path);
    if (!s)
        return PB_ERR_OOM;
    s->base.cfg = inner->cfg;
    s->base.gguf = inner->gguf;
    s->base.folder = inner->folder;
    s->base.no_raw = 1;
    s->loras = calloc((size_t)n, sizeof *s->loras);
    s->adapted = calloc((size_t)pb_weight_list_count(&inner->cfg) + 1, 1);
    pb_status status = s->loras && s->adapted ? PB_OK : pb_fail(PB_ERR_OOM, "out of memory opening adapters");
    s->inner = inner;
    for (int l = 0; status == PB_OK && l < n; l++) {
        s->n = l + 1;
        status = lora_open(&s->loras[l], paths[l], scales ? scales[l] : 1.0f);
    }
    if (status == PB_OK)
        status = check_targets(s);
    if (status != PB_OK) {
        s->inner = NULL; /* stays the caller's */
        ad_free(&s->base);
        return status;
    }
    *src = &s->base;
    return PB_OK;
}
