/* This machine's memory as this process may use it: the physical memory,
 * or less where the process's control group caps it (a Slurm job's --mem,
 * a container's limit). What a plan and a streamed sweep size themselves
 * by on the host. */
#ifndef PB_HOST_MEMORY_H
#define PB_HOST_MEMORY_H

#include <stddef.h>

#include "patchbay.h"

/* *bytes: physical memory, lowered to the smallest memory limit of this
 * process's control group or any group above it (cgroup v2 memory.max,
 * v1 memory.limit_in_bytes). PB_ERR_ARG when the physical memory cannot
 * be read. */
pb_status pb_host_memory(size_t *bytes);

/* The limit part, read from given places: self_cgroup a file laid out as
 * /proc/self/cgroup, cgroup_root a folder laid out as /sys/fs/cgroup.
 * physical when no group caps it lower (or nothing can be read). */
size_t pb_host_memory_limit(const char *self_cgroup, const char *cgroup_root, size_t physical);

#endif
