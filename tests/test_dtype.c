/* Weight storage types (dtype.c): fp32 -> bf16 / fp16 narrowing bit-exact
 * against torch and numpy (tests/fixtures/dtype, from
 * scripts/make_dtype_fixture.py), widening checked against the IEEE formula
 * and by round trips of every 16-bit pattern, and the dtype / backend
 * names parsed and printed. */
#define _POSIX_C_SOURCE 200809L
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "formats/dtype.h"
#include "patchbay.h"
#include "formats/quant.h"
#include "test_util.h"

typedef struct conversions {
    uint32_t n;
    uint32_t *input; /* (n) fp32 bit patterns */
    uint16_t *bf16;  /* (n) torch's .to(torch.bfloat16) */
    uint16_t *fp16;  /* (n) numpy's .astype(np.float16) */
} conversions;

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void load_conversions(conversions *c) {
    char path[1024];
    snprintf(path, sizeof path, "%s/dtype/conversions.pbdt", tu_fixtures());
    size_t size = 0;
    uint8_t *data = (uint8_t *)tu_read_file(path, &size);
    if (!data)
        fail_msg("cannot read %s (regenerate with scripts/make_dtype_fixture.py)", path);
    assert_true(size >= 12);
    assert_memory_equal(data, "PBDT", 4);
    assert_int_equal(le32(data + 4), 1);
    uint32_t name_len = le32(data + 8);
    assert_true(size >= 16 + name_len);
    const uint8_t *p = data + 12 + name_len;
    c->n = le32(p);
    p += 4;
    assert_true(c->n > 1000);
    assert_int_equal(size, (size_t)(p - data) + (size_t)c->n * 8);
    c->input = malloc(sizeof(uint32_t) * c->n);
    c->bf16 = malloc(sizeof(uint16_t) * c->n);
    c->fp16 = malloc(sizeof(uint16_t) * c->n);
    assert_non_null(c->input);
    assert_non_null(c->bf16);
    assert_non_null(c->fp16);
    for (uint32_t i = 0; i < c->n; i++) {
        c->input[i] = le32(p + 4 * i);
        const uint8_t *b = p + 4 * (size_t)c->n + 2 * i, *h = p + 6 * (size_t)c->n + 2 * i;
        c->bf16[i] = (uint16_t)(b[0] | b[1] << 8);
        c->fp16[i] = (uint16_t)(h[0] | h[1] << 8);
    }
    free(data);
}

static void free_conversions(conversions *c) {
    free(c->input);
    free(c->bf16);
    free(c->fp16);
}

static float bits_float(uint32_t u) {
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static int input_is_nan(uint32_t u) { return (u & 0x7fffffffu) > 0x7f800000u; }
static int bf16_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7f80u; }
static int fp16_is_nan(uint16_t h) { return (h & 0x7fffu) > 0x7c00u; }

/* Every fixture value, through the scalar and the array conversion: the
 * library's bits; NaN inputs give a NaN of the input's sign (torch turns
 * every NaN into 0xffff, sign included, and numpy keeps a truncated
 * payload, so their NaN bits are not a reference). */
static void test_narrowing_matches_libraries(void **state) {
    conversions c;
    load_conversions(&c);
    float *values = malloc(sizeof(float) * c.n);
    uint16_t *array_bf16 = malloc(sizeof(uint16_t) * c.n), *array_fp16 = malloc(sizeof(uint16_t) * c.n);
    assert_non_null(values);
    assert_non_null(array_bf16);
    assert_non_null(array_fp16);
    for (uint32_t i = 0; i < c.n; i++)
        values[i] = bits_float(c.input[i]);
    pb_dtype_from_f32(PB_DTYPE_BF16, array_bf16, values, c.n);
    pb_dtype_from_f32(PB_DTYPE_F16, array_fp16, values, c.n);
    int n_nan = 0, n_ties_checked = 0, n_overflow = 0;
    for (uint32_t i = 0; i < c.n; i++) {
        uint32_t u = c.input[i];
        uint16_t b = pb_fp32_to_bf16(values[i]), h = pb_fp32_to_fp16(values[i]);
        assert_int_equal(array_bf16[i], b);
        assert_int_equal(array_fp16[i], h);
        if (input_is_nan(u)) {
            n_nan++;
            if (!bf16_is_nan(b) || (b >> 15) != (u >> 31))
                fail_msg("input 0x%08x (NaN): bf16 0x%04x is not a NaN of the same sign", u, b);
            if (!fp16_is_nan(h) || (h >> 15) != (u >> 31))
                fail_msg("input 0x%08x (NaN): fp16 0x%04x is not a NaN of the same sign", u, h);
            continue;
        }
        if (b != c.bf16[i])
            fail_msg("input 0x%08x (%.9g): bf16 0x%04x, torch 0x%04x", u, (double)values[i], b, c.bf16[i]);
        if (h != c.fp16[i])
            fail_msg("input 0x%08x (%.9g): fp16 0x%04x, numpy 0x%04x", u, (double)values[i], h, c.fp16[i]);
        n_ties_checked += (u & 0xffffu) == 0x8000u || (u & 0x1fffu) == 0x1000u;
        n_overflow += (h & 0x7fffu) == 0x7c00u && !isinf(values[i]);
    }
    /* The fixture must really hold the hard cases. */
    assert_true(n_nan >= 8);
    assert_true(n_ties_checked >= 500);
    assert_true(n_overflow >= 10);
    print_message("[ MEASURE  ] %u values bit-exact (%d NaN inputs, %d exact ties, %d fp16 overflows)\n", c.n, n_nan,
                  n_ties_checked, n_overflow);
    free(values);
    free(array_bf16);
    free(array_fp16);
    free_conversions(&c);
}

/* Cases whose answer follows from the definitions alone. */
static void test_narrowing_known_values(void **state) {
    assert_int_equal(pb_fp32_to_bf16(1.0f), 0x3f80);
    assert_int_equal(pb_fp32_to_bf16(-0.0f), 0x8000);
    assert_int_equal(pb_fp32_to_bf16(bits_float(0x3f808000u)), 0x3f80);          /* tie, even kept bit: down */
    assert_int_equal(pb_fp32_to_bf16(bits_float(0x3f818000u)), 0x3f82);          /* tie, odd kept bit: up */
    assert_int_equal(pb_fp32_to_bf16(bits_float(0x7f7fffffu)), 0x7f80);          /* max float rounds to Inf */
    assert_int_equal(pb_fp32_to_bf16(bits_float(0x7f800001u)) & 0x7fc0, 0x7fc0); /* sNaN stays NaN, quiet */
    assert_int_equal(pb_fp32_to_fp16(65504.0f), 0x7bff);
    assert_int_equal(pb_fp32_to_fp16(65519.99f), 0x7bff);
    assert_int_equal(pb_fp32_to_fp16(65520.0f), 0x7c00);
    assert_int_equal(pb_fp32_to_fp16(-65520.0f), 0xfc00);
    assert_int_equal(pb_fp32_to_fp16(ldexpf(1.0f, -24)), 0x0001);    /* smallest subnormal */
    assert_int_equal(pb_fp32_to_fp16(ldexpf(1.0f, -25)), 0x0000);    /* tie with 0: even */
    assert_int_equal(pb_fp32_to_fp16(ldexpf(3.0f, -25)), 0x0002);    /* 1.5 units: tie to even 2 */
    assert_int_equal(pb_fp32_to_fp16(ldexpf(1023.5f, -24)), 0x0400); /* rounds up into the smallest normal */
    assert_int_equal(pb_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(pb_fp32_to_fp16(INFINITY), 0x7c00);
    assert_int_equal(pb_dtype_size(PB_DTYPE_F32), 4);
    assert_int_equal(pb_dtype_size(PB_DTYPE_BF16), 2);
    assert_int_equal(pb_dtype_size(PB_DTYPE_F16), 2);
}

/* fp16 value from its fields by the IEEE 754 formula, in double. */
static double fp16_formula(uint16_t h) {
    int sign = h >> 15, exponent = (h >> 10) & 0x1f, mantissa = h & 0x3ff;
    double magnitude = exponent == 0 ? ldexp(mantissa, -24) : ldexp(1024 + mantissa, exponent - 25);
    return sign ? -magnitude : magnitude;
}

/* Widening is exact: every 16-bit pattern widens to the value its fields
 * define, and narrowing that value gives back the same bits (NaNs stay
 * NaNs of the same sign). */
static void test_widening_round_trip(void **state) {
    static uint16_t bits[1 << 16];
    static float wide[1 << 16];
    static uint16_t back[1 << 16];
    for (uint32_t i = 0; i < 1u << 16; i++)
        bits[i] = (uint16_t)i;
    pb_dtype_to_f32(PB_DTYPE_BF16, wide, bits, 1u << 16);
    pb_dtype_from_f32(PB_DTYPE_BF16, back, wide, 1u << 16);
    for (uint32_t i = 0; i < 1u << 16; i++) {
        uint16_t h = (uint16_t)i;
        assert_true(wide[i] == pb_bf16_to_fp32(h) || (isnan(wide[i]) && isnan(pb_bf16_to_fp32(h))));
        float expect = bits_float((uint32_t)h << 16); /* bf16 is fp32's top half */
        if (bf16_is_nan(h)) {
            if (!isnan(wide[i]) || !bf16_is_nan(back[i]) || (back[i] >> 15) != (h >> 15))
                fail_msg("bf16 NaN 0x%04x -> %g -> 0x%04x", h, (double)wide[i], back[i]);
            continue;
        }
        if (memcmp(&wide[i], &expect, sizeof expect) != 0 || back[i] != h)
            fail_msg("bf16 0x%04x -> %.9g (expected %.9g) -> 0x%04x", h, (double)wide[i], (double)expect, back[i]);
        assert_true(pb_dtype_round(PB_DTYPE_BF16, wide[i]) == wide[i] || isinf(wide[i]));
    }
    pb_dtype_to_f32(PB_DTYPE_F16, wide, bits, 1u << 16);
    pb_dtype_from_f32(PB_DTYPE_F16, back, wide, 1u << 16);
    for (uint32_t i = 0; i < 1u << 16; i++) {
        uint16_t h = (uint16_t)i;
        if (fp16_is_nan(h)) {
            if (!isnan(wide[i]) || !fp16_is_nan(back[i]) || (back[i] >> 15) != (h >> 15))
                fail_msg("fp16 NaN 0x%04x -> %g -> 0x%04x", h, (double)wide[i], back[i]);
            continue;
        }
        double expect = (h & 0x7fffu) == 0x7c00u ? ((h >> 15) ? -INFINITY : INFINITY) : fp16_formula(h);
        if ((double)wide[i] != expect || !signbit(wide[i]) != !signbit(expect) || back[i] != h)
            fail_msg("fp16 0x%04x -> %.9g (expected %.9g) -> 0x%04x", h, (double)wide[i], expect, back[i]);
        assert_true(pb_dtype_round(PB_DTYPE_F16, wide[i]) == wide[i] || isinf(wide[i]));
    }
    /* f32 "conversion" is a copy: bits preserved, NaN payloads included. */
    uint32_t raw[4] = {0x7f800001u, 0xffc12345u, 0x00000001u, 0x80000000u}, copy[4];
    pb_dtype_from_f32(PB_DTYPE_F32, copy, (const float *)(const void *)raw, 4);
    assert_memory_equal(copy, raw, sizeof raw);
    pb_dtype_to_f32(PB_DTYPE_F32, (float *)(void *)copy, raw, 4);
    assert_memory_equal(copy, raw, sizeof raw);
    float x = bits_float(0x3f8ff0f1u);
    assert_true(pb_dtype_round(PB_DTYPE_F32, x) == x);
    assert_true(pb_dtype_round(PB_DTYPE_BF16, x) == bits_float(0x3f900000u));
}

static void test_dtype_names(void **state) {
    static const struct {
        const char *text;
        pb_dtype dtype;
    } accepted[] = {
        {"f32", PB_DTYPE_F32},   {"fp32", PB_DTYPE_F32},      {"float32", PB_DTYPE_F32}, {"F32", PB_DTYPE_F32},
        {"bf16", PB_DTYPE_BF16}, {"bfloat16", PB_DTYPE_BF16}, {"BF16", PB_DTYPE_BF16},   {"f16", PB_DTYPE_F16},
        {"fp16", PB_DTYPE_F16},  {"float16", PB_DTYPE_F16},
    };
    for (size_t i = 0; i < sizeof accepted / sizeof accepted[0]; i++) {
        pb_dtype d = (pb_dtype)-1;
        if (pb_dtype_parse(accepted[i].text, &d) != PB_OK)
            fail_msg("'%s' refused: %s", accepted[i].text, pb_last_error());
        assert_int_equal(d, accepted[i].dtype);
    }
    const pb_dtype all[] = {PB_DTYPE_F32, PB_DTYPE_BF16, PB_DTYPE_F16};
    const char *names[] = {"f32", "bf16", "f16"};
    for (int i = 0; i < 3; i++) {
        assert_string_equal(pb_dtype_name(all[i]), names[i]);
        pb_dtype d = (pb_dtype)-1;
        assert_int_equal(pb_dtype_parse(pb_dtype_name(all[i]), &d), PB_OK);
        assert_int_equal(d, all[i]);
    }
    const char *refused[] = {"int8", "", "f 32", "bf16x", "q4_0"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        pb_dtype d;
        assert_int_equal(pb_dtype_parse(refused[i], &d), PB_ERR_ARG);
        char quoted[32];
        snprintf(quoted, sizeof quoted, "'%s'", refused[i]);
        if (!strstr(pb_last_error(), quoted) || !strstr(pb_last_error(), "bf16"))
            fail_msg("message for '%s' should name it and the choices: %s", refused[i], pb_last_error());
    }
    pb_dtype d;
    assert_int_equal(pb_dtype_parse(NULL, &d), PB_ERR_ARG);
}

static void test_backend_names(void **state) {
    const pb_backend_kind all[] = {PB_BACKEND_CPU, PB_BACKEND_REFERENCE, PB_BACKEND_CUDA};
    const char *names[] = {"cpu", "reference", "cuda"};
    for (int i = 0; i < 3; i++) {
        assert_string_equal(pb_backend_name(all[i]), names[i]);
        pb_backend_kind k = (pb_backend_kind)-1;
        assert_int_equal(pb_backend_parse(pb_backend_name(all[i]), &k), PB_OK);
        assert_int_equal(k, all[i]);
    }
    pb_backend_kind k = (pb_backend_kind)-1;
    assert_int_equal(pb_backend_parse("ref", &k), PB_OK);
    assert_int_equal(k, PB_BACKEND_REFERENCE);
    assert_int_equal(pb_backend_parse("gpu", &k), PB_OK);
    assert_int_equal(k, PB_BACKEND_CUDA);
    const char *refused[] = {"tpu", "", "CPU ", "opencl"};
    for (size_t i = 0; i < sizeof refused / sizeof refused[0]; i++) {
        assert_int_equal(pb_backend_parse(refused[i], &k), PB_ERR_ARG);
        char quoted[32];
        snprintf(quoted, sizeof quoted, "'%s'", refused[i]);
        if (!strstr(pb_last_error(), quoted) || !strstr(pb_last_error(), "reference"))
            fail_msg("message for '%s' should name it and the choices: %s", refused[i], pb_last_error());
    }
    assert_int_equal(pb_backend_parse(NULL, &k), PB_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_narrowing_matches_libraries),
        cmocka_unit_test(test_narrowing_known_values),
        cmocka_unit_test(test_widening_round_trip),
        cmocka_unit_test(test_dtype_names),
        cmocka_unit_test(test_backend_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
