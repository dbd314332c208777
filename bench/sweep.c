/* Throughput of the batched patching engine beside its ceiling.
 *
 *   bench_sweep MODEL SPEC.json [--all-rows]
 *
 * Runs the sweep once (after a warm-up forward) and prints rows/s, the
 * FLOPs the engine actually executed and their rate, the FLOPs one full
 * forward per row would need, and OpenBLAS sgemm alone at the engine's own
 * shapes (the average packed batch height times each projection) measured
 * in the same run. --all-rows also runs rows whose effect is exactly zero
 * by construction, to show what the skips save. bench/sweep.sh runs this
 * beside the PyTorch one-forward-per-site loop. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "outdir.h"
#include "sweep.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* sgemm GFLOP/s at out (M, n) = x (M, k) @ w (n, k)^T for the model's
 * projections, weighted by how often a layer runs each. */
static double sgemm_ceiling(const pb_model_config *c, int M) {
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    int shapes[5][3] = {{qd, d, 1}, {kvd, d, 2}, {d, qd, 1}, {c->d_mlp, d, 2}, {d, c->d_mlp, 1}};
    size_t max_w = 0, max_dim = (size_t)(c->d_mlp > qd ? c->d_mlp : qd);
    for (int i = 0; i < 5; i++)
        if ((size_t)shapes[i][0] * shapes[i][1] > max_w)
            max_w = (size_t)shapes[i][0] * shapes[i][1];
    float *x = calloc((size_t)M * (max_dim > (size_t)d ? max_dim : (size_t)d), sizeof(float));
    float *w = calloc(max_w, sizeof(float)), *out = calloc((size_t)M * max_dim * 2, sizeof(float));
    for (size_t i = 0; i < max_w; i++)
        w[i] = (float)(i % 1000) * 1e-3f;
    double flops = 0, seconds = 0;
    int reps = 20;
    for (int i = 0; i < 5; i++) {
        int n = shapes[i][0], k = shapes[i][1];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n, k, 1.0f, x, k, w, k, 0.0f, out, n);
        double t0 = now();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n, k, 1.0f, x, k, w, k, 0.0f, out, n);
        seconds += (now() - t0) / reps * shapes[i][2];
        flops += 2.0 * M * n * k * shapes[i][2];
    }
    free(x);
    free(w);
    free(out);
    return flops / seconds * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_sweep MODEL SPEC.json [--all-rows]\n");
        return 2;
    }
    int all_rows = argc > 3 && strcmp(argv[3], "--all-rows") == 0;
    char *spec = NULL;
    if (pb_read_text_file(argv[2], &spec, NULL) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    pb_model *m;
    if (pb_model_load(&m, argv[1], NULL) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    int32_t warm[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pb_forward(m, warm, 8, NULL, NULL);
    pb_sweep_options o = {.metric_fn_residual_layer = -1, .run_trivial_rows = all_rows};
    pb_sweep *s;
    if (pb_sweep_create(&s, m, spec, NULL, &o) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    double t0 = now();
    if (pb_sweep_run(s) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    double seconds = now() - t0;
    pb_sweep_summary sum;
    pb_sweep_get_summary(s, &sum);
    int avg_M = s->n_batches ? (int)(s->tokens_packed / s->n_batches) : 1;
    double ceiling = sgemm_ceiling(&m->cfg, avg_M > 0 ? avg_M : 1);
    double gflops = sum.flops_executed / seconds * 1e-9;
    printf("engine sweep      %lld rows (%lld executed, %lld exactly zero by construction) in %.3f s\n",
           (long long)sum.n_rows, (long long)sum.n_rows_executed, (long long)(sum.n_rows - sum.n_rows_executed),
           seconds);
    printf("engine rows/s     %.1f (all rows)  %.1f (executed rows)\n", sum.n_rows / seconds,
           sum.n_rows_executed / seconds);
    printf("engine batches    %lld, %.1f packed tokens each\n", (long long)s->n_batches,
           s->n_batches ? (double)s->tokens_packed / s->n_batches : 0.0);
    printf("engine FLOPs      %.2f GFLOP executed (naive one-forward-per-row: %.2f GFLOP, %.1fx more)\n",
           sum.flops_executed * 1e-9, sum.flops_naive * 1e-9, sum.flops_naive / sum.flops_executed);
    printf("engine rate       %.2f GFLOP/s (wall time incl. caches and metrics)\n", gflops);
    printf("sgemm ceiling     %.2f GFLOP/s at M = %d and the model's projection shapes\n", ceiling, avg_M);
    printf("ratio             engine / sgemm = %.2f\n", gflops / ceiling);
    printf("RESULT engine_rows_per_s=%.3f engine_seconds=%.4f rows=%lld\n", sum.n_rows / seconds, seconds,
           (long long)sum.n_rows);
    pb_sweep_free(s);
    pb_model_free(m);
    free(spec);
    return 0;
}
