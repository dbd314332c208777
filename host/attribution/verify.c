/* Verification of an estimate by the exact engine (atp.h): the sites to
 * check, a twin sweep of the same spec run exactly on them, and the
 * verdict's statistics. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "attribution/atp.h"
#include "patching/sweep_access.h"
#include "util/internal.h"

void pb_atp_verification_free(pb_atp_verification *v) {
    if (!v)
        return;
    free(v->checks);
    v->checks = NULL;
}

typedef struct ranked_site {
    double key; /* sorted descending; NaN last */
    int64_t site;
} ranked_site;

static int by_key_descending(const void *pa, const void *pb) {
    const ranked_site *a = pa, *b = pb;
    int na = a->key != a->key, nb = b->key != b->key;
    if (na || nb)
        return na - nb;
    return a->key < b->key ? 1 : a->key > b->key ? -1 : (a->site > b->site) - (a->site < b->site);
}

static uint64_t next_random(uint64_t *state) {
    uint64_t x = (*state += 0x9e3779b97f4a7c15ull);
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static double site_effect(const pb_sweep *s, int64_t site) {
    pb_site_result r;
    return pb_sweep_get_site(s, site, &r) == PB_OK ? r.effect : NAN;
}

/* v->checks: the top sites by |estimate|, then a control sample drawn
 * from the rest (a partial Fisher-Yates shuffle seeded by the spec). */
static pb_status choose_checks(const pb_sweep *s, pb_atp_verification *v) {
    int64_t n = pb_sweep_site_count(s);
    ranked_site *order = malloc(sizeof *order * (size_t)n);
    if (!order)
        return pb_fail(PB_ERR_OOM, "verify: out of memory for %lld sites", (long long)n);
    for (int64_t i = 0; i < n; i++)
        order[i] = (ranked_site){fabs(site_effect(s, i)), i};
    qsort(order, (size_t)n, sizeof *order, by_key_descending);
    int top = v->top < n ? v->top : (int)n;
    int64_t rest = n - top;
    int control = v->n_control < rest ? v->n_control : (int)rest;
    v->checks = calloc((size_t)(top + control > 0 ? top + control : 1), sizeof *v->checks);
    if (!v->checks) {
        free(order);
        return pb_fail(PB_ERR_OOM, "verify: out of memory for %d checks", top + control);
    }
    uint64_t state = v->seed;
    for (int i = 0; i < control; i++) {
        int64_t j = top + i + (int64_t)(next_random(&state) % (uint64_t)(n - top - i));
        ranked_site t = order[top + i];
        order[top + i] = order[j];
        order[j] = t;
    }
    for (int i = 0; i < top + control; i++)
        v->checks[i] = (pb_atp_check){order[i].site, site_effect(s, order[i].site), NAN, i >= top};
    v->n_checks = top + control;
    v->top = top;
    v->n_control = control;
    free(order);
    return PB_OK;
}

/* The exact mean effects of the checked sites, every pair, from a twin. */
static pb_status run_exact(const pb_sweep *s, pb_atp_verification *v) {
    int64_t n_sites = pb_sweep_site_count(s);
    int n_pairs = pb_sweep_spec_of(s)->n_pairs;
    pb_sweep *exact = NULL;
    PB_TRY(pb_sweep_create_exact_twin(s, &exact));
    int64_t *rows = malloc(sizeof(int64_t) * (size_t)v->n_checks * (size_t)n_pairs + 1);
    pb_status status = rows ? PB_OK : pb_fail(PB_ERR_OOM, "verify: out of memory for its rows");
    int64_t k = 0;
    for (int p = 0; status == PB_OK && p < n_pairs; p++) /* pair-major: one pair's caches at a time */
        for (int i = 0; i < v->n_checks; i++)
            rows[k++] = (int64_t)p * n_sites + v->checks[i].site;
    if (status == PB_OK)
        status = pb_sweep_run_rows(exact, rows, k);
    for (int i = 0; status == PB_OK && i < v->n_checks; i++)
        v->checks[i].exact = site_effect(exact, v->checks[i].site);
    free(rows);
    pb_sweep_free(exact);
    return status;
}

/* ranks (1-based, ties averaged) of x (n). */
static void rank_values(const double *x, int n, double *out) {
    for (int i = 0; i < n; i++) {
        int below = 0, equal = 0;
        for (int j = 0; j < n; j++) {
            below += x[j] < x[i];
            equal += x[j] == x[i];
        }
        out[i] = below + (equal + 1) / 2.0;
    }
}

/* Spearman's rho over the checks with both effects defined. */
static double spearman(const pb_atp_verification *v) {
    int n = 0;
    double *x = malloc(sizeof(double) * 4 * (size_t)(v->n_checks + 1)), *y = x + v->n_checks + 1;
    if (!x)
        return NAN;
    for (int i = 0; i < v->n_checks; i++)
        if (!isnan(v->checks[i].estimate) && !isnan(v->checks[i].exact)) {
            x[n] = v->checks[i].estimate;
            y[n++] = v->unsigned_estimate ? fabs(v->checks[i].exact) : v->checks[i].exact;
        }
    double *rx = y + v->n_checks + 1, *ry = rx + v->n_checks + 1, sxy = 0, sxx = 0, syy = 0;
    rank_values(x, n, rx);
    rank_values(y, n, ry);
    for (int i = 0; i < n; i++) {
        double a = rx[i] - (n + 1) / 2.0, b = ry[i] - (n + 1) / 2.0;
        sxy += a * b;
        sxx += a * a;
        syy += b * b;
    }
    free(x);
    return n > 1 && sxx > 0 && syy > 0 ? sxy / sqrt(sxx * syy) : NAN;
}

/* recall of the exact top among the checks, and the control's misses. */
static void summarise(pb_atp_verification *v) {
    ranked_site *order = malloc(sizeof *order * (size_t)(v->n_checks + 1));
    int hits = 0;
    double floor = INFINITY;
    for (int i = 0; order && i < v->n_checks; i++)
        order[i] = (ranked_site){fabs(v->checks[i].exact), i};
    if (order)
        qsort(order, (size_t)v->n_checks, sizeof *order, by_key_descending);
    for (int i = 0; order && i < v->top; i++)
        hits += !v->checks[order[i].site].control;
    v->recall = order && v->top > 0 ? (double)hits / v->top : NAN;
    for (int i = 0; i < v->top; i++)
        floor = fmin(floor, fabs(v->checks[i].exact));
    v->worst_miss = -1;
    v->misses = 0;
    for (int i = v->top; i < v->n_checks; i++) {
        double e = fabs(v->checks[i].exact);
        v->misses += e > floor;
        if (!isnan(e) && (v->worst_miss < 0 || e > fabs(v->checks[v->worst_miss].exact)))
            v->worst_miss = i;
    }
    v->spearman = spearman(v);
    free(order);
}

pb_status pb_atp_verify(pb_sweep *s) {
    const pb_sweep_spec *spec = pb_sweep_spec_of(s);
    if (spec->method == PB_METHOD_EXACT || spec->verify_top <= 0)
        return PB_OK;
    pb_atp_verification *v = calloc(1, sizeof *v);
    if (!v)
        return pb_fail(PB_ERR_OOM, "verify: out of memory");
    *v = (pb_atp_verification){.top = spec->verify_top,
                               .n_control = spec->verify_control,
                               .seed = spec->verify_seed,
                               .unsigned_estimate = spec->grad_drop};
    pb_status status = choose_checks(s, v);
    if (status == PB_OK)
        status = run_exact(s, v);
    if (status != PB_OK) {
        pb_atp_verification_free(v);
        free(v);
        return pb_fail_context(status, "verifying the estimate");
    }
    summarise(v);
    pb_sweep_set_verification(s, v);
    return PB_OK;
}

void pb_atp_verification_describe(const pb_sweep *s, char *summary, size_t size) {
    if (size)
        summary[0] = 0;
    const pb_atp_verification *v = pb_sweep_verification(s);
    if (!v || !size)
        return;
    int n = snprintf(summary, size,
                     "the exact engine on the top %d sites by |estimate| and %d control sites: recall of "
                     "the exact top %d %.2f, Spearman %.3f, %d control sites above the top's smallest |exact|",
                     v->top, v->n_control, v->top, v->recall, v->spearman, v->misses);
    if (v->worst_miss >= 0 && n > 0 && (size_t)n < size) {
        pb_site_result r;
        const pb_atp_check *c = &v->checks[v->worst_miss];
        char head[32] = "";
        if (pb_sweep_get_site(s, c->site, &r) == PB_OK) {
            int used = r.head >= 0 ? snprintf(head, sizeof head, " head %d", r.head) : 0;
            if (r.position != INT32_MIN && used >= 0 && (size_t)used < sizeof head)
                snprintf(head + used, sizeof head - (size_t)used, " position %d", r.position);
            snprintf(summary + n, size - (size_t)n, " (largest: %s layer %d%s, exact %.3f, estimate %.3f)",
                     pb_component_name(r.component), r.layer, head, c->exact, c->estimate);
        }
    }
}

pb_status pb_atp_verify_summary(pb_sweep *s, char *summary, size_t size) {
    if (size)
        summary[0] = 0;
    if (!pb_sweep_verification(s))
        PB_TRY(pb_atp_verify(s));
    pb_atp_verification_describe(s, summary, size);
    return PB_OK;
}
