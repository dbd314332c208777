/* Distribution glue for sweeps over several processes (ranks): who we are
 * (MPI, or Slurm's environment), each rank's share of rows by estimated
 * cost, the gather of every rank's results to rank 0, and a watchdog
 * (rank_watchdog.h) that names a rank which stopped answering, at any stage
 * of the job, within the rank timeout, so a dead or stuck rank fails the job
 * instead of hanging it. Built with MPI when CMake finds it (PB_HAVE_MPI);
 * without it only one rank exists. Nothing here prints or exits: the owner
 * of the pb_ranks reports and ends the job. */
#ifndef PB_DISTRIBUTE_H
#define PB_DISTRIBUTE_H

#include <stdint.h>

#include "patchbay.h"

typedef struct pb_rank_watchdog pb_rank_watchdog;

/* Where a rank is in a job; sent with its heartbeats so that a silent
 * rank's message says what it was doing. */
typedef enum pb_rank_stage {
    PB_RANK_STARTING,  /* MPI up: loading the model, planning the share */
    PB_RANK_SWEEPING,  /* running its share of the rows */
    PB_RANK_GATHERING, /* sending or gathering the results */
    PB_RANK_FINISHING, /* rank 0 writing the results or the checkpoint; the others waiting for its verdict */
} pb_rank_stage;
/* "while starting (...)", etc.: for messages. */
const char *pb_rank_stage_name(int stage);

/* Called once, from the watchdog's thread, when a rank (this one's partner,
 * or one that MPI_Init / MPI_Finalize waits for) was silent for the rank
 * timeout. message names the rank. The callee reports and ends the job:
 * pb_ranks_abort, then _exit (MPI_Init or MPI_Finalize may be waiting on
 * the stuck rank, and only leaving the process ends that). If it returns,
 * every later wait in this file fails with the message. */
typedef void (*pb_ranks_stuck_fn)(const char *message, void *user);

typedef struct pb_ranks_options {
    double timeout_s;           /* how long a rank may be silent; <= 0: 120 s */
    pb_ranks_stuck_fn on_stuck; /* NULL: waits fail, nothing else happens */
    void *user;                 /* passed to on_stuck */
} pb_ranks_options;

typedef struct pb_ranks {
    int rank; /* 0 .. size-1 */
    int size;
    int local_rank;          /* on this node (selects the GPU when a task sees several) */
    int mpi;                 /* 1 when MPI was initialised here */
    double timeout_s;        /* how long a rank may be silent before it is named and the job aborted */
    pb_rank_watchdog *watch; /* with MPI: the watchdog thread; NULL otherwise */
} pb_ranks;

/* Detects a launch under mpirun / srun (OMPI_COMM_WORLD_SIZE, PMIX_RANK,
 * PMI_SIZE, SLURM_NTASKS > 1) and initialises MPI then (asking for
 * MPI_THREAD_MULTIPLE, needing MPI_THREAD_SERIALIZED: the watchdog thread
 * makes MPI calls, under one lock with this file's); a plain launch is one
 * rank without MPI. The watchdog starts before MPI_Init (which waits for
 * every rank) and watches until pb_ranks_finalize returns. When the task sees
 * several GPUs (CUDA_VISIBLE_DEVICES lists more than one), narrows it to the
 * local rank's, so that "GPU 0" of the CUDA backend is this rank's GPU.
 * options may be NULL (defaults). PB_ERR_UNSUPPORTED when launched with
 * several tasks by a build without MPI. */
pb_status pb_ranks_init(pb_ranks *ranks, int *argc, char ***argv, const pb_ranks_options *options);
/* MPI_Finalize (timed by the watchdog), then the watchdog stops. */
void pb_ranks_finalize(pb_ranks *ranks);
/* With MPI running, ends every rank of the job (MPI_Abort) and does not
 * return; returns at once otherwise (no MPI, or MPI_Init / MPI_Finalize in
 * progress: the caller leaves the process itself). Prints nothing. */
void pb_ranks_abort(pb_ranks *ranks, int code);
/* This rank's stage, for its heartbeats. */
void pb_ranks_set_stage(pb_ranks *ranks, pb_rank_stage stage);

/* Rows of rank `rank` of `size`: a contiguous run of row indices whose
 * estimated cost (pb_sweep_row_cost, plus two forwards per pair whose caches
 * the share builds; rows already done cost nothing) is about 1/size of the
 * total. An estimate ("atp", "atp*") is cut at pairs only: a pair's
 * passes (pb_atp_flops) run on one rank. *rows is malloc'd. costs
 * (optional, size entries) receives every rank's estimated cost. */
pb_status pb_sweep_partition(const pb_sweep *sweep, int rank, int size, int64_t **rows, int64_t *n_rows, double *costs);

/* After each rank ran its share (status: PB_OK, PB_ERR_INTERRUPTED or a
 * failure): every rank sends its done rows of the share, its pair baselines,
 * counts and status to rank 0, which merges them into its sweep. Rank 0
 * waits for every report as long as the watchdog hears from its rank (a
 * slow share is not a stuck one); PB_ERR_IO with the watchdog's message,
 * naming the rank, once one was silent for the timeout. On rank 0,
 * *job_status becomes the worst status of any rank (a failure beats an
 * interruption) and rank_seconds (size entries, optional) the seconds each
 * rank spent on its share. Does not abort the job: on failure, the caller
 * does (pb_ranks_abort). */
pb_status pb_ranks_gather(pb_ranks *ranks, pb_sweep *sweep, const int64_t *share, int64_t n_share, pb_status own_status,
                          double own_seconds, pb_status *job_status, double *rank_seconds);

/* The same gather for GPU ranks over NCCL: each rank's report, padded to the
 * largest share's length, goes through one ncclAllGather on a non-blocking
 * communicator (its ncclUniqueId broadcast from rank 0 over MPI, polled
 * while the watchdog hears every rank, like pb_ranks_gather); NCCL's init
 * and gather wait at most own_seconds + timeout_s (NCCL has no timeout of
 * its own; the watchdog, which keeps running, usually names a stuck rank
 * first), then the communicator is aborted and the gather fails naming this
 * rank. Works with a single rank and no MPI (the gather then only
 * round-trips this rank's report through NCCL, which is checked byte for
 * byte). Needs the CUDA backend (device buffers from the sweep model's
 * backend). Does not abort the job. */
pb_status pb_ranks_gather_nccl(pb_ranks *ranks, pb_sweep *sweep, const int64_t *share, int64_t n_share,
                               pb_status own_status, double own_seconds, pb_status *job_status, double *rank_seconds);

/* The job's end: rank 0 sends every rank the job's exit code (code) and
 * waits until each acknowledged it; the others wait for it and acknowledge.
 * *out is rank 0's code on every rank. The waits last as long as the
 * watchdog hears the partner; PB_ERR_IO with its message otherwise. After
 * it, partners stop watching each other (a rank that leaves is not
 * silent); MPI_Finalize is timed by the watchdog. */
pb_status pb_ranks_exit_code(pb_ranks *ranks, int code, int *out);

#endif
