/* The one option parser of the command line: each command describes its
 * flags as a table of {flag, kind, target} and pb_cli_parse walks argv
 * against it, so that every command reads `--flag value` pairs, numbers,
 * sizes, unknown flags and missing values the same way. The messages'
 * wording is the caller's (pb_cli_parser): it is part of the tool's
 * interface, which tests and scripts grep. */
#ifndef PB_CLI_OPTIONS_H
#define PB_CLI_OPTIONS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "patchbay.h"

typedef enum pb_cli_option_kind {
    PB_OPT_END = 0,  /* terminates a table */
    PB_OPT_FLAG,     /* int: set to 1; takes no value */
    PB_OPT_STRING,   /* const char *: the value, borrowed from argv */
    PB_OPT_INT,      /* int in [min, 1e9]: "expects an integer >= MIN" */
    PB_OPT_COUNT,    /* int in [0, 1e9]: "expects a non-negative integer" */
    PB_OPT_POSITIVE, /* int >= 1 read by strtol: "expects a positive integer" */
    PB_OPT_UINT,     /* int in [0, max]: "expects a non-negative integer (at most MAX)" */
    PB_OPT_U64,      /* uint64_t in [0, max], same message */
    PB_OPT_DOUBLE,   /* double, finite: "expects a number" */
    PB_OPT_SIZE,     /* size_t byte count (pb_parse_size): "FLAG: <why>" */
    PB_OPT_CHOICE,   /* const char *, one of choices: "expects <choices_text>" */
    PB_OPT_PARSE,    /* parse(value, target) returning pb_status: "FLAG: <pb_last_error()>" */
    PB_OPT_TABLE     /* target is another table, searched in place (the shared model options) */
} pb_cli_option_kind;

typedef struct pb_cli_option {
    const char *flag; /* "--out" */
    pb_cli_option_kind kind;
    void *target;
    int *given;                                          /* optional: set to 1 when the flag is seen */
    int min;                                             /* PB_OPT_INT */
    unsigned long long max;                              /* PB_OPT_UINT, PB_OPT_U64 */
    const char *const *choices;                          /* PB_OPT_CHOICE: NULL-terminated */
    const char *choices_text;                            /* PB_OPT_CHOICE: "auto, mpi or nccl" */
    pb_status (*parse)(const char *value, void *target); /* PB_OPT_PARSE */
    int shared;                                          /* 1: a shared model option, whose messages name the command */
    /* The help, generated from the table (pb_cli_print_options): */
    const char *value;    /* the value's placeholder ("PATH"); NULL for a PB_OPT_FLAG */
    const char *help;     /* one line: what it does, its default */
    const char *commands; /* space-separated commands that take it; NULL: every command parsing this table */
} pb_cli_option;

/* How one command words its messages. Each format is printed to stderr. */
typedef struct pb_cli_parser {
    const char *prefix;         /* "patchbay" or "patchbay generate": starts messages about this command's options */
    const char *command_prefix; /* "patchbay sweep": starts messages about the shared model options */
    const char *missing_value;  /* format of (prefix, flag) for a flag given without its value */
    const char *unknown;        /* format of (prefix, flag) for a flag in no table */
    const char *command;        /* "sweep": options whose `commands` leave it out are refused; NULL: none is */
    /* Optional: arguments not starting with '-' are stored here in order
     * (room for argc) instead of being refused as unknown options. */
    const char **positional;
    int *n_positional;
} pb_cli_parser;

/* Parses argv[first..argc): a PB_OPT_FLAG alone, every other flag with the
 * next argument. Returns 1, or 0 after printing why (a bad value, a
 * missing value, an unknown flag). */
int pb_cli_parse(const pb_cli_parser *parser, const pb_cli_option *table, int argc, char **argv, int first);

/* One flag and its value (NULL when none) against the table: 1 when taken,
 * 0 when the flag is not in the table, -1 after printing why the value is
 * bad. For commands with positional arguments (bench_sweep). */
int pb_cli_parse_one(const pb_cli_parser *parser, const pb_cli_option *table, const char *flag, const char *value);

/* The options of table (nested tables included) that command takes, one
 * line each: "  --flag VALUE   help". command NULL: every option. */
void pb_cli_print_options(FILE *out, const pb_cli_option *table, const char *command);

/* 1 when `command` is one of the space-separated names in `commands`. */
int pb_cli_command_listed(const char *commands, const char *command);

#endif
