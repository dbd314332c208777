/* Hook points: TransformerLens names and shapes, capture sets chosen by
 * glob, and exact invariants of the captured activations on the tiny GQA
 * model (the residual stream adds up bitwise, capturing never changes the
 * computation, a capture set only fits the model it was made for). */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <string.h>

#include "model/hooks.h"
#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

/* Reads a fixture .npy; *count receives the element count. */
static void *load_fixture(const char *model, const char *file, pb_npy_dtype dtype, size_t *count) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s/%s", tu_fixtures(), model, file);
    void *data;
    int n_dims;
    int64_t shape[8];
    if (pb_npy_read(path, &data, dtype, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    *count = 1;
    for (int i = 0; i < n_dims; i++)
        *count *= (size_t)shape[i];
    return data;
}

/* The captured tensor named `name`, failing the test when it is absent.
 * *count receives the element count. */
static const float *captured(const pb_capture *cap, const char *name, size_t *count) {
    for (int i = 0; i < pb_capture_count(cap); i++) {
        if (strcmp(pb_capture_name(cap, i), name) != 0)
            continue;
        int n_dims;
        int64_t shape[3];
        const float *data = pb_capture_data(cap, i, &n_dims, shape);
        assert_non_null(data);
        *count = (size_t)shape[0] * (size_t)shape[1] * (size_t)(n_dims == 3 ? shape[2] : 1);
        return data;
    }
    fail_msg("no captured hook named %s", name);
    return NULL;
}

static void test_name_parse_round_trip(void **state) {
    const int n_layers = 12, layers[] = {0, 1, 7, 11};
    for (int k = 0; k < PB_HOOK_KIND_COUNT; k++) {
        for (int j = 0; j < 4; j++) {
            int layer = pb_hook_kind_per_layer((pb_hook_kind)k) ? layers[j] : -1;
            char name[96];
            pb_hook_name((pb_hook_kind)k, layer, name, sizeof name);
            pb_hook_kind kind = PB_HOOK_KIND_COUNT;
            int parsed_layer = -2;
            if (!pb_hook_parse(name, n_layers, &kind, &parsed_layer))
                fail_msg("'%s' does not parse back", name);
            assert_int_equal(kind, k);
            assert_int_equal(parsed_layer, layer);
        }
    }
    /* The names themselves follow TransformerLens. */
    char name[96];
    pb_hook_name(PB_HOOK_EMBED, -1, name, sizeof name);
    assert_string_equal(name, "hook_embed");
    pb_hook_name(PB_HOOK_LN_FINAL, -1, name, sizeof name);
    assert_string_equal(name, "ln_final.hook_normalized");
    pb_hook_name(PB_HOOK_RESID_PRE, 10, name, sizeof name);
    assert_string_equal(name, "blocks.10.hook_resid_pre");
    pb_hook_name(PB_HOOK_Z, 3, name, sizeof name);
    assert_string_equal(name, "blocks.3.attn.hook_z");
    pb_hook_name(PB_HOOK_MLP_OUT, 0, name, sizeof name);
    assert_string_equal(name, "blocks.0.hook_mlp_out");
}

static void test_parse_refusals(void **state) {
    static const char *const bad[] = {
        "blocks.2.hook_resid_pre", /* n_layers is 2 */
        "blocks.-1.hook_resid_pre",
        "blocks.01.hook_resid_pre",
        "blocks.+1.hook_resid_pre",
        "blocks. 1.hook_resid_pre",
        "blocks.0.hook_nope",
        "blocks.0.hook_z",
        "blocks.0.attn.hook_resid_pre",
        "blocks.0.hook_resid_pre ",
        "hook_embed2",
        "blocks.0.hook_embed",
        "ln_final",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pb_hook_kind kind;
        int layer;
        if (pb_hook_parse(bad[i], 2, &kind, &layer))
            fail_msg("'%s' parsed as kind %d layer %d", bad[i], (int)kind, layer);
    }
    /* The same name is fine one layer further. */
    pb_hook_kind kind;
    int layer;
    assert_true(pb_hook_parse("blocks.2.hook_resid_pre", 3, &kind, &layer));
    assert_int_equal(kind, PB_HOOK_RESID_PRE);
    assert_int_equal(layer, 2);
}

static void test_hook_shape(void **state) {
    pb_model_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.d_model = 96;
    cfg.n_heads = 8;
    cfg.n_kv_heads = 2;
    cfg.head_dim = 16;
    for (int k = 0; k < PB_HOOK_KIND_COUNT; k++) {
        int64_t shape[2] = {-1, -1};
        int n = pb_hook_shape((pb_hook_kind)k, &cfg, shape);
        if (k == PB_HOOK_Z || k == PB_HOOK_Q || k == PB_HOOK_ROT_Q) {
            assert_int_equal(n, 2);
            assert_int_equal(shape[0], 8);
            assert_int_equal(shape[1], 16);
        } else if (k == PB_HOOK_K || k == PB_HOOK_V || k == PB_HOOK_ROT_K) {
            assert_int_equal(n, 2);
            assert_int_equal(shape[0], 2);
            assert_int_equal(shape[1], 16);
        } else if (pb_hook_is_pattern((pb_hook_kind)k)) {
            assert_int_equal(n, 1); /* (n_heads), of a (n_heads, T, T) tensor */
            assert_int_equal(shape[0], 8);
        } else {
            assert_int_equal(n, 1);
            assert_int_equal(shape[0], 96);
        }
    }
}

/* Creates a capture and checks its names against `expected` (in order). */
static void expect_capture(const pb_model *m, const char *pattern, const char *const *expected, int n) {
    pb_capture *cap = NULL;
    if (pb_capture_create(&cap, m, pattern) != PB_OK)
        fail_msg("pattern '%s': %s", pattern, pb_last_error());
    assert_int_equal(pb_capture_count(cap), n);
    for (int i = 0; i < n; i++)
        assert_string_equal(pb_capture_name(cap, i), expected[i]);
    assert_null(pb_capture_name(cap, n));
    assert_null(pb_capture_name(cap, -1));
    /* Nothing to read before a forward. */
    assert_null(pb_capture_data(cap, 0, NULL, NULL));
    pb_capture_free(cap);
}

static void test_capture_patterns(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    const pb_model_config *c = pb_model_get_config(m);
    assert_int_equal(c->n_layers, 2);

    static const char *const resid_pre[] = {"blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre"};
    expect_capture(m, "blocks.*.hook_resid_pre", resid_pre, 2);
    static const char *const ends[] = {"hook_embed", "ln_final.hook_normalized"};
    expect_capture(m, "hook_embed, ln_final.hook_normalized", ends, 2);
    expect_capture(m, " ln_final.hook_normalized ,hook_embed ", ends, 2);

    /* '?' is one character: q, k, v and z of layer 1, nothing else. */
    pb_capture *cap = NULL;
    assert_int_equal(pb_capture_create(&cap, m, "blocks.1.attn.hook_?"), PB_OK);
    assert_int_equal(pb_capture_count(cap), 4);
    static const char *const qkvz[] = {"blocks.1.attn.hook_q", "blocks.1.attn.hook_k", "blocks.1.attn.hook_v",
                                       "blocks.1.attn.hook_z"};
    for (int j = 0; j < 4; j++) {
        int found = 0;
        for (int i = 0; i < 4; i++)
            found += strcmp(pb_capture_name(cap, i), qkvz[j]) == 0;
        if (found != 1)
            fail_msg("%s captured %d times", qkvz[j], found);
    }
    pb_capture_free(cap);

    /* Everything: each name once, each a valid hook point. */
    assert_int_equal(pb_capture_create(&cap, m, "*"), PB_OK);
    int n = pb_capture_count(cap);
    assert_int_equal(n, 2 + 13 * c->n_layers); /* no sandwich norms: no ln1_post / ln2_post */
    assert_string_equal(pb_capture_name(cap, 0), "hook_embed");
    assert_string_equal(pb_capture_name(cap, n - 1), "ln_final.hook_normalized");
    for (int i = 0; i < n; i++) {
        pb_hook_kind kind;
        int layer;
        assert_true(pb_hook_parse(pb_capture_name(cap, i), c->n_layers, &kind, &layer));
        for (int j = 0; j < i; j++)
            assert_string_not_equal(pb_capture_name(cap, i), pb_capture_name(cap, j));
    }
    pb_capture_free(cap);

    /* Nothing matched: refused, naming the pattern. */
    static const char *const nothing[] = {"blocks.2.hook_resid_pre", "hook_nope*", " , ", ""};
    for (int i = 0; i < 4; i++) {
        cap = (pb_capture *)&cap; /* must be reset to NULL */
        assert_int_equal(pb_capture_create(&cap, m, nothing[i]), PB_ERR_ARG);
        assert_null(cap);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "'%s'", nothing[i]);
        if (!strstr(pb_last_error(), quoted))
            fail_msg("message does not name %s: %s", quoted, pb_last_error());
    }
    pb_model_free(m);
}

/* Runs tiny_gqa with a capture of `pattern`; returns the capture. */
static pb_capture *run_capture(pb_model *m, const char *pattern, int32_t *ids, int T, float *logits) {
    pb_capture *cap = NULL;
    assert_int_equal(pb_capture_create(&cap, m, pattern), PB_OK);
    if (pb_forward(m, ids, T, logits, cap) != PB_OK)
        fail_msg("forward: %s", pb_last_error());
    return cap;
}

/* tiny_gqa loaded and run over its fixture ids with every hook captured;
 * the caller frees the capture, the ids and the model. */
static pb_capture *capture_all(pb_model **m, int32_t **ids, size_t *T) {
    *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    *ids = load_fixture("tiny_gqa", "ids.npy", PB_NPY_I32, T);
    return run_capture(*m, "*", *ids, (int)*T, NULL);
}

static void test_capture_shapes(void **state) {
    pb_model *m;
    int32_t *ids;
    size_t T;
    pb_capture *cap = capture_all(&m, &ids, &T);
    const pb_model_config *c = pb_model_get_config(m);
    for (int i = 0; i < pb_capture_count(cap); i++) {
        const char *name = pb_capture_name(cap, i);
        pb_hook_kind kind;
        int layer;
        assert_true(pb_hook_parse(name, c->n_layers, &kind, &layer));
        int n_dims = 0;
        int64_t shape[3] = {-1, -1, -1};
        assert_non_null(pb_capture_data(cap, i, &n_dims, shape));
        if (pb_hook_is_pattern(kind)) {
            if (n_dims != 3 || shape[0] != c->n_heads || shape[1] != (int64_t)T || shape[2] != (int64_t)T)
                fail_msg("%s: %d dims (%lld, %lld, %lld)", name, n_dims, (long long)shape[0], (long long)shape[1],
                         (long long)shape[2]);
            continue;
        }
        assert_int_equal(shape[0], (int64_t)T);
        if (kind == PB_HOOK_Z || kind == PB_HOOK_Q || kind == PB_HOOK_K || kind == PB_HOOK_V || kind == PB_HOOK_ROT_Q ||
            kind == PB_HOOK_ROT_K) {
            int heads = kind == PB_HOOK_K || kind == PB_HOOK_V || kind == PB_HOOK_ROT_K ? c->n_kv_heads : c->n_heads;
            if (n_dims != 3 || shape[1] != heads || shape[2] != c->head_dim)
                fail_msg("%s: %d dims (%lld, %lld, %lld)", name, n_dims, (long long)shape[0], (long long)shape[1],
                         (long long)shape[2]);
        } else {
            assert_int_equal(n_dims, 2);
            assert_int_equal(shape[1], c->d_model);
        }
    }
    /* The fixture model is GQA, so the two head counts really differ. */
    assert_true(c->n_kv_heads < c->n_heads);
    /* A second forward with fewer tokens resizes every entry. */
    assert_int_equal(pb_forward(m, ids, 3, NULL, cap), PB_OK);
    int64_t shape[3];
    assert_non_null(pb_capture_data(cap, 0, NULL, shape));
    assert_int_equal(shape[0], 3);
    pb_capture_free(cap);
    free(ids);
    pb_model_free(m);
}

static void expect_bitwise(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: element %zu is %.9g, expected %.9g", what, i, (double)got[i], (double)want[i]);
}

static void test_capture_invariants(void **state) {
    pb_model *m;
    int32_t *ids;
    size_t T;
    pb_capture *cap = capture_all(&m, &ids, &T);
    const pb_model_config *c = pb_model_get_config(m);
    size_t n = T * (size_t)c->d_model, count;
    float *sum = malloc(sizeof(float) * n);
    for (int l = 0; l < c->n_layers; l++) {
        char name[96], what[160];
        pb_hook_name(PB_HOOK_RESID_PRE, l, name, sizeof name);
        const float *pre = captured(cap, name, &count);
        assert_int_equal(count, n);
        pb_hook_name(PB_HOOK_ATTN_OUT, l, name, sizeof name);
        const float *attn = captured(cap, name, &count);
        pb_hook_name(PB_HOOK_RESID_MID, l, name, sizeof name);
        const float *mid = captured(cap, name, &count);
        pb_hook_name(PB_HOOK_MLP_OUT, l, name, sizeof name);
        const float *mlp = captured(cap, name, &count);
        pb_hook_name(PB_HOOK_RESID_POST, l, name, sizeof name);
        const float *post = captured(cap, name, &count);
        for (size_t i = 0; i < n; i++)
            sum[i] = pre[i] + attn[i];
        snprintf(what, sizeof what, "layer %d resid_mid vs resid_pre + attn_out", l);
        expect_bitwise(mid, sum, n, what);
        for (size_t i = 0; i < n; i++)
            sum[i] = mid[i] + mlp[i];
        snprintf(what, sizeof what, "layer %d resid_post vs resid_mid + mlp_out", l);
        expect_bitwise(post, sum, n, what);
        if (l + 1 < c->n_layers) {
            pb_hook_name(PB_HOOK_RESID_PRE, l + 1, name, sizeof name);
            snprintf(what, sizeof what, "layer %d resid_post vs layer %d resid_pre", l, l + 1);
            expect_bitwise(captured(cap, name, &count), post, n, what);
        }
    }
    free(sum);

    /* hook_embed is a row lookup: the same bits transformers saw. */
    const float *embed = captured(cap, "hook_embed", &count);
    size_t ref_count;
    float *ref = load_fixture("tiny_gqa", "hook_embed.npy", PB_NPY_F32, &ref_count);
    assert_int_equal(ref_count, n);
    expect_bitwise(embed, ref, n, "hook_embed vs fixture");
    free(ref);
    /* Equal ids give equal rows (ids 0 and 1 of the fixture are equal). */
    assert_int_equal(ids[0], ids[1]);
    expect_bitwise(embed + c->d_model, embed, (size_t)c->d_model, "hook_embed rows of equal ids");

    /* ln_final.hook_normalized is x / rms(x): every row has mean square 1
     * (eps 1e-5 is far below the rows' mean square, so it shifts this by
     * well under 1e-5). */
    const float *norm = captured(cap, "ln_final.hook_normalized", &count);
    for (size_t t = 0; t < T; t++) {
        double ms = 0.0;
        for (int i = 0; i < c->d_model; i++)
            ms += (double)norm[t * c->d_model + i] * norm[t * c->d_model + i];
        ms /= c->d_model;
        if (!(fabs(ms - 1.0) <= 1e-5))
            fail_msg("ln_final row %zu has mean square %.9g", t, ms);
    }
    pb_capture_free(cap);
    free(ids);
    pb_model_free(m);
}

/* Capturing is read-only: a subset has the same bits as everything, and
 * the logits are the same with or without a capture. */
static void test_capture_subset_identical(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    const pb_model_config *c = pb_model_get_config(m);
    size_t T;
    int32_t *ids = load_fixture("tiny_gqa", "ids.npy", PB_NPY_I32, &T);
    size_t n_logits = T * (size_t)c->vocab_size;
    float *plain = malloc(sizeof(float) * n_logits), *with_all = malloc(sizeof(float) * n_logits),
          *with_some = malloc(sizeof(float) * n_logits);
    assert_int_equal(pb_forward(m, ids, (int)T, plain, NULL), PB_OK);
    pb_capture *all = run_capture(m, "*", ids, (int)T, with_all);
    pb_capture *some = run_capture(m,
                                   "blocks.1.hook_resid_mid,blocks.0.attn.hook_k,ln_final.hook_normalized,"
                                   "blocks.1.attn.hook_z",
                                   ids, (int)T, with_some);
    expect_bitwise(with_all, plain, n_logits, "logits with every hook captured");
    expect_bitwise(with_some, plain, n_logits, "logits with some hooks captured");
    assert_int_equal(pb_capture_count(some), 4);
    for (int i = 0; i < pb_capture_count(some); i++) {
        size_t n_some, n_all;
        const float *a = captured(some, pb_capture_name(some, i), &n_some);
        const float *b = captured(all, pb_capture_name(some, i), &n_all);
        assert_int_equal(n_some, n_all);
        expect_bitwise(a, b, n_some, pb_capture_name(some, i));
    }
    pb_capture_free(some);
    pb_capture_free(all);
    free(plain);
    free(with_all);
    free(with_some);
    free(ids);
    pb_model_free(m);
}

static void test_capture_other_model_refused(void **state) {
    pb_model *gqa = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    pb_model *bias = tu_load_model("tiny_bias", "model.gguf", PB_BACKEND_CPU);
    assert_int_not_equal(pb_model_get_config(gqa)->n_layers, pb_model_get_config(bias)->n_layers);
    int32_t ids[3] = {1, 2, 3};
    pb_capture *cap = NULL;
    assert_int_equal(pb_capture_create(&cap, gqa, "blocks.0.hook_resid_pre"), PB_OK);
    assert_int_equal(pb_forward(bias, ids, 3, NULL, cap), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "another model"));
    assert_int_equal(pb_forward(gqa, ids, 3, NULL, cap), PB_OK);
    pb_capture_free(cap);
    assert_int_equal(pb_capture_create(&cap, bias, "*"), PB_OK);
    assert_int_equal(pb_forward(gqa, ids, 3, NULL, cap), PB_ERR_ARG);
    pb_capture_free(cap);
    pb_capture_free(NULL);
    pb_model_free(bias);
    pb_model_free(gqa);
}

/* ---- attention patterns against transformers -------------------------- */

/* Layer l of the fixture's pattern layers for case `name`: -1 when absent. */
static int fixture_pattern_slot(json_t *layers, int layer) {
    for (size_t i = 0; i < json_array_size(layers); i++)
        if (json_integer_value(json_array_get(layers, i)) == layer)
            return (int)i;
    return -1;
}

/* scores: -inf exactly above the diagonal, finite on and below it, and
 * softmax(scores) = pattern. */
static void check_scores(const char *name, const float *scores, const float *pattern, int n_heads, int T) {
    for (int h = 0; h < n_heads; h++)
        for (int i = 0; i < T; i++) {
            const float *s = scores + ((size_t)h * T + (size_t)i) * T;
            const float *p = pattern + ((size_t)h * T + (size_t)i) * T;
            double max = -INFINITY, sum = 0.0;
            for (int j = 0; j <= i; j++)
                max = fmax(max, s[j]);
            for (int j = 0; j <= i; j++)
                sum += exp(s[j] - max);
            for (int j = 0; j < T; j++) {
                if (j > i && !(isinf(s[j]) && s[j] < 0))
                    fail_msg("%s head %d query %d key %d: score %g above the diagonal, want -inf", name, h, i, j,
                             (double)s[j]);
                if (j > i && p[j] != 0.0f)
                    fail_msg("%s head %d query %d key %d: pattern %g above the diagonal", name, h, i, j, (double)p[j]);
                if (j <= i && !(fabs(exp(s[j] - max) / sum - p[j]) <= PB_TOL_PATTERN_SOFTMAX))
                    fail_msg("%s head %d query %d key %d: softmax(scores) %.9g, pattern %.9g", name, h, i, j,
                             exp(s[j] - max) / sum, (double)p[j]);
            }
        }
}

static void check_pattern_case(const char *name) {
    pb_model *m = tu_load_case_model_or_skip(name);
    const pb_model_config *c = pb_model_get_config(m);
    char path[1200];
    snprintf(path, sizeof path, "%s/lens_patterns/reference.json", tu_fixtures());
    json_error_t error;
    json_t *ref = json_load_file(path, 0, &error);
    if (!ref)
        fail_msg("%s: %s", path, error.text);
    json_t *layers = json_object_get(json_object_get(json_object_get(ref, "models"), name), "pattern_layers");
    assert_true(json_array_size(layers) > 0);
    int T;
    snprintf(path, sizeof path, "%s/lens_patterns/%s_ids.npy", tu_fixtures(), name);
    int32_t *ids = tu_read_ids(path, &T);
    int64_t shape[8];
    snprintf(path, sizeof path, "%s/lens_patterns/%s_pattern.npy", tu_fixtures(), name);
    float *want = tu_read_f32(path, 4, shape); /* (n_selected, n_heads, T, T) */
    assert_int_equal(shape[0], (int64_t)json_array_size(layers));
    assert_int_equal(shape[1], c->n_heads);
    assert_int_equal(shape[2], T);
    pb_capture *cap = run_capture(m, "blocks.*.attn.hook_pattern,blocks.*.attn.hook_attn_scores", ids, T, NULL);
    assert_int_equal(pb_capture_count(cap), 2 * c->n_layers);
    size_t per_layer = (size_t)c->n_heads * (size_t)T * (size_t)T, count;
    double worst = 0.0;
    for (int l = 0; l < c->n_layers; l++) {
        char hook[96], what[160];
        snprintf(hook, sizeof hook, "blocks.%d.attn.hook_pattern", l);
        const float *pattern = captured(cap, hook, &count);
        assert_int_equal(count, per_layer);
        snprintf(hook, sizeof hook, "blocks.%d.attn.hook_attn_scores", l);
        snprintf(what, sizeof what, "%s layer %d", name, l);
        check_scores(what, captured(cap, hook, &count), pattern, c->n_heads, T);
        int slot = fixture_pattern_slot(layers, l);
        for (size_t i = 0; slot >= 0 && i < per_layer; i++) {
            double d = fabs((double)pattern[i] - want[(size_t)slot * per_layer + i]);
            worst = fmax(worst, d);
            if (!(d <= PB_TOL_PATTERN_MAX_ABS))
                fail_msg("%s: pattern element %zu is %.9g, transformers %.9g", what, i, (double)pattern[i],
                         (double)want[(size_t)slot * per_layer + i]);
        }
    }
    printf("[ MEASURE  ] %s: attention patterns vs transformers, max |delta| %.2e over %zu layers\n", name, worst,
           json_array_size(layers));
    pb_capture_free(cap);
    free(want);
    free(ids);
    json_decref(ref);
    pb_model_free(m);
}

static void test_pattern_tiny_gqa(void **state) { check_pattern_case("tiny_gqa"); }
static void test_pattern_tiny_bias(void **state) { check_pattern_case("tiny_bias"); }
static void test_pattern_smollm2(void **state) { check_pattern_case("smollm2"); }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_parse_round_trip),
        cmocka_unit_test(test_parse_refusals),
        cmocka_unit_test(test_hook_shape),
        cmocka_unit_test(test_capture_patterns),
        cmocka_unit_test(test_capture_shapes),
        cmocka_unit_test(test_capture_invariants),
        cmocka_unit_test(test_capture_subset_identical),
        cmocka_unit_test(test_capture_other_model_refused),
        cmocka_unit_test(test_pattern_tiny_gqa),
        cmocka_unit_test(test_pattern_tiny_bias),
        cmocka_unit_test(test_pattern_smollm2),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
