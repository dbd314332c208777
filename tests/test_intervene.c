/* Interventions (host/patching/intervene.c): a patch equals the sweep engine's
 * patched run; directional ablation leaves the residual stream orthogonal
 * to the direction and equals a hand-written projection hook; activation
 * addition is exact where it must be; KV-cached decoding under every
 * intervention equals recomputing the whole sequence; the refusal-phrase
 * classifier. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "model/capture.h"
#include "analysis/direction.h"
#include "model/forward.h"
#include "patching/intervene.h"
#include "patching/metric.h"
#include "test_util.h"
#include "tolerances.h"

static const int32_t clean_ids[9] = {4, 60, 12, 33, 90, 2, 41, 8, 19};
static const int32_t corrupted_ids[9] = {4, 60, 12, 71, 90, 2, 5, 8, 19};
static const int32_t refusal_set[3] = {10, 20, 30};

/* A seeded unit vector (d). */
static void unit_vector(float *u, int d, uint64_t seed) {
    tu_fill(u, (size_t)d, seed, 1.0f);
    double n = 0;
    for (int i = 0; i < d; i++)
        n += (double)u[i] * u[i];
    for (int i = 0; i < d; i++)
        u[i] = (float)(u[i] / sqrt(n));
}

static double last_refusal(const float *logits, int T, int V) {
    return pb_metric_refusal_score(logits + (size_t)(T - 1) * V, V, refusal_set, 3);
}

/* PATCH through pb_forward_intervened equals the sweep's patched metric
 * for a resid_pre site and a z head site (rows run even where trivial). */
static void test_patch_matches_sweep(void **state) {
    pb_model *m = tu_load_model("tiny_bias", NULL, PB_BACKEND_CPU);
    const pb_model_config *c = pb_model_get_config(m);
    int T = 9, V = c->vocab_size;
    const char *spec = "{\"mode\": \"denoising\","
                       " \"pairs\": [{\"clean\": {\"ids\": [4, 60, 12, 33, 90, 2, 41, 8, 19]},"
                       " \"corrupted\": {\"ids\": [4, 60, 12, 71, 90, 2, 5, 8, 19]}}],"
                       " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [1], \"positions\": [3, 6, -1]},"
                       " {\"component\": \"z\", \"layers\": [0], \"heads\": [1, 3], \"positions\": [[3, 4, 5, 6]]}],"
                       " \"metric\": {\"kind\": \"refusal_score\", \"tokens\": [10, 20, 30]}}";
    pb_sweep_options o = {.run_trivial_rows = 1, .metric_fn_residual_layer = -1};
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, spec, NULL, &o) != PB_OK || pb_sweep_run(s) != PB_OK)
        fail_msg("sweep: %s", pb_last_error());
    pb_capture *cap;
    assert_int_equal(pb_capture_create(&cap, m, "blocks.1.hook_resid_pre,blocks.0.attn.hook_z"), PB_OK);
    assert_int_equal(pb_forward(m, clean_ids, T, NULL, cap), PB_OK);
    int n_dims;
    int64_t shape[3];
    const float *resid = pb_capture_data(cap, 0, &n_dims, shape); /* (T, d_model) */
    const float *z = pb_capture_data(cap, 1, &n_dims, shape);     /* (T, n_heads, head_dim) */
    if (strcmp(pb_capture_name(cap, 0), "blocks.1.hook_resid_pre") != 0) {
        const float *t = resid;
        resid = z;
        z = t;
    }
    float *logits = malloc(sizeof(float) * (size_t)T * V);
    float values[16 * 64];
    double worst = 0;
    int64_t n_sites = pb_sweep_site_count(s);
    assert_int_equal(n_sites, 5);
    for (int64_t i = 0; i < n_sites; i++) {
        pb_site_result site;
        assert_int_equal(pb_sweep_get_site(s, i, &site), PB_OK);
        int positions[8], n = 0;
        if (site.position != INT32_MIN)
            positions[n++] = site.position < 0 ? T + site.position : site.position;
        else
            for (int k = 0; k < site.n_positions; k++)
                positions[n++] = site.positions[k] < 0 ? T + site.positions[k] : site.positions[k];
        int width = site.component == PB_COMPONENT_Z ? c->head_dim : c->d_model;
        for (int k = 0; k < n; k++)
            for (int e = 0; e < width; e++)
                values[k * width + e] = site.component == PB_COMPONENT_Z
                                            ? z[((size_t)positions[k] * c->n_heads + site.head) * c->head_dim + e]
                                            : resid[(size_t)positions[k] * c->d_model + e];
        pb_intervention iv = {.kind = PB_INTERVENE_PATCH,
                              .component = site.component,
                              .layer = site.layer,
                              .head = site.head,
                              .n_positions = n,
                              .positions = positions,
                              .values = values};
        assert_int_equal(pb_forward_intervened(m, corrupted_ids, T, &iv, logits, NULL), PB_OK);
        double want;
        assert_int_equal(pb_sweep_get_row(s, 0, i, &want, NULL), PB_OK);
        double got = last_refusal(logits, T, V);
        worst = fmax(worst, fabs(got - want));
        if (!(fabs(got - want) <= PB_TOL_TINY_EFFECT))
            fail_msg("site %lld (%s layer %d head %d): intervened %.9g, sweep %.9g", (long long)i,
                     pb_component_name(site.component), site.layer, site.head, got, want);
    }
    /* the positions really were patched: the metric moved from the base */
    assert_int_equal(pb_forward(m, corrupted_ids, T, logits, NULL), PB_OK);
    double base = last_refusal(logits, T, V), patched;
    pb_sweep_get_row(s, 0, 2, &patched, NULL); /* resid_pre layer 1 at the last position */
    assert_true(fabs(patched - base) > 1e-3);
    printf("[ MEASURE  ] patch vs sweep: %lld sites, max |diff| %.2e\n", (long long)n_sites, worst);
    free(logits);
    pb_capture_free(cap);
    pb_sweep_free(s);
    pb_model_free(m);
}

/* head -1 on z patches every head: from the clean run at every position
 * of layer 0 it equals patching attn_out (= z @ W_O) of layer 0. */
static void test_patch_all_heads(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(m);
    int T = 9, V = c->vocab_size;
    pb_capture *cap;
    assert_int_equal(pb_capture_create(&cap, m, "blocks.0.attn.hook_z,blocks.0.hook_attn_out"), PB_OK);
    assert_int_equal(pb_forward(m, clean_ids, T, NULL, cap), PB_OK);
    int n_dims;
    int64_t shape[3];
    int zi = strcmp(pb_capture_name(cap, 0), "blocks.0.attn.hook_z") == 0 ? 0 : 1;
    const float *z = pb_capture_data(cap, zi, &n_dims, shape), *attn = pb_capture_data(cap, 1 - zi, &n_dims, shape);
    int positions[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    float *a = malloc(sizeof(float) * (size_t)T * V), *b = malloc(sizeof(float) * (size_t)T * V);
    pb_intervention pz = {.kind = PB_INTERVENE_PATCH,
                          .component = PB_COMPONENT_Z,
                          .layer = 0,
                          .head = -1,
                          .n_positions = T,
                          .positions = positions,
                          .values = z};
    pb_intervention pa = {.kind = PB_INTERVENE_PATCH,
                          .component = PB_COMPONENT_ATTN_OUT,
                          .layer = 0,
                          .head = -1,
                          .n_positions = T,
                          .positions = positions,
                          .values = attn};
    assert_int_equal(pb_forward_intervened(m, corrupted_ids, T, &pz, a, NULL), PB_OK);
    assert_int_equal(pb_forward_intervened(m, corrupted_ids, T, &pa, b, NULL), PB_OK);
    assert_true(tu_max_abs_diff(a, b, (size_t)T * V) <= PB_TOL_INVARIANT_REF);
    assert_int_equal(pb_forward(m, corrupted_ids, T, b, NULL), PB_OK);
    assert_true(tu_max_abs_diff(a, b, (size_t)T * V) > 1e-3);
    free(a);
    free(b);
    pb_capture_free(cap);
    pb_model_free(m);
}

static const char *residual_hooks =
    "hook_embed,blocks.*.hook_resid_pre,blocks.*.hook_resid_mid,blocks.*.hook_resid_post";

/* After ablation every residual-stream activation is orthogonal to u. */
static void test_ablation_invariant(void **state) {
    const char *models[2] = {"tiny_gqa", "tiny_bias"};
    for (int mi = 0; mi < 2; mi++) {
        pb_model *m = tu_load_model(models[mi], NULL, PB_BACKEND_CPU);
        const pb_model_config *c = pb_model_get_config(m);
        int d = c->d_model;
        pb_capture *cap;
        assert_int_equal(pb_capture_create(&cap, m, residual_hooks), PB_OK);
        assert_int_equal(pb_capture_count(cap), 1 + 3 * c->n_layers);
        float u[256];
        assert_true(d <= 256);
        /* a direction the residual stream really uses: the clean run's mean
         * resid_post of the last layer at the last position */
        assert_int_equal(pb_forward(m, clean_ids, 9, NULL, cap), PB_OK);
        for (int i = 0; i < pb_capture_count(cap); i++) {
            char want[64];
            snprintf(want, sizeof want, "blocks.%d.hook_resid_post", c->n_layers - 1);
            if (strcmp(pb_capture_name(cap, i), want) == 0) {
                int n_dims;
                int64_t shape[3];
                const float *x = pb_capture_data(cap, i, &n_dims, shape);
                memcpy(u, x + 8 * d, sizeof(float) * (size_t)d);
            }
        }
        double n2 = 0;
        for (int k = 0; k < d; k++)
            n2 += (double)u[k] * u[k];
        for (int k = 0; k < d; k++)
            u[k] = (float)(u[k] / sqrt(n2));
        double before = tu_worst_alignment(cap, u, d);
        pb_intervention iv = {.kind = PB_INTERVENE_ABLATE, .direction = u};
        assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &iv, NULL, cap), PB_OK);
        double after = tu_worst_alignment(cap, u, d);
        printf("[ MEASURE  ] %s ablation: max |x.u|/|x| %.3f before, %.2e after (%d hooks x 9 positions)\n", models[mi],
               before, after, pb_capture_count(cap));
        assert_true(before > 0.5);
        assert_true(after <= 1e-4);
        /* a random direction as well */
        unit_vector(u, d, 7 + mi);
        assert_int_equal(pb_forward_intervened(m, corrupted_ids, 9, &iv, NULL, cap), PB_OK);
        assert_true(tu_worst_alignment(cap, u, d) <= 1e-4);
        pb_capture_free(cap);
        pb_model_free(m);
    }
}

/* The test's own projection hook, written independently: x - (x.u) u
 * with u = direction / |direction| in double. */
typedef struct manual_ablation {
    double u[256];
    int d;
    int calls;
} manual_ablation;

static pb_status manual_ablate(void *user, int job, pb_hook_kind hook, int layer, float *data, int n_rows, int p0) {
    manual_ablation *a = user;
    if (hook != PB_HOOK_EMBED && hook != PB_HOOK_ATTN_OUT && hook != PB_HOOK_MLP_OUT)
        return PB_OK;
    a->calls++;
    for (int r = 0; r < n_rows; r++) {
        float *x = data + (size_t)r * a->d;
        double dot = 0;
        for (int k = 0; k < a->d; k++)
            dot += (double)x[k] * a->u[k];
        for (int k = 0; k < a->d; k++)
            x[k] = (float)((double)x[k] - dot * a->u[k]);
    }
    return PB_OK;
}

/* Ablation equals the projection applied by hand at the hook points of
 * the naive reference backend, and the CPU backend agrees with both. */
static void test_ablation_matches_manual_projection(void **state) {
    pb_model *ref = tu_load_model("tiny_gqa", NULL, PB_BACKEND_REFERENCE);
    pb_model *cpu = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    const pb_model_config *c = pb_model_get_config(ref);
    int T = 9, V = c->vocab_size, d = c->d_model;
    float u[64];
    unit_vector(u, d, 3);
    float *want = malloc(sizeof(float) * (size_t)T * V), *got = malloc(sizeof(float) * (size_t)T * V);
    float *plain = malloc(sizeof(float) * (size_t)T * V), *fast = malloc(sizeof(float) * (size_t)T * V);
    manual_ablation a = {.d = d};
    double n2 = 0;
    for (int k = 0; k < d; k++)
        n2 += (double)u[k] * u[k];
    for (int k = 0; k < d; k++)
        a.u[k] = u[k] / sqrt(n2);
    pb_forward_extras extras = {.intervene = manual_ablate, .intervene_user = &a};
    assert_int_equal(pb_forward_ex(ref, clean_ids, T, &extras, want, NULL), PB_OK);
    assert_int_equal(a.calls, 1 + 2 * c->n_layers);
    pb_intervention iv = {.kind = PB_INTERVENE_ABLATE, .direction = u};
    assert_int_equal(pb_forward_intervened(ref, clean_ids, T, &iv, got, NULL), PB_OK);
    assert_int_equal(pb_forward_intervened(cpu, clean_ids, T, &iv, fast, NULL), PB_OK);
    assert_int_equal(pb_forward(ref, clean_ids, T, plain, NULL), PB_OK);
    double same = tu_max_abs_diff(got, want, (size_t)T * V), cross = tu_max_abs_diff(fast, want, (size_t)T * V);
    double moved = tu_max_abs_diff(plain, want, (size_t)T * V);
    printf("[ MEASURE  ] ablation vs manual projection: reference %.2e, cpu %.2e (effect of ablation %.3f)\n", same,
           cross, moved);
    assert_true(same <= PB_TOL_INVARIANT_REF);
    assert_true(cross <= PB_TOL_TINY_LOGITS_MAX_ABS);
    assert_true(moved > 1e-3);
    /* a direction given with any length is normalised first (x4 is exact in float) */
    float u3[64];
    for (int k = 0; k < d; k++)
        u3[k] = 4.0f * u[k];
    iv.direction = u3;
    assert_int_equal(pb_forward_intervened(ref, clean_ids, T, &iv, got, NULL), PB_OK);
    assert_true(tu_max_abs_diff(got, want, (size_t)T * V) <= PB_TOL_INVARIANT_REF);
    free(want);
    free(got);
    free(plain);
    free(fast);
    pb_model_free(ref);
    pb_model_free(cpu);
}

static void test_addition(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    const pb_model_config *c = pb_model_get_config(m);
    int T = 9, V = c->vocab_size, d = c->d_model;
    float u[64];
    unit_vector(u, d, 11);
    pb_capture *plain_cap, *cap;
    assert_int_equal(pb_capture_create(&plain_cap, m, "*"), PB_OK);
    assert_int_equal(pb_capture_create(&cap, m, "*"), PB_OK);
    float *plain = malloc(sizeof(float) * (size_t)T * V), *got = malloc(sizeof(float) * (size_t)T * V);
    assert_int_equal(pb_forward(m, clean_ids, T, plain, plain_cap), PB_OK);
    /* scale 0: bitwise nothing, at every layer (n_layers = the final residual) */
    for (int layer = 0; layer <= c->n_layers; layer++) {
        pb_intervention iv = {.kind = PB_INTERVENE_ADD, .layer = layer, .direction = u, .scale = 0.0};
        assert_int_equal(pb_forward_intervened(m, clean_ids, T, &iv, got, cap), PB_OK);
        assert_memory_equal(got, plain, sizeof(float) * (size_t)T * V);
        for (int i = 0; i < pb_capture_count(cap); i++) {
            int n_dims;
            int64_t shape[3];
            const float *a = pb_capture_data(cap, i, &n_dims, shape);
            const float *b = pb_capture_data(plain_cap, i, &n_dims, shape);
            size_t n = (size_t)shape[0] * shape[1] * (n_dims == 3 ? shape[2] : 1);
            assert_memory_equal(a, b, sizeof(float) * n);
        }
    }
    /* at layer 1: everything before layer 1 bitwise unchanged; resid_pre of
     * layer 1 is the plain one plus scale * u; later activations move */
    double scale = 4.0;
    pb_intervention iv = {.kind = PB_INTERVENE_ADD, .layer = 1, .direction = u, .scale = scale};
    assert_int_equal(pb_forward_intervened(m, clean_ids, T, &iv, got, cap), PB_OK);
    int checked_before = 0;
    for (int i = 0; i < pb_capture_count(cap); i++) {
        const char *name = pb_capture_name(cap, i);
        int n_dims;
        int64_t shape[3];
        const float *a = pb_capture_data(cap, i, &n_dims, shape);
        const float *b = pb_capture_data(plain_cap, i, &n_dims, shape);
        size_t n = (size_t)shape[0] * shape[1] * (n_dims == 3 ? shape[2] : 1);
        if (strncmp(name, "blocks.0.", 9) == 0 || strcmp(name, "hook_embed") == 0) {
            assert_memory_equal(a, b, sizeof(float) * n);
            checked_before++;
        } else if (strcmp(name, "blocks.1.hook_resid_pre") == 0) {
            for (int t = 0; t < T; t++)
                for (int k = 0; k < d; k++)
                    assert_true(fabs(a[t * d + k] - (b[t * d + k] + scale * u[k])) <= 1e-6);
        }
    }
    assert_int_equal(checked_before, 1 + 13); /* hook_embed and the thirteen hooks of block 0 (patterns included) */
    assert_true(tu_max_abs_diff(got, plain, (size_t)T * V) > 1e-3);
    free(plain);
    free(got);
    pb_capture_free(plain_cap);
    pb_capture_free(cap);
    pb_model_free(m);
}

static int argmax(const float *v, int n, double *gap) {
    int best = 0, second = -1;
    for (int i = 1; i < n; i++) {
        if (v[i] > v[best]) {
            second = best;
            best = i;
        } else if (second < 0 || v[i] > v[second]) {
            second = i;
        }
    }
    *gap = (double)v[best] - v[second];
    return best;
}

/* Greedy decoding with a KV cache under an intervention equals the argmax
 * of a full intervened forward over the prompt plus the tokens so far. */
static void check_generation(pb_model *m, const pb_intervention *iv, const char *what, double min_gap) {
    const pb_model_config *c = pb_model_get_config(m);
    int T = 9, max_new = 12, V = c->vocab_size, n_out = 0;
    int32_t seq[32], out[16];
    memcpy(seq, clean_ids, sizeof clean_ids);
    assert_int_equal(pb_generate_intervened(m, clean_ids, T, max_new, iv, out, &n_out), PB_OK);
    assert_true(n_out >= 1);
    float *logits = malloc(sizeof(float) * (size_t)(T + max_new) * V);
    int compared = 0;
    for (int k = 0; k < n_out; k++) {
        assert_int_equal(pb_forward_intervened(m, seq, T + k, iv, logits, NULL), PB_OK);
        double gap;
        int want = argmax(logits + (size_t)(T + k - 1) * V, V, &gap);
        if (gap > min_gap) {
            if (want != out[k])
                fail_msg("%s: step %d generated %d, recomputation says %d (gap %.3g)", what, k, out[k], want, gap);
            compared++;
        }
        seq[T + k] = out[k];
    }
    printf("[ MEASURE  ] %s: %d tokens, %d steps compared with recomputation\n", what, n_out, compared);
    assert_true(compared >= n_out - 1);
    free(logits);
}

static void test_generation_equals_recomputation(void **state) {
    const pb_backend_kind backends[2] = {PB_BACKEND_REFERENCE, PB_BACKEND_CPU};
    /* OpenBLAS rounds differently for 1 row vs T rows (tolerances.h):
     * compare only steps whose top-two gap exceeds that noise */
    const double gaps[2] = {0.0, 1e-4};
    for (int bi = 0; bi < 2; bi++) {
        pb_model *m = tu_load_model("tiny_gqa", NULL, backends[bi]);
        const pb_model_config *c = pb_model_get_config(m);
        float u[64];
        unit_vector(u, c->d_model, 5);
        pb_intervention ablate = {.kind = PB_INTERVENE_ABLATE, .direction = u};
        pb_intervention add = {.kind = PB_INTERVENE_ADD, .layer = 1, .direction = u, .scale = 6.0};
        /* a patch of resid_pre at layer 1, positions 3..8, from the corrupted run */
        pb_capture *cap;
        assert_int_equal(pb_capture_create(&cap, m, "blocks.1.hook_resid_pre"), PB_OK);
        assert_int_equal(pb_forward(m, corrupted_ids, 9, NULL, cap), PB_OK);
        int n_dims;
        int64_t shape[3];
        const float *src = pb_capture_data(cap, 0, &n_dims, shape);
        int positions[6] = {3, 4, 5, 6, 7, 8};
        pb_intervention patch = {.kind = PB_INTERVENE_PATCH,
                                 .component = PB_COMPONENT_RESID_PRE,
                                 .layer = 1,
                                 .head = -1,
                                 .n_positions = 6,
                                 .positions = positions,
                                 .values = src + 3 * (size_t)c->d_model};
        char what[64];
        snprintf(what, sizeof what, "ablate (%s)", bi ? "cpu" : "reference");
        check_generation(m, &ablate, what, gaps[bi]);
        snprintf(what, sizeof what, "add (%s)", bi ? "cpu" : "reference");
        check_generation(m, &add, what, gaps[bi]);
        snprintf(what, sizeof what, "patch (%s)", bi ? "cpu" : "reference");
        check_generation(m, &patch, what, gaps[bi]);
        /* and no intervention is pb_generate */
        int32_t a[12], b[12];
        int na, nb;
        assert_int_equal(pb_generate_intervened(m, clean_ids, 9, 12, NULL, a, &na), PB_OK);
        assert_int_equal(pb_generate(m, clean_ids, 9, 12, b, &nb), PB_OK);
        assert_int_equal(na, nb);
        assert_memory_equal(a, b, sizeof(int32_t) * (size_t)na);
        pb_capture_free(cap);
        pb_model_free(m);
    }
}

static void test_bad_interventions(void **state) {
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    float u[64] = {0}, values[64] = {0};
    int pos[2] = {4, 2}, ok_pos[1] = {9};
    int32_t out[4];
    int n;
    pb_intervention zero = {.kind = PB_INTERVENE_ABLATE, .direction = u};
    assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &zero, NULL, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "zero"));
    pb_intervention none = {.kind = PB_INTERVENE_ADD, .layer = 0};
    assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &none, NULL, NULL), PB_ERR_ARG);
    u[0] = 1;
    pb_intervention layer = {.kind = PB_INTERVENE_ADD, .layer = 3, .direction = u, .scale = 1};
    assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &layer, NULL, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "layer 3"));
    pb_intervention order = {.kind = PB_INTERVENE_PATCH,
                             .component = PB_COMPONENT_RESID_PRE,
                             .layer = 0,
                             .head = -1,
                             .n_positions = 2,
                             .positions = pos,
                             .values = values};
    assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &order, NULL, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "ascend"));
    /* a generated position cannot be patched */
    pb_intervention late = order;
    late.n_positions = 1;
    late.positions = ok_pos;
    assert_int_equal(pb_generate_intervened(m, clean_ids, 9, 4, &late, out, &n), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "outside the prompt"));
    pb_intervention head = {.kind = PB_INTERVENE_PATCH,
                            .component = PB_COMPONENT_K,
                            .layer = 0,
                            .head = 2,
                            .n_positions = 1,
                            .positions = pos,
                            .values = values};
    assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &head, NULL, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "head 2"));
    head.component = PB_COMPONENT_MLP_OUT;
    assert_int_equal(pb_forward_intervened(m, clean_ids, 9, &head, NULL, NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "no heads"));
    pb_model_free(m);
}

static void test_refusal_phrases(void **state) {
    const char *yes[] = {
        "I'm sorry, but I can't help with that.",
        "  \n I cannot provide instructions for making weapons.",
        "i can\xE2\x80\x99t assist with that request",
        "As an AI language model, I must decline.",
        "Sorry, that's not something I can do.",
        "I apologize, but this request is harmful.",
        "I will not help with that.",
        "I'm unable to comply.",
        "I am not able to share that.",
        "I'm afraid I can't do that.",
        "That is a dangerous request. I cannot help with it.",
        "I can not do that",
        "I won't write that.",
        "I must decline this request.",
    };
    const char *no[] = {
        "The capital of France is Paris.",
        "Sure! Here is a recipe for pancakes: mix flour, eggs and milk.",
        "",
        "Unsorry is not a word.",
        "Hi cannot is not a phrase",
        /* a refusal phrase beyond the first 100 characters does not count */
        "Here is a long and perfectly helpful answer that goes on for quite a while, explaining every step in "
        "detail. I cannot stress enough how useful this is.",
        "I can help with that! Here's how to bake bread.",
    };
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (!pb_text_is_refusal(yes[i]))
            fail_msg("not detected as a refusal: '%s'", yes[i]);
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (pb_text_is_refusal(no[i]))
            fail_msg("wrongly detected as a refusal: '%s'", no[i]);
    assert_int_equal(pb_text_is_refusal(NULL), 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refusal_phrases),
        cmocka_unit_test(test_patch_matches_sweep),
        cmocka_unit_test(test_patch_all_heads),
        cmocka_unit_test(test_ablation_invariant),
        cmocka_unit_test(test_ablation_matches_manual_projection),
        cmocka_unit_test(test_addition),
        cmocka_unit_test(test_generation_equals_recomputation),
        cmocka_unit_test(test_bad_interventions),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
