/* Generation throughput: a batch of N prompts decoded together
 * (pb_generate_batch) against the same prompts one at a time, in the same
 * run, greedy, and the tokens/s of each.
 *
 *   bench_generate [--model PATH] [--adapter DIR] [--prompts FILE] [--n N]
 *                  [--max-new M] [--threads T] [--ids-out FILE] [--skip-single]
 *
 * Prompts: the harmful and harmless requests of data/refusal_pairs.json in
 * file order, chat-templated, the first N (default 64). --ids-out writes
 * them and the engine's continuations as JSON for
 * scripts/bench_torch_generate.py (bench/generate.sh runs both). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay.h"
#include "patchbay_tool.h"

typedef struct bench_args {
    const char *model, *adapter, *prompts, *ids_out;
    int n, max_new, threads, skip_single;
} bench_args;

static int parse_args(int argc, char **argv, bench_args *a) {
    *a = (bench_args){.model = "models/SmolLM2-135M-Instruct.Q4_1.gguf",
                      .prompts = "data/refusal_pairs.json",
                      .n = 64,
                      .max_new = 32};
    for (int i = 1; i < argc; i++) {
        const char *f = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(f, "--skip-single") == 0) {
            a->skip_single = 1;
            continue;
        }
        if (!v)
            return 0;
        if (strcmp(f, "--model") == 0)
            a->model = v;
        else if (strcmp(f, "--adapter") == 0)
            a->adapter = v;
        else if (strcmp(f, "--prompts") == 0)
            a->prompts = v;
        else if (strcmp(f, "--ids-out") == 0)
            a->ids_out = v;
        else if (strcmp(f, "--n") == 0)
            a->n = atoi(v);
        else if (strcmp(f, "--max-new") == 0)
            a->max_new = atoi(v);
        else if (strcmp(f, "--threads") == 0)
            a->threads = atoi(v);
        else
            return 0;
        i++;
    }
    return a->n > 0 && a->max_new > 0;
}

/* The first n requests of the pairs file, harmful then harmless of each
 * pair, chat-templated. */
static int load_prompts(pb_model *m, const char *path, int n, int32_t **ids, int *T) {
    json_error_t err;
    json_t *root = json_load_file(path, 0, &err), *pairs = json_object_get(root, "pairs");
    int got = 0;
    for (size_t i = 0; i < json_array_size(pairs) && got < n; i++)
        for (int side = 0; side < 2 && got < n; side++) {
            const char *text = json_string_value(
                json_object_get(json_array_get(pairs, i), side ? "harmless" : "harmful"));
            if (text && pb_model_chat_tokenize(m, NULL, text, &ids[got], &T[got]) == PB_OK)
                got++;
        }
    json_decref(root);
    if (got < n)
        fprintf(stderr, "bench_generate: %s gave %d of %d prompts%s%s\n", path, got, n, root ? "" : ": ",
                root ? "" : err.text);
    return got == n;
}

/* Generated tokens of every continuation, eos included. */
static long count_tokens(const int *n_out, int n) {
    long total = 0;
    for (int i = 0; i < n; i++)
        total += n_out[i];
    return total;
}

static int write_ids(const char *path, int32_t **ids, const int *T, const int32_t *out, const int *n_out, int n,
                     int max_new, double tokens_per_s) {
    json_t *prompts = json_array(), *continuations = json_array();
    for (int i = 0; i < n; i++) {
        json_t *p = json_array(), *c = json_array();
        for (int t = 0; t < T[i]; t++)
            json_array_append_new(p, json_integer(ids[i][t]));
        for (int t = 0; t < n_out[i]; t++)
            json_array_append_new(c, json_integer(out[(size_t)i * max_new + t]));
        json_array_append_new(prompts, p);
        json_array_append_new(continuations, c);
    }
    json_t *root = json_pack("{s:o,s:o,s:i,s:f}", "prompts", prompts, "continuations", continuations, "max_new_tokens",
                             max_new, "engine_tokens_per_s", tokens_per_s);
    int ok = json_dump_file(root, path, JSON_COMPACT) == 0;
    json_decref(root);
    return ok;
}

int main(int argc, char **argv) {
    bench_args a;
    if (!parse_args(argc, argv, &a)) {
        fprintf(stderr, "usage: bench_generate [--model PATH] [--adapter DIR] [--prompts FILE] [--n N] [--max-new M] "
                        "[--threads T] [--ids-out FILE] [--skip-single]\n");
        return 2;
    }
    const char *adapters[1] = {a.adapter};
    float scales[1] = {1.0f};
    pb_load_options lo = {
        .n_threads = a.threads, .adapters = adapters, .adapter_scales = scales, .n_adapters = a.adapter ? 1 : 0};
    pb_model *m = NULL;
    if (pb_model_load(&m, a.model, &lo) != PB_OK) {
        fprintf(stderr, "bench_generate: %s\n", pb_last_error());
        return 1;
    }
    int32_t **ids = calloc((size_t)a.n, sizeof *ids), *out = malloc(sizeof(int32_t) * (size_t)a.n * a.max_new);
    int *T = calloc((size_t)a.n, sizeof *T), *n_out = calloc((size_t)a.n, sizeof *n_out);
    int rc = 1;
    if (!ids || !out || !T || !n_out || !load_prompts(m, a.prompts, a.n, ids, T))
        goto done;
    pb_generate_options o = {.max_new = a.max_new, .max_batch = a.n};
    double t0 = pb_now_seconds();
    if (pb_generate_batch(m, (const int32_t *const *)ids, T, a.n, &o, out, n_out) != PB_OK)
        goto fail;
    double batched = pb_now_seconds() - t0;
    long tokens = count_tokens(n_out, a.n);
    printf("engine batched    %d prompts, batch %d: %ld tokens in %.3f s, %.1f tokens/s\n", a.n, a.n, tokens, batched,
           tokens / batched);
    if (!a.skip_single) {
        int32_t *single = malloc(sizeof(int32_t) * (size_t)a.n * a.max_new);
        int *n_single = calloc((size_t)a.n, sizeof *n_single), same = 0;
        o.max_batch = 1;
        t0 = pb_now_seconds();
        pb_status st = pb_generate_batch(m, (const int32_t *const *)ids, T, a.n, &o, single, n_single);
        double one = pb_now_seconds() - t0;
        for (int i = 0; st == PB_OK && i < a.n; i++)
            same += n_single[i] == n_out[i] && memcmp(single + (size_t)i * a.max_new, out + (size_t)i * a.max_new,
                                                      sizeof(int32_t) * (size_t)n_out[i]) == 0;
        free(single);
        free(n_single);
        if (st != PB_OK)
            goto fail;
        printf("engine one by one %d prompts: %.3f s, %.1f tokens/s; %d/%d continuations identical to batched\n", a.n,
               one, tokens / one, same, a.n);
        printf("ratio batched / one by one: %.2fx\n", one / batched);
    }
    printf("RESULT engine_tokens_per_s=%.4f\n", tokens / batched);
    if (a.ids_out && !write_ids(a.ids_out, ids, T, out, n_out, a.n, a.max_new, tokens / batched)) {
        fprintf(stderr, "bench_generate: cannot write %s\n", a.ids_out);
        goto done;
    }
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "bench_generate: %s\n", pb_last_error());
done:
    for (int i = 0; ids && i < a.n; i++)
        free(ids[i]);
    free(ids);
    free(T);
    free(out);
    free(n_out);
    pb_model_free(m);
    return rc;
}
