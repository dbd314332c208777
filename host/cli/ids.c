/* Token ids from command-line text and files (see ids.h). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cli/ids.h"
#include "patchbay_tool.h"

pb_status pb_ids_parse(const char *text, const char *where, int32_t **ids, int *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    size_t cap = 0, n = 0;
    int32_t *v = NULL;
    for (const char *p = text; *p;) {
        if (*p == '#') {
            while (*p && *p != '\n')
                p++;
            continue;
        }
        if (strchr(", \t\r\n[]", *p)) {
            p++;
            continue;
        }
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            return pb_fail(PB_ERR_ARG, "%s: '%.20s' is not a token id", where, p);
        }
        pb_status grown = pb_array_reserve(&v, &cap, n + 1, sizeof *v, "token ids");
        if (grown != PB_OK) {
            free(v);
            return grown;
        }
        v[n++] = (int32_t)x;
        p = end;
    }
    if (n == 0) {
        free(v);
        return pb_fail(PB_ERR_ARG, "%s holds no token ids", where);
    }
    *ids = v;
    *n_ids = (int)n;
    return PB_OK;
}

pb_status pb_ids_read_file(const char *path, int32_t **ids, int *n_ids) {
    *ids = NULL;
    *n_ids = 0;
    size_t len = strlen(path);
    if (len > 4 && strcmp(path + len - 4, ".npy") == 0) {
        int n_dims;
        int64_t shape[8];
        void *data;
        pb_status status = pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape);
        if (status != PB_OK)
            return status;
        if (n_dims != 1 || shape[0] <= 0 || shape[0] > INT32_MAX) {
            free(data);
            return pb_fail(PB_ERR_ARG, "%s must hold a non-empty 1-d array of ids", path);
        }
        *ids = data;
        *n_ids = (int)shape[0];
        return PB_OK;
    }
    char *text = NULL;
    pb_status status = pb_read_input_file(path, PB_INPUT_MAX_BYTES, NULL, &text, NULL);
    if (status != PB_OK)
        return status;
    status = pb_ids_parse(text, path, ids, n_ids);
    free(text);
    return status;
}
