/* Attribution patching ("method": "atp" and "atp*", attribution/atp.h)
 * against an independent PyTorch implementation of the same formulas
 * (tests/fixtures/atp/<case> and atp_star/<case>[_qk_fix|_grad_drop], from
 * scripts/make_atp_reference.py: the patching oracle's runs, sites and
 * patched forwards, autograd's gradients at the base run, GradDrop's by
 * detaching a layer's writes):
 * every row's estimated patched metric of every pair within
 * PB_TOL_ATP_ESTIMATE, on the patching fixtures' specs (modes, metrics and
 * families vary, noise corruption included), reference and CPU backends;
 * no patched forward runs; the method reaches results.json; what the
 * estimate does not cover is refused by name. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "atp_cases.h"
#include "model/model.h"
#include "model/stream.h"

static void test_against_pytorch_reference(void **state) {
    (void)state;
    atp_setup setup = {PB_BACKEND_REFERENCE, 0, PB_WEIGHTS_RESIDENT};
    assert_true(tu_visit_cases("atp", check_case, &setup) >= 9);
}

static void test_against_pytorch_cpu(void **state) {
    (void)state;
    atp_setup setup = {PB_BACKEND_CPU, 0, PB_WEIGHTS_RESIDENT};
    assert_true(tu_visit_cases("atp", check_case, &setup) >= 9);
}

/* AtP*: both corrections on the 9 specs, the QK fix alone on 4 (Qwen3's
 * and OLMo-2's q/k norms, Gemma 2's soft-cap and window, GQA keys), and
 * GradDrop alone on 2 (a parallel block among them). */
static void test_star_reference(void **state) {
    (void)state;
    atp_setup setup = {PB_BACKEND_REFERENCE, 0, PB_WEIGHTS_RESIDENT};
    assert_true(tu_visit_cases("atp_star", check_case, &setup) >= 15);
}

static void test_star_cpu(void **state) {
    (void)state;
    atp_setup setup = {PB_BACKEND_CPU, 0, PB_WEIGHTS_RESIDENT};
    assert_true(tu_visit_cases("atp_star", check_case, &setup) >= 15);
}

/* --weights stream: the runs' forwards and every backward pass (GradDrop's
 * too) read the layers as they reach them */
static void test_star_streamed(void **state) {
    (void)state;
    atp_setup setup = {PB_BACKEND_CPU, 0, PB_WEIGHTS_STREAM};
    assert_true(tu_visit_cases("atp_star", check_case, &setup) >= 15);
}

/* An AtP* spec (both corrections) of four pairs, the last one longer, on
 * a vocabulary of 49,152: resid_pre at every layer and position, attn_out
 * at every layer at the last position, q of every head at layers 2 and 5. */
static const char *group_spec =
    "{\"mode\": \"denoising\", \"method\": \"atp*\", \"metric\": {\"kind\": \"logit_diff\", "
    "\"positive\": {\"ids\": [31, 470]}, \"negative\": {\"ids\": [9000]}}, \"sites\": ["
    "{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},"
    "{\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"last\"},"
    "{\"component\": \"q\", \"layers\": [2, 5], \"heads\": \"all\", \"positions\": \"each\"}],"
    "\"pairs\": ["
    "{\"clean\": {\"ids\": [1, 17, 300, 41, 5, 77]}, \"corrupted\": {\"ids\": [1, 17, 301, 41, 5, 77]}},"
    "{\"clean\": {\"ids\": [1, 2000, 30, 4100, 15, 6]}, \"corrupted\": {\"ids\": [1, 2000, 31, 4100, 15, 6]}},"
    "{\"clean\": {\"ids\": [1, 9, 8, 7, 6, 5]}, \"corrupted\": {\"ids\": [1, 9, 8, 700, 6, 5]}},"
    "{\"clean\": {\"ids\": [1, 44, 45, 46, 47, 48, 49, 50]}, "
    "\"corrupted\": {\"ids\": [1, 44, 45, 46, 12, 48, 49, 50]}}]}";

/* The spec's sweep on m within a memory budget; *reads: the layers it
 * read, streamed. */
static pb_sweep *group_run(pb_model *m, size_t budget, long long *reads) {
    pb_sweep_options o = {.max_memory = budget, .metric_fn_residual_layer = -1};
    pb_sweep *s = NULL;
    long long before, after;
    double bytes;
    if (pb_sweep_create(&s, m, group_spec, ".", &o) != PB_OK)
        fail_msg("group spec: %s", pb_last_error());
    pb_stream_counters(m->stream, &before, &bytes);
    CHECK_OK(pb_sweep_run(s));
    pb_stream_counters(m->stream, &after, &bytes);
    *reads = after - before;
    return s;
}

/* Pairs run in groups (pb_atp_group): their forwards in one run of the
 * executor, their backward passes and GradDrop's layer by layer together.
 * On a random 8-layer model streamed through two layer slots, the four
 * pairs as one group (within 1 GiB) equal the pairs one at a time (a
 * budget of one byte) row for row, and read the layers once per group's
 * pass, not once per pair's. */
static void test_groups_streamed(void **state) {
    (void)state;
    pb_load_options lo = {.n_threads = 2,
                          .backend = PB_BACKEND_CPU,
                          .dtype = PB_DTYPE_FILE,
                          .weights = PB_WEIGHTS_STREAM,
                          .weight_memory = (size_t)247 << 20};
    pb_model *m = NULL;
    CHECK_OK(pb_model_random(&m, "smollm2-135m:8:bf16", 7, &lo));
    long long alone_reads, group_reads;
    pb_sweep *alone = group_run(m, 1, &alone_reads), *group = group_run(m, (size_t)1 << 30, &group_reads);
    pb_sweep_summary sum;
    CHECK_OK(pb_sweep_get_summary(group, &sum));
    assert_int_equal(sum.n_pairs, 4);
    double worst = 0.0;
    for (int p = 0; p < 4; p++) {
        double b1, s1, b2, s2;
        CHECK_OK(pb_sweep_get_pair(alone, p, &b1, &s1));
        CHECK_OK(pb_sweep_get_pair(group, p, &b2, &s2));
        double scale = fmax(1.0, fabs(s1 - b1));
        worst = fmax(worst, fmax(fabs(b1 - b2), fabs(s1 - s2)) / scale);
        for (int64_t site = 0; site < pb_sweep_site_count(group); site++) {
            double x, y, e;
            CHECK_OK(pb_sweep_get_row(alone, p, site, &x, &e));
            CHECK_OK(pb_sweep_get_row(group, p, site, &y, &e));
            worst = fmax(worst, fabs(x - y) / fmax(scale, fabs(x - b1)));
        }
    }
    printf("[ MEASURE  ] 4 pairs, AtP* on smollm2-135m:8 bf16 streamed: %lld layer reads one pair at a time, %lld "
           "as one group; worst relative difference %.2e\n",
           alone_reads, group_reads, worst);
    assert_true(worst <= PB_TOL_ATP_GROUPS);
    assert_true(group_reads * 2 < alone_reads);
    pb_sweep_free(alone);
    pb_sweep_free(group);
    pb_model_free(m);
}

/* "verify": the checked sites are the estimate's top by |effect| and a
 * control sample of others; each check's exact effect is the full exact
 * sweep's for that site (bit for bit on the reference backend, the same
 * rows run), its estimate the AtP sweep's; recall and the control's misses
 * recomputed here from the checks agree; results.json carries them; an
 * exact sweep cannot ask for it. */
static void test_verify(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_REFERENCE);
    char path[1400], *text;
    snprintf(path, sizeof path, "%s/patching/tiny_gqa_denoise_logit_diff/spec.json", tu_fixtures());
    assert_non_null(text = tu_read_file(path, NULL));
    json_error_t err;
    json_t *root = json_loads(text, 0, &err);
    pb_sweep *exact = NULL, *atp = NULL;
    CHECK_OK(pb_sweep_create(&exact, m, text, NULL, NULL));
    CHECK_OK(pb_sweep_run(exact));
    json_object_set_new(root, "method", json_string("atp"));
    json_object_set_new(root, "verify", json_pack("{s:i, s:i, s:i}", "top", 6, "control", 12, "seed", 3));
    char *spec = json_dumps(root, JSON_COMPACT);
    CHECK_OK(pb_sweep_create(&atp, m, spec, NULL, NULL));
    CHECK_OK(pb_sweep_run(atp));
    const pb_atp_verification *v = pb_sweep_verification(atp);
    assert_non_null(v);
    assert_int_equal(v->n_checks, 18);
    double smallest_top = INFINITY;
    int hits = 0, misses = 0;
    for (int i = 0; i < v->n_checks; i++) {
        pb_site_result want, est;
        CHECK_OK(pb_sweep_get_site(exact, v->checks[i].site, &want));
        CHECK_OK(pb_sweep_get_site(atp, v->checks[i].site, &est));
        assert_true(v->checks[i].exact == want.effect);
        assert_true(v->checks[i].estimate == est.effect);
        assert_int_equal(v->checks[i].control, i >= 6);
        if (i < 6)
            smallest_top = fmin(smallest_top, fabs(want.effect));
        if (i > 0 && i < 6) /* the top, by |estimate|, descending */
            assert_true(fabs(v->checks[i].estimate) <= fabs(v->checks[i - 1].estimate));
    }
    for (int i = 6; i < v->n_checks; i++) {
        misses += fabs(v->checks[i].exact) > smallest_top;
        /* no control site's |estimate| beats the top's */
        assert_true(fabs(v->checks[i].estimate) <= fabs(v->checks[5].estimate));
    }
    /* recall: of the 6 largest |exact| among the checks, how many are top */
    int order[18];
    for (int i = 0; i < 18; i++)
        order[i] = i;
    for (int i = 1; i < 18; i++) /* insertion sort by |exact| descending */
        for (int j = i; j > 0 && fabs(v->checks[order[j]].exact) > fabs(v->checks[order[j - 1]].exact); j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
    for (int k = 0; k < 6; k++)
        hits += !v->checks[order[k]].control;
    printf("[ MEASURE  ] verify top 6 + 12 control on tiny_gqa: recall %.2f, Spearman %.3f, %d control misses\n",
           v->recall, v->spearman, v->misses);
    assert_true(fabs(v->recall - hits / 6.0) < 1e-12);
    assert_int_equal(v->misses, misses);
    assert_true(v->spearman >= -1.0 && v->spearman <= 1.0);
    char dir[1024], file[1100];
    assert_int_equal(tu_make_temp_dir(dir, sizeof dir, "pb_verify"), 0);
    snprintf(file, sizeof file, "%s/out", dir);
    CHECK_OK(pb_sweep_write(atp, file, 0));
    snprintf(file, sizeof file, "%s/out/results.json", dir);
    json_t *written = json_load_file(file, 0, &err), *ver = json_object_get(written, "verification");
    assert_int_equal(json_array_size(json_object_get(ver, "sites")), 18);
    assert_true(json_number_value(json_object_get(ver, "recall_at_top")) == v->recall);
    json_decref(written);
    tu_remove_tree(dir);
    json_object_set_new(root, "method", json_string("exact"));
    free(spec);
    spec = json_dumps(root, JSON_COMPACT);
    pb_sweep *refused = NULL;
    assert_int_equal(pb_sweep_create(&refused, m, spec, NULL, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "verify: checks an estimate; it needs \"method\": \"atp\""));
    free(spec);
    free(text);
    json_decref(root);
    pb_sweep_free(atp);
    pb_sweep_free(exact);
    pb_model_free(m);
}

static float first_logit(const float *values, int n, void *user) {
    (void)n;
    (void)user;
    return values[0];
}

/* A callback metric (no derivative to take) is refused by name; a method
 * the spec does not know is a spec error. */
static void test_refusals(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_bias", "model.gguf", PB_BACKEND_CPU);
    tu_oracle_case c = {0};
    char path[1400], *spec;
    snprintf(path, sizeof path, "%s/patching/tiny_bias_projection/spec.json", tu_fixtures());
    assert_non_null(spec = tu_read_file(path, NULL));
    json_error_t err;
    json_t *root = json_loads(spec, 0, &err);
    json_object_set_new(root, "method", json_string("atp"));
    char *text = json_dumps(root, JSON_COMPACT);
    snprintf(c.dir, sizeof c.dir, "%s/patching/tiny_bias_projection", tu_fixtures());
    pb_sweep *s = NULL;
    pb_sweep_options o = {.metric_fn = first_logit, .metric_fn_residual_layer = -1};
    CHECK_OK(pb_sweep_create(&s, m, text, c.dir, &o));
    assert_int_equal(pb_sweep_run(s), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), "not a callback metric"));
    pb_sweep_free(s);
    json_object_set_new(root, "method", json_string("atp**"));
    free(text);
    text = json_dumps(root, JSON_COMPACT);
    s = NULL;
    assert_int_equal(pb_sweep_create(&s, m, text, c.dir, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "method"));
    assert_null(s);
    free(text);
    free(spec);
    json_decref(root);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_pytorch_reference),
        cmocka_unit_test(test_against_pytorch_cpu),
        cmocka_unit_test(test_star_reference),
        cmocka_unit_test(test_star_cpu),
        cmocka_unit_test(test_star_streamed),
        cmocka_unit_test(test_groups_streamed),
        cmocka_unit_test(test_verify),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
