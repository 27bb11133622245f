/* KV cache types, token budgets and chunked prefill (issue 6):
 *   - q8/q4 group quantization round trip within half a step;
 *   - the dispatched (AVX2) attention kernels of the q8/q4 cache against
 *     their scalar references;
 *   - the per-channel key kernel (KIVI groups of 16 slots) against its
 *     reference;
 *   - q8 logits close to f16's; q4 keys grouped per token: smoothing
 *     closer than without; q4 keys grouped per channel (the default)
 *     closer than both;
 *   - per-channel keys: truncating into a quantized group and decoding
 *     again stays close to never truncating; token-by-token decoding
 *     matches one pass;
 *   - budget bookkeeping: never more than the budget after a pass, sinks
 *     and the recent window kept, positions distinct and correct, the
 *     window policy keeps exactly sinks + window; a budget that evicts
 *     nothing changes no logit; truncation drops later positions;
 *   - prefill in chunks of 7 tokens gives the logits of one 512-token pass
 *     (within float tolerance), for f16, q8 and q4;
 *   - impossible settings are refused with a clear error.
 * Uses the default model (tools/fetch_models.sh). CODI_TEST_QUICK=1
 * (sanitizer builds) uses shorter texts. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "codi.h"
#include "kernels/kvcache.h"
#include "model/model.h"
#include "tensor/types.h"

#define MODEL "models/SmolLM2-135M-Instruct.Q4_1.gguf"

static codi_model *g_model;
static int32_t *g_toks; /* tokens of tests/data/eval.txt */
static int32_t g_ntok;
static int g_quick;

static uint64_t rng = 88172645463325252ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 40) & 0xFFFFFF) / 8388608.0f - 1.0f;
}

static int setup(void **state) {
    (void)state;
    char err[512];
    const char *qk = getenv("CODI_TEST_QUICK");
    g_quick = qk && *qk && *qk != '0';
    if (codi_model_load(MODEL, NULL, &g_model, err, sizeof(err)) != 0) {
        fprintf(stderr, "cannot load %s (run tools/fetch_models.sh): %s\n", MODEL, err);
        return -1;
    }
    FILE *f = fopen("tests/data/eval.txt", "rb");
    if (!f)
        return -1;
    static char text[1 << 16];
    const size_t n = fread(text, 1, sizeof(text) - 1, f);
    fclose(f);
    g_toks = malloc((n + 8) * sizeof(int32_t));
    g_ntok = codi_tokenize(g_model, text, n, g_toks, (int32_t)(n + 8), true, false);
    return g_ntok > 600 ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    free(g_toks);
    codi_model_free(g_model);
    return 0;
}

static codi_context *make_ctx(codi_context_params p) {
    char err[512];
    codi_context *c = NULL;
    if (codi_context_create(g_model, &p, &c, err, sizeof(err)) != 0)
        fail_msg("context: %s", err);
    return c;
}

static codi_context_params base_params(void) {
    codi_context_params p = codi_context_default_params();
    p.n_ctx = 1024;
    p.n_threads = 2;
    return p;
}

/* ---------------------------------------------------------------- kernels */

static void test_quantize_group(void **state) {
    (void)state;
    for (int bits = 4; bits <= 8; bits += 4)
        for (int trial = 0; trial < 200; trial++) {
            float x[64];
            uint8_t codes[64];
            const float amp = trial % 3 == 0 ? 100.0f : trial % 3 == 1 ? 1.0f : 0.01f;
            for (int i = 0; i < 32; i++)
                x[i] = amp * frand();
            if (trial % 5 == 0)
                x[trial % 32] *= 20.0f; /* an outlier */
            if (trial == 7)
                for (int i = 0; i < 32; i++)
                    x[i] = 3.25f; /* constant group: exact */
            uint16_t s, m;
            codi_kvq_quantize_group(bits, x, 32, codes, &s, &m);
            const float sf = codi_fp16_to_fp32(s), mf = codi_fp16_to_fp32(m);
            float lo = x[0], hi = x[0];
            for (int i = 0; i < 32; i++) {
                lo = fminf(lo, x[i]);
                hi = fmaxf(hi, x[i]);
            }
            const float step = (hi - lo) / (float)((1 << bits) - 1);
            for (int i = 0; i < 32; i++) {
                assert_true(codes[i] < (1 << bits));
                const float dec = sf * (float)codes[i] + mf;
                /* half a step, plus the fp16 rounding of scale and minimum */
                const float tol = 0.5f * step * 1.01f + fabsf(lo) * 1e-3f + (hi - lo) * 2e-3f + 1e-6f;
                if (fabsf(dec - x[i]) > tol)
                    fail_msg("bits %d trial %d: x %g decoded %g (tol %g)", bits, trial, x[i], dec, tol);
            }
        }
}

/* The budget's importance kernel against its reference: the same int64
 * sums bit for bit, over head counts, lengths around the vector width,
 * with and without |v|, weights near the top of the documented range. */
static void test_imp_accumulate_vs_ref(void **state) {
    (void)state;
    enum { LD = 160 };
    float p[4 * LD], vn[LD];
    int64_t a[LD], b[LD];
    const int ns[] = {1, 7, 8, 9, 16, 33, 150};
    for (int trial = 0; trial < 50; trial++) {
        for (int i = 0; i < 4 * LD; i++)
            p[i] = 0.5f * (frand() + 1.0f) * (trial % 7 == 0 ? 1e-6f : 1.0f);
        for (int t = 0; t < LD; t++)
            vn[t] = 60.0f * 0.5f * (frand() + 1.0f);
        for (int t = 0; t < LD; t++)
            a[t] = b[t] = (int64_t)t * 1000003 - 77;
        const int G = 1 + trial % 4, n = ns[trial % 7];
        const float w = trial % 3 == 0 ? 1.0f : 0.5f * (frand() + 1.0f);
        const float *v = trial % 2 ? vn : NULL;
        codi_imp_accumulate(a, p, LD, G, n, w, v);
        codi_imp_accumulate_ref(b, p, LD, G, n, w, v);
        assert_memory_equal(a, b, sizeof(a));
        bool moved = false;
        for (int t = 0; t < n; t++)
            moved = moved || a[t] != (int64_t)t * 1000003 - 77;
        assert_true(moved);
    }
}

static void test_kernels_vs_ref(void **state) {
    (void)state;
    enum { CAP = 200 };
    const int hds[] = {64, 256, 48};
    for (int bits = 4; bits <= 8; bits += 4)
        for (int hi = 0; hi < 3; hi++) {
            const int hd = hds[hi], gs = hd % 32 == 0 ? 32 : hd, ng = hd / gs;
            const size_t ld = codi_kvq_row_bytes(bits, CAP);
            uint8_t *kT = calloc((size_t)hd * ld, 1);
            uint16_t *ks = malloc((size_t)ng * CAP * 2), *km = malloc((size_t)ng * CAP * 2);
            float col[256];
            uint8_t codes[256];
            for (int t = 0; t < CAP; t++) {
                for (int g = 0; g < ng; g++) {
                    for (int i = 0; i < gs; i++)
                        col[i] = frand() * (1.0f + (float)g);
                    codi_kvq_quantize_group(bits, col, gs, codes, &ks[g * CAP + t], &km[g * CAP + t]);
                    for (int i = 0; i < gs; i++)
                        codi_kvq_set(bits, kT + (size_t)(g * gs + i) * ld, (size_t)t, codes[i]);
                }
            }
            float q[3 * 256], p[3 * CAP];
            for (int i = 0; i < 3 * hd; i++)
                q[i] = frand();
            for (int i = 0; i < 3 * CAP; i++)
                p[i] = 0.5f * (frand() + 1.0f);
            const int t0s[] = {0, 1, 5, 8};
            const int ns[] = {1, 7, 8, 9, 17, 33, 150};
            for (int G = 1; G <= 3; G++)
                for (int a = 0; a < 4; a++)
                    for (int b = 0; b < 7; b++) {
                        const int t0 = t0s[a], n = ns[b];
                        float got[3 * CAP], want[3 * CAP], og[3 * 256], ow[3 * 256], tmp[3 * CAP];
                        codi_attn_scores_kvq(bits, q, G, hd, gs, kT, ld, ks, km, CAP, t0, n, got, CAP, 0.125f);
                        codi_attn_scores_kvq_ref(bits, q, G, hd, gs, kT, ld, ks, km, CAP, t0, n, want, CAP,
                                                 0.125f);
                        for (int g = 0; g < G; g++)
                            for (int t = 0; t < n; t++) {
                                const float w = want[g * CAP + t], d = fabsf(got[g * CAP + t] - w);
                                if (d > 1e-4f * (1.0f + fabsf(w)) * sqrtf((float)hd))
                                    fail_msg("scores bits %d hd %d G %d t0 %d n %d: [%d][%d] %g vs %g", bits, hd,
                                             G, t0, n, g, t, got[g * CAP + t], w);
                            }
                        codi_attn_values_kvq(bits, p, CAP, G, hd, gs, kT, ld, ks, km, CAP, t0, n, og, tmp);
                        codi_attn_values_kvq_ref(bits, p, CAP, G, hd, gs, kT, ld, ks, km, CAP, t0, n, ow);
                        for (int i = 0; i < G * hd; i++)
                            if (fabsf(og[i] - ow[i]) > 1e-4f * (1.0f + fabsf(ow[i])) * sqrtf((float)n))
                                fail_msg("values bits %d hd %d G %d t0 %d n %d: [%d] %g vs %g", bits, hd, G, t0,
                                         n, i, og[i], ow[i]);
                    }
            free(kT);
            free(ks);
            free(km);
        }
}

/* Per-channel keys: codi_attn_scores_kvc against its reference. */
static void test_kvc_kernel_vs_ref(void **state) {
    (void)state;
    enum { CAP = 200, NGC = (CAP + CODI_KVC_G - 1) / CODI_KVC_G };
    const int hds[] = {64, 128, 48};
    for (int bits = 4; bits <= 8; bits += 4)
        for (int hi = 0; hi < 3; hi++) {
            const int hd = hds[hi];
            const size_t ld = codi_kvq_row_bytes(bits, NGC * CODI_KVC_G);
            uint8_t *kT = calloc((size_t)hd * ld, 1);
            uint16_t *ks = malloc((size_t)hd * NGC * 2), *km = malloc((size_t)hd * NGC * 2); /* [NGC][hd] */
            for (int i = 0; i < hd; i++)
                for (int j = 0; j < NGC; j++) {
                    float x[CODI_KVC_G];
                    uint8_t codes[CODI_KVC_G];
                    /* channel i: its own range and offset (outlier channels) */
                    const float amp = i % 7 == 0 ? 20.0f : 1.0f, off = (float)(i % 5) - 2.0f;
                    for (int u = 0; u < CODI_KVC_G; u++)
                        x[u] = off + amp * frand();
                    codi_kvq_quantize_group(bits, x, CODI_KVC_G, codes, &ks[j * hd + i], &km[j * hd + i]);
                    for (int u = 0; u < CODI_KVC_G; u++)
                        codi_kvq_set(bits, kT + (size_t)i * ld, (size_t)(j * CODI_KVC_G + u), codes[u]);
                }
            float q[3 * 128];
            for (int i = 0; i < 3 * hd; i++)
                q[i] = frand();
            const int t0s[] = {0, 1, 5, 16, 17};
            const int ns[] = {0, 1, 7, 15, 16, 31, 150};
            for (int G = 1; G <= 3; G++)
                for (int a = 0; a < 5; a++)
                    for (int b = 0; b < 7; b++) {
                        const int t0 = t0s[a], n = ns[b];
                        float got[3 * CAP], want[3 * CAP];
                        for (int i = 0; i < 3 * CAP; i++)
                            got[i] = want[i] = 1234.5f; /* slots past n must stay untouched */
                        codi_attn_scores_kvc(bits, q, G, hd, kT, ld, ks, km, (size_t)hd, t0, n, got, CAP, 0.125f);
                        codi_attn_scores_kvc_ref(bits, q, G, hd, kT, ld, ks, km, (size_t)hd, t0, n, want, CAP,
                                                 0.125f);
                        for (int g = 0; g < G; g++)
                            for (int t = 0; t < n + 2 && t < CAP; t++) {
                                const float w = want[g * CAP + t], d = fabsf(got[g * CAP + t] - w);
                                if (d > 1e-4f * (1.0f + fabsf(w)) * sqrtf((float)hd))
                                    fail_msg("kvc bits %d hd %d G %d t0 %d n %d: [%d][%d] %g vs %g", bits, hd, G,
                                             t0, n, g, t, got[g * CAP + t], w);
                            }
                    }
            free(kT);
            free(ks);
            free(km);
        }
}

/* ---------------------------------------------------------------- quality */

/* Log-softmax of n_vocab logits into out. */
static void log_softmax(const float *x, float *out, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++)
        mx = fmaxf(mx, x[i]);
    double s = 0.0;
    for (int i = 0; i < n; i++)
        s += exp((double)(x[i] - mx));
    const float ls = (float)log(s);
    for (int i = 0; i < n; i++)
        out[i] = x[i] - mx - ls;
}

/* All logits of the first n eval tokens under params p. */
static float *all_logits(codi_context_params p, int n) {
    codi_context *c = make_ctx(p);
    char err[512];
    assert_int_equal(codi_decode(c, g_toks, n, 0, true, err, sizeof(err)), 0);
    const int nv = codi_model_n_vocab(g_model);
    float *out = malloc((size_t)n * nv * sizeof(float));
    for (int i = 0; i < n; i++)
        memcpy(out + (size_t)i * nv, codi_get_logits(c, i), (size_t)nv * sizeof(float));
    codi_context_free(c);
    return out;
}

/* Mean KL(base || other) over positions from..n-1, and top-1 agreement. */
static double mean_kl(const float *base, const float *other, int from, int n, double *top1) {
    const int nv = codi_model_n_vocab(g_model);
    float *a = malloc((size_t)nv * sizeof(float)), *b = malloc((size_t)nv * sizeof(float));
    double kl = 0.0;
    int same = 0;
    for (int i = from; i < n; i++) {
        log_softmax(base + (size_t)i * nv, a, nv);
        log_softmax(other + (size_t)i * nv, b, nv);
        double k = 0.0;
        int ta = 0, tb = 0;
        for (int v = 0; v < nv; v++) {
            k += exp((double)a[v]) * ((double)a[v] - (double)b[v]);
            ta = a[v] > a[ta] ? v : ta;
            tb = b[v] > b[tb] ? v : tb;
        }
        kl += k;
        same += ta == tb;
    }
    free(a);
    free(b);
    *top1 = (double)same / (n - from);
    return kl / (n - from);
}

static void test_quantized_cache_quality(void **state) {
    (void)state;
    const int n = g_quick ? 160 : 300;
    codi_context_params p = base_params();
    float *f16 = all_logits(p, n);
    p.kv_type = CODI_KV_Q8;
    float *q8 = all_logits(p, n);
    p.kv_type = CODI_KV_Q4;
    float *q4c = all_logits(p, n); /* default: keys per channel */
    p.kv_keys = CODI_KV_KEYS_TOKEN;
    float *q4 = all_logits(p, n); /* per token, smoothed (default there) */
    p.kv_smooth = 0;
    float *q4raw = all_logits(p, n);
    double t8, t4, t4r, t4c;
    const double k8 = mean_kl(f16, q8, 1, n, &t8), k4 = mean_kl(f16, q4, 1, n, &t4),
                 k4r = mean_kl(f16, q4raw, 1, n, &t4r), k4c = mean_kl(f16, q4c, 1, n, &t4c);
    printf("mean KL vs f16 cache over %d positions: q8 %.5f (top-1 %.1f%%), q4 per token smoothed %.5f (%.1f%%), "
           "unsmoothed %.5f (%.1f%%), q4 per channel %.5f (%.1f%%)\n",
           n - 1, k8, 100 * t8, k4, 100 * t4, k4r, 100 * t4r, k4c, 100 * t4c);
    /* bounds at about twice what was measured (release: q8 0.0063, 96%;
     * q4 per token 0.053 smoothed, 0.23 unsmoothed over 300 positions) */
    assert_true(k8 < 0.015);
    assert_true(t8 > 0.90);
    assert_true(k4 < 0.12);
    assert_true(k4 < 0.5 * k4r); /* smoothing helps, clearly */
    assert_true(k4c < k4);       /* per-channel keys help more */
    free(f16);
    free(q8);
    free(q4);
    free(q4raw);
    free(q4c);
}

/* ---------------------------------------------------------------- budget */

static int cmp_i32(const void *a, const void *b) {
    const int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    return (x > y) - (x < y);
}

/* Check the kept positions of every layer and KV head after n tokens;
 * returns how many layers' KV heads do not all keep the same positions. */
static int check_kept(codi_context *c, int n, int budget, int window, int sinks, int policy) {
    const int nl = codi_model_n_layer(g_model), nkv = codi_model_n_head_kv(g_model);
    int32_t pos[2048], first[2048];
    int split = 0;
    for (int l = 0; l < nl; l++) {
        bool same = true;
        for (int kh = 0; kh < nkv; kh++) {
            const int32_t k = codi_kv_seq_positions(c, 0, l, kh, pos, 2048);
            const int expect = n < budget ? n : budget;
            if (k != expect)
                fail_msg("after %d tokens layer %d head %d keeps %d (budget %d)", n, l, kh, k, budget);
            qsort(pos, (size_t)k, sizeof(int32_t), cmp_i32);
            for (int i = 0; i < k; i++) {
                assert_true(pos[i] >= 0 && pos[i] < n);
                if (i > 0 && pos[i] == pos[i - 1])
                    fail_msg("layer %d keeps position %d twice", l, pos[i]);
            }
            /* sinks and the recent window are there */
            for (int s = 0; s < sinks && s < n; s++)
                assert_int_equal(pos[s], s);
            const int w = n < window ? n : window;
            for (int i = 0; i < w; i++)
                assert_int_equal(pos[k - 1 - i], n - 1 - i);
            if (policy == CODI_KV_WINDOW && n > budget)
                for (int i = sinks; i < k; i++)
                    assert_int_equal(pos[i], n - (k - i));
            if (kh == 0)
                memcpy(first, pos, (size_t)k * sizeof(int32_t));
            else
                same = same && !memcmp(first, pos, (size_t)k * sizeof(int32_t));
        }
        split += !same;
    }
    codi_memory_info mi;
    codi_context_memory(c, &mi);
    assert_int_equal(mi.kv_kept, n < budget ? n : budget);
    assert_int_equal(mi.kv_evicted, n > budget ? n - budget : 0);
    return split;
}

static void test_budget_bookkeeping(void **state) {
    (void)state;
    char err[512];
    /* SmolLM2 has no sliding-window layers: ALISA decays on every layer */
    for (int l = 0; l < codi_model_n_layer(g_model); l++)
        assert_true(codi_kv_layer_decay(g_model, l, 0.99f) == 0.99f);
    const int policies[] = {CODI_KV_ALISA, CODI_KV_WINDOW, CODI_KV_H2O};
    const int types[] = {CODI_KV_F16, CODI_KV_Q4, CODI_KV_Q8};
    for (int pi = 0; pi < 3; pi++) {
        codi_context_params p = base_params();
        p.kv_budget = 48;
        p.kv_policy = policies[pi];
        p.kv_window = policies[pi] == CODI_KV_WINDOW ? 44 : 16;
        p.kv_sinks = 4;
        p.kv_type = types[pi];
        p.n_batch = 8;
        codi_context *c = make_ctx(p);
        /* calls of 1..13 tokens: passes of up to 8 tokens each */
        int n = 0, step = 1, split = 0;
        while (n < (g_quick ? 120 : 300)) {
            const int k = step;
            assert_int_equal(codi_decode(c, g_toks + n, k, n, false, err, sizeof(err)), 0);
            n += k;
            split = check_kept(c, n, p.kv_budget, p.kv_window, p.kv_sinks, p.kv_policy);
            step = step % 13 + 1;
        }
        /* alisa and h2o: each KV head keeps the tokens its own queries
         * attend to, so heads differ; window: all keep the same */
        if (p.kv_policy == CODI_KV_WINDOW)
            assert_int_equal(split, 0);
        else
            assert_true(split > 0);
        /* rewinding drops every later position; heads that kept more
         * below the cut evict down to the same count, sinks stay */
        const int back = n - 50;
        codi_kv_truncate(c, back);
        int32_t pos[64];
        const int nkv = codi_model_n_head_kv(g_model);
        for (int l = 0; l < codi_model_n_layer(g_model); l++) {
            const int32_t k0 = codi_kv_seq_positions(c, 0, l, 0, pos, 64);
            for (int kh = 0; kh < nkv; kh++) {
                const int32_t k = codi_kv_seq_positions(c, 0, l, kh, pos, 64);
                assert_int_equal(k, k0);
                assert_true(k >= p.kv_sinks && k <= 48);
                qsort(pos, (size_t)k, sizeof(int32_t), cmp_i32);
                for (int i = 0; i < k; i++) {
                    assert_true(pos[i] < back);
                    assert_true(i == 0 || pos[i] > pos[i - 1]);
                }
                for (int s = 0; s < p.kv_sinks; s++)
                    assert_int_equal(pos[s], s);
            }
        }
        assert_int_equal(codi_kv_seq_positions(c, 0, 0, nkv, pos, 64), -1);
        /* and decoding continues from there */
        assert_int_equal(codi_decode(c, g_toks + back, 20, back, false, err, sizeof(err)), 0);
        assert_non_null(codi_get_logits(c, -1));
        codi_context_free(c);
    }
}

/* A budget that never has to evict gives the logits of no budget exactly:
 * slots are positions then and attention sees the same keys in order. */
static void test_budget_without_eviction(void **state) {
    (void)state;
    const int n = g_quick ? 100 : 200;
    codi_context_params p = base_params();
    p.n_batch = 16;
    float *full = all_logits(p, n);
    p.kv_budget = 400;
    float *bud = all_logits(p, n);
    const int nv = codi_model_n_vocab(g_model);
    assert_memory_equal(full, bud, (size_t)n * nv * sizeof(float));
    free(full);
    free(bud);
}

/* Budgets keep quality in order: the more kept, the closer to the full
 * cache; ALISA no worse than the plain window at 25%. */
static void test_budget_quality(void **state) {
    (void)state;
    const int n = g_quick ? 256 : 512;
    codi_context_params p = base_params();
    p.n_batch = 16;
    float *full = all_logits(p, n);
    double kl[3][2], top;
    const int budgets[] = {n / 2, n / 4};
    const int policies[] = {CODI_KV_ALISA, CODI_KV_WINDOW, CODI_KV_H2O};
    for (int pi = 0; pi < 3; pi++)
        for (int b = 0; b < 2; b++) {
            p.kv_budget = budgets[b];
            p.kv_policy = policies[pi];
            float *x = all_logits(p, n);
            kl[pi][b] = mean_kl(full, x, 1, n, &top);
            free(x);
        }
    printf("mean KL vs full cache, %d tokens: alisa %.4f / %.4f, window %.4f / %.4f, h2o %.4f / %.4f "
           "(budget %d / %d)\n",
           n, kl[0][0], kl[0][1], kl[1][0], kl[1][1], kl[2][0], kl[2][1], budgets[0], budgets[1]);
    for (int pi = 0; pi < 3; pi++)
        assert_true(kl[pi][0] < kl[pi][1]);
    assert_true(kl[0][1] < kl[1][1]);
    free(full);
}

/* ---------------------------------------------------------------- recompute */

/* Rebuilding a cache that evicted nothing reproduces it: the rebuild runs
 * the passes' chunks of n_batch through the same kernels, so the logits
 * after it match those without it (within float tolerance). */
static void test_recompute_without_eviction(void **state) {
    (void)state;
    const int n = g_quick ? 100 : 200;
    codi_context_params p = base_params();
    p.n_batch = 16;
    p.kv_budget = 400;
    float *bud = all_logits(p, n);
    p.kv_recompute = 40;
    codi_context *c = make_ctx(p);
    char err[512];
    assert_int_equal(codi_decode(c, g_toks, n, 0, true, err, sizeof(err)), 0);
    codi_memory_info mi;
    codi_context_memory(c, &mi);
    assert_true(mi.recomputes >= n / 48); /* after the passes ending at 48, 96, ... */
    assert_int_equal(mi.recompute_restored, 0);
    assert_true(mi.recompute_bytes > 0);
    const int nv = codi_model_n_vocab(g_model);
    double mx = 0.0;
    for (int i = 0; i < n; i++) {
        const float *a = bud + (size_t)i * nv, *b = codi_get_logits(c, i);
        for (int v = 0; v < nv; v++)
            mx = fmax(mx, fabs((double)a[v] - (double)b[v]));
    }
    printf("recompute without eviction: %lld rebuilds, max logit difference %.3g\n",
           (long long)mi.recomputes, mx);
    assert_true(mx < 1e-3);
    codi_context_free(c);
    free(bud);
}

/* Bookkeeping after rebuilds: what check_kept demands of any budgeted
 * cache (never more than the budget, sinks and window kept, positions
 * distinct and correct), for every policy and type; and the kept set
 * differs from the one without rebuilds (alisa, h2o: tokens come back). */
static void test_recompute_bookkeeping(void **state) {
    (void)state;
    char err[512];
    const int policies[] = {CODI_KV_ALISA, CODI_KV_WINDOW, CODI_KV_H2O};
    const int types[] = {CODI_KV_Q8, CODI_KV_F16, CODI_KV_Q4};
    const int nl = codi_model_n_layer(g_model);
    for (int pi = 0; pi < 3; pi++) {
        codi_context_params p = base_params();
        p.kv_budget = 48;
        p.kv_policy = policies[pi];
        p.kv_window = policies[pi] == CODI_KV_WINDOW ? 44 : 16;
        p.kv_sinks = 4;
        p.kv_type = types[pi];
        p.n_batch = 8;
        codi_context *plain = make_ctx(p);
        p.kv_recompute = 37;
        codi_context *c = make_ctx(p);
        int n = 0, step = 1, differ = 0;
        int64_t runs = 0;
        while (n < (g_quick ? 120 : 240)) {
            const int k = step;
            assert_int_equal(codi_decode(c, g_toks + n, k, n, false, err, sizeof(err)), 0);
            assert_int_equal(codi_decode(plain, g_toks + n, k, n, false, err, sizeof(err)), 0);
            n += k;
            check_kept(c, n, p.kv_budget, p.kv_window, p.kv_sinks, p.kv_policy);
            codi_memory_info mi;
            codi_context_memory(c, &mi);
            if (mi.recomputes > runs) { /* a rebuild ran in this call */
                runs = mi.recomputes;
                for (int l = 0; l < nl; l++)
                    for (int kh = 0; kh < codi_model_n_head_kv(g_model); kh++) {
                        int32_t a[64], b[64];
                        const int32_t ka = codi_kv_seq_positions(c, 0, l, kh, a, 64);
                        const int32_t kb = codi_kv_seq_positions(plain, 0, l, kh, b, 64);
                        assert_int_equal(ka, kb);
                        qsort(a, (size_t)ka, sizeof(int32_t), cmp_i32);
                        qsort(b, (size_t)kb, sizeof(int32_t), cmp_i32);
                        differ += memcmp(a, b, (size_t)ka * sizeof(int32_t)) != 0;
                    }
            }
            step = step % 13 + 1;
        }
        codi_memory_info mi;
        codi_context_memory(c, &mi);
        printf("recompute, policy %d: %lld rebuilds, %lld tokens restored per layer, "
               "%d layer snapshots differ from no rebuild\n",
               p.kv_policy, (long long)mi.recomputes, (long long)mi.recompute_restored, differ);
        assert_true(mi.recomputes >= n / 50);
        if (p.kv_policy != CODI_KV_WINDOW) {
            assert_true(differ > 0);
            assert_true(mi.recompute_restored > 0);
        } else {
            assert_int_equal(mi.recompute_restored, 0); /* sinks + window either way */
        }
        /* truncation and decoding on still work after rebuilds (the
         * rebuild after the cut counts from it) */
        codi_kv_truncate(c, n - 50);
        assert_int_equal(codi_decode(c, g_toks + n - 50, 60, n - 50, false, err, sizeof(err)), 0);
        codi_memory_info m2;
        codi_context_memory(c, &m2);
        assert_true(m2.recomputes > mi.recomputes);
        for (int l = 0; l < nl; l++) {
            int32_t a[64];
            const int32_t k = codi_kv_seq_positions(c, 0, l, codi_model_n_head_kv(g_model) - 1, a, 64);
            assert_int_equal(k, p.kv_budget);
            for (int i = 0; i < k; i++)
                assert_true(a[i] >= 0 && a[i] < n + 10);
        }
        codi_context_free(plain);
        codi_context_free(c);
    }
}

/* A budget decides evictions by near ties of summed attention: the run
 * must not depend on which thread took which attention item. Logits and
 * every head's kept positions are the same bit for bit with 1 and 3
 * threads (3 on this 2-core machine: items move between threads from run
 * to run), with and without rebuilds. (The float sums this replaced
 * flipped an eviction in a 4096-token `codi ppl` run, 11.46 or 11.52 from
 * run to run, but not within runs this short: this guards the contract.) */
static void test_budget_thread_invariance(void **state) {
    (void)state;
    const int n = g_quick ? 96 : 200, nv = codi_model_n_vocab(g_model);
    const int nl = codi_model_n_layer(g_model), nkv = codi_model_n_head_kv(g_model);
    char err[512];
    for (int rc = 0; rc < 2; rc++) {
        codi_context *ctx[2];
        for (int k = 0; k < 2; k++) {
            codi_context_params p = base_params();
            p.kv_budget = 40;
            p.kv_window = 8;
            p.n_batch = 8;
            p.kv_recompute = rc ? 48 : 0;
            p.n_threads = k ? 3 : 1;
            ctx[k] = make_ctx(p);
        }
        for (int i = 0; i < n; i += 5) {
            const int m = n - i < 5 ? n - i : 5;
            for (int k = 0; k < 2; k++)
                assert_int_equal(codi_decode(ctx[k], g_toks + i, m, i, false, err, sizeof(err)), 0);
            const float *a = codi_get_logits(ctx[0], -1), *b = codi_get_logits(ctx[1], -1);
            if (memcmp(a, b, (size_t)nv * sizeof(float)))
                fail_msg("logits after %d tokens differ between 1 and 3 threads (rebuilds %d)", i + m, rc);
        }
        for (int l = 0; l < nl; l++)
            for (int kh = 0; kh < nkv; kh++) {
                int32_t pa[64], pb[64];
                const int32_t ka = codi_kv_seq_positions(ctx[0], 0, l, kh, pa, 64);
                const int32_t kb = codi_kv_seq_positions(ctx[1], 0, l, kh, pb, 64);
                assert_int_equal(ka, kb);
                assert_memory_equal(pa, pb, (size_t)ka * sizeof(int32_t));
            }
        codi_context_free(ctx[0]);
        codi_context_free(ctx[1]);
    }
}

/* Two sequences under one budget context, decoded in shared batches: each
 * keeps, per layer and KV head, the tokens it keeps when decoded alone
 * (budgets, importance and evictions are per sequence), and its logits
 * stay those of the lone run. Then truncating one sequence leaves the
 * other's slots alone. */
static void test_budget_two_sequences(void **state) {
    (void)state;
    const int n = g_quick ? 90 : 150, off = 200, nv = codi_model_n_vocab(g_model);
    const int nl = codi_model_n_layer(g_model), nkv = codi_model_n_head_kv(g_model);
    char err[512];
    codi_context_params p = base_params();
    p.kv_budget = 40;
    p.kv_window = 8;
    p.n_batch = 8;
    p.n_seq = 2;
    codi_context *both = make_ctx(p);
    p.n_seq = 1;
    codi_context *alone[2] = {make_ctx(p), make_ctx(p)};
    float maxd = 0.0f;
    for (int i = 0; i < n; i += 3) {
        const int m = n - i < 3 ? n - i : 3;
        int32_t tok[6], pos[6], seq[6];
        bool keep[6];
        for (int k = 0; k < 2 * m; k++) {
            const int sq = k / m, j = i + k % m;
            tok[k] = g_toks[sq * off + j];
            pos[k] = j;
            seq[k] = sq;
            keep[k] = k % m == m - 1;
        }
        codi_batch bt = {2 * m, tok, pos, seq, keep};
        assert_int_equal(codi_decode_batch(both, &bt, err, sizeof(err)), 0);
        for (int sq = 0; sq < 2; sq++) {
            assert_int_equal(codi_decode(alone[sq], g_toks + sq * off + i, m, i, false, err, sizeof(err)), 0);
            const float *a = codi_get_logits(both, sq * m + m - 1), *b = codi_get_logits(alone[sq], -1);
            for (int v = 0; v < nv; v++)
                maxd = fmaxf(maxd, fabsf(a[v] - b[v]));
        }
    }
    printf("two sequences under a budget vs each alone: max |logit diff| %.6f\n", maxd);
    assert_true(maxd < 1e-3f);
    int32_t pa[64], pb[64];
    for (int sq = 0; sq < 2; sq++)
        for (int l = 0; l < nl; l++)
            for (int kh = 0; kh < nkv; kh++) {
                const int32_t ka = codi_kv_seq_positions(both, sq, l, kh, pa, 64);
                const int32_t kb = codi_kv_seq_positions(alone[sq], 0, l, kh, pb, 64);
                assert_int_equal(ka, kb);
                assert_memory_equal(pa, pb, (size_t)ka * sizeof(int32_t));
            }
    codi_kv_seq_truncate(both, 0, n / 2);
    for (int l = 0; l < nl; l++)
        for (int kh = 0; kh < nkv; kh++) {
            const int32_t ka = codi_kv_seq_positions(both, 1, l, kh, pa, 64);
            const int32_t kb = codi_kv_seq_positions(alone[1], 0, l, kh, pb, 64);
            assert_int_equal(ka, kb);
            assert_memory_equal(pa, pb, (size_t)ka * sizeof(int32_t));
            const int32_t k0 = codi_kv_seq_positions(both, 0, l, kh, pa, 64);
            for (int i = 0; i < k0; i++)
                assert_true(pa[i] < n / 2);
        }
    codi_context_free(both);
    codi_context_free(alone[0]);
    codi_context_free(alone[1]);
}

/* Quality: with rebuilds every 64 tokens a 25% budget (alisa) stays at
 * least as close to the full cache as without them over 512 tokens
 * (0.0459 -> 0.0314 since KV heads keep their own tokens; 0.0441 -> 0.0338
 * before). Quick runs too use 512: over 256 tokens (budget 64, rebuilds
 * at 128 and 192) rebuilding is no better (0.0481 -> 0.0493). */
static void test_recompute_quality(void **state) {
    (void)state;
    const int n = 512;
    codi_context_params p = base_params();
    p.n_batch = 16;
    float *full = all_logits(p, n);
    p.kv_budget = n / 4;
    float *bud = all_logits(p, n);
    p.kv_recompute = 64;
    float *rc = all_logits(p, n);
    double t0, t1;
    const double k0 = mean_kl(full, bud, 1, n, &t0), k1 = mean_kl(full, rc, 1, n, &t1);
    printf("mean KL vs full cache, %d tokens, budget %d: %.4f (top-1 %.1f%%), rebuilt every 64 tokens "
           "%.4f (%.1f%%)\n",
           n, p.kv_budget, k0, 100 * t0, k1, 100 * t1);
    assert_true(k1 <= k0);
    free(full);
    free(bud);
    free(rc);
}

/* ---------------------------------------------------------------- chunks */

static void test_chunked_prefill(void **state) {
    (void)state;
    const int n = g_quick ? 120 : 300;
    const int types[] = {CODI_KV_F16, CODI_KV_Q8, CODI_KV_Q4};
    for (int ti = 0; ti < 3; ti++) {
        codi_context_params p = base_params();
        p.kv_type = types[ti];
        p.n_batch = 512;
        float *one = all_logits(p, n);
        p.n_batch = 7;
        float *chunked = all_logits(p, n);
        const int nv = codi_model_n_vocab(g_model);
        double maxd = 0.0;
        int same = 0;
        for (int i = 0; i < n; i++) {
            const float *a = one + (size_t)i * nv, *b = chunked + (size_t)i * nv;
            int ta = 0, tb = 0;
            for (int v = 0; v < nv; v++) {
                maxd = fmax(maxd, fabs((double)a[v] - (double)b[v]));
                ta = a[v] > a[ta] ? v : ta;
                tb = b[v] > b[tb] ? v : tb;
            }
            same += ta == tb;
        }
        printf("kv %d: one pass vs chunks of 7: max |logit diff| %.4f, top-1 %d/%d\n", types[ti], maxd, same, n);
        assert_true(maxd < 0.05);
        assert_true(same >= n - 3);
        free(one);
        free(chunked);
    }
}

/* Per-channel keys: decoding token by token gives one pass's logits; a
 * truncation at a group boundary, or inside the open group (its exact keys
 * are kept), and a second decode of the same tokens give them again; a
 * truncation into a group already quantized sends its kept keys back to
 * the open group decoded from their codes, so they are quantized twice:
 * the result stays as close to the f16 cache as one pass is. */
static double max_diff(const float *a, const float *b, int rows, int *same) {
    const int nv = codi_model_n_vocab(g_model);
    double md = 0.0;
    *same = 0;
    for (int i = 0; i < rows; i++) {
        int ta = 0, tb = 0;
        for (int v = 0; v < nv; v++) {
            const size_t o = (size_t)i * nv + (size_t)v;
            md = fmax(md, fabs((double)a[o] - (double)b[o]));
            ta = a[o] > a[(size_t)i * nv + ta] ? v : ta;
            tb = b[o] > b[(size_t)i * nv + tb] ? v : tb;
        }
        *same += ta == tb;
    }
    return md;
}

/* Truncate c to cut, decode tokens cut..n-1 again; their logits in out. */
static void redo_from(codi_context *c, int cut, int n, float *out) {
    char err[512];
    const int nv = codi_model_n_vocab(g_model);
    codi_kv_truncate(c, cut);
    assert_int_equal(codi_kv_seq_len(c, 0), cut);
    assert_int_equal(codi_decode(c, g_toks + cut, n - cut, cut, true, err, sizeof(err)), 0);
    for (int i = cut; i < n; i++)
        memcpy(out + (size_t)(i - cut) * nv, codi_get_logits(c, i - cut), (size_t)nv * sizeof(float));
}

static void test_kch_decode_and_truncate(void **state) {
    (void)state;
    const int n = g_quick ? 80 : 160, nv = codi_model_n_vocab(g_model);
    char err[512];
    codi_context_params p = base_params();
    float *f16 = all_logits(p, n);
    p.kv_type = CODI_KV_Q4;
    p.kv_keys = CODI_KV_KEYS_CHANNEL;
    float *one = all_logits(p, n);
    float *got = malloc((size_t)n * nv * sizeof(float));
    codi_context *c = make_ctx(p);
    for (int i = 0; i < n; i++) {
        assert_int_equal(codi_decode(c, g_toks + i, 1, i, false, err, sizeof(err)), 0);
        memcpy(got + (size_t)i * nv, codi_get_logits(c, -1), (size_t)nv * sizeof(float));
    }
    int same;
    double md = max_diff(got, one, n, &same);
    printf("per-channel keys: token by token vs one pass: max |logit diff| %.5f\n", md);
    assert_true(md < 1e-3);
    /* at a group boundary: exact */
    redo_from(c, 48, n, got);
    md = max_diff(got, one + (size_t)48 * nv, n - 48, &same);
    printf("per-channel keys: truncated to 48 and decoded again: max |logit diff| %.5f\n", md);
    assert_true(md < 1e-3);
    /* into quantized group 2 (slots 32..47): as good as one pass */
    redo_from(c, 37, n, got);
    double t_one, t_got;
    const double kl_one = mean_kl(f16 + (size_t)37 * nv, one + (size_t)37 * nv, 0, n - 37, &t_one);
    const double kl_got = mean_kl(f16 + (size_t)37 * nv, got, 0, n - 37, &t_got);
    md = max_diff(got, one + (size_t)37 * nv, n - 37, &same);
    printf("per-channel keys: truncated to 37 and decoded again: KL vs f16 %.5f (one pass %.5f), "
           "top-1 vs one pass %d/%d\n", kl_got, kl_one, same, n - 37);
    assert_true(kl_got < 1.5 * kl_one + 1e-3);
    assert_true(same >= (n - 37) * 9 / 10);
    codi_context_free(c);
    /* inside the open group: 155 tokens leave 144..154 open; back to 150 */
    c = make_ctx(p);
    assert_int_equal(codi_decode(c, g_toks, n - 5, 0, false, err, sizeof(err)), 0);
    redo_from(c, n - 10, n, got);
    md = max_diff(got, one + (size_t)(n - 10) * nv, 10, &same);
    printf("per-channel keys: truncated inside the open group and decoded again: max |logit diff| %.5f\n", md);
    assert_true(md < 1e-3);
    codi_context_free(c);
    free(got);
    free(one);
    free(f16);
}

/* ---------------------------------------------------------------- errors */

static void expect_refused(codi_context_params p, const char *needle) {
    char err[512] = "";
    codi_context *c = NULL;
    const int rc = codi_context_create(g_model, &p, &c, err, sizeof(err));
    if (rc == 0 || c != NULL || !strstr(err, needle))
        fail_msg("expected an error containing '%s', got rc %d '%s'", needle, rc, err);
    assert_null(strchr(err, '\n'));
}

static void test_bad_settings(void **state) {
    (void)state;
    codi_context_params p = base_params();
    p.kv_type = 3;
    expect_refused(p, "unknown KV cache type");
    p = base_params();
    p.kv_policy = -2;
    expect_refused(p, "unknown KV policy");
    p = base_params();
    p.kv_budget = 20;
    p.kv_window = 16;
    expect_refused(p, "too small for a recent window of 16 plus 4");
    p.kv_policy = CODI_KV_WINDOW;
    p.kv_window = 17;
    expect_refused(p, "too small");
    p = base_params();
    p.kv_budget = -1;
    expect_refused(p, "must not be negative");
    p = base_params();
    p.kv_smooth = 1;
    expect_refused(p, "smoothing");
    p = base_params();
    p.kv_keys = 7;
    expect_refused(p, "unknown key grouping");
    p = base_params();
    p.kv_keys = CODI_KV_KEYS_CHANNEL;
    expect_refused(p, "applies to q8/q4");
    p.kv_type = CODI_KV_Q4;
    p.kv_budget = 256;
    expect_refused(p, "without a token budget");
    p = base_params();
    p.kv_type = CODI_KV_Q4;
    p.kv_keys = CODI_KV_KEYS_TOKEN;
    p.kv_calib = "hi";
    expect_refused(p, "calibration text has");
    /* a budget of at least the context is simply no budget */
    p = base_params();
    p.kv_budget = 5000;
    codi_context *c = make_ctx(p);
    codi_memory_info mi;
    codi_context_memory(c, &mi);
    assert_int_equal(mi.kv_slots, 1024);
    codi_context_free(c);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_quantize_group),
        cmocka_unit_test(test_kernels_vs_ref),
        cmocka_unit_test(test_imp_accumulate_vs_ref),
        cmocka_unit_test(test_kvc_kernel_vs_ref),
        cmocka_unit_test(test_quantized_cache_quality),
        cmocka_unit_test(test_budget_bookkeeping),
        cmocka_unit_test(test_budget_without_eviction),
        cmocka_unit_test(test_budget_quality),
        cmocka_unit_test(test_budget_thread_invariance),
        cmocka_unit_test(test_budget_two_sequences),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_kch_decode_and_truncate),
        cmocka_unit_test(test_recompute_without_eviction),
        cmocka_unit_test(test_recompute_bookkeeping),
        cmocka_unit_test(test_recompute_quality),
        cmocka_unit_test(test_bad_settings),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
