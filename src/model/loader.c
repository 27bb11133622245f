/* Model loader: GGUF metadata -> hyper-parameters, tensor table -> weight
 * views, each checked for presence, type and shape before use. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <sys/mman.h>
#include <unistd.h>

#include "chat_template.h"
#include "kernels/repack.h"
#include "common.h"
#include "model/model.h"
#include "tensor/quant_codi.h"
#include "tensor/types.h"
#include "quant/bind.h"
#include "quant/mix.h"

static int get_u32_arch(const codi_gguf *g, const char *arch, const char *key,
                        uint32_t *out, bool required, char *err, size_t errlen) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", arch, key);
    int rc = codi_gguf_get_u32(g, full, out);
    if (rc == CODI_ENOTFOUND && !required)
        return 0;
    if (rc == CODI_ENOTFOUND)
        return codi_errorf(err, errlen, CODI_EFORMAT, "missing required key '%s'", full);
    if (rc)
        return codi_errorf(err, errlen, CODI_EFORMAT, "key '%s' has the wrong type or an out-of-range value", full);
    return 0;
}

static int get_f32_arch(const codi_gguf *g, const char *arch, const char *key,
                        float *out, bool required, char *err, size_t errlen) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", arch, key);
    int rc = codi_gguf_get_f32(g, full, out);
    if (rc == CODI_ENOTFOUND && !required)
        return 0;
    if (rc == CODI_ENOTFOUND)
        return codi_errorf(err, errlen, CODI_EFORMAT, "missing required key '%s'", full);
    if (rc)
        return codi_errorf(err, errlen, CODI_EFORMAT, "key '%s' has the wrong type", full);
    return 0;
}

int codi_model_validate_hparams(const codi_hparams *hp, char *err, size_t errlen) {
#define BAD(...) return codi_errorf(err, errlen, CODI_EFORMAT, __VA_ARGS__)
    if (hp->n_embd <= 0 || hp->n_embd > 65536) BAD("bad embedding_length %d", hp->n_embd);
    if (hp->n_layer <= 0 || hp->n_layer > 512) BAD("bad block_count %d", hp->n_layer);
    if (hp->n_head <= 0 || hp->n_head > 1024) BAD("bad attention.head_count %d", hp->n_head);
    if (hp->n_head_kv <= 0 || hp->n_head_kv > hp->n_head)
        BAD("bad attention.head_count_kv %d (head_count %d)", hp->n_head_kv, hp->n_head);
    if (hp->n_head % hp->n_head_kv != 0)
        BAD("attention.head_count %d is not a multiple of head_count_kv %d", hp->n_head, hp->n_head_kv);
    if (hp->head_dim <= 0 || hp->head_dim > 1024 || hp->head_dim % 2 != 0)
        BAD("bad head dimension %d", hp->head_dim);
    if (hp->n_rot <= 0 || hp->n_rot > hp->head_dim || hp->n_rot % 2 != 0)
        BAD("bad rope.dimension_count %d (head dimension %d)", hp->n_rot, hp->head_dim);
    if (hp->n_ff <= 0 || hp->n_ff > 1 << 20) BAD("bad feed_forward_length %d", hp->n_ff);
    if (hp->n_vocab <= 0) BAD("bad vocabulary size %d", hp->n_vocab);
    if (hp->n_ctx_train <= 0) BAD("bad context_length %d", hp->n_ctx_train);
    if (!(hp->norm_eps > 0.0f && hp->norm_eps < 1.0f)) BAD("bad layer_norm_rms_epsilon %g", hp->norm_eps);
    if (!(hp->rope_base > 0.0f) || !isfinite(hp->rope_base)) BAD("bad rope.freq_base %g", hp->rope_base);
    if (!(hp->rope_freq_scale > 0.0f) || !isfinite(hp->rope_freq_scale)) BAD("bad rope scaling factor");
    if (hp->n_expert < 0 || hp->n_expert > 4096) BAD("bad expert_count %d", hp->n_expert);
    if (hp->n_expert > 0 && (hp->n_expert_used <= 0 || hp->n_expert_used > hp->n_expert))
        BAD("bad expert_used_count %d (expert_count %d)", hp->n_expert_used, hp->n_expert);
    if (hp->n_expert > 0 && (hp->n_ff_exp <= 0 || hp->n_ff_exp > 1 << 20))
        BAD("bad expert_feed_forward_length %d", hp->n_ff_exp);
    if (hp->n_ff_shexp < 0 || hp->n_ff_shexp > 1 << 20)
        BAD("bad expert_shared_feed_forward_length %d", hp->n_ff_shexp);
#undef BAD
    return 0;
}

static int bind_weight(const codi_gguf *g, const char *name, int64_t ne0,
                       int64_t ne1, codi_weight *w, bool required, char *err,
                       size_t errlen) {
    const codi_gguf_tensor *t = codi_gguf_find_tensor(g, name);
    if (!t) {
        if (!required) {
            memset(w, 0, sizeof(*w));
            return 0;
        }
        return codi_errorf(err, errlen, CODI_EFORMAT, "missing tensor '%s'", name);
    }
    if (codi_quant_is_mix(g, name))
        return codi_quant_bind_mix(g, name, ne0, ne1, w, err, errlen);
    if (codi_type_is_w4a8(t->type))
        return codi_quant_bind_w4a8(g, t, ne0, ne1, w, err, errlen);
    if (codi_type_is_sparse(t->type))
        return codi_quant_bind_sparse(t, ne0, ne1, w, err, errlen);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld]",
                           name, (long long)t->ne[0], (long long)t->ne[1],
                           (long long)t->ne[2], (long long)t->ne[3],
                           (long long)ne0, (long long)ne1);
    const codi_type_traits *tr = codi_type_get(t->type);
    if (!tr || !tr->vec_dot || !tr->to_float)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                           "tensor '%s' has type %s, which codi cannot multiply",
                           name, codi_type_name(t->type));
    memset(w, 0, sizeof(*w));
    w->data = t->data;
    w->type = t->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->row_bytes = codi_row_size(t->type, ne0);
    return 0;
}

/* A stacked expert tensor [ne0, ne1, n_expert]: w views expert 0. */
static int bind_experts(const codi_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                        int64_t n_expert, codi_weight *w, size_t *stride, uint64_t *off,
                        char *err, size_t errlen) {
    const codi_gguf_tensor *t = codi_gguf_find_tensor(g, name);
    if (!t)
        return codi_errorf(err, errlen, CODI_EFORMAT, "missing tensor '%s'", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != n_expert || t->ne[3] != 1)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tensor '%s' has shape [%lld, %lld, %lld, %lld], expected [%lld, %lld, %lld]",
                           name, (long long)t->ne[0], (long long)t->ne[1],
                           (long long)t->ne[2], (long long)t->ne[3], (long long)ne0,
                           (long long)ne1, (long long)n_expert);
    const codi_type_traits *tr = codi_type_get(t->type);
    if (!tr || !tr->vec_dot || !tr->to_float)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                           "tensor '%s' has type %s, which codi cannot multiply",
                           name, codi_type_name(t->type));
    w->data = t->data;
    w->type = t->type;
    w->ne0 = ne0;
    w->ne1 = ne1;
    w->row_bytes = codi_row_size(t->type, ne0);
    *stride = w->row_bytes * (size_t)ne1;
    *off = g->data_offset + t->offset;
    return 0;
}

static int bind_vec(const codi_gguf *g, const char *name, int64_t n,
                    const float **out, bool required, char *err, size_t errlen) {
    const codi_gguf_tensor *t = codi_gguf_find_tensor(g, name);
    *out = NULL;
    if (!t && !required)
        return 0;
    if (!t)
        return codi_errorf(err, errlen, CODI_EFORMAT, "missing tensor '%s'", name);
    if (t->type != CODI_TYPE_F32)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                           "tensor '%s' has type %s, expected F32", name,
                           codi_type_name(t->type));
    if (t->n_dims != 1 || t->ne[0] != n)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tensor '%s' has %lld elements, expected %lld", name,
                           (long long)t->ne[0], (long long)n);
    if (((uintptr_t)t->data & 3) != 0)
        return codi_errorf(err, errlen, CODI_EFORMAT, "tensor '%s' is misaligned", name);
    *out = t->data;
    return 0;
}

static int bind_norm(const codi_gguf *g, const char *name, int64_t n,
                     const float **out, char *err, size_t errlen) {
    return bind_vec(g, name, n, out, true, err, errlen);
}

/* The arch table: what each architecture adds to the llama layout. */
static const struct arch_def {
    const char *name;
    int id;
    bool rope_neox;
    int moe;          /* 0 dense; 1 experts when expert_count > 0; 2 always */
    bool moe_norm_w;  /* top-k weights renormalised (llama.cpp's norm_w) */
} ARCHS[] = {
    {"llama", CODI_ARCH_LLAMA, false, 1, true}, /* Mixtral when it has experts */
    {"qwen2", CODI_ARCH_QWEN2, true, 0, false},
    {"qwen3", CODI_ARCH_QWEN3, true, 0, false},
    {"gemma3", CODI_ARCH_GEMMA3, true, 0, false},
    {"qwen2moe", CODI_ARCH_QWEN2MOE, true, 2, false},
    {"qwen3moe", CODI_ARCH_QWEN3MOE, true, 2, true},
    {"olmoe", CODI_ARCH_OLMOE, true, 2, false},
};
#define N_ARCHS (sizeof(ARCHS) / sizeof(ARCHS[0]))

/* Gemma 3's sliding-window layers, as llama.cpp's load_swa_pattern: an
 * array of per-layer flags, or a period n (layer il is local unless
 * il % n == n - 1; n = 0: every layer), default 6. */
static int load_swa_layers(const codi_gguf *g, codi_model *m, char *err,
                           size_t errlen) {
    codi_hparams *hp = &m->hp;
    char key[128];
    snprintf(key, sizeof(key), "%s.attention.sliding_window_pattern", hp->arch);
    const codi_gguf_kv *kv = codi_gguf_find(g, key);
    if (kv && kv->type == CODI_GGUF_ARRAY) {
        if (kv->arr_type == CODI_GGUF_STRING || kv->arr_n != (uint64_t)hp->n_layer)
            return codi_errorf(err, errlen, CODI_EFORMAT,
                               "key '%s' must be an array of %d flags", key, hp->n_layer);
        for (int l = 0; l < hp->n_layer; l++)
            m->layers[l].swa = codi_gguf_arr_i64(kv, (uint64_t)l) != 0;
        return 0;
    }
    uint32_t period = 6;
    int rc = get_u32_arch(g, hp->arch, "attention.sliding_window_pattern", &period, false, err, errlen);
    if (rc)
        return rc;
    for (int l = 0; l < hp->n_layer; l++)
        m->layers[l].swa = period == 0 || (uint32_t)l % period < period - 1;
    return 0;
}

static int load_hparams(const codi_gguf *g, codi_hparams *hp, char *err,
                        size_t errlen) {
    char *arch = NULL;
    int rc = codi_gguf_get_str(g, "general.architecture", &arch);
    if (rc == CODI_ENOTFOUND)
        return codi_errorf(err, errlen, CODI_EFORMAT, "missing required key 'general.architecture'");
    if (rc)
        return codi_errorf(err, errlen, CODI_EFORMAT, "key 'general.architecture' is not a string");
    const struct arch_def *def = NULL;
    for (size_t i = 0; i < N_ARCHS; i++)
        if (strcmp(arch, ARCHS[i].name) == 0)
            def = &ARCHS[i];
    if (!def) {
        rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                         "unsupported model architecture '%.40s' (supported: llama, qwen2, qwen3, gemma3, qwen2moe, qwen3moe, olmoe)",
                         arch);
        free(arch);
        return rc;
    }
    snprintf(hp->arch, sizeof(hp->arch), "%s", arch);
    free(arch);
    hp->arch_id = def->id;

    uint32_t n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, n_ff = 0,
             n_ctx = 0, n_rot = 0, key_len = 0, val_len = 0, n_vocab = 0, n_swa = 0;
    float eps = 0.0f, base = 10000.0f, scale = 1.0f, base_swa = 10000.0f, softcap = 0.0f;
    if ((rc = get_u32_arch(g, hp->arch, "embedding_length", &n_embd, true, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "block_count", &n_layer, true, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "attention.head_count", &n_head, true, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "feed_forward_length", &n_ff, true, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "context_length", &n_ctx, true, err, errlen)) ||
        (rc = get_f32_arch(g, hp->arch, "attention.layer_norm_rms_epsilon", &eps, true, err, errlen)) ||
        (rc = get_f32_arch(g, hp->arch, "rope.freq_base", &base, false, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "attention.head_count_kv", &n_head_kv, false, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "attention.key_length", &key_len, false, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "attention.value_length", &val_len, false, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "rope.dimension_count", &n_rot, false, err, errlen)) ||
        (rc = get_u32_arch(g, hp->arch, "vocab_size", &n_vocab, false, err, errlen)))
        return rc;
    if (def->id == CODI_ARCH_GEMMA3 &&
        ((rc = get_u32_arch(g, hp->arch, "attention.sliding_window", &n_swa, false, err, errlen)) ||
         (rc = get_f32_arch(g, hp->arch, "rope.freq_base_swa", &base_swa, false, err, errlen)) ||
         (rc = get_f32_arch(g, hp->arch, "final_logit_softcapping", &softcap, false, err, errlen))))
        return rc;
    char key[128];
    snprintf(key, sizeof(key), "%s.rope.scaling.type", hp->arch);
    char *stype = NULL;
    if (codi_gguf_get_str(g, key, &stype) == 0) {
        bool ok = strcmp(stype, "none") == 0 || strcmp(stype, "linear") == 0;
        if (!ok) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                             "unsupported rope scaling type '%.40s'", stype);
            free(stype);
            return rc;
        }
        if (strcmp(stype, "linear") == 0) {
            float factor = 1.0f;
            if ((rc = get_f32_arch(g, hp->arch, "rope.scaling.factor", &factor, false, err, errlen))) {
                free(stype);
                return rc;
            }
            if (factor > 0.0f)
                scale = 1.0f / factor;
        }
        free(stype);
    }
    if (n_head_kv == 0)
        n_head_kv = n_head;
    hp->n_embd = (int32_t)CODI_MIN(n_embd, (uint32_t)INT32_MAX);
    hp->n_layer = (int32_t)CODI_MIN(n_layer, (uint32_t)INT32_MAX);
    hp->n_head = (int32_t)CODI_MIN(n_head, (uint32_t)INT32_MAX);
    hp->n_head_kv = (int32_t)CODI_MIN(n_head_kv, (uint32_t)INT32_MAX);
    hp->n_ff = (int32_t)CODI_MIN(n_ff, (uint32_t)INT32_MAX);
    hp->n_ctx_train = (int32_t)CODI_MIN(n_ctx, (uint32_t)INT32_MAX);
    if (n_head == 0)
        return codi_errorf(err, errlen, CODI_EFORMAT, "bad attention.head_count 0");
    hp->head_dim = key_len ? (int32_t)CODI_MIN(key_len, 4096u) : (int32_t)(n_embd / n_head);
    if (!key_len && n_embd % n_head != 0)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "embedding_length %u is not a multiple of head_count %u", n_embd, n_head);
    if (val_len && val_len != (uint32_t)hp->head_dim)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                           "attention.value_length %u differs from the key length %d",
                           val_len, hp->head_dim);
    hp->n_rot = n_rot ? (int32_t)CODI_MIN(n_rot, 4096u) : hp->head_dim;
    hp->rope_neox = def->rope_neox; /* llama: interleaved pairs; the rest NeoX */
    hp->rope_base = base;
    hp->rope_freq_scale = scale;
    hp->norm_eps = eps;
    hp->n_vocab = (int32_t)CODI_MIN(n_vocab, (uint32_t)INT32_MAX);
    hp->ffn_act = CODI_ACT_SILU;
    hp->embd_scale = 1.0f;
    hp->attn_scale = hp->head_dim > 0 ? 1.0f / sqrtf((float)hp->head_dim) : 1.0f;
    hp->n_swa = 0;
    hp->rope_base_swa = base;
    hp->rope_freq_scale_swa = scale;
    hp->final_logit_softcap = 0.0f;
    hp->router_src = -1;
    if (def->moe) {
        uint32_t n_exp = 0, n_used = 0, ff_exp = 0, ff_sh = 0;
        if ((rc = get_u32_arch(g, hp->arch, "expert_count", &n_exp, def->moe == 2, err, errlen)) ||
            (rc = get_u32_arch(g, hp->arch, "expert_used_count", &n_used, n_exp > 0, err, errlen)) ||
            (rc = get_u32_arch(g, hp->arch, "expert_feed_forward_length", &ff_exp, false, err, errlen)) ||
            (rc = get_u32_arch(g, hp->arch, "expert_shared_feed_forward_length", &ff_sh, false, err, errlen)))
            return rc;
        if (def->moe == 2 && n_exp == 0)
            return codi_errorf(err, errlen, CODI_EFORMAT, "bad %s.expert_count 0", hp->arch);
        hp->n_expert = (int32_t)CODI_MIN(n_exp, (uint32_t)INT32_MAX);
        hp->n_expert_used = (int32_t)CODI_MIN(n_used, (uint32_t)INT32_MAX);
        /* llama (Mixtral) and OLMoE: experts are feed_forward_length wide */
        hp->n_ff_exp = ff_exp && def->id != CODI_ARCH_LLAMA && def->id != CODI_ARCH_OLMOE
                           ? (int32_t)CODI_MIN(ff_exp, (uint32_t)INT32_MAX)
                           : hp->n_ff;
        hp->n_ff_shexp = (int32_t)CODI_MIN(ff_sh, (uint32_t)INT32_MAX);
        hp->moe_norm_w = def->moe_norm_w;
        uint32_t src = UINT32_MAX;
        if ((rc = get_u32_arch(g, hp->arch, "codi.router_source_layer", &src, false, err, errlen)))
            return rc;
        if (src != UINT32_MAX && src >= n_layer)
            return codi_errorf(err, errlen, CODI_EFORMAT, "bad %s.codi.router_source_layer %u (%u layers)",
                               hp->arch, src, n_layer);
        hp->router_src = src == UINT32_MAX ? -1 : (int32_t)src;
        hp->qk_norm_full = def->id == CODI_ARCH_OLMOE;
    }
    if (def->id == CODI_ARCH_GEMMA3) {
        hp->ffn_act = CODI_ACT_GELU;
        hp->embd_scale = sqrtf((float)hp->n_embd);
        /* gemma_pytorch: the 27B (62 layers) scales by n_embd / n_head */
        if (hp->n_layer == 62)
            hp->attn_scale = 1.0f / sqrtf((float)(hp->n_embd / hp->n_head));
        if (n_swa > (uint32_t)INT32_MAX)
            return codi_errorf(err, errlen, CODI_EFORMAT, "bad attention.sliding_window %u", n_swa);
        hp->n_swa = (int32_t)n_swa;
        hp->rope_base_swa = base_swa;
        hp->rope_freq_scale_swa = 1.0f; /* scaling applies to global layers */
        if (!(softcap >= 0.0f) || !isfinite(softcap))
            return codi_errorf(err, errlen, CODI_EFORMAT, "bad final_logit_softcapping %g", softcap);
        hp->final_logit_softcap = softcap;
        if (!(base_swa > 0.0f) || !isfinite(base_swa))
            return codi_errorf(err, errlen, CODI_EFORMAT, "bad rope.freq_base_swa %g", base_swa);
    }
    return 0;
}

static void x8_repack(codi_model *m);

static int load_weights(codi_model *m, char *err, size_t errlen) {
    const codi_gguf *g = m->gguf;
    const codi_hparams *hp = &m->hp;
    int rc;
    const int64_t d = hp->n_embd, dq = (int64_t)hp->n_head * hp->head_dim,
                  dkv = (int64_t)hp->n_head_kv * hp->head_dim;
    if ((rc = bind_weight(g, "token_embd.weight", d, hp->n_vocab, &m->tok_embd, true, err, errlen)))
        return rc;
    if ((rc = bind_norm(g, "output_norm.weight", d, &m->out_norm, err, errlen)))
        return rc;
    if ((rc = bind_weight(g, "output.weight", d, hp->n_vocab, &m->output, false, err, errlen)))
        return rc;
    if (!m->output.data)
        m->output = m->tok_embd; /* tied embeddings */
    if ((rc = bind_vec(g, "output.bias", hp->n_vocab, &m->output_b, false, err, errlen)))
        return rc;
    if (hp->n_expert > 0 && hp->n_ff_shexp == 0) {
        /* a shared expert without its width key: take the tensor's */
        const codi_gguf_tensor *t = codi_gguf_find_tensor(g, "blk.0.ffn_up_shexp.weight");
        if (t && t->ne[1] > 0 && t->ne[1] <= 1 << 20)
            m->hp.n_ff_shexp = (int32_t)t->ne[1];
    }
    m->layers = calloc((size_t)hp->n_layer, sizeof(codi_layer));
    if (!m->layers)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    char name[96];
    for (int l = 0; l < hp->n_layer; l++) {
        codi_layer *L = &m->layers[l];
#define W(field, suffix, a, b)                                                   \
    snprintf(name, sizeof(name), "blk.%d." suffix ".weight", l);                 \
    if ((rc = bind_weight(g, name, a, b, &L->field, true, err, errlen)))         \
        return rc;
#define N(field, suffix)                                                         \
    snprintf(name, sizeof(name), "blk.%d." suffix ".weight", l);                 \
    if ((rc = bind_norm(g, name, d, &L->field, err, errlen)))                    \
        return rc;
        N(attn_norm, "attn_norm")
        W(wq, "attn_q", d, dq)
        W(wk, "attn_k", d, dkv)
        W(wv, "attn_v", d, dkv)
        W(wo, "attn_output", dq, d)
        N(ffn_norm, "ffn_norm")
        if (hp->n_expert > 0) {
            static const char *const EXPS[3] = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"};
            const int64_t fe = hp->n_ff_exp;
            W(router, "ffn_gate_inp", d, hp->n_expert)
            for (int i = 0; i < 3; i++) {
                snprintf(name, sizeof(name), "blk.%d.%s.weight", l, EXPS[i]);
                if ((rc = bind_experts(g, name, i == 2 ? fe : d, i == 2 ? d : fe, hp->n_expert,
                                       &L->exp[i], &L->exp_stride[i], &L->exp_off[i], err, errlen)))
                    return rc;
                m->expert_bytes += (uint64_t)L->exp_stride[i] * (uint64_t)hp->n_expert;
            }
            /* bit-nested: the residual planes, all three or none */
            int n_lo = 0;
            for (int i = 0; i < 3; i++) {
                snprintf(name, sizeof(name), "blk.%d.%s_lo.weight", l, EXPS[i]);
                if (!codi_gguf_find_tensor(g, name))
                    continue;
                if ((rc = bind_experts(g, name, i == 2 ? fe : d, i == 2 ? d : fe, hp->n_expert,
                                       &L->exp_lo[i], &L->exp_lo_stride[i], &L->exp_lo_off[i], err,
                                       errlen)))
                    return rc;
                m->expert_bytes += (uint64_t)L->exp_lo_stride[i] * (uint64_t)hp->n_expert;
                n_lo++;
            }
            if (n_lo != 0 && n_lo != 3)
                return codi_errorf(err, errlen, CODI_EFORMAT,
                                   "layer %d has %d of the 3 bit-nested residual tensors (*_exps_lo)", l, n_lo);
            if (l == 0)
                m->hp.nested = n_lo == 3;
            else if (m->hp.nested != (n_lo == 3))
                return codi_errorf(err, errlen, CODI_EFORMAT,
                                   "bit-nested residual tensors in some layers only (layer %d)", l);
            if (hp->n_ff_shexp > 0) {
                const int64_t fs = hp->n_ff_shexp;
                W(sh_gate, "ffn_gate_shexp", d, fs)
                W(sh_up, "ffn_up_shexp", d, fs)
                W(sh_down, "ffn_down_shexp", fs, d)
                snprintf(name, sizeof(name), "blk.%d.ffn_gate_inp_shexp.weight", l);
                if ((rc = bind_weight(g, name, d, 1, &L->sh_inp, hp->arch_id == CODI_ARCH_QWEN2MOE,
                                      err, errlen)))
                    return rc;
            }
        } else {
            W(w_gate, "ffn_gate", d, hp->n_ff)
            W(w_up, "ffn_up", d, hp->n_ff)
            W(w_down, "ffn_down", hp->n_ff, d)
        }
#define V(field, suffix, n, req)                                                 \
    snprintf(name, sizeof(name), "blk.%d." suffix, l);                           \
    if ((rc = bind_vec(g, name, n, &L->field, req, err, errlen)))                \
        return rc;
        const int arch = hp->arch_id;
        if (arch == CODI_ARCH_QWEN2 || arch == CODI_ARCH_QWEN2MOE) {
            V(bq, "attn_q.bias", dq, false)
            V(bk, "attn_k.bias", dkv, false)
            V(bv, "attn_v.bias", dkv, false)
        }
        if (arch == CODI_ARCH_QWEN3 || arch == CODI_ARCH_GEMMA3 || arch == CODI_ARCH_QWEN3MOE) {
            V(attn_q_norm, "attn_q_norm.weight", hp->head_dim, true)
            V(attn_k_norm, "attn_k_norm.weight", hp->head_dim, true)
        }
        if (hp->qk_norm_full) { /* OLMoE: one norm over all heads */
            V(attn_q_norm, "attn_q_norm.weight", dq, true)
            V(attn_k_norm, "attn_k_norm.weight", dkv, true)
        }
        if (arch == CODI_ARCH_GEMMA3) {
            V(attn_post_norm, "post_attention_norm.weight", d, true)
            V(ffn_post_norm, "post_ffw_norm.weight", d, true)
        }
        L->swa = false;
        L->rope_base = hp->rope_base;
        L->rope_freq_scale = hp->rope_freq_scale;
#undef W
#undef N
#undef V
    }
    if (hp->n_swa > 0) {
        if ((rc = load_swa_layers(g, m, err, errlen)))
            return rc;
        for (int l = 0; l < hp->n_layer; l++)
            if (m->layers[l].swa) {
                m->layers[l].rope_base = hp->rope_base_swa;
                m->layers[l].rope_freq_scale = hp->rope_freq_scale_swa;
            }
    }
    for (uint64_t i = 0; i < g->n_tensors; i++)
        m->weight_bytes += g->tensors[i].nbytes;
    return 0;
}

int codi_model_load(const char *path, const codi_model_params *params,
                    codi_model **out, char *err, size_t errlen) {
    (void)params;
    if (!out)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_model_load: out is NULL");
    *out = NULL;
    if (!path)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_model_load: path is NULL");
    codi_model *m = calloc(1, sizeof(*m));
    if (!m)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    char sub[400];
    int rc = codi_gguf_open(path, &m->gguf, err, errlen);
    if (rc)
        goto fail;
    if (!(m->path = strdup(path))) {
        rc = codi_errorf(sub, sizeof(sub), CODI_ENOMEM, "out of memory");
        goto fail_sub;
    }
    if ((rc = load_hparams(m->gguf, &m->hp, sub, sizeof(sub))))
        goto fail_sub;
    if ((rc = codi_vocab_load(m->gguf, &m->vocab, sub, sizeof(sub))))
        goto fail_sub;
    if (m->hp.n_vocab == 0)
        m->hp.n_vocab = codi_vocab_n_tokens(m->vocab);
    if (m->hp.n_vocab != codi_vocab_n_tokens(m->vocab)) {
        rc = codi_errorf(sub, sizeof(sub), CODI_EFORMAT,
                         "vocab_size %d does not match the %d tokens of the tokenizer",
                         m->hp.n_vocab, codi_vocab_n_tokens(m->vocab));
        goto fail_sub;
    }
    if ((rc = codi_model_validate_hparams(&m->hp, sub, sizeof(sub))))
        goto fail_sub;
    if ((rc = load_weights(m, sub, sizeof(sub))))
        goto fail_sub;
    x8_repack(m);
    {
        char *tmpl = NULL;
        if (codi_gguf_get_str(m->gguf, "tokenizer.chat_template", &tmpl) == 0)
            m->chat_template = tmpl;
        int32_t bos = codi_vocab_bos(m->vocab);
        char buf[256] = "";
        int32_t n = bos >= 0 ? codi_vocab_token_to_piece(m->vocab, bos, buf, (int32_t)sizeof(buf) - 1, true) : 0;
        buf[n > 0 ? n : 0] = '\0';
        m->bos_text = strdup(buf);
        const int32_t eos = codi_vocab_eos(m->vocab);
        n = eos >= 0 ? codi_vocab_token_to_piece(m->vocab, eos, buf, (int32_t)sizeof(buf) - 1, true) : 0;
        buf[n > 0 ? n : 0] = '\0';
        m->eos_text = strdup(buf);
        if (!m->bos_text || !m->eos_text) {
            rc = codi_errorf(sub, sizeof(sub), CODI_ENOMEM, "out of memory");
            goto fail_sub;
        }
    }
    *out = m;
    return 0;
fail_sub:
    codi_errorf(err, errlen, rc, "%s: %s", path, sub);
    /* Strings quoted from the file may hold any byte: one printable line. */
    for (char *p = errlen ? err : NULL; p && *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
fail:
    codi_model_free(m);
    return rc;
}

/* ---- x8 repacking (kernels/repack.h) ---- */

/* Bytes the x8 copy of w needs (0: w stays as it is). */
static size_t x8_size(const codi_weight *w) {
    if (!w->data || w->perm || (w->row_scale && !codi_type_is_w4a8(w->type)) || w->n_dot ||
        w->ne1 < CODI_X8_ROWS ||
        !codi_kernel_gemm_x8(w->type) || w->row_bytes != codi_row_size(w->type, w->ne0))
        return 0;
    return (size_t)(w->ne1 / CODI_X8_ROWS) * CODI_X8_ROWS * w->row_bytes;
}

/* Visit every dense matrix the forward pass multiplies by (not the routed
 * experts: the expert store reads and caches those in the file's layout). */
static size_t x8_visit(codi_model *m, uint8_t *mem, bool drop) {
    size_t total = 0;
    codi_weight *ws[12];
    for (int l = -1; l < m->hp.n_layer; l++) {
        int n = 0;
        if (l < 0) {
            ws[n++] = &m->output;
        } else {
            codi_layer *L = &m->layers[l];
            codi_weight *lw[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->w_gate, &L->w_up,
                                 &L->w_down, &L->sh_gate, &L->sh_up, &L->sh_down};
            for (size_t i = 0; i < sizeof lw / sizeof lw[0]; i++)
                ws[n++] = lw[i];
        }
        for (int i = 0; i < n; i++) {
            codi_weight *w = ws[i];
            const size_t bytes = x8_size(w);
            if (!bytes)
                continue;
            if (mem) {
                uint8_t *dst = mem + total;
                const size_t gb = CODI_X8_ROWS * w->row_bytes;
                for (int64_t g = 0; g < w->ne1 / CODI_X8_ROWS; g++)
                    codi_x8_pack_group(w->type, w->ne0, (const uint8_t *)w->data + (size_t)g * gb,
                                       w->row_bytes, dst + (size_t)g * gb);
                w->x8 = dst;
                w->x8_rows = w->ne1 / CODI_X8_ROWS * CODI_X8_ROWS;
                w->x8_int8 = codi_kernel_gemm_x8_amx(w->type) != NULL; /* W4A8 on an AMX CPU */
                for (int64_t r = 0; w->x8_int8 && r < w->x8_rows; r++)
                    w->x8_int8 = codi_w4a8_row_fits_int8((const uint8_t *)w->data + (size_t)r * w->row_bytes,
                                                         w->ne0, (int)codi_type_get(w->type)->blck_size);
                if (drop) {
                    /* The file's copy is no longer read on the hot path:
                     * give its pages back (a later read maps them again
                     * from the file). */
                    const uintptr_t ps = (uintptr_t)sysconf(_SC_PAGESIZE);
                    const uintptr_t a = ((uintptr_t)w->data + ps - 1) & ~(ps - 1);
                    const uintptr_t b = ((uintptr_t)w->data + bytes) & ~(ps - 1);
                    if (b > a)
                        madvise((void *)a, b - a, MADV_DONTNEED);
                }
            }
            total += (bytes + 63) & ~(size_t)63;
        }
    }
    return total;
}

/* Memory the x8 copy may take: MemAvailable less 512 MiB (half the
 * physical memory when /proc/meminfo cannot be read). A model larger than
 * that keeps the file's layout and runs from the page cache as before
 * rather than being copied into memory the machine does not have. */
static size_t x8_room(void) {
    unsigned long long kb = 0;
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[128];
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1)
                break;
        fclose(f);
    }
    const unsigned long long reserve = 512ull << 20;
    unsigned long long avail = kb << 10;
    if (!kb) {
        const long pages = sysconf(_SC_PHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
        avail = pages > 0 && ps > 0 ? (unsigned long long)pages * (unsigned long long)ps / 2 : 0;
    }
    return avail > reserve ? (size_t)(avail - reserve) : 0;
}

/* Repack the dense matrices that have an x8 kernel on this CPU. Out of
 * memory is not an error: the weights then stay in the file's layout. */
static void x8_repack(codi_model *m) {
    const size_t bytes = x8_visit(m, NULL, false);
    if (!bytes || bytes > x8_room())
        return;
    /* 2 MiB aligned and marked for transparent huge pages before the
     * first write: a single thread then streams the weights at ~13 GB/s
     * instead of ~8.5 with 4 KiB pages (bench/x8_bench.c, X8_HUGE=1) */
    const size_t huge = (size_t)1 << 21, alloc = (bytes + huge - 1) & ~(huge - 1);
    void *mem = NULL;
    if (posix_memalign(&mem, huge, alloc) != 0)
        return;
    madvise(mem, alloc, MADV_HUGEPAGE); /* a hint: failure changes nothing */
    m->x8_mem = mem;
    m->x8_bytes = bytes;
    x8_visit(m, mem, m->gguf->owns_map);
}

void codi_model_free(codi_model *m) {
    if (!m)
        return;
    codi_vocab_free(m->vocab);
    codi_gguf_close(m->gguf);
    free(m->layers);
    free(m->chat_template);
    free(m->bos_text);
    free(m->eos_text);
    free(m->path);
    free(m->x8_mem);
    free(m);
}

int32_t codi_model_n_vocab(const codi_model *m) { return m->hp.n_vocab; }
int32_t codi_model_n_ctx_train(const codi_model *m) { return m->hp.n_ctx_train; }
int32_t codi_model_n_embd(const codi_model *m) { return m->hp.n_embd; }
int32_t codi_model_n_layer(const codi_model *m) { return m->hp.n_layer; }
int32_t codi_model_n_head_kv(const codi_model *m) { return m->hp.n_head_kv; }
const char *codi_model_arch(const codi_model *m) { return m->hp.arch; }
uint64_t codi_model_size_bytes(const codi_model *m) { return m->weight_bytes; }

const char *codi_model_chat_template(const codi_model *m) { return m->chat_template; }

/* ---- vocabulary and chat wrappers of the public API ---- */

int32_t codi_token_bos(const codi_model *m) { return codi_vocab_bos(m->vocab); }
int32_t codi_token_eos(const codi_model *m) { return codi_vocab_eos(m->vocab); }
bool codi_token_is_eog(const codi_model *m, int32_t t) { return codi_vocab_is_eog(m->vocab, t); }
bool codi_model_add_bos(const codi_model *m) { return codi_vocab_add_bos(m->vocab); }

int32_t codi_tokenize(const codi_model *m, const char *text, size_t len,
                      int32_t *tokens, int32_t n_max, bool add_special,
                      bool parse_special) {
    return codi_vocab_tokenize(m->vocab, text, len, tokens, n_max, add_special, parse_special);
}

int32_t codi_token_to_piece(const codi_model *m, int32_t token, char *buf,
                            int32_t len, bool special) {
    return codi_vocab_token_to_piece(m->vocab, token, buf, len, special);
}

int codi_chat_apply(const codi_model *m, const char *tmpl,
                    const char *const *roles, const char *const *contents,
                    size_t n, bool add_assistant, char **out, char *err,
                    size_t errlen) {
    const char *t = tmpl ? tmpl : m->chat_template;
    if (!t)
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                           "the model has no chat template (tokenizer.chat_template); pass one explicitly");
    return codi_chat_render_tokens(t, m->bos_text, m->eos_text, roles, contents, n, add_assistant,
                                   out, err, errlen);
}
