/* The sweep progress bar and the --max-memory size parser (progress.h). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/progress.h"
#include "patchbay_tool.h"

enum { PB_PROGRESS_BAR_WIDTH = 30 };
/* A terminal redraw costs a write syscall; ten a second looks smooth. */
static const double PB_PROGRESS_TTY_INTERVAL_S = 0.1;
/* Logs get a line per tenth of the work, and at least one per half minute
 * so that a slow run still shows it is alive. */
static const double PB_PROGRESS_LOG_INTERVAL_S = 30.0;

void pb_progress_init(pb_progress *p, FILE *out, const char *label, int tty) {
    memset(p, 0, sizeof *p);
    p->out = out;
    p->label = label ? label : "progress";
    p->unit = "rows";
    p->tty = tty >= 0 ? tty != 0 : (out && isatty(fileno(out)));
    p->last_done = -1;
}

/* "0:05", "12:34", "1:02:03". */
static void format_clock(double seconds, char *buf, size_t size) {
    if (!(seconds >= 0) || seconds > 1e8) {
        snprintf(buf, size, "--:--");
        return;
    }
    long s = lround(seconds);
    if (s >= 3600)
        snprintf(buf, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(buf, size, "%ld:%02ld", s / 60, s % 60);
}

/* "6.2 s" under a minute, else as format_clock. */
static void format_duration(double seconds, char *buf, size_t size) {
    if (seconds >= 0 && seconds < 60)
        snprintf(buf, size, "%.1f s", seconds);
    else
        format_clock(seconds, buf, size);
}

/* label [#####.....] done/total unit  rate unit/s, without the tail. */
static int format_head(const pb_progress *p, int64_t done, int64_t total, double elapsed, char *buf, size_t size) {
    char bar[PB_PROGRESS_BAR_WIDTH + 1];
    int filled = total > 0 ? (int)((double)done / (double)total * PB_PROGRESS_BAR_WIDTH) : 0;
    if (filled < 0)
        filled = 0;
    if (filled > PB_PROGRESS_BAR_WIDTH)
        filled = PB_PROGRESS_BAR_WIDTH;
    memset(bar, '#', (size_t)filled);
    memset(bar + filled, '.', (size_t)(PB_PROGRESS_BAR_WIDTH - filled));
    bar[PB_PROGRESS_BAR_WIDTH] = 0;
    char rate[32];
    if (elapsed > 1e-3)
        snprintf(rate, sizeof rate, "%.1f %s/s", (double)done / elapsed, p->unit);
    else
        snprintf(rate, sizeof rate, "-- %s/s", p->unit);
    return snprintf(buf, size, "%s [%s] %lld/%lld %s  %s", p->label, bar, (long long)done, (long long)total, p->unit,
                    rate);
}

static void draw(pb_progress *p, int64_t done, int64_t total, double now) {
    double elapsed = now - p->start;
    char line[256], eta[32];
    int n = format_head(p, done, total, elapsed, line, sizeof line);
    if (done > 0 && elapsed > 1e-3 && total >= done)
        format_clock((double)(total - done) * elapsed / (double)done, eta, sizeof eta);
    else
        snprintf(eta, sizeof eta, "--:--");
    if (n > 0 && (size_t)n < sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, "  ETA %s", eta);
    /* \033[K clears what a longer previous line left behind. */
    fprintf(p->out, p->tty ? "\r%s\033[K" : "%s\n", line);
    fflush(p->out);
    p->last_draw = now;
    p->last_done = done;
}

void pb_progress_update_at(pb_progress *p, int64_t done, int64_t total, double now) {
    if (!p || !p->out || p->finished)
        return;
    if (!p->started) {
        p->started = 1;
        p->start = now;
        p->last_draw = now;
        p->last_done = 0;
    }
    p->done = done;
    p->total = total;
    if (done == p->last_done)
        return;
    int due;
    if (p->tty) {
        due = now - p->last_draw >= PB_PROGRESS_TTY_INTERVAL_S || done >= total;
    } else {
        /* A line each time done crosses a tenth; the end is the final line's. */
        int64_t tenth_now = total > 0 ? done * 10 / total : 0;
        int64_t tenth_before = total > 0 ? p->last_done * 10 / total : 0;
        due = done < total && (tenth_now > tenth_before || now - p->last_draw >= PB_PROGRESS_LOG_INTERVAL_S);
    }
    if (due)
        draw(p, done, total, now);
}

void pb_progress_update(pb_progress *p, int64_t done, int64_t total) {
    pb_progress_update_at(p, done, total, pb_now_seconds());
}

void pb_progress_finish_at(pb_progress *p, double now) {
    if (!p || !p->out || !p->started || p->finished)
        return;
    p->finished = 1;
    int64_t done = p->done;
    char line[256], took[32];
    format_duration(now - p->start, took, sizeof took);
    int n = format_head(p, done, p->total, now - p->start, line, sizeof line);
    if (n > 0 && (size_t)n < sizeof line)
        snprintf(line + n, sizeof line - (size_t)n, "  %s %s", done >= p->total ? "done in" : "stopped after", took);
    fprintf(p->out, p->tty ? "\r%s\033[K\n" : "%s\n", line);
    fflush(p->out);
}

void pb_progress_finish(pb_progress *p) { pb_progress_finish_at(p, pb_now_seconds()); }

void pb_progress_callback(int64_t done, int64_t total, void *user) { pb_progress_update(user, done, total); }

/* ---- sizes ------------------------------------------------------------ */

static int lower(int c) { return c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c; }

pb_status pb_parse_size(const char *text, size_t *out) {
    static const char *const expect = "expected a byte count such as 100000, 512M, 2G or 1.5GiB";
    if (!text || !*text)
        return pb_fail(PB_ERR_ARG, "empty size; %s", expect);
    /* The number: digits with at most one '.', no sign, exponent or hex
     * (strtod alone would take "1e3", "inf" and "0x10"). */
    const char *p = text;
    int digits = 0, dots = 0;
    while ((*p >= '0' && *p <= '9') || *p == '.') {
        if (*p == '.')
            dots++;
        else
            digits++;
        p++;
    }
    if (digits == 0 || dots > 1)
        return pb_fail(PB_ERR_ARG, "'%s' is not a size; %s", text, expect);
    size_t number_len = (size_t)(p - text);
    char number[64];
    if (number_len >= sizeof number)
        return pb_fail(PB_ERR_ARG, "'%s' is too large a size", text);
    memcpy(number, text, number_len);
    number[number_len] = 0;

    double unit = 1.0;
    const char *suffix = p;
    int prefix = lower(*p);
    const char *prefixes = "kmgt";
    const char *found = prefix ? strchr(prefixes, prefix) : NULL;
    if (found) {
        int power = (int)(found - prefixes) + 1;
        p++;
        int binary = 1;
        if (lower(p[0]) == 'i' && lower(p[1]) == 'b') {
            p += 2;
        } else if (lower(p[0]) == 'b') {
            binary = 0;
            p++;
        }
        unit = pow(binary ? 1024.0 : 1000.0, power);
    } else if (lower(*p) == 'b') {
        p++;
    }
    if (*p)
        return pb_fail(PB_ERR_ARG, "'%s': unknown unit '%s'; %s", text, suffix, expect);

    double value;
    if (dots == 0 && unit == 1.0) {
        /* Plain byte counts exactly, beyond double's 2^53. */
        errno = 0;
        unsigned long long v = strtoull(number, NULL, 10);
        if (errno || v > SIZE_MAX)
            return pb_fail(PB_ERR_ARG, "'%s' is too large a size", text);
        if (v == 0)
            return pb_fail(PB_ERR_ARG, "size '%s' must be positive", text);
        *out = (size_t)v;
        return PB_OK;
    }
    if (unit == 1.0)
        return pb_fail(PB_ERR_ARG, "'%s' is not a whole number of bytes", text);
    /* With a unit, a fraction of a byte is rounded down: 0.1G is a budget. */
    value = floor(strtod(number, NULL) * unit);
    if (!(value < 18446744073709551616.0) || value > (double)SIZE_MAX)
        return pb_fail(PB_ERR_ARG, "'%s' is too large a size", text);
    if (value < 1)
        return pb_fail(PB_ERR_ARG, "size '%s' must be positive", text);
    *out = (size_t)value;
    return PB_OK;
}
