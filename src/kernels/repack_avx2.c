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

/* TILE: tokens per tile; SLICE: blocks whose activation scales are staged
 * at once; XC: tokens staged at once (repack_x8_tiles.h) */
enum { TILE = 4, SLICE = 256, XC = 16 };

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

/* The activation scales of blocks [0, ns) as floats; Q8_1 also its s. */
static void q8_1_scales(const codi_block_q8_1 *x, int64_t ns, float *dy, float *sy) {
    for (int64_t i = 0; i < ns; i++) {
        dy[i] = fp16(x[i].d);
        sy[i] = fp16(x[i].s);
    }
}

static void q8_K_scales(const codi_block_q8_K *x, int64_t ns, float *dy) {
    for (int64_t i = 0; i < ns; i++)
        dy[i] = x[i].d;
}

static void q8_0_scales(const codi_block_q8_0 *x, int64_t ns, float *dy) {
    for (int64_t i = 0; i < ns; i++)
        dy[i] = fp16(x[i].d);
}

/* mul * (sum of the 32 quants) and the scale of activation blocks [0, ns):
 * Q4_0's offset 8, Q5_0's 16. */
static void q8_0_sums(const codi_block_q8_0 *x, int64_t ns, int mul, float *dy, int32_t *s8) {
    const __m256i one8 = _mm256_set1_epi8(1), ones = _mm256_set1_epi16(1);
    for (int64_t i = 0; i < ns; i++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)x[i].qs);
        const __m256i v = _mm256_madd_epi16(_mm256_maddubs_epi16(one8, q), ones);
        __m128i r = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0x4E));
        r = _mm_add_epi32(r, _mm_shuffle_epi32(r, 0xB1));
        s8[i] = mul * _mm_cvtsi128_si32(r);
        dy[i] = fp16(x[i].d);
    }
}

/* Q5_0x8: a 32-bit mask (repack.h) as 32 bytes, 0x10 where its bit is set:
 * byte j takes mask byte j / 8, keeps bit j % 8, and becomes 0x10 or 0. */
static inline __m256i fifth_bits(const uint8_t *mask) {
    uint32_t m;
    memcpy(&m, mask, sizeof m);
    const __m256i shuf = _mm256_setr_epi64x(0x0000000000000000LL, 0x0101010101010101LL,
                                            0x0202020202020202LL, 0x0303030303030303LL);
    const __m256i sel = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)m), shuf), sel);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, sel), _mm256_set1_epi8(0x10));
}

/* tiles of up to 4 tokens */
#define X8_TOKENS(T_, BODY)                                                                      \
    switch (T_) {                                                                                \
    case 1: { enum { T = 1 }; BODY; } break;                                                     \
    case 2: { enum { T = 2 }; BODY; } break;                                                     \
    case 3: { enum { T = 3 }; BODY; } break;                                                     \
    default: { enum { T = 4 }; BODY; } break;                                                    \
    }

#define X8_SFX avx2
#define X8_VNNI 0
#define X8_TARGET
#include "kernels/repack_x8_tiles.h"
#undef X8_SFX
#undef X8_VNNI
#undef X8_TARGET

/* AVX-VNNI (VEX vpdpbusd, Alder Lake / Sapphire Rapids and later): same
 * kernels, one instruction per 8-bit product step instead of two to four.
 * Only called when the probe finds AVX-VNNI (dispatch.c). Target
 * attributes rather than #pragma GCC target, which clang does not know. */
#define X8_SFX avxvnni
#define X8_VNNI 1
#define X8_TARGET __attribute__((target("avxvnni")))
#include "kernels/repack_x8_tiles.h"
#undef X8_SFX
#undef X8_VNNI
#undef X8_TARGET

/* ---- AVX-512 (F, BW, VL, DQ, VNNI): Q4_1 over two groups at once ----
 *
 * The x8 layout as it is, two consecutive groups side by side in the two
 * halves of a 512-bit vector: lanes 0-7 are group g's rows, lanes 8-15
 * group g+1's. Every lane runs the AVX-VNNI kernel's instructions on the
 * same operands (vpdpbusd, the conversion, mul, two FMAs), so the results
 * are those of codi_gemm_x8_q4_1_avxvnni bit for bit; with 32 registers a
 * tile holds 8 tokens. An odd last group goes through the AVX-VNNI tile. */
#define K512 __attribute__((target("avxvnni,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

enum { TILE16 = 8 };

/* With twice the rows per instruction a block is done sooner, and the
 * weight lines must be asked for further ahead: at X8_PF (2 KiB) this
 * kernel gained nothing over AVX-VNNI in a decode step of 8 sequences, at
 * 8 KiB 10% (SmolLM2 Q4_1, bench/batch_decode.c). One token (nc = 1) stays
 * on the AVX-VNNI kernel and its 2 KiB: docs/kernels.md found distances
 * past 3 KiB slower for llama1b's bandwidth-bound decode (the 8 KiB kernel
 * was faster for SmolLM2's, not measured on llama1b). */
#ifndef X16_PF
#define X16_PF 8192
#endif
K512 __attribute__((always_inline)) static inline void prefetch_far(const uint8_t *b, size_t bytes) {
    _Pragma("GCC unroll 8")
    for (size_t o = 0; o < bytes; o += 64)
        _mm_prefetch((const char *)(b + X16_PF + o), _MM_HINT_T0);
}

K512 static inline __m512i load2x256(const uint8_t *a, const uint8_t *b) {
    return _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)a)),
                              _mm256_loadu_si256((const __m256i *)b), 1);
}

K512 static inline __m512 cvtph2x8(const uint8_t *a, const uint8_t *b) {
    return _mm512_cvtph_ps(_mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)a)), _mm_loadu_si128((const __m128i *)b), 1));
}

/* A tile's accumulators: group g's 8 rows in the low half, g+1's in the
 * high half; zero on a row's first slice, else what earlier slices left. */
K512 __attribute__((always_inline)) static inline void x16_acc_load(__m512 *acc, int T, float *const *y0,
                                                                float *const *y1, int first) {
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        acc[t] = first ? _mm512_setzero_ps()
                       : _mm512_insertf32x8(_mm512_castps256_ps512(_mm256_loadu_ps(y0[t])),
                                            _mm256_loadu_ps(y1[t]), 1);
}

K512 __attribute__((always_inline)) static inline void x16_acc_store(const __m512 *acc, int T, float *const *y0,
                                                                 float *const *y1) {
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++) {
        _mm256_storeu_ps(y0[t], _mm512_castps512_ps256(acc[t]));
        _mm256_storeu_ps(y1[t], _mm512_extractf32x8_ps(acc[t], 1));
    }
}

/* Block i of the two groups (bb bytes a block of 8 rows), their lines
 * further ahead asked for. */
K512 __attribute__((always_inline)) static inline void x16_blocks(const uint8_t *w0, const uint8_t *w1, int64_t i,
                                                              size_t bb, const uint8_t **b0,
                                                              const uint8_t **b1) {
    *b0 = w0 + (size_t)i * bb;
    *b1 = w1 + (size_t)i * bb;
    prefetch_far(*b0, bb);
    prefetch_far(*b1, bb);
}

K512 __attribute__((always_inline)) static inline void q4_1_tile16(int64_t nb, const uint8_t *w0,
                                                              const uint8_t *w1, int T,
                                                              const uint8_t *const *xr,
                                                              const float (*dy)[SLICE],
                                                              const float (*sy)[SLICE],
                                                              float *const *y0, float *const *y1,
                                                              int first) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512 acc[TILE16];
    x16_acc_load(acc, T, y0, y1, first);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b0, *b1;
        x16_blocks(w0, w1, i, sizeof(codi_block_q4_1) * CODI_X8_ROWS, &b0, &b1);
        const __m512 dw = cvtph2x8(b0, b1);
        const __m512 mw = cvtph2x8(b0 + 16, b1 + 16);
        __m512i s[TILE16];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            s[t] = _mm512_setzero_si512();
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) {
            const __m512i p = load2x256(b0 + 32 + 32 * k, b1 + 32 + 32 * k);
            const __m512i lo = _mm512_and_si512(p, m4);
            const __m512i hi = _mm512_and_si512(_mm512_srli_epi16(p, 4), m4);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const int8_t *q = ((const codi_block_q8_1 *)xr[t])[i].qs + 8 * k;
                int32_t v0, v1;
                memcpy(&v0, q, sizeof v0);
                memcpy(&v1, q + 4, sizeof v1);
                s[t] = _mm512_dpbusd_epi32(s[t], lo, _mm512_set1_epi32(v0));
                s[t] = _mm512_dpbusd_epi32(s[t], hi, _mm512_set1_epi32(v1));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const __m512 sum = _mm512_cvtepi32_ps(s[t]);
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(dy[t][i])), sum, acc[t]);
            acc[t] = _mm512_fmadd_ps(mw, _mm512_set1_ps(sy[t][i]), acc[t]);
        }
    }
    x16_acc_store(acc, T, y0, y1);
}

#define X16_TOKENS(T_, BODY)                                                                     \
    switch (T_) {                                                                                \
    case 1: { enum { T = 1 }; BODY; } break;                                                     \
    case 2: { enum { T = 2 }; BODY; } break;                                                     \
    case 3: { enum { T = 3 }; BODY; } break;                                                     \
    case 4: { enum { T = 4 }; BODY; } break;                                                     \
    case 5: { enum { T = 5 }; BODY; } break;                                                     \
    case 6: { enum { T = 6 }; BODY; } break;                                                     \
    case 7: { enum { T = 7 }; BODY; } break;                                                     \
    default: { enum { T = 8 }; BODY; } break;                                                    \
    }

/* Rows of tokens c .. c+tn-1 for a tile of groups g and g+1: activations
 * xoff bytes into each row, outputs of the two groups. */
static inline void x16_rows(const void *x, size_t ldx, size_t xoff, float *y, size_t ldy, int c, int tn, int g,
                            const uint8_t **xr, float **y0, float **y1) {
    for (int t = 0; t < tn; t++) {
        xr[t] = (const uint8_t *)x + (size_t)(c + t) * ldx + xoff;
        y0[t] = y + (size_t)(c + t) * ldy + (size_t)g * CODI_X8_ROWS;
        y1[t] = y0[t] + CODI_X8_ROWS;
    }
}

K512 void codi_gemm_x8_q4_1_avx512(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                              float *y, size_t ldy) {
    if (nc < 2) { /* see X16_PF */
        codi_gemm_x8_q4_1_avxvnni(n, ng, w, nc, x, ldx, y, ldy);
        return;
    }
    const int64_t nb = n / CODI_QK;
    const size_t bbytes = sizeof(codi_block_q4_1) * CODI_X8_ROWS, xbytes = sizeof(codi_block_q8_1);
    const size_t gbytes = (size_t)nb * bbytes;
    float dy[XC][SLICE], sy[XC][SLICE];
    for (int cb = 0; cb < nc; cb += XC) {
        const int ncb = nc - cb < XC ? nc - cb : XC;
        for (int64_t i0 = 0; i0 < nb; i0 += SLICE) {
            const int64_t ns = nb - i0 < SLICE ? nb - i0 : SLICE;
            for (int t = 0; t < ncb; t++)
                q8_1_scales((const codi_block_q8_1 *)((const uint8_t *)x + (size_t)(cb + t) * ldx +
                                                      (size_t)i0 * xbytes),
                            ns, dy[t], sy[t]);
            for (int g = 0; g < ng; g += 2) {
                const uint8_t *wg = (const uint8_t *)w + (size_t)g * gbytes + (size_t)i0 * bbytes;
                const int pair = g + 1 < ng;
                const int tile = pair ? TILE16 : TILE;
                for (int c0 = 0; c0 < ncb; c0 += tile) {
                    const int tn = ncb - c0 < tile ? ncb - c0 : tile;
                    const uint8_t *xr[TILE16];
                    float *y0[TILE16], *y1[TILE16];
                    x16_rows(x, ldx, (size_t)i0 * xbytes, y, ldy, cb + c0, tn, g, xr, y0, y1);
                    const float(*d)[SLICE] = (const float(*)[SLICE])(dy + c0);
                    const float(*sm)[SLICE] = (const float(*)[SLICE])(sy + c0);
                    if (pair)
                        X16_TOKENS(tn, q4_1_tile16(ns, wg, wg + gbytes, T, xr, d, sm, y0, y1, i0 == 0))
                    else
                        X8_TOKENS(tn, q4_1_tile_avxvnni(0, ns, wg, T, xr, d, sm, y0, i0 == 0))
                }
            }
        }
    }
}

/* ---- Q8_0 the same way, with the activations staged as y + 128
 * (unsigned, 32 bytes a block), so sum (y + 128) w - 128 sum w = sum y w:
 * one vpdpbusd per 4-byte quad and token, 128 sum w from vpdpbusd once
 * per block and tile ---- */

/* The quants of blocks [0, ns) plus 128, as unsigned bytes, 32 a block. */
static void q8_0_unsigned(const codi_block_q8_0 *x, int64_t ns, uint8_t *xu) {
    const __m256i x80 = _mm256_set1_epi8((char)0x80);
    for (int64_t i = 0; i < ns; i++)
        _mm256_storeu_si256((__m256i *)(xu + 32 * i),
                            _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)x[i].qs), x80));
}

K512 __attribute__((always_inline)) static inline void q8_0_tile16(int64_t nb, const uint8_t *w0,
                                                              const uint8_t *w1, int T,
                                                              const uint8_t *const *xu,
                                                              const float (*dy)[SLICE],
                                                              float *const *y0, float *const *y1,
                                                              int first) {
    const __m512i x80 = _mm512_set1_epi8((char)0x80);
    __m512 acc[TILE16];
    x16_acc_load(acc, T, y0, y1, first);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b0, *b1;
        x16_blocks(w0, w1, i, sizeof(codi_block_q8_0) * CODI_X8_ROWS, &b0, &b1);
        const __m512 dw = cvtph2x8(b0, b1);
        __m512i c128 = _mm512_setzero_si512();
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++)
            c128 = _mm512_dpbusd_epi32(c128, x80, load2x256(b0 + 16 + 32 * k, b1 + 16 + 32 * k));
        const __m512i s0 = _mm512_sub_epi32(_mm512_setzero_si512(), c128);
        __m512i s[TILE16];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            s[t] = s0;
        _Pragma("GCC unroll 8")
        for (int k = 0; k < 8; k++) {
            const __m512i w = load2x256(b0 + 16 + 32 * k, b1 + 16 + 32 * k);
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                int32_t v;
                memcpy(&v, xu[t] + 32 * i + 4 * k, sizeof v);
                s[t] = _mm512_dpbusd_epi32(s[t], _mm512_set1_epi32(v), w);
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(dw, _mm512_set1_ps(dy[t][i])),
                                     _mm512_cvtepi32_ps(s[t]), acc[t]);
    }
    x16_acc_store(acc, T, y0, y1);
}

enum { USLICE = 64 }; /* blocks of Q8_0 activations staged as y + 128 */

K512 void codi_gemm_x8_q8_0_avx512(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                              float *y, size_t ldy) {
    if (nc < 2) { /* see X16_PF */
        codi_gemm_x8_q8_0_avxvnni(n, ng, w, nc, x, ldx, y, ldy);
        return;
    }
    const int64_t nb = n / CODI_QK;
    const size_t bbytes = sizeof(codi_block_q8_0) * CODI_X8_ROWS, xbytes = sizeof(codi_block_q8_0);
    const size_t gbytes = (size_t)nb * bbytes;
    float dy[XC][SLICE];
    uint8_t xu[XC][USLICE * CODI_QK];
    for (int cb = 0; cb < nc; cb += XC) {
        const int ncb = nc - cb < XC ? nc - cb : XC;
        for (int64_t i0 = 0; i0 < nb; i0 += USLICE) {
            const int64_t ns = nb - i0 < USLICE ? nb - i0 : USLICE;
            for (int t = 0; t < ncb; t++) {
                const codi_block_q8_0 *xs = (const codi_block_q8_0 *)((const uint8_t *)x + (size_t)(cb + t) * ldx +
                                                                      (size_t)i0 * xbytes);
                q8_0_scales(xs, ns, dy[t]);
                q8_0_unsigned(xs, ns, xu[t]);
            }
            for (int g = 0; g < ng; g += 2) {
                const uint8_t *wg = (const uint8_t *)w + (size_t)g * gbytes + (size_t)i0 * bbytes;
                const int pair = g + 1 < ng;
                const int tile = pair ? TILE16 : TILE;
                for (int c0 = 0; c0 < ncb; c0 += tile) {
                    const int tn = ncb - c0 < tile ? ncb - c0 : tile;
                    const uint8_t *xr[TILE16];
                    float *y0[TILE16], *y1[TILE16];
                    x16_rows(x, ldx, (size_t)i0 * xbytes, y, ldy, cb + c0, tn, g, xr, y0, y1);
                    const float(*d)[SLICE] = (const float(*)[SLICE])(dy + c0);
                    if (pair) {
                        const uint8_t *ur[TILE16];
                        for (int t = 0; t < tn; t++)
                            ur[t] = xu[c0 + t];
                        X16_TOKENS(tn, q8_0_tile16(ns, wg, wg + gbytes, T, ur, d, y0, y1, i0 == 0))
                    } else {
                        X8_TOKENS(tn, q8_0_tile_avxvnni(ns, wg, T, xr, d, y0, i0 == 0))
                    }
                }
            }
        }
    }
}

#undef K512

#else
typedef int codi_repack_avx2_unused; /* not an x86 build: nothing to compile */
#endif
