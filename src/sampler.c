/* Token sampling: llama.cpp's default chain, in its order.
 *
 *   repetition penalty -> top-k -> top-p -> min-p -> temperature -> draw
 *
 * As in llama.cpp, top-k / top-p / min-p see the penalised logits before the
 * temperature is applied; the temperature only shapes the final draw.
 * temp <= 0 is greedy: argmax of the penalised logits, ties to the lowest id
 * (the filters never remove the argmax, so they are skipped).
 *
 * Parameters, and what is done with edge values:
 *   temp            <= 0 greedy; NaN or infinite: CODI_EINVAL
 *   top_k           <= 0 off; >= n_vocab keeps everything
 *   top_p           >= 1 off; <= 0 keeps only the most probable token (what
 *                   llama.cpp's rule "smallest prefix with mass >= p" gives);
 *                   NaN: CODI_EINVAL
 *   min_p           <= 0 off; >= 1 keeps only the most probable token(s);
 *                   NaN: CODI_EINVAL
 *   repeat_penalty  1 off; must be finite and > 0, else CODI_EINVAL
 *   repeat_last_n   0 off; < 0: CODI_EINVAL (llama.cpp's -1 = "whole
 *                   context" needs the context size, which a sampler lacks)
 *
 * The random draw uses its own xoshiro256** seeded through splitmix64, so a
 * seed gives the same tokens on every platform (up to libm's expf()).
 * codi_sampler_reset() forgets the history and reseeds, like llama.cpp.
 *
 * codi_sampler_sample() allocates nothing: the candidate array, the
 * penalty marks and the history ring are allocated once in create. Top-k
 * uses heap selection (O(n log k)); top-p without top-k buckets the
 * tokens by logit and sorts only the bucket where the mass crosses top_p,
 * instead of sorting the whole vocabulary. */
#include "common.h"

#include <math.h>
#include <string.h>

typedef struct cand {
    float logit;
    int32_t id;
    double p; /* probability within the current candidate set */
} cand;

/* Top-p without top-k: sets up to this size are simply sorted; larger
 * ones are bucketed by logit over [max - RANGE, max] (RANGE nats: tokens
 * below hold e^-RANGE of the best one's probability, and share the last
 * bucket). */
enum { TOP_P_SORT_MAX = 1024, TOP_P_BUCKETS = 1024 };
#define TOP_P_RANGE 32.0

struct codi_sampler {
    codi_sampler_params params;
    int32_t n_vocab;
    uint64_t rng[4];
    cand *cands;      /* [n_vocab] working copy of the logits */
    uint8_t *seen;    /* [n_vocab] marks while applying the penalty */
    int32_t *hist;    /* ring of the last repeat_last_n accepted tokens */
    int32_t hist_cap;
    int32_t hist_len;
    int32_t hist_pos;
    double bucket_mass[TOP_P_BUCKETS];
    int32_t bucket_count[TOP_P_BUCKETS];
};

codi_sampler_params codi_sampler_default_params(void) {
    codi_sampler_params p = {
        .temp = 0.8f,
        .top_k = 40,
        .top_p = 0.95f,
        .min_p = 0.05f,
        .repeat_penalty = 1.0f,
        .repeat_last_n = 64,
        .seed = 0xC0D1,
    };
    return p;
}

/* ------------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static void rng_seed(uint64_t s[4], uint64_t seed) {
    for (int i = 0; i < 4; i++) s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro256ss(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) {
    return (double)(xoshiro256ss(s) >> 11) * 0x1.0p-53;
}

/* ------------------------------------------------------- create / free */

int codi_sampler_create(const codi_sampler_params *params, int32_t n_vocab,
                        codi_sampler **out, char *err, size_t errlen) {
    if (!out) return codi_errorf(err, errlen, CODI_EINVAL, "sampler: out is NULL");
    *out = NULL;
    codi_sampler_params p = params ? *params : codi_sampler_default_params();
    if (n_vocab <= 0)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "sampler: n_vocab must be > 0 (got %d)", (int)n_vocab);
    if (!isfinite(p.temp))
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "sampler: temp must be finite (got %g)", (double)p.temp);
    if (isnan(p.top_p))
        return codi_errorf(err, errlen, CODI_EINVAL, "sampler: top_p is NaN");
    if (isnan(p.min_p))
        return codi_errorf(err, errlen, CODI_EINVAL, "sampler: min_p is NaN");
    if (!isfinite(p.repeat_penalty) || p.repeat_penalty <= 0.0f)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "sampler: repeat_penalty must be finite and > 0 (got %g)",
                           (double)p.repeat_penalty);
    if (p.repeat_last_n < 0)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "sampler: repeat_last_n must be >= 0 (got %d)",
                           (int)p.repeat_last_n);

    codi_sampler *s = calloc(1, sizeof(*s));
    if (!s) return codi_errorf(err, errlen, CODI_ENOMEM, "sampler: out of memory");
    s->params = p;
    s->n_vocab = n_vocab;
    s->hist_cap = p.repeat_last_n;
    s->cands = malloc((size_t)n_vocab * sizeof(*s->cands));
    s->seen = calloc((size_t)n_vocab, 1);
    s->hist = s->hist_cap > 0 ? malloc((size_t)s->hist_cap * sizeof(*s->hist)) : NULL;
    if (!s->cands || !s->seen || (s->hist_cap > 0 && !s->hist)) {
        codi_sampler_free(s);
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "sampler: out of memory (n_vocab %d)", (int)n_vocab);
    }
    rng_seed(s->rng, p.seed);
    *out = s;
    return CODI_OK;
}

void codi_sampler_free(codi_sampler *s) {
    if (!s) return;
    free(s->cands);
    free(s->seen);
    free(s->hist);
    free(s);
}

void codi_sampler_accept(codi_sampler *s, int32_t token) {
    if (!s || s->hist_cap == 0 || token < 0 || token >= s->n_vocab) return;
    s->hist[s->hist_pos] = token;
    s->hist_pos = (s->hist_pos + 1) % s->hist_cap;
    if (s->hist_len < s->hist_cap) s->hist_len++;
}

void codi_sampler_reset(codi_sampler *s) {
    if (!s) return;
    s->hist_len = 0;
    s->hist_pos = 0;
    rng_seed(s->rng, s->params.seed);
}

/* ------------------------------------------------------------ selection */

/* Total order used everywhere: higher logit first, ties to the lower id. */
static int worse(const cand *a, const cand *b) {
    return a->logit < b->logit || (a->logit == b->logit && a->id > b->id);
}

static void swap_cand(cand *a, cand *b) {
    cand t = *a;
    *a = *b;
    *b = t;
}

/* Min-heap on "worse": the root is the worst element of c[0..n). */
static void sift_down(cand *c, size_t n, size_t i) {
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && worse(&c[l], &c[m])) m = l;
        if (r < n && worse(&c[r], &c[m])) m = r;
        if (m == i) return;
        swap_cand(&c[i], &c[m]);
        i = m;
    }
}

/* Permute c[0..n) so that c[0..m) holds the m best, sorted best first.
 * O(n log m), in place. */
static void select_top(cand *c, size_t n, size_t m) {
    if (m == 0) return;
    if (m > n) m = n;
    for (size_t i = m / 2; i-- > 0;) sift_down(c, m, i);
    for (size_t i = m; i < n; i++) {
        if (worse(&c[0], &c[i])) {
            swap_cand(&c[0], &c[i]);
            sift_down(c, m, 0);
        }
    }
    /* Heapsort: move the worst to the end each time -> best first. */
    for (size_t end = m; end > 1; end--) {
        swap_cand(&c[0], &c[end - 1]);
        sift_down(c, end - 1, 0);
    }
}

/* The largest logit (never NaN: the caller mapped NaN to -inf), over four
 * independent chains: a max does not depend on the order. */
static float max_logit(const cand *c, size_t n) {
    float m[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    size_t i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++)
            m[k] = c[i + k].logit > m[k] ? c[i + k].logit : m[k];
    for (; i < n; i++)
        m[0] = c[i].logit > m[0] ? c[i].logit : m[0];
    const float a = m[0] > m[1] ? m[0] : m[1], b = m[2] > m[3] ? m[2] : m[3];
    return a > b ? a : b;
}

/* Fill c[i].p with the unnormalized softmax weights over c[0..n) of
 * logit * scale and return their sum (c[i].p / sum is the probability).
 * A set whose logits are all -inf becomes uniform. */
static double softmax_weights(cand *c, size_t n, double scale) {
    float mx = max_logit(c, n);
    if (isinf(mx)) { /* all -inf: uniform; some +inf: uniform over those */
        double cnt = 0.0;
        for (size_t i = 0; i < n; i++) {
            c[i].p = (mx < 0 || c[i].logit == mx) ? 1.0 : 0.0;
            cnt += c[i].p;
        }
        return cnt;
    }
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) {
        c[i].p = (double)expf((float)(((double)c[i].logit - (double)mx) * scale));
        sum += c[i].p;
    }
    return sum;
}

/* Fill c[i].p = softmax over c[0..n) of logit * scale. */
static void softmax(cand *c, size_t n, double scale) {
    const double sum = softmax_weights(c, n, scale);
    for (size_t i = 0; i < n; i++) c[i].p /= sum;
}

/* Nucleus over the best-first sorted c[0..n) whose p are set: the smallest
 * prefix with mass >= top_p, at least one token. */
static size_t nucleus_prefix(const cand *c, size_t n, double top_p) {
    double cum = 0.0;
    for (size_t i = 0; i < n; i++) {
        cum += c[i].p;
        if (cum >= top_p) return i + 1;
    }
    return n;
}

/* Top-p over the whole unsorted c[0..n) without sorting it: bucket the
 * tokens by logit (bucket 0 holds the best), find the bucket where the
 * mass crosses top_p, and sort only that bucket. Tokens of better buckets
 * are all kept; they come first, unsorted. Same set as the sorted prefix
 * (the mapping is monotone), up to the order of the float sums. */
static size_t top_p_buckets(codi_sampler *s, cand *c, size_t n, double top_p) {
    softmax(c, n, 1.0);
    if (n <= TOP_P_SORT_MAX) {
        select_top(c, n, n);
        return nucleus_prefix(c, n, top_p);
    }
    float mx = max_logit(c, n);
    if (isinf(mx)) { /* degenerate: fall back to a full sort */
        select_top(c, n, n);
        return nucleus_prefix(c, n, top_p);
    }
    const double scale = (double)TOP_P_BUCKETS / TOP_P_RANGE;
#define BUCKET_OF(l)                                                          \
    ((l) >= mx ? 0                                                           \
               : (int)CODI_MIN((double)(TOP_P_BUCKETS - 1),                   \
                               ((double)mx - (double)(l)) * scale))
    memset(s->bucket_mass, 0, sizeof(s->bucket_mass));
    memset(s->bucket_count, 0, sizeof(s->bucket_count));
    for (size_t i = 0; i < n; i++) {
        int b = BUCKET_OF(c[i].logit);
        s->bucket_mass[b] += c[i].p;
        s->bucket_count[b]++;
    }
    /* The bucket where the cumulative mass reaches top_p (or the last
     * non-empty one if rounding leaves it short). */
    double before = 0.0;
    int edge = -1;
    for (int b = 0; b < TOP_P_BUCKETS; b++) {
        if (s->bucket_count[b] == 0) continue;
        edge = b;
        if (before + s->bucket_mass[b] >= top_p) break;
        before += s->bucket_mass[b];
    }
    /* Better buckets to the front, then the edge bucket. */
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (BUCKET_OF(c[i].logit) < edge) swap_cand(&c[k++], &c[i]);
    size_t e = k;
    for (size_t i = k; i < n; i++)
        if (BUCKET_OF(c[i].logit) == edge) swap_cand(&c[e++], &c[i]);
#undef BUCKET_OF
    select_top(c + k, e - k, e - k);
    double cum = before;
    for (size_t i = k; i < e; i++) {
        cum += c[i].p;
        if (cum >= top_p) return i + 1;
    }
    return e;
}

static int32_t argmax_id(const cand *c, size_t n) {
    size_t best = 0;
    for (size_t i = 1; i < n; i++)
        if (worse(&c[best], &c[i])) best = i;
    return c[best].id;
}

/* ------------------------------------------------------------- sampling */

int32_t codi_sampler_sample(codi_sampler *s, const float *logits) {
    if (!s || !logits) return CODI_EINVAL;
    const codi_sampler_params *p = &s->params;
    cand *c = s->cands;
    size_t n = (size_t)s->n_vocab;

    for (size_t i = 0; i < n; i++) {
        float l = logits[i];
        c[i].logit = isnan(l) ? -INFINITY : l;
        c[i].id = (int32_t)i;
    }

    /* Repetition penalty, once per distinct token of the window (c is
     * still indexed by id here). llama.cpp's rule: shrink positive logits,
     * push negative ones further down. */
    if (p->repeat_penalty != 1.0f && s->hist_len > 0) {
        for (int32_t i = 0; i < s->hist_len; i++) {
            int32_t t = s->hist[i];
            if (s->seen[t]) continue;
            s->seen[t] = 1;
            if (c[t].logit <= 0.0f) c[t].logit *= p->repeat_penalty;
            else c[t].logit /= p->repeat_penalty;
        }
        for (int32_t i = 0; i < s->hist_len; i++) s->seen[s->hist[i]] = 0;
    }

    if (p->temp <= 0.0f) return argmax_id(c, n);

    /* Top-k: the set becomes c[0..n), sorted best first. */
    bool sorted = false;
    if (p->top_k > 0) {
        n = CODI_MIN(n, (size_t)p->top_k);
        select_top(c, (size_t)s->n_vocab, n);
        sorted = true;
    }

    /* Top-p. */
    if (p->top_p < 1.0f) {
        if (sorted) {
            softmax(c, n, 1.0);
            n = nucleus_prefix(c, n, (double)p->top_p);
        } else {
            n = top_p_buckets(s, c, n, (double)p->top_p);
        }
    }

    /* Min-p: keep p_i >= min_p * p_max, i.e. logit_i >= max + log(min_p).
     * Stable compaction keeps the order (and the argmax) intact. */
    if (p->min_p > 0.0f && n > 1) {
        float mx = max_logit(c, n);
        float floor_logit = mx + logf(p->min_p);
        size_t k = 0;
        for (size_t i = 0; i < n; i++)
            if (c[i].logit >= floor_logit) c[k++] = c[i];
        if (k == 0) { /* min_p > 1: nothing was moved, keep the best */
            size_t b = 0;
            for (size_t i = 1; i < n; i++)
                if (worse(&c[b], &c[i])) b = i;
            c[0] = c[b];
            k = 1;
        }
        n = k;
    }

    /* Temperature, then the draw: each probability divided out only as
     * the scan reaches it (the same quotients as normalizing them all
     * first; the scan stops halfway on average, over the whole vocabulary
     * when nothing else cut the set). */
    const double sum = softmax_weights(c, n, 1.0 / (double)p->temp);
    double u = rng_uniform(s->rng);
    double cum = 0.0;
    for (size_t i = 0; i < n; i++) {
        cum += c[i].p / sum;
        if (u < cum) return c[i].id;
    }
    return c[n - 1].id;
}
