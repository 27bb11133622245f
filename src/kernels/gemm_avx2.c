/* AVX2 matrix-matrix kernels for prefill: y[c][r] = dot(W row r, X row c)
 * for a tile of weight rows and activation rows (tokens), with the weights
 * unpacked once per block for RN tokens and each activation block loaded
 * once for RM rows. The per-pair arithmetic is the vec_dot kernels' (exact
 * integer block sums, one fused multiply-add per block with the product of
 * the two scales), so results equal the vec_dot ones up to the order of
 * the final float additions. Tiles are RM x RN = 4 x 3 (12 accumulators in
 * registers); edges use smaller tiles. */
#include "kernels/gemm.h"

#if defined(__x86_64__) || defined(__i386__)

#include <immintrin.h>

#include "common.h"
#include "tensor/blocks.h"

#define AI __attribute__((always_inline)) static inline

AI float fp16(uint16_t h) { return _cvtsh_ss(h); }

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

/* Pairwise int16 products of unsigned x and signed y, summed to int32. */
AI __m256i madd_pairs(__m256i p16) { return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); }

/* ---------------------------------------------------------------- Q4_1 */

AI void tile_q4_1(int64_t nb, const int RM, const int RN, const uint8_t *w, size_t ldw,
                  const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256 acc[4][3];
    __m128 summ[4][3]; /* lane 1: the offsets m times the activation sums s */
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++) {
            acc[r][c] = _mm256_setzero_ps();
            summ[r][c] = _mm_setzero_ps();
        }
    for (int64_t k = 0; k < nb; k++) {
        __m256i wq[4];
        __m128 wdm[4];
        for (int r = 0; r < RM; r++) {
            const codi_block_q4_1 *b = (const codi_block_q4_1 *)(w + (size_t)r * ldw) + k;
            wq[r] = unpack_nibbles_32(b->qs);
            wdm[r] = _mm_cvtph_ps(_mm_loadu_si32(&b->d)); /* (d, m) */
        }
        for (int c = 0; c < RN; c++) {
            const codi_block_q8_1 *a = (const codi_block_q8_1 *)(x + (size_t)c * ldx) + k;
            const __m256i aq = load256(a->qs);
            const __m128 ads = _mm_cvtph_ps(_mm_loadu_si32(&a->d)); /* (d, s) */
            for (int r = 0; r < RM; r++) {
                const __m128 prod = _mm_mul_ps(wdm[r], ads); /* (d_w d_a, m s) */
                summ[r][c] = _mm_add_ps(summ[r][c], prod);
                const __m256i p = madd_pairs(_mm256_maddubs_epi16(wq[r], aq));
                acc[r][c] = _mm256_fmadd_ps(_mm256_broadcastss_ps(prod), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    for (int c = 0; c < RN; c++)
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] =
                hsum_f32x8(acc[r][c]) + _mm_cvtss_f32(_mm_shuffle_ps(summ[r][c], summ[r][c], 1));
}

/* ---------------------------------------------------------------- Q4_0 */

AI void tile_q4_0(int64_t nb, const int RM, const int RN, const uint8_t *w, size_t ldw,
                  const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256 acc[4][3];
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++)
            acc[r][c] = _mm256_setzero_ps();
    const __m256i eight = _mm256_set1_epi8(8);
    for (int64_t k = 0; k < nb; k++) {
        __m256i wq[4];
        float wd[4];
        for (int r = 0; r < RM; r++) {
            const codi_block_q4_0 *b = (const codi_block_q4_0 *)(w + (size_t)r * ldw) + k;
            wq[r] = unpack_nibbles_32(b->qs);
            wd[r] = fp16(b->d);
        }
        for (int c = 0; c < RN; c++) {
            const codi_block_q8_0 *a = (const codi_block_q8_0 *)(x + (size_t)c * ldx) + k;
            const __m256i aq = load256(a->qs);
            /* (q - 8) . a = q . a - 8 * sum(a), exact in int16 pairs */
            const __m256i off = _mm256_maddubs_epi16(eight, aq);
            const float ad = fp16(a->d);
            for (int r = 0; r < RM; r++) {
                const __m256i p =
                    madd_pairs(_mm256_sub_epi16(_mm256_maddubs_epi16(wq[r], aq), off));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    for (int c = 0; c < RN; c++)
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] = hsum_f32x8(acc[r][c]);
}

/* ---------------------------------------------------------------- Q8_0 */

AI void tile_q8_0(int64_t nb, const int RM, const int RN, const uint8_t *w, size_t ldw,
                  const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256 acc[4][3];
    for (int r = 0; r < RM; r++)
        for (int c = 0; c < RN; c++)
            acc[r][c] = _mm256_setzero_ps();
    for (int64_t k = 0; k < nb; k++) {
        __m256i wa[4], ws[4];
        float wd[4];
        for (int r = 0; r < RM; r++) {
            const codi_block_q8_0 *b = (const codi_block_q8_0 *)(w + (size_t)r * ldw) + k;
            ws[r] = load256(b->qs);
            wa[r] = _mm256_sign_epi8(ws[r], ws[r]); /* |w| */
            wd[r] = fp16(b->d);
        }
        for (int c = 0; c < RN; c++) {
            const codi_block_q8_0 *a = (const codi_block_q8_0 *)(x + (size_t)c * ldx) + k;
            const __m256i aq = load256(a->qs);
            const float ad = fp16(a->d);
            for (int r = 0; r < RM; r++) {
                const __m256i p =
                    madd_pairs(_mm256_maddubs_epi16(wa[r], _mm256_sign_epi8(aq, ws[r])));
                acc[r][c] = _mm256_fmadd_ps(_mm256_set1_ps(wd[r] * ad), _mm256_cvtepi32_ps(p), acc[r][c]);
            }
        }
    }
    for (int c = 0; c < RN; c++)
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] = hsum_f32x8(acc[r][c]);
}

/* ---------------------------------------------------------------- drivers */

/* Cover nr x nc with RM x RN tiles, then the row and column edges with
 * smaller constant-size tiles (every call below has constant RM, RN so the
 * compiler keeps the accumulators in registers). */
#define GEMM_DRIVER(NAME, TILE, BLK)                                                           \
    void NAME(int64_t n, int nr, int nc, const void *vw, size_t ldw, const void *vx,         \
              size_t ldx, float *y, size_t ldy) {                                             \
        const int64_t nb = n / (BLK);                                                          \
        const uint8_t *w = vw, *x = vx;                                                        \
        int r = 0;                                                                             \
        for (; r + 4 <= nr; r += 4) {                                                          \
            const uint8_t *wr = w + (size_t)r * ldw;                                           \
            int c = 0;                                                                         \
            for (; c + 3 <= nc; c += 3)                                                        \
                TILE(nb, 4, 3, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
            if (c + 2 == nc)                                                                   \
                TILE(nb, 4, 2, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
            else if (c + 1 == nc)                                                              \
                TILE(nb, 4, 1, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
        }                                                                                      \
        for (; r < nr; r++) {                                                                  \
            const uint8_t *wr = w + (size_t)r * ldw;                                           \
            int c = 0;                                                                         \
            for (; c + 3 <= nc; c += 3)                                                        \
                TILE(nb, 1, 3, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
            for (; c < nc; c++)                                                                \
                TILE(nb, 1, 1, wr, ldw, x + (size_t)c * ldx, ldx, y + (size_t)c * ldy + r, ldy); \
        }                                                                                      \
    }

GEMM_DRIVER(codi_gemm_q4_1_q8_1_avx2, tile_q4_1, CODI_QK)
GEMM_DRIVER(codi_gemm_q4_0_q8_0_avx2, tile_q4_0, CODI_QK)
GEMM_DRIVER(codi_gemm_q8_0_q8_0_avx2, tile_q8_0, CODI_QK)

#endif
