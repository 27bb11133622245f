/* codi_convert_hf: a Hugging Face model folder (config.json, safetensors
 * weights, tokenizer.json, tokenizer_config.json) -> one GGUF file that
 * codi and llama.cpp load, for the architectures codi runs (llama, qwen2,
 * qwen3, gemma3). Names, layouts and metadata follow llama.cpp's
 * convert_hf_to_gguf.py: Llama's Q/K rows are permuted to the interleaved
 * rope layout, Gemma's RMS-norm weights get their +1, 1-D tensors stay F32,
 * matrices become F32, F16 or Q8_0 (F16 when a row is not whole Q8_0
 * blocks). The tokenizer must be BPE: byte-level (GPT-2 style: Llama 3,
 * Qwen, SmolLM) or SentencePiece-style (byte fallback, spaces as U+2581:
 * Gemma 3, Llama 2, Mistral), whose merges become SPM scores. */
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

/* Gemma 3's local/global layer pattern as a period n (layer l is global
 * when l % n == n - 1; 0: no global layer): from layer_types (newer
 * transformers), else sliding_window_pattern / _sliding_window_pattern,
 * else 6. */
static int gemma3_swa_pattern(conv *c, int64_t *pattern) {
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(c->config, "layer_types");
    if (!lt || cJSON_IsNull(lt)) {
        const char *key = cJSON_GetObjectItemCaseSensitive(c->config, "sliding_window_pattern")
                              ? "sliding_window_pattern"
                              : "_sliding_window_pattern";
        return cfg_int(c, key, false, 6, 0, 512, pattern);
    }
    if (!cJSON_IsArray(lt) || cJSON_GetArraySize(lt) != c->n_layer)
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                           "config.json: 'layer_types' must be an array of num_hidden_layers (%lld) strings",
                           (long long)c->n_layer);
    int64_t first_full = -1, l = 0;
    for (const cJSON *x = lt->child; x; x = x->next, l++) {
        const bool full = cJSON_IsString(x) && strcmp(x->valuestring, "full_attention") == 0;
        if (!full && !(cJSON_IsString(x) && strcmp(x->valuestring, "sliding_attention") == 0))
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "config.json: layer_types[%lld] is not 'sliding_attention' or 'full_attention'",
                               (long long)l);
        if (full && first_full < 0)
            first_full = l;
    }
    *pattern = first_full + 1; /* no full layer: 0 */
    l = 0;
    for (const cJSON *x = lt->child; x; x = x->next, l++)
        if ((strcmp(x->valuestring, "full_attention") == 0) != (*pattern > 0 && l % *pattern == *pattern - 1))
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "config.json: layer_types is not a repeating run of sliding layers then one full "
                               "layer (layer %lld breaks it)", (long long)l);
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
            (rc = gemma3_swa_pattern(c, &pattern)) ||
            (rc = cfg_float(c, "rope_local_base_freq", false, 10000.0, &local_base)) ||
            (rc = cfg_float(c, "final_logit_softcapping", false, 0.0, &softcap)) ||
            (rc = cfg_float(c, "query_pre_attn_scalar", false, (double)c->head_dim, &qscale)))
            return rc;
        const cJSON *acap = cJSON_GetObjectItemCaseSensitive(c->config, "attn_logit_softcapping");
        if (acap && !cJSON_IsNull(acap))
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "config.json: attn_logit_softcapping is not supported (Gemma 3 has none)");
        if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(c->config, "use_bidirectional_attention")))
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "config.json: use_bidirectional_attention is not supported (codi runs causal models)");
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

/* GGUF tokenizer.ggml.token_type values */
enum { TT_NORMAL = 1, TT_UNKNOWN = 2, TT_CONTROL = 3, TT_USER_DEFINED = 4, TT_UNUSED = 5, TT_BYTE = 6 };

#define SPACE_MARK "\xE2\x96\x81" /* U+2581, SentencePiece's space */

static const char *tok_text(const cJSON *v) {
    if (cJSON_IsString(v))
        return v->valuestring;
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(v, "content");
    return cJSON_IsString(c) ? c->valuestring : NULL;
}

static const char *json_str(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

static bool str_is(const char *s, const char *want) { return s && strcmp(s, want) == 0; }

/* Token text -> lowest id with that text (open addressing, FNV-1a). */
typedef struct text_index {
    int32_t *slot; /* id + 1; 0 = empty */
    size_t mask;
    char *const *tokens;
} text_index;

static uint64_t fnv1a(const char *s, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h;
}

static int64_t index_find(const text_index *ix, const char *s, size_t n) {
    for (size_t h = fnv1a(s, n) & ix->mask; ix->slot[h]; h = (h + 1) & ix->mask) {
        const char *t = ix->tokens[ix->slot[h] - 1];
        if (strncmp(t, s, n) == 0 && t[n] == '\0')
            return ix->slot[h] - 1;
    }
    return -1;
}

static int index_build(text_index *ix, char *const *tokens, int64_t n) {
    size_t cap = 16;
    while (cap < (size_t)n * 2)
        cap *= 2;
    ix->slot = calloc(cap, sizeof(int32_t));
    ix->mask = cap - 1;
    ix->tokens = tokens;
    if (!ix->slot)
        return CODI_ENOMEM;
    for (int64_t i = 0; i < n; i++) {
        if (!tokens[i]) /* an id model.vocab does not name */
            continue;
        const size_t len = strlen(tokens[i]);
        if (index_find(ix, tokens[i], len) >= 0)
            continue;
        size_t h = fnv1a(tokens[i], len) & ix->mask;
        while (ix->slot[h])
            h = (h + 1) & ix->mask;
        ix->slot[h] = (int32_t)i + 1;
    }
    return 0;
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

/* SentencePiece-style BPE (Gemma, Llama 2, Mistral): spaces become '▁'
 * before the merges, by a Replace normalizer or a Metaspace pre-tokenizer;
 * Prepend('▁') or Metaspace's prepend_scheme puts one in front
 * (llama.cpp's add_space_prefix). */
typedef struct spm_form {
    bool replace, prefix;
} spm_form;

static bool is_replace_space(const cJSON *n) {
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(n, "pattern");
    return str_is(json_str(pat, "String"), " ") && str_is(json_str(n, "content"), SPACE_MARK);
}

/* Does the normalizer turn spaces into '▁' anywhere? (marks SPM style) */
static bool normalizer_has_space_mark(const cJSON *n) {
    const char *t = json_str(n, "type");
    if (str_is(t, "Replace"))
        return is_replace_space(n);
    if (str_is(t, "Prepend"))
        return str_is(json_str(n, "prepend"), SPACE_MARK);
    const cJSON *list = str_is(t, "Sequence") ? cJSON_GetObjectItemCaseSensitive(n, "normalizers") : NULL;
    for (const cJSON *x = cJSON_IsArray(list) ? list->child : NULL; x; x = x->next)
        if (normalizer_has_space_mark(x))
            return true;
    return false;
}

static int spm_normalizer(conv *c, const cJSON *n, spm_form *f) {
    if (!n || cJSON_IsNull(n))
        return 0;
    const char *t = json_str(n, "type");
    if (str_is(t, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
        int rc = 0;
        for (const cJSON *x = cJSON_IsArray(list) ? list->child : NULL; x && !rc; x = x->next)
            rc = spm_normalizer(c, x, f);
        return rc;
    }
    if (str_is(t, "Replace") && is_replace_space(n)) {
        f->replace = true;
        return 0;
    }
    if (str_is(t, "Prepend") && str_is(json_str(n, "prepend"), SPACE_MARK)) {
        f->prefix = true;
        return 0;
    }
    return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                       "tokenizer.json: normalizer '%.40s'%s is not supported (codi convert reads SentencePiece-style "
                       "BPE with Replace(' ', '\xE2\x96\x81') and Prepend('\xE2\x96\x81') normalizers)",
                       t ? t : "?", str_is(t, "Replace") || str_is(t, "Prepend") ? " of other text" : "");
}

static int spm_pre_tokenizer(conv *c, const cJSON *p, spm_form *f) {
    if (!p || cJSON_IsNull(p))
        return 0;
    const char *t = json_str(p, "type");
    if (str_is(t, "Split") && f->replace) {
        /* Gemma: splitting on ' ' after the normalizer removed every ' ' */
        const cJSON *pat = cJSON_GetObjectItemCaseSensitive(p, "pattern");
        if (str_is(json_str(pat, "String"), " "))
            return 0;
    }
    if (str_is(t, "Metaspace") && str_is(json_str(p, "replacement"), SPACE_MARK) &&
        !cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "split"))) {
        const char *scheme = json_str(p, "prepend_scheme");
        f->replace = true;
        f->prefix = scheme ? !str_is(scheme, "never")
                           : cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(p, "add_prefix_space"));
        return 0;
    }
    return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                       "tokenizer.json: pre_tokenizer '%.40s' is not supported with SentencePiece-style BPE "
                       "(codi convert reads none, Split on ' ' after a Replace normalizer, or Metaspace without "
                       "split)", t ? t : "?");
}

/* llama.cpp's convert_hf_to_gguf.py does_token_look_special: added tokens
 * that ought to be control tokens though not marked special. */
static bool looks_special(const char *s) {
    static const char FW_BAR[] = "\xEF\xBD\x9C"; /* U+FF5C */
    const size_t n = strlen(s);
    if (str_is(s, "<pad>") || str_is(s, "<mask>") || str_is(s, "<2mass>") || str_is(s, "[@BOS@]"))
        return true;
    if (n >= 4 && memcmp(s, "<|", 2) == 0 && memcmp(s + n - 2, "|>", 2) == 0)
        return true;
    if (n >= 8 && s[0] == '<' && memcmp(s + 1, FW_BAR, 3) == 0 && memcmp(s + n - 4, FW_BAR, 3) == 0 &&
        s[n - 1] == '>')
        return true;
    return n >= 8 && memcmp(s, "<unused", 7) == 0 && s[n - 1] == '>';
}

/* "<0xXX>" */
static bool is_byte_token(const char *s) {
    static const char HEX[] = "0123456789ABCDEFabcdef";
    return strlen(s) == 6 && memcmp(s, "<0x", 3) == 0 && s[5] == '>' && s[3] && strchr(HEX, s[3]) && s[4] &&
           strchr(HEX, s[4]);
}

/* text with every '▁' as ' ' (llama.cpp's pre-normalized user-defined tokens) */
static char *unmark_spaces(const char *s) {
    char *out = malloc(strlen(s) + 1), *o = out;
    for (; out && *s; s++) {
        if (memcmp(s, SPACE_MARK, 3) == 0) {
            *o++ = ' ';
            s += 2;
        } else {
            *o++ = *s;
        }
    }
    if (out)
        *o = '\0';
    return out;
}

typedef struct vocab {
    int64_t n;
    char **tokens;
    int32_t *types;
    float *scores; /* SPM only */
    char **merges; /* byte-level BPE only: "a b" */
    int n_merges;
} vocab;

static void vocab_free(vocab *v) {
    for (int64_t i = 0; v->tokens && i < v->n; i++)
        free(v->tokens[i]);
    for (int i = 0; v->merges && i < v->n_merges; i++)
        free(v->merges[i]);
    free(v->tokens);
    free(v->types);
    free(v->scores);
    free(v->merges);
}

/* Tokens and types of model.vocab. */
static int read_vocab(conv *c, const cJSON *model, bool spm, vocab *v) {
    const cJSON *vj = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vj))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: missing 'model.vocab'");
    const int64_t nv = c->n_vocab;
    const bool byte_fallback = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback"));
    const char *unk = json_str(model, "unk_token");
    v->n = nv;
    v->tokens = calloc((size_t)nv, sizeof(char *));
    v->types = calloc((size_t)nv, sizeof(int32_t));
    if (!v->tokens || !v->types)
        return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    for (const cJSON *e = vj->child; e; e = e->next) {
        if (!cJSON_IsNumber(e) || e->valuedouble < 0 || e->valuedouble >= (double)nv)
            return codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                               "tokenizer.json: token '%.40s' has id %g outside the vocabulary of %lld (config.json "
                               "vocab_size)", e->string, e->valuedouble, (long long)nv);
        const int64_t id = (int64_t)e->valuedouble;
        free(v->tokens[id]);
        if (!(v->tokens[id] = strdup(e->string)))
            return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
        v->types[id] = TT_NORMAL;
        if (spm && byte_fallback && is_byte_token(e->string))
            v->types[id] = TT_BYTE;
        else if (spm && str_is(unk, e->string))
            v->types[id] = TT_UNKNOWN;
    }
    return 0;
}

/* added_tokens over the vocabulary, as llama.cpp's converter: control when
 * special (or looking special), else user-defined with '▁' written as ' ';
 * ids past config.json's vocab_size (Gemma 3's <image_soft_token>) are
 * dropped; ids nobody names become "[PAD<id>]", unused. Scores, if any:
 * -1000 for these. */
static int add_tokens(conv *c, vocab *v) {
    const int64_t nv = v->n;
    const cJSON *added = cJSON_GetObjectItemCaseSensitive(c->tok, "added_tokens");
    for (const cJSON *e = cJSON_IsArray(added) ? added->child : NULL; e; e = e->next) {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
        const char *ct = json_str(e, "content");
        if (!cJSON_IsNumber(id) || !ct || id->valuedouble < 0 || id->valuedouble != floor(id->valuedouble))
            return codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                               "tokenizer.json: an added token lacks content or has a bad id");
        if (id->valuedouble >= (double)nv)
            continue;
        const int64_t i = (int64_t)id->valuedouble;
        const bool control = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "special")) || looks_special(ct);
        free(v->tokens[i]);
        if (!(v->tokens[i] = control ? strdup(ct) : unmark_spaces(ct)))
            return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
        v->types[i] = control ? TT_CONTROL : TT_USER_DEFINED;
        if (v->scores)
            v->scores[i] = -1000.0f;
    }
    for (int64_t i = 0; i < nv; i++)
        if (!v->tokens[i]) {
            char pad[32];
            snprintf(pad, sizeof(pad), "[PAD%lld]", (long long)i);
            if (!(v->tokens[i] = strdup(pad)))
                return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
            v->types[i] = TT_UNUSED;
            if (v->scores)
                v->scores[i] = -1000.0f;
        }
    return 0;
}

/* Merge k as its two parts: "a b" (split at the first space after the
 * first byte, as llama.cpp does) or ["a", "b"]. */
static int merge_parts(conv *c, const cJSON *e, int k, const char **a, size_t *na, const char **b) {
    if (cJSON_IsString(e)) {
        const char *sp = e->valuestring[0] ? strchr(e->valuestring + 1, ' ') : NULL;
        if (sp) {
            *a = e->valuestring;
            *na = (size_t)(sp - e->valuestring);
            *b = sp + 1;
            return 0;
        }
    } else if (cJSON_IsArray(e) && cJSON_GetArraySize(e) == 2 && cJSON_IsString(e->child) &&
               cJSON_IsString(e->child->next)) {
        *a = e->child->valuestring;
        *na = strlen(*a);
        *b = e->child->next->valuestring;
        return 0;
    }
    return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: merge %d is not 'a b' or [a, b]", k);
}

/* Byte-level BPE: the merges as GGUF writes them, "a b". */
static int read_merges(conv *c, const cJSON *merges, vocab *v) {
    const int n = cJSON_GetArraySize(merges);
    v->merges = calloc((size_t)(n > 0 ? n : 1), sizeof(char *));
    if (!v->merges)
        return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    int k = 0;
    for (const cJSON *e = merges->child; e; e = e->next, k++) {
        const char *a, *b;
        size_t na;
        int rc = merge_parts(c, e, k, &a, &na, &b);
        if (rc)
            return rc;
        const size_t len = na + strlen(b) + 2;
        if (!(v->merges[k] = malloc(len)))
            return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
        v->n_merges = k + 1;
        snprintf(v->merges[k], len, "%.*s %s", (int)na, a, b);
    }
    return 0;
}

/* SentencePiece BPE scores from the merge ranks. codi's and llama.cpp's SPM
 * tokenizer repeatedly merges the adjacent pair whose joined text is the
 * token of highest score; Hugging Face's BPE merges the pair of lowest rank.
 * score = -(rank of the first merge that makes the token) gives the same
 * order (SentencePiece-derived merges are sorted by the score of the token
 * they make). Tokens no merge makes score below every merged one, in id
 * order; byte and unknown tokens 0, as llama.cpp writes them (add_tokens
 * then gives control, user-defined and unused ones its -1000). */
static int spm_scores(conv *c, const cJSON *merges, vocab *v) {
    text_index ix = {0};
    char *buf = NULL;
    size_t cap = 0;
    int rc = 0, k = 0;
    v->scores = malloc((size_t)v->n * sizeof(float));
    if (!v->scores || index_build(&ix, v->tokens, v->n)) {
        free(ix.slot);
        return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    for (int64_t i = 0; i < v->n; i++)
        v->scores[i] = 1.0f; /* not made by a merge (yet) */
    for (const cJSON *e = merges->child; e && !rc; e = e->next, k++) {
        const char *a, *b;
        size_t na;
        if ((rc = merge_parts(c, e, k, &a, &na, &b)))
            break;
        const size_t nb = strlen(b);
        if (na + nb > cap) {
            cap = 2 * (na + nb);
            char *nbuf = realloc(buf, cap);
            if (!nbuf) {
                rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
                break;
            }
            buf = nbuf;
        }
        memcpy(buf, a, na);
        memcpy(buf + na, b, nb);
        const int64_t id = index_find(&ix, buf, na + nb);
        if (id < 0)
            rc = codi_errorf(c->err, c->errlen, CODI_EFORMAT,
                             "tokenizer.json: merge %d ('%.*s' '%.40s') makes a token that is not in the vocabulary",
                             k, (int)(na < 40 ? na : 40), a, b);
        else if (v->scores[id] > 0.0f)
            v->scores[id] = -(float)k;
    }
    for (int64_t i = 0; i < v->n && !rc; i++) {
        const int t = v->types[i];
        if (t == TT_BYTE || t == TT_UNKNOWN)
            v->scores[i] = 0.0f;
        else if (v->scores[i] > 0.0f)
            v->scores[i] = -(float)((int64_t)k + i);
    }
    free(buf);
    free(ix.slot);
    return rc;
}

/* add_bos / add_eos from the post-processor's template for one sequence:
 * a special token first / last (tokenizer_config.json overrides). */
static void template_flags(const cJSON *pp, int *bos, int *eos) {
    const char *t = json_str(pp, "type");
    if (str_is(t, "Sequence")) {
        const cJSON *list = cJSON_GetObjectItemCaseSensitive(pp, "processors");
        for (const cJSON *x = cJSON_IsArray(list) ? list->child : NULL; x; x = x->next)
            template_flags(x, bos, eos);
        return;
    }
    const cJSON *single = str_is(t, "TemplateProcessing") ? cJSON_GetObjectItemCaseSensitive(pp, "single") : NULL;
    const int n = cJSON_IsArray(single) ? cJSON_GetArraySize(single) : 0;
    if (n == 0)
        return;
    *bos = cJSON_HasObjectItem(cJSON_GetArrayItem(single, 0), "SpecialToken");
    *eos = n > 1 && cJSON_HasObjectItem(cJSON_GetArrayItem(single, n - 1), "SpecialToken");
}

/* The chat template: tokenizer_config.json's, else chat_template.jinja,
 * else chat_template.json (the order of llama.cpp's gguf-py). */
static int chat_template(conv *c, char **out) {
    *out = NULL;
    const cJSON *ct = c->tok_cfg ? cJSON_GetObjectItemCaseSensitive(c->tok_cfg, "chat_template") : NULL;
    const char *tmpl = cJSON_IsString(ct) ? ct->valuestring : NULL;
    for (const cJSON *x = cJSON_IsArray(ct) ? ct->child : NULL; x && !tmpl; x = x->next)
        if (str_is(json_str(x, "name"), "default"))
            tmpl = json_str(x, "template");
    if (tmpl)
        return (*out = strdup(tmpl)) ? 0 : codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    char path[4096];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/chat_template.jinja", c->dir);
    char *text = slurp(path, &len);
    if (text) {
        if (memchr(text, '\0', len)) {
            free(text);
            return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "chat_template.jinja holds a NUL byte");
        }
        char *t = realloc(text, len + 1);
        if (!t) {
            free(text);
            return codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
        }
        t[len] = '\0';
        *out = t;
        return 0;
    }
    cJSON *j = NULL;
    int rc = load_json(c, "chat_template.json", false, &j);
    if (!rc && j && (tmpl = json_str(j, "chat_template")) && !(*out = strdup(tmpl)))
        rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    cJSON_Delete(j);
    return rc;
}

static int write_tokenizer(conv *c) {
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(c->tok, "model");
    const char *type = json_str(model, "type");
    if (!type)
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: missing key 'model.type'");
    if (strcmp(type, "BPE") != 0)
        return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                           "tokenizer.json: model type '%.40s' is not supported (codi convert reads BPE: byte-level "
                           "or SentencePiece-style)", type);
    const cJSON *norm = cJSON_GetObjectItemCaseSensitive(c->tok, "normalizer");
    const cJSON *pret = cJSON_GetObjectItemCaseSensitive(c->tok, "pre_tokenizer");
    const bool spm = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(model, "byte_fallback")) ||
                     normalizer_has_space_mark(norm) || str_is(json_str(pret, "type"), "Metaspace");
    spm_form form = {false, false};
    const char *pre = NULL;
    int rc;
    if (spm) {
        if ((rc = spm_normalizer(c, norm, &form)) || (rc = spm_pre_tokenizer(c, pret, &form)))
            return rc;
        if (!form.replace)
            return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                               "tokenizer.json: SentencePiece-style BPE (byte_fallback) whose spaces do not become "
                               "'\xE2\x96\x81' (no Replace normalizer or Metaspace pre-tokenizer) is not supported");
        static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
        for (int i = 0; i < 2; i++) {
            const char *s = json_str(model, affixes[i]);
            if (s && *s)
                return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                                   "tokenizer.json: SentencePiece-style BPE with a %s is not supported", affixes[i]);
        }
        pre = "default";
    } else if (!(pre = detect_pre(pret))) {
        return codi_errorf(c->err, c->errlen, CODI_EUNSUPPORTED,
                           "tokenizer.json: unsupported pre_tokenizer (codi convert knows GPT-2, Llama-3, Qwen2 "
                           "and SmolLM byte-level pre-tokenizers)");
    }
    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges))
        return codi_errorf(c->err, c->errlen, CODI_EFORMAT, "tokenizer.json: missing 'model.merges'");
    vocab v = {0};
    if (!(rc = read_vocab(c, model, spm, &v)) && !(rc = spm ? spm_scores(c, merges, &v) : read_merges(c, merges, &v)))
        rc = add_tokens(c, &v);
    codi_gguf_writer *w = c->w;
    const size_t nv = (size_t)v.n;
    if (!rc) {
        int e = 0;
        e |= codi_gguf_w_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
        e |= codi_gguf_w_str(w, "tokenizer.ggml.pre", pre);
        e |= codi_gguf_w_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)v.tokens, nv);
        if (spm)
            e |= codi_gguf_w_arr_f32(w, "tokenizer.ggml.scores", v.scores, nv);
        e |= codi_gguf_w_arr_i32(w, "tokenizer.ggml.token_type", v.types, nv);
        if (!spm)
            e |= codi_gguf_w_arr_str(w, "tokenizer.ggml.merges", (const char *const *)v.merges, (size_t)v.n_merges);
        if (e)
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    /* special tokens: tokenizer_config.json by text, else config.json by id
     * (and the unknown token of a SentencePiece-style model) */
    static const struct {
        const char *cfg, *key, *id_key;
    } specials[] = {
        {"bos_token", "tokenizer.ggml.bos_token_id", "bos_token_id"},
        {"eos_token", "tokenizer.ggml.eos_token_id", "eos_token_id"},
        {"unk_token", "tokenizer.ggml.unknown_token_id", NULL},
        {"pad_token", "tokenizer.ggml.padding_token_id", "pad_token_id"},
    };
    text_index ix = {0};
    if (!rc && index_build(&ix, v.tokens, v.n))
        rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    for (size_t s = 0; s < sizeof(specials) / sizeof(specials[0]) && !rc; s++) {
        int64_t id = -1;
        const char *text = c->tok_cfg ? tok_text(cJSON_GetObjectItemCaseSensitive(c->tok_cfg, specials[s].cfg)) : NULL;
        if (!text && spm && !specials[s].id_key)
            text = json_str(model, "unk_token");
        if (text) {
            if ((id = index_find(&ix, text, strlen(text))) < 0)
                rc = codi_errorf(c->err, c->errlen, CODI_EFORMAT, "%s: %s '%.40s' is not in the vocabulary",
                                 c->tok_cfg ? "tokenizer_config.json" : "tokenizer.json", specials[s].cfg, text);
        } else if (specials[s].id_key) {
            const cJSON *x = cJSON_GetObjectItemCaseSensitive(c->config, specials[s].id_key);
            if (cJSON_IsNumber(x) && x->valuedouble >= 0 && x->valuedouble < (double)v.n)
                id = (int64_t)x->valuedouble;
        }
        if (id >= 0 && codi_gguf_w_u32(w, specials[s].key, (uint32_t)id))
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    free(ix.slot);
    char *tmpl = NULL;
    if (!rc && !(rc = chat_template(c, &tmpl))) {
        int bos = -1, eos = -1;
        template_flags(cJSON_GetObjectItemCaseSensitive(c->tok, "post_processor"), &bos, &eos);
        const cJSON *ab = c->tok_cfg ? cJSON_GetObjectItemCaseSensitive(c->tok_cfg, "add_bos_token") : NULL;
        const cJSON *ae = c->tok_cfg ? cJSON_GetObjectItemCaseSensitive(c->tok_cfg, "add_eos_token") : NULL;
        if (cJSON_IsBool(ab) || (c->tok_cfg && bos < 0))
            bos = cJSON_IsTrue(ab);
        if (cJSON_IsBool(ae))
            eos = cJSON_IsTrue(ae);
        int e = 0;
        if (bos >= 0)
            e |= codi_gguf_w_bool(w, "tokenizer.ggml.add_bos_token", bos);
        if (eos >= 0)
            e |= codi_gguf_w_bool(w, "tokenizer.ggml.add_eos_token", eos);
        if (spm)
            e |= codi_gguf_w_bool(w, "tokenizer.ggml.add_space_prefix", form.prefix);
        if (tmpl)
            e |= codi_gguf_w_str(w, "tokenizer.chat_template", tmpl);
        if (e)
            rc = codi_errorf(c->err, c->errlen, CODI_ENOMEM, "out of memory");
    }
    free(tmpl);
    vocab_free(&v);
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
