/* The CUDA backend's hand-written kernels (cuda/attention.cu,
 * attention_jobs.cu, convert.cu, dequant.cu, elementwise.cu, layernorm.cu,
 * rmsnorm.cu, rope.cu, metric.cu, backward.cu) executed on the CPU by the emulator in
 * tests/cuda_emu, against the reference backend (ops_ref.c, metric.c) and
 * host/formats/quant.c on the same inputs. No GPU and
 * no CUDA toolkit: the unmodified .cu files are rewritten (launch syntax and
 * __shared__ declarations only) and compiled as host C++.
 *
 * What this verifies: the kernels' logic. Indexing and grid/block shapes
 * (every element written once, nothing past the end: guard floats here,
 * AddressSanitizer on the dynamic shared memory and buffers in the sanitizer
 * build), the synchronisation structure (every thread of a block runs as its
 * own fiber; __syncthreads and warp shuffles are real barriers and a
 * divergent one aborts; results must be bit-identical when the threads run
 * in reverse order between barriers, which a missing __syncthreads breaks),
 * the reductions, the online softmax, the job search of attention_jobs, and
 * the numerics under the host's expf/sincosf/exp/log and an independent
 * round-to-nearest-even implementation of the bf16/fp16 intrinsics.
 *
 * What it cannot: the GPU memory model (a block's threads never run
 * concurrently here, so a race that needs true parallelism or a missing
 * __threadfence goes unseen), warp scheduling and independent thread
 * scheduling, the device's own expf/sincosf/erff/exp ulps (test_cuda_backend's
 * tolerances cover those on a GPU), cuBLAS GEMMs, NCCL, CUDA runtime error
 * paths beyond launch-configuration checks, backend_cuda.cu's argument
 * checks and copies (its descriptor loop for attention_jobs is mirrored in
 * tests/cuda_emu/launchers.cpp, not run), and performance. Passing
 * here is no claim that the kernels work on a GPU; tests/test_cuda_*.c on a
 * device are that claim. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "backend/backend.h"
#include "formats/dtype.h"
#include "util/internal.h"
#include "patching/metric.h"
#include "pb_cuda_emu.h"
#include "formats/quant.h"
#include "test_util.h"
#include "tolerances.h"

/* Floats appended to every output buffer, set to PB_SENTINEL. */
#define PB_GUARD 16
#define PB_SENTINEL 12345.0f

static pb_backend *g_ref;

#define CHECK_LAUNCH(expr)                                       \
    do {                                                         \
        int check_error_ = (expr);                               \
        if (check_error_ != 0)                                   \
            fail_msg("%s -> cudaError %d", #expr, check_error_); \
    } while (0)

static void *checked_malloc(size_t bytes) {
    void *p = malloc(bytes ? bytes : 1);
    assert_non_null(p);
    return p;
}

/* n floats uniform in [-scale, scale), then PB_GUARD sentinels. */
static float *random_floats(size_t n, uint64_t seed, float scale) {
    float *x = checked_malloc(sizeof(float) * (n + PB_GUARD));
    tu_fill(x, n, seed, scale);
    for (size_t i = n; i < n + PB_GUARD; i++)
        x[i] = PB_SENTINEL;
    return x;
}

/* n floats of `value`, then PB_GUARD sentinels. */
static float *filled_floats(size_t n, float value) {
    float *x = checked_malloc(sizeof(float) * (n + PB_GUARD));
    for (size_t i = 0; i < n + PB_GUARD; i++)
        x[i] = i < n ? value : PB_SENTINEL;
    return x;
}

static float *copy_floats(const float *x, size_t n) {
    float *y = checked_malloc(sizeof(float) * (n + PB_GUARD));
    memcpy(y, x, sizeof(float) * (n + PB_GUARD));
    return y;
}

static void check_guard(const float *x, size_t n, const char *what) {
    for (size_t i = n; i < n + PB_GUARD; i++)
        if (x[i] != PB_SENTINEL)
            fail_msg("%s: written past the end: guard float %zu is %g", what, i - n, (double)x[i]);
}

/* NaN and Inf must sit at the same places; over the finite rest, NMSE and
 * max |diff| are printed and the NMSE must stay within tol. */
static void expect_close(const float *got, const float *want, size_t n, double tol, const char *what) {
    double num = 0.0, den = 0.0, max_abs = 0.0;
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) != isnan(want[i]) || ((isinf(got[i]) || isinf(want[i])) && got[i] != want[i]))
            fail_msg("%s: element %zu is %g, the reference %g", what, i, (double)got[i], (double)want[i]);
        if (!isfinite(want[i]))
            continue;
        const double d = (double)got[i] - want[i];
        num += d * d;
        den += (double)want[i] * want[i];
        if (fabs(d) > max_abs)
            max_abs = fabs(d);
    }
    const double nmse = den == 0.0 ? num : num / den;
    printf("[ MEASURE  ] %s: nmse %.3g, max |diff| %.3g (tolerance nmse %.0e)\n", what, nmse, max_abs, tol);
    if (!(nmse <= tol))
        fail_msg("%s: nmse %g exceeds %g", what, nmse, tol);
}

/* Bit-identical, NaN payloads aside. */
static void expect_identical(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++) {
        if (isnan(got[i]) && isnan(want[i]))
            continue;
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: element %zu is %a, expected %a", what, i, (double)got[i], (double)want[i]);
    }
    printf("[ MEASURE  ] %s: %zu elements bit-identical\n", what, n);
}

/* ---- elementwise ----------------------------------------------------------- */

static void test_embed(void **state) {
    (void)state;
    enum { VOCAB = 300, T = 41, D = 67 };
    int32_t ids[T];
    uint64_t s = 7;
    for (int t = 0; t < T; t++)
        ids[t] = (int32_t)(tu_next(&s) % VOCAB);
    ids[0] = 0;
    ids[T - 1] = VOCAB - 1;
    float *want = filled_floats((size_t)T * D, 0.0f);
    float *got = filled_floats((size_t)T * D, NAN);

    float *table = random_floats((size_t)VOCAB * D, 1, 3.0f);
    CHECK_LAUNCH(pb_emu_embed(got, table, ids, T, D, 1.0f));
    CHECK_OK(g_ref->ops->embed(g_ref, want, table, PB_DTYPE_F32, ids, T, D, 1.0f));
    check_guard(got, (size_t)T * D, "embed f32");
    expect_identical(got, want, (size_t)T * D, "embed f32");

    /* 16-bit tables of arbitrary bit patterns: subnormals, Inf, NaN too;
     * widening is exact */
    uint16_t *table16 = checked_malloc(sizeof(uint16_t) * VOCAB * D);
    for (size_t i = 0; i < (size_t)VOCAB * D; i++)
        table16[i] = (uint16_t)(tu_next(&s) >> 48);
    for (int is_bf16 = 0; is_bf16 <= 1; is_bf16++) {
        const char *what = is_bf16 ? "embed bf16" : "embed f16";
        for (size_t i = 0; i < (size_t)T * D; i++)
            got[i] = NAN;
        CHECK_LAUNCH(pb_emu_embed16(got, table16, is_bf16, ids, T, D, 1.0f));
        CHECK_OK(g_ref->ops->embed(g_ref, want, table16, is_bf16 ? PB_DTYPE_BF16 : PB_DTYPE_F16, ids, T, D, 1.0f));
        check_guard(got, (size_t)T * D, what);
        expect_identical(got, want, (size_t)T * D, what);
    }
    /* Gemma's scale sqrt(d_model) (here sqrt(2048), not a power of two, and
     * 48 = sqrt(2304)): one fp32 product on both sides, bit-identical; the
     * 16-bit tables' Inf, NaN and subnormals go through it too */
    const float scales[] = {45.254833995939045f, 48.0f};
    for (int k = 0; k < 2; k++) {
        char what[64];
        snprintf(what, sizeof what, "embed f32 scale %g", (double)scales[k]);
        CHECK_LAUNCH(pb_emu_embed(got, table, ids, T, D, scales[k]));
        CHECK_OK(g_ref->ops->embed(g_ref, want, table, PB_DTYPE_F32, ids, T, D, scales[k]));
        check_guard(got, (size_t)T * D, what);
        expect_identical(got, want, (size_t)T * D, what);
        for (int is_bf16 = 0; is_bf16 <= 1; is_bf16++) {
            snprintf(what, sizeof what, "embed %s scale %g", is_bf16 ? "bf16" : "f16", (double)scales[k]);
            CHECK_LAUNCH(pb_emu_embed16(got, table16, is_bf16, ids, T, D, scales[k]));
            CHECK_OK(
                g_ref->ops->embed(g_ref, want, table16, is_bf16 ? PB_DTYPE_BF16 : PB_DTYPE_F16, ids, T, D, scales[k]));
            check_guard(got, (size_t)T * D, what);
            expect_identical(got, want, (size_t)T * D, what);
        }
    }
    free(table16);
    free(table);
    free(got);
    free(want);
}

static int is_nan16(uint16_t h, int is_bf16) {
    return is_bf16 ? (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) : (h & 0x7c00u) == 0x7c00u && (h & 0x3ffu);
}

static float float_from_bits(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static void test_round16(void **state) {
    (void)state;
    /* ties, overflow thresholds, subnormals of both formats, specials */
    static const uint32_t special_bits[] = {
        0x00000000u, 0x80000000u, 0x3f800000u, 0xbf800000u, /* +-0, +-1 */
        0x3f808000u, 0x3f818000u, 0x3f80c000u,              /* bf16 ties to even (down, up), above a tie */
        0x3f801000u, 0x3f803000u, 0x3f802000u,              /* fp16 ties (1 + 2^-11, 1 + 3 * 2^-11), exact */
        0x33000000u, 0x33400000u, 0x33c00000u, 0x337fffffu, /* fp16 subnormal ties and just below: 2^-25 ... */
        0x38800000u, 0x387fc000u, 0x387fe000u,              /* fp16: smallest normal, largest subnormals' ties */
        0x00000001u, 0x00008000u, 0x00018000u, 0x807fffffu, /* fp32 subnormals: bf16 ties */
        0x00800000u, 0x7f7fffffu, 0xff7fffffu, 0x7f7f7fffu, 0x7f7f8000u, /* FLT_MIN, FLT_MAX (bf16 Inf) */
        0x477fe000u, 0x477fefffu, 0x477ff000u, 0x47800000u,              /* 65504, just below 65520, 65520, 65536 */
        0x7f800000u, 0xff800000u, 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7fbfffffu, /* Inf, NaN */
    };
    const size_t n_special = sizeof special_bits / sizeof special_bits[0];
    const size_t n_random = 100000;
    const size_t n = n_special + 2 * n_random;
    float *x = checked_malloc(sizeof(float) * n);
    uint64_t s = 99;
    for (size_t i = 0; i < n_special; i++)
        x[i] = float_from_bits(special_bits[i]);
    for (size_t i = 0; i < n_random; i++) /* any bit pattern */
        x[n_special + i] = float_from_bits((uint32_t)(tu_next(&s) >> 32));
    tu_fill(x + n_special + n_random, n_random, 5, 70000.0f); /* fp16's whole range and past it */
    for (size_t i = n_special + n_random; i < n; i += 3)
        x[i] *= 1e-5f;

    uint16_t *got = checked_malloc(sizeof(uint16_t) * (n + PB_GUARD));
    for (int is_bf16 = 0; is_bf16 <= 1; is_bf16++) {
        const char *what = is_bf16 ? "round16 bf16" : "round16 f16";
        for (size_t i = 0; i < n + PB_GUARD; i++)
            got[i] = 0xabcdu;
        CHECK_LAUNCH(pb_emu_round16(got, x, n, is_bf16));
        size_t nan_payload_differs = 0;
        for (size_t i = 0; i < n; i++) {
            const uint16_t want = is_bf16 ? pb_fp32_to_bf16(x[i]) : pb_fp32_to_fp16(x[i]);
            if (is_nan16(want, is_bf16) && is_nan16(got[i], is_bf16)) {
                nan_payload_differs += got[i] != want;
                continue;
            }
            if (got[i] != want)
                fail_msg("%s: x = %a gives 0x%04x, dtype.c 0x%04x", what, (double)x[i], got[i], want);
        }
        for (size_t i = n; i < n + PB_GUARD; i++)
            if (got[i] != 0xabcdu)
                fail_msg("%s: written past the end", what);
        /* CUDA's conversions give the canonical NaN 0x7fff; dtype.c keeps
         * the sign (and for bf16 the payload): both are NaN, which is all
         * the backend contract asks. */
        printf("[ MEASURE  ] %s: %zu values bit-identical to dtype.c (%zu NaNs with another payload)\n", what, n,
               nan_payload_differs);
    }
    free(got);
    free(x);
}

/* More elements than the largest grid has threads (65535 blocks of 256):
 * the grid-stride loops' second pass runs. round16 is the cheapest kernel
 * for it (6 bytes an element, 100 MB here). */
static void test_grid_stride(void **state) {
    (void)state;
    const size_t n = (size_t)65535 * 256 + 4099;
    float *x = checked_malloc(sizeof(float) * n);
    uint16_t *got = checked_malloc(sizeof(uint16_t) * (n + PB_GUARD));
    for (size_t i = 0; i < n; i++)
        x[i] = (float)(i % 9973) * 0.37f - 1000.0f;
    for (size_t i = 0; i < n + PB_GUARD; i++)
        got[i] = 0xabcdu;
    CHECK_LAUNCH(pb_emu_round16(got, x, n, 1));
    for (size_t i = 0; i < n; i++)
        if (got[i] != pb_fp32_to_bf16(x[i]))
            fail_msg("round16 bf16 n=%zu: element %zu is 0x%04x, dtype.c 0x%04x", n, i, got[i], pb_fp32_to_bf16(x[i]));
    for (size_t i = n; i < n + PB_GUARD; i++)
        if (got[i] != 0xabcdu)
            fail_msg("round16 bf16 n=%zu: written past the end", n);
    printf("[ MEASURE  ] round16 bf16 n=%zu (grid-stride second pass): bit-identical to dtype.c\n", n);
    free(x);
    free(got);
}

static void test_add_bias(void **state) {
    (void)state;
    enum { ROWS = 13, N = 1000 };
    float *out = random_floats((size_t)ROWS * N, 11, 4.0f);
    float *bias = random_floats(N, 12, 1.0f);
    float *want = copy_floats(out, (size_t)ROWS * N);
    for (size_t r = 0; r < ROWS; r++)
        for (size_t i = 0; i < N; i++)
            want[r * N + i] += bias[i];
    CHECK_LAUNCH(pb_emu_add_bias(out, bias, ROWS, N));
    check_guard(out, (size_t)ROWS * N, "add_bias");
    expect_identical(out, want, (size_t)ROWS * N, "add_bias 13x1000"); /* the same one fp32 addition */
    free(out);
    free(bias);
    free(want);
}

/* copy_regions: 300 regions of assorted lengths (some empty) in three
 * launches, into disjoint places of a destination with gaps: each copied
 * float identical, every gap untouched. */
static void test_copy_regions(void **state) {
    (void)state;
    enum { N_REGIONS = 300, SRC = 40000, DST = 80000 };
    float *src = random_floats(SRC, 41, 1.0f);
    src[17] = NAN;
    float *got = filled_floats(DST, 12345.0f), *want = filled_floats(DST, 12345.0f);
    pb_copy_region *regions = malloc(sizeof *regions * N_REGIONS);
    assert_non_null(regions);
    uint64_t s = 43;
    size_t at = 0;
    for (int i = 0; i < N_REGIONS; i++) {
        size_t n = i % 7 == 3 ? 0 : 1 + tu_next(&s) % 250, from = tu_next(&s) % (SRC - 256);
        at += tu_next(&s) % 8;
        assert_true(at + n <= DST);
        regions[i] = (pb_copy_region){got + at, src + from, n};
        memcpy(want + at, src + from, sizeof(float) * n);
        at += n;
    }
    CHECK_LAUNCH(pb_emu_copy_regions(regions, N_REGIONS));
    check_guard(got, DST, "copy_regions");
    expect_identical(got, want, DST, "copy_regions 300 regions, gaps untouched");
    free(regions);
    free(src);
    free(got);
    free(want);
}

static void test_swiglu_add(void **state) {
    (void)state;
    const size_t n = 10007;
    float *gate = random_floats(n, 21, 20.0f);
    float *up = random_floats(n, 22, 3.0f);
    gate[0] = -100.0f; /* expf(100) = Inf: silu is -0, the reference a subnormal */
    gate[1] = 100.0f;
    gate[2] = 0.0f;
    float *got = filled_floats(n, NAN);
    float *want = filled_floats(n, NAN);
    CHECK_LAUNCH(pb_emu_glu(got, gate, up, 1, n, n, PB_ACTIVATION_SILU));
    CHECK_OK(g_ref->ops->glu(g_ref, want, gate, up, 1, n, n, PB_ACTIVATION_SILU));
    check_guard(got, n, "swiglu");
    /* fp32 expf and division vs the reference's double: a few ulp */
    expect_close(got, want, n, PB_TOL_ELEMENTWISE_NMSE, "swiglu n=10007");
    /* the halves of a fused gate/up output: 37 rows of 2 x 135 values */
    float *fused_got = filled_floats(37 * 135, NAN);
    float *fused_want = filled_floats(37 * 135, NAN);
    CHECK_LAUNCH(pb_emu_glu(fused_got, gate, gate + 135, 37, 135, 270, PB_ACTIVATION_SILU));
    CHECK_OK(g_ref->ops->glu(g_ref, fused_want, gate, gate + 135, 37, 135, 270, PB_ACTIVATION_SILU));
    check_guard(fused_got, 37 * 135, "swiglu fused halves");
    expect_close(fused_got, fused_want, 37 * 135, PB_TOL_ELEMENTWISE_NMSE, "swiglu fused halves 37 x 135, stride 270");
    free(fused_got);
    free(fused_want);

    CHECK_LAUNCH(pb_emu_add(got, gate, up, n));
    CHECK_OK(g_ref->ops->add(g_ref, want, gate, up, n));
    check_guard(got, n, "add");
    expect_identical(got, want, n, "add n=10007");
    /* out aliasing an input */
    CHECK_LAUNCH(pb_emu_add(gate, gate, up, n));
    check_guard(gate, n, "add in place");
    expect_identical(gate, want, n, "add in place (out == a)");
    free(gate);
    free(up);
    free(got);
    free(want);
}

/* A GELU gate, tanh form (Gemma) or exact (GPT-NeoX), over gates in
 * [-20, 20) plus the edges: |g| so large that g^3 overflows fp32 (the tanh
 * saturates first: g or -0), +-Inf (Inf, and -Inf * 0 = NaN, as the
 * reference), NaN in gate and in up, and the cancellation region g ~ -5
 * where 1 + tanh (1 + erf) loses digits. Plain rows, the halves of a fused
 * gate/up output, and out aliasing gate. */
static void run_glu_gelu(pb_activation act, const char *name) {
    char what[128];
    const size_t n = 10007;
    float *gate = random_floats(n, 23, 20.0f);
    float *up = random_floats(n, 24, 3.0f);
    const float edges[] = {-100.0f, 100.0f, 0.0f, 1e20f, -1e20f, INFINITY, -INFINITY, NAN, -5.0f, -4.5f, 3e-20f};
    for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
        gate[i] = edges[i];
    up[20] = NAN;
    float *got = filled_floats(n, NAN);
    float *want = filled_floats(n, NAN);
    CHECK_LAUNCH(pb_emu_glu(got, gate, up, 1, n, n, act));
    CHECK_OK(g_ref->ops->glu(g_ref, want, gate, up, 1, n, n, act));
    check_guard(got, n, name);
    /* fp32 tanhf/erff and products vs the reference's double: a few ulp.
     * The edges apart (their 1e20 would swamp the NMSE of the rest) */
    snprintf(what, sizeof what, "glu %s edges (Inf, NaN, 1e20, -5)", name);
    expect_close(got, want, 32, PB_TOL_ELEMENTWISE_NMSE, what);
    snprintf(what, sizeof what, "glu %s n=9975 in [-20, 20)", name);
    expect_close(got + 32, want + 32, n - 32, PB_TOL_ELEMENTWISE_NMSE, what);

    /* 36 rows of 2 x 135 values from gate[270] on: within the n gates,
     * past the edges */
    float *fused_got = filled_floats(36 * 135, NAN);
    float *fused_want = filled_floats(36 * 135, NAN);
    CHECK_LAUNCH(pb_emu_glu(fused_got, gate + 270, gate + 405, 36, 135, 270, act));
    CHECK_OK(g_ref->ops->glu(g_ref, fused_want, gate + 270, gate + 405, 36, 135, 270, act));
    snprintf(what, sizeof what, "glu %s fused halves 36 x 135, stride 270", name);
    check_guard(fused_got, 36 * 135, what);
    expect_close(fused_got, fused_want, 36 * 135, PB_TOL_ELEMENTWISE_NMSE, what);

    /* in place, out == gate: the same values as out of place */
    CHECK_LAUNCH(pb_emu_glu(gate, gate, up, 1, n, n, act));
    snprintf(what, sizeof what, "glu %s in place (out == gate)", name);
    check_guard(gate, n, what);
    expect_identical(gate, got, n, what);
    free(fused_got);
    free(fused_want);
    free(gate);
    free(up);
    free(got);
    free(want);
}

static void test_glu_gelu(void **state) {
    (void)state;
    run_glu_gelu(PB_ACTIVATION_GELU_TANH, "gelu_tanh");
    run_glu_gelu(PB_ACTIVATION_GELU, "gelu exact");
}

/* activate, in place (the MLP without a gate), each activation over
 * x in [-20, 20) and the glu tests' edges (+-Inf, NaN, 1e20 whose cube
 * overflows, the cancellation near -5, a tiny value) compared apart; an
 * activation the kernels lack is refused and launches nothing. */
static void test_activate(void **state) {
    (void)state;
    const pb_activation acts[] = {PB_ACTIVATION_SILU, PB_ACTIVATION_GELU_TANH, PB_ACTIVATION_GELU};
    const char *names[] = {"silu", "gelu_tanh", "gelu exact"};
    const size_t n = 10007;
    for (int a = 0; a < 3; a++) {
        char what[96];
        float *x = random_floats(n, 26, 20.0f);
        const float edges[] = {-100.0f, 100.0f, 0.0f, 1e20f, -1e20f, INFINITY, -INFINITY, NAN, -5.0f, -4.5f, 3e-20f};
        for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
            x[i] = edges[i];
        float *want = copy_floats(x, n);
        CHECK_LAUNCH(pb_emu_activate(x, n, acts[a]));
        CHECK_OK(g_ref->ops->activate(g_ref, want, n, acts[a]));
        snprintf(what, sizeof what, "activate %s edges (Inf, NaN, 1e20, -5)", names[a]);
        check_guard(x, n, what);
        expect_close(x, want, 32, PB_TOL_ELEMENTWISE_NMSE, what);
        snprintf(what, sizeof what, "activate %s n=9975 in [-20, 20)", names[a]);
        expect_close(x + 32, want + 32, n - 32, PB_TOL_ELEMENTWISE_NMSE, what);
        free(x);
        free(want);
    }
    float *x = filled_floats(8, 1.0f);
    assert_int_not_equal(pb_emu_activate(x, 8, (pb_activation)7), 0);
    assert_int_not_equal(pb_emu_glu(x, x, x, 1, 8, 8, (pb_activation)7), 0);
    for (int i = 0; i < 8; i++)
        assert_true(x[i] == 1.0f);
    check_guard(x, 8, "unknown activation");
    free(x);
}

/* softcap in place: values up to 40x the cap (saturated: +-cap), +-Inf
 * (+-cap), NaN, zeros of both signs and a tiny value (x itself), for
 * Gemma 2's final cap 30 and a cap of 5. */
static void test_softcap(void **state) {
    (void)state;
    const size_t n = 10007;
    const float caps[] = {30.0f, 5.0f};
    for (int c = 0; c < 2; c++) {
        float *x = random_floats(n, 25, 200.0f);
        const float edges[] = {INFINITY, -INFINITY, NAN, 0.0f, -0.0f, 1e-30f, 1e30f, -1e30f, 30.0f, -5.0f};
        for (size_t i = 0; i < sizeof edges / sizeof edges[0]; i++)
            x[i] = edges[i];
        float *want = copy_floats(x, n);
        CHECK_LAUNCH(pb_emu_softcap(x, n, caps[c]));
        CHECK_OK(g_ref->ops->softcap(g_ref, want, n, caps[c]));
        char what[64];
        snprintf(what, sizeof what, "softcap cap %g n=10007, |x| to 200", (double)caps[c]);
        check_guard(x, n, what);
        expect_close(x, want, n, PB_TOL_ELEMENTWISE_NMSE, what);
        for (size_t i = 0; i < n; i++)
            if (!isnan(x[i]) && fabsf(x[i]) > caps[c])
                fail_msg("%s: element %zu is %g, beyond the cap", what, i, (double)x[i]);
        free(x);
        free(want);
    }
}

/* ---- rmsnorm and rope ------------------------------------------------------- */

static void run_rmsnorm(int rows, int d, int with_weight, int nan_row, int in_place, const char *what) {
    const size_t n = (size_t)rows * d;
    float *x = random_floats(n, (uint64_t)(rows * 1000 + d), 3.0f);
    float *weight = with_weight ? random_floats((size_t)d, 31, 2.0f) : NULL;
    if (nan_row >= 0)
        x[(size_t)nan_row * d + (size_t)d / 2] = NAN;
    float *want = filled_floats(n, NAN);
    CHECK_OK(g_ref->ops->rmsnorm(g_ref, want, x, weight, rows, d, 1e-5f));
    float *apart = filled_floats(n, NAN);
    CHECK_LAUNCH(pb_emu_rmsnorm(apart, x, weight, rows, d, 1e-5f));
    float *got = apart;
    if (in_place) {
        /* out == x, threads forward and in reverse between barriers: the
         * bits of the out-of-place run (no element written before its row
         * is reduced, none read after another thread wrote it) */
        float *x_again = copy_floats(x, n);
        pb_emu_set_reverse_order(1);
        CHECK_LAUNCH(pb_emu_rmsnorm(x_again, x_again, weight, rows, d, 1e-5f));
        pb_emu_set_reverse_order(0);
        CHECK_LAUNCH(pb_emu_rmsnorm(x, x, weight, rows, d, 1e-5f));
        expect_identical(x, apart, n, what);
        expect_identical(x_again, apart, n, what);
        check_guard(x_again, n, what);
        free(x_again);
        got = x;
    }
    check_guard(got, n, what);
    /* fp32 sum of squares (per-thread strided sums, then a tree) vs double;
     * the error only scales the row: ~1e-7 relative */
    expect_close(got, want, n, PB_TOL_OP_NMSE, what);
    free(apart);
    free(x);
    free(weight);
    free(want);
}

static void test_rmsnorm(void **state) {
    (void)state;
    run_rmsnorm(3, 1, 1, -1, 0, "rmsnorm 3x1 weight");
    run_rmsnorm(4, 7, 0, -1, 0, "rmsnorm 4x7 no weight");
    run_rmsnorm(5, 256, 1, -1, 0, "rmsnorm 5x256 weight");
    run_rmsnorm(3, 1000, 1, 1, 0, "rmsnorm 3x1000 weight, NaN in row 1");
    run_rmsnorm(2, 4097, 0, -1, 0, "rmsnorm 2x4097 no weight");
    run_rmsnorm(6, 576, 1, -1, 1, "rmsnorm 6x576 weight, in place");
    /* the per-head q/k norms (Gemma 3, Qwen3): rows = T * n_heads, d = head_dim */
    run_rmsnorm(7 * 8, 128, 1, 9, 1, "rmsnorm q/k norm in place T=7 x 8 heads, hd=128, NaN in row 9");
    run_rmsnorm(5 * 4, 256, 1, -1, 1, "rmsnorm q/k norm in place T=5 x 4 heads, hd=256");
}

/* LayerNorm on rows of `mean` plus noise in [-3, 3): a mean of 1e3 next to
 * that spread is what a variance taken as E[x^2] - E[x]^2, or sums kept in
 * fp32, gets wrong (centred values off by ~1e-4 relative, NMSE ~1e-8);
 * weight and bias each present or NULL; in place (forward and reverse
 * thread order) bit-identical to out of place. */
static void run_layernorm(int rows, int d, float mean, int with_weight, int with_bias, int in_place, const char *what) {
    const size_t n = (size_t)rows * d;
    float *x = random_floats(n, (uint64_t)(rows * 1000 + d), 3.0f);
    for (size_t i = 0; i < n; i++)
        x[i] += mean;
    float *weight = with_weight ? random_floats((size_t)d, 32, 2.0f) : NULL;
    float *bias = with_bias ? random_floats((size_t)d, 33, 1.0f) : NULL;
    float *want = filled_floats(n, NAN);
    CHECK_OK(g_ref->ops->layernorm(g_ref, want, x, weight, bias, rows, d, 1e-5f));
    float *got = filled_floats(n, NAN);
    CHECK_LAUNCH(pb_emu_layernorm(got, x, weight, bias, rows, d, 1e-5f));
    check_guard(got, n, what);
    /* double sums on both sides; the kernel rounds the centred, scaled
     * value to fp32 and applies weight and bias in fp32 (a few ulp) */
    expect_close(got, want, n, PB_TOL_OP_NMSE, what);
    if (in_place) {
        float *x_again = copy_floats(x, n);
        pb_emu_set_reverse_order(1);
        CHECK_LAUNCH(pb_emu_layernorm(x_again, x_again, weight, bias, rows, d, 1e-5f));
        pb_emu_set_reverse_order(0);
        CHECK_LAUNCH(pb_emu_layernorm(x, x, weight, bias, rows, d, 1e-5f));
        check_guard(x, n, what);
        check_guard(x_again, n, what);
        expect_identical(x, got, n, what);
        expect_identical(x_again, got, n, what);
        free(x_again);
    }
    free(x);
    free(weight);
    free(bias);
    free(want);
    free(got);
}

static void test_layernorm(void **state) {
    (void)state;
    run_layernorm(3, 1, 0.0f, 1, 1, 0, "layernorm 3x1 weight bias (output = bias)");
    run_layernorm(5, 64, 0.0f, 1, 1, 0, "layernorm 5x64 weight bias");
    run_layernorm(5, 64, 0.0f, 0, 0, 0, "layernorm 5x64 weight NULL bias NULL");
    run_layernorm(4, 768, 1e3f, 1, 1, 0, "layernorm 4x768 mean 1e3 weight bias");
    run_layernorm(4, 768, -1e3f, 0, 1, 0, "layernorm 4x768 mean -1e3 weight NULL bias");
    run_layernorm(3, 1000, 1e3f, 1, 0, 0, "layernorm 3x1000 mean 1e3 weight bias NULL");
    run_layernorm(6, 768, 1e3f, 1, 1, 1, "layernorm 6x768 mean 1e3 weight bias, in place");
    run_layernorm(7, 1000, 0.0f, 0, 0, 1, "layernorm 7x1000 weight NULL bias NULL, in place");
    run_layernorm(2, 1, 5.0f, 0, 0, 1, "layernorm 2x1 no weight no bias, in place (output 0)");
    /* a NaN poisons its row only */
    float *x = random_floats(3 * 64, 34, 3.0f);
    x[64 + 7] = NAN;
    float *want = filled_floats(3 * 64, 0.0f), *got = filled_floats(3 * 64, 0.0f);
    CHECK_OK(g_ref->ops->layernorm(g_ref, want, x, NULL, NULL, 3, 64, 1e-5f));
    CHECK_LAUNCH(pb_emu_layernorm(got, x, NULL, NULL, 3, 64, 1e-5f));
    check_guard(got, 3 * 64, "layernorm NaN in row 1");
    for (int i = 0; i < 3 * 64; i++)
        if (isnan(got[i]) != (i / 64 == 1))
            fail_msg("layernorm NaN in row 1: element %d is %g", i, (double)got[i]);
    expect_close(got, want, 3 * 64, PB_TOL_OP_NMSE, "layernorm 3x64 NaN in row 1");
    free(x);
    free(want);
    free(got);
}

/* rotary_dims < head_dim: GPT-NeoX's partial rotary; the dims from
 * rotary_dims on must keep their bits. scale != 1: LongRoPE's attention
 * factor on the rotated dims. */
static void run_rope(int T, int n_heads, int head_dim, int rotary_dims, float scale, const char *what) {
    const size_t n = (size_t)T * n_heads * head_dim;
    float *x = random_floats(n, (uint64_t)(T * 100 + head_dim), 2.0f);
    float *before = copy_floats(x, n);
    float *want = copy_floats(x, n);
    int32_t *positions = checked_malloc(sizeof(int32_t) * (size_t)T);
    uint64_t s = 3;
    for (int t = 0; t < T; t++)
        positions[t] = (int32_t)(tu_next(&s) % 8192);
    positions[0] = 0;
    float *inv_freq = checked_malloc(sizeof(float) * (size_t)(rotary_dims / 2 + 1));
    for (int i = 0; i < rotary_dims / 2; i++)
        inv_freq[i] = powf(10000.0f, -2.0f * (float)i / (float)rotary_dims);
    CHECK_LAUNCH(pb_emu_rope(x, positions, inv_freq, T, n_heads, head_dim, rotary_dims, scale));
    CHECK_OK(g_ref->ops->rope(g_ref, want, positions, inv_freq, T, n_heads, head_dim, rotary_dims, scale));
    check_guard(x, n, what);
    /* the same fp32 angle; sincosf vs sinf/cosf (the same libm here, a
     * couple of ulp apart on a GPU) */
    expect_close(x, want, n, PB_TOL_ELEMENTWISE_NMSE, what);
    for (size_t row = 0; row < (size_t)T * n_heads; row++) {
        const size_t at = row * head_dim + rotary_dims;
        if (memcmp(x + at, before + at, sizeof(float) * (size_t)(head_dim - rotary_dims)) != 0)
            fail_msg("%s: head row %zu changed past rotary_dims %d", what, row, rotary_dims);
    }
    if (rotary_dims < head_dim)
        printf("[ MEASURE  ] %s: dims %d..%d of every head bit-identical to the input\n", what, rotary_dims,
               head_dim - 1);
    free(x);
    free(before);
    free(want);
    free(positions);
    free(inv_freq);
}

static void test_rope(void **state) {
    (void)state;
    run_rope(9, 3, 64, 64, 1.0f, "rope T=9 H=3 hd=64");
    run_rope(7, 5, 48, 48, 1.0f, "rope T=7 H=5 hd=48");
    run_rope(4, 2, 2, 2, 1.0f, "rope T=4 H=2 hd=2");
    run_rope(3, 2, 134, 134, 1.0f, "rope T=3 H=2 hd=134 (half 67)");
}

/* LongRoPE (Phi-3 128k: attention factor sqrt(1 + ln 32 / ln 4096) on
 * the whole head; Phi-4-mini: 0.75 of it). */
static void test_rope_scaled(void **state) {
    (void)state;
    run_rope(9, 3, 96, 96, 1.1902380714f, "rope scaled T=9 H=3 hd=96 factor 1.19");
    run_rope(7, 4, 128, 96, 1.1902380714f, "rope scaled partial T=7 H=4 hd=128 rotary 96");
}

/* GPT-NeoX's partial rotary (Pythia-70m: rotary_pct 0.25, 16 of 64), the whole
 * head given as rotary_dims, and the smallest pair. */
static void test_rope_partial(void **state) {
    (void)state;
    run_rope(9, 3, 64, 16, 1.0f, "rope partial T=9 H=3 hd=64 rotary 16");
    run_rope(7, 5, 32, 32, 1.0f, "rope partial T=7 H=5 hd=32 rotary 32 (all)");
    run_rope(6, 4, 8, 2, 1.0f, "rope partial T=6 H=4 hd=8 rotary 2");
}

/* ---- attention ------------------------------------------------------------- */

/* fp32 dot products and an online softmax vs the reference's double scores
 * and sums: score errors ~ |score| * 2^-24 * sqrt(head_dim) turn into
 * relative errors of the weights of the same size: NMSE ~1e-13. */
static void run_attention_with(int T, int q_start, int n_heads, int n_kv_heads, int head_dim, float q_scale,
                               const pb_attention_params *params, const char *what) {
    const int T_kv = q_start + T;
    const size_t qn = (size_t)T * n_heads * head_dim, kvn = (size_t)T_kv * n_kv_heads * head_dim;
    float *q = random_floats(qn, (uint64_t)(T * 7 + head_dim), 2.0f * q_scale);
    float *k = random_floats(kvn, (uint64_t)(T_kv * 5 + head_dim), 2.0f);
    float *v = random_floats(kvn, (uint64_t)(T_kv * 3 + head_dim), 1.0f);
    float *got = filled_floats(qn, NAN);
    float *want = filled_floats(qn, NAN);
    CHECK_LAUNCH(pb_emu_attention(got, q, k, v, T, q_start, n_heads, n_kv_heads, head_dim, params));
    CHECK_OK(g_ref->ops->attention(g_ref, want, q, k, v, T, T_kv, q_start, n_heads, n_kv_heads, head_dim, params));
    check_guard(got, qn, what);
    expect_close(got, want, qn, PB_TOL_OP_NMSE, what);
    free(q);
    free(k);
    free(v);
    free(got);
    free(want);
}

static void run_attention(int T, int q_start, int n_heads, int n_kv_heads, int head_dim, float q_scale,
                          const char *what) {
    run_attention_with(T, q_start, n_heads, n_kv_heads, head_dim, q_scale, NULL, what);
}

static void test_attention(void **state) {
    (void)state;
    run_attention(7, 0, 4, 4, 64, 1.0f, "attention T=7 H=KV=4 hd=64");
    run_attention(5, 3, 6, 2, 48, 1.0f, "attention T=5 q_start=3 H=6 KV=2 hd=48 (GQA)");
    run_attention(6, 10, 3, 1, 67, 1.0f, "attention T=6 q_start=10 H=3 KV=1 hd=67");
    run_attention(3, 297, 4, 2, 67, 1.0f, "attention T=3 q_start=297 (T_kv=300) H=4 KV=2 hd=67");
    run_attention(2, 0, 1, 1, 1, 1.0f, "attention T=2 H=KV=1 hd=1");
    run_attention(2, 40, 2, 1, 256, 1.0f, "attention T=2 q_start=40 H=2 KV=1 hd=256");
    /* peaked softmax: scores ~100 apart, the running max corrections matter */
    run_attention(4, 60, 2, 2, 32, 12.0f, "attention T=4 q_start=60 hd=32 peaked (scores ~1e2)");
}

/* Gemma's and Qwen3's scores: a query scale other than 1/sqrt(head_dim)
 * (Gemma 2 27B: 1/12 at head_dim 128), a binding soft cap (scores ~1e2
 * capped at 5, and Gemma 2's 50), sliding windows of 1 (each query sees
 * itself only), under the prefix q_start, past T_kv (no effect) and exactly
 * T, with GQA and at head_dim 256. */
static void test_attention_params(void **state) {
    (void)state;
    const pb_attention_params scaled = {1.0f / 12.0f, 0.0f, 0};
    run_attention_with(5, 9, 4, 2, 128, 1.0f, &scaled, "attention scale 1/12 hd=128 GQA");
    const pb_attention_params capped = {1.0f / sqrtf(32.0f), 5.0f, 0};
    run_attention_with(4, 60, 2, 2, 32, 12.0f, &capped, "attention softcap 5 binding (scores ~1e2) hd=32");
    const pb_attention_params gemma2 = {1.0f / 16.0f, 50.0f, 0};
    run_attention_with(3, 30, 4, 2, 256, 12.0f, &gemma2, "attention softcap 50 scale 1/16 hd=256 GQA");
    const int windows[] = {1, 7, 1000, 12};
    const char *names[] = {"attention window 1 (itself only) T=12 q_start=20 GQA",
                           "attention window 7 < q_start=20 T=12 GQA", "attention window 1000 > T_kv=32 T=12 GQA",
                           "attention window 12 = T, T=12 q_start=20 GQA"};
    for (int w = 0; w < 4; w++) {
        const pb_attention_params windowed = {1.0f / 8.0f, 0.0f, windows[w]};
        run_attention_with(12, 20, 6, 2, 64, 1.0f, &windowed, names[w]);
    }
    const pb_attention_params all = {0.0625f, 50.0f, 4096};
    run_attention_with(6, 4, 8, 4, 256, 6.0f, &all, "attention window 4096, softcap 50, scale 1/16 hd=256 (Gemma 2)");
    const pb_attention_params local = {0.0625f, 20.0f, 3};
    run_attention_with(6, 4, 8, 2, 256, 6.0f, &local, "attention window 3, softcap 20, hd=256 GQA");
}

typedef struct job_spec {
    int n, p0;
    int null_prefix; /* pass NULL prefix pointers (only with p0 == 0) */
} job_spec;

/* attention_jobs against the reference `attention` run job by job on the
 * job's assembled keys (prefix, then new keys), as exec.c does for backends
 * without attention_jobs. Jobs' query rows are packed in reverse job order
 * with a gap row between jobs; new keys sit at the job's query rows (as in
 * exec.c); each prefix lives in a buffer of p0 + 3 rows. Gap rows and the
 * extra prefix rows hold large keys and values no query may read; rows no
 * job owns must keep their 0.5. With a sliding window, the prefix keys and
 * values in the 64-key tiles wholly before every window of the job are NaN:
 * a kernel that reads them (rather than skipping them) gives NaN. */
static void run_attention_jobs_with(const job_spec *specs, int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                                    const pb_attention_params *params, const char *what) {
    const size_t qd = (size_t)n_heads * head_dim, kvd = (size_t)n_kv_heads * head_dim;
    int *q_row = checked_malloc(sizeof(int) * (size_t)n_jobs);
    size_t *prefix_at = checked_malloc(sizeof(size_t) * (size_t)n_jobs);
    int rows = 0;
    size_t prefix_rows = 0;
    for (int i = 0; i < n_jobs; i++) {
        const int j = n_jobs - 1 - i;
        q_row[j] = rows;
        rows += specs[j].n + 1;
        prefix_at[i] = prefix_rows;
        prefix_rows += (size_t)specs[i].p0 + 3;
    }
    unsigned char *owned = calloc((size_t)rows + 1, 1);
    assert_non_null(owned);
    for (int j = 0; j < n_jobs; j++)
        for (int t = 0; t < specs[j].n; t++)
            owned[q_row[j] + t] = 1;
    float *q = random_floats((size_t)rows * qd, 41, 2.0f);
    float *k = random_floats((size_t)rows * kvd, 42, 2.0f);
    float *v = random_floats((size_t)rows * kvd, 43, 1.0f);
    float *kp = random_floats(prefix_rows * kvd, 44, 2.0f);
    float *vp = random_floats(prefix_rows * kvd, 45, 1.0f);
    for (int r = 0; r < rows; r++)
        if (!owned[r])
            for (size_t i = 0; i < kvd; i++) {
                k[(size_t)r * kvd + i] = 50.0f;
                v[(size_t)r * kvd + i] = 1000.0f;
            }
    for (int j = 0; j < n_jobs; j++)
        for (size_t r = (size_t)specs[j].p0; r < (size_t)specs[j].p0 + 3; r++)
            for (size_t i = 0; i < kvd; i++) {
                kp[(prefix_at[j] + r) * kvd + i] = 50.0f;
                vp[(prefix_at[j] + r) * kvd + i] = 1000.0f;
            }
    for (int j = 0; params && params->window > 0 && j < n_jobs; j++) {
        const size_t unread = (size_t)pb_attention_first_key(params, specs[j].p0) / 64 * 64;
        for (size_t i = 0; i < unread * kvd; i++)
            kp[prefix_at[j] * kvd + i] = vp[prefix_at[j] * kvd + i] = NAN;
    }
    float *got = filled_floats((size_t)rows * qd, 0.5f);
    float *want = filled_floats((size_t)rows * qd, 0.5f);

    for (int j = 0; j < n_jobs; j++) {
        const int n = specs[j].n, p0 = specs[j].p0;
        if (n == 0)
            continue;
        const size_t keys = (size_t)p0 + n;
        float *k_all = checked_malloc(sizeof(float) * keys * kvd);
        float *v_all = checked_malloc(sizeof(float) * keys * kvd);
        memcpy(k_all, kp + prefix_at[j] * kvd, sizeof(float) * (size_t)p0 * kvd);
        memcpy(v_all, vp + prefix_at[j] * kvd, sizeof(float) * (size_t)p0 * kvd);
        memcpy(k_all + (size_t)p0 * kvd, k + (size_t)q_row[j] * kvd, sizeof(float) * (size_t)n * kvd);
        memcpy(v_all + (size_t)p0 * kvd, v + (size_t)q_row[j] * kvd, sizeof(float) * (size_t)n * kvd);
        CHECK_OK(g_ref->ops->attention(g_ref, want + (size_t)q_row[j] * qd, q + (size_t)q_row[j] * qd, k_all, v_all, n,
                                       (int)keys, p0, n_heads, n_kv_heads, head_dim, params));
        free(k_all);
        free(v_all);
    }

    pb_attention_job *jobs = calloc((size_t)n_jobs + 1, sizeof *jobs);
    assert_non_null(jobs);
    for (int j = 0; j < n_jobs; j++) {
        const int has_prefix = !(specs[j].null_prefix && specs[j].p0 == 0);
        jobs[j].q_row = q_row[j];
        jobs[j].n = specs[j].n;
        jobs[j].p0 = specs[j].p0;
        jobs[j].k_prefix = has_prefix ? kp + prefix_at[j] * kvd : NULL;
        jobs[j].v_prefix = has_prefix ? vp + prefix_at[j] * kvd : NULL;
        jobs[j].k_new = specs[j].n ? k + (size_t)q_row[j] * kvd : NULL;
        jobs[j].v_new = specs[j].n ? v + (size_t)q_row[j] * kvd : NULL;
    }
    CHECK_LAUNCH(pb_emu_attention_jobs(got, q, jobs, n_jobs, n_heads, n_kv_heads, head_dim, params));
    check_guard(got, (size_t)rows * qd, what);
    for (int r = 0; r < rows; r++)
        if (!owned[r])
            for (size_t i = 0; i < qd; i++)
                if (got[(size_t)r * qd + i] != 0.5f)
                    fail_msg("%s: row %d belongs to no job but element %zu became %g", what, r, i,
                             (double)got[(size_t)r * qd + i]);
    expect_close(got, want, (size_t)rows * qd, PB_TOL_OP_NMSE, what);

    free(jobs);
    free(q);
    free(k);
    free(v);
    free(kp);
    free(vp);
    free(got);
    free(want);
    free(owned);
    free(q_row);
    free(prefix_at);
}

static void run_attention_jobs(const job_spec *specs, int n_jobs, int n_heads, int n_kv_heads, int head_dim,
                               const char *what) {
    run_attention_jobs_with(specs, n_jobs, n_heads, n_kv_heads, head_dim, NULL, what);
}

static void test_attention_jobs(void **state) {
    (void)state;
    /* prefixes and none, NULL prefix pointers, single queries (decode
     * steps), a job without queries */
    const job_spec mixed[] = {{5, 7, 0}, {1, 0, 1}, {9, 0, 0}, {1, 20, 0}, {0, 5, 0}, {3, 0, 1}, {13, 33, 0}};
    const int n_mixed = (int)(sizeof mixed / sizeof mixed[0]);
    run_attention_jobs(mixed, n_mixed, 6, 2, 64, "attention_jobs 7 jobs H=6 KV=2 hd=64");
    run_attention_jobs(mixed, n_mixed, 4, 4, 67, "attention_jobs 7 jobs H=KV=4 hd=67");
    run_attention_jobs(mixed, n_mixed, 3, 1, 48, "attention_jobs 7 jobs H=3 KV=1 hd=48");
    const job_spec wide[] = {{3, 10, 0}, {1, 299, 0}, {2, 0, 1}};
    run_attention_jobs(wide, 3, 2, 1, 96, "attention_jobs 3 jobs H=2 KV=1 hd=96 p0<=299");
    run_attention_jobs(wide, 3, 2, 1, 256, "attention_jobs 3 jobs H=2 KV=1 hd=256 p0<=299");
    const job_spec single[] = {{1, 0, 1}};
    run_attention_jobs(single, 1, 1, 1, 1, "attention_jobs 1 job n=1 H=KV=1 hd=1");
    const job_spec around_empty[] = {{0, 0, 1}, {0, 4, 0}, {2, 1, 0}, {0, 2, 0}};
    run_attention_jobs(around_empty, 4, 2, 2, 8, "attention_jobs empty jobs around one");

    /* a patching batch: many short jobs over short prefixes */
    enum { MANY = 120 };
    job_spec many[MANY];
    uint64_t s = 17;
    int many_rows = 0;
    for (int j = 0; j < MANY; j++) {
        many[j].n = (int)(tu_next(&s) % 5);
        many[j].p0 = (int)(tu_next(&s) % 30);
        many[j].null_prefix = j % 3 == 0;
        many_rows += many[j].n;
    }
    printf("  (%d jobs, %d query rows)\n", MANY, many_rows);
    run_attention_jobs(many, MANY, 9, 3, 64, "attention_jobs 120 jobs H=9 KV=3 hd=64");

    /* The launchers' chunks of PB_ATTENTION_JOBS_PER_LAUNCH (64) jobs, each
     * rebased to first = first_tile = 0: empty jobs on both sides of the
     * edges at 64 and 192, a whole chunk (128 .. 191) without queries, jobs
     * of several tiles straddling an edge, and an empty final job. */
    enum { EDGES = 200 };
    job_spec edges[EDGES];
    for (int j = 0; j < EDGES; j++) {
        edges[j].n = 1 + j % 4;
        edges[j].p0 = j % 13;
        edges[j].null_prefix = j % 5 == 0;
    }
    for (int j = 60; j < 68; j++)
        edges[j].n = 0;
    for (int j = 128; j < 192; j++)
        edges[j].n = 0;
    edges[59].n = 70; /* three tiles ending a chunk's last queries */
    edges[68].n = 33; /* two tiles opening the next chunk */
    edges[127].n = 40;
    edges[192].n = 0;
    edges[193].n = 65;
    edges[EDGES - 1].n = 0;
    run_attention_jobs(edges, EDGES, 2, 1, 64, "attention_jobs 200 jobs, empty jobs at the 64-job launch edges");
    /* exactly one chunk, then one job more whose chunk is all empty */
    job_spec one_more[65];
    for (int j = 0; j < 65; j++)
        one_more[j] = (job_spec){j == 63 ? 0 : 2 + j % 3, j % 7, 0};
    one_more[64] = (job_spec){0, 3, 0};
    run_attention_jobs(one_more, 64, 2, 2, 32, "attention_jobs exactly 64 jobs");
    run_attention_jobs(one_more, 65, 2, 2, 32, "attention_jobs 65 jobs, the 65th empty");
}

/* The tiled attention_jobs kernel (cuda/attention_tiled.cu) on the cases
 * above where it applies (head_dim a multiple of 4, at most 256), plus
 * prefill-like jobs of several query tiles, a tile boundary inside a
 * causal window, every GQA packing (1, 2, 4 and 8 query heads per block,
 * and a group of 16 split in two), head sizes under each compiled size
 * (64, 128, 256) and at it, and llama3's and Gemma's shapes in small. */
static void test_attention_tiled(void **state) {
    assert_true(pb_emu_attention_tiled_ok(64) && pb_emu_attention_tiled_ok(128) && pb_emu_attention_tiled_ok(4) &&
                pb_emu_attention_tiled_ok(256));
    assert_false(pb_emu_attention_tiled_ok(67) || pb_emu_attention_tiled_ok(260) || pb_emu_attention_tiled_ok(1));
    pb_emu_set_attention_tiled(1);
    test_attention_jobs(state);
    const job_spec prefill[] = {{100, 0, 1}, {33, 0, 1}, {64, 0, 1}, {31, 0, 0}};
    run_attention_jobs(prefill, 4, 8, 2, 128, "tiled: prefill jobs of 100, 33, 64, 31 H=8 KV=2 hd=128");
    const job_spec suffixes[] = {{40, 17, 0}, {1, 63, 0}, {32, 32, 0}, {65, 3, 0}, {0, 9, 0}};
    run_attention_jobs(suffixes, 5, 4, 1, 64, "tiled: patching suffixes after prefixes H=4 KV=1 hd=64");
    const job_spec small_head[] = {{37, 5, 0}, {9, 0, 1}};
    run_attention_jobs(small_head, 2, 3, 3, 4, "tiled: head_dim 4");
    const job_spec llama[] = {{70, 0, 1}, {20, 50, 0}};
    run_attention_jobs(llama, 2, 32, 8, 128, "tiled: jobs of 70 and 20 after 50, H=32 KV=8 hd=128 (llama3)");
    const job_spec gemma[] = {{70, 0, 1}, {13, 60, 0}};
    run_attention_jobs(gemma, 2, 8, 4, 256, "tiled: jobs of 70 and 13 after 60, H=8 KV=4 hd=256 (Gemma)");
    run_attention_jobs(gemma, 2, 2, 1, 160, "tiled: hd=160 (compiled 256)");
    run_attention_jobs(gemma, 2, 4, 4, 96, "tiled: hd=96 (compiled 128) H=KV=4");
    const job_spec groups[] = {{30, 5, 0}, {9, 0, 1}, {17, 40, 0}};
    run_attention_jobs(groups, 3, 8, 1, 32, "tiled: GQA group of 8 (8 positions per tile) hd=32");
    run_attention_jobs(groups, 3, 16, 1, 16, "tiled: GQA group of 16 (two blocks of 8 heads) hd=16");
    run_attention_jobs(groups, 3, 12, 2, 64, "tiled: GQA group of 6 (2 heads per block) hd=64");
    pb_emu_set_attention_tiled(0);
}

/* attention_jobs with Gemma's and Qwen3's score shapes, on the kernel the
 * launcher is set to (`kernel` names it): a query scale, soft caps that
 * bind, sliding windows of 1, under a tile (5), across tiles (64, 100),
 * exactly the longest job's keys and past every job's, at GQA groups of 2
 * and 8 and head_dim 256. Jobs with long prefixes have whole key tiles
 * before every window, poisoned with NaN (run_attention_jobs_with). */
static void run_attention_jobs_params(const char *kernel) {
    char what[160];
    /* The one-block-per-query kernel costs the emulator a fiber switch per
     * lane and key: half the heads there (the scores are computed per head
     * alike; the GQA packing is the tiled kernel's). */
    const int half = strcmp(kernel, "rows") == 0 ? 2 : 1;
    const job_spec skipping[] = {{24, 200, 0}, {70, 0, 1}, {1, 150, 0}, {17, 63, 0}, {0, 9, 0}};
    /* 224: the first job's p0 + n, all its keys */
    const int windows[] = {64, 1, 5, 100, 224, 5000};
    for (int w = 0; w < 6; w++) {
        const pb_attention_params params = {0.125f, 0.0f, windows[w]};
        snprintf(what, sizeof what, "%s: window %d, prefixes to 200, H=2 KV=1 hd=64", kernel, windows[w]);
        run_attention_jobs_with(skipping, 5, 2, 1, 64, &params, what);
    }
    const pb_attention_params capped = {1.0f, 5.0f, 0};
    const job_spec short_prefixes[] = {{40, 60, 0}, {70, 0, 1}, {1, 100, 0}};
    snprintf(what, sizeof what, "%s: softcap 5 binding (scores ~10 at scale 1) H=%d KV=%d hd=64", kernel, 4 / half,
             2 / half);
    run_attention_jobs_with(short_prefixes, 3, 4 / half, 2 / half, 64, &capped, what);
    const pb_attention_params scaled = {1.0f / 12.0f, 0.0f, 0};
    const job_spec llama[] = {{70, 0, 1}, {20, 50, 0}};
    snprintf(what, sizeof what, "%s: scale 1/12 H=%d KV=%d hd=128", kernel, 8 / half, 2 / half);
    run_attention_jobs_with(llama, 2, 8 / half, 2 / half, 128, &scaled, what);
    const pb_attention_params gemma2 = {0.0625f, 50.0f, 100};
    const job_spec gemma[] = {{70, 0, 1}, {13, 260, 0}};
    snprintf(what, sizeof what, "%s: window 100, softcap 50, scale 1/16, H=%d KV=%d hd=256 (Gemma 2)", kernel, 8 / half,
             4 / half);
    run_attention_jobs_with(gemma, 2, 8 / half, 4 / half, 256, &gemma2, what);
    const pb_attention_params group_window = {0.25f, 0.0f, 20};
    const job_spec groups[] = {{30, 100, 0}, {9, 0, 1}, {17, 40, 0}};
    snprintf(what, sizeof what, "%s: window 20, GQA group of 8 (8 positions per tile) hd=32", kernel);
    run_attention_jobs_with(groups, 3, 8, 1, 32, &group_window, what);
}

static void test_attention_jobs_params(void **state) {
    (void)state;
    run_attention_jobs_params("rows");
}

/* The same on the tiled kernel, and the key tiles it visits for one
 * prefill of T = 4096 with and without a window of 512 (Gemma 2/3's local
 * layers have 4096 and 512..1024): query tile i of 64 positions visits keys
 * from its window's start, rounded down to a tile, to its last position: 9
 * tiles once i >= 8 (min(i + 1, 9) in all: 540) instead of i + 1 (2080); at
 * 8 positions per tile (a GQA group of 8) 4320 instead of 16640. */
static void test_attention_tiled_params(void **state) {
    (void)state;
    pb_emu_set_attention_tiled(1);
    run_attention_jobs_params("tiled");
    pb_emu_set_attention_tiled(0);
    const pb_attention_job prefill = {0, 4096, 0, NULL, NULL, NULL, NULL};
    const long long full = pb_emu_attention_tiled_key_tiles(&prefill, 1, 8, 8, 0);
    const long long local = pb_emu_attention_tiled_key_tiles(&prefill, 1, 8, 8, 512);
    const long long full8 = pb_emu_attention_tiled_key_tiles(&prefill, 1, 8, 1, 0);
    const long long local8 = pb_emu_attention_tiled_key_tiles(&prefill, 1, 8, 1, 512);
    printf("[ MEASURE  ] tiled key tiles, T=4096: %lld causal, %lld with window 512 (%.2fx fewer); GQA group 8: %lld, "
           "%lld (%.2fx)\n",
           full, local, (double)full / (double)local, full8, local8, (double)full8 / (double)local8);
    assert_int_equal(full, 2080);
    assert_int_equal(local, 540);
    assert_int_equal(full8, 16640);
    assert_int_equal(local8, 4320);
}

/* ---- dequant ---------------------------------------------------------------- */

/* A type cuda/dequant.cu decodes, and the byte offsets of the fp16 scales
 * in one of its blocks (quant.c's layouts; -1 ends the list). */
typedef struct dequant_case {
    uint32_t type;
    const char *name;
    int half_at[3];
} dequant_case;

static const dequant_case dequant_cases[] = {
    {PB_GGML_F16, "f16", {-1}},         {PB_GGML_BF16, "bf16", {-1}},         {PB_GGML_Q4_0, "q4_0", {0, -1}},
    {PB_GGML_Q4_1, "q4_1", {0, 2, -1}}, {PB_GGML_Q5_0, "q5_0", {0, -1}},      {PB_GGML_Q5_1, "q5_1", {0, 2, -1}},
    {PB_GGML_Q8_0, "q8_0", {0, -1}},    {PB_GGML_Q2_K, "q2_k", {80, 82, -1}}, {PB_GGML_Q3_K, "q3_k", {108, -1}},
    {PB_GGML_Q4_K, "q4_k", {0, 2, -1}}, {PB_GGML_Q5_K, "q5_k", {0, 2, -1}},   {PB_GGML_Q6_K, "q6_k", {208, -1}},
};

/* A finite fp16 scale: moderate (|x| < 1, exponents down to 2^-12), one in
 * eight subnormal, either sign. */
static uint16_t random_half_scale(uint64_t *s) {
    const uint64_t r = tu_next(s);
    if (r % 8 == 0)
        return (uint16_t)(((r >> 8) & 0x8000u) | ((r >> 24) & 0x3ffu));
    const float x = ldexpf(2.0f * (float)((r >> 40) / 16777216.0) - 1.0f, -(int)((r >> 3) % 13));
    return pb_fp32_to_fp16(x);
}

/* n_blocks blocks of random bytes (any bits are valid codes and 6-bit
 * packed scales) with finite fp16 scales; F16/BF16 keep every bit pattern
 * (subnormals, Inf, NaN payloads). */
static uint8_t *random_blocks(const dequant_case *c, size_t n_blocks, uint64_t seed) {
    const size_t block_bytes = pb_ggml_block_bytes(c->type);
    uint8_t *data = checked_malloc(n_blocks * block_bytes);
    uint64_t s = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n_blocks * block_bytes; i++)
        data[i] = (uint8_t)(tu_next(&s) >> 56);
    for (size_t b = 0; b < n_blocks; b++)
        for (const int *at = c->half_at; *at >= 0; at++) {
            const uint16_t h = random_half_scale(&s);
            data[b * block_bytes + (size_t)*at] = (uint8_t)(h & 0xff);
            data[b * block_bytes + (size_t)*at + 1] = (uint8_t)(h >> 8);
        }
    return data;
}

static uint32_t float_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    return u;
}

static void expect_same_bits(const float *got, const float *want, size_t n, const char *what) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(&got[i], &want[i], sizeof(float)) != 0)
            fail_msg("%s: element %zu is %a (0x%08x), host/quant.c %a (0x%08x)", what, i, (double)got[i],
                     float_bits(got[i]), (double)want[i], float_bits(want[i]));
}

/* rows of row_k elements; the kernel decodes columns [first, first + k) of
 * each (a column tile when k < row_k), threads forward and in reverse, and
 * must give pb_dequantize's bits for each row's slice. */
static void run_dequant(const dequant_case *c, int rows, int k, int first, int row_k, uint64_t seed) {
    const uint32_t block = pb_ggml_block_size(c->type);
    const size_t block_bytes = pb_ggml_block_bytes(c->type);
    const size_t row_bytes = (size_t)row_k / block * block_bytes;
    const size_t n = (size_t)rows * k;
    uint8_t *data = random_blocks(c, (size_t)rows * row_k / block, seed);
    const uint8_t *src = data + (size_t)first / block * block_bytes;
    float *want = filled_floats(n, NAN);
    for (int r = 0; r < rows; r++)
        CHECK_OK(pb_dequantize(want + (size_t)r * k, src + (size_t)r * row_bytes, c->type, (uint64_t)k));
    char what[96];
    snprintf(what, sizeof what, "dequant %s %dx%d", c->name, rows, k);
    if (k < row_k)
        snprintf(what + strlen(what), sizeof what - strlen(what), " (columns %d.. of %d)", first, row_k);
    for (int reverse = 0; reverse <= 1; reverse++) {
        float *got = filled_floats(n, NAN);
        pb_emu_set_reverse_order(reverse);
        CHECK_LAUNCH(pb_emu_dequant_rows(got, src, c->type, row_bytes, rows, k));
        pb_emu_set_reverse_order(0);
        check_guard(got, n, what);
        expect_same_bits(got, want, n, what);
        free(got);
    }
    printf("[ MEASURE  ] %s: bit-identical to host/quant.c (threads forward and reversed)\n", what);
    free(want);
    free(data);
}

static void test_dequant(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof dequant_cases / sizeof dequant_cases[0]; i++) {
        const dequant_case *c = &dequant_cases[i];
        /* two blocks' worth per row (K-quants 512, others 64), then 37 rows
         * of three blocks cut from rows of four */
        const int unit = pb_ggml_block_size(c->type) == 256 ? 256 : 32;
        run_dequant(c, 5, 2 * unit, 0, 2 * unit, 100 + i);
        run_dequant(c, 37, 3 * unit, unit, 4 * unit, 200 + i);
    }
}

/* The embedding of a quantised table: rows picked by id (repeated, out of
 * order), decoded to host/quant.c's bits, then scaled as the CPU backend
 * scales them (not at all when the scale is 1). */
static void test_dequant_gather(void **state) {
    (void)state;
    const int32_t ids[5] = {3, 0, 6, 3, 5};
    const float scales[2] = {1.0f, 3.7f};
    for (size_t i = 0; i < sizeof dequant_cases / sizeof dequant_cases[0]; i++) {
        const dequant_case *c = &dequant_cases[i];
        const int d = 2 * (pb_ggml_block_size(c->type) == 256 ? 256 : 32), vocab = 7;
        const size_t row_bytes = (size_t)d / pb_ggml_block_size(c->type) * pb_ggml_block_bytes(c->type);
        uint8_t *table = random_blocks(c, (size_t)vocab * d / pb_ggml_block_size(c->type), 300 + i);
        for (int k = 0; k < 2; k++) {
            float *want = filled_floats((size_t)5 * d, NAN), *got = filled_floats((size_t)5 * d, NAN);
            for (int t = 0; t < 5; t++) {
                CHECK_OK(pb_dequantize(want + (size_t)t * d, table + (size_t)ids[t] * row_bytes, c->type, (uint64_t)d));
                for (int j = 0; scales[k] != 1.0f && j < d; j++)
                    want[(size_t)t * d + j] *= scales[k];
            }
            char what[96];
            snprintf(what, sizeof what, "dequant gather %s, scale %g", c->name, (double)scales[k]);
            CHECK_LAUNCH(pb_emu_dequant_gather(got, table, c->type, ids, 5, d, scales[k]));
            check_guard(got, (size_t)5 * d, what);
            expect_same_bits(got, want, (size_t)5 * d, what);
            free(want);
            free(got);
        }
        free(table);
    }
    printf("[ MEASURE  ] dequant gather: %zu types, scale 1 and 3.7, bit-identical to host/quant.c\n",
           sizeof dequant_cases / sizeof dequant_cases[0]);
}

/* A type the kernel does not decode (F32 included), or k not a whole number
 * of blocks: an error, and nothing written. */
static void test_dequant_refused(void **state) {
    (void)state;
    static const uint32_t types[] = {PB_GGML_F32, PB_GGML_Q8_1,       PB_GGML_Q8_K, PB_GGML_IQ2_XXS, PB_GGML_TQ2_0,
                                     4,           PB_GGML_TYPE_LIMIT, 1000};
    uint8_t data[256 * 4] = {0};
    float *out = filled_floats(256, PB_SENTINEL);
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        assert_int_not_equal(pb_emu_dequant_rows(out, data, types[i], 1024, 1, 256), 0);
    assert_int_not_equal(pb_emu_dequant_rows(out, data, PB_GGML_Q4_K, 144, 1, 128), 0);
    assert_int_not_equal(pb_emu_dequant_rows(out, data, PB_GGML_Q4_0, 18, 1, 48), 0);
    for (size_t i = 0; i < 256 + PB_GUARD; i++)
        if (out[i] != PB_SENTINEL)
            fail_msg("dequant refused: element %zu written (%g)", i, (double)out[i]);
    printf("[ MEASURE  ] dequant: %zu types it does not decode and partial blocks refused, nothing written\n",
           sizeof types / sizeof types[0]);
    free(out);
}

/* ---- metric_rows ------------------------------------------------------------ */

static const char *const kind_name[4] = {"logit_diff", "logprob", "refusal_score", "kl"};

/* Every kind on logits (rows, V): row 1 gets an Inf logit (NaN out), row 2
 * a huge one; kl's row 3 points outside the reference rows (NaN). */
static void run_metric(int rows, int V, const int32_t *pos, int n_pos, const char *what) {
    float *logits = random_floats((size_t)rows * V, (uint64_t)V, 8.0f);
    if (rows > 1)
        logits[(size_t)1 * V + (size_t)V / 3] = INFINITY;
    if (rows > 2)
        logits[(size_t)2 * V + (size_t)V / 2] = 3e4f;
    const int32_t neg[] = {(int32_t)(V - 1), 0, (int32_t)(V / 2)};
    enum { N_REF = 2 };
    double *ref = checked_malloc(sizeof(double) * N_REF * (size_t)V);
    float *ref_logits = random_floats((size_t)N_REF * V, 77, 10.0f);
    ref_logits[0] = 200.0f; /* most of ref row 0's probabilities underflow to 0 */
    for (int r = 0; r < N_REF; r++)
        pb_log_softmax(ref_logits + (size_t)r * V, V, ref + (size_t)r * V);
    int32_t *ref_row = checked_malloc(sizeof(int32_t) * (size_t)rows);
    for (int r = 0; r < rows; r++)
        ref_row[r] = r % N_REF;
    if (rows > 3)
        ref_row[3] = N_REF;
    double *got = checked_malloc(sizeof(double) * (size_t)rows);
    double *want = checked_malloc(sizeof(double) * (size_t)rows);
    for (int kind = 0; kind < 4; kind++) {
        CHECK_OK(
            pb_emu_metric_rows(got, logits, rows, V, (pb_metric_kind)kind, pos, n_pos, neg, 3, ref, ref_row, N_REF));
        CHECK_OK(g_ref->ops->metric_rows(g_ref, want, logits, rows, V, (pb_metric_kind)kind, pos, n_pos, neg, 3, ref,
                                         ref_row, N_REF));
        double worst = 0.0;
        for (int r = 0; r < rows; r++) {
            const double d = tu_rel_diff(got[r], want[r]);
            if (!(d <= PB_TOL_EMU_METRIC))
                fail_msg("%s %s: row %d is %.17g, the reference %.17g", what, kind_name[kind], r, got[r], want[r]);
            worst = fmax(worst, d);
        }
        printf("[ MEASURE  ] metric %s %s: max rel diff %.3g (tolerance %.0e)\n", kind_name[kind], what, worst,
               PB_TOL_EMU_METRIC);
    }
    free(logits);
    free(ref);
    free(ref_logits);
    free(ref_row);
    free(got);
    free(want);
}

static void test_metric(void **state) {
    (void)state;
    const int32_t pos[] = {5, 17, 5, 2}; /* a repeated id: the set is the distinct ones */
    run_metric(5, 1000, pos, 4, "V=1000");
    const int32_t pos_big[] = {49156, 0, 31, 32, 33, 40000};
    run_metric(4, 49157, pos_big, 6, "V=49157");
    int32_t all[33];
    for (int i = 0; i < 33; i++)
        all[i] = 32 - i;
    run_metric(4, 33, all, 33, "V=33, set = every column"); /* refusal_score: +Inf */
    const int32_t bad[] = {3, 33};
    run_metric(2, 33, bad, 2, "V=33, index out of range (NaN rows)");

    /* a vocabulary whose bitmap exceeds the shared memory: refused before
     * any launch */
    float one = 0.0f;
    double out = 0.0;
    const int32_t p0[] = {0};
    assert_int_equal(pb_emu_metric_rows(&out, &one, 1, 400000, PB_METRIC_LOGPROB, p0, 1, NULL, 0, NULL, NULL, 0),
                     PB_ERR_UNSUPPORTED);
}

/* PB_CUDA_SYNC: read strictly; when on, a fault raised while a kernel runs
 * is reported by the op that launched it, naming the kernel; when off, the
 * launch succeeds and the fault waits for the next synchronising call. */
static void test_sync_mode(void **state) {
    (void)state;
    int sync = -1;
    const char *off[] = {NULL, "", "0"};
    for (int i = 0; i < 3; i++) {
        assert_int_equal(pb_emu_sync_mode_parse(off[i], &sync), PB_OK);
        assert_int_equal(sync, 0);
    }
    assert_int_equal(pb_emu_sync_mode_parse("1", &sync), PB_OK);
    assert_int_equal(sync, 1);
    assert_int_equal(pb_emu_sync_mode_parse("yes", &sync), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "PB_CUDA_SYNC=yes"));

    enum { rows = 2, V = 33, illegal_address = 700 };
    float logits[rows * V];
    for (int i = 0; i < rows * V; i++)
        logits[i] = (float)((i * 7) % 11) - 5.0f;
    const int32_t pos[] = {3, 30};
    double quiet[rows], synced[rows];
    CHECK_OK(pb_emu_metric_rows(quiet, logits, rows, V, PB_METRIC_LOGPROB, pos, 2, NULL, 0, NULL, NULL, 0));
    pb_emu_set_sync_launches(1);
    CHECK_OK(pb_emu_metric_rows(synced, logits, rows, V, PB_METRIC_LOGPROB, pos, 2, NULL, 0, NULL, NULL, 0));
    assert_memory_equal(quiet, synced, sizeof quiet); /* the mode changes when errors show, not results */

    pb_emu_set_stream_fault(illegal_address);
    assert_int_equal(pb_emu_metric_rows(synced, logits, rows, V, PB_METRIC_LOGPROB, pos, 2, NULL, 0, NULL, NULL, 0),
                     PB_ERR_CUDA);
    const char *message = pb_last_error();
    if (!strstr(message, "kernel metric ") || !strstr(message, "PB_CUDA_SYNC=1") ||
        !strstr(message, "cudaErrorIllegalAddress"))
        fail_msg("PB_CUDA_SYNC=1 fault: message \"%s\"", message);

    pb_emu_set_sync_launches(0);
    pb_emu_set_stream_fault(illegal_address);
    CHECK_OK(pb_emu_metric_rows(synced, logits, rows, V, PB_METRIC_LOGPROB, pos, 2, NULL, 0, NULL, NULL, 0));
    pb_emu_set_stream_fault(0); /* the fault nobody waited for */
}

/* ---- the emulation itself --------------------------------------------------- */

/* A race-free kernel gives the same bits whatever order the threads of a
 * block run in between barriers. */
static void test_schedule_order(void **state) {
    (void)state;
    const int T = 5, q_start = 40, H = 6, KV = 2, hd = 67, rows = 4, d = 1000, V = 1000;
    const size_t qn = (size_t)T * H * hd, kvn = (size_t)(q_start + T) * KV * hd;
    float *q = random_floats(qn, 51, 2.0f), *k = random_floats(kvn, 52, 2.0f), *v = random_floats(kvn, 53, 1.0f);
    float *x = random_floats((size_t)rows * d, 54, 3.0f);
    float *logits = random_floats((size_t)rows * V, 55, 8.0f);
    const int32_t pos[] = {1, 500, 999};
    float *attn[2], *norm[2];
    double metric[2][4][4];
    for (int reverse = 0; reverse <= 1; reverse++) {
        pb_emu_set_reverse_order(reverse);
        attn[reverse] = filled_floats(qn, NAN);
        norm[reverse] = filled_floats((size_t)rows * d, NAN);
        CHECK_LAUNCH(pb_emu_attention(attn[reverse], q, k, v, T, q_start, H, KV, hd, NULL));
        CHECK_LAUNCH(pb_emu_rmsnorm(norm[reverse], x, NULL, rows, d, 1e-6f));
        for (int kind = 0; kind < 3; kind++)
            CHECK_OK(pb_emu_metric_rows(metric[reverse][kind], logits, rows, V, (pb_metric_kind)kind, pos, 3, pos, 2,
                                        NULL, NULL, 0));
    }
    /* the tiled kernel, whose probabilities take the key tile's place */
    const int tT = 45, tp0 = 20, tH = 8, tKV = 2, thd = 64;
    const size_t tqn = (size_t)tT * tH * thd, tkvn = (size_t)(tp0 + tT) * tKV * thd;
    float *tq = random_floats(tqn, 56, 2.0f), *tk = random_floats(tkvn, 57, 2.0f), *tv = random_floats(tkvn, 58, 1.0f);
    const pb_attention_job tjob = {0, tT, tp0, tk, tv, tk + (size_t)tp0 * tKV * thd, tv + (size_t)tp0 * tKV * thd};
    float *tiled[2];
    pb_emu_set_attention_tiled(1);
    for (int reverse = 0; reverse <= 1; reverse++) {
        pb_emu_set_reverse_order(reverse);
        tiled[reverse] = filled_floats(tqn, NAN);
        CHECK_LAUNCH(pb_emu_attention_jobs(tiled[reverse], tq, &tjob, 1, tH, tKV, thd, NULL));
    }
    pb_emu_set_attention_tiled(0);
    pb_emu_set_reverse_order(0);
    expect_identical(attn[1], attn[0], qn, "attention, threads in reverse order");
    expect_identical(tiled[1], tiled[0], tqn, "tiled attention_jobs, threads in reverse order");
    for (int i = 0; i < 2; i++)
        free(tiled[i]);
    free(tq);
    free(tk);
    free(tv);
    expect_identical(norm[1], norm[0], (size_t)rows * d, "rmsnorm, threads in reverse order");
    for (int kind = 0; kind < 3; kind++)
        for (int r = 0; r < rows; r++)
            if (memcmp(&metric[1][kind][r], &metric[0][kind][r], sizeof(double)) != 0)
                fail_msg("metric %s row %d: %.17g in reverse order, %.17g forward", kind_name[kind], r,
                         metric[1][kind][r], metric[0][kind][r]);
    printf("[ MEASURE  ] metric_rows, threads in reverse order: bit-identical\n");
    for (int i = 0; i < 2; i++) {
        free(attn[i]);
        free(norm[i]);
    }
    free(q);
    free(k);
    free(v);
    free(x);
    free(logits);
}

/* The emulator's barriers have teeth: without its __syncthreads the rotate
 * kernel reads unwritten (poisoned) slots in one order or the other; with
 * it, both orders give the rotation. */
static void test_emulator_barrier(void **state) {
    (void)state;
    enum { BLOCKS = 3, N = BLOCKS * 64 };
    float *in = random_floats(N, 61, 1.0f);
    float *out = filled_floats(N, 0.0f);
    for (int reverse = 0; reverse <= 1; reverse++) {
        pb_emu_set_reverse_order(reverse);
        CHECK_LAUNCH(pb_emu_selftest_rotate(out, in, BLOCKS, 1));
        for (int i = 0; i < N; i++)
            assert_true(out[i] == in[i / 64 * 64 + (i % 64 + 1) % 64]);
        CHECK_LAUNCH(pb_emu_selftest_rotate(out, in, BLOCKS, 0));
        int wrong = 0;
        for (int i = 0; i < N; i++)
            wrong += !(out[i] == in[i / 64 * 64 + (i % 64 + 1) % 64]);
        printf("[ MEASURE  ] rotate without __syncthreads, %s order: %d of %d values wrong\n",
               reverse ? "reverse" : "forward", wrong, N);
        assert_true(wrong > 0);
    }
    pb_emu_set_reverse_order(0);
    check_guard(out, N, "selftest rotate");
    free(in);
    free(out);
}

/* Shuffles against their definitions, in a 2-D block; a block's static
 * __shared__ value as first read is poison, never the previous block's. */
static void test_emulator_shuffle(void **state) {
    (void)state;
    enum { BLOCKS = 3, THREADS = 128 };
    double *out = checked_malloc(sizeof(double) * BLOCKS * THREADS * 4);
    float stale[BLOCKS];
    CHECK_LAUNCH(pb_emu_selftest_shuffle(out, stale, BLOCKS));
    for (int b = 0; b < BLOCKS; b++) {
        for (int t = 0; t < THREADS; t++) {
            const int lane = t % 32, base = 100 * (t / 32);
            const double *row = out + ((size_t)b * THREADS + t) * 4;
            const double want[4] = {base + (lane ^ 5), base + (lane + 3 < 32 ? lane + 3 : lane),
                                    base + (lane >= 7 ? lane - 7 : lane), base + 9};
            for (int k = 0; k < 4; k++)
                if (row[k] != want[k])
                    fail_msg("block %d thread %d shuffle %d: %g, expected %g", b, t, k, row[k], want[k]);
        }
        if (!isnan(stale[b]))
            fail_msg("block %d read %g from static shared memory before writing it (expected poison)", b,
                     (double)stale[b]);
    }
    free(out);
}

/* A configuration CUDA refuses (more than 48 KiB of dynamic shared memory
 * without opting in) comes back from the launcher as an error. */
static void test_launch_error(void **state) {
    (void)state;
    const int hd = 2458; /* 4 * (5 * 2458 + 8) = 49192 bytes */
    assert_true(pb_emu_attention_shared_bytes(hd) > 48 * 1024);
    float dummy[1] = {0.0f};
    assert_int_not_equal(pb_emu_attention(dummy, dummy, dummy, dummy, 1, 0, 1, 1, hd, NULL), 0);
}

/* ---- the backward kernels (backward.cu) ------------------------------------ */

static void run_norm_backward(int rows, int d, float mean, int centred, int with_weight, int accumulate,
                              const char *what) {
    const size_t n = (size_t)rows * d;
    float *x = random_floats(n, (uint64_t)(rows * 31 + d), 3.0f);
    for (size_t i = 0; i < n; i++)
        x[i] += mean;
    float *dy = random_floats(n, (uint64_t)(rows * 17 + d), 1.0f);
    float *weight = with_weight ? random_floats((size_t)d, 41, 2.0f) : NULL;
    float *start = random_floats(n, 43, 0.5f); /* what accumulate adds to */
    float *want = copy_floats(start, n), *got = copy_floats(start, n), *reversed = copy_floats(start, n);
    CHECK_OK(g_ref->ops->norm_backward(g_ref, want, x, weight, dy, rows, d, 1e-5f, centred, accumulate));
    CHECK_LAUNCH(pb_emu_norm_backward(got, x, weight, dy, rows, d, 1e-5f, centred, accumulate));
    pb_emu_set_reverse_order(1);
    CHECK_LAUNCH(pb_emu_norm_backward(reversed, x, weight, dy, rows, d, 1e-5f, centred, accumulate));
    pb_emu_set_reverse_order(0);
    check_guard(got, n, what);
    expect_close(got, want, n, PB_TOL_EMU_BACKWARD_NMSE, what);
    expect_identical(reversed, got, n, what);
    free(x);
    free(dy);
    free(weight);
    free(start);
    free(want);
    free(got);
    free(reversed);
}

static void test_norm_backward(void **state) {
    (void)state;
    run_norm_backward(5, 64, 0.0f, 0, 1, 0, "norm_backward rms 5x64 weight");
    run_norm_backward(7, 1000, 0.0f, 0, 0, 1, "norm_backward rms 7x1000 no weight, accumulate");
    run_norm_backward(36, 16, 0.0f, 0, 1, 0, "norm_backward rms per head 36x16 weight");
    run_norm_backward(4, 768, 1e3f, 1, 1, 1, "norm_backward layer 4x768 mean 1e3 weight, accumulate");
    run_norm_backward(3, 1, 0.0f, 1, 1, 0, "norm_backward layer 3x1 (gradient 0)");
    run_norm_backward(2, 300, -5.0f, 1, 0, 0, "norm_backward layer 2x300 mean -5 no weight");
}

static void run_glu_backward(pb_activation act, int gated, const char *what) {
    const size_t n = 3000;
    float *gate = random_floats(n, 51, 6.0f), *up = random_floats(n, 52, 6.0f), *dh = random_floats(n, 53, 1.0f);
    float *want_gate = copy_floats(dh, n), *want_up = filled_floats(n, NAN);
    float *got_gate = copy_floats(dh, n), *got_up = filled_floats(n, NAN);
    /* d_gate written over dh, as the gradient pass does */
    CHECK_OK(g_ref->ops->glu_backward(g_ref, want_gate, want_up, want_gate, gated ? gate : NULL, up, n, act));
    CHECK_LAUNCH(pb_emu_glu_backward(got_gate, got_up, got_gate, gated ? gate : NULL, up, n, act));
    check_guard(got_gate, n, what);
    check_guard(got_up, n, what);
    expect_close(got_up, want_up, n, PB_TOL_EMU_BACKWARD_NMSE, what);
    expect_close(got_gate, want_gate, n, PB_TOL_EMU_BACKWARD_NMSE, what);
    free(gate);
    free(up);
    free(dh);
    free(want_gate);
    free(want_up);
    free(got_gate);
    free(got_up);
}

static void test_glu_backward(void **state) {
    (void)state;
    run_glu_backward(PB_ACTIVATION_SILU, 1, "glu_backward silu gated");
    run_glu_backward(PB_ACTIVATION_GELU_TANH, 1, "glu_backward gelu_tanh gated");
    run_glu_backward(PB_ACTIVATION_GELU, 1, "glu_backward gelu gated");
    run_glu_backward(PB_ACTIVATION_GELU, 0, "glu_backward gelu plain");
    run_glu_backward(PB_ACTIVATION_GELU_TANH, 0, "glu_backward gelu_tanh plain");
}

/* dq, dk, dv and the pattern's gradient; the pattern buffer starts at 7
 * on both sides, and what lies outside the windows must stay 7. */
static void run_attention_backward(int T, int n_heads, int n_kv_heads, int head_dim, const pb_attention_params *params,
                                   const char *what) {
    const size_t qn = (size_t)T * n_heads * head_dim, kvn = (size_t)T * n_kv_heads * head_dim;
    const size_t pn = (size_t)n_heads * T * T;
    float *q = random_floats(qn, (uint64_t)(T * 7 + head_dim), 2.0f), *k = random_floats(kvn, (uint64_t)T * 5, 2.0f);
    float *v = random_floats(kvn, (uint64_t)T * 3, 1.0f), *dz = random_floats(qn, (uint64_t)T * 11, 1.0f);
    float *want[4] = {filled_floats(qn, NAN), filled_floats(kvn, NAN), filled_floats(kvn, NAN),
                      filled_floats(pn, 7.0f)};
    float *got[4] = {filled_floats(qn, NAN), filled_floats(kvn, NAN), filled_floats(kvn, NAN), filled_floats(pn, 7.0f)};
    float *rev[4] = {filled_floats(qn, NAN), filled_floats(kvn, NAN), filled_floats(kvn, NAN), filled_floats(pn, 7.0f)};
    const size_t sizes[4] = {qn, kvn, kvn, pn};
    static const char *names[4] = {"dq", "dk", "dv", "dpattern"};
    CHECK_OK(g_ref->ops->attention_backward(g_ref, want[0], want[1], want[2], want[3], q, k, v, dz, T, n_heads,
                                            n_kv_heads, head_dim, params));
    /* all heads at once, forward order; in chunks of about half the
     * key-value heads (as a capped scratch takes them; 9/3 heads: 2 then
     * 1), threads reversed: the same bits */
    CHECK_LAUNCH(pb_emu_attention_backward(got[0], got[1], got[2], got[3], q, k, v, dz, T, n_heads, n_kv_heads,
                                           head_dim, params, n_kv_heads));
    pb_emu_set_reverse_order(1);
    CHECK_LAUNCH(pb_emu_attention_backward(rev[0], rev[1], rev[2], rev[3], q, k, v, dz, T, n_heads, n_kv_heads,
                                           head_dim, params, (n_kv_heads + 1) / 2));
    pb_emu_set_reverse_order(0);
    for (int i = 0; i < 4; i++) {
        char label[160];
        snprintf(label, sizeof label, "%s: %s", what, names[i]);
        check_guard(got[i], sizes[i], label);
        expect_close(got[i], want[i], sizes[i], PB_TOL_EMU_BACKWARD_NMSE, label);
        expect_identical(rev[i], got[i], sizes[i], label);
        free(want[i]);
        free(got[i]);
        free(rev[i]);
    }
    free(q);
    free(k);
    free(v);
    free(dz);
}

static void test_attention_backward(void **state) {
    (void)state;
    /* the chunks a device takes under PB_ATTENTION_BACKWARD_SCRATCH (1 GiB):
     * 70B's 8 groups of 8 heads at T = 40 at once; at T = 2048 two groups
     * (512 MiB each); at T = 4096 one group alone needs 2 GiB: one */
    assert_int_equal(pb_attention_backward_chunk(40, 64, 8), 8);
    assert_int_equal(pb_attention_backward_chunk(2048, 64, 8), 2);
    assert_int_equal(pb_attention_backward_chunk(4096, 64, 8), 1);
    assert_int_equal(pb_attention_backward_chunk(0, 9, 3), 3);
    run_attention_backward(1, 2, 1, 8, NULL, "attention_backward T 1");
    run_attention_backward(7, 4, 2, 16, NULL, "attention_backward 7 tokens GQA 4/2");
    run_attention_backward(40, 9, 3, 64, NULL, "attention_backward 40 tokens 9/3 heads of 64 (SmolLM2's)");
    run_attention_backward(260, 1, 1, 32, NULL, "attention_backward 260 tokens (more keys than threads)");
    pb_attention_params capped = {0.0625f, 50.0f, 0}, window = {0.25f, 0.0f, 5}, both = {0.125f, 20.0f, 7};
    run_attention_backward(33, 4, 4, 16, &capped, "attention_backward softcap 50, scale 1/16");
    run_attention_backward(33, 4, 2, 16, &window, "attention_backward window 5");
    run_attention_backward(20, 2, 1, 16, &both, "attention_backward softcap 20, window 7");
}

static int setup(void **state) {
    (void)state;
    return pb_backend_ref_create(&g_ref) == PB_OK ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    pb_backend_destroy(g_ref);
    return 0;
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_embed),
        cmocka_unit_test(test_round16),
        cmocka_unit_test(test_grid_stride),
        cmocka_unit_test(test_add_bias),
        cmocka_unit_test(test_swiglu_add),
        cmocka_unit_test(test_glu_gelu),
        cmocka_unit_test(test_activate),
        cmocka_unit_test(test_softcap),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_layernorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_rope_partial),
        cmocka_unit_test(test_rope_scaled),
        cmocka_unit_test(test_attention),
        cmocka_unit_test(test_attention_params),
        cmocka_unit_test(test_attention_jobs),
        cmocka_unit_test(test_attention_tiled),
        cmocka_unit_test(test_attention_jobs_params),
        cmocka_unit_test(test_attention_tiled_params),
        cmocka_unit_test(test_copy_regions),
        cmocka_unit_test(test_dequant),
        cmocka_unit_test(test_dequant_gather),
        cmocka_unit_test(test_dequant_refused),
        cmocka_unit_test(test_metric),
        cmocka_unit_test(test_norm_backward),
        cmocka_unit_test(test_glu_backward),
        cmocka_unit_test(test_attention_backward),
        cmocka_unit_test(test_sync_mode),
        cmocka_unit_test(test_schedule_order),
        cmocka_unit_test(test_emulator_barrier),
        cmocka_unit_test(test_emulator_shuffle),
        cmocka_unit_test(test_launch_error),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
