/* AVX2 + FMA + F16C kernels of the quantized KV cache (see kvcache.h).
 * Eight slots per vector, as the fp16 attention kernels: the codes of one
 * channel for 8 slots are widened to floats once and used by every query
 * head of the group; the per-slot scales and minima of a channel group are
 * applied once per group, not per channel. */
#include "kernels/avx2.h"

#if defined(CODI_HAVE_AVX2_KERNELS)

#include <immintrin.h>
#include <string.h>

#include "common.h"
#include "kernels/kvcache.h"
#include "tensor/types.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#endif

#define MAX_GROUPS 64 /* head_dim <= 1024 (loader) and gs >= 16 */

/* Codes of slots a..a+7 (a even for 4 bits) as floats. */
__attribute__((always_inline)) static inline __m256 codes8(const uint8_t *row, size_t a, const int bits) {
    __m128i b;
    if (bits == 8) {
        b = _mm_loadl_epi64((const __m128i *)(row + a));
    } else {
        uint32_t w;
        memcpy(&w, row + a / 2, 4);
        const __m128i v = _mm_cvtsi32_si128((int)w);
        const __m128i m = _mm_set1_epi8(15);
        b = _mm_unpacklo_epi8(_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m));
    }
    return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b));
}

static inline __m256 f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

static inline float hsum8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

/* One slot, scalar (tails and an odd first slot of 4-bit rows). */
static float score1(int bits, const float *q, int hd, int gs, const uint8_t *kT, size_t ldk,
                    const uint16_t *ks, const uint16_t *km, size_t ldsc, size_t a) {
    float acc = 0.0f;
    for (int grp = 0; grp < hd / gs; grp++) {
        float d = 0.0f, qs = 0.0f;
        for (int i = grp * gs; i < (grp + 1) * gs; i++) {
            d += q[i] * (float)codi_kvq_get(bits, kT + (size_t)i * ldk, a);
            qs += q[i];
        }
        acc += _cvtsh_ss(ks[(size_t)grp * ldsc + a]) * d + _cvtsh_ss(km[(size_t)grp * ldsc + a]) * qs;
    }
    return acc;
}

__attribute__((always_inline)) static inline void scores_g(const float *q, int hd, int gs,
                                                          const uint8_t *kT, size_t ldk,
                                                          const uint16_t *ks, const uint16_t *km,
                                                          size_t ldsc, int t0, int n, float *s,
                                                          size_t lds, float scale, const int bits,
                                                          const int G) {
    const int ng = hd / gs;
    float qsum[3][MAX_GROUPS];
    for (int g = 0; g < G; g++)
        for (int grp = 0; grp < ng; grp++) {
            float a = 0.0f;
            for (int i = grp * gs; i < (grp + 1) * gs; i++)
                a += q[(size_t)g * hd + i];
            qsum[g][grp] = a;
        }
    int t = 0;
    if (bits == 4 && (t0 & 1) && n > 0) {
        for (int g = 0; g < G; g++)
            s[(size_t)g * lds] = scale * score1(bits, q + (size_t)g * hd, hd, gs, kT, ldk, ks, km, ldsc, (size_t)t0);
        t = 1;
    }
    const __m256 vscale = _mm256_set1_ps(scale);
    for (; t + 8 <= n; t += 8) {
        const size_t a = (size_t)t0 + (size_t)t;
        __m256 tot[3];
        for (int g = 0; g < G; g++)
            tot[g] = _mm256_setzero_ps();
        for (int grp = 0; grp < ng; grp++) {
            __m256 acc[3];
            for (int g = 0; g < G; g++)
                acc[g] = _mm256_setzero_ps();
            for (int i = grp * gs; i < (grp + 1) * gs; i++) {
                const __m256 c = codes8(kT + (size_t)i * ldk, a, bits);
                for (int g = 0; g < G; g++)
                    acc[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(q + (size_t)g * hd + i), c, acc[g]);
            }
            const __m256 sc = f16x8(ks + (size_t)grp * ldsc + a);
            const __m256 mn = f16x8(km + (size_t)grp * ldsc + a);
            for (int g = 0; g < G; g++) {
                tot[g] = _mm256_fmadd_ps(sc, acc[g], tot[g]);
                tot[g] = _mm256_fmadd_ps(mn, _mm256_set1_ps(qsum[g][grp]), tot[g]);
            }
        }
        for (int g = 0; g < G; g++)
            _mm256_storeu_ps(s + (size_t)g * lds + t, _mm256_mul_ps(tot[g], vscale));
    }
    for (; t < n; t++)
        for (int g = 0; g < G; g++)
            s[(size_t)g * lds + t] =
                scale * score1(bits, q + (size_t)g * hd, hd, gs, kT, ldk, ks, km, ldsc, (size_t)t0 + (size_t)t);
}

/* codi_imp_accumulate_ref, eight slots at a time: the same float
 * operations (no FMA), then x * 2^32 in double (exact) plus 1.5 * 2^52,
 * whose low mantissa bits are then the integer rounded to nearest even,
 * as llrint does, for |x * 2^32| < 2^51. */
void codi_imp_accumulate_avx2(int64_t *acc, const float *p, size_t ldp, int G, int n, float w,
                              const float *vn) {
    const __m256 wv = _mm256_set1_ps(w), one = _mm256_set1_ps(1.0f);
    const __m256d two32 = _mm256_set1_pd(4294967296.0), magic = _mm256_set1_pd(6755399441055744.0);
    const __m256i magic_bits = _mm256_castpd_si256(magic);
    int t = 0;
    for (; t + 8 <= n; t += 8) {
        __m256 a = _mm256_loadu_ps(p + t);
        for (int g = 1; g < G; g++)
            a = _mm256_add_ps(a, _mm256_loadu_ps(p + (size_t)g * ldp + (size_t)t));
        const __m256 x = _mm256_mul_ps(a, _mm256_mul_ps(wv, vn ? _mm256_loadu_ps(vn + t) : one));
        const __m256d lo = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(x)), two32), magic);
        const __m256d hi = _mm256_add_pd(_mm256_mul_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(x, 1)), two32), magic);
        const __m256i il = _mm256_sub_epi64(_mm256_castpd_si256(lo), magic_bits);
        const __m256i ih = _mm256_sub_epi64(_mm256_castpd_si256(hi), magic_bits);
        __m256i *d = (__m256i *)(acc + t);
        _mm256_storeu_si256(d, _mm256_add_epi64(_mm256_loadu_si256(d), il));
        _mm256_storeu_si256(d + 1, _mm256_add_epi64(_mm256_loadu_si256(d + 1), ih));
    }
    if (t < n)
        codi_imp_accumulate_ref(acc + t, p + t, ldp, G, n - t, w, vn ? vn + t : NULL);
}

void codi_attn_scores_kvq_avx2(int bits, const float *q, int G, int hd, int gs, const uint8_t *kT,
                               size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                               int t0, int n, float *s, size_t lds, float scale) {
#define SC(B, GG) scores_g(q, hd, gs, kT, ldk, ks, km, ldsc, t0, n, s, lds, scale, B, GG)
    if (bits == 8) {
        if (G == 3) SC(8, 3); else if (G == 2) SC(8, 2); else SC(8, 1);
    } else {
        if (G == 3) SC(4, 3); else if (G == 2) SC(4, 2); else SC(4, 1);
    }
#undef SC
}

/* Outputs of NI channel rows (vT, stride ldv) for G weight rows tmp[g]
 * (n slots, scales applied): o[g * hd + i] = sum_t tmp[g][t] code_i(t0+t)
 * + cm[g]. An odd first slot (head = 1) of 4-bit rows is added apart. */
__attribute__((always_inline)) static inline void values_rows(const float *tmp, int n, int head,
                                                             const uint8_t *vT, size_t ldv, int t0,
                                                             float *o, int hd, const float *cm,
                                                             const int bits, const int G, const int NI) {
    __m256 acc[3][4];
    float extra[3][4];
    for (int g = 0; g < G; g++)
        for (int i = 0; i < NI; i++) {
            acc[g][i] = _mm256_setzero_ps();
            extra[g][i] = head ? tmp[(size_t)g * n] * (float)codi_kvq_get(bits, vT + (size_t)i * ldv, (size_t)t0)
                               : 0.0f;
        }
    int t = head;
    for (; t + 8 <= n; t += 8) {
        __m256 w[3];
        for (int g = 0; g < G; g++)
            w[g] = _mm256_loadu_ps(tmp + (size_t)g * n + t);
        for (int i = 0; i < NI; i++) {
            const __m256 c = codes8(vT + (size_t)i * ldv, (size_t)t0 + (size_t)t, bits);
            for (int g = 0; g < G; g++)
                acc[g][i] = _mm256_fmadd_ps(w[g], c, acc[g][i]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int i = 0; i < NI; i++) {
            float r = hsum8(acc[g][i]) + extra[g][i];
            for (int u = t; u < n; u++)
                r += tmp[(size_t)g * n + u] * (float)codi_kvq_get(bits, vT + (size_t)i * ldv, (size_t)t0 + (size_t)u);
            o[(size_t)g * hd + i] = r + cm[g];
        }
}

__attribute__((always_inline)) static inline void values_g(const float *p, size_t ldp, int hd, int gs,
                                                          const uint8_t *vT, size_t ldv,
                                                          const uint16_t *vs, const uint16_t *vm,
                                                          size_t ldsc, int t0, int n, float *o,
                                                          float *tmp, const int bits, const int G) {
    const int ng = hd / gs;
    /* An odd first slot of 4-bit rows is done on its own; the vector loop
     * then starts on a byte boundary. */
    const int head = (bits == 4 && (t0 & 1) && n > 0) ? 1 : 0;
    for (int grp = 0; grp < ng; grp++) {
        const uint16_t *sr = vs + (size_t)grp * ldsc + t0, *mr = vm + (size_t)grp * ldsc + t0;
        float cm[3];
        /* weights times the slot's scale; the minima give one constant */
        for (int g = 0; g < G; g++) {
            const float *pg = p + (size_t)g * ldp;
            float *wg = tmp + (size_t)g * n;
            __m256 cacc = _mm256_setzero_ps();
            int t = 0;
            for (; t + 8 <= n; t += 8) {
                const __m256 pv = _mm256_loadu_ps(pg + t);
                _mm256_storeu_ps(wg + t, _mm256_mul_ps(pv, f16x8(sr + t)));
                cacc = _mm256_fmadd_ps(pv, f16x8(mr + t), cacc);
            }
            float c = hsum8(cacc);
            for (; t < n; t++) {
                wg[t] = pg[t] * _cvtsh_ss(sr[t]);
                c += pg[t] * _cvtsh_ss(mr[t]);
            }
            cm[g] = c;
        }
        /* four channels at a time: each weight vector loaded once for them */
        int i = grp * gs;
        for (; i + 4 <= (grp + 1) * gs; i += 4)
            values_rows(tmp, n, head, vT + (size_t)i * ldv, ldv, t0, o + i, hd, cm, bits, G, 4);
        for (; i < (grp + 1) * gs; i++)
            values_rows(tmp, n, head, vT + (size_t)i * ldv, ldv, t0, o + i, hd, cm, bits, G, 1);
    }
}

void codi_attn_values_kvq_avx2(int bits, const float *p, size_t ldp, int G, int hd, int gs,
                               const uint8_t *vT, size_t ldv, const uint16_t *vs,
                               const uint16_t *vm, size_t ldsc, int t0, int n, float *o,
                               float *tmp) {
#define VA(B, GG) values_g(p, ldp, hd, gs, vT, ldv, vs, vm, ldsc, t0, n, o, tmp, B, GG)
    if (bits == 8) {
        if (G == 3) VA(8, 3); else if (G == 2) VA(8, 2); else VA(8, 1);
    } else {
        if (G == 3) VA(4, 3); else if (G == 2) VA(4, 2); else VA(4, 1);
    }
#undef VA
}

/* Per-channel keys (codi_attn_scores_kvc): one group of CODI_KVC_G = 16
 * slots at a time. The query times the group's scales (8 channels per
 * vector) first, and the query times its minima summed to one constant
 * per head; then per channel its codes for the 16 slots are widened once
 * and multiplied by that channel's scaled query for every head. */
__attribute__((always_inline)) static inline void scores_c(const float *q, int hd, const uint8_t *kT,
                                                          size_t ldk, const uint16_t *ks,
                                                          const uint16_t *km, size_t ldsc, int t0,
                                                          int n, float *s, size_t lds, float scale,
                                                          const int bits, const int G) {
    if (n <= 0)
        return;
    const int j0 = t0 / CODI_KVC_G, j1 = (t0 + n - 1) / CODI_KVC_G;
    float qs[3][1024]; /* head_dim <= 1024 (loader) */
    for (int j = j0; j <= j1; j++) {
        const size_t a = (size_t)j * CODI_KVC_G;
        const uint16_t *sr = ks + (size_t)j * ldsc, *mr = km + (size_t)j * ldsc;
        __m256 acc[3][2];
        float bias[3];
        for (int g = 0; g < G; g++) {
            const float *qg = q + (size_t)g * hd;
            __m256 b = _mm256_setzero_ps();
            int i = 0;
            for (; i + 8 <= hd; i += 8) {
                const __m256 qv = _mm256_loadu_ps(qg + i);
                _mm256_storeu_ps(qs[g] + i, _mm256_mul_ps(qv, f16x8(sr + i)));
                b = _mm256_fmadd_ps(qv, f16x8(mr + i), b);
            }
            bias[g] = hsum8(b);
            for (; i < hd; i++) {
                qs[g][i] = qg[i] * _cvtsh_ss(sr[i]);
                bias[g] += qg[i] * _cvtsh_ss(mr[i]);
            }
            acc[g][0] = acc[g][1] = _mm256_setzero_ps();
        }
        for (int i = 0; i < hd; i++) {
            const uint8_t *row = kT + (size_t)i * ldk;
            const __m256 c0 = codes8(row, a, bits), c1 = codes8(row, a + 8, bits);
            for (int g = 0; g < G; g++) {
                const __m256 w = _mm256_broadcast_ss(qs[g] + i);
                acc[g][0] = _mm256_fmadd_ps(w, c0, acc[g][0]);
                acc[g][1] = _mm256_fmadd_ps(w, c1, acc[g][1]);
            }
        }
        /* the slots of this group inside t0..t0+n-1 */
        const int lo = CODI_MAX(t0, (int)a), hi = CODI_MIN(t0 + n, (int)a + CODI_KVC_G);
        for (int g = 0; g < G; g++) {
            float out[CODI_KVC_G];
            const __m256 b = _mm256_set1_ps(bias[g]), vs = _mm256_set1_ps(scale);
            _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_add_ps(acc[g][0], b), vs));
            _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_add_ps(acc[g][1], b), vs));
            memcpy(s + (size_t)g * lds + (size_t)(lo - t0), out + (lo - (int)a),
                   (size_t)(hi - lo) * sizeof(float));
        }
    }
}

void codi_attn_scores_kvc_avx2(int bits, const float *q, int G, int hd, const uint8_t *kT,
                               size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                               int t0, int n, float *s, size_t lds, float scale) {
#define SC(B, GG) scores_c(q, hd, kT, ldk, ks, km, ldsc, t0, n, s, lds, scale, B, GG)
    if (bits == 8) {
        if (G == 3) SC(8, 3); else if (G == 2) SC(8, 2); else SC(8, 1);
    } else {
        if (G == 3) SC(4, 3); else if (G == 2) SC(4, 2); else SC(4, 1);
    }
#undef SC
}

#endif
