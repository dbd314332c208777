/* Refusal rates over prompts with their 95% interval (pb_rate_estimate,
 * include/patchbay.h). Clustered binary data: each prompt contributes K
 * correlated samples, so the interval's sample size is the effective one
 * the between-prompt variance implies, not n * K. */
#include <math.h>

#include "patchbay.h"
#include "util/internal.h"

/* The normal quantile of a two-sided 95% interval. */
#define PB_Z95 1.959963984540054

pb_status pb_rate_estimate(const int *refused, int n_prompts, int n_samples, pb_rate *out) {
    if (!out || n_prompts <= 0 || n_samples <= 0 || !refused)
        return pb_fail(PB_ERR_ARG,
                       "pb_rate_estimate: need refusal counts of n_prompts >= 1 (got %d) prompts with "
                       "n_samples >= 1 (got %d)",
                       n_prompts, n_samples);
    *out = (pb_rate){.n_prompts = n_prompts, .n_samples = n_samples};
    double sum = 0;
    for (int i = 0; i < n_prompts; i++) {
        if (refused[i] < 0 || refused[i] > n_samples)
            return pb_fail(PB_ERR_ARG, "pb_rate_estimate: prompt %d has %d refusals of %d samples", i, refused[i],
                           n_samples);
        out->refused += refused[i];
        sum += (double)refused[i] / n_samples;
    }
    double p = sum / n_prompts, ss = 0;
    for (int i = 0; i < n_prompts; i++) {
        double d = (double)refused[i] / n_samples - p;
        ss += d * d;
    }
    double var = n_prompts > 1 ? ss / (n_prompts - 1) / n_prompts : 0; /* of the mean */
    double n = n_prompts, n_max = (double)n_prompts * n_samples;
    if (var > 0 && n_samples > 1) /* one sample per prompt is plain binomial data: Wilson's interval at n */
        n = fmin(n_max, fmax(1.0, p * (1 - p) / var));
    double z2 = PB_Z95 * PB_Z95, denom = 1 + z2 / n;
    double center = (p + z2 / (2 * n)) / denom;
    double half = PB_Z95 / denom * sqrt(p * (1 - p) / n + z2 / (4 * n * n));
    out->rate = p;
    out->low = fmax(0.0, center - half);
    out->high = fmin(1.0, center + half);
    out->n_effective = n;
    return PB_OK;
}
