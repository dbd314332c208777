/* The shared generation options (cli_sampling.h). */
#include <stdio.h>
#include <string.h>

#include "cli/cli_sampling.h"
#include "patchbay_tool.h"

/* --stop STR, repeatable. */
static pb_status parse_stop(const char *value, void *target) {
    pb_cli_sampling *s = target;
    if (!*value)
        return pb_fail(PB_ERR_ARG, "an empty stop string would stop every continuation at once");
    if (s->n_stop >= PB_CLI_MAX_STOP)
        return pb_fail(PB_ERR_ARG, "at most %d stop strings", PB_CLI_MAX_STOP);
    s->stop[s->n_stop++] = value;
    return PB_OK;
}

void pb_cli_sampling_table(pb_cli_sampling *s, const char *commands, pb_cli_option table[PB_CLI_SAMPLING_OPTIONS + 1]) {
    *s = (pb_cli_sampling){.samples = 1};
    const pb_cli_option options[PB_CLI_SAMPLING_OPTIONS + 1] = {
        {.flag = "--temperature",
         .kind = PB_OPT_DOUBLE,
         .target = &s->sampling.temperature,
         .value = "T",
         .help = "sample at temperature T (default 0: greedy)"},
        {.flag = "--top-k",
         .kind = PB_OPT_COUNT,
         .target = &s->sampling.top_k,
         .value = "K",
         .help = "sample among the K most likely tokens (default 0: all)"},
        {.flag = "--top-p",
         .kind = PB_OPT_DOUBLE,
         .target = &s->sampling.top_p,
         .value = "P",
         .help = "nucleus sampling: the most likely tokens up to mass P (default 1: all)"},
        {.flag = "--min-p",
         .kind = PB_OPT_DOUBLE,
         .target = &s->sampling.min_p,
         .value = "P",
         .help = "drop tokens less likely than P times the most likely one (default 0)"},
        {.flag = "--sample-seed",
         .kind = PB_OPT_U64,
         .max = UINT64_MAX,
         .target = &s->sampling.seed,
         .value = "N",
         .help = "seed of the sampling (default 0); a continuation depends on it, its prompt and its sample index"},
        {.flag = "--samples",
         .kind = PB_OPT_POSITIVE,
         .target = &s->samples,
         .value = "K",
         .help = "continuations per prompt (default 1; more than 1 needs --temperature)"},
        {.flag = "--batch",
         .kind = PB_OPT_POSITIVE,
         .target = &s->batch,
         .value = "N",
         .help = "continuations decoded together, each with its KV cache (default 64)"},
        {.flag = "--stop",
         .kind = PB_OPT_PARSE,
         .parse = parse_stop,
         .target = s,
         .value = "TEXT",
         .help = "end a continuation once its text contains TEXT (kept in the text); repeatable"},
        {0},
    };
    memcpy(table, options, sizeof options);
    for (int i = 0; i < PB_CLI_SAMPLING_OPTIONS; i++)
        table[i].commands = commands;
}

int pb_cli_sampling_check(const char *cmd, const pb_cli_sampling *s) {
    pb_generate_options o = pb_cli_sampling_options(s, 1);
    o.sampling = &s->sampling; /* the values given, whether they are used or not */
    if (pb_generate_options_check(&o) != PB_OK) {
        fprintf(stderr, "patchbay %s: %s\n", cmd, pb_last_error());
        return 0;
    }
    const pb_sampling *p = &s->sampling;
    if (p->temperature == 0 && (p->top_k != 0 || (p->top_p != 0 && p->top_p != 1) || p->min_p != 0)) {
        fprintf(stderr,
                "patchbay %s: --top-k, --top-p and --min-p shape sampling and need --temperature: without it the "
                "decoding is greedy and would ignore them\n",
                cmd);
        return 0;
    }
    if (s->samples > 1 && s->sampling.temperature == 0) {
        fprintf(stderr, "patchbay %s: --samples %d needs --temperature: greedy continuations are all alike\n", cmd,
                s->samples);
        return 0;
    }
    return 1;
}

pb_generate_options pb_cli_sampling_options(const pb_cli_sampling *s, int max_new) {
    return (pb_generate_options){.max_new = max_new,
                                 .n_samples = s->samples,
                                 .sampling = s->sampling.temperature != 0 ? &s->sampling : NULL,
                                 .stop = s->n_stop ? s->stop : NULL,
                                 .n_stop = s->n_stop,
                                 .max_batch = s->batch};
}

void pb_cli_sampling_describe(const pb_cli_sampling *s, char *buf, size_t size) {
    const pb_sampling *p = &s->sampling;
    if (p->temperature == 0) {
        snprintf(buf, size, "greedy");
        return;
    }
    int n = snprintf(buf, size, "sampled: temperature %g", p->temperature);
    if (p->top_k > 0 && n >= 0 && (size_t)n < size)
        n += snprintf(buf + n, size - (size_t)n, ", top-k %d", p->top_k);
    if (p->top_p > 0 && p->top_p < 1 && n >= 0 && (size_t)n < size)
        n += snprintf(buf + n, size - (size_t)n, ", top-p %g", p->top_p);
    if (p->min_p > 0 && n >= 0 && (size_t)n < size)
        n += snprintf(buf + n, size - (size_t)n, ", min-p %g", p->min_p);
    if (n >= 0 && (size_t)n < size)
        snprintf(buf + n, size - (size_t)n, ", seed %llu, %d sample%s per prompt", (unsigned long long)p->seed,
                 s->samples, s->samples == 1 ? "" : "s");
}
