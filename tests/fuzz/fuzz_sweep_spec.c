/* Sweep specs (patching/sweep_spec.c) and their planning (pb_sweep_create):
 * mode, prompts (ids, text, chat, Gaussian noise), position maps, sites
 * (components, layers, heads, position lists and groups), metrics (token
 * sets, positions, a projection direction read from direction.npy beside
 * the spec) and thresholds, checked against a random "tiny" model (4
 * layers, d_model 64, vocab 512) built once in memory. Text goes through a
 * stand-in tokenizer (one id per byte) so text prompts parse too; a spec
 * that parses is then planned on the model (sites expanded into rows). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_util.h"
#include "patching/sweep_spec.h"

static pb_model *model;
static char dir[256], direction[320];

static void free_model(void) {
    pb_model_free(model);
    remove(direction);
    remove(dir);
}

/* The model and a spec folder holding a unit direction.npy of (d_model,). */
static void setup(void) {
    pb_load_options options = {.n_threads = 1, .backend = PB_BACKEND_REFERENCE};
    if (pb_model_random(&model, "tiny", 1, &options) != PB_OK || !fuzz_scratch_path(dir, sizeof dir, "spec")) {
        fprintf(stderr, "fuzz_sweep_spec: %s\n", pb_last_error());
        abort();
    }
    mkdir(dir, 0700);
    snprintf(direction, sizeof direction, "%s/direction.npy", dir);
    int d_model = pb_model_get_config(model)->d_model;
    float *x = calloc((size_t)d_model, sizeof *x);
    int64_t shape[1] = {d_model};
    if (!x || (x[0] = 1.0f, pb_npy_write(direction, x, PB_NPY_F32, 1, shape)) != PB_OK)
        abort();
    free(x);
    atexit(free_model);
}

/* One id per byte of text (and of the system prompt), inside the vocabulary;
 * chat wraps them in ids 1 and 2 as a template would. */
static pb_status tokenize(void *user, const char *text, int chat, int bos, const char *system, int32_t **ids,
                          int *n_ids) {
    int vocab = pb_model_get_config(model)->vocab_size;
    size_t n_text = strlen(text), n_system = chat && system ? strlen(system) : 0;
    size_t n = n_text + n_system + (chat ? 2 : 0);
    int32_t *out = malloc((n ? n : 1) * sizeof *out);
    if (!out)
        abort();
    size_t k = 0;
    if (chat)
        out[k++] = 1;
    for (size_t i = 0; i < n_system; i++)
        out[k++] = (unsigned char)system[i] % vocab;
    for (size_t i = 0; i < n_text; i++)
        out[k++] = (unsigned char)text[i] % vocab;
    if (chat)
        out[k++] = 2;
    *ids = out;
    *n_ids = (int)k;
    return PB_OK;
}

/* A token's text for messages: its id in angle brackets. */
static pb_status token_text(void *user, int id, char *buf, size_t size) {
    (void)user;
    snprintf(buf, size, "<%d>", id);
    return PB_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!model)
        setup();
    char *text = fuzz_string(data, size);
    pb_sweep_spec spec;
    const pb_spec_text with_text = {.tokenize = tokenize, .token_text = token_text};
    pb_status status = fuzz_note("spec",
                                 pb_sweep_spec_parse_text(&spec, text, dir, pb_model_get_config(model), &with_text));
    pb_sweep_spec_free(&spec);
    if (status == PB_OK) {
        pb_sweep *sweep = NULL;
        pb_sweep_options options = {.metric_fn_residual_layer = -1};
        if (fuzz_note("sweep", pb_sweep_create(&sweep, model, text, dir, &options)) == PB_OK) {
            for (int64_t row = 0; row < pb_sweep_site_count(sweep); row++)
                (void)pb_sweep_row_cost(sweep, row);
            pb_sweep_free(sweep);
        }
    }
    free(text);
    return 0;
}
