/* safetensors: u64 header length N, N bytes of JSON {name: {dtype, shape,
 * data_offsets: [begin, end]}, "__metadata__": {...}}, then the data. */
#include "convert/safetensors.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "tensor/types.h"

typedef struct st_file {
    char *path;
    void *map;
    size_t size;
} st_file;

struct st_set {
    st_file *files;
    size_t n_files;
    st_tensor *t;
    size_t n, cap;
};

size_t st_count(const st_set *s) { return s->n; }
const st_tensor *st_at(const st_set *s, size_t i) { return &s->t[i]; }

const st_tensor *st_find(const st_set *s, const char *name) {
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->t[i].name, name) == 0)
            return &s->t[i];
    return NULL;
}

float st_get(const st_tensor *t, uint64_t i) {
    switch (t->dtype) {
    case ST_F32: {
        float v;
        memcpy(&v, t->data + i * 4, 4);
        return v;
    }
    case ST_F16: {
        uint16_t h;
        memcpy(&h, t->data + i * 2, 2);
        return codi_fp16_to_fp32(h);
    }
    default: {
        uint16_t h;
        memcpy(&h, t->data + i * 2, 2);
        return codi_bf16_to_fp32(h);
    }
    }
}

void st_close(st_set *s) {
    if (!s)
        return;
    for (size_t i = 0; i < s->n_files; i++) {
        if (s->files[i].map)
            munmap(s->files[i].map, s->files[i].size);
        free(s->files[i].path);
    }
    for (size_t i = 0; i < s->n; i++)
        free(s->t[i].name);
    free(s->files);
    free(s->t);
    free(s);
}

static int map_file(const char *path, st_file *f, char *err, size_t errlen) {
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return codi_errorf(err, errlen, CODI_EIO, "cannot open '%s': %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size < 8) {
        close(fd);
        return codi_errorf(err, errlen, CODI_EFORMAT, "'%s' is not a safetensors file (too short)", path);
    }
    void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (m == MAP_FAILED)
        return codi_errorf(err, errlen, CODI_EIO, "cannot map '%s': %s", path, strerror(errno));
    f->map = m;
    f->size = (size_t)st.st_size;
    return 0;
}

static int add_file(st_set *s, const char *dir, const char *name, char *err, size_t errlen) {
    for (size_t i = 0; i < s->n_files; i++)
        if (strcmp(strrchr(s->files[i].path, '/') + 1, name) == 0)
            return 0;
    if (strchr(name, '/') || strcmp(name, "..") == 0)
        return codi_errorf(err, errlen, CODI_EFORMAT, "shard name '%.80s' is not a plain file name", name);
    st_file *nf = realloc(s->files, (s->n_files + 1) * sizeof(st_file));
    if (!nf)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    s->files = nf;
    st_file *f = &s->files[s->n_files];
    memset(f, 0, sizeof(*f));
    size_t len = strlen(dir) + strlen(name) + 2;
    f->path = malloc(len);
    if (!f->path)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    snprintf(f->path, len, "%s/%s", dir, name);
    s->n_files++;
    int rc = map_file(f->path, f, err, errlen);
    if (rc)
        return rc;
    /* header */
    uint64_t hlen;
    memcpy(&hlen, f->map, 8);
    if (hlen > f->size - 8 || hlen > (100u << 20))
        return codi_errorf(err, errlen, CODI_EFORMAT, "'%s': header length %llu exceeds the file", f->path,
                           (unsigned long long)hlen);
    const char *hjson = (const char *)f->map + 8;
    const uint8_t *data = (const uint8_t *)f->map + 8 + hlen;
    const uint64_t data_size = f->size - 8 - hlen;
    cJSON *h = cJSON_ParseWithLength(hjson, (size_t)hlen);
    if (!h || !cJSON_IsObject(h)) {
        cJSON_Delete(h);
        return codi_errorf(err, errlen, CODI_EFORMAT, "'%s': the header is not a JSON object", f->path);
    }
    rc = 0;
    for (cJSON *e = h->child; e && !rc; e = e->next) {
        if (strcmp(e->string, "__metadata__") == 0)
            continue;
        const char *nm = e->string;
        cJSON *dt = cJSON_GetObjectItemCaseSensitive(e, "dtype");
        cJSON *sh = cJSON_GetObjectItemCaseSensitive(e, "shape");
        cJSON *of = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
        if (!cJSON_IsString(dt) || !cJSON_IsArray(sh) || !cJSON_IsArray(of) || cJSON_GetArraySize(of) != 2) {
            rc = codi_errorf(err, errlen, CODI_EFORMAT, "'%s': tensor '%.80s' lacks dtype, shape or data_offsets",
                             f->path, nm);
            break;
        }
        st_tensor t;
        memset(&t, 0, sizeof(t));
        size_t esz;
        if (strcmp(dt->valuestring, "F32") == 0) t.dtype = ST_F32, esz = 4;
        else if (strcmp(dt->valuestring, "F16") == 0) t.dtype = ST_F16, esz = 2;
        else if (strcmp(dt->valuestring, "BF16") == 0) t.dtype = ST_BF16, esz = 2;
        else {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED, "'%s': tensor '%.80s' has dtype %.20s (codi convert "
                             "reads F32, F16, BF16)", f->path, nm, dt->valuestring);
            break;
        }
        t.n_dims = cJSON_GetArraySize(sh);
        if (t.n_dims < 1 || t.n_dims > 4) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED, "'%s': tensor '%.80s' has %d dimensions", f->path, nm,
                             t.n_dims);
            break;
        }
        t.n_elems = 1;
        for (int d = 0; d < t.n_dims; d++) {
            const cJSON *x = cJSON_GetArrayItem(sh, d);
            const double v = cJSON_IsNumber(x) ? x->valuedouble : -1.0;
            if (!(v >= 0 && v <= (double)(1ull << 40))) {
                rc = codi_errorf(err, errlen, CODI_EFORMAT, "'%s': tensor '%.80s' has a bad shape", f->path, nm);
                break;
            }
            t.shape[d] = (int64_t)v;
            if (t.shape[d] && t.n_elems > (1ull << 40) / (uint64_t)t.shape[d]) {
                rc = codi_errorf(err, errlen, CODI_EFORMAT, "'%s': tensor '%.80s' is too large", f->path, nm);
                break;
            }
            t.n_elems *= (uint64_t)t.shape[d];
        }
        if (rc)
            break;
        const cJSON *b = cJSON_GetArrayItem(of, 0), *en = cJSON_GetArrayItem(of, 1);
        const double bv = cJSON_IsNumber(b) ? b->valuedouble : -1, ev = cJSON_IsNumber(en) ? en->valuedouble : -1;
        if (!(bv >= 0 && ev >= bv && ev <= (double)data_size) || (uint64_t)(ev - bv) != t.n_elems * esz) {
            rc = codi_errorf(err, errlen, CODI_EFORMAT,
                             "'%s': tensor '%.80s': data_offsets do not match its shape or the file", f->path, nm);
            break;
        }
        t.data = data + (uint64_t)bv;
        t.file = f->path;
        t.name = strdup(nm);
        if (!t.name) {
            rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
            break;
        }
        if (s->n == s->cap) {
            size_t cap = s->cap ? s->cap * 2 : 256;
            st_tensor *nt = realloc(s->t, cap * sizeof(st_tensor));
            if (!nt) {
                free(t.name);
                rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
                break;
            }
            s->t = nt;
            s->cap = cap;
        }
        s->t[s->n++] = t;
    }
    cJSON_Delete(h);
    return rc;
}

static char *read_text(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap || cap > (256u << 20))
            break;
        cap *= 2;
        char *nb = realloc(b, cap);
        if (!nb)
            free(b);
        b = nb;
    }
    fclose(f);
    if (b)
        *len = n;
    return b;
}

int st_open_dir(const char *dir, st_set **out, char *err, size_t errlen) {
    *out = NULL;
    st_set *s = calloc(1, sizeof(st_set));
    if (!s)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    char path[4096];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    int rc = 0;
    size_t len = 0;
    char *idx = read_text(path, &len);
    if (idx) {
        cJSON *j = cJSON_ParseWithLength(idx, len);
        free(idx);
        cJSON *map = j ? cJSON_GetObjectItemCaseSensitive(j, "weight_map") : NULL;
        if (!cJSON_IsObject(map)) {
            rc = codi_errorf(err, errlen, CODI_EFORMAT, "'%s' has no weight_map object", path);
        } else {
            for (cJSON *e = map->child; e && !rc; e = e->next) {
                if (!cJSON_IsString(e))
                    rc = codi_errorf(err, errlen, CODI_EFORMAT, "'%s': weight_map values must be file names", path);
                else
                    rc = add_file(s, dir, e->valuestring, err, errlen);
            }
            /* every tensor the index names must be in its shard */
            for (cJSON *e = map ? map->child : NULL; e && !rc; e = e->next)
                if (!st_find(s, e->string))
                    rc = codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%.80s' of the index is missing from '%.80s'",
                                     e->string, e->valuestring);
        }
        cJSON_Delete(j);
    } else {
        snprintf(path, sizeof(path), "%s/model.safetensors", dir);
        if (access(path, R_OK) != 0)
            rc = codi_errorf(err, errlen, CODI_ENOTFOUND,
                             "'%s' has neither model.safetensors nor model.safetensors.index.json", dir);
        else
            rc = add_file(s, dir, "model.safetensors", err, errlen);
    }
    if (!rc && s->n == 0)
        rc = codi_errorf(err, errlen, CODI_EFORMAT, "'%s': the checkpoint holds no tensors", dir);
    if (rc) {
        /* names quoted from the file may hold any byte: one printable line */
        for (char *p = err; p && errlen && *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
        st_close(s);
        return rc;
    }
    *out = s;
    return 0;
}
