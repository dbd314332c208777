/* Thread-local error message behind pb_last_error(). */
#define _POSIX_C_SOURCE 200809L
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "util/internal.h"

static _Thread_local char pb_error_message[PB_ERROR_CAPACITY];
/* 1 from a recorded failure until pb_error_clear: what pb_fail_cleanup
 * must not replace. */
static _Thread_local int pb_error_pending;

const char *pb_last_error(void) { return pb_error_message; }

const char *pb_status_name(pb_status status) {
    switch (status) {
    case PB_OK: return "PB_OK";
    case PB_ERR_IO: return "PB_ERR_IO";
    case PB_ERR_FORMAT: return "PB_ERR_FORMAT";
    case PB_ERR_ARG: return "PB_ERR_ARG";
    case PB_ERR_OOM: return "PB_ERR_OOM";
    case PB_ERR_UNSUPPORTED: return "PB_ERR_UNSUPPORTED";
    case PB_ERR_CUDA: return "PB_ERR_CUDA";
    case PB_ERR_NUMERIC: return "PB_ERR_NUMERIC";
    case PB_ERR_INTERRUPTED: return "PB_ERR_INTERRUPTED";
    }
    return "PB_ERR_UNKNOWN";
}

/* Records the message; both failure paths below format it the same way. */
static void pb_record(const char *fmt, va_list args) {
    vsnprintf(pb_error_message, sizeof pb_error_message, fmt, args);
    pb_error_pending = 1;
}

pb_status pb_fail(pb_status status, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    pb_record(fmt, args);
    va_end(args);
    return status;
}

pb_status pb_fail_cleanup(pb_status status, const char *fmt, ...) {
    if (pb_error_pending)
        return status;
    va_list args;
    va_start(args, fmt);
    pb_record(fmt, args);
    va_end(args);
    return status;
}

void pb_error_clear(void) {
    pb_error_message[0] = 0;
    pb_error_pending = 0;
}

void pb_error_save(pb_error_saved *saved) {
    memcpy(saved->message, pb_error_message, sizeof saved->message);
    saved->pending = pb_error_pending;
}

void pb_error_restore(const pb_error_saved *saved) {
    memcpy(pb_error_message, saved->message, sizeof pb_error_message);
    pb_error_pending = saved->pending;
}

pb_status pb_fail_context(pb_status status, const char *fmt, ...) {
    char previous[PB_ERROR_CAPACITY];
    memcpy(previous, pb_error_message, sizeof previous);
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(pb_error_message, sizeof pb_error_message, fmt, args);
    va_end(args);
    /* Append ": <previous>", truncated to what is left. */
    size_t used = n < 0 ? 0 : (size_t)n;
    if (used + 3 < sizeof pb_error_message) {
        size_t room = sizeof pb_error_message - used - 3;
        size_t len = strnlen(previous, room);
        memcpy(pb_error_message + used, ": ", 2);
        memcpy(pb_error_message + used + 2, previous, len);
        pb_error_message[used + 2 + len] = 0;
    }
    pb_error_pending = 1;
    return status;
}
