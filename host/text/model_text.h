/* Loading the model's vocabulary, tokenizer and chat template from its
 * weight source (model_text.c). A model whose tokenizer or template is
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

#endif
