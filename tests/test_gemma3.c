/* Gemma 3 270M (the real Q4_K_M GGUF) against transformers loading the same
 * file (tests/fixtures/gemma3_270m, scripts/make_gemma3_reference.py): three
 * plain-text prompts with BOS, one of 640 tokens (past the 512-token sliding
 * window), compared at every position through each position's top-64 logits
 * and log-sum-exp, in full at a few positions on both sides of the window;
 * argmax where the reference's top-two gap exceeds 1e-3; and a 32-token
 * greedy continuation. Skipped when models/ lacks the file
 * (scripts/fetch-model.sh gemma3-270m; the test command fetches it). */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

#define N_PROMPTS 3
#define TOP_K 64

static pb_model *model;

static int setup(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/gemma-3-270m-q4_k_m.gguf", tu_source_dir());
    if (access(path, R_OK) != 0)
        return 0; /* each test skips */
    if (pb_model_load(&model, path, NULL) != PB_OK) {
        fprintf(stderr, "loading %s: %s\n", path, pb_last_error());
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    pb_model_free(model);
    return 0;
}

/* tests/fixtures/gemma3_270m/prompt_K_<what>.npy of n_dims dimensions. */
static float *prompt_f32(int k, const char *what, int n_dims, int64_t shape[8]) {
    char name[96], path[1024];
    snprintf(name, sizeof name, "prompt_%d_%s.npy", k, what);
    tu_fixture_file(path, sizeof path, "gemma3_270m", name);
    return tu_read_f32(path, n_dims, shape);
}

static int32_t *fixture_ids(const char *name, int *n) {
    char path[1024];
    tu_fixture_file(path, sizeof path, "gemma3_270m", name);
    return tu_read_ids(path, n);
}

static double logsumexp(const float *row, int n) {
    double max = -INFINITY, sum = 0.0;
    for (int i = 0; i < n; i++)
        max = row[i] > max ? row[i] : max;
    for (int i = 0; i < n; i++)
        sum += exp((double)row[i] - max);
    return max + log(sum);
}

static int argmax(const float *row, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (row[i] > row[best])
            best = i;
    return best;
}

/* Position t of one prompt: NMSE over the reference's top 64, the
 * log-sum-exp of the whole row, and the argmax where the gap allows. */
static void check_position(const float *row, int V, const int32_t *top_ids, const float *top_logits, double lse_ref,
                           double gap, int k, int t, double *worst_nmse, double *worst_lse) {
    double err = 0.0, ref = 0.0;
    for (int i = 0; i < TOP_K; i++) {
        double d = (double)row[top_ids[i]] - top_logits[i];
        err += d * d;
        ref += (double)top_logits[i] * top_logits[i];
    }
    double nmse = err / ref, lse = fabs(logsumexp(row, V) - lse_ref);
    if (!(nmse <= PB_TOL_SMOLLM2_LOGITS_NMSE) || !(lse <= PB_TOL_GEMMA3_LOGSUMEXP))
        fail_msg("prompt %d position %d: top-64 NMSE %.3g, log-sum-exp |diff| %.3g", k, t, nmse, lse);
    if (gap > PB_TOL_SMOLLM2_ARGMAX_GAP && argmax(row, V) != top_ids[0])
        fail_msg("prompt %d position %d: argmax %d, transformers %d (gap %.3g)", k, t, argmax(row, V), top_ids[0], gap);
    *worst_nmse = nmse > *worst_nmse ? nmse : *worst_nmse;
    *worst_lse = lse > *worst_lse ? lse : *worst_lse;
}

static void check_prompt(int k) {
    int V = pb_model_get_config(model)->vocab_size, T, n_full;
    char name[64];
    snprintf(name, sizeof name, "prompt_%d_ids.npy", k);
    int32_t *ids = fixture_ids(name, &T);
    int64_t shape[8];
    snprintf(name, sizeof name, "prompt_%d_top_ids.npy", k);
    char path[1024];
    tu_fixture_file(path, sizeof path, "gemma3_270m", name);
    void *data = NULL;
    int n_dims = 0;
    if (pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_true(n_dims == 2 && shape[0] == T && shape[1] == TOP_K);
    int32_t *top_ids = data; /* (T, 64) */
    float *top_logits = prompt_f32(k, "top_logits", 2, shape);
    float *lse = prompt_f32(k, "logsumexp", 1, shape);
    float *gap = prompt_f32(k, "top2_gap", 1, shape);
    snprintf(name, sizeof name, "prompt_%d_full_positions.npy", k);
    int32_t *full_positions = fixture_ids(name, &n_full);
    float *full = prompt_f32(k, "full_logits", 2, shape);
    assert_true(shape[0] == n_full && shape[1] == V);

    float *logits = malloc(sizeof(float) * (size_t)T * V);
    assert_non_null(logits);
    assert_int_equal(pb_forward(model, ids, T, logits, NULL), PB_OK);
    double worst_nmse = 0.0, worst_lse = 0.0, worst_full = 0.0;
    for (int t = 0; t < T; t++)
        check_position(logits + (size_t)t * V, V, top_ids + (size_t)t * TOP_K, top_logits + (size_t)t * TOP_K, lse[t],
                       gap[t], k, t, &worst_nmse, &worst_lse);
    for (int i = 0; i < n_full; i++) {
        double e = tu_nmse(logits + (size_t)full_positions[i] * V, full + (size_t)i * V, (size_t)V);
        if (!(e <= PB_TOL_SMOLLM2_LOGITS_NMSE))
            fail_msg("prompt %d position %d: full-row logits NMSE %.3g", k, full_positions[i], e);
        worst_full = e > worst_full ? e : worst_full;
    }
    printf("[ MEASURE  ] gemma3 prompt %d (%d tokens): top-64 NMSE <= %.3g, log-sum-exp |diff| <= %.3g, "
           "full-row NMSE <= %.3g at %d positions\n",
           k, T, worst_nmse, worst_lse, worst_full, n_full);
    free(logits);
    free(full);
    free(full_positions);
    free(gap);
    free(lse);
    free(top_logits);
    free(top_ids);
    free(ids);
}

/* Every prompt; in a sanitizer build the first (one path, the Release
 * suite checks all three). */
static void test_logits_every_position(void **state) {
    if (!model)
        skip();
    int n = tu_sanitized() ? 1 : N_PROMPTS;
    for (int k = 0; k < n; k++)
        check_prompt(k);
}

static void test_greedy_continuation(void **state) {
    if (!model)
        skip();
    int T, n_want;
    int32_t *ids = fixture_ids("prompt_0_ids.npy", &T);
    int32_t *want = fixture_ids("greedy_ids.npy", &n_want);
    int32_t *got = malloc(sizeof(int32_t) * (size_t)n_want);
    int n_got = 0;
    assert_int_equal(pb_generate(model, ids, T, n_want, got, &n_got), PB_OK);
    /* the model's EOS would stop it early; transformers' 32 steps have none */
    assert_int_equal(n_got, n_want);
    for (int i = 0; i < n_want; i++)
        if (got[i] != want[i])
            fail_msg("greedy step %d: %d, transformers %d", i, got[i], want[i]);
    free(got);
    free(want);
    free(ids);
}

/* A sweep over plain-text prompts: the base model's tokenizer puts BOS
 * first (add_bos_token), every row's metric is finite, resid_pre at layer 0
 * over every position restores the clean run exactly (effect 1), and the
 * results and the report are written. */
static void test_sweep_and_report(void **state) {
    if (!model)
        skip();
    const char *spec =
        "{\"mode\": \"denoising\", \"chat\": false,"
        " \"pairs\": [{\"clean\": {\"text\": \"The Eiffel Tower is in the city of\"},"
        "              \"corrupted\": {\"text\": \"The Colosseum is in the city of\"}}],"
        " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},"
        "           {\"component\": \"resid_pre\", \"layers\": [0], \"positions\": \"all\"},"
        "           {\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"last\"}],"
        " \"metric\": {\"kind\": \"logit_diff\", \"positive\": [\" Paris\"], \"negative\": [\" Rome\"]}}";
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, model, spec, NULL, NULL) != PB_OK)
        fail_msg("%s", pb_last_error());
    pb_prompt_info info;
    assert_int_equal(pb_sweep_get_prompt_info(s, 0, 0, &info), PB_OK);
    assert_true(info.starts_with_bos && !info.chat);
    assert_int_equal(pb_sweep_run(s), PB_OK);
    pb_sweep_summary sum;
    assert_int_equal(pb_sweep_get_summary(s, &sum), PB_OK);
    double base, source, worst_all = 0.0;
    assert_int_equal(pb_sweep_get_pair(s, 0, &base, &source), PB_OK);
    for (int64_t site = 0; site < sum.n_rows; site++) {
        pb_site_result r;
        double patched, effect;
        assert_int_equal(pb_sweep_get_site(s, site, &r), PB_OK);
        assert_int_equal(pb_sweep_get_row(s, 0, site, &patched, &effect), PB_OK);
        assert_true(isfinite(patched));
        if (r.component == PB_COMPONENT_RESID_PRE && r.layer == 0 && r.all_positions)
            worst_all = fmax(worst_all, fabs(effect - 1.0));
    }
    printf("[ MEASURE  ] gemma3 sweep: %lld rows, logit_diff clean %.4f corrupted %.4f, "
           "resid_pre 0 all positions |effect - 1| %.3g\n",
           (long long)sum.n_rows, source, base, worst_all);
    assert_true(worst_all <= PB_TOL_INVARIANT_CPU);
    char dir[512], path[1024];
    assert_int_equal(tu_make_temp_dir(dir, sizeof dir, "gemma3-sweep"), 0);
    tu_path(path, sizeof path, dir, "out");
    assert_int_equal(pb_sweep_write(s, path, 0), PB_OK);
    tu_path(path, sizeof path, dir, "report.html");
    assert_int_equal(pb_report_html_write(s, path, NULL), PB_OK);
    size_t size = 0;
    char *html = tu_read_file(path, &size);
    assert_non_null(html);
    assert_non_null(strstr(html, "<svg"));
    assert_non_null(strstr(html, "Eiffel"));
    free(html);
    tu_remove_tree(dir);
    pb_sweep_free(s);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_every_position),
        cmocka_unit_test(test_greedy_continuation),
        cmocka_unit_test(test_sweep_and_report),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
