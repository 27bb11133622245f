/* Sampler: greedy, top-k / top-p / min-p exclusion, temperature, seeds,
 * repetition penalty. Exclusion on a large vocabulary is checked against a
 * slow oracle that sorts everything. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codi.h"

static uint64_t test_rng = 12345;

static double rnd(void) { /* splitmix64 -> [0, 1) */
    uint64_t z = (test_rng += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (double)(z >> 11) * 0x1.0p-53;
}

static codi_sampler_params plain_params(float temp) {
    codi_sampler_params p = codi_sampler_default_params();
    p.temp = temp;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.min_p = 0.0f;
    p.repeat_penalty = 1.0f;
    return p;
}

static codi_sampler *make(const codi_sampler_params *p, int32_t n) {
    codi_sampler *s = NULL;
    char err[256] = "";
    int rc = codi_sampler_create(p, n, &s, err, sizeof(err));
    if (rc != CODI_OK) fail_msg("create failed (%d): %s", rc, err);
    return s;
}

static int32_t argmax(const float *l, int32_t n) {
    int32_t b = 0;
    for (int32_t i = 1; i < n; i++)
        if (l[i] > l[b]) b = i;
    return b;
}

static void fill_random(float *l, int32_t n, float lo, float hi) {
    for (int32_t i = 0; i < n; i++) l[i] = lo + (hi - lo) * (float)rnd();
}

/* Draw n_draws tokens, count them. */
static void histogram(codi_sampler *s, const float *logits, int32_t n,
                      int n_draws, int *counts) {
    memset(counts, 0, (size_t)n * sizeof(*counts));
    for (int i = 0; i < n_draws; i++) {
        int32_t t = codi_sampler_sample(s, logits);
        assert_true(t >= 0 && t < n);
        counts[t]++;
    }
}

/* ---------------------------------------------------------------- tests */

static void test_defaults(void **state) {
    (void)state;
    codi_sampler_params p = codi_sampler_default_params();
    assert_float_equal(p.temp, 0.8f, 0.0f);
    assert_int_equal(p.top_k, 40);
    assert_float_equal(p.top_p, 0.95f, 0.0f);
    assert_float_equal(p.min_p, 0.05f, 0.0f);
    assert_float_equal(p.repeat_penalty, 1.0f, 0.0f);
    assert_int_equal(p.repeat_last_n, 64);
    assert_true(p.seed == 0xC0D1);
}

static void test_greedy_argmax(void **state) {
    (void)state;
    enum { N = 1000 };
    float l[N];
    codi_sampler_params p = codi_sampler_default_params();
    for (int temp_i = 0; temp_i < 2; temp_i++) {
        p.temp = temp_i == 0 ? 0.0f : -1.0f;
        codi_sampler *s = make(&p, N);
        for (int it = 0; it < 50; it++) {
            fill_random(l, N, -10.0f, 10.0f);
            assert_int_equal(codi_sampler_sample(s, l), argmax(l, N));
        }
        /* Ties go to the lowest id. */
        for (int i = 0; i < N; i++) l[i] = 0.0f;
        l[700] = 3.0f;
        l[42] = 3.0f;
        l[900] = 3.0f;
        assert_int_equal(codi_sampler_sample(s, l), 42);
        codi_sampler_free(s);
    }
}

static void test_top_k1_is_greedy(void **state) {
    (void)state;
    enum { N = 5000 };
    float l[N];
    static const float temps[] = {0.05f, 0.8f, 1.5f, 100.0f};
    for (size_t t = 0; t < sizeof(temps) / sizeof(temps[0]); t++) {
        codi_sampler_params p = codi_sampler_default_params();
        p.temp = temps[t];
        p.top_k = 1;
        p.seed = 1000 + t;
        codi_sampler *s = make(&p, N);
        for (int it = 0; it < 40; it++) {
            fill_random(l, N, -5.0f, 5.0f);
            assert_int_equal(codi_sampler_sample(s, l), argmax(l, N));
        }
        codi_sampler_free(s);
    }
}

static void test_seeds(void **state) {
    (void)state;
    enum { N = 64, STEPS = 200 };
    float l[N];
    fill_random(l, N, 0.0f, 1.0f);
    codi_sampler_params p = plain_params(1.0f);
    p.seed = 7;
    codi_sampler *a = make(&p, N), *b = make(&p, N);
    p.seed = 8;
    codi_sampler *c = make(&p, N);
    int32_t sa[STEPS];
    int differ = 0;
    for (int i = 0; i < STEPS; i++) {
        sa[i] = codi_sampler_sample(a, l);
        assert_int_equal(sa[i], codi_sampler_sample(b, l));
        differ += sa[i] != codi_sampler_sample(c, l);
    }
    assert_true(differ > STEPS / 2);
    /* Reset reseeds: the same sequence again. */
    codi_sampler_reset(a);
    for (int i = 0; i < STEPS; i++) assert_int_equal(codi_sampler_sample(a, l), sa[i]);
    codi_sampler_free(a);
    codi_sampler_free(b);
    codi_sampler_free(c);
}

/* Known values of the PRNG chain for seed 0xC0D1: pins the stream so a
 * change in the generator or the draw shows up (cross-platform check). */
static void test_seed_stream_pinned(void **state) {
    (void)state;
    enum { N = 10 };
    float l[N] = {0};
    codi_sampler_params p = plain_params(1.0f);
    codi_sampler *s = make(&p, N);
    int32_t got[16];
    for (int i = 0; i < 16; i++) got[i] = codi_sampler_sample(s, l);
    codi_sampler_reset(s);
    for (int i = 0; i < 16; i++) assert_int_equal(codi_sampler_sample(s, l), got[i]);
    /* Uniform logits: the token is floor(u * 10) of the uniform draw. */
    static const int32_t expected[16] = {1, 4, 8, 9, 9, 3, 5, 8,
                                         3, 3, 2, 8, 2, 4, 5, 3};
    for (int i = 0; i < 16; i++) assert_int_equal(got[i], expected[i]);
    codi_sampler_free(s);
}

static void check_softmax_frequencies(const float *l, int32_t n, float temp,
                                      int draws, double tol) {
    codi_sampler_params p = plain_params(temp);
    codi_sampler *s = make(&p, n);
    int counts[16];
    histogram(s, l, n, draws, counts);
    double z = 0.0, mx = -INFINITY;
    for (int32_t i = 0; i < n; i++) mx = fmax(mx, l[i]);
    for (int32_t i = 0; i < n; i++) z += exp((l[i] - mx) / temp);
    for (int32_t i = 0; i < n; i++) {
        double want = exp((l[i] - mx) / temp) / z;
        double got = (double)counts[i] / draws;
        if (fabs(got - want) > tol)
            fail_msg("temp %g token %d: freq %.4f, softmax %.4f", (double)temp,
                     (int)i, got, want);
    }
    codi_sampler_free(s);
}

static void test_frequencies_match_softmax(void **state) {
    (void)state;
    static const float l[6] = {1.0f, 0.5f, 0.0f, -0.5f, 2.0f, -1.0f};
    check_softmax_frequencies(l, 6, 1.0f, 200000, 0.005);
    check_softmax_frequencies(l, 6, 0.7f, 200000, 0.005);
    check_softmax_frequencies(l, 6, 2.5f, 200000, 0.005);
}

/* Probabilities {0.5, 0.25, 0.15, 0.07, 0.03} placed at shuffled ids. */
static const int32_t known_ids[5] = {3, 0, 4, 1, 2};
static const double known_p[5] = {0.5, 0.25, 0.15, 0.07, 0.03};

static void known_logits(float *l) {
    for (int i = 0; i < 5; i++) l[known_ids[i]] = (float)log(known_p[i]);
}

/* Sample and check that exactly the n_keep most probable tokens occur, with
 * frequencies of their renormalised probabilities (temp 1). */
static void check_keeps(const codi_sampler_params *p, int n_keep) {
    float l[5];
    known_logits(l);
    codi_sampler *s = make(p, 5);
    int counts[5];
    enum { DRAWS = 40000 };
    histogram(s, l, 5, DRAWS, counts);
    double mass = 0.0;
    for (int i = 0; i < n_keep; i++) mass += known_p[i];
    for (int i = 0; i < 5; i++) {
        int c = counts[known_ids[i]];
        if (i >= n_keep) {
            if (c != 0) fail_msg("rank %d drawn %d times, should be excluded", i, c);
        } else {
            double want = known_p[i] / mass, got = (double)c / DRAWS;
            if (fabs(got - want) > 0.01)
                fail_msg("rank %d: freq %.4f, want %.4f", i, got, want);
        }
    }
    codi_sampler_free(s);
}

static void test_top_p(void **state) {
    (void)state;
    codi_sampler_params p = plain_params(1.0f);
    p.top_p = 0.7f; /* 0.5 < 0.7 <= 0.75 */
    check_keeps(&p, 2);
    p.top_p = 0.85f; /* 0.75 < 0.85 <= 0.90 */
    check_keeps(&p, 3);
    p.top_p = 0.4f;
    check_keeps(&p, 1);
    p.top_p = 0.0f; /* documented: keeps the most probable token */
    check_keeps(&p, 1);
    p.top_p = 0.99f;
    check_keeps(&p, 5);
    /* With top-k first, top-p renormalises over the k kept:
     * k=3: .5/.9=.556, +.25/.9=.833 < .85 -> 3; top_p .8 -> 2. */
    p.top_k = 3;
    p.top_p = 0.85f;
    check_keeps(&p, 3);
    p.top_p = 0.8f;
    check_keeps(&p, 2);
}

static void test_top_k(void **state) {
    (void)state;
    codi_sampler_params p = plain_params(1.0f);
    for (int k = 1; k <= 5; k++) {
        p.top_k = k;
        check_keeps(&p, k);
    }
    p.top_k = 100; /* more than the vocabulary */
    check_keeps(&p, 5);
}

static void test_min_p(void **state) {
    (void)state;
    codi_sampler_params p = plain_params(1.0f);
    p.min_p = 0.2f; /* floor 0.1: keeps .5 .25 .15 */
    check_keeps(&p, 3);
    p.min_p = 0.4f; /* floor 0.2: keeps .5 .25 */
    check_keeps(&p, 2);
    p.min_p = 0.1f; /* floor 0.05: keeps .5 .25 .15 .07 */
    check_keeps(&p, 4);
    p.min_p = 1.0f;
    check_keeps(&p, 1);
    p.min_p = 5.0f;
    check_keeps(&p, 1);
    /* Chained after top-p: top-p .99 keeps all, min-p .4 keeps 2. */
    p.top_p = 0.99f;
    p.min_p = 0.4f;
    check_keeps(&p, 2);
}

/* Oracle on a large vocabulary: sort everything, then apply the chain. */
typedef struct {
    float l;
    int32_t id;
} ref_cand;

static int ref_cmp(const void *a, const void *b) {
    const ref_cand *x = a, *y = b;
    if (x->l != y->l) return x->l > y->l ? -1 : 1;
    return x->id < y->id ? -1 : 1;
}

static void ref_allowed(const float *l, int32_t n, const codi_sampler_params *p,
                        uint8_t *allowed) {
    ref_cand *c = malloc((size_t)n * sizeof(*c));
    assert_non_null(c);
    for (int32_t i = 0; i < n; i++) c[i] = (ref_cand){l[i], i};
    qsort(c, (size_t)n, sizeof(*c), ref_cmp);
    int32_t m = n;
    if (p->top_k > 0 && p->top_k < m) m = p->top_k;
    if (p->top_p < 1.0f) {
        double z = 0.0, cum = 0.0;
        for (int32_t i = 0; i < m; i++) z += exp((double)c[i].l - c[0].l);
        for (int32_t i = 0; i < m; i++) {
            cum += exp((double)c[i].l - c[0].l) / z;
            if (cum >= p->top_p) {
                m = i + 1;
                break;
            }
        }
    }
    if (p->min_p > 0.0f) {
        int32_t k = 0;
        while (k < m && c[k].l >= c[0].l + logf(p->min_p)) k++;
        m = k > 0 ? k : 1;
    }
    memset(allowed, 0, (size_t)n);
    for (int32_t i = 0; i < m; i++) allowed[c[i].id] = 1;
    free(c);
}

static void check_large(const codi_sampler_params *p, const float *l, int32_t n,
                        int draws, int32_t min_distinct) {
    uint8_t *allowed = malloc((size_t)n);
    uint8_t *seen = calloc((size_t)n, 1);
    assert_non_null(allowed);
    assert_non_null(seen);
    ref_allowed(l, n, p, allowed);
    codi_sampler *s = make(p, n);
    int32_t distinct = 0;
    for (int i = 0; i < draws; i++) {
        int32_t t = codi_sampler_sample(s, l);
        assert_true(t >= 0 && t < n);
        if (!allowed[t]) fail_msg("token %d drawn but excluded by the oracle", (int)t);
        distinct += !seen[t];
        seen[t] = 1;
    }
    assert_true(distinct >= min_distinct);
    codi_sampler_free(s);
    free(allowed);
    free(seen);
}

static void test_large_vocab_against_oracle(void **state) {
    (void)state;
    enum { N = 50000 };
    float *l = malloc(N * sizeof(*l));
    assert_non_null(l);
    fill_random(l, N, 0.0f, 4.0f); /* a wide nucleus: thousands of tokens */

    codi_sampler_params p = plain_params(1.0f);
    p.top_k = 40;
    check_large(&p, l, N, 2000, 30);

    p = plain_params(1.0f);
    p.top_p = 0.9f; /* no top-k: the bucketed path */
    check_large(&p, l, N, 600, 400);

    p = plain_params(0.8f);
    p.top_p = 0.3f;
    p.min_p = 0.5f;
    check_large(&p, l, N, 600, 100);

    p = codi_sampler_default_params();
    check_large(&p, l, N, 2000, 20);

    /* Peaked: a handful of big logits, the nucleus fits the first prefix. */
    fill_random(l, N, -20.0f, 0.0f);
    for (int i = 0; i < 10; i++) l[(i * 4999) % N] = 5.0f + (float)i * 0.1f;
    p = plain_params(1.0f);
    p.top_p = 0.95f;
    check_large(&p, l, N, 2000, 5);
    free(l);
}

/* Top-p boundary inside a block of equal logits on a vocabulary big enough
 * for the bucketed path: three tokens hold .5/.25/.15, the other 4997
 * share .1 equally. top_p .95 keeps the three and the 2499 lowest ids of
 * the flat block (ties go to the lower id), give or take float rounding. */
static void test_top_p_flat_tail(void **state) {
    (void)state;
    enum { N = 5000 };
    static float l[N];
    const int32_t special[3] = {4000, 10, 2500};
    const double sp[3] = {0.5, 0.25, 0.15};
    for (int32_t i = 0; i < N; i++) l[i] = (float)log(0.1 / (N - 3));
    for (int i = 0; i < 3; i++) l[special[i]] = (float)log(sp[i]);

    codi_sampler_params p = plain_params(1.0f);
    p.top_p = 0.85f;
    codi_sampler *s = make(&p, N);
    for (int i = 0; i < 2000; i++) {
        int32_t t = codi_sampler_sample(s, l);
        assert_true(t == special[0] || t == special[1] || t == special[2]);
    }
    codi_sampler_free(s);

    p.top_p = 0.95f;
    s = make(&p, N);
    int32_t max_rank = -1;
    for (int i = 0; i < 2000; i++) {
        int32_t t = codi_sampler_sample(s, l);
        if (t == special[0] || t == special[1] || t == special[2]) continue;
        int32_t rank = t - (t > 10) - (t > 2500) - (t > 4000);
        if (rank > max_rank) max_rank = rank;
    }
    assert_true(max_rank <= 2499 + 3);
    assert_true(max_rank >= 2000);
    codi_sampler_free(s);
}

static void test_repetition_penalty(void **state) {
    (void)state;
    enum { N = 8 };
    float l[N] = {2.0f, 1.9f, 0.0f, -3.0f, -3.0f, -3.0f, -3.0f, -3.0f};
    codi_sampler_params p = plain_params(0.0f);
    p.repeat_penalty = 1.1f;
    p.repeat_last_n = 2;
    codi_sampler *s = make(&p, N);
    assert_int_equal(codi_sampler_sample(s, l), 0);
    codi_sampler_accept(s, 0); /* 2.0 / 1.1 = 1.82 < 1.9 */
    assert_int_equal(codi_sampler_sample(s, l), 1);
    codi_sampler_accept(s, 5);
    assert_int_equal(codi_sampler_sample(s, l), 1); /* 0 still in window */
    codi_sampler_accept(s, 6);
    assert_int_equal(codi_sampler_sample(s, l), 0); /* 0 left the window */
    codi_sampler_accept(s, 0);
    codi_sampler_reset(s);
    assert_int_equal(codi_sampler_sample(s, l), 0);

    /* Negative logits are multiplied: -1.0 * 1.1 = -1.1 < -1.05. */
    float neg[N] = {-1.0f, -1.05f, -4, -4, -4, -4, -4, -4};
    codi_sampler_accept(s, 0);
    assert_int_equal(codi_sampler_sample(s, neg), 1);
    codi_sampler_free(s);

    /* A token repeated in the window is penalised once, not per copy. */
    float once[N] = {2.0f, 1.7f, 0, 0, 0, 0, 0, 0};
    p.repeat_last_n = 8;
    s = make(&p, N);
    codi_sampler_accept(s, 0);
    codi_sampler_accept(s, 0);
    codi_sampler_accept(s, 0);
    assert_int_equal(codi_sampler_sample(s, once), 0); /* 1.82 > 1.7 */
    /* Out-of-range ids are ignored. */
    codi_sampler_accept(s, -1);
    codi_sampler_accept(s, N);
    assert_int_equal(codi_sampler_sample(s, once), 0);
    codi_sampler_free(s);

    /* repeat_last_n = 0 or penalty 1: off. */
    p.repeat_last_n = 0;
    s = make(&p, N);
    codi_sampler_accept(s, 0);
    assert_int_equal(codi_sampler_sample(s, l), 0);
    codi_sampler_free(s);
}

static void test_logits_untouched(void **state) {
    (void)state;
    enum { N = 5000 };
    float l[N], copy[N];
    fill_random(l, N, -8.0f, 8.0f);
    l[17] = NAN;
    memcpy(copy, l, sizeof(l));
    codi_sampler_params p = codi_sampler_default_params();
    p.repeat_penalty = 1.3f;
    codi_sampler *s = make(&p, N);
    for (int i = 0; i < 100; i++) {
        int32_t t = codi_sampler_sample(s, l);
        assert_true(t >= 0 && t < N && t != 17);
        codi_sampler_accept(s, t);
        codi_sampler_accept(s, argmax(copy, 16));
    }
    assert_memory_equal(l, copy, sizeof(l));
    codi_sampler_free(s);
}

static void test_edge_logits(void **state) {
    (void)state;
    float l[4] = {NAN, 1.0f, 0.0f, NAN};
    codi_sampler_params p = plain_params(0.0f);
    codi_sampler *s = make(&p, 4);
    assert_int_equal(codi_sampler_sample(s, l), 1); /* NaN counts as -inf */
    codi_sampler_free(s);

    /* All -inf: still a valid token. */
    float ninf[4] = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    p = codi_sampler_default_params();
    s = make(&p, 4);
    for (int i = 0; i < 20; i++) {
        int32_t t = codi_sampler_sample(s, ninf);
        assert_true(t >= 0 && t < 4);
    }
    /* +inf wins. */
    float pinf[4] = {0.0f, INFINITY, 3.0f, -INFINITY};
    for (int i = 0; i < 20; i++) assert_int_equal(codi_sampler_sample(s, pinf), 1);
    codi_sampler_free(s);

    /* A vocabulary of one. */
    float one[1] = {0.5f};
    s = make(&p, 1);
    assert_int_equal(codi_sampler_sample(s, one), 0);
    codi_sampler_free(s);
}

static void expect_einval(const codi_sampler_params *p, int32_t n) {
    codi_sampler *s = (codi_sampler *)0x1;
    char err[256] = "";
    assert_int_equal(codi_sampler_create(p, n, &s, err, sizeof(err)), CODI_EINVAL);
    assert_null(s);
    assert_true(strlen(err) > 0);
    assert_non_null(strstr(err, "sampler"));
}

static void test_invalid_params(void **state) {
    (void)state;
    codi_sampler_params d = codi_sampler_default_params(), p;
    expect_einval(&d, 0);
    expect_einval(&d, -5);
    p = d; p.temp = NAN; expect_einval(&p, 10);
    p = d; p.temp = INFINITY; expect_einval(&p, 10);
    p = d; p.top_p = NAN; expect_einval(&p, 10);
    p = d; p.min_p = NAN; expect_einval(&p, 10);
    p = d; p.repeat_penalty = 0.0f; expect_einval(&p, 10);
    p = d; p.repeat_penalty = -1.0f; expect_einval(&p, 10);
    p = d; p.repeat_penalty = NAN; expect_einval(&p, 10);
    p = d; p.repeat_last_n = -1; expect_einval(&p, 10);
    char err[64];
    assert_int_equal(codi_sampler_create(&d, 10, NULL, err, sizeof(err)), CODI_EINVAL);

    /* Accepted: negative temp (greedy), odd top_k/top_p/min_p, NULL params. */
    codi_sampler *s = NULL;
    p = d; p.temp = -2.0f; p.top_k = -3; p.top_p = -1.0f; p.min_p = -1.0f;
    assert_int_equal(codi_sampler_create(&p, 10, &s, NULL, 0), CODI_OK);
    codi_sampler_free(s);
    assert_int_equal(codi_sampler_create(NULL, 10, &s, NULL, 0), CODI_OK);
    float l[10] = {0, 0, 0, 9, 0, 0, 0, 0, 0, 0};
    assert_int_equal(codi_sampler_sample(s, l), 3);
    assert_true(codi_sampler_sample(s, NULL) < 0);
    codi_sampler_free(s);

    /* NULL handles are harmless. */
    codi_sampler_free(NULL);
    codi_sampler_accept(NULL, 1);
    codi_sampler_reset(NULL);
    assert_true(codi_sampler_sample(NULL, l) < 0);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_defaults),
        cmocka_unit_test(test_greedy_argmax),
        cmocka_unit_test(test_top_k1_is_greedy),
        cmocka_unit_test(test_seeds),
        cmocka_unit_test(test_seed_stream_pinned),
        cmocka_unit_test(test_frequencies_match_softmax),
        cmocka_unit_test(test_top_p),
        cmocka_unit_test(test_top_k),
        cmocka_unit_test(test_min_p),
        cmocka_unit_test(test_large_vocab_against_oracle),
        cmocka_unit_test(test_top_p_flat_tail),
        cmocka_unit_test(test_repetition_penalty),
        cmocka_unit_test(test_logits_untouched),
        cmocka_unit_test(test_edge_logits),
        cmocka_unit_test(test_invalid_params),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
