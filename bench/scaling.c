/* Cost model for sweeps split over ranks: what each rank's share costs and
 * the rows/s N ranks should reach.
 *
 *   bench_scaling MODEL SPEC.json [--ranks-max N] [--single-rate ROWS_PER_S]
 *                 [--gather-overhead SECONDS]
 *
 * For N = 1 .. ranks-max (default 8) the shares are the ones `patchbay
 * sweep` uses (pb_sweep_partition); a share's cost is the sum of its rows'
 * pb_sweep_row_cost plus the two cache forwards of every pair it touches (a
 * pair cut by a share boundary builds its caches on both ranks, which the
 * partition itself does not charge). Then
 *
 *   predicted_rate(N) = rows / (max_share_cost / cost_rate + gather_overhead)
 *
 * where cost_rate (cost units per second) comes from one single-rank run of
 * the whole sweep measured here (the CPU backend; set OMP_NUM_THREADS and
 * compare with ranks of the same thread count), or from --single-rate, a
 * single-GPU rows/s measured elsewhere for this same sweep. The gather
 * overhead is given (default 0): it is not measured here. The model assumes
 * ranks do not slow each other down (one GPU, or cores, per rank). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distributed/distribute.h"
#include "patching/sweep_access.h"
#include "patching/sweep_spec.h"
#include "util/clock.h"
#include "util/outdir.h"

/* Cost of running rows (sorted) on one rank: the rows, and each pair's two
 * cache forwards once. */
static double share_cost(const pb_sweep *s, const int64_t *rows, int64_t n) {
    double cost = 0.0;
    int64_t last_pair = -1;
    for (int64_t i = 0; i < n; i++) {
        cost += pb_sweep_row_cost(s, rows[i]);
        int64_t pair = rows[i] / pb_sweep_site_count(s);
        if (pair != last_pair) {
            const pb_pair_spec *p = &pb_sweep_spec_of(s)->pairs[pair];
            cost += (double)pb_model_get_config(pb_sweep_model(s))->n_layers * (p->base.T + p->source.T);
            last_pair = pair;
        }
    }
    return cost;
}

typedef struct scaling_args {
    int ranks_max;
    double single_rate, gather;
} scaling_args;

/* 0, or the exit status after printing why. */
static int parse_args(int argc, char **argv, scaling_args *a) {
    if (argc < 3) {
        fprintf(stderr, "usage: bench_scaling MODEL SPEC.json [--ranks-max N] [--single-rate ROWS_PER_S] "
                        "[--gather-overhead SECONDS]\n");
        return 2;
    }
    *a = (scaling_args){.ranks_max = 8};
    for (int i = 3; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--ranks-max") == 0)
            a->ranks_max = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--single-rate") == 0)
            a->single_rate = atof(argv[i + 1]);
        else if (strcmp(argv[i], "--gather-overhead") == 0)
            a->gather = atof(argv[i + 1]);
        else {
            fprintf(stderr, "bench_scaling: unknown option %s\n", argv[i]);
            return 2;
        }
    }
    if (a->ranks_max < 1 || a->ranks_max > 4096 || a->single_rate < 0 || a->gather < 0) {
        fprintf(stderr, "bench_scaling: bad --ranks-max, --single-rate or --gather-overhead\n");
        return 2;
    }
    return 0;
}

/* The shares before anything runs (done rows would cost nothing): for n =
 * 1 .. ranks_max ranks, the largest and the mean share's cost. */
static pb_status share_costs(const pb_sweep *s, int ranks_max, double *max_cost, double *mean_cost) {
    for (int n = 1; n <= ranks_max; n++) {
        for (int k = 0; k < n; k++) {
            int64_t *rows = NULL, n_rows = 0;
            pb_status st = pb_sweep_partition(s, k, n, &rows, &n_rows, NULL);
            if (st != PB_OK)
                return st;
            double c = n_rows ? share_cost(s, rows, n_rows) : 0.0;
            free(rows);
            mean_cost[n] += c / n;
            max_cost[n] = c > max_cost[n] ? c : max_cost[n];
        }
    }
    return PB_OK;
}

/* Cost units per second on one rank: from --single-rate, else measured by
 * running the whole sweep here. */
static pb_status cost_rate_of(pb_model *m, pb_sweep *s, double single_rate, double total_cost, double *cost_rate) {
    if (single_rate > 0) {
        *cost_rate = single_rate * total_cost / (double)pb_sweep_row_count(s);
        printf("single rank      %.1f rows/s (given) = %.4g cost units/s\n", single_rate, *cost_rate);
        return PB_OK;
    }
    int32_t warm[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    pb_forward(m, warm, 8, NULL, NULL);
    double t0 = pb_now_seconds();
    pb_status st = pb_sweep_run(s);
    if (st != PB_OK)
        return st;
    double seconds = pb_now_seconds() - t0;
    *cost_rate = total_cost / seconds;
    printf("single rank      %lld rows in %.3f s (measured here, CPU backend) = %.1f rows/s = %.4g cost units/s\n",
           (long long)pb_sweep_row_count(s), seconds, (double)pb_sweep_row_count(s) / seconds, *cost_rate);
    return PB_OK;
}

static void print_table(const scaling_args *a, const pb_sweep *s, const double *max_cost, const double *mean_cost,
                        double cost_rate) {
    printf("gather overhead  %.3f s (given, not measured)\n", a->gather);
    printf("%5s %12s %12s %10s %12s %12s %8s\n", "ranks", "max_cost", "mean_cost", "max/mean", "pred_s", "pred_rows/s",
           "speedup");
    double t1 = 0.0;
    for (int n = 1; n <= a->ranks_max; n++) {
        double max = max_cost[n], mean = mean_cost[n];
        double seconds = max / cost_rate + (n > 1 ? a->gather : 0.0);
        if (n == 1)
            t1 = seconds;
        printf("%5d %12.4g %12.4g %10.3f %12.4f %12.1f %8.2f\n", n, max, mean, max / mean, seconds,
               (double)pb_sweep_row_count(s) / seconds, t1 / seconds);
    }
}

/* Predicts the sweep's time on 1 .. ranks_max ranks from the shares' costs. */
static int predict(const scaling_args *a, pb_model *m, pb_sweep *s) {
    int64_t all_n = 0, *all = NULL;
    if (pb_sweep_partition(s, 0, 1, &all, &all_n, NULL) != PB_OK) {
        fprintf(stderr, "bench_scaling: %s\n", pb_last_error());
        return 1;
    }
    double total_cost = share_cost(s, all, all_n);
    free(all);
    double *max_cost = calloc((size_t)a->ranks_max + 1, sizeof(double));
    double *mean_cost = calloc((size_t)a->ranks_max + 1, sizeof(double));
    double cost_rate = 0.0;
    int rc = 1;
    if (max_cost && mean_cost) {
        if (share_costs(s, a->ranks_max, max_cost, mean_cost) != PB_OK ||
            cost_rate_of(m, s, a->single_rate, total_cost, &cost_rate) != PB_OK) {
            fprintf(stderr, "bench_scaling: %s\n", pb_last_error());
        } else {
            print_table(a, s, max_cost, mean_cost, cost_rate);
            printf("RESULT cost_rate=%.6g total_cost=%.6g rows=%lld\n", cost_rate, total_cost,
                   (long long)pb_sweep_row_count(s));
            rc = 0;
        }
    }
    free(max_cost);
    free(mean_cost);
    return rc;
}

int main(int argc, char **argv) {
    scaling_args a;
    int rc = parse_args(argc, argv, &a);
    if (rc)
        return rc;
    char *spec = NULL;
    pb_model *m = NULL;
    pb_sweep *s = NULL;
    pb_sweep_options o = {.metric_fn_residual_layer = -1};
    rc = 1;
    if (pb_read_text_file(argv[2], &spec, NULL) != PB_OK || pb_model_load(&m, argv[1], NULL) != PB_OK ||
        pb_sweep_create(&s, m, spec, NULL, &o) != PB_OK)
        fprintf(stderr, "bench_scaling: %s\n", pb_last_error());
    else
        rc = predict(&a, m, s);
    pb_sweep_free(s);
    pb_model_free(m);
    free(spec);
    return rc;
}
