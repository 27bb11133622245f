/* AVX2 kernels on the x8 layouts (kernels/repack.h). One call runs ng
 * groups of 8 rows against nc activation rows, 4 tokens at a time: each
 * weight vector is loaded and unpacked once per 4 tokens, and each 32-bit
 * lane accumulates one row, so results are stored 8 rows at once with no
 * horizontal sums. Tested against the reference vec_dot on the original
 * rows (tests/test_kernels.c, test_gemm_x8). */
#include "kernels/avx2.h"

#if defined(CODI_HAVE_AVX2_KERNELS)

#include <immintrin.h>
#include <string.h>

#include "kernels/repack.h"
#include "tensor/blocks.h"
#include "tensor/types.h"

enum { TILE = 4 };

#ifndef X8_PF
#define X8_PF 2048
#endif
/* Decode is bound by how many weight lines are in flight: every tile asks
 * for the lines X8_PF bytes ahead. On llama1b with 2 threads this took
 * tg32 from 38 to 47 tokens/s (Q4_0) and from 24 to 27 (Q8_0); batched
 * decode of 4 and 8 sequences gained 30% and 15%; prefill is unchanged
 * (docs/kernels.md). */
__attribute__((always_inline)) static inline void prefetch_ahead(const uint8_t *b, size_t bytes) {
    _Pragma("GCC unroll 8")
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch((const char *)(b + X8_PF + o), _MM_HINT_T0);
}

static inline __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

static inline float fp16(uint16_t h) { return _cvtsh_ss(h); }

/* ---- Q4_1 x Q8_1: (d_w d_y) sum q y + m_w s_y per block ---- */

__attribute__((always_inline)) static inline void q4_1_tile(int64_t nb, const uint8_t *wg, int T,
                                                            const uint8_t *const *xr,
                                                            float *const *yr) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[TILE];
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * (sizeof(codi_block_q4_1) * CODI_X8_ROWS);
        prefetch_ahead(b, sizeof(codi_block_q4_1) * CODI_X8_ROWS);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16)));
        __m256i s[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            s[t] = _mm256_setzero_si256();
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 4; k++) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(b + 32 + 32 * k));
            const __m256i lo = _mm256_and_si256(p, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const int8_t *q = ((const codi_block_q8_1 *)xr[t])[i].qs + 8 * k;
                /* 8 maddubs of q <= 15 against |y| <= 128 stay below 2^15 */
                s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(lo, bcast4(q)));
                s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(hi, bcast4(q + 4)));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const codi_block_q8_1 *yb = (const codi_block_q8_1 *)xr[t] + i;
            const __m256 sum = _mm256_cvtepi32_ps(_mm256_madd_epi16(s[t], ones));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(fp16(yb->d))), sum, acc[t]);
            acc[t] = _mm256_fmadd_ps(mw, _mm256_set1_ps(fp16(yb->s)), acc[t]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(yr[t], acc[t]);
}

/* ---- Q8_0 x Q8_0: |w| times y with w's sign, per 4-byte quad ---- */

__attribute__((always_inline)) static inline void q8_0_tile(int64_t nb, const uint8_t *wg, int T,
                                                            const uint8_t *const *xr,
                                                            float *const *yr) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[TILE];
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        acc[t] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * (sizeof(codi_block_q8_0) * CODI_X8_ROWS);
        prefetch_ahead(b, sizeof(codi_block_q8_0) * CODI_X8_ROWS);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        __m256i s[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            s[t] = _mm256_setzero_si256();
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) {
            const __m256i w = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * k));
            const __m256i aw = _mm256_sign_epi8(w, w);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const __m256i y = bcast4(((const codi_block_q8_0 *)xr[t])[i].qs + 4 * k);
                /* one maddubs pair reaches 2 * 128 * 127: widen each */
                s[t] = _mm256_add_epi32(s[t], _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(y, w)), ones));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const float dy = fp16(((const codi_block_q8_0 *)xr[t])[i].d);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dy)), _mm256_cvtepi32_ps(s[t]), acc[t]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(yr[t], acc[t]);
}

/* ---- Q4_0 x Q8_0: (q - 8) y = q y - 8 y, with the blocks' sums of y
 * computed once per slice of blocks for all groups ---- */

enum { SLICE = 256 };

__attribute__((always_inline)) static inline void q4_0_tile(int64_t nb, const uint8_t *wg, int T,
                                                            const uint8_t *const *xr,
                                                            const float (*dy)[SLICE],
                                                            const int32_t (*s8)[SLICE],
                                                            float *const *yr, int first) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 acc[TILE];
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        acc[t] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(yr[t]);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * (sizeof(codi_block_q4_0) * CODI_X8_ROWS);
        prefetch_ahead(b, sizeof(codi_block_q4_0) * CODI_X8_ROWS);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        __m256i s[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            s[t] = _mm256_setzero_si256();
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 4; k++) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(b + 16 + 32 * k));
            const __m256i lo = _mm256_and_si256(p, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const int8_t *q = ((const codi_block_q8_0 *)xr[t])[i].qs + 8 * k;
                s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(lo, bcast4(q)));
                s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(hi, bcast4(q + 4)));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const __m256i si = _mm256_sub_epi32(_mm256_madd_epi16(s[t], ones), _mm256_set1_epi32(s8[t][i]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_set1_ps(dy[t][i])), _mm256_cvtepi32_ps(si), acc[t]);
        }
    }
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(yr[t], acc[t]);
}

/* 8 * (sum of the 32 quants) and the scale of activation blocks [0, ns). */
static void q8_0_sums(const codi_block_q8_0 *x, int64_t ns, float *dy, int32_t *s8) {
    const __m256i one8 = _mm256_set1_epi8(1), ones = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < ns; i++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i v = _mm256_madd_epi16(_mm256_maddubs_epi16(one8, q), ones);
        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1));
        s8[i] = 8 * _mm_cvtsi128_si32(r);
        dy[i] = fp16(x[i].d);
    }
}

/* ---- drivers: tiles of up to 4 tokens ---- */

#define X8_TOKENS(T_, BODY)                                                                      \
    switch (T_) {                                                                                \
    case 1: { enum { T = 1 }; BODY; } break;                                                     \
    case 2: { enum { T = 2 }; BODY; } break;                                                     \
    case 3: { enum { T = 3 }; BODY; } break;                                                     \
    default: { enum { T = 4 }; BODY; } break;                                                    \
    }

/* Q4_1 and Q8_0: every group against tiles of up to 4 tokens (kind is a
 * constant once inlined, so each entry point keeps only its own tile). */
__attribute__((always_inline)) static inline void x8_drive(int kind, int64_t n, int ng,
                                                           const void *w, int nc, const void *x,
                                                           size_t ldx, float *y, size_t ldy) {
    const int64_t nb = n / CODI_QK;
    const size_t bbytes = (kind == CODI_TYPE_Q4_1 ? sizeof(codi_block_q4_1) : sizeof(codi_block_q8_0)) *
                          CODI_X8_ROWS;
    const size_t gbytes = (size_t)nb * bbytes;
    for (int c0 = 0; c0 < nc; c0 += TILE) {
        const int tn = nc - c0 < TILE ? nc - c0 : TILE;
        const uint8_t *xr[TILE];
        float *yr[TILE];
        for (int g = 0; g < ng; g++) {
            for (int t = 0; t < tn; t++) {
                xr[t] = (const uint8_t *)x + (size_t)(c0 + t) * ldx;
                yr[t] = y + (size_t)(c0 + t) * ldy + (size_t)g * CODI_X8_ROWS;
            }
            const uint8_t *wg = (const uint8_t *)w + (size_t)g * gbytes;
            if (kind == CODI_TYPE_Q4_1)
                X8_TOKENS(tn, q4_1_tile(nb, wg, T, xr, yr))
            else
                X8_TOKENS(tn, q8_0_tile(nb, wg, T, xr, yr))
        }
    }
}

void codi_gemm_x8_q4_1_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy) {
    x8_drive(CODI_TYPE_Q4_1, n, ng, w, nc, x, ldx, y, ldy);
}

void codi_gemm_x8_q8_0_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy) {
    x8_drive(CODI_TYPE_Q8_0, n, ng, w, nc, x, ldx, y, ldy);
}

void codi_gemm_x8_q4_0_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy) {
    const int64_t nb = n / CODI_QK;
    const size_t bbytes = sizeof(codi_block_q4_0) * CODI_X8_ROWS;
    const size_t gbytes = (size_t)nb * bbytes;
    float dy[TILE][SLICE];
    int32_t s8[TILE][SLICE];
    for (int c0 = 0; c0 < nc; c0 += TILE) {
        const int tn = nc - c0 < TILE ? nc - c0 : TILE;
        for (int64_t i0 = 0; i0 < nb; i0 += SLICE) {
            const int64_t ns = nb - i0 < SLICE ? nb - i0 : SLICE;
            const uint8_t *xr[TILE];
            float *yr[TILE];
            for (int t = 0; t < tn; t++) {
                xr[t] = (const uint8_t *)x + (size_t)(c0 + t) * ldx + (size_t)i0 * sizeof(codi_block_q8_0);
                q8_0_sums((const codi_block_q8_0 *)xr[t], ns, dy[t], s8[t]);
            }
            for (int g = 0; g < ng; g++) {
                for (int t = 0; t < tn; t++)
                    yr[t] = y + (size_t)(c0 + t) * ldy + (size_t)g * CODI_X8_ROWS;
                const uint8_t *wg = (const uint8_t *)w + (size_t)g * gbytes + (size_t)i0 * bbytes;
                X8_TOKENS(tn, q4_0_tile(ns, wg, T, xr, (const float(*)[SLICE])dy,
                                        (const int32_t(*)[SLICE])s8, yr, i0 == 0))
            }
        }
    }
}

#else
typedef int codi_repack_avx2_unused; /* not an x86 build: nothing to compile */
#endif
