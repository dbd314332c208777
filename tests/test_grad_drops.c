/* GradDrop's passes run together, layer by layer (pb_grad_drops), against
 * the same passes run one at a time (pb_grad_pass_drop, itself checked
 * against PyTorch in test_grad and, through AtP*, in test_atp): every
 * gradient each drop's pass gives at every layer from its drop down to the
 * bottom, bit for bit on the reference backend (its products sum each row
 * alone) and within PB_TOL_GRAD_DROPS_NMSE on the CPU backend (OpenBLAS
 * over more rows). On random models of four layers and more, so that up
 * to all passes run in one batch, and in turns of a smaller batch; for a
 * metric on the logits and a projection below the top; with streamed
 * weights, where the passes together read the layers below the highest
 * drop once per turn. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "grad_drops_cases.h"
#include "model/stream.h"

/* At Gemma 3 270M's shape (its 262,144-token vocabulary), five layers; in
 * a sanitizer build three (the same path, a third of the passes). */
static void test_reference(void **state) {
    (void)state;
    check_drops("tiny", PB_BACKEND_REFERENCE, 0);
    check_drops("tiny", PB_BACKEND_REFERENCE, 1);
    check_drops(tu_sanitized() ? "gemma3-270m:3" : "gemma3-270m:5", PB_BACKEND_REFERENCE, 0);
}

static void test_cpu(void **state) {
    (void)state;
    check_drops("tiny", PB_BACKEND_CPU, 0);
    check_drops("tiny", PB_BACKEND_CPU, 1);
}

/* Streamed weights (two layer slots: 247 MiB is the load's least for this
 * model): the passes together read the layers below the highest drop
 * once; one at a time each drop's pass reads those below it again, but
 * for the two still in their slots. With the whole pass in the same
 * descent, the layers are read once for it and every drop, where the
 * whole pass alone reads them all again. */
static long long reads_since(pb_model *m, long long *before) {
    long long now;
    double bytes;
    pb_stream_counters(m->stream, &now, &bytes);
    long long reads = now - *before;
    *before = now;
    return reads;
}

static void test_streamed(void **state) {
    (void)state;
    pb_model *m = drops_model("smollm2-135m:8:bf16", PB_BACKEND_CPU, (size_t)247 << 20);
    drops_case k;
    drops_setup(&k, m, 0);
    k.bound = PB_TOL_GRAD_DROPS_NMSE;
    long long before = 0;
    reads_since(m, &before);
    drops_run(&k, 0, 0, 0, 0);
    long long together = reads_since(m, &before);
    drops_run(&k, 0, 0, 1, 0);
    long long alone = reads_since(m, &before);
    pb_capture *grads = NULL;
    CHECK_OK(pb_capture_create(&grads, m, HOOKS));
    double value;
    CHECK_OK(pb_grad_pass_from(m, k.T, k.acts, k.logits, &k.metric, grads, &value));
    pb_capture_free(grads);
    long long whole = reads_since(m, &before);
    drops_run(&k, 0, 0, 0, 1);
    long long merged = reads_since(m, &before);
    printf("[ MEASURE  ] smollm2-135m:8 bf16 streamed: layer reads for drops 0..%d: %lld together, %lld one at a "
           "time; the whole pass %lld alone, %lld with the drops together\n",
           k.hi, together, alone, whole, merged);
    assert_true(together <= k.hi);
    assert_true(alone > together);
    assert_true(merged <= k.hi + 1);
    assert_true(merged < whole + together);
    drops_teardown(&k);
    pb_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reference),
        cmocka_unit_test(test_cpu),
        cmocka_unit_test(test_streamed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
