/* Helpers shared by the cmocka tests: fixture and model paths from the
 * environment (PB_FIXTURES, PB_MODEL, PB_SOURCE_DIR), whole-file reads and
 * temporary files. Test files define _POSIX_C_SOURCE 200809L before any
 * include, since mkstemp is POSIX. */
#ifndef PB_TEST_UTIL_H
#define PB_TEST_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PB_TEST_MODEL_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

/* $PB_FIXTURES/<relative> into buf; 0 when PB_FIXTURES is unset or the
 * path does not fit. */
static inline int pb_test_fixture_path(char *buf, size_t size, const char *relative) {
    const char *dir = getenv("PB_FIXTURES");
    if (!dir || !*dir)
        return 0;
    int n = snprintf(buf, size, "%s/%s", dir, relative);
    return n > 0 && (size_t)n < size;
}

static inline int pb_test_file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fclose(f);
    return 1;
}

/* The real model: $PB_MODEL if set, else
 * $PB_SOURCE_DIR/models/SmolLM2-135M-Instruct.Q4_1.gguf. NULL when neither
 * names a readable file (tests then skip and say why). */
static inline const char *pb_test_model_path(char *buf, size_t size) {
    const char *model = getenv("PB_MODEL");
    if (model && *model) {
        snprintf(buf, size, "%s", model);
        return pb_test_file_exists(buf) ? buf : NULL;
    }
    const char *source = getenv("PB_SOURCE_DIR");
    if (!source || !*source)
        return NULL;
    int n = snprintf(buf, size, "%s/models/%s", source, PB_TEST_MODEL_NAME);
    if (n <= 0 || (size_t)n >= size)
        return NULL;
    return pb_test_file_exists(buf) ? buf : NULL;
}

/* Reads a whole file into a malloc'd buffer; 0 on failure. */
static inline int pb_test_read_file(const char *path, uint8_t **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    while (buf) {
        if (n == cap) {
            uint8_t *grown = realloc(buf, cap * 2);
            if (!grown) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = grown;
            cap *= 2;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    int ok = buf != NULL && !ferror(f);
    fclose(f);
    if (!ok) {
        free(buf);
        return 0;
    }
    *data = buf;
    *size = n;
    return 1;
}

/* Writes data to a new file under $TMPDIR (or /tmp); its path goes to
 * path (capacity size). The caller removes it. 0 on failure. */
static inline int pb_test_write_temp(char *path, size_t size, const void *data, size_t n) {
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    int len = snprintf(path, size, "%s/pb_test_XXXXXX", dir);
    if (len <= 0 || (size_t)len >= size)
        return 0;
    int fd = mkstemp(path);
    if (fd < 0)
        return 0;
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            close(fd);
            unlink(path);
            return 0;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd) == 0;
}

#endif
