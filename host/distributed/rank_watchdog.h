/* The rank watchdog: one thread per rank that notices, at any stage of a job,
 * a rank that stopped answering, and names it within the rank timeout.
 *
 * While MPI_Init and MPI_Finalize run (both wait for every rank and cannot be
 * polled) it is a timer. In between it exchanges heartbeats over MPI: every
 * rank sends one to rank 0 and rank 0 one to every rank, each carrying the
 * sender's stage; a partner silent for timeout_s is named. Heartbeats come
 * from this thread, not from the sweep, so a long batch is not silence: what
 * it catches is a process that stopped (SIGSTOP, a hung node, a lost link).
 *
 * Every MPI call of the process, from any thread, goes through
 * pb_rank_watchdog_lock, so MPI_THREAD_SERIALIZED is enough. The watchdog
 * never prints and never exits: on a silence it records a message and calls
 * the owner's on_stuck once, from its thread; the owner reports and ends the
 * job (pb_ranks_abort, and _exit when MPI is not running). Internal to
 * host/distributed/distribute.c. */
#ifndef PB_RANK_WATCHDOG_H
#define PB_RANK_WATCHDOG_H

#include <stddef.h>

#include "patchbay.h"

typedef struct pb_rank_watchdog pb_rank_watchdog;
typedef void (*pb_rank_stuck_fn)(const char *message, void *user);

/* Seconds between two heartbeats to the same partner for a timeout: several
 * per timeout, so one late heartbeat is not silence, and at most one a
 * second, so rank 0 of a large job is not flooded. */
double pb_rank_watchdog_beat_s(double timeout_s);
/* How often the thread looks at its partners: at least ten times a second. */
double pb_rank_watchdog_tick_s(double timeout_s);

/* Starts the thread as a timer for MPI_Init: past timeout_s it reports that
 * the other ranks never arrived. rank and size are the launcher's (from the
 * environment: MPI is not up yet). on_stuck may be NULL (then only
 * pb_rank_watchdog_failed tells). */
pb_status pb_rank_watchdog_start(pb_rank_watchdog **out, int rank, int size, double timeout_s,
                                 pb_rank_stuck_fn on_stuck, void *user);
/* MPI_Init returned: heartbeats start, every partner counted as heard now. */
void pb_rank_watchdog_running(pb_rank_watchdog *w, int rank, int size);
/* This rank's stage (a pb_rank_stage), sent with its next heartbeats. */
void pb_rank_watchdog_set_stage(pb_rank_watchdog *w, int stage);
/* Partner `peer` ended cleanly: no more heartbeats to it or watching it. */
void pb_rank_watchdog_forget(pb_rank_watchdog *w, int peer);
/* Nonzero once a partner (or MPI_Init / MPI_Finalize) was found stuck; the
 * message is copied to message (size bytes). */
int pb_rank_watchdog_failed(pb_rank_watchdog *w, char *message, size_t size);
/* Heartbeats stop (outstanding sends are released); the thread times
 * MPI_Finalize, which the caller runs next. */
void pb_rank_watchdog_finalizing(pb_rank_watchdog *w);
/* Stops and joins the thread, frees w. NULL is a no-op. */
void pb_rank_watchdog_stop(pb_rank_watchdog *w);

/* Serialise MPI calls of every thread. */
void pb_rank_watchdog_lock(pb_rank_watchdog *w);
void pb_rank_watchdog_unlock(pb_rank_watchdog *w);
/* Takes the lock and returns 1 when MPI is running (MPI_Abort may be
 * called, and the caller then never unlocks); returns 0 without the lock
 * otherwise (MPI_Init or MPI_Finalize is waiting on a stuck rank). */
int pb_rank_watchdog_lock_running(pb_rank_watchdog *w);

#endif
