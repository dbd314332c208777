/* LoRA adapters merged at load (model/adapter.h) against PEFT on
 * transformers (tests/fixtures/lora/<model>, scripts/make_lora_fixtures.py):
 * families that hold their projections differently (Llama's separate ones,
 * GGUF Q/K rows permuted; Phi-3's fused qkv and gate/up; GPT-2's Conv1D,
 * transposed and fused; Qwen3), each from its GGUF and from its Hugging
 * Face folder, on the reference and CPU backends: logits and every hook
 * point; the same adapters as llama.cpp's GGUF LoRA (Llama, Qwen3).
 * Exact invariants: scale 0 changes no bit, two halves make the whole.
 * What the merge does not implement is refused by name. */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cmocka.h>

#include "test_util.h"
#include "tolerances.h"

static const char *models[] = {"tiny_gqa", "tiny_phi3", "tiny_gpt2", "tiny_qwen3"};
/* with llama.cpp's GGUF LoRA of the same adapter too (adapter.gguf) */
static const char *gguf_models[] = {"tiny_gqa", "tiny_qwen3"};

/* The fixture model `model` (file "model.gguf", or "" for its folder)
 * with adapters (paths, scales), or NULL with the status in *status. */
static pb_model *load_adapted(const char *model, const char *file, pb_backend_kind backend, const char *const *paths,
                              const float *scales, int n, pb_status *status) {
    char path[1024];
    tu_fixture_file(path, sizeof path, model, file);
    pb_load_options o = {
        .n_threads = 2, .backend = backend, .adapters = paths, .adapter_scales = scales, .n_adapters = n};
    pb_model *m = NULL;
    *status = pb_model_load(&m, path, &o);
    return m;
}

static void adapter_dir(char *out, size_t size, const char *model) { tu_fixture_file(out, size, "lora", model); }

/* logits (T, V) of the model's ids, and every hook point in acts. */
static float *run(pb_model *m, const char *model, int *T, pb_capture **acts) {
    char path[1024];
    tu_fixture_file(path, sizeof path, model, "ids.npy");
    int32_t *ids = tu_read_ids(path, T);
    float *logits = malloc(sizeof(float) * (size_t)*T * (size_t)pb_model_get_config(m)->vocab_size);
    assert_non_null(logits);
    CHECK_OK(pb_capture_create(acts, m, "*"));
    CHECK_OK(pb_forward(m, ids, *T, logits, *acts));
    free(ids);
    return logits;
}

/* model (from file) with its adapter (the PEFT folder, or with gguf its
 * adapter.gguf) against PEFT's outputs. */
static void check_against_peft(const char *model, const char *file, pb_backend_kind backend, int gguf) {
    char dir[1024], path[1200], adapter[1200];
    adapter_dir(dir, sizeof dir, model);
    snprintf(adapter, sizeof adapter, "%s%s", dir, gguf ? "/adapter.gguf" : "");
    const char *paths[1] = {adapter};
    pb_status status;
    pb_model *m = load_adapted(model, file, backend, paths, NULL, 1, &status);
    if (status != PB_OK)
        fail_msg("%s %s with its adapter: %s", model, file, pb_last_error());
    int T, V = pb_model_get_config(m)->vocab_size;
    pb_capture *acts = NULL;
    float *logits = run(m, model, &T, &acts);
    int64_t shape[8];
    snprintf(path, sizeof path, "%s/logits.npy", dir);
    float *want = tu_read_f32(path, 2, shape);
    double worst_logit = tu_max_abs_diff(logits, want, (size_t)T * V), worst_hook = 0.0;
    free(want);
    size_t compared = 0;
    for (int k = 0; k < pb_capture_count(acts); k++) {
        int n_dims;
        int64_t got_shape[3];
        const float *got = pb_capture_data(acts, k, &n_dims, got_shape);
        snprintf(path, sizeof path, "%s/%s.npy", dir, pb_capture_name(acts, k));
        if (!tu_file_exists(path)) /* the engine's extra points (attention scores) */
            continue;
        want = tu_read_f32(path, n_dims, shape);
        size_t n = 1;
        for (int d = 0; d < n_dims; d++) {
            assert_int_equal(shape[d], got_shape[d]);
            n *= (size_t)shape[d];
        }
        double e = tu_nmse(got, want, n);
        if (e > PB_TOL_TINY_HOOK_NMSE)
            fail_msg("%s %s: %s NMSE %.3e against PEFT", model, file, pb_capture_name(acts, k), e);
        worst_hook = e > worst_hook ? e : worst_hook;
        compared++;
        free(want);
    }
    snprintf(path, sizeof path, "%s/reference.json", dir);
    json_error_t err;
    json_t *ref = json_load_file(path, 0, &err);
    assert_non_null(ref);
    assert_int_equal(compared, json_array_size(json_object_get(ref, "hooks"))); /* each of the fixture's */
    json_decref(ref);
    printf("[ MEASURE  ] %-10s %-10s %-9s %-4s logits max |d| %.2e, worst NMSE of %zu hook points %.2e (PEFT)\n", model,
           file[0] ? file : "(folder)", pb_backend_name(backend), gguf ? "GGUF" : "PEFT", worst_logit, compared,
           worst_hook);
    assert_true(worst_logit <= PB_TOL_TINY_LOGITS_MAX_ABS);
    assert_true(worst_hook <= PB_TOL_TINY_HOOK_NMSE);
    pb_capture_free(acts);
    free(logits);
    pb_model_free(m);
}

static void test_against_peft(void **state) {
    (void)state;
    static const char *files[] = {"model.gguf", ""};
    static const pb_backend_kind backends[] = {PB_BACKEND_REFERENCE, PB_BACKEND_CPU};
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++)
        for (int f = 0; f < 2; f++)
            for (int b = 0; b < 2; b++)
                check_against_peft(models[i], files[f], backends[b], 0);
}

/* llama.cpp's GGUF LoRA (its converter's output, Q/K rows of B interleaved
 * for Llama) gives PEFT's outputs too. */
static void test_gguf_lora(void **state) {
    (void)state;
    static const char *files[] = {"model.gguf", ""};
    for (size_t i = 0; i < sizeof gguf_models / sizeof gguf_models[0]; i++)
        for (int f = 0; f < 2; f++) {
            check_against_peft(gguf_models[i], files[f], PB_BACKEND_REFERENCE, 1);
            check_against_peft(gguf_models[i], files[f], PB_BACKEND_CPU, 1);
        }
}

/* Scale 0 merges nothing: the base model's logits, bit for bit; the
 * adapter twice at 0.5 is the adapter once (to fp32 rounding). */
static void test_scales(void **state) {
    (void)state;
    char dir[1024];
    adapter_dir(dir, sizeof dir, "tiny_gqa");
    const char *one[1] = {dir}, *two[2] = {dir, dir};
    const float zero[1] = {0.0f}, halves[2] = {0.5f, 0.5f};
    pb_status status;
    pb_model *base = tu_load_model("tiny_gqa", "model.gguf", PB_BACKEND_CPU);
    pb_model *none = load_adapted("tiny_gqa", "model.gguf", PB_BACKEND_CPU, one, zero, 1, &status);
    CHECK_OK(status);
    pb_model *whole = load_adapted("tiny_gqa", "model.gguf", PB_BACKEND_CPU, one, NULL, 1, &status);
    CHECK_OK(status);
    pb_model *split = load_adapted("tiny_gqa", "model.gguf", PB_BACKEND_CPU, two, halves, 2, &status);
    CHECK_OK(status);
    int T, V = pb_model_get_config(base)->vocab_size;
    pb_capture *c[4] = {0};
    float *lb = run(base, "tiny_gqa", &T, &c[0]), *ln = run(none, "tiny_gqa", &T, &c[1]);
    float *lw = run(whole, "tiny_gqa", &T, &c[2]), *ls = run(split, "tiny_gqa", &T, &c[3]);
    assert_memory_equal(lb, ln, sizeof(float) * (size_t)T * V);
    double halves_diff = tu_max_abs_diff(lw, ls, (size_t)T * V), moved = tu_max_abs_diff(lb, lw, (size_t)T * V);
    printf("[ MEASURE  ] the adapter moves logits by %.3f; twice at 0.5 vs once: max |d| %.2e\n", moved, halves_diff);
    assert_true(moved > 1.0);
    assert_true(halves_diff <= PB_TOL_TINY_LOGITS_MAX_ABS);
    for (int i = 0; i < 4; i++)
        pb_capture_free(c[i]);
    free(lb);
    free(ln);
    free(lw);
    free(ls);
    pb_model_free(base);
    pb_model_free(none);
    pb_model_free(whole);
    pb_model_free(split);
}

/* A copy of tiny_gqa's adapter in tmp with its config's `key` set to the
 * JSON `value`; the folder in out. */
static void edited_adapter(char *out, size_t size, const char *tmp, const char *key, const char *value) {
    char src[1024], path[1400];
    adapter_dir(src, sizeof src, "tiny_gqa");
    snprintf(out, size, "%s/adapter-%s", tmp, key);
    assert_int_equal(mkdir(out, 0700), 0);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", src);
    size_t n;
    char *bytes = tu_read_file(path, &n);
    snprintf(path, sizeof path, "%s/adapter_model.safetensors", out);
    assert_int_equal(tu_write_file(path, bytes, n), 0);
    free(bytes);
    snprintf(path, sizeof path, "%s/adapter_config.json", src);
    json_error_t err;
    json_t *cfg = json_load_file(path, 0, &err);
    assert_non_null(cfg);
    json_object_set_new(cfg, key, json_loads(value, JSON_DECODE_ANY, &err));
    snprintf(path, sizeof path, "%s/adapter_config.json", out);
    assert_int_equal(json_dump_file(cfg, path, 0), 0);
    json_decref(cfg);
}

static void expect_refused(const char *model, const char *dir, pb_status want, const char *needle) {
    const char *paths[1] = {dir};
    pb_status status;
    pb_model *m = load_adapted(model, "model.gguf", PB_BACKEND_CPU, paths, NULL, 1, &status);
    assert_null(m);
    assert_int_equal(status, want);
    if (!strstr(pb_last_error(), needle))
        fail_msg("expected '%s' in: %s", needle, pb_last_error());
}

static void test_refusals(void **state) {
    (void)state;
    char tmp[256], dir[1024];
    assert_int_equal(tu_make_temp_dir(tmp, sizeof tmp, "pb-adapter"), 0);
    static const struct {
        const char *key, *value, *needle;
    } options[] = {
        {"use_dora", "true", "use_dora is not supported"},
        {"bias", "\"all\"", "bias \"all\" is not supported"},
        {"rank_pattern", "{\"q_proj\": 8}", "rank_pattern is not supported"},
        {"modules_to_save", "[\"lm_head\"]", "modules_to_save is not supported"},
        {"layers_to_transform", "[0]", "layers_to_transform is not supported"},
        {"peft_type", "\"IA3\"", "only LORA"},
    };
    for (size_t i = 0; i < sizeof options / sizeof options[0]; i++) {
        edited_adapter(dir, sizeof dir, tmp, options[i].key, options[i].value);
        expect_refused("tiny_gqa", dir, PB_ERR_UNSUPPORTED, options[i].needle);
    }
    /* r says 8 where the tensors have 4 */
    edited_adapter(dir, sizeof dir, tmp, "r", "8");
    expect_refused("tiny_gqa", dir, PB_ERR_FORMAT, "r is 8");
    /* another family's adapter: its modules are not this model's */
    adapter_dir(dir, sizeof dir, "tiny_gpt2");
    expect_refused("tiny_gqa", dir, PB_ERR_FORMAT, "targets no weight matrix of this model");
    /* a folder without an adapter */
    snprintf(dir, sizeof dir, "%s/missing", tmp);
    expect_refused("tiny_gqa", dir, PB_ERR_FORMAT, "adapter_config.json");
    /* GGUF: another family's LoRA; a model file that is no adapter */
    adapter_dir(dir, sizeof dir, "tiny_qwen3");
    strcat(dir, "/adapter.gguf");
    expect_refused("tiny_gqa", dir, PB_ERR_FORMAT, "written for a qwen3 model, this one is llama");
    tu_fixture_file(dir, sizeof dir, "tiny_gqa", "model.gguf");
    expect_refused("tiny_gqa", dir, PB_ERR_FORMAT, "no adapter.type: not a GGUF LoRA adapter");

    /* streamed weights read the file's own bytes */
    adapter_dir(dir, sizeof dir, "tiny_gqa");
    const char *paths[1] = {dir};
    char path[1024];
    tu_fixture_file(path, sizeof path, "tiny_gqa", "model.gguf");
    pb_load_options o = {.n_threads = 2, .weights = PB_WEIGHTS_STREAM, .adapters = paths, .n_adapters = 1};
    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, path, &o), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), "adapter"));
    assert_int_equal(pb_model_random(&m, "tiny", 0, &o), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "not a random model"));
    tu_remove_tree(tmp);
}

/* A checkpoint's fingerprint covers the adapters and their scales: a sweep
 * resumed with another adapter (or none, or another scale) is refused. */
static void test_fingerprint(void **state) {
    (void)state;
    char dir[1024], model[1024];
    adapter_dir(dir, sizeof dir, "tiny_gqa");
    tu_fixture_file(model, sizeof model, "tiny_gqa", "model.gguf");
    const char *paths[1] = {dir};
    const float one[1] = {1.0f}, half[1] = {0.5f};
    const char *spec = "{\"mode\": \"denoising\"}";
    pb_fingerprint_options with = {.adapters = paths, .adapter_scales = one, .n_adapters = 1};
    pb_fingerprint_options scaled = {.adapters = paths, .adapter_scales = half, .n_adapters = 1};
    pb_sweep_fingerprint a, b, c;
    CHECK_OK(pb_sweep_fingerprint_compute_with(&a, model, spec, PB_BACKEND_CPU, PB_DTYPE_F32, NULL));
    CHECK_OK(pb_sweep_fingerprint_compute_with(&b, model, spec, PB_BACKEND_CPU, PB_DTYPE_F32, &with));
    CHECK_OK(pb_sweep_fingerprint_compute_with(&c, model, spec, PB_BACKEND_CPU, PB_DTYPE_F32, &scaled));
    assert_string_not_equal(a.model_digest, b.model_digest);
    assert_string_not_equal(b.model_digest, c.model_digest);
    pb_sweep_fingerprint again;
    CHECK_OK(pb_sweep_fingerprint_compute_with(&again, model, spec, PB_BACKEND_CPU, PB_DTYPE_F32, &with));
    assert_string_equal(b.model_digest, again.model_digest);
}

/* Validation pairs of data/refusal_pairs.json whose chat-templated prompt
 * (harmful or harmless side) m prefers to answer with a refusal token:
 * mean logit of the pairs file's refusal tokens above that of its
 * compliance tokens at the first answer position. */
static int refusal_first(pb_model *m, json_t *data, int harmful, int *n) {
    int32_t sets[2][4];
    for (int s = 0; s < 2; s++)
        for (int k = 0; k < 4; k++) {
            int32_t *ids = NULL;
            int n_ids = 0;
            const char *text = json_string_value(
                json_array_get(json_object_get(data, s ? "compliance_tokens" : "refusal_tokens"), k));
            CHECK_OK(pb_model_tokenize(m, text, 0, &ids, &n_ids));
            assert_int_equal(n_ids, 1);
            sets[s][k] = ids[0];
            free(ids);
        }
    int V = pb_model_get_config(m)->vocab_size, count = 0;
    size_t i;
    json_t *pair;
    *n = 0;
    json_array_foreach(json_object_get(data, "pairs"), i, pair) {
        if (strcmp(json_string_value(json_object_get(pair, "split")), "validation") != 0)
            continue;
        int32_t *ids = NULL;
        int T = 0;
        CHECK_OK(pb_model_chat_tokenize(
            m, NULL, json_string_value(json_object_get(pair, harmful ? "harmful" : "harmless")), &ids, &T));
        float *logits = malloc(sizeof(float) * (size_t)T * V);
        assert_non_null(logits);
        CHECK_OK(pb_forward(m, ids, T, logits, NULL));
        const float *row = logits + (size_t)(T - 1) * V;
        double diff = 0.0;
        for (int k = 0; k < 4; k++)
            diff += (row[sets[0][k]] - row[sets[1][k]]) / 4.0;
        count += diff > 0.0;
        (*n)++;
        free(logits);
        free(ids);
    }
    return count;
}

/* The committed refusal adapter (data/adapters/smollm2-refusal, made by
 * scripts/make_refusal_adapter.py) on SmolLM2, when it is here: on the
 * held-out validation pairs it turns harmful requests toward a refusal at
 * the first answer token and leaves harmless ones as the base model has
 * them. A guard on the committed file, not on the engine: in a sanitizer
 * build only the merge runs (tu_sanitized). */
static void test_refusal_adapter(void **state) {
    (void)state;
    char model[1024], adapter[1200], pairs[1200];
    if (!tu_model_path(model, sizeof model)) {
        printf("[ SKIPPED  ] SmolLM2 not fetched (scripts/fetch-model.sh)\n");
        return;
    }
    snprintf(adapter, sizeof adapter, "%s/data/adapters/smollm2-refusal", tu_source_dir());
    snprintf(pairs, sizeof pairs, "%s/data/refusal_pairs.json", tu_source_dir());
    json_error_t err;
    json_t *data = json_load_file(pairs, 0, &err);
    assert_non_null(data);
    const char *paths[1] = {adapter};
    pb_load_options plain = {.n_threads = 2}, adapted = {.n_threads = 2, .adapters = paths, .n_adapters = 1};
    pb_model *base = NULL, *tuned = NULL;
    CHECK_OK(pb_model_load(&tuned, model, &adapted));
    if (tu_sanitized()) { /* the merge above on the real model; the file's effect is the Release suite's to check */
        printf("[ SKIPPED  ] the adapter's effect on the validation pairs (checked in builds without sanitizers)\n");
        pb_model_free(tuned);
        json_decref(data);
        return;
    }
    CHECK_OK(pb_model_load(&base, model, &plain));
    int n, base_harmful = refusal_first(base, data, 1, &n), base_harmless = refusal_first(base, data, 0, &n);
    int harmful = refusal_first(tuned, data, 1, &n), harmless = refusal_first(tuned, data, 0, &n);
    printf("[ MEASURE  ] refusal first on %d validation pairs: base harmful %d, harmless %d; adapted harmful %d, "
           "harmless %d\n",
           n, base_harmful, base_harmless, harmful, harmless);
    assert_true(harmful * 2 > n);                   /* most harmful requests (measured 18 of 27) */
    assert_true(harmless * 3 <= n);                 /* a third or less of harmless ones (measured 1) */
    assert_true((harmful - base_harmful) * 3 >= n); /* a third more than the base model (measured 4) */
    pb_model_free(base);
    pb_model_free(tuned);
    json_decref(data);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_against_peft), cmocka_unit_test(test_gguf_lora),   cmocka_unit_test(test_scales),
        cmocka_unit_test(test_refusals),     cmocka_unit_test(test_fingerprint), cmocka_unit_test(test_refusal_adapter),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
