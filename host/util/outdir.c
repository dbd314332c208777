/* Output-directory checks, write probes, stale temporary files and whole-file
 * reads (see outdir.h). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
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

pb_status pb_read_text_file(const char *path, char **text, size_t *size) {
    *text = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return pb_fail(PB_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t used = 0, cap = 0;
    for (;;) {
        if (cap - used < 4096) {
            cap = cap ? cap * 2 : 65536;
            char *grown = realloc(buf, cap + 1);
            if (!grown) {
                free(buf);
                fclose(f);
                return pb_fail(PB_ERR_OOM, "out of memory reading %s", path);
            }
            buf = grown;
        }
        size_t got = fread(buf + used, 1, cap - used, f);
        used += got;
        if (got == 0)
            break;
    }
    int error = ferror(f);
    fclose(f);
    if (error) {
        free(buf);
        return pb_fail(PB_ERR_IO, "cannot read %s", path);
    }
    buf[used] = 0;
    *text = buf;
    if (size)
        *size = used;
    return PB_OK;
}

/* The folder part of a file path ("." when it has none). */
static void folder_of(const char *path, char *folder, size_t size) {
    snprintf(folder, size, "%s", path);
    char *slash = strrchr(folder, '/');
    if (!slash)
        snprintf(folder, size, ".");
    else if (slash == folder)
        folder[1] = 0;
    else
        *slash = 0;
}

pb_status pb_file_probe_writable(const char *path) {
    if (!path || !*path || strlen(path) >= 4000)
        return pb_fail(PB_ERR_ARG, "bad file path '%s'", path ? path : "");
    char folder[4096], probe[4200];
    folder_of(path, folder, sizeof folder);
    struct stat st;
    if (stat(folder, &st) != 0)
        return pb_fail(PB_ERR_IO, "cannot write %s: folder %s: %s", path, folder, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return pb_fail(PB_ERR_IO, "cannot write %s: %s is not a folder", path, folder);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        return pb_fail(PB_ERR_IO, "cannot write %s: it is a folder", path);
    snprintf(probe, sizeof probe, "%s/.patchbay-probe.%ld", folder, (long)getpid());
    int fd = open(probe, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0)
        return pb_fail(PB_ERR_IO, "cannot write %s: cannot create a file in %s: %s", path, folder, strerror(errno));
    int failed = write(fd, "x", 1) != 1 ? errno : 0;
    if (close(fd) != 0 && !failed)
        failed = errno;
    unlink(probe);
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
