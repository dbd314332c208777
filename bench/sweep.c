/* Throughput of the batched patching engine beside its ceiling.
 *
 *   bench_sweep (MODEL | --random-model NAME[:LAYERS[:TYPE]]) (SPEC.json | --default-sweep T [--pairs N])
 *               [--all-rows] [--backend cpu|cuda] [--dtype f32|bf16|f16|file] [--max-memory SIZE]
 *               [--weights resident|stream|auto] [--weight-memory SIZE] [--full-layers N] [--vs-atp]
 *               [--flops-only]
 *
 * Runs the sweep once (after a warm-up forward) and prints rows/s, the
 * FLOPs the engine actually executed and their rate, the FLOPs one full
 * forward per row would need, and the GEMM alone at the engine's own shapes
 * (the average packed batch height times each projection) measured in the
 * same run: OpenBLAS sgemm on the CPU, the CUDA backend's own cuBLAS call
 * (pb_cuda_gemm_ceiling) on the GPU. --all-rows also runs rows whose effect
 * is exactly zero by construction, to show what the skips save. --vs-atp
 * then runs attribution patching ("method": "atp") and AtP* ("atp*", both
 * corrections) on the same spec and prints their times beside the exact
 * sweep's and the ratios (the "every row forced" comparison takes
 * --all-rows too), and the same ratios from FLOP counts: the exact sweep's
 * as planned (pb_sweep_plan), the estimates' from a model of their passes
 * (pb_atp_flops, atp.h). --flops-only prints those counts and stops: the model
 * is loaded shape-only, so a llama3-8b or 70B shape costs nothing to count.
 * With streamed weights it also prints the layers the sweep read and the
 * bytes they moved, the rate that makes over the sweep's wall time, the
 * host-to-device copy rate from pinned memory (pb_cuda_copy_ceiling, on
 * the GPU), and an extrapolation to the whole model per layer
 * (--full-layers N; a random model's named shape by default): the same
 * rows through N layers at the measured seconds per layer, beside the time
 * to stream that many layer reads at the copy rate. A random model stored in a type
 * (llama3-70b:16:q8_0, :bf16) is held in host memory and pinned there:
 * the slice of a model too large to hold whole, streamed as a host would
 * stream the whole (scripts/gpu-check.sh runs it on a GPU).
 * --default-sweep T builds the project's default sweep on one pair (--pairs
 * N: N pairs) of T seeded random token ids differing at positions T/3 and
 * T/2: resid_pre, attn_out, mlp_out at every layer and position, z for
 * every head at the last position, logit difference of two tokens at the
 * last position.
 * bench/sweep.sh runs this beside the PyTorch one-forward-per-site loop on
 * the CPU; scripts/gpu-check.sh on a GPU. Exit 77 when --backend cuda has
 * no device. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/backend_cuda.h"
#include "cli/cli_model.h"
#include "cli/options.h"
#include "util/clock.h"
#include "util/outdir.h"
#include "cli/progress.h"
#include "model/exec.h"
#include "model/model.h"
#include "model/model_random.h"
#include "model/stream.h"
#include "attribution/atp.h"
#include "patching/sweep_access.h"
#include "patching/sweep_spec.h"

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
        double t0 = pb_now_seconds();
        for (int r = 0; r < reps; r++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, n, k, 1.0f, x, k, w, k, 0.0f, out, n);
        seconds += (pb_now_seconds() - t0) / reps * shapes[i][2];
        flops += 2.0 * M * n * k * shapes[i][2];
    }
    free(x);
    free(w);
    free(out);
    return flops / seconds * 1e-9;
}

/* The GPU's GEMM rate at the engine's shapes, TFLOP/s (0 on failure). */
static double gpu_ceiling(const pb_model_config *c, int device, pb_dtype dtype, int M) {
    int d = c->d_model, qd = c->n_heads * c->head_dim, kvd = c->n_kv_heads * c->head_dim;
    int n[5] = {qd, kvd, d, c->d_mlp, d}, k[5] = {d, d, qd, d, c->d_mlp}, count[5] = {1, 2, 1, 2, 1};
    double seconds = 0, flops = 0;
    for (int i = 0; i < 5; i++)
        flops += 2.0 * M * n[i] * k[i] * count[i];
    if (pb_cuda_gemm_ceiling(device, dtype, n, k, count, 5, M, 20, &seconds) != PB_OK || seconds <= 0) {
        fprintf(stderr, "bench_sweep: GEMM ceiling: %s\n", pb_last_error());
        return 0;
    }
    return flops / seconds * 1e-12;
}

static uint64_t splitmix(uint64_t *state) {
    uint64_t x = (*state += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

/* Appends pair (T ids, and the same with positions T/3 and T/2 changed) to spec at *n. */
static void append_pair(char *spec, size_t cap, size_t *n, const int *ids, int T, int vocab, int first) {
    *n += (size_t)snprintf(spec + *n, cap - *n, "%s{\"clean\": {\"ids\": [", first ? "" : ", ");
    for (int t = 0; t < T; t++)
        *n += (size_t)snprintf(spec + *n, cap - *n, "%s%d", t ? ", " : "", ids[t]);
    *n += (size_t)snprintf(spec + *n, cap - *n, "]}, \"corrupted\": {\"ids\": [");
    for (int t = 0; t < T; t++) {
        int id = t == T / 3 || t == T / 2 ? (ids[t] + 101) % vocab : ids[t];
        *n += (size_t)snprintf(spec + *n, cap - *n, "%s%d", t ? ", " : "", id);
    }
    *n += (size_t)snprintf(spec + *n, cap - *n, "]}}");
}

/* The default sweep on n_pairs pairs of T random ids (see the header). */
static char *default_sweep(int T, int n_pairs, int vocab) {
    size_t cap = (size_t)n_pairs * ((size_t)T * 32 + 64) + 1024;
    char *spec = malloc(cap);
    int *ids = malloc(sizeof(int) * (size_t)T);
    if (!spec || !ids) {
        free(spec);
        free(ids);
        return NULL;
    }
    uint64_t rng = 2024;
    size_t n = (size_t)snprintf(spec, cap, "{\"mode\": \"denoising\", \"pairs\": [");
    for (int p = 0; p < n_pairs; p++) {
        for (int t = 0; t < T; t++)
            ids[t] = (int)(splitmix(&rng) % (uint64_t)vocab);
        append_pair(spec, cap, &n, ids, T, vocab, p == 0);
    }
    int pos = (int)(splitmix(&rng) % (uint64_t)vocab), neg = (int)(splitmix(&rng) % (uint64_t)vocab);
    snprintf(spec + n, cap - n,
             "], \"sites\": [{\"component\": \"resid_pre\", \"layers\": \"all\", \"positions\": \"each\"},"
             " {\"component\": \"attn_out\", \"layers\": \"all\", \"positions\": \"each\"},"
             " {\"component\": \"mlp_out\", \"layers\": \"all\", \"positions\": \"each\"},"
             " {\"component\": \"z\", \"layers\": \"all\", \"heads\": \"all\", \"positions\": \"last\"}],"
             " \"metric\": {\"kind\": \"logit_diff\", \"positive\": [%d], \"negative\": [%d]}}",
             pos, neg);
    free(ids);
    return spec;
}

typedef struct bench_args {
    pb_cli_model model;
    const char *spec_path;
    int all_rows, default_T, default_pairs, full_layers, vs_atp, flops_only;
    size_t max_memory;
} bench_args;

/* Positional MODEL and SPEC.json among the flags: 1, or 0 after printing why. */
static int parse_args(int argc, char **argv, bench_args *b) {
    memset(b, 0, sizeof *b);
    pb_cli_option model_options[PB_CLI_MODEL_OPTIONS + 1];
    pb_cli_model_table(&b->model, model_options);
    const pb_cli_parser parser = {
        .prefix = "bench_sweep", .command_prefix = "patchbay bench_sweep", .missing_value = "", .unknown = ""};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *next = i + 1 < argc ? argv[i + 1] : NULL;
        int taken = next ? pb_cli_parse_one(&parser, model_options, a, next) : 0;
        if (taken < 0)
            return 0;
        if (taken) {
            i++;
        } else if (strcmp(a, "--all-rows") == 0) {
            b->all_rows = 1;
        } else if (strcmp(a, "--vs-atp") == 0) {
            b->vs_atp = 1;
        } else if (strcmp(a, "--flops-only") == 0) {
            b->flops_only = b->vs_atp = 1;
            b->model.load.shape_only = 1;
        } else if (strcmp(a, "--default-sweep") == 0 && next) {
            b->default_T = atoi(next);
            i++;
        } else if (strcmp(a, "--pairs") == 0 && next) {
            b->default_pairs = atoi(next);
            i++;
        } else if (strcmp(a, "--full-layers") == 0 && next) {
            b->full_layers = atoi(next);
            i++;
        } else if (strcmp(a, "--max-memory") == 0 && next) {
            if (pb_parse_size(next, &b->max_memory) != PB_OK) {
                fprintf(stderr, "bench_sweep: --max-memory: %s\n", pb_last_error());
                return 0;
            }
            i++;
        } else if (a[0] != '-' && !b->model.path && !b->model.random_name) {
            b->model.path = a;
        } else if (a[0] != '-' && !b->spec_path) {
            b->spec_path = a;
        } else {
            fprintf(stderr, "bench_sweep: unknown argument '%s'\n", a);
            return 0;
        }
    }
    if (!pb_cli_model_check(&b->model, "bench_sweep") || !!b->spec_path == (b->default_T > 0) || b->default_pairs < 0 ||
        (b->default_pairs > 0 && b->default_T <= 0)) {
        fprintf(
            stderr,
            "usage: bench_sweep (MODEL | --random-model NAME[:LAYERS[:TYPE]]) (SPEC.json | --default-sweep T [--pairs N])\n"
            "                   [--all-rows] [--backend cpu|cuda] [--dtype f32|bf16|f16|file] [--max-memory SIZE]\n"
            "                   [--weights resident|stream|auto] [--weight-memory SIZE] [--full-layers N]\n"
            "                   [--vs-atp] [--flops-only]\n");
        return 0;
    }
    return 1;
}

static void print_device(const pb_model *m, const pb_load_options *load) {
    pb_cuda_device_info info;
    if (pb_cuda_device_query(load->device, &info) == PB_OK)
        printf("device            %s (sm_%d%d, %d SMs), %.1f of %.1f GiB free after loading %.2f GiB of %s "
               "weights\n",
               info.name, info.compute_major, info.compute_minor, info.multiprocessors,
               (double)info.free_bytes / (1u << 30), (double)info.total_bytes / (1u << 30),
               (double)pb_model_weight_bytes(m) / (1u << 30), pb_dtype_name(load->dtype));
}

/* The engine's figures beside the GEMM ceiling: text, one JSON line and a RESULT line. */
static void print_results(const pb_model *m, const pb_sweep *s, const pb_load_options *load, double seconds) {
    int gpu = load->backend == PB_BACKEND_CUDA;
    pb_sweep_summary sum;
    pb_sweep_get_summary(s, &sum);
    int avg_M = pb_sweep_batch_count(s) ? (int)(pb_sweep_tokens_packed(s) / pb_sweep_batch_count(s)) : 1;
    /* --dtype file: quantised matrices are decoded to fp32 for cublasSgemm */
    pb_dtype gemm_dtype = load->dtype == PB_DTYPE_FILE ? PB_DTYPE_F32 : load->dtype;
    double ceiling = gpu ? gpu_ceiling(pb_model_get_config(m), load->device, gemm_dtype, avg_M > 0 ? avg_M : 1) * 1e3
                         : sgemm_ceiling(pb_model_get_config(m), avg_M > 0 ? avg_M : 1);
    double gflops = sum.flops_executed / seconds * 1e-9;
    printf("model             %s on %s, %s weights, T = %d, %d pair%s\n", pb_model_get_source(m),
           pb_backend_name(load->backend), pb_dtype_name(load->dtype), pb_sweep_spec_of(s)->pairs[0].base.T,
           pb_sweep_spec_of(s)->n_pairs, pb_sweep_spec_of(s)->n_pairs == 1 ? "" : "s");
    printf("weights           %.1f MiB in memory (%s)\n", (double)pb_model_weight_bytes(m) / (1 << 20),
           pb_dtype_name(load->dtype));
    printf("engine sweep      %lld rows (%lld executed, %lld exactly zero by construction) in %.3f s\n",
           (long long)sum.n_rows, (long long)sum.n_rows_executed, (long long)(sum.n_rows - sum.n_rows_executed),
           seconds);
    printf("engine rows/s     %.1f (all rows)  %.1f (executed rows)\n", sum.n_rows / seconds,
           sum.n_rows_executed / seconds);
    printf("engine batches    %lld, %.1f packed tokens each\n", (long long)pb_sweep_batch_count(s),
           pb_sweep_batch_count(s) ? (double)pb_sweep_tokens_packed(s) / pb_sweep_batch_count(s) : 0.0);
    printf("engine FLOPs      %.2f GFLOP executed (naive one-forward-per-row: %.2f GFLOP, %.1fx more)\n",
           sum.flops_executed * 1e-9, sum.flops_naive * 1e-9, sum.flops_naive / sum.flops_executed);
    printf("engine rate       %.2f GFLOP/s (wall time incl. caches and metrics)\n", gflops);
    printf("%s ceiling     %.2f GFLOP/s at M = %d and the model's projection shapes\n", gpu ? "cuBLAS" : "sgemm",
           ceiling, avg_M);
    printf("ratio             engine / %s = %.2f\n", gpu ? "cuBLAS GEMM" : "sgemm",
           ceiling > 0 ? gflops / ceiling : 0.0);
    printf("{\"bench\": \"%s\", \"model\": \"%s\", \"backend\": \"%s\", \"dtype\": \"%s\", \"T\": %d, "
           "\"pairs\": %d, \"rows\": %lld, \"rows_executed\": %lld, \"seconds\": %.4f, \"rows_per_s\": %.3f, "
           "\"tflops_executed\": %.6f, \"engine_tflops\": %.4f, \"ceiling_tflops\": %.4f, \"ratio_vs_ceiling\": %.4f, "
           "\"tflops_naive\": %.6f, \"naive_over_executed\": %.2f, \"avg_batch_tokens\": %d}\n",
           gpu ? "gpu_sweep" : "sweep", pb_model_get_source(m), pb_backend_name(load->backend),
           pb_dtype_name(load->dtype), pb_sweep_spec_of(s)->pairs[0].base.T, pb_sweep_spec_of(s)->n_pairs,
           (long long)sum.n_rows, (long long)sum.n_rows_executed, seconds, sum.n_rows / seconds,
           sum.flops_executed * 1e-12, gflops * 1e-3, ceiling * 1e-3, ceiling > 0 ? gflops / ceiling : 0.0,
           sum.flops_naive * 1e-12, sum.flops_executed > 0 ? sum.flops_naive / sum.flops_executed : 0.0, avg_M);
    printf("RESULT engine_rows_per_s=%.3f engine_seconds=%.4f rows=%lld engine_tflops=%.4f ceiling_tflops=%.4f "
           "naive_over_executed=%.2f\n",
           sum.n_rows / seconds, seconds, (long long)sum.n_rows, gflops * 1e-3, ceiling * 1e-3,
           sum.flops_executed > 0 ? sum.flops_naive / sum.flops_executed : 0.0);
}

/* The whole model's layer count: --full-layers, else a random model's
 * named shape, else the model's own. */
static int full_layer_count(const bench_args *b, const pb_model *m) {
    pb_model_config full;
    char name[64];
    if (b->full_layers > 0)
        return b->full_layers;
    if (b->model.random_name) {
        snprintf(name, sizeof name, "%.*s", (int)strcspn(b->model.random_name, ":"), b->model.random_name);
        if (pb_random_config(&full, name) == PB_OK)
            return full.n_layers;
    }
    return pb_model_get_config(m)->n_layers;
}

/* Streamed weights: what the sweep read (layers and bytes since `before`),
 * the copy rate on the GPU, and the whole model extrapolated per layer:
 * the same rows through `full` layers instead of the slice's. */
static void print_stream(const pb_model *m, const bench_args *b, double seconds, long long layers_before,
                         double bytes_before) {
    long long layers;
    double bytes;
    pb_stream_counters(m->stream, &layers, &bytes);
    layers -= layers_before;
    bytes -= bytes_before;
    double link = 0.0;
    if (b->model.load.backend == PB_BACKEND_CUDA &&
        pb_cuda_copy_ceiling(b->model.load.device, (size_t)256 << 20, 10, &link) != PB_OK)
        fprintf(stderr, "bench_sweep: copy ceiling: %s\n", pb_last_error());
    int n = pb_model_get_config(m)->n_layers, full = full_layer_count(b, m);
    double scale = (double)full / n, per_layer = layers > 0 ? bytes / (double)layers : 0.0;
    printf("streamed          %lld layer reads in the sweep%s, %.2f GiB (%.1f MiB a layer), %.2f GB/s over its wall "
           "time\n",
           layers, layers ? "" : " (every layer stayed in its slot)", bytes / (1u << 30), per_layer / (1 << 20),
           bytes / seconds * 1e-9);
    if (link > 0)
        printf("link              %.2f GB/s host-to-device from pinned memory (measured); the sweep's reads alone: "
               "%.3f s\n",
               link * 1e-9, bytes / link);
    printf("full model        the same rows through %d layers instead of %d: ~%.2f s (%.4f s a layer)", full, n,
           seconds * scale, seconds / n);
    if (link > 0)
        printf(", of which streaming needs at least %.2f s", bytes * scale / link);
    printf("\n");
    printf("{\"bench\": \"stream\", \"layers\": %d, \"layers_read\": %lld, \"bytes_streamed\": %.0f, "
           "\"stream_gbs\": %.4f, \"link_gbs\": %.4f, \"layer_bytes\": %.0f, \"seconds\": %.4f, "
           "\"full_layers\": %d, \"full_seconds\": %.4f, \"full_link_seconds\": %.4f}\n",
           n, layers, bytes, bytes / seconds * 1e-9, link * 1e-9, per_layer, seconds, full, seconds * scale,
           link > 0 ? bytes * scale / link : 0.0);
}

/* The same spec estimated by attribution patching: its seconds beside the
 * exact sweep's. */

/* spec with "method": method first (the caller frees), or NULL. */
static char *with_method(const char *spec, const char *method) {
    size_t n = strlen(spec);
    char *out = malloc(n + 32);
    if (out && spec[0] == '{')
        snprintf(out, n + 32, "{\"method\": \"%s\", %s", method, spec + 1);
    else if (out)
        out[0] = 0;
    return out;
}

/* The FLOP-count ratios (the exact sweep as planned over each estimate)
 * and each estimate's memory at its peak (pb_atp_peak_bytes). */
static int print_flop_ratios(pb_sweep *s, pb_model *m, const char *spec, const pb_sweep_options *o) {
    const pb_sweep_spec *parsed = pb_sweep_spec_of(s);
    int T = parsed->pairs[0].base.T;
    pb_plan plan;
    pb_plan_options unbounded = {.device_memory = (size_t)1 << 50}; /* FLOPs only: any size counts */
    if (pb_sweep_plan(s, &unbounded, &plan) != PB_OK) {
        fprintf(stderr, "bench_sweep: plan: %s\n", pb_last_error());
        return 1;
    }
    double atp = parsed->n_pairs * pb_atp_flops(&m->cfg, T, 0), star = parsed->n_pairs * pb_atp_flops(&m->cfg, T, 1);
    uint64_t peak[2] = {0, 0}, host[2] = {0, 0};
    for (int i = 0; i < 2; i++) {
        char *text = with_method(spec, i ? "atp*" : "atp");
        pb_sweep *e = NULL;
        if (!text || pb_sweep_create(&e, m, text, NULL, o) != PB_OK ||
            pb_atp_peak_bytes(e, T, &peak[i], &host[i]) != PB_OK) {
            fprintf(stderr, "bench_sweep: estimate memory: %s\n", pb_last_error());
            free(text);
            return 1;
        }
        pb_sweep_free(e);
        free(text);
    }
    printf("flop counts       exact %.3g (planned, %lld rows), atp %.3g, atp* %.3g: exact / atp = %.1fx, "
           "exact / atp* = %.1fx\n",
           plan.flops, (long long)plan.rows, atp, star, plan.flops / atp, plan.flops / star);
    printf("estimate memory   atp %.1f MiB, atp* %.1f MiB at the peak beside the weights (T = %d, %s); of it the "
           "captures and logits, host memory on a device: %.1f / %.1f MiB\n",
           (double)peak[0] / (1 << 20), (double)peak[1] / (1 << 20), T, pb_backend_name(m->backend_kind),
           (double)host[0] / (1 << 20), (double)host[1] / (1 << 20));
    printf("{\"bench\": \"atp_flops\", \"layers\": %d, \"T\": %d, \"exact_flops\": %.4g, \"atp_flops\": %.4g, "
           "\"atp_star_flops\": %.4g, \"exact_over_atp\": %.2f, \"exact_over_atp_star\": %.2f, "
           "\"atp_peak_bytes\": %llu, \"atp_star_peak_bytes\": %llu, \"atp_host_bytes\": %llu, "
           "\"atp_star_host_bytes\": %llu}\n",
           m->cfg.n_layers, T, plan.flops, atp, star, plan.flops / atp, plan.flops / star, (unsigned long long)peak[0],
           (unsigned long long)peak[1], (unsigned long long)host[0], (unsigned long long)host[1]);
    return 0;
}

/* The spec run as method (atp, atp*) beside the exact sweep's seconds. */
static int run_atp(pb_model *m, const char *spec, const pb_sweep_options *o, double exact_seconds, const char *method) {
    char *atp = with_method(spec, method);
    if (!atp || !atp[0]) {
        free(atp);
        return 1;
    }
    pb_sweep *s;
    double t0 = pb_now_seconds();
    if (pb_sweep_create(&s, m, atp, NULL, o) != PB_OK || pb_sweep_run(s) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s: %s\n", method, pb_last_error());
        free(atp);
        return 1;
    }
    double seconds = pb_now_seconds() - t0;
    printf("%-4s sweep         %lld rows estimated in %.3f s: exact / %s = %.1fx\n", method,
           (long long)pb_sweep_row_count(s), seconds, method, exact_seconds / seconds);
    printf("{\"bench\": \"%s\", \"rows\": %lld, \"seconds\": %.4f, \"exact_seconds\": %.4f, "
           "\"exact_over_estimate\": %.2f}\n",
           method, (long long)pb_sweep_row_count(s), seconds, exact_seconds, exact_seconds / seconds);
    pb_sweep_free(s);
    free(atp);
    return 0;
}

int main(int argc, char **argv) {
    bench_args b;
    if (!parse_args(argc, argv, &b))
        return 2;
    pb_model *m;
    pb_status loaded = pb_cli_model_load(&b.model, &m);
    if (loaded != PB_OK) {
        /* no CUDA build or no device: skipped; anything else is a failure */
        int skip = b.model.load.backend == PB_BACKEND_CUDA && loaded == PB_ERR_UNSUPPORTED;
        fprintf(stderr, "bench_sweep: %s%s\n", skip ? "skipping: " : "", pb_last_error());
        return skip ? 77 : 1;
    }
    char *spec = NULL;
    if (b.default_T > 0) {
        spec = default_sweep(b.default_T, b.default_pairs > 0 ? b.default_pairs : 1,
                             pb_model_get_config(m)->vocab_size);
    } else if (pb_read_text_file(b.spec_path, &spec, NULL) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    if (b.model.load.backend == PB_BACKEND_CUDA)
        print_device(m, &b.model.load);
    pb_sweep_options o = {.metric_fn_residual_layer = -1, .run_trivial_rows = b.all_rows, .max_memory = b.max_memory};
    pb_sweep *s;
    if (pb_sweep_create(&s, m, spec, NULL, &o) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    if (b.vs_atp && print_flop_ratios(s, m, spec, &o) != 0)
        return 1;
    if (b.flops_only) {
        pb_sweep_free(s);
        pb_model_free(m);
        free(spec);
        return 0;
    }
    int32_t warm[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pb_forward(m, warm, 8, NULL, NULL);
    long long layers_before = 0;
    double bytes_before = 0.0;
    if (m->stream)
        pb_stream_counters(m->stream, &layers_before, &bytes_before);
    double t0 = pb_now_seconds();
    if (pb_sweep_run(s) != PB_OK) {
        fprintf(stderr, "bench_sweep: %s\n", pb_last_error());
        return 1;
    }
    double seconds = pb_now_seconds() - t0;
    print_results(m, s, &b.model.load, seconds);
    if (m->stream)
        print_stream(m, &b, seconds, layers_before, bytes_before);
    if (b.vs_atp && (run_atp(m, spec, &o, seconds, "atp") != 0 || run_atp(m, spec, &o, seconds, "atp*") != 0))
        return 1;
    pb_sweep_free(s);
    pb_model_free(m);
    free(spec);
    return 0;
}
