/* Fuzz target: the GGUF reader (codi_gguf_parse on the input bytes), every
 * lookup and getter on what it accepts, and the tokenizer built from the
 * file's metadata (codi_vocab_load), which then tokenizes and renders a
 * little text. Input: a GGUF file. */
#include "fuzz_common.h"

#include "gguf.h"
#include "tokenizer.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    return 0;
}

static volatile uint64_t sink;
static volatile double dsink;

static void walk(const codi_gguf *g) {
    FUZZ_CHECK(g->version == 2 || g->version == 3);
    FUZZ_CHECK(g->data_offset <= g->size || g->n_tensors == 0);
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const codi_gguf_kv *kv = &g->kv[i];
        FUZZ_CHECK(codi_gguf_find(g, kv->key) == kv);
        uint32_t u;
        int32_t s;
        float f;
        bool b;
        char *str = NULL;
        (void)codi_gguf_get_u32(g, kv->key, &u);
        (void)codi_gguf_get_i32(g, kv->key, &s);
        (void)codi_gguf_get_f32(g, kv->key, &f);
        (void)codi_gguf_get_bool(g, kv->key, &b);
        if (codi_gguf_get_str(g, kv->key, &str) == 0) {
            FUZZ_CHECK(strlen(str) <= kv->str.len);
            free(str);
        }
        if (kv->type == CODI_GGUF_ARRAY && kv->arr_n > 0) {
            uint64_t last = kv->arr_n - 1;
            if (kv->arr_type == CODI_GGUF_STRING) {
                const codi_gguf_str *e = &kv->arr_str[last];
                if (e->len)
                    sink += (uint8_t)e->ptr[e->len - 1];
            } else {
                sink += (uint64_t)codi_gguf_arr_i64(kv, last);
                dsink += codi_gguf_arr_f64(kv, 0);
            }
        }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        FUZZ_CHECK(codi_gguf_find_tensor(g, t->name) == t);
        if (t->nbytes) {
            const uint8_t *p = t->data;
            FUZZ_CHECK(p >= (const uint8_t *)g->map &&
                       t->nbytes <= g->size - (uint64_t)(p - (const uint8_t *)g->map));
            sink += p[0] + p[t->nbytes - 1];
        }
    }
}

static void vocab(const codi_gguf *g, const uint8_t *data, size_t size) {
    codi_vocab *v = NULL;
    char err[512] = "";
    int rc = codi_vocab_load(g, &v, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
        FUZZ_CHECK(v == NULL);
        return;
    }
    int32_t n = codi_vocab_n_tokens(v);
    FUZZ_CHECK(n > 0);
    int32_t bos = codi_vocab_bos(v), eos = codi_vocab_eos(v);
    FUZZ_CHECK(bos >= -1 && bos < n && eos >= -1 && eos < n);
    /* Text: a fixed sample, then the input's last bytes (raw, any bytes). */
    static const char sample[] = "Hello <|im_start|>world</s> 12345 \xe6\x97\xa5!";
    int32_t toks[512];
    for (int pass = 0; pass < 2; pass++) {
        const char *text = pass ? (const char *)data + (size > 64 ? size - 64 : 0)
                                : sample;
        size_t len = pass ? (size > 64 ? 64 : size) : sizeof sample - 1;
        int32_t k = codi_vocab_tokenize(v, text, len, toks, 512, pass == 0,
                                        pass == 0);
        FUZZ_CHECK(k != INT32_MIN);
        FUZZ_CHECK(k >= 0); /* 64 bytes + specials never need 512 tokens */
        for (int32_t i = 0; i < k; i++) {
            FUZZ_CHECK(toks[i] >= 0 && toks[i] < n);
            char piece[64];
            int32_t np = codi_vocab_token_to_piece(v, toks[i], piece,
                                                   sizeof piece, true);
            FUZZ_CHECK(np <= (int32_t)sizeof piece);
        }
    }
    char piece[8];
    (void)codi_vocab_token_to_piece(v, n - 1, piece, sizeof piece, false);
    (void)codi_vocab_token_to_piece(v, n, piece, sizeof piece, true);
    (void)codi_vocab_is_eog(v, n - 1);
    codi_vocab_free(v);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    codi_gguf *g = NULL;
    char err[512] = "";
    int rc = codi_gguf_parse(data, size, &g, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
        FUZZ_CHECK(g == NULL);
        return 0;
    }
    walk(g);
    vocab(g, data, size);
    codi_gguf_close(g);
    return 0;
}
