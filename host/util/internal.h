/* Helpers shared by host code: error recording and checked size arithmetic. */
#ifndef PB_INTERNAL_H
#define PB_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include "patchbay.h"

#if defined(__GNUC__)
#define PB_PRINTF(a, b) __attribute__((format(printf, a, b)))
#else
#define PB_PRINTF(a, b)
#endif

/* Records a message for pb_last_error() and returns status, so call sites
 * read `return pb_fail(PB_ERR_FORMAT, "...", ...);`. */
pb_status pb_fail(pb_status status, const char *fmt, ...) PB_PRINTF(2, 3);
/* Prefixes the current message with more context ("loading X: <old>"). */
pb_status pb_fail_context(pb_status status, const char *fmt, ...) PB_PRINTF(2, 3);

/* The first failure is the one worth reporting: cleanup after it (freeing,
 * synchronising a faulted device) fails too, with messages that say nothing
 * of the cause. A failure is pending from pb_fail / pb_fail_context until
 * pb_error_clear. */
/* Records like pb_fail, but only when no failure is pending: for paths that
 * cannot return a status (free, destroy), whose failures are consequences. */
pb_status pb_fail_cleanup(pb_status status, const char *fmt, ...) PB_PRINTF(2, 3);
/* Forgets the message and the pending failure. */
void pb_error_clear(void);

#define PB_ERROR_CAPACITY 1024 /* bytes of a message, its NUL included */

/* The message and pending flag, kept across cleanup that reports through
 * pb_fail (a status-returning call made only to wind down): save before,
 * restore after, and the first failure's message is what callers see. */
typedef struct pb_error_saved {
    char message[PB_ERROR_CAPACITY];
    int pending;
} pb_error_saved;
void pb_error_save(pb_error_saved *saved);
void pb_error_restore(const pb_error_saved *saved);

/* a * b and a + b without wrap-around; return 0 on overflow. */
static inline int pb_mul_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_mul_overflow(a, b, out); }
static inline int pb_add_u64(uint64_t a, uint64_t b, uint64_t *out) { return !__builtin_add_overflow(a, b, out); }

#define PB_TRY(expr)                       \
    do {                                   \
        pb_status pb_try_status_ = (expr); \
        if (pb_try_status_ != PB_OK)       \
            return pb_try_status_;         \
    } while (0)

#endif
