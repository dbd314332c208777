/* Whole-file hashes and their cache (see file_hash.h). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/internal.h"
#include "util/file_hash.h"
#include "util/outdir.h"
#include "formats/npy.h"

/* ---- the hash ------------------------------------------------------------- */

static const uint64_t P1 = 0x9E3779B185EBCA87ull, P2 = 0xC2B2AE3D27D4EB4Full, P3 = 0x165667B19E3779F9ull,
                      P4 = 0x85EBCA77C2B2AE63ull, P5 = 0x27D4EB2F165667C5ull;

static uint64_t rotl64(uint64_t x, int n) { return (x << n) | (x >> (64 - n)); }

static uint64_t round64(uint64_t lane, uint64_t word) { return rotl64(lane + word * P2, 31) * P1; }

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static void take_stripe(pb_hash64_state *h, const unsigned char *p) {
    for (int k = 0; k < 4; k++)
        h->lane[k] = round64(h->lane[k], load_le64(p + 8 * k));
}

void pb_hash64_init(pb_hash64_state *h) {
    memset(h, 0, sizeof *h);
    for (int k = 0; k < 4; k++)
        h->lane[k] = P5 * (uint64_t)(k + 1);
}

void pb_hash64_update(pb_hash64_state *h, const void *data, size_t size) {
    const unsigned char *p = data;
    h->length += size;
    if (h->used > 0) {
        size_t take = 32 - h->used < size ? 32 - h->used : size;
        memcpy(h->stripe + h->used, p, take);
        h->used += take;
        p += take;
        size -= take;
        if (h->used < 32)
            return;
        take_stripe(h, h->stripe);
        h->used = 0;
    }
    for (; size >= 32; p += 32, size -= 32)
        take_stripe(h, p);
    memcpy(h->stripe, p, size);
    h->used = size;
}

uint64_t pb_hash64_final(const pb_hash64_state *h) {
    uint64_t acc = rotl64(h->lane[0], 1) + rotl64(h->lane[1], 7) + rotl64(h->lane[2], 12) + rotl64(h->lane[3], 18);
    for (int k = 0; k < 4; k++)
        acc = (acc ^ round64(0, h->lane[k])) * P1 + P4;
    acc ^= h->length * P3;
    for (size_t i = 0; i < h->used; i++)
        acc = rotl64(acc ^ (h->stripe[i] * P5), 11) * P1;
    acc ^= acc >> 33;
    acc *= P2;
    acc ^= acc >> 29;
    acc *= P3;
    acc ^= acc >> 32;
    return acc;
}

/* ---- the cache ------------------------------------------------------------ */

#define CACHE_HEADER "patchbay-file-hash 1\n"
#define CACHE_MAX_LINES 256 /* files of a sharded model; older lines beyond are dropped */

typedef struct file_key {
    uint64_t dev, ino, size, mtime_ns, ctime_ns;
} file_key;

static file_key key_of(const struct stat *st) {
    return (file_key){(uint64_t)st->st_dev, (uint64_t)st->st_ino, (uint64_t)st->st_size,
                      (uint64_t)st->st_mtim.tv_sec * 1000000000u + (uint64_t)st->st_mtim.tv_nsec,
                      (uint64_t)st->st_ctim.tv_sec * 1000000000u + (uint64_t)st->st_ctim.tv_nsec};
}

static int same_key(const file_key *a, const file_key *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_ns == b->mtime_ns &&
           a->ctime_ns == b->ctime_ns;
}

/* One cache line into key and hash; 0 when malformed. */
static int parse_line(const char *line, file_key *key, uint64_t *hash) {
    int used = 0;
    int n = sscanf(line, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %16" SCNx64 "%n", &key->dev,
                   &key->ino, &key->size, &key->mtime_ns, &key->ctime_ns, hash, &used);
    return n == 6 && (line[used] == '\n' || line[used] == 0);
}

/* The cache's text (NULL when absent or not a cache). */
static char *cache_read(const char *cache_path) {
    char *text = NULL;
    if (pb_read_text_file(cache_path, &text, NULL) != PB_OK) {
        pb_error_clear(); /* a missing cache is the usual case */
        return NULL;
    }
    if (strncmp(text, CACHE_HEADER, strlen(CACHE_HEADER)) != 0) {
        free(text);
        return NULL;
    }
    return text;
}

static int cache_lookup(const char *text, const file_key *want, uint64_t *hash) {
    for (const char *line = text ? strchr(text, '\n') : NULL; line && line[1]; line = strchr(line + 1, '\n')) {
        file_key key;
        uint64_t value;
        if (parse_line(line + 1, &key, &value) && same_key(&key, want)) {
            *hash = value;
            return 1;
        }
    }
    return 0;
}

/* Writes the cache with this file's line first and the other files' lines
 * after it (a line for the same device and inode is an older version of
 * this file: dropped). Failures are not reported: the cache only saves
 * time. */
static void cache_store(const char *cache_path, const char *old, const file_key *k, uint64_t hash) {
    size_t cap = strlen(CACHE_HEADER) + 128 + (old ? strlen(old) : 0);
    char *text = malloc(cap);
    if (!text)
        return;
    size_t n = (size_t)snprintf(
        text, cap, CACHE_HEADER "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %016" PRIx64 "\n", k->dev,
        k->ino, k->size, k->mtime_ns, k->ctime_ns, hash);
    int lines = 1;
    for (const char *line = old ? strchr(old, '\n') : NULL; line && line[1] && lines < CACHE_MAX_LINES;
         line = strchr(line + 1, '\n')) {
        file_key key;
        uint64_t value;
        const char *end = strchr(line + 1, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line + 1) + 1; /* "\n" + the line */
        if (!parse_line(line + 1, &key, &value) || (key.dev == k->dev && key.ino == k->ino))
            continue;
        memcpy(text + n, line + 1, len - 1);
        n += len - 1;
        text[n++] = '\n';
        lines++;
    }
    pb_error_saved saved;
    pb_error_save(&saved);
    pb_write_file_atomic(cache_path, text, n);
    pb_error_restore(&saved);
    free(text);
}

/* ---- reading the file ------------------------------------------------------ */

#define READ_CHUNK ((size_t)4 << 20)

/* Hashes fd from its start; *st_after: its stat once read. */
static pb_status hash_fd(int fd, const char *path, uint64_t *hash, struct stat *st_after) {
    unsigned char *buf = malloc(READ_CHUNK);
    if (!buf)
        return pb_fail(PB_ERR_OOM, "hashing %s: out of memory", path);
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    pb_hash64_state h;
    pb_hash64_init(&h);
    pb_status status = PB_OK;
    for (;;) {
        ssize_t got = read(fd, buf, READ_CHUNK);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0) {
            status = pb_fail(PB_ERR_IO, "hashing %s: read failed: %s", path, strerror(errno));
            break;
        }
        if (got == 0)
            break;
        pb_hash64_update(&h, buf, (size_t)got);
    }
    free(buf);
    if (status == PB_OK && fstat(fd, st_after) != 0)
        status = pb_fail(PB_ERR_IO, "hashing %s: cannot stat: %s", path, strerror(errno));
    *hash = pb_hash64_final(&h);
    return status;
}

pb_status pb_file_hash(const char *path, const char *cache_path, uint64_t *hash, uint64_t *size, int *cached) {
    if (cached)
        *cached = 0;
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return pb_fail(PB_ERR_IO, "cannot open %s: %s", path, strerror(errno));
    struct stat before, after;
    if (fstat(fd, &before) != 0 || !S_ISREG(before.st_mode)) {
        close(fd);
        return pb_fail(PB_ERR_IO, "%s is not a readable regular file", path);
    }
    file_key key = key_of(&before);
    *size = key.size;
    char *cache = cache_path ? cache_read(cache_path) : NULL;
    if (cache_lookup(cache, &key, hash)) {
        free(cache);
        close(fd);
        if (cached)
            *cached = 1;
        return PB_OK;
    }
    pb_status status = hash_fd(fd, path, hash, &after);
    close(fd);
    if (status == PB_OK && cache_path) {
        file_key now = key_of(&after);
        if (same_key(&key, &now)) /* a file written while it was read is not cached */
            cache_store(cache_path, cache, &key, *hash);
    }
    free(cache);
    return status;
}
