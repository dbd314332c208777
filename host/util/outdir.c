/* Output-directory checks and whole-file reads (see outdir.h). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
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
