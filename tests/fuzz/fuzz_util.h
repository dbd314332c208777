/* Helpers shared by the libFuzzer harnesses: parsers that only read from a
 * path get each input through one per-process scratch file, and inputs that
 * hold several parts (a template and the messages it renders, an index and
 * its shards) are split at a marker. */
#ifndef PB_FUZZ_UTIL_H
#define PB_FUZZ_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

/* A path under /dev/shm (else /tmp) unique to this process: "pb_fuzz_<pid>_<name>".
 * Returns 0 when it does not fit. The file is removed at exit. */
int fuzz_scratch_path(char *buf, size_t size, const char *name);
/* Writes size bytes to path (truncating it); aborts on an I/O error, which is
 * the machine's fault, not the input's. */
void fuzz_write_file(const char *path, const uint8_t *data, size_t size);
/* The input in the harness's scratch file: path (static in the harness,
 * size bytes) is set to fuzz_scratch_path(name) on the first call, aborting
 * when it does not fit, and then receives the input (fuzz_write_file). */
void fuzz_scratch_input(char *path, size_t path_size, const char *name, const uint8_t *data, size_t size);
/* The input as a NUL-terminated string (malloc'd; aborts when out of memory). */
char *fuzz_string(const uint8_t *data, size_t size);

/* Returns status; with PB_FUZZ_VERBOSE=1 in the environment also prints
 * "<what>: ok" or the library's message to stderr, to see how far a seed
 * gets (run a harness on one file: ./fuzz_npy FILE). */
pb_status fuzz_note(const char *what, pb_status status);

/* One part of an input split at a marker. */
typedef struct fuzz_part {
    const uint8_t *data;
    size_t size;
} fuzz_part;
/* Splits data at each occurrence of marker into at most max parts (the last
 * part keeps any further markers). Returns the number of parts (>= 1). */
int fuzz_split(const uint8_t *data, size_t size, const char *marker, fuzz_part *parts, int max);

/* What a prompt does with a tokenizer a harness built: encodes a fixed text
 * (ASCII, multi-byte UTF-8, special tokens, runs of spaces and tabs) with
 * and without special tokens, decodes the ids, looks up "<s>" and the
 * vocabulary size. */
struct pb_tokenizer;
void fuzz_tokenizer_exercise(const struct pb_tokenizer *tok);

#endif
