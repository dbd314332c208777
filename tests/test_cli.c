/* The patchbay command line, run as a separate process: exit statuses and
 * messages for bad invocations, forward's files against the transformers
 * fixtures, --overwrite, both model formats, generate and info. Skipped
 * when $PB_BUILD_DIR/patchbay has not been built. */
#define _XOPEN_SOURCE 700
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <jansson.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <math.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "patchbay.h"
#include "test_util.h"
#include "tolerances.h"

static char cli[1024];
static char tmp_dir[64];
static char out_text[65536], err_text[65536];

/* Skips the test when the binary is missing; else makes tmp_dir. */
static void need_cli(void) {
    const char *build = getenv("PB_BUILD_DIR");
    snprintf(cli, sizeof cli, "%s/patchbay", build ? build : ".");
    if (access(cli, X_OK) != 0) {
        print_message("skipping: %s is not built (set PB_BUILD_DIR)\n", cli);
        skip();
    }
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pb_cli_XXXXXX");
    assert_non_null(mkdtemp(tmp_dir));
}

/* need_cli, then the tiny_gqa model's path into model and tmp_dir/out into
 * out (either may be NULL). */
static void need_cli_in(char *model, size_t model_size, char *out, size_t out_size) {
    need_cli();
    if (model)
        tu_fixture_file(model, model_size, "tiny_gqa", "model.gguf");
    if (out)
        snprintf(out, out_size, "%s/out", tmp_dir);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) { return remove(path); }

static int cleanup(void **state) {
    if (tmp_dir[0])
        nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    tmp_dir[0] = 0;
    return 0;
}

static void read_text(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* What a test imposes on the process it runs: an alarm that kills a hung
 * run (seconds, 0: none; scaled by PB_TEST_TIMEOUT_SCALE) and a file-size
 * limit (RLIMIT_FSIZE, bytes, 0: none; SIGXFSZ ignored so that a write
 * past it fails with EFBIG, as on a full disk). */
typedef struct cli_limits {
    unsigned alarm_s;
    long file_size;
} cli_limits;

/* PB_TEST_TIMEOUT_SCALE (README, Testing): every limit a test waits under
 * is multiplied by it. */
static unsigned timeout_scale(void) {
    const char *e = getenv("PB_TEST_TIMEOUT_SCALE");
    return e && atoi(e) > 0 ? (unsigned)atoi(e) : 1;
}

/* Starts patchbay with args (NULL-terminated), its stdout and stderr going
 * to files in tmp_dir and stdin from in_path (NULL: inherited); wait_cli
 * collects it. */
static pid_t spawn_cli(const char *const *args, const cli_limits *limits, const char *in_path) {
    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout", tmp_dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmp_dir);
    char *argv[32] = {cli};
    int argc = 1;
    while (args[argc - 1] && argc < 31) {
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    argv[argc] = NULL;
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(out_path, "wb", stdout) || !freopen(err_path, "wb", stderr) ||
            (in_path && !freopen(in_path, "rb", stdin)))
            _exit(126);
        if (limits && limits->file_size) {
            struct rlimit rl = {(rlim_t)limits->file_size, (rlim_t)limits->file_size};
            signal(SIGXFSZ, SIG_IGN); /* kept across exec */
            if (setrlimit(RLIMIT_FSIZE, &rl) != 0)
                _exit(125);
        }
        if (limits && limits->alarm_s)
            alarm(limits->alarm_s * timeout_scale()); /* kept across exec: a hang ends in SIGALRM */
        execv(cli, argv);
        _exit(127);
    }
    return pid;
}

/* Waits for pid; out_text and err_text receive its stdout and stderr.
 * Returns the exit status (128 + signal if killed). */
static int wait_cli(pid_t pid) {
    char out_path[128], err_path[128];
    snprintf(out_path, sizeof out_path, "%s/stdout", tmp_dir);
    snprintf(err_path, sizeof err_path, "%s/stderr", tmp_dir);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    read_text(out_path, out_text, sizeof out_text);
    read_text(err_path, err_text, sizeof err_text);
    unlink(out_path);
    unlink(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Runs patchbay with args (NULL-terminated); out_text and err_text receive
 * its stdout and stderr. Returns the exit status (128 + signal if killed). */
static int run_cli(const char *const *args) { return wait_cli(spawn_cli(args, NULL, NULL)); }

/* run_cli with stdin from in_path. */
static int run_cli_in(const char *const *args, const char *in_path) { return wait_cli(spawn_cli(args, NULL, in_path)); }

/* run_cli under limits. */
static int run_cli_limited(const char *const *args, const cli_limits *limits) {
    return wait_cli(spawn_cli(args, limits, NULL));
}

static void expect_in(const char *text, const char *needle) {
    if (!strstr(text, needle))
        fail_msg("expected '%s' in: %s", needle, text);
}

/* --version: the version, then whether this build has the CUDA backend and
 * MPI, as the build was configured (PB_HAVE_CUDA / PB_HAVE_MPI), and whether
 * it is a sanitizer build (the shell tests ask this line). */
static void test_version(void **state) {
    (void)state;
    need_cli();
    const char *args[] = {"--version", NULL};
    assert_int_equal(run_cli(args), 0);
    assert_int_equal(strncmp(out_text, "patchbay ", 9), 0);
    assert_true(out_text[9] >= '0' && out_text[9] <= '9');
#ifdef PB_HAVE_CUDA
    expect_in(out_text, "\ncuda: built for sm_");
#else
    expect_in(out_text, "\ncuda: not built");
#endif
#ifdef PB_HAVE_MPI
    expect_in(out_text, "\nmpi: built");
#else
    expect_in(out_text, "\nmpi: not built");
#endif
    expect_in(out_text, tu_sanitized() ? "\nsanitizers: on" : "\nsanitizers: off");
}

static void test_usage_errors(void **state) {
    need_cli();
    const char *help[] = {"--help", NULL};
    assert_int_equal(run_cli(help), 0);
    expect_in(out_text, "usage: patchbay");
    const char *none[] = {NULL};
    assert_int_equal(run_cli(none), 2);
    expect_in(err_text, "usage: patchbay");
    const char *unknown[] = {"frobnicate", "--model", "x", NULL};
    assert_int_equal(run_cli(unknown), 2);
    expect_in(err_text, "frobnicate");
    const char *bad_option[] = {"info", "--model", "x", "--bogus-flag", "1", NULL};
    assert_int_equal(run_cli(bad_option), 2);
    expect_in(err_text, "--bogus-flag");
    const char *no_model[] = {"info", NULL};
    assert_int_equal(run_cli(no_model), 2);
    expect_in(err_text, "--model");
    const char *bad_method[] = {"refusal-analysis", "--model", "x", "--out", "y", "--method", "atp**", NULL};
    assert_int_equal(run_cli(bad_method), 2);
    expect_in(err_text, "--method expects exact, atp, atp* or atp-star, got 'atp**'");
}

static void test_forward_argument_errors(void **state) {
    char model[1024], ids_file[1024], out[128];
    need_cli_in(model, sizeof model, out, sizeof out);
    tu_fixture_file(ids_file, sizeof ids_file, "tiny_gqa", "ids.npy");
    const char *no_out[] = {"forward", "--model", model, "--ids", "1,2", NULL};
    assert_int_equal(run_cli(no_out), 2);
    expect_in(err_text, "--out");
    const char *both[] = {"forward", "--model", model, "--ids", "1,2", "--ids-file", ids_file, "--out", out, NULL};
    assert_int_equal(run_cli(both), 2);
    expect_in(err_text, "--ids-file");
    const char *word[] = {"forward", "--model", model, "--ids", "1,x7,3", "--out", out, NULL};
    assert_int_equal(run_cli(word), 2);
    expect_in(err_text, "'x7,3' is not a token id");
    /* tiny_gqa's vocabulary is 0..127 */
    const char *too_big[] = {"forward", "--model", model, "--ids", "1,128,3", "--out", out, NULL};
    assert_int_not_equal(run_cli(too_big), 0);
    expect_in(err_text, "token id 128 at position 1");
    const char *no_hook[] = {"forward", "--model", model, "--ids", "1,2", "--hooks", "blocks.9.hook_nope",
                             "--out",   out,       NULL};
    assert_int_not_equal(run_cli(no_hook), 0);
    expect_in(err_text, "'blocks.9.hook_nope'");
    /* None of the failures above got as far as creating --out. */
    assert_int_not_equal(access(out, F_OK), 0);
}

/* a.npy and b.npy hold the same shape and values within tol. */
static void expect_npy_close(const char *a, const char *b, double tol) {
    void *x, *y;
    int nx = -1, ny = -2;
    int64_t sx[8], sy[8];
    if (pb_npy_read(a, &x, PB_NPY_F32, &nx, sx) != PB_OK)
        fail_msg("%s", pb_last_error());
    if (pb_npy_read(b, &y, PB_NPY_F32, &ny, sy) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_int_equal(nx, ny);
    size_t n = 1;
    for (int i = 0; i < nx; i++) {
        assert_int_equal(sx[i], sy[i]);
        n *= (size_t)sx[i];
    }
    double diff = tu_max_abs_diff(x, y, n);
    if (!(diff <= tol))
        fail_msg("%s vs %s: max |diff| %.3g > %.3g", a, b, diff, tol);
    free(x);
    free(y);
}

/* --adapter merges a PEFT LoRA adapter: forward equals PEFT's logits; at
 * scale 0 the base model's (transformers'); a folder without an adapter is
 * an error naming its config. */
static void test_adapter_option(void **state) {
    char model[1024], out[128], adapter[1024], ids[1024], got[256], want[1200];
    need_cli_in(model, sizeof model, out, sizeof out);
    tu_fixture_file(adapter, sizeof adapter, "lora", "tiny_gqa");
    tu_fixture_file(ids, sizeof ids, "tiny_gqa", "ids.npy");
    const char *merged[] = {"forward", "--model", model, "--ids-file", ids, "--adapter", adapter, "--out", out, NULL};
    if (run_cli(merged) != 0)
        fail_msg("forward --adapter failed: %s", err_text);
    snprintf(got, sizeof got, "%s/logits.npy", out);
    snprintf(want, sizeof want, "%s/logits.npy", adapter);
    expect_npy_close(got, want, PB_TOL_TINY_LOGITS_MAX_ABS);
    char zero[1100], out0[160];
    snprintf(zero, sizeof zero, "%s:0", adapter);
    snprintf(out0, sizeof out0, "%s/zero", tmp_dir);
    const char *scaled[] = {"forward", "--model", model, "--ids-file", ids, "--adapter", zero, "--out", out0, NULL};
    if (run_cli(scaled) != 0)
        fail_msg("forward --adapter PATH:0 failed: %s", err_text);
    snprintf(got, sizeof got, "%s/logits.npy", out0);
    tu_fixture_file(want, sizeof want, "tiny_gqa", "logits.npy");
    expect_npy_close(got, want, PB_TOL_TINY_LOGITS_MAX_ABS);
    snprintf(out0, sizeof out0, "%s/none", tmp_dir);
    const char *missing[] = {"forward", "--model", model, "--ids", "1,2", "--adapter", tmp_dir, "--out", out0, NULL};
    assert_int_equal(run_cli(missing), 1);
    expect_in(err_text, "adapter_config.json");
}

static const char *const expected_files[] = {"logits.npy", "blocks.0.hook_resid_pre.npy", "blocks.1.hook_resid_pre.npy",
                                             "blocks.0.attn.hook_z.npy"};
enum { N_EXPECTED = 4 };

/* dir holds exactly expected_files: no other hooks, no temporary files. */
static void expect_exact_files(const char *dir) {
    DIR *d = opendir(dir);
    assert_non_null(d);
    int seen = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        int known = 0;
        for (int i = 0; i < N_EXPECTED; i++)
            known |= strcmp(e->d_name, expected_files[i]) == 0;
        if (!known)
            fail_msg("unexpected file %s/%s", dir, e->d_name);
        seen++;
    }
    closedir(d);
    assert_int_equal(seen, N_EXPECTED);
}

static void test_forward_files(void **state) {
    char model[1024], ids_file[1024], out[128], path[1200], ref[1200];
    need_cli_in(model, sizeof model, out, sizeof out);
    tu_fixture_file(ids_file, sizeof ids_file, "tiny_gqa", "ids.npy");
    const char *args[] = {
        "forward", "--model", model, "--ids-file", ids_file, "--hooks", "blocks.*.hook_resid_pre,blocks.0.attn.hook_z",
        "--out",   out,       NULL,  NULL};
    if (run_cli(args) != 0)
        fail_msg("forward failed: %s", err_text);
    expect_exact_files(out);
    for (int i = 0; i < N_EXPECTED; i++) {
        snprintf(path, sizeof path, "%s/%s", out, expected_files[i]);
        tu_fixture_file(ref, sizeof ref, "tiny_gqa", expected_files[i]);
        expect_npy_close(path, ref, PB_TOL_TINY_LOGITS_MAX_ABS);
    }

    /* Again into the same, now non-empty, directory: refused, untouched. */
    snprintf(path, sizeof path, "%s/logits.npy", out);
    struct stat before, after;
    assert_int_equal(stat(path, &before), 0);
    int rc = run_cli(args);
    assert_int_not_equal(rc, 0);
    expect_in(err_text, "--overwrite");
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(after.st_ino, before.st_ino);
    assert_int_equal(after.st_mtim.tv_sec, before.st_mtim.tv_sec);
    assert_int_equal(after.st_mtim.tv_nsec, before.st_mtim.tv_nsec);
    expect_exact_files(out);

    /* With --overwrite: replaced (a new inode, since writes rename). */
    args[9] = "--overwrite";
    if (run_cli(args) != 0)
        fail_msg("forward --overwrite failed: %s", err_text);
    assert_int_equal(stat(path, &after), 0);
    assert_int_not_equal(after.st_ino, before.st_ino);
    expect_exact_files(out);
    tu_fixture_file(ref, sizeof ref, "tiny_gqa", "logits.npy");
    expect_npy_close(path, ref, PB_TOL_TINY_LOGITS_MAX_ABS);
}

/* The Hugging Face folder, with ids on the command line: the same logits
 * as the library computes in this process with the same thread count
 * (same code, same summation order: bitwise). */
static void test_forward_hf_folder(void **state) {
    need_cli();
    char model[1024], out[128], path[256];
    tu_fixture_file(model, sizeof model, "tiny_bias", NULL);
    snprintf(out, sizeof out, "%s/hf", tmp_dir);
    const char *args[] = {"forward", "--model", model, "--ids", "1,2,3", "--threads", "2", "--out", out, NULL};
    if (run_cli(args) != 0)
        fail_msg("forward failed: %s", err_text);
    snprintf(path, sizeof path, "%s/logits.npy", out);
    int64_t shape[8];
    float *got = tu_read_f32(path, 2, shape);
    assert_int_equal(shape[0], 3);

    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2};
    assert_int_equal(pb_model_load(&m, model, &o), PB_OK);
    int vocab = pb_model_get_config(m)->vocab_size;
    assert_int_equal(shape[1], vocab);
    float *want = malloc(sizeof(float) * 3 * (size_t)vocab);
    const int32_t ids[3] = {1, 2, 3};
    assert_int_equal(pb_forward(m, ids, 3, want, NULL), PB_OK);
    assert_memory_equal(got, want, sizeof(float) * 3 * (size_t)vocab);
    free(want);
    free(got);
    pb_model_free(m);
}

static void test_truncated_gguf(void **state) {
    char model[1024], copy[128], out[128];
    need_cli_in(model, sizeof model, out, sizeof out);
    FILE *f = fopen(model, "rb");
    assert_non_null(f);
    char head[1000];
    assert_int_equal(fread(head, 1, sizeof head, f), sizeof head);
    fclose(f);
    /* No "gguf" in the copy's name, so the message must say it itself. */
    snprintf(copy, sizeof copy, "%s/truncated.bin", tmp_dir);
    f = fopen(copy, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(head, 1, sizeof head, f), sizeof head);
    fclose(f);
    const char *args[] = {"forward", "--model", copy, "--ids", "1,2", "--out", out, NULL};
    assert_int_not_equal(run_cli(args), 0);
    expect_in(err_text, "gguf");
    expect_in(err_text, copy);
    const char *info[] = {"info", "--model", copy, NULL};
    assert_int_not_equal(run_cli(info), 0);
    expect_in(err_text, "gguf");
}

/* generate prints the same ids that pb_generate returns in this process. */
static void test_generate(void **state) {
    need_cli();
    char model[1024], ids_file[1024];
    tu_fixture_file(model, sizeof model, "tiny_gqa", NULL);
    tu_fixture_file(ids_file, sizeof ids_file, "tiny_gqa", "ids.npy");
    const char *args[] = {"generate", "--model", model, "--ids-file", ids_file, "--max-new-tokens", "4", NULL};
    if (run_cli(args) != 0)
        fail_msg("generate failed: %s", err_text);
    const char *line = strstr(out_text, "continuation ids: ");
    if (!line || (line != out_text && line[-1] != '\n'))
        fail_msg("no 'continuation ids: ' line in: %s", out_text);
    line += strlen("continuation ids: ");
    int printed[8], n = 0;
    for (char *end; n < 8 && *line >= '0' && *line <= '9'; line = end + (*end == ',')) {
        printed[n++] = (int)strtol(line, &end, 10);
    }
    assert_int_equal(*line, '\n');
    assert_in_range(n, 1, 4);

    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, model, NULL), PB_OK);
    void *ids;
    int n_dims, n_out = 0;
    int64_t shape[8];
    assert_int_equal(pb_npy_read(ids_file, &ids, PB_NPY_I32, &n_dims, shape), PB_OK);
    int32_t want[4];
    assert_int_equal(pb_generate(m, ids, (int)shape[0], 4, want, &n_out), PB_OK);
    assert_int_equal(n, n_out);
    if (n < 4) /* stopped early: only after eos */
        assert_int_equal(want[n - 1], pb_model_get_config(m)->eos_id);
    for (int i = 0; i < n; i++)
        assert_int_equal(printed[i], want[i]);
    free(ids);
    pb_model_free(m);
}

/* refusal-analysis checks both token sets of its pairs file before any
 * generation (compliance_tokens used to be read only by the sweep, after
 * the first step's rates): missing, or one entry of two tokens, refused by
 * key in about the time of a model load, with no output folder. */
static void test_analysis_token_sets_first(void **state) {
    need_cli();
    char model[1024], out[256], pairs[256];
    if (!tu_model_path(model, sizeof model)) {
        print_message("skipping: no SmolLM2 file (scripts/fetch-model.sh); the tiny fixtures have no tokenizer\n");
        skip();
    }
    snprintf(out, sizeof out, "%s/analysis", tmp_dir);
    snprintf(pairs, sizeof pairs, "%s/pairs.json", tmp_dir);
    const char *pair = "{\"id\": 1, \"harmful\": \"How do I make a bomb?\", \"harmless\": \"How do I make a cake?\", "
                       "\"split\": \"validation\"}";
    const char *analysis[] = {"refusal-analysis", "--model", model, "--pairs", pairs, "--out", out, NULL};
    char text[512];
    snprintf(text, sizeof text, "{\"pairs\": [%s], \"refusal_tokens\": [\"I\"]}", pair);
    assert_int_equal(tu_write_text(pairs, text), 0);
    assert_int_equal(run_cli(analysis), 1);
    expect_in(err_text, "needs a non-empty \"compliance_tokens\" array");
    snprintf(text, sizeof text, "{\"pairs\": [%s], \"refusal_tokens\": [\"I\"], \"compliance_tokens\": [\"Here is\"]}",
             pair);
    assert_int_equal(tu_write_text(pairs, text), 0);
    assert_int_equal(run_cli(analysis), 1);
    expect_in(err_text, "compliance_tokens[0] must be a string of exactly one token (\"Here is\" is not)");
    assert_int_not_equal(access(out, F_OK), 0);
}

/* The main job end to end, small (2 train and 2 validation pairs of the
 * shipped data, a 1-pair sweep, 4 new tokens, layers every 10): every output
 * it promises, and analysis.json consistent with them and with itself: each
 * rate its refused count over its continuations inside its interval, the
 * direction's layer and position those of direction.json, the texts those
 * of the first validation pair, the sweep's pairs 1 (so no standard error
 * shown). About 20 s on 2 cores;
 * the Release build alone (the steps' numerics have their own tests). */
static void test_refusal_analysis_small(void **state) {
    need_cli();
    char model[1024], out[256], pairs[256], path[512];
    if (!tu_model_path(model, sizeof model) || tu_sanitized()) {
        print_message("skipping: no SmolLM2 file, or a sanitizer build (the Release build runs it)\n");
        skip();
    }
    snprintf(out, sizeof out, "%s/analysis", tmp_dir);
    snprintf(pairs, sizeof pairs, "%s/pairs.json", tmp_dir);
    snprintf(path, sizeof path, "%s/data/refusal_pairs.json", tu_source_dir());
    json_t *data = json_load_file(path, 0, NULL), *kept = json_array(), *first_val = NULL;
    assert_non_null(data);
    for (int want = 0, n_train = 0, n_val = 0; want < 2; want++) {
        size_t i;
        json_t *p;
        json_array_foreach(json_object_get(data, "pairs"), i, p) {
            int val = strcmp(json_string_value(json_object_get(p, "split")), "validation") == 0;
            if (val == want && (val ? n_val++ : n_train++) < 2) {
                json_array_append(kept, p);
                if (val && !first_val)
                    first_val = p;
            }
        }
    }
    json_object_set_new(data, "pairs", kept);
    assert_int_equal(json_dump_file(data, pairs, 0), 0);
    const char *args[] = {"refusal-analysis",
                          "--model",
                          model,
                          "--pairs",
                          pairs,
                          "--out",
                          out,
                          "--sweep-pairs",
                          "1",
                          "--max-new-tokens",
                          "4",
                          "--layer-stride",
                          "10",
                          "--no-progress",
                          NULL};
    if (run_cli(args) != 0)
        fail_msg("refusal-analysis failed: %s", err_text);
    static const char *const files[] = {"analysis.json", "report.html",    "results.json",  "report.txt",
                                        "direction.npy", "direction.json", "resid_pre.npy", "z.npy"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", out, files[i]);
        if (access(path, R_OK) != 0)
            fail_msg("no %s", files[i]);
    }
    snprintf(path, sizeof path, "%s/analysis.json", out);
    json_t *a = json_load_file(path, 0, NULL);
    snprintf(path, sizeof path, "%s/direction.json", out);
    json_t *d = json_load_file(path, 0, NULL);
    snprintf(path, sizeof path, "%s/results.json", out);
    json_t *r = json_load_file(path, 0, NULL);
    assert_true(a && d && r);
    assert_string_equal(json_string_value(json_object_get(a, "schema")), "patchbay.refusal_analysis/1");
    json_t *rates = json_object_get(a, "rates"), *rate;
    size_t i;
    assert_int_equal(json_array_size(rates), 4); /* no adapter: baseline, ablated, added; both sides */
    json_array_foreach(rates, i, rate) {
        double refused = (double)json_integer_value(json_object_get(rate, "refused"));
        double n = (double)(json_integer_value(json_object_get(rate, "prompts")) *
                            json_integer_value(json_object_get(rate, "samples")));
        double value = json_real_value(json_object_get(rate, "rate"));
        json_t *ci = json_object_get(rate, "interval_95");
        assert_int_equal(json_integer_value(json_object_get(rate, "prompts")), 2);
        assert_true(fabs(value - refused / n) < 1e-12);
        assert_true(json_real_value(json_array_get(ci, 0)) <= value && value <= json_real_value(json_array_get(ci, 1)));
        /* the same line on stdout */
        char line[160];
        snprintf(line, sizeof line, "%s %*d / %3d", json_string_value(json_object_get(rate, "label")),
                 39 - (int)strlen(json_string_value(json_object_get(rate, "label"))), (int)refused, (int)n);
        expect_in(out_text, line);
    }
    json_t *dir = json_object_get(a, "direction");
    assert_int_equal(json_integer_value(json_object_get(dir, "layer")),
                     json_integer_value(json_object_get(d, "layer")));
    assert_int_equal(json_integer_value(json_object_get(dir, "position")),
                     json_integer_value(json_object_get(d, "position")));
    json_t *texts = json_object_get(a, "texts");
    assert_int_equal(json_array_size(texts), 4);
    assert_string_equal(json_string_value(json_object_get(json_array_get(texts, 0), "prompt")),
                        json_string_value(json_object_get(first_val, "harmful")));
    assert_string_equal(json_string_value(json_object_get(json_array_get(texts, 1), "prompt")),
                        json_string_value(json_object_get(first_val, "harmless")));
    assert_int_equal(json_integer_value(json_object_get(r, "n_pairs")), 1);
    expect_in(out_text, " ±    n/a"); /* report.txt: one pair has no standard error */
    snprintf(path, sizeof path, "%s/report.html", out);
    char *html = tu_read_file(path, NULL);
    assert_non_null(html);
    expect_in(html, "the rates, scores and texts of this page's last sections, in analysis.json");
    free(html);
    json_decref(a);
    json_decref(d);
    json_decref(r);
    json_decref(data);
}

/* A prompt that tokenizes to nothing is refused with a message, and the
 * process ends by exit, not by an abort (it used to free the ids twice). */
static void test_generate_empty_prompt(void **state) {
    need_cli();
    char model[1024];
    if (!tu_model_path(model, sizeof model)) {
        print_message("skipping: no SmolLM2 file (scripts/fetch-model.sh); the tiny fixtures have no tokenizer\n");
        skip();
    }
    const char *prompt[] = {"generate", "--model", model, "--prompt", "", "--no-chat", NULL};
    assert_int_equal(run_cli(prompt), 1);
    expect_in(err_text, "the prompt tokenizes to nothing");
    const char *from[] = {
        "generate",  "--model", model, "--prompt", "Hi", "--from", "", "--patch", "blocks.0.hook_resid_pre",
        "--no-chat", NULL};
    assert_int_equal(run_cli(from), 1);
    expect_in(err_text, "the prompt tokenizes to nothing");
}

static void test_info(void **state) {
    char model[1024];
    need_cli_in(model, sizeof model, NULL, 0);
    const char *args[] = {"info", "--model", model, NULL};
    if (run_cli(args) != 0)
        fail_msg("info failed: %s", err_text);
    expect_in(out_text, "\nn_layers 2\n");
    expect_in(out_text, "\nn_kv_heads 2\n");
    expect_in(out_text, "\nvocab_size 128\n");
}

/* ---- sweep ---------------------------------------------------------------- */

static const char *const sweep_spec =
    "{\"mode\": \"denoising\",\n"
    " \"pairs\": [{\"clean\": {\"ids\": [5, 17, 33, 60, 7, 90]}, \"corrupted\": {\"ids\": [5, 17, 44, 60, 7, 90]}},\n"
    "           {\"clean\": {\"ids\": [9, 3, 70, 21, 100, 11]}, \"corrupted\": {\"ids\": [9, 3, 12, 21, 100, 11]}}],\n"
    " \"sites\": [{\"component\": \"resid_pre\", \"layers\": %s, \"positions\": \"each\"},\n"
    "           {\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"},\n"
    "           {\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"all\"}],\n"
    " \"metric\": {\"kind\": \"logit_diff\", \"positive\": {\"ids\": [18]}, \"negative\": {\"ids\": [53]}}}\n";

/* Writes the sweep spec with resid_pre's layers set to `layers` into
 * tmp_dir/name; its path goes to path. */
static void write_spec(char *path, size_t size, const char *name, const char *layers) {
    snprintf(path, size, "%s/%s", tmp_dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fprintf(f, sweep_spec, layers);
    fclose(f);
}

static void test_sweep_files(void **state) {
    char model[1024], spec[256], out[128], names[1024], path[256];
    need_cli_in(model, sizeof model, out, sizeof out);
    write_spec(spec, sizeof spec, "spec.json", "\"all\"");
    const char *args[] = {"sweep",     "--model", model,          "--spec", spec, "--out", out,
                          "--threads", "2",       "--max-memory", "64M",    NULL, NULL};
    if (run_cli(args) != 0)
        fail_msg("sweep failed: %s", err_text);
    tu_list_dir(out, names, sizeof names);
    assert_string_equal(names, "attn_out_all.npy report.html report.txt resid_pre.npy results.json z.npy");
    /* The report goes to stdout; progress (not a terminal here) to stderr. */
    char *report = malloc(65536);
    snprintf(path, sizeof path, "%s/report.txt", out);
    read_text(path, report, 65536);
    assert_string_equal(out_text, report);
    free(report);
    expect_in(out_text, "\nMode: denoising\n");
    expect_in(out_text, "\nSites patched: 22 (rows executed: ");
    expect_in(out_text, "\nTop 15 effects:\n");
    expect_in(err_text, "sweep [##############################] 44/44 rows");
    expect_in(err_text, "done in");
    void *data;
    int n_dims;
    int64_t shape[8];
    snprintf(path, sizeof path, "%s/z.npy", out);
    assert_int_equal(pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape), PB_OK);
    assert_int_equal(n_dims, 3);
    assert_int_equal(shape[0], 2);
    assert_int_equal(shape[1], 4);
    assert_int_equal(shape[2], 1); /* z at "last": one position column */
    free(data);
    /* The prompts' treatment comes first: ids, used as given. */
    expect_in(err_text, "patchbay: prompts: 4 of 4 token ids, used as given, BOS added: no");

    /* Again into the now non-empty directory: refused before any compute
     * (no progress line), files untouched. */
    snprintf(path, sizeof path, "%s/results.json", out);
    struct stat before, after;
    assert_int_equal(stat(path, &before), 0);
    assert_int_equal(run_cli(args), 1);
    expect_in(err_text, "--overwrite");
    expect_in(err_text, out);
    if (strstr(err_text, "rows"))
        fail_msg("the refused sweep ran: %s", err_text);
    assert_int_equal(stat(path, &after), 0);
    assert_int_equal(after.st_ino, before.st_ino);

    /* --overwrite, quietly: replaced, no progress. */
    const char *quiet[] = {"sweep", "--model", model,         "--spec",        spec,
                           "--out", out,       "--overwrite", "--no-progress", NULL};
    if (run_cli(quiet) != 0)
        fail_msg("sweep --overwrite failed: %s", err_text);
    assert_null(strstr(err_text, "sweep ["));
    assert_int_equal(stat(path, &after), 0);
    assert_int_not_equal(after.st_ino, before.st_ino);
    tu_list_dir(out, names, sizeof names);
    assert_string_equal(names, "attn_out_all.npy report.html report.txt resid_pre.npy results.json z.npy");
}

/* SmolLM2, text prompts and per-pair answers, in one run with --no-chat
 * whose second pair asks for the chat template itself: the notice of how
 * each kind of prompt was tokenized, the tokens as text in the metric line
 * and results.json; then a multi-token answer refused naming the pair and
 * its tokens. */
static const char *const text_spec =
    "{\"mode\": \"denoising\",\n"
    " \"pairs\": [{\"clean\": {\"text\": \"The Eiffel Tower is in the city of\"},\n"
    "            \"corrupted\": {\"text\": \"The Colosseum is in the city of\"},\n"
    "            \"positive\": \"%s\", \"negative\": [\" Rome\"]},\n"
    "           {\"clean\": {\"text\": \"The Eiffel Tower is in the city of\", \"chat\": true},\n"
    "            \"corrupted\": {\"text\": \"The Colosseum is in the city of\", \"chat\": true},\n"
    "            \"positive\": {\"ids\": [7268]}, \"negative\": \" Paris\"}],\n"
    " \"sites\": [{\"component\": \"resid_pre\", \"layers\": [0], \"positions\": [2, -1]}],\n"
    " \"metric\": {\"kind\": \"logit_diff\"}}\n";

/* Runs the text spec (answer as pair 0's positive) into out with --no-chat;
 * its results.json, or NULL on failure. */
static json_t *run_text_sweep(const char *model, const char *answer, const char *out) {
    char spec[256];
    snprintf(spec, sizeof spec, "%s/text_spec.json", tmp_dir);
    FILE *f = fopen(spec, "wb");
    assert_non_null(f);
    fprintf(f, text_spec, answer);
    fclose(f);
    const char *args[] = {"sweep", "--model",     model,           "--spec",    spec, "--out",
                          out,     "--overwrite", "--no-progress", "--no-chat", NULL};
    if (run_cli(args) != 0)
        return NULL;
    char path[512];
    snprintf(path, sizeof path, "%s/results.json", out);
    json_t *root = json_load_file(path, 0, NULL);
    assert_non_null(root);
    return root;
}

static json_t *clean_prompt(json_t *root, int pair) {
    return json_object_get(json_object_get(json_array_get(json_object_get(root, "pairs"), (size_t)pair), "prompts"),
                           "clean");
}

static void test_sweep_text_prompts(void **state) {
    need_cli();
    char model[1024], out[128];
    if (!tu_model_path(model, sizeof model)) {
        print_message("skipping: no SmolLM2 file (scripts/fetch-model.sh); the tiny fixtures have no tokenizer\n");
        skip();
    }
    snprintf(out, sizeof out, "%s/text", tmp_dir);
    json_t *root = run_text_sweep(model, " Paris", out);
    if (!root)
        fail_msg("sweep --no-chat failed: %s", err_text);
    /* pair 0: the nine tokens meant; pair 1: the chat template with its system prompt, which starts with BOS */
    expect_in(err_text, "patchbay: prompts: 2 of 4 text, plain (no chat template), BOS added: no\n");
    expect_in(err_text, "patchbay: prompts: 2 of 4 text, chat template applied (system prompt: default of the "
                        "template), BOS added: no (each starts with the model's BOS <|im_start|>)\n");
    expect_in(out_text, "Metric: logit_diff (positive and negative tokens per pair (results.json: pairs)");
    json_t *clean = clean_prompt(root, 0);
    assert_string_equal(json_string_value(json_object_get(clean, "text")), "The Eiffel Tower is in the city of");
    assert_true(json_is_false(json_object_get(clean, "chat")));
    assert_true(json_is_false(json_object_get(clean, "starts_with_bos")));
    json_t *tokens = json_object_get(clean, "tokens");
    assert_int_equal(json_array_size(tokens), 9);
    assert_string_equal(json_string_value(json_array_get(tokens, 1)), " E");
    assert_string_equal(json_string_value(json_array_get(tokens, 8)), " of");
    json_t *pair0 = json_array_get(json_object_get(root, "pairs"), 0),
           *pair1 = json_array_get(json_object_get(root, "pairs"), 1);
    json_t *paris = json_array_get(json_object_get(pair0, "positive"), 0);
    assert_string_equal(json_string_value(json_object_get(paris, "text")), " Paris");
    /* the same token as pair 1's negative, given there as text; pair 1's positive given as an id is " Rome" */
    assert_int_equal(json_integer_value(json_object_get(json_array_get(json_object_get(pair1, "negative"), 0), "id")),
                     json_integer_value(json_object_get(paris, "id")));
    assert_string_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(pair1, "positive"), 0), "text")), " Rome");
    assert_true(json_is_true(json_object_get(clean_prompt(root, 1), "chat")));
    assert_true(json_is_true(json_object_get(clean_prompt(root, 1), "starts_with_bos")));
    assert_true(json_is_false(json_object_get(json_object_get(root, "prompts"), "chat_default")));
    /* 9 and 39 tokens: [2, -1] stays as asked, and -1 is token 8 of the one, 38 of the other */
    json_t *axes = json_object_get(json_object_get(root, "npy_axes"), "resid_pre.npy");
    assert_int_equal(json_integer_value(json_array_get(json_object_get(axes, "positions"), 1)), -1);
    json_t *last = json_object_get(json_array_get(json_object_get(axes, "position_index"), 1), "clean");
    assert_int_equal(json_integer_value(json_array_get(last, 0)), 8);
    assert_int_equal(json_integer_value(json_array_get(last, 1)),
                     json_array_size(json_object_get(clean_prompt(root, 1), "ids")) - 1);
    json_decref(root);

    /* an answer of two tokens */
    assert_null(run_text_sweep(model, " Eiffel", out));
    expect_in(err_text, "pairs[0].positive");
    expect_in(err_text, "\" Eiffel\" is 2 tokens: 414 \" E\", 46682 \"iffel\"");
}

static void test_sweep_errors(void **state) {
    char model[1024], spec[256], bad[256], out[128];
    need_cli_in(model, sizeof model, out, sizeof out);
    write_spec(spec, sizeof spec, "spec.json", "\"all\"");
    write_spec(bad, sizeof bad, "bad.json", "[0, 5]"); /* tiny_gqa has 2 layers */

    const char *bad_spec[] = {"sweep", "--model", model, "--spec", bad, "--out", out, NULL};
    assert_int_equal(run_cli(bad_spec), 2);
    expect_in(err_text, "sites[0].layers[1]");
    expect_in(err_text, "bad.json");
    assert_int_not_equal(access(out, F_OK), 0);

    const char *no_spec[] = {"sweep", "--model", model, "--out", out, NULL};
    assert_int_equal(run_cli(no_spec), 2);
    expect_in(err_text, "--spec");
    const char *no_out[] = {"sweep", "--model", model, "--spec", spec, NULL};
    assert_int_equal(run_cli(no_out), 2);
    expect_in(err_text, "--out");
    const char *bad_size[] = {"sweep", "--model", model, "--spec", spec, "--out", out, "--max-memory", "12Q", NULL};
    assert_int_equal(run_cli(bad_size), 2);
    expect_in(err_text, "--max-memory");
    expect_in(err_text, "'12Q'");
    char missing[256];
    snprintf(missing, sizeof missing, "%s/missing.json", tmp_dir);
    const char *missing_spec[] = {"sweep", "--model", model, "--spec", missing, "--out", out, NULL};
    assert_int_equal(run_cli(missing_spec), 2);
    expect_in(err_text, missing);
    /* --out naming a file */
    const char *file_out[] = {"sweep", "--model", model, "--spec", spec, "--out", spec, NULL};
    assert_int_equal(run_cli(file_out), 1);
    expect_in(err_text, "not a directory");
    assert_int_not_equal(access(out, F_OK), 0);
    const char *help[] = {"help", "sweep", NULL};
    assert_int_equal(run_cli(help), 0);
    expect_in(out_text, "usage: patchbay sweep --spec SPEC.json --out DIR");
}

/* ---- random models and the shared model options ----------------------- */

/* Reads dir/logits.npy (malloc'd) and checks its shape is (T, vocab). */
static float *read_logits(const char *dir, int T, int vocab) {
    char path[256];
    snprintf(path, sizeof path, "%s/logits.npy", dir);
    void *data;
    int n_dims;
    int64_t shape[8];
    if (pb_npy_read(path, &data, PB_NPY_F32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_int_equal(n_dims, 2);
    assert_int_equal(shape[0], T);
    assert_int_equal(shape[1], vocab);
    return data;
}

static void test_random_model_info(void **state) {
    need_cli();
    /* Published SmolLM2-135M hyperparameters, two layers kept. */
    const char *args[] = {"info", "--random-model", "smollm2-135m:2", "--threads", "2", NULL};
    if (run_cli(args) != 0)
        fail_msg("info failed: %s", err_text);
    expect_in(out_text, "arch llama\n");
    expect_in(out_text, "\nn_layers 2\n");
    expect_in(out_text, "\nd_model 576\n");
    expect_in(out_text, "\nn_heads 9\n");
    expect_in(out_text, "\nn_kv_heads 3\n");
    expect_in(out_text, "\nd_mlp 1536\n");
    expect_in(out_text, "\nvocab_size 49152\n");
    expect_in(out_text, "\ntied_embeddings 1\n");
    /* info describes the shape without allocating it: Llama-3-70B's
     * published hyperparameters, two of its 80 layers (15 GB if loaded). */
    const char *big[] = {"info", "--random-model", "llama3-70b:2", NULL};
    if (run_cli(big) != 0)
        fail_msg("info llama3-70b:2 failed: %s", err_text);
    expect_in(out_text, "\nn_layers 2\n");
    expect_in(out_text, "\nd_model 8192\n");
    expect_in(out_text, "\nn_heads 64\n");
    expect_in(out_text, "\nn_kv_heads 8\n");
    expect_in(out_text, "\nd_mlp 28672\n");
    expect_in(out_text, "\nvocab_size 128256\n");
    expect_in(out_text, "\ntied_embeddings 0\n");
}

/* forward on the tiny random model: --ids gives logits of shape (3, 512);
 * with seed 7 the transformers logits of tests/fixtures/random_model (f32);
 * with --dtype bf16 the library's own bf16 run in this process (same code
 * and thread count: bitwise), which differs from the f32 run. */
static void test_random_model_forward(void **state) {
    need_cli();
    char ids_file[1024], ref_path[1024], out[128], out_bf16[128], out_ids[128], path[256];
    tu_fixture_file(ids_file, sizeof ids_file, "random_model", "ids.npy");
    tu_fixture_file(ref_path, sizeof ref_path, "random_model", "logits.npy");
    snprintf(out, sizeof out, "%s/f32", tmp_dir);
    snprintf(out_bf16, sizeof out_bf16, "%s/bf16", tmp_dir);
    snprintf(out_ids, sizeof out_ids, "%s/ids", tmp_dir);

    const char *ids_args[] = {"forward", "--random-model", "tiny", "--ids", "1,2,3", "--out", out_ids, NULL};
    if (run_cli(ids_args) != 0)
        fail_msg("forward failed: %s", err_text);
    free(read_logits(out_ids, 3, 512));

    const char *args[] = {"forward", "--random-model", "tiny", "--seed", "7", "--ids-file",
                          ids_file,  "--threads",      "2",    "--out",  out, NULL};
    if (run_cli(args) != 0)
        fail_msg("forward failed: %s", err_text);
    snprintf(path, sizeof path, "%s/logits.npy", out);
    expect_npy_close(path, ref_path, PB_TOL_TINY_LOGITS_MAX_ABS);

    const char *bf16_args[] = {"forward", "--random-model", "tiny",   "--seed",  "7",    "--ids-file",
                               ids_file,  "--threads",      "2",      "--dtype", "bf16", "--backend",
                               "cpu",     "--out",          out_bf16, NULL};
    if (run_cli(bf16_args) != 0)
        fail_msg("forward --dtype bf16 failed: %s", err_text);
    void *ids;
    int n_dims;
    int64_t shape[8];
    assert_int_equal(pb_npy_read(ids_file, &ids, PB_NPY_I32, &n_dims, shape), PB_OK);
    int T = (int)shape[0];
    size_t n = (size_t)T * 512;
    float *got = read_logits(out_bf16, T, 512), *f32 = read_logits(out, T, 512);
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2, .backend = PB_BACKEND_CPU, .dtype = PB_DTYPE_BF16};
    assert_int_equal(pb_model_random(&m, "tiny", 7, &o), PB_OK);
    float *want = malloc(sizeof(float) * n);
    assert_int_equal(pb_forward(m, ids, T, want, NULL), PB_OK);
    assert_memory_equal(got, want, sizeof(float) * n);
    assert_true(memcmp(got, f32, sizeof(float) * n) != 0);
    free(want);
    free(got);
    free(f32);
    free(ids);
    pb_model_free(m);
}

static void test_model_option_errors(void **state) {
    char model[1024], out[128];
    need_cli_in(model, sizeof model, out, sizeof out);
    /* An unknown name is refused when the model is loaded (exit 1). */
    const char *unknown[] = {"forward", "--random-model", "llama9", "--ids", "1,2", "--out", out, NULL};
    assert_int_equal(run_cli(unknown), 1);
    expect_in(err_text, "'llama9'");
    expect_in(err_text, "tiny, smollm2-135m");
    const char *zero[] = {"info", "--random-model", "tiny:0", NULL};
    assert_int_equal(run_cli(zero), 1);
    expect_in(err_text, "'0'");
    const char *both[] = {"forward", "--model", model, "--random-model", "tiny", "--ids", "1,2", "--out", out, NULL};
    assert_int_equal(run_cli(both), 2);
    expect_in(err_text, "exactly one of --model");
    const char *neither[] = {"info", "--seed", "3", NULL};
    assert_int_equal(run_cli(neither), 2);
    expect_in(err_text, "--random-model");
    const char *tpu[] = {"forward", "--random-model", "tiny", "--backend", "tpu", "--ids", "1,2", "--out", out, NULL};
    assert_int_equal(run_cli(tpu), 2);
    expect_in(err_text, "'tpu'");
    expect_in(err_text, "--backend");
    const char *int8[] = {"forward", "--random-model", "tiny", "--dtype", "int8", "--ids", "1,2", "--out", out, NULL};
    assert_int_equal(run_cli(int8), 2);
    expect_in(err_text, "'int8'");
    expect_in(err_text, "bf16");
    const char *seed[] = {"info", "--random-model", "tiny", "--seed", "-4", NULL};
    assert_int_equal(run_cli(seed), 2);
    expect_in(err_text, "--seed");
    /* No tokenizer: a clear refusal, not a crash. */
    const char *tokenize[] = {"tokenize", "--random-model", "tiny", "--text", "hi", NULL};
    assert_int_equal(run_cli(tokenize), 1);
    expect_in(err_text, "no tokenizer");
    assert_int_not_equal(access(out, F_OK), 0);
}

/* --backend cuda without CUDA: refused with a message, no crash. With a
 * CUDA build it may run (a device present) or say why not. */
static void test_backend_cuda(void **state) {
    char out[128];
    need_cli_in(NULL, 0, out, sizeof out);
    const char *args[] = {"forward", "--random-model", "tiny",  "--backend", "cuda",
                          "--ids",   "1,2,3",          "--out", out,         NULL};
    int rc = run_cli(args);
    assert_true(rc < 128); /* not killed by a signal */
#ifdef PB_HAVE_CUDA
    if (rc == 0) {
        free(read_logits(out, 3, 512));
        return;
    }
    expect_in(err_text, "CUDA");
#else
    assert_int_equal(rc, 1);
    expect_in(err_text, "no CUDA backend");
    assert_int_not_equal(access(out, F_OK), 0);
#endif
}

/* ---- hostile input and faults (issue 12, failures 7 to 10) ------------ */

/* Opens fifo for writing as soon as patchbay (pid) opens it for reading:
 * that open is the evidence that it is reading. Polls for it (the
 * non-blocking open fails with ENXIO until then); -1 when pid ended first
 * or 60 s (scaled) passed. */
static int open_fifo_writer(const char *fifo, pid_t pid) {
    struct timespec step = {0, 10 * 1000 * 1000};
    for (long waited = 0; waited < 6000L * (long)timeout_scale(); waited++) {
        int fd = open(fifo, O_WRONLY | O_NONBLOCK);
        if (fd >= 0) {
            fcntl(fd, F_SETFL, 0);
            return fd;
        }
        siginfo_t info = {0};
        if (errno != ENXIO || waitid(P_PID, (id_t)pid, &info, WEXITED | WNOHANG | WNOWAIT) != 0 || info.si_pid)
            return -1;
        nanosleep(&step, NULL);
    }
    return -1;
}

/* Failure 7: a FIFO or a device as the model is refused at once; a spec
 * is read from a pipe, capped at 64 MiB (/dev/zero is refused, not read
 * without end; so are --prompts and --ids-file), and a stop signal while it
 * is read ends the run with a message. A hang would end in the alarm
 * (SIGALRM, status 142). */
static void test_hostile_spec_and_model(void **state) {
    char model[1024], out[128], fifo[128], folder[128], path[256];
    need_cli_in(model, sizeof model, out, sizeof out);
    const cli_limits guard = {.alarm_s = 60};
    snprintf(fifo, sizeof fifo, "%s/fifo", tmp_dir);
    assert_int_equal(mkfifo(fifo, 0600), 0);
    const char *fifo_model[] = {"info", "--model", fifo, NULL};
    assert_int_equal(run_cli_limited(fifo_model, &guard), 1);
    expect_in(err_text, "is a FIFO (named pipe): a model is a regular file (GGUF) or a folder");
    const char *device_model[] = {"info", "--model", "/dev/zero", NULL};
    assert_int_equal(run_cli_limited(device_model, &guard), 1);
    expect_in(err_text, "model /dev/zero is a character device");
    snprintf(folder, sizeof folder, "%s/hf", tmp_dir);
    snprintf(path, sizeof path, "%s/config.json", folder);
    assert_int_equal(mkdir(folder, 0700), 0);
    assert_int_equal(mkfifo(path, 0600), 0);
    const char *fifo_config[] = {"info", "--model", folder, NULL};
    assert_int_equal(run_cli_limited(fifo_config, &guard), 1);
    expect_in(err_text, "config.json is a FIFO (named pipe), not a regular file");

    const char *zero_spec[] = {"sweep", "--model", model, "--spec", "/dev/zero", "--out", out, NULL};
    assert_int_equal(run_cli_limited(zero_spec, &guard), 2);
    expect_in(err_text, "/dev/zero holds more than 64 MiB");
    assert_int_not_equal(access(out, F_OK), 0);
    /* the other text inputs read whole: the same cap */
    const char *zero_prompts[] = {"refusal-rate", "--model", model, "--prompts", "/dev/zero", NULL};
    assert_int_equal(run_cli_limited(zero_prompts, &guard), 2);
    expect_in(err_text, "--prompts: /dev/zero holds more than 64 MiB");
    const char *zero_ids[] = {"forward", "--model", model, "--ids-file", "/dev/zero", "--out", out, NULL};
    assert_int_equal(run_cli_limited(zero_ids, &guard), 2);
    expect_in(err_text, "/dev/zero holds more than 64 MiB");

    /* A pipe: the spec arrives once patchbay is reading. */
    const char *fifo_spec[] = {"sweep", "--model", model, "--spec", fifo, "--out", out, "--no-progress", NULL};
    pid_t pid = spawn_cli(fifo_spec, &guard, NULL);
    int fd = open_fifo_writer(fifo, pid);
    assert_true(fd >= 0);
    char text[2048];
    int n = snprintf(text, sizeof text, sweep_spec, "\"all\"");
    assert_int_equal(write(fd, text, (size_t)n), n);
    close(fd);
    if (wait_cli(pid) != 0)
        fail_msg("sweep with the spec from a pipe failed: %s", err_text);
    snprintf(path, sizeof path, "%s/results.json", out);
    assert_int_equal(access(path, F_OK), 0);

    /* SIGTERM while the spec is half written: a message, nothing created. */
    snprintf(out, sizeof out, "%s/out2", tmp_dir);
    pid = spawn_cli(fifo_spec, &guard, NULL);
    fd = open_fifo_writer(fifo, pid);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, 10), 10);
    assert_int_equal(kill(pid, SIGTERM), 0);
    int rc = wait_cli(pid);
    close(fd);
    if (rc != 1)
        fail_msg("exit %d after SIGTERM while reading the spec: %s", rc, err_text);
    expect_in(err_text, "--spec: reading ");
    expect_in(err_text, "was interrupted by a signal; stopping before any work");
    assert_int_not_equal(access(out, F_OK), 0);
}

/* Size in bytes of dir/name (-1 if missing). */
static long file_size(const char *dir, const char *name) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Writes earlier into path, runs args and expects them refused (exit 2)
 * with msg on stderr, path still holding earlier. */
static void expect_refused_untouched(const char *path, const char *earlier, const char *const *args, const char *msg) {
    char text[64];
    assert_int_equal(tu_write_text(path, earlier), 0);
    assert_int_equal(run_cli(args), 2);
    expect_in(err_text, msg);
    read_text(path, text, sizeof text);
    assert_string_equal(text, earlier);
}

/* Failure 8: direction into a folder holding only an earlier direction.npy,
 * and refusal-rate --json onto an existing file, are refused before any
 * work unless --overwrite, the files untouched; a --json in a missing
 * folder is refused at once too. */
static void test_no_overwrite_direction_and_rate(void **state) {
    char model[1024], out[128], prompts[1024], path[256];
    need_cli_in(model, sizeof model, out, sizeof out);
    snprintf(prompts, sizeof prompts, "%s/data/refusal_pairs.json", tu_source_dir());
    assert_int_equal(mkdir(out, 0700), 0);
    snprintf(path, sizeof path, "%s/direction.npy", out);
    const char *direction[] = {"direction", "--model", model, "--prompts", prompts, "--out", out, NULL};
    expect_refused_untouched(path, "an earlier direction", direction,
                             "is not empty; pass --overwrite to replace its files");

    snprintf(path, sizeof path, "%s/rate.json", tmp_dir);
    const char *rate[] = {"refusal-rate", "--model", model, "--prompts", prompts, "--json", path, NULL};
    expect_refused_untouched(path, "an earlier rate", rate, "rate.json exists; pass --overwrite to replace it");
    snprintf(path, sizeof path, "%s/missing/rate.json", tmp_dir);
    assert_int_equal(run_cli(rate), 2);
    expect_in(err_text, "missing is not a writable directory");
}

/* Failure 10: refusal-analysis with bad --pairs fails before it makes its
 * folder; sweep writes its set (results.json last) and then report.html, so
 * when report.html cannot be written (a file size limit as a full disk: the
 * limit lies between the largest other output and report.html, measured on
 * a run without it) the command fails, the results stand whole and the
 * finished rows are kept in a checkpoint as well. */
static void test_outputs_complete_or_absent(void **state) {
    char model[1024], out[128], bad[256], spec[256];
    need_cli_in(model, sizeof model, out, sizeof out);
    snprintf(bad, sizeof bad, "%s/pairs.json", tmp_dir);
    assert_int_equal(tu_write_text(bad, "{\"pairs\": [}"), 0);
    const char *analysis[] = {"refusal-analysis", "--model", model, "--pairs", bad, "--out", out, NULL};
    assert_int_equal(run_cli(analysis), 1);
    expect_in(err_text, "pairs.json");
    assert_int_not_equal(access(out, F_OK), 0);

    write_spec(spec, sizeof spec, "spec.json", "\"all\"");
    const char *sweep[] = {"sweep", "--model", model, "--spec", spec, "--out", out, "--no-progress", NULL};
    if (run_cli(sweep) != 0)
        fail_msg("sweep failed: %s", err_text);
    static const char *const others[] = {"results.json", "report.txt", "resid_pre.npy", "z.npy", "attn_out_all.npy"};
    long html = file_size(out, "report.html"), largest = 0;
    for (size_t i = 0; i < sizeof others / sizeof others[0]; i++)
        largest = file_size(out, others[i]) > largest ? file_size(out, others[i]) : largest;
    if (!(largest < html))
        fail_msg("report.html (%ld bytes) is no longer the largest output (%ld): pick another file to fail", html,
                 largest);
    snprintf(out, sizeof out, "%s/out2", tmp_dir);
    const cli_limits full = {.alarm_s = 120, .file_size = (largest + html) / 2};
    assert_int_equal(run_cli_limited(sweep, &full), 1);
    expect_in(err_text, "writing report.html");
    expect_in(err_text, "File too large");
    expect_in(err_text, "finished rows are kept in the checkpoint");
    assert_int_equal(file_size(out, "report.html"), -1);
    char path[256];
    snprintf(path, sizeof path, "%s/results.json", out);
    json_t *results = json_load_file(path, 0, NULL);
    assert_non_null(results); /* whole: it parses, and holds every site */
    assert_true(json_array_size(json_object_get(results, "sites")) > 0);
    json_decref(results);
}

/* Failure 10: forward --hooks '*' writes all its files or none. With a
 * file size limit between the hook files and logits.npy (written last), a
 * fresh --out is not left behind at all, and --overwrite of an earlier
 * run's folder leaves that run's files as they were, with no temporary
 * file beside them. */
static void test_forward_all_or_nothing(void **state) {
    char model[1024], out[128], fresh[128], before[2048], after[2048], path[256];
    need_cli_in(model, sizeof model, out, sizeof out);
    const char *forward[] = {"forward", "--model", model,         "--ids", "1,2,3,4,5,6,7,8,9,10", "--hooks", "*",
                             "--out",   out,       "--overwrite", NULL};
    if (run_cli(forward) != 0)
        fail_msg("forward failed: %s", err_text);
    long logits = file_size(out, "logits.npy"), hook = file_size(out, "blocks.1.hook_resid_post.npy");
    assert_true(hook > 0 && hook < logits); /* (10, 64) floats against (10, 128) */
    tu_list_dir(out, before, sizeof before);
    snprintf(path, sizeof path, "%s/logits.npy", out);
    struct stat old, now;
    assert_int_equal(stat(path, &old), 0);

    const cli_limits full = {.alarm_s = 120, .file_size = (hook + logits) / 2};
    assert_int_equal(run_cli_limited(forward, &full), 1);
    expect_in(err_text, "File too large");
    tu_list_dir(out, after, sizeof after);
    assert_string_equal(after, before);
    assert_int_equal(stat(path, &now), 0);
    assert_int_equal(now.st_ino, old.st_ino);

    snprintf(fresh, sizeof fresh, "%s/new", tmp_dir);
    snprintf(out, sizeof out, "%s/new/sub", tmp_dir);
    assert_int_equal(run_cli_limited(forward, &full), 1);
    expect_in(err_text, "File too large");
    assert_int_not_equal(access(fresh, F_OK), 0);
}

/* forward --html: patterns.html beside the .npy files, its cells the values
 * of those files; refused without a hook_pattern before anything is made;
 * a patterns.html that cannot be written takes the whole set with it. */
static void test_forward_html(void **state) {
    char model[1024], out[128], path[256], listing[1024];
    need_cli_in(model, sizeof model, out, sizeof out);
    const char *no_pattern[] = {"forward", "--model", model, "--ids", "1,2,3", "--hooks", "blocks.0.hook_resid_pre",
                                "--html",  "--out",   out,   NULL};
    assert_int_equal(run_cli(no_pattern), 2);
    expect_in(err_text, "hook_pattern");
    assert_int_not_equal(access(out, F_OK), 0);

    const char *forward[] = {
        "forward", "--model", model, "--ids", "1,5,3,17,4", "--hooks", "blocks.*.attn.hook_pattern",
        "--html",  "--out",   out,   NULL};
    if (run_cli(forward) != 0)
        fail_msg("forward --html failed: %s", err_text);
    tu_list_dir(out, listing, sizeof listing);
    assert_string_equal(listing, "blocks.0.attn.hook_pattern.npy blocks.1.attn.hook_pattern.npy logits.npy "
                                 "patterns.html");
    snprintf(path, sizeof path, "%s/blocks.1.attn.hook_pattern.npy", out);
    int64_t shape[8];
    float *pattern = tu_read_f32(path, 3, shape);
    snprintf(path, sizeof path, "%s/patterns.html", out);
    char *html = tu_read_file(path, NULL);
    assert_non_null(html);
    int T = (int)shape[1], cells = 0;
    for (int h = 0; h < (int)shape[0]; h++) {
        char id[64];
        snprintf(id, sizeof id, "id=\"pattern-L1-H%d\"", h);
        const char *svg = strstr(html, id), *end = svg ? strstr(svg, "</svg>") : NULL;
        assert_non_null(end);
        for (int q = 0; q < T; q++)
            for (int k = 0; k < T; k++) {
                char cell[64];
                snprintf(cell, sizeof cell, "data-q=\"%d\" data-k=\"%d\" data-value=\"", q, k);
                const char *at = strstr(svg, cell);
                if (k > q) { /* blank above the diagonal */
                    assert_true(!at || at > end);
                    continue;
                }
                assert_true(at && at < end);
                assert_true(strtof(at + strlen(cell), NULL) == pattern[((size_t)h * T + q) * T + k]);
                cells++;
            }
    }
    assert_int_equal(cells, (int)shape[0] * T * (T + 1) / 2);
    long html_size = (long)strlen(html);
    free(html);
    free(pattern);

    /* A limit that the .npy files fit under and patterns.html does not:
     * nothing of the run is left, the earlier outputs untouched. */
    const char *again[] = {
        "forward", "--model", model, "--ids",       "1,5,3,17,4", "--hooks", "blocks.*.attn.hook_pattern",
        "--html",  "--out",   out,   "--overwrite", NULL};
    assert_true(file_size(out, "logits.npy") < html_size / 2);
    const cli_limits full = {.alarm_s = 120, .file_size = html_size / 2};
    assert_int_equal(run_cli_limited(again, &full), 1);
    expect_in(err_text, "File too large");
    tu_list_dir(out, path, sizeof path);
    assert_string_equal(path, listing);
    assert_int_equal(file_size(out, "patterns.html"), html_size);
}

/* ---- help ------------------------------------------------------------------ */

/* Every command, from the list: the top-level help must name each. */
static const char *const all_commands[] = {
    "forward", "sweep",    "attribute",    "plan",      "tokenize", "decode",          "logit-lens",
    "info",    "generate", "refusal-rate", "direction", "export",   "refusal-analysis"};
enum { N_ALL_COMMANDS = sizeof all_commands / sizeof all_commands[0] };

/* The flags a command's help lists (lines "  --flag ..." after "options:"),
 * appended to flags (each at most 40 characters) unless already there. */
static int help_flags(const char *help, char flags[][41], int n, int cap) {
    const char *at = strstr(help, "\noptions:\n");
    assert_non_null(at);
    for (const char *line = at + 10; *line && *line != '\n'; line = strchr(line, '\n') + 1) {
        char flag[41];
        if (sscanf(line, "  %40s", flag) == 1 && strncmp(flag, "--", 2) == 0) {
            int seen = 0;
            for (int i = 0; i < n && !seen; i++)
                seen = strcmp(flags[i], flag) == 0;
            if (!seen && n < cap)
                snprintf(flags[n++], sizeof flags[0], "%s", flag);
        }
        if (!strchr(line, '\n'))
            break;
    }
    return n;
}

/* Whether `CMD FLAG` gets past the parser's table: neither unknown nor
 * another command's option (it may fail later, for want of --model). */
static int flag_accepted(const char *cmd, const char *flag) {
    const char *args[] = {cmd, flag, NULL};
    run_cli(args);
    return !strstr(err_text, "unknown option") && !strstr(err_text, "is not an option of");
}

static void test_help_every_command(void **state) {
    need_cli();
    const char *top[] = {"--help", NULL};
    assert_int_equal(run_cli(top), 0);
    static char top_text[sizeof out_text];
    snprintf(top_text, sizeof top_text, "%s", out_text);
    const char *footer = strstr(top_text, "exit status:");
    assert_non_null(footer);
    /* The footer is the last line: nothing is listed after it. */
    assert_int_equal(strlen(footer), (size_t)(strchr(footer, '\n') - footer) + 1);
    static char flags[N_ALL_COMMANDS][64][41], every[256][41];
    int n_flags[N_ALL_COMMANDS], n_every = 0;
    for (int c = 0; c < N_ALL_COMMANDS; c++) {
        char listed[64];
        snprintf(listed, sizeof listed, "\n  %s ", all_commands[c]);
        const char *at = strstr(top_text, listed);
        if (!at || at > footer)
            fail_msg("the top-level help lists no '%s' before its footer:\n%s", all_commands[c], top_text);
        char usage[96];
        static char help_text[sizeof out_text];
        snprintf(usage, sizeof usage, "usage: patchbay %s ", all_commands[c]);
        const char *by_help[] = {"help", all_commands[c], NULL}, *by_flag[] = {all_commands[c], "--help", NULL},
                   *by_h[] = {all_commands[c], "--model", "x", "-h", NULL};
        assert_int_equal(run_cli(by_help), 0);
        snprintf(help_text, sizeof help_text, "%s", out_text);
        expect_in(help_text, usage);
        expect_in(help_text, "\nExample:\n  patchbay ");
        expect_in(help_text, "--model PATH");
        assert_int_equal(run_cli(by_flag), 0);
        assert_string_equal(out_text, help_text);
        assert_int_equal(run_cli(by_h), 0);
        assert_string_equal(out_text, help_text);
        n_flags[c] = help_flags(help_text, flags[c], 0, 64);
        n_every = help_flags(help_text, every, n_every, 256);
    }
    assert_true(n_every < 256);
    /* A flag is listed exactly when the command takes it: every command
     * against every flag any help lists (in a sanitizer build, against its
     * own and one other command's flag, each refused or taken by the same
     * code). */
    int checked = 0;
    for (int c = 0; c < N_ALL_COMMANDS; c++) {
        int foreign = 0;
        for (int f = 0; f < n_every; f++) {
            int listed = 0;
            for (int g = 0; g < n_flags[c] && !listed; g++)
                listed = strcmp(flags[c][g], every[f]) == 0;
            if (!listed && tu_sanitized() && foreign++ > 0)
                continue;
            if (flag_accepted(all_commands[c], every[f]) != listed)
                fail_msg("%s %s: listed in its help %d, but the parser says: %s", all_commands[c], every[f], listed,
                         err_text);
            checked++;
        }
    }
    printf("[ MEASURE  ] help: %d commands, %d flags, %d (command, flag) pairs checked against the parser\n",
           N_ALL_COMMANDS, n_every, checked);
    const char *unknown[] = {"help", "frobnicate", NULL};
    assert_int_equal(run_cli(unknown), 2);
    expect_in(err_text, "unknown command 'frobnicate'");
}

/* ---- export ------------------------------------------------------------------ */

/* patchbay export: writes the GGUF and says what it wrote; usage errors
 * exit 2 before anything is read, a refused family 1; no output then. */
static void test_export_cli(void **state) {
    (void)state;
    char model[1024], out[256], direction[256], gemma2[1024];
    need_cli_in(model, sizeof model, out, sizeof out);
    tu_fixture_file(gemma2, sizeof gemma2, "tiny_gemma2", NULL);
    snprintf(direction, sizeof direction, "%s/u.npy", tmp_dir);
    snprintf(out, sizeof out, "%s/abliterated.gguf", tmp_dir);
    float u[64];
    tu_fill(u, 64, 5, 1.0f);
    int64_t shape[1] = {64};
    assert_int_equal(pb_npy_write(direction, u, PB_NPY_F32, 1, shape), PB_OK);
    const char *ok[] = {"export", "--model",   model,  "--direction",   direction,  "--out",
                        out,      "--outtype", "q8_0", "--no-progress", "--verify", NULL};
    assert_int_equal(run_cli(ok), 0);
    expect_in(out_text, "with the direction projected out");
    expect_in(out_text, "verify: the export's logits vs the source's under run-time ablation");
    expect_in(out_text, "the tied unembedding stored apart");
    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, out, NULL), PB_OK);
    assert_int_equal(pb_model_get_config(m)->tied_embeddings, 0);
    pb_model_free(m);
    assert_int_equal(run_cli(ok), 2); /* exists: --overwrite */
    expect_in(err_text, "--overwrite");
    const char *missing[] = {"export", "--model", model, "--out", out, NULL};
    assert_int_equal(run_cli(missing), 2);
    expect_in(err_text, "--direction FILE.npy and --out PATH are required");
    const char *bad_type[] = {"export", "--model", model,       "--direction", direction,
                              "--out",  out,       "--outtype", "q4_0",        NULL};
    assert_int_equal(run_cli(bad_type), 2);
    expect_in(err_text, "f32, bf16, f16 or q8_0");
    const char *dtype[] = {"export", "--model", model, "--direction", direction, "--out", out, "--dtype", "bf16", NULL};
    assert_int_equal(run_cli(dtype), 2);
    expect_in(err_text, "is --outtype");
    const char *random_model[] = {"export", "--random-model", "tiny", "--direction", direction, "--out", out, NULL};
    assert_int_equal(run_cli(random_model), 2);
    expect_in(err_text, "a random model has no files to export");
    char refused_out[300];
    snprintf(refused_out, sizeof refused_out, "%s/gemma2-out", tmp_dir);
    const char *refused[] = {"export", "--model", gemma2, "--direction", direction, "--out", refused_out, NULL};
    assert_int_equal(run_cli(refused), 1);
    expect_in(err_text, "patchbay export: gemma2 normalises each block's output");
    assert_int_equal(access(refused_out, F_OK), -1);
}

/* ---- text: tokenize, decode, forward --text, logit-lens ------------------- */

/* The SmolLM2 record of tests/fixtures/lens_patterns (transformers'
 * tokenizer): its text, ids and pieces; skips without the model. */
static json_t *smollm2_text_fixture(char *model, size_t size) {
    need_cli();
    if (!tu_model_path(model, size)) {
        print_message("skipping: no SmolLM2 file (scripts/fetch-model.sh); the tiny fixtures have no tokenizer\n");
        skip();
    }
    char path[1024];
    assert_true(tu_fixture_path(path, sizeof path, "lens_patterns/reference.json") > 0);
    json_error_t error;
    json_t *ref = json_load_file(path, 0, &error);
    if (!ref)
        fail_msg("%s: %s", path, error.text);
    json_t *smollm2 = json_incref(json_object_get(json_object_get(ref, "models"), "smollm2"));
    json_decref(ref);
    assert_non_null(smollm2);
    return smollm2;
}

static void ids_text(json_t *ids, char *out, size_t size, const char *sep) {
    out[0] = 0;
    for (size_t i = 0; i < json_array_size(ids); i++)
        snprintf(out + strlen(out), size - strlen(out), "%s%lld", i ? sep : "",
                 (long long)json_integer_value(json_array_get(ids, i)));
}

static void test_tokenize_decode(void **state) {
    char model[1024], want[1024], line[256], path[256];
    json_t *fx = smollm2_text_fixture(model, sizeof model);
    const char *text = json_string_value(json_object_get(fx, "text"));
    json_t *ids = json_object_get(fx, "ids"), *pieces = json_object_get(fx, "pieces");
    /* tokenize: transformers' ids, and the same ids with their pieces */
    const char *tok[] = {"tokenize", "--model", model, "--text", text, NULL};
    assert_int_equal(run_cli(tok), 0);
    ids_text(ids, want, sizeof want, ", ");
    assert_true(out_text[0] == '[');
    assert_memory_equal(out_text + 1, want, strlen(want));
    expect_in(err_text, "chat template not applied");
    snprintf(path, sizeof path, "%s/ids.txt", tmp_dir);
    FILE *f = fopen(path, "w");
    fputs(out_text, f);
    fclose(f);
    const char *tok_pieces[] = {"tokenize", "--model", model, "--text", text, "--pieces", NULL};
    assert_int_equal(run_cli(tok_pieces), 0);
    for (size_t i = 0; i < json_array_size(ids); i++) {
        snprintf(line, sizeof line, "\n%-5zu %-8lld \"%s\"\n", i, (long long)json_integer_value(json_array_get(ids, i)),
                 json_string_value(json_array_get(pieces, i)));
        expect_in(out_text, line);
    }
    /* decode: the ids as tokenize printed them, as arguments, and as JSON */
    const char *from_file[] = {"decode", "--model", model, "--ids-file", path, NULL};
    assert_int_equal(run_cli(from_file), 0);
    snprintf(want, sizeof want, "%s\n", text);
    assert_string_equal(out_text, want);
    const char *from_stdin[] = {"decode", "--model", model, "--ids-file", "-", NULL};
    assert_int_equal(run_cli_in(from_stdin, path), 0);
    assert_string_equal(out_text, want);
    char args_text[1024];
    ids_text(ids, args_text, sizeof args_text, ",");
    const char *as_json[] = {"decode", "--model", model, "--json", "--ids", args_text, NULL};
    assert_int_equal(run_cli(as_json), 0);
    json_error_t error;
    json_t *got = json_loads(out_text, 0, &error);
    assert_non_null(got);
    assert_string_equal(json_string_value(json_object_get(got, "text")), text);
    json_t *tokens = json_object_get(got, "tokens");
    assert_int_equal(json_array_size(tokens), json_array_size(ids));
    for (size_t i = 0; i < json_array_size(ids); i++) {
        json_t *t = json_array_get(tokens, i);
        assert_int_equal(json_integer_value(json_object_get(t, "id")), json_integer_value(json_array_get(ids, i)));
        assert_string_equal(json_string_value(json_object_get(t, "piece")),
                            json_string_value(json_array_get(pieces, i)));
    }
    json_decref(got);
    const char *positional[] = {"decode", "--model", model, "[504,", "3000]", NULL};
    assert_int_equal(run_cli(positional), 0);
    const char *bad[] = {"decode", "--model", model, "--ids", "1,99999999", NULL};
    assert_int_equal(run_cli(bad), 1);
    expect_in(err_text, "99999999");
    const char *both[] = {"decode", "--model", model, "1", "--ids", "2", NULL};
    assert_int_equal(run_cli(both), 2);
    json_decref(fx);
}

static void test_forward_text(void **state) {
    char model[1024], out[256], out_ids[256], args_text[1024], path[512];
    json_t *fx = smollm2_text_fixture(model, sizeof model);
    const char *text = json_string_value(json_object_get(fx, "text"));
    int T = (int)json_array_size(json_object_get(fx, "ids"));
    snprintf(out, sizeof out, "%s/text", tmp_dir);
    snprintf(out_ids, sizeof out_ids, "%s/ids", tmp_dir);
    ids_text(json_object_get(fx, "ids"), args_text, sizeof args_text, ",");
    const char *by_text[] = {"forward", "--model", model, "--text", text, "--hooks", "blocks.2.attn.hook_pattern",
                             "--out",   out,       NULL};
    assert_int_equal(run_cli(by_text), 0);
    expect_in(err_text, "chat template not applied");
    expect_in(err_text, "BOS not prepended");
    const char *by_ids[] = {"forward", "--model", model, "--ids", args_text, "--out", out_ids, NULL};
    assert_int_equal(run_cli(by_ids), 0);
    float *a = read_logits(out, T, 49152), *b = read_logits(out_ids, T, 49152);
    assert_memory_equal(a, b, sizeof(float) * (size_t)T * 49152);
    free(a);
    free(b);
    int64_t shape[8];
    float *pattern = tu_read_f32(tu_path(path, sizeof path, out, "blocks.2.attn.hook_pattern.npy"), 3, shape);
    assert_int_equal(shape[0], 9); /* SmolLM2's heads */
    assert_int_equal(shape[1], T);
    assert_int_equal(shape[2], T);
    free(pattern);
    snprintf(out, sizeof out, "%s/chat", tmp_dir);
    const char *chat[] = {"forward", "--model", model, "--text", text, "--chat", "--out", out, NULL};
    assert_int_equal(run_cli(chat), 0);
    expect_in(err_text, "chat template applied (with the template's default system prompt)");
    const char *contradict[] = {"forward", "--model", model, "--text", text, "--chat", "--no-chat", "--out", out, NULL};
    assert_int_equal(run_cli(contradict), 2);
    const char *system[] = {"forward", "--model", model, "--text", text, "--system", "x", "--out", out, NULL};
    assert_int_equal(run_cli(system), 2);
    expect_in(err_text, "--system needs --chat");
    const char *two[] = {"forward", "--model", model, "--text", text, "--ids", "1", "--out", out, NULL};
    assert_int_equal(run_cli(two), 2);
    /* --bos prepends SmolLM2's BOS (id 1) */
    const char *bos[] = {"tokenize", "--model", model, "--text", text, "--bos", NULL};
    assert_int_equal(run_cli(bos), 0);
    assert_memory_equal(out_text, "[1, ", 4);
    expect_in(err_text, "BOS prepended (--bos)");
    json_decref(fx);
}

/* logit-lens on tiny_gqa by ids: its files against the library's lens. */
static void test_logit_lens_cli(void **state) {
    char model[1024], out[128], path[512];
    need_cli_in(model, sizeof model, out, sizeof out);
    const char *args[] = {
        "logit-lens", "--model",        model, "--ids",          "5,9,17,33,2", "--positions", "-1,1", "--top-k",
        "3",          "--positive-ids", "7",   "--negative-ids", "11,12",       "--out",       out,    NULL};
    if (run_cli(args) != 0)
        fail_msg("logit-lens failed: %s", err_text);
    expect_in(out_text, "position 4 ");
    expect_in(out_text, "final_post");
    pb_model *m = NULL;
    assert_int_equal(pb_model_load(&m, model, NULL), PB_OK);
    const int32_t ids[5] = {5, 9, 17, 33, 2};
    const int positions[2] = {4, 1};
    int rows = pb_model_get_config(m)->n_layers + 1, V = pb_model_get_config(m)->vocab_size;
    float *lens = malloc(sizeof(float) * (size_t)rows * 2 * V);
    assert_int_equal(pb_logit_lens(m, ids, 5, positions, 2, lens), PB_OK);
    int64_t shape[8];
    float *metric = tu_read_f32(tu_path(path, sizeof path, out, "metric_logits.npy"), 3, shape);
    assert_int_equal(shape[0], rows);
    assert_int_equal(shape[1], 2);
    assert_int_equal(shape[2], 3);
    void *top;
    int n_dims;
    assert_int_equal(pb_npy_read(tu_path(path, sizeof path, out, "top_ids.npy"), &top, PB_NPY_I32, &n_dims, shape),
                     PB_OK);
    for (int r = 0; r < rows; r++)
        for (int p = 0; p < 2; p++) {
            const float *v = lens + ((size_t)r * 2 + p) * V;
            const float *mv = metric + ((size_t)r * 2 + p) * 3;
            assert_true(mv[0] == v[7] && mv[1] == v[11] && mv[2] == v[12]);
            const int32_t *t = (const int32_t *)top + ((size_t)r * 2 + p) * 3;
            /* top 3 by a naive count: how many ids beat each */
            for (int k = 0; k < 3; k++) {
                int above = 0;
                for (int id = 0; id < V; id++)
                    above += v[id] > v[t[k]];
                assert_int_equal(above, k);
            }
        }
    json_error_t error;
    json_t *json = json_load_file(tu_path(path, sizeof path, out, "lens.json"), 0, &error);
    assert_non_null(json);
    json_t *labels = json_object_get(json, "rows");
    assert_string_equal(json_string_value(json_array_get(labels, 0)), "0_pre");
    assert_string_equal(json_string_value(json_array_get(labels, (size_t)rows - 1)), "final_post");
    double value = json_real_value(json_array_get(
        json_array_get(json_object_get(json_object_get(json, "metric"), "values [row][position]"), 1), 0));
    const float *v = lens + (size_t)2 * V;
    assert_true(fabs(value - (v[7] - ((double)v[11] + v[12]) / 2)) <= 1e-6);
    json_decref(json);
    free(top);
    free(metric);
    free(lens);
    pb_model_free(m);
    /* --top-k beyond the vocabulary (tiny_bias: 96) lists every id once */
    char bias[1024], all_ids[160];
    tu_fixture_file(bias, sizeof bias, "tiny_bias", "model.gguf");
    snprintf(all_ids, sizeof all_ids, "%s/all", tmp_dir);
    const char *every[] = {"logit-lens", "--model", bias, "--ids", "5,9", "--top-k", "100", "--out", all_ids, NULL};
    assert_int_equal(run_cli(every), 0);
    assert_int_equal(pb_npy_read(tu_path(path, sizeof path, all_ids, "top_ids.npy"), &top, PB_NPY_I32, &n_dims, shape),
                     PB_OK);
    assert_int_equal(shape[2], 96);
    for (int r = 0; r < (int)shape[0]; r++) {
        int seen[96] = {0};
        for (int k = 0; k < 96; k++) {
            int32_t id = ((const int32_t *)top)[r * 96 + k];
            assert_true(id >= 0 && id < 96 && !seen[id]);
            seen[id] = 1;
        }
    }
    free(top);
    /* refusals, before anything is written */
    char other[160];
    snprintf(other, sizeof other, "%s/other", tmp_dir);
    const char *bad_position[] = {"logit-lens",  "--model", model,   "--ids", "5,9",
                                  "--positions", "2",       "--out", other,   NULL};
    assert_int_equal(run_cli(bad_position), 2);
    expect_in(err_text, "--positions");
    const char *bad_id[] = {"logit-lens", "--model", model, "--ids", "5,9", "--positive-ids", "128", NULL};
    assert_int_equal(run_cli(bad_id), 2);
    expect_in(err_text, "id 128 is outside the vocabulary");
    const char *negative_only[] = {"logit-lens", "--model", model, "--ids", "5,9", "--negative-ids", "3", NULL};
    assert_int_equal(run_cli(negative_only), 2);
    assert_int_not_equal(access(other, F_OK), 0);
}

int main(void) {
    const char *build = getenv("PB_BUILD_DIR");
    snprintf(cli, sizeof cli, "%s/patchbay", build ? build : ".");
    if (access(cli, X_OK) != 0) {
        printf("skipping: %s is not built (set PB_BUILD_DIR)\n", cli);
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_version, cleanup),
        cmocka_unit_test_teardown(test_usage_errors, cleanup),
        cmocka_unit_test_teardown(test_forward_argument_errors, cleanup),
        cmocka_unit_test_teardown(test_forward_files, cleanup),
        cmocka_unit_test_teardown(test_forward_hf_folder, cleanup),
        cmocka_unit_test_teardown(test_truncated_gguf, cleanup),
        cmocka_unit_test_teardown(test_generate, cleanup),
        cmocka_unit_test_teardown(test_generate_empty_prompt, cleanup),
        cmocka_unit_test_teardown(test_analysis_token_sets_first, cleanup),
        cmocka_unit_test_teardown(test_refusal_analysis_small, cleanup),
        cmocka_unit_test_teardown(test_info, cleanup),
        cmocka_unit_test_teardown(test_sweep_files, cleanup),
        cmocka_unit_test_teardown(test_sweep_errors, cleanup),
        cmocka_unit_test_teardown(test_sweep_text_prompts, cleanup),
        cmocka_unit_test_teardown(test_random_model_info, cleanup),
        cmocka_unit_test_teardown(test_random_model_forward, cleanup),
        cmocka_unit_test_teardown(test_model_option_errors, cleanup),
        cmocka_unit_test_teardown(test_backend_cuda, cleanup),
        cmocka_unit_test_teardown(test_hostile_spec_and_model, cleanup),
        cmocka_unit_test_teardown(test_no_overwrite_direction_and_rate, cleanup),
        cmocka_unit_test_teardown(test_outputs_complete_or_absent, cleanup),
        cmocka_unit_test_teardown(test_forward_all_or_nothing, cleanup),
        cmocka_unit_test_teardown(test_forward_html, cleanup),
        cmocka_unit_test_teardown(test_help_every_command, cleanup),
        cmocka_unit_test_teardown(test_export_cli, cleanup),
        cmocka_unit_test_teardown(test_tokenize_decode, cleanup),
        cmocka_unit_test_teardown(test_forward_text, cleanup),
        cmocka_unit_test_teardown(test_adapter_option, cleanup),
        cmocka_unit_test_teardown(test_logit_lens_cli, cleanup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
