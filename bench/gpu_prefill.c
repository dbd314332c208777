/* Prefill throughput of the CUDA engine beside its GEMM ceiling.
 *
 *   bench_gpu_prefill [--model-name llama3-8b[:LAYERS]] [--seqs 8] [--seq-len 1024] [--dtype bf16]
 *                     [--repeats 3] [--logits all|last] [--seed 1] [--device 0] [--fit-layers]
 *
 * Builds the named random model (pb_model_random: real shape, seeded
 * weights) on the GPU, then runs a batch of --seqs sequences of --seq-len
 * tokens through the executor in one pass (each projection one GEMM over
 * all seqs * seq_len packed tokens, a persistent KV cache per sequence) and
 * the unembedding: of every position with --logits all (the default, what
 * transformers computes unless given logits_to_keep), of each sequence's
 * last position with --logits last. After a warm-up pass, --repeats passes
 * are timed with the host clock around run + unembed + synchronise. Then
 * the same cuBLAS GEMMs alone at the same shapes (pb_cuda_gemm_ceiling)
 * are timed in the same run: the ceiling. Prints tokens/s, TFLOP/s of both,
 * their ratio and a last line of JSON ({"bench": "gpu_prefill", ...}) for
 * scripts/gpu-check.sh. scripts/bench_torch_prefill.py is the PyTorch side.
 *
 * --fit-layers cuts the layer count to what the card's free memory holds
 * (and says so) instead of failing. Exit 77 when there is no CUDA build or
 * no device; 1 on a failure; 2 on a usage error. */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend.h"
#include "backend/backend_cuda.h"
#include "util/clock.h"
#include "model/exec.h"
#include "util/internal.h"
#include "model/model.h"
#include "model/model_random.h"
#include "patchbay.h"

static const double GiB = 1024.0 * 1024.0 * 1024.0;

typedef struct args {
    const char *model_name;
    int seqs, seq_len, repeats, device, fit_layers, logits_all;
    unsigned long long seed;
    pb_dtype dtype;
} args;

static int usage(void) {
    fprintf(stderr, "usage: bench_gpu_prefill [--model-name llama3-8b[:LAYERS]] [--seqs N] [--seq-len T] "
                    "[--dtype bf16|f16|f32] [--repeats R] [--logits all|last] [--seed S] [--device D] "
                    "[--fit-layers]\n");
    return 2;
}

static int positive(const char *flag, const char *text, int *out) {
    char *end = NULL;
    long v = strtol(text, &end, 10);
    if (!*text || *end || v <= 0 || v > (1 << 24)) {
        fprintf(stderr, "bench_gpu_prefill: %s expects a positive integer, got '%s'\n", flag, text);
        return 0;
    }
    *out = (int)v;
    return 1;
}

static int parse_args(int argc, char **argv, args *a) {
    *a = (args){.model_name = "llama3-8b",
                .seqs = 8,
                .seq_len = 1024,
                .repeats = 3,
                .logits_all = 1,
                .seed = 1,
                .dtype = PB_DTYPE_BF16};
    for (int i = 1; i < argc; i++) {
        const char *flag = argv[i];
        if (strcmp(flag, "--fit-layers") == 0) {
            a->fit_layers = 1;
            continue;
        }
        if (strcmp(flag, "--help") == 0 || strcmp(flag, "-h") == 0 || i + 1 >= argc)
            return 0;
        const char *v = argv[++i];
        if (strcmp(flag, "--model-name") == 0)
            a->model_name = v;
        else if (strcmp(flag, "--seqs") == 0) {
            if (!positive(flag, v, &a->seqs))
                return 0;
        } else if (strcmp(flag, "--seq-len") == 0) {
            if (!positive(flag, v, &a->seq_len))
                return 0;
        } else if (strcmp(flag, "--repeats") == 0) {
            if (!positive(flag, v, &a->repeats))
                return 0;
        } else if (strcmp(flag, "--device") == 0) {
            a->device = atoi(v);
        } else if (strcmp(flag, "--seed") == 0) {
            a->seed = strtoull(v, NULL, 10);
        } else if (strcmp(flag, "--dtype") == 0) {
            if (pb_dtype_parse(v, &a->dtype) != PB_OK) {
                fprintf(stderr, "bench_gpu_prefill: %s\n", pb_last_error());
                return 0;
            }
        } else if (strcmp(flag, "--logits") == 0) {
            if (strcmp(v, "all") && strcmp(v, "last")) {
                fprintf(stderr, "bench_gpu_prefill: --logits expects all or last, got '%s'\n", v);
                return 0;
            }
            a->logits_all = strcmp(v, "all") == 0;
        } else {
            fprintf(stderr, "bench_gpu_prefill: unknown option '%s'\n", flag);
            return 0;
        }
    }
    if ((long long)a->seqs * a->seq_len > (1 << 24)) {
        fprintf(stderr, "bench_gpu_prefill: %d x %d tokens is too many\n", a->seqs, a->seq_len);
        return 0;
    }
    return 1;
}

/* Device bytes a run needs at this config: weights, executor workspace, KV
 * caches, logits, the backend's 16-bit input scratch and a margin for the
 * CUDA context and cuBLAS's workspace. */
static double bytes_needed(const pb_model_config *c, pb_dtype dtype, int seqs, int seq_len, int logits_all) {
    double d = c->d_model, qd = (double)c->n_heads * c->head_dim, kvd = (double)c->n_kv_heads * c->head_dim;
    double tokens = (double)seqs * seq_len, elem = dtype == PB_DTYPE_F32 ? 4.0 : 2.0;
    double per_layer = d * (qd + 2 * kvd) + qd * d + 3.0 * d * c->d_mlp;
    double weights = elem * ((c->tied_embeddings ? 1.0 : 2.0) * c->vocab_size * d + c->n_layers * per_layer);
    double workspace = (double)pb_exec_workspace_bytes(c, seqs * seq_len, seq_len);
    double kv = 2.0 * c->n_layers * tokens * kvd * sizeof(float);
    double logits = (logits_all ? tokens : seqs) * c->vocab_size * sizeof(float);
    double widest = c->d_mlp > qd ? c->d_mlp : qd;
    double scratch = tokens * (widest > d ? widest : d) * 2.0;
    return weights + workspace + kv + logits + scratch + 1.5 * GiB;
}

/* Minimal JSON string escaping for names and messages. */
static void print_json_string(const char *s) {
    putchar('"');
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            printf("\\%c", *s);
        else if ((unsigned char)*s < 0x20)
            printf("\\u%04x", (unsigned char)*s);
        else
            putchar(*s);
    }
    putchar('"');
}

typedef struct run_state {
    pb_model *model;
    pb_exec *exec;
    void *kv;          /* (seqs, 2, n_layers, seq_len, kv_dim) fp32, one per job */
    float *logits;     /* (unembed rows, vocab) */
    float *last_rows;  /* (seqs, d_model): each sequence's final residual (--logits last) */
    pb_exec_job *jobs; /* (seqs) */
    int32_t *ids;      /* (seqs * seq_len) host */
} run_state;

/* One prefill: all jobs through every layer, then the unembedding. */
static pb_status prefill(run_state *s, const args *a) {
    pb_model *m = s->model;
    pb_backend *b = m->backend;
    const pb_model_config *c = &m->cfg;
    PB_TRY(pb_exec_run(s->exec, s->jobs, a->seqs, 2 * c->n_layers, NULL, NULL));
    if (a->logits_all) {
        /* every job starts at step 0, so the packed rows are job 0's onwards */
        PB_TRY(pb_exec_unembed(s->exec, s->logits, pb_exec_output(s->exec, 0), a->seqs * a->seq_len, m->output.data,
                               m->output.dtype, c->vocab_size));
    } else {
        for (int j = 0; j < a->seqs; j++) {
            const float *last = pb_exec_output(s->exec, j) + (size_t)(a->seq_len - 1) * c->d_model;
            PB_TRY(b->ops->copy(b, s->last_rows + (size_t)j * c->d_model, last, sizeof(float) * c->d_model));
        }
        PB_TRY(
            pb_exec_unembed(s->exec, s->logits, s->last_rows, a->seqs, m->output.data, m->output.dtype, c->vocab_size));
    }
    return b->ops->synchronize(b);
}

static void release(run_state *s) {
    if (!s->model)
        return;
    pb_backend *b = s->model->backend;
    pb_exec_free(s->exec);
    b->ops->free(b, s->kv);
    b->ops->free(b, s->logits);
    b->ops->free(b, s->last_rows);
    s->exec = NULL;
    s->kv = s->logits = s->last_rows = NULL;
}

int main(int argc, char **argv) {
    args a;
    if (!parse_args(argc, argv, &a))
        return usage();
    setvbuf(stdout, NULL, _IOLBF, 0); /* a timed-out run still leaves its lines in the log */

    pb_cuda_device_info dev;
    pb_status st = pb_cuda_device_query(a.device, &dev);
    if (st == PB_ERR_UNSUPPORTED) {
        printf("bench_gpu_prefill: skipping: %s\n", pb_last_error());
        return 77;
    }
    if (st != PB_OK) {
        fprintf(stderr, "bench_gpu_prefill: %s\n", pb_last_error());
        return 1;
    }
    printf("device           %s (sm_%d%d, %d SMs), %.1f GiB free of %.1f GiB\n", dev.name, dev.compute_major,
           dev.compute_minor, dev.multiprocessors, dev.free_bytes / GiB, dev.total_bytes / GiB);

    /* The layer count: as asked, or (--fit-layers) cut to what fits. */
    pb_model_config cfg;
    if (pb_random_config(&cfg, a.model_name) != PB_OK) {
        fprintf(stderr, "bench_gpu_prefill: %s\n", pb_last_error());
        return 2;
    }
    if (a.seq_len > cfg.context_length) {
        fprintf(stderr, "bench_gpu_prefill: --seq-len %d exceeds the context length %d\n", a.seq_len,
                cfg.context_length);
        return 2;
    }
    char name[160];
    snprintf(name, sizeof name, "%s", a.model_name);
    int asked_layers = cfg.n_layers;
    double need = bytes_needed(&cfg, a.dtype, a.seqs, a.seq_len, a.logits_all);
    while (need > (double)dev.free_bytes && a.fit_layers && cfg.n_layers > 1) {
        cfg.n_layers--;
        need = bytes_needed(&cfg, a.dtype, a.seqs, a.seq_len, a.logits_all);
    }
    if (need > (double)dev.free_bytes) {
        fprintf(stderr,
                "bench_gpu_prefill: %s at %d x %d tokens needs about %.1f GiB, %.1f GiB are free: try "
                "--fit-layers, fewer layers (NAME:LAYERS), --logits last or fewer tokens\n",
                a.model_name, a.seqs, a.seq_len, need / GiB, dev.free_bytes / GiB);
        return 1;
    }
    if (cfg.n_layers != asked_layers) {
        snprintf(name, sizeof name, "%.*s:%d", (int)strcspn(a.model_name, ":"), a.model_name, cfg.n_layers);
        printf("fit              %d of %d layers fit the free memory: running %s\n", cfg.n_layers, asked_layers, name);
    }
    printf("memory estimate  %.1f GiB of %.1f GiB free\n", need / GiB, dev.free_bytes / GiB);

    pb_load_options opts = {.backend = PB_BACKEND_CUDA, .dtype = a.dtype, .device = a.device};
    run_state s = {0};
    double t_load = pb_now_seconds();
    if (pb_model_random(&s.model, name, a.seed, &opts) != PB_OK) {
        fprintf(stderr, "bench_gpu_prefill: loading %s: %s\n", name, pb_last_error());
        return 1;
    }
    t_load = pb_now_seconds() - t_load;
    pb_model *m = s.model;
    pb_backend *b = m->backend;
    const pb_model_config *c = &m->cfg;
    printf("model            %s: %d layers, d_model %d, %d heads (%d kv), d_mlp %d, vocab %d, %s weights "
           "%.2f GiB\n",
           pb_model_get_source(m), c->n_layers, c->d_model, c->n_heads, c->n_kv_heads, c->d_mlp, c->vocab_size,
           pb_dtype_name(a.dtype), pb_model_weight_bytes(m) / GiB);
    printf("load             %.1f s (host generation + conversion + upload; not timed below)\n", t_load);

    int tokens = a.seqs * a.seq_len, unembed_rows = a.logits_all ? tokens : a.seqs;
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    size_t kv_per_job = (size_t)c->n_layers * a.seq_len * kvd; /* floats in one of K or V */
    int rc = 1;
    s.ids = malloc(sizeof(int32_t) * (size_t)tokens);
    s.jobs = calloc((size_t)a.seqs, sizeof *s.jobs);
    float *check = malloc(sizeof(float) * (size_t)c->vocab_size);
    if (!s.ids || !s.jobs || !check) {
        fprintf(stderr, "bench_gpu_prefill: out of host memory\n");
        goto done;
    }
    uint32_t lcg = 12345u;
    for (int t = 0; t < tokens; t++) {
        lcg = lcg * 1664525u + 1013904223u;
        s.ids[t] = (int32_t)(lcg % (uint32_t)c->vocab_size);
    }
    if (pb_exec_create(&s.exec, m, tokens, a.seq_len) != PB_OK ||
        b->ops->alloc(b, &s.kv, 2 * kv_per_job * a.seqs * sizeof(float)) != PB_OK ||
        b->ops->alloc(b, (void **)&s.logits, sizeof(float) * (size_t)unembed_rows * c->vocab_size) != PB_OK ||
        (!a.logits_all && b->ops->alloc(b, (void **)&s.last_rows, sizeof(float) * (size_t)a.seqs * d) != PB_OK)) {
        fprintf(stderr, "bench_gpu_prefill: %s\n", pb_last_error());
        goto done;
    }
    for (int j = 0; j < a.seqs; j++) {
        float *k_cache = (float *)s.kv + (size_t)j * 2 * kv_per_job;
        s.jobs[j] = (pb_exec_job){.T = a.seq_len,
                                  .p0 = 0,
                                  .start_step = 0,
                                  .ids = s.ids + (size_t)j * a.seq_len,
                                  .k_cache = k_cache,
                                  .v_cache = k_cache + kv_per_job,
                                  .kv_capacity = a.seq_len};
    }

    /* FLOPs of one prefill, counted like bench/forward.c and the executor:
     * projections, attention (QK^T and PV over each sequence's causal
     * triangle) and the unembedding of the rows asked for. */
    int L = c->n_layers;
    int shape_n[] = {qd, kvd, d, c->d_mlp, d}, shape_k[] = {d, d, qd, d, c->d_mlp};
    int shape_count[] = {L, 2 * L, L, 2 * L, L};
    int n_shapes = sizeof shape_n / sizeof shape_n[0];
    double layer_gemm_flops = 0.0;
    for (int i = 0; i < n_shapes; i++)
        layer_gemm_flops += 2.0 * tokens * shape_n[i] * (double)shape_k[i] * shape_count[i];
    double unembed_flops = 2.0 * unembed_rows * (double)c->vocab_size * d;
    double attn_flops = 4.0 * L * (double)qd * a.seqs * (double)a.seq_len * (a.seq_len + 1) / 2.0;
    double gemm_flops = layer_gemm_flops + unembed_flops, flops = gemm_flops + attn_flops;

    printf("batch            %d sequences x %d tokens = %d tokens, no padding; logits of %s (%d rows x %d, "
           "fp32)\n",
           a.seqs, a.seq_len, tokens, a.logits_all ? "every position" : "each sequence's last position", unembed_rows,
           c->vocab_size);
    fflush(stdout);
    double t0 = pb_now_seconds();
    if (prefill(&s, &a) != PB_OK) { /* warm-up: cuBLAS heuristics, the input scratch grows, clocks ramp */
        fprintf(stderr, "bench_gpu_prefill: warm-up prefill: %s\n", pb_last_error());
        goto done;
    }
    printf("warm-up          %.3f s\n", pb_now_seconds() - t0);
    fflush(stdout);
    double flops_before = pb_exec_flops(s.exec), best = INFINITY, total = 0.0;
    for (int r = 0; r < a.repeats; r++) {
        double p0 = pb_now_seconds();
        if (prefill(&s, &a) != PB_OK) {
            fprintf(stderr, "bench_gpu_prefill: prefill: %s\n", pb_last_error());
            goto done;
        }
        double dt = pb_now_seconds() - p0;
        total += dt;
        best = dt < best ? dt : best;
    }
    double engine = total / a.repeats;
    double counted = (pb_exec_flops(s.exec) - flops_before) / a.repeats;
    if (fabs(counted - flops) > 1e-6 * flops)
        printf("note             the executor counted %.4g FLOP per prefill, this bench %.4g\n", counted, flops);

    /* A sanity look at the output: the last row's logits are finite. */
    const float *last_logits = s.logits + (size_t)(unembed_rows - 1) * c->vocab_size;
    if (b->ops->download(b, check, last_logits, sizeof(float) * (size_t)c->vocab_size) != PB_OK) {
        fprintf(stderr, "bench_gpu_prefill: %s\n", pb_last_error());
        goto done;
    }
    double max_abs = 0.0;
    for (int i = 0; i < c->vocab_size; i++) {
        if (!isfinite(check[i])) {
            fprintf(stderr, "bench_gpu_prefill: logit %d of the last row is %g\n", i, (double)check[i]);
            goto done;
        }
        max_abs = fabs(check[i]) > max_abs ? fabs(check[i]) : max_abs;
    }

    /* The ceiling: the same GEMMs alone. The forward's buffers go first so
     * the ceiling's own fit beside the weights. */
    release(&s);
    double layer_gemm_s = 0.0, unembed_gemm_s = 0.0;
    int unembed_n = c->vocab_size, unembed_k = d, one = 1;
    if (pb_cuda_gemm_ceiling(a.device, a.dtype, shape_n, shape_k, shape_count, n_shapes, tokens, a.repeats,
                             &layer_gemm_s) != PB_OK ||
        pb_cuda_gemm_ceiling(a.device, a.dtype, &unembed_n, &unembed_k, &one, 1, unembed_rows, a.repeats,
                             &unembed_gemm_s) != PB_OK) {
        fprintf(stderr, "bench_gpu_prefill: gemm ceiling: %s\n", pb_last_error());
        goto done;
    }
    double gemm_s = layer_gemm_s + unembed_gemm_s;

    double engine_tflops = flops / engine * 1e-12, ceiling_tflops = gemm_flops / gemm_s * 1e-12;
    double ratio = engine_tflops / ceiling_tflops, gemm_fraction = gemm_s / engine;
    printf("engine prefill   %.1f ms (best %.1f ms)  %.0f tokens/s  %.1f TFLOP/s  (%.2f TFLOP per prefill: "
           "%.2f GEMM + %.2f attention)\n",
           engine * 1e3, best * 1e3, tokens / engine, engine_tflops, flops * 1e-12, gemm_flops * 1e-12,
           attn_flops * 1e-12);
    printf("cuBLAS ceiling   %.1f ms  %.1f TFLOP/s  (cublasGemmEx %s in, fp32 out, COMPUTE_32F; same shapes: "
           "%.1f ms layers + %.1f ms unembedding)\n",
           gemm_s * 1e3, ceiling_tflops, pb_dtype_name(a.dtype), layer_gemm_s * 1e3, unembed_gemm_s * 1e3);
    printf("ratio            engine TFLOP/s / ceiling TFLOP/s = %.3f  (target >= 0.60); GEMM-alone time / "
           "prefill time = %.3f\n",
           ratio, gemm_fraction);
    printf("check            last row's logits finite, max |logit| %.3g\n", max_abs);
    printf("{\"bench\": \"gpu_prefill\", \"device\": ");
    print_json_string(dev.name);
    printf(", \"model\": ");
    print_json_string(pb_model_get_source(m));
    printf(", \"layers\": %d, \"layers_asked\": %d, \"seqs\": %d, \"seq_len\": %d, \"tokens\": %d, "
           "\"dtype\": \"%s\", \"logits\": \"%s\", \"repeats\": %d, \"load_s\": %.3f, \"prefill_s\": %.6f, "
           "\"prefill_best_s\": %.6f, \"tokens_per_s\": %.1f, \"tflop_per_prefill\": %.4f, "
           "\"gemm_tflop_per_prefill\": %.4f, \"tflops\": %.2f, \"ceiling_s\": %.6f, \"ceiling_tflops\": %.2f, "
           "\"ratio_vs_ceiling\": %.4f, \"gemm_time_fraction\": %.4f}\n",
           c->n_layers, asked_layers, a.seqs, a.seq_len, tokens, pb_dtype_name(a.dtype), a.logits_all ? "all" : "last",
           a.repeats, t_load, engine, best, tokens / engine, flops * 1e-12, gemm_flops * 1e-12, engine_tflops, gemm_s,
           ceiling_tflops, ratio, gemm_fraction);
    rc = 0;
done:
    release(&s);
    free(check);
    free(s.ids);
    free(s.jobs);
    pb_model_free(s.model);
    return rc;
}
