/* Kernel dispatch: the fastest implementation of each operation this CPU
 * supports, chosen once by a runtime probe. Every entry has a scalar
 * reference twin in src/tensor/ that the tests compare it to. */
#ifndef CODI_KERNELS_H
#define CODI_KERNELS_H

#include <stdint.h>

#include "tensor/types.h"

typedef struct codi_cpu_features {
    int avx2, fma, f16c;
    int avxvnni; /* VEX-coded vpdpbusd (the x8 kernels use it with AVX2) */
    int avx512;  /* AVX-512 F, BW, VL, DQ and VNNI, with the OS saving zmm */
    int amx;     /* AMX-TILE and AMX-INT8, tile state enabled in XCR0 and
                    granted to this process (arch_prctl) */
} codi_cpu_features;

const codi_cpu_features *codi_cpu_get_features(void);

/* "avx2" or "scalar": which kernels the selectors below hand out. The
 * choice is made once per process: AVX2+FMA+F16C present, and
 * CODI_FORCE_SCALAR unset (or "0"). */
const char *codi_kernel_backend(void);

/* Dot product kernel for weights of type `type` against activations of
 * codi_type_get(type)->vec_dot_type. NULL for an unsupported type. */
codi_vec_dot_fn codi_kernel_vec_dot(int type);
/* Quantize one activation row into `type` (an activation type). */
codi_from_float_fn codi_kernel_from_float(int type);
/* Dequantize one row of `type`. */
codi_to_float_fn codi_kernel_to_float(int type);

/* fp16 <-> fp32 rows, element for element equal to codi_fp16_to_fp32 /
 * codi_fp32_to_fp16 (round to nearest even); F16C when available. */
void codi_fp16_to_fp32_row(const uint16_t *x, float *y, int64_t n);
void codi_fp32_to_fp16_row(const float *x, uint16_t *y, int64_t n);

/* s[j] = dot(x, y[j]) for j < m over fp16 rows (n elements): several
 * attention heads against one K or V row. Equal to m calls of the F16
 * vec_dot kernel. */
void codi_dot_f16_multi(int64_t n, float *s, const uint16_t *x, const uint16_t *const *y, int m);

/* Attention scores of G query rows q[G][hd] (fp32, usually fp16-rounded)
 * against n keys of a transposed fp16 K cache kT[hd][ldk]:
 * s[g * lds + t] = scale * sum_i q[g][i] * kT[i][t], t < n. Any G; each
 * score depends only on its query row and key (not on G or n), so a tile
 * of several tokens' queries gets the scores each would get alone. */
void codi_attn_scores_f16(const float *q, int G, int hd, const uint16_t *kT, size_t ldk, int n,
                          float *s, size_t lds, float scale);
void codi_attn_scores_f16_ref(const float *q, int G, int hd, const uint16_t *kT, size_t ldk, int n,
                              float *s, size_t lds, float scale);

/* Attention outputs of m weight rows against a transposed fp16 V cache
 * vT[hd][ldv]: o[j][i] = sum_{t < n[j]} p[j * ldp + t] * vT[i][t], i < hd.
 * The weights are fp32 holding fp16 values (rounded by the caller); row j
 * sums its own n[j] keys. Each output is bit-equal to
 * codi_dot_f16_multi(n[j], ., vT + i * ldv, {fp16(p[j])}, 1), so a tile of
 * query tokens (different n, causal) converts each V element once for all
 * of them and still gets every token's per-token result. */
void codi_attn_values_f16(const float *p, size_t ldp, const int *n, int m, const uint16_t *vT, size_t ldv,
                          int hd, float *const *o);
void codi_attn_values_f16_ref(const float *p, size_t ldp, const int *n, int m, const uint16_t *vT,
                              size_t ldv, int hd, float *const *o);

/* Attention of M query rows q[M][hd] (fp32, usually fp16-rounded) over a
 * transposed fp16 K and V cache kT[hd][ldk], vT[hd][ldv] with an online
 * softmax (flash-attention style): row r attends keys t < n[r] and gets
 * o[r][i] = sum_t softmax_t(scale * q_r . k_t) vT[i][t], i < hd (0 when
 * n[r] is 0). The keys are walked in blocks of CODI_ATTN_BLOCK: the
 * block's scores of every row, the running maximum and sum, the output
 * rescaled by e^(m_old - m_new) when the maximum grows, plus the block's
 * weights times V; one division by the sum at the end. The weights stay
 * fp32 (the rows path rounds them to fp16), so the result equals
 * scores -> softmax -> values to rounding, not bit for bit. Scratch is one
 * block of scores per row, on the stack; o is the accumulator. */
#define CODI_ATTN_BLOCK 128
void codi_attn_online_f16(const float *q, int M, int hd, const int *n, const uint16_t *kT, size_t ldk,
                          const uint16_t *vT, size_t ldv, float scale, float *const *o);
void codi_attn_online_f16_ref(const float *q, int M, int hd, const int *n, const uint16_t *kT,
                              size_t ldk, const uint16_t *vT, size_t ldv, float scale, float *const *o);

/* Small fused float ops (scalar here; vectorised by the compiler). */
void codi_rmsnorm(float *out, const float *x, const float *w, int n, float eps);
void codi_softmax_inplace(float *x, int n);
/* g = silu(g) * u over n floats (kernels/softmax.h) */
void codi_swiglu(float *g, const float *u, int n);

#endif
