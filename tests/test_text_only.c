/* The text side loaded alone (pb_model_load_text, text/model_text.h) and
 * `patchbay tokenize` / `decode`, which use it: a vocabulary-only GGUF (no
 * tensors) of an architecture the engine cannot run, the SentencePiece
 * fixture GGUF against sentencepiece's ids, a Hugging Face folder holding
 * only tokenizer files against transformers' ids, and the real Gemma 3 GGUF
 * (when fetched) against transformers' ids, with a chat prompt. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <string.h>
#include <sys/wait.h>

#include "patchbay.h"
#include "test_util.h"
#include "text/model_text.h"
#include "util/clock.h"

static json_t *load_fixture(const char *relative) {
    char path[1024];
    if (!tu_fixture_path(path, sizeof path, relative))
        fail_msg("PB_FIXTURES is not set");
    json_error_t error;
    json_t *root = json_load_file(path, JSON_ALLOW_NUL, &error);
    if (!root)
        fail_msg("%s: line %d: %s", path, error.line, error.text);
    return root;
}

/* ids (n) equal the JSON list; prints both when not. */
static int ids_equal(const int32_t *ids, int n, json_t *want, const char *what) {
    int equal = (size_t)n == json_array_size(want);
    for (int i = 0; equal && i < n; i++)
        equal = ids[i] == json_integer_value(json_array_get(want, (size_t)i));
    if (!equal) {
        fprintf(stderr, "%s: got", what);
        for (int i = 0; i < n && i < 40; i++)
            fprintf(stderr, " %d", (int)ids[i]);
        char *w = json_dumps(want, JSON_COMPACT);
        fprintf(stderr, "; want %.300s\n", w ? w : "?");
        free(w);
    }
    return equal;
}

/* Runs `patchbay ARGS` (a shell word list, single-quoted by the caller),
 * stdout into out (NUL-terminated). Returns the exit status, or -1 when the
 * tool is not built (the caller skips). */
static int run_tool(const char *args, char *out, size_t size) {
    const char *build = getenv("PB_BUILD_DIR");
    char cli[1024], command[4096];
    snprintf(cli, sizeof cli, "%s/patchbay", build ? build : "build");
    if (!tu_file_exists(cli))
        return -1;
    snprintf(command, sizeof command, "'%s' %s 2>/dev/null", cli, args);
    FILE *p = popen(command, "r");
    assert_non_null(p);
    size_t n = fread(out, 1, size - 1, p);
    out[n] = 0;
    int status = pclose(p);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128;
}

/* tokenize's "[1, 2, 3]" line equals the JSON list. */
static int printed_ids_equal(const char *printed, json_t *want, const char *what) {
    int32_t ids[512];
    int n = 0;
    const char *p = strchr(printed, '[');
    if (!p)
        fail_msg("%s: no id list in '%s'", what, printed);
    for (p++; *p && *p != ']' && n < 512;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p) {
            p++;
            continue;
        }
        ids[n++] = (int32_t)v;
        p = end;
    }
    return ids_equal(ids, n, want, what);
}

/* ---- a vocabulary-only GGUF of an architecture the engine cannot run ---- */

static void put_key(tu_bytes *b, const char *key, uint32_t type) {
    tu_put_str(b, key);
    tu_put_u32(b, type);
}

/* GGUF value types (the format's numbering). */
enum { T_UINT32 = 4, T_INT32 = 5, T_FLOAT32 = 6, T_BOOL = 7, T_STRING = 8, T_ARRAY = 9 };

/* Tokens, scores and types of a tiny Gemma-like SentencePiece vocabulary;
 * no tensors at all. */
static void write_vocab_only_gguf(const char *path) {
    static const char *const tokens[] = {
        "<pad>", "<eos>", "<bos>",        "<unk>", "<start_of_turn>", "<end_of_turn>", "\n",
        "h",     "i",     "\xE2\x96\x81", "hi",    "\xE2\x96\x81hi",  "<0x21>"};
    static const int32_t types[] = {3, 3, 3, 2, 3, 3, 4, 1, 1, 1, 1, 1, 6};
    enum { N = sizeof tokens / sizeof tokens[0] };
    tu_bytes b = {0};
    tu_put(&b, "GGUF", 4);
    tu_put_u32(&b, 3);
    tu_put_u64(&b, 0); /* tensors */
    tu_put_u64(&b, 7); /* keys */
    put_key(&b, "general.architecture", T_STRING);
    tu_put_str(&b, "gemma3");
    put_key(&b, "tokenizer.ggml.model", T_STRING);
    tu_put_str(&b, "llama");
    put_key(&b, "tokenizer.ggml.tokens", T_ARRAY);
    tu_put_u32(&b, T_STRING);
    tu_put_u64(&b, N);
    for (int i = 0; i < N; i++)
        tu_put_str(&b, tokens[i]);
    put_key(&b, "tokenizer.ggml.scores", T_ARRAY);
    tu_put_u32(&b, T_FLOAT32);
    tu_put_u64(&b, N);
    for (int i = 0; i < N; i++) {
        float score = -(float)i;
        tu_put(&b, &score, 4);
    }
    put_key(&b, "tokenizer.ggml.token_type", T_ARRAY);
    tu_put_u32(&b, T_INT32);
    tu_put_u64(&b, N);
    tu_put(&b, types, sizeof types);
    put_key(&b, "tokenizer.ggml.bos_token_id", T_UINT32);
    tu_put_u32(&b, 2);
    put_key(&b, "tokenizer.ggml.add_space_prefix", T_BOOL);
    tu_put(&b, "", 1);
    while (b.n % 32)
        tu_put(&b, "", 1);
    assert_int_equal(tu_write_file(path, b.data, b.n), 0);
    free(b.data);
}

/* Hand-checked ids: "hi hi!\n" is hi, ▁hi, <0x21> (byte fallback for '!'),
 * \n (a user-defined token); the special token is one id with
 * parse_special, else bytes and unknown pieces. */
static void test_vocab_only_gguf(void **state) {
    (void)state;
    char dir[512], path[600];
    assert_int_equal(tu_make_temp_dir(dir, sizeof dir, "pb_text_only_"), 0);
    snprintf(path, sizeof path, "%s/vocab.gguf", dir);
    write_vocab_only_gguf(path);
    pb_model *m = NULL;
    assert_int_not_equal(pb_model_load(&m, path, NULL), PB_OK); /* no weights: the engine refuses it */
    CHECK_OK(pb_model_load_text(&m, path));
    assert_int_equal(pb_model_get_config(m)->vocab_size, 13);
    assert_int_equal(pb_model_get_config(m)->bos_id, 2);
    assert_string_equal(pb_model_get_config(m)->arch, "gemma3");
    int32_t *ids;
    int n;
    CHECK_OK(pb_model_tokenize(m, "hi hi!\n", 0, &ids, &n));
    int32_t want[] = {10, 11, 12, 6};
    assert_int_equal(n, 4);
    assert_memory_equal(ids, want, sizeof want);
    free(ids);
    CHECK_OK(pb_model_tokenize(m, "<start_of_turn>hi", 1, &ids, &n));
    assert_int_equal(n, 2);
    assert_int_equal(ids[0], 4);
    assert_int_equal(ids[1], 10);
    free(ids);
    char *text;
    int32_t back[] = {2, 10, 11, 12};
    CHECK_OK(pb_model_detokenize(m, back, 4, &text));
    assert_string_equal(text, "<bos>hi hi!");
    free(text);
    pb_model_free(m);

    char out[4096], args[1400];
    snprintf(args, sizeof args, "tokenize --model '%s' --text 'hi hi!' --bos", path);
    int rc = run_tool(args, out, sizeof out);
    if (rc >= 0) {
        assert_int_equal(rc, 0);
        assert_string_equal(out, "[2, 10, 11, 12]\n");
        snprintf(args, sizeof args, "decode --model '%s' 10 11 12", path);
        assert_int_equal(run_tool(args, out, sizeof out), 0);
        assert_string_equal(out, "hi hi!\n");
    } else {
        printf("SKIP (part): patchbay is not built (set PB_BUILD_DIR)\n");
    }
    /* Not a model at all: a directory without tokenizer.json. */
    assert_int_equal(pb_model_load_text(&m, dir), PB_ERR_IO);
    assert_null(m);
    assert_non_null(strstr(pb_last_error(), "tokenizer.json"));
    assert_int_equal(pb_model_load_text(&m, "/dev/null"), PB_ERR_IO);
    assert_int_equal(pb_model_load_text(NULL, path), PB_ERR_ARG);
    tu_remove_tree(dir);
}

/* The SentencePiece fixture GGUF (metadata only) against sentencepiece. */
static void test_spm_fixture(void **state) {
    (void)state;
    char path[1024];
    assert_true(tu_fixture_path(path, sizeof path, "tokenizer/spm_bpe.gguf"));
    pb_model *m = NULL;
    CHECK_OK(pb_model_load_text(&m, path));
    json_t *root = load_fixture("tokenizer/spm_corpus.json");
    int mismatches = 0;
    size_t i;
    json_t *c;
    json_array_foreach(json_object_get(root, "cases"), i, c) {
        json_t *text = json_object_get(c, "text");
        if (memchr(json_string_value(text), 0, json_string_length(text)))
            continue;
        int32_t *ids;
        int n;
        CHECK_OK(pb_model_tokenize(m, json_string_value(text), 0, &ids, &n));
        mismatches += !ids_equal(ids, n, json_object_get(c, "ids"), "spm_bpe.gguf");
        free(ids);
    }
    json_decref(root);
    pb_model_free(m);
    assert_int_equal(mismatches, 0);
}

/* A folder with tokenizer.json and config.json only: SmolLM2's tokenizer
 * against transformers' ids, in the library and through the tool. */
static void test_hf_folder(void **state) {
    (void)state;
    char dir[512], path[700], fixture[1024];
    assert_int_equal(tu_make_temp_dir(dir, sizeof dir, "pb_text_folder_"), 0);
    assert_true(tu_fixture_path(fixture, sizeof fixture, "tokenizer/smollm2_tokenizer.json"));
    size_t size;
    char *json = tu_read_file(fixture, &size);
    assert_non_null(json);
    assert_int_equal(tu_write_file(tu_path(path, sizeof path, dir, "tokenizer.json"), json, size), 0);
    free(json);
    assert_int_equal(tu_write_text(tu_path(path, sizeof path, dir, "config.json"), "{\"bos_token_id\": 1}"), 0);
    pb_model *m = NULL;
    CHECK_OK(pb_model_load_text(&m, dir));
    assert_int_equal(pb_model_get_config(m)->bos_id, 1);
    json_t *root = load_fixture("tokenizer/smollm2_corpus.json");
    json_t *cases = json_object_get(root, "cases");
    int mismatches = 0;
    for (size_t i = 0; i < json_array_size(cases); i += 7) {
        json_t *c = json_array_get(cases, i), *text = json_object_get(c, "text");
        if (memchr(json_string_value(text), 0, json_string_length(text)))
            continue;
        int32_t *ids;
        int n;
        CHECK_OK(pb_model_tokenize(m, json_string_value(text), 1, &ids, &n));
        mismatches += !ids_equal(ids, n, json_object_get(c, "special"), "smollm2 folder");
        free(ids);
    }
    pb_model_free(m);
    assert_int_equal(mismatches, 0);
    /* the corpus's "hello world" through the tool */
    char out[4096], args[1400];
    snprintf(args, sizeof args, "tokenize --model '%s' --text 'hello world'", dir);
    int rc = run_tool(args, out, sizeof out);
    if (rc >= 0) {
        assert_int_equal(rc, 0);
        json_t *want = NULL, *c;
        json_array_foreach(cases, size, c) {
            if (!want && strcmp(json_string_value(json_object_get(c, "text")), "hello world") == 0)
                want = c;
        }
        assert_non_null(want);
        assert_true(printed_ids_equal(out, json_object_get(want, "special"), "tokenize folder"));
    }
    json_decref(root);
    tu_remove_tree(dir);
}

/* The real Gemma 3 GGUF, its text side alone: tokenize (with --no-bos the
 * tokenizer's own ids, by default Gemma's <bos> first) and a Gemma-3 chat
 * prompt through the tool, against transformers' ids (gemma3_corpus.json
 * "extra"). */
static void test_gemma3_tool(void **state) {
    (void)state;
    char path[1024];
    const char *env = getenv("PB_GEMMA3_MODEL");
    snprintf(path, sizeof path, "%s", env && *env ? env : "");
    if (!*path)
        snprintf(path, sizeof path, "%s/models/gemma-3-270m-q4_k_m.gguf", tu_source_dir());
    if (!tu_file_exists(path)) {
        printf("SKIP: %s not found (scripts/fetch-model.sh gemma3-270m fetches it; or set PB_GEMMA3_MODEL)\n", path);
        skip();
    }
    json_t *root = load_fixture("tokenizer/gemma3_corpus.json");
    json_t *extra = json_object_get(root, "extra");
    json_t *plain = NULL, *chat = NULL, *c;
    size_t i;
    json_array_foreach(extra, i, c) {
        const char *t = json_string_value(json_object_get(c, "text"));
        if (strcmp(t, "a  b") == 0)
            plain = c;
        if (strcmp(t, "<bos><start_of_turn>user\nYou are terse.\n\nHi<end_of_turn>\n<start_of_turn>model\n") == 0)
            chat = c;
    }
    assert_non_null(plain);
    assert_non_null(chat);
    char out[4096], args[1400];
    snprintf(args, sizeof args, "tokenize --model '%s' --text 'a  b' --no-bos", path);
    double t0 = pb_now_seconds();
    int rc = run_tool(args, out, sizeof out);
    double seconds = pb_now_seconds() - t0;
    if (rc < 0) {
        printf("SKIP: patchbay is not built (set PB_BUILD_DIR)\n");
        json_decref(root);
        skip();
    }
    assert_int_equal(rc, 0);
    assert_true(printed_ids_equal(out, json_object_get(plain, "special"), "gemma3 tokenize --no-bos"));
    printf("MEASURE tokenize gemma3 (vocabulary only, 262,144 tokens): %.3f s\n", seconds);
    /* by default plain text gets Gemma's <bos> (id 2) first, as its
     * tokenizer's add_bos_token has transformers' tokenizer(text) do */
    snprintf(args, sizeof args, "tokenize --model '%s' --text 'a  b'", path);
    assert_int_equal(run_tool(args, out, sizeof out), 0);
    json_t *with_bos = json_array();
    json_array_append_new(with_bos, json_integer(2));
    json_array_extend(with_bos, json_object_get(plain, "special"));
    assert_true(printed_ids_equal(out, with_bos, "gemma3 tokenize"));
    json_decref(with_bos);
    snprintf(args, sizeof args,
             "tokenize --model '%s' --chat --chat-template gemma3 --system 'You are terse.' --text 'Hi'", path);
    assert_int_equal(run_tool(args, out, sizeof out), 0);
    assert_true(printed_ids_equal(out, json_object_get(chat, "special"), "gemma3 chat tokenize"));
    json_decref(root);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vocab_only_gguf),
        cmocka_unit_test(test_spm_fixture),
        cmocka_unit_test(test_hf_folder),
        cmocka_unit_test(test_gemma3_tool),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
