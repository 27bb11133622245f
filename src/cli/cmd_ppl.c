/* codi ppl: perplexity the way llama-perplexity computes it — the text is
 * split into non-overlapping windows of n_ctx tokens; when the model adds BOS
 * the first token of each window is replaced by BOS; only the second half of
 * each window is scored (positions n_ctx/2 .. n_ctx-2 predicting the next
 * token).
 *
 * --kl-base FILE saves the next-token log-probabilities of every scored
 * position; --kl FILE compares this model's with them (mean KL(base||this),
 * its 99th percentile, same top token %). File layout, little endian:
 *   "CODIKL01" | u32 version=1 | u32 n_vocab | u32 n_ctx | u32 n_chunks |
 *   i32 tokens[n_chunks * n_ctx] |
 *   per scored position: f32 min, f32 scale, u16 q[n_vocab]
 *   (log p = min + q * scale). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static const char KL_MAGIC[8] = {'C', 'O', 'D', 'I', 'K', 'L', '0', '1'};

/* log-softmax of logits into lp; returns lp[target]. */
static double log_softmax(const float *logits, int32_t nv, float *lp) {
    float mx = logits[0];
    for (int32_t i = 1; i < nv; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    double sum = 0.0;
    for (int32_t i = 0; i < nv; i++)
        sum += exp((double)logits[i] - mx);
    const double lse = mx + log(sum);
    for (int32_t i = 0; i < nv; i++)
        lp[i] = (float)(logits[i] - lse);
    return lse;
}

static int argmax(const float *x, int32_t n) {
    int best = 0;
    for (int32_t i = 1; i < n; i++)
        if (x[i] > x[best])
            best = (int)i;
    return best;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

typedef struct {
    FILE *f;
    const char *path;
    uint16_t *q;
    float *lp;
} kl_io;

static int write_u32(FILE *f, uint32_t v) { return fwrite(&v, 4, 1, f) == 1 ? 0 : 1; }

static int read_exact(FILE *f, void *p, size_t n, const char *path) {
    if (fread(p, 1, n, f) != n) {
        fprintf(stderr, "codi: '%s' is truncated or unreadable\n", path);
        return 1;
    }
    return 0;
}

int cmd_ppl(const cli_opts *o) {
    if (!o->file) {
        fprintf(stderr, "codi: ppl needs a text file: -f FILE\n");
        return 2;
    }
    if (o->kl && o->kl_base) {
        fprintf(stderr, "codi: use either --kl-base or --kl, not both\n");
        return 2;
    }
    cli_opts oo = *o;
    if (!oo.n_ctx)
        oo.n_ctx = 512;
    const int32_t n_ctx = oo.n_ctx;
    if (n_ctx < 4) {
        fprintf(stderr, "codi: ppl needs a context of at least 4 tokens\n");
        return 2;
    }
    size_t len = 0;
    char *text = cli_read_file(o->file, &len);
    if (!text)
        return 1;
    codi_model *m;
    codi_context *c;
    int rc = cli_load(&oo, &m, &c);
    if (rc) {
        free(text);
        return rc;
    }
    rc = 1;
    int32_t n_tok = 0;
    int32_t *toks = cli_tokenize(m, text, len, true, false, &n_tok);
    float *lp = NULL, *blp = NULL;
    double *kls = NULL;
    kl_io io = {0};
    if (!toks)
        goto done;
    if (n_tok < 2 * n_ctx) {
        fprintf(stderr, "codi: need at least %d tokens for a context of %d, the text has %d\n",
                2 * n_ctx, n_ctx, n_tok);
        goto done;
    }
    int32_t n_chunks = n_tok / n_ctx;
    if (o->chunks > 0 && o->chunks < n_chunks)
        n_chunks = o->chunks;
    const int32_t nv = codi_model_n_vocab(m), first = n_ctx / 2;
    const int32_t per_chunk = n_ctx - 1 - first;
    const bool add_bos = codi_model_add_bos(m);
    lp = malloc((size_t)nv * sizeof(float));
    blp = malloc((size_t)nv * sizeof(float));
    io.q = malloc((size_t)nv * sizeof(uint16_t));
    kls = malloc((size_t)n_chunks * per_chunk * sizeof(double));
    if (!lp || !blp || !io.q || !kls) {
        fprintf(stderr, "codi: out of memory\n");
        goto done;
    }
    /* window tokens as evaluated (BOS substituted) */
    for (int32_t ch = 0; ch < n_chunks; ch++)
        if (add_bos)
            toks[(size_t)ch * n_ctx] = codi_token_bos(m);
    if (o->kl_base || o->kl) {
        io.path = o->kl_base ? o->kl_base : o->kl;
        io.f = fopen(io.path, o->kl_base ? "wb" : "rb");
        if (!io.f) {
            fprintf(stderr, "codi: cannot open '%s': %s\n", io.path, strerror(errno));
            goto done;
        }
        if (o->kl_base) {
            if (fwrite(KL_MAGIC, 8, 1, io.f) != 1 || write_u32(io.f, 1) || write_u32(io.f, (uint32_t)nv) ||
                write_u32(io.f, (uint32_t)n_ctx) || write_u32(io.f, (uint32_t)n_chunks) ||
                fwrite(toks, sizeof(int32_t), (size_t)n_chunks * n_ctx, io.f) != (size_t)n_chunks * n_ctx) {
                fprintf(stderr, "codi: cannot write '%s'\n", io.path);
                goto done;
            }
        } else {
            char magic[8];
            uint32_t hdr[4];
            if (read_exact(io.f, magic, 8, io.path) || read_exact(io.f, hdr, sizeof(hdr), io.path))
                goto done;
            if (memcmp(magic, KL_MAGIC, 8) != 0 || hdr[0] != 1) {
                fprintf(stderr, "codi: '%s' is not a codi --kl-base file\n", io.path);
                goto done;
            }
            if (hdr[1] != (uint32_t)nv || hdr[2] != (uint32_t)n_ctx || hdr[3] < (uint32_t)n_chunks) {
                fprintf(stderr, "codi: '%s' was made with vocab %u, context %u, %u windows; "
                                "this run has vocab %d, context %d, %d windows\n",
                        io.path, hdr[1], hdr[2], hdr[3], nv, n_ctx, n_chunks);
                goto done;
            }
            /* The whole file must be there before any window is evaluated. */
            const long long per_win = (long long)n_ctx * 4 +
                                      (long long)(n_ctx - 1 - first) * (8 + 2 * (long long)nv);
            const long long want = 24 + (long long)hdr[3] * per_win;
            long long have = -1;
            if (fseeko(io.f, 0, SEEK_END) == 0)
                have = (long long)ftello(io.f);
            if (have != want || fseeko(io.f, 24, SEEK_SET) != 0) {
                fprintf(stderr, "codi: '%s' is truncated or has extra data (%lld bytes, expected %lld)\n",
                        io.path, have, want);
                goto done;
            }
            /* tokens must match */
            for (int64_t i = 0; i < (int64_t)hdr[3] * n_ctx; i++) {
                int32_t t;
                if (read_exact(io.f, &t, 4, io.path))
                    goto done;
                if (i < (int64_t)n_chunks * n_ctx && t != toks[i]) {
                    fprintf(stderr, "codi: '%s' was made from a different text (token %lld differs)\n",
                            io.path, (long long)i);
                    goto done;
                }
            }
        }
    }

    double nll = 0.0;
    int64_t count = 0, same_top = 0, n_kl = 0;
    double kl_sum = 0.0;
    char err[512];
    double t0 = cli_now();
    for (int32_t ch = 0; ch < n_chunks; ch++) {
        const int32_t *w = toks + (size_t)ch * n_ctx;
        if (codi_decode(c, w, n_ctx, 0, true, err, sizeof(err))) {
            fprintf(stderr, "codi: %s\n", err);
            goto done;
        }
        for (int32_t j = first; j < n_ctx - 1; j++) {
            log_softmax(codi_get_logits(c, j), nv, lp);
            nll -= lp[w[j + 1]];
            count++;
            if (o->kl_base) {
                float mn = 0.0f;
                for (int32_t i = 0; i < nv; i++)
                    mn = lp[i] < mn ? lp[i] : mn;
                mn = mn < -1e30f ? -1e30f : mn;
                float scale = -mn / 65535.0f;
                if (!(scale > 0.0f))
                    scale = 1.0f;
                for (int32_t i = 0; i < nv; i++) {
                    float qv = (lp[i] - mn) / scale;
                    qv = qv < 0.0f ? 0.0f : (qv > 65535.0f ? 65535.0f : qv);
                    io.q[i] = (uint16_t)lrintf(qv);
                }
                if (fwrite(&mn, 4, 1, io.f) != 1 || fwrite(&scale, 4, 1, io.f) != 1 ||
                    fwrite(io.q, 2, (size_t)nv, io.f) != (size_t)nv) {
                    fprintf(stderr, "codi: cannot write '%s'\n", io.path);
                    goto done;
                }
            } else if (o->kl) {
                float mn, scale;
                if (read_exact(io.f, &mn, 4, io.path) || read_exact(io.f, &scale, 4, io.path) ||
                    read_exact(io.f, io.q, 2 * (size_t)nv, io.path))
                    goto done;
                double kl = 0.0;
                for (int32_t i = 0; i < nv; i++) {
                    blp[i] = mn + io.q[i] * scale;
                    const double pb = exp((double)blp[i]);
                    kl += pb * ((double)blp[i] - lp[i]);
                }
                /* Quantized storage of the base can make a KL of ~0 come out
                 * slightly negative: clamp per position. */
                kl = kl < 0.0 ? 0.0 : kl;
                kls[n_kl++] = kl;
                kl_sum += kl;
                same_top += argmax(blp, nv) == argmax(lp, nv);
            }
        }
        fprintf(stderr, "[%d]%.4f%s", ch + 1, exp(nll / (double)count), ch + 1 == n_chunks ? "\n" : ",");
    }
    double dt = cli_now() - t0;
    fprintf(stderr, "evaluated %d windows of %d tokens in %.2f s (%.1f tokens/s)\n", n_chunks,
            n_ctx, dt, (double)n_chunks * n_ctx / dt);
    if (o->kl && n_kl > 0) {
        qsort(kls, (size_t)n_kl, sizeof(double), cmp_double);
        int64_t k99 = (int64_t)ceil(0.99 * (double)n_kl) - 1;
        printf("kl mean: %.6f\nkl p99: %.6f\nsame top: %.2f%%\n", kl_sum / (double)n_kl,
               kls[k99 < 0 ? 0 : k99], 100.0 * (double)same_top / (double)n_kl);
    }
    printf("ppl: %.4f\n", exp(nll / (double)count));
    rc = 0;
done:
    if (io.f && fclose(io.f) != 0 && rc == 0 && o->kl_base) {
        fprintf(stderr, "codi: cannot write '%s'\n", io.path);
        rc = 1;
    }
    free(io.q);
    free(kls);
    free(lp);
    free(blp);
    free(toks);
    free(text);
    codi_context_free(c);
    codi_model_free(m);
    return rc;
}
