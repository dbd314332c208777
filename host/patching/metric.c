/* Metric arithmetic: log-sum-exp in double with the maximum subtracted, so
 * token sets with large logits and probabilities near 1 stay exact. */
#include <math.h>
#include <stdlib.h>

#include "patching/metric.h"

double pb_metric_logit_diff(const float *selected, int n_positive, int n_negative) {
    double pos = 0.0, neg = 0.0;
    for (int i = 0; i < n_positive; i++)
        pos += selected[i];
    for (int i = 0; i < n_negative; i++)
        neg += selected[n_positive + i];
    return pos / n_positive - neg / n_negative;
}

static double log_sum_exp_all(const float *logits, int V) {
    double max = -INFINITY;
    for (int i = 0; i < V; i++)
        if (logits[i] > max)
            max = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        sum += exp((double)logits[i] - max);
    return max + log(sum);
}

void pb_log_softmax(const float *logits, int V, double *out) {
    double lse = log_sum_exp_all(logits, V);
    for (int i = 0; i < V; i++)
        out[i] = (double)logits[i] - lse;
}

/* logsumexp over ids (in_set = 1) or over every other entry (in_set = 0). */
static double log_sum_exp_set(const float *logits, int V, const int32_t *ids, int n_ids, int in_set) {
    unsigned char *member = calloc((size_t)V, 1);
    if (!member)
        return NAN;
    for (int i = 0; i < n_ids; i++)
        member[ids[i]] = 1;
    double max = -INFINITY;
    for (int i = 0; i < V; i++)
        if (member[i] == in_set && logits[i] > max)
            max = logits[i];
    double sum = 0.0;
    for (int i = 0; i < V; i++)
        if (member[i] == in_set)
            sum += exp((double)logits[i] - max);
    free(member);
    return max + log(sum);
}

double pb_metric_logprob(const float *logits, int V, const int32_t *ids, int n_ids) {
    return log_sum_exp_set(logits, V, ids, n_ids, 1) - log_sum_exp_all(logits, V);
}

double pb_metric_refusal_score(const float *logits, int V, const int32_t *ids, int n_ids) {
    return log_sum_exp_set(logits, V, ids, n_ids, 1) - log_sum_exp_set(logits, V, ids, n_ids, 0);
}

double pb_metric_kl(const double *ref_logprobs, const float *logits, int V) {
    double lse = log_sum_exp_all(logits, V), kl = 0.0;
    for (int i = 0; i < V; i++) {
        double p = exp(ref_logprobs[i]);
        if (p > 0.0)
            kl += p * (ref_logprobs[i] - ((double)logits[i] - lse));
    }
    return kl;
}

double pb_metric_projection(const float *x, const float *u, int d) {
    double dot = 0.0;
    for (int i = 0; i < d; i++)
        dot += (double)x[i] * u[i];
    return dot;
}
