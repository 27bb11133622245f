#include "quant/bind.h"

#include "common.h"

int codi_quant_bind_sparse(const codi_gguf_tensor *t, int64_t ne0, int64_t ne1, codi_weight *w, char *err,
                           size_t errlen) {
    const int G = codi_type_group_size(t->type);
    if (!codi_type_is_sparse(t->type) || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1 || t->ne[0] <= 0 ||
        t->ne[0] > ne0 || ne0 % G || t->ne[0] % G)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tensor '%s' (%s) has shape [%lld, %lld], expected [k*%d <= %lld, %lld]", t->name,
                           codi_type_name(t->type), (long long)t->ne[0], (long long)t->ne[1], G, (long long)ne0,
                           (long long)ne1);
    const size_t row = codi_row_size(t->type, t->ne[0]);
    if (!row || (uint64_t)row * (uint64_t)ne1 > t->nbytes)
        return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s': data smaller than its shape", t->name);
    if (codi_gqsa_check(t->data, t->type, t->ne[0], ne1, ne0))
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tensor '%s': a group index is out of range or out of order", t->name);
    w->data = t->data;
    w->type = t->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->row_bytes = row;
    w->n_dot = t->ne[0];
    return 0;
}
