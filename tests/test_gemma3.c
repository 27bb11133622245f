/* Gemma 3 270M (Q4_K_M) end to end against llama.cpp, fixtures written by
 * tools/make_reference_model.py gemma3 (llama-cpp-python 0.3.36, flash
 * attention off). The same bounds as test_e2e.c for SmolLM2:
 *   - mean KL <= 0.01, top-1 >= 98% on decisive positions, overall top-1
 *     no worse than llama.cpp's flash vs non-flash agreement (minus 1);
 *     one prompt is ~600 tokens, past the 512-token sliding window;
 *   - greedy generation: codi leaves llama.cpp's path only at near-ties
 *     (llama.cpp's own top-2 gap < 0.5 at that step; llama.cpp's own
 *     flash-attention path differs from its non-flash one on 3 of the 10);
 *   - perplexity within 1% on 1024-token windows (x1 in the sanitizer run,
 *     x2 otherwise; they cross the 512-token sliding window). 128 x 4, the
 *     SmolLM2 setting, scores only 252 tokens: there llama.cpp's own
 *     flash-attention path is 0.8% off and codi 1.9%, so it is printed, not
 *     bounded.
 * Plus the model's shape as the loader reads it. CODI_TEST_QUICK=1
 * (sanitizer builds) checks a subset. */
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
#include "model/model.h"
#include "ref_compare.h"

#define MODEL "models/gemma-3-270m-q4_k_m.gguf"
#define FIX "tests/fixtures/ref/"

static codi_model *g_model;
static int g_quick;

static int setup(void **state) {
    (void)state;
    char err[512];
    const char *q = getenv("CODI_TEST_QUICK");
    g_quick = q && *q && *q != '0';
    if (codi_model_load(MODEL, NULL, &g_model, err, sizeof(err)) != 0) {
        fprintf(stderr, "cannot load %s (run tools/fetch_models.sh): %s\n", MODEL, err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    codi_model_free(g_model);
    return 0;
}

static codi_context *new_ctx(int32_t n_ctx) {
    codi_context_params p = codi_context_default_params();
    p.n_ctx = n_ctx;
    p.n_threads = 2;
    codi_context *c = NULL;
    char err[512];
    int rc = codi_context_create(g_model, &p, &c, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    return c;
}

static void test_hparams(void **state) {
    (void)state;
    const codi_hparams *hp = &g_model->hp;
    assert_string_equal(codi_model_arch(g_model), "gemma3");
    assert_int_equal(hp->arch_id, CODI_ARCH_GEMMA3);
    assert_int_equal(hp->n_layer, 18);
    assert_int_equal(hp->head_dim, 256);
    assert_int_equal(hp->n_swa, 512);
    assert_true(hp->rope_neox);
    assert_true(fabsf(hp->rope_base - 1e6f) < 1.0f);
    assert_true(fabsf(hp->rope_base_swa - 1e4f) < 1e-3f);
    assert_true(fabsf(hp->embd_scale - sqrtf(640.0f)) < 1e-5f);
    assert_int_equal(hp->ffn_act, CODI_ACT_GELU);
    /* pattern 6: every sixth layer is global */
    for (int l = 0; l < hp->n_layer; l++) {
        const codi_layer *L = &g_model->layers[l];
        assert_int_equal(L->swa, l % 6 != 5);
        assert_true(L->rope_base == (L->swa ? hp->rope_base_swa : hp->rope_base));
        assert_non_null(L->attn_q_norm);
        assert_non_null(L->attn_k_norm);
        assert_non_null(L->attn_post_norm);
        assert_non_null(L->ffn_post_norm);
        /* ALISA decays importance on the local layers only: the global
         * ones keep long-range tokens by undecayed attention */
        assert_true(codi_kv_layer_decay(g_model, l, 0.99f) == (L->swa ? 0.99f : 1.0f));
    }
    assert_int_equal(codi_token_bos(g_model), 2);
    assert_true(codi_model_add_bos(g_model));
}

static void test_logits_vs_llamacpp(void **state) {
    (void)state;
    codi_context *c = new_ctx(1024);
    ref_stats st;
    /* sanitizer runs: the five short prompts (318 positions), not the long one */
    ref_compare_logits(g_model, c, FIX "logits_gemma3.bin", g_quick ? 5 : -1, &st);
    codi_context_free(c);
    const double floor_agree = ref_noise_floor(FIX "noise_floor_gemma3.txt");
    const double agree = 100.0 * (double)st.agree / (double)st.positions;
    const double dec = 100.0 * (double)st.dec_agree / (double)st.dec_pos;
    const double kl = st.kl_sum / (double)st.positions;
    printf("gemma3 logits vs llama.cpp: %lld positions, top-1 agreement %.2f%% (llama.cpp flash-attn vs "
           "non-flash: %.2f%%), decisive positions %.2f%% of %lld, mean KL %.6f, max KL %.6f\n",
           st.positions, agree, floor_agree, dec, st.dec_pos, kl, st.kl_max);
    assert_true(kl <= 0.01);
    assert_true(dec >= 98.0);
    if (!g_quick)
        assert_true(agree >= floor_agree - 1.0);
}

/* Next "X ids..." line of the given tag; "# gaps ..." comment lines before
 * it fill gaps[] (llama.cpp's top1-top2 gap per generated step). */
static int read_ids(FILE *f, char tag, int32_t *out, int max, float *gaps, int *n_gaps) {
    char line[65536];
    while (fgets(line, sizeof(line), f)) {
        if (gaps && strncmp(line, "# gaps ", 7) == 0) {
            int n = 0;
            char *p = line + 7, *end;
            for (;;) {
                float v = strtof(p, &end);
                if (end == p || n >= 64)
                    break;
                gaps[n++] = v;
                p = end;
            }
            *n_gaps = n;
            continue;
        }
        if (line[0] == '#' || line[0] == '\n')
            continue;
        assert_int_equal(line[0], tag);
        int n = 0;
        char *p = line + 1, *end;
        for (;;) {
            long v = strtol(p, &end, 10);
            if (end == p)
                break;
            assert_true(n < max);
            out[n++] = (int32_t)v;
            p = end;
        }
        return n;
    }
    return -1;
}

static void test_greedy_vs_llamacpp(void **state) {
    (void)state;
    FILE *f = fopen(FIX "greedy_gemma3.txt", "r");
    assert_non_null(f);
    codi_context *c = new_ctx(256);
    const int32_t nv = codi_model_n_vocab(g_model);
    int32_t prompt[256], gen[64];
    int n_prompts = 0, n_same = 0, n_decisive_diff = 0;
    char err[256];
    for (;;) {
        float gaps[64];
        int n_gaps = 0;
        int np = read_ids(f, 'P', prompt, 256, gaps, &n_gaps);
        if (np < 0)
            break;
        int ng = read_ids(f, 'G', gen, 64, NULL, NULL);
        assert_int_equal(n_gaps, ng);
        assert_true(ng > 0);
        if (g_quick && ng > 8)
            ng = 8;
        n_prompts++;
        assert_int_equal(codi_decode(c, prompt, np, 0, false, err, sizeof(err)), 0);
        int match = 1;
        for (int i = 0; i < ng; i++) {
            const float *lg = codi_get_logits(c, -1);
            int32_t best = 0;
            for (int32_t v = 1; v < nv; v++)
                if (lg[v] > lg[best])
                    best = v;
            if (best != gen[i]) {
                printf("  prompt %d differs at step %d: codi picks %d, llama.cpp %d (llama.cpp's top-2 gap "
                       "there %.4f)\n", n_prompts, i, best, gen[i], gaps[i]);
                if (gaps[i] >= 0.5f)
                    n_decisive_diff++;
                match = 0;
                break;
            }
            if (codi_token_is_eog(g_model, best) || i + 1 == ng)
                break;
            assert_int_equal(codi_decode(c, &best, 1, np + i, false, err, sizeof(err)), 0);
        }
        n_same += match;
    }
    fclose(f);
    codi_context_free(c);
    FILE *nf = fopen(FIX "noise_floor_gemma3.txt", "r");
    assert_non_null(nf);
    char line[256];
    int floor_same = -1, floor_n = -1;
    while (fgets(line, sizeof(line), nf))
        sscanf(line, "greedy_same %d of %d", &floor_same, &floor_n);
    fclose(nf);
    printf("gemma3 greedy vs llama.cpp: %d of %d prompts identical (llama.cpp flash-attn vs non-flash: %d of %d); "
           "%d differences at a decisive step\n", n_same, n_prompts, floor_same, floor_n, n_decisive_diff);
    assert_true(n_prompts > 0 && floor_n == n_prompts);
    /* This base model's greedy runs pass through many near-ties (top-2
     * within 0.1 nats): llama.cpp's own flash-attention path already
     * differs on 3 of 10. So: codi may leave llama.cpp's path only at a
     * step where llama.cpp's own top-2 gap is below 0.5 (the "decisive"
     * threshold of the logits check), never at a clear step. */
    assert_int_equal(n_decisive_diff, 0);
}

static double ppl_of(int n_ctx, int n_chunks) {
    FILE *t = fopen("tests/data/eval.txt", "rb");
    assert_non_null(t);
    static char text[1 << 20];
    size_t len = fread(text, 1, sizeof(text), t);
    fclose(t);
    int32_t *toks = malloc(sizeof(int32_t) * (len + 16));
    assert_non_null(toks);
    int32_t n = codi_tokenize(g_model, text, len, toks, (int32_t)len + 16, true, false);
    assert_true(n >= n_ctx * n_chunks);
    codi_context *c = new_ctx(n_ctx);
    const int32_t nv = codi_model_n_vocab(g_model);
    double nll = 0.0;
    int count = 0;
    char err[256];
    for (int ch = 0; ch < n_chunks; ch++) {
        int32_t *w = toks + ch * n_ctx;
        const int32_t first = w[0];
        if (codi_model_add_bos(g_model))
            w[0] = codi_token_bos(g_model);
        assert_int_equal(codi_decode(c, w, n_ctx, 0, true, err, sizeof(err)), 0);
        w[0] = first;
        for (int j = n_ctx / 2; j < n_ctx - 1; j++) {
            const float *lg = codi_get_logits(c, j);
            double mx = lg[0];
            for (int32_t i = 1; i < nv; i++)
                mx = lg[i] > mx ? lg[i] : mx;
            double s = 0.0;
            for (int32_t i = 0; i < nv; i++)
                s += exp(lg[i] - mx);
            nll += mx + log(s) - lg[w[j + 1]];
            count++;
        }
    }
    free(toks);
    codi_context_free(c);
    return exp(nll / count);
}

static void check_ppl(int n_ctx, int n_chunks, bool bound) {
    FILE *f = fopen(FIX "ppl_gemma3.txt", "r");
    assert_non_null(f);
    char line[512];
    double ref = -1.0;
    while (fgets(line, sizeof(line), f)) {
        int cx, ch;
        double v;
        if (sscanf(line, "ctx %d chunks %d ppl %lf", &cx, &ch, &v) == 3 && cx == n_ctx && ch == n_chunks)
            ref = v;
    }
    fclose(f);
    assert_true(ref > 0.0);
    const double ppl = ppl_of(n_ctx, n_chunks);
    printf("gemma3 ppl ctx %d x %d: codi %.4f, llama.cpp %.4f, diff %.3f%%\n", n_ctx, n_chunks, ppl, ref,
           100.0 * fabs(ppl - ref) / ref);
    if (bound)
        assert_true(fabs(ppl - ref) / ref <= 0.01);
}

static void test_ppl_vs_llamacpp(void **state) {
    (void)state;
    if (g_quick) {
        check_ppl(1024, 1, true);
        return;
    }
    check_ppl(128, 4, false);
    check_ppl(1024, 2, true);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hparams),
        cmocka_unit_test(test_logits_vs_llamacpp),
        cmocka_unit_test(test_greedy_vs_llamacpp),
        cmocka_unit_test(test_ppl_vs_llamacpp),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
