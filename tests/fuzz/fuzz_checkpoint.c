/* Sweep checkpoints (patching/checkpoint.c): magic, version, the
 * fingerprint strings, the sweep's shape and every pair and row record,
 * loaded into a sweep of a random "tiny" model built once in memory. The
 * trailing SHA-256 is not checked in the fuzzing build (a mutation could
 * never match it), so the fuzzer reaches the records behind it.
 * PB_FUZZ_WRITE_SEED=PATH: write a checkpoint of this sweep with some rows
 * done to PATH and exit (scripts/fuzz.sh makes the seed so). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "patchbay.h"

static const char spec[] = "{\"mode\": \"denoising\", \"pairs\": ["
                           "{\"clean\": {\"ids\": [5, 17, 33, 60]}, \"corrupted\": {\"ids\": [5, 17, 44, 60]}},"
                           "{\"clean\": {\"ids\": [9, 3, 70, 21]}, \"corrupted\": {\"ids\": [9, 3, 12, 21]}}],"
                           " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"}],"
                           " \"metric\": {\"kind\": \"logit_diff\", \"positive\": [1], \"negative\": [2]}}";

static pb_model *model;
static pb_sweep *sweep;
static pb_sweep_fingerprint fingerprint;

static void check(pb_status status) {
    if (status != PB_OK) {
        fprintf(stderr, "fuzz_checkpoint: %s\n", pb_last_error());
        abort();
    }
}

static void free_all(void) {
    pb_sweep_free(sweep);
    pb_model_free(model);
}

static void new_sweep(void) {
    pb_sweep_free(sweep);
    pb_sweep_options options = {.metric_fn_residual_layer = -1};
    check(pb_sweep_create(&sweep, model, spec, NULL, &options));
}

static void write_seed(const char *path) {
    int64_t rows[6] = {0, 1, 2, 7, 20, 31};
    check(pb_sweep_run_rows(sweep, rows, 6));
    check(pb_sweep_checkpoint_write(sweep, path, &fingerprint));
    free_all();
    exit(0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    pb_load_options options = {.n_threads = 1, .backend = PB_BACKEND_REFERENCE};
    check(pb_model_random(&model, "tiny", 1, &options));
    check(pb_sweep_fingerprint_compute(&fingerprint, pb_model_get_source(model), spec, PB_BACKEND_REFERENCE,
                                       PB_DTYPE_F32));
    new_sweep();
    const char *seed = getenv("PB_FUZZ_WRITE_SEED");
    if (seed && seed[0])
        write_seed(seed);
    atexit(free_all);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static char path[256];
    fuzz_scratch_input(path, sizeof path, "sweep.checkpoint", data, size);
    if (fuzz_note("checkpoint", pb_sweep_checkpoint_load(sweep, path, &fingerprint)) == PB_OK) {
        pb_sweep_summary summary;
        check(pb_sweep_get_summary(sweep, &summary));
        new_sweep(); /* the load changed it: the next input starts afresh */
    }
    return 0;
}
