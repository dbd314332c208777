/* pb_sweep_write: a finished sweep as files in one directory.
 *
 *   <component>.npy         float32 mean effect, (layers[, heads], positions): the layers and heads
 *                           its sites have, and its positions in the order the spec lists them
 *   <component>_all.npy     (layers[, heads]): sites patching every position together
 *   <component>_groups.npy  (layers[, heads], groups): sites patching listed groups together
 *                           (npy_axes in results.json names every axis's entries)
 *   report.txt              the human summary (baselines, circuit fraction, top layers, top effects)
 *   results.json            everything, including per-pair values and each .npy file's axes
 *
 * Site values come only from the public getters (pb_sweep_get_*); the
 * struct is read for metadata (model, spec, position alignment). Two
 * phases: every file of the new set is written and fsynced under a
 * temporary name (NAME.tmp.<pid>) first, and only once all are safe do
 * they replace the old outputs (--overwrite): the old results.json is
 * removed, the new files renamed into place, results.json last (its
 * presence means the set is complete), then old files of names this set
 * does not use are removed. A failed write (disk full, file size limit)
 * removes its temporary files and leaves the old outputs as they were. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/internal.h"
#include "model/model.h"
#include "formats/npy.h"
#include "util/outdir.h"
#include "attribution/atp.h"
#include "patching/sweep_access.h"
#include "patching/sweep_view.h"
#include "util/utf8.h"

#define PB_SWEEP_SCHEMA "patchbay.sweep/2"
enum { PB_REPORT_TOP_LAYERS = 5, PB_REPORT_TOP_EFFECTS = 15 };

/* ---- the .npy grids ------------------------------------------------------ */

/* One .npy: (layers[, heads], positions or groups), over the layers and
 * heads its sites have, ascending (all of them when the spec asks for all,
 * as TransformerLens's patching helpers lay them out). */
typedef struct grid {
    float *data;
    int n_dims;
    int64_t shape[3];
    int used;
    int *layer_at; /* (model layers) row of each layer, -1 when none of the grid's sites has it */
    int *head_at;  /* (model heads of the component) index on the head axis, or -1 */
    int n_layers, n_heads;
} grid;

typedef struct component_grids {
    int n_heads; /* of the component in the model; 0: no head axis */
    grid each, all, groups;
    int n_groups;
    const int **group_positions; /* (n_groups) borrowed from the sweep */
    int *group_sizes;            /* (n_groups) */
} component_grids;

static pb_status grid_alloc(grid *g, int n_dims, const int64_t *shape) {
    size_t count = 1;
    g->n_dims = n_dims;
    for (int i = 0; i < n_dims; i++) {
        g->shape[i] = shape[i];
        count *= (size_t)shape[i];
    }
    g->data = malloc((count ? count : 1) * sizeof(float));
    if (!g->data)
        return pb_fail(PB_ERR_OOM, "sweep write: out of memory for a %zu-cell grid", count);
    for (size_t i = 0; i < count; i++)
        g->data[i] = NAN;
    return PB_OK;
}

/* Sets a cell once: when the spec lists a cell twice, the first site's value stays. */
static void grid_set(grid *g, int64_t index, double value) {
    if (!isnan(g->data[index]))
        return;
    g->data[index] = (float)value;
}

static void grid_free(grid *g) {
    free(g->data);
    free(g->layer_at);
    free(g->head_at);
}

static void grids_free(component_grids *grids) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        grid_free(&grids[c].each);
        grid_free(&grids[c].all);
        grid_free(&grids[c].groups);
        free(grids[c].group_positions);
        free(grids[c].group_sizes);
    }
}

static int find_group(const component_grids *g, const pb_site_result *r) {
    for (int i = 0; i < g->n_groups; i++)
        if (g->group_sizes[i] == r->n_positions &&
            (r->n_positions == 0 ||
             memcmp(g->group_positions[i], r->positions, sizeof(int) * (size_t)r->n_positions) == 0))
            return i;
    return -1;
}

static grid *grid_of(component_grids *grids, const pb_site_view *site) {
    component_grids *g = &grids[site->r.component];
    return site->r.position != INT32_MIN ? &g->each : site->all_positions ? &g->all : &g->groups;
}

/* Marks the grid a site lands in as used, with its layer and head. */
static pb_status grid_mark(const pb_sweep_view *v, component_grids *g, grid *target, const pb_site_result *r) {
    if (!target->layer_at) {
        target->layer_at = malloc(sizeof(int) * (size_t)v->cfg->n_layers);
        target->head_at = malloc(sizeof(int) * (size_t)(g->n_heads + 1));
        if (!target->layer_at || !target->head_at)
            return pb_fail(PB_ERR_OOM, "sweep write: out of memory");
        for (int l = 0; l < v->cfg->n_layers; l++)
            target->layer_at[l] = -1;
        for (int h = 0; h <= g->n_heads; h++)
            target->head_at[h] = -1;
    }
    target->used = 1;
    if (r->layer >= 0 && r->layer < v->cfg->n_layers)
        target->layer_at[r->layer] = 0;
    if (g->n_heads && r->head >= 0 && r->head < g->n_heads)
        target->head_at[r->head] = 0;
    return PB_OK;
}

/* Numbers the marked layers and heads in ascending order and allocates the
 * grid: (layers[, heads], last) with last = 0 for none. */
static pb_status grid_shape(const pb_sweep_view *v, const component_grids *g, grid *target, int64_t last) {
    if (!target->used)
        return PB_OK;
    for (int l = 0; l < v->cfg->n_layers; l++)
        if (target->layer_at[l] >= 0)
            target->layer_at[l] = target->n_layers++;
    for (int h = 0; h < g->n_heads; h++)
        if (target->head_at[h] >= 0)
            target->head_at[h] = target->n_heads++;
    int64_t shape[3];
    int n = 0;
    shape[n++] = target->n_layers;
    if (g->n_heads)
        shape[n++] = target->n_heads;
    if (last > 0)
        shape[n++] = last;
    return grid_alloc(target, n, shape);
}

static pb_status grids_build(const pb_sweep_view *v, component_grids *grids) {
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        grids[c].n_heads = pb_component_head_count((pb_component)c, v->cfg);
        grids[c].group_positions = calloc((size_t)v->n_sites + 1, sizeof *grids[c].group_positions);
        grids[c].group_sizes = calloc((size_t)v->n_sites + 1, sizeof *grids[c].group_sizes);
        if (!grids[c].group_positions || !grids[c].group_sizes)
            return pb_fail(PB_ERR_OOM, "sweep write: out of memory");
    }
    /* Which grids exist, their layers and heads, and the groups in order of first appearance. */
    for (int64_t s = 0; s < v->n_sites; s++) {
        const pb_site_view *site = &v->sites[s];
        int c = (int)site->r.component;
        if (c < 0 || c >= PB_COMPONENT_COUNT)
            return pb_fail(PB_ERR_ARG, "sweep write: site %lld has component %d", (long long)s, c);
        component_grids *g = &grids[c];
        grid *target = grid_of(grids, site);
        PB_TRY(grid_mark(v, g, target, &site->r));
        if (target == &g->groups && find_group(g, &site->r) < 0) {
            g->group_positions[g->n_groups] = site->r.positions;
            g->group_sizes[g->n_groups] = site->r.n_positions;
            g->n_groups++;
        }
    }
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        component_grids *g = &grids[c];
        PB_TRY(grid_shape(v, g, &g->each, v->n_columns[c]));
        PB_TRY(grid_shape(v, g, &g->all, 0));
        PB_TRY(grid_shape(v, g, &g->groups, g->n_groups));
    }
    for (int64_t s = 0; s < v->n_sites; s++) {
        const pb_site_result *r = &v->sites[s].r;
        component_grids *g = &grids[r->component];
        grid *target = grid_of(grids, &v->sites[s]);
        if (r->layer < 0 || r->layer >= v->cfg->n_layers)
            continue;
        int64_t cell = target->layer_at[r->layer];
        if (g->n_heads) {
            if (r->head < 0 || r->head >= g->n_heads)
                continue; /* a head component without one head: only in results.json */
            cell = cell * target->n_heads + target->head_at[r->head];
        }
        if (target == &g->each)
            cell = cell * v->n_columns[r->component] + pb_sweep_view_column(v, r->component, r->position);
        else if (target == &g->groups)
            cell = cell * g->n_groups + find_group(g, r);
        grid_set(target, cell, r->effect);
    }
    return PB_OK;
}

/* ---- results.json -------------------------------------------------------- */

/* Builders that remember an allocation failure instead of checking each call. */
typedef struct json_builder {
    int failed;
} json_builder;

static json_t *jnum(json_builder *b, double x) {
    json_t *j = isfinite(x) ? json_real(x) : json_null();
    if (!j)
        b->failed = 1;
    return j;
}

static json_t *jint(json_builder *b, long long x) {
    json_t *j = json_integer(x);
    if (!j)
        b->failed = 1;
    return j;
}

static json_t *jstr(json_builder *b, const char *s) {
    json_t *j = s ? json_string(s) : json_null();
    if (!j)
        b->failed = 1;
    return j;
}

static json_t *jobj(json_builder *b) {
    json_t *j = json_object();
    if (!j)
        b->failed = 1;
    return j;
}

static json_t *jarr(json_builder *b) {
    json_t *j = json_array();
    if (!j)
        b->failed = 1;
    return j;
}

static void put(json_builder *b, json_t *object, const char *key, json_t *value) {
    if (!object || !value || json_object_set_new(object, key, value) != 0) {
        json_decref(value);
        b->failed = 1;
    }
}

static void push(json_builder *b, json_t *array, json_t *value) {
    if (!array || !value || json_array_append_new(array, value) != 0) {
        json_decref(value);
        b->failed = 1;
    }
}

static json_t *jids(json_builder *b, const int32_t *ids, int n) {
    json_t *a = jarr(b);
    for (int i = 0; i < n; i++)
        push(b, a, jint(b, ids[i]));
    return a;
}

/* A token's text as a JSON string: bytes that are not UTF-8 on their own
 * (a piece of a multi-byte character) appear as "\xNN". */
static json_t *jtoken_text(json_builder *b, const pb_model *model, int id) {
    char raw[256], text[1024];
    if (pb_model_token_text(model, id, raw, sizeof raw) != PB_OK)
        return json_null();
    size_t n = strlen(raw), used = 0;
    for (size_t i = 0; i < n && used + 5 < sizeof text;) {
        size_t len = pb_utf8_length((const unsigned char *)raw + i, n - i);
        if (len == 0) {
            used += (size_t)snprintf(text + used, sizeof text - used, "\\x%02x", (unsigned char)raw[i]);
            i++;
            continue;
        }
        if (used + len >= sizeof text)
            break;
        memcpy(text + used, raw + i, len);
        used += len;
        i += len;
    }
    text[used] = 0;
    return jstr(b, text);
}

/* [{"id": 7042, "text": " Paris"}, ...] */
static json_t *jtokens(json_builder *b, const pb_model *model, const int32_t *ids, int n) {
    json_t *a = jarr(b);
    for (int i = 0; i < n; i++) {
        json_t *t = jobj(b);
        put(b, t, "id", jint(b, ids[i]));
        put(b, t, "text", jtoken_text(b, model, ids[i]));
        push(b, a, t);
    }
    return a;
}

static json_t *jints(json_builder *b, const int *values, int n) {
    json_t *a = jarr(b);
    for (int i = 0; i < n; i++)
        push(b, a, jint(b, values[i]));
    return a;
}

static json_t *metric_json(json_builder *b, const pb_sweep_view *v) {
    const pb_metric_spec *m = &v->spec->metric;
    pb_metric_kind kind = v->summary.metric;
    json_t *o = jobj(b);
    put(b, o, "kind", jstr(b, pb_sweep_metric_name(kind)));
    switch (kind) {
    case PB_METRIC_LOGIT_DIFF:
        put(b, o, "positive", m->positive ? jtokens(b, v->model, m->positive, m->n_positive) : json_null());
        put(b, o, "negative", m->negative ? jtokens(b, v->model, m->negative, m->n_negative) : json_null());
        put(b, o, "tokens_per_pair", json_boolean(!pb_sweep_view_tokens_shared(v)));
        break;
    case PB_METRIC_LOGPROB:
    case PB_METRIC_REFUSAL_SCORE:
        put(b, o, "tokens", m->positive ? jtokens(b, v->model, m->positive, m->n_positive) : json_null());
        put(b, o, "tokens_per_pair", json_boolean(!pb_sweep_view_tokens_shared(v)));
        break;
    case PB_METRIC_PROJECTION:
        put(b, o, "direction", jstr(b, m->direction_path));
        put(b, o, "layer", jint(b, m->layer));
        put(b, o, "hook", jstr(b, m->hook_post ? "resid_post" : "resid_pre"));
        break;
    case PB_METRIC_CALLBACK:
        put(b, o, "residual_layer", v->metric_residual_layer >= 0 ? jint(b, v->metric_residual_layer) : json_null());
        break;
    case PB_METRIC_KL: break;
    }
    put(b, o, "position", jint(b, m->position));
    return o;
}

/* Layers that have sites, by descending max |effect| (NaN when none of
 * their sites has an effect). *out is malloc'd (n_layers entries). */
static pb_status rank_layers(const pb_sweep_view *v, pb_ranked **out, int *n_out) {
    int n_layers = v->cfg->n_layers;
    pb_ranked *layers = calloc((size_t)n_layers + 1, sizeof *layers);
    int *has_site = calloc((size_t)n_layers + 1, sizeof *has_site);
    if (!layers || !has_site) {
        free(layers);
        free(has_site);
        return pb_fail(PB_ERR_OOM, "sweep write: out of memory");
    }
    for (int l = 0; l < n_layers; l++) {
        layers[l].key = NAN;
        layers[l].index = l;
    }
    for (int64_t s = 0; s < v->n_sites; s++) {
        const pb_site_result *r = &v->sites[s].r;
        if (r->layer < 0 || r->layer >= n_layers)
            continue;
        has_site[r->layer] = 1;
        double a = fabs(r->effect);
        if (!isnan(a) && (isnan(layers[r->layer].key) || a > layers[r->layer].key))
            layers[r->layer].key = a;
    }
    int n = 0;
    for (int l = 0; l < n_layers; l++)
        if (has_site[l])
            layers[n++] = layers[l];
    free(has_site);
    qsort(layers, (size_t)n, sizeof *layers, pb_ranked_compare);
    *out = layers;
    *n_out = n;
    return PB_OK;
}

static void npy_axes_entry(json_builder *b, json_t *axes, const char *file, const grid *g, const char *last_axis,
                           int n_heads, int n_model_layers, json_t *labels) {
    json_t *e = jobj(b);
    json_t *shape = jarr(b), *names = jarr(b);
    for (int i = 0; i < g->n_dims; i++)
        push(b, shape, jint(b, g->shape[i]));
    push(b, names, jstr(b, "layer"));
    if (n_heads)
        push(b, names, jstr(b, "head"));
    if (last_axis)
        push(b, names, jstr(b, last_axis));
    put(b, e, "shape", shape);
    put(b, e, "axes", names);
    json_t *layers = jarr(b), *heads = jarr(b);
    for (int l = 0; g->layer_at && l < n_model_layers; l++)
        if (g->layer_at[l] >= 0)
            push(b, layers, jint(b, l));
    for (int h = 0; g->head_at && h < n_heads; h++)
        if (g->head_at[h] >= 0)
            push(b, heads, jint(b, h));
    put(b, e, "layers", layers);
    if (n_heads)
        put(b, e, "heads", heads);
    else
        json_decref(heads);
    put(b, e, "dtype", jstr(b, "float32"));
    put(b, e, "value", jstr(b, "mean normalised effect over usable pairs; NaN where no site"));
    if (labels)
        put(b, e, last_axis && strcmp(last_axis, "group") == 0 ? "groups" : "positions", labels);
    put(b, axes, file, e);
}

/* A prompt as run: its text and how it was rendered, its ids and their text. */
static json_t *prompt_json(json_builder *b, const pb_sweep_view *v, const pb_prompt_spec *prompt) {
    json_t *o = jobj(b);
    put(b, o, "text", jstr(b, prompt->text));
    put(b, o, "chat", json_boolean(prompt->chat));
    put(b, o, "system", jstr(b, prompt->system)); /* chat with null: the template's default */
    if (prompt->is_noise) {
        json_t *noise = jobj(b);
        put(b, noise, "scale", jnum(b, prompt->noise_scale));
        put(b, noise, "positions", jints(b, prompt->noise_positions, prompt->n_noise_positions));
        put(b, noise, "seed", jint(b, (long long)prompt->noise_seed));
        put(b, o, "noise", noise);
    }
    put(b, o, "ids", jids(b, prompt->ids, prompt->T));
    json_t *tokens = jarr(b);
    for (int t = 0; t < prompt->T; t++)
        push(b, tokens, jtoken_text(b, v->model, prompt->ids[t]));
    put(b, o, "tokens", tokens);
    put(b, o, "starts_with_bos",
        json_boolean(v->cfg->bos_id >= 0 && prompt->T > 0 && prompt->ids[0] == v->cfg->bos_id));
    put(b, o, "bos_added", json_boolean(pb_prompt_bos_added(prompt, v->model)));
    if (v->cfg->rope_scaling == PB_ROPE_SCALING_LONGROPE)
        put(b, o, "rope_factors", jstr(b, pb_rope_uses_long_factors(v->cfg, prompt->T) ? "long" : "short"));
    return o;
}

/* A pair's prompts (by their role) and the metric tokens it reads. */
static void pair_tokens_json(json_builder *b, const pb_sweep_view *v, int i, json_t *p) {
    const pb_pair_spec *pair = &v->spec->pairs[i];
    int interchange = v->summary.mode == PB_MODE_INTERCHANGE;
    const pb_prompt_spec *clean = pair->clean_is_source ? &pair->source : &pair->base;
    const pb_prompt_spec *corrupted = pair->clean_is_source ? &pair->base : &pair->source;
    json_t *prompts = jobj(b);
    put(b, prompts, interchange ? "source" : "clean", prompt_json(b, v, clean));
    put(b, prompts, interchange ? "base" : "corrupted", prompt_json(b, v, corrupted));
    put(b, p, "prompts", prompts);
    pb_metric_kind kind = v->summary.metric;
    if (kind == PB_METRIC_LOGIT_DIFF) {
        put(b, p, "positive", jtokens(b, v->model, pair->positive, pair->n_positive));
        put(b, p, "negative", jtokens(b, v->model, pair->negative, pair->n_negative));
    } else if (kind == PB_METRIC_LOGPROB || kind == PB_METRIC_REFUSAL_SCORE) {
        put(b, p, "tokens", jtokens(b, v->model, pair->positive, pair->n_positive));
    }
}

static json_t *pairs_json(json_builder *b, const pb_sweep_view *v) {
    json_t *pairs = jarr(b);
    for (int i = 0; i < v->n_pairs; i++) {
        double clean, corrupted;
        pb_sweep_view_pair_values(v, i, &clean, &corrupted);
        json_t *p = jobj(b);
        put(b, p, "index", jint(b, i));
        put(b, p, "clean", jnum(b, clean));
        put(b, p, "corrupted", jnum(b, corrupted));
        put(b, p, "base", jnum(b, v->pair_base[i]));
        put(b, p, "source", jnum(b, v->pair_source[i]));
        put(b, p, "usable", json_boolean(v->pair_usable[i]));
        pair_tokens_json(b, v, i, p);
        push(b, pairs, p);
    }
    return pairs;
}

/* Per column of component c's position axis, each pair's token index in
 * its clean and corrupted prompts (interchange: source and base). */
static json_t *position_index_json(json_builder *b, const pb_sweep_view *v, int c) {
    json_t *columns = jarr(b);
    for (int k = 0; k < v->n_columns[c]; k++) {
        json_t *clean = jarr(b), *corrupted = jarr(b), *e = jobj(b);
        for (int i = 0; i < v->spec->n_pairs; i++) {
            int base, source;
            pb_sweep_view_resolve(v, i, v->columns[c][k], &base, &source);
            int clean_is_source = v->spec->pairs[i].clean_is_source;
            push(b, clean, jint(b, clean_is_source ? source : base));
            push(b, corrupted, jint(b, clean_is_source ? base : source));
        }
        int interchange = v->summary.mode == PB_MODE_INTERCHANGE;
        put(b, e, interchange ? "source" : "clean", clean);
        put(b, e, interchange ? "base" : "corrupted", corrupted);
        push(b, columns, e);
    }
    return columns;
}

/* Axes of every .npy file, so a heatmap can be labelled. */
static json_t *npy_axes_json(json_builder *b, const pb_sweep_view *v, const component_grids *grids) {
    json_t *axes = jobj(b);
    char file[64];
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        const component_grids *g = &grids[c];
        const char *name = pb_component_name((pb_component)c);
        if (g->each.used) {
            json_t *labels = jints(b, v->columns[c], v->n_columns[c]);
            snprintf(file, sizeof file, "%s.npy", name);
            npy_axes_entry(b, axes, file, &g->each, "position", g->n_heads, v->cfg->n_layers, labels);
            put(b, json_object_get(axes, file), "position_index", position_index_json(b, v, c));
        }
        if (g->all.used) {
            snprintf(file, sizeof file, "%s_all.npy", name);
            npy_axes_entry(b, axes, file, &g->all, NULL, g->n_heads, v->cfg->n_layers, NULL);
        }
        if (g->groups.used) {
            json_t *labels = jarr(b);
            for (int i = 0; i < g->n_groups; i++)
                push(b, labels, jints(b, g->group_positions[i], g->group_sizes[i]));
            snprintf(file, sizeof file, "%s_groups.npy", name);
            npy_axes_entry(b, axes, file, &g->groups, "group", g->n_heads, v->cfg->n_layers, labels);
        }
    }
    return axes;
}

static json_t *sites_json(json_builder *b, const pb_sweep_view *v) {
    json_t *sites = jarr(b);
    for (int64_t s = 0; s < v->n_sites && !b->failed; s++) {
        const pb_site_result *r = &v->sites[s].r;
        json_t *e = jobj(b);
        char hook[96];
        snprintf(hook, sizeof hook, "blocks.%d.%s", r->layer, pb_component_hook(r->component));
        put(b, e, "component", jstr(b, pb_component_name(r->component)));
        put(b, e, "hook", jstr(b, hook));
        put(b, e, "layer", jint(b, r->layer));
        put(b, e, "head", r->head >= 0 ? jint(b, r->head) : json_null());
        put(b, e, "position", r->position != INT32_MIN ? jint(b, r->position) : json_null());
        put(b, e, "positions",
            r->position == INT32_MIN && !v->sites[s].all_positions && r->positions
                ? jints(b, r->positions, r->n_positions)
                : json_null());
        put(b, e, "all_positions", json_boolean(v->sites[s].all_positions));
        put(b, e, "patched", jnum(b, r->patched));
        put(b, e, "effect", jnum(b, r->effect));
        put(b, e, "stderr", jnum(b, r->standard_error));
        put(b, e, "significant", json_boolean(r->significant));
        json_t *effects = jarr(b), *patched = jarr(b);
        for (int i = 0; i < v->n_pairs; i++) {
            double p = NAN, x = NAN;
            if (pb_sweep_get_row(v->sweep, i, s, &p, &x) != PB_OK)
                b->failed = 1;
            push(b, effects, jnum(b, x));
            push(b, patched, jnum(b, p));
        }
        put(b, e, "per_pair_effect", effects);
        put(b, e, "per_pair_patched", patched);
        push(b, sites, e);
    }
    return sites;
}

/* LongRoPE's settings and the rule that picked each prompt's factors (its
 * "rope_factors"): transformers', not llama.cpp's (by context size). */
static json_t *longrope_json(json_builder *b, const pb_model_config *cfg) {
    json_t *r = jobj(b);
    put(b, r, "scaling", jstr(b, "longrope"));
    put(b, r, "original_context", jint(b, cfg->rope_original_context));
    put(b, r, "attention_factor", jnum(b, cfg->rope_attn_factor));
    put(b, r, "rule",
        jstr(b, "a prompt of T tokens uses the long factors iff T > original_context (transformers: "
                "largest position + 1), else the short ones"));
    return r;
}

/* An estimate's check by the exact engine (attribution/atp.h), or null. */
static json_t *verification_json(json_builder *b, const pb_sweep_view *v) {
    const pb_atp_verification *ver = pb_sweep_verification(v->sweep);
    if (!ver)
        return json_null();
    json_t *o = jobj(b), *checks = jarr(b);
    put(b, o, "top", jint(b, ver->top));
    put(b, o, "control", jint(b, ver->n_control));
    put(b, o, "seed", jint(b, (long long)ver->seed));
    put(b, o, "recall_at_top", jnum(b, ver->recall));
    put(b, o, "spearman", jnum(b, ver->spearman));
    put(b, o, "spearman_against", jstr(b, ver->unsigned_estimate ? "|exact|" : "exact"));
    put(b, o, "control_misses", jint(b, ver->misses));
    put(b, o, "worst_control_miss", jint(b, ver->worst_miss));
    for (int i = 0; i < ver->n_checks; i++) {
        const pb_site_result *r = &v->sites[ver->checks[i].site].r;
        json_t *e = jobj(b);
        put(b, e, "component", jstr(b, pb_component_name(r->component)));
        put(b, e, "layer", jint(b, r->layer));
        put(b, e, "head", r->head >= 0 ? jint(b, r->head) : json_null());
        put(b, e, "position", r->position != INT32_MIN ? jint(b, r->position) : json_null());
        put(b, e, "estimate", jnum(b, ver->checks[i].estimate));
        put(b, e, "exact", jnum(b, ver->checks[i].exact));
        put(b, e, "control", json_boolean(ver->checks[i].control));
        push(b, checks, e);
    }
    put(b, o, "sites", checks);
    return o;
}

static json_t *results_json(const pb_sweep_view *v, const component_grids *grids, const pb_ranked *layers,
                            int n_layers_ranked, json_builder *b) {
    const pb_sweep_summary *sum = &v->summary;
    const pb_model_config *cfg = v->cfg;
    json_t *root = jobj(b);
    put(b, root, "schema", jstr(b, PB_SWEEP_SCHEMA));
    put(b, root, "model", jstr(b, v->model->path));
    json_t *mc = jobj(b);
    put(b, mc, "arch", jstr(b, cfg->arch));
    put(b, mc, "n_layers", jint(b, cfg->n_layers));
    put(b, mc, "d_model", jint(b, cfg->d_model));
    put(b, mc, "n_heads", jint(b, cfg->n_heads));
    put(b, mc, "n_kv_heads", jint(b, cfg->n_kv_heads));
    put(b, mc, "head_dim", jint(b, cfg->head_dim));
    put(b, mc, "vocab_size", jint(b, cfg->vocab_size));
    if (cfg->rope_scaling == PB_ROPE_SCALING_LONGROPE)
        put(b, mc, "rope", longrope_json(b, cfg));
    put(b, root, "model_config", mc);
    put(b, root, "mode", jstr(b, pb_sweep_mode_name(sum->mode)));
    put(b, root, "method", jstr(b, pb_sweep_method_name(v->spec->method)));
    if (v->spec->method == PB_METHOD_ATP_STAR) {
        /* which corrections ran; with grad_drop the effects are unsigned */
        json_t *star = jobj(b);
        put(b, star, "qk_fix", json_boolean(v->spec->qk_fix));
        put(b, star, "grad_drop", json_boolean(v->spec->grad_drop));
        put(b, root, "atp_star", star);
    }
    put(b, root, "metric", metric_json(b, v));
    put(b, root, "significance_threshold", jnum(b, v->spec->significance_threshold));
    put(b, root, "effect_floor", jnum(b, v->spec->effect_floor));
    put(b, root, "n_pairs", jint(b, sum->n_pairs));
    put(b, root, "n_pairs_used", jint(b, sum->n_pairs_used));
    put(b, root, "clean_baseline", jnum(b, sum->clean_baseline));
    put(b, root, "corrupted_baseline", jnum(b, sum->corrupted_baseline));
    put(b, root, "total_effect", jnum(b, sum->total_effect));
    put(b, root, "n_sites", jint(b, sum->n_sites));
    put(b, root, "n_rows", jint(b, sum->n_rows));
    put(b, root, "n_rows_executed", jint(b, sum->n_rows_executed));
    put(b, root, "n_rows_done", jint(b, sum->n_rows_done));
    put(b, root, "circuit_fraction", jnum(b, sum->circuit_fraction));
    put(b, root, "n_significant", jint(b, sum->n_significant));
    put(b, root, "flops_executed", jnum(b, sum->flops_executed));
    put(b, root, "flops_naive", jnum(b, sum->flops_naive));
    put(b, root, "positions_aligned_from_end", json_boolean(v->positions_from_end));
    json_t *prompts = jobj(b);
    put(b, prompts, "chat_default", json_boolean(v->spec->chat_default));
    int bos_added = 0; /* to plain text only; a chat template renders its own */
    for (int p = 0; p < v->spec->n_pairs; p++)
        bos_added |= pb_prompt_bos_added(&v->spec->pairs[p].base, v->model) |
                     pb_prompt_bos_added(&v->spec->pairs[p].source, v->model);
    put(b, prompts, "bos_added", json_boolean(bos_added));
    put(b, prompts, "bos_token",
        v->cfg->bos_id >= 0 ? jtokens(b, v->model, (const int32_t[]){v->cfg->bos_id}, 1) : json_null());
    put(b, root, "prompts", prompts);

    put(b, root, "pairs", pairs_json(b, v));

    json_t *top = jarr(b);
    for (int i = 0; i < n_layers_ranked; i++) {
        json_t *l = jobj(b);
        put(b, l, "layer", jint(b, layers[i].index));
        put(b, l, "max_abs_effect", jnum(b, layers[i].key));
        push(b, top, l);
    }
    put(b, root, "top_layers", top);

    put(b, root, "npy_axes", npy_axes_json(b, v, grids));

    put(b, root, "sites", sites_json(b, v));
    put(b, root, "verification", verification_json(b, v));
    return root;
}

/* ---- report.txt ---------------------------------------------------------- */

/* "0-29 (30)", "3 (1)" or "0, 4, 7 (3)": the layers that have sites. */
static void print_layers(FILE *f, const pb_sweep_view *v) {
    int n_layers = v->cfg->n_layers, n = 0, first = -1, last = -1;
    char *has = calloc((size_t)n_layers + 1, 1);
    if (!has)
        return;
    for (int64_t s = 0; s < v->n_sites; s++)
        if (v->sites[s].r.layer >= 0 && v->sites[s].r.layer < n_layers)
            has[v->sites[s].r.layer] = 1;
    for (int l = 0; l < n_layers; l++) {
        if (!has[l])
            continue;
        if (first < 0)
            first = l;
        last = l;
        n++;
    }
    fputs("Layers: ", f);
    if (n == 0) {
        fputs("none (0)\n", f);
    } else if (last - first + 1 == n) {
        if (n == 1)
            fprintf(f, "%d (1)\n", first);
        else
            fprintf(f, "%d-%d (%d)\n", first, last, n);
    } else {
        for (int l = 0, k = 0; l < n_layers; l++)
            if (has[l])
                fprintf(f, "%s%d", k++ ? ", " : "", l);
        fprintf(f, " (%d)\n", n);
    }
    free(has);
}

/* The pairs below the effect floor, framed by a rule of stars. */
static void print_floor_warning(FILE *f, const pb_sweep_view *v) {
    int interchange = v->summary.mode == PB_MODE_INTERCHANGE;
    int n_below = pb_sweep_view_pairs_below(v);
    if (n_below) {
        const char *rule = "************************************************************************\n";
        fprintf(f, "\n%s", rule);
        fprintf(f, "WARNING: %d of %d pairs are below the effect floor (|%s - %s| < %g):\n", n_below, v->n_pairs,
                interchange ? "source" : "clean", interchange ? "base" : "corrupted", v->spec->effect_floor);
        fputs("their normalised effects are undefined and they are left out of every mean.\n", f);
        for (int i = 0; i < v->n_pairs; i++) {
            if (v->pair_usable[i])
                continue;
            double clean, corrupted;
            pb_sweep_view_pair_values(v, i, &clean, &corrupted);
            fprintf(f, "  pair %d: %s %.6f, %s %.6f\n", i, interchange ? "source" : "clean", clean,
                    interchange ? "base" : "corrupted", corrupted);
        }
        fputs(rule, f);
    }
}

static pb_status report_text(const pb_sweep_view *v, const pb_ranked *layers, int n_layers_ranked, char **text,
                             size_t *size) {
    const pb_sweep_summary *sum = &v->summary;
    int interchange = sum->mode == PB_MODE_INTERCHANGE;
    const char *clean_word = interchange ? "Source" : "Clean";
    const char *corrupted_word = interchange ? "Base" : "Corrupted";
    *text = NULL;
    *size = 0;
    FILE *f = open_memstream(text, size);
    if (!f)
        return pb_fail(PB_ERR_OOM, "sweep write: cannot open a memory stream for report.txt");
    fputs("patchbay activation patching report\n", f);
    fprintf(f, "Model: %s\n", v->model->path ? v->model->path : "(unknown)");
    fprintf(f, "Mode: %s\n", pb_sweep_mode_name(sum->mode));
    fprintf(f, "Method: %s\n", pb_sweep_method_description(v->spec));
    fputs("Metric: ", f);
    pb_sweep_print_metric(f, v);
    fputc('\n', f);
    print_layers(f, v);
    fprintf(f, "Pairs: %d (%d used)\n", sum->n_pairs, sum->n_pairs_used);
    if (v->spec->method == PB_METHOD_EXACT)
        fprintf(f, "Sites patched: %lld (rows executed: %lld of %lld)\n", (long long)sum->n_sites,
                (long long)sum->n_rows_executed, (long long)sum->n_rows);
    else /* no patched forward per row; the exact check, if any, ran its own */
        fprintf(f, "Sites estimated: %lld (rows: %lld, no patched forward each)\n", (long long)sum->n_sites,
                (long long)sum->n_rows);
    char verdict[512];
    pb_atp_verification_describe(v->sweep, verdict, sizeof verdict);
    if (verdict[0])
        fprintf(f, "Verification: %s\n", verdict);
    if (sum->n_rows_done < sum->n_rows)
        fprintf(f, "Rows done: %lld of %lld (effects of the rest are missing)\n", (long long)sum->n_rows_done,
                (long long)sum->n_rows);
    if (sum->flops_executed > 0 && sum->flops_naive > 0)
        fprintf(f, "Compute: %.3g FLOPs executed, %.3g for one forward per row (%.1fx less)\n", sum->flops_executed,
                sum->flops_naive, sum->flops_naive / sum->flops_executed);
    fprintf(f, "%s baseline: %.4f\n", clean_word, sum->clean_baseline);
    fprintf(f, "%s baseline: %.4f\n", corrupted_word, sum->corrupted_baseline);
    fprintf(f, "Total effect: %.4f\n", sum->total_effect);
    fprintf(f, "Significant sites (|effect| >= %.2f): %lld of %lld (circuit fraction %.3f)\n",
            v->spec->significance_threshold, (long long)sum->n_significant, (long long)sum->n_sites,
            sum->circuit_fraction);
    fputs("Top causal layers:", f);
    for (int i = 0; i < n_layers_ranked && i < PB_REPORT_TOP_LAYERS; i++) {
        if (isnan(layers[i].key))
            fprintf(f, "%s %lld (n/a)", i ? "," : "", (long long)layers[i].index);
        else
            fprintf(f, "%s %lld (%.2f)", i ? "," : "", (long long)layers[i].index, layers[i].key);
    }
    fputs(n_layers_ranked ? "\n" : " none\n", f);

    /* The table: sites with an effect, by |effect| descending. */
    pb_ranked *order = malloc(((size_t)v->n_sites + 1) * sizeof *order);
    if (!order) {
        fclose(f);
        free(*text);
        *text = NULL;
        return pb_fail(PB_ERR_OOM, "sweep write: out of memory");
    }
    int hook_width = 4;
    int64_t n_ranked = pb_sweep_view_rank_sites(v, order);
    int64_t n_shown = n_ranked < PB_REPORT_TOP_EFFECTS ? n_ranked : PB_REPORT_TOP_EFFECTS;
    char hook[96], position[40];
    for (int64_t i = 0; i < n_shown; i++) {
        const pb_site_result *r = &v->sites[order[i].index].r;
        int n = snprintf(hook, sizeof hook, "blocks.%d.%s", r->layer, pb_component_hook(r->component));
        if (n > hook_width)
            hook_width = n;
    }
    fprintf(f, "\nTop %d effects:\n", PB_REPORT_TOP_EFFECTS);
    fprintf(f, "%4s  %-*s  %4s  %8s  %9s   %s\n", "rank", hook_width, "hook", "head", "position", "effect", "stderr");
    for (int64_t i = 0; i < n_shown; i++) {
        const pb_site_view *site = &v->sites[order[i].index];
        const pb_site_result *r = &site->r;
        snprintf(hook, sizeof hook, "blocks.%d.%s", r->layer, pb_component_hook(r->component));
        pb_sweep_format_position(site, position, sizeof position);
        char head[16];
        snprintf(head, sizeof head, r->head >= 0 ? "%d" : "-", r->head);
        char se[16] = "   n/a"; /* one used pair: no standard error */
        if (v->summary.n_pairs_used > 1)
            snprintf(se, sizeof se, "%.4f", r->standard_error);
        fprintf(f, "%4lld  %-*s  %4s  %8s  %9.4f ± %s%s\n", (long long)(i + 1), hook_width, hook, head, position,
                r->effect, se, r->significant ? "  *" : "");
    }
    if (n_shown == 0)
        fputs("  (no site has an effect)\n", f);
    free(order);

    print_floor_warning(f, v);
    if (fclose(f) != 0) {
        free(*text);
        *text = NULL;
        return pb_fail(PB_ERR_OOM, "sweep write: out of memory for report.txt");
    }
    return PB_OK;
}

/* ---- the directory ------------------------------------------------------- */

/* Creates dir and missing parents; records what it created (innermost
 * last) so a failed write can remove them again. */
static pb_status make_dirs(const char *dir, char created[][4096], int *n_created, int max_created) {
    char path[4096];
    size_t len = strlen(dir);
    if (len == 0 || len >= sizeof path)
        return pb_fail(PB_ERR_ARG, "sweep write: bad output directory '%s'", dir);
    memcpy(path, dir, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != 0)
            continue;
        char saved = path[i];
        path[i] = 0;
        if (mkdir(path, 0777) == 0) {
            if (*n_created < max_created)
                memcpy(created[(*n_created)++], path, i + 1);
        } else if (errno != EEXIST) {
            pb_status st = pb_fail(PB_ERR_IO, "sweep write: cannot create %s: %s", path, strerror(errno));
            path[i] = saved;
            return st;
        }
        path[i] = saved;
    }
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return pb_fail(PB_ERR_IO, "sweep write: %s is not a directory", dir);
    return PB_OK;
}

enum { PB_MAX_OUTPUT_FILES = 3 * PB_COMPONENT_COUNT + 2 };

/* The new set: each file's final name and, once written, its temporary
 * path (NAME.tmp.<pid>, pb_write_file_temp). */
typedef struct output_files {
    char names[PB_MAX_OUTPUT_FILES][64];
    char temps[PB_MAX_OUTPUT_FILES][4096];
    int n;
} output_files;

static int listed(const output_files *files, const char *name) {
    for (int i = 0; i < files->n; i++)
        if (strcmp(files->names[i], name) == 0)
            return 1;
    return 0;
}

/* Writes one file of the set under its temporary name: bytes, or an array
 * as .npy. */
static pb_status stage_one(const char *dir, const char *name, output_files *files, const void *data, size_t size,
                           const pb_sweep_array *g) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) >= (int)sizeof path)
        return pb_fail(PB_ERR_ARG, "sweep write: path too long: %s/%s", dir, name);
    char *tmp = files->temps[files->n];
    pb_status st = g ? pb_npy_write_temp(path, g->data, PB_NPY_F32, g->n_dims, g->shape, tmp, sizeof files->temps[0])
                     : pb_write_file_temp(path, data, size, tmp, sizeof files->temps[0]);
    if (st != PB_OK)
        return pb_fail_context(st, "sweep write");
    snprintf(files->names[files->n++], sizeof files->names[0], "%s", name);
    return PB_OK;
}

static void remove_file(const char *dir, const char *name) {
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s", dir, name) < (int)sizeof path)
        unlink(path);
}

/* Phase one: every file of the set under a temporary name, results.json
 * last in the list. */
static pb_status stage_all(const char *dir, const pb_sweep_outputs *out, output_files *files) {
    pb_status st = PB_OK;
    char name[64];
    for (int i = 0; st == PB_OK && i < out->n_arrays; i++) {
        snprintf(name, sizeof name, "%s.npy", out->arrays[i].name);
        st = stage_one(dir, name, files, NULL, 0, &out->arrays[i]);
    }
    if (st == PB_OK)
        st = stage_one(dir, "report.txt", files, out->report_text, strlen(out->report_text), NULL);
    if (st == PB_OK) {
        char *json_text = out->results_json;
        size_t len = strlen(json_text);
        json_text[len] = '\n'; /* the NUL becomes a final newline; the size excludes the old NUL */
        st = stage_one(dir, "results.json", files, json_text, len + 1, NULL);
        json_text[len] = 0;
    }
    return st;
}

/* Phase two: the staged set replaces the old one. */
static pb_status commit_all(const char *dir, int overwrite, output_files *files) {
    if (overwrite)
        remove_file(dir, "results.json"); /* until the new set is complete, there is none */
    pb_status st = PB_OK;
    char path[4096];
    int i = 0;
    for (; st == PB_OK && i < files->n; i++) {
        if (i == files->n - 1 && overwrite) {
            /* Files an earlier sweep wrote under names this one does not use. */
            static const char *const suffixes[] = {".npy", "_all.npy", "_groups.npy"};
            char name[64];
            for (int c = 0; c < PB_COMPONENT_COUNT; c++)
                for (int k = 0; k < 3; k++) {
                    snprintf(name, sizeof name, "%s%s", pb_component_name((pb_component)c), suffixes[k]);
                    if (!listed(files, name))
                        remove_file(dir, name);
                }
        }
        snprintf(path, sizeof path, "%s/%s", dir, files->names[i]);
        if (rename(files->temps[i], path) != 0)
            st = pb_fail(PB_ERR_IO, "sweep write: cannot rename %s to %s: %s", files->temps[i], path, strerror(errno));
        else
            files->temps[i][0] = 0;
    }
    return st;
}

/* Unlinks what is left under a temporary name. */
static void remove_staged(output_files *files) {
    for (int i = 0; i < files->n; i++)
        if (files->temps[i][0])
            unlink(files->temps[i]);
}

/* The set in memory: report.txt's text and results.json's. */
static pb_status build_outputs(const pb_sweep_view *v, component_grids *grids, char **report, size_t *report_size,
                               char **json_text) {
    pb_ranked *layers = NULL;
    int n_layers_ranked = 0;
    pb_status st = grids_build(v, grids);
    if (st == PB_OK)
        st = rank_layers(v, &layers, &n_layers_ranked);
    if (st == PB_OK)
        st = report_text(v, layers, n_layers_ranked, report, report_size);
    if (st == PB_OK) {
        json_builder b = {0};
        json_t *root = results_json(v, grids, layers, n_layers_ranked, &b);
        *json_text = b.failed ? NULL : json_dumps(root, JSON_INDENT(2));
        json_decref(root);
        if (!*json_text)
            st = pb_fail(PB_ERR_OOM, "sweep write: cannot build results.json (out of memory or a getter failed: %s)",
                         pb_last_error());
    }
    free(layers);
    return st;
}

int pb_sweep_is_output_name(const char *name) {
    static const char *const suffixes[] = {".npy", "_all.npy", "_groups.npy"};
    if (!name)
        return 0;
    if (strcmp(name, "results.json") == 0 || strcmp(name, "report.txt") == 0 || strcmp(name, "report.html") == 0)
        return 1;
    char want[64];
    for (int c = 0; c < PB_COMPONENT_COUNT; c++)
        for (int k = 0; k < 3; k++) {
            snprintf(want, sizeof want, "%s%s", pb_component_name((pb_component)c), suffixes[k]);
            if (strcmp(name, want) == 0)
                return 1;
        }
    return 0;
}

/* Moves the grids in use into out->arrays (their data change hands). */
static pb_status take_arrays(component_grids *grids, pb_sweep_outputs *out) {
    static const char *const suffixes[] = {"", "_all", "_groups"};
    out->arrays = calloc(3 * PB_COMPONENT_COUNT, sizeof *out->arrays);
    if (!out->arrays)
        return pb_fail(PB_ERR_OOM, "sweep outputs: out of memory");
    for (int c = 0; c < PB_COMPONENT_COUNT; c++) {
        grid *each[3] = {&grids[c].each, &grids[c].all, &grids[c].groups};
        for (int k = 0; k < 3; k++) {
            if (!each[k]->used)
                continue;
            pb_sweep_array *a = &out->arrays[out->n_arrays++];
            snprintf(a->name, sizeof a->name, "%s%s", pb_component_name((pb_component)c), suffixes[k]);
            a->data = each[k]->data;
            a->n_dims = each[k]->n_dims;
            memcpy(a->shape, each[k]->shape, sizeof a->shape);
            each[k]->data = NULL;
        }
    }
    return PB_OK;
}

pb_status pb_sweep_outputs_build(const pb_sweep *sweep, pb_sweep_outputs *out) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "pb_sweep_outputs_build: out is required");
    memset(out, 0, sizeof *out);
    if (!sweep)
        return pb_fail(PB_ERR_ARG, "pb_sweep_outputs_build: sweep is required");
    pb_sweep_view v;
    component_grids grids[PB_COMPONENT_COUNT];
    memset(grids, 0, sizeof grids);
    size_t report_size = 0;
    pb_status st = pb_sweep_view_load(&v, sweep);
    if (st == PB_OK)
        st = build_outputs(&v, grids, &out->report_text, &report_size, &out->results_json);
    pb_sweep_view_free(&v);
    if (st == PB_OK)
        st = take_arrays(grids, out);
    grids_free(grids);
    if (st != PB_OK)
        pb_sweep_outputs_free(out);
    return st;
}

void pb_sweep_outputs_free(pb_sweep_outputs *out) {
    if (!out)
        return;
    for (int i = 0; i < out->n_arrays; i++)
        free(out->arrays[i].data);
    free(out->arrays);
    free(out->results_json);
    free(out->report_text);
    memset(out, 0, sizeof *out);
}

pb_status pb_sweep_write(const pb_sweep *sweep, const char *dir, int overwrite) {
    if (!sweep || !dir || !*dir)
        return pb_fail(PB_ERR_ARG, "pb_sweep_write: sweep and dir are required");
    PB_TRY(pb_out_dir_check(dir, overwrite));

    pb_sweep_outputs out;
    output_files *files = calloc(1, sizeof *files);
    char created[8][4096];
    int n_created = 0;
    if (!files)
        return pb_fail(PB_ERR_OOM, "sweep write: out of memory");
    pb_status st = pb_sweep_outputs_build(sweep, &out);
    /* Everything is in memory: now touch the directory. */
    if (st == PB_OK)
        st = make_dirs(dir, created, &n_created, 8);
    if (st == PB_OK)
        st = stage_all(dir, &out, files);
    if (st == PB_OK)
        st = commit_all(dir, overwrite, files);
    remove_staged(files);
    if (st != PB_OK)
        for (int i = n_created - 1; i >= 0; i--)
            rmdir(created[i]);
    free(files);
    pb_sweep_outputs_free(&out);
    return st;
}
