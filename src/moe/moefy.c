/* codi moefy: a dense llama model's FFNs refactored into a Mixtral-style
 * mixture of experts (Read-ME / MoEfication, issue 5 section 3).
 *
 * Three passes of the dense model over text, watched through the matmul
 * observer (model.h):
 *   1. features: per layer, |h_j| of every FFN neuron j (h = silu(gate x) *
 *      up x, the input of ffn_down) on up to NF calibration tokens;
 *      balanced k-means (cosine, equal clusters of n_ff/E) groups neurons
 *      that fire together into experts.
 *   2. router fit: per layer, ridge least squares from the FFN input x (or,
 *      decoupled, layer 0's FFN input) to each expert's share of the FFN
 *      output, t_e = sum_{j in e} |h_j| ||down[:, j]|| / sum over all
 *      experts (closed form, Cholesky in double).
 *   3. accuracy: top-K of each router against the oracle top-K (by t) on
 *      the evaluation text.
 *
 * Exact mapping. The dense FFN output is the unweighted sum of the
 * experts' partial outputs: down h = sum_e down[:, e] h_e. The runtime
 * (Mixtral routing) returns sum_{k in topK} w_k down_k(h_k) with w =
 * softmax(router x) renormalised over the top K, so w_k = 1/K exactly
 * only when the selected logits are equal. Top-K selection depends only
 * on the order of the logits, so the router is scaled down until the
 * logits of a token differ by ~1e-4 (softmax is then uniform to ~1e-4
 * while the order, and so the selection, is unchanged), and each expert's
 * down matrix is multiplied by K: the output is sum of the K selected
 * partial outputs, and with K = E exactly the dense FFN. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codi.h"
#include "common.h"
#include "gguf.h"
#include "gguf_write.h"
#include "model/model.h"
#include "tensor/types.h"

#define NF_MAX 1024     /* calibration tokens per neuron feature */
#define KM_ITERS 25
#define SPREAD 1e-4     /* target logit spread of a token after scaling */

/* Built-in calibration text when the caller gives none: short, so real
 * runs should pass --calib (bench/data/licenses.txt). */
static const char BUILTIN_CALIB[] =
    "The old harbour town wakes slowly. Before six the bakers have already lit their ovens, and the "
    "smell of bread drifts down the narrow streets towards the water, where fishing boats rock against "
    "the stone quay. By eight the market square is full: farmers unload crates of apples, cabbages and "
    "late tomatoes, a man sells knives and scissors from a folding table, and children run between the "
    "stalls on their way to school.\n\n"
    "How does a small engine decide what to keep in memory? It measures. Every design choice has a cost "
    "in bytes and a cost in time, and the only honest way to compare them is to run both on the same "
    "machine, with the same input, and to report the median of several runs together with the spread.\n\n"
    "def mean(xs):\n    total = 0\n    for x in xs:\n        total += x\n    return total / len(xs)\n\n"
    "In 1969 the first message was sent between two computers more than three hundred miles apart. The "
    "system crashed after the second letter, but within a few years the network connected dozens of "
    "universities. Historians still debate which decisions mattered most: open standards, cheap "
    "hardware, or the stubborn curiosity of a few thousand engineers.\n\n"
    "Q: What is the capital of Australia?\nA: Canberra.\nQ: Why is the sky blue?\nA: Air scatters short "
    "wavelengths of sunlight more strongly than long ones.\nQ: What is 12 times 7?\nA: 84.\n";

codi_moefy_params codi_moefy_default_params(void) {
    codi_moefy_params p;
    memset(&p, 0, sizeof(p));
    p.n_expert = 8;
    p.n_expert_used = 2;
    p.router = CODI_MOEFY_ROUTER_LAYER;
    p.expert_type = -1;
    p.seed = 1234;
    return p;
}

typedef struct mstate {
    const codi_model *m;
    int phase;        /* 1 features, 2 fit, 3 evaluate */
    int E, K, fe, d, ff, L;
    int S, fr;        /* shared neurons (in every expert), routed neurons per expert; fe = S + fr */
    int64_t tok0;     /* global row of the pass's first token */
    int64_t n_rows;   /* rows seen in the phase */
    /* phase 1 */
    int32_t nf, stride;
    float act_frac;   /* co-activation features: share of neurons active per token; >= 1: raw |h| */
    float *tmp;       /* [ff] */
    float *feat;      /* [L][ff][nf] */
    float *dn;        /* [L][ff] column norms of ffn_down */
    double *imp;      /* [L][ff] sum over tokens of |h_j| ||down_j|| */
    int32_t *clus;    /* [L][ff] expert of neuron j, -1 shared */
    /* phase 2 */
    float *xb, *x0;   /* [B][d] this layer's / layer 0's FFN inputs */
    int xb_layer;
    double *xtx;      /* [L][d][d] (upper triangle) */
    float *gram;      /* [d][d] scratch */
    double *xtt, *x0tt; /* [L][d][E] */
    float *tg;        /* [B][E] targets */
    /* routers [L][E][d] */
    float *r_layer, *r_dec;
    /* phase 3 */
    double *acc;      /* [L][7] sums: match oracle/layer, dec, dec-vs-layer, masses */
    float *spread;    /* [L][n_eval] logit spread of the written router */
    int64_t n_spread_cap;
    bool decoupled;
} mstate;

static int layer_of(const mstate *s, const codi_weight *w, int *kind) {
    for (int l = 0; l < s->L; l++) {
        if (w == &s->m->layers[l].w_gate) {
            *kind = 0;
            return l;
        }
        if (w == &s->m->layers[l].w_down) {
            *kind = 1;
            return l;
        }
    }
    return -1;
}

/* t_e = share of expert e in sum_j |h_j| ||down_j|| */
static void targets(const mstate *s, int l, const float *h, float *t) {
    const float *dn = s->dn + (size_t)l * s->ff;
    const int32_t *cl = s->clus + (size_t)l * s->ff;
    for (int e = 0; e < s->E; e++)
        t[e] = 0.0f;
    double tot = 0.0;
    for (int j = 0; j < s->ff; j++) {
        if (cl[j] < 0)
            continue;
        const float v = fabsf(h[j]) * dn[j];
        t[cl[j]] += v;
        tot += v;
    }
    const float inv = tot > 0.0 ? (float)(1.0 / tot) : 0.0f;
    for (int e = 0; e < s->E; e++)
        t[e] *= inv;
}

/* indices of the K largest of v[0..E) into out (ties: lower index) */
static void topk(const float *v, int E, int K, int *out) {
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int q = 0; q < k; q++)
                taken |= out[q] == e;
            if (!taken && (best < 0 || v[e] > v[best]))
                best = e;
        }
        out[k] = best;
    }
}

static int overlap(const int *a, const int *b, int K) {
    int n = 0;
    for (int i = 0; i < K; i++)
        for (int j = 0; j < K; j++)
            n += a[i] == b[j];
    return n;
}

static void scores(const float *r, const float *x, int E, int d, float *out) {
    for (int e = 0; e < E; e++) {
        float acc = 0.0f;
        const float *re = r + (size_t)e * d;
        for (int i = 0; i < d; i++)
            acc += re[i] * x[i];
        out[e] = acc;
    }
}

/* the k-th largest of v[0..n) (v is reordered) */
static float kth_largest(float *v, int n, int k) {
    int lo = 0, hi = n - 1;
    const int want = k - 1;
    while (lo < hi) {
        const float piv = v[(lo + hi) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (v[i] > piv)
                i++;
            while (v[j] < piv)
                j--;
            if (i <= j) {
                const float t = v[i];
                v[i] = v[j];
                v[j] = t;
                i++, j--;
            }
        }
        if (want <= j)
            hi = j;
        else if (want >= i)
            lo = i;
        else
            break;
    }
    return v[want];
}

static void observe(void *user, const codi_weight *w, const float *x, int B, int64_t n_in) {
    mstate *s = user;
    int kind = 0;
    const int l = layer_of(s, w, &kind);
    if (l < 0)
        return;
    const int d = s->d, ff = s->ff, E = s->E, K = s->K;
    (void)n_in;
    if (s->phase == 1) {
        if (kind != 1)
            return;
        float *F = s->feat + (size_t)l * ff * s->nf;
        const float *dn = s->dn + (size_t)l * ff;
        double *imp = s->imp + (size_t)l * ff;
        for (int b = 0; b < B; b++) {
            const float *hb = x + (size_t)b * ff;
            for (int j = 0; j < ff; j++)
                imp[j] += fabsf(hb[j]) * dn[j];
        }
        for (int b = 0; b < B; b++) {
            const int64_t g = s->tok0 + b;
            if (g % s->stride || g / s->stride >= s->nf)
                continue;
            const int64_t col = g / s->stride;
            const float *h = x + (size_t)b * ff;
            if (s->act_frac >= 1.0f) { /* raw magnitudes */
                for (int j = 0; j < ff; j++)
                    F[(size_t)j * s->nf + col] = fabsf(h[j]);
                continue;
            }
            /* co-activation: 1 for the act_frac of neurons that carry the
             * most output (|h_j| ||down_j||) on this token, else 0 */
            for (int j = 0; j < ff; j++)
                s->tmp[j] = fabsf(h[j]) * dn[j];
            const int kth = CODI_MAX(1, (int)(s->act_frac * ff));
            const float thr = kth_largest(s->tmp, ff, kth);
            for (int j = 0; j < ff; j++)
                F[(size_t)j * s->nf + col] = fabsf(h[j]) * dn[j] >= thr ? 1.0f : 0.0f;
        }
        return;
    }
    if (kind == 0) { /* FFN input */
        memcpy(s->xb, x, (size_t)B * d * sizeof(float));
        s->xb_layer = l;
        if (l == 0)
            memcpy(s->x0, x, (size_t)B * d * sizeof(float));
        if (s->phase == 2) {
            /* X^T X (upper triangle): float over this pass's rows (contiguous,
             * vectorised), then added into the double sums */
            double *A = s->xtx + (size_t)l * d * d;
            float *G = s->gram;
            memset(G, 0, (size_t)d * d * sizeof(float));
            for (int b = 0; b < B; b++) {
                const float *xr = x + (size_t)b * d;
                for (int i = 0; i < d; i++) {
                    const float xi = xr[i];
                    float *Gi = G + (size_t)i * d;
                    for (int j = i; j < d; j++)
                        Gi[j] += xi * xr[j];
                }
            }
            for (size_t k = 0; k < (size_t)d * d; k++)
                A[k] += G[k];
        }
        return;
    }
    /* FFN activation of layer l; its input is in xb */
    if (s->xb_layer != l)
        return;
    for (int b = 0; b < B; b++)
        targets(s, l, x + (size_t)b * ff, s->tg + (size_t)b * E);
    if (s->phase == 2) {
        double *T = s->xtt + (size_t)l * d * E, *T0 = s->x0tt + (size_t)l * d * E;
        for (int b = 0; b < B; b++) {
            const float *xr = s->xb + (size_t)b * d, *x0r = s->x0 + (size_t)b * d;
            const float *t = s->tg + (size_t)b * E;
            for (int i = 0; i < d; i++)
                for (int e = 0; e < E; e++) {
                    T[(size_t)i * E + e] += (double)xr[i] * t[e];
                    T0[(size_t)i * E + e] += (double)x0r[i] * t[e];
                }
        }
        return;
    }
    /* phase 3: accuracy */
    float sl[256], sd[256];
    int o[256], a[256], c[256];
    double *acc = s->acc + (size_t)l * 7;
    for (int b = 0; b < B; b++) {
        const float *t = s->tg + (size_t)b * E;
        scores(s->r_layer + (size_t)l * E * d, s->xb + (size_t)b * d, E, d, sl);
        scores(s->r_dec + (size_t)l * E * d, s->x0 + (size_t)b * d, E, d, sd);
        topk(t, E, K, o);
        topk(sl, E, K, a);
        topk(sd, E, K, c);
        const int mo = overlap(a, o, K), md = overlap(c, o, K), mdl = overlap(c, a, K);
        double ml = 0, mdm = 0, mor = 0;
        for (int k = 0; k < K; k++) {
            ml += t[a[k]];
            mdm += t[c[k]];
            mor += t[o[k]];
        }
        acc[0] += (double)(s->decoupled ? md : mo) / K;
        acc[1] += (double)mo / K;
        acc[2] += (double)md / K;
        acc[3] += (double)mdl / K;
        acc[4] += ml;
        acc[5] += mdm;
        acc[6] += mor;
        const float *sw = s->decoupled ? sd : sl;
        float lo = sw[0], hi = sw[0];
        for (int e = 1; e < E; e++) {
            lo = sw[e] < lo ? sw[e] : lo;
            hi = sw[e] > hi ? sw[e] : hi;
        }
        const int64_t g = s->tok0 + b;
        if (g < s->n_spread_cap)
            s->spread[(size_t)l * s->n_spread_cap + g] = hi - lo;
    }
}

/* ---------------------------------------------------------------- passes */

static int run_pass(codi_context *ctx, mstate *s, const int32_t *toks, int64_t n, int chunk, int32_t bos,
                    int32_t *buf, char *err, size_t errlen) {
    int64_t i = 0, g = 0;
    while (i < n) {
        int nb = 0;
        if (bos >= 0 && (i > 0 || toks[0] != bos))
            buf[nb++] = bos;
        while (nb < chunk && i < n)
            buf[nb++] = toks[i++];
        if (nb < 2)
            break;
        codi_kv_seq_truncate(ctx, 0, 0);
        s->tok0 = g;
        int rc = codi_decode(ctx, buf, nb, 0, false, err, errlen);
        if (rc)
            return rc;
        g += nb;
    }
    s->n_rows = g;
    return 0;
}

/* rows a pass over n tokens produces (BOS added per chunk) */
static int64_t pass_rows(const int32_t *toks, int64_t n, int chunk, int32_t bos) {
    int64_t i = 0, g = 0;
    while (i < n) {
        int nb = 0;
        if (bos >= 0 && (i > 0 || toks[0] != bos))
            nb++;
        while (nb < chunk && i < n) {
            nb++;
            i++;
        }
        if (nb < 2)
            break;
        g += nb;
    }
    return g;
}

/* ------------------------------------------------------------ clustering */

typedef struct simpair {
    float s;
    int32_t j, e;
} simpair;

static int cmp_pair(const void *a, const void *b) {
    const simpair *x = a, *y = b;
    if (x->s != y->s)
        return x->s > y->s ? -1 : 1;
    if (x->j != y->j)
        return x->j < y->j ? -1 : 1;
    return x->e < y->e ? -1 : x->e > y->e;
}

static uint32_t lcg(uint32_t *st) {
    *st = *st * 1664525u + 1013904223u;
    return *st >> 8;
}

/* Balanced k-means on the unit-normalised rows F[n][nf] (changed): E
 * clusters of exactly n/E rows. Assignment: all (row, cluster) pairs by
 * descending cosine similarity, each taken while the row is free and the
 * cluster not full. Deterministic for a seed. */
static int balanced_kmeans(float *F, int n, int nf, int E, uint32_t seed, int32_t *assign) {
    const int cap = n / E;
    float *C = malloc((size_t)E * nf * sizeof(float));
    float *dist = malloc((size_t)n * sizeof(float));
    simpair *pr = malloc((size_t)n * E * sizeof(simpair));
    int32_t *cnt = malloc((size_t)E * sizeof(int32_t));
    int32_t *prev = malloc((size_t)n * sizeof(int32_t));
    if (!C || !dist || !pr || !cnt || !prev) {
        free(C), free(dist), free(pr), free(cnt), free(prev);
        return CODI_ENOMEM;
    }
    for (int j = 0; j < n; j++) {
        float *f = F + (size_t)j * nf;
        double ss = 0;
        for (int t = 0; t < nf; t++)
            ss += (double)f[t] * f[t];
        const float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
        for (int t = 0; t < nf; t++)
            f[t] *= inv;
    }
    /* k-means++ on 1 - cosine */
    uint32_t st = seed ? seed : 1;
    int first = (int)(lcg(&st) % (uint32_t)n);
    memcpy(C, F + (size_t)first * nf, (size_t)nf * sizeof(float));
    for (int j = 0; j < n; j++)
        dist[j] = INFINITY;
    for (int e = 1; e < E; e++) {
        double tot = 0;
        const float *ce = C + (size_t)(e - 1) * nf;
        for (int j = 0; j < n; j++) {
            const float *f = F + (size_t)j * nf;
            float dot = 0;
            for (int t = 0; t < nf; t++)
                dot += f[t] * ce[t];
            const float dj = CODI_MAX(1.0f - dot, 0.0f);
            dist[j] = CODI_MIN(dist[j], dj);
            tot += (double)dist[j] * dist[j];
        }
        double r = (double)lcg(&st) / 16777216.0 * tot;
        int pick = n - 1;
        for (int j = 0; j < n; j++) {
            r -= (double)dist[j] * dist[j];
            if (r <= 0) {
                pick = j;
                break;
            }
        }
        memcpy(C + (size_t)e * nf, F + (size_t)pick * nf, (size_t)nf * sizeof(float));
    }
    for (int j = 0; j < n; j++)
        prev[j] = -1;
    for (int it = 0; it < KM_ITERS; it++) {
        for (int j = 0; j < n; j++) {
            const float *f = F + (size_t)j * nf;
            for (int e = 0; e < E; e++) {
                const float *ce = C + (size_t)e * nf;
                float dot = 0;
                for (int t = 0; t < nf; t++)
                    dot += f[t] * ce[t];
                pr[(size_t)j * E + e] = (simpair){dot, j, e};
            }
        }
        qsort(pr, (size_t)n * E, sizeof(simpair), cmp_pair);
        for (int j = 0; j < n; j++)
            assign[j] = -1;
        for (int e = 0; e < E; e++)
            cnt[e] = 0;
        for (size_t p = 0; p < (size_t)n * E; p++) {
            const simpair *q = &pr[p];
            if (assign[q->j] < 0 && cnt[q->e] < cap) {
                assign[q->j] = q->e;
                cnt[q->e]++;
            }
        }
        bool same = true;
        for (int j = 0; j < n; j++)
            same &= assign[j] == prev[j];
        if (same)
            break;
        memcpy(prev, assign, (size_t)n * sizeof(int32_t));
        memset(C, 0, (size_t)E * nf * sizeof(float));
        for (int j = 0; j < n; j++) {
            float *ce = C + (size_t)assign[j] * nf;
            const float *f = F + (size_t)j * nf;
            for (int t = 0; t < nf; t++)
                ce[t] += f[t];
        }
        for (int e = 0; e < E; e++) {
            float *ce = C + (size_t)e * nf;
            double ss = 0;
            for (int t = 0; t < nf; t++)
                ss += (double)ce[t] * ce[t];
            const float inv = ss > 0 ? (float)(1.0 / sqrt(ss)) : 0.0f;
            for (int t = 0; t < nf; t++)
                ce[t] *= inv;
        }
    }
    free(C), free(dist), free(pr), free(cnt), free(prev);
    return 0;
}

/* --------------------------------------------------------- ridge solver */

/* Solve (A + lambda I) X = B for symmetric A [n][n] given by its upper
 * triangle (overwritten), B [n][m] (overwritten with X). lambda = ridge *
 * mean diagonal. Cholesky in double. */
static int ridge_solve(double *A, int n, double *B, int m, double ridge) {
    double tr = 0;
    for (int i = 0; i < n; i++)
        tr += A[(size_t)i * n + i];
    const double lam = ridge * (tr > 0 ? tr / n : 1.0) + 1e-12;
    for (int i = 0; i < n; i++) {
        A[(size_t)i * n + i] += lam;
        for (int j = 0; j < i; j++)
            A[(size_t)i * n + j] = A[(size_t)j * n + i];
    }
    /* A = U^T U, U upper, stored in the upper triangle */
    for (int i = 0; i < n; i++) {
        double *Ai = A + (size_t)i * n;
        for (int k = 0; k < i; k++) {
            const double u = A[(size_t)k * n + i];
            const double *Ak = A + (size_t)k * n;
            for (int j = i; j < n; j++)
                Ai[j] -= u * Ak[j];
        }
        if (!(Ai[i] > 0))
            return CODI_EINVAL;
        const double r = sqrt(Ai[i]);
        for (int j = i; j < n; j++)
            Ai[j] /= r;
    }
    /* U^T y = b, then U x = y */
    for (int i = 0; i < n; i++) {
        for (int k = 0; k < i; k++) {
            const double u = A[(size_t)k * n + i];
            for (int c = 0; c < m; c++)
                B[(size_t)i * m + c] -= u * B[(size_t)k * m + c];
        }
        for (int c = 0; c < m; c++)
            B[(size_t)i * m + c] /= A[(size_t)i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        for (int k = i + 1; k < n; k++) {
            const double u = A[(size_t)i * n + k];
            for (int c = 0; c < m; c++)
                B[(size_t)i * m + c] -= u * B[(size_t)k * m + c];
        }
        for (int c = 0; c < m; c++)
            B[(size_t)i * m + c] /= A[(size_t)i * n + i];
    }
    return 0;
}

/* --------------------------------------------------------------- writing */

enum { OT_COPY, OT_ROUTER, OT_GATE, OT_UP, OT_DOWN };

typedef struct otensor {
    int kind, layer, type;
    const codi_gguf_tensor *src;
} otensor;

typedef struct wstate {
    const mstate *s;
    const codi_model *m;
    otensor *ot;
    const int32_t *perm;   /* [L][ff] */
    const float *alpha;    /* [L] router scale */
    int gu_type, down_type; /* -1: copy rows */
    float *row, *dense;    /* scratch */
} wstate;

/* source neuron of row i of expert e: the S shared ones, then its own */
static int32_t src_neuron(const mstate *s, const int32_t *perm, int e, int i) {
    return i < s->S ? perm[i] : perm[s->S + e * s->fr + (i - s->S)];
}

static int fill(void *user, size_t i, void *dst, size_t nbytes, char *err, size_t errlen) {
    wstate *ws = user;
    const otensor *o = &ws->ot[i];
    const mstate *s = ws->s;
    const int d = s->d, ff = s->ff, fe = s->fe, E = s->E, l = o->layer;
    const int32_t *perm = ws->perm + (size_t)l * ff;
    uint8_t *out = dst;
    switch (o->kind) {
    case OT_COPY:
        if (nbytes != o->src->nbytes)
            return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': size mismatch", o->src->name);
        memcpy(dst, o->src->data, nbytes);
        return 0;
    case OT_ROUTER: {
        const float *r = (s->decoupled ? s->r_dec : s->r_layer) + (size_t)l * E * d;
        float *f = dst;
        for (size_t k = 0; k < (size_t)E * d; k++)
            f[k] = ws->alpha[l] * r[k];
        return 0;
    }
    case OT_GATE:
    case OT_UP: {
        const codi_weight *w = o->kind == OT_GATE ? &ws->m->layers[l].w_gate : &ws->m->layers[l].w_up;
        const codi_type_traits *tin = codi_type_get(w->type);
        if (ws->gu_type < 0) {
            for (int j = 0; j < E * fe; j++)
                memcpy(out + (size_t)j * w->row_bytes,
                       (const uint8_t *)w->data + (size_t)src_neuron(s, perm, j / fe, j % fe) * w->row_bytes,
                       w->row_bytes);
        } else {
            const codi_type_traits *to = codi_type_get(ws->gu_type);
            const size_t rb = codi_row_size(ws->gu_type, d);
            for (int j = 0; j < E * fe; j++) {
                tin->to_float((const uint8_t *)w->data + (size_t)src_neuron(s, perm, j / fe, j % fe) * w->row_bytes,
                              ws->row, d);
                to->from_float(ws->row, out + (size_t)j * rb, d);
            }
        }
        return 0;
    }
    case OT_DOWN: {
        const codi_weight *w = &ws->m->layers[l].w_down; /* d rows of ff */
        const codi_type_traits *tin = codi_type_get(w->type), *to = codi_type_get(ws->down_type);
        for (int r = 0; r < d; r++)
            tin->to_float((const uint8_t *)w->data + (size_t)r * w->row_bytes, ws->dense + (size_t)r * ff, ff);
        const size_t rb = codi_row_size(ws->down_type, fe);
        const float scale = (float)s->K;
        for (int e = 0; e < E; e++)
            for (int r = 0; r < d; r++) {
                const float *src = ws->dense + (size_t)r * ff;
                for (int i2 = 0; i2 < fe; i2++) /* shared neurons once: weight 1/K x K experts */
                    ws->row[i2] = (i2 < s->S ? 1.0f : scale) * src[src_neuron(s, perm, e, i2)];
                to->from_float(ws->row, out + ((size_t)e * d + r) * rb, fe);
            }
        return 0;
    }
    }
    return codi_errorf(err, errlen, CODI_EINVAL, "bad output tensor");
}

typedef struct prog {
    const codi_moefy_params *p;
    int last;
} prog;

static void say(const codi_moefy_params *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(const codi_moefy_params *p, const char *fmt, ...) {
    if (!p->progress)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    p->progress(p->progress_user, line);
}

static void write_progress(void *user, uint64_t done, uint64_t total) {
    prog *pg = user;
    const int pct = total ? (int)(done * 10 / total) * 10 : 100;
    if (pct != pg->last) {
        pg->last = pct;
        say(pg->p, "writing: %d%% (%.1f of %.1f MB)", pct, (double)done / 1e6, (double)total / 1e6);
    }
}

static int cmp_f(const void *a, const void *b) {
    const float x = *(const float *)a, y = *(const float *)b;
    return x < y ? -1 : x > y;
}

static int32_t *tokenize_all(const codi_model *m, const char *text, size_t len, int32_t *n_out) {
    const size_t cap = len + 16;
    int32_t *t = malloc(cap * sizeof(int32_t));
    if (!t)
        return NULL;
    int32_t n = codi_tokenize(m, text, len, t, (int32_t)CODI_MIN(cap, (size_t)INT32_MAX), true, false);
    if (n < 0) {
        free(t);
        return NULL;
    }
    *n_out = n;
    return t;
}

int codi_moefy(const char *in_path, const char *out_path, const codi_moefy_params *params, char *err,
               size_t errlen) {
    if (!in_path || !out_path || !params)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_moefy: NULL argument");
    const codi_moefy_params *p = params;
    const int E = p->n_expert, K = p->n_expert_used;
    if (E < 2 || E > 256)
        return codi_errorf(err, errlen, CODI_EINVAL, "--experts must be between 2 and 256, got %d", E);
    if (K < 1 || K > E)
        return codi_errorf(err, errlen, CODI_EINVAL, "--top-k must be between 1 and the %d experts, got %d", E, K);
    if (p->router != CODI_MOEFY_ROUTER_LAYER && p->router != CODI_MOEFY_ROUTER_DECOUPLED)
        return codi_errorf(err, errlen, CODI_EINVAL, "unknown router kind %d (layer or decoupled)", p->router);
    if (p->expert_type != -1 && p->expert_type != CODI_TYPE_F32 && p->expert_type != CODI_TYPE_F16 &&
        p->expert_type != CODI_TYPE_Q8_0)
        return codi_errorf(err, errlen, CODI_EINVAL, "expert type must be f32, f16 or q8_0");
    if (p->calib_text && p->calib_len == 0)
        return codi_errorf(err, errlen, CODI_EINVAL, "the calibration text is empty");
    if (!strcmp(in_path, out_path))
        return codi_errorf(err, errlen, CODI_EINVAL, "the output file must differ from the input");

    codi_model *m = NULL;
    int rc = codi_model_load(in_path, NULL, &m, err, errlen);
    if (rc)
        return rc;
    const codi_hparams *hp = &m->hp;
    mstate s;
    memset(&s, 0, sizeof(s));
    codi_context *ctx = NULL;
    int32_t *ctoks = NULL, *etoks = NULL, *buf = NULL;
    otensor *ot = NULL;
    codi_gguf_writer *w = NULL;
    char *tmp = NULL;
    float *alpha = NULL;
    int32_t *perm = NULL;
    wstate ws;
    memset(&ws, 0, sizeof(ws));
#define FAIL(code, ...)                                                          \
    do {                                                                         \
        rc = codi_errorf(err, errlen, code, __VA_ARGS__);                        \
        goto done;                                                               \
    } while (0)
    if (hp->arch_id != CODI_ARCH_LLAMA)
        FAIL(CODI_EUNSUPPORTED, "moefy supports dense llama-architecture models; '%s' is %s", in_path, hp->arch);
    if (hp->n_expert > 0)
        FAIL(CODI_EINVAL, "'%s' is already a mixture of experts (%d experts)", in_path, hp->n_expert);
    if (p->n_shared < 0 || p->n_shared >= hp->n_ff)
        FAIL(CODI_EINVAL, "--shared must be between 0 and the FFN width %d, got %d", hp->n_ff, p->n_shared);
    if ((hp->n_ff - p->n_shared) % E)
        FAIL(CODI_EINVAL, "--experts %d does not divide the FFN width %d%s", E, hp->n_ff - p->n_shared,
             p->n_shared ? " less the shared neurons" : "");
    s.m = m;
    s.E = E;
    s.K = K;
    s.d = hp->n_embd;
    s.ff = hp->n_ff;
    s.S = p->n_shared;
    s.fr = (hp->n_ff - s.S) / E;
    s.fe = s.S + s.fr;
    s.L = hp->n_layer;
    s.decoupled = p->router == CODI_MOEFY_ROUTER_DECOUPLED;
    const int d = s.d, ff = s.ff, L = s.L;
    const int down_type = p->expert_type < 0 ? CODI_TYPE_Q8_0 : p->expert_type;
    if (s.fe % codi_type_get(down_type)->blck_size)
        FAIL(CODI_EINVAL, "the expert width %d (n_ff %d / %d experts) is not a multiple of the %s block (%lld); "
             "use --type f16 or f32", s.fe, ff, E, codi_type_name(down_type),
             (long long)codi_type_get(down_type)->blck_size);
    if (p->expert_type >= 0 && d % codi_type_get(p->expert_type)->blck_size)
        FAIL(CODI_EINVAL, "n_embd %d is not a multiple of the %s block", d, codi_type_name(p->expert_type));
    for (int l = 0; l < L; l++) {
        const codi_weight *ws3[3] = {&m->layers[l].w_gate, &m->layers[l].w_up, &m->layers[l].w_down};
        for (int i = 0; i < 3; i++) {
            const codi_type_traits *t = codi_type_get(ws3[i]->type);
            if (!t || !t->to_float)
                FAIL(CODI_EUNSUPPORTED, "layer %d: FFN weight type %s cannot be dequantized", l,
                     codi_type_name(ws3[i]->type));
        }
    }

    /* tokens */
    const char *ctext = p->calib_text ? p->calib_text : BUILTIN_CALIB;
    const size_t clen = p->calib_text ? p->calib_len : strlen(BUILTIN_CALIB);
    int32_t nc = 0, ne = 0;
    ctoks = tokenize_all(m, ctext, clen, &nc);
    if (!ctoks)
        FAIL(CODI_EINVAL, "cannot tokenize the calibration text");
    const int32_t maxt = p->max_tokens > 0 ? p->max_tokens : 8192;
    if (nc > maxt)
        nc = maxt;
    if (nc < 64)
        FAIL(CODI_EINVAL, "the calibration text has %d tokens; at least 64 are needed", nc);
    if (p->eval_text) {
        etoks = tokenize_all(m, p->eval_text, p->eval_len, &ne);
        if (!etoks || ne < 2)
            FAIL(CODI_EINVAL, "the evaluation text has no tokens");
        if (ne > maxt)
            ne = maxt;
    }
    const int chunk = (int)CODI_MIN(512, hp->n_ctx_train > 0 ? hp->n_ctx_train : 512);
    const int32_t bos = codi_model_add_bos(m) ? codi_token_bos(m) : -1;
    codi_context_params cp = codi_context_default_params();
    cp.n_ctx = chunk;
    cp.n_batch = chunk;
    cp.n_threads = p->n_threads;
    if ((rc = codi_context_create(m, &cp, &ctx, err, errlen)))
        goto done;
    codi_context_set_observer(ctx, observe, &s);
    buf = malloc((size_t)chunk * sizeof(int32_t));
    const int64_t rows_c = pass_rows(ctoks, nc, chunk, bos);
    s.nf = (int32_t)CODI_MIN(rows_c, NF_MAX);
    s.stride = (int32_t)((rows_c + s.nf - 1) / s.nf);
    s.nf = (int32_t)((rows_c + s.stride - 1) / s.stride);
    s.feat = calloc((size_t)L * ff * s.nf, sizeof(float));
    s.dn = malloc((size_t)L * ff * sizeof(float));
    s.imp = calloc((size_t)L * ff, sizeof(double));
    s.tmp = malloc((size_t)ff * sizeof(float));
    s.act_frac = p->active_frac > 0.0f ? p->active_frac : 0.1f;
    s.clus = malloc((size_t)L * ff * sizeof(int32_t));
    s.xb = malloc((size_t)chunk * d * sizeof(float));
    s.x0 = malloc((size_t)chunk * d * sizeof(float));
    s.tg = malloc((size_t)chunk * E * sizeof(float));
    s.xtx = calloc((size_t)L * d * d, sizeof(double));
    s.gram = malloc((size_t)d * d * sizeof(float));
    s.xtt = calloc((size_t)L * d * E, sizeof(double));
    s.x0tt = calloc((size_t)L * d * E, sizeof(double));
    s.r_layer = malloc((size_t)L * E * d * sizeof(float));
    s.r_dec = malloc((size_t)L * E * d * sizeof(float));
    s.acc = calloc((size_t)L * 7, sizeof(double));
    perm = p->perm ? p->perm : malloc((size_t)L * ff * sizeof(int32_t));
    alpha = malloc((size_t)L * sizeof(float));
    ws.row = malloc((size_t)CODI_MAX(d, ff) * sizeof(float));
    ws.dense = malloc((size_t)d * ff * sizeof(float));
    if (!buf || !s.feat || !s.dn || !s.imp || !s.tmp || !s.clus || !s.xb || !s.x0 || !s.tg || !s.xtx || !s.gram || !s.xtt || !s.x0tt ||
        !s.r_layer || !s.r_dec || !s.acc || !perm || !alpha || !ws.row || !ws.dense)
        FAIL(CODI_ENOMEM, "out of memory for the calibration statistics");
    /* column norms of ffn_down */
    for (int l = 0; l < L; l++) {
        const codi_weight *wd = &m->layers[l].w_down;
        const codi_type_traits *t = codi_type_get(wd->type);
        float *dn = s.dn + (size_t)l * ff;
        for (int j = 0; j < ff; j++)
            dn[j] = 0.0f;
        for (int r = 0; r < d; r++) {
            t->to_float((const uint8_t *)wd->data + (size_t)r * wd->row_bytes, ws.row, ff);
            for (int j = 0; j < ff; j++)
                dn[j] += ws.row[j] * ws.row[j];
        }
        for (int j = 0; j < ff; j++)
            dn[j] = sqrtf(dn[j]);
    }

    /* pass 1: neuron features, clustering */
    say(p, "pass 1/3: activations of %d FFN neurons x %d layers on %lld calibration tokens (%d per neuron)",
        ff, L, (long long)rows_c, s.nf);
    s.phase = 1;
    if ((rc = run_pass(ctx, &s, ctoks, nc, chunk, bos, buf, err, errlen)))
        goto done;
    {
        const int nr = ff - s.S;
        float *Fs = malloc((size_t)nr * s.nf * sizeof(float));
        int32_t *sub = malloc((size_t)ff * sizeof(int32_t)), *asg = malloc((size_t)ff * sizeof(int32_t));
        int32_t *order = malloc((size_t)ff * sizeof(int32_t));
        if (!Fs || !sub || !asg || !order) {
            free(Fs), free(sub), free(asg), free(order);
            FAIL(CODI_ENOMEM, "out of memory clustering");
        }
        for (int l = 0; l < L && !rc; l++) {
            int32_t *cl = s.clus + (size_t)l * ff;
            const double *imp = s.imp + (size_t)l * ff;
            /* shared: the S neurons of largest mean |h_j| ||down_j|| */
            for (int j = 0; j < ff; j++)
                order[j] = j, cl[j] = 0;
            for (int k = 0; k < s.S; k++) { /* partial selection sort: S is small */
                int best = k;
                for (int j = k + 1; j < ff; j++)
                    if (imp[order[j]] > imp[order[best]])
                        best = j;
                const int32_t t = order[k];
                order[k] = order[best];
                order[best] = t;
                cl[order[k]] = -1;
            }
            int n = 0;
            for (int j = 0; j < ff; j++)
                if (cl[j] >= 0) {
                    memcpy(Fs + (size_t)n * s.nf, s.feat + ((size_t)l * ff + j) * s.nf, (size_t)s.nf * sizeof(float));
                    sub[n++] = j;
                }
            if (balanced_kmeans(Fs, nr, s.nf, E, p->seed + (uint32_t)l, asg)) {
                rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory clustering");
                break;
            }
            for (int i = 0; i < nr; i++)
                cl[sub[i]] = asg[i];
            int32_t *pl = perm + (size_t)l * ff;
            n = 0;
            for (int j = 0; j < ff; j++)
                if (cl[j] < 0)
                    pl[n++] = j;
            for (int e = 0; e < E; e++)
                for (int j = 0; j < ff; j++)
                    if (cl[j] == e)
                        pl[n++] = j;
            if (n != ff)
                rc = codi_errorf(err, errlen, CODI_EINVAL, "internal: clustering of layer %d is not a partition", l);
            for (int e = 0; e < E && !rc; e++) /* balanced: every cluster fr wide */
                for (int i = 0; i < s.fr; i++)
                    if (cl[pl[s.S + e * s.fr + i]] != e)
                        rc = codi_errorf(err, errlen, CODI_EINVAL, "internal: cluster %d of layer %d is not %d wide",
                                         e, l, s.fr);
        }
        free(Fs), free(sub), free(asg), free(order);
        if (rc)
            goto done;
    }
    free(s.feat);
    s.feat = NULL;
    say(p, "clustered %d layers into %d experts of %d neurons (balanced k-means)%s", L, E, s.fr,
        s.S ? ", plus the shared neurons in every expert" : "");

    /* pass 2: router fit */
    say(p, "pass 2/3: router fit (%s)", s.decoupled ? "decoupled: every router reads layer 0's FFN input"
                                                     : "per layer");
    s.phase = 2;
    if ((rc = run_pass(ctx, &s, ctoks, nc, chunk, bos, buf, err, errlen)))
        goto done;
    {
        double *A = malloc((size_t)d * d * sizeof(double)), *Bm = malloc((size_t)d * E * sizeof(double));
        if (!A || !Bm) {
            free(A), free(Bm);
            FAIL(CODI_ENOMEM, "out of memory fitting the routers");
        }
        for (int l = 0; l < L && !rc; l++)
            for (int dec = 0; dec < 2 && !rc; dec++) {
                memcpy(A, s.xtx + (size_t)(dec ? 0 : l) * d * d, (size_t)d * d * sizeof(double));
                memcpy(Bm, (dec ? s.x0tt : s.xtt) + (size_t)l * d * E, (size_t)d * E * sizeof(double));
                if (ridge_solve(A, d, Bm, E, 1e-3))
                    rc = codi_errorf(err, errlen, CODI_EINVAL, "layer %d: the router fit is singular", l);
                float *r = (dec ? s.r_dec : s.r_layer) + (size_t)l * E * d;
                for (int e = 0; e < E; e++)
                    for (int i = 0; i < d; i++)
                        r[(size_t)e * d + i] = (float)Bm[(size_t)i * E + e];
            }
        free(A), free(Bm);
        if (rc)
            goto done;
    }

    /* pass 3: accuracy (evaluation text, else the calibration text) */
    const int32_t *vt = etoks ? etoks : ctoks;
    const int32_t nv = etoks ? ne : nc;
    s.n_spread_cap = pass_rows(vt, nv, chunk, bos);
    s.spread = malloc((size_t)L * s.n_spread_cap * sizeof(float));
    if (!s.spread)
        FAIL(CODI_ENOMEM, "out of memory");
    say(p, "pass 3/3: router accuracy on %lld %s tokens", (long long)s.n_spread_cap,
        etoks ? "evaluation" : "calibration");
    s.phase = 3;
    if ((rc = run_pass(ctx, &s, vt, nv, chunk, bos, buf, err, errlen)))
        goto done;
    codi_context_set_observer(ctx, NULL, NULL);
    for (int l = 0; l < L; l++) {
        const double n = (double)CODI_MAX(s.n_rows, 1);
        const double *a = s.acc + (size_t)l * 7;
        if (p->stats) {
            codi_moefy_layer_stats *st = &p->stats[l];
            st->match_oracle = (float)(a[0] / n);
            st->match_layer = (float)(a[1] / n);
            st->match_decoupled = (float)(a[2] / n);
            st->dec_vs_layer = (float)(a[3] / n);
            st->mass_layer = (float)(a[4] / n);
            st->mass_decoupled = (float)(a[5] / n);
            st->mass_oracle = (float)(a[6] / n);
        }
        /* router scale: the 99th percentile of a token's logit spread -> SPREAD */
        float *sp = s.spread + (size_t)l * s.n_spread_cap;
        qsort(sp, (size_t)s.n_spread_cap, sizeof(float), cmp_f);
        const float s99 = sp[(size_t)((double)(s.n_spread_cap - 1) * 0.99)];
        alpha[l] = s99 > 0 ? (float)(SPREAD / s99) : 1.0f;
    }

    /* output: metadata of IN with the MoE keys, tensors in IN's order with
     * each layer's ffn_gate/up/down replaced by the router and experts */
    const codi_gguf *g = m->gguf;
    w = codi_gguf_writer_new();
    ot = calloc((size_t)g->n_tensors + 4 * (size_t)L, sizeof(otensor));
    if (!w || !ot)
        FAIL(CODI_ENOMEM, "out of memory");
    for (uint64_t i = 0; i < g->n_kv; i++) {
        if (!strcmp(g->kv[i].key, "general.alignment"))
            continue; /* the writer aligns to 32 */
        if ((rc = codi_gguf_w_copy(w, &g->kv[i])))
            FAIL(rc, "cannot copy metadata '%s'", g->kv[i].key);
    }
    char key[128];
#define KEY(suffix) (snprintf(key, sizeof(key), "%s." suffix, hp->arch), key)
    rc = codi_gguf_w_u32(w, KEY("expert_count"), (uint32_t)E);
    rc = rc ? rc : codi_gguf_w_u32(w, KEY("expert_used_count"), (uint32_t)K);
    rc = rc ? rc : codi_gguf_w_u32(w, KEY("feed_forward_length"), (uint32_t)s.fe);
    if (s.decoupled)
        rc = rc ? rc : codi_gguf_w_u32(w, KEY("codi.router_source_layer"), 0);
    rc = rc ? rc : codi_gguf_w_u32(w, "codi.moefy.dense_feed_forward_length", (uint32_t)ff);
    rc = rc ? rc : codi_gguf_w_f32(w, "codi.moefy.expert_down_scale", (float)K);
    rc = rc ? rc : codi_gguf_w_u32(w, "codi.moefy.shared_neurons", (uint32_t)s.S);
    rc = rc ? rc : codi_gguf_w_str(w, "codi.moefy.router", s.decoupled ? "decoupled" : "layer");
    rc = rc ? rc : codi_gguf_w_u32(w, "codi.moefy.calib_tokens", (uint32_t)rows_c);
#undef KEY
    if (rc)
        FAIL(CODI_ENOMEM, "out of memory");
    size_t n_ot = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        int l = -1, nch = 0;
        char part[64] = "";
        if (sscanf(t->name, "blk.%d.%63[^.].weight%n", &l, part, &nch) == 2 && t->name[nch] == '\0' &&
            (!strcmp(part, "ffn_gate") || !strcmp(part, "ffn_up") || !strcmp(part, "ffn_down"))) {
            if (l < 0 || l >= L)
                FAIL(CODI_EFORMAT, "tensor '%s': layer out of range", t->name);
            if (strcmp(part, "ffn_gate"))
                continue;
            const codi_weight *wg = &m->layers[l].w_gate;
            const int gu = p->expert_type < 0 ? wg->type : p->expert_type;
            if (p->expert_type < 0 && m->layers[l].w_up.type != wg->type)
                FAIL(CODI_EUNSUPPORTED, "layer %d: ffn_gate and ffn_up differ in type; use --type", l);
            ws.gu_type = p->expert_type < 0 ? -1 : p->expert_type;
            char nm[96];
            const int64_t ne_r[2] = {d, E}, ne_gu[3] = {d, s.fe, E}, ne_d[3] = {s.fe, d, E};
            struct {
                const char *n;
                int kind, type, nd;
                const int64_t *ne;
            } add[4] = {{"ffn_gate_inp", OT_ROUTER, CODI_TYPE_F32, 2, ne_r},
                        {"ffn_gate_exps", OT_GATE, gu, 3, ne_gu},
                        {"ffn_up_exps", OT_UP, gu, 3, ne_gu},
                        {"ffn_down_exps", OT_DOWN, down_type, 3, ne_d}};
            for (int k = 0; k < 4; k++) {
                snprintf(nm, sizeof(nm), "blk.%d.%s.weight", l, add[k].n);
                if ((rc = codi_gguf_w_tensor(w, nm, add[k].type, add[k].nd, add[k].ne)))
                    FAIL(rc, "cannot add tensor '%s'", nm);
                ot[n_ot++] = (otensor){add[k].kind, l, add[k].type, NULL};
            }
            continue;
        }
        if ((rc = codi_gguf_w_tensor(w, t->name, t->type, t->n_dims, t->ne)))
            FAIL(rc, "cannot add tensor '%s'", t->name);
        ot[n_ot++] = (otensor){OT_COPY, -1, t->type, t};
    }
    ws.s = &s;
    ws.m = m;
    ws.ot = ot;
    ws.perm = perm;
    ws.alpha = alpha;
    ws.down_type = down_type;
    tmp = malloc(strlen(out_path) + 8);
    if (!tmp)
        FAIL(CODI_ENOMEM, "out of memory");
    sprintf(tmp, "%s.tmp", out_path);
    prog pg = {p, -1};
    if ((rc = codi_gguf_writer_write(w, tmp, fill, &ws, write_progress, &pg, err, errlen)))
        goto done;
    if (rename(tmp, out_path) != 0) {
        remove(tmp);
        FAIL(CODI_EIO, "cannot rename '%s' to '%s'", tmp, out_path);
    }
    rc = 0;
#undef FAIL
done:
    if (p->perm != perm)
        free(perm);
    free(alpha);
    free(tmp);
    free(ot);
    codi_gguf_writer_free(w);
    free(ws.row);
    free(ws.dense);
    free(buf);
    free(ctoks);
    free(etoks);
    free(s.feat), free(s.dn), free(s.imp), free(s.tmp), free(s.clus), free(s.xb), free(s.x0), free(s.tg), free(s.xtx), free(s.gram);
    free(s.xtt), free(s.x0tt), free(s.r_layer), free(s.r_dec), free(s.acc), free(s.spread);
    codi_context_free(ctx);
    codi_model_free(m);
    return rc;
}
