/* Softmax with an AVX2 exponential (kernels/softmax.h). */
#include "kernels/softmax.h"

#include "kernels/avx2.h"

#if defined(CODI_HAVE_AVX2_KERNELS)

#include <immintrin.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#include "tensor/types.h"

/* e^x, 8 lanes: x = n ln2 + r with |r| <= ln2/2 (ln2 split in two so
 * n ln2 is exact), e^r by Cephes' expf polynomial, 2^n put into the
 * exponent field. Below -87.33 (where e^x leaves the normal range) and for
 * -inf the result is 0; x is capped at 88 (e^88 = 1.65e38). Within 2 ulp
 * of expf in between (tests/test_softmax.c). */
static inline __m256 exp_neg(__m256 x) {
    const __m256 lo = _mm256_set1_ps(-87.33654f);
    const __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0f));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.9875691500e-4f);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
    const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(under, _mm256_mul_ps(p, _mm256_castsi256_ps(e)));
}

void codi_exp_neg_avx2(const float *x, float *y, int n) {
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(y + i, exp_neg(_mm256_loadu_ps(x + i)));
    if (i < n) {
        float t[8] = {0};
        for (int k = 0; i + k < n; k++)
            t[k] = x[i + k];
        const __m256 v = exp_neg(_mm256_loadu_ps(t));
        _mm256_storeu_ps(t, v);
        for (int k = 0; i + k < n; k++)
            y[i + k] = t[k];
    }
}

void codi_softmax_inplace_avx2(float *x, int n) {
    if (n <= 0)
        return;
    __m256 vm = _mm256_set1_ps(-INFINITY);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        vm = _mm256_max_ps(vm, _mm256_loadu_ps(x + i));
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(vm), _mm256_extractf128_ps(vm, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
    float mx = _mm_cvtss_f32(m4);
    for (int k = i; k < n; k++)
        mx = x[k] > mx ? x[k] : mx;
    /* the sum in double, like the reference: 4 lanes per half */
    const __m256 vmx = _mm256_set1_ps(mx);
    __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
    for (i = 0; i + 8 <= n; i += 8) {
        const __m256 e = exp_neg(_mm256_sub_ps(_mm256_loadu_ps(x + i), vmx));
        _mm256_storeu_ps(x + i, e);
        s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double sd[4];
    _mm256_storeu_pd(sd, _mm256_add_pd(s0, s1));
    double sum = (sd[0] + sd[1]) + (sd[2] + sd[3]);
    if (i < n) {
        float t[8];
        for (int k = 0; k < 8; k++)
            t[k] = i + k < n ? x[i + k] - mx : -INFINITY;
        _mm256_storeu_ps(t, exp_neg(_mm256_loadu_ps(t)));
        for (int k = 0; i + k < n; k++) {
            x[i + k] = t[k];
            sum += t[k];
        }
    }
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sum));
    for (i = 0; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_loadu_ps(x + i), inv));
    const float inv1 = (float)(1.0 / sum);
    for (; i < n; i++)
        x[i] *= inv1;
}

void codi_swiglu_avx2(float *g, const float *u, int n) {
    const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m256 e = exp_neg(_mm256_sub_ps(zero, x));
        const __m256 silu = _mm256_div_ps(x, _mm256_add_ps(one, e));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(silu, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) {
        float t[8] = {0};
        t[0] = -g[i];
        _mm256_storeu_ps(t, exp_neg(_mm256_loadu_ps(t)));
        g[i] = g[i] / (1.0f + t[0]) * u[i];
    }
}

static float g_gelu_table[65536];
static pthread_once_t g_gelu_once = PTHREAD_ONCE_INIT;

static void gelu_table_init(void) {
    for (uint32_t h = 0; h < 65536; h++)
        g_gelu_table[h] = codi_gelu_fp16((uint16_t)h);
}

void codi_geglu_avx2(float *g, const float *u, int n) {
    pthread_once(&g_gelu_once, gelu_table_init);
    const __m256 lo = _mm256_set1_ps(-10.0f), hi = _mm256_set1_ps(10.0f);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 x = _mm256_loadu_ps(g + i);
        const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT);
        __m256 t = _mm256_i32gather_ps(g_gelu_table, _mm256_cvtepu16_epi32(h), 4);
        t = _mm256_andnot_ps(_mm256_cmp_ps(x, lo, _CMP_LE_OQ), t);
        t = _mm256_blendv_ps(t, x, _mm256_cmp_ps(x, hi, _CMP_GE_OQ));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(t, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++)
        g[i] = codi_gelu_ggml(g[i]) * u[i];
}

#else
typedef int codi_softmax_avx2_unused; /* not an x86 build: nothing to compile */
#endif
