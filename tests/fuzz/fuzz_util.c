/* Scratch files and input splitting for the harnesses (fuzz_util.h). */
#define _POSIX_C_SOURCE 200809L
#include "fuzz_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "text/tokenizer.h"

enum { MAX_SCRATCH = 8 };
static char scratch[MAX_SCRATCH][256];
static int n_scratch;

static void remove_scratch(void) {
    for (int i = 0; i < n_scratch; i++)
        unlink(scratch[i]);
}

int fuzz_scratch_path(char *buf, size_t size, const char *name) {
    const char *dir = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
    int n = snprintf(buf, size, "%s/pb_fuzz_%ld_%s", dir, (long)getpid(), name);
    if (n < 0 || (size_t)n >= size)
        return 0;
    for (int i = 0; i < n_scratch; i++)
        if (strcmp(scratch[i], buf) == 0)
            return 1;
    if (n_scratch < MAX_SCRATCH && (size_t)n < sizeof scratch[0]) {
        if (n_scratch == 0)
            atexit(remove_scratch);
        memcpy(scratch[n_scratch++], buf, (size_t)n + 1);
    }
    return 1;
}

void fuzz_write_file(const char *path, const uint8_t *data, size_t size) {
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) {
        perror(path);
        abort();
    }
}

pb_status fuzz_note(const char *what, pb_status status) {
    static int verbose = -1;
    if (verbose < 0) {
        const char *env = getenv("PB_FUZZ_VERBOSE");
        verbose = env && env[0] == '1';
    }
    if (verbose)
        fprintf(stderr, "%s: %s\n", what, status == PB_OK ? "ok" : pb_last_error());
    return status;
}

char *fuzz_string(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s)
        abort();
    if (size)
        memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* First occurrence of marker (length m) in data, or NULL. */
static const uint8_t *find_marker(const uint8_t *data, size_t size, const char *marker, size_t m) {
    for (size_t i = 0; m && i + m <= size; i++)
        if (data[i] == (uint8_t)marker[0] && memcmp(data + i, marker, m) == 0)
            return data + i;
    return NULL;
}

int fuzz_split(const uint8_t *data, size_t size, const char *marker, fuzz_part *parts, int max) {
    size_t m = strlen(marker);
    int n = 0;
    while (n < max - 1) {
        const uint8_t *at = find_marker(data, size, marker, m);
        if (!at)
            break;
        parts[n++] = (fuzz_part){data, (size_t)(at - data)};
        size -= (size_t)(at - data) + m;
        data = at + m;
    }
    parts[n++] = (fuzz_part){data, size};
    return n;
}

void fuzz_scratch_input(char *path, size_t path_size, const char *name, const uint8_t *data, size_t size) {
    if (!path[0] && !fuzz_scratch_path(path, path_size, name))
        abort();
    fuzz_write_file(path, data, size);
}

static const char tokenizer_sample[] =
    "Hello, world! It's 2024: caf\xc3\xa9 \xe4\xbd\xa0\xe5\xa5\xbd <s> </s> <|im_start|>user\n"
    "  spaces\t\ttabs 12345678 \xf0\x9f\x98\x80";

void fuzz_tokenizer_exercise(const struct pb_tokenizer *tok) {
    for (int special = 0; special < 2; special++) {
        int32_t *ids = NULL;
        int n = 0;
        if (pb_tokenizer_encode(tok, tokenizer_sample, sizeof tokenizer_sample - 1, special, &ids, &n) == PB_OK) {
            char *text = NULL;
            if (pb_tokenizer_decode(tok, ids, n, &text) == PB_OK)
                free(text);
        }
        free(ids);
    }
    (void)pb_tokenizer_token_id(tok, "<s>");
    (void)pb_tokenizer_vocab_size(tok);
}
