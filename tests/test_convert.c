/* codi_convert_hf on tiny random-weight Hugging Face folders
 * (tests/fixtures/hf/, written by tools/make_hf_fixtures.py): the converted
 * GGUF loads, its logits match the NumPy reference forward of the original
 * weights (ref_logits.bin), its tokenizer round-trips text and its chat
 * template renders. Broken folders are one clear error each and leave no
 * output file. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "codi.h"

#define HF "tests/fixtures/hf/"

static char g_tmp[256];

static int setup(void **state) {
    (void)state;
    snprintf(g_tmp, sizeof(g_tmp), "/tmp/codi_convert_XXXXXX");
    return mkdtemp(g_tmp) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[400];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", g_tmp);
    return system(cmd) == 0 ? 0 : -1;
}

static unsigned char *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *b = malloc((size_t)sz + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)sz, f), (size_t)sz);
    b[sz] = 0;
    fclose(f);
    *n = (size_t)sz;
    return b;
}

static void spit(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void check_folder(const char *name, int type, double max_abs, double max_kl, double min_top1) {
    char dir[256], out[512], ref[256], err[512];
    snprintf(dir, sizeof(dir), HF "%s", name);
    snprintf(out, sizeof(out), "%s/%s-%d.gguf", g_tmp, name, type);
    snprintf(ref, sizeof(ref), HF "%s/ref_logits.bin", name);
    codi_convert_params p = {type, NULL, NULL};
    int rc = codi_convert_hf(dir, out, &p, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);
    codi_model *m = NULL;
    rc = codi_model_load(out, NULL, &m, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(rc, 0);

    size_t n;
    unsigned char *r = slurp(ref, &n);
    assert_non_null(r);
    assert_memory_equal(r, "CODIHF01", 8);
    uint32_t nt, nv;
    memcpy(&nt, r + 8, 4);
    int32_t *toks = (int32_t *)malloc(nt * sizeof(int32_t));
    memcpy(toks, r + 12, nt * 4);
    memcpy(&nv, r + 12 + nt * 4, 4);
    assert_int_equal((int32_t)nv, codi_model_n_vocab(m));
    const float *want = (const float *)(r + 16 + nt * 4);
    assert_int_equal(n, 16 + nt * 4 + (size_t)nt * nv * 4);

    codi_context_params cp = codi_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    codi_context *c = NULL;
    assert_int_equal(codi_context_create(m, &cp, &c, err, sizeof(err)), 0);
    assert_int_equal(codi_decode(c, toks, (int32_t)nt, 0, true, err, sizeof(err)), 0);
    double worst = 0.0, kl_sum = 0.0;
    int top1 = 0;
    for (uint32_t t = 0; t < nt; t++) {
        const float *got = codi_get_logits(c, (int32_t)t);
        const float *w = want + (size_t)t * nv;
        int bg = 0, bw = 0;
        double mg = got[0], mw = w[0];
        for (uint32_t i = 0; i < nv; i++) {
            worst = fmax(worst, fabs((double)got[i] - w[i]));
            if (got[i] > got[bg]) bg = (int)i;
            if (w[i] > w[bw]) bw = (int)i;
            mg = fmax(mg, got[i]);
            mw = fmax(mw, w[i]);
        }
        double sg = 0.0, sw = 0.0;
        for (uint32_t i = 0; i < nv; i++) {
            sg += exp(got[i] - mg);
            sw += exp(w[i] - mw);
        }
        double kl = 0.0;
        for (uint32_t i = 0; i < nv; i++) {
            const double lw = w[i] - mw - log(sw), lg = got[i] - mg - log(sg);
            kl += exp(lw) * (lw - lg);
        }
        kl_sum += kl;
        top1 += bg == bw;
    }
    printf("convert %s --type %s: max |logit - numpy| %.5f, mean KL %.2e, top-1 %d of %u\n", name,
           type == CODI_CONVERT_F32 ? "f32" : type == CODI_CONVERT_F16 ? "f16" : "q8_0", worst, kl_sum / nt, top1, nt);
    assert_true(worst <= max_abs);
    assert_true(kl_sum / nt <= max_kl);
    assert_true(top1 >= (int)(min_top1 * nt));

    /* tokenizer: text round-trips; special tokens are single ids */
    const char *text = "the cat sat on 123 mats, then the other cat!<|im_end|>";
    int32_t ids[256];
    int32_t k = codi_tokenize(m, text, strlen(text), ids, 256, false, true);
    assert_true(k > 5 && k < 60);
    char back[512] = "";
    size_t bl = 0;
    for (int32_t i = 0; i < k; i++) {
        int32_t pl = codi_token_to_piece(m, ids[i], back + bl, (int32_t)(sizeof(back) - bl - 1), true);
        assert_true(pl >= 0);
        bl += (size_t)pl;
    }
    back[bl] = '\0';
    assert_string_equal(back, text);
    assert_true(codi_token_is_eog(m, ids[k - 1]));
    /* chat template from tokenizer_config.json */
    static const char *const roles[] = {"user"};
    static const char *const contents[] = {"Hi"};
    char *chat = NULL;
    assert_int_equal(codi_chat_apply(m, NULL, roles, contents, 1, true, &chat, err, sizeof(err)), 0);
    assert_string_equal(chat, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(chat);
    free(toks);
    free(r);
    codi_context_free(c);
    codi_model_free(m);
}

static void test_qwen2_folder(void **state) {
    (void)state;
    check_folder("qwen2-tiny", CODI_CONVERT_F32, 0.05, 1e-4, 1.0);
    check_folder("qwen2-tiny", CODI_CONVERT_F16, 0.05, 1e-4, 1.0);
    check_folder("qwen2-tiny", CODI_CONVERT_Q8_0, 1.0, 0.01, 0.9);
}

static void test_llama_sharded_folder(void **state) {
    (void)state;
    check_folder("llama-tiny", CODI_CONVERT_F32, 0.05, 1e-4, 1.0);
    check_folder("llama-tiny", CODI_CONVERT_F16, 0.05, 1e-4, 1.0);
    check_folder("llama-tiny", CODI_CONVERT_Q8_0, 1.0, 0.01, 0.9);
}

/* Copy a fixture folder, optionally replacing text in one of its files. */
static void copy_folder(const char *name, const char *dst, const char *file, const char *from, const char *to) {
    static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                        "model.safetensors", "model.safetensors.index.json",
                                        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    mkdir(dst, 0755);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char src[512], out[700];
        snprintf(src, sizeof(src), HF "%s/%s", name, files[i]);
        snprintf(out, sizeof(out), "%s/%s", dst, files[i]);
        size_t n;
        unsigned char *b = slurp(src, &n);
        if (!b) {
            unlink(out);
            continue;
        }
        if (file && strcmp(file, files[i]) == 0) {
            if (!from) { /* delete the file */
                free(b);
                unlink(out);
                continue;
            }
            char *hit = memmem(b, n, from, strlen(from));
            assert_non_null(hit);
            const size_t fl = strlen(from), tl = strlen(to);
            unsigned char *nb = malloc(n - fl + tl + 1);
            const size_t pre = (size_t)(hit - (char *)b);
            memcpy(nb, b, pre);
            memcpy(nb + pre, to, tl);
            memcpy(nb + pre + tl, hit + fl, n - pre - fl);
            free(b);
            b = nb;
            n = n - fl + tl;
        }
        spit(out, b, n);
        free(b);
    }
}

static void expect_fail(const char *name, const char *file, const char *from, const char *to, const char *needle) {
    static int k = 0;
    char dir[300], out[320], err[512] = "";
    snprintf(dir, sizeof(dir), "%s/bad%d", g_tmp, k);
    snprintf(out, sizeof(out), "%s/bad%d.gguf", g_tmp, k++);
    copy_folder(name, dir, file, from, to);
    int rc = codi_convert_hf(dir, out, NULL, err, sizeof(err));
    if (rc == 0 || !strstr(err, needle))
        fprintf(stderr, "expected an error naming '%s', got %d: '%s'\n", needle, rc, err);
    assert_true(rc < 0);
    assert_non_null(strstr(err, needle));
    assert_null(strchr(err, '\n'));
    assert_int_equal(access(out, F_OK), -1);
}

static void test_bad_folders(void **state) {
    (void)state;
    expect_fail("qwen2-tiny", "config.json", "\"hidden_size\"", "\"hidden_sizes\"",
                "config.json: missing key 'hidden_size'");
    expect_fail("qwen2-tiny", "config.json", "Qwen2ForCausalLM", "MambaForCausalLM",
                "unsupported architecture 'MambaForCausalLM'");
    expect_fail("qwen2-tiny", "config.json", "\"intermediate_size\": 64", "\"intermediate_size\": 96",
                "tensor 'model.layers.0.mlp.gate_proj.weight' has shape [64, 32], the config says [96, 32]");
    expect_fail("qwen2-tiny", "config.json", "\"vocab_size\": 288", "\"vocab_size\": 100",
                "outside the vocabulary of 100");
    expect_fail("qwen2-tiny", "tokenizer.json", "\"type\": \"BPE\"", "\"type\": \"Unigram\"",
                "model type 'Unigram' is not supported");
    expect_fail("qwen2-tiny", "tokenizer.json", "\"byte_fallback\": false", "\"byte_fallback\": true",
                "SentencePiece-style BPE");
    expect_fail("qwen2-tiny", "tokenizer.json", NULL, NULL, "has no tokenizer.json");
    expect_fail("qwen2-tiny", "model.safetensors", "\"BF16\"", "\"I64\" ", "has dtype I64");
    expect_fail("llama-tiny", "model-00002-of-00002.safetensors", NULL, NULL, "model-00002-of-00002.safetensors");
    expect_fail("llama-tiny", "model.safetensors.index.json", "\"lm_head.weight\"", "\"lm_head.weigh\"",
                "tensor 'lm_head.weigh' of the index is missing");
    expect_fail("llama-tiny", "tokenizer_config.json", "\"<|im_start|>\"", "\"<|nope|>\"",
                "bos_token '<|nope|>' is not in the vocabulary");
    /* output cannot be created */
    char err[256];
    assert_int_equal(codi_convert_hf(HF "qwen2-tiny", "/nonexistent/dir/x.gguf", NULL, err, sizeof(err)), CODI_EIO);
    assert_non_null(strstr(err, "cannot create"));
    assert_int_equal(codi_convert_hf("/nonexistent", "/tmp/x.gguf", NULL, err, sizeof(err)), CODI_ENOTFOUND);
    assert_non_null(strstr(err, "has no config.json"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_qwen2_folder),
        cmocka_unit_test(test_llama_sharded_folder),
        cmocka_unit_test(test_bad_folders),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
