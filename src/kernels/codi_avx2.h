/* AVX2 kernels of codi's own weight types (tensor/quant_codi.h): dot
 * products and prefill gemm tiles. Same contract as kernels/avx2.h: exact
 * integer block sums, float accumulation in a different order than the
 * reference (equal to rounding); called only through dispatch.c. */
#ifndef CODI_KERNELS_CODI_AVX2_H
#define CODI_KERNELS_CODI_AVX2_H

#include <stddef.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#define CODI_DECL_GROUP_AVX2(G)                                                               \
    void codi_vec_dot_q4g##G##_q8_1_avx2(int64_t n, float *s, const void *x, const void *y);  \
    void codi_vec_dot_q8g##G##_q8_0_avx2(int64_t n, float *s, const void *x, const void *y);  \
    void codi_gemm_q4g##G##_q8_1_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,   \
                                      const void *x, size_t ldx, float *y, size_t ldy);       \
    void codi_gemm_q8g##G##_q8_0_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,   \
                                      const void *x, size_t ldx, float *y, size_t ldy);       \
    void codi_vec_dot_q8g##G##_q8_1_avx2(int64_t n, float *s, const void *x, const void *y);  \
    void codi_vec_dot_gqsa##G##_q8_1_avx2(int64_t n, float *s, const void *x, const void *y); \
    void codi_gemm_gqsa##G##_q8_1_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,  \
                                       const void *x, size_t ldx, float *y, size_t ldy);      \
    void codi_vec_dot_w4a8_##G##_a8_avx2(int64_t n, float *s, const void *x, const void *y);  \
    void codi_gemm_w4a8_##G##_a8_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,   \
                                      const void *x, size_t ldx, float *y, size_t ldy);       \
    void codi_gemm_x8_w4a8_##G##_avx2(int64_t n, int ng, const void *w, int nc, const void *x, \
                                      size_t ldx, float *y, size_t ldy);                      \
    void codi_gemm_x8_w4a8_##G##_avxvnni(int64_t n, int ng, const void *w, int nc,             \
                                         const void *x, size_t ldx, float *y, size_t ldy);
void codi_quantize_row_a8_avx2(const float *x, void *y, int64_t n);
/* codi_scale_rows (quant/mix.h) in 8 lanes: the same products. */
void codi_scale_rows_avx2(float *y, int nr, int nc, size_t ldy, const float *scale);
CODI_DECL_GROUP_AVX2(32)
CODI_DECL_GROUP_AVX2(64)
CODI_DECL_GROUP_AVX2(128)
#undef CODI_DECL_GROUP_AVX2
#endif

#endif
