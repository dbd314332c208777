/* Loading the model's vocabulary, tokenizer and chat template from its
 * weight source, or alone from a model's path (model_text.c). A model whose tokenizer or template is
 * missing or unsupported still loads; the text calls then fail with the
 * remembered reason. */
#ifndef PB_MODEL_TEXT_H
#define PB_MODEL_TEXT_H

#include "model/model.h"

typedef struct pb_weight_source pb_weight_source;

/* The token id -> bytes table (before the weights load; a failure stops the
 * load): GGUF metadata, or the folder's tokenizer.json when there is one. */
pb_status pb_model_text_vocab(pb_model *model, const pb_weight_source *source);
/* Tokenizer and chat template (after the weights); never fails. */
void pb_model_text_load(pb_model *model, const pb_weight_source *source);
void pb_model_text_free(pb_model *model);

/* 1 when a plain-text prompt gets the model's BOS first under bos (1 always,
 * 0 never, -1 as its tokenizer's add_bos_token): the rule of
 * pb_model_tokenize_plain, for those that record what it did. */
int pb_model_plain_bos(const pb_model *model, int bos);

/* A model with its text side only (vocabulary, tokenizer, chat template,
 * BOS/EOS ids and vocab_size in its config), read from a .gguf's metadata
 * or a folder's tokenizer.json / tokenizer_config.json / config.json
 * without reading a weight or checking the architecture, so that models
 * the engine cannot run yet still tokenize. Only the text calls
 * (tokenize, chat, detokenize, token text, chat template) and
 * pb_model_get_config / pb_model_free may be given it. A missing or
 * unsupported tokenizer is an error here. */
pb_status pb_model_load_text(pb_model **out, const char *path);

#endif
