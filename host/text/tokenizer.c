/* Text <-> token ids (see tokenizer.h). Owns the tokenizer tables built from
 * GGUF metadata or tokenizer.json, the pre-tokenizer regexes (PCRE2, UTF +
 * UCP), byte-level BPE (merges ranked by index, lowest first, as Hugging
 * Face tokenizers applies them) and SentencePiece BPE (merged piece's score,
 * highest first, leftmost on ties, as sentencepiece's bpe_model.cc does).
 *
 * Reference behaviour: for byte-level vocabularies, the transformers
 * tokenizer built from the same GGUF (tests/fixtures/tokenizer); for
 * SentencePiece vocabularies, sentencepiece itself. Where the two disagree
 * (transformers adds no dummy prefix before text that starts with a space
 * or follows an added token) we follow sentencepiece, which the model was
 * trained with and llama.cpp also follows. Gemma (1/2/3) vocabularies
 * follow transformers' GGUF loader instead, whose two fixes we share (see
 * gguf_sentencepiece): merges in file order, and runs of spaces merged by
 * BPE rather than matched whole as user-defined tokens. Against
 * sentencepiece's longest match of user-defined pieces we expect that to
 * differ only on runs of more than 31 spaces (the longest such token),
 * which BPE splits 16 + ... (not checked: no Gemma .model file here). */
#define PCRE2_CODE_UNIT_WIDTH 8
#include <ctype.h>
#include <jansson.h>
#include <pcre2.h>
#include <utf8proc.h>
#include <stdlib.h>
#include <string.h>

#include "formats/gguf.h"
#include "util/array.h"
#include "util/internal.h"
#include "text/tokenizer.h"
#include "text/vocab.h"
#include "util/utf8.h"

enum { KIND_BYTE_LEVEL = 1, KIND_SENTENCEPIECE = 2 };
enum { TYPE_NORMAL = 1, TYPE_UNKNOWN = 2, TYPE_CONTROL = 3, TYPE_USER = 4, TYPE_UNUSED = 5, TYPE_BYTE = 6 };
#define MAX_SPLITS 4

/* Pre-tokenizer regexes as transformers spells them. \s and \S are
 * rewritten to Unicode White_Space classes before compiling (see
 * rewrite_whitespace). */
static const char GPT2_SPLIT[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
static const char LLAMA3_SPLIT[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}"
                                   "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
static const char QWEN2_SPLIT[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}"
                                  "| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* Unicode White_Space, which Oniguruma's \s (used by Hugging Face
 * tokenizers) matches; PCRE2's \s under UCP leaves out U+0085 and U+180E
 * varies by Unicode version, so we spell the class out. */
#define WS_CLASS_BODY "\\t-\\r \\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}"

typedef struct special_token {
    char *text; /* what is matched in the input */
    size_t len;
    int32_t id;
    int special; /* 1: control, matched only with parse_special; 0: user-defined, always matched */
    int lstrip, rstrip;
} special_token;

/* Open-addressing maps: token text -> id, and (left id, right id) -> merge. */
typedef struct str_slot {
    const char *s;
    size_t len;
    int32_t id;
} str_slot;

typedef struct pair_slot {
    uint64_t key; /* (left + 1) << 32 | (right + 1); 0 = empty */
    int32_t rank;
    int32_t merged;
} pair_slot;

struct pb_tokenizer {
    int kind;
    int n_vocab;
    char **text; /* (n_vocab) token spelling: byte-level alphabet or SentencePiece pieces */
    size_t *text_len;
    int32_t *type; /* (n_vocab) TYPE_* */
    float *score;  /* (n_vocab) SentencePiece only */
    char *decoded; /* packed decoded bytes of every token (pb_vocab layout) */
    size_t *decoded_offset;
    str_slot *by_text; /* all tokens, for token_id */
    size_t by_text_cap;
    str_slot *pieces; /* SentencePiece: the pieces merges may produce */
    size_t pieces_cap;
    pair_slot *merges; /* byte-level */
    size_t merges_cap;
    int32_t byte_id[256]; /* byte-level: the token of one byte; SentencePiece: <0xNN>, or -1 */
    int32_t unk_id;
    special_token *specials;
    int n_specials;
    pcre2_code *split[MAX_SPLITS]; /* applied in order, each splitting every piece (isolated) */
    int n_split;
    int add_prefix_space;             /* byte-level: ByteLevel(add_prefix_space); SentencePiece: dummy prefix */
    int nfc;                          /* the text is put in Unicode NFC first (the GPT-NeoX tokenizer's normalizer) */
    int prefix_each_segment;          /* SentencePiece: the dummy prefix on every stretch between added tokens */
    unsigned char special_first[256]; /* 1 where some special token starts with this byte */
    /* Specials by text (-> index into specials) and, per first byte b, the
     * distinct lengths of those starting with b, longest first, in
     * special_lens[special_len_from[b] .. special_len_from[b + 1]): a
     * match is a few hash lookups, not a scan of Gemma's 6,400 "<...>". */
    str_slot *special_index;
    size_t special_index_cap;
    size_t *special_lens;
    int special_len_from[257];
};

/* ------------------------------------------------------------ hashing */

static uint64_t hash_bytes(const char *s, size_t len) {
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < len; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static uint64_t hash_u64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static size_t table_cap(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n + 1)
        cap <<= 1;
    return cap;
}

/* Later entries replace earlier ones, as Python dicts and Rust HashMaps
 * built from the same list do. */
static void str_put(str_slot *t, size_t cap, const char *s, size_t len, int32_t id) {
    size_t i = hash_bytes(s, len) & (cap - 1);
    while (t[i].s && !(t[i].len == len && memcmp(t[i].s, s, len) == 0))
        i = (i + 1) & (cap - 1);
    t[i].s = s;
    t[i].len = len;
    t[i].id = id;
}

static int32_t str_get(const str_slot *t, size_t cap, const char *s, size_t len) {
    if (!t)
        return -1;
    size_t i = hash_bytes(s, len) & (cap - 1);
    while (t[i].s) {
        if (t[i].len == len && memcmp(t[i].s, s, len) == 0)
            return t[i].id;
        i = (i + 1) & (cap - 1);
    }
    return -1;
}

static uint64_t pair_key(int32_t a, int32_t b) { return ((uint64_t)(uint32_t)(a + 1) << 32) | (uint32_t)(b + 1); }

static void pair_put(pair_slot *t, size_t cap, int32_t a, int32_t b, int32_t rank, int32_t merged) {
    uint64_t key = pair_key(a, b);
    size_t i = hash_u64(key) & (cap - 1);
    while (t[i].key && t[i].key != key)
        i = (i + 1) & (cap - 1);
    t[i].key = key;
    t[i].rank = rank;
    t[i].merged = merged;
}

static const pair_slot *pair_get(const pb_tokenizer *tok, int32_t a, int32_t b) {
    uint64_t key = pair_key(a, b);
    size_t i = hash_u64(key) & (tok->merges_cap - 1);
    while (tok->merges[i].key) {
        if (tok->merges[i].key == key)
            return &tok->merges[i];
        i = (i + 1) & (tok->merges_cap - 1);
    }
    return NULL;
}

/* ------------------------------------------------------------ UTF-8 */

/* Length of the well-formed UTF-8 sequence at s (no overlongs, surrogates
 * or code points above U+10FFFF), or 0. */
static size_t utf8_valid_len(const unsigned char *s, size_t n) { return pb_utf8_length(s, n); }

/* Bytes of the maximal prefix of an ill-formed sequence (Unicode's
 * "maximal subpart", which Python and Rust replace by one U+FFFD). */
static size_t utf8_bad_len(const unsigned char *s, size_t n) {
    unsigned lo, hi;
    size_t len = (size_t)pb_utf8_lead(s[0], &lo, &hi);
    if (len < 2)
        return 1;
    size_t i = 1;
    if (i < n && s[i] >= lo && s[i] <= hi) {
        i++;
        while (i < len && i < n && (s[i] & 0xC0) == 0x80)
            i++;
    }
    return i;
}

static unsigned utf8_decode_at(const unsigned char *s, size_t len) {
    if (len == 1)
        return s[0];
    unsigned v = s[0] & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < len; i++)
        v = (v << 6) | (s[i] & 0x3F);
    return v;
}

static size_t utf8_put(unsigned code, char *out) {
    if (code < 0x80) {
        out[0] = (char)code;
        return 1;
    }
    if (code < 0x800) {
        out[0] = (char)(0xC0 | (code >> 6));
        out[1] = (char)(0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out[0] = (char)(0xE0 | (code >> 12));
        out[1] = (char)(0x80 | ((code >> 6) & 0x3F));
        out[2] = (char)(0x80 | (code & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (code >> 18));
    out[1] = (char)(0x80 | ((code >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((code >> 6) & 0x3F));
    out[3] = (char)(0x80 | (code & 0x3F));
    return 4;
}

static int is_white_space(unsigned c) {
    return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the
 * other 68 are shifted to 256 + n in ascending order. Pure functions, so
 * tokenizers may be built from several threads. */
static int byte_is_printable(unsigned b) {
    return (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
}

static unsigned byte_level_code(int byte) {
    if (byte_is_printable((unsigned)byte))
        return (unsigned)byte;
    unsigned shifted = 0;
    for (int b = 0; b < byte; b++)
        shifted += !byte_is_printable((unsigned)b);
    return 256u + shifted;
}

/* 1 when every character of s is in the byte-level alphabet. */
static int in_byte_level_alphabet(const char *s, size_t len) {
    const unsigned char *u = (const unsigned char *)s;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_valid_len(u + i, len - i);
        if (!n)
            return 0;
        unsigned c = utf8_decode_at(u + i, n);
        if (!(byte_is_printable(c) || (c >= 256 && c < 324)))
            return 0;
        i += n;
    }
    return 1;
}

/* Each byte of s spelled in the byte-level alphabet; malloc'd. */
static char *byte_level_spell(const char *s, size_t len, size_t *out_len) {
    char *out = malloc(2 * len + 1);
    if (!out)
        return NULL;
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += utf8_put(byte_level_code((unsigned char)s[i]), out + n);
    out[n] = 0;
    *out_len = n;
    return out;
}

/* ------------------------------------------------------------ growable id buffer */

typedef struct id_buf {
    int32_t *ids;
    size_t n, cap;
} id_buf;

static int id_push(id_buf *b, int32_t id) {
    if (pb_array_reserve(&b->ids, &b->cap, b->n + 1, sizeof *b->ids, "token ids") != PB_OK)
        return 0;
    b->ids[b->n++] = id;
    return 1;
}

/* ------------------------------------------------------------ construction helpers */

static pb_tokenizer *tokenizer_alloc(int n_vocab, int kind) {
    pb_tokenizer *tok = calloc(1, sizeof *tok);
    if (!tok)
        return NULL;
    tok->kind = kind;
    tok->n_vocab = n_vocab;
    tok->unk_id = -1;
    for (int b = 0; b < 256; b++)
        tok->byte_id[b] = -1;
    size_t n = n_vocab > 0 ? (size_t)n_vocab : 1;
    tok->text = calloc(n, sizeof *tok->text);
    tok->text_len = calloc(n, sizeof *tok->text_len);
    tok->type = calloc(n, sizeof *tok->type);
    if (!tok->text || !tok->text_len || !tok->type) {
        pb_tokenizer_free(tok);
        return NULL;
    }
    return tok;
}

void pb_tokenizer_free(pb_tokenizer *tok) {
    if (!tok)
        return;
    if (tok->text)
        for (int i = 0; i < tok->n_vocab; i++)
            free(tok->text[i]);
    free(tok->text);
    free(tok->text_len);
    free(tok->type);
    free(tok->score);
    free(tok->decoded);
    free(tok->decoded_offset);
    free(tok->by_text);
    free(tok->pieces);
    free(tok->merges);
    for (int i = 0; i < tok->n_specials; i++)
        free(tok->specials[i].text);
    free(tok->specials);
    free(tok->special_index);
    free(tok->special_lens);
    for (int i = 0; i < tok->n_split; i++)
        pcre2_code_free(tok->split[i]);
    free(tok);
}

static pb_status set_text(pb_tokenizer *tok, int id, const char *s, size_t len) {
    char *copy = malloc(len + 1);
    if (!copy)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    memcpy(copy, s, len);
    copy[len] = 0;
    free(tok->text[id]);
    tok->text[id] = copy;
    tok->text_len[id] = len;
    return PB_OK;
}

/* Rewrites \s and \S into explicit White_Space classes (outside and inside
 * character classes), so PCRE2 and Oniguruma agree on what a space is. */
static char *rewrite_whitespace(const char *pattern, size_t len) {
    size_t cap = len * (sizeof WS_CLASS_BODY + 4) + 16, n = 0;
    char *out = malloc(cap);
    if (!out)
        return NULL;
    int in_class = 0;
    for (size_t i = 0; i < len; i++) {
        char c = pattern[i];
        if (c == '\\' && i + 1 < len) {
            char e = pattern[i + 1];
            const char *put = NULL;
            if (e == 's')
                put = in_class ? WS_CLASS_BODY : "[" WS_CLASS_BODY "]";
            else if (e == 'S' && !in_class)
                put = "[^" WS_CLASS_BODY "]";
            if (put) {
                size_t m = strlen(put);
                if (n + m + 1 > cap) {
                    free(out);
                    return NULL;
                }
                memcpy(out + n, put, m);
                n += m;
            } else {
                if (n + 3 > cap) {
                    free(out);
                    return NULL;
                }
                out[n++] = c;
                out[n++] = e;
            }
            i++;
            continue;
        }
        if (c == '[' && !in_class) {
            in_class = 1;
            out[n++] = c;
            if (i + 1 < len && pattern[i + 1] == '^')
                out[n++] = pattern[++i];
            if (i + 1 < len && pattern[i + 1] == ']') /* a literal ] first in a class */
                out[n++] = pattern[++i];
            continue;
        }
        if (c == ']' && in_class)
            in_class = 0;
        if (n + 2 > cap) {
            free(out);
            return NULL;
        }
        out[n++] = c;
    }
    out[n] = 0;
    return out;
}

static pb_status add_split(pb_tokenizer *tok, const char *pattern, size_t len) {
    if (tok->n_split >= MAX_SPLITS)
        return pb_fail(PB_ERR_UNSUPPORTED, "tokenizer: more than %d pre-tokenizer splits", MAX_SPLITS);
    char *rewritten = rewrite_whitespace(pattern, len);
    if (!rewritten)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    int code;
    PCRE2_SIZE offset;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)rewritten, PCRE2_ZERO_TERMINATED,
                                   PCRE2_UTF | PCRE2_UCP | PCRE2_NO_UTF_CHECK, &code, &offset, NULL);
    free(rewritten);
    if (!re) {
        PCRE2_UCHAR message[256];
        pcre2_get_error_message(code, message, sizeof message);
        return pb_fail(PB_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer regex '%.*s' does not compile: %s", (int)len,
                       pattern, (const char *)message);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* optional: falls back to the interpreter */
    tok->split[tok->n_split++] = re;
    return PB_OK;
}

/* By first byte (so each byte's candidates are one run: Gemma has 6,400
 * specials, most starting with '<'), then longest first. */
static int special_cmp(const void *a, const void *b) {
    const special_token *x = a, *y = b;
    if (x->text[0] != y->text[0])
        return (unsigned char)x->text[0] < (unsigned char)y->text[0] ? -1 : 1;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1; /* longest first */
    return memcmp(x->text, y->text, x->len);
}

static pb_status add_special(pb_tokenizer *tok, const char *text, size_t len, int32_t id, int special, int lstrip,
                             int rstrip) {
    /* Encode input is valid UTF-8, so a token that is not can never match
     * (and one that is part of a character must not split it). */
    for (size_t i = 0; i < len;) {
        size_t n = utf8_valid_len((const unsigned char *)text + i, len - i);
        if (!n)
            return PB_OK;
        i += n;
    }
    if (len == 0)
        return PB_OK;
    special_token *grown = realloc(tok->specials, sizeof *grown * (size_t)(tok->n_specials + 1));
    if (!grown)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    tok->specials = grown;
    special_token *s = &tok->specials[tok->n_specials];
    s->text = malloc(len + 1);
    if (!s->text)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    memcpy(s->text, text, len);
    s->text[len] = 0;
    s->len = len;
    s->id = id;
    s->special = special;
    s->lstrip = lstrip;
    s->rstrip = rstrip;
    tok->special_first[(unsigned char)text[0]] = 1;
    tok->n_specials++;
    return PB_OK;
}

/* special_index and special_lens over the sorted specials. */
static pb_status special_tables(pb_tokenizer *tok) {
    tok->special_index_cap = table_cap((size_t)tok->n_specials);
    tok->special_index = calloc(tok->special_index_cap, sizeof *tok->special_index);
    tok->special_lens = malloc(sizeof(size_t) * ((size_t)tok->n_specials + 1));
    if (!tok->special_index || !tok->special_lens)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory for %d special tokens", tok->n_specials);
    /* backwards, so that of two specials spelled alike the first sorted wins */
    for (int i = tok->n_specials - 1; i >= 0; i--)
        str_put(tok->special_index, tok->special_index_cap, tok->specials[i].text, tok->specials[i].len, i);
    int n_lens = 0;
    for (int b = 0, i = 0; b < 256; b++) {
        tok->special_len_from[b] = n_lens;
        for (; i < tok->n_specials && (unsigned char)tok->specials[i].text[0] == b; i++)
            if (n_lens == tok->special_len_from[b] || tok->special_lens[n_lens - 1] != tok->specials[i].len)
                tok->special_lens[n_lens++] = tok->specials[i].len;
    }
    tok->special_len_from[256] = n_lens;
    return PB_OK;
}

/* Decoded bytes per token, the text-to-id map, and sorted specials. */
static pb_status finish(pb_tokenizer *tok) {
    size_t total = 0;
    for (int i = 0; i < tok->n_vocab; i++)
        total += tok->text_len[i];
    tok->decoded = malloc(total + 1);
    tok->decoded_offset = malloc(sizeof(size_t) * ((size_t)tok->n_vocab + 1));
    tok->by_text_cap = table_cap((size_t)tok->n_vocab);
    tok->by_text = calloc(tok->by_text_cap, sizeof *tok->by_text);
    if (!tok->decoded || !tok->decoded_offset || !tok->by_text)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory for %d tokens", tok->n_vocab);
    size_t used = 0;
    for (int i = 0; i < tok->n_vocab; i++) {
        tok->decoded_offset[i] = used;
        if (!tok->text[i])
            continue;
        str_put(tok->by_text, tok->by_text_cap, tok->text[i], tok->text_len[i], i);
        if (tok->kind == KIND_BYTE_LEVEL) {
            used += pb_vocab_byte_level_decode(tok->text[i], tok->text_len[i], tok->decoded + used);
        } else if (tok->type[i] == TYPE_CONTROL || tok->type[i] == TYPE_USER) {
            memcpy(tok->decoded + used, tok->text[i], tok->text_len[i]); /* added tokens decode as spelled */
            used += tok->text_len[i];
        } else {
            /* SentencePiece: U+2581 is a space; <0xNN> is handled when decoding. */
            const char *s = tok->text[i];
            for (size_t j = 0; j < tok->text_len[i];) {
                if (j + 3 <= tok->text_len[i] && memcmp(s + j, "\xE2\x96\x81", 3) == 0) {
                    tok->decoded[used++] = ' ';
                    j += 3;
                } else {
                    tok->decoded[used++] = s[j++];
                }
            }
        }
    }
    tok->decoded_offset[tok->n_vocab] = used;
    /* Added tokens keep their own ids in by_text even where the model
     * vocabulary spells the same text. */
    for (int i = 0; i < tok->n_specials; i++)
        if (tok->specials[i].id >= 0 && tok->specials[i].id < tok->n_vocab && tok->text[tok->specials[i].id])
            str_put(tok->by_text, tok->by_text_cap, tok->text[tok->specials[i].id], tok->text_len[tok->specials[i].id],
                    tok->specials[i].id);
    if (tok->n_specials > 1)
        qsort(tok->specials, (size_t)tok->n_specials, sizeof *tok->specials, special_cmp);
    return special_tables(tok);
}

/* Byte-level: the single-byte tokens, and merges (a, b, rank). */
static pb_status byte_level_tables(pb_tokenizer *tok, size_t n_merges) {
    for (int b = 0; b < 256; b++) {
        char spelled[4];
        size_t n = utf8_put(byte_level_code(b), spelled);
        tok->byte_id[b] = str_get(tok->by_text, tok->by_text_cap, spelled, n);
    }
    tok->merges_cap = table_cap(n_merges);
    tok->merges = calloc(tok->merges_cap, sizeof *tok->merges);
    return tok->merges ? PB_OK : pb_fail(PB_ERR_OOM, "tokenizer: out of memory for %zu merges", n_merges);
}

/* One merge "a b" (or its two halves). Refuses merges whose parts or
 * result are not in the vocabulary, as tokenizers' BPE does. */
static pb_status add_merge(pb_tokenizer *tok, const char *a, size_t a_len, const char *b, size_t b_len, int32_t rank) {
    int32_t ia = str_get(tok->by_text, tok->by_text_cap, a, a_len);
    int32_t ib = str_get(tok->by_text, tok->by_text_cap, b, b_len);
    char stack[256];
    char *joined = a_len + b_len <= sizeof stack ? stack : malloc(a_len + b_len);
    if (!joined)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    memcpy(joined, a, a_len);
    memcpy(joined + a_len, b, b_len);
    int32_t im = str_get(tok->by_text, tok->by_text_cap, joined, a_len + b_len);
    if (joined != stack)
        free(joined);
    if (ia < 0 || ib < 0 || im < 0)
        return pb_fail(PB_ERR_FORMAT, "tokenizer: merge %d ('%.*s' '%.*s') uses a token outside the vocabulary", rank,
                       (int)a_len, a, (int)b_len, b);
    pair_put(tok->merges, tok->merges_cap, ia, ib, rank, im);
    return PB_OK;
}

/* ------------------------------------------------------------ GGUF */

static int str_is(const char *s, size_t len, const char *what) {
    return len == strlen(what) && memcmp(s, what, len) == 0;
}

static pb_status gguf_types(pb_tokenizer *tok, const pb_gguf *gguf, uint64_t count) {
    if (!pb_gguf_has_key(gguf, "tokenizer.ggml.token_type")) {
        for (int i = 0; i < tok->n_vocab; i++)
            tok->type[i] = TYPE_NORMAL;
        return PB_OK;
    }
    pb_gguf_value_type elem;
    uint64_t n;
    const void *data;
    PB_TRY(pb_gguf_get_array_info(gguf, "tokenizer.ggml.token_type", &elem, &n));
    if (n != count || (elem != PB_GGUF_INT32 && elem != PB_GGUF_UINT32))
        return pb_fail(PB_ERR_FORMAT, "gguf: 'tokenizer.ggml.token_type' has %llu entries of type %s for %llu tokens",
                       (unsigned long long)n, pb_gguf_value_type_name(elem), (unsigned long long)count);
    PB_TRY(pb_gguf_get_array_data(gguf, "tokenizer.ggml.token_type", &data));
    for (uint64_t i = 0; i < n; i++) {
        memcpy(&tok->type[i], (const char *)data + 4 * i, 4);
        /* 0 is llama.cpp's "undefined"; 1..6 normal .. byte */
        if (tok->type[i] < 0 || tok->type[i] > TYPE_BYTE)
            return pb_fail(PB_ERR_FORMAT,
                           "gguf: 'tokenizer.ggml.token_type' of token %llu is %lld, not a token type (0 to 6)",
                           (unsigned long long)i,
                           elem == PB_GGUF_UINT32 ? (long long)(uint32_t)tok->type[i] : (long long)tok->type[i]);
    }
    return PB_OK;
}

static pb_status gguf_byte_level(pb_tokenizer *tok, const pb_gguf *gguf, uint64_t count) {
    /* A token spelled outside the byte alphabet is respelled byte by byte,
     * as transformers does when loading a GGUF. */
    for (uint64_t i = 0; i < count; i++) {
        const char *s;
        size_t len;
        PB_TRY(pb_gguf_get_array_string(gguf, "tokenizer.ggml.tokens", i, &s, &len));
        int spelled = in_byte_level_alphabet(s, len);
        if (spelled) {
            PB_TRY(set_text(tok, (int)i, s, len));
        } else {
            size_t n;
            char *respelled = byte_level_spell(s, len, &n);
            if (!respelled)
                return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
            pb_status st = set_text(tok, (int)i, respelled, n);
            free(respelled);
            PB_TRY(st);
        }
        /* Control tokens outside the byte alphabet are llama.cpp mislabels
         * that transformers does not add; user-defined ones it adds. */
        if ((tok->type[i] == TYPE_CONTROL && spelled) || tok->type[i] == TYPE_USER)
            PB_TRY(add_special(tok, s, len, (int32_t)i, tok->type[i] == TYPE_CONTROL, 0, 0));
    }
    PB_TRY(finish(tok));

    const char *pre = "default";
    size_t pre_len = 7;
    if (pb_gguf_has_key(gguf, "tokenizer.ggml.pre"))
        PB_TRY(pb_gguf_get_string(gguf, "tokenizer.ggml.pre", &pre, &pre_len));
    if (str_is(pre, pre_len, "default") || str_is(pre, pre_len, "gpt2") || str_is(pre, pre_len, "smollm") ||
        str_is(pre, pre_len, "gpt-2"))
        PB_TRY(add_split(tok, GPT2_SPLIT, strlen(GPT2_SPLIT)));
    else if (str_is(pre, pre_len, "llama-bpe") || str_is(pre, pre_len, "llama3") || str_is(pre, pre_len, "llama-v3") ||
             str_is(pre, pre_len, "smaug-bpe") || str_is(pre, pre_len, "falcon3") || str_is(pre, pre_len, "dbrx"))
        PB_TRY(add_split(tok, LLAMA3_SPLIT, strlen(LLAMA3_SPLIT)));
    else if (str_is(pre, pre_len, "qwen2") || str_is(pre, pre_len, "deepseek-r1-qwen"))
        PB_TRY(add_split(tok, QWEN2_SPLIT, strlen(QWEN2_SPLIT)));
    else
        return pb_fail(PB_ERR_UNSUPPORTED, "tokenizer: pre-tokenizer '%.*s' (tokenizer.ggml.pre) is not supported",
                       (int)pre_len, pre);

    uint64_t n_merges = 0;
    pb_gguf_value_type elem = PB_GGUF_STRING;
    if (pb_gguf_has_key(gguf, "tokenizer.ggml.merges"))
        PB_TRY(pb_gguf_get_array_info(gguf, "tokenizer.ggml.merges", &elem, &n_merges));
    if (elem != PB_GGUF_STRING)
        return pb_fail(PB_ERR_FORMAT, "gguf: 'tokenizer.ggml.merges' is not an array of strings");
    PB_TRY(byte_level_tables(tok, n_merges));
    for (uint64_t i = 0; i < n_merges; i++) {
        const char *s;
        size_t len;
        PB_TRY(pb_gguf_get_array_string(gguf, "tokenizer.ggml.merges", i, &s, &len));
        const char *space = memchr(s, ' ', len);
        if (!space)
            return pb_fail(PB_ERR_FORMAT, "gguf: merge %llu '%.*s' has no space", (unsigned long long)i, (int)len, s);
        PB_TRY(add_merge(tok, s, (size_t)(space - s), space + 1, len - (size_t)(space - s) - 1, (int32_t)i));
    }
    return PB_OK;
}

/* The byte of a "<0xNN>" token (exactly two hex digits), or -1. */
static int byte_token_value(const pb_tokenizer *tok, int32_t id) {
    const char *s = tok->text[id];
    if (!s || tok->text_len[id] != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>' || !isxdigit((unsigned char)s[3]) ||
        !isxdigit((unsigned char)s[4]))
        return -1;
    char hex[3] = {s[3], s[4], 0};
    return (int)strtol(hex, NULL, 16);
}

/* SentencePiece: the pieces merges may produce (normal and user-defined),
 * the <0xNN> byte pieces and the unknown piece. */
static pb_status sentencepiece_tables(pb_tokenizer *tok) {
    tok->pieces_cap = table_cap((size_t)tok->n_vocab);
    tok->pieces = calloc(tok->pieces_cap, sizeof *tok->pieces);
    if (!tok->pieces)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    for (int i = 0; i < tok->n_vocab; i++) {
        int t = tok->type[i];
        const char *s = tok->text[i];
        if (!s)
            continue;
        if (t == TYPE_NORMAL || t == TYPE_USER)
            str_put(tok->pieces, tok->pieces_cap, s, tok->text_len[i], i);
        if (t == TYPE_BYTE) {
            int v = byte_token_value(tok, i);
            if (v < 0)
                return pb_fail(PB_ERR_FORMAT,
                               "gguf: token %d is a byte token (type 6) spelled '%.*s', not <0xNN> with two hex "
                               "digits",
                               i, (int)(tok->text_len[i] < 32 ? tok->text_len[i] : 32), s);
            tok->byte_id[v] = i;
        }
        if (t == TYPE_UNKNOWN && tok->unk_id < 0)
            tok->unk_id = i;
    }
    return PB_OK;
}

/* 1 when general.architecture is `name`. */
static int gguf_arch_is(const pb_gguf *gguf, const char *name) {
    const char *arch;
    size_t len;
    if (!pb_gguf_has_key(gguf, "general.architecture") ||
        pb_gguf_get_string(gguf, "general.architecture", &arch, &len) != PB_OK)
        return 0;
    return str_is(arch, len, name);
}

/* Gemma 1/2/3, whose SentencePiece vocabulary needs the two fixes of
 * gguf_sentencepiece. */
static int gguf_is_gemma(const pb_gguf *gguf) {
    return gguf_arch_is(gguf, "gemma") || gguf_arch_is(gguf, "gemma2") || gguf_arch_is(gguf, "gemma3");
}

/* 1 when s holds a space and nothing but white space (Python's
 * str.isspace, which transformers tests). */
static int is_space_run(const char *s, size_t len) {
    int space = 0;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_valid_len((const unsigned char *)s + i, len - i);
        if (!n)
            return 0;
        unsigned c = utf8_decode_at((const unsigned char *)s + i, n);
        if (!is_white_space(c) && !(c >= 0x1C && c <= 0x1F))
            return 0;
        space |= c == ' ';
        i += n;
    }
    return space;
}

/* The token spelled as one U+2581 per character of s. */
static pb_status set_space_run(pb_tokenizer *tok, int id, const char *s, size_t len) {
    size_t chars = 0;
    for (size_t i = 0; i < len; i += utf8_valid_len((const unsigned char *)s + i, len - i))
        chars++;
    char *run = malloc(3 * chars + 1);
    if (!run)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    for (size_t i = 0; i < chars; i++)
        memcpy(run + 3 * i, "\xE2\x96\x81", 3);
    pb_status st = set_text(tok, id, run, 3 * chars);
    free(run);
    return st;
}

static pb_status gguf_sentencepiece(pb_tokenizer *tok, const pb_gguf *gguf, uint64_t count) {
    tok->score = calloc((size_t)count + 1, sizeof *tok->score);
    if (!tok->score)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    if (pb_gguf_has_key(gguf, "tokenizer.ggml.scores")) {
        pb_gguf_value_type elem;
        uint64_t n;
        const void *data;
        PB_TRY(pb_gguf_get_array_info(gguf, "tokenizer.ggml.scores", &elem, &n));
        if (n != count || elem != PB_GGUF_FLOAT32)
            return pb_fail(PB_ERR_FORMAT, "gguf: 'tokenizer.ggml.scores' has %llu entries of type %s for %llu tokens",
                           (unsigned long long)n, pb_gguf_value_type_name(elem), (unsigned long long)count);
        PB_TRY(pb_gguf_get_array_data(gguf, "tokenizer.ggml.scores", &data));
        memcpy(tok->score, data, 4 * (size_t)n);
    }
    int gemma = gguf_is_gemma(gguf);
    for (uint64_t i = 0; i < count; i++) {
        const char *s;
        size_t len;
        PB_TRY(pb_gguf_get_array_string(gguf, "tokenizer.ggml.tokens", i, &s, &len));
        if (gemma) {
            /* Gemma's merge order is the file order (its scores put every
             * user-defined token at -1000), and its runs of spaces are
             * spelled with real spaces: respelled as U+2581 runs they are
             * ordinary pieces, merged by BPE rather than matched whole, as
             * transformers' GGUF loader builds them. */
            tok->score[i] = -(float)i;
            if (is_space_run(s, len)) {
                PB_TRY(set_space_run(tok, (int)i, s, len));
                continue;
            }
        }
        PB_TRY(set_text(tok, (int)i, s, len));
        if (tok->type[i] == TYPE_CONTROL || tok->type[i] == TYPE_USER) {
            /* Matched in raw text, where U+2581 is a space. */
            char *raw = malloc(len + 1);
            if (!raw)
                return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
            size_t n = 0;
            for (size_t j = 0; j < len;) {
                if (j + 3 <= len && memcmp(s + j, "\xE2\x96\x81", 3) == 0) {
                    raw[n++] = ' ';
                    j += 3;
                } else {
                    raw[n++] = s[j++];
                }
            }
            pb_status st = add_special(tok, raw, n, (int32_t)i, tok->type[i] == TYPE_CONTROL, 0, 0);
            free(raw);
            PB_TRY(st);
        }
    }
    tok->add_prefix_space = 1;
    if (pb_gguf_has_key(gguf, "tokenizer.ggml.add_space_prefix"))
        PB_TRY(pb_gguf_get_bool(gguf, "tokenizer.ggml.add_space_prefix", &tok->add_prefix_space));
    PB_TRY(finish(tok));
    PB_TRY(sentencepiece_tables(tok));
    int64_t unk;
    if (pb_gguf_has_key(gguf, "tokenizer.ggml.unknown_token_id") &&
        pb_gguf_get_int(gguf, "tokenizer.ggml.unknown_token_id", &unk) == PB_OK && unk >= 0 && unk < tok->n_vocab)
        tok->unk_id = (int32_t)unk;
    return PB_OK;
}

pb_status pb_tokenizer_from_gguf(pb_tokenizer **out, const pb_gguf *gguf) {
    if (!out || !gguf)
        return pb_fail(PB_ERR_ARG, "pb_tokenizer_from_gguf: NULL argument");
    *out = NULL;
    const char *model;
    size_t model_len;
    if (!pb_gguf_has_key(gguf, "tokenizer.ggml.model"))
        return pb_fail(PB_ERR_FORMAT, "gguf: no tokenizer (key 'tokenizer.ggml.model' is missing)");
    PB_TRY(pb_gguf_get_string(gguf, "tokenizer.ggml.model", &model, &model_len));
    int kind = str_is(model, model_len, "gpt2")    ? KIND_BYTE_LEVEL
               : str_is(model, model_len, "llama") ? KIND_SENTENCEPIECE
                                                   : 0;
    if (!kind)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "tokenizer: model '%.*s' (tokenizer.ggml.model) is not supported; "
                       "this build reads 'gpt2' (byte-level BPE) and 'llama' (SentencePiece BPE)",
                       (int)model_len, model);
    pb_gguf_value_type elem;
    uint64_t count;
    PB_TRY(pb_gguf_get_array_info(gguf, "tokenizer.ggml.tokens", &elem, &count));
    if (elem != PB_GGUF_STRING || count == 0 || count > (uint64_t)INT32_MAX - 1)
        return pb_fail(PB_ERR_FORMAT, "gguf: 'tokenizer.ggml.tokens' must be a non-empty array of strings");
    pb_tokenizer *tok = tokenizer_alloc((int)count, kind);
    if (!tok)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory for %llu tokens", (unsigned long long)count);
    pb_status st = gguf_types(tok, gguf, count);
    if (st == PB_OK)
        st = kind == KIND_BYTE_LEVEL ? gguf_byte_level(tok, gguf, count) : gguf_sentencepiece(tok, gguf, count);
    /* A GGUF keeps no Hugging Face normalizer; GPT-NeoX's tokenizer.json
     * (gpt-neox-20b, Pythia) has NFC, which llama.cpp's converter drops. */
    tok->nfc = gguf_arch_is(gguf, "gptneox");
    /* Phi-3's tokenizer.json puts the SentencePiece prefix in a Prepend
     * normalizer, not a Metaspace pre-tokenizer: transformers prefixes each
     * stretch of text between added tokens, Llama's only the first. */
    tok->prefix_each_segment = gguf_arch_is(gguf, "phi3");
    if (st != PB_OK) {
        pb_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return PB_OK;
}

/* ------------------------------------------------------------ tokenizer.json */

static pb_status json_pre_tokenizer(pb_tokenizer *tok, json_t *pre, const char *path, int *have_byte_level) {
    if (!pre || json_is_null(pre))
        return PB_OK;
    const char *type = json_string_value(json_object_get(pre, "type"));
    if (!type)
        return pb_fail(PB_ERR_FORMAT, "%s: pre_tokenizer has no type", path);
    if (strcmp(type, "Sequence") == 0) {
        json_t *list = json_object_get(pre, "pretokenizers");
        size_t i;
        json_t *item;
        if (!json_is_array(list))
            return pb_fail(PB_ERR_FORMAT, "%s: pre_tokenizer Sequence has no 'pretokenizers' list", path);
        json_array_foreach(list, i, item) PB_TRY(json_pre_tokenizer(tok, item, path, have_byte_level));
        return PB_OK;
    }
    if (*have_byte_level)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: pre-tokenizer '%s' after ByteLevel is not supported", path, type);
    if (strcmp(type, "ByteLevel") == 0) {
        *have_byte_level = 1;
        tok->add_prefix_space = json_is_true(json_object_get(pre, "add_prefix_space"));
        json_t *use_regex = json_object_get(pre, "use_regex");
        if (!use_regex || json_is_true(use_regex))
            PB_TRY(add_split(tok, GPT2_SPLIT, strlen(GPT2_SPLIT)));
        return PB_OK;
    }
    if (strcmp(type, "Digits") == 0) {
        const char *re = json_is_true(json_object_get(pre, "individual_digits")) ? "\\p{N}" : "\\p{N}+";
        return add_split(tok, re, strlen(re));
    }
    if (strcmp(type, "Split") == 0) {
        json_t *pattern = json_object_get(pre, "pattern");
        const char *behavior = json_string_value(json_object_get(pre, "behavior"));
        const char *regex = json_string_value(json_object_get(pattern, "Regex"));
        if (!regex || !behavior || strcmp(behavior, "Isolated") != 0 || json_is_true(json_object_get(pre, "invert")))
            return pb_fail(PB_ERR_UNSUPPORTED,
                           "%s: pre-tokenizer Split is supported only with a Regex pattern, behavior Isolated and "
                           "invert false (behavior '%s')",
                           path, behavior ? behavior : "?");
        return add_split(tok, regex, json_string_length(json_object_get(pattern, "Regex")));
    }
    return pb_fail(PB_ERR_UNSUPPORTED, "%s: pre-tokenizer '%s' is not supported", path, type);
}

/* Checks the tokenizer.json's model section (byte-level BPE; no normalizer
 * or NFC, *nfc says which) and finds the largest token id among the vocab
 * and the added tokens. */
static pb_status json_check_model(json_t *root, const char *path, json_int_t *max_id, int *nfc) {
    json_t *model = json_object_get(root, "model");
    const char *type = json_string_value(json_object_get(model, "type"));
    if (!type)
        return pb_fail(PB_ERR_FORMAT, "%s: 'model.type' is missing", path);
    if (strcmp(type, "BPE") != 0)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: tokenizer model '%s' is not supported (only BPE)", path, type);
    json_t *normalizer = json_object_get(root, "normalizer");
    *nfc = 0;
    if (normalizer && !json_is_null(normalizer)) {
        const char *name = json_string_value(json_object_get(normalizer, "type"));
        if (!name || strcmp(name, "NFC") != 0)
            return pb_fail(PB_ERR_UNSUPPORTED, "%s: normalizer '%s' is not supported (only NFC)", path,
                           name ? name : "?");
        *nfc = 1;
    }
    if (json_is_true(json_object_get(model, "byte_fallback")) || json_is_true(json_object_get(model, "ignore_merges")))
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: BPE with byte_fallback or ignore_merges is not supported", path);
    json_t *vocab = json_object_get(model, "vocab"), *merges = json_object_get(model, "merges");
    json_t *added = json_object_get(root, "added_tokens");
    if (!json_is_object(vocab) || !json_is_array(merges))
        return pb_fail(PB_ERR_FORMAT, "%s: 'model.vocab' or 'model.merges' is missing", path);
    *max_id = -1;
    const char *key;
    json_t *value, *item;
    size_t i;
    json_object_foreach(vocab, key, value) {
        json_int_t id = json_integer_value(value);
        if (!json_is_integer(value) || id < 0 || id >= INT32_MAX - 1)
            return pb_fail(PB_ERR_FORMAT, "%s: vocab entry '%s' has no valid id", path, key);
        if (id > *max_id)
            *max_id = id;
    }
    json_array_foreach(added, i, item) {
        json_int_t id = json_integer_value(json_object_get(item, "id"));
        if (!json_is_string(json_object_get(item, "content")) || id < 0 || id >= INT32_MAX - 1)
            return pb_fail(PB_ERR_FORMAT, "%s: added_tokens[%zu] has no content or valid id", path, i);
        if (id > *max_id)
            *max_id = id;
    }
    if (*max_id < 0)
        return pb_fail(PB_ERR_FORMAT, "%s: empty vocabulary", path);
    return PB_OK;
}

/* The vocab's and the added tokens' texts, types and specials. */
static pb_status json_tokens(pb_tokenizer *tok, json_t *root, const char *path) {
    json_t *vocab = json_object_get(json_object_get(root, "model"), "vocab");
    const char *key;
    json_t *value, *item;
    size_t i;
    json_object_foreach(vocab, key, value) {
        int id = (int)json_integer_value(value);
        tok->type[id] = TYPE_NORMAL;
        PB_TRY(set_text(tok, id, key, strlen(key)));
    }
    json_array_foreach(json_object_get(root, "added_tokens"), i, item) {
        int id = (int)json_integer_value(json_object_get(item, "id"));
        json_t *content = json_object_get(item, "content");
        int special = json_is_true(json_object_get(item, "special"));
        if (json_is_true(json_object_get(item, "single_word")))
            return pb_fail(PB_ERR_UNSUPPORTED, "%s: added token '%s' with single_word is not supported", path,
                           json_string_value(content));
        tok->type[id] = special ? TYPE_CONTROL : TYPE_USER;
        if (!tok->text[id])
            PB_TRY(set_text(tok, id, json_string_value(content), json_string_length(content)));
        PB_TRY(add_special(tok, json_string_value(content), json_string_length(content), id, special,
                           json_is_true(json_object_get(item, "lstrip")),
                           json_is_true(json_object_get(item, "rstrip"))));
    }
    return PB_OK;
}

/* The merges, each "a b" or [a, b], ranked by their order. */
static pb_status json_merges(pb_tokenizer *tok, json_t *merges, const char *path) {
    size_t i;
    json_t *item;
    json_array_foreach(merges, i, item) {
        if (json_is_string(item)) {
            const char *s = json_string_value(item);
            const char *space = strchr(s, ' ');
            if (!space)
                return pb_fail(PB_ERR_FORMAT, "%s: merge %zu '%s' has no space", path, i, s);
            PB_TRY(add_merge(tok, s, (size_t)(space - s), space + 1, strlen(space + 1), (int32_t)i));
        } else if (json_is_array(item) && json_array_size(item) == 2 && json_is_string(json_array_get(item, 0)) &&
                   json_is_string(json_array_get(item, 1))) {
            json_t *a = json_array_get(item, 0), *b = json_array_get(item, 1);
            PB_TRY(add_merge(tok, json_string_value(a), json_string_length(a), json_string_value(b),
                             json_string_length(b), (int32_t)i));
        } else {
            return pb_fail(PB_ERR_FORMAT, "%s: merge %zu is neither \"a b\" nor [a, b]", path, i);
        }
    }
    return PB_OK;
}

/* Everything after the vocabulary size is known, on a fresh tokenizer. */
static pb_status json_fill(pb_tokenizer *tok, json_t *root, const char *path) {
    PB_TRY(json_tokens(tok, root, path));
    int have_byte_level = 0;
    PB_TRY(json_pre_tokenizer(tok, json_object_get(root, "pre_tokenizer"), path, &have_byte_level));
    if (!have_byte_level)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s: only byte-level BPE (a ByteLevel pre-tokenizer) is supported", path);
    json_t *merges = json_object_get(json_object_get(root, "model"), "merges");
    PB_TRY(finish(tok));
    PB_TRY(byte_level_tables(tok, json_array_size(merges)));
    return json_merges(tok, merges, path);
}

static pb_status json_build(pb_tokenizer **out, json_t *root, const char *path) {
    json_int_t max_id = -1;
    int nfc = 0;
    PB_TRY(json_check_model(root, path, &max_id, &nfc));
    pb_tokenizer *tok = tokenizer_alloc((int)max_id + 1, KIND_BYTE_LEVEL);
    if (!tok)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    tok->nfc = nfc;
    pb_status st = json_fill(tok, root, path);
    if (st != PB_OK) {
        pb_tokenizer_free(tok);
        return st;
    }
    *out = tok;
    return PB_OK;
}

pb_status pb_tokenizer_from_json(pb_tokenizer **out, const char *tokenizer_json_path) {
    if (!out || !tokenizer_json_path)
        return pb_fail(PB_ERR_ARG, "pb_tokenizer_from_json: NULL argument");
    *out = NULL;
    json_error_t error;
    json_t *root = json_load_file(tokenizer_json_path, JSON_ALLOW_NUL, &error);
    if (!root)
        return pb_fail(error.line < 0 ? PB_ERR_IO : PB_ERR_FORMAT, "%s: line %d: %s", tokenizer_json_path, error.line,
                       error.text);
    pb_status st = json_build(out, root, tokenizer_json_path);
    json_decref(root);
    return st;
}

/* ------------------------------------------------------------ byte-level BPE */

typedef struct symbol {
    int32_t id;
    int prev, next;    /* -1 at the ends */
    size_t start, len; /* bytes of the piece (SentencePiece) */
} symbol;

typedef struct candidate {
    float score;  /* SentencePiece: higher first */
    int32_t rank; /* byte-level: lower first */
    int left;     /* leftmost first on ties */
    int right;
    int32_t merged;
    size_t size; /* SentencePiece: bytes of the merged piece, to detect stale entries */
} candidate;

typedef struct heap {
    candidate *items;
    size_t n, cap;
    int by_score;
} heap;

static int heap_before(const heap *h, const candidate *a, const candidate *b) {
    if (h->by_score) {
        if (a->score != b->score)
            return a->score > b->score;
    } else if (a->rank != b->rank) {
        return a->rank < b->rank;
    }
    return a->left < b->left;
}

static int heap_push(heap *h, candidate c) {
    if (pb_array_reserve(&h->items, &h->cap, h->n + 1, sizeof *h->items, "merge candidates") != PB_OK)
        return 0;
    size_t i = h->n++;
    h->items[i] = c;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!heap_before(h, &h->items[i], &h->items[parent]))
            break;
        candidate t = h->items[i];
        h->items[i] = h->items[parent];
        h->items[parent] = t;
        i = parent;
    }
    return 1;
}

static candidate heap_pop(heap *h) {
    candidate top = h->items[0];
    h->items[0] = h->items[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, best = i;
        if (l < h->n && heap_before(h, &h->items[l], &h->items[best]))
            best = l;
        if (r < h->n && heap_before(h, &h->items[r], &h->items[best]))
            best = r;
        if (best == i)
            break;
        candidate t = h->items[i];
        h->items[i] = h->items[best];
        h->items[best] = t;
        i = best;
    }
    return top;
}

typedef struct work {
    symbol *symbols;
    size_t cap;
    heap heap;
} work;

static int work_reserve(work *w, size_t n) {
    return pb_array_reserve(&w->symbols, &w->cap, n, sizeof *w->symbols, "symbols") == PB_OK;
}

static int byte_level_push_pair(const pb_tokenizer *tok, work *w, int left) {
    if (left < 0)
        return 1;
    int right = w->symbols[left].next;
    if (right < 0)
        return 1;
    const pair_slot *m = pair_get(tok, w->symbols[left].id, w->symbols[right].id);
    if (!m)
        return 1;
    candidate c = {.rank = m->rank, .left = left, .right = right, .merged = m->merged};
    return heap_push(&w->heap, c);
}

/* BPE on one pre-token's bytes, as tokenizers' Word::merge_all: merges by
 * lowest rank, leftmost first; stale entries are skipped when popped. */
static pb_status byte_level_bpe(const pb_tokenizer *tok, work *w, const unsigned char *s, size_t len, id_buf *out) {
    if (!work_reserve(w, len))
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    int n = 0;
    for (size_t i = 0; i < len; i++) {
        int32_t id = tok->byte_id[s[i]];
        if (id < 0)
            continue; /* no token for this byte and no unk: dropped, as tokenizers does */
        w->symbols[n] = (symbol){.id = id, .prev = n - 1, .next = -1};
        if (n > 0)
            w->symbols[n - 1].next = n;
        n++;
    }
    w->heap.n = 0;
    w->heap.by_score = 0;
    for (int i = 0; i + 1 < n; i++)
        if (!byte_level_push_pair(tok, w, i))
            return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    while (w->heap.n) {
        candidate c = heap_pop(&w->heap);
        symbol *l = &w->symbols[c.left];
        if (l->id < 0 || l->next != c.right)
            continue;
        const pair_slot *m = pair_get(tok, l->id, w->symbols[c.right].id);
        if (!m || m->rank != c.rank)
            continue;
        l->id = c.merged;
        symbol *r = &w->symbols[c.right];
        l->next = r->next;
        if (r->next >= 0)
            w->symbols[r->next].prev = c.left;
        r->id = -1;
        if (!byte_level_push_pair(tok, w, l->prev) || !byte_level_push_pair(tok, w, c.left))
            return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    }
    for (int i = n > 0 ? 0 : -1; i >= 0; i = w->symbols[i].next)
        if (!id_push(out, w->symbols[i].id))
            return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    return PB_OK;
}

/* Applies split level `level` and below to text[0, len), isolating every
 * match and every gap between matches, then BPE on each final piece. */
static pb_status split_and_encode(const pb_tokenizer *tok, work *w, pcre2_match_data *md, int level, const char *text,
                                  size_t len, id_buf *out) {
    if (len == 0)
        return PB_OK;
    if (level >= tok->n_split || level >= MAX_SPLITS)
        return byte_level_bpe(tok, w, (const unsigned char *)text, len, out);
    size_t pos = 0, emitted = 0;
    while (pos <= len) {
        int rc = pcre2_match(tok->split[level], (PCRE2_SPTR)text, len, pos, PCRE2_NO_UTF_CHECK, md, NULL);
        if (rc == PCRE2_ERROR_NOMATCH)
            break;
        if (rc < 0)
            return pb_fail(PB_ERR_ARG, "tokenizer: regex match failed (PCRE2 error %d)", rc);
        PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
        size_t start = ov[0], end = ov[1];
        if (end == start) { /* empty match: step one character */
            pos = start + 1;
            while (pos < len && ((unsigned char)text[pos] & 0xC0) == 0x80)
                pos++;
            continue;
        }
        if (start > emitted)
            PB_TRY(split_and_encode(tok, w, md, level + 1, text + emitted, start - emitted, out));
        PB_TRY(split_and_encode(tok, w, md, level + 1, text + start, end - start, out));
        emitted = pos = end;
    }
    if (emitted < len)
        PB_TRY(split_and_encode(tok, w, md, level + 1, text + emitted, len - emitted, out));
    return PB_OK;
}

static pb_status byte_level_segment(const pb_tokenizer *tok, work *w, pcre2_match_data *md, const char *text,
                                    size_t len, id_buf *out) {
    if (!tok->add_prefix_space || len == 0 || text[0] == ' ')
        return split_and_encode(tok, w, md, 0, text, len, out);
    char *prefixed = malloc(len + 1);
    if (!prefixed)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    prefixed[0] = ' ';
    memcpy(prefixed + 1, text, len);
    pb_status st = split_and_encode(tok, w, md, 0, prefixed, len + 1, out);
    free(prefixed);
    return st;
}

/* ------------------------------------------------------------ SentencePiece BPE */

static int sp_push_pair(const pb_tokenizer *tok, work *w, const char *text, int left) {
    if (left < 0)
        return 1;
    int right = w->symbols[left].next;
    if (right < 0)
        return 1;
    size_t start = w->symbols[left].start, size = w->symbols[left].len + w->symbols[right].len;
    int32_t id = str_get(tok->pieces, tok->pieces_cap, text + start, size);
    if (id < 0)
        return 1;
    candidate c = {.score = tok->score[id], .left = left, .right = right, .merged = id, .size = size};
    return heap_push(&w->heap, c);
}

/* sentencepiece's BPE encode on one segment (spaces already U+2581). */
static pb_status sentencepiece_bpe(const pb_tokenizer *tok, work *w, const char *text, size_t len, id_buf *out) {
    if (!work_reserve(w, len))
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    int n = 0;
    for (size_t i = 0; i < len;) {
        size_t c = utf8_valid_len((const unsigned char *)text + i, len - i);
        if (!c)
            c = 1;
        w->symbols[n] = (symbol){.id = -1, .prev = n - 1, .next = -1, .start = i, .len = c};
        if (n > 0)
            w->symbols[n - 1].next = n;
        n++;
        i += c;
    }
    w->heap.n = 0;
    w->heap.by_score = 1;
    for (int i = 0; i + 1 < n; i++)
        if (!sp_push_pair(tok, w, text, i))
            return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    while (w->heap.n) {
        candidate c = heap_pop(&w->heap);
        symbol *l = &w->symbols[c.left];
        if (l->len == 0 || l->next != c.right || l->len + w->symbols[c.right].len != c.size)
            continue;
        symbol *r = &w->symbols[c.right];
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0)
            w->symbols[r->next].prev = c.left;
        r->len = 0;
        if (!sp_push_pair(tok, w, text, l->prev) || !sp_push_pair(tok, w, text, c.left))
            return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    }
    for (int i = n > 0 ? 0 : -1; i >= 0; i = w->symbols[i].next) {
        const symbol *s = &w->symbols[i];
        int32_t id = str_get(tok->pieces, tok->pieces_cap, text + s->start, s->len);
        int ok = 1;
        if (id >= 0) {
            ok = id_push(out, id);
        } else if (tok->byte_id[(unsigned char)text[s->start]] >= 0) {
            for (size_t j = 0; j < s->len && ok; j++) {
                int32_t b = tok->byte_id[(unsigned char)text[s->start + j]];
                ok = id_push(out, b >= 0 ? b : tok->unk_id);
            }
        } else if (tok->unk_id >= 0) {
            ok = id_push(out, tok->unk_id);
        } else {
            return pb_fail(PB_ERR_ARG, "tokenizer: character at byte %zu has no token, no byte fallback and no <unk>",
                           s->start);
        }
        if (!ok)
            return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    }
    return PB_OK;
}

static pb_status sentencepiece_segment(const pb_tokenizer *tok, work *w, const char *text, size_t len, int prefix,
                                       id_buf *out) {
    size_t spaces = 0;
    for (size_t i = 0; i < len; i++)
        spaces += text[i] == ' ';
    size_t n = len + 2 * spaces + (prefix ? 3 : 0);
    if (n == 0)
        return PB_OK;
    char *escaped = malloc(n);
    if (!escaped)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    size_t used = 0;
    if (prefix) {
        memcpy(escaped, "\xE2\x96\x81", 3);
        used = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ') {
            memcpy(escaped + used, "\xE2\x96\x81", 3);
            used += 3;
        } else {
            escaped[used++] = text[i];
        }
    }
    pb_status st = sentencepiece_bpe(tok, w, escaped, used, out);
    free(escaped);
    return st;
}

/* ------------------------------------------------------------ encode */

/* The special token matching at text[pos], longest first, or NULL. */
static const special_token *match_special(const pb_tokenizer *tok, const char *text, size_t len, size_t pos,
                                          int parse_special) {
    unsigned char first = (unsigned char)text[pos];
    for (int k = tok->special_len_from[first]; k < tok->special_len_from[first + 1]; k++) {
        size_t n = tok->special_lens[k];
        if (n > len - pos)
            continue;
        int32_t i = str_get(tok->special_index, tok->special_index_cap, text + pos, n);
        if (i >= 0 && (parse_special || !tok->specials[i].special))
            return &tok->specials[i];
    }
    return NULL;
}

static size_t skip_white_space(const char *text, size_t len, size_t pos) {
    while (pos < len) {
        size_t n = utf8_valid_len((const unsigned char *)text + pos, len - pos);
        if (!n || !is_white_space(utf8_decode_at((const unsigned char *)text + pos, n)))
            break;
        pos += n;
    }
    return pos;
}

static size_t white_space_before(const char *text, size_t from, size_t pos) {
    while (pos > from) {
        size_t start = pos - 1;
        while (start > from && ((unsigned char)text[start] & 0xC0) == 0x80)
            start--;
        size_t n = utf8_valid_len((const unsigned char *)text + start, pos - start);
        if (!n || !is_white_space(utf8_decode_at((const unsigned char *)text + start, n)))
            break;
        pos = start;
    }
    return pos;
}

static pb_status encode_segment(const pb_tokenizer *tok, work *w, pcre2_match_data *md, const char *text, size_t len,
                                int prefix, id_buf *out) {
    if (tok->kind == KIND_SENTENCEPIECE)
        return sentencepiece_segment(tok, w, text, len, prefix, out);
    return byte_level_segment(tok, w, md, text, len, out);
}

/* Encodes valid UTF-8 (pb_tokenizer_encode without the checks). */
static pb_status encode_text(const pb_tokenizer *tok, const char *text, size_t len, int parse_special, int32_t **ids,
                             int *n_ids) {
    id_buf out = {0};
    work w = {0};
    pcre2_match_data *md = NULL;
    pb_status st = PB_OK;
    if (tok->n_split && !(md = pcre2_match_data_create(4, NULL))) {
        st = pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
        goto done;
    }
    /* SentencePiece's dummy prefix goes before the text (before a leading
     * user-defined token too, as sentencepiece does), but after control
     * tokens the text starts with. */
    int prefix_pending = tok->kind == KIND_SENTENCEPIECE && tok->add_prefix_space && len > 0;
    /* Phi-3: every stretch of text between added tokens gets its own prefix
     * (a Prepend normalizer, which transformers runs on each stretch), and
     * none goes before an added token. */
    int prefix_each = prefix_pending && tok->prefix_each_segment;
    size_t segment = 0, pos = 0;
    while (pos < len && st == PB_OK) {
        const special_token *s = tok->special_first[(unsigned char)text[pos]]
                                     ? match_special(tok, text, len, pos, parse_special)
                                     : NULL;
        if (!s) {
            pos++;
            continue;
        }
        size_t seg_end = s->lstrip ? white_space_before(text, segment, pos) : pos;
        if (prefix_each) {
            if (seg_end > segment)
                st = encode_segment(tok, &w, md, text + segment, seg_end - segment, 1, &out);
        } else if (prefix_pending && (seg_end > segment || !s->special)) {
            st = encode_segment(tok, &w, md, text + segment, seg_end - segment, 1, &out);
            prefix_pending = 0;
        } else if (seg_end > segment) {
            st = encode_segment(tok, &w, md, text + segment, seg_end - segment, 0, &out);
        }
        if (st == PB_OK && !id_push(&out, s->id))
            st = pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
        pos += s->len;
        if (s->rstrip)
            pos = skip_white_space(text, len, pos);
        segment = pos;
    }
    if (st == PB_OK && segment < len)
        st = encode_segment(tok, &w, md, text + segment, len - segment, prefix_pending || prefix_each, &out);
    if (st == PB_OK && out.n > (size_t)INT32_MAX)
        st = pb_fail(PB_ERR_ARG, "tokenizer: text yields more than INT32_MAX tokens");
done:
    pcre2_match_data_free(md);
    free(w.symbols);
    free(w.heap.items);
    if (st != PB_OK) {
        free(out.ids);
        return st;
    }
    *ids = out.ids ? out.ids : malloc(sizeof(int32_t));
    if (!*ids)
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    *n_ids = (int)out.n;
    return PB_OK;
}

pb_status pb_tokenizer_encode(const pb_tokenizer *tok, const char *text, size_t len, int parse_special, int32_t **ids,
                              int *n_ids) {
    if (ids)
        *ids = NULL;
    if (n_ids)
        *n_ids = 0;
    if (!tok || !ids || !n_ids || (!text && len))
        return pb_fail(PB_ERR_ARG, "pb_tokenizer_encode: NULL argument");
    int ascii = 1;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_valid_len((const unsigned char *)text + i, len - i);
        if (!n)
            return pb_fail(PB_ERR_ARG, "tokenizer: invalid UTF-8 at byte offset %zu (0x%02X)", i,
                           (unsigned char)text[i]);
        ascii &= n == 1;
        i += n;
    }
    if (!tok->nfc || ascii)
        return encode_text(tok, text, len, parse_special, ids, n_ids);
    /* NFC of the whole text: the special and added tokens a NeoX
     * vocabulary holds are ASCII, which NFC leaves alone and nothing
     * composes with, so normalising before matching them is the same as
     * transformers' normalising between them. */
    utf8proc_uint8_t *nfc = NULL;
    utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)text, (utf8proc_ssize_t)len, &nfc,
                                      UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (n < 0)
        return pb_fail(n == UTF8PROC_ERROR_NOMEM ? PB_ERR_OOM : PB_ERR_ARG, "tokenizer: NFC normalisation failed: %s",
                       utf8proc_errmsg(n));
    pb_status st = encode_text(tok, (const char *)nfc, (size_t)n, parse_special, ids, n_ids);
    free(nfc);
    return st;
}

/* ------------------------------------------------------------ decode */

/* Appends bytes with every ill-formed UTF-8 subpart replaced by U+FFFD, as
 * Python's and Rust's lossy decoders do. out must hold 3 * len bytes. */
static size_t append_lossy(char *out, const unsigned char *s, size_t len) {
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        size_t v = utf8_valid_len(s + i, len - i);
        if (v) {
            memcpy(out + n, s + i, v);
            n += v;
            i += v;
        } else {
            memcpy(out + n, "\xEF\xBF\xBD", 3);
            n += 3;
            i += utf8_bad_len(s + i, len - i);
        }
    }
    return n;
}

pb_status pb_tokenizer_decode(const pb_tokenizer *tok, const int32_t *ids, int n_ids, char **text) {
    if (text)
        *text = NULL;
    if (!tok || !text || (!ids && n_ids) || n_ids < 0)
        return pb_fail(PB_ERR_ARG, "pb_tokenizer_decode: NULL argument or negative count");
    size_t total = 0;
    for (int i = 0; i < n_ids; i++) {
        if (ids[i] < 0 || ids[i] >= tok->n_vocab)
            return pb_fail(PB_ERR_ARG, "tokenizer: id %d at position %d is outside the vocabulary (%d tokens)",
                           (int)ids[i], i, tok->n_vocab);
        total += tok->decoded_offset[ids[i] + 1] - tok->decoded_offset[ids[i]];
    }
    unsigned char *raw = malloc(total + 1);
    char *out = malloc(3 * total + 1);
    if (!raw || !out) {
        free(raw);
        free(out);
        return pb_fail(PB_ERR_OOM, "tokenizer: out of memory");
    }
    size_t n = 0;
    if (tok->kind == KIND_BYTE_LEVEL) {
        /* tokenizers' ByteLevel decoder: all bytes, then one lossy decode. */
        for (int i = 0; i < n_ids; i++) {
            size_t a = tok->decoded_offset[ids[i]], b = tok->decoded_offset[ids[i] + 1];
            memcpy(raw + n, tok->decoded + a, b - a);
            n += b - a;
        }
        n = append_lossy(out, raw, n);
    } else {
        /* ByteFallback: runs of <0xNN> become their bytes when those are
         * valid UTF-8, else one U+FFFD per byte; then one leading space of
         * the dummy prefix is stripped. */
        size_t used = 0;
        for (int i = 0; i < n_ids;) {
            if (byte_token_value(tok, ids[i]) >= 0) {
                size_t run = 0;
                while (i < n_ids && byte_token_value(tok, ids[i]) >= 0)
                    raw[run++] = (unsigned char)byte_token_value(tok, ids[i++]);
                int valid = 1;
                for (size_t j = 0; j < run && valid;) {
                    size_t v = utf8_valid_len(raw + j, run - j);
                    valid = v > 0;
                    j += v;
                }
                if (valid) {
                    memcpy(out + used, raw, run);
                    used += run;
                } else {
                    for (size_t j = 0; j < run; j++, used += 3)
                        memcpy(out + used, "\xEF\xBF\xBD", 3);
                }
                continue;
            }
            size_t a = tok->decoded_offset[ids[i]], b = tok->decoded_offset[ids[i] + 1];
            used += append_lossy(out + used, (const unsigned char *)tok->decoded + a, b - a);
            i++;
        }
        n = used;
        if (tok->add_prefix_space && n > 0 && out[0] == ' ') {
            memmove(out, out + 1, n - 1);
            n--;
        }
    }
    free(raw);
    out[n] = 0;
    *text = out;
    return PB_OK;
}

int pb_tokenizer_vocab_size(const pb_tokenizer *tok) { return tok ? tok->n_vocab : 0; }

/* The vocabulary's own spelling first ("Ġthe", "▁the"); for byte-level
 * vocabularies the text's bytes respelled (" the") as a fallback. */
int pb_tokenizer_token_id(const pb_tokenizer *tok, const char *text) {
    if (!tok || !text)
        return -1;
    int32_t id = str_get(tok->by_text, tok->by_text_cap, text, strlen(text));
    if (id >= 0 || tok->kind != KIND_BYTE_LEVEL)
        return id;
    size_t n;
    char *spelled = byte_level_spell(text, strlen(text), &n);
    if (!spelled)
        return -1;
    id = str_get(tok->by_text, tok->by_text_cap, spelled, n);
    free(spelled);
    return id;
}
