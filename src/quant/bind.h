/* Binding codi's own weight layouts that a plain (type, ne0, ne1) view
 * cannot describe; called by the loader's bind_weight. */
#ifndef CODI_QUANT_BIND_H
#define CODI_QUANT_BIND_H

#include <stddef.h>
#include <stdint.h>

#include "gguf.h"
#include "model/model.h"
#include "tensor/quant_codi.h"

/* A GQSA tensor t (ne[0] = stored elements <= ne0) as the ne0 x ne1
 * matrix w; every group index is checked. 0 or CODI_EFORMAT. */
int codi_quant_bind_sparse(const codi_gguf_tensor *t, int64_t ne0, int64_t ne1, codi_weight *w, char *err,
                           size_t errlen);

#endif
