/* The exponential-based row ops: softmax of attention scores and SwiGLU.
 * codi_softmax_inplace and codi_swiglu (kernels.h) pick the AVX2 versions
 * when the CPU has them; the references use libm's expf. */
#ifndef CODI_KERNELS_SOFTMAX_H
#define CODI_KERNELS_SOFTMAX_H

#include <stdint.h>

/* x[i] = e^(x[i] - max) / sum: e^ by expf, the sum in double. */
void codi_softmax_inplace_ref(float *x, int n);
/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] */
void codi_swiglu_ref(float *g, const float *u, int n);

/* ggml's CPU gelu (tanh approximation), which reads an fp16 table: x
 * rounded to fp16, 0.5 f (1 + tanh(sqrt(2/pi) f (1 + 0.044715 f^2))),
 * rounded to fp16; 0 at or below -10, x at or above 10. */
float codi_gelu_ggml(float x);
/* Its middle part: the gelu of fp16 value h, rounded to fp16. */
float codi_gelu_fp16(uint16_t h);
/* g[i] = codi_gelu_ggml(g[i]) * u[i] (GeGLU) */
void codi_geglu_ref(float *g, const float *u, int n);
void codi_geglu(float *g, const float *u, int n);

#if defined(__x86_64__) || defined(__i386__)
/* codi_geglu_ref bit for bit: F16C rounds 8 inputs to fp16 (as
 * codi_fp32_to_fp16 does, to nearest even), a gather reads the gelu of
 * each from a 65536-entry table built once from codi_gelu_ggml. */
void codi_geglu_avx2(float *g, const float *u, int n);
/* The same with an 8-lane exponential within 2 ulp of expf (0 below
 * e^-87.34); the sum in double as well. */
void codi_softmax_inplace_avx2(float *x, int n);
/* y[i] = e^x[i] (x[i] <= 88), the exponential both use. */
void codi_exp_neg_avx2(const float *x, float *y, int n);
void codi_swiglu_avx2(float *g, const float *u, int n);
#endif

#endif
