/* The shared option parser (options.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/options.h"
#include "cli/progress.h"

int pb_cli_command_listed(const char *commands, const char *command) {
    size_t n = strlen(command);
    for (const char *c = commands; c && *c;) {
        while (*c == ' ')
            c++;
        size_t len = strcspn(c, " ");
        if (len == n && strncmp(c, command, n) == 0)
            return 1;
        c += len;
    }
    return 0;
}

/* Whether command takes o (NULL command: every option counts). */
static int takes(const pb_cli_option *o, const char *command) {
    return !command || !o->commands || pb_cli_command_listed(o->commands, command);
}

/* The entry for flag, searching nested tables in place; NULL when none. */
static const pb_cli_option *find_option(const pb_cli_option *table, const char *flag) {
    for (const pb_cli_option *o = table; o->kind != PB_OPT_END; o++) {
        if (o->kind == PB_OPT_TABLE) {
            const pb_cli_option *found = find_option(o->target, flag);
            if (found)
                return found;
        } else if (strcmp(o->flag, flag) == 0) {
            return o;
        }
    }
    return NULL;
}

void pb_cli_print_options(FILE *out, const pb_cli_option *table, const char *command) {
    for (const pb_cli_option *o = table; o->kind != PB_OPT_END; o++) {
        if (o->kind == PB_OPT_TABLE) {
            pb_cli_print_options(out, o->target, command);
            continue;
        }
        if (!takes(o, command))
            continue;
        char left[64];
        snprintf(left, sizeof left, "%s%s%s", o->flag, o->value ? " " : "", o->value ? o->value : "");
        fprintf(out, "  %-28s %s\n", left, o->help ? o->help : "");
    }
}

static int read_int(const pb_cli_option *o, const char *prefix, const char *value) {
    char *end;
    errno = 0;
    long v = strtol(value, &end, 10);
    int lo = o->kind == PB_OPT_INT ? o->min : 0;
    if (errno || *end || end == value || v < lo || v > 1000000000) {
        if (o->kind == PB_OPT_INT)
            fprintf(stderr, "%s: %s expects an integer >= %d, got '%s'\n", prefix, o->flag, lo, value);
        else
            fprintf(stderr, "%s: %s expects a non-negative integer, got '%s'\n", prefix, o->flag, value);
        return 0;
    }
    *(int *)o->target = (int)v;
    return 1;
}

/* strtol without range checks beyond >= 1, as refusal-analysis always read. */
static int read_positive(const pb_cli_option *o, const char *prefix, const char *value) {
    char *end = NULL;
    int v = (int)strtol(value, &end, 10);
    if (*end || v < 1) {
        fprintf(stderr, "%s: %s expects a positive integer, got '%s'\n", prefix, o->flag, value);
        return 0;
    }
    *(int *)o->target = v;
    return 1;
}

static int read_unsigned(const pb_cli_option *o, const char *prefix, const char *value) {
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(value, &end, 10);
    if (errno || end == value || *end || value[0] == '-' || v > o->max) {
        fprintf(stderr, "%s: %s expects a non-negative integer (at most %llu), got '%s'\n", prefix, o->flag, o->max,
                value);
        return 0;
    }
    if (o->kind == PB_OPT_U64)
        *(uint64_t *)o->target = (uint64_t)v;
    else
        *(int *)o->target = (int)v;
    return 1;
}

static int read_double(const pb_cli_option *o, const char *prefix, const char *value) {
    char *end;
    errno = 0;
    double v = strtod(value, &end);
    if (errno || *end || end == value || !isfinite(v)) {
        fprintf(stderr, "%s: %s expects a number, got '%s'\n", prefix, o->flag, value);
        return 0;
    }
    *(double *)o->target = v;
    return 1;
}

static int read_choice(const pb_cli_option *o, const char *prefix, const char *value) {
    for (const char *const *c = o->choices; *c; c++)
        if (strcmp(*c, value) == 0) {
            *(const char **)o->target = value;
            return 1;
        }
    fprintf(stderr, "%s: %s expects %s, got '%s'\n", prefix, o->flag, o->choices_text, value);
    return 0;
}

/* A library parser's verdict: "PREFIX: FLAG: why". */
static int read_status(const char *prefix, const char *flag, pb_status status) {
    if (status == PB_OK)
        return 1;
    fprintf(stderr, "%s: %s: %s\n", prefix, flag, pb_last_error());
    return 0;
}

/* Stores value into o's target; 0 after printing why it is bad. */
static int read_value(const pb_cli_parser *parser, const pb_cli_option *o, const char *value) {
    const char *prefix = o->shared ? parser->command_prefix : parser->prefix;
    switch (o->kind) {
    case PB_OPT_STRING: *(const char **)o->target = value; return 1;
    case PB_OPT_INT:
    case PB_OPT_COUNT: return read_int(o, prefix, value);
    case PB_OPT_POSITIVE: return read_positive(o, prefix, value);
    case PB_OPT_UINT:
    case PB_OPT_U64: return read_unsigned(o, prefix, value);
    case PB_OPT_DOUBLE: return read_double(o, prefix, value);
    case PB_OPT_SIZE: return read_status(prefix, o->flag, pb_parse_size(value, o->target));
    case PB_OPT_CHOICE: return read_choice(o, prefix, value);
    case PB_OPT_PARSE: return read_status(prefix, o->flag, o->parse(value, o->target));
    case PB_OPT_FLAG:
    case PB_OPT_TABLE:
    case PB_OPT_END: break;
    }
    return 0;
}

int pb_cli_parse_one(const pb_cli_parser *parser, const pb_cli_option *table, const char *flag, const char *value) {
    const pb_cli_option *o = find_option(table, flag);
    if (!o)
        return 0;
    if (o->kind == PB_OPT_FLAG)
        *(int *)o->target = 1;
    else if (!value || !read_value(parser, o, value))
        return -1;
    if (o->given)
        *o->given = 1;
    return 1;
}

int pb_cli_parse(const pb_cli_parser *parser, const pb_cli_option *table, int argc, char **argv, int first) {
    for (int i = first; i < argc; i++) {
        const char *flag = argv[i];
        if (parser->positional && flag[0] != '-') {
            parser->positional[(*parser->n_positional)++] = flag;
            continue;
        }
        const pb_cli_option *o = find_option(table, flag);
        if (o && !takes(o, parser->command)) {
            fprintf(stderr, "%s: option %s is not an option of %s (see patchbay help %s)\n", parser->prefix, flag,
                    parser->command, parser->command);
            return 0;
        }
        if (o && o->kind == PB_OPT_FLAG) {
            *(int *)o->target = 1;
            continue;
        }
        if (!o) {
            fprintf(stderr, parser->unknown, parser->prefix, flag);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, parser->missing_value, parser->prefix, flag);
            return 0;
        }
        if (!read_value(parser, o, argv[++i]))
            return 0;
        if (o->given)
            *o->given = 1;
    }
    return 1;
}
