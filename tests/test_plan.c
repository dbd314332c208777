/* The planner (pb_sweep_plan, patchbay plan) against the runs it plans:
 * on every oracle case, a shape-only load measures the same weight bytes as
 * the real loads, and the plan's waves, rows, base runs, batch memory and
 * streamed bytes equal what the streamed sweep then does (its batch count,
 * rows executed and the stream's own read counter), with a budget of a few
 * rows and with the plan's own, where the models of more than two layers
 * build the caches of both pairs together and read fewer bytes than a pair
 * at a time would; the FLOPs counted without running equal the executor's;
 * split over ranks, the shares' runs add up to the plan, with baselines
 * bit-equal to the whole run's; a sweep that cannot fit is refused with the
 * numbers; a shape-only model refuses to run. */
#define _GNU_SOURCE
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/atp.h"
#include "distributed/distribute.h"
#include "model/model.h"
#include "model/stream.h"
#include "patching/sweep.h"
#include "patching/sweep_access.h"
#include "test_util.h"
#include "tolerances.h"
#include "util/internal.h"

static pb_model *load_on(const char *path, pb_backend_kind backend, pb_weights_mode weights, int shape_only) {
    pb_load_options o = {
        .n_threads = 2, .backend = backend, .dtype = PB_DTYPE_FILE, .weights = weights, .shape_only = shape_only};
    pb_model *m = NULL;
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    return m;
}

static pb_model *load(const char *path, pb_weights_mode weights, int shape_only) {
    return load_on(path, PB_BACKEND_CPU, weights, shape_only);
}

/* The case's model as Q8_0 into path: 0 when the fixture is absent. */
static int case_model(const tu_oracle_case *c, char *path, size_t size) {
    tu_fixture_file(path, size, json_string_value(json_object_get(c->expected, "model")), "model.q8_0.gguf");
    return tu_file_exists(path);
}

static pb_sweep *create(pb_model *m, const tu_oracle_case *c, size_t max_memory) {
    pb_sweep_options so = {.max_memory = max_memory, .metric_fn_residual_layer = -1, .run_trivial_rows = 1};
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, c->spec, c->dir, &so) != PB_OK)
        fail_msg("%s: %s", c->name, pb_last_error());
    return s;
}

/* A batch budget of three rows of the longest prompt: several waves. */
static size_t small_budget(const pb_sweep *s) {
    pb_batch_shape shape;
    if (pb_sweep_batch_shape(s, 0, pb_sweep_max_T(s), 0, &shape) != PB_OK)
        pb_error_clear();
    return 3 * shape.need_min;
}

static void all_rows(const pb_sweep *s, int64_t **rows, int64_t *n) {
    *n = pb_sweep_row_count(s);
    *rows = malloc(sizeof(int64_t) * (size_t)*n);
    assert_non_null(*rows);
    for (int64_t i = 0; i < *n; i++)
        (*rows)[i] = i;
}

/* What check_budget saw over the cases. */
typedef struct plans_seen {
    int cases;
    int grouped; /* planned with the caches of several pairs built together */
} plans_seen;

/* The case planned for streamed weights within budget (0: the plan's own)
 * against its run on the model at path, freshly loaded streamed (its slots
 * empty). */
static void check_budget(const tu_oracle_case *c, pb_model *shape, const char *path, size_t budget, plans_seen *seen) {
    pb_model *streamed = load(path, PB_WEIGHTS_STREAM, 0);
    pb_sweep *planned = create(shape, c, 0);
    pb_plan_options po = {.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_STREAM, .max_memory = budget};
    pb_plan plan;
    if (pb_sweep_plan(planned, &po, &plan) != PB_OK)
        fail_msg("%s: plan: %s", c->name, pb_last_error());
    assert_int_equal(plan.weights, PB_WEIGHTS_STREAM);
    if (budget)
        assert_int_equal(plan.max_memory, budget);
    /* the FLOPs counted for the batches, before the run */
    pb_sweep *run = create(streamed, c, plan.max_memory);
    int64_t *rows, n_rows;
    all_rows(run, &rows, &n_rows);
    pb_batch_shape shape_run;
    CHECK_OK(pb_sweep_run_shape(run, plan.max_memory, pb_sweep_max_T(run), streamed->layout.layer_bytes, &shape_run));
    assert_int_equal(shape_run.max_rows, plan.rows_per_wave);
    assert_int_equal(shape_run.max_tokens, plan.tokens_per_wave);
    assert_int_equal(shape_run.group_pairs, plan.pairs_per_group);
    /* the batch's memory as planned shape-only is the loaded run's (its metric reduced by the backend or not) */
    assert_true(plan.peak_activations == shape_run.device_bytes + shape_run.host_bytes);
    pb_wave_counts counted;
    CHECK_OK(pb_sweep_count_waves(run, rows, n_rows, &shape_run, streamed->layout.layer_bytes, &counted));
    /* the same batches with a pair's caches built at a time: never fewer bytes */
    pb_batch_shape single;
    CHECK_OK(pb_sweep_batch_shape(run, plan.max_memory, pb_sweep_max_T(run), 1, &single));
    pb_wave_counts one_by_one;
    CHECK_OK(pb_sweep_count_waves(run, rows, n_rows, &single, streamed->layout.layer_bytes, &one_by_one));
    assert_int_equal(one_by_one.base_runs, 2 * pb_sweep_spec_of(run)->n_pairs);
    assert_true(counted.bytes_read <= one_by_one.bytes_read);
    assert_true(plan.pairs_per_group == 1 || counted.bytes_read < one_by_one.bytes_read);
    CHECK_OK(pb_sweep_run(run));
    pb_sweep_summary sum;
    CHECK_OK(pb_sweep_get_summary(run, &sum));
    long long layers;
    double bytes;
    pb_stream_counters(streamed->stream, &layers, &bytes);
    printf("[ MEASURE  ] %-30s plan: %lld waves of <= %d rows, %lld rows, %lld base runs (%d pairs a group), %.3f MiB "
           "streamed (%.3f MiB a pair at a time); run: %lld batches, %lld rows, %.3f MiB (%lld layer reads); FLOPs "
           "%.6g counted, %.6g executed\n",
           c->name, (long long)plan.waves, plan.rows_per_wave, (long long)plan.rows_run, (long long)plan.base_runs,
           plan.pairs_per_group, plan.bytes_streamed / 1048576, one_by_one.bytes_read / 1048576,
           (long long)pb_sweep_batch_count(run), (long long)sum.n_rows_executed, bytes / 1048576, layers,
           counted.flops_rows, sum.flops_executed);
    assert_int_equal(plan.waves, pb_sweep_batch_count(run));
    assert_int_equal(plan.rows_run, sum.n_rows_executed);
    assert_int_equal(plan.base_runs, counted.base_runs);
    assert_int_equal(counted.layers_read, layers);
    assert_true(plan.bytes_streamed == bytes);
    assert_true(fabs(counted.flops_rows - sum.flops_executed) <= 1e-12 * sum.flops_executed);
    assert_true(plan.peak_total == plan.peak_weights + plan.peak_caches + plan.peak_activations);
    assert_true(plan.peak_caches >=
                (uint64_t)plan.pairs_per_group * 2 * pb_sweep_cache_bytes(run, pb_sweep_max_T(run)));
    seen->cases++;
    seen->grouped += plan.pairs_per_group > 1;
    free(rows);
    pb_sweep_free(run);
    pb_sweep_free(planned);
    pb_model_free(streamed);
}

static int check_case(const tu_oracle_case *c, void *ctx) {
    char path[1400];
    if (strcmp(json_string_value(json_object_get(c->expected, "model")), "smollm2") == 0 ||
        !case_model(c, path, sizeof path))
        return 0;
    pb_model *shape = load(path, PB_WEIGHTS_RESIDENT, 1);
    pb_model *resident = load(path, PB_WEIGHTS_RESIDENT, 0), *streamed = load(path, PB_WEIGHTS_STREAM, 0);
    /* the layout a shape-only load measures is what the loads hold */
    assert_int_equal(shape->layout.resident, pb_model_weight_bytes(resident));
    assert_int_equal(shape->layout.stream_arena, pb_model_weight_bytes(streamed));
    /* several waves a pair; and the plan's own budget, roomy for these models */
    pb_sweep *s = create(shape, c, 0);
    size_t budget = small_budget(s);
    pb_sweep_free(s);
    check_budget(c, shape, path, budget, ctx);
    check_budget(c, shape, path, 0, ctx);
    pb_model_free(shape);
    pb_model_free(resident);
    pb_model_free(streamed);
    return 1;
}

static void test_plans_equal_runs(void **state) {
    (void)state;
    plans_seen seen = {0};
    assert_true(tu_visit_cases("patching", check_case, &seen) >= 20);
    printf("[ MEASURE  ] %d plans, %d of them with pairs' caches built together\n", seen.cases, seen.grouped);
    assert_true(seen.grouped >= 10);
}

/* An estimate ("atp", "atp*") planned as it runs, against the run on
 * streamed weights: no row executed, the pairs in groups (all of a tiny
 * model's in one within the budget the plan gives; one each within a budget
 * of a byte), as a run with the plan's --max-memory forms them, the FLOPs
 * of pb_atp_flops, and the layer bytes read at most the
 * plan's (a layer still in its slot is not read again: the tiny models'
 * two layers stay) and at least every layer once. */
/* The groups pb_atp_run_rows forms over every row of s: its own budget. */
static int64_t groups_of(const pb_sweep *s) {
    int n = pb_sweep_spec_of(s)->n_pairs, groups = 0;
    int *pairs = malloc(sizeof(int) * (size_t)n);
    size_t budget;
    assert_non_null(pairs);
    CHECK_OK(pb_sweep_memory_budget(s, &budget));
    for (int i = 0; i < n; i++)
        pairs[i] = i;
    for (int k = 0; k < n; groups++)
        k += pb_atp_group(s, pairs + k, n - k, budget).pairs;
    free(pairs);
    return groups;
}

static int check_estimate(const tu_oracle_case *c, void *ctx) {
    int *seen = ctx;
    char path[1400];
    if (!case_model(c, path, sizeof path))
        return 0;
    pb_model *shape = load(path, PB_WEIGHTS_RESIDENT, 1), *streamed = load(path, PB_WEIGHTS_STREAM, 0);
    pb_sweep *planned = create(shape, c, 0);
    pb_plan_options po = {.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_STREAM};
    pb_plan plan;
    if (pb_sweep_plan(planned, &po, &plan) != PB_OK)
        fail_msg("%s: plan: %s", c->name, pb_last_error());
    const pb_sweep_spec *spec = pb_sweep_spec_of(planned);
    assert_int_equal(plan.estimate, 1);
    assert_string_equal(plan.method, pb_sweep_method_name(spec->method));
    assert_int_equal(plan.rows_run, 0);
    assert_int_equal(plan.waves, 1);
    assert_true(plan.peak_caches <= plan.max_memory); /* a group of several pairs stays within its budget */
    pb_plan_options byte = po;
    byte.max_memory = 1;
    pb_plan single;
    CHECK_OK(pb_sweep_plan(planned, &byte, &single));
    assert_int_equal(single.waves, spec->n_pairs);
    assert_true(single.flops == plan.flops);
    assert_true(single.bytes_streamed >= plan.bytes_streamed);
    /* the groups a run with the plan's --max-memory forms are the plan's */
    pb_sweep *run = create(streamed, c, plan.max_memory);
    assert_int_equal(groups_of(run), plan.waves);
    pb_sweep *run_single = create(streamed, c, single.max_memory);
    assert_int_equal(groups_of(run_single), single.waves);
    pb_sweep_free(run_single);
    CHECK_OK(pb_sweep_run(run));
    pb_sweep_summary sum;
    CHECK_OK(pb_sweep_get_summary(run, &sum));
    long long layers;
    double bytes;
    pb_stream_counters(streamed->stream, &layers, &bytes);
    printf("[ MEASURE  ] %-36s %s%s plan: %.3f MiB streamed, %.4g FLOP; run: %.3f MiB (%lld layer reads)\n", c->name,
           plan.method, spec->grad_drop ? " (GradDrop)" : "", plan.bytes_streamed / 1048576, plan.flops,
           bytes / 1048576, layers);
    double every_layer = 0.0;
    for (int l = 0; l < shape->cfg.n_layers; l++)
        every_layer += (double)streamed->layout.layer_bytes[l];
    assert_int_equal(sum.n_rows_executed, 0);
    assert_true(bytes <= plan.bytes_streamed);
    assert_true(bytes >= every_layer);
    double flops = 0.0;
    for (int i = 0; i < spec->n_pairs; i++)
        flops += pb_atp_flops(&shape->cfg, spec->pairs[i].base.T, spec->grad_drop);
    assert_true(plan.flops == flops);
    /* on three ranks each pair runs whole on one of them: the same passes
     * and FLOPs, a group on each rank holding pairs, and the ranks' shares
     * are whole pairs */
    pb_plan_options three = po;
    three.n_ranks = 3;
    pb_plan split;
    CHECK_OK(pb_sweep_plan(planned, &three, &split));
    int holding = 0;
    assert_true(fabs(split.flops - flops) <= 1e-12 * flops);
    for (int rank = 0; rank < 3; rank++) {
        int64_t *share = NULL, n = 0;
        CHECK_OK(pb_sweep_partition(planned, rank, 3, &share, &n, NULL));
        assert_int_equal(n % pb_sweep_site_count(planned), 0);
        assert_true(n == 0 || share[0] % pb_sweep_site_count(planned) == 0);
        holding += n > 0;
        free(share);
    }
    assert_int_equal(split.waves, holding);
    pb_sweep_free(run);
    pb_sweep_free(planned);
    pb_model_free(shape);
    pb_model_free(streamed);
    *seen += 1;
    return 1;
}

/* On a device (the checked backend stands in for cuda: its memory is not
 * the host's) an estimate's captures and logits stay in host memory: the
 * plan counts them apart (peak_host) and only the gradient scratch against
 * the device, so a device that holds the scratch but not the captures is
 * planned, where the same memory on the CPU, which holds both, is refused. */
static int check_estimate_host(const tu_oracle_case *c, void *ctx) {
    int *seen = ctx;
    char path[1400];
    if (!case_model(c, path, sizeof path))
        return 0;
    pb_model *cpu = load_on(path, PB_BACKEND_CPU, PB_WEIGHTS_RESIDENT, 1);
    pb_model *device = load_on(path, PB_BACKEND_CHECKED, PB_WEIGHTS_RESIDENT, 1);
    pb_sweep *on_cpu = create(cpu, c, 0), *on_device = create(device, c, 0);
    /* a byte's budget: a pair at a time, the least the estimate needs */
    pb_plan_options po = {.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_RESIDENT, .max_memory = 1};
    pb_plan host_plan, device_plan;
    CHECK_OK(pb_sweep_plan(on_cpu, &po, &host_plan));
    CHECK_OK(pb_sweep_plan(on_device, &po, &device_plan));
    int T = pb_sweep_spec_of(on_device)->pairs[0].base.T;
    uint64_t bytes, host;
    CHECK_OK(pb_atp_peak_bytes(on_device, T, &bytes, &host));
    printf("[ MEASURE  ] %-36s cpu: peak %llu B (captures included); checked: device %llu B, host %llu B\n", c->name,
           (unsigned long long)host_plan.peak_caches, (unsigned long long)device_plan.peak_caches,
           (unsigned long long)device_plan.peak_host);
    assert_int_equal(host_plan.peak_host, 0);
    assert_true(device_plan.peak_host >= host && host > 0); /* the largest pair's captures */
    assert_true(device_plan.peak_total ==
                device_plan.peak_weights + device_plan.peak_caches + device_plan.peak_activations);
    assert_true(host_plan.peak_caches > device_plan.peak_host); /* the CPU's holds the captures and its scratch */
    /* memory halfway between the two needs (weights, the caches, one row's
     * activations): planned on the device, refused on the CPU */
    size_t one_row = small_budget(on_device) / 3;
    po.device_memory = (size_t)(device_plan.peak_weights + one_row +
                                (host_plan.peak_caches + device_plan.peak_caches) / 2);
    if (pb_sweep_plan(on_device, &po, &device_plan) != PB_OK)
        fail_msg("%s: %s", c->name, pb_last_error());
    pb_plan refused;
    assert_int_equal(pb_sweep_plan(on_cpu, &po, &refused), PB_ERR_OOM);
    pb_sweep_free(on_cpu);
    pb_sweep_free(on_device);
    pb_model_free(cpu);
    pb_model_free(device);
    *seen += 1;
    return 1;
}

static void test_estimates_host_memory(void **state) {
    (void)state;
    int seen = 0;
    tu_visit_cases("atp_star", check_estimate_host, &seen);
    tu_visit_cases("atp", check_estimate_host, &seen);
    assert_true(seen >= 10);
}

static void test_estimates(void **state) {
    (void)state;
    int seen = 0;
    tu_visit_cases("atp_star", check_estimate, &seen);
    tu_visit_cases("atp", check_estimate, &seen);
    assert_true(seen >= 10);
}

/* tiny_gqa_denoise_logit_diff of subdir as a case (its spec to free) and
 * its model's Q8_0 file in path. */
static tu_oracle_case gqa_case(const char *subdir, char *path, size_t size) {
    tu_oracle_case c = tu_case_named(subdir, "tiny_gqa_denoise_logit_diff");
    tu_fixture_file(path, size, "tiny_gqa", "model.q8_0.gguf");
    return c;
}

/* Split over three ranks as a distributed sweep splits it, within budget
 * (0: the plan's own), each share run on its own streamed model: the
 * batches and bytes add up to the plan; every rank's baselines are those
 * of the sweep run whole, bit for bit (the pairs' caches built in the same
 * groups everywhere), and the rows the whole sweep's within the CPU's
 * bound (batched otherwise). */
static void check_ranks(const tu_oracle_case *c, const char *path, size_t budget) {
    pb_model *shape = load(path, PB_WEIGHTS_RESIDENT, 1);
    pb_sweep *planned = create(shape, c, 0);
    pb_plan_options po = {
        .device_memory = (size_t)1 << 30, .n_ranks = 3, .weights = PB_WEIGHTS_STREAM, .max_memory = budget};
    pb_plan plan;
    CHECK_OK(pb_sweep_plan(planned, &po, &plan));
    pb_model *whole_model = load(path, PB_WEIGHTS_STREAM, 0);
    pb_sweep *whole = create(whole_model, c, plan.max_memory);
    CHECK_OK(pb_sweep_run(whole));
    int64_t waves = 0, busiest = 0;
    double bytes_all = 0.0, worst = 0.0;
    int baselines_differ = 0;
    for (int rank = 0; rank < 3; rank++) {
        pb_model *m = load(path, PB_WEIGHTS_STREAM, 0);
        pb_sweep *s = create(m, c, plan.max_memory);
        int64_t *share, n_share;
        CHECK_OK(pb_sweep_partition(s, rank, 3, &share, &n_share, NULL));
        CHECK_OK(pb_sweep_run_rows(s, share, n_share));
        long long layers;
        double bytes;
        pb_stream_counters(m->stream, &layers, &bytes);
        waves += pb_sweep_batch_count(s);
        busiest = pb_sweep_batch_count(s) > busiest ? pb_sweep_batch_count(s) : busiest;
        bytes_all += bytes;
        for (int pair = 0; pair < pb_sweep_spec_of(s)->n_pairs; pair++) {
            double base, source, want_base, want_source;
            if (!pb_sweep_pair_ready(s, pair))
                continue;
            CHECK_OK(pb_sweep_get_pair(s, pair, &base, &source));
            CHECK_OK(pb_sweep_get_pair(whole, pair, &want_base, &want_source));
            baselines_differ += base != want_base || source != want_source;
        }
        for (int64_t i = 0; i < n_share; i++) {
            double patched, want;
            CHECK_OK(pb_sweep_get_row(s, (int)(share[i] / pb_sweep_site_count(s)), share[i] % pb_sweep_site_count(s),
                                      &patched, NULL));
            CHECK_OK(pb_sweep_get_row(whole, (int)(share[i] / pb_sweep_site_count(s)),
                                      share[i] % pb_sweep_site_count(s), &want, NULL));
            worst = fmax(worst, fabs(patched - want) / fmax(1.0, fabs(want)));
        }
        free(share);
        pb_sweep_free(s);
        pb_model_free(m);
    }
    printf("[ MEASURE  ] %s on 3 ranks, %d pairs a group: plan %lld waves (busiest %lld), %.3f MiB; runs %lld "
           "(busiest %lld), %.3f MiB; baselines differing from the whole run's: %d; rows max |d| %.2e\n",
           c->name, plan.pairs_per_group, (long long)plan.waves, (long long)plan.waves_max_rank,
           plan.bytes_streamed / 1048576, (long long)waves, (long long)busiest, bytes_all / 1048576, baselines_differ,
           worst);
    assert_int_equal(plan.waves, waves);
    assert_int_equal(plan.waves_max_rank, busiest);
    assert_true(plan.bytes_streamed == bytes_all);
    assert_int_equal(baselines_differ, 0);
    assert_true(worst <= PB_TOL_INVARIANT_CPU);
    pb_sweep_free(whole);
    pb_model_free(whole_model);
    pb_sweep_free(planned);
    pb_model_free(shape);
}

static void test_ranks_add_up(void **state) {
    (void)state;
    char path[1400];
    tu_oracle_case c = gqa_case("patching", path, sizeof path);
    pb_model *shape = load(path, PB_WEIGHTS_RESIDENT, 1);
    pb_sweep *planned = create(shape, &c, 0);
    size_t budget = small_budget(planned);
    pb_sweep_free(planned);
    pb_model_free(shape);
    check_ranks(&c, path, budget);
    free(c.spec);
    /* pairs whose caches are built together, their rows sharing batches */
    c = tu_case_named("patching", "tiny_gemma3_denoising");
    tu_fixture_file(path, sizeof path, "tiny_gemma3", "model.q8_0.gguf");
    check_ranks(&c, path, 0);
    free(c.spec);
}

/* A sweep of the case in subdir on backend given no --max-memory:
 * streamed, its budget is the plan's (on a device all that is left, more
 * than 1 GiB; on the CPU 1 GiB) and its run the plan's batches or groups;
 * resident, 1 GiB both. */
static void check_default_budget(const char *subdir, pb_backend_kind backend) {
    char path[1400];
    tu_oracle_case c = gqa_case(subdir, path, sizeof path);
    pb_model *streamed = load_on(path, backend, PB_WEIGHTS_STREAM, 0);
    pb_model *resident = load_on(path, backend, PB_WEIGHTS_RESIDENT, 0);
    pb_sweep *run = create(streamed, &c, 0);
    pb_plan_options po = {.weights = PB_WEIGHTS_STREAM};
    pb_plan plan;
    CHECK_OK(pb_sweep_plan(run, &po, &plan));
    size_t budget;
    CHECK_OK(pb_sweep_memory_budget(run, &budget));
    printf("[ MEASURE  ] %s %s on %s streamed, no --max-memory: budget %.1f MiB of %.1f MiB (plan %.1f MiB)\n", subdir,
           c.name, pb_backend_name(backend), (double)budget / 1048576, (double)plan.device_memory / 1048576,
           (double)plan.max_memory / 1048576);
    assert_int_equal(budget, plan.max_memory);
    if (backend == PB_BACKEND_CPU)
        assert_int_equal(budget, PB_SWEEP_DEFAULT_MEMORY);
    else
        assert_true(budget > PB_SWEEP_DEFAULT_MEMORY);
    if (plan.estimate) {
        assert_int_equal(groups_of(run), plan.waves);
    } else {
        CHECK_OK(pb_sweep_run(run));
        assert_int_equal(pb_sweep_batch_count(run), plan.waves);
    }
    pb_sweep *held = create(resident, &c, 0);
    po.weights = PB_WEIGHTS_RESIDENT;
    CHECK_OK(pb_sweep_plan(held, &po, &plan));
    CHECK_OK(pb_sweep_memory_budget(held, &budget));
    assert_int_equal(budget, PB_SWEEP_DEFAULT_MEMORY);
    assert_int_equal(plan.max_memory, PB_SWEEP_DEFAULT_MEMORY);
    pb_sweep_free(held);
    pb_sweep_free(run);
    pb_model_free(streamed);
    pb_model_free(resident);
    free(c.spec);
}

static void test_default_budget(void **state) {
    (void)state;
    for (int device = 0; device < 2; device++) {
        pb_backend_kind backend = device ? PB_BACKEND_CHECKED : PB_BACKEND_CPU;
        check_default_budget("patching", backend);
        check_default_budget("atp", backend);
    }
}

/* Streamed on a device (checked stands in for cuda) a wave holds every
 * row of a pair, as many as the memory allows, where the CPU's hold 256:
 * the plan says so, the run launches one batch per pair, and its effects
 * are the resident CPU run's. A case of more than 256 sites per pair. */
static void test_device_waves(void **state) {
    (void)state;
    char path[1400];
    tu_oracle_case c = gqa_case("patching", path, sizeof path);
    pb_model *shape = load_on(path, PB_BACKEND_CHECKED, PB_WEIGHTS_RESIDENT, 1);
    pb_model *cpu_shape = load(path, PB_WEIGHTS_RESIDENT, 1);
    pb_sweep *planned = create(shape, &c, 0), *cpu_planned = create(cpu_shape, &c, 0);
    int64_t n_sites = pb_sweep_site_count(planned);
    int n_pairs = pb_sweep_spec_of(planned)->n_pairs;
    assert_true(n_sites > 256);
    pb_plan_options po = {.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_STREAM};
    pb_plan plan, cpu_plan;
    CHECK_OK(pb_sweep_plan(planned, &po, &plan));
    CHECK_OK(pb_sweep_plan(cpu_planned, &po, &cpu_plan));
    assert_int_equal(plan.rows_per_wave, n_sites);
    assert_int_equal(plan.waves, n_pairs);
    assert_int_equal(cpu_plan.rows_per_wave, 256);
    assert_true(cpu_plan.waves > n_pairs);
    /* resident on the device: 256 */
    po.weights = PB_WEIGHTS_RESIDENT;
    CHECK_OK(pb_sweep_plan(planned, &po, &plan));
    assert_int_equal(plan.rows_per_wave, 256);
    pb_model *device = load_on(path, PB_BACKEND_CHECKED, PB_WEIGHTS_STREAM, 0);
    pb_model *resident = load(path, PB_WEIGHTS_RESIDENT, 0);
    pb_sweep *wide = create(device, &c, 0), *narrow = create(resident, &c, 0);
    CHECK_OK(pb_sweep_run(wide));
    CHECK_OK(pb_sweep_run(narrow));
    double diff = tu_sweep_difference(wide, narrow);
    printf("[ MEASURE  ] %s: %lld sites x %d pairs; checked streamed %lld batches, cpu resident %lld; max |d| %.2e\n",
           c.name, (long long)n_sites, n_pairs, (long long)pb_sweep_batch_count(wide),
           (long long)pb_sweep_batch_count(narrow), diff);
    assert_int_equal(pb_sweep_batch_count(wide), n_pairs);
    assert_true(pb_sweep_batch_count(narrow) > n_pairs);
    assert_true(diff <= PB_TOL_INVARIANT_CPU);
    pb_sweep_free(wide);
    pb_sweep_free(narrow);
    pb_sweep_free(planned);
    pb_sweep_free(cpu_planned);
    pb_model_free(device);
    pb_model_free(resident);
    pb_model_free(shape);
    pb_model_free(cpu_shape);
    free(c.spec);
}

/* Streamed on a device, the pairs whose caches are built together share
 * waves: case `name` of `model` (more than two layers, two pairs of equal
 * length) plans one group and one wave of all its rows, the checked backend
 * runs them so, with the stream reading what the plan counts, and the
 * effects are the resident CPU run's. */
static void check_group_wave(const char *name, const char *model) {
    char path[1400];
    tu_oracle_case c = tu_case_named("patching", name);
    tu_fixture_file(path, sizeof path, model, "model.q8_0.gguf");
    pb_model *shape = load_on(path, PB_BACKEND_CHECKED, PB_WEIGHTS_RESIDENT, 1);
    pb_sweep *planned = create(shape, &c, 0);
    pb_plan_options po = {.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_STREAM};
    pb_plan plan;
    CHECK_OK(pb_sweep_plan(planned, &po, &plan));
    int n_pairs = pb_sweep_spec_of(planned)->n_pairs;
    assert_int_equal(n_pairs, 2);
    assert_int_equal(plan.pairs_per_group, n_pairs);
    assert_int_equal(plan.base_runs, 2);
    assert_int_equal(plan.waves, 1);
    assert_true(plan.rows_per_wave >= plan.rows_run);
    pb_model *device = load_on(path, PB_BACKEND_CHECKED, PB_WEIGHTS_STREAM, 0);
    pb_model *resident = load(path, PB_WEIGHTS_RESIDENT, 0);
    pb_sweep *wide = create(device, &c, plan.max_memory), *narrow = create(resident, &c, 0);
    CHECK_OK(pb_sweep_run(wide));
    CHECK_OK(pb_sweep_run(narrow));
    long long layers;
    double bytes;
    pb_stream_counters(device->stream, &layers, &bytes);
    double diff = tu_sweep_difference(wide, narrow);
    printf("[ MEASURE  ] %s on checked, streamed: %d pairs a group, %lld base runs, %lld wave(s) of %lld rows, "
           "%.3f MiB streamed (plan %.3f MiB); cpu resident %lld batches; max |d| %.2e\n",
           c.name, plan.pairs_per_group, (long long)plan.base_runs, (long long)pb_sweep_batch_count(wide),
           (long long)plan.rows_run, bytes / 1048576, plan.bytes_streamed / 1048576,
           (long long)pb_sweep_batch_count(narrow), diff);
    assert_int_equal(pb_sweep_batch_count(wide), 1);
    assert_true(plan.bytes_streamed == bytes);
    assert_true(pb_sweep_batch_count(narrow) >= n_pairs);
    assert_true(diff <= PB_TOL_INVARIANT_CPU);
    pb_sweep_free(wide);
    pb_sweep_free(narrow);
    pb_sweep_free(planned);
    pb_model_free(device);
    pb_model_free(resident);
    pb_model_free(shape);
    free(c.spec);
}

/* logit_diff (the pairs' shared token columns), refusal_score (their
 * shared token ids) and KL (each row's own pair's clean distribution on
 * the device). */
static void test_device_group_wave(void **state) {
    (void)state;
    check_group_wave("tiny_gemma3_denoising", "tiny_gemma3");
    check_group_wave("tiny_bias_denoise_refusal", "tiny_bias");
    check_group_wave("tiny_bias_kl", "tiny_bias");
}

/* Auto holds the weights resident when they fit, streams when only that
 * fits, and refuses with the numbers when neither does; a streamed CUDA
 * plan of bf16 slots streams more bytes than one
 * of the file's blocks, whose embedding and unembedding sit on the device; a
 * shape-only model does not run. */
static void test_choices_and_refusals(void **state) {
    (void)state;
    char path[1400];
    tu_oracle_case f = gqa_case("patching", path, sizeof path);
    pb_model *shape = load(path, PB_WEIGHTS_RESIDENT, 1);
    pb_sweep *s = NULL;
    CHECK_OK(pb_sweep_create(&s, shape, f.spec, f.dir, NULL));
    const pb_weight_layout *l = &shape->layout;
    assert_true(l->stream_arena + l->stream_host < l->resident);
    pb_plan plan;
    pb_plan_options po = {.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_AUTO};
    CHECK_OK(pb_sweep_plan(s, &po, &plan));
    assert_int_equal(plan.weights, PB_WEIGHTS_RESIDENT);
    assert_true(plan.bytes_streamed == 0.0);
    /* room for the streamed weights, one pair's caches and one row, not for the resident weights */
    pb_batch_shape one;
    if (pb_sweep_batch_shape(s, 0, pb_sweep_max_T(s), 0, &one) != PB_OK)
        pb_error_clear();
    uint64_t streamed = l->stream_arena + l->stream_host, others = plan.peak_caches + one.need_min;
    po.device_memory = (size_t)(streamed + others + (l->resident - streamed) / 2);
    CHECK_OK(pb_sweep_plan(s, &po, &plan));
    assert_int_equal(plan.weights, PB_WEIGHTS_STREAM);
    assert_true(plan.bytes_streamed > 0.0);
    po.device_memory = 4096;
    assert_int_equal(pb_sweep_plan(s, &po, &plan), PB_ERR_OOM);
    assert_non_null(strstr(plan.why_not, "more than the 0.00 MiB of memory per rank"));
    assert_non_null(strstr(pb_last_error(), "one pair's run caches"));
    /* a shape-only model plans but does not run */
    assert_int_not_equal(pb_sweep_run(s), PB_OK);
    assert_non_null(strstr(pb_last_error(), "shape-only"));
    int32_t ids[3] = {1, 2, 3};
    float logits[3 * 128];
    assert_true(pb_model_get_config(shape)->vocab_size <= 128);
    assert_int_not_equal(pb_forward(shape, ids, 3, logits, NULL), PB_OK);
    assert_non_null(strstr(pb_last_error(), "shape-only"));
    uint64_t host_streamed = l->stream_arena + l->stream_host;
    pb_sweep_free(s);
    pb_model_free(shape);
    /* planning for a GPU needs none: bf16 slots (the blocks decoded and
     * narrowed on the host) stream too, the file's blocks in fewer bytes,
     * with the embedding and unembedding resident */
    pb_load_options cuda = {.backend = PB_BACKEND_CUDA, .dtype = PB_DTYPE_BF16, .shape_only = 1};
    CHECK_OK(pb_model_load(&shape, path, &cuda));
    CHECK_OK(pb_sweep_create(&s, shape, f.spec, f.dir, NULL));
    po = (pb_plan_options){.device_memory = (size_t)1 << 30, .weights = PB_WEIGHTS_STREAM};
    CHECK_OK(pb_sweep_plan(s, &po, &plan));
    double bf16_streamed = plan.bytes_streamed;
    assert_true(bf16_streamed > 0.0);
    pb_sweep_free(s);
    pb_model_free(shape);
    cuda.dtype = PB_DTYPE_FILE;
    CHECK_OK(pb_model_load(&shape, path, &cuda));
    CHECK_OK(pb_sweep_create(&s, shape, f.spec, f.dir, NULL));
    CHECK_OK(pb_sweep_plan(s, &po, &plan));
    assert_int_equal(plan.weights, PB_WEIGHTS_STREAM);
    assert_true(plan.peak_weights > host_streamed);   /* the embedding and unembedding on the device */
    assert_true(plan.bytes_streamed < bf16_streamed); /* Q8_0: 34 bytes per 32 values, bf16 64 */
    pb_sweep_free(s);
    pb_model_free(shape);
    free(f.spec);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plans_equal_runs),      cmocka_unit_test(test_ranks_add_up),
        cmocka_unit_test(test_default_budget),        cmocka_unit_test(test_device_waves),
        cmocka_unit_test(test_device_group_wave),     cmocka_unit_test(test_estimates),
        cmocka_unit_test(test_estimates_host_memory), cmocka_unit_test(test_choices_and_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
