/* Chat templates (text/chat_template.c): the input is a Jinja template, then
 * optionally a system and a user message, separated by the line
 * "\n--msg--\n". The template is recognised (its family and the details
 * read from its text: default system prompt, BOS, trimming, Llama-3.1
 * preamble, [INST] spacing) and renders the messages, as a chat prompt is
 * built from a model's tokenizer.chat_template. */
#include <stdint.h>
#include <stdlib.h>

#include "fuzz_util.h"
#include "text/chat_template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    fuzz_part parts[3] = {{0}};
    int n = fuzz_split(data, size, "\n--msg--\n", parts, 3);
    char *text = fuzz_string(parts[0].data, parts[0].size);
    char *system = n > 1 ? fuzz_string(parts[1].data, parts[1].size) : NULL;
    char *user = n > 2 ? fuzz_string(parts[2].data, parts[2].size) : fuzz_string((const uint8_t *)"Hi there", 8);
    const char *bos = size & 1 ? "<s>" : NULL;
    pb_chat_template t;
    if (fuzz_note("template", pb_chat_template_init(&t, text, NULL, bos)) == PB_OK) {
        char *out = NULL;
        if (fuzz_note("render", pb_chat_template_render(&t, system, user, &out)) == PB_OK)
            free(out);
        if (pb_chat_template_render(&t, NULL, user, &out) == PB_OK)
            free(out);
        pb_chat_template_free(&t);
    }
    free(text);
    free(system);
    free(user);
    return 0;
}
