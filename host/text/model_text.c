/* The model's text side: its vocabulary, tokenizer and chat template, loaded
 * from where its weight source says they live (GGUF metadata, a Hugging
 * Face folder's tokenizer files, or nowhere for a random model), and the
 * public pb_model_tokenize / chat / detokenize calls. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "text/chat_template.h"
#include "formats/gguf.h"
#include "util/internal.h"
#include "model/model.h"
#include "model/weight_source.h"
#include "text/model_text.h"
#include "text/tokenizer.h"

/* Records why text is unavailable so the first text call can say it. */
static void remember_failure(pb_model *m, const char *what) {
    snprintf(m->text_error, sizeof m->text_error, "%s: %.400s", what, pb_last_error());
}

static char *bos_text(const pb_model *m) {
    if (m->cfg.bos_id < 0 || m->cfg.bos_id >= m->vocab.n_tokens)
        return NULL;
    size_t len = m->vocab.offsets[m->cfg.bos_id + 1] - m->vocab.offsets[m->cfg.bos_id];
    char *s = malloc(len + 1);
    if (s) {
        memcpy(s, m->vocab.bytes + m->vocab.offsets[m->cfg.bos_id], len);
        s[len] = 0;
    }
    return s;
}

static void init_template(pb_model *m, const char *template_text) {
    char *bos = bos_text(m);
    if (pb_chat_template_init(&m->chat, template_text, NULL, bos) == PB_OK)
        m->has_chat = 1;
    else
        snprintf(m->chat_error, sizeof m->chat_error, "%.500s", pb_last_error());
    free(bos);
}

static void text_from_gguf(pb_model *m, const pb_gguf *g) {
    if (pb_tokenizer_from_gguf(&m->tokenizer, g) != PB_OK)
        remember_failure(m, "the model's tokenizer");
    if (pb_gguf_has_key(g, "tokenizer.ggml.add_bos_token") &&
        pb_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &m->add_bos) != PB_OK)
        m->add_bos = 0;
    if (pb_gguf_has_key(g, "tokenizer.chat_template")) {
        const char *text;
        size_t len;
        if (pb_gguf_get_string(g, "tokenizer.chat_template", &text, &len) == PB_OK) {
            char *copy = strndup(text, len);
            if (copy)
                init_template(m, copy);
            free(copy);
        }
    } else {
        snprintf(m->chat_error, sizeof m->chat_error, "the model file has no tokenizer.chat_template");
    }
}

static void text_from_folder(pb_model *m, const char *dir) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (stat(path, &st) != 0)
        snprintf(m->text_error, sizeof m->text_error, "%.400s is missing", path);
    else if (pb_tokenizer_from_json(&m->tokenizer, path) != PB_OK)
        remember_failure(m, "the model's tokenizer");
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    json_t *config = json_load_file(path, 0, NULL);
    m->add_bos = json_is_true(json_object_get(config, "add_bos_token"));
    const char *template_text = json_string_value(json_object_get(config, "chat_template"));
    if (template_text)
        init_template(m, template_text);
    else
        snprintf(m->chat_error, sizeof m->chat_error, "%.400s has no chat_template", path);
    json_decref(config);
}

pb_status pb_model_text_vocab(pb_model *m, const pb_weight_source *src) {
    if (src->gguf)
        return pb_vocab_from_gguf(&m->vocab, src->gguf);
    if (!src->folder)
        return PB_OK;
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/tokenizer.json", src->folder);
    return stat(path, &st) == 0 ? pb_vocab_from_tokenizer_json(&m->vocab, path) : PB_OK;
}

void pb_model_text_load(pb_model *m, const pb_weight_source *src) {
    if (src->gguf) {
        text_from_gguf(m, src->gguf);
    } else if (src->folder) {
        text_from_folder(m, src->folder);
    } else {
        snprintf(m->text_error, sizeof m->text_error, "%s has no tokenizer (a random model): give token ids", m->path);
        snprintf(m->chat_error, sizeof m->chat_error, "%s has no chat template (a random model): give token ids",
                 m->path);
    }
}

/* ---- text only ---------------------------------------------------------- */

/* GGUF token id key ("tokenizer.ggml.bos_token_id") into *id; -1 when absent. */
static pb_status gguf_token_id(const pb_gguf *g, const char *path, const char *key, int n_tokens, int *id) {
    *id = -1;
    if (!pb_gguf_has_key(g, key))
        return PB_OK;
    int64_t value;
    PB_TRY(pb_gguf_get_int(g, key, &value));
    if (value < 0 || value >= n_tokens)
        return pb_fail(PB_ERR_FORMAT, "%s: '%s' is %lld, outside the vocabulary [0, %d)", path, key, (long long)value,
                       n_tokens);
    *id = (int)value;
    return PB_OK;
}

static pb_status text_only_gguf(pb_model *m, const char *path) {
    pb_gguf *g = NULL;
    PB_TRY(pb_gguf_open(&g, path));
    pb_status st = pb_vocab_from_gguf(&m->vocab, g);
    if (st == PB_OK && m->vocab.n_tokens == 0)
        st = pb_fail(PB_ERR_FORMAT, "%s: no tokenizer (key 'tokenizer.ggml.tokens' is missing)", path);
    if (st == PB_OK)
        st = gguf_token_id(g, path, "tokenizer.ggml.bos_token_id", m->vocab.n_tokens, &m->cfg.bos_id);
    if (st == PB_OK)
        st = gguf_token_id(g, path, "tokenizer.ggml.eos_token_id", m->vocab.n_tokens, &m->cfg.eos_id);
    if (st == PB_OK) {
        m->cfg.vocab_size = m->vocab.n_tokens;
        const char *arch;
        size_t len;
        if (pb_gguf_has_key(g, "general.architecture") &&
            pb_gguf_get_string(g, "general.architecture", &arch, &len) == PB_OK)
            snprintf(m->cfg.arch, sizeof m->cfg.arch, "%.*s", (int)(len < sizeof m->cfg.arch ? len : 0), arch);
        text_from_gguf(m, g);
    }
    pb_gguf_close(g);
    return st;
}

/* config.json's key as a token id (the first of a list), or -1. */
static int folder_token_id(json_t *config, const char *key, int n_tokens) {
    json_t *value = json_object_get(config, key);
    if (json_is_array(value))
        value = json_array_get(value, 0);
    json_int_t id = json_is_integer(value) ? json_integer_value(value) : -1;
    return id >= 0 && id < n_tokens ? (int)id : -1;
}

static pb_status text_only_folder(pb_model *m, const char *dir) {
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return pb_fail(PB_ERR_IO, "%s: no tokenizer (%s is missing or not a regular file)", dir, path);
    PB_TRY(pb_vocab_from_tokenizer_json(&m->vocab, path));
    m->cfg.vocab_size = m->vocab.n_tokens;
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *config = stat(path, &st) == 0 && S_ISREG(st.st_mode) ? json_load_file(path, 0, NULL) : NULL;
    m->cfg.bos_id = folder_token_id(config, "bos_token_id", m->vocab.n_tokens);
    m->cfg.eos_id = folder_token_id(config, "eos_token_id", m->vocab.n_tokens);
    json_decref(config);
    text_from_folder(m, dir);
    return PB_OK;
}

pb_status pb_model_load_text(pb_model **out, const char *path) {
    if (!out || !path)
        return pb_fail(PB_ERR_ARG, "pb_model_load_text: out and path are required");
    *out = NULL;
    struct stat st;
    if (stat(path, &st) != 0)
        return pb_fail(PB_ERR_IO, "%s: cannot stat: %s", path, strerror(errno));
    if (!S_ISREG(st.st_mode) && !S_ISDIR(st.st_mode))
        return pb_fail(PB_ERR_IO, "%s is neither a .gguf file nor a checkpoint folder", path);
    pb_model *m = calloc(1, sizeof *m);
    if (!m || !(m->path = strdup(path))) {
        free(m);
        return pb_fail(PB_ERR_OOM, "out of memory for a model");
    }
    m->cfg.bos_id = m->cfg.eos_id = -1;
    pb_status status = S_ISDIR(st.st_mode) ? text_only_folder(m, path) : text_only_gguf(m, path);
    if (status == PB_OK && !m->tokenizer)
        status = pb_fail(PB_ERR_UNSUPPORTED, "%s", m->text_error[0] ? m->text_error : "the model has no tokenizer");
    if (status != PB_OK) {
        pb_model_free(m);
        return status;
    }
    *out = m;
    return PB_OK;
}

void pb_model_text_free(pb_model *m) {
    pb_tokenizer_free(m->tokenizer);
    if (m->has_chat)
        pb_chat_template_free(&m->chat);
}

static pb_status need_tokenizer(const pb_model *m) {
    if (m->tokenizer)
        return PB_OK;
    return pb_fail(PB_ERR_UNSUPPORTED, "%s", m->text_error[0] ? m->text_error : "the model has no tokenizer");
}

pb_status pb_model_tokenize(const pb_model *m, const char *text, int parse_special, int32_t **ids, int *n_ids) {
    if (!m || !text || !ids || !n_ids)
        return pb_fail(PB_ERR_ARG, "pb_model_tokenize: model, text, ids and n_ids are required");
    PB_TRY(need_tokenizer(m));
    return pb_tokenizer_encode(m->tokenizer, text, strlen(text), parse_special, ids, n_ids);
}

int pb_model_plain_bos(const pb_model *m, int bos) { return bos > 0 || (bos < 0 && m->add_bos && m->cfg.bos_id >= 0); }

pb_status pb_model_tokenize_plain(const pb_model *m, const char *text, int parse_special, int bos, int32_t **ids,
                                  int *n_ids, int *bos_added) {
    if (bos_added)
        *bos_added = 0;
    if (bos > 0 && m && m->cfg.bos_id < 0)
        return pb_fail(PB_ERR_ARG, "a BOS token was asked for, and the model names none");
    PB_TRY(pb_model_tokenize(m, text, parse_special, ids, n_ids));
    if (!pb_model_plain_bos(m, bos))
        return PB_OK;
    int32_t *grown = realloc(*ids, sizeof(int32_t) * ((size_t)*n_ids + 1));
    if (!grown) {
        free(*ids);
        *ids = NULL;
        *n_ids = 0;
        return pb_fail(PB_ERR_OOM, "out of memory for a prompt's BOS");
    }
    memmove(grown + 1, grown, sizeof(int32_t) * (size_t)*n_ids);
    grown[0] = m->cfg.bos_id;
    *ids = grown;
    (*n_ids)++;
    if (bos_added)
        *bos_added = 1;
    return PB_OK;
}

pb_status pb_model_chat_tokenize(const pb_model *m, const char *system, const char *user, int32_t **ids, int *n_ids) {
    if (!m || !user || !ids || !n_ids)
        return pb_fail(PB_ERR_ARG, "pb_model_chat_tokenize: model, user text, ids and n_ids are required");
    PB_TRY(need_tokenizer(m));
    if (!m->has_chat)
        return pb_fail(
            PB_ERR_UNSUPPORTED,
            "no usable chat template (%s); pass one with --chat-template NAME (chatml, qwen3, llama3, llama2, "
            "gemma, gemma3, phi3, olmo2) or --chat-template FILE",
            m->chat_error);
    char *text = NULL;
    PB_TRY(pb_chat_template_render(&m->chat, system, user, &text));
    pb_status status = pb_tokenizer_encode(m->tokenizer, text, strlen(text), 1, ids, n_ids);
    free(text);
    return status;
}

pb_status pb_model_detokenize(const pb_model *m, const int32_t *ids, int n_ids, char **text) {
    if (!m || (!ids && n_ids) || !text)
        return pb_fail(PB_ERR_ARG, "pb_model_detokenize: model, ids and text are required");
    PB_TRY(need_tokenizer(m));
    return pb_tokenizer_decode(m->tokenizer, ids, n_ids, text);
}

pb_status pb_model_set_chat_template(pb_model *m, const char *name_or_file) {
    if (!m || !name_or_file)
        return pb_fail(PB_ERR_ARG, "pb_model_set_chat_template: model and name are required");
    char *bos = bos_text(m);
    pb_chat_template t;
    pb_status status = pb_chat_template_init(&t, NULL, name_or_file, bos);
    free(bos);
    PB_TRY(status);
    if (m->has_chat)
        pb_chat_template_free(&m->chat);
    m->chat = t;
    m->has_chat = 1;
    return PB_OK;
}
