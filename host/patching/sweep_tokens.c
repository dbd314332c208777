/* pb_sweep_get_pair_tokens (patchbay.h): a planned pair's token ids, for
 * callers that label positions (the refusal-analysis report). */
#include "patching/sweep.h"
#include "util/internal.h"

pb_status pb_sweep_get_pair_tokens(const pb_sweep *sweep, int pair, int source, const int32_t **ids, int *T) {
    if (!sweep || pair < 0 || pair >= sweep->spec.n_pairs)
        return pb_fail(PB_ERR_ARG, "pair %d outside [0, %d)", pair, sweep ? sweep->spec.n_pairs : 0);
    const pb_prompt_spec *prompt = source ? &sweep->spec.pairs[pair].source : &sweep->spec.pairs[pair].base;
    *ids = prompt->ids;
    *T = prompt->T;
    return PB_OK;
}
