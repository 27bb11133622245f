/* Kernel micro-benchmark: ns per row, reference vs AVX2, for every dot
 * product, the activation quantizers and the fp16 row conversions, at the
 * row lengths of SmolLM2-135M (576, 1536). K-quants need a multiple of 256
 * elements, so their 576 column reads n/a.
 *
 * Build by hand after the library (CMake does not build bench/):
 *   cmake -S . -B build-k && cmake --build build-k -j2
 *   gcc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -Iinclude -Isrc \
 *       bench/kernels_bench.c build-k/libcodi.a -lm -lpthread \
 *       -o build-k/kernels_bench
 *   build-k/kernels_bench            (single thread; takes ~10 s)
 *
 * Each measurement cycles through enough rows to fill ~256 KiB of weights
 * (L2-resident: this measures the kernels, not DRAM), repeats for at least
 * 20 ms, and keeps the best of 5 repetitions. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/avx2.h"
#include "kernels/kernels.h"
#include "tensor/quants.h"
#include "tensor/types.h"

static uint64_t rng = 0x9E3779B97F4A7C15ull;

static float rnd_gauss(void) {
    double u[2];
    for (int k = 0; k < 2; k++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        u[k] = ((double)(rng >> 11) + 0.5) * 0x1.0p-53;
    }
    return (float)(sqrt(-2.0 * log(u[0])) * cos(6.283185307179586 * u[1]));
}

static double now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static volatile float g_sink;

/* ns per call of dot over rows of w (cycled) against one activation row. */
static double time_dot(codi_vec_dot_fn dot, int64_t n, const uint8_t *w,
                       size_t row_bytes, int rows, const void *a) {
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        long calls = 0;
        float acc = 0.0f;
        const double t0 = now_ns();
        double t1;
        do {
            for (int r = 0; r < rows; r++) {
                float s;
                dot(n, &s, w + (size_t)r * row_bytes, a);
                acc += s;
            }
            calls += rows;
            t1 = now_ns();
        } while (t1 - t0 < 20e6);
        g_sink = acc;
        const double per = (t1 - t0) / (double)calls;
        if (per < best)
            best = per;
    }
    return best;
}

static double time_row(void (*fn)(const float *, void *, int64_t),
                       void (*tf)(const void *, float *, int64_t),
                       const void *src, void *dst, int64_t n) {
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
        long calls = 0;
        const double t0 = now_ns();
        double t1;
        do {
            for (int k = 0; k < 64; k++) {
                if (fn)
                    fn(src, dst, n);
                else
                    tf(src, dst, n);
            }
            calls += 64;
            t1 = now_ns();
        } while (t1 - t0 < 20e6);
        const double per = (t1 - t0) / (double)calls;
        if (per < best)
            best = per;
    }
    return best;
}

typedef struct dot_entry {
    int type;
    codi_vec_dot_fn avx2;
} dot_entry;

int main(void) {
#if !defined(CODI_HAVE_AVX2_KERNELS)
    fprintf(stderr, "not an x86 build\n");
    return 1;
#else
    const codi_cpu_features *f = codi_cpu_get_features();
    if (!(f->avx2 && f->fma && f->f16c)) {
        fprintf(stderr, "this CPU lacks AVX2+FMA+F16C\n");
        return 1;
    }
    static const dot_entry dots[] = {
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
    static const int64_t lens[] = {576, 1536};
    enum { NMAX = 1536 };
    float x[NMAX], y[NMAX];
    for (int i = 0; i < NMAX; i++)
        x[i] = rnd_gauss() * 0.1f;

    printf("dot products, ns per row (one thread)\n");
    printf("%-6s %10s %10s %8s   %10s %10s %8s\n", "type", "ref 576", "avx2 576",
           "speedup", "ref 1536", "avx2 1536", "speedup");
    for (size_t d = 0; d < sizeof dots / sizeof dots[0]; d++) {
        const codi_type_traits *t = codi_type_get(dots[d].type);
        const codi_type_traits *vt = codi_type_get(t->vec_dot_type);
        printf("%-6s", t->name);
        for (size_t l = 0; l < 2; l++) {
            const int64_t n = lens[l];
            const size_t rb = codi_row_size(dots[d].type, n);
            if (rb == 0) {
                printf(" %10s %10s %8s  ", "n/a", "n/a", "");
                continue;
            }
            int rows = (int)((256 * 1024) / rb);
            if (rows < 1)
                rows = 1;
            uint8_t *w = malloc((size_t)rows * rb);
            uint8_t *a = malloc(codi_row_size(t->vec_dot_type, n));
            if (!w || !a)
                return 1;
            for (int r = 0; r < rows; r++) {
                float row[NMAX];
                for (int64_t i = 0; i < n; i++)
                    row[i] = rnd_gauss() * 0.05f;
                t->from_float(row, w + (size_t)r * rb, n);
            }
            vt->from_float(x, a, n);
            const double tr = time_dot(t->vec_dot, n, w, rb, rows, a);
            const double ta = time_dot(dots[d].avx2, n, w, rb, rows, a);
            printf(" %10.1f %10.1f %7.1fx  ", tr, ta, tr / ta);
            free(w);
            free(a);
        }
        printf("\n");
    }

    printf("\nactivation quantizers and fp16 rows, ns per row\n");
    printf("%-12s %10s %10s %8s   %10s %10s %8s\n", "kernel", "ref 576", "avx2 576",
           "speedup", "ref 1536", "avx2 1536", "speedup");
    static uint8_t buf[NMAX * 8];
    static uint16_t h[NMAX];
    for (int i = 0; i < NMAX; i++)
        h[i] = codi_fp32_to_fp16(x[i]);
    struct {
        const char *name;
        void (*ref)(const float *, void *, int64_t), (*avx2)(const float *, void *, int64_t);
        void (*tref)(const void *, float *, int64_t), (*tavx2)(const void *, float *, int64_t);
        int64_t blk;
    } qs[] = {
        {"quant q8_0", codi_quantize_row_q8_0_ref, codi_quantize_row_q8_0_avx2, NULL, NULL, 32},
        {"quant q8_1", codi_quantize_row_q8_1_ref, codi_quantize_row_q8_1_avx2, NULL, NULL, 32},
        {"quant q8_K", codi_quantize_row_q8_K_ref, codi_quantize_row_q8_K_avx2, NULL, NULL, 256},
        {"fp32->fp16", codi_quantize_row_f16_ref, codi_quantize_row_f16_avx2, NULL, NULL, 1},
        {"fp16->fp32", NULL, NULL, codi_dequantize_row_f16_ref, codi_dequantize_row_f16_avx2, 1},
    };
    for (size_t q = 0; q < sizeof qs / sizeof qs[0]; q++) {
        printf("%-12s", qs[q].name);
        for (size_t l = 0; l < 2; l++) {
            const int64_t n = lens[l];
            if (n % qs[q].blk) {
                printf(" %10s %10s %8s  ", "n/a", "n/a", "");
                continue;
            }
            const void *src = qs[q].ref || qs[q].avx2 ? (const void *)x : (const void *)h;
            void *dst = qs[q].ref || qs[q].avx2 ? (void *)buf : (void *)y;
            const double tr = time_row(qs[q].ref, qs[q].tref, src, dst, n);
            const double ta = time_row(qs[q].avx2, qs[q].tavx2, src, dst, n);
            printf(" %10.1f %10.1f %7.1fx  ", tr, ta, tr / ta);
        }
        printf("\n");
    }
    return 0;
#endif
}
