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

typedef struct codi_hparams {
    char arch[32];
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
} codi_hparams;

/* A weight matrix: ne[0] = in features (contiguous), ne[1] = out features. */
typedef struct codi_weight {
    const void *data;
    int type;
    int64_t ne0, ne1;
    size_t row_bytes;
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
} codi_layer;

struct codi_model {
    codi_gguf *gguf;
    codi_vocab *vocab;
    codi_hparams hp;
    codi_weight tok_embd; /* [n_embd] x n_vocab rows */
    const float *out_norm;
    codi_weight output;   /* tied to tok_embd when the file has none */
    codi_layer *layers;
    char *chat_template;  /* NULL when the file has none */
    char *bos_text;       /* text of BOS, "" when none */
    uint64_t weight_bytes;
};

/* Loader helpers shared by forward.c */
int codi_model_validate_hparams(const codi_hparams *hp, char *err,
                                size_t errlen);

#endif
