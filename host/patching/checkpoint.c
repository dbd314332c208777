/* Sweep checkpoints: what a preempted sweep has computed (done rows with
 * their patched values and trivial flags, pair baselines), written
 * atomically, and loaded into a fresh sweep of the same inputs. Also the
 * fingerprint of those inputs (the model's bytes through file_hash.h, the
 * spec through SHA-256) and the SHA-256 the file's integrity check uses.
 *
 * File layout (version 3), every integer little-endian, doubles as their
 * IEEE-754 bits in a little-endian u64:
 *   8   magic "PBCKPT\r\n"
 *   u32 version (3; version 1's model digest hashed only the model's first
 *       and last MiB, and version 2 had no record of what the spec resolved
 *       to, so older files are refused, not trusted)
 *   6 x (u32 length, bytes): model path, model digest, spec digest, backend,
 *       prompts digest, metric digest (inputs_digest: what the spec's JSON
 *       resolved to on this run)
 *   i64 n_pairs, n_sites, n_rows, n_rows_executed
 *   f64 flops_executed
 *   n_pairs x (u8 ready, f64 base, f64 source)
 *   n_rows  x (u8 state: 0 pending, 1 done, 2 done and trivial; f64 patched)
 *   32  SHA-256 of every byte above
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/array.h"
#include "util/internal.h"
#include "formats/npy.h"
#include "patching/sweep_access.h"
#include "util/file_hash.h"

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------ */

typedef struct sha256_ctx {
    uint32_t h[8];
    uint64_t bytes;
    unsigned char block[64];
    size_t used;
} sha256_ctx;

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(sha256_ctx *c, const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = c->h[0], b = c->h[1], cc = c->h[2], d = c->h[3], e = c->h[4], f = c->h[5], g = c->h[6], h = c->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
        uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & cc) ^ (b & cc));
        h = g;
        g = f;
        f = e;
        e = d + t1;
        d = cc;
        cc = b;
        b = a;
        a = t1 + t2;
    }
    c->h[0] += a;
    c->h[1] += b;
    c->h[2] += cc;
    c->h[3] += d;
    c->h[4] += e;
    c->h[5] += f;
    c->h[6] += g;
    c->h[7] += h;
}

static void sha256_init(sha256_ctx *c) {
    static const uint32_t h0[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                   0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    memcpy(c->h, h0, sizeof h0);
    c->bytes = 0;
    c->used = 0;
}

static void sha256_update(sha256_ctx *c, const void *data, size_t n) {
    const unsigned char *p = data;
    c->bytes += n;
    while (n > 0) {
        size_t take = 64 - c->used < n ? 64 - c->used : n;
        memcpy(c->block + c->used, p, take);
        c->used += take;
        p += take;
        n -= take;
        if (c->used == 64) {
            sha256_block(c, c->block);
            c->used = 0;
        }
    }
}

static void sha256_final(sha256_ctx *c, unsigned char out[32]) {
    uint64_t bits = c->bytes * 8;
    unsigned char pad = 0x80, zero = 0, len[8];
    sha256_update(c, &pad, 1);
    while (c->used != 56)
        sha256_update(c, &zero, 1);
    for (int i = 0; i < 8; i++)
        len[i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_update(c, len, 8);
    for (int i = 0; i < 8; i++)
        for (int k = 0; k < 4; k++)
            out[4 * i + k] = (unsigned char)(c->h[i] >> (24 - 8 * k));
}

static void hex(const unsigned char *digest, size_t n, char *out) {
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", digest[i]);
}

/* ---- fingerprint ---------------------------------------------------------- */

static void put_le64(pb_hash64_state *h, uint64_t v) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    pb_hash64_update(h, le, 8);
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* The names in dir, sorted (hidden ones skipped); *names malloc'd. */
static pb_status list_folder(const char *dir, char ***names, size_t *n) {
    DIR *d = opendir(dir);
    if (!d)
        return pb_fail(PB_ERR_IO, "fingerprint: cannot read folder %s: %s", dir, strerror(errno));
    size_t cap = 0;
    pb_status status = PB_OK;
    *names = NULL;
    *n = 0;
    for (struct dirent *e; status == PB_OK && (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        if ((status = pb_array_reserve(names, &cap, *n + 1, sizeof **names, "file names")) != PB_OK)
            break;
        if (!((*names)[*n] = strdup(e->d_name)))
            status = pb_fail(PB_ERR_OOM, "fingerprint: out of memory");
        else
            (*n)++;
    }
    closedir(d);
    if (*n > 1)
        qsort(*names, *n, sizeof **names, compare_names);
    return status;
}

/* A folder (Hugging Face checkpoint: config, tokenizer, every shard): each
 * regular file's name, size and whole-file hash, by sorted name. */
static pb_status hash_folder(pb_hash64_state *h, const char *dir, const char *cache, uint64_t *total) {
    char **names = NULL;
    size_t n = 0;
    pb_status status = list_folder(dir, &names, &n);
    for (size_t i = 0; status == PB_OK && i < n; i++) {
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
            continue;
        uint64_t hash = 0, size = 0;
        status = pb_file_hash(path, cache, &hash, &size, NULL);
        pb_hash64_update(h, names[i], strlen(names[i]) + 1);
        put_le64(h, size);
        put_le64(h, hash);
        *total += size;
    }
    for (size_t i = 0; i < n; i++)
        free(names[i]);
    free(names);
    return status == PB_OK ? PB_OK : pb_fail_context(status, "fingerprint of %s", dir);
}

/* model_digest: "<bytes>:<16 hex digits>", the hash of every byte of the
 * model (file_hash.h); "random:" names are their own digest. */
/* *hash = the hash of model_hash, then of every adapter folder's files
 * and scale (unchanged without adapters); their bytes added to *total. */
static pb_status adapters_digest(const pb_fingerprint_options *o, const char *cache, uint64_t model_hash,
                                 uint64_t *hash, uint64_t *total) {
    if (!o || o->n_adapters < 1)
        return PB_OK;
    pb_hash64_state h;
    pb_hash64_init(&h);
    pb_hash64_update(&h, &model_hash, sizeof model_hash);
    for (int i = 0; i < o->n_adapters; i++) {
        float scale = o->adapter_scales ? o->adapter_scales[i] : 1.0f;
        PB_TRY(hash_folder(&h, o->adapters[i], cache, total));
        pb_hash64_update(&h, &scale, sizeof scale);
    }
    *hash = pb_hash64_final(&h);
    return PB_OK;
}

static pb_status model_digest(pb_sweep_fingerprint *fp, const char *model_path, const char *cache,
                              const pb_fingerprint_options *options) {
    pb_hash64_state h;
    pb_hash64_init(&h);
    uint64_t total = 0, hash = 0;
    struct stat st;
    if (strncmp(model_path, "random:", 7) == 0 && stat(model_path, &st) != 0) {
        /* A synthetic model (pb_model_random): its name, layers and seed
         * are the whole of it. */
        pb_hash64_update(&h, model_path, strlen(model_path));
        hash = pb_hash64_final(&h);
    } else if (stat(model_path, &st) != 0) {
        return pb_fail(PB_ERR_IO, "fingerprint: cannot stat %s: %s", model_path, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        PB_TRY(hash_folder(&h, model_path, cache, &total));
        hash = pb_hash64_final(&h);
    } else {
        pb_status status = pb_file_hash(model_path, cache, &hash, &total, NULL);
        if (status != PB_OK)
            return pb_fail_context(status, "fingerprint");
    }
    PB_TRY(adapters_digest(options, cache, hash, &hash, &total));
    snprintf(fp->model_digest, sizeof fp->model_digest, "%llu:%016llx", (unsigned long long)total,
             (unsigned long long)hash);
    return PB_OK;
}

pb_status pb_sweep_fingerprint_compute(pb_sweep_fingerprint *fp, const char *model_path, const char *spec_json,
                                       pb_backend_kind backend, pb_dtype dtype) {
    return pb_sweep_fingerprint_compute_with(fp, model_path, spec_json, backend, dtype, NULL);
}

pb_status pb_sweep_fingerprint_compute_with(pb_sweep_fingerprint *fp, const char *model_path, const char *spec_json,
                                            pb_backend_kind backend, pb_dtype dtype,
                                            const pb_fingerprint_options *options) {
    if (!fp || !model_path || !spec_json)
        return pb_fail(PB_ERR_ARG, "pb_sweep_fingerprint_compute: fingerprint, model path and spec are required");
    memset(fp, 0, sizeof *fp);
    if (strlen(model_path) >= sizeof fp->model_path)
        return pb_fail(PB_ERR_ARG, "fingerprint: model path too long");
    snprintf(fp->model_path, sizeof fp->model_path, "%s", model_path);
    if (options && options->skip_model)
        fp->model_unchecked = 1;
    else
        PB_TRY(model_digest(fp, model_path, options ? options->hash_cache : NULL, options));

    /* Canonical spec: parsed, keys sorted, compact. Whitespace and key
     * order do not change it; any value does. */
    json_error_t err;
    json_t *root = json_loads(spec_json, 0, &err);
    if (!root)
        return pb_fail(PB_ERR_ARG, "fingerprint: spec is not JSON (line %d: %s)", err.line, err.text);
    char *canonical = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENSURE_ASCII | JSON_REAL_PRECISION(17));
    json_decref(root);
    if (!canonical)
        return pb_fail(PB_ERR_OOM, "fingerprint: out of memory");
    sha256_ctx ctx;
    unsigned char digest[32];
    sha256_init(&ctx);
    sha256_update(&ctx, canonical, strlen(canonical));
    free(canonical);
    sha256_final(&ctx, digest);
    hex(digest, 32, fp->spec_digest);
    /* The weight dtype changes every number; the backend changes rounding. */
    snprintf(fp->backend, sizeof fp->backend, "%s/%s", pb_backend_name(backend), pb_dtype_name(dtype));
    return PB_OK;
}

/* ---- what the spec resolved to ------------------------------------------------ */

/* The spec digest covers the JSON text; the same text can resolve to other
 * inputs: a prompt's text goes through the chat template, the BOS choice and
 * the tokenizer (--chat-template changes the ids and not the spec), and a
 * projection metric reads its direction from a file. These digests cover
 * what the rows were computed on, taken from the sweep itself. */

static void sha_u64(sha256_ctx *c, uint64_t v) {
    unsigned char le[8];
    for (int i = 0; i < 8; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    sha256_update(c, le, 8);
}

static void sha_ints(sha256_ctx *c, const int32_t *v, int n) {
    sha_u64(c, (uint64_t)(n > 0 ? n : 0));
    for (int i = 0; i < n; i++)
        sha_u64(c, (uint64_t)(int64_t)v[i]);
}

static void sha_prompt(sha256_ctx *c, const pb_prompt_spec *p) {
    sha_ints(c, p->ids, p->T);
    sha_u64(c, (uint64_t)p->is_noise);
    if (!p->is_noise)
        return;
    uint64_t scale;
    memcpy(&scale, &p->noise_scale, sizeof scale);
    sha_u64(c, scale);
    sha_u64(c, p->noise_seed);
    sha_u64(c, (uint64_t)p->n_noise_positions);
    for (int i = 0; i < p->n_noise_positions; i++)
        sha_u64(c, (uint64_t)(int64_t)p->noise_positions[i]);
}

/* which 0: every pair's prompts (ids, noise) and position map; 1: the
 * metric's tokens (each pair's) and its direction. out: 64 hex digits. */
static void inputs_digest(const pb_sweep *s, int which, char out[65]) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    sha256_ctx c;
    sha256_init(&c);
    for (int p = 0; p < spec->n_pairs; p++) {
        const pb_pair_spec *pair = &spec->pairs[p];
        if (which == 0) {
            sha_prompt(&c, &pair->base);
            sha_prompt(&c, &pair->source);
            sha_u64(&c, pair->position_map ? 1 : 0);
            for (int t = 0; pair->position_map && t < pair->base.T; t++)
                sha_u64(&c, (uint64_t)(int64_t)pair->position_map[t]);
        } else {
            sha_ints(&c, pair->positive, pair->n_positive);
            sha_ints(&c, pair->negative, pair->n_negative);
        }
    }
    if (which == 1 && spec->metric.direction) {
        int d = pb_model_get_config(pb_sweep_model(s))->d_model;
        sha256_update(&c, spec->metric.direction, sizeof(float) * (size_t)d);
    }
    unsigned char digest[32];
    sha256_final(&c, digest);
    hex(digest, 32, out);
}

/* ---- writing ---------------------------------------------------------------- */

typedef struct byte_buf {
    unsigned char *data;
    size_t size, cap;
    int failed;
} byte_buf;

static void put_bytes(byte_buf *b, const void *p, size_t n) {
    if (b->failed)
        return;
    if (pb_array_reserve(&b->data, &b->cap, b->size + n, 1, "bytes of a checkpoint") != PB_OK) {
        b->failed = 1;
        return;
    }
    memcpy(b->data + b->size, p, n);
    b->size += n;
}

static void put_u64(byte_buf *b, uint64_t v, int bytes) {
    unsigned char le[8];
    for (int i = 0; i < bytes; i++)
        le[i] = (unsigned char)(v >> (8 * i));
    put_bytes(b, le, (size_t)bytes);
}

static void put_f64(byte_buf *b, double v) {
    uint64_t bits;
    memcpy(&bits, &v, sizeof bits);
    put_u64(b, bits, 8);
}

static void put_string(byte_buf *b, const char *s) {
    size_t n = strlen(s);
    put_u64(b, n, 4);
    put_bytes(b, s, n);
}

static const unsigned char checkpoint_magic[8] = {'P', 'B', 'C', 'K', 'P', 'T', '\r', '\n'};
enum { CHECKPOINT_VERSION = 3 };

pb_status pb_sweep_checkpoint_write(const pb_sweep *s, const char *path, const pb_sweep_fingerprint *fp) {
    if (!s || !path || !fp)
        return pb_fail(PB_ERR_ARG, "pb_sweep_checkpoint_write: sweep, path and fingerprint are required");
    if (fp->model_unchecked)
        return pb_fail(PB_ERR_ARG, "checkpoint %s: the fingerprint has no model digest (computed with skip_model)",
                       path);
    byte_buf b = {0};
    put_bytes(&b, checkpoint_magic, sizeof checkpoint_magic);
    put_u64(&b, CHECKPOINT_VERSION, 4);
    put_string(&b, fp->model_path);
    put_string(&b, fp->model_digest);
    put_string(&b, fp->spec_digest);
    put_string(&b, fp->backend);
    char prompts[65], metric[65];
    inputs_digest(s, 0, prompts);
    inputs_digest(s, 1, metric);
    put_string(&b, prompts);
    put_string(&b, metric);
    pb_sweep_summary sum;
    PB_TRY(pb_sweep_get_summary(s, &sum));
    put_u64(&b, (uint64_t)sum.n_pairs, 8);
    put_u64(&b, (uint64_t)sum.n_sites, 8);
    put_u64(&b, (uint64_t)sum.n_rows, 8);
    put_u64(&b, (uint64_t)sum.n_rows_executed, 8);
    put_f64(&b, sum.flops_executed);
    for (int p = 0; p < sum.n_pairs; p++) {
        unsigned char ready = pb_sweep_pair_ready(s, p) ? 1 : 0;
        double base = 0.0, source = 0.0;
        pb_sweep_get_pair(s, p, &base, &source);
        put_bytes(&b, &ready, 1);
        put_f64(&b, base);
        put_f64(&b, source);
    }
    for (int64_t r = 0; r < sum.n_rows; r++) {
        unsigned char state = (unsigned char)pb_sweep_row_state(s, r);
        double patched = 0.0;
        if (state)
            pb_sweep_get_row(s, (int)(r / sum.n_sites), r % sum.n_sites, &patched, NULL);
        put_bytes(&b, &state, 1);
        put_f64(&b, patched);
    }
    unsigned char digest[32];
    if (!b.failed) {
        sha256_ctx ctx;
        sha256_init(&ctx);
        sha256_update(&ctx, b.data, b.size);
        sha256_final(&ctx, digest);
        put_bytes(&b, digest, sizeof digest);
    }
    if (b.failed) {
        free(b.data);
        return pb_fail(PB_ERR_OOM, "checkpoint %s: out of memory", path);
    }
    pb_status status = pb_write_file_atomic(path, b.data, b.size);
    free(b.data);
    return status == PB_OK ? PB_OK : pb_fail_context(status, "writing checkpoint %s", path);
}

/* ---- loading ---------------------------------------------------------------- */

typedef struct reader {
    const unsigned char *p;
    size_t left;
    int short_read;
} reader;

static uint64_t get_u64(reader *r, int bytes) {
    if (r->left < (size_t)bytes) {
        r->short_read = 1;
        r->left = 0;
        return 0;
    }
    uint64_t v = 0;
    for (int i = 0; i < bytes; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += bytes;
    r->left -= (size_t)bytes;
    return v;
}

static double get_f64(reader *r) {
    uint64_t bits = get_u64(r, 8);
    double v;
    memcpy(&v, &bits, sizeof v);
    return v;
}

/* Copies a length-prefixed string into out (capacity cap); 0 when it does
 * not fit or the file ends. */
static int get_string(reader *r, char *out, size_t cap) {
    uint64_t n = get_u64(r, 4);
    if (r->short_read || n >= cap || n > r->left) {
        r->short_read = 1;
        return 0;
    }
    memcpy(out, r->p, (size_t)n);
    out[n] = 0;
    r->p += n;
    r->left -= (size_t)n;
    return 1;
}

/* The whole file in *data (malloc'd). */
static pb_status read_whole(const char *path, unsigned char **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return pb_fail(PB_ERR_IO, "cannot open checkpoint %s: %s", path, strerror(errno));
    struct stat st;
    *data = NULL;
    *size = 0;
    if (fstat(fileno(f), &st) == 0 && st.st_size >= 0) {
        *size = (size_t)st.st_size;
        *data = malloc(*size ? *size : 1);
        if (*data && fread(*data, 1, *size, f) != *size) {
            free(*data);
            *data = NULL;
        }
    }
    fclose(f);
    return *data ? PB_OK : pb_fail(PB_ERR_IO, "cannot read checkpoint %s", path);
}

/* Integrity first: magic, version, trailing SHA-256. On success r reads
 * what lies between the version and the digest. */
static pb_status check_integrity(const char *path, const unsigned char *data, size_t size, reader *r) {
    if (size < sizeof checkpoint_magic + 4 + 32 || memcmp(data, checkpoint_magic, sizeof checkpoint_magic) != 0)
        return pb_fail(PB_ERR_FORMAT, "checkpoint %s: not a patchbay checkpoint (bad magic or only %zu bytes)", path,
                       size);
    *r = (reader){data + sizeof checkpoint_magic, size - sizeof checkpoint_magic - 32, 0};
    uint64_t version = get_u64(r, 4);
    if (version == 2)
        return pb_fail(PB_ERR_FORMAT,
                       "checkpoint %s: version 2, written by an earlier patchbay that did not record the prompts' "
                       "token ids, so a resume cannot check that its rows were computed on this run's prompts; "
                       "delete it to start over",
                       path);
    if (version != CHECKPOINT_VERSION)
        return pb_fail(PB_ERR_FORMAT, "checkpoint %s: version %llu, this build reads version %d", path,
                       (unsigned long long)version, CHECKPOINT_VERSION);
    unsigned char digest[32];
    sha256_ctx ctx;
    sha256_init(&ctx);
    sha256_update(&ctx, data, size - 32);
    sha256_final(&ctx, digest);
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION /* tests/fuzz: reach the records behind the checksum */
    if (memcmp(digest, data + size - 32, 32) != 0)
        return pb_fail(PB_ERR_FORMAT, "checkpoint %s: checksum mismatch (truncated or corrupt file of %zu bytes)", path,
                       size);
#endif
    return PB_OK;
}

typedef struct checkpoint_header {
    pb_sweep_fingerprint have;
    char prompts[72], metric[72]; /* inputs_digest */
    int64_t n_pairs, n_sites, n_rows, n_executed;
    double flops;
} checkpoint_header;

/* The same spec text, resolved to the same inputs (inputs_digest). */
static pb_status check_inputs(const char *path, const pb_sweep *s, const checkpoint_header *h) {
    char prompts[65], metric[65];
    inputs_digest(s, 0, prompts);
    inputs_digest(s, 1, metric);
    if (strcmp(h->prompts, prompts) != 0)
        return pb_fail(PB_ERR_ARG,
                       "checkpoint %s was written for other prompts: the spec is the same, but its prompts give "
                       "other token ids in this run (another --chat-template, chat or BOS setting, or tokenizer?); "
                       "the checkpoint is kept: resume with the settings it was written with, or delete it to "
                       "start over",
                       path);
    if (strcmp(h->metric, metric) != 0)
        return pb_fail(PB_ERR_ARG,
                       "checkpoint %s was written for another metric: the spec is the same, but its metric's tokens "
                       "or direction differ in this run (a changed direction file?); the checkpoint is kept: resume "
                       "with the inputs it was written for, or delete it to start over",
                       path);
    return PB_OK;
}

/* Written for this model (its contents with any adapters, not its path: a
 * copy elsewhere is the same model), spec text and backend. */
static pb_status check_fingerprint(const char *path, const checkpoint_header *h, const pb_sweep_fingerprint *fp) {
    int other_weights = !fp->model_unchecked && strcmp(h->have.model_digest, fp->model_digest) != 0;
    if (other_weights && strcmp(h->have.model_path, fp->model_path) == 0)
        return pb_fail(PB_ERR_ARG,
                       "checkpoint %s was written for other weights: %s, with the adapters merged at load, had "
                       "digest %s then and has %s now (the file changed or was re-downloaded, or another "
                       "--adapter or scale?); the checkpoint is kept: resume with the weights it was written for, "
                       "or delete it to start over",
                       path, fp->model_path, h->have.model_digest, fp->model_digest);
    if (other_weights)
        return pb_fail(PB_ERR_ARG,
                       "checkpoint %s was written for another model: %s (bytes:hash of every byte %s), but this "
                       "run's model %s has %s (changed or re-downloaded since?); the checkpoint is kept: resume "
                       "with the model it was written for, or delete it to start over",
                       path, h->have.model_path, h->have.model_digest, fp->model_path, fp->model_digest);
    if (strcmp(h->have.spec_digest, fp->spec_digest) != 0)
        return pb_fail(PB_ERR_ARG,
                       "checkpoint %s was written for another spec (sha256 %s of its canonical JSON), "
                       "this run's spec has %s",
                       path, h->have.spec_digest, fp->spec_digest);
    if (strcmp(h->have.backend, fp->backend) != 0)
        return pb_fail(PB_ERR_ARG, "checkpoint %s was written with backend/dtype %s, this run uses %s", path,
                       h->have.backend, fp->backend);
    return PB_OK;
}

/* Reads the header and checks it was written for this model, spec, backend
 * and sweep shape (check_fingerprint), and the inputs they resolved to
 * (check_inputs). */
static pb_status read_header(const char *path, const pb_sweep *s, const pb_sweep_fingerprint *fp, reader *r,
                             checkpoint_header *h) {
    memset(h, 0, sizeof *h);
    get_string(r, h->have.model_path, sizeof h->have.model_path);
    get_string(r, h->have.model_digest, sizeof h->have.model_digest);
    get_string(r, h->have.spec_digest, sizeof h->have.spec_digest);
    get_string(r, h->have.backend, sizeof h->have.backend);
    get_string(r, h->prompts, sizeof h->prompts);
    get_string(r, h->metric, sizeof h->metric);
    h->n_pairs = (int64_t)get_u64(r, 8);
    h->n_sites = (int64_t)get_u64(r, 8);
    h->n_rows = (int64_t)get_u64(r, 8);
    h->n_executed = (int64_t)get_u64(r, 8);
    h->flops = get_f64(r);
    if (r->short_read)
        return pb_fail(PB_ERR_FORMAT, "checkpoint %s: header ends early", path);
    int n_pairs = pb_sweep_spec_of(s)->n_pairs;
    int64_t n_sites = pb_sweep_site_count(s), n_rows = pb_sweep_row_count(s);
    PB_TRY(check_fingerprint(path, h, fp));
    if (h->n_pairs != n_pairs || h->n_sites != n_sites || h->n_rows != n_rows)
        return pb_fail(PB_ERR_ARG, "checkpoint %s has %lld pairs x %lld sites = %lld rows, this sweep %d x %lld = %lld",
                       path, (long long)h->n_pairs, (long long)h->n_sites, (long long)h->n_rows, n_pairs,
                       (long long)n_sites, (long long)n_rows);
    if (r->left != (size_t)h->n_pairs * 17 + (size_t)h->n_rows * 9)
        return pb_fail(PB_ERR_FORMAT, "checkpoint %s: %zu bytes of pairs and rows, expected %zu", path, r->left,
                       (size_t)h->n_pairs * 17 + (size_t)h->n_rows * 9);
    return check_inputs(path, s, h);
}

/* Validates every pair and row record (a copy of the reader) before the sweep changes. */
static pb_status check_records(const char *path, reader check, const checkpoint_header *h) {
    for (int64_t p = 0; p < h->n_pairs; p++) {
        uint64_t ready = get_u64(&check, 1);
        double base = get_f64(&check), source = get_f64(&check);
        if (ready > 1 || (ready && (!isfinite(base) || !isfinite(source))))
            return pb_fail(PB_ERR_FORMAT, "checkpoint %s: pair %lld: bad baseline record", path, (long long)p);
    }
    int64_t n_done = 0;
    for (int64_t row = 0; row < h->n_rows; row++) {
        uint64_t state = get_u64(&check, 1);
        double v = get_f64(&check);
        if (state > 2 || (state && !isfinite(v)))
            return pb_fail(PB_ERR_FORMAT, "checkpoint %s: row %lld: bad record (state %llu)", path, (long long)row,
                           (unsigned long long)state);
        n_done += state != 0;
    }
    if (h->n_executed < 0 || h->n_executed > n_done)
        return pb_fail(PB_ERR_FORMAT, "checkpoint %s: %lld rows executed but %lld done", path, (long long)h->n_executed,
                       (long long)n_done);
    return PB_OK;
}

/* Applies the (validated) records: baselines, then rows not already done. */
static void apply_records(pb_sweep *s, reader *r, const checkpoint_header *h) {
    for (int p = 0; p < (int)h->n_pairs; p++) {
        int ready = (int)get_u64(r, 1);
        double base = get_f64(r), source = get_f64(r);
        if (ready)
            pb_sweep_set_pair(s, p, base, source);
    }
    int64_t restored = 0;
    for (int64_t row = 0; row < h->n_rows; row++) {
        int state = (int)get_u64(r, 1);
        double v = get_f64(r);
        if (state && pb_sweep_row_state(s, row) == 0) {
            pb_sweep_set_row(s, row, v, state == 2, 0);
            restored++;
        }
    }
    pb_sweep_add_restored(s, restored, h->n_executed, h->flops);
}

pb_status pb_sweep_checkpoint_load(pb_sweep *s, const char *path, const pb_sweep_fingerprint *fp) {
    if (!s || !path || !fp)
        return pb_fail(PB_ERR_ARG, "pb_sweep_checkpoint_load: sweep, path and fingerprint are required");
    unsigned char *data = NULL;
    size_t size = 0;
    PB_TRY(read_whole(path, &data, &size));
    reader r;
    checkpoint_header h;
    pb_status status = check_integrity(path, data, size, &r);
    if (status == PB_OK)
        status = read_header(path, s, fp, &r, &h);
    if (status == PB_OK)
        status = check_records(path, r, &h);
    if (status == PB_OK)
        apply_records(s, &r, &h);
    free(data);
    return status;
}
