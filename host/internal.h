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

/* a * b and a + b without wrap-around; return 0 on overflow. */
static inline int pb_mul_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_mul_overflow(a, b, out);
}
static inline int pb_add_u64(uint64_t a, uint64_t b, uint64_t *out) {
    return !__builtin_add_overflow(a, b, out);
}

#define PB_TRY(expr)                         \
    do {                                     \
        pb_status pb_try_status_ = (expr);   \
        if (pb_try_status_ != PB_OK)         \
            return pb_try_status_;           \
    } while (0)

#endif
