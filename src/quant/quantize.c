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

static const char *const KIND_NAMES[CODI_QUANT_KIND_COUNT] = {"f32", "f16", "q4g", "q8g", "gqsa", "mix", "w4a8"};

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
    if (p->kind == CODI_QUANT_MIX && !(p->bits >= 4.0f && p->bits <= 8.0f))
        return codi_errorf(err, errlen, CODI_EINVAL, "--bits must be in [4, 8], got %g", (double)p->bits);
    if (p->kind == CODI_QUANT_MIX && !p->imp)
        return codi_errorf(err, errlen, CODI_EINVAL, "--type mix needs calibration statistics (--calib TEXTFILE)");
    return 0;
}

enum { PART_ALL = 0, PART_LO, PART_HI, PART_PERM, PART_WSCALE };

typedef struct job {
    const codi_gguf *g;
    const codi_quant_params *p;
    const codi_gguf_tensor **src; /* per output tensor */
    int *type;                    /* output type per tensor */
    int *part;                    /* PART_*: a mix matrix is three tensors */
    uint8_t **hi;                 /* per output tensor: the mix rows that
                                     get 8 bits (ne1 flags), or NULL */
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
    if (p->kind == CODI_QUANT_W4A8 && t->n_dims == 2 && !strncmp(t->name, "blk.", 4))
        return codi_type_codi_group(48, G);
    /* MIX: the same test picks the ranked matrices (is_mixable) */
    return codi_type_codi_group(4, G);
}

/* The matrices MIX ranks: 2-D block matrices stored as Q4G whose output
 * order fits the I16 permutation. */
static bool is_mixable(const codi_gguf_tensor *t, int out, const codi_quant_params *p) {
    return p->kind == CODI_QUANT_MIX && t->n_dims == 2 && !strncmp(t->name, "blk.", 4) &&
           out >= CODI_TYPE_Q4G32 && out <= CODI_TYPE_Q4G128 && t->ne[1] <= 32767;
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
    const int part = j->part[i];
    const uint8_t *hi = j->hi[i];
    if (part == PART_PERM) { /* 4-bit rows in order, then 8-bit rows */
        int16_t *perm = dst;
        int64_t s = 0;
        for (int pass = 0; pass < 2; pass++)
            for (int64_t r = 0; r < t->ne[1]; r++)
                if (hi[r] == pass)
                    perm[s++] = (int16_t)r;
        if ((uint64_t)s * 2 != nbytes)
            return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': bad output order", t->name);
        return 0;
    }
    if (part == PART_WSCALE) { /* W4A8 row scales: max|w| / 127 per row */
        const codi_type_traits *tr = codi_type_get(t->type);
        const size_t in_row = codi_row_size(t->type, t->ne[0]);
        if ((uint64_t)t->ne[1] * 4 != nbytes)
            return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': bad scale size", t->name);
        if (t->ne[0] > j->row_cap) {
            float *r = realloc(j->row, (size_t)t->ne[0] * sizeof(float));
            if (!r)
                return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
            j->row = r; /* row_cap stays: score/keep were not grown */
        }
        for (int64_t r = 0; r < t->ne[1]; r++) {
            tr->to_float((const uint8_t *)t->data + (size_t)r * in_row, j->row, t->ne[0]);
            float amax = 0.0f;
            for (int64_t k = 0; k < t->ne[0]; k++)
                amax = j->row[k] > amax ? j->row[k] : -j->row[k] > amax ? -j->row[k] : amax;
            ((float *)dst)[r] = amax / 127.0f;
        }
        return 0;
    }
    const codi_type_traits *in_tr = codi_type_get(t->type);
    const codi_type_traits *out_tr = codi_type_get(out);
    const int64_t ne0 = t->ne[0];
    const uint64_t rows = (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
    const int G = codi_type_group_size(out);
    const int k = codi_type_is_sparse(out) ? gqsa_keep(ne0, G, j->p->sparsity) : 0;
    const size_t in_row = codi_row_size(t->type, ne0);
    const size_t out_row = codi_row_size(out, k ? (int64_t)k * G : ne0);
    uint64_t rows_out = rows;
    if (part != PART_ALL) { /* the rows of one precision */
        rows_out = 0;
        for (uint64_t r = 0; r < rows; r++)
            rows_out += hi[r] == (part == PART_HI);
    }
    if (!in_tr || !in_tr->to_float || !in_row)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED, "tensor '%s' has type %s, which codi cannot read",
                           t->name, codi_type_name(t->type));
    if ((uint64_t)in_row * rows > t->nbytes || (uint64_t)out_row * rows_out != nbytes)
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
    uint8_t *d = dst;
    for (uint64_t r = 0; r < rows; r++) {
        if (part != PART_ALL && hi[r] != (part == PART_HI))
            continue;
        const uint8_t *src = (const uint8_t *)t->data + r * in_row;
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
        else if (codi_type_is_w4a8(out))
            codi_quantize_row_w4a8(j->row, d, ne0, G, NULL);
        else
            out_tr->from_float(j->row, d, ne0);
        d += out_row;
    }
    return 0;
}

/* MixLLM's global assignment. For every row (output feature) i of every
 * ranked matrix, the salience is the estimated loss increase from 8 to 4
 * bits, sum_j E[x_j^2] (dw4_ij^2 - dw8_ij^2), with dw the rounding error
 * of each format (a diagonal-Hessian, OBS-style estimate). Rows are taken
 * in decreasing salience per extra bit until the next one would lift the
 * average bits per weight of the ranked matrices (scales and the I16
 * output order included) past p->bits. */
typedef struct cand {
    float score;  /* salience per extra bit */
    int32_t t;    /* source tensor */
    int32_t row;
} cand;

static int cmp_cand(const void *a, const void *b) {
    const float x = ((const cand *)a)->score, y = ((const cand *)b)->score;
    return x > y ? -1 : x < y ? 1 : 0;
}

static int plan_mix(const codi_gguf *g, const codi_quant_params *p, const int *out_type, uint8_t **hi_of,
                    codi_mix_report *rep, char *err, size_t errlen) {
    int64_t n_cand = 0;
    double elems = 0.0, bits_lo = 0.0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        if (!is_mixable(t, out_type[i], p))
            continue;
        const int G = codi_type_group_size(out_type[i]);
        n_cand += t->ne[1];
        elems += (double)t->ne[0] * (double)t->ne[1];
        bits_lo += (double)t->ne[1] * (8.0 * (double)codi_row_size(out_type[i], t->ne[0]) + 16.0);
        (void)G;
    }
    cand *c = malloc((size_t)(n_cand ? n_cand : 1) * sizeof(cand));
    int64_t w_max = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++)
        w_max = g->tensors[i].ne[0] > w_max ? g->tensors[i].ne[0] : w_max;
    float *row = malloc((size_t)(w_max ? w_max : 1) * sizeof(float));
    float *back = malloc((size_t)(w_max ? w_max : 1) * sizeof(float));
    uint8_t *q = malloc((size_t)(w_max ? w_max : 1) * 2);
    if (!c || !row || !back || !q) {
        free(c), free(row), free(back), free(q);
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    }
    int64_t nc = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        if (!is_mixable(t, out_type[i], p))
            continue;
        const int G = codi_type_group_size(out_type[i]);
        const int64_t ne0 = t->ne[0];
        const codi_type_traits *tr = codi_type_get(t->type);
        const size_t in_row = codi_row_size(t->type, ne0);
        const float *imp = p->imp(p->imp_user, t->name, ne0);
        const double extra = (double)ne0 * 8.0 *
                             ((double)CODI_Q8G_BYTES(G) / G - (double)CODI_Q4G_BYTES(G) / G);
        for (int64_t r = 0; r < t->ne[1]; r++) {
            tr->to_float((const uint8_t *)t->data + (size_t)r * in_row, row, ne0);
            codi_quantize_row_q4g(row, q, ne0, G, imp);
            codi_dequantize_row_q4g(q, back, ne0, G);
            double e4 = 0.0, e8 = 0.0;
            for (int64_t k = 0; k < ne0; k++)
                e4 += (imp ? imp[k] : 1.0) * (double)(back[k] - row[k]) * (back[k] - row[k]);
            codi_quantize_row_q8g(row, q, ne0, G);
            codi_dequantize_row_q8g(q, back, ne0, G);
            for (int64_t k = 0; k < ne0; k++)
                e8 += (imp ? imp[k] : 1.0) * (double)(back[k] - row[k]) * (back[k] - row[k]);
            c[nc].score = (float)((e4 - e8) / extra);
            c[nc].t = (int32_t)i;
            c[nc].row = (int32_t)r;
            nc++;
        }
    }
    free(row), free(back), free(q);
    qsort(c, (size_t)nc, sizeof(cand), cmp_cand);
    const double budget = (double)p->bits * elems;
    double used = bits_lo;
    rep->rows = nc;
    rep->rows_hi = 0;
    rep->floor_bits = elems > 0 ? bits_lo / elems : 0.0;
    for (int64_t k = 0; k < nc; k++) {
        const codi_gguf_tensor *t = &g->tensors[c[k].t];
        const int G = codi_type_group_size(out_type[c[k].t]);
        const double extra = (double)t->ne[0] * 8.0 *
                             ((double)CODI_Q8G_BYTES(G) / G - (double)CODI_Q4G_BYTES(G) / G);
        if (used + extra > budget)
            break;
        if (!hi_of[c[k].t]) {
            hi_of[c[k].t] = calloc((size_t)t->ne[1], 1);
            if (!hi_of[c[k].t]) {
                free(c);
                return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
            }
        }
        hi_of[c[k].t][c[k].row] = 1;
        used += extra;
        rep->rows_hi++;
    }
    rep->bits = elems > 0 ? used / elems : 0.0;
    free(c);
    return 0;
}

int codi_quantize_file(const char *in_path, const char *out_path, const codi_quant_params *p, double *bpw,
                       char *err, size_t errlen) {
    return codi_quantize_file_ex(in_path, out_path, p, bpw, NULL, err, errlen);
}

int codi_quantize_file_ex(const char *in_path, const char *out_path, const codi_quant_params *p, double *bpw,
                          codi_mix_report *mix, char *err, size_t errlen) {
    int rc = codi_quant_check_params(p, err, errlen);
    if (rc)
        return rc;
    codi_gguf *g = NULL;
    if ((rc = codi_gguf_open(in_path, &g, err, errlen)))
        return rc;
    codi_gguf_writer *w = codi_gguf_writer_new();
    job j = {.g = g, .p = p};
    const size_t cap = 3 * (size_t)(g->n_tensors ? g->n_tensors : 1);
    int *src_type = calloc(cap, sizeof(int));
    uint8_t **hi_of = calloc(cap, sizeof(uint8_t *));
    j.src = calloc(cap, sizeof(*j.src));
    j.type = calloc(cap, sizeof(int));
    j.part = calloc(cap, sizeof(int));
    j.hi = calloc(cap, sizeof(uint8_t *));
    codi_mix_report rep = {0};
    if (!w || !j.src || !j.type || !j.part || !j.hi || !src_type || !hi_of) {
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
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        const codi_type_traits *tr = codi_type_get(t->type);
        if (!tr || !tr->to_float) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED, "tensor '%s' has type %s, which codi cannot read",
                             t->name, codi_type_name(t->type));
            goto done;
        }
        if (codi_type_is_sparse(t->type) || codi_type_is_w4a8(t->type) || t->type == CODI_TYPE_I16) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                             "tensor '%s' is %s, a codi layout spread over several tensors: quantize its dense "
                             "base instead",
                             t->name, codi_type_name(t->type));
            goto done;
        }
        src_type[i] = choose_type(t, p);
    }
    if (p->kind == CODI_QUANT_MIX && (rc = plan_mix(g, p, src_type, hi_of, &rep, err, errlen)))
        goto done;
    if (mix)
        *mix = rep;
    /* llama.cpp's file types for the float bases; codi's own kinds are
     * told by codi.quantization.* (general.file_type 1024 + kind). */
    rc = codi_gguf_w_u32(w, "general.file_type",
                         p->kind == CODI_QUANT_F32 ? 0 : p->kind == CODI_QUANT_F16 ? 1 : 1024u + (uint32_t)p->kind);
    rc |= codi_gguf_w_str(w, "codi.quantization.type", codi_quant_kind_name(p->kind));
    rc |= codi_gguf_w_u32(w, "codi.quantization.group", (uint32_t)p->group);
    if (p->kind == CODI_QUANT_GQSA)
        rc |= codi_gguf_w_f32(w, "codi.quantization.sparsity", p->sparsity);
    if (p->kind == CODI_QUANT_MIX)
        rc |= codi_gguf_w_f32(w, "codi.quantization.bits", (float)rep.bits);
    if (rc) {
        rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        goto done;
    }
    uint64_t elems = 0, bytes = 0;
    size_t n_out = 0;
#define ADD(NAME, TYPE, PART, NDIMS, NE)                                                              \
    do {                                                                                              \
        j.src[n_out] = t;                                                                             \
        j.type[n_out] = (TYPE);                                                                       \
        j.part[n_out] = (PART);                                                                       \
        j.hi[n_out] = hi;                                                                             \
        if ((rc = codi_gguf_w_tensor(w, (NAME), (TYPE), (NDIMS), (NE)))) {                            \
            rc = codi_errorf(err, errlen, rc, "tensor '%s': cannot store as %s", (NAME),              \
                             codi_type_name(TYPE));                                                   \
            goto done;                                                                                \
        }                                                                                             \
        bytes += codi_gguf_w_tensor_bytes(w, n_out);                                                  \
        n_out++;                                                                                      \
    } while (0)
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        const int out = src_type[i];
        uint8_t *hi = hi_of[i];
        int64_t ne[4] = {t->ne[0], t->ne[1], t->ne[2], t->ne[3]};
        elems += (uint64_t)(t->ne[0] * t->ne[1] * t->ne[2] * t->ne[3]);
        if (hi) {
            int64_t n_hi = 0;
            for (int64_t r = 0; r < t->ne[1]; r++)
                n_hi += hi[r];
            const int t8 = codi_type_codi_group(8, codi_type_group_size(out));
            if (n_hi == t->ne[1]) { /* every row 8-bit: a plain Q8G matrix */
                hi = NULL;
                ADD(t->name, t8, PART_ALL, t->n_dims, ne);
                continue;
            }
            char nm[300];
            int64_t ne_lo[2] = {t->ne[0], t->ne[1] - n_hi}, ne_hi[2] = {t->ne[0], n_hi}, ne_p[1] = {t->ne[1]};
            ADD(t->name, out, PART_LO, 2, ne_lo);
            snprintf(nm, sizeof(nm), "%s.q8", t->name);
            ADD(nm, t8, PART_HI, 2, ne_hi);
            snprintf(nm, sizeof(nm), "%s.perm", t->name);
            ADD(nm, CODI_TYPE_I16, PART_PERM, 1, ne_p);
            continue;
        }
        if (codi_type_is_sparse(out)) /* stored elements: the kept groups */
            ne[0] = (int64_t)gqsa_keep(t->ne[0], codi_type_group_size(out), p->sparsity) *
                    codi_type_group_size(out);
        ADD(t->name, out, PART_ALL, t->n_dims, ne);
        if (codi_type_is_w4a8(out)) {
            char nm[300];
            int64_t ne_s[1] = {t->ne[1]};
            snprintf(nm, sizeof(nm), "%s.wscale", t->name);
            const uint64_t keep_elems = elems;
            ADD(nm, CODI_TYPE_F32, PART_WSCALE, 1, ne_s);
            elems = keep_elems;
        }
    }
#undef ADD
    if (bpw)
        *bpw = elems ? 8.0 * (double)bytes / (double)elems : 0.0;
    rc = codi_gguf_writer_write(w, out_path, fill, &j, p->progress, p->progress_user, err, errlen);
done:
    if (hi_of)
        for (size_t i = 0; i < cap; i++)
            free(hi_of[i]);
    free(hi_of);
    free(src_type);
    free(j.row);
    free(j.score);
    free(j.keep);
    free(j.src);
    free(j.type);
    free(j.part);
    free(j.hi);
    codi_gguf_writer_free(w);
    codi_gguf_close(g);
    return rc;
}
