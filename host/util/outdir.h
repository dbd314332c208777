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
/* The folder part of a file path: "." when it has none, "/" for "/f". */
void pb_path_folder(const char *path, char *folder, size_t size);
/* 1 when path ends with suffix (".gguf", ".index.json"). */
int pb_path_has_suffix(const char *path, const char *suffix);
/* The same rule for one output file, before any compute: path missing (or
 * overwrite, and not a directory) in an existing writable directory. */
pb_status pb_out_file_check(const char *path, int overwrite);
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
/* pb_read_text_file for an input that may be a pipe or a device (--spec
 * <(jq ...), /dev/stdin): at most max_bytes (PB_ERR_ARG naming the cap in
 * MiB beyond it), and given up with PB_ERR_INTERRUPTED once *stop (a
 * signal handler's flag; may be NULL) is set, also while waiting for a
 * FIFO's writer. Waits in poll(), looking at *stop at least every 200 ms. */
pb_status pb_read_input_file(const char *path, size_t max_bytes, const volatile int *stop, char **text, size_t *size);

/* A set of output files that appear together or not at all (a run's
 * outputs on a full disk must not be half there). Each file is written
 * under a pending name beside its final one, DIR/NAME.tmp.PID (the
 * temporary name every writer here uses); pb_file_set_commit renames them
 * all into place once every one is written, and pb_file_set_discard
 * removes the pending ones and the folders the set created. Files already
 * in DIR stay untouched until the commit replaces those of the same names. */
#define PB_FILE_SET_NAME 256
#define PB_FILE_SET_MAX_CREATED 8
typedef struct pb_file_set {
    char dir[4096];
    char (*names)[PB_FILE_SET_NAME]; /* (cap) final names, n used */
    int n;
    size_t cap;
    int created[PB_FILE_SET_MAX_CREATED]; /* folders mkdir made: lengths of dir's prefixes */
    int n_created;
} pb_file_set;
/* mkdir -p dir, remembering the folders it made. */
pb_status pb_file_set_begin(pb_file_set *set, const char *dir);
/* Adds NAME to the set; its pending path (where to write it) goes to path. */
pb_status pb_file_set_pending(pb_file_set *set, const char *name, char *path, size_t size);
/* Renames every pending file into place, in the order added (a completion
 * marker goes last); on a failed rename, the rest are removed. Ends the set. */
pb_status pb_file_set_commit(pb_file_set *set);
/* Removes the pending files and the folders begin made. Ends the set. */
void pb_file_set_discard(pb_file_set *set);

#endif
