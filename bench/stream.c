/* stream.c - read bandwidth of this machine, the ceiling of token
 * generation (tg <= bandwidth / bytes of weights read per token).
 *
 * Each of T threads (default 2) sums its own slice of a buffer far larger
 * than the caches (default 1 GiB) with AVX2 loads, like a matrix-vector
 * kernel streams weights; the buffer is touched once before timing. Prints
 * the median and best of R passes (default 9) in GB/s (10^9 bytes/s).
 *
 *   gcc -O2 -mavx2 -pthread bench/stream.c -o build/stream
 *   build/stream [threads] [MiB] [passes]
 */
#include <immintrin.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    const float *p;
    size_t n;
    pthread_barrier_t *bar;
    float sink;
} slice;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *reader(void *v) {
    slice *s = v;
    pthread_barrier_wait(s->bar);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 32 <= s->n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_load_ps(s->p + i));
        a1 = _mm256_add_ps(a1, _mm256_load_ps(s->p + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_load_ps(s->p + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_load_ps(s->p + i + 24));
    }
    float out[8];
    _mm256_storeu_ps(out, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    s->sink = out[0] + out[7];
    return NULL;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const int T = argc > 1 ? atoi(argv[1]) : 2;
    const size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    const int R = argc > 3 ? atoi(argv[3]) : 9;
    if (T < 1 || T > 64 || mib < 1 || R < 1 || R > 1000) {
        fprintf(stderr, "usage: stream [threads 1..64] [MiB] [passes]\n");
        return 2;
    }
    const size_t bytes = mib << 20, n = bytes / sizeof(float);
    float *buf = aligned_alloc(64, bytes);
    if (!buf) {
        fprintf(stderr, "stream: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    for (size_t i = 0; i < n; i++)
        buf[i] = (float)(i & 1023);
    double *gbs = malloc(sizeof(double) * (size_t)R);
    float sink = 0.0f;
    for (int r = 0; r < R; r++) {
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, (unsigned)T + 1);
        pthread_t th[64];
        slice sl[64];
        const size_t per = (n / (size_t)T) & ~(size_t)31;
        for (int t = 0; t < T; t++) {
            sl[t] = (slice){buf + (size_t)t * per, per, &bar, 0.0f};
            pthread_create(&th[t], NULL, reader, &sl[t]);
        }
        const double t0 = now();
        pthread_barrier_wait(&bar);
        for (int t = 0; t < T; t++) {
            pthread_join(th[t], NULL);
            sink += sl[t].sink;
        }
        const double dt = now() - t0;
        gbs[r] = (double)per * (double)T * sizeof(float) / dt / 1e9;
        pthread_barrier_destroy(&bar);
    }
    qsort(gbs, (size_t)R, sizeof(double), cmp);
    printf("read bandwidth, %d threads, %zu MiB buffer, %d passes: median %.2f GB/s, best %.2f GB/s (sink %g)\n",
           T, mib, R, gbs[R / 2], gbs[R - 1], (double)sink);
    free(gbs);
    free(buf);
    return 0;
}
