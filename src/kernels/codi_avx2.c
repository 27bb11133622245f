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
#include "kernels/repack.h"
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
enum { GQSA_PF = 2048 };
AI void dot_gqsa(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y0 = vy;
    __m256 acc = _mm256_setzero_ps();
    __m128 summs = _mm_setzero_ps();
    for (int64_t i = 0; i < n / G; i++, b += CODI_GQSA_BYTES(G)) {
        /* decode streams the rows one after the other: keep lines in flight
         * (as the x8 kernels do) */
        _mm_prefetch((const char *)(b + GQSA_PF), _MM_HINT_T0);
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

/* W4A8: the whole row in integers. Per 32-block maddubs(q, x) -> int16
 * pairs (|q0 x0 + q1 x1| <= 3810), and one madd against the group scale sg
 * broadcast to 16 bits gives sg * (pairs) in int32 lanes (<= 255 * 7620 per
 * lane per block for any header byte), so a lane takes 1024 blocks before
 * it is flushed into an int64. The zero points go through the blocks'
 * activation sums in 64-bit. One float multiply at the end. Bit-exact with
 * the reference for every input. */
#define W4A8_FLUSH_BLOCKS 1024

AI int64_t hsum_i32x8_i64(__m256i v) {
    const __m256i t = _mm256_add_epi64(_mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)),
                                       _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
    const __m128i u = _mm_add_epi64(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
    return _mm_cvtsi128_si64(u) + _mm_extract_epi64(u, 1);
}

AI void dot_w4a8(int64_t n, float *s, const void *vx, const void *vy, const int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_a8 *y = vy;
    int64_t total = 0, corr = 0;
    __m256i acc = _mm256_setzero_si256();
    const int64_t ng = n / G, flush = W4A8_FLUSH_BLOCKS / (G / 32);
    for (int64_t g = 0; g < ng; g++, b += CODI_W4A8_BYTES(G)) {
        const __m256i sg = _mm256_set1_epi16(b[0]);
        int sx = 0;
        for (int k = 0; k < G / 32; k++, y++) {
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(unpack_nibbles_32(b + 2 + 16 * k),
                                                                               load256(y->qs)), sg));
            sx += y->sum;
        }
        corr += (int64_t)(b[0] * (int8_t)b[1]) * sx;
        if (g % flush == flush - 1) {
            total += hsum_i32x8_i64(acc);
            acc = _mm256_setzero_si256();
        }
    }
    total += hsum_i32x8_i64(acc);
    *s = n > 0 ? ((const codi_block_a8 *)vy)->d * (float)(total - corr) : 0.0f;
}

/* A8 activations (one scale per row): the reference's lrintf is the
 * current rounding mode, as is cvtps_epi32, so the codes are identical. */
void codi_quantize_row_a8_avx2(const float *x, void *vy, int64_t n) {
    CODI_ASSERT(n >= 0 && n % 32 == 0);
    codi_block_a8 *y = vy;
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 vmax = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8)
        vmax = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + i)), vmax); /* NaN: skipped, as the reference */
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    m = _mm_max_ss(m, _mm_movehdup_ps(m));
    const float d = _mm_cvtss_f32(m) / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    const __m256 vid = _mm256_set1_ps(id);
    const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < n / 32; b++, x += 32) {
        __m256i q[4];
        for (int k = 0; k < 4; k++)
            q[k] = _mm256_min_epi32(hi, _mm256_max_epi32(lo, _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(x + 8 * k), vid))));
        const __m256i s = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
        __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4E));
        s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xB1));
        /* int32 -> int16 -> int8 packs work per 128-bit lane; the permute
         * puts the 32 codes back in order. */
        const __m256i p16a = _mm256_packs_epi32(q[0], q[1]), p16b = _mm256_packs_epi32(q[2], q[3]);
        const __m256i p8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(p16a, p16b), perm);
        _mm256_storeu_si256((__m256i *)y[b].qs, p8);
        y[b].d = d;
        y[b].sum = (int16_t)_mm_cvtsi128_si32(s4);
        y[b].pad = 0;
    }
}

/* ---- gemm tiles: RM weight rows x RN tokens ---- */

/* RM rows x RN tokens; loops run row-outer so that the activations are
 * memory operands and the RM x RN int32 accumulators, one unpacked row and
 * its scale fit the 16 registers. */
AI void tile_w4a8(int64_t n, const int G, const int RM, const int RN, const uint8_t *w, size_t ldw,
                  const uint8_t *x, size_t ldx, float *y, size_t ldy) {
    __m256i acc[4][3];
    int64_t total[4][3];
    __m256i corr[3]; /* int64 lanes: row r in lane r */
    for (int c = 0; c < RN; c++) {
        corr[c] = _mm256_setzero_si256();
        for (int r = 0; r < RM; r++) {
            acc[r][c] = _mm256_setzero_si256();
            total[r][c] = 0;
        }
    }
    const int64_t ng = n / G, flush = W4A8_FLUSH_BLOCKS / (G / 32);
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *b[4];
        int64_t zs[4] = {0, 0, 0, 0};
        for (int r = 0; r < RM; r++) {
            b[r] = w + (size_t)r * ldw + (size_t)g * CODI_W4A8_BYTES(G);
            zs[r] = b[r][0] * (int8_t)b[r][1];
        }
        const codi_block_a8 *a[3];
        int sx[3] = {0, 0, 0};
        for (int c = 0; c < RN; c++)
            a[c] = (const codi_block_a8 *)(x + (size_t)c * ldx) + g * (G / 32);
        for (int k = 0; k < G / 32; k++) {
            for (int c = 0; c < RN; c++)
                sx[c] += a[c][k].sum;
            for (int r = 0; r < RM; r++) {
                const __m256i wq = unpack_nibbles_32(b[r] + 2 + 16 * k);
                const __m256i sg = _mm256_set1_epi16(b[r][0]);
                for (int c = 0; c < RN; c++)
                    acc[r][c] = _mm256_add_epi32(
                        acc[r][c], _mm256_madd_epi16(_mm256_maddubs_epi16(wq, load256(a[c][k].qs)), sg));
            }
        }
        const __m256i zv = _mm256_loadu_si256((const __m256i *)zs);
        for (int c = 0; c < RN; c++)
            corr[c] = _mm256_add_epi64(corr[c], _mm256_mul_epi32(zv, _mm256_set1_epi64x(sx[c])));
        if (g % flush == flush - 1)
            for (int r = 0; r < RM; r++)
                for (int c = 0; c < RN; c++) {
                    total[r][c] += hsum_i32x8_i64(acc[r][c]);
                    acc[r][c] = _mm256_setzero_si256();
                }
    }
    for (int c = 0; c < RN; c++) {
        const float d = n > 0 ? ((const codi_block_a8 *)(x + (size_t)c * ldx))->d : 0.0f;
        int64_t cz[4];
        _mm256_storeu_si256((__m256i *)cz, corr[c]);
        for (int r = 0; r < RM; r++)
            y[(size_t)c * ldy + r] = d * (float)(total[r][c] + hsum_i32x8_i64(acc[r][c]) - cz[r]);
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

/* ---- W4A8 on the x8 layout (kernels/repack.h): w4a8_x8_tiles.h ---- */
enum { W4A8_X8_TILE = 4, W4A8_X8_PF = 2048 };

AI __m256i bcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

#define W8_SFX avx2
#define W8_VNNI 0
#include "kernels/w4a8_x8_tiles.h"
#undef W8_SFX
#undef W8_VNNI

/* The same under AVX-VNNI (vpdpbusd), chosen at run time by dispatch.c. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avxvnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avxvnni")
#endif
#define W8_SFX avxvnni
#define W8_VNNI 1
#include "kernels/w4a8_x8_tiles.h"
#undef W8_SFX
#undef W8_VNNI
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

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

void codi_scale_rows_avx2(float *y, int nr, int nc, size_t ldy, const float *scale) {
    for (int c = 0; c < nc; c++) {
        float *yc = y + (size_t)c * ldy;
        int r = 0;
        for (; r + 8 <= nr; r += 8)
            _mm256_storeu_ps(yc + r, _mm256_mul_ps(_mm256_loadu_ps(yc + r), _mm256_loadu_ps(scale + r)));
        for (; r < nr; r++)
            yc[r] *= scale[r];
    }
}
