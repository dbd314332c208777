/* pb_sweep_get_pair_tokens and pb_sweep_get_prompt_info (patchbay.h): a
 * planned pair's token ids and how they came about, for callers that label
 * positions (the refusal-analysis report) or say what ran (the CLI). */
#include <string.h>

#include "patching/sweep.h"
#include "text/model_text.h"
#include "util/internal.h"

static pb_status pair_prompt(const pb_sweep *sweep, int pair, int source, const pb_prompt_spec **prompt) {
    if (!sweep || pair < 0 || pair >= sweep->spec.n_pairs)
        return pb_fail(PB_ERR_ARG, "pair %d outside [0, %d)", pair, sweep ? sweep->spec.n_pairs : 0);
    *prompt = source ? &sweep->spec.pairs[pair].source : &sweep->spec.pairs[pair].base;
    return PB_OK;
}

pb_status pb_sweep_get_pair_tokens(const pb_sweep *sweep, int pair, int source, const int32_t **ids, int *T) {
    const pb_prompt_spec *prompt = NULL;
    PB_TRY(pair_prompt(sweep, pair, source, &prompt));
    *ids = prompt->ids;
    *T = prompt->T;
    return PB_OK;
}

int pb_prompt_bos_added(const pb_prompt_spec *prompt, const pb_model *model) {
    return prompt->text && !prompt->chat && pb_model_plain_bos(model, prompt->bos);
}

pb_status pb_sweep_get_prompt_info(const pb_sweep *sweep, int pair, int source, pb_prompt_info *info) {
    const pb_prompt_spec *prompt = NULL;
    PB_TRY(pair_prompt(sweep, pair, source, &prompt));
    memset(info, 0, sizeof *info);
    info->text = prompt->text;
    info->chat = prompt->chat;
    info->system = prompt->system;
    info->is_noise = prompt->is_noise;
    int bos = sweep->model->cfg.bos_id;
    info->starts_with_bos = bos >= 0 && prompt->T > 0 && prompt->ids[0] == bos;
    info->bos_added = pb_prompt_bos_added(prompt, sweep->model);
    return PB_OK;
}
