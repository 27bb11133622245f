/* codi quantize (see quantize.h): choose each tensor's output type, copy
 * the metadata, and requantize row by row inside the writer's fill
 * callback. */
#include "quant/quantize.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "gguf_write.h"
#include "tensor/quant_codi.h"
#include "tensor/types.h"

static const char *const KIND_NAMES[CODI_QUANT_KIND_COUNT] = {"f32", "f16", "q4g", "q8g", "gqsa"};

int codi_quant_kind_from_name(const char *name) {
    for (int i = 0; i < CODI_QUANT_KIND_COUNT; i++)
        if (!strcmp(name, KIND_NAMES[i]))
            return i;
    return -1;
}

const char *codi_quant_kind_name(int kind) {
    return kind >= 0 && kind < CODI_QUANT_KIND_COUNT ? KIND_NAMES[kind] : "?";
}

int codi_quant_check_params(const codi_quant_params *p, char *err, size_t errlen) {
    if (p->kind < 0 || p->kind >= CODI_QUANT_KIND_COUNT)
        return codi_errorf(err, errlen, CODI_EINVAL, "unknown quantization kind %d", p->kind);
    if (p->group != 32 && p->group != 64 && p->group != 128)
        return codi_errorf(err, errlen, CODI_EINVAL, "--group must be 32, 64 or 128, got %d", p->group);
    if (!(p->sparsity >= 0.0f && p->sparsity < 1.0f))
        return codi_errorf(err, errlen, CODI_EINVAL, "--sparsity must be in [0, 1), got %g", (double)p->sparsity);
    return 0;
}

typedef struct job {
    const codi_gguf *g;
    const codi_quant_params *p;
    const codi_gguf_tensor **src; /* per output tensor */
    int *type;                    /* output type per tensor */
    float *row;                   /* one dequantized row */
    float *score;                 /* GQSA: group saliences of the row */
    int32_t *keep;                /* GQSA: kept groups */
    int64_t row_cap;
} job;

static bool is_matrix(const codi_gguf_tensor *t) {
    return t->n_dims >= 2 && t->ne[1] > 1;
}

/* The largest codi group size <= want that divides ne0 (0: none). */
static int fit_group(int64_t ne0, int want) {
    for (int G = want; G >= 32; G /= 2)
        if (ne0 % G == 0)
            return G;
    return 0;
}

/* Output type of one tensor. Matrices get the kind's type (token
 * embeddings 8-bit: they are also the output head of tied models and
 * cost no compute per token as a lookup); vectors stay F32. */
static int choose_type(const codi_gguf_tensor *t, const codi_quant_params *p) {
    if (!is_matrix(t))
        return CODI_TYPE_F32;
    switch (p->kind) {
    case CODI_QUANT_F32: return CODI_TYPE_F32;
    case CODI_QUANT_F16: return CODI_TYPE_F16;
    default: break;
    }
    const int G = fit_group(t->ne[0], p->group);
    if (!G)
        return CODI_TYPE_F16;
    const bool embd = !strcmp(t->name, "token_embd.weight");
    if (embd || p->kind == CODI_QUANT_Q8G)
        return codi_type_codi_group(8, G);
    /* GQSA: the 2-D matrices of the blocks (the output head stays dense) */
    if (p->kind == CODI_QUANT_GQSA && t->n_dims == 2 && !strncmp(t->name, "blk.", 4))
        return codi_type_codi_group(-4, G);
    return codi_type_codi_group(4, G);
}

/* Kept groups per row of a GQSA matrix of ne0 in-features. */
static int gqsa_keep(int64_t ne0, int G, float sparsity) {
    const int64_t ng = ne0 / G;
    int64_t k = (int64_t)((1.0 - (double)sparsity) * (double)ng + 0.5);
    return (int)(k < 1 ? 1 : k > ng ? ng : k);
}

/* The k most salient groups of a row, in increasing order: salience of a
 * group = sum over its elements of imp_j w_j^2 (imp = E[x_j^2] from the
 * calibration pass, or 1: magnitude pruning). */
static void select_groups(const float *x, const float *imp, int64_t ne0, int G, int k, int32_t *keep,
                          float *score) {
    const int ng = (int)(ne0 / G);
    for (int g = 0; g < ng; g++) {
        double s = 0.0;
        for (int i = 0; i < G; i++) {
            const double v = x[(int64_t)g * G + i];
            s += (imp ? imp[(int64_t)g * G + i] : 1.0) * v * v;
        }
        score[g] = (float)s;
    }
    /* k rounds of "take the best remaining" would be O(ng k); a threshold
     * from a sorted copy is O(ng log ng) and ng is at most a few hundred. */
    for (int g = 0; g < ng; g++)
        keep[g] = g;
    /* insertion sort of indices by score, descending (ties: lower index) */
    for (int a = 1; a < ng; a++) {
        const int32_t v = keep[a];
        int b = a - 1;
        while (b >= 0 && score[keep[b]] < score[v]) {
            keep[b + 1] = keep[b];
            b--;
        }
        keep[b + 1] = v;
    }
    /* the first k, back in increasing index order */
    for (int a = 1; a < k; a++) {
        const int32_t v = keep[a];
        int b = a - 1;
        while (b >= 0 && keep[b] > v) {
            keep[b + 1] = keep[b];
            b--;
        }
        keep[b + 1] = v;
    }
}

static int fill(void *user, size_t i, void *dst, size_t nbytes, char *err, size_t errlen) {
    job *j = user;
    const codi_gguf_tensor *t = j->src[i];
    const int out = j->type[i];
    const codi_type_traits *in_tr = codi_type_get(t->type);
    const codi_type_traits *out_tr = codi_type_get(out);
    const int64_t ne0 = t->ne[0];
    const uint64_t rows = (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
    const int G = codi_type_group_size(out);
    const int k = codi_type_is_sparse(out) ? gqsa_keep(ne0, G, j->p->sparsity) : 0;
    const size_t in_row = codi_row_size(t->type, ne0);
    const size_t out_row = codi_row_size(out, k ? (int64_t)k * G : ne0);
    if (!in_tr || !in_tr->to_float || !in_row)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED, "tensor '%s' has type %s, which codi cannot read",
                           t->name, codi_type_name(t->type));
    if ((uint64_t)in_row * rows > t->nbytes || (uint64_t)out_row * rows != nbytes)
        return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': size does not match its shape", t->name);
    if (ne0 > j->row_cap) {
        float *r = realloc(j->row, (size_t)ne0 * sizeof(float));
        float *sc = realloc(j->score, (size_t)ne0 * sizeof(float));
        int32_t *kp = realloc(j->keep, (size_t)ne0 * sizeof(int32_t));
        if (r)
            j->row = r;
        if (sc)
            j->score = sc;
        if (kp)
            j->keep = kp;
        if (!r || !sc || !kp)
            return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        j->row_cap = ne0;
    }
    const float *imp = NULL;
    if (j->p->imp && ((out >= CODI_TYPE_Q4G32 && out <= CODI_TYPE_Q4G128) || k))
        imp = j->p->imp(j->p->imp_user, t->name, ne0);
    for (uint64_t r = 0; r < rows; r++) {
        const uint8_t *src = (const uint8_t *)t->data + r * in_row;
        uint8_t *d = (uint8_t *)dst + r * out_row;
        if (t->type == out && !k) {
            memcpy(d, src, out_row);
            continue;
        }
        in_tr->to_float(src, j->row, ne0);
        if (k) {
            select_groups(j->row, imp, ne0, G, k, j->keep, j->score);
            codi_quantize_row_gqsa(j->row, d, ne0, G, j->keep, k, imp);
        } else if (out >= CODI_TYPE_Q4G32 && out <= CODI_TYPE_Q4G128)
            codi_quantize_row_q4g(j->row, d, ne0, G, imp);
        else
            out_tr->from_float(j->row, d, ne0);
    }
    return 0;
}

int codi_quantize_file(const char *in_path, const char *out_path, const codi_quant_params *p, double *bpw,
                       char *err, size_t errlen) {
    int rc = codi_quant_check_params(p, err, errlen);
    if (rc)
        return rc;
    codi_gguf *g = NULL;
    if ((rc = codi_gguf_open(in_path, &g, err, errlen)))
        return rc;
    codi_gguf_writer *w = codi_gguf_writer_new();
    job j = {.g = g, .p = p};
    j.src = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(*j.src));
    j.type = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(int));
    if (!w || !j.src || !j.type) {
        rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < g->n_kv; i++) {
        const codi_gguf_kv *kv = &g->kv[i];
        if (!strncmp(kv->key, "codi.quantization.", 18))
            continue; /* replaced below */
        if ((rc = codi_gguf_w_copy(w, kv))) {
            rc = codi_errorf(err, errlen, rc, "cannot copy metadata key '%s'", kv->key);
            goto done;
        }
    }
    /* llama.cpp's file types for the float bases; codi's own kinds are
     * told by codi.quantization.* (general.file_type 1024 + kind). */
    rc = codi_gguf_w_u32(w, "general.file_type",
                         p->kind == CODI_QUANT_F32 ? 0 : p->kind == CODI_QUANT_F16 ? 1 : 1024u + (uint32_t)p->kind);
    rc |= codi_gguf_w_str(w, "codi.quantization.type", codi_quant_kind_name(p->kind));
    rc |= codi_gguf_w_u32(w, "codi.quantization.group", (uint32_t)p->group);
    if (p->kind == CODI_QUANT_GQSA)
        rc |= codi_gguf_w_f32(w, "codi.quantization.sparsity", p->sparsity);
    if (rc) {
        rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        goto done;
    }
    uint64_t elems = 0, bytes = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        const codi_type_traits *tr = codi_type_get(t->type);
        if (!tr || !tr->to_float) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED, "tensor '%s' has type %s, which codi cannot read",
                             t->name, codi_type_name(t->type));
            goto done;
        }
        const int out = choose_type(t, p);
        if (codi_type_is_sparse(t->type)) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                             "tensor '%s' is already group-sparse (%s): quantize its dense base instead", t->name,
                             codi_type_name(t->type));
            goto done;
        }
        j.src[i] = t;
        j.type[i] = out;
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        if (codi_type_is_sparse(out)) /* stored elements: the kept groups */
            ne[0] = (int64_t)gqsa_keep(t->ne[0], codi_type_group_size(out), p->sparsity) *
                    codi_type_group_size(out);
        if ((rc = codi_gguf_w_tensor(w, t->name, out, t->n_dims, ne))) {
            rc = codi_errorf(err, errlen, rc, "tensor '%s': cannot store as %s", t->name, codi_type_name(out));
            goto done;
        }
        elems += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        bytes += codi_gguf_w_tensor_bytes(w, (size_t)i);
    }
    if (bpw)
        *bpw = elems ? 8.0 * (double)bytes / (double)elems : 0.0;
    rc = codi_gguf_writer_write(w, out_path, fill, &j, p->progress, p->progress_user, err, errlen);
done:
    free(j.row);
    free(j.score);
    free(j.keep);
    free(j.src);
    free(j.type);
    codi_gguf_writer_free(w);
    codi_gguf_close(g);
    return rc;
}
