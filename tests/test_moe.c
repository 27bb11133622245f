/* Mixture-of-experts families on tiny random-weight GGUF files
 * (tools/make_synthetic_models.py, written with the gguf PyPI package as
 * llama.cpp's converter writes them), against llama.cpp's logits for the
 * same files (tools/make_reference_model.py mixtral qwen2moe qwen3moe olmoe):
 *
 *   mixtral   arch llama, 8 experts, top-2, softmax then renormalised
 *   qwen2moe  8 experts, top-4, raw softmax weights, sigmoid-gated shared expert
 *   qwen3moe  8 experts, top-2, renormalised, per-head Q/K norms
 *   olmoe     8 experts, top-3, raw softmax weights, Q/K norms over all heads
 *
 * (routing notes: the docstring of tools/make_synthetic_models.py). Bounds as
 * test_qwen.c: mean KL <= 0.01, top-1 >= 98% on decisive positions, overall
 * no worse than llama.cpp's own flash vs non-flash agreement minus 1. The
 * files are built so that wrong routing fails these clearly (the '#' lines
 * of tests/fixtures/ref/noise_floor_<tag>.txt: renormalising when llama.cpp
 * does not or the other way round costs KL 0.05-0.13, a missing shared
 * expert gate 0.8, experts off by one 1.4-2.9).
 * Also: one batch = batches of 5 = one token at a time, and broken variants
 * of the files (expert counts, stacked tensor shapes, missing router)
 * rejected with an error naming the key or tensor. Only the public API is
 * used. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "codi.h"
#include "moe/expert_store.h"
#include "ref_compare.h"

#define SYN "tests/fixtures/synthetic/"
#define FIX "tests/fixtures/ref/"

static const char *const TAGS[4] = {"mixtral", "qwen2moe", "qwen3moe", "olmoe"};
static const char *const ARCHS[4] = {"llama", "qwen2moe", "qwen3moe", "olmoe"};

static codi_model *load(const char *path) {
    char err[512] = "";
    codi_model *m = NULL;
    int rc = codi_model_load(path, NULL, &m, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s: %s\n", path, err);
    assert_int_equal(rc, 0);
    assert_non_null(m);
    return m;
}

static codi_context *new_ctx(codi_model *m, int32_t n_ctx, int32_t n_batch) {
    codi_context_params p = codi_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_threads = 2;
    codi_context *c = NULL;
    char err[512] = "";
    int rc = codi_context_create(m, &p, &c, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    return c;
}

static void check_vs_llamacpp(int fam) {
    const char *tag = TAGS[fam];
    char path[256], fix[256], nf[256];
    snprintf(path, sizeof(path), SYN "%s-tiny.gguf", tag);
    snprintf(fix, sizeof(fix), FIX "logits_%s.bin", tag);
    snprintf(nf, sizeof(nf), FIX "noise_floor_%s.txt", tag);
    codi_model *m = load(path);
    assert_string_equal(codi_model_arch(m), ARCHS[fam]);
    codi_context *c = new_ctx(m, 256, 0);
    ref_stats st;
    ref_compare_logits(m, c, fix, -1, &st);
    codi_context_free(c);
    const double floor_agree = ref_noise_floor(nf);
    const double agree = 100.0 * (double)st.agree / (double)st.positions;
    const double dec = 100.0 * (double)st.dec_agree / (double)st.dec_pos;
    const double kl = st.kl_sum / (double)st.positions;
    printf("%s logits vs llama.cpp: %lld positions, top-1 agreement %.2f%% (llama.cpp flash-attn vs "
           "non-flash: %.2f%%), decisive positions %.2f%% of %lld, mean KL %.6f, max KL %.6f\n",
           tag, st.positions, agree, floor_agree, dec, st.dec_pos, kl, st.kl_max);
    assert_int_equal(st.positions, 490);
    assert_true(st.dec_pos > 100);
    assert_true(kl <= 0.01);
    assert_true(dec >= 98.0);
    assert_true(agree >= floor_agree - 1.0);
    codi_model_free(m);
}

static void test_mixtral_vs_llamacpp(void **state) {
    (void)state;
    check_vs_llamacpp(0);
}

static void test_qwen2moe_vs_llamacpp(void **state) {
    (void)state;
    check_vs_llamacpp(1);
}

static void test_qwen3moe_vs_llamacpp(void **state) {
    (void)state;
    check_vs_llamacpp(2);
}

static void test_olmoe_vs_llamacpp(void **state) {
    (void)state;
    check_vs_llamacpp(3);
}

/* One batch, batches of 5, and one token at a time give the same logits:
 * routing is per token, whatever the batch the token sits in. */
static void test_batch_split(void **state) {
    (void)state;
    for (int fam = 0; fam < 4; fam++) {
        char path[256];
        snprintf(path, sizeof(path), SYN "%s-tiny.gguf", TAGS[fam]);
        codi_model *m = load(path);
        int32_t toks[40];
        for (int i = 0; i < 40; i++)
            toks[i] = (i * 37 + 11) % codi_model_n_vocab(m);
        codi_context *a = new_ctx(m, 64, 0), *b = new_ctx(m, 64, 5), *c1 = new_ctx(m, 64, 1);
        char err[256];
        assert_int_equal(codi_decode(a, toks, 40, 0, true, err, sizeof(err)), 0);
        assert_int_equal(codi_decode(b, toks, 40, 0, true, err, sizeof(err)), 0);
        for (int i = 0; i < 40; i++)
            assert_int_equal(codi_decode(c1, toks + i, 1, i, false, err, sizeof(err)), 0);
        const int32_t nv = codi_model_n_vocab(m);
        double d1 = 0.0, d2 = 0.0, d3 = 0.0;
        const float *la = codi_get_logits(a, 39), *lb = codi_get_logits(b, 39), *lc = codi_get_logits(c1, -1);
        const float *la20 = codi_get_logits(a, 20), *lb20 = codi_get_logits(b, 20);
        assert_true(la && lb && lc && la20 && lb20);
        for (int32_t i = 0; i < nv; i++) {
            assert_true(isfinite(la[i]));
            d1 = fmax(d1, fabs(la[i] - lb[i]));
            d2 = fmax(d2, fabs(la[i] - lc[i]));
            d3 = fmax(d3, fabs(la20[i] - lb20[i]));
        }
        if (d1 >= 1e-3 || d2 >= 1e-3 || d3 >= 1e-3)
            fprintf(stderr, "%s: batch split differences %g %g %g\n", TAGS[fam], d1, d2, d3);
        assert_true(d1 < 1e-3);
        assert_true(d2 < 1e-3);
        assert_true(d3 < 1e-3);
        codi_context_free(a);
        codi_context_free(b);
        codi_context_free(c1);
        codi_model_free(m);
    }
}

/* ---- experts offloaded (docs/moe.md) ------------------------------------ */

/* budget: bytes (> 0), or -pct for a share of the experts */
static codi_context *offload_ctx(codi_model *m, int mode, double budget, int policy, int n_batch,
                                 int direct) {
    codi_context_params p = codi_context_default_params();
    p.n_ctx = 64;
    p.n_batch = n_batch;
    p.n_threads = 2;
    p.moe_mode = mode;
    if (budget > 0)
        p.expert_budget = (int64_t)budget;
    else
        p.expert_budget_pct = (float)-budget;
    p.expert_policy = policy;
    p.expert_direct = direct;
    p.io_threads = 2;
    codi_context *c = NULL;
    char err[512] = "";
    int rc = codi_context_create(m, &p, &c, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    return c;
}

/* Every mode, budget and policy computes the same logits as the resident
 * model (same kernels, same bytes: bitwise equal), for a prompt in one
 * batch and token-by-token decoding; the counters add up. */
static void test_offload_same_logits(void **state) {
    (void)state;
    for (int fam = 0; fam < 4; fam++) {
        char path[256];
        snprintf(path, sizeof(path), SYN "%s-tiny.gguf", TAGS[fam]);
        codi_model *m = load(path);
        const int32_t nv = codi_model_n_vocab(m);
        int32_t toks[48];
        for (int i = 0; i < 48; i++)
            toks[i] = (i * 53 + 7) % nv;
        char err[256];
        codi_context *ref = new_ctx(m, 64, 16);
        assert_int_equal(codi_decode(ref, toks, 32, 0, true, err, sizeof(err)), 0);
        float *want = malloc((size_t)48 * (size_t)nv * sizeof(float));
        assert_non_null(want);
        for (int i = 0; i < 32; i++)
            memcpy(want + (size_t)i * nv, codi_get_logits(ref, i), (size_t)nv * sizeof(float));
        for (int i = 32; i < 48; i++) {
            assert_int_equal(codi_decode(ref, toks + i, 1, i, false, err, sizeof(err)), 0);
            memcpy(want + (size_t)i * nv, codi_get_logits(ref, -1), (size_t)nv * sizeof(float));
        }
        /* budgets: every expert (1 GiB; tiny experts padded to 4 KiB pages
         * need more than 100% of their bytes), 2k+1 slots, the minimum k */
        codi_context *all = offload_ctx(m, CODI_MOE_ONDEMAND, (double)(1 << 30), 0, 16, -1);
        codi_moe_info mo0;
        codi_moe_stats(all, &mo0);
        assert_int_equal(mo0.cache_slots, 2 * 8);
        const double slot = (double)mo0.cache_bytes / (double)mo0.cache_slots;
        const int k = mo0.n_expert_used;
        codi_context_free(all);
        const double BUD[3] = {(double)(1 << 30), slot * (2 * k + 1), slot * k};
        for (int mode = CODI_MOE_ONDEMAND; mode <= CODI_MOE_LOOKAHEAD; mode++)
            for (int bi = 0; bi < 3; bi++)
                for (int pol = 0; pol < 3; pol++) {
                    codi_context *c = offload_ctx(m, mode, BUD[bi], pol, 16, bi == 2 ? 0 : -1);
                    codi_moe_info mo;
                    codi_moe_stats(c, &mo);
                    assert_int_equal(mo.mode, mode);
                    assert_true(mo.cache_slots >= 1 && mo.cache_bytes > 0);
                    assert_int_equal(codi_decode(c, toks, 32, 0, true, err, sizeof(err)), 0);
                    for (int i = 0; i < 32; i++)
                        assert_memory_equal(codi_get_logits(c, i), want + (size_t)i * nv,
                                            (size_t)nv * sizeof(float));
                    codi_moe_reset(c);
                    for (int i = 32; i < 48; i++) {
                        assert_int_equal(codi_decode(c, toks + i, 1, i, false, err, sizeof(err)), 0);
                        assert_memory_equal(codi_get_logits(c, -1), want + (size_t)i * nv,
                                            (size_t)nv * sizeof(float));
                    }
                    codi_moe_stats(c, &mo);
                    assert_int_equal(mo.tokens, 16);
                    /* each layer's distinct experts of a one-token pass are
                     * acquired once each: hits + waits + loads = uses */
                    assert_int_equal(mo.hits + mo.inflight_waits + mo.sync_loads, mo.expert_uses);
                    assert_true(mo.expert_uses >= 16u * 2u);
                    if (mode == CODI_MOE_ONDEMAND) {
                        assert_int_equal(mo.prefetches, 0);
                        assert_int_equal(mo.next_used, 0);
                    } else {
                        assert_true(mo.next_used > 0 && mo.predicted_right <= mo.next_used);
                    }
                    assert_int_equal(mo.cache_slots, bi == 0 ? 16 : bi == 1 ? 2 * k + 1 : k);
                    { /* the stalls by layer add up to the total */
                        double ls[64], sum = 0.0;
                        const int nl = codi_moe_layer_stalls(c, ls, 64);
                        assert_int_equal(nl, codi_moe_layer_stalls(c, NULL, 0));
                        assert_true(nl >= 1 && nl <= 64);
                        for (int l = 0; l < nl; l++) {
                            assert_true(ls[l] >= 0.0);
                            sum += ls[l];
                        }
                        assert_float_equal(sum, mo.stall_seconds, 1e-9 + 1e-9 * mo.stall_seconds);
                    }
                    codi_context_free(c);
                }
        free(want);
        codi_context_free(ref);
        codi_model_free(m);
    }
}

/* A budget below one layer's active experts is refused with the minimum. */
static void test_offload_budget_too_small(void **state) {
    (void)state;
    codi_model *m = load(SYN "mixtral-tiny.gguf");
    codi_context_params p = codi_context_default_params();
    p.n_ctx = 64;
    p.moe_mode = CODI_MOE_PREFETCH;
    p.expert_budget = 1000;
    codi_context *c = NULL;
    char err[512] = "";
    assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), CODI_EINVAL);
    assert_null(c);
    assert_non_null(strstr(err, "the minimum is"));
    p.expert_budget = 0;
    p.expert_budget_pct = 150.0f;
    assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), CODI_EINVAL);
    p.expert_budget_pct = 0.0f;
    p.moe_mode = 9;
    assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), CODI_EINVAL);
    codi_model_free(m);
}

/* Expert reads start failing mid-run (fault injection in the store):
 * decoding fails with an I/O error naming the expert, nothing crashes, the
 * cache keeps the tokens of the passes before, and once reads work again
 * the context goes on from there. */
static void test_offload_io_error(void **state) {
    (void)state;
    codi_model *m = load(SYN "mixtral-tiny.gguf");
    /* the smallest cache (k slots): a pin left behind by the failed pass
     * would make every later pass fail */
    codi_context *all = offload_ctx(m, CODI_MOE_ONDEMAND, (double)(1 << 30), 0, 16, -1);
    codi_moe_info mo0;
    codi_moe_stats(all, &mo0);
    const double min_budget = (double)mo0.cache_bytes / (double)mo0.cache_slots * mo0.n_expert_used;
    codi_context_free(all);
    for (int mode = CODI_MOE_ONDEMAND; mode <= CODI_MOE_LOOKAHEAD; mode++) {
        codi_context *c = offload_ctx(m, mode, min_budget, 0, 16, -1);
        int32_t toks[12] = {5, 9, 33, 70, 12, 3, 99, 41, 7, 8, 120, 64};
        char err[512] = "";
        assert_int_equal(codi_decode(c, toks, 4, 0, false, err, sizeof(err)), 0);
        codi_expert_store_fail_reads(2);
        int rc = 0, i = 4;
        for (; i < 12 && rc == 0; i++)
            rc = codi_decode(c, toks + i, 1, i, false, err, sizeof(err));
        codi_expert_store_fail_reads(-1);
        assert_int_equal(rc, CODI_EIO);
        assert_non_null(strstr(err, "expert"));
        const int32_t kept = codi_kv_seq_len(c, 0);
        assert_int_equal(kept, i - 1); /* the failed token is not cached */
        assert_int_equal(codi_decode(c, toks + kept, 12 - kept, kept, false, err, sizeof(err)), 0);
        assert_int_equal(codi_kv_seq_len(c, 0), 12);
        codi_context_free(c);
    }
    codi_model_free(m);
}

/* ---- bit-nested experts (codi nest, D2MoE) ------------------------------- */

static double mean_kl(const float *p_logits, const float *q_logits, int32_t nv) {
    double mp = -1e30, mq = -1e30, sp = 0.0, sq = 0.0, kl = 0.0;
    for (int32_t i = 0; i < nv; i++) {
        mp = fmax(mp, p_logits[i]);
        mq = fmax(mq, q_logits[i]);
    }
    for (int32_t i = 0; i < nv; i++) {
        sp += exp(p_logits[i] - mp);
        sq += exp(q_logits[i] - mq);
    }
    for (int32_t i = 0; i < nv; i++) {
        const double lp = p_logits[i] - mp - log(sp), lq = q_logits[i] - mq - log(sq);
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

/* Nesting keeps the model at ~8 bits (high part + residual) and gives a
 * 4-bit version from the high part alone; offloading a nested model at 4
 * or 8 bits computes exactly what the resident model does at those bits;
 * nesting twice or a dense model is refused. */
static void test_nested(void **state) {
    (void)state;
    char err[512] = "";
    const char *out = "/tmp/codi-test-nested.gguf";
    assert_int_equal(codi_nest_experts(SYN "mixtral-tiny.gguf", out, NULL, NULL, err, sizeof(err)), 0);
    assert_int_equal(codi_nest_experts(out, "/tmp/codi-test-nested2.gguf", NULL, NULL, err, sizeof(err)),
                     CODI_EINVAL);
    assert_non_null(strstr(err, "bit-nested already"));
    assert_int_equal(access("/tmp/codi-test-nested2.gguf", F_OK), -1);
    assert_int_equal(codi_nest_experts(SYN "qwen2-tiny.gguf", "/tmp/codi-test-nested2.gguf", NULL, NULL, err,
                                       sizeof(err)),
                     CODI_EINVAL);
    assert_non_null(strstr(err, "not an MoE model"));
    codi_model *base = load(SYN "mixtral-tiny.gguf"), *m = load(out);
    const int32_t nv = codi_model_n_vocab(m);
    int32_t toks[24];
    for (int i = 0; i < 24; i++)
        toks[i] = (i * 29 + 3) % nv;
    codi_context *cb = new_ctx(base, 64, 0);
    assert_int_equal(codi_decode(cb, toks, 24, 0, true, err, sizeof(err)), 0);
    float *want[2];
    double kl[2] = {0.0, 0.0};
    for (int bi = 0; bi < 2; bi++) {
        codi_context_params p = codi_context_default_params();
        p.n_ctx = 64;
        p.n_threads = 2;
        p.moe_bits = bi == 0 ? 8 : 4;
        codi_context *c = NULL;
        assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), 0);
        assert_int_equal(codi_decode(c, toks, 24, 0, true, err, sizeof(err)), 0);
        want[bi] = malloc((size_t)24 * (size_t)nv * sizeof(float));
        assert_non_null(want[bi]);
        for (int i = 0; i < 24; i++) {
            memcpy(want[bi] + (size_t)i * nv, codi_get_logits(c, i), (size_t)nv * sizeof(float));
            kl[bi] += mean_kl(codi_get_logits(cb, i), codi_get_logits(c, i), nv) / 24.0;
        }
        codi_moe_info mo;
        codi_moe_stats(c, &mo);
        assert_true(mo.nested);
        assert_int_equal(mo.uses_8bit, bi == 0 ? mo.expert_uses : 0);
        codi_context_free(c);
    }
    fprintf(stderr, "nested vs original: KL 8-bit %.6f, 4-bit %.6f\n", kl[0], kl[1]);
    assert_true(kl[0] < 0.01);
    assert_true(kl[1] > kl[0]);
    /* offloaded at a budget of about 1.5 layers of experts: same logits */
    for (int bi = 0; bi < 2; bi++)
        for (int mode = CODI_MOE_ONDEMAND; mode <= CODI_MOE_LOOKAHEAD; mode++) {
            codi_context_params p = codi_context_default_params();
            p.n_ctx = 64;
            p.n_threads = 2;
            p.moe_bits = bi == 0 ? 8 : 4;
            p.moe_mode = mode;
            p.expert_budget_pct = 40.0f;
            codi_context *c = NULL;
            assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), 0);
            assert_int_equal(codi_decode(c, toks, 12, 0, true, err, sizeof(err)), 0);
            for (int i = 12; i < 24; i++)
                assert_int_equal(codi_decode(c, toks + i, 1, i, false, err, sizeof(err)), 0);
            assert_memory_equal(codi_get_logits(c, -1), want[bi] + (size_t)23 * nv, (size_t)nv * sizeof(float));
            codi_context_free(c);
        }
    /* auto with every expert cached: all at 8 bits */
    {
        codi_context_params p = codi_context_default_params();
        p.n_ctx = 64;
        p.n_threads = 2;
        p.moe_mode = CODI_MOE_PREFETCH;
        p.expert_budget = (int64_t)1 << 30;
        codi_context *c = NULL;
        assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), 0);
        /* the residuals arrive in the background: passes until a pass finds
         * every one cached (a few, bounded) */
        codi_moe_info mo;
        for (int pass = 0; pass < 200; pass++) {
            codi_kv_truncate(c, 0);
            codi_moe_reset(c);
            assert_int_equal(codi_decode(c, toks, 24, 0, true, err, sizeof(err)), 0);
            codi_moe_stats(c, &mo);
            if (mo.uses_8bit == mo.expert_uses)
                break;
            usleep(10000);
        }
        assert_int_equal(mo.uses_8bit, mo.expert_uses);
        assert_memory_equal(codi_get_logits(c, 23), want[0] + (size_t)23 * nv, (size_t)nv * sizeof(float));
        codi_context_free(c);
    }
    free(want[0]);
    free(want[1]);
    codi_context_free(cb);
    codi_model_free(base);
    codi_model_free(m);
    unlink(out);
}

/* ---- broken variants: patched copies in /tmp ---------------------------- */

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        fprintf(stderr, "cannot open %s\n", path);
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return b;
}

/* Offset just past the first GGUF string (u64 length + bytes) equal to s:
 * a metadata key or a tensor name. */
static size_t find_gguf_string(const unsigned char *b, size_t n, const char *s) {
    const size_t k = strlen(s);
    for (size_t i = 8; i + k <= n; i++) {
        uint64_t len;
        memcpy(&len, b + i - 8, 8);
        if (len == k && memcmp(b + i, s, k) == 0)
            return i + k;
    }
    fail_msg("'%s' not found in the file", s);
    return 0;
}

/* A u32 metadata value: key, type (GGUF_TYPE_UINT32 = 4), value. */
static void patch_u32_kv(unsigned char *b, size_t n, const char *key, uint32_t v) {
    const size_t o = find_gguf_string(b, n, key);
    uint32_t type;
    memcpy(&type, b + o, 4);
    assert_int_equal(type, 4);
    memcpy(b + o + 4, &v, 4);
}

/* ne[dim] of a tensor info: name, n_dims u32, ne u64 x n_dims, type, offset. */
static void patch_tensor_ne(unsigned char *b, size_t n, const char *name, int dim, uint64_t v) {
    const size_t o = find_gguf_string(b, n, name);
    uint32_t n_dims;
    memcpy(&n_dims, b + o, 4);
    assert_true((uint32_t)dim < n_dims);
    memcpy(b + o + 4 + 8 * (size_t)dim, &v, 8);
}

/* Rename a tensor (same length). */
static void patch_name(unsigned char *b, size_t n, const char *from, const char *to) {
    assert_int_equal(strlen(from), strlen(to));
    const size_t o = find_gguf_string(b, n, from);
    memcpy(b + o - strlen(from), to, strlen(to));
}

static void expect_rejected(const unsigned char *b, size_t n, const char *what, const char *needle) {
    char tmp[] = "/tmp/codi_moe_broken_XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
    codi_model *m = NULL;
    char err[512] = "";
    int rc = codi_model_load(tmp, NULL, &m, err, sizeof(err));
    remove(tmp);
    printf("%s: rc %d, '%s'\n", what, rc, err);
    assert_true(rc < 0);
    assert_null(m);
    /* needle: alternatives separated by '|' */
    int found = 0;
    char alt[128];
    for (const char *p = needle; *p && !found;) {
        const size_t k = strcspn(p, "|");
        assert_true(k > 0 && k < sizeof(alt));
        memcpy(alt, p, k);
        alt[k] = '\0';
        found = strstr(err, alt) != NULL;
        p += k + (p[k] == '|');
    }
    if (!found)
        fprintf(stderr, "%s: error '%s' does not name '%s'\n", what, err, needle);
    assert_true(found);
}

enum { KV, NE, NAME };

typedef struct broken_case {
    int fam;          /* index into TAGS */
    int kind;         /* KV: u32 key := val; NE: ne[dim] of tensor := val; NAME: rename */
    const char *what; /* key, tensor, or tensor to rename */
    const char *to;   /* NAME: the new name */
    int dim;
    uint32_t val;
    const char *needle; /* the error must contain this (or one of a|b) */
} broken_case;

static const broken_case BROKEN[] = {
    /* more experts used than there are */
    {0, KV, "llama.expert_used_count", NULL, 0, 9, "expert_used_count"},
    {2, KV, "qwen3moe.expert_used_count", NULL, 0, 9, "expert_used_count"},
    /* an MoE-only architecture without experts; experts but none used */
    {2, KV, "qwen3moe.expert_count", NULL, 0, 0, "expert_count"},
    {3, KV, "olmoe.expert_used_count", NULL, 0, 0, "expert_used_count"},
    /* llama with expert_count 0 is dense: the dense FFN tensors are missing */
    {0, KV, "llama.expert_count", NULL, 0, 0, "ffn_|expert_used_count"},
    /* more experts declared than the stacked tensors hold */
    {1, KV, "qwen2moe.expert_count", NULL, 0, 16, "blk.0.ffn_"},
    /* expert width key disagrees with the tensors */
    {2, KV, "qwen3moe.expert_feed_forward_length", NULL, 0, 64, "_exps.weight"},
    /* stacked tensors with the wrong expert dimension / row length */
    {0, NE, "blk.1.ffn_up_exps.weight", NULL, 2, 7, "blk.1.ffn_up_exps.weight"},
    {3, NE, "blk.0.ffn_down_exps.weight", NULL, 2, 4, "blk.0.ffn_down_exps.weight"},
    {1, NE, "blk.1.ffn_gate_exps.weight", NULL, 1, 16, "blk.1.ffn_gate_exps.weight"},
    /* the router missing, or with the wrong expert count */
    {0, NAME, "blk.1.ffn_gate_inp.weight", "blk.1.ffn_gate_inx.weight", 0, 0, "blk.1.ffn_gate_inp.weight"},
    {3, NAME, "blk.0.ffn_gate_inp.weight", "blk.0.ffn_gate_inx.weight", 0, 0, "blk.0.ffn_gate_inp.weight"},
    {2, NE, "blk.0.ffn_gate_inp.weight", NULL, 1, 7, "blk.0.ffn_gate_inp.weight"},
    /* a stacked expert tensor missing */
    {2, NAME, "blk.1.ffn_down_exps.weight", "blk.1.ffn_down_exps.weighx", 0, 0, "blk.1.ffn_down_exps.weight"},
    /* qwen2moe's shared expert and its gate */
    {1, NAME, "blk.0.ffn_gate_inp_shexp.weight", "blk.0.ffn_gate_inp_shexq.weight", 0, 0,
     "blk.0.ffn_gate_inp_shexp.weight"},
    {1, NAME, "blk.1.ffn_up_shexp.weight", "blk.1.ffn_up_shexq.weight", 0, 0, "blk.1.ffn_up_shexp.weight"},
};

static void test_broken_files(void **state) {
    (void)state;
    for (size_t i = 0; i < sizeof(BROKEN) / sizeof(BROKEN[0]); i++) {
        const broken_case *bc = &BROKEN[i];
        char path[256], what[256];
        snprintf(path, sizeof(path), SYN "%s-tiny.gguf", TAGS[bc->fam]);
        size_t n;
        unsigned char *b = slurp(path, &n);
        if (bc->kind == KV) {
            patch_u32_kv(b, n, bc->what, bc->val);
            snprintf(what, sizeof(what), "%s: %s = %u", TAGS[bc->fam], bc->what, bc->val);
        } else if (bc->kind == NE) {
            patch_tensor_ne(b, n, bc->what, bc->dim, bc->val);
            snprintf(what, sizeof(what), "%s: %s ne[%d] = %u", TAGS[bc->fam], bc->what, bc->dim, bc->val);
        } else {
            patch_name(b, n, bc->what, bc->to);
            snprintf(what, sizeof(what), "%s: %s renamed", TAGS[bc->fam], bc->what);
        }
        expect_rejected(b, n, what, bc->needle);
        free(b);
    }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broken_files),
        cmocka_unit_test(test_mixtral_vs_llamacpp),
        cmocka_unit_test(test_qwen2moe_vs_llamacpp),
        cmocka_unit_test(test_qwen3moe_vs_llamacpp),
        cmocka_unit_test(test_olmoe_vs_llamacpp),
        cmocka_unit_test(test_batch_split),
        cmocka_unit_test(test_offload_same_logits),
        cmocka_unit_test(test_offload_budget_too_small),
        cmocka_unit_test(test_offload_io_error),
        cmocka_unit_test(test_nested),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
