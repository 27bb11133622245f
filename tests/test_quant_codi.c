/* codi's own weight types (tensor/quant_codi.h, docs/formats.md):
 *   - round trip: quantize -> dequantize error within the documented bound
 *     (Q4G: RMS per group <= (max - min) / 30 + 2^-10 max|w|; Q8G: every
 *     element within max|w| / 254 + 2^-10 max|w|);
 *   - layout: Q4G32 reads as ggml's Q4_1 and Q8G32 as Q8_0;
 *   - the importance-weighted Q4G search never does worse (in weighted
 *     error) than plain min/max;
 *   - AVX2 dot products and gemm tiles against the scalar references
 *     (integer sums exact, float order differs: within 1e-5 relative of
 *     the sum of |terms|; gemm bit-equal to the AVX2 vec_dot per pair). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/codi_avx2.h"
#include "model/model.h"
#include "quant/mix.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "tensor/blocks.h"
#include "tensor/quant_codi.h"
#include "tensor/quants.h"
#include "tensor/types.h"

static uint64_t rng_state;
static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }
static uint64_t rnd_u64(void) {
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
static double rnd_unit(void) { return (double)(rnd_u64() >> 11) * 0x1.0p-53; }
static float rnd_gauss(void) {
    double u1 = rnd_unit(), u2 = rnd_unit();
    if (u1 < 1e-300)
        u1 = 1e-300;
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}
static uint32_t f2u(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static const int GROUPS[] = {32, 64, 128};

static void fill_weights(float *x, int64_t n, int seed) {
    for (int64_t i = 0; i < n; i++) {
        x[i] = rnd_gauss() * 0.02f + (seed % 3 == 1 ? 0.01f : 0.0f);
        if (seed % 5 == 2 && i % 97 == 0)
            x[i] *= 20.0f; /* outliers */
    }
    if (seed % 7 == 3)
        for (int64_t i = 0; i < n && i < 32; i++)
            x[i] = 0.25f; /* a constant group */
}

static void test_round_trip(void **state) {
    (void)state;
    enum { N = 1024 };
    float x[N], y[N];
    uint8_t buf[N * 2];
    for (size_t gi = 0; gi < 3; gi++) {
        const int G = GROUPS[gi];
        for (int seed = 0; seed < 40; seed++) {
            rng_seed((uint64_t)seed * 31 + (uint64_t)G);
            fill_weights(x, N, seed);
            const int t4 = codi_type_codi_group(4, G), t8 = codi_type_codi_group(8, G);
            assert_int_equal(codi_type_group_size(t4), G);
            assert_int_equal(codi_type_group_size(t8), G);
            codi_type_get(t4)->from_float(x, buf, N);
            codi_type_get(t4)->to_float(buf, y, N);
            for (int g = 0; g < N / G; g++) {
                float mn = x[g * G], mx = x[g * G], amax = 0;
                double se = 0;
                for (int i = 0; i < G; i++) {
                    const float v = x[g * G + i];
                    mn = v < mn ? v : mn;
                    mx = v > mx ? v : mx;
                    amax = fabsf(v) > amax ? fabsf(v) : amax;
                    se += (double)(v - y[g * G + i]) * (v - y[g * G + i]);
                }
                const double rms = sqrt(se / G), bound = (mx - mn) / 30.0 + amax / 1024.0;
                if (!(rms <= bound))
                    fail_msg("Q4G%d seed %d group %d: rms %.3g > %.3g", G, seed, g, rms, bound);
            }
            codi_type_get(t8)->from_float(x, buf, N);
            codi_type_get(t8)->to_float(buf, y, N);
            for (int g = 0; g < N / G; g++) {
                float amax = 0;
                for (int i = 0; i < G; i++)
                    amax = fabsf(x[g * G + i]) > amax ? fabsf(x[g * G + i]) : amax;
                for (int i = 0; i < G; i++)
                    assert_true(fabsf(x[g * G + i] - y[g * G + i]) <= amax / 254.0f + amax / 1024.0f);
            }
        }
    }
}

/* Q4G32 / Q8G32 are byte-compatible with Q4_1 / Q8_0. */
static void test_layout(void **state) {
    (void)state;
    enum { N = 256 };
    float x[N], a[N], b[N];
    uint8_t buf[N * 2];
    rng_seed(5);
    fill_weights(x, N, 0);
    codi_quantize_row_q4g(x, buf, N, 32, NULL);
    codi_dequantize_row_q4g(buf, a, N, 32);
    codi_dequantize_row_q4_1_ref(buf, b, N);
    assert_memory_equal(a, b, sizeof a);
    codi_quantize_row_q8g(x, buf, N, 32);
    codi_dequantize_row_q8g(buf, a, N, 32);
    codi_dequantize_row_q8_0_ref(buf, b, N);
    assert_memory_equal(a, b, sizeof a);
    /* And the dot products agree with ggml's types. */
    uint8_t act[N * 2];
    float s1, s2;
    for (int i = 0; i < N; i++)
        a[i] = rnd_gauss();
    codi_quantize_row_q8_0_ref(a, act, N);
    codi_vec_dot_q8g_q8_0(N, &s1, buf, act, 32);
    codi_vec_dot_q8_0_q8_0_ref(N, &s2, buf, act);
    assert_int_equal(f2u(s1), f2u(s2));
}

/* The search weighted by importance never has a larger weighted error than
 * min/max quantization with fp16 (d, m). */
static void test_importance(void **state) {
    (void)state;
    enum { N = 512 };
    float x[N], imp[N], y[N];
    uint8_t buf[N];
    for (int seed = 0; seed < 20; seed++) {
        rng_seed(1000 + (uint64_t)seed);
        fill_weights(x, N, seed);
        for (int i = 0; i < N; i++)
            imp[i] = (float)(rnd_unit() * rnd_unit() * 4.0);
        codi_quantize_row_q4g(x, buf, N, 64, imp);
        codi_dequantize_row_q4g(buf, y, N, 64);
        double e = 0, e0 = 0;
        for (int g = 0; g < N / 64; g++) {
            float mn = x[g * 64], mx = x[g * 64];
            for (int i = 0; i < 64; i++) {
                mn = fminf(mn, x[g * 64 + i]);
                mx = fmaxf(mx, x[g * 64 + i]);
            }
            const float d = codi_fp16_to_fp32(codi_fp32_to_fp16((mx - mn) / 15.0f));
            const float m = codi_fp16_to_fp32(codi_fp32_to_fp16(mn));
            for (int i = 0; i < 64; i++) {
                const int k = g * 64 + i;
                float q = d > 0 ? rintf((x[k] - m) / d) : 0;
                q = q < 0 ? 0 : q > 15 ? 15 : q;
                e0 += imp[k] * (double)(q * d + m - x[k]) * (q * d + m - x[k]);
                e += imp[k] * (double)(y[k] - x[k]) * (y[k] - x[k]);
            }
        }
        assert_true(e <= e0 * 1.0001 + 1e-12);
    }
}

static void test_kernels(void **state) {
    (void)state;
#if defined(__x86_64__) || defined(__i386__)
    if (strcmp(codi_kernel_backend(), "avx2") != 0)
        skip();
    enum { MAXR = 9, MAXC = 7, MAXN = 12 * 128 };
    float *x = malloc(MAXN * sizeof *x);
    uint8_t *w = malloc(MAXR * (size_t)MAXN * 2);
    uint8_t *a = malloc(MAXC * (size_t)MAXN * 2);
    float y[MAXC * MAXR], ref[MAXC * MAXR], fast[MAXC * MAXR];
    assert_non_null(x);
    assert_non_null(w);
    assert_non_null(a);
    for (int bits = 4; bits <= 8; bits += 4)
        for (size_t gi = 0; gi < 3; gi++) {
            const int G = GROUPS[gi];
            const int type = codi_type_codi_group(bits, G);
            const codi_type_traits *t = codi_type_get(type);
            const codi_vec_dot_fn dot = codi_kernel_vec_dot(type);
            const codi_gemm_fn gemm = codi_kernel_gemm(type);
            assert_non_null(gemm);
            assert_ptr_not_equal(dot, t->vec_dot);
            for (int seed = 0; seed < 40; seed++) {
                rng_seed((uint64_t)seed * 13 + (uint64_t)type);
                const int nr = 1 + seed % MAXR, nc = 1 + (seed * 5) % MAXC;
                const int64_t n = (int64_t)G * (1 + (seed * 7) % (MAXN / G));
                const size_t ldw = codi_row_size(type, n) + (size_t)(seed % 3);
                const size_t ldx = codi_row_size(t->vec_dot_type, n);
                for (int r = 0; r < nr; r++) {
                    fill_weights(x, n, seed + r);
                    t->from_float(x, w + (size_t)r * ldw, n);
                }
                for (int c = 0; c < nc; c++) {
                    for (int64_t i = 0; i < n; i++)
                        x[i] = rnd_gauss() * 2.0f;
                    codi_kernel_from_float(t->vec_dot_type)(x, a + (size_t)c * ldx, n);
                }
                memset(y, 0xAB, sizeof y);
                gemm(n, nr, nc, w, ldw, a, ldx, y, MAXR);
                codi_gemm_generic(t->vec_dot, n, nr, nc, w, ldw, a, ldx, ref, MAXR);
                codi_gemm_generic(dot, n, nr, nc, w, ldw, a, ldx, fast, MAXR);
                for (int c = 0; c < nc; c++)
                    for (int r = 0; r < MAXR; r++) {
                        const float got = y[c * MAXR + r];
                        if (r >= nr) {
                            assert_int_equal(f2u(got), 0xABABABABu);
                            continue;
                        }
                        /* scale of the terms: |w| |x| summed */
                        const float want = ref[c * MAXR + r];
                        const float tol = 1e-5f * (1.0f + fabsf(want)) * sqrtf((float)n);
                        if (!(fabsf(fast[c * MAXR + r] - want) <= tol))
                            fail_msg("%s seed %d n %lld: avx2 %.9g ref %.9g", t->name, seed, (long long)n,
                                     fast[c * MAXR + r], want);
                        if (!(fabsf(got - want) <= tol))
                            fail_msg("%s seed %d n %lld: gemm %.9g ref %.9g", t->name, seed, (long long)n, got,
                                     want);
                    }
            }
        }
    free(x);
    free(w);
    free(a);
#else
    skip();
#endif
}

/* GQSA: random kept sets; the reference dot equals the Q4G dot of the
 * dense row with the removed groups zeroed (same integer sums, and the
 * removed groups contribute nothing); AVX2 vec_dot and gemm against the
 * reference; the index check rejects out-of-range and unordered indices. */
static void test_gqsa(void **state) {
    (void)state;
    enum { MAXR = 7, MAXC = 5, MAXN = 8 * 128 };
    float *x = malloc(MAXN * sizeof *x), *back = malloc(MAXN * sizeof *back);
    uint8_t *w = malloc(MAXR * (size_t)MAXN);
    uint8_t *a = malloc(MAXC * (size_t)MAXN * 2);
    float y[MAXC * MAXR], ref[MAXC * MAXR], fast[MAXC * MAXR];
    int32_t keep[MAXN / 32];
    for (size_t gi = 0; gi < 3; gi++) {
        const int G = GROUPS[gi];
        const int type = codi_type_codi_group(-4, G);
        assert_true(codi_type_is_sparse(type));
        const codi_type_traits *t = codi_type_get(type);
        for (int seed = 0; seed < 30; seed++) {
            rng_seed((uint64_t)seed * 7 + (uint64_t)G);
            const int ng = 1 + seed % (MAXN / G);
            const int64_t ne0 = (int64_t)ng * G;
            const int k = 1 + (int)(rnd_u64() % (uint64_t)ng);
            const int nr = 1 + seed % MAXR, nc = 1 + seed % MAXC;
            const size_t ldw = codi_row_size(type, (int64_t)k * G);
            const size_t ldx = codi_row_size(CODI_TYPE_Q8_1, ne0);
            for (int r = 0; r < nr; r++) {
                /* k distinct increasing groups */
                int n_k = 0;
                for (int g = 0; g < ng; g++)
                    if ((int)(rnd_u64() % (uint64_t)(ng - g)) < k - n_k)
                        keep[n_k++] = g;
                assert_int_equal(n_k, k);
                fill_weights(x, ne0, seed + r);
                codi_quantize_row_gqsa(x, w + (size_t)r * ldw, ne0, G, keep, k, NULL);
                /* compact dequantize = the kept groups of x, as Q4G */
                t->to_float(w + (size_t)r * ldw, back, (int64_t)k * G);
                for (int i = 0; i < k; i++) {
                    float q[128];
                    uint8_t blk[CODI_Q4G_BYTES(128)];
                    codi_quantize_row_q4g(x + (int64_t)keep[i] * G, blk, G, G, NULL);
                    codi_dequantize_row_q4g(blk, q, G, G);
                    assert_memory_equal(q, back + (int64_t)i * G, (size_t)G * sizeof(float));
                }
            }
            assert_int_equal(codi_gqsa_check(w, type, (int64_t)k * G, nr, ne0), 0);
            for (int c = 0; c < nc; c++) {
                for (int64_t i = 0; i < ne0; i++)
                    x[i] = rnd_gauss();
                codi_quantize_row_q8_1_ref(x, a + (size_t)c * ldx, ne0);
            }
            codi_gemm_generic(t->vec_dot, (int64_t)k * G, nr, nc, w, ldw, a, ldx, ref, MAXR);
            if (strcmp(codi_kernel_backend(), "avx2") == 0) {
                codi_gemm_generic(codi_kernel_vec_dot(type), (int64_t)k * G, nr, nc, w, ldw, a, ldx, fast, MAXR);
                codi_kernel_gemm(type)((int64_t)k * G, nr, nc, w, ldw, a, ldx, y, MAXR);
                for (int c = 0; c < nc; c++)
                    for (int r = 0; r < nr; r++) {
                        const float want = ref[c * MAXR + r];
                        const float tol = 1e-5f * (1.0f + fabsf(want)) * sqrtf((float)ne0);
                        assert_true(fabsf(fast[c * MAXR + r] - want) <= tol);
                        assert_true(fabsf(y[c * MAXR + r] - want) <= tol);
                    }
            }
            /* corrupt one index: out of range, then out of order */
            uint8_t *idx = w + 4;
            const uint16_t save = (uint16_t)(idx[0] | idx[1] << 8);
            idx[0] = (uint8_t)ng;
            idx[1] = (uint8_t)(ng >> 8);
            assert_int_not_equal(codi_gqsa_check(w, type, (int64_t)k * G, nr, ne0), 0);
            if (k >= 2) {
                idx[0] = 0xFF;
                idx[1] = 0xFF;
                assert_int_not_equal(codi_gqsa_check(w, type, (int64_t)k * G, nr, ne0), 0);
            }
            idx[0] = (uint8_t)save;
            idx[1] = (uint8_t)(save >> 8);
            assert_int_equal(codi_gqsa_check(w, type, (int64_t)k * G, nr, ne0), 0);
        }
    }
    free(x);
    free(back);
    free(w);
    free(a);
}

/* A mix matrix (Q4G rows + Q8G rows + output order) through
 * codi_mix_chunk equals, row for row, the reference dots of each part
 * written at perm[s], for every chunk split (chunks straddling the 4/8-bit
 * boundary included). */
static void test_mix_chunk(void **state) {
    (void)state;
    enum { NE0 = 256, NE1 = 37, NC = 5 };
    float x[NE0];
    int16_t perm[NE1];
    uint8_t hi[NE1];
    int n_lo = 0;
    rng_seed(99);
    for (int r = 0; r < NE1; r++) {
        hi[r] = (uint8_t)(rnd_u64() % 4 == 0);
        n_lo += !hi[r];
    }
    const int G = 64, t4 = codi_type_codi_group(4, G), t8 = codi_type_codi_group(8, G);
    const size_t r4 = codi_row_size(t4, NE0), r8 = codi_row_size(t8, NE0), rx = codi_row_size(CODI_TYPE_Q8_1, NE0);
    uint8_t *lo = malloc(r4 * NE1), *hb = malloc(r8 * NE1), *act = malloc(rx * NC);
    int s = 0, s8 = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int r = 0; r < NE1; r++) {
            if (hi[r] != pass)
                continue;
            fill_weights(x, NE0, r);
            if (pass == 0)
                codi_quantize_row_q4g(x, lo + (size_t)s * r4, NE0, G, NULL);
            else
                codi_quantize_row_q8g(x, hb + (size_t)(s8++) * r8, NE0, G);
            perm[s++] = (int16_t)r;
        }
    for (int c = 0; c < NC; c++) {
        for (int i = 0; i < NE0; i++)
            x[i] = rnd_gauss();
        codi_quantize_row_q8_1_ref(x, act + (size_t)c * rx, NE0);
    }
    codi_weight w = {0};
    w.data = lo;
    w.type = t4;
    w.ne0 = NE0;
    w.ne1 = NE1;
    w.row_bytes = r4;
    w.data_hi = hb;
    w.type_hi = t8;
    w.row_bytes_hi = r8;
    w.n_lo = n_lo;
    w.perm = perm;
    float want[NC * NE1], got[NC * NE1];
    for (int st = 0; st < NE1; st++)
        for (int c = 0; c < NC; c++) {
            float v;
            if (st < n_lo)
                codi_vec_dot_q4g_q8_1(NE0, &v, lo + (size_t)st * r4, act + (size_t)c * rx, G);
            else
                codi_vec_dot_q8g_q8_1(NE0, &v, hb + (size_t)(st - n_lo) * r8, act + (size_t)c * rx, G);
            want[c * NE1 + perm[st]] = v;
        }
    for (int rows = 1; rows <= 16; rows += 5) {
        memset(got, 0, sizeof got);
        for (int r0 = 0; r0 < NE1; r0 += rows)
            codi_mix_chunk(&w, r0, r0 + rows <= NE1 ? rows : NE1 - r0, act, rx, NC, got, NE1);
        for (int i = 0; i < NC * NE1; i++)
            assert_true(fabsf(got[i] - want[i]) <= 1e-4f * (1.0f + fabsf(want[i])));
    }
    free(lo);
    free(hb);
    free(act);
}

/* W4A8: round trip (row scale x int8 units within the documented bound),
 * the reference dot equals the float dot of the dequantized values exactly
 * up to float rounding, and the AVX2 vec_dot and gemm are bit-equal to it
 * (integer arithmetic, one float multiply). */
static void test_w4a8(void **state) {
    (void)state;
    enum { MAXR = 6, MAXC = 5, MAXN = 40 * 128 };
    float *x = malloc(MAXN * sizeof *x), *back = malloc(MAXN * sizeof *back), *xa = malloc(MAXN * sizeof *xa);
    uint8_t *w = malloc(MAXR * (size_t)MAXN), *a = malloc(MAXC * (size_t)MAXN * 2);
    float y[MAXC * MAXR], ref[MAXC * MAXR], fast[MAXC * MAXR];
    for (size_t gi = 0; gi < 3; gi++) {
        const int G = GROUPS[gi];
        const int type = codi_type_codi_group(48, G);
        assert_true(codi_type_is_w4a8(type));
        const codi_type_traits *t = codi_type_get(type);
        for (int seed = 0; seed < 20; seed++) {
            rng_seed((uint64_t)seed * 3 + (uint64_t)G);
            const int64_t n = (int64_t)G * (1 + (seed * 11) % (MAXN / G));
            const int nr = 1 + seed % MAXR, nc = 1 + seed % MAXC;
            const size_t ldw = codi_row_size(type, n), ldx = codi_row_size(CODI_TYPE_A8, n);
            for (int r = 0; r < nr; r++) {
                fill_weights(x, n, seed + r);
                float sc = 0.0f;
                codi_quantize_row_w4a8(x, w + (size_t)r * ldw, n, G, &sc);
                t->to_float(w + (size_t)r * ldw, back, n);
                float amax = 0;
                for (int64_t i = 0; i < n; i++)
                    amax = fmaxf(amax, fabsf(x[i]));
                for (int64_t g = 0; g < n / G; g++) {
                    float mn = 1e30f, mx = -1e30f;
                    for (int i = 0; i < G; i++) {
                        mn = fminf(mn, x[g * G + i]);
                        mx = fmaxf(mx, x[g * G + i]);
                    }
                    /* RMS over the group: at most half the min/max group step
                     * (>= 1 int8 unit) plus one int8 unit (the search keeps
                     * the least squared error, min/max's choice included) */
                    const float step = fmaxf(sc, sc * ceilf((mx - mn) / sc / 15.0f + 1e-3f));
                    double se = 0.0;
                    for (int i = 0; i < G; i++)
                        se += (double)(back[g * G + i] * sc - x[g * G + i]) * (back[g * G + i] * sc - x[g * G + i]);
                    assert_true(sqrt(se / G) <= 0.5f * step + sc + 1e-6f);
                    assert_true(codi_w4a8_row_fits_int8(w + (size_t)r * ldw, n, G));
                }
            }
            for (int c = 0; c < nc; c++) {
                for (int64_t i = 0; i < n; i++)
                    xa[i] = rnd_gauss();
                codi_quantize_row_a8_ref(xa, a + (size_t)c * ldx, n);
            }
            codi_gemm_generic(t->vec_dot, n, nr, nc, w, ldw, a, ldx, ref, MAXR);
            /* against float: dequantized weights (int8 units) . dequantized activations */
            for (int c = 0; c < nc; c++)
                for (int r = 0; r < nr; r++) {
                    t->to_float(w + (size_t)r * ldw, back, n);
                    codi_dequantize_row_a8_ref(a + (size_t)c * ldx, xa, n);
                    double sd = 0, sa = 0;
                    for (int64_t i = 0; i < n; i++) {
                        sd += (double)back[i] * xa[i];
                        sa += fabs((double)back[i] * xa[i]);
                    }
                    assert_true(fabs(sd - ref[c * MAXR + r]) <= 1e-5 * (1 + sa));
                }
            if (strcmp(codi_kernel_backend(), "avx2") == 0) {
                codi_gemm_generic(codi_kernel_vec_dot(type), n, nr, nc, w, ldw, a, ldx, fast, MAXR);
                codi_kernel_gemm(type)(n, nr, nc, w, ldw, a, ldx, y, MAXR);
                for (int c = 0; c < nc; c++)
                    for (int r = 0; r < nr; r++) {
                        assert_int_equal(f2u(fast[c * MAXR + r]), f2u(ref[c * MAXR + r]));
                        assert_int_equal(f2u(y[c * MAXR + r]), f2u(ref[c * MAXR + r]));
                    }
            }
        }
    }
    free(x);
    free(back);
    free(xa);
    free(w);
    free(a);
}

/* The AVX2 A8 quantizer writes the reference's bytes (codes, sum, scale),
 * zeros, halves-to-even and the largest element included. */
static void test_a8_quantize(void **state) {
    (void)state;
    if (strcmp(codi_kernel_backend(), "avx2") != 0)
        skip();
    enum { N = 32 * 37 };
    float *x = malloc(N * sizeof *x);
    codi_block_a8 ref[N / 32], fast[N / 32];
    for (int seed = 0; seed < 12; seed++) {
        rng_seed((uint64_t)seed + 100);
        const int64_t n = 32 * (1 + seed * 3);
        for (int64_t i = 0; i < n; i++)
            x[i] = seed == 0 ? 0.0f : rnd_gauss() * (seed % 4 == 1 ? 1e-3f : 3.0f);
        if (seed == 2) /* exact halves of the step: d = 1 with max 127 */
            for (int64_t i = 0; i < n; i++)
                x[i] = i == 0 ? 127.0f : (float)((i % 40) - 20) + 0.5f;
        memset(ref, 0x5A, sizeof ref);
        memset(fast, 0xA5, sizeof fast);
        codi_quantize_row_a8_ref(x, ref, n);
        codi_kernel_from_float(CODI_TYPE_A8)(x, fast, n);
        assert_memory_equal(ref, fast, (size_t)(n / 32) * sizeof *ref);
    }
    free(x);
}

/* W4A8 kernels stay exact for any header byte (group scale up to 255,
 * zero point -128) and the largest activations, over rows long enough to
 * flush the int32 lanes more than once. */
static void test_w4a8_extremes(void **state) {
    (void)state;
    if (strcmp(codi_kernel_backend(), "avx2") != 0)
        skip();
    enum { NR = 5, NC = 4, N = 3 * 32 * 1024 + 128 };
    for (size_t gi = 0; gi < 3; gi++) {
        const int G = GROUPS[gi];
        const int type = codi_type_codi_group(48, G);
        const codi_type_traits *t = codi_type_get(type);
        const size_t ldw = codi_row_size(type, N), ldx = codi_row_size(CODI_TYPE_A8, N);
        uint8_t *w = malloc(NR * ldw), *a = malloc(NC * ldx);
        rng_seed((uint64_t)G);
        for (size_t i = 0; i < NR * ldw; i++)
            w[i] = (uint8_t)(rnd_u64() >> 24);
        for (int r = 0; r < NR; r++) /* worst case: every code 15, scale 255, zero -128 */
            if (r < 2)
                for (int64_t g = 0; g < N / G; g++) {
                    uint8_t *b = w + (size_t)r * ldw + (size_t)g * CODI_W4A8_BYTES(G);
                    b[0] = 255;
                    b[1] = (uint8_t)(int8_t)-128;
                    memset(b + 2, 0xFF, (size_t)G / 2);
                }
        for (int c = 0; c < NC; c++) {
            codi_block_a8 *blk = (codi_block_a8 *)(a + (size_t)c * ldx);
            for (int64_t k = 0; k < N / 32; k++) {
                int sum = 0;
                for (int j = 0; j < 32; j++) {
                    blk[k].qs[j] = (int8_t)(c == 0 ? 127 : c == 1 ? -127 : (int)(rnd_u64() % 255) - 127);
                    sum += blk[k].qs[j];
                }
                blk[k].d = 1.0f / 4096;
                blk[k].sum = (int16_t)sum;
                blk[k].pad = 0;
            }
        }
        float ref[NC * NR], fast[NC * NR], y[NC * NR];
        codi_gemm_generic(t->vec_dot, N, NR, NC, w, ldw, a, ldx, ref, NR);
        codi_gemm_generic(codi_kernel_vec_dot(type), N, NR, NC, w, ldw, a, ldx, fast, NR);
        codi_kernel_gemm(type)(N, NR, NC, w, ldw, a, ldx, y, NR);
        for (int i = 0; i < NC * NR; i++) {
            assert_int_equal(f2u(fast[i]), f2u(ref[i]));
            assert_int_equal(f2u(y[i]), f2u(ref[i]));
        }
        free(w);
        free(a);
    }
}

/* The x8 layout (kernels/repack.h): 16 rows repacked into two groups give
 * the reference's results bit for bit, for 1..6 tokens, random and extreme
 * headers (scale 255, zero -128, every code 15, activations +-127) and rows
 * long enough to flush the int32 lanes many times. */
static void test_w4a8_x8(void **state) {
    (void)state;
    enum { NR = 16, NC = 6, MAXN = 32 * 1024 + 256 };
    for (size_t gi = 0; gi < 3; gi++) {
        const int G = GROUPS[gi];
        const int type = codi_type_codi_group(48, G);
        const codi_type_traits *t = codi_type_get(type);
        codi_gemm_x8_fn x8 = codi_kernel_gemm_x8(type);
        if (!x8) {
            assert_string_not_equal(codi_kernel_backend(), "avx2");
            return;
        }
        assert_true(codi_x8_has_layout(type));
        for (int seed = 0; seed < 6; seed++) {
            const int64_t n = seed == 5 ? MAXN : (int64_t)G * (1 + seed * 7);
            const int nc = 1 + seed % NC;
            const size_t ldw = codi_row_size(type, n), ldx = codi_row_size(CODI_TYPE_A8, n);
            uint8_t *w = malloc(NR * ldw), *p = malloc(NR * ldw), *a = malloc(NC * ldx);
            float *x = malloc((size_t)n * sizeof *x);
            rng_seed((uint64_t)seed * 7 + (uint64_t)G);
            for (int r = 0; r < NR; r++) {
                if (seed < 4) {
                    fill_weights(x, n, seed + r);
                    codi_quantize_row_w4a8(x, w + (size_t)r * ldw, n, G, NULL);
                } else {
                    for (size_t i = 0; i < ldw; i++)
                        w[(size_t)r * ldw + i] = (uint8_t)(rnd_u64() >> 24);
                    for (int64_t g = 0; r % 3 == 0 && g < n / G; g++) {
                        uint8_t *b = w + (size_t)r * ldw + (size_t)g * CODI_W4A8_BYTES(G);
                        b[0] = 255;
                        b[1] = (uint8_t)(int8_t)-128;
                        memset(b + 2, 0xFF, (size_t)G / 2);
                    }
                }
            }
            for (int c = 0; c < nc; c++) {
                for (int64_t i = 0; i < n; i++)
                    x[i] = seed >= 4 && c < 2 ? (c == 0 ? 1.0f : -1.0f) : rnd_gauss();
                codi_quantize_row_a8_ref(x, a + (size_t)c * ldx, n);
            }
            for (int g = 0; g < NR / CODI_X8_ROWS; g++)
                codi_x8_pack_group(type, n, w + (size_t)g * CODI_X8_ROWS * ldw, ldw,
                                   p + (size_t)g * CODI_X8_ROWS * ldw);
            float ref[NC * NR], y[NC * NR];
            codi_gemm_generic(t->vec_dot, n, NR, nc, w, ldw, a, ldx, ref, NR);
            memset(y, 0, sizeof y);
            x8(n, NR / CODI_X8_ROWS, p, nc, a, ldx, y, NR);
            for (int i = 0; i < nc * NR; i++)
                assert_int_equal(f2u(y[i]), f2u(ref[i]));
#if defined(__x86_64__) || defined(__i386__)
            /* both instruction sets, whichever the dispatcher picked */
            codi_gemm_x8_fn twins[2] = {G == 32 ? codi_gemm_x8_w4a8_32_avx2 : G == 64 ? codi_gemm_x8_w4a8_64_avx2
                                                                                  : codi_gemm_x8_w4a8_128_avx2,
                                        G == 32   ? codi_gemm_x8_w4a8_32_avxvnni
                                        : G == 64 ? codi_gemm_x8_w4a8_64_avxvnni
                                                  : codi_gemm_x8_w4a8_128_avxvnni};
            for (int v = 0; v < (codi_cpu_get_features()->avxvnni ? 2 : 1); v++) {
                memset(y, 0, sizeof y);
                twins[v](n, NR / CODI_X8_ROWS, p, nc, a, ldx, y, NR);
                for (int i = 0; i < nc * NR; i++)
                    assert_int_equal(f2u(y[i]), f2u(ref[i]));
            }
#endif
            free(w);
            free(p);
            free(a);
            free(x);
        }
    }
}

/* W4A8's per-row scale: the dispatched kernel (AVX2 on x86) gives the
 * reference's products for any row count (8-lane body and scalar tail). */
static void test_scale_rows(void **state) {
    (void)state;
    enum { MR = 37, MC = 5, LD = 41 };
    float a[MC * LD], b[MC * LD], scale[MR];
    rng_seed(99);
    for (int nr = 0; nr <= MR; nr++) {
        for (int i = 0; i < MC * LD; i++)
            a[i] = b[i] = rnd_gauss();
        for (int r = 0; r < MR; r++)
            scale[r] = (float)rnd_unit();
        codi_scale_rows(a, nr, MC, LD, scale);
        codi_scale_rows_ref(b, nr, MC, LD, scale);
        for (int i = 0; i < MC * LD; i++)
            assert_int_equal(f2u(a[i]), f2u(b[i]));
        /* rows past nr and the gaps between token rows are left alone */
        for (int c = 0; c < MC && nr < MR; c++)
            for (int r = nr; r < LD; r++)
                assert_int_equal(f2u(a[c * LD + r]), f2u(b[c * LD + r]));
    }
    float x[3] = {2.0f, 3.0f, 5.0f}, sc[3] = {0.5f, 0.25f, 2.0f};
    codi_scale_rows(x, 3, 1, 3, sc);
    assert_true(x[0] == 1.0f && x[1] == 0.75f && x[2] == 10.0f);
}

/* W4A8 on AMX tiles: bit-equal to the reference dot for rows that fit
 * int8 — quantized rows, and random codes and headers kept to the int8
 * range, including groups at its edges (-128 and 127) — over the paths of
 * the kernel: several K slabs, token counts past a multiple of 16 and past
 * one pass (256), an unpaired x8 group. codi_w4a8_row_fits_int8 accepts
 * every quantized row and rejects a group one step out of range. */
static void test_w4a8_amx(void **state) {
    (void)state;
    enum { NR = 40, MAXC = 300 };
    static const int64_t NS[] = {32, 128, 576, 2048 + 128, 4096 + 1536};
    static const int NCS[] = {16, 37, 64, MAXC};
    const int has_amx = codi_cpu_get_features()->amx;
    for (size_t gi = 0; gi < 3; gi++) {
        const int G = GROUPS[gi];
        const int type = codi_type_codi_group(48, G);
        const codi_type_traits *t = codi_type_get(type);
        codi_gemm_x8_amx_fn amx = codi_kernel_gemm_x8_amx(type);
        if (!has_amx) {
            assert_null(amx);
            print_message("no AMX on this CPU (or not granted): AMX W4A8 kernel not run\n");
            return;
        }
        if (!amx) { /* CODI_NO_AMX set, or scalar kernels forced */
            print_message("AMX W4A8 kernel turned off: not run\n");
            return;
        }
        for (size_t ni = 0; ni < sizeof NS / sizeof NS[0]; ni++) {
            const int64_t n = NS[ni] < G ? G : NS[ni] / G * G;
            const size_t ldw = codi_row_size(type, n), ldx = codi_row_size(CODI_TYPE_A8, n);
            uint8_t *w = malloc(NR * ldw), *p = malloc(NR * ldw), *a = malloc(MAXC * ldx);
            float *x = malloc((size_t)n * sizeof *x);
            float *ref = malloc((size_t)MAXC * NR * sizeof *ref), *y = malloc((size_t)MAXC * NR * sizeof *y);
            float *refs = malloc((size_t)MAXC * NR * sizeof *refs), scale[NR];
            rng_seed((uint64_t)ni * 31 + (uint64_t)G);
            for (int r = 0; r < NR; r++)
                scale[r] = (float)(0.001 + 0.01 * rnd_unit());
            for (int r = 0; r < NR; r++) {
                uint8_t *row = w + (size_t)r * ldw;
                if (r % 2 == 0) {
                    fill_weights(x, n, (int)ni + r);
                    codi_quantize_row_w4a8(x, row, n, G, NULL);
                } else {
                    for (int64_t g = 0; g < n / G; g++) {
                        uint8_t *b = row + (size_t)g * CODI_W4A8_BYTES(G);
                        int sg = 1 + (int)(rnd_u64() % 16), z;
                        if (g % 5 == 1) { /* reaches 127 (sg 1, z -112) or -128 (sg 8, z 16) */
                            sg = r % 4 == 1 ? 1 : 8;
                            z = sg == 1 ? -112 : 16;
                        } else {
                            /* sg (15 - z) <= 127 and sg (0 - z) >= -128 */
                            const int zmin = 15 - 127 / sg, zmax = 128 / sg > 127 ? 127 : 128 / sg;
                            z = zmin + (int)(rnd_u64() % (uint64_t)(zmax - zmin + 1));
                        }
                        b[0] = (uint8_t)sg;
                        b[1] = (uint8_t)(int8_t)z;
                        for (int j = 0; j < G / 2; j++)
                            b[2 + j] = (uint8_t)(rnd_u64() >> 32);
                        if (g % 5 == 1)
                            memset(b + 2, sg == 1 ? 0xFF : 0x00, (size_t)G / 2);
                    }
                }
                assert_true(codi_w4a8_row_fits_int8(row, n, G));
            }
            for (int c = 0; c < MAXC; c++) {
                for (int64_t i = 0; i < n; i++)
                    x[i] = c % 7 == 3 ? (i % 2 ? 1.0f : -1.0f) : rnd_gauss();
                codi_quantize_row_a8_ref(x, a + (size_t)c * ldx, n);
            }
            for (int g = 0; g < NR / CODI_X8_ROWS; g++)
                codi_x8_pack_group(type, n, w + (size_t)g * CODI_X8_ROWS * ldw, ldw,
                                   p + (size_t)g * CODI_X8_ROWS * ldw);
            codi_gemm_generic(t->vec_dot, n, NR, MAXC, w, ldw, a, ldx, ref, NR);
            codi_gemm_generic(t->vec_dot, n, NR, MAXC, w, ldw, a, ldx, refs, NR);
            codi_scale_rows_ref(refs, NR, MAXC, NR, scale);
            for (size_t ci = 0; ci < sizeof NCS / sizeof NCS[0]; ci++) {
                const int nc = NCS[ci];
                /* 1 group (no pair), 2-3 (one pair), 4-5 (two pairs, 2 x 2 tiles) */
                for (int ng = 1; ng <= NR / CODI_X8_ROWS; ng++) {
                    const int sc = (ng + (int)ci) % 2;
                    for (int i = 0; i < MAXC * NR; i++)
                        y[i] = -1.0f;
                    amx(n, ng, p, sc ? scale : NULL, nc, a, ldx, y, NR);
                    const float *want = sc ? refs : ref;
                    for (int c = 0; c < MAXC; c++)
                        for (int r = 0; r < NR; r++) {
                            if (c < nc && r < ng * CODI_X8_ROWS)
                                assert_int_equal(f2u(y[c * NR + r]), f2u(want[c * NR + r]));
                            else
                                assert_true(y[c * NR + r] == -1.0f);
                        }
                }
            }
            free(w);
            free(p);
            free(a);
            free(x);
            free(ref);
            free(refs);
            free(y);
        }
    }
    /* one weight past the int8 range: 9 * (15 - 1) = 126 fits, 10 * 14 does not */
    uint8_t row[CODI_W4A8_BYTES(32) * 2];
    memset(row, 0, sizeof row);
    row[0] = row[CODI_W4A8_BYTES(32)] = 9;
    row[1] = row[CODI_W4A8_BYTES(32) + 1] = 1;
    row[CODI_W4A8_BYTES(32) + 2 + 5] = 0xF0;
    assert_true(codi_w4a8_row_fits_int8(row, 64, 32));
    row[CODI_W4A8_BYTES(32)] = 10;
    assert_false(codi_w4a8_row_fits_int8(row, 64, 32));
    row[CODI_W4A8_BYTES(32)] = 9;
    row[CODI_W4A8_BYTES(32) + 1] = (uint8_t)(int8_t)15; /* 9 * (0 - 15) = -135 */
    assert_false(codi_w4a8_row_fits_int8(row, 64, 32));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_round_trip),
        cmocka_unit_test(test_layout),
        cmocka_unit_test(test_importance),
        cmocka_unit_test(test_kernels),
        cmocka_unit_test(test_gqsa),
        cmocka_unit_test(test_mix_chunk),
        cmocka_unit_test(test_w4a8),
        cmocka_unit_test(test_a8_quantize),
        cmocka_unit_test(test_w4a8_extremes),
        cmocka_unit_test(test_w4a8_x8),
        cmocka_unit_test(test_scale_rows),
        cmocka_unit_test(test_w4a8_amx),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
