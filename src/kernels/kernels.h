/* Kernel dispatch: the fastest implementation of each operation this CPU
 * supports, chosen once by a runtime probe. Every entry has a scalar
 * reference twin in src/tensor/ that the tests compare it to. */
#ifndef CODI_KERNELS_H
#define CODI_KERNELS_H

#include <stdint.h>

#include "tensor/types.h"

typedef struct codi_cpu_features {
    int avx2, fma, f16c;
} codi_cpu_features;

const codi_cpu_features *codi_cpu_get_features(void);

/* Dot product kernel for weights of type `type` against activations of
 * codi_type_get(type)->vec_dot_type. NULL for an unsupported type. */
codi_vec_dot_fn codi_kernel_vec_dot(int type);
/* Quantize one activation row into `type` (an activation type). */
codi_from_float_fn codi_kernel_from_float(int type);
/* Dequantize one row of `type`. */
codi_to_float_fn codi_kernel_to_float(int type);

/* Small fused float ops (scalar here; vectorised by the compiler). */
void codi_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void codi_softmax_inplace(float *x, int n);

#endif
