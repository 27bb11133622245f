/* codi_convert_hf on tiny random-weight Hugging Face folders
 * (tests/fixtures/hf/, written by tools/make_hf_fixtures.py): the converted
 * GGUF loads, its logits match the NumPy reference forward of the original
 * weights (ref_logits.bin), its tokenizer round-trips text and its chat
 * template renders. A Gemma 3 folder with the real Gemma 3 tokenizer
 * (SentencePiece-style BPE) is generated at test time from
 * models/gemma-3-270m-q4_k_m.gguf: its conversion must tokenize exactly as
 * that GGUF and llama.cpp do. Broken folders are one clear error each and
 * leave no output file. */
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
#include "gguf.h"
#include "tokenizer.h"

#define HF "tests/fixtures/hf/"
#define GEMMA_GGUF "models/gemma-3-270m-q4_k_m.gguf"
#define GEMMA_TOKENS "tests/fixtures/tokens/gemma-3-270m-q4_k_m.txt"

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

/* Convert folder dir to out (type), load it, and compare its logits with
 * dir/ref_logits.bin (the NumPy forward of the original weights). */
static codi_model *convert_and_compare(const char *dir, const char *name, const char *out, int type, double max_abs,
                                       double max_kl, double min_top1) {
    char ref[512], err[512];
    snprintf(ref, sizeof(ref), "%s/ref_logits.bin", dir);
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
    free(toks);
    free(r);
    codi_context_free(c);
    return m;
}

static void check_folder(const char *name, int type, double max_abs, double max_kl, double min_top1) {
    char dir[256], out[512], err[512];
    snprintf(dir, sizeof(dir), HF "%s", name);
    snprintf(out, sizeof(out), "%s/%s-%d.gguf", g_tmp, name, type);
    codi_model *m = convert_and_compare(dir, name, out, type, max_abs, max_kl, min_top1);

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

/* ------------------------------------------------------------ Gemma 3 */

static void expect_fail(const char *from_dir, const char *file, const char *from, const char *to, const char *needle);

typedef struct vocab_file {
    codi_gguf *g;
    codi_vocab *v;
} vocab_file;

static vocab_file open_vocab(const char *path) {
    vocab_file f = {NULL, NULL};
    char err[512];
    if (codi_gguf_open(path, &f.g, err, sizeof(err)) || codi_vocab_load(f.g, &f.v, err, sizeof(err)))
        fail_msg("%s: %s", path, err);
    return f;
}

static void close_vocab(vocab_file *f) {
    codi_vocab_free(f->v);
    codi_gguf_close(f->g);
}

static int32_t *tokenize_all(const codi_vocab *v, const char *s, size_t n, bool add, bool parse, int32_t *count) {
    const int32_t need = -codi_vocab_tokenize(v, s, n, NULL, 0, add, parse);
    assert_true(need >= 0);
    int32_t *t = malloc(((size_t)need + 1) * sizeof(int32_t));
    assert_non_null(t);
    *count = codi_vocab_tokenize(v, s, n, t, need, add, parse);
    assert_int_equal(*count, need);
    return t;
}

static int hexval(char ch) {
    return ch >= '0' && ch <= '9' ? ch - '0' : ch >= 'a' && ch <= 'f' ? ch - 'a' + 10 : -1;
}

/* Every record of the Gemma token fixture (llama.cpp's ids for the corpus
 * tests/data/tokenizer_corpus.txt, 3 modes each) through the converted
 * vocabulary and the original one: ids must equal llama.cpp's and the
 * original's. Returns the number of records. */
static int check_gemma_fixture(const codi_vocab *conv, const codi_vocab *orig) {
    size_t n;
    char *file = (char *)slurp(GEMMA_TOKENS, &n);
    if (!file)
        fail_msg("fixture %s is missing (tools/make_token_fixtures.py)", GEMMA_TOKENS);
    char *input = malloc(n + 1);
    int32_t *want = malloc((n + 1) * sizeof(int32_t));
    assert_non_null(input);
    assert_non_null(want);
    int records = 0, same_llama = 0, same_orig = 0;
    size_t in_len = 0;
    char mode = 0;
    for (char *line = file; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (line[0] == 'S') {
            int idx;
            assert_int_equal(sscanf(line, "S %d %c", &idx, &mode), 2);
            const char *h = strrchr(line, ' ') + 1;
            in_len = 0;
            while (hexval(h[0]) >= 0 && hexval(h[1]) >= 0) {
                input[in_len++] = (char)(hexval(h[0]) * 16 + hexval(h[1]));
                h += 2;
            }
        } else if (line[0] == 'T') {
            int32_t nw = 0;
            for (char *q = line + 1, *end; (want[nw] = (int32_t)strtol(q, &end, 10)), end != q; q = end)
                nw++;
            const bool add = mode != 'r', parse = mode == 's';
            int32_t nc, no;
            int32_t *a = tokenize_all(conv, input, in_len, add, parse, &nc);
            int32_t *b = tokenize_all(orig, input, in_len, add, parse, &no);
            const bool eq_l = nc == nw && memcmp(a, want, (size_t)nc * sizeof(int32_t)) == 0;
            const bool eq_o = nc == no && memcmp(a, b, (size_t)nc * sizeof(int32_t)) == 0;
            if ((!eq_l || !eq_o) && records - (same_llama < same_orig ? same_llama : same_orig) < 5)
                printf("  record %d (mode %c, %zu bytes): converted %d ids, llama.cpp %d, original GGUF %d\n",
                       records, mode, in_len, nc, nw, no);
            same_llama += eq_l;
            same_orig += eq_o;
            records++;
            free(a);
            free(b);
        }
        line = nl ? nl + 1 : NULL;
    }
    printf("gemma3 converted tokenizer: ids identical to llama.cpp's on %d/%d records of %s, to the original GGUF's on "
           "%d/%d\n", same_llama, records, GEMMA_TOKENS, same_orig, records);
    assert_true(records > 300);
    assert_int_equal(same_llama, records);
    assert_int_equal(same_orig, records);
    free(input);
    free(want);
    free(file);
    return records;
}

/* A Gemma 3 Hugging Face folder: the real Gemma 3 tokenizer (from the
 * vocabulary of models/gemma-3-270m-q4_k_m.gguf, written by
 * tools/make_hf_fixtures.py --gemma3 in Hugging Face's tokenizer.json form,
 * which that script checks against Hugging Face tokenizers) and a tiny
 * random-weight Gemma3ForCausalLM. The converted GGUF must compute the
 * NumPy forward's logits and tokenize like the original GGUF. */
static void test_gemma3_folder(void **state) {
    (void)state;
    if (access(GEMMA_GGUF, R_OK) != 0)
        fail_msg("model file %s is missing: run tools/fetch_models.sh (it fetches SmolLM2 and Gemma 3 270M into "
                 "models/)", GEMMA_GGUF);
    char dir[300], cmd[700], out[400];
    snprintf(dir, sizeof(dir), "%s/gemma3-hf", g_tmp);
    snprintf(cmd, sizeof(cmd), "python3 tools/make_hf_fixtures.py --gemma3 " GEMMA_GGUF " '%s'", dir);
    fflush(stdout);
    const int st = system(cmd);
    if (st != 0)
        fail_msg("'%s' failed (status %d): it needs python3 with numpy and tokenizers "
                 "(pip install numpy tokenizers; .ci/run installs them)", cmd, st);

    snprintf(out, sizeof(out), "%s/gemma3-f32.gguf", g_tmp);
    codi_model_free(convert_and_compare(dir, "gemma3", out, CODI_CONVERT_F32, 0.02, 1e-5, 1.0));
    snprintf(out, sizeof(out), "%s/gemma3-f16.gguf", g_tmp);
    codi_model *m = convert_and_compare(dir, "gemma3", out, CODI_CONVERT_F16, 0.05, 1e-4, 1.0);

    /* every token: same piece and kind as in the original GGUF */
    vocab_file conv = open_vocab(out), orig = open_vocab(GEMMA_GGUF);
    const int32_t nv = codi_vocab_n_tokens(orig.v);
    assert_int_equal(codi_vocab_n_tokens(conv.v), nv);
    assert_int_equal(codi_vocab_bos(conv.v), codi_vocab_bos(orig.v));
    assert_int_equal(codi_vocab_eos(conv.v), codi_vocab_eos(orig.v));
    assert_int_equal(codi_vocab_add_bos(conv.v), codi_vocab_add_bos(orig.v));
    assert_int_equal(codi_vocab_add_eos(conv.v), codi_vocab_add_eos(orig.v));
    int same = 0;
    for (int32_t id = 0; id < nv; id++) {
        char pa[256], pb[256], qa[256], qb[256];
        const int32_t la = codi_vocab_token_to_piece(conv.v, id, pa, sizeof(pa), true);
        const int32_t lb = codi_vocab_token_to_piece(orig.v, id, pb, sizeof(pb), true);
        const int32_t ka = codi_vocab_token_to_piece(conv.v, id, qa, sizeof(qa), false);
        const int32_t kb = codi_vocab_token_to_piece(orig.v, id, qb, sizeof(qb), false);
        if (la == lb && la >= 0 && memcmp(pa, pb, (size_t)la) == 0 && ka == kb && ka >= 0 &&
            memcmp(qa, qb, (size_t)ka) == 0 &&
            codi_vocab_is_control(conv.v, id) == codi_vocab_is_control(orig.v, id) &&
            codi_vocab_is_eog(conv.v, id) == codi_vocab_is_eog(orig.v, id))
            same++;
        else if (nv - same <= 5)
            printf("  token %d differs from the original GGUF's\n", id);
    }
    printf("gemma3 converted vocabulary: %d/%d tokens identical to the original GGUF's\n", same, nv);
    assert_int_equal(same, nv);
    check_gemma_fixture(conv.v, orig.v);
    close_vocab(&conv);
    close_vocab(&orig);

    /* the chat template from chat_template.jinja */
    static const char *const roles[] = {"user"};
    static const char *const contents[] = {"Hi"};
    char *chat = NULL, err[512];
    assert_int_equal(codi_chat_apply(m, NULL, roles, contents, 1, true, &chat, err, sizeof(err)), 0);
    assert_string_equal(chat, "<bos><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n");
    free(chat);
    codi_model_free(m);

    /* what codi cannot convert faithfully is one clear error */
    expect_fail(dir, "tokenizer.json", "\"type\": \"BPE\"", "\"type\": \"Unigram\"",
                "tokenizer.json: model type 'Unigram' is not supported");
    expect_fail(dir, "tokenizer.json", "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xE2\x96\x81\"}",
                "{\"type\": \"NFKC\"}", "tokenizer.json: normalizer 'NFKC' is not supported");
    expect_fail(dir, "tokenizer.json", "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"\xE2\x96\x81\"}",
                "{\"type\": \"Replace\", \"pattern\": {\"String\": \" \"}, \"content\": \"_\"}",
                "tokenizer.json: normalizer 'Replace' of other text is not supported");
    expect_fail(dir, "tokenizer.json", "\"normalizer\": {\"type\": \"Replace\"", "\"normalizer\": null, \"x\": {\"type\": \"Replace\"",
                "tokenizer.json: pre_tokenizer 'Split' is not supported with SentencePiece-style BPE");
    expect_fail(dir, "tokenizer.json", "\"continuing_subword_prefix\": null", "\"continuing_subword_prefix\": \"##\"",
                "SentencePiece-style BPE with a continuing_subword_prefix is not supported");
    expect_fail(dir, "config.json", "\"sliding_attention\"", "\"full_attention\"",
                "config.json: layer_types is not a repeating run of sliding layers then one full layer (layer 1");
    expect_fail(dir, "config.json", "\"attn_logit_softcapping\": null", "\"attn_logit_softcapping\": 50.0",
                "config.json: attn_logit_softcapping is not supported");
}

/* Copy a model folder, optionally replacing text in one of its files. */
static void copy_folder(const char *from_dir, const char *dst, const char *file, const char *from, const char *to) {
    static const char *const files[] = {"config.json", "tokenizer.json", "tokenizer_config.json",
                                        "chat_template.jinja", "model.safetensors", "model.safetensors.index.json",
                                        "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"};
    mkdir(dst, 0755);
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char src[700], out[700];
        snprintf(src, sizeof(src), "%s/%s", from_dir, files[i]);
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

/* from_dir with one edit (file: replace from by to; from NULL: delete the
 * file) must fail to convert with one error line holding needle. A name
 * without '/' is a folder of tests/fixtures/hf/. */
static void expect_fail(const char *from_dir, const char *file, const char *from, const char *to, const char *needle) {
    static int k = 0;
    char dir[300], out[320], src[512], err[512] = "";
    snprintf(dir, sizeof(dir), "%s/bad%d", g_tmp, k);
    snprintf(out, sizeof(out), "%s/bad%d.gguf", g_tmp, k++);
    snprintf(src, sizeof(src), "%s%s", strchr(from_dir, '/') ? "" : HF, from_dir);
    copy_folder(src, dir, file, from, to);
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
    expect_fail("qwen2-tiny", "tokenizer.json", "\"type\": \"BPE\"", "\"type\": \"WordPiece\"",
                "model type 'WordPiece' is not supported");
    expect_fail("qwen2-tiny", "tokenizer.json", "\"byte_fallback\": false", "\"byte_fallback\": true",
                "pre_tokenizer 'Sequence' is not supported with SentencePiece-style BPE");
    expect_fail("qwen2-tiny", "tokenizer.json", "\"normalizer\": null",
                "\"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", \"prepend\": "
                "\"\xE2\x96\x81\"}, {\"type\": \"NFKC\"}]}",
                "normalizer 'NFKC' is not supported");
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
        cmocka_unit_test(test_gemma3_folder),
        cmocka_unit_test(test_bad_folders),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
