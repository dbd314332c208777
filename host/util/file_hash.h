/* A fast 64-bit hash of every byte of a file (model weights, for sweep
 * checkpoints), and a small cache of such hashes keyed by what the kernel
 * says about the file, so that hashing a model costs once per model file,
 * not once per run.
 *
 * The hash (pb_hash64): four 64-bit lanes, each taking every fourth 8-byte
 * little-endian word of a 32-byte stripe through lane = rotl(lane + w * P2,
 * 31) * P1 (the multiply-rotate round of xxHash64, with its primes); the
 * tail (< 32 bytes) is taken byte by byte into a fifth accumulator; the
 * lanes, the tail and the length are mixed at the end. Not cryptographic:
 * it detects a changed or re-downloaded file, not a forged one. Not
 * XXH64-compatible. Speed: the file system's read speed (measured in
 * README.md, "Preemption, checkpoints and ranks").
 *
 * The cache: a text file, one line per file hashed,
 *   "<st_dev> <st_ino> <st_size> <mtime_ns> <ctime_ns> <hash hex>",
 * after a first line "patchbay-file-hash 1". A line is used only when all
 * five keys equal the file's: ctime cannot be set back by a user (utime
 * sets mtime only), so writing the file and restoring its mtime still
 * misses the cache. A missing, unreadable or malformed cache is no error:
 * the file is hashed. */
#ifndef PB_FILE_HASH_H
#define PB_FILE_HASH_H

#include <stddef.h>
#include <stdint.h>

#include "patchbay.h"

/* Incremental pb_hash64 state; feed with pb_hash64_update, any split. */
typedef struct pb_hash64_state {
    uint64_t lane[4];
    uint64_t length;
    unsigned char stripe[32];
    size_t used; /* bytes of stripe waiting */
} pb_hash64_state;

void pb_hash64_init(pb_hash64_state *h);
void pb_hash64_update(pb_hash64_state *h, const void *data, size_t size);
uint64_t pb_hash64_final(const pb_hash64_state *h);

/* The hash of every byte of the regular file at path and its size.
 * cache_path: the cache file to consult and update (NULL: none); an entry
 * is added only when the file did not change while it was read. *cached
 * (may be NULL): 1 when the hash came from the cache. PB_ERR_IO naming the
 * file when it cannot be read. */
pb_status pb_file_hash(const char *path, const char *cache_path, uint64_t *hash, uint64_t *size, int *cached);

#endif
