/* codi bench: prompt processing (pp) and token generation (tg) speed, the
 * way llama-bench measures them: pp = one batch of N tokens from an empty
 * cache; tg = N tokens decoded one at a time from an empty cache. One warm-up
 * run, then -r counted runs; prints the median and min/max tokens/s. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int run_once(codi_context *c, const int32_t *toks, int32_t n, bool pp, double *tps) {
    char err[512];
    codi_kv_truncate(c, 0);
    double t0 = cli_now();
    if (pp) {
        if (codi_decode(c, toks, n, 0, false, err, sizeof(err))) {
            fprintf(stderr, "codi: %s\n", err);
            return 1;
        }
    } else {
        for (int32_t i = 0; i < n; i++)
            if (codi_decode(c, &toks[i], 1, i, false, err, sizeof(err))) {
                fprintf(stderr, "codi: %s\n", err);
                return 1;
            }
    }
    *tps = n / (cli_now() - t0);
    return 0;
}

int cmd_bench(const cli_opts *o) {
    const int32_t n_pp = o->n_prompt >= 0 ? o->n_prompt : 512;
    const int32_t n_tg = o->n_predict >= 0 ? o->n_predict : 128;
    const int32_t reps = o->reps > 0 ? o->reps : 5;
    cli_opts oo = *o;
    if (!oo.n_ctx)
        oo.n_ctx = (n_pp > n_tg ? n_pp : n_tg) + 1;
    if (!oo.n_batch)
        oo.n_batch = n_pp > 0 ? n_pp : 512;
    codi_model *m;
    codi_context *c;
    int rc = cli_load(&oo, &m, &c);
    if (rc)
        return rc;
    const int32_t nmax = n_pp > n_tg ? n_pp : n_tg;
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)(nmax > 0 ? nmax : 1));
    double *t = malloc(sizeof(double) * (size_t)reps);
    rc = 1;
    if (!toks || !t) {
        fprintf(stderr, "codi: out of memory\n");
        goto done;
    }
    /* deterministic pseudo-random tokens (speed does not depend on them) */
    uint64_t s = 0x9E3779B97F4A7C15ull ^ o->sp.seed;
    const int32_t nv = codi_model_n_vocab(m);
    for (int32_t i = 0; i < nmax; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        toks[i] = (int32_t)(s % (uint64_t)nv);
    }
    printf("| model | size MiB | threads | test | t/s (median) | min | max |\n");
    printf("| ----- | -------: | ------: | ---- | -----------: | --: | --: |\n");
    const char *name = strrchr(o->model, '/') ? strrchr(o->model, '/') + 1 : o->model;
    for (int pass = 0; pass < 2; pass++) {
        const bool pp = pass == 0;
        const int32_t n = pp ? n_pp : n_tg;
        if (n <= 0)
            continue;
        double w;
        if (run_once(c, toks, n, pp, &w)) /* warm-up */
            goto done;
        for (int32_t r = 0; r < reps; r++)
            if (run_once(c, toks, n, pp, &t[r]))
                goto done;
        qsort(t, (size_t)reps, sizeof(double), cmp_d);
        const double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
        printf("| %s | %.1f | %d | %s%d | %.2f | %.2f | %.2f |\n", name,
               codi_model_size_bytes(m) / 1048576.0, o->n_threads ? o->n_threads : 0,
               pp ? "pp" : "tg", n, med, t[0], t[reps - 1]);
        fflush(stdout);
    }
    rc = 0;
done:
    free(toks);
    free(t);
    codi_context_free(c);
    codi_model_free(m);
    return rc;
}
