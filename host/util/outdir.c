/* Output-directory checks and whole-file reads (see outdir.h). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/internal.h"
#include "util/outdir.h"

/* The nearest existing ancestor of a missing path ("." for a relative one). */
static void nearest_ancestor(const char *dir, char *parent, size_t size) {
    snprintf(parent, size, "%s", dir);
    struct stat st;
    for (;;) {
        char *slash = strrchr(parent, '/');
        while (slash && slash > parent && slash[1] == 0) { /* trailing slashes */
            *slash = 0;
            slash = strrchr(parent, '/');
        }
        if (!slash)
            snprintf(parent, size, ".");
        else if (slash == parent)
            parent[1] = 0;
        else
            *slash = 0;
        if (stat(parent, &st) == 0 || strcmp(parent, ".") == 0 || strcmp(parent, "/") == 0)
            return;
    }
}

pb_status pb_out_dir_check(const char *dir, int overwrite) {
    if (!dir || !*dir)
        return pb_fail(PB_ERR_ARG, "output directory: empty path");
    if (strlen(dir) >= 4000)
        return pb_fail(PB_ERR_ARG, "output directory: path too long");
    struct stat st;
    if (stat(dir, &st) == 0) {
        if (!S_ISDIR(st.st_mode))
            return pb_fail(PB_ERR_ARG, "output directory %s exists and is not a directory", dir);
        DIR *d = opendir(dir);
        if (!d)
            return pb_fail(PB_ERR_IO, "cannot read output directory %s: %s", dir, strerror(errno));
        int empty = 1;
        for (struct dirent *e; empty && (e = readdir(d));)
            empty = strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0;
        closedir(d);
        if (!empty && !overwrite)
            return pb_fail(PB_ERR_ARG, "output directory %s is not empty; pass --overwrite to replace its files", dir);
        if (access(dir, W_OK | X_OK) != 0)
            return pb_fail(PB_ERR_IO, "cannot write into output directory %s: %s", dir, strerror(errno));
        return PB_OK;
    }
    char parent[4096];
    nearest_ancestor(dir, parent, sizeof parent);
    if (stat(parent, &st) != 0 || !S_ISDIR(st.st_mode) || access(parent, W_OK | X_OK) != 0)
        return pb_fail(PB_ERR_IO, "cannot create output directory %s: %s is not a writable directory", dir, parent);
    return PB_OK;
}

pb_status pb_out_dir_create(const char *dir, int overwrite) {
    PB_TRY(pb_out_dir_check(dir, overwrite));
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    size_t len = strlen(path);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != 0)
            continue;
        char saved = path[i];
        path[i] = 0;
        if (mkdir(path, 0777) != 0 && errno != EEXIST)
            return pb_fail(PB_ERR_IO, "cannot create %s: %s", path, strerror(errno));
        path[i] = saved;
    }
    return PB_OK;
}

/* Appends what one read() gives to *buf, grown as needed up to one byte
 * past max_bytes (so that a larger input shows): bytes read, 0 at end of
 * file, -1 with errno on failure (EAGAIN: nothing yet). */
static ssize_t read_more(int fd, char **buf, size_t *used, size_t *cap, size_t max_bytes) {
    if (*used == *cap) {
        size_t limit = max_bytes + 1, grown_cap = *cap ? *cap * 2 : 65536;
        if (grown_cap > limit || grown_cap < *cap)
            grown_cap = limit;
        char *grown = realloc(*buf, grown_cap + 1); /* + the NUL */
        if (!grown) {
            errno = ENOMEM;
            return -1;
        }
        *buf = grown;
        *cap = grown_cap;
    }
    ssize_t got = read(fd, *buf + *used, *cap - *used);
    if (got > 0)
        *used += (size_t)got;
    return got;
}

/* Reads fd to its end, waiting in poll() (so a pipe whose writer has not
 * come yet does not block a signal's effect) and looking at *stop between
 * waits. */
static pb_status read_fd(int fd, const char *path, size_t max_bytes, const volatile int *stop, char **buf,
                         size_t *used) {
    size_t cap = 0;
    for (;;) {
        if (stop && *stop)
            return pb_fail(PB_ERR_INTERRUPTED, "reading %s was interrupted by a signal", path);
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int ready = poll(&p, 1, 200); /* wakes to look at *stop even if the signal came just before */
        if (ready < 0 && errno != EINTR)
            return pb_fail(PB_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        if (ready <= 0)
            continue;
        ssize_t got = read_more(fd, buf, used, &cap, max_bytes);
        if (got == 0)
            return PB_OK;
        if (got < 0 && errno == ENOMEM)
            return pb_fail(PB_ERR_OOM, "out of memory reading %s", path);
        if (got < 0 && errno != EAGAIN && errno != EINTR)
            return pb_fail(PB_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        if (*used > max_bytes)
            return pb_fail(PB_ERR_ARG, "%s holds more than %zu MiB, the most this input may be", path, max_bytes >> 20);
    }
}

pb_status pb_read_input_file(const char *path, size_t max_bytes, const volatile int *stop, char **text, size_t *size) {
    *text = NULL;
    /* O_NONBLOCK: opening a FIFO no writer holds yet must not block. */
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return pb_fail(PB_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        close(fd);
        return pb_fail(PB_ERR_IO, "cannot read %s: it is a directory", path);
    }
    char *buf = NULL;
    size_t used = 0;
    pb_status status = read_fd(fd, path, max_bytes, stop, &buf, &used);
    close(fd);
    if (status != PB_OK) {
        free(buf);
        return status;
    }
    if (!buf && !(buf = malloc(1)))
        return pb_fail(PB_ERR_OOM, "out of memory reading %s", path);
    buf[used] = 0;
    *text = buf;
    if (size)
        *size = used;
    return PB_OK;
}

pb_status pb_read_text_file(const char *path, char **text, size_t *size) {
    return pb_read_input_file(path, SIZE_MAX / 2, NULL, text, size);
}
