/* The one test fixture loader: what every cmocka test shares. Paths from the
 * environment (PB_FIXTURES, PB_SOURCE_DIR, PB_MODEL: the SmolLM2 model,
 * skipped when absent), CHECK_OK, tiny models loaded from fixtures, whole
 * files read and written, scratch directories, CUDA availability, and small
 * numeric helpers (comparison statistics, seeded random numbers).
 *
 * The functions are in test_util.c (linked into every test by CMake's
 * pb_add_test), which includes what POSIX needs itself, so a test defines no
 * feature macro for them. Include <cmocka.h> before this header: CHECK_OK
 * and the loaders fail the running test with fail_msg. */
#ifndef PB_TEST_UTIL_H
#define PB_TEST_UTIL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "patchbay.h"

/* Fails the running test unless expr (a pb_status) is PB_OK, naming the
 * expression, the status and pb_last_error(). */
#define CHECK_OK(expr)                                                                       \
    do {                                                                                     \
        pb_status check_status_ = (expr);                                                    \
        if (check_status_ != PB_OK)                                                          \
            fail_msg("%s -> %s: %s", #expr, pb_status_name(check_status_), pb_last_error()); \
    } while (0)

/* ---- paths ---------------------------------------------------------------- */

#define TU_SMOLLM2_FILE "SmolLM2-135M-Instruct.Q4_1.gguf"

/* $PB_FIXTURES, else "tests/fixtures". */
const char *tu_fixtures(void);
/* $PB_SOURCE_DIR, else ".". */
const char *tu_source_dir(void);
/* $PB_FIXTURES/<relative> into buf; 0 when PB_FIXTURES is unset or the path
 * does not fit. */
int tu_fixture_path(char *buf, size_t size, const char *relative);
/* <fixtures>/<model>[/<file>] into buf (file may be NULL: the model's folder). */
void tu_fixture_file(char *buf, size_t size, const char *model, const char *file);
/* The real model: $PB_MODEL if set, else $PB_SOURCE_DIR/models/TU_SMOLLM2_FILE.
 * NULL when neither names a readable file (tests then skip and say why). */
const char *tu_model_path(char *buf, size_t size);
int tu_file_exists(const char *path);
/* 1 in a build with AddressSanitizer (PB_SANITIZE). Checks of committed
 * data, of the tool's static tables, or of one path over many cases, which
 * the Release suite runs in full, run a smaller share there: the
 * sanitizers look for memory errors, which a path shows on any case. */
int tu_sanitized(void);
/* dir/name into out; returns out. */
const char *tu_path(char *out, size_t size, const char *dir, const char *name);

/* ---- files ---------------------------------------------------------------- */

/* The whole file (NUL-terminated, malloc'd), or NULL; size may be NULL. */
char *tu_read_file(const char *path, size_t *size);
/* Writes n bytes (or text) to path. 0 on success, -1 on failure. */
int tu_write_file(const char *path, const void *bytes, size_t n);
int tu_write_text(const char *path, const char *text);
/* Writes data to a new file under $TMPDIR (or /tmp); its path goes to path
 * (capacity size). The caller removes it. 1 on success, 0 on failure. */
int tu_write_temp(char *path, size_t size, const void *data, size_t n);
/* An input the fuzzer once crashed a parser with:
 * $PB_SOURCE_DIR/tests/fuzz/regressions/<harness>/<name> (malloc'd, NUL-terminated);
 * fails the test when it cannot be read. */
char *tu_fuzz_input(const char *harness, const char *name, size_t *size);

/* ---- bytes ---------------------------------------------------------------- */

/* A growing buffer for the small files tests write (GGUF, safetensors),
 * little-endian as the host is; fails the test when out of memory. */
typedef struct tu_bytes {
    uint8_t *data;
    size_t n, cap;
} tu_bytes;
void tu_put(tu_bytes *b, const void *p, size_t n);
void tu_put_u32(tu_bytes *b, uint32_t v);
void tu_put_u64(tu_bytes *b, uint64_t v);
/* A GGUF string: its length as u64, then its bytes. */
void tu_put_str(tu_bytes *b, const char *s);

/* ---- directories ---------------------------------------------------------- */

/* A new directory $TMPDIR/<prefix>XXXXXX (or under /tmp) into dir. 0 on
 * success, -1 on failure. */
int tu_make_temp_dir(char *dir, size_t size, const char *prefix);
/* Removes path and, for a directory, everything below it. */
void tu_remove_tree(const char *path);
/* The names in dir (at most 32), sorted, joined by spaces; fails the test
 * when dir cannot be read. */
void tu_list_dir(const char *dir, char *out, size_t size);

/* An oracle case's model by name: "smollm2" is
 * $PB_SOURCE_DIR/models/TU_SMOLLM2_FILE, any other name <fixtures>/<name>.
 * NULL when that file is absent; fails the test when it does not load. */
pb_model *tu_load_case_model(const char *name, const pb_load_options *o);
/* tu_load_case_model with default options, the running test skipped (and
 * the absent model named) when the file is absent. */
pb_model *tu_load_case_model_or_skip(const char *name);

/* One fixture oracle case folder, as tu_visit_cases hands it over: its name,
 * its path, its expected.json (parsed) and its spec.json (text). */
typedef struct tu_oracle_case {
    const char *name;
    char dir[1400];
    struct json_t *expected;
    char *spec;
} tu_oracle_case;
/* Visits every case folder under <fixtures>/<subdir> (names starting with '.'
 * are skipped), loading expected.json and spec.json (failing the test when
 * either cannot be read), and frees both after visit. Returns how many
 * visits returned nonzero (a visit returns 0 for a case it skipped). */
int tu_visit_cases(const char *subdir, int (*visit)(const tu_oracle_case *c, void *ctx), void *ctx);
/* tu_visit_cases for a check of one path over many cases: in a sanitizer
 * build (tu_sanitized) the visits after the first TU_SANITIZED_CASES that
 * ran are skipped. Returns whether `want` visits ran (there,
 * TU_SANITIZED_CASES). */
#define TU_SANITIZED_CASES 3
int tu_visit_path_cases(const char *subdir, int (*visit)(const tu_oracle_case *c, void *ctx), void *ctx, int want);
/* The case `name` under <fixtures>/<subdir>: its name (name itself), dir
 * and spec (free it), no expected; fails the test when there is none. */
tu_oracle_case tu_case_named(const char *subdir, const char *name);

/* A scratch directory per test: tu_scratch_setup / tu_scratch_teardown are
 * cmocka setup and teardown functions whose state is a tu_scratch. */
typedef struct tu_scratch {
    char dir[256];
} tu_scratch;
int tu_scratch_setup(void **state);
int tu_scratch_teardown(void **state);

/* ---- models and arrays ----------------------------------------------------- */

/* Loads <fixtures>/<model>[/<file>] with two threads on backend; fails the
 * test when it does not load. */
pb_model *tu_load_model(const char *model, const char *file, pb_backend_kind backend);
/* The largest |x . u| / (|x| |u|) over every row (d_model wide) of every
 * hook a capture holds after a forward: 0 when every captured activation
 * is orthogonal to u. */
double tu_worst_alignment(const pb_capture *cap, const float *u, int d);
/* Reads a 1-D int32 .npy (token ids); *T receives its length. Fails the test
 * on a read error or another shape. */
int32_t *tu_read_ids(const char *path, int *T);
/* Reads a float32 .npy of n_dims dimensions (malloc'd); its shape goes to
 * shape. Fails the test on a read error or another number of dimensions. */
float *tu_read_f32(const char *path, int n_dims, int64_t shape[8]);

/* ---- sweeps ---------------------------------------------------------------- */

/* Creates and runs a sweep of spec on m; with_op = 0 hides the backend's
 * metric_rows (a copy of its ops table without it) so the sweep takes the
 * host path, and checks which path the sweep took. Returns the status and,
 * on success, the sweep (the caller frees it). */
pb_status tu_run_sweep(pb_model *m, const char *spec, int with_op, pb_sweep **out);
/* Creates and runs the sweep of an oracle case on m (failing the test on
 * an error). */
pb_sweep *tu_run_case_sweep(pb_model *m, const tu_oracle_case *c);
/* Largest |a - b| / max(1, |b|) over two sweeps' pair baselines and every
 * row's patched value (the same spec on two models). */
double tu_sweep_difference(const pb_sweep *a, const pb_sweep *b);
/* A cmocka teardown's end: frees sweep, model and the fixture itself;
 * returns 0. */
int tu_free_sweep_fixture(void *fixture, pb_sweep *sweep, pb_model *model);

/* ---- CUDA ------------------------------------------------------------------ */

/* What main returns after trying to create a CUDA backend: 0 when status is
 * PB_OK (go on), 77 (skip, with a note) without a device, 1 (with the
 * message) on any other failure, a build with CUDA whose module
 * (libpatchbay_cuda.so) does not load included. */
int tu_cuda_exit_code(pb_status status);
/* The backend a CUDA test runs on: CUDA when a device answers, or the one
 * PB_CUDA_TEST_STAND_IN names (cpu, reference; a note says that nothing
 * then tests the GPU). Returns what main returns at once (77 without a
 * device, 1 on a bad name or a failing device), or 0 to go on. */
int tu_cuda_device(pb_backend_kind *device);

/* ---- numbers --------------------------------------------------------------- */

/* sum (a - b)^2 / sum b^2, with 0/0 = 0. */
static inline double tu_nmse(const float *a, const float *b, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        num += d * d;
        den += (double)b[i] * b[i];
    }
    return den == 0.0 ? num : num / den;
}

static inline double tu_max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m || d != d)
            m = d;
    }
    return m;
}

/* |a - b|; 0 when both are NaN (an effect below the floor), +inf when one is. */
static inline double tu_abs_diff(double a, double b) {
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b) ? 0.0 : INFINITY;
    return fabs(a - b);
}

/* |a - b| relative to max(1, |b|); 0 when both are the same infinity or
 * both NaN, +inf when only one is NaN. */
static inline double tu_rel_diff(double a, double b) {
    if (isnan(a) || isnan(b))
        return isnan(a) && isnan(b) ? 0.0 : INFINITY;
    if (isinf(a) || isinf(b))
        return a == b ? 0.0 : INFINITY;
    return fabs(a - b) / fmax(1.0, fabs(b));
}

/* xorshift64*: reproducible across platforms. */
static inline uint64_t tu_next(uint64_t *state) {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [-scale, scale). */
static inline void tu_fill(float *x, size_t n, uint64_t seed, float scale) {
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n; i++)
        x[i] = scale * (2.0f * (float)((tu_next(&s) >> 40) / 16777216.0) - 1.0f);
}

#endif
