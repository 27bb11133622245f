/* Kernels against their reference twins:
 *   - dispatch: AVX2 kernels chosen when the CPU has them, references under
 *     CODI_FORCE_SCALAR=1 (checked in a re-executed child, since the choice
 *     is made once per process);
 *   - fp16 rows: every half, and floats around every rounding boundary,
 *     bit-equal to the scalar conversions;
 *   - activation quantizers Q8_0/Q8_1/Q8_K: byte-equal to the reference on
 *     random rows, exact rounding ties, zero blocks, tied maxima;
 *   - dot products of every type: within 1e-5 of the sum of |terms|
 *     (the integer sums are exact; only the float summation order
 *     differs), lengths of 1..8 blocks, many seeds.
 * The AVX2 cases are skipped on a CPU without AVX2+FMA+F16C. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/avx2.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "kernels/softmax.h"
#include "tensor/blocks.h"
#include "tensor/quants.h"
#include "tensor/types.h"

/* ---- helpers ---- */

static uint64_t rng_state;

static void rng_seed(uint64_t s) { rng_state = s * 0x9E3779B97F4A7C15ull + 1; }

static uint64_t rnd_u64(void) { /* splitmix64 */
    uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t rnd_u32(void) { return (uint32_t)(rnd_u64() >> 32); }

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

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static int have_avx2(void) {
    const codi_cpu_features *f = codi_cpu_get_features();
    return f->avx2 && f->fma && f->f16c;
}

#define SKIP_WITHOUT_AVX2()                                                  \
    do {                                                                     \
        if (!have_avx2()) {                                                  \
            print_message("no AVX2+FMA+F16C on this CPU: skipped\n");        \
            skip();                                                          \
        }                                                                    \
    } while (0)

/* ---- the table of kernels under test ---- */

typedef struct dot_case {
    int type;
    codi_vec_dot_fn avx2;
} dot_case;

#if defined(CODI_HAVE_AVX2_KERNELS)
static const dot_case dot_cases[] = {
    {CODI_TYPE_F32, codi_vec_dot_f32_avx2},
    {CODI_TYPE_F16, codi_vec_dot_f16_avx2},
    {CODI_TYPE_Q4_0, codi_vec_dot_q4_0_q8_0_avx2},
    {CODI_TYPE_Q4_1, codi_vec_dot_q4_1_q8_1_avx2},
    {CODI_TYPE_Q5_0, codi_vec_dot_q5_0_q8_0_avx2},
    {CODI_TYPE_Q5_1, codi_vec_dot_q5_1_q8_1_avx2},
    {CODI_TYPE_Q8_0, codi_vec_dot_q8_0_q8_0_avx2},
    {CODI_TYPE_Q2_K, codi_vec_dot_q2_K_q8_K_avx2},
    {CODI_TYPE_Q3_K, codi_vec_dot_q3_K_q8_K_avx2},
    {CODI_TYPE_Q4_K, codi_vec_dot_q4_K_q8_K_avx2},
    {CODI_TYPE_Q5_K, codi_vec_dot_q5_K_q8_K_avx2},
    {CODI_TYPE_Q6_K, codi_vec_dot_q6_K_q8_K_avx2},
};
#define N_DOT_CASES (sizeof dot_cases / sizeof dot_cases[0])

typedef struct quant_case {
    int type;
    codi_from_float_fn ref, avx2;
} quant_case;

static const quant_case quant_cases[] = {
    {CODI_TYPE_Q8_0, codi_quantize_row_q8_0_ref, codi_quantize_row_q8_0_avx2},
    {CODI_TYPE_Q8_1, codi_quantize_row_q8_1_ref, codi_quantize_row_q8_1_avx2},
    {CODI_TYPE_Q8_K, codi_quantize_row_q8_K_ref, codi_quantize_row_q8_K_avx2},
};
#define N_QUANT_CASES (sizeof quant_cases / sizeof quant_cases[0])
#endif

/* ---- dispatch ---- */

static const char *g_argv0;

/* Child mode (argv[1] == "--expect-scalar"): every selector must hand out
 * the reference. Exit status 0 when so. */
static int child_expect_scalar(void) {
    if (strcmp(codi_kernel_backend(), "scalar") != 0)
        return 1;
    for (int type = 0; type < CODI_TYPE_COUNT; type++) {
        const codi_type_traits *t = codi_type_get(type);
        if (!t)
            continue;
        if (codi_kernel_vec_dot(type) != t->vec_dot ||
            codi_kernel_from_float(type) != t->from_float ||
            codi_kernel_to_float(type) != t->to_float || codi_kernel_gemm_x8(type) != NULL)
            return 2;
    }
    return 0;
}

static int run_child(const char *force_value) {
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        if (force_value)
            setenv("CODI_FORCE_SCALAR", force_value, 1);
        else
            unsetenv("CODI_FORCE_SCALAR");
        char *const args[] = {(char *)g_argv0, (char *)"--expect-scalar", NULL};
        execv("/proc/self/exe", args);
        _exit(127);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_dispatch_selects(void **state) {
    (void)state;
    const char *force = getenv("CODI_FORCE_SCALAR");
    const int forced = force && *force && strcmp(force, "0") != 0;
    const int avx2 = have_avx2() && !forced;
    assert_string_equal(codi_kernel_backend(), avx2 ? "avx2" : "scalar");

    assert_null(codi_kernel_vec_dot(-1));
    assert_null(codi_kernel_vec_dot(CODI_TYPE_COUNT));
    assert_null(codi_kernel_from_float(5)); /* unused ggml id */
    assert_null(codi_kernel_to_float(4));
    /* types without an AVX2 kernel keep the reference */
    assert_ptr_equal(codi_kernel_vec_dot(CODI_TYPE_BF16),
                     codi_type_get(CODI_TYPE_BF16)->vec_dot);
    assert_ptr_equal(codi_kernel_from_float(CODI_TYPE_Q4_0),
                     codi_type_get(CODI_TYPE_Q4_0)->from_float);
    assert_ptr_equal(codi_kernel_to_float(CODI_TYPE_Q4_K),
                     codi_type_get(CODI_TYPE_Q4_K)->to_float);
    assert_null(codi_kernel_vec_dot(CODI_TYPE_Q8_K));

#if defined(CODI_HAVE_AVX2_KERNELS)
    if (avx2) {
        for (size_t i = 0; i < N_DOT_CASES; i++)
            assert_ptr_equal(codi_kernel_vec_dot(dot_cases[i].type), dot_cases[i].avx2);
        for (size_t i = 0; i < N_QUANT_CASES; i++)
            assert_ptr_equal(codi_kernel_from_float(quant_cases[i].type),
                             quant_cases[i].avx2);
        assert_ptr_equal(codi_kernel_from_float(CODI_TYPE_F16), codi_quantize_row_f16_avx2);
        assert_ptr_equal(codi_kernel_to_float(CODI_TYPE_F16), codi_dequantize_row_f16_avx2);
    }
#endif
}

static void test_dispatch_force_scalar(void **state) {
    (void)state;
    assert_int_equal(run_child("1"), 0);
    assert_int_equal(run_child("yes"), 0);
    if (have_avx2()) {
        /* "0" and unset leave AVX2 on: the child's check must fail */
        assert_int_not_equal(run_child("0"), 0);
        assert_int_not_equal(run_child(NULL), 0);
    }
}

/* ---- fp16 rows ---- */

#define N_HALF 65536

static void test_fp16_to_fp32_all(void **state) {
    (void)state;
    uint16_t *h = malloc(N_HALF * sizeof *h);
    float *got = malloc(N_HALF * sizeof *got);
    assert_non_null(h);
    assert_non_null(got);
    for (int i = 0; i < N_HALF; i++)
        h[i] = (uint16_t)i;
    /* through the dispatcher (whatever it chose), then the AVX2 kernel */
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0) {
            codi_fp16_to_fp32_row(h, got, N_HALF);
        } else {
#if defined(CODI_HAVE_AVX2_KERNELS)
            if (!have_avx2())
                break;
            codi_fp16_to_fp32_row_avx2(h, got, N_HALF);
#else
            break;
#endif
        }
        for (int i = 0; i < N_HALF; i++) {
            const uint32_t want = f2u(codi_fp16_to_fp32(h[i]));
            if (f2u(got[i]) != want)
                fail_msg("pass %d: half 0x%04x -> 0x%08x, want 0x%08x", pass, i,
                         f2u(got[i]), want);
        }
    }
    free(h);
    free(got);
}

/* Floats that stress rounding: every half, the midpoints between
 * neighbouring halves and one ulp either side, specials, random bits. */
static size_t fp16_hard_floats(float *out, size_t cap) {
    size_t n = 0;
    for (uint32_t h = 0; h < 0x7C00 && n + 8 <= cap; h++) {
        const float a = codi_fp16_to_fp32((uint16_t)h);
        const float b = codi_fp16_to_fp32((uint16_t)(h + 1));
        const float mid = a + (b - a) / 2; /* exact: halves have 11 bits */
        const float f[4] = {a, mid, u2f(f2u(mid) - 1), u2f(f2u(mid) + 1)};
        for (int k = 0; k < 4; k++) {
            out[n++] = f[k];
            out[n++] = -f[k];
        }
    }
    const float specials[] = {0.0f, -0.0f, INFINITY, -INFINITY, NAN, -NAN,
                              65504.0f, 65519.99f, 65520.0f, 1e30f, -1e30f,
                              u2f(1), u2f(0x80000001u), u2f(0x33000000u),
                              u2f(0x33000001u), u2f(0x7F800001u),
                              u2f(0x7FC00001u), u2f(0xFFBFFFFFu)};
    for (size_t k = 0; k < sizeof specials / sizeof specials[0] && n < cap; k++)
        out[n++] = specials[k];
    rng_seed(7);
    while (n < cap)
        out[n++] = u2f(rnd_u32());
    return n;
}

static void test_fp32_to_fp16(void **state) {
    (void)state;
    const size_t cap = 8 * 0x7C00 + (1u << 20);
    float *x = malloc(cap * sizeof *x);
    uint16_t *got = malloc(cap * sizeof *got);
    assert_non_null(x);
    assert_non_null(got);
    const size_t n = fp16_hard_floats(x, cap);
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 0) {
            codi_fp32_to_fp16_row(x, got, (int64_t)n);
        } else {
#if defined(CODI_HAVE_AVX2_KERNELS)
            if (!have_avx2())
                break;
            codi_fp32_to_fp16_row_avx2(x, got, (int64_t)n);
#else
            break;
#endif
        }
        for (size_t i = 0; i < n; i++) {
            const uint16_t want = codi_fp32_to_fp16(x[i]);
            if (got[i] != want)
                fail_msg("pass %d: float 0x%08x -> 0x%04x, want 0x%04x", pass,
                         f2u(x[i]), got[i], want);
        }
    }
    free(x);
    free(got);
}

/* Every length 0..40 at every offset 0..7: the vector body, the scalar
 * tail, and that nothing is written past n. */
static void test_fp16_row_tails(void **state) {
    (void)state;
    SKIP_WITHOUT_AVX2();
#if defined(CODI_HAVE_AVX2_KERNELS)
    rng_seed(11);
    float x[64], y[64];
    uint16_t h[64], g[64];
    for (int i = 0; i < 64; i++)
        x[i] = rnd_gauss() * 100.0f;
    for (int off = 0; off < 8; off++) {
        for (int n = 0; n <= 40; n++) {
            memset(g, 0xAB, sizeof g);
            codi_fp32_to_fp16_row_avx2(x + off, g + off, n);
            for (int i = 0; i < 64; i++) {
                const int in = i >= off && i < off + n;
                assert_int_equal(g[i], in ? codi_fp32_to_fp16(x[i]) : 0xABAB);
                h[i] = codi_fp32_to_fp16(x[i]);
            }
            memset(y, 0xAB, sizeof y);
            codi_fp16_to_fp32_row_avx2(h + off, y + off, n);
            for (int i = 0; i < 64; i++) {
                const int in = i >= off && i < off + n;
                assert_int_equal(f2u(y[i]), in ? f2u(codi_fp16_to_fp32(h[i])) : 0xABABABABu);
            }
        }
    }
#endif
}

/* Several fp16 dots against one row (attention heads sharing a KV head):
 * bit-equal to one dispatched F16 vec_dot per row, every m and length. */
static void test_dot_f16_multi(void **state) {
    (void)state;
    rng_seed(13);
    enum { N = 300, M = 7 };
    uint16_t x[N], y[M][N];
    const uint16_t *yp[M];
    for (int i = 0; i < N; i++)
        x[i] = codi_fp32_to_fp16(rnd_gauss());
    for (int j = 0; j < M; j++) {
        for (int i = 0; i < N; i++)
            y[j][i] = codi_fp32_to_fp16(rnd_gauss());
        yp[j] = y[j];
    }
    const codi_vec_dot_fn dot = codi_kernel_vec_dot(CODI_TYPE_F16);
    for (int n = 0; n <= N; n += (n < 70 ? 1 : 23))
        for (int m = 1; m <= M; m++) {
            float got[M], want;
            codi_dot_f16_multi(n, got, x, yp, m);
            for (int j = 0; j < m; j++) {
                dot(n, &want, x, y[j]);
                assert_int_equal(f2u(got[j]), f2u(want));
            }
        }
}

/* Attention scores over a transposed fp16 K cache, against the scalar
 * reference: every query count 1..13 (groups of 3, or 6 past 3), key counts around the
 * 16- and 8-key steps, head dims 64 and 40, a row stride wider than n. */
static void test_attn_scores(void **state) {
    (void)state;
    rng_seed(14);
    enum { HD = 64, LDK = 80, G = 13 };
    uint16_t kT[HD * LDK];
    float q[G * HD], got[G * LDK], want[G * LDK];
    for (int i = 0; i < HD * LDK; i++)
        kT[i] = codi_fp32_to_fp16(rnd_gauss());
    for (int i = 0; i < G * HD; i++)
        q[i] = codi_fp16_to_fp32(codi_fp32_to_fp16(rnd_gauss()));
    const int hds[2] = {64, 40};
    for (int h = 0; h < 2; h++)
        for (int g = 1; g <= G; g++)
            for (int n = 0; n <= LDK; n += (n < 40 ? 1 : 7)) {
                memset(got, 0xAB, sizeof got);
                codi_attn_scores_f16(q, g, hds[h], kT, LDK, n, got, LDK, 0.125f);
                codi_attn_scores_f16_ref(q, g, hds[h], kT, LDK, n, want, LDK, 0.125f);
                for (int j = 0; j < g; j++)
                    for (int t = 0; t < LDK; t++) {
                        if (t >= n) {
                            assert_int_equal(f2u(got[j * LDK + t]), 0xABABABABu);
                            continue;
                        }
                        double mag = 0.0;
                        for (int i = 0; i < hds[h]; i++)
                            mag += fabs(q[j * hds[h] + i] * codi_fp16_to_fp32(kT[i * LDK + t]));
                        assert_true(fabs((double)got[j * LDK + t] - want[j * LDK + t]) <= 1e-6 * mag + 1e-30);
                    }
            }
}

/* Scores of many query rows at once (a tile of tokens, groups of 6) are
 * bit-equal to each row alone with fewer keys: a score depends only on
 * its query and key, which the tiled prefill attention relies on. */
static void test_attn_scores_tile(void **state) {
    (void)state;
    rng_seed(15);
    enum { HD = 64, LDK = 100, G = 13 };
    uint16_t kT[HD * LDK];
    float q[G * HD], all[G * LDK], one[LDK];
    for (int i = 0; i < HD * LDK; i++)
        kT[i] = codi_fp32_to_fp16(rnd_gauss());
    for (int i = 0; i < G * HD; i++)
        q[i] = codi_fp16_to_fp32(codi_fp32_to_fp16(rnd_gauss()));
    for (int g = 1; g <= G; g++) {
        const int n = LDK - g;
        codi_attn_scores_f16(q, g, HD, kT, LDK, n, all, LDK, 0.125f);
        for (int j = 0; j < g; j++) {
            const int nj = n - (j * 7) % 40; /* a causal row sees fewer keys */
            codi_attn_scores_f16(q + j * HD, 1, HD, kT, LDK, nj, one, LDK, 0.125f);
            for (int t = 0; t < nj; t++)
                assert_int_equal(f2u(all[j * LDK + t]), f2u(one[t]));
        }
    }
}

/* Attention outputs of a tile of weight rows with their own key counts:
 * each output bit-equal to codi_dot_f16_multi of its V row and fp16
 * weights (the dispatched kernels: AVX2, or both references under
 * CODI_FORCE_SCALAR), the reference bit-equal to the F16 reference dot,
 * and AVX2 within rounding of the reference. Row counts 1..13, head dims
 * 64 and 5..7 (every remainder of the groups of V rows), key counts that
 * fall in the same or different 32-key blocks, and 0. */
static void test_attn_values(void **state) {
    (void)state;
    rng_seed(16);
    enum { HD = 64, LDV = 200, M = 13 };
    static uint16_t vT[HD * LDV], p16[M][LDV];
    static float p[M * LDV];
    for (int i = 0; i < HD * LDV; i++)
        vT[i] = codi_fp32_to_fp16(rnd_gauss());
    for (int j = 0; j < M; j++)
        for (int t = 0; t < LDV; t++) {
            p16[j][t] = codi_fp32_to_fp16((float)rnd_unit());
            p[j * LDV + t] = codi_fp16_to_fp32(p16[j][t]);
        }
    const int hds[4] = {64, 5, 6, 7};
    const int base[6] = {0, 1, 31, 63, 120, 190};
    for (int h = 0; h < 4; h++)
        for (int m = 1; m <= M; m++)
            for (int bi = 0; bi < 6; bi++)
                for (int step = 0; step < 3; step++) {
                    int n[M];
                    for (int j = 0; j < m; j++) {
                        n[j] = base[bi] + (step == 0 ? j : step == 1 ? (j * 11) % 45 : 0);
                        n[j] = n[j] < LDV ? n[j] : LDV;
                    }
                    float got[M][HD], ref[M][HD];
                    float *po[M], *pr[M];
                    for (int j = 0; j < m; j++) {
                        po[j] = got[j];
                        pr[j] = ref[j];
                    }
                    codi_attn_values_f16(p, LDV, n, m, vT, LDV, hds[h], po);
                    codi_attn_values_f16_ref(p, LDV, n, m, vT, LDV, hds[h], pr);
                    for (int j = 0; j < m; j++)
                        for (int i = 0; i < hds[h]; i++) {
                            const uint16_t *yj = p16[j];
                            float want, want_ref;
                            codi_dot_f16_multi(n[j], &want, vT + i * LDV, &yj, 1);
                            codi_vec_dot_f16_ref(n[j], &want_ref, vT + i * LDV, p16[j]);
                            assert_int_equal(f2u(got[j][i]), f2u(want));
                            assert_int_equal(f2u(ref[j][i]), f2u(want_ref));
                            double mag = 0.0;
                            for (int t = 0; t < n[j]; t++)
                                mag += fabs(p[j * LDV + t] * codi_fp16_to_fp32(vT[i * LDV + t]));
                            assert_true(fabs((double)got[j][i] - ref[j][i]) <= 1e-6 * mag + 1e-30);
                        }
                }
}

/* ---- activation quantizers ---- */

/* Row fillers. `kind` picks the distribution. */
static void fill_row(float *x, int64_t n, int kind, int64_t bs) {
    switch (kind) {
    case 0: { /* gaussian, one scale per row, anywhere in 1e-6..1e6 */
        const float sc = powf(10.0f, (float)(rnd_unit() * 12.0 - 6.0));
        for (int64_t i = 0; i < n; i++)
            x[i] = rnd_gauss() * sc;
        break;
    }
    case 1: /* halves of integers after scaling by 127 / amax = 1: ties */
        for (int64_t i = 0; i < n; i++) {
            const int v = (int)(rnd_u32() % 253) - 126; /* -126..126 */
            x[i] = (float)v + ((rnd_u32() & 1) ? 0.5f : 0.0f);
            if (x[i] > 127.0f)
                x[i] = 127.0f;
        }
        for (int64_t b = 0; b < n; b += bs) /* amax exactly 127 */
            x[b + (int64_t)(rnd_u32() % (uint32_t)bs)] = (rnd_u32() & 1) ? 127.0f : -127.0f;
        break;
    case 2: /* blocks of zeros, blocks of a repeated +-max, sparse */
        for (int64_t b = 0; b < n; b += bs) {
            const uint32_t mode = rnd_u32() % 4;
            for (int64_t i = b; i < b + bs; i++) {
                switch (mode) {
                case 0: x[i] = (rnd_u32() & 1) ? 0.0f : -0.0f; break;
                case 1: x[i] = (rnd_u32() & 1) ? 3.5f : -3.5f; break;
                case 2: x[i] = (rnd_u32() % 8 == 0) ? rnd_gauss() : 0.0f; break;
                default: x[i] = (float)((int)(rnd_u32() % 9) - 4) * 0.25f; break;
                }
            }
        }
        break;
    case 4:
        for (int64_t i = 0; i < n; i++)
            x[i] = rnd_gauss() * 1e-39f;
        break;
    case 3: /* tiny, down to where 1 / d still fits a float */
        for (int64_t i = 0; i < n; i++)
            x[i] = rnd_gauss() * 1e-34f;
        break;
    default: /* so tiny that 1 / d overflows: both paths write zeros */
        for (int64_t i = 0; i < n; i++)
            x[i] = rnd_gauss() * 1e-41f;
        break;
    }
}

/* Attention with an online softmax (codi_attn_online_f16): the AVX2
 * kernel and the reference, each against the exact result (scores,
 * softmax and values in double, within 1e-4 of sum_t p_t |v_t| per output)
 * and against each other and the rows path of the existing references
 * (scores -> softmax -> values, fp32 weights), within 1e-5. Row counts 1..30 (past one sweep of
 * 24 rows), key counts 1, around the 128-key blocks and the 8-key vectors,
 * equal or causal (each row one key more), 0 for a row; head dims 64, 128
 * and 6 (groups of V rows with a remainder); scale 1/sqrt(hd) and 1 (peaked
 * weights: the running maximum moves by large steps). */
enum { ON_LD = 300, ON_HD = 128, ON_M = 30 };

static void attn_exact(const float *q, int hd, int n, const uint16_t *kT, const uint16_t *vT, float scale,
                       double *o, double *mag) {
    static double p[ON_LD];
    double mx = -INFINITY, sum = 0.0;
    for (int t = 0; t < n; t++) {
        double a = 0.0;
        for (int i = 0; i < hd; i++)
            a += (double)q[i] * codi_fp16_to_fp32(kT[i * ON_LD + t]);
        p[t] = a * scale;
        mx = p[t] > mx ? p[t] : mx;
    }
    for (int t = 0; t < n; t++) {
        p[t] = exp(p[t] - mx);
        sum += p[t];
    }
    for (int i = 0; i < hd; i++) {
        o[i] = mag[i] = 0.0;
        for (int t = 0; t < n; t++) {
            const double v = codi_fp16_to_fp32(vT[i * ON_LD + t]);
            o[i] += p[t] / sum * v;
            mag[i] += p[t] / sum * fabs(v);
        }
    }
}

static int online_case(const float *q, int m, int hd, const int *n, const uint16_t *kT, const uint16_t *vT,
                       float scale) {
    static float got[ON_M][ON_HD], ref[ON_M][ON_HD], rows[ON_M][ON_HD], sc[ON_M * ON_LD];
    float *po[ON_M], *pr[ON_M], *pw[ON_M];
    for (int j = 0; j < m; j++) {
        po[j] = got[j];
        pr[j] = ref[j];
        pw[j] = rows[j];
    }
    int avx2 = 0;
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (have_avx2()) {
        codi_attn_online_f16_avx2(q, m, hd, n, kT, ON_LD, vT, ON_LD, scale, po);
        avx2 = 1;
    }
#endif
    codi_attn_online_f16_ref(q, m, hd, n, kT, ON_LD, vT, ON_LD, scale, pr);
    /* the rows path: every row's scores up to the longest, its softmax over
     * its own keys, values up to its own keys */
    int nmax = 0;
    for (int j = 0; j < m; j++)
        nmax = n[j] > nmax ? n[j] : nmax;
    codi_attn_scores_f16_ref(q, m, hd, kT, ON_LD, nmax, sc, ON_LD, scale);
    for (int j = 0; j < m; j++)
        codi_softmax_inplace_ref(sc + j * ON_LD, n[j]);
    codi_attn_values_f16_ref(sc, ON_LD, n, m, vT, ON_LD, hd, pw);
    int bad = 0;
    for (int j = 0; j < m; j++) {
        double ex[ON_HD], mag[ON_HD];
        attn_exact(q + j * hd, hd, n[j], kT, vT, scale, ex, mag);
        for (int i = 0; i < hd; i++) {
            /* fp32 scores of up to |30| carry ~1e-5 relative error into
             * the weights: 1e-4 against the exact result, 1e-5 between
             * the fp32 paths */
            const double tol = 1e-5 * mag[i] + 1e-30;
            if (fabs(ref[j][i] - ex[i]) > 10 * tol || fabs(rows[j][i] - ref[j][i]) > tol ||
                (avx2 && (fabs(got[j][i] - ex[i]) > 10 * tol || fabs(got[j][i] - ref[j][i]) > tol))) {
                if (bad++ < 3)
                    print_message("m %d hd %d row %d (n %d) out %d: avx2 %.9g ref %.9g rows %.9g exact %.9g\n",
                                  m, hd, j, n[j], i, avx2 ? got[j][i] : 0.0, ref[j][i], rows[j][i], ex[i]);
            }
        }
    }
    return bad;
}

static void test_attn_online(void **state) {
    (void)state;
    rng_seed(17);
    static uint16_t kT[ON_HD * ON_LD], vT[ON_HD * ON_LD];
    static float q[ON_M * ON_HD];
    for (int i = 0; i < ON_HD * ON_LD; i++) {
        kT[i] = codi_fp32_to_fp16(rnd_gauss());
        vT[i] = codi_fp32_to_fp16(rnd_gauss());
    }
    /* later keys stand out more: the maximum grows block after block */
    for (int t = 0; t < ON_LD; t++)
        for (int i = 0; i < 4; i++)
            kT[i * ON_LD + t] = codi_fp32_to_fp16(codi_fp16_to_fp32(kT[i * ON_LD + t]) + 0.01f * (float)t);
    for (int i = 0; i < ON_M * ON_HD; i++)
        q[i] = codi_fp16_to_fp32(codi_fp32_to_fp16(rnd_gauss()));
    const int hds[3] = {64, 128, 6};
    const int base[9] = {1, 7, 8, 63, 64, 127, 128, 129, 270};
    const int ms[8] = {1, 2, 3, 5, 12, 13, 25, 30};
    int bad = 0, cases = 0;
    for (int h = 0; h < 3; h++)
        for (int sc = 0; sc < 2; sc++) {
            const float scale = sc ? 1.0f : 1.0f / sqrtf((float)hds[h]);
            for (int mi = 0; mi < 8; mi++)
                for (int bi = 0; bi < 9; bi++)
                    for (int causal = 0; causal < 2; causal++) {
                        int n[ON_M];
                        for (int j = 0; j < ms[mi]; j++)
                            n[j] = base[bi] + (causal ? j : 0);
                        if (causal && ms[mi] > 2 && bi == 0)
                            n[1] = 0; /* a row with no keys: zeros */
                        bad += online_case(q, ms[mi], hds[h], n, kT, vT, scale);
                        cases++;
                    }
        }
    print_message("online attention: %d cases, %d outputs out of tolerance\n", cases, bad);
    assert_int_equal(bad, 0);
}

static void test_quantize_bytes(void **state) {
    (void)state;
    SKIP_WITHOUT_AVX2();
#if defined(CODI_HAVE_AVX2_KERNELS)
    for (size_t c = 0; c < N_QUANT_CASES; c++) {
        const quant_case *qc = &quant_cases[c];
        const codi_type_traits *t = codi_type_get(qc->type);
        const int64_t bs = t->blck_size;
        float *x = malloc((size_t)(8 * bs) * sizeof *x);
        uint8_t *a = malloc(8 * t->type_size);
        uint8_t *b = malloc(8 * t->type_size);
        assert_non_null(x);
        assert_non_null(a);
        assert_non_null(b);
        for (int seed = 0; seed < 400; seed++) {
            rng_seed((uint64_t)seed * 131 + c);
            const int64_t n = bs * (1 + seed % 8);
            const size_t bytes = codi_row_size(qc->type, n);
            /* kinds 4 and 5: so small that 1 / d overflows, which every
             * reference handles without undefined behaviour (zeros) */
            const int kind = seed % 6;
            fill_row(x, n, kind, bs);
            memset(a, 0x5A, bytes);
            memset(b, 0xA5, bytes);
            qc->ref(x, a, n);
            qc->avx2(x, b, n);
            if (memcmp(a, b, bytes) != 0) {
                size_t k = 0;
                while (a[k] == b[k])
                    k++;
                fail_msg("%s seed %d n %lld: byte %zu differs (ref %02x, avx2 %02x)",
                         t->name, seed, (long long)n, k, a[k], b[k]);
            }
        }
        free(x);
        free(a);
        free(b);
    }
#endif
}

/* ---- dot products ---- */

/* A random weight row: random bytes (every quant pattern), then each fp16
 * field (d, m, dmin) set to a finite value of either sign. */
static void fill_weights(int type, void *row, int64_t n) {
    const codi_type_traits *t = codi_type_get(type);
    const int64_t nb = n / t->blck_size;
    uint8_t *p = row;
    if (type == CODI_TYPE_F32) {
        float *f = row;
        for (int64_t i = 0; i < n; i++)
            f[i] = rnd_gauss();
        return;
    }
    if (type == CODI_TYPE_F16) {
        uint16_t *h = row;
        for (int64_t i = 0; i < n; i++)
            h[i] = codi_fp32_to_fp16(rnd_gauss());
        return;
    }
    for (size_t i = 0; i < (size_t)nb * t->type_size; i++)
        p[i] = (uint8_t)rnd_u32();
    for (int64_t b = 0; b < nb; b++) {
        uint8_t *blk = p + (size_t)b * t->type_size;
        uint16_t h[2];
        for (int k = 0; k < 2; k++)
            h[k] = codi_fp32_to_fp16(rnd_gauss() * 0.01f);
        size_t off[2] = {0, 0};
        int nf = 0;
        switch (type) {
        case CODI_TYPE_Q4_0: case CODI_TYPE_Q5_0: case CODI_TYPE_Q8_0:
            off[0] = 0; nf = 1; break;
        case CODI_TYPE_Q4_1: case CODI_TYPE_Q5_1:
            off[0] = 0; off[1] = 2; nf = 2; break;
        case CODI_TYPE_Q2_K:
            off[0] = offsetof(codi_block_q2_K, d);
            off[1] = offsetof(codi_block_q2_K, dmin); nf = 2; break;
        case CODI_TYPE_Q3_K:
            off[0] = offsetof(codi_block_q3_K, d); nf = 1; break;
        case CODI_TYPE_Q4_K:
            off[0] = offsetof(codi_block_q4_K, d);
            off[1] = offsetof(codi_block_q4_K, dmin); nf = 2; break;
        case CODI_TYPE_Q5_K:
            off[0] = offsetof(codi_block_q5_K, d);
            off[1] = offsetof(codi_block_q5_K, dmin); nf = 2; break;
        case CODI_TYPE_Q6_K:
            off[0] = offsetof(codi_block_q6_K, d); nf = 1; break;
        default: fail_msg("no weight filler for %s", t->name);
        }
        for (int k = 0; k < nf; k++)
            memcpy(blk + off[k], &h[k], 2);
    }
}

/* Q8_0 weights may hold -128; the activations may not (see avx2.h). */
static void test_vec_dot(void **state) {
    (void)state;
    SKIP_WITHOUT_AVX2();
#if defined(CODI_HAVE_AVX2_KERNELS)
    double worst_all = 0.0;
    for (size_t c = 0; c < N_DOT_CASES; c++) {
        const dot_case *dc = &dot_cases[c];
        const codi_type_traits *t = codi_type_get(dc->type);
        const codi_type_traits *vt = codi_type_get(t->vec_dot_type);
        /* float types have block size 1: test 1..8 "blocks" of 32 and
         * odd lengths up to 300 besides */
        const int64_t bs = t->blck_size == 1 ? 32 : t->blck_size;
        const int64_t maxn = 8 * bs > 320 ? 8 * bs : 320; /* whole blocks */
        float *xf = malloc((size_t)maxn * sizeof *xf);
        float *wf = malloc((size_t)maxn * sizeof *wf);
        float *af = malloc((size_t)maxn * sizeof *af);
        uint8_t *w = malloc(codi_row_size(dc->type, maxn) + 64);
        uint8_t *a = malloc(codi_row_size(t->vec_dot_type, maxn) + 64);
        assert_non_null(xf);
        assert_non_null(wf);
        assert_non_null(af);
        assert_non_null(w);
        assert_non_null(a);
        double worst = 0.0;
        for (int seed = 0; seed < 600; seed++) {
            rng_seed((uint64_t)seed * 7919 + c);
            int64_t n = bs * (1 + seed % 8);
            if (t->blck_size == 1 && seed % 3 == 0)
                n = 1 + (int64_t)(rnd_u32() % 300);
            fill_weights(dc->type, w, n);
            for (int64_t i = 0; i < n; i++)
                xf[i] = rnd_gauss() * ((seed & 1) ? 1.0f : 30.0f);
            vt->from_float(xf, a, n);

            float ref = 0.0f, got = 0.0f;
            t->vec_dot(n, &ref, w, a);
            dc->avx2(n, &got, w, a);

            /* scale: sum of |w_i * a_i| over the dequantized operands */
            t->to_float(w, wf, n);
            vt->to_float(a, af, n);
            double scale = 0.0;
            for (int64_t i = 0; i < n; i++)
                scale += fabs((double)wf[i] * af[i]);
            const double err = fabs((double)got - (double)ref);
            const double rel = scale > 0 ? err / scale : err;
            if (rel > worst)
                worst = rel;
            if (!(err <= 1e-5 * scale + 1e-30))
                fail_msg("%s seed %d n %lld: avx2 %.9g ref %.9g (|diff| %.3g, scale %.3g)",
                         t->name, seed, (long long)n, got, ref, err, scale);
        }
        print_message("%-5s worst |avx2 - ref| / sum|terms| = %.2e\n", t->name, worst);
        if (worst > worst_all)
            worst_all = worst;
        free(xf);
        free(wf);
        free(af);
        free(w);
        free(a);
    }
    assert_true(worst_all <= 1e-5);
#endif
}

/* The register-tiled GEMM kernels against one reference vec_dot per
 * (row, token) pair: every tile shape and edge (rows 1..13, tokens 1..8,
 * 1..18 blocks), weights from the reference quantizers, activations from
 * the dispatcher's quantizer. Within 1e-5 of the sum of |terms| (in fact
 * equal to the AVX2 vec_dot: same per-block arithmetic). */
static void test_gemm(void **state) {
    (void)state;
    SKIP_WITHOUT_AVX2();
#if defined(CODI_HAVE_AVX2_KERNELS)
    static const int types[] = {CODI_TYPE_Q4_0, CODI_TYPE_Q4_1, CODI_TYPE_Q8_0};
    static const codi_gemm_fn gemms[] = {codi_gemm_q4_0_q8_0_avx2, codi_gemm_q4_1_q8_1_avx2,
                                         codi_gemm_q8_0_q8_0_avx2};
    static const codi_vec_dot_fn dots[] = {codi_vec_dot_q4_0_q8_0_avx2, codi_vec_dot_q4_1_q8_1_avx2,
                                           codi_vec_dot_q8_0_q8_0_avx2};
    enum { MAXR = 13, MAXC = 8, MAXN = 18 * 32 };
    float *x = malloc(MAXN * sizeof *x);
    uint8_t *w = malloc(MAXR * codi_row_size(CODI_TYPE_F32, MAXN));
    uint8_t *a = malloc(MAXC * codi_row_size(CODI_TYPE_F32, MAXN));
    float y[MAXC * MAXR], ref[MAXC * MAXR], fast[MAXC * MAXR];
    assert_non_null(x);
    assert_non_null(w);
    assert_non_null(a);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const codi_type_traits *t = codi_type_get(types[k]);
        const codi_gemm_fn gemm = gemms[k];
        for (int seed = 0; seed < 60; seed++) {
            rng_seed((uint64_t)seed + 77 * k);
            const int nr = 1 + seed % MAXR, nc = 1 + (seed * 7) % MAXC;
            const int64_t n = 32 * (1 + (seed * 5) % 18);
            const size_t ldw = codi_row_size(types[k], n) + 2 * (seed % 3); /* padded rows */
            const size_t ldx = codi_row_size(t->vec_dot_type, n);
            for (int r = 0; r < nr; r++) {
                for (int64_t i = 0; i < n; i++)
                    x[i] = rnd_gauss() * 0.05f + (seed % 2 ? 0.01f : 0.0f);
                t->from_float(x, w + (size_t)r * ldw, n);
            }
            for (int c = 0; c < nc; c++) {
                for (int64_t i = 0; i < n; i++)
                    x[i] = rnd_gauss() * 2.0f;
                codi_type_get(t->vec_dot_type)->from_float(x, a + (size_t)c * ldx, n);
            }
            memset(y, 0xAB, sizeof y);
            gemm(n, nr, nc, w, ldw, a, ldx, y, MAXR);
            codi_gemm_generic(t->vec_dot, n, nr, nc, w, ldw, a, ldx, ref, MAXR);
            codi_gemm_generic(dots[k], n, nr, nc, w, ldw, a, ldx, fast, MAXR);
            for (int c = 0; c < nc; c++)
                for (int r = 0; r < MAXR; r++) {
                    const float got = y[c * MAXR + r];
                    if (r >= nr) { /* outside the tile: untouched */
                        assert_int_equal(f2u(got), 0xABABABABu);
                        continue;
                    }
                    const float want = ref[c * MAXR + r];
                    if (!(fabsf(got - want) <= 1e-5f * (1.0f + fabsf(want))))
                        fail_msg("%s seed %d (%d x %d, n %lld) r %d c %d: gemm %.9g ref %.9g", t->name, seed,
                                 nr, nc, (long long)n, r, c, got, want);
                    assert_int_equal(f2u(got), f2u(fast[c * MAXR + r]));
                }
        }
    }
    free(x);
    free(w);
    free(a);
#endif
}

/* Weights from the reference quantizers (realistic scales and quants)
 * against activations from the AVX2 quantizers, through the dispatcher:
 * the path the forward pass takes. */
static void test_vec_dot_quantized_rows(void **state) {
    (void)state;
    static const int types[] = {CODI_TYPE_Q4_0, CODI_TYPE_Q4_1, CODI_TYPE_Q5_0,
                                CODI_TYPE_Q5_1, CODI_TYPE_Q8_0, CODI_TYPE_Q2_K,
                                CODI_TYPE_Q3_K, CODI_TYPE_Q4_K, CODI_TYPE_Q5_K,
                                CODI_TYPE_Q6_K, CODI_TYPE_F16,  CODI_TYPE_F32};
    const int64_t n = 1536;
    float *x = malloc(n * sizeof *x), *wf = malloc(n * sizeof *wf),
          *af = malloc(n * sizeof *af);
    uint8_t *w = malloc(codi_row_size(CODI_TYPE_F32, n));
    uint8_t *a = malloc(codi_row_size(CODI_TYPE_F32, n));
    assert_non_null(x);
    assert_non_null(wf);
    assert_non_null(af);
    assert_non_null(w);
    assert_non_null(a);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const codi_type_traits *t = codi_type_get(types[k]);
        const codi_type_traits *vt = codi_type_get(t->vec_dot_type);
        for (int seed = 0; seed < 20; seed++) {
            rng_seed((uint64_t)seed + 1000 * k);
            for (int64_t i = 0; i < n; i++)
                x[i] = rnd_gauss() * 0.05f;
            t->from_float(x, w, n);
            for (int64_t i = 0; i < n; i++)
                x[i] = rnd_gauss() * 2.0f;
            codi_kernel_from_float(t->vec_dot_type)(x, a, n);
            float ref = 0.0f, got = 0.0f;
            t->vec_dot(n, &ref, w, a);
            codi_kernel_vec_dot(types[k])(n, &got, w, a);
            t->to_float(w, wf, n);
            vt->to_float(a, af, n);
            double scale = 0.0;
            for (int64_t i = 0; i < n; i++)
                scale += fabs((double)wf[i] * af[i]);
            if (!(fabs((double)got - ref) <= 1e-5 * scale + 1e-30))
                fail_msg("%s seed %d: got %.9g ref %.9g scale %.3g", t->name, seed,
                         got, ref, scale);
        }
    }
    free(x);
    free(wf);
    free(af);
    free(w);
    free(a);
}

/* The x8 kernels (weights repacked into groups of 8 rows) against the
 * reference vec_dot on the original rows: 1..5 groups, 1..19 tokens (every
 * tile width, a partial last tile, more tokens than the 16 whose scales are
 * staged at once), 1..20 blocks, and rows of 300 and 520 blocks (the
 * activation scales are staged in slices of 256 blocks).
 * Within 1e-5 of the sum of |terms|. Also: the dispatcher hands out an x8
 * kernel exactly for the types with a layout, and none under
 * CODI_FORCE_SCALAR (test_dispatch_force_scalar's child). */
static void test_gemm_x8(void **state) {
    (void)state;
    SKIP_WITHOUT_AVX2();
#if defined(CODI_HAVE_AVX2_KERNELS)
    /* Q4G32 and Q8G32 are byte-identical to Q4_1 and Q8_0 and run their
     * kernels (W4A8's x8 kernels: tests/test_quant_codi.c) */
    static const int types[] = {CODI_TYPE_Q4_0, CODI_TYPE_Q4_1, CODI_TYPE_Q8_0, CODI_TYPE_Q4G32,
                                CODI_TYPE_Q8G32, CODI_TYPE_Q5_0, CODI_TYPE_Q4_K, CODI_TYPE_Q6_K,
                                CODI_TYPE_Q5_K, CODI_TYPE_Q5_1};
    static const codi_gemm_x8_fn fns[] = {codi_gemm_x8_q4_0_avx2, codi_gemm_x8_q4_1_avx2,
                                          codi_gemm_x8_q8_0_avx2, codi_gemm_x8_q4_1_avx2,
                                          codi_gemm_x8_q8_0_avx2, codi_gemm_x8_q5_0_avx2,
                                          codi_gemm_x8_q4_K_avx2, codi_gemm_x8_q6_K_avx2,
                                          codi_gemm_x8_q5_K_avx2, codi_gemm_x8_q5_1_avx2};
    /* the AVX-VNNI twins: handed out where the CPU has AVX-VNNI (and
     * CODI_NO_VNNI is unset), and equal to the AVX2 kernels bit for bit;
     * 1..5 groups cover pairs and an odd last group of the AVX-512 Q4_1
     * kernel, 1..19 tokens its tiles of 8 */
    static const codi_gemm_x8_fn vnni[] = {codi_gemm_x8_q4_0_avxvnni, codi_gemm_x8_q4_1_avxvnni,
                                           codi_gemm_x8_q8_0_avxvnni, codi_gemm_x8_q4_1_avxvnni,
                                           codi_gemm_x8_q8_0_avxvnni, codi_gemm_x8_q5_0_avxvnni,
                                           codi_gemm_x8_q4_K_avxvnni, codi_gemm_x8_q6_K_avxvnni,
                                           codi_gemm_x8_q5_K_avxvnni, codi_gemm_x8_q5_1_avxvnni};
    _Static_assert(sizeof vnni == sizeof fns && sizeof fns / sizeof fns[0] == sizeof types / sizeof types[0],
                   "one kernel of each kind per type");
    const char *novnni = getenv("CODI_NO_VNNI");
    const int has_vnni = codi_cpu_get_features()->avxvnni;
    const int use_vnni = has_vnni && !(novnni && *novnni && strcmp(novnni, "0") != 0);
    /* and the AVX-512 Q4_1 and Q8_0 kernels (two groups per vector), the
     * same bits */
    static const codi_gemm_x8_fn x512[] = {NULL, codi_gemm_x8_q4_1_avx512, codi_gemm_x8_q8_0_avx512,
                                           codi_gemm_x8_q4_1_avx512, codi_gemm_x8_q8_0_avx512,
                                           NULL, NULL, NULL, NULL, NULL};
    _Static_assert(sizeof x512 == sizeof fns, "one AVX-512 entry (or NULL) per type");
    const char *no512 = getenv("CODI_NO_AVX512");
    const int has_512 = has_vnni && codi_cpu_get_features()->avx512;
    const int use_512 = use_vnni && has_512 && !(no512 && *no512 && strcmp(no512, "0") != 0);
    enum { MAXG = 5, MAXR = MAXG * CODI_X8_ROWS, MAXC = 19, MAXN = 520 * 32 };
    /* the dispatcher hands them out on the AVX2 backend (CODI_FORCE_SCALAR
     * and CODI_NO_REPACK: none, test_dispatch_force_scalar's child) */
    const char *norep = getenv("CODI_NO_REPACK");
    const int on = strcmp(codi_kernel_backend(), "avx2") == 0 && !(norep && *norep && strcmp(norep, "0") != 0);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        if (!(on && use_512 && x512[k]))
            assert_ptr_equal(codi_kernel_gemm_x8(types[k]), on ? (use_vnni ? vnni[k] : fns[k]) : NULL);
        else
            assert_ptr_equal(codi_kernel_gemm_x8(types[k]), x512[k]);
    assert_null(codi_kernel_gemm_x8(CODI_TYPE_Q3_K));
    assert_null(codi_kernel_gemm_x8(CODI_TYPE_F16));
    float *xf = malloc(MAXN * sizeof *xf), *wf = malloc(MAXN * sizeof *wf),
          *af = malloc(MAXN * sizeof *af);
    const size_t wrow = codi_row_size(CODI_TYPE_Q8_0, MAXN), arow = codi_row_size(CODI_TYPE_Q8_1, MAXN);
    uint8_t *w = malloc(MAXR * wrow), *wp = malloc(MAXR * wrow), *a = malloc(MAXC * arow);
    float *y = malloc(MAXC * MAXR * sizeof *y), *yv = malloc(MAXC * MAXR * sizeof *yv);
    assert_true(xf && wf && af && w && wp && a && y && yv);
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const codi_type_traits *t = codi_type_get(types[k]), *vt = codi_type_get(t->vec_dot_type);
        double worst = 0.0;
        for (int seed = 0; seed < 40; seed++) {
            rng_seed((uint64_t)seed * 31 + 1000 * k);
            const int ng = 1 + seed % MAXG, nc = 1 + (seed * 7) % MAXC;
            /* K types: 1..8 super-blocks of 256, and 65 (only the 32-wide
             * types reach past a slice of 256 blocks) */
            const int64_t n = codi_type_get(types[k])->blck_size == 256
                                  ? (seed == 39 ? 65 * 256 : 256 * (1 + seed % 8))
                              : seed == 38 ? 300 * 32
                              : seed == 39 ? 520 * 32
                                           : 32 * (1 + (seed * 5) % 20);
            const size_t ldw = codi_row_size(types[k], n), ldx = codi_row_size(t->vec_dot_type, n);
            for (int r = 0; r < ng * CODI_X8_ROWS; r++) {
                for (int64_t i = 0; i < n; i++)
                    xf[i] = rnd_gauss() * 0.05f + (seed % 2 ? 0.01f : 0.0f);
                t->from_float(xf, w + (size_t)r * ldw, n);
            }
            for (int g = 0; g < ng; g++)
                codi_x8_pack_group(types[k], n, w + (size_t)g * CODI_X8_ROWS * ldw, ldw,
                                   wp + (size_t)g * CODI_X8_ROWS * ldw);
            for (int c = 0; c < nc; c++) {
                for (int64_t i = 0; i < n; i++)
                    xf[i] = rnd_gauss() * ((c & 1) ? 2.0f : 40.0f);
                codi_kernel_from_float(t->vec_dot_type)(xf, a + (size_t)c * ldx, n);
            }
            for (size_t i = 0; i < (size_t)MAXC * MAXR; i++)
                y[i] = -12345.0f;
            fns[k](n, ng, wp, nc, a, ldx, y, MAXR);
            if (has_vnni) {
                for (size_t i = 0; i < (size_t)MAXC * MAXR; i++)
                    yv[i] = -12345.0f;
                vnni[k](n, ng, wp, nc, a, ldx, yv, MAXR);
                if (memcmp(y, yv, (size_t)MAXC * MAXR * sizeof *y) != 0)
                    fail_msg("%s seed %d: AVX-VNNI x8 differs from AVX2 x8", t->name, seed);
            }
            if (has_512 && x512[k]) {
                for (size_t i = 0; i < (size_t)MAXC * MAXR; i++)
                    yv[i] = -12345.0f;
                x512[k](n, ng, wp, nc, a, ldx, yv, MAXR);
                if (memcmp(y, yv, (size_t)MAXC * MAXR * sizeof *y) != 0)
                    fail_msg("%s seed %d: AVX-512 x8 differs from AVX2 x8", t->name, seed);
            }
            for (int c = 0; c < nc; c++) {
                vt->to_float(a + (size_t)c * ldx, af, n);
                for (int r = 0; r < MAXR; r++) {
                    const float got = y[c * MAXR + r];
                    if (r >= ng * CODI_X8_ROWS) { /* beyond the groups: untouched */
                        assert_true(got == -12345.0f);
                        continue;
                    }
                    float want = 0.0f;
                    t->vec_dot(n, &want, w + (size_t)r * ldw, a + (size_t)c * ldx);
                    t->to_float(w + (size_t)r * ldw, wf, n);
                    double scale = 0.0;
                    for (int64_t i = 0; i < n; i++)
                        scale += fabs((double)wf[i] * af[i]);
                    const double err = fabs((double)got - want);
                    if (err / (scale + 1e-30) > worst)
                        worst = err / (scale + 1e-30);
                    if (!(err <= 1e-5 * scale + 1e-30))
                        fail_msg("%s seed %d (%d groups x %d tokens, n %lld) r %d c %d: x8 %.9g ref %.9g",
                                 t->name, seed, ng, nc, (long long)n, r, c, got, want);
                }
            }
        }
        print_message("%-5s x8 worst |x8 - ref| / sum|terms| = %.2e\n", t->name, worst);
    }
    free(xf);
    free(wf);
    free(af);
    free(w);
    free(wp);
    free(yv);
    free(a);
    free(y);
#endif
}

int main(int argc, char **argv) {
    g_argv0 = argv[0];
    if (argc > 1 && strcmp(argv[1], "--expect-scalar") == 0)
        return child_expect_scalar();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_dispatch_selects),
        cmocka_unit_test(test_dispatch_force_scalar),
        cmocka_unit_test(test_fp16_to_fp32_all),
        cmocka_unit_test(test_fp32_to_fp16),
        cmocka_unit_test(test_fp16_row_tails),
        cmocka_unit_test(test_dot_f16_multi),
        cmocka_unit_test(test_attn_scores),
        cmocka_unit_test(test_attn_scores_tile),
        cmocka_unit_test(test_attn_values),
        cmocka_unit_test(test_attn_online),
        cmocka_unit_test(test_quantize_bytes),
        cmocka_unit_test(test_vec_dot),
        cmocka_unit_test(test_vec_dot_quantized_rows),
        cmocka_unit_test(test_gemm),
        cmocka_unit_test(test_gemm_x8),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
