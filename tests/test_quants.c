/* Tensor types: traits table, fp16/bf16 conversion, and for every type the
 * reference dequantize / quantize / dot product:
 *   - blocks built byte by byte with expected values worked out by hand,
 *   - dequantization (and, where gguf-py has a ggml-exact quantizer,
 *     quantization) against fixtures written by tools/gen_quant_fixtures.py,
 *   - quantize -> dequantize error bounds on random data,
 *   - vec_dot against a double-precision dot of the dequantized operands. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tensor/blocks.h"
#include "tensor/quants.h"
#include "tensor/types.h"

/* ---- helpers ---- */

static uint64_t rng_state = 0x1234567890ABCDEFull;

static uint64_t rnd_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static double rnd_unit(void) { return (double)(rnd_u64() >> 11) * 0x1.0p-53; }

static float rnd_gauss(void) {
    double u1 = rnd_unit(), u2 = rnd_unit();
    if (u1 < 1e-300)
        u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void put_u16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xFF);
    p[1] = (uint8_t)(v >> 8);
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Half-float bit patterns used in the hand-built blocks. */
enum {
    H_0_25 = 0x3400,
    H_0_5 = 0x3800,
    H_1 = 0x3C00,
    H_M2 = 0xC000,
    H_32 = 0x5000,
};

/* Dequantize one block of `type` and compare every value with exp[]. */
static void check_dequant(int type, const uint8_t *block, const float *exp) {
    const codi_type_traits *t = codi_type_get(type);
    assert_non_null(t);
    float y[CODI_QK_K];
    t->to_float(block, y, t->blck_size);
    for (int64_t i = 0; i < t->blck_size; i++) {
        if (y[i] != exp[i])
            fail_msg("%s element %d: got %.9g, expected %.9g", t->name,
                     (int)i, (double)y[i], (double)exp[i]);
    }
}

/* One activation block of the type paired with `type`, all quants 1 and
 * scale 1: vec_dot with it is the sum of the weight block's values. */
static void ones_activation(int vec_dot_type, uint8_t *buf) {
    switch (vec_dot_type) {
    case CODI_TYPE_Q8_0:
        put_u16(buf, H_1);
        memset(buf + 2, 1, CODI_QK);
        break;
    case CODI_TYPE_Q8_1:
        put_u16(buf, H_1);
        put_u16(buf + 2, H_32); /* s = d * 32 */
        memset(buf + 4, 1, CODI_QK);
        break;
    case CODI_TYPE_Q8_K:
        put_u32(buf, f2u(1.0f));
        memset(buf + 4, 1, CODI_QK_K);
        for (int j = 0; j < 16; j++)
            put_u16(buf + 4 + CODI_QK_K + 2 * j, 16);
        break;
    default:
        fail_msg("no ones block for type %d", vec_dot_type);
    }
}

static void check_dot_with_ones(int type, const uint8_t *block, float exp) {
    const codi_type_traits *t = codi_type_get(type);
    uint8_t act[sizeof(codi_block_q8_K)];
    ones_activation(t->vec_dot_type, act);
    float s = NAN;
    t->vec_dot(t->blck_size, &s, block, act);
    if (s != exp)
        fail_msg("%s dot with ones: got %.9g, expected %.9g", t->name,
                 (double)s, (double)exp);
}

static void fill(float *y, int from, int to, float v) {
    for (int i = from; i < to; i++)
        y[i] = v;
}

/* ---- traits table ---- */

static void test_traits(void **state) {
    (void)state;
    static const struct {
        int type;
        const char *name;
        int64_t bs;
        size_t ts;
        int dot_type;
        bool has_dot;
    } want[] = {
        {CODI_TYPE_F32, "F32", 1, 4, CODI_TYPE_F32, true},
        {CODI_TYPE_F16, "F16", 1, 2, CODI_TYPE_F16, true},
        {CODI_TYPE_BF16, "BF16", 1, 2, CODI_TYPE_BF16, true},
        {CODI_TYPE_Q4_0, "Q4_0", 32, 18, CODI_TYPE_Q8_0, true},
        {CODI_TYPE_Q4_1, "Q4_1", 32, 20, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_Q5_0, "Q5_0", 32, 22, CODI_TYPE_Q8_0, true},
        {CODI_TYPE_Q5_1, "Q5_1", 32, 24, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_Q8_0, "Q8_0", 32, 34, CODI_TYPE_Q8_0, true},
        {CODI_TYPE_Q8_1, "Q8_1", 32, 36, CODI_TYPE_Q8_1, false},
        {CODI_TYPE_Q2_K, "Q2_K", 256, 84, CODI_TYPE_Q8_K, true},
        {CODI_TYPE_Q3_K, "Q3_K", 256, 110, CODI_TYPE_Q8_K, true},
        {CODI_TYPE_Q4_K, "Q4_K", 256, 144, CODI_TYPE_Q8_K, true},
        {CODI_TYPE_Q5_K, "Q5_K", 256, 176, CODI_TYPE_Q8_K, true},
        {CODI_TYPE_Q6_K, "Q6_K", 256, 210, CODI_TYPE_Q8_K, true},
        {CODI_TYPE_Q8_K, "Q8_K", 256, 292, CODI_TYPE_Q8_K, false},
        /* codi's own (docs/formats.md) */
        {CODI_TYPE_Q4G32, "Q4G32", 32, 20, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_Q4G64, "Q4G64", 64, 36, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_Q4G128, "Q4G128", 128, 68, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_Q8G32, "Q8G32", 32, 34, CODI_TYPE_Q8_0, true},
        {CODI_TYPE_Q8G64, "Q8G64", 64, 66, CODI_TYPE_Q8_0, true},
        {CODI_TYPE_Q8G128, "Q8G128", 128, 130, CODI_TYPE_Q8_0, true},
        {CODI_TYPE_GQSA32, "GQSA32", 32, 22, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_GQSA64, "GQSA64", 64, 38, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_GQSA128, "GQSA128", 128, 70, CODI_TYPE_Q8_1, true},
        {CODI_TYPE_W4A8_32, "W4A8_32", 32, 18, CODI_TYPE_A8, true},
        {CODI_TYPE_W4A8_64, "W4A8_64", 64, 34, CODI_TYPE_A8, true},
        {CODI_TYPE_W4A8_128, "W4A8_128", 128, 66, CODI_TYPE_A8, true},
        {CODI_TYPE_A8, "A8", 32, 40, CODI_TYPE_A8, false},
    };
    int known = 0;
    /* I16: data only */
    assert_string_equal(codi_type_name(CODI_TYPE_I16), "I16");
    assert_int_equal(codi_row_size(CODI_TYPE_I16, 5), 10);
    assert_null(codi_type_get(CODI_TYPE_I16)->vec_dot);
    assert_null(codi_type_get(CODI_TYPE_I16)->to_float);
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const codi_type_traits *t = codi_type_get(want[i].type);
        assert_non_null(t);
        assert_string_equal(t->name, want[i].name);
        assert_string_equal(codi_type_name(want[i].type), want[i].name);
        assert_int_equal(t->blck_size, want[i].bs);
        assert_int_equal(t->type_size, want[i].ts);
        assert_int_equal(t->vec_dot_type, want[i].dot_type);
        assert_non_null(t->to_float);
        assert_non_null(t->from_float);
        assert_int_equal(t->vec_dot != NULL, want[i].has_dot);
        /* The activation type can be produced from floats. */
        assert_non_null(codi_type_get(t->vec_dot_type)->from_float);
    }
    for (int id = -2; id <= CODI_TYPE_COUNT + 2; id++)
        known += codi_type_get(id) != NULL;
    assert_int_equal(known, (int)(sizeof want / sizeof want[0]) + 1);
}

static void test_unknown_types(void **state) {
    (void)state;
    static const int bad[] = {-1, 4, 5, 16, 18, 29, 31, 40, 63, 64, 65, 1000,
                              INT_MAX, INT_MIN};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_null(codi_type_get(bad[i]));
        assert_string_equal(codi_type_name(bad[i]), "?");
        assert_int_equal(codi_row_size(bad[i], 256), 0);
    }
}

static void test_row_size(void **state) {
    (void)state;
    assert_int_equal(codi_row_size(CODI_TYPE_F32, 3), 12);
    assert_int_equal(codi_row_size(CODI_TYPE_F16, 4096), 8192);
    assert_int_equal(codi_row_size(CODI_TYPE_BF16, 7), 14);
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_0, 4096), 4096 / 32 * 18);
    assert_int_equal(codi_row_size(CODI_TYPE_Q8_0, 32), 34);
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_K, 4096), 16 * 144);
    assert_int_equal(codi_row_size(CODI_TYPE_Q6_K, 11008), 43 * 210);
    assert_int_equal(codi_row_size(CODI_TYPE_Q8_K, 256), 292);
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_0, 0), 0);
    /* Not a whole number of blocks. */
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_0, 33), 0);
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_K, 4000), 0);
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_K, 32), 0);
    /* Negative, and too big for size_t. */
    assert_int_equal(codi_row_size(CODI_TYPE_F32, -4), 0);
    assert_int_equal(codi_row_size(CODI_TYPE_Q4_K, INT64_MAX / 256 * 256),
                     (size_t)(INT64_MAX / 256) * 144);
    assert_int_equal(codi_row_size(CODI_TYPE_F32, INT64_MAX), 0);
}

/* ---- fp16 ---- */

/* Independent decoder: sign * 2^(e-15) * (1 + m/1024), or m * 2^-24. */
static float fp16_formula(uint16_t h) {
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    float v;
    if (e == 31)
        v = m ? NAN : INFINITY;
    else if (e == 0)
        v = ldexpf((float)m, -24);
    else
        v = ldexpf(1.0f + m / 1024.0f, e - 15);
    return s ? -v : v;
}

static void test_fp16_known(void **state) {
    (void)state;
    static const struct {
        float f;
        uint16_t h;
    } cases[] = {
        {0.0f, 0x0000},
        {1.0f, 0x3C00},
        {-2.0f, 0xC000},
        {0.5f, 0x3800},
        {65504.0f, 0x7BFF},         /* largest half */
        {65519.0f, 0x7BFF},         /* below the halfway point */
        {65520.0f, 0x7C00},         /* halfway, odd: rounds up to inf */
        {1e10f, 0x7C00},
        {-1e10f, 0xFC00},
        {0x1p-14f, 0x0400},         /* smallest normal */
        {0x1p-24f, 0x0001},         /* smallest subnormal */
        {-0x1p-24f, 0x8001},
        {1023 * 0x1p-24f, 0x03FF},  /* largest subnormal */
        {1023.5f * 0x1p-24f, 0x0400}, /* tie -> even: the smallest normal */
        {0x1p-25f, 0x0000},         /* tie between 0 and 2^-24 -> 0 */
        {-0x1p-25f, 0x8000},
        {0x1.000002p-25f, 0x0001},  /* just above the tie */
        {0.75f * 0x1p-24f, 0x0001},
        {1.5f * 0x1p-24f, 0x0002},  /* tie 1|2 -> 2 */
        {2.5f * 0x1p-24f, 0x0002},  /* tie 2|3 -> 2 */
        {1e-10f, 0x0000},
        {1.0f + 0x1p-11f, 0x3C00},  /* tie -> even */
        {1.0f + 3 * 0x1p-11f, 0x3C02},
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3C01},
        {2047.5f, 0x6800},          /* 2047.5 = tie 2047|2048 -> 2048 */
        {0.1f, 0x2E66},
        {-3.14159265f, 0xC248},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = codi_fp32_to_fp16(cases[i].f);
        if (h != cases[i].h)
            fail_msg("fp32_to_fp16(%a) = 0x%04x, expected 0x%04x",
                     (double)cases[i].f, h, cases[i].h);
    }
    assert_int_equal(codi_fp32_to_fp16(-0.0f), 0x8000);
    assert_int_equal(codi_fp32_to_fp16(INFINITY), 0x7C00);
    assert_int_equal(codi_fp32_to_fp16(-INFINITY), 0xFC00);
    assert_int_equal(codi_fp32_to_fp16(FLT_MAX), 0x7C00);
    assert_int_equal(codi_fp32_to_fp16(FLT_TRUE_MIN), 0x0000);
    /* NaNs stay NaN (quiet), sign kept. */
    static const uint32_t nans[] = {0x7FC00000u, 0x7F800001u, 0xFFC00000u,
                                    0x7FFFFFFFu, 0x7F802000u};
    for (size_t i = 0; i < sizeof nans / sizeof nans[0]; i++) {
        uint16_t h = codi_fp32_to_fp16(u2f(nans[i]));
        assert_int_equal(h & 0x7C00, 0x7C00);
        assert_true(h & 0x0200); /* quiet bit */
        assert_int_equal(h >> 15, nans[i] >> 31);
        assert_true(isnan(codi_fp16_to_fp32(h)));
    }
    assert_true(isinf(codi_fp16_to_fp32(0x7C00)));
    assert_true(codi_fp16_to_fp32(0xFC00) < 0);
    assert_true(isnan(codi_fp16_to_fp32(0x7C01)));
    assert_true(signbit(codi_fp16_to_fp32(0x8000)));
}

/* Every half: decoding matches the formula, and re-encoding gives the same
 * bits back (NaNs: stay NaN). */
static void test_fp16_exhaustive(void **state) {
    (void)state;
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float f = codi_fp16_to_fp32((uint16_t)h);
        float g = fp16_formula((uint16_t)h);
        if (isnan(g)) {
            assert_true(isnan(f));
            assert_true(isnan(codi_fp16_to_fp32(codi_fp32_to_fp16(f))));
            continue;
        }
        if (f2u(f) != f2u(g))
            fail_msg("fp16_to_fp32(0x%04x) = %a, expected %a", h, (double)f,
                     (double)g);
        if (codi_fp32_to_fp16(f) != h)
            fail_msg("round trip of 0x%04x gave 0x%04x", h,
                     codi_fp32_to_fp16(f));
    }
}

/* f32 -> f16 picks the nearest half, ties to even mantissa: checked against
 * both neighbours for random floats over the whole half range and for
 * every exact midpoint between adjacent halves. */
static void check_nearest(float f) {
    uint16_t h = codi_fp32_to_fp16(f);
    uint16_t mag = h & 0x7FFF;
    assert_true(mag <= 0x7C00);
    double x = fabs((double)f);
    if (mag == 0x7C00) { /* inf: only above the last midpoint */
        assert_true(x >= 65520.0);
        return;
    }
    double v = fabs((double)codi_fp16_to_fp32(h));
    double dv = fabs(x - v);
    if (mag < 0x7BFF) {
        double up = (double)codi_fp16_to_fp32((uint16_t)(mag + 1));
        assert_true(dv <= fabs(up - x));
        if (dv == fabs(up - x) && dv > 0)
            assert_int_equal(mag & 1, 0);
    } else {
        assert_true(x < 65520.0);
    }
    if (mag > 0) {
        double down = (double)codi_fp16_to_fp32((uint16_t)(mag - 1));
        assert_true(dv <= fabs(x - down));
        if (dv == fabs(x - down) && dv > 0)
            assert_int_equal(mag & 1, 0);
    }
    assert_int_equal(h >> 15, signbit(f) ? 1 : 0);
}

static void test_fp16_rounding(void **state) {
    (void)state;
    for (int i = 0; i < 200000; i++) {
        uint64_t r = rnd_u64();
        int e = (int)(r % 43) - 27; /* 2^-27 .. 2^15 */
        uint32_t bits = ((uint32_t)(e + 127) << 23) |
                        (uint32_t)((r >> 8) & 0x7FFFFF) |
                        ((uint32_t)(r >> 40) & 0x80000000u);
        check_nearest(u2f(bits));
    }
    for (uint32_t h = 0; h < 0x7BFF; h++) { /* midpoints, both signs */
        double a = codi_fp16_to_fp32((uint16_t)h);
        double b = codi_fp16_to_fp32((uint16_t)(h + 1));
        float mid = (float)((a + b) / 2);
        assert_true((double)mid == (a + b) / 2); /* exact in float */
        uint16_t want = (uint16_t)((h & 1) ? h + 1 : h);
        assert_int_equal(codi_fp32_to_fp16(mid), want);
        assert_int_equal(codi_fp32_to_fp16(-mid), want | 0x8000);
    }
}

/* ---- bf16 ---- */

static void test_bf16(void **state) {
    (void)state;
    static const struct {
        uint32_t f;
        uint16_t h;
    } cases[] = {
        {0x3F800000u, 0x3F80},           /* 1 */
        {0x3F808000u, 0x3F80},           /* 1 + 2^-8: tie -> even */
        {0x3F818000u, 0x3F82},           /* 1 + 3*2^-8: tie -> even */
        {0x3F808001u, 0x3F81},           /* just above the tie */
        {0xC0200000u, 0xC020},           /* -2.5 */
        {0x7F800000u, 0x7F80},           /* inf */
        {0xFF800000u, 0xFF80},           /* -inf */
        {0x7F7FFFFFu, 0x7F80},           /* FLT_MAX rounds to inf */
        {0x7F7F7FFFu, 0x7F7F},
        {0x00010000u, 0x0001},           /* subnormals are kept */
        {0x00008000u, 0x0000},           /* tie -> even (0) */
        {0x00018000u, 0x0002},           /* tie -> even (2) */
        {0x80000000u, 0x8000},           /* -0 */
        {0x7FC00000u, 0x7FC0},           /* quiet nan */
        {0x7F800001u, 0x7FC0},           /* signalling nan made quiet */
        {0x7F810000u, 0x7FC1},
        {0xFFC00000u, 0xFFC0},
        {0x7FFFFFFFu, 0x7FFF},           /* no carry out of a nan */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = codi_fp32_to_bf16(u2f(cases[i].f));
        if (h != cases[i].h)
            fail_msg("fp32_to_bf16(0x%08x) = 0x%04x, expected 0x%04x",
                     cases[i].f, h, cases[i].h);
    }
    for (uint32_t h = 0; h <= 0xFFFF; h++) {
        float f = codi_bf16_to_fp32((uint16_t)h);
        assert_int_equal(f2u(f), h << 16);
        if (!isnan(f))
            assert_int_equal(codi_fp32_to_bf16(f), h);
    }
}

/* ---- hand-built blocks ---- */

static void test_hand_float(void **state) {
    (void)state;
    uint8_t b[8];
    float y;
    const codi_type_traits *t32 = codi_type_get(CODI_TYPE_F32);
    put_u32(b, 0xC0490FDBu); /* -pi */
    t32->to_float(b, &y, 1);
    assert_true(y == -3.14159265f);

    static const struct {
        uint16_t h;
        float f;
    } f16[] = {{0x3C00, 1.0f}, {0xC000, -2.0f}, {0x7BFF, 65504.0f},
               {0x0001, 0x1p-24f}, {0x03FF, 1023 * 0x1p-24f},
               {0x0400, 0x1p-14f}, {0x3555, 0.333251953125f},
               {0x7C00, INFINITY}, {0xFC00, -INFINITY}};
    for (size_t i = 0; i < sizeof f16 / sizeof f16[0]; i++) {
        put_u16(b, f16[i].h);
        codi_type_get(CODI_TYPE_F16)->to_float(b, &y, 1);
        assert_true(y == f16[i].f);
    }
    static const struct {
        uint16_t h;
        float f;
    } bf16[] = {{0x3F80, 1.0f}, {0xC040, -3.0f}, {0x7F80, INFINITY},
                {0x0001, 0x1p-133f}, {0x4049, 3.140625f}};
    for (size_t i = 0; i < sizeof bf16 / sizeof bf16[0]; i++) {
        put_u16(b, bf16[i].h);
        codi_type_get(CODI_TYPE_BF16)->to_float(b, &y, 1);
        assert_true(y == bf16[i].f);
    }
    /* Dots: [1, -2] . [0.5, 3] = -5.5 */
    uint16_t xh[2] = {0x3C00, 0xC000}, yh[2] = {0x3800, 0x4200};
    float s;
    codi_type_get(CODI_TYPE_F16)->vec_dot(2, &s, xh, yh);
    assert_true(s == -5.5f);
    uint16_t xb[2] = {0x3F80, 0xC000}, yb[2] = {0x3F00, 0x4040};
    codi_type_get(CODI_TYPE_BF16)->vec_dot(2, &s, xb, yb);
    assert_true(s == -5.5f);
    float xf[2] = {1.0f, -2.0f}, yf[2] = {0.5f, 3.0f};
    t32->vec_dot(2, &s, xf, yf);
    assert_true(s == -5.5f);
}

static void test_hand_q4_0(void **state) {
    (void)state;
    uint8_t b[18] = {0};
    put_u16(b, H_0_5);                       /* d = 0.5 */
    for (int j = 0; j < 16; j++)
        b[2 + j] = (uint8_t)(j | ((15 - j) << 4));
    /* low nibble j -> (j - 8) * 0.5; high nibble 15-j -> (7 - j) * 0.5 */
    static const float exp[32] = {
        -4, -3.5, -3, -2.5, -2, -1.5, -1, -0.5, 0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5,
        3.5, 3, 2.5, 2, 1.5, 1, 0.5, 0, -0.5, -1, -1.5, -2, -2.5, -3, -3.5, -4};
    check_dequant(CODI_TYPE_Q4_0, b, exp);
    check_dot_with_ones(CODI_TYPE_Q4_0, b, -8.0f);
}

static void test_hand_q4_1(void **state) {
    (void)state;
    uint8_t b[20] = {0};
    put_u16(b, H_1);      /* d = 1 */
    put_u16(b + 2, H_M2); /* m = -2 */
    b[4 + 0] = 0x21;      /* w0 = 1 - 2, w16 = 2 - 2 */
    b[4 + 15] = 0xF0;     /* w15 = 0 - 2, w31 = 15 - 2 */
    float exp[32];
    fill(exp, 0, 32, -2.0f); /* q = 0 */
    exp[0] = -1;
    exp[16] = 0;
    exp[15] = -2;
    exp[31] = 13;
    check_dequant(CODI_TYPE_Q4_1, b, exp);
    check_dot_with_ones(CODI_TYPE_Q4_1, b, -46.0f);
}

static void test_hand_q5_0(void **state) {
    (void)state;
    uint8_t b[22] = {0};
    put_u16(b, H_1);
    put_u32(b + 2, 0x80010001u); /* 5th bit of w0, w16, w31 */
    b[6 + 0] = 0x3F;             /* w0 = 15|16 - 16, w16 = 3|16 - 16 */
    float exp[32];
    fill(exp, 0, 32, -16.0f); /* q = 0 */
    exp[0] = 15;
    exp[16] = 3;
    exp[31] = 0; /* q = 16 */
    check_dequant(CODI_TYPE_Q5_0, b, exp);
    check_dot_with_ones(CODI_TYPE_Q5_0, b, -446.0f);
}

static void test_hand_q5_1(void **state) {
    (void)state;
    uint8_t b[24] = {0};
    put_u16(b, H_0_5);      /* d = 0.5 */
    put_u16(b + 2, H_1);    /* m = 1 */
    put_u32(b + 4, 0x2u);   /* 5th bit of w1 */
    b[8 + 1] = 0x5A;        /* w1 = (10|16) * .5 + 1, w17 = 5 * .5 + 1 */
    float exp[32];
    fill(exp, 0, 32, 1.0f);
    exp[1] = 14;
    exp[17] = 3.5f;
    check_dequant(CODI_TYPE_Q5_1, b, exp);
    check_dot_with_ones(CODI_TYPE_Q5_1, b, 47.5f);
}

static void test_hand_q8_0(void **state) {
    (void)state;
    uint8_t b[34] = {0};
    put_u16(b, H_0_25);
    b[2] = 0x80; /* -128 * 0.25 */
    b[3] = 0x7F; /* 127 * 0.25 */
    b[4] = 0xFF; /* -1 * 0.25 */
    float exp[32] = {-32, 31.75f, -0.25f};
    check_dequant(CODI_TYPE_Q8_0, b, exp);
    check_dot_with_ones(CODI_TYPE_Q8_0, b, -0.5f);
}

static void test_hand_q8_1(void **state) {
    (void)state;
    uint8_t b[36] = {0};
    put_u16(b, H_1);
    put_u16(b + 2, 0xDC00); /* s = -256, not used by dequantize */
    float exp[32];
    for (int i = 0; i < 32; i++) {
        b[4 + i] = (uint8_t)(int8_t)(i - 16);
        exp[i] = (float)(i - 16);
    }
    check_dequant(CODI_TYPE_Q8_1, b, exp);
}

static void test_hand_q2_K(void **state) {
    (void)state;
    /* scales[16] @0, qs[64] @16, d @80, dmin @82 */
    uint8_t b[84] = {0};
    put_u16(b + 80, H_1);   /* d = 1 */
    put_u16(b + 82, H_0_5); /* dmin = 0.5 */
    b[0] = 0x21;  /* sub 0 (w 0..15):    1*q - 0.5*2  */
    b[1] = 0x03;  /* sub 1 (w 16..31):   3*q          */
    b[2] = 0x12;  /* sub 2 (w 32..47):   2*q - 0.5    */
    b[4] = 0x0F;  /* sub 4 (w 64..79):  15*q          */
    b[6] = 0xF0;  /* sub 6 (w 96..111):  0*q - 7.5    */
    b[8] = 0x11;  /* sub 8 (w 128..143): q - 0.5      */
    b[15] = 0x44; /* sub 15 (w 240..255): 4*q - 2     */
    /* qs byte l of each 32-byte half holds w[l], w[l+32], w[l+64], w[l+96]
     * in bits 0-1, 2-3, 4-5, 6-7. */
    b[16 + 0] = 0xE4;  /* w0 = 0, w32 = 1, w64 = 2, w96 = 3 */
    b[16 + 16] = 0x03; /* w16 = 3 */
    b[16 + 32] = 0x02; /* w128 = 2 */
    b[16 + 63] = 0xC0; /* w255 = 3 */
    float exp[256] = {0};
    fill(exp, 0, 16, -1.0f);
    exp[16] = 9;
    fill(exp, 32, 48, -0.5f);
    exp[32] = 1.5f;
    exp[64] = 30;
    fill(exp, 96, 112, -7.5f);
    fill(exp, 128, 144, -0.5f);
    exp[128] = 1.5f;
    fill(exp, 240, 256, -2.0f);
    exp[255] = 10;
    check_dequant(CODI_TYPE_Q2_K, b, exp);
    check_dot_with_ones(CODI_TYPE_Q2_K, b, -129.0f);
}

static void test_hand_q3_K(void **state) {
    (void)state;
    /* hmask[32] @0, qs[64] @32, scales[12] @96, d @108 */
    uint8_t b[110] = {0};
    put_u16(b + 108, H_1);
    /* 6-bit scales, stored +32: low 4 bits of scale j in byte j (j < 8) or
     * the high nibble of byte j-8; top 2 bits in byte 8 + j%4 at bit
     * 2*(j/4). 0xAA in bytes 8..10 makes every other scale 32 (= 0). */
    b[96 + 0] = 0x01;  /* scale 0  = 33 -> +1 */
    b[96 + 5] = 0x08;  /* scale 5  = 40 -> +8 */
    b[96 + 7] = 0xE0;  /* scale 15 low bits 0xE */
    b[96 + 8] = 0xAA;
    b[96 + 9] = 0xAA;
    b[96 + 10] = 0xAA;
    b[96 + 11] = 0x6A; /* scale 15 top bits 01: 30 -> -2 */
    /* q = 2-bit value - (high bit clear ? 4 : 0) */
    b[32 + 0] = 0x03;  /* w0: 3 */
    b[0] = 0x01;       /*     with its high bit set */
    b[32 + 16] = 0x20; /* w80 (sub 5, shift 4): 2 */
    b[16] = 0x04;      /*     high bit set (bit 2) */
    b[32 + 63] = 0x40; /* w255 (second half, shift 6): 1 */
    b[31] = 0x80;      /*     high bit set (bit 7) */
    float exp[256] = {0}; /* scale 0 elsewhere */
    fill(exp, 0, 16, -4.0f); /* 1 * (0 - 4) */
    exp[0] = 3;
    fill(exp, 80, 96, -32.0f); /* 8 * (0 - 4) */
    exp[80] = 16;
    fill(exp, 240, 256, 8.0f); /* -2 * (0 - 4) */
    exp[255] = -2;
    check_dequant(CODI_TYPE_Q3_K, b, exp);
    check_dot_with_ones(CODI_TYPE_Q3_K, b, -403.0f);
}

static void test_hand_q4_K(void **state) {
    (void)state;
    /* d @0, dmin @2, scales[12] @4, qs[128] @16 */
    uint8_t b[144] = {0};
    put_u16(b, H_1);
    put_u16(b + 2, H_0_5);
    /* sub 0: sc 2 (byte 0), min 4 (byte 4) -> 2q - 2 */
    b[4 + 0] = 2;
    b[4 + 4] = 4;
    /* sub 7: sc 21 = 0x15 (low 4 in byte 11, top 2 in byte 3 bits 6-7),
     *        min 35 = 0x23 (high nibble of byte 11, top 2 in byte 7) */
    b[4 + 3] = 0x40;
    b[4 + 7] = 0x80;
    b[4 + 11] = 0x35;
    /* qs byte l of 32-byte chunk c: w[64c + l] low nibble, w[64c+32+l] high */
    b[16 + 0] = 0x0F;   /* w0 = 15 */
    b[16 + 127] = 0xA0; /* w255 = 10 */
    float exp[256] = {0};
    fill(exp, 0, 32, -2.0f);
    exp[0] = 28;
    fill(exp, 224, 256, -17.5f);
    exp[255] = 192.5f; /* 21 * 10 - 0.5 * 35 */
    check_dequant(CODI_TYPE_Q4_K, b, exp);
    check_dot_with_ones(CODI_TYPE_Q4_K, b, -384.0f);
}

static void test_hand_q5_K(void **state) {
    (void)state;
    /* d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48 */
    uint8_t b[176] = {0};
    put_u16(b, H_0_5);
    put_u16(b + 2, H_1);
    b[4 + 0] = 1;    /* sub 0: sc 1, min 3 -> 0.5q - 3 */
    b[4 + 4] = 3;
    b[4 + 9] = 0x04; /* sub 5: sc 4, min 0 -> 2q */
    /* qh bit 2c (2c+1) of byte l: 5th bit of w[64c + l] (w[64c+32+l]) */
    b[16 + 0] = 0x01;  /* w0 += 16 */
    b[16 + 1] = 0x01;  /* w1 += 16 */
    b[16 + 31] = 0x20; /* w191 += 16 (chunk 2, high) */
    b[48 + 0] = 0x01;  /* w0 low 4 bits = 1 */
    b[48 + 95] = 0xF0; /* w191 low 4 bits = 15 */
    float exp[256] = {0};
    fill(exp, 0, 32, -3.0f);
    exp[0] = 5.5f; /* 0.5 * 17 - 3 */
    exp[1] = 5.0f; /* 0.5 * 16 - 3 */
    exp[191] = 62; /* 2 * 31 */
    check_dequant(CODI_TYPE_Q5_K, b, exp);
    check_dot_with_ones(CODI_TYPE_Q5_K, b, -17.5f);
}

static void test_hand_q6_K(void **state) {
    (void)state;
    /* ql[128] @0, qh[64] @128, scales[16] @192, d @208 */
    uint8_t b[210] = {0};
    put_u16(b + 208, H_0_25);
    b[192 + 0] = 2;
    b[192 + 15] = 0xFD; /* -3 */
    /* q = (4 low bits | 2 high bits << 4) - 32 */
    b[0] = 0x05;        /* w0: low 5 */
    b[128 + 0] = 0x03;  /*     high 3 -> 53 - 32 = 21 */
    b[127] = 0x70;      /* w255: low 7 (high nibble of ql[127]) */
    b[128 + 63] = 0x40; /*       high 1 (bits 6-7 of qh[63]) -> -9 */
    float exp[256] = {0};
    fill(exp, 0, 16, -16.0f); /* 0.25 * 2 * -32 */
    exp[0] = 10.5f;           /* 0.25 * 2 * 21 */
    fill(exp, 240, 256, 24.0f); /* 0.25 * -3 * -32 */
    exp[255] = 6.75f;           /* 0.25 * -3 * -9 */
    check_dequant(CODI_TYPE_Q6_K, b, exp);
    check_dot_with_ones(CODI_TYPE_Q6_K, b, 137.25f);
}

static void test_hand_q8_K(void **state) {
    (void)state;
    uint8_t b[292] = {0};
    put_u32(b, f2u(0.5f));
    float exp[256];
    for (int i = 0; i < 256; i++) {
        b[4 + i] = (uint8_t)(int8_t)(i - 128);
        exp[i] = (float)(i - 128) * 0.5f;
    }
    check_dequant(CODI_TYPE_Q8_K, b, exp);
}

/* Quantizers on inputs whose result is known exactly. */
/* Blocks of tiny (denormal) values: 1/d overflows; the quantizers must not
 * multiply by inf (UB in the float-to-int conversion, caught by UBSan) and
 * must dequantize to finite values near zero. */
static void test_quantize_tiny(void **state) {
    (void)state;
    typedef void (*qfn)(const float *, void *, int64_t);
    typedef void (*dfn)(const void *, float *, int64_t);
    const qfn q[] = {codi_quantize_row_q4_0_ref, codi_quantize_row_q4_1_ref, codi_quantize_row_q5_0_ref,
                     codi_quantize_row_q5_1_ref, codi_quantize_row_q8_0_ref, codi_quantize_row_q8_1_ref};
    const dfn d[] = {codi_dequantize_row_q4_0_ref, codi_dequantize_row_q4_1_ref, codi_dequantize_row_q5_0_ref,
                     codi_dequantize_row_q5_1_ref, codi_dequantize_row_q8_0_ref, codi_dequantize_row_q8_1_ref};
    const float tiny[] = {1e-40f, 3e-39f, 1e-45f};
    for (size_t t = 0; t < sizeof(tiny) / sizeof(tiny[0]); t++) {
        float x[32], y[32];
        for (int i = 0; i < 32; i++)
            x[i] = (i % 3 == 0 ? -1.0f : 1.0f) * tiny[t] * (float)(i % 5);
        for (size_t k = 0; k < sizeof(q) / sizeof(q[0]); k++) {
            unsigned char blk[64];
            q[k](x, blk, 32);
            d[k](blk, y, 32);
            for (int i = 0; i < 32; i++)
                assert_true(fabsf(y[i]) < 1e-30f);
        }
    }
}

static void test_hand_quantize(void **state) {
    (void)state;
    float x[256];
    /* Q8_0: amax 12.7 -> d = 0.1, q = round(x / 0.1) */
    memset(x, 0, sizeof x);
    x[0] = 12.7f;
    x[1] = -6.35f;
    x[2] = 0.05f;
    codi_block_q8_0 q8;
    codi_quantize_row_q8_0_ref(x, &q8, 32);
    assert_int_equal(q8.d, codi_fp32_to_fp16(12.7f / 127));
    assert_int_equal(q8.qs[0], 127);
    assert_int_equal(q8.qs[1], -64); /* -63.5 rounds away from zero */
    assert_int_equal(q8.qs[2], 1);   /* 0.5 rounds away from zero */
    assert_int_equal(q8.qs[3], 0);

    /* Q4_0: the largest magnitude (-4) becomes q = 0 with d = 0.5 */
    memset(x, 0, sizeof x);
    x[0] = -4.0f;
    x[1] = 4.0f;  /* 4 / 0.5 + 8.5 = 16.5 -> 16 -> clamped to 15 */
    x[17] = 1.0f; /* 1 / 0.5 + 8.5 = 10.5 -> q = 10 */
    codi_block_q4_0 q4;
    codi_quantize_row_q4_0_ref(x, &q4, 32);
    assert_int_equal(q4.d, H_0_5);
    assert_int_equal(q4.qs[0], 0x80);      /* w0: 0, w16: 8 */
    assert_int_equal(q4.qs[1], 0xA0 | 15); /* w1: 15, w17: 10 */

    /* Q8_1: s is d * sum(q) */
    for (int i = 0; i < 32; i++)
        x[i] = (float)(i - 5);
    codi_block_q8_1 q81;
    codi_quantize_row_q8_1_ref(x, &q81, 32);
    int sum = 0;
    for (int i = 0; i < 32; i++)
        sum += q81.qs[i];
    assert_int_equal(q81.qs[31], 127);
    assert_int_equal(q81.s, codi_fp32_to_fp16(sum * (26.0f / 127)));

    /* Q8_K: the largest magnitude maps to -127 (scale sign follows it),
     * bsums are the sums of 16 quants. */
    for (int i = 0; i < 256; i++)
        x[i] = (float)((i % 7) - 3) * 0.25f;
    x[100] = 2.0f;
    codi_block_q8_K qk;
    codi_quantize_row_q8_K_ref(x, &qk, 256);
    assert_true(qk.d == 1 / (-127.f / 2.0f));
    assert_int_equal(qk.qs[100], -127);
    for (int j = 0; j < 16; j++) {
        int s = 0;
        for (int i = 0; i < 16; i++)
            s += qk.qs[16 * j + i];
        assert_int_equal(qk.bsums[j], s);
    }
    /* all zero: everything zero, bsums included */
    memset(x, 0, sizeof x);
    memset(&qk, 0x55, sizeof qk);
    codi_quantize_row_q8_K_ref(x, &qk, 256);
    assert_true(qk.d == 0.0f);
    for (int j = 0; j < 16; j++)
        assert_int_equal(qk.bsums[j], 0);
}

/* ---- fixtures from tools/gen_quant_fixtures.py ---- */

typedef struct fixture {
    uint32_t type, bs, ts, n_deq, n_q;
    uint8_t *deq_raw;
    float *deq_exp;
    float *q_in;
    uint8_t *q_exp;
    uint8_t *buf;
} fixture;

static uint32_t rd32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void load_fixture(const char *name, fixture *fx) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/quants/%s.bin",
             CODI_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s (run tools/gen_quant_fixtures.py)", path);
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    assert_true(size >= 28);
    fx->buf = malloc((size_t)size);
    assert_non_null(fx->buf);
    assert_int_equal(fread(fx->buf, 1, (size_t)size, f), (size_t)size);
    fclose(f);
    assert_memory_equal(fx->buf, "CQFX", 4);
    assert_int_equal(rd32(fx->buf + 4), 1); /* version */
    fx->type = rd32(fx->buf + 8);
    fx->bs = rd32(fx->buf + 12);
    fx->ts = rd32(fx->buf + 16);
    fx->n_deq = rd32(fx->buf + 20);
    fx->n_q = rd32(fx->buf + 24);
    size_t need = 28 + (size_t)fx->n_deq * (fx->ts + fx->bs * 4) +
                  (size_t)fx->n_q * (fx->ts + fx->bs * 4);
    assert_int_equal((size_t)size, need);
    uint8_t *p = fx->buf + 28;
    fx->deq_raw = p;
    p += (size_t)fx->n_deq * fx->ts;
    fx->deq_exp = malloc((size_t)fx->n_deq * fx->bs * sizeof(float));
    memcpy(fx->deq_exp, p, (size_t)fx->n_deq * fx->bs * sizeof(float));
    p += (size_t)fx->n_deq * fx->bs * 4;
    fx->q_in = malloc((size_t)fx->n_q * fx->bs * sizeof(float) + 1);
    memcpy(fx->q_in, p, (size_t)fx->n_q * fx->bs * sizeof(float));
    p += (size_t)fx->n_q * fx->bs * 4;
    fx->q_exp = p;
}

static void free_fixture(fixture *fx) {
    free(fx->buf);
    free(fx->deq_exp);
    free(fx->q_in);
}

static void test_fixture(void **state) {
    const int type = (int)(intptr_t)*state;
    const codi_type_traits *t = codi_type_get(type);
    assert_non_null(t);
    char name[16];
    snprintf(name, sizeof name, "%s", t->name);
    for (char *c = name; *c; c++)
        if (*c >= 'A' && *c <= 'Z')
            *c = (char)(*c - 'A' + 'a');

    fixture fx;
    load_fixture(name, &fx);
    assert_int_equal(fx.type, type);
    assert_int_equal(fx.bs, t->blck_size);
    assert_int_equal(fx.ts, t->type_size);
    assert_true(fx.n_deq > 0);

    /* Dequantize: must equal gguf-py's values exactly. */
    const int64_t n = (int64_t)fx.n_deq * fx.bs;
    float *y = malloc((size_t)n * sizeof(float));
    t->to_float(fx.deq_raw, y, n);
    for (int64_t i = 0; i < n; i++) {
        if (y[i] != fx.deq_exp[i] && !(isnan(y[i]) && isnan(fx.deq_exp[i])))
            fail_msg("%s dequantize element %d (block %d): got %.9g, "
                     "expected %.9g",
                     t->name, (int)i, (int)(i / fx.bs), (double)y[i],
                     (double)fx.deq_exp[i]);
    }
    free(y);

    /* Quantize: must reproduce gguf-py's (= ggml's reference) bytes. */
    if (fx.n_q) {
        const int64_t nq = (int64_t)fx.n_q * fx.bs;
        uint8_t *q = malloc((size_t)fx.n_q * fx.ts);
        t->from_float(fx.q_in, q, nq);
        for (size_t i = 0; i < (size_t)fx.n_q * fx.ts; i++) {
            if (q[i] != fx.q_exp[i])
                fail_msg("%s quantize byte %d (block %d): got 0x%02x, "
                         "expected 0x%02x",
                         t->name, (int)i, (int)(i / fx.ts), q[i],
                         fx.q_exp[i]);
        }
        free(q);
    }
    free_fixture(&fx);
}

/* ---- random data: round trip and dot products ---- */

static void fill_gauss(float *x, int64_t n, float scale) {
    for (int64_t i = 0; i < n; i++)
        x[i] = rnd_gauss() * scale;
}

/* Normalized RMS error of quantize -> dequantize. */
static double round_trip_nrmse(int type, const float *x, int64_t n) {
    const codi_type_traits *t = codi_type_get(type);
    void *q = malloc(codi_row_size(type, n));
    float *y = malloc((size_t)n * sizeof(float));
    t->from_float(x, q, n);
    t->to_float(q, y, n);
    double num = 0, den = 0;
    for (int64_t i = 0; i < n; i++) {
        num += ((double)x[i] - y[i]) * ((double)x[i] - y[i]);
        den += (double)x[i] * x[i];
    }
    free(q);
    free(y);
    return sqrt(num / den);
}

static const struct {
    int type;
    double max_nrmse; /* quantize -> dequantize, Gaussian data */
} round_trip_bounds[] = {
    {CODI_TYPE_F32, 0.0},      {CODI_TYPE_F16, 3.0e-4},
    {CODI_TYPE_BF16, 2.5e-3},  {CODI_TYPE_Q4_0, 0.11},
    {CODI_TYPE_Q4_1, 0.10},    {CODI_TYPE_Q5_0, 0.055},
    {CODI_TYPE_Q5_1, 0.048},   {CODI_TYPE_Q8_0, 0.007},
    {CODI_TYPE_Q8_1, 0.007},   {CODI_TYPE_Q2_K, 0.36},
    {CODI_TYPE_Q3_K, 0.19},    {CODI_TYPE_Q4_K, 0.09},
    {CODI_TYPE_Q5_K, 0.046},   {CODI_TYPE_Q6_K, 0.026},
    {CODI_TYPE_Q8_K, 0.009},
};

static void test_round_trip(void **state) {
    (void)state;
    const int64_t n = 16 * CODI_QK_K;
    float *x = malloc((size_t)n * sizeof(float));
    const size_t n_types =
        sizeof round_trip_bounds / sizeof round_trip_bounds[0];
    for (size_t k = 0; k < n_types; k++) {
        const codi_type_traits *t = codi_type_get(round_trip_bounds[k].type);
        const float scales[] = {1.0f, 1e-3f, 300.0f};
        for (size_t s = 0; s < 3; s++) {
            fill_gauss(x, n, scales[s]);
            double e = round_trip_nrmse(round_trip_bounds[k].type, x, n);
            if (!(e <= round_trip_bounds[k].max_nrmse))
                fail_msg("%s round trip nrmse %.5f > %.5f (scale %g)", t->name,
                         e, round_trip_bounds[k].max_nrmse, (double)scales[s]);
            if (s == 0)
                print_message("  %-5s nrmse %.5f (bound %.5f)\n", t->name, e,
                              round_trip_bounds[k].max_nrmse);
        }
        /* All zero in, all zero out, no NaN from a zero scale. */
        memset(x, 0, (size_t)n * sizeof(float));
        void *q = malloc(codi_row_size(round_trip_bounds[k].type, n));
        float *y = malloc((size_t)n * sizeof(float));
        t->from_float(x, q, n);
        t->to_float(q, y, n);
        for (int64_t i = 0; i < n; i++)
            if (y[i] != 0.0f)
                fail_msg("%s: zeros came back as %g at %d", t->name,
                         (double)y[i], (int)i);
        free(q);
        free(y);
    }
    free(x);
}

/* vec_dot(x, y) against the double-precision dot of dequantized x and y.
 * The integer parts are exact, so only float rounding of the block sums
 * differs; Q8_1's s = d * sum(q) is rounded to half, which adds up to
 * |m| * |s| * 2^-11 per block for Q4_1/Q5_1. */
static void check_vec_dot(int type, int64_t n) {
    const codi_type_traits *t = codi_type_get(type);
    const codi_type_traits *ty = codi_type_get(t->vec_dot_type);
    float *a = malloc((size_t)n * sizeof(float));
    float *b = malloc((size_t)n * sizeof(float));
    float *ad = malloc((size_t)n * sizeof(float));
    float *bd = malloc((size_t)n * sizeof(float));
    void *qa = malloc(codi_row_size(type, n));
    void *qb = malloc(codi_row_size(t->vec_dot_type, n));
    fill_gauss(a, n, 0.5f);
    fill_gauss(b, n, 2.0f);
    a[n / 2] += 1.5f; /* offsets, so the _1 types' m terms matter */
    for (int64_t i = 0; i < n; i += 7)
        b[i] += 1.0f;
    t->from_float(a, qa, n);
    ty->from_float(b, qb, n);
    t->to_float(qa, ad, n);
    ty->to_float(qb, bd, n);

    double ref = 0, mag = 0;
    for (int64_t i = 0; i < n; i++) {
        ref += (double)ad[i] * bd[i];
        mag += fabs((double)ad[i] * bd[i]);
    }
    double tol = 2e-6 * mag + 1e-30;
    if (t->vec_dot_type == CODI_TYPE_Q8_1) {
        /* ref uses d * q for y; vec_dot uses the stored s for the m term. */
        const codi_block_q8_1 *yb = qb;
        for (int64_t i = 0; i < n / CODI_QK; i++) {
            const uint16_t m = type == CODI_TYPE_Q4_1
                                   ? ((const codi_block_q4_1 *)qa)[i].m
                                   : ((const codi_block_q5_1 *)qa)[i].m;
            tol += fabs(codi_fp16_to_fp32(m)) *
                   fabs(codi_fp16_to_fp32(yb[i].s)) * 0x1p-10;
        }
    }
    float s = NAN;
    t->vec_dot(n, &s, qa, qb);
    if (!(fabs((double)s - ref) <= tol))
        fail_msg("%s vec_dot n=%d: got %.9g, expected %.9g (tol %.3g)",
                 t->name, (int)n, (double)s, ref, tol);
    free(a);
    free(b);
    free(ad);
    free(bd);
    free(qa);
    free(qb);
}

static void test_vec_dot(void **state) {
    (void)state;
    static const int types[] = {
        CODI_TYPE_F32,  CODI_TYPE_F16,  CODI_TYPE_BF16, CODI_TYPE_Q4_0,
        CODI_TYPE_Q4_1, CODI_TYPE_Q5_0, CODI_TYPE_Q5_1, CODI_TYPE_Q8_0,
        CODI_TYPE_Q2_K, CODI_TYPE_Q3_K, CODI_TYPE_Q4_K, CODI_TYPE_Q5_K,
        CODI_TYPE_Q6_K};
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const int64_t bs = codi_type_get(types[k])->blck_size;
        const int64_t lens[] = {bs, 3 * bs, 7 * bs, 4 * CODI_QK_K};
        for (int rep = 0; rep < 4; rep++)
            for (size_t l = 0; l < 4; l++)
                check_vec_dot(types[k], lens[l]);
    }
}

#define FIXTURE_TEST(T)                                                      \
    { "fixture_" #T, test_fixture, NULL, NULL, (void *)(intptr_t)CODI_TYPE_##T }

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_traits),
        cmocka_unit_test(test_unknown_types),
        cmocka_unit_test(test_row_size),
        cmocka_unit_test(test_fp16_known),
        cmocka_unit_test(test_fp16_exhaustive),
        cmocka_unit_test(test_fp16_rounding),
        cmocka_unit_test(test_bf16),
        cmocka_unit_test(test_hand_float),
        cmocka_unit_test(test_hand_q4_0),
        cmocka_unit_test(test_hand_q4_1),
        cmocka_unit_test(test_hand_q5_0),
        cmocka_unit_test(test_hand_q5_1),
        cmocka_unit_test(test_hand_q8_0),
        cmocka_unit_test(test_hand_q8_1),
        cmocka_unit_test(test_hand_q2_K),
        cmocka_unit_test(test_hand_q3_K),
        cmocka_unit_test(test_hand_q4_K),
        cmocka_unit_test(test_hand_q5_K),
        cmocka_unit_test(test_hand_q6_K),
        cmocka_unit_test(test_hand_q8_K),
        cmocka_unit_test(test_hand_quantize),
        cmocka_unit_test(test_quantize_tiny),
        FIXTURE_TEST(F32),
        FIXTURE_TEST(F16),
        FIXTURE_TEST(BF16),
        FIXTURE_TEST(Q4_0),
        FIXTURE_TEST(Q4_1),
        FIXTURE_TEST(Q5_0),
        FIXTURE_TEST(Q5_1),
        FIXTURE_TEST(Q8_0),
        FIXTURE_TEST(Q8_1),
        FIXTURE_TEST(Q2_K),
        FIXTURE_TEST(Q3_K),
        FIXTURE_TEST(Q4_K),
        FIXTURE_TEST(Q5_K),
        FIXTURE_TEST(Q6_K),
        FIXTURE_TEST(Q8_K),
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_vec_dot),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
