/* W4A8 on the x8 layout (kernels/repack.h): 8 rows in the 8 lanes, written
 * once for two instruction sets. codi_avx2.c includes this file twice, with
 *
 *   W8_SFX   the suffix of the entry points (avx2, avxvnni)
 *   W8_VNNI  0: per 32-block and token, eight maddubs of the rows' codes
 *            against broadcast activation quads sum into int16 pairs (16
 *            products of at most 15 * 127 each: <= 30480), and one madd
 *            against the rows' group scales (both int16 halves of lane r
 *            hold sg_r) gives sg_r * sum in lane r;
 *            1: eight vpdpbusd (AVX-VNNI) sum the block in int32 lanes
 *            (<= 32 * 15 * 127) and one mullo by sg_r scales it.
 *
 * The zero points: once per group and token, a madd of zs_r = sg_r z_r
 * (low half of lane r, high half 0) against the group's activation sum.
 * Per block the lane moves by at most 255 * 60960 + 32640 * 4064, so the
 * int32 lanes are flushed into int64 every 8 blocks: exact for any header
 * byte, and bit-equal to the reference after the one float multiply, with
 * either instruction set (tests/test_quant_codi.c, test_w4a8_x8). */

#define W8_CAT_(a, b) a##_##b
#define W8_CAT(a, b) W8_CAT_(a, b)
#define W8_FN(name) W8_CAT(name, W8_SFX)

AI void W8_FN(w4a8_x8_tile)(int64_t ng, const int G, const uint8_t *wg, const int T,
                            const codi_block_a8 *const *xr, float *const *yr) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), lo16 = _mm256_set1_epi32(0xFFFF);
    const size_t gbytes = (size_t)CODI_X8_ROWS * CODI_W4A8_BYTES(G);
    const int64_t flush = 8 / (G / 32);
    __m256i acc[W4A8_X8_TILE], tot[W4A8_X8_TILE][2];
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_si256();
        tot[t][0] = tot[t][1] = _mm256_setzero_si256();
    }
    for (int64_t g = 0; g < ng; g++) {
        const uint8_t *b = wg + (size_t)g * gbytes;
        for (size_t o = 0; o < gbytes; o += 64)
            _mm_prefetch((const char *)(b + W4A8_X8_PF + o), _MM_HINT_T0);
        const __m128i hdr = _mm_loadu_si128((const __m128i *)b);
        const __m256i sg32 = _mm256_cvtepu8_epi32(hdr);
#if !W8_VNNI
        const __m256i sgv = _mm256_or_si256(sg32, _mm256_slli_epi32(sg32, 16));
#endif
        const __m256i zsv =
            _mm256_and_si256(_mm256_mullo_epi32(sg32, _mm256_cvtepi8_epi32(_mm_srli_si128(hdr, 8))), lo16);
        int sx[W4A8_X8_TILE] = {0, 0, 0, 0};
        _Pragma("GCC unroll 8")
        for (int k = 0; k < G / 32; k++) {
            __m256i s[W4A8_X8_TILE];
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                s[t] = _mm256_setzero_si256();
                sx[t] += xr[t][g * (G / 32) + k].sum;
            }
            _Pragma("GCC unroll 8")
            for (int k2 = 0; k2 < 4; k2++) {
                const __m256i p = load256(b + 16 + 128 * k + 32 * k2);
                const __m256i lo = _mm256_and_si256(p, m4);
                const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
                _Pragma("GCC unroll 8")
                for (int t = 0; t < T; t++) {
                    const int8_t *q = xr[t][g * (G / 32) + k].qs + 8 * k2;
#if W8_VNNI
                    s[t] = _mm256_dpbusd_avx_epi32(s[t], lo, bcast4(q));
                    s[t] = _mm256_dpbusd_avx_epi32(s[t], hi, bcast4(q + 4));
#else
                    s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(lo, bcast4(q)));
                    s[t] = _mm256_add_epi16(s[t], _mm256_maddubs_epi16(hi, bcast4(q + 4)));
#endif
                }
            }
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++)
#if W8_VNNI
                acc[t] = _mm256_add_epi32(acc[t], _mm256_mullo_epi32(s[t], sg32));
#else
                acc[t] = _mm256_add_epi32(acc[t], _mm256_madd_epi16(s[t], sgv));
#endif
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_sub_epi32(acc[t], _mm256_madd_epi16(zsv, _mm256_set1_epi32(sx[t] & 0xFFFF)));
        if (g % flush == flush - 1 || g == ng - 1) {
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                tot[t][0] = _mm256_add_epi64(tot[t][0], _mm256_cvtepi32_epi64(_mm256_castsi256_si128(acc[t])));
                tot[t][1] = _mm256_add_epi64(tot[t][1], _mm256_cvtepi32_epi64(_mm256_extracti128_si256(acc[t], 1)));
                acc[t] = _mm256_setzero_si256();
            }
        }
    }
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++) {
        int64_t v[CODI_X8_ROWS];
        _mm256_storeu_si256((__m256i *)v, tot[t][0]);
        _mm256_storeu_si256((__m256i *)(v + 4), tot[t][1]);
        const float d = ng > 0 ? xr[t][0].d : 0.0f;
        _Pragma("GCC unroll 8")
        for (int r = 0; r < CODI_X8_ROWS; r++)
            yr[t][r] = d * (float)v[r];
    }
}

AI void W8_FN(w4a8_x8_drive)(int64_t n, const int G, int ng, const void *w, int nc, const void *x,
                             size_t ldx, float *y, size_t ldy) {
    const size_t rbytes = (size_t)(n / G) * CODI_X8_ROWS * CODI_W4A8_BYTES(G);
    for (int c0 = 0; c0 < nc; c0 += W4A8_X8_TILE) {
        const int tn = nc - c0 < W4A8_X8_TILE ? nc - c0 : W4A8_X8_TILE;
        const codi_block_a8 *xr[W4A8_X8_TILE];
        float *yr[W4A8_X8_TILE];
        for (int g = 0; g < ng; g++) {
            for (int t = 0; t < tn; t++) {
                xr[t] = (const codi_block_a8 *)((const uint8_t *)x + (size_t)(c0 + t) * ldx);
                yr[t] = y + (size_t)(c0 + t) * ldy + (size_t)g * CODI_X8_ROWS;
            }
            const uint8_t *wg = (const uint8_t *)w + (size_t)g * rbytes;
            switch (tn) {
            case 1: W8_FN(w4a8_x8_tile)(n / G, G, wg, 1, xr, yr); break;
            case 2: W8_FN(w4a8_x8_tile)(n / G, G, wg, 2, xr, yr); break;
            case 3: W8_FN(w4a8_x8_tile)(n / G, G, wg, 3, xr, yr); break;
            default: W8_FN(w4a8_x8_tile)(n / G, G, wg, 4, xr, yr); break;
            }
        }
    }
}

#define W8_ENTRY(G)                                                                                \
    void W8_CAT(codi_gemm_x8_w4a8_##G, W8_SFX)(int64_t n, int ng, const void *w, int nc,           \
                                                const void *x, size_t ldx, float *y, size_t ldy) { \
        W8_FN(w4a8_x8_drive)(n, G, ng, w, nc, x, ldx, y, ldy);                                    \
    }
W8_ENTRY(32)
W8_ENTRY(64)
W8_ENTRY(128)
#undef W8_ENTRY
#undef W8_FN
#undef W8_CAT
#undef W8_CAT_
