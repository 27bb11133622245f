/* x8_bench.c - decode mat-vec speed of the x8 kernels (kernels/repack.h)
 * against one vec_dot per row, single thread, in GB/s of weights read.
 * Sizes: a matrix that fits L2 (the kernel's compute speed), and one of
 * MiB megabytes (the memory path: L3 or DRAM depending on the CPU).
 *
 *   cmake --build build && gcc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc \
 *       bench/x8_bench.c build/libcodi.a -lm -lpthread -lcjson \
 *       $(pkg-config --libs libmicrohttpd) -o build/x8_bench
 *   build/x8_bench [MiB]        (default 256)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "kernels/kernels.h"
#include "kernels/repack.h"
#include "tensor/types.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_d(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median GB/s of reps passes of y = W x over rows rows. */
static double run(int type, int64_t n, int64_t rows, const void *w, const void *xq, float *y, int x8,
                  int reps) {
    const size_t rb = codi_row_size(type, n);
    codi_vec_dot_fn dot = codi_kernel_vec_dot(type);
    codi_gemm_x8_fn g = codi_kernel_gemm_x8(type);
    double t[64];
    for (int r = 0; r < reps; r++) {
        const double t0 = now();
        if (x8)
            g(n, (int)(rows / CODI_X8_ROWS), w, 1, xq, 0, y, (size_t)rows);
        else
            for (int64_t i = 0; i < rows; i++)
                dot(n, &y[i], (const uint8_t *)w + (size_t)i * rb, xq);
        t[r] = now() - t0;
    }
    qsort(t, (size_t)reps, sizeof t[0], cmp_d);
    return (double)rows * (double)rb / t[reps / 2] * 1e-9;
}

/* Prefill tile: ns per token per block of 8 rows (32 in-features), nc
 * tokens, weights L2-resident. */
static double run_gemm(int type, int64_t n, int64_t rows, const void *w, const void *xq, size_t ldx,
                       int nc, float *y) {
    codi_gemm_x8_fn g = codi_kernel_gemm_x8(type);
    double t[31];
    for (int r = 0; r < 31; r++) {
        const double t0 = now();
        for (int k = 0; k < 20; k++)
            g(n, (int)(rows / CODI_X8_ROWS), w, nc, xq, ldx, y, (size_t)rows);
        t[r] = (now() - t0) / 20;
    }
    qsort(t, 31, sizeof t[0], cmp_d);
    return t[15] * 1e9 / ((double)nc * (double)(rows / CODI_X8_ROWS) * (double)(n / 32));
}

int main(int argc, char **argv) {
    const double mib = argc > 1 ? atof(argv[1]) : 256.0;
    const int types[] = {CODI_TYPE_Q4_0, CODI_TYPE_Q4_1, CODI_TYPE_Q8_0};
    const int64_t n = 2048;
    double gemm_ns[3] = {0};
    printf("| type | size | vec_dot GB/s | x8 GB/s | x8 / vec_dot |\n|---|---|---:|---:|---:|\n");
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++) {
        const int type = types[k];
        const codi_type_traits *t = codi_type_get(type);
        const size_t rb = codi_row_size(type, n);
        float *xf = malloc((size_t)n * sizeof *xf);
        void *xq = malloc(codi_row_size(t->vec_dot_type, n));
        for (int64_t i = 0; i < n; i++)
            xf[i] = (float)((i * 7919) % 201 - 100) * 0.01f;
        codi_kernel_from_float(t->vec_dot_type)(xf, xq, n);
        const double sizes[2] = {1.0, mib};
        for (int s = 0; s < 2; s++) {
            const int64_t rows = ((int64_t)(sizes[s] * 1048576.0 / (double)rb) / 64 + 1) * 64;
            uint8_t *w = malloc((size_t)rows * rb), *wp = NULL;
            if (posix_memalign((void **)&wp, 1 << 21, (size_t)rows * rb) != 0)
                return 1;
            if (getenv("X8_HUGE"))
                madvise(wp, (size_t)rows * rb, MADV_HUGEPAGE);
            float *y = malloc((size_t)rows * sizeof *y);
            for (int64_t i = 0; i < rows; i++) {
                t->from_float(xf, w + (size_t)i * rb, n);
                w[(size_t)i * rb + 5] ^= (uint8_t)i; /* rows differ */
            }
            for (int64_t g = 0; g < rows / CODI_X8_ROWS; g++)
                codi_x8_pack_group(type, n, w + (size_t)g * CODI_X8_ROWS * rb, rb,
                                   wp + (size_t)g * CODI_X8_ROWS * rb);
            const int reps = s == 0 ? 51 : 9;
            const double a = run(type, n, rows, w, xq, y, 0, reps);
            const double b = run(type, n, rows, wp, xq, y, 1, reps);
            printf("| %s | %.0f MiB | %.1f | %.1f | %.2f |\n", t->name, sizes[s], a, b, b / a);
            if (s == 0) {
                enum { NC = 16 };
                const size_t ldx = codi_row_size(t->vec_dot_type, n);
                uint8_t *xs = malloc(NC * ldx);
                float *ys = malloc((size_t)rows * NC * sizeof *ys);
                for (int c = 0; c < NC; c++)
                    memcpy(xs + (size_t)c * ldx, xq, ldx);
                gemm_ns[k] = run_gemm(type, n, rows, wp, xs, ldx, NC, ys);
                free(xs);
                free(ys);
            }
            free(w);
            free(wp);
            free(y);
        }
        free(xf);
        free(xq);
    }
    for (size_t k = 0; k < sizeof types / sizeof types[0]; k++)
        printf("%s prefill tile: %.2f ns per token per 8-row block\n", codi_type_get(types[k])->name,
               gemm_ns[k]);
    return 0;
}
