/* Quant block layouts, byte-identical to ggml's (ggml-common.h), so tensor
 * data from a GGUF file is used in place. Scales are IEEE half floats kept
 * as raw uint16_t bits (codi_fp16_to_fp32 converts them). Private to
 * src/: kernels include this, the public API never shows it. */
#ifndef CODI_TENSOR_BLOCKS_H
#define CODI_TENSOR_BLOCKS_H

#include <stdint.h>

#include "tensor/types.h"

/* Multi-byte fields are read in host order, as ggml does. */
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "codi reads GGUF tensor data in place and needs a little-endian host"
#endif

#define CODI_K_SCALE_SIZE 12 /* packed 6-bit scales + mins of Q4_K/Q5_K */

/* ---- legacy quants: 32 weights per block ---- */

/* w = d * (q - 8), q in 0..15; qs[j] holds w[j] (low nibble) and
 * w[j + 16] (high nibble). */
typedef struct codi_block_q4_0 {
    uint16_t d;
    uint8_t qs[CODI_QK / 2];
} codi_block_q4_0;
_Static_assert(sizeof(codi_block_q4_0) == 2 + CODI_QK / 2, "q4_0 size");

/* w = d * q + m, q in 0..15. */
typedef struct codi_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[CODI_QK / 2];
} codi_block_q4_1;
_Static_assert(sizeof(codi_block_q4_1) == 4 + CODI_QK / 2, "q4_1 size");

/* w = d * (q - 16), q in 0..31; bit 4 of q[j] is bit j of the
 * little-endian uint32 qh. */
typedef struct codi_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[CODI_QK / 2];
} codi_block_q5_0;
_Static_assert(sizeof(codi_block_q5_0) == 2 + 4 + CODI_QK / 2, "q5_0 size");

/* w = d * q + m, q in 0..31. */
typedef struct codi_block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[CODI_QK / 2];
} codi_block_q5_1;
_Static_assert(sizeof(codi_block_q5_1) == 4 + 4 + CODI_QK / 2, "q5_1 size");

/* w = d * q. */
typedef struct codi_block_q8_0 {
    uint16_t d;
    int8_t qs[CODI_QK];
} codi_block_q8_0;
_Static_assert(sizeof(codi_block_q8_0) == 2 + CODI_QK, "q8_0 size");

/* Activation type for Q4_1/Q5_1: s = d * sum(qs), rounded to half, so the
 * dot product can apply the weights' offset m in one multiply. */
typedef struct codi_block_q8_1 {
    uint16_t d;
    uint16_t s;
    int8_t qs[CODI_QK];
} codi_block_q8_1;
_Static_assert(sizeof(codi_block_q8_1) == 4 + CODI_QK, "q8_1 size");

/* ---- k-quants: 256 weights per super-block ---- */

/* 16 sub-blocks of 16: w = d * (scales[i] & 15) * q - dmin * (scales[i] >> 4),
 * q in 0..3. */
typedef struct codi_block_q2_K {
    uint8_t scales[CODI_QK_K / 16];
    uint8_t qs[CODI_QK_K / 4];
    uint16_t d;
    uint16_t dmin;
} codi_block_q2_K;
_Static_assert(sizeof(codi_block_q2_K) == 4 + CODI_QK_K / 16 + CODI_QK_K / 4,
               "q2_K size");

/* 16 sub-blocks of 16: w = d * (s - 32) * (q - 4 * !hbit), q low 2 bits in
 * qs, high bit in hmask; s is a 6-bit scale packed into scales[12]. */
typedef struct codi_block_q3_K {
    uint8_t hmask[CODI_QK_K / 8];
    uint8_t qs[CODI_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} codi_block_q3_K;
_Static_assert(sizeof(codi_block_q3_K) ==
                   2 + CODI_QK_K / 8 + CODI_QK_K / 4 + 12,
               "q3_K size");

/* 8 sub-blocks of 32: w = d * sc * q - dmin * m, 6-bit sc and m packed in
 * scales[12], q in 0..15. */
typedef struct codi_block_q4_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[CODI_K_SCALE_SIZE];
    uint8_t qs[CODI_QK_K / 2];
} codi_block_q4_K;
_Static_assert(sizeof(codi_block_q4_K) == 4 + CODI_K_SCALE_SIZE + CODI_QK_K / 2,
               "q4_K size");

/* As Q4_K with a fifth bit per weight in qh: q in 0..31. */
typedef struct codi_block_q5_K {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[CODI_K_SCALE_SIZE];
    uint8_t qh[CODI_QK_K / 8];
    uint8_t qs[CODI_QK_K / 2];
} codi_block_q5_K;
_Static_assert(sizeof(codi_block_q5_K) ==
                   4 + CODI_K_SCALE_SIZE + CODI_QK_K / 8 + CODI_QK_K / 2,
               "q5_K size");

/* 16 sub-blocks of 16: w = d * scales[i] * (q - 32), q in 0..63 (low 4
 * bits in ql, high 2 bits in qh). */
typedef struct codi_block_q6_K {
    uint8_t ql[CODI_QK_K / 2];
    uint8_t qh[CODI_QK_K / 4];
    int8_t scales[CODI_QK_K / 16];
    uint16_t d;
} codi_block_q6_K;
_Static_assert(sizeof(codi_block_q6_K) ==
                   2 + CODI_QK_K / 2 + CODI_QK_K / 4 + CODI_QK_K / 16,
               "q6_K size");

/* Activation type for the k-quants: float scale, and the sums of each 16
 * quants so the weights' mins cost one multiply per sub-block. */
typedef struct codi_block_q8_K {
    float d;
    int8_t qs[CODI_QK_K];
    int16_t bsums[CODI_QK_K / 16];
} codi_block_q8_K;
_Static_assert(sizeof(codi_block_q8_K) == 4 + CODI_QK_K + CODI_QK_K / 16 * 2,
               "q8_K size");

#endif
