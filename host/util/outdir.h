/* Output directories and whole-file reads shared by the commands and the
 * writers. */
#ifndef PB_OUTDIR_H
#define PB_OUTDIR_H

#include <stddef.h>

#include "patchbay.h"

/* Checks, before any compute, that dir can receive a run's outputs: an
 * existing directory that is empty (or overwrite) and writable, or a
 * missing path whose nearest existing ancestor is a writable directory.
 * Creates nothing. PB_ERR_ARG / PB_ERR_IO with a message naming dir (and
 * --overwrite when that is the way out). */
pb_status pb_out_dir_check(const char *dir, int overwrite);
/* pb_out_dir_check, then mkdir -p. */
pb_status pb_out_dir_create(const char *dir, int overwrite);
/* Checks, before any compute, that a file can be written at path (a
 * checkpoint): its folder exists and takes a new file, by creating, writing
 * one byte to and removing a probe file there (.patchbay-probe.<pid>), so a
 * read-only file system, a full disk or missing permissions show now, not
 * when the file is due. PB_ERR_IO naming path, its folder and the reason. */
pb_status pb_file_probe_writable(const char *path);
/* Removes stale temporary files of our own naming from dir: regular files
 * "<name>.tmp.<pid>" (pb_write_file_atomic's) whose process no longer
 * exists on this machine (kill(pid, 0) says ESRCH), left by a process that
 * was killed while writing. A live process's files, this one's included,
 * are kept. prefix: only files whose <name> is exactly prefix (NULL: any
 * name). *n_removed: how many. A missing dir is no error. */
pb_status pb_remove_stale_temps(const char *dir, const char *prefix, int *n_removed);
/* The whole file, NUL-terminated; *text malloc'd; size may be NULL. */
pb_status pb_read_text_file(const char *path, char **text, size_t *size);

#endif
