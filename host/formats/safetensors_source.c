/* The Hugging Face weight source: a folder's config.json for the
 * hyperparameters and its safetensors files for the tensors, found under
 * the Hugging Face names of the canonical ones (model/weight_source.c), in
 * the layout of a causal LM or of a multimodal checkpoint's text tower;
 * norm weights offset as the family's descriptor says (model/arch.h). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "formats/hf_config.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "model/arch.h"
#include "model/model.h"
#include "model/weight_source.h"
#include "util/internal.h"

typedef struct safetensors_source {
    pb_weight_source base;
    pb_safetensors *st;
    float norm_offset; /* added to every norm weight (Gemma stores w and multiplies by 1 + w) */
    const char *body;  /* what the files write for "model." (the text tower of a multimodal checkpoint) */
    const char *head;  /* prefix of "lm_head.weight" */
} safetensors_source;

/* Where a checkpoint keeps its text model: "model." in a causal LM;
 * "model.language_model." (transformers 5) or "language_model.model."
 * (earlier releases) in Gemma3ForConditionalGeneration, whose text tower is
 * all that is loaded. */
static const struct {
    const char *body, *head;
} layouts[] = {
    {"model.", ""},
    {"model.language_model.", ""},
    {"language_model.model.", "language_model."},
};

/* The layout whose embedding table the files hold (the first when none). */
static void choose_layout(safetensors_source *s) {
    char name[128];
    for (size_t i = sizeof layouts / sizeof layouts[0]; i-- > 0;) {
        s->body = layouts[i].body;
        s->head = layouts[i].head;
        snprintf(name, sizeof name, "%sembed_tokens.weight", s->body);
        if (pb_safetensors_find(s->st, name))
            return;
    }
}

/* name (a text model's Hugging Face name) as this checkpoint writes it. */
static void apply_layout(const safetensors_source *s, char *name, size_t size) {
    char text[128];
    snprintf(text, sizeof text, "%s", name);
    if (strncmp(text, "model.", 6) == 0)
        snprintf(name, size, "%s%s", s->body, text + 6);
    else
        snprintf(name, size, "%s%s", s->head, text);
}

/* The ggml type id of a safetensors dtype. */
static pb_weight_type weight_type(pb_dtype dtype) {
    return dtype == PB_DTYPE_F16 ? PB_GGML_F16 : dtype == PB_DTYPE_BF16 ? PB_GGML_BF16 : PB_GGML_F32;
}

/* The tensor under file_name, or, in a checkpoint of the base model alone
 * (GPT-2's "wte.weight" for "transformer.wte.weight"), under file_name
 * without the family's base prefix (then file_name is rewritten). */
static const pb_st_tensor *st_lookup(const safetensors_source *s, char *file_name) {
    const pb_st_tensor *t = pb_safetensors_find(s->st, file_name);
    const char *base = pb_arch_find(s->base.cfg.arch)->hf_base_prefix;
    size_t len = base ? strlen(base) : 0;
    if (t || !base || strncmp(file_name, base, len) != 0 || !(t = pb_safetensors_find(s->st, file_name + len)))
        return t;
    memmove(file_name, file_name + len, strlen(file_name + len) + 1);
    return t;
}

static pb_status st_find(const pb_weight_source *src, const char *name, pb_tensor_info *info, int *found) {
    const safetensors_source *s = (const safetensors_source *)src;
    memset(info, 0, sizeof *info);
    snprintf(info->name, sizeof info->name, "%s", name);
    info->index = -1;
    *found = 0;
    const pb_arch_tensor_name *entry;
    if (pb_weight_hf_tensor(&src->cfg, name, info->file_name, sizeof info->file_name, &entry) != PB_OK) {
        /* a GGUF-only tensor (rope_freqs.weight) is absent, not an error */
        if (strcmp(name, "rope_freqs.weight") == 0)
            return PB_OK;
        return pb_fail_context(PB_ERR_ARG, "%s", src->path);
    }
    apply_layout(s, info->file_name, sizeof info->file_name);
    const pb_st_tensor *t = st_lookup(s, info->file_name);
    *found = t != NULL;
    if (!t)
        return PB_OK;
    info->n_dims = t->n_dims;
    for (int i = 0; i < 4; i++)
        info->shape[i] = i < t->n_dims ? t->shape[i] : 1;
    info->type = weight_type(t->dtype);
    info->n_elements = t->n_elements;
    info->n_bytes = t->n_bytes;
    info->handle = t;
    if (entry->split == PB_SPLIT_NONE && !entry->transposed)
        return PB_OK;
    return pb_tensor_part_set(&src->cfg, src->path, info, entry->split, entry->part, entry->transposed);
}

/* The values as the model multiplies by them: Gemma's norm weights get
 * their 1 added in fp32 after widening, as transformers' (1.0 +
 * weight.float()) does. */
static pb_status st_read_f32(const pb_weight_source *src, const pb_tensor_info *info, float *out) {
    const safetensors_source *s = (const safetensors_source *)src;
    if (pb_tensor_is_view(info)) {
        const pb_st_tensor *t = info->handle;
        float *whole = malloc(sizeof(float) * (size_t)t->n_elements);
        if (!whole)
            return pb_fail(PB_ERR_OOM, "%s: out of memory reading tensor '%s'", src->path, info->file_name);
        pb_st_tensor_to_f32(t, whole);
        pb_tensor_part_extract(info, whole, out);
        free(whole);
    } else {
        pb_st_tensor_to_f32(info->handle, out);
    }
    if (s->norm_offset != 0.0f && pb_arch_is_norm(info->name))
        for (uint64_t i = 0; i < info->n_elements; i++)
            out[i] += s->norm_offset;
    return PB_OK;
}

static pb_status st_raw(const pb_weight_source *src, const pb_tensor_info *info, const void **data, uint64_t *n_bytes) {
    const pb_st_tensor *t = info->handle;
    *data = t->data;
    *n_bytes = t->n_bytes;
    return PB_OK;
}

static void st_free(pb_weight_source *src) {
    pb_safetensors_close(((safetensors_source *)src)->st);
    pb_weight_source_release(src);
}

static const pb_weight_source_ops safetensors_ops = {st_find, st_read_f32, st_raw, st_free};

pb_status pb_safetensors_source_open(pb_weight_source **out, const char *folder) {
    safetensors_source *s = pb_weight_source_alloc(out, sizeof *s, &safetensors_ops, folder);
    if (!s)
        return PB_ERR_OOM;
    s->base.folder = s->base.path;
    char file[4096];
    snprintf(file, sizeof file, "%s/config.json", folder);
    pb_status status = pb_hf_config_read(&s->base.cfg, file);
    if (status == PB_OK && (status = pb_model_config_validate(&s->base.cfg)) != PB_OK)
        pb_fail_context(status, "%s", file);
    if (status == PB_OK)
        status = pb_safetensors_open(&s->st, folder);
    if (status != PB_OK) {
        st_free(&s->base);
        return status;
    }
    s->norm_offset = pb_arch_find(s->base.cfg.arch)->hf_norm_offset;
    choose_layout(s);
    *out = &s->base;
    return PB_OK;
}
