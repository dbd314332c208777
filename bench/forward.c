/* Prompt-processing throughput of the CPU engine beside its ceiling.
 *
 *   bench_forward [MODEL] [T] [REPEATS]
 *
 * MODEL may be random:NAME[:LAYERS] (a synthetic model, pb_model_random),
 * so the bench runs without a downloaded file.
 * Times pb_forward on T tokens (default 128) of the model (default: SmolLM2
 * under models/), then times OpenBLAS sgemm alone at exactly the matrix
 * shapes one forward multiplies, in the same run, and prints tokens/s,
 * GFLOP/s for both and their ratio. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "util/clock.h"
#include "model/model.h"
#include "patchbay.h"

typedef struct gemm_shape {
    int n, k, count; /* out (T, n) = x (T, k) @ w (n, k)^T, `count` times per forward */
} gemm_shape;

int main(int argc, char **argv) {
    const char *path = argc > 1 ? argv[1] : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
    int T = argc > 2 ? atoi(argv[2]) : 128;
    int repeats = argc > 3 ? atoi(argv[3]) : 5;
    if (T <= 0 || repeats <= 0) {
        fprintf(stderr, "usage: bench_forward [MODEL] [T > 0] [REPEATS > 0]\n");
        return 2;
    }
    pb_model *m;
    pb_status loaded = strncmp(path, "random:", 7) == 0 ? pb_model_random(&m, path + 7, 1, NULL)
                                                        : pb_model_load(&m, path, NULL);
    if (loaded != PB_OK) {
        fprintf(stderr, "bench_forward: %s\n", pb_last_error());
        return 1;
    }
    const pb_model_config *c = pb_model_get_config(m);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T);
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    uint32_t s = 12345;
    for (int t = 0; t < T; t++) {
        s = s * 1664525u + 1013904223u;
        ids[t] = (int32_t)(s % (uint32_t)c->vocab_size);
    }

    /* FLOPs of one forward: projections, attention (QK^T and PV over the
     * causal triangle) and the unembedding. */
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    gemm_shape shapes[] = {
        {qd, d, c->n_layers},           {kvd, d, 2 * c->n_layers},  {d, qd, c->n_layers},
        {c->d_mlp, d, 2 * c->n_layers}, {d, c->d_mlp, c->n_layers}, {c->vocab_size, d, 1},
    };
    int n_shapes = sizeof shapes / sizeof shapes[0];
    double gemm_flops = 0.0;
    for (int i = 0; i < n_shapes; i++)
        gemm_flops += 2.0 * T * shapes[i].n * shapes[i].k * shapes[i].count;
    double attn_flops = 4.0 * c->n_layers * (double)qd * T * (T + 1) / 2.0;
    double flops = gemm_flops + attn_flops;

    if (pb_forward(m, ids, T, logits, NULL) != PB_OK) { /* warm-up */
        fprintf(stderr, "bench_forward: %s\n", pb_last_error());
        return 1;
    }
    double t0 = pb_now_seconds();
    for (int r = 0; r < repeats; r++)
        pb_forward(m, ids, T, logits, NULL);
    double engine = (pb_now_seconds() - t0) / repeats;

    /* The same GEMMs, alone, through the same OpenBLAS. */
    size_t max_w = 0;
    for (int i = 0; i < n_shapes; i++)
        if ((size_t)shapes[i].n * shapes[i].k > max_w)
            max_w = (size_t)shapes[i].n * shapes[i].k;
    int max_dim = c->d_mlp > qd ? c->d_mlp : qd;
    max_dim = max_dim > d ? max_dim : d;
    float *x = calloc((size_t)T * max_dim, sizeof(float));
    float *w = calloc(max_w, sizeof(float));
    float *out = calloc((size_t)T * (size_t)(c->vocab_size > max_dim ? c->vocab_size : max_dim), sizeof(float));
    for (size_t i = 0; i < max_w; i++)
        w[i] = (float)((i * 2654435761u) % 1000) * 1e-3f;
    double gemm_time = 0.0;
    for (int i = 0; i < n_shapes; i++) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, shapes[i].n, shapes[i].k, 1.0f, x, shapes[i].k, w,
                    shapes[i].k, 0.0f, out, shapes[i].n);
        double g0 = pb_now_seconds();
        for (int r = 0; r < repeats; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, shapes[i].n, shapes[i].k, 1.0f, x, shapes[i].k, w,
                        shapes[i].k, 0.0f, out, shapes[i].n);
        gemm_time += (pb_now_seconds() - g0) / repeats * shapes[i].count;
    }

    double engine_gflops = flops / engine * 1e-9, gemm_gflops = gemm_flops / gemm_time * 1e-9;
    printf("model            %s (%d layers, d_model %d)\n", path, c->n_layers, d);
    printf("tokens           %d, repeats %d, threads %s\n", T, repeats,
           getenv("OMP_NUM_THREADS") ? getenv("OMP_NUM_THREADS") : "all cores");
    printf("engine forward   %.1f ms  %.1f tokens/s  %.2f GFLOP/s (%.3f GFLOP per forward)\n", engine * 1e3, T / engine,
           engine_gflops, flops * 1e-9);
    printf("sgemm ceiling    %.1f ms  %.2f GFLOP/s at the model's shapes (%.3f GFLOP)\n", gemm_time * 1e3, gemm_gflops,
           gemm_flops * 1e-9);
    printf("ratio            engine / sgemm = %.2f\n", engine_gflops / gemm_gflops);
    free(x);
    free(w);
    free(out);
    free(ids);
    free(logits);
    pb_model_free(m);
    return 0;
}
