/* Qwen2 and Qwen3 dense architectures on tiny random-weight GGUF files
 * (tools/make_synthetic_models.py, written with the gguf PyPI package),
 * against llama.cpp's logits for the same files (tools/make_reference_model.py
 * qwen2 qwen3): mean KL <= 0.01, top-1 >= 98% on decisive positions and
 * overall no worse than llama.cpp's own flash vs non-flash agreement minus 1,
 * as test_e2e.c for SmolLM2. Also: the loader's view of the files, batch
 * splitting, and broken variants of the files rejected with a clear error. */
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

#define SYN "tests/fixtures/synthetic/"
#define FIX "tests/fixtures/ref/"

static codi_model *load(const char *path) {
    char err[512];
    codi_model *m = NULL;
    int rc = codi_model_load(path, NULL, &m, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    return m;
}

static codi_context *new_ctx(codi_model *m, int32_t n_ctx, int32_t n_batch) {
    codi_context_params p = codi_context_default_params();
    p.n_ctx = n_ctx;
    p.n_batch = n_batch;
    p.n_threads = 2;
    codi_context *c = NULL;
    char err[512];
    assert_int_equal(codi_context_create(m, &p, &c, err, sizeof(err)), 0);
    return c;
}

static void check_vs_llamacpp(const char *tag) {
    char path[256], fix[256], nf[256];
    snprintf(path, sizeof(path), SYN "%s-tiny.gguf", tag);
    snprintf(fix, sizeof(fix), FIX "logits_%s.bin", tag);
    snprintf(nf, sizeof(nf), FIX "noise_floor_%s.txt", tag);
    codi_model *m = load(path);
    assert_string_equal(codi_model_arch(m), tag);
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
    assert_true(st.dec_pos > 100);
    assert_true(kl <= 0.01);
    assert_true(dec >= 98.0);
    assert_true(agree >= floor_agree - 1.0);
    codi_model_free(m);
}

static void test_qwen2_vs_llamacpp(void **state) {
    (void)state;
    check_vs_llamacpp("qwen2");
}

static void test_qwen3_vs_llamacpp(void **state) {
    (void)state;
    check_vs_llamacpp("qwen3");
}

static void test_loader_view(void **state) {
    (void)state;
    codi_model *m = load(SYN "qwen2-tiny.gguf");
    assert_int_equal(m->hp.arch_id, CODI_ARCH_QWEN2);
    assert_true(m->hp.rope_neox);
    assert_int_equal(m->hp.head_dim, 16);
    assert_non_null(m->layers[0].bq);
    assert_non_null(m->layers[1].bv);
    assert_null(m->layers[0].attn_q_norm);
    assert_ptr_equal(m->output.data, m->tok_embd.data); /* tied */
    codi_model_free(m);
    m = load(SYN "qwen3-tiny.gguf");
    assert_int_equal(m->hp.arch_id, CODI_ARCH_QWEN3);
    assert_int_equal(m->hp.head_dim, 32);
    assert_int_equal(m->hp.n_head * m->hp.head_dim, 128);
    assert_non_null(m->layers[0].attn_q_norm);
    assert_non_null(m->layers[0].attn_k_norm);
    assert_null(m->layers[0].bq);
    assert_true(m->output.data != m->tok_embd.data);
    codi_model_free(m);
}

/* One batch, batches of 5, and one token at a time give the same logits
 * (the fused Q/K/V product of qwen3 mixes Q8_0 and F16 weights). */
static void test_batch_split(void **state) {
    (void)state;
    const char *tags[] = {"qwen2", "qwen3"};
    for (int ti = 0; ti < 2; ti++) {
        char path[256];
        snprintf(path, sizeof(path), SYN "%s-tiny.gguf", tags[ti]);
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
        double d1 = 0.0, d2 = 0.0;
        const float *la = codi_get_logits(a, 39), *lb = codi_get_logits(b, 39), *lc = codi_get_logits(c1, -1);
        for (int32_t i = 0; i < nv; i++) {
            d1 = fmax(d1, fabs(la[i] - lb[i]));
            d2 = fmax(d2, fabs(la[i] - lc[i]));
        }
        assert_true(d1 < 1e-3);
        assert_true(d2 < 1e-3);
        codi_context_free(a);
        codi_context_free(b);
        codi_context_free(c1);
        codi_model_free(m);
    }
}

/* Broken variants: a required tensor renamed, a bias with the wrong size,
 * an unknown architecture name. Each is one clear error, never a crash. */
static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
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

/* Replace the first occurrence of a same-length string in the file. */
static int patch(unsigned char *b, size_t n, const char *from, const char *to) {
    const size_t k = strlen(from);
    assert_int_equal(strlen(to), k);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(b + i, from, k) == 0) {
            memcpy(b + i, to, k);
            return 1;
        }
    return 0;
}

static void expect_load_error(const char *src, const char *from, const char *to, const char *needle) {
    size_t n;
    unsigned char *b = slurp(src, &n);
    assert_true(patch(b, n, from, to));
    char tmp[] = "/tmp/codi_qwen_broken_XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "wb");
    assert_int_equal(fwrite(b, 1, n, f), n);
    fclose(f);
    free(b);
    codi_model *m = NULL;
    char err[512] = "";
    int rc = codi_model_load(tmp, NULL, &m, err, sizeof(err));
    remove(tmp);
    assert_true(rc < 0);
    assert_null(m);
    if (!strstr(err, needle))
        fprintf(stderr, "error '%s' does not name '%s'\n", err, needle);
    assert_non_null(strstr(err, needle));
}

static void test_broken_files(void **state) {
    (void)state;
    expect_load_error(SYN "qwen3-tiny.gguf", "blk.1.attn_k_norm.weight", "blk.1.attn_k_xorm.weight",
                      "blk.1.attn_k_norm.weight");
    expect_load_error(SYN "qwen2-tiny.gguf", "qwen2", "qwen9", "qwen9");
    expect_load_error(SYN "qwen3-tiny.gguf", "qwen3.attention.key_length", "qwen3.attention.key_lengtx",
                      "value_length");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loader_view),
        cmocka_unit_test(test_batch_split),
        cmocka_unit_test(test_qwen2_vs_llamacpp),
        cmocka_unit_test(test_qwen3_vs_llamacpp),
        cmocka_unit_test(test_broken_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
