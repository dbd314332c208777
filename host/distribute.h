/* Distribution glue for sweeps over several processes (ranks): who we are
 * (MPI, or Slurm's environment), each rank's share of rows by estimated
 * cost, and the gather of every rank's results to rank 0 with a deadline so
 * a dead or stuck rank fails the job instead of hanging it. Built with MPI
 * when CMake finds it (PB_HAVE_MPI); without it only one rank exists. */
#ifndef PB_DISTRIBUTE_H
#define PB_DISTRIBUTE_H

#include <stdint.h>

#include "patchbay.h"

typedef struct pb_ranks {
    int rank;          /* 0 .. size-1 */
    int size;
    int local_rank;    /* on this node (selects the GPU when a task sees several) */
    int mpi;           /* 1 when MPI was initialised here */
    double timeout_s;  /* how long past its own share a rank waits for the others */
} pb_ranks;

/* Detects a launch under mpirun / srun (OMPI_COMM_WORLD_SIZE, PMIX_RANK,
 * PMI_SIZE, SLURM_NTASKS > 1) and initialises MPI then; a plain launch is
 * one rank without MPI. When the task sees several GPUs
 * (CUDA_VISIBLE_DEVICES lists more than one), narrows it to the local
 * rank's, so that "GPU 0" of the CUDA backend is this rank's GPU.
 * PB_ERR_UNSUPPORTED when launched with several tasks by a build without MPI. */
pb_status pb_ranks_init(pb_ranks *ranks, int *argc, char ***argv);
void pb_ranks_finalize(pb_ranks *ranks);
/* Ends every rank of the job (MPI_Abort) after printing message; returns only without MPI. */
void pb_ranks_abort(pb_ranks *ranks, int code, const char *message);

/* Rows of rank `rank` of `size`: a contiguous run of row indices whose
 * estimated cost (pb_sweep_row_cost, plus two forwards per pair whose caches
 * the share builds; rows already done cost nothing) is about 1/size of the
 * total. *rows is malloc'd. costs (optional, size entries) receives every
 * rank's estimated cost. */
pb_status pb_sweep_partition(const pb_sweep *sweep, int rank, int size, int64_t **rows, int64_t *n_rows,
                             double *costs);

/* After each rank ran its share (status: PB_OK, PB_ERR_INTERRUPTED or a
 * failure): every rank sends its done rows of the share, its pair baselines,
 * counts and status to rank 0, which merges them into its sweep. Rank 0
 * waits at most own_seconds + timeout_s for the others and then aborts the
 * job naming the ranks that did not report. On rank 0, *job_status becomes
 * the worst status of any rank (a failure beats an interruption) and
 * rank_seconds (size entries, optional) the seconds each rank spent on its
 * share. */
pb_status pb_ranks_gather(pb_ranks *ranks, pb_sweep *sweep, const int64_t *share, int64_t n_share,
                          pb_status own_status, double own_seconds, pb_status *job_status, double *rank_seconds);

/* The same gather for GPU ranks over NCCL: each rank's report, padded to the
 * largest share's length, goes through one ncclAllGather on a non-blocking
 * communicator (its ncclUniqueId broadcast from rank 0 over MPI, polled);
 * init and gather wait at most own_seconds + timeout_s, then the
 * communicator is aborted and the job fails naming this rank. Works with a
 * single rank and no MPI (the gather then only round-trips this rank's
 * report through NCCL, which is checked byte for byte). Needs the CUDA
 * backend (device buffers from the sweep model's backend). */
pb_status pb_ranks_gather_nccl(pb_ranks *ranks, pb_sweep *sweep, const int64_t *share, int64_t n_share,
                               pb_status own_status, double own_seconds, pb_status *job_status,
                               double *rank_seconds);

/* Rank 0 tells every rank the job's exit code; the others wait for it (at
 * most wait_s, then abort naming rank 0) and return it. */
int pb_ranks_exit_code(pb_ranks *ranks, int code, double wait_s);

#endif
