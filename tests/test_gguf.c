/* GGUF reader tests: small files built here by a tiny writer and checked
 * field by field, a table of deliberately broken variants of them (every
 * one must fail cleanly with the right code and a message naming the
 * culprit), every truncation point, random byte corruption, and the real
 * SmolLM2 model the set-up fetches. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "codi.h"
#include "gguf.h"

#define MODEL_PATH "models/SmolLM2-135M-Instruct.Q4_1.gguf"

/* ------------------------------------------------------------ writer */

enum { MAX_KV = 24, MAX_T = 8 };

/* One metadata entry. Integer scalars (and bool) take the bit pattern in u,
 * floats take f. Arrays: numeric elements as raw little-endian bytes in arr,
 * string elements as a const char *const * in arr. decl_n != 0 is written in
 * place of the real string length / array count. */
typedef struct tkv {
    const char *key;
    size_t key_len; /* 0: strlen(key) (lets a key hold a NUL byte) */
    int type;
    uint64_t u;
    double f;
    const char *s;
    int arr_type;
    uint64_t arr_n;
    const void *arr;
    uint64_t decl_n;
} tkv;

typedef struct tten {
    const char *name;
    size_t name_len; /* 0: strlen(name) */
    uint32_t n_dims;
    uint64_t ne[5];
    uint32_t type;
    bool set_offset; /* else the next aligned offset after the previous */
    uint64_t offset;
} tten;

typedef struct tfile {
    uint32_t version;
    bool set_counts; /* write n_tensors/n_kv below instead of the real ones */
    uint64_t n_tensors, n_kv;
    tkv kv[MAX_KV];
    size_t nkv;
    tten t[MAX_T];
    size_t nt;
    uint64_t align; /* padding the writer uses; 0: 32 */
} tfile;

typedef struct buf {
    uint8_t *p;
    size_t n, cap;
    /* where the writer put things, for the checks */
    uint64_t data_offset;
    uint64_t off[MAX_T];
    uint64_t nbytes[MAX_T];
} buf;

static void put(buf *b, const void *d, size_t n) {
    if (b->n + n > b->cap) {
        b->cap = (b->n + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        assert_non_null(b->p);
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}

static void put_le(buf *b, uint64_t v, int bytes) {
    uint8_t t[8];
    for (int i = 0; i < bytes; i++)
        t[i] = (uint8_t)(v >> (8 * i));
    put(b, t, (size_t)bytes);
}

static void put_str(buf *b, const char *s, size_t len, uint64_t decl) {
    put_le(b, decl ? decl : len, 8);
    put(b, s, len);
}

static int scalar_bytes(int type) {
    switch (type) {
    case CODI_GGUF_UINT8: case CODI_GGUF_INT8: case CODI_GGUF_BOOL: return 1;
    case CODI_GGUF_UINT16: case CODI_GGUF_INT16: return 2;
    case CODI_GGUF_UINT32: case CODI_GGUF_INT32: case CODI_GGUF_FLOAT32:
        return 4;
    case CODI_GGUF_UINT64: case CODI_GGUF_INT64: case CODI_GGUF_FLOAT64:
        return 8;
    default: return 1; /* unknown types: write one byte of something */
    }
}

static void put_scalar(buf *b, int type, uint64_t u, double f) {
    if (type == CODI_GGUF_FLOAT32) {
        float x = (float)f;
        uint32_t bits;
        memcpy(&bits, &x, 4);
        put_le(b, bits, 4);
    } else if (type == CODI_GGUF_FLOAT64) {
        uint64_t bits;
        memcpy(&bits, &f, 8);
        put_le(b, bits, 8);
    } else {
        put_le(b, u, scalar_bytes(type));
    }
}

/* Bytes of a tensor the writer lays out (types used by these tests). */
static uint64_t writer_nbytes(const tten *t) {
    uint64_t blck, tsize;
    switch (t->type) {
    case 0: blck = 1, tsize = 4; break;      /* F32 */
    case 1: blck = 1, tsize = 2; break;      /* F16 */
    case 2: blck = 32, tsize = 18; break;    /* Q4_0 */
    case 8: blck = 32, tsize = 34; break;    /* Q8_0 */
    case 12: blck = 256, tsize = 144; break; /* Q4_K */
    default: return 64;
    }
    uint64_t n = 1;
    for (uint32_t d = 0; d < t->n_dims && d < 5; d++) {
        if (t->ne[d] == 0 || t->ne[d] > (1u << 20))
            return 64; /* broken on purpose: data size is irrelevant */
        n *= t->ne[d];
    }
    return (n + blck - 1) / blck * tsize;
}

static uint8_t pattern(size_t tensor, uint64_t j) {
    return (uint8_t)(tensor * 31 + j * 7 + 1);
}

static void serialize(const tfile *f, buf *b) {
    memset(b, 0, sizeof *b);
    put(b, "GGUF", 4);
    put_le(b, f->version, 4);
    put_le(b, f->set_counts ? f->n_tensors : f->nt, 8);
    put_le(b, f->set_counts ? f->n_kv : f->nkv, 8);
    for (size_t i = 0; i < f->nkv; i++) {
        const tkv *kv = &f->kv[i];
        put_str(b, kv->key, kv->key_len ? kv->key_len : strlen(kv->key), 0);
        put_le(b, (uint32_t)kv->type, 4);
        if (kv->type == CODI_GGUF_STRING) {
            put_str(b, kv->s, strlen(kv->s), kv->decl_n);
        } else if (kv->type == CODI_GGUF_ARRAY) {
            put_le(b, (uint32_t)kv->arr_type, 4);
            put_le(b, kv->decl_n ? kv->decl_n : kv->arr_n, 8);
            for (uint64_t e = 0; e < kv->arr_n; e++) {
                if (kv->arr_type == CODI_GGUF_STRING) {
                    const char *s = ((const char *const *)kv->arr)[e];
                    put_str(b, s, strlen(s), 0);
                } else if (kv->arr_type == CODI_GGUF_ARRAY) {
                    put_le(b, CODI_GGUF_UINT8, 4); /* inner: 2 x uint8 */
                    put_le(b, 2, 8);
                    put_le(b, 0x0201, 2);
                } else {
                    int sz = scalar_bytes(kv->arr_type);
                    put(b, (const uint8_t *)kv->arr + e * (uint64_t)sz,
                        (size_t)sz);
                }
            }
        } else {
            put_scalar(b, kv->type, kv->u, kv->f);
        }
    }
    uint64_t align = f->align ? f->align : 32;
    uint64_t next = 0;
    for (size_t i = 0; i < f->nt; i++) {
        const tten *t = &f->t[i];
        put_str(b, t->name, t->name_len ? t->name_len : strlen(t->name), 0);
        put_le(b, t->n_dims, 4);
        for (uint32_t d = 0; d < t->n_dims && d < 5; d++)
            put_le(b, t->ne[d], 8);
        put_le(b, t->type, 4);
        b->nbytes[i] = writer_nbytes(t);
        b->off[i] = t->set_offset ? t->offset : next;
        put_le(b, b->off[i], 8);
        next = (next + b->nbytes[i] + align - 1) / align * align;
    }
    b->data_offset = (b->n + align - 1) / align * align;
    while (b->n < b->data_offset)
        put_le(b, 0, 1);
    /* Tensor data; the last tensor ends exactly at the end of the file, so
     * cutting off any byte breaks the file. */
    for (size_t i = 0; i < f->nt; i++) {
        if (f->t[i].set_offset)
            continue;
        uint64_t at = b->data_offset + b->off[i];
        while (b->n < at)
            put_le(b, 0, 1);
        for (uint64_t j = 0; j < b->nbytes[i]; j++)
            put_le(b, pattern(i, j), 1);
    }
}

/* ------------------------------------------------------------ base file */

static const char *const str_arr[] = {"alpha", "", "c\xc3\xa9"};
static const uint8_t i32_arr[] = {1, 0, 0, 0, 0xfe, 0xff, 0xff, 0xff,
                                  0xff, 0xff, 0xff, 0x7f}; /* 1, -2, INT_MAX */
static const uint8_t f32_arr[] = {0, 0, 0, 0x3f, 0, 0, 0xc0, 0xbf}; /* .5 -1.5 */
static const uint8_t u8_arr[] = {200, 7};

/* Indexes into the base file's metadata, for mutations. */
enum {
    KV_ARCH, KV_U8, KV_I8, KV_U16, KV_I16, KV_U32, KV_I32, KV_F32, KV_BOOL,
    KV_U64, KV_I64, KV_F64, KV_STRS, KV_I32S, KV_F32S, KV_U8S, KV_EMPTY,
    KV_BIGU64, KV_NEGI64, KV_COUNT
};
/* Tensors of the base file. */
enum { T_TOK, T_NORM, T_W4K, T_HALF, T_COUNT };

static void base_file(tfile *f) {
    memset(f, 0, sizeof *f);
    f->version = 3;
    tkv *kv = f->kv;
    kv[KV_ARCH] = (tkv){.key = "general.architecture",
                        .type = CODI_GGUF_STRING, .s = "llama"};
    kv[KV_U8] = (tkv){.key = "t.u8", .type = CODI_GGUF_UINT8, .u = 250};
    kv[KV_I8] = (tkv){.key = "t.i8", .type = CODI_GGUF_INT8,
                      .u = (uint64_t)-100};
    kv[KV_U16] = (tkv){.key = "t.u16", .type = CODI_GGUF_UINT16, .u = 65000};
    kv[KV_I16] = (tkv){.key = "t.i16", .type = CODI_GGUF_INT16,
                       .u = (uint64_t)-30000};
    kv[KV_U32] = (tkv){.key = "llama.embedding_length",
                       .type = CODI_GGUF_UINT32, .u = 4000000000u};
    kv[KV_I32] = (tkv){.key = "t.i32", .type = CODI_GGUF_INT32,
                       .u = (uint64_t)(int64_t)INT32_MIN};
    kv[KV_F32] = (tkv){.key = "t.f32", .type = CODI_GGUF_FLOAT32, .f = 1e-5};
    kv[KV_BOOL] = (tkv){.key = "t.bool", .type = CODI_GGUF_BOOL, .u = 1};
    kv[KV_U64] = (tkv){.key = "t.u64", .type = CODI_GGUF_UINT64, .u = 123456};
    kv[KV_I64] = (tkv){.key = "t.i64", .type = CODI_GGUF_INT64,
                       .u = (uint64_t)-7};
    kv[KV_F64] = (tkv){.key = "t.f64", .type = CODI_GGUF_FLOAT64, .f = 0.25};
    kv[KV_STRS] = (tkv){.key = "tokenizer.ggml.tokens",
                        .type = CODI_GGUF_ARRAY, .arr_type = CODI_GGUF_STRING,
                        .arr_n = 3, .arr = str_arr};
    kv[KV_I32S] = (tkv){.key = "t.i32s", .type = CODI_GGUF_ARRAY,
                        .arr_type = CODI_GGUF_INT32, .arr_n = 3,
                        .arr = i32_arr};
    kv[KV_F32S] = (tkv){.key = "t.f32s", .type = CODI_GGUF_ARRAY,
                        .arr_type = CODI_GGUF_FLOAT32, .arr_n = 2,
                        .arr = f32_arr};
    kv[KV_U8S] = (tkv){.key = "t.u8s", .type = CODI_GGUF_ARRAY,
                       .arr_type = CODI_GGUF_UINT8, .arr_n = 2,
                       .arr = u8_arr};
    kv[KV_EMPTY] = (tkv){.key = "t.empty", .type = CODI_GGUF_ARRAY,
                         .arr_type = CODI_GGUF_STRING, .arr_n = 0,
                         .arr = str_arr};
    kv[KV_BIGU64] = (tkv){.key = "t.bigu64", .type = CODI_GGUF_UINT64,
                          .u = (uint64_t)1 << 40};
    kv[KV_NEGI64] = (tkv){.key = "t.negi64", .type = CODI_GGUF_INT64,
                          .u = (uint64_t)((int64_t)INT32_MIN - 1)};
    f->nkv = KV_COUNT;

    f->t[T_TOK] = (tten){.name = "token_embd.weight", .n_dims = 2,
                         .ne = {64, 3}, .type = 8};
    f->t[T_NORM] = (tten){.name = "norm", .n_dims = 1, .ne = {7}, .type = 0};
    f->t[T_W4K] = (tten){.name = "w4k", .n_dims = 4, .ne = {256, 2, 1, 2},
                         .type = 12};
    f->t[T_HALF] = (tten){.name = "half", .n_dims = 3, .ne = {3, 1, 2},
                          .type = 1};
    f->nt = T_COUNT;
}

static int parse_buf(const buf *b, codi_gguf **g, char *err, size_t errlen) {
    err[0] = '\0';
    return codi_gguf_parse(b->p, b->n, g, err, errlen);
}

/* ------------------------------------------------------------ valid files */

static void check_tensor(const codi_gguf *g, const buf *b, const tfile *f,
                         size_t i, uint64_t nbytes) {
    const codi_gguf_tensor *t = codi_gguf_find_tensor(g, f->t[i].name);
    assert_non_null(t);
    assert_ptr_equal(t, &g->tensors[i]);
    assert_string_equal(t->name, f->t[i].name);
    assert_int_equal(t->type, f->t[i].type);
    assert_int_equal(t->n_dims, f->t[i].n_dims);
    for (int d = 0; d < 4; d++)
        assert_int_equal(t->ne[d],
                         d < (int)f->t[i].n_dims ? (int64_t)f->t[i].ne[d] : 1);
    assert_int_equal(t->offset, b->off[i]);
    assert_int_equal(t->offset % g->alignment, 0);
    assert_int_equal(t->nbytes, nbytes);
    assert_ptr_equal(t->data, b->p + b->data_offset + b->off[i]);
    const uint8_t *d = t->data;
    for (uint64_t j = 0; j < nbytes; j++)
        assert_int_equal(d[j], pattern(i, j));
}

static void test_valid_fields(void **state) {
    (void)state;
    tfile f;
    base_file(&f);
    buf b;
    serialize(&f, &b);
    char err[256];
    codi_gguf *g = NULL;
    int rc = parse_buf(&b, &g, err, sizeof err);
    if (rc)
        fail_msg("valid file rejected: %s", err);
    assert_non_null(g);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_kv, KV_COUNT);
    assert_int_equal(g->n_tensors, T_COUNT);
    assert_int_equal(g->alignment, 32);
    assert_int_equal(g->data_offset, b.data_offset);
    assert_int_equal(g->data_offset % 32, 0);
    assert_int_equal(g->size, b.n);
    assert_false(g->owns_map);
    assert_ptr_equal(g->map, b.p);

    /* Metadata in file order, with every value. */
    for (size_t i = 0; i < KV_COUNT; i++) {
        assert_string_equal(g->kv[i].key, f.kv[i].key);
        assert_int_equal(g->kv[i].type, f.kv[i].type);
        assert_ptr_equal(codi_gguf_find(g, f.kv[i].key), &g->kv[i]);
    }
    const codi_gguf_kv *kv = g->kv;
    assert_int_equal(kv[KV_ARCH].str.len, 5);
    assert_memory_equal(kv[KV_ARCH].str.ptr, "llama", 5);
    assert_int_equal(kv[KV_U8].v.u64, 250);
    assert_int_equal(kv[KV_I8].v.i64, -100);
    assert_int_equal(kv[KV_U16].v.u64, 65000);
    assert_int_equal(kv[KV_I16].v.i64, -30000);
    assert_int_equal(kv[KV_U32].v.u64, 4000000000u);
    assert_int_equal(kv[KV_I32].v.i64, INT32_MIN);
    assert_true(kv[KV_F32].v.f64 == (double)1e-5f);
    assert_int_equal(kv[KV_BOOL].v.u64, 1);
    assert_int_equal(kv[KV_U64].v.u64, 123456);
    assert_int_equal(kv[KV_I64].v.i64, -7);
    assert_true(kv[KV_F64].v.f64 == 0.25);

    const codi_gguf_kv *sa = &kv[KV_STRS];
    assert_int_equal(sa->arr_type, CODI_GGUF_STRING);
    assert_int_equal(sa->arr_n, 3);
    assert_non_null(sa->arr_str);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(sa->arr_str[i].len, strlen(str_arr[i]));
        assert_memory_equal(sa->arr_str[i].ptr, str_arr[i],
                            strlen(str_arr[i]));
    }
    const codi_gguf_kv *ia = &kv[KV_I32S];
    assert_int_equal(ia->arr_type, CODI_GGUF_INT32);
    assert_int_equal(ia->arr_n, 3);
    assert_int_equal(codi_gguf_arr_i64(ia, 0), 1);
    assert_int_equal(codi_gguf_arr_i64(ia, 1), -2);
    assert_int_equal(codi_gguf_arr_i64(ia, 2), INT32_MAX);
    assert_true(codi_gguf_arr_f64(ia, 1) == -2.0);
    assert_int_equal(codi_gguf_arr_i64(ia, 3), 0); /* out of range */
    const codi_gguf_kv *fa = &kv[KV_F32S];
    assert_true(codi_gguf_arr_f64(fa, 0) == 0.5);
    assert_true(codi_gguf_arr_f64(fa, 1) == -1.5);
    assert_int_equal(codi_gguf_arr_i64(fa, 1), -1);
    const codi_gguf_kv *ua = &kv[KV_U8S];
    assert_int_equal(codi_gguf_arr_i64(ua, 0), 200);
    assert_true(codi_gguf_arr_f64(ua, 1) == 7.0);
    assert_int_equal(kv[KV_EMPTY].arr_n, 0);
    assert_int_equal(kv[KV_EMPTY].arr_type, CODI_GGUF_STRING);
    assert_int_equal(codi_gguf_arr_i64(&kv[KV_ARCH], 0), 0); /* not an array */

    /* Tensors: Q8_0 64x3 = 2 blocks x 34 x 3 rows; F32 x7; Q4_K 256x2x1x2 =
     * 144 x 4; F16 3x1x2. */
    check_tensor(g, &b, &f, T_TOK, 2 * 34 * 3);
    check_tensor(g, &b, &f, T_NORM, 7 * 4);
    check_tensor(g, &b, &f, T_W4K, 144 * 4);
    check_tensor(g, &b, &f, T_HALF, 3 * 2 * 2);
    const codi_gguf_tensor *last = &g->tensors[T_HALF];
    assert_int_equal(g->data_offset + last->offset + last->nbytes, b.n);

    assert_null(codi_gguf_find(g, "missing"));
    assert_null(codi_gguf_find(g, ""));
    assert_null(codi_gguf_find(g, NULL));
    assert_null(codi_gguf_find_tensor(g, "missing"));
    assert_null(codi_gguf_find_tensor(g, "token_embd"));
    assert_null(codi_gguf_find(NULL, "t.u8"));
    assert_null(codi_gguf_find_tensor(NULL, "norm"));
    codi_gguf_close(g);
    free(b.p);
}

static void test_getters(void **state) {
    (void)state;
    tfile f;
    base_file(&f);
    buf b;
    serialize(&f, &b);
    char err[256];
    codi_gguf *g = NULL;
    assert_int_equal(parse_buf(&b, &g, err, sizeof err), 0);

    uint32_t u = 0;
    int32_t i = 0;
    float x = 0;
    bool bo = false;
    char *s = NULL;
    assert_int_equal(codi_gguf_get_u32(g, "t.u8", &u), 0);
    assert_int_equal(u, 250);
    assert_int_equal(codi_gguf_get_u32(g, "t.u16", &u), 0);
    assert_int_equal(u, 65000);
    assert_int_equal(codi_gguf_get_u32(g, "llama.embedding_length", &u), 0);
    assert_int_equal(u, 4000000000u);
    assert_int_equal(codi_gguf_get_u32(g, "t.u64", &u), 0);
    assert_int_equal(u, 123456);
    assert_int_equal(codi_gguf_get_u32(g, "t.bigu64", &u), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_u32(g, "t.i8", &u), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_u32(g, "t.f32", &u), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_u32(g, "t.bool", &u), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_u32(g, "general.architecture", &u),
                     CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_u32(g, "t.i32s", &u), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_u32(g, "nope", &u), CODI_ENOTFOUND);

    assert_int_equal(codi_gguf_get_i32(g, "t.i8", &i), 0);
    assert_int_equal(i, -100);
    assert_int_equal(codi_gguf_get_i32(g, "t.i16", &i), 0);
    assert_int_equal(i, -30000);
    assert_int_equal(codi_gguf_get_i32(g, "t.i32", &i), 0);
    assert_int_equal(i, INT32_MIN);
    assert_int_equal(codi_gguf_get_i32(g, "t.i64", &i), 0);
    assert_int_equal(i, -7);
    assert_int_equal(codi_gguf_get_i32(g, "t.u16", &i), 0);
    assert_int_equal(i, 65000);
    assert_int_equal(codi_gguf_get_i32(g, "t.negi64", &i), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_i32(g, "llama.embedding_length", &i),
                     CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_i32(g, "t.f64", &i), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_i32(g, "nope", &i), CODI_ENOTFOUND);

    assert_int_equal(codi_gguf_get_f32(g, "t.f32", &x), 0);
    assert_true(x == 1e-5f);
    assert_int_equal(codi_gguf_get_f32(g, "t.f64", &x), 0);
    assert_true(x == 0.25f);
    assert_int_equal(codi_gguf_get_f32(g, "t.u8", &x), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_f32(g, "nope", &x), CODI_ENOTFOUND);

    assert_int_equal(codi_gguf_get_bool(g, "t.bool", &bo), 0);
    assert_true(bo);
    assert_int_equal(codi_gguf_get_bool(g, "t.u8", &bo), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_bool(g, "nope", &bo), CODI_ENOTFOUND);

    assert_int_equal(codi_gguf_get_str(g, "general.architecture", &s), 0);
    assert_string_equal(s, "llama");
    free(s);
    s = NULL;
    assert_int_equal(codi_gguf_get_str(g, "t.u8", &s), CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_str(g, "tokenizer.ggml.tokens", &s),
                     CODI_EFORMAT);
    assert_int_equal(codi_gguf_get_str(g, "nope", &s), CODI_ENOTFOUND);
    assert_null(s);

    assert_string_equal(codi_gguf_vtype_name(CODI_GGUF_UINT8), "uint8");
    assert_string_equal(codi_gguf_vtype_name(CODI_GGUF_STRING), "string");
    assert_string_equal(codi_gguf_vtype_name(CODI_GGUF_FLOAT64), "float64");
    assert_string_equal(codi_gguf_vtype_name(13), "?");
    assert_string_equal(codi_gguf_vtype_name(-1), "?");
    codi_gguf_close(g);
    free(b.p);
}

static void test_valid_variants(void **state) {
    (void)state;
    char err[256];
    codi_gguf *g = NULL;
    buf b;
    tfile f;

    /* Version 2 reads the same. */
    base_file(&f);
    f.version = 2;
    serialize(&f, &b);
    assert_int_equal(parse_buf(&b, &g, err, sizeof err), 0);
    assert_int_equal(g->version, 2);
    assert_int_equal(g->n_tensors, T_COUNT);
    codi_gguf_close(g);
    free(b.p);

    /* A larger alignment moves the data section and every offset. */
    base_file(&f);
    f.kv[f.nkv++] = (tkv){.key = "general.alignment",
                          .type = CODI_GGUF_UINT32, .u = 256};
    f.align = 256;
    serialize(&f, &b);
    if (parse_buf(&b, &g, err, sizeof err))
        fail_msg("alignment 256 rejected: %s", err);
    assert_int_equal(g->alignment, 256);
    assert_int_equal(g->data_offset % 256, 0);
    assert_int_equal(g->data_offset, b.data_offset);
    for (size_t i = 0; i < T_COUNT; i++)
        check_tensor(g, &b, &f, i, b.nbytes[i]);
    codi_gguf_close(g);
    free(b.p);

    /* Alignment 1 is a power of two too. */
    base_file(&f);
    f.kv[f.nkv++] = (tkv){.key = "general.alignment",
                          .type = CODI_GGUF_UINT32, .u = 1};
    f.align = 1;
    serialize(&f, &b);
    assert_int_equal(parse_buf(&b, &g, err, sizeof err), 0);
    assert_int_equal(g->alignment, 1);
    for (size_t i = 0; i < T_COUNT; i++)
        check_tensor(g, &b, &f, i, b.nbytes[i]);
    codi_gguf_close(g);
    free(b.p);

    /* Header only: no metadata, no tensors. */
    memset(&f, 0, sizeof f);
    f.version = 3;
    serialize(&f, &b);
    assert_int_equal(b.n, 32); /* 24-byte header padded to 32 */
    assert_int_equal(parse_buf(&b, &g, err, sizeof err), 0);
    assert_int_equal(g->n_kv, 0);
    assert_int_equal(g->n_tensors, 0);
    assert_null(codi_gguf_find(g, "x"));
    assert_null(codi_gguf_find_tensor(g, "x"));
    uint32_t u;
    assert_int_equal(codi_gguf_get_u32(g, "x", &u), CODI_ENOTFOUND);
    codi_gguf_close(g);
    /* ...and without the padding, since no tensor data follows. */
    assert_int_equal(codi_gguf_parse(b.p, 24, &g, err, sizeof err), 0);
    codi_gguf_close(g);
    free(b.p);

    codi_gguf_close(NULL);
}

/* ------------------------------------------------------------ broken files */

typedef struct bad_case {
    const char *what;
    void (*mutate)(tfile *f);      /* before serializing (may be NULL) */
    void (*patch)(buf *b);         /* after serializing (may be NULL) */
    int code;                      /* expected rc; 0: any error */
    const char *msg;               /* expected substring of the message */
} bad_case;

static void patch_u32(buf *b, size_t at, uint32_t v) {
    for (int i = 0; i < 4; i++)
        b->p[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

static void patch_u64(buf *b, size_t at, uint64_t v) {
    for (int i = 0; i < 8; i++)
        b->p[at + (size_t)i] = (uint8_t)(v >> (8 * i));
}

/* Header: magic 0, version 4, n_tensors 8, n_kv 16, first key length 24. */
static void p_magic(buf *b) { b->p[0] = 'X'; }
static void p_magic_lower(buf *b) { memcpy(b->p, "gguf", 4); }
static void p_v1(buf *b) { patch_u32(b, 4, 1); }
static void p_v99(buf *b) { patch_u32(b, 4, 99); }
static void p_v0(buf *b) { patch_u32(b, 4, 0); }
static void p_big_endian(buf *b) { patch_u32(b, 4, 0x03000000); }
static void p_nkv_2_63(buf *b) { patch_u64(b, 16, (uint64_t)1 << 63); }
static void p_nkv_max(buf *b) { patch_u64(b, 16, UINT64_MAX); }
static void p_nkv_plus1(buf *b) { patch_u64(b, 16, KV_COUNT + 1); }
static void p_nt_2_63(buf *b) { patch_u64(b, 8, (uint64_t)1 << 63); }
static void p_nt_plus1(buf *b) { patch_u64(b, 8, T_COUNT + 1); }
static void p_nt_plus1000(buf *b) { patch_u64(b, 8, T_COUNT + 1000); }
static void p_key_len_2_60(buf *b) { patch_u64(b, 24, (uint64_t)1 << 60); }
static void p_key_len_max(buf *b) { patch_u64(b, 24, UINT64_MAX); }

static void m_str_len(tfile *f) { f->kv[KV_ARCH].decl_n = (uint64_t)1 << 60; }
static void m_str_len1(tfile *f) { f->kv[KV_ARCH].decl_n = 100000; }
static void m_arr_huge(tfile *f) { f->kv[KV_I32S].decl_n = (uint64_t)1 << 62; }
static void m_arr_max(tfile *f) { f->kv[KV_U8S].decl_n = UINT64_MAX; }
static void m_strarr_huge(tfile *f) {
    f->kv[KV_STRS].decl_n = (uint64_t)1 << 61;
}
static void m_strarr_plus(tfile *f) { f->kv[KV_STRS].decl_n = 100000; }
static void m_vtype(tfile *f) { f->kv[KV_U8].type = 13; }
static void m_vtype_huge(tfile *f) { f->kv[KV_U8].type = (int)0x80000000u; }
static void m_arr_elem_type(tfile *f) { f->kv[KV_U8S].arr_type = 13; }
static void m_nested(tfile *f) {
    f->kv[f->nkv++] = (tkv){.key = "t.nested", .type = CODI_GGUF_ARRAY,
                            .arr_type = CODI_GGUF_ARRAY, .arr_n = 2};
}
static void m_dup_key(tfile *f) {
    f->kv[f->nkv++] = (tkv){.key = "general.architecture",
                            .type = CODI_GGUF_UINT8, .u = 1};
}
static void m_key_nul(tfile *f) {
    f->kv[KV_U8].key = "t.u8\0hidden";
    f->kv[KV_U8].key_len = 11;
}
static void m_align(tfile *f, uint64_t v, int type) {
    f->kv[f->nkv++] = (tkv){.key = "general.alignment", .type = type, .u = v,
                            .s = "32"};
}
static void m_align0(tfile *f) { m_align(f, 0, CODI_GGUF_UINT32); }
static void m_align3(tfile *f) { m_align(f, 3, CODI_GGUF_UINT32); }
static void m_align48(tfile *f) { m_align(f, 48, CODI_GGUF_UINT32); }
static void m_align_str(tfile *f) { m_align(f, 0, CODI_GGUF_STRING); }
static void m_align_neg(tfile *f) {
    m_align(f, (uint64_t)-32, CODI_GGUF_INT32);
}
static void m_align_2_31(tfile *f) {
    m_align(f, (uint64_t)1 << 31, CODI_GGUF_UINT32);
}
static void m_ndims0(tfile *f) { f->t[T_NORM].n_dims = 0; }
static void m_ndims5(tfile *f) {
    f->t[T_NORM].n_dims = 5;
    for (int d = 1; d < 5; d++)
        f->t[T_NORM].ne[d] = 1;
}
static void m_ndims_huge(tfile *f) { f->t[T_NORM].n_dims = 0xffffffffu; }
static void m_ne0(tfile *f) { f->t[T_TOK].ne[1] = 0; }
static void m_ne_neg(tfile *f) { f->t[T_NORM].ne[0] = UINT64_MAX; }
static void m_ne_2_63(tfile *f) { f->t[T_NORM].ne[0] = (uint64_t)1 << 63; }
static void m_ne_overflow(tfile *f) {
    f->t[T_HALF].ne[0] = (uint64_t)1 << 32;
    f->t[T_HALF].ne[1] = (uint64_t)1 << 31;
    f->t[T_HALF].ne[2] = 2;
}
static void m_bytes_overflow(tfile *f) {
    f->t[T_NORM].ne[0] = (uint64_t)1 << 62; /* x 4 bytes */
}
static void m_type_unknown(tfile *f) { f->t[T_NORM].type = 99; }
static void m_type_removed(tfile *f) { f->t[T_NORM].type = 4; }
static void m_type_huge(tfile *f) { f->t[T_NORM].type = 0xffffffffu; }
static void m_type_iq(tfile *f) { f->t[T_NORM].type = 16; }
static void m_block(tfile *f) { f->t[T_TOK].ne[0] = 33; }
static void m_block_k(tfile *f) { f->t[T_W4K].ne[0] = 128; }
static void m_misaligned(tfile *f) {
    f->t[T_HALF].set_offset = true;
    f->t[T_HALF].offset = 1;
}
static void m_offset_past(tfile *f) {
    f->t[T_NORM].set_offset = true;
    f->t[T_NORM].offset = (uint64_t)1 << 40;
}
static void m_offset_wrap(tfile *f) {
    f->t[T_NORM].set_offset = true;
    f->t[T_NORM].offset = UINT64_MAX - 31; /* aligned; + nbytes wraps */
}
static void m_too_big(tfile *f) {
    /* Valid shape, but its 4 GiB of data are not in the file. */
    f->t[T_NORM].ne[0] = (uint64_t)1 << 30;
}
static void m_dup_tensor(tfile *f) { f->t[T_HALF].name = "norm"; }
static void m_tensor_nul(tfile *f) {
    f->t[T_NORM].name = "no\0rm";
    f->t[T_NORM].name_len = 5;
}
static const bad_case bad_cases[] = {
    {"bad magic", NULL, p_magic, CODI_EFORMAT, "not a GGUF file"},
    {"lower-case magic", NULL, p_magic_lower, CODI_EFORMAT, "not a GGUF"},
    {"version 1", NULL, p_v1, CODI_EUNSUPPORTED, "version 1"},
    {"version 99", NULL, p_v99, CODI_EUNSUPPORTED, "version 99"},
    {"version 0", NULL, p_v0, CODI_EUNSUPPORTED, "version 0"},
    {"big endian", NULL, p_big_endian, CODI_EUNSUPPORTED, "big-endian"},
    {"n_kv 2^63", NULL, p_nkv_2_63, CODI_EFORMAT, "metadata count"},
    {"n_kv max", NULL, p_nkv_max, CODI_EFORMAT, "metadata count"},
    {"n_kv one too many", NULL, p_nkv_plus1, 0, ""},
    {"n_tensors 2^63", NULL, p_nt_2_63, CODI_EFORMAT, "tensor count"},
    {"n_tensors one too many", NULL, p_nt_plus1, 0, ""},
    {"n_tensors 1000 too many", NULL, p_nt_plus1000, CODI_EFORMAT,
     "tensor count"},
    {"key length 2^60", NULL, p_key_len_2_60, CODI_EFORMAT,
     "metadata entry 0: string length 1152921504606846976 runs past end"},
    {"key length max", NULL, p_key_len_max, CODI_EFORMAT, "metadata entry 0"},
    {"string length 2^60", m_str_len, NULL, CODI_EFORMAT,
     "'general.architecture': string length"},
    {"string length past end", m_str_len1, NULL, CODI_EFORMAT,
     "'general.architecture'"},
    {"array count 2^62", m_arr_huge, NULL, CODI_EFORMAT,
     "'t.i32s': array of 4611686018427387904 int32"},
    {"array count max", m_arr_max, NULL, CODI_EFORMAT, "'t.u8s': array of"},
    {"string array count 2^61", m_strarr_huge, NULL, CODI_EFORMAT,
     "'tokenizer.ggml.tokens': array of"},
    {"string array count past end", m_strarr_plus, NULL, CODI_EFORMAT,
     "tokenizer.ggml.tokens"},
    {"unknown value type", m_vtype, NULL, CODI_EFORMAT,
     "'t.u8' has unknown value type 13"},
    {"value type 2^31", m_vtype_huge, NULL, CODI_EFORMAT,
     "unknown value type 2147483648"},
    {"unknown array element type", m_arr_elem_type, NULL, CODI_EFORMAT,
     "'t.u8s' has unknown array element type 13"},
    {"nested arrays", m_nested, NULL, CODI_EUNSUPPORTED,
     "'t.nested' is an array of arrays"},
    {"duplicate key", m_dup_key, NULL, CODI_EFORMAT,
     "duplicate metadata key 'general.architecture'"},
    {"key with NUL", m_key_nul, NULL, CODI_EFORMAT, "NUL byte"},
    {"alignment 0", m_align0, NULL, CODI_EFORMAT,
     "general.alignment 0 is not a nonzero power of two"},
    {"alignment 3", m_align3, NULL, CODI_EFORMAT, "general.alignment 3"},
    {"alignment 48", m_align48, NULL, CODI_EFORMAT, "general.alignment 48"},
    {"alignment string", m_align_str, NULL, CODI_EFORMAT,
     "general.alignment has type string"},
    {"alignment negative", m_align_neg, NULL, CODI_EFORMAT,
     "general.alignment has type int32"},
    {"alignment 2^31", m_align_2_31, NULL, CODI_EFORMAT, "runs past end"},
    {"n_dims 0", m_ndims0, NULL, CODI_EFORMAT,
     "tensor 'norm' has 0 dimensions"},
    {"n_dims 5", m_ndims5, NULL, CODI_EFORMAT,
     "tensor 'norm' has 5 dimensions"},
    {"n_dims 2^32-1", m_ndims_huge, NULL, CODI_EFORMAT,
     "tensor 'norm' has 4294967295 dimensions"},
    {"ne 0", m_ne0, NULL, CODI_EFORMAT,
     "tensor 'token_embd.weight' has invalid ne[1] = 0"},
    {"ne negative", m_ne_neg, NULL, CODI_EFORMAT,
     "tensor 'norm' has invalid ne[0] = -1"},
    {"ne 2^63", m_ne_2_63, NULL, CODI_EFORMAT, "tensor 'norm' has invalid"},
    {"ne product overflows", m_ne_overflow, NULL, CODI_EFORMAT,
     "tensor 'half' has too many elements"},
    {"byte size overflows", m_bytes_overflow, NULL, CODI_EFORMAT,
     "tensor 'norm': size in bytes overflows"},
    {"unknown tensor type", m_type_unknown, NULL, CODI_EFORMAT,
     "tensor 'norm' has unknown type 99"},
    {"removed tensor type 4", m_type_removed, NULL, CODI_EFORMAT,
     "tensor 'norm' has unknown type 4"},
    {"tensor type 2^32-1", m_type_huge, NULL, CODI_EFORMAT,
     "tensor 'norm' has unknown type 4294967295"},
    {"unsupported tensor type", m_type_iq, NULL, CODI_EUNSUPPORTED,
     "tensor 'norm' has unsupported type IQ2_XXS (16)"},
    {"ne[0] not a block multiple", m_block, NULL, CODI_EFORMAT,
     "tensor 'token_embd.weight': ne[0] = 33 is not a multiple of the "
     "block size 32"},
    {"ne[0] not a k-block multiple", m_block_k, NULL, CODI_EFORMAT,
     "tensor 'w4k': ne[0] = 128"},
    {"misaligned offset", m_misaligned, NULL, CODI_EFORMAT,
     "tensor 'half': data offset 1 is not a multiple of the alignment 32"},
    {"offset past end", m_offset_past, NULL, CODI_EFORMAT,
     "tensor 'norm' data"},
    {"offset + size wraps", m_offset_wrap, NULL, CODI_EFORMAT,
     "tensor 'norm' data"},
    {"data past end", m_too_big, NULL, CODI_EFORMAT,
     "truncated file: tensor 'norm' data"},
    {"duplicate tensor name", m_dup_tensor, NULL, CODI_EFORMAT,
     "duplicate tensor name 'norm'"},
    {"tensor name with NUL", m_tensor_nul, NULL, CODI_EFORMAT,
     "tensor info 1 contains a NUL byte"},
};

static void test_bad_files(void **state) {
    (void)state;
    size_t n = sizeof bad_cases / sizeof bad_cases[0];
    for (size_t i = 0; i < n; i++) {
        const bad_case *c = &bad_cases[i];
        tfile f;
        base_file(&f);
        if (c->mutate)
            c->mutate(&f);
        buf b;
        serialize(&f, &b);
        if (c->patch)
            c->patch(&b);
        /* An exact-size copy, so ASan sees any read past the end. */
        uint8_t *copy = malloc(b.n);
        assert_non_null(copy);
        memcpy(copy, b.p, b.n);
        char err[256] = "";
        codi_gguf *g = (codi_gguf *)&err; /* must be reset to NULL */
        int rc = codi_gguf_parse(copy, b.n, &g, err, sizeof err);
        if (rc == 0)
            fail_msg("%s: accepted", c->what);
        if (g != NULL)
            fail_msg("%s: *out not NULL on failure", c->what);
        if (c->code ? rc != c->code : rc >= 0)
            fail_msg("%s: rc %d, expected %d (%s)", c->what, rc, c->code, err);
        if (!strstr(err, c->msg) || strncmp(err, "buffer: ", 8) != 0)
            fail_msg("%s: message \"%s\" lacks \"%s\"", c->what, err, c->msg);
        if (strchr(err, '\n'))
            fail_msg("%s: message has a newline", c->what);
        free(copy);
        free(b.p);
    }
}

/* Every proper prefix of a valid file must fail cleanly. */
static void test_truncation(void **state) {
    (void)state;
    tfile f;
    base_file(&f);
    buf b;
    serialize(&f, &b);
    char err[256];
    codi_gguf *g = NULL;
    for (size_t k = 0; k < b.n; k++) {
        uint8_t *copy = malloc(k ? k : 1);
        assert_non_null(copy);
        memcpy(copy, b.p, k);
        err[0] = '\0';
        int rc = codi_gguf_parse(k ? copy : NULL, k, &g, err, sizeof err);
        if (rc != CODI_EFORMAT)
            fail_msg("truncated at %zu of %zu: rc %d (%s)", k, b.n, rc, err);
        assert_null(g);
        if (!strstr(err, "truncated file") && !strstr(err, "cannot fit"))
            fail_msg("truncated at %zu: unexpected message \"%s\"", k, err);
        free(copy);
    }
    /* The message names the part that was cut. */
    codi_gguf_parse(b.p, 30, &g, err, sizeof err);
    assert_string_equal(err, "buffer: metadata count 19 cannot fit in the 6 "
                             "bytes left (file size 30)");
    codi_gguf_parse(b.p, b.data_offset - 40, &g, err, sizeof err);
    if (!strstr(err, "truncated file: tensor info 3 runs past end of file"))
        fail_msg("%s", err);
    assert_int_equal(codi_gguf_parse(b.p, b.n, &g, err, sizeof err), 0);
    codi_gguf_close(g);
    free(b.p);
}

/* Random byte corruption: whatever happens, no crash, no leak, and either
 * a handle or an error message. */
static void test_corruption(void **state) {
    (void)state;
    tfile f;
    base_file(&f);
    buf b;
    serialize(&f, &b);
    uint8_t *copy = malloc(b.n);
    assert_non_null(copy);
    uint64_t rng = 0x9e3779b97f4a7c15u;
    int accepted = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(copy, b.p, b.n);
        int flips = 1 + iter % 4;
        for (int j = 0; j < flips; j++) {
            rng ^= rng << 13, rng ^= rng >> 7, rng ^= rng << 17;
            size_t at = (size_t)(rng % b.n);
            /* Favour the header and lengths: bytes that are small counts. */
            uint8_t v = (uint8_t)(rng >> 32);
            copy[at] = (iter & 1) ? v : (uint8_t)(copy[at] ^ (1u << (v & 7)));
        }
        char err[256] = "";
        codi_gguf *g = NULL;
        int rc = codi_gguf_parse(copy, b.n, &g, err, sizeof err);
        if (rc == 0) {
            accepted++;
            assert_non_null(g);
            for (uint64_t t = 0; t < g->n_tensors; t++) {
                const codi_gguf_tensor *ti = &g->tensors[t];
                assert_true(g->data_offset + ti->offset + ti->nbytes <= b.n);
                assert_ptr_equal(codi_gguf_find_tensor(g, ti->name), ti);
            }
            codi_gguf_close(g);
        } else {
            assert_null(g);
            assert_true(rc == CODI_EFORMAT || rc == CODI_EUNSUPPORTED);
            assert_true(err[0] != '\0');
        }
    }
    /* Flips inside tensor data or values are harmless, so some pass. */
    assert_true(accepted > 0);
    free(copy);
    free(b.p);
}

/* ------------------------------------------------------------ files */

static void test_open_files(void **state) {
    (void)state;
    char err[512];
    codi_gguf *g = (codi_gguf *)&err;

    assert_int_equal(codi_gguf_open("/nonexistent/x.gguf", &g, err, sizeof err),
                     CODI_EIO);
    assert_null(g);
    assert_non_null(strstr(err, "/nonexistent/x.gguf: cannot open: "));
    assert_non_null(strstr(err, strerror(ENOENT)));

    assert_int_equal(codi_gguf_open(CODI_SOURCE_DIR, &g, err, sizeof err),
                     CODI_EIO);
    assert_non_null(strstr(err, "not a regular file"));

    /* A valid file written to disk, then an empty one and a cut one. */
    const char *path = CODI_BINARY_DIR "/test_gguf_tmp.gguf";
    tfile f;
    base_file(&f);
    buf b;
    serialize(&f, &b);
    FILE *fp = fopen(path, "wb");
    assert_non_null(fp);
    assert_int_equal(fwrite(b.p, 1, b.n, fp), b.n);
    assert_int_equal(fclose(fp), 0);
    int rc = codi_gguf_open(path, &g, err, sizeof err);
    if (rc)
        fail_msg("%s", err);
    assert_true(g->owns_map);
    assert_true(g->fd >= 0);
    assert_int_equal(g->size, b.n);
    assert_int_equal(g->n_tensors, T_COUNT);
    const codi_gguf_tensor *t = codi_gguf_find_tensor(g, "w4k");
    assert_non_null(t);
    assert_memory_equal(t->data, b.p + b.data_offset + b.off[T_W4K],
                        t->nbytes);
    char *s = NULL;
    assert_int_equal(codi_gguf_get_str(g, "general.architecture", &s), 0);
    assert_string_equal(s, "llama");
    free(s);
    codi_gguf_close(g);

    assert_int_equal(truncate(path, (off_t)(b.n - 1)), 0);
    assert_int_equal(codi_gguf_open(path, &g, err, sizeof err), CODI_EFORMAT);
    assert_null(g);
    assert_int_equal(strncmp(err, path, strlen(path)), 0);
    assert_non_null(strstr(err, "truncated file: tensor 'half' data"));

    assert_int_equal(truncate(path, 0), 0);
    assert_int_equal(codi_gguf_open(path, &g, err, sizeof err), CODI_EFORMAT);
    assert_null(g);
    assert_non_null(strstr(err, "truncated file: magic runs past end of file "
                                "(size 0)"));
    remove(path);
    free(b.p);

    /* Bad arguments. */
    assert_int_equal(codi_gguf_open(path, NULL, err, sizeof err), CODI_EINVAL);
    assert_int_equal(codi_gguf_open(NULL, &g, err, sizeof err), CODI_EINVAL);
    assert_int_equal(codi_gguf_parse(NULL, 10, &g, err, sizeof err),
                     CODI_EINVAL);
    /* No message buffer is fine too. */
    assert_int_equal(codi_gguf_parse("GGUF", 4, &g, NULL, 0), CODI_EFORMAT);
    assert_int_equal(codi_gguf_parse("GGUF", 4, &g, err, 1), CODI_EFORMAT);
    assert_string_equal(err, "");
    codi_gguf_close(NULL);
}

static void test_real_model(void **state) {
    (void)state;
    char err[512];
    codi_gguf *g = NULL;
    int rc = codi_gguf_open(MODEL_PATH, &g, err, sizeof err);
    if (rc)
        fail_msg("%s (the set-up in README fetches this model)", err);
    assert_int_equal(g->version, 3);
    assert_int_equal(g->n_tensors, 272);
    assert_int_equal(g->n_kv, 33);
    assert_int_equal(g->alignment, 32);

    char *arch = NULL;
    assert_int_equal(codi_gguf_get_str(g, "general.architecture", &arch), 0);
    assert_string_equal(arch, "llama");
    free(arch);
    uint32_t u = 0;
    assert_int_equal(codi_gguf_get_u32(g, "llama.embedding_length", &u), 0);
    assert_int_equal(u, 576);
    assert_int_equal(codi_gguf_get_u32(g, "llama.block_count", &u), 0);
    assert_int_equal(u, 30);
    float eps = 0;
    assert_int_equal(
        codi_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps),
        0);
    assert_true(fabsf(eps - 1e-5f) < 1e-9f);
    bool add_bos = true;
    assert_int_equal(
        codi_gguf_get_bool(g, "tokenizer.ggml.add_bos_token", &add_bos), 0);
    assert_false(add_bos);

    const codi_gguf_kv *tok = codi_gguf_find(g, "tokenizer.ggml.tokens");
    assert_non_null(tok);
    assert_int_equal(tok->type, CODI_GGUF_ARRAY);
    assert_int_equal(tok->arr_type, CODI_GGUF_STRING);
    assert_int_equal(tok->arr_n, 49152);
    assert_non_null(tok->arr_str);
    const codi_gguf_kv *merges = codi_gguf_find(g, "tokenizer.ggml.merges");
    assert_non_null(merges);
    assert_int_equal(merges->arr_n, 48900);
    const codi_gguf_kv *tt = codi_gguf_find(g, "tokenizer.ggml.token_type");
    assert_non_null(tt);
    assert_int_equal(tt->arr_type, CODI_GGUF_INT32);
    assert_int_equal(tt->arr_n, 49152);

    const codi_gguf_tensor *emb = codi_gguf_find_tensor(g, "token_embd.weight");
    assert_non_null(emb);
    assert_int_equal(emb->type, 8);
    assert_int_equal(emb->n_dims, 2);
    assert_int_equal(emb->ne[0], 576);
    assert_int_equal(emb->ne[1], 49152);
    assert_int_equal(emb->ne[2], 1);
    assert_int_equal(emb->ne[3], 1);
    assert_int_equal(emb->nbytes, 576 / 32 * 34 * 49152);
    assert_ptr_equal(emb->data,
                     (const uint8_t *)g->map + g->data_offset + emb->offset);
    assert_non_null(codi_gguf_find_tensor(g, "blk.29.ffn_down.weight"));
    assert_null(codi_gguf_find_tensor(g, "blk.30.ffn_down.weight"));

    uint64_t end = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        assert_ptr_equal(codi_gguf_find_tensor(g, t->name), t);
        assert_true(g->data_offset + t->offset + t->nbytes <= g->size);
        end = t->offset + t->nbytes > end ? t->offset + t->nbytes : end;
    }
    assert_int_equal(g->data_offset + end, g->size);

    /* Cutting the real file anywhere fails cleanly too (a sample of points,
     * denser in the metadata). */
    const uint8_t *p = g->map;
    uint64_t size = g->size, data = g->data_offset;
    for (uint64_t k = 0; k < size; k += k < data ? 4999 : 1000003) {
        codi_gguf *h = NULL;
        rc = codi_gguf_parse(p, k, &h, err, sizeof err);
        if (rc != CODI_EFORMAT)
            fail_msg("real model cut at %llu: rc %d (%s)",
                     (unsigned long long)k, rc, err);
    }
    codi_gguf *h = NULL;
    assert_int_equal(codi_gguf_parse(p, size - 1, &h, err, sizeof err),
                     CODI_EFORMAT);
    assert_int_equal(codi_gguf_parse(p, size, &h, err, sizeof err), 0);
    assert_int_equal(h->n_tensors, 272);
    codi_gguf_close(h);
    codi_gguf_close(g);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_fields),
        cmocka_unit_test(test_getters),
        cmocka_unit_test(test_valid_variants),
        cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_truncation),
        cmocka_unit_test(test_corruption),
        cmocka_unit_test(test_open_files),
        cmocka_unit_test(test_real_model),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
