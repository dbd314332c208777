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
/* The whole file, NUL-terminated; *text malloc'd; size may be NULL. */
pb_status pb_read_text_file(const char *path, char **text, size_t *size);
/* pb_read_text_file for an input that may be a pipe or a device (--spec
 * <(jq ...), /dev/stdin): at most max_bytes (PB_ERR_ARG naming the cap in
 * MiB beyond it), and given up with PB_ERR_INTERRUPTED once *stop (a
 * signal handler's flag; may be NULL) is set, also while waiting for a
 * FIFO's writer. Waits in poll(), looking at *stop at least every 200 ms. */
pb_status pb_read_input_file(const char *path, size_t max_bytes, const volatile int *stop, char **text, size_t *size);

#endif
