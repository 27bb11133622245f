/* MixLLM matrices at run time: binding the three tensors of a mix matrix
 * (docs/formats.md) and computing a chunk of its rows. */
#ifndef CODI_QUANT_MIX_H
#define CODI_QUANT_MIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "model/model.h"

/* Suffixes of the 8-bit rows and of the output order. */
#define CODI_MIX_HI_SUFFIX ".q8"
#define CODI_MIX_PERM_SUFFIX ".perm"

/* True when `name` has a "<name>.perm" companion in g. */
bool codi_quant_is_mix(const codi_gguf *g, const char *name);
/* Bind <name> (Q4G rows), <name>.q8 (Q8G rows) and <name>.perm (I16, a
 * permutation of 0..ne1-1, checked) as the ne0 x ne1 matrix w. */
int codi_quant_bind_mix(const codi_gguf *g, const char *name, int64_t ne0, int64_t ne1, codi_weight *w, char *err,
                        size_t errlen);
/* y[c * ldy + perm[s]] = dot(stored row s, activation row c) for stored
 * rows s in [r0, r0 + nr) and c < nc; xq: activations quantized to Q8_1,
 * xq_stride bytes apart. nr * nc <= 2048. */
void codi_mix_chunk(const codi_weight *w, int64_t r0, int nr, const void *xq, size_t xq_stride, int nc, float *y,
                    size_t ldy);

/* W4A8: y[c * ldy + r] *= scale[r] for r < nr, c < nc. */
void codi_scale_rows(float *y, int nr, int nc, size_t ldy, const float *scale);
/* Its scalar reference (the AVX2 kernel gives the same products). */
void codi_scale_rows_ref(float *y, int nr, int nc, size_t ldy, const float *scale);
/* Bind a W4A8 tensor t and its "<name>.wscale" (F32 [ne1]) as w. */
int codi_quant_bind_w4a8(const codi_gguf *g, const codi_gguf_tensor *t, int64_t ne0, int64_t ne1, codi_weight *w,
                         char *err, size_t errlen);

#endif
