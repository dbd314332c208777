/* Test helpers for the safetensors and config.json readers: a scratch
 * directory per test (mkdtemp, removed recursively afterwards) and writers
 * for raw files and small safetensors files. Header-only; every function is
 * static so each test executable gets its own copy. */
#ifndef PB_ST_TEST_UTIL_H
#define PB_ST_TEST_UTIL_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Requires _POSIX_C_SOURCE >= 200809L in the including file (mkdtemp). */

typedef struct st_scratch {
    char dir[256];
} st_scratch;

/* Returns 0 on success. */
static inline int st_scratch_create(st_scratch *scratch) {
    const char *tmp = getenv("TMPDIR");
    if (!tmp || !*tmp)
        tmp = "/tmp";
    int n = snprintf(scratch->dir, sizeof scratch->dir, "%s/pb_st_test_XXXXXX", tmp);
    if (n < 0 || (size_t)n >= sizeof scratch->dir)
        return -1;
    return mkdtemp(scratch->dir) ? 0 : -1;
}

static inline void st_remove_tree(const char *path) {
    struct stat info;
    if (lstat(path, &info) != 0)
        return;
    if (S_ISDIR(info.st_mode)) {
        DIR *dir = opendir(path);
        if (dir) {
            struct dirent *entry;
            while ((entry = readdir(dir)) != NULL) {
                if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                    continue;
                char child[1024];
                int n = snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
                if (n > 0 && (size_t)n < sizeof child)
                    st_remove_tree(child);
            }
            closedir(dir);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static inline void st_scratch_destroy(st_scratch *scratch) {
    if (scratch->dir[0])
        st_remove_tree(scratch->dir);
    scratch->dir[0] = '\0';
}

/* dir/name into out (static-size buffer). */
static inline const char *st_path(char *out, size_t size, const char *dir, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
    return out;
}

static inline int st_write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t written = n ? fwrite(bytes, 1, n, f) : 0;
    int closed = fclose(f);
    return written == n && closed == 0 ? 0 : -1;
}

static inline int st_write_text(const char *path, const char *text) { return st_write_bytes(path, text, strlen(text)); }

/* Builds a safetensors image in memory: u64 LE header length, header JSON,
 * data. Returns a malloc'ed buffer and its size in *size (NULL on OOM). */
static inline uint8_t *st_build(const char *header, const void *data, size_t data_size, size_t *size) {
    size_t header_len = strlen(header);
    uint8_t *image = malloc(8 + header_len + data_size + 1);
    if (!image)
        return NULL;
    for (int i = 0; i < 8; i++)
        image[i] = (uint8_t)((uint64_t)header_len >> (8 * i));
    memcpy(image + 8, header, header_len);
    if (data_size)
        memcpy(image + 8 + header_len, data, data_size);
    *size = 8 + header_len + data_size;
    return image;
}

/* Writes a safetensors file from a header JSON string and data bytes. */
static inline int st_write_safetensors(const char *path, const char *header, const void *data, size_t data_size) {
    size_t size;
    uint8_t *image = st_build(header, data, data_size, &size);
    if (!image)
        return -1;
    int rc = st_write_bytes(path, image, size);
    free(image);
    return rc;
}

#endif
