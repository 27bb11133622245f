/* The AVX2 softmax of attention scores and SwiGLU against the expf
 * references (SwiGLU within 1e-6 relative, saturated ends included);
 * its exponential within 2 ulp of expf over the whole normal range, 0 for
 * -inf and below it, and softmax rows (masked entries, tails of every
 * length) within 1e-6 relative of the reference. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/avx2.h"
#include "kernels/kernels.h"
#include "kernels/softmax.h"
#include "tensor/types.h"

static uint64_t rng = 88172645463325252ull;
static double rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (double)(rng >> 11) * 0x1.0p-53;
}

static int have_avx2(void) { return strcmp(codi_kernel_backend(), "avx2") == 0; }

static int64_t ulp_diff(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4);
    memcpy(&ib, &b, 4);
    return ia > ib ? (int64_t)ia - ib : (int64_t)ib - ia;
}

static void test_exp(void **state) {
    (void)state;
    if (!have_avx2()) {
        print_message("no AVX2+FMA+F16C on this CPU: skipped\n");
        skip();
    }
#if defined(CODI_HAVE_AVX2_KERNELS)
    enum { N = 1 << 20 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    assert_true(x && y);
    /* a dense sweep of [-87.3, 0], then random points */
    for (int i = 0; i < N / 2; i++)
        x[i] = -87.3f * (float)i / (float)(N / 2);
    for (int i = N / 2; i < N; i++)
        x[i] = (float)(-87.3 * rnd());
    codi_exp_neg_avx2(x, y, N);
    int64_t worst = 0;
    for (int i = 0; i < N; i++) {
        const int64_t d = ulp_diff(y[i], expf(x[i]));
        if (d > worst)
            worst = d;
        if (d > 2)
            fail_msg("exp(%.9g): %.9g, expf %.9g (%lld ulp)", x[i], y[i], expf(x[i]), (long long)d);
    }
    print_message("exp_neg worst %lld ulp from expf\n", (long long)worst);
    const float edge[] = {0.0f, -0.0f, -1e-30f, -87.33f, -87.5f, -100.0f, -1e30f, -INFINITY};
    const int ne = (int)(sizeof edge / sizeof edge[0]);
    codi_exp_neg_avx2(edge, y, ne); /* also a tail shorter than 8 lanes */
    assert_true(y[0] == 1.0f && y[1] == 1.0f && y[2] == 1.0f);
    assert_true(ulp_diff(y[3], expf(-87.33f)) <= 2);
    for (int i = 4; i < ne; i++)
        assert_true(y[i] == 0.0f);
    free(x);
    free(y);
#endif
}

static void test_softmax_rows(void **state) {
    (void)state;
    if (!have_avx2()) {
        print_message("no AVX2+FMA+F16C on this CPU: skipped\n");
        skip();
    }
#if defined(CODI_HAVE_AVX2_KERNELS)
    enum { MAXN = 5000 };
    float *a = malloc(MAXN * sizeof *a), *b = malloc(MAXN * sizeof *b);
    assert_true(a && b);
    double worst = 0.0;
    for (int t = 0; t < 400; t++) {
        const int n = t < 200 ? 1 + t : 1 + (int)(rnd() * (MAXN - 1));
        const double spread = t % 3 == 0 ? 2.0 : t % 3 == 1 ? 20.0 : 200.0;
        for (int i = 0; i < n; i++)
            a[i] = (float)((rnd() - 0.5) * spread);
        if (t % 5 == 0 && n > 1) /* masked keys, as sliding windows leave */
            for (int i = 0; i < n / 3; i++)
                a[(int)(rnd() * n)] = -INFINITY;
        memcpy(b, a, (size_t)n * sizeof *a);
        codi_softmax_inplace_ref(a, n);
        codi_softmax_inplace(b, n); /* the dispatcher: AVX2 here */
        double sum = 0.0;
        for (int i = 0; i < n; i++) {
            const double d = fabs((double)a[i] - b[i]);
            const double rel = d / (fabs((double)a[i]) + 1e-30);
            if (a[i] > 1e-30f && rel > worst)
                worst = rel;
            if (!(d <= 1e-6 * a[i] + 1e-37))
                fail_msg("n %d i %d: avx2 %.9g ref %.9g", n, i, b[i], a[i]);
            sum += b[i];
        }
        assert_true(fabs(sum - 1.0) < 1e-5);
    }
    print_message("softmax worst relative difference %.2e\n", worst);
    free(a);
    free(b);
#endif
}

static void test_swiglu(void **state) {
    (void)state;
    if (!have_avx2()) {
        print_message("no AVX2+FMA+F16C on this CPU: skipped\n");
        skip();
    }
    enum { MAXN = 3000 };
    float *g = malloc(MAXN * sizeof *g), *g2 = malloc(MAXN * sizeof *g2), *u = malloc(MAXN * sizeof *u);
    assert_true(g && g2 && u);
    double worst = 0.0;
    for (int t = 0; t < 200; t++) {
        const int n = t < 40 ? 1 + t : 1 + (int)(rnd() * (MAXN - 1));
        const double spread = t % 2 ? 10.0 : 300.0; /* reaches both saturations */
        for (int i = 0; i < n; i++) {
            g[i] = g2[i] = (float)((rnd() - 0.5) * spread);
            u[i] = (float)((rnd() - 0.5) * 4.0);
        }
        codi_swiglu_ref(g, u, n);
        codi_swiglu(g2, u, n);
        for (int i = 0; i < n; i++) {
            const double d = fabs((double)g[i] - g2[i]), s = fabs((double)g[i]);
            if (s > 1e-30 && d / s > worst)
                worst = d / s;
            if (!(d <= 1e-6 * s + 1e-30))
                fail_msg("n %d i %d: avx2 %.9g ref %.9g", n, i, g2[i], g[i]);
        }
    }
    print_message("swiglu worst relative difference %.2e\n", worst);
    free(g);
    free(g2);
    free(u);
}

/* GeGLU: the table-and-gather kernel equals the reference bit for bit
 * (both round the input to fp16 and read/compute the same gelu), over
 * random rows of every tail length, inputs spread past the +-10 cut-offs,
 * every fp16 value in (-10, 10) exactly, and the floats halfway between
 * neighbouring fp16 values (the rounding ties). */
static void test_geglu(void **state) {
    (void)state;
    if (!have_avx2()) {
        print_message("no AVX2+FMA+F16C on this CPU: skipped\n");
        skip();
    }
    enum { MAXN = 4096 };
    float *g = malloc(MAXN * sizeof *g), *g2 = malloc(MAXN * sizeof *g2), *u = malloc(MAXN * sizeof *u);
    assert_true(g && g2 && u);
    for (int t = 0; t < 300; t++) {
        const int n = t < 40 ? 1 + t : 1 + (int)(rnd() * (MAXN - 1));
        for (int i = 0; i < n; i++) {
            const double spread = t % 3 == 0 ? 30.0 : 8.0;
            g[i] = g2[i] = (float)((rnd() - 0.5) * spread);
            u[i] = (float)((rnd() - 0.5) * 4.0);
        }
        if (t == 7) { /* the cut-offs themselves */
            g[0] = g2[0] = -10.0f;
            g[1] = g2[1] = 10.0f;
            g[2] = g2[2] = nextafterf(-10.0f, 0.0f);
            g[3] = g2[3] = nextafterf(10.0f, 0.0f);
        }
        codi_geglu_ref(g, u, n);
        codi_geglu(g2, u, n);
        for (int i = 0; i < n; i++)
            if (memcmp(&g[i], &g2[i], 4) != 0)
                fail_msg("n %d i %d: avx2 %.9g ref %.9g", n, i, g2[i], g[i]);
    }
    /* every fp16 value below 10 in magnitude, and each tie above it */
    int m = 0, checked = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        const float f = codi_fp16_to_fp32((uint16_t)h);
        if (!(fabsf(f) < 10.0f))
            continue;
        const float up = codi_fp16_to_fp32((uint16_t)(h + 1));
        g[m] = f;
        u[m++] = 1.0f;
        if (isfinite(up) && fabsf(up) < 10.0f && (h & 0x7fff) != 0x7bff) {
            g[m] = (float)(((double)f + up) / 2); /* a tie: to the even one */
            u[m++] = -1.0f;
        }
        if (m >= MAXN - 2 || h == 65535) {
            memcpy(g2, g, (size_t)m * sizeof *g);
            codi_geglu_ref(g, u, m);
            codi_geglu(g2, u, m);
            for (int i = 0; i < m; i++)
                if (memcmp(&g[i], &g2[i], 4) != 0)
                    fail_msg("fp16 sweep: avx2 %.9g ref %.9g", g2[i], g[i]);
            checked += m;
            m = 0;
        }
    }
    assert_true(checked > 60000);
    free(g);
    free(g2);
    free(u);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_exp),
        cmocka_unit_test(test_softmax_rows),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_geglu),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
