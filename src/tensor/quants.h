/* Reference (scalar, portable) quantize / dequantize / dot product for every
 * tensor type. These are the slow, obvious twins that fast kernels in
 * src/kernels/ are tested against; the traits table in types.c points at
 * them. Semantics follow ggml bit for bit:
 *   - codi_dequantize_row_*_ref  = ggml dequantize_row_*
 *   - codi_quantize_row_*_ref    = ggml quantize_row_*_ref
 *   - codi_vec_dot_*_ref         = ggml ggml_vec_dot_*_generic
 * n is the number of elements and must be a multiple of the type's block
 * size (an internal invariant, checked with CODI_ASSERT). x/y of the block
 * types point at n / blck_size blocks laid out as in tensor/blocks.h. */
#ifndef CODI_TENSOR_QUANTS_H
#define CODI_TENSOR_QUANTS_H

#include <stdint.h>

#include "tensor/types.h"

/* ---- float types ---- */
void codi_dequantize_row_f32_ref(const void *x, float *y, int64_t n);
void codi_quantize_row_f32_ref(const float *x, void *y, int64_t n);
void codi_dequantize_row_f16_ref(const void *x, float *y, int64_t n);
void codi_quantize_row_f16_ref(const float *x, void *y, int64_t n);
void codi_dequantize_row_bf16_ref(const void *x, float *y, int64_t n);
void codi_quantize_row_bf16_ref(const float *x, void *y, int64_t n);
/* Products summed in double, as ggml's scalar path does. */
void codi_vec_dot_f32_ref(int64_t n, float *s, const void *x, const void *y);
void codi_vec_dot_f16_ref(int64_t n, float *s, const void *x, const void *y);
void codi_vec_dot_bf16_ref(int64_t n, float *s, const void *x, const void *y);

/* ---- legacy quants (32 per block) ---- */
void codi_dequantize_row_q4_0_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q4_1_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q5_0_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q5_1_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q8_0_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q8_1_ref(const void *x, float *y, int64_t n);

void codi_quantize_row_q4_0_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q4_1_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q5_0_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q5_1_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q8_0_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q8_1_ref(const float *x, void *y, int64_t n);

/* x: weights, y: activations of the paired type. */
void codi_vec_dot_q4_0_q8_0_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q4_1_q8_1_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q5_0_q8_0_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q5_1_q8_1_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *x,
                                const void *y);

/* ---- k-quants (256 per super-block) ---- */
void codi_dequantize_row_q2_K_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q3_K_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q4_K_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q5_K_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q6_K_ref(const void *x, float *y, int64_t n);
void codi_dequantize_row_q8_K_ref(const void *x, float *y, int64_t n);

void codi_quantize_row_q2_K_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q3_K_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q4_K_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q5_K_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q6_K_ref(const float *x, void *y, int64_t n);
void codi_quantize_row_q8_K_ref(const float *x, void *y, int64_t n);

void codi_vec_dot_q2_K_q8_K_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q3_K_q8_K_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q4_K_q8_K_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q5_K_q8_K_ref(int64_t n, float *s, const void *x,
                                const void *y);
void codi_vec_dot_q6_K_q8_K_ref(int64_t n, float *s, const void *x,
                                const void *y);

/* Unpack the j-th (0..7) 6-bit scale and min of a Q4_K/Q5_K block's
 * scales[12] (ggml's get_scale_min_k4). */
static inline void codi_k4_scale_min(int j, const uint8_t *q, uint8_t *sc,
                                     uint8_t *m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (uint8_t)((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4));
        *m = (uint8_t)((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

/* The j-th (0..15) 6-bit scale of a Q3_K block's scales[12], offset
 * removed: -32..31. */
static inline int codi_q3_K_scale(int j, const uint8_t *q) {
    int lo = j < 8 ? (q[j] & 0xF) : (q[j - 8] >> 4);
    int hi = (q[8 + j % 4] >> (2 * (j / 4))) & 3;
    return (lo | (hi << 4)) - 32;
}

#endif
