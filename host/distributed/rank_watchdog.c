/* The rank watchdog thread (rank_watchdog.h): a timer around MPI_Init and
 * MPI_Finalize, heartbeats with rank 0 in between. */
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "distributed/distribute.h"
#include "util/internal.h"
#include "distributed/rank_watchdog.h"

#ifdef PB_HAVE_MPI
#include <mpi.h>

enum { TAG_HEARTBEAT = 7103 };
/* A pause of this thread longer than this (ticks are 0.1 s at most) is the
 * process being stopped or starved, not the partners falling silent. */
static const double PB_RANK_WATCHDOG_OWN_GAP_S = 1.0;

typedef enum watch_phase {
    WATCH_STARTING,   /* MPI_Init running: a timer */
    WATCH_RUNNING,    /* heartbeats */
    WATCH_FINALIZING, /* MPI_Finalize running: a timer */
    WATCH_DONE,       /* the thread leaves */
} watch_phase;

struct pb_rank_watchdog {
    pthread_mutex_t lock; /* the fields below, and every MPI call of the process */
    pthread_cond_t wake;  /* phase changes */
    pthread_t thread;
    watch_phase phase;
    int rank, size;
    double timeout_s, beat_s, tick_s;
    double phase_since; /* when the phase began (the timers count from it) */
    double next_beat;
    double last_check;      /* when the thread last looked (RUNNING) */
    int stage;              /* this rank's pb_rank_stage */
    double *last_heard;     /* (size) when each partner's last heartbeat came */
    int *peer_stage;        /* (size) the stage it carried */
    unsigned char *watched; /* (size) 1: a partner this rank watches and beats to */
    MPI_Request *beats;     /* (size) the heartbeat in flight to each partner */
    int *beat_stage;        /* (size) its payload: stays valid until the send completes */
    int failed;
    char message[512];
    pb_rank_stuck_fn on_stuck;
    void *user;
};

double pb_rank_watchdog_beat_s(double timeout_s) {
    double beat = timeout_s / 4;
    return beat < 0.05 ? 0.05 : beat > 1.0 ? 1.0 : beat;
}

double pb_rank_watchdog_tick_s(double timeout_s) {
    double tick = pb_rank_watchdog_beat_s(timeout_s) / 2;
    return tick > 0.1 ? 0.1 : tick;
}

/* ---- the thread's checks (called with the lock held) ---------------------- */

static void fail_locked(pb_rank_watchdog *w, const char *fmt, ...) PB_PRINTF(2, 3);
static void fail_locked(pb_rank_watchdog *w, const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(w->message, sizeof w->message, fmt, args);
    va_end(args);
    w->failed = 1;
}

/* MPI_Init waits for every rank (OpenMPI's modex fence), so whoever never
 * arrived cannot be asked; with two ranks it can only be the other one. */
static void check_init(pb_rank_watchdog *w, double now) {
    if (now - w->phase_since <= w->timeout_s)
        return;
    if (w->size == 2)
        fail_locked(w,
                    "rank %d of 2: MPI_Init did not complete within %g s: rank %d never reached it (dead or "
                    "stuck in start-up)",
                    w->rank, w->timeout_s, 1 - w->rank);
    else
        fail_locked(w,
                    "rank %d of %d: MPI_Init did not complete within %g s: one of the other %d ranks never "
                    "reached it (dead or stuck in start-up; MPI_Init cannot tell which)",
                    w->rank, w->size, w->timeout_s, w->size - 1);
}

static void check_finalize(pb_rank_watchdog *w, double now) {
    if (now - w->phase_since > w->timeout_s)
        fail_locked(w,
                    "rank %d of %d: MPI_Finalize did not return within %g s: another rank stopped after the "
                    "results were settled",
                    w->rank, w->size, w->timeout_s);
}

static void receive_beats(pb_rank_watchdog *w, double now) {
    for (;;) {
        int flag = 0, stage = 0;
        MPI_Status st;
        MPI_Iprobe(MPI_ANY_SOURCE, TAG_HEARTBEAT, MPI_COMM_WORLD, &flag, &st);
        if (!flag)
            return;
        MPI_Recv(&stage, 1, MPI_INT, st.MPI_SOURCE, TAG_HEARTBEAT, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        w->last_heard[st.MPI_SOURCE] = now;
        w->peer_stage[st.MPI_SOURCE] = stage;
    }
}

/* One heartbeat to each watched partner, unless the last one is still in
 * flight (a stopped partner stops taking them; they must not pile up). */
static void send_beats(pb_rank_watchdog *w, double now) {
    if (now < w->next_beat)
        return;
    w->next_beat = now + w->beat_s;
    for (int p = 0; p < w->size; p++) {
        if (!w->watched[p])
            continue;
        int done = 1;
        if (w->beats[p] != MPI_REQUEST_NULL)
            MPI_Test(&w->beats[p], &done, MPI_STATUS_IGNORE);
        if (!done)
            continue;
        w->beat_stage[p] = w->stage;
        MPI_Isend(&w->beat_stage[p], 1, MPI_INT, p, TAG_HEARTBEAT, MPI_COMM_WORLD, &w->beats[p]);
    }
}

/* This thread did not run for a while (the process was stopped, or starved):
 * partners cannot be judged over that time, so it does not count as their
 * silence. Otherwise a rank stopped and continued would blame the others. */
static void skip_own_gap(pb_rank_watchdog *w, double now) {
    double gap = now - w->last_check;
    w->last_check = now;
    if (gap <= PB_RANK_WATCHDOG_OWN_GAP_S)
        return;
    for (int p = 0; p < w->size; p++)
        w->last_heard[p] += gap;
}

static void check_partners(pb_rank_watchdog *w, double now) {
    for (int p = 0; p < w->size; p++) {
        double silent = now - w->last_heard[p];
        if (!w->watched[p] || silent <= w->timeout_s)
            continue;
        fail_locked(w,
                    "rank %d of %d, %s: no heartbeat from rank %d for %.1f s (--rank-timeout %g s); it was "
                    "last heard %s: rank %d is dead or stuck",
                    w->rank, w->size, pb_rank_stage_name(w->stage), p, silent, w->timeout_s,
                    pb_rank_stage_name(w->peer_stage[p]), p);
        return;
    }
}

static void check_locked(pb_rank_watchdog *w) {
    double now = pb_now_seconds();
    if (w->phase == WATCH_STARTING) {
        check_init(w, now);
    } else if (w->phase == WATCH_FINALIZING) {
        check_finalize(w, now);
    } else if (w->phase == WATCH_RUNNING) {
        /* what arrived first: a late tick of this thread is not a partner's silence */
        skip_own_gap(w, now);
        receive_beats(w, now);
        send_beats(w, now);
        check_partners(w, now);
    }
}

static void *watch_main(void *arg) {
    pb_rank_watchdog *w = arg;
    pthread_mutex_lock(&w->lock);
    while (w->phase != WATCH_DONE) {
        if (!w->failed) {
            check_locked(w);
            if (w->failed && w->on_stuck) {
                char message[sizeof w->message];
                memcpy(message, w->message, sizeof message);
                pthread_mutex_unlock(&w->lock);
                w->on_stuck(message, w->user); /* usually ends the process */
                pthread_mutex_lock(&w->lock);
            }
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        long ns = until.tv_nsec + (long)(w->tick_s * 1e9);
        until.tv_sec += ns / 1000000000L;
        until.tv_nsec = ns % 1000000000L;
        if (w->phase != WATCH_DONE)
            pthread_cond_timedwait(&w->wake, &w->lock, &until);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

/* ---- the owner's side --------------------------------------------------------- */

static void watchdog_free(pb_rank_watchdog *w) {
    free(w->last_heard);
    free(w->peer_stage);
    free(w->watched);
    free(w->beats);
    free(w->beat_stage);
    free(w);
}

pb_status pb_rank_watchdog_start(pb_rank_watchdog **out, int rank, int size, double timeout_s,
                                 pb_rank_stuck_fn on_stuck, void *user) {
    *out = NULL;
    if (size < 1 || rank < 0 || rank >= size || !(timeout_s > 0))
        return pb_fail(PB_ERR_ARG, "rank watchdog: rank %d of %d, timeout %g s", rank, size, timeout_s);
    pb_rank_watchdog *w = calloc(1, sizeof *w);
    if (!w)
        return pb_fail(PB_ERR_OOM, "out of memory for the rank watchdog");
    w->rank = rank;
    w->size = size;
    w->timeout_s = timeout_s;
    w->beat_s = pb_rank_watchdog_beat_s(timeout_s);
    w->tick_s = pb_rank_watchdog_tick_s(timeout_s);
    w->on_stuck = on_stuck;
    w->user = user;
    w->phase = WATCH_STARTING;
    w->phase_since = pb_now_seconds();
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->wake, NULL);
    if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
        pthread_cond_destroy(&w->wake);
        pthread_mutex_destroy(&w->lock);
        watchdog_free(w);
        return pb_fail(PB_ERR_UNSUPPORTED, "cannot start the rank watchdog thread");
    }
    *out = w;
    return PB_OK;
}

/* Partners: rank 0 watches every rank, every other rank watches rank 0. */
static int alloc_partners(pb_rank_watchdog *w, double now) {
    size_t n = (size_t)w->size;
    w->last_heard = calloc(n, sizeof *w->last_heard);
    w->peer_stage = calloc(n, sizeof *w->peer_stage);
    w->watched = calloc(n, sizeof *w->watched);
    w->beats = calloc(n, sizeof *w->beats);
    w->beat_stage = calloc(n, sizeof *w->beat_stage);
    if (!w->last_heard || !w->peer_stage || !w->watched || !w->beats || !w->beat_stage)
        return 0;
    for (int p = 0; p < w->size; p++) {
        w->last_heard[p] = now;
        w->beats[p] = MPI_REQUEST_NULL;
        w->watched[p] = p != w->rank && (w->rank == 0 || p == 0);
    }
    return 1;
}

void pb_rank_watchdog_running(pb_rank_watchdog *w, int rank, int size) {
    pthread_mutex_lock(&w->lock);
    w->rank = rank;
    w->size = size;
    double now = pb_now_seconds();
    if (!alloc_partners(w, now))
        fail_locked(w, "rank %d of %d: out of memory for the rank watchdog", rank, size);
    w->phase = WATCH_RUNNING;
    w->phase_since = now;
    w->next_beat = now;
    w->last_check = now;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

void pb_rank_watchdog_set_stage(pb_rank_watchdog *w, int stage) {
    pthread_mutex_lock(&w->lock);
    if (w->stage != stage) {
        /* say it now: a stage shorter than a beat would otherwise go unheard,
         * and a rank stopped in the next one be named by a stale stage */
        w->stage = stage;
        w->next_beat = 0;
        pthread_cond_signal(&w->wake);
    }
    pthread_mutex_unlock(&w->lock);
}

void pb_rank_watchdog_forget(pb_rank_watchdog *w, int peer) {
    pthread_mutex_lock(&w->lock);
    if (w->watched && peer >= 0 && peer < w->size)
        w->watched[peer] = 0;
    pthread_mutex_unlock(&w->lock);
}

int pb_rank_watchdog_failed(pb_rank_watchdog *w, char *message, size_t size) {
    pthread_mutex_lock(&w->lock);
    int failed = w->failed;
    if (failed && message && size)
        snprintf(message, size, "%s", w->message);
    pthread_mutex_unlock(&w->lock);
    return failed;
}

void pb_rank_watchdog_finalizing(pb_rank_watchdog *w) {
    pthread_mutex_lock(&w->lock);
    /* A heartbeat still in flight completes (or not) on its own; MPI_Finalize
     * times out on a partner that stopped taking them anyway. */
    for (int p = 0; w->beats && p < w->size; p++)
        if (w->beats[p] != MPI_REQUEST_NULL)
            MPI_Request_free(&w->beats[p]);
    w->phase = WATCH_FINALIZING;
    w->phase_since = pb_now_seconds();
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
}

void pb_rank_watchdog_stop(pb_rank_watchdog *w) {
    if (!w)
        return;
    pthread_mutex_lock(&w->lock);
    w->phase = WATCH_DONE;
    pthread_cond_signal(&w->wake);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->wake);
    pthread_mutex_destroy(&w->lock);
    watchdog_free(w);
}

void pb_rank_watchdog_lock(pb_rank_watchdog *w) { pthread_mutex_lock(&w->lock); }
void pb_rank_watchdog_unlock(pb_rank_watchdog *w) { pthread_mutex_unlock(&w->lock); }

int pb_rank_watchdog_lock_running(pb_rank_watchdog *w) {
    pthread_mutex_lock(&w->lock);
    if (w->phase == WATCH_RUNNING)
        return 1;
    pthread_mutex_unlock(&w->lock);
    return 0;
}

#else
/* Without MPI there is one rank and nothing to watch. */
typedef int pb_rank_watchdog_unused;
#endif
