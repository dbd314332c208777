/* patchbay logit-lens (cli_lens.h). */
#define _POSIX_C_SOURCE 200809L
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli_lens.h"
#include "cli/cli_model.h"
#include "cli/cli_text.h"
#include "cli/ids.h"
#include "patchbay_tool.h"

typedef struct lens_options {
    pb_cli_model model;
    pb_cli_prompt prompt;
    const char *positions; /* "-1" (default), "0,3,-1" or "all" */
    int top_k;
    const char *positive, *negative;         /* token texts, one token each */
    const char *positive_ids, *negative_ids; /* or ids */
    const char *out;
    int overwrite;
} lens_options;

enum { LENS_OPTIONS = 7 };

_Static_assert(LENS_OPTIONS + 3 <= PB_CLI_COMMAND_ROWS, "lens options fit pb_cli_tables");

static void lens_table(lens_options *o, pb_cli_tables *t) {
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, NULL, NULL, NULL);
    pb_cli_prompt_table(&o->prompt, NULL, NULL, NULL, NULL, t->prompt);
    const pb_cli_option table[LENS_OPTIONS + 3] = {
        {.kind = PB_OPT_TABLE, .target = t->prompt},
        {.flag = "--positions",
         .kind = PB_OPT_STRING,
         .target = &o->positions,
         .value = "LIST|all",
         .help = "positions to read, e.g. -1 (the default: the last), 0,3,-1, or all"},
        {.flag = "--top-k",
         .kind = PB_OPT_UINT,
         .target = &o->top_k,
         .max = 100,
         .value = "K",
         .help = "top tokens shown per layer and position (default 5; 0: none)"},
        {.flag = "--positive",
         .kind = PB_OPT_STRING,
         .target = &o->positive,
         .value = "TEXT",
         .help = "metric token as text, exactly one token (e.g. ' Paris'); the metric is its lens logit"},
        {.flag = "--negative",
         .kind = PB_OPT_STRING,
         .target = &o->negative,
         .value = "TEXT",
         .help = "second metric token: the metric becomes mean(positive) - mean(negative)"},
        {.flag = "--positive-ids",
         .kind = PB_OPT_STRING,
         .target = &o->positive_ids,
         .value = "1,2",
         .help = "metric tokens as ids instead of --positive"},
        {.flag = "--negative-ids",
         .kind = PB_OPT_STRING,
         .target = &o->negative_ids,
         .value = "1,2",
         .help = "metric tokens as ids instead of --negative"},
        {.flag = "--out",
         .kind = PB_OPT_STRING,
         .target = &o->out,
         .value = "DIR",
         .help = "also write DIR/lens.json, top_ids.npy, top_logits.npy and metric_logits.npy"},
        {.kind = PB_OPT_TABLE, .target = t->common.table},
        {0},
    };
    memcpy(t->table, table, sizeof table);
}

void pb_cli_logit_lens_options(FILE *out, const char *cmd) {
    lens_options o;
    pb_cli_tables t;
    lens_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

/* ---- inputs -------------------------------------------------------------- */

/* One side of the metric: ids from --X-ids, or the one token of --X's text. */
static int metric_side(const char *cmd, pb_model *m, const char *text, const char *ids_text, const char *flag,
                       int32_t **ids, int *n) {
    *ids = NULL;
    *n = 0;
    if (text && ids_text) {
        fprintf(stderr, "patchbay %s: give --%s or --%s-ids, not both\n", cmd, flag, flag);
        return 2;
    }
    pb_status st = PB_OK;
    if (ids_text)
        st = pb_ids_parse(ids_text, flag, ids, n);
    else if (text)
        st = pb_model_tokenize(m, text, 0, ids, n);
    if (st != PB_OK) {
        fprintf(stderr, "patchbay %s: --%s: %s\n", cmd, flag, pb_last_error());
        return 2;
    }
    if (text && *n != 1) {
        fprintf(stderr, "patchbay %s: --%s '%s' is %d tokens; a metric token must be exactly one (see tokenize)\n", cmd,
                flag, text, *n);
        return 2;
    }
    int vocab = pb_model_get_config(m)->vocab_size;
    for (int i = 0; i < *n; i++)
        if ((*ids)[i] >= vocab) {
            fprintf(stderr, "patchbay %s: --%s-ids: id %d is outside the vocabulary [0, %d)\n", cmd, flag, (*ids)[i],
                    vocab);
            return 2;
        }
    return 0;
}

/* --positions as a list, resolved against T: 0, or 2 after saying why. */
static int lens_positions(const char *cmd, const char *text, int T, int **positions, int *n) {
    *n = 0;
    *positions = malloc(sizeof(int) * (size_t)(T + 64));
    if (!*positions)
        return 2;
    if (text && strcmp(text, "all") == 0) {
        for (int t = 0; t < T; t++)
            (*positions)[(*n)++] = t;
        return 0;
    }
    const char *p = text ? text : "-1";
    while (*p) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || (*end && *end != ',') || v < -T || v >= T || *n >= T + 64) {
            fprintf(stderr, "patchbay %s: --positions: '%s' must list positions in [-%d, %d) or be 'all'\n", cmd, text,
                    T, T);
            return 2;
        }
        (*positions)[(*n)++] = (int)(v < 0 ? v + T : v);
        p = *end ? end + 1 : end;
    }
    return 0;
}

/* ---- the result ------------------------------------------------------------ */

typedef struct lens_result {
    const pb_model *model;
    int rows, n_positions, vocab, top_k;
    const int *positions;
    const int32_t *ids;
    const float *logits; /* (rows, n_positions, vocab) */
    int32_t *positive, *negative;
    int n_positive, n_negative;
    int32_t *top_ids; /* (rows, n_positions, top_k) */
    float *top_logits;
    float *metric_logits; /* (rows, n_positions, n_positive + n_negative) */
} lens_result;

static const float *lens_row(const lens_result *r, int row, int p) {
    return r->logits + ((size_t)row * r->n_positions + (size_t)p) * r->vocab;
}

/* TransformerLens's accumulated_resid labels. */
static void row_label(int row, int rows, char *buf, size_t size) {
    if (row == rows - 1)
        snprintf(buf, size, "final_post");
    else
        snprintf(buf, size, "%d_pre", row);
}

static double metric_value(const lens_result *r, int row, int p) {
    const float *v = lens_row(r, row, p);
    double pos = 0.0, neg = 0.0;
    for (int i = 0; i < r->n_positive; i++)
        pos += v[r->positive[i]];
    for (int i = 0; i < r->n_negative; i++)
        neg += v[r->negative[i]];
    return pos / r->n_positive - (r->n_negative ? neg / r->n_negative : 0.0);
}

/* The top_k ids of every row and position, largest first (lower id first
 * among equals), and the metric tokens' lens logits. */
static void lens_gather(lens_result *r) {
    int k = r->top_k, n_metric = r->n_positive + r->n_negative;
    for (int row = 0; row < r->rows; row++)
        for (int p = 0; p < r->n_positions; p++) {
            const float *v = lens_row(r, row, p);
            size_t at = (size_t)row * r->n_positions + (size_t)p;
            int32_t *top = r->top_ids + at * (size_t)k;
            for (int i = 0; i < k; i++) {
                int best = -1;
                for (int id = 0; id < r->vocab; id++) {
                    int taken = 0;
                    for (int j = 0; j < i && !taken; j++)
                        taken = top[j] == id;
                    if (!taken && (best < 0 || v[id] > v[best]))
                        best = id;
                }
                top[i] = best;
                r->top_logits[at * (size_t)k + (size_t)i] = v[best];
            }
            for (int i = 0; i < n_metric; i++)
                r->metric_logits[at * (size_t)n_metric + (size_t)i] =
                    v[i < r->n_positive ? r->positive[i] : r->negative[i - r->n_positive]];
        }
}

static void print_lens(const lens_result *r) {
    for (int p = 0; p < r->n_positions; p++) {
        char piece[256];
        pb_cli_piece_quoted(r->model, r->ids[r->positions[p]], piece, sizeof piece);
        printf("position %d %s:\n  %-11s %s%s\n", r->positions[p], piece, "layer", r->n_positive ? "metric      " : "",
               r->top_k ? "top tokens (lens logit)" : "");
        for (int row = 0; row < r->rows; row++) {
            char label[32];
            row_label(row, r->rows, label, sizeof label);
            printf("  %-11s", label);
            if (r->n_positive)
                printf(" %-11.4f", metric_value(r, row, p));
            size_t at = ((size_t)row * r->n_positions + (size_t)p) * (size_t)r->top_k;
            for (int i = 0; i < r->top_k; i++) {
                pb_cli_piece_quoted(r->model, r->top_ids[at + i], piece, sizeof piece);
                printf("%s %s %.3f", i ? " |" : "", piece, (double)r->top_logits[at + i]);
            }
            printf("\n");
        }
    }
}

static json_t *token_json(const pb_model *m, int32_t id) {
    char piece[1024];
    if (pb_model_token_text(m, id, piece, sizeof piece) != PB_OK)
        piece[0] = 0;
    json_t *s = json_string(piece);
    return json_pack("{s:i, s:o}", "id", (int)id, "piece", s ? s : json_null());
}

static json_t *lens_json(const lens_result *r) {
    json_t *root = json_object(), *rows = json_array(), *positions = json_array(), *tokens = json_array();
    for (int row = 0; row < r->rows; row++) {
        char label[32];
        row_label(row, r->rows, label, sizeof label);
        json_array_append_new(rows, json_string(label));
    }
    for (int p = 0; p < r->n_positions; p++)
        json_array_append_new(positions, json_integer(r->positions[p]));
    for (int p = 0; p < r->n_positions; p++)
        json_array_append_new(tokens, token_json(r->model, r->ids[r->positions[p]]));
    json_object_set_new(root, "convention",
                        json_string("lens logits = unembed(final_norm(resid)) of the residual entering each layer "
                                    "(row L: blocks.L.hook_resid_pre) and of the last layer's output (final_post = "
                                    "the model's logits), TransformerLens accumulated_resid(apply_ln=True)"));
    json_object_set_new(root, "source", json_string(pb_model_get_source(r->model)));
    json_object_set_new(root, "rows", rows);
    json_object_set_new(root, "positions", positions);
    json_object_set_new(root, "position_tokens", tokens);
    json_object_set_new(root, "arrays",
                        json_pack("{s:s, s:s, s:s}", "top_ids.npy", "int32 (rows, positions, top_k)", "top_logits.npy",
                                  "float32 (rows, positions, top_k)", "metric_logits.npy",
                                  "float32 (rows, positions, positive then negative tokens)"));
    if (r->n_positive) {
        json_t *pos = json_array(), *neg = json_array(), *values = json_array();
        for (int i = 0; i < r->n_positive; i++)
            json_array_append_new(pos, token_json(r->model, r->positive[i]));
        for (int i = 0; i < r->n_negative; i++)
            json_array_append_new(neg, token_json(r->model, r->negative[i]));
        for (int row = 0; row < r->rows; row++) {
            json_t *line = json_array();
            for (int p = 0; p < r->n_positions; p++)
                json_array_append_new(line, json_real(metric_value(r, row, p)));
            json_array_append_new(values, line);
        }
        json_object_set_new(
            root, "metric",
            json_pack("{s:s, s:o, s:o, s:o}", "kind",
                      r->n_negative ? "mean(positive) - mean(negative) lens logits" : "mean(positive) lens logits",
                      "positive", pos, "negative", neg, "values [row][position]", values));
    }
    return root;
}

/* DIR/lens.json and the arrays; 0 or 1. */
static int write_lens(const char *cmd, const char *dir, int overwrite, const lens_result *r) {
    char path[4200];
    int64_t shape[3] = {r->rows, r->n_positions, r->top_k};
    int n_metric = r->n_positive + r->n_negative;
    pb_status st = pb_out_dir_create(dir, overwrite);
    if (st == PB_OK && r->top_k > 0) {
        snprintf(path, sizeof path, "%s/top_ids.npy", dir);
        st = pb_npy_write(path, r->top_ids, PB_NPY_I32, 3, shape);
        snprintf(path, sizeof path, "%s/top_logits.npy", dir);
        if (st == PB_OK)
            st = pb_npy_write(path, r->top_logits, PB_NPY_F32, 3, shape);
    }
    if (st == PB_OK && n_metric > 0) {
        shape[2] = n_metric;
        snprintf(path, sizeof path, "%s/metric_logits.npy", dir);
        st = pb_npy_write(path, r->metric_logits, PB_NPY_F32, 3, shape);
    }
    json_t *root = st == PB_OK ? lens_json(r) : NULL;
    char *text = root ? json_dumps(root, JSON_INDENT(1)) : NULL;
    snprintf(path, sizeof path, "%s/lens.json", dir);
    if (st == PB_OK)
        st = text ? pb_write_file_atomic(path, text, strlen(text)) : pb_fail(PB_ERR_OOM, "out of memory");
    free(text);
    json_decref(root);
    if (st != PB_OK) {
        fprintf(stderr, "patchbay %s: writing %s: %s\n", cmd, dir, pb_last_error());
        return 1;
    }
    fprintf(stderr, "patchbay %s: wrote lens.json and the lens arrays to %s\n", cmd, dir);
    return 0;
}

/* ---- the command ---------------------------------------------------------- */

typedef struct lens_job {
    lens_options o;
    pb_model *model;
    int32_t *ids;
    int T;
    int *positions;
    float *logits;
    lens_result r;
} lens_job;

static int lens_compute(lens_job *j) {
    const char *cmd = "logit-lens";
    const pb_model_config *c = pb_model_get_config(j->model);
    lens_result *r = &j->r;
    *r = (lens_result){.model = j->model,
                       .rows = c->n_layers + 1,
                       .vocab = c->vocab_size,
                       .top_k = j->o.top_k < c->vocab_size ? j->o.top_k : c->vocab_size};
    int rc = metric_side(cmd, j->model, j->o.positive, j->o.positive_ids, "positive", &r->positive, &r->n_positive);
    if (!rc)
        rc = metric_side(cmd, j->model, j->o.negative, j->o.negative_ids, "negative", &r->negative, &r->n_negative);
    if (!rc && r->n_negative && !r->n_positive) {
        fprintf(stderr, "patchbay %s: --negative needs --positive\n", cmd);
        rc = 2;
    }
    if (!rc)
        rc = lens_positions(cmd, j->o.positions, j->T, &j->positions, &r->n_positions);
    if (rc)
        return rc;
    size_t cells = (size_t)r->rows * (size_t)r->n_positions;
    j->logits = malloc(sizeof(float) * cells * (size_t)r->vocab);
    r->top_ids = malloc(sizeof(int32_t) * cells * (size_t)(r->top_k + 1));
    r->top_logits = malloc(sizeof(float) * cells * (size_t)(r->top_k + 1));
    r->metric_logits = malloc(sizeof(float) * cells * (size_t)(r->n_positive + r->n_negative + 1));
    if (!j->logits || !r->top_ids || !r->top_logits || !r->metric_logits) {
        fprintf(stderr, "patchbay %s: out of memory for %zu x %d lens logits\n", cmd, cells, r->vocab);
        return 1;
    }
    if (pb_logit_lens(j->model, j->ids, j->T, j->positions, r->n_positions, j->logits) != PB_OK) {
        fprintf(stderr, "patchbay %s: %s\n", cmd, pb_last_error());
        return 1;
    }
    r->logits = j->logits;
    r->positions = j->positions;
    r->ids = j->ids;
    lens_gather(r);
    return 0;
}

static int lens_parse(int argc, char **argv, lens_options *o) {
    *o = (lens_options){.top_k = 5};
    pb_cli_tables t;
    lens_table(o, &t);
    const pb_cli_parser parser = {.prefix = "patchbay logit-lens",
                                  .command_prefix = "patchbay logit-lens",
                                  .missing_value = "%s: option %s needs a value\n",
                                  .unknown = "%s: unknown option '%s' (see patchbay help logit-lens)\n",
                                  .command = "logit-lens"};
    if (!pb_cli_parse(&parser, t.table, argc, argv, 1) || !pb_cli_model_check(&o->model, "logit-lens"))
        return 2;
    int rc = pb_cli_prompt_check("logit-lens", &o->prompt, 1);
    if (!rc && o->out && pb_out_dir_check(o->out, o->overwrite) != PB_OK) {
        fprintf(stderr, "patchbay logit-lens: --out: %s\n", pb_last_error());
        rc = 2;
    }
    return rc;
}

int pb_cli_logit_lens(int argc, char **argv) {
    lens_job j;
    memset(&j, 0, sizeof j);
    int rc = lens_parse(argc, argv, &j.o);
    if (rc)
        return rc;
    rc = 1;
    if (pb_cli_model_load(&j.o.model, &j.model) != PB_OK)
        fprintf(stderr, "patchbay logit-lens: cannot load model: %s\n", pb_last_error());
    else if (pb_cli_prompt_template("logit-lens", j.model, j.o.prompt.chat_template))
        rc = pb_cli_prompt_ids("logit-lens", j.model, &j.o.prompt, &j.ids, &j.T);
    if (!rc)
        rc = lens_compute(&j);
    if (!rc) {
        print_lens(&j.r);
        if (j.o.out)
            rc = write_lens("logit-lens", j.o.out, j.o.overwrite, &j.r);
    }
    free(j.r.positive);
    free(j.r.negative);
    free(j.r.top_ids);
    free(j.r.top_logits);
    free(j.r.metric_logits);
    free(j.logits);
    free(j.positions);
    free(j.ids);
    pb_model_free(j.model);
    return rc;
}
