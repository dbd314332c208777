/* The patchbay executable: the usage text, the option table and main()'s
 * dispatch to the commands; the forward, tokenize, info and sweep commands
 * (the sweep with its signals, ranks and checkpoint) live here, the others
 * in cli_analysis.c and cli_intervene.c. A client of the library:
 * patchbay.h plus the tool's internal header. */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_analysis.h"
#include "cli/cli_attribute.h"
#include "cli/cli_export.h"
#include "cli/cli_intervene.h"
#include "cli/cli_model.h"
#include "cli/cli_plan.h"
#include "cli/cli_lens.h"
#include "cli/cli_text.h"
#include "cli/ids.h"
#include "cli/options.h"
#include "cli/progress.h"
#include "cli/prompt_notice.h"
#include "cli/stop_signal.h"
#include "patchbay.h"
#include "patchbay_tool.h"

#define PB_VERSION "0.1.0"

typedef struct options {
    pb_cli_model model;
    pb_cli_prompt prompt; /* forward, tokenize; --chat-template also sweep */
    const char *hooks;
    const char *out;
    int html; /* forward: patterns.html */
    int overwrite;
    const char *spec;       /* sweep */
    size_t max_memory;      /* sweep; 0 = the library default */
    int no_progress;        /* sweep */
    const char *checkpoint; /* sweep; NULL = DIR.checkpoint */
    int resume;             /* sweep */
    int rank_timeout;       /* sweep, several ranks: seconds; 0 = the default */
    const char *gather;     /* sweep: "auto", "mpi" or "nccl" */
    int pieces;             /* tokenize */
    int attribute;          /* attribute: the sweep's rows estimated ("method": "atp") */
    const char *verify;     /* attribute: "top:K[,control:N][,seed:S]" */
    const char *method;     /* attribute: "atp", "atp*" or "atp-star" (NULL: the spec's, else atp) */
    int no_qk_fix;          /* attribute, atp*: without the QK fix */
    int no_grad_drop;       /* attribute, atp*: without GradDrop */
} options;

static int fail(const char *what) {
    fprintf(stderr, "patchbay: %s%s%s\n", what, *pb_last_error() ? ": " : "", pb_last_error());
    return 1;
}

static const char *const gather_choices[] = {"auto", "mpi", "nccl", NULL};
static const char *const method_choices[] = {"atp", "atp*", "atp-star", NULL};

enum { MAIN_OPTIONS = 16 };

_Static_assert(MAIN_OPTIONS + 1 <= PB_CLI_COMMAND_ROWS, "main options fit pb_cli_tables");

/* One table for forward, sweep, tokenize and info, each row naming the
 * commands that take it. */
static void main_table(options *o, pb_cli_tables *t) {
    pb_cli_common_table(&t->common, &o->model, &o->overwrite, "forward sweep attribute", &o->no_progress,
                        "sweep attribute");
    pb_cli_prompt_table(&o->prompt, "forward tokenize", "forward", "forward tokenize sweep attribute",
                        "forward tokenize sweep attribute", t->prompt);
    const pb_cli_option table[MAIN_OPTIONS + 1] = {
        {.flag = "--spec",
         .kind = PB_OPT_STRING,
         .target = &o->spec,
         .value = "SPEC.json",
         .help = "the sweep's prompts, components, positions and metric (docs/patching.md; required)",
         .commands = "sweep attribute"},
        {.flag = "--out",
         .kind = PB_OPT_STRING,
         .target = &o->out,
         .value = "DIR",
         .help = "output folder (required)",
         .commands = "forward sweep attribute"},
        {.flag = NULL, .kind = PB_OPT_TABLE, .target = t->prompt},
        {.flag = "--hooks",
         .kind = PB_OPT_STRING,
         .target = &o->hooks,
         .value = "PATTERN",
         .help = "hook points to write, comma-separated globs over TransformerLens names, e.g. "
                 "'blocks.*.hook_resid_pre,blocks.3.attn.hook_pattern'",
         .commands = "forward"},
        {.flag = "--html",
         .kind = PB_OPT_FLAG,
         .target = &o->html,
         .help = "also write DIR/patterns.html: each captured attn.hook_pattern as query x key heatmaps, one per "
                 "head, labelled with the prompt's tokens",
         .commands = "forward"},
        {.flag = "--pieces",
         .kind = PB_OPT_FLAG,
         .target = &o->pieces,
         .help = "print a table of position, id and token piece instead of the JSON array of ids",
         .commands = "tokenize"},
        {.flag = "--max-memory",
         .kind = PB_OPT_SIZE,
         .target = &o->max_memory,
         .value = "SIZE",
         .help = "bound on the batch activations (default 1G; streamed on a GPU: what the plan leaves): bytes, K/M/G/T "
                 "(1024s, also KiB...) or KB/MB/GB/TB",
         .commands = "sweep attribute"},
        {.flag = "--checkpoint",
         .kind = PB_OPT_STRING,
         .target = &o->checkpoint,
         .value = "FILE",
         .help = "where an interrupted sweep saves its rows (default DIR.checkpoint, beside DIR)",
         .commands = "sweep attribute"},
        {.flag = "--resume",
         .kind = PB_OPT_FLAG,
         .target = &o->resume,
         .help = "continue from the checkpoint",
         .commands = "sweep attribute"},
        {.flag = "--rank-timeout",
         .kind = PB_OPT_COUNT,
         .target = &o->rank_timeout,
         .value = "SECONDS",
         .help = "several ranks: a rank silent this long ends the job (default: the library's)",
         .commands = "sweep attribute"},
        {.flag = "--gather",
         .kind = PB_OPT_CHOICE,
         .target = &o->gather,
         .choices = gather_choices,
         .choices_text = "auto, mpi or nccl",
         .value = "auto|mpi|nccl",
         .help = "how ranks send rows to rank 0 (auto: NCCL for --backend cuda ranks, else MPI)",
         .commands = "sweep attribute"},
        {.flag = "--verify",
         .kind = PB_OPT_STRING,
         .target = &o->verify,
         .value = "top:K[,control:N][,seed:S]",
         .help = "then run the exact engine on the K sites the estimate ranks highest and N others drawn with "
                 "seed S (N = K, S = 0 by default): both effects, recall and the misses in results.json",
         .commands = "attribute"},
        {.flag = "--method",
         .kind = PB_OPT_CHOICE,
         .target = &o->method,
         .choices = method_choices,
         .choices_text = "atp, atp* or atp-star",
         .value = "atp|atp*",
         .help = "the estimate: AtP (default unless the spec names atp*), or AtP* with the QK fix and GradDrop "
                 "(atp-star: the same, spelled for the shell)",
         .commands = "attribute"},
        {.flag = "--no-qk-fix",
         .kind = PB_OPT_FLAG,
         .target = &o->no_qk_fix,
         .help = "AtP* without its QK fix (queries and keys linearised through the softmax)",
         .commands = "attribute"},
        {.flag = "--no-grad-drop",
         .kind = PB_OPT_FLAG,
         .target = &o->no_grad_drop,
         .help = "AtP* without GradDrop (one backward per pair; the estimate stays signed)",
         .commands = "attribute"},
        {.flag = NULL, .kind = PB_OPT_TABLE, .target = t->common.table},
        {0},
    };
    memcpy(t->table, table, sizeof table);
}

static void main_options_help(FILE *out, const char *cmd) {
    options o;
    pb_cli_tables t;
    main_table(&o, &t);
    pb_cli_print_options(out, t.table, cmd);
}

/* argv[0] is the command. */
static int parse_options(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    pb_cli_tables t;
    main_table(o, &t);
    char command_prefix[128];
    snprintf(command_prefix, sizeof command_prefix, "patchbay %s", argv[0]);
    const pb_cli_parser parser = {.prefix = "patchbay",
                                  .command_prefix = command_prefix,
                                  .missing_value = "%s: option %s needs a value (see patchbay help)\n",
                                  .unknown = "%s: unknown option '%s' (see patchbay help)\n",
                                  .command = argv[0]};
    return pb_cli_parse(&parser, t.table, argc, argv, 1) && pb_cli_model_check(&o->model, argv[0]);
}

/* text_only: the vocabulary, tokenizer and chat template without the
 * weights (tokenize). */
static pb_model *load_model(const options *o, const char *cmd, int text_only) {
    pb_model *m = NULL;
    if ((text_only ? pb_cli_text_model_load(&o->model, &m) : pb_cli_model_load(&o->model, &m)) != PB_OK) {
        fail("cannot load model");
        return NULL;
    }
    if (!pb_cli_prompt_template(cmd, m, o->prompt.chat_template)) {
        pb_model_free(m);
        return NULL;
    }
    return m;
}

static pb_model *load(const options *o, const char *cmd) { return load_model(o, cmd, 0); }

/* patchbay tokenize: the ids of a text (chat-templated with --chat) as a
 * JSON array on stdout, or with --pieces a table of ids and pieces. */
static int cmd_tokenize(const options *o) {
    if (!o->prompt.text) {
        fprintf(stderr, "patchbay tokenize: --text TEXT is required\n");
        return 2;
    }
    int rc = pb_cli_prompt_check("tokenize", &o->prompt, 1);
    if (rc)
        return rc;
    pb_model *m = load_model(o, "tokenize", 1);
    if (!m)
        return 1;
    int32_t *ids = NULL;
    int n = 0;
    rc = pb_cli_prompt_ids("tokenize", m, &o->prompt, &ids, &n);
    if (!rc && o->pieces) {
        pb_cli_print_pieces(stdout, m, ids, n);
    } else if (!rc) {
        putchar('[');
        for (int i = 0; i < n; i++)
            printf("%s%d", i ? ", " : "", ids[i]);
        printf("]\n");
    }
    free(ids);
    pb_model_free(m);
    return rc;
}

/* Writes one .npy per captured hook point and logits.npy (renamed into
 * place last) into --out as one set: all of them, or (a write failed: a
 * full disk) none and no folder this run made. 0, or the exit status. */
static int forward_write(const options *o, const pb_model *m, const int32_t *ids, int T, const float *logits,
                         const pb_capture *cap) {
    int vocab = pb_model_get_config(m)->vocab_size;
    pb_file_set set;
    if (pb_file_set_begin(&set, o->out) != PB_OK) {
        pb_file_set_discard(&set);
        return fail("--out");
    }
    char path[4400];
    int64_t shape[3];
    pb_status st = PB_OK;
    for (int i = 0; st == PB_OK && i < pb_capture_count(cap); i++) {
        int n_dims;
        const float *data = pb_capture_data(cap, i, &n_dims, shape);
        char name[300];
        snprintf(name, sizeof name, "%s.npy", pb_capture_name(cap, i));
        st = pb_file_set_pending(&set, name, path, sizeof path);
        if (st == PB_OK)
            st = pb_npy_write(path, data, PB_NPY_F32, n_dims, shape);
    }
    shape[0] = T;
    shape[1] = vocab;
    if (st == PB_OK)
        st = pb_file_set_pending(&set, "logits.npy", path, sizeof path);
    if (st == PB_OK)
        st = pb_npy_write(path, logits, PB_NPY_F32, 2, shape);
    if (st == PB_OK && o->html)
        st = pb_file_set_pending(&set, "patterns.html", path, sizeof path);
    if (st == PB_OK && o->html)
        st = pb_patterns_html_write(m, cap, ids, T, path);
    if (st != PB_OK) {
        pb_file_set_discard(&set);
        return fail("writing the outputs (none of this run's was kept)");
    }
    if (pb_file_set_commit(&set) != PB_OK)
        return fail("writing the outputs");
    fprintf(stderr, "patchbay: wrote logits (%d x %d) and %d hook points%s to %s\n", T, vocab, pb_capture_count(cap),
            o->html ? ", and patterns.html" : "", o->out);
    return 0;
}

static int cmd_forward(const options *o) {
    if (!o->out) {
        fprintf(stderr, "patchbay forward: --out DIR is required\n");
        return 2;
    }
    int rc = pb_cli_prompt_check("forward", &o->prompt, 1);
    if (rc)
        return rc;
    if (pb_out_dir_check(o->out, o->overwrite) != PB_OK)
        return fail("--out");
    pb_model *m = load(o, "forward");
    if (!m)
        return 1;
    int32_t *ids = NULL;
    int T = 0;
    rc = pb_cli_prompt_ids("forward", m, &o->prompt, &ids, &T);
    if (rc) {
        pb_model_free(m);
        return rc;
    }
    const pb_model_config *c = pb_model_get_config(m);
    pb_capture *cap = NULL;
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    rc = 1;
    if (!logits) {
        fprintf(stderr, "patchbay: out of memory for %d x %d logits\n", T, c->vocab_size);
    } else if (o->hooks && pb_capture_create(&cap, m, o->hooks) != PB_OK) {
        fail("--hooks");
        rc = 2;
    } else if (o->html && pb_capture_pattern_count(cap) == 0) {
        fprintf(stderr, "patchbay forward: --html draws attention patterns: --hooks must capture at least one "
                        "blocks.L.attn.hook_pattern (e.g. 'blocks.*.attn.hook_pattern')\n");
        rc = 2;
    } else if (pb_forward(m, ids, T, logits, cap) != PB_OK) {
        fail("forward failed");
    } else {
        rc = forward_write(o, m, ids, T, logits, cap);
    }
    pb_capture_free(cap);
    free(logits);
    free(ids);
    pb_model_free(m);
    return rc;
}

/* The rank watchdog found a rank silent (distribute.h): report it and end
 * the job. _exit when MPI_Abort cannot run: MPI_Init or MPI_Finalize is
 * waiting on the stuck rank, and only leaving the process ends that (the
 * launcher then ends the other ranks). */
static void on_rank_stuck(const char *message, void *user) {
    fprintf(stderr, "patchbay: %s; aborting the job\n", message);
    fflush(stderr);
    pb_ranks_abort(user, 1);
    _exit(1);
}

static void abort_job(pb_ranks *ranks, int code, const char *why) {
    if (ranks->size < 2)
        return;
    fprintf(stderr, "patchbay: rank %d of %d: %s; aborting the job\n", ranks->rank, ranks->size, why);
    fflush(stderr);
    pb_ranks_abort(ranks, code);
}

/* 1 when PB_TEST_STALL (a comma-separated list) holds item. */
static int test_stall_wants(const char *item) {
    const char *want = getenv("PB_TEST_STALL");
    size_t n = strlen(item);
    for (const char *p = want; p && *p; p = strchr(p, ',') ? strchr(p, ',') + 1 : NULL)
        if (strncmp(p, item, n) == 0 && (p[n] == ',' || p[n] == 0))
            return 1;
    return 0;
}

/* Testing aid for tests/test_mpi.sh and tests/test_sweep_safety.sh:
 * PB_TEST_STALL=RANK:STAGE makes rank RANK stop itself with SIGSTOP, as a
 * hung node would, on reaching STAGE: start (before MPI_Init), exchange (MPI
 * up, the first heartbeats going out), gather (its share done, before its
 * report) or finish (rank 0 about to write the results or the checkpoint).
 * rank < 0: the launcher's. PB_TEST_STALL is a comma-separated list (e.g.
 * "hold,0:finish"). */
static void test_stall_point(const char *stage, int rank) {
    if (!getenv("PB_TEST_STALL"))
        return;
    if (rank < 0) {
        const char *e = getenv("OMPI_COMM_WORLD_RANK");
        rank = e ? atoi(e) : 0;
    }
    char here[64];
    snprintf(here, sizeof here, "%d:%s", rank, stage);
    if (test_stall_wants(here))
        raise(SIGSTOP);
}

/* The sweep's progress callback: the bar where it is shown (p->out set).
 * Testing aid for tests/test_mpi.sh: PB_TEST_STALL=hold keeps every rank's
 * main thread in its share after its first rows (rank 0: once its first
 * progress line is out), as a share of unbounded length would, until a stop
 * signal comes (then the sweep stops at once, with most of its rows left);
 * the watchdog thread goes on (SIGSTOP would stop both). */
static void progress_or_hold(int64_t done, int64_t total, void *user) {
    pb_progress *p = user;
    pb_progress_callback(done, total, p);
    if (!test_stall_wants("hold") || (p->out ? p->last_done <= 0 : done <= 0))
        return;
    const char *rank = getenv("OMPI_COMM_WORLD_RANK");
    fprintf(stderr, "patchbay: rank %s holds in its share (PB_TEST_STALL=hold)\n", rank ? rank : "0");
    fflush(stderr);
    const struct timespec tick = {0, 10 * 1000 * 1000};
    while (!pb_cli_stop)
        nanosleep(&tick, NULL);
}

/* Where the model hash of a checkpoint's job is cached: beside it. */
static void hash_cache_path(const char *checkpoint, char *path, size_t size) {
    snprintf(path, size, "%s.model-hash", checkpoint);
}

/* The results of a finished sweep: results.json, the heatmaps, report.txt
 * (also on stdout) and report.html. 0, or 1 with the failure printed. */
static int write_outputs(const options *o, pb_sweep *sweep) {
    if (pb_sweep_write(sweep, o->out, o->overwrite) != PB_OK)
        return fail("writing the sweep's results");
    char html[4200];
    snprintf(html, sizeof html, "%s/report.html", o->out);
    if (pb_report_html_write(sweep, html, NULL) != PB_OK)
        return fail("writing report.html");
    char path[4200];
    snprintf(path, sizeof path, "%s/report.txt", o->out);
    char *report = NULL;
    if (pb_read_text_file(path, &report, NULL) != PB_OK)
        return fail("reading report.txt");
    fputs(report, stdout);
    free(report);
    return 0;
}

/* The results could not be written (a full disk, a file size limit): every
 * row is done, so a checkpoint keeps them all for --resume. Exit status 1. */
static int keep_rows(const options *o, const char *checkpoint, const pb_sweep *sweep, const pb_sweep_fingerprint *fp) {
    pb_sweep_summary summary = {0};
    pb_sweep_get_summary(sweep, &summary);
    if (pb_sweep_checkpoint_write(sweep, checkpoint, fp) != PB_OK)
        return fail("and the checkpoint that would keep the finished rows could not be written either");
    fprintf(stderr,
            "patchbay: the results were not written (see above); all %lld finished rows are kept in the checkpoint "
            "%s: make room and rerun with --resume%s to write them without running any row again\n",
            (long long)summary.n_rows_done, checkpoint, o->overwrite ? " --overwrite" : "");
    return 1;
}

/* Rank 0 after every rank reported: results, or the checkpoint. */
static int finish_sweep(const options *o, pb_sweep *sweep, pb_status job, const char *checkpoint,
                        const pb_sweep_fingerprint *fp) {
    pb_sweep_summary summary = {0};
    pb_sweep_get_summary(sweep, &summary);
    fprintf(stderr,
            "patchbay: rows executed in this run: %lld (%lld more restored from the checkpoint, %lld "
            "executed before it)\n",
            (long long)(summary.n_rows_executed - summary.n_rows_executed_restored), (long long)summary.n_rows_restored,
            (long long)summary.n_rows_executed_restored);
    if (job == PB_ERR_INTERRUPTED) {
        if (pb_sweep_checkpoint_write(sweep, checkpoint, fp) != PB_OK)
            return fail("interrupted, and the checkpoint could not be written");
        fprintf(stderr,
                "patchbay: interrupted: %lld of %lld rows done; checkpoint written to %s; rerun with --resume to "
                "continue (exit status 3)\n",
                (long long)summary.n_rows_done, (long long)summary.n_rows, checkpoint);
        return 3;
    }
    if (job != PB_OK) {
        fprintf(stderr, "patchbay: sweep failed\n");
        return 1;
    }
    /* Every row is done: this only checks that some pair is usable. */
    if (pb_sweep_run(sweep) != PB_OK)
        return fail("sweep failed");
    pb_sweep_get_summary(sweep, &summary);
    for (int p = 0; p < summary.n_pairs; p++) {
        double base, source;
        pb_sweep_get_pair(sweep, p, &base, &source);
        if (!(fabs(source - base) >= summary.effect_floor))
            fprintf(stderr,
                    "patchbay: WARNING: pair %d: the patched run's baseline %.6g and the source run's %.6g differ "
                    "by less than the effect floor %g; its normalised effects are undefined and excluded from "
                    "the means\n",
                    p, base, source, summary.effect_floor);
    }
    if (write_outputs(o, sweep) != 0)
        return keep_rows(o, checkpoint, sweep, fp);
    /* The results hold everything the checkpoint did (sweep_end removes its hash cache). */
    if (unlink(checkpoint) != 0 && errno != ENOENT)
        fprintf(stderr, "patchbay: WARNING: cannot remove the finished checkpoint %s: %s\n", checkpoint,
                strerror(errno));
    fprintf(stderr, "patchbay: wrote results.json, report.txt, report.html and the .npy heatmaps to %s\n", o->out);
    return 0;
}

/* Ranks sharing a node share its GPUs: each takes the one of its node-local
 * rank (rank_device.h) unless --device named one, and says which on stderr. */
static void choose_rank_device(options *o, const pb_ranks *ranks) {
    if (o->model.load.backend != PB_BACKEND_CUDA)
        return;
    int count = 0;
    if (pb_cuda_device_count(&count) != PB_OK)
        return; /* loading the model reports it */
    int requested = o->model.device_given ? o->model.load.device : -1;
    o->model.load.device = pb_rank_device_choose(requested, ranks->local_rank, count);
    fprintf(stderr, "patchbay: rank %d (node-local %d) uses CUDA device %d of %d%s\n", ranks->rank, ranks->local_rank,
            o->model.load.device, count, o->model.device_given ? " (--device)" : "");
}

/* One rank's sweep job: its inputs, its share of the rows and what it owns. */
typedef struct sweep_job {
    const options *o;
    pb_ranks *ranks;
    char checkpoint[4200];
    int have_checkpoint;
    int replace_partial; /* --resume found a killed run's partial outputs: overwrite them */
    char *spec_text;
    char spec_dir[4096];
    pb_model *model;
    pb_sweep *sweep;
    pb_sweep_fingerprint fingerprint;
    int64_t *share, n_share;
    double *rank_seconds, *rank_costs;
    int show; /* the progress bar: rank 0 without --no-progress */
    pb_progress progress;
} sweep_job;

/* The checkpoint lives beside DIR, never inside it: DIR stays empty until
 * the results exist. */
static void checkpoint_path(const options *o, char *path, size_t size) {
    if (o->checkpoint) {
        snprintf(path, size, "%s", o->checkpoint);
        return;
    }
    size_t n = strlen(o->out);
    while (n > 1 && o->out[n - 1] == '/')
        n--;
    snprintf(path, size, "%.*s.checkpoint", (int)n, o->out);
}

/* --resume / --overwrite: temporary files that a killed run left (kill -9
 * while writing the results, the checkpoint or the hash cache) are removed
 * when their process is gone, so that a requeued job finds the output
 * directory as empty as the killed one left it. */
static int remove_stale_temps(const sweep_job *j) {
    const options *o = j->o;
    char folder[4200], cache[4300];
    const char *base = strrchr(j->checkpoint, '/');
    snprintf(folder, sizeof folder, "%.*s", base ? (int)(base - j->checkpoint) : 1, base ? j->checkpoint : ".");
    base = base ? base + 1 : j->checkpoint;
    hash_cache_path(base, cache, sizeof cache);
    /* The output folder (any name), the checkpoint's and its hash cache's. */
    const char *dirs[3] = {o->out, *folder ? folder : "/", *folder ? folder : "/"};
    const char *prefixes[3] = {NULL, base, cache};
    int removed = 0;
    for (int k = 0; k < 3; k++) {
        int n = 0;
        if (pb_remove_stale_temps(dirs[k], prefixes[k], &n) != PB_OK)
            return fail(k == 0 ? "--out" : "--checkpoint");
        removed += n;
    }
    if (removed > 0 && j->ranks->rank == 0)
        fprintf(stderr, "patchbay: removed %d temporary files of an earlier run that was killed while writing\n",
                removed);
    return 0;
}

/* 1 when dir holds an incomplete set of sweep outputs: only files named
 * like them, and no results.json (the set's last file). */
static int partial_sweep_outputs(const char *dir) {
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int ours = 1, n = 0;
    for (struct dirent *e; ours && (e = readdir(d));) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        ours = pb_sweep_is_output_name(e->d_name) && strcmp(e->d_name, "results.json") != 0;
        n++;
    }
    closedir(d);
    return ours && n > 0;
}

/* Checks the options and reads the spec before anything loads: 0, or the
 * exit status. */
static int sweep_inputs(sweep_job *j) {
    const options *o = j->o;
    if (!o->spec || !o->out) {
        fprintf(stderr, "patchbay %s: --spec SPEC.json and --out DIR are required\n",
                o->attribute ? "attribute" : "sweep");
        return 2;
    }
    checkpoint_path(o, j->checkpoint, sizeof j->checkpoint);
    if ((o->resume || o->overwrite) && remove_stale_temps(j))
        return 1;
    j->have_checkpoint = access(j->checkpoint, F_OK) == 0;
    j->replace_partial = o->resume && j->have_checkpoint && !o->overwrite && partial_sweep_outputs(o->out);
    if (j->replace_partial && j->ranks->rank == 0)
        fprintf(stderr,
                "patchbay: %s holds part of a sweep's outputs (no results.json) and the checkpoint %s is still "
                "there: a run killed while writing its results left them; they are replaced\n",
                o->out, j->checkpoint);
    if (pb_out_dir_check(o->out, o->overwrite || j->replace_partial) != PB_OK)
        return fail("--out");
    /* Rank 0 writes the checkpoint: a place that cannot take it must fail
     * now, not at the signal, when every row would be lost. */
    if (j->ranks->rank == 0 && pb_file_probe_writable(j->checkpoint) != PB_OK) {
        fail(o->checkpoint ? "--checkpoint" : "the checkpoint (beside --out; --checkpoint FILE puts it elsewhere)");
        abort_job(j->ranks, 2, "its checkpoint cannot be written (see above)");
        return 2;
    }
    if (j->have_checkpoint && !o->resume) {
        fprintf(stderr,
                "patchbay: checkpoint %s exists (an interrupted sweep): pass --resume to continue it, or delete "
                "it to start over\n",
                j->checkpoint);
        return 2;
    }
    /* A spec may be a pipe (--spec <(jq ...)): capped, and given up when a
     * stop signal comes while it is read. */
    pb_status read = pb_read_input_file(o->spec, PB_INPUT_MAX_BYTES, &pb_cli_stop, &j->spec_text, NULL);
    if (read == PB_ERR_INTERRUPTED) {
        fprintf(stderr, "patchbay: --spec: %s; stopping before any work\n", pb_last_error());
        return 1;
    }
    if (read != PB_OK) {
        fail("--spec");
        return 2;
    }
    pb_path_folder(o->spec, j->spec_dir, sizeof j->spec_dir); /* a spec's relative paths start there */
    pb_cli_attribute how = {o->method, o->verify, o->no_qk_fix, o->no_grad_drop};
    if (o->attribute && pb_cli_spec_attribute(&j->spec_text, &how) != 0)
        return 2;
    if (o->prompt.no_chat && pb_cli_spec_plain_text(&j->spec_text) != 0) {
        fprintf(stderr, "patchbay %s: out of memory applying --no-chat\n", o->attribute ? "attribute" : "sweep");
        return 1;
    }
    return 0;
}

/* Creates the sweep, fingerprints its inputs and restores the checkpoint:
 * 0, or the exit status. */
static int sweep_create(sweep_job *j) {
    const options *o = j->o;
    pb_progress_init(&j->progress, j->show ? stderr : NULL, o->attribute ? "attribute" : "sweep", -1);
    pb_sweep_options so = {.max_memory = o->max_memory,
                           .metric_fn_residual_layer = -1,
                           .stop = &pb_cli_stop,
                           .progress = progress_or_hold,
                           .progress_user = &j->progress};
    pb_status st = pb_sweep_create(&j->sweep, j->model, j->spec_text, j->spec_dir, &so);
    if (st != PB_OK) {
        fprintf(stderr, "patchbay: %s: %s\n", o->spec, pb_last_error());
        return st == PB_ERR_ARG ? 2 : 1;
    }
    if (j->ranks->rank == 0)
        pb_cli_prompt_notice(stderr, j->sweep, j->model);
    /* Rank 0 hashes the model (it alone checks and writes checkpoints), once
     * per model file: the hash is cached beside the checkpoint. */
    char cache[4300];
    hash_cache_path(j->checkpoint, cache, sizeof cache);
    pb_fingerprint_options fo = {.hash_cache = cache,
                                 .skip_model = j->ranks->rank != 0,
                                 .adapters = o->model.load.adapters,
                                 .adapter_scales = o->model.load.adapter_scales,
                                 .n_adapters = o->model.load.n_adapters};
    if (pb_sweep_fingerprint_compute_with(&j->fingerprint, pb_model_get_source(j->model), j->spec_text,
                                          o->model.load.backend, o->model.load.dtype, &fo) != PB_OK)
        return fail("fingerprinting the sweep's inputs");
    if (j->have_checkpoint) {
        if (pb_sweep_checkpoint_load(j->sweep, j->checkpoint, &j->fingerprint) != PB_OK)
            return fail("--resume");
        pb_sweep_summary summary = {0};
        pb_sweep_get_summary(j->sweep, &summary);
        if (j->ranks->rank == 0)
            fprintf(stderr, "patchbay: resuming from %s: %lld of %lld rows already done\n", j->checkpoint,
                    (long long)summary.n_rows_restored, (long long)summary.n_rows);
    } else if (o->resume && j->ranks->rank == 0) {
        fprintf(stderr, "patchbay: --resume: no checkpoint at %s yet; starting from the beginning\n", j->checkpoint);
    }
    return 0;
}

/* Splits the rows over the ranks and says so: 0, or the exit status. */
static int sweep_partition(sweep_job *j) {
    const pb_ranks *ranks = j->ranks;
    j->rank_seconds = calloc((size_t)ranks->size, sizeof *j->rank_seconds);
    j->rank_costs = calloc((size_t)ranks->size, sizeof *j->rank_costs);
    if (!j->rank_seconds || !j->rank_costs ||
        pb_sweep_partition(j->sweep, ranks->rank, ranks->size, &j->share, &j->n_share, j->rank_costs) != PB_OK)
        return fail("splitting the rows over the ranks");
    pb_sweep_summary summary = {0};
    if (pb_sweep_get_summary(j->sweep, &summary) == PB_OK && j->show)
        fprintf(stderr, "patchbay: %lld sites x %d pairs = %lld rows%s\n", (long long)summary.n_sites, summary.n_pairs,
                (long long)summary.n_rows, ranks->size > 1 ? " (rank 0's progress below)" : "");
    if (j->show)
        pb_cli_plan_line(stderr, j->sweep, j->model, &j->o->model, j->o->max_memory, ranks->size);
    if (ranks->size > 1 && ranks->rank == 0) {
        fprintf(stderr, "patchbay: %d ranks; estimated cost per rank:", ranks->size);
        for (int k = 0; k < ranks->size; k++)
            fprintf(stderr, " %.4g", j->rank_costs[k]);
        fprintf(stderr, "\n");
    }
    if (j->show)
        pb_progress_update(&j->progress, summary.n_rows_done, summary.n_rows);
    return 0;
}

/* Runs this rank's share; its status and seconds. */
static pb_status sweep_run_share(sweep_job *j, double *seconds) {
    pb_ranks_set_stage(j->ranks, PB_RANK_SWEEPING);
    double t0 = pb_now_seconds();
    pb_status st = pb_sweep_run_rows(j->sweep, j->share, j->n_share);
    *seconds = pb_now_seconds() - t0;
    if (j->show)
        pb_progress_finish(&j->progress);
    if (st != PB_OK && st != PB_ERR_INTERRUPTED)
        fprintf(stderr, "patchbay: rank %d: sweep failed: %s\n", j->ranks->rank, pb_last_error());
    pb_ranks_set_stage(j->ranks, PB_RANK_GATHERING);
    test_stall_point("gather", j->ranks->rank);
    return st;
}

/* Every rank's rows to rank 0; *job becomes the job's worst status. 0, or 1
 * on failure. GPU ranks gather over NCCL; --gather nccl forces it (also for
 * one rank: a round trip through NCCL), --gather mpi forbids it. */
static int sweep_gather(sweep_job *j, pb_status st, double seconds, pb_status *job) {
    const options *o = j->o;
    pb_ranks *ranks = j->ranks;
    int automatic = !o->gather || strcmp(o->gather, "auto") == 0;
    int nccl = automatic ? o->model.load.backend == PB_BACKEND_CUDA && ranks->size > 1 : strcmp(o->gather, "nccl") == 0;
    if (nccl && o->model.load.backend != PB_BACKEND_CUDA) {
        fprintf(stderr, "patchbay: --gather nccl needs --backend cuda\n");
        return 1;
    }
    if (nccl && ranks->rank == 0)
        fprintf(stderr, "patchbay: gathering %d %s' results over NCCL\n", ranks->size,
                ranks->size > 1 ? "ranks" : "rank");
    if ((nccl ? pb_ranks_gather_nccl : pb_ranks_gather)(ranks, j->sweep, j->share, j->n_share, st, seconds, job,
                                                        j->rank_seconds) != PB_OK) {
        fail("gathering the ranks' results");
        abort_job(ranks, 1, "the gather failed (see above)");
        return 1;
    }
    return 0;
}

static void print_rank_seconds(const pb_ranks *ranks, const double *rank_seconds) {
    double max = 0.0, sum = 0.0;
    for (int k = 0; k < ranks->size; k++) {
        sum += rank_seconds[k];
        max = rank_seconds[k] > max ? rank_seconds[k] : max;
    }
    fprintf(stderr, "patchbay: seconds per rank:");
    for (int k = 0; k < ranks->size; k++)
        fprintf(stderr, " %.3f", rank_seconds[k]);
    fprintf(stderr, "; load balance (max / mean) %.3f\n", sum > 0 ? max / (sum / ranks->size) : 1.0);
}

/* The job's verdict once every rank reported: rank 0 writes the results or
 * the checkpoint; the others' own status. */
static int sweep_verdict(sweep_job *j, pb_status job) {
    pb_ranks_set_stage(j->ranks, PB_RANK_FINISHING);
    if (j->ranks->rank != 0)
        return job == PB_OK ? 0 : job == PB_ERR_INTERRUPTED ? 3 : 1;
    if (j->ranks->size > 1)
        print_rank_seconds(j->ranks, j->rank_seconds);
    test_stall_point("finish", j->ranks->rank);
    char verdict[512];
    if (job == PB_OK && (job = pb_atp_verify_summary(j->sweep, verdict, sizeof verdict)) != PB_OK)
        fprintf(stderr, "patchbay: %s\n", pb_last_error());
    else if (job == PB_OK && verdict[0])
        fprintf(stderr, "patchbay: verify: %s\n", verdict);
    return finish_sweep(j->o, j->sweep, job, j->checkpoint, &j->fingerprint);
}

/* Every rank leaves with rank 0's verdict; a rank that failed before the
 * gather ends the whole job at once. */
static int sweep_end(sweep_job *j, int rc, int gathered) {
    if (!gathered)
        abort_job(j->ranks, rc, "failed before its share ran (see above)");
    pb_ranks_set_stage(j->ranks, PB_RANK_FINISHING);
    if (pb_ranks_exit_code(j->ranks, rc, &rc) != PB_OK) {
        fail("waiting for the job's verdict");
        abort_job(j->ranks, 1, "the job's end failed (see above)");
        rc = 1;
    }
    /* The model-hash cache serves a resume of the checkpoint beside it: a
     * run that leaves no checkpoint (done, or failed before writing one)
     * leaves no cache either. */
    char cache[4300];
    hash_cache_path(j->checkpoint, cache, sizeof cache);
    if (j->ranks->rank == 0 && access(j->checkpoint, F_OK) != 0)
        unlink(cache);
    free(j->share);
    free(j->rank_seconds);
    free(j->rank_costs);
    pb_sweep_free(j->sweep);
    pb_model_free(j->model);
    free(j->spec_text);
    return rc;
}

static int cmd_sweep(const options *o, pb_ranks *ranks) {
    sweep_job j = {.o = o, .ranks = ranks, .show = !o->no_progress && ranks->rank == 0};
    int rc = sweep_inputs(&j);
    if (rc) {
        free(j.spec_text); /* read before a later input was refused */
        return rc;
    }
    options local = *o; /* this rank's device; --overwrite when a killed run's outputs are replaced */
    local.overwrite |= j.replace_partial;
    j.o = &local;
    choose_rank_device(&local, ranks);
    if (!(j.model = load(&local, "sweep"))) {
        free(j.spec_text);
        return 1;
    }
    rc = sweep_create(&j);
    if (!rc)
        rc = sweep_partition(&j);
    if (rc)
        return sweep_end(&j, rc, 0);
    double seconds = 0.0;
    pb_status st = sweep_run_share(&j, &seconds), job = st;
    rc = sweep_gather(&j, st, seconds, &job);
    if (!rc)
        rc = sweep_verdict(&j, job);
    return sweep_end(&j, rc, 1);
}

static int cmd_info(const options *o) {
    pb_model_config random_cfg;
    const pb_model_config *c = &random_cfg;
    pb_model *m = NULL;
    if (o->model.random_name) {
        /* The shape alone: a 70B model's weights need not exist to be described. */
        if (pb_random_config(&random_cfg, o->model.random_name) != PB_OK)
            return fail("cannot load model");
    } else {
        if (!(m = load(o, "info")))
            return 1;
        c = pb_model_get_config(m);
    }
    printf("arch %s\nn_layers %d\nd_model %d\nn_heads %d\nn_kv_heads %d\nhead_dim %d\nd_mlp %d\nvocab_size %d\n"
           "context_length %d\nrms_eps %g\nrope_theta %g\nrope_scaling %d\nqkv_bias %d\ntied_embeddings %d\n"
           "bos_id %d\neos_id %d\n",
           c->arch, c->n_layers, c->d_model, c->n_heads, c->n_kv_heads, c->head_dim, c->d_mlp, c->vocab_size,
           c->context_length, (double)c->rms_eps, (double)c->rope_theta, (int)c->rope_scaling, c->has_qkv_bias,
           c->tied_embeddings, c->bos_id, c->eos_id);
    printf("activation %s\nqk_norm %d\nsandwich_norm %d\nembed_scale %g\nattn_scale %g\nattn_softcap %g\n"
           "final_softcap %g\nsliding_window %d\nsliding_period %d\nrope_theta_local %g\nassumptions %s\n",
           c->activation == PB_ACTIVATION_GELU_TANH ? "gelu_tanh"
           : c->activation == PB_ACTIVATION_GELU    ? "gelu"
                                                    : "silu",
           c->qk_norm, c->sandwich_norm, (double)c->embed_scale, (double)c->attn_scale, (double)c->attn_softcap,
           (double)c->final_softcap, c->sliding_window, c->sliding_period, (double)c->rope_theta_local,
           *pb_arch_assumptions(c) ? pb_arch_assumptions(c) : "none (every value is from the file)");
    printf("norm %s\nposition %s\nrotary_dims %d\nplain_mlp %d\ndense_bias %d\nparallel_block %d\nno_pre_norm %d\n"
           "qk_norm_full %d\n",
           c->norm == PB_NORM_LAYER ? "layernorm" : "rmsnorm", c->position == PB_POSITION_LEARNED ? "learned" : "rope",
           c->rotary_dims, c->plain_mlp, c->has_dense_bias, c->parallel_block, c->no_pre_norm, c->qk_norm_full);
    if (c->rope_scaling == PB_ROPE_SCALING_LONGROPE)
        printf("longrope_original_context %d\nlongrope_attn_factor %g\nlongrope_rule short factors for prompts of at "
               "most %d tokens, long above (transformers' rule)\n",
               c->rope_original_context, (double)c->rope_attn_factor, c->rope_original_context);
    if (m)
        printf("weights_dtype %s\nweights_mib %.1f\nweights_quantised %d\n", pb_dtype_name(o->model.load.dtype),
               (double)pb_model_weight_bytes(m) / (1 << 20), pb_model_has_quantised(m));
    pb_model_free(m);
    return 0;
}

/* The sweep command in its ranks. Before MPI_Init: a preemption signal
 * that arrives while the ranks start (mpirun forwards SIGUSR1 to them at any
 * time) must ask for a checkpoint, not kill the rank with the default
 * action. OpenMPI keeps handlers installed before MPI_Init. */
static int run_sweep(const options *o, int *argc, char ***argv) {
    pb_cli_stop_install();
    pb_ranks ranks;
    pb_ranks_options rank_options = {.timeout_s = o->rank_timeout, .on_stuck = on_rank_stuck, .user = &ranks};
    test_stall_point("start", -1);
    if (pb_ranks_init(&ranks, argc, argv, &rank_options) != PB_OK) {
        fail("starting ranks");
        abort_job(&ranks, 1, "could not start");
        pb_ranks_finalize(&ranks);
        return 1;
    }
    test_stall_point("exchange", ranks.rank);
    int rc = cmd_sweep(o, &ranks);
    pb_ranks_finalize(&ranks);
    return rc;
}

static int run_forward(int argc, char **argv) {
    options o;
    return parse_options(argc, argv, &o) ? cmd_forward(&o) : 2;
}

static int run_tokenize(int argc, char **argv) {
    options o;
    return parse_options(argc, argv, &o) ? cmd_tokenize(&o) : 2;
}

static int run_info(int argc, char **argv) {
    options o;
    return parse_options(argc, argv, &o) ? cmd_info(&o) : 2;
}

static int run_sweep_command(int argc, char **argv) {
    options o;
    return parse_options(argc, argv, &o) ? run_sweep(&o, &argc, &argv) : 2;
}

static int run_attribute_command(int argc, char **argv) {
    options o;
    if (!parse_options(argc, argv, &o))
        return 2;
    o.attribute = 1;
    return run_sweep(&o, &argc, &argv);
}

/* ---- the command table and the help it generates ---------------------- */

typedef struct command {
    const char *name;
    const char *summary;                          /* one line, for the list of commands */
    const char *usage;                            /* the arguments after "patchbay NAME" */
    const char *about;                            /* what it writes and how it reads its inputs; lines of text */
    const char *example;                          /* shell lines, each a command that works from the repository root */
    int (*run)(int argc, char **argv);            /* argv[0] is the command; the exit status */
    void (*options)(FILE *out, const char *name); /* prints its options, from its option table */
} command;

#define SMOLLM2 "models/SmolLM2-135M-Instruct.Q4_1.gguf"

static const command commands[] = {
    {"forward", "one forward pass: logits and any hook points as .npy",
     "(--text TEXT [--chat] | --ids 1,2,3 | --ids-file F) [--hooks PATTERN] [--html] --out DIR",
     "Writes DIR/logits.npy (T x vocab, float32) and one HOOK.npy per captured hook point: (T, d_model)\n"
     "for residual-width hooks, (T, heads, head_dim) for attn.hook_q/k/v/z, (n_heads, T, T) for\n"
     "attn.hook_attn_scores (scaled, causal mask -inf) and attn.hook_pattern (softmax). --text is\n"
     "tokenized plainly unless --chat (a BOS first where the tokenizer puts one); stderr says which.\n"
     "--html adds DIR/patterns.html: every captured attn.hook_pattern as one heatmap per head.\n",
     "patchbay forward --model " SMOLLM2 " --text 'The Eiffel Tower is in the city of' \\\n"
     "    --hooks 'blocks.*.hook_resid_post,blocks.3.attn.hook_pattern' --html --out /tmp/fwd",
     run_forward, main_options_help},
    {"sweep", "activation-patching sweep over components, layers, heads and positions",
     "--spec SPEC.json --out DIR [--no-chat] [--max-memory SIZE] [--checkpoint FILE] [--resume]",
     "Spec format: docs/patching.md. Writes DIR/results.json (renamed into place last of the set), one\n"
     "COMPONENT.npy heatmap per component, DIR/report.txt, then DIR/report.html. Text prompts get the\n"
     "model's chat template unless --no-chat (or \"chat\": false in the spec or the prompt); how the\n"
     "prompts were tokenized is printed first. Plain text gets the BOS where the model's tokenizer adds\n"
     "one (add_bos_token: Gemma) unless the spec says \"bos\": false. SIGTERM, SIGUSR1 or SIGINT: finish\n"
     "the current batch, write the checkpoint (default DIR.checkpoint; more signals meanwhile are ignored)\n"
     "and exit 3; --resume continues from it (and clears temporary files a killed run left). Under mpirun\n"
     "or srun the rows are split over the ranks by estimated cost and rank 0 writes the results.\n",
     "patchbay sweep --model tests/fixtures/tiny_gqa/model.gguf \\\n"
     "    --spec tests/fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json --out /tmp/sweep",
     run_sweep_command, main_options_help},
    {"attribute", "attribution patching (AtP, AtP*): every site of a sweep spec estimated from gradients",
     "--spec SPEC.json --out DIR [--method atp|atp*] [--no-qk-fix] [--no-grad-drop]\n"
     "    [--verify top:K[,control:N][,seed:S]] [--no-chat]",
     "patchbay sweep with the spec's \"method\" set to \"atp\" (docs/patching.md): each row's patched\n"
     "metric is base + (source - base activation) . gradient at the base run, summed over the site's\n"
     "positions, for two forwards and one backward per pair; the outputs are the sweep's, and results.json\n"
     "says which method. --method atp* (Kramar et al. 2024): q and k sites through the exact attention\n"
     "softmax (QK fix), and every layer's backward again with that layer's writes passing no gradient\n"
     "(GradDrop: unsigned effects, |effect| averaged over the layers; L/2 more backwards a pair, run\n"
     "together layer by layer, so each layer's weights are read once for all of them).\n"
     "--verify runs the exact engine on the estimate's top K sites and N control sites and reports both\n"
     "effects, the recall of the exact top K and the control sites it missed. Every backend, resident or\n"
     "streamed weights; every spec metric (not a callback). Pairs run in groups as --max-memory allows,\n"
     "their forwards as one batch and their backward passes together, each layer read once per group.\n"
     "Over MPI ranks each pair runs on one rank.\n",
     "patchbay attribute --model tests/fixtures/tiny_gqa/model.gguf \\\n"
     "    --spec tests/fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json --verify top:5 --out /tmp/atp",
     run_attribute_command, main_options_help},
    {"plan", "how a sweep would run: resident or streamed weights, waves, bytes moved, peak memory, time bound",
     "--spec SPEC.json [--device-memory SIZE] [--gpus N] [--weights auto|resident|stream] [--max-memory SIZE]",
     "Reads the model's hyperparameters, tokenizer and tensor table only (a 70B file plans in a moment),\n"
     "then plans the sweep as patchbay sweep would run it: weights held resident when they fit beside one\n"
     "pair's run caches and one row (--weights auto, the default here), else streamed layer by layer;\n"
     "rows per wave (batch), waves, weight bytes loaded and streamed, the memory at the peak per rank,\n"
     "and a lower bound on the time from the FLOPs and the link rate (assumed rates printed; --tflops,\n"
     "--link-gbs). Ends with the options that make the sweep run this plan. A sweep that cannot fit even\n"
     "streamed is refused with the numbers (exit 1).\n",
     "patchbay plan --model tests/fixtures/tiny_gqa/model.gguf \\\n"
     "    --spec tests/fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json --device-memory 64MiB\n"
     "patchbay plan --random-model llama3-70b --backend cuda --dtype bf16 --device-memory 80GiB --gpus 8 \\\n"
     "    --spec tests/fixtures/patching/tiny_gqa_denoise_logit_diff/spec.json",
     pb_cli_plan, pb_cli_plan_options},
    {"tokenize", "token ids of a text (plain, or through the chat template)",
     "--text TEXT [--chat [--system TEXT]] [--pieces]",
     "Prints the ids as a JSON array, or with --pieces one line per token (position, id, quoted piece).\n",
     "patchbay tokenize --model " SMOLLM2 " --text 'The Eiffel Tower is in the city of' --pieces", run_tokenize,
     main_options_help},
    {"decode", "text and per-token pieces of token ids", "[IDS... | --ids 1,2,3 | --ids-file F|-] [--pieces] [--json]",
     "Ids as arguments, --ids, or a file or stdin (--ids-file -) as tokenize prints them. Prints the\n"
     "decoded text; --pieces adds one line per token, --json prints {\"text\", \"tokens\": [{\"id\", \"piece\"}]}.\n",
     "patchbay tokenize --model " SMOLLM2 " --text 'Hello world' | patchbay decode --model " SMOLLM2
     " --ids-file - --pieces",
     pb_cli_decode, pb_cli_decode_options},
    {"logit-lens", "the top tokens and a metric read from every layer's residual stream",
     "(--text TEXT [--chat] | --ids 1,2,3) [--positions -1] [--top-k 5] [--positive T --negative T] [--out DIR]",
     "Applies the final norm and the unembedding to the residual stream entering each layer and to the\n"
     "last layer's output (TransformerLens's accumulated_resid with apply_ln: row 0 is the embedding,\n"
     "row L+1 is blocks.L.hook_resid_post; the last row gives the model's logits). Prints per layer and\n"
     "position the top tokens and, with --positive/--negative, mean(positive) - mean(negative) lens\n"
     "logits. --out DIR writes lens.json, top_ids.npy and top_logits.npy (rows x positions x top-k) and,\n"
     "with --positive/--negative, metric_logits.npy (rows x positions x those tokens).\n",
     "patchbay logit-lens --model " SMOLLM2 " --text 'The Eiffel Tower is in the city of' \\\n"
     "    --positive ' Paris' --negative ' Rome' --top-k 3",
     pb_cli_logit_lens, pb_cli_logit_lens_options},
    {"info", "the model's hyperparameters", "", NULL,
     "patchbay info --model " SMOLLM2 "\npatchbay info --random-model llama3-70b", run_info, main_options_help},
    {"generate", "greedy continuation, optionally with a patch, ablation or added direction",
     "(--prompt TEXT [--system TEXT] [--no-chat] | --ids 1,2,3 | --ids-file F) [--max-new-tokens N] [INTERVENTION]",
     "Prints the continuation as text and ids; with an intervention (--patch SITE --from TEXT,\n"
     "--ablate-direction FILE.npy, or --add-direction FILE.npy --layer L) the plain continuation too.\n"
     "--prompt goes through the chat template unless --no-chat.\n",
     "patchbay generate --model " SMOLLM2 " --prompt 'What is the capital of France?' --max-new-tokens 16",
     pb_cli_generate, pb_cli_intervene_options},
    {"refusal-rate", "share of prompts whose greedy continuation reads as a refusal",
     "--prompts FILE [--split validation|train|test|all] [--side harmful|harmless|both] [INTERVENTION]",
     "Phrase list: host/patching/intervene.c. --prompts takes data/refusal_pairs.json ({\"pairs\": [{\"id\",\n"
     "\"split\", \"harmful\", \"harmless\"}], \"refusal_tokens\": [...]}) or a text file with one prompt per line.\n",
     "patchbay refusal-rate --model " SMOLLM2 " --prompts data/refusal_pairs.json --limit 4", pb_cli_refusal_rate,
     pb_cli_intervene_options},
    {"direction", "difference-in-means refusal direction (Arditi et al. 2024)", "--prompts FILE --out DIR",
     "Writes DIR/direction.npy (unit, d_model), DIR/direction.json (selected layer and position, scores,\n"
     "every candidate) and DIR/differences.npy, from chat-templated prompts.\n",
     "patchbay direction --model " SMOLLM2 " --prompts data/refusal_pairs.json --out /tmp/direction", pb_cli_direction,
     pb_cli_intervene_options},
    {"export", "the model with the refusal direction projected out of its weights (abliterated)",
     "--direction FILE.npy --out PATH [--outtype f32|bf16|f16|q8_0] [--format auto|safetensors|gguf]",
     "Projects the unit direction u out of everything that writes into the residual stream (Arditi et al.\n"
     "2024): the token embedding and any learned position table (E <- E - (E u) u^T), every attention-output\n"
     "and MLP-down matrix (W <- (I - u u^T) W) and their biases; the model then computes what\n"
     "--ablate-direction computes at run time, in any tool. A tied unembedding is stored apart, unedited.\n"
     "A GGUF file exports to GGUF (every key kept: tokenizer, chat template, metadata; Q8_0 on request), a\n"
     "Hugging Face folder to model.safetensors + config.json with its tokenizer files. gemma2, gemma3 and\n"
     "olmo2 are refused: their norms after each block would undo the edit. --adapter merges LoRA adapters\n"
     "into the weights first. Nothing is left on failure or Ctrl-C.\n",
     "patchbay export --model " SMOLLM2 " --direction /tmp/direction/direction.npy \\\n"
     "    --out /tmp/smollm2-abliterated.gguf --outtype q8_0",
     pb_cli_export, pb_cli_export_options},
    {"refusal-analysis", "the main job: baseline refusal, patching sweep, refusal direction, report.html",
     "--out DIR [--pairs data/refusal_pairs.json] [--sweep-pairs N]",
     "Writes results.json, the .npy heatmaps, report.txt, direction.npy/json and report.html to DIR.\n",
     "patchbay refusal-analysis --model " SMOLLM2 " --out /tmp/analysis", pb_cli_refusal_analysis,
     pb_cli_refusal_analysis_options},
};
enum { N_COMMANDS = sizeof commands / sizeof commands[0] };

static const char *exit_status_footer =
    "exit status: 0 done, 1 error, 2 usage, 3 sweep interrupted by a signal with its checkpoint written.\n";

static const command *find_command(const char *name) {
    for (int i = 0; i < N_COMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void print_usage(FILE *out) {
    fputs("usage: patchbay <command> [options]\n       patchbay help <command>   (or: patchbay <command> --help)\n"
          "\ncommands:\n",
          out);
    for (int i = 0; i < N_COMMANDS; i++)
        fprintf(out, "  %-17s %s\n", commands[i].name, commands[i].summary);
    fputs("\nEvery command takes the model options (--model PATH or --random-model NAME, --backend, --dtype,\n"
          "--device, --threads); 'patchbay help <command>' lists a command's options with an example.\n",
          out);
    fputs(exit_status_footer, out);
}

static void print_command_help(FILE *out, const command *c) {
    fprintf(out, "usage: patchbay %s %s%s[model options]\n\n%s.\n", c->name, c->usage, *c->usage ? " " : "",
            c->summary);
    if (c->about)
        fprintf(out, "%s", c->about);
    fprintf(out, "\noptions:\n");
    c->options(out, c->name);
    fprintf(out, "\nExample:\n");
    for (const char *line = c->example; *line;) {
        size_t n = strcspn(line, "\n");
        fprintf(out, "  %.*s\n", (int)n, line);
        line += n + (line[n] == '\n');
    }
    fputc('\n', out);
    fputs(exit_status_footer, out);
}

static int is_help_flag(const char *arg) { return strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0; }

/* patchbay help [CMD] */
static int cmd_help(int argc, char **argv) {
    if (argc < 3) {
        print_usage(stdout);
        return 0;
    }
    const command *c = find_command(argv[2]);
    if (!c) {
        fprintf(stderr, "patchbay help: unknown command '%s'\n\n", argv[2]);
        print_usage(stderr);
        return 2;
    }
    print_command_help(stdout, c);
    return 0;
}

/* The version and what this build can run on, without loading any of it:
 * what a bug report wants. */
static void print_version(void) {
    printf("patchbay %s\n", PB_VERSION);
#ifdef PB_HAVE_CUDA
    printf("cuda: built for sm_%s (libpatchbay_cuda.so, loaded on first use of --backend cuda)\n", PB_CUDA_ARCHS);
#else
    printf("cuda: not built (configure with -DPB_CUDA=ON)\n");
#endif
#ifdef PB_HAVE_MPI
    printf("mpi: built (mpirun or srun splits a sweep's rows over ranks)\n");
#else
    printf("mpi: not built (one process per sweep)\n");
#endif
#if defined(__SANITIZE_ADDRESS__)
    printf("sanitizers: on (AddressSanitizer + UndefinedBehaviorSanitizer; a checking build, several times slower)\n");
#else
    printf("sanitizers: off\n");
#endif
}

int main(int argc, char **argv) {
    if (argc < 2 || is_help_flag(argv[1])) {
        print_usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        print_version();
        return 0;
    }
    if (strcmp(argv[1], "help") == 0)
        return cmd_help(argc, argv);
    const command *c = find_command(argv[1]);
    if (!c) {
        fprintf(stderr, "patchbay: unknown command '%s'\n\n", argv[1]);
        print_usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++)
        if (is_help_flag(argv[i])) {
            print_command_help(stdout, c);
            return 0;
        }
    return c->run(argc - 1, argv + 1);
}
