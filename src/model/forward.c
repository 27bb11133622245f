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
#include <time.h>
#include <unistd.h>

#include "common.h"
#include "kernels/gemm.h"
#include "kernels/repack.h"
#include "quant/mix.h"
#include "kernels/kernels.h"
#include "kernels/kvcache.h"
#include "kernels/softmax.h"
#include "model/model.h"
#include "moe/expert_store.h"
#include "tensor/types.h"

#define MAX_FUSED 16 /* weights one matmul() call runs together */
#define ATT_G 3 /* query heads of one KV head that attention handles together */
#define ATT_T 4 /* query tokens per attention work item in a prefill (fp16 KV) */
#define ATT_TMAX 8 /* the most CODI_ATTN_TILE may ask for */
#define ATT_T_ONLINE 8 /* the same with flash_attn: the scratch no longer grows with it */
#define ATT_ONLINE_DEFAULT 0 /* flash_attn -1: prefill tiles online? (docs/kernels.md) */

struct codi_context {
    codi_model *m;
    int32_t n_ctx, n_batch, n_threads, n_seq;
    codi_threadpool *pool;
    codi_matmul_observer observer; /* calibration hook (model.h), or NULL */
    void *observer_user;
    /* KV cache: per sequence and layer, kv_dim rows (channels) of kv_cap
     * slots, transposed (scores for 8 keys per vector, no horizontal sums;
     * V as llama.cpp stores it without flash attention). Without a budget
     * slot = position. Rows hold fp16 values or q8/q4 codes (kvcache.h). */
    int kv_type, kv_bits; /* 16, 8 or 4 */
    int32_t kv_cap;       /* slots per sequence and layer */
    int kv_gs;            /* channels per scale group (q8/q4) */
    size_t kv_row;        /* bytes per row */
    uint8_t *kc, *vc;     /* [n_seq][n_layer][kv_dim] rows */
    uint16_t *ksc, *kmn, *vsc, *vmn; /* [n_seq][n_layer][kv_dim/gs][kv_cap] */
    float *smooth;        /* [n_layer][kv_dim] key smoothing scales or NULL */
    float *kshift;        /* [n_layer][kv_dim] key centre subtracted (with smooth) */
    float *kstat;         /* [2][n_layer][kv_dim] K minima, maxima while calibrating */
    /* Keys per channel (kv_kch, KIVI; kvcache.h codi_attn_scores_kvc):
     * then ksc/kmn are [n_seq][n_layer][kv_ngc][kv_dim], one scale and
     * minimum per channel and group of CODI_KVC_G slots. A group is
     * quantized when its last slot is stored; until then its keys stay
     * exact in kstage, and a query reads the groups that end inside its
     * causal range from codes and the rest exactly. */
    bool kv_kch;
    int32_t kv_ngc;       /* groups of CODI_KVC_G slots per row */
    float *kstage;        /* [n_seq][n_layer][kv_dim][CODI_KVC_G] open group */
    int32_t *kch_done;    /* [n_seq][n_layer] groups quantized */
    int32_t *pass_rows;   /* [n_batch] the pass's rows by sequence, in order */
    int32_t *pass_off;    /* [n_seq + 1] each sequence's part of pass_rows */
    /* token budget (kv_budget > 0) */
    int32_t kv_budget, kv_window, kv_sinks, kv_policy;
    float kv_decay;       /* importance decay per query (ALISA), 1 (H2O) */
    int32_t *slot_pos;    /* [n_seq][n_layer][n_head_kv][kv_cap] position of
                             each slot: every KV head keeps its own tokens */
    int32_t *n_slots;     /* [n_seq][n_layer] slots in use */
    float *imp;           /* [n_seq][n_layer][kv_cap] attention importance */
    int64_t *imp_th;      /* [n_threads][n_seq][n_head_kv][kv_cap] this pass's
                             share, fixed point (codi_imp_accumulate) */
    float *vnorm;         /* alisa: [n_seq][n_layer][n_head_kv][kv_cap] |v| of
                             each slot, the weight of its attention */
    int32_t *ev_idx;      /* [n_threads][kv_cap] eviction scratch */
    float *ev_key;        /* [n_threads][kv_cap] (window: positions) */
    int32_t *kh_slots;    /* [n_head_kv] truncation scratch */
    uint8_t *ev_mark;     /* [n_threads][kv_cap] */
    int64_t n_evicted;    /* slot entries evicted, all layers */
    float *vtmp;          /* [n_threads][ATT_G][kv_cap] q8/q4 V scratch */
    /* Recomputation (kv_recompute > 0, kv_recompute_seq): every
     * kv_recompute tokens a sequence gains, its budgeted cache is rebuilt
     * from its token ids layer by layer with full causal attention; only
     * one layer's K/V of the whole history exists at a time. */
    int32_t kv_recompute;
    int32_t *tok_hist;    /* [n_seq][n_ctx] token id at each position */
    int32_t *rc_last;     /* [n_seq] cached length at the last rebuild */
    float *rc_h;          /* [n_ctx][n_embd] hidden states of the history */
    uint16_t *rc_k, *rc_v;/* [kv_dim][n_ctx] one layer's K (after RoPE)
                             and V of every position, fp16, transposed */
    int64_t *rc_imp;      /* [n_threads][n_head_kv][n_ctx] importance, per
                             thread, fixed point (codi_imp_accumulate) */
    float *rc_key;        /* [n_head_kv][n_ctx] the sum, as floats */
    float *rc_vn;         /* alisa: [n_head_kv][n_ctx] |v| per position */
    int32_t *rc_idx;      /* [n_ctx] selection scratch */
    uint8_t *rc_mark;     /* [n_ctx] kept before (1) / after (2) a rebuild */
    float *rc_sc;         /* [n_threads][ATT_T * ATT_G][n_ctx] scores */
    uint16_t *rc_p16;     /* [n_threads][n_ctx] one row's fp16 weights */
    float *rc_q;          /* [n_threads][ATT_T * ATT_G][head_dim] queries */
    uint64_t rc_bytes;
    int64_t rc_count, rc_restored; /* rebuilds; slots restored, all layers */
    double rc_seconds;
    int32_t *row_slot, *row_rank; /* [n_batch] slot in the current layer,
                                     rank among its sequence's rows */
    int32_t *seq_cnt, *seq_last;  /* [n_seq] rows and last position per
                                     sequence in the current pass */
    uint64_t kv_bytes, scratch_bytes;
    int32_t *n_past;   /* [n_seq] tokens cached per sequence */
    int32_t *row_pos, *row_seq; /* [n_batch] of the pass being evaluated */
    int32_t *seq_first;         /* [n_seq] scratch for batch validation */
    /* scratch for n_batch tokens */
    float *x, *xn, *q, *k, *v, *att, *g, *u;
    void *xq;
    size_t xq_stride; /* bytes per token row in xq */
    int att_tile;     /* query tokens per attention item (fp16 KV, no
                         budget; CODI_ATTN_TILE, 1 = one token per item) */
    bool att_online;  /* tiles by attn_tile_online (flash_attn) */
    int att_rows;     /* rows of scores/probs16 per thread: att_tile * ATT_G,
                         or ATT_G when tiles run online */
    int32_t *tile_b0; /* [n_batch + 1] first row of each tile of the pass */
    int n_tiles;
    float *qt;        /* [n_threads][att_tile * ATT_G][head_dim] fp16-rounded queries */
    float *scores;    /* [n_threads][att_rows][kv_cap] */
    uint16_t *probs16;/* [n_threads][att_rows][kv_cap] attention weights as fp16 */
    float *rope_theta;/* [2][n_rot/2] per-pair frequency: global layers,
                         then sliding-window layers (own rope base) */
    /* MoE scratch (n_expert > 0) */
    float *rl;            /* [n_batch][n_expert] router logits */
    int32_t *sel_e;       /* [n_batch][n_expert_used] chosen experts */
    float *sel_w;         /* [n_batch][n_expert_used] their weights */
    int32_t *ex_start;    /* [n_expert + 1] rows of each expert in ex_row */
    int32_t *ex_row;      /* [n_batch * n_expert_used] token rows by expert */
    float *ex_w;          /* [n_batch * n_expert_used] weights by expert */
    uint8_t *ex_need_route; /* [n_expert] top-k scratch */
    int32_t *ex_k;        /* [n_batch * n_expert_used] which choice of its
                             token each (expert, row) pair is */
    float *xe, *ye;       /* [n_batch][n_embd] gathered input, output */
    float *shy;           /* [n_batch][n_embd] the shared expert's output */
    float *g2, *u2, *ye2; /* bit-nested experts: the residual parts' outputs */
    int moe_bits;         /* 0 auto, 4, 8 (bit-nested experts) */
    int sl_mul;           /* store layers per model layer: 2 when nested
                             (2l: high parts, 2l + 1: residuals), else 1 */
    float *acc;           /* [n_batch][n_expert_used][n_embd] weighted expert
                             outputs, summed in choice order at the end (the
                             same sums whatever order the experts ran in) */
    int moe_mode;         /* enum codi_moe_mode */
    codi_expert_store *store; /* ondemand / prefetch: the expert cache */
    uint8_t *ex_need;     /* [n_expert] scratch flags */
    const void **ex_parts;/* [n_expert][3] parts of the experts pinned */
    int moe_look;         /* layers ahead that are pre-gated (0 ondemand) */
    uint8_t *pred;        /* [distance-1][n_layer][n_expert] experts predicted */
    uint8_t *pred_made;   /* [distance-1][n_layer] a prediction exists */
    float *rl2;           /* [n_batch][n_expert] pre-gate logits */
    float *rl_all;        /* [n_layer][n_batch][n_expert] decoupled router's
                             logits of every layer (router_src >= 0) */
    codi_moe_info moe;    /* counters kept here (the store keeps its own) */
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
    codi_context_params p = {.n_ctx = 0, .n_batch = 512, .n_threads = 0, .n_seq = 1,
                             .kv_type = CODI_KV_F16, .kv_smooth = -1, .kv_keys = CODI_KV_KEYS_DEFAULT, .kv_calib = NULL,
                             .kv_budget = 0, .kv_policy = CODI_KV_ALISA, .kv_window = 0,
                             .kv_sinks = -1, .kv_recompute = 0, .moe_mode = CODI_MOE_RESIDENT, .expert_budget = 0,
                             .expert_budget_pct = 0.0f, .expert_policy = CODI_EXPERT_EVICT_NEXT,
                             .io_threads = 0, .expert_direct = -1, .moe_lookahead = 0, .moe_bits = 0,
                             .flash_attn = -1};
    return p;
}

int codi_kv_type_from_name(const char *name) {
    if (!name)
        return -1;
    if (!strcmp(name, "f16"))
        return CODI_KV_F16;
    if (!strcmp(name, "q8"))
        return CODI_KV_Q8;
    if (!strcmp(name, "q4"))
        return CODI_KV_Q4;
    return -1;
}

void codi_moe_stats(const codi_context *c, codi_moe_info *out) {
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!c)
        return;
    *out = c->moe;
    if (c->store) {
        codi_expert_stats st;
        codi_expert_store_get_stats(c->store, &st);
        out->hits = st.hits;
        out->sync_loads = st.sync_loads;
        out->inflight_waits = st.inflight_hits;
        out->prefetches = st.prefetches;
        out->prefetch_used = st.prefetch_used;
        out->bytes_read = st.bytes_read;
        out->read_seconds = st.read_seconds;
        out->stall_seconds = st.stall_seconds;
        out->direct = st.direct;
        out->aio = st.aio_reads > 0;
    }
}

void codi_moe_reset(codi_context *c) {
    if (!c)
        return;
    const codi_moe_info keep = c->moe;
    memset(&c->moe, 0, sizeof(c->moe));
    c->moe.mode = keep.mode;
    c->moe.n_expert = keep.n_expert;
    c->moe.n_expert_used = keep.n_expert_used;
    c->moe.n_layer_moe = keep.n_layer_moe;
    c->moe.expert_bytes = keep.expert_bytes;
    c->moe.dense_bytes = keep.dense_bytes;
    c->moe.cache_bytes = keep.cache_bytes;
    c->moe.cache_slots = keep.cache_slots;
    c->moe.decoupled_router = keep.decoupled_router;
    c->moe.nested = keep.nested;
    if (c->store)
        codi_expert_store_reset_stats(c->store);
}

int codi_moe_layer_stalls(const codi_context *c, double *out, int cap) {
    if (!c || c->m->hp.n_expert <= 0)
        return 0;
    const int NL = c->m->hp.n_layer;
    for (int l = 0; out && l < NL && l < cap; l++) {
        out[l] = 0.0;
        for (int j = 0; c->store && j < c->sl_mul; j++) /* a nested layer's two halves */
            out[l] += codi_expert_store_layer_stall(c->store, l * c->sl_mul + j);
    }
    return NL;
}

int codi_moe_mode_from_name(const char *name) {
    static const char *const names[] = {"resident", "ondemand", "prefetch", "lookahead"};
    for (int i = 0; name && i < 4; i++)
        if (strcmp(name, names[i]) == 0)
            return i;
    return -1;
}

int codi_expert_policy_from_name(const char *name) {
    if (name && strcmp(name, "lru") == 0)
        return CODI_EXPERT_EVICT_LRU;
    if (name && strcmp(name, "lfu") == 0)
        return CODI_EXPERT_EVICT_LFU;
    if (name && strcmp(name, "next") == 0)
        return CODI_EXPERT_EVICT_NEXT;
    return -1;
}

int codi_kv_policy_from_name(const char *name) {
    if (!name)
        return -1;
    if (!strcmp(name, "alisa"))
        return CODI_KV_ALISA;
    if (!strcmp(name, "window"))
        return CODI_KV_WINDOW;
    if (!strcmp(name, "h2o"))
        return CODI_KV_H2O;
    return -1;
}

static void *xaligned(size_t bytes) {
    void *p = NULL;
    if (bytes == 0)
        bytes = 64;
    if (posix_memalign(&p, 64, (bytes + 63) & ~(size_t)63) != 0)
        return NULL;
    return p;
}

/* xaligned, counted into *total (memory accounting) */
static void *xalloc_n(size_t bytes, uint64_t *total) {
    *total += (bytes + 63) & ~(size_t)63;
    return xaligned(bytes);
}

static int calibrate_smoothing(codi_context *c, const char *text, char *err, size_t errlen);

/* Expert offloading of an MoE model: the expert store, sized by the budget
 * (at least one layer's active experts). */
static int moe_setup(codi_context *c, const codi_context_params *p, char *err, size_t errlen) {
    const codi_model *m = c->m;
    const codi_hparams *hp = &m->hp;
    c->moe_mode = p->moe_mode;
    c->moe.mode = p->moe_mode;
    c->moe.n_expert = hp->n_expert;
    c->moe.n_expert_used = hp->n_expert_used;
    c->moe.expert_bytes = m->expert_bytes;
    c->moe.dense_bytes = m->weight_bytes - m->expert_bytes;
    c->moe.decoupled_router = hp->router_src >= 0;
    c->moe.nested = hp->nested;
    c->moe_bits = hp->nested ? p->moe_bits : 4;
    c->sl_mul = hp->nested ? 2 : 1;
    const int NL = hp->n_layer;
    if (hp->n_expert > 0 && hp->router_src >= 0) {
        c->rl_all = malloc((size_t)NL * (size_t)c->n_batch * (size_t)hp->n_expert * sizeof(float));
        if (!c->rl_all)
            return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
        c->scratch_bytes += (uint64_t)NL * (uint64_t)c->n_batch * (uint64_t)hp->n_expert * sizeof(float);
    }
    if (hp->n_expert == 0 || p->moe_mode == CODI_MOE_RESIDENT)
        return 0;
    c->moe.n_layer_moe = NL;
    c->moe_look = p->moe_mode == CODI_MOE_PREFETCH    ? 1
                  : p->moe_mode == CODI_MOE_LOOKAHEAD ? (p->moe_lookahead > 0 ? p->moe_lookahead : 3)
                                                      : 0;
    const size_t MD = CODI_MOE_MAX_LOOKAHEAD;
    const int SL = NL * c->sl_mul; /* store layers */
    uint64_t *off = malloc((size_t)SL * 3 * sizeof(uint64_t));
    uint64_t *len = malloc((size_t)SL * 3 * sizeof(uint64_t));
    c->ex_need = calloc((size_t)hp->n_expert * 2, 1); /* flags, then pregate scratch */
    c->pred = calloc(MD * (size_t)NL * (size_t)hp->n_expert, 1);
    c->pred_made = calloc(MD * (size_t)NL, 1);
    c->rl2 = malloc((size_t)c->n_batch * (size_t)hp->n_expert * sizeof(float));
    c->ex_parts = malloc((size_t)hp->n_expert * 3 * sizeof(void *));
    if (!off || !len || !c->ex_need || !c->ex_parts || !c->pred || !c->pred_made || !c->rl2) {
        free(off);
        free(len);
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    }
    for (int l = 0; l < NL; l++)
        for (int i = 0; i < 3; i++) {
            const int s0 = l * c->sl_mul;
            off[s0 * 3 + i] = m->layers[l].exp_off[i];
            len[s0 * 3 + i] = m->layers[l].exp_stride[i];
            if (hp->nested) {
                off[(s0 + 1) * 3 + i] = m->layers[l].exp_lo_off[i];
                len[(s0 + 1) * 3 + i] = m->layers[l].exp_lo_stride[i];
            }
        }
    codi_expert_store_params sp = {
        .path = m->path, .n_layer = SL, .n_expert = hp->n_expert, .n_parts = 3,
        .part_off = off, .part_bytes = len, .n_slots = 0,
        .policy = p->expert_policy == CODI_EXPERT_EVICT_LFU    ? CODI_EXPERT_LFU
                  : p->expert_policy == CODI_EXPERT_EVICT_NEXT ? CODI_EXPERT_NEXTUSE
                                                               : CODI_EXPERT_LRU,
        .n_io_threads = p->moe_mode >= CODI_MOE_PREFETCH ? (p->io_threads > 0 ? p->io_threads : 2) : 0,
        .direct = p->expert_direct != 0};
    const uint64_t slot = codi_expert_store_slot_bytes(&sp);
    uint64_t budget = (uint64_t)p->expert_budget;
    if (budget == 0) {
        const double pct = p->expert_budget_pct > 0.0f ? p->expert_budget_pct : 100.0;
        budget = (uint64_t)((double)m->expert_bytes * pct / 100.0);
    }
    const int64_t all = (int64_t)SL * hp->n_expert;
    sp.n_slots = (int64_t)CODI_MIN((uint64_t)all, budget / slot);
    if (sp.n_slots < hp->n_expert_used) {
        free(off);
        free(len);
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "expert budget of %llu bytes is below one layer's %d active experts: "
                           "the minimum is %llu bytes (%.2f%% of the experts)",
                           (unsigned long long)budget, hp->n_expert_used,
                           (unsigned long long)(slot * (uint64_t)hp->n_expert_used),
                           100.0 * (double)(slot * (uint64_t)hp->n_expert_used) /
                               (double)m->expert_bytes);
    }
    int rc = codi_expert_store_open(&sp, &c->store, err, errlen);
    free(off);
    free(len);
    if (rc)
        return rc;
    c->moe.cache_bytes = codi_expert_store_cache_bytes(c->store);
    c->moe.cache_slots = sp.n_slots;
    return 0;
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
    if (p.kv_type < CODI_KV_F16 || p.kv_type > CODI_KV_Q4)
        return codi_errorf(err, errlen, CODI_EINVAL, "unknown KV cache type %d (f16, q8 or q4)", p.kv_type);
    if (p.kv_policy < CODI_KV_ALISA || p.kv_policy > CODI_KV_H2O)
        return codi_errorf(err, errlen, CODI_EINVAL, "unknown KV policy %d (alisa, window or h2o)", p.kv_policy);
    if (p.kv_budget < 0 || p.kv_window < 0 || p.kv_sinks < -1 || p.kv_recompute < 0)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "KV budget, window, sinks and recompute interval must not be negative");
    if (p.moe_mode < CODI_MOE_RESIDENT || p.moe_mode > CODI_MOE_LOOKAHEAD)
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "unknown MoE mode %d (resident, ondemand, prefetch or lookahead)", p.moe_mode);
    if (p.moe_bits != 0 && p.moe_bits != 4 && p.moe_bits != 8)
        return codi_errorf(err, errlen, CODI_EINVAL, "MoE expert bits must be 4, 8 or 0 (auto), not %d",
                           p.moe_bits);
    if (p.moe_lookahead < 0 || p.moe_lookahead > CODI_MOE_MAX_LOOKAHEAD)
        return codi_errorf(err, errlen, CODI_EINVAL, "MoE lookahead must be in [1, %d] layers",
                           CODI_MOE_MAX_LOOKAHEAD);
    if (p.expert_budget < 0 || !(p.expert_budget_pct >= 0.0f && p.expert_budget_pct <= 100.0f))
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "expert budget must be a positive size or a percentage in (0, 100]");
    if (p.expert_policy < CODI_EXPERT_EVICT_LRU || p.expert_policy > CODI_EXPERT_EVICT_NEXT)
        return codi_errorf(err, errlen, CODI_EINVAL, "unknown expert cache policy %d (lru, lfu or next)",
                           p.expert_policy);
    if (p.io_threads < 0 || p.io_threads > 64)
        return codi_errorf(err, errlen, CODI_EINVAL, "io_threads must be in [0, 64]");
    if (p.kv_smooth < -1 || p.kv_smooth > 1)
        return codi_errorf(err, errlen, CODI_EINVAL, "kv_smooth must be -1, 0 or 1");
    if (p.kv_smooth == 1 && p.kv_type == CODI_KV_F16)
        return codi_errorf(err, errlen, CODI_EINVAL, "key smoothing applies to q8/q4 KV caches, not f16");
    if (p.kv_keys < CODI_KV_KEYS_DEFAULT || p.kv_keys > CODI_KV_KEYS_CHANNEL)
        return codi_errorf(err, errlen, CODI_EINVAL, "unknown key grouping %d (token or channel)", p.kv_keys);
    if (p.kv_keys != CODI_KV_KEYS_DEFAULT && p.kv_type == CODI_KV_F16)
        return codi_errorf(err, errlen, CODI_EINVAL, "key grouping (--kv-keys) applies to q8/q4 KV caches, not f16");
    const int32_t sinks = p.kv_sinks < 0 ? 4 : p.kv_sinks;
    int32_t window = p.kv_window;
    if (p.kv_budget >= p.n_ctx)
        p.kv_budget = 0; /* the whole context fits: nothing to evict */
    if (p.kv_budget > 0) {
        if (window == 0)
            window = p.kv_policy == CODI_KV_WINDOW ? p.kv_budget - sinks : p.kv_budget / 2;
        if (p.kv_policy == CODI_KV_WINDOW ? (int64_t)window + sinks > p.kv_budget
                                          : (int64_t)window + sinks >= p.kv_budget)
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "KV budget %d is too small for a recent window of %d plus %d sink tokens%s",
                               p.kv_budget, window, sinks,
                               p.kv_policy == CODI_KV_WINDOW ? "" : " (and room for important tokens)");
        if (window < 1)
            return codi_errorf(err, errlen, CODI_EINVAL, "KV budget %d leaves no recent window", p.kv_budget);
        if (p.kv_keys == CODI_KV_KEYS_CHANNEL)
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "per-channel keys (--kv-keys channel) need a KV cache without a token budget: "
                               "evicting moves slots between their quantization groups");
    }
    if (p.kv_recompute > 0) {
        if (p.kv_budget == 0)
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "KV recomputation (--kv-recompute) needs a token budget (--kv-budget) "
                               "below the context size %d: without one nothing is evicted",
                               p.n_ctx);
        if (p.kv_recompute > p.n_ctx)
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "KV recompute interval %d is larger than the context size %d",
                               p.kv_recompute, p.n_ctx);
        if (hp->n_expert > 0)
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "KV recomputation (--kv-recompute) is not built for mixture-of-experts models");
    }

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
                 dkv = (size_t)hp->n_head_kv * hp->head_dim,
                 ff = (size_t)CODI_MAX(hp->n_ff, CODI_MAX(hp->n_ff_exp, hp->n_ff_shexp));
    const size_t NS = (size_t)p.n_seq, NL = (size_t)hp->n_layer;
    c->kv_type = p.kv_type;
    c->kv_bits = p.kv_type == CODI_KV_Q8 ? 8 : p.kv_type == CODI_KV_Q4 ? 4 : 16;
    c->kv_budget = p.kv_budget;
    c->kv_window = window;
    c->kv_sinks = sinks;
    c->kv_policy = p.kv_policy;
    c->kv_decay = p.kv_policy == CODI_KV_ALISA ? expf(-1.0f / (float)CODI_MAX(window, 1)) : 1.0f;
    /* A budget needs room for one pass of n_batch new tokens before the
     * pass evicts back down to the budget. */
    c->kv_cap = p.kv_budget > 0 ? (int32_t)CODI_MIN((int64_t)p.kv_budget + p.n_batch, (int64_t)p.n_ctx) : p.n_ctx;
    c->kv_gs = hp->head_dim % 32 == 0 ? 32 : hp->head_dim;
    const size_t cap = (size_t)c->kv_cap, ngrp = dkv / (size_t)c->kv_gs;
    c->kv_row = c->kv_bits == 16 ? cap * 2 : codi_kvq_row_bytes(c->kv_bits, cap);
    const size_t kv_rows = NS * NL * dkv;
    c->kc = xalloc_n(kv_rows * c->kv_row, &c->kv_bytes);
    c->vc = xalloc_n(kv_rows * c->kv_row, &c->kv_bytes);
    bool ok = c->kc && c->vc;
    if (ok && c->kv_bits == 4) { /* nibbles are read-modify-written */
        memset(c->kc, 0, kv_rows * c->kv_row);
        memset(c->vc, 0, kv_rows * c->kv_row);
    }
    /* q4 keys default to per-channel groups (docs/kv-cache.md); a budget
     * keeps them per token */
    c->kv_kch = c->kv_bits < 16 && (p.kv_keys == CODI_KV_KEYS_CHANNEL ||
                                    (p.kv_keys == CODI_KV_KEYS_DEFAULT && c->kv_bits == 4 &&
                                     c->kv_budget == 0));
    c->kv_ngc = (int32_t)((cap + CODI_KVC_G - 1) / CODI_KVC_G);
    if (c->kv_bits < 16) {
        const size_t nsc = NS * NL * ngrp * cap;
        const size_t nsk = c->kv_kch ? NS * NL * dkv * (size_t)c->kv_ngc : nsc;
        c->ksc = xalloc_n(nsk * sizeof(uint16_t), &c->kv_bytes);
        c->kmn = xalloc_n(nsk * sizeof(uint16_t), &c->kv_bytes);
        c->vsc = xalloc_n(nsc * sizeof(uint16_t), &c->kv_bytes);
        c->vmn = xalloc_n(nsc * sizeof(uint16_t), &c->kv_bytes);
        c->vtmp = xalloc_n((size_t)p.n_threads * ATT_G * cap * sizeof(float), &c->scratch_bytes);
        ok = ok && c->ksc && c->kmn && c->vsc && c->vmn && c->vtmp;
        if (c->kv_kch) {
            c->kstage = xalloc_n(NS * NL * dkv * CODI_KVC_G * sizeof(float), &c->kv_bytes);
            c->kch_done = calloc(NS * NL, sizeof(int32_t));
            c->pass_rows = calloc(B, sizeof(int32_t));
            c->pass_off = calloc(NS + 1, sizeof(int32_t));
            ok = ok && c->kstage && c->kch_done && c->pass_rows && c->pass_off;
        }
        /* smoothing by default for per-token q4 keys; per-channel groups
         * give every channel its own scale already */
        if (p.kv_smooth == 1 || (p.kv_smooth == -1 && p.kv_type == CODI_KV_Q4 && !c->kv_kch)) {
            c->smooth = xalloc_n(NL * dkv * sizeof(float), &c->kv_bytes);
            c->kshift = xalloc_n(NL * dkv * sizeof(float), &c->kv_bytes);
            ok = ok && c->smooth && c->kshift;
        }
    }
    if (c->kv_budget > 0) {
        const size_t NH = (size_t)hp->n_head_kv;
        c->slot_pos = xalloc_n(NS * NL * NH * cap * sizeof(int32_t), &c->kv_bytes);
        c->n_slots = calloc(NS * NL, sizeof(int32_t));
        c->imp = xalloc_n(NS * NL * NH * cap * sizeof(float), &c->kv_bytes);
        c->imp_th = xalloc_n((size_t)p.n_threads * NS * NH * cap * sizeof(int64_t), &c->kv_bytes);
        const size_t T = (size_t)p.n_threads;
        c->ev_idx = xalloc_n(T * cap * sizeof(int32_t), &c->kv_bytes);
        c->ev_key = xalloc_n(T * cap * sizeof(float), &c->kv_bytes);
        c->ev_mark = xalloc_n(T * cap, &c->kv_bytes);
        c->kh_slots = xalloc_n(NH * sizeof(int32_t), &c->kv_bytes);
        c->kv_bytes += NS * NL * sizeof(int32_t);
        ok = ok && c->slot_pos && c->n_slots && c->imp && c->imp_th && c->ev_idx && c->ev_key &&
             c->ev_mark && c->kh_slots;
        if (p.kv_policy == CODI_KV_ALISA) {
            c->vnorm = xalloc_n(NS * NL * NH * cap * sizeof(float), &c->kv_bytes);
            ok = ok && c->vnorm;
        }
        if (c->imp_th)
            memset(c->imp_th, 0, (size_t)p.n_threads * NS * NH * cap * sizeof(int64_t));
    }
    if (p.kv_recompute > 0) {
        const size_t N = (size_t)p.n_ctx, T = (size_t)p.n_threads, rows = (size_t)ATT_T * ATT_G;
        uint64_t *rb = &c->rc_bytes;
        c->kv_recompute = p.kv_recompute;
        c->tok_hist = xalloc_n(NS * N * sizeof(int32_t), rb);
        c->rc_last = xalloc_n(NS * sizeof(int32_t), rb);
        c->rc_h = xalloc_n(N * d * sizeof(float), rb);
        c->rc_k = xalloc_n(dkv * N * sizeof(uint16_t), rb);
        c->rc_v = xalloc_n(dkv * N * sizeof(uint16_t), rb);
        c->rc_imp = xalloc_n(T * (size_t)hp->n_head_kv * N * sizeof(int64_t), rb);
        c->rc_key = xalloc_n((size_t)hp->n_head_kv * N * sizeof(float), rb);
        ok = ok && c->rc_key;
        if (p.kv_policy == CODI_KV_ALISA) {
            c->rc_vn = xalloc_n((size_t)hp->n_head_kv * N * sizeof(float), rb);
            ok = ok && c->rc_vn;
        }
        c->rc_idx = xalloc_n(N * sizeof(int32_t), rb);
        c->rc_mark = xalloc_n(N, rb);
        c->rc_sc = xalloc_n(T * rows * N * sizeof(float), rb);
        c->rc_p16 = xalloc_n(T * N * sizeof(uint16_t), rb);
        c->rc_q = xalloc_n(T * rows * (size_t)hp->head_dim * sizeof(float), rb);
        ok = ok && c->tok_hist && c->rc_last && c->rc_h && c->rc_k && c->rc_v && c->rc_imp &&
             c->rc_idx && c->rc_mark && c->rc_sc && c->rc_p16 && c->rc_q;
        if (c->rc_last)
            memset(c->rc_last, 0, NS * sizeof(int32_t));
    }
    uint64_t *sb = &c->scratch_bytes;
    size_t wide = CODI_MAX(CODI_MAX(d, dq), ff);
    c->x = xalloc_n(B * d * sizeof(float), sb);
    c->xn = xalloc_n(B * wide * sizeof(float), sb);
    c->q = xalloc_n(B * dq * sizeof(float), sb);
    c->k = xalloc_n(B * dkv * sizeof(float), sb);
    c->v = xalloc_n(B * dkv * sizeof(float), sb);
    c->att = xalloc_n(B * dq * sizeof(float), sb);
    /* MoE decode runs a token's experts together: K rows of g/u/xq */
    const size_t BK = CODI_MAX(B, (size_t)hp->n_expert_used);
    c->g = xalloc_n(BK * ff * sizeof(float), sb);
    c->u = xalloc_n(BK * ff * sizeof(float), sb);
    if (hp->n_expert > 0) {
        const size_t E = (size_t)hp->n_expert, K = (size_t)hp->n_expert_used;
        c->rl = xalloc_n(B * E * sizeof(float), sb);
        c->sel_e = xalloc_n(B * K * sizeof(int32_t), sb);
        c->sel_w = xalloc_n(B * K * sizeof(float), sb);
        c->ex_start = xalloc_n((E + 1) * sizeof(int32_t), sb);
        c->ex_row = xalloc_n(B * K * sizeof(int32_t), sb);
        c->ex_w = xalloc_n(B * K * sizeof(float), sb);
        c->xe = xalloc_n(B * d * sizeof(float), sb);
        c->ye = xalloc_n(B * d * sizeof(float), sb);
        c->acc = xalloc_n(B * K * d * sizeof(float), sb);
        c->ex_k = xalloc_n(B * K * sizeof(int32_t), sb);
        c->ex_need_route = xalloc_n(E, sb);
        ok = ok && c->ex_need_route;
        if (hp->n_ff_shexp > 0) {
            c->shy = xalloc_n(B * d * sizeof(float), sb);
            ok = ok && c->shy;
        }
        if (hp->nested) {
            c->g2 = xalloc_n(B * (size_t)hp->n_ff_exp * sizeof(float), sb);
            c->u2 = xalloc_n(B * (size_t)hp->n_ff_exp * sizeof(float), sb);
            c->ye2 = xalloc_n(B * d * sizeof(float), sb);
            ok = ok && c->g2 && c->u2 && c->ye2;
        }
        ok = ok && c->rl && c->sel_e && c->sel_w && c->ex_start && c->ex_row && c->ex_w &&
             c->xe && c->ye && c->acc && c->ex_k;
    }
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
        const codi_weight *lw[] = {&L->wq, &L->wo, &L->w_gate, &L->w_down, &L->router,
                                   &L->exp[0], &L->exp[2], &L->sh_gate, &L->sh_down};
        for (int i = 0; i < 9; i++) {
            const codi_type_traits *t = codi_type_get(lw[i]->type);
            qrow = CODI_MAX(qrow, codi_row_size(t->vec_dot_type, (int64_t)wide));
        }
    }
    c->xq_stride = (qrow + 63) & ~(size_t)63;
    c->xq = xalloc_n(BK * c->xq_stride, sb);
    /* Prefill attention in tiles of query tokens (attn_tile); the tiles
     * give the per-token results bit for bit, CODI_ATTN_TILE=1 turns them
     * off (tests compare the two). */
    const bool tiles = c->kv_bits == 16 && c->kv_budget == 0;
    c->att_online = tiles && (p.flash_attn < 0 ? ATT_ONLINE_DEFAULT : p.flash_attn != 0);
    c->att_tile = tiles ? (c->att_online ? ATT_T_ONLINE : ATT_T) : 1;
    const char *tile_env = getenv("CODI_ATTN_TILE");
    if (c->att_tile > 1 && tile_env && *tile_env)
        c->att_tile = CODI_MAX(1, CODI_MIN(atoi(tile_env), ATT_TMAX));
    /* Online tiles need no score rows of kv_cap: those left serve
     * attn_token. */
    c->att_online = c->att_online && c->att_tile > 1;
    const size_t att_rows = (size_t)c->att_tile * ATT_G;
    c->att_rows = c->att_online ? ATT_G : (int)att_rows;
    c->tile_b0 = calloc(B + 1, sizeof(int32_t));
    c->qt = xalloc_n((size_t)p.n_threads * att_rows * (size_t)hp->head_dim * sizeof(float), sb);
    c->scores = xalloc_n((size_t)p.n_threads * c->att_rows * cap * sizeof(float), sb);
    c->probs16 = xalloc_n((size_t)p.n_threads * c->att_rows * cap * sizeof(uint16_t), sb);
    c->rope_theta = xaligned((size_t)hp->n_rot * sizeof(float));
    c->logits_cap = 1;
    c->logits = xaligned((size_t)hp->n_vocab * sizeof(float));
    c->n_past = calloc((size_t)p.n_seq, sizeof(int32_t));
    c->seq_first = calloc((size_t)p.n_seq, sizeof(int32_t));
    c->seq_cnt = calloc((size_t)p.n_seq, sizeof(int32_t));
    c->seq_last = calloc((size_t)p.n_seq, sizeof(int32_t));
    c->row_pos = calloc(B, sizeof(int32_t));
    c->row_seq = calloc(B, sizeof(int32_t));
    c->row_slot = calloc(B, sizeof(int32_t));
    c->row_rank = calloc(B, sizeof(int32_t));
    c->out_idx = calloc(B, sizeof(int32_t));
    c->logit_row_cap = B;
    c->logit_row = calloc(B, sizeof(int32_t));
    c->pool = codi_threadpool_create(p.n_threads);
    if (!ok || !c->x || !c->xn || !c->q || !c->k || !c->v ||
        !c->att || !c->g || !c->u || !c->xq || !c->scores || !c->probs16 || !c->rope_theta ||
        !c->tile_b0 || !c->qt ||
        !c->logits || !c->n_past || !c->seq_first || !c->seq_cnt || !c->seq_last || !c->row_pos ||
        !c->row_seq || !c->row_slot || !c->row_rank || !c->out_idx || !c->logit_row || !c->pool) {
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
    {
        int rc = moe_setup(c, &p, err, errlen);
        if (rc) {
            codi_context_free(c);
            return rc;
        }
    }
    if (c->smooth) {
        int rc = calibrate_smoothing(c, p.kv_calib, err, errlen);
        if (rc) {
            codi_context_free(c);
            return rc;
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
    free(c->ksc);
    free(c->kmn);
    free(c->vsc);
    free(c->vmn);
    free(c->smooth);
    free(c->kshift);
    free(c->kstage);
    free(c->kch_done);
    free(c->pass_rows);
    free(c->pass_off);
    free(c->kstat);
    free(c->slot_pos);
    free(c->n_slots);
    free(c->imp);
    free(c->imp_th);
    free(c->ev_idx);
    free(c->ev_mark);
    free(c->ev_key);
    free(c->kh_slots);
    free(c->vnorm);
    free(c->rc_vn);
    free(c->vtmp);
    free(c->tok_hist);
    free(c->rc_last);
    free(c->rc_h);
    free(c->rc_k);
    free(c->rc_v);
    free(c->rc_imp);
    free(c->rc_key);
    free(c->rc_idx);
    free(c->rc_mark);
    free(c->rc_sc);
    free(c->rc_p16);
    free(c->rc_q);
    free(c->row_slot);
    free(c->row_rank);
    free(c->seq_cnt);
    free(c->seq_last);
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
    free(c->qt);
    free(c->tile_b0);
    free(c->probs16);
    free(c->rope_theta);
    free(c->logits);
    free(c->n_past);
    free(c->seq_first);
    free(c->row_pos);
    free(c->row_seq);
    free(c->out_idx);
    free(c->logit_row);
    free(c->rl);
    free(c->sel_e);
    free(c->sel_w);
    free(c->ex_start);
    free(c->ex_row);
    free(c->ex_w);
    free(c->xe);
    free(c->ye);
    free(c->acc);
    free(c->ex_k);
    free(c->ex_need_route);
    free(c->shy);
    free(c->g2);
    free(c->u2);
    free(c->ye2);
    codi_expert_store_close(c->store);
    free(c->ex_need);
    free(c->ex_parts);
    free(c->pred);
    free(c->pred_made);
    free(c->rl2);
    free(c->rl_all);
    free(c);
}

int32_t codi_context_n_ctx(const codi_context *c) { return c->n_ctx; }

/* ------------------------------------------------------------ KV cache */

/* First row (channel 0) of the K or V cache of one sequence and layer. */
static uint8_t *kv_at(const codi_context *c, uint8_t *base, int seq, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    return base + ((size_t)seq * hp->n_layer + (size_t)layer) * dkv * c->kv_row;
}

/* First scale row (group 0) of one sequence and layer. */
static uint16_t *sc_at(const codi_context *c, uint16_t *base, int seq, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t ngrp = (size_t)hp->n_head_kv * hp->head_dim / (size_t)c->kv_gs;
    return base + ((size_t)seq * hp->n_layer + (size_t)layer) * ngrp * (size_t)c->kv_cap;
}

/* Per-channel keys: scale (or minimum) row of channel 0 of one sequence
 * and layer, and the open group's exact keys. */
static uint16_t *kch_sc_at(const codi_context *c, uint16_t *base, int seq, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    return base + ((size_t)seq * hp->n_layer + (size_t)layer) * dkv * (size_t)c->kv_ngc;
}

static float *kch_stage_at(const codi_context *c, int seq, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    return c->kstage + ((size_t)seq * hp->n_layer + (size_t)layer) * dkv * CODI_KVC_G;
}

/* Per-channel keys: forget the groups of seq from the one holding pos on;
 * the kept slots of that group go back to the exact open group (decoded
 * from their codes when the group was complete). */
static void kch_rewind(codi_context *c, int32_t seq, int32_t pos) {
    if (!c->kv_kch)
        return;
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    const int32_t j = pos / CODI_KVC_G;
    for (int l = 0; l < hp->n_layer; l++) {
        int32_t *done = &c->kch_done[(size_t)seq * hp->n_layer + (size_t)l];
        if (*done <= j)
            continue;
        const uint8_t *kr = kv_at(c, c->kc, seq, l);
        const uint16_t *ks = kch_sc_at(c, c->ksc, seq, l), *km = kch_sc_at(c, c->kmn, seq, l);
        float *st = kch_stage_at(c, seq, l);
        for (size_t i = 0; i < dkv; i++) {
            const float sc = codi_fp16_to_fp32(ks[(size_t)j * dkv + i]);
            const float mn = codi_fp16_to_fp32(km[(size_t)j * dkv + i]);
            for (int32_t t = j * CODI_KVC_G; t < pos; t++)
                st[i * CODI_KVC_G + (size_t)(t % CODI_KVC_G)] =
                    sc * (float)codi_kvq_get(c->kv_bits, kr + i * c->kv_row, (size_t)t) + mn;
        }
        *done = j;
    }
}

/* The slots of KV head kh of one sequence and layer: slot_pos, imp */
static size_t sl_index(const codi_context *c, int seq, int layer, int kh) {
    const codi_hparams *hp = &c->m->hp;
    return (((size_t)seq * hp->n_layer + (size_t)layer) * (size_t)hp->n_head_kv + (size_t)kh) *
           (size_t)c->kv_cap;
}

float codi_kv_layer_decay(const codi_model *m, int layer, float decay) {
    return m->hp.n_swa > 0 && !m->layers[layer].swa ? 1.0f : decay;
}

static float kv_layer_decay(const codi_context *c, int layer) {
    return codi_kv_layer_decay(c->m, layer, c->kv_decay);
}

/* Copy slot src to slot dst in KV head kh's rows of one sequence and layer. */
static void kv_move_slot(codi_context *c, int seq, int layer, int kh, int32_t src, int32_t dst) {
    const codi_hparams *hp = &c->m->hp;
    const size_t hd = (size_t)hp->head_dim;
    uint8_t *bases[2] = {kv_at(c, c->kc, seq, layer), kv_at(c, c->vc, seq, layer)};
    for (int kv = 0; kv < 2; kv++)
        for (size_t i = (size_t)kh * hd; i < (size_t)(kh + 1) * hd; i++) {
            uint8_t *row = bases[kv] + i * c->kv_row;
            if (c->kv_bits == 16)
                ((uint16_t *)row)[dst] = ((uint16_t *)row)[src];
            else
                codi_kvq_set(c->kv_bits, row, (size_t)dst, codi_kvq_get(c->kv_bits, row, (size_t)src));
        }
    if (c->kv_bits < 16) { /* groups never cross heads (kv_gs divides head_dim) */
        const size_t hpg = hd / (size_t)c->kv_gs;
        uint16_t *sc[4] = {sc_at(c, c->ksc, seq, layer), sc_at(c, c->kmn, seq, layer),
                           sc_at(c, c->vsc, seq, layer), sc_at(c, c->vmn, seq, layer)};
        for (int a = 0; a < 4; a++)
            for (size_t g = (size_t)kh * hpg; g < (size_t)(kh + 1) * hpg; g++)
                sc[a][g * (size_t)c->kv_cap + (size_t)dst] = sc[a][g * (size_t)c->kv_cap + (size_t)src];
    }
    const size_t si = sl_index(c, seq, layer, kh);
    c->slot_pos[si + (size_t)dst] = c->slot_pos[si + (size_t)src];
    c->imp[si + (size_t)dst] = c->imp[si + (size_t)src];
    if (c->vnorm)
        c->vnorm[si + (size_t)dst] = c->vnorm[si + (size_t)src];
}

/* Drop the slots marked in mark among the n_old slots of KV head kh of one
 * sequence and layer: the last kept slots move into the holes, so slots
 * 0..n-1 stay dense. Returns n, the slots kept. */
static int32_t kv_compact(codi_context *c, int seq, int layer, int kh, int32_t n_old, uint8_t *mark) {
    int32_t lo = 0, hi = n_old - 1;
    for (;;) {
        while (lo <= hi && !mark[lo])
            lo++;
        while (hi >= lo && mark[hi])
            hi--;
        if (lo >= hi)
            break;
        kv_move_slot(c, seq, layer, kh, hi, lo);
        mark[lo] = 0;
        mark[hi] = 1;
    }
    int32_t n = 0;
    while (n < n_old && !mark[n])
        n++;
    return n;
}

static void kv_evict_head(codi_context *c, int seq, int layer, int kh, int32_t n, int32_t e,
                          int32_t last, int ith);

/* Budget mode: forget every slot of seq at position >= pos. The KV heads
 * kept different tokens below pos; those that keep more then evict their
 * least important down to the smallest count, since all heads of a layer
 * hold as many slots. */
static void kv_drop_from(codi_context *c, int32_t seq, int32_t pos) {
    kch_rewind(c, seq, pos);
    if (c->rc_last) /* the next rebuild counts from the cut */
        c->rc_last[seq] = CODI_MIN(c->rc_last[seq], pos);
    if (c->kv_budget <= 0)
        return;
    const int nkv = c->m->hp.n_head_kv;
    for (int l = 0; l < c->m->hp.n_layer; l++) {
        int32_t *ns = &c->n_slots[(size_t)seq * c->m->hp.n_layer + (size_t)l];
        int32_t kmin = *ns;
        for (int kh = 0; kh < nkv; kh++) {
            const size_t si = sl_index(c, seq, l, kh);
            bool any = false;
            for (int32_t t = 0; t < *ns; t++) {
                c->ev_mark[t] = c->slot_pos[si + (size_t)t] >= pos;
                any = any || c->ev_mark[t];
            }
            c->kh_slots[kh] = any ? kv_compact(c, seq, l, kh, *ns, c->ev_mark) : *ns;
            kmin = CODI_MIN(kmin, c->kh_slots[kh]);
        }
        for (int kh = 0; kh < nkv; kh++)
            if (c->kh_slots[kh] > kmin)
                kv_evict_head(c, seq, l, kh, c->kh_slots[kh], c->kh_slots[kh] - kmin, pos - 1, 0);
        *ns = kmin;
    }
}

void codi_kv_seq_truncate(codi_context *c, int32_t seq, int32_t pos) {
    if (!c || seq < 0 || seq >= c->n_seq)
        return;
    if (pos < 0)
        pos = 0;
    if (pos < c->n_past[seq]) {
        c->n_past[seq] = pos;
        kv_drop_from(c, seq, pos);
    }
}

void codi_kv_truncate(codi_context *c, int32_t pos) { codi_kv_seq_truncate(c, 0, pos); }

int32_t codi_context_n_seq(const codi_context *c) { return c ? c->n_seq : 0; }

int32_t codi_kv_seq_len(const codi_context *c, int32_t seq) {
    if (!c || seq < 0 || seq >= c->n_seq)
        return 0;
    return c->n_past[seq];
}

int32_t codi_kv_seq_positions(const codi_context *c, int32_t seq, int32_t layer, int32_t kv_head,
                              int32_t *out, int32_t n_max) {
    if (!c || seq < 0 || seq >= c->n_seq || layer < 0 || layer >= c->m->hp.n_layer || kv_head < 0 ||
        kv_head >= c->m->hp.n_head_kv)
        return -1;
    if (c->kv_budget <= 0) {
        for (int32_t t = 0; t < c->n_past[seq] && t < n_max; t++)
            out[t] = t;
        return c->n_past[seq];
    }
    const int32_t n = c->n_slots[(size_t)seq * c->m->hp.n_layer + (size_t)layer];
    const int32_t *sp = c->slot_pos + sl_index(c, seq, layer, kv_head);
    for (int32_t t = 0; t < n && t < n_max; t++)
        out[t] = sp[t];
    return n;
}

void codi_context_memory(const codi_context *c, codi_memory_info *out) {
    if (!out)
        return;
    memset(out, 0, sizeof(*out));
    if (!c)
        return;
    out->kv_bytes = c->kv_bytes;
    out->scratch_bytes = c->scratch_bytes;
    out->logits_bytes = (uint64_t)c->logits_cap * (uint64_t)c->m->hp.n_vocab * sizeof(float);
    out->kv_slots = c->kv_cap;
    const int nl = c->m->hp.n_layer;
    for (int s = 0; s < c->n_seq; s++) {
        int32_t mx = c->n_past[s];
        if (c->kv_budget > 0) {
            mx = 0;
            for (int l = 0; l < nl; l++)
                mx = CODI_MAX(mx, c->n_slots[(size_t)s * nl + (size_t)l]);
        }
        out->kv_kept += mx;
    }
    out->kv_evicted = nl > 0 ? c->n_evicted / nl : 0;
    out->recompute_bytes = c->rc_bytes;
    out->recomputes = c->rc_count;
    out->recompute_restored = nl > 0 ? c->rc_restored / nl : 0;
    out->recompute_seconds = c->rc_seconds;
}

/* ------------------------------------------------------------ matmul */

typedef struct {
    int n_w;
    const codi_weight *w[MAX_FUSED];
    float *y[MAX_FUSED];    /* y[i][b * ne1 + r] */
    codi_vec_dot_fn dot[MAX_FUSED];
    codi_gemm_fn gemm[MAX_FUSED]; /* NULL: vec_dot per pair */
    codi_gemm_x8_fn x8[MAX_FUSED]; /* for w->x8, or NULL */
    const void *xq;         /* quantized activations, B rows */
    size_t xq_stride;
    size_t x_off[MAX_FUSED];/* bytes added to xq for weight i (0, or its own
                               row: matmul_each) */
    int B;
    int rows, cols;         /* chunk: rows of one weight x cols tokens */
    int rchunks[MAX_FUSED + 1]; /* prefix sums of row chunks per weight */
    int n_chunks;
    codi_gemm_x8_amx_fn amx[MAX_FUSED]; /* W4A8 on AMX (prefill), or NULL */
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
        int64_t r0 = (int64_t)(rc - j->rchunks[i]) * j->rows;
        int nr = (int)CODI_MIN((int64_t)j->rows, w->ne1 - r0);
        const int c0 = cc * j->cols, nc = CODI_MIN(j->cols, j->B - c0);
        if (w->perm) { /* a MixLLM matrix (quant/mix.h) */
            codi_mix_chunk(w, r0, nr, (const uint8_t *)j->xq + j->x_off[i] + (size_t)c0 * j->xq_stride,
                           j->xq_stride, nc,
                           j->y[i] + (size_t)c0 * w->ne1, (size_t)w->ne1);
            continue;
        }
        const uint8_t *xr = (const uint8_t *)j->xq + j->x_off[i] + (size_t)c0 * j->xq_stride;
        float *yr = j->y[i] + (size_t)c0 * w->ne1 + r0;
        const int64_t n = w->n_dot ? w->n_dot : w->ne0;
        const int64_t r_first = r0;
        const int nr_all = nr;
        float *const y_first = yr;
        int scaled = 0; /* rows the kernel already multiplied by row_scale */
        if (j->amx[i] && r0 < w->x8_rows) {
            const int ng = (int)((CODI_MIN(r0 + nr, w->x8_rows) - r0) / CODI_X8_ROWS);
            j->amx[i](n, ng, (const uint8_t *)w->x8 + (size_t)r0 * w->row_bytes, w->row_scale + r0, nc, xr,
                      j->xq_stride, yr, (size_t)w->ne1);
            scaled = ng * CODI_X8_ROWS;
            r0 += scaled;
            nr -= scaled;
            yr += scaled;
        } else if (j->x8[i] && r0 < w->x8_rows) {
            /* repacked rows (kernels/repack.h): chunks start on a group */
            const int ng = (int)((CODI_MIN(r0 + nr, w->x8_rows) - r0) / CODI_X8_ROWS);
            j->x8[i](n, ng, (const uint8_t *)w->x8 + (size_t)r0 * w->row_bytes, nc, xr,
                     j->xq_stride, yr, (size_t)w->ne1);
            r0 += ng * CODI_X8_ROWS;
            nr -= ng * CODI_X8_ROWS;
            yr += ng * CODI_X8_ROWS;
        }
        if (nr > 0) {
            const uint8_t *wr = (const uint8_t *)w->data + (size_t)r0 * w->row_bytes;
            /* Tiles of 3 tokens; 1-2 tokens left over go through vec_dot, which
             * is faster than a narrower tile (bench/gemm_bench.c, batch_decode.c) */
            const int nt = j->gemm[i] ? nc - nc % 3 : 0;
            if (nt > 0)
                j->gemm[i](n, nr, nt, wr, w->row_bytes, xr, j->xq_stride, yr, (size_t)w->ne1);
            if (nt < nc)
                codi_gemm_generic(j->dot[i], n, nr, nc - nt, wr, w->row_bytes,
                                  xr + (size_t)nt * j->xq_stride, j->xq_stride, yr + (size_t)nt * w->ne1,
                                  (size_t)w->ne1);
        }
        if (w->row_scale && nr_all > scaled) /* W4A8: integer dots, then the per-row scale */
            codi_scale_rows(y_first + scaled, nr_all - scaled, nc, (size_t)w->ne1, w->row_scale + r_first + scaled);
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

/* The weights of a matmul job (j->B, j->rows and j->cols set): kernels per
 * weight, the chunk shape of the AMX kernel if one runs, and the prefix
 * sums of the row chunks. All share activation type vdt and n_in
 * in-features. */
static void job_weights(matmul_job *j, int n_w, const codi_weight *const *w, float *const *y,
                        int vdt, int64_t n_in) {
    bool any_amx = false;
    for (int i = 0; i < n_w; i++) {
        j->w[i] = w[i];
        j->y[i] = y[i];
        j->dot[i] = codi_kernel_vec_dot(w[i]->type);
        j->gemm[i] = codi_kernel_gemm(w[i]->type);
        j->amx[i] = w[i]->x8_int8 && j->B >= 16 ? codi_kernel_gemm_x8_amx(w[i]->type) : NULL;
        j->x8[i] = w[i]->x8 ? codi_kernel_gemm_x8(w[i]->type) : NULL;
        any_amx |= j->amx[i] != NULL;
        CODI_ASSERT(codi_type_get(w[i]->type)->vec_dot_type == vdt && w[i]->ne0 == n_in);
    }
    if (any_amx) {
        /* the AMX kernel expands 32 rows' codes to int8 once per call:
         * give it 32 rows and up to 256 tokens (kernels/w4a8_amx_avx2.c) */
        j->rows = 32;
        j->cols = CODI_MIN(j->B, 256);
    }
    j->rchunks[0] = 0;
    for (int i = 0; i < n_w; i++)
        j->rchunks[i + 1] = j->rchunks[i] + (int)((w[i]->ne1 + j->rows - 1) / j->rows);
}

/* Decode chunks: about two per thread of the largest matrix, a multiple of
 * 8 rows between 32 and 1024. Each thread then streams long contiguous row
 * ranges, which the hardware prefetcher follows: on llama1b Q4_0, 32-row
 * chunks handed out in turn gave 27 tokens/s, ~512-row ones 36. Dynamic
 * hand-out stays, so a preempted thread still holds up nobody for long. */
static int decode_rows_per_chunk(const codi_context *c, int n_w, const codi_weight *const *w) {
    int64_t rows = 0;
    for (int i = 0; i < n_w; i++)
        rows = CODI_MAX(rows, w[i]->ne1);
    const int64_t per = rows / (2 * (int64_t)c->n_threads);
    return (int)CODI_MAX(32, CODI_MIN(1024, (per + 7) / 8 * 8));
}

/* y_i = W_i x for every token row of x (B rows of n_in floats). All W_i
 * share in-features and activation type. */
static void matmul(codi_context *c, int n_w, const codi_weight *const *w,
                   float *const *y, const float *x, int B) {
    const codi_type_traits *t = codi_type_get(w[0]->type);
    const int vdt = t->vec_dot_type;
    if (c->observer)
        for (int i = 0; i < n_w; i++)
            c->observer(c->observer_user, w[i], x, B, w[0]->ne0);
    matmul_job j = {.n_w = n_w, .B = B, .xq_stride = c->xq_stride};
    /* Decode and batched decode (up to 8 sequences, one token each) stream
     * the weights in long row chunks with all tokens in each; prefill uses
     * 16 rows x 64 tokens, so a chunk stays in L1/L2. */
    const bool stream = B <= 8;
    j.rows = stream ? decode_rows_per_chunk(c, n_w, w) : 16;
    j.cols = stream ? B : 64;
    job_weights(&j, n_w, w, y, vdt, w[0]->ne0);
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

/* One token, n_w weights, each with its own input row: y_i = W_i x_i, x_i
 * = x + i * n_in (the experts' down projections of a decode step in one
 * pool run). All W_i share in-features and activation type; n_w <= the
 * rows of xq. */
static void matmul_each(codi_context *c, int n_w, const codi_weight *const *w, float *const *y,
                        const float *x) {
    const int vdt = codi_type_get(w[0]->type)->vec_dot_type;
    const int64_t n = w[0]->ne0;
    if (c->observer)
        for (int i = 0; i < n_w; i++)
            c->observer(c->observer_user, w[i], x + (size_t)i * (size_t)n, 1, n);
    matmul_job j = {.n_w = n_w, .B = 1, .xq_stride = c->xq_stride, .cols = 1};
    j.rows = decode_rows_per_chunk(c, n_w, w);
    job_weights(&j, n_w, w, y, vdt, n);
    j.n_chunks = j.rchunks[n_w];
    atomic_init(&j.next, 0);
    if (vdt == CODI_TYPE_F32) {
        j.xq = x;
        for (int i = 0; i < n_w; i++)
            j.x_off[i] = (size_t)i * (size_t)n * sizeof(float);
    } else {
        for (int i = 0; i < n_w; i++) {
            codi_kernel_from_float(vdt)(x + (size_t)i * (size_t)n, (uint8_t *)c->xq + (size_t)i * c->xq_stride, n);
            j.x_off[i] = (size_t)i * c->xq_stride;
        }
        j.xq = c->xq;
    }
    codi_threadpool_run(c->pool, matmul_task, &j);
}

void codi_context_set_observer(codi_context *c, codi_matmul_observer fn, void *user) {
    c->observer = fn;
    c->observer_user = user;
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

/* Per-channel keys: the first slot sequence seq stores in this pass
 * (INT32_MAX when none), and the K row of its slot t >= that first one. */
static int32_t kch_pass_first(const codi_context *c, int seq) {
    const int32_t r0 = c->pass_off[seq];
    return c->pass_off[seq + 1] > r0 ? c->row_slot[c->pass_rows[r0]] : INT32_MAX;
}

static const float *kch_pass_key(const codi_context *c, int seq, int32_t first, int32_t t) {
    const size_t dkv = (size_t)c->m->hp.n_head_kv * c->m->hp.head_dim;
    return c->k + (size_t)c->pass_rows[c->pass_off[seq] + (t - first)] * dkv;
}

/* Per-channel keys: exact scores of slots t_lo..t_hi-1 of sequence seq
 * (KV head kh), which lie in a group not complete at the query: keys of
 * this pass come from its K rows, older ones from the open group. */
static void kch_scores_open(const codi_context *c, int layer, int seq, int kh, const float *q, int G,
                            int t_lo, int t_hi, float *s, size_t lds, float scale) {
    const codi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim;
    const int32_t sf = kch_pass_first(c, seq);
    const float *st = kch_stage_at(c, seq, layer) + (size_t)kh * hd * CODI_KVC_G;
    for (int t = t_lo; t < t_hi; t++) {
        const float *kp = NULL;
        size_t step = CODI_KVC_G;
        if (t >= sf) {
            kp = kch_pass_key(c, seq, sf, t) + (size_t)kh * hd;
            step = 1;
        } else {
            kp = st + (size_t)(t % CODI_KVC_G);
        }
        for (int g = 0; g < G; g++) {
            float acc = 0.0f;
            for (int i = 0; i < hd; i++)
                acc += q[(size_t)g * hd + i] * kp[(size_t)i * step];
            s[(size_t)g * lds + (size_t)(t - t_lo)] = acc * scale;
        }
    }
}

/* Attention of one token b, query heads h0..h0+G of KV head kh (G <=
 * ATT_G), on thread ith: scores, softmax, weights times V. */
/* Decode reads the fp16 cache's transposed rows (one per channel, a few
 * lines from slot 0 on) of every sequence and layer once per step, after
 * the step's weights have pushed them out of cache; the kernels walk the
 * rows one after another, so each row's first lines were misses waited for
 * one at a time (SmolLM2 Q4_1, 8 sequences: row_qkv's stores and the
 * attention kernels 25-30% of a step). So their lines are asked for ahead:
 * into L2 at the end of the layer before (row_ffn_out, row_embed for layer
 * 0), while the Q/K/V product runs, and into L1 as attention takes a (token,
 * KV head) item. Only the first KV_PF_LINES lines of a row: past those the
 * hardware prefetcher follows a row, and a long row would not fit anyway. */
enum { KV_PF_LINES = 4 };

#define KV_ROWS_PREFETCH(base, rows, ld, t0, n, locality)                                      \
    do {                                                                                       \
        const size_t lo_ = (size_t)(t0) * sizeof(uint16_t);                                    \
        const size_t hi_ = CODI_MIN((size_t)((t0) + (n)) * sizeof(uint16_t), lo_ + 64 * KV_PF_LINES); \
        for (int i_ = 0; i_ < (rows); i_++) {                                                  \
            const uintptr_t a_ = (uintptr_t)((base) + (size_t)i_ * (ld));                      \
            for (uintptr_t l_ = (a_ + lo_) & ~(uintptr_t)63; l_ < a_ + hi_; l_ += 64)          \
                __builtin_prefetch((const void *)l_, 0, locality);                             \
        }                                                                                      \
    } while (0)

/* A pass's importance is summed in fixed point, 2^-32 units
 * (codi_imp_accumulate): the work items of a pass go to whichever thread
 * takes them, and integer sums do not depend on that order, so evictions
 * (decided by near ties) are the same in every run. Contributions are at
 * most a few thousand, far below the kernel's 2^19. */
#define IMP_ONE 4294967296.0

/* Layer `layer`'s K and V rows of row b's sequence into L2, when b is the
 * sequence's last row of the pass (the others' keys come before it). */
static void kv_layer_prefetch(const codi_context *c, int layer, int b) {
    const int seq = c->row_seq[b];
    if (c->kv_bits != 16 || c->kv_budget > 0 || layer >= c->m->hp.n_layer ||
        c->row_rank[b] != c->seq_cnt[seq] - 1)
        return;
    const int dkv = c->m->hp.n_head_kv * c->m->hp.head_dim, n = c->row_pos[b] + 1;
    KV_ROWS_PREFETCH(kv_at(c, c->kc, seq, layer), dkv, c->kv_row, 0, n, 1);
    KV_ROWS_PREFETCH(kv_at(c, c->vc, seq, layer), dkv, c->kv_row, 0, n, 1);
}

static void attn_token(codi_context *c, int layer, int ith, int b, int kh, int h0, int G) {
    const codi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, nh = hp->n_head;
    const size_t dq = (size_t)nh * hd, cap = (size_t)c->kv_cap;
    /* Gemma 3 scales the queries before attention (forward_batch). */
    const float scale = hp->arch_id == CODI_ARCH_GEMMA3 ? 1.0f : hp->attn_scale;
    const bool swa = c->m->layers[layer].swa && hp->n_swa > 0;
    const bool budget = c->kv_budget > 0;
    const bool track = budget && c->kv_policy != CODI_KV_WINDOW;
    const int bits = c->kv_bits, gs = c->kv_gs, hpg = hd / gs; /* groups per head */
    float *scb = c->scores + (size_t)ith * c->att_rows * cap;
    uint16_t *pb = c->probs16 + (size_t)ith * c->att_rows * cap;
    const int seq = c->row_seq[b], pos = c->row_pos[b];
    /* Causal: slots 0..row_slot (without a budget slot = position; with
     * one, kept slots all precede this pass and the pass's tokens are
     * appended in order). Sliding window: keys at pos - t >= n_swa are
     * masked (llama.cpp's LLAMA_SWA_TYPE_STANDARD). */
    const int n_kv = c->row_slot[b] + 1;
    const int t0 = swa && !budget ? CODI_MAX(0, n_kv - hp->n_swa) : 0, n = n_kv - t0;
    const uint8_t *kl = kv_at(c, c->kc, seq, layer) + (size_t)kh * hd * c->kv_row;
    const uint8_t *vl = kv_at(c, c->vc, seq, layer) + (size_t)kh * hd * c->kv_row;
    const float *qb = c->q + (size_t)b * dq + (size_t)h0 * hd;
    float *o = c->att + (size_t)b * dq + (size_t)h0 * hd;
    if (bits == 16) {
        KV_ROWS_PREFETCH(kl, hd, c->kv_row, t0, n, 3); /* see kv_layer_prefetch */
        KV_ROWS_PREFETCH(vl, hd, c->kv_row, t0, n, 3);
        /* llama.cpp (flash attention off) multiplies the fp16 cache with
         * fp16-rounded queries and fp16-rounded attention weights; round
         * the same way. */
        float q32[ATT_G * 1024];
        uint16_t q16[ATT_G * 1024];
        codi_fp32_to_fp16_row(qb, q16, (int64_t)G * hd); /* F16C rows: the same bits */
        codi_fp16_to_fp32_row(q16, q32, (int64_t)G * hd);
        codi_attn_scores_f16(q32, G, hd, (const uint16_t *)kl + t0, cap, n, scb, cap, scale);
    } else if (c->kv_kch) {
        /* groups that end inside the causal range from their codes, the
         * rest (at most CODI_KVC_G - 1 slots) exactly */
        const int full = n_kv / CODI_KVC_G * CODI_KVC_G, nq = CODI_MAX(0, full - t0);
        const size_t hoff = (size_t)kh * hd, dkv = (size_t)hp->n_head_kv * hd;
        codi_attn_scores_kvc(bits, qb, G, hd, kl, c->kv_row, kch_sc_at(c, c->ksc, seq, layer) + hoff,
                             kch_sc_at(c, c->kmn, seq, layer) + hoff, dkv, t0, nq, scb, cap, scale);
        kch_scores_open(c, layer, seq, kh, qb, G, t0 + nq, n_kv, scb + nq, cap, scale);
    } else {
        codi_attn_scores_kvq(bits, qb, G, hd, gs, kl, c->kv_row,
                             sc_at(c, c->ksc, seq, layer) + (size_t)kh * hpg * cap,
                             sc_at(c, c->kmn, seq, layer) + (size_t)kh * hpg * cap, cap, t0, n,
                             scb, cap, scale);
    }
    if (swa && budget) {
        const int32_t *sp = c->slot_pos + sl_index(c, seq, layer, kh);
        for (int t = 0; t < n; t++)
            if (pos - sp[t] >= hp->n_swa)
                for (int g = 0; g < G; g++)
                    scb[(size_t)g * cap + t] = -INFINITY;
    }
    for (int g = 0; g < G; g++)
        codi_softmax_inplace(scb + (size_t)g * cap, n);
    if (track) {
        /* importance: this query's attention, discounted (ALISA) by
         * how many queries of the pass come after it */
        float wq = 1.0f;
        const float kd = kv_layer_decay(c, layer);
        if (kd != 1.0f)
            wq = powf(kd, (float)(c->seq_last[seq] - pos));
        int64_t *acc = c->imp_th +
                       (((size_t)ith * c->n_seq + (size_t)seq) * (size_t)hp->n_head_kv + (size_t)kh) * cap + t0;
        const float *vn = c->vnorm ? c->vnorm + sl_index(c, seq, layer, kh) + t0 : NULL; /* alisa: |v| */
        codi_imp_accumulate(acc, scb, cap, G, n, wq, vn);
    }
    if (bits == 16) {
        /* o[i] = sum_t p_t v_t[i] with the weights rounded to fp16 (kept as
         * floats): each output the fp16 dot over its transposed V row in
         * llama.cpp's order (codi_attn_values_f16, as the prefill tiles) */
        int nr[ATT_G];
        float *og[ATT_G];
        for (int g = 0; g < G; g++) {
            codi_fp32_to_fp16_row(scb + (size_t)g * cap, pb + (size_t)g * cap, n);
            codi_fp16_to_fp32_row(pb + (size_t)g * cap, scb + (size_t)g * cap, n);
            nr[g] = n;
            og[g] = o + (size_t)g * hd;
        }
        codi_attn_values_f16(scb, cap, nr, G, (const uint16_t *)vl + t0, c->kv_row / sizeof(uint16_t), hd, og);
    } else {
        float ob[ATT_G * 1024];
        codi_attn_values_kvq(bits, scb, cap, G, hd, gs, vl, c->kv_row,
                             sc_at(c, c->vsc, seq, layer) + (size_t)kh * hpg * cap,
                             sc_at(c, c->vmn, seq, layer) + (size_t)kh * hpg * cap, cap, t0, n, ob,
                             c->vtmp + (size_t)ith * ATT_G * cap);
        memcpy(o, ob, (size_t)G * hd * sizeof(float));
    }
}

/* Attention of the T tokens b0..b0+T of one sequence (a prefill tile, fp16
 * KV, no budget, no sliding window in reach), query heads h0..h0+G of KV
 * head kh: every K and V element is converted once for the T * G query
 * rows instead of once per token. The results are attn_token's bit for
 * bit: a score depends only on its query and key (codi_attn_scores_f16),
 * each row's softmax and fp16 rounding run over its own n keys, and
 * codi_attn_values_f16 sums each row's own n keys as codi_dot_f16_multi
 * does. Causality by lengths: row r reads keys 0..row_slot[b0 + r] only. */
static void attn_tile_f16(codi_context *c, int layer, int ith, int b0, int T, int kh, int h0, int G) {
    const codi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, nh = hp->n_head, M = T * G;
    const size_t dq = (size_t)nh * hd, cap = (size_t)c->kv_cap, rows = (size_t)c->att_rows;
    const float scale = hp->arch_id == CODI_ARCH_GEMMA3 ? 1.0f : hp->attn_scale;
    float *scb = c->scores + (size_t)ith * rows * cap;
    uint16_t *pb = c->probs16 + (size_t)ith * rows * cap;
    float *q32 = c->qt + (size_t)ith * c->att_tile * ATT_G * hd;
    int n[ATT_TMAX * ATT_G], n_max = 0;
    float *o[ATT_TMAX * ATT_G];
    const int seq = c->row_seq[b0];
    for (int r = 0; r < T; r++) {
        const int b = b0 + r, n_kv = c->row_slot[b] + 1;
        n_max = CODI_MAX(n_max, n_kv);
        const float *qb = c->q + (size_t)b * dq + (size_t)h0 * hd;
        float *qr = q32 + (size_t)r * G * hd;
        for (int g = 0; g < G; g++) { /* the rows convert as the scalars do */
            uint16_t q16[1024];
            codi_fp32_to_fp16_row(qb + (size_t)g * hd, q16, hd);
            codi_fp16_to_fp32_row(q16, qr + (size_t)g * hd, hd);
        }
        for (int g = 0; g < G; g++) {
            n[r * G + g] = n_kv;
            o[r * G + g] = c->att + (size_t)b * dq + (size_t)(h0 + g) * hd;
        }
    }
    const uint8_t *kl = kv_at(c, c->kc, seq, layer) + (size_t)kh * hd * c->kv_row;
    const uint8_t *vl = kv_at(c, c->vc, seq, layer) + (size_t)kh * hd * c->kv_row;
    /* scores of every row up to the longest; the shorter rows' extra
     * scores are never read */
    codi_attn_scores_f16(q32, M, hd, (const uint16_t *)kl, cap, n_max, scb, cap, scale);
    for (int j = 0; j < M; j++) {
        float *sj = scb + (size_t)j * cap;
        codi_softmax_inplace(sj, n[j]);
        /* fp16 weights as attn_token rounds them, kept as floats */
        codi_fp32_to_fp16_row(sj, pb + (size_t)j * cap, n[j]);
        codi_fp16_to_fp32_row(pb + (size_t)j * cap, sj, n[j]);
    }
    codi_attn_values_f16(scb, cap, n, M, (const uint16_t *)vl, c->kv_row / sizeof(uint16_t), hd, o);
}

/* The tile of attn_tile_f16 with an online softmax (flash_attn):
 * codi_attn_online_f16 walks the keys in blocks, so the scratch is a
 * block of scores per row instead of a row of kv_cap, and the weights
 * stay fp32. The queries are rounded to fp16 as in attn_tile_f16 (and as
 * llama.cpp's flash attention converts them for its fp16 K). */
static void attn_tile_online(codi_context *c, int layer, int ith, int b0, int T, int kh, int h0, int G) {
    const codi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, nh = hp->n_head, M = T * G;
    const size_t dq = (size_t)nh * hd, cap = (size_t)c->kv_cap;
    const float scale = hp->arch_id == CODI_ARCH_GEMMA3 ? 1.0f : hp->attn_scale;
    float *q32 = c->qt + (size_t)ith * c->att_tile * ATT_G * hd;
    int n[ATT_TMAX * ATT_G];
    float *o[ATT_TMAX * ATT_G];
    const int seq = c->row_seq[b0];
    for (int r = 0; r < T; r++) {
        const int b = b0 + r, n_kv = c->row_slot[b] + 1;
        const float *qb = c->q + (size_t)b * dq + (size_t)h0 * hd;
        for (int g = 0; g < G; g++) {
            uint16_t q16[1024];
            codi_fp32_to_fp16_row(qb + (size_t)g * hd, q16, hd);
            codi_fp16_to_fp32_row(q16, q32 + (size_t)(r * G + g) * hd, hd);
            n[r * G + g] = n_kv;
            o[r * G + g] = c->att + (size_t)b * dq + (size_t)(h0 + g) * hd;
        }
    }
    const uint8_t *kl = kv_at(c, c->kc, seq, layer) + (size_t)kh * hd * c->kv_row;
    const uint8_t *vl = kv_at(c, c->vc, seq, layer) + (size_t)kh * hd * c->kv_row;
    codi_attn_online_f16(q32, M, hd, n, (const uint16_t *)kl, cap, (const uint16_t *)vl,
                         c->kv_row / sizeof(uint16_t), scale, o);
}

static void attn_task(void *arg, int ith, int nth) {
    (void)nth;
    attn_job *j = arg;
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const int gqa = hp->n_head / hp->n_head_kv;
    const bool swa = c->m->layers[j->layer].swa && hp->n_swa > 0;
    /* Work item: a tile of tokens (attn_tiles; one token in decode or
     * without tiles) and up to ATT_G query heads sharing a KV head, so
     * each K and V row is loaded and converted once for all of them. */
    const int ng = (gqa + ATT_G - 1) / ATT_G, per_tile = hp->n_head_kv * ng;
    const int total = c->n_tiles * per_tile;
    for (int w; (w = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < total;) {
        const int ti = w / per_tile, kh = (w % per_tile) / ng;
        const int h0 = kh * gqa + (w % ng) * ATT_G, G = CODI_MIN(ATT_G, kh * gqa + gqa - h0);
        const int b0 = c->tile_b0[ti], T = c->tile_b0[ti + 1] - b0;
        /* a sliding window that cuts keys off gives rows different first
         * keys: then token by token */
        bool tile = T > 1;
        for (int r = 0; tile && swa && r < T; r++)
            tile = c->row_slot[b0 + r] + 1 <= hp->n_swa;
        if (tile && c->att_online)
            attn_tile_online(c, j->layer, ith, b0, T, kh, h0, G);
        else if (tile)
            attn_tile_f16(c, j->layer, ith, b0, T, kh, h0, G);
        else
            for (int r = 0; r < T; r++)
                attn_token(c, j->layer, ith, b0 + r, kh, h0, G);
    }
}

/* Tiles of the pass for attn_task: runs of up to att_tile consecutive
 * rows of one sequence (tiles only where attn_tile_f16 applies: fp16 KV
 * without a budget; att_tile is 1 otherwise). */
static void attn_tiles(codi_context *c, int B) {
    int n = 0;
    for (int b = 0; b < B; n++) {
        c->tile_b0[n] = b;
        int e = b + 1;
        while (e < B && e - b < c->att_tile && c->row_seq[e] == c->row_seq[b])
            e++;
        b = e;
    }
    c->tile_b0[n] = B;
    c->n_tiles = n;
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
    kv_layer_prefetch(c, 0, b);
}

/* |v| of one KV head's value vector. ALISA (codi) weights the attention a
 * token receives by it: what the token adds to the attention output is
 * its weight times its value, so a token with a large weight and a tiny
 * value matters little (Guo et al. 2024, "Attention score is not all you
 * need for token importance ... value also matters"). */
static float v_norm(const float *v, int hd) {
    float s = 0.0f;
    for (int i = 0; i < hd; i++)
        s += v[i] * v[i];
    return sqrtf(s);
}

/* Q/K/V bias, Q/K norms, RoPE at position p, Gemma's query scale: one
 * token's q, k, v as attention and the cache take them */
static void qkv_prep(const codi_context *c, const codi_layer *L, float *q, float *k, float *v, int p) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dq = (size_t)hp->n_head * hp->head_dim, dkv = (size_t)hp->n_head_kv * hp->head_dim;
    add_bias(q, L->bq, 1, dq);
    add_bias(k, L->bk, 1, dkv);
    add_bias(v, L->bv, 1, dkv);
    if (hp->qk_norm_full) { /* OLMoE: one norm over all heads */
        codi_rmsnorm(q, q, L->attn_q_norm, (int)dq, hp->norm_eps);
        codi_rmsnorm(k, k, L->attn_k_norm, (int)dkv, hp->norm_eps);
    } else {
        head_norm(q, L->attn_q_norm, 1, hp->n_head, hp);
        head_norm(k, L->attn_k_norm, 1, hp->n_head_kv, hp);
    }
    rope_qk(c, L, q, k, p);
    if (hp->arch_id == CODI_ARCH_GEMMA3)
        for (size_t i = 0; i < dq; i++)
            q[i] *= hp->attn_scale;
}

/* qkv_prep, then K/V into the cache */
static void row_qkv(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const size_t dq = (size_t)hp->n_head * hp->head_dim, dkv = (size_t)hp->n_head_kv * hp->head_dim;
    float *q = c->q + (size_t)b * dq, *k = c->k + (size_t)b * dkv, *v = c->v + (size_t)b * dkv;
    const int p = c->row_pos[b], seq = c->row_seq[b];
    qkv_prep(c, &c->m->layers[j->layer], q, k, v, p);
    int32_t slot = p;
    if (c->kv_budget > 0) {
        slot = c->n_slots[(size_t)seq * hp->n_layer + (size_t)j->layer] + c->row_rank[b];
        for (int kh = 0; kh < hp->n_head_kv; kh++) {
            const size_t si = sl_index(c, seq, j->layer, kh) + (size_t)slot;
            c->slot_pos[si] = p;
            c->imp[si] = 0.0f;
            if (c->vnorm)
                c->vnorm[si] = v_norm(v + (size_t)kh * hp->head_dim, hp->head_dim);
        }
    }
    c->row_slot[b] = slot;
    if (c->kv_bits < 16) {
        /* key smoothing: (K - mu) / lambda into the cache, Q * lambda, so
         * that q.k changes by q.mu, the same for every key of this query
         * (softmax ignores it); quantized stores follow (store_kv_quant) */
        const int hd = hp->head_dim;
        if (c->smooth) {
            const float *lam = c->smooth + (size_t)j->layer * dkv;
            const float *mu = c->kshift + (size_t)j->layer * dkv;
            const int gqa = hp->n_head / hp->n_head_kv;
            for (int h = 0; h < hp->n_head; h++)
                for (int i = 0; i < hd; i++)
                    q[(size_t)h * hd + i] *= lam[(size_t)(h / gqa) * hd + i];
            for (size_t i = 0; i < dkv; i++)
                k[i] = (k[i] - mu[i]) / lam[i];

        }
        return;
    }
    uint16_t *kd = (uint16_t *)kv_at(c, c->kc, seq, j->layer) + slot;
    uint16_t *vd = (uint16_t *)kv_at(c, c->vc, seq, j->layer) + slot;
    const size_t ld = c->kv_row / 2;
    uint16_t h[2][512]; /* F16C rows, then one column store per channel */
    for (size_t i0 = 0; i0 < dkv; i0 += 512) {
        const size_t m = CODI_MIN((size_t)512, dkv - i0);
        codi_fp32_to_fp16_row(k + i0, h[0], (int64_t)m);
        codi_fp32_to_fp16_row(v + i0, h[1], (int64_t)m);
        for (size_t i = 0; i < m; i++) {
            kd[(i0 + i) * ld] = h[0][i];
            vd[(i0 + i) * ld] = h[1][i];
        }
    }
}

/* q8/q4 cache: quantize each row's K (smoothed) and V into its slot. One
 * thread: two slots share a byte of a 4-bit row. While calibrating, the
 * |K| maxima per channel are collected here too. */
static void store_kv_quant(codi_context *c, int layer, int B) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim, cap = (size_t)c->kv_cap;
    const int gs = c->kv_gs, ngrp = (int)(dkv / (size_t)gs), bits = c->kv_bits;
    uint8_t codes[1024];
    for (int b = 0; b < B; b++) {
        const int seq = c->row_seq[b];
        const size_t slot = (size_t)c->row_slot[b];
        const float *k = c->k + (size_t)b * dkv, *v = c->v + (size_t)b * dkv;
        if (c->kstat) {
            const size_t nk = (size_t)hp->n_layer * dkv;
            float *st = c->kstat + (size_t)layer * dkv;
            for (size_t i = 0; i < dkv; i++) {
                st[i] = CODI_MIN(st[i], k[i]);
                st[nk + i] = CODI_MAX(st[nk + i], k[i]);
            }
        }
        for (int kv = c->kv_kch ? 1 : 0; kv < 2; kv++) {
            uint8_t *base = kv_at(c, kv ? c->vc : c->kc, seq, layer);
            uint16_t *scr = sc_at(c, kv ? c->vsc : c->ksc, seq, layer);
            uint16_t *mnr = sc_at(c, kv ? c->vmn : c->kmn, seq, layer);
            for (int g = 0; g < ngrp; g++) {
                const float *src = (kv ? v : k) + (size_t)g * gs;
                codi_kvq_quantize_group(bits, src, gs, codes, &scr[(size_t)g * cap + slot],
                                        &mnr[(size_t)g * cap + slot]);
                for (int i = 0; i < gs; i++)
                    codi_kvq_set(bits, base + ((size_t)g * gs + (size_t)i) * c->kv_row, slot, codes[i]);
            }
        }
    }
}

/* Per-channel keys: the pass's rows of each sequence in order (the rows
 * of one sequence hold consecutive slots). */
static void kch_pass_rows(codi_context *c, int B) {
    int32_t *off = c->pass_off;
    memset(off, 0, ((size_t)c->n_seq + 1) * sizeof(int32_t));
    for (int b = 0; b < B; b++)
        off[c->row_seq[b] + 1]++;
    for (int s = 0; s < c->n_seq; s++)
        off[s + 1] += off[s];
    for (int b = 0; b < B; b++) /* rank = place among its sequence's rows */
        c->pass_rows[off[c->row_seq[b]] + c->row_rank[b]] = b;
}

/* Per-channel keys, before a layer's attention: quantize every group of
 * CODI_KVC_G slots whose last slot this pass stores, each channel on its
 * own (scale and minimum of its 16 keys); keys of the pass come from its K
 * rows, older ones of the group from the open group. */
static void kch_quantize(codi_context *c, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    for (int seq = 0; seq < c->n_seq; seq++) {
        const int32_t sf = kch_pass_first(c, seq);
        if (sf == INT32_MAX)
            continue;
        const int32_t end = sf + (c->pass_off[seq + 1] - c->pass_off[seq]);
        int32_t *done = &c->kch_done[(size_t)seq * hp->n_layer + (size_t)layer];
        uint8_t *kr = kv_at(c, c->kc, seq, layer);
        uint16_t *ks = kch_sc_at(c, c->ksc, seq, layer), *km = kch_sc_at(c, c->kmn, seq, layer);
        const float *st = kch_stage_at(c, seq, layer);
        for (int32_t j = sf / CODI_KVC_G; j < end / CODI_KVC_G; j++) {
            for (size_t i = 0; i < dkv; i++) {
                float x[CODI_KVC_G];
                uint8_t codes[CODI_KVC_G];
                for (int u = 0; u < CODI_KVC_G; u++) {
                    const int32_t t = j * CODI_KVC_G + u;
                    x[u] = t >= sf ? kch_pass_key(c, seq, sf, t)[i] : st[i * CODI_KVC_G + (size_t)u];
                }
                codi_kvq_quantize_group(c->kv_bits, x, CODI_KVC_G, codes, &ks[(size_t)j * dkv + i],
                                        &km[(size_t)j * dkv + i]);
                for (int u = 0; u < CODI_KVC_G; u++)
                    codi_kvq_set(c->kv_bits, kr + i * c->kv_row, (size_t)(j * CODI_KVC_G + u), codes[u]);
            }
        }
        *done = CODI_MAX(*done, end / CODI_KVC_G);
    }
}

/* Per-channel keys, after a layer's attention: the pass's keys of each
 * sequence's open group into kstage (after, since the queries of the pass
 * may still need the older keys of a group it completed). */
static void kch_stage(codi_context *c, int layer) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    for (int seq = 0; seq < c->n_seq; seq++) {
        const int32_t sf = kch_pass_first(c, seq);
        if (sf == INT32_MAX)
            continue;
        const int32_t end = sf + (c->pass_off[seq + 1] - c->pass_off[seq]);
        float *st = kch_stage_at(c, seq, layer);
        for (int32_t t = CODI_MAX(sf, end / CODI_KVC_G * CODI_KVC_G); t < end; t++) {
            const float *k = kch_pass_key(c, seq, sf, t);
            for (size_t i = 0; i < dkv; i++)
                st[i * CODI_KVC_G + (size_t)(t % CODI_KVC_G)] = k[i];
        }
    }
}

/* Sort slot indices by key (ties: lower slot first); shell sort, since
 * C11's qsort takes no context and n is at most budget + n_batch. */
static bool ev_before(const float *key, int32_t a, int32_t b) {
    return key[a] < key[b] || (key[a] == key[b] && a < b);
}

static void sort_by_key(int32_t *idx, int32_t n, const float *key) {
    for (int32_t gap = n / 2; gap > 0; gap = gap == 2 ? 1 : gap * 5 / 11) {
        for (int32_t i = gap; i < n; i++) {
            const int32_t v = idx[i];
            int32_t j = i;
            for (; j >= gap && ev_before(key, v, idx[j - gap]); j -= gap)
                idx[j] = idx[j - gap];
            idx[j] = v;
        }
    }
}

/* Evict e of the n slots of KV head kh of one sequence and layer: the
 * oldest (window) or least important (alisa, h2o) of those that are
 * neither sinks nor within the recent window of `last`. A truncation
 * (kv_drop_from) may find fewer of those than e: then the window gives
 * way, never the sinks. */
static void kv_evict_head(codi_context *c, int seq, int layer, int kh, int32_t n, int32_t e,
                          int32_t last, int ith) {
    const bool track = c->kv_policy != CODI_KV_WINDOW;
    const size_t si = sl_index(c, seq, layer, kh);
    const int32_t *sp = c->slot_pos + si;
    if (e == 1) { /* decode: one pass, the last slot fills the hole */
        const float *imp = c->imp + si;
        const int32_t lo = c->kv_sinks, hi = last - c->kv_window;
        int32_t best = -1;
        float bk = INFINITY;
        for (int32_t t = 0; t < n; t++) {
            const bool cand = sp[t] >= lo && sp[t] <= hi;
            const float k = cand ? (track ? imp[t] : (float)sp[t]) : INFINITY;
            const bool better = k < bk || (cand && best < 0); /* ties: the lower slot, as sort_by_key */
            best = better ? t : best;
            bk = better ? k : bk;
        }
        if (best >= 0) {
            if (best != n - 1)
                kv_move_slot(c, seq, layer, kh, n - 1, best);
            return;
        }
    }
    const size_t cap = (size_t)c->kv_cap;
    int32_t *idx = c->ev_idx + (size_t)ith * cap;
    uint8_t *mark = c->ev_mark + (size_t)ith * cap;
    int32_t nc = 0;
    for (int32_t t = 0; t < n; t++) {
        mark[t] = 0;
        if (sp[t] >= c->kv_sinks && sp[t] <= last - c->kv_window)
            idx[nc++] = t;
    }
    if (nc < e) {
        nc = 0;
        for (int32_t t = 0; t < n; t++)
            if (sp[t] >= c->kv_sinks)
                idx[nc++] = t;
    }
    CODI_ASSERT(nc >= e); /* budget > window + sinks (context_create) */
    /* window: oldest first (key = position); else least important */
    float *key = c->imp + si;
    if (!track) {
        key = c->ev_key + (size_t)ith * cap;
        for (int32_t t = 0; t < n; t++)
            key[t] = (float)sp[t];
    }
    sort_by_key(idx, nc, key); /* e == 1 gets here only from a truncation */
    for (int32_t k2 = 0; k2 < e; k2++)
        mark[idx[k2]] = 1;
    kv_compact(c, seq, layer, kh, n, mark);
}

typedef struct {
    codi_context *c;
    int layer;
    atomic_int next; /* next (sequence, KV head) */
} evict_job;

/* One (sequence, KV head) of kv_budget_step: fold, then evict. Heads
 * touch disjoint rows, scales and slot arrays; each thread its own
 * scratch. */
static void evict_task(void *arg, int ith, int nth) {
    (void)nth;
    evict_job *j = arg;
    codi_context *c = j->c;
    const int nl = c->m->hp.n_layer, nkv = c->m->hp.n_head_kv, layer = j->layer;
    const size_t cap = (size_t)c->kv_cap;
    const bool track = c->kv_policy != CODI_KV_WINDOW;
    for (int w; (w = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < c->n_seq * nkv;) {
        const int s = w / nkv, kh = w % nkv;
        if (c->seq_cnt[s] == 0)
            continue;
        const int32_t n_old = c->n_slots[(size_t)s * nl + (size_t)layer], n = n_old + c->seq_cnt[s];
        const int32_t e = CODI_MAX(0, n - c->kv_budget);
        if (track) {
            /* fold (new slots hold 0, so they take the same formula), and
             * for a single eviction find the victim in the same pass, as
             * kv_evict_head would */
            const float kd = kv_layer_decay(c, layer);
            const float dec = kd == 1.0f ? 1.0f : powf(kd, (float)c->seq_cnt[s]);
            const size_t si = sl_index(c, s, layer, kh);
            float *imp = c->imp + si;
            const int32_t *sp = c->slot_pos + si;
            const int32_t lo = c->kv_sinks, hi = c->seq_last[s] - c->kv_window;
            int64_t *acc0 = c->imp_th + ((size_t)s * (size_t)nkv + (size_t)kh) * cap;
            const size_t th_stride = (size_t)c->n_seq * (size_t)nkv * cap;
            int32_t best = -1;
            float bk = INFINITY;
            for (int32_t t = 0; t < n; t++) {
                int64_t sum = 0;
                for (int th = 0; th < c->n_threads; th++) {
                    sum += acc0[(size_t)th * th_stride + (size_t)t];
                    acc0[(size_t)th * th_stride + (size_t)t] = 0;
                }
                const float v = imp[t] * dec + (float)((double)sum / IMP_ONE);
                imp[t] = v;
                const bool cand = sp[t] >= lo && sp[t] <= hi;
                const bool better = cand && (v < bk || best < 0); /* ties: the lower slot */
                best = better ? t : best;
                bk = better ? v : bk;
            }
            if (e == 1 && best >= 0) {
                if (best != n - 1)
                    kv_move_slot(c, s, layer, kh, n - 1, best);
                continue;
            }
        }
        if (e > 0)
            kv_evict_head(c, s, layer, kh, n, e, c->seq_last[s], ith);
    }
}

/* Budget mode, after a layer's attention: fold this pass's importance into
 * the slots of each KV head, count the new slots, and evict each sequence
 * down to the budget, every KV head by its own importance (kv_evict_head):
 * query heads of different KV heads attend to different tokens. The
 * (sequence, KV head) pairs run on the pool. */
static void kv_budget_step(codi_context *c, int layer) {
    const int nl = c->m->hp.n_layer;
    evict_job ej = {c, layer, 0};
    codi_threadpool_run(c->pool, evict_task, &ej);
    for (int s = 0; s < c->n_seq; s++) {
        if (c->seq_cnt[s] == 0)
            continue;
        int32_t *ns = &c->n_slots[(size_t)s * nl + (size_t)layer];
        const int32_t n = *ns + c->seq_cnt[s], e = CODI_MAX(0, n - c->kv_budget);
        *ns = n - e;
        c->n_evicted += e;
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
        codi_geglu(g, u, (int)ff);
    } else {
        for (size_t i = 0; i < ff; i++) {
            const float gv = g[i];
            g[i] = gv / (1.0f + expf(-gv)) * u[i];
        }
    }
}

/* ------------------------------------------------------------ experts */

typedef struct {
    const codi_hparams *hp;
    float *g;
    const float *u;
    size_t width;
    int n;
    atomic_int next;
} act_job;

static void act_row(const codi_hparams *hp, float *g, const float *u, size_t width) {
    if (hp->ffn_act == CODI_ACT_GELU) {
        codi_geglu(g, u, (int)width);
    } else {
        codi_swiglu(g, u, (int)width);
    }
}

static void act_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    act_job *j = arg;
    for (int b; (b = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->n;)
        act_row(j->hp, j->g + (size_t)b * j->width, j->u + (size_t)b * j->width, j->width);
}

/* g = act(g) * u for n rows of width floats */
static void act_rows(codi_context *c, float *g, const float *u, size_t width, int n) {
    act_job j = {&c->m->hp, g, u, width, n, 0};
    if (n < 4) {
        for (int b = 0; b < n; b++)
            act_row(j.hp, g + (size_t)b * width, u + (size_t)b * width, width);
        return;
    }
    codi_threadpool_run(c->pool, act_task, &j);
}

/* The k largest of v[0..n) (k <= n), largest first, ties to the lower
 * index; taken: n bytes of scratch. O(k n). */
static void top_k(const float *v, int n, int k, int32_t *out, uint8_t *taken) {
    memset(taken, 0, (size_t)n);
    for (int t = 0; t < k; t++) {
        int best = -1;
        for (int e = 0; e < n; e++)
            if (!taken[e] && (best < 0 || v[e] > v[best]))
                best = e;
        out[t] = best;
        taken[best] = 1;
    }
}

/* Routing of B tokens (router logits in c->rl): softmax over the experts,
 * the top n_expert_used by probability, their probabilities as weights
 * (renormalised when moe_norm_w), as llama.cpp's build_moe_ffn. Then the
 * (token, weight) pairs grouped by expert: ex_start/ex_row/ex_w. */
static void moe_route(codi_context *c, int B) {
    const codi_hparams *hp = &c->m->hp;
    const int E = hp->n_expert, K = hp->n_expert_used;
    for (int b = 0; b < B; b++) {
        float *p = c->rl + (size_t)b * E;
        float mx = p[0];
        for (int e = 1; e < E; e++)
            mx = p[e] > mx ? p[e] : mx;
        double sum = 0.0;
        for (int e = 0; e < E; e++) {
            p[e] = expf(p[e] - mx);
            sum += p[e];
        }
        const float inv = (float)(1.0 / sum);
        for (int e = 0; e < E; e++)
            p[e] *= inv;
        int32_t *se = c->sel_e + (size_t)b * K;
        float *sw = c->sel_w + (size_t)b * K;
        top_k(p, E, K, se, c->ex_need_route);
        for (int k = 0; k < K; k++)
            sw[k] = p[se[k]];
        if (hp->moe_norm_w) {
            float ws = 0.0f;
            for (int k = 0; k < K; k++)
                ws += sw[k];
            ws = ws < 6.103515625e-5f ? 6.103515625e-5f : ws; /* as llama.cpp's clamp */
            for (int k = 0; k < K; k++)
                sw[k] /= ws;
        }
    }
    int32_t *st = c->ex_start;
    memset(st, 0, (size_t)(E + 1) * sizeof(int32_t));
    for (int i = 0; i < B * K; i++)
        st[c->sel_e[i] + 1]++;
    for (int e = 0; e < E; e++)
        st[e + 1] += st[e];
    for (int b = 0; b < B; b++)
        for (int k = 0; k < K; k++) {
            const int e = c->sel_e[(size_t)b * K + k];
            const int32_t at = st[e]++;
            c->ex_row[at] = b;
            c->ex_k[at] = k;
            c->ex_w[at] = c->sel_w[(size_t)b * K + k];
        }
    for (int e = E; e > 0; e--) /* st[e] now holds the end of e: shift back */
        st[e] = st[e - 1];
    st[0] = 0;
}

/* The views of expert e's gate, up and down matrices in the mapped file. */
static void expert_views(const codi_weight proto[3], const size_t stride[3], int e, codi_weight w[3]) {
    for (int i = 0; i < 3; i++) {
        w[i] = proto[i];
        w[i].data = (const uint8_t *)proto[i].data + (size_t)e * stride[i];
    }
}

/* Pre-gate (T1): layer nl's router applied to the residual rows x of layer
 * nl - dist (after its attention), normalised with nl's FFN norm, predicts
 * nl's experts -- or, with a decoupled router, its logits computed already
 * (exact). The union over the rows is recorded
 * for the recall count and, while *room lasts, prefetched by the store's
 * I/O threads. */
static void moe_pregate(codi_context *c, int nl, int dist, const float *x, int B, int *room) {
    const codi_hparams *hp = &c->m->hp;
    const int E = hp->n_expert, K = hp->n_expert_used, NL = hp->n_layer;
    const codi_layer *L = &c->m->layers[nl];
    const float *z0 = c->rl2;
    if (c->rl_all && nl - dist >= hp->router_src && dist > 0) {
        z0 = c->rl_all + (size_t)nl * (size_t)c->n_batch * (size_t)E;
    } else {
        /* the residual stream now, normalised as layer nl's FFN input
         * will be (its own norm weights) */
        const int d = hp->n_embd;
        for (int b = 0; b < B; b++)
            codi_rmsnorm(c->xe + (size_t)b * d, x + (size_t)b * d, L->ffn_norm, d, hp->norm_eps);
        matmul1(c, &L->router, c->rl2, c->xe, B);
    }
    const bool record = dist <= CODI_MOE_MAX_LOOKAHEAD; /* recall kept per distance up to 4 */
    const size_t di = (size_t)(dist > 0 && record ? dist - 1 : 0) * (size_t)NL + (size_t)nl;
    uint8_t *pred = record ? c->pred + di * (size_t)E : c->ex_need + E; /* scratch beyond */
    /* how often guesses at this distance were right so far (a decoupled
     * router's always are): the store admits a prefetch only over an
     * expert that is less likely to be used */
    const int dd = dist > 0 && record ? dist - 1 : 0;
    const double p_right = z0 != c->rl2 ? 2.0
                                         : ((double)c->moe.look_right[dd] + 1.0) /
                                               ((double)c->moe.look_used[dd] + 2.0);
    memset(pred, 0, (size_t)E);
    /* top-K of the logits (softmax keeps the order), strongest first */
    int n_pred = 0;
    for (int b = 0; b < B; b++) {
        const float *z = z0 + (size_t)b * E;
        int32_t top[64];
        const int k = CODI_MIN(K, 64);
        top_k(z, E, k, top, c->ex_need_route);
        for (int t = 0; t < k; t++) {
            const int best = top[t];
            if (!pred[best]) {
                pred[best] = 1;
                n_pred++;
                if (*room > 0 && !codi_expert_store_resident(c->store, nl * c->sl_mul, best)) {
                    codi_expert_store_prefetch_p(c->store, nl * c->sl_mul, best, p_right);
                    (*room)--;
                }
            }
        }
    }
    /* layer 0's own-router guess (dist 0) is not a prediction of a later
     * layer: not counted */
    if (record)
        c->pred_made[di] = dist > 0;
    if (dist == 1)
        c->moe.predicted += (uint64_t)n_pred;
}

/* Runs an expert (its gate, up, down in w) over the n rows starting at r0
 * of ex_row, adding its weighted output to acc. */
static void expert_run(codi_context *c, const codi_weight w[3], const codi_weight *lo,
                       int32_t r0, int32_t n) {
    const size_t d = (size_t)c->m->hp.n_embd, fe = (size_t)c->m->hp.n_ff_exp;
    for (int32_t r = 0; r < n; r++)
        memcpy(c->xe + (size_t)r * d, c->xn + (size_t)c->ex_row[r0 + r] * d, d * sizeof(float));
    {
        const codi_weight *ws[2] = {&w[0], &w[1]};
        float *ys[2] = {c->g, c->u};
        matmul_mixed(c, 2, ws, ys, c->xe, n);
    }
    if (lo) { /* bit-nested: W = high part + residual, before the activation */
        const codi_weight *ws[2] = {&lo[0], &lo[1]};
        float *ys[2] = {c->g2, c->u2};
        matmul_mixed(c, 2, ws, ys, c->xe, n);
        for (size_t i = 0; i < (size_t)n * fe; i++) {
            c->g[i] += c->g2[i];
            c->u[i] += c->u2[i];
        }
        c->moe.uses_8bit++;
    }
    act_rows(c, c->g, c->u, fe, n);
    matmul1(c, &w[2], c->ye, c->g, n);
    if (lo) {
        matmul1(c, &lo[2], c->ye2, c->g, n);
        for (size_t i = 0; i < (size_t)n * d; i++)
            c->ye[i] += c->ye2[i];
    }
    const size_t K = (size_t)c->m->hp.n_expert_used;
    for (int32_t r = 0; r < n; r++) {
        float *a = c->acc + ((size_t)c->ex_row[r0 + r] * K + (size_t)c->ex_k[r0 + r]) * d;
        const float *y = c->ye + (size_t)r * d;
        const float wt = c->ex_w[r0 + r];
        for (size_t i = 0; i < d; i++)
            a[i] = wt * y[i];
    }
}

/* Decode (B = 1): n experts of the token at once -- gate and up of all of
 * them in one matmul (they share the input row), the activations, every
 * down projection in one matmul_each -- instead of three pool runs per
 * expert. The same kernels on the same rows as expert_run, so the same
 * numbers. rs[k]: expert k's entry in ex_row/ex_k/ex_w. false (nothing
 * done) when the weights' activation types differ or n is out of range. */
static bool experts_run_fused(codi_context *c, int n, const codi_weight (*w)[3], const int32_t *rs) {
    if (n < 2 || 2 * n > MAX_FUSED)
        return false;
    const int vgu = codi_type_get(w[0][0].type)->vec_dot_type,
              vd = codi_type_get(w[0][2].type)->vec_dot_type;
    for (int k = 0; k < n; k++)
        if (codi_type_get(w[k][0].type)->vec_dot_type != vgu ||
            codi_type_get(w[k][1].type)->vec_dot_type != vgu ||
            codi_type_get(w[k][2].type)->vec_dot_type != vd || w[k][0].perm || w[k][1].perm ||
            w[k][2].perm)
            return false;
    const size_t d = (size_t)c->m->hp.n_embd, fe = (size_t)c->m->hp.n_ff_exp;
    const codi_weight *ws[MAX_FUSED];
    float *ys[MAX_FUSED];
    for (int k = 0; k < n; k++) {
        ws[2 * k] = &w[k][0];
        ys[2 * k] = c->g + (size_t)k * fe;
        ws[2 * k + 1] = &w[k][1];
        ys[2 * k + 1] = c->u + (size_t)k * fe;
    }
    matmul(c, 2 * n, ws, ys, c->xn, 1);
    act_rows(c, c->g, c->u, fe, n);
    for (int k = 0; k < n; k++) {
        ws[k] = &w[k][2];
        ys[k] = c->acc + (size_t)c->ex_k[rs[k]] * d; /* row 0, choice ex_k */
    }
    matmul_each(c, n, ws, ys, c->g);
    for (int k = 0; k < n; k++) {
        float *a = ys[k];
        const float wt = c->ex_w[rs[k]];
        for (size_t i = 0; i < d; i++)
            a[i] = wt * a[i];
    }
    return true;
}

/* Weight views of store parts. */
static void parts_views(const codi_weight proto[3], const void *const *parts, codi_weight w[3]) {
    for (int i = 0; i < 3; i++) {
        w[i] = proto[i];
        w[i].data = parts[i];
    }
}

/* Expert e of layer l, its high part pinned in the store (parts hi): with a
 * residual when bits allow (acquired here, and released), run, release.
 * Bit-nested models, bits 0 (auto): the residual is used when it is cached
 * now; otherwise an I/O thread may fetch it for next time, admitted only
 * over a less used expert (hottest experts get their bits first). */
static int expert_run_pinned(codi_context *c, int l, int e, const void *const *hi, int32_t r0,
                             int32_t n, char *err, size_t errlen) {
    const codi_layer *L = &c->m->layers[l];
    codi_weight w[3], wl[3];
    parts_views(L->exp, hi, w);
    const codi_weight *lo = NULL;
    const int sh = l * c->sl_mul, slo = sh + 1;
    if (c->m->hp.nested && c->moe_bits != 4) {
        const bool have = codi_expert_store_resident(c->store, slo, e);
        if (c->moe_bits == 8 || have) {
            const void *parts[CODI_EXPERT_MAX_PARTS];
            int rc = codi_expert_store_acquire(c->store, slo, e, parts, err, errlen);
            if (rc) {
                codi_expert_store_release(c->store, sh, e);
                return rc;
            }
            parts_views(L->exp_lo, parts, wl);
            lo = wl;
        } else if (c->moe_look > 0) {
            codi_expert_store_prefetch_p(c->store, slo, e, codi_expert_store_use_share(c->store, sh, e));
        }
    }
    expert_run(c, w, lo, r0, n);
    if (lo)
        codi_expert_store_release(c->store, slo, e);
    codi_expert_store_release(c->store, sh, e);
    return 0;
}

/* Expert e of layer l from the store: acquire (pinned), run, release. */
static int expert_run_stored(codi_context *c, int l, int e, int32_t r0, int32_t n, char *err,
                             size_t errlen) {
    const void *parts[CODI_EXPERT_MAX_PARTS];
    int rc = codi_expert_store_acquire(c->store, l * c->sl_mul, e, parts, err, errlen);
    if (rc)
        return rc;
    return expert_run_pinned(c, l, e, parts, r0, n, err, errlen);
}

/* After an error: give back the pins of step 1 that were not run yet, so a
 * failed pass leaves the whole cache usable. */
static int unpin_rest(codi_context *c, int l, int rc) {
    for (int e = 0; e < c->m->hp.n_expert; e++)
        if (c->ex_need[e] == 2) {
            codi_expert_store_release(c->store, l * c->sl_mul, e);
            c->ex_need[e] = 0;
        }
    return rc;
}

/* MoE FFN of layer l on the B normalised rows in c->xn; the result replaces
 * them. Each used expert runs once over the tokens routed to it. With an
 * expert store, resident experts run first (pinned before anything else
 * is fetched), then layer l+1's experts are prefetched, then the misses of
 * this layer are read and run. */
static int moe_ffn(codi_context *c, int l, int B, char *err, size_t errlen) {
    const codi_model *m = c->m;
    const codi_hparams *hp = &m->hp;
    const codi_layer *L = &m->layers[l];
    const size_t d = (size_t)hp->n_embd;
    const int E = hp->n_expert;
    if (c->rl_all && l >= hp->router_src) {
        /* decoupled router: every layer's logits from layer router_src's
         * FFN input, computed there, once */
        const size_t per = (size_t)c->n_batch * (size_t)E;
        if (l == hp->router_src)
            for (int j = l; j < hp->n_layer; j++)
                matmul1(c, &m->layers[j].router, c->rl_all + (size_t)j * per, c->xn, B);
        memcpy(c->rl, c->rl_all + (size_t)l * per, (size_t)B * (size_t)E * sizeof(float));
    } else {
        matmul1(c, &L->router, c->rl, c->xn, B);
    }
    moe_route(c, B);
    int n_need = 0;
    for (int e = 0; e < E; e++)
        n_need += c->ex_start[e + 1] > c->ex_start[e];
    c->moe.expert_uses += (uint64_t)n_need;
    if (!c->store) {
        if (B == 1 && !(hp->nested && c->moe_bits != 4)) { /* decode: all experts at once */
            codi_weight fw[MAX_FUSED / 2][3];
            int32_t rs[MAX_FUSED / 2];
            int nf = 0;
            for (int e = 0; e < E && nf < MAX_FUSED / 2; e++)
                if (c->ex_start[e + 1] > c->ex_start[e]) {
                    expert_views(L->exp, L->exp_stride, e, fw[nf]);
                    rs[nf++] = c->ex_start[e];
                }
            if (nf == n_need && experts_run_fused(c, nf, fw, rs))
                goto experts_done;
        }
        for (int e = 0; e < E; e++) {
            const int32_t r0 = c->ex_start[e], n = c->ex_start[e + 1] - r0;
            if (n == 0)
                continue;
            codi_weight w[3], wl[3];
            expert_views(L->exp, L->exp_stride, e, w);
            const bool lo = hp->nested && c->moe_bits != 4;
            if (lo)
                expert_views(L->exp_lo, L->exp_lo_stride, e, wl);
            expert_run(c, w, lo ? wl : NULL, r0, n);
        }
    } else {
        for (int dist = 1; dist <= c->moe_look; dist++) { /* how good were the
                                                              predictions of this layer? */
            const size_t di = (size_t)(dist - 1) * (size_t)hp->n_layer + (size_t)l;
            if (!c->pred_made[di])
                continue;
            uint64_t right = 0;
            for (int e = 0; e < E; e++)
                right += c->ex_start[e + 1] > c->ex_start[e] && c->pred[di * (size_t)E + (size_t)e];
            c->moe.look_right[dist - 1] += right;
            c->moe.look_used[dist - 1] += (uint64_t)n_need;
            if (dist == 1) {
                c->moe.predicted_right += right;
                c->moe.next_used += (uint64_t)n_need;
            }
            c->pred_made[di] = 0;
        }
        /* 1. pin the resident experts this layer needs */
        const void *parts[CODI_EXPERT_MAX_PARTS];
        int n_pinned = 0;
        for (int e = 0; e < E; e++) {
            c->ex_need[e] = 0;
            if (c->ex_start[e + 1] == c->ex_start[e])
                continue;
            c->ex_need[e] = 1;
            if (n_pinned < c->moe.cache_slots - 1 &&
                codi_expert_store_resident(c->store, l * c->sl_mul, e)) {
                int rc = codi_expert_store_acquire(c->store, l * c->sl_mul, e, parts, err, errlen);
                if (rc) {
                    c->ex_need[e] = 1;
                    return unpin_rest(c, l, rc);
                }
                for (int i = 0; i < 3; i++)
                    c->ex_parts[(size_t)e * 3 + (size_t)i] = parts[i];
                c->ex_need[e] = 2;
                n_pinned++;
            }
        }
        /* the misses of this layer: queued first, so the I/O threads read
         * them while the resident experts run */
        for (int e = 0; e < E; e++)
            if (c->ex_need[e] == 1)
                codi_expert_store_prefetch_first(c->store, l * c->sl_mul, e);
        /* 2. pre-gate layer l+1, prefetching into the slots this layer
         * does not need */
        int room = (int)CODI_MIN(CODI_MAX(0, c->moe.cache_slots - n_need), (int64_t)INT32_MAX);
        /* (a decoupled router knows the whole schedule, but prefetching it
         * all at once evicts experts needed sooner: 11.5 -> 28.9 MiB read
         * per token on moefied SmolLM2 at a 50% budget; --moe-lookahead
         * layers it is) */
        for (int dist = 1; dist <= c->moe_look && l + dist < hp->n_layer; dist++)
            moe_pregate(c, l + dist, dist, c->x, B, &room);
        /* 3. run the pinned ones (a decode step: together), then read and
         * run the rest */
        if (B == 1 && n_pinned >= 2 && !(hp->nested && c->moe_bits != 4)) {
            codi_weight fw[MAX_FUSED / 2][3];
            int32_t rs[MAX_FUSED / 2];
            int fe_[MAX_FUSED / 2];
            int nf = 0;
            for (int e = 0; e < E && nf < MAX_FUSED / 2; e++)
                if (c->ex_need[e] == 2) {
                    parts_views(L->exp, c->ex_parts + (size_t)e * 3, fw[nf]);
                    rs[nf] = c->ex_start[e];
                    fe_[nf++] = e;
                }
            if (nf == n_pinned && experts_run_fused(c, nf, fw, rs))
                for (int k = 0; k < nf; k++) {
                    codi_expert_store_release(c->store, l * c->sl_mul, fe_[k]);
                    c->ex_need[fe_[k]] = 0; /* done */
                }
        }
        for (int pass = 2; pass >= 1; pass--)
            for (int e = 0; e < E; e++) {
                if (c->ex_need[e] != pass)
                    continue;
                const int32_t r0 = c->ex_start[e], n = c->ex_start[e + 1] - r0;
                int rc;
                if (pass == 2) {
                    c->ex_need[e] = 0; /* expert_run_pinned releases its pin */
                    rc = expert_run_pinned(c, l, e, c->ex_parts + (size_t)e * 3, r0, n, err, errlen);
                } else {
                    rc = expert_run_stored(c, l, e, r0, n, err, errlen);
                }
                if (rc)
                    return unpin_rest(c, l, rc);
            }
    }
experts_done:
    if (L->sh_gate.data) { /* shared expert, gated by sigmoid(sh_inp . x) */
        const size_t fs = (size_t)hp->n_ff_shexp;
        const codi_weight *ws[2] = {&L->sh_gate, &L->sh_up};
        float *ys[2] = {c->g, c->u};
        matmul_mixed(c, 2, ws, ys, c->xn, B);
        act_rows(c, c->g, c->u, fs, B);
        matmul1(c, &L->sh_down, c->shy, c->g, B);
        if (L->sh_inp.data) {
            matmul1(c, &L->sh_inp, c->rl, c->xn, B); /* [B] gate logits */
            for (int b = 0; b < B; b++) {
                const float gt = 1.0f / (1.0f + expf(-c->rl[b]));
                float *y = c->shy + (size_t)b * d;
                for (size_t i = 0; i < d; i++)
                    y[i] *= gt;
            }
        }
    }
    { /* the sum over each token's choices, in choice order, into xn */
        const size_t K = (size_t)hp->n_expert_used;
        for (int b = 0; b < B; b++) {
            float *o = c->xn + (size_t)b * d;
            const float *a = c->acc + (size_t)b * K * d;
            memcpy(o, a, d * sizeof(float));
            for (size_t k = 1; k < K; k++)
                for (size_t i = 0; i < d; i++)
                    o[i] += a[k * d + i];
            if (L->sh_gate.data)
                for (size_t i = 0; i < d; i++)
                    o[i] += c->shy[(size_t)b * d + i];
        }
    }
    return 0;
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
    kv_layer_prefetch(c, j->layer + 1, b);
}

/* One pass over B <= n_batch tokens at positions c->row_pos[] of sequences
 * c->row_seq[]; logits of the n_out rows c->out_idx[] go to logits. */
static int forward_batch(codi_context *c, const int32_t *tokens, int B,
                         int n_out, float *logits, char *err, size_t errlen) {
    const codi_model *m = c->m;
    const codi_hparams *hp = &m->hp;
    const int d = hp->n_embd;
    for_rows(c, 0, B, tokens, row_embed);
    attn_tiles(c, B);
    if (c->kv_kch)
        kch_pass_rows(c, B);
    c->moe.tokens += (uint64_t)B;
    if (c->store && c->moe_look > 0) {
        /* layer 0 has no earlier layer to pre-gate it: its own router on
         * the embeddings */
        int room = (int)CODI_MIN(c->moe.cache_slots, (int64_t)INT32_MAX);
        moe_pregate(c, 0, 0, c->x, B, &room);
    }
    for (int l = 0; l < hp->n_layer; l++) {
        const codi_layer *L = &m->layers[l];
        {
            const codi_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
            float *ys[3] = {c->q, c->k, c->v};
            matmul_mixed(c, 3, ws, ys, c->xn, B);
        }
        for_rows(c, l, B, tokens, row_qkv);
        if (c->kv_bits < 16)
            store_kv_quant(c, l, B);
        if (c->kv_kch)
            kch_quantize(c, l);
        attn_job aj = {c, l, B, 0};
        codi_threadpool_run(c->pool, attn_task, &aj);
        if (c->kv_kch)
            kch_stage(c, l);
        if (c->kv_budget > 0)
            kv_budget_step(c, l);
        matmul1(c, &L->wo, c->xn, c->att, B);
        for_rows(c, l, B, tokens, row_attn_out);
        if (hp->n_expert > 0) {
            int rc = moe_ffn(c, l, B, err, errlen);
            if (rc)
                return rc;
        } else {
            const codi_weight *ws[2] = {&L->w_gate, &L->w_up};
            float *ys[2] = {c->g, c->u};
            matmul_mixed(c, 2, ws, ys, c->xn, B);
            for_rows(c, l, B, tokens, row_act);
            matmul1(c, &L->w_down, c->xn, c->g, B);
        }
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
    return 0;
}

/* ------------------------------------------------------------ recompute */

/* Recomputation (kv_recompute): a sequence's budgeted cache rebuilt from
 * its token ids. Layer by layer over the whole history (n tokens): the
 * hidden states of all n tokens (rc_h) give layer l's K/V of every token
 * (rc_k, rc_v), every token attends causally to all earlier ones (no
 * eviction: the full-cache result), and the next hidden states follow;
 * then the policy picks the tokens layer l keeps, with importance from
 * that full attention (decayed as in normal operation), and their K/V go
 * into the budgeted slots. Tokens evicted earlier that recent queries
 * attend to again come back, and the kept K/V are the full-cache ones. */

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* embedding (scaled for Gemma) of a history token, into rc_h */
static void row_rc_embed(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_model *m = c->m;
    const int d = m->hp.n_embd;
    float *x = c->x + (size_t)b * d;
    codi_kernel_to_float(m->tok_embd.type)(
        (const uint8_t *)m->tok_embd.data + (size_t)j->tokens[b] * m->tok_embd.row_bytes, x, d);
    if (m->hp.embd_scale != 1.0f)
        for (int i = 0; i < d; i++)
            x[i] *= m->hp.embd_scale;
}

/* the layer's attention norm of a history token */
static void row_rc_norm(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const int d = hp->n_embd;
    codi_rmsnorm(c->xn + (size_t)b * d, c->x + (size_t)b * d, c->m->layers[j->layer].attn_norm, d,
                 hp->norm_eps);
}

/* qkv_prep, then K/V as fp16 into column pos of rc_k / rc_v (what an f16
 * cache stores) */
static void row_rc_qkv(const rows_job *j, int b) {
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const size_t dq = (size_t)hp->n_head * hp->head_dim, dkv = (size_t)hp->n_head_kv * hp->head_dim;
    float *q = c->q + (size_t)b * dq, *k = c->k + (size_t)b * dkv, *v = c->v + (size_t)b * dkv;
    const int p = c->row_pos[b];
    qkv_prep(c, &c->m->layers[j->layer], q, k, v, p);
    const size_t ld = (size_t)c->n_ctx;
    uint16_t h[2][512];
    for (size_t i0 = 0; i0 < dkv; i0 += 512) {
        const size_t m = CODI_MIN((size_t)512, dkv - i0);
        codi_fp32_to_fp16_row(k + i0, h[0], (int64_t)m);
        codi_fp32_to_fp16_row(v + i0, h[1], (int64_t)m);
        for (size_t i = 0; i < m; i++) {
            c->rc_k[(i0 + i) * ld + (size_t)p] = h[0][i];
            c->rc_v[(i0 + i) * ld + (size_t)p] = h[1][i];
        }
    }
    if (c->rc_vn)
        for (int kh = 0; kh < hp->n_head_kv; kh++)
            c->rc_vn[(size_t)kh * ld + (size_t)p] = v_norm(v + (size_t)kh * hp->head_dim, hp->head_dim);
}

typedef struct {
    codi_context *c;
    int layer, B;
    int32_t last;    /* the history's last position */
    atomic_int next; /* next work item (see threadpool.h) */
} rc_attn_job;

/* Full causal attention of the T history tokens b0..b0+T of the chunk
 * (positions row_pos), query heads h0..h0+G of KV head kh, over rc_k /
 * rc_v: the kernels and roundings of an f16 cache (attn_tile_f16), and
 * each query's weights, decayed by its distance to the last position,
 * added to the thread's importance row. T > 1 only when no row's sliding
 * window cuts keys off. */
static void rc_attn(codi_context *c, int layer, int ith, int32_t last, int b0, int T, int kh, int h0,
                    int G) {
    const codi_hparams *hp = &c->m->hp;
    const int hd = hp->head_dim, M = T * G;
    const size_t dq = (size_t)hp->n_head * hd, ld = (size_t)c->n_ctx, rows = (size_t)ATT_T * ATT_G;
    const float scale = hp->arch_id == CODI_ARCH_GEMMA3 ? 1.0f : hp->attn_scale;
    const bool swa = c->m->layers[layer].swa && hp->n_swa > 0;
    float *scb = c->rc_sc + (size_t)ith * rows * ld;
    uint16_t *pb = c->rc_p16 + (size_t)ith * ld;
    float *q32 = c->rc_q + (size_t)ith * rows * hd;
    int64_t *imp = c->rc_imp + ((size_t)ith * hp->n_head_kv + (size_t)kh) * ld;
    int n[ATT_T * ATT_G], n_max = 0;
    float *o[ATT_T * ATT_G];
    const int t0 = T == 1 && swa ? CODI_MAX(0, c->row_pos[b0] + 1 - hp->n_swa) : 0;
    for (int r = 0; r < T; r++) {
        const int b = b0 + r, n_kv = c->row_pos[b] + 1 - t0;
        n_max = CODI_MAX(n_max, n_kv);
        const float *qb = c->q + (size_t)b * dq + (size_t)h0 * hd;
        float *qr = q32 + (size_t)r * G * hd;
        for (int g = 0; g < G; g++) {
            uint16_t q16[1024];
            codi_fp32_to_fp16_row(qb + (size_t)g * hd, q16, hd);
            codi_fp16_to_fp32_row(q16, qr + (size_t)g * hd, hd);
            n[r * G + g] = n_kv;
            o[r * G + g] = c->att + (size_t)b * dq + (size_t)(h0 + g) * hd;
        }
    }
    const uint16_t *kl = c->rc_k + (size_t)kh * hd * ld + t0;
    const uint16_t *vl = c->rc_v + (size_t)kh * hd * ld + t0;
    codi_attn_scores_f16(q32, M, hd, kl, ld, n_max, scb, ld, scale);
    for (int jr = 0; jr < M; jr++) {
        float *sj = scb + (size_t)jr * ld;
        codi_softmax_inplace(sj, n[jr]);
        if (c->kv_policy != CODI_KV_WINDOW) {
            const int32_t pos = c->row_pos[b0 + jr / G];
            const float kd = kv_layer_decay(c, layer);
            const float wq = kd == 1.0f ? 1.0f : powf(kd, (float)(last - pos));
            const float *vn = c->rc_vn ? c->rc_vn + (size_t)kh * ld + t0 : NULL;
            if (wq > 0.0f)
                codi_imp_accumulate(imp + t0, sj, 0, 1, n[jr], wq, vn);
        }
        codi_fp32_to_fp16_row(sj, pb, n[jr]);
        codi_fp16_to_fp32_row(pb, sj, n[jr]);
    }
    codi_attn_values_f16(scb, ld, n, M, vl, ld, hd, o);
}

static void rc_attn_task(void *arg, int ith, int nth) {
    (void)nth;
    rc_attn_job *j = arg;
    codi_context *c = j->c;
    const codi_hparams *hp = &c->m->hp;
    const int gqa = hp->n_head / hp->n_head_kv;
    const bool swa = c->m->layers[j->layer].swa && hp->n_swa > 0;
    const int ng = (gqa + ATT_G - 1) / ATT_G, per_tile = hp->n_head_kv * ng;
    const int total = (j->B + ATT_T - 1) / ATT_T * per_tile;
    for (int w; (w = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < total;) {
        const int ti = w / per_tile, kh = (w % per_tile) / ng;
        const int h0 = kh * gqa + (w % ng) * ATT_G, G = CODI_MIN(ATT_G, kh * gqa + gqa - h0);
        const int b0 = ti * ATT_T, T = CODI_MIN(ATT_T, j->B - b0);
        const bool tile = !swa || c->row_pos[b0 + T - 1] + 1 <= hp->n_swa;
        if (tile)
            rc_attn(c, j->layer, ith, j->last, b0, T, kh, h0, G);
        else
            for (int r = 0; r < T; r++)
                rc_attn(c, j->layer, ith, j->last, b0 + r, 1, kh, h0, G);
    }
}

/* After layer l of a rebuild: the tokens each KV head keeps (sinks, the
 * recent window, the most important of the rest by the policy, up to the
 * budget), with their K/V from rc_k / rc_v, into the slots in position
 * order; head kh's importance in row kh of rc_key. */
static void rc_store_layer(codi_context *c, int seq, int layer, int32_t n) {
    const codi_hparams *hp = &c->m->hp;
    const size_t hd = (size_t)hp->head_dim, dkv = (size_t)hp->n_head_kv * hd, ld = (size_t)c->n_ctx;
    const size_t cap = (size_t)c->kv_cap;
    int32_t *ns = &c->n_slots[(size_t)seq * hp->n_layer + (size_t)layer];
    const bool track = c->kv_policy != CODI_KV_WINDOW;
    uint8_t *mark = c->rc_mark;
    uint8_t *kb = kv_at(c, c->kc, seq, layer), *vb = kv_at(c, c->vc, seq, layer);
    const int gs = c->kv_gs, hpg = (int)(hd / (size_t)gs), bits = c->kv_bits;
    const float *lam = c->smooth ? c->smooth + (size_t)layer * dkv : NULL;
    const float *mu = c->smooth ? c->kshift + (size_t)layer * dkv : NULL;
    const int32_t last = n - 1;
    int64_t restored = 0;
    int32_t s = 0;
    for (int kh = 0; kh < hp->n_head_kv; kh++) {
        const size_t si = sl_index(c, seq, layer, kh);
        int32_t *sp = c->slot_pos + si;
        const float *key = c->rc_key + (size_t)kh * ld;
        memset(mark, 0, (size_t)n);
        for (int32_t t = 0; t < *ns; t++)
            if (sp[t] < n)
                mark[sp[t]] = 1;
        /* 2: kept after the rebuild */
        int32_t nc = 0, kept = 0;
        for (int32_t p = 0; p < n; p++) {
            if (n <= c->kv_budget || p < c->kv_sinks || p > last - c->kv_window) {
                mark[p] |= 2;
                kept++;
            } else {
                c->rc_idx[nc++] = p;
            }
        }
        const int32_t room = CODI_MIN(n, c->kv_budget) - kept;
        CODI_ASSERT(room >= 0 && room <= nc);
        if (track) /* least important first (ties: older first), as kv_evict_head */
            sort_by_key(c->rc_idx, nc, key);
        /* window: rc_idx is in position order already, oldest first */
        for (int32_t k = nc - room; k < nc; k++)
            mark[c->rc_idx[k]] |= 2;
        s = 0;
        for (int32_t p = 0; p < n; p++) {
            if (!(mark[p] & 2))
                continue;
            restored += !(mark[p] & 1);
            sp[s] = p;
            c->imp[si + (size_t)s] = track ? key[p] : 0.0f;
            if (c->vnorm)
                c->vnorm[si + (size_t)s] = c->rc_vn[(size_t)kh * ld + (size_t)p];
            if (bits == 16) {
                for (size_t i = (size_t)kh * hd; i < (size_t)(kh + 1) * hd; i++) {
                    ((uint16_t *)(kb + i * c->kv_row))[s] = c->rc_k[i * ld + (size_t)p];
                    ((uint16_t *)(vb + i * c->kv_row))[s] = c->rc_v[i * ld + (size_t)p];
                }
            } else {
                /* as store_kv_quant, from the fp16 values (their rounding
                 * is far below a q8 step) */
                for (int kv = 0; kv < 2; kv++) {
                    uint8_t *base = kv ? vb : kb;
                    uint16_t *scr = sc_at(c, kv ? c->vsc : c->ksc, seq, layer);
                    uint16_t *mnr = sc_at(c, kv ? c->vmn : c->kmn, seq, layer);
                    const uint16_t *src = kv ? c->rc_v : c->rc_k;
                    for (int g = kh * hpg; g < (kh + 1) * hpg; g++) {
                        float x[1024];
                        uint8_t codes[1024];
                        for (int i = 0; i < gs; i++) {
                            const size_t ch = (size_t)g * gs + (size_t)i;
                            x[i] = codi_fp16_to_fp32(src[ch * ld + (size_t)p]);
                            if (!kv && lam)
                                x[i] = (x[i] - mu[ch]) / lam[ch];
                        }
                        codi_kvq_quantize_group(bits, x, gs, codes, &scr[(size_t)g * cap + (size_t)s],
                                                &mnr[(size_t)g * cap + (size_t)s]);
                        for (int i = 0; i < gs; i++)
                            codi_kvq_set(bits, base + ((size_t)g * gs + (size_t)i) * c->kv_row, (size_t)s,
                                         codes[i]);
                    }
                }
            }
            s++;
        }
    }
    c->rc_restored += restored / hp->n_head_kv; /* tokens per head, as n_evicted */
    *ns = s;
}

/* Rebuild sequence seq's budgeted cache from its token ids (dense models;
 * context_create refuses MoE). Scratch: the pass buffers, in chunks of
 * n_batch tokens. */
static void kv_recompute_seq(codi_context *c, int seq) {
    const double t_start = now_seconds();
    const codi_model *m = c->m;
    const codi_hparams *hp = &m->hp;
    const size_t d = (size_t)hp->n_embd, N = (size_t)c->n_ctx;
    const int32_t n = c->n_past[seq];
    const int32_t *toks = c->tok_hist + (size_t)seq * N;
    for (int32_t c0 = 0; c0 < n; c0 += c->n_batch) {
        const int B = (int)CODI_MIN(c->n_batch, n - c0);
        for_rows(c, 0, B, toks + c0, row_rc_embed);
        memcpy(c->rc_h + (size_t)c0 * d, c->x, (size_t)B * d * sizeof(float));
    }
    for (int l = 0; l < hp->n_layer; l++) {
        const codi_layer *L = &m->layers[l];
        const bool last_layer = l + 1 == hp->n_layer; /* its output is not needed */
        const size_t NI = (size_t)hp->n_head_kv * N; /* one thread's importance rows */
        memset(c->rc_imp, 0, (size_t)c->n_threads * NI * sizeof(int64_t));
        for (int32_t c0 = 0; c0 < n; c0 += c->n_batch) {
            const int B = (int)CODI_MIN(c->n_batch, n - c0);
            float *h = c->rc_h + (size_t)c0 * d;
            memcpy(c->x, h, (size_t)B * d * sizeof(float));
            for (int b = 0; b < B; b++) {
                c->row_pos[b] = c0 + b;
                c->row_seq[b] = seq;
            }
            for_rows(c, l, B, NULL, row_rc_norm);
            {
                const codi_weight *ws[3] = {&L->wq, &L->wk, &L->wv};
                float *ys[3] = {c->q, c->k, c->v};
                matmul_mixed(c, 3, ws, ys, c->xn, B);
            }
            for_rows(c, l, B, NULL, row_rc_qkv);
            rc_attn_job aj = {c, l, B, n - 1, 0};
            codi_threadpool_run(c->pool, rc_attn_task, &aj);
            if (last_layer)
                continue;
            matmul1(c, &L->wo, c->xn, c->att, B);
            for_rows(c, l, B, NULL, row_attn_out);
            const codi_weight *ws[2] = {&L->w_gate, &L->w_up};
            float *ys[2] = {c->g, c->u};
            matmul_mixed(c, 2, ws, ys, c->xn, B);
            for_rows(c, l, B, NULL, row_act);
            matmul1(c, &L->w_down, c->xn, c->g, B);
            for_rows(c, l, B, NULL, row_ffn_out);
            memcpy(h, c->x, (size_t)B * d * sizeof(float));
        }
        for (size_t t = 0; t < NI; t++) { /* fixed point: the same sum in any order */
            int64_t sum = 0;
            for (int th = 0; th < c->n_threads; th++)
                sum += c->rc_imp[(size_t)th * NI + t];
            c->rc_key[t] = (float)((double)sum / IMP_ONE);
        }
        rc_store_layer(c, seq, l, n);
    }
    c->rc_count++;
    c->rc_seconds += now_seconds() - t_start;
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
        if (ROW_POS(i) < c->n_past[ROW_SEQ(i)]) {
            c->n_past[ROW_SEQ(i)] = ROW_POS(i);
            kv_drop_from(c, ROW_SEQ(i), ROW_POS(i));
        }
    if (c->tok_hist) /* the ids a rebuild evaluates again */
        for (int32_t i = 0; i < n; i++)
            c->tok_hist[(size_t)ROW_SEQ(i) * (size_t)c->n_ctx + (size_t)ROW_POS(i)] = tokens[i];
    size_t row = 0;
    for (int32_t s0 = 0; s0 < n; s0 += c->n_batch) {
        const int B = (int)CODI_MIN(c->n_batch, n - s0);
        int n_out = 0;
        for (int32_t s = 0; s < c->n_seq; s++)
            c->seq_cnt[s] = 0;
        for (int b = 0; b < B; b++) {
            const int32_t i = s0 + b;
            c->row_pos[b] = ROW_POS(i);
            c->row_seq[b] = ROW_SEQ(i);
            c->row_rank[b] = c->seq_cnt[c->row_seq[b]]++;
            c->seq_last[c->row_seq[b]] = c->row_pos[b]; /* positions rise within a sequence */
            c->logit_row[i] = ROW_KEEP(i) ? (int32_t)(row + (size_t)n_out) : -1;
            if (ROW_KEEP(i))
                c->out_idx[n_out++] = b;
        }
        int rc = forward_batch(c, tokens + s0, B, n_out, c->logits + row * (size_t)nv, err, errlen);
        if (rc) {
            /* what this pass cached is incomplete: forget it */
            for (int b = B - 1; b >= 0; b--)
                if (c->row_rank[b] == 0)
                    kv_drop_from(c, c->row_seq[b], c->row_pos[b]);
            c->has_logits = false;
            return rc;
        }
        row += (size_t)n_out;
        for (int b = 0; b < B; b++)
            c->n_past[c->row_seq[b]] = CODI_MAX(c->n_past[c->row_seq[b]], c->row_pos[b] + 1);
        /* every kv_recompute tokens a sequence gains: rebuild its cache
         * (not while calibrating key smoothing, which reads raw keys) */
        if (c->kv_recompute > 0 && !c->kstat)
            for (int32_t s = 0; s < c->n_seq; s++)
                if (c->seq_cnt[s] > 0 && c->n_past[s] - c->rc_last[s] >= c->kv_recompute) {
                    kv_recompute_seq(c, s);
                    c->rc_last[s] = c->n_past[s];
                }
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

typedef struct {
    codi_context *c;
    int32_t n;
    codi_sampler *const *s;
    const int32_t *rows;
    int32_t *out;
    atomic_int next, bad;
} sample_job;

static void sample_task(void *arg, int ith, int nth) {
    (void)ith;
    (void)nth;
    sample_job *j = arg;
    for (int k; (k = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed)) < j->n;) {
        const float *lg = codi_get_logits(j->c, j->rows[k]);
        j->out[k] = lg && j->s[k] ? codi_sampler_sample(j->s[k], lg) : -1;
        if (j->out[k] < 0)
            atomic_store_explicit(&j->bad, 1, memory_order_relaxed);
    }
}

/* A server step samples one token per stream, each over the whole
 * vocabulary (~0.2 ms for SmolLM2's 49152): on the worker thread alone
 * that was 8 x 0.2 ms of each 8-stream step with the pool idle. */
int codi_sample_rows(codi_context *c, int32_t n, codi_sampler *const *s, const int32_t *rows,
                     int32_t *out) {
    if (!c || n < 0 || (n > 0 && (!s || !rows || !out)))
        return CODI_EINVAL;
    if (n == 0)
        return 0;
    sample_job j = {c, n, s, rows, out, 0, 0};
    if (n == 1)
        sample_task(&j, 0, 1);
    else
        codi_threadpool_run(c->pool, sample_task, &j);
    return atomic_load(&j.bad) ? CODI_EINVAL : 0;
}

/* ------------------------------------------------------------ key smoothing */

/* Calibration text for the key smoothing scales when the caller gives none:
 * plain English prose of several registers, written for codi. */
static const char CALIB_TEXT[] =
    "The old harbour town wakes slowly. Before six the bakers have already lit their ovens, and the "
    "smell of bread drifts down the narrow streets towards the water, where fishing boats rock "
    "against the stone quay. By eight the market square is full: farmers unload crates of apples, "
    "cabbages and late tomatoes, a man sells knives and scissors from a folding table, and children "
    "run between the stalls on their way to school.\n\n"
    "How does a small engine decide what to keep in memory? It measures. Every design choice has a "
    "cost in bytes and a cost in time, and the only honest way to compare them is to run both on the "
    "same machine, with the same input, and to report the median of several runs together with the "
    "spread. A table of numbers without the command that produced it is a rumour, not a result.\n\n"
    "In 1969 the first message was sent between two computers more than three hundred miles apart. "
    "The system crashed after the second letter, but within a few years the network connected dozens "
    "of universities, and by the end of the century it had changed how people shop, write, argue and "
    "fall in love. Historians still debate which decisions mattered most: open standards, cheap "
    "hardware, or simply the stubborn curiosity of a few thousand engineers.\n\n"
    "Q: What is the capital of Australia?\nA: Canberra, not Sydney, although many people guess the "
    "larger city.\nQ: Why is the sky blue?\nA: Air molecules scatter short wavelengths of sunlight "
    "more strongly than long ones, so blue light reaches our eyes from every direction.\n";

static int calibrate_smoothing(codi_context *c, const char *text, char *err, size_t errlen) {
    const codi_hparams *hp = &c->m->hp;
    const size_t dkv = (size_t)hp->n_head_kv * hp->head_dim;
    if (!text)
        text = CALIB_TEXT;
    const size_t len = strlen(text);
    const int32_t n_max = CODI_MIN(c->n_ctx, 1024);
    int32_t *toks = malloc((size_t)(len + 8) * sizeof(int32_t));
    c->kstat = malloc(2 * (size_t)hp->n_layer * dkv * sizeof(float));
    if (!toks || !c->kstat) {
        free(toks);
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory calibrating key smoothing");
    }
    int32_t n = codi_tokenize(c->m, text, len, toks, (int32_t)(len + 8), true, false);
    if (n > n_max)
        n = n_max;
    if (n < 8) {
        free(toks);
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "the key smoothing calibration text has %d tokens (at least 8 needed)", n < 0 ? 0 : n);
    }
    const size_t nk = (size_t)hp->n_layer * dkv;
    for (size_t i = 0; i < nk; i++) {
        c->kstat[i] = INFINITY;
        c->kstat[nk + i] = -INFINITY;
    }
    float *lam = c->smooth;
    c->smooth = NULL; /* calibrate on unsmoothed keys */
    int rc = decode_rows(c, toks, n, NULL, 0, NULL, NULL, false, err, errlen);
    free(toks);
    c->smooth = lam;
    if (rc)
        return rc;
    /* SmoothAttention (QServe): lambda_i = max|K_i - mu_i|^0.5, so the
     * keys' channel ranges shrink to their square roots and Q * lambda
     * makes up for it. mu_i, the centre of channel i's range, is subtracted
     * first: that changes every score of a query by the same q.mu, which
     * softmax ignores, and it halves the range of channels whose keys sit
     * far from zero (on SmolLM2-135M at ctx 512, q4 PPL +4.9% -> +2.4%). */
    for (size_t i = 0; i < nk; i++) {
        const float lo = c->kstat[i], hi = c->kstat[nk + i];
        c->kshift[i] = 0.5f * (lo + hi);
        lam[i] = sqrtf(CODI_MAX(0.5f * (hi - lo), 1e-4f));
    }
    free(c->kstat);
    c->kstat = NULL;
    /* forget the calibration tokens */
    codi_kv_seq_truncate(c, 0, 0);
    c->n_evicted = 0;
    c->has_logits = false;
    return 0;
}
