/* Context (KV cache + scratch, allocated once) and the llama-family forward
 * pass over a batch of tokens:
 *   x = embd[tok]
 *   per layer: x += Wo * attn(rope(Wq n(x)), rope(Wk n(x)), Wv n(x))
 *              x += Wdown * (silu(Wgate n(x)) * Wup n(x))
 *   logits = Wout n(x)
 * Matrix products quantize the activations once per row into the weight
 * type's vec_dot_type (as llama.cpp does) and split output rows across the
 * thread pool. */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common.h"
#include "kernels/gemm.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "tensor/types.h"

#define MAX_FUSED 3
#define ATT_G 3 /* query heads of one KV head that attention handles together */

struct codi_context {
    codi_model *m;
    int32_t n_ctx, n_batch, n_threads, n_seq;
    codi_threadpool *pool;
    uint16_t *kc;      /* [n_seq][n_layer][kv_dim][n_ctx] fp16, transposed:
                          scores for 8 keys per vector, no horizontal sums */
    uint16_t *vc;      /* [n_seq][n_layer][kv_dim][n_ctx] fp16, transposed
                          as llama.cpp stores V without flash attention */
    int32_t *n_past;   /* [n_seq] tokens cached per sequence */
    int32_t *row_pos, *row_seq; /* [n_batch] of the pass being evaluated */
    int32_t *seq_first;         /* [n_seq] scratch for batch validation */
    /* scratch for n_batch tokens */
    float *x, *xn, *q, *k, *v, *att, *g, *u;
    void *xq;
    size_t xq_stride; /* bytes per token row in xq */
    float *scores;    /* [n_threads][ATT_G][n_ctx] */
    uint16_t *probs16;/* [n_threads][ATT_G][n_ctx] attention weights as fp16 */
    float *rope_theta;/* [2][n_rot/2] per-pair frequency: global layers,
                         then sliding-window layers (own rope base) */
    /* logits of the last decode call */
    float *logits;
    size_t logits_cap; /* rows */
    int32_t *logit_row;   /* [logit_row_cap] batch index -> logits row or -1 */
    size_t logit_row_cap;
    int32_t *out_idx;     /* [n_batch] rows of a pass whose logits are kept */
    int32_t n_last;       /* tokens in the last decode call */
    bool has_logits;
};

codi_context_params codi_context_default_params(void) {
    codi_context_params p = {0, 512, 0, 1};
    return p;
}

static void *xaligned(size_t bytes) {
    void *p = NULL;
    if (bytes == 0)
        bytes = 64;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63) != 0)
        return NULL;
    return p;
}

int codi_context_create(codi_model *m, const codi_context_params *params,
                        codi_context **out, char *err, size_t errlen) {
    if (!out || !m)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_context_create: NULL argument");
    *out = NULL;
    codi_context_params p = params ? *params : codi_context_default_params();
    const codi_hparams *hp = &m->hp;
    if (p.n_ctx < 0 || p.n_batch < 0 || p.n_threads < 0 || p.n_seq < 0)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "context size, batch, threads and sequences must not be negative");
    if (p.n_seq == 0)
        p.n_seq = 1;
    if (p.n_seq > 1024)
        return codi_errorf(err, errlen, CODI_EINVAL, "too many sequences (%d)", p.n_seq);
    if (p.n_ctx == 0)
        p.n_ctx = CODI_MIN(hp->n_ctx_train, 4096);
    if (p.n_ctx > (1 << 20))
        return codi_errorf(err, errlen, CODI_EINVAL, "context size %d is too large", p.n_ctx);
    if (p.n_batch == 0)
        p.n_batch = 512;
    p.n_batch = CODI_MIN(p.n_batch, p.n_ctx);
    if (p.n_threads == 0) {
        long nc = sysconf(_SC_NPROCESSORS_ONLN);
        p.n_threads = nc > 0 ? (int32_t)CODI_MIN(nc, 64) : 1;
    }
    if (p.n_threads > 256)
        return codi_errorf(err, errlen, CODI_EINVAL, "too many threads (%d)", p.n_threads);

    codi_context *c = calloc(1, sizeof(*c));
    if (!c)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    c->m = m;
    c->n_ctx = p.n_ctx;
    c->n_batch = p.n_batch;
    c->n_threads = p.n_threads;
    c->n_seq = p.n_seq;
    const size_t B = (size_t)p.n_batch, d = (size_t)hp->n_embd,
                 dq = (size_t)hp->n_head * hp->head_dim,
                 dkv = (size_t)hp->n_head_kv * hp->head_dim, ff = (size_t)hp->n_ff;
    const size_t kv_elems = (size_t)p.n_seq * (size_t)hp->n_layer * (size_t)p.n_ctx * dkv;
    c->kc = xaligned(kv_elems * sizeof(uint16_t));
    c->vc = xaligned(kv_elems * sizeof(uint16_t));
    size_t wide = CODI_MAX(CODI_MAX(d, dq), ff);
    c->x = xaligned(B * d * sizeof(float));
    c->xn = xaligned(B * wide * sizeof(float));
    c->q = xaligned(B * dq * sizeof(float));
    c->k = xaligned(B * dkv * sizeof(float));
    c->v = xaligned(B * dkv * sizeof(float));
    c->att = xaligned(B * dq * sizeof(float));
    c->g = xaligned(B * ff * sizeof(float));
    c->u = xaligned(B * ff * sizeof(float));
    /* Largest quantized activation row over every weight's vec_dot_type. */
    size_t qrow = wide * sizeof(float);
    const codi_weight *ws[] = {&m->tok_embd, &m->output};
    for (int i = 0; i < 2; i++) {
        const codi_type_traits *t = codi_type_get(ws[i]->type);
        size_t r = codi_row_size(t->vec_dot_type, (int64_t)wide);
        qrow = CODI_MAX(qrow, r);
    }
    for (int l = 0; l < hp->n_layer; l++) {
        const codi_layer *L = &m->layers[l];
        const codi_weight *lw[] = {&L->wq, &L->wo, &L->w_gate, &L->w_down};
        for (int i = 0; i < 4; i++) {
            const codi_type_traits *t = codi_type_get(lw[i]->type);
            qrow = CODI_MAX(qrow, codi_row_size(t->vec_dot_type, (int64_t)wide));
        }
    }
    c->xq_stride = (qrow + 63) & ~(size_t)63;
    c->xq = xaligned(B * c->xq_stride);
    c->scores = xaligned((size_t)p.n_threads * ATT_G * (size_t)p.n_ctx * sizeof(float));
    c->probs16 = xaligned((size_t)p.n_threads * ATT_G * (size_t)p.n_ctx * sizeof(uint16_t));
    c->rope_theta = xaligned((size_t)hp->n_rot * sizeof(float));
    c->logits_cap = 1;
    c->logits = xaligned((size_t)hp->n_vocab * sizeof(float));
    c->n_past = calloc((size_t)p.n_seq, sizeof(int32_t));
    c->seq_first = calloc((size_t)p.n_seq, sizeof(int32_t));
    c->row_pos = calloc(B, sizeof(int32_t));
    c->row_seq = calloc(B, sizeof(int32_t));
    c->out_idx = calloc(B, sizeof(int32_t));
    c->logit_row_cap = B;
    c->logit_row = calloc(B, sizeof(int32_t));
    c->pool = codi_threadpool_create(p.n_threads);
    if (!c->kc || !c->vc || !c->x || !c->xn || !c->q || !c->k || !c->v ||
        !c->att || !c->g || !c->u || !c->xq || !c->scores || !c->probs16 || !c->rope_theta ||
        !c->logits || !c->n_past || !c->seq_first || !c->row_pos || !c->row_seq ||
        !c->out_idx || !c->logit_row || !c->pool) {
        codi_context_free(c);
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "out of memory creating a context of %d tokens", p.n_ctx);
    }
    /* theta_i = base^(-2i/n_rot), computed the way ggml does (repeated
     * multiplication in float) so positions match llama.cpp closely. */
    for (int s = 0; s < 2; s++) {
        const float base = s ? hp->rope_base_swa : hp->rope_base;
        const float theta_scale = powf(base, -2.0f / (float)hp->n_rot);
        float th = 1.0f;
        for (int i = 0; i < hp->n_rot / 2; i++) {
            c->rope_theta[s * (hp->n_rot / 2) + i] = th;
            th *= theta_scale;
        }
    }
    *out = c;
    return 0;
}

void codi_context_free(codi_context *c) {
    if (!c)
        return;
    codi_threadpool_free(c->pool);
    free(c->kc);
    free(c->vc);
    free(c->x);
    free(c->xn);
    free(c->q);
    free(c->k);
    free(c->v);
    free(c->att);
    free(c->g);
    free(c->u);
    free(c->xq);
    free(c->scores);
    free(c->probs16);
    free(c->rope_theta);
    free(c->logits);
    free(c->n_past);
    free(c->seq_first);
    free(c->row_pos);
    free(c->row_seq);
    free(c->out_idx);
    free(c->logit_row);
    free(c);
}

int32_t codi_context_n_ctx(const codi_context *c) { return c->n_ctx; }

void codi_kv_seq_truncate(codi_context *c, int32_t seq, int32_t pos) {
    if (!c || seq < 0 || seq >= c->n_seq)
        return;
    if (pos < 0)
        pos = 0;
    if (pos < c->n_past[seq])
        c->n_past[seq] = pos;
}

void codi_kv_truncate(codi_context *c, int32_t pos) { codi_kv_seq_truncate(c, 0, pos); }

int32_t codi_context_n_seq(const codi_context *c) { return c ? c->n_seq : 0; }

int32_t codi_kv_seq_len(const codi_context *c, int32_t seq) {
    if (!c || seq < 0 || seq >= c->n_seq)
        return 0;
    return c->n_past[seq];
}

/* K or V cache of one sequence and layer: n_ctx * kv_dim elements. */
static uint16_t *kv_at(const codi_context *c, uint16_t *base, int seq, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    return base + ((size_t)seq * hp->n_layer + (size_t)layer) * (size_t)c->n_ctx * dkv;
}

/* ------------------------------------------------------------ matmul */

typedef struct {
    int n_w;
    const codi_weight *w[MAX_FUSED];
    float *y[MAX_FUSED];    /* y[i][b * ne1 + r] */
    codi_vec_dot_fn dot[MAX_FUSED];
    codi_gemm_fn gemm[MAX_FUSED]; /* NULL: vec_dot per pair */
    const void *xq;         /* quantized activations, B rows */
    size_t xq_stride;
    int B;
    int rows, cols;         /* chunk: rows of one weight x cols tokens */
    int rchunks[MAX_FUSED + 1]; /* prefix sums of row chunks per weight */
    int n_chunks;
    atomic_int next;        /* next chunk to take (dynamic scheduling: a
                               thread the OS preempts holds up nobody) */
} matmul_job;

static void matmul_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    matmul_job *j = arg;
    const int n_rch = j->rchunks[j->n_w];
    for (;;) {
        const int ch = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (ch >= j->n_chunks)
            break;
        const int rc = ch % n_rch, cc = ch / n_rch;
        int i = 0;
        while (rc >= j->rchunks[i + 1])
            i++;
        const codi_weight *w = j->w[i];
        const int64_t r0 = (int64_t)(rc - j->rchunks[i]) * j->rows;
        const int nr = (int)CODI_MIN((int64_t)j->rows, w->ne1 - r0);
        const int c0 = cc * j->cols, nc = CODI_MIN(j->cols, j->B - c0);
        const uint8_t *wr = (const uint8_t *)w->data + (size_t)r0 * w->row_bytes;
        const uint8_t *xr = (const uint8_t *)j->xq + (size_t)c0 * j->xq_stride;
        float *yr = j->y[i] + (size_t)c0 * w->ne1 + r0;
        if (j->gemm[i] && nc > 1) /* one token: vec_dot is faster (bench/gemm_bench.c) */
            j->gemm[i](w->ne0, nr, nc, wr, w->row_bytes, xr, j->xq_stride, yr, (size_t)w->ne1);
        else
            codi_gemm_generic(j->dot[i], w->ne0, nr, nc, wr, w->row_bytes, xr, j->xq_stride, yr,
                              (size_t)w->ne1);
    }
}

typedef struct {
    const float *x;
    int64_t n;
    int B;
    void *xq;
    size_t xq_stride;
    codi_from_float_fn q;
    atomic_int next; /* next row to quantize (see threadpool.h) */
} quant_job;

static void quant_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    quant_job *j = arg;
    for (int b; (b = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->B;)
        j->q(j->x + (size_t)b * j->n, (uint8_t *)j->xq + (size_t)b * j->xq_stride, j->n);
}

/* y_i = W_i x for every token row of x (B rows of n_in floats). All W_i
 * share in-features and activation type. */
static void matmul(codi_context *c, int n_w, const codi_weight *const *w,
                   float *const *y, const float *x, int B) {
    const codi_type_traits *t = codi_type_get(w[0]->type);
    const int vdt = t->vec_dot_type;
    matmul_job j = {.n_w = n_w, .B = B, .xq_stride = c->xq_stride};
    /* Decode (one token): chunks of 32 rows; prefill: 16 rows x 64 tokens,
     * so a chunk's weights and activations stay in L1/L2. */
    j.rows = B == 1 ? 32 : 16;
    j.cols = B == 1 ? 1 : 64;
    j.rchunks[0] = 0;
    for (int i = 0; i < n_w; i++) {
        j.w[i] = w[i];
        j.y[i] = y[i];
        j.dot[i] = codi_kernel_vec_dot(w[i]->type);
        j.gemm[i] = codi_kernel_gemm(w[i]->type);
        CODI_ASSERT(codi_type_get(w[i]->type)->vec_dot_type == vdt);
        j.rchunks[i + 1] = j.rchunks[i] + (int)((w[i]->ne1 + j.rows - 1) / j.rows);
    }
    j.n_chunks = j.rchunks[n_w] * ((B + j.cols - 1) / j.cols);
    atomic_init(&j.next, 0);
    if (vdt == CODI_TYPE_F32) {
        j.xq = x;
        j.xq_stride = (size_t)w[0]->ne0 * sizeof(float);
    } else if (B == 1) {
        /* one row: quantize here rather than pay a pool round trip */
        codi_kernel_from_float(vdt)(x, c->xq, w[0]->ne0);
        j.xq = c->xq;
    } else {
        quant_job qj = {x, w[0]->ne0, B, c->xq, c->xq_stride, codi_kernel_from_float(vdt), 0};
        CODI_ASSERT(qj.q != NULL);
        codi_threadpool_run(c->pool, quant_task, &qj);
        j.xq = c->xq;
    }
    codi_threadpool_run(c->pool, matmul_task, &j);
}

static void matmul1(codi_context *c, const codi_weight *w, float *y,
                    const float *x, int B) {
    const codi_weight *ws[1] = {w};
    float *ys[1] = {y};
    matmul(c, 1, ws, ys, x, B);
}

/* ------------------------------------------------------------ attention */

typedef struct {
    codi_context *c;
    int layer, B;
    atomic_int next; /* next (token, head) item (see threadpool.h) */
} attn_job;

/* Rotate n_heads heads of v by the angles in cs/sn (one entry per pair). */
static void rope_apply(const codi_hparams *hp, float *v, int n_heads, const float *cs,
                       const float *sn) {
    const int hd = hp->head_dim, half = hp->n_rot / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * hd;
        for (int i = 0; i < half; i++) {
            int i0, i1;
            if (hp->rope_neox) {
                i0 = i;
                i1 = i + half;
            } else {
                i0 = 2 * i;
                i1 = 2 * i + 1;
            }
            const float x0 = x[i0], x1 = x[i1];
            x[i0] = x0 * cs[i] - x1 * sn[i];
            x[i1] = x0 * sn[i] + x1 * cs[i];
        }
    }
}

/* RoPE of one token's queries and keys: the angles are computed once and
 * shared by every head. */
static void rope_qk(const codi_context *c, const codi_layer *L, float *q, float *k, int pos) {
    const codi_hparams *hp = &c->m->hp;
    const int half = hp->n_rot / 2;
    const float p = (float)pos * L->rope_freq_scale;
    const float *rope_theta = c->rope_theta + (L->swa ? half : 0);
    float cs[512], sn[512]; /* n_rot <= head_dim <= 1024 (loader) */
    for (int i = 0; i < half; i++) {
        const float theta = p * rope_theta[i];
        cs[i] = cosf(theta);
        sn[i] = sinf(theta);
    }
    rope_apply(hp, q, hp->n_head, cs, sn);
    rope_apply(hp, k, hp->n_head_kv, cs, sn);
}

static void attn_task(void *arg, int ith, int nth) {
    (void)nth;
    attn_job *j = arg;
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, nh = hp->n_head, gqa = hp->n_head / hp->n_head_kv;
    const size_t dq = (size_t)nh * hd, nc = (size_t)c->n_ctx;
    /* Gemma 3 scales the queries before attention (forward_batch). */
    const float scale = hp->arch_id == CODI_ARCH_GEMMA3 ? 1.0f : hp->attn_scale;
    const bool swa = c->m->layers[j->layer].swa && hp->n_swa > 0;
    float *scb = c->scores + (size_t)ith * ATT_G * nc;
    uint16_t *pb = c->probs16 + (size_t)ith * ATT_G * nc;
    /* Work item: one token and up to ATT_G query heads sharing a KV head,
     * so each K and V row is loaded and converted once for all of them. */
    const int ng = (gqa + ATT_G - 1) / ATT_G, per_tok = hp->n_head_kv * ng;
    const int total = j->B * per_tok;
    for (int w; (w = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < total;) {
        const int b = w / per_tok, kh = (w % per_tok) / ng;
        const int h0 = kh * gqa + (w % ng) * ATT_G, G = CODI_MIN(ATT_G, kh * gqa + gqa - h0);
        const int n_kv = c->row_pos[b] + 1; /* causal: positions 0..pos */
        /* sliding window: keys at pos - t >= n_swa are masked (llama.cpp's
         * LLAMA_SWA_TYPE_STANDARD), i.e. only t0..pos take part */
        const int t0 = swa ? CODI_MAX(0, n_kv - hp->n_swa) : 0, n = n_kv - t0;
        const uint16_t *kl = kv_at(c, c->kc, c->row_seq[b], j->layer) + (size_t)kh * hd * nc;
        const uint16_t *vl = kv_at(c, c->vc, c->row_seq[b], j->layer) + (size_t)kh * hd * nc;
        /* llama.cpp (flash attention off) multiplies the fp16 cache with
         * fp16-rounded queries and fp16-rounded attention weights; round
         * the same way. */
        float q32[ATT_G * 1024];
        const uint16_t *pp[ATT_G];
        for (int g = 0; g < G; g++) {
            const float *qs = c->q + (size_t)b * dq + (size_t)(h0 + g) * hd;
            for (int i = 0; i < hd; i++)
                q32[g * hd + i] = codi_fp16_to_fp32(codi_fp32_to_fp16(qs[i]));
            pp[g] = pb + (size_t)g * nc;
        }
        codi_attn_scores_f16(q32, G, hd, kl + t0, nc, n, scb, nc, scale);
        for (int g = 0; g < G; g++) {
            codi_softmax_inplace(scb + (size_t)g * nc, n);
            codi_fp32_to_fp16_row(scb + (size_t)g * nc, pb + (size_t)g * nc, n);
        }
        /* o[i] = sum_t p_t v_t[i]: one fp16 dot per output dimension over
         * the transposed V rows, in llama.cpp's order. */
        float *o = c->att + (size_t)b * dq + (size_t)h0 * hd;
        for (int i = 0; i < hd; i++) {
            float s[ATT_G];
            codi_dot_f16_multi(n, s, vl + (size_t)i * nc + t0, pp, G);
            for (int g = 0; g < G; g++)
                o[(size_t)g * hd + i] = s[g];
        }
    }
}

/* ------------------------------------------------------------ forward */

/* matmul() for weights that may not share an activation type (mixed-type
 * files such as Q4_K_M put a Q8_0 V next to a Q5_0 Q): one call per
 * weight then. */
static void matmul_mixed(codi_context *c, int n_w, const codi_weight *const *w,
                         float *const *y, const float *x, int B) {
    const int vdt = codi_type_get(w[0]->type)->vec_dot_type;
    bool same = true;
    for (int i = 1; i < n_w; i++)
        same = same && codi_type_get(w[i]->type)->vec_dot_type == vdt;
    if (same) {
        matmul(c, n_w, w, y, x, B);
        return;
    }
    for (int i = 0; i < n_w; i++)
        matmul1(c, w[i], y[i], x, B);
}

/* ggml's CPU gelu (tanh approximation) reads an fp16 table: the input is
 * rounded to fp16, the result is stored as fp16. */
static float gelu_ggml(float x) {
    if (x <= -10.0f)
        return 0.0f;
    if (x >= 10.0f)
        return x;
    const float f = codi_fp16_to_fp32(codi_fp32_to_fp16(x));
    const float g = 0.5f * f * (1.0f + tanhf(0.79788456080286535587989211986876f * f *
                                             (1.0f + 0.044715f * f * f)));
    return codi_fp16_to_fp32(codi_fp32_to_fp16(g));
}

static void add_bias(float *y, const float *bias, int B, size_t n) {
    if (!bias)
        return;
    for (int b = 0; b < B; b++)
        for (size_t i = 0; i < n; i++)
            y[(size_t)b * n + i] += bias[i];
}

/* Per-head RMS norm of B rows of n_heads * head_dim (Qwen3, Gemma 3). */
static void head_norm(float *x, const float *w, int B, int n_heads,
                      const codi_hparams *hp) {
    if (!w)
        return;
    for (int r = 0; r < B * n_heads; r++) {
        float *v = x + (size_t)r * hp->head_dim;
        codi_rmsnorm(v, v, w, hp->head_dim, hp->norm_eps);
    }
}

/* ------------------------------------------------------------ row ops */

/* The small per-token ops between the matrix products (norms, bias, RoPE,
 * KV store, activation, residual), fused so each token's activations are
 * read once per step, and shared out over the pool by rows for a batch. */
typedef struct rows_job rows_job;
typedef void (*row_fn)(const rows_job *j, int b);
struct rows_job {
    codi_context *c;
    int layer, B;
    const int32_t *tokens;
    row_fn fn;
    atomic_int next;
};

static void rows_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    rows_job *j = arg;
    for (int b; (b = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->B;)
        j->fn(j, b);
}

static void for_rows(codi_context *c, int layer, int B, const int32_t *tokens, row_fn fn) {
    rows_job j = {c, layer, B, tokens, fn, 0};
    if (B < 4) { /* a pool round trip costs more than the work */
        for (int b = 0; b < B; b++)
            fn(&j, b);
        return;
    }
    codi_threadpool_run(c->pool, rows_task, &j);
}

/* embedding (scaled for Gemma) and layer 0's attention norm */
static void row_embed(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_model *m = c->m;
    const codi_hparams *hp = &m->hp;
    const int d = hp->n_embd;
    float *x = c->x + (size_t)b * d;
    codi_kernel_to_float(m->tok_embd.type)(
        (const uint8_t *)m->tok_embd.data + (size_t)j->tokens[b] * m->tok_embd.row_bytes, x, d);
    if (hp->embd_scale != 1.0f)
        for (int i = 0; i < d; i++)
            x[i] *= hp->embd_scale;
    codi_rmsnorm(c->xn + (size_t)b * d, x, m->layers[0].attn_norm, d, hp->norm_eps);
}

/* Q/K/V bias, Q/K norms, RoPE, Gemma's query scale, K/V into the cache */
static void row_qkv(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const codi_layer *L = &c->m->layers[j->layer];
    const size_t dq = (size_t)hp->n_head * hp->head_dim, dkv = (size_t)hp->n_head_kv * hp->head_dim;
    float *q = c->q + (size_t)b * dq, *k = c->k + (size_t)b * dkv, *v = c->v + (size_t)b * dkv;
    add_bias(q, L->bq, 1, dq);
    add_bias(k, L->bk, 1, dkv);
    add_bias(v, L->bv, 1, dkv);
    head_norm(q, L->attn_q_norm, 1, hp->n_head, hp);
    head_norm(k, L->attn_k_norm, 1, hp->n_head_kv, hp);
    const int p = c->row_pos[b];
    rope_qk(c, L, q, k, p);
    if (hp->arch_id == CODI_ARCH_GEMMA3)
        for (size_t i = 0; i < dq; i++)
            q[i] *= hp->attn_scale;
    uint16_t *kd = kv_at(c, c->kc, c->row_seq[b], j->layer) + (size_t)p;
    uint16_t *vd = kv_at(c, c->vc, c->row_seq[b], j->layer) + (size_t)p;
    for (size_t i = 0; i < dkv; i++) {
        kd[i * (size_t)c->n_ctx] = codi_fp32_to_fp16(k[i]);
        vd[i * (size_t)c->n_ctx] = codi_fp32_to_fp16(v[i]);
    }
}

/* attention output: post-norm (Gemma), residual, FFN norm */
static void row_attn_out(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const codi_layer *L = &c->m->layers[j->layer];
    const int d = hp->n_embd;
    float *x = c->x + (size_t)b * d, *xn = c->xn + (size_t)b * d;
    if (L->attn_post_norm)
        codi_rmsnorm(xn, xn, L->attn_post_norm, d, hp->norm_eps);
    for (int i = 0; i < d; i++)
        x[i] += xn[i];
    codi_rmsnorm(xn, x, L->ffn_norm, d, hp->norm_eps);
}

/* gate activation times up: SwiGLU or GeGLU */
static void row_act(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const size_t ff = (size_t)hp->n_ff;
    float *g = c->g + (size_t)b * ff;
    const float *u = c->u + (size_t)b * ff;
    if (hp->ffn_act == CODI_ACT_GELU) {
        for (size_t i = 0; i < ff; i++)
            g[i] = gelu_ggml(g[i]) * u[i];
    } else {
        for (size_t i = 0; i < ff; i++) {
            const float gv = g[i];
            g[i] = gv / (1.0f + expf(-gv)) * u[i];
        }
    }
}

/* FFN output: post-norm (Gemma), residual, the next layer's attention norm */
static void row_ffn_out(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const codi_layer *L = &c->m->layers[j->layer];
    const int d = hp->n_embd;
    float *x = c->x + (size_t)b * d, *xn = c->xn + (size_t)b * d;
    if (L->ffn_post_norm)
        codi_rmsnorm(xn, xn, L->ffn_post_norm, d, hp->norm_eps);
    for (int i = 0; i < d; i++)
        x[i] += xn[i];
    if (j->layer + 1 < hp->n_layer)
        codi_rmsnorm(xn, x, c->m->layers[j->layer + 1].attn_norm, d, hp->norm_eps);
}

/* One pass over B <= n_batch tokens at positions c->row_pos[] of sequences
 * c->row_seq[]; logits of the n_out rows c->out_idx[] go to logits. */
static void forward_batch(codi_context *c, const int32_t *tokens, int B,
                          int n_out, float *logits) {
    const codi_model *m = c->m;
    const codi_hparams *hp = &m->hp;
    const int d = hp->n_embd;
    for_rows(c, 0, B, tokens, row_embed);
    for (int l = 0; l < hp->n_layer; l++) {
        const codi_layer *L = &m->layers[l];
        {
            const codi_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {c->q, c->k, c->v};
            matmul_mixed(c, 3, ws, ys, c->xn, B);
        }
        for_rows(c, l, B, tokens, row_qkv);
        attn_job aj = {c, l, B, 0};
        codi_threadpool_run(c->pool, attn_task, &aj);
        matmul1(c, &L->wo, c->xn, c->att, B);
        for_rows(c, l, B, tokens, row_attn_out);
        {
            const codi_weight *ws[2] = {&L->w_gate, &L->w_up};
            float *ys[2] = {c->g, c->u};
            matmul_mixed(c, 2, ws, ys, c->xn, B);
        }
        for_rows(c, l, B, tokens, row_act);
        matmul1(c, &L->w_down, c->xn, c->g, B);
        for_rows(c, l, B, tokens, row_ffn_out);
    }
    if (n_out > 0) {
        for (int r = 0; r < n_out; r++)
            codi_rmsnorm(c->xn + (size_t)r * d, c->x + (size_t)c->out_idx[r] * d,
                         m->out_norm, d, hp->norm_eps);
        matmul1(c, &m->output, logits, c->xn, n_out);
        add_bias(logits, m->output_b, n_out, (size_t)hp->n_vocab);
        const float cap = hp->final_logit_softcap;
        if (cap > 0.0f)
            for (size_t i = 0; i < (size_t)n_out * hp->n_vocab; i++)
                logits[i] = cap * tanhf(logits[i] * (1.0f / cap)); /* as ggml_scale */
    }
}

/* Validate a batch against the cache (nothing is changed on error). */
static int check_batch(codi_context *c, const codi_batch *bt, char *err, size_t errlen) {
    const int32_t nv = c->m->hp.n_vocab;
    for (int32_t s = 0; s < c->n_seq; s++)
        c->seq_first[s] = -1; /* next expected position, -1 = not seen */
    for (int32_t i = 0; i < bt->n; i++) {
        const int32_t tok = bt->token[i], p = bt->pos[i], s = bt->seq ? bt->seq[i] : 0;
        if (tok < 0 || tok >= nv)
            return codi_errorf(err, errlen, CODI_ERANGE,
                               "token id %d out of range (vocabulary has %d)", tok, nv);
        if (s < 0 || s >= c->n_seq)
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "sequence %d out of range (context has %d)", s, c->n_seq);
        if (p < 0 || p >= c->n_ctx)
            return codi_errorf(err, errlen, CODI_ERANGE,
                               "position %d exceeds the context size %d", p, c->n_ctx);
        if (c->seq_first[s] < 0) {
            if (p > c->n_past[s])
                return codi_errorf(err, errlen, CODI_EINVAL,
                                   "codi_decode: position %d is past the %d cached tokens", p,
                                   c->n_past[s]);
        } else if (p != c->seq_first[s]) {
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "batch token %d: sequence %d expects position %d, got %d", i, s,
                               c->seq_first[s], p);
        }
        c->seq_first[s] = p + 1;
    }
    return 0;
}

/* Evaluate n tokens in passes of n_batch. Token i is at position
 * pos ? pos[i] : pos0 + i of sequence seq ? seq[i] : 0; its logits are kept
 * when keep ? keep[i] : (all || i == n - 1). Arguments already checked. */
static int decode_rows(codi_context *c, const int32_t *tokens, int32_t n,
                       const int32_t *pos, int32_t pos0, const int32_t *seq,
                       const bool *keep, bool all, char *err, size_t errlen) {
    const int32_t nv = c->m->hp.n_vocab;
#define ROW_POS(i) (pos ? pos[i] : pos0 + (i))
#define ROW_SEQ(i) (seq ? seq[i] : 0)
#define ROW_KEEP(i) (keep ? keep[i] : (all || (i) == n - 1))
    size_t need = 0;
    for (int32_t i = 0; i < n; i++)
        need += ROW_KEEP(i) ? 1 : 0;
    if (need > c->logits_cap) {
        float *nl = xaligned(need * (size_t)nv * sizeof(float));
        if (!nl)
            return codi_errorf(err, errlen, CODI_ENOMEM,
                               "out of memory for the logits of %zu tokens", need);
        free(c->logits);
        c->logits = nl;
        c->logits_cap = need;
    }
    if ((size_t)n > c->logit_row_cap) {
        int32_t *nr = malloc((size_t)n * sizeof(int32_t));
        if (!nr)
            return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory for a batch of %d tokens", n);
        free(c->logit_row);
        c->logit_row = nr;
        c->logit_row_cap = (size_t)n;
    }
    /* Overwrite any suffix beyond each sequence's first position. */
    for (int32_t i = 0; i < n; i++)
        if (ROW_POS(i) < c->n_past[ROW_SEQ(i)])
            c->n_past[ROW_SEQ(i)] = ROW_POS(i);
    size_t row = 0;
    for (int32_t s0 = 0; s0 < n; s0 += c->n_batch) {
        const int B = (int)CODI_MIN(c->n_batch, n - s0);
        int n_out = 0;
        for (int b = 0; b < B; b++) {
            const int32_t i = s0 + b;
            c->row_pos[b] = ROW_POS(i);
            c->row_seq[b] = ROW_SEQ(i);
            c->logit_row[i] = ROW_KEEP(i) ? (int32_t)(row + (size_t)n_out) : -1;
            if (ROW_KEEP(i))
                c->out_idx[n_out++] = b;
        }
        forward_batch(c, tokens + s0, B, n_out, c->logits + row * (size_t)nv);
        row += (size_t)n_out;
        for (int b = 0; b < B; b++)
            c->n_past[c->row_seq[b]] = CODI_MAX(c->n_past[c->row_seq[b]], c->row_pos[b] + 1);
    }
#undef ROW_POS
#undef ROW_SEQ
#undef ROW_KEEP
    c->n_last = n;
    c->has_logits = true;
    return 0;
}

int codi_decode_batch(codi_context *c, const codi_batch *bt, char *err, size_t errlen) {
    if (!c || !bt || !bt->token || !bt->pos || bt->n <= 0)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_decode: no tokens");
    int rc = check_batch(c, bt, err, errlen);
    if (rc)
        return rc;
    return decode_rows(c, bt->token, bt->n, bt->pos, 0, bt->seq, bt->logits, false, err, errlen);
}

int codi_decode(codi_context *c, const int32_t *tokens, int32_t n, int32_t pos,
                bool logits_all, char *err, size_t errlen) {
    if (!c || !tokens || n <= 0)
        return codi_errorf(err, errlen, CODI_EINVAL, "codi_decode: no tokens");
    if (pos < 0 || pos > c->n_past[0])
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "codi_decode: position %d is past the %d cached tokens", pos, c->n_past[0]);
    if ((int64_t)pos + n > c->n_ctx)
        return codi_errorf(err, errlen, CODI_ERANGE,
                           "%d tokens at position %d exceed the context size %d",
                           n, pos, c->n_ctx);
    const int32_t nv = c->m->hp.n_vocab;
    for (int32_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= nv)
            return codi_errorf(err, errlen, CODI_ERANGE,
                               "token id %d out of range (vocabulary has %d)", tokens[i], nv);
    return decode_rows(c, tokens, n, NULL, pos, NULL, NULL, logits_all, err, errlen);
}

const float *codi_get_logits(const codi_context *c, int32_t i) {
    if (!c || !c->has_logits)
        return NULL;
    if (i < 0)
        i = c->n_last + i;
    if (i < 0 || i >= c->n_last)
        return NULL;
    const int32_t r = c->logit_row[i];
    if (r < 0)
        return NULL;
    return c->logits + (size_t)r * c->m->hp.n_vocab;
}
