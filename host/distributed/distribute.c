/* Ranks for sweeps: detection (MPI or Slurm), cost-balanced contiguous row
 * shares, and the gather of per-row results to rank 0. Messages are
 * point-to-point and polled (MPI_Iprobe / MPI_Test) rather than blocking
 * collectives, and every wait asks the rank watchdog (rank_watchdog.h)
 * whether a rank went silent, so a rank that stops answering is named and
 * the job ended instead of hung. A rank killed outright is caught earlier by
 * the launcher (mpirun aborts the job; srun with --kill-on-bad-exit). Every
 * MPI call here is made under the watchdog's lock (mpi_enter / mpi_leave). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifdef PB_HAVE_MPI
#include <mpi.h>
#endif

#include "attribution/atp.h"
#include "backend/backend_cuda.h"
#include "distributed/distribute.h"
#include "util/internal.h"
#include "model/model.h"
#include "distributed/rank_device.h"
#include "distributed/rank_watchdog.h"
#include "patching/sweep_access.h"

enum { TAG_REPORT = 7101, TAG_EXIT = 7102, TAG_BYE = 7104 }; /* 7103: rank_watchdog.c's heartbeat */
enum { REPORT_HEADER = 8 };                                  /* doubles before the records of a report */

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    if (!v || !*v)
        return fallback;
    char *end;
    long x = strtol(v, &end, 10);
    return *end || x < 0 || x > 1000000 ? fallback : (int)x;
}

/* CUDA_VISIBLE_DEVICES="3,5,6" and local rank 1 -> "5": one GPU per rank. */
static void narrow_visible_gpus(int local_rank) {
    const char *v = getenv("CUDA_VISIBLE_DEVICES");
    if (!v || !strchr(v, ','))
        return; /* unset, or the launcher already gave this task one GPU */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", v);
    int i = 0;
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save), i++)
        if (i == local_rank) {
            setenv("CUDA_VISIBLE_DEVICES", tok, 1);
            return;
        }
}

const char *pb_rank_stage_name(int stage) {
    switch (stage) {
    case PB_RANK_STARTING: return "while starting (loading the model, planning its share)";
    case PB_RANK_SWEEPING: return "while running its share of the sweep";
    case PB_RANK_GATHERING: return "while gathering the results";
    case PB_RANK_FINISHING: return "while finishing (rank 0 writing the results or the checkpoint, the others waiting)";
    }
    return "in an unknown stage";
}

#ifdef PB_HAVE_MPI
/* The launcher's rank and size, before MPI_Init can say them. */
static void launcher_rank(int *rank, int *size) {
    *rank = env_int("OMPI_COMM_WORLD_RANK", env_int("PMIX_RANK", env_int("PMI_RANK", env_int("SLURM_PROCID", 0))));
    *size = env_int("OMPI_COMM_WORLD_SIZE", env_int("PMI_SIZE", env_int("SLURM_NTASKS", 1)));
    if (*size < 1)
        *size = 1;
    if (*rank >= *size)
        *rank = 0;
}

static pb_status init_mpi(pb_ranks *r, int *argc, char ***argv, const pb_ranks_options *o) {
    int rank, size;
    launcher_rank(&rank, &size);
    PB_TRY(pb_rank_watchdog_start(&r->watch, rank, size, r->timeout_s, o ? o->on_stuck : NULL, o ? o->user : NULL));
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) != MPI_SUCCESS) {
        pb_rank_watchdog_stop(r->watch);
        r->watch = NULL;
        return pb_fail(PB_ERR_UNSUPPORTED, "MPI_Init_thread failed");
    }
    r->mpi = 1;
    MPI_Comm_rank(MPI_COMM_WORLD, &r->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &r->size);
    pb_rank_watchdog_running(r->watch, r->rank, r->size);
    if (provided < MPI_THREAD_SERIALIZED)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "this MPI provides thread level %d; the rank watchdog calls MPI from its own thread and "
                       "needs MPI_THREAD_SERIALIZED (%d) or more",
                       provided, MPI_THREAD_SERIALIZED);
    return PB_OK;
}
#endif

pb_status pb_ranks_init(pb_ranks *r, int *argc, char ***argv, const pb_ranks_options *options) {
    memset(r, 0, sizeof *r);
    r->size = 1;
    r->timeout_s = options && options->timeout_s > 0 ? options->timeout_s : 120.0;
    int launched = getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_SIZE") ||
                   env_int("SLURM_NTASKS", 1) > 1;
    const int env_local_rank = pb_rank_local_from_env(pb_env_process);
    r->local_rank = env_local_rank < 0 ? 0 : env_local_rank;
    if (!launched)
        return PB_OK;
#ifdef PB_HAVE_MPI
    PB_TRY(init_mpi(r, argc, argv, options));
    if (env_local_rank < 0) {
        /* a launcher that does not say: a blocking collective, under the
         * watchdog's lock like every MPI call of this thread; every rank
         * has just left MPI_Init, so none is missing yet */
        pb_rank_watchdog_lock(r->watch);
        pb_status st = pb_rank_local_from_mpi(&r->local_rank);
        pb_rank_watchdog_unlock(r->watch);
        PB_TRY(st);
    }
    narrow_visible_gpus(r->local_rank);
    return PB_OK;
#else
    (void)argc;
    (void)argv;
    int tasks = env_int("SLURM_NTASKS", env_int("OMPI_COMM_WORLD_SIZE", 1));
    if (tasks > 1)
        return pb_fail(PB_ERR_UNSUPPORTED,
                       "launched as %d tasks, but this build has no MPI to gather their results (install "
                       "libopenmpi-dev and rebuild), or run one task",
                       tasks);
    narrow_visible_gpus(r->local_rank);
    return PB_OK;
#endif
}

void pb_ranks_finalize(pb_ranks *r) {
#ifdef PB_HAVE_MPI
    if (r->mpi) {
        pb_rank_watchdog_finalizing(r->watch);
        MPI_Finalize();
    }
    pb_rank_watchdog_stop(r->watch);
    r->watch = NULL;
#endif
    r->mpi = 0;
}

void pb_ranks_abort(pb_ranks *r, int code) {
#ifdef PB_HAVE_MPI
    if (r->mpi && r->watch && pb_rank_watchdog_lock_running(r->watch))
        MPI_Abort(MPI_COMM_WORLD, code); /* holds the lock: no other MPI call runs beside it */
#endif
    (void)r;
    (void)code;
}

void pb_ranks_set_stage(pb_ranks *r, pb_rank_stage stage) {
#ifdef PB_HAVE_MPI
    if (r->watch)
        pb_rank_watchdog_set_stage(r->watch, (int)stage);
#endif
    (void)r;
    (void)stage;
}

#ifdef PB_HAVE_MPI
static void nap(void) {
    struct timespec ts = {0, 5 * 1000 * 1000};
    nanosleep(&ts, NULL);
}

static void mpi_enter(pb_ranks *r) { pb_rank_watchdog_lock(r->watch); }
static void mpi_leave(pb_ranks *r) { pb_rank_watchdog_unlock(r->watch); }

/* PB_ERR_IO with the watchdog's message once it found a rank stuck; PB_OK
 * after a short nap otherwise (the caller polls again). */
static pb_status wait_a_little(pb_ranks *r) {
    char message[512];
    if (pb_rank_watchdog_failed(r->watch, message, sizeof message))
        return pb_fail(PB_ERR_IO, "%s", message);
    nap();
    return PB_OK;
}

/* Polls req to completion (the lock is taken per test, not held between). */
static pb_status wait_request(pb_ranks *r, MPI_Request *req) {
    for (;;) {
        int done = 0;
        mpi_enter(r);
        MPI_Test(req, &done, MPI_STATUS_IGNORE);
        mpi_leave(r);
        if (done)
            return PB_OK;
        PB_TRY(wait_a_little(r));
    }
}
#endif

/* ---- shares ------------------------------------------------------------- */

/* cost (n_all) of each row for the exact engine: its own row cost, the
 * first pending row of a pair also its two cache forwards; done rows 0. */
static void exact_costs(const pb_sweep *s, double *cost, int64_t n_all, int64_t n_sites) {
    const pb_model_config *c = &pb_sweep_model(s)->cfg;
    int last_pair = -1;
    for (int64_t i = 0; i < n_all; i++) {
        cost[i] = pb_sweep_row_state(s, i) != 0 ? 0.0 : pb_sweep_row_cost(s, i);
        int pair = (int)(i / n_sites);
        if (cost[i] > 0 && pair != last_pair && !pb_sweep_pair_ready(s, pair)) {
            /* the first pending row of a pair pays for its two cache forwards */
            const pb_pair_spec *p = &pb_sweep_spec_of(s)->pairs[pair];
            cost[i] += (double)c->n_layers * (p->base.T + p->source.T);
            last_pair = pair;
        }
    }
}

/* cost (n_all) of each row for an estimate ("atp", "atp*"): a pair's
 * passes (pb_atp_flops) spread evenly over its sites when any is pending
 * (the partition then gives the pair whole to one rank). */
static void estimate_costs(const pb_sweep *s, double *cost, int64_t n_all, int64_t n_sites) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    for (int64_t i = 0; i < n_all; i += n_sites) {
        int pending = 0;
        for (int64_t k = i; k < i + n_sites; k++)
            pending |= pb_sweep_row_state(s, k) == 0;
        double each = pending
                          ? pb_atp_flops(&pb_sweep_model(s)->cfg, spec->pairs[i / n_sites].base.T, spec->grad_drop) /
                                (double)n_sites
                          : 0.0;
        for (int64_t k = i; k < i + n_sites; k++)
            cost[k] = each;
    }
}

/* The rank whose slice of the cost line holds a midpoint. */
static int owner_at(double mid, double total, int64_t i, int64_t n_all, int size) {
    int owner = total > 0 ? (int)floor(mid / total * size) : (int)((double)i / (double)n_all * size);
    return owner < 0 ? 0 : owner >= size ? size - 1 : owner;
}

pb_status pb_sweep_partition(const pb_sweep *s, int rank, int size, int64_t **rows, int64_t *n_rows, double *costs) {
    if (!s || !rows || !n_rows || size < 1 || rank < 0 || rank >= size)
        return pb_fail(PB_ERR_ARG, "pb_sweep_partition: rank %d of %d", rank, size);
    *rows = NULL;
    *n_rows = 0;
    int64_t n_all = pb_sweep_row_count(s), n_sites = pb_sweep_site_count(s);
    double *cost = malloc(sizeof(double) * (size_t)(n_all ? n_all : 1));
    if (!cost)
        return pb_fail(PB_ERR_OOM, "out of memory partitioning %lld rows", (long long)n_all);
    int estimate = pb_sweep_spec_of(s)->method != PB_METHOD_EXACT;
    (estimate ? estimate_costs : exact_costs)(s, cost, n_all, n_sites);
    double total = 0.0;
    for (int64_t i = 0; i < n_all; i++)
        total += cost[i];
    if (costs)
        for (int k = 0; k < size; k++)
            costs[k] = 0.0;
    int64_t first = -1, last = -1;
    double before = 0.0;
    for (int64_t i = 0; i < n_all; i++) {
        /* a row belongs to the rank whose slice of the cost line holds its
         * midpoint; an estimate's row, to the rank holding its pair's */
        double mid = before + cost[i] / 2;
        if (estimate)
            mid = before - cost[i] * (double)(i % n_sites) + cost[i] * (double)n_sites / 2;
        int owner = owner_at(mid, total, estimate ? i - i % n_sites : i, n_all, size);
        before += cost[i];
        if (costs)
            costs[owner] += cost[i];
        if (owner == rank) {
            if (first < 0)
                first = i;
            last = i;
        }
    }
    free(cost);
    if (first < 0)
        return PB_OK;
    *rows = malloc(sizeof(int64_t) * (size_t)(last - first + 1));
    if (!*rows)
        return pb_fail(PB_ERR_OOM, "out of memory for a share of %lld rows", (long long)(last - first + 1));
    for (int64_t i = first; i <= last; i++)
        (*rows)[i - first] = i;
    *n_rows = last - first + 1;
    return PB_OK;
}

/* ---- gather --------------------------------------------------------------- */

static int status_rank(pb_status s) { return s == PB_OK ? 0 : s == PB_ERR_INTERRUPTED ? 1 : 2; }

/* report: [status, n_row_records, n_pair_records, rows executed, flops, seconds, rank, 0],
 * then (row, state, patched) triples, then (pair, base, source) triples. */
static double *make_report(const pb_sweep *s, const int64_t *share, int64_t n_share, pb_status st, double seconds,
                           int rank, int *count) {
    int64_t n_row = 0, n_pair = 0, n_sites = pb_sweep_site_count(s), executed;
    int n_pairs = pb_sweep_spec_of(s)->n_pairs;
    for (int64_t i = 0; i < n_share; i++)
        n_row += pb_sweep_row_state(s, share[i]) != 0;
    for (int p = 0; p < n_pairs; p++)
        n_pair += pb_sweep_pair_ready(s, p);
    int64_t n = REPORT_HEADER + 3 * (n_row + n_pair);
    if (n > 0x7fffffff)
        return NULL;
    double *m = malloc(sizeof(double) * (size_t)n);
    if (!m)
        return NULL;
    m[0] = (double)st;
    m[1] = (double)n_row;
    m[2] = (double)n_pair;
    double flops;
    pb_sweep_work_done_here(s, &executed, &flops);
    m[3] = (double)executed;
    m[4] = flops;
    m[5] = seconds;
    m[6] = rank;
    m[7] = 0;
    double *w = m + REPORT_HEADER;
    for (int64_t i = 0; i < n_share; i++) {
        int64_t row = share[i];
        int state = pb_sweep_row_state(s, row);
        if (state == 0)
            continue;
        *w++ = (double)row;
        *w++ = state;
        pb_sweep_get_row(s, (int)(row / n_sites), row % n_sites, w++, NULL);
    }
    for (int p = 0; p < n_pairs; p++) {
        if (!pb_sweep_pair_ready(s, p))
            continue;
        *w++ = p;
        pb_sweep_get_pair(s, p, &w[0], &w[1]);
        w += 2;
    }
    *count = (int)n;
    return m;
}

static pb_status merge_report(pb_sweep *s, const double *m, int count) {
    int64_t n_row = (int64_t)m[1], n_pair = (int64_t)m[2];
    if (count != REPORT_HEADER + 3 * (n_row + n_pair))
        return pb_fail(PB_ERR_FORMAT, "rank %d sent a report of %d values for %lld rows and %lld pairs", (int)m[6],
                       count, (long long)n_row, (long long)n_pair);
    const double *w = m + REPORT_HEADER;
    for (int64_t i = 0; i < n_row; i++, w += 3)
        PB_TRY(pb_sweep_set_row(s, (int64_t)w[0], w[2], w[1] == 2, 0));
    for (int64_t i = 0; i < n_pair; i++, w += 3)
        if (!pb_sweep_pair_ready(s, (int)w[0]))
            PB_TRY(pb_sweep_set_pair(s, (int)w[0], w[1], w[2]));
    pb_sweep_add_work(s, (int64_t)m[3], m[4]);
    return PB_OK;
}

#ifdef PB_HAVE_MPI
/* Rank k > 0: its report to rank 0, sent when rank 0 takes it. */
static pb_status send_report(pb_ranks *r, pb_sweep *s, const int64_t *share, int64_t n_share, pb_status own_status,
                             double own_seconds) {
    int count = 0;
    double *m = make_report(s, share, n_share, own_status, own_seconds, r->rank, &count);
    if (!m)
        return pb_fail(PB_ERR_OOM, "rank %d: out of memory for its report", r->rank);
    MPI_Request req;
    mpi_enter(r);
    MPI_Isend(m, count, MPI_DOUBLE, 0, TAG_REPORT, MPI_COMM_WORLD, &req);
    mpi_leave(r);
    pb_status st = wait_request(r, &req);
    if (st != PB_OK) {
        /* the send may still read m: MPI_Abort follows, so leaving it is safe */
        return st;
    }
    free(m);
    return PB_OK;
}

/* Rank 0: the next report that arrived, malloc'd in *out (NULL when none yet). */
static pb_status receive_report(pb_ranks *r, double **out, int *count, int *source) {
    *out = NULL;
    int flag = 0;
    MPI_Status st;
    mpi_enter(r);
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_REPORT, MPI_COMM_WORLD, &flag, &st);
    if (flag)
        MPI_Get_count(&st, MPI_DOUBLE, count);
    mpi_leave(r);
    if (!flag)
        return PB_OK;
    double *m = malloc(sizeof(double) * (size_t)(*count > 0 ? *count : 1));
    if (!m)
        return pb_fail(PB_ERR_OOM, "out of memory for rank %d's report", st.MPI_SOURCE);
    mpi_enter(r);
    MPI_Recv(m, *count, MPI_DOUBLE, st.MPI_SOURCE, TAG_REPORT, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    mpi_leave(r);
    *out = m;
    *source = st.MPI_SOURCE;
    return PB_OK;
}

/* Rank 0: one report from every other rank, for as long as they are heard. */
static pb_status collect_reports(pb_ranks *r, pb_sweep *s, pb_status own_status, pb_status *job_status,
                                 double *rank_seconds) {
    char *got = calloc((size_t)r->size, 1);
    if (!got)
        return pb_fail(PB_ERR_OOM, "out of memory");
    int n_got = 0, worst = status_rank(own_status);
    pb_status merged = PB_OK, st = PB_OK;
    while (st == PB_OK && n_got < r->size - 1) {
        double *m = NULL;
        int count = 0, source = 0;
        st = receive_report(r, &m, &count, &source);
        if (st == PB_OK && !m)
            st = wait_a_little(r);
        if (!m || got[source]) {
            free(m);
            continue;
        }
        got[source] = 1;
        n_got++;
        int sr = status_rank((pb_status)(int)m[0]);
        if (sr > worst || (sr == worst && sr == 2)) {
            worst = sr;
            *job_status = (pb_status)(int)m[0];
        }
        if (rank_seconds)
            rank_seconds[source] = m[5];
        if (merged == PB_OK)
            merged = merge_report(s, m, count);
        free(m);
    }
    free(got);
    if (worst == 0)
        *job_status = PB_OK;
    else if (worst == 1 && status_rank(*job_status) != 1)
        *job_status = PB_ERR_INTERRUPTED;
    return st != PB_OK ? st : merged;
}
#endif

pb_status pb_ranks_gather(pb_ranks *r, pb_sweep *s, const int64_t *share, int64_t n_share, pb_status own_status,
                          double own_seconds, pb_status *job_status, double *rank_seconds) {
    *job_status = own_status;
    if (rank_seconds)
        rank_seconds[r->rank] = own_seconds;
    if (r->size == 1)
        return PB_OK;
#ifdef PB_HAVE_MPI
    if (r->rank != 0)
        return send_report(r, s, share, n_share, own_status, own_seconds);
    return collect_reports(r, s, own_status, job_status, rank_seconds);
#else
    (void)s;
    (void)share;
    (void)n_share;
    return pb_fail(PB_ERR_UNSUPPORTED, "several ranks without MPI");
#endif
}

/* ---- gather over NCCL (GPU ranks) ------------------------------------------ */

/* The largest report any rank can send: its share's rows and every pair. */
static pb_status max_report_count(const pb_sweep *s, int size, int64_t *out) {
    int64_t max_rows = 0;
    for (int k = 0; k < size; k++) {
        int64_t *rows = NULL, n = 0;
        PB_TRY(pb_sweep_partition(s, k, size, &rows, &n, NULL));
        free(rows);
        max_rows = n > max_rows ? n : max_rows;
    }
    *out = REPORT_HEADER + 3 * (max_rows + pb_sweep_spec_of(s)->n_pairs);
    return PB_OK;
}

/* Rank 0's ncclUniqueId to every rank: a non-blocking broadcast polled
 * while the watchdog hears every rank, so a rank that never arrives is a
 * message, not a hang. */
static pb_status share_nccl_id(pb_ranks *r, unsigned char id[PB_NCCL_ID_BYTES]) {
    if (r->rank == 0)
        PB_TRY(pb_nccl_id_create(id));
    if (r->size == 1)
        return PB_OK;
#ifdef PB_HAVE_MPI
    MPI_Request req;
    mpi_enter(r);
    MPI_Ibcast(id, PB_NCCL_ID_BYTES, MPI_BYTE, 0, MPI_COMM_WORLD, &req);
    mpi_leave(r);
    if (wait_request(r, &req) != PB_OK)
        return pb_fail_context(PB_ERR_IO, "rank %d: the NCCL id broadcast from rank 0 did not complete", r->rank);
    return PB_OK;
#else
    return pb_fail(PB_ERR_UNSUPPORTED, "several ranks without MPI");
#endif
}

pb_status pb_ranks_gather_nccl(pb_ranks *r, pb_sweep *s, const int64_t *share, int64_t n_share, pb_status own_status,
                               double own_seconds, pb_status *job_status, double *rank_seconds) {
    *job_status = own_status;
    if (rank_seconds)
        rank_seconds[r->rank] = own_seconds;
    const pb_model *model = pb_sweep_model(s);
    pb_backend *b = model->backend;
    if (model->backend_kind != PB_BACKEND_CUDA)
        return pb_fail(PB_ERR_ARG, "rank %d: the NCCL gather needs the CUDA backend", r->rank);
    /* Makes the backend's device current (the communicator binds to it)
     * and drains its stream. */
    PB_TRY(b->ops->synchronize(b));
    int64_t count = 0;
    PB_TRY(max_report_count(s, r->size, &count));
    int own_count = 0;
    double *own = make_report(s, share, n_share, own_status, own_seconds, r->rank, &own_count);
    double *host = calloc((size_t)count * (size_t)(r->size + 1), sizeof(double));
    if (!own || !host) {
        free(own);
        free(host);
        return pb_fail(PB_ERR_OOM, "rank %d: out of memory for its report", r->rank);
    }
    /* host: this rank's report padded to `count`, then every rank's */
    memcpy(host, own, sizeof(double) * (size_t)own_count);
    free(own);
    double *all = host + count;
    void *device = NULL;
    pb_nccl_gather *g = NULL;
    unsigned char id[PB_NCCL_ID_BYTES] = {0};
    double wait_s = own_seconds + r->timeout_s;
    pb_status st = share_nccl_id(r, id);
    if (st == PB_OK)
        st = pb_nccl_gather_create(&g, id, r->rank, r->size, wait_s);
    if (st == PB_OK)
        st = b->ops->alloc(b, &device, sizeof(double) * (size_t)count * (size_t)(r->size + 1));
    double *send = device, *recv = send ? send + count : NULL;
    if (st == PB_OK)
        st = b->ops->upload(b, send, host, sizeof(double) * (size_t)count);
    /* NCCL runs on its own stream: the upload, queued on the backend's, must
     * have landed before it reads `send` */
    if (st == PB_OK)
        st = b->ops->synchronize(b);
    if (st == PB_OK)
        st = pb_nccl_gather_doubles(g, send, recv, (size_t)count);
    if (st == PB_OK)
        st = b->ops->download(b, all, recv, sizeof(double) * (size_t)count * (size_t)r->size);
    b->ops->free(b, device);
    pb_nccl_gather_free(g);
    if (st != PB_OK) {
        free(host);
        return pb_fail_context(st, "rank %d: NCCL gather failed", r->rank);
    }
    /* Every rank's slot must hold the report that rank sent; this rank's
     * own slot is checked byte for byte (it proves the data went through). */
    if (memcmp(all + (size_t)r->rank * (size_t)count, host, sizeof(double) * (size_t)count) != 0) {
        free(host);
        return pb_fail(PB_ERR_CUDA, "rank %d: NCCL all-gather returned this rank's report altered", r->rank);
    }
    pb_status merged = PB_OK;
    int worst = status_rank(own_status);
    for (int k = 0; r->rank == 0 && k < r->size; k++) {
        const double *m = all + (size_t)k * (size_t)count;
        if (k == 0)
            continue;
        if ((int)m[6] != k) {
            merged = pb_fail(PB_ERR_FORMAT, "NCCL gather: slot %d holds rank %d's report", k, (int)m[6]);
            break;
        }
        int sr = status_rank((pb_status)(int)m[0]);
        if (sr > worst || (sr == worst && sr == 2)) {
            worst = sr;
            *job_status = (pb_status)(int)m[0];
        }
        if (rank_seconds)
            rank_seconds[k] = m[5];
        int64_t n_records = (int64_t)m[1] + (int64_t)m[2];
        if (n_records < 0 || REPORT_HEADER + 3 * n_records > count) {
            merged = pb_fail(PB_ERR_FORMAT, "NCCL gather: rank %d's report claims %lld records", k,
                             (long long)n_records);
            break;
        }
        merged = merge_report(s, m, (int)(REPORT_HEADER + 3 * n_records));
        if (merged != PB_OK)
            break;
    }
    free(host);
    if (worst == 0)
        *job_status = PB_OK;
    else if (worst == 1 && status_rank(*job_status) != 1)
        *job_status = PB_ERR_INTERRUPTED;
    return merged;
}

#ifdef PB_HAVE_MPI
/* Rank 0: the exit code to every rank, then each one's acknowledgement. */
static pb_status send_exit_code(pb_ranks *r, int code) {
    int *value = malloc(sizeof(int) * (size_t)r->size);
    MPI_Request *reqs = malloc(sizeof(MPI_Request) * (size_t)r->size);
    if (!value || !reqs) {
        free(value);
        free(reqs);
        return pb_fail(PB_ERR_OOM, "out of memory");
    }
    pb_status st = PB_OK;
    for (int k = 1; k < r->size; k++) {
        value[k] = code;
        mpi_enter(r);
        MPI_Isend(&value[k], 1, MPI_INT, k, TAG_EXIT, MPI_COMM_WORLD, &reqs[k]);
        mpi_leave(r);
    }
    for (int k = 1; k < r->size && st == PB_OK; k++)
        st = wait_request(r, &reqs[k]);
    for (int k = 1; k < r->size && st == PB_OK; k++) {
        int bye = 0;
        mpi_enter(r);
        MPI_Irecv(&bye, 1, MPI_INT, k, TAG_BYE, MPI_COMM_WORLD, &reqs[k]);
        mpi_leave(r);
        st = wait_request(r, &reqs[k]);
        if (st == PB_OK)
            pb_rank_watchdog_forget(r->watch, k);
    }
    /* on failure MPI_Abort follows, which releases requests still reading value */
    if (st == PB_OK)
        free(value);
    free(reqs);
    return st;
}

/* Rank k > 0: rank 0's exit code, then the acknowledgement. */
static pb_status receive_exit_code(pb_ranks *r, int *out) {
    MPI_Request req;
    mpi_enter(r);
    MPI_Irecv(out, 1, MPI_INT, 0, TAG_EXIT, MPI_COMM_WORLD, &req);
    mpi_leave(r);
    PB_TRY(wait_request(r, &req));
    int bye = 0;
    mpi_enter(r);
    MPI_Isend(&bye, 1, MPI_INT, 0, TAG_BYE, MPI_COMM_WORLD, &req);
    mpi_leave(r);
    PB_TRY(wait_request(r, &req));
    pb_rank_watchdog_forget(r->watch, 0);
    return PB_OK;
}
#endif

pb_status pb_ranks_exit_code(pb_ranks *r, int code, int *out) {
    *out = code;
    if (r->size == 1)
        return PB_OK;
#ifdef PB_HAVE_MPI
    if (r->rank == 0)
        return send_exit_code(r, code);
    return receive_exit_code(r, out);
#else
    return pb_fail(PB_ERR_UNSUPPORTED, "several ranks without MPI");
#endif
}
