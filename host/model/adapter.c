/* LoRA adapters merged at load (adapter.h). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/gguf.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "model/adapter.h"
#include "model/arch.h"
#include "util/internal.h"

#define PEFT_PREFIX "base_model.model."

typedef struct lora {
    char *path;
    pb_safetensors *st; /* a PEFT folder's tensors, or */
    pb_gguf *gguf;      /* llama.cpp's GGUF LoRA */
    float user_scale;
    double alpha;        /* lora_alpha; GGUF: adapter.lora.alpha, 0 meaning none */
    int r;               /* PEFT: the config's rank; GGUF: each pair's own */
    int rslora;          /* PEFT use_rslora: alpha / sqrt(r) */
    int permuted;        /* GGUF of a family whose converter interleaves Q/K rows (of B) */
    unsigned char *used; /* (tensors) */
} lora;

/* One LoRA factor, row-major (rows, cols), in either file. */
typedef struct lora_tensor {
    int64_t rows, cols;
    const pb_st_tensor *st;
    const pb_gguf_tensor *g;
} lora_tensor;

typedef struct adapter_source {
    pb_weight_source base;
    pb_weight_source *inner;
    lora *loras;
    int n;
    unsigned char *adapted; /* (canonical list) 1 where some adapter targets the matrix */
} adapter_source;

/* ---- PEFT: adapter_config.json ---------------------------------------------- */

/* PB_ERR_UNSUPPORTED when the config sets an option the merge does not
 * implement to anything but its off value. */
static pb_status refuse_options(const lora *l, json_t *cfg) {
    static const char *const lists[] = {"rank_pattern",        "alpha_pattern",           "modules_to_save",
                                        "layers_to_transform", "layers_pattern",          "layer_replication",
                                        "target_parameters",   "trainable_token_indices", "alora_invocation_tokens"};
    static const char *const flags[] = {"use_dora", "lora_bias", "use_qalora", "use_bdlora"};
    for (size_t i = 0; i < sizeof flags / sizeof flags[0]; i++)
        if (json_is_true(json_object_get(cfg, flags[i])))
            return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: %s is not supported, only plain LoRA", l->path, flags[i]);
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        json_t *v = json_object_get(cfg, lists[i]);
        int empty = !v || json_is_null(v) || (json_is_object(v) && json_object_size(v) == 0) ||
                    (json_is_array(v) && json_array_size(v) == 0);
        if (!empty)
            return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: %s is not supported (it must be empty or null)", l->path,
                           lists[i]);
    }
    json_t *v = json_object_get(cfg, "bias");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "none") == 0))
        return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: bias \"%s\" is not supported, only \"none\"", l->path,
                       json_is_string(v) ? json_string_value(v) : "(not a string)");
    return PB_OK;
}

static pb_status read_config(lora *l) {
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
        l->alpha = json_number_value(alpha);
        l->rslora = json_is_true(json_object_get(cfg, "use_rslora"));
    }
    json_decref(cfg);
    return status;
}

/* ---- llama.cpp's GGUF LoRA -------------------------------------------------- */

/* out (size) = the string value of key, NUL-terminated (cut to fit). */
static pb_status gguf_string(const lora *l, const char *key, char *out, size_t size) {
    const char *data;
    size_t len;
    if (pb_gguf_get_string(l->gguf, key, &data, &len) != PB_OK)
        return pb_fail(PB_ERR_FORMAT, "adapter %s: no %s: not a GGUF LoRA adapter", l->path, key);
    snprintf(out, size, "%.*s", (int)(len < size ? len : size - 1), data);
    return PB_OK;
}

/* adapter.type "lora", written for cfg's family. */
static pb_status read_gguf_header(lora *l, const pb_model_config *cfg) {
    char type[64], arch[64];
    PB_TRY(gguf_string(l, "adapter.type", type, sizeof type));
    if (strcmp(type, "lora") != 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "adapter %s: adapter.type is \"%s\", only \"lora\" is supported", l->path,
                       type);
    PB_TRY(gguf_string(l, "general.architecture", arch, sizeof arch));
    if (strcmp(arch, cfg->arch) != 0)
        return pb_fail(PB_ERR_FORMAT, "adapter %s: written for a %s model, this one is %s", l->path, arch, cfg->arch);
    l->alpha = 0.0;
    if (pb_gguf_has_key(l->gguf, "adapter.lora.alpha"))
        PB_TRY(pb_gguf_get_float(l->gguf, "adapter.lora.alpha", &l->alpha));
    l->permuted = pb_arch_find(cfg->arch)->gguf_permuted_qk;
    return PB_OK;
}

static pb_status lora_open(lora *l, const char *path, float user_scale, const pb_model_config *cfg) {
    if (!(l->path = strdup(path)))
        return pb_fail(PB_ERR_OOM, "adapter %s: out of memory", path);
    l->user_scale = user_scale;
    struct stat st;
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        PB_TRY(pb_gguf_open(&l->gguf, path));
        PB_TRY(read_gguf_header(l, cfg));
    } else {
        PB_TRY(read_config(l));
        char file[4200];
        snprintf(file, sizeof file, "%s/adapter_model.safetensors", path);
        PB_TRY(pb_safetensors_open(&l->st, file));
    }
    int64_t n = l->st ? pb_safetensors_count(l->st) : pb_gguf_tensor_count(l->gguf);
    l->used = calloc((size_t)n + 1, 1);
    return l->used ? PB_OK : pb_fail(PB_ERR_OOM, "adapter %s: out of memory", path);
}

static void lora_close(lora *l) {
    pb_safetensors_close(l->st);
    if (l->gguf)
        pb_gguf_close(l->gguf);
    free(l->used);
    free(l->path);
}

/* ---- the two factors of one matrix ---------------------------------------- */

static int64_t tensor_count(const lora *l) {
    return l->st ? pb_safetensors_count(l->st) : pb_gguf_tensor_count(l->gguf);
}

static const char *tensor_name(const lora *l, int64_t i) {
    return l->st ? pb_safetensors_at(l->st, i)->name : pb_gguf_tensor_at(l->gguf, i)->name;
}

/* *t for the file tensor `name` (rows 0 when absent or not a matrix). */
static void find_factor(const lora *l, const char *name, lora_tensor *t) {
    memset(t, 0, sizeof *t);
    if (l->st && (t->st = pb_safetensors_find(l->st, name)) && t->st->n_dims == 2) {
        t->rows = t->st->shape[0];
        t->cols = t->st->shape[1];
    } else if (l->gguf && (t->g = pb_gguf_find_tensor(l->gguf, name)) && t->g->n_dims == 2) {
        t->rows = t->g->ne[1];
        t->cols = t->g->ne[0];
    }
}

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

/* l's A and B for the canonical matrix `name` (both rows 0 when l has
 * neither): PEFT names them by the Hugging Face module, GGUF by the
 * canonical name. The embeddings are never targets. */
static pb_status lora_pair(const lora *l, const pb_model_config *cfg, const char *name, lora_tensor *a,
                           lora_tensor *b) {
    char module[256], key[320];
    memset(a, 0, sizeof *a);
    memset(b, 0, sizeof *b);
    if (strcmp(name, "token_embd.weight") == 0 || strcmp(name, "position_embd.weight") == 0)
        return PB_OK;
    if (l->st && !module_of(cfg, name, module, sizeof module))
        return PB_OK;
    snprintf(key, sizeof key, l->st ? PEFT_PREFIX "%s.lora_A.weight" : "%s.lora_a", l->st ? module : name);
    find_factor(l, key, a);
    snprintf(key, sizeof key, l->st ? PEFT_PREFIX "%s.lora_B.weight" : "%s.lora_b", l->st ? module : name);
    find_factor(l, key, b);
    if ((a->st || a->g) != (b->st || b->g))
        return pb_fail(PB_ERR_FORMAT, "adapter %s: %s has lora %s but not lora %s", l->path, l->st ? module : name,
                       a->st || a->g ? "A" : "B", a->st || a->g ? "B" : "A");
    return PB_OK;
}

/* out (t->rows * t->cols) = the factor as f32. */
static pb_status factor_f32(const lora *l, const lora_tensor *t, float *out) {
    if (t->st) {
        pb_st_tensor_to_f32(t->st, out);
        return PB_OK;
    }
    pb_status status = pb_dequantize(out, t->g->data, t->g->type, t->g->n_elements);
    return status == PB_OK ? PB_OK : pb_fail_context(status, "adapter %s: tensor '%s'", l->path, t->g->name);
}

/* The factor of W += scale * B @ A: the user's times alpha / r (rsLoRA:
 * alpha / sqrt(r)); llama.cpp's GGUF without alpha: the user's alone. */
static double pair_scale(const lora *l, int64_t r) {
    if (l->gguf)
        return l->alpha != 0.0 ? l->user_scale * l->alpha / (double)r : l->user_scale;
    return l->user_scale * l->alpha / (l->rslora ? sqrt((double)r) : (double)r);
}

/* ---- targets ---------------------------------------------------------------- */

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

static void mark_used(lora *l, const lora_tensor *t) {
    for (int64_t i = 0, n = tensor_count(l); i < n; i++)
        if ((t->st && pb_safetensors_at(l->st, i) == t->st) || (t->g && pb_gguf_tensor_at(l->gguf, i) == t->g))
            l->used[i] = 1;
}

/* Checks l's pair for the canonical matrix `name` of the base, if any. */
static pb_status check_target(adapter_source *s, lora *l, int index, const char *name) {
    lora_tensor a, b;
    PB_TRY(lora_pair(l, &s->base.cfg, name, &a, &b));
    if (!a.st && !a.g)
        return PB_OK;
    pb_tensor_info info;
    PB_TRY(pb_weight_source_find(s->inner, name, &info));
    int64_t rows, cols, r = a.rows;
    linear_shape(&info, &rows, &cols);
    if (info.n_dims != 2 || r < 1 || (l->st && r != l->r) || a.cols != cols || b.rows != rows || b.cols != r)
        return pb_fail(PB_ERR_FORMAT,
                       "adapter %s: %s: lora A is (%lld, %lld) and lora B (%lld, %lld) as (rows, cols), but the "
                       "model's '%s' is (%lld, %lld) as (out, in) and r is %d",
                       l->path, name, (long long)a.rows, (long long)a.cols, (long long)b.rows, (long long)b.cols,
                       info.file_name, (long long)rows, (long long)cols, l->st ? l->r : (int)a.rows);
    mark_used(l, &a);
    mark_used(l, &b);
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
        for (int64_t i = 0, n = tensor_count(&s->loras[l]); i < n; i++)
            if (!s->loras[l].used[i])
                return pb_fail(PB_ERR_FORMAT,
                               "adapter %s: tensor '%s' targets no weight matrix of this model (%s; an embedding "
                               "or a tied unembedding cannot be adapted)",
                               s->loras[l].path, tensor_name(&s->loras[l], i), cfg->arch);
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

/* b (rows, r) in Hugging Face row order: a GGUF LoRA of a permuting
 * family interleaves the Q/K rows of B as its base's. */
static pb_status unpermute_b(const lora *l, const pb_model_config *c, const char *name, float *b, int64_t rows,
                             int64_t r) {
    const char *dot = strrchr(name, '.');
    int heads = 0;
    if (!l->permuted || !dot)
        return PB_OK;
    if (dot - name >= 7 && strncmp(dot - 7, ".attn_q", 7) == 0)
        heads = c->n_heads;
    else if (dot - name >= 7 && strncmp(dot - 7, ".attn_k", 7) == 0)
        heads = c->n_kv_heads;
    return heads ? pb_gguf_unpermute_heads(b, heads, (int)(rows / heads), r) : PB_OK;
}

/* delta (rows, cols) = scale * B @ A for the canonical matrix `name`. */
static pb_status pair_delta(const lora *l, const pb_model_config *c, const char *name, const lora_tensor *ta,
                            const lora_tensor *tb, float *delta) {
    int64_t rows = tb->rows, cols = ta->cols, r = ta->rows;
    float *a = malloc(sizeof(float) * (size_t)(r * cols)), *b = malloc(sizeof(float) * (size_t)(rows * r));
    pb_status status = a && b ? PB_OK : pb_fail(PB_ERR_OOM, "adapter %s: out of memory", l->path);
    if (status == PB_OK)
        status = factor_f32(l, ta, a);
    if (status == PB_OK)
        status = factor_f32(l, tb, b);
    if (status == PB_OK)
        status = unpermute_b(l, c, name, b, rows, r);
    double scale = pair_scale(l, r);
    if (status == PB_OK) {
#pragma omp parallel for schedule(static)
        for (int64_t i = 0; i < rows; i++)
            for (int64_t j = 0; j < cols; j++) {
                double acc = 0.0;
                for (int64_t k = 0; k < r; k++)
                    acc += (double)b[i * r + k] * a[k * cols + j];
                delta[i * cols + j] = (float)(scale * acc);
            }
    }
    free(a);
    free(b);
    return status;
}

/* out (the view of info) += the pair's delta, taken through the view's
 * rows of the merged whole (as a Linear weight). */
static pb_status add_delta(const lora *l, const pb_model_config *c, const pb_tensor_info *info, const lora_tensor *a,
                           const lora_tensor *b, float *out) {
    float *delta = malloc(sizeof(float) * (size_t)(b->rows * a->cols));
    float *view = pb_tensor_is_view(info) ? malloc(sizeof(float) * (size_t)info->n_elements) : delta;
    pb_status status = delta && view ? PB_OK : pb_fail(PB_ERR_OOM, "adapter %s: out of memory", l->path);
    if (status == PB_OK)
        status = pair_delta(l, c, info->name, a, b, delta);
    if (status == PB_OK && view != delta) {
        pb_tensor_info linear = *info;
        linear.transposed = 0;
        pb_tensor_part_extract(&linear, delta, view);
    }
    for (uint64_t i = 0; status == PB_OK && i < info->n_elements; i++)
        out[i] += view[i];
    if (view != delta)
        free(view);
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
    for (int l = 0; l < s->n; l++) {
        lora_tensor a, b;
        PB_TRY(lora_pair(&s->loras[l], &src->cfg, info->name, &a, &b));
        if (a.st || a.g)
            PB_TRY(add_delta(&s->loras[l], &src->cfg, &base, &a, &b, out));
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

int pb_adapter_source_targets(const pb_weight_source *src, const char *name) {
    return src && src->ops == &adapter_ops && is_adapted((const adapter_source *)src, name);
}

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
        status = lora_open(&s->loras[l], paths[l], scales ? scales[l] : 1.0f, &inner->cfg);
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
