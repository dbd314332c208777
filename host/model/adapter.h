/* LoRA adapters merged at load (issue 19): a weight source over another
 * whose read_f32 hands out W + sum over adapters of scale * B @ A for every
 * matrix an adapter targets, in Hugging Face (Linear) orientation, so the
 * merge is the same on a GGUF base (Q/K rows already in Hugging Face order)
 * and on a safetensors one (fused and transposed tensors as views of the
 * merged whole).
 *
 * An adapter is a PEFT folder: adapter_config.json ("peft_type": "LORA",
 * r, lora_alpha, use_rslora: scale = lora_alpha / r or / sqrt(r), times the
 * user's) and adapter_model.safetensors, its tensors named
 * "base_model.model.<module>.lora_A.weight" (r, in) and ".lora_B.weight"
 * (out, r). Or a file: llama.cpp's GGUF LoRA (convert_lora_to_gguf.py:
 * adapter.type "lora", adapter.lora.alpha, general.architecture the
 * base's; "<canonical name>.lora_a" (r, in) and ".lora_b" (out, r), B's
 * Q/K rows interleaved like the base's for the families whose GGUF
 * permutes them; scale alpha / r, or 1 without alpha). Options it does not
 * implement are refused by name (use_dora, lora_bias, rank_pattern,
 * alpha_pattern, modules_to_save, layers_to_transform, bias other than
 * "none", ...), and so is a tensor that targets no matrix of the model
 * (an embedding included) or has the wrong shape. The merged matrices are
 * read as f32: the source hands out no stored bytes (no in-place use, no
 * streaming). */
#ifndef PB_ADAPTER_H
#define PB_ADAPTER_H

#include "model/weight_source.h"

/* *src: the base source, taken over; on success *src is the merged one
 * (pb_weight_source_free frees both), on failure *src is left as it was.
 * paths (n) are adapter folders or GGUF files, scales (n) their user
 * scales (NULL: 1). */
pb_status pb_adapter_source_wrap(pb_weight_source **src, const char *const *paths, const float *scales, int n);
/* 1 when src is such a merged source and some adapter targets the
 * canonical tensor `name`; else 0. */
int pb_adapter_source_targets(const pb_weight_source *src, const char *name);

#endif
