#include "quant/mix.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "kernels/codi_avx2.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "tensor/quant_codi.h"

bool codi_quant_is_mix(const codi_gguf *g, const char *name) {
    char n[256];
    if (snprintf(n, sizeof(n), "%s%s", name, CODI_MIX_PERM_SUFFIX) >= (int)sizeof(n))
        return false;
    return codi_gguf_find_tensor(g, n) != NULL;
}

static bool is_q4g(int t) { return t >= CODI_TYPE_Q4G32 && t <= CODI_TYPE_Q4G128; }
static bool is_q8g(int t) { return t >= CODI_TYPE_Q8G32 && t <= CODI_TYPE_Q8G128; }

int codi_quant_bind_mix(const codi_gguf *g, const char *name, int64_t ne0, int64_t ne1, codi_weight *w, char *err,
                        size_t errlen) {
    char nh[256], np[256];
    snprintf(nh, sizeof(nh), "%s%s", name, CODI_MIX_HI_SUFFIX);
    snprintf(np, sizeof(np), "%s%s", name, CODI_MIX_PERM_SUFFIX);
    const codi_gguf_tensor *lo = codi_gguf_find_tensor(g, name), *hi = codi_gguf_find_tensor(g, nh),
                           *pm = codi_gguf_find_tensor(g, np);
    if (!lo || !hi || !pm)
        return codi_errorf(err, errlen, CODI_EFORMAT, "mix matrix '%s': needs '%s', '%s' and '%s'", name, name, nh,
                           np);
    if (!is_q4g(lo->type) || !is_q8g(hi->type) || pm->type != CODI_TYPE_I16)
        return codi_errorf(err, errlen, CODI_EFORMAT, "mix matrix '%s': types %s/%s/%s, expected Q4G/Q8G/I16", name,
                           codi_type_name(lo->type), codi_type_name(hi->type), codi_type_name(pm->type));
    if (lo->ne[0] != ne0 || hi->ne[0] != ne0 || lo->ne[2] != 1 || lo->ne[3] != 1 || hi->ne[2] != 1 ||
        hi->ne[3] != 1 || lo->ne[1] < 1 || hi->ne[1] < 1 || lo->ne[1] + hi->ne[1] != ne1 || pm->ne[0] != ne1 ||
        pm->ne[1] != 1 || ne1 > 32767)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "mix matrix '%s': parts [%lld, %lld] + [%lld, %lld], order [%lld], expected %lld x %lld",
                           name, (long long)lo->ne[0], (long long)lo->ne[1], (long long)hi->ne[0],
                           (long long)hi->ne[1], (long long)pm->ne[0], (long long)ne0, (long long)ne1);
    const size_t rl = codi_row_size(lo->type, ne0), rh = codi_row_size(hi->type, ne0);
    if (!rl || !rh || (uint64_t)rl * (uint64_t)lo->ne[1] > lo->nbytes ||
        (uint64_t)rh * (uint64_t)hi->ne[1] > hi->nbytes || (uint64_t)ne1 * 2 > pm->nbytes)
        return codi_errorf(err, errlen, CODI_EFORMAT, "mix matrix '%s': data smaller than its shape", name);
    /* The order must be a permutation: every output row written once. */
    uint8_t *seen = calloc((size_t)ne1, 1);
    if (!seen)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    const int16_t *perm = pm->data;
    for (int64_t s = 0; s < ne1; s++) {
        int16_t v;
        memcpy(&v, perm + s, 2);
        if (v < 0 || v >= ne1 || seen[v]) {
            free(seen);
            return codi_errorf(err, errlen, CODI_EFORMAT, "mix matrix '%s': '%s' is not a permutation", name, np);
        }
        seen[v] = 1;
    }
    free(seen);
    memset(w, 0, sizeof(*w));
    w->data = lo->data;
    w->type = lo->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->row_bytes = rl;
    w->data_hi = hi->data;
    w->type_hi = hi->type;
    w->row_bytes_hi = rh;
    w->n_lo = lo->ne[1];
    w->perm = perm; /* 2-byte aligned: GGUF data is 32-byte aligned */
    return 0;
}

void codi_mix_chunk(const codi_weight *w, int64_t r0, int nr, const void *xq, size_t xq_stride, int nc, float *y,
                    size_t ldy) {
    float buf[2048]; /* buf[c * nr + r] */
    CODI_ASSERT(nr * nc <= 2048);
    const int64_t r1 = r0 + nr;
    /* the 4-bit part: stored rows [r0, min(r1, n_lo)) */
    if (r0 < w->n_lo) {
        const int n = (int)((r1 < w->n_lo ? r1 : w->n_lo) - r0);
        const uint8_t *wr = (const uint8_t *)w->data + (size_t)r0 * w->row_bytes;
        const codi_gemm_fn gemm = codi_kernel_gemm(w->type);
        const int nt = gemm ? nc - nc % 3 : 0;
        if (nt > 0)
            gemm(w->ne0, n, nt, wr, w->row_bytes, xq, xq_stride, buf, (size_t)nr);
        if (nt < nc)
            codi_gemm_generic(codi_kernel_vec_dot(w->type), w->ne0, n, nc - nt, wr, w->row_bytes,
                              (const uint8_t *)xq + (size_t)nt * xq_stride, xq_stride, buf + (size_t)nt * nr,
                              (size_t)nr);
    }
    /* the 8-bit part: stored rows [max(r0, n_lo), r1) */
    if (r1 > w->n_lo) {
        const int64_t a = r0 > w->n_lo ? r0 : w->n_lo;
        const uint8_t *wr = (const uint8_t *)w->data_hi + (size_t)(a - w->n_lo) * w->row_bytes_hi;
        codi_gemm_generic(codi_kernel_vec_dot_q8g_q8_1(w->type_hi), w->ne0, (int)(r1 - a), nc, wr,
                          w->row_bytes_hi, xq, xq_stride, buf + (a - r0), (size_t)nr);
    }
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++)
            y[(size_t)c * ldy + (size_t)w->perm[r0 + r]] = buf[(size_t)c * nr + r];
}

void codi_scale_rows_ref(float *y, int nr, int nc, size_t ldy, const float *scale) {
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++)
            y[(size_t)c * ldy + r] *= scale[r];
}

void codi_scale_rows(float *y, int nr, int nc, size_t ldy, const float *scale) {
#if defined(__x86_64__) || defined(__i386__)
    if (!strcmp(codi_kernel_backend(), "avx2")) {
        codi_scale_rows_avx2(y, nr, nc, ldy, scale);
        return;
    }
#endif
    codi_scale_rows_ref(y, nr, nc, ldy, scale);
}

int codi_quant_bind_w4a8(const codi_gguf *g, const codi_gguf_tensor *t, int64_t ne0, int64_t ne1, codi_weight *w,
                         char *err, size_t errlen) {
    char ns[256];
    snprintf(ns, sizeof(ns), "%s.wscale", t->name);
    const codi_gguf_tensor *sc = codi_gguf_find_tensor(g, ns);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s' has shape [%lld, %lld], expected [%lld, %lld]",
                           t->name, (long long)t->ne[0], (long long)t->ne[1], (long long)ne0, (long long)ne1);
    if (!sc || sc->type != CODI_TYPE_F32 || sc->ne[0] != ne1 || sc->ne[1] != 1 || sc->nbytes < (uint64_t)ne1 * 4)
        return codi_errorf(err, errlen, CODI_EFORMAT, "W4A8 tensor '%s' needs '%s' (F32 [%lld])", t->name, ns,
                           (long long)ne1);
    const size_t row = codi_row_size(t->type, ne0);
    if (!row || (uint64_t)row * (uint64_t)ne1 > t->nbytes)
        return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': data smaller than its shape", t->name);
    memset(w, 0, sizeof(*w));
    w->data = t->data;
    w->type = t->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->row_bytes = row;
    w->row_scale = sc->data;
    return 0;
}
