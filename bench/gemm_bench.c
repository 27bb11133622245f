/* gemm_bench.c - the prefill GEMM and decode mat-vec kernels, one thread,
 * in thread CPU time (robust on a shared machine): ns per weight row for a
 * 576 x 1536 (ffn_down-like) and 1536 x 576 weight, nc = 1 (decode) and
 * nc = 64 tokens (a prefill chunk), tiled kernel vs one vec_dot per pair.
 * Weights ~0.5-1 MiB: L2-resident, so this measures the kernels.
 *
 *   cmake --build build && gcc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc \
 *       bench/gemm_bench.c build/libcodi.a -lm -lpthread -o build/gemm_bench
 *   build/gemm_bench
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "tensor/types.h"

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(void) {
    static const int types[] = {CODI_TYPE_Q4_0, CODI_TYPE_Q4_1, CODI_TYPE_Q8_0};
    static const int shapes[][2] = {{1536, 576}, {576, 1536}}; /* rows, n */
    uint64_t s = 88172645463325252ull;
    printf("| type | rows x n | tokens | tiled ns/row/token | vec_dot ns/row/token | speed-up |\n");
    printf("| ---- | -------- | -----: | -----------------: | -------------------: | -------: |\n");
    for (size_t ti = 0; ti < sizeof types / sizeof types[0]; ti++) {
        const codi_type_traits *t = codi_type_get(types[ti]);
        for (size_t si = 0; si < 2; si++) {
            const int nr = shapes[si][0];
            const int64_t n = shapes[si][1];
            const size_t ldw = codi_row_size(types[ti], n), ldx = codi_row_size(t->vec_dot_type, n);
            float *f = malloc(sizeof(float) * (size_t)n);
            uint8_t *w = malloc(ldw * (size_t)nr), *x = malloc(ldx * 64);
            float *y = malloc(sizeof(float) * (size_t)nr * 64);
            for (int r = 0; r < nr; r++) {
                for (int64_t i = 0; i < n; i++) {
                    s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                    f[i] = (float)((int64_t)(s % 2001) - 1000) * 1e-4f;
                }
                t->from_float(f, w + (size_t)r * ldw, n);
            }
            for (int c = 0; c < 64; c++)
                codi_kernel_from_float(t->vec_dot_type)(f, x + (size_t)c * ldx, n);
            const int ncs[2] = {1, 64};
            for (int k = 0; k < 2; k++) {
                const int nc = ncs[k];
                double best[2] = {1e30, 1e30};
                for (int rep = 0; rep < 5; rep++)
                    for (int v = 0; v < 2; v++) {
                        int iters = 0;
                        const double t0 = cpu_now();
                        double dt;
                        do {
                            if (v == 0)
                                codi_kernel_gemm(types[ti])(n, nr, nc, w, ldw, x, ldx, y, (size_t)nr);
                            else
                                codi_gemm_generic(codi_kernel_vec_dot(types[ti]), n, nr, nc, w, ldw, x, ldx,
                                                  y, (size_t)nr);
                            iters++;
                        } while ((dt = cpu_now() - t0) < 0.02);
                        const double ns = dt * 1e9 / iters / nr / nc;
                        if (ns < best[v])
                            best[v] = ns;
                    }
                printf("| %s | %d x %lld | %d | %.2f | %.2f | %.2fx |\n", t->name, nr, (long long)n, nc, best[0],
                       best[1], best[1] / best[0]);
            }
            free(f);
            free(w);
            free(x);
            free(y);
        }
    }
    return 0;
}
