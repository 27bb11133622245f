/* batch_decode.c - what continuous batching buys: decode steps of B
 * sequences at once (one token each, logits for each: what codi serve's
 * worker runs while B streams generate) through codi_decode_batch, B = 1, 2,
 * 4, 8, 16. Reports wall and process CPU time per step and tokens per CPU
 * second; with -t 1 the CPU figures are robust on a shared machine. The
 * ratio "tok/cpu-s vs B=1" is the most aggregate speed-up B parallel
 * streams can get from one core.
 *
 *   cmake --build build && gcc -O2 -std=c11 -D_GNU_SOURCE -Iinclude \
 *       bench/batch_decode.c build/libcodi.a -lm -lpthread -lcjson \
 *       $(pkg-config --libs libmicrohttpd) -o build/batch_decode
 *   build/batch_decode models/SmolLM2-135M-Instruct.Q4_1.gguf [THREADS] [STEPS] [B]
 *
 * With B given, only that batch size runs (for profiles and A/B pairs).
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "codi.h"

static double clock_s(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL [THREADS] [STEPS] [B]\n", argv[0]);
        return 2;
    }
    const int threads = argc > 2 ? atoi(argv[2]) : 1, steps = argc > 3 ? atoi(argv[3]) : 48;
    const int only = argc > 4 ? atoi(argv[4]) : 0;
    char err[256];
    codi_model *m;
    if (codi_model_load(argv[1], NULL, &m, err, sizeof(err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    enum { BMAX = 16 };
    static const int Bs[] = {1, 2, 4, 8, 16};
    double base = 0;
    printf("| B | ms/step (wall) | ms/step (cpu) | tok/s (wall) | tok/cpu-s | tok/cpu-s vs B=1 |\n");
    printf("|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < sizeof(Bs) / sizeof(Bs[0]); k++) {
        const int B = Bs[k];
        if (only > 0 && B != only)
            continue;
        codi_context_params p = codi_context_default_params();
        p.n_ctx = 256;
        p.n_seq = B;
        p.n_threads = threads;
        codi_context *c;
        if (codi_context_create(m, &p, &c, err, sizeof(err))) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        int32_t tok[BMAX], pos[BMAX], seq[BMAX];
        bool keep[BMAX];
        for (int i = 0; i < B; i++) {
            tok[i] = 100 + 7 * i;
            seq[i] = i;
            keep[i] = true;
        }
        double w0 = 0, c0 = 0;
        for (int s = 0; s < steps + 4; s++) {
            if (s == 4) { /* 4 warm-up steps */
                w0 = clock_s(CLOCK_MONOTONIC);
                c0 = clock_s(CLOCK_PROCESS_CPUTIME_ID);
            }
            for (int i = 0; i < B; i++)
                pos[i] = s;
            codi_batch b = {B, tok, pos, seq, keep};
            if (codi_decode_batch(c, &b, err, sizeof(err))) {
                fprintf(stderr, "%s\n", err);
                return 1;
            }
            for (int i = 0; i < B; i++) { /* feed back the argmax: a real step */
                const float *lg = codi_get_logits(c, i);
                int32_t best = 0;
                for (int32_t v = 1; v < codi_model_n_vocab(m); v++)
                    if (lg[v] > lg[best])
                        best = v;
                tok[i] = best;
            }
        }
        const double wall = clock_s(CLOCK_MONOTONIC) - w0, cpu = clock_s(CLOCK_PROCESS_CPUTIME_ID) - c0;
        const double tpc = steps * B / cpu;
        if (B == 1)
            base = tpc;
        printf("| %d | %.2f | %.2f | %.1f | %.1f | %.2fx |\n", B, 1e3 * wall / steps, 1e3 * cpu / steps,
               steps * B / wall, tpc, base > 0 ? tpc / base : 0.0);
        codi_context_free(c);
    }
    codi_model_free(m);
    return 0;
}
