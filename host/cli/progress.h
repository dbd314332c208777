/* Command-line feedback for long runs: a progress bar for sweeps (redrawn
 * in place on a terminal, a line every ~10% or 30 s in logs), and the
 * parser for --max-memory sizes. */
#ifndef PB_PROGRESS_H
#define PB_PROGRESS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "patchbay.h"

typedef struct pb_progress {
    FILE *out;
    const char *label; /* "sweep" */
    const char *unit;  /* what is counted: "rows" (pb_progress_init's), or set after init ("continuations") */
    int tty;           /* 1: redraw one line with '\r'; 0: append whole lines */
    double start;      /* seconds (monotonic) of the first update */
    double last_draw;  /* seconds of the last line drawn */
    int64_t last_done; /* rows at the last line drawn; -1 before the first */
    int64_t done;      /* rows at the latest update */
    int64_t total;
    int started;
    int finished;
} pb_progress;

/* tty: 1 or 0 to force a style, -1 to pick by isatty(out). label is
 * borrowed for the lifetime of p. */
void pb_progress_init(pb_progress *p, FILE *out, const char *label, int tty);
/* Records progress now (CLOCK_MONOTONIC); draws when due. */
void pb_progress_update(pb_progress *p, int64_t done, int64_t total);
/* The same with an explicit time in seconds (tests). The first call sets
 * the start time. */
void pb_progress_update_at(pb_progress *p, int64_t done, int64_t total, double now);
/* Draws the final line with the total time (once; a no-op before the first
 * update). */
void pb_progress_finish(pb_progress *p);
void pb_progress_finish_at(pb_progress *p, double now);
/* A pb_sweep_options.progress callback; user is a pb_progress *. */
void pb_progress_callback(int64_t done, int64_t total, void *user);

/* Parses a byte count: "100000", "512M", "2G", "1.5GiB", "64k".
 * K, M, G, T (optionally followed by "iB") are powers of 1024; KB, MB, GB,
 * TB are powers of 1000; a trailing "B" alone means bytes. Letters are
 * case-insensitive. Zero, negative, fractional byte counts, overflow and
 * anything else are refused with PB_ERR_ARG and a message. */
pb_status pb_parse_size(const char *text, size_t *out);

#endif
