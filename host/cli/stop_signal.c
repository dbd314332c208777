/* The stop flag and its signal handlers (stop_signal.h). */
#define _POSIX_C_SOURCE 200809L
#include <string.h>

#include "cli/stop_signal.h"

volatile sig_atomic_t pb_cli_stop;

static void on_stop_signal(int sig) {
    (void)sig;
    pb_cli_stop = 1;
}

void pb_cli_stop_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGXFSZ, SIG_IGN);
}
