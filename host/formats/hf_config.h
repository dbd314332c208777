/* Hugging Face config.json reader: fills pb_model_config for the Llama
 * family (llama, mistral, qwen2) and refuses what the engine cannot run. */
#ifndef PB_HF_CONFIG_H
#define PB_HF_CONFIG_H

#include "patchbay.h"

/* Reads a Hugging Face config.json into cfg (the struct in include/patchbay.h).
 * cfg is fully overwritten on success and left zeroed on failure. Accepts
 * both the transformers 4 layout (rope_theta, rope_scaling at top level) and
 * the transformers 5 one ("rope_parameters"). */
pb_status pb_hf_config_read(pb_model_config *cfg, const char *config_json_path);

#endif
