/* The executor (see exec.h): packs ragged jobs into one token matrix and
 * runs layer blocks over the active prefix of jobs. Jobs are ordered by
 * start step, so the jobs active at any step are a prefix of that order
 * and their tokens a prefix of the packed matrix: every projection is one
 * GEMM over exactly the tokens that need it. */
#include <stdlib.h>
#include <string.h>

#include "model/components.h"
#include "model/exec.h"
#include "util/array.h"
#include "util/internal.h"

struct pb_exec {
    pb_model *model;
    int max_tokens;
    int max_T;
    void *arena;
    float *x;         /* (max_tokens, d_model) residual stream */
    float *xn;        /* (max_tokens, d_model) normalised sublayer input */
    float *q;         /* (max_tokens, n_heads * head_dim) */
    float *k;         /* (max_tokens, kv_dim) new keys */
    float *v;         /* (max_tokens, kv_dim) new values */
    float *z;         /* (max_tokens, n_heads * head_dim) */
    float *sub;       /* (max_tokens, d_model) attention or MLP output */
    float *block_in;  /* (max_tokens, d_model) parallel blocks: the residual entering the layer; else unused */
    float *gate;      /* (max_tokens, d_mlp) */
    float *up;        /* (max_tokens, d_mlp) */
    float *fused;     /* (max_tokens, max(n_heads * head_dim + 2 kv_dim, 2 d_mlp)) a fused GEMM's output */
    float *k_scratch; /* (max_T, kv_dim) one layer of one prefix-mode job */
    float *v_scratch; /* (max_T, kv_dim) */
    int32_t *ids;     /* (max_tokens) */
    int32_t *pos;     /* (max_tokens), right after ids' 16-aligned slot */
    /* per run (host) */
    int32_t *staging;            /* (ids_slot + max_tokens): ids and positions as the device holds them, one upload */
    int *order;                  /* (n_jobs) job indices by start step */
    int *offset;                 /* (n_jobs + 1) packed row of each job, by job index */
    pb_attention_job *attn_jobs; /* (n_jobs) */
    int capacity_jobs;
    pb_copy_region *regions; /* patch writes of one hook point, grown as needed */
    size_t capacity_regions;
    double flops;
};

static size_t round16(size_t n) { return (n + 15) / 16 * 16; }

#define PB_EXEC_SLOTS 15

static void workspace_sizes(const pb_model_config *c, int max_tokens, int max_T, size_t sizes[PB_EXEC_SLOTS]) {
    size_t T = (size_t)max_tokens, d = (size_t)c->d_model, qd = (size_t)c->n_heads * c->head_dim;
    size_t kvd = (size_t)c->n_kv_heads * c->head_dim, mlp = (size_t)c->d_mlp;
    size_t fused = qd + 2 * kvd > 2 * mlp ? qd + 2 * kvd : 2 * mlp;
    size_t s[PB_EXEC_SLOTS] = {T * d,
                               T * d,
                               T * qd,
                               T * kvd,
                               T * kvd,
                               T * qd,
                               T * d,
                               T * mlp,
                               T * mlp,
                               T * fused,
                               (size_t)max_T * kvd,
                               (size_t)max_T * kvd,
                               T,
                               T,
                               c->parallel_block ? T * d : 0};
    memcpy(sizes, s, sizeof s);
}

size_t pb_exec_workspace_bytes(const pb_model_config *cfg, int max_tokens, int max_T) {
    size_t sizes[PB_EXEC_SLOTS], total = 0;
    workspace_sizes(cfg, max_tokens, max_T, sizes);
    for (int i = 0; i < PB_EXEC_SLOTS; i++)
        total += round16(sizes[i]);
    return total * sizeof(float);
}

pb_status pb_exec_create(pb_exec **out, pb_model *model, int max_tokens, int max_T) {
    *out = NULL;
    if (max_tokens <= 0 || max_T <= 0)
        return pb_fail(PB_ERR_ARG, "executor: max_tokens = %d and max_T = %d must be positive", max_tokens, max_T);
    if (model->shape_only)
        return pb_fail(PB_ERR_ARG, "%s was loaded shape-only (for planning): it has no weights to run", model->path);
    pb_exec *e = calloc(1, sizeof *e);
    if (!e)
        return pb_fail(PB_ERR_OOM, "executor: out of memory");
    e->model = model;
    e->max_tokens = max_tokens;
    e->max_T = max_T;
    size_t bytes = pb_exec_workspace_bytes(&model->cfg, max_tokens, max_T);
    pb_status status = model->backend->ops->alloc(model->backend, &e->arena, bytes);
    if (status != PB_OK) {
        free(e);
        return pb_fail_context(status, "executor workspace for %d tokens (%.1f MiB)", max_tokens,
                               (double)bytes / (1 << 20));
    }
    size_t sizes[PB_EXEC_SLOTS];
    workspace_sizes(&model->cfg, max_tokens, max_T, sizes);
    void **slots[PB_EXEC_SLOTS] = {(void **)&e->x,   (void **)&e->xn,    (void **)&e->q,         (void **)&e->k,
                                   (void **)&e->v,   (void **)&e->z,     (void **)&e->sub,       (void **)&e->gate,
                                   (void **)&e->up,  (void **)&e->fused, (void **)&e->k_scratch, (void **)&e->v_scratch,
                                   (void **)&e->ids, (void **)&e->pos,   (void **)&e->block_in};
    float *cursor = e->arena;
    for (int i = 0; i < PB_EXEC_SLOTS; i++) {
        *slots[i] = cursor;
        cursor += round16(sizes[i]);
    }
    e->staging = calloc(round16((size_t)max_tokens) + (size_t)max_tokens, sizeof(int32_t));
    if (!e->staging) {
        pb_exec_free(e);
        return pb_fail(PB_ERR_OOM, "executor: out of memory for %d tokens' ids and positions", max_tokens);
    }
    *out = e;
    return PB_OK;
}

void pb_exec_free(pb_exec *e) {
    if (!e)
        return;
    e->model->backend->ops->free(e->model->backend, e->arena);
    free(e->order);
    free(e->offset);
    free(e->attn_jobs);
    free(e->regions);
    free(e->staging);
    free(e);
}

double pb_exec_flops(const pb_exec *e) { return e->flops; }

float *pb_exec_output(pb_exec *e, int job) { return e->x + (size_t)e->offset[job] * e->model->cfg.d_model; }

/* Row width of a hook's activation (embedding and final norm: d_model). */
static int hook_width(const pb_model_config *c, pb_hook_kind hook) {
    int64_t shape[2] = {0, 1};
    int n_dims = pb_hook_shape(hook, c, shape);
    return (int)(n_dims == 2 ? shape[0] * shape[1] : shape[0]);
}

/* The latest start step from which a patch at (hook, layer) is still
 * applied: the step of the layer that reads or writes the hook (a parallel
 * block does both halves in its attention step). */
static int patch_last_start(const pb_model_config *c, pb_hook_kind hook, int layer) {
    pb_component comp;
    if (!pb_component_from_hook(hook, &comp) || c->parallel_block)
        return pb_step_attention(layer);
    return pb_component_info_of(comp)->half == PB_HALF_MLP ? pb_step_mlp(layer) : pb_step_attention(layer);
}

static pb_status check_jobs(pb_exec *e, const pb_exec_job *jobs, int n_jobs, int stop_step) {
    const pb_model_config *c = &e->model->cfg;
    int final = 2 * c->n_layers, total = 0;
    if (stop_step < 0 || stop_step > final)
        return pb_fail(PB_ERR_ARG, "executor: stop step %d outside [0, %d]", stop_step, final);
    for (int j = 0; j < n_jobs; j++) {
        const pb_exec_job *job = &jobs[j];
        if (job->T <= 0 || job->p0 < 0 || job->p0 >= job->T)
            return pb_fail(PB_ERR_ARG, "executor: job %d has T = %d, p0 = %d", j, job->T, job->p0);
        if (job->start_step < 0 || job->start_step > stop_step)
            return pb_fail(PB_ERR_ARG, "executor: job %d starts at step %d, after the stop step %d", j, job->start_step,
                           stop_step);
        if (job->start_step == 0 ? !job->ids : !job->init_x)
            return pb_fail(PB_ERR_ARG, "executor: job %d lacks %s", j, job->start_step == 0 ? "ids" : "init_x");
        if (c->parallel_block && job->start_step % 2 && job->start_step < final)
            return pb_fail(PB_ERR_ARG, "executor: job %d starts at an MLP step; a parallel block has none", j);
        if (job->k_prefix ? job->T > e->max_T || job->p0 > job->kv_prefix_capacity : job->T > job->kv_capacity)
            return pb_fail(PB_ERR_ARG, "executor: job %d of %d tokens does not fit its key-value buffer", j, job->T);
        total += job->T - job->p0;
        const pb_exec_patch *p = job->patch;
        if (p) {
            if (job->start_step > patch_last_start(c, p->hook, p->layer))
                return pb_fail(PB_ERR_ARG, "executor: job %d starts at step %d, after its patch at layer %d", j,
                               job->start_step, p->layer);
            for (int i = 0; i < p->n_positions; i++)
                if (p->positions[i] < job->p0 || p->positions[i] >= job->T)
                    return pb_fail(PB_ERR_ARG, "executor: job %d patches position %d outside [%d, %d)", j,
                                   p->positions[i], job->p0, job->T);
        }
    }
    if (total > e->max_tokens)
        return pb_fail(PB_ERR_ARG, "executor: %d tokens exceed the workspace of %d", total, e->max_tokens);
    return PB_OK;
}

/* Patch application and the caller's hook for every active job at one
 * hook point. buffer holds the packed activation of width `width`. Every
 * job's patch writes at this point go to the backend as one batch of
 * regions (one kernel on the GPU), before any hook runs. */
static pb_status hook_point(pb_exec *e, const pb_exec_job *jobs, int n_active, pb_hook_kind hook, int layer,
                            float *buffer, pb_exec_hook_fn fn, void *user) {
    const pb_model_config *c = &e->model->cfg;
    pb_backend *b = e->model->backend;
    int width = hook_width(c, hook);
    int n_regions = 0;
    for (int a = 0; a < n_active; a++) {
        const pb_exec_patch *p = jobs[e->order[a]].patch;
        if (p && p->hook == hook && p->layer == layer)
            n_regions += p->n_positions;
    }
    PB_TRY(pb_array_reserve(&e->regions, &e->capacity_regions, (size_t)n_regions, sizeof *e->regions, "patch writes"));
    n_regions = 0;
    for (int a = 0; a < n_active; a++) {
        int j = e->order[a];
        const pb_exec_job *job = &jobs[j];
        float *rows = buffer + (size_t)e->offset[j] * width;
        const pb_exec_patch *p = job->patch;
        if (p && p->hook == hook && p->layer == layer) {
            int slice = p->head >= 0 ? c->head_dim : width;
            size_t column = p->head >= 0 ? (size_t)p->head * c->head_dim : 0;
            for (int i = 0; i < p->n_positions; i++)
                e->regions[n_regions++] = (pb_copy_region){.dst = rows + (size_t)(p->positions[i] - job->p0) * width +
                                                                  column,
                                                           .src = p->values + (size_t)i * slice,
                                                           .n = (size_t)slice};
        }
    }
    if (n_regions && b->ops->copy_regions)
        PB_TRY(b->ops->copy_regions(b, e->regions, n_regions));
    for (int i = 0; n_regions && !b->ops->copy_regions && i < n_regions; i++)
        PB_TRY(b->ops->copy(b, e->regions[i].dst, e->regions[i].src, sizeof(float) * e->regions[i].n));
    for (int a = 0; fn && a < n_active; a++) {
        int j = e->order[a];
        PB_TRY(fn(user, j, hook, layer, buffer + (size_t)e->offset[j] * width, jobs[j].T - jobs[j].p0, jobs[j].p0));
    }
    return PB_OK;
}

/* Columns [column, column + width) of src (rows, stride) into dst (rows,
 * width): one piece of a fused GEMM's output. */
static pb_status split_columns(pb_exec *e, float *dst, const float *src, size_t stride, size_t column, size_t width,
                               int rows) {
    pb_backend *b = e->model->backend;
    if (b->ops->copy_rows)
        return b->ops->copy_rows(b, dst, width, src + column, stride, width, (size_t)rows);
    for (int r = 0; r < rows; r++)
        PB_TRY(b->ops->copy(b, dst + (size_t)r * width, src + (size_t)r * stride + column, sizeof(float) * width));
    return PB_OK;
}

/* q, k, v (rows, qd / kvd / kvd) of xn: one GEMM against the fused matrix
 * where the load made one (each output column is the same dot product
 * either way), then split, so the hooks see what separate GEMMs give. */
static pb_status project_qkv(pb_exec *e, const pb_layer_weights *W, int rows) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    size_t d = (size_t)c->d_model, qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    if (!W->w_qkv.data) {
        PB_TRY(b->ops->matmul(b, e->q, e->xn, W->wq.data, W->wq.dtype, W->bq, rows, (int)qd, (int)d));
        PB_TRY(b->ops->matmul(b, e->k, e->xn, W->wk.data, W->wk.dtype, W->bk, rows, (int)kvd, (int)d));
        return b->ops->matmul(b, e->v, e->xn, W->wv.data, W->wv.dtype, W->bv, rows, (int)kvd, (int)d);
    }
    size_t n = qd + 2 * kvd;
    PB_TRY(b->ops->matmul(b, e->fused, e->xn, W->w_qkv.data, W->w_qkv.dtype, W->b_qkv, rows, (int)n, (int)d));
    PB_TRY(split_columns(e, e->q, e->fused, n, 0, qd, rows));
    PB_TRY(split_columns(e, e->k, e->fused, n, qd, kvd, rows));
    return split_columns(e, e->v, e->fused, n, qd + kvd, kvd, rows);
}

/* act(gate) * up (rows, d_mlp) of xn into e->gate. With fused weights one
 * GEMM writes gate and up side by side and swiglu reads the two halves where
 * they lie: no hook point sees gate or up alone, so nothing is split. */
static pb_status mlp_activation(pb_exec *e, const pb_layer_weights *W, int rows) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    size_t mlp = (size_t)c->d_mlp;
    if (c->plain_mlp) {
        /* act(up x + b_up), no gate (GPT-2, GPT-NeoX) */
        PB_TRY(b->ops->matmul(b, e->gate, e->xn, W->w_up.data, W->w_up.dtype, W->b_up, rows, c->d_mlp, c->d_model));
        return b->ops->activate(b, e->gate, (size_t)rows * mlp, c->activation);
    }
    if (!W->w_gate_up.data) {
        PB_TRY(b->ops->matmul(b, e->gate, e->xn, W->w_gate.data, W->w_gate.dtype, NULL, rows, c->d_mlp, c->d_model));
        PB_TRY(b->ops->matmul(b, e->up, e->xn, W->w_up.data, W->w_up.dtype, NULL, rows, c->d_mlp, c->d_model));
        return b->ops->glu(b, e->gate, e->gate, e->up, (size_t)rows, mlp, mlp, c->activation);
    }
    PB_TRY(b->ops->matmul(b, e->fused, e->xn, W->w_gate_up.data, W->w_gate_up.dtype, NULL, rows, 2 * c->d_mlp,
                          c->d_model));
    return b->ops->glu(b, e->gate, e->fused, e->fused + mlp, (size_t)rows, mlp, 2 * mlp, c->activation);
}

static int compare_start(const void *a, const void *b, void *jobs) {
    const pb_exec_job *j = jobs;
    int x = j[*(const int *)a].start_step, y = j[*(const int *)b].start_step;
    return x != y ? (x < y ? -1 : 1) : (*(const int *)a < *(const int *)b ? -1 : 1);
}

/* Insertion sort by start step (stable); batches are small. */
static void order_jobs(int *order, const pb_exec_job *jobs, int n) {
    for (int i = 0; i < n; i++)
        order[i] = i;
    for (int i = 1; i < n; i++)
        for (int k = i; k > 0 && compare_start(&order[k - 1], &order[k], (void *)jobs) > 0; k--) {
            int t = order[k];
            order[k] = order[k - 1];
            order[k - 1] = t;
        }
}

/* Query-key pairs n new queries after a p0 prefix attend: every earlier
 * position, or at most `window` of them. */
static double attended_pairs(int p0, int n, int window) {
    double pairs = 0.0;
    for (int t = 0; t < n; t++) {
        int keys = p0 + t + 1;
        pairs += window > 0 && keys > window ? window : keys;
    }
    return pairs;
}

double pb_exec_step_flops(const pb_model_config *c, int step, int p0, int T) {
    double d = c->d_model, qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double n = T - p0;
    double mlp = (c->plain_mlp ? 4.0 : 6.0) * n * d * c->d_mlp;
    if (step % 2)
        return c->parallel_block ? 0.0 : mlp; /* a parallel block's MLP runs in its attention step */
    int window = pb_model_attention_params(c, step / 2).window;
    /* the projections in and out, QK^T and PV over each new query's causal window */
    double attention = 2.0 * n * d * (qd + 2.0 * kvd) + 2.0 * n * d * qd +
                       4.0 * qd * attended_pairs(p0, T - p0, window);
    return attention + (c->parallel_block ? mlp : 0.0);
}

/* Sandwich norm (Gemma-2/3): the sublayer output in e->sub, seen at its
 * own hook point, normalised in place before it becomes hook_attn_out or
 * hook_mlp_out. Nothing in other architectures. */
static pb_status post_norm(pb_exec *e, const pb_exec_job *jobs, int n_active, int rows, pb_hook_kind hook, int L,
                           const float *weight, pb_exec_hook_fn fn, void *user) {
    const pb_model_config *c = &e->model->cfg;
    if (!c->sandwich_norm)
        return PB_OK;
    PB_TRY(hook_point(e, jobs, n_active, hook, L, e->sub, fn, user));
    return pb_model_norm(e->model, e->sub, e->sub, weight, NULL, rows, c->d_model);
}

/* xn (rows, d_model) = the sublayer's input: the model's norm of the
 * residual `from`, or the residual itself without pre-norms (OLMo-2). */
static pb_status sublayer_input(pb_exec *e, const float *from, const float *weight, const float *bias, int rows) {
    pb_model *m = e->model;
    size_t d = (size_t)m->cfg.d_model;
    if (m->cfg.no_pre_norm)
        return m->backend->ops->copy(m->backend, e->xn, from, sizeof(float) * (size_t)rows * d);
    return pb_model_norm(m, e->xn, from, weight, bias, rows, (int)d);
}

/* RoPE on the packed q and k rows of the active jobs, one call per run of
 * consecutive jobs whose sequences use the same frequencies (LongRoPE picks
 * them by each job's length T; every other model has one run). */
static pb_status rotate_queries_keys(pb_exec *e, const pb_exec_job *jobs, int n_active, int rows, int L) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    int dims = c->rotary_dims > 0 ? c->rotary_dims : c->head_dim;
    size_t qd = (size_t)c->n_heads * c->head_dim, kvd = (size_t)c->n_kv_heads * c->head_dim;
    float scale = pb_rope_scale(c);
    for (int a = 0; a < n_active;) {
        const float *inv_freq = pb_model_inv_freq(m, L, jobs[e->order[a]].T);
        int next = a + 1;
        while (next < n_active && pb_model_inv_freq(m, L, jobs[e->order[next]].T) == inv_freq)
            next++;
        int first = e->offset[e->order[a]], end = next < n_active ? e->offset[e->order[next]] : rows;
        const int32_t *pos = e->pos + first;
        PB_TRY(b->ops->rope(b, e->q + first * qd, pos, inv_freq, end - first, c->n_heads, c->head_dim, dims, scale));
        PB_TRY(
            b->ops->rope(b, e->k + first * kvd, pos, inv_freq, end - first, c->n_kv_heads, c->head_dim, dims, scale));
        a = next;
    }
    return PB_OK;
}

/* q, k, v of xn (hook_q/k/v), then q/k norms and RoPE (hook_rot_q/k). */
static pb_status queries_keys_values(pb_exec *e, const pb_layer_weights *W, const pb_exec_job *jobs, int n_active,
                                     int rows, int L, pb_exec_hook_fn fn, void *user) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    const pb_backend_ops *ops = m->backend->ops;
    pb_backend *b = m->backend;
    int qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    PB_TRY(project_qkv(e, W, rows));
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_Q, L, e->q, fn, user));
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_K, L, e->k, fn, user));
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_V, L, e->v, fn, user));
    if (c->qk_norm && c->qk_norm_full) {
        /* one norm over each row's whole projection (OLMo-2) */
        PB_TRY(ops->rmsnorm(b, e->q, e->q, W->q_norm, rows, qd, c->rms_eps));
        PB_TRY(ops->rmsnorm(b, e->k, e->k, W->k_norm, rows, kvd, c->rms_eps));
    } else if (c->qk_norm) {
        /* every head of every row is one norm over head_dim */
        PB_TRY(ops->rmsnorm(b, e->q, e->q, W->q_norm, rows * c->n_heads, c->head_dim, c->rms_eps));
        PB_TRY(ops->rmsnorm(b, e->k, e->k, W->k_norm, rows * c->n_kv_heads, c->head_dim, c->rms_eps));
    }
    if (c->position == PB_POSITION_ROPE)
        PB_TRY(rotate_queries_keys(e, jobs, n_active, rows, L));
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_ROT_Q, L, e->q, fn, user));
    return hook_point(e, jobs, n_active, PB_HOOK_ROT_K, L, e->k, fn, user);
}

static pb_status mlp_sublayer(pb_exec *e, const pb_layer_weights *W, const pb_exec_job *jobs, int n_active, int rows,
                              int L, const float *from, pb_exec_hook_fn fn, void *user);

static pb_status attention_block(pb_exec *e, const pb_layer_weights *W, const pb_exec_job *jobs, int n_active, int rows,
                                 int L, pb_exec_hook_fn fn, void *user) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    const pb_backend_ops *ops = m->backend->ops;
    pb_backend *b = m->backend;
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;

    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_RESID_PRE, L, e->x, fn, user));
    const float *from = e->x;
    if (c->parallel_block) {
        /* both halves read the layer's input (GPT-NeoX) */
        PB_TRY(ops->copy(b, e->block_in, e->x, sizeof(float) * (size_t)rows * d));
        from = e->block_in;
    }
    PB_TRY(sublayer_input(e, from, W->attn_norm, W->attn_norm_b, rows));
    PB_TRY(queries_keys_values(e, W, jobs, n_active, rows, L, fn, user));
    pb_attention_params params = pb_model_attention_params(c, L);
    if (ops->attention_jobs) {
        /* One call for the batch: prefixes are read in place from the cache,
         * new keys from the packed buffers. */
        for (int a = 0; a < n_active; a++) {
            int j = e->order[a];
            const pb_exec_job *job = &jobs[j];
            int n = job->T - job->p0;
            size_t off = (size_t)e->offset[j];
            const float *kp, *vp;
            if (job->k_prefix) {
                size_t layer_off = (size_t)L * job->kv_prefix_capacity * kvd;
                kp = job->k_prefix + layer_off;
                vp = job->v_prefix + layer_off;
            } else {
                /* persistent: later steps read this layer's new keys from the cache */
                float *kc = job->k_cache + (size_t)L * job->kv_capacity * kvd;
                float *vc = job->v_cache + (size_t)L * job->kv_capacity * kvd;
                PB_TRY(ops->copy(b, kc + (size_t)job->p0 * kvd, e->k + off * kvd, sizeof(float) * (size_t)n * kvd));
                PB_TRY(ops->copy(b, vc + (size_t)job->p0 * kvd, e->v + off * kvd, sizeof(float) * (size_t)n * kvd));
                kp = kc;
                vp = vc;
            }
            e->attn_jobs[a] = (pb_attention_job){.q_row = (int)off,
                                                 .n = n,
                                                 .p0 = job->p0,
                                                 .k_prefix = kp,
                                                 .v_prefix = vp,
                                                 .k_new = e->k + off * kvd,
                                                 .v_new = e->v + off * kvd};
        }
        PB_TRY(ops->attention_jobs(b, e->z, e->q, e->attn_jobs, n_active, c->n_heads, c->n_kv_heads, c->head_dim,
                                   &params));
    }
    for (int a = 0; !ops->attention_jobs && a < n_active; a++) {
        int j = e->order[a];
        const pb_exec_job *job = &jobs[j];
        int n = job->T - job->p0;
        size_t off = (size_t)e->offset[j];
        float *kbuf, *vbuf;
        if (job->k_prefix) {
            kbuf = e->k_scratch;
            vbuf = e->v_scratch;
            size_t layer_off = (size_t)L * job->kv_prefix_capacity * kvd;
            PB_TRY(ops->copy(b, kbuf, job->k_prefix + layer_off, sizeof(float) * (size_t)job->p0 * kvd));
            PB_TRY(ops->copy(b, vbuf, job->v_prefix + layer_off, sizeof(float) * (size_t)job->p0 * kvd));
        } else {
            kbuf = job->k_cache + (size_t)L * job->kv_capacity * kvd;
            vbuf = job->v_cache + (size_t)L * job->kv_capacity * kvd;
        }
        PB_TRY(ops->copy(b, kbuf + (size_t)job->p0 * kvd, e->k + off * kvd, sizeof(float) * (size_t)n * kvd));
        PB_TRY(ops->copy(b, vbuf + (size_t)job->p0 * kvd, e->v + off * kvd, sizeof(float) * (size_t)n * kvd));
        PB_TRY(ops->attention(b, e->z + off * qd, e->q + off * qd, kbuf, vbuf, n, job->T, job->p0, c->n_heads,
                              c->n_kv_heads, c->head_dim, &params));
    }
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_Z, L, e->z, fn, user));
    PB_TRY(ops->matmul(b, e->sub, e->z, W->wo.data, W->wo.dtype, W->bo, rows, d, qd));
    PB_TRY(post_norm(e, jobs, n_active, rows, PB_HOOK_ATTN_POST_IN, L, W->attn_post_norm, fn, user));
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_ATTN_OUT, L, e->sub, fn, user));
    PB_TRY(ops->add(b, e->x, e->x, e->sub, (size_t)rows * d));
    return c->parallel_block ? mlp_sublayer(e, W, jobs, n_active, rows, L, e->block_in, fn, user) : PB_OK;
}

/* The MLP of layer L on the residual `from` (e->x, or a parallel block's
 * input), added to e->x, then hook_resid_post. */
static pb_status mlp_sublayer(pb_exec *e, const pb_layer_weights *W, const pb_exec_job *jobs, int n_active, int rows,
                              int L, const float *from, pb_exec_hook_fn fn, void *user) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    pb_backend *b = m->backend;
    int d = c->d_model;
    PB_TRY(sublayer_input(e, from, W->mlp_norm, W->mlp_norm_b, rows));
    PB_TRY(mlp_activation(e, W, rows));
    PB_TRY(b->ops->matmul(b, e->sub, e->gate, W->w_down.data, W->w_down.dtype, W->b_down, rows, d, c->d_mlp));
    PB_TRY(post_norm(e, jobs, n_active, rows, PB_HOOK_MLP_POST_IN, L, W->mlp_post_norm, fn, user));
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_MLP_OUT, L, e->sub, fn, user));
    PB_TRY(b->ops->add(b, e->x, e->x, e->sub, (size_t)rows * d));
    return hook_point(e, jobs, n_active, PB_HOOK_RESID_POST, L, e->x, fn, user);
}

static pb_status mlp_block(pb_exec *e, const pb_layer_weights *W, const pb_exec_job *jobs, int n_active, int rows,
                           int L, pb_exec_hook_fn fn, void *user) {
    if (e->model->cfg.parallel_block)
        return PB_OK; /* done in the layer's attention step */
    PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_RESID_MID, L, e->x, fn, user));
    return mlp_sublayer(e, W, jobs, n_active, rows, L, e->x, fn, user);
}

/* Brings a job's rows into the packed residual at its start step. */
static pb_status activate(pb_exec *e, const pb_exec_job *job, int j, pb_exec_hook_fn fn, void *user) {
    pb_model *m = e->model;
    const pb_backend_ops *ops = m->backend->ops;
    pb_backend *b = m->backend;
    int d = m->cfg.d_model, n = job->T - job->p0;
    float *rows = e->x + (size_t)e->offset[j] * d;
    if (job->start_step > 0)
        return ops->copy(b, rows, job->init_x + (size_t)job->p0 * d, sizeof(float) * (size_t)n * d);
    float scale = m->cfg.embed_scale > 0.0f ? m->cfg.embed_scale : 1.0f;
    PB_TRY(ops->embed(b, rows, m->token_embd.data, m->token_embd.dtype, e->ids + e->offset[j], n, d, scale));
    if (job->embed_delta)
        PB_TRY(ops->add(b, rows, rows, job->embed_delta + (size_t)job->p0 * d, (size_t)n * d));
    if (fn)
        PB_TRY(fn(user, j, PB_HOOK_EMBED, -1, rows, n, job->p0));
    if (m->cfg.position != PB_POSITION_LEARNED)
        return PB_OK;
    /* GPT-2: each position's learned row, seen at hook_pos_embed, added */
    float *pos_rows = e->sub + (size_t)e->offset[j] * d;
    PB_TRY(ops->embed(b, pos_rows, m->pos_embd, PB_DTYPE_F32, e->pos + e->offset[j], n, d, 1.0f));
    if (fn)
        PB_TRY(fn(user, j, PB_HOOK_POS_EMBED, -1, pos_rows, n, job->p0));
    return ops->add(b, rows, rows, pos_rows, (size_t)n * d);
}

pb_status pb_exec_run(pb_exec *e, const pb_exec_job *jobs, int n_jobs, int stop_step, pb_exec_hook_fn fn, void *user) {
    if (n_jobs <= 0)
        return PB_OK;
    PB_TRY(check_jobs(e, jobs, n_jobs, stop_step));
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    if (n_jobs > e->capacity_jobs) {
        free(e->order);
        free(e->offset);
        free(e->attn_jobs);
        e->order = malloc(sizeof(int) * (size_t)n_jobs);
        e->offset = malloc(sizeof(int) * (size_t)(n_jobs + 1));
        e->attn_jobs = malloc(sizeof(pb_attention_job) * (size_t)n_jobs);
        e->capacity_jobs = e->order && e->offset && e->attn_jobs ? n_jobs : 0;
        if (!e->capacity_jobs)
            return pb_fail(PB_ERR_OOM, "executor: out of memory for %d jobs", n_jobs);
    }
    order_jobs(e->order, jobs, n_jobs);
    /* Packed rows follow the start order; positions for RoPE likewise, and
     * the ids of the jobs that start at the embedding. Both go up in one
     * upload (the device's ids slot is followed by its positions), so a run
     * waits once however many jobs embed. */
    size_t ids_slot = (size_t)(e->pos - e->ids);
    int32_t *positions = e->staging + ids_slot;
    int total = 0;
    for (int a = 0; a < n_jobs; a++) {
        const pb_exec_job *job = &jobs[e->order[a]];
        e->offset[e->order[a]] = total;
        if (job->start_step == 0)
            memcpy(e->staging + total, job->ids + job->p0, sizeof(int32_t) * (size_t)(job->T - job->p0));
        for (int p = job->p0; p < job->T; p++)
            positions[total++] = p;
    }
    PB_TRY(m->backend->ops->upload(m->backend, e->ids, e->staging, sizeof(int32_t) * (ids_slot + (size_t)total)));
    e->offset[n_jobs] = total;

    int n_active = 0;
    for (int step = jobs[e->order[0]].start_step; step <= stop_step; step++) {
        while (n_active < n_jobs && jobs[e->order[n_active]].start_step == step) {
            PB_TRY(activate(e, &jobs[e->order[n_active]], e->order[n_active], fn, user));
            n_active++;
        }
        int rows = n_active < n_jobs ? e->offset[e->order[n_active]] : total;
        int L = step / 2;
        if (step == 2 * c->n_layers) {
            PB_TRY(hook_point(e, jobs, n_active, PB_HOOK_RESID_PRE, L, e->x, fn, user));
            break;
        }
        if (step == stop_step) {
            /* The output is the residual entering this step, patched. */
            PB_TRY(hook_point(e, jobs, n_active, step % 2 ? PB_HOOK_RESID_MID : PB_HOOK_RESID_PRE, L, e->x, fn, user));
            break;
        }
        /* streamed weights: this layer's before its first step, and the
         * next one's read ahead where this run goes on to it */
        PB_TRY(pb_model_layer_acquire(m, L, 2 * (L + 1) < stop_step && L + 1 < c->n_layers ? L + 1 : -1));
        if (step % 2 == 0)
            PB_TRY(attention_block(e, &m->layers[L], jobs, n_active, rows, L, fn, user));
        else
            PB_TRY(mlp_block(e, &m->layers[L], jobs, n_active, rows, L, fn, user));
        for (int a = 0; a < n_active; a++)
            e->flops += pb_exec_step_flops(c, step, jobs[e->order[a]].p0, jobs[e->order[a]].T);
    }
    /* No synchronize: on a device backend the run is queued, not done, and
     * the host goes on (planning the next batch) while it executes. */
    return PB_OK;
}

pb_status pb_exec_unembed(pb_exec *e, float *out, const float *x, int rows, const void *w, pb_dtype w_dtype,
                          int n_out) {
    pb_model *m = e->model;
    const pb_model_config *c = &m->cfg;
    if (rows > e->max_tokens)
        return pb_fail(PB_ERR_ARG, "unembed: %d rows exceed the workspace of %d", rows, e->max_tokens);
    PB_TRY(pb_model_norm(m, e->xn, x, m->final_norm, m->final_norm_b, rows, c->d_model));
    PB_TRY(m->backend->ops->matmul(m->backend, out, e->xn, w, w_dtype, NULL, rows, n_out, c->d_model));
    if (c->final_softcap > 0.0f)
        PB_TRY(m->backend->ops->softcap(m->backend, out, (size_t)rows * n_out, c->final_softcap));
    e->flops += 2.0 * rows * n_out * c->d_model;
    return PB_OK;
}
