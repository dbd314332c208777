/* The next token from a row of logits (sample.h). Probabilities are
 * computed in double; filters follow transformers' warpers: top-k keeps
 * every token tied with the k-th largest logit, top-p keeps a token while
 * the mass of the tokens more likely than it is below top_p (so at least
 * one), min-p drops tokens less likely than min_p times the most likely
 * one. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/sample.h"
#include "util/internal.h"

pb_status pb_sampler_init(pb_sampler *s, int vocab_size) {
    memset(s, 0, sizeof *s);
    if (vocab_size <= 0)
        return pb_fail(PB_ERR_ARG, "sampler: vocabulary size %d", vocab_size);
    s->vocab_size = vocab_size;
    s->prob = malloc(sizeof(double) * (size_t)vocab_size);
    s->scratch = malloc(sizeof(double) * (size_t)vocab_size);
    s->ranked = malloc(sizeof *s->ranked * (size_t)vocab_size);
    if (!s->prob || !s->scratch || !s->ranked) {
        pb_sampler_release(s);
        return pb_fail(PB_ERR_OOM, "sampler: out of memory for a vocabulary of %d", vocab_size);
    }
    return PB_OK;
}

void pb_sampler_release(pb_sampler *s) {
    if (!s)
        return;
    free(s->prob);
    free(s->scratch);
    free(s->ranked);
    memset(s, 0, sizeof *s);
}

/* splitmix64's finaliser: a bijection of 64-bit words that mixes every bit. */
static uint64_t mix64(uint64_t z) {
    z += 0x9e3779b97f4a7c15ULL;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

uint64_t pb_sample_prompt_key(const int32_t *ids, int T) {
    uint64_t h = mix64((uint64_t)(uint32_t)T);
    for (int t = 0; t < T; t++)
        h = mix64(h ^ (uint64_t)(uint32_t)ids[t]);
    return h;
}

double pb_sample_uniform(uint64_t seed, uint64_t prompt_key, int sample, int step) {
    uint64_t h = mix64(seed);
    h = mix64(h ^ prompt_key);
    h = mix64(h ^ ((uint64_t)(uint32_t)sample << 32));
    h = mix64(h ^ (uint64_t)(uint32_t)step);
    return (double)(h >> 11) * 0x1.0p-53;
}

static int first_argmax(const float *v, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (v[i] > v[best])
            best = i;
    return best;
}

/* The k-th largest of v (n), k in [1, n]: quickselect on a scratch copy. */
static double kth_largest(double *scratch, const double *v, int n, int k) {
    memcpy(scratch, v, sizeof(double) * (size_t)n);
    int lo = 0, hi = n - 1, want = k - 1; /* descending index */
    while (lo < hi) {
        double pivot = scratch[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (scratch[i] > pivot)
                i++;
            while (scratch[j] < pivot)
                j--;
            if (i <= j) {
                double t = scratch[i];
                scratch[i++] = scratch[j];
                scratch[j--] = t;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    return scratch[want];
}

/* prob (n) /= its sum. */
static void normalise(double *prob, int n) {
    double sum = 0;
    for (int i = 0; i < n; i++)
        sum += prob[i];
    for (int i = 0; i < n; i++)
        prob[i] /= sum;
}

/* Most likely first; ties by token id, so the order is total. */
static int by_prob_desc(const void *a, const void *b) {
    const struct pb_sample_rank *x = a, *y = b;
    if (x->prob != y->prob)
        return x->prob > y->prob ? -1 : 1;
    return (x->token > y->token) - (x->token < y->token);
}

/* Top-p over prob (n, sums to 1). Only tokens at least as likely as a
 * cutoff c need sorting once the mass at or above c reaches top_p: every
 * token below c has at least that much mass before it and is dropped. */
static void top_p_filter(pb_sampler *s, double *prob, int n, double top_p) {
    double max = 0;
    for (int i = 0; i < n; i++)
        max = fmax(max, prob[i]);
    double cutoff = max * 1e-3;
    for (;;) {
        double above = 0;
        for (int i = 0; i < n; i++)
            if (prob[i] >= cutoff)
                above += prob[i];
        if (above >= top_p || cutoff == 0)
            break;
        cutoff = cutoff < 1e-300 ? 0 : cutoff * 1e-3;
    }
    int m = 0;
    for (int i = 0; i < n; i++)
        if (prob[i] > 0 && prob[i] >= cutoff)
            s->ranked[m++] = (struct pb_sample_rank){prob[i], i};
    qsort(s->ranked, (size_t)m, sizeof *s->ranked, by_prob_desc);
    double before = 0;
    int keep = 0;
    while (keep < m && (keep == 0 || before < top_p))
        before += s->ranked[keep++].prob;
    for (int i = 0; i < n; i++)
        if (prob[i] < cutoff)
            prob[i] = 0;
    for (int i = keep; i < m; i++)
        prob[s->ranked[i].token] = 0;
    normalise(prob, n);
}

pb_status pb_sampler_probabilities(pb_sampler *s, const float *logits, const pb_sampling *sp, double *prob) {
    int n = s->vocab_size;
    if (!sp || sp->temperature == 0) {
        memset(prob, 0, sizeof(double) * (size_t)n);
        prob[first_argmax(logits, n)] = 1;
        return PB_OK;
    }
    double max = -INFINITY;
    for (int i = 0; i < n; i++) {
        if (!isfinite(logits[i]))
            return pb_fail(PB_ERR_NUMERIC, "sampling: logit %d is %g", i, (double)logits[i]);
        prob[i] = (double)logits[i] / sp->temperature; /* the scaled logit, for now */
        max = fmax(max, prob[i]);
    }
    double kth = -INFINITY;
    if (sp->top_k > 0 && sp->top_k < n)
        kth = kth_largest(s->scratch, prob, n, sp->top_k);
    for (int i = 0; i < n; i++)
        prob[i] = prob[i] < kth ? 0 : exp(prob[i] - max);
    normalise(prob, n);
    if (sp->top_p > 0 && sp->top_p < 1)
        top_p_filter(s, prob, n, sp->top_p);
    if (sp->min_p > 0) {
        double top = 0;
        for (int i = 0; i < n; i++)
            top = fmax(top, prob[i]);
        for (int i = 0; i < n; i++)
            if (prob[i] < sp->min_p * top)
                prob[i] = 0;
        normalise(prob, n);
    }
    return PB_OK;
}

pb_status pb_sampler_next(pb_sampler *s, const float *logits, const pb_sampling *sp, double u, int32_t *token) {
    if (!sp || sp->temperature == 0) {
        *token = first_argmax(logits, s->vocab_size);
        return PB_OK;
    }
    PB_TRY(pb_sampler_probabilities(s, logits, sp, s->prob));
    double cum = 0;
    int last = 0;
    for (int i = 0; i < s->vocab_size; i++) {
        if (s->prob[i] <= 0)
            continue;
        last = i;
        cum += s->prob[i];
        if (cum > u) {
            *token = i;
            return PB_OK;
        }
    }
    *token = last; /* u within rounding of 1 */
    return PB_OK;
}
