/* The one monotonic clock every timer, deadline and benchmark reads. */
#ifndef PB_CLOCK_H
#define PB_CLOCK_H

/* Seconds on CLOCK_MONOTONIC: differences only mean something. */
double pb_now_seconds(void);

#endif
