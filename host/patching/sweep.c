/* Sweeps: expand sites, build per-pair run caches, decide which rows are
 * exactly zero by construction, pack the rest into executor batches (each
 * job starts at its own layer and position and patches its own site),
 * compute metrics, and aggregate effects. Semantics: docs/patching.md. */
#define _POSIX_C_SOURCE 200809L
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/atp.h"
#include "formats/dtype.h"
#include "model/components.h"
#include "util/internal.h"
#include "patching/metric.h"
#include "patching/noise.h"
#include "patching/sweep.h"
#include "patching/sweep_access.h"

/* ---- site geometry ---------------------------------------------------- */

static int component_has_head(pb_component c) { return pb_component_info_of(c)->heads != PB_HEADS_NONE; }

/* Where the executor applies a site's patch, and the job's start step (a
 * parallel block runs its MLP in its attention step). */
static void patch_point(const pb_model_config *c, pb_component comp, int layer, pb_hook_kind *hook, int *hook_layer,
                        int *start_step) {
    const pb_component_info *info = pb_component_info_of(comp);
    if (comp == PB_COMPONENT_RESID_POST) {
        /* leaving layer L is entering layer L + 1 (or the final residual) */
        *hook = PB_HOOK_RESID_PRE;
        *hook_layer = layer + 1;
        *start_step = pb_step_attention(layer + 1);
        return;
    }
    *hook = info->hook_kind;
    *hook_layer = layer;
    *start_step = info->half == PB_HALF_MLP && !c->parallel_block ? pb_step_mlp(layer) : pb_step_attention(layer);
}

/* The first step whose entering residual carries the patch: the patch's
 * own step for a residual state, the next one for a sublayer's output. */
static int effect_step(const pb_model_config *c, pb_component comp, int layer) {
    pb_hook_kind hook;
    int hook_layer, start;
    patch_point(c, comp, layer, &hook, &hook_layer, &start);
    return start + !pb_component_info_of(comp)->residual;
}

/* Pointer to one position's activation of a component in a run cache (the
 * whole row; add head * head_dim for a head's slice). */
static float *cache_row(const pb_sweep *s, const pb_run_cache *r, pb_component comp, int layer, int position) {
    const pb_model_config *c = &s->model->cfg;
    size_t T = (size_t)r->T, d = (size_t)c->d_model, kvd = (size_t)c->n_kv_heads * c->head_dim;
    switch (comp) {
    case PB_COMPONENT_RESID_PRE: return r->resid + ((size_t)layer * T + position) * d;
    case PB_COMPONENT_RESID_POST: return r->resid + ((size_t)(layer + 1) * T + position) * d;
    case PB_COMPONENT_RESID_MID: return r->resid_mid + ((size_t)layer * T + position) * d;
    case PB_COMPONENT_V: return r->v + ((size_t)layer * T + position) * kvd;
    default: return r->hooks[comp] + ((size_t)layer * T + position) * (size_t)pb_component_row_width(comp, c);
    }
}

/* Components that need their own recorded array: the residual states live
 * in resid and resid_mid, v in the key-value arrays. */
static int needs_hook_array(pb_component comp) {
    return !pb_component_info_of(comp)->residual && comp != PB_COMPONENT_V;
}

/* ---- site expansion --------------------------------------------------- */

/* Base positions a site patches in pair i, ascending; returns the count. */
static int resolve_positions(const pb_sweep *s, const pb_site *site, int pair, int *out) {
    const pb_pair_spec *p = &s->spec.pairs[pair];
    int T = p->base.T, n = 0;
    if (site->all_positions) {
        for (int t = 0; t < T; t++)
            if (p->position_map[t] >= 0)
                out[n++] = t;
        return n;
    }
    for (int i = 0; i < site->n_positions; i++) {
        int e = site->positions[i];
        out[n++] = e < 0 ? T + e : e;
    }
    for (int i = 1; i < n; i++) /* insertion sort: groups are short */
        for (int k = i; k > 0 && out[k - 1] > out[k]; k--) {
            int t = out[k];
            out[k] = out[k - 1];
            out[k - 1] = t;
        }
    return n;
}

static int mapped_in_all_pairs(const pb_sweep_spec *spec, int e) {
    for (int i = 0; i < spec->n_pairs; i++) {
        int T = spec->pairs[i].base.T, p = e < 0 ? T + e : e;
        if (p < 0 || p >= T || spec->pairs[i].position_map[p] < 0)
            return 0;
    }
    return 1;
}

/* The position sets of one site entry, resolved: what its sites patch. */
typedef struct entry_sets {
    int n_sets;
    int *sizes;     /* (n_sets) */
    int *positions; /* all sets' positions back to back */
} entry_sets;

/* A spec position as reported: when every base run has T tokens, a negative
 * index becomes the token index T + e; otherwise it stays end-aligned. */
static int position_label(int equal_T, int e) { return equal_T > 0 && e < 0 ? equal_T + e : e; }

/* Resolves an entry's positions. "each": every position mapped in all pairs
 * (absolute when the lengths are equal, else end-aligned -T_min .. -1);
 * "last": T - 1 or -1; a list: its indices in the order given, an index
 * naming a token already listed (8 and -1 when T = 9) dropped; groups: each
 * group's members resolved. */
static pb_status entry_resolve(const pb_sweep_spec *spec, const pb_site_spec *e, int equal_T, int T_min,
                               entry_sets *out) {
    int cap = e->position_mode == PB_POSITIONS_EACH ? T_min : e->n_positions > 0 ? e->n_positions : 1;
    out->sizes = malloc(sizeof(int) * (size_t)(cap + 1));
    out->positions = malloc(sizeof(int) * (size_t)(cap + 1));
    if (!out->sizes || !out->positions)
        return pb_fail(PB_ERR_OOM, "out of memory expanding sites");
    int n = 0, at = 0;
    switch (e->position_mode) {
    case PB_POSITIONS_ALL: out->sizes[n++] = 0; break;
    case PB_POSITIONS_LAST:
        out->sizes[n++] = 1;
        out->positions[at++] = position_label(equal_T, -1);
        break;
    case PB_POSITIONS_EACH:
        for (int t = 0; t < T_min; t++) {
            int label = equal_T > 0 ? t : t - T_min;
            if (!mapped_in_all_pairs(spec, label))
                continue;
            out->sizes[n++] = 1;
            out->positions[at++] = label;
        }
        break;
    case PB_POSITIONS_LIST:
        for (int q = 0; q < e->n_positions; q++) {
            int label = position_label(equal_T, e->positions[q]), seen = 0;
            for (int k = 0; k < at; k++)
                seen |= out->positions[k] == label;
            if (seen)
                continue;
            out->sizes[n++] = 1;
            out->positions[at++] = label;
        }
        break;
    case PB_POSITIONS_GROUPS:
        for (int g = 0, from = 0; g < e->n_groups; from += e->group_sizes[g], g++) {
            out->sizes[n++] = e->group_sizes[g];
            for (int k = 0; k < e->group_sizes[g]; k++)
                out->positions[at++] = position_label(equal_T, e->positions[from + k]);
        }
        break;
    }
    out->n_sets = n;
    return PB_OK;
}

/* The sites of one entry (site_i, pos_i advance); with fill, written. */
static void entry_sites(pb_sweep *s, int k, const entry_sets *sets, int fill, int64_t *site_i, int64_t *pos_i) {
    const pb_site_spec *e = &s->spec.sites[k];
    int n_heads = component_has_head(e->component) ? e->n_heads : 1;
    for (int li = 0; li < e->n_layers; li++)
        for (int hi = 0; hi < n_heads; hi++)
            for (int q = 0, from = 0; q < sets->n_sets; from += sets->sizes[q], q++) {
                int count = sets->sizes[q];
                if (fill) {
                    pb_site *site = &s->sites[*site_i];
                    site->component = e->component;
                    site->layer = e->layers[li];
                    site->head = component_has_head(e->component) ? e->heads[hi] : -1;
                    site->spec_entry = k;
                    site->all_positions = e->position_mode == PB_POSITIONS_ALL;
                    site->n_positions = count;
                    site->positions = s->site_positions + *pos_i;
                    memcpy(site->positions, sets->positions + from, sizeof(int) * (size_t)count);
                    site->spec_position = count == 1 ? site->positions[0] : INT32_MIN;
                }
                (*site_i)++;
                *pos_i += count;
            }
}

static pb_status expand_sites(pb_sweep *s) {
    const pb_sweep_spec *spec = &s->spec;
    int T_min = INT_MAX, equal = 1;
    for (int i = 0; i < spec->n_pairs; i++) {
        if (spec->pairs[i].base.T < T_min)
            T_min = spec->pairs[i].base.T;
        equal &= spec->pairs[i].base.T == spec->pairs[0].base.T;
    }
    s->positions_aligned_from_end = !equal;
    int equal_T = equal ? spec->pairs[0].base.T : 0;
    entry_sets *sets = calloc((size_t)spec->n_sites, sizeof *sets);
    pb_status status = sets ? PB_OK : pb_fail(PB_ERR_OOM, "out of memory expanding sites");
    for (int k = 0; status == PB_OK && k < spec->n_sites; k++)
        status = entry_resolve(spec, &spec->sites[k], equal_T, T_min, &sets[k]);
    /* Two passes: count, then fill. */
    int64_t n_sites = 0, n_positions = 0;
    for (int k = 0; status == PB_OK && k < spec->n_sites; k++)
        entry_sites(s, k, &sets[k], 0, &n_sites, &n_positions);
    if (status == PB_OK) {
        s->sites = calloc((size_t)(n_sites ? n_sites : 1), sizeof *s->sites);
        s->site_positions = malloc(sizeof(int) * (size_t)(n_positions ? n_positions : 1));
        if (!s->sites || !s->site_positions)
            status = pb_fail(PB_ERR_OOM, "out of memory for %lld sites", (long long)n_sites);
    }
    int64_t site_i = 0, pos_i = 0;
    for (int k = 0; status == PB_OK && k < spec->n_sites; k++)
        entry_sites(s, k, &sets[k], 1, &site_i, &pos_i);
    for (int k = 0; sets && k < spec->n_sites; k++) {
        free(sets[k].sizes);
        free(sets[k].positions);
    }
    free(sets);
    PB_TRY(status);
    s->n_sites = n_sites;
    if (n_sites == 0)
        return pb_fail(PB_ERR_ARG, "spec: the sites expand to nothing (no position is mapped in every pair)");
    return PB_OK;
}

/* ---- run caches ------------------------------------------------------- */

/* Frees a buffer of the sweep's backend; NULL is a no-op. */
static void device_free(pb_sweep *s, void *buffer) {
    if (buffer)
        s->model->backend->ops->free(s->model->backend, buffer);
}

static void cache_free(pb_sweep *s, pb_run_cache *r) {
    device_free(s, r->arena);
    free(r->mirror);
    free(r->slab);
    memset(r, 0, sizeof *r);
}

/* Host mirrors of a pair's two caches are kept up to this size; past it,
 * row_is_trivial mirrors one (component, layer) block of each run at a
 * time (slab_row), and only a block pair past it too is read row by row. */
#define PB_MIRROR_MAX_BYTES ((size_t)2 << 30)

/* On a device backend, downloads both run caches of a pair in one transfer
 * each, so that deciding which rows are trivial (bit-identical source and
 * base activations) costs no per-row synchronising download. Best effort:
 * without host memory for it, the per-row path is used. */
static pb_status mirror_caches(pb_sweep *s, pb_run_cache *a, pb_run_cache *b) {
    pb_backend *be = s->model->backend;
    if (be->ops->host_memory || (a->arena_floats + b->arena_floats) * sizeof(float) > s->mirror_max_bytes)
        return PB_OK;
    pb_run_cache *runs[2] = {a, b};
    for (int k = 0; k < 2; k++) {
        runs[k]->mirror = malloc(sizeof(float) * (runs[k]->arena_floats ? runs[k]->arena_floats : 1));
        if (!runs[k]->mirror)
            return PB_OK;
        PB_TRY(be->ops->download(be, runs[k]->mirror, runs[k]->arena, sizeof(float) * runs[k]->arena_floats));
    }
    return PB_OK;
}

/* A cache row (cache_row's pointer) as host memory: the backend's own
 * memory, the mirror, or NULL when it must be downloaded. */
static const float *host_row(const pb_sweep *s, const pb_run_cache *r, const float *device_row) {
    if (s->model->backend->ops->host_memory)
        return device_row;
    if (r->mirror)
        return r->mirror + (device_row - (const float *)r->arena);
    return NULL;
}

/* Past the mirror cap: the host copy of row device_row of the (comp,
 * layer) block of run r, downloading the whole block (T rows, one
 * synchronising download) when it is not the one held. Sites come grouped
 * by component and layer, so a pair's rows cost a download per block, not
 * per row. *out = NULL when the two runs' blocks exceed the cap or host
 * memory runs out (then the caller reads the row itself). */
static pb_status slab_row(pb_sweep *s, pb_run_cache *r, pb_component comp, int layer, const float *device_row,
                          const float **out) {
    pb_backend *b = s->model->backend;
    *out = NULL;
    const float *start = cache_row(s, r, comp, layer, 0);
    size_t floats = (size_t)(cache_row(s, r, comp, layer, 1) - start) * (size_t)r->T;
    if (2 * floats * sizeof(float) > s->mirror_max_bytes)
        return PB_OK;
    if (r->slab_src != start) {
        if (floats > r->slab_capacity) {
            free(r->slab);
            r->slab_capacity = 0;
            if (!(r->slab = malloc(sizeof(float) * floats)))
                return PB_OK; /* best effort, like the mirror */
            r->slab_capacity = floats;
        }
        r->slab_src = NULL;
        PB_TRY(b->ops->download(b, r->slab, start, sizeof(float) * floats));
        r->slab_src = start;
    }
    *out = r->slab + (device_row - start);
    return PB_OK;
}

static size_t cache_floats(const pb_sweep *s, int T, const int *needed, size_t parts[4 + PB_COMPONENT_COUNT]) {
    const pb_model_config *c = &s->model->cfg;
    size_t L = (size_t)c->n_layers, d = (size_t)c->d_model, kvd = (size_t)c->n_kv_heads * c->head_dim;
    size_t total = 0;
    parts[0] = (L + 1) * T * d;
    parts[1] = L * T * d;
    parts[2] = parts[3] = L * T * kvd;
    for (int k = 0; k < PB_COMPONENT_COUNT; k++)
        parts[4 + k] = needed[k] ? L * T * (size_t)pb_component_row_width((pb_component)k, c) : 0;
    for (int k = 0; k < 4 + PB_COMPONENT_COUNT; k++)
        total += (parts[k] + 15) / 16 * 16;
    return total + (size_t)T * d; /* room for the noise */
}

typedef struct record_ctx {
    pb_sweep *sweep;
    pb_run_cache **runs; /* (jobs) the cache each job of the run fills */
} record_ctx;

/* Executor hook of a cache run: keeps every activation the sweep reads. */
static pb_status record_hook(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    record_ctx *ctx = user;
    pb_sweep *s = ctx->sweep;
    pb_run_cache *r = ctx->runs[job];
    pb_backend *b = s->model->backend;
    const pb_model_config *c = &s->model->cfg;
    float *dst = NULL;
    pb_component comp;
    if (hook == PB_HOOK_RESID_PRE)
        dst = r->resid + (size_t)layer * r->T * c->d_model;
    else if (hook == PB_HOOK_RESID_MID)
        dst = r->resid_mid + (size_t)layer * r->T * c->d_model;
    size_t width = (size_t)c->d_model;
    if (!dst) {
        /* hook arrays only: resid_post is the next resid_pre, v is in the key-value arrays */
        if (!pb_component_from_hook(hook, &comp) || !r->hooks[comp])
            return PB_OK;
        width = (size_t)pb_component_row_width(comp, c);
        dst = r->hooks[comp] + (size_t)layer * r->T * width;
    }
    return b->ops->copy(b, dst + (size_t)p0 * width, data, sizeof(float) * width * (size_t)n_rows);
}

/* Allocates one run's cache for prompt (and uploads its noise); the
 * activations come from cache_runs. */
static pb_status cache_alloc(pb_sweep *s, pb_run_cache *r, const pb_prompt_spec *prompt, const int *needed) {
    pb_model *m = s->model;
    pb_backend *b = m->backend;
    const pb_model_config *c = &m->cfg;
    size_t parts[4 + PB_COMPONENT_COUNT];
    memset(r, 0, sizeof *r);
    r->T = prompt->T;
    size_t total = cache_floats(s, prompt->T, needed, parts);
    r->arena_floats = total;
    pb_status status = b->ops->alloc(b, &r->arena, total * sizeof(float));
    if (status != PB_OK)
        return pb_fail_context(status, "run cache of %d tokens (%.1f MiB)", prompt->T,
                               (double)total * sizeof(float) / (1 << 20));
    float *cursor = r->arena;
    float **slots[4] = {&r->resid, &r->resid_mid, &r->k, &r->v};
    for (int k = 0; k < 4; k++) {
        *slots[k] = cursor;
        cursor += (parts[k] + 15) / 16 * 16;
    }
    for (int k = 0; k < PB_COMPONENT_COUNT; k++) {
        r->hooks[k] = parts[4 + k] ? cursor : NULL;
        cursor += (parts[4 + k] + 15) / 16 * 16;
    }
    if (!prompt->is_noise)
        return PB_OK;
    /* Noise rows at the listed positions, zeros elsewhere. */
    size_t d = (size_t)c->d_model;
    float *host = malloc(sizeof(float) * (size_t)prompt->T * d);
    if (!host) {
        cache_free(s, r);
        return pb_fail(PB_ERR_OOM, "out of memory for noise");
    }
    /* sigma of the embedding table, computed at load (model.h) */
    status = pb_noise_embed_delta(host, prompt->T, c->d_model, prompt->noise_positions, prompt->n_noise_positions,
                                  prompt->noise_scale, m->embed_sigma, prompt->noise_seed);
    r->embed_delta = cursor;
    if (status == PB_OK)
        status = b->ops->upload(b, r->embed_delta, host, sizeof(float) * (size_t)prompt->T * d);
    free(host);
    if (status != PB_OK)
        cache_free(s, r);
    return status;
}

/* Fills the allocated caches runs[0 .. n) of prompts[0 .. n) in one
 * executor run, a job each, packed in that order. */
static pb_status cache_runs(pb_sweep *s, pb_exec *exec, pb_run_cache **runs, const pb_prompt_spec *const *prompts,
                            int n, pb_exec_job *jobs) {
    for (int i = 0; i < n; i++)
        jobs[i] = (pb_exec_job){.T = prompts[i]->T,
                                .p0 = 0,
                                .start_step = 0,
                                .ids = prompts[i]->ids,
                                .embed_delta = runs[i]->embed_delta,
                                .k_cache = runs[i]->k,
                                .v_cache = runs[i]->v,
                                .kv_capacity = prompts[i]->T};
    record_ctx ctx = {s, runs};
    return pb_exec_run(exec, jobs, n, 2 * s->model->cfg.n_layers, record_hook, &ctx);
}

/* ---- metrics ---------------------------------------------------------- */

static int metric_needs_full_logits(const pb_sweep *s) {
    pb_metric_kind k = s->options.metric_fn ? PB_METRIC_CALLBACK : s->spec.metric.kind;
    return k == PB_METRIC_LOGPROB || k == PB_METRIC_REFUSAL_SCORE || k == PB_METRIC_KL ||
           (k == PB_METRIC_CALLBACK && s->options.metric_fn_residual_layer < 0);
}

static int metric_on_residual(const pb_sweep *s) {
    if (s->options.metric_fn)
        return s->options.metric_fn_residual_layer >= 0;
    return s->spec.metric.kind == PB_METRIC_PROJECTION;
}

/* 1 when the spec's metric is one the backends' metric_rows op reduces. */
static int metric_reducible(const pb_sweep *s) {
    pb_metric_kind k = s->spec.metric.kind;
    return !s->options.metric_fn &&
           (k == PB_METRIC_LOGIT_DIFF || k == PB_METRIC_LOGPROB || k == PB_METRIC_REFUSAL_SCORE || k == PB_METRIC_KL);
}

/* 1 when the backend's metric_rows reduces the batch's logits (the
 * sweep's metric_on_device), or would on a model loaded for it: a shape-only
 * plan's sweep sets nothing up. The host then reads one row of logits at
 * most (a non-finite value's, KL's clean distribution). */
static int metric_reduced_by_backend(const pb_sweep *s) {
    return s->metric_on_device || (s->model->shape_only && metric_reducible(s));
}

/* 1 when two pairs read the same metric tokens. */
static int same_tokens(const pb_pair_spec *a, const pb_pair_spec *b) {
    return a->n_positive == b->n_positive && a->n_negative == b->n_negative &&
           memcmp(a->positive, b->positive, sizeof(int32_t) * (size_t)a->n_positive) == 0 &&
           (a->n_negative == 0 || memcmp(a->negative, b->negative, sizeof(int32_t) * (size_t)a->n_negative) == 0);
}

/* 1 when rows of pairs a and b can share a metric batch: the metric reads
 * no pair's tokens (a residual, a callback, KL with its per-row reference),
 * or both pairs read the same ones. */
static int pairs_share_metric(const pb_sweep *s, int a, int b) {
    pb_metric_kind k = s->options.metric_fn ? PB_METRIC_CALLBACK : s->spec.metric.kind;
    return a == b || metric_on_residual(s) || k == PB_METRIC_CALLBACK || k == PB_METRIC_KL ||
           same_tokens(&s->spec.pairs[a], &s->spec.pairs[b]);
}

static int metric_position(const pb_sweep *s, int T) {
    int p = s->spec.metric.position;
    return p < 0 ? T + p : p;
}

/* The first non-finite logit of a row (host, (n_out)) as the error it is. */
static pb_status check_logits(const float *logits, int n_out, int pair) {
    for (int v = 0; v < n_out; v++)
        if (!isfinite(logits[v]))
            return pb_fail(PB_ERR_NUMERIC, "metric: non-finite logit %g (pair %d, vocabulary entry %d)",
                           (double)logits[v], pair, v);
    return PB_OK;
}

/* The backend's metric_rows on the unembedded logits (device, (n, n_out)),
 * enqueued; metric_rows_collect brings out (n) back. KL's per-row pairs are
 * uploaded first (an upload waits for the stream, so before the batch's
 * work is queued: see launch_batch). */
static pb_status metric_rows_enqueue(pb_sweep *s, const float *logits, int n, int n_out, double *device_values,
                                     const int32_t *device_pairs, int pair) {
    pb_backend *b = s->model->backend;
    const pb_metric_spec *ms = &s->spec.metric;
    const pb_pair_spec *p = &s->spec.pairs[pair];
    int kl = ms->kind == PB_METRIC_KL, diff = ms->kind == PB_METRIC_LOGIT_DIFF;
    const int32_t *positive = kl ? NULL : s->metric_ids + s->pair_ids_at[pair];
    return b->ops->metric_rows(b, device_values, logits, n, n_out, ms->kind, positive, kl ? 0 : p->n_positive,
                               diff ? positive + p->n_positive : NULL, diff ? p->n_negative : 0,
                               s->clean_logprobs_device, kl ? device_pairs : NULL, kl ? s->spec.n_pairs : 0);
}

/* out (n) from the device. A row the op reports as non-finite is
 * downloaded and checked here, so errors read as on the host path. */
static pb_status metric_rows_collect(pb_sweep *s, const float *logits, int n, int n_out, const int32_t *pairs,
                                     double *out, const double *device_values, float *host_scratch) {
    pb_backend *b = s->model->backend;
    PB_TRY(b->ops->download(b, out, device_values, sizeof(double) * (size_t)n));
    for (int i = 0; i < n; i++) {
        if (isfinite(out[i]))
            continue;
        PB_TRY(b->ops->download(b, host_scratch, logits + (size_t)i * n_out, sizeof(float) * (size_t)n_out));
        PB_TRY(check_logits(host_scratch, n_out, pairs[i]));
        return pb_fail(PB_ERR_NUMERIC, "metric: non-finite value %g for pair %d", out[i], pairs[i]);
    }
    return PB_OK;
}

/* Columns of the unembedding the metric reads for a pair (-1: the most of
 * any pair): the full vocabulary, the pair's selected rows, or 0 for a
 * metric on the residual. */
static int unembed_width(const pb_sweep *s, int pair) {
    if (metric_on_residual(s))
        return 0;
    if (metric_needs_full_logits(s))
        return s->model->cfg.vocab_size;
    int most = 0;
    for (int i = pair < 0 ? 0 : pair; i < (pair < 0 ? s->spec.n_pairs : pair + 1); i++) {
        int n = s->spec.pairs[i].n_positive + s->spec.pairs[i].n_negative;
        most = n > most ? n : most;
    }
    return most;
}

/* The output matrix, or the rows of it a logit_diff pair reads. */
static const void *unembed_matrix(const pb_sweep *s, int pair) {
    if (metric_needs_full_logits(s))
        return s->model->output.data;
    size_t row_bytes = pb_dtype_bytes(s->model->output.dtype, (size_t)s->model->cfg.d_model);
    return (const char *)s->unembed_rows + (size_t)s->pair_unembed[pair] * row_bytes;
}

/* Metric values of n residual rows (device, (n, d_model), the residual
 * entering metric_step at each run's metric position). pairs[i] selects
 * the clean distribution for KL. device_values (n) and device_pairs (n) are
 * the metric_rows op's buffers (NULL unless s->metric_on_device). */
static pb_status metric_rows(pb_sweep *s, pb_exec *exec, const float *rows, int n, const int32_t *pairs, double *out,
                             float *device_scratch, float *host_scratch, double *device_values, int32_t *device_pairs) {
    pb_model *m = s->model;
    pb_backend *b = m->backend;
    const pb_model_config *c = &m->cfg;
    const pb_metric_spec *ms = &s->spec.metric;
    for (int i = 1; i < n; i++) /* one set of tokens per call: a batch's pairs share them */
        if (!pairs_share_metric(s, pairs[0], pairs[i]))
            return pb_fail(PB_ERR_ARG, "internal: a metric batch mixes pairs %d and %d", pairs[0], pairs[i]);
    if (metric_on_residual(s)) {
        PB_TRY(b->ops->download(b, host_scratch, rows, sizeof(float) * (size_t)n * c->d_model));
        for (int i = 0; i < n; i++) {
            const float *x = host_scratch + (size_t)i * c->d_model;
            out[i] = s->options.metric_fn ? s->options.metric_fn(x, c->d_model, s->options.metric_user)
                                          : pb_metric_projection(x, ms->direction, c->d_model);
        }
        return PB_OK;
    }
    int n_out = unembed_width(s, pairs[0]);
    const pb_pair_spec *p = &s->spec.pairs[pairs[0]];
    PB_TRY(pb_exec_unembed(exec, device_scratch, rows, n, unembed_matrix(s, pairs[0]), s->model->output.dtype, n_out));
    if (s->metric_on_device) {
        if (s->spec.metric.kind == PB_METRIC_KL)
            PB_TRY(b->ops->upload(b, device_pairs, pairs, sizeof(int32_t) * (size_t)n));
        PB_TRY(metric_rows_enqueue(s, device_scratch, n, n_out, device_values, device_pairs, pairs[0]));
        return metric_rows_collect(s, device_scratch, n, n_out, pairs, out, device_values, host_scratch);
    }
    PB_TRY(b->ops->download(b, host_scratch, device_scratch, sizeof(float) * (size_t)n * n_out));
    for (int i = 0; i < n; i++) {
        const float *logits = host_scratch + (size_t)i * n_out;
        PB_TRY(check_logits(logits, n_out, pairs[i]));
        if (s->options.metric_fn) {
            out[i] = s->options.metric_fn(logits, n_out, s->options.metric_user);
            continue;
        }
        switch (ms->kind) {
        case PB_METRIC_LOGIT_DIFF: out[i] = pb_metric_logit_diff(logits, p->n_positive, p->n_negative); break;
        case PB_METRIC_LOGPROB: out[i] = pb_metric_logprob(logits, n_out, p->positive, p->n_positive); break;
        case PB_METRIC_REFUSAL_SCORE:
            out[i] = pb_metric_refusal_score(logits, n_out, p->positive, p->n_positive);
            break;
        case PB_METRIC_KL:
            out[i] = pb_metric_kl(s->clean_logprobs_host + (size_t)pairs[i] * n_out, logits, n_out);
            break;
        default: out[i] = NAN; break;
        }
        if (!isfinite(out[i]))
            return pb_fail(PB_ERR_NUMERIC, "metric: non-finite value %g for pair %d", out[i], pairs[i]);
    }
    return PB_OK;
}

/* ---- batches ----------------------------------------------------------- */

typedef struct batch_buffers {
    pb_exec *exec;
    int max_tokens;
    int max_rows;
    int group_pairs; /* pairs whose caches are built together (pb_batch_shape) */
    float *values;   /* device (max_tokens, d_model): patch values of a batch */
    float *gathered; /* device (max_rows, d_model): metric-position residuals */
    float *logits;   /* device (max_rows, n_out) */
    float *host;     /* host (max_rows, max(n_out, d_model)) */
    void *arena;
    void *metric_arena;    /* device, when s->metric_on_device: the two arrays below */
    double *metric_values; /* device (max_rows): metric_rows' output */
    int32_t *metric_pairs; /* device (max_rows): KL's clean distribution per row */
    pb_exec_job *jobs;     /* (max_rows) */
    pb_exec_patch *patches;
    int *positions;          /* (max_tokens) resolved base positions of all rows */
    pb_copy_region *staging; /* (max_tokens) source activations into `values`, one region per position */
    int32_t *pairs;          /* (max_rows) */
    int64_t *rows;           /* (max_rows) rows of the batch being planned */
    int64_t *rows_in_flight; /* (max_rows) rows of the launched batch, until finish_batch */
    double *values_out;      /* (max_rows) */
} batch_buffers;

static void batch_free(pb_sweep *s, batch_buffers *bb) {
    pb_exec_free(bb->exec);
    device_free(s, bb->arena);
    device_free(s, bb->metric_arena);
    free(bb->host);
    free(bb->jobs);
    free(bb->patches);
    free(bb->positions);
    free(bb->staging);
    free(bb->pairs);
    free(bb->rows);
    free(bb->rows_in_flight);
    free(bb->values_out);
    memset(bb, 0, sizeof *bb);
}

/* Components whose activations a run cache must record for the sites. */
static void needed_components(const pb_sweep *s, int needed[PB_COMPONENT_COUNT]) {
    for (int k = 0; k < PB_COMPONENT_COUNT; k++)
        needed[k] = 0;
    for (int64_t i = 0; i < s->n_sites; i++)
        if (needs_hook_array(s->sites[i].component))
            needed[s->sites[i].component] = 1;
}

/* Rows a batch may hold before the budget has its say: as asked, else 256
 * (more only take memory where the weights stay put, and on the CPU, whose
 * batches are compute-bound); with streamed weights on a device, every row
 * of the group of `pairs` pairs whose caches are held together (a batch
 * takes rows of one group), as each wave reads every layer over the link
 * once. */
static int rows_cap(const pb_sweep *s, int streamed, int pairs) {
    if (s->options.max_batch_rows > 0)
        return s->options.max_batch_rows;
    if (!streamed || !pb_model_on_device(s->model))
        return 256;
    return s->n_sites < INT_MAX / 2 / pairs ? (int)s->n_sites * pairs : INT_MAX / 2;
}

/* pb_sweep_batch_shape for batches of up to cap rows. */
static pb_status batch_shape(const pb_sweep *s, size_t budget, int max_T, int cap, pb_batch_shape *out) {
    const pb_model_config *c = &s->model->cfg;
    size_t per_token = pb_exec_workspace_bytes(c, 1, 0) + sizeof(float) * (size_t)c->d_model + sizeof(int);
    size_t n_out = (size_t)unembed_width(s, -1);
    size_t per_row = sizeof(float) * (n_out + (size_t)c->d_model) * 2 + 256;
    size_t fixed = pb_exec_workspace_bytes(c, 0, max_T);
    int max_rows = cap;
    while (max_rows > 1 && (size_t)max_rows * per_row > budget / 4)
        max_rows /= 2;
    memset(out, 0, sizeof *out);
    out->max_T = max_T;
    out->need_min = fixed + (size_t)max_T * per_token + per_row;
    if (budget < out->need_min)
        return pb_fail(PB_ERR_OOM, "%.1f MiB for batches is too small: one row of %d tokens needs %.1f MiB",
                       (double)budget / (1 << 20), max_T, (double)out->need_min / (1 << 20));
    size_t left = budget - fixed - (size_t)max_rows * per_row;
    size_t tokens = budget > fixed + (size_t)max_rows * per_row ? left / per_token : 0;
    /* No point exceeding every row of the sweep at full length. */
    size_t useful = (size_t)max_rows * (size_t)max_T;
    if (tokens > useful)
        tokens = useful;
    if (tokens < (size_t)max_T)
        tokens = (size_t)max_T;
    if (tokens > INT_MAX / 2)
        tokens = INT_MAX / 2;
    out->max_tokens = (int)tokens;
    out->max_rows = max_rows < out->max_tokens ? max_rows : out->max_tokens;
    size_t d = (size_t)c->d_model;
    out->arena_floats = (size_t)out->max_tokens * d + (size_t)out->max_rows * d +
                        (size_t)out->max_rows * (n_out ? n_out : 1);
    out->device_bytes = pb_exec_workspace_bytes(c, out->max_tokens, max_T) + out->arena_floats * sizeof(float) +
                        (metric_reduced_by_backend(s) ? (sizeof(double) + sizeof(int32_t)) * (size_t)out->max_rows : 0);
    /* a metric the backend reduces reads one row's logits on the host at most */
    size_t host_rows = metric_reduced_by_backend(s) ? 1 : (size_t)out->max_rows;
    out->host_bytes = sizeof(float) * host_rows * (n_out > d ? n_out : d);
    out->group_pairs = 1;
    return PB_OK;
}

pb_status pb_sweep_batch_shape(const pb_sweep *s, size_t budget, int max_T, int streamed, pb_batch_shape *out) {
    return batch_shape(s, budget, max_T, rows_cap(s, streamed, 1), out);
}

size_t pb_sweep_cache_bytes(const pb_sweep *s, int T) {
    size_t parts[4 + PB_COMPONENT_COUNT];
    int needed[PB_COMPONENT_COUNT];
    needed_components(s, needed);
    return sizeof(float) * cache_floats(s, T, needed, parts);
}

pb_status pb_sweep_memory_budget(const pb_sweep *s, size_t *budget) {
    *budget = s->options.max_memory ? s->options.max_memory : PB_SWEEP_DEFAULT_MEMORY;
    if (s->options.max_memory || !pb_model_streams_weights(s->model))
        return PB_OK;
    /* streamed: the plan's (on a device all that is left, as a wave reads every layer once) */
    pb_plan_options o = {.weights = PB_WEIGHTS_STREAM, .weight_memory = s->model->weight_memory};
    return pb_sweep_plan_budget(s, &o, budget);
}

int pb_sweep_max_T(const pb_sweep *s) {
    int max_T = 1;
    for (int i = 0; i < s->spec.n_pairs; i++) {
        if (s->spec.pairs[i].base.T > max_T)
            max_T = s->spec.pairs[i].base.T;
        if (s->spec.pairs[i].source.T > max_T)
            max_T = s->spec.pairs[i].source.T;
    }
    return max_T;
}

/* Allocates batches of the shape the memory budget allows
 * (pb_sweep_batch_shape). The budget is pb_sweep_memory_budget's,
 * capped, when the backend can tell, by free device memory: what is left
 * once one pair's two run caches (allocated after the batch) are set
 * aside, of which a quarter stays free for library workspaces (cuBLAS, the
 * 16-bit rounding scratch) and allocator slack. */
static pb_status batch_alloc(pb_sweep *s, batch_buffers *bb, int max_T) {
    const pb_model_config *c = &s->model->cfg;
    pb_backend *b = s->model->backend;
    size_t budget, device_free = 0, caches = 0;
    PB_TRY(pb_sweep_memory_budget(s, &budget));
    int device_limited = 0;
    if (b->ops->memory_info) {
        size_t total_bytes = 0;
        PB_TRY(b->ops->memory_info(b, &device_free, &total_bytes));
        caches = 2 * pb_sweep_cache_bytes(s, max_T);
        size_t usable = device_free > caches ? (device_free - caches) / 4 * 3 : 0;
        if (usable < budget) {
            budget = usable;
            device_limited = 1;
        }
    }
    pb_batch_shape shape;
    const uint64_t *layer_bytes = pb_model_streams_weights(s->model) ? s->model->layout.layer_bytes : NULL;
    pb_status fits = pb_sweep_run_shape(s, budget, max_T, layer_bytes, &shape);
    if (fits != PB_OK && device_limited)
        return pb_fail(PB_ERR_OOM,
                       "free device memory %.1f MiB leaves %.1f MiB for batches after one pair's run caches "
                       "(%.1f MiB) and headroom: one row of %d tokens needs %.1f MiB",
                       (double)device_free / (1 << 20), (double)budget / (1 << 20), (double)caches / (1 << 20), max_T,
                       (double)shape.need_min / (1 << 20));
    if (fits != PB_OK)
        return pb_fail(PB_ERR_OOM, "max memory %.1f MiB is too small: one row of %d tokens needs %.1f MiB",
                       (double)budget / (1 << 20), max_T, (double)shape.need_min / (1 << 20));
    bb->max_tokens = shape.max_tokens;
    bb->max_rows = shape.max_rows;
    bb->group_pairs = shape.group_pairs;
    PB_TRY(pb_exec_create(&bb->exec, s->model, bb->max_tokens, max_T));
    size_t d = (size_t)c->d_model;
    pb_status status = b->ops->alloc(b, &bb->arena, shape.arena_floats * sizeof(float));
    if (status != PB_OK) {
        batch_free(s, bb);
        return status;
    }
    bb->values = bb->arena;
    bb->gathered = bb->values + (size_t)bb->max_tokens * d;
    bb->logits = bb->gathered + (size_t)bb->max_rows * d;
    if (s->metric_on_device) {
        /* doubles first: the allocation's alignment suits both */
        status = b->ops->alloc(b, &bb->metric_arena, (sizeof(double) + sizeof(int32_t)) * (size_t)bb->max_rows);
        if (status != PB_OK) {
            batch_free(s, bb);
            return status;
        }
        bb->metric_values = bb->metric_arena;
        bb->metric_pairs = (int32_t *)(bb->metric_values + bb->max_rows);
    }
    bb->host = malloc(shape.host_bytes);
    bb->jobs = calloc((size_t)bb->max_rows, sizeof *bb->jobs);
    bb->patches = calloc((size_t)bb->max_rows, sizeof *bb->patches);
    bb->positions = malloc(sizeof(int) * (size_t)bb->max_tokens);
    bb->staging = malloc(sizeof(pb_copy_region) * (size_t)bb->max_tokens);
    bb->pairs = malloc(sizeof(int32_t) * (size_t)bb->max_rows);
    bb->rows = malloc(sizeof(int64_t) * (size_t)bb->max_rows);
    bb->rows_in_flight = malloc(sizeof(int64_t) * (size_t)bb->max_rows);
    bb->values_out = malloc(sizeof(double) * (size_t)bb->max_rows);
    if (!bb->host || !bb->jobs || !bb->patches || !bb->positions || !bb->staging || !bb->pairs || !bb->rows ||
        !bb->rows_in_flight || !bb->values_out) {
        batch_free(s, bb);
        return pb_fail(PB_ERR_OOM, "out of memory for batch bookkeeping");
    }
    return PB_OK;
}

/* Computes the metric of a run from its cache (the baseline values). */
static pb_status run_metric(pb_sweep *s, batch_buffers *bb, const pb_run_cache *r, int pair, double *out) {
    const pb_model_config *c = &s->model->cfg;
    int m = metric_position(s, r->T);
    const float *row = r->resid + ((size_t)(s->metric_step / 2) * r->T + m) * c->d_model;
    if (s->metric_step % 2)
        return pb_fail(PB_ERR_ARG, "internal: metric step %d is not a residual boundary", s->metric_step);
    int32_t pair32 = pair;
    return metric_rows(s, bb->exec, row, 1, &pair32, out, bb->logits, bb->host, bb->metric_values, bb->metric_pairs);
}

/* KL needs the clean run's log-distribution at its metric position. */
static pb_status clean_logprobs(pb_sweep *s, batch_buffers *bb, const pb_run_cache *clean, int pair) {
    pb_model *m = s->model;
    const pb_model_config *c = &m->cfg;
    int pos = metric_position(s, clean->T);
    const float *row = clean->resid + ((size_t)c->n_layers * clean->T + pos) * c->d_model;
    PB_TRY(pb_exec_unembed(bb->exec, bb->logits, row, 1, m->output.data, m->output.dtype, c->vocab_size));
    PB_TRY(m->backend->ops->download(m->backend, bb->host, bb->logits, sizeof(float) * (size_t)c->vocab_size));
    double *logprobs = s->clean_logprobs_host + (size_t)pair * c->vocab_size;
    pb_log_softmax(bb->host, c->vocab_size, logprobs);
    if (s->clean_logprobs_device)
        PB_TRY(m->backend->ops->upload(m->backend, s->clean_logprobs_device + (size_t)pair * c->vocab_size, logprobs,
                                       sizeof(double) * (size_t)c->vocab_size));
    return PB_OK;
}

/* A built pair's baselines: KL's clean distribution, both runs' metrics. */
static pb_status pair_baselines(pb_sweep *s, batch_buffers *bb, int pair) {
    const pb_pair_spec *p = &s->spec.pairs[pair];
    if (s->clean_logprobs_host)
        PB_TRY(clean_logprobs(s, bb, p->clean_is_source ? &s->source[pair] : &s->base[pair], pair));
    PB_TRY(run_metric(s, bb, &s->base[pair], pair, &s->base_value[pair]));
    return run_metric(s, bb, &s->source[pair], pair, &s->source_value[pair]);
}

/* Frees a pair's caches; its baselines stay, known once they were built
 * (also when its rows were interrupted or failed: a checkpoint keeps them). */
static void pair_release(pb_sweep *s, int pair) {
    cache_free(s, &s->base[pair]);
    cache_free(s, &s->source[pair]);
    s->baseline_ready[pair] |= s->cache_ready[pair];
    s->cache_ready[pair] = 0;
}

/* One past the last pair of the group of base runs that starts at pair
 * first: up to G pairs in a row whose base and source prompts are equally
 * long and fit max_tokens together; a pair whose prompts differ in length
 * is a group of its own. The groups partition all pairs from pair 0, so
 * every run and rank forms the same ones. */
static int group_end(const pb_sweep *s, int first, int G, int max_tokens) {
    const pb_pair_spec *pairs = s->spec.pairs;
    int end = first + 1, tokens = pairs[first].base.T;
    if (pairs[first].base.T != pairs[first].source.T)
        return end;
    while (end < s->spec.n_pairs && end - first < G && pairs[end].base.T == pairs[end].source.T &&
           tokens + pairs[end].base.T <= max_tokens)
        tokens += pairs[end++].base.T;
    return end;
}

/* Both caches of every pair of the group [first, end) (group_end) in two
 * executor runs, one of the base prompts and one of the source prompts,
 * each pair at the same offset in both. As the pairs' prompts are equally
 * long, the two runs are products of the same shapes, and a pair's rows
 * sit in the same slots of them: where its prompts agree, its activations
 * are bit-identical, as row_is_trivial needs (a GEMM row's sums depend on
 * its slot and the shape). A streamed model reads its layers twice per
 * group instead of twice per pair. Pairs with no pending row (wanted[k]
 * 0) still run, so the groups stay the same, and are freed at once; the
 * others' baselines are computed. On failure nothing stays allocated. */
static pb_status group_caches(pb_sweep *s, batch_buffers *bb, int first, int end, const unsigned char *wanted) {
    int n = end - first, needed[PB_COMPONENT_COUNT];
    needed_components(s, needed);
    pb_run_cache **runs = malloc(sizeof *runs * (size_t)n);
    const pb_prompt_spec **prompts = malloc(sizeof *prompts * (size_t)n);
    pb_exec_job *jobs = malloc(sizeof *jobs * (size_t)n);
    pb_status status = runs && prompts && jobs ? PB_OK : pb_fail(PB_ERR_OOM, "out of memory for %d pairs", n);
    for (int role = 0; status == PB_OK && role < 2; role++) {
        for (int k = 0; status == PB_OK && k < n; k++) {
            const pb_pair_spec *p = &s->spec.pairs[first + k];
            runs[k] = role ? &s->source[first + k] : &s->base[first + k];
            prompts[k] = role ? &p->source : &p->base;
            status = cache_alloc(s, runs[k], prompts[k], needed);
        }
        if (status == PB_OK)
            status = cache_runs(s, bb->exec, runs, prompts, n, jobs);
    }
    for (int k = 0; k < n; k++) {
        if (status == PB_OK && wanted[k])
            status = pair_baselines(s, bb, first + k);
        s->cache_ready[first + k] = status == PB_OK && wanted[k];
    }
    for (int k = 0; k < n; k++) /* pairs with no pending row; every pair on failure */
        if (status != PB_OK || !s->cache_ready[first + k])
            pair_release(s, first + k);
    free(runs);
    free(prompts);
    free(jobs);
    if (status != PB_OK && n == 1)
        return pb_fail_context(status, "pair %d", first);
    return status == PB_OK ? PB_OK : pb_fail_context(status, "pairs %d to %d", first, end - 1);
}

/* 1 when a row patching from position `first` cannot reach the metric: the
 * patch lands after the metric's residual, or every position after the
 * metric position. */
static int row_unreachable(const pb_sweep *s, int pair, const pb_site *site, int first) {
    return effect_step(&s->model->cfg, site->component, site->layer) > s->metric_step ||
           first > metric_position(s, s->spec.pairs[pair].base.T);
}

/* 1 when a row needing `need` tokens starts a new batch: the one being
 * planned (n rows, `tokens` tokens) is full. */
static int batch_full(int n, int tokens, int need, int max_rows, int max_tokens) {
    return n > 0 && (n == max_rows || tokens + need > max_tokens);
}

/* 1 when the site's patch cannot change the metric of this pair: all its
 * positions come after the metric position, its effect lands after the
 * metric's residual, or source and base activations are bit-identical. */
static pb_status row_is_trivial(pb_sweep *s, int pair, const pb_site *site, const int *positions, int n, int *trivial,
                                float *host_a, float *host_b) {
    pb_backend *b = s->model->backend;
    const pb_model_config *c = &s->model->cfg;
    const pb_pair_spec *p = &s->spec.pairs[pair];
    *trivial = 1;
    if (row_unreachable(s, pair, site, positions[0]))
        return PB_OK;
    if (s->options.run_trivial_rows) {
        *trivial = 0;
        return PB_OK;
    }
    size_t width = (size_t)pb_component_slice_width(site->component, c);
    size_t column = site->head >= 0 ? (size_t)site->head * c->head_dim : 0;
    for (int i = 0; i < n; i++) {
        const float *a = cache_row(s, &s->base[pair], site->component, site->layer, positions[i]);
        const float *bsrc = cache_row(s, &s->source[pair], site->component, site->layer, p->position_map[positions[i]]);
        const float *ha = host_row(s, &s->base[pair], a), *hb = host_row(s, &s->source[pair], bsrc);
        if (!ha)
            PB_TRY(slab_row(s, &s->base[pair], site->component, site->layer, a, &ha));
        if (!hb)
            PB_TRY(slab_row(s, &s->source[pair], site->component, site->layer, bsrc, &hb));
        ha = ha ? ha + column : NULL;
        hb = hb ? hb + column : NULL;
        if (!ha) {
            PB_TRY(b->ops->download(b, host_a, a + column, sizeof(float) * width));
            ha = host_a;
        }
        if (!hb) {
            PB_TRY(b->ops->download(b, host_b, bsrc + column, sizeof(float) * width));
            hb = host_b;
        }
        if (memcmp(ha, hb, sizeof(float) * width) != 0) {
            *trivial = 0;
            return PB_OK;
        }
    }
    return PB_OK;
}

/* Queues the batch of rows bb->rows[0 .. n) on the backend: patch values,
 * the patched forward, the metric position's residuals and, when the
 * metric is computed on the device, the unembedding and the metric. The
 * only waits are uploads (KL's per-row pairs; the executor's ids and
 * positions), which come before the forward is queued, when the stream
 * holds no more than this batch's value copies (the previous batch is
 * finished). The rows move to bb->rows_in_flight; finish_batch collects
 * them. Meanwhile the caller plans the next batch. */
static pb_status launch_batch(pb_sweep *s, batch_buffers *bb, int n) {
    pb_backend *b = s->model->backend;
    const pb_model_config *c = &s->model->cfg;
    size_t d = (size_t)c->d_model;
    int pos_used = 0;
    size_t values_used = 0;
    for (int i = 0; i < n; i++) {
        int64_t row = bb->rows[i];
        int pair = (int)(row / s->n_sites);
        const pb_site *site = &s->sites[row % s->n_sites];
        const pb_pair_spec *p = &s->spec.pairs[pair];
        int *positions = bb->positions + pos_used;
        int n_pos = resolve_positions(s, site, pair, positions);
        pos_used += n_pos;
        pb_exec_patch *patch = &bb->patches[i];
        int hook_layer, start;
        patch_point(&s->model->cfg, site->component, site->layer, &patch->hook, &hook_layer, &start);
        patch->layer = hook_layer;
        patch->head = site->head;
        patch->n_positions = n_pos;
        patch->positions = positions;
        patch->values = bb->values + values_used;
        size_t width = (size_t)pb_component_slice_width(site->component, c);
        size_t column = site->head >= 0 ? (size_t)site->head * c->head_dim : 0;
        for (int k = 0; k < n_pos; k++) {
            const float *src = cache_row(s, &s->source[pair], site->component, site->layer,
                                         p->position_map[positions[k]]) +
                               column;
            bb->staging[pos_used - n_pos + k] = (pb_copy_region){
                .dst = bb->values + values_used, .src = src, .n = width};
            values_used += width;
        }
        const pb_run_cache *base = &s->base[pair];
        const float *init = start == 0  ? NULL
                            : start % 2 ? base->resid_mid + (size_t)(start / 2) * base->T * d
                                        : base->resid + (size_t)(start / 2) * base->T * d;
        bb->jobs[i] = (pb_exec_job){.T = base->T,
                                    .p0 = positions[0],
                                    .start_step = start,
                                    .ids = p->base.ids,
                                    .embed_delta = base->embed_delta,
                                    .init_x = init,
                                    .k_prefix = base->k,
                                    .v_prefix = base->v,
                                    .kv_prefix_capacity = base->T,
                                    .patch = patch};
        bb->pairs[i] = pair;
    }
    /* every row's source activations into `values`, in one batch */
    if (b->ops->copy_regions)
        PB_TRY(b->ops->copy_regions(b, bb->staging, pos_used));
    for (int i = 0; !b->ops->copy_regions && i < pos_used; i++)
        PB_TRY(b->ops->copy(b, bb->staging[i].dst, bb->staging[i].src, sizeof(float) * bb->staging[i].n));
    if (s->metric_on_device && s->spec.metric.kind == PB_METRIC_KL)
        PB_TRY(b->ops->upload(b, bb->metric_pairs, bb->pairs, sizeof(int32_t) * (size_t)n));
    double before = pb_exec_flops(bb->exec);
    PB_TRY(pb_exec_run(bb->exec, bb->jobs, n, s->metric_step, NULL, NULL));
    s->n_batches++;
    for (int i = 0; i < n; i++)
        s->tokens_packed += bb->jobs[i].T - bb->jobs[i].p0;
    /* each row's residual at its metric position, side by side */
    for (int i = 0; i < n; i++) {
        const pb_exec_job *job = &bb->jobs[i];
        int m = metric_position(s, job->T);
        bb->staging[i] = (pb_copy_region){.dst = bb->gathered + (size_t)i * d,
                                          .src = pb_exec_output(bb->exec, i) + (size_t)(m - job->p0) * d,
                                          .n = d};
    }
    if (b->ops->copy_regions)
        PB_TRY(b->ops->copy_regions(b, bb->staging, n));
    for (int i = 0; !b->ops->copy_regions && i < n; i++)
        PB_TRY(b->ops->copy(b, bb->staging[i].dst, bb->staging[i].src, sizeof(float) * d));
    if (s->metric_on_device) {
        int n_out = unembed_width(s, bb->pairs[0]);
        PB_TRY(pb_exec_unembed(bb->exec, bb->logits, bb->gathered, n, unembed_matrix(s, bb->pairs[0]),
                               s->model->output.dtype, n_out));
        PB_TRY(metric_rows_enqueue(s, bb->logits, n, n_out, bb->metric_values, bb->metric_pairs, bb->pairs[0]));
    }
    s->flops_executed += pb_exec_flops(bb->exec) - before;
    int64_t *planned = bb->rows;
    bb->rows = bb->rows_in_flight;
    bb->rows_in_flight = planned;
    return PB_OK;
}

/* Waits for the launched batch of n rows and records their values. */
static pb_status finish_batch(pb_sweep *s, batch_buffers *bb, int n) {
    if (s->metric_on_device) {
        PB_TRY(metric_rows_collect(s, bb->logits, n, unembed_width(s, bb->pairs[0]), bb->pairs, bb->values_out,
                                   bb->metric_values, bb->host));
    } else {
        double before = pb_exec_flops(bb->exec);
        PB_TRY(metric_rows(s, bb->exec, bb->gathered, n, bb->pairs, bb->values_out, bb->logits, bb->host,
                           bb->metric_values, bb->metric_pairs));
        s->flops_executed += pb_exec_flops(bb->exec) - before;
    }
    for (int i = 0; i < n; i++) {
        s->patched[bb->rows_in_flight[i]] = bb->values_out[i];
        s->row_state[bb->rows_in_flight[i]] = PB_ROW_DONE;
    }
    s->n_rows_executed += n;
    s->n_rows_done += n;
    return PB_OK;
}

static int64_t compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int compare_rows(const void *a, const void *b) { return (int)compare_i64(a, b); }

static int stop_requested(const pb_sweep *s) { return s->options.stop && *s->options.stop; }

static pb_status interrupted(const pb_sweep *s) {
    return pb_fail(PB_ERR_INTERRUPTED, "sweep interrupted on request after %lld of %lld rows",
                   (long long)s->n_rows_done, (long long)s->n_rows);
}

static void report_progress(pb_sweep *s) {
    if (s->options.progress)
        s->options.progress(s->n_rows_done, s->n_rows, s->options.progress_user);
}

typedef struct row_scratch {
    float *host_a, *host_b; /* (max(d_model, head_dim)) */
    int *positions;         /* (max_T + 1) */
} row_scratch;

/* Drops a pair's host mirrors (mirror_caches), its rows planned. */
static void mirror_drop(pb_run_cache *a, pb_run_cache *b) {
    free(a->mirror);
    free(b->mirror);
    a->mirror = b->mirror = NULL;
}

/* The pending rows (rows, ascending) of a group of pairs whose caches are
 * built (group_caches), in batches; a batch holds rows of pairs that share
 * their metric's tokens (pairs_share_metric). A batch is launched, the
 * next one planned while the device runs it, and only then is it finished
 * (its values waited for and recorded). A stop request is honoured after
 * each finished batch; a batch in flight is always finished first, so no
 * computed row is lost. The caller frees the caches. */
static pb_status run_group_rows(pb_sweep *s, batch_buffers *bb, const int64_t *rows, int64_t n, const row_scratch *sc) {
    pb_status status = PB_OK;
    int pair = -1, batch_pair = -1; /* the row's pair; the planned batch's first row's */
    int in_flight = 0;              /* rows of the launched, unfinished batch */
    int n_batch = 0, tokens = 0;
    for (int64_t r = 0; status == PB_OK && r < n; r++) {
        if (rows[r] / s->n_sites != pair) {
            if (pair >= 0)
                mirror_drop(&s->base[pair], &s->source[pair]);
            pair = (int)(rows[r] / s->n_sites);
            if ((status = mirror_caches(s, &s->base[pair], &s->source[pair])) != PB_OK)
                break;
        }
        const pb_site *site = &s->sites[rows[r] % s->n_sites];
        int n_pos = resolve_positions(s, site, pair, sc->positions);
        int trivial;
        status = row_is_trivial(s, pair, site, sc->positions, n_pos, &trivial, sc->host_a, sc->host_b);
        if (status != PB_OK)
            break;
        if (trivial) {
            s->patched[rows[r]] = s->base_value[pair];
            s->row_trivial[rows[r]] = 1;
            s->row_state[rows[r]] = PB_ROW_DONE;
            s->n_rows_done++;
            continue;
        }
        int need = s->spec.pairs[pair].base.T - sc->positions[0];
        if (batch_full(n_batch, tokens, need, bb->max_rows, bb->max_tokens) ||
            (n_batch > 0 && !pairs_share_metric(s, batch_pair, pair))) {
            /* this batch is planned: finish the one in flight, then launch it */
            if (in_flight) {
                status = finish_batch(s, bb, in_flight);
                in_flight = 0;
                if (status != PB_OK)
                    break;
                report_progress(s);
                if (stop_requested(s)) {
                    status = interrupted(s);
                    break;
                }
            }
            if ((status = launch_batch(s, bb, n_batch)) != PB_OK)
                break;
            in_flight = n_batch;
            n_batch = tokens = 0;
        }
        batch_pair = n_batch ? batch_pair : pair;
        bb->rows[n_batch++] = rows[r];
        tokens += need;
    }
    if (in_flight) {
        /* finished on every path, before the caches it reads are freed;
         * a planning failure keeps its own message */
        pb_error_saved planning;
        pb_error_save(&planning);
        pb_status finished = finish_batch(s, bb, in_flight);
        if (status == PB_OK)
            status = finished;
        else
            pb_error_restore(&planning);
        if (status == PB_OK)
            report_progress(s);
        if (status == PB_OK && n_batch > 0 && stop_requested(s))
            status = interrupted(s);
    }
    if (status == PB_OK && n_batch > 0) {
        status = launch_batch(s, bb, n_batch);
        if (status == PB_OK)
            status = finish_batch(s, bb, n_batch);
    }
    if (status == PB_OK)
        report_progress(s);
    return status;
}

/* *out (free it): every row of the sweep, 0 .. n_rows - 1. */
static pb_status every_row(const pb_sweep *s, int64_t **out) {
    *out = malloc(sizeof(int64_t) * (size_t)(s->n_rows > 0 ? s->n_rows : 1));
    if (!*out)
        return pb_fail(PB_ERR_OOM, "out of memory for %lld rows", (long long)s->n_rows);
    for (int64_t r = 0; r < s->n_rows; r++)
        (*out)[r] = r;
    return PB_OK;
}

/* The requested rows still pending, ascending (pair-major): *out (free it). */
static pb_status pending_rows(const pb_sweep *s, const int64_t *rows, int64_t n_rows, int64_t **out, int64_t *n_out) {
    int64_t *todo = malloc(sizeof(int64_t) * (size_t)(n_rows > 0 ? n_rows : 1));
    if (!todo)
        return pb_fail(PB_ERR_OOM, "out of memory for %lld rows", (long long)n_rows);
    int64_t n_todo = 0;
    for (int64_t i = 0; i < n_rows; i++) {
        if (rows[i] < 0 || rows[i] >= s->n_rows) {
            free(todo);
            return pb_fail(PB_ERR_ARG, "row %lld outside [0, %lld)", (long long)rows[i], (long long)s->n_rows);
        }
        if (s->row_state[rows[i]] == PB_ROW_PENDING)
            todo[n_todo++] = rows[i];
    }
    qsort(todo, (size_t)n_todo, sizeof *todo, compare_rows);
    *out = todo;
    *n_out = n_todo;
    return PB_OK;
}

pb_status pb_sweep_run_rows(pb_sweep *s, const int64_t *rows, int64_t n_rows) {
    if (!s || (n_rows > 0 && !rows))
        return pb_fail(PB_ERR_ARG, "pb_sweep_run_rows: sweep and rows are required");
    if (s->spec.method != PB_METHOD_EXACT)
        return pb_atp_run_rows(s, rows, n_rows);
    int64_t *todo, n_todo;
    PB_TRY(pending_rows(s, rows, n_rows, &todo, &n_todo));
    int max_T = pb_sweep_max_T(s);
    batch_buffers bb = {0};
    pb_status status = n_todo ? batch_alloc(s, &bb, max_T) : PB_OK;
    const pb_model_config *c = &s->model->cfg;
    size_t width = (size_t)(c->d_model > c->head_dim ? c->d_model : c->head_dim);
    row_scratch sc = {malloc(sizeof(float) * width), malloc(sizeof(float) * width),
                      malloc(sizeof(int) * (size_t)(max_T + 1))};
    if (status == PB_OK && (!sc.host_a || !sc.host_b || !sc.positions))
        status = pb_fail(PB_ERR_OOM, "out of memory planning rows");
    /* One group of pairs at a time (group_end): its caches, its rows; a
     * stop request is also honoured before a group's caches. */
    unsigned char *wanted = calloc((size_t)s->spec.n_pairs, 1);
    if (status == PB_OK && !wanted)
        status = pb_fail(PB_ERR_OOM, "out of memory planning rows");
    for (int64_t i = 0; status == PB_OK && i < n_todo; i++)
        wanted[todo[i] / s->n_sites] = 1;
    for (int64_t i = 0, first = 0, end = 0; status == PB_OK && i < n_todo;) {
        while (end <= todo[i] / s->n_sites) {
            first = end;
            end = group_end(s, (int)first, bb.group_pairs, bb.max_tokens);
        }
        int64_t next = i; /* the next group's first row */
        while (next < n_todo && todo[next] / s->n_sites < end)
            next++;
        if (stop_requested(s)) {
            status = interrupted(s);
            break;
        }
        status = group_caches(s, &bb, (int)first, (int)end, wanted + first);
        if (status == PB_OK)
            status = run_group_rows(s, &bb, todo + i, next - i, &sc);
        for (int64_t pair = first; pair < end; pair++)
            if (s->cache_ready[pair])
                pair_release(s, (int)pair);
        i = next;
    }
    free(wanted);
    batch_free(s, &bb);
    free(sc.host_a);
    free(sc.host_b);
    free(sc.positions);
    free(todo);
    return status;
}

/* ---- planning: the batches a run would launch, counted ---------------- */

/* FLOPs the executor counts for a job of T positions from p0, steps
 * [start, stop). */
static double run_flops(const pb_sweep *s, int start, int stop, int p0, int T) {
    const pb_model_config *c = &s->model->cfg;
    double flops = 0.0;
    for (int step = start; step < stop && step < 2 * c->n_layers; step++)
        flops += pb_exec_step_flops(c, step, p0, T);
    return flops;
}

/* The layers a run of steps [start, stop) acquires, brought into a
 * stream's two slots (held) and counted; nothing for resident weights
 * (layer_bytes NULL). */
static void read_layers(const pb_sweep *s, int start, int stop, int *held, const uint64_t *layer_bytes,
                        pb_wave_counts *out) {
    for (int l = start / 2; layer_bytes && l <= (stop - 1) / 2 && l < s->model->cfg.n_layers; l++) {
        if (held[l % 2] == l)
            continue;
        held[l % 2] = l;
        out->layers_read++;
        out->bytes_read += (double)layer_bytes[l];
    }
}

/* A group's base runs (group_end): both runs over every pair's prompts. */
static void count_group(const pb_sweep *s, int first, int end, int *held, const uint64_t *layer_bytes,
                        pb_wave_counts *out) {
    int steps = 2 * s->model->cfg.n_layers;
    for (int pair = first; pair < end; pair++) {
        const pb_pair_spec *p = &s->spec.pairs[pair];
        out->flops_base += run_flops(s, 0, steps, 0, p->base.T) + run_flops(s, 0, steps, 0, p->source.T);
    }
    read_layers(s, 0, steps, held, layer_bytes, out);
    read_layers(s, 0, steps, held, layer_bytes, out);
    out->base_runs += 2;
}

/* A pair's baselines: both runs' unembedding (and KL's clean distribution). */
static void count_pair(const pb_sweep *s, int pair, pb_wave_counts *out) {
    const pb_model_config *c = &s->model->cfg;
    out->flops_base += 2.0 * 2 * unembed_width(s, pair) * c->d_model;
    if (s->clean_logprobs_host)
        out->flops_base += 2.0 * c->vocab_size * c->d_model;
    out->pairs++;
}

/* One batch of n rows (their pairs, start steps and first positions). */
static void count_batch(const pb_sweep *s, const int *pairs, const int *start, const int *p0, int n, int *held,
                        const uint64_t *layer_bytes, pb_wave_counts *out) {
    const pb_model_config *c = &s->model->cfg;
    int first = 2 * c->n_layers;
    double unembed = 2.0 * unembed_width(s, pairs[0]) * c->d_model; /* the batch's pairs share it */
    for (int i = 0; i < n; i++) {
        out->flops_rows += run_flops(s, start[i], s->metric_step, p0[i], s->spec.pairs[pairs[i]].base.T) + unembed;
        first = start[i] < first ? start[i] : first;
    }
    read_layers(s, first, s->metric_step, held, layer_bytes, out);
    out->waves++;
    out->rows += n;
}

/* Scratch of count_rows: a batch's rows (max_rows), a row's positions. */
typedef struct count_scratch {
    int *pairs, *start, *p0;
    int *positions; /* (max_T + 1) */
} count_scratch;

static void count_scratch_free(count_scratch *c) {
    free(c->pairs);
    free(c->start);
    free(c->p0);
    free(c->positions);
}

/* pb_sweep_count_waves over todo (n_todo rows, ascending, all pending),
 * walking them as pb_sweep_run_rows runs them: group by group, the group's
 * base runs, then its rows in batches. */
static pb_status count_rows(const pb_sweep *s, const int64_t *todo, int64_t n_todo, const pb_batch_shape *shape,
                            const uint64_t *layer_bytes, pb_wave_counts *out) {
    memset(out, 0, sizeof *out);
    size_t rows = (size_t)shape->max_rows;
    count_scratch c = {malloc(sizeof(int) * rows), malloc(sizeof(int) * rows), malloc(sizeof(int) * rows),
                       malloc(sizeof(int) * (size_t)(shape->max_T + 1))};
    if (!c.pairs || !c.start || !c.p0 || !c.positions) {
        count_scratch_free(&c);
        return pb_fail(PB_ERR_OOM, "out of memory counting batches");
    }
    int held[2] = {-1, -1}, n = 0, tokens = 0, pair = -1, end = 0;
    int G = shape->group_pairs > 0 ? shape->group_pairs : 1;
    for (int64_t r = 0; r < n_todo; r++) {
        int row_pair = (int)(todo[r] / s->n_sites);
        if (row_pair >= end) { /* a new group: the last one's rows are done */
            if (n > 0)
                count_batch(s, c.pairs, c.start, c.p0, n, held, layer_bytes, out);
            n = tokens = 0;
            int first = end;
            while ((end = group_end(s, first, G, shape->max_tokens)) <= row_pair)
                first = end;
            count_group(s, first, end, held, layer_bytes, out);
        }
        if (row_pair != pair)
            count_pair(s, row_pair, out);
        pair = row_pair;
        const pb_site *site = &s->sites[todo[r] % s->n_sites];
        resolve_positions(s, site, pair, c.positions);
        if (row_unreachable(s, pair, site, c.positions[0]))
            continue;
        int need = s->spec.pairs[pair].base.T - c.positions[0];
        if (batch_full(n, tokens, need, shape->max_rows, shape->max_tokens) ||
            (n > 0 && !pairs_share_metric(s, c.pairs[0], pair))) {
            count_batch(s, c.pairs, c.start, c.p0, n, held, layer_bytes, out);
            n = tokens = 0;
        }
        pb_hook_kind hook;
        int hook_layer;
        patch_point(&s->model->cfg, site->component, site->layer, &hook, &hook_layer, &c.start[n]);
        c.pairs[n] = pair;
        c.p0[n++] = c.positions[0];
        tokens += need;
    }
    if (n > 0)
        count_batch(s, c.pairs, c.start, c.p0, n, held, layer_bytes, out);
    count_scratch_free(&c);
    return PB_OK;
}

pb_status pb_sweep_count_waves(const pb_sweep *s, const int64_t *rows, int64_t n_rows, const pb_batch_shape *shape,
                               const uint64_t *layer_bytes, pb_wave_counts *out) {
    int64_t *todo, n_todo;
    PB_TRY(pending_rows(s, rows, n_rows, &todo, &n_todo));
    pb_status status = count_rows(s, todo, n_todo, shape, layer_bytes, out);
    free(todo);
    return status;
}

/* Bytes of the layers a sweep of every row (done or not) reads with shape. */
static pb_status reads_of(const pb_sweep *s, const int64_t *all, const pb_batch_shape *shape,
                          const uint64_t *layer_bytes, double *bytes) {
    pb_wave_counts w;
    PB_TRY(count_rows(s, all, s->n_rows, shape, layer_bytes, &w));
    *bytes = w.bytes_read;
    return PB_OK;
}

pb_status pb_sweep_run_shape(const pb_sweep *s, size_t budget, int max_T, const uint64_t *layer_bytes,
                             pb_batch_shape *out) {
    PB_TRY(pb_sweep_batch_shape(s, budget, max_T, layer_bytes != NULL, out));
    if (!layer_bytes || s->spec.n_pairs < 2)
        return PB_OK;
    int64_t *all;
    PB_TRY(every_row(s, &all));
    double best;
    pb_status status = reads_of(s, all, out, layer_bytes, &best);
    size_t pair_caches = 2 * pb_sweep_cache_bytes(s, max_T);
    for (int G = 2; status == PB_OK && G <= 2 * s->spec.n_pairs; G *= 2) {
        int g = G < s->spec.n_pairs ? G : s->spec.n_pairs;
        size_t more = (size_t)(g - 1) * pair_caches;
        pb_batch_shape shape;
        if (more >= budget)
            break;
        if (batch_shape(s, budget - more, max_T, rows_cap(s, 1, g), &shape) != PB_OK) {
            pb_error_clear(); /* no room for a row beside these caches */
            break;
        }
        shape.group_pairs = g;
        shape.group_caches = more;
        double bytes = 0.0;
        if ((status = reads_of(s, all, &shape, layer_bytes, &bytes)) == PB_OK && bytes < best) {
            best = bytes;
            *out = shape;
        }
        if (g == s->spec.n_pairs)
            break;
    }
    free(all);
    return status;
}

/* ---- creation, results --------------------------------------------------- */

/* The device arrays of the metric_rows op: the logit columns it reads
 * (logit_diff: the unembedded rows are the positive then the negative ids,
 * so columns 0 .. n_positive + n_negative - 1; logprob, refusal_score: the
 * token ids) and, for KL, every pair's clean log-distribution. */
/* 1 when pair i reads the same metric tokens as pair i - 1. */
static int same_tokens_as_previous(const pb_sweep_spec *spec, int i) {
    return i > 0 && same_tokens(&spec->pairs[i - 1], &spec->pairs[i]);
}

/* Where each pair's tokens start in a per-pair table (its rows of the
 * unembedding, its device ids): a pair with the previous pair's tokens
 * shares its entry. at (n_pairs); returns the table's length. */
static int pair_token_offsets(const pb_sweep_spec *spec, int *at) {
    int used = 0;
    for (int i = 0; i < spec->n_pairs; i++) {
        if (same_tokens_as_previous(spec, i)) {
            at[i] = at[i - 1];
            continue;
        }
        at[i] = used;
        used += spec->pairs[i].n_positive + spec->pairs[i].n_negative;
    }
    return used;
}

static pb_status metric_device_setup(pb_sweep *s) {
    pb_backend *b = s->model->backend;
    const pb_metric_spec *ms = &s->spec.metric;
    int is_kl = ms->kind == PB_METRIC_KL, is_diff = ms->kind == PB_METRIC_LOGIT_DIFF;
    size_t n_ref = is_kl ? (size_t)s->spec.n_pairs * (size_t)s->model->cfg.vocab_size : 0;
    s->pair_ids_at = malloc(sizeof(int) * (size_t)s->spec.n_pairs);
    if (!s->pair_ids_at)
        return pb_fail(PB_ERR_OOM, "out of memory for the metric's token ids");
    size_t n_ids = is_kl ? 0 : (size_t)pair_token_offsets(&s->spec, s->pair_ids_at);
    int32_t *host = malloc(sizeof(int32_t) * (n_ids ? n_ids : 1));
    if (!host)
        return pb_fail(PB_ERR_OOM, "out of memory for the metric's token ids");
    /* logit_diff reads columns of the pair's unembedded rows (positive then
     * negative); logprob and refusal_score read the token ids. */
    for (int i = 0; !is_kl && i < s->spec.n_pairs; i++) {
        const pb_pair_spec *p = &s->spec.pairs[i];
        for (int k = 0; k < p->n_positive + p->n_negative; k++)
            host[s->pair_ids_at[i] + k] = is_diff ? k : p->positive[k];
    }
    /* doubles first: the allocation's alignment suits both */
    pb_status status = b->ops->alloc(b, &s->metric_arena, sizeof(double) * n_ref + sizeof(int32_t) * n_ids);
    if (status == PB_OK) {
        s->metric_ids = (int32_t *)((double *)s->metric_arena + n_ref);
        s->clean_logprobs_device = is_kl ? s->metric_arena : NULL;
        if (n_ids)
            status = b->ops->upload(b, s->metric_ids, host, sizeof(int32_t) * n_ids);
    }
    free(host);
    if (status != PB_OK)
        return pb_fail_context(status, "the metric's device arrays (%.1f MiB)",
                               (double)(sizeof(double) * n_ref + sizeof(int32_t) * n_ids) / (1 << 20));
    s->metric_on_device = 1;
    return PB_OK;
}

/* logit_diff reads only the unembedding rows of its tokens: each pair's
 * positive then negative rows, shared between neighbours with equal tokens. */
static pb_status unembed_rows_setup(pb_sweep *s) {
    pb_model *model = s->model;
    pb_backend *b = model->backend;
    s->pair_unembed = malloc(sizeof(int) * (size_t)s->spec.n_pairs);
    if (!s->pair_unembed)
        return pb_fail(PB_ERR_OOM, "out of memory for the metric's rows");
    s->n_unembed = pair_token_offsets(&s->spec, s->pair_unembed);
    size_t row_bytes = pb_dtype_bytes(model->output.dtype, (size_t)model->cfg.d_model);
    PB_TRY(b->ops->alloc(b, &s->unembed_rows, row_bytes * (size_t)s->n_unembed));
    for (int i = 0; i < s->spec.n_pairs; i++) {
        const pb_pair_spec *p = &s->spec.pairs[i];
        if (same_tokens_as_previous(&s->spec, i))
            continue;
        for (int k = 0; k < p->n_positive + p->n_negative; k++) {
            int id = k < p->n_positive ? p->positive[k] : p->negative[k - p->n_positive];
            PB_TRY(b->ops->copy(b, (char *)s->unembed_rows + (size_t)(s->pair_unembed[i] + k) * row_bytes,
                                (const char *)model->output.data + (size_t)id * row_bytes, row_bytes));
        }
    }
    return PB_OK;
}

/* Text in specs: prompts through the chat template (or plain, with BOS
 * as asked or as the tokenizer adds it), token strings plain;
 * special-token spellings are honoured in chat text only. */
static pb_status spec_tokenize(void *user, const char *text, int chat, int bos, const char *system, int32_t **ids,
                               int *n) {
    const pb_model *model = user;
    if (chat)
        return pb_model_chat_tokenize(model, system, text, ids, n);
    pb_status status = pb_model_tokenize_plain(model, text, 0, bos, ids, n, NULL);
    return status == PB_ERR_ARG && bos > 0 ? pb_fail_context(status, "\"bos\": true") : status;
}

static pb_status spec_token_text(void *user, int id, char *buf, size_t size) {
    return pb_model_token_text(user, id, buf, size);
}

/* Copies of the spec's text and folder (an exact twin is made from them). */
static pb_status keep_inputs(pb_sweep *s, const char *spec_json, const char *spec_dir) {
    s->spec_json = strdup(spec_json);
    s->spec_dir = spec_dir ? strdup(spec_dir) : NULL;
    if (!s->spec_json || (spec_dir && !s->spec_dir))
        return pb_fail(PB_ERR_OOM, "out of memory for the spec's text");
    return PB_OK;
}

pb_status pb_sweep_create(pb_sweep **out, pb_model *model, const char *spec_json, const char *spec_dir,
                          const pb_sweep_options *options) {
    if (!out || !model || !spec_json)
        return pb_fail(PB_ERR_ARG, "pb_sweep_create: model and spec are required");
    *out = NULL;
    pb_sweep *s = calloc(1, sizeof *s);
    if (!s)
        return pb_fail(PB_ERR_OOM, "out of memory for a sweep");
    s->model = model;
    s->mirror_max_bytes = PB_MIRROR_MAX_BYTES;
    if (options)
        s->options = *options;
    else
        s->options.metric_fn_residual_layer = -1;
    const pb_model_config *c = &model->cfg;
    const pb_spec_text text = {.tokenize = spec_tokenize, .token_text = spec_token_text, .user = model};
    pb_status status = pb_sweep_spec_parse_text(&s->spec, spec_json, spec_dir, c, &text);
    if (status != PB_OK) {
        free(s);
        return status;
    }
    if (s->options.metric_fn) {
        int layer = s->options.metric_fn_residual_layer;
        if (layer > c->n_layers) {
            pb_sweep_free(s);
            return pb_fail(PB_ERR_ARG, "metric callback: residual layer %d outside [0, %d]", layer, c->n_layers);
        }
        s->metric_step = layer >= 0 ? pb_step_attention(layer) : 2 * c->n_layers;
    } else if (s->spec.metric.kind == PB_METRIC_PROJECTION) {
        s->metric_step = pb_step_attention(s->spec.metric.layer + (s->spec.metric.hook_post ? 1 : 0));
    } else {
        s->metric_step = 2 * c->n_layers;
    }
    if ((status = expand_sites(s)) != PB_OK) {
        pb_sweep_free(s);
        return status;
    }
    int n_pairs = s->spec.n_pairs;
    s->n_rows = (int64_t)n_pairs * s->n_sites;
    s->base = calloc((size_t)n_pairs, sizeof *s->base);
    s->source = calloc((size_t)n_pairs, sizeof *s->source);
    s->cache_ready = calloc((size_t)n_pairs, sizeof *s->cache_ready);
    s->baseline_ready = calloc((size_t)n_pairs, 1);
    s->base_value = malloc(sizeof(double) * (size_t)n_pairs);
    s->source_value = malloc(sizeof(double) * (size_t)n_pairs);
    s->row_state = calloc((size_t)s->n_rows, 1);
    s->row_trivial = calloc((size_t)s->n_rows, 1);
    s->patched = malloc(sizeof(double) * (size_t)s->n_rows);
    if (!s->base || !s->source || !s->cache_ready || !s->baseline_ready || !s->base_value || !s->source_value ||
        !s->row_state || !s->row_trivial || !s->patched) {
        pb_sweep_free(s);
        return pb_fail(PB_ERR_OOM, "out of memory for %lld rows", (long long)s->n_rows);
    }
    for (int i = 0; i < n_pairs; i++)
        s->base_value[i] = s->source_value[i] = NAN;
    for (int64_t r = 0; r < s->n_rows; r++)
        s->patched[r] = NAN;
    if (!s->options.metric_fn && s->spec.metric.kind == PB_METRIC_KL) {
        s->clean_logprobs_host = malloc(sizeof(double) * (size_t)n_pairs * c->vocab_size);
        if (!s->clean_logprobs_host) {
            pb_sweep_free(s);
            return pb_fail(PB_ERR_OOM, "out of memory for %d clean distributions", n_pairs);
        }
    }
    /* A shape-only model (planning) has no weights to gather nor a device. */
    if (!s->options.metric_fn && s->spec.metric.kind == PB_METRIC_LOGIT_DIFF && !model->shape_only &&
        (status = unembed_rows_setup(s)) != PB_OK) {
        pb_sweep_free(s);
        return status;
    }
    if (metric_reducible(s) && !model->shape_only && model->backend->ops->metric_rows) {
        if ((status = metric_device_setup(s)) != PB_OK) {
            pb_sweep_free(s);
            return status;
        }
    }
    if ((status = keep_inputs(s, spec_json, spec_dir)) != PB_OK) {
        pb_sweep_free(s);
        return status;
    }
    /* FLOPs of the naive method: one full forward (logits at every
     * position) per row. */
    double d = c->d_model, qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    for (int i = 0; i < n_pairs; i++) {
        double T = s->spec.pairs[i].base.T;
        double per_layer = T * (2 * d * (qd + 2 * kvd) + 2 * qd * d + 6 * d * c->d_mlp) + 4 * qd * T * (T + 1) / 2;
        s->flops_naive += (double)s->n_sites * (c->n_layers * per_layer + 2 * T * d * c->vocab_size);
    }
    *out = s;
    return PB_OK;
}

void pb_sweep_free(pb_sweep *s) {
    if (!s)
        return;
    for (int i = 0; s->base && i < s->spec.n_pairs; i++) {
        cache_free(s, &s->base[i]);
        cache_free(s, &s->source[i]);
    }
    device_free(s, s->unembed_rows);
    device_free(s, s->metric_arena);
    free(s->pair_unembed);
    free(s->pair_ids_at);
    free(s->base);
    free(s->source);
    free(s->cache_ready);
    free(s->baseline_ready);
    free(s->base_value);
    free(s->source_value);
    free(s->clean_logprobs_host);
    free(s->row_state);
    free(s->row_trivial);
    free(s->patched);
    free(s->sites);
    free(s->site_positions);
    pb_sweep_spec_free(&s->spec);
    free(s->spec_json);
    free(s->spec_dir);
    pb_atp_verification_free(s->verification);
    free(s->verification);
    free(s);
}

pb_status pb_sweep_create_exact_twin(const pb_sweep *s, pb_sweep **out) {
    PB_TRY(pb_sweep_create(out, s->model, s->spec_json, s->spec_dir, &s->options));
    (*out)->spec.method = PB_METHOD_EXACT;
    (*out)->spec.verify_top = 0;
    return PB_OK;
}

void pb_sweep_set_verification(pb_sweep *s, struct pb_atp_verification *v) {
    pb_atp_verification_free(s->verification);
    free(s->verification);
    s->verification = v;
}

const struct pb_atp_verification *pb_sweep_verification(const pb_sweep *s) { return s->verification; }

int pb_sweep_pair_usable(const pb_sweep *s, int pair) {
    return s->baseline_ready[pair] && fabs(s->source_value[pair] - s->base_value[pair]) >= s->spec.effect_floor;
}

double pb_sweep_row_effect(const pb_sweep *s, int pair, int64_t site) {
    int64_t row = (int64_t)pair * s->n_sites + site;
    if (!pb_sweep_pair_usable(s, pair) || s->row_state[row] != PB_ROW_DONE)
        return NAN;
    if (s->row_trivial[row])
        return 0.0;
    return (s->patched[row] - s->base_value[pair]) / (s->source_value[pair] - s->base_value[pair]);
}

pb_status pb_sweep_run(pb_sweep *s) {
    if (!s)
        return pb_fail(PB_ERR_ARG, "pb_sweep_run: sweep is NULL");
    int64_t *all;
    PB_TRY(every_row(s, &all));
    pb_status status = pb_sweep_run_rows(s, all, s->n_rows);
    free(all);
    if (status == PB_OK)
        status = pb_atp_verify(s);
    if (status != PB_OK)
        return status;
    int usable = 0;
    for (int i = 0; i < s->spec.n_pairs; i++)
        usable += pb_sweep_pair_usable(s, i);
    if (usable == 0) {
        double clean = s->spec.pairs[0].clean_is_source ? s->source_value[0] : s->base_value[0];
        double corrupted = s->spec.pairs[0].clean_is_source ? s->base_value[0] : s->source_value[0];
        return pb_fail(PB_ERR_NUMERIC,
                       "every pair has |clean - corrupted| below the effect floor %g (pair 0: clean %.6g, corrupted "
                       "%.6g): normalised effects would divide by ~0; choose a metric or prompts that differ",
                       s->spec.effect_floor, clean, corrupted);
    }
    return PB_OK;
}

int64_t pb_sweep_site_count(const pb_sweep *s) { return s ? s->n_sites : 0; }

pb_status pb_sweep_get_pair(const pb_sweep *s, int pair, double *base, double *source) {
    if (!s || pair < 0 || pair >= s->spec.n_pairs)
        return pb_fail(PB_ERR_ARG, "pair %d outside [0, %d)", pair, s ? s->spec.n_pairs : 0);
    if (base)
        *base = s->base_value[pair];
    if (source)
        *source = s->source_value[pair];
    return PB_OK;
}

pb_status pb_sweep_get_row(const pb_sweep *s, int pair, int64_t site, double *patched, double *effect) {
    if (!s || pair < 0 || pair >= s->spec.n_pairs || site < 0 || site >= s->n_sites)
        return pb_fail(PB_ERR_ARG, "row (pair %d, site %lld) is out of range", pair, (long long)site);
    int64_t row = (int64_t)pair * s->n_sites + site;
    if (patched)
        *patched = s->row_state[row] == PB_ROW_DONE ? s->patched[row] : NAN;
    if (effect)
        *effect = pb_sweep_row_effect(s, pair, site);
    return PB_OK;
}

pb_status pb_sweep_get_site(const pb_sweep *s, int64_t i, pb_site_result *r) {
    if (!s || !r || i < 0 || i >= s->n_sites)
        return pb_fail(PB_ERR_ARG, "site %lld is out of range", (long long)i);
    const pb_site *site = &s->sites[i];
    memset(r, 0, sizeof *r);
    r->component = site->component;
    r->layer = site->layer;
    r->head = site->head;
    r->position = site->spec_position;
    r->all_positions = site->all_positions;
    r->n_positions = site->n_positions;
    r->positions = site->positions;
    double sum = 0.0, sum_sq = 0.0, patched = 0.0;
    int n = 0;
    for (int p = 0; p < s->spec.n_pairs; p++) {
        double e = pb_sweep_row_effect(s, p, i);
        if (isnan(e))
            continue;
        sum += e;
        sum_sq += e * e;
        patched += s->patched[(int64_t)p * s->n_sites + i];
        n++;
    }
    r->effect = n ? sum / n : NAN;
    r->patched = n ? patched / n : NAN;
    double var = n > 1 ? (sum_sq - sum * sum / n) / (n - 1) : 0.0;
    r->standard_error = n > 1 ? sqrt(var > 0 ? var : 0) / sqrt((double)n) : (n ? 0.0 : NAN);
    r->significant = n && fabs(r->effect) >= s->spec.significance_threshold;
    return PB_OK;
}

pb_status pb_sweep_get_summary(const pb_sweep *s, pb_sweep_summary *out) {
    if (!s || !out)
        return pb_fail(PB_ERR_ARG, "pb_sweep_get_summary: sweep and summary are required");
    memset(out, 0, sizeof *out);
    out->mode = s->spec.mode;
    out->metric = s->options.metric_fn ? PB_METRIC_CALLBACK : s->spec.metric.kind;
    out->n_pairs = s->spec.n_pairs;
    out->n_sites = s->n_sites;
    out->n_rows = s->n_rows;
    out->n_rows_executed = s->n_rows_executed;
    out->n_rows_done = s->n_rows_done;
    out->n_rows_restored = s->n_rows_restored;
    out->n_rows_executed_restored = s->n_rows_executed_restored;
    out->flops_executed = s->flops_executed;
    out->flops_naive = s->flops_naive;
    out->effect_floor = s->spec.effect_floor;
    out->significance_threshold = s->spec.significance_threshold;
    double clean = 0.0, corrupted = 0.0;
    int n = 0;
    for (int p = 0; p < s->spec.n_pairs; p++) {
        out->n_pairs_used += pb_sweep_pair_usable(s, p);
        if (!s->baseline_ready[p])
            continue;
        int cs = s->spec.pairs[p].clean_is_source;
        clean += cs ? s->source_value[p] : s->base_value[p];
        corrupted += cs ? s->base_value[p] : s->source_value[p];
        n++;
    }
    out->clean_baseline = n ? clean / n : NAN;
    out->corrupted_baseline = n ? corrupted / n : NAN;
    out->total_effect = out->clean_baseline - out->corrupted_baseline;
    for (int64_t i = 0; i < s->n_sites; i++) {
        pb_site_result r;
        pb_sweep_get_site(s, i, &r);
        out->n_significant += r.significant;
    }
    out->circuit_fraction = s->n_sites ? (double)out->n_significant / (double)s->n_sites : 0.0;
    return PB_OK;
}

/* ---- rows computed elsewhere (ranks, checkpoints) ----------------------- */

double pb_sweep_row_cost(const pb_sweep *s, int64_t row) {
    if (!s || row < 0 || row >= s->n_rows)
        return -1.0;
    int pair = (int)(row / s->n_sites);
    const pb_site *site = &s->sites[row % s->n_sites];
    int T = s->spec.pairs[pair].base.T, first = T;
    if (site->all_positions) {
        const int *map = s->spec.pairs[pair].position_map;
        for (first = 0; first < T && map[first] < 0; first++)
            ;
    }
    for (int k = 0; k < site->n_positions; k++) {
        int p = site->positions[k] < 0 ? T + site->positions[k] : site->positions[k];
        if (p < first)
            first = p;
    }
    /* Layers from the patch layer on; half a layer for patches entering at
     * the MLP. Positions from the first patched one to the end. */
    const pb_model_config *c = &s->model->cfg;
    pb_hook_kind hook;
    int hook_layer, start;
    patch_point(c, site->component, site->layer, &hook, &hook_layer, &start);
    double layers = (double)(2 * c->n_layers - start) / 2.0;
    double positions_left = first < T ? (double)(T - first) : 0.0;
    return layers > 0 && positions_left > 0 ? layers * positions_left : 0.0;
}

int pb_sweep_row_state(const pb_sweep *s, int64_t row) {
    if (!s || row < 0 || row >= s->n_rows)
        return -1;
    if (s->row_state[row] != PB_ROW_DONE)
        return 0;
    return s->row_trivial[row] ? 2 : 1;
}

pb_status pb_sweep_set_row(pb_sweep *s, int64_t row, double patched, int trivial, int executed) {
    if (!s || row < 0 || row >= s->n_rows)
        return pb_fail(PB_ERR_ARG, "row %lld outside [0, %lld)", (long long)row, (long long)(s ? s->n_rows : 0));
    if (s->row_state[row] != PB_ROW_DONE) { /* a row set twice counts once */
        s->n_rows_done++;
        s->n_rows_executed += executed != 0;
    }
    s->patched[row] = patched;
    s->row_trivial[row] = trivial != 0;
    s->row_state[row] = PB_ROW_DONE;
    return PB_OK;
}

pb_status pb_sweep_set_pair(pb_sweep *s, int pair, double base, double source) {
    if (!s || pair < 0 || pair >= s->spec.n_pairs)
        return pb_fail(PB_ERR_ARG, "pair %d outside [0, %d)", pair, s ? s->spec.n_pairs : 0);
    s->base_value[pair] = base;
    s->source_value[pair] = source;
    s->baseline_ready[pair] = 1;
    return PB_OK;
}

/* ---- internal readers (sweep_access.h) ----------------------------------- */

const pb_model *pb_sweep_model(const pb_sweep *s) { return s->model; }
const pb_sweep_spec *pb_sweep_spec_of(const pb_sweep *s) { return &s->spec; }
int pb_sweep_metric_residual_layer(const pb_sweep *s) { return s->options.metric_fn_residual_layer; }
int pb_sweep_positions_from_end(const pb_sweep *s) { return s->positions_aligned_from_end; }
int64_t pb_sweep_row_count(const pb_sweep *s) { return s->n_rows; }
int64_t pb_sweep_batch_count(const pb_sweep *s) { return s->n_batches; }
int64_t pb_sweep_tokens_packed(const pb_sweep *s) { return s->tokens_packed; }
int pb_sweep_metric_on_device(const pb_sweep *s) { return s->metric_on_device; }
int pb_sweep_metric_is_callback(const pb_sweep *s) { return s->options.metric_fn != NULL; }
int pb_sweep_metric_position(const pb_sweep *s, int T) { return metric_position(s, T); }

int pb_sweep_site_positions(const pb_sweep *s, int64_t site, int pair, int *out) {
    return resolve_positions(s, &s->sites[site], pair, out);
}

int pb_sweep_pair_ready(const pb_sweep *s, int pair) {
    return s && pair >= 0 && pair < s->spec.n_pairs && s->baseline_ready[pair];
}

void pb_sweep_work_done_here(const pb_sweep *s, int64_t *rows_executed, double *flops_executed) {
    *rows_executed = s->n_rows_executed - s->n_rows_executed_restored;
    *flops_executed = s->flops_executed - s->flops_executed_restored;
}

void pb_sweep_add_work(pb_sweep *s, int64_t rows_executed, double flops_executed) {
    s->n_rows_executed += rows_executed;
    s->flops_executed += flops_executed;
}

void pb_sweep_add_restored(pb_sweep *s, int64_t rows_restored, int64_t rows_executed, double flops_executed) {
    s->n_rows_executed += rows_executed;
    s->n_rows_executed_restored += rows_executed;
    s->n_rows_restored += rows_restored;
    s->flops_executed += flops_executed;
    s->flops_executed_restored += flops_executed;
}
