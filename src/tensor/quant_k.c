/* Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K: reference quantize, dequantize and
 * dot products against Q8_K, following ggml's quantize_row_*_ref,
 * dequantize_row_* and ggml_vec_dot_*_q8_K_generic. The dot products keep
 * ggml's eight-lane integer accumulators and float summation order, so
 * they give ggml's generic results bit for bit. */
#include <math.h>
#include <string.h>

#include "common.h"
#include "tensor/blocks.h"
#include "tensor/quants.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* a fused multiply-add would change results */
#endif

#define FP16(h) codi_fp16_to_fp32(h)
#define GROUP_MAX_EPS 1e-15f /* below this a group counts as all zero */

static int64_t nsuper(int64_t n) {
    CODI_ASSERT(n >= 0 && n % CODI_QK_K == 0);
    return n / CODI_QK_K;
}

/* Round to nearest, ties to even, for |f| <= 2^22: adding 1.5 * 2^23 puts
 * the integer in the low mantissa bits. */
static inline int nearest_int(float f) {
    float v = f + 12582912.f;
    int32_t i;
    memcpy(&i, &v, sizeof i);
    return (i & 0x007FFFFF) - 0x00400000;
}

/* ---- quantization helpers (ggml's make_*_quants) ---- */

/* Symmetric: L[i] in 0..2*nmax-1 (offset nmax); returns the scale. Each
 * element is weighted by x^2 and the scale refined by a search around
 * nmax (ggml's make_qx_quants with rmse_type 1 and no importance). */
static float make_qx_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = CODI_MAX(-nmax, CODI_MIN(nmax - 1, l));
        L[i] = (int8_t)(l + nmax);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 ? sumlx / suml2 : 0.0f;
    float best = scale * sumlx;
    for (int is = -9; is <= 9; is++) {
        if (is == 0)
            continue;
        iscale = -(nmax + 0.1f * is) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * x[i]);
            l = CODI_MAX(-nmax, CODI_MIN(nmax - 1, l));
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < n; i++) {
                int l = nearest_int(iscale * x[i]);
                L[i] = (int8_t)(nmax + CODI_MAX(-nmax, CODI_MIN(nmax - 1, l)));
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/* Symmetric with x^2 weights and coordinate-descent refinement of each
 * quant; L[i] in 0..2*nmax-1. */
static float make_q3_quants(int n, int nmax, const float *x, int8_t *L) {
    float max = 0, amax = 0;
    for (int i = 0; i < n; i++) {
        float ax = fabsf(x[i]);
        if (ax > amax) {
            amax = ax;
            max = x[i];
        }
    }
    if (amax < GROUP_MAX_EPS) {
        memset(L, 0, (size_t)n);
        return 0.f;
    }
    float iscale = -nmax / max;
    float sumlx = 0, suml2 = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * x[i]);
        l = CODI_MAX(-nmax, CODI_MIN(nmax - 1, l));
        L[i] = (int8_t)l;
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    for (int itry = 0; itry < 5; itry++) {
        int n_changed = 0;
        for (int i = 0; i < n; i++) {
            float w = x[i] * x[i];
            float slx = sumlx - w * x[i] * L[i];
            if (slx > 0) {
                float sl2 = suml2 - w * L[i] * L[i];
                int new_l = nearest_int(x[i] * sl2 / slx);
                new_l = CODI_MAX(-nmax, CODI_MIN(nmax - 1, new_l));
                if (new_l != L[i]) {
                    slx += w * x[i] * new_l;
                    sl2 += w * new_l * new_l;
                    if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                        L[i] = (int8_t)new_l;
                        sumlx = slx;
                        suml2 = sl2;
                        n_changed++;
                    }
                }
            }
        }
        if (!n_changed)
            break;
    }
    for (int i = 0; i < n; i++)
        L[i] = (int8_t)(L[i] + nmax);
    return suml2 > 0.0f ? sumlx / suml2 : 0.0f;
}

/* Asymmetric x ~ scale * L - the_min, L in 0..nmax, weighted least squares
 * over nstep+1 trial scales; returns scale, stores the (positive) min. */
static float make_qkx2_quants(int n, int nmax, const float *x,
                              const float *weights, uint8_t *L,
                              float *the_min, uint8_t *Laux, float rmin,
                              float rdelta, int nstep, bool use_mad) {
    float min = x[0], max = x[0];
    float sum_w = weights[0];
    float sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min)
            min = x[i];
        if (x[i] > max)
            max = x[i];
        float w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if (min > 0)
        min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *the_min = -min;
        return 0.f;
    }
    float iscale = nmax / (max - min);
    float scale = 1 / iscale;
    float best_error = 0;
    for (int i = 0; i < n; i++) {
        int l = nearest_int(iscale * (x[i] - min));
        L[i] = (uint8_t)CODI_MAX(0, CODI_MIN(nmax, l));
        float diff = scale * L[i] + min - x[i];
        diff = use_mad ? fabsf(diff) : diff * diff;
        best_error += weights[i] * diff;
    }
    if (nstep < 1) {
        *the_min = -min;
        return scale;
    }
    for (int is = 0; is <= nstep; is++) {
        iscale = (rmin + rdelta * is + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = nearest_int(iscale * (x[i] - min));
            l = CODI_MAX(0, CODI_MIN(nmax, l));
            Laux[i] = (uint8_t)l;
            float w = weights[i];
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (D > 0) {
            float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
            float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
            if (this_min > 0) {
                this_min = 0;
                this_scale = sum_xl / sum_l2;
            }
            float cur_error = 0;
            for (int i = 0; i < n; i++) {
                float diff = this_scale * Laux[i] + this_min - x[i];
                diff = use_mad ? fabsf(diff) : diff * diff;
                cur_error += weights[i] * diff;
            }
            if (cur_error < best_error) {
                memcpy(L, Laux, (size_t)n);
                best_error = cur_error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    *the_min = -min;
    return scale;
}

/* Pack 6-bit scale ls and min lm of sub-block j (0..7) into a Q4_K/Q5_K
 * scales[12] that starts zeroed for j >= 4's shared bytes. */
static void pack_k4_scale_min(uint8_t *q, int j, uint8_t ls, uint8_t lm) {
    if (j < 4) {
        q[j] = ls;
        q[j + 4] = lm;
    } else {
        q[j + 4] = (uint8_t)((ls & 0xF) | ((lm & 0xF) << 4));
        q[j - 4] |= (uint8_t)((ls >> 4) << 6);
        q[j] |= (uint8_t)((lm >> 4) << 6);
    }
}

/* ---- Q2_K ---- */

void codi_dequantize_row_q2_K_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q2_K *x = vx;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++) {
        const float d = FP16(x[i].d);
        const float min = FP16(x[i].dmin);
        const uint8_t *q = x[i].qs;
        int is = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2) {
                for (int k = 0; k < 2; k++) {
                    const uint8_t sc = x[i].scales[is++];
                    const float dl = d * (sc & 0xF);
                    const float ml = min * (sc >> 4);
                    for (int l = 0; l < 16; l++)
                        *y++ = dl * ((q[16 * k + l] >> shift) & 3) - ml;
                }
            }
        }
    }
}

void codi_quantize_row_q2_K_ref(const float *x, void *vy, int64_t n) {
    codi_block_q2_K *y = vy;
    const int64_t nb = nsuper(n);
    const float q4scale = 15.f;
    uint8_t L[CODI_QK_K];
    uint8_t Laux[16];
    float weights[16];
    float mins[CODI_QK_K / 16];
    float scales[CODI_QK_K / 16];

    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        float max_scale = 0, max_min = 0; /* scales are >= 0 here */
        for (int j = 0; j < CODI_QK_K / 16; j++) {
            for (int l = 0; l < 16; l++)
                weights[l] = fabsf(x[16 * j + l]);
            scales[j] = make_qkx2_quants(16, 3, x + 16 * j, weights,
                                         L + 16 * j, &mins[j], Laux, -0.5f,
                                         0.1f, 15, true);
            if (scales[j] > max_scale)
                max_scale = scales[j];
            if (mins[j] > max_min)
                max_min = mins[j];
        }
        if (max_scale > 0) {
            const float iscale = q4scale / max_scale;
            for (int j = 0; j < CODI_QK_K / 16; j++)
                y[i].scales[j] = (uint8_t)nearest_int(iscale * scales[j]);
            y[i].d = codi_fp32_to_fp16(max_scale / q4scale);
        } else {
            memset(y[i].scales, 0, sizeof y[i].scales);
            y[i].d = codi_fp32_to_fp16(0.f);
        }
        if (max_min > 0) {
            const float iscale = q4scale / max_min;
            for (int j = 0; j < CODI_QK_K / 16; j++) {
                const int l = nearest_int(iscale * mins[j]);
                y[i].scales[j] |= (uint8_t)(l << 4);
            }
            y[i].dmin = codi_fp32_to_fp16(max_min / q4scale);
        } else {
            y[i].dmin = codi_fp32_to_fp16(0.f);
        }
        /* Requantize against the scales as stored. */
        for (int j = 0; j < CODI_QK_K / 16; j++) {
            const float d = FP16(y[i].d) * (y[i].scales[j] & 0xF);
            if (!d)
                continue;
            const float dm = FP16(y[i].dmin) * (y[i].scales[j] >> 4);
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int((x[16 * j + ii] + dm) / d);
                L[16 * j + ii] = (uint8_t)CODI_MAX(0, CODI_MIN(3, l));
            }
        }
        for (int j = 0; j < CODI_QK_K; j += 128) {
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 4 + l] =
                    (uint8_t)(L[j + l] | (L[j + l + 32] << 2) |
                              (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }
}

void codi_vec_dot_q2_K_q8_K_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q2_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nsuper(n);
    float sumf = 0;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q2 = x[i].qs;
        const int8_t *q8 = y[i].qs;
        const uint8_t *sc = x[i].scales;

        int summs = 0; /* mins against the 16-element sums of y */
        for (int j = 0; j < 16; j++)
            summs += y[i].bsums[j] * (sc[j] >> 4);

        const float dall = y[i].d * FP16(x[i].d);
        const float dmin = y[i].d * FP16(x[i].dmin);

        int isum = 0, is = 0;
        for (int k = 0; k < CODI_QK_K / 128; k++, q2 += 32) {
            for (int shift = 0; shift < 8; shift += 2, q8 += 32) {
                for (int h = 0; h < 2; h++) {
                    const int d = sc[is++] & 0xF;
                    int isuml = 0;
                    for (int l = 16 * h; l < 16 * h + 16; l++)
                        isuml += q8[l] * ((q2[l] >> shift) & 3);
                    isum += d * isuml;
                }
            }
        }
        sumf += dall * isum - dmin * summs;
    }
    *s = sumf;
}

/* ---- Q3_K ---- */

void codi_dequantize_row_q3_K_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q3_K *x = vx;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++) {
        const float d_all = FP16(x[i].d);
        const uint8_t *q = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        uint8_t m = 1;
        int is = 0;
        for (int half = 0; half < 2; half++, q += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1) {
                for (int k = 0; k < 2; k++) {
                    const float dl =
                        d_all * codi_q3_K_scale(is++, x[i].scales);
                    for (int l = 16 * k; l < 16 * k + 16; l++)
                        *y++ = dl * (((q[l] >> shift) & 3) -
                                     ((hm[l] & m) ? 0 : 4));
                }
            }
        }
    }
}

void codi_quantize_row_q3_K_ref(const float *x, void *vy, int64_t n) {
    codi_block_q3_K *y = vy;
    const int64_t nb = nsuper(n);
    int8_t L[CODI_QK_K];
    float scales[CODI_QK_K / 16];

    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        float max_scale = 0, amax = 0;
        for (int j = 0; j < CODI_QK_K / 16; j++) {
            scales[j] = make_q3_quants(16, 4, x + 16 * j, L + 16 * j);
            const float scale = fabsf(scales[j]);
            if (scale > amax) {
                amax = scale;
                max_scale = scales[j];
            }
        }

        memset(y[i].scales, 0, sizeof y[i].scales);
        if (max_scale) {
            const float iscale = -32.f / max_scale;
            for (int j = 0; j < CODI_QK_K / 16; j++) {
                int l = nearest_int(iscale * scales[j]);
                l = CODI_MAX(-32, CODI_MIN(31, l)) + 32;
                if (j < 8)
                    y[i].scales[j] = (uint8_t)(l & 0xF);
                else
                    y[i].scales[j - 8] |= (uint8_t)((l & 0xF) << 4);
                l >>= 4;
                y[i].scales[j % 4 + 8] |= (uint8_t)(l << (2 * (j / 4)));
            }
            y[i].d = codi_fp32_to_fp16(1 / iscale);
        } else {
            y[i].d = codi_fp32_to_fp16(0.f);
        }

        for (int j = 0; j < CODI_QK_K / 16; j++) {
            const float d = FP16(y[i].d) * codi_q3_K_scale(j, y[i].scales);
            if (!d)
                continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = CODI_MAX(-4, CODI_MIN(3, l));
                L[16 * j + ii] = (int8_t)(l + 4);
            }
        }

        /* High bit of quant j goes to hmask[j % 32], bit j / 32. */
        memset(y[i].hmask, 0, sizeof y[i].hmask);
        for (int j = 0; j < CODI_QK_K; j++) {
            if (L[j] > 3) {
                y[i].hmask[j % 32] |= (uint8_t)(1 << (j / 32));
                L[j] -= 4;
            }
        }
        for (int j = 0; j < CODI_QK_K; j += 128) {
            for (int l = 0; l < 32; l++)
                y[i].qs[j / 4 + l] =
                    (uint8_t)(L[j + l] | (L[j + l + 32] << 2) |
                              (L[j + l + 64] << 4) | (L[j + l + 96] << 6));
        }
    }
}

void codi_vec_dot_q3_K_q8_K_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q3_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nsuper(n);
    int8_t aux8[CODI_QK_K];
    float sums[8] = {0};
    float sumf = 0;

    for (int64_t i = 0; i < nb; i++) {
        /* Unpack the 3-bit quants to -4..3, in element order. */
        const uint8_t *q3 = x[i].qs;
        const uint8_t *hm = x[i].hmask;
        int8_t *a = aux8;
        uint8_t m = 1;
        for (int half = 0; half < 2; half++, q3 += 32) {
            for (int shift = 0; shift < 8; shift += 2, m <<= 1, a += 32) {
                for (int l = 0; l < 32; l++)
                    a[l] = (int8_t)(((q3[l] >> shift) & 3) -
                                    ((hm[l] & m) ? 0 : 4));
            }
        }
        /* Eight lane accumulators, as ggml's generic code. */
        int32_t aux32[8] = {0};
        const int8_t *q8 = y[i].qs;
        a = aux8;
        for (int j = 0; j < CODI_QK_K / 16; j++) {
            const int scale = codi_q3_K_scale(j, x[i].scales);
            for (int k = 0; k < 2; k++, q8 += 8, a += 8)
                for (int l = 0; l < 8; l++)
                    aux32[l] += scale * (q8[l] * a[l]);
        }
        const float d = FP16(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++)
            sums[l] += d * aux32[l];
    }
    for (int l = 0; l < 8; l++)
        sumf += sums[l];
    *s = sumf;
}

/* ---- Q4_K, Q5_K ---- */

void codi_dequantize_row_q4_K_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q4_K *x = vx;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q = x[i].qs;
        const float d = FP16(x[i].d);
        const float min = FP16(x[i].dmin);
        for (int is = 0; is < 8; is += 2, q += 32) {
            uint8_t sc, m;
            codi_k4_scale_min(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            codi_k4_scale_min(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * (q[l] & 0xF) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * (q[l] >> 4) - m2;
        }
    }
}

void codi_dequantize_row_q5_K_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q5_K *x = vx;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *ql = x[i].qs;
        const uint8_t *qh = x[i].qh;
        const float d = FP16(x[i].d);
        const float min = FP16(x[i].dmin);
        uint8_t u1 = 1, u2 = 2;
        for (int is = 0; is < 8; is += 2, ql += 32) {
            uint8_t sc, m;
            codi_k4_scale_min(is, x[i].scales, &sc, &m);
            const float d1 = d * sc, m1 = min * m;
            codi_k4_scale_min(is + 1, x[i].scales, &sc, &m);
            const float d2 = d * sc, m2 = min * m;
            for (int l = 0; l < 32; l++)
                *y++ = d1 * ((ql[l] & 0xF) + (qh[l] & u1 ? 16 : 0)) - m1;
            for (int l = 0; l < 32; l++)
                *y++ = d2 * ((ql[l] >> 4) + (qh[l] & u2 ? 16 : 0)) - m2;
            u1 = (uint8_t)(u1 << 2);
            u2 = (uint8_t)(u2 << 2);
        }
    }
}

/* Shared by Q4_K (nmax 15) and Q5_K (nmax 31): choose the 8 sub-block
 * scales and mins, store them 6-bit packed with d/dmin, and return the
 * quants L[256] in 0..nmax computed against the stored scales. */
static void quantize_k4_scales(const float *x, int nmax, float rmin,
                               int nstep, uint16_t *pd, uint16_t *pdmin,
                               uint8_t *packed, uint8_t *L) {
    uint8_t Laux[32];
    float weights[32];
    float mins[CODI_QK_K / 32];
    float scales[CODI_QK_K / 32];
    float max_scale = 0, max_min = 0; /* scales are >= 0 here */

    for (int j = 0; j < CODI_QK_K / 32; j++) {
        float sum_x2 = 0;
        for (int l = 0; l < 32; l++)
            sum_x2 += x[32 * j + l] * x[32 * j + l];
        const float av_x = sqrtf(sum_x2 / 32);
        for (int l = 0; l < 32; l++)
            weights[l] = av_x + fabsf(x[32 * j + l]);
        scales[j] = make_qkx2_quants(32, nmax, x + 32 * j, weights, L + 32 * j,
                                     &mins[j], Laux, rmin, 0.1f, nstep, false);
        if (scales[j] > max_scale)
            max_scale = scales[j];
        if (mins[j] > max_min)
            max_min = mins[j];
    }

    const float inv_scale = max_scale > 0 ? 63.f / max_scale : 0.f;
    const float inv_min = max_min > 0 ? 63.f / max_min : 0.f;
    memset(packed, 0, CODI_K_SCALE_SIZE);
    for (int j = 0; j < CODI_QK_K / 32; j++) {
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scales[j]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * mins[j]);
        ls = CODI_MIN(63, ls);
        lm = CODI_MIN(63, lm);
        pack_k4_scale_min(packed, j, ls, lm);
    }
    *pd = codi_fp32_to_fp16(max_scale / 63.f);
    *pdmin = codi_fp32_to_fp16(max_min / 63.f);

    for (int j = 0; j < CODI_QK_K / 32; j++) {
        uint8_t sc, m;
        codi_k4_scale_min(j, packed, &sc, &m);
        const float d = FP16(*pd) * sc;
        if (!d)
            continue;
        const float dm = FP16(*pdmin) * m;
        for (int ii = 0; ii < 32; ii++) {
            int l = nearest_int((x[32 * j + ii] + dm) / d);
            L[32 * j + ii] = (uint8_t)CODI_MAX(0, CODI_MIN(nmax, l));
        }
    }
}

void codi_quantize_row_q4_K_ref(const float *x, void *vy, int64_t n) {
    codi_block_q4_K *y = vy;
    const int64_t nb = nsuper(n);
    uint8_t L[CODI_QK_K];
    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        quantize_k4_scales(x, 15, -1.f, 20, &y[i].d, &y[i].dmin, y[i].scales,
                           L);
        uint8_t *q = y[i].qs;
        for (int j = 0; j < CODI_QK_K; j += 64, q += 32) {
            for (int l = 0; l < 32; l++)
                q[l] = (uint8_t)(L[j + l] | (L[j + l + 32] << 4));
        }
    }
}

void codi_quantize_row_q5_K_ref(const float *x, void *vy, int64_t n) {
    codi_block_q5_K *y = vy;
    const int64_t nb = nsuper(n);
    uint8_t L[CODI_QK_K];
    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        quantize_k4_scales(x, 31, -0.5f, 15, &y[i].d, &y[i].dmin, y[i].scales,
                           L);
        uint8_t *qh = y[i].qh;
        uint8_t *ql = y[i].qs;
        memset(qh, 0, CODI_QK_K / 8);
        uint8_t m1 = 1, m2 = 2;
        for (int j = 0; j < CODI_QK_K; j += 64, ql += 32) {
            for (int l = 0; l < 32; l++) {
                int l1 = L[j + l];
                if (l1 > 15) {
                    l1 -= 16;
                    qh[l] |= m1;
                }
                int l2 = L[j + l + 32];
                if (l2 > 15) {
                    l2 -= 16;
                    qh[l] |= m2;
                }
                ql[l] = (uint8_t)(l1 | (l2 << 4));
            }
            m1 = (uint8_t)(m1 << 2);
            m2 = (uint8_t)(m2 << 2);
        }
    }
}

/* Q4_K/Q5_K dot with Q8_K, given the unpacked quants aux8[256] (0..31). */
static float dot_k4_block(const int8_t *aux8, const uint8_t *packed,
                          const codi_block_q8_K *y, int32_t *aux32,
                          int *sumi_mins) {
    uint8_t scales[8], mins[8];
    for (int j = 0; j < 8; j++)
        codi_k4_scale_min(j, packed, &scales[j], &mins[j]);

    int sumi = 0;
    for (int j = 0; j < CODI_QK_K / 16; j++)
        sumi += y->bsums[j] * mins[j / 2];
    *sumi_mins = sumi;

    const int8_t *q8 = y->qs;
    const int8_t *a = aux8;
    for (int j = 0; j < CODI_QK_K / 32; j++) {
        const int32_t scale = scales[j];
        for (int k = 0; k < 4; k++, q8 += 8, a += 8)
            for (int l = 0; l < 8; l++)
                aux32[l] += scale * (q8[l] * a[l]);
    }
    return y->d;
}

void codi_vec_dot_q4_K_q8_K_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q4_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nsuper(n);
    int8_t aux8[CODI_QK_K];
    float sums[8] = {0};
    float sumf = 0;

    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q4 = x[i].qs;
        int8_t *a = aux8;
        for (int j = 0; j < CODI_QK_K / 64; j++, q4 += 32) {
            for (int l = 0; l < 32; l++)
                *a++ = (int8_t)(q4[l] & 0xF);
            for (int l = 0; l < 32; l++)
                *a++ = (int8_t)(q4[l] >> 4);
        }
        int32_t aux32[8] = {0};
        int sumi;
        const float yd = dot_k4_block(aux8, x[i].scales, &y[i], aux32, &sumi);
        const float d = FP16(x[i].d) * yd;
        for (int l = 0; l < 8; l++)
            sums[l] += d * aux32[l];
        const float dmin = FP16(x[i].dmin) * yd;
        sumf -= dmin * sumi;
    }
    for (int l = 0; l < 8; l++)
        sumf += sums[l];
    *s = sumf;
}

void codi_vec_dot_q5_K_q8_K_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q5_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nsuper(n);
    int8_t aux8[CODI_QK_K];
    float sums[8] = {0};
    float sumf = 0;

    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q4 = x[i].qs;
        const uint8_t *hm = x[i].qh;
        int8_t *a = aux8;
        uint8_t m = 1;
        for (int j = 0; j < CODI_QK_K / 64; j++, q4 += 32) {
            for (int l = 0; l < 32; l++)
                *a++ = (int8_t)((q4[l] & 0xF) + (hm[l] & m ? 16 : 0));
            m = (uint8_t)(m << 1);
            for (int l = 0; l < 32; l++)
                *a++ = (int8_t)((q4[l] >> 4) + (hm[l] & m ? 16 : 0));
            m = (uint8_t)(m << 1);
        }
        int32_t aux32[8] = {0};
        int sumi;
        const float yd = dot_k4_block(aux8, x[i].scales, &y[i], aux32, &sumi);
        const float d = FP16(x[i].d) * yd;
        for (int l = 0; l < 8; l++)
            sums[l] += d * aux32[l];
        const float dmin = FP16(x[i].dmin) * yd;
        sumf -= dmin * sumi;
    }
    for (int l = 0; l < 8; l++)
        sumf += sums[l];
    *s = sumf;
}

/* ---- Q6_K ---- */

void codi_dequantize_row_q6_K_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q6_K *x = vx;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++) {
        const float d = FP16(x[i].d);
        const uint8_t *ql = x[i].ql;
        const uint8_t *qh = x[i].qh;
        const int8_t *sc = x[i].scales;
        for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32,
                 sc += 8) {
            for (int l = 0; l < 32; l++) {
                const int is = l / 16;
                const int q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                const int q2 =
                    ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                const int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                const int q4 =
                    ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                y[l] = d * sc[is] * q1;
                y[l + 32] = d * sc[is + 2] * q2;
                y[l + 64] = d * sc[is + 4] * q3;
                y[l + 96] = d * sc[is + 6] * q4;
            }
        }
    }
}

void codi_quantize_row_q6_K_ref(const float *x, void *vy, int64_t n) {
    codi_block_q6_K *y = vy;
    const int64_t nb = nsuper(n);
    int8_t L[CODI_QK_K];
    float scales[CODI_QK_K / 16];

    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        float max_scale = 0, max_abs_scale = 0;
        for (int ib = 0; ib < CODI_QK_K / 16; ib++) {
            const float scale =
                make_qx_quants(16, 32, x + 16 * ib, L + 16 * ib);
            scales[ib] = scale;
            if (fabsf(scale) > max_abs_scale) {
                max_abs_scale = fabsf(scale);
                max_scale = scale;
            }
        }
        if (max_abs_scale < GROUP_MAX_EPS) {
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }

        const float iscale = -128.f / max_scale;
        y[i].d = codi_fp32_to_fp16(1 / iscale);
        for (int ib = 0; ib < CODI_QK_K / 16; ib++)
            y[i].scales[ib] =
                (int8_t)CODI_MIN(127, nearest_int(iscale * scales[ib]));

        for (int j = 0; j < CODI_QK_K / 16; j++) {
            const float d = FP16(y[i].d) * y[i].scales[j];
            if (!d)
                continue;
            for (int ii = 0; ii < 16; ii++) {
                int l = nearest_int(x[16 * j + ii] / d);
                l = CODI_MAX(-32, CODI_MIN(31, l));
                L[16 * j + ii] = (int8_t)(l + 32);
            }
        }

        uint8_t *ql = y[i].ql;
        uint8_t *qh = y[i].qh;
        for (int j = 0; j < CODI_QK_K; j += 128, ql += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                const int q1 = L[j + l] & 0xF;
                const int q2 = L[j + l + 32] & 0xF;
                const int q3 = L[j + l + 64] & 0xF;
                const int q4 = L[j + l + 96] & 0xF;
                ql[l] = (uint8_t)(q1 | (q3 << 4));
                ql[l + 32] = (uint8_t)(q2 | (q4 << 4));
                qh[l] = (uint8_t)((L[j + l] >> 4) |
                                  ((L[j + l + 32] >> 4) << 2) |
                                  ((L[j + l + 64] >> 4) << 4) |
                                  ((L[j + l + 96] >> 4) << 6));
            }
        }
    }
}

void codi_vec_dot_q6_K_q8_K_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q6_K *x = vx;
    const codi_block_q8_K *y = vy;
    const int64_t nb = nsuper(n);
    int8_t aux8[CODI_QK_K];
    float sums[8] = {0};
    float sumf = 0;

    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *q4 = x[i].ql;
        const uint8_t *qh = x[i].qh;
        int8_t *a = aux8;
        for (int j = 0; j < CODI_QK_K; j += 128, a += 128, q4 += 64, qh += 32) {
            for (int l = 0; l < 32; l++) {
                a[l] = (int8_t)(((q4[l] & 0xF) | ((qh[l] & 3) << 4)) - 32);
                a[l + 32] = (int8_t)(((q4[l + 32] & 0xF) |
                                      (((qh[l] >> 2) & 3) << 4)) - 32);
                a[l + 64] =
                    (int8_t)(((q4[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                a[l + 96] = (int8_t)(((q4[l + 32] >> 4) |
                                      (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int32_t aux32[8] = {0};
        const int8_t *q8 = y[i].qs;
        a = aux8;
        for (int j = 0; j < CODI_QK_K / 16; j++) {
            const int scale = x[i].scales[j];
            for (int k = 0; k < 2; k++, q8 += 8, a += 8)
                for (int l = 0; l < 8; l++)
                    aux32[l] += scale * (q8[l] * a[l]);
        }
        const float d = FP16(x[i].d) * y[i].d;
        for (int l = 0; l < 8; l++)
            sums[l] += d * aux32[l];
    }
    for (int l = 0; l < 8; l++)
        sumf += sums[l];
    *s = sumf;
}

/* ---- Q8_K ---- */

void codi_dequantize_row_q8_K_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q8_K *x = vx;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK_K) {
        for (int j = 0; j < CODI_QK_K; j++)
            y[j] = x[i].d * x[i].qs[j];
    }
}

void codi_quantize_row_q8_K_ref(const float *x, void *vy, int64_t n) {
    codi_block_q8_K *y = vy;
    const int64_t nb = nsuper(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK_K) {
        float max = 0, amax = 0;
        for (int j = 0; j < CODI_QK_K; j++) {
            const float ax = fabsf(x[j]);
            if (ax > amax) {
                amax = ax;
                max = x[j];
            }
        }
        if (!amax) {
            /* ggml leaves bsums unwritten here; zero them. */
            memset(&y[i], 0, sizeof y[i]);
            continue;
        }
        /* -127, not -128: ggml's choice, so that |q| <= 127 always. */
        const float iscale = -127.f / max;
        for (int j = 0; j < CODI_QK_K; j++) {
            const int v = nearest_int(iscale * x[j]);
            y[i].qs[j] = (int8_t)CODI_MIN(127, v);
        }
        for (int j = 0; j < CODI_QK_K / 16; j++) {
            int sum = 0;
            for (int ii = 0; ii < 16; ii++)
                sum += y[i].qs[j * 16 + ii];
            y[i].bsums[j] = (int16_t)sum;
        }
        y[i].d = 1 / iscale;
    }
}
