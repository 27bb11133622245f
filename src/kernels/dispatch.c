#include "kernels/kernels.h"

#include <math.h>
#include <stddef.h>

static codi_cpu_features g_features;
static int g_probed;

const codi_cpu_features *codi_cpu_get_features(void) {
    if (!g_probed) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_cpu_init();
        g_features.avx2 = __builtin_cpu_supports("avx2");
        g_features.fma = __builtin_cpu_supports("fma");
        g_features.f16c = 0;
        {
            unsigned a, b, c, d;
            __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
            g_features.f16c = (c >> 29) & 1;
        }
#endif
        g_probed = 1;
    }
    return &g_features;
}

codi_vec_dot_fn codi_kernel_vec_dot(int type) {
    const codi_type_traits *t = codi_type_get(type);
    return t ? t->vec_dot : NULL;
}

codi_from_float_fn codi_kernel_from_float(int type) {
    const codi_type_traits *t = codi_type_get(type);
    return t ? t->from_float : NULL;
}

codi_to_float_fn codi_kernel_to_float(int type) {
    const codi_type_traits *t = codi_type_get(type);
    return t ? t->to_float : NULL;
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
