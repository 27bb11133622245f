/* The exponential-based row ops: softmax of attention scores and SwiGLU.
 * codi_softmax_inplace and codi_swiglu (kernels.h) pick the AVX2 versions
 * when the CPU has them; the references use libm's expf. */
#ifndef CODI_KERNELS_SOFTMAX_H
#define CODI_KERNELS_SOFTMAX_H

/* x[i] = e^(x[i] - max) / sum: e^ by expf, the sum in double. */
void codi_softmax_inplace_ref(float *x, int n);
/* g[i] = silu(g[i]) * u[i] = g[i] / (1 + e^-g[i]) * u[i] */
void codi_swiglu_ref(float *g, const float *u, int n);

#if defined(__x86_64__) || defined(__i386__)
/* The same with an 8-lane exponential within 2 ulp of expf (0 below
 * e^-87.34); the sum in double as well. */
void codi_softmax_inplace_avx2(float *x, int n);
/* y[i] = e^x[i] (x[i] <= 88), the exponential both use. */
void codi_exp_neg_avx2(const float *x, float *y, int n);
void codi_swiglu_avx2(float *g, const float *u, int n);
#endif

#endif
