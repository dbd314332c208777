/* The checked backend: the CPU backend's arithmetic behind the boundary a
 * device backend has, so that the bugs only a GPU run would show are found
 * on any machine (--backend checked; tests run the CUDA tests' harnesses on
 * it). Its memory is guarded (guarded_memory.h): not host memory
 * (host_memory 0), inaccessible to the host between ops, NaN until written.
 * Before each op runs, every pointer it is handed must lie in a live block
 * with the bytes the op reads or writes; buffers an op writes may not
 * overlap its other buffers except where backend.h allows it; host-side
 * arguments (upload's source, jobs, regions) must not be its memory. The
 * streamed weights' lanes are asynchronous as on a GPU: a lane's copies run
 * at its lane_wait (or a synchronize), from source bytes that must not have
 * changed, and an op touching bytes a lane has still to write fails.
 * Violations are PB_ERR_ARG naming the op and the argument; those found
 * where nothing can be returned (free, unpin) fail every later op. One
 * caller at a time. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/backend.h"
#include "backend/guarded_memory.h"
#include "formats/dtype.h"
#include "util/host_memory.h"
#include "util/array.h"
#include "util/internal.h"

enum { USE_WRITE = 1, USE_OPTIONAL = 2 };

/* One buffer an op is handed: bytes from p, written or only read; it may
 * be the very buffer (same start and size) of the uses in may_alias (bits
 * by index). */
typedef struct use {
    const char *name;
    const void *p;
    size_t bytes;
    unsigned flags;
    unsigned may_alias;
} use;

typedef struct lane_copy {
    char *dst;
    const void *src;
    size_t bytes;
    uint64_t hash;
} lane_copy;

typedef struct lane {
    lane_copy *copies;
    int n;
    size_t cap;
    int released; /* lane_release since the last lane_wait: uploads may go */
} lane;

typedef struct checked_backend {
    pb_backend base;
    pb_backend *inner;
    pb_guarded_memory memory;
    lane lanes[2];
    const void **pinned;
    int n_pinned;
    size_t cap_pinned;
    pb_status sticky;
    char sticky_message[PB_ERROR_CAPACITY];
} checked_backend;

static checked_backend *self_of(pb_backend *backend) { return (checked_backend *)backend; }

static const pb_backend_ops *inner_ops(const checked_backend *c) { return c->inner->ops; }

/* ---- checks ------------------------------------------------------------ */

static void set_sticky(checked_backend *c, const char *message) {
    if (c->sticky != PB_OK)
        return;
    c->sticky = PB_ERR_ARG;
    snprintf(c->sticky_message, sizeof c->sticky_message, "%s", message);
}

static int overlaps(const char *a, size_t na, const char *b, size_t nb) { return a < b + nb && b < a + na; }

/* The lane copy still to run that overlaps [p, p + bytes), or -1. */
static int pending_lane(const checked_backend *c, const void *p, size_t bytes) {
    for (int k = 0; k < 2; k++)
        for (int i = 0; i < c->lanes[k].n; i++)
            if (overlaps(c->lanes[k].copies[i].dst, c->lanes[k].copies[i].bytes, p, bytes))
                return k;
    return -1;
}

/* One use in a live block, whole, clear of the lanes' pending copies. */
static pb_status check_use(checked_backend *c, const char *op, const use *u, pb_guarded_block **block) {
    *block = NULL;
    if (!u->p)
        return (u->flags & USE_OPTIONAL) ? PB_OK : pb_fail(PB_ERR_ARG, "checked backend: %s: %s is NULL", op, u->name);
    pb_guarded_block *b = pb_guarded_find(&c->memory, u->p);
    if (!b)
        return pb_fail(PB_ERR_ARG,
                       "checked backend: %s: %s (%p) is not this backend's memory (host memory where device memory "
                       "belongs?)",
                       op, u->name, u->p);
    if (!b->live)
        return pb_fail(PB_ERR_ARG, "checked backend: %s: %s (%p) points into backend memory freed earlier", op, u->name,
                       u->p);
    size_t offset = (size_t)((const char *)u->p - b->base);
    if (u->bytes > b->bytes - offset)
        return pb_fail(PB_ERR_ARG,
                       "checked backend: %s: %s needs %zu bytes from offset %zu of a %zu-byte allocation (%zu past "
                       "its end)",
                       op, u->name, u->bytes, offset, b->bytes, u->bytes - (b->bytes - offset));
    int k = pending_lane(c, u->p, u->bytes);
    if (k >= 0)
        return pb_fail(PB_ERR_ARG,
                       "checked backend: %s: %s overlaps bytes lane %d's upload may still be writing (no lane_wait "
                       "since its lane_upload)",
                       op, u->name, k);
    *block = b;
    return PB_OK;
}

static int by_start(const void *a, const void *b) {
    const use *x = *(const use *const *)a, *y = *(const use *const *)b;
    return (const char *)x->p < (const char *)y->p ? -1 : (const char *)x->p > (const char *)y->p;
}

/* Written buffers overlap no other buffer, except as may_alias allows. */
static pb_status check_overlaps(const char *op, const use *uses, int n) {
    const use **order = malloc(sizeof *order * (size_t)(n ? n : 1));
    if (!order)
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory");
    int m = 0;
    for (int i = 0; i < n; i++)
        if (uses[i].p && uses[i].bytes)
            order[m++] = &uses[i];
    qsort(order, (size_t)m, sizeof *order, by_start);
    pb_status status = PB_OK;
    for (int i = 0; i < m && status == PB_OK; i++) {
        const use *a = order[i];
        for (int j = i + 1; j < m && (const char *)order[j]->p < (const char *)a->p + a->bytes; j++) {
            const use *b = order[j];
            if (!((a->flags | b->flags) & USE_WRITE))
                continue;
            unsigned ia = (unsigned)(a - uses), ib = (unsigned)(b - uses);
            int same = a->p == b->p && a->bytes == b->bytes;
            int allowed = ia < 32 && ib < 32 && ((a->may_alias >> ib) & 1 || (b->may_alias >> ia) & 1);
            if (!(same && allowed)) {
                status = pb_fail(PB_ERR_ARG, "checked backend: %s: %s and %s overlap (%s)", op, a->name, b->name,
                                 same ? "the same buffer, which this op does not allow" : "in part");
                break;
            }
        }
    }
    free(order);
    return status;
}

/* Checks an op's uses and opens their blocks for it; leave() closes them. */
static pb_status enter(checked_backend *c, const char *op, const use *uses, int n) {
    if (c->sticky != PB_OK)
        return pb_fail(c->sticky, "%s", c->sticky_message);
    pb_guarded_block **blocks = malloc(sizeof *blocks * (size_t)(n ? n : 1));
    if (!blocks)
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory");
    pb_status status = PB_OK;
    for (int i = 0; i < n && status == PB_OK; i++)
        status = uses[i].bytes ? check_use(c, op, &uses[i], &blocks[i]) : (blocks[i] = NULL, PB_OK);
    if (status == PB_OK)
        status = check_overlaps(op, uses, n);
    for (int i = 0; i < n && status == PB_OK; i++)
        if (blocks[i])
            status = pb_guarded_open(&c->memory, blocks[i]);
    free(blocks);
    if (status != PB_OK)
        pb_guarded_close_all(&c->memory);
    return status;
}

static pb_status leave(checked_backend *c, pb_status status) {
    pb_guarded_close_all(&c->memory);
    return status;
}

/* Host memory where host memory belongs: not a live block of ours. */
static pb_status check_host(checked_backend *c, const char *op, const char *name, const void *p) {
    pb_guarded_block *b = p ? pb_guarded_find(&c->memory, p) : NULL;
    if (b && b->live)
        return pb_fail(PB_ERR_ARG, "checked backend: %s: %s (%p) is this backend's memory where host memory belongs",
                       op, name, p);
    return PB_OK;
}

#define F32(n) ((size_t)(n) * sizeof(float))
#define I32(n) ((size_t)(n) * sizeof(int32_t))
#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

/* ---- memory ------------------------------------------------------------ */

/* 64-bit hash of a lane copy's source bytes, to see them change. */
static uint64_t hash_bytes(const void *p, size_t n) {
    const unsigned char *s = p;
    uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdull;
        h ^= h >> 29;
    }
    for (; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* Runs lane k's pending copies, as its copy queue would by now. */
static pb_status run_lane(checked_backend *c, int k) {
    lane *l = &c->lanes[k];
    pb_status status = PB_OK;
    for (int i = 0; i < l->n && status == PB_OK; i++) {
        lane_copy *copy = &l->copies[i];
        if (hash_bytes(copy->src, copy->bytes) != copy->hash) {
            status = pb_fail(PB_ERR_ARG,
                             "checked backend: lane %d: the %zu host bytes of a lane_upload changed before the copy "
                             "ran (they must stay as they are until lane_wait)",
                             k, copy->bytes);
            break;
        }
        pb_guarded_block *b = pb_guarded_find(&c->memory, copy->dst);
        if (!b || !b->live) {
            status = pb_fail(PB_ERR_ARG, "checked backend: lane %d: an upload's destination was freed before it ran",
                             k);
            break;
        }
        status = pb_guarded_open(&c->memory, b);
        if (status == PB_OK)
            memcpy(copy->dst, copy->src, copy->bytes);
        pb_guarded_close_all(&c->memory);
    }
    l->n = 0;
    return status;
}

static pb_status run_lanes(checked_backend *c) {
    PB_TRY(run_lane(c, 0));
    return run_lane(c, 1);
}

static void checked_destroy(pb_backend *backend) {
    checked_backend *c = self_of(backend);
    pb_guarded_release(&c->memory);
    for (int k = 0; k < 2; k++)
        free(c->lanes[k].copies);
    free(c->pinned);
    pb_backend_destroy(c->inner);
    free(c);
}

static pb_status checked_alloc(pb_backend *backend, void **out, size_t bytes) {
    return pb_guarded_alloc(&self_of(backend)->memory, out, bytes);
}

static void checked_free(pb_backend *backend, void *ptr) {
    checked_backend *c = self_of(backend);
    if (!ptr)
        return;
    if (run_lanes(c) != PB_OK) /* a device frees after the queued work */
        set_sticky(c, pb_last_error());
    int freed = pb_guarded_free(&c->memory, ptr);
    char message[128];
    if (freed != 0) {
        snprintf(message, sizeof message, "checked backend: free of %p, %s", ptr,
                 freed == -2 ? "freed already" : "which alloc did not return");
        set_sticky(c, message);
    }
}

static pb_status checked_upload(pb_backend *backend, void *dst_device, const void *src_host, size_t bytes) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_host(c, "upload", "src_host", src_host));
    use uses[] = {{"dst_device", dst_device, bytes, USE_WRITE, 0}};
    PB_TRY(enter(c, "upload", uses, COUNT(uses)));
    if (bytes)
        memcpy(dst_device, src_host, bytes);
    return leave(c, PB_OK);
}

static pb_status checked_download(pb_backend *backend, void *dst_host, const void *src_device, size_t bytes) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_host(c, "download", "dst_host", dst_host));
    use uses[] = {{"src_device", src_device, bytes, 0, 0}};
    PB_TRY(enter(c, "download", uses, COUNT(uses)));
    if (bytes)
        memcpy(dst_host, src_device, bytes);
    return leave(c, PB_OK);
}

static pb_status checked_copy(pb_backend *backend, void *dst_device, const void *src_device, size_t bytes) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"dst_device", dst_device, bytes, USE_WRITE, 2}, {"src_device", src_device, bytes, 0, 1}};
    PB_TRY(enter(c, "copy", uses, COUNT(uses)));
    if (bytes && dst_device != src_device)
        memcpy(dst_device, src_device, bytes);
    return leave(c, PB_OK);
}

static pb_status checked_synchronize(pb_backend *backend) {
    checked_backend *c = self_of(backend);
    if (c->sticky != PB_OK)
        return pb_fail(c->sticky, "%s", c->sticky_message);
    return run_lanes(c);
}

static pb_status checked_memory_info(pb_backend *backend, size_t *free_bytes, size_t *total_bytes) {
    checked_backend *c = self_of(backend);
    size_t total = 0;
    if (pb_host_memory(&total) != PB_OK)
        pb_error_clear(); /* no total: nothing free */
    *total_bytes = total;
    *free_bytes = total > c->memory.live_bytes ? total - c->memory.live_bytes : 0;
    return PB_OK;
}

/* ---- lanes and pins ------------------------------------------------------ */

static pb_status check_lane(const char *op, int lane_index) {
    if (lane_index != 0 && lane_index != 1)
        return pb_fail(PB_ERR_ARG, "checked backend: %s: lane %d (there are lanes 0 and 1)", op, lane_index);
    return PB_OK;
}

static pb_status checked_lane_release(pb_backend *backend, int lane_index) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_lane("lane_release", lane_index));
    c->lanes[lane_index].released = 1;
    return PB_OK;
}

static pb_status checked_lane_upload(pb_backend *backend, int lane_index, void *dst_device, const void *src_host,
                                     size_t bytes) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_lane("lane_upload", lane_index));
    lane *l = &c->lanes[lane_index];
    if (!l->released)
        return pb_fail(PB_ERR_ARG,
                       "checked backend: lane_upload on lane %d with no lane_release since its last lane_wait: the "
                       "copy may overwrite bytes queued compute still reads",
                       lane_index);
    PB_TRY(check_host(c, "lane_upload", "src_host", src_host));
    if (!bytes)
        return PB_OK;
    if (!src_host)
        return pb_fail(PB_ERR_ARG, "checked backend: lane_upload: src_host is NULL");
    use uses[] = {{"dst_device", dst_device, bytes, USE_WRITE, 0}};
    PB_TRY(enter(c, "lane_upload", uses, COUNT(uses)));
    pb_guarded_close_all(&c->memory); /* the copy runs later */
    PB_TRY(pb_array_reserve(&l->copies, &l->cap, (size_t)l->n + 1, sizeof *l->copies, "queued uploads"));
    l->copies[l->n++] = (lane_copy){dst_device, src_host, bytes, hash_bytes(src_host, bytes)};
    return PB_OK;
}

static pb_status checked_lane_wait(pb_backend *backend, int lane_index) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_lane("lane_wait", lane_index));
    c->lanes[lane_index].released = 0;
    return run_lane(c, lane_index);
}

static pb_status checked_pin(pb_backend *backend, const void *host, size_t bytes) {
    checked_backend *c = self_of(backend);
    if (!host || !bytes)
        return pb_fail(PB_ERR_ARG, "checked backend: pin: %s", host ? "0 bytes" : "host is NULL");
    PB_TRY(check_host(c, "pin", "host", host));
    PB_TRY(pb_array_reserve(&c->pinned, &c->cap_pinned, (size_t)c->n_pinned + 1, sizeof *c->pinned,
                            "pinned host buffers"));
    c->pinned[c->n_pinned++] = host;
    return PB_OK;
}

static void checked_unpin(pb_backend *backend, const void *host) {
    checked_backend *c = self_of(backend);
    if (!host)
        return;
    if (run_lanes(c) != PB_OK) /* no copy from it in flight */
        set_sticky(c, pb_last_error());
    for (int i = 0; i < c->n_pinned; i++)
        if (c->pinned[i] == host) {
            c->pinned[i] = c->pinned[--c->n_pinned];
            return;
        }
    char message[128];
    snprintf(message, sizeof message, "checked backend: unpin of %p, which pin did not lock", host);
    set_sticky(c, message);
}

/* ---- ops --------------------------------------------------------------- */

static pb_status checked_embed(pb_backend *backend, float *out, const void *table, pb_dtype table_dtype,
                               const int32_t *ids, int T, int d, float scale) {
    checked_backend *c = self_of(backend);
    size_t row = pb_dtype_bytes(table_dtype, (uint64_t)d);
    use uses[] = {
        {"out", out, F32((size_t)T * d), USE_WRITE, 0}, {"table", table, row, 0, 0}, {"ids", ids, I32(T), 0, 0}};
    PB_TRY(enter(c, "embed", uses, COUNT(uses)));
    int32_t top = -1;
    for (int t = 0; t < T; t++) {
        if (ids[t] < 0)
            return leave(c, pb_fail(PB_ERR_ARG, "checked backend: embed: ids[%d] = %d", t, ids[t]));
        top = ids[t] > top ? ids[t] : top;
    }
    pb_guarded_block *b = pb_guarded_find(&c->memory, table);
    size_t offset = (size_t)((const char *)table - b->base);
    if (T > 0 && (size_t)(top + 1) * row > b->bytes - offset)
        return leave(c, pb_fail(PB_ERR_ARG, "checked backend: embed: id %d is past the table's %zu rows", top,
                                (b->bytes - offset) / row));
    return leave(c, inner_ops(c)->embed(c->inner, out, table, table_dtype, ids, T, d, scale));
}

static pb_status checked_rmsnorm(pb_backend *backend, float *out, const float *x, const float *weight, int rows, int d,
                                 float eps) {
    checked_backend *c = self_of(backend);
    size_t n = (size_t)rows * d;
    use uses[] = {
        {"out", out, F32(n), USE_WRITE, 2}, {"x", x, F32(n), 0, 1}, {"weight", weight, F32(d), USE_OPTIONAL, 0}};
    PB_TRY(enter(c, "rmsnorm", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->rmsnorm(c->inner, out, x, weight, rows, d, eps));
}

static pb_status checked_layernorm(pb_backend *backend, float *out, const float *x, const float *weight,
                                   const float *bias, int rows, int d, float eps) {
    checked_backend *c = self_of(backend);
    size_t n = (size_t)rows * d;
    use uses[] = {{"out", out, F32(n), USE_WRITE, 2},
                  {"x", x, F32(n), 0, 1},
                  {"weight", weight, F32(d), USE_OPTIONAL, 0},
                  {"bias", bias, F32(d), USE_OPTIONAL, 0}};
    PB_TRY(enter(c, "layernorm", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->layernorm(c->inner, out, x, weight, bias, rows, d, eps));
}

static pb_status checked_activate(pb_backend *backend, float *x, size_t n, pb_activation act) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"x", x, F32(n), USE_WRITE, 0}};
    PB_TRY(enter(c, "activate", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->activate(c->inner, x, n, act));
}

static pb_status checked_matmul(pb_backend *backend, float *out, const float *x, const void *w, pb_dtype w_dtype,
                                const float *bias, int rows, int n, int k) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"out", out, F32((size_t)rows * n), USE_WRITE, 0},
                  {"x", x, F32((size_t)rows * k), 0, 0},
                  {"w", w, (size_t)n * pb_dtype_bytes(w_dtype, (uint64_t)k), 0, 0},
                  {"bias", bias, F32(n), USE_OPTIONAL, 0}};
    PB_TRY(enter(c, "matmul", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->matmul(c->inner, out, x, w, w_dtype, bias, rows, n, k));
}

static pb_status checked_rope(pb_backend *backend, float *x, const int32_t *positions, const float *inv_freq, int T,
                              int n_heads, int head_dim, int rotary_dims, float scale) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"x", x, F32((size_t)T * n_heads * head_dim), USE_WRITE, 0},
                  {"positions", positions, I32(T), 0, 0},
                  {"inv_freq", inv_freq, F32(rotary_dims / 2), 0, 0}};
    PB_TRY(enter(c, "rope", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->rope(c->inner, x, positions, inv_freq, T, n_heads, head_dim, rotary_dims, scale));
}

static pb_status checked_attention(pb_backend *backend, float *out, const float *q, const float *k, const float *v,
                                   int T, int T_kv, int q_start, int n_heads, int n_kv_heads, int head_dim,
                                   const pb_attention_params *params) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_host(c, "attention", "params", params));
    size_t nq = (size_t)T * n_heads * head_dim, nkv = (size_t)T_kv * n_kv_heads * head_dim;
    use uses[] = {{"out", out, F32(nq), USE_WRITE, 0},
                  {"q", q, F32(nq), 0, 0},
                  {"k", k, F32(nkv), 0, 0},
                  {"v", v, F32(nkv), 0, 0}};
    PB_TRY(enter(c, "attention", uses, COUNT(uses)));
    return leave(
        c, inner_ops(c)->attention(c->inner, out, q, k, v, T, T_kv, q_start, n_heads, n_kv_heads, head_dim, params));
}

static pb_status checked_attention_jobs(pb_backend *backend, float *out, const float *q, const pb_attention_job *jobs,
                                        int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                        const pb_attention_params *params) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_host(c, "attention_jobs", "jobs", jobs));
    PB_TRY(check_host(c, "attention_jobs", "params", params));
    size_t q_width = (size_t)n_heads * head_dim, kv_width = (size_t)n_kv_heads * head_dim, rows = 0;
    use *uses = malloc(sizeof *uses * (2 + 4 * (size_t)n_jobs));
    if (!uses)
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory");
    for (int j = 0; j < n_jobs; j++) {
        const pb_attention_job *job = &jobs[j];
        size_t end = job->n ? (size_t)job->q_row + (size_t)job->n : 0; /* a job without queries reads nothing */
        size_t prefix = job->n ? F32((size_t)job->p0 * kv_width) : 0;
        size_t fresh = F32((size_t)job->n * kv_width);
        rows = end > rows ? end : rows;
        uses[2 + 4 * j] = (use){"a job's k_prefix", job->k_prefix, prefix, 0, 0};
        uses[3 + 4 * j] = (use){"a job's v_prefix", job->v_prefix, prefix, 0, 0};
        uses[4 + 4 * j] = (use){"a job's k_new", job->k_new, fresh, 0, 0};
        uses[5 + 4 * j] = (use){"a job's v_new", job->v_new, fresh, 0, 0};
    }
    uses[0] = (use){"out", out, F32(rows * q_width), USE_WRITE, 0};
    uses[1] = (use){"q", q, F32(rows * q_width), 0, 0};
    pb_status status = enter(c, "attention_jobs", uses, 2 + 4 * n_jobs);
    free(uses);
    PB_TRY(status);
    return leave(c,
                 inner_ops(c)->attention_jobs(c->inner, out, q, jobs, n_jobs, n_heads, n_kv_heads, head_dim, params));
}

static pb_status checked_glu(pb_backend *backend, float *out, const float *gate, const float *up, size_t rows,
                             size_t width, size_t stride, pb_activation act) {
    checked_backend *c = self_of(backend);
    size_t span = rows ? (rows - 1) * stride + width : 0;
    unsigned in_place = stride == width ? 6u : 0u;
    use uses[] = {{"out", out, F32(rows * width), USE_WRITE, in_place},
                  {"gate", gate, F32(span), 0, in_place ? 1u : 0u},
                  {"up", up, F32(span), 0, in_place ? 1u : 0u}};
    PB_TRY(enter(c, "glu", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->glu(c->inner, out, gate, up, rows, width, stride, act));
}

static pb_status checked_softcap(pb_backend *backend, float *x, size_t n, float cap) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"x", x, F32(n), USE_WRITE, 0}};
    PB_TRY(enter(c, "softcap", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->softcap(c->inner, x, n, cap));
}

static pb_status checked_add(pb_backend *backend, float *out, const float *a, const float *b, size_t n) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"out", out, F32(n), USE_WRITE, 6}, {"a", a, F32(n), 0, 1}, {"b", b, F32(n), 0, 1}};
    PB_TRY(enter(c, "add", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->add(c->inner, out, a, b, n));
}

static pb_status checked_metric_rows(pb_backend *backend, double *out, const float *logits, int rows, int n_out,
                                     pb_metric_kind kind, const int32_t *positive, int n_positive,
                                     const int32_t *negative, int n_negative, const double *ref_logprobs,
                                     const int32_t *ref_row, int n_ref) {
    checked_backend *c = self_of(backend);
    int kl = kind == PB_METRIC_KL, diff = kind == PB_METRIC_LOGIT_DIFF;
    use uses[] = {{"out", out, (size_t)rows * sizeof(double), USE_WRITE, 0},
                  {"logits", logits, F32((size_t)rows * n_out), 0, 0},
                  {"positive", positive, I32(n_positive), 0, 0},
                  {"negative", negative, diff ? I32(n_negative) : 0, 0, 0},
                  {"ref_logprobs", ref_logprobs, kl ? (size_t)n_ref * n_out * sizeof(double) : 0, 0, 0},
                  {"ref_row", ref_row, kl ? I32(rows) : 0, 0, 0}};
    PB_TRY(enter(c, "metric_rows", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->metric_rows(c->inner, out, logits, rows, n_out, kind, positive, n_positive, negative,
                                              n_negative, ref_logprobs, ref_row, n_ref));
}

static pb_status checked_copy_regions(pb_backend *backend, const pb_copy_region *regions, int n_regions) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_host(c, "copy_regions", "regions", regions));
    use *uses = malloc(sizeof *uses * (2 * (size_t)n_regions + 1));
    if (!uses)
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory");
    for (int i = 0; i < n_regions; i++) {
        uses[2 * i] = (use){"a region's dst", regions[i].dst, F32(regions[i].n), USE_WRITE, 0};
        uses[2 * i + 1] = (use){"a region's src", regions[i].src, F32(regions[i].n), 0, 0};
    }
    pb_status status = enter(c, "copy_regions", uses, 2 * n_regions);
    free(uses);
    PB_TRY(status);
    return leave(c, inner_ops(c)->copy_regions(c->inner, regions, n_regions));
}

static pb_status checked_copy_rows(pb_backend *backend, float *dst, size_t dst_stride, const float *src,
                                   size_t src_stride, size_t width, size_t rows) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"dst", dst, rows ? F32((rows - 1) * dst_stride + width) : 0, USE_WRITE, 0},
                  {"src", src, rows ? F32((rows - 1) * src_stride + width) : 0, 0, 0}};
    PB_TRY(enter(c, "copy_rows", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->copy_rows(c->inner, dst, dst_stride, src, src_stride, width, rows));
}

static pb_status checked_matmul_dx(pb_backend *backend, float *dx, const float *dy, const void *w, pb_dtype w_dtype,
                                   int rows, int n, int k, int accumulate) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"dx", dx, F32((size_t)rows * k), USE_WRITE, 0},
                  {"dy", dy, F32((size_t)rows * n), 0, 0},
                  {"w", w, (size_t)n * pb_dtype_bytes(w_dtype, (uint64_t)k), 0, 0}};
    PB_TRY(enter(c, "matmul_dx", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->matmul_dx(c->inner, dx, dy, w, w_dtype, rows, n, k, accumulate));
}

static pb_status checked_norm_backward(pb_backend *backend, float *dx, const float *x, const float *weight,
                                       const float *dy, int rows, int d, float eps, int centred, int accumulate) {
    checked_backend *c = self_of(backend);
    size_t n = (size_t)rows * d;
    use uses[] = {{"dx", dx, F32(n), USE_WRITE, 0},
                  {"x", x, F32(n), 0, 0},
                  {"weight", weight, F32(d), USE_OPTIONAL, 0},
                  {"dy", dy, F32(n), 0, 0}};
    PB_TRY(enter(c, "norm_backward", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->norm_backward(c->inner, dx, x, weight, dy, rows, d, eps, centred, accumulate));
}

static pb_status checked_glu_backward(pb_backend *backend, float *d_gate, float *d_up, const float *dh,
                                      const float *gate, const float *up, size_t n, pb_activation act) {
    checked_backend *c = self_of(backend);
    use uses[] = {{"d_gate", d_gate, gate ? F32(n) : 0, USE_WRITE, 4},
                  {"d_up", d_up, F32(n), USE_WRITE, 0},
                  {"dh", dh, F32(n), 0, 1},
                  {"gate", gate, F32(n), USE_OPTIONAL, 0},
                  {"up", up, F32(n), 0, 0}};
    PB_TRY(enter(c, "glu_backward", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->glu_backward(c->inner, d_gate, d_up, dh, gate, up, n, act));
}

static pb_status checked_attention_backward(pb_backend *backend, float *dq, float *dk, float *dv, float *dpattern,
                                            const float *q, const float *k, const float *v, const float *dz, int T,
                                            int n_heads, int n_kv_heads, int head_dim,
                                            const pb_attention_params *params) {
    checked_backend *c = self_of(backend);
    PB_TRY(check_host(c, "attention_backward", "params", params));
    size_t nq = (size_t)T * n_heads * head_dim, nkv = (size_t)T * n_kv_heads * head_dim;
    use uses[] = {{"dq", dq, F32(nq), USE_WRITE, 0},
                  {"dk", dk, F32(nkv), USE_WRITE, 0},
                  {"dv", dv, F32(nkv), USE_WRITE, 0},
                  {"dpattern", dpattern, F32((size_t)n_heads * T * T), USE_WRITE | USE_OPTIONAL, 0},
                  {"q", q, F32(nq), 0, 0},
                  {"k", k, F32(nkv), 0, 0},
                  {"v", v, F32(nkv), 0, 0},
                  {"dz", dz, F32(nq), 0, 0}};
    PB_TRY(enter(c, "attention_backward", uses, COUNT(uses)));
    return leave(c, inner_ops(c)->attention_backward(c->inner, dq, dk, dv, dpattern, q, k, v, dz, T, n_heads,
                                                     n_kv_heads, head_dim, params));
}

static const pb_backend_ops checked_ops = {
    .name = "checked",
    .destroy = checked_destroy,
    .alloc = checked_alloc,
    .free = checked_free,
    .upload = checked_upload,
    .download = checked_download,
    .copy = checked_copy,
    .synchronize = checked_synchronize,
    .embed = checked_embed,
    .rmsnorm = checked_rmsnorm,
    .layernorm = checked_layernorm,
    .activate = checked_activate,
    .matmul = checked_matmul,
    .rope = checked_rope,
    .attention = checked_attention,
    .glu = checked_glu,
    .softcap = checked_softcap,
    .add = checked_add,
    .attention_jobs = checked_attention_jobs,
    .memory_info = checked_memory_info,
    .metric_rows = checked_metric_rows,
    .host_memory = 0,
    .copy_regions = checked_copy_regions,
    .copy_rows = checked_copy_rows,
    .lane_release = checked_lane_release,
    .lane_upload = checked_lane_upload,
    .lane_wait = checked_lane_wait,
    .pin = checked_pin,
    .unpin = checked_unpin,
    .matmul_dx = checked_matmul_dx,
    .norm_backward = checked_norm_backward,
    .glu_backward = checked_glu_backward,
    .attention_backward = checked_attention_backward,
};

pb_status pb_backend_checked_create(pb_backend **out, pb_backend *inner) {
    *out = NULL;
    const pb_backend_ops *o = inner ? inner->ops : NULL;
    if (!o || !o->host_memory || !o->attention_jobs || !o->metric_rows || !o->copy_regions || !o->copy_rows ||
        !o->matmul_dx) {
        pb_backend_destroy(inner);
        return pb_fail(PB_ERR_ARG, "checked backend: it wraps a host backend with every op (cpu)");
    }
    checked_backend *c = calloc(1, sizeof *c);
    if (!c) {
        pb_backend_destroy(inner);
        return pb_fail(PB_ERR_OOM, "checked backend: out of memory");
    }
    c->base.ops = &checked_ops;
    c->inner = inner;
    pb_guarded_init(&c->memory);
    *out = &c->base;
    return PB_OK;
}
