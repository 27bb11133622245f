/* Tokenizer tests: token ids against llama.cpp's (fixtures captured by
 * tools/make_token_fixtures.py), detokenization, special tokens, BOS/EOS,
 * broken input, buffer contracts, and malformed vocabularies built in
 * memory. The model files come from tools/fetch_models.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "common.h"
#include "gguf.h"
#include "tokenizer.h"
#include "unicode.h"

#define SMOL "SmolLM2-135M-Instruct.Q4_1"
#define GEMMA "gemma-3-270m-q4_k_m"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

typedef struct loaded {
    codi_gguf *g;
    codi_vocab *v;
} loaded;

static loaded models[2]; /* SMOL, GEMMA: loaded once, freed at the end */

static codi_vocab *model_vocab(int which) {
    const char *name = which == 0 ? SMOL : GEMMA;
    if (models[which].v)
        return models[which].v;
    char path[512], err[256];
    snprintf(path, sizeof path, "%s/models/%s.gguf", CODI_SOURCE_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fail_msg("model file %s is missing: run tools/fetch_models.sh "
                 "(it fetches SmolLM2 and Gemma 3 270M into models/)",
                 path);
    }
    fclose(f);
    int rc = codi_gguf_open(path, &models[which].g, err, sizeof err);
    if (rc)
        fail_msg("codi_gguf_open(%s): %s", path, err);
    rc = codi_vocab_load(models[which].g, &models[which].v, err, sizeof err);
    if (rc)
        fail_msg("codi_vocab_load(%s): %s", path, err);
    return models[which].v;
}

static int teardown_models(void **state) {
    (void)state;
    for (int i = 0; i < 2; i++) {
        codi_vocab_free(models[i].v);
        codi_gguf_close(models[i].g);
        models[i].v = NULL;
        models[i].g = NULL;
    }
    return 0;
}

/* Tokenize into a malloc'd array, asserting the size contract. */
static int32_t *tokenize(const codi_vocab *v, const char *s, size_t n,
                         bool add, bool parse, int32_t *count) {
    int32_t need = codi_vocab_tokenize(v, s, n, NULL, 0, add, parse);
    assert_true(need <= 0);
    int32_t cap = -need;
    int32_t *t = malloc(((size_t)cap + 1) * sizeof *t);
    assert_non_null(t);
    int32_t got = codi_vocab_tokenize(v, s, n, t, cap, add, parse);
    assert_int_equal(got, cap);
    *count = got;
    return t;
}

/* Concatenated pieces of ids into a malloc'd buffer. */
static char *detokenize(const codi_vocab *v, const int32_t *ids, int32_t n,
                        bool special, size_t *len) {
    size_t cap = 64, used = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int32_t i = 0; i < n; i++) {
        int32_t k = codi_vocab_token_to_piece(v, ids[i], buf + used,
                                              (int32_t)(cap - used), special);
        if (k < 0) {
            while (cap - used < (size_t)-k)
                cap *= 2;
            buf = realloc(buf, cap);
            assert_non_null(buf);
            k = codi_vocab_token_to_piece(v, ids[i], buf + used,
                                          (int32_t)(cap - used), special);
            assert_true(k >= 0);
        }
        used += (size_t)k;
    }
    *len = used;
    return buf;
}

/* ------------------------------------------------------------- fixtures */

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
    buf[n] = '\0';
    fclose(f);
    *len = (size_t)n;
    return buf;
}

static int hexdig(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* Decode the hex (or "-") at s up to end of line into out; returns length. */
static size_t unhex(const char *s, char *out) {
    size_t n = 0;
    if (*s == '-')
        return 0;
    while (hexdig(s[0]) >= 0 && hexdig(s[1]) >= 0) {
        out[n++] = (char)(hexdig(s[0]) * 16 + hexdig(s[1]));
        s += 2;
    }
    return n;
}

static void check_fixtures(int which) {
    const char *name = which == 0 ? SMOL : GEMMA;
    codi_vocab *v = model_vocab(which);
    char path[512];
    snprintf(path, sizeof path, "%s/tests/fixtures/tokens/%s.txt",
             CODI_SOURCE_DIR, name);
    size_t flen;
    char *file = read_file(path, &flen);
    if (!file)
        fail_msg("fixture %s is missing (tools/make_token_fixtures.py)",
                 path);

    char *input = malloc(flen + 1), *expect_txt = malloc(flen + 1);
    int32_t *expect = malloc((flen + 1) * sizeof *expect);
    assert_non_null(input);
    assert_non_null(expect_txt);
    assert_non_null(expect);
    int records = 0, id_ok = 0, text_ok = 0, roundtrip = 0;
    int idx = -1;
    char mode = 0;
    size_t in_len = 0;
    int32_t n_expect = 0;
    for (char *line = file; line && *line;) {
        char *nl = strchr(line, '\n');
        if (nl)
            *nl = '\0';
        if (line[0] == 'S') {
            char hex0[2];
            if (sscanf(line, "S %d %c %1s", &idx, &mode, hex0) != 3)
                fail_msg("bad fixture line: %s", line);
            const char *h = strchr(strchr(line + 2, ' ') + 1, ' ') + 1;
            in_len = unhex(h, input);
        } else if (line[0] == 'T') {
            n_expect = 0;
            char *p = line + 1;
            while (*p) {
                char *end;
                long val = strtol(p, &end, 10);
                if (end == p)
                    break;
                expect[n_expect++] = (int32_t)val;
                p = end;
            }
        } else if (line[0] == 'D') {
            size_t exp_len = unhex(line + 2, expect_txt);
            bool add = mode != 'r', parse = mode == 's';
            int32_t n;
            int32_t *got = tokenize(v, input, in_len, add, parse, &n);
            records++;
            bool same = n == n_expect &&
                        memcmp(got, expect, (size_t)n * sizeof *got) == 0;
            if (same) {
                id_ok++;
            } else if (records - id_ok <= 5) {
                printf("  %s sample %d mode %c: %d ids, llama.cpp %d;"
                       " first difference at",
                       name, idx, mode, (int)n, (int)n_expect);
                int32_t k = 0;
                while (k < n && k < n_expect && got[k] == expect[k])
                    k++;
                printf(" %d (%d vs %d)\n", (int)k,
                       k < n ? (int)got[k] : -1,
                       k < n_expect ? (int)expect[k] : -1);
            }
            /* pieces of llama.cpp's ids must match its pieces */
            size_t dlen;
            char *text = detokenize(v, expect, n_expect, parse, &dlen);
            if (dlen == exp_len && memcmp(text, expect_txt, dlen) == 0)
                text_ok++;
            else if (records - text_ok <= 5)
                printf("  %s sample %d mode %c: pieces differ\n", name, idx,
                       mode);
            if (mode == 'r' && exp_len == in_len &&
                memcmp(expect_txt, input, in_len) == 0) {
                /* llama.cpp round-trips this text, so must we */
                size_t rlen;
                char *rt = detokenize(v, got, n, false, &rlen);
                assert_true(rlen == in_len &&
                            memcmp(rt, input, in_len) == 0);
                free(rt);
                roundtrip++;
            }
            free(text);
            free(got);
        }
        line = nl ? nl + 1 : NULL;
    }
    printf("  %s: ids match %d/%d records, pieces match %d/%d, "
           "%d round-trips\n",
           name, id_ok, records, text_ok, records, roundtrip);
    assert_true(records > 300);
    assert_int_equal(id_ok, records);
    assert_int_equal(text_ok, records);
    free(input);
    free(expect_txt);
    free(expect);
    free(file);
}

static void test_fixtures_smollm(void **state) {
    (void)state;
    check_fixtures(0);
}

static void test_fixtures_gemma(void **state) {
    (void)state;
    check_fixtures(1);
}

/* ------------------------------------------------------------ behaviour */

static void test_roundtrip(void **state) {
    (void)state;
    static const char *const texts[] = {
        "Hello world", " leading", "trailing ", "a\n\n\tb  c   ",
        "Café 中文 😀 👨‍👩‍👧 🇺🇸", "I'LL don't 123456789 3.14159",
        "def f(x):\n\treturn x  # comment\n", "",
    };
    for (int which = 0; which < 2; which++) {
        codi_vocab *v = model_vocab(which);
        for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
            int32_t n;
            size_t len = strlen(texts[i]);
            int32_t *ids = tokenize(v, texts[i], len, false, false, &n);
            size_t dlen;
            char *d = detokenize(v, ids, n, false, &dlen);
            assert_int_equal(dlen, len);
            assert_memory_equal(d, texts[i], len);
            free(d);
            free(ids);
        }
    }
}

static void test_special_parsing(void **state) {
    (void)state;
    codi_vocab *v = model_vocab(0);
    const char *s = "<|im_start|>user\nHi<|im_end|>";
    int32_t n;
    int32_t *ids = tokenize(v, s, strlen(s), false, true, &n);
    assert_true(n >= 4);
    assert_int_equal(ids[0], 1); /* <|im_start|> */
    assert_int_equal(ids[n - 1], 2); /* <|im_end|> */
    free(ids);
    ids = tokenize(v, s, strlen(s), false, false, &n);
    for (int32_t i = 0; i < n; i++) {
        assert_int_not_equal(ids[i], 1);
        assert_int_not_equal(ids[i], 2);
    }
    free(ids);

    /* Gemma's user-defined tokens ("\n\n") are cut out even when special
     * parsing is off; its control tokens only when it is on. */
    v = model_vocab(1);
    const char *g = "<start_of_turn>a\n\nb";
    ids = tokenize(v, g, strlen(g), false, true, &n);
    int32_t sot = ids[0];
    assert_true(codi_vocab_is_control(v, sot));
    bool has_nn = false;
    for (int32_t i = 0; i < n; i++)
        has_nn |= ids[i] == 108; /* "\n\n" */
    assert_true(has_nn);
    free(ids);
    ids = tokenize(v, g, strlen(g), false, false, &n);
    has_nn = false;
    for (int32_t i = 0; i < n; i++) {
        assert_int_not_equal(ids[i], sot);
        has_nn |= ids[i] == 108;
    }
    assert_true(has_nn);
    free(ids);
}

static void test_bos_eos(void **state) {
    (void)state;
    codi_vocab *smol = model_vocab(0), *gemma = model_vocab(1);
    assert_false(codi_vocab_add_bos(smol));
    assert_false(codi_vocab_add_eos(smol));
    assert_int_equal(codi_vocab_bos(smol), 1);
    assert_int_equal(codi_vocab_eos(smol), 2);
    assert_true(codi_vocab_add_bos(gemma));
    assert_false(codi_vocab_add_eos(gemma));
    assert_int_equal(codi_vocab_bos(gemma), 2);
    assert_int_equal(codi_vocab_eos(gemma), 1);

    int32_t n1, n2;
    int32_t *a = tokenize(gemma, "Hi", 2, true, false, &n1);
    int32_t *b = tokenize(gemma, "Hi", 2, false, false, &n2);
    assert_int_equal(n1, n2 + 1);
    assert_int_equal(a[0], 2);
    assert_memory_equal(a + 1, b, (size_t)n2 * sizeof *b);
    free(a);
    free(b);
    /* empty text with add_special is just BOS */
    a = tokenize(gemma, "", 0, true, false, &n1);
    assert_int_equal(n1, 1);
    assert_int_equal(a[0], 2);
    free(a);
    a = tokenize(smol, "", 0, true, false, &n1);
    assert_int_equal(n1, 0);
    free(a);

    /* end of generation */
    assert_true(codi_vocab_is_eog(smol, 2));  /* <|im_end|> */
    assert_true(codi_vocab_is_eog(smol, 0));  /* <|endoftext|> */
    assert_false(codi_vocab_is_eog(smol, 1)); /* <|im_start|> */
    assert_false(codi_vocab_is_eog(smol, 100));
    assert_false(codi_vocab_is_eog(smol, -1));
    assert_false(codi_vocab_is_eog(smol, 1 << 30));
    assert_true(codi_vocab_is_eog(gemma, 1)); /* <eos> */
    int32_t n;
    int32_t *eot = tokenize(gemma, "<end_of_turn>", 13, false, true, &n);
    assert_int_equal(n, 1);
    assert_true(codi_vocab_is_eog(gemma, eot[0]));
    free(eot);
}

static void test_buffer_contracts(void **state) {
    (void)state;
    codi_vocab *v = model_vocab(0);
    const char *s = "The quick brown fox";
    int32_t need = codi_vocab_tokenize(v, s, strlen(s), NULL, 0, true, false);
    assert_int_equal(need, -4);
    int32_t ids[8] = {0};
    assert_int_equal(codi_vocab_tokenize(v, s, strlen(s), ids, 3, true,
                                         false),
                     -4);
    assert_int_equal(codi_vocab_tokenize(v, s, strlen(s), ids, -5, true,
                                         false),
                     -4);
    assert_int_equal(codi_vocab_tokenize(v, s, strlen(s), ids, 8, true,
                                         false),
                     4);
    assert_int_equal(codi_vocab_tokenize(v, NULL, 0, ids, 8, false, false),
                     0);

    char buf[64];
    assert_int_equal(codi_vocab_token_to_piece(v, -1, buf, 64, true), 0);
    assert_int_equal(codi_vocab_token_to_piece(v, codi_vocab_n_tokens(v),
                                               buf, 64, true),
                     0);
    assert_int_equal(codi_vocab_token_to_piece(v, INT32_MAX, buf, 64, true),
                     0);
    /* control token: rendered only when special */
    assert_int_equal(codi_vocab_token_to_piece(v, 1, buf, 64, false), 0);
    assert_int_equal(codi_vocab_token_to_piece(v, 1, buf, 64, true), 12);
    assert_memory_equal(buf, "<|im_start|>", 12);
    assert_int_equal(codi_vocab_token_to_piece(v, 1, buf, 5, true), -12);
    assert_int_equal(codi_vocab_token_to_piece(v, 1, NULL, 0, true), -12);
    /* " quick" */
    assert_int_equal(codi_vocab_token_to_piece(v, ids[1], buf, 64, false),
                     6);
    assert_memory_equal(buf, " quick", 6);
}

/* Pieces are raw bytes: a character split across tokens comes back whole
 * once the pieces are joined. */
static void test_split_utf8_pieces(void **state) {
    (void)state;
    for (int which = 0; which < 2; which++) {
        codi_vocab *v = model_vocab(which);
        const char *s = "\xF0\x9F\xAB\xA8\xE2\x9C\xA8\xF0\x90\x8D\x88";
        int32_t n;
        int32_t *ids = tokenize(v, s, strlen(s), false, false, &n);
        bool partial = false;
        for (int32_t i = 0; i < n; i++) {
            char buf[64];
            int32_t k = codi_vocab_token_to_piece(v, ids[i], buf, 64, false);
            assert_true(k >= 0);
            if (k > 0 && (codi_utf8_len((uint8_t)buf[0]) != (size_t)k))
                partial = true;
        }
        assert_true(partial);
        size_t len;
        char *d = detokenize(v, ids, n, false, &len);
        assert_int_equal(len, strlen(s));
        assert_memory_equal(d, s, len);
        free(d);
        free(ids);
    }
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ull;

static uint64_t rng(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static void test_invalid_utf8(void **state) {
    (void)state;
    static const char *const cases[] = {
        "\xff", "\x80", "\xc3", "\xe4\xb8", "\xf0\x9f\x98", "\xf4\x90\x80\x80",
        "\xf7\xbf\xbf\xbf", "\xf8\x88\x80\x80\x80", "\xed\xa0\x80",
        "\xc0\x80", "a\xff\x62\xfe c", "<|im_start|>\xff<|im_end\xff|>",
    };
    char buf[512];
    for (int which = 0; which < 2; which++) {
        codi_vocab *v = model_vocab(which);
        int32_t nt = codi_vocab_n_tokens(v);
        for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
            for (int mode = 0; mode < 4; mode++) {
                int32_t n;
                int32_t *ids = tokenize(v, cases[i], strlen(cases[i]),
                                        mode & 1, mode & 2, &n);
                for (int32_t k = 0; k < n; k++)
                    assert_true(ids[k] >= 0 && ids[k] < nt);
                free(ids);
            }
        }
        /* random bytes, biased towards UTF-8 lead/continuation bytes and
         * special-token characters */
        static const char alphabet[] = "<|>_ \n\tab";
        for (int iter = 0; iter < 300; iter++) {
            size_t len = rng() % sizeof buf;
            for (size_t k = 0; k < len; k++) {
                uint64_t r = rng();
                switch (r % 4) {
                case 0: buf[k] = (char)(0x80 | (r >> 8) % 64); break;
                case 1: buf[k] = (char)(0xC0 | (r >> 8) % 64); break;
                case 2: buf[k] = alphabet[(r >> 8) % (sizeof alphabet - 1)];
                        break;
                default: buf[k] = (char)(r >> 8); break;
                }
            }
            int32_t n;
            int32_t *ids = tokenize(v, buf, len, true, iter & 1, &n);
            for (int32_t k = 0; k < n; k++)
                assert_true(ids[k] >= 0 && ids[k] < nt);
            size_t dlen;
            free(detokenize(v, ids, n, true, &dlen));
            free(ids);
        }
    }
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void test_speed_100k(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/tests/data/tokenizer_corpus.txt",
             CODI_SOURCE_DIR);
    size_t clen;
    char *corpus = read_file(path, &clen);
    assert_non_null(corpus);
    size_t len = 100 * 1024;
    char *text = malloc(len);
    assert_non_null(text);
    for (size_t i = 0; i < len; i++)
        text[i] = corpus[i % clen];
    for (int which = 0; which < 2; which++) {
        codi_vocab *v = model_vocab(which);
        for (int parse = 0; parse < 2; parse++) {
            double t0 = now();
            int32_t n;
            int32_t *ids = tokenize(v, text, len, true, parse, &n);
            /* tokenize() runs the tokenizer twice (size, then ids) */
            double dt = (now() - t0) / 2;
            printf("  %s: 100 KiB -> %d tokens in %.1f ms (parse_special "
                   "%d)\n",
                   which ? GEMMA : SMOL, (int)n, dt * 1e3, parse);
            assert_true(dt < (SANITIZED ? 10.0 : 0.5));
            free(ids);
        }
    }
    free(text);
    free(corpus);
}

/* ----------------------------------------------- vocabularies in memory */

typedef struct gbuf {
    uint8_t *p;
    size_t n, cap;
    uint64_t n_kv;
} gbuf;

static void gput(gbuf *b, const void *s, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 256;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static void gu32(gbuf *b, uint32_t x) { gput(b, &x, 4); }
static void gu64(gbuf *b, uint64_t x) { gput(b, &x, 8); }

static void gstr(gbuf *b, const char *s) {
    gu64(b, strlen(s));
    gput(b, s, strlen(s));
}

static void kv_str(gbuf *b, const char *key, const char *val) {
    gstr(b, key);
    gu32(b, CODI_GGUF_STRING);
    gstr(b, val);
    b->n_kv++;
}

static void kv_u32(gbuf *b, const char *key, uint32_t val) {
    gstr(b, key);
    gu32(b, CODI_GGUF_UINT32);
    gu32(b, val);
    b->n_kv++;
}

static void kv_bool(gbuf *b, const char *key, bool val) {
    gstr(b, key);
    gu32(b, CODI_GGUF_BOOL);
    uint8_t x = val;
    gput(b, &x, 1);
    b->n_kv++;
}

static void kv_strs(gbuf *b, const char *key, const char *const *vals,
                    size_t n) {
    gstr(b, key);
    gu32(b, CODI_GGUF_ARRAY);
    gu32(b, CODI_GGUF_STRING);
    gu64(b, n);
    for (size_t i = 0; i < n; i++)
        gstr(b, vals[i]);
    b->n_kv++;
}

static void kv_i32s(gbuf *b, const char *key, const int32_t *vals,
                    size_t n) {
    gstr(b, key);
    gu32(b, CODI_GGUF_ARRAY);
    gu32(b, CODI_GGUF_INT32);
    gu64(b, n);
    gput(b, vals, n * 4);
    b->n_kv++;
}

static void kv_f32s(gbuf *b, const char *key, const float *vals, size_t n) {
    gstr(b, key);
    gu32(b, CODI_GGUF_ARRAY);
    gu32(b, CODI_GGUF_FLOAT32);
    gu64(b, n);
    gput(b, vals, n * 4);
    b->n_kv++;
}

/* Header + the kvs written into body. */
static gbuf finish(gbuf *body) {
    gbuf f = {0};
    gput(&f, "GGUF", 4);
    gu32(&f, 3);
    gu64(&f, 0);
    gu64(&f, body->n_kv);
    gput(&f, body->p, body->n);
    free(body->p);
    body->p = NULL;
    return f;
}

/* Load a vocabulary from the kvs in body; returns the code, err filled. */
static int load_mem(gbuf *body, codi_vocab **v, codi_gguf **g, char *err,
                    size_t errlen, gbuf *file) {
    *file = finish(body);
    int rc = codi_gguf_parse(file->p, file->n, g, err, errlen);
    if (rc)
        fail_msg("gguf parse: %s", err);
    return codi_vocab_load(*g, v, err, errlen);
}

/* A byte-level vocabulary: the printable ASCII bytes, "Ġ", two merges. */
enum { TINY_MAX = 128 };
static const char *tiny_tokens[TINY_MAX];
static size_t tiny_n;
static char tiny_text[TINY_MAX][4];

static void tiny_vocab(gbuf *b, const char *model, const char *pre,
                       bool merges) {
    tiny_n = 0;
    tiny_tokens[tiny_n++] = "<|endoftext|>";
    for (int c = '!'; c <= '~'; c++) {
        tiny_text[tiny_n][0] = (char)c;
        tiny_text[tiny_n][1] = 0;
        tiny_tokens[tiny_n] = tiny_text[tiny_n];
        tiny_n++;
    }
    tiny_tokens[tiny_n++] = "\xC4\xA0";      /* Ġ = space */
    tiny_tokens[tiny_n++] = "\xC4\xA0h";
    tiny_tokens[tiny_n++] = "\xC4\xA0hi";
    kv_str(b, "tokenizer.ggml.model", model);
    if (pre)
        kv_str(b, "tokenizer.ggml.pre", pre);
    kv_strs(b, "tokenizer.ggml.tokens", tiny_tokens, tiny_n);
    if (merges) {
        static const char *const m[] = {"\xC4\xA0 h", "\xC4\xA0h i"};
        kv_strs(b, "tokenizer.ggml.merges", m, 2);
    }
}

static void test_tiny_bpe(void **state) {
    (void)state;
    gbuf b = {0}, file;
    tiny_vocab(&b, "gpt2", "gpt-2", true);
    int32_t types[TINY_MAX];
    for (size_t i = 0; i < tiny_n; i++)
        types[i] = i == 0 ? 3 : 1;
    kv_i32s(&b, "tokenizer.ggml.token_type", types, tiny_n);
    kv_u32(&b, "tokenizer.ggml.eos_token_id", 0);
    kv_bool(&b, "tokenizer.ggml.add_eos_token", true);
    codi_vocab *v;
    codi_gguf *g;
    char err[256] = "";
    int rc = load_mem(&b, &v, &g, err, sizeof err, &file);
    assert_int_equal(rc, 0);
    int32_t ids[16];
    int32_t n = codi_vocab_tokenize(v, "a hi<|endoftext|>", 17, ids, 16, true,
                                    true);
    /* a, " hi" (two merges), <|endoftext|>, EOS */
    assert_int_equal(n, 4);
    assert_int_equal(ids[0], 'a' - '!' + 1);
    assert_int_equal(ids[1], (int32_t)tiny_n - 1);
    assert_int_equal(ids[2], 0);
    assert_int_equal(ids[3], 0);
    assert_true(codi_vocab_is_eog(v, 0));
    /* a byte with no token ("é" bytes) is dropped, as llama.cpp does */
    n = codi_vocab_tokenize(v, "\xC3\xA9!", 3, ids, 16, false, false);
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 1);
    codi_vocab_free(v);
    codi_gguf_close(g);
    free(file.p);
}

static void test_tiny_spm(void **state) {
    (void)state;
    gbuf b = {0}, file;
    static const char *const toks[] = {
        "<unk>", "<s>", "</s>", "<0x41>", "<0x0A>", "\xE2\x96\x81",
        "a",     "b",   "ab",  "\xE2\x96\x81\x61\x62",
    };
    const float scores[] = {0, 0, 0, 0, 0, -1, -2, -2, -1, -0.5f};
    const int32_t types[] = {2, 3, 3, 6, 6, 1, 1, 1, 1, 1};
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", toks, 10);
    kv_f32s(&b, "tokenizer.ggml.scores", scores, 10);
    kv_i32s(&b, "tokenizer.ggml.token_type", types, 10);
    codi_vocab *v;
    codi_gguf *g;
    char err[256] = "";
    assert_int_equal(load_mem(&b, &v, &g, err, sizeof err, &file), 0);
    int32_t ids[16];
    /* default SPM: BOS, space prefix, "▁ab", byte fallback for A and \n,
     * <unk> for 'z' (no byte token) */
    int32_t n = codi_vocab_tokenize(v, "abA\nz", 5, ids, 16, true, false);
    assert_int_equal(n, 5);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 9);
    assert_int_equal(ids[2], 3);
    assert_int_equal(ids[3], 4);
    assert_int_equal(ids[4], 0);
    char buf[8];
    assert_int_equal(codi_vocab_token_to_piece(v, 9, buf, 8, false), 3);
    assert_memory_equal(buf, " ab", 3);
    assert_int_equal(codi_vocab_token_to_piece(v, 3, buf, 8, false), 1);
    assert_int_equal(buf[0], 'A');
    assert_int_equal(codi_vocab_token_to_piece(v, 0, buf, 8, false), 0);
    assert_int_equal(codi_vocab_token_to_piece(v, 0, buf, 8, true), 5);
    codi_vocab_free(v);
    codi_gguf_close(g);
    free(file.p);
}

static void expect_error(gbuf *b, int code, const char *needle) {
    gbuf file;
    codi_vocab *v = (codi_vocab *)1;
    codi_gguf *g;
    char err[256] = "";
    int rc = load_mem(b, &v, &g, err, sizeof err, &file);
    if (rc != code || !strstr(err, needle) || strchr(err, '\n'))
        fail_msg("expected %d with \"%s\", got %d: \"%s\"", code, needle, rc,
                 err);
    assert_null(v);
    codi_gguf_close(g);
    free(file.p);
}

static void test_malformed(void **state) {
    (void)state;
    gbuf b = {0};
    kv_str(&b, "general.name", "x");
    expect_error(&b, CODI_EFORMAT, "tokenizer.ggml.model");

    b = (gbuf){0};
    tiny_vocab(&b, "bert", NULL, false);
    expect_error(&b, CODI_EUNSUPPORTED, "'bert'");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "no-such-pre", true);
    expect_error(&b, CODI_EUNSUPPORTED, "'no-such-pre'");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "smollm", false);
    expect_error(&b, CODI_EFORMAT, "merges is missing");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "smollm", false);
    static const char *const bad_merge[] = {"ab"};
    kv_strs(&b, "tokenizer.ggml.merges", bad_merge, 1);
    expect_error(&b, CODI_EFORMAT, "merges[0]");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "smollm", true);
    int32_t types[3] = {1, 1, 1};
    kv_i32s(&b, "tokenizer.ggml.token_type", types, 3);
    expect_error(&b, CODI_EFORMAT, "token_type has 3 entries");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "smollm", true);
    float scores[2] = {0, 0};
    kv_f32s(&b, "tokenizer.ggml.scores", scores, 2);
    expect_error(&b, CODI_EFORMAT, "scores has 2 entries");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "smollm", true);
    kv_u32(&b, "tokenizer.ggml.bos_token_id", 100000);
    expect_error(&b, CODI_EFORMAT, "bos_token_id = 100000 is out of range");

    b = (gbuf){0};
    tiny_vocab(&b, "gpt2", "smollm", true);
    kv_str(&b, "tokenizer.ggml.eos_token_id", "2");
    expect_error(&b, CODI_EFORMAT, "eos_token_id");

    b = (gbuf){0};
    static const char *const dup[] = {"a", "b", "a"};
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", dup, 3);
    expect_error(&b, CODI_EFORMAT, "ids 0 and 2 have the same text");

    b = (gbuf){0};
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_str(&b, "tokenizer.ggml.tokens", "abc");
    expect_error(&b, CODI_EFORMAT, "not a string array");

    b = (gbuf){0};
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", dup, 0);
    expect_error(&b, CODI_EFORMAT, "0 entries");

    /* SPM: BOS is asked for by default, but id 1 does not exist here */
    b = (gbuf){0};
    static const char *const one[] = {"a"};
    kv_str(&b, "tokenizer.ggml.model", "llama");
    kv_strs(&b, "tokenizer.ggml.tokens", one, 1);
    expect_error(&b, CODI_EFORMAT, "no BOS token");
}

static void test_unicode_tables(void **state) {
    (void)state;
    assert_string_equal(codi_unicode_version(), "15.1.0");
    assert_true(codi_unicode_flags('a') & CODI_UCD_LETTER);
    assert_true(codi_unicode_flags('7') & CODI_UCD_NUMBER);
    assert_true(codi_unicode_flags(' ') & CODI_UCD_WHITESPACE);
    assert_true(codi_unicode_flags(0x3000) & CODI_UCD_WHITESPACE);
    assert_true(codi_unicode_flags(0x4E2D) & CODI_UCD_LETTER);    /* 中 */
    assert_true(codi_unicode_flags(0x0663) & CODI_UCD_NUMBER);    /* ٣ */
    assert_true(codi_unicode_flags(0x0301) & CODI_UCD_MARK);
    assert_true(codi_unicode_flags(0x1F600) & CODI_UCD_SYMBOL);
    assert_true(codi_unicode_flags(0x2EBF0) & CODI_UCD_LETTER);   /* 15.1 */
    assert_int_equal(codi_unicode_flags(0x110000), CODI_UCD_UNDEFINED);
    assert_int_equal(codi_unicode_tolower('L'), 'l');
    assert_int_equal(codi_unicode_tolower(0x130), 'i');
    assert_int_equal(codi_unicode_tolower(0x4E2D), 0x4E2D);
    size_t used;
    assert_int_equal(codi_utf8_decode("\xE4\xB8\xAD", 3, &used), 0x4E2D);
    assert_int_equal(used, 3);
    assert_int_equal(codi_utf8_decode("\xE4\xB8", 2, &used), 0xFFFD);
    assert_int_equal(used, 1);
    assert_int_equal(codi_utf8_decode("\xF4\x90\x80\x80", 4, &used), 0xFFFD);
    assert_int_equal(used, 1);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unicode_tables),
        cmocka_unit_test(test_tiny_bpe),
        cmocka_unit_test(test_tiny_spm),
        cmocka_unit_test(test_malformed),
        cmocka_unit_test(test_fixtures_smollm),
        cmocka_unit_test(test_fixtures_gemma),
        cmocka_unit_test(test_roundtrip),
        cmocka_unit_test(test_special_parsing),
        cmocka_unit_test(test_bos_eos),
        cmocka_unit_test(test_buffer_contracts),
        cmocka_unit_test(test_split_utf8_pieces),
        cmocka_unit_test(test_invalid_utf8),
        cmocka_unit_test(test_speed_100k),
    };
    return cmocka_run_group_tests(tests, NULL, teardown_models);
}
