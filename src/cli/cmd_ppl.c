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
#include "kl_file.h"

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
            char kerr[512];
            if (kl_read_header(io.f, io.path, nv, n_ctx, n_chunks, toks, kerr, sizeof(kerr))) {
                fprintf(stderr, "codi: %s\n", kerr);
                goto done;
            }
        }
    }

    double nll = 0.0;
    int64_t count = 0, same_top = 0, n_kl = 0;
    double kl_sum = 0.0;
    char err[512];
    double t0 = cli_now();
    /* Each window goes in pieces of one batch (the passes a single call
     * would make), so only one batch of logits is held at a time: a
     * window of n_ctx tokens needs n_ctx * n_vocab floats otherwise
     * (8.6 GB for Gemma 3 at 8192). */
    const int32_t piece = o->n_batch > 0 ? o->n_batch : 512;
    for (int32_t ch = 0; ch < n_chunks; ch++) {
        const int32_t *w = toks + (size_t)ch * n_ctx;
        for (int32_t p0 = 0; p0 < n_ctx; p0 += piece) {
            const int32_t np = n_ctx - p0 < piece ? n_ctx - p0 : piece;
            const bool scored = p0 + np > first;
            if (codi_decode(c, w + p0, np, p0, scored, err, sizeof(err))) {
                fprintf(stderr, "codi: %s\n", err);
                goto done;
            }
            for (int32_t j = p0 > first ? p0 : first; scored && j < p0 + np && j < n_ctx - 1; j++) {
                log_softmax(codi_get_logits(c, j - p0), nv, lp);
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
                    if (kl_read_position(io.f, io.path, nv, io.q, blp, err, sizeof(err))) {
                        fprintf(stderr, "codi: %s\n", err);
                        goto done;
                    }
                    double kl = 0.0;
                    for (int32_t i = 0; i < nv; i++) {
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
        }
        fprintf(stderr, "[%d]%.4f%s", ch + 1, exp(nll / (double)count), ch + 1 == n_chunks ? "\n" : ",");
    }
    double dt = cli_now() - t0;
    fprintf(stderr, "evaluated %d windows of %d tokens in %.2f s (%.1f tokens/s)\n", n_chunks,
            n_ctx, dt, (double)n_chunks * n_ctx / dt);
    cli_print_memory(c, o->kv_type);
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
