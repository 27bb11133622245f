/* AVX2 + FMA + F16C kernels (x86-64). Each one is the fast twin of a
 * reference in src/tensor/quants.h with the same signature and contract;
 * tests/test_kernels.c holds them to it. Call them only when
 * codi_cpu_get_features() reports avx2, fma and f16c: dispatch.c does the
 * choosing, nothing else should name these directly.
 *
 * Dot products: the integer sums are exact and equal the reference's; only
 * the float accumulation differs (eight lanes, fused multiply-add, as
 * ggml's x86 code), so results agree with the reference to rounding.
 * They assume activation quants in -127..127, which every Q8_0/Q8_1/Q8_K
 * quantizer produces (a -128 byte would saturate maddubs, as in ggml).
 *
 * Activation quantizers and fp16 conversions are bit-exact with the
 * reference. */
#ifndef CODI_KERNELS_AVX2_H
#define CODI_KERNELS_AVX2_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define CODI_HAVE_AVX2_KERNELS 1

/* ---- dot products (x: weights, y: activations of the paired type) ---- */
void codi_vec_dot_f32_avx2(int64_t n, float *s, const void *x, const void *y);
void codi_vec_dot_f16_avx2(int64_t n, float *s, const void *x, const void *y);
void codi_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q2_K_q8_K_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q3_K_q8_K_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *x,
                                 const void *y);
void codi_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *x,
                                 const void *y);

/* ---- activation quantizers (byte-identical to the _ref ones) ---- */
void codi_quantize_row_q8_0_avx2(const float *x, void *y, int64_t n);
void codi_quantize_row_q8_1_avx2(const float *x, void *y, int64_t n);
void codi_quantize_row_q8_K_avx2(const float *x, void *y, int64_t n);

/* ---- fp16 rows (F16C, round to nearest even; = codi_fp16_to_fp32 and
 * codi_fp32_to_fp16 element by element) ---- */
void codi_fp16_to_fp32_row_avx2(const uint16_t *x, float *y, int64_t n);
void codi_fp32_to_fp16_row_avx2(const float *x, uint16_t *y, int64_t n);
/* The same as to_float / from_float of CODI_TYPE_F16. */
void codi_dequantize_row_f16_avx2(const void *x, float *y, int64_t n);
void codi_quantize_row_f16_avx2(const float *x, void *y, int64_t n);

/* s[j] = dot(x, y[j]) for j < m over fp16 rows, each bit-equal to
 * codi_vec_dot_f16_avx2(n, &s[j], x, y[j]). */
void codi_dot_f16_multi_avx2(int64_t n, float *s, const uint16_t *x, const uint16_t *const *y, int m);

/* See codi_attn_scores_f16 (kernels.h); FMA in a different order than
 * the reference, so equal to rounding. */
void codi_attn_scores_f16_avx2(const float *q, int G, int hd, const uint16_t *kT, size_t ldk, int n,
                               float *s, size_t lds, float scale);

/* See codi_attn_values_f16 (kernels.h): each output bit-equal to
 * codi_dot_f16_multi_avx2 of its V row and its weights rounded to fp16. */
void codi_attn_values_f16_avx2(const float *p, size_t ldp, const int *n, int m, const uint16_t *vT,
                               size_t ldv, int hd, float *const *o);

/* See codi_attn_online_f16 (kernels.h): the exponential of
 * codi_exp_neg_avx2 and sums in another order, so equal to the reference
 * to rounding. */
void codi_attn_online_f16_avx2(const float *q, int M, int hd, const int *n, const uint16_t *kT,
                               size_t ldk, const uint16_t *vT, size_t ldv, float scale, float *const *o);

#endif

#endif
