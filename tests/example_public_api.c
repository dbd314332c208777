/* What an outside program sees: includes only include/patchbay.h (CMake
 * gives it no other include directory) and links only the library. Builds
 * a random tiny model, runs the forward pass, and checks what must hold
 * exactly: the logits have the documented shape, are finite, the same
 * weights give bit-identical logits, and a bad argument is refused with a
 * message. Exits 0 when all hold, 1 otherwise. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "patchbay.h"

static int failures;

static void expect(int ok, const char *what) {
    if (!ok) {
        fprintf(stderr, "FAILED: %s\n", what);
        failures++;
    }
}

int main(void) {
    pb_load_options options = {.n_threads = 1, .backend = PB_BACKEND_CPU};
    pb_model *model = NULL;
    pb_status status = pb_model_random(&model, "tiny", 7, &options);
    if (status != PB_OK) {
        fprintf(stderr, "pb_model_random: %s: %s\n", pb_status_name(status), pb_last_error());
        return 1;
    }
    const pb_model_config *config = pb_model_get_config(model);
    const int32_t ids[5] = {1, 2, 3, 4, 5};
    const int T = 5;
    size_t count = (size_t)T * (size_t)config->vocab_size;
    float *first = malloc(count * sizeof *first);
    float *second = malloc(count * sizeof *second);
    if (!first || !second) {
        fprintf(stderr, "out of memory\n");
        return 1;
    }
    /* the same model, the same ids: the same bits */
    expect(pb_forward(model, ids, T, first, NULL) == PB_OK, "first forward");
    expect(pb_forward(model, ids, T, second, NULL) == PB_OK, "second forward");
    expect(memcmp(first, second, count * sizeof *first) == 0, "two forwards give identical logits");
    int finite = 1;
    for (size_t i = 0; i < count; i++)
        finite &= isfinite(first[i]) != 0;
    expect(finite, "logits are finite");

    /* no ids: refused, with a message */
    expect(pb_forward(model, ids, 0, first, NULL) != PB_OK, "T = 0 is refused");
    expect(pb_last_error() != NULL && pb_last_error()[0] != '\0', "the refusal says why");

    printf("example_public_api: %s, %d layers, d_model %d, vocab %d: logits[0][0] = %.9g\n", config->arch,
           config->n_layers, config->d_model, config->vocab_size, (double)first[0]);
    free(first);
    free(second);
    pb_model_free(model);
    return failures ? 1 : 0;
}
