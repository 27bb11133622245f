/* codi moefy on a tiny random dense llama model written here (F32, the
 * byte-level BPE vocabulary of tests/fixtures/synthetic/qwen2-tiny.gguf):
 *   - K = E reproduces the dense logits (per-layer and decoupled routers);
 *   - every layer's experts are a balanced partition of the FFN neurons and
 *     the expert tensors hold exactly the source rows / columns (down x K);
 *   - the MoE keys and the copied metadata;
 *   - K < E runs, accuracy figures are sane;
 *   - bad arguments are refused with a message and no output file. */
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
#include "gguf.h"
#include "gguf_write.h"
#include "tensor/types.h"

#define VOCAB_SRC "tests/fixtures/synthetic/qwen2-tiny.gguf"
#define D 64
#define FF 128
#define NL 2
#define NH 4
#define NKV 2

static char g_dense[256], g_out[256];
static int32_t g_nvocab;

static uint32_t rng = 12345;
static float frand(void) { /* uniform in [-1, 1) */
    rng = rng * 1664525u + 1013904223u;
    return (float)(rng >> 8) / 8388608.0f - 1.0f;
}

typedef struct tdef {
    char name[64];
    int64_t ne0, ne1;
    float scale, mean; /* values mean + scale * U(-1, 1) */
} tdef;

static tdef g_t[64];
static int g_nt;

static void add(const char *name, int64_t ne0, int64_t ne1, float scale, float mean) {
    tdef *t = &g_t[g_nt++];
    snprintf(t->name, sizeof(t->name), "%s", name);
    t->ne0 = ne0;
    t->ne1 = ne1;
    t->scale = scale;
    t->mean = mean;
}

static int fill_t(void *user, size_t i, void *dst, size_t nbytes, char *err, size_t errlen) {
    (void)user, (void)err, (void)errlen;
    float *f = dst;
    rng = 777u + (uint32_t)i * 7919u;
    for (size_t k = 0; k < nbytes / 4; k++)
        f[k] = g_t[i].mean + g_t[i].scale * frand();
    return 0;
}

static int write_dense(const char *path) {
    codi_gguf *src = NULL;
    char err[256];
    assert_int_equal(codi_gguf_open(VOCAB_SRC, &src, err, sizeof(err)), 0);
    codi_gguf_writer *w = codi_gguf_writer_new();
    for (uint64_t i = 0; i < src->n_kv; i++)
        if (!strncmp(src->kv[i].key, "tokenizer.", 10))
            assert_int_equal(codi_gguf_w_copy(w, &src->kv[i]), 0);
    const codi_gguf_kv *tk = codi_gguf_find(src, "tokenizer.ggml.tokens");
    assert_non_null(tk);
    g_nvocab = (int32_t)tk->arr_n;
    codi_gguf_close(src);
    codi_gguf_w_str(w, "general.architecture", "llama");
    codi_gguf_w_str(w, "general.name", "moefy-test-tiny");
    codi_gguf_w_u32(w, "llama.context_length", 256);
    codi_gguf_w_u32(w, "llama.embedding_length", D);
    codi_gguf_w_u32(w, "llama.block_count", NL);
    codi_gguf_w_u32(w, "llama.feed_forward_length", FF);
    codi_gguf_w_u32(w, "llama.attention.head_count", NH);
    codi_gguf_w_u32(w, "llama.attention.head_count_kv", NKV);
    codi_gguf_w_f32(w, "llama.attention.layer_norm_rms_epsilon", 1e-5f);
    codi_gguf_w_f32(w, "llama.rope.freq_base", 10000.0f);
    g_nt = 0;
    const float si = 1.0f / sqrtf((float)D), sf = 1.0f / sqrtf((float)FF);
    add("token_embd.weight", D, g_nvocab, 1.0f, 0.0f);
    add("output_norm.weight", D, 1, 0.1f, 1.0f);
    add("output.weight", D, g_nvocab, si, 0.0f);
    char nm[64];
    for (int l = 0; l < NL; l++) {
#define T(s, a, b, sc, mu) snprintf(nm, sizeof(nm), "blk.%d." s ".weight", l), add(nm, a, b, sc, mu)
        T("attn_norm", D, 1, 0.1f, 1.0f);
        T("attn_q", D, D, si, 0.0f);
        T("attn_k", D, D / NH * NKV, si, 0.0f);
        T("attn_v", D, D / NH * NKV, si, 0.0f);
        T("attn_output", D, D, si, 0.0f);
        T("ffn_norm", D, 1, 0.1f, 1.0f);
        T("ffn_gate", D, FF, 2.0f * si, 0.0f);
        T("ffn_up", D, FF, 2.0f * si, 0.0f);
        T("ffn_down", FF, D, 2.0f * sf, 0.0f);
#undef T
    }
    for (int i = 0; i < g_nt; i++) {
        const int64_t ne[2] = {g_t[i].ne0, g_t[i].ne1};
        assert_int_equal(codi_gguf_w_tensor(w, g_t[i].name, CODI_TYPE_F32, g_t[i].ne1 == 1 ? 1 : 2, ne), 0);
    }
    int rc = codi_gguf_writer_write(w, path, fill_t, NULL, NULL, NULL, err, sizeof(err));
    if (rc)
        fprintf(stderr, "%s\n", err);
    codi_gguf_writer_free(w);
    return rc;
}

static char *g_eval;
static size_t g_eval_len;

static int setup(void **state) {
    (void)state;
    snprintf(g_dense, sizeof(g_dense), "/tmp/codi_moefy_dense_%d.gguf", (int)getpid());
    snprintf(g_out, sizeof(g_out), "/tmp/codi_moefy_out_%d.gguf", (int)getpid());
    if (write_dense(g_dense))
        return -1;
    FILE *f = fopen("tests/data/eval.txt", "rb");
    if (!f)
        return -1;
    g_eval = malloc(4097);
    g_eval_len = fread(g_eval, 1, 4096, f);
    g_eval[g_eval_len] = '\0';
    fclose(f);
    return 0;
}

static int teardown(void **state) {
    (void)state;
    remove(g_dense);
    remove(g_out);
    free(g_eval);
    return 0;
}

static codi_moefy_params params(int E, int K, int router, int type) {
    codi_moefy_params p = codi_moefy_default_params();
    p.n_expert = E;
    p.n_expert_used = K;
    p.router = router;
    p.expert_type = type;
    p.n_threads = 2;
    p.eval_text = g_eval;
    p.eval_len = g_eval_len;
    return p;
}

/* logits of both models over the same 48 tokens of eval.txt */
static double max_logit_diff(const char *a, const char *b, double *scale) {
    codi_model *ma = NULL, *mb = NULL;
    char err[256];
    assert_int_equal(codi_model_load(a, NULL, &ma, err, sizeof(err)), 0);
    if (codi_model_load(b, NULL, &mb, err, sizeof(err)))
        fail_msg("%s", err);
    int32_t toks[512];
    int32_t n = codi_tokenize(ma, g_eval + 1000, 400, toks, 512, true, false);
    assert_true(n >= 48);
    n = 48;
    codi_context_params cp = codi_context_default_params();
    cp.n_ctx = 64;
    cp.n_threads = 2;
    codi_context *ca = NULL, *cb = NULL;
    assert_int_equal(codi_context_create(ma, &cp, &ca, err, sizeof(err)), 0);
    assert_int_equal(codi_context_create(mb, &cp, &cb, err, sizeof(err)), 0);
    assert_int_equal(codi_decode(ca, toks, n, 0, true, err, sizeof(err)), 0);
    assert_int_equal(codi_decode(cb, toks, n, 0, true, err, sizeof(err)), 0);
    double mx = 0, sc = 0;
    for (int32_t i = 0; i < n; i++) {
        const float *la = codi_get_logits(ca, i), *lb = codi_get_logits(cb, i);
        for (int32_t v = 0; v < g_nvocab; v++) {
            assert_true(isfinite(lb[v]));
            mx = fmax(mx, fabs((double)la[v] - lb[v]));
            sc = fmax(sc, fabs((double)la[v]));
        }
    }
    codi_context_free(ca);
    codi_context_free(cb);
    codi_model_free(ma);
    codi_model_free(mb);
    *scale = sc;
    return mx;
}

static void test_k_equals_e(void **state) {
    (void)state;
    const int routers[3] = {CODI_MOEFY_ROUTER_LAYER, CODI_MOEFY_ROUTER_DECOUPLED, CODI_MOEFY_ROUTER_LAYER};
    const int types[2] = {CODI_TYPE_F32, -1};
    for (int r = 0; r < 3; r++)
        for (int t = 0; t < (r == 2 ? 1 : 2); t++) {
            codi_moefy_params p = params(4, 4, routers[r], types[t]);
            p.n_shared = r == 2 ? 32 : 0; /* shared neurons in every expert, counted once */
            char err[256] = "";
            if (codi_moefy(g_dense, g_out, &p, err, sizeof(err)))
                fail_msg("%s", err);
            double sc = 0;
            const double d = max_logit_diff(g_dense, g_out, &sc);
            fprintf(stderr, "K = E = 4, router %s, experts %s: max |logit diff| %.2e (max |logit| %.2f)\n",
                    r == 1 ? "decoupled" : r ? "layer, 32 shared" : "layer", t ? "keep (down q8_0)" : "f32", d, sc);
            /* f32: only the softmax weights' 1e-4 spread; q8_0 down: its rounding */
            assert_true(d <= (t ? 2e-2 : 2e-3) * sc);
        }
}

static const codi_gguf_tensor *tensor(const codi_gguf *g, const char *fmt, int l) {
    char nm[96];
    snprintf(nm, sizeof(nm), fmt, l);
    const codi_gguf_tensor *t = codi_gguf_find_tensor(g, nm);
    if (!t)
        fail_msg("missing %s", nm);
    return t;
}

static int32_t src_neuron(const int32_t *perm, int S, int fr, int e, int i) {
    return i < S ? perm[i] : perm[S + e * fr + i - S];
}

static void test_partition_and_format(void **state) {
    (void)state;
    const int E = 4, K = 2;
    for (int dec = 0; dec < 3; dec++) {
        const int S = dec == 2 ? 32 : 0, fr = (FF - S) / E, fe = S + fr; /* 2: layer router + shared */
        int32_t perm[NL * FF];
        codi_moefy_layer_stats st[NL];
        const int dtype = S ? CODI_TYPE_F32 : CODI_TYPE_Q8_0; /* fe = 56: no Q8_0 blocks */
        codi_moefy_params p = params(E, K, dec == 1, S ? CODI_TYPE_F32 : -1);
        p.n_shared = S;
        p.perm = perm;
        p.stats = st;
        char err[256] = "";
        if (codi_moefy(g_dense, g_out, &p, err, sizeof(err)))
            fail_msg("%s", err);
        codi_gguf *src = NULL, *out = NULL;
        assert_int_equal(codi_gguf_open(g_dense, &src, err, sizeof(err)), 0);
        assert_int_equal(codi_gguf_open(g_out, &out, err, sizeof(err)), 0);
        uint32_t u = 0;
        assert_int_equal(codi_gguf_get_u32(out, "llama.expert_count", &u), 0);
        assert_int_equal(u, E);
        assert_int_equal(codi_gguf_get_u32(out, "llama.expert_used_count", &u), 0);
        assert_int_equal(u, K);
        assert_int_equal(codi_gguf_get_u32(out, "llama.feed_forward_length", &u), 0);
        assert_int_equal(u, fe);
        const int has_src = codi_gguf_get_u32(out, "llama.codi.router_source_layer", &u) == 0;
        assert_int_equal(has_src, dec == 1);
        if (dec == 1)
            assert_int_equal(u, 0);
        const codi_gguf_kv *a = codi_gguf_find(src, "tokenizer.ggml.tokens"),
                           *b = codi_gguf_find(out, "tokenizer.ggml.tokens");
        assert_non_null(b);
        assert_int_equal(a->arr_n, b->arr_n);
        for (uint64_t i = 0; i < a->arr_n; i++)
            assert_memory_equal(a->arr_str[i].ptr, b->arr_str[i].ptr, a->arr_str[i].len);
        assert_int_equal(out->n_tensors, src->n_tensors + NL); /* 3 dense -> 4 per layer */
        for (int l = 0; l < NL; l++) {
            /* a partition into E clusters of fe */
            int seen[FF] = {0};
            for (int j = 0; j < FF; j++) {
                const int32_t v = perm[l * FF + j];
                assert_true(v >= 0 && v < FF);
                seen[v]++;
            }
            for (int j = 0; j < FF; j++)
                assert_int_equal(seen[j], 1);
            assert_null(codi_gguf_find_tensor(out, "blk.0.ffn_gate.weight"));
            const codi_gguf_tensor *r = tensor(out, "blk.%d.ffn_gate_inp.weight", l);
            assert_int_equal(r->type, CODI_TYPE_F32);
            assert_true(r->ne[0] == D && r->ne[1] == E);
            const codi_gguf_tensor *sg = tensor(src, "blk.%d.ffn_gate.weight", l),
                                   *su = tensor(src, "blk.%d.ffn_up.weight", l),
                                   *sd = tensor(src, "blk.%d.ffn_down.weight", l),
                                   *og = tensor(out, "blk.%d.ffn_gate_exps.weight", l),
                                   *ou = tensor(out, "blk.%d.ffn_up_exps.weight", l),
                                   *od = tensor(out, "blk.%d.ffn_down_exps.weight", l);
            assert_true(og->ne[0] == D && og->ne[1] == fe && og->ne[2] == E && og->type == CODI_TYPE_F32);
            assert_true(od->ne[0] == fe && od->ne[1] == D && od->ne[2] == E && od->type == dtype);
            const float *g0 = sg->data, *u0 = su->data, *d0 = sd->data;
            const float *g1 = og->data, *u1 = ou->data;
            for (int j = 0; j < E * fe; j++) { /* expert j / fe, row j % fe */
                const int32_t sj = src_neuron(perm + l * FF, S, fr, j / fe, j % fe);
                assert_memory_equal(g1 + (size_t)j * D, g0 + (size_t)sj * D, D * sizeof(float));
                assert_memory_equal(u1 + (size_t)j * D, u0 + (size_t)sj * D, D * sizeof(float));
            }
            const codi_type_traits *q8 = codi_type_get(dtype);
            const size_t rb = codi_row_size(dtype, fe);
            float row[FF];
            for (int e = 0; e < E; e++)
                for (int o = 0; o < D; o++) {
                    q8->to_float((const uint8_t *)od->data + ((size_t)e * D + o) * rb, row, fe);
                    for (int i = 0; i < fe; i++) {
                        const float want = (i < S ? 1.0f : (float)K) * d0[(size_t)o * FF + src_neuron(perm + l * FF, S, fr, e, i)];
                        assert_true(fabsf(row[i] - want) <= 0.01f * K * 2.0f / sqrtf((float)FF) + 1e-6f);
                    }
                }
            assert_true(st[l].match_layer >= 0.0f && st[l].match_layer <= 1.0f);
            assert_true(st[l].match_decoupled >= 0.0f && st[l].match_decoupled <= 1.0f);
            assert_true(st[l].mass_oracle + 1e-5f >= st[l].mass_layer);
            assert_true(st[l].mass_oracle + 1e-5f >= st[l].mass_decoupled);
            assert_true(st[l].mass_oracle > 0.4f && st[l].mass_oracle <= 1.0001f);
            /* better than chance (K/E) */
            assert_true(st[l].match_layer > 0.5f);
        }
        codi_gguf_close(src);
        codi_gguf_close(out);
        /* the K < E model runs */
        double sc = 0;
        const double diff = max_logit_diff(g_dense, g_out, &sc);
        fprintf(stderr, "E %d K %d router %s: layer-router match %.3f %.3f, max |logit diff| %.3f of %.3f\n", E, K,
                dec == 1 ? "decoupled" : dec ? "layer, 32 shared" : "layer", st[0].match_layer, st[1].match_layer, diff, sc);
        assert_true(diff < sc);
    }
}

static void expect_refused(codi_moefy_params p, const char *in, const char *needle) {
    char err[256] = "";
    remove(g_out);
    const int rc = codi_moefy(in, g_out, &p, err, sizeof(err));
    assert_true(rc < 0);
    if (!strstr(err, needle))
        fail_msg("error '%s' lacks '%s'", err, needle);
    assert_int_not_equal(access(g_out, F_OK), 0);
    char tmp[300];
    snprintf(tmp, sizeof(tmp), "%s.tmp", g_out);
    assert_int_not_equal(access(tmp, F_OK), 0);
}

static void test_bad_args(void **state) {
    (void)state;
    expect_refused(params(4, 5, 0, -1), g_dense, "--top-k");
    expect_refused(params(4, 0, 0, -1), g_dense, "--top-k");
    expect_refused(params(1, 1, 0, -1), g_dense, "--experts");
    expect_refused(params(3, 1, 0, -1), g_dense, "does not divide");
    expect_refused(params(8, 2, 0, -1), g_dense, "multiple of the Q8_0 block");
    expect_refused(params(4, 2, 7, -1), g_dense, "router");
    codi_moefy_params ps = params(4, 2, 0, CODI_TYPE_F32);
    ps.n_shared = 30; /* 98 routed neurons: not 4 experts */
    expect_refused(ps, g_dense, "less the shared neurons");
    ps.n_shared = 128;
    expect_refused(ps, g_dense, "--shared");
    expect_refused(params(4, 2, 0, CODI_TYPE_Q4_0), g_dense, "expert type");
    expect_refused(params(4, 2, 0, -1), VOCAB_SRC, "llama");
    expect_refused(params(4, 2, 0, -1), "tests/fixtures/synthetic/mixtral-tiny.gguf", "already");
    codi_moefy_params p = params(4, 2, 0, -1);
    p.calib_text = "";
    p.calib_len = 0;
    expect_refused(p, g_dense, "empty");
    p.calib_text = "too short";
    p.calib_len = 9;
    expect_refused(p, g_dense, "tokens");
    expect_refused(params(4, 2, 0, -1), "/nonexistent/model.gguf", "");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_k_equals_e),
        cmocka_unit_test(test_partition_and_format),
        cmocka_unit_test(test_bad_args),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
