/* Vocabulary for decoding ids to text. Byte-level BPE vocabularies (GPT-2
 * style, used by SmolLM2, Llama-3, Qwen2) spell raw bytes as printable code
 * points; SentencePiece vocabularies use U+2581 for spaces and <0xNN> for
 * byte fallback. Full tokenization arrives with the tokenizer module. */
#include <ctype.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"
#include "util/internal.h"
#include "text/vocab.h"

/* Inverse of GPT-2's bytes_to_unicode: code point -> byte, or -1. Printable
 * bytes map to themselves; the other 68 bytes were shifted to 256 + n in
 * ascending byte order. */
static int byte_level_code_to_byte(unsigned code) {
    static int table[324];
    static int ready = 0;
    if (!ready) {
        for (int i = 0; i < 324; i++)
            table[i] = -1;
        int shifted = 0;
        for (int b = 0; b < 256; b++) {
            int printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
            if (printable)
                table[b] = b;
            else
                table[256 + shifted++] = b;
        }
        ready = 1;
    }
    return code < 324 ? table[code] : -1;
}

/* Reads one UTF-8 code point; returns its length (1 for invalid bytes). */
static size_t utf8_next(const unsigned char *s, size_t len, unsigned *code) {
    unsigned c = s[0];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || n > len) {
        *code = 0xFFFFFFFFu;
        return 1;
    }
    unsigned value = n == 1 ? c : n == 2 ? (c & 0x1F) : n == 3 ? (c & 0x0F) : (c & 0x07);
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            *code = 0xFFFFFFFFu;
            return 1;
        }
        value = (value << 6) | (s[i] & 0x3F);
    }
    *code = value;
    return n;
}

size_t pb_vocab_byte_level_decode(const char *token, size_t len, char *out) {
    const unsigned char *s = (const unsigned char *)token;
    size_t used = 0, i = 0;
    while (i < len) {
        unsigned code;
        size_t n = utf8_next(s + i, len - i, &code);
        int byte = byte_level_code_to_byte(code);
        if (byte >= 0) {
            out[used++] = (char)byte;
        } else {
            memcpy(out + used, s + i, n); /* not a byte-level char: keep as is */
            used += n;
        }
        i += n;
    }
    return used;
}

/* SentencePiece: "<0xNN>" is one raw byte; U+2581 is a space. */
static size_t sentencepiece_decode(const char *token, size_t len, char *out) {
    if (len == 6 && memcmp(token, "<0x", 3) == 0 && token[5] == '>' && isxdigit((unsigned char)token[3]) &&
        isxdigit((unsigned char)token[4])) {
        char hex[3] = {token[3], token[4], 0};
        out[0] = (char)strtol(hex, NULL, 16);
        return 1;
    }
    size_t used = 0;
    for (size_t i = 0; i < len;) {
        if (i + 3 <= len && (unsigned char)token[i] == 0xE2 && (unsigned char)token[i + 1] == 0x96 &&
            (unsigned char)token[i + 2] == 0x81) {
            out[used++] = ' ';
            i += 3;
        } else {
            out[used++] = token[i++];
        }
    }
    return used;
}

typedef size_t (*decode_fn)(const char *token, size_t len, char *out);

/* Builds the packed table from n token strings fetched by get(i). */
static pb_status vocab_build(pb_vocab *vocab, int n, decode_fn decode,
                             pb_status (*get)(const void *ctx, int i, const char **s, size_t *len), const void *ctx) {
    size_t total = 0;
    for (int i = 0; i < n; i++) {
        const char *s;
        size_t len;
        PB_TRY(get(ctx, i, &s, &len));
        total += len;
    }
    vocab->bytes = malloc(total + 1);
    vocab->offsets = malloc(sizeof(size_t) * ((size_t)n + 1));
    if (!vocab->bytes || !vocab->offsets) {
        pb_vocab_free(vocab);
        return pb_fail(PB_ERR_OOM, "vocabulary: out of memory for %d tokens", n);
    }
    size_t used = 0;
    for (int i = 0; i < n; i++) {
        const char *s;
        size_t len;
        get(ctx, i, &s, &len);
        vocab->offsets[i] = used;
        used += decode(s, len, vocab->bytes + used); /* decoding never grows a token */
    }
    vocab->offsets[n] = used;
    vocab->n_tokens = n;
    return PB_OK;
}

static pb_status gguf_token(const void *ctx, int i, const char **s, size_t *len) {
    return pb_gguf_get_array_string((const pb_gguf *)ctx, "tokenizer.ggml.tokens", (uint64_t)i, s, len);
}

pb_status pb_vocab_from_gguf(pb_vocab *vocab, const pb_gguf *gguf) {
    memset(vocab, 0, sizeof *vocab);
    if (!pb_gguf_has_key(gguf, "tokenizer.ggml.tokens"))
        return PB_OK;
    pb_gguf_value_type type;
    uint64_t count;
    PB_TRY(pb_gguf_get_array_info(gguf, "tokenizer.ggml.tokens", &type, &count));
    if (type != PB_GGUF_STRING)
        return pb_fail(PB_ERR_FORMAT, "gguf: key 'tokenizer.ggml.tokens' is an array of type %d, not of strings",
                       (int)type);
    if (count > (uint64_t)INT32_MAX)
        return pb_fail(PB_ERR_FORMAT, "gguf: 'tokenizer.ggml.tokens' has %llu entries", (unsigned long long)count);
    decode_fn decode = pb_vocab_byte_level_decode;
    if (pb_gguf_has_key(gguf, "tokenizer.ggml.model")) {
        const char *model;
        size_t len;
        PB_TRY(pb_gguf_get_string(gguf, "tokenizer.ggml.model", &model, &len));
        if (len == 5 && memcmp(model, "llama", 5) == 0)
            decode = sentencepiece_decode;
    }
    return vocab_build(vocab, (int)count, decode, gguf_token, gguf);
}

typedef struct json_vocab {
    const char **strings;
    size_t *lengths;
} json_vocab;

static pb_status json_token(const void *ctx, int i, const char **s, size_t *len) {
    const json_vocab *jv = ctx;
    *s = jv->strings[i] ? jv->strings[i] : "";
    *len = jv->strings[i] ? jv->lengths[i] : 0;
    return PB_OK;
}

pb_status pb_vocab_from_tokenizer_json(pb_vocab *vocab, const char *path) {
    memset(vocab, 0, sizeof *vocab);
    json_error_t error;
    json_t *root = json_load_file(path, 0, &error);
    if (!root)
        return pb_fail(PB_ERR_FORMAT, "%s: line %d: %s", path, error.line, error.text);
    pb_status status = PB_OK;
    json_vocab jv = {0};
    json_t *entries = json_object_get(json_object_get(root, "model"), "vocab");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(entries)) {
        status = pb_fail(PB_ERR_FORMAT, "%s: 'model.vocab' is missing or not an object", path);
        goto done;
    }
    /* Ids may be sparse; the table spans 0 .. max id. */
    json_int_t max_id = -1;
    const char *key;
    json_t *value;
    json_object_foreach(entries, key, value) {
        if (!json_is_integer(value) || json_integer_value(value) < 0 || json_integer_value(value) > INT32_MAX - 1) {
            status = pb_fail(PB_ERR_FORMAT, "%s: 'model.vocab' entry '%s' has no valid id", path, key);
            goto done;
        }
        if (json_integer_value(value) > max_id)
            max_id = json_integer_value(value);
    }
    size_t i_added;
    json_t *item;
    json_array_foreach(added, i_added, item) {
        json_int_t id = json_integer_value(json_object_get(item, "id"));
        if (json_is_string(json_object_get(item, "content")) && id >= 0 && id < INT32_MAX - 1 && id > max_id)
            max_id = id;
    }
    int n = (int)(max_id + 1);
    jv.strings = calloc((size_t)n + 1, sizeof *jv.strings);
    jv.lengths = calloc((size_t)n + 1, sizeof *jv.lengths);
    if (!jv.strings || !jv.lengths) {
        status = pb_fail(PB_ERR_OOM, "%s: out of memory for %d tokens", path, n);
        goto done;
    }
    json_object_foreach(entries, key, value) {
        jv.strings[json_integer_value(value)] = key;
        jv.lengths[json_integer_value(value)] = strlen(key);
    }
    json_array_foreach(added, i_added, item) {
        json_t *content = json_object_get(item, "content");
        json_int_t id = json_integer_value(json_object_get(item, "id"));
        if (json_is_string(content) && id >= 0 && id < n) {
            jv.strings[id] = json_string_value(content);
            jv.lengths[id] = json_string_length(content);
        }
    }
    const char *decoder = json_string_value(json_object_get(json_object_get(root, "decoder"), "type"));
    decode_fn decode = decoder && strcmp(decoder, "ByteLevel") == 0 ? pb_vocab_byte_level_decode : sentencepiece_decode;
    status = vocab_build(vocab, n, decode, json_token, &jv);
done:
    free(jv.strings);
    free(jv.lengths);
    json_decref(root);
    return status;
}

void pb_vocab_free(pb_vocab *vocab) {
    if (!vocab)
        return;
    free(vocab->bytes);
    free(vocab->offsets);
    memset(vocab, 0, sizeof *vocab);
}
