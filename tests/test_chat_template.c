/* Chat templates rendered in C against transformers' own renderer: every
 * real template in tests/fixtures/chat_templates/ (SmolLM2, Qwen2/2.5, Qwen3,
 * Llama-3/3.2/3.3, Llama-2-chat, Mistral v0.1/v0.2/Large, Gemma-2, Gemma-3,
 * Phi-3-mini, Phi-3.5-mini, OLMo-2, Tulu 3) is recognised, and each
 * (system, user) case of renders.json (written by
 * scripts/make_chat_template_fixture.py) renders byte-for-byte the same, or
 * is refused where the template raises or would drop the system prompt.
 * Plus: name overrides, a file path as the name, the system prompt of the
 * Phi-3 variants, unknown and look-alike (Zephyr) templates refused with the
 * --chat-template hint. */
#define _GNU_SOURCE
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "text/chat_template.h"
#include "test_util.h"

#define RENDERS_MAGIC "patchbay-chat-template-renders"
#define RENDERS_VERSION 1

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    assert_non_null(s);
    assert_int_equal(fread(s, 1, (size_t)n, f), (size_t)n);
    s[n] = '\0';
    fclose(f);
    return s;
}

static void template_path(char *buf, size_t size, const char *file) {
    snprintf(buf, size, "%s/chat_templates/%s", tu_fixtures(), file);
}

/* Prints both strings with escapes at the first differing byte. */
static void explain_mismatch(const char *what, const char *got, const char *want) {
    size_t i = 0;
    while (got[i] && got[i] == want[i])
        i++;
    size_t from = i > 30 ? i - 30 : 0;
    printf("%s: first difference at byte %zu\n  got : ", what, i);
    for (size_t k = from; got[k] && k < i + 30; k++)
        printf(got[k] == '\n' ? "\\n" : "%c", got[k]);
    printf("\n  want: ");
    for (size_t k = from; want[k] && k < i + 30; k++)
        printf(want[k] == '\n' ? "\\n" : "%c", want[k]);
    printf("\n");
}

static void test_real_templates_byte_identical(void **state) {
    char path[1024];
    template_path(path, sizeof path, "renders.json");
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root)
        fail_msg("%s: %s (line %d)", path, jerr.text, jerr.line);
    assert_string_equal(json_string_value(json_object_get(root, "magic")), RENDERS_MAGIC);
    assert_int_equal(json_integer_value(json_object_get(root, "version")), RENDERS_VERSION);
    json_t *templates = json_object_get(root, "templates");
    assert_true(json_array_size(templates) >= 10);
    size_t n_cases = 0, n_refused = 0;
    int failures = 0;
    for (size_t i = 0; i < json_array_size(templates); i++) {
        json_t *tj = json_array_get(templates, i);
        const char *file = json_string_value(json_object_get(tj, "file"));
        template_path(path, sizeof path, file);
        char *text = read_text(path);
        pb_chat_template t;
        if (pb_chat_template_init(&t, text, NULL, json_string_value(json_object_get(tj, "bos_token"))) != PB_OK)
            fail_msg("%s: %s", file, pb_last_error());
        if (strcmp(t.name, json_string_value(json_object_get(tj, "format"))) != 0)
            fail_msg("%s recognised as %s, expected %s", file, t.name,
                     json_string_value(json_object_get(tj, "format")));
        const char *want_default = json_string_value(json_object_get(tj, "default_system"));
        if (!want_default != !t.default_system || (want_default && strcmp(want_default, t.default_system) != 0))
            fail_msg("%s: default system \"%s\", expected \"%s\"", file, t.default_system ? t.default_system : "(none)",
                     want_default ? want_default : "(none)");
        json_t *cases = json_object_get(tj, "cases");
        for (size_t c = 0; c < json_array_size(cases); c++) {
            json_t *cj = json_array_get(cases, c);
            const char *system = json_string_value(json_object_get(cj, "system")); /* NULL for JSON null */
            const char *user = json_string_value(json_object_get(cj, "user"));
            const char *expected = json_string_value(json_object_get(cj, "expected"));
            char *got = NULL;
            pb_status st = pb_chat_template_render(&t, system, user, &got);
            char what[1200];
            snprintf(what, sizeof what, "%s case %zu", file, c);
            if (!expected) { /* the template raises or drops the system prompt: we refuse */
                if (st != PB_ERR_UNSUPPORTED) {
                    printf("%s: expected a refusal (%s), got status %s\n", what,
                           json_string_value(json_object_get(cj, "error")), pb_status_name(st));
                    failures++;
                }
                n_refused++;
            } else if (st != PB_OK) {
                printf("%s: %s\n", what, pb_last_error());
                failures++;
            } else if (strcmp(got, expected) != 0) {
                explain_mismatch(what, got, expected);
                failures++;
            }
            free(got);
            n_cases++;
        }
        pb_chat_template_free(&t);
        free(text);
    }
    printf("[ MEASURE  ] %zu templates, %zu cases byte-identical to transformers (%zu refused: the template "
           "raises or drops the system prompt), %d failures\n",
           json_array_size(templates), n_cases - n_refused, n_refused, failures);
    json_decref(root);
    assert_int_equal(failures, 0);
}

static void render_expect(const pb_chat_template *t, const char *system, const char *user, const char *want) {
    char *got = NULL;
    if (pb_chat_template_render(t, system, user, &got) != PB_OK)
        fail_msg("%s", pb_last_error());
    if (strcmp(got, want) != 0) {
        explain_mismatch(t->name, got, want);
        fail();
    }
    free(got);
}

static void test_name_override(void **state) {
    pb_chat_template t;
    assert_int_equal(pb_chat_template_init(&t, NULL, "chatml", NULL), PB_OK);
    assert_string_equal(t.name, "chatml");
    assert_null(t.default_system);
    render_expect(&t, NULL, "hi", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    render_expect(&t, "S", "hi",
                  "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    pb_chat_template_free(&t);

    assert_int_equal(pb_chat_template_init(&t, NULL, "llama3", NULL), PB_OK);
    render_expect(&t, NULL, " hi ",
                  "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n");
    pb_chat_template_free(&t);

    assert_int_equal(pb_chat_template_init(&t, NULL, "llama2", "<s>"), PB_OK);
    render_expect(&t, "S", "hi", "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nhi [/INST]");
    pb_chat_template_free(&t);

    assert_int_equal(pb_chat_template_init(&t, NULL, "gemma", NULL), PB_OK);
    render_expect(&t, NULL, "hi", "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n");
    char *text = NULL;
    assert_int_equal(pb_chat_template_render(&t, "S", "hi", &text), PB_ERR_UNSUPPORTED);
    assert_null(text);
    assert_non_null(strstr(pb_last_error(), "system"));
    pb_chat_template_free(&t);

    /* Gemma-3: the system text (as given) and a blank line open the first
     * user turn, whose text is stripped. */
    assert_int_equal(pb_chat_template_init(&t, NULL, "gemma3", NULL), PB_OK);
    assert_string_equal(t.name, "gemma3");
    render_expect(&t, NULL, " hi\n", "<bos><start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n");
    render_expect(&t, " S ", " hi", "<bos><start_of_turn>user\n S \n\nhi<end_of_turn>\n<start_of_turn>model\n");
    pb_chat_template_free(&t);

    /* Qwen3: ChatML with no default system prompt. */
    assert_int_equal(pb_chat_template_init(&t, NULL, "qwen3", NULL), PB_OK);
    assert_null(t.default_system);
    assert_null(t.bos);
    render_expect(&t, NULL, "hi", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    pb_chat_template_free(&t);

    /* Phi-3 by name: Phi-3.5's layout (no BOS, no turn for an empty system
     * prompt). */
    assert_int_equal(pb_chat_template_init(&t, NULL, "phi3", "<s>"), PB_OK);
    assert_string_equal(t.name, "phi3");
    assert_null(t.bos);
    render_expect(&t, NULL, " hi", "<|user|>\n hi<|end|>\n<|assistant|>\n");
    render_expect(&t, "", "hi", "<|user|>\nhi<|end|>\n<|assistant|>\n");
    render_expect(&t, "S", "hi", "<|system|>\nS<|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n");
    pb_chat_template_free(&t);

    /* OLMo-2 by name: its BOS (the model's, else <|endoftext|>), texts as
     * given, an empty system prompt still a turn. */
    assert_int_equal(pb_chat_template_init(&t, NULL, "olmo2", NULL), PB_OK);
    assert_string_equal(t.name, "olmo2");
    assert_string_equal(t.bos, "<|endoftext|>");
    render_expect(&t, NULL, "hi ", "<|endoftext|><|user|>\nhi \n<|assistant|>\n");
    render_expect(&t, "", "hi", "<|endoftext|><|system|>\n\n<|user|>\nhi\n<|assistant|>\n");
    pb_chat_template_free(&t);
    assert_int_equal(pb_chat_template_init(&t, NULL, "olmo2", "<BOS>"), PB_OK);
    render_expect(&t, "S", "hi", "<BOS><|system|>\nS\n<|user|>\nhi\n<|assistant|>\n");
    pb_chat_template_free(&t);

    /* A name wins over the template text: SmolLM2's ChatML forced to llama2. */
    char path[1024];
    template_path(path, sizeof path, "HuggingFaceTB-SmolLM2-135M-Instruct.jinja");
    char *smol = read_text(path);
    assert_int_equal(pb_chat_template_init(&t, smol, "llama2", "<s>"), PB_OK);
    assert_string_equal(t.name, "llama2");
    pb_chat_template_free(&t);
    free(smol);
}

/* The original Phi-3-mini template has no system branch: transformers
 * renders a system message as if there were none. patchbay refuses it
 * (even "") rather than lose the prompt, and renders without one. */
static void test_phi3_original_refuses_system(void **state) {
    char path[1024];
    template_path(path, sizeof path, "microsoft-Phi-3-mini-4k-instruct.jinja");
    char *phi3 = read_text(path);
    pb_chat_template t;
    assert_int_equal(pb_chat_template_init(&t, phi3, NULL, NULL), PB_OK); /* no model BOS: Phi-3's <s> */
    assert_string_equal(t.name, "phi3");
    assert_int_equal(t.system_style, PB_CHAT_SYSTEM_DROPPED);
    render_expect(&t, NULL, "hi", "<s><|user|>\nhi<|end|>\n<|assistant|>\n");
    const char *systems[] = {"You are a pirate.", ""};
    for (size_t i = 0; i < sizeof systems / sizeof systems[0]; i++) {
        char *text = NULL;
        assert_int_equal(pb_chat_template_render(&t, systems[i], "hi", &text), PB_ERR_UNSUPPORTED);
        assert_null(text);
        assert_non_null(strstr(pb_last_error(), "phi3 chat template ignores system messages"));
        assert_non_null(strstr(pb_last_error(), "render without a system prompt"));
    }
    pb_chat_template_free(&t);
    free(phi3);
}

/* Phi-3.5 adds a system turn only for non-empty content ({% if ... and
 * message['content'] %}): "" gives none, " " (true in Jinja) gives one. */
static void test_phi35_empty_system(void **state) {
    char path[1024];
    template_path(path, sizeof path, "microsoft-Phi-3.5-mini-instruct.jinja");
    char *phi35 = read_text(path);
    pb_chat_template t;
    assert_int_equal(pb_chat_template_init(&t, phi35, NULL, "<s>"), PB_OK);
    assert_string_equal(t.name, "phi3");
    assert_null(t.bos);
    assert_true(t.skip_empty_system);
    render_expect(&t, "", "hi", "<|user|>\nhi<|end|>\n<|assistant|>\n");
    render_expect(&t, " ", "hi", "<|system|>\n <|end|>\n<|user|>\nhi<|end|>\n<|assistant|>\n");
    pb_chat_template_free(&t);

    /* OLMo-2 tests only the role: "" is a turn of its own */
    template_path(path, sizeof path, "allenai-OLMo-2-1124-7B-Instruct.jinja");
    char *olmo = read_text(path);
    assert_int_equal(pb_chat_template_init(&t, olmo, NULL, "<|endoftext|>"), PB_OK);
    assert_string_equal(t.name, "olmo2");
    assert_false(t.skip_empty_system);
    render_expect(&t, "", "hi", "<|endoftext|><|system|>\n\n<|user|>\nhi\n<|assistant|>\n");
    pb_chat_template_free(&t);
    free(olmo);
    free(phi35);
}

static void test_file_path_as_name(void **state) {
    char path[1024];
    template_path(path, sizeof path, "HuggingFaceTB-SmolLM2-135M-Instruct.jinja");
    pb_chat_template t;
    /* the file wins over the (unrecognisable) model template */
    assert_int_equal(pb_chat_template_init(&t, "{{ nonsense }}", path, NULL), PB_OK);
    assert_string_equal(t.name, "chatml");
    assert_string_equal(t.default_system, "You are a helpful AI assistant named SmolLM, trained by Hugging Face");
    pb_chat_template_free(&t);

    assert_int_equal(pb_chat_template_init(&t, NULL, "/nonexistent/template.jinja", NULL), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "--chat-template"));
}

static void test_unknown_template_refused(void **state) {
    static const char *const unknown =
        "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}";
    pb_chat_template t;
    assert_int_equal(pb_chat_template_init(&t, unknown, NULL, NULL), PB_ERR_UNSUPPORTED);
    const char *msg = pb_last_error();
    assert_non_null(strstr(msg, "--chat-template NAME"));
    assert_non_null(strstr(msg, "--chat-template FILE"));
    assert_non_null(strstr(msg, "chatml, qwen3, llama3, llama2, gemma, gemma3, phi3, olmo2"));

    assert_int_equal(pb_chat_template_init(&t, NULL, NULL, NULL), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), "--chat-template"));

    /* the same through a file */
    char path[] = "/tmp/pb_chat_template_XXXXXX.jinja";
    int fd = mkstemps(path, 6);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, unknown, strlen(unknown)), (ssize_t)strlen(unknown));
    close(fd);
    assert_int_equal(pb_chat_template_init(&t, NULL, path, NULL), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), path));
    assert_non_null(strstr(pb_last_error(), "--chat-template"));
    unlink(path);
}

/* Templates that share the <|user|> tags but not the layout stay
 * unrecognised: Zephyr ends each turn with eos_token, not '\n' or <|end|>;
 * a trimmed user text is not rendered as given; a user turn that carries
 * the generation prompt next to an add_generation_prompt of its own would
 * prompt twice. */
static void test_user_tag_look_alikes_refused(void **state) {
    static const char *const look_alikes[] = {
        /* Zephyr (HuggingFaceH4/zephyr-7b-beta's layout) */
        "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
        "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token "
        "}}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token "
        "}}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
        "{% endfor %}",
        /* Zephyr-like with a literal </s> */
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message['content'] + "
        "'</s>\\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}",
        /* Phi-3-like, user text trimmed */
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] | trim "
        "+ '<|end|>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}",
        /* Phi-3-mini's user turn plus a generation prompt of its own */
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + "
        "'<|end|>\n' + '<|assistant|>\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}"
        "{{ '<|assistant|>\n' }}{% endif %}",
    };
    for (size_t i = 0; i < sizeof look_alikes / sizeof look_alikes[0]; i++) {
        pb_chat_template t;
        if (pb_chat_template_init(&t, look_alikes[i], NULL, "</s>") != PB_ERR_UNSUPPORTED)
            fail_msg("look-alike %zu recognised as %s", i, t.name);
        assert_non_null(strstr(pb_last_error(), "unrecognised chat template"));
        assert_non_null(strstr(pb_last_error(), "--chat-template NAME"));
    }
    /* the same layout with '\n' after the user text is OLMo-2's */
    static const char *const tulu_like =
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ '<|user|>\\n' + message.content + "
        "'\\n' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
        "{% endfor %}";
    pb_chat_template t;
    assert_int_equal(pb_chat_template_init(&t, tulu_like, NULL, NULL), PB_OK);
    assert_string_equal(t.name, "olmo2");
    assert_int_equal(t.system_style, PB_CHAT_SYSTEM_DROPPED); /* no <|system|> branch */
    render_expect(&t, NULL, "hi", "<|user|>\nhi\n<|assistant|>\n");
    pb_chat_template_free(&t);
}

static void test_arguments(void **state) {
    pb_chat_template t;
    assert_int_equal(pb_chat_template_init(&t, NULL, "chatml", NULL), PB_OK);
    char *text = NULL;
    assert_int_equal(pb_chat_template_render(&t, NULL, NULL, &text), PB_ERR_ARG);
    assert_int_equal(pb_chat_template_render(NULL, NULL, "hi", &text), PB_ERR_ARG);
    pb_chat_template_free(&t);
    pb_chat_template_free(&t); /* idempotent */
    pb_chat_template_free(NULL);
    assert_int_equal(pb_chat_template_init(NULL, NULL, "chatml", NULL), PB_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_real_templates_byte_identical),
        cmocka_unit_test(test_name_override),
        cmocka_unit_test(test_phi3_original_refuses_system),
        cmocka_unit_test(test_phi35_empty_system),
        cmocka_unit_test(test_file_path_as_name),
        cmocka_unit_test(test_unknown_template_refused),
        cmocka_unit_test(test_user_tag_look_alikes_refused),
        cmocka_unit_test(test_arguments),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
