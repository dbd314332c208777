/* A sweep's plan before it runs (pb_sweep_plan): resident or streamed
 * weights, the batches (waves) the memory allows, the bytes they move, the
 * memory at the peak and a lower bound on the time. Built from the model's
 * measured layout (model.h: the load's own rule decides), the sweep's own
 * batch sizing and a count of the batches its run would launch
 * (sweep_access.h), each rank's share split as a distributed run splits it.
 * An estimate ("method": "atp", "atp*") is planned as it runs: per pair a
 * forward of each run and the backward passes, on the rank whose share
 * holds the pair. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/atp.h"
#include "backend/backend_cuda.h"
#include "distributed/distribute.h"
#include "model/model.h"
#include "patching/sweep_access.h"
#include "util/host_memory.h"
#include "util/internal.h"

#define MIB(x) ((double)(x) / (1 << 20))

/* Rates the time bound assumes when none is given. CUDA: the bf16 matrix
 * rate measured on this project's H100/H200 machines (device notes, about
 * 790 TFLOP/s) for 16-bit weights, plain fp32's datasheet 67 TFLOP/s
 * for f32 and quantised ones (decoded to fp32 before the product), and
 * pinned host-to-device copies over PCIe 5 at about 50 GB/s. CPU: 100
 * GFLOP/s and a page-cache copy at 5 GB/s, a small server's order. */
static void default_rates(const pb_model *m, double *flops, double *link) {
    switch (m->backend_kind) {
    case PB_BACKEND_CUDA:
        *flops = m->wdtype == PB_DTYPE_BF16 || m->wdtype == PB_DTYPE_F16 ? 790e12 : 67e12;
        *link = 50e9;
        return;
    case PB_BACKEND_REFERENCE:
        *flops = 1e9;
        *link = 5e9;
        return;
    case PB_BACKEND_CPU:
    case PB_BACKEND_CHECKED: break;
    }
    *flops = 100e9;
    *link = 5e9;
}

/* One rank's memory when none is given: the device's (cuda: the model's
 * own device, or device 0 for a shape-only plan) or this machine's
 * (pb_host_memory: physical, or a job's cgroup limit). */
static pb_status default_device_memory(const pb_model *m, size_t *out) {
    if (m->backend_kind == PB_BACKEND_CUDA && !m->shape_only && m->backend->ops->memory_info) {
        size_t free_bytes;
        return m->backend->ops->memory_info(m->backend, &free_bytes, out);
    }
    if (m->backend_kind == PB_BACKEND_CUDA) {
        pb_cuda_device_info info;
        if (pb_cuda_device_query(0, &info) != PB_OK) {
            pb_error_clear();
            return pb_fail(PB_ERR_ARG, "planning for cuda with no device here: give the device memory "
                                       "(--device-memory, e.g. 80GiB)");
        }
        *out = info.total_bytes;
        return PB_OK;
    }
    if (pb_host_memory(out) != PB_OK)
        return pb_fail(PB_ERR_ARG, "cannot read this machine's memory: give --device-memory");
    return PB_OK;
}

/* Resident or streamed: as asked; auto as the load decides it under a cap,
 * and streamed besides when resident weights leave no room for one pair's
 * caches and one row. The load's refusals (cannot stream, over the cap). */
static pb_status choose_weights(const pb_weight_layout *l, const pb_plan_options *o, uint64_t others, pb_plan *p) {
    pb_weights_mode mode = o->weights;
    if (mode == PB_WEIGHTS_AUTO && o->weight_memory == 0 && l->resident + others > p->device_memory)
        mode = PB_WEIGHTS_STREAM;
    return pb_weights_decide(l, mode, o->weight_memory, &p->weights);
}

/* The batch budget: as asked, else the sweep's default: everything, when
 * weights stream on a device (a wave reads every layer over the link, so
 * the wider the better), else 1 GiB (on the CPU the waves are
 * compute-bound, and the page cache the layers stream through needs the
 * memory more); within three quarters of what the weights and caches
 * leave, as a device sweep keeps a quarter free; one not asked for in
 * whole MiB, as --max-memory prints it, so that the sweep sizes the same
 * batches. */
static size_t batch_budget(const pb_plan_options *o, const pb_plan *p, const pb_model *m, size_t left,
                           size_t need_min) {
    const size_t mib = (size_t)1 << 20;
    size_t usable = left / 4 * 3;
    int everything = p->weights == PB_WEIGHTS_STREAM && pb_model_on_device(m);
    size_t budget = o->max_memory ? o->max_memory : everything ? usable : PB_SWEEP_DEFAULT_MEMORY;
    budget = budget < usable ? budget : usable;
    if (!o->max_memory && budget / mib * mib >= need_min)
        budget = budget / mib * mib;
    return budget < need_min && left >= need_min ? need_min : budget;
}

/* One rank's waves, FLOPs and streamed bytes added to the plan's; its time
 * bound kept when it is the slowest rank's. */
static void add_rank(pb_plan *p, int64_t waves, double flops, double bytes) {
    p->waves += waves;
    p->waves_max_rank = waves > p->waves_max_rank ? waves : p->waves_max_rank;
    p->flops += flops;
    p->bytes_streamed += bytes;
    double compute = flops / p->flops_per_s, link = bytes / p->link_bytes_per_s;
    if ((compute > link ? compute : link) > p->seconds_bound) {
        p->seconds_compute = compute;
        p->seconds_link = link;
        p->seconds_bound = compute > link ? compute : link;
    }
}

/* Waves, bytes and FLOPs of each rank's share; the slowest rank's time. */
static pb_status count_ranks(const pb_sweep *s, const pb_batch_shape *shape, const uint64_t *layer_bytes, pb_plan *p) {
    for (int rank = 0; rank < p->n_ranks; rank++) {
        int64_t *rows = NULL, n_rows = 0;
        PB_TRY(pb_sweep_partition(s, rank, p->n_ranks, &rows, &n_rows, NULL));
        pb_wave_counts w;
        pb_status status = pb_sweep_count_waves(s, rows, n_rows, shape, layer_bytes, &w);
        free(rows);
        PB_TRY(status);
        p->rows_run += w.rows;
        p->base_runs += w.base_runs;
        add_rank(p, w.waves, w.flops_rows + w.flops_base, w.bytes_read);
    }
    return PB_OK;
}

/* Refuses the plan: why_not and the error carry the numbers. */
static pb_status refuse(pb_plan *p, uint64_t need_min) {
    snprintf(p->why_not, sizeof p->why_not,
             "%s weights %.2f MiB + one pair's run caches %.2f MiB + one row's activations %.2f MiB = %.2f MiB, "
             "more than the %.2f MiB of memory per rank",
             pb_weights_mode_name(p->weights), MIB(p->peak_weights), MIB(p->peak_caches), MIB(need_min),
             MIB(p->peak_weights + p->peak_caches + need_min), MIB(p->device_memory));
    return pb_fail(PB_ERR_OOM, "%s", p->why_not);
}

/* *pairs (malloc'd), *n: the pairs a rank's share holds a pending row
 * of (pb_sweep_partition gives each pair of an estimate whole to one
 * rank), in order. */
static pb_status rank_pairs(const pb_sweep *s, int rank, int n_ranks, int **pairs, int *n) {
    int64_t *rows = NULL, n_rows = 0, n_sites = pb_sweep_site_count(s);
    PB_TRY(pb_sweep_partition(s, rank, n_ranks, &rows, &n_rows, NULL));
    *n = 0;
    if (!(*pairs = malloc(sizeof(int) * (size_t)(n_rows > 0 ? n_rows : 1)))) {
        free(rows);
        return pb_fail(PB_ERR_OOM, "plan: out of memory for %lld rows", (long long)n_rows);
    }
    for (int64_t i = 0, last = -1; i < n_rows; i++) {
        int64_t pair = rows[i] / n_sites;
        if (pair == last || pb_sweep_row_state(s, rows[i]) != 0)
            continue;
        (*pairs)[(*n)++] = (int)pair;
        last = pair;
    }
    free(rows);
    return PB_OK;
}

/* An estimate's groups (pb_atp_group) on each rank's share, formed with
 * budget as a run with that --max-memory forms them: the largest group's
 * memory (on a device backend its captures and logits in peak_host, the
 * rest in peak_caches; else all of it in peak_caches) and, when counting,
 * each rank's groups (waves), FLOPs (pb_atp_flops) and streamed bytes
 * (pb_atp_stream_bytes). */
static pb_status estimate_groups(const pb_sweep *s, size_t budget, const uint64_t *layer_bytes, int count, pb_plan *p) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    const pb_model *m = pb_sweep_model(s);
    int device = pb_model_on_device(m);
    p->peak_caches = p->peak_host = 0;
    for (int rank = 0; rank < p->n_ranks; rank++) {
        int *pairs, n, groups = 0;
        PB_TRY(rank_pairs(s, rank, p->n_ranks, &pairs, &n));
        double flops = 0.0, bytes = 0.0;
        for (int k = 0, G; k < n; k += G, groups++) {
            pb_atp_group_shape shape = pb_atp_group(s, pairs + k, n - k, budget);
            G = shape.pairs;
            uint64_t host = device ? shape.host_bytes : 0, own = shape.bytes - host;
            p->peak_caches = own > p->peak_caches ? own : p->peak_caches;
            p->peak_host = host > p->peak_host ? host : p->peak_host;
            for (int g = 0; count && g < G; g++)
                flops += pb_atp_flops(&m->cfg, spec->pairs[pairs[k + g]].base.T, spec->grad_drop);
            bytes += count && layer_bytes ? pb_atp_stream_bytes(s, shape.drop_batch, layer_bytes) : 0.0;
        }
        free(pairs);
        if (count)
            add_rank(p, groups, flops, bytes);
    }
    return PB_OK;
}

/* The plan's memory, up to its batch budget: the device's memory, the
 * method, the caches (one pair's, or an estimate's least group), the
 * weights as decided, the budget; *kl the metric's clean distributions,
 * counted in the caches. The refusals with the numbers. */
static pb_status plan_memory(const pb_sweep *s, const pb_plan_options *o, pb_plan *p, uint64_t *kl) {
    const pb_model *m = pb_sweep_model(s);
    const pb_weight_layout *l = &m->layout;
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    p->device_memory = o->device_memory;
    if (!p->device_memory)
        PB_TRY(default_device_memory(m, &p->device_memory));
    int max_T = pb_sweep_max_T(s);
    pb_batch_shape shape;
    if (pb_sweep_batch_shape(s, 0, max_T, 0, &shape) != PB_OK)
        pb_error_clear(); /* a zero budget: the need for one row is all this asks */
    uint64_t need_min = shape.need_min;
    p->method = pb_sweep_method_name(spec->method);
    p->estimate = spec->method != PB_METHOD_EXACT;
    if (p->estimate) /* one pair at a time: the least its groups need */
        PB_TRY(estimate_groups(s, 0, NULL, 0, p));
    else
        p->peak_caches = 2 * (uint64_t)pb_sweep_cache_bytes(s, max_T);
    *kl = spec->metric.kind != PB_METRIC_KL ? 0 /* every pair's clean log-distribution */
                                            : sizeof(double) * (uint64_t)spec->n_pairs * m->cfg.vocab_size;
    p->peak_caches += *kl;
    pb_status status = choose_weights(l, o, p->peak_caches + need_min, p);
    if (status != PB_OK) {
        snprintf(p->why_not, sizeof p->why_not, "%s", pb_last_error());
        return status;
    }
    p->peak_weights = pb_weights_bytes(l, p->weights);
    if (p->peak_weights + p->peak_caches + need_min > p->device_memory)
        return refuse(p, need_min);
    p->weight_memory = p->weights == PB_WEIGHTS_STREAM ? (size_t)p->peak_weights : o->weight_memory;
    p->max_memory = batch_budget(o, p, m, p->device_memory - p->peak_weights - p->peak_caches, need_min);
    return PB_OK;
}

pb_status pb_sweep_plan_budget(const pb_sweep *s, const pb_plan_options *options, size_t *budget) {
    pb_plan p;
    memset(&p, 0, sizeof p);
    p.n_ranks = 1;
    uint64_t kl;
    PB_TRY(plan_memory(s, options, &p, &kl));
    *budget = p.max_memory;
    return PB_OK;
}

pb_status pb_sweep_plan(const pb_sweep *s, const pb_plan_options *options, pb_plan *p) {
    if (!s || !p)
        return pb_fail(PB_ERR_ARG, "pb_sweep_plan: sweep and plan are required");
    pb_plan_options o = options ? *options : (pb_plan_options){0};
    const pb_model *m = pb_sweep_model(s);
    const pb_weight_layout *l = &m->layout;
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    memset(p, 0, sizeof *p);
    p->n_ranks = o.n_ranks > 0 ? o.n_ranks : 1;
    default_rates(m, &p->flops_per_s, &p->link_bytes_per_s);
    p->flops_per_s = o.flops_per_s > 0 ? o.flops_per_s : p->flops_per_s;
    p->link_bytes_per_s = o.link_bytes_per_s > 0 ? o.link_bytes_per_s : p->link_bytes_per_s;
    p->weights_resident = l->resident;
    p->weights_streamed = l->no_stream[0] ? 0 : pb_weights_bytes(l, PB_WEIGHTS_STREAM);
    for (int64_t r = 0; r < pb_sweep_row_count(s); r++)
        p->rows += pb_sweep_row_state(s, r) == 0;
    uint64_t kl;
    PB_TRY(plan_memory(s, &o, p, &kl));

    pb_batch_shape shape;
    int stream = p->weights == PB_WEIGHTS_STREAM, max_T = pb_sweep_max_T(s);
    if (p->estimate)
        PB_TRY(pb_sweep_batch_shape(s, p->max_memory, max_T, stream, &shape));
    else /* as the run shapes it: streamed, the pairs whose caches are built together */
        PB_TRY(pb_sweep_run_shape(s, p->max_memory, max_T, stream ? l->layer_bytes : NULL, &shape));
    p->rows_per_wave = shape.max_rows;
    p->tokens_per_wave = shape.max_tokens;
    p->pairs_per_group = p->estimate ? 0 : shape.group_pairs;
    p->peak_caches += shape.group_caches; /* the group's beyond one pair's, which the budget holds */
    /* an estimate runs batches only to verify itself */
    p->peak_activations = p->estimate && spec->verify_top == 0 ? 0 : shape.device_bytes + shape.host_bytes;
    p->bytes_loaded = (double)p->n_ranks * (double)(stream ? l->stream_arena - 2 * l->slot : l->resident);
    if (p->estimate) { /* the groups within that budget, as the run forms them */
        PB_TRY(estimate_groups(s, p->max_memory, stream ? l->layer_bytes : NULL, 1, p));
        p->peak_caches += kl;
    }
    p->peak_total = p->peak_weights + p->peak_caches + p->peak_activations;
    return p->estimate ? PB_OK : count_ranks(s, &shape, stream ? l->layer_bytes : NULL, p);
}
