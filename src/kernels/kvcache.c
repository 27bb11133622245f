/* Quantized KV cache kernels: scalar references and dispatch (see
 * kvcache.h). The AVX2 versions are in kvcache_avx2.c. */
#include "kernels/kvcache.h"

#include <math.h>
#include <string.h>

#include "kernels/avx2.h"
#include "kernels/kernels.h"
#include "tensor/types.h"

#if defined(CODI_HAVE_AVX2_KERNELS)
void codi_attn_scores_kvq_avx2(int bits, const float *q, int G, int hd, int gs, const uint8_t *kT,
                               size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                               int t0, int n, float *s, size_t lds, float scale);
void codi_attn_values_kvq_avx2(int bits, const float *p, size_t ldp, int G, int hd, int gs,
                               const uint8_t *vT, size_t ldv, const uint16_t *vs,
                               const uint16_t *vm, size_t ldsc, int t0, int n, float *o,
                               float *tmp);
void codi_imp_accumulate_avx2(int64_t *acc, const float *p, size_t ldp, int G, int n, float w,
                              const float *vn);
void codi_attn_scores_kvc_avx2(int bits, const float *q, int G, int hd, const uint8_t *kT,
                               size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                               int t0, int n, float *s, size_t lds, float scale);
#endif

static int kvq_use_avx2(void) {
    static int v = -1; /* a benign race: every thread computes the same */
    if (v < 0)
        v = strcmp(codi_kernel_backend(), "avx2") == 0;
    return v;
}

void codi_kvq_quantize_group(int bits, const float *x, int gs, uint8_t *codes, uint16_t *s,
                             uint16_t *m) {
    float lo = x[0], hi = x[0];
    for (int i = 1; i < gs; i++) {
        lo = x[i] < lo ? x[i] : lo;
        hi = x[i] > hi ? x[i] : hi;
    }
    const int qmax = (1 << bits) - 1;
    /* Scale and minimum are stored as fp16: quantize against the stored
     * values so that decoding is s * c + m exactly. */
    const uint16_t mh = codi_fp32_to_fp16(lo);
    const float mf = codi_fp16_to_fp32(mh);
    const uint16_t sh = codi_fp32_to_fp16((hi - mf) / (float)qmax);
    const float sf = codi_fp16_to_fp32(sh);
    const float inv = sf > 0.0f && isfinite(sf) ? 1.0f / sf : 0.0f;
    for (int i = 0; i < gs; i++) {
        const float v = nearbyintf((x[i] - mf) * inv);
        codes[i] = (uint8_t)(v < 0.0f ? 0 : v > (float)qmax ? qmax : (int)v);
    }
    *s = sh;
    *m = mh;
}

void codi_attn_scores_kvq_ref(int bits, const float *q, int G, int hd, int gs, const uint8_t *kT,
                              size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                              int t0, int n, float *s, size_t lds, float scale) {
    for (int g = 0; g < G; g++)
        for (int t = 0; t < n; t++) {
            const size_t a = (size_t)t0 + (size_t)t;
            float acc = 0.0f;
            for (int i = 0; i < hd; i++) {
                const int grp = i / gs;
                const float k = codi_fp16_to_fp32(ks[(size_t)grp * ldsc + a]) *
                                    (float)codi_kvq_get(bits, kT + (size_t)i * ldk, a) +
                                codi_fp16_to_fp32(km[(size_t)grp * ldsc + a]);
                acc += q[(size_t)g * hd + i] * k;
            }
            s[(size_t)g * lds + t] = acc * scale;
        }
}

void codi_attn_values_kvq_ref(int bits, const float *p, size_t ldp, int G, int hd, int gs,
                              const uint8_t *vT, size_t ldv, const uint16_t *vs,
                              const uint16_t *vm, size_t ldsc, int t0, int n, float *o) {
    for (int g = 0; g < G; g++)
        for (int i = 0; i < hd; i++) {
            const int grp = i / gs;
            float acc = 0.0f;
            for (int t = 0; t < n; t++) {
                const size_t a = (size_t)t0 + (size_t)t;
                const float v = codi_fp16_to_fp32(vs[(size_t)grp * ldsc + a]) *
                                    (float)codi_kvq_get(bits, vT + (size_t)i * ldv, a) +
                                codi_fp16_to_fp32(vm[(size_t)grp * ldsc + a]);
                acc += p[(size_t)g * ldp + t] * v;
            }
            o[(size_t)g * hd + i] = acc;
        }
}

void codi_attn_scores_kvq(int bits, const float *q, int G, int hd, int gs, const uint8_t *kT,
                          size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc, int t0,
                          int n, float *s, size_t lds, float scale) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (kvq_use_avx2()) {
        codi_attn_scores_kvq_avx2(bits, q, G, hd, gs, kT, ldk, ks, km, ldsc, t0, n, s, lds, scale);
        return;
    }
#endif
    codi_attn_scores_kvq_ref(bits, q, G, hd, gs, kT, ldk, ks, km, ldsc, t0, n, s, lds, scale);
}

void codi_imp_accumulate_ref(int64_t *acc, const float *p, size_t ldp, int G, int n, float w,
                             const float *vn) {
    for (int t = 0; t < n; t++) {
        float a = p[t];
        for (int g = 1; g < G; g++)
            a += p[(size_t)g * ldp + (size_t)t];
        const float x = a * (w * (vn ? vn[t] : 1.0f));
        acc[t] += (int64_t)llrint((double)x * 4294967296.0); /* exact product, then nearest */
    }
}

void codi_imp_accumulate(int64_t *acc, const float *p, size_t ldp, int G, int n, float w, const float *vn) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (kvq_use_avx2()) {
        codi_imp_accumulate_avx2(acc, p, ldp, G, n, w, vn);
        return;
    }
#endif
    codi_imp_accumulate_ref(acc, p, ldp, G, n, w, vn);
}

void codi_attn_values_kvq(int bits, const float *p, size_t ldp, int G, int hd, int gs,
                          const uint8_t *vT, size_t ldv, const uint16_t *vs, const uint16_t *vm,
                          size_t ldsc, int t0, int n, float *o, float *tmp) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (kvq_use_avx2()) {
        codi_attn_values_kvq_avx2(bits, p, ldp, G, hd, gs, vT, ldv, vs, vm, ldsc, t0, n, o, tmp);
        return;
    }
#endif
    (void)tmp;
    codi_attn_values_kvq_ref(bits, p, ldp, G, hd, gs, vT, ldv, vs, vm, ldsc, t0, n, o);
}

void codi_attn_scores_kvc_ref(int bits, const float *q, int G, int hd, const uint8_t *kT,
                              size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                              int t0, int n, float *s, size_t lds, float scale) {
    for (int g = 0; g < G; g++)
        for (int t = 0; t < n; t++) {
            const size_t a = (size_t)t0 + (size_t)t, j = a / CODI_KVC_G;
            float acc = 0.0f;
            for (int i = 0; i < hd; i++) {
                const float k = codi_fp16_to_fp32(ks[j * ldsc + (size_t)i]) *
                                    (float)codi_kvq_get(bits, kT + (size_t)i * ldk, a) +
                                codi_fp16_to_fp32(km[j * ldsc + (size_t)i]);
                acc += q[(size_t)g * hd + i] * k;
            }
            s[(size_t)g * lds + t] = acc * scale;
        }
}

void codi_attn_scores_kvc(int bits, const float *q, int G, int hd, const uint8_t *kT, size_t ldk,
                          const uint16_t *ks, const uint16_t *km, size_t ldsc, int t0, int n,
                          float *s, size_t lds, float scale) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (kvq_use_avx2()) {
        codi_attn_scores_kvc_avx2(bits, q, G, hd, kT, ldk, ks, km, ldsc, t0, n, s, lds, scale);
        return;
    }
#endif
    codi_attn_scores_kvc_ref(bits, q, G, hd, kT, ldk, ks, km, ldsc, t0, n, s, lds, scale);
}
