/* Chat templates without a Jinja interpreter (ChatML, Qwen3, Llama-3,
 * Llama-2 / Mistral, Gemma, Gemma-3, Phi-3, OLMo-2): a template's family is
 * recognised by its special-token signatures (and, for the <|user|>
 * families, by the literals around the user text), the few facts that vary
 * inside a family (default system prompt, BOS, [INST] spacing, where a
 * system prompt goes or whether there is a place for one, the Llama-3.1
 * date preamble) are read from the template text, and one (system +) user
 * turn plus the generation prompt is rendered by hand, byte-identical to
 * transformers' apply_chat_template. tests/test_chat_template.c checks that
 * against real templates. */
#define _POSIX_C_SOURCE 200809L
#include "text/chat_template.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/array.h"
#include "util/internal.h"

#define PB_CHAT_TEMPLATE_MAX_FILE (4u << 20) /* real templates are < 20 KiB */
#define PB_LLAMA3_FALLBACK_DATE "26 Jul 2024"

static const char *const chat_usage =
    "pass --chat-template NAME (chatml, qwen3, llama3, llama2, gemma, gemma3, phi3, olmo2) or --chat-template FILE "
    "(a Jinja template)";

/* ---- growing string buffer ------------------------------------------ */

typedef struct strbuf {
    char *data;
    size_t len, cap;
    int failed;
} strbuf;

static void sb_append_n(strbuf *b, const char *s, size_t n) {
    if (b->failed)
        return;
    if (pb_array_reserve(&b->data, &b->cap, b->len + n + 1, 1, "bytes of a chat template's text") != PB_OK) {
        b->failed = 1;
        return;
    }
    memcpy(b->data + b->len, s, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void sb_append(strbuf *b, const char *s) {
    if (s)
        sb_append_n(b, s, strlen(s));
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* ---- Python str.strip() (Jinja's trim is the same) ------------------- */

/* Code points for which Python's str.isspace() is true. */
static int is_python_space(uint32_t c) {
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* Decodes the UTF-8 sequence starting at s[i] (within n bytes); returns its
 * length, or 0 for an invalid sequence. */
static size_t utf8_decode(const unsigned char *s, size_t n, size_t i, uint32_t *cp) {
    unsigned char c = s[i];
    size_t len;
    uint32_t v;
    if (c < 0x80) {
        *cp = c;
        return 1;
    } else if ((c & 0xE0) == 0xC0) {
        len = 2;
        v = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
        len = 3;
        v = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
        len = 4;
        v = c & 0x07;
    } else {
        return 0;
    }
    if (i + len > n)
        return 0;
    for (size_t k = 1; k < len; k++) {
        if ((s[i + k] & 0xC0) != 0x80)
            return 0;
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    *cp = v;
    return len;
}

/* [*start, *end) of s with leading and trailing whitespace removed. */
static void strip_span(const char *text, size_t n, size_t *start, size_t *end) {
    const unsigned char *s = (const unsigned char *)text;
    size_t a = 0;
    while (a < n) {
        uint32_t cp;
        size_t len = utf8_decode(s, n, a, &cp);
        if (len == 0 || !is_python_space(cp))
            break;
        a += len;
    }
    size_t b = n;
    while (b > a) {
        /* step back to the start of the last character */
        size_t k = b - 1;
        while (k > a && (s[k] & 0xC0) == 0x80 && b - k < 4)
            k--;
        uint32_t cp;
        size_t len = utf8_decode(s, n, k, &cp);
        if (len == 0 || k + len != b || !is_python_space(cp))
            break;
        b = k;
    }
    *start = a;
    *end = b;
}

static void sb_append_stripped(strbuf *b, const char *s, int strip) {
    size_t n = strlen(s), a = 0, e = n;
    if (strip)
        strip_span(s, n, &a, &e);
    sb_append_n(b, s + a, e - a);
}

/* ---- reading literals out of template text --------------------------- */

/* Reads the Jinja string literal whose opening quote is at text[q]; returns
 * its unescaped value (malloc'd) and sets *after to the index past the
 * closing quote, or returns NULL when it is unterminated. */
static char *read_literal(const char *text, size_t q, size_t *after) {
    char quote = text[q];
    strbuf b = {0};
    size_t i = q + 1;
    for (; text[i] && text[i] != quote; i++) {
        if (text[i] == '\\' && text[i + 1]) {
            i++;
            char c = text[i];
            char out = c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
            sb_append_n(&b, &out, 1);
        } else {
            sb_append_n(&b, text + i, 1);
        }
    }
    if (text[i] != quote || b.failed) {
        free(b.data);
        return NULL;
    }
    *after = i + 1;
    if (!b.data)
        return dup_n("", 0);
    return b.data;
}

/* The index of the quote opening the string literal that contains
 * text[pos], or -1 when text[pos] is raw template text (the nearest
 * preceding quote, "}}" or "%}" decides; a template's literals do not
 * contain those). */
static long enclosing_quote(const char *text, size_t pos) {
    for (size_t i = pos; i-- > 0;) {
        if (text[i] == '\'' || text[i] == '"')
            return (long)i;
        if (text[i] == '}' && i > 0 && (text[i - 1] == '}' || text[i - 1] == '%'))
            return -1;
    }
    return -1;
}

/* ChatML: the default system prompt is the text between
 * "<|im_start|>system\n" and "<|im_end|>" in a literal (or in raw template
 * text) that spells both; "<|im_start|>system\n' + messages[0]['content']"
 * is the caller's system message, not a default. NULL when there is none. */
static char *chatml_default_system(const char *text) {
    static const char head[] = "<|im_start|>system";
    for (const char *p = strstr(text, head); p; p = strstr(p + 1, head)) {
        size_t pos = (size_t)(p - text);
        long q = enclosing_quote(text, pos);
        char *body = NULL;
        if (q >= 0) {
            size_t after;
            char *lit = read_literal(text, (size_t)q, &after);
            if (!lit)
                continue;
            /* the literal may start before "<|im_start|>" ("<|im_end|>\n<|im_start|>system\n...") */
            char *h = strstr(lit, head);
            if (h)
                body = dup_n(h, strlen(h));
            free(lit);
        } else {
            const char *end = strstr(p, "<|im_end|>");
            if (end && !memchr(p, '{', (size_t)(end - p)))
                body = dup_n(p, (size_t)(end - p) + strlen("<|im_end|>"));
        }
        if (!body)
            continue;
        char *nl = body + strlen(head);
        char *end = strstr(nl, "<|im_end|>");
        if (*nl == '\n' && end) {
            char *value = dup_n(nl + 1, (size_t)(end - nl - 1));
            free(body);
            return value;
        }
        free(body);
    }
    return NULL;
}

/* The value of the first string literal that follows `key` in text, or
 * NULL. */
static char *literal_after(const char *text, const char *key) {
    for (const char *k = strstr(text, key); k; k = strstr(k + 1, key)) {
        const char *p = k + strlen(key);
        while (*p == ' ' || *p == '\t')
            p++;
        if (*p != '"' && *p != '\'')
            continue; /* e.g. date_string = strftime_now(...) */
        size_t after;
        return read_literal(text, (size_t)(p - text), &after);
    }
    return NULL;
}

/* Llama-3.1+: "Cutting Knowledge Date: <X>\nToday Date: <date>\n\n", with
 * the template's literal fallback date (Llama-3.2 prefers strftime_now,
 * i.e. today's date in transformers; a prompt set must not depend on the
 * day it is tokenized, so the fallback is used). */
static pb_status llama3_preamble(const char *text, char **out) {
    *out = NULL;
    const char *p = strstr(text, "Cutting Knowledge Date:");
    if (!p)
        return PB_OK;
    long q = enclosing_quote(text, (size_t)(p - text));
    char *knowledge = NULL;
    if (q >= 0) {
        size_t after;
        knowledge = read_literal(text, (size_t)q, &after);
    }
    if (!knowledge)
        return pb_fail(PB_ERR_UNSUPPORTED, "chat template: cannot read its \"Cutting Knowledge Date\" line; %s",
                       chat_usage);
    char *date = strstr(text, "Today Date:") ? literal_after(text, "date_string =") : NULL;
    strbuf b = {0};
    sb_append(&b, knowledge); /* "Cutting Knowledge Date: December 2023\n" */
    if (strstr(text, "Today Date:")) {
        sb_append(&b, "Today Date: ");
        sb_append(&b, date ? date : PB_LLAMA3_FALLBACK_DATE);
        sb_append(&b, "\n\n");
    }
    free(knowledge);
    free(date);
    if (b.failed) {
        free(b.data);
        return pb_fail(PB_ERR_OOM, "chat template: out of memory");
    }
    *out = b.data;
    return PB_OK;
}

/* [INST] family: the literal that spells `tag` ("[INST]" or "[/INST]"),
 * e.g. "' [INST] '" -> " [INST] ". Falls back to `fallback`. */
static void inst_literal(const char *text, const char *tag, const char *fallback, char *out, size_t size) {
    for (const char *p = strstr(text, tag); p; p = strstr(p + 1, tag)) {
        long q = enclosing_quote(text, (size_t)(p - text));
        if (q < 0)
            continue;
        size_t after;
        char *lit = read_literal(text, (size_t)q, &after);
        if (!lit)
            continue;
        /* only a literal that is the tag with optional spaces around it */
        char *t = strstr(lit, tag);
        int plain = t != NULL;
        for (char *c = lit; plain && *c; c++)
            if (c < t || c >= t + strlen(tag))
                plain = *c == ' ';
        if (plain && strlen(lit) < size) {
            snprintf(out, size, "%s", lit);
            free(lit);
            return;
        }
        free(lit);
    }
    snprintf(out, size, "%s", fallback);
}

/* ---- the <|user|> families: Phi-3, OLMo-2 / Tulu 3 --------------------- */

/* Past the blanks between the terms of a Jinja expression (a template's
 * own line breaks included). */
static size_t skip_blanks(const char *text, size_t i) {
    while (text[i] == ' ' || text[i] == '\t' || text[i] == '\n' || text[i] == '\r')
        i++;
    return i;
}

/* Whether text[i] starts the message text unchanged: message['content'],
 * message["content"] or message.content, with no filter after it. Sets
 * *after past it. */
static int content_term(const char *text, size_t i, size_t *after) {
    static const char *const spellings[] = {"message['content']", "message[\"content\"]", "message.content"};
    for (size_t k = 0; k < sizeof spellings / sizeof spellings[0]; k++) {
        size_t n = strlen(spellings[k]);
        if (strncmp(text + i, spellings[k], n) == 0) {
            size_t j = skip_blanks(text, i + n);
            if (text[j] == '|')
                return 0; /* | trim and the like change the text */
            *after = i + n;
            return 1;
        }
    }
    return 0;
}

/* Reads the string literals joined by '+' from text[*i] on into b, up to
 * the first term that is not a literal; *i ends past the last literal. */
static void join_literals(const char *text, size_t *i, strbuf *b) {
    for (;;) {
        size_t j = skip_blanks(text, *i);
        if (text[j] != '+')
            return;
        j = skip_blanks(text, j + 1);
        if (text[j] != '\'' && text[j] != '"')
            return;
        size_t after;
        char *lit = read_literal(text, j, &after);
        if (!lit)
            return;
        sb_append(b, lit);
        free(lit);
        *i = after;
    }
}

/* How a template writes a turn as one expression,
 * '<|user|>\n' + message['content'] + '<|end|>\n': *prefix is the literals
 * before the message text (the first one starting with tag), *suffix those
 * after it, up to a term that is not a literal (eos_token, say) or the end
 * of the expression; *at (unless NULL) is where the first literal opens.
 * 0 (and nothing allocated) when no expression of that shape spells tag. */
static int turn_layout(const char *text, const char *tag, char **prefix, char **suffix, size_t *at) {
    for (const char *p = strstr(text, tag); p; p = strstr(p + 1, tag)) {
        long q = enclosing_quote(text, (size_t)(p - text));
        size_t i;
        char *first = q >= 0 ? read_literal(text, (size_t)q, &i) : NULL;
        if (!first)
            continue;
        strbuf head = {0}, tail = {0};
        sb_append(&head, first);
        int starts = strncmp(first, tag, strlen(tag)) == 0;
        free(first);
        join_literals(text, &i, &head);
        i = skip_blanks(text, i);
        if (starts && text[i] == '+' && content_term(text, skip_blanks(text, i + 1), &i)) {
            join_literals(text, &i, &tail);
            if (!tail.data)
                sb_append_n(&tail, "", 0); /* nothing after the message text */
            if (!head.failed && !tail.failed) {
                *prefix = head.data;
                *suffix = tail.data;
                if (at)
                    *at = (size_t)q;
                return 1;
            }
        }
        free(head.data);
        free(tail.data);
    }
    return 0;
}

/* Phi-3: "<|user|>\n" U "<|end|>\n", the generation prompt either after
 * the user turn (Phi-3-mini's original, which has no add_generation_prompt)
 * or added at the end (Phi-3.5). OLMo-2 / Tulu 3: "<|user|>\n" U "\n" and
 * no <|end|>. Zephyr's "<|user|>\n" U eos_token is neither. */
static int user_tag_format(const char *text, pb_chat_format *format) {
    char *prefix, *suffix;
    if (!strstr(text, "<|assistant|>") || !turn_layout(text, "<|user|>", &prefix, &suffix, NULL))
        return 0;
    int found = 0;
    if (strcmp(prefix, "<|user|>\n") == 0) {
        int has_end = strstr(text, "<|end|>") != NULL;
        int own_prompt = strstr(text, "add_generation_prompt") != NULL;
        if (has_end &&
            (strcmp(suffix, "<|end|>\n") == 0 || (strcmp(suffix, "<|end|>\n<|assistant|>\n") == 0 && !own_prompt))) {
            *format = PB_CHAT_PHI3;
            found = 1;
        } else if (!has_end && strcmp(suffix, "\n") == 0) {
            *format = PB_CHAT_OLMO2;
            found = 1;
        }
    }
    free(prefix);
    free(suffix);
    return found;
}

/* Whether the {% if %} / {% elif %} tag that ends right before text[at]
 * ends in "and message['content']" (Phi-3.5's
 * {% if message['role'] == 'system' and message['content'] %}): then a
 * message with empty content, false in Jinja, renders nothing. */
static int guard_tests_content(const char *text, size_t at) {
    const char *open = NULL;
    for (const char *p = strstr(text, "{%"); p && (size_t)(p - text) < at; p = strstr(p + 2, "{%"))
        open = p;
    const char *close = open ? strstr(open, "%}") : NULL;
    if (!close || (size_t)(close - text) >= at)
        return 0;
    size_t end = (size_t)(close - text);
    if (text[end - 1] == '-') /* {%- ... -%} */
        end--;
    for (const char *a = strstr(open, " and "); a && a < close; a = strstr(a + 1, " and ")) {
        size_t after;
        if (content_term(text, skip_blanks(text, (size_t)(a - text) + 5), &after) && skip_blanks(text, after) == end)
            return 1;
    }
    return 0;
}

/* The system turn of a <|user|> family: none (the template drops system
 * messages), or "<|system|>\n" S end, skipped for empty content where the
 * template's guard says so. */
static pb_status user_tag_system(pb_chat_template *t, const char *text, const char *end) {
    if (!strstr(text, "<|system|>")) {
        t->system_style = PB_CHAT_SYSTEM_DROPPED;
        return PB_OK;
    }
    char *prefix = NULL, *suffix = NULL;
    size_t at = 0;
    int ok = turn_layout(text, "<|system|>", &prefix, &suffix, &at) && strcmp(prefix, "<|system|>\n") == 0 &&
             strcmp(suffix, end) == 0;
    free(prefix);
    free(suffix);
    if (!ok)
        return pb_fail(PB_ERR_UNSUPPORTED, "%s chat template: cannot read its system turn; %s", t->name, chat_usage);
    t->skip_empty_system = guard_tests_content(text, at);
    return PB_OK;
}

/* ---- init ------------------------------------------------------------ */

static int format_from_name(const char *name, pb_chat_format *format) {
    static const struct {
        const char *name;
        pb_chat_format format;
    } names[] = {{"chatml", PB_CHAT_CHATML}, {"llama3", PB_CHAT_LLAMA3}, {"llama2", PB_CHAT_LLAMA2},
                 {"gemma", PB_CHAT_GEMMA},   {"gemma3", PB_CHAT_GEMMA3}, {"qwen3", PB_CHAT_QWEN3},
                 {"phi3", PB_CHAT_PHI3},     {"olmo2", PB_CHAT_OLMO2}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (strcmp(name, names[i].name) == 0) {
            *format = names[i].format;
            return 1;
        }
    return 0;
}

/* Qwen3 is told from other ChatML templates by its enable_thinking switch,
 * Gemma-3 from Gemma-1/2 by the first_user_prefix its system message
 * becomes, Phi-3 from OLMo-2 by what follows the user text. */
static int format_from_text(const char *text, pb_chat_format *format) {
    if (strstr(text, "<|im_start|>") && strstr(text, "<|im_end|>"))
        *format = strstr(text, "enable_thinking") ? PB_CHAT_QWEN3 : PB_CHAT_CHATML;
    else if (strstr(text, "<start_of_turn>") && strstr(text, "<end_of_turn>") && strstr(text, "first_user_prefix"))
        *format = PB_CHAT_GEMMA3;
    else if (strstr(text, "<|start_header_id|>") && strstr(text, "<|eot_id|>"))
        *format = PB_CHAT_LLAMA3;
    else if (strstr(text, "<start_of_turn>") && strstr(text, "<end_of_turn>"))
        *format = PB_CHAT_GEMMA;
    else if (strstr(text, "[INST]") && strstr(text, "[/INST]"))
        *format = PB_CHAT_LLAMA2;
    else
        return user_tag_format(text, format);
    return 1;
}

static const char *format_name(pb_chat_format f) {
    switch (f) {
    case PB_CHAT_CHATML: return "chatml";
    case PB_CHAT_LLAMA3: return "llama3";
    case PB_CHAT_LLAMA2: return "llama2";
    case PB_CHAT_GEMMA: return "gemma";
    case PB_CHAT_GEMMA3: return "gemma3";
    case PB_CHAT_QWEN3: return "qwen3";
    case PB_CHAT_PHI3: return "phi3";
    case PB_CHAT_OLMO2: return "olmo2";
    }
    return "?";
}

static pb_status read_template_file(const char *path, char **out) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return pb_fail(PB_ERR_ARG, "chat template \"%s\" is neither a known name nor a readable file (%s); %s", path,
                       strerror(errno), chat_usage);
    strbuf b = {0};
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0 && b.len <= PB_CHAT_TEMPLATE_MAX_FILE)
        sb_append_n(&b, chunk, n);
    int err = ferror(f);
    fclose(f);
    if (err || b.failed || b.len > PB_CHAT_TEMPLATE_MAX_FILE || !b.data) {
        free(b.data);
        if (b.failed)
            return pb_fail(PB_ERR_OOM, "reading chat template %s: out of memory", path);
        return pb_fail(PB_ERR_IO, "reading chat template %s: %s", path,
                       err       ? "read error"
                       : !b.data ? "empty file"
                                 : "larger than 4 MiB");
    }
    *out = b.data;
    return PB_OK;
}

/* Fills the details of format f from template text (NULL: the family's
 * defaults). */
static pb_status fill_details(pb_chat_template *t, const char *text, const char *bos_text) {
    const char *family_bos = NULL;
    int forced_bos = 1; /* a forced name emits family_bos */
    t->system_style = PB_CHAT_SYSTEM_TURN;
    t->trim = 0;
    switch (t->format) {
    case PB_CHAT_CHATML:
        if (text)
            t->default_system = chatml_default_system(text);
        break;
    case PB_CHAT_LLAMA3:
        family_bos = "<|begin_of_text|>";
        t->trim = 1;
        if (text)
            PB_TRY(llama3_preamble(text, &t->system_preamble));
        break;
    case PB_CHAT_LLAMA2:
        family_bos = "<s>";
        if (!text || strstr(text, "<<SYS>>")) {
            t->system_style = PB_CHAT_SYSTEM_SYS_BLOCK;
            t->trim = 1; /* content.strip() */
        } else {
            /* Mistral: a system message is prepended to the user text where
             * the template knows one; the originals raise. */
            t->system_style = strstr(text, "system_message") ? PB_CHAT_SYSTEM_PREFIX : PB_CHAT_SYSTEM_NONE;
        }
        if (text) {
            inst_literal(text, "[INST]", "[INST] ", t->inst_open, sizeof t->inst_open);
            inst_literal(text, "[/INST]", " [/INST]", t->inst_close, sizeof t->inst_close);
        } else {
            snprintf(t->inst_open, sizeof t->inst_open, "[INST] ");
            snprintf(t->inst_close, sizeof t->inst_close, " [/INST]");
        }
        break;
    case PB_CHAT_GEMMA:
        family_bos = "<bos>";
        t->trim = 1;
        t->system_style = PB_CHAT_SYSTEM_NONE; /* Gemma-2 raises "System role not supported" */
        break;
    case PB_CHAT_GEMMA3:
        family_bos = "<bos>";
        t->trim = 1; /* the user text only: message['content'] | trim */
        t->system_style = PB_CHAT_SYSTEM_PREFIX;
        break;
    case PB_CHAT_QWEN3: break; /* no default system prompt: a system turn only when one is given */
    case PB_CHAT_PHI3:
        family_bos = "<s>"; /* the original's {{ bos_token }}; Phi-3.5, the default, has none */
        forced_bos = 0;
        if (text)
            PB_TRY(user_tag_system(t, text, "<|end|>\n"));
        else
            t->skip_empty_system = 1;
        break;
    case PB_CHAT_OLMO2:
        family_bos = "<|endoftext|>";
        if (text)
            PB_TRY(user_tag_system(t, text, "\n"));
        break;
    }
    /* BOS: emitted where the template says bos_token (ChatML templates of
     * SmolLM2 and Qwen do not); with no template, the family's habit. */
    int emits_bos = text ? strstr(text, "bos_token") != NULL : family_bos != NULL && forced_bos;
    if (emits_bos) {
        const char *b = bos_text && *bos_text ? bos_text : family_bos;
        if (!b)
            return pb_fail(PB_ERR_ARG, "chat template uses bos_token but the model has no BOS text");
        if (!(t->bos = dup_n(b, strlen(b))))
            return pb_fail(PB_ERR_OOM, "chat template: out of memory");
    }
    return PB_OK;
}

pb_status pb_chat_template_init(pb_chat_template *out, const char *template_text, const char *name,
                                const char *bos_text) {
    if (!out)
        return pb_fail(PB_ERR_ARG, "pb_chat_template_init: out is NULL");
    memset(out, 0, sizeof *out);
    char *file_text = NULL;
    const char *text = template_text;
    int forced = 0;
    if (name) {
        if (format_from_name(name, &out->format)) {
            forced = 1;
        } else {
            PB_TRY(read_template_file(name, &file_text));
            text = file_text;
        }
    }
    if (!forced) {
        if (!text) {
            return pb_fail(PB_ERR_UNSUPPORTED, "the model has no chat template (tokenizer.chat_template); %s",
                           chat_usage);
        }
        if (!format_from_text(text, &out->format)) {
            pb_status st = pb_fail(PB_ERR_UNSUPPORTED,
                                   "unrecognised chat template%s%s (none of ChatML/Qwen3 <|im_start|>, Llama-3 "
                                   "<|start_header_id|>, Llama-2/Mistral [INST], Gemma/Gemma-3 <start_of_turn>, "
                                   "Phi-3 <|user|>\\n U <|end|>, OLMo-2/Tulu 3 <|user|>\\n U \\n); %s",
                                   file_text ? " in " : "", file_text ? name : "", chat_usage);
            free(file_text);
            return st;
        }
    }
    snprintf(out->name, sizeof out->name, "%s", format_name(out->format));
    /* A forced name with a template of another family: use the family's
     * defaults rather than details read from a foreign template. */
    pb_chat_format text_format;
    const char *detail_text = text && format_from_text(text, &text_format) && text_format == out->format ? text : NULL;
    pb_status st = fill_details(out, detail_text, bos_text);
    free(file_text);
    if (st != PB_OK)
        pb_chat_template_free(out);
    return st;
}

void pb_chat_template_free(pb_chat_template *t) {
    if (!t)
        return;
    free(t->default_system);
    free(t->bos);
    free(t->system_preamble);
    t->default_system = t->bos = t->system_preamble = NULL;
}

/* ---- render ---------------------------------------------------------- */

/* The system text to render (*sys NULL: no system turn) for the caller's
 * system prompt, or a refusal where the template has no place for it. */
static pb_status system_text(const pb_chat_template *t, const char *system, const char **sys) {
    *sys = system ? system : t->default_system; /* NULL: no system message at all */
    if (system && t->system_style == PB_CHAT_SYSTEM_NONE)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "the %s chat template has no system role (the template itself raises on a system "
                       "message); render without a system prompt",
                       t->name);
    /* Even "", which the template would drop harmlessly: a caller who
     * passes a system prompt asks for a turn this template cannot write. */
    if (system && t->system_style == PB_CHAT_SYSTEM_DROPPED)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "the %s chat template ignores system messages (it has no system role and would drop "
                       "the system prompt without a word); render without a system prompt",
                       t->name);
    if (*sys && t->skip_empty_system && !**sys)
        *sys = NULL; /* {% if ... and message['content'] %}: no turn for "" */
    return PB_OK;
}

pb_status pb_chat_template_render(const pb_chat_template *t, const char *system, const char *user, char **text) {
    if (!t || !user || !text)
        return pb_fail(PB_ERR_ARG, "pb_chat_template_render: template, user and text must not be NULL");
    *text = NULL;
    const char *sys;
    PB_TRY(system_text(t, system, &sys));
    strbuf b = {0};
    sb_append(&b, t->bos);
    switch (t->format) {
    case PB_CHAT_CHATML:
    case PB_CHAT_QWEN3:
        if (sys) {
            sb_append(&b, "<|im_start|>system\n");
            sb_append(&b, sys);
            sb_append(&b, "<|im_end|>\n");
        }
        sb_append(&b, "<|im_start|>user\n");
        sb_append(&b, user);
        sb_append(&b, "<|im_end|>\n<|im_start|>assistant\n");
        break;
    case PB_CHAT_LLAMA3:
        if (sys || t->system_preamble) {
            sb_append(&b, "<|start_header_id|>system<|end_header_id|>\n\n");
            sb_append(&b, t->system_preamble);
            sb_append_stripped(&b, sys ? sys : "", t->trim);
            sb_append(&b, "<|eot_id|>");
        }
        sb_append(&b, "<|start_header_id|>user<|end_header_id|>\n\n");
        sb_append_stripped(&b, user, t->trim);
        sb_append(&b, "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case PB_CHAT_LLAMA2: {
        /* Llama-2: strip(("<<SYS>>\n" S "\n<</SYS>>\n\n" if S) + user);
         * Mistral: S "\n\n" + user, unstripped. No generation prompt:
         * the templates ignore add_generation_prompt. */
        strbuf content = {0};
        if (sys && t->system_style == PB_CHAT_SYSTEM_SYS_BLOCK) {
            sb_append(&content, "<<SYS>>\n");
            sb_append(&content, sys);
            sb_append(&content, "\n<</SYS>>\n\n");
        } else if (sys) {
            sb_append(&content, sys);
            sb_append(&content, "\n\n");
        }
        sb_append(&content, user);
        if (content.failed)
            b.failed = 1;
        sb_append(&b, t->inst_open);
        sb_append_stripped(&b, content.data ? content.data : "", t->trim);
        sb_append(&b, t->inst_close);
        free(content.data);
        break;
    }
    case PB_CHAT_GEMMA:
    case PB_CHAT_GEMMA3:
        sb_append(&b, "<start_of_turn>user\n");
        if (sys) { /* Gemma-3's first_user_prefix: the system text as given, then a blank line */
            sb_append(&b, sys);
            sb_append(&b, "\n\n");
        }
        sb_append_stripped(&b, user, t->trim);
        sb_append(&b, "<end_of_turn>\n<start_of_turn>model\n");
        break;
    case PB_CHAT_PHI3:
    case PB_CHAT_OLMO2: {
        const char *end = t->format == PB_CHAT_PHI3 ? "<|end|>\n" : "\n";
        if (sys) {
            sb_append(&b, "<|system|>\n");
            sb_append(&b, sys);
            sb_append(&b, end);
        }
        sb_append(&b, "<|user|>\n");
        sb_append(&b, user);
        sb_append(&b, end);
        sb_append(&b, "<|assistant|>\n");
        break;
    }
    }
    if (b.failed || !b.data) {
        free(b.data);
        return pb_fail(PB_ERR_OOM, "rendering chat template: out of memory");
    }
    *text = b.data;
    return PB_OK;
}
