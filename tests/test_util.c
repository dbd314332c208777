/* The shared test helpers declared in test_util.h: fixture and model paths,
 * whole files, scratch directories, fixture models, CUDA availability. Built
 * once into the pb_test_util library that every test links. */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <dirent.h>
#include <jansson.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "formats/npy.h"
#include "model/model.h"
#include "patching/sweep.h"
#include "patching/sweep_access.h"
#include "test_util.h"
#include "util/outdir.h"

/* ---- paths ---------------------------------------------------------------- */

const char *tu_fixtures(void) {
    const char *dir = getenv("PB_FIXTURES");
    return dir ? dir : "tests/fixtures";
}

const char *tu_source_dir(void) {
    const char *dir = getenv("PB_SOURCE_DIR");
    return dir ? dir : ".";
}

int tu_fixture_path(char *buf, size_t size, const char *relative) {
    const char *dir = getenv("PB_FIXTURES");
    if (!dir || !*dir)
        return 0;
    int n = snprintf(buf, size, "%s/%s", dir, relative);
    return n > 0 && (size_t)n < size;
}

void tu_fixture_file(char *buf, size_t size, const char *model, const char *file) {
    snprintf(buf, size, "%s/%s%s%s", tu_fixtures(), model, file ? "/" : "", file ? file : "");
}

int tu_file_exists(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return 0;
    fclose(f);
    return 1;
}

int tu_sanitized(void) {
#if defined(__SANITIZE_ADDRESS__)
    return 1;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
    return 1;
#endif
#endif
    return 0;
}

const char *tu_model_path(char *buf, size_t size) {
    const char *model = getenv("PB_MODEL");
    if (model && *model) {
        snprintf(buf, size, "%s", model);
        return tu_file_exists(buf) ? buf : NULL;
    }
    const char *source = getenv("PB_SOURCE_DIR");
    if (!source || !*source)
        return NULL;
    int n = snprintf(buf, size, "%s/models/%s", source, TU_SMOLLM2_FILE);
    if (n <= 0 || (size_t)n >= size)
        return NULL;
    return tu_file_exists(buf) ? buf : NULL;
}

const char *tu_path(char *out, size_t size, const char *dir, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
    return out;
}

/* ---- files ---------------------------------------------------------------- */

char *tu_read_file(const char *path, size_t *size) {
    char *text = NULL;
    return pb_read_text_file(path, &text, size) == PB_OK ? text : NULL;
}

char *tu_fuzz_input(const char *harness, const char *name, size_t *size) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fuzz/regressions/%s/%s", tu_source_dir(), harness, name);
    char *bytes = tu_read_file(path, size);
    if (!bytes)
        fail_msg("cannot read the fuzz regression input %s: %s", path, pb_last_error());
    return bytes;
}

int tu_write_file(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t written = n ? fwrite(bytes, 1, n, f) : 0;
    int closed = fclose(f);
    return written == n && closed == 0 ? 0 : -1;
}

int tu_write_text(const char *path, const char *text) { return tu_write_file(path, text, strlen(text)); }

static const char *temp_root(void) {
    const char *dir = getenv("TMPDIR");
    return dir && *dir ? dir : "/tmp";
}

int tu_write_temp(char *path, size_t size, const void *data, size_t n) {
    int len = snprintf(path, size, "%s/pb_test_XXXXXX", temp_root());
    if (len <= 0 || (size_t)len >= size)
        return 0;
    int fd = mkstemp(path);
    if (fd < 0)
        return 0;
    const uint8_t *p = data;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0) {
            close(fd);
            unlink(path);
            return 0;
        }
        p += w;
        n -= (size_t)w;
    }
    return close(fd) == 0;
}

/* ---- directories ---------------------------------------------------------- */

void tu_put(tu_bytes *b, const void *p, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->data = realloc(b->data, b->cap);
        assert_non_null(b->data);
    }
    memcpy(b->data + b->n, p, n);
    b->n += n;
}

void tu_put_u32(tu_bytes *b, uint32_t v) { tu_put(b, &v, 4); }
void tu_put_u64(tu_bytes *b, uint64_t v) { tu_put(b, &v, 8); }

void tu_put_str(tu_bytes *b, const char *s) {
    tu_put_u64(b, strlen(s));
    tu_put(b, s, strlen(s));
}

int tu_make_temp_dir(char *dir, size_t size, const char *prefix) {
    int n = snprintf(dir, size, "%s/%sXXXXXX", temp_root(), prefix);
    if (n < 0 || (size_t)n >= size)
        return -1;
    return mkdtemp(dir) ? 0 : -1;
}

void tu_remove_tree(const char *path) {
    struct stat info;
    if (lstat(path, &info) != 0)
        return;
    if (!S_ISDIR(info.st_mode)) {
        unlink(path);
        return;
    }
    DIR *dir = opendir(path);
    if (dir) {
        for (struct dirent *entry; (entry = readdir(dir)) != NULL;) {
            if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0)
                continue;
            char child[1024];
            int n = snprintf(child, sizeof child, "%s/%s", path, entry->d_name);
            if (n > 0 && (size_t)n < sizeof child)
                tu_remove_tree(child);
        }
        closedir(dir);
    }
    rmdir(path);
}

static int compare_names(const void *a, const void *b) { return strcmp(a, b); }

void tu_list_dir(const char *dir, char *out, size_t size) {
    char names[32][256];
    int n = 0;
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot list %s", dir);
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && n < 32)
            snprintf(names[n++], sizeof names[0], "%s", e->d_name);
    closedir(d);
    qsort(names, (size_t)n, sizeof names[0], compare_names);
    out[0] = 0;
    for (int i = 0; i < n; i++) {
        strncat(out, i ? " " : "", size - strlen(out) - 1);
        strncat(out, names[i], size - strlen(out) - 1);
    }
}

pb_model *tu_load_case_model(const char *name, const pb_load_options *o) {
    char path[1024];
    if (strcmp(name, "smollm2") == 0)
        snprintf(path, sizeof path, "%s/models/%s", tu_source_dir(), TU_SMOLLM2_FILE);
    else
        snprintf(path, sizeof path, "%s/%s", tu_fixtures(), name);
    if (access(path, R_OK) != 0)
        return NULL;
    pb_model *m = NULL;
    if (pb_model_load(&m, path, o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    return m;
}

pb_model *tu_load_case_model_or_skip(const char *name) {
    pb_model *m = tu_load_case_model(name, NULL);
    if (!m) {
        print_message("skipping %s: the model is absent\n", name);
        skip();
    }
    return m;
}

int tu_visit_cases(const char *subdir, int (*visit)(const tu_oracle_case *c, void *ctx), void *ctx) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", tu_fixtures(), subdir);
    DIR *d = opendir(dir);
    if (!d)
        fail_msg("cannot list %s", dir);
    int n_counted = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.')
            continue;
        tu_oracle_case c = {.name = e->d_name};
        char path[1600];
        snprintf(c.dir, sizeof c.dir, "%s/%s", dir, e->d_name);
        snprintf(path, sizeof path, "%s/expected.json", c.dir);
        json_error_t err;
        c.expected = json_load_file(path, 0, &err);
        if (!c.expected)
            fail_msg("%s: %s", path, err.text);
        snprintf(path, sizeof path, "%s/spec.json", c.dir);
        c.spec = tu_read_file(path, NULL);
        if (!c.spec)
            fail_msg("%s: cannot read", path);
        n_counted += visit(&c, ctx) != 0;
        free(c.spec);
        json_decref(c.expected);
    }
    closedir(d);
    return n_counted;
}

/* The visit tu_visit_path_cases runs: the caller's while fewer than `cap` ran. */
typedef struct capped_visit {
    int (*visit)(const tu_oracle_case *c, void *ctx);
    void *ctx;
    int ran, cap;
} capped_visit;

static int visit_capped(const tu_oracle_case *c, void *ctx) {
    capped_visit *v = ctx;
    if (v->ran >= v->cap || !v->visit(c, v->ctx))
        return 0;
    v->ran++;
    return 1;
}

int tu_visit_path_cases(const char *subdir, int (*visit)(const tu_oracle_case *c, void *ctx), void *ctx, int want) {
    capped_visit v = {visit, ctx, 0, tu_sanitized() ? TU_SANITIZED_CASES : INT_MAX};
    return tu_visit_cases(subdir, visit_capped, &v) >= (tu_sanitized() ? TU_SANITIZED_CASES : want);
}

static int copy_named(const tu_oracle_case *c, void *ctx) {
    tu_oracle_case *out = ctx;
    if (strcmp(c->name, out->name) != 0)
        return 0;
    out->spec = strdup(c->spec);
    snprintf(out->dir, sizeof out->dir, "%s", c->dir);
    return out->spec != NULL;
}

tu_oracle_case tu_case_named(const char *subdir, const char *name) {
    tu_oracle_case c = {.name = name};
    if (tu_visit_cases(subdir, copy_named, &c) != 1)
        fail_msg("no case %s in %s", name, subdir);
    return c;
}

int tu_scratch_setup(void **state) {
    tu_scratch *scratch = calloc(1, sizeof *scratch);
    if (!scratch || tu_make_temp_dir(scratch->dir, sizeof scratch->dir, "pb_st_test_") != 0) {
        free(scratch);
        return -1;
    }
    *state = scratch;
    return 0;
}

int tu_scratch_teardown(void **state) {
    tu_scratch *scratch = *state;
    if (scratch && scratch->dir[0])
        tu_remove_tree(scratch->dir);
    free(scratch);
    return 0;
}

/* ---- models and arrays ----------------------------------------------------- */

pb_model *tu_load_model(const char *model, const char *file, pb_backend_kind backend) {
    char path[1024];
    tu_fixture_file(path, sizeof path, model, file);
    pb_model *m = NULL;
    pb_load_options o = {.n_threads = 2, .backend = backend};
    if (pb_model_load(&m, path, &o) != PB_OK)
        fail_msg("loading %s: %s", path, pb_last_error());
    return m;
}

double tu_worst_alignment(const pb_capture *cap, const float *u, int d) {
    double norm_u = 0, worst = 0;
    for (int k = 0; k < d; k++)
        norm_u += (double)u[k] * u[k];
    norm_u = sqrt(norm_u);
    for (int i = 0; i < pb_capture_count(cap); i++) {
        int n_dims;
        int64_t shape[3];
        const float *x = pb_capture_data(cap, i, &n_dims, shape);
        for (int64_t t = 0; t < shape[0]; t++) {
            double dot = 0, n2 = 0;
            for (int k = 0; k < d; k++) {
                dot += (double)x[t * d + k] * u[k];
                n2 += (double)x[t * d + k] * x[t * d + k];
            }
            worst = fmax(worst, fabs(dot) / (sqrt(n2) * norm_u + 1e-30));
        }
    }
    return worst;
}

int32_t *tu_read_ids(const char *path, int *T) {
    void *data = NULL;
    int n_dims = 0;
    int64_t shape[8];
    if (pb_npy_read(path, &data, PB_NPY_I32, &n_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    assert_int_equal(n_dims, 1);
    *T = (int)shape[0];
    return data;
}

float *tu_read_f32(const char *path, int n_dims, int64_t shape[8]) {
    void *data = NULL;
    int got_dims = 0;
    if (pb_npy_read(path, &data, PB_NPY_F32, &got_dims, shape) != PB_OK)
        fail_msg("%s", pb_last_error());
    if (got_dims != n_dims)
        fail_msg("%s: %d dimensions, expected %d", path, got_dims, n_dims);
    return data;
}

/* ---- CUDA ------------------------------------------------------------------ */

int tu_cuda_exit_code(pb_status status) {
    if (status == PB_OK)
        return 0;
    char message[1024];
    snprintf(message, sizeof message, "%s", pb_last_error());
#ifdef PB_HAVE_CUDA
    /* a build with CUDA whose module does not load is broken, not deviceless */
    if (pb_cuda_module_load() != PB_OK) {
        fprintf(stderr, "the CUDA backend's module did not load: %s\n", pb_last_error());
        return 1;
    }
#endif
    if (status == PB_ERR_UNSUPPORTED) {
        printf("skipping: no CUDA device: %s\n", message);
        return 77;
    }
    fprintf(stderr, "pb_backend_cuda_create: %s: %s\n", pb_status_name(status), message);
    return 1;
}

int tu_cuda_device(pb_backend_kind *device) {
    const char *stand_in = getenv("PB_CUDA_TEST_STAND_IN");
    if (stand_in && *stand_in) {
        if (pb_backend_parse(stand_in, device) != PB_OK) {
            fprintf(stderr, "PB_CUDA_TEST_STAND_IN: %s\n", pb_last_error());
            return 1;
        }
        printf("note: PB_CUDA_TEST_STAND_IN: the %s backend stands in for CUDA; nothing here tests the GPU\n",
               pb_backend_name(*device));
        return 0;
    }
    pb_backend *probe = NULL;
    int exit_code = tu_cuda_exit_code(pb_backend_cuda_create(&probe, 0));
    if (exit_code == 0)
        pb_backend_destroy(probe);
    *device = PB_BACKEND_CUDA;
    return exit_code;
}

/* ---- sweeps ---------------------------------------------------------------- */

int tu_free_sweep_fixture(void *fixture, pb_sweep *sweep, pb_model *model) {
    pb_sweep_free(sweep);
    pb_model_free(model);
    free(fixture);
    return 0;
}

pb_status tu_run_sweep(pb_model *m, const char *spec, int with_op, pb_sweep **out) {
    const pb_backend_ops *saved = m->backend->ops;
    pb_backend_ops hidden = *saved;
    hidden.metric_rows = NULL;
    if (!with_op)
        m->backend->ops = &hidden;
    pb_sweep *s = NULL;
    pb_status status = pb_sweep_create(&s, m, spec, NULL, NULL);
    if (status == PB_OK) {
        assert_int_equal(pb_sweep_metric_on_device(s), with_op);
        status = pb_sweep_run(s);
    }
    m->backend->ops = saved;
    if (status != PB_OK) {
        pb_sweep_free(s);
        s = NULL;
    }
    *out = s;
    return status;
}

pb_sweep *tu_run_case_sweep(pb_model *m, const tu_oracle_case *c) {
    pb_sweep *s = NULL;
    if (pb_sweep_create(&s, m, c->spec, c->dir, NULL) != PB_OK || pb_sweep_run(s) != PB_OK)
        fail_msg("%s: %s", c->name, pb_last_error());
    return s;
}

double tu_sweep_difference(const pb_sweep *a, const pb_sweep *b) {
    double worst = 0.0;
    for (int p = 0; p < a->spec.n_pairs; p++) {
        double x[2], y[2];
        pb_sweep_get_pair(a, p, &x[0], &x[1]);
        pb_sweep_get_pair(b, p, &y[0], &y[1]);
        for (int i = 0; i < 2; i++)
            worst = fmax(worst, fabs(x[i] - y[i]) / fmax(1.0, fabs(y[i])));
        for (int64_t site = 0; site < a->n_sites; site++) {
            double pa, pb, ea, eb;
            pb_sweep_get_row(a, p, site, &pa, &ea);
            pb_sweep_get_row(b, p, site, &pb, &eb);
            worst = fmax(worst, fabs(pa - pb) / fmax(1.0, fabs(pb)));
        }
    }
    return worst;
}
