/* Type traits table and scalar fp16 / bf16 conversions. */
#include "tensor/types.h"

#include <string.h>

#include "tensor/blocks.h"
#include "tensor/quants.h"
#include "tensor/quant_codi.h"

/* ---- fp16 / bf16 ---- */

static inline uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static inline float f32_from_bits(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

float codi_fp16_to_fp32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    if (exp == 0x1F) /* inf, nan (payload kept) */
        return f32_from_bits(sign | 0x7F800000u | (mant << 13));
    if (exp != 0)
        return f32_from_bits(sign | ((exp + 112) << 23) | (mant << 13));
    if (mant == 0)
        return f32_from_bits(sign);
    /* Subnormal half: mant * 2^-24, normal as a float. */
    int e = -14;
    while (!(mant & 0x400)) {
        mant <<= 1;
        e--;
    }
    return f32_from_bits(sign | ((uint32_t)(e + 127) << 23) |
                         ((mant & 0x3FF) << 13));
}

/* v >> shift rounded to nearest, ties to even (shift >= 1). */
static inline uint32_t shift_rne(uint32_t v, int shift) {
    uint32_t q = v >> shift;
    uint32_t rem = v & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return q;
}

uint16_t codi_fp32_to_fp16(float f) {
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) /* nan: quiet, top payload bits kept */
        return (uint16_t)(sign | 0x7E00 | ((ax >> 13) & 0x3FF));
    if (ax >= 0x477FF000u) /* >= 65520 rounds past 65504: inf */
        return (uint16_t)(sign | 0x7C00);
    if (ax >= 0x38800000u) { /* >= 2^-14: normal half */
        /* Rebias the exponent in place; a mantissa carry rolls into the
         * exponent, which is the correct result. */
        uint32_t v = ax - ((uint32_t)(127 - 15) << 23);
        return (uint16_t)(sign | shift_rne(v, 13));
    }
    if (ax <= 0x33000000u) /* <= 2^-25: ties to even gives 0 */
        return sign;
    /* Subnormal half: count units of 2^-24. */
    int e = (int)(ax >> 23) - 127; /* -25..-15 */
    uint32_t m = (ax & 0x7FFFFFu) | 0x800000u;
    return (uint16_t)(sign | shift_rne(m, -e - 1));
}

float codi_bf16_to_fp32(uint16_t h) {
    return f32_from_bits((uint32_t)h << 16);
}

uint16_t codi_fp32_to_bf16(float f) {
    uint32_t x = f32_bits(f);
    if ((x & 0x7FFFFFFFu) > 0x7F800000u) /* nan: force quiet */
        return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7FFFu + ((x >> 16) & 1)) >> 16);
}

/* ---- traits ---- */

static const codi_type_traits type_traits[CODI_TYPE_COUNT] = {
    [CODI_TYPE_F32] = {"F32", 1, sizeof(float), codi_dequantize_row_f32_ref,
                       codi_quantize_row_f32_ref, CODI_TYPE_F32,
                       codi_vec_dot_f32_ref},
    [CODI_TYPE_F16] = {"F16", 1, sizeof(uint16_t), codi_dequantize_row_f16_ref,
                       codi_quantize_row_f16_ref, CODI_TYPE_F16,
                       codi_vec_dot_f16_ref},
    [CODI_TYPE_BF16] = {"BF16", 1, sizeof(uint16_t),
                        codi_dequantize_row_bf16_ref,
                        codi_quantize_row_bf16_ref, CODI_TYPE_BF16,
                        codi_vec_dot_bf16_ref},
    [CODI_TYPE_Q4_0] = {"Q4_0", CODI_QK, sizeof(codi_block_q4_0),
                        codi_dequantize_row_q4_0_ref,
                        codi_quantize_row_q4_0_ref, CODI_TYPE_Q8_0,
                        codi_vec_dot_q4_0_q8_0_ref},
    [CODI_TYPE_Q4_1] = {"Q4_1", CODI_QK, sizeof(codi_block_q4_1),
                        codi_dequantize_row_q4_1_ref,
                        codi_quantize_row_q4_1_ref, CODI_TYPE_Q8_1,
                        codi_vec_dot_q4_1_q8_1_ref},
    [CODI_TYPE_Q5_0] = {"Q5_0", CODI_QK, sizeof(codi_block_q5_0),
                        codi_dequantize_row_q5_0_ref,
                        codi_quantize_row_q5_0_ref, CODI_TYPE_Q8_0,
                        codi_vec_dot_q5_0_q8_0_ref},
    [CODI_TYPE_Q5_1] = {"Q5_1", CODI_QK, sizeof(codi_block_q5_1),
                        codi_dequantize_row_q5_1_ref,
                        codi_quantize_row_q5_1_ref, CODI_TYPE_Q8_1,
                        codi_vec_dot_q5_1_q8_1_ref},
    [CODI_TYPE_Q8_0] = {"Q8_0", CODI_QK, sizeof(codi_block_q8_0),
                        codi_dequantize_row_q8_0_ref,
                        codi_quantize_row_q8_0_ref, CODI_TYPE_Q8_0,
                        codi_vec_dot_q8_0_q8_0_ref},
    /* Activation type: no dot product of its own. */
    [CODI_TYPE_Q8_1] = {"Q8_1", CODI_QK, sizeof(codi_block_q8_1),
                        codi_dequantize_row_q8_1_ref,
                        codi_quantize_row_q8_1_ref, CODI_TYPE_Q8_1, NULL},
    [CODI_TYPE_Q2_K] = {"Q2_K", CODI_QK_K, sizeof(codi_block_q2_K),
                        codi_dequantize_row_q2_K_ref,
                        codi_quantize_row_q2_K_ref, CODI_TYPE_Q8_K,
                        codi_vec_dot_q2_K_q8_K_ref},
    [CODI_TYPE_Q3_K] = {"Q3_K", CODI_QK_K, sizeof(codi_block_q3_K),
                        codi_dequantize_row_q3_K_ref,
                        codi_quantize_row_q3_K_ref, CODI_TYPE_Q8_K,
                        codi_vec_dot_q3_K_q8_K_ref},
    [CODI_TYPE_Q4_K] = {"Q4_K", CODI_QK_K, sizeof(codi_block_q4_K),
                        codi_dequantize_row_q4_K_ref,
                        codi_quantize_row_q4_K_ref, CODI_TYPE_Q8_K,
                        codi_vec_dot_q4_K_q8_K_ref},
    [CODI_TYPE_Q5_K] = {"Q5_K", CODI_QK_K, sizeof(codi_block_q5_K),
                        codi_dequantize_row_q5_K_ref,
                        codi_quantize_row_q5_K_ref, CODI_TYPE_Q8_K,
                        codi_vec_dot_q5_K_q8_K_ref},
    [CODI_TYPE_Q6_K] = {"Q6_K", CODI_QK_K, sizeof(codi_block_q6_K),
                        codi_dequantize_row_q6_K_ref,
                        codi_quantize_row_q6_K_ref, CODI_TYPE_Q8_K,
                        codi_vec_dot_q6_K_q8_K_ref},
    /* Activation type: no dot product of its own. */
    [CODI_TYPE_Q8_K] = {"Q8_K", CODI_QK_K, sizeof(codi_block_q8_K),
                        codi_dequantize_row_q8_K_ref,
                        codi_quantize_row_q8_K_ref, CODI_TYPE_Q8_K, NULL},
    /* Integer data (the output order of a mix matrix): stored, never
     * multiplied or converted. */
    [CODI_TYPE_I16] = {"I16", 1, 2, NULL, NULL, CODI_TYPE_I16, NULL},
    /* codi's own group-wise types (tensor/quant_codi.h) */
#define Q4G(G)                                                                   \
    [CODI_TYPE_Q4G##G] = {"Q4G" #G, G, CODI_Q4G_BYTES(G),                        \
                          codi_dequantize_row_q4g##G##_ref,                      \
                          codi_quantize_row_q4g##G##_ref, CODI_TYPE_Q8_1,        \
                          codi_vec_dot_q4g##G##_q8_1_ref}
#define Q8G(G)                                                                   \
    [CODI_TYPE_Q8G##G] = {"Q8G" #G, G, CODI_Q8G_BYTES(G),                        \
                          codi_dequantize_row_q8g##G##_ref,                      \
                          codi_quantize_row_q8g##G##_ref, CODI_TYPE_Q8_0,        \
                          codi_vec_dot_q8g##G##_q8_0_ref}
#define GQSA(G)                                                                  \
    [CODI_TYPE_GQSA##G] = {"GQSA" #G, G, CODI_GQSA_BYTES(G),                     \
                           codi_dequantize_row_gqsa##G##_ref,                    \
                           codi_quantize_row_gqsa##G##_ref, CODI_TYPE_Q8_1,      \
                           codi_vec_dot_gqsa##G##_q8_1_ref}
    Q4G(32), Q4G(64), Q4G(128), Q8G(32), Q8G(64), Q8G(128),
#define W4A8(G)                                                                  \
    [CODI_TYPE_W4A8_##G] = {"W4A8_" #G, G, CODI_W4A8_BYTES(G),                   \
                            codi_dequantize_row_w4a8_##G##_ref,                  \
                            codi_quantize_row_w4a8_##G##_ref, CODI_TYPE_A8,      \
                            codi_vec_dot_w4a8_##G##_a8_ref}
    GQSA(32), GQSA(64), GQSA(128),
    W4A8(32), W4A8(64), W4A8(128),
    [CODI_TYPE_A8] = {"A8", 32, sizeof(codi_block_a8), codi_dequantize_row_a8_ref, codi_quantize_row_a8_ref,
                      CODI_TYPE_A8, NULL},
#undef W4A8
#undef GQSA
#undef Q4G
#undef Q8G
};

const codi_type_traits *codi_type_get(int type) {
    if (type < 0 || type >= CODI_TYPE_COUNT)
        return NULL;
    const codi_type_traits *t = &type_traits[type];
    return t->name ? t : NULL;
}

const char *codi_type_name(int type) {
    const codi_type_traits *t = codi_type_get(type);
    return t ? t->name : "?";
}

size_t codi_row_size(int type, int64_t ne0) {
    const codi_type_traits *t = codi_type_get(type);
    if (!t || ne0 < 0 || ne0 % t->blck_size != 0)
        return 0;
    uint64_t nblocks = (uint64_t)(ne0 / t->blck_size);
    /* A size that does not fit is reported like any other bad shape. */
    if (nblocks > SIZE_MAX / t->type_size)
        return 0;
    return (size_t)nblocks * t->type_size;
}
