/* Checkpoints of interrupted sweeps: a stop request between batches, the
 * checkpoint written and loaded into a fresh sweep, results equal to an
 * uninterrupted run bit for bit (reference backend: a row never depends on
 * its batch), executed rows adding up, mismatched and corrupt checkpoints
 * refused; and the CLI: SIGTERM -> exit 3 + checkpoint, --resume -> the
 * uninterrupted run's results. Also the cost-balanced row shares. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "distributed/distribute.h"
#include "patchbay.h"
#include "test_util.h"

static char tmp_dir[64];

static int make_tmp(void **state) {
    snprintf(tmp_dir, sizeof tmp_dir, "/tmp/pb_ckpt_XXXXXX");
    return mkdtemp(tmp_dir) ? 0 : -1;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) { return remove(path); }

static int remove_tmp(void **state) {
    if (tmp_dir[0])
        nftw(tmp_dir, remove_entry, 8, FTW_DEPTH | FTW_PHYS);
    tmp_dir[0] = 0;
    return 0;
}

static void model_path(char *buf, size_t size) { snprintf(buf, size, "%s/tiny_gqa/model.gguf", tu_fixtures()); }

static pb_model *load(pb_backend_kind backend) {
    char path[1024];
    model_path(path, sizeof path);
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2, .backend = backend};
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    return m;
}

/* Three pairs, every component family, positions each/last/all: several
 * batches per pair with max_batch_rows = 4. */
static const char *spec_text =
    "{\"mode\": \"denoising\",\n"
    " \"pairs\": [{\"clean\": {\"ids\": [5, 17, 33, 60, 7, 90, 12, 40]}, \"corrupted\": {\"ids\": [5, 17, 44, 60, 7, "
    "90, 12, 40]}},\n"
    "           {\"clean\": {\"ids\": [9, 3, 70, 21, 100, 11, 8, 2]}, \"corrupted\": {\"ids\": [9, 3, 12, 21, 100, "
    "11, 8, 2]}},\n"
    "           {\"clean\": {\"ids\": [1, 30, 31, 32, 33, 34, 35, 36]}, \"corrupted\": {\"ids\": [1, 30, 31, 50, 33, "
    "34, 35, 36]}}],\n"
    " \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},\n"
    "           {\"component\": \"mlp_out\", \"layers\": \"all\", \"positions\": \"each\"},\n"
    "           {\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"},\n"
    "           {\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"all\"}],\n"
    " \"metric\": {\"kind\": \"logit_diff\", \"positive\": {\"ids\": [18]}, \"negative\": {\"ids\": [53]}}}\n";

/* The same spec, other whitespace and key order: the same canonical text. */
static const char *spec_text_reformatted =
    "{\"metric\":{\"negative\":{\"ids\":[53]},\"kind\":\"logit_diff\",\"positive\":{\"ids\":[18]}},"
    "\"mode\":\"denoising\","
    "\"pairs\":[{\"corrupted\":{\"ids\":[5,17,44,60,7,90,12,40]},\"clean\":{\"ids\":[5,17,33,60,7,90,12,40]}},"
    "{\"clean\":{\"ids\":[9,3,70,21,100,11,8,2]},\"corrupted\":{\"ids\":[9,3,12,21,100,11,8,2]}},"
    "{\"clean\":{\"ids\":[1,30,31,32,33,34,35,36]},\"corrupted\":{\"ids\":[1,30,31,50,33,34,35,36]}}],"
    "\"sites\":[{\"component\":\"resid_pre\",\"layers\":\"all\",\"positions\":\"each\"},"
    "{\"component\":\"mlp_out\",\"layers\":\"all\",\"positions\":\"each\"},"
    "{\"component\":\"z\",\"layers\":\"all\",\"heads\":\"all\",\"positions\":\"last\"},"
    "{\"component\":\"attn_out\",\"layers\":\"all\",\"positions\":\"all\"}]}";

typedef struct stopper {
    volatile int *stop;
    int batches;    /* progress calls seen */
    int stop_after; /* raise the flag at this call */
} stopper;

static void stop_progress(int64_t done, int64_t total, void *user) {
    stopper *st = user;
    if (++st->batches == st->stop_after)
        *st->stop = 1;
}

static pb_sweep *create(pb_model *m, const char *spec, pb_sweep_options *o) {
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, spec, NULL, o) != PB_OK)
        fail_msg("pb_sweep_create: %s", pb_last_error());
    return s;
}

static void fingerprint(pb_sweep_fingerprint *fp, const char *spec, pb_backend_kind backend) {
    char path[1024];
    model_path(path, sizeof path);
    if (pb_sweep_fingerprint_compute(fp, path, spec, backend, PB_DTYPE_F32) != PB_OK)
        fail_msg("fingerprint: %s", pb_last_error());
}

/* Every row's patched value and every pair's baselines equal, bit for bit. */
static void expect_same_results(const pb_sweep *a, const pb_sweep *b) {
    pb_sweep_summary sa, sb;
    assert_int_equal(pb_sweep_get_summary(a, &sa), PB_OK);
    assert_int_equal(pb_sweep_get_summary(b, &sb), PB_OK);
    assert_int_equal(sa.n_rows, sb.n_rows);
    assert_int_equal(sa.n_rows_done, sb.n_rows_done);
    assert_int_equal(sa.n_rows_executed, sb.n_rows_executed);
    for (int p = 0; p < sa.n_pairs; p++) {
        double ba, sa_, bb, sb_;
        pb_sweep_get_pair(a, p, &ba, &sa_);
        pb_sweep_get_pair(b, p, &bb, &sb_);
        assert_memory_equal(&ba, &bb, sizeof ba);
        assert_memory_equal(&sa_, &sb_, sizeof sa_);
        for (int64_t i = 0; i < sa.n_sites; i++) {
            double pa, ea, pb_, eb;
            pb_sweep_get_row(a, p, i, &pa, &ea);
            pb_sweep_get_row(b, p, i, &pb_, &eb);
            if (memcmp(&pa, &pb_, sizeof pa) != 0 || memcmp(&ea, &eb, sizeof ea) != 0)
                fail_msg("pair %d site %lld: patched %.17g vs %.17g, effect %.17g vs %.17g", p, (long long)i, pa, pb_,
                         ea, eb);
            assert_int_equal(pb_sweep_row_state(a, (int64_t)p * sa.n_sites + i),
                             pb_sweep_row_state(b, (int64_t)p * sa.n_sites + i));
        }
    }
    for (int64_t i = 0; i < sa.n_sites; i++) {
        pb_site_result ra, rb;
        pb_sweep_get_site(a, i, &ra);
        pb_sweep_get_site(b, i, &rb);
        assert_memory_equal(&ra.effect, &rb.effect, sizeof ra.effect);
        assert_memory_equal(&ra.standard_error, &rb.standard_error, sizeof ra.standard_error);
    }
}

static int dir_has_tmp(const char *dir) {
    DIR *d = opendir(dir);
    int found = 0;
    for (struct dirent *e; d && (e = readdir(d));)
        found |= strstr(e->d_name, ".tmp.") != NULL;
    if (d)
        closedir(d);
    return found;
}

/* Interrupt after `stop_after` batches, checkpoint, resume in a fresh sweep;
 * compare with the uninterrupted run. */
static void interrupt_and_resume(pb_backend_kind backend, int stop_after, int resume_twice) {
    pb_model *m = load(backend);
    pb_sweep_options plain = {.max_batch_rows = 4, .metric_fn_residual_layer = -1};
    pb_sweep *whole = create(m, spec_text, &plain);
    assert_int_equal(pb_sweep_run(whole), PB_OK);
    pb_sweep_summary sw;
    pb_sweep_get_summary(whole, &sw);
    assert_true(sw.n_rows_executed > 8);

    volatile int stop = 0;
    stopper st = {&stop, 0, stop_after};
    pb_sweep_options o = plain;
    o.stop = &stop;
    o.progress = stop_progress;
    o.progress_user = &st;
    pb_sweep *first = create(m, spec_text, &o);
    assert_int_equal(pb_sweep_run(first), PB_ERR_INTERRUPTED);
    assert_non_null(strstr(pb_last_error(), "interrupted"));
    assert_int_equal(st.batches, stop_after); /* stopped right after that batch */
    pb_sweep_summary s1;
    pb_sweep_get_summary(first, &s1);
    assert_true(s1.n_rows_done > 0 && s1.n_rows_done < s1.n_rows);
    int64_t executed = s1.n_rows_executed;

    pb_sweep_fingerprint fp;
    fingerprint(&fp, spec_text, backend);
    char path[256];
    snprintf(path, sizeof path, "%s/sweep.checkpoint", tmp_dir);
    assert_int_equal(pb_sweep_checkpoint_write(first, path, &fp), PB_OK);
    assert_false(dir_has_tmp(tmp_dir));
    pb_sweep_free(first);

    pb_sweep_options again = plain;
    volatile int stop2 = 0;
    stopper st2 = {&stop2, 0, 2};
    if (resume_twice) { /* a second preemption during the resumed run */
        again.stop = &stop2;
        again.progress = stop_progress;
        again.progress_user = &st2;
    }
    pb_sweep *second = create(m, spec_text_reformatted, &again);
    pb_sweep_fingerprint fp2;
    fingerprint(&fp2, spec_text_reformatted, backend);
    assert_string_equal(fp.spec_digest, fp2.spec_digest);
    assert_int_equal(pb_sweep_checkpoint_load(second, path, &fp2), PB_OK);
    pb_sweep_summary s2;
    pb_sweep_get_summary(second, &s2);
    assert_int_equal(s2.n_rows_restored, s1.n_rows_done);
    assert_int_equal(s2.n_rows_executed_restored, executed);
    if (resume_twice) {
        assert_int_equal(pb_sweep_run(second), PB_ERR_INTERRUPTED);
        pb_sweep_get_summary(second, &s2);
        int64_t executed_second = s2.n_rows_executed - s2.n_rows_executed_restored;
        assert_true(executed_second > 0);
        executed += executed_second;
        assert_int_equal(pb_sweep_checkpoint_write(second, path, &fp2), PB_OK);
        pb_sweep_free(second);
        second = create(m, spec_text, &plain);
        assert_int_equal(pb_sweep_checkpoint_load(second, path, &fp), PB_OK);
    }
    assert_int_equal(pb_sweep_run(second), PB_OK);
    pb_sweep_get_summary(second, &s2);
    int64_t executed_last = s2.n_rows_executed - s2.n_rows_executed_restored;
    /* no row run twice, none dropped */
    if (executed + executed_last != sw.n_rows_executed)
        fail_msg("rows executed: %lld before + %lld after != %lld uninterrupted", (long long)executed,
                 (long long)executed_last, (long long)sw.n_rows_executed);
    print_message("rows executed: %lld interrupted + %lld resumed = %lld uninterrupted\n", (long long)executed,
                  (long long)executed_last, (long long)sw.n_rows_executed);
    expect_same_results(whole, second);
    pb_sweep_free(second);
    pb_sweep_free(whole);
    pb_model_free(m);
}

static void test_resume_reference(void **state) { interrupt_and_resume(PB_BACKEND_REFERENCE, 1, 0); }
static void test_resume_reference_mid(void **state) { interrupt_and_resume(PB_BACKEND_REFERENCE, 5, 0); }
static void test_resume_twice(void **state) { interrupt_and_resume(PB_BACKEND_REFERENCE, 3, 1); }
/* OpenBLAS: bit-identical too, as long as threads and batching match. */
static void test_resume_cpu(void **state) { interrupt_and_resume(PB_BACKEND_CPU, 2, 0); }

/* A stop raised before the run: nothing computed, and the run says so. */
static void test_stop_before_start(void **state) {
    pb_model *m = load(PB_BACKEND_REFERENCE);
    volatile int stop = 1;
    pb_sweep_options o = {.max_batch_rows = 4, .metric_fn_residual_layer = -1, .stop = &stop};
    pb_sweep *s = create(m, spec_text, &o);
    assert_int_equal(pb_sweep_run(s), PB_ERR_INTERRUPTED);
    assert_string_equal(pb_status_name(PB_ERR_INTERRUPTED), "PB_ERR_INTERRUPTED");
    pb_sweep_summary sum;
    pb_sweep_get_summary(s, &sum);
    assert_int_equal(sum.n_rows_done, 0);
    pb_sweep_free(s);
    pb_model_free(m);
}

static pb_sweep *interrupted_sweep(pb_model *m, const char *path, pb_sweep_fingerprint *fp) {
    volatile int stop = 0;
    stopper st = {&stop, 0, 2};
    pb_sweep_options o = {.max_batch_rows = 4,
                          .metric_fn_residual_layer = -1,
                          .stop = &stop,
                          .progress = stop_progress,
                          .progress_user = &st};
    pb_sweep *s = create(m, spec_text, &o);
    assert_int_equal(pb_sweep_run(s), PB_ERR_INTERRUPTED);
    fingerprint(fp, spec_text, PB_BACKEND_REFERENCE);
    assert_int_equal(pb_sweep_checkpoint_write(s, path, fp), PB_OK);
    return s;
}

/* A sweep of spec refuses the checkpoint at path with want, the message
 * naming needle, and takes nothing from it. */
static void expect_refused_spec(pb_model *m, const char *spec, const char *path, const pb_sweep_fingerprint *fp,
                                pb_status want, const char *needle) {
    pb_sweep_options o = {.max_batch_rows = 4, .metric_fn_residual_layer = -1};
    pb_sweep *s = create(m, spec, &o);
    pb_status st = pb_sweep_checkpoint_load(s, path, fp);
    if (st != want || !strstr(pb_last_error(), needle))
        fail_msg("expected %s naming '%s', got %s: %s", pb_status_name(want), needle, pb_status_name(st),
                 pb_last_error());
    pb_sweep_summary sum;
    pb_sweep_get_summary(s, &sum);
    assert_int_equal(sum.n_rows_done, 0); /* nothing taken from a refused file */
    pb_sweep_free(s);
}

static void expect_refused(pb_model *m, const char *path, const pb_sweep_fingerprint *fp, pb_status want,
                           const char *needle) {
    expect_refused_spec(m, spec_text, path, fp, want, needle);
}

static void test_mismatch_refused(void **state) {
    pb_model *m = load(PB_BACKEND_REFERENCE);
    char path[256];
    snprintf(path, sizeof path, "%s/sweep.checkpoint", tmp_dir);
    pb_sweep_fingerprint fp;
    pb_sweep_free(interrupted_sweep(m, path, &fp));

    /* another model file: same path name is irrelevant, contents differ */
    pb_sweep_fingerprint other = fp;
    char other_model[1024];
    snprintf(other_model, sizeof other_model, "%s/tiny_bias/model.gguf", tu_fixtures());
    assert_int_equal(pb_sweep_fingerprint_compute(&other, other_model, spec_text, PB_BACKEND_REFERENCE, PB_DTYPE_F32),
                     PB_OK);
    assert_string_not_equal(other.model_digest, fp.model_digest);
    expect_refused(m, path, &other, PB_ERR_ARG, "another model");
    expect_refused(m, path, &other, PB_ERR_ARG, "tiny_bias/model.gguf");
    /* another spec: one threshold changed */
    pb_sweep_fingerprint spec2;
    char *changed = strdup(spec_text);
    char *at = strstr(changed, "[18]");
    at[2] = '9';
    fingerprint(&spec2, changed, PB_BACKEND_REFERENCE);
    free(changed);
    expect_refused(m, path, &spec2, PB_ERR_ARG, "another spec");
    /* another backend / dtype */
    pb_sweep_fingerprint cpu;
    fingerprint(&cpu, spec_text, PB_BACKEND_CPU);
    expect_refused(m, path, &cpu, PB_ERR_ARG, "backend/dtype reference/f32, this run uses cpu/f32");
    pb_sweep_fingerprint bf16;
    char model_file[1024];
    model_path(model_file, sizeof model_file);
    assert_int_equal(pb_sweep_fingerprint_compute(&bf16, model_file, spec_text, PB_BACKEND_REFERENCE, PB_DTYPE_BF16),
                     PB_OK);
    expect_refused(m, path, &bf16, PB_ERR_ARG, "backend/dtype reference/f32, this run uses reference/bf16");
    /* The same spec text resolved to other inputs: --chat-template changes a
     * text prompt's ids and a direction file the metric's direction, not the
     * text. Sweeps of other ids and of another metric token, each checked
     * with the original spec's fingerprint, are refused, naming which. */
    char *other_ids = strdup(spec_text);
    memcpy(strstr(other_ids, "[5, 17, 33"), "[6", 2);
    expect_refused_spec(m, other_ids, path, &fp, PB_ERR_ARG, "written for other prompts");
    free(other_ids);
    char *other_token = strdup(spec_text);
    strstr(other_token, "[53]")[2] = '4';
    expect_refused_spec(m, other_token, path, &fp, PB_ERR_ARG, "written for another metric");
    free(other_token);
    /* a synthetic model: its name is its identity */
    pb_sweep_fingerprint r1, r2;
    assert_int_equal(pb_sweep_fingerprint_compute(&r1, "random:tiny:4:1", spec_text, PB_BACKEND_CPU, PB_DTYPE_F32),
                     PB_OK);
    assert_int_equal(pb_sweep_fingerprint_compute(&r2, "random:tiny:4:2", spec_text, PB_BACKEND_CPU, PB_DTYPE_F32),
                     PB_OK);
    assert_string_not_equal(r1.model_digest, r2.model_digest);
    pb_model_free(m);
}

static void write_bytes(const char *path, const unsigned char *data, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    fclose(f);
}

/* Flips one bit of byte `at` of path in place. */
static void flip_byte(const char *path, long at) {
    FILE *f = fopen(path, "r+b");
    assert_non_null(f);
    assert_int_equal(fseek(f, at, SEEK_SET), 0);
    int c = fgetc(f);
    assert_true(c != EOF);
    assert_int_equal(fseek(f, at, SEEK_SET), 0);
    fputc(c ^ 0x04, f);
    assert_int_equal(fclose(f), 0);
}

static void model_fingerprint(pb_sweep_fingerprint *fp, const char *model) {
    if (pb_sweep_fingerprint_compute(fp, model, spec_text, PB_BACKEND_REFERENCE, PB_DTYPE_F32) != PB_OK)
        fail_msg("fingerprint of %s: %s", model, pb_last_error());
}

/* Issue 12, failure 2: a model changed past its first MiB (a re-downloaded
 * file) must not pass for the one a checkpoint was written for. The model
 * digest covers every byte: a 3 MiB file with one byte changed at 1.5 MiB
 * (first, middle and last byte too), and a folder whose second shard
 * changed in its middle, are refused, naming the checkpoint and the model
 * path (the same file: "other weights"); restored, the same digest as
 * before. */
static void test_fingerprint_every_byte(void **state) {
    pb_model *m = load(PB_BACKEND_REFERENCE);
    char ckpt[256], file[256], folder[256], shard[300];
    snprintf(ckpt, sizeof ckpt, "%s/sweep.checkpoint", tmp_dir);
    snprintf(file, sizeof file, "%s/weights.bin", tmp_dir);
    size_t n = (size_t)3 << 20;
    unsigned char *bytes = malloc(n);
    uint64_t seed = 5;
    for (size_t i = 0; i < n; i++)
        bytes[i] = (unsigned char)(tu_next(&seed) >> 56);
    write_bytes(file, bytes, n);
    pb_sweep_fingerprint fp, changed, restored;
    model_fingerprint(&fp, file);
    pb_sweep *s = interrupted_sweep(m, ckpt, &(pb_sweep_fingerprint){0});
    assert_int_equal(pb_sweep_checkpoint_write(s, ckpt, &fp), PB_OK);
    pb_sweep_free(s);
    const long at[] = {(long)n / 2, 0, (long)n - 1, ((long)1 << 20) + 4093};
    for (size_t k = 0; k < sizeof at / sizeof *at; k++) {
        flip_byte(file, at[k]);
        model_fingerprint(&changed, file);
        if (strcmp(changed.model_digest, fp.model_digest) == 0)
            fail_msg("byte %ld changed, same digest %s", at[k], fp.model_digest);
        if (k == 0) { /* the first (middle) change: the load refuses it by name */
            expect_refused(m, ckpt, &changed, PB_ERR_ARG, "written for other weights");
            expect_refused(m, ckpt, &changed, PB_ERR_ARG, ckpt);
            expect_refused(m, ckpt, &changed, PB_ERR_ARG, "weights.bin");
        }
        flip_byte(file, at[k]);
        model_fingerprint(&restored, file);
        assert_string_equal(restored.model_digest, fp.model_digest);
    }
    /* A sharded folder: every shard counts, not only its ends. */
    snprintf(folder, sizeof folder, "%s/hf", tmp_dir);
    assert_int_equal(mkdir(folder, 0700), 0);
    for (int i = 1; i <= 2; i++) {
        snprintf(shard, sizeof shard, "%s/model-%05d-of-00002.safetensors", folder, i);
        write_bytes(shard, bytes, n);
    }
    snprintf(shard, sizeof shard, "%s/config.json", folder);
    write_bytes(shard, (const unsigned char *)"{}", 2);
    model_fingerprint(&fp, folder);
    snprintf(shard, sizeof shard, "%s/model-00002-of-00002.safetensors", folder);
    flip_byte(shard, (long)n / 2);
    model_fingerprint(&changed, folder);
    assert_string_not_equal(changed.model_digest, fp.model_digest);
    free(bytes);
    pb_model_free(m);
}

/* Ranks other than 0 skip the model (skip_model): their fingerprint loads a
 * checkpoint of any model (rank 0 checks it for the job) but cannot write
 * one. */
static void test_fingerprint_skip_model(void **state) {
    pb_model *m = load(PB_BACKEND_REFERENCE);
    char ckpt[256], other_model[1024];
    snprintf(ckpt, sizeof ckpt, "%s/sweep.checkpoint", tmp_dir);
    pb_sweep_fingerprint fp, skip;
    pb_sweep *s = interrupted_sweep(m, ckpt, &fp);
    snprintf(other_model, sizeof other_model, "%s/tiny_bias/model.gguf", tu_fixtures());
    pb_fingerprint_options fo = {.skip_model = 1};
    assert_int_equal(
        pb_sweep_fingerprint_compute_with(&skip, other_model, spec_text, PB_BACKEND_REFERENCE, PB_DTYPE_F32, &fo),
        PB_OK);
    assert_int_equal(skip.model_unchecked, 1);
    assert_int_equal(pb_sweep_checkpoint_write(s, ckpt, &skip), PB_ERR_ARG);
    pb_sweep_options o = {.max_batch_rows = 4, .metric_fn_residual_layer = -1};
    pb_sweep *fresh = create(m, spec_text, &o);
    assert_int_equal(pb_sweep_checkpoint_load(fresh, ckpt, &skip), PB_OK);
    pb_sweep_summary a, b;
    pb_sweep_get_summary(s, &a);
    pb_sweep_get_summary(fresh, &b);
    assert_true(b.n_rows_done > 0);
    assert_int_equal(b.n_rows_done, a.n_rows_done);
    pb_sweep_free(fresh);
    pb_sweep_free(s);
    pb_model_free(m);
}

static void test_corrupt_refused(void **state) {
    pb_model *m = load(PB_BACKEND_REFERENCE);
    char path[256], bad[256];
    snprintf(path, sizeof path, "%s/sweep.checkpoint", tmp_dir);
    snprintf(bad, sizeof bad, "%s/bad.checkpoint", tmp_dir);
    pb_sweep_fingerprint fp;
    pb_sweep_free(interrupted_sweep(m, path, &fp));
    size_t n = 0;
    unsigned char *data = (unsigned char *)tu_read_file(path, &n);
    assert_non_null(data);
    assert_true(n > 100);
    /* truncated at several lengths */
    size_t cuts[] = {0, 5, 12, 40, n / 2, n - 33, n - 1};
    for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
        write_bytes(bad, data, cuts[i]);
        expect_refused(m, bad, &fp, PB_ERR_FORMAT, "checkpoint");
    }
    /* one flipped bit anywhere: the checksum */
    size_t flips[] = {20, n / 3, n - 40, n - 2};
    for (size_t i = 0; i < sizeof flips / sizeof flips[0]; i++) {
        data[flips[i]] ^= 0x10;
        write_bytes(bad, data, n);
        expect_refused(m, bad, &fp, PB_ERR_FORMAT, "checksum");
        data[flips[i]] ^= 0x10;
    }
    /* bad magic, bad version */
    data[0] = 'X';
    write_bytes(bad, data, n);
    expect_refused(m, bad, &fp, PB_ERR_FORMAT, "not a patchbay checkpoint");
    data[0] = 'P';
    data[8] = 9;
    write_bytes(bad, data, n);
    expect_refused(m, bad, &fp, PB_ERR_FORMAT, "version 9");
    data[8] = 2; /* before the prompts' ids were recorded */
    write_bytes(bad, data, n);
    expect_refused(m, bad, &fp, PB_ERR_FORMAT, "did not record the prompts' token ids");
    free(data);
    /* missing */
    snprintf(bad, sizeof bad, "%s/missing.checkpoint", tmp_dir);
    expect_refused(m, bad, &fp, PB_ERR_IO, "cannot open checkpoint");
    pb_model_free(m);
}

/* Shares: contiguous, covering every row once, estimated costs close. */
static void test_partition(void **state) {
    pb_model *m = load(PB_BACKEND_REFERENCE);
    pb_sweep_options o = {.metric_fn_residual_layer = -1};
    pb_sweep *s = create(m, spec_text, &o);
    pb_sweep_summary sum;
    pb_sweep_get_summary(s, &sum);
    /* cost: (layers from the patch point) x (positions from the first patched one) */
    assert_true(pb_sweep_row_cost(s, 0) == 2.0 * 8); /* resid_pre layer 0, position 0 */
    assert_true(pb_sweep_row_cost(s, 7) == 2.0 * 1); /* resid_pre layer 0, last position */
    assert_true(pb_sweep_row_cost(s, sum.n_rows) < 0);
    for (int size = 1; size <= 5; size++) {
        int64_t next = 0;
        double costs[5], max = 0, total = 0;
        for (int r = 0; r < size; r++) {
            int64_t *rows = NULL, n = 0;
            assert_int_equal(pb_sweep_partition(s, r, size, &rows, &n, costs), PB_OK);
            for (int64_t i = 0; i < n; i++)
                assert_int_equal(rows[i], next + i);
            next += n;
            free(rows);
        }
        assert_int_equal(next, sum.n_rows);
        for (int r = 0; r < size; r++) {
            total += costs[r];
            max = costs[r] > max ? costs[r] : max;
        }
        /* balanced within the largest single row's cost, bounded here by 25% */
        assert_true(max <= 1.25 * total / size);
    }
    pb_sweep_free(s);
    pb_model_free(m);
}

/* ---- the CLI -------------------------------------------------------------- */

static char cli[1024];

static int need_cli(void) {
    const char *build = getenv("PB_BUILD_DIR");
    snprintf(cli, sizeof cli, "%s/patchbay", build ? build : ".");
    return access(cli, X_OK) == 0;
}

/* Starts patchbay with args (NULL-terminated), stdout/stderr to files in tmp_dir. */
static pid_t spawn(const char *const *args, const char *tag) {
    char *argv[40] = {cli};
    int argc = 1;
    while (args[argc - 1] && argc < 39) {
        argv[argc] = (char *)args[argc - 1];
        argc++;
    }
    argv[argc] = NULL;
    char out[256], err[256];
    snprintf(out, sizeof out, "%s/%s.stdout", tmp_dir, tag);
    snprintf(err, sizeof err, "%s/%s.stderr", tmp_dir, tag);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (!freopen(out, "wb", stdout) || !freopen(err, "wb", stderr))
            _exit(126);
        execv(cli, argv);
        _exit(127);
    }
    return pid;
}

static int wait_status(pid_t pid) {
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void read_file(const char *path, char *buf, size_t size) {
    FILE *f = fopen(path, "rb");
    buf[0] = 0;
    if (!f)
        return;
    size_t n = fread(buf, 1, size - 1, f);
    buf[n] = 0;
    fclose(f);
}

/* A spec of many long pairs: a few hundred ms on two threads with small batches. */
static void write_long_spec(const char *path) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    fprintf(f, "{\"mode\": \"denoising\", \"pairs\": [");
    uint64_t seed = 7;
    for (int p = 0; p < 40; p++) {
        int ids[60];
        for (int t = 0; t < 60; t++)
            ids[t] = 3 + (int)(tu_next(&seed) % 117);
        for (int side = 0; side < 2; side++) {
            fprintf(f, "%s\"%s\": {\"ids\": [", side ? ", " : (p ? ", {" : "{"), side ? "corrupted" : "clean");
            for (int t = 0; t < 60; t++)
                fprintf(f, "%s%d", t ? "," : "", side && t == 5 ? 3 + (ids[t] + 7) % 117 : ids[t]);
            fprintf(f, "]}");
        }
        fprintf(f, "}");
    }
    fprintf(f,
            "], \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},"
            " {\"component\": \"mlp_out\", \"layers\": \"all\", \"positions\": \"each\"},"
            " {\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"}],"
            " \"metric\": {\"kind\": \"logit_diff\", \"positive\": {\"ids\": [18]}, \"negative\": {\"ids\": [53]}}}");
    fclose(f);
}

static long long count_after(const char *text, const char *needle) {
    const char *at = strstr(text, needle);
    return at ? atoll(at + strlen(needle)) : -1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_cli_sigterm_resume(void **state) {
    if (!need_cli()) {
        print_message("skipping: %s is not built (set PB_BUILD_DIR)\n", cli);
        skip();
    }
    char model[1024], spec[256], whole[256], out[256], ckpt[256], a[512], b[512];
    char *err = malloc(65536), *text_a = malloc(1 << 22), *text_b = malloc(1 << 22);
    model_path(model, sizeof model);
    snprintf(spec, sizeof spec, "%s/spec.json", tmp_dir);
    write_long_spec(spec);
    snprintf(whole, sizeof whole, "%s/whole", tmp_dir);
    snprintf(out, sizeof out, "%s/out", tmp_dir);
    snprintf(ckpt, sizeof ckpt, "%s/out.checkpoint", tmp_dir);
    const char *run_whole[] = {"sweep", "--model",      model, "--spec",        spec, "--out", whole, "--threads",
                               "2",     "--max-memory", "8M",  "--no-progress", NULL};
    assert_int_equal(wait_status(spawn(run_whole, "whole")), 0);
    snprintf(a, sizeof a, "%s/whole.stderr", tmp_dir);
    read_file(a, err, 65536);
    long long executed_whole = count_after(err, "rows executed in this run: ");
    assert_true(executed_whole > 0);

    /* SIGTERM 100 ms after the row count is printed (the model is loaded
     * then), or after 300 ms: mid-sweep on any machine where the whole run
     * takes ~0.5 s; a run that already finished is accepted below. */
    const char *run_out[] = {"sweep", "--model",   model, "--spec",       spec, "--out",
                             out,     "--threads", "2",   "--max-memory", "8M", NULL};
    pid_t pid = spawn(run_out, "first");
    snprintf(a, sizeof a, "%s/first.stderr", tmp_dir);
    double t0 = now_s();
    for (;;) {
        read_file(a, err, 65536);
        if (strstr(err, "rows") || now_s() - t0 > 0.3)
            break;
        usleep(2000);
    }
    usleep(100000);
    kill(pid, SIGTERM);
    int rc = wait_status(pid);
    read_file(a, err, 65536);
    long long executed_first = 0;
    if (rc == 0) {
        /* finished before the signal landed: nothing to resume */
        print_message("the sweep finished before SIGTERM arrived; resume not exercised\n");
    } else {
        if (rc != 3)
            fail_msg("expected exit 3 after SIGTERM, got %d: %s", rc, err);
        assert_non_null(strstr(err, "checkpoint written to"));
        assert_int_equal(access(ckpt, R_OK), 0);
        assert_int_not_equal(access(out, F_OK), 0); /* DIR untouched */
        assert_false(dir_has_tmp(tmp_dir));
        executed_first = count_after(err, "rows executed in this run: ");
        assert_true(executed_first >= 0 && executed_first < executed_whole);

        /* without --resume: refused, usage status */
        assert_int_equal(wait_status(spawn(run_out, "noresume")), 2);
        const char *resume[] = {"sweep",     "--model", model,          "--spec", spec,       "--out", out,
                                "--threads", "2",       "--max-memory", "8M",     "--resume", NULL};
        rc = wait_status(spawn(resume, "second"));
        snprintf(a, sizeof a, "%s/second.stderr", tmp_dir);
        read_file(a, err, 65536);
        if (rc != 0)
            fail_msg("--resume failed (%d): %s", rc, err);
        assert_non_null(strstr(err, "resuming from"));
        long long executed_second = count_after(err, "rows executed in this run: ");
        print_message("CLI rows executed: %lld before SIGTERM + %lld resumed = %lld uninterrupted\n", executed_first,
                      executed_second, executed_whole);
        assert_int_equal(executed_first + executed_second, executed_whole);
        assert_int_not_equal(access(ckpt, F_OK), 0); /* removed once the results exist */
    }
    /* results.json: equal to the uninterrupted run's (same threads, same batches) */
    snprintf(a, sizeof a, "%s/results.json", whole);
    snprintf(b, sizeof b, "%s/results.json", out);
    read_file(a, text_a, 1 << 22);
    read_file(b, text_b, 1 << 22);
    assert_true(strlen(text_a) > 1000);
    assert_string_equal(text_a, text_b);
    free(err);
    free(text_a);
    free(text_b);
}

/* A checkpoint for another spec is refused by the CLI, naming it. */
static void test_cli_mismatch(void **state) {
    if (!need_cli()) {
        print_message("skipping: %s is not built (set PB_BUILD_DIR)\n", cli);
        skip();
    }
    pb_model *m = load(PB_BACKEND_CPU);
    char model[1024], spec[256], out[256], ckpt[256], err[65536];
    model_path(model, sizeof model);
    snprintf(out, sizeof out, "%s/out", tmp_dir);
    snprintf(ckpt, sizeof ckpt, "%s/out.checkpoint", tmp_dir);
    snprintf(spec, sizeof spec, "%s/spec.json", tmp_dir);
    FILE *f = fopen(spec, "wb");
    assert_non_null(f);
    fputs(spec_text, f);
    fclose(f);
    /* a checkpoint from the reformatted spec with a changed metric token */
    char *changed = strdup(spec_text);
    strstr(changed, "[53]")[2] = '4';
    volatile int stop = 0;
    stopper st = {&stop, 0, 1};
    pb_sweep_options o = {.max_batch_rows = 4,
                          .metric_fn_residual_layer = -1,
                          .stop = &stop,
                          .progress = stop_progress,
                          .progress_user = &st};
    pb_sweep *s = create(m, changed, &o);
    assert_int_equal(pb_sweep_run(s), PB_ERR_INTERRUPTED);
    pb_sweep_fingerprint fp;
    fingerprint(&fp, changed, PB_BACKEND_CPU);
    assert_int_equal(pb_sweep_checkpoint_write(s, ckpt, &fp), PB_OK);
    pb_sweep_free(s);
    free(changed);
    const char *resume[] = {"sweep", "--model", model, "--spec", spec, "--out", out, "--resume", "--no-progress", NULL};
    assert_int_equal(wait_status(spawn(resume, "mismatch")), 1);
    char path[256];
    snprintf(path, sizeof path, "%s/mismatch.stderr", tmp_dir);
    read_file(path, err, sizeof err);
    if (!strstr(err, "another spec"))
        fail_msg("expected the spec mismatch named: %s", err);
    assert_int_not_equal(access(out, F_OK), 0);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_resume_reference, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_resume_reference_mid, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_resume_twice, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_resume_cpu, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_stop_before_start, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_mismatch_refused, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_corrupt_refused, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_fingerprint_every_byte, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_fingerprint_skip_model, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_partition, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_cli_sigterm_resume, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_cli_mismatch, make_tmp, remove_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
