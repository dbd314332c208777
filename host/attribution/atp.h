/* Attribution patching (AtP; Nanda 2023, Syed et al. 2023) of a sweep's
 * rows ("method": "atp" in the spec): instead of one patched forward per
 * row, each row's patched metric is estimated to first order from one
 * gradient of its pair's base run,
 *
 *   patched ~= base + sum over the site's base positions p of
 *              (a_source(map p) - a_base(p)) . d metric / d a (p)
 *
 * a the site's activation (a head's slice for z, q, k, v), the gradient by
 * the reference backward pass (grad_ref.h). The rows then go through the
 * sweep's statistics and writers as exact rows do; results.json records the
 * method. */
#ifndef PB_ATP_H
#define PB_ATP_H

#include <stdint.h>

#include "patchbay.h"

/* Estimates rows (indices pair * n_sites + site) of s and their pairs'
 * base and source metrics (pb_sweep_set_row / pb_sweep_set_pair): two
 * forwards and one backward per pair. PB_ERR_UNSUPPORTED naming what the
 * estimate does not cover yet: a metric on the residual or a callback, a
 * device backend or streamed weights. */
pb_status pb_atp_run_rows(pb_sweep *s, const int64_t *rows, int64_t n_rows);

#endif
