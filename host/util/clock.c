/* pb_now_seconds (clock.h). */
#define _POSIX_C_SOURCE 200809L
#include <time.h>

#include "util/clock.h"

double pb_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
