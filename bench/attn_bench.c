/* attn_bench.c - prefill attention of one KV head, single thread: the rows
 * path of forward.c's attn_tile_f16 (scores of kv_cap per row, softmax,
 * fp16 weights, values) against codi_attn_online_f16 (blocks of keys,
 * online softmax), on the causal sweep of the last 512 queries of a
 * context of L tokens in tiles of 4 tokens x 3 heads (SmolLM2: head_dim
 * 64, 3 query heads per KV head), as the last pass of a prefill of L
 * tokens with -b 512 sees it.
 *
 *   cmake --build build && gcc -O2 -std=c11 -D_GNU_SOURCE -Iinclude -Isrc \
 *       bench/attn_bench.c build/libcodi.a -lm -lpthread -lcjson \
 *       $(pkg-config --libs libmicrohttpd) -o build/attn_bench
 *   build/attn_bench [L...]     (default 512 2048)
 *
 * Thread CPU time, best of 7 sweeps: less disturbed by a busy machine
 * than wall time. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kernels/kernels.h"

#ifndef TILE
#define TILE 4
#endif
enum { HD = 64, G = 3, T = TILE, M = T * G, PASS = 512 };

static double cpu_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float rnd(void) {
    static uint64_t s = 0x9E3779B97F4A7C15ull;
    s ^= s << 13;
    s ^= s >> 7;
    s ^= s << 17;
    return (float)((double)(s >> 11) * 0x1.0p-53 * 2.0 - 1.0);
}

int main(int argc, char **argv) {
    int lens[8] = {512, 2048}, n_lens = 2;
    if (argc > 1) {
        n_lens = 0;
        for (int i = 1; i < argc && n_lens < 8; i++)
            lens[n_lens++] = atoi(argv[i]);
    }
    printf("| context | queries | rows path ms | online ms | online / rows |\n");
    printf("| ------: | ------: | -----------: | --------: | ------------: |\n");
    for (int li = 0; li < n_lens; li++) {
        const int L = lens[li], first = L > PASS ? L - PASS : 0;
        const size_t cap = (size_t)L;
        uint16_t *kT = malloc(HD * cap * sizeof(uint16_t)), *vT = malloc(HD * cap * sizeof(uint16_t));
        uint16_t *p16 = malloc(M * cap * sizeof(uint16_t));
        float *sc = malloc(M * cap * sizeof(float)), *q = malloc(M * HD * sizeof(float));
        float *out = malloc(M * HD * sizeof(float));
        if (!kT || !vT || !p16 || !sc || !q || !out)
            return 1;
        for (size_t i = 0; i < HD * cap; i++) {
            kT[i] = codi_fp32_to_fp16(rnd());
            vT[i] = codi_fp32_to_fp16(rnd());
        }
        for (int i = 0; i < M * HD; i++)
            q[i] = codi_fp16_to_fp32(codi_fp32_to_fp16(rnd()));
        float *o[M];
        for (int j = 0; j < M; j++)
            o[j] = out + j * HD;
        double best[2] = {1e30, 1e30};
        float sink = 0.0f;
        for (int rep = 0; rep < 7; rep++)
            for (int path = 0; path < 2; path++) {
                const double t0 = cpu_now();
                for (int b0 = first; b0 < L; b0 += T) {
                    int n[M], nmax = 0;
                    for (int r = 0; r < T; r++)
                        for (int g = 0; g < G; g++)
                            n[r * G + g] = b0 + r + 1 < L ? b0 + r + 1 : L;
                    for (int j = 0; j < M; j++)
                        nmax = n[j] > nmax ? n[j] : nmax;
                    if (path == 0) {
                        codi_attn_scores_f16(q, M, HD, kT, cap, nmax, sc, cap, 0.125f);
                        for (int j = 0; j < M; j++) {
                            float *sj = sc + (size_t)j * cap;
                            codi_softmax_inplace(sj, n[j]);
                            codi_fp32_to_fp16_row(sj, p16 + (size_t)j * cap, n[j]);
                            codi_fp16_to_fp32_row(p16 + (size_t)j * cap, sj, n[j]);
                        }
                        codi_attn_values_f16(sc, cap, n, M, vT, cap, HD, o);
                    } else {
                        codi_attn_online_f16(q, M, HD, n, kT, cap, vT, cap, 0.125f, o);
                    }
                    sink += out[0];
                }
                const double dt = cpu_now() - t0;
                best[path] = dt < best[path] ? dt : best[path];
            }
        printf("| %d | %d | %.2f | %.2f | %.2f |%s\n", L, L - first, best[0] * 1e3, best[1] * 1e3,
               best[1] / best[0], sink == 12345.0f ? " " : "");
        free(kT);
        free(vT);
        free(p16);
        free(sc);
        free(q);
        free(out);
    }
    return 0;
}
