/* Kernels of the quantized KV cache (--kv-type q8|q4). The cache is stored
 * transposed, as the fp16 one: one row per K/V channel, one column per cache
 * slot. Each (slot, group of gs channels of one head) has an fp16 scale s
 * and minimum m, and code c in [0, 2^bits - 1] stands for s * c + m. Rows of
 * 8-bit codes hold one byte per slot; rows of 4-bit codes hold slot 2j in
 * the low nibble of byte j and slot 2j + 1 in the high nibble. Scales of a
 * group are a row of fp16 values, one per slot, like the codes.
 *
 * Every kernel has a scalar reference (*_ref) that the tests compare the
 * dispatched version to. */
#ifndef CODI_KVCACHE_H
#define CODI_KVCACHE_H

#include <stddef.h>
#include <stdint.h>

/* Bytes of one row of n slots of `bits`-bit codes. */
static inline size_t codi_kvq_row_bytes(int bits, size_t n) { return bits == 4 ? (n + 1) / 2 : n; }

static inline int codi_kvq_get(int bits, const uint8_t *row, size_t t) {
    if (bits == 8)
        return row[t];
    return (row[t >> 1] >> ((t & 1) * 4)) & 15;
}

static inline void codi_kvq_set(int bits, uint8_t *row, size_t t, int code) {
    if (bits == 8) {
        row[t] = (uint8_t)code;
        return;
    }
    const int sh = (int)(t & 1) * 4;
    row[t >> 1] = (uint8_t)((row[t >> 1] & ~(15 << sh)) | (code << sh));
}

/* Quantize gs values: codes[i] in [0, 2^bits - 1], *s and *m as fp16, so
 * that x[i] ~ s * codes[i] + m (asymmetric, min/max of the group). */
void codi_kvq_quantize_group(int bits, const float *x, int gs, uint8_t *codes, uint16_t *s,
                             uint16_t *m);

/* Attention scores of G query rows q[G][hd] against n slots t0..t0+n-1 of a
 * quantized transposed K cache: rows kT + i * ldk (bytes), scale / minimum
 * rows ks + grp * ldsc, km + grp * ldsc (fp16, indexed by slot) for the
 * hd / gs groups of this head:
 *   s[g * lds + t] = scale * sum_i q[g][i] * (ks[grp(i)][t0+t] * code_i(t0+t)
 *                                              + km[grp(i)][t0+t]).
 * G <= 3. */
void codi_attn_scores_kvq(int bits, const float *q, int G, int hd, int gs, const uint8_t *kT,
                          size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc, int t0,
                          int n, float *s, size_t lds, float scale);
void codi_attn_scores_kvq_ref(int bits, const float *q, int G, int hd, int gs, const uint8_t *kT,
                              size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                              int t0, int n, float *s, size_t lds, float scale);

/* Attention output of G rows of weights p[g * ldp + t] (t < n) over slots
 * t0..t0+n-1 of a quantized transposed V cache laid out as K above:
 *   o[g * hd + i] = sum_t p[g][t] * (vs[grp(i)][t0+t] * code_i(t0+t)
 *                                    + vm[grp(i)][t0+t]).
 * tmp: scratch of G * n floats. G <= 3. */
void codi_attn_values_kvq(int bits, const float *p, size_t ldp, int G, int hd, int gs,
                          const uint8_t *vT, size_t ldv, const uint16_t *vs, const uint16_t *vm,
                          size_t ldsc, int t0, int n, float *o, float *tmp);
void codi_attn_values_kvq_ref(int bits, const float *p, size_t ldp, int G, int hd, int gs,
                              const uint8_t *vT, size_t ldv, const uint16_t *vs,
                              const uint16_t *vm, size_t ldsc, int t0, int n, float *o);

/* Attention importance of one KV head for a token budget (alisa, h2o):
 * for t < n,
 *   acc[t] += fix((p[0][t] + p[1][t] + ... + p[G-1][t]) * (w * vn[t]))
 * with rows p[g * ldp + t], the heads added in order g = 0, 1, ..., vn
 * NULL meaning 1, and fix(x) = x * 2^32 rounded to the nearest integer
 * (ties to even). Integer sums do not depend on how a pass's work items
 * were split between threads. Needs 0 <= x * 2^32 < 2^51. */
void codi_imp_accumulate(int64_t *acc, const float *p, size_t ldp, int G, int n, float w, const float *vn);
void codi_imp_accumulate_ref(int64_t *acc, const float *p, size_t ldp, int G, int n, float w,
                             const float *vn);

/* Keys quantized per channel (--kv-keys channel, KIVI): codes laid out as
 * above, but every channel row i has its own fp16 scale and minimum per
 * group j of CODI_KVC_G consecutive slots, ks[j * ldsc + i] (and km alike;
 * a group's scales are one row over the channels): a channel's outliers
 * set only that channel's step.
 *   s[g * lds + t] = scale * sum_i q[g][i] * (ks[j][i] * code_i(t0+t) + km[j][i]),
 * j = (t0 + t) / CODI_KVC_G, for t < n; every group these slots touch must
 * hold codes for all its CODI_KVC_G slots. G <= 3. */
#define CODI_KVC_G 16
void codi_attn_scores_kvc(int bits, const float *q, int G, int hd, const uint8_t *kT, size_t ldk,
                          const uint16_t *ks, const uint16_t *km, size_t ldsc, int t0, int n,
                          float *s, size_t lds, float scale);
void codi_attn_scores_kvc_ref(int bits, const float *q, int G, int hd, const uint8_t *kT,
                              size_t ldk, const uint16_t *ks, const uint16_t *km, size_t ldsc,
                              int t0, int n, float *s, size_t lds, float scale);

#endif
