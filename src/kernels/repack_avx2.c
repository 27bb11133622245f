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

static void q8_0_scales(const codi_block_q8_0 *x, int64_t ns, float *dy) {
    for (int64_t i = 0; i < ns; i++)
        dy[i] = fp16(x[i].d);
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
#include "kernels/repack_x8_tiles.h"
#undef X8_SFX
#undef X8_VNNI

/* AVX-VNNI (VEX vpdpbusd, Alder Lake / Sapphire Rapids and later): same
 * kernels, one instruction per 8-bit product step instead of two to four.
 * Only called when the probe finds AVX-VNNI (dispatch.c). */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avxvnni"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avxvnni")
#endif
#define X8_SFX avxvnni
#define X8_VNNI 1
#include "kernels/repack_x8_tiles.h"
#undef X8_SFX
#undef X8_VNNI
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#else
typedef int codi_repack_avx2_unused; /* not an x86 build: nothing to compile */
#endif
