/* The attribution fixtures' check (tests/fixtures/atp, atp_star, from
 * scripts/make_atp_reference.py): one oracle case's sweep by "atp" or
 * "atp*" on one backend against PyTorch's estimates. test_atp.c
 * (reference and CPU backends) and test_cuda_grad.c (CUDA) share it.
 * Static functions: a test includes this once. */
#ifndef PB_TEST_ATP_CASES_H
#define PB_TEST_ATP_CASES_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "attribution/atp.h"
#include "patching/sweep_access.h"
#include "test_util.h"
#include "tolerances.h"

/* The engine's site of a fixture row: component, layer, head and every
 * pair's positions equal. */
static int64_t find_site(const pb_sweep *s, json_t *row, int n_pairs) {
    const char *comp = json_string_value(json_object_get(row, "component"));
    int layer = (int)json_integer_value(json_object_get(row, "layer"));
    json_t *head = json_object_get(row, "head");
    int h = json_is_null(head) ? -1 : (int)json_integer_value(head);
    int buf[256];
    for (int64_t i = 0; i < pb_sweep_site_count(s); i++) {
        pb_site_result r;
        CHECK_OK(pb_sweep_get_site(s, i, &r));
        if (strcmp(pb_component_name(r.component), comp) != 0 || r.layer != layer || r.head != h)
            continue;
        int ok = 1;
        for (int p = 0; ok && p < n_pairs; p++) {
            json_t *want = json_array_get(json_object_get(row, "positions"), (size_t)p);
            int n = pb_sweep_site_positions(s, i, p, buf);
            ok = (size_t)n == json_array_size(want);
            for (int k = 0; ok && k < n; k++)
                ok = buf[k] == json_integer_value(json_array_get(want, (size_t)k));
        }
        if (ok)
            return i;
    }
    return -1;
}

typedef struct atp_setup {
    pb_backend_kind backend;
    int cases;
    pb_weights_mode weights; /* resident (0) or streamed */
} atp_setup;

static int check_case(const tu_oracle_case *c, void *ctx) {
    atp_setup *setup = ctx;
    json_t *want = c->expected;
    const char *model = json_string_value(json_object_get(want, "model"));
    char path[1400];
    tu_fixture_file(path, sizeof path, model, "model.gguf");
    pb_load_options o = {.n_threads = 2, .backend = setup->backend, .weights = setup->weights};
    pb_model *m = NULL;
    CHECK_OK(pb_model_load(&m, path, &o));
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, c->spec, c->dir, NULL) != PB_OK || pb_sweep_run(s) != PB_OK)
        fail_msg("%s: %s", c->name, pb_last_error());
    json_t *pairs = json_object_get(want, "pairs"), *rows = json_object_get(want, "rows"), *row;
    int n_pairs = (int)json_array_size(pairs);
    assert_int_equal(json_array_size(rows), pb_sweep_site_count(s));
    double worst = 0.0;
    for (int p = 0; p < n_pairs; p++) {
        double base, source;
        CHECK_OK(pb_sweep_get_pair(s, p, &base, &source));
        json_t *wp = json_array_get(pairs, (size_t)p);
        double wb = json_number_value(json_object_get(wp, "base")),
               ws = json_number_value(json_object_get(wp, "source"));
        worst = fmax(worst, fabs(base - wb) / fmax(1.0, fabs(wb)));
        worst = fmax(worst, fabs(source - ws) / fmax(1.0, fabs(ws)));
    }
    size_t r;
    json_array_foreach(rows, r, row) {
        int64_t site = find_site(s, row, n_pairs);
        if (site < 0)
            fail_msg("%s: fixture row %zu has no engine site", c->name, r);
        for (int p = 0; p < n_pairs; p++) {
            double patched, effect;
            CHECK_OK(pb_sweep_get_row(s, p, site, &patched, &effect));
            double w = json_number_value(json_array_get(json_object_get(row, "patched"), (size_t)p));
            /* in units of the pair's gap, as effects are, or of the
             * estimate itself where it is larger (tolerances.h) */
            json_t *wp = json_array_get(pairs, (size_t)p);
            double base = json_number_value(json_object_get(wp, "base"));
            double gap = json_number_value(json_object_get(wp, "source")) - base;
            double scale = fmax(1.0, fmax(fabs(gap), fabs(w - base)));
            if (!(fabs(patched - w) <= PB_TOL_ATP_ESTIMATE * scale))
                fail_msg("%s row %zu pair %d: estimate %.9g, PyTorch %.9g", c->name, r, p, patched, w);
            worst = fmax(worst, fabs(patched - w) / scale);
        }
    }
    pb_sweep_summary sum;
    CHECK_OK(pb_sweep_get_summary(s, &sum));
    assert_int_equal(sum.n_rows_executed, 0); /* estimated, none run */
    if (setup->backend == PB_BACKEND_CPU && setup->cases == 0) {
        /* the writers take estimated rows as they take exact ones, and say which */
        char dir[1024], results[1100];
        assert_int_equal(tu_make_temp_dir(dir, sizeof dir, "pb_atp"), 0);
        snprintf(results, sizeof results, "%s/out", dir);
        CHECK_OK(pb_sweep_write(s, results, 0));
        snprintf(results, sizeof results, "%s/out/results.json", dir);
        json_error_t err;
        json_t *written = json_load_file(results, 0, &err);
        assert_non_null(written);
        assert_string_equal(json_string_value(json_object_get(written, "method")),
                            json_string_value(json_object_get(want, "method")));
        json_decref(written);
        tu_remove_tree(dir);
    }
    printf("[ MEASURE  ] %-28s %-9s %-8s %4lld rows: max |d| / max(1, |gap|, |estimate|) vs PyTorch %.2e\n", c->name,
           pb_backend_name(setup->backend), pb_weights_mode_name(setup->weights), (long long)sum.n_rows, worst);
    pb_sweep_free(s);
    pb_model_free(m);
    setup->cases++;
    return 1;
}

#endif
