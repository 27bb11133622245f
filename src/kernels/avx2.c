/* AVX2 + FMA + F16C kernels; see avx2.h for the contract. CMake compiles
 * every file named *avx2* with -mavx2 -mfma -mf16c, so nothing here may run
 * before dispatch.c has probed the CPU.
 *
 * The integer technique is ggml's x86 one:
 *   - maddubs multiplies unsigned by signed bytes and adds adjacent pairs
 *     into int16; madd against ones (or against per-sub-block scales)
 *     adds those pairs into int32. Every bound below keeps the int16 step
 *     from saturating as long as the activations lie in -127..127.
 *   - a signed x signed product is |x| * (y with x's sign), so that
 *     maddubs applies (sign_epi8 does both halves).
 *   - weight offsets (-8, -16, -32, -4) are applied either to the bytes
 *     before the product or as a second maddubs of the offset.
 * Float accumulation follows ggml's AVX2 code (per-lane FMA, the same
 * horizontal sums), so results track llama.cpp on x86 as well as the
 * reference. */
#include "kernels/avx2.h"
#include "kernels/kernels.h"
#include "kernels/softmax.h"

#if defined(CODI_HAVE_AVX2_KERNELS)

#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "tensor/blocks.h"
#include "tensor/types.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* fused ops only where written as such */
#endif

/* ---- helpers ---- */

static inline int64_t nblocks(int64_t n, int64_t bs) {
    CODI_ASSERT(n >= 0 && n % bs == 0);
    return n / bs;
}

static inline float fp16(uint16_t h) { return _cvtsh_ss(h); }

static inline uint16_t to_fp16(float f) {
    return (uint16_t)_cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}

/* Sum of 8 floats: upper half onto lower, then 4 -> 2 -> 1. */
static inline float hsum_f32x8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline float hsum_f32x4(__m128 r) {
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline int hsum_i32x8(__m256i v) {
    __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v),
                              _mm256_extracti128_si256(v, 1));
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

static inline int hsum_i32x4(__m128i r) {
    r = _mm_add_epi32(r, _mm_unpackhi_epi64(r, r));
    r = _mm_add_epi32(r, _mm_shuffle_epi32(r, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(r);
}

static inline __m256i load256(const void *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}

/* 16 bytes of nibble pairs -> 32 bytes 0..15: the low nibbles (elements
 * 0..15 of a legacy block), then the high ones (16..31). */
static inline __m256i unpack_nibbles_32(const uint8_t *p) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v),
                                                 _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

/* Little-endian 32-bit mask -> 32 bytes, byte j 0xFF where bit j is set. */
static inline __m256i expand_bits_32(const uint8_t *p) {
    uint32_t bits;
    memcpy(&bits, p, sizeof bits);
    /* Byte j takes source byte j / 8 (the shuffle works per 128-bit lane,
     * and every lane holds all four source bytes). */
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1,
                                          1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2,
                                          3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bytes = _mm256_shuffle_epi8(_mm256_set1_epi32((int)bits), pick);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_cmpeq_epi8(_mm256_and_si256(bytes, bit), bit);
}

/* Sums of four adjacent products x*y as 8 int32, x unsigned. The int16
 * pair step is exact while 2 * x * |y| <= 32767: x <= 128 with |y| <= 127. */
static inline __m256i dot_u8_i8(__m256i ux, __m256i y) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(ux, y), _mm256_set1_epi16(1));
}

/* The same for signed x: |x| * (y signed like x). */
static inline __m256i dot_i8_i8(__m256i x, __m256i y) {
    return dot_u8_i8(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
}

/* Sixteen int16: eight copies of scale byte 2k (sign-extended), then eight
 * of byte 2k + 1. Matches a maddubs result over 32 bytes that span two
 * 16-element sub-blocks. */
static inline __m256i scale_pair_i16(__m128i scales8, int k) {
    const __m128i idx = _mm_add_epi8(
        _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
        _mm_set1_epi8((char)(2 * k)));
    return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(scales8, idx));
}

/* Sixteen int16 copies of byte k of a 16-byte vector held in both lanes. */
static inline __m256i scale_bcast_i16(__m256i scales8x2, int k) {
    return _mm256_shuffle_epi8(scales8x2, _mm256_set1_epi16((short)(0x8000 | k)));
}

/* ---- F32, F16 ---- */

/* Four accumulators of eight, reduced as ggml's GGML_F32_VEC_REDUCE. */
static inline float reduce_f32x8x4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    a0 = _mm256_add_ps(a0, a2);
    a1 = _mm256_add_ps(a1, a3);
    a0 = _mm256_add_ps(a0, a1);
    const __m128 t0 = _mm_add_ps(_mm256_castps256_ps128(a0),
                                 _mm256_extractf128_ps(a0, 1));
    const __m128 t1 = _mm_hadd_ps(t0, t0);
    return _mm_cvtss_f32(_mm_hadd_ps(t1, t1));
}

void codi_vec_dot_f32_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const float *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), _mm256_loadu_ps(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), _mm256_loadu_ps(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), _mm256_loadu_ps(y + i + 24), a3);
    }
    double sum = reduce_f32x8x4(a0, a1, a2, a3);
    for (; i < n; i++)
        sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}

static inline __m256 load_f16x8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

void codi_vec_dot_f16_avx2(int64_t n, float *s, const void *vx, const void *vy) {
    const uint16_t *x = vx, *y = vy;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16x8(x + i), load_f16x8(y + i), a0);
        a1 = _mm256_fmadd_ps(load_f16x8(x + i + 8), load_f16x8(y + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16x8(x + i + 16), load_f16x8(y + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16x8(x + i + 24), load_f16x8(y + i + 24), a3);
    }
    double sum = reduce_f32x8x4(a0, a1, a2, a3);
    for (; i < n; i++)
        sum += (double)(fp16(x[i]) * fp16(y[i]));
    *s = (float)sum;
}

/* m <= 3 dot products of x against y[0..m) at once, each computed exactly as
 * codi_vec_dot_f16_avx2 computes it (same accumulators, same order), with
 * the loads and conversions of x shared. */
__attribute__((always_inline)) static inline void dot_f16_m(int64_t n, float *s, const uint16_t *x,
                                                           const uint16_t *const *y, const int M) {
    __m256 a[3][4];
    for (int j = 0; j < M; j++)
        for (int k = 0; k < 4; k++)
            a[j][k] = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            const __m256 xv = load_f16x8(x + i + 8 * k);
            for (int j = 0; j < M; j++)
                a[j][k] = _mm256_fmadd_ps(xv, load_f16x8(y[j] + i + 8 * k), a[j][k]);
        }
    for (int j = 0; j < M; j++) {
        double sum = reduce_f32x8x4(a[j][0], a[j][1], a[j][2], a[j][3]);
        for (int64_t t = i; t < n; t++)
            sum += (double)(fp16(x[t]) * fp16(y[j][t]));
        s[j] = (float)sum;
    }
}

void codi_dot_f16_multi_avx2(int64_t n, float *s, const uint16_t *x, const uint16_t *const *y, int m) {
    for (int j = 0; j < m; j += 3) {
        const int r = m - j;
        if (r >= 3)
            dot_f16_m(n, s + j, x, y + j, 3);
        else if (r == 2)
            dot_f16_m(n, s + j, x, y + j, 2);
        else
            dot_f16_m(n, s + j, x, y + j, 1);
    }
}

/* Attention scores against a transposed fp16 K cache: s[g][t] = scale *
 * sum_i q[g][i] * kT[i][t0 + t] for t < n, g < G (G <= 6). Eight keys per
 * lane vector, so no horizontal sums: one FMA per (query, dim, 8 keys).
 * Every score is the same FMA chain over i (then times scale) whichever
 * step (16, 8 or 1 keys) and group computes it, so a score depends only on
 * its query and key: not on n, G or the query's place in the group. */
__attribute__((always_inline)) static inline void scores_g(const float *q, int hd, const uint16_t *kT,
                                                          size_t ldk, int n, float *s, size_t lds,
                                                          float scale, const int G) {
    const __m256 vs = _mm256_set1_ps(scale);
    int t = 0;
    for (; t + 16 <= n; t += 16) {
        __m256 a[6][2];
        _Pragma("GCC unroll 6")
        for (int g = 0; g < G; g++)
            a[g][0] = a[g][1] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i++) {
            const __m256 k0 = load_f16x8(kT + (size_t)i * ldk + t);
            const __m256 k1 = load_f16x8(kT + (size_t)i * ldk + t + 8);
            _Pragma("GCC unroll 6")
            for (int g = 0; g < G; g++) {
                const __m256 qv = _mm256_broadcast_ss(q + (size_t)g * hd + i);
                a[g][0] = _mm256_fmadd_ps(qv, k0, a[g][0]);
                a[g][1] = _mm256_fmadd_ps(qv, k1, a[g][1]);
            }
        }
        _Pragma("GCC unroll 6")
        for (int g = 0; g < G; g++) {
            _mm256_storeu_ps(s + (size_t)g * lds + t, _mm256_mul_ps(a[g][0], vs));
            _mm256_storeu_ps(s + (size_t)g * lds + t + 8, _mm256_mul_ps(a[g][1], vs));
        }
    }
    /* the last keys (fewer than 8) as the 8 ending at n: the ones already
     * done come out the same, so rows of 8 keys or more need no scalar
     * tail (each of its keys read a channel row's line of its own) */
    for (; t < n && n >= 8; t += 8) {
        if (t + 8 > n)
            t = n - 8;
        __m256 a[6];
        _Pragma("GCC unroll 6")
        for (int g = 0; g < G; g++)
            a[g] = _mm256_setzero_ps();
        for (int i = 0; i < hd; i++) {
            const __m256 k0 = load_f16x8(kT + (size_t)i * ldk + t);
            _Pragma("GCC unroll 6")
            for (int g = 0; g < G; g++)
                a[g] = _mm256_fmadd_ps(_mm256_broadcast_ss(q + (size_t)g * hd + i), k0, a[g]);
        }
        _Pragma("GCC unroll 6")
        for (int g = 0; g < G; g++)
            _mm256_storeu_ps(s + (size_t)g * lds + t, _mm256_mul_ps(a[g], vs));
    }
    for (; t < n; t++)
        for (int g = 0; g < G; g++) {
            float acc = 0.0f;
            for (int i = 0; i < hd; i++)
                acc = fmaf(q[(size_t)g * hd + i], fp16(kT[(size_t)i * ldk + t]), acc);
            s[(size_t)g * lds + t] = acc * scale;
        }
}

void codi_attn_scores_f16_avx2(const float *q, int G, int hd, const uint16_t *kT, size_t ldk, int n,
                               float *s, size_t lds, float scale) {
    /* Up to 3 rows (one token's heads of a KV head) as before; more (a
     * tile of tokens) 6 at a time: each K vector converted once for 6
     * queries, 12 accumulators. */
    const int step = G > 3 ? 6 : 3;
    for (int g = 0; g < G; g += step) {
        const float *qg = q + (size_t)g * hd;
        float *sg = s + (size_t)g * lds;
        switch (CODI_MIN(G - g, step)) {
        case 6: scores_g(qg, hd, kT, ldk, n, sg, lds, scale, 6); break;
        case 5: scores_g(qg, hd, kT, ldk, n, sg, lds, scale, 5); break;
        case 4: scores_g(qg, hd, kT, ldk, n, sg, lds, scale, 4); break;
        case 3: scores_g(qg, hd, kT, ldk, n, sg, lds, scale, 3); break;
        case 2: scores_g(qg, hd, kT, ldk, n, sg, lds, scale, 2); break;
        default: scores_g(qg, hd, kT, ldk, n, sg, lds, scale, 1); break;
        }
    }
}

/* 2 weight rows x 4 V rows per group: 8 accumulators, 2 weight vectors
 * and a V vector in registers, 6 loads per 8 FMAs. On the causal sweep of
 * a 512-token prefill (one KV head, tiles of 4 tokens x 3 heads) 1.30 ms,
 * against 1.44 for 4 x 2 and 1.6 for 3 x 4 (spills). VAL_HD: head sizes up
 * to which the tails run after all groups (values_tail). */
enum { VAL_J = 2, VAL_I = 4, VAL_HD = 512 };

/* ds[i] += (double)(v_i[t] * p[t]) for t = t0 .. n - 1 in key order, every
 * channel i < hd: what values_group's tail loop adds, as the same float
 * products and double sums, 8 channels at a time (8 keys of 8 channel rows
 * converted, transposed, one product vector per key) instead of 4
 * channels gathered element by element. Decode rows (n of a few dozen to a
 * few hundred) spent most of this kernel in those tails. */
static void values_tail(const float *p, int t0, int n, const uint16_t *vT, size_t ldv, int hd,
                        double *ds) {
    if (t0 >= n)
        return;
    int c = 0;
    /* a last chunk of fewer than 8 keys is read as the 8 keys ending at n
     * (never past the row's n keys), its keys in the upper lanes */
    for (; n >= 8 && c + 8 <= hd; c += 8) {
        __m256d lo = _mm256_loadu_pd(ds + c), hi = _mm256_loadu_pd(ds + c + 4);
        for (int t = t0; t < n; t += 8) {
            const int cnt = CODI_MIN(8, n - t), ts = cnt == 8 ? t : n - 8, off = t - ts;
            __m256 r[8];
            for (int k = 0; k < 8; k++)
                r[k] = load_f16x8(vT + (size_t)(c + k) * ldv + ts);
            /* 8 x 8 transpose: g[k] lane c' = channel c + c' at key t + k */
            const __m256 a0 = _mm256_unpacklo_ps(r[0], r[1]), a1 = _mm256_unpackhi_ps(r[0], r[1]);
            const __m256 a2 = _mm256_unpacklo_ps(r[2], r[3]), a3 = _mm256_unpackhi_ps(r[2], r[3]);
            const __m256 a4 = _mm256_unpacklo_ps(r[4], r[5]), a5 = _mm256_unpackhi_ps(r[4], r[5]);
            const __m256 a6 = _mm256_unpacklo_ps(r[6], r[7]), a7 = _mm256_unpackhi_ps(r[6], r[7]);
            const __m256 b0 = _mm256_shuffle_ps(a0, a2, 0x44), b1 = _mm256_shuffle_ps(a0, a2, 0xEE);
            const __m256 b2 = _mm256_shuffle_ps(a1, a3, 0x44), b3 = _mm256_shuffle_ps(a1, a3, 0xEE);
            const __m256 b4 = _mm256_shuffle_ps(a4, a6, 0x44), b5 = _mm256_shuffle_ps(a4, a6, 0xEE);
            const __m256 b6 = _mm256_shuffle_ps(a5, a7, 0x44), b7 = _mm256_shuffle_ps(a5, a7, 0xEE);
            const __m256 g[8] = {
                _mm256_permute2f128_ps(b0, b4, 0x20), _mm256_permute2f128_ps(b1, b5, 0x20),
                _mm256_permute2f128_ps(b2, b6, 0x20), _mm256_permute2f128_ps(b3, b7, 0x20),
                _mm256_permute2f128_ps(b0, b4, 0x31), _mm256_permute2f128_ps(b1, b5, 0x31),
                _mm256_permute2f128_ps(b2, b6, 0x31), _mm256_permute2f128_ps(b3, b7, 0x31)};
            for (int k = 0; k < cnt; k++) {
                const __m256 pr = _mm256_mul_ps(g[off + k], _mm256_broadcast_ss(p + t + k));
                lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(pr)));
                hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(pr, 1)));
            }
        }
        _mm256_storeu_pd(ds + c, lo);
        _mm256_storeu_pd(ds + c + 4, hi);
    }
    for (; c < hd; c++)
        for (int t = t0; t < n; t++)
            ds[c] += (double)(fp16(vT[(size_t)c * ldv + t]) * p[t]);
}

/* Outputs of NJ <= 4 weight rows p[j] (n[j] keys) against NI <= 4 V rows,
 * each computed as dot_f16_m computes it. Accumulator k of the 32-key
 * blocks (lanes 8k..8k+7) sees the same products in the same order as
 * there, only the four accumulators are built one after another, so NJ x NI
 * of them fit in registers and each V vector is converted once for all NJ
 * rows. Then the same reduction, and each row's tail (its keys past its
 * last whole block) summed in double in key order: the NJ x NI tails side
 * by side, independent chains. */
__attribute__((always_inline)) static inline void values_group(const float *p, size_t ldp, const int *n,
                                                              const uint16_t *vT, size_t ldv,
                                                              float *const *o, int i0, const int NJ,
                                                              const int NI, double (*ds)[VAL_HD]) {
    int nb[4], nbmin = INT32_MAX, lo = INT32_MAX, hi = 0;
    _Pragma("GCC unroll 4")
    for (int j = 0; j < NJ; j++) {
        nb[j] = n[j] / 32;
        nbmin = CODI_MIN(nbmin, nb[j]);
        lo = CODI_MIN(lo, nb[j] * 32);
        hi = CODI_MAX(hi, n[j]);
    }
    __m256 part[4][4][4];
    _Pragma("GCC unroll 1")
    for (int k = 0; k < 4; k++) {
        __m256 a[4][4];
        _Pragma("GCC unroll 4")
        for (int j = 0; j < NJ; j++)
            _Pragma("GCC unroll 4")
            for (int i = 0; i < NI; i++)
                a[j][i] = _mm256_setzero_ps();
        for (int b = 0; b < nbmin; b++) {
            const size_t t = (size_t)b * 32 + 8 * (size_t)k;
            __m256 pv[4];
            _Pragma("GCC unroll 4")
            for (int j = 0; j < NJ; j++)
                pv[j] = _mm256_loadu_ps(p + (size_t)j * ldp + t);
            _Pragma("GCC unroll 4")
            for (int i = 0; i < NI; i++) {
                const __m256 v = load_f16x8(vT + (size_t)i * ldv + t);
                _Pragma("GCC unroll 4")
                for (int j = 0; j < NJ; j++)
                    a[j][i] = _mm256_fmadd_ps(v, pv[j], a[j][i]);
            }
        }
        /* rows with more keys: their remaining blocks alone */
        _Pragma("GCC unroll 4")
        for (int j = 0; j < NJ; j++)
            for (int b = nbmin; b < nb[j]; b++) {
                const size_t t = (size_t)b * 32 + 8 * (size_t)k;
                const __m256 pv = _mm256_loadu_ps(p + (size_t)j * ldp + t);
                _Pragma("GCC unroll 4")
                for (int i = 0; i < NI; i++)
                    a[j][i] = _mm256_fmadd_ps(load_f16x8(vT + (size_t)i * ldv + t), pv, a[j][i]);
            }
        _Pragma("GCC unroll 4")
        for (int j = 0; j < NJ; j++)
            _Pragma("GCC unroll 4")
            for (int i = 0; i < NI; i++)
                part[j][i][k] = a[j][i];
    }
    double sum[4][4];
    _Pragma("GCC unroll 4")
    for (int j = 0; j < NJ; j++)
        _Pragma("GCC unroll 4")
        for (int i = 0; i < NI; i++)
            sum[j][i] = reduce_f32x8x4(part[j][i][0], part[j][i][1], part[j][i][2], part[j][i][3]);
    if (ds) { /* the tails later, for all channels at once (values_tails) */
        _Pragma("GCC unroll 4")
        for (int j = 0; j < NJ; j++)
            _Pragma("GCC unroll 4")
            for (int i = 0; i < NI; i++)
                ds[j][i0 + i] = sum[j][i];
        return;
    }
    for (int t = lo; t < hi; t++) {
        float v[4];
        _Pragma("GCC unroll 4")
        for (int i = 0; i < NI; i++)
            v[i] = fp16(vT[(size_t)i * ldv + t]);
        _Pragma("GCC unroll 4")
        for (int j = 0; j < NJ; j++)
            if (t >= nb[j] * 32 && t < n[j]) {
                const float pt = p[(size_t)j * ldp + t];
                _Pragma("GCC unroll 4")
                for (int i = 0; i < NI; i++)
                    sum[j][i] += (double)(v[i] * pt);
            }
    }
    _Pragma("GCC unroll 4")
    for (int j = 0; j < NJ; j++)
        _Pragma("GCC unroll 4")
        for (int i = 0; i < NI; i++)
            o[j][i0 + i] = (float)sum[j][i];
}

void codi_attn_values_f16_avx2(const float *p, size_t ldp, const int *n, int m, const uint16_t *vT,
                               size_t ldv, int hd, float *const *o) {
    double ds[VAL_J][VAL_HD];
    double (*dsp)[VAL_HD] = hd <= VAL_HD ? ds : NULL;
    for (int j0 = 0; j0 < m; j0 += VAL_J) {
        const int NJ = CODI_MIN(VAL_J, m - j0);
        const float *pj = p + (size_t)j0 * ldp;
        const int *nj = n + j0;
        float *const *oj = o + j0;
        for (int i0 = 0; i0 < hd; i0 += VAL_I) {
            const uint16_t *vi = vT + (size_t)i0 * ldv;
            const int NI = CODI_MIN(VAL_I, hd - i0);
#define VG(a, b)                                                                 \
    case (a - 1) * 4 + b - 1:                                                    \
        values_group(pj, ldp, nj, vi, ldv, oj, i0, a, b, dsp);                   \
        break;
            switch ((NJ - 1) * 4 + NI - 1) {
                VG(1, 1) VG(1, 2) VG(1, 3) VG(1, 4)
                VG(2, 1) VG(2, 2) VG(2, 3) VG(2, 4)
            }
#undef VG
        }
        if (dsp)
            for (int j = 0; j < NJ; j++) {
                values_tail(pj + (size_t)j * ldp, nj[j] / 32 * 32, nj[j], vT, ldv, hd, ds[j]);
                for (int i = 0; i < hd; i++)
                    oj[j][i] = (float)ds[j][i];
            }
    }
}

/* ---- attention with an online softmax ---- */

/* Query rows per sweep over the keys: a tile of 8 tokens x 3 heads. More
 * rows are run as further sweeps. */
enum { ONL_ROWS = 24 };

/* [sum of a0's lanes, a1's, a2's, a3's] */
static inline __m128 hsum_f32x8x4(__m256 a0, __m256 a1, __m256 a2, __m256 a3) {
    const __m256 h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    return _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
}

/* o[j][i0 + i] = o[j][i0 + i] * alpha[j] + sum_{t < nb} p[j][t] vT[i][t]
 * for NJ <= 2 weight rows (stride CODI_ATTN_BLOCK) and NI <= 4 V rows:
 * the whole 8-key vectors into 8 accumulators (each V vector converted
 * once for both rows), reduced together, the last nb % 8 keys one by one. */
__attribute__((always_inline)) static inline void online_values(const float *p, const uint16_t *vT,
                                                               size_t ldv, int nb, const float *alpha,
                                                               float *const *o, int i0, const int NJ,
                                                               const int NI) {
    __m256 a[2][4];
    _Pragma("GCC unroll 2")
    for (int j = 0; j < 2; j++)
        _Pragma("GCC unroll 4")
        for (int i = 0; i < 4; i++)
            a[j][i] = _mm256_setzero_ps();
    int t = 0;
    for (; t + 8 <= nb; t += 8) {
        __m256 pv[2];
        _Pragma("GCC unroll 2")
        for (int j = 0; j < NJ; j++)
            pv[j] = _mm256_loadu_ps(p + (size_t)j * CODI_ATTN_BLOCK + t);
        _Pragma("GCC unroll 4")
        for (int i = 0; i < NI; i++) {
            const __m256 v = load_f16x8(vT + (size_t)i * ldv + t);
            _Pragma("GCC unroll 2")
            for (int j = 0; j < NJ; j++)
                a[j][i] = _mm256_fmadd_ps(v, pv[j], a[j][i]);
        }
    }
    _Pragma("GCC unroll 2")
    for (int j = 0; j < NJ; j++) {
        __m128 s = hsum_f32x8x4(a[j][0], a[j][1], a[j][2], a[j][3]);
        if (t < nb) {
            float sv[4];
            _mm_storeu_ps(sv, s);
            for (int u = t; u < nb; u++) {
                const float pu = p[(size_t)j * CODI_ATTN_BLOCK + u];
                _Pragma("GCC unroll 4")
                for (int i = 0; i < NI; i++)
                    sv[i] += pu * fp16(vT[(size_t)i * ldv + u]);
            }
            s = _mm_loadu_ps(sv);
        }
        float *oj = o[j] + i0;
        if (NI == 4) {
            _mm_storeu_ps(oj, _mm_fmadd_ps(_mm_loadu_ps(oj), _mm_set1_ps(alpha[j]), s));
        } else {
            float sv[4];
            _mm_storeu_ps(sv, s);
            for (int i = 0; i < NI; i++)
                oj[i] = oj[i] * alpha[j] + sv[i];
        }
    }
}

static float max_row(const float *x, int n) {
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int t = 0;
    for (; t + 8 <= n; t += 8)
        vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + t));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float m = _mm_cvtss_f32(m4);
    for (; t < n; t++)
        m = x[t] > m ? x[t] : m;
    return m;
}

/* x[t] -= m for t < n */
static void sub_row(float *x, int n, float m) {
    const __m256 vm = _mm256_set1_ps(m);
    int t = 0;
    for (; t + 8 <= n; t += 8)
        _mm256_storeu_ps(x + t, _mm256_sub_ps(_mm256_loadu_ps(x + t), vm));
    for (; t < n; t++)
        x[t] -= m;
}

static float sum_row(const float *x, int n) {
    __m256 vs = _mm256_setzero_ps();
    int t = 0;
    for (; t + 8 <= n; t += 8)
        vs = _mm256_add_ps(vs, _mm256_loadu_ps(x + t));
    float s = hsum_f32x8(vs);
    for (; t < n; t++)
        s += x[t];
    return s;
}

/* Per sweep of up to ONL_ROWS rows and per block of keys: the block's
 * scores by codi_attn_scores_f16_avx2 (the rows that see fewer keys get a
 * few scores they ignore), each row's exponentials by codi_exp_neg_avx2
 * (also the rescale factors, all rows in one call), then the weights times
 * V two rows by four V rows at a time. */
void codi_attn_online_f16_avx2(const float *q, int M, int hd, const int *n, const uint16_t *kT,
                               size_t ldk, const uint16_t *vT, size_t ldv, float scale, float *const *o) {
    for (int r0 = 0; r0 < M; r0 += ONL_ROWS) {
        const int R = CODI_MIN(ONL_ROWS, M - r0);
        const int *nr = n + r0;
        float *const *orr = o + r0;
        const float *qr = q + (size_t)r0 * hd;
        float m[ONL_ROWS], l[ONL_ROWS], alpha[ONL_ROWS];
        float s[ONL_ROWS * CODI_ATTN_BLOCK];
        int nmax = 0;
        for (int r = 0; r < R; r++) {
            m[r] = -INFINITY;
            l[r] = 0.0f;
            memset(orr[r], 0, (size_t)hd * sizeof(float));
            nmax = CODI_MAX(nmax, nr[r]);
        }
        for (int t0 = 0; t0 < nmax; t0 += CODI_ATTN_BLOCK) {
            const int nb = CODI_MIN(CODI_ATTN_BLOCK, nmax - t0);
            codi_attn_scores_f16_avx2(qr, R, hd, kT + t0, ldk, nb, s, CODI_ATTN_BLOCK, scale);
            float mold[ONL_ROWS];
            for (int r = 0; r < R; r++) {
                float *sr = s + (size_t)r * CODI_ATTN_BLOCK;
                const int k = CODI_MAX(0, CODI_MIN(nr[r] - t0, nb));
                const float mn = k > 0 ? CODI_MAX(m[r], max_row(sr, k)) : m[r];
                /* m_old - m_new: -inf for the first block (e^ = 0), 0
                 * for a row with no keys here (e^ = 1) */
                mold[r] = k > 0 ? m[r] - mn : 0.0f;
                sub_row(sr, k, mn);
                codi_exp_neg_avx2(sr, sr, k);
                for (int t = k; t < nb; t++)
                    sr[t] = 0.0f;
                m[r] = mn;
            }
            codi_exp_neg_avx2(mold, alpha, R);
            for (int r = 0; r < R; r++)
                l[r] = l[r] * alpha[r] + sum_row(s + (size_t)r * CODI_ATTN_BLOCK, nb);
            for (int j0 = 0; j0 < R; j0 += 2) {
                const int NJ = CODI_MIN(2, R - j0);
                const float *pj = s + (size_t)j0 * CODI_ATTN_BLOCK;
                for (int i0 = 0; i0 < hd; i0 += 4) {
                    const uint16_t *vi = vT + (size_t)i0 * ldv + t0;
                    const int NI = CODI_MIN(4, hd - i0);
#define OV(a, b)                                                                      \
    case (a - 1) * 4 + b - 1:                                                         \
        online_values(pj, vi, ldv, nb, alpha + j0, orr + j0, i0, a, b);               \
        break;
                    switch ((NJ - 1) * 4 + NI - 1) {
                        OV(1, 1) OV(1, 2) OV(1, 3) OV(1, 4)
                        OV(2, 1) OV(2, 2) OV(2, 3) OV(2, 4)
                    }
#undef OV
                }
            }
        }
        for (int r = 0; r < R; r++) {
            const float inv = l[r] > 0.0f ? 1.0f / l[r] : 0.0f;
            for (int i = 0; i < hd; i++)
                orr[r][i] *= inv;
        }
    }
}

/* ---- legacy quants: one 32-element block per step ---- */

/* Mat-vec (decode) runs these dots over rows that follow each other in
 * memory (MoE experts, matrices left in the file's layout): asking for the
 * line 2 KiB ahead keeps enough lines in flight, as the x8 kernels do. */
enum { DOT_PF = 2048 };
#define DOT_PREFETCH(p) _mm_prefetch((const char *)(p) + DOT_PF, _MM_HINT_T0)

void codi_vec_dot_q4_0_q8_0_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q4_0 *x = vx;
    const codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        DOT_PREFETCH(&x[i]);
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        /* q - 8 in -8..7 */
        const __m256i qx = _mm256_sub_epi8(unpack_nibbles_32(x[i].qs),
                                           _mm256_set1_epi8(8));
        const __m256i p = dot_i8_i8(qx, load256(y[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_f32x8(acc);
}

void codi_vec_dot_q4_1_q8_1_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q4_1 *x = vx;
    const codi_block_q8_1 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    __m256 acc = _mm256_setzero_ps();
    /* (d, m) of the weights and (d, s) of the activations are adjacent
     * halves: one conversion each, and one product gives both the scale
     * d_x d_y (lane 0) and the offset term m s (lane 1). */
    __m128 summs = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        DOT_PREFETCH(&x[i]);
        const __m128 xdm = _mm_cvtph_ps(_mm_loadu_si32(&x[i].d));
        const __m128 yds = _mm_cvtph_ps(_mm_loadu_si32(&y[i].d));
        const __m128 prod = _mm_mul_ps(xdm, yds);
        summs = _mm_add_ps(summs, prod);
        const __m256 d = _mm256_broadcastss_ps(prod);
        const __m256i p = dot_u8_i8(unpack_nibbles_32(x[i].qs), load256(y[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_f32x8(acc) + _mm_cvtss_f32(_mm_shuffle_ps(summs, summs, 1));
}

void codi_vec_dot_q5_0_q8_0_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q5_0 *x = vx;
    const codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        /* q - 16 as a byte: the nibble, with 0xF0 (-16) or-ed in where the
         * fifth bit is clear. */
        const __m256i hi = _mm256_andnot_si256(expand_bits_32(x[i].qh),
                                               _mm256_set1_epi8((char)0xF0));
        const __m256i qx = _mm256_or_si256(unpack_nibbles_32(x[i].qs), hi);
        const __m256i p = dot_i8_i8(qx, load256(y[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_f32x8(acc);
}

void codi_vec_dot_q5_1_q8_1_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q5_1 *x = vx;
    const codi_block_q8_1 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        summs += fp16(x[i].m) * fp16(y[i].s);
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        const __m256i hi = _mm256_and_si256(expand_bits_32(x[i].qh),
                                            _mm256_set1_epi8(0x10));
        const __m256i qx = _mm256_or_si256(unpack_nibbles_32(x[i].qs), hi);
        const __m256i p = dot_u8_i8(qx, load256(y[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_f32x8(acc) + summs;
}

void codi_vec_dot_q8_0_q8_0_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q8_0 *x = vx;
    const codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        DOT_PREFETCH(&x[i]);
        const __m256 d = _mm256_set1_ps(fp16(x[i].d) * fp16(y[i].d));
        const __m256i p = dot_i8_i8(load256(x[i].qs), load256(y[i].qs));
        acc = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(p), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---- k-quants: one 256-element super-block per step ---- */

/* Q2_K: 16 sub-blocks of 16, 4-bit scale and 4-bit min in each byte of
 * scales[]. Quants for elements 128h + 32t + l sit at bits 2t of
 * qs[32h + l]. */
void codi_vec_dot_q2_K_q8_K_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q2_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nblocks(n, CODI_QK_K);
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m128i m4 = _mm_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16(x[i].d);
        const float mdmin = -y[i].d * fp16(x[i].dmin);

        const __m128i sm = _mm_loadu_si128((const __m128i *)x[i].scales);
        const __m128i scales8 = _mm_and_si128(sm, m4);
        const __m128i mins8 = _mm_and_si128(_mm_srli_epi16(sm, 4), m4);
        /* mins against the 16-element sums of y */
        const __m256i mp = _mm256_madd_epi16(_mm256_cvtepu8_epi16(mins8),
                                             load256(y[i].bsums));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(mdmin), _mm256_cvtepi32_ps(mp), acc);

        const uint8_t *q2 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++, q2 += 32, q8 += 128) {
            const __m256i bits = load256(q2);
            const __m256i q0 = _mm256_and_si256(bits, m3);
            const __m256i q1 = _mm256_and_si256(_mm256_srli_epi16(bits, 2), m3);
            const __m256i q2v = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m3);
            const __m256i q3 = _mm256_and_si256(_mm256_srli_epi16(bits, 6), m3);
            const __m256i p0 = _mm256_madd_epi16(scale_pair_i16(scales8, 4 * h + 0),
                                                 _mm256_maddubs_epi16(q0, load256(q8)));
            const __m256i p1 = _mm256_madd_epi16(scale_pair_i16(scales8, 4 * h + 1),
                                                 _mm256_maddubs_epi16(q1, load256(q8 + 32)));
            const __m256i p2 = _mm256_madd_epi16(scale_pair_i16(scales8, 4 * h + 2),
                                                 _mm256_maddubs_epi16(q2v, load256(q8 + 64)));
            const __m256i p3 = _mm256_madd_epi16(scale_pair_i16(scales8, 4 * h + 3),
                                                 _mm256_maddubs_epi16(q3, load256(q8 + 96)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(_mm256_add_epi32(p0, p1),
                                                           _mm256_add_epi32(p2, p3)));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}

/* The sixteen 6-bit Q3_K scales, offset removed (-32..31), as bytes. */
static inline __m128i q3_K_scales(const uint8_t *packed) {
    uint32_t a[3];
    memcpy(a, packed, sizeof a);
    const uint32_t lo4 = 0x0F0F0F0Fu, lo2 = 0x03030303u;
    const __m128i sc = _mm_setr_epi32(
        (int)((a[0] & lo4) | (((a[2] >> 0) & lo2) << 4)),        /* 0..3 */
        (int)((a[1] & lo4) | (((a[2] >> 2) & lo2) << 4)),        /* 4..7 */
        (int)(((a[0] >> 4) & lo4) | (((a[2] >> 4) & lo2) << 4)), /* 8..11 */
        (int)(((a[1] >> 4) & lo4) | (((a[2] >> 6) & lo2) << 4))); /* 12..15 */
    return _mm_sub_epi8(sc, _mm_set1_epi8(32));
}

/* Q3_K: as Q2_K's layout, plus hmask bit 4h + t of byte l for element
 * 128h + 32t + l; a clear bit means -4. Computed as
 * maddubs(low2, y) - maddubs(4 * !bit, y). */
void codi_vec_dot_q3_K_q8_K_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q3_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nblocks(n, CODI_QK_K);
    const __m256i m3 = _mm256_set1_epi8(3);
    const __m256i four = _mm256_set1_epi8(4);
    const __m256i zero = _mm256_setzero_si256();
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16(x[i].d);
        const __m128i scales8 = q3_K_scales(x[i].scales);
        const __m256i hbits = load256(x[i].hmask);
        const uint8_t *q3 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++, q3 += 32) {
            const __m256i bits = load256(q3);
            for (int t = 0; t < 4; t++, q8 += 32) {
                const __m256i lo = _mm256_and_si256(_mm256_srli_epi16(bits, 2 * t), m3);
                const __m256i hb = _mm256_and_si256(hbits,
                                                    _mm256_set1_epi8((char)(1u << (4 * h + t))));
                const __m256i sub = _mm256_and_si256(_mm256_cmpeq_epi8(hb, zero), four);
                const __m256i qy = load256(q8);
                const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(lo, qy),
                                                     _mm256_maddubs_epi16(sub, qy));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair_i16(scales8, 4 * h + t), p16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}

/* The eight 6-bit scales (bytes 0..7) and mins (bytes 8..15) of a
 * Q4_K/Q5_K block: codi_k4_scale_min for j = 0..7 at once. */
static inline __m128i k4_scales_mins(const uint8_t *packed) {
    uint32_t a[3];
    memcpy(a, packed, sizeof a);
    const uint32_t lo6 = 0x3F3F3F3Fu, lo4 = 0x0F0F0F0Fu, lo2 = 0x03030303u;
    return _mm_setr_epi32(
        (int)(a[0] & lo6),                                       /* sc 0..3 */
        (int)((a[2] & lo4) | (((a[0] >> 6) & lo2) << 4)),        /* sc 4..7 */
        (int)(a[1] & lo6),                                       /* m 0..3 */
        (int)(((a[2] >> 4) & lo4) | (((a[1] >> 6) & lo2) << 4))); /* m 4..7 */
}

/* Sum over the eight 32-element sub-blocks of min[j] * (bsums[2j] +
 * bsums[2j+1]), as four int32 partial sums. */
static inline __m128i k4_mins_dot(__m128i sm, const int16_t *bsums) {
    const __m128i b0 = _mm_loadu_si128((const __m128i *)bsums);
    const __m128i b1 = _mm_loadu_si128((const __m128i *)(bsums + 8));
    const __m128i ysum = _mm_hadd_epi16(b0, b1); /* |sum| <= 4064 */
    return _mm_madd_epi16(_mm_cvtepu8_epi16(_mm_srli_si128(sm, 8)), ysum);
}

/* Q4_K: 4 chunks of 64; low nibbles of qs[32c + l] are element 64c + l
 * (sub-block 2c), high nibbles element 64c + 32 + l (sub-block 2c + 1). */
void codi_vec_dot_q4_K_q8_K_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q4_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nblocks(n, CODI_QK_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16(x[i].d);
        const float mdmin = -y[i].d * fp16(x[i].dmin);
        const __m128i sm = k4_scales_mins(x[i].scales);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(mdmin),
                             _mm_cvtepi32_ps(k4_mins_dot(sm, y[i].bsums)), acc_m);

        const __m256i sm2 = _mm256_broadcastsi128_si256(sm);
        const uint8_t *q4 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++, q4 += 32, q8 += 64) {
            const __m256i bits = load256(q4);
            const __m256i lo = _mm256_and_si256(bits, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4);
            const __m256i pl = _mm256_madd_epi16(scale_bcast_i16(sm2, 2 * c),
                                                 _mm256_maddubs_epi16(lo, load256(q8)));
            const __m256i ph = _mm256_madd_epi16(scale_bcast_i16(sm2, 2 * c + 1),
                                                 _mm256_maddubs_epi16(hi, load256(q8 + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc) + hsum_f32x4(acc_m);
}

/* Q5_K: Q4_K plus a fifth bit: bit 2c of qh[l] for the low nibble of
 * chunk c, bit 2c + 1 for the high one. */
void codi_vec_dot_q5_K_q8_K_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q5_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nblocks(n, CODI_QK_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i b4 = _mm256_set1_epi8(0x10);
    __m256 acc = _mm256_setzero_ps();
    float summs = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16(x[i].d);
        const float mdmin = -y[i].d * fp16(x[i].dmin);
        const __m128i sm = k4_scales_mins(x[i].scales);
        summs += mdmin * (float)hsum_i32x4(k4_mins_dot(sm, y[i].bsums));

        const __m256i sm2 = _mm256_broadcastsi128_si256(sm);
        __m256i hbits = load256(x[i].qh);
        const uint8_t *q5 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int c = 0; c < 4; c++, q5 += 32, q8 += 64) {
            /* bits 0 and 1 of each byte of hbits belong to this chunk;
             * the 16-bit shifts spill only into bits that are masked off */
            const __m256i bits = load256(q5);
            const __m256i lo = _mm256_or_si256(
                _mm256_and_si256(bits, m4),
                _mm256_and_si256(_mm256_slli_epi16(hbits, 4), b4));
            const __m256i hi = _mm256_or_si256(
                _mm256_and_si256(_mm256_srli_epi16(bits, 4), m4),
                _mm256_and_si256(_mm256_slli_epi16(hbits, 3), b4));
            hbits = _mm256_srli_epi16(hbits, 2);
            const __m256i pl = _mm256_madd_epi16(scale_bcast_i16(sm2, 2 * c),
                                                 _mm256_maddubs_epi16(lo, load256(q8)));
            const __m256i ph = _mm256_madd_epi16(scale_bcast_i16(sm2, 2 * c + 1),
                                                 _mm256_maddubs_epi16(hi, load256(q8 + 32)));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc) + summs;
}

/* Q6_K: per half h (128 elements), ql[64h + l] holds elements l (low
 * nibble) and l + 64 (high), ql[64h + 32 + l] elements l + 32 and l + 96;
 * qh[32h + l] holds their two top bits at bits 0, 2, 4, 6. The -32 offset
 * is a second maddubs of 32 * y. */
void codi_vec_dot_q6_K_q8_K_avx2(int64_t n, float *s, const void *vx,
                                 const void *vy) {
    const codi_block_q6_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nblocks(n, CODI_QK_K);
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m256i m30 = _mm256_set1_epi8(0x30);
    const __m256i m32 = _mm256_set1_epi8(32);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const float d = y[i].d * fp16(x[i].d);
        const __m128i scales8 = _mm_loadu_si128((const __m128i *)x[i].scales);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *q8 = y[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        for (int h = 0; h < 2; h++, ql += 64, qh += 32, q8 += 128) {
            const __m256i l1 = load256(ql);
            const __m256i l2 = load256(ql + 32);
            const __m256i hb = load256(qh);
            __m256i q[4];
            q[0] = _mm256_or_si256(_mm256_and_si256(l1, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(hb, 4), m30));
            q[1] = _mm256_or_si256(_mm256_and_si256(l2, m4),
                                   _mm256_and_si256(_mm256_slli_epi16(hb, 2), m30));
            q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                   _mm256_and_si256(hb, m30));
            q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l2, 4), m4),
                                   _mm256_and_si256(_mm256_srli_epi16(hb, 2), m30));
            for (int t = 0; t < 4; t++) {
                const __m256i qy = load256(q8 + 32 * t);
                const __m256i p16 = _mm256_sub_epi16(_mm256_maddubs_epi16(q[t], qy),
                                                     _mm256_maddubs_epi16(m32, qy));
                sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(scale_pair_i16(scales8, 4 * h + t), p16));
            }
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    *s = hsum_f32x8(acc);
}

/* ---- activation quantizers ---- */

static inline float hmax_f32x8(__m256 v) {
    __m128 r = _mm_max_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_max_ps(r, _mm_movehl_ps(r, r));
    r = _mm_max_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

static inline __m256 abs_f32x8(__m256 v) {
    return _mm256_andnot_ps(_mm256_set1_ps(-0.0f), v);
}

/* roundf() on eight floats: nearest, halves away from zero (the reference
 * rounds so; round_ps has only ties-to-even). v - trunc(v) is exact. */
static inline __m256 round_half_away(__m256 v) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 frac = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    const __m256 up = _mm256_cmp_ps(frac, _mm256_set1_ps(0.5f), _CMP_GE_OQ);
    const __m256 one = _mm256_or_ps(_mm256_set1_ps(1.0f), _mm256_and_ps(v, sign));
    return _mm256_add_ps(t, _mm256_and_ps(up, one));
}

/* Thirty-two int32 (in -128..127) -> 32 int8 in order. */
static inline void store_i8x32(int8_t *dst, __m256i a, __m256i b, __m256i c, __m256i e) {
    /* packs work per 128-bit lane: the result holds 4-element groups in
     * the order 0 2 4 6 1 3 5 7; the permute puts them back. */
    const __m256i ab = _mm256_packs_epi32(a, b);
    const __m256i ce = _mm256_packs_epi32(c, e);
    const __m256i all = _mm256_packs_epi16(ab, ce);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256((__m256i *)dst, _mm256_permutevar8x32_epi32(all, perm));
}

/* The low byte of each int32, sign-extended: what the reference's
 * (int8_t) cast of a float converted by cvttss2si leaves. Only a row of
 * magnitude below ~1e-36 (1 / d overflows) gets values outside -127..127. */
static inline __m256i low_byte_i32(__m256i v) {
    return _mm256_srai_epi32(_mm256_slli_epi32(v, 24), 24);
}

/* One 32-element block, as codi_quantize_row_q8_0_ref; returns the quant
 * sum (for Q8_1) and writes the fp16 scale to *dh, d to *dout. */
static inline int quantize_block_q8(const float *x, int8_t *qs, uint16_t *dh,
                                    float *dout) {
    __m256 v[4];
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, abs_f32x8(v[k]));
    }
    const float d = hmax_f32x8(amax) / 127;
    const float id = codi_inv_scale(d);
    *dh = to_fp16(d);
    *dout = d;
    const __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++)
        q[k] = low_byte_i32(_mm256_cvttps_epi32(round_half_away(_mm256_mul_ps(v[k], vid))));
    store_i8x32(qs, q[0], q[1], q[2], q[3]);
    return hsum_i32x8(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]),
                                       _mm256_add_epi32(q[2], q[3])));
}

void codi_quantize_row_q8_0_avx2(const float *x, void *vy, int64_t n) {
    codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        float d;
        (void)quantize_block_q8(x, y[i].qs, &y[i].d, &d);
    }
}

void codi_quantize_row_q8_1_avx2(const float *x, void *vy, int64_t n) {
    codi_block_q8_1 *y = vy;
    const int64_t nb = nblocks(n, CODI_QK);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        float d;
        const int sum = quantize_block_q8(x, y[i].qs, &y[i].d, &d);
        y[i].s = to_fp16(sum * d);
    }
}

/* Sums of four groups of 16 quants: g[k] = q[2k] + q[2k + 1] (eight
 * elements each) -> their four totals, in order. */
static inline __m128i sum16_x4(const __m256i *q) {
    const __m256i s0 = _mm256_add_epi32(q[0], q[1]);
    const __m256i s1 = _mm256_add_epi32(q[2], q[3]);
    const __m256i s2 = _mm256_add_epi32(q[4], q[5]);
    const __m256i s3 = _mm256_add_epi32(q[6], q[7]);
    /* per lane: [s0 s1 s2 s3] partial sums of its four elements */
    const __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(s0, s1),
                                        _mm256_hadd_epi32(s2, s3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

void codi_quantize_row_q8_K_avx2(const float *x, void *vy, int64_t n) {
    codi_block_q8_K *y = vy;
    const int64_t nb = nblocks(n, CODI_QK_K);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        __m256 vmax = _mm256_setzero_ps();
        for (int k = 0; k < CODI_QK_K; k += 8)
            vmax = _mm256_max_ps(abs_f32x8(_mm256_loadu_ps(x + k)), vmax);
        const float amax = hmax_f32x8(vmax);
        if (!amax) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* The reference keeps the sign of the first element of largest
         * magnitude. */
        float max = 0.0f;
        const __m256 va = _mm256_set1_ps(amax);
        for (int k = 0; k < CODI_QK_K; k += 8) {
            const __m256 v = _mm256_loadu_ps(x + k);
            const int m = _mm256_movemask_ps(_mm256_cmp_ps(abs_f32x8(v), va, _CMP_EQ_OQ));
            if (m) {
                max = x[k + __builtin_ctz((unsigned)m)];
                break;
            }
        }
        const float iscale = -127.f / max;
        const __m256 vs = _mm256_set1_ps(iscale);
        /* The reference's nearest_int (add 1.5 * 2^23, read the low
         * mantissa bits: ties to even), its MIN(127, v) and int8_t cast,
         * step for step, so even a row whose iscale overflows matches. */
        const __m256 magic = _mm256_set1_ps(12582912.f);
        const __m256i mant = _mm256_set1_epi32(0x007FFFFF);
        const __m256i half = _mm256_set1_epi32(0x00400000);
        const __m256i q127 = _mm256_set1_epi32(127);
        __m256i q[CODI_QK_K / 8];
        for (int k = 0; k < CODI_QK_K / 8; k++) {
            const __m256 f = _mm256_add_ps(_mm256_mul_ps(vs, _mm256_loadu_ps(x + 8 * k)), magic);
            const __m256i v = _mm256_sub_epi32(_mm256_and_si256(_mm256_castps_si256(f), mant), half);
            q[k] = low_byte_i32(_mm256_min_epi32(v, q127));
        }
        for (int k = 0; k < CODI_QK_K / 8; k += 4)
            store_i8x32(y[i].qs + 8 * k, q[k], q[k + 1], q[k + 2], q[k + 3]);
        for (int g = 0; g < 2; g++) {
            const __m128i lo = sum16_x4(q + 16 * g);
            const __m128i hi = sum16_x4(q + 16 * g + 8);
            _mm_storeu_si128((__m128i *)(y[i].bsums + 8 * g), _mm_packs_epi32(lo, hi));
        }
        y[i].d = 1 / iscale;
    }
}

/* ---- fp16 rows ---- */

/* F16C quiets signalling NaNs; the scalar conversion keeps the payload as
 * it is. The rare row with a NaN takes the scalar path for those lanes. */
void codi_fp16_to_fp32_row_avx2(const uint16_t *x, float *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = load_f16x8(x + i);
        _mm256_storeu_ps(y + i, v);
        int nan = _mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
        while (nan) {
            const int k = __builtin_ctz((unsigned)nan);
            y[i + k] = codi_fp16_to_fp32(x[i + k]);
            nan &= nan - 1;
        }
    }
    for (; i < n; i++)
        y[i] = codi_fp16_to_fp32(x[i]);
}

void codi_fp32_to_fp16_row_avx2(const float *x, uint16_t *y, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        y[i] = to_fp16(x[i]);
}

void codi_dequantize_row_f16_avx2(const void *x, float *y, int64_t n) {
    codi_fp16_to_fp32_row_avx2(x, y, n);
}

void codi_quantize_row_f16_avx2(const float *x, void *y, int64_t n) {
    codi_fp32_to_fp16_row_avx2(x, y, n);
}

#else
typedef int codi_avx2_unused; /* not an x86 build: nothing to compile */
#endif
