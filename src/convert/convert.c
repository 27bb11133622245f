/* codi_convert_hf: a Hugging Face model folder (config.json, safetensors
 * weights, tokenizer.json, tokenizer_config.json) -> one GGUF file that
 * codi and llama.cpp load, for the architectures codi runs (llama, qwen2,
 * qwen3, gemma3). Names, layouts and metadata follow llama.cpp's
 * convert_hf_to_gguf.py: Llama's Q/K rows are permuted to the interleaved
 * rope layout, Gemma's RMS-norm weights get their +1, 1-D tensors stay F32,
 * matrices become F32, F16 or Q8_0 (F16 when a row is not whole Q8_0
 * blocks). The tokenizer must be byte-level BPE (GPT-2 style). */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codi.h"
#include "common.h"
#include "convert/safetensors.h"
#include "gguf_write.h"
#include "tensor/types.h"

enum xform { X_NONE = 0, X_PERMUTE_Q, X_PERMUTE_K, X_NORM_SHIFT };

typedef struct conv_tensor {
    const st_tensor *src;
    int xform;
    int type;
    int64_t ne0, ne1; /* ne1 = 1 for vectors */
} conv_tensor;

typedef struct conv {
    char *err;
    size_t errlen;
    const char *dir;
    cJSON *config, *tok, *tok_cfg;
    st_set *st;
    codi_gguf_writer *w;
    conv_tensor *t;
    size_t n_t;
    /* hyper-parameters */
    char arch[16];
    int64_t n_embd, n_layer, n_head, n_head_kv, n_ff, n_vocab, head_dim, n_ctx;
    bool tied;
    int out_type;
    float *fbuf;
    size_t fbuf_n;
} conv;

/* ------------------------------------------------------------ JSON files */

static char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    size_t cap = 1 << 16, n = 0;
    char *b = malloc(cap);
    while (b) {
        n += fread(b + n, 1, cap - n, f);
        if (n < cap || cap > (512u << 20))
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

static int load_json(conv *c, const char *name, bool required, cJSON **out) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", c->dir, name);
    size_t len = 0;
    char *text = slurp(path, &len);
    *out = NULL;
    if (!text) {
        if (!required)
            return 0;
        return codi_errorf(c->err, c->errlen, CODI_ENOTFOUND, "'%s' has no %s", c->dir, name);
    }
    *out = cJSON_ParseWithLength(text, len);
    free(text);
    if (!*out || !cJSON_IsObject(*out)) {
        cJSON_Delete(*out);
        *out = NULL;
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "%s is not a JSON object", name);
    }
    return 0;
}

/* config.json integer: required -> error naming the key when absent. */
static int cfg_int(conv *c, const char *key, bool required, int64_t def, int64_t lo, int64_t hi, int64_t *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->config, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: missing key '%s'", key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble != floor(v->valuedouble) || v->valuedouble < (double)lo ||
        v->valuedouble > (double)hi)
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: '%s' must be an integer in [%lld, %lld]",
                           key, (long long)lo, (long long)hi);
    *out = (int64_t)v->valuedouble;
    return 0;
}

static int cfg_float(conv *c, const char *key, bool required, double def, double *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->config, key);
    if (!v || cJSON_IsNull(v)) {
        if (required)
            return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: missing key '%s'", key);
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: '%s' must be a number", key);
    *out = v->valuedouble;
    return 0;
}

/* ------------------------------------------------------------ hparams */

static int read_config(conv *c) {
    int rc;
    const cJSON *archs = cJSON_GetObjectItemCaseSensitive(c->config, "architectures");
    const cJSON *a0 = cJSON_IsArray(archs) ? cJSON_GetArrayItem(archs, 0) : NULL;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(c->config, "model_type");
    const char *an = cJSON_IsString(a0) ? a0->valuestring : NULL;
    const char *mn = cJSON_IsString(mt) ? mt->valuestring : NULL;
    if (!an && !mn)
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: missing key 'architectures' (and 'model_type')");
    static const struct {
        const char *hf, *model_type, *arch;
    } map[] = {
        {"LlamaForCausalLM", "llama", "llama"},
        {"Qwen2ForCausalLM", "qwen2", "qwen2"},
        {"Qwen3ForCausalLM", "qwen3", "qwen3"},
        {"Gemma3ForCausalLM", "gemma3_text", "gemma3"},
    };
    c->arch[0] = '\0';
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++)
        if ((an && strcmp(an, map[i].hf) == 0) || (!an && strcmp(mn, map[i].model_type) == 0))
            snprintf(c->arch, sizeof(c->arch), "%s", map[i].arch);
    if (!c->arch[0])
        return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                           "config.json: unsupported architecture '%.60s' (codi converts LlamaForCausalLM, "
                           "Qwen2ForCausalLM, Qwen3ForCausalLM, Gemma3ForCausalLM)", an ? an : mn);
    if ((rc = cfg_int(c, "hidden_size", true, 0, 1, 65536, &c->n_embd)) ||
        (rc = cfg_int(c, "num_hidden_layers", true, 0, 1, 512, &c->n_layer)) ||
        (rc = cfg_int(c, "num_attention_heads", true, 0, 1, 1024, &c->n_head)) ||
        (rc = cfg_int(c, "num_key_value_heads", false, c->n_head, 1, 1024, &c->n_head_kv)) ||
        (rc = cfg_int(c, "intermediate_size", true, 0, 1, 1 << 20, &c->n_ff)) ||
        (rc = cfg_int(c, "vocab_size", true, 0, 1, 1 << 24, &c->n_vocab)) ||
        (rc = cfg_int(c, "max_position_embeddings", false, 2048, 1, 1 << 24, &c->n_ctx)))
        return rc;
    if (c->n_head % c->n_head_kv != 0)
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                           "config.json: num_attention_heads %lld is not a multiple of num_key_value_heads %lld",
                           (long long)c->n_head, (long long)c->n_head_kv);
    const int64_t hd_def = c->n_embd % c->n_head == 0 ? c->n_embd / c->n_head : 0;
    if ((rc = cfg_int(c, "head_dim", hd_def == 0, hd_def, 2, 1024, &c->head_dim)))
        return rc;
    if (c->head_dim % 2)
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: head_dim %lld is odd", (long long)c->head_dim);
    const cJSON *tie = cJSON_GetObjectItemCaseSensitive(c->config, "tie_word_embeddings");
    c->tied = cJSON_IsBool(tie) ? cJSON_IsTrue(tie) : strcmp(c->arch, "gemma3") == 0;
    return 0;
}

static int write_hparams(conv *c) {
    codi_gguf_writer *w = c->w;
    char k[128];
    double eps, base;
    int rc;
    if ((rc = cfg_float(c, "rms_norm_eps", true, 0, &eps)) || (rc = cfg_float(c, "rope_theta", false, 10000.0, &base)))
        return rc;
    if (!(eps > 0 && eps < 1))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: bad rms_norm_eps %g", eps);
    if (!(base > 0))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "config.json: bad rope_theta %g", base);
    const char *a = c->arch;
#define KEY(s) (snprintf(k, sizeof(k), "%s." s, a), k)
    int e = 0;
    e |= codi_gguf_w_str(w, "general.architecture", a);
    const char *base_name = strrchr(c->dir, '/');
    e |= codi_gguf_w_str(w, "general.name", base_name && base_name[1] ? base_name + 1 : c->dir);
    e |= codi_gguf_w_u32(w, "general.file_type", c->out_type == CODI_CONVERT_F32 ? 0 : c->out_type == CODI_CONVERT_F16 ? 1 : 7);
    e |= codi_gguf_w_u32(w, KEY("context_length"), (uint32_t)c->n_ctx);
    e |= codi_gguf_w_u32(w, KEY("embedding_length"), (uint32_t)c->n_embd);
    e |= codi_gguf_w_u32(w, KEY("block_count"), (uint32_t)c->n_layer);
    e |= codi_gguf_w_u32(w, KEY("feed_forward_length"), (uint32_t)c->n_ff);
    e |= codi_gguf_w_u32(w, KEY("attention.head_count"), (uint32_t)c->n_head);
    e |= codi_gguf_w_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->n_head_kv);
    e |= codi_gguf_w_f32(w, KEY("attention.layer_norm_rms_epsilon"), (float)eps);
    e |= codi_gguf_w_f32(w, KEY("rope.freq_base"), (float)base);
    if (c->head_dim * c->n_head != c->n_embd || strcmp(a, "llama") != 0) {
        e |= codi_gguf_w_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
        e |= codi_gguf_w_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    }
    const cJSON *rs = cJSON_GetObjectItemCaseSensitive(c->config, "rope_scaling");
    if (rs && !cJSON_IsNull(rs)) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
        if (!t)
            t = cJSON_GetObjectItemCaseSensitive(rs, "type");
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(rs, "factor");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "linear") != 0 || !cJSON_IsNumber(f) ||
            !(f->valuedouble > 0))
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "config.json: unsupported rope_scaling (codi supports type 'linear' with a factor)");
        e |= codi_gguf_w_str(w, KEY("rope.scaling.type"), "linear");
        e |= codi_gguf_w_f32(w, KEY("rope.scaling.factor"), (float)f->valuedouble);
    }
    if (strcmp(a, "gemma3") == 0) {
        int64_t swa, pattern;
        double local_base, softcap, qscale;
        if ((rc = cfg_int(c, "sliding_window", true, 0, 0, 1 << 24, &swa)) ||
            (rc = cfg_int(c, "sliding_window_pattern", false, 6, 0, 512, &pattern)) ||
            (rc = cfg_float(c, "rope_local_base_freq", false, 10000.0, &local_base)) ||
            (rc = cfg_float(c, "final_logit_softcapping", false, 0.0, &softcap)) ||
            (rc = cfg_float(c, "query_pre_attn_scalar", false, (double)c->head_dim, &qscale)))
            return rc;
        if (qscale != (double)c->head_dim && c->n_layer != 62)
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "config.json: query_pre_attn_scalar %g differs from head_dim %lld", qscale,
                               (long long)c->head_dim);
        e |= codi_gguf_w_u32(w, KEY("attention.sliding_window"), (uint32_t)swa);
        e |= codi_gguf_w_u32(w, KEY("attention.sliding_window_pattern"), (uint32_t)pattern);
        e |= codi_gguf_w_f32(w, KEY("rope.freq_base_swa"), (float)local_base);
        if (softcap > 0)
            e |= codi_gguf_w_f32(w, KEY("final_logit_softcapping"), (float)softcap);
    }
#undef KEY
    return e ? codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory") : 0;
}

/* ------------------------------------------------------------ tensors */

static int add_tensor(conv *c, const char *hf, const char *gg, int64_t ne0, int64_t ne1, int xform, bool required) {
    const st_tensor *s = st_find(c->st, hf);
    if (!s) {
        if (!required)
            return 0;
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "the checkpoint has no tensor '%s'", hf);
    }
    /* HF stores [out, in] (PyTorch order); GGUF ne = [in, out]. */
    const bool vec = ne1 == 1;
    const bool ok = vec ? (s->n_dims == 1 && s->shape[0] == ne0)
                        : (s->n_dims == 2 && s->shape[0] == ne1 && s->shape[1] == ne0);
    if (!ok) {
        if (vec)
            return codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                               "tensor '%s' has shape [%lld%s], the config says [%lld]", hf, (long long)s->shape[0],
                               s->n_dims > 1 ? ", ..." : "", (long long)ne0);
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                           "tensor '%s' has shape [%lld, %lld], the config says [%lld, %lld]", hf,
                           (long long)s->shape[0], (long long)(s->n_dims > 1 ? s->shape[1] : 0), (long long)ne1,
                           (long long)ne0);
    }
    int type = CODI_TYPE_F32;
    if (!vec) {
        type = c->out_type == CODI_CONVERT_F32 ? CODI_TYPE_F32 : CODI_TYPE_F16;
        if (c->out_type == CODI_CONVERT_Q8_0 && ne0 % 32 == 0)
            type = CODI_TYPE_Q8_0;
    }
    const int64_t ne[2] = {ne0, ne1};
    int rc = codi_gguf_w_tensor(c->w, gg, type, vec ? 1 : 2, ne);
    if (rc)
        return codi_errorf(c->err, c->errlen, rc, "cannot add tensor '%s'", gg);
    conv_tensor *nt = realloc(c->t, (c->n_t + 1) * sizeof(conv_tensor));
    if (!nt)
        return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    c->t = nt;
    c->t[c->n_t++] = (conv_tensor){s, xform, type, ne0, ne1};
    return 0;
}

static int plan_tensors(conv *c) {
    const bool gemma = strcmp(c->arch, "gemma3") == 0, llama = strcmp(c->arch, "llama") == 0;
    const bool qwen2 = strcmp(c->arch, "qwen2") == 0, qk_norm = gemma || strcmp(c->arch, "qwen3") == 0;
    const int norm = gemma ? X_NORM_SHIFT : X_NONE;
    const int64_t d = c->n_embd, dq = c->n_head * c->head_dim, dkv = c->n_head_kv * c->head_dim;
    int rc;
    if ((rc = add_tensor(c, "model.embed_tokens.weight", "token_embd.weight", d, c->n_vocab, X_NONE, true)) ||
        (rc = add_tensor(c, "model.norm.weight", "output_norm.weight", d, 1, norm, true)))
        return rc;
    if (!c->tied && (rc = add_tensor(c, "lm_head.weight", "output.weight", d, c->n_vocab, X_NONE, true)))
        return rc;
    for (int64_t l = 0; l < c->n_layer; l++) {
        char hf[160], gg[96];
#define T(hfs, ggs, a, b, x, req)                                                  \
    snprintf(hf, sizeof(hf), "model.layers.%lld." hfs, (long long)l);              \
    snprintf(gg, sizeof(gg), "blk.%lld." ggs, (long long)l);                       \
    if ((rc = add_tensor(c, hf, gg, a, b, x, req)))                                \
        return rc;
        T("input_layernorm.weight", "attn_norm.weight", d, 1, norm, true)
        T("self_attn.q_proj.weight", "attn_q.weight", d, dq, llama ? X_PERMUTE_Q : X_NONE, true)
        T("self_attn.k_proj.weight", "attn_k.weight", d, dkv, llama ? X_PERMUTE_K : X_NONE, true)
        T("self_attn.v_proj.weight", "attn_v.weight", d, dkv, X_NONE, true)
        T("self_attn.o_proj.weight", "attn_output.weight", dq, d, X_NONE, true)
        if (qwen2) {
            T("self_attn.q_proj.bias", "attn_q.bias", dq, 1, X_NONE, true)
            T("self_attn.k_proj.bias", "attn_k.bias", dkv, 1, X_NONE, true)
            T("self_attn.v_proj.bias", "attn_v.bias", dkv, 1, X_NONE, true)
        }
        if (qk_norm) {
            T("self_attn.q_norm.weight", "attn_q_norm.weight", c->head_dim, 1, norm, true)
            T("self_attn.k_norm.weight", "attn_k_norm.weight", c->head_dim, 1, norm, true)
        }
        if (gemma) {
            T("post_attention_layernorm.weight", "post_attention_norm.weight", d, 1, norm, true)
            T("pre_feedforward_layernorm.weight", "ffn_norm.weight", d, 1, norm, true)
            T("post_feedforward_layernorm.weight", "post_ffw_norm.weight", d, 1, norm, true)
        } else {
            T("post_attention_layernorm.weight", "ffn_norm.weight", d, 1, norm, true)
        }
        T("mlp.gate_proj.weight", "ffn_gate.weight", d, c->n_ff, X_NONE, true)
        T("mlp.up_proj.weight", "ffn_up.weight", d, c->n_ff, X_NONE, true)
        T("mlp.down_proj.weight", "ffn_down.weight", c->n_ff, d, X_NONE, true)
#undef T
    }
    /* anything else in the checkpoint would be silently dropped: refuse */
    for (size_t i = 0; i < st_count(c->st); i++) {
        const st_tensor *s = st_at(c->st, i);
        bool used = false;
        for (size_t j = 0; j < c->n_t && !used; j++)
            used = c->t[j].src == s;
        if (!used && !(c->tied && strcmp(s->name, "lm_head.weight") == 0) && !strstr(s->name, "rotary_emb.inv_freq"))
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "the checkpoint has tensor '%.100s', which a %s model does not use", s->name, c->arch);
    }
    return 0;
}

static int fill(void *user, size_t i, void *dst, size_t nbytes, char *err, size_t errlen) {
    conv *c = user;
    const conv_tensor *t = &c->t[i];
    const uint64_t n = (uint64_t)t->ne0 * (uint64_t)t->ne1;
    if (n > c->fbuf_n) {
        float *nb = realloc(c->fbuf, n * sizeof(float));
        if (!nb)
            return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory converting '%s'", t->src->name);
        c->fbuf = nb;
        c->fbuf_n = n;
    }
    float *x = c->fbuf;
    if (t->xform == X_PERMUTE_Q || t->xform == X_PERMUTE_K) {
        /* llama.cpp's permute: row h*hd + s*hd/2 + i -> h*hd + 2*i + s */
        const int64_t heads = t->xform == X_PERMUTE_Q ? c->n_head : c->n_head_kv;
        const int64_t hd = t->ne1 / heads, half = hd / 2;
        for (int64_t h = 0; h < heads; h++)
            for (int64_t s = 0; s < 2; s++)
                for (int64_t r = 0; r < half; r++) {
                    const uint64_t src = (uint64_t)(h * hd + s * half + r) * (uint64_t)t->ne0;
                    float *row = x + (uint64_t)(h * hd + 2 * r + s) * (uint64_t)t->ne0;
                    for (int64_t k = 0; k < t->ne0; k++)
                        row[k] = st_get(t->src, src + (uint64_t)k);
                }
    } else {
        for (uint64_t k = 0; k < n; k++)
            x[k] = st_get(t->src, k);
        if (t->xform == X_NORM_SHIFT)
            for (uint64_t k = 0; k < n; k++)
                x[k] += 1.0f;
    }
    if (t->type == CODI_TYPE_F32) {
        memcpy(dst, x, nbytes);
        return 0;
    }
    const codi_type_traits *tr = codi_type_get(t->type);
    const size_t row = codi_row_size(t->type, t->ne0);
    for (int64_t r = 0; r < t->ne1; r++)
        tr->from_float(x + (uint64_t)r * (uint64_t)t->ne0, (uint8_t *)dst + (size_t)r * row, t->ne0);
    return 0;
}

/* ------------------------------------------------------------ tokenizer */

static const char *tok_text(const cJSON *v) {
    if (cJSON_IsString(v))
        return v->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

/* The pre-tokenizer by its regex / structure, named as llama.cpp names it. */
static const char *detect_pre(const cJSON *pre) {
    static const char LLAMA3[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    static const char QWEN2[] = "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(pre, "type");
    if (!cJSON_IsString(type))
        return NULL;
    if (strcmp(type->valuestring, "ByteLevel") == 0) {
        const cJSON *ur = cJSON_GetObjectItemCaseSensitive(pre, "use_regex");
        return !ur || cJSON_IsTrue(ur) ? "gpt-2" : NULL;
    }
    if (strcmp(type->valuestring, "Sequence") != 0)
        return NULL;
    const cJSON *list = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    bool digits = false, bytelevel = false, bl_regex = false;
    const char *regex = NULL;
    for (const cJSON *p = cJSON_IsArray(list) ? list->child : NULL; p; p = p->next) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
        if (!cJSON_IsString(t))
            return NULL;
        if (strcmp(t->valuestring, "Digits") == 0) {
            digits = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "individual_digits"));
        } else if (strcmp(t->valuestring, "ByteLevel") == 0) {
            bytelevel = true;
            const cJSON *ur = cJSON_GetObjectItemCaseSensitive(p, "use_regex");
            bl_regex = !ur || cJSON_IsTrue(ur);
        } else if (strcmp(t->valuestring, "Split") == 0) {
            const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
            const cJSON *re = pat ? cJSON_GetObjectItemCaseSensitive(pat, "Regex") : NULL;
            if (!cJSON_IsString(re))
                return NULL;
            regex = re->valuestring;
        } else {
            return NULL;
        }
    }
    if (!bytelevel || (regex && (bl_regex || digits)))
        return NULL;
    if (regex && strcmp(regex, LLAMA3) == 0)
        return "llama-bpe";
    if (regex && strcmp(regex, QWEN2) == 0)
        return "qwen2";
    if (!regex && bl_regex)
        return digits ? "smollm" : "gpt-2";
    return NULL;
}

static int write_tokenizer(conv *c) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(c->tok, "model");
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(model, "type");
    if (!cJSON_IsString(type))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: missing key 'model.type'");
    if (strcmp(type->valuestring, "BPE") != 0)
        return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                           "tokenizer.json: model type '%.40s' is not supported (codi convert reads byte-level BPE)",
                           type->valuestring);
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")))
        return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                           "tokenizer.json: SentencePiece-style BPE (byte_fallback) is not supported by codi convert "
                           "(only byte-level BPE); convert this model with llama.cpp's convert_hf_to_gguf.py");
    const char *pre = detect_pre(cJSON_GetObjectItemCaseSensitive(c->tok, "pre_tokenizer"));
    if (!pre)
        return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                           "tokenizer.json: unsupported pre_tokenizer (codi convert knows GPT-2, Llama-3, Qwen2 "
                           "and SmolLM byte-level pre-tokenizers)");
    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsObject(vocab) || !cJSON_IsArray(merges))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: missing 'model.vocab' or 'model.merges'");
    const int64_t nv = c->n_vocab;
    char **tokens = calloc((size_t)nv, sizeof(char *));
    int32_t *types = calloc((size_t)nv, sizeof(int32_t));
    int n_merges = cJSON_GetArraySize(merges);
    char **mstr = calloc((size_t)(n_merges > 0 ? n_merges : 1), sizeof(char *));
    int rc = 0;
    if (!tokens || !types || !mstr)
        rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    for (const cJSON *e = rc ? NULL : vocab->child; e && !rc; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)nv) {
            rc = codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                             "tokenizer.json: token '%.40s' has id %g outside the vocabulary of %lld (config.json "
                             "vocab_size)", e->string, e->valuedouble, (long long)nv);
            break;
        }
        const int id = (int)e->valuedouble;
        free(tokens[id]);
        tokens[id] = strdup(e->string);
        types[id] = 1; /* NORMAL */
        if (!tokens[id])
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(c->tok, "added_tokens");
    for (const cJSON *e = cJSON_IsArray(added) && !rc ? added->child : NULL; e && !rc; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(e, "content");
        if (!cJSON_IsNumber(id) || !cJSON_IsString(ct) || id->valuedouble < 0 || id->valuedouble >= (double)nv) {
            rc = codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                             "tokenizer.json: an added token lacks content or has an id outside the vocabulary");
            break;
        }
        const int i = (int)id->valuedouble;
        free(tokens[i]);
        tokens[i] = strdup(ct->valuestring);
        types[i] = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")) ? 3 : 4; /* CONTROL : USER_DEFINED */
        if (!tokens[i])
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < nv && !rc; i++)
        if (!tokens[i]) {
            char pad[32];
            snprintf(pad, sizeof(pad), "[PAD%lld]", (long long)i);
            tokens[i] = strdup(pad);
            types[i] = 5; /* UNUSED */
            if (!tokens[i])
                rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
        }
    int k = 0;
    for (const cJSON *e = rc ? NULL : merges->child; e && !rc; e = e->next, k++) {
        if (cJSON_IsString(e)) {
            mstr[k] = strdup(e->valuestring);
        } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
                   cJSON_IsString(e->child->next)) {
            const size_t n = strlen(e->child->valuestring) + strlen(e->child->next->valuestring) + 2;
            mstr[k] = malloc(n);
            if (mstr[k])
                snprintf(mstr[k], n, "%s %s", e->child->valuestring, e->child->next->valuestring);
        } else {
            rc = codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: merge %d is not 'a b' or [a, b]", k);
            break;
        }
        if (!mstr[k])
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    codi_gguf_writer *w = c->w;
    if (!rc) {
        int e = 0;
        e |= codi_gguf_w_str(w, "tokenizer.ggml.model", "gpt2");
        e |= codi_gguf_w_str(w, "tokenizer.ggml.pre", pre);
        e |= codi_gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tokens, (size_t)nv);
        e |= codi_gguf_w_arr_i32(w, "tokenizer.ggml.token_type", types, (size_t)nv);
        e |= codi_gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)mstr, (size_t)n_merges);
        if (e)
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    /* special tokens: tokenizer_config.json by text, config.json by id */
    static const struct {
        const char *cfg, *key, *id_key;
    } specials[] = {
        {"bos_token", "tokenizer.ggml.bos_token_id", "bos_token_id"},
        {"eos_token", "tokenizer.ggml.eos_token_id", "eos_token_id"},
        {"unk_token", "tokenizer.ggml.unknown_token_id", NULL},
        {"pad_token", "tokenizer.ggml.padding_token_id", "pad_token_id"},
    };
    for (size_t s = 0; s < sizeof(specials) / sizeof(specials[0]) && !rc; s++) {
        int64_t id = -1;
        const char *text = c->tok_cfg ? tok_text(cJSON_GetObjectItemCaseSensitive(c->tok_cfg, specials[s].cfg)) : NULL;
        if (text) {
            for (int64_t i = 0; i < nv && id < 0; i++)
                if (strcmp(tokens[i], text) == 0)
                    id = i;
            if (id < 0)
                rc = codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                                 "tokenizer_config.json: %s '%.40s' is not in the vocabulary", specials[s].cfg, text);
        } else if (specials[s].id_key) {
            const cJSON *v = cJSON_GetObjectItemCaseSensitive(c->config, specials[s].id_key);
            if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < (double)nv)
                id = (int64_t)v->valuedouble;
        }
        if (id >= 0 && codi_gguf_w_u32(w, specials[s].key, (uint32_t)id))
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    if (!rc && c->tok_cfg) {
        const cJSON *ab = cJSON_GetObjectItemCaseSensitive(c->tok_cfg, "add_bos_token");
        int e = codi_gguf_w_bool(w, "tokenizer.ggml.add_bos_token", cJSON_IsTrue(ab));
        const cJSON *ct = cJSON_GetObjectItemCaseSensitive(c->tok_cfg, "chat_template");
        const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
        for (const cJSON *x = cJSON_IsArray(ct) ? ct->child : NULL; x && !tmpl; x = x->next) {
            const cJSON *nm = cJSON_GetObjectItemCaseSensitive(x, "name");
            const cJSON *tt = cJSON_GetObjectItemCaseSensitive(x, "template");
            if (cJSON_IsString(nm) && strcmp(nm->valuestring, "default") == 0 && cJSON_IsString(tt))
                tmpl = tt->valuestring;
        }
        if (tmpl)
            e |= codi_gguf_w_str(w, "tokenizer.chat_template", tmpl);
        if (e)
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; tokens && i < nv; i++)
        free(tokens[i]);
    for (int i = 0; mstr && i < n_merges; i++)
        free(mstr[i]);
    free(tokens);
    free(types);
    free(mstr);
    return rc;
}

/* ------------------------------------------------------------ entry */

typedef struct {
    codi_progress_fn fn;
    void *user;
} prog;

static void on_progress(void *user, uint64_t done, uint64_t total) {
    const prog *p = user;
    if (p->fn)
        p->fn(p->user, done, total);
}

int codi_convert_hf(const char *dir, const char *out_path, const codi_convert_params *params, char *err,
                    size_t errlen) {
    if (!dir || !out_path)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_convert_hf: NULL folder or output path");
    conv c;
    memset(&c, 0, sizeof(c));
    c.err = err;
    c.errlen = errlen;
    c.dir = dir;
    c.out_type = params ? params->out_type : CODI_CONVERT_F16;
    if (c.out_type != CODI_CONVERT_F16 && c.out_type != CODI_CONVERT_F32 && c.out_type != CODI_CONVERT_Q8_0)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_convert_hf: unknown output type %d", c.out_type);
    int rc;
    if ((rc = load_json(&c, "config.json", true, &c.config)) || (rc = read_config(&c)) ||
        (rc = load_json(&c, "tokenizer.json", true, &c.tok)) ||
        (rc = load_json(&c, "tokenizer_config.json", false, &c.tok_cfg)) ||
        (rc = st_open_dir(dir, &c.st, err, errlen)))
        goto done;
    c.w = codi_gguf_writer_new();
    if (!c.w) {
        rc = codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        goto done;
    }
    if ((rc = write_hparams(&c)) || (rc = write_tokenizer(&c)) || (rc = plan_tensors(&c)))
        goto done;
    prog p = {params ? params->progress : NULL, params ? params->progress_user : NULL};
    rc = codi_gguf_writer_write(c.w, out_path, fill, &c, on_progress, &p, err, errlen);
done:
    /* names and texts quoted from the folder may hold any byte: keep the
     * message one printable line */
    for (char *q = rc && errlen ? err : NULL; q && *q; q++)
        if ((unsigned char)*q < 0x20 || *q == 0x7f)
            *q = '?';
    cJSON_Delete(c.config);
    cJSON_Delete(c.tok);
    cJSON_Delete(c.tok_cfg);
    st_close(c.st);
    codi_gguf_writer_free(c.w);
    free(c.t);
    free(c.fbuf);
    return rc;
}
