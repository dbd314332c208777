/* Metric arithmetic on one position's logits or residual (host memory,
 * double accumulation). Definitions: docs/patching.md. */
#ifndef PB_METRIC_H
#define PB_METRIC_H

#include <stdint.h>

/* mean(logits[positive]) - mean(logits[negative]); here `selected` holds the
 * positive logits then the negative ones. */
double pb_metric_logit_diff(const float *selected, int n_positive, int n_negative);
/* out (V) = log_softmax(logits). */
void pb_log_softmax(const float *logits, int V, double *out);
/* log sum_{t in ids} softmax(logits)_t */
double pb_metric_logprob(const float *logits, int V, const int32_t *ids, int n_ids);
/* logsumexp(ids) - logsumexp(complement) = log P - log(1 - P) */
double pb_metric_refusal_score(const float *logits, int V, const int32_t *ids, int n_ids);
/* KL(p_ref || softmax(logits)) with ref_logprobs = log p_ref. */
double pb_metric_kl(const double *ref_logprobs, const float *logits, int V);
/* <x, u> */
double pb_metric_projection(const float *x, const float *u, int d);

#endif
