/* W4A8 prefill on Intel AMX (AMX-INT8), the kernel QServe's progressive
 * format is for: a W4A8 weight is sg * (q - z) in int8 units, an integer
 * that fits an int8 (the quantizer's protective range, checked per matrix
 * at load time: codi_w4a8_row_fits_int8), and the activation scale is one
 * per token. So a whole row's dot is one int8 x int8 sum with no scale
 * inside the K loop, which is what a tile multiply (TDPBSSD: 16 tokens x
 * 16 rows x 32 in-features per instruction) does. Q4G's per-32 float
 * scales would need the int32 tile read back and scaled every block.
 *
 * Per pair of x8 groups (16 rows, kernels/repack.h) the 4-bit codes are
 * expanded once to int8 in the tile's "VNNI" order (a B row holds 4
 * consecutive in-features of each of the 16 rows: exactly the low, or the
 * high, nibbles of 32 bytes of an x8 block, two groups side by side), in
 * slabs of AMX_KB blocks, and used for every token of the call (up to
 * AMX_NC at a time). Two pairs (32 rows) run together, 2 x 2 tiles a step,
 * so each A and B tile feeds two multiplies. A tiles read the A8 blocks'
 * 32 int8 in place (rows = tokens, ldx apart). Sums are int32: |w8| <=
 * 128, |x| <= 127, n <= 131072, so they cannot overflow, and
 * y = (d * (float)sum) * row_scale is the reference's value bit for bit
 * (the x8 and reference kernels sum the same integer in int64, and
 * codi_scale_rows multiplies after).
 *
 * Tokens past the last full 16, a group without a pair, and n over the
 * bound go to the AVX2/AVX-VNNI x8 kernel (then codi_scale_rows). Compiled for AVX2 (the file
 * name) plus AMX on these functions; dispatch.c calls them only after
 * probing AMX and asking the kernel for the tile state (arch_prctl). */
#include "kernels/repack.h"

#if defined(__x86_64__)

#include <immintrin.h>
#include <stdint.h>
#include <string.h>

#include "common.h"
#include "kernels/codi_avx2.h"
#include "tensor/quant_codi.h"
#include "tensor/types.h"

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("amx-tile,amx-int8"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("amx-tile,amx-int8")
#endif

enum {
    AMX_KB = 32,        /* 32-blocks per slab: 32 rows x 1024 int8 = 32 KiB */
    AMX_NC = 256,       /* tokens per pass over a slab (int32 sums: 32 KiB) */
    AMX_BBYTES = 512,   /* one B tile: 8 rows x 64 bytes */
    AMX_MAXN = 131072,  /* int32 sums exact below this */
};

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} amx_config;

/* Tiles 0-3: int32 sums of 16 tokens x 16 rows; 4, 5: A (16 tokens x 32
 * int8); 6, 7: B (8 rows of 4 in-features x 16 weight rows). Tiles are
 * not renamed: a load waits for the multiply still reading that tile, so
 * A and B alternate between two tiles each. */
static void amx_configure(void) {
    amx_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int t = 0; t < 4; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 64;
    }
    for (int t = 4; t < 6; t++) {
        cfg.rows[t] = 16;
        cfg.colsb[t] = 32;
        cfg.rows[t + 2] = 8;
        cfg.colsb[t + 2] = 64;
    }
    _tile_loadconfig(&cfg);
}

/* 32 nibbles (bytes 4r..4r+3: row r of the 8, or r - 4 in the high lane)
 * to sg_r * (q - z_r) as int8, rows kept in place. */
static inline __m256i dq32(__m256i q, __m256i sga, __m256i zsa, __m256i sgb, __m256i zsb) {
    const __m256i a = _mm256_sub_epi16(_mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_castsi256_si128(q)), sga), zsa);
    const __m256i b = _mm256_sub_epi16(_mm256_mullo_epi16(_mm256_cvtepu8_epi16(_mm256_extracti128_si256(q, 1)), sgb), zsb);
    return _mm256_permute4x64_epi64(_mm256_packs_epi16(a, b), 0xD8);
}

/* Blocks [kb0, kb0 + nkb) of the 8 rows at grp (x8 layout of W4A8_G, n/G
 * groups) into the B tiles at buf, half h (columns 8h..8h+7). */
static void dequant_group(const uint8_t *grp, int G, int64_t kb0, int nkb, int h, int8_t *buf) {
    const size_t gbytes = (size_t)CODI_X8_ROWS * CODI_W4A8_BYTES(G);
    const int bpg = G / 32;
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    const __m128i rep_a = _mm_setr_epi8(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
    const __m128i rep_b = _mm_setr_epi8(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7);
    __m256i sga = _mm256_setzero_si256(), sgb = sga, zsa = sga, zsb = sga;
    int64_t cur = -1;
    for (int i = 0; i < nkb; i++) {
        const int64_t kb = kb0 + i, gi = kb / bpg;
        const uint8_t *b = grp + (size_t)gi * gbytes;
        if (gi != cur) {
            cur = gi;
            const __m128i sg = _mm_loadl_epi64((const __m128i *)b);
            const __m128i z = _mm_loadl_epi64((const __m128i *)(b + 8));
            sga = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sg, rep_a));
            sgb = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(sg, rep_b));
            zsa = _mm256_mullo_epi16(sga, _mm256_cvtepi8_epi16(_mm_shuffle_epi8(z, rep_a)));
            zsb = _mm256_mullo_epi16(sgb, _mm256_cvtepi8_epi16(_mm_shuffle_epi8(z, rep_b)));
        }
        const uint8_t *qs = b + 16 + 128 * (size_t)(kb % bpg);
        int8_t *dst = buf + (size_t)i * AMX_BBYTES + 32 * h;
        for (int k = 0; k < 4; k++) {
            const __m256i p = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
            const __m256i lo = _mm256_and_si256(p, m4);
            const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
            _mm256_storeu_si256((__m256i *)(dst + 64 * (2 * k)), dq32(lo, sga, zsa, sgb, zsb));
            _mm256_storeu_si256((__m256i *)(dst + 64 * (2 * k + 1)), dq32(hi, sga, zsa, sgb, zsb));
        }
    }
}

/* Tiles need constant numbers: one step of tile t for T tiles in use. */
#define AMX_EACH(T, STEP)        \
    do {                         \
        STEP(0);                 \
        if ((T) > 1) STEP(1);    \
        if ((T) > 2) STEP(2);    \
        if ((T) > 3) STEP(3);    \
    } while (0)

/* Sums tile t of a call: starts at 0 in the first slab, else reloaded. */
#define AMX_INIT(t, at)                          \
    do {                                         \
        if (s0 == 0)                             \
            _tile_zero(t);                       \
        else                                     \
            _tile_loadd(t, at, (long)cstride);   \
    } while (0)

/* 16 P rows (P = 1 or 2 pairs of x8 groups, the first at g0, groups rbytes
 * apart) x nc tokens (a multiple of 16, at most AMX_NC) into sums
 * (token c, row r at c * 16 P + r). P = 1: four token tiles a step, A in
 * tiles 4 and 5 by turns, B in 6 and 7 by turns. P = 2: two token tiles
 * (A 4, 5) by two pairs (B 6, 7) a step: each A and B tile serves two
 * multiplies. */
static void amx_sums(int P, int64_t n, int G, const uint8_t *g0, size_t rbytes, int nc,
                     const uint8_t *x, size_t ldx, int8_t *buf, int32_t *sums) {
    const int64_t nkb = n / 32;
    const size_t cstride = (size_t)P * 16 * sizeof(int32_t), bstride = (size_t)P * AMX_KB * AMX_BBYTES;
    for (int64_t s0 = 0; s0 < nkb; s0 += AMX_KB) {
        const int nb = (int)CODI_MIN((int64_t)AMX_KB, nkb - s0);
        for (int q = 0; q < 2 * P; q++)
            dequant_group(g0 + (size_t)q * rbytes, G, s0, nb, q % 2, buf + (size_t)(q / 2) * AMX_KB * AMX_BBYTES);
        const uint8_t *xa = x + (size_t)s0 * sizeof(codi_block_a8) + offsetof(codi_block_a8, qs);
        if (P == 1) {
            for (int c0 = 0; c0 < nc; c0 += 64) {
                const int T = CODI_MIN(4, (nc - c0) / 16);
                int32_t *cs = sums + (size_t)c0 * 16;
                const uint8_t *xc = xa + (size_t)c0 * ldx;
#define AMX_INIT1(t) AMX_INIT(t, cs + (size_t)(t) * 256)
                AMX_EACH(T, AMX_INIT1);
#undef AMX_INIT1
#define AMX_DOT(t, A, B)                                            \
    do {                                                            \
        _tile_loadd(A, xk + (size_t)(t) * 16 * ldx, (long)ldx);    \
        _tile_dpbssd(t, A, B);                                      \
    } while (0)
#define AMX_DOT6(t) AMX_DOT(t, AMX_A##t, 6)
#define AMX_DOT7(t) AMX_DOT(t, AMX_A##t, 7)
#define AMX_A0 4
#define AMX_A1 5
#define AMX_A2 4
#define AMX_A3 5
                int kb = 0;
                for (; kb + 2 <= nb; kb += 2) {
                    const uint8_t *xk = xc + (size_t)kb * sizeof(codi_block_a8);
                    _tile_loadd(6, buf + (size_t)kb * AMX_BBYTES, 64);
                    AMX_EACH(T, AMX_DOT6);
                    xk += sizeof(codi_block_a8);
                    _tile_loadd(7, buf + (size_t)(kb + 1) * AMX_BBYTES, 64);
                    AMX_EACH(T, AMX_DOT7);
                }
                if (kb < nb) {
                    const uint8_t *xk = xc + (size_t)kb * sizeof(codi_block_a8);
                    _tile_loadd(6, buf + (size_t)kb * AMX_BBYTES, 64);
                    AMX_EACH(T, AMX_DOT6);
                }
#undef AMX_A0
#undef AMX_A1
#undef AMX_A2
#undef AMX_A3
#undef AMX_DOT6
#undef AMX_DOT7
#undef AMX_DOT
#define AMX_STORE1(t) _tile_stored(t, cs + (size_t)(t) * 256, (long)cstride)
                AMX_EACH(T, AMX_STORE1);
#undef AMX_STORE1
            }
            continue;
        }
        /* P = 2. Sums tiles: 0 (pair 0, tokens c0..), 1 (pair 0, c0 + 16..),
         * 2 (pair 1, c0..), 3 (pair 1, c0 + 16..). */
        for (int c0 = 0; c0 < nc; c0 += 32) {
            const int two = nc - c0 >= 32;
            int32_t *cs = sums + (size_t)c0 * 32;
            const uint8_t *xc = xa + (size_t)c0 * ldx;
            AMX_INIT(0, cs);
            AMX_INIT(2, cs + 16);
            if (two) {
                AMX_INIT(1, cs + 512);
                AMX_INIT(3, cs + 528);
            }
            for (int kb = 0; kb < nb; kb++) {
                const uint8_t *xk = xc + (size_t)kb * sizeof(codi_block_a8);
                _tile_loadd(4, xk, (long)ldx);
                _tile_loadd(6, buf + (size_t)kb * AMX_BBYTES, 64);
                _tile_dpbssd(0, 4, 6);
                _tile_loadd(7, buf + bstride / 2 + (size_t)kb * AMX_BBYTES, 64);
                _tile_dpbssd(2, 4, 7);
                if (two) {
                    _tile_loadd(5, xk + 16 * ldx, (long)ldx);
                    _tile_dpbssd(1, 5, 6);
                    _tile_dpbssd(3, 5, 7);
                }
            }
            _tile_stored(0, cs, (long)cstride);
            _tile_stored(2, cs + 16, (long)cstride);
            if (two) {
                _tile_stored(1, cs + 512, (long)cstride);
                _tile_stored(3, cs + 528, (long)cstride);
            }
        }
    }
}
#undef AMX_INIT

/* y[c * ldy + r] = (d_c * (float)sums) * scale[r] for 16 P rows: the
 * reference's two roundings (codi_vec_dot_w4a8_a8, then codi_scale_rows). */
static void amx_out(int P, int nc, const int32_t *sums, const uint8_t *x, size_t ldx, const float *scale,
                    float *y, size_t ldy) {
    for (int c = 0; c < nc; c++) {
        const __m256 d = _mm256_set1_ps(((const codi_block_a8 *)(x + (size_t)c * ldx))->d);
        const int32_t *sc = sums + (size_t)c * 16 * P;
        float *yc = y + (size_t)c * ldy;
        for (int r = 0; r < 16 * P; r += 8) {
            __m256 v = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_loadu_si256((const __m256i *)(sc + r))));
            if (scale)
                v = _mm256_mul_ps(v, _mm256_loadu_ps(scale + r));
            _mm256_storeu_ps(yc + r, v);
        }
    }
}

static void amx_drive(int type, int G, int64_t n, int ng, const void *w, const float *scale, int nc,
                      const void *x, size_t ldx, float *y, size_t ldy) {
    const codi_gemm_x8_fn rest = codi_kernel_gemm_x8(type);
    const int nc16 = n > 0 && n <= AMX_MAXN ? nc / 16 * 16 : 0, np = nc16 ? ng / 2 : 0;
    const size_t rbytes = (size_t)(n / G) * CODI_X8_ROWS * CODI_W4A8_BYTES(G);
    if (np > 0) {
        _Alignas(64) int8_t buf[2 * AMX_KB * AMX_BBYTES];
        _Alignas(64) int32_t sums[AMX_NC * 32];
        amx_configure();
        for (int p = 0; p < np;) {
            const int P = np - p >= 2 ? 2 : 1;
            for (int c0 = 0; c0 < nc16; c0 += AMX_NC) {
                const int m = CODI_MIN(AMX_NC, nc16 - c0);
                const uint8_t *xc = (const uint8_t *)x + (size_t)c0 * ldx;
                amx_sums(P, n, G, (const uint8_t *)w + 2 * (size_t)p * rbytes, rbytes, m, xc, ldx, buf, sums);
                amx_out(P, m, sums, xc, ldx, scale ? scale + 16 * p : NULL, y + (size_t)c0 * ldy + 16 * (size_t)p,
                        ldy);
            }
            p += P;
        }
        _tile_release();
    }
    /* the last unpaired group for the AMX tokens, then the other tokens;
     * they are scaled here like the rest */
    if (np * 2 < ng && nc16 > 0) {
        float *yr = y + 16 * (size_t)np;
        rest(n, ng - 2 * np, (const uint8_t *)w + 2 * (size_t)np * rbytes, nc16, x, ldx, yr, ldy);
        if (scale)
            codi_scale_rows_avx2(yr, (ng - 2 * np) * CODI_X8_ROWS, nc16, ldy, scale + 16 * np);
    }
    if (nc16 < nc) {
        float *yr = y + (size_t)nc16 * ldy;
        rest(n, ng, w, nc - nc16, (const uint8_t *)x + (size_t)nc16 * ldx, ldx, yr, ldy);
        if (scale)
            codi_scale_rows_avx2(yr, ng * CODI_X8_ROWS, nc - nc16, ldy, scale);
    }
}

#define AMX_ENTRY(G, TYPE)                                                                     \
    void codi_gemm_x8_w4a8_##G##_amx(int64_t n, int ng, const void *w, const float *row_scale, \
                                     int nc, const void *x, size_t ldx, float *y, size_t ldy) { \
        amx_drive(TYPE, G, n, ng, w, row_scale, nc, x, ldx, y, ldy);                           \
    }
AMX_ENTRY(32, CODI_TYPE_W4A8_32)
AMX_ENTRY(64, CODI_TYPE_W4A8_64)
AMX_ENTRY(128, CODI_TYPE_W4A8_128)
#undef AMX_ENTRY

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

#endif
