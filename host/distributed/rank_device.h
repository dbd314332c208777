/* Which CUDA device a rank uses: ranks on one node share its GPUs, so each
 * takes the one of its node-local rank unless the user named one. Pure
 * functions (the environment and the device count are passed in), so the
 * choice is tested without a GPU or a launcher. */
#ifndef PB_RANK_DEVICE_H
#define PB_RANK_DEVICE_H

#include "patchbay.h"

/* getenv, or a test's stand-in. */
typedef const char *(*pb_env_lookup)(const char *name);
/* The process environment (getenv) as a pb_env_lookup. */
const char *pb_env_process(const char *name);

/* The node-local rank the launcher exported: the first of
 * OMPI_COMM_WORLD_LOCAL_RANK (Open MPI), MV2_COMM_WORLD_LOCAL_RANK
 * (MVAPICH2), MPI_LOCALRANKID (MPICH / Intel MPI Hydra), PMI_LOCAL_RANK,
 * PALS_LOCAL_RANKID (Cray PALS) and SLURM_LOCALID (srun) that holds a
 * non-negative integer; -1 when none does. */
int pb_rank_local_from_env(pb_env_lookup env);

/* The node-local rank from MPI itself: this rank's place in an
 * MPI_COMM_TYPE_SHARED split of MPI_COMM_WORLD (the ranks sharing its
 * memory, i.e. its node). Needs MPI initialised; PB_ERR_UNSUPPORTED in
 * builds without MPI. */
pb_status pb_rank_local_from_mpi(int *local_rank);

/* The device a rank uses: `requested` when the user gave one (>= 0, taken
 * as is: the backend refuses one out of range); otherwise local_rank %
 * device_count, and 0 when either is unknown (local_rank < 0,
 * device_count <= 0: the backend then says what is missing). */
int pb_rank_device_choose(int requested, int local_rank, int device_count);

#endif
