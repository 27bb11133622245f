/* The x8 tiles and their driver (kernels/repack.h), written once for two
 * instruction sets: repack_avx2.c includes this file twice, with
 *
 *   X8_SFX  the suffix of the entry points (avx2, avxvnni)
 *   X8_TARGET  a target attribute for every function (empty for AVX2)
 *   X8_VNNI 0: 8-bit products through maddubs, summed in 16 bits
 *           (Q4_x, whose 8 maddubs per block stay below 2^15) or widened
 *           with madd (Q8_0); 1: vpdpbusd (AVX-VNNI), which multiplies,
 *           widens and accumulates in one instruction.
 *
 * The integer sum of each block is exact either way, and the float steps
 * are the same instructions in the same order, so both instances give the
 * same results bit for bit (tests/test_kernels.c, test_gemm_x8).
 *
 * Work order: a call stages the activation scales of up to XC tokens as
 * floats (per slice of SLICE blocks), then runs every group against those
 * tokens in tiles of up to TILE: a group's weights (3-8 KiB at these
 * widths) are read from memory once and stay in L1 for the other tiles. */

#define X8_CAT_(a, b) a##_##b
#define X8_CAT(a, b) X8_CAT_(a, b)
#define X8_FN(name) X8_CAT(name, X8_SFX)

#if X8_VNNI
/* u: unsigned bytes, s: signed bytes; acc: 8 x int32 */
#define X8_DOT4(acc, u, s) ((acc) = _mm256_dpbusd_avx_epi32((acc), (u), (s)))
#define X8_DOT4_SUM(acc) (acc)
#define X8_DOT8(acc, u, s) ((acc) = _mm256_dpbusd_avx_epi32((acc), (u), (s)))
#else
/* Q4_x: 8 maddubs of q <= 15 against |y| <= 128 stay below 2^15 */
#define X8_DOT4(acc, u, s) ((acc) = _mm256_add_epi16((acc), _mm256_maddubs_epi16((u), (s))))
#define X8_DOT4_SUM(acc) _mm256_madd_epi16((acc), _mm256_set1_epi16(1))
/* Q8_0: one maddubs pair reaches 2 * 128 * 127: widen each */
#define X8_DOT8(acc, u, s)                                                                        \
    ((acc) = _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((u), (s)),           \
                                                       _mm256_set1_epi16(1))))
#endif

/* ---- Q4_x: one block's integer sums, T tokens. The block's 4 vectors of
 * nibbles at qs (8 rows x 32 quants) against token t's 32 activation
 * quants at q[t]; s[t] as X8_DOT4 leaves it (X8_DOT4_SUM widens). ---- */

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(q4_block_sums)(
    const uint8_t *qs, int T, const int8_t *const *q, __m256i *s) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        s[t] = _mm256_setzero_si256();
    _Pragma("GCC unroll 8")
    for (int k = 0; k < 4; k++) {
        const __m256i p = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
        const __m256i lo = _mm256_and_si256(p, m4);
        const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            X8_DOT4(s[t], lo, bcast4(q[t] + 8 * k));
            X8_DOT4(s[t], hi, bcast4(q[t] + 8 * k + 4));
        }
    }
}

/* A tile's accumulators: zero for the first slice of in-features, else
 * the partial sums of the slices before (in y); and back into y. */
X8_TARGET __attribute__((always_inline)) static inline void X8_FN(acc_start)(
    __m256 *acc, int T, float *const *yr, int first) {
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        acc[t] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(yr[t]);
}

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(acc_end)(
    const __m256 *acc, int T, float *const *yr) {
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        _mm256_storeu_ps(yr[t], acc[t]);
}

/* A Q5_x block's integer sums in 32 bits (X8_DOT8): the nibbles at qs
 * as Q4_x's, each vector's fifth bits from its mask at qh. */
X8_TARGET __attribute__((always_inline)) static inline void X8_FN(q5_block_sums)(
    const uint8_t *qh, const uint8_t *qs, int T, const int8_t *const *q, __m256i *s) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    _Pragma("GCC unroll 8")
    for (int t = 0; t < T; t++)
        s[t] = _mm256_setzero_si256();
    _Pragma("GCC unroll 8")
    for (int k = 0; k < 4; k++) {
        const __m256i p = _mm256_loadu_si256((const __m256i *)(qs + 32 * k));
        const __m256i lo = _mm256_or_si256(_mm256_and_si256(p, m4), fifth_bits(qh + 8 * k));
        const __m256i hi = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(p, 4), m4),
                                           fifth_bits(qh + 8 * k + 4));
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            X8_DOT8(s[t], lo, bcast4(q[t] + 8 * k));
            X8_DOT8(s[t], hi, bcast4(q[t] + 8 * k + 4));
        }
    }
}

/* ---- Q4_1 (Q5_1: five) x Q8_1: (d_w d_y) sum q y + m_w s_y per block ---- */

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(q4_1_tile)(
    int five, int64_t nb, const uint8_t *wg, int T, const uint8_t *const *xr,
    const float (*dy)[SLICE], const float (*sy)[SLICE], float *const *yr, int first) {
    const size_t bbytes = (five ? sizeof(codi_block_q5_1) : sizeof(codi_block_q4_1)) * CODI_X8_ROWS;
    __m256 acc[TILE];
    X8_FN(acc_start)(acc, T, yr, first);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * bbytes;
        prefetch_ahead(b, bbytes);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16)));
        const int8_t *q[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            q[t] = ((const codi_block_q8_1 *)xr[t])[i].qs;
        __m256i s[TILE];
        if (five)
            X8_FN(q5_block_sums)(b + 32, b + 64, T, q, s);
        else
            X8_FN(q4_block_sums)(b + 32, T, q, s);
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const __m256 sum = _mm256_cvtepi32_ps(five ? s[t] : X8_DOT4_SUM(s[t]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(&dy[t][i])), sum, acc[t]);
            acc[t] = _mm256_fmadd_ps(mw, _mm256_broadcast_ss(&sy[t][i]), acc[t]);
        }
    }
    X8_FN(acc_end)(acc, T, yr);
}

/* ---- Q8_0 x Q8_0: |w| times y with w's sign, per 4-byte quad ---- */

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(q8_0_tile)(
    int64_t nb, const uint8_t *wg, int T, const uint8_t *const *xr, const float (*dy)[SLICE],
    float *const *yr, int first) {
    __m256 acc[TILE];
    X8_FN(acc_start)(acc, T, yr, first);
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
                X8_DOT8(s[t], aw, _mm256_sign_epi8(y, w));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(&dy[t][i])),
                                     _mm256_cvtepi32_ps(s[t]), acc[t]);
    }
    X8_FN(acc_end)(acc, T, yr);
}

/* ---- Q4_0 (Q5_0: five) x Q8_0: (q - 8) y = q y - 8 y (Q5_0: q =
 * nibble + 16 * fifth bit, offset 16), with the blocks' sums of y staged
 * with their scales. Q5_x's q <= 31 against |y| <= 128 reaches 7936 per
 * maddubs pair, so its sums are widened each time (q5_block_sums) ---- */

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(q4_0_tile)(
    int five, int64_t nb, const uint8_t *wg, int T, const uint8_t *const *xr,
    const float (*dy)[SLICE], const int32_t (*s8)[SLICE], float *const *yr, int first) {
    const size_t bbytes = (five ? sizeof(codi_block_q5_0) : sizeof(codi_block_q4_0)) * CODI_X8_ROWS;
    __m256 acc[TILE];
    X8_FN(acc_start)(acc, T, yr, first);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * bbytes;
        prefetch_ahead(b, bbytes);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const int8_t *q[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            q[t] = ((const codi_block_q8_0 *)xr[t])[i].qs;
        __m256i s[TILE];
        if (five)
            X8_FN(q5_block_sums)(b + 16, b + 48, T, q, s);
        else
            X8_FN(q4_block_sums)(b + 16, T, q, s);
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            const __m256i si =
                _mm256_sub_epi32(five ? s[t] : X8_DOT4_SUM(s[t]), _mm256_set1_epi32(s8[t][i]));
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(&dy[t][i])),
                                     _mm256_cvtepi32_ps(si), acc[t]);
        }
    }
    X8_FN(acc_end)(acc, T, yr);
}

/* ---- Q4_K (Q5_K: five) x Q8_K, per super-block of 256: d dy sum_s sc_s
 * (q . y)_s - dmin dy sum_s m_s bsum_s over its 8 sub-blocks s of 32. The
 * 6-bit scales and mins of the 8 rows are unpacked in 32-bit lanes, one
 * lane a row; a sub-block's 8 maddubs of q <= 15 stay below 2^15
 * (X8_DOT4), those of Q5_K's q <= 31 are widened (X8_DOT8) ---- */

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(k4_tile)(
    int five, int64_t nb, const uint8_t *wg, int T, const uint8_t *const *xr,
    const float (*dy)[SLICE], float *const *yr, int first) {
    const size_t bbytes = (five ? sizeof(codi_block_q5_K) : sizeof(codi_block_q4_K)) * CODI_X8_ROWS;
    const __m256i m4 = _mm256_set1_epi8(0x0F), m6 = _mm256_set1_epi32(63),
                  l4 = _mm256_set1_epi32(0x0F), l2 = _mm256_set1_epi32(3);
    __m256 acc[TILE];
    X8_FN(acc_start)(acc, T, yr, first);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * bbytes;
        _Pragma("GCC unroll 8")
        for (size_t o = 0; o < bbytes; o += 256)
            prefetch_ahead(b + o, 256);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const __m256 mw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(b + 16)));
        const __m256i s0 = _mm256_loadu_si256((const __m256i *)(b + 32)),
                      s1 = _mm256_loadu_si256((const __m256i *)(b + 64)),
                      s2 = _mm256_loadu_si256((const __m256i *)(b + 96));
        __m256i sc[8], mn[8];
        _Pragma("GCC unroll 4")
        for (int k = 0; k < 4; k++) { /* as get_scale_min_k4 */
            const __m256i a0 = _mm256_srli_epi32(s0, 8 * k), a1 = _mm256_srli_epi32(s1, 8 * k),
                          a2 = _mm256_srli_epi32(s2, 8 * k);
            sc[k] = _mm256_and_si256(a0, m6);
            mn[k] = _mm256_and_si256(a1, m6);
            sc[k + 4] = _mm256_or_si256(_mm256_and_si256(a2, l4),
                                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(a0, 6), l2), 4));
            mn[k + 4] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi32(a2, 4), l4),
                                        _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(a1, 6), l2), 4));
        }
        const uint8_t *qh = b + 128, *qs = b + (five ? 384 : 128);
        const codi_block_q8_K *y[TILE];
        __m256i is[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            y[t] = (const codi_block_q8_K *)xr[t] + i;
            is[t] = _mm256_setzero_si256();
        }
        for (int j = 0; j < 4; j++) {
            __m256i slo[TILE], shi[TILE];
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++)
                slo[t] = shi[t] = _mm256_setzero_si256();
            _Pragma("GCC unroll 8")
            for (int k = 0; k < 8; k++) {
                const __m256i p = _mm256_loadu_si256((const __m256i *)(qs + 256 * j + 32 * k));
                __m256i lo = _mm256_and_si256(p, m4);
                __m256i hi = _mm256_and_si256(_mm256_srli_epi16(p, 4), m4);
                if (five) {
                    lo = _mm256_or_si256(lo, fifth_bits(qh + 8 * (8 * j + k)));
                    hi = _mm256_or_si256(hi, fifth_bits(qh + 8 * (8 * j + k) + 4));
                }
                _Pragma("GCC unroll 8")
                for (int t = 0; t < T; t++) {
                    if (five) {
                        X8_DOT8(slo[t], lo, bcast4(y[t]->qs + 64 * j + 4 * k));
                        X8_DOT8(shi[t], hi, bcast4(y[t]->qs + 64 * j + 32 + 4 * k));
                    } else {
                        X8_DOT4(slo[t], lo, bcast4(y[t]->qs + 64 * j + 4 * k));
                        X8_DOT4(shi[t], hi, bcast4(y[t]->qs + 64 * j + 32 + 4 * k));
                    }
                }
            }
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const __m256i a = five ? slo[t] : X8_DOT4_SUM(slo[t]),
                              c = five ? shi[t] : X8_DOT4_SUM(shi[t]);
                is[t] = _mm256_add_epi32(is[t], _mm256_add_epi32(_mm256_mullo_epi32(sc[2 * j], a),
                                                                 _mm256_mullo_epi32(sc[2 * j + 1], c)));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            __m256i ms = _mm256_setzero_si256();
            _Pragma("GCC unroll 8")
            for (int s = 0; s < 8; s++)
                ms = _mm256_add_epi32(ms, _mm256_mullo_epi32(mn[s], _mm256_set1_epi32(
                                                                        (int)y[t]->bsums[2 * s] +
                                                                        (int)y[t]->bsums[2 * s + 1])));
            const __m256 yd = _mm256_broadcast_ss(&dy[t][i]);
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, yd), _mm256_cvtepi32_ps(is[t]), acc[t]);
            acc[t] = _mm256_fnmadd_ps(_mm256_mul_ps(mw, yd), _mm256_cvtepi32_ps(ms), acc[t]);
        }
    }
    X8_FN(acc_end)(acc, T, yr);
}

/* ---- Q6_K x Q8_K, per super-block of 256: d dy sum_s sc_s ((q . y)_s -
 * 32 bsum_s) over its 16 sub-blocks s of 16, sc_s signed. q <= 63: each
 * maddubs is widened (X8_DOT8) ---- */

X8_TARGET __attribute__((always_inline)) static inline void X8_FN(q6_K_tile)(
    int64_t nb, const uint8_t *wg, int T, const uint8_t *const *xr, const float (*dy)[SLICE],
    float *const *yr, int first) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m30 = _mm256_set1_epi8(0x30);
    __m256 acc[TILE];
    X8_FN(acc_start)(acc, T, yr, first);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *b = wg + (size_t)i * (sizeof(codi_block_q6_K) * CODI_X8_ROWS);
        _Pragma("GCC unroll 8")
        for (size_t o = 0; o < sizeof(codi_block_q6_K) * CODI_X8_ROWS; o += 256)
            prefetch_ahead(b + o, 256);
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)b));
        const uint8_t *ql = b + 144, *qh = b + 144 + 1024;
        const codi_block_q8_K *y[TILE];
        __m256i is[TILE];
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++) {
            y[t] = (const codi_block_q8_K *)xr[t] + i;
            is[t] = _mm256_setzero_si256();
        }
        for (int s = 0; s < 16; s++) {
            const __m256i sc = _mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(b + 16 + 8 * s)));
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)(ql + 64 * s)),
                          l1 = _mm256_loadu_si256((const __m256i *)(ql + 64 * s + 32)),
                          h = _mm256_loadu_si256((const __m256i *)(qh + 32 * s));
            const __m256i v0 = _mm256_or_si256(_mm256_and_si256(l0, m4),
                                               _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
            const __m256i v1 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                                               _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
            const __m256i v2 = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_and_si256(h, m30));
            const __m256i v3 = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                                               _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
            _Pragma("GCC unroll 8")
            for (int t = 0; t < T; t++) {
                const int8_t *q = y[t]->qs + 16 * s;
                __m256i d = _mm256_setzero_si256();
                X8_DOT8(d, v0, bcast4(q));
                X8_DOT8(d, v1, bcast4(q + 4));
                X8_DOT8(d, v2, bcast4(q + 8));
                X8_DOT8(d, v3, bcast4(q + 12));
                d = _mm256_sub_epi32(d, _mm256_set1_epi32(32 * (int)y[t]->bsums[s]));
                is[t] = _mm256_add_epi32(is[t], _mm256_mullo_epi32(sc, d));
            }
        }
        _Pragma("GCC unroll 8")
        for (int t = 0; t < T; t++)
            acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(dw, _mm256_broadcast_ss(&dy[t][i])),
                                     _mm256_cvtepi32_ps(is[t]), acc[t]);
    }
    X8_FN(acc_end)(acc, T, yr);
}

/* ---- driver ---- */

/* kind is a constant once inlined, so each entry point keeps only its own
 * tile. */
X8_TARGET __attribute__((always_inline)) static inline void X8_FN(x8_drive)(int kind, int64_t n, int ng,
                                                                  const void *w, int nc,
                                                                  const void *x, size_t ldx,
                                                                  float *y, size_t ldy) {
    /* block sizes and the activation type from the type table */
    const codi_type_traits *tw = codi_type_get(kind), *tx = codi_type_get(tw->vec_dot_type);
    const bool kq = tw->vec_dot_type == CODI_TYPE_Q8_K, q81 = tw->vec_dot_type == CODI_TYPE_Q8_1;
    const int64_t nb = n / tw->blck_size;
    const size_t bbytes = tw->type_size * CODI_X8_ROWS, xbytes = tx->type_size;
    const size_t gbytes = (size_t)nb * bbytes;
    float dy[XC][SLICE];
    union {
        float f[XC][SLICE];   /* Q4_1, Q5_1: the activation blocks' s */
        int32_t i[XC][SLICE]; /* Q4_0 (Q5_0): 8 (16) * their sums of quants */
    } aux;
    for (int cb = 0; cb < nc; cb += XC) {
        const int ncb = nc - cb < XC ? nc - cb : XC;
        for (int64_t i0 = 0; i0 < nb; i0 += SLICE) {
            const int64_t ns = nb - i0 < SLICE ? nb - i0 : SLICE;
            for (int t = 0; t < ncb; t++) {
                const uint8_t *xs = (const uint8_t *)x + (size_t)(cb + t) * ldx + (size_t)i0 * xbytes;
                if (q81)
                    q8_1_scales((const codi_block_q8_1 *)xs, ns, dy[t], aux.f[t]);
                else if (kq)
                    q8_K_scales((const codi_block_q8_K *)xs, ns, dy[t]);
                else if (kind == CODI_TYPE_Q4_0 || kind == CODI_TYPE_Q5_0)
                    q8_0_sums((const codi_block_q8_0 *)xs, ns, kind == CODI_TYPE_Q5_0 ? 16 : 8, dy[t],
                              aux.i[t]);
                else
                    q8_0_scales((const codi_block_q8_0 *)xs, ns, dy[t]);
            }
            for (int g = 0; g < ng; g++) {
                const uint8_t *wg = (const uint8_t *)w + (size_t)g * gbytes + (size_t)i0 * bbytes;
                for (int c0 = 0; c0 < ncb; c0 += TILE) {
                    const int tn = ncb - c0 < TILE ? ncb - c0 : TILE;
                    const uint8_t *xr[TILE];
                    float *yr[TILE];
                    for (int t = 0; t < tn; t++) {
                        xr[t] = (const uint8_t *)x + (size_t)(cb + c0 + t) * ldx + (size_t)i0 * xbytes;
                        yr[t] = y + (size_t)(cb + c0 + t) * ldy + (size_t)g * CODI_X8_ROWS;
                    }
                    const float(*d)[SLICE] = (const float(*)[SLICE])(dy + c0);
                    if (kind == CODI_TYPE_Q4_1)
                        X8_TOKENS(tn, X8_FN(q4_1_tile)(0, ns, wg, T, xr, d,
                                                       (const float(*)[SLICE])(aux.f + c0), yr, i0 == 0))
                    else if (kind == CODI_TYPE_Q5_1)
                        X8_TOKENS(tn, X8_FN(q4_1_tile)(1, ns, wg, T, xr, d,
                                                       (const float(*)[SLICE])(aux.f + c0), yr, i0 == 0))
                    else if (kind == CODI_TYPE_Q4_0)
                        X8_TOKENS(tn, X8_FN(q4_0_tile)(0, ns, wg, T, xr, d,
                                                       (const int32_t(*)[SLICE])(aux.i + c0), yr, i0 == 0))
                    else if (kind == CODI_TYPE_Q5_0)
                        X8_TOKENS(tn, X8_FN(q4_0_tile)(1, ns, wg, T, xr, d,
                                                       (const int32_t(*)[SLICE])(aux.i + c0), yr, i0 == 0))
                    else if (kind == CODI_TYPE_Q4_K)
                        X8_TOKENS(tn, X8_FN(k4_tile)(0, ns, wg, T, xr, d, yr, i0 == 0))
                    else if (kind == CODI_TYPE_Q5_K)
                        X8_TOKENS(tn, X8_FN(k4_tile)(1, ns, wg, T, xr, d, yr, i0 == 0))
                    else if (kind == CODI_TYPE_Q6_K)
                        X8_TOKENS(tn, X8_FN(q6_K_tile)(ns, wg, T, xr, d, yr, i0 == 0))
                    else
                        X8_TOKENS(tn, X8_FN(q8_0_tile)(ns, wg, T, xr, d, yr, i0 == 0))
                }
            }
        }
    }
}

/* the entry points (repack.h): one per type, each the driver for its kind */
#define X8_ENTRY(name, kind)                                                                      \
    X8_TARGET void X8_FN(codi_gemm_x8_##name)(int64_t n, int ng, const void *w, int nc,           \
                                              const void *x, size_t ldx, float *y, size_t ldy) {  \
        X8_FN(x8_drive)(kind, n, ng, w, nc, x, ldx, y, ldy);                                     \
    }
X8_ENTRY(q4_1, CODI_TYPE_Q4_1)
X8_ENTRY(q8_0, CODI_TYPE_Q8_0)
X8_ENTRY(q4_0, CODI_TYPE_Q4_0)
X8_ENTRY(q4_K, CODI_TYPE_Q4_K)
X8_ENTRY(q5_K, CODI_TYPE_Q5_K)
X8_ENTRY(q6_K, CODI_TYPE_Q6_K)
X8_ENTRY(q5_1, CODI_TYPE_Q5_1)
X8_ENTRY(q5_0, CODI_TYPE_Q5_0)
#undef X8_ENTRY

#undef X8_DOT4
#undef X8_DOT4_SUM
#undef X8_DOT8
#undef X8_FN
#undef X8_CAT
#undef X8_CAT_
