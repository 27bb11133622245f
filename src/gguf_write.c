/* GGUF v3 writer (see gguf_write.h). Layout: "GGUF", u32 version 3, u64
 * n_tensors, u64 n_kv, the KV pairs, the tensor infos {str name, u32 n_dims,
 * u64 ne[n_dims], u32 type, u64 offset}, padding to 32 bytes, then the data
 * of each tensor at its offset (each padded to 32). */
#include "gguf_write.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "tensor/types.h"

#define ALIGN 32

typedef struct wkv {
    char *key;
    int type;     /* enum codi_gguf_vtype */
    int arr_type; /* for arrays */
    uint64_t n;   /* array length */
    union {
        uint32_t u32;
        float f32;
        bool b;
    } v;
    char *str;     /* STRING */
    char **strs;   /* ARRAY of STRING */
    void *data;    /* ARRAY of numbers */
    uint8_t *raw;  /* a copied value: its bytes after the type, as written */
    size_t raw_n;
} wkv;

typedef struct wtensor {
    char *name;
    int type, n_dims;
    int64_t ne[4];
    uint64_t nbytes, offset;
} wtensor;

struct codi_gguf_writer {
    wkv *kv;
    size_t n_kv, cap_kv;
    wtensor *t;
    size_t n_t, cap_t;
    bool oom;
};

codi_gguf_writer *codi_gguf_writer_new(void) { return calloc(1, sizeof(codi_gguf_writer)); }

static void free_kv(wkv *k) {
    free(k->key);
    free(k->str);
    if (k->strs)
        for (uint64_t i = 0; i < k->n; i++)
            free(k->strs[i]);
    free(k->strs);
    free(k->data);
    free(k->raw);
    memset(k, 0, sizeof(*k));
}

void codi_gguf_writer_free(codi_gguf_writer *w) {
    if (!w)
        return;
    for (size_t i = 0; i < w->n_kv; i++)
        free_kv(&w->kv[i]);
    for (size_t i = 0; i < w->n_t; i++)
        free(w->t[i].name);
    free(w->kv);
    free(w->t);
    free(w);
}

/* The entry for key: replaced in place if present, else appended. */
static wkv *slot(codi_gguf_writer *w, const char *key) {
    if (w->oom)
        return NULL;
    for (size_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->kv[i].key, key) == 0) {
            char *k = w->kv[i].key;
            w->kv[i].key = NULL;
            free_kv(&w->kv[i]);
            w->kv[i].key = k;
            return &w->kv[i];
        }
    if (w->n_kv == w->cap_kv) {
        size_t cap = w->cap_kv ? w->cap_kv * 2 : 32;
        wkv *nk = realloc(w->kv, cap * sizeof(wkv));
        if (!nk) {
            w->oom = true;
            return NULL;
        }
        w->kv = nk;
        w->cap_kv = cap;
    }
    wkv *k = &w->kv[w->n_kv];
    memset(k, 0, sizeof(*k));
    k->key = strdup(key);
    if (!k->key) {
        w->oom = true;
        return NULL;
    }
    w->n_kv++;
    return k;
}

int codi_gguf_w_str(codi_gguf_writer *w, const char *key, const char *v) {
    wkv *k = slot(w, key);
    if (!k)
        return CODI_ENOMEM;
    k->type = CODI_GGUF_STRING;
    k->str = strdup(v);
    if (!k->str)
        return (w->oom = true), CODI_ENOMEM;
    return 0;
}

int codi_gguf_w_u32(codi_gguf_writer *w, const char *key, uint32_t v) {
    wkv *k = slot(w, key);
    if (!k)
        return CODI_ENOMEM;
    k->type = CODI_GGUF_UINT32;
    k->v.u32 = v;
    return 0;
}

int codi_gguf_w_f32(codi_gguf_writer *w, const char *key, float v) {
    wkv *k = slot(w, key);
    if (!k)
        return CODI_ENOMEM;
    k->type = CODI_GGUF_FLOAT32;
    k->v.f32 = v;
    return 0;
}

int codi_gguf_w_bool(codi_gguf_writer *w, const char *key, bool v) {
    wkv *k = slot(w, key);
    if (!k)
        return CODI_ENOMEM;
    k->type = CODI_GGUF_BOOL;
    k->v.b = v;
    return 0;
}

int codi_gguf_w_arr_str(codi_gguf_writer *w, const char *key, const char *const *v, size_t n) {
    wkv *k = slot(w, key);
    if (!k)
        return CODI_ENOMEM;
    k->type = CODI_GGUF_ARRAY;
    k->arr_type = CODI_GGUF_STRING;
    k->strs = calloc(n ? n : 1, sizeof(char *));
    if (!k->strs)
        return (w->oom = true), CODI_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        k->strs[i] = strdup(v[i]);
        k->n = i + 1;
        if (!k->strs[i])
            return (w->oom = true), CODI_ENOMEM;
    }
    k->n = n;
    return 0;
}

static int arr_num(codi_gguf_writer *w, const char *key, int type, const void *v, size_t n) {
    wkv *k = slot(w, key);
    if (!k)
        return CODI_ENOMEM;
    k->type = CODI_GGUF_ARRAY;
    k->arr_type = type;
    k->data = malloc(n ? n * 4 : 1);
    if (!k->data)
        return (w->oom = true), CODI_ENOMEM;
    if (n)
        memcpy(k->data, v, n * 4);
    k->n = n;
    return 0;
}

int codi_gguf_w_arr_i32(codi_gguf_writer *w, const char *key, const int32_t *v, size_t n) {
    return arr_num(w, key, CODI_GGUF_INT32, v, n);
}

int codi_gguf_w_arr_f32(codi_gguf_writer *w, const char *key, const float *v, size_t n) {
    return arr_num(w, key, CODI_GGUF_FLOAT32, v, n);
}

static size_t scalar_size(int type) {
    switch (type) {
    case CODI_GGUF_UINT8: case CODI_GGUF_INT8: case CODI_GGUF_BOOL: return 1;
    case CODI_GGUF_UINT16: case CODI_GGUF_INT16: return 2;
    case CODI_GGUF_UINT32: case CODI_GGUF_INT32: case CODI_GGUF_FLOAT32: return 4;
    case CODI_GGUF_UINT64: case CODI_GGUF_INT64: case CODI_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

/* Append n bytes to a growing buffer. */
static bool grow_put(uint8_t **b, size_t *n, size_t *cap, const void *p, size_t len) {
    if (*n + len > *cap) {
        size_t c = *cap ? *cap : 64;
        while (c < *n + len)
            c *= 2;
        uint8_t *nb = realloc(*b, c);
        if (!nb)
            return false;
        *b = nb;
        *cap = c;
    }
    if (len)
        memcpy(*b + *n, p, len);
    *n += len;
    return true;
}

int codi_gguf_w_copy(codi_gguf_writer *w, const codi_gguf_kv *kv) {
    uint8_t *b = NULL;
    size_t n = 0, cap = 0;
    bool ok = true;
    if (kv->type == CODI_GGUF_STRING) {
        const uint64_t len = kv->str.len;
        ok = grow_put(&b, &n, &cap, &len, 8) && grow_put(&b, &n, &cap, kv->str.ptr, (size_t)len);
    } else if (kv->type == CODI_GGUF_ARRAY) {
        const uint32_t at = (uint32_t)kv->arr_type;
        const uint64_t an = kv->arr_n;
        ok = grow_put(&b, &n, &cap, &at, 4) && grow_put(&b, &n, &cap, &an, 8);
        if (kv->arr_type == CODI_GGUF_STRING) {
            for (uint64_t i = 0; ok && i < an; i++) {
                const uint64_t len = kv->arr_str[i].len;
                ok = grow_put(&b, &n, &cap, &len, 8) &&
                     grow_put(&b, &n, &cap, kv->arr_str[i].ptr, (size_t)len);
            }
        } else {
            const size_t es = scalar_size(kv->arr_type);
            if (!es) {
                free(b);
                return CODI_EINVAL;
            }
            ok = ok && grow_put(&b, &n, &cap, kv->arr_data, (size_t)an * es);
        }
    } else {
        const size_t es = scalar_size(kv->type);
        uint8_t v[8];
        switch (kv->type) {
        case CODI_GGUF_FLOAT32: {
            const float f = (float)kv->v.f64;
            memcpy(v, &f, 4);
            break;
        }
        case CODI_GGUF_FLOAT64: memcpy(v, &kv->v.f64, 8); break;
        case CODI_GGUF_INT8: case CODI_GGUF_INT16: case CODI_GGUF_INT32: case CODI_GGUF_INT64:
            memcpy(v, &kv->v.i64, 8); /* little endian: the low bytes first */
            break;
        default: memcpy(v, &kv->v.u64, 8); break;
        }
        if (!es) {
            free(b);
            return CODI_EINVAL;
        }
        ok = grow_put(&b, &n, &cap, v, es);
    }
    if (!ok) {
        free(b);
        w->oom = true;
        return CODI_ENOMEM;
    }
    wkv *k = slot(w, kv->key);
    if (!k) {
        free(b);
        return CODI_ENOMEM;
    }
    k->type = kv->type;
    k->raw = b;
    k->raw_n = n;
    return 0;
}

int codi_gguf_w_tensor(codi_gguf_writer *w, const char *name, int type, int n_dims, const int64_t *ne) {
    const codi_type_traits *tr = codi_type_get(type);
    if (!tr || n_dims < 1 || n_dims > 4 || ne[0] % tr->blck_size != 0)
        return CODI_EINVAL;
    if (w->oom)
        return CODI_ENOMEM;
    if (w->n_t == w->cap_t) {
        size_t cap = w->cap_t ? w->cap_t * 2 : 64;
        wtensor *nt = realloc(w->t, cap * sizeof(wtensor));
        if (!nt)
            return (w->oom = true), CODI_ENOMEM;
        w->t = nt;
        w->cap_t = cap;
    }
    wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof(*t));
    t->name = strdup(name);
    if (!t->name)
        return (w->oom = true), CODI_ENOMEM;
    t->type = type;
    t->n_dims = n_dims;
    uint64_t rows = 1;
    for (int d = 0; d < 4; d++) {
        t->ne[d] = d < n_dims ? ne[d] : 1;
        if (d > 0)
            rows *= (uint64_t)t->ne[d];
    }
    t->nbytes = (uint64_t)codi_row_size(type, t->ne[0]) * rows;
    w->n_t++;
    return 0;
}

size_t codi_gguf_w_n_tensors(const codi_gguf_writer *w) { return w->n_t; }
uint64_t codi_gguf_w_tensor_bytes(const codi_gguf_writer *w, size_t i) { return w->t[i].nbytes; }

static bool put(FILE *f, const void *p, size_t n) { return n == 0 || fwrite(p, 1, n, f) == n; }
static bool put_u32(FILE *f, uint32_t v) { return put(f, &v, 4); }
static bool put_u64(FILE *f, uint64_t v) { return put(f, &v, 8); }
static bool put_str(FILE *f, const char *s) {
    const uint64_t n = strlen(s);
    return put_u64(f, n) && put(f, s, n);
}

static bool pad(FILE *f, uint64_t *pos) {
    static const char zeros[ALIGN] = {0};
    const uint64_t p = (ALIGN - *pos % ALIGN) % ALIGN;
    *pos += p;
    return put(f, zeros, p);
}

int codi_gguf_writer_write(codi_gguf_writer *w, const char *path, codi_gguf_fill_fn fill, void *user,
                           void (*progress)(void *user, uint64_t done, uint64_t total), void *puser,
                           char *err, size_t errlen) {
    if (w->oom)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    uint64_t off = 0, total = 0;
    for (size_t i = 0; i < w->n_t; i++) {
        w->t[i].offset = off;
        off += (w->t[i].nbytes + ALIGN - 1) / ALIGN * ALIGN;
        total += w->t[i].nbytes;
    }
    FILE *f = fopen(path, "wb");
    if (!f)
        return codi_errorf(err, errlen, CODI_EIO, "cannot create '%s': %s", path, strerror(errno));
    int rc = 0;
    void *buf = NULL;
    bool ok = put(f, "GGUF", 4) && put_u32(f, 3) && put_u64(f, w->n_t) && put_u64(f, w->n_kv);
    for (size_t i = 0; ok && i < w->n_kv; i++) {
        const wkv *k = &w->kv[i];
        ok = put_str(f, k->key) && put_u32(f, (uint32_t)k->type);
        if (!ok)
            break;
        if (k->raw) {
            ok = put(f, k->raw, k->raw_n);
            continue;
        }
        switch (k->type) {
        case CODI_GGUF_STRING: ok = put_str(f, k->str); break;
        case CODI_GGUF_UINT32: ok = put_u32(f, k->v.u32); break;
        case CODI_GGUF_FLOAT32: ok = put(f, &k->v.f32, 4); break;
        case CODI_GGUF_BOOL: {
            const uint8_t b = k->v.b;
            ok = put(f, &b, 1);
            break;
        }
        case CODI_GGUF_ARRAY:
            ok = put_u32(f, (uint32_t)k->arr_type) && put_u64(f, k->n);
            if (k->arr_type == CODI_GGUF_STRING)
                for (uint64_t j = 0; ok && j < k->n; j++)
                    ok = put_str(f, k->strs[j]);
            else
                ok = ok && put(f, k->data, k->n * 4);
            break;
        default: ok = false;
        }
    }
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        ok = put_str(f, t->name) && put_u32(f, (uint32_t)t->n_dims);
        for (int d = 0; ok && d < t->n_dims; d++)
            ok = put_u64(f, (uint64_t)t->ne[d]);
        ok = ok && put_u32(f, (uint32_t)t->type) && put_u64(f, t->offset);
    }
    long hp = ok ? ftell(f) : -1;
    uint64_t pos = hp < 0 ? 0 : (uint64_t)hp;
    ok = ok && hp >= 0 && pad(f, &pos);
    uint64_t done = 0;
    for (size_t i = 0; ok && i < w->n_t; i++) {
        const wtensor *t = &w->t[i];
        void *nb = realloc(buf, t->nbytes ? t->nbytes : 1);
        if (!nb) {
            rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory for tensor '%s' (%llu bytes)", t->name,
                             (unsigned long long)t->nbytes);
            break;
        }
        buf = nb;
        if ((rc = fill(user, i, buf, t->nbytes, err, errlen)))
            break;
        pos += t->nbytes;
        ok = put(f, buf, t->nbytes) && pad(f, &pos);
        done += t->nbytes;
        if (ok && progress)
            progress(puser, done, total);
    }
    free(buf);
    if (!rc && !ok)
        rc = codi_errorf(err, errlen, CODI_EIO, "error writing '%s': %s", path, strerror(errno));
    if (fclose(f) != 0 && !rc)
        rc = codi_errorf(err, errlen, CODI_EIO, "error writing '%s': %s", path, strerror(errno));
    if (rc)
        remove(path);
    return rc;
}
