/* patchbay plan (cli_plan.h). */
#define _POSIX_C_SOURCE 200809L
#include <stdlib.h>
#include <string.h>

#include "cli/cli_model.h"
#include "cli/cli_plan.h"
#include "cli/cli_text.h"
#include "cli/prompt_notice.h"
#include "patchbay_tool.h"
#include "util/outdir.h"

typedef struct plan_options {
    pb_cli_model model;
    pb_cli_prompt prompt;
    const char *spec;
    size_t device_memory, max_memory;
    int gpus;
    double tflops, link_gbs;
    int overwrite; /* unused: the common table's */
} plan_options;

enum { PLAN_OPTIONS = 6 };

_Static_assert(PLAN_OPTIONS + 3 <= PB_CLI_COMMAND_ROWS, "plan options fit pb_cli_tables");

static void plan_table(plan_options *o, pb_cli_tables *t) {
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, "", NULL, NULL);
    pb_cli_prompt_table(&o->prompt, "", "", "plan", "plan", t->prompt);
    const pb_cli_option table[PLAN_OPTIONS + 3] = {
        {.flag = "--spec",
         .kind = PB_OPT_STRING,
         .target = &o->spec,
         .value = "SPEC.json",
         .help = "the sweep to plan, as patchbay sweep takes it (required)"},
        {.flag = "--device-memory",
         .kind = PB_OPT_SIZE,
         .target = &o->device_memory,
         .value = "SIZE",
         .help = "memory of one rank, e.g. 80GiB (default: the device's with --backend cuda, else this machine's)"},
        {.flag = "--gpus",
         .kind = PB_OPT_POSITIVE,
         .target = &o->gpus,
         .value = "N",
         .help = "ranks splitting the rows, as mpirun -n N patchbay sweep splits them (default 1)"},
        {.flag = "--max-memory",
         .kind = PB_OPT_SIZE,
         .target = &o->max_memory,
         .value = "SIZE",
         .help = "the sweep's batch budget (default: 1G resident; streamed, what the weights and caches leave)"},
        {.flag = "--tflops",
         .kind = PB_OPT_DOUBLE,
         .target = &o->tflops,
         .value = "X",
         .help = "compute rate per rank for the time bound, TFLOP/s (default: the backend's, printed)"},
        {.flag = "--link-gbs",
         .kind = PB_OPT_DOUBLE,
         .target = &o->link_gbs,
         .value = "X",
         .help = "rate streamed layers arrive at per rank, GB/s (default: the backend's, printed)"},
        {.kind = PB_OPT_TABLE, .target = t->prompt},
        {.kind = PB_OPT_TABLE, .target = t->common.table},
        {0},
    };
    memcpy(t->table, table, sizeof table);
}

void pb_cli_plan_options(FILE *out, const char *cmd) {
    plan_options o;
    pb_cli_tables t;
    plan_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

/* bytes as "12.3 MiB" or "4.56 GiB" into buf. */
static const char *human(char buf[32], double bytes) {
    if (bytes >= (double)(1u << 30))
        snprintf(buf, 32, "%.2f GiB", bytes / (double)(1u << 30));
    else
        snprintf(buf, 32, "%.1f MiB", bytes / (double)(1u << 20));
    return buf;
}

/* A size as --weight-memory / --max-memory take it: whole MiB rounded up
 * where rounding cannot change the plan (the weights' cap), else exact. */
static void size_option(char *buf, size_t n, size_t bytes, int round_up) {
    const size_t mib = (size_t)1 << 20;
    if (round_up || bytes % mib == 0)
        snprintf(buf, n, "%lluMiB", (unsigned long long)((bytes + mib - 1) / mib));
    else
        snprintf(buf, n, "%llu", (unsigned long long)bytes);
}

static void print_weights(const pb_plan *p, const char *mode) {
    char a[32], b[32], c[32];
    char streamed[64] = "they cannot stream";
    if (p->weights_streamed)
        snprintf(streamed, sizeof streamed, "%s at most streamed", human(b, (double)p->weights_streamed));
    printf("weights           %s: %s held whole, %s; %s of memory per rank\n", mode,
           human(a, (double)p->weights_resident), streamed, human(c, (double)p->device_memory));
}

static void print_plan(const pb_plan *p, const pb_sweep_summary *sum, const char *backend) {
    char a[32], b[32], c[32], d[32], e[32];
    int stream = p->weights == PB_WEIGHTS_STREAM;
    print_weights(p, pb_weights_mode_name(p->weights));
    if (p->estimate) {
        printf("rows              %lld sites x %d pairs = %lld pending, estimated (%s): none runs\n",
               (long long)sum->n_sites, sum->n_pairs, (long long)p->rows, p->method);
        printf("passes            per pair a forward of each run and the backward%s, the pairs in %lld group%s "
               "on %d rank%s (busiest %lld; each pair on one rank; a group's passes run together, as --max-memory "
               "allows)\n",
               strcmp(p->method, "atp*") == 0 ? " (and GradDrop's, where on)" : "", (long long)p->waves,
               p->waves == 1 ? "" : "s", p->n_ranks, p->n_ranks > 1 ? "s" : "", (long long)p->waves_max_rank);
        printf("bytes moved       %s loaded, %s streamed (every layer per group's forward and backward pass, at "
               "most)\n",
               human(a, p->bytes_loaded), human(b, p->bytes_streamed));
        printf("peak per rank     %s = weights %s + the estimate's %s %s + verification batch %s\n",
               human(a, (double)p->peak_total), human(b, (double)p->peak_weights),
               p->peak_host ? "gradient scratch" : "captures, logits and scratch", human(c, (double)p->peak_caches),
               human(d, (double)p->peak_activations));
        if (p->peak_host)
            printf("host memory       %s beside it: the estimate's captures and logits, which stay on the host\n",
                   human(a, (double)p->peak_host));
    } else {
        printf("rows              %lld sites x %d pairs = %lld pending; %lld reach the metric\n",
               (long long)sum->n_sites, sum->n_pairs, (long long)p->rows, (long long)p->rows_run);
        printf("waves             %lld (%d rows, %d tokens each at most; busiest rank %lld) on %d rank%s\n",
               (long long)p->waves, p->rows_per_wave, p->tokens_per_wave, (long long)p->waves_max_rank, p->n_ranks,
               p->n_ranks > 1 ? "s" : "");
        printf("base runs         %lld (the base prompts of up to %d pair%s in one run, their source prompts in "
               "another)\n",
               (long long)p->base_runs, p->pairs_per_group, p->pairs_per_group == 1 ? "" : "s");
        printf("bytes moved       %s loaded, %s streamed (every layer once per wave and per base run)\n",
               human(a, p->bytes_loaded), human(b, p->bytes_streamed));
        printf("peak per rank     %s = weights %s + run caches of %d pair%s %s + batch activations %s\n",
               human(a, (double)p->peak_total), human(b, (double)p->peak_weights), p->pairs_per_group,
               p->pairs_per_group == 1 ? "" : "s", human(c, (double)p->peak_caches),
               human(d, (double)p->peak_activations));
    }
    printf("time, at least    %.3g s: %.4g TFLOP at %.4g TFLOP/s = %.3g s; %s streamed at %.4g GB/s = %.3g s "
           "(busiest rank)\n",
           p->seconds_bound, p->seconds_compute * p->flops_per_s / 1e12, p->flops_per_s / 1e12, p->seconds_compute,
           human(e, p->seconds_link * p->link_bytes_per_s), p->link_bytes_per_s / 1e9, p->seconds_link);
    char weight_memory[32], max_memory[32];
    size_option(weight_memory, sizeof weight_memory, p->weight_memory, 1);
    size_option(max_memory, sizeof max_memory, p->max_memory, 0);
    printf("run it with       --backend %s --weights %s%s%s --max-memory %s%s\n", backend,
           pb_weights_mode_name(p->weights), stream ? " --weight-memory " : "", stream ? weight_memory : "", max_memory,
           p->n_ranks > 1 ? " (under mpirun/srun with that many ranks)" : "");
}

void pb_cli_plan_line(FILE *f, const pb_sweep *sweep, const pb_model *model, const pb_cli_model *options,
                      size_t max_memory, int n_ranks) {
    pb_plan_options po = {.n_ranks = n_ranks,
                          .weights = pb_model_streams_weights(model) ? PB_WEIGHTS_STREAM : PB_WEIGHTS_RESIDENT,
                          .weight_memory = options->load.weight_memory,
                          .max_memory = max_memory};
    pb_plan p;
    if (pb_sweep_plan(sweep, &po, &p) != PB_OK)
        return; /* the sweep's own checks say what does not fit */
    char a[32], b[32], c[32], passes[128];
    int stream = p.weights == PB_WEIGHTS_STREAM;
    if (p.estimate)
        snprintf(passes, sizeof passes, "%s: %lld group%s of pairs' passes, no row run", p.method,
                 (long long)p.waves_max_rank, p.waves_max_rank == 1 ? "" : "s");
    else
        snprintf(passes, sizeof passes, "at most %lld waves of up to %d rows after %lld base runs", (long long)p.waves,
                 p.rows_per_wave, (long long)p.base_runs);
    char host[64] = "";
    if (p.peak_host)
        snprintf(host, sizeof host, " and %s of host memory", human(a, (double)p.peak_host));
    fprintf(f, "patchbay: plan: %s weights (%s), %s, %s%speak %s%s per rank (patchbay plan explains)\n",
            pb_weights_mode_name(p.weights), human(b, (double)p.peak_weights), passes,
            stream ? human(c, p.bytes_streamed) : "", stream ? " of layers streamed, " : "",
            human(a, (double)p.peak_total), host);
}

/* The spec read, relative paths against its folder, plain text with --no-chat. */
static int read_spec(const plan_options *o, char **text, char *dir, size_t dir_size) {
    if (pb_read_input_file(o->spec, PB_INPUT_MAX_BYTES, NULL, text, NULL) != PB_OK) {
        fprintf(stderr, "patchbay plan: --spec: %s\n", pb_last_error());
        return 2;
    }
    pb_path_folder(o->spec, dir, dir_size); /* a spec's relative paths start there */
    if (o->prompt.no_chat && pb_cli_spec_plain_text(text) != 0) {
        fprintf(stderr, "patchbay plan: out of memory applying --no-chat\n");
        return 1;
    }
    return 0;
}

/* Loads the model shape-only, plans the sweep: the exit status. */
static int plan_run(plan_options *o) {
    char *spec = NULL, dir[4096];
    int rc = read_spec(o, &spec, dir, sizeof dir);
    if (rc)
        return rc;
    o->model.load.shape_only = 1;
    pb_model *m = NULL;
    pb_sweep *s = NULL;
    if (pb_cli_model_load(&o->model, &m) != PB_OK) {
        fprintf(stderr, "patchbay plan: cannot load model: %s\n", pb_last_error());
        free(spec);
        return 1;
    }
    pb_sweep_options so = {.max_memory = o->max_memory, .metric_fn_residual_layer = -1};
    if (!pb_cli_prompt_template("plan", m, o->prompt.chat_template)) {
        rc = 2;
    } else if (pb_sweep_create(&s, m, spec, dir, &so) != PB_OK) {
        fprintf(stderr, "patchbay plan: %s: %s\n", o->spec, pb_last_error());
        rc = 2;
    } else {
        pb_plan_options po = {.device_memory = o->device_memory,
                              .n_ranks = o->gpus,
                              .weights = o->model.load.weights,
                              .weight_memory = o->model.load.weight_memory,
                              .max_memory = o->max_memory,
                              .flops_per_s = o->tflops * 1e12,
                              .link_bytes_per_s = o->link_gbs * 1e9};
        pb_plan plan;
        pb_sweep_summary sum = {0};
        pb_sweep_get_summary(s, &sum);
        pb_status st = pb_sweep_plan(s, &po, &plan);
        if (st == PB_OK) {
            print_plan(&plan, &sum, pb_backend_name(o->model.load.backend));
        } else {
            print_weights(&plan, "neither fits");
            fprintf(stderr, "patchbay plan: this sweep cannot run here: %s\n", pb_last_error());
            rc = 1;
        }
    }
    pb_sweep_free(s);
    pb_model_free(m);
    free(spec);
    return rc;
}

int pb_cli_plan(int argc, char **argv) {
    plan_options o;
    memset(&o, 0, sizeof o);
    o.model.load.weights = PB_WEIGHTS_AUTO; /* the plan's default; --weights overrides */
    pb_cli_tables t;
    plan_table(&o, &t);
    const pb_cli_parser parser = {.prefix = "patchbay plan",
                                  .command_prefix = "patchbay plan",
                                  .missing_value = "%s: option %s needs a value (see patchbay help plan)\n",
                                  .unknown = "%s: unknown option '%s' (see patchbay help plan)\n",
                                  .command = "plan"};
    if (!pb_cli_parse(&parser, t.table, argc, argv, 1) || !pb_cli_model_check(&o.model, "plan"))
        return 2;
    if (!o.spec) {
        fprintf(stderr, "patchbay plan: --spec SPEC.json is required\n");
        return 2;
    }
    return plan_run(&o);
}
