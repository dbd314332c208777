/* The CUDA device of each rank (rank_device.h). */
#include <stdlib.h>

#ifdef PB_HAVE_MPI
#include <mpi.h>
#endif

#include "util/internal.h"
#include "distributed/rank_device.h"

const char *pb_env_process(const char *name) { return getenv(name); }

int pb_rank_local_from_env(pb_env_lookup env) {
    /* Launcher-specific names first: SLURM_LOCALID counts srun's tasks,
     * which under mpirun-inside-an-allocation are not the MPI ranks. */
    static const char *const names[] = {"OMPI_COMM_WORLD_LOCAL_RANK",
                                        "MV2_COMM_WORLD_LOCAL_RANK",
                                        "MPI_LOCALRANKID",
                                        "PMI_LOCAL_RANK",
                                        "PALS_LOCAL_RANKID",
                                        "SLURM_LOCALID"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *value = env(names[i]);
        if (!value || !*value)
            continue;
        char *end = NULL;
        long rank = strtol(value, &end, 10);
        if (*end == 0 && rank >= 0 && rank <= 1000000)
            return (int)rank;
    }
    return -1;
}

pb_status pb_rank_local_from_mpi(int *local_rank) {
    *local_rank = -1;
#ifdef PB_HAVE_MPI
    MPI_Comm node;
    if (MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) != MPI_SUCCESS)
        return pb_fail(PB_ERR_UNSUPPORTED, "MPI_Comm_split_type(MPI_COMM_TYPE_SHARED) failed");
    int rank = -1;
    int ok = MPI_Comm_rank(node, &rank) == MPI_SUCCESS;
    MPI_Comm_free(&node);
    if (!ok)
        return pb_fail(PB_ERR_UNSUPPORTED, "MPI_Comm_rank on the node's communicator failed");
    *local_rank = rank;
    return PB_OK;
#else
    return pb_fail(PB_ERR_UNSUPPORTED, "no MPI in this build: the node-local rank comes from the launcher only");
#endif
}

int pb_rank_device_choose(int requested, int local_rank, int device_count) {
    if (requested >= 0)
        return requested;
    if (local_rank < 0 || device_count <= 0)
        return 0;
    return local_rank % device_count;
}
