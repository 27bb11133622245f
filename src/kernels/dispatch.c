/* Runtime choice of kernels: the CPU is probed once; AVX2 kernels
 * (kernels/avx2.c) are used when the CPU has AVX2, FMA and F16C and the
 * environment does not set CODI_FORCE_SCALAR to a non-empty value other
 * than "0"; otherwise the references from src/tensor/. */
#include "kernels/kernels.h"

#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "kernels/avx2.h"
#include "kernels/codi_avx2.h"
#include "kernels/gemm.h"
#include "kernels/repack.h"
#include "kernels/softmax.h"
#include "tensor/quants.h"

static codi_cpu_features g_features;
static int g_use_avx2;
static int g_no_repack;
static int g_use_vnni;
static int g_use_avx512;
static int g_use_amx;
static pthread_once_t g_probe_once = PTHREAD_ONCE_INIT;

/* An environment switch is on when set to anything but "" or "0". */
static int env_on(const char *name) {
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static void probe(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    /* libgcc/compiler-rt also check that the OS saves the YMM state. */
    g_features.avx2 = __builtin_cpu_supports("avx2");
    g_features.fma = __builtin_cpu_supports("fma");
    {
        unsigned a, b, c, d;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
        g_features.f16c = (c >> 29) & 1;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
        if (a >= 7) { /* leaf 7, sub-leaf 1: EAX bit 4 is AVX-VNNI */
            __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(1));
            g_features.avxvnni = (a >> 4) & 1;
        }
    }
#endif
#if defined(__x86_64__) || defined(__i386__)
    /* libgcc checks XCR0 (the OS saves the zmm state) for these */
    g_features.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                        __builtin_cpu_supports("avx512vnni");
#endif
#if defined(__x86_64__) && defined(__linux__)
    {
        /* AMX: CPUID.(7,0):EDX bits 24 (tile) and 25 (int8), the OS
         * enabling the tile state in XCR0 (bits 17, 18), and Linux granting
         * it to this process (ARCH_REQ_XCOMP_PERM for XTILEDATA). */
        unsigned a, b, c, d;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(0), "c"(0));
        const unsigned max_leaf = a;
        __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
        const int osxsave = (c >> 27) & 1;
        if (max_leaf >= 7 && osxsave) {
            __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
            const int tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
            unsigned lo, hi;
            __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
            if (tile && int8 && ((lo >> 17) & 3) == 3)
                g_features.amx = syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */,
                                         18 /* XFEATURE_XTILEDATA */) == 0;
        }
    }
#endif
    /* CODI_NO_VNNI=1: the plain AVX2 x8 kernels even where AVX-VNNI is
     * present; CODI_NO_AVX512=1: no AVX-512 Q4_1 kernel (for A/B
     * measurements; the results are the same) */
    g_use_vnni = g_features.avxvnni && !env_on("CODI_NO_VNNI");
    /* its odd last group runs the AVX-VNNI tile */
    g_use_avx512 = g_use_vnni && g_features.avx512 && !env_on("CODI_NO_AVX512");
    /* CODI_NO_AMX=1: no AMX W4A8 kernel (A/B runs; the results are the same) */
    g_use_amx = g_features.amx && !env_on("CODI_NO_AMX");
    g_no_repack = env_on("CODI_NO_REPACK");
    const int forced = env_on("CODI_FORCE_SCALAR");
#if defined(CODI_HAVE_AVX2_KERNELS)
    g_use_avx2 = !forced && g_features.avx2 && g_features.fma && g_features.f16c;
#else
    (void)forced;
#endif
}

const codi_cpu_features *codi_cpu_get_features(void) {
    pthread_once(&g_probe_once, probe);
    return &g_features;
}

static int use_avx2(void) {
    pthread_once(&g_probe_once, probe);
    return g_use_avx2;
}

const char *codi_kernel_backend(void) {
    return use_avx2() ? "avx2" : "scalar";
}

codi_vec_dot_fn codi_kernel_vec_dot(int type) {
    const codi_type_traits *t = codi_type_get(type);
    if (!t)
        return NULL;
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        switch (type) {
        case CODI_TYPE_F32: return codi_vec_dot_f32_avx2;
        case CODI_TYPE_F16: return codi_vec_dot_f16_avx2;
        case CODI_TYPE_Q4_0: return codi_vec_dot_q4_0_q8_0_avx2;
        case CODI_TYPE_Q4_1: return codi_vec_dot_q4_1_q8_1_avx2;
        case CODI_TYPE_Q5_0: return codi_vec_dot_q5_0_q8_0_avx2;
        case CODI_TYPE_Q5_1: return codi_vec_dot_q5_1_q8_1_avx2;
        case CODI_TYPE_Q8_0: return codi_vec_dot_q8_0_q8_0_avx2;
        case CODI_TYPE_Q2_K: return codi_vec_dot_q2_K_q8_K_avx2;
        case CODI_TYPE_Q3_K: return codi_vec_dot_q3_K_q8_K_avx2;
        case CODI_TYPE_Q4_K: return codi_vec_dot_q4_K_q8_K_avx2;
        case CODI_TYPE_Q5_K: return codi_vec_dot_q5_K_q8_K_avx2;
        case CODI_TYPE_Q6_K: return codi_vec_dot_q6_K_q8_K_avx2;
        case CODI_TYPE_Q4G32: return codi_vec_dot_q4g32_q8_1_avx2;
        case CODI_TYPE_Q4G64: return codi_vec_dot_q4g64_q8_1_avx2;
        case CODI_TYPE_Q4G128: return codi_vec_dot_q4g128_q8_1_avx2;
        case CODI_TYPE_Q8G32: return codi_vec_dot_q8g32_q8_0_avx2;
        case CODI_TYPE_Q8G64: return codi_vec_dot_q8g64_q8_0_avx2;
        case CODI_TYPE_Q8G128: return codi_vec_dot_q8g128_q8_0_avx2;
        case CODI_TYPE_GQSA32: return codi_vec_dot_gqsa32_q8_1_avx2;
        case CODI_TYPE_GQSA64: return codi_vec_dot_gqsa64_q8_1_avx2;
        case CODI_TYPE_GQSA128: return codi_vec_dot_gqsa128_q8_1_avx2;
        case CODI_TYPE_W4A8_32: return codi_vec_dot_w4a8_32_a8_avx2;
        case CODI_TYPE_W4A8_64: return codi_vec_dot_w4a8_64_a8_avx2;
        case CODI_TYPE_W4A8_128: return codi_vec_dot_w4a8_128_a8_avx2;
        default: break;
        }
    }
#endif
    return t->vec_dot;
}

codi_gemm_fn codi_kernel_gemm(int type) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        switch (type) {
        case CODI_TYPE_Q4_0: return codi_gemm_q4_0_q8_0_avx2;
        case CODI_TYPE_Q4_1: return codi_gemm_q4_1_q8_1_avx2;
        case CODI_TYPE_Q8_0: return codi_gemm_q8_0_q8_0_avx2;
        case CODI_TYPE_Q4G32: return codi_gemm_q4g32_q8_1_avx2;
        case CODI_TYPE_Q4G64: return codi_gemm_q4g64_q8_1_avx2;
        case CODI_TYPE_Q4G128: return codi_gemm_q4g128_q8_1_avx2;
        case CODI_TYPE_Q8G32: return codi_gemm_q8g32_q8_0_avx2;
        case CODI_TYPE_Q8G64: return codi_gemm_q8g64_q8_0_avx2;
        case CODI_TYPE_Q8G128: return codi_gemm_q8g128_q8_0_avx2;
        case CODI_TYPE_GQSA32: return codi_gemm_gqsa32_q8_1_avx2;
        case CODI_TYPE_GQSA64: return codi_gemm_gqsa64_q8_1_avx2;
        case CODI_TYPE_GQSA128: return codi_gemm_gqsa128_q8_1_avx2;
        case CODI_TYPE_W4A8_32: return codi_gemm_w4a8_32_a8_avx2;
        case CODI_TYPE_W4A8_64: return codi_gemm_w4a8_64_a8_avx2;
        case CODI_TYPE_W4A8_128: return codi_gemm_w4a8_128_a8_avx2;
        default: break;
        }
    }
#endif
    (void)type;
    return NULL;
}

codi_gemm_x8_fn codi_kernel_gemm_x8(int type) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2() && !g_no_repack) {
        switch (type) {
        case CODI_TYPE_Q4_0: return g_use_vnni ? codi_gemm_x8_q4_0_avxvnni : codi_gemm_x8_q4_0_avx2;
        case CODI_TYPE_Q5_0: return g_use_vnni ? codi_gemm_x8_q5_0_avxvnni : codi_gemm_x8_q5_0_avx2;
        case CODI_TYPE_Q5_1: return g_use_vnni ? codi_gemm_x8_q5_1_avxvnni : codi_gemm_x8_q5_1_avx2;
        case CODI_TYPE_Q4_K: return g_use_vnni ? codi_gemm_x8_q4_K_avxvnni : codi_gemm_x8_q4_K_avx2;
        case CODI_TYPE_Q5_K: return g_use_vnni ? codi_gemm_x8_q5_K_avxvnni : codi_gemm_x8_q5_K_avx2;
        case CODI_TYPE_Q6_K: return g_use_vnni ? codi_gemm_x8_q6_K_avxvnni : codi_gemm_x8_q6_K_avx2;
        case CODI_TYPE_Q4_1:
        case CODI_TYPE_Q4G32: /* byte-identical to Q4_1 */
            return g_use_avx512 ? codi_gemm_x8_q4_1_avx512
                   : g_use_vnni ? codi_gemm_x8_q4_1_avxvnni
                                : codi_gemm_x8_q4_1_avx2;
        case CODI_TYPE_Q8_0:
        case CODI_TYPE_Q8G32: /* byte-identical to Q8_0 */
            return g_use_avx512 ? codi_gemm_x8_q8_0_avx512
                   : g_use_vnni ? codi_gemm_x8_q8_0_avxvnni
                                : codi_gemm_x8_q8_0_avx2;
        case CODI_TYPE_W4A8_32: return g_use_vnni ? codi_gemm_x8_w4a8_32_avxvnni : codi_gemm_x8_w4a8_32_avx2;
        case CODI_TYPE_W4A8_64: return g_use_vnni ? codi_gemm_x8_w4a8_64_avxvnni : codi_gemm_x8_w4a8_64_avx2;
        case CODI_TYPE_W4A8_128:
            return g_use_vnni ? codi_gemm_x8_w4a8_128_avxvnni : codi_gemm_x8_w4a8_128_avx2;
        default: break;
        }
    }
#endif
    (void)type;
    return NULL;
}

codi_gemm_x8_amx_fn codi_kernel_gemm_x8_amx(int type) {
#if defined(CODI_HAVE_AVX2_KERNELS) && defined(__x86_64__)
    if (codi_kernel_gemm_x8(type) && g_use_amx) {
        switch (type) {
        case CODI_TYPE_W4A8_32: return codi_gemm_x8_w4a8_32_amx;
        case CODI_TYPE_W4A8_64: return codi_gemm_x8_w4a8_64_amx;
        case CODI_TYPE_W4A8_128: return codi_gemm_x8_w4a8_128_amx;
        default: break;
        }
    }
#endif
    (void)type;
    return NULL;
}

void codi_gemm_generic(codi_vec_dot_fn dot, int64_t n, int nr, int nc, const void *w,
                       size_t ldw, const void *x, size_t ldx, float *y, size_t ldy) {
    for (int c = 0; c < nc; c++)
        for (int r = 0; r < nr; r++)
            dot(n, &y[(size_t)c * ldy + r], (const uint8_t *)w + (size_t)r * ldw,
                (const uint8_t *)x + (size_t)c * ldx);
}

codi_from_float_fn codi_kernel_from_float(int type) {
    const codi_type_traits *t = codi_type_get(type);
    if (!t)
        return NULL;
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        switch (type) {
        case CODI_TYPE_F16: return codi_quantize_row_f16_avx2;
        case CODI_TYPE_Q8_0: return codi_quantize_row_q8_0_avx2;
        case CODI_TYPE_Q8_1: return codi_quantize_row_q8_1_avx2;
        case CODI_TYPE_Q8_K: return codi_quantize_row_q8_K_avx2;
        case CODI_TYPE_A8: return codi_quantize_row_a8_avx2;
        default: break;
        }
    }
#endif
    return t->from_float;
}

codi_to_float_fn codi_kernel_to_float(int type) {
    const codi_type_traits *t = codi_type_get(type);
    if (!t)
        return NULL;
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2() && type == CODI_TYPE_F16)
        return codi_dequantize_row_f16_avx2;
#endif
    return t->to_float;
}

void codi_fp16_to_fp32_row(const uint16_t *x, float *y, int64_t n) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_fp16_to_fp32_row_avx2(x, y, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        y[i] = codi_fp16_to_fp32(x[i]);
}

void codi_fp32_to_fp16_row(const float *x, uint16_t *y, int64_t n) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_fp32_to_fp16_row_avx2(x, y, n);
        return;
    }
#endif
    for (int64_t i = 0; i < n; i++)
        y[i] = codi_fp32_to_fp16(x[i]);
}

void codi_dot_f16_multi(int64_t n, float *s, const uint16_t *x, const uint16_t *const *y, int m) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_dot_f16_multi_avx2(n, s, x, y, m);
        return;
    }
#endif
    const codi_vec_dot_fn dot = codi_type_get(CODI_TYPE_F16)->vec_dot;
    for (int j = 0; j < m; j++)
        dot(n, &s[j], x, y[j]);
}

void codi_attn_scores_f16_ref(const float *q, int G, int hd, const uint16_t *kT, size_t ldk, int n,
                              float *s, size_t lds, float scale) {
    for (int g = 0; g < G; g++)
        for (int t = 0; t < n; t++) {
            float acc = 0.0f;
            for (int i = 0; i < hd; i++)
                acc += q[(size_t)g * hd + i] * codi_fp16_to_fp32(kT[(size_t)i * ldk + t]);
            s[(size_t)g * lds + t] = acc * scale;
        }
}

void codi_attn_scores_f16(const float *q, int G, int hd, const uint16_t *kT, size_t ldk, int n,
                          float *s, size_t lds, float scale) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_attn_scores_f16_avx2(q, G, hd, kT, ldk, n, s, lds, scale);
        return;
    }
#endif
    codi_attn_scores_f16_ref(q, G, hd, kT, ldk, n, s, lds, scale);
}

/* The F16 vec_dot reference (quant_float.c) with y = fp16(p): the
 * conversion back is exact, so p is used as it is. */
void codi_attn_values_f16_ref(const float *p, size_t ldp, const int *n, int m, const uint16_t *vT,
                              size_t ldv, int hd, float *const *o) {
    for (int j = 0; j < m; j++)
        for (int i = 0; i < hd; i++) {
            double sum = 0.0;
            for (int t = 0; t < n[j]; t++)
                sum += (double)(codi_fp16_to_fp32(vT[(size_t)i * ldv + t]) * p[(size_t)j * ldp + t]);
            o[j][i] = (float)sum;
        }
}

void codi_attn_values_f16(const float *p, size_t ldp, const int *n, int m, const uint16_t *vT, size_t ldv,
                          int hd, float *const *o) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_attn_values_f16_avx2(p, ldp, n, m, vT, ldv, hd, o);
        return;
    }
#endif
    codi_attn_values_f16_ref(p, ldp, n, m, vT, ldv, hd, o);
}

/* One row at a time, one block of keys at a time, in the order the
 * description in kernels.h gives; expf, sums in float. */
void codi_attn_online_f16_ref(const float *q, int M, int hd, const int *n, const uint16_t *kT,
                              size_t ldk, const uint16_t *vT, size_t ldv, float scale, float *const *o) {
    for (int r = 0; r < M; r++) {
        const float *qr = q + (size_t)r * hd;
        float *orow = o[r];
        float m = -INFINITY, l = 0.0f;
        for (int i = 0; i < hd; i++)
            orow[i] = 0.0f;
        for (int t0 = 0; t0 < n[r]; t0 += CODI_ATTN_BLOCK) {
            const int nb = n[r] - t0 < CODI_ATTN_BLOCK ? n[r] - t0 : CODI_ATTN_BLOCK;
            float p[CODI_ATTN_BLOCK], bm = -INFINITY;
            for (int t = 0; t < nb; t++) {
                float acc = 0.0f;
                for (int i = 0; i < hd; i++)
                    acc += qr[i] * codi_fp16_to_fp32(kT[(size_t)i * ldk + t0 + t]);
                p[t] = acc * scale;
                bm = p[t] > bm ? p[t] : bm;
            }
            const float mn = bm > m ? bm : m;
            const float alpha = expf(m - mn); /* 0 for the first block */
            float sum = 0.0f;
            for (int t = 0; t < nb; t++) {
                p[t] = expf(p[t] - mn);
                sum += p[t];
            }
            l = l * alpha + sum;
            m = mn;
            for (int i = 0; i < hd; i++) {
                float acc = 0.0f;
                for (int t = 0; t < nb; t++)
                    acc += p[t] * codi_fp16_to_fp32(vT[(size_t)i * ldv + t0 + t]);
                orow[i] = orow[i] * alpha + acc;
            }
        }
        if (l > 0.0f)
            for (int i = 0; i < hd; i++)
                orow[i] /= l;
    }
}

void codi_attn_online_f16(const float *q, int M, int hd, const int *n, const uint16_t *kT, size_t ldk,
                          const uint16_t *vT, size_t ldv, float scale, float *const *o) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_attn_online_f16_avx2(q, M, hd, n, kT, ldk, vT, ldv, scale, o);
        return;
    }
#endif
    codi_attn_online_f16_ref(q, M, hd, n, kT, ldk, vT, ldv, scale, o);
}

void codi_rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0; /* llama.cpp accumulates in ggml_float (double) */
    for (int i = 0; i < n; i++)
        ss += (double)x[i] * x[i];
    const float scale = 1.0f / sqrtf((float)(ss / n) + eps);
    for (int i = 0; i < n; i++)
        out[i] = x[i] * scale * w[i];
}

void codi_softmax_inplace(float *x, int n) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_softmax_inplace_avx2(x, n);
        return;
    }
#endif
    codi_softmax_inplace_ref(x, n);
}

void codi_swiglu(float *g, const float *u, int n) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_swiglu_avx2(g, u, n);
        return;
    }
#endif
    codi_swiglu_ref(g, u, n);
}

float codi_gelu_fp16(uint16_t h) {
    const float f = codi_fp16_to_fp32(h);
    const float g = 0.5f * f * (1.0f + tanhf(0.79788456080286535587989211986876f * f * (1.0f + 0.044715f * f * f)));
    return codi_fp16_to_fp32(codi_fp32_to_fp16(g));
}

float codi_gelu_ggml(float x) {
    if (x <= -10.0f)
        return 0.0f;
    if (x >= 10.0f)
        return x;
    return codi_gelu_fp16(codi_fp32_to_fp16(x));
}

void codi_geglu_ref(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++)
        g[i] = codi_gelu_ggml(g[i]) * u[i];
}

void codi_geglu(float *g, const float *u, int n) {
#if defined(CODI_HAVE_AVX2_KERNELS)
    if (use_avx2()) {
        codi_geglu_avx2(g, u, n);
        return;
    }
#endif
    codi_geglu_ref(g, u, n);
}

void codi_swiglu_ref(float *g, const float *u, int n) {
    for (int i = 0; i < n; i++) {
        const float gv = g[i];
        g[i] = gv / (1.0f + expf(-gv)) * u[i];
    }
}

void codi_softmax_inplace_ref(float *x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = x[i] > mx ? x[i] : mx;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        x[i] = expf(x[i] - mx);
        sum += x[i];
    }
    const float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] *= inv;
}
