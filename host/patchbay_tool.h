/* Internal: what the patchbay tool (host/cli/) and the benchmarks need
 * beyond the public API; no stability promise, not installed.
 *
 * Why it exists: the command-line tool is a client of the library and
 * includes only include/patchbay.h and this header. Everything a library
 * user would call (sweeps, interventions, the refusal direction,
 * report.html, .npy) is public; what is here serves the tool alone: output
 * directories and whole-file reads, the monotonic clock, the random models'
 * shapes, the distribution of a sweep over ranks (MPI, the rank watchdog,
 * which GPU a rank takes) and the library's error setter, so that the
 * tool's parsers report through pb_last_error() like the library does.
 * Each function is declared here with the same prototype as in its
 * library header (util/outdir.h, included whole, excepted); host/
 * patchbay_tool.c includes both, so the compiler checks that they agree. */
#ifndef PB_PATCHBAY_TOOL_H
#define PB_PATCHBAY_TOOL_H

#include <stddef.h>

#include "patchbay.h"
/* The rank struct, its options and stages are read field by field by the
 * sweep command: the one internal header the tool cannot do without. */
#include "distributed/distribute.h"
/* pb_file_set (outputs that appear together or not at all): its struct is
 * on the caller's stack. */
#include "util/outdir.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- errors (util/internal.h) ---- */
/* Records a message for pb_last_error() and returns status. */
pb_status pb_fail(pb_status status, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;

/* ---- arrays (util/array.h) ---- */
/* Makes the array at *items (a T **, passed as void *: *capacity elements of
 * `size` bytes) hold at least `need` elements, doubling; PB_ERR_OOM naming
 * `what` on overflow or a failed allocation, *items and *capacity kept. */
pb_status pb_array_reserve(void *items, size_t *capacity, size_t need, size_t size, const char *what);

/* ---- text (util/utf8.h) ---- */
/* Length of the well-formed UTF-8 sequence at s (n bytes left), 0 when it
 * is ill-formed or cut short. */
size_t pb_utf8_length(const unsigned char *s, size_t n);

/* ---- time (util/clock.h) ---- */
/* Seconds on CLOCK_MONOTONIC: differences only mean something. */
double pb_now_seconds(void);

/* ---- files (util/outdir.h, formats/npy.h) ---- */
/* Output folders, whole-file reads and pb_file_set: util/outdir.h, included
 * above, is their one declaration. */
/* The most the tool reads of a text input it takes whole (a sweep spec,
 * prompts, pairs, ids): far beyond any real one, and a bound on what
 * /dev/zero given as one costs before it is refused. */
#define PB_INPUT_MAX_BYTES ((size_t)64 << 20)
/* Writes `size` bytes to path via path.tmp.<pid> + fsync + rename. */
pb_status pb_write_file_atomic(const char *path, const void *data, size_t size);

/* ---- text only (text/model_text.h) ---- */
/* A model with its text side only (vocabulary, tokenizer, chat template,
 * BOS/EOS ids), from a .gguf's metadata or a folder's tokenizer files,
 * without reading a weight or checking the architecture: for tokenize and
 * decode. Only text calls, pb_model_get_config and pb_model_free take it. */
pb_status pb_model_load_text(pb_model **out, const char *path);

/* ---- models (model/model_random.h) ---- */
/* The config of a random model name ("llama3-70b:4") without its weights. */
pb_status pb_random_config(pb_model_config *out, const char *spec);

/* ---- devices (backend/backend_cuda.h, distributed/rank_device.h) ---- */
/* CUDA devices this process sees; PB_ERR_UNSUPPORTED without CUDA. */
pb_status pb_cuda_device_count(int *count);
/* `requested` when >= 0, else local_rank % device_count (0 when unknown). */
int pb_rank_device_choose(int requested, int local_rank, int device_count);

/* ---- attribution (attribution/atp.h) ---- */
/* pb_atp_verify (an estimate checked by the exact engine, kept for
 * results.json, when the spec asks), then one line into summary saying
 * what it found ("" when nothing was asked). */
pb_status pb_atp_verify_summary(pb_sweep *sweep, char *summary, size_t size);

#ifdef __cplusplus
}
#endif
#endif
