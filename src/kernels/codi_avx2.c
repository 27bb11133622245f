/* AVX2 kernels of the Q4G / Q8G group types (see kernels/codi_avx2.h).
 * The arithmetic per 32-element sub-block is that of ggml's Q4_1 / Q8_0
 * x86 kernels (maddubs + madd into int32, one FMA with the product of the
 * scales); the group scale (and min) is loaded once per G / 32 sub-blocks.
 * G is a compile-time constant in every entry point. */
#include "kernels/codi_avx2.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>
#include <string.h>

#include "common.h"
#include "tensor/blocks.h"
#include "tensor/quant_codi.h"

#define AI __attribute__((always_inline)) static inline

AI __m256i load256(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

AI __m256i unpack_nibbles_32(const uint8_t *p) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    const __m256i both = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0F));
}

AI float hsum_f32x8(__m256 v) {
    __m128 r = _mm_add_ps(_mm256_extractf128_ps(v, 1), _mm256_castps256_ps128(v));
    r = _mm_add_ps(r, _mm_movehl_ps(r, r));
    r = _mm_add_ss(r, _mm_movehdup_ps(r));
    return _mm_cvtss_f32(r);
}

AI __m256i madd_pairs(__m256i p16) { return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); }

AI float fp16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ---- dot products ---- */

AI void dot_q4g(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    __m128 summs = _mm_setzero_ps();
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q4G_BYTES(G)) {
        /* (d, m) adjacent: one conversion; times (d_y, s_y) gives the
         * scale (lane 0) and the min term (lane 1). */
        const __m128 xdm = _mm_cvtph_ps(_mm_loadu_si32(b));
        for (int k = 0; k < G / 32; k++, y++) {
            const __m128 prod = _mm_mul_ps(xdm, _mm_cvtph_ps(_mm_loadu_si32(&y->d)));
            summs = _mm_add_ps(summs, prod);
            const __m256i p = madd_pairs(_mm256_maddubs_epi16(unpack_nibbles_32(b + 4 + 16 * k), load256(y->qs)));
            acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc);
        }
    }
    *s = hsum_f32x8(acc) + _mm_cvtss_f32(_mm_shuffle_ps(summs, summs, 1));
}

AI void dot_q8g(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_0 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q8G_BYTES(G)) {
        const float d = fp16(b);
        for (int k = 0; k < G / 32; k++, y++) {
            const __m256i w = load256(b + 2 + 32 * k);
            const __m256i p = madd_pairs(
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(load256(y->qs), w)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * _cvtsh_ss(y->d)), _mm256_cvtepi32_ps(p), acc);
        }
    }
    *s = hsum_f32x8(acc);
}

AI void dot_q8g_q8_1(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y = vy;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q8G_BYTES(G)) {
        const float d = fp16(b);
        for (int k = 0; k < G / 32; k++, y++) {
            const __m256i w = load256(b + 2 + 32 * k);
            const __m256i p = madd_pairs(
                _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(load256(y->qs), w)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * _cvtsh_ss(y->d)), _mm256_cvtepi32_ps(p), acc);
        }
    }
    *s = hsum_f32x8(acc);
}

/* GQSA: as Q4G, the activation blocks found through each block's index. */
AI void dot_gqsa(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y0 = vy;
    __m256 acc = _mm256_setzero_ps();
    __m128 summs = _mm_setzero_ps();
    for (int64_t i = 0; i < n / G; i++, b += CODI_GQSA_BYTES(G)) {
        const __m128 xdm = _mm_cvtph_ps(_mm_loadu_si32(b));
        uint16_t idx;
        memcpy(&idx, b + 4, 2);
        const codi_block_q8_1 *y = y0 + (size_t)idx * (G / 32);
        for (int k = 0; k < G / 32; k++, y++) {
            const __m128 prod = _mm_mul_ps(xdm, _mm_cvtph_ps(_mm_loadu_si32(&y->d)));
            summs = _mm_add_ps(summs, prod);
            const __m256i p = madd_pairs(_mm256_maddubs_epi16(unpack_nibbles_32(b + 6 + 16 * k), load256(y->qs)));
            acc = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc);
        }
    }
    *s = hsum_f32x8(acc) + _mm_cvtss_f32(_mm_shuffle_ps(summs, summs, 1));
}

/* W4A8: the whole row in integers. Per 32-block maddubs(q, x) -> int32
 * lanes; a group's lanes times its u8 scale (mullo) into an int32 vector,
 * the zero points through the blocks' activation sums; flushed into an
 * int64 every 16 groups (|sg (q - z) x| <= 255 * 15 * 127 per element
 * keeps 16 * 128 elements inside int32); one float multiply at the end.
 * Bit-exact with the reference. */
AI void dot_w4a8(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_a8 *y = vy;
    int64_t total = 0, corr = 0;
    __m256i acc = _mm256_setzero_si256();
    const int64_t ng = n / G;
    for (int64_t g = 0; g < ng; g++, b += CODI_W4A8_BYTES(G)) {
        __m256i v = _mm256_setzero_si256();
        int sx = 0;
        for (int k = 0; k < G / 32; k++, y++) {
            v = _mm256_add_epi32(v, madd_pairs(_mm256_maddubs_epi16(unpack_nibbles_32(b + 2 + 16 * k), load256(y->qs))));
            sx += y->sum;
        }
        acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(v, _mm256_set1_epi32(b[0])));
        corr += (int64_t)b[0] * (int8_t)b[1] * sx;
        if ((g & 15) == 15 || g == ng - 1) {
            const __m256i lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc));
            const __m256i hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc, 1));
            const __m256i t = _mm256_add_epi64(lo, hi);
            int64_t l[4];
            _mm256_storeu_si256((__m256i *)l, t);
            total += l[0] + l[1] + l[2] + l[3];
            acc = _mm256_setzero_si256();
        }
    }
    *s = n > 0 ? ((const codi_block_a8 *)vy)->d * (float)(total - corr) : 0.0f;
}

/* ---- gemm tiles: RM weight rows x RN tokens ---- */

AI void tile_w4a8(int64_t n, const int G, const int RM, const int RN, const uint8_t *w, size_t ldw,
                  const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256i acc[4][3];
    int64_t total[4][3], corr[4][3];
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++) {
            acc[r][c] = _mm256_setzero_si256();
            total[r][c] = corr[r][c] = 0;
        }
    const int64_t ng = n / G;
    for (int64_t g = 0; g < ng; g++) {
        int sg[4], z[4];
        __m256i v[4][3];
        for (int r = 0; r < RM; r++) {
            const uint8_t *b = w + (size_t)r * ldw + (size_t)g * CODI_W4A8_BYTES(G);
            sg[r] = b[0];
            z[r] = (int8_t)b[1];
            for (int c = 0; c < RN; c++)
                v[r][c] = _mm256_setzero_si256();
        }
        int sx[3] = {0, 0, 0};
        for (int k = 0; k < G / 32; k++) {
            __m256i wq[4];
            for (int r = 0; r < RM; r++)
                wq[r] = unpack_nibbles_32(w + (size_t)r * ldw + (size_t)g * CODI_W4A8_BYTES(G) + 2 + 16 * k);
            for (int c = 0; c < RN; c++) {
                const codi_block_a8 *a = (const codi_block_a8 *)(x + (size_t)c * ldx) + g * (G / 32) + k;
                const __m256i aq = load256(a->qs);
                sx[c] += a->sum;
                for (int r = 0; r < RM; r++)
                    v[r][c] = _mm256_add_epi32(v[r][c], madd_pairs(_mm256_maddubs_epi16(wq[r], aq)));
            }
        }
        for (int r = 0; r < RM; r++)
            for (int c = 0; c < RN; c++) {
                acc[r][c] = _mm256_add_epi32(acc[r][c], _mm256_mullo_epi32(v[r][c], _mm256_set1_epi32(sg[r])));
                corr[r][c] += (int64_t)sg[r] * z[r] * sx[c];
            }
        if ((g & 15) == 15 || g == ng - 1)
            for (int r = 0; r < RM; r++)
                for (int c = 0; c < RN; c++) {
                    const __m256i t = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc[r][c])),
                                                       _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc[r][c], 1)));
                    int64_t l[4];
                    _mm256_storeu_si256((__m256i *)l, t);
                    total[r][c] += l[0] + l[1] + l[2] + l[3];
                    acc[r][c] = _mm256_setzero_si256();
                }
    }
    for (int c = 0; c < RN; c++) {
        const float d = n > 0 ? ((const codi_block_a8 *)(x + (size_t)c * ldx))->d : 0.0f;
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] = d * (float)(total[r][c] - corr[r][c]);
    }
}

AI void tile_gqsa(int64_t n, const int G, const int RM, const int RN, const uint8_t *w, size_t ldw,
                  const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256 acc[4][3];
    __m128 summ[4][3];
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++) {
            acc[r][c] = _mm256_setzero_ps();
            summ[r][c] = _mm_setzero_ps();
        }
    for (int64_t g = 0; g < n / G; g++) {
        __m128 wdm[4];
        size_t off[4];
        for (int r = 0; r < RM; r++) {
            const uint8_t *b = w + (size_t)r * ldw + (size_t)g * CODI_GQSA_BYTES(G);
            uint16_t idx;
            memcpy(&idx, b + 4, 2);
            off[r] = (size_t)idx * (G / 32);
            wdm[r] = _mm_cvtph_ps(_mm_loadu_si32(b));
        }
        for (int k = 0; k < G / 32; k++) {
            __m256i wq[4];
            for (int r = 0; r < RM; r++)
                wq[r] = unpack_nibbles_32(w + (size_t)r * ldw + (size_t)g * CODI_GQSA_BYTES(G) + 6 + 16 * k);
            for (int c = 0; c < RN; c++) {
                const codi_block_q8_1 *a0 = (const codi_block_q8_1 *)(x + (size_t)c * ldx) + k;
                for (int r = 0; r < RM; r++) {
                    const codi_block_q8_1 *a = a0 + off[r];
                    const __m128 prod = _mm_mul_ps(wdm[r], _mm_cvtph_ps(_mm_loadu_si32(&a->d)));
                    summ[r][c] = _mm_add_ps(summ[r][c], prod);
                    const __m256i p = madd_pairs(_mm256_maddubs_epi16(wq[r], load256(a->qs)));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[r][c]);
                }
            }
        }
    }
    for (int c = 0; c < RN; c++)
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] =
                hsum_f32x8(acc[r][c]) + _mm_cvtss_f32(_mm_shuffle_ps(summ[r][c], summ[r][c], 1));
}


AI void tile_q4g(int64_t n, const int G, const int RM, const int RN, const uint8_t *w, size_t ldw,
                 const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256 acc[4][3];
    __m128 summ[4][3];
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++) {
            acc[r][c] = _mm256_setzero_ps();
            summ[r][c] = _mm_setzero_ps();
        }
    for (int64_t g = 0; g < n / G; g++) {
        __m128 wdm[4];
        for (int r = 0; r < RM; r++)
            wdm[r] = _mm_cvtph_ps(_mm_loadu_si32(w + (size_t)r * ldw + (size_t)g * CODI_Q4G_BYTES(G)));
        for (int k = 0; k < G / 32; k++) {
            __m256i wq[4];
            for (int r = 0; r < RM; r++)
                wq[r] = unpack_nibbles_32(w + (size_t)r * ldw + (size_t)g * CODI_Q4G_BYTES(G) + 4 + 16 * k);
            for (int c = 0; c < RN; c++) {
                const codi_block_q8_1 *a = (const codi_block_q8_1 *)(x + (size_t)c * ldx) + g * (G / 32) + k;
                const __m256i aq = load256(a->qs);
                const __m128 ads = _mm_cvtph_ps(_mm_loadu_si32(&a->d));
                for (int r = 0; r < RM; r++) {
                    const __m128 prod = _mm_mul_ps(wdm[r], ads);
                    summ[r][c] = _mm_add_ps(summ[r][c], prod);
                    const __m256i p = madd_pairs(_mm256_maddubs_epi16(wq[r], aq));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[r][c]);
                }
            }
        }
    }
    for (int c = 0; c < RN; c++)
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] =
                hsum_f32x8(acc[r][c]) + _mm_cvtss_f32(_mm_shuffle_ps(summ[r][c], summ[r][c], 1));
}

AI void tile_q8g(int64_t n, const int G, const int RM, const int RN, const uint8_t *w, size_t ldw,
                 const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256 acc[4][3];
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++)
            acc[r][c] = _mm256_setzero_ps();
    for (int64_t g = 0; g < n / G; g++) {
        float wd[4];
        for (int r = 0; r < RM; r++)
            wd[r] = fp16(w + (size_t)r * ldw + (size_t)g * CODI_Q8G_BYTES(G));
        for (int k = 0; k < G / 32; k++) {
            __m256i wa[4], ws[4];
            for (int r = 0; r < RM; r++) {
                ws[r] = load256(w + (size_t)r * ldw + (size_t)g * CODI_Q8G_BYTES(G) + 2 + 32 * k);
                wa[r] = _mm256_sign_epi8(ws[r], ws[r]);
            }
            for (int c = 0; c < RN; c++) {
                const codi_block_q8_0 *a = (const codi_block_q8_0 *)(x + (size_t)c * ldx) + g * (G / 32) + k;
                const __m256i aq = load256(a->qs);
                const float ad = _cvtsh_ss(a->d);
                for (int r = 0; r < RM; r++) {
                    const __m256i p = madd_pairs(_mm256_maddubs_epi16(wa[r], _mm256_sign_epi8(aq, ws[r])));
                    acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), _mm256_cvtepi32_ps(p), acc[r][c]);
                }
            }
        }
    }
    for (int c = 0; c < RN; c++)
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] = hsum_f32x8(acc[r][c]);
}

/* Cover nr x nc with 4 x 3 tiles, edges with constant smaller tiles. */
#define GEMM_DRIVER(NAME, TILE, G)                                                                \
    void NAME(int64_t n, int nr, int nc, const void *vw, size_t ldw, const void *vx, size_t ldx,  \
              float *y, size_t ldy) {                                                             \
        const uint8_t *w = vw, *x = vx;                                                           \
        int r = 0;                                                                                \
        for (; r + 4 <= nr; r += 4) {                                                             \
            const uint8_t *wr = w + (size_t)r * ldw;                                              \
            int c = 0;                                                                            \
            for (; c + 3 <= nc; c += 3)                                                           \
                TILE(n, G, 4, 3, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
            if (c + 2 == nc)                                                                      \
                TILE(n, G, 4, 2, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
            else if (c + 1 == nc)                                                                 \
                TILE(n, G, 4, 1, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
        }                                                                                         \
        for (; r < nr; r++) {                                                                     \
            const uint8_t *wr = w + (size_t)r * ldw;                                              \
            int c = 0;                                                                            \
            for (; c + 3 <= nc; c += 3)                                                           \
                TILE(n, G, 1, 3, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
            for (; c < nc; c++)                                                                   \
                TILE(n, G, 1, 1, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
        }                                                                                         \
    }

#define DEFINE_GROUP(G)                                                                           \
    void codi_vec_dot_q4g##G##_q8_1_avx2(int64_t n, float *s, const void *x, const void *y) {     \
        dot_q4g(n, s, x, y, G);                                                                   \
    }                                                                                             \
    void codi_vec_dot_q8g##G##_q8_0_avx2(int64_t n, float *s, const void *x, const void *y) {     \
        dot_q8g(n, s, x, y, G);                                                                   \
    }                                                                                             \
    GEMM_DRIVER(codi_gemm_q4g##G##_q8_1_avx2, tile_q4g, G)                                        \
    GEMM_DRIVER(codi_gemm_q8g##G##_q8_0_avx2, tile_q8g, G)                                        \
    void codi_vec_dot_q8g##G##_q8_1_avx2(int64_t n, float *s, const void *x, const void *y) {     \
        dot_q8g_q8_1(n, s, x, y, G);                                                              \
    }                                                                                             \
    void codi_vec_dot_gqsa##G##_q8_1_avx2(int64_t n, float *s, const void *x, const void *y) {    \
        dot_gqsa(n, s, x, y, G);                                                                  \
    }                                                                                             \
    GEMM_DRIVER(codi_gemm_gqsa##G##_q8_1_avx2, tile_gqsa, G)                                      \
    void codi_vec_dot_w4a8_##G##_a8_avx2(int64_t n, float *s, const void *x, const void *y) {     \
        dot_w4a8(n, s, x, y, G);                                                                  \
    }                                                                                             \
    GEMM_DRIVER(codi_gemm_w4a8_##G##_a8_avx2, tile_w4a8, G)
DEFINE_GROUP(32)
DEFINE_GROUP(64)
DEFINE_GROUP(128)

#endif
