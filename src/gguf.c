/* Bounds-checked GGUF v2/v3 reader.
 *
 * Layout (little endian): magic "GGUF", u32 version, u64 n_tensors, u64 n_kv,
 * n_kv x {string key, u32 type, value}, n_tensors x {string name, u32 n_dims,
 * u64 ne[n_dims], u32 type, u64 offset}, padding to general.alignment, then
 * the tensor data section. A string is u64 length + bytes; an array is
 * u32 element type + u64 count + elements.
 *
 * Nothing read from the file is trusted: every read is checked against the
 * bytes left, every count is checked against the bytes left before anything
 * is allocated for it, and size products are checked for overflow.
 *
 * Error codes: CODI_EIO when the file cannot be opened/mapped, CODI_EFORMAT
 * for malformed contents (including a tensor type id that no ggml version
 * defines), CODI_EUNSUPPORTED for well-formed files we do not read: GGUF
 * versions other than 2 and 3, big-endian files, arrays of arrays, and
 * tensor types ggml defines but codi does not implement. */
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "tensor/types.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32
#define GGUF_MAX_DIMS 4
/* Smallest possible encodings, used to bound counts before allocating. */
#define GGUF_MIN_KV_BYTES 13     /* u64 key len + u32 type + 1-byte value */
#define GGUF_MIN_TENSOR_BYTES 32 /* u64 name len + u32 n_dims + 1 dim +
                                    u32 type + u64 offset */

/* The handle plus lookup indexes sorted by name, so duplicate detection is
 * O(n log n) and lookups are binary searches. Callers only ever see pub. */
typedef struct gguf_impl {
    codi_gguf pub;
    codi_gguf_kv **kv_sorted;
    codi_gguf_tensor **tensor_sorted;
} gguf_impl;

typedef struct reader {
    const uint8_t *buf;
    uint64_t size;
    uint64_t off;
    const char *name; /* file name for messages */
    char *err;
    size_t errlen;
} reader;

/* ------------------------------------------------------------ type sizes */

/* ggml type names by id, for messages about types codi does not implement.
 * Ids with no name here were never defined or have been removed. */
static const char *ggml_type_name(int type) {
    static const char *const names[] = {
        [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS", [19] = "IQ1_S",
        [20] = "IQ4_NL",  [21] = "IQ3_S",  [22] = "IQ2_S",   [23] = "IQ4_XS",
        [24] = "I8",      [25] = "I16",    [26] = "I32",     [27] = "I64",
        [28] = "F64",     [29] = "IQ1_M",  [34] = "TQ1_0",   [35] = "TQ2_0",
        [39] = "MXFP4",
    };
    if (type < 0 || (size_t)type >= sizeof(names) / sizeof(names[0]))
        return NULL;
    return names[type];
}

/* Elements per block and bytes per block of a tensor type codi implements
 * (the traits table in tensor/types.c); false for anything else. */
static bool type_layout(int type, int64_t *blck, uint64_t *tsize) {
    const codi_type_traits *t = codi_type_get(type);
    if (!t || t->blck_size <= 0 || t->type_size == 0)
        return false;
    *blck = t->blck_size;
    *tsize = t->type_size;
    return true;
}

/* ------------------------------------------------------------ reading */

static int fail(reader *r, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int fail(reader *r, int code, const char *fmt, ...) {
    if (r->err && r->errlen > 0) {
        int n = snprintf(r->err, r->errlen, "%s: ", r->name);
        if (n >= 0 && (size_t)n < r->errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
        /* Keys and names quoted from the file may hold any byte: keep the
         * message one printable line. */
        for (char *p = r->err; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    }
    return code;
}

static uint64_t left(const reader *r) { return r->size - r->off; }

static int truncated(reader *r, const char *what) {
    return fail(r, CODI_EFORMAT,
                "truncated file: %s runs past end of file (size %llu)", what,
                (unsigned long long)r->size);
}

static int need(reader *r, uint64_t n, const char *what) {
    return n > left(r) ? truncated(r, what) : 0;
}

static uint32_t le32(const uint8_t *p) {
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
           (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p) {
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int rd_u32(reader *r, uint32_t *v, const char *what) {
    int rc = need(r, 4, what);
    if (rc)
        return rc;
    *v = le32(r->buf + r->off);
    r->off += 4;
    return 0;
}

static int rd_u64(reader *r, uint64_t *v, const char *what) {
    int rc = need(r, 8, what);
    if (rc)
        return rc;
    *v = le64(r->buf + r->off);
    r->off += 8;
    return 0;
}

static int rd_str(reader *r, codi_gguf_str *s, const char *what) {
    uint64_t len;
    int rc = rd_u64(r, &len, what);
    if (rc)
        return rc;
    if (len > left(r))
        return fail(r, CODI_EFORMAT,
                    "truncated file: %s: string length %llu runs past end of "
                    "file (size %llu)",
                    what, (unsigned long long)len,
                    (unsigned long long)r->size);
    s->ptr = (const char *)r->buf + r->off;
    s->len = len;
    r->off += len;
    return 0;
}

/* NUL-terminated copy of a name (key or tensor name); names with an embedded
 * NUL are rejected because the copy would silently shorten them. */
static int dup_name(reader *r, const codi_gguf_str *s, char **out,
                    const char *what) {
    if (memchr(s->ptr, '\0', s->len))
        return fail(r, CODI_EFORMAT, "%s contains a NUL byte", what);
    char *p = malloc(s->len + 1);
    if (!p)
        return fail(r, CODI_ENOMEM, "out of memory copying %s", what);
    memcpy(p, s->ptr, s->len);
    p[s->len] = '\0';
    *out = p;
    return 0;
}

/* Bytes of one scalar of a numeric/bool type; 0 for string, array, unknown. */
static uint64_t scalar_size(int type) {
    switch (type) {
    case CODI_GGUF_UINT8:
    case CODI_GGUF_INT8:
    case CODI_GGUF_BOOL: return 1;
    case CODI_GGUF_UINT16:
    case CODI_GGUF_INT16: return 2;
    case CODI_GGUF_UINT32:
    case CODI_GGUF_INT32:
    case CODI_GGUF_FLOAT32: return 4;
    case CODI_GGUF_UINT64:
    case CODI_GGUF_INT64:
    case CODI_GGUF_FLOAT64: return 8;
    default: return 0;
    }
}

static bool type_is_signed(int type) {
    return type == CODI_GGUF_INT8 || type == CODI_GGUF_INT16 ||
           type == CODI_GGUF_INT32 || type == CODI_GGUF_INT64;
}

/* Decode one little-endian scalar of a numeric/bool type at p. */
static void decode_scalar(int type, const uint8_t *p, codi_gguf_kv *kv) {
    switch (type) {
    case CODI_GGUF_UINT8:
    case CODI_GGUF_BOOL: kv->v.u64 = p[0]; break;
    case CODI_GGUF_INT8: kv->v.i64 = (int8_t)p[0]; break;
    case CODI_GGUF_UINT16: kv->v.u64 = (uint16_t)(p[0] | p[1] << 8); break;
    case CODI_GGUF_INT16:
        kv->v.i64 = (int16_t)(uint16_t)(p[0] | p[1] << 8);
        break;
    case CODI_GGUF_UINT32: kv->v.u64 = le32(p); break;
    case CODI_GGUF_INT32: kv->v.i64 = (int32_t)le32(p); break;
    case CODI_GGUF_UINT64: kv->v.u64 = le64(p); break;
    case CODI_GGUF_INT64: kv->v.i64 = (int64_t)le64(p); break;
    case CODI_GGUF_FLOAT32: {
        uint32_t b = le32(p);
        float f;
        memcpy(&f, &b, sizeof f);
        kv->v.f64 = f;
        break;
    }
    case CODI_GGUF_FLOAT64: {
        uint64_t b = le64(p);
        memcpy(&kv->v.f64, &b, sizeof kv->v.f64);
        break;
    }
    default: break;
    }
}

static int read_value(reader *r, codi_gguf_kv *kv) {
    char what[160];
    snprintf(what, sizeof what, "metadata key '%s'", kv->key);

    if (kv->type == CODI_GGUF_STRING)
        return rd_str(r, &kv->str, what);

    if (kv->type != CODI_GGUF_ARRAY) {
        uint64_t sz = scalar_size(kv->type);
        if (sz == 0)
            return fail(r, CODI_EFORMAT, "%s has unknown value type %d", what,
                        kv->type);
        int rc = need(r, sz, what);
        if (rc)
            return rc;
        decode_scalar(kv->type, r->buf + r->off, kv);
        r->off += sz;
        return 0;
    }

    uint32_t at;
    int rc = rd_u32(r, &at, what);
    if (!rc)
        rc = rd_u64(r, &kv->arr_n, what);
    if (rc)
        return rc;
    kv->arr_type = (int)at;
    if (at == CODI_GGUF_ARRAY)
        return fail(r, CODI_EUNSUPPORTED,
                    "%s is an array of arrays, which is not supported", what);

    if (at == CODI_GGUF_STRING) {
        /* Each element takes at least its 8-byte length. */
        if (kv->arr_n > left(r) / 8)
            return fail(r, CODI_EFORMAT,
                        "truncated file: %s: array of %llu strings runs past "
                        "end of file (size %llu)",
                        what, (unsigned long long)kv->arr_n,
                        (unsigned long long)r->size);
        if (kv->arr_n == 0)
            return 0;
        kv->arr_str = malloc(kv->arr_n * sizeof *kv->arr_str);
        if (!kv->arr_str)
            return fail(r, CODI_ENOMEM, "out of memory reading %s", what);
        for (uint64_t i = 0; i < kv->arr_n; i++) {
            rc = rd_str(r, &kv->arr_str[i], what);
            if (rc)
                return rc;
        }
        return 0;
    }

    uint64_t sz = scalar_size((int)at);
    if (sz == 0)
        return fail(r, CODI_EFORMAT, "%s has unknown array element type %u",
                    what, at);
    if (kv->arr_n > left(r) / sz)
        return fail(r, CODI_EFORMAT,
                    "truncated file: %s: array of %llu %s runs past end of "
                    "file (size %llu)",
                    what, (unsigned long long)kv->arr_n,
                    codi_gguf_vtype_name((int)at),
                    (unsigned long long)r->size);
    kv->arr_data = r->buf + r->off;
    r->off += kv->arr_n * sz;
    return 0;
}

static int cmp_kv(const void *a, const void *b) {
    return strcmp((*(codi_gguf_kv *const *)a)->key,
                  (*(codi_gguf_kv *const *)b)->key);
}

static int cmp_tensor(const void *a, const void *b) {
    return strcmp((*(codi_gguf_tensor *const *)a)->name,
                  (*(codi_gguf_tensor *const *)b)->name);
}

static int read_kvs(reader *r, gguf_impl *impl) {
    codi_gguf *g = &impl->pub;
    if (g->n_kv > left(r) / GGUF_MIN_KV_BYTES)
        return fail(r, CODI_EFORMAT,
                    "metadata count %llu cannot fit in the %llu bytes left "
                    "(file size %llu)",
                    (unsigned long long)g->n_kv,
                    (unsigned long long)left(r), (unsigned long long)r->size);
    if (g->n_kv == 0)
        return 0;
    g->kv = calloc(g->n_kv, sizeof *g->kv);
    impl->kv_sorted = malloc(g->n_kv * sizeof *impl->kv_sorted);
    if (!g->kv || !impl->kv_sorted)
        return fail(r, CODI_ENOMEM, "out of memory for %llu metadata entries",
                    (unsigned long long)g->n_kv);

    for (uint64_t i = 0; i < g->n_kv; i++) {
        codi_gguf_kv *kv = &g->kv[i];
        char what[64];
        snprintf(what, sizeof what, "metadata entry %llu",
                 (unsigned long long)i);
        codi_gguf_str key;
        uint32_t type;
        int rc = rd_str(r, &key, what);
        if (!rc)
            rc = dup_name(r, &key, &kv->key, what);
        if (!rc)
            rc = rd_u32(r, &type, what);
        if (rc)
            return rc;
        kv->type = (int)type;
        if (type >= CODI_GGUF_VTYPE_COUNT)
            return fail(r, CODI_EFORMAT,
                        "metadata key '%s' has unknown value type %u",
                        kv->key, type);
        rc = read_value(r, kv);
        if (rc)
            return rc;
        impl->kv_sorted[i] = kv;
    }

    qsort(impl->kv_sorted, g->n_kv, sizeof *impl->kv_sorted, cmp_kv);
    for (uint64_t i = 1; i < g->n_kv; i++)
        if (strcmp(impl->kv_sorted[i - 1]->key, impl->kv_sorted[i]->key) == 0)
            return fail(r, CODI_EFORMAT, "duplicate metadata key '%s'",
                        impl->kv_sorted[i]->key);
    return 0;
}

static int read_alignment(reader *r, codi_gguf *g) {
    g->alignment = GGUF_DEFAULT_ALIGNMENT;
    const codi_gguf_kv *kv = codi_gguf_find(g, "general.alignment");
    if (!kv)
        return 0;
    uint32_t a;
    if (codi_gguf_get_u32(g, "general.alignment", &a) != 0)
        return fail(r, CODI_EFORMAT,
                    "general.alignment has type %s, expected uint32",
                    codi_gguf_vtype_name(kv->type));
    if (a == 0 || (a & (a - 1)) != 0)
        return fail(r, CODI_EFORMAT,
                    "general.alignment %u is not a nonzero power of two", a);
    g->alignment = a;
    return 0;
}

static int read_tensor_info(reader *r, codi_gguf_tensor *t, uint64_t i) {
    char what[64];
    snprintf(what, sizeof what, "tensor info %llu", (unsigned long long)i);
    codi_gguf_str name;
    int rc = rd_str(r, &name, what);
    if (!rc)
        rc = dup_name(r, &name, &t->name, what);
    if (rc)
        return rc;

    uint32_t n_dims;
    rc = rd_u32(r, &n_dims, what);
    if (rc)
        return rc;
    if (n_dims < 1 || n_dims > GGUF_MAX_DIMS)
        return fail(r, CODI_EFORMAT, "tensor '%s' has %u dimensions (1..%d)",
                    t->name, n_dims, GGUF_MAX_DIMS);
    t->n_dims = (int)n_dims;
    for (int d = 0; d < GGUF_MAX_DIMS; d++)
        t->ne[d] = 1;
    for (uint32_t d = 0; d < n_dims; d++) {
        uint64_t ne;
        rc = rd_u64(r, &ne, what);
        if (rc)
            return rc;
        if (ne == 0 || ne > (uint64_t)INT64_MAX)
            return fail(r, CODI_EFORMAT, "tensor '%s' has invalid ne[%u] = %lld",
                        t->name, d, (long long)ne);
        t->ne[d] = (int64_t)ne;
    }
    int64_t nel = 1;
    for (int d = 0; d < GGUF_MAX_DIMS; d++) {
        if (nel > INT64_MAX / t->ne[d])
            return fail(r, CODI_EFORMAT,
                        "tensor '%s' has too many elements (%lld x %lld x "
                        "%lld x %lld overflows)",
                        t->name, (long long)t->ne[0], (long long)t->ne[1],
                        (long long)t->ne[2], (long long)t->ne[3]);
        nel *= t->ne[d];
    }

    uint32_t type;
    rc = rd_u32(r, &type, what);
    if (!rc)
        rc = rd_u64(r, &t->offset, what);
    if (rc)
        return rc;
    t->type = (int)type;
    return 0;
}

/* Type, shape, alignment and extent checks, once data_offset is known. */
static int check_tensor(reader *r, const codi_gguf *g, codi_gguf_tensor *t) {
    int64_t blck;
    uint64_t tsize;
    if (t->type < 0 || !type_layout(t->type, &blck, &tsize)) {
        const char *gname = ggml_type_name(t->type);
        if (gname)
            return fail(r, CODI_EUNSUPPORTED,
                        "tensor '%s' has unsupported type %s (%d)", t->name,
                        gname, t->type);
        return fail(r, CODI_EFORMAT, "tensor '%s' has unknown type %u",
                    t->name, (unsigned)t->type);
    }
    if (t->ne[0] % blck != 0)
        return fail(r, CODI_EFORMAT,
                    "tensor '%s': ne[0] = %lld is not a multiple of the block "
                    "size %lld of type %s",
                    t->name, (long long)t->ne[0], (long long)blck,
                    codi_type_name(t->type));
    /* Bytes: (ne0 / blck) * tsize * ne1 * ne2 * ne3, each step checked. */
    uint64_t nbytes = (uint64_t)(t->ne[0] / blck);
    bool overflow = nbytes > UINT64_MAX / tsize;
    nbytes = overflow ? 0 : nbytes * tsize;
    for (int d = 1; d < GGUF_MAX_DIMS && !overflow; d++) {
        overflow = nbytes > UINT64_MAX / (uint64_t)t->ne[d];
        nbytes = overflow ? 0 : nbytes * (uint64_t)t->ne[d];
    }
    if (overflow)
        return fail(r, CODI_EFORMAT, "tensor '%s': size in bytes overflows",
                    t->name);
    t->nbytes = nbytes;

    if (t->offset % g->alignment != 0)
        return fail(r, CODI_EFORMAT,
                    "tensor '%s': data offset %llu is not a multiple of the "
                    "alignment %llu",
                    t->name, (unsigned long long)t->offset,
                    (unsigned long long)g->alignment);
    uint64_t avail = g->size > g->data_offset ? g->size - g->data_offset : 0;
    if (t->offset > avail || nbytes > avail - t->offset)
        return fail(r, CODI_EFORMAT,
                    "truncated file: tensor '%s' data (%llu bytes at data "
                    "offset %llu, data section at %llu) runs past end of "
                    "file (size %llu)",
                    t->name, (unsigned long long)nbytes,
                    (unsigned long long)t->offset,
                    (unsigned long long)g->data_offset,
                    (unsigned long long)g->size);
    t->data = (const uint8_t *)g->map + g->data_offset + t->offset;
    return 0;
}

static int read_tensors(reader *r, gguf_impl *impl) {
    codi_gguf *g = &impl->pub;
    if (g->n_tensors > left(r) / GGUF_MIN_TENSOR_BYTES)
        return fail(r, CODI_EFORMAT,
                    "tensor count %llu cannot fit in the %llu bytes left "
                    "(file size %llu)",
                    (unsigned long long)g->n_tensors,
                    (unsigned long long)left(r), (unsigned long long)r->size);
    if (g->n_tensors > 0) {
        g->tensors = calloc(g->n_tensors, sizeof *g->tensors);
        impl->tensor_sorted = malloc(g->n_tensors * sizeof *impl->tensor_sorted);
        if (!g->tensors || !impl->tensor_sorted)
            return fail(r, CODI_ENOMEM, "out of memory for %llu tensor infos",
                        (unsigned long long)g->n_tensors);
    }
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        int rc = read_tensor_info(r, &g->tensors[i], i);
        if (rc)
            return rc;
        impl->tensor_sorted[i] = &g->tensors[i];
    }
    if (g->n_tensors > 0) {
        qsort(impl->tensor_sorted, g->n_tensors, sizeof *impl->tensor_sorted,
              cmp_tensor);
        for (uint64_t i = 1; i < g->n_tensors; i++)
            if (strcmp(impl->tensor_sorted[i - 1]->name,
                       impl->tensor_sorted[i]->name) == 0)
                return fail(r, CODI_EFORMAT, "duplicate tensor name '%s'",
                            impl->tensor_sorted[i]->name);
    }

    /* Data section: the first alignment boundary after the infos. r->off <=
     * size and alignment <= 2^31, so this cannot overflow. */
    g->data_offset = (r->off + g->alignment - 1) / g->alignment * g->alignment;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        int rc = check_tensor(r, g, &g->tensors[i]);
        if (rc)
            return rc;
    }
    return 0;
}

static int parse(gguf_impl *impl, reader *r) {
    codi_gguf *g = &impl->pub;
    if (r->size < 4 || memcmp(r->buf, GGUF_MAGIC, 4) != 0) {
        if (r->size < 4)
            return truncated(r, "magic");
        return fail(r, CODI_EFORMAT,
                    "not a GGUF file (magic %02x %02x %02x %02x, expected "
                    "\"GGUF\")",
                    r->buf[0], r->buf[1], r->buf[2], r->buf[3]);
    }
    r->off = 4;
    int rc = rd_u32(r, &g->version, "header");
    if (rc)
        return rc;
    if (g->version != 2 && g->version != 3) {
        /* A big-endian file shows its small version byte-swapped. */
        uint32_t v = g->version;
        uint32_t swapped = v >> 24 | (v >> 8 & 0xff00) | (v << 8 & 0xff0000) |
                           v << 24;
        if (swapped >= 1 && swapped <= 3)
            return fail(r, CODI_EUNSUPPORTED,
                        "big-endian GGUF files are not supported");
        if (v == 1)
            return fail(r, CODI_EUNSUPPORTED,
                        "GGUF version 1 is not supported (only versions 2 "
                        "and 3); re-convert the model");
        return fail(r, CODI_EUNSUPPORTED,
                    "unknown GGUF version %u (only versions 2 and 3 are "
                    "supported)",
                    v);
    }
    rc = rd_u64(r, &g->n_tensors, "header");
    if (!rc)
        rc = rd_u64(r, &g->n_kv, "header");
    if (!rc)
        rc = read_kvs(r, impl);
    if (!rc)
        rc = read_alignment(r, g);
    if (!rc)
        rc = read_tensors(r, impl);
    return rc;
}

/* ------------------------------------------------------------ open/close */

static gguf_impl *impl_of(const codi_gguf *g) {
    return (gguf_impl *)((char *)(uintptr_t)g - offsetof(gguf_impl, pub));
}

void codi_gguf_close(codi_gguf *g) {
    if (!g)
        return;
    gguf_impl *impl = impl_of(g);
    if (g->kv)
        for (uint64_t i = 0; i < g->n_kv; i++) {
            free(g->kv[i].key);
            free(g->kv[i].arr_str);
        }
    free(g->kv);
    if (g->tensors)
        for (uint64_t i = 0; i < g->n_tensors; i++)
            free(g->tensors[i].name);
    free(g->tensors);
    free(impl->kv_sorted);
    free(impl->tensor_sorted);
    if (g->owns_map && g->map)
        munmap(g->map, (size_t)g->size);
    if (g->fd >= 0)
        close(g->fd);
    free(impl);
}

/* Parse [buf, buf+size) into a new handle that takes over fd/map ownership
 * as given; on failure everything, including the mapping, is released. */
static int parse_into(const void *buf, uint64_t size, bool owns_map, int fd,
                      const char *name, codi_gguf **out, char *err,
                      size_t errlen) {
    gguf_impl *impl = calloc(1, sizeof *impl);
    if (!impl) {
        if (owns_map)
            munmap((void *)(uintptr_t)buf, (size_t)size);
        if (fd >= 0)
            close(fd);
        return codi_errorf(err, errlen, CODI_ENOMEM, "%s: out of memory", name);
    }
    codi_gguf *g = &impl->pub;
    g->fd = fd;
    g->map = (void *)(uintptr_t)buf;
    g->size = size;
    g->owns_map = owns_map;

    reader r = {.buf = buf, .size = size, .name = name, .err = err,
                .errlen = errlen};
    int rc = parse(impl, &r);
    if (rc) {
        codi_gguf_close(g);
        return rc;
    }
    *out = g;
    return 0;
}

int codi_gguf_parse(const void *buf, uint64_t size, codi_gguf **out, char *err,
                    size_t errlen) {
    if (!out)
        return codi_errorf(err, errlen, CODI_EINVAL, "gguf: out is NULL");
    *out = NULL;
    if (!buf && size > 0)
        return codi_errorf(err, errlen, CODI_EINVAL, "gguf: buffer is NULL");
    static const uint8_t empty[1];
    return parse_into(buf ? buf : empty, size, false, -1, "buffer", out, err,
                      errlen);
}

int codi_gguf_open(const char *path, codi_gguf **out, char *err,
                   size_t errlen) {
    if (!out)
        return codi_errorf(err, errlen, CODI_EINVAL, "gguf: out is NULL");
    *out = NULL;
    if (!path)
        return codi_errorf(err, errlen, CODI_EINVAL, "gguf: path is NULL");

    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return codi_errorf(err, errlen, CODI_EIO, "%s: cannot open: %s", path,
                           strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return codi_errorf(err, errlen, CODI_EIO, "%s: cannot stat: %s", path,
                           strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return codi_errorf(err, errlen, CODI_EIO, "%s: not a regular file",
                           path);
    }
    uint64_t size = (uint64_t)st.st_size;
    if (size > SIZE_MAX) {
        close(fd);
        return codi_errorf(err, errlen, CODI_EIO,
                           "%s: file too large to map (%llu bytes)", path,
                           (unsigned long long)size);
    }
    if (size == 0) {
        /* mmap cannot map an empty file; the parser reports it. */
        static const uint8_t empty[1];
        return parse_into(empty, 0, false, fd, path, out, err, errlen);
    }
    void *map = mmap(NULL, (size_t)size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED) {
        int e = errno;
        close(fd);
        return codi_errorf(err, errlen, CODI_EIO, "%s: cannot mmap: %s", path,
                           strerror(e));
    }
    return parse_into(map, size, true, fd, path, out, err, errlen);
}

/* ------------------------------------------------------------ lookups */

const codi_gguf_kv *codi_gguf_find(const codi_gguf *g, const char *key) {
    if (!g || !key || g->n_kv == 0)
        return NULL;
    codi_gguf_kv probe = {.key = (char *)(uintptr_t)key};
    const codi_gguf_kv *pp = &probe;
    codi_gguf_kv **hit = bsearch(&pp, impl_of(g)->kv_sorted, g->n_kv,
                                 sizeof(codi_gguf_kv *), cmp_kv);
    return hit ? *hit : NULL;
}

const codi_gguf_tensor *codi_gguf_find_tensor(const codi_gguf *g,
                                              const char *name) {
    if (!g || !name || g->n_tensors == 0)
        return NULL;
    codi_gguf_tensor probe = {.name = (char *)(uintptr_t)name};
    const codi_gguf_tensor *pp = &probe;
    codi_gguf_tensor **hit = bsearch(&pp, impl_of(g)->tensor_sorted,
                                     g->n_tensors, sizeof(codi_gguf_tensor *),
                                     cmp_tensor);
    return hit ? *hit : NULL;
}

/* Integer value of kv as a signed/unsigned pair; false when not an int. */
static bool kv_int(const codi_gguf_kv *kv, bool *neg, uint64_t *mag) {
    if (kv->type == CODI_GGUF_ARRAY || kv->type == CODI_GGUF_STRING ||
        kv->type == CODI_GGUF_BOOL || kv->type == CODI_GGUF_FLOAT32 ||
        kv->type == CODI_GGUF_FLOAT64 || scalar_size(kv->type) == 0)
        return false;
    if (type_is_signed(kv->type) && kv->v.i64 < 0) {
        *neg = true;
        *mag = (uint64_t)0 - (uint64_t)kv->v.i64;
    } else {
        *neg = false;
        *mag = kv->v.u64;
    }
    return true;
}

int codi_gguf_get_u32(const codi_gguf *g, const char *key, uint32_t *out) {
    const codi_gguf_kv *kv = codi_gguf_find(g, key);
    if (!kv)
        return CODI_ENOTFOUND;
    bool neg;
    uint64_t mag;
    if (!kv_int(kv, &neg, &mag) || neg || mag > UINT32_MAX)
        return CODI_EFORMAT;
    *out = (uint32_t)mag;
    return 0;
}

int codi_gguf_get_i32(const codi_gguf *g, const char *key, int32_t *out) {
    const codi_gguf_kv *kv = codi_gguf_find(g, key);
    if (!kv)
        return CODI_ENOTFOUND;
    bool neg;
    uint64_t mag;
    if (!kv_int(kv, &neg, &mag))
        return CODI_EFORMAT;
    if (neg ? mag > (uint64_t)INT32_MAX + 1 : mag > INT32_MAX)
        return CODI_EFORMAT;
    *out = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
    return 0;
}

int codi_gguf_get_f32(const codi_gguf *g, const char *key, float *out) {
    const codi_gguf_kv *kv = codi_gguf_find(g, key);
    if (!kv)
        return CODI_ENOTFOUND;
    if (kv->type != CODI_GGUF_FLOAT32 && kv->type != CODI_GGUF_FLOAT64)
        return CODI_EFORMAT;
    *out = (float)kv->v.f64;
    return 0;
}

int codi_gguf_get_bool(const codi_gguf *g, const char *key, bool *out) {
    const codi_gguf_kv *kv = codi_gguf_find(g, key);
    if (!kv)
        return CODI_ENOTFOUND;
    if (kv->type != CODI_GGUF_BOOL)
        return CODI_EFORMAT;
    *out = kv->v.u64 != 0;
    return 0;
}

int codi_gguf_get_str(const codi_gguf *g, const char *key, char **out) {
    const codi_gguf_kv *kv = codi_gguf_find(g, key);
    if (!kv)
        return CODI_ENOTFOUND;
    if (kv->type != CODI_GGUF_STRING)
        return CODI_EFORMAT;
    char *s = malloc(kv->str.len + 1);
    if (!s)
        return CODI_ENOMEM;
    if (kv->str.len)
        memcpy(s, kv->str.ptr, kv->str.len);
    s[kv->str.len] = '\0';
    *out = s;
    return 0;
}

double codi_gguf_arr_f64(const codi_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != CODI_GGUF_ARRAY || i >= kv->arr_n || !kv->arr_data)
        return 0.0;
    codi_gguf_kv e = {.type = kv->arr_type};
    uint64_t sz = scalar_size(kv->arr_type);
    decode_scalar(kv->arr_type, (const uint8_t *)kv->arr_data + i * sz, &e);
    if (kv->arr_type == CODI_GGUF_FLOAT32 || kv->arr_type == CODI_GGUF_FLOAT64)
        return e.v.f64;
    return type_is_signed(kv->arr_type) ? (double)e.v.i64 : (double)e.v.u64;
}

int64_t codi_gguf_arr_i64(const codi_gguf_kv *kv, uint64_t i) {
    if (!kv || kv->type != CODI_GGUF_ARRAY || i >= kv->arr_n || !kv->arr_data)
        return 0;
    codi_gguf_kv e = {.type = kv->arr_type};
    uint64_t sz = scalar_size(kv->arr_type);
    decode_scalar(kv->arr_type, (const uint8_t *)kv->arr_data + i * sz, &e);
    if (kv->arr_type == CODI_GGUF_FLOAT32 || kv->arr_type == CODI_GGUF_FLOAT64) {
        /* Saturate: converting an out-of-range double is undefined. */
        if (!(e.v.f64 > -9.2233720368547758e18))
            return e.v.f64 != e.v.f64 ? 0 : INT64_MIN;
        if (e.v.f64 >= 9.2233720368547758e18)
            return INT64_MAX;
        return (int64_t)e.v.f64;
    }
    return type_is_signed(kv->arr_type) ? e.v.i64 : (int64_t)e.v.u64;
}

const char *codi_gguf_vtype_name(int type) {
    static const char *const names[CODI_GGUF_VTYPE_COUNT] = {
        "uint8", "int8",   "uint16", "int16", "uint32", "int32",  "float32",
        "bool",  "string", "array",  "uint64", "int64", "float64",
    };
    if (type < 0 || type >= CODI_GGUF_VTYPE_COUNT)
        return "?";
    return names[type];
}
