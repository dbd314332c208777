/* Output-directory checks, write probes, stale temporary files and whole-file
 * reads (see outdir.h). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/array.h"
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

/* Creates, writes one byte to and removes folder/.patchbay-probe.<pid>: 0,
 * or the errno of the step that failed (*created: whether the file was
 * made). A real write, where access() would say yes to root on a read-only
 * or pseudo file system (/sys, /proc). */
static int probe_folder(const char *folder, int *created) {
    char probe[4200];
    snprintf(probe, sizeof probe, "%s/.patchbay-probe.%ld", folder, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
    *created = fd >= 0;
    if (fd < 0)
        return errno;
    int failed = write(fd, "x", 1) != 1 ? errno : 0;
    if (close(fd) != 0 && !failed)
        failed = errno;
    unlink(probe);
    return failed;
}

/* 0 when folder is a directory that takes a new file (probe_folder), else
 * the errno that says why not. */
static int folder_writable(const char *folder) {
    struct stat st;
    if (stat(folder, &st) != 0)
        return errno;
    if (!S_ISDIR(st.st_mode))
        return ENOTDIR;
    int created;
    return probe_folder(folder, &created);
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
            return pb_fail(
                PB_ERR_ARG,
                "output directory %s is not empty; pass --overwrite to replace its files (Python: overwrite=True)",
                dir);
        int created, failed = probe_folder(dir, &created);
        if (failed)
            return pb_fail(PB_ERR_IO, "cannot write into output directory %s: %s", dir, strerror(failed));
        return PB_OK;
    }
    char parent[4096];
    nearest_ancestor(dir, parent, sizeof parent);
    int failed = folder_writable(parent);
    if (failed)
        return pb_fail(PB_ERR_IO, "cannot create output directory %s: %s is not a writable directory (%s)", dir, parent,
                       strerror(failed));
    return PB_OK;
}

int pb_path_has_suffix(const char *path, const char *suffix) {
    size_t a = strlen(path), b = strlen(suffix);
    return a >= b && strcmp(path + a - b, suffix) == 0;
}

void pb_path_folder(const char *path, char *folder, size_t size) {
    snprintf(folder, size, "%s", path);
    char *slash = strrchr(folder, '/');
    if (!slash)
        snprintf(folder, size, ".");
    else if (slash == folder)
        folder[1] = 0;
    else
        *slash = 0;
}

pb_status pb_out_file_check(const char *path, int overwrite) {
    if (!path || !*path)
        return pb_fail(PB_ERR_ARG, "output file: empty path");
    if (strlen(path) >= 4000)
        return pb_fail(PB_ERR_ARG, "output file: path too long");
    struct stat st;
    if (stat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode))
            return pb_fail(PB_ERR_ARG, "output file %s is a directory", path);
        if (!overwrite)
            return pb_fail(PB_ERR_ARG, "output file %s exists; pass --overwrite to replace it (Python: overwrite=True)",
                           path);
    }
    char parent[4096];
    pb_path_folder(path, parent, sizeof parent);
    int failed = folder_writable(parent);
    if (failed)
        return pb_fail(PB_ERR_IO, "cannot write output file %s: %s is not a writable directory (%s)", path, parent,
                       strerror(failed));
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
        if (*used > max_bytes && max_bytes % (1 << 20) == 0)
            return pb_fail(PB_ERR_ARG, "%s holds more than %zu MiB, the most this input may be", path, max_bytes >> 20);
        if (*used > max_bytes)
            return pb_fail(PB_ERR_ARG, "%s holds more than %zu bytes, the most this input may be", path, max_bytes);
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

pb_status pb_file_probe_writable(const char *path) {
    if (!path || !*path || strlen(path) >= 4000)
        return pb_fail(PB_ERR_ARG, "bad file path '%s'", path ? path : "");
    char folder[4096];
    pb_path_folder(path, folder, sizeof folder);
    struct stat st;
    if (stat(folder, &st) != 0)
        return pb_fail(PB_ERR_IO, "cannot write %s: folder %s: %s", path, folder, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return pb_fail(PB_ERR_IO, "cannot write %s: %s is not a folder", path, folder);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return pb_fail(PB_ERR_IO, "cannot write %s: it is a folder", path);
    int created = 0, failed = probe_folder(folder, &created);
    if (failed && !created)
        return pb_fail(PB_ERR_IO, "cannot write %s: cannot create a file in %s: %s", path, folder, strerror(failed));
    if (failed)
        return pb_fail(PB_ERR_IO, "cannot write %s: writing in %s failed: %s", path, folder, strerror(failed));
    return PB_OK;
}

/* The pid of a name "<prefix>.tmp.<digits>" (prefix any non-empty name
 * when want is NULL, else exactly want); 0 when it is not one. */
static long temp_file_pid(const char *name, const char *want) {
    const char *mark = NULL;
    for (const char *p = strstr(name, ".tmp."); p; p = strstr(p + 1, ".tmp."))
        mark = p; /* the last one: "a.tmp.1.tmp.2" is a temporary of "a.tmp.1" */
    if (!mark || mark == name || !mark[5])
        return 0;
    if (want && ((size_t)(mark - name) != strlen(want) || strncmp(name, want, strlen(want)) != 0))
        return 0;
    long pid = 0;
    for (const char *d = mark + 5; *d; d++) {
        if (*d < '0' || *d > '9' || pid > 100000000)
            return 0;
        pid = pid * 10 + (*d - '0');
    }
    return pid;
}

pb_status pb_remove_stale_temps(const char *dir, const char *prefix, int *n_removed) {
    *n_removed = 0;
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? PB_OK : pb_fail(PB_ERR_IO, "cannot read %s: %s", dir, strerror(errno));
    pb_status status = PB_OK;
    for (struct dirent *e; (e = readdir(d));) {
        long pid = temp_file_pid(e->d_name, prefix);
        /* kill(pid, 0) fails with ESRCH only when no such process exists:
         * a live writer's file (EPERM included) is left alone. */
        if (pid <= 0 || pid == (long)getpid() || kill((pid_t)pid, 0) == 0 || errno != ESRCH)
            continue;
        char path[4200];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        if (unlink(path) != 0 && errno != ENOENT) { /* ENOENT: another rank removed it */
            status = pb_fail(PB_ERR_IO, "cannot remove the stale temporary file %s: %s", path, strerror(errno));
            break;
        }
        (*n_removed)++;
    }
    closedir(d);
    return status;
}
pb_status pb_read_text_file(const char *path, char **text, size_t *size) {
    return pb_read_input_file(path, SIZE_MAX / 2, NULL, text, size);
}

/* ---- sets of files that appear together ------------------------------------ */

pb_status pb_file_set_begin(pb_file_set *set, const char *dir) {
    memset(set, 0, sizeof *set);
    if (!dir || !*dir || strlen(dir) >= sizeof set->dir)
        return pb_fail(PB_ERR_ARG, "output directory: empty or too long a path");
    snprintf(set->dir, sizeof set->dir, "%s", dir);
    char path[sizeof set->dir];
    snprintf(path, sizeof path, "%s", dir);
    size_t len = strlen(path);
    for (size_t i = 1; i <= len; i++) {
        if (path[i] != '/' && path[i] != 0)
            continue;
        path[i] = 0;
        if (mkdir(path, 0777) == 0) {
            if (set->n_created < PB_FILE_SET_MAX_CREATED) /* deeper new folders stay on a failure */
                set->created[set->n_created++] = (int)i;  /* the length of dir's prefix it is */
        } else if (errno != EEXIST) {
            return pb_fail(PB_ERR_IO, "cannot create %s: %s", path, strerror(errno));
        }
        path[i] = i < len ? '/' : 0;
    }
    return PB_OK;
}

pb_status pb_file_set_pending(pb_file_set *set, const char *name, char *path, size_t size) {
    PB_TRY(pb_array_reserve(&set->names, &set->cap, (size_t)set->n + 1, sizeof *set->names, "output file names"));
    if (strlen(name) >= PB_FILE_SET_NAME || strchr(name, '/') ||
        snprintf(path, size, "%s/%s.tmp.%ld", set->dir, name, (long)getpid()) >= (int)size)
        return pb_fail(PB_ERR_ARG, "output file name too long: %s/%s", set->dir, name);
    snprintf(set->names[set->n++], PB_FILE_SET_NAME, "%s", name);
    return PB_OK;
}

/* Removes the pending files, and from index `from` on, then the folders
 * the set created (only if empty: rmdir). */
static void file_set_remove(pb_file_set *set, int from, int folders) {
    char path[sizeof set->dir + PB_FILE_SET_NAME + 32];
    for (int i = from; i < set->n; i++) {
        snprintf(path, sizeof path, "%s/%s.tmp.%ld", set->dir, set->names[i], (long)getpid());
        unlink(path);
    }
    for (int i = set->n_created - 1; folders && i >= 0; i--) {
        snprintf(path, sizeof path, "%.*s", set->created[i], set->dir);
        rmdir(path);
    }
    free(set->names);
    set->names = NULL;
    set->n = set->cap = 0;
}

pb_status pb_file_set_commit(pb_file_set *set) {
    char pending[sizeof set->dir + PB_FILE_SET_NAME + 32], final[sizeof set->dir + PB_FILE_SET_NAME + 2];
    for (int i = 0; i < set->n; i++) {
        snprintf(pending, sizeof pending, "%s/%s.tmp.%ld", set->dir, set->names[i], (long)getpid());
        snprintf(final, sizeof final, "%s/%s", set->dir, set->names[i]);
        if (rename(pending, final) != 0) {
            pb_status status = pb_fail(PB_ERR_IO, "cannot rename %s to %s: %s (%d of %d files in place)", pending,
                                       final, strerror(errno), i, set->n);
            file_set_remove(set, i, 0);
            return status;
        }
    }
    file_set_remove(set, set->n, 0);
    return PB_OK;
}

void pb_file_set_discard(pb_file_set *set) { file_set_remove(set, 0, 1); }
