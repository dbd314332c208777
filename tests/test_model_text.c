/* The model's text path end to end: every shipped prompt
 * (data/refusal_pairs.json), chat-templated and tokenized in C, equals
 * transformers' apply_chat_template on the tokenizer loaded from the same
 * GGUF (fixture from scripts/make_prompt_ids_fixture.py); and the pair
 * lengths the analysis relies on are equal. Skipped without the model. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <string.h>
#include <unistd.h>

#include "patchbay.h"
#include "test_util.h"

static void test_shipped_prompts_match_transformers(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/models/SmolLM2-135M-Instruct.Q4_1.gguf", tu_source_dir());
    if (access(path, R_OK) != 0)
        skip();
    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, path, NULL), PB_OK);
    snprintf(path, sizeof path, "%s/tokenizer/refusal_pairs_chat_ids.json", tu_fixtures());
    json_error_t err;
    json_t *fixture = json_load_file(path, 0, &err);
    assert_non_null(fixture);
    json_t *prompts = json_object_get(fixture, "prompts");
    size_t i;
    json_t *p;
    int compared = 0;
    json_array_foreach(prompts, i, p) {
        int32_t *ids = NULL;
        int n = 0;
        const char *text = json_string_value(json_object_get(p, "text"));
        assert_int_equal(pb_model_chat_tokenize(m, NULL, text, &ids, &n), PB_OK);
        json_t *want = json_object_get(p, "ids");
        if ((size_t)n != json_array_size(want))
            fail_msg("prompt %zu (\"%s\"): %d ids, transformers %zu", i, text, n, json_array_size(want));
        for (int k = 0; k < n; k++)
            if (ids[k] != json_integer_value(json_array_get(want, (size_t)k)))
                fail_msg("prompt %zu (\"%s\"): id %d is %d, transformers %lld", i, text, k, ids[k],
                         json_integer_value(json_array_get(want, (size_t)k)));
        free(ids);
        compared++;
    }
    printf("[ MEASURE  ] %d chat-templated shipped prompts identical to transformers\n", compared);
    assert_true(compared >= 200);
    /* every pair's two sides have the same templated length */
    for (size_t k = 0; k + 1 < json_array_size(prompts); k += 2)
        assert_int_equal(json_array_size(json_object_get(json_array_get(prompts, k), "ids")),
                         json_array_size(json_object_get(json_array_get(prompts, k + 1), "ids")));
    json_decref(fixture);
    pb_model_free(m);
}

/* A model without a tokenizer still loads; its text calls say why. */
static void test_text_errors(void **state) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tiny_gqa", tu_fixtures());
    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, path, NULL), PB_OK);
    int32_t *ids = NULL;
    int n = 0;
    assert_int_not_equal(pb_model_tokenize(m, "hello", 0, &ids, &n), PB_OK);
    assert_non_null(strstr(pb_last_error(), "tokenizer"));
    assert_int_not_equal(pb_model_set_chat_template(m, "no-such-template"), PB_OK);
    assert_non_null(strstr(pb_last_error(), "--chat-template"));
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_shipped_prompts_match_transformers),
        cmocka_unit_test(test_text_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
