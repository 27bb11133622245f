/* Matrix-matrix products for prefill: y[c * ldy + r] = dot(W row r, X row c)
 * for r < nr weight rows (ldw bytes apart, n elements each) and c < nc
 * activation rows (already quantized to the weight type's vec_dot_type,
 * ldx bytes apart). */
#ifndef CODI_KERNELS_GEMM_H
#define CODI_KERNELS_GEMM_H

#include <stddef.h>
#include <stdint.h>

#include "tensor/types.h"

typedef void (*codi_gemm_fn)(int64_t n, int nr, int nc, const void *w, size_t ldw,
                             const void *x, size_t ldx, float *y, size_t ldy);

/* The register-tiled kernel for weights of `type` on this CPU, or NULL when
 * there is none (then use codi_gemm_generic with the type's vec_dot). */
codi_gemm_fn codi_kernel_gemm(int type);

/* Reference: one vec_dot per (row, token) pair. */
void codi_gemm_generic(codi_vec_dot_fn dot, int64_t n, int nr, int nc, const void *w,
                       size_t ldw, const void *x, size_t ldx, float *y, size_t ldy);

#if defined(__x86_64__) || defined(__i386__)
void codi_gemm_q4_0_q8_0_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,
                              const void *x, size_t ldx, float *y, size_t ldy);
void codi_gemm_q4_1_q8_1_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,
                              const void *x, size_t ldx, float *y, size_t ldy);
void codi_gemm_q8_0_q8_0_avx2(int64_t n, int nr, int nc, const void *w, size_t ldw,
                              const void *x, size_t ldx, float *y, size_t ldy);
#endif

#endif
