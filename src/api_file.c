/* codi_file: the public, read-only view of a GGUF file for `codi inspect`. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "tensor/types.h"

struct codi_file {
    codi_gguf *g;
};

int codi_file_open(const char *path, codi_file **out, char *err, size_t errlen) {
    if (!out || !path)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_file_open: NULL argument");
    *out = NULL;
    codi_file *f = calloc(1, sizeof(*f));
    if (!f)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    int rc = codi_gguf_open(path, &f->g, err, errlen);
    if (rc) {
        free(f);
        return rc;
    }
    *out = f;
    return 0;
}

void codi_file_close(codi_file *f) {
    if (!f)
        return;
    codi_gguf_close(f->g);
    free(f);
}

uint32_t codi_file_version(const codi_file *f) { return f->g->version; }
int64_t codi_file_n_meta(const codi_file *f) { return (int64_t)f->g->n_kv; }
int64_t codi_file_n_tensors(const codi_file *f) { return (int64_t)f->g->n_tensors; }

const char *codi_file_meta_key(const codi_file *f, int64_t i) {
    if (i < 0 || (uint64_t)i >= f->g->n_kv)
        return NULL;
    return f->g->kv[i].key;
}

/* Append printable text of s (escaping control bytes) to buf at *pos. */
static void put_str(char *buf, size_t len, size_t *pos, const char *s, uint64_t n,
                    uint64_t max) {
    for (uint64_t k = 0; k < n && k < max; k++) {
        unsigned char ch = (unsigned char)s[k];
        char tmp[8];
        if (ch == '\n')
            snprintf(tmp, sizeof(tmp), "\\n");
        else if (ch < 0x20 || ch == 0x7f)
            snprintf(tmp, sizeof(tmp), "\\x%02x", ch);
        else
            tmp[0] = (char)ch, tmp[1] = 0;
        size_t tl = strlen(tmp);
        if (*pos + tl < len)
            memcpy(buf + *pos, tmp, tl + 1);
        *pos += tl;
    }
    if (n > max) {
        if (*pos + 3 < len)
            memcpy(buf + *pos, "...", 4);
        *pos += 3;
    }
}

static int scalar_text(const codi_gguf_kv *kv, int type, uint64_t idx, char *tmp, size_t n) {
    switch (type) {
    case CODI_GGUF_UINT8: case CODI_GGUF_UINT16: case CODI_GGUF_UINT32: case CODI_GGUF_UINT64:
        return snprintf(tmp, n, "%" PRIu64, kv->type == CODI_GGUF_ARRAY ? (uint64_t)codi_gguf_arr_i64(kv, idx) : kv->v.u64);
    case CODI_GGUF_INT8: case CODI_GGUF_INT16: case CODI_GGUF_INT32: case CODI_GGUF_INT64:
        return snprintf(tmp, n, "%" PRId64, kv->type == CODI_GGUF_ARRAY ? codi_gguf_arr_i64(kv, idx) : kv->v.i64);
    case CODI_GGUF_FLOAT32: case CODI_GGUF_FLOAT64:
        return snprintf(tmp, n, "%g", kv->type == CODI_GGUF_ARRAY ? codi_gguf_arr_f64(kv, idx) : kv->v.f64);
    case CODI_GGUF_BOOL:
        return snprintf(tmp, n, "%s", (kv->type == CODI_GGUF_ARRAY ? codi_gguf_arr_i64(kv, idx) : (int64_t)kv->v.u64) ? "true" : "false");
    default:
        return snprintf(tmp, n, "?");
    }
}

int codi_file_meta_format(const codi_file *f, int64_t i, char *buf, size_t len) {
    if (i < 0 || (uint64_t)i >= f->g->n_kv) {
        if (len)
            buf[0] = 0;
        return 0;
    }
    const codi_gguf_kv *kv = &f->g->kv[i];
    size_t pos = 0;
    if (len)
        buf[0] = 0;
    char tmp[64];
    if (kv->type == CODI_GGUF_STRING) {
        put_str(buf, len, &pos, kv->str.ptr, kv->str.len, 120);
    } else if (kv->type == CODI_GGUF_ARRAY) {
        int w = snprintf(tmp, sizeof(tmp), "[%s x %" PRIu64 "]", codi_gguf_vtype_name(kv->arr_type), kv->arr_n);
        put_str(buf, len, &pos, tmp, (uint64_t)w, 64);
        for (uint64_t k = 0; k < kv->arr_n && k < 5; k++) {
            put_str(buf, len, &pos, k ? ", " : " ", k ? 2 : 1, 2);
            if (kv->arr_type == CODI_GGUF_STRING && kv->arr_str) {
                put_str(buf, len, &pos, "'", 1, 1);
                put_str(buf, len, &pos, kv->arr_str[k].ptr, kv->arr_str[k].len, 24);
                put_str(buf, len, &pos, "'", 1, 1);
            } else if (kv->arr_type != CODI_GGUF_ARRAY) {
                w = scalar_text(kv, kv->arr_type, k, tmp, sizeof(tmp));
                put_str(buf, len, &pos, tmp, (uint64_t)w, 64);
            }
        }
        if (kv->arr_n > 5)
            put_str(buf, len, &pos, ", ...", 5, 5);
    } else {
        int w = scalar_text(kv, kv->type, 0, tmp, sizeof(tmp));
        put_str(buf, len, &pos, tmp, (uint64_t)w, 64);
    }
    return (int)pos;
}

int codi_file_tensor(const codi_file *f, int64_t i, codi_tensor_info *info) {
    if (i < 0 || (uint64_t)i >= f->g->n_tensors || !info)
        return CODI_ERANGE;
    const codi_gguf_tensor *t = &f->g->tensors[i];
    info->name = t->name;
    info->type_name = codi_type_name(t->type);
    info->n_dims = t->n_dims;
    memcpy(info->ne, t->ne, sizeof(info->ne));
    info->nbytes = t->nbytes;
    info->offset = t->offset;
    return 0;
}
