/* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1: reference quantize, dequantize and
 * dot products, matching ggml's quantize_row_*_ref, dequantize_row_* and
 * ggml_vec_dot_*_generic bit for bit. Every float expression keeps ggml's
 * operand order, since that decides the rounding. */
#include <float.h>
#include <math.h>
#include <string.h>

#include "common.h"
#include "tensor/blocks.h"
#include "tensor/quants.h"

#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF /* a fused multiply-add would change results */
#endif

#define FP16(h) codi_fp16_to_fp32(h)

/* Number of 32-element blocks in n; n must be a whole number of them. */
static int64_t nblocks(int64_t n) {
    CODI_ASSERT(n >= 0 && n % CODI_QK == 0);
    return n / CODI_QK;
}

/* The element of largest magnitude (first one on ties), with its sign. */
static float signed_absmax(const float *x, int n) {
    float amax = 0.0f, max = 0.0f;
    for (int j = 0; j < n; j++) {
        if (amax < fabsf(x[j])) {
            amax = fabsf(x[j]);
            max = x[j];
        }
    }
    return max;
}

static uint32_t load_u32(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* ---- dequantize ---- */

void codi_dequantize_row_q4_0_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q4_0 *x = vx;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK) {
        const float d = FP16(x[i].d);
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int x0 = (x[i].qs[j] & 0x0F) - 8;
            const int x1 = (x[i].qs[j] >> 4) - 8;
            y[j] = x0 * d;
            y[j + CODI_QK / 2] = x1 * d;
        }
    }
}

void codi_dequantize_row_q4_1_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q4_1 *x = vx;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK) {
        const float d = FP16(x[i].d);
        const float m = FP16(x[i].m);
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int x0 = x[i].qs[j] & 0x0F;
            const int x1 = x[i].qs[j] >> 4;
            y[j] = x0 * d + m;
            y[j + CODI_QK / 2] = x1 * d + m;
        }
    }
}

void codi_dequantize_row_q5_0_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q5_0 *x = vx;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK) {
        const float d = FP16(x[i].d);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int h0 = (int)((qh >> j) << 4) & 0x10;
            const int h1 = (int)(qh >> (j + 12)) & 0x10;
            const int x0 = ((x[i].qs[j] & 0x0F) | h0) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | h1) - 16;
            y[j] = x0 * d;
            y[j + CODI_QK / 2] = x1 * d;
        }
    }
}

void codi_dequantize_row_q5_1_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q5_1 *x = vx;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK) {
        const float d = FP16(x[i].d);
        const float m = FP16(x[i].m);
        const uint32_t qh = load_u32(x[i].qh);
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int h0 = (int)((qh >> j) << 4) & 0x10;
            const int h1 = (int)(qh >> (j + 12)) & 0x10;
            const int x0 = (x[i].qs[j] & 0x0F) | h0;
            const int x1 = (x[i].qs[j] >> 4) | h1;
            y[j] = x0 * d + m;
            y[j + CODI_QK / 2] = x1 * d + m;
        }
    }
}

void codi_dequantize_row_q8_0_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q8_0 *x = vx;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK) {
        const float d = FP16(x[i].d);
        for (int j = 0; j < CODI_QK; j++)
            y[j] = x[i].qs[j] * d;
    }
}

/* ggml has no dequantize for Q8_1; this one ignores s. */
void codi_dequantize_row_q8_1_ref(const void *vx, float *y, int64_t n) {
    const codi_block_q8_1 *x = vx;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, y += CODI_QK) {
        const float d = FP16(x[i].d);
        for (int j = 0; j < CODI_QK; j++)
            y[j] = x[i].qs[j] * d;
    }
}

/* ---- quantize ---- */

/* Symmetric 4-bit: the largest-magnitude element maps to -8 exactly. */
void codi_quantize_row_q4_0_ref(const float *x, void *vy, int64_t n) {
    codi_block_q4_0 *y = vy;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        const float max = signed_absmax(x, CODI_QK);
        const float d = max / -8;
        const float id = codi_inv_scale(d);
        y[i].d = codi_fp32_to_fp16(d);
        for (int j = 0; j < CODI_QK / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[j + CODI_QK / 2] * id;
            /* x*id + 8.5 lies in [0.5, 16.5]: truncation rounds. */
            const uint8_t q0 = (uint8_t)CODI_MIN(15, (int8_t)(x0 + 8.5f));
            const uint8_t q1 = (uint8_t)CODI_MIN(15, (int8_t)(x1 + 8.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void block_min_max(const float *x, float *pmin, float *pmax) {
    float min = FLT_MAX, max = -FLT_MAX;
    for (int j = 0; j < CODI_QK; j++) {
        if (x[j] < min)
            min = x[j];
        if (x[j] > max)
            max = x[j];
    }
    *pmin = min;
    *pmax = max;
}

void codi_quantize_row_q4_1_ref(const float *x, void *vy, int64_t n) {
    codi_block_q4_1 *y = vy;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        float min, max;
        block_min_max(x, &min, &max);
        const float d = (max - min) / 15;
        const float id = codi_inv_scale(d);
        y[i].d = codi_fp32_to_fp16(d);
        y[i].m = codi_fp32_to_fp16(min);
        for (int j = 0; j < CODI_QK / 2; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[j + CODI_QK / 2] - min) * id;
            const uint8_t q0 = (uint8_t)CODI_MIN(15, (int8_t)(x0 + 0.5f));
            const uint8_t q1 = (uint8_t)CODI_MIN(15, (int8_t)(x1 + 0.5f));
            y[i].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

void codi_quantize_row_q5_0_ref(const float *x, void *vy, int64_t n) {
    codi_block_q5_0 *y = vy;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        const float max = signed_absmax(x, CODI_QK);
        const float d = max / -16;
        const float id = codi_inv_scale(d);
        y[i].d = codi_fp32_to_fp16(d);
        uint32_t qh = 0;
        for (int j = 0; j < CODI_QK / 2; j++) {
            const float x0 = x[j] * id;
            const float x1 = x[j + CODI_QK / 2] * id;
            const uint8_t q0 = (uint8_t)CODI_MIN(31, (int8_t)(x0 + 16.5f));
            const uint8_t q1 = (uint8_t)CODI_MIN(31, (int8_t)(x1 + 16.5f));
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= ((q0 & 0x10u) >> 4) << j;
            qh |= ((q1 & 0x10u) >> 4) << (j + CODI_QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof qh);
    }
}

void codi_quantize_row_q5_1_ref(const float *x, void *vy, int64_t n) {
    codi_block_q5_1 *y = vy;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        float min, max;
        block_min_max(x, &min, &max);
        const float d = (max - min) / 31;
        const float id = codi_inv_scale(d);
        y[i].d = codi_fp32_to_fp16(d);
        y[i].m = codi_fp32_to_fp16(min);
        uint32_t qh = 0;
        for (int j = 0; j < CODI_QK / 2; j++) {
            const float x0 = (x[j] - min) * id;
            const float x1 = (x[j + CODI_QK / 2] - min) * id;
            /* ggml clamps nothing here: (x - min) * id is at most 31. */
            const uint8_t q0 = (uint8_t)(x0 + 0.5f);
            const uint8_t q1 = (uint8_t)(x1 + 0.5f);
            y[i].qs[j] = (uint8_t)((q0 & 0x0F) | ((q1 & 0x0F) << 4));
            qh |= ((q0 & 0x10u) >> 4) << j;
            qh |= ((q1 & 0x10u) >> 4) << (j + CODI_QK / 2);
        }
        memcpy(y[i].qh, &qh, sizeof qh);
    }
}

static float block_absmax(const float *x) {
    float amax = 0.0f;
    for (int j = 0; j < CODI_QK; j++)
        amax = CODI_MAX(amax, fabsf(x[j]));
    return amax;
}

void codi_quantize_row_q8_0_ref(const float *x, void *vy, int64_t n) {
    codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        const float d = block_absmax(x) / 127;
        const float id = codi_inv_scale(d);
        y[i].d = codi_fp32_to_fp16(d);
        for (int j = 0; j < CODI_QK; j++)
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

void codi_quantize_row_q8_1_ref(const float *x, void *vy, int64_t n) {
    codi_block_q8_1 *y = vy;
    const int64_t nb = nblocks(n);
    for (int64_t i = 0; i < nb; i++, x += CODI_QK) {
        const float d = block_absmax(x) / 127;
        const float id = codi_inv_scale(d);
        y[i].d = codi_fp32_to_fp16(d);
        int sum = 0;
        for (int j = 0; j < CODI_QK; j++) {
            y[i].qs[j] = (int8_t)roundf(x[j] * id);
            sum += y[i].qs[j];
        }
        y[i].s = codi_fp32_to_fp16(sum * d);
    }
}

/* ---- dot products ---- */

void codi_vec_dot_q4_0_q8_0_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q4_0 *x = vx;
    const codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n);
    float sumf = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int v0 = (x[i].qs[j] & 0x0F) - 8;
            const int v1 = (x[i].qs[j] >> 4) - 8;
            sumi0 += v0 * y[i].qs[j];
            sumi1 += v1 * y[i].qs[j + CODI_QK / 2];
        }
        const int sumi = sumi0 + sumi1;
        sumf += sumi * FP16(x[i].d) * FP16(y[i].d);
    }
    *s = sumf;
}

void codi_vec_dot_q4_1_q8_1_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q4_1 *x = vx;
    const codi_block_q8_1 *y = vy;
    const int64_t nb = nblocks(n);
    float sumf = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int v0 = x[i].qs[j] & 0x0F;
            const int v1 = x[i].qs[j] >> 4;
            sumi0 += v0 * y[i].qs[j];
            sumi1 += v1 * y[i].qs[j + CODI_QK / 2];
        }
        const int sumi = sumi0 + sumi1;
        sumf += (FP16(x[i].d) * FP16(y[i].d)) * sumi +
                FP16(x[i].m) * FP16(y[i].s);
    }
    *s = sumf;
}

void codi_vec_dot_q5_0_q8_0_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q5_0 *x = vx;
    const codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n);
    float sumf = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int h0 = (int)((qh >> j) & 1) << 4;
            const int h1 = (int)((qh >> (j + 16)) & 1) << 4;
            const int x0 = ((x[i].qs[j] & 0x0F) | h0) - 16;
            const int x1 = ((x[i].qs[j] >> 4) | h1) - 16;
            sumi0 += x0 * y[i].qs[j];
            sumi1 += x1 * y[i].qs[j + CODI_QK / 2];
        }
        const int sumi = sumi0 + sumi1;
        sumf += (FP16(x[i].d) * FP16(y[i].d)) * sumi;
    }
    *s = sumf;
}

void codi_vec_dot_q5_1_q8_1_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q5_1 *x = vx;
    const codi_block_q8_1 *y = vy;
    const int64_t nb = nblocks(n);
    float sumf = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        const uint32_t qh = load_u32(x[i].qh);
        int sumi0 = 0, sumi1 = 0;
        for (int j = 0; j < CODI_QK / 2; j++) {
            const int h0 = (int)((qh >> j) & 1) << 4;
            const int h1 = (int)((qh >> (j + 16)) & 1) << 4;
            const int x0 = (x[i].qs[j] & 0x0F) | h0;
            const int x1 = (x[i].qs[j] >> 4) | h1;
            sumi0 += x0 * y[i].qs[j];
            sumi1 += x1 * y[i].qs[j + CODI_QK / 2];
        }
        const int sumi = sumi0 + sumi1;
        sumf += (FP16(x[i].d) * FP16(y[i].d)) * sumi +
                FP16(x[i].m) * FP16(y[i].s);
    }
    *s = sumf;
}

void codi_vec_dot_q8_0_q8_0_ref(int64_t n, float *s, const void *vx,
                                const void *vy) {
    const codi_block_q8_0 *x = vx;
    const codi_block_q8_0 *y = vy;
    const int64_t nb = nblocks(n);
    float sumf = 0.0f;
    for (int64_t i = 0; i < nb; i++) {
        int sumi = 0;
        for (int j = 0; j < CODI_QK; j++)
            sumi += x[i].qs[j] * y[i].qs[j];
        sumf += sumi * (FP16(x[i].d) * FP16(y[i].d));
    }
    *s = sumf;
}
