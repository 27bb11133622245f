/* Shared by the end-to-end tests (test_e2e.c, test_gemma3.c, test_qwen.c):
 * compare codi's next-token distributions with a CODIREF1 logits fixture
 * (format in tools/make_reference.py):
 * mean KL(ref || codi) over the reference's top-k plus one bucket for the
 * rest, top-1 agreement over all positions and over decisive positions
 * (reference top-2 gap >= 0.5). Include after <cmocka.h> and "codi.h". */
#ifndef CODI_TEST_REF_COMPARE_H
#define CODI_TEST_REF_COMPARE_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct ref_stats {
    long long positions, agree, dec_pos, dec_agree;
    double kl_sum, kl_max;
} ref_stats;

static void ref_read(FILE *f, void *p, size_t n) { assert_int_equal(fread(p, 1, n, f), n); }

/* max_prompts < 0: all. Each prompt is evaluated from position 0 in one
 * codi_decode call with n_batch of the context. */
static void ref_compare_logits(codi_model *model, codi_context *c, const char *path,
                               int max_prompts, ref_stats *st) {
    memset(st, 0, sizeof(*st));
    FILE *f = fopen(path, "rb");
    if (!f)
        fprintf(stderr, "cannot open %s\n", path);
    assert_non_null(f);
    char magic[8];
    uint32_t ver, n_prompts;
    ref_read(f, magic, 8);
    assert_memory_equal(magic, "CODIREF1", 8);
    ref_read(f, &ver, 4);
    assert_int_equal(ver, 1);
    ref_read(f, &n_prompts, 4);
    assert_true(n_prompts > 0 && n_prompts < 100);
    const int32_t nv = codi_model_n_vocab(model);
    for (uint32_t pi = 0; pi < n_prompts; pi++) {
        uint32_t n, k;
        ref_read(f, &n, 4);
        assert_true(n > 0 && (int32_t)n <= codi_context_n_ctx(c));
        int32_t *toks = malloc(n * sizeof(int32_t));
        assert_non_null(toks);
        ref_read(f, toks, n * sizeof(int32_t));
        ref_read(f, &k, 4);
        assert_true(k > 1 && k <= 1000);
        int32_t *ids = malloc(k * sizeof(int32_t));
        float *vals = malloc(k * sizeof(float));
        assert_true(ids && vals);
        const bool run = max_prompts < 0 || (int)pi < max_prompts;
        if (run) {
            char err[256];
            int rc = codi_decode(c, toks, (int32_t)n, 0, true, err, sizeof(err));
            if (rc)
                fprintf(stderr, "%s\n", err);
            assert_int_equal(rc, 0);
        }
        for (uint32_t p = 0; p < n; p++) {
            float lse_ref;
            ref_read(f, &lse_ref, 4);
            for (uint32_t j = 0; j < k; j++) {
                ref_read(f, &ids[j], 4);
                ref_read(f, &vals[j], 4);
            }
            if (!run)
                continue;
            const float *lg = codi_get_logits(c, (int32_t)p);
            assert_non_null(lg);
            double mx = lg[0];
            int best = 0;
            for (int32_t i = 1; i < nv; i++)
                if (lg[i] > mx)
                    mx = lg[i], best = (int)i;
            double s = 0.0;
            for (int32_t i = 0; i < nv; i++)
                s += exp(lg[i] - mx);
            const double lse = mx + log(s);
            double kl = 0.0, pr_sum = 0.0, pc_sum = 0.0;
            for (uint32_t j = 0; j < k; j++) {
                const double lr = vals[j] - lse_ref, lc = lg[ids[j]] - lse;
                const double pr = exp(lr);
                kl += pr * (lr - lc);
                pr_sum += pr;
                pc_sum += exp(lc);
            }
            const double rr = 1.0 - pr_sum, rc_ = 1.0 - pc_sum;
            if (rr > 1e-9 && rc_ > 1e-9)
                kl += rr * log(rr / rc_);
            kl = kl < 0.0 ? 0.0 : kl;
            st->kl_sum += kl;
            st->kl_max = kl > st->kl_max ? kl : st->kl_max;
            int ok = best == ids[0];
            if (!ok && fabsf(vals[0] - vals[1]) < 1e-3f && best == ids[1])
                ok = 1;
            st->agree += ok;
            st->positions++;
            if (vals[0] - vals[1] >= 0.5f) {
                st->dec_pos++;
                st->dec_agree += ok;
            }
        }
        free(toks);
        free(ids);
        free(vals);
    }
    fclose(f);
}

/* "agree <pct>" line of a noise_floor_<tag>.txt fixture. */
static double ref_noise_floor(const char *path) {
    FILE *nf = fopen(path, "r");
    assert_non_null(nf);
    char line[256];
    double v = -1.0;
    while (fgets(line, sizeof(line), nf))
        sscanf(line, "agree %lf", &v);
    fclose(nf);
    assert_true(v > 50.0);
    return v;
}

#endif
