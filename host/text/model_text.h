/* Loading the model's tokenizer and chat template (model_text.c). A model
 * whose tokenizer or template is missing or unsupported still loads; the
 * text calls then fail with the remembered reason. */
#ifndef PB_MODEL_TEXT_H
#define PB_MODEL_TEXT_H

#include "model/model.h"

typedef struct pb_gguf pb_gguf;

void pb_model_text_from_gguf(pb_model *model, const pb_gguf *gguf);
void pb_model_text_from_folder(pb_model *model, const char *dir);
void pb_model_text_free(pb_model *model);

#endif
