/* Tests for host/formats/quant.c: every dequantiser against gguf-py's output stored
 * in tests/fixtures/quant/<type>.pbqf (random blocks and blocks of the real
 * SmolLM2 file; regenerate with scripts/make_quant_fixture.py), exact
 * fp16/bf16 conversion of every special case, the type table, the
 * refusals of pb_dequantize, and the Q8_0 quantiser. */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "util/internal.h"
#include "test_util.h"
#include "formats/quant.h"
#include "tolerances.h"

/* Relative difference is |got - want| / max(|want|, PB_DEQUANT_REL_FLOOR);
 * the bound is PB_TOL_DEQUANT_REL (tolerances.h). */
#define PB_DEQUANT_REL_FLOOR 1e-30

#define FIXTURE_MAGIC "PBQF"
#define FIXTURE_VERSION 1u
#define FIXTURE_GENERATOR "scripts/make_quant_fixture.py"

typedef struct {
    const uint8_t *p;
    size_t left;
} reader;

static const uint8_t *take(reader *r, uint64_t n) {
    assert_true(n <= r->left);
    const uint8_t *p = r->p;
    r->p += n;
    r->left -= (size_t)n;
    return p;
}
static uint32_t take_u32(reader *r) {
    const uint8_t *p = take(r, 4);
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}
static uint64_t take_u64(reader *r) {
    uint64_t lo = take_u32(r);
    return lo | ((uint64_t)take_u32(r) << 32);
}

static const uint32_t fixture_types[] = {
    PB_GGML_F32,  PB_GGML_F16,  PB_GGML_BF16, PB_GGML_Q4_0, PB_GGML_Q4_1, PB_GGML_Q5_0, PB_GGML_Q5_1,
    PB_GGML_Q8_0, PB_GGML_Q2_K, PB_GGML_Q3_K, PB_GGML_Q4_K, PB_GGML_Q5_K, PB_GGML_Q6_K,
};
#define N_FIXTURE_TYPES (sizeof fixture_types / sizeof fixture_types[0])

/* Compares one case; returns the number of real-model cases seen. */
static int check_case(uint32_t type, const char *name, size_t name_len, const uint8_t *raw, uint64_t n_bytes,
                      const uint8_t *expected_bytes, uint64_t n) {
    assert_int_equal(n % pb_ggml_block_size(type), 0);
    assert_int_equal(n_bytes, n / pb_ggml_block_size(type) * pb_ggml_block_bytes(type));
    float *got = malloc(n * sizeof *got);
    float *want = malloc(n * sizeof *want);
    /* Offset by one byte: decoders must not rely on alignment. */
    uint8_t *unaligned = malloc(n_bytes + 1);
    assert_non_null(got);
    assert_non_null(want);
    assert_non_null(unaligned);
    memcpy(want, expected_bytes, n * sizeof *want); /* fixture is little-endian fp32 */
    memcpy(unaligned + 1, raw, n_bytes);
    assert_int_equal(pb_dequantize(got, unaligned + 1, type, n), PB_OK);
    double max_rel = 0, max_abs = 0;
    uint64_t worst = 0;
    for (uint64_t i = 0; i < n; i++) {
        double a = got[i], b = want[i];
        double rel = fabs(a - b) / fmax(fabs(b), PB_DEQUANT_REL_FLOOR);
        if (!(rel <= max_rel)) { /* also catches NaN */
            max_rel = rel;
            worst = i;
        }
        if (fabs(a - b) > max_abs)
            max_abs = fabs(a - b);
    }
    printf("  %-5s %-32.*s %7llu elements: max relative difference %.3g (max abs %.3g)\n", pb_ggml_type_name(type),
           (int)name_len, name, (unsigned long long)n, max_rel, max_abs);
    if (!(max_rel <= PB_TOL_DEQUANT_REL))
        fprintf(stderr, "%s %.*s: element %llu = %.9g, gguf-py says %.9g\n", pb_ggml_type_name(type), (int)name_len,
                name, (unsigned long long)worst, got[worst], want[worst]);
    assert_true(max_rel <= PB_TOL_DEQUANT_REL);
    free(got);
    free(want);
    free(unaligned);
    return name_len > 5 && memcmp(name, "real:", 5) == 0;
}

static int check_fixture(uint32_t type) {
    char lower[16], relative[64], path[1024];
    const char *type_name = pb_ggml_type_name(type);
    size_t k = 0;
    for (; type_name[k] && k + 1 < sizeof lower; k++)
        lower[k] = (char)(type_name[k] >= 'A' && type_name[k] <= 'Z' ? type_name[k] + 32 : type_name[k]);
    lower[k] = '\0';
    snprintf(relative, sizeof relative, "quant/%s.pbqf", lower);
    if (!tu_fixture_path(path, sizeof path, relative)) {
        fprintf(stderr, "PB_FIXTURES is not set; it should point at tests/fixtures\n");
        fail();
    }
    uint8_t *data = NULL;
    size_t size = 0;
    if (!(data = (uint8_t *)tu_read_file(path, &size))) {
        fprintf(stderr, "cannot read %s (regenerate with " FIXTURE_GENERATOR ")\n", path);
        fail();
    }
    reader r = {data, size};
    assert_memory_equal(take(&r, 4), FIXTURE_MAGIC, 4);
    assert_int_equal(take_u32(&r), FIXTURE_VERSION);
    uint32_t generator_len = take_u32(&r);
    assert_int_equal(generator_len, strlen(FIXTURE_GENERATOR));
    assert_memory_equal(take(&r, generator_len), FIXTURE_GENERATOR, generator_len);
    assert_int_equal(take_u32(&r), type);
    uint32_t n_cases = take_u32(&r);
    assert_true(n_cases >= 1);
    int n_real = 0;
    for (uint32_t c = 0; c < n_cases; c++) {
        uint32_t name_len = take_u32(&r);
        const char *name = (const char *)take(&r, name_len);
        uint64_t n = take_u64(&r);
        uint64_t n_bytes = take_u64(&r);
        const uint8_t *raw = take(&r, n_bytes);
        assert_true(n <= r.left / 4);
        const uint8_t *expected = take(&r, n * 4);
        n_real += check_case(type, name, name_len, raw, n_bytes, expected, n);
    }
    assert_int_equal(r.left, 0);
    free(data);
    return n_real;
}

static void test_dequantize_matches_gguf_py(void **state) {
    (void)state;
    for (size_t i = 0; i < N_FIXTURE_TYPES; i++) {
        uint32_t type = fixture_types[i];
        assert_true(pb_ggml_type_dequantizable(type));
        int n_real = check_fixture(type);
        /* The types the SmolLM2 file uses must include its real blocks. */
        if (type == PB_GGML_F32 || type == PB_GGML_Q8_0 || type == PB_GGML_Q4_1)
            assert_true(n_real >= 1);
    }
}

/* Every type pb_dequantize claims must have a fixture. */
static void test_every_dequantizable_type_has_fixture(void **state) {
    (void)state;
    for (uint32_t type = 0; type < PB_GGML_TYPE_LIMIT + 8; type++) {
        if (!pb_ggml_type_dequantizable(type))
            continue;
        int found = 0;
        for (size_t i = 0; i < N_FIXTURE_TYPES; i++)
            found |= fixture_types[i] == type;
        if (!found)
            fprintf(stderr, "%s has no fixture\n", pb_ggml_type_name(type));
        assert_true(found);
    }
}

/* ---- fp16 / bf16 ---------------------------------------------------------- */

static uint32_t bits_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static void test_fp16_specials(void **state) {
    (void)state;
    assert_int_equal(bits_of(pb_fp16_to_fp32(0x0000)), 0x00000000u);
    assert_int_equal(bits_of(pb_fp16_to_fp32(0x8000)), 0x80000000u); /* -0 keeps its sign */
    assert_true(pb_fp16_to_fp32(0x7c00) == INFINITY);
    assert_true(pb_fp16_to_fp32(0xfc00) == -INFINITY);
    assert_true(isnan(pb_fp16_to_fp32(0x7e00)));
    assert_true(isnan(pb_fp16_to_fp32(0xfc01)));
    assert_int_equal(bits_of(pb_fp16_to_fp32(0x7c01)), 0x7f802000u); /* payload kept */
    assert_true(pb_fp16_to_fp32(0x0001) == ldexpf(1.0f, -24));       /* smallest subnormal */
    assert_true(pb_fp16_to_fp32(0x8001) == -ldexpf(1.0f, -24));
    assert_true(pb_fp16_to_fp32(0x03ff) == ldexpf(1023.0f, -24)); /* largest subnormal */
    assert_true(pb_fp16_to_fp32(0x0200) == ldexpf(1.0f, -15));
    assert_true(pb_fp16_to_fp32(0x0400) == ldexpf(1.0f, -14)); /* smallest normal */
    assert_true(pb_fp16_to_fp32(0x3c00) == 1.0f);
    assert_true(pb_fp16_to_fp32(0xc000) == -2.0f);
    assert_true(pb_fp16_to_fp32(0x7bff) == 65504.0f);
    assert_true(pb_fp16_to_fp32(0x3555) == 0.333251953125f);
}

/* All 65536 encodings against the textbook formula, evaluated in double. */
static void test_fp16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        int sign = (h >> 15) & 1, exponent = (h >> 10) & 31, mantissa = h & 1023;
        float got = pb_fp16_to_fp32((uint16_t)h);
        if (exponent == 31) {
            assert_true(mantissa ? isnan(got) : isinf(got));
            assert_int_equal(signbit(got) != 0, sign);
            continue;
        }
        double want = exponent == 0 ? ldexp(mantissa, -24) : ldexp(1024 + mantissa, exponent - 25);
        if (sign)
            want = -want;
        if ((double)got != want || (signbit(got) != 0) != sign)
            fprintf(stderr, "fp16 0x%04x: got %.9g want %.9g\n", h, got, want);
        assert_true((double)got == want);
        assert_int_equal(signbit(got) != 0, sign);
    }
}

static void test_bf16_specials(void **state) {
    (void)state;
    assert_int_equal(bits_of(pb_bf16_to_fp32(0x0000)), 0x00000000u);
    assert_int_equal(bits_of(pb_bf16_to_fp32(0x8000)), 0x80000000u);
    assert_true(pb_bf16_to_fp32(0x3f80) == 1.0f);
    assert_true(pb_bf16_to_fp32(0xc040) == -3.0f);
    assert_true(pb_bf16_to_fp32(0x7f80) == INFINITY);
    assert_true(pb_bf16_to_fp32(0xff80) == -INFINITY);
    assert_true(isnan(pb_bf16_to_fp32(0x7fc0)));
    assert_int_equal(bits_of(pb_bf16_to_fp32(0x7f81)), 0x7f810000u);
    assert_true(pb_bf16_to_fp32(0x0001) == ldexpf(1.0f, -133)); /* fp32 subnormal */
    assert_true(pb_bf16_to_fp32(0x0080) == ldexpf(1.0f, -126));
    assert_true(pb_bf16_to_fp32(0x7f7f) == ldexpf(255.0f, 120));
}

/* F16/BF16 through pb_dequantize keep specials too (the fixture avoids them). */
static void test_dequantize_half_specials(void **state) {
    (void)state;
    const uint8_t half[] = {0x00, 0x7c, 0x00, 0xfc, 0x00, 0x7e, 0x01, 0x00};
    float out[4];
    assert_int_equal(pb_dequantize(out, half, PB_GGML_F16, 4), PB_OK);
    assert_true(out[0] == INFINITY && out[1] == -INFINITY && isnan(out[2]));
    assert_true(out[3] == ldexpf(1.0f, -24));
    const uint8_t bf[] = {0x80, 0x7f, 0x80, 0xff, 0xc0, 0x7f, 0x80, 0x3f};
    assert_int_equal(pb_dequantize(out, bf, PB_GGML_BF16, 4), PB_OK);
    assert_true(out[0] == INFINITY && out[1] == -INFINITY && isnan(out[2]) && out[3] == 1.0f);
}

/* ---- the type table and refusals ---------------------------------------------- */

static void test_type_table(void **state) {
    (void)state;
    static const struct {
        uint32_t type;
        const char *name;
        uint32_t block_size;
        size_t block_bytes;
    } expected[] = {
        {PB_GGML_F32, "F32", 1, 4},         {PB_GGML_F16, "F16", 1, 2},
        {PB_GGML_BF16, "BF16", 1, 2},       {PB_GGML_Q4_0, "Q4_0", 32, 18},
        {PB_GGML_Q4_1, "Q4_1", 32, 20},     {PB_GGML_Q5_0, "Q5_0", 32, 22},
        {PB_GGML_Q5_1, "Q5_1", 32, 24},     {PB_GGML_Q8_0, "Q8_0", 32, 34},
        {PB_GGML_Q8_1, "Q8_1", 32, 40},     {PB_GGML_Q2_K, "Q2_K", 256, 84},
        {PB_GGML_Q3_K, "Q3_K", 256, 110},   {PB_GGML_Q4_K, "Q4_K", 256, 144},
        {PB_GGML_Q5_K, "Q5_K", 256, 176},   {PB_GGML_Q6_K, "Q6_K", 256, 210},
        {PB_GGML_Q8_K, "Q8_K", 256, 292},   {PB_GGML_IQ2_XXS, "IQ2_XXS", 256, 66},
        {PB_GGML_IQ4_NL, "IQ4_NL", 32, 18}, {PB_GGML_IQ4_XS, "IQ4_XS", 256, 136},
        {PB_GGML_IQ1_M, "IQ1_M", 256, 56},  {PB_GGML_I8, "I8", 1, 1},
        {PB_GGML_F64, "F64", 1, 8},         {PB_GGML_TQ2_0, "TQ2_0", 256, 66},
        {PB_GGML_MXFP4, "MXFP4", 32, 17},
    };
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++) {
        assert_true(pb_ggml_type_known(expected[i].type));
        assert_string_equal(pb_ggml_type_name(expected[i].type), expected[i].name);
        assert_int_equal(pb_ggml_block_size(expected[i].type), expected[i].block_size);
        assert_int_equal(pb_ggml_block_bytes(expected[i].type), expected[i].block_bytes);
    }
    static const uint32_t retired[] = {4, 5, 31, 32, 33, 36, 37, 38, PB_GGML_TYPE_LIMIT, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof retired / sizeof retired[0]; i++) {
        assert_false(pb_ggml_type_known(retired[i]));
        assert_false(pb_ggml_type_dequantizable(retired[i]));
        assert_string_equal(pb_ggml_type_name(retired[i]), "unknown");
        assert_int_equal(pb_ggml_block_size(retired[i]), 0);
        assert_int_equal(pb_ggml_block_bytes(retired[i]), 0);
    }
    assert_false(pb_ggml_type_dequantizable(PB_GGML_IQ2_XXS));
    assert_false(pb_ggml_type_dequantizable(PB_GGML_Q8_K));
}

static void test_dequantize_refusals(void **state) {
    (void)state;
    uint8_t block[256] = {0};
    float out[256];
    assert_int_equal(pb_dequantize(out, block, PB_GGML_Q4_K, 100), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "n_elements 100 is not a multiple of the Q4_K block size 256"));
    assert_int_equal(pb_dequantize(out, block, PB_GGML_Q8_0, 33), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "Q8_0 block size 32"));
    assert_int_equal(pb_dequantize(out, block, 4, 32), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "unknown ggml type id 4"));
    assert_int_equal(pb_dequantize(out, block, 1000, 32), PB_ERR_ARG);
    assert_non_null(strstr(pb_last_error(), "unknown ggml type id 1000"));
    assert_int_equal(pb_dequantize(out, block, PB_GGML_IQ2_XXS, 256), PB_ERR_UNSUPPORTED);
    assert_non_null(strstr(pb_last_error(), "IQ2_XXS (16) is not supported"));
    assert_int_equal(pb_dequantize(NULL, block, PB_GGML_Q8_0, 32), PB_ERR_ARG);
    assert_int_equal(pb_dequantize(out, NULL, PB_GGML_Q8_0, 32), PB_ERR_ARG);
    assert_int_equal(pb_dequantize(NULL, NULL, PB_GGML_Q8_0, 0), PB_OK);
}

/* Hand-built blocks whose values are known without any reference. */
static void test_dequantize_hand_blocks(void **state) {
    (void)state;
    /* Q8_0: d = 0.5 (0x3800), q = -16..15 -> q / 2. */
    uint8_t q8[34] = {0x00, 0x38};
    for (int i = 0; i < 32; i++)
        q8[2 + i] = (uint8_t)(int8_t)(i - 16);
    float out[256];
    assert_int_equal(pb_dequantize(out, q8, PB_GGML_Q8_0, 32), PB_OK);
    for (int i = 0; i < 32; i++)
        assert_true(out[i] == (float)(i - 16) * 0.5f);
    /* Q4_1: d = 2, m = -1; byte j = j | (15 - j) << 4: element j -> 2j - 1,
     * element j + 16 -> 2(15 - j) - 1. */
    uint8_t q41[20] = {0x00, 0x40, 0x00, 0xbc};
    for (int j = 0; j < 16; j++)
        q41[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    assert_int_equal(pb_dequantize(out, q41, PB_GGML_Q4_1, 32), PB_OK);
    for (int j = 0; j < 16; j++) {
        assert_true(out[j] == 2.0f * j - 1.0f);
        assert_true(out[j + 16] == 2.0f * (15 - j) - 1.0f);
    }
    /* Q6_K: d = 1, every scale 1 except sub-block 15 (scale -2); ql = qh = 0
     * so every q is -32. */
    uint8_t q6[210] = {0};
    for (int s = 0; s < 16; s++)
        q6[192 + s] = s == 15 ? (uint8_t)(int8_t)-2 : 1;
    q6[208] = 0x00;
    q6[209] = 0x3c;
    assert_int_equal(pb_dequantize(out, q6, PB_GGML_Q6_K, 256), PB_OK);
    for (int i = 0; i < 256; i++)
        assert_true(out[i] == (i >= 240 ? 64.0f : -32.0f));
}

/* pb_quantize_q8_0 against the block format's definition computed here in
 * double: d = max |x| / 127 stored as the nearest fp16, q = x / d rounded
 * to nearest (a q whose quotient lies within 1e-4 of a half may round
 * either way in fp32); an all-zero block has d = 0 and q = 0; and decoding
 * returns every value within half a step (plus the fp16 rounding of d). */
static void test_quantize_q8_0(void **state) {
    (void)state;
    float x[64];
    for (int j = 0; j < 32; j++)
        x[j] = (float)(j - 16) / 4.0f + (j % 3) * 0.01f;
    memset(x + 32, 0, 32 * sizeof(float));
    uint8_t q[68];
    pb_quantize_q8_0(q, x, 2);
    double amax = 0;
    for (int j = 0; j < 32; j++)
        amax = fabs(x[j]) > amax ? fabs(x[j]) : amax;
    double d = amax / 127.0;
    float stored = pb_fp16_to_fp32((uint16_t)(q[0] | q[1] << 8));
    assert_true(fabs(stored - d) <= d * 0x1p-11); /* the nearest half: within half an fp16 ulp */
    for (int j = 0; j < 32; j++) {
        double quotient = x[j] / d, frac = fabs(quotient - trunc(quotient));
        long want = lround(quotient);
        int got = (int8_t)q[2 + j];
        if (fabs(frac - 0.5) > 1e-4)
            assert_int_equal(got, want);
        else
            assert_true(labs(got - want) <= 1);
        assert_true(fabs((double)got * stored - x[j]) <= 0.5 * stored + 127 * fabs(stored - d) + 1e-6);
    }
    assert_int_equal(q[34] | q[35] << 8, 0);
    for (int j = 0; j < 32; j++)
        assert_int_equal(q[36 + j], 0);
    float back[64];
    assert_int_equal(pb_dequantize(back, q, PB_GGML_Q8_0, 64), PB_OK);
    for (int j = 0; j < 64; j++)
        assert_true(fabs((double)back[j] - x[j]) <= 0.5 * stored + 127 * fabs(stored - d) + 1e-6);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dequantize_matches_gguf_py),
        cmocka_unit_test(test_every_dequantizable_type_has_fixture),
        cmocka_unit_test(test_fp16_specials),
        cmocka_unit_test(test_fp16_exhaustive),
        cmocka_unit_test(test_bf16_specials),
        cmocka_unit_test(test_dequantize_half_specials),
        cmocka_unit_test(test_type_table),
        cmocka_unit_test(test_dequantize_refusals),
        cmocka_unit_test(test_dequantize_hand_blocks),
        cmocka_unit_test(test_quantize_q8_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
