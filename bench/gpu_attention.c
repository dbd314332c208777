/* The CUDA backend's ragged attention (pb_backend_ops.attention_jobs) with
 * each of its two kernels forced, at two shapes:
 *
 *   prefill  --seqs jobs of --seq-len queries, no prefix (llama3-8b: 32
 *            query heads, 8 KV heads, head_dim 128), causal;
 *   sweep    --sweep-jobs jobs of 1 .. 64 new queries (job j has 1 + j % 64)
 *            after one shared --prefix-token prefix, as a patching sweep
 *            runs them.
 *
 *   bench_gpu_attention [--seqs 8] [--seq-len 1024] [--sweep-jobs 512] [--prefix 64]
 *                       [--heads 32] [--kv-heads 8] [--head-dim 128] [--repeats 5] [--device 0]
 *
 * The kernel is chosen by PB_CUDA_ATTENTION (rows: one block per query and
 * head; tiled: attention_tiled.cu), which the backend reads when it is
 * created, so each (shape, kernel) gets a backend of its own. After one
 * warm-up call, --repeats calls are timed with the host clock around the
 * calls and a synchronise. FLOP: QK^T and PV over the causal triangle, 4 *
 * hd per (query, visible key) per head. Prints ms, TFLOP/s, the fraction of
 * a stated fp32 peak (the H200's 67 TFLOP/s, CUDA cores: attention stays
 * fp32 and off the tensor cores), the tiled/rows speed-up, the NMSE between
 * the two kernels' outputs, and a last line of JSON ({"bench":
 * "gpu_attention", ...}) for scripts/gpu-check.sh. Exit 77 when there is no
 * CUDA build or no device; 1 on a failure; 2 on a usage error. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "util/clock.h"
#include "patchbay.h"

/* fp32 FMA peak of an H200 SXM (= H100 SXM): 132 SMs x 128 lanes x 2 FLOP
 * x 1.98 GHz boost, the datasheet's 67 TFLOP/s. */
#define FP32_PEAK_TFLOPS 67.0

typedef struct args {
    int seqs, seq_len, sweep_jobs, prefix, heads, kv_heads, head_dim, repeats, device;
} args;

static int usage(void) {
    fprintf(stderr, "usage: bench_gpu_attention [--seqs N] [--seq-len T] [--sweep-jobs J] [--prefix P] "
                    "[--heads H] [--kv-heads KV] [--head-dim D] [--repeats R] [--device D]\n");
    return 2;
}

static int parse_args(int argc, char **argv, args *a) {
    *a = (args){.seqs = 8,
                .seq_len = 1024,
                .sweep_jobs = 512,
                .prefix = 64,
                .heads = 32,
                .kv_heads = 8,
                .head_dim = 128,
                .repeats = 5,
                .device = 0};
    static const struct {
        const char *flag;
        size_t offset;
        int min;
    } flags[] = {{"--seqs", offsetof(args, seqs), 1},
                 {"--seq-len", offsetof(args, seq_len), 1},
                 {"--sweep-jobs", offsetof(args, sweep_jobs), 1},
                 {"--prefix", offsetof(args, prefix), 0},
                 {"--heads", offsetof(args, heads), 1},
                 {"--kv-heads", offsetof(args, kv_heads), 1},
                 {"--head-dim", offsetof(args, head_dim), 1},
                 {"--repeats", offsetof(args, repeats), 1},
                 {"--device", offsetof(args, device), 0}};
    for (int i = 1; i < argc; i += 2) {
        size_t f = 0;
        while (f < sizeof flags / sizeof flags[0] && strcmp(argv[i], flags[f].flag) != 0)
            f++;
        if (f == sizeof flags / sizeof flags[0] || i + 1 >= argc)
            return 0;
        char *end = NULL;
        const long v = strtol(argv[i + 1], &end, 10);
        if (!*argv[i + 1] || *end || v < flags[f].min || v > (1 << 20)) {
            fprintf(stderr, "bench_gpu_attention: %s expects an integer >= %d, got '%s'\n", flags[f].flag, flags[f].min,
                    argv[i + 1]);
            return 0;
        }
        *(int *)((char *)a + flags[f].offset) = (int)v;
    }
    if (a->heads % a->kv_heads != 0) {
        fprintf(stderr, "bench_gpu_attention: --heads %d is not a multiple of --kv-heads %d\n", a->heads, a->kv_heads);
        return 0;
    }
    return 1;
}

/* One shape: jobs over device buffers q, out (rows, heads, hd) and keys. */
typedef struct shape {
    const char *name;
    pb_attention_job *jobs;
    int n_jobs, rows;
    size_t key_rows; /* rows of k and v: the prefix, then every job's new keys */
    double flops;
} shape;

/* Deterministic values in [-scale, scale). */
static void fill(float *x, size_t n, uint64_t seed, float scale) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        x[i] = scale * ((float)(s >> 40) / (float)(1 << 24) * 2.0f - 1.0f);
    }
}

/* Times `shape` with PB_CUDA_ATTENTION=kernel; *out_host gets the output
 * (rows * qd floats, malloc'd) for the cross-check. Returns seconds per
 * call, or a negative value on failure (message printed). */
static double run_shape(const args *a, const shape *sh, const char *kernel, float **out_host) {
    const size_t qd = (size_t)a->heads * a->head_dim, kvd = (size_t)a->kv_heads * a->head_dim;
    const size_t q_bytes = sizeof(float) * (size_t)sh->rows * qd, kv_bytes = sizeof(float) * sh->key_rows * kvd;
    double seconds = -1.0;
    pb_backend *b = NULL;
    float *q = NULL, *out = NULL, *k = NULL, *v = NULL, *host = NULL;
    pb_attention_job *jobs = NULL;
    setenv("PB_CUDA_ATTENTION", kernel, 1);
    if (pb_backend_cuda_create(&b, a->device) != PB_OK)
        goto fail;
    host = malloc(q_bytes > kv_bytes ? q_bytes : kv_bytes);
    jobs = malloc(sizeof *jobs * (size_t)sh->n_jobs);
    if (!host || !jobs) {
        fprintf(stderr, "bench_gpu_attention: out of host memory\n");
        goto done;
    }
    if (b->ops->alloc(b, (void **)&q, q_bytes) != PB_OK || b->ops->alloc(b, (void **)&out, q_bytes) != PB_OK ||
        b->ops->alloc(b, (void **)&k, kv_bytes) != PB_OK || b->ops->alloc(b, (void **)&v, kv_bytes) != PB_OK)
        goto fail;
    /* scores ~ N(0, 1)-ish after the 1/sqrt(hd) scale: a softmax that is
     * neither flat nor one-hot */
    fill(host, (size_t)sh->rows * qd, 1, 1.7f);
    if (b->ops->upload(b, q, host, q_bytes) != PB_OK)
        goto fail;
    fill(host, sh->key_rows * kvd, 2, 1.7f);
    if (b->ops->upload(b, k, host, kv_bytes) != PB_OK)
        goto fail;
    fill(host, sh->key_rows * kvd, 3, 1.0f);
    if (b->ops->upload(b, v, host, kv_bytes) != PB_OK)
        goto fail;
    /* the shape's key offsets (in rows) become pointers into k and v */
    for (int j = 0; j < sh->n_jobs; j++) {
        jobs[j] = sh->jobs[j];
        const size_t prefix_at = (size_t)(uintptr_t)sh->jobs[j].k_prefix, new_at = (size_t)(uintptr_t)sh->jobs[j].k_new;
        jobs[j].k_prefix = jobs[j].p0 ? k + prefix_at * kvd : NULL;
        jobs[j].v_prefix = jobs[j].p0 ? v + prefix_at * kvd : NULL;
        jobs[j].k_new = k + new_at * kvd;
        jobs[j].v_new = v + new_at * kvd;
    }
    if (b->ops->attention_jobs(b, out, q, jobs, sh->n_jobs, a->heads, a->kv_heads, a->head_dim, NULL) != PB_OK ||
        b->ops->synchronize(b) != PB_OK)
        goto fail;
    const double t0 = pb_now_seconds();
    for (int r = 0; r < a->repeats; r++)
        if (b->ops->attention_jobs(b, out, q, jobs, sh->n_jobs, a->heads, a->kv_heads, a->head_dim, NULL) != PB_OK)
            goto fail;
    if (b->ops->synchronize(b) != PB_OK)
        goto fail;
    seconds = (pb_now_seconds() - t0) / a->repeats;
    if (b->ops->download(b, host, out, q_bytes) != PB_OK) {
        seconds = -1.0;
        goto fail;
    }
    *out_host = host;
    host = NULL;
    goto done;
fail:
    fprintf(stderr, "bench_gpu_attention: %s, %s kernel: %s\n", sh->name, kernel, pb_last_error());
done:
    if (b) {
        b->ops->free(b, q);
        b->ops->free(b, out);
        b->ops->free(b, k);
        b->ops->free(b, v);
        pb_backend_destroy(b);
    }
    free(host);
    free(jobs);
    return seconds;
}

/* 4 * hd FLOP per (query, visible key) per head. */
static double causal_flops(const args *a, int n, int p0) {
    double keys = 0.0;
    for (int t = 0; t < n; t++)
        keys += (double)p0 + t + 1;
    return 4.0 * a->head_dim * a->heads * keys;
}

static double nmse(const float *got, const float *want, size_t n) {
    double num = 0.0, den = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
    }
    return den == 0.0 ? num : num / den;
}

int main(int argc, char **argv) {
    args a;
    if (!parse_args(argc, argv, &a))
        return usage();
    setvbuf(stdout, NULL, _IOLBF, 0);
    pb_cuda_device_info dev;
    const pb_status st = pb_cuda_device_query(a.device, &dev);
    if (st == PB_ERR_UNSUPPORTED) {
        printf("bench_gpu_attention: skipping: %s\n", pb_last_error());
        return 77;
    }
    if (st != PB_OK) {
        fprintf(stderr, "bench_gpu_attention: %s\n", pb_last_error());
        return 1;
    }
    printf("device      %s (sm_%d%d, %d SMs); fp32 peak taken as %.0f TFLOP/s\n", dev.name, dev.compute_major,
           dev.compute_minor, dev.multiprocessors, FP32_PEAK_TFLOPS);
    printf("heads       %d query, %d key-value, head_dim %d; %d timed calls each after one warm-up\n", a.heads,
           a.kv_heads, a.head_dim, a.repeats);

    /* Jobs with key positions as row offsets into k and v (run_shape turns
     * them into pointers): prefill jobs own consecutive rows; sweep jobs
     * share rows 0 .. prefix - 1 and own theirs after. */
    shape shapes[2] = {{.name = "prefill"}, {.name = "sweep"}};
    shapes[0].n_jobs = a.seqs;
    shapes[1].n_jobs = a.sweep_jobs;
    int rc = 1;
    for (int s = 0; s < 2; s++) {
        shapes[s].jobs = calloc((size_t)shapes[s].n_jobs, sizeof(pb_attention_job));
        if (!shapes[s].jobs) {
            fprintf(stderr, "bench_gpu_attention: out of host memory\n");
            goto done;
        }
    }
    for (int j = 0; j < a.seqs; j++) {
        pb_attention_job *job = &shapes[0].jobs[j];
        job->q_row = j * a.seq_len;
        job->n = a.seq_len;
        job->k_new = (const float *)(uintptr_t)job->q_row;
        shapes[0].flops += causal_flops(&a, a.seq_len, 0);
    }
    shapes[0].rows = a.seqs * a.seq_len;
    shapes[0].key_rows = (size_t)shapes[0].rows;
    int rows = 0;
    for (int j = 0; j < a.sweep_jobs; j++) {
        pb_attention_job *job = &shapes[1].jobs[j];
        job->q_row = rows;
        job->n = 1 + j % 64;
        job->p0 = a.prefix;
        job->k_prefix = (const float *)(uintptr_t)0;
        job->k_new = (const float *)(uintptr_t)(a.prefix + rows);
        rows += job->n;
        shapes[1].flops += causal_flops(&a, job->n, a.prefix);
    }
    shapes[1].rows = rows;
    shapes[1].key_rows = (size_t)a.prefix + rows;

    static const char *kernels[2] = {"rows", "tiled"};
    double seconds[2][2];
    double agreement[2];
    for (int s = 0; s < 2; s++) {
        float *outputs[2] = {NULL, NULL};
        printf("%-8s    %d jobs, %d queries, %s; %.1f GFLOP per call\n", shapes[s].name, shapes[s].n_jobs,
               shapes[s].rows, s == 0 ? "no prefix" : "1 .. 64 new queries after the shared prefix",
               shapes[s].flops * 1e-9);
        for (int kk = 0; kk < 2; kk++) {
            seconds[s][kk] = run_shape(&a, &shapes[s], kernels[kk], &outputs[kk]);
            if (seconds[s][kk] < 0.0) {
                free(outputs[0]);
                goto done;
            }
            const double tflops = shapes[s].flops / seconds[s][kk] * 1e-12;
            printf("  %-6s    %9.3f ms  %7.2f TFLOP/s  %5.1f%% of fp32 peak\n", kernels[kk], seconds[s][kk] * 1e3,
                   tflops, 100.0 * tflops / FP32_PEAK_TFLOPS);
        }
        agreement[s] = nmse(outputs[1], outputs[0], (size_t)shapes[s].rows * a.heads * a.head_dim);
        printf("  tiled / rows speed-up %.2fx; NMSE tiled vs rows %.3g\n", seconds[s][0] / seconds[s][1], agreement[s]);
        free(outputs[0]);
        free(outputs[1]);
    }
    printf("{\"bench\": \"gpu_attention\", \"heads\": %d, \"kv_heads\": %d, \"head_dim\": %d, \"repeats\": %d, "
           "\"fp32_peak_tflops\": %.1f",
           a.heads, a.kv_heads, a.head_dim, a.repeats, FP32_PEAK_TFLOPS);
    for (int s = 0; s < 2; s++) {
        printf(", \"%s\": {\"jobs\": %d, \"queries\": %d, \"gflop\": %.3f", shapes[s].name, shapes[s].n_jobs,
               shapes[s].rows, shapes[s].flops * 1e-9);
        for (int kk = 0; kk < 2; kk++) {
            const double tflops = shapes[s].flops / seconds[s][kk] * 1e-12;
            printf(", \"%s_ms\": %.4f, \"%s_tflops\": %.3f, \"%s_peak_fraction\": %.4f", kernels[kk],
                   seconds[s][kk] * 1e3, kernels[kk], tflops, kernels[kk], tflops / FP32_PEAK_TFLOPS);
        }
        printf(", \"tiled_speedup\": %.3f, \"nmse_tiled_vs_rows\": %.3g}", seconds[s][0] / seconds[s][1], agreement[s]);
    }
    printf("}\n");
    rc = 0;
done:
    for (int s = 0; s < 2; s++)
        free(shapes[s].jobs);
    return rc;
}
