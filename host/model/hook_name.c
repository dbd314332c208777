/* pb_hook_name_parse (patchbay.h): a TransformerLens hook name as the
 * patchable (component, layer) it names, through the component table. */
#include "model/components.h"
#include "model/hooks.h"
#include "util/internal.h"

pb_status pb_hook_name_parse(const char *name, int n_layers, pb_component *component, int *layer) {
    pb_hook_kind kind;
    if (!name || !pb_hook_parse(name, n_layers, &kind, layer) || !pb_component_from_hook(kind, component))
        return pb_fail(PB_ERR_ARG,
                       "'%s' is not a patchable hook (blocks.L.hook_resid_pre, hook_resid_mid, "
                       "hook_resid_post, hook_attn_out, hook_mlp_out, attn.hook_z/q/k/v with L < %d)",
                       name ? name : "(null)", n_layers);
    return PB_OK;
}
