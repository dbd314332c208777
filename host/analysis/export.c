/* Export of the direction-ablated model (pb_export_ablated): every tensor
 * that writes into the residual stream gets the unit direction u projected
 * out, every other tensor is carried over, and the files go out in the
 * source's format: a GGUF file with every key kept, or a Hugging Face
 * folder (model.safetensors, config.json, the tokenizer files). Tensors
 * stream through one at a time; the outputs appear together at the end
 * (pb_file_set) or not at all. */
#include <dirent.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats/dtype.h"
#include "formats/gguf.h"
#include "formats/gguf_write.h"
#include "formats/quant.h"
#include "formats/safetensors.h"
#include "formats/safetensors_write.h"
#include "model/adapter.h"
#include "model/arch.h"
#include "model/weight_source.h"
#include "util/internal.h"
#include "util/outdir.h"

/* Why an adapter on a fused or transposed tensor is refused. */
#define MERGED_RULE "merged adapters export only where each matrix is a plain tensor of its own"

/* How a tensor writes into the residual stream, in its stored row-major
 * layout. */
typedef enum {
    ROLE_KEEP = 0,
    ROLE_ROWS,   /* (rows, d_model): each row loses its component along u (embeddings, biases, a
                    transposed output matrix) */
    ROLE_COLUMNS /* (d_model, cols): W <- (I - u u^T) W (attention-output and MLP-down matrices) */
} tensor_role;

typedef struct {
    const pb_export_options *o;
    const pb_weight_source *src;
    const double *u; /* (d_model) unit */
    int d;
    pb_export_summary sum;
    int64_t total; /* tensors to write */
} exporter;

/* ---- the projection ------------------------------------------------------ */

/* x (rows, d): every row minus its component along u. */
static void project_rows(float *x, int64_t rows, int d, const double *u) {
    for (int64_t r = 0; r < rows; r++) {
        float *row = x + r * d;
        double dot = 0;
        for (int i = 0; i < d; i++)
            dot += (double)row[i] * u[i];
        for (int i = 0; i < d; i++)
            row[i] = (float)(row[i] - dot * u[i]);
    }
}

/* w (d, cols): every column minus its component along u. */
static pb_status project_columns(float *w, int d, int64_t cols, const double *u) {
    double *dot = calloc((size_t)cols, sizeof *dot); /* (cols) u^T W */
    if (!dot)
        return pb_fail(PB_ERR_OOM, "export: out of memory");
    for (int i = 0; i < d; i++)
        for (int64_t c = 0; c < cols; c++)
            dot[c] += u[i] * w[(int64_t)i * cols + c];
    for (int i = 0; i < d; i++)
        for (int64_t c = 0; c < cols; c++)
            w[(int64_t)i * cols + c] = (float)(w[(int64_t)i * cols + c] - u[i] * dot[c]);
    free(dot);
    return PB_OK;
}

/* Applies role to x, a tensor of n elements whose rows (row-major) are
 * `row` long; name for messages. */
static pb_status project(const exporter *e, tensor_role role, const char *name, float *x, uint64_t n, int64_t row) {
    if (role == ROLE_ROWS) {
        if (row != e->d)
            return pb_fail(PB_ERR_FORMAT, "export: %s has rows of %lld, not d_model %d", name, (long long)row, e->d);
        project_rows(x, (int64_t)(n / (uint64_t)row), e->d, e->u);
    } else if (role == ROLE_COLUMNS) {
        if (n / (uint64_t)row != (uint64_t)e->d)
            return pb_fail(PB_ERR_FORMAT, "export: %s has %llu rows, not d_model %d", name,
                           (unsigned long long)(n / (uint64_t)row), e->d);
        PB_TRY(project_columns(x, e->d, row, e->u));
    }
    return PB_OK;
}

/* ---- shared steps ---------------------------------------------------------- */

static pb_status check_direction(const float *direction, int d_model, const pb_model_config *cfg, double *u) {
    if (d_model != cfg->d_model)
        return pb_fail(PB_ERR_ARG, "export: the direction has %d values; the model's d_model is %d", d_model,
                       cfg->d_model);
    double norm2 = 0;
    for (int i = 0; i < d_model; i++) {
        if (!isfinite(direction[i]))
            return pb_fail(PB_ERR_NUMERIC, "export: the direction's value %d is not finite", i);
        norm2 += (double)direction[i] * direction[i];
    }
    if (!(norm2 > 0))
        return pb_fail(PB_ERR_ARG, "export: the direction is zero");
    for (int i = 0; i < d_model; i++)
        u[i] = direction[i] / sqrt(norm2);
    return PB_OK;
}

/* Families whose blocks pass their output through a norm before the
 * residual add: (I - u u^T) W does not survive the norm. */
static pb_status check_family(const pb_model_config *cfg) {
    const pb_arch *arch = pb_arch_find(cfg->arch);
    if (!arch)
        return pb_arch_refuse("export", cfg->arch);
    if (arch->sandwich_norm || arch->no_pre_norm)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "export: %s normalises each block's output before adding it to the residual stream "
                       "(post-attention and post-MLP norms), so projecting the direction out of the weights does "
                       "not take it out of the residual stream; weight abliteration is refused for gemma2, gemma3 "
                       "and olmo2 (ablate at run time instead: --ablate-direction)",
                       cfg->arch);
    return PB_OK;
}

static pb_status check_stop(const exporter *e) {
    if (e->o->stop && *e->o->stop)
        return pb_fail(PB_ERR_INTERRUPTED, "export: interrupted; nothing was written");
    return PB_OK;
}

static void tensor_done(exporter *e, uint64_t n_bytes, int edited) {
    e->sum.n_tensors++;
    e->sum.n_edited += edited;
    e->sum.n_bytes += n_bytes;
    if (e->o->progress)
        e->o->progress(e->sum.n_tensors, e->total, e->o->progress_user);
}

static pb_status open_pending(pb_file_set *set, const char *name, FILE **f) {
    char path[4352];
    PB_TRY(pb_file_set_pending(set, name, path, sizeof path));
    *f = fopen(path, "wb");
    if (!*f)
        return pb_fail(PB_ERR_IO, "export: cannot create %s", path);
    return PB_OK;
}

static pb_status close_pending(FILE *f, pb_status status) {
    if (fclose(f) != 0 && status == PB_OK)
        return pb_fail(PB_ERR_IO, "export: write failed on close (disk full?)");
    return status;
}

/* x (n floats) = canonical tensor `name` as the source hands it out (an
 * adapter's merge included), in Hugging Face row order; its info to info. */
static pb_status read_merged(const exporter *e, const char *name, float *x, uint64_t n, pb_tensor_info *info) {
    PB_TRY(pb_weight_source_find(e->src, name, info));
    if (info->n_elements != n)
        return pb_fail(PB_ERR_FORMAT, "export: %s holds %llu values, its file tensor %llu", name,
                       (unsigned long long)info->n_elements, (unsigned long long)n);
    return pb_weight_source_read_f32(e->src, info, x);
}

/* ---- GGUF ------------------------------------------------------------------ */

static tensor_role gguf_role(const char *name) {
    if (strcmp(name, "token_embd.weight") == 0 || strcmp(name, "position_embd.weight") == 0)
        return ROLE_ROWS;
    int layer, end = 0;
    char rest[64];
    if (sscanf(name, "blk.%d.%63s%n", &layer, rest, &end) != 2 || name[end] != '\0')
        return ROLE_KEEP;
    if (strcmp(rest, "attn_output.weight") == 0 || strcmp(rest, "ffn_down.weight") == 0)
        return ROLE_COLUMNS;
    if (strcmp(rest, "attn_output.bias") == 0 || strcmp(rest, "ffn_down.bias") == 0)
        return ROLE_ROWS;
    return ROLE_KEEP;
}

/* The exported type of a tensor: vectors F32, matrices the chosen dtype
 * (Q8_0 where the rows are whole blocks, else F16). */
static uint32_t gguf_out_type(pb_dtype dtype, const pb_gguf_tensor *t) {
    if (t->n_dims == 1)
        return PB_GGML_F32;
    if (dtype == PB_DTYPE_Q8_0)
        return t->ne[0] % 32 == 0 ? PB_GGML_Q8_0 : PB_GGML_F16;
    return pb_dtype_ggml(dtype);
}

static uint32_t gguf_file_type(pb_dtype dtype) {
    switch (dtype) {
    case PB_DTYPE_F16: return 1;   /* MOSTLY_F16 */
    case PB_DTYPE_Q8_0: return 7;  /* MOSTLY_Q8_0 */
    case PB_DTYPE_BF16: return 32; /* MOSTLY_BF16 */
    default: return 0;             /* ALL_F32 */
    }
}

/* out (n_elements of type) = x encoded. */
static pb_status encode(uint32_t type, void *out, const float *x, uint64_t n, const char *name) {
    if (type == PB_GGML_F32) {
        memcpy(out, x, n * sizeof *x);
        return PB_OK;
    }
    if (type == PB_GGML_Q8_0) {
        for (uint64_t i = 0; i < n; i++)
            if (!isfinite(x[i]))
                return pb_fail(PB_ERR_NUMERIC, "export: %s holds a value that is not finite", name);
        pb_quantize_q8_0(out, x, n / 32);
        return PB_OK;
    }
    pb_dtype dtype;
    if (!pb_dtype_from_ggml(type, &dtype))
        return pb_fail(PB_ERR_UNSUPPORTED, "export: cannot encode %s as %s", name, pb_ggml_type_name(type));
    pb_dtype_from_f32(dtype, out, x, (size_t)n);
    return PB_OK;
}

/* x = tensor t's values in the file's row order: decoded, or (merged) the
 * source's merge of an adapter into it, its Q/K rows put back in llama.cpp's
 * interleaved order. */
static pb_status gguf_values(const exporter *e, const pb_gguf_tensor *t, int merged, float *x) {
    if (!merged)
        return pb_dequantize(x, t->data, t->type, t->n_elements);
    pb_tensor_info info;
    PB_TRY(read_merged(e, t->name, x, t->n_elements, &info));
    if (info.permuted_heads == 0)
        return PB_OK;
    int64_t rows = info.shape[0], cols = (int64_t)(t->n_elements / (uint64_t)rows);
    return pb_gguf_permute_heads(x, info.permuted_heads, (int)(rows / info.permuted_heads), cols);
}

/* Writes tensor t of the source as `type`, projected as its role says;
 * merged: an adapter's merge replaces the stored values. */
static pb_status gguf_tensor(exporter *e, pb_gguf_writer *w, FILE *f, const pb_gguf_tensor *t, uint32_t type,
                             tensor_role role, int merged) {
    PB_TRY(check_stop(e));
    uint64_t n_bytes = t->n_elements / pb_ggml_block_size(type) * pb_ggml_block_bytes(type);
    if (type == t->type && role == ROLE_KEEP && !merged) {
        PB_TRY(pb_gguf_writer_tensor(w, f, t->data, n_bytes));
        tensor_done(e, n_bytes, 0);
        return PB_OK;
    }
    if (!merged && !pb_ggml_type_dequantizable(t->type))
        return pb_fail(PB_ERR_UNSUPPORTED, "export: %s is stored as %s, which patchbay cannot decode", t->name,
                       pb_ggml_type_name(t->type));
    float *x = malloc(t->n_elements * sizeof *x);
    void *out = malloc(n_bytes ? n_bytes : 1);
    pb_status status = x && out ? PB_OK : pb_fail(PB_ERR_OOM, "export: out of memory for %s", t->name);
    if (status == PB_OK)
        status = gguf_values(e, t, merged, x);
    if (status == PB_OK)
        status = project(e, role, t->name, x, t->n_elements, t->ne[0]);
    if (status == PB_OK)
        status = encode(type, out, x, t->n_elements, t->name);
    if (status == PB_OK)
        status = pb_gguf_writer_tensor(w, f, out, n_bytes);
    free(x);
    free(out);
    if (status == PB_OK)
        tensor_done(e, n_bytes, role != ROLE_KEEP);
    return status;
}

/* Every matrix an adapter changed is a tensor of the file under its own
 * name (not a part of a fused one), so its merge can be written back. */
static pb_status gguf_check_merges(const exporter *e, const pb_gguf *g) {
    const pb_arch *arch = pb_arch_find(e->src->cfg.arch);
    for (int l = 0; l < e->src->cfg.n_layers; l++)
        for (int k = 0; arch->layer_names[k].canonical; k++) {
            char full[96];
            snprintf(full, sizeof full, "blk.%d.%s", l, arch->layer_names[k].canonical);
            if (pb_adapter_source_targets(e->src, full) && !pb_gguf_find_tensor(g, full))
                return pb_fail(PB_ERR_UNSUPPORTED,
                               "export: an adapter changes %s, which %s stores inside a fused "
                               "tensor; " MERGED_RULE,
                               full, e->src->path);
        }
    return PB_OK;
}

/* Plans the file: every key (general.file_type replaced), every tensor,
 * and output.weight after them when the source ties it. */
static pb_status gguf_plan(exporter *e, const pb_gguf *g, pb_gguf_writer *w, const pb_gguf_tensor **untied) {
    for (int64_t i = 0; i < pb_gguf_key_count(g); i++) {
        const char *key;
        size_t len;
        pb_gguf_value_type type;
        PB_TRY(pb_gguf_key_at(g, i, &key, &len, &type));
        if (len == strlen("general.file_type") && memcmp(key, "general.file_type", len) == 0)
            continue;
        PB_TRY(pb_gguf_writer_copy_key(w, g, i));
    }
    PB_TRY(pb_gguf_writer_set_u32(w, "general.file_type", gguf_file_type(e->o->dtype)));
    PB_TRY(gguf_check_merges(e, g));
    for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++) {
        const pb_gguf_tensor *t = pb_gguf_tensor_at(g, i);
        PB_TRY(pb_gguf_writer_add_tensor(w, t->name, (int)t->n_dims, t->ne, gguf_out_type(e->o->dtype, t)));
    }
    *untied = NULL;
    if (!pb_gguf_find_tensor(g, "output.weight")) {
        if (pb_arch_find(e->src->cfg.arch)->gguf_tied_always)
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "export: llama.cpp's %s reads its unembedding from token_embd and refuses an "
                           "output.weight, so a GGUF cannot keep the unembedding unedited while the embedding is "
                           "projected; export the Hugging Face checkpoint (safetensors) instead",
                           e->src->cfg.arch);
        *untied = pb_gguf_find_tensor(g, "token_embd.weight");
        if (!*untied)
            return pb_fail(PB_ERR_FORMAT, "export: %s has no token_embd.weight", e->src->path);
        PB_TRY(pb_gguf_writer_add_tensor(w, "output.weight", (int)(*untied)->n_dims, (*untied)->ne,
                                         gguf_out_type(e->o->dtype, *untied)));
    }
    e->total = pb_gguf_tensor_count(g) + (*untied != NULL);
    return PB_OK;
}

static pb_status gguf_write(exporter *e, pb_gguf_writer *w, FILE *f) {
    const pb_gguf *g = e->src->gguf;
    const pb_gguf_tensor *untied;
    PB_TRY(gguf_plan(e, g, w, &untied));
    PB_TRY(pb_gguf_writer_begin(w, f));
    for (int64_t i = 0; i < pb_gguf_tensor_count(g); i++) {
        const pb_gguf_tensor *t = pb_gguf_tensor_at(g, i);
        PB_TRY(gguf_tensor(e, w, f, t, gguf_out_type(e->o->dtype, t), gguf_role(t->name),
                           pb_adapter_source_targets(e->src, t->name)));
    }
    if (untied) {
        PB_TRY(gguf_tensor(e, w, f, untied, gguf_out_type(e->o->dtype, untied), ROLE_KEEP, 0));
        e->sum.untied = 1;
    }
    return pb_gguf_writer_end(w);
}

static pb_status export_gguf(exporter *e, const char *out_path) {
    char dir[4096];
    const char *slash = strrchr(out_path, '/');
    const char *name = slash ? slash + 1 : out_path;
    pb_path_folder(out_path, dir, sizeof dir);
    if (!*name)
        return pb_fail(PB_ERR_ARG, "export: GGUF output '%s' names a folder; give a file", out_path);
    PB_TRY(pb_out_file_check(out_path, e->o->overwrite));
    pb_gguf_writer *w;
    PB_TRY(pb_gguf_writer_create(&w, pb_gguf_alignment(e->src->gguf)));
    pb_file_set set;
    pb_status status = pb_file_set_begin(&set, dir);
    if (status != PB_OK) {
        pb_gguf_writer_free(w);
        return status;
    }
    FILE *f = NULL;
    status = open_pending(&set, name, &f);
    if (status == PB_OK)
        status = close_pending(f, gguf_write(e, w, f));
    pb_gguf_writer_free(w);
    if (status != PB_OK) {
        pb_error_saved saved;
        pb_error_save(&saved);
        pb_file_set_discard(&set);
        pb_error_restore(&saved);
        return status;
    }
    return pb_file_set_commit(&set);
}

/* ---- safetensors ------------------------------------------------------------- */

/* What happens to one of the folder's tensors: its role as a residual
 * writer, and the canonical tensor whose merged values (an adapter targets
 * it) replace the stored ones ("" for none). */
typedef struct {
    char file_name[128];
    tensor_role role;
    char merged[96];
} st_entry;

typedef struct {
    st_entry *entries;
    int n, cap;
    char embedding_name[128];      /* the token embedding's file name */
    char untied_name[128];         /* the unembedding to add when the source ties it; "" otherwise */
    const pb_st_tensor *embedding; /* the token embedding, when untied_name is set */
} st_plan;

static st_entry *st_entry_of(st_plan *p, const char *file_name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->entries[i].file_name, file_name) == 0)
            return &p->entries[i];
    if (p->n == p->cap)
        return NULL;
    st_entry *e = &p->entries[p->n++];
    snprintf(e->file_name, sizeof e->file_name, "%s", file_name);
    return e;
}

static const st_entry *st_find(const st_plan *p, const char *file_name) {
    for (int i = 0; i < p->n; i++)
        if (strcmp(p->entries[i].file_name, file_name) == 0)
            return &p->entries[i];
    return NULL;
}

/* Notes canonical tensor `full` (found in the source): a residual writer
 * (writer: 1 a vector or table, 2 a matrix) and/or merged with an adapter. */
static pb_status st_note(const pb_weight_source *src, const char *full, int writer, st_plan *p) {
    pb_tensor_info info;
    int found;
    PB_TRY(src->ops->find(src, full, &info, &found));
    if (!found)
        return PB_OK;
    int merged = pb_adapter_source_targets(src, full);
    if (info.part_groups > 0 && writer)
        return pb_fail(PB_ERR_UNSUPPORTED, "export: %s is part of the fused tensor %s and cannot be edited", full,
                       info.file_name);
    if (merged && (info.part_groups > 0 || info.transposed))
        return pb_fail(PB_ERR_UNSUPPORTED, "export: an adapter changes %s, stored %s %s; " MERGED_RULE, full,
                       info.part_groups > 0 ? "inside the fused tensor" : "transposed as", info.file_name);
    if (!writer && !merged)
        return PB_OK;
    st_entry *e = st_entry_of(p, info.file_name);
    if (!e)
        return pb_fail(PB_ERR_ARG, "export: too many tensors to plan");
    if (writer)
        e->role = writer == 2 && !info.transposed ? ROLE_COLUMNS : ROLE_ROWS;
    if (merged)
        snprintf(e->merged, sizeof e->merged, "%s", full);
    return PB_OK;
}

/* name of layer `layer` (-1: a global one) when the family has it. */
static pb_status st_note_named(const pb_weight_source *src, const char *name, int layer, int writer, st_plan *p) {
    const pb_arch *arch = pb_arch_find(src->cfg.arch);
    if (!(layer >= 0 ? pb_arch_hf_layer_name(arch, name) : pb_arch_hf_global_name(arch, name)))
        return PB_OK; /* the family has no such tensor (a position table in a RoPE family) */
    char full[96];
    if (layer >= 0)
        snprintf(full, sizeof full, "blk.%d.%s", layer, name);
    else
        snprintf(full, sizeof full, "%s", name);
    return st_note(src, full, writer, p);
}

static pb_status st_plan_build(const pb_weight_source *src, st_plan *p) {
    const pb_arch *arch = pb_arch_find(src->cfg.arch);
    int per_layer = 0;
    while (arch->layer_names[per_layer].canonical)
        per_layer++;
    p->cap = src->cfg.n_layers * (per_layer + 4) + 4;
    p->entries = calloc((size_t)p->cap, sizeof *p->entries);
    if (!p->entries)
        return pb_fail(PB_ERR_OOM, "export: out of memory");
    PB_TRY(st_note_named(src, "token_embd.weight", -1, 1, p));
    if (p->n == 1)
        snprintf(p->embedding_name, sizeof p->embedding_name, "%s", p->entries[0].file_name);
    PB_TRY(st_note_named(src, "position_embd.weight", -1, 1, p));
    for (int l = 0; l < src->cfg.n_layers; l++) {
        PB_TRY(st_note_named(src, "attn_output.weight", l, 2, p));
        PB_TRY(st_note_named(src, "attn_output.bias", l, 1, p));
        PB_TRY(st_note_named(src, "ffn_down.weight", l, 2, p));
        PB_TRY(st_note_named(src, "ffn_down.bias", l, 1, p));
        for (int k = 0; k < per_layer; k++) /* the matrices an adapter may have changed */
            PB_TRY(st_note_named(src, arch->layer_names[k].canonical, l, 0, p));
    }
    pb_tensor_info info;
    int found;
    PB_TRY(src->ops->find(src, "output.weight", &info, &found));
    if (!found)
        snprintf(p->untied_name, sizeof p->untied_name, "%s", info.file_name);
    return PB_OK;
}

static pb_status st_tensor(exporter *e, pb_st_writer *w, FILE *f, const pb_st_tensor *t, const st_entry *entry) {
    PB_TRY(check_stop(e));
    pb_dtype dtype = e->o->dtype;
    tensor_role role = entry ? entry->role : ROLE_KEEP;
    int merged = entry && entry->merged[0];
    pb_tensor_info info;
    uint64_t n_bytes = t->n_elements * pb_dtype_size(dtype);
    if (role == ROLE_KEEP && !merged && t->dtype == dtype) {
        PB_TRY(pb_st_writer_tensor(w, f, t->data, n_bytes));
        tensor_done(e, n_bytes, 0);
        return PB_OK;
    }
    float *x = malloc((t->n_elements ? t->n_elements : 1) * sizeof *x);
    void *out = malloc(n_bytes ? n_bytes : 1);
    pb_status status = x && out ? PB_OK : pb_fail(PB_ERR_OOM, "export: out of memory for %s", t->name);
    if (status == PB_OK && merged)
        status = read_merged(e, entry->merged, x, t->n_elements, &info);
    else if (status == PB_OK)
        pb_st_tensor_to_f32(t, x);
    if (status == PB_OK) {
        int64_t row = t->n_dims > 0 ? t->shape[t->n_dims - 1] : 1;
        status = project(e, role, t->name, x, t->n_elements, row);
    }
    if (status == PB_OK) {
        pb_dtype_from_f32(dtype, out, x, (size_t)t->n_elements);
        status = pb_st_writer_tensor(w, f, out, n_bytes);
    }
    free(x);
    free(out);
    if (status == PB_OK)
        tensor_done(e, n_bytes, role != ROLE_KEEP);
    return status;
}

static pb_status st_write(exporter *e, const pb_safetensors *st, const st_plan *p, pb_st_writer *w, FILE *f) {
    int64_t n = pb_safetensors_count(st);
    for (int64_t i = 0; i < n; i++) {
        const pb_st_tensor *t = pb_safetensors_at(st, i);
        PB_TRY(pb_st_writer_add(w, t->name, e->o->dtype, t->n_dims, t->shape));
    }
    if (p->embedding)
        PB_TRY(pb_st_writer_add(w, p->untied_name, e->o->dtype, p->embedding->n_dims, p->embedding->shape));
    e->total = n + (p->embedding != NULL);
    PB_TRY(pb_st_writer_begin(w, f));
    for (int64_t i = 0; i < n; i++) {
        const pb_st_tensor *t = pb_safetensors_at(st, i);
        PB_TRY(st_tensor(e, w, f, t, st_find(p, t->name)));
    }
    if (p->embedding) {
        PB_TRY(st_tensor(e, w, f, p->embedding, NULL));
        e->sum.untied = 1;
    }
    return pb_st_writer_end(w);
}

static const char *dtype_torch_name(pb_dtype dtype) {
    return dtype == PB_DTYPE_BF16 ? "bfloat16" : dtype == PB_DTYPE_F16 ? "float16" : "float32";
}

/* config.json with tie_word_embeddings false when untied and the dtype
 * keys naming the exported storage. */
static pb_status st_config(const exporter *e, pb_file_set *set, int untied) {
    char path[4352];
    snprintf(path, sizeof path, "%s/config.json", e->src->folder);
    json_error_t error;
    json_t *config = json_load_file(path, 0, &error);
    if (!config || !json_is_object(config)) {
        json_decref(config);
        return pb_fail(PB_ERR_FORMAT, "export: %s: %s", path, error.text);
    }
    pb_status status = PB_OK;
    if (untied)
        json_object_set_new(config, "tie_word_embeddings", json_false());
    const char *dtype_keys[] = {"torch_dtype", "dtype"};
    int set_any = 0;
    for (int i = 0; i < 2; i++)
        if (json_object_get(config, dtype_keys[i])) {
            json_object_set_new(config, dtype_keys[i], json_string(dtype_torch_name(e->o->dtype)));
            set_any = 1;
        }
    if (!set_any)
        json_object_set_new(config, "torch_dtype", json_string(dtype_torch_name(e->o->dtype)));
    PB_TRY(pb_file_set_pending(set, "config.json", path, sizeof path));
    if (json_dump_file(config, path, JSON_INDENT(2)) != 0)
        status = pb_fail(PB_ERR_IO, "export: cannot write %s", path);
    json_decref(config);
    return status;
}

/* Files of the source folder that go along (tokenizer, chat template,
 * generation config, licence): every regular file but the weights and
 * config.json. */
static int st_carried(const char *name) {
    static const char *const skipped_ends[] = {".safetensors", ".safetensors.index.json",
                                               ".bin",         ".pt",
                                               ".pth",         ".gguf",
                                               ".h5",          ".msgpack",
                                               ".onnx",        ".ckpt",
                                               ".npy",         ".npz"};
    if (name[0] == '.' || strcmp(name, "config.json") == 0 || strstr(name, ".tmp."))
        return 0;
    size_t len = strlen(name);
    for (size_t i = 0; i < sizeof skipped_ends / sizeof *skipped_ends; i++) {
        size_t k = strlen(skipped_ends[i]);
        if (len >= k && strcmp(name + len - k, skipped_ends[i]) == 0)
            return 0;
    }
    return 1;
}

static pb_status copy_file(const char *from, const char *to) {
    FILE *in = fopen(from, "rb");
    if (!in)
        return pb_fail(PB_ERR_IO, "export: cannot read %s", from);
    FILE *out = fopen(to, "wb");
    if (!out) {
        fclose(in);
        return pb_fail(PB_ERR_IO, "export: cannot create %s", to);
    }
    char buf[1 << 16];
    size_t n;
    pb_status status = PB_OK;
    while (status == PB_OK && (n = fread(buf, 1, sizeof buf, in)) > 0)
        if (fwrite(buf, 1, n, out) != n)
            status = pb_fail(PB_ERR_IO, "export: write failed on %s (disk full?)", to);
    if (status == PB_OK && ferror(in))
        status = pb_fail(PB_ERR_IO, "export: read failed on %s", from);
    fclose(in);
    return close_pending(out, status);
}

static pb_status st_copy_files(const exporter *e, pb_file_set *set) {
    DIR *d = opendir(e->src->folder);
    if (!d)
        return pb_fail(PB_ERR_IO, "export: cannot list %s", e->src->folder);
    pb_status status = PB_OK;
    struct dirent *entry;
    while (status == PB_OK && (entry = readdir(d)) != NULL) {
        char from[4352], to[4352];
        struct stat info;
        snprintf(from, sizeof from, "%s/%s", e->src->folder, entry->d_name);
        if (!st_carried(entry->d_name) || stat(from, &info) != 0 || !S_ISREG(info.st_mode))
            continue;
        status = pb_file_set_pending(set, entry->d_name, to, sizeof to);
        if (status == PB_OK)
            status = copy_file(from, to);
    }
    closedir(d);
    return status;
}

static pb_status st_files(exporter *e, const pb_safetensors *st, st_plan *p, pb_file_set *set) {
    if (p->untied_name[0]) {
        p->embedding = p->embedding_name[0] ? pb_safetensors_find(st, p->embedding_name) : NULL;
        if (!p->embedding)
            return pb_fail(PB_ERR_FORMAT, "export: %s: no token embedding to untie", e->src->path);
    }
    pb_st_writer *w;
    PB_TRY(pb_st_writer_create(&w));
    FILE *f = NULL;
    pb_status status = open_pending(set, "model.safetensors", &f);
    if (status == PB_OK)
        status = close_pending(f, st_write(e, st, p, w, f));
    pb_st_writer_free(w);
    if (status == PB_OK)
        status = st_copy_files(e, set);
    if (status == PB_OK)
        status = st_config(e, set, p->embedding != NULL); /* last: a folder with config.json is complete */
    return status;
}

static pb_status export_safetensors(exporter *e, const char *out_dir) {
    if (e->o->dtype == PB_DTYPE_Q8_0)
        return pb_fail(PB_ERR_ARG, "export: safetensors holds F32, BF16 or F16; Q8_0 is for GGUF");
    PB_TRY(pb_out_dir_check(out_dir, e->o->overwrite));
    st_plan plan = {0};
    pb_safetensors *st = NULL;
    pb_status status = st_plan_build(e->src, &plan);
    if (status == PB_OK)
        status = pb_safetensors_open(&st, e->src->folder);
    pb_file_set set;
    if (status == PB_OK && (status = pb_file_set_begin(&set, out_dir)) == PB_OK) {
        status = st_files(e, st, &plan, &set);
        if (status == PB_OK) {
            status = pb_file_set_commit(&set);
        } else {
            pb_error_saved saved;
            pb_error_save(&saved);
            pb_file_set_discard(&set);
            pb_error_restore(&saved);
        }
    }
    pb_safetensors_close(st);
    free(plan.entries);
    return status;
}

/* ---- the entry point ------------------------------------------------------------- */

static pb_status export_source(exporter *e, const char *out_path) {
    pb_export_format source = e->src->gguf ? PB_EXPORT_GGUF : PB_EXPORT_SAFETENSORS;
    pb_export_format format = e->o->format == PB_EXPORT_AUTO ? source : e->o->format;
    if (format != source)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "export: %s is a %s model and exports to %s only (the tensors and tokenizer are carried over "
                       "in their own format; %s)",
                       e->src->path, source == PB_EXPORT_GGUF ? "GGUF" : "Hugging Face (safetensors)",
                       source == PB_EXPORT_GGUF ? "GGUF" : "safetensors",
                       source == PB_EXPORT_GGUF ? "transformers' from_pretrained(gguf_file=...) then save_pretrained "
                                                  "turns the result into safetensors"
                                                : "llama.cpp's convert_hf_to_gguf.py turns the result into a GGUF");
    /* a name that says the other format would hide what the file is */
    int says_gguf = pb_path_has_suffix(out_path, ".gguf");
    int says_st = pb_path_has_suffix(out_path, ".safetensors");
    if ((format == PB_EXPORT_GGUF && says_st) || (format == PB_EXPORT_SAFETENSORS && says_gguf))
        return pb_fail(PB_ERR_ARG, "export: %s names a %s file, but the export is %s (%s)", out_path,
                       says_gguf ? "GGUF" : "safetensors",
                       format == PB_EXPORT_GGUF ? "a GGUF file" : "a safetensors folder",
                       format == PB_EXPORT_GGUF ? "name it .gguf" : "name a folder");
    pb_dtype d = e->o->dtype;
    if (d != PB_DTYPE_F32 && d != PB_DTYPE_BF16 && d != PB_DTYPE_F16 && d != PB_DTYPE_Q8_0)
        return pb_fail(PB_ERR_ARG, "export: dtype %s (f32, bf16, f16, or q8_0 for GGUF)", pb_dtype_name(d));
    return format == PB_EXPORT_GGUF ? export_gguf(e, out_path) : export_safetensors(e, out_path);
}

pb_status pb_export_ablated(const char *model_path, const float *direction, int d_model,
                            const pb_export_options *options, const char *out_path, pb_export_summary *summary) {
    if (summary)
        memset(summary, 0, sizeof *summary);
    if (!model_path || !direction || !options || !out_path || !*out_path)
        return pb_fail(PB_ERR_ARG, "pb_export_ablated: model path, direction, options and output are required");
    pb_weight_source *src;
    PB_TRY(pb_weight_source_open(&src, model_path));
    if (options->n_adapters > 0) {
        pb_status wrapped = pb_adapter_source_wrap(&src, options->adapters, options->adapter_scales,
                                                   options->n_adapters);
        if (wrapped != PB_OK) {
            pb_weight_source_free(src);
            return wrapped;
        }
    }
    double *u = malloc((size_t)src->cfg.d_model * sizeof *u);
    pb_status status = u ? PB_OK : pb_fail(PB_ERR_OOM, "export: out of memory");
    exporter e = {.o = options, .src = src, .u = u, .d = src->cfg.d_model};
    if (status == PB_OK)
        status = check_family(&src->cfg);
    if (status == PB_OK)
        status = check_direction(direction, d_model, &src->cfg, u);
    if (status == PB_OK)
        status = export_source(&e, out_path);
    if (status == PB_OK && summary)
        *summary = e.sum;
    free(u);
    pb_weight_source_free(src);
    return status;
}
