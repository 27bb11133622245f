/* codi nest: bit-nested experts (D2MoE, T3). Every stacked expert tensor
 * W of an MoE GGUF becomes two Q4_0 tensors of the same shape:
 *
 *   blk.N.ffn_X_exps.weight     H = Q4_0(W)          the 4-bit version
 *   blk.N.ffn_X_exps_lo.weight  R = Q4_0(W - deq(H)) the residual
 *
 * H + R carries W at about 8 bits (R's scale is ~1/16 of H's: the residual
 * of a 4-bit rounding is at most half a step), and H alone is the model at
 * 4 bits: a cold expert is read and run from H only (half the I/O), a hot
 * one from both, from one file. The high part comes first in the file.
 * Everything else (metadata, other tensors) is copied unchanged. Written to
 * OUT.tmp, renamed to OUT when complete; nothing is left behind on error. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "codi.h"
#include "common.h"
#include "gguf.h"
#include "gguf_write.h"
#include "tensor/types.h"

enum { K_COPY = 0, K_HI, K_LO };

typedef struct {
    const codi_gguf_tensor *src;
    int kind;
} nest_out;

typedef struct {
    const codi_gguf *g;
    nest_out *out;
    size_t n_out;
    float *w, *r;     /* one row: the weights, the residual */
    uint8_t *q;       /* one row of Q4_0 */
    int64_t row_cap;
    codi_progress_fn progress;
    void *user;
} nest_job;

static bool is_expert_tensor(const char *name) {
    static const char *const SUF[3] = {".ffn_gate_exps.weight", ".ffn_up_exps.weight",
                                       ".ffn_down_exps.weight"};
    const size_t n = strlen(name);
    if (strncmp(name, "blk.", 4) != 0)
        return false;
    for (int i = 0; i < 3; i++) {
        const size_t k = strlen(SUF[i]);
        if (n > k && strcmp(name + n - k, SUF[i]) == 0)
            return true;
    }
    return false;
}

static int fill(void *user, size_t i, void *dst, size_t nbytes, char *err, size_t errlen) {
    nest_job *j = user;
    const nest_out *o = &j->out[i];
    const codi_gguf_tensor *t = o->src;
    if (o->kind == K_COPY) {
        if (nbytes != t->nbytes)
            return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': size mismatch", t->name);
        memcpy(dst, t->data, nbytes);
        return 0;
    }
    const codi_type_traits *src = codi_type_get(t->type), *q4 = codi_type_get(CODI_TYPE_Q4_0);
    const int64_t ne0 = t->ne[0], rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t in_row = codi_row_size(t->type, ne0), out_row = codi_row_size(CODI_TYPE_Q4_0, ne0);
    if (nbytes != out_row * (size_t)rows)
        return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': size mismatch", t->name);
    uint8_t *d = dst;
    for (int64_t r = 0; r < rows; r++) {
        src->to_float((const uint8_t *)t->data + (size_t)r * in_row, j->w, ne0);
        uint8_t *qo = d + (size_t)r * out_row;
        q4->from_float(j->w, o->kind == K_HI ? qo : j->q, ne0);
        if (o->kind == K_LO) {
            q4->to_float(j->q, j->r, ne0);
            for (int64_t k = 0; k < ne0; k++)
                j->r[k] = j->w[k] - j->r[k];
            q4->from_float(j->r, qo, ne0);
        }
    }
    return 0;
}

static void on_progress(void *user, uint64_t done, uint64_t total) {
    const nest_job *j = user;
    if (j->progress)
        j->progress(j->user, done, total);
}

int codi_nest_experts(const char *in_path, const char *out_path, codi_progress_fn progress,
                      void *progress_user, char *err, size_t errlen) {
    if (!in_path || !out_path)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_nest_experts: NULL path");
    codi_gguf *g = NULL;
    int rc = codi_gguf_open(in_path, &g, err, errlen);
    if (rc)
        return rc;
    nest_job j = {.g = g, .progress = progress, .user = progress_user};
    codi_gguf_writer *w = codi_gguf_writer_new();
    char *tmp = NULL;
    j.out = calloc((size_t)g->n_tensors * 2 + 1, sizeof(nest_out));
    if (!w || !j.out) {
        rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        goto done;
    }
    for (uint64_t i = 0; i < g->n_kv && rc == 0; i++)
        rc = codi_gguf_w_copy(w, &g->kv[i]);
    if (rc) {
        rc = codi_errorf(err, errlen, rc, "%s: cannot copy the metadata", in_path);
        goto done;
    }
    size_t n_exp = 0;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        const size_t n = strlen(t->name);
        if (n > 10 && strcmp(t->name + n - 10, "_lo.weight") == 0 && strstr(t->name, "_exps_lo")) {
            rc = codi_errorf(err, errlen, CODI_EINVAL, "%s: the experts are bit-nested already ('%s')",
                             in_path, t->name);
            goto done;
        }
        if (!is_expert_tensor(t->name)) {
            j.out[j.n_out++] = (nest_out){t, K_COPY};
            rc = codi_gguf_w_tensor(w, t->name, t->type, t->n_dims, t->ne);
        } else {
            const codi_type_traits *tr = codi_type_get(t->type);
            if (!tr || !tr->to_float || t->ne[0] % 32 != 0) {
                rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                                 "tensor '%s' (%s, rows of %lld) cannot be requantized to Q4_0 blocks",
                                 t->name, codi_type_name(t->type), (long long)t->ne[0]);
                goto done;
            }
            char lo[160];
            const size_t base = strlen(t->name) - strlen(".weight");
            snprintf(lo, sizeof(lo), "%.*s_lo.weight", (int)base, t->name);
            j.out[j.n_out++] = (nest_out){t, K_HI};
            j.out[j.n_out++] = (nest_out){t, K_LO};
            rc = codi_gguf_w_tensor(w, t->name, CODI_TYPE_Q4_0, t->n_dims, t->ne);
            if (rc == 0)
                rc = codi_gguf_w_tensor(w, lo, CODI_TYPE_Q4_0, t->n_dims, t->ne);
            j.row_cap = CODI_MAX(j.row_cap, t->ne[0]);
            n_exp++;
        }
        if (rc) {
            rc = codi_errorf(err, errlen, rc, "tensor '%s': cannot add it to the output", t->name);
            goto done;
        }
    }
    if (n_exp == 0) {
        rc = codi_errorf(err, errlen, CODI_EINVAL, "%s has no stacked expert tensors (ffn_*_exps): not an MoE model",
                         in_path);
        goto done;
    }
    j.w = malloc((size_t)j.row_cap * sizeof(float));
    j.r = malloc((size_t)j.row_cap * sizeof(float));
    j.q = malloc(codi_row_size(CODI_TYPE_Q4_0, j.row_cap));
    tmp = malloc(strlen(out_path) + 5);
    if (!j.w || !j.r || !j.q || !tmp) {
        rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        goto done;
    }
    sprintf(tmp, "%s.tmp", out_path);
    rc = codi_gguf_writer_write(w, tmp, fill, &j, on_progress, &j, err, errlen);
    if (rc == 0 && rename(tmp, out_path) != 0) {
        rc = codi_errorf(err, errlen, CODI_EIO, "cannot rename %s to %s", tmp, out_path);
        unlink(tmp);
    }
done:
    free(tmp);
    free(j.w);
    free(j.r);
    free(j.q);
    free(j.out);
    codi_gguf_writer_free(w);
    codi_gguf_close(g);
    return rc;
}
