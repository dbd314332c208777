/* NCCL all-gather of per-row metric values between GPU ranks: one
 * non-blocking communicator per job, its own stream, and every wait polled
 * with ncclCommGetAsyncError against a deadline so a dead or stuck peer
 * aborts the communicator (ncclCommAbort) and fails with a message naming
 * this rank instead of hanging in NCCL, which has no timeout of its own.
 *
 * UNTESTED: written and compiled (sm_80, sm_90) on a machine without a GPU;
 * no line of it has run. Its caller is pb_ranks_gather_nccl
 * (host/distributed/distribute.c: `patchbay sweep --backend cuda` on several ranks, or
 * --gather nccl), which sends the ncclUniqueId over MPI. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cuda_check.h"

extern "C" {
#include "backend/backend_cuda.h"
}

static_assert(PB_NCCL_ID_BYTES == NCCL_UNIQUE_ID_BYTES, "PB_NCCL_ID_BYTES must match nccl.h");

struct pb_nccl_gather {
    ncclComm_t comm;
    cudaStream_t stream;
    int rank, size;
    double timeout_s;
    int aborted; /* after a failure the communicator is gone */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nap(void) {
    struct timespec ts = {0, 1000 * 1000};
    nanosleep(&ts, NULL);
}

/* Aborts the communicator (safe on a half-initialised one) and records why. */
static pb_status abort_comm(pb_nccl_gather *g, const char *what, const char *why) {
    if (!g->aborted && g->comm)
        (void)ncclCommAbort(g->comm); /* its own failure changes nothing now */
    g->comm = NULL;
    g->aborted = 1;
    return pb_fail(PB_ERR_CUDA, "NCCL rank %d of %d: %s: %s; communicator aborted", g->rank, g->size, what, why);
}

/* Waits until the communicator's pending operation settles (init: state
 * leaves ncclInProgress) or, with stream_done, until the stream is idle. */
static pb_status wait_settled(pb_nccl_gather *g, const char *what, int stream_done) {
    double deadline = now_s() + g->timeout_s;
    for (;;) {
        ncclResult_t state = ncclSuccess;
        ncclResult_t r = ncclCommGetAsyncError(g->comm, &state);
        if (r != ncclSuccess)
            return abort_comm(g, what, ncclGetErrorString(r));
        if (state != ncclSuccess && state != ncclInProgress)
            return abort_comm(g, what, ncclGetErrorString(state));
        if (state == ncclSuccess) {
            if (!stream_done)
                return PB_OK;
            cudaError_t q = cudaStreamQuery(g->stream);
            if (q == cudaSuccess)
                return PB_OK;
            if (q != cudaErrorNotReady)
                return abort_comm(g, what, cudaGetErrorString(q));
        }
        if (now_s() > deadline) {
            char why[96];
            snprintf(why, sizeof why, "not done within %.0f s (a peer is dead or stuck)", g->timeout_s);
            return abort_comm(g, what, why);
        }
        nap();
    }
}

extern "C" pb_status pb_nccl_id_create(unsigned char id[PB_NCCL_ID_BYTES]) {
    if (!id)
        return pb_fail(PB_ERR_ARG, "pb_nccl_id_create: id is NULL");
    ncclUniqueId uid;
    PB_NCCL_CHECK(ncclGetUniqueId(&uid));
    memcpy(id, uid.internal, PB_NCCL_ID_BYTES);
    return PB_OK;
}

extern "C" pb_status pb_nccl_gather_create(pb_nccl_gather **out, const unsigned char id[PB_NCCL_ID_BYTES], int rank,
                                           int size, double timeout_s) {
    if (!out || !id || size < 1 || rank < 0 || rank >= size || !(timeout_s > 0))
        return pb_fail(PB_ERR_ARG, "pb_nccl_gather_create: rank %d of %d, timeout %g s", rank, size, timeout_s);
    *out = NULL;
    pb_nccl_gather *g = (pb_nccl_gather *)calloc(1, sizeof *g);
    if (!g)
        return pb_fail(PB_ERR_OOM, "out of memory for the NCCL communicator");
    g->rank = rank;
    g->size = size;
    g->timeout_s = timeout_s;
    cudaError_t e = cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
        free(g);
        PB_CUDA_CHECK(e);
    }
    ncclUniqueId uid;
    memcpy(uid.internal, id, PB_NCCL_ID_BYTES);
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    pb_status st = PB_OK;
    ncclResult_t r = ncclCommInitRankConfig(&g->comm, size, uid, rank, &config);
    if (r != ncclSuccess && r != ncclInProgress)
        st = abort_comm(g, "ncclCommInitRankConfig", ncclGetErrorString(r));
    else
        st = wait_settled(g, "ncclCommInitRankConfig", 0);
    if (st != PB_OK) {
        PB_CUDA_CHECK_VOID(cudaStreamDestroy(g->stream));
        free(g);
        return st;
    }
    *out = g;
    return PB_OK;
}

extern "C" pb_status pb_nccl_gather_doubles(pb_nccl_gather *g, const double *send, double *recv, size_t count) {
    if (!g || (count && (!send || !recv)))
        return pb_fail(PB_ERR_ARG, "pb_nccl_gather_doubles: communicator and device buffers are required");
    if (g->aborted)
        return pb_fail(PB_ERR_CUDA, "NCCL rank %d of %d: the communicator was aborted by an earlier failure", g->rank,
                       g->size);
    ncclResult_t r = ncclAllGather(send, recv, count, ncclFloat64, g->comm, g->stream);
    if (r != ncclSuccess && r != ncclInProgress)
        return abort_comm(g, "ncclAllGather", ncclGetErrorString(r));
    return wait_settled(g, "ncclAllGather", 1);
}

extern "C" void pb_nccl_gather_free(pb_nccl_gather *g) {
    if (!g)
        return;
    /* Like PB_CUDA_CHECK_VOID: a failure while winding down is recorded only
     * when none is pending (wait_settled and abort_comm report via pb_fail). */
    pb_error_saved before;
    pb_error_save(&before);
    if (!g->aborted && g->comm) {
        /* A non-blocking destroy may return ncclInProgress; finalize first
         * so pending work completes, then destroy. */
        ncclResult_t r = ncclCommFinalize(g->comm);
        if (r == ncclSuccess || r == ncclInProgress) {
            if (wait_settled(g, "ncclCommFinalize", 0) == PB_OK) {
                ncclResult_t d = ncclCommDestroy(g->comm);
                if (d != ncclSuccess && d != ncclInProgress)
                    (void)pb_fail_cleanup(PB_ERR_CUDA, "ncclCommDestroy failed: %s", ncclGetErrorString(d));
            }
        } else {
            (void)abort_comm(g, "ncclCommFinalize", ncclGetErrorString(r));
        }
    }
    if (before.pending)
        pb_error_restore(&before);
    if (g->stream)
        PB_CUDA_CHECK_VOID(cudaStreamDestroy(g->stream));
    free(g);
}
