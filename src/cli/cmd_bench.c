/* codi bench: prompt processing (pp) and token generation (tg) speed, the
 * way llama-bench measures them: ppN = one batch of N tokens from an empty
 * cache; tgN = N tokens decoded one at a time from an empty cache. One
 * warm-up run per test, then -r counted runs; prints the median, standard
 * deviation and range of tokens/s as a markdown table, or with --json an
 * array of {"model", "type", "threads", "test", "tokens_per_s", "stdev",
 * "runs"} objects. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* The file's most common weight type among its 2-D tensors, by bytes. */
static void model_type(const char *path, char *out, size_t len) {
    snprintf(out, len, "?");
    char err[256];
    codi_file *f;
    if (codi_file_open(path, &f, err, sizeof(err)))
        return;
    struct {
        const char *name;
        uint64_t bytes;
    } seen[16];
    int ns = 0;
    for (int64_t i = 0; i < codi_file_n_tensors(f); i++) {
        codi_tensor_info ti;
        if (codi_file_tensor(f, i, &ti) || ti.n_dims < 2)
            continue;
        int k = 0;
        while (k < ns && strcmp(seen[k].name, ti.type_name))
            k++;
        if (k == ns) {
            if (ns == 16)
                continue;
            seen[ns].name = ti.type_name;
            seen[ns++].bytes = 0;
        }
        seen[k].bytes += ti.nbytes;
    }
    int best = -1;
    for (int k = 0; k < ns; k++)
        if (best < 0 || seen[k].bytes > seen[best].bytes)
            best = k;
    if (best >= 0)
        snprintf(out, len, "%s", seen[best].name);
    codi_file_close(f);
}

int cmd_bench(const cli_opts *o) {
    int32_t pp[16], tg[16];
    int npp = o->n_bench_pp, ntg = o->n_bench_tg;
    if (npp < 0) {
        npp = 1;
        pp[0] = 512;
    } else {
        memcpy(pp, o->bench_pp, sizeof(int32_t) * (size_t)npp);
    }
    if (ntg < 0) {
        ntg = 1;
        tg[0] = 128;
    } else {
        memcpy(tg, o->bench_tg, sizeof(int32_t) * (size_t)ntg);
    }
    const int32_t reps = o->reps > 0 ? o->reps : 5;
    int32_t nmax = 1, ppmax = 0;
    for (int i = 0; i < npp; i++) {
        nmax = pp[i] > nmax ? pp[i] : nmax;
        ppmax = pp[i] > ppmax ? pp[i] : ppmax;
    }
    for (int i = 0; i < ntg; i++)
        nmax = tg[i] > nmax ? tg[i] : nmax;
    cli_opts oo = *o;
    if (!oo.n_ctx)
        oo.n_ctx = nmax + 1;
    if (!oo.n_batch)
        oo.n_batch = ppmax > 0 ? ppmax : 512;
    codi_model *m;
    codi_context *c;
    int rc = cli_load(&oo, &m, &c);
    if (rc)
        return rc;
    if (nmax > codi_context_n_ctx(c)) {
        fprintf(stderr, "codi: a test of %d tokens does not fit the context of %d (raise -c)\n", nmax,
                codi_context_n_ctx(c));
        codi_context_free(c);
        codi_model_free(m);
        return 1;
    }
    int32_t *toks = malloc(sizeof(int32_t) * (size_t)nmax);
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
    const char *name = strrchr(o->model, '/') ? strrchr(o->model, '/') + 1 : o->model;
    char type[32];
    model_type(o->model, type, sizeof(type));
    const int threads = o->n_threads ? o->n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN);
    if (o->json) {
        printf("[");
    } else {
        printf("| model | type | size MiB | threads | test | t/s (median) | stdev | min | max |\n");
        printf("| ----- | ---- | -------: | ------: | ---- | -----------: | ----: | --: | --: |\n");
    }
    int first = 1;
    for (int k = 0; k < npp + ntg; k++) {
        const bool is_pp = k < npp;
        const int32_t n = is_pp ? pp[k] : tg[k - npp];
        if (n <= 0)
            continue;
        double w;
        if (run_once(c, toks, n, is_pp, &w)) /* warm-up */
            goto done;
        double mean = 0.0;
        for (int32_t r = 0; r < reps; r++) {
            if (run_once(c, toks, n, is_pp, &t[r]))
                goto done;
            mean += t[r] / reps;
        }
        double var = 0.0;
        for (int32_t r = 0; r < reps; r++)
            var += (t[r] - mean) * (t[r] - mean);
        const double sd = reps > 1 ? sqrt(var / (reps - 1)) : 0.0;
        qsort(t, (size_t)reps, sizeof(double), cmp_d);
        const double med = reps % 2 ? t[reps / 2] : 0.5 * (t[reps / 2 - 1] + t[reps / 2]);
        if (o->json) {
            printf("%s\n  {\"model\": \"", first ? "" : ",");
            for (const char *p = name; *p; p++) { /* file names: escape JSON specials */
                if (*p == '"' || *p == '\\')
                    putchar('\\');
                putchar((unsigned char)*p < 0x20 ? '?' : *p);
            }
            printf("\", \"type\": \"%s\", \"threads\": %d, \"test\": \"%s%d\", \"tokens_per_s\": %.3f, "
                   "\"stdev\": %.3f, \"runs\": %d}",
                   type, threads, is_pp ? "pp" : "tg", n, med, sd, reps);
        } else {
            printf("| %s | %s | %.1f | %d | %s%d | %.2f | %.2f | %.2f | %.2f |\n", name, type,
                   codi_model_size_bytes(m) / 1048576.0, threads, is_pp ? "pp" : "tg", n, med, sd,
                   t[0], t[reps - 1]);
        }
        first = 0;
        fflush(stdout);
    }
    if (o->json)
        printf("\n]\n");
    rc = 0;
done:
    free(toks);
    free(t);
    codi_context_free(c);
    codi_model_free(m);
    return rc;
}
