/* Stopping a long command on request: SIGTERM, SIGUSR1 (Slurm's warning
 * before a time limit) and SIGINT set one flag, which the library polls
 * through its options' stop pointers (a sweep between batches, then its
 * checkpoint; an export between tensors, then no output). */
#ifndef PB_CLI_STOP_SIGNAL_H
#define PB_CLI_STOP_SIGNAL_H

#include <signal.h>

/* 1 once a stop signal arrived. */
extern volatile sig_atomic_t pb_cli_stop;

/* Installs the handlers, which stay until the process exits: a second
 * signal (a second Ctrl-C, scancel's repeated SIGTERM) only sets the flag
 * again, so it cannot cut a checkpoint short (SIGKILL still ends the process
 * at once). Also ignores SIGXFSZ: a file size limit (RLIMIT_FSIZE) makes a
 * write fail with EFBIG, reported like a full disk, instead of killing the
 * process before it can keep what it computed. */
void pb_cli_stop_install(void);

#endif
