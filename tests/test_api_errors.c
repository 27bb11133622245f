/* The error contract of the public API (docs/errors.md): each bad-input
 * class gets its CODI_E* code, a one-line printable message, and leaves
 * *out NULL; a NULL or zero-length err buffer is accepted; every _free and
 * _close takes NULL. Broken files are made here in a private temporary
 * directory from the small seed model tests/fuzz/corpus/model/tiny-bpe.gguf
 * (a loadable 16 KiB llama); past fuzz crashes are loaded too. The CLI's
 * side of the contract is tests/cli_errors.sh. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codi.h"

#define TINY CODI_SOURCE_DIR "/tests/fuzz/corpus/model/tiny-bpe.gguf"
#define REGRESS CODI_SOURCE_DIR "/tests/fuzz/regress"

static char tmpdir[256];
static codi_model *tiny;

/* rc is one of the CODI_E* codes, and err one non-empty printable line. */
static void check_err(int rc, int want, const char *err) {
    if (want != 0 && rc != want)
        fail_msg("got %d (%s), want %d; message: %s", rc, codi_strerror(rc),
                 want, err);
    assert_true(rc < 0 && rc >= CODI_ENOTFOUND);
    assert_true(err[0] != '\0');
    for (const char *p = err; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            fail_msg("control byte 0x%02x in message: %s", (unsigned char)*p,
                     err);
}

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    assert_non_null(p);
    assert_int_equal(fread(p, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return p;
}

static const char *write_tmp(const char *name, const void *data, size_t len) {
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

/* Load path: must fail with code want (0: any code). */
static void expect_load_error(const char *path, int want, const char *pattern) {
    codi_model *m = (codi_model *)1;
    char err[512] = "";
    int rc = codi_model_load(path, NULL, &m, err, sizeof err);
    check_err(rc, want, err);
    assert_null(m);
    if (pattern && !strstr(err, pattern))
        fail_msg("message '%s' does not name '%s'", err, pattern);
    /* the same through codi_file_open when the GGUF layer is at fault */
}

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "%s/codi-api-errors.XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    char err[512];
    if (codi_model_load(TINY, NULL, &tiny, err, sizeof err) != 0) {
        fprintf(stderr, "cannot load %s: %s\n", TINY, err);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    codi_model_free(tiny);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

/* ------------------------------------------------------------ general */

static void test_strerror_and_free_null(void **state) {
    (void)state;
    const int codes[] = {CODI_OK, CODI_EINVAL, CODI_EIO, CODI_EFORMAT,
                         CODI_ENOMEM, CODI_ERANGE, CODI_EUNSUPPORTED,
                         CODI_ENOTFOUND};
    for (size_t i = 0; i < sizeof codes / sizeof codes[0]; i++) {
        const char *s = codi_strerror(codes[i]);
        assert_non_null(s);
        assert_string_not_equal(s, "unknown error");
    }
    assert_string_equal(codi_strerror(-100), "unknown error");
    assert_string_equal(codi_strerror(7), "unknown error");
    codi_model_free(NULL);
    assert_int_equal(codi_moe_layer_stalls(NULL, NULL, 0), 0);
    codi_context_free(NULL);
    codi_sampler_free(NULL);
    codi_file_close(NULL);
}

/* ------------------------------------------------------------ loading */

static void test_load_args(void **state) {
    (void)state;
    char err[512] = "";
    codi_model *m = (codi_model *)1;
    check_err(codi_model_load(NULL, NULL, &m, err, sizeof err), CODI_EINVAL, err);
    assert_null(m);
    assert_int_equal(codi_model_load(TINY, NULL, NULL, err, sizeof err), CODI_EINVAL);
    /* no message buffer: the code alone */
    assert_int_equal(codi_model_load(NULL, NULL, &m, NULL, 0), CODI_EINVAL);
    assert_int_equal(codi_model_load("/nonexistent/x.gguf", NULL, &m, err, 0), CODI_EIO);
    codi_file *f = (codi_file *)1;
    err[0] = 0;
    check_err(codi_file_open(NULL, &f, err, sizeof err), CODI_EINVAL, err);
    assert_int_equal(codi_file_open(TINY, NULL, err, sizeof err), CODI_EINVAL);
}

static void test_load_bad_files(void **state) {
    (void)state;
    char path[512];
    snprintf(path, sizeof path, "%s/no-such-file.gguf", tmpdir);
    expect_load_error(path, CODI_EIO, "no-such-file.gguf");
    expect_load_error(tmpdir, CODI_EIO, "regular file");
    expect_load_error(write_tmp("empty.gguf", "", 0), CODI_EFORMAT, "truncated");
    expect_load_error(write_tmp("text.gguf", "hello, world\n", 13), CODI_EFORMAT, "not a GGUF");

    size_t len;
    char *good = read_all(TINY, &len);
    char *bad = malloc(len);
    assert_non_null(bad);

    memcpy(bad, good, len); /* version 99 */
    bad[4] = 99;
    expect_load_error(write_tmp("v99.gguf", bad, len), CODI_EUNSUPPORTED, "version");
    memcpy(bad, good, len); /* big endian */
    bad[4] = 0, bad[7] = 3;
    expect_load_error(write_tmp("be.gguf", bad, len), CODI_EUNSUPPORTED, "big-endian");

    /* architecture "llamb" */
    memcpy(bad, good, len);
    char *a = memmem(bad, len, "general.architecture", 20);
    assert_non_null(a);
    char *v = memmem(a, 64, "llama", 5);
    assert_non_null(v);
    v[4] = 'b';
    expect_load_error(write_tmp("arch.gguf", bad, len), CODI_EUNSUPPORTED, "llamb");

    /* a tensor missing: rename token_embd */
    memcpy(bad, good, len);
    char *t = memmem(bad, len, "token_embd.weight", 17);
    assert_non_null(t);
    t[0] = 'T';
    expect_load_error(write_tmp("tensor.gguf", bad, len), CODI_EFORMAT, "token_embd.weight");

    /* every truncation of the header and metadata fails cleanly */
    for (size_t cut = 0; cut + 32 < len; cut += cut < 2048 ? 7 : 997)
        expect_load_error(write_tmp("cut.gguf", good, cut), 0, NULL);

    free(bad);
    free(good);
}

/* Past fuzz crashes: each file must fail with a clean one-line message. */
static void test_fuzz_regressions(void **state) {
    (void)state;
    static const char *const files[] = {
        REGRESS "/model/ctrl-bytes-in-key-message",
        REGRESS "/gguf/ctrl-bytes-in-pre-tokenizer-message",
    };
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
        codi_model *m = NULL;
        char err[512] = "";
        int rc = codi_model_load(files[i], NULL, &m, err, sizeof err);
        check_err(rc, 0, err);
        codi_file *f = NULL;
        err[0] = 0;
        rc = codi_file_open(files[i], &f, err, sizeof err);
        if (rc)
            check_err(rc, 0, err);
        codi_file_close(f);
    }
}

/* A byte-level BPE token of 10000 code points outside GPT-2's byte map
 * (30000 bytes): llama.cpp's piece repeats the whole text per code point,
 * 300 MB from a 46 KiB file. The piece is capped at 32 bytes per text byte
 * + 1 KiB (src/tokenizer.c, PIECE_CAP). */
static void test_piece_size_bounded(void **state) {
    (void)state;
    codi_model *m = NULL;
    char err[512] = "";
    assert_int_equal(codi_model_load(REGRESS "/model/quadratic-unk-byte-piece.gguf", NULL, &m,
                                     err, sizeof err),
                     0);
    int32_t last = codi_model_n_vocab(m) - 1;
    int32_t need = codi_token_to_piece(m, last, NULL, 0, true);
    assert_true(need < 0);
    assert_true(-need <= 32 * 30000 + 1024);
    assert_true(-need >= 30000);
    int32_t toks[8];
    assert_int_equal(codi_tokenize(m, "the", 3, toks, 8, false, false), 2); /* t, he */
    codi_model_free(m);
}

/* ------------------------------------------------------- inspection */

static void test_file_accessors(void **state) {
    (void)state;
    codi_file *f = NULL;
    char err[512] = "";
    assert_int_equal(codi_file_open(TINY, &f, err, sizeof err), 0);
    codi_tensor_info ti;
    assert_int_equal(codi_file_tensor(f, -1, &ti), CODI_ERANGE);
    assert_int_equal(codi_file_tensor(f, codi_file_n_tensors(f), &ti), CODI_ERANGE);
    assert_int_equal(codi_file_tensor(f, 0, NULL), CODI_ERANGE);
    assert_null(codi_file_meta_key(f, -1));
    assert_null(codi_file_meta_key(f, codi_file_n_meta(f)));
    char buf[8] = "x";
    assert_int_equal(codi_file_meta_format(f, codi_file_n_meta(f), buf, sizeof buf), 0);
    assert_string_equal(buf, "");
    /* a short buffer: truncated, terminated, full length returned */
    int need = codi_file_meta_format(f, 0, NULL, 0);
    assert_true(need > 0);
    assert_int_equal(codi_file_meta_format(f, 0, buf, sizeof buf), need);
    assert_true(strlen(buf) < sizeof buf);
    codi_file_close(f);
}

/* ------------------------------------------------------- tokenizer */

static void test_tokenize_contract(void **state) {
    (void)state;
    const char *text = "hello there, the cat";
    int32_t n = codi_tokenize(tiny, text, strlen(text), NULL, 0, false, false);
    assert_true(n < 0); /* -(needed) */
    int32_t toks[64];
    assert_int_equal(codi_tokenize(tiny, text, strlen(text), toks, 64, false, false), -n);
    assert_int_equal(codi_tokenize(tiny, text, strlen(text), toks, -n - 1, false, false), n);
    assert_int_equal(codi_tokenize(tiny, NULL, 0, toks, 64, false, false), 0);
    assert_int_equal(codi_tokenize(tiny, "", 0, toks, 64, false, false), 0);

    char piece[8];
    assert_int_equal(codi_token_to_piece(tiny, -1, piece, sizeof piece, true), 0);
    assert_int_equal(codi_token_to_piece(tiny, codi_model_n_vocab(tiny), piece, sizeof piece, true), 0);
    /* "<|im_start|>" (id 1, control): 12 bytes, or nothing without special */
    assert_int_equal(codi_token_to_piece(tiny, 1, piece, sizeof piece, true), -12);
    assert_int_equal(codi_token_to_piece(tiny, 1, piece, sizeof piece, false), 0);
    assert_false(codi_token_is_eog(tiny, -1));
    assert_false(codi_token_is_eog(tiny, codi_model_n_vocab(tiny)));
}

/* ------------------------------------------------------- context */

static void test_context_and_decode(void **state) {
    (void)state;
    char err[512] = "";
    codi_context *c = (codi_context *)1;
    check_err(codi_context_create(NULL, NULL, &c, err, sizeof err), CODI_EINVAL, err);
    assert_int_equal(codi_context_create(tiny, NULL, NULL, err, sizeof err), CODI_EINVAL);

    codi_context_params p = codi_context_default_params();
    p.n_threads = 1;
    const struct {
        int32_t n_ctx, n_batch, n_threads, n_seq;
    } bad[] = {{-1, 0, 1, 0}, {0, -1, 1, 0}, {0, 0, -1, 0}, {0, 0, 1, -1},
               {(1 << 20) + 1, 0, 1, 0}, {0, 0, 1000, 0}, {0, 0, 1, 5000}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        codi_context_params q = p;
        q.n_ctx = bad[i].n_ctx;
        q.n_batch = bad[i].n_batch;
        q.n_threads = bad[i].n_threads;
        q.n_seq = bad[i].n_seq;
        c = (codi_context *)1;
        err[0] = 0;
        check_err(codi_context_create(tiny, &q, &c, err, sizeof err), CODI_EINVAL, err);
        assert_null(c);
    }

    p.n_ctx = 8;
    assert_int_equal(codi_context_create(tiny, &p, &c, err, sizeof err), 0);
    assert_null(codi_get_logits(c, -1)); /* nothing decoded yet */
    int32_t toks[9] = {3, 4, 5, 6, 7, 8, 9, 10, 11};
    err[0] = 0;
    check_err(codi_decode(c, NULL, 1, 0, false, err, sizeof err), CODI_EINVAL, err);
    check_err(codi_decode(c, toks, 0, 0, false, err, sizeof err), CODI_EINVAL, err);
    check_err(codi_decode(c, toks, 1, 1, false, err, sizeof err), CODI_EINVAL, err);
    check_err(codi_decode(c, toks, 1, -1, false, err, sizeof err), CODI_EINVAL, err);
    check_err(codi_decode(c, toks, 9, 0, false, err, sizeof err), CODI_ERANGE, err);
    int32_t oob = codi_model_n_vocab(tiny);
    check_err(codi_decode(c, &oob, 1, 0, false, err, sizeof err), CODI_ERANGE, err);
    oob = -1;
    check_err(codi_decode(c, &oob, 1, 0, false, err, sizeof err), CODI_ERANGE, err);
    assert_int_equal(codi_decode(NULL, toks, 1, 0, false, NULL, 0), CODI_EINVAL);

    assert_int_equal(codi_decode(c, toks, 2, 0, false, err, sizeof err), 0);
    assert_non_null(codi_get_logits(c, -1));
    assert_null(codi_get_logits(c, 0)); /* only the last kept */
    assert_null(codi_get_logits(c, 2));
    assert_null(codi_get_logits(c, -3));
    assert_null(codi_get_logits(NULL, -1));
    /* the context is full after 8 tokens */
    assert_int_equal(codi_decode(c, toks + 2, 6, 2, false, err, sizeof err), 0);
    check_err(codi_decode(c, toks, 1, 8, false, err, sizeof err), CODI_ERANGE, err);

    /* batches: bad sequence, position gap, nothing cached on error */
    codi_kv_truncate(c, 0);
    const int32_t bt[2] = {3, 4}, bp[2] = {0, 2}, bs[2] = {0, 1};
    codi_batch b = {.n = 2, .token = bt, .pos = bp};
    check_err(codi_decode_batch(c, &b, err, sizeof err), CODI_EINVAL, err);
    b.seq = bs;
    check_err(codi_decode_batch(c, &b, err, sizeof err), CODI_EINVAL, err);
    assert_int_equal(codi_kv_seq_len(c, 0), 0);
    assert_int_equal(codi_kv_seq_len(c, 99), 0);
    b.n = 0;
    check_err(codi_decode_batch(c, &b, err, sizeof err), CODI_EINVAL, err);
    check_err(codi_decode_batch(c, NULL, err, sizeof err), CODI_EINVAL, err);
    codi_context_free(c);
}

/* ------------------------------------------------------- sampler */

static void test_sampler(void **state) {
    (void)state;
    char err[512] = "";
    codi_sampler *s = (codi_sampler *)1;
    codi_sampler_params p = codi_sampler_default_params();
    check_err(codi_sampler_create(&p, 0, &s, err, sizeof err), CODI_EINVAL, err);
    assert_null(s);
    assert_int_equal(codi_sampler_create(&p, 10, NULL, err, sizeof err), CODI_EINVAL);
    codi_sampler_params q = p;
    q.temp = INFINITY;
    check_err(codi_sampler_create(&q, 10, &s, err, sizeof err), CODI_EINVAL, err);
    q = p;
    q.top_p = NAN;
    check_err(codi_sampler_create(&q, 10, &s, err, sizeof err), CODI_EINVAL, err);
    q = p;
    q.min_p = NAN;
    check_err(codi_sampler_create(&q, 10, &s, err, sizeof err), CODI_EINVAL, err);
    q = p;
    q.repeat_penalty = 0.0f;
    check_err(codi_sampler_create(&q, 10, &s, err, sizeof err), CODI_EINVAL, err);
    q = p;
    q.repeat_last_n = -1;
    check_err(codi_sampler_create(&q, 10, &s, err, sizeof err), CODI_EINVAL, err);
}

/* codi_sample_rows: the draws of the serial loop, over 2 threads; bad
 * arguments and rows without logits are errors */
static void test_sample_rows(void **state) {
    (void)state;
    char err[512] = "";
    enum { NS = 5 };
    codi_context_params p = codi_context_default_params();
    p.n_threads = 2;
    p.n_ctx = 16;
    p.n_seq = NS;
    codi_context *c;
    assert_int_equal(codi_context_create(tiny, &p, &c, err, sizeof err), 0);
    const int32_t nv = codi_model_n_vocab(tiny);
    codi_sampler *a[NS], *b[NS];
    for (int i = 0; i < NS; i++) {
        codi_sampler_params sp = codi_sampler_default_params();
        sp.top_k = i % 2 ? 0 : 40;
        sp.top_p = i % 3 ? 1.0f : 0.9f;
        sp.min_p = 0.0f;
        sp.seed = 77 + (uint64_t)i;
        assert_int_equal(codi_sampler_create(&sp, nv, &a[i], err, sizeof err), 0);
        assert_int_equal(codi_sampler_create(&sp, nv, &b[i], err, sizeof err), 0);
    }
    int32_t tok[NS], pos[NS], seq[NS], rows[NS], out[NS];
    bool keep[NS];
    for (int i = 0; i < NS; i++) {
        tok[i] = 3 + i;
        seq[i] = i;
        rows[i] = NS - 1 - i; /* any order */
        keep[i] = true;
    }
    for (int step = 0; step < 6; step++) {
        for (int i = 0; i < NS; i++)
            pos[i] = step;
        codi_batch bt = {NS, tok, pos, seq, keep};
        assert_int_equal(codi_decode_batch(c, &bt, err, sizeof err), 0);
        assert_int_equal(codi_sample_rows(c, NS, a, rows, out), 0);
        for (int i = 0; i < NS; i++) {
            assert_int_equal(out[i], codi_sampler_sample(b[i], codi_get_logits(c, rows[i])));
            codi_sampler_accept(a[i], out[i]);
            codi_sampler_accept(b[i], out[i]);
            tok[NS - 1 - i] = out[i];
        }
    }
    assert_int_equal(codi_sample_rows(c, 0, NULL, NULL, NULL), 0);
    assert_int_equal(codi_sample_rows(NULL, NS, a, rows, out), CODI_EINVAL);
    assert_int_equal(codi_sample_rows(c, -1, a, rows, out), CODI_EINVAL);
    assert_int_equal(codi_sample_rows(c, NS, a, NULL, out), CODI_EINVAL);
    rows[2] = NS; /* no such row */
    assert_int_equal(codi_sample_rows(c, NS, a, rows, out), CODI_EINVAL);
    assert_int_equal(out[2], -1);
    for (int i = 0; i < NS; i++) {
        codi_sampler_free(a[i]);
        codi_sampler_free(b[i]);
    }
    codi_context_free(c);
}

/* ------------------------------------------------------- chat */

static void test_chat(void **state) {
    (void)state;
    const char *roles[] = {"user", NULL}, *contents[] = {"hi", "x"};
    char *out = (char *)1;
    char err[512] = "";
    assert_int_equal(codi_chat_apply(tiny, NULL, roles, contents, 1, true, NULL, err, sizeof err),
                     CODI_EINVAL);
    check_err(codi_chat_apply(tiny, "", roles, contents, 1, true, &out, err, sizeof err),
              CODI_EINVAL, err);
    assert_null(out);
    check_err(codi_chat_apply(tiny, NULL, NULL, NULL, 1, true, &out, err, sizeof err),
              CODI_EINVAL, err);
    check_err(codi_chat_apply(tiny, NULL, roles, contents, 2, true, &out, err, sizeof err),
              CODI_EINVAL, err);
    /* a template codi cannot render: an error naming it, on one line */
    check_err(codi_chat_apply(tiny, "{% for m in messages %}\n{{ m.role }\n", roles, contents, 1,
                              true, &out, err, sizeof err),
              0, err);
    assert_null(out);
    /* the model's own template (ChatML) works */
    assert_int_equal(codi_chat_apply(tiny, NULL, roles, contents, 1, true, &out, err, sizeof err), 0);
    assert_non_null(out);
    assert_non_null(strstr(out, "<|im_start|>user\nhi<|im_end|>"));
    free(out);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_strerror_and_free_null),
        cmocka_unit_test(test_load_args),
        cmocka_unit_test(test_load_bad_files),
        cmocka_unit_test(test_fuzz_regressions),
        cmocka_unit_test(test_piece_size_bounded),
        cmocka_unit_test(test_file_accessors),
        cmocka_unit_test(test_tokenize_contract),
        cmocka_unit_test(test_context_and_decode),
        cmocka_unit_test(test_sampler),
        cmocka_unit_test(test_sample_rows),
        cmocka_unit_test(test_chat),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
