/* SmolLM2-135M-Instruct (the real Q4_1 GGUF) against transformers loading
 * the same file: logits at every position of three chat-templated prompts
 * and 32-token greedy continuations. Skipped when models/ lacks the file
 * (scripts/fetch-model.sh puts it there; the test command runs it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "formats/npy.h"
#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

static pb_model *model;
static json_t *reference;

static int setup(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", tu_source_dir());
    if (access(path, R_OK) != 0)
        return 0; /* each test skips */
    if (pb_model_load(&model, path, NULL) != PB_OK) {
        fprintf(stderr, "loading %s: %s\n", path, pb_last_error());
        return -1;
    }
    snprintf(path, sizeof path, "%s/smollm2/reference.json", tu_fixtures());
    json_error_t error;
    reference = json_load_file(path, 0, &error);
    if (!reference) {
        fprintf(stderr, "%s: %s\n", path, error.text);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    pb_model_free(model);
    json_decref(reference);
    return 0;
}

static int32_t *prompt_ids(json_t *prompt, int *T) {
    json_t *ids = json_object_get(prompt, "ids");
    *T = (int)json_array_size(ids);
    int32_t *out = malloc(sizeof(int32_t) * (size_t)*T);
    for (int i = 0; i < *T; i++)
        out[i] = (int32_t)json_integer_value(json_array_get(ids, (size_t)i));
    return out;
}

static void test_logits_every_position(void **state) {
    if (!model)
        skip();
    int V = pb_model_get_config(model)->vocab_size;
    size_t i_prompt;
    json_t *prompt;
    double worst = 0.0;
    int worst_prompt = -1, worst_pos = -1, argmax_checked = 0;
    json_array_foreach(json_object_get(reference, "prompts"), i_prompt, prompt) {
        int T;
        int32_t *ids = prompt_ids(prompt, &T);
        char path[1024];
        snprintf(path, sizeof path, "%s/smollm2/%s", tu_fixtures(),
                 json_string_value(json_object_get(prompt, "logits_file")));
        float *ref;
        int n_dims;
        int64_t shape[8];
        if (pb_npy_read(path, (void **)&ref, PB_NPY_F32, &n_dims, shape) != PB_OK)
            fail_msg("%s", pb_last_error());
        assert_int_equal(shape[0], T);
        assert_int_equal(shape[1], V);
        float *logits = malloc(sizeof(float) * (size_t)T * V);
        assert_int_equal(pb_forward(model, ids, T, logits, NULL), PB_OK);
        for (int t = 0; t < T; t++) {
            const float *a = logits + (size_t)t * V, *b = ref + (size_t)t * V;
            double e = tu_nmse(a, b, (size_t)V);
            if (e > worst) {
                worst = e;
                worst_prompt = (int)i_prompt;
                worst_pos = t;
            }
            if (!(e <= PB_TOL_SMOLLM2_LOGITS_NMSE))
                fail_msg("prompt %zu position %d: logits NMSE %.3g > %.3g", i_prompt, t, e, PB_TOL_SMOLLM2_LOGITS_NMSE);
            int best_a = 0, best_b = 0, second_b = -1;
            for (int j = 1; j < V; j++) {
                if (a[j] > a[best_a])
                    best_a = j;
                if (b[j] > b[best_b]) {
                    second_b = best_b;
                    best_b = j;
                } else if (second_b < 0 || b[j] > b[second_b]) {
                    second_b = j;
                }
            }
            if (b[best_b] - b[second_b] > PB_TOL_SMOLLM2_ARGMAX_GAP) {
                argmax_checked++;
                if (best_a != best_b)
                    fail_msg("prompt %zu position %d: argmax %d, reference %d (gap %.4g)", i_prompt, t, best_a, best_b,
                             (double)(b[best_b] - b[second_b]));
            }
        }
        free(logits);
        free(ref);
        free(ids);
    }
    printf("[ MEASURE  ] SmolLM2 logits: worst per-position NMSE %.3g (prompt %d, position %d); argmax identical "
           "at all %d positions with reference top-two gap > %g\n",
           worst, worst_prompt, worst_pos, argmax_checked, PB_TOL_SMOLLM2_ARGMAX_GAP);
}

/* The reference decodes 32 steps without stopping at eos; pb_generate stops
 * after eos, so decoding resumes from the sequence so far, which is the
 * same computation. Every prompt; in a sanitizer build the first (one
 * path, the Release suite checks all). */
static void test_greedy_continuations(void **state) {
    if (!model)
        skip();
    size_t i_prompt;
    json_t *prompt;
    json_array_foreach(json_object_get(reference, "prompts"), i_prompt, prompt) {
        if (i_prompt > 0 && tu_sanitized())
            break;
        int T;
        int32_t *ids = prompt_ids(prompt, &T);
        json_t *greedy = json_object_get(prompt, "greedy");
        json_t *want = json_object_get(greedy, "ids");
        int n_want = (int)json_array_size(want);
        int32_t *seq = malloc(sizeof(int32_t) * (size_t)(T + n_want));
        memcpy(seq, ids, sizeof(int32_t) * (size_t)T);
        int have = 0;
        while (have < n_want) {
            int n_out = 0;
            assert_int_equal(pb_generate(model, seq, T + have, n_want - have, seq + T + have, &n_out), PB_OK);
            assert_true(n_out > 0);
            have += n_out;
        }
        for (int i = 0; i < n_want; i++) {
            int expected = (int)json_integer_value(json_array_get(want, (size_t)i));
            if (seq[T + i] != expected)
                fail_msg("prompt %zu step %d: generated %d, transformers %d (reference top-two gap %.4g)", i_prompt, i,
                         seq[T + i], expected,
                         json_real_value(json_array_get(json_object_get(greedy, "top1_top2_gaps"), (size_t)i)));
        }
        printf("[ MEASURE  ] SmolLM2 prompt %zu: %d greedy tokens identical to transformers\n", i_prompt, n_want);
        free(seq);
        free(ids);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_logits_every_position),
        cmocka_unit_test(test_greedy_continuations),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
