/* Batched generation (model/generate.c, pb_generate_batch) and the sampler
 * (model/sample.c):
 * - greedy batched decoding equals one prompt at a time (pb_generate) token
 *   for token, on the reference backend, for prompts of several lengths,
 *   batch sizes and model families, with and without an intervention;
 * - a sampled continuation equals an independent recomputation: a full
 *   forward over the sequence so far, the filters written naively here,
 *   and the same uniform draw (so copying a prompt's KV cache to its other
 *   samples changes nothing);
 * - sampled outputs are reproducible from the seed and independent of the
 *   batch size; another seed gives other outputs;
 * - the filters equal transformers' logits warpers (fixture
 *   tests/fixtures/sampling, scripts/make_sampling_reference.py), and draws
 *   follow the probabilities;
 * - stop strings end a continuation at the token completing them (SmolLM2,
 *   skipped without it);
 * - rates and their intervals (pb_rate_estimate) against values computed
 *   independently (Wilson's formula by hand, statsmodels' proportion_confint);
 * - bad options are refused by name. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/sample.h"
#include "patchbay.h"
#include "test_util.h"

enum { MAX_NEW = 10, N_PROMPTS = 4 };

/* Prompts of lengths 9, 6, 12 and 1 from the model's vocabulary. */
static void make_prompts(int vocab, int32_t ids[N_PROMPTS][12], int T[N_PROMPTS]) {
    const int lengths[N_PROMPTS] = {9, 6, 12, 1};
    uint64_t state = 0x5eed;
    for (int p = 0; p < N_PROMPTS; p++) {
        T[p] = lengths[p];
        for (int t = 0; t < T[p]; t++)
            ids[p][t] = (int32_t)(tu_next(&state) % (uint64_t)vocab);
    }
}

/* Runs pb_generate_batch over the prompts; out (n * K, MAX_NEW). */
static void run_batch(pb_model *m, int32_t ids[N_PROMPTS][12], const int T[N_PROMPTS], const pb_generate_options *o,
                      int32_t *out, int *n_out) {
    const int32_t *ptr[N_PROMPTS];
    for (int p = 0; p < N_PROMPTS; p++)
        ptr[p] = ids[p];
    pb_status st = pb_generate_batch(m, ptr, T, N_PROMPTS, o, out, n_out);
    if (st != PB_OK)
        fail_msg("pb_generate_batch: %s", pb_last_error());
}

static void expect_same(const int32_t *a, const int *na, const int32_t *b, const int *nb, int rows, const char *what) {
    for (int s = 0; s < rows; s++) {
        if (na[s] != nb[s])
            fail_msg("%s: continuation %d has %d tokens, the other %d", what, s, na[s], nb[s]);
        for (int i = 0; i < na[s]; i++)
            if (a[s * MAX_NEW + i] != b[s * MAX_NEW + i])
                fail_msg("%s: continuation %d token %d: %d vs %d", what, s, i, a[s * MAX_NEW + i], b[s * MAX_NEW + i]);
    }
}

/* Greedy: every batch size gives pb_generate's tokens for every prompt. */
static void test_greedy_batch_equals_single(void **state) {
    (void)state;
    const char *models[4] = {"tiny_gqa", "tiny_gemma2", "tiny_gpt2", "tiny_qwen3"};
    for (int k = 0; k < 4; k++) {
        pb_model *m = tu_load_model(models[k], NULL, PB_BACKEND_REFERENCE);
        int32_t ids[N_PROMPTS][12];
        int T[N_PROMPTS];
        make_prompts(pb_model_get_config(m)->vocab_size, ids, T);
        int32_t single[N_PROMPTS * MAX_NEW];
        int n_single[N_PROMPTS];
        for (int p = 0; p < N_PROMPTS; p++)
            assert_int_equal(pb_generate(m, ids[p], T[p], MAX_NEW, single + p * MAX_NEW, &n_single[p]), PB_OK);
        const int batches[3] = {0, 1, 3};
        for (int b = 0; b < 3; b++) {
            pb_generate_options o = {.max_new = MAX_NEW, .max_batch = batches[b]};
            int32_t out[N_PROMPTS * MAX_NEW];
            int n_out[N_PROMPTS];
            run_batch(m, ids, T, &o, out, n_out);
            char what[96];
            snprintf(what, sizeof what, "%s, max_batch %d", models[k], batches[b]);
            expect_same(out, n_out, single, n_single, N_PROMPTS, what);
        }
        pb_model_free(m);
    }
}

/* An ablated direction in a batch equals pb_generate_intervened alone. */
static void test_greedy_batch_intervened(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_REFERENCE);
    const pb_model_config *c = pb_model_get_config(m);
    int32_t ids[N_PROMPTS][12];
    int T[N_PROMPTS];
    make_prompts(c->vocab_size, ids, T);
    float *u = malloc(sizeof(float) * (size_t)c->d_model);
    tu_fill(u, (size_t)c->d_model, 77, 1.0f);
    pb_intervention ivs[2] = {{.kind = PB_INTERVENE_ABLATE, .direction = u},
                              {.kind = PB_INTERVENE_ADD, .direction = u, .layer = 1, .scale = 4.0}};
    for (int k = 0; k < 2; k++) {
        int32_t single[N_PROMPTS * MAX_NEW], out[N_PROMPTS * MAX_NEW];
        int n_single[N_PROMPTS], n_out[N_PROMPTS];
        for (int p = 0; p < N_PROMPTS; p++)
            assert_int_equal(
                pb_generate_intervened(m, ids[p], T[p], MAX_NEW, &ivs[k], single + p * MAX_NEW, &n_single[p]), PB_OK);
        pb_generate_options o = {.max_new = MAX_NEW, .iv = &ivs[k], .max_batch = 2};
        run_batch(m, ids, T, &o, out, n_out);
        expect_same(out, n_out, single, n_single, N_PROMPTS, k ? "added" : "ablated");
    }
    free(u);
    pb_model_free(m);
}

/* The filters as their definitions read, over a full sort: probabilities
 * after temperature, top-k (ties with the k-th kept), top-p (kept while
 * the mass before is below top_p), min-p. */
static void naive_probabilities(const float *logits, int V, const pb_sampling *s, double *prob) {
    double *z = malloc(sizeof(double) * (size_t)V), *sorted = malloc(sizeof(double) * (size_t)V);
    for (int i = 0; i < V; i++)
        z[i] = (double)logits[i] / s->temperature;
    /* sorted: z descending (insertion sort; V is small in tests) */
    for (int i = 0; i < V; i++) {
        int j = i;
        while (j > 0 && sorted[j - 1] < z[i]) {
            sorted[j] = sorted[j - 1];
            j--;
        }
        sorted[j] = z[i];
    }
    double kth = s->top_k > 0 && s->top_k < V ? sorted[s->top_k - 1] : -INFINITY, max = sorted[0], sum = 0;
    for (int i = 0; i < V; i++)
        sum += prob[i] = z[i] >= kth ? exp(z[i] - max) : 0;
    for (int i = 0; i < V; i++)
        prob[i] /= sum;
    if (s->top_p > 0 && s->top_p < 1) {
        double *keep = calloc((size_t)V, sizeof(double));
        for (int i = 0; i < V; i++) {
            double before = 0; /* mass of tokens ranked before i: more likely, or as likely with a smaller id */
            for (int j = 0; j < V; j++)
                if (prob[j] > prob[i] || (prob[j] == prob[i] && j < i))
                    before += prob[j];
            keep[i] = prob[i] > 0 && before < s->top_p;
        }
        sum = 0;
        for (int i = 0; i < V; i++)
            sum += prob[i] = keep[i] ? prob[i] : 0;
        for (int i = 0; i < V; i++)
            prob[i] /= sum;
        free(keep);
    }
    if (s->min_p > 0) {
        double top = 0;
        sum = 0;
        for (int i = 0; i < V; i++)
            top = prob[i] > top ? prob[i] : top;
        for (int i = 0; i < V; i++)
            sum += prob[i] = prob[i] >= s->min_p * top ? prob[i] : 0;
        for (int i = 0; i < V; i++)
            prob[i] /= sum;
    }
    free(z);
    free(sorted);
}

/* The token the cumulative sum in id order reaches u at. */
static int32_t naive_draw(const double *prob, int V, double u) {
    double cum = 0;
    int32_t last = 0;
    for (int i = 0; i < V; i++) {
        if (prob[i] <= 0)
            continue;
        cum += prob[i];
        last = i;
        if (cum > u)
            return i;
    }
    return last;
}

/* Sample k of prompt p recomputed without any cache or batch: a full
 * forward per step. */
static void naive_continuation(pb_model *m, const int32_t *ids, int T, int sample, const pb_sampling *s, int32_t *out,
                               int *n) {
    const pb_model_config *c = pb_model_get_config(m);
    uint64_t key = pb_sample_prompt_key(ids, T);
    int32_t seq[12 + MAX_NEW];
    memcpy(seq, ids, sizeof(int32_t) * (size_t)T);
    float *logits = malloc(sizeof(float) * (size_t)(T + MAX_NEW) * c->vocab_size);
    double *prob = malloc(sizeof(double) * (size_t)c->vocab_size);
    *n = 0;
    while (*n < MAX_NEW) {
        int len = T + *n;
        assert_int_equal(pb_forward(m, seq, len, logits, NULL), PB_OK);
        naive_probabilities(logits + (size_t)(len - 1) * c->vocab_size, c->vocab_size, s, prob);
        int32_t next = naive_draw(prob, c->vocab_size, pb_sample_uniform(s->seed, key, sample, *n));
        out[(*n)++] = next;
        seq[len] = next;
        if (next == c->eos_id)
            break;
    }
    free(logits);
    free(prob);
}

static const pb_sampling sampled = {.temperature = 0.9, .top_k = 60, .top_p = 0.92, .min_p = 0.01, .seed = 11};

static void test_sampled_equals_recomputation(void **state) {
    (void)state;
    const char *models[2] = {"tiny_gqa", "tiny_gpt_neox"};
    for (int k = 0; k < 2; k++) {
        pb_model *m = tu_load_model(models[k], NULL, PB_BACKEND_REFERENCE);
        int32_t ids[N_PROMPTS][12];
        int T[N_PROMPTS];
        make_prompts(pb_model_get_config(m)->vocab_size, ids, T);
        enum { K = 3 };
        pb_generate_options o = {.max_new = MAX_NEW, .n_samples = K, .sampling = &sampled, .max_batch = 5};
        int32_t out[N_PROMPTS * K * MAX_NEW], want[MAX_NEW];
        int n_out[N_PROMPTS * K], n_want;
        run_batch(m, ids, T, &o, out, n_out);
        for (int p = 0; p < N_PROMPTS; p++)
            for (int s = 0; s < K; s++) {
                naive_continuation(m, ids[p], T[p], s, &sampled, want, &n_want);
                char what[96];
                snprintf(what, sizeof what, "%s prompt %d sample %d", models[k], p, s);
                expect_same(out + (p * K + s) * MAX_NEW, &n_out[p * K + s], want, &n_want, 1, what);
            }
        pb_model_free(m);
    }
}

static void test_sampled_reproducible(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_qwen3", NULL, PB_BACKEND_REFERENCE);
    int32_t ids[N_PROMPTS][12];
    int T[N_PROMPTS];
    make_prompts(pb_model_get_config(m)->vocab_size, ids, T);
    enum { K = 4, ROWS = N_PROMPTS * K };
    int32_t a[ROWS * MAX_NEW], b[ROWS * MAX_NEW];
    int na[ROWS], nb[ROWS];
    pb_generate_options o = {.max_new = MAX_NEW, .n_samples = K, .sampling = &sampled};
    run_batch(m, ids, T, &o, a, na);
    const int batches[3] = {0, 1, 7};
    for (int i = 0; i < 3; i++) {
        o.max_batch = batches[i];
        run_batch(m, ids, T, &o, b, nb);
        expect_same(a, na, b, nb, ROWS, "same seed, another batch size");
    }
    /* a prompt alone, or in another place, gives the same continuations */
    const int32_t *last = ids[N_PROMPTS - 1], *both[2] = {ids[2], ids[0]};
    int T_both[2] = {T[2], T[0]};
    o.max_batch = 0;
    assert_int_equal(pb_generate_batch(m, &last, &T[N_PROMPTS - 1], 1, &o, b, nb), PB_OK);
    expect_same(a + (N_PROMPTS - 1) * K * MAX_NEW, na + (N_PROMPTS - 1) * K, b, nb, K, "the last prompt alone");
    assert_int_equal(pb_generate_batch(m, both, T_both, 2, &o, b, nb), PB_OK);
    expect_same(a + 2 * K * MAX_NEW, na + 2 * K, b, nb, K, "prompt 2 moved first");
    expect_same(a, na, b + K * MAX_NEW, nb + K, K, "prompt 0 moved second");
    /* the samples of one prompt differ from each other, and another seed
     * gives other continuations */
    int alike = 0;
    for (int s = 1; s < K; s++)
        alike += na[0] == na[s] && memcmp(a, a + s * MAX_NEW, sizeof(int32_t) * (size_t)na[0]) == 0;
    assert_true(alike < K - 1);
    pb_sampling other = sampled;
    other.seed = 12;
    o.sampling = &other;
    run_batch(m, ids, T, &o, b, nb);
    int differ = 0;
    for (int s = 0; s < ROWS; s++)
        differ += na[s] != nb[s] || memcmp(a + s * MAX_NEW, b + s * MAX_NEW, sizeof(int32_t) * (size_t)na[s]) != 0;
    printf("[ MEASURE  ] seed 12 vs 11: %d of %d continuations differ\n", differ, ROWS);
    assert_true(differ > ROWS / 2);
    pb_model_free(m);
}

/* The filters against transformers' warpers on the fixture's rows. */
static void test_filters_match_transformers(void **state) {
    (void)state;
    char path[1024];
    tu_fixture_file(path, sizeof path, "sampling", "reference.json");
    json_error_t err;
    json_t *ref = json_load_file(path, 0, &err);
    if (!ref)
        fail_msg("%s: %s", path, err.text);
    int64_t ls[8], ps[8];
    tu_fixture_file(path, sizeof path, "sampling", "logits.npy");
    float *logits = tu_read_f32(path, 2, ls);
    tu_fixture_file(path, sizeof path, "sampling", "probs.npy");
    float *want = tu_read_f32(path, 3, ps);
    void *kept_data = NULL;
    int kept_dims = 0;
    int64_t ks[8];
    tu_fixture_file(path, sizeof path, "sampling", "kept.npy");
    assert_int_equal(pb_npy_read(path, &kept_data, PB_NPY_I32, &kept_dims, ks), PB_OK);
    const int32_t *kept = kept_data;
    int rows = (int)ls[0], V = (int)ls[1];
    json_t *settings = json_object_get(ref, "settings");
    size_t n_settings = json_array_size(settings);
    assert_int_equal(ps[0], (int64_t)n_settings);
    assert_int_equal(ps[1], rows);
    assert_int_equal(ps[2], V);
    pb_sampler sampler;
    assert_int_equal(pb_sampler_init(&sampler, V), PB_OK);
    double *prob = malloc(sizeof(double) * (size_t)V), worst = 0;
    for (size_t k = 0; k < n_settings; k++) {
        json_t *s = json_array_get(settings, k);
        pb_sampling sp = {.temperature = json_real_value(json_object_get(s, "temperature")),
                          .top_k = (int)json_integer_value(json_object_get(s, "top_k")),
                          .top_p = json_real_value(json_object_get(s, "top_p")),
                          .min_p = json_real_value(json_object_get(s, "min_p"))};
        for (int r = 0; r < rows; r++) {
            assert_int_equal(pb_sampler_probabilities(&sampler, logits + (size_t)r * V, &sp, prob), PB_OK);
            const float *w = want + ((size_t)k * rows + r) * V;
            const int32_t *keep = kept + ((size_t)k * rows + r) * V;
            for (int i = 0; i < V; i++) {
                if ((prob[i] > 0) != (keep[i] != 0))
                    fail_msg("setting %zu row %d token %d: kept %d here, %d by transformers", k, r, i, prob[i] > 0,
                             keep[i]);
                worst = fmax(worst, fabs(prob[i] - w[i]));
            }
        }
    }
    printf("[ MEASURE  ] sampler vs transformers' warpers: %zu settings x %d rows, same kept tokens, max |dp| %.3g\n",
           n_settings, rows, worst);
    assert_true(worst < 1e-6);
    free(prob);
    free(want);
    free(kept_data);
    free(logits);
    pb_sampler_release(&sampler);
    json_decref(ref);
}

/* 40,000 draws from one row: every token's frequency within 4.5 standard
 * errors of its probability (fixed seed: the same draws every run). */
static void test_draws_follow_probabilities(void **state) {
    (void)state;
    enum { V = 6, N = 40000 };
    const float logits[V] = {2.0f, 1.0f, 0.5f, 0.0f, -1.0f, -3.0f};
    const pb_sampling s = {.temperature = 0.8, .top_k = 5, .seed = 3};
    pb_sampler sampler;
    assert_int_equal(pb_sampler_init(&sampler, V), PB_OK);
    double prob[V];
    naive_probabilities(logits, V, &s, prob);
    int count[V] = {0};
    for (int t = 0; t < N; t++) {
        int32_t token = -1;
        assert_int_equal(pb_sampler_next(&sampler, logits, &s, pb_sample_uniform(s.seed, 0, 0, t), &token), PB_OK);
        assert_true(token >= 0 && token < V);
        count[token]++;
    }
    assert_int_equal(count[5], 0); /* outside the top 5 */
    for (int i = 0; i < V; i++) {
        double se = sqrt(prob[i] * (1 - prob[i]) / N), f = (double)count[i] / N;
        if (fabs(f - prob[i]) > 4.5 * se + 1e-12)
            fail_msg("token %d: frequency %.4f, probability %.4f (se %.4f)", i, f, prob[i], se);
    }
    /* greedy (temperature 0) takes the first largest logit */
    const float tie[4] = {1.0f, 3.0f, 3.0f, 0.0f};
    pb_sampler_release(&sampler);
    assert_int_equal(pb_sampler_init(&sampler, 4), PB_OK);
    int32_t token = -1;
    assert_int_equal(pb_sampler_next(&sampler, tie, NULL, 0.99, &token), PB_OK);
    assert_int_equal(token, 1);
    pb_sampler_release(&sampler);
}

/* A stop string ends a continuation at the token whose text completes it. */
static void test_stop_strings(void **state) {
    (void)state;
    pb_model *m = tu_load_case_model_or_skip("smollm2");
    int32_t *ids = NULL;
    int T = 0;
    assert_int_equal(pb_model_chat_tokenize(m, NULL, "Write one sentence about the sea.", &ids, &T), PB_OK);
    enum { N = 24 };
    int32_t plain[N], out[3 * N];
    int n_plain = 0, n_out[3];
    assert_int_equal(pb_generate(m, ids, T, N, plain, &n_plain), PB_OK);
    assert_true(n_plain >= 8);
    /* the stop string: the last three characters of the first 6 tokens' text */
    char *head = NULL, *text = NULL;
    assert_int_equal(pb_model_detokenize(m, plain, 6, &head), PB_OK);
    size_t len = strlen(head);
    assert_true(len >= 3);
    const char *stop[1] = {head + len - 3};
    pb_sampling greedy = {0};
    pb_generate_options o = {.max_new = N, .n_samples = 1, .sampling = &greedy, .stop = stop, .n_stop = 1};
    const int32_t *ptr = ids;
    assert_int_equal(pb_generate_batch(m, &ptr, &T, 1, &o, out, n_out), PB_OK);
    assert_true(n_out[0] <= 6);
    assert_memory_equal(out, plain, sizeof(int32_t) * (size_t)n_out[0]);
    assert_int_equal(pb_model_detokenize(m, out, n_out[0], &text), PB_OK);
    assert_non_null(strstr(text, stop[0]));
    free(text);
    assert_int_equal(pb_model_detokenize(m, out, n_out[0] - 1, &text), PB_OK);
    assert_null(strstr(text, stop[0])); /* not one token earlier */
    printf("[ MEASURE  ] stop \"%s\": %d of %d greedy tokens\n", stop[0], n_out[0], n_plain);
    free(text);
    free(head);
    free(ids);
    pb_model_free(m);
}

/* Intervals against values computed independently: Wilson's score interval
 * for 23/27 (statsmodels proportion_confint(23, 27, method="wilson") gives
 * 0.6747, 0.9409 at n = 27), and the clustered case by hand. */
static void test_rate_intervals(void **state) {
    (void)state;
    int one[27];
    for (int i = 0; i < 27; i++)
        one[i] = i < 23;
    pb_rate r;
    assert_int_equal(pb_rate_estimate(one, 27, 1, &r), PB_OK);
    assert_int_equal(r.refused, 23);
    assert_true(fabs(r.rate - 23.0 / 27) < 1e-12);
    /* one sample per prompt (greedy) is binomial: Wilson's interval at n = 27
     * (the between-prompt variance would give n - 1 = 26 by Bessel's
     * correction alone), 0.6752-0.9408 by the formula worked by hand */
    assert_true(fabs(r.n_effective - 27) < 1e-12);
    double p = 23.0 / 27, n = 27, z = 1.959963984540054;
    double center = (p + z * z / (2 * n)) / (1 + z * z / n);
    double half = z / (1 + z * z / n) * sqrt(p * (1 - p) / n + z * z / (4 * n * n));
    assert_true(fabs(r.low - (center - half)) < 1e-12 && fabs(r.high - (center + half)) < 1e-12);
    assert_true(fabs(r.low - 0.675213) < 1e-6 && fabs(r.high - 0.940841) < 1e-6);
    /* every prompt alike (no variance): Wilson at n_prompts */
    int none[5] = {0, 0, 0, 0, 0};
    assert_int_equal(pb_rate_estimate(none, 5, 4, &r), PB_OK);
    assert_true(r.rate == 0 && r.low == 0 && fabs(r.n_effective - 5) < 1e-12);
    assert_true(fabs(r.high - z * z / 5 / (1 + z * z / 5)) < 1e-12);
    /* clustered: 4 prompts x 4 samples, fractions 1, 1, 0, 0.5: p = 0.625,
     * sample variance of the fractions 0.229167, var of the mean 0.0572917,
     * n_eff = 0.234375 / 0.0572917 = 4.0909 (not 16) */
    int clustered[4] = {4, 4, 0, 2};
    assert_int_equal(pb_rate_estimate(clustered, 4, 4, &r), PB_OK);
    assert_true(fabs(r.rate - 0.625) < 1e-12);
    assert_true(fabs(r.n_effective - 0.234375 / (0.6875 / 3 / 4)) < 1e-9);
    assert_int_equal(pb_rate_estimate(clustered, 4, 3, &r), PB_ERR_ARG); /* 4 refusals of 3 */
    assert_non_null(strstr(pb_last_error(), "prompt 0 has 4 refusals of 3 samples"));
    assert_int_equal(pb_rate_estimate(clustered, 0, 3, &r), PB_ERR_ARG);
}

static void expect_refused(pb_model *m, const pb_generate_options *o, const int32_t *ids, int T, const char *needle) {
    int32_t out[64];
    int n_out[4];
    const int32_t *ptr = ids;
    pb_status st = pb_generate_batch(m, &ptr, &T, 1, o, out, n_out);
    if (st != PB_ERR_ARG || !strstr(pb_last_error(), needle))
        fail_msg("expected PB_ERR_ARG with \"%s\", got %s: %s", needle, pb_status_name(st), pb_last_error());
}

static void test_bad_options(void **state) {
    (void)state;
    pb_model *m = tu_load_model("tiny_gqa", NULL, PB_BACKEND_CPU);
    const int32_t ids[3] = {1, 2, 3};
    pb_sampling s = {.temperature = -1};
    pb_generate_options o = {.max_new = 4, .sampling = &s};
    expect_refused(m, &o, ids, 3, "temperature -1 must be finite and >= 0");
    s = (pb_sampling){.temperature = 1, .top_p = 1.5};
    expect_refused(m, &o, ids, 3, "top_p = 1.5 must lie in [0, 1]");
    s = (pb_sampling){.temperature = 1, .min_p = -0.1};
    expect_refused(m, &o, ids, 3, "min_p = -0.1 must lie in [0, 1]");
    s = (pb_sampling){.temperature = 1, .top_k = -2};
    expect_refused(m, &o, ids, 3, "top_k = -2");
    o.sampling = NULL;
    const char *empty[1] = {""};
    o.stop = empty;
    o.n_stop = 1;
    expect_refused(m, &o, ids, 3, "stop string 0 is empty");
    const char *word[1] = {"the"};
    o.stop = word;
    expect_refused(m, &o, ids, 3, "stop strings need the model's tokenizer");
    o = (pb_generate_options){.max_new = pb_model_get_config(m)->context_length};
    expect_refused(m, &o, ids, 3, "exceed the context length");
    const int32_t bad[2] = {1, 100000};
    o.max_new = 2;
    expect_refused(m, &o, bad, 2, "prompt 0: forward: token id 100000 at position 1 is outside the vocabulary");
    int positions[1] = {5};
    float values[64] = {0};
    pb_intervention patch = {.kind = PB_INTERVENE_PATCH,
                             .component = PB_COMPONENT_RESID_PRE,
                             .head = -1,
                             .n_positions = 1,
                             .positions = positions,
                             .values = values};
    o.iv = &patch;
    expect_refused(m, &o, ids, 3, "patch position 5 outside the prompt [0, 3)");
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_batch_equals_single),
        cmocka_unit_test(test_greedy_batch_intervened),
        cmocka_unit_test(test_sampled_equals_recomputation),
        cmocka_unit_test(test_sampled_reproducible),
        cmocka_unit_test(test_filters_match_transformers),
        cmocka_unit_test(test_draws_follow_probabilities),
        cmocka_unit_test(test_stop_strings),
        cmocka_unit_test(test_rate_intervals),
        cmocka_unit_test(test_bad_options),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
