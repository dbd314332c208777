/* The batched patching engine against (1) the PyTorch oracle fixtures
 * (tests/fixtures/patching/<case>: one full transformers forward per site),
 * (2) a naive C reference (one full pb_forward per site with an
 * intervention that overwrites the hook), and (3) exact invariants. */
#define _GNU_SOURCE
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <limits.h>
#include <string.h>
#include <unistd.h>

#include "model/capture.h"
#include "model/forward.h"
#include "util/internal.h"
#include "patching/metric.h"
#include "patching/noise.h"
#include "patching/sweep.h"
#include "test_util.h"
#include "tolerances.h"

static pb_model *load_fixture_model_on(const char *name, pb_backend_kind backend) {
    pb_load_options o = {.n_threads = 2, .backend = backend};
    return tu_load_case_model(name, &o);
}

static pb_model *load_fixture_model(const char *name) { return load_fixture_model_on(name, PB_BACKEND_CPU); }

/* Invariants run on the reference backend (rows independent: the issue's
 * 1e-6) and on the CPU backend (OpenBLAS: see tolerances.h). */
static const pb_backend_kind invariant_backends[2] = {PB_BACKEND_REFERENCE, PB_BACKEND_CPU};
static const double invariant_tolerance[2] = {PB_TOL_INVARIANT_REF, PB_TOL_INVARIANT_CPU};
static const char *const invariant_name[2] = {"reference", "cpu"};

static pb_sweep *make_sweep(pb_model *m, const char *spec, const char *dir, const pb_sweep_options *o) {
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, spec, dir, o) != PB_OK)
        fail_msg("pb_sweep_create: %s", pb_last_error());
    if (pb_sweep_run(s) != PB_OK)
        fail_msg("pb_sweep_run: %s", pb_last_error());
    return s;
}

/* Resolved, sorted base positions of an engine site in pair p. */
static int site_positions(const pb_sweep *s, int64_t i, int pair, int *out) {
    const pb_site *site = &s->sites[i];
    const pb_pair_spec *p = &s->spec.pairs[pair];
    int n = 0;
    if (site->all_positions) {
        for (int t = 0; t < p->base.T; t++)
            if (p->position_map[t] >= 0)
                out[n++] = t;
        return n;
    }
    for (int k = 0; k < site->n_positions; k++)
        out[n++] = site->positions[k] < 0 ? p->base.T + site->positions[k] : site->positions[k];
    for (int a = 1; a < n; a++)
        for (int b = a; b > 0 && out[b - 1] > out[b]; b--) {
            int t = out[b];
            out[b] = out[b - 1];
            out[b - 1] = t;
        }
    return n;
}

static int64_t find_site(const pb_sweep *s, json_t *row) {
    const char *comp = json_string_value(json_object_get(row, "component"));
    int layer = (int)json_integer_value(json_object_get(row, "layer"));
    json_t *head = json_object_get(row, "head");
    int h = json_is_null(head) ? -1 : (int)json_integer_value(head);
    json_t *positions = json_object_get(row, "positions");
    int buf[4096];
    for (int64_t i = 0; i < s->n_sites; i++) {
        const pb_site *site = &s->sites[i];
        if (strcmp(pb_component_name(site->component), comp) || site->layer != layer || site->head != h)
            continue;
        int ok = 1;
        for (int p = 0; ok && p < s->spec.n_pairs; p++) {
            json_t *want = json_array_get(positions, (size_t)p);
            int n = site_positions(s, i, p, buf);
            ok = (size_t)n == json_array_size(want);
            for (int k = 0; ok && k < n; k++)
                ok = buf[k] == json_integer_value(json_array_get(want, (size_t)k));
        }
        if (ok)
            return i;
    }
    return -1;
}

/* One fixture case: same sites, baselines and patched values; 0 when its model is absent. */
static int check_oracle_case(const tu_oracle_case *c, void *ctx) {
    (void)ctx;
    json_t *expected = c->expected;
    const char *model_name = json_string_value(json_object_get(expected, "model"));
    pb_model *m = load_fixture_model(model_name);
    if (!m) {
        printf("[ SKIPPED  ] %s: model %s not present (scripts/fetch-model.sh)\n", c->name, model_name);
        return 0;
    }
    double tol = strcmp(model_name, "smollm2") == 0 ? PB_TOL_SMOLLM2_EFFECT : PB_TOL_TINY_EFFECT;
    pb_sweep *s = make_sweep(m, c->spec, c->dir, NULL);
    json_t *rows = json_object_get(expected, "rows");
    assert_int_equal(json_array_size(rows), s->n_sites);
    double worst_patched = 0, worst_effect = 0, worst_base = 0;
    json_t *pairs = json_object_get(expected, "pairs");
    for (int p = 0; p < s->spec.n_pairs; p++) {
        double base, source;
        pb_sweep_get_pair(s, p, &base, &source);
        json_t *want = json_array_get(pairs, (size_t)p);
        double db = fabs(base - json_real_value(json_object_get(want, "base")));
        double ds = fabs(source - json_real_value(json_object_get(want, "source")));
        worst_base = fmax(worst_base, fmax(db, ds));
    }
    size_t r;
    json_t *row;
    json_array_foreach(rows, r, row) {
        int64_t site = find_site(s, row);
        if (site < 0)
            fail_msg("%s: oracle row %zu (%s layer %lld) has no engine site", c->name, r,
                     json_string_value(json_object_get(row, "component")),
                     json_integer_value(json_object_get(row, "layer")));
        for (int p = 0; p < s->spec.n_pairs; p++) {
            double patched, effect, base, source;
            pb_sweep_get_row(s, p, site, &patched, &effect);
            pb_sweep_get_pair(s, p, &base, &source);
            double want = json_real_value(json_array_get(json_object_get(row, "patched"), (size_t)p));
            double want_base = json_real_value(json_object_get(json_array_get(pairs, (size_t)p), "base"));
            double gap = json_real_value(json_object_get(json_array_get(pairs, (size_t)p), "source")) - want_base;
            double want_effect = (want - want_base) / gap;
            /* (patched - base) / gap carries the metrics' error magnified
             * by 1 / |gap| and by the effect's own size (tolerances.h) */
            double effect_tol = tol * fmax(1.0, fabs(want_effect)) / fmin(1.0, fabs(gap));
            worst_patched = fmax(worst_patched, fabs(patched - want));
            if (!isnan(effect))
                worst_effect = fmax(worst_effect, fabs(effect - want_effect) * tol / effect_tol);
            if (!(fabs(patched - want) <= tol * fmax(1.0, fabs(want))))
                fail_msg("%s: %s layer %d head %d pair %d: patched %.9g, oracle %.9g", c->name,
                         pb_component_name(s->sites[site].component), s->sites[site].layer, s->sites[site].head, p,
                         patched, want);
            if (!(fabs(effect - want_effect) <= effect_tol) && !(isnan(effect) && isnan(want_effect)))
                fail_msg("%s: %s layer %d head %d pair %d: effect %.9g, oracle %.9g (patched %.9g vs %.9g)", c->name,
                         pb_component_name(s->sites[site].component), s->sites[site].layer, s->sites[site].head, p,
                         effect, want_effect, patched, want);
        }
    }
    pb_sweep_summary sum;
    pb_sweep_get_summary(s, &sum);
    printf("[ MEASURE  ] %-28s %5lld rows (%lld run): max |d patched| %.2e, |d effect| (conditioned) %.2e, "
           "|d baseline| %.2e\n",
           c->name, (long long)sum.n_rows, (long long)sum.n_rows_executed, worst_patched, worst_effect, worst_base);
    assert_true(worst_effect <= tol);
    pb_sweep_free(s);
    pb_model_free(m);
    return 1;
}

/* Every fixture case: same sites, baselines and patched values. */
static void test_oracle_cases(void **state) {
    (void)state;
    assert_true(tu_visit_cases("patching", check_oracle_case, NULL) >= 7);
}

/* ---- invariants on tiny_gqa ---------------------------------------------- */

static const char *pair_ids = "{\"clean\": {\"ids\": [5, 17, 33, 9, 120, 64, 2, 77]},"
                              " \"corrupted\": {\"ids\": [5, 17, 40, 9, 120, 91, 2, 77]}}";
static const char *pair_ids_2 = "{\"clean\": {\"ids\": [11, 3, 98, 42, 7, 7, 60, 1]},"
                                " \"corrupted\": {\"ids\": [11, 3, 98, 15, 7, 7, 60, 100]}}";
static const char *all_components =
    "[{\"component\": \"resid_pre\", \"layers\": \"all\"}, {\"component\": \"resid_mid\", \"layers\": \"all\"},"
    " {\"component\": \"resid_post\", \"layers\": \"all\"}, {\"component\": \"attn_out\", \"layers\": \"all\"},"
    " {\"component\": \"mlp_out\", \"layers\": \"all\"}, {\"component\": \"z\", \"layers\": \"all\"},"
    " {\"component\": \"q\", \"layers\": \"all\"}, {\"component\": \"k\", \"layers\": \"all\"},"
    " {\"component\": \"v\", \"layers\": \"all\"}, {\"component\": \"resid_pre\", \"layers\": [1], \"positions\": \"all\"},"
    " {\"component\": \"z\", \"layers\": [0], \"heads\": [1, 3], \"positions\": [[2, 5], [0, 6, 7]]}]";
static const char *metric_json = "{\"kind\": \"logit_diff\", \"positive\": [3, 50], \"negative\": [7]}";

static char *spec_text(const char *mode, const char *pairs, const char *sites, const char *metric) {
    char *buf = NULL;
    if (asprintf(&buf, "{\"mode\": \"%s\", \"pairs\": [%s], \"sites\": %s, \"metric\": %s}", mode, pairs, sites,
                 metric) < 0)
        return NULL;
    return buf;
}

/* The spec of both pairs, every component and metric_json in mode. */
static char *two_pair_spec(const char *mode) {
    char pairs[1024];
    snprintf(pairs, sizeof pairs, "%s, %s", pair_ids, pair_ids_2);
    return spec_text(mode, pairs, all_components, metric_json);
}

/* Patching a run with its own activations (source == base, every row
 * forced to run) leaves the metric unchanged. */
static void test_self_patch_changes_nothing(void **state) {
    const char *same = "{\"clean\": {\"ids\": [5, 17, 33, 9, 120, 64, 2, 77]},"
                       " \"corrupted\": {\"ids\": [5, 17, 33, 9, 120, 64, 2, 77]}}";
    char *spec = spec_text("denoising", same, all_components, metric_json);
    for (int k = 0; k < 2; k++) {
        pb_model *m = load_fixture_model_on("tiny_gqa", invariant_backends[k]);
        pb_sweep_options o = {.run_trivial_rows = 1, .metric_fn_residual_layer = -1};
        assert_int_equal(pb_sweep_create(NULL, m, spec, NULL, &o), PB_ERR_ARG);
        pb_sweep *s = NULL;
        assert_int_equal(pb_sweep_create(&s, m, spec, NULL, &o), PB_OK);
        /* pb_sweep_run would refuse: clean == corrupted is below the effect floor */
        int64_t *all = malloc(sizeof(int64_t) * (size_t)s->n_rows);
        for (int64_t r = 0; r < s->n_rows; r++)
            all[r] = r;
        assert_int_equal(pb_sweep_run_rows(s, all, s->n_rows), PB_OK);
        free(all);
        double base, source, worst = 0;
        pb_sweep_get_pair(s, 0, &base, &source);
        assert_true(base == source);
        for (int64_t i = 0; i < s->n_sites; i++) {
            double patched;
            pb_sweep_get_row(s, 0, i, &patched, NULL);
            worst = fmax(worst, fabs(patched - base));
        }
        printf("[ MEASURE  ] self-patch (%s backend): %lld rows run, max |patched - base| %.2e\n", invariant_name[k],
               (long long)s->n_rows_executed, worst);
        assert_true(s->n_rows_executed > s->n_sites / 2);
        assert_true(worst <= invariant_tolerance[k]);
        pb_sweep_free(s);
        pb_model_free(m);
    }
    free(spec);
}

/* resid_pre at layer 0 over all positions replaces the whole input: the
 * patched run is the source run. */
static void test_layer0_all_positions_is_the_source(void **state) {
    const char *modes[2] = {"denoising", "noising"};
    char pairs[1024];
    snprintf(pairs, sizeof pairs, "%s, %s", pair_ids, pair_ids_2);
    for (int b = 0; b < 2; b++) {
        pb_model *m = load_fixture_model_on("tiny_gqa", invariant_backends[b]);
        double worst = 0;
        for (int k = 0; k < 2; k++) {
            char *spec = spec_text(modes[k], pairs,
                                   "[{\"component\": \"resid_pre\", \"layers\": [0], \"positions\": \"all\"}]",
                                   metric_json);
            pb_sweep *s = make_sweep(m, spec, NULL, NULL);
            for (int p = 0; p < 2; p++) {
                double base, source, patched, effect;
                pb_sweep_get_pair(s, p, &base, &source);
                pb_sweep_get_row(s, p, 0, &patched, &effect);
                /* the clean metric in denoising, the corrupted one in noising */
                double clean = s->spec.pairs[p].clean_is_source ? source : base;
                double corrupted = s->spec.pairs[p].clean_is_source ? base : source;
                double want = k == 0 ? clean : corrupted;
                worst = fmax(worst, fabs(patched - want));
                assert_true(fabs(patched - want) <= invariant_tolerance[b]);
                assert_true(fabs(effect - 1.0) <= invariant_tolerance[b] / fabs(source - base));
            }
            pb_sweep_free(s);
            free(spec);
        }
        printf("[ MEASURE  ] layer-0 resid_pre, all positions (%s backend): max |patched - target| %.2e\n",
               invariant_name[b], worst);
        pb_model_free(m);
    }
}

/* A batch of N rows equals the N rows run one by one; skipped rows are
 * exactly zero and really skipped. */
static void test_batch_equals_single_rows(void **state) {
    char *spec = two_pair_spec("noising");
    for (int k = 0; k < 2; k++) {
        pb_model *m = load_fixture_model_on("tiny_gqa", invariant_backends[k]);
        pb_sweep_options one = {.max_batch_rows = 1, .metric_fn_residual_layer = -1};
        pb_sweep *batched = make_sweep(m, spec, NULL, NULL), *single = make_sweep(m, spec, NULL, &one);
        double worst = 0;
        int64_t zeros = 0;
        for (int p = 0; p < 2; p++)
            for (int64_t i = 0; i < batched->n_sites; i++) {
                double a, b, effect;
                pb_sweep_get_row(batched, p, i, &a, &effect);
                pb_sweep_get_row(single, p, i, &b, NULL);
                worst = fmax(worst, fabs(a - b));
                if (batched->row_trivial[(int64_t)p * batched->n_sites + i]) {
                    assert_true(effect == 0.0);
                    zeros++;
                }
            }
        pb_sweep_summary sum;
        pb_sweep_get_summary(batched, &sum);
        printf("[ MEASURE  ] batch vs single rows (%s backend): %lld rows, %lld run, %lld exactly zero, "
               "max |diff| %.2e\n",
               invariant_name[k], (long long)sum.n_rows, (long long)sum.n_rows_executed, (long long)zeros, worst);
        assert_true(worst <= invariant_tolerance[k]);
        assert_true(zeros > 0);
        assert_int_equal(sum.n_rows_executed + zeros, sum.n_rows);
        assert_true(sum.flops_executed < sum.flops_naive);
        pb_sweep_free(batched);
        pb_sweep_free(single);
        pb_model_free(m);
    }
    free(spec);
}

/* Downloads made through the pretend device backends below, and the
 * largest of them. */
static int64_t g_downloads, g_largest_download;
static pb_status (*g_real_download)(pb_backend *, void *, const void *, size_t);

static pb_status counting_download(pb_backend *b, void *dst, const void *src, size_t bytes) {
    g_downloads++;
    if ((int64_t)bytes > g_largest_download)
        g_largest_download = (int64_t)bytes;
    return g_real_download(b, dst, src, bytes);
}

/* Every row of `got` is trivial where `want`'s is and has its patched
 * value, bit for bit; returns the trivial rows. */
static int64_t assert_same_rows(const pb_sweep *want, const pb_sweep *got) {
    int64_t trivial = 0;
    for (int64_t r = 0; r < want->n_rows; r++) {
        assert_int_equal(want->row_trivial[r], got->row_trivial[r]);
        assert_true(want->patched[r] == got->patched[r]);
        trivial += want->row_trivial[r];
    }
    return trivial;
}

/* The device-memory path of the trivial-row check (one host mirror of each
 * pair's caches instead of per-row downloads), taken by pretending the
 * reference backend's memory is not host memory: the same rows are trivial,
 * every value is identical to the direct path, and the downloads do not
 * grow with the rows checked. */
static void test_device_memory_path(void **state) {
    char *spec = two_pair_spec("denoising");
    pb_model *m = load_fixture_model_on("tiny_gqa", PB_BACKEND_REFERENCE);
    pb_sweep *direct = make_sweep(m, spec, NULL, NULL);
    const pb_backend_ops *saved = m->backend->ops;
    pb_backend_ops device_like = *saved;
    device_like.host_memory = 0;
    g_real_download = saved->download;
    device_like.download = counting_download;
    g_downloads = 0;
    m->backend->ops = &device_like;
    pb_sweep *mirrored = make_sweep(m, spec, NULL, NULL);
    m->backend->ops = saved;
    int64_t trivial = assert_same_rows(direct, mirrored);
    pb_sweep_summary sum;
    pb_sweep_get_summary(mirrored, &sum);
    printf("[ MEASURE  ] trivial rows through host mirrors: %lld of %lld, identical to direct reads; %lld downloads "
           "for %lld batches\n",
           (long long)trivial, (long long)direct->n_rows, (long long)g_downloads, (long long)mirrored->n_batches);
    assert_true(trivial > 0);
    /* per pair: two mirrors and the baselines; per batch: the metric */
    assert_true(g_downloads <= 8 * direct->spec.n_pairs + 2 * mirrored->n_batches);
    pb_sweep_free(direct);
    pb_sweep_free(mirrored);
    pb_model_free(m);
    free(spec);
}

/* Past the mirror cap (lowered here to two blocks of the widest row), the
 * device-memory path mirrors one (component, layer) block of each run at a
 * time: the same rows are trivial, every value identical to the direct
 * path, no download spans a whole cache, and the downloads follow the
 * blocks, not the rows checked. A cap below one block falls back to
 * per-row reads, still with the same results. */
static void test_device_memory_past_cap(void **state) {
    (void)state;
    char *spec = two_pair_spec("denoising");
    pb_model *m = load_fixture_model_on("tiny_gqa", PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(m);
    pb_sweep *direct = make_sweep(m, spec, NULL, NULL);
    int max_T = 0;
    for (int p = 0; p < direct->spec.n_pairs; p++) {
        max_T = direct->spec.pairs[p].base.T > max_T ? direct->spec.pairs[p].base.T : max_T;
        max_T = direct->spec.pairs[p].source.T > max_T ? direct->spec.pairs[p].source.T : max_T;
    }
    int widest = c->d_model > c->n_heads * c->head_dim ? c->d_model : c->n_heads * c->head_dim;
    size_t block_pair = 2 * sizeof(float) * (size_t)max_T * (size_t)widest;
    const pb_backend_ops *saved = m->backend->ops;
    pb_backend_ops device_like = *saved;
    device_like.host_memory = 0;
    device_like.download = counting_download;
    g_real_download = saved->download;
    const size_t caps[2] = {block_pair, block_pair / 4};
    int64_t downloads[2];
    for (int k = 0; k < 2; k++) {
        pb_sweep *s = NULL;
        if (pb_sweep_create(&s, m, spec, NULL, NULL) != PB_OK)
            fail_msg("pb_sweep_create: %s", pb_last_error());
        s->mirror_max_bytes = caps[k];
        g_downloads = g_largest_download = 0;
        m->backend->ops = &device_like;
        pb_status status = pb_sweep_run(s);
        m->backend->ops = saved;
        if (status != PB_OK)
            fail_msg("pb_sweep_run: %s", pb_last_error());
        int64_t trivial = assert_same_rows(direct, s);
        assert_true(trivial > 0);
        assert_true((size_t)g_largest_download <= caps[0] / 2); /* no whole-cache mirror */
        downloads[k] = g_downloads;
        printf("[ MEASURE  ] mirror cap %zu bytes: %lld downloads (largest %lld bytes) for %lld rows, %lld trivial\n",
               caps[k], (long long)g_downloads, (long long)g_largest_download, (long long)s->n_rows,
               (long long)trivial);
        pb_sweep_free(s);
    }
    /* blocks: at most two runs x (n_layers + 1) layers x every component
     * per pair; plus the baselines and each batch's metric, as above */
    int64_t blocks = 2 * (int64_t)direct->spec.n_pairs * (c->n_layers + 1) * PB_COMPONENT_COUNT;
    assert_true(downloads[0] <= blocks + 8 * direct->spec.n_pairs + 2 * direct->n_batches);
    assert_true(downloads[0] < downloads[1]); /* the per-row fallback pays per row */
    pb_sweep_free(direct);
    pb_model_free(m);
    free(spec);
}

/* Uploads made through the pretend device backend below. */
static int64_t g_uploads;
static pb_status (*g_real_upload)(pb_backend *, void *, const void *, size_t);

static pb_status counting_upload(pb_backend *b, void *dst, const void *src, size_t bytes) {
    g_uploads++;
    return g_real_upload(b, dst, src, bytes);
}

/* An executor run of several jobs that start at the embedding uploads
 * their ids and positions once (one wait on a device, not one per job),
 * and each job's output is what the job gives run alone, bit for bit. */
static void test_exec_one_upload_per_run(void **state) {
    (void)state;
    enum { JOBS = 4, T = 6 };
    pb_model *m = load_fixture_model_on("tiny_gqa", PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(m);
    int32_t ids[JOBS][T];
    for (int j = 0; j < JOBS; j++)
        for (int t = 0; t < T; t++)
            ids[j][t] = (7 * j + 3 * t + 1) % c->vocab_size;
    float *kv = calloc((size_t)2 * JOBS * c->n_layers * T * c->n_kv_heads * c->head_dim, sizeof(float));
    assert_non_null(kv);
    size_t kv_job = (size_t)c->n_layers * T * c->n_kv_heads * c->head_dim;
    pb_exec_job jobs[JOBS];
    for (int j = 0; j < JOBS; j++)
        jobs[j] = (pb_exec_job){.T = T - j % 2,
                                .p0 = 0,
                                .start_step = 0,
                                .ids = ids[j],
                                .k_cache = kv + 2 * j * kv_job,
                                .v_cache = kv + (2 * j + 1) * kv_job,
                                .kv_capacity = T};
    pb_exec *e = NULL;
    assert_int_equal(pb_exec_create(&e, m, JOBS * T, T), PB_OK);
    const pb_backend_ops *saved = m->backend->ops;
    pb_backend_ops device_like = *saved;
    device_like.host_memory = 0;
    device_like.upload = counting_upload;
    g_real_upload = saved->upload;
    g_uploads = 0;
    m->backend->ops = &device_like;
    pb_status status = pb_exec_run(e, jobs, JOBS, 2 * c->n_layers, NULL, NULL);
    m->backend->ops = saved;
    assert_int_equal(status, PB_OK);
    assert_int_equal(g_uploads, 1);
    float *together = malloc(sizeof(float) * JOBS * T * c->d_model);
    assert_non_null(together);
    for (int j = 0; j < JOBS; j++)
        memcpy(together + (size_t)j * T * c->d_model, pb_exec_output(e, j), sizeof(float) * jobs[j].T * c->d_model);
    for (int j = 0; j < JOBS; j++) {
        assert_int_equal(pb_exec_run(e, &jobs[j], 1, 2 * c->n_layers, NULL, NULL), PB_OK);
        assert_memory_equal(together + (size_t)j * T * c->d_model, pb_exec_output(e, 0),
                            sizeof(float) * jobs[j].T * c->d_model);
    }
    free(together);
    pb_exec_free(e);
    free(kv);
    pb_model_free(m);
}

/* LongRoPE picks its frequencies by each job's length: one run holding
 * jobs of 16 tokens (short factors) and 20 (long), interleaved, gives each
 * the final residual transformers computes for it alone. */
static void test_exec_longrope_mixed_lengths(void **state) {
    (void)state;
    pb_model *m = load_fixture_model_on("tiny_phi3_longrope", PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(m);
    char path[1024];
    int T[2];
    int32_t *ids[2];
    float *want[2];
    const char *sub[2] = {"short/", ""};
    for (int k = 0; k < 2; k++) {
        char file[128];
        snprintf(file, sizeof file, "%sids.npy", sub[k]);
        tu_fixture_file(path, sizeof path, "tiny_phi3_longrope", file);
        ids[k] = tu_read_ids(path, &T[k]);
        snprintf(file, sizeof file, "%sblocks.%d.hook_resid_post.npy", sub[k], c->n_layers - 1);
        tu_fixture_file(path, sizeof path, "tiny_phi3_longrope", file);
        int n_dims;
        int64_t shape[8];
        if (pb_npy_read(path, (void **)&want[k], PB_NPY_F32, &n_dims, shape) != PB_OK)
            fail_msg("%s", pb_last_error());
    }
    assert_true(!pb_rope_uses_long_factors(c, T[0]) && pb_rope_uses_long_factors(c, T[1]));
    enum { JOBS = 4 };
    size_t kv_job = (size_t)c->n_layers * T[1] * c->n_kv_heads * c->head_dim;
    float *kv = calloc(2 * JOBS * kv_job, sizeof(float));
    assert_non_null(kv);
    pb_exec_job jobs[JOBS];
    for (int j = 0; j < JOBS; j++)
        jobs[j] = (pb_exec_job){.T = T[j % 2],
                                .ids = ids[j % 2],
                                .k_cache = kv + 2 * j * kv_job,
                                .v_cache = kv + (2 * j + 1) * kv_job,
                                .kv_capacity = T[1]};
    pb_exec *e = NULL;
    assert_int_equal(pb_exec_create(&e, m, 2 * (T[0] + T[1]), T[1]), PB_OK);
    assert_int_equal(pb_exec_run(e, jobs, JOBS, 2 * c->n_layers, NULL, NULL), PB_OK);
    for (int j = 0; j < JOBS; j++) {
        double nmse = tu_nmse(pb_exec_output(e, j), want[j % 2], (size_t)T[j % 2] * c->d_model);
        printf("[ MEASURE  ] longrope job %d (T=%d, %s factors): final residual NMSE %.3g vs transformers\n", j,
               T[j % 2], j % 2 ? "long" : "short", nmse);
        assert_true(nmse <= PB_TOL_TINY_HOOK_NMSE);
    }
    pb_exec_free(e);
    free(kv);
    for (int k = 0; k < 2; k++) {
        free(ids[k]);
        free(want[k]);
    }
    pb_model_free(m);
}

/* The download that fails in test_failure_at_every_download (1-based). */
static int64_t g_fail_at;

static pb_status failing_download(pb_backend *b, void *dst, const void *src, size_t bytes) {
    if (++g_downloads == g_fail_at)
        return pb_fail(PB_ERR_CUDA, "injected download failure %lld", (long long)g_fail_at);
    return g_real_download(b, dst, src, bytes);
}

/* The launch / plan / finish pipeline of pb_sweep_run_rows, failed at each
 * download in turn (mirrors, baselines, every batch's metric values) with
 * two rows per batch: the failure's own message comes back, and whatever
 * was recorded is consistent (n_rows_done counts the rows marked done, the
 * executed and trivial rows add up, each recorded value is the value of an
 * uninterrupted sweep); a later run completes the rest identically. */
static void test_failure_at_every_download(void **state) {
    (void)state;
    char *spec = two_pair_spec("denoising");
    pb_model *m = load_fixture_model_on("tiny_gqa", PB_BACKEND_REFERENCE);
    pb_sweep_options o = {.max_batch_rows = 2, .metric_fn_residual_layer = -1};
    pb_sweep *direct = make_sweep(m, spec, NULL, &o);
    const pb_backend_ops *saved = m->backend->ops;
    pb_backend_ops device_like = *saved;
    device_like.host_memory = 0;
    device_like.download = failing_download;
    g_real_download = saved->download;
    int64_t total = 0, failures = 0;
    for (g_fail_at = 1;; g_fail_at++) {
        pb_sweep *s = NULL;
        if (pb_sweep_create(&s, m, spec, NULL, &o) != PB_OK)
            fail_msg("pb_sweep_create: %s", pb_last_error());
        g_downloads = 0;
        m->backend->ops = &device_like;
        pb_status status = pb_sweep_run(s);
        m->backend->ops = saved;
        if (status == PB_OK) {
            total = g_downloads;
            pb_sweep_free(s);
            break;
        }
        failures++;
        char want[64];
        snprintf(want, sizeof want, "injected download failure %lld", (long long)g_fail_at);
        if (!strstr(pb_last_error(), want))
            fail_msg("failure at download %lld: message \"%s\"", (long long)g_fail_at, pb_last_error());
        int64_t done = 0, trivial = 0;
        for (int64_t r = 0; r < s->n_rows; r++) {
            if (s->row_state[r] != PB_ROW_DONE)
                continue;
            done++;
            trivial += s->row_trivial[r];
            assert_true(s->patched[r] == direct->patched[r]);
        }
        assert_int_equal(done, s->n_rows_done);
        assert_int_equal(done, s->n_rows_executed + trivial);
        /* the rest, without failures */
        assert_int_equal(pb_sweep_run(s), PB_OK);
        for (int64_t r = 0; r < s->n_rows; r++)
            assert_true(s->row_state[r] == PB_ROW_DONE && s->patched[r] == direct->patched[r]);
        pb_sweep_free(s);
    }
    printf("[ MEASURE  ] sweep failed at each of %lld downloads (%lld batches): consistent, completed on rerun\n",
           (long long)failures, (long long)direct->n_batches);
    assert_true(failures > 4 && total == failures);
    pb_sweep_free(direct);
    pb_model_free(m);
    free(spec);
}

/* A pretend device whose call g_fault_at (1-based, 0: none) faults, after
 * which every call fails like a CUDA context after a kernel fault (the error
 * is sticky), and free reports its own failure the way PB_CUDA_CHECK_VOID
 * does. The memory is still released, so nothing leaks. */
static const pb_backend_ops *g_sticky_real;
static int64_t g_sticky_calls, g_fault_at;

static pb_status sticky_check(const char *op) {
    g_sticky_calls++;
    if (g_fault_at && g_sticky_calls == g_fault_at)
        return pb_fail(PB_ERR_CUDA, "injected fault in %s (call %lld)", op, (long long)g_fault_at);
    if (g_fault_at && g_sticky_calls > g_fault_at)
        return pb_fail(PB_ERR_CUDA, "%s after the fault: unspecified launch failure", op);
    return PB_OK;
}

static void sticky_free(pb_backend *b, void *ptr) {
    g_sticky_real->free(b, ptr);
    if (ptr && g_fault_at && g_sticky_calls >= g_fault_at)
        (void)pb_fail_cleanup(PB_ERR_CUDA, "cudaFree(ptr) after the fault: unspecified launch failure");
}
static pb_status sticky_alloc(pb_backend *b, void **out, size_t bytes) {
    PB_TRY(sticky_check("alloc"));
    return g_sticky_real->alloc(b, out, bytes);
}
static pb_status sticky_upload(pb_backend *b, void *dst, const void *src, size_t bytes) {
    PB_TRY(sticky_check("upload"));
    return g_sticky_real->upload(b, dst, src, bytes);
}
static pb_status sticky_download(pb_backend *b, void *dst, const void *src, size_t bytes) {
    PB_TRY(sticky_check("download"));
    return g_sticky_real->download(b, dst, src, bytes);
}
static pb_status sticky_copy(pb_backend *b, void *dst, const void *src, size_t bytes) {
    PB_TRY(sticky_check("copy"));
    return g_sticky_real->copy(b, dst, src, bytes);
}
static pb_status sticky_synchronize(pb_backend *b) {
    PB_TRY(sticky_check("synchronize"));
    return g_sticky_real->synchronize(b);
}
static pb_status sticky_embed(pb_backend *b, float *out, const void *table, pb_dtype dtype, const int32_t *ids, int T,
                              int d, float scale) {
    PB_TRY(sticky_check("embed"));
    return g_sticky_real->embed(b, out, table, dtype, ids, T, d, scale);
}
static pb_status sticky_rmsnorm(pb_backend *b, float *out, const float *x, const float *w, int rows, int d, float eps) {
    PB_TRY(sticky_check("rmsnorm"));
    return g_sticky_real->rmsnorm(b, out, x, w, rows, d, eps);
}
static pb_status sticky_matmul(pb_backend *b, float *out, const float *x, const void *w, pb_dtype dtype,
                               const float *bias, int rows, int n, int k) {
    PB_TRY(sticky_check("matmul"));
    return g_sticky_real->matmul(b, out, x, w, dtype, bias, rows, n, k);
}
static pb_status sticky_rope(pb_backend *b, float *x, const int32_t *positions, const float *inv_freq, int T,
                             int n_heads, int head_dim, int rotary_dims, float scale) {
    PB_TRY(sticky_check("rope"));
    return g_sticky_real->rope(b, x, positions, inv_freq, T, n_heads, head_dim, rotary_dims, scale);
}
static pb_status sticky_attention(pb_backend *b, float *out, const float *q, const float *k, const float *v, int T,
                                  int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                                  const pb_attention_params *params) {
    PB_TRY(sticky_check("attention"));
    return g_sticky_real->attention(b, out, q, k, v, T, T_kv, q_start, n_heads, n_kv_heads, head_dim, params);
}
static pb_status sticky_glu(pb_backend *b, float *out, const float *gate, const float *up, size_t rows, size_t width,
                            size_t stride, pb_activation act) {
    PB_TRY(sticky_check("glu"));
    return g_sticky_real->glu(b, out, gate, up, rows, width, stride, act);
}
static pb_status sticky_add(pb_backend *b, float *out, const float *x, const float *y, size_t n) {
    PB_TRY(sticky_check("add"));
    return g_sticky_real->add(b, out, x, y, n);
}
static pb_status sticky_metric_rows(pb_backend *b, double *out, const float *logits, int rows, int n_out,
                                    pb_metric_kind kind, const int32_t *positive, int n_positive,
                                    const int32_t *negative, int n_negative, const double *ref_logprobs,
                                    const int32_t *ref_row, int n_ref) {
    PB_TRY(sticky_check("metric_rows"));
    return g_sticky_real->metric_rows(b, out, logits, rows, n_out, kind, positive, n_positive, negative, n_negative,
                                      ref_logprobs, ref_row, n_ref);
}
static pb_status sticky_copy_regions(pb_backend *b, const pb_copy_region *regions, int n_regions) {
    PB_TRY(sticky_check("copy_regions"));
    return g_sticky_real->copy_regions(b, regions, n_regions);
}

/* A sweep on the sticky pretend device, faulted at each backend call in
 * turn (every one of the first 200, then a stride that visits about 200
 * more): whatever fails after the fault (the in-flight batch being
 * finished, caches and batch buffers freed, then pb_sweep_free), the
 * message the caller reads is the fault's own. */
static void test_first_failure_survives_cleanup(void **state) {
    (void)state;
    char *spec = two_pair_spec("denoising");
    pb_model *m = load_fixture_model_on("tiny_gqa", PB_BACKEND_REFERENCE);
    pb_sweep_options o = {.max_batch_rows = 2, .metric_fn_residual_layer = -1};
    const pb_backend_ops *saved = m->backend->ops;
    g_sticky_real = saved;
    pb_backend_ops sticky = *saved;
    sticky.host_memory = 0;
    sticky.alloc = sticky_alloc;
    sticky.free = sticky_free;
    sticky.upload = sticky_upload;
    sticky.download = sticky_download;
    sticky.copy = sticky_copy;
    sticky.synchronize = sticky_synchronize;
    sticky.embed = sticky_embed;
    sticky.rmsnorm = sticky_rmsnorm;
    sticky.matmul = sticky_matmul;
    sticky.rope = sticky_rope;
    sticky.attention = sticky_attention;
    sticky.glu = sticky_glu;
    sticky.add = sticky_add;
    assert_non_null(saved->metric_rows);
    assert_non_null(saved->copy_regions);
    assert_null(saved->attention_jobs); /* the executor's per-job path: attention is wrapped */
    sticky.metric_rows = sticky_metric_rows;
    sticky.copy_regions = sticky_copy_regions;
    int64_t total = -1, faults = 0, stride = 1;
    for (g_fault_at = 0;; g_fault_at += g_fault_at < 200 ? 1 : stride) {
        if (total >= 0 && g_fault_at > total)
            break;
        g_sticky_calls = 0;
        m->backend->ops = &sticky;
        pb_sweep *s = NULL;
        pb_status status = pb_sweep_create(&s, m, spec, NULL, &o);
        if (status == PB_OK)
            status = pb_sweep_run(s);
        pb_sweep_free(s);
        m->backend->ops = saved;
        if (g_fault_at == 0) {
            if (status != PB_OK)
                fail_msg("without a fault: %s", pb_last_error());
            total = g_sticky_calls;
            stride = total > 400 ? (total - 200) / 200 : 1;
            continue;
        }
        assert_int_equal(status, PB_ERR_CUDA);
        if (!strstr(pb_last_error(), "injected fault in ") || strstr(pb_last_error(), "after the fault"))
            fail_msg("fault at call %lld of %lld: message \"%s\"", (long long)g_fault_at, (long long)total,
                     pb_last_error());
        faults++;
    }
    printf("[ MEASURE  ] sticky fault at %lld of %lld backend calls: the fault's message survived each cleanup\n",
           (long long)faults, (long long)total);
    assert_true(faults >= 200 || faults == total);
    pb_error_clear();
    pb_model_free(m);
    free(spec);
}

/* ---- the naive C reference: one full forward per site ---------------------- */

typedef struct naive_patch {
    pb_hook_kind hook;
    int layer;
    int head;
    int head_dim;
    int width;
    const int *positions;
    int n_positions;
    const float *source; /* (T, width) source activation of that hook */
} naive_patch;

static pb_status naive_intervene(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    naive_patch *np = user;
    if (hook != np->hook || layer != np->layer)
        return PB_OK;
    for (int i = 0; i < np->n_positions; i++) {
        int p = np->positions[i];
        int col = np->head >= 0 ? np->head * np->head_dim : 0;
        int n = np->head >= 0 ? np->head_dim : np->width;
        for (int c = 0; c < n; c++)
            data[(size_t)(p - p0) * np->width + col + c] = np->source[(size_t)p * np->width + col + c];
    }
    return PB_OK;
}

static const pb_hook_kind component_hook_kind[PB_COMPONENT_COUNT] = {
    PB_HOOK_RESID_PRE, PB_HOOK_RESID_MID, PB_HOOK_RESID_POST, PB_HOOK_ATTN_OUT, PB_HOOK_MLP_OUT,
    PB_HOOK_Z,         PB_HOOK_Q,         PB_HOOK_K,          PB_HOOK_V};

static void test_matches_naive_forward_per_site(void **state) {
    pb_model *m = load_fixture_model("tiny_bias");
    const pb_model_config *c = pb_model_get_config(m);
    const char *pair = "{\"clean\": {\"ids\": [4, 60, 12, 33, 90, 2, 41, 8, 19]},"
                       " \"corrupted\": {\"ids\": [4, 60, 12, 71, 90, 2, 5, 8, 19]}}";
    const char *metric = "{\"kind\": \"refusal_score\", \"tokens\": [10, 20, 30]}";
    char *spec = spec_text("denoising", pair, all_components, metric);
    pb_sweep_options o = {.run_trivial_rows = 1, .metric_fn_residual_layer = -1};
    pb_sweep *s = make_sweep(m, spec, NULL, &o);
    const pb_pair_spec *p = &s->spec.pairs[0];
    int T = p->base.T, V = c->vocab_size;
    pb_capture *cap;
    assert_int_equal(pb_capture_create(&cap, m, "*"), PB_OK);
    assert_int_equal(pb_forward(m, p->source.ids, T, NULL, cap), PB_OK);
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    double worst = 0;
    int positions[64];
    for (int64_t i = 0; i < s->n_sites; i++) {
        const pb_site *site = &s->sites[i];
        pb_hook_kind hook = component_hook_kind[site->component];
        pb_capture_entry *entry = pb_capture_find(cap, hook, site->layer);
        assert_non_null(entry);
        naive_patch np = {.hook = hook,
                          .layer = site->layer,
                          .head = site->head,
                          .head_dim = c->head_dim,
                          .width = (int)(entry->row_shape[0] * (entry->n_dims == 3 ? entry->row_shape[1] : 1)),
                          .positions = positions,
                          .n_positions = site_positions(s, i, 0, positions),
                          .source = entry->data};
        pb_forward_extras extras = {.intervene = naive_intervene, .intervene_user = &np};
        assert_int_equal(pb_forward_ex(m, p->base.ids, T, &extras, logits, NULL), PB_OK);
        double want = pb_metric_refusal_score(logits + (size_t)(T - 1) * V, V, s->spec.metric.positive,
                                              s->spec.metric.n_positive);
        double got;
        pb_sweep_get_row(s, 0, i, &got, NULL);
        worst = fmax(worst, fabs(got - want));
        if (!(fabs(got - want) <= PB_TOL_TINY_EFFECT))
            fail_msg("site %lld (%s layer %d head %d): engine %.9g, naive %.9g", (long long)i,
                     pb_component_name(site->component), site->layer, site->head, got, want);
    }
    printf("[ MEASURE  ] naive C reference: %lld sites, max |engine - naive| %.2e\n", (long long)s->n_sites, worst);
    free(logits);
    pb_capture_free(cap);
    pb_sweep_free(s);
    free(spec);
    pb_model_free(m);
}

#define assert_close(a, b, tol) assert_true(fabs((double)(a) - (double)(b)) <= (tol))

static void test_metric_arithmetic(void **state) {
    float logits[4] = {1.0f, 2.0f, 3.0f, 4.0f};
    double lse = log(exp(1.0) + exp(2.0) + exp(3.0) + exp(4.0));
    int32_t set[2] = {1, 3};
    assert_close(pb_metric_logprob(logits, 4, set, 2), log(exp(2.0) + exp(4.0)) - lse, 1e-12);
    assert_close(pb_metric_refusal_score(logits, 4, set, 2), log(exp(2.0) + exp(4.0)) - log(exp(1.0) + exp(3.0)),
                 1e-12);
    float selected[3] = {2.0f, 4.0f, 1.0f};
    assert_close(pb_metric_logit_diff(selected, 2, 1), 2.0, 0);
    double ref[4];
    pb_log_softmax(logits, 4, ref);
    assert_close(pb_metric_kl(ref, logits, 4), 0.0, 1e-15);
    float other[4] = {4.0f, 3.0f, 2.0f, 1.0f};
    double kl = 0;
    for (int i = 0; i < 4; i++)
        kl += exp(ref[i]) * (ref[i] - ((double)other[i] - lse));
    assert_close(pb_metric_kl(ref, other, 4), kl, 1e-12);
    float x[3] = {1, 2, 3}, u[3] = {0, 0.6f, 0.8f};
    assert_close(pb_metric_projection(x, u, 3), 2 * 0.6f + 3 * 0.8f, 1e-6);
    /* a probability near 1: log(1 - P) must not cancel to -inf */
    float sharp[3] = {40.0f, 0.0f, 0.0f};
    int32_t top[1] = {0};
    assert_close(pb_metric_refusal_score(sharp, 3, top, 1), 40.0 - log(2.0), 1e-9);
}

/* host/patching/noise.c against the values the Python port recorded (bit patterns). */
static void test_noise_generator(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/patching/tiny_gqa_gaussian_noise/expected.json", tu_fixtures());
    json_error_t err;
    json_t *e = json_load_file(path, 0, &err);
    assert_non_null(e);
    json_t *noise = json_object_get(json_object_get(e, "info"), "noise");
    double sigma = json_real_value(json_object_get(noise, "sigma"));
    pb_model *m = load_fixture_model("tiny_gqa");
    const pb_model_config *c = pb_model_get_config(m);
    assert_true(fabs(pb_noise_sigma(m->token_embd.data, (size_t)c->vocab_size * c->d_model) - sigma) <= 1e-15);
    /* the sigma noise uses, computed at load so that no sweep downloads the
     * table: the same arithmetic on the same values, bit for bit */
    assert_true(m->embed_sigma == pb_noise_sigma(m->token_embd.data, (size_t)c->vocab_size * c->d_model));
    float values[8 * 64];
    pb_noise_fill(values, 3, c->d_model, json_real_value(json_object_get(noise, "scale")), sigma,
                  (uint64_t)json_integer_value(json_object_get(noise, "seed")));
    json_t *hex = json_object_get(noise, "first_values_float32_hex");
    assert_int_equal(json_array_size(hex), 8);
    for (size_t i = 0; i < 8; i++) {
        uint32_t bits;
        memcpy(&bits, &values[i], 4);
        char mine[16];
        snprintf(mine, sizeof mine, "%08x", bits);
        assert_string_equal(mine, json_string_value(json_array_get(hex, i)));
    }
    pb_model_free(m);
    json_decref(e);
}

/* A user metric callback stands in for the spec's metric: computing the
 * same logit difference from full logits gives the built-in values. */
static float callback_logit_diff(const float *logits, int n, void *user) {
    (void)user;
    (void)n;
    return (float)((logits[3] + logits[50]) / 2.0 - logits[7]);
}

static float callback_first_coordinate(const float *residual, int n, void *user) {
    (void)n;
    *(int *)user += 1;
    return residual[0];
}

static void test_metric_callback_and_worker_subsets(void **state) {
    pb_model *m = load_fixture_model("tiny_gqa");
    char *spec = two_pair_spec("denoising");
    pb_sweep *builtin = make_sweep(m, spec, NULL, NULL);
    pb_sweep_options o = {.metric_fn = callback_logit_diff, .metric_fn_residual_layer = -1};
    pb_sweep *callback = make_sweep(m, spec, NULL, &o);
    /* A worker split: even rows, then odd rows, equals the whole sweep. */
    pb_sweep *split = NULL;
    assert_int_equal(pb_sweep_create(&split, m, spec, NULL, NULL), PB_OK);
    int64_t n = split->n_rows, *half = malloc(sizeof(int64_t) * (size_t)n);
    for (int parity = 0; parity < 2; parity++) {
        int64_t k = 0;
        for (int64_t r = parity; r < n; r += 2)
            half[k++] = r;
        assert_int_equal(pb_sweep_run_rows(split, half, k), PB_OK);
    }
    free(half);
    double worst_callback = 0, worst_split = 0;
    for (int p = 0; p < 2; p++)
        for (int64_t i = 0; i < builtin->n_sites; i++) {
            double a, b, c;
            pb_sweep_get_row(builtin, p, i, &a, NULL);
            pb_sweep_get_row(callback, p, i, &b, NULL);
            pb_sweep_get_row(split, p, i, &c, NULL);
            worst_callback = fmax(worst_callback, fabs(a - b));
            worst_split = fmax(worst_split, fabs(a - c));
        }
    /* the callback returns float: allow its rounding */
    assert_true(worst_callback <= 1e-5);
    assert_true(worst_split <= PB_TOL_INVARIANT_CPU);
    /* A residual callback at layer 1 sees only the residual: sites above
     * layer 1 cannot change it. */
    int calls = 0;
    pb_sweep_options r = {.metric_fn = callback_first_coordinate, .metric_user = &calls, .metric_fn_residual_layer = 1};
    pb_sweep *resid = make_sweep(m, spec, NULL, &r);
    assert_true(calls > 0);
    for (int64_t i = 0; i < resid->n_sites; i++) {
        double e;
        pb_sweep_get_row(resid, 0, i, NULL, &e);
        if (resid->sites[i].layer >= 1 && resid->sites[i].component != PB_COMPONENT_RESID_PRE)
            assert_true(e == 0.0);
    }
    pb_sweep_free(builtin);
    pb_sweep_free(callback);
    pb_sweep_free(split);
    pb_sweep_free(resid);
    free(spec);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metric_arithmetic),
        cmocka_unit_test(test_noise_generator),
        cmocka_unit_test(test_self_patch_changes_nothing),
        cmocka_unit_test(test_layer0_all_positions_is_the_source),
        cmocka_unit_test(test_batch_equals_single_rows),
        cmocka_unit_test(test_device_memory_path),
        cmocka_unit_test(test_device_memory_past_cap),
        cmocka_unit_test(test_exec_one_upload_per_run),
        cmocka_unit_test(test_exec_longrope_mixed_lengths),
        cmocka_unit_test(test_failure_at_every_download),
        cmocka_unit_test(test_first_failure_survives_cleanup),
        cmocka_unit_test(test_metric_callback_and_worker_subsets),
        cmocka_unit_test(test_matches_naive_forward_per_site),
        cmocka_unit_test(test_oracle_cases),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
