/* The patchbay command line: forward, generate, sweep, info. */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli/cli_analysis.h"
#include "cli/cli_intervene.h"
#include "backend/backend_cuda.h"
#include "cli/cli_model.h"
#include "util/clock.h"
#include "distributed/distribute.h"
#include "cli/ids.h"
#include "model/model_random.h"
#include "formats/npy.h"
#include "util/outdir.h"
#include "patchbay.h"
#include "cli/progress.h"
#include "distributed/rank_device.h"
#include "analysis/report_html.h"

#define PB_VERSION "0.1.0"

static const char *usage_text =
    "usage: patchbay <command> [options]\n"
    "\n"
    "commands:\n"
    "  forward   --model PATH (--ids 1,2,3 | --ids-file F) [--hooks PATTERN] --out DIR [--overwrite]\n"
    "            writes DIR/logits.npy (T x vocab, float32) and one HOOK.npy per captured hook point\n"

    "  sweep     --model PATH --spec SPEC.json --out DIR [--max-memory SIZE] [--overwrite] [--no-progress]\n"
    "            [--checkpoint FILE] [--resume] [--rank-timeout SECONDS] [--gather auto|mpi|nccl]\n"
    "            activation-patching sweep (spec format: docs/patching.md); writes DIR/results.json,\n"
    "            one COMPONENT.npy heatmap per component, DIR/report.txt and DIR/report.html.\n"
    "            SIGTERM, SIGUSR1 or SIGINT: finish the current batch, write the checkpoint (default\n"
    "            DIR.checkpoint, beside DIR) and exit 3; --resume continues from it. Under mpirun or srun\n"
    "            the rows are split over the ranks by estimated cost and rank 0 writes the results;\n"
    "            --backend cuda ranks gather them with one NCCL all-gather (auto), others over MPI.\n"
    "  tokenize  --model PATH --text TEXT [--chat [--system TEXT]]\n"
    "            token ids as a JSON array (--chat: through the model's chat template)\n"
    "  info      --model PATH\n"
    "            hyperparameters\n"
    "  refusal-analysis --model PATH --out DIR [--pairs data/refusal_pairs.json] [--sweep-pairs N]\n"
    "            [--max-new-tokens N] [--overwrite] [--no-progress]\n"
    "            the main job: baseline refusal, patching sweep, refusal direction, report.html\n"
    "\n"
    "--chat-template NAME|FILE overrides the model's template (chatml, llama3, llama2, gemma, or a Jinja\n"
    "  file of one of those families)\n"
    "--hooks takes comma-separated globs over TransformerLens names, e.g.\n"
    "  'blocks.*.hook_resid_pre,blocks.3.attn.hook_z,hook_embed,ln_final.hook_normalized'\n"
    "--ids-file takes ids separated by commas or whitespace ('#' starts a comment), or an int32 .npy.\n"
    "--max-memory bounds the sweep's batch activations (default 1G): bytes, or K/M/G/T (powers of 1024,\n"
    "  also KiB/MiB/GiB/TiB) or KB/MB/GB/TB (powers of 1000), e.g. 512M, 2G, 1.5GiB, 100000.\n"
    "exit status: 0 done, 1 error, 2 usage, 3 sweep interrupted by a signal with its checkpoint written.\n";

typedef struct options {
    pb_cli_model model;
    const char *ids;
    const char *ids_file;
    const char *hooks;
    const char *out;
    int max_new;
    int overwrite;
    const char *spec;     /* sweep */
    size_t max_memory;    /* sweep; 0 = the library default */
    int no_progress;      /* sweep */
    const char *checkpoint; /* sweep; NULL = DIR.checkpoint */
    int resume;           /* sweep */
    int rank_timeout;     /* sweep, several ranks: seconds; 0 = the default */
    const char *gather;   /* sweep: "auto", "mpi" or "nccl" */
    const char *text;
    const char *system;
    const char *chat_template;
    int chat;
} options;

static int fail(const char *what) {
    fprintf(stderr, "patchbay: %s%s%s\n", what, *pb_last_error() ? ": " : "", pb_last_error());
    return 1;
}

static int parse_int(const char *flag, const char *text, int *out) {
    char *end;
    errno = 0;
    long v = strtol(text, &end, 10);
    if (errno || *end || end == text || v < 0 || v > 1000000000) {
        fprintf(stderr, "patchbay: %s expects a non-negative integer, got '%s'\n", flag, text);
        return 0;
    }
    *out = (int)v;
    return 1;
}

static int parse_options(int argc, char **argv, options *o) {
    memset(o, 0, sizeof *o);
    o->max_new = 32;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--overwrite") == 0) {
            o->overwrite = 1;
            continue;
        }
        if (strcmp(a, "--no-progress") == 0) {
            o->no_progress = 1;
            continue;
        }
        if (strcmp(a, "--chat") == 0) {
            o->chat = 1;
            continue;
        }
        if (strcmp(a, "--resume") == 0) {
            o->resume = 1;
            continue;
        }
        if (!next) {
            fprintf(stderr, "patchbay: option %s needs a value (see patchbay --help)\n", a);
            return 0;
        }
        int taken = pb_cli_model_option(&o->model, argv[1], a, next);
        if (taken < 0) return 0;
        else if (taken) { /* a model option */ }
        else if (strcmp(a, "--ids") == 0) o->ids = next;
        else if (strcmp(a, "--ids-file") == 0) o->ids_file = next;
        else if (strcmp(a, "--hooks") == 0) o->hooks = next;
        else if (strcmp(a, "--out") == 0) o->out = next;
        else if (strcmp(a, "--max-new-tokens") == 0) { if (!parse_int(a, next, &o->max_new)) return 0; }
        else if (strcmp(a, "--spec") == 0) o->spec = next;
        else if (strcmp(a, "--checkpoint") == 0) o->checkpoint = next;
        else if (strcmp(a, "--rank-timeout") == 0) { if (!parse_int(a, next, &o->rank_timeout)) return 0; }
        else if (strcmp(a, "--gather") == 0) {
            if (strcmp(next, "auto") && strcmp(next, "mpi") && strcmp(next, "nccl")) {
                fprintf(stderr, "patchbay: --gather expects auto, mpi or nccl, got '%s'\n", next);
                return 0;
            }
            o->gather = next;
        }
        else if (strcmp(a, "--text") == 0) o->text = next;
        else if (strcmp(a, "--system") == 0) o->system = next;
        else if (strcmp(a, "--chat-template") == 0) o->chat_template = next;
        else if (strcmp(a, "--max-memory") == 0) {
            if (pb_parse_size(next, &o->max_memory) != PB_OK) {
                fprintf(stderr, "patchbay: --max-memory: %s\n", pb_last_error());
                return 0;
            }
        }
        else {
            fprintf(stderr, "patchbay: unknown option '%s' (see patchbay --help)\n", a);
            return 0;
        }
        i++;
    }
    if (!pb_cli_model_check(&o->model, argv[1]))
        return 0;
    return 1;
}

static int read_ids(const options *o, int32_t **ids, int *T) {
    if (!!o->ids == !!o->ids_file) {
        fprintf(stderr, "patchbay: give exactly one of --ids or --ids-file\n");
        return 0;
    }
    pb_status st = o->ids ? pb_ids_parse(o->ids, "--ids", ids, T) : pb_ids_read_file(o->ids_file, ids, T);
    return st == PB_OK || !fail("reading token ids");
}

static pb_model *load(const options *o) {
    pb_model *m = NULL;
    if (pb_cli_model_load(&o->model, &m) != PB_OK) {
        fail("cannot load model");
        return NULL;
    }
    if (o->chat_template && pb_model_set_chat_template(m, o->chat_template) != PB_OK) {
        fail("--chat-template");
        pb_model_free(m);
        return NULL;
    }
    return m;
}

/* patchbay tokenize: the ids of a text (chat-templated with --chat) as a
 * JSON array on stdout. */
static int cmd_tokenize(const options *o) {
    if (!o->text) {
        fprintf(stderr, "patchbay tokenize: --text TEXT is required\n");
        return 2;
    }
    if (o->system && !o->chat) {
        fprintf(stderr, "patchbay tokenize: --system needs --chat\n");
        return 2;
    }
    pb_model *m = load(o);
    if (!m)
        return 1;
    int32_t *ids = NULL;
    int n = 0;
    pb_status st = o->chat ? pb_model_chat_tokenize(m, o->system, o->text, &ids, &n)
                           : pb_model_tokenize(m, o->text, 0, &ids, &n);
    int rc = 1;
    if (st != PB_OK) {
        fail("tokenize");
    } else {
        putchar('[');
        for (int i = 0; i < n; i++)
            printf("%s%d", i ? ", " : "", ids[i]);
        printf("]\n");
        rc = 0;
    }
    free(ids);
    pb_model_free(m);
    return rc;
}

static int cmd_forward(const options *o) {
    if (!o->out) {
        fprintf(stderr, "patchbay forward: --out DIR is required\n");
        return 2;
    }
    int32_t *ids;
    int T;
    if (!read_ids(o, &ids, &T))
        return 2;
    pb_model *m = load(o);
    if (!m) {
        free(ids);
        return 1;
    }
    const pb_model_config *c = pb_model_get_config(m);
    int rc = 1;
    pb_capture *cap = NULL;
    float *logits = malloc(sizeof(float) * (size_t)T * (size_t)c->vocab_size);
    if (!logits) {
        fprintf(stderr, "patchbay: out of memory for %d x %d logits\n", T, c->vocab_size);
        goto done;
    }
    if (o->hooks && pb_capture_create(&cap, m, o->hooks) != PB_OK) {
        fail("--hooks");
        rc = 2;
        goto done;
    }
    if (pb_forward(m, ids, T, logits, cap) != PB_OK) {
        fail("forward failed");
        goto done;
    }
    if (pb_out_dir_create(o->out, o->overwrite) != PB_OK) {
        fail("--out");
        goto done;
    }
    char path[4096];
    int64_t shape[3] = {T, c->vocab_size, 0};
    snprintf(path, sizeof path, "%s/logits.npy", o->out);
    if (pb_npy_write(path, logits, PB_NPY_F32, 2, shape) != PB_OK) {
        fail("writing logits");
        goto done;
    }
    for (int i = 0; i < pb_capture_count(cap); i++) {
        int n_dims;
        const float *data = pb_capture_data(cap, i, &n_dims, shape);
        snprintf(path, sizeof path, "%s/%s.npy", o->out, pb_capture_name(cap, i));
        if (pb_npy_write(path, data, PB_NPY_F32, n_dims, shape) != PB_OK) {
            fail("writing a hook point");
            goto done;
        }
    }
    fprintf(stderr, "patchbay: wrote logits (%d x %d) and %d hook points to %s\n", T, c->vocab_size,
            pb_capture_count(cap), o->out);
    rc = 0;
done:
    pb_capture_free(cap);
    free(logits);
    free(ids);
    pb_model_free(m);
    return rc;
}

/* Set by SIGTERM / SIGUSR1 / SIGINT; the sweep reads it between batches. */
static volatile int sweep_stop;

static void on_stop_signal(int sig) {
    (void)sig;
    sweep_stop = 1;
}

/* One signal asks for a checkpoint; the same signal again ends the process
 * at once (SA_RESETHAND). */
static void install_stop_handlers(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sa.sa_flags = SA_RESETHAND;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
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

/* Testing aid for tests/test_mpi.sh: PB_TEST_STALL=RANK:STAGE makes rank
 * RANK stop itself with SIGSTOP, as a hung node would, on reaching STAGE:
 * start (before MPI_Init), exchange (MPI up, the first heartbeats going
 * out), gather (its share done, before its report) or finish (rank 0 about
 * to write the results or the checkpoint). rank < 0: the launcher's. */
static void test_stall_point(const char *stage, int rank) {
    const char *want = getenv("PB_TEST_STALL");
    if (!want)
        return;
    if (rank < 0) {
        const char *e = getenv("OMPI_COMM_WORLD_RANK");
        rank = e ? atoi(e) : 0;
    }
    char here[64];
    snprintf(here, sizeof here, "%d:%s", rank, stage);
    if (strcmp(want, here) == 0)
        raise(SIGSTOP);
}

/* Rank 0 after every rank reported: results, or the checkpoint. */
static int finish_sweep(const options *o, pb_sweep *sweep, pb_status job, const char *checkpoint,
                        const pb_sweep_fingerprint *fp) {
    pb_sweep_summary summary = {0};
    pb_sweep_get_summary(sweep, &summary);
    fprintf(stderr, "patchbay: rows executed in this run: %lld (%lld more restored from the checkpoint, %lld "
                    "executed before it)\n",
            (long long)(summary.n_rows_executed - summary.n_rows_executed_restored),
            (long long)summary.n_rows_restored, (long long)summary.n_rows_executed_restored);
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
    /* The results hold everything the checkpoint did. */
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
    fprintf(stderr, "patchbay: rank %d (node-local %d) uses CUDA device %d of %d%s\n", ranks->rank,
            ranks->local_rank, o->model.load.device, count, o->model.device_given ? " (--device)" : "");
}

static int cmd_sweep(const options *o, pb_ranks *ranks) {
    if (!o->spec || !o->out) {
        fprintf(stderr, "patchbay sweep: --spec SPEC.json and --out DIR are required\n");
        return 2;
    }
    if (pb_out_dir_check(o->out, o->overwrite) != PB_OK)
        return fail("--out");
    /* The checkpoint lives beside DIR, never inside it: DIR stays empty
     * until the results exist. */
    char checkpoint[4200];
    if (o->checkpoint) {
        snprintf(checkpoint, sizeof checkpoint, "%s", o->checkpoint);
    } else {
        size_t n = strlen(o->out);
        while (n > 1 && o->out[n - 1] == '/')
            n--;
        snprintf(checkpoint, sizeof checkpoint, "%.*s.checkpoint", (int)n, o->out);
    }
    int have_checkpoint = access(checkpoint, F_OK) == 0;
    if (have_checkpoint && !o->resume) {
        fprintf(stderr,
                "patchbay: checkpoint %s exists (an interrupted sweep): pass --resume to continue it, or delete "
                "it to start over\n",
                checkpoint);
        return 2;
    }
    char *spec_text = NULL;
    if (pb_read_text_file(o->spec, &spec_text, NULL) != PB_OK) {
        fail("--spec");
        return 2;
    }
    /* Relative paths in the spec (a projection's direction file) are
     * relative to the spec's own folder. */
    char spec_dir[4096];
    snprintf(spec_dir, sizeof spec_dir, "%s", o->spec);
    char *slash = strrchr(spec_dir, '/');
    if (!slash)
        snprintf(spec_dir, sizeof spec_dir, ".");
    else if (slash == spec_dir)
        spec_dir[1] = 0;
    else
        *slash = 0;

    options local = *o;
    choose_rank_device(&local, ranks);
    pb_model *m = load(&local);
    if (!m) {
        free(spec_text);
        return 1;
    }
    int rc = 1, show = !o->no_progress && ranks->rank == 0, gathered = 0;
    pb_sweep *sweep = NULL;
    int64_t *share = NULL, n_share = 0;
    double *rank_seconds = NULL, *rank_costs = NULL;
    pb_progress progress;
    pb_progress_init(&progress, stderr, "sweep", -1);
    pb_sweep_options so = {.max_memory = o->max_memory, .metric_fn_residual_layer = -1, .stop = &sweep_stop};
    if (show) {
        so.progress = pb_progress_callback;
        so.progress_user = &progress;
    }
    pb_sweep_fingerprint fp;
    pb_status st = pb_sweep_create(&sweep, m, spec_text, spec_dir, &so);
    if (st != PB_OK) {
        fprintf(stderr, "patchbay: %s: %s\n", o->spec, pb_last_error());
        rc = st == PB_ERR_ARG ? 2 : 1;
        goto done;
    }
    if (pb_sweep_fingerprint_compute(&fp, pb_model_get_source(m), spec_text, o->model.load.backend,
                                     o->model.load.dtype) != PB_OK) {
        fail("fingerprinting the sweep's inputs");
        goto done;
    }
    pb_sweep_summary summary = {0};
    if (have_checkpoint) {
        if (pb_sweep_checkpoint_load(sweep, checkpoint, &fp) != PB_OK) {
            fail("--resume");
            goto done;
        }
        pb_sweep_get_summary(sweep, &summary);
        if (ranks->rank == 0)
            fprintf(stderr, "patchbay: resuming from %s: %lld of %lld rows already done\n", checkpoint,
                    (long long)summary.n_rows_restored, (long long)summary.n_rows);
    } else if (o->resume && ranks->rank == 0) {
        fprintf(stderr, "patchbay: --resume: no checkpoint at %s yet; starting from the beginning\n", checkpoint);
    }
    rank_seconds = calloc((size_t)ranks->size, sizeof *rank_seconds);
    rank_costs = calloc((size_t)ranks->size, sizeof *rank_costs);
    if (!rank_seconds || !rank_costs ||
        pb_sweep_partition(sweep, ranks->rank, ranks->size, &share, &n_share, rank_costs) != PB_OK) {
        fail("splitting the rows over the ranks");
        goto done;
    }
    if (pb_sweep_get_summary(sweep, &summary) == PB_OK && show)
        fprintf(stderr, "patchbay: %lld sites x %d pairs = %lld rows%s\n", (long long)summary.n_sites,
                summary.n_pairs, (long long)summary.n_rows, ranks->size > 1 ? " (rank 0's progress below)" : "");
    if (ranks->size > 1 && ranks->rank == 0) {
        fprintf(stderr, "patchbay: %d ranks; estimated cost per rank:", ranks->size);
        for (int k = 0; k < ranks->size; k++)
            fprintf(stderr, " %.4g", rank_costs[k]);
        fprintf(stderr, "\n");
    }
    if (show)
        pb_progress_update(&progress, summary.n_rows_done, summary.n_rows);
    pb_ranks_set_stage(ranks, PB_RANK_SWEEPING);
    double t0 = pb_now_seconds();
    st = pb_sweep_run_rows(sweep, share, n_share);
    double seconds = pb_now_seconds() - t0;
    if (show)
        pb_progress_finish(&progress);
    if (st != PB_OK && st != PB_ERR_INTERRUPTED)
        fprintf(stderr, "patchbay: rank %d: sweep failed: %s\n", ranks->rank, pb_last_error());
    pb_ranks_set_stage(ranks, PB_RANK_GATHERING);
    test_stall_point("gather", ranks->rank);
    pb_status job = st;
    gathered = 1;
    /* GPU ranks gather over NCCL; --gather nccl forces it (also for one
     * rank: a round trip through NCCL), --gather mpi forbids it. */
    int automatic = !o->gather || strcmp(o->gather, "auto") == 0;
    int nccl = automatic ? o->model.load.backend == PB_BACKEND_CUDA && ranks->size > 1
                         : strcmp(o->gather, "nccl") == 0;
    if (nccl && o->model.load.backend != PB_BACKEND_CUDA) {
        fprintf(stderr, "patchbay: --gather nccl needs --backend cuda\n");
        goto done;
    }
    if (nccl && ranks->rank == 0)
        fprintf(stderr, "patchbay: gathering %d %s' results over NCCL\n", ranks->size,
                ranks->size > 1 ? "ranks" : "rank");
    if ((nccl ? pb_ranks_gather_nccl : pb_ranks_gather)(ranks, sweep, share, n_share, st, seconds, &job,
                                                          rank_seconds) != PB_OK) {
        fail("gathering the ranks' results");
        abort_job(ranks, 1, "the gather failed (see above)");
        goto done;
    }
    pb_ranks_set_stage(ranks, PB_RANK_FINISHING);
    if (ranks->rank == 0) {
        if (ranks->size > 1) {
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
        test_stall_point("finish", ranks->rank);
        rc = finish_sweep(o, sweep, job, checkpoint, &fp);
    } else {
        rc = job == PB_OK ? 0 : job == PB_ERR_INTERRUPTED ? 3 : 1;
    }
done:
    /* A rank that failed before the gather ends the whole job at once. */
    if (!gathered)
        abort_job(ranks, rc, "failed before its share ran (see above)");
    /* Every rank leaves with rank 0's verdict. */
    pb_ranks_set_stage(ranks, PB_RANK_FINISHING);
    if (pb_ranks_exit_code(ranks, rc, &rc) != PB_OK) {
        fail("waiting for the job's verdict");
        abort_job(ranks, 1, "the job's end failed (see above)");
        rc = 1;
    }
    free(share);
    free(rank_seconds);
    free(rank_costs);
    pb_sweep_free(sweep);
    pb_model_free(m);
    free(spec_text);
    return rc;
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
        if (!(m = load(o)))
            return 1;
        c = pb_model_get_config(m);
    }
    printf("arch %s\nn_layers %d\nd_model %d\nn_heads %d\nn_kv_heads %d\nhead_dim %d\nd_mlp %d\nvocab_size %d\n"
           "context_length %d\nrms_eps %g\nrope_theta %g\nrope_scaling %d\nqkv_bias %d\ntied_embeddings %d\n"
           "bos_id %d\neos_id %d\n",
           c->arch, c->n_layers, c->d_model, c->n_heads, c->n_kv_heads, c->head_dim, c->d_mlp, c->vocab_size,
           c->context_length, (double)c->rms_eps, (double)c->rope_theta, (int)c->rope_scaling, c->has_qkv_bias,
           c->tied_embeddings, c->bos_id, c->eos_id);
    pb_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        fputs(pb_cli_intervene_usage, argc < 2 ? stderr : stdout);
        fputs(pb_cli_model_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("patchbay %s\n", PB_VERSION);
        return 0;
    }
    options o;
    const char *cmd = argv[1];
    /* Commands with their own option parsers. */
    if (strcmp(cmd, "refusal-analysis") == 0)
        return pb_cli_refusal_analysis(argc - 1, argv + 1);
    if (strcmp(cmd, "refusal-rate") == 0)
        return pb_cli_refusal_rate(argc - 1, argv + 1);
    if (strcmp(cmd, "direction") == 0)
        return pb_cli_direction(argc - 1, argv + 1);
    if (strcmp(cmd, "generate") == 0)
        return pb_cli_generate(argc - 1, argv + 1);
    if (strcmp(cmd, "forward") && strcmp(cmd, "sweep") && strcmp(cmd, "info") && strcmp(cmd, "tokenize")) {
        fprintf(stderr, "patchbay: unknown command '%s'\n\n%s", cmd, usage_text);
        return 2;
    }
    if (!parse_options(argc, argv, &o))
        return 2;
    if (strcmp(cmd, "forward") == 0)
        return cmd_forward(&o);
    if (strcmp(cmd, "sweep") == 0) {
        /* Before MPI_Init: a preemption signal that arrives while the ranks
         * start (mpirun forwards SIGUSR1 to them at any time) must ask for a
         * checkpoint, not kill the rank with the default action. OpenMPI
         * keeps handlers installed before MPI_Init. */
        install_stop_handlers();
        pb_ranks ranks;
        pb_ranks_options rank_options = {.timeout_s = o.rank_timeout, .on_stuck = on_rank_stuck, .user = &ranks};
        test_stall_point("start", -1);
        if (pb_ranks_init(&ranks, &argc, &argv, &rank_options) != PB_OK) {
            fail("starting ranks");
            abort_job(&ranks, 1, "could not start");
            pb_ranks_finalize(&ranks);
            return 1;
        }
        test_stall_point("exchange", ranks.rank);
        int rc = cmd_sweep(&o, &ranks);
        pb_ranks_finalize(&ranks);
        return rc;
    }
    if (strcmp(cmd, "tokenize") == 0)
        return cmd_tokenize(&o);
    return cmd_info(&o);
}
