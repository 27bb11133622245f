/* Calibration statistics through the matmul observer (model.h). */
#include "quant/calib.h"

#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "gguf.h"
#include "model/model.h"

typedef struct entry {
    const void *data; /* the weight's data in the mapping: its identity */
    const char *name; /* the GGUF tensor name (owned by the model) */
    int64_t n;
    double *sum;      /* sum over tokens of x_j^2 */
    int64_t count;    /* tokens */
    float *mean;      /* E[x_j^2], filled at the end */
} entry;

struct codi_calib {
    entry *e;
    int n_e;
    int tokens;
    int last; /* entry of the previous call: products come in order */
};

static void observe(void *user, const codi_weight *w, const float *x, int B, int64_t n_in) {
    codi_calib *c = user;
    entry *e = NULL;
    for (int k = 0; k < c->n_e && !e; k++) {
        entry *cand = &c->e[(c->last + k) % c->n_e];
        if (cand->data == w->data)
            e = cand;
    }
    if (!e || e->n != n_in)
        return;
    c->last = (int)(e - c->e);
    for (int b = 0; b < B; b++) {
        const float *r = x + (size_t)b * n_in;
        for (int64_t j = 0; j < n_in; j++)
            e->sum[j] += (double)r[j] * r[j];
    }
    e->count += B;
}

void codi_calib_free(codi_calib *c) {
    if (!c)
        return;
    for (int k = 0; k < c->n_e; k++) {
        free(c->e[k].sum);
        free(c->e[k].mean);
        free((char *)c->e[k].name);
    }
    free(c->e);
    free(c);
}

int codi_calib_tokens(const codi_calib *c) { return c ? c->tokens : 0; }

const float *codi_calib_importance(void *calib, const char *name, int64_t ne0) {
    codi_calib *c = calib;
    for (int k = 0; k < c->n_e; k++)
        if (!strcmp(c->e[k].name, name))
            return c->e[k].n == ne0 && c->e[k].mean ? c->e[k].mean : NULL;
    return NULL;
}

int codi_calib_run(const char *model_path, const char *text, size_t len, int n_threads, int max_tokens,
                   codi_calib **out, char *err, size_t errlen) {
    *out = NULL;
    if (max_tokens <= 0)
        max_tokens = 4096;
    codi_model *m = NULL;
    codi_context *ctx = NULL;
    int32_t *tok = NULL;
    codi_calib *c = calloc(1, sizeof(*c));
    int rc = 0;
    if (!c)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    codi_model_params mp = {0};
    if ((rc = codi_model_load(model_path, &mp, &m, err, errlen)))
        goto fail;
    const codi_gguf *g = m->gguf;
    c->e = calloc(g->n_tensors ? g->n_tensors : 1, sizeof(entry));
    if (!c->e)
        goto oom;
    for (uint64_t i = 0; i < g->n_tensors; i++) {
        const codi_gguf_tensor *t = &g->tensors[i];
        if (t->n_dims < 2 || t->ne[1] <= 1)
            continue;
        entry *e = &c->e[c->n_e++];
        e->data = t->data;
        e->n = t->ne[0];
        e->name = strdup(t->name);
        e->sum = calloc((size_t)e->n, sizeof(double));
        if (!e->name || !e->sum)
            goto oom;
    }
    codi_context_params cp = codi_context_default_params();
    cp.n_ctx = 512;
    cp.n_batch = 512;
    cp.n_threads = n_threads;
    if ((rc = codi_context_create(m, &cp, &ctx, err, errlen)))
        goto fail;
    const int32_t cap = (int32_t)(len + 16 < (size_t)1 << 28 ? len + 16 : (size_t)1 << 28);
    tok = malloc((size_t)cap * sizeof(int32_t));
    if (!tok)
        goto oom;
    int32_t n = codi_tokenize(m, text, len, tok, cap, true, false);
    if (n <= 1) {
        rc = codi_errorf(err, errlen, CODI_EINVAL, "calibration text gives %d tokens, need at least 2", n);
        goto fail;
    }
    if (n > max_tokens)
        n = max_tokens;
    codi_context_set_observer(ctx, observe, c);
    for (int32_t off = 0; off < n; off += 512) {
        const int32_t w = n - off < 512 ? n - off : 512;
        codi_kv_truncate(ctx, 0);
        if ((rc = codi_decode(ctx, tok + off, w, 0, false, err, errlen)))
            goto fail;
        c->tokens += w;
    }
    codi_context_set_observer(ctx, NULL, NULL);
    for (int k = 0; k < c->n_e; k++) {
        entry *e = &c->e[k];
        if (!e->count)
            continue;
        e->mean = malloc((size_t)e->n * sizeof(float));
        if (!e->mean)
            goto oom;
        for (int64_t j = 0; j < e->n; j++)
            e->mean[j] = (float)(e->sum[j] / (double)e->count);
    }
    /* The names outlive the model: the entries' data pointers do not. */
    for (int k = 0; k < c->n_e; k++)
        c->e[k].data = NULL;
    free(tok);
    codi_context_free(ctx);
    codi_model_free(m);
    *out = c;
    return 0;
oom:
    rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
fail:
    free(tok);
    codi_context_free(ctx);
    codi_model_free(m);
    codi_calib_free(c);
    return rc;
}
