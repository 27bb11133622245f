/* Model: hyper-parameters, weights as views into the mmapped GGUF, and the
 * run state of a context (KV cache + scratch, allocated once). */
#ifndef CODI_MODEL_H
#define CODI_MODEL_H

#include <stdbool.h>
#include <stdint.h>

#include "codi.h"
#include "gguf.h"
#include "kernels/threadpool.h"
#include "tokenizer.h"

/* Architectures the loader knows (the arch table is in loader.c). */
enum codi_arch {
    CODI_ARCH_LLAMA = 0,
    CODI_ARCH_QWEN2,  /* llama + Q/K/V biases, NeoX rope */
    CODI_ARCH_QWEN3,  /* llama + per-head Q/K RMS norms, NeoX rope */
    CODI_ARCH_GEMMA3, /* Q/K norms, pre+post norms, GeGLU, scaled embeddings,
                         interleaved sliding-window layers */
    CODI_ARCH_QWEN2MOE, /* qwen2 + routed experts + a gated shared expert */
    CODI_ARCH_QWEN3MOE, /* qwen3 + routed experts */
    CODI_ARCH_OLMOE,    /* Q/K RMS norms over all heads at once, experts */
};

enum codi_ffn_act {
    CODI_ACT_SILU = 0, /* silu(gate) * up */
    CODI_ACT_GELU,     /* gelu_tanh(gate) * up, as ggml's fp16 table */
};

typedef struct codi_hparams {
    char arch[32];
    int arch_id;        /* enum codi_arch */
    int32_t n_vocab;
    int32_t n_embd;
    int32_t n_layer;
    int32_t n_head;
    int32_t n_head_kv;
    int32_t head_dim;   /* n_embd / n_head unless key_length says */
    int32_t n_ff;
    int32_t n_ctx_train;
    int32_t n_rot;      /* rotary dims (<= head_dim) */
    bool rope_neox;     /* NeoX layout: pairs (i, i + n_rot/2) */
    float rope_base;
    float rope_freq_scale; /* 1 / linear scaling factor */
    float norm_eps;
    /* Additions for the non-llama families (neutral values for llama). */
    int ffn_act;        /* enum codi_ffn_act */
    float embd_scale;   /* token embeddings are multiplied by this (1) */
    float attn_scale;   /* queries are multiplied by this before QK^T */
    int32_t n_swa;      /* sliding window of local layers, 0 = none */
    float rope_base_swa;       /* rope base of sliding-window layers */
    float rope_freq_scale_swa; /* rope scale of sliding-window layers */
    float final_logit_softcap; /* logits = c*tanh(logits/c); 0 = off */
    /* Mixture of experts (n_expert = 0: dense FFN). Routing as llama.cpp's
     * build_moe_ffn with softmax gating: p = softmax(router x), the top
     * n_expert_used experts by p, weights p (renormalised to sum 1 when
     * moe_norm_w: Mixtral, Qwen3-MoE; raw for Qwen2-MoE, OLMoE). */
    int32_t n_expert, n_expert_used;
    int32_t n_ff_exp;   /* FFN width of one expert */
    int32_t n_ff_shexp; /* width of the shared expert, 0 = none */
    bool moe_norm_w;
    bool qk_norm_full;  /* Q/K norm weights span all heads (OLMoE) */
    bool nested;        /* every MoE layer has bit-nested experts */
    int32_t router_src; /* decoupled router (codi moefy): every layer's
                           router reads this layer's FFN input; -1 = none */
} codi_hparams;

/* A weight matrix: ne[0] = in features (contiguous), ne[1] = out features. */
typedef struct codi_weight {
    const void *data;
    int type;
    int64_t ne0, ne1;
    size_t row_bytes;
    int64_t n_dot; /* elements a row's vec_dot runs over when not ne0 (the
                      kept groups of a group-sparse GQSA row); 0 = ne0 */
    /* MixLLM matrix (perm != NULL): stored rows 0..n_lo-1 are `data`
     * (4-bit, row_bytes each), rows n_lo..ne1-1 are data_hi (type_hi,
     * 8-bit); stored row s is output feature perm[s]. quant/mix.h. */
    const void *data_hi;
    int type_hi;
    size_t row_bytes_hi;
    int64_t n_lo;
    const int16_t *perm;
    /* W4A8 (QoQ): per output row float scale applied after the integer
     * dot product (tensor <name>.wscale), or NULL. */
    const float *row_scale;
    /* Rows 0..x8_rows-1 repacked into groups of 8 (kernels/repack.h) at
     * load time, or NULL; matmul runs them with the x8 kernel and any
     * rows past x8_rows from `data`. */
    const void *x8;
    int64_t x8_rows;
    /* W4A8 whose every weight fits an int8 (codi_w4a8_row_fits_int8):
     * prefill may run it on AMX tiles (codi_kernel_gemm_x8_amx). */
    bool x8_int8;
} codi_weight;

typedef struct codi_layer {
    const float *attn_norm; /* [n_embd] */
    codi_weight wq;         /* [n_embd] -> [n_head * head_dim] */
    codi_weight wk;         /* [n_embd] -> [n_head_kv * head_dim] */
    codi_weight wv;
    codi_weight wo;         /* [n_head * head_dim] -> [n_embd] */
    const float *ffn_norm;  /* [n_embd] */
    codi_weight w_gate;     /* [n_embd] -> [n_ff] */
    codi_weight w_up;
    codi_weight w_down;     /* [n_ff] -> [n_embd] */
    /* optional, NULL when the architecture has none */
    const float *bq, *bk, *bv;      /* Q/K/V biases (Qwen2) */
    const float *attn_q_norm;       /* [head_dim] per-head RMS norm */
    const float *attn_k_norm;       /* (Qwen3, Gemma 3) */
    const float *attn_post_norm;    /* [n_embd] on the attention output */
    const float *ffn_post_norm;     /* [n_embd] on the FFN output (Gemma 3) */
    /* MoE layers: the router, and the stacked expert tensors as views of
     * expert 0 (expert e's rows start e * exp_stride[i] bytes further; its
     * file offset is exp_off[i] + e * exp_stride[i]) */
    codi_weight router;     /* [n_embd] -> [n_expert] */
    codi_weight exp[3];     /* gate, up: [n_embd] -> [n_ff_exp]; down: back */
    size_t exp_stride[3];
    uint64_t exp_off[3];
    /* bit-nested experts (D2MoE, docs/moe.md): exp[] holds the 4-bit high
     * part, exp_lo[] the 4-bit residual; W = exp + exp_lo ~ 8 bits */
    codi_weight exp_lo[3];
    size_t exp_lo_stride[3];
    uint64_t exp_lo_off[3];
    codi_weight sh_gate, sh_up, sh_down; /* shared expert (Qwen2-MoE) */
    codi_weight sh_inp;     /* [n_embd] -> [1]: its sigmoid gate */
    bool swa;               /* sliding-window (local) layer */
    float rope_base;        /* this layer's rope base and scale */
    float rope_freq_scale;
} codi_layer;

struct codi_model {
    codi_gguf *gguf;
    codi_vocab *vocab;
    codi_hparams hp;
    codi_weight tok_embd; /* [n_embd] x n_vocab rows */
    const float *out_norm;
    codi_weight output;   /* tied to tok_embd when the file has none */
    const float *output_b;/* [n_vocab] or NULL */
    codi_layer *layers;
    char *chat_template;  /* NULL when the file has none */
    char *bos_text;       /* text of BOS, "" when none */
    char *eos_text;       /* text of EOS, "" when none */
    uint64_t weight_bytes;
    uint64_t expert_bytes; /* of weight_bytes, the routed experts' share */
    char *path;           /* the file, for the expert store's own reads */
    void *x8_mem;         /* the repacked weights (codi_weight.x8), or NULL */
    size_t x8_bytes;
};

/* Calibration hook: when set, every matrix product y = W x calls
 * fn(user, W, x, B, n_in) first with the B activation rows (n_in floats
 * each) entering W. Internal (codi quantize's calibration pass); NULL
 * turns it off. */
typedef void (*codi_matmul_observer)(void *user, const codi_weight *w, const float *x, int B,
                                     int64_t n_in);
void codi_context_set_observer(codi_context *c, codi_matmul_observer fn, void *user);

/* Loader helpers shared by forward.c */
int codi_model_validate_hparams(const codi_hparams *hp, char *err,
                                size_t errlen);

/* ALISA's importance decay per query (`decay`, exp(-1/kv_window)) as
 * layer `layer` applies it. In a model that interleaves sliding-window
 * layers with global ones (Gemma 3), the local layers carry the recent
 * context and the global layers are there for long-range retrieval, so a
 * global layer does not decay (H2O's accumulation, still weighted by |v|):
 * 1 there, `decay` everywhere else (docs/kv-cache.md). */
float codi_kv_layer_decay(const codi_model *m, int layer, float decay);

#endif
