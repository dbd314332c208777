/* What the whole-file model fingerprint of a sweep checkpoint costs, beside
 * its ceiling.
 *
 *   bench_file_hash [FILE] [REPEATS]
 *
 * FILE defaults to SmolLM2 under models/. Times, in the same run and on the
 * same (page-cached after the first pass) file: plain read() of every byte
 * (the ceiling: what any hash of every byte must at least pay), pb_file_hash
 * without a cache, the fingerprint of a sweep with a cache file it fills,
 * and the same fingerprint again, which reads the cache instead of the
 * file (what --resume pays). Prints MB/s, seconds and the ratios. The first
 * pass (cold or warm, whatever the machine had) is reported apart. */
#define _POSIX_C_SOURCE 200809L
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/file_hash.h"
#include "patchbay.h"

static double read_all(const char *path) {
    static unsigned char buf[4 << 20];
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return -1;
    double t0 = pb_now_seconds();
    while (read(fd, buf, sizeof buf) > 0) {
    }
    close(fd);
    return pb_now_seconds() - t0;
}

/* The best of `repeats` runs of pb_file_hash without a cache. */
static double best_hash(const char *path, int repeats, uint64_t *size) {
    double best = 1e30;
    for (int r = 0; r < repeats; r++) {
        uint64_t hash;
        double t0 = pb_now_seconds();
        if (pb_file_hash(path, NULL, &hash, size, NULL) != PB_OK)
            return -1;
        double t = pb_now_seconds() - t0;
        best = t < best ? t : best;
    }
    return best;
}

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    int repeats = argc > 2 ? atoi(argv[2]) : 5;
    if (repeats <= 0) {
        fprintf(stderr, "usage: bench_file_hash [FILE] [REPEATS > 0]\n");
        return 2;
    }
    uint64_t size = 0;
    double first = best_hash(path, 1, &size);
    if (first < 0) {
        fprintf(stderr, "bench_file_hash: %s\n", pb_last_error());
        return 1;
    }
    double read_best = 1e30;
    for (int r = 0; r < repeats; r++) {
        double t = read_all(path);
        read_best = t < read_best ? t : read_best;
    }
    double hash_best = best_hash(path, repeats, &size);
    char cache[] = "/tmp/pb_bench_hash_XXXXXX";
    int fd = mkstemp(cache);
    if (fd < 0 || hash_best < 0)
        return 1;
    close(fd);
    unlink(cache); /* an absent cache: the first fingerprint fills it */
    pb_fingerprint_options fo = {.hash_cache = cache};
    pb_sweep_fingerprint fp;
    const char *spec = "{}";
    double t0 = pb_now_seconds();
    pb_status st = pb_sweep_fingerprint_compute_with(&fp, path, spec, PB_BACKEND_CPU, PB_DTYPE_F32, &fo);
    double t_fill = pb_now_seconds() - t0;
    t0 = pb_now_seconds();
    st = st == PB_OK ? pb_sweep_fingerprint_compute_with(&fp, path, spec, PB_BACKEND_CPU, PB_DTYPE_F32, &fo) : st;
    double t_hit = pb_now_seconds() - t0;
    unlink(cache);
    if (st != PB_OK) {
        fprintf(stderr, "bench_file_hash: %s\n", pb_last_error());
        return 1;
    }
    double mb = (double)size / 1e6;
    printf("file %s: %.1f MB\n", path, mb);
    printf("first pass (page cache as found): %.3f s, %.0f MB/s\n", first, mb / first);
    printf("read() only (ceiling), best of %d:  %.3f s, %.0f MB/s\n", repeats, read_best, mb / read_best);
    printf("pb_file_hash, best of %d:           %.3f s, %.0f MB/s (%.2fx the read time)\n", repeats, hash_best,
           mb / hash_best, hash_best / read_best);
    printf("fingerprint, cache filled:          %.3f s\n", t_fill);
    printf("fingerprint, cache hit (--resume):  %.6f s (%.0fx faster than hashing)\n", t_hit, t_fill / t_hit);
    return 0;
}
