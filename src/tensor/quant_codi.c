/* Reference quantize / dequantize / dot of codi's group types (see
 * tensor/quant_codi.h and docs/formats.md). */
#include "tensor/quant_codi.h"

#include <math.h>
#include <string.h>

#include "common.h"
#include "kernels/codi_avx2.h"
#include "kernels/kernels.h"
#include "tensor/blocks.h"

#define FP16(h) codi_fp16_to_fp32(h)

static inline uint16_t rd16(const uint8_t *p) {
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

static inline void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

int codi_type_codi_group(int bits, int group) {
    const int k = group == 32 ? 0 : group == 64 ? 1 : group == 128 ? 2 : -1;
    if (k < 0)
        return -1;
    if (bits == 4)
        return CODI_TYPE_Q4G32 + k;
    if (bits == 8)
        return CODI_TYPE_Q8G32 + k;
    if (bits == -4) /* group-sparse 4-bit */
        return CODI_TYPE_GQSA32 + k;
    if (bits == 48) /* W4A8 */
        return CODI_TYPE_W4A8_32 + k;
    return -1;
}

int codi_type_group_size(int type) {
    switch (type) {
    case CODI_TYPE_Q4G32: case CODI_TYPE_Q8G32: case CODI_TYPE_GQSA32: case CODI_TYPE_W4A8_32: return 32;
    case CODI_TYPE_Q4G64: case CODI_TYPE_Q8G64: case CODI_TYPE_GQSA64: case CODI_TYPE_W4A8_64: return 64;
    case CODI_TYPE_Q4G128: case CODI_TYPE_Q8G128: case CODI_TYPE_GQSA128: case CODI_TYPE_W4A8_128: return 128;
    default: return 0;
    }
}

/* ---- Q4G ---- */

static inline int clamp_q4(float v) {
    const int q = (int)lrintf(v);
    return q < 0 ? 0 : q > 15 ? 15 : q;
}

/* Weighted least-squares (d, m) for fixed quants q: minimises
 * sum w (d q + m - x)^2. Returns false when the system is singular. */
static bool fit_dm(const float *x, const float *w, const uint8_t *q, int G, float *d, float *m) {
    double sw = 0, swq = 0, swqq = 0, swx = 0, swqx = 0;
    for (int i = 0; i < G; i++) {
        const double wi = w ? w[i] : 1.0;
        sw += wi;
        swq += wi * q[i];
        swqq += wi * q[i] * q[i];
        swx += wi * x[i];
        swqx += wi * q[i] * x[i];
    }
    const double D = sw * swqq - swq * swq;
    if (!(D > 1e-30 * (sw * swqq + 1e-30)))
        return false;
    *d = (float)((sw * swqx - swq * swx) / D);
    *m = (float)((swqq * swx - swq * swqx) / D);
    return *d > 0.0f;
}

static double err_dm(const float *x, const float *w, int G, float d, float m, uint8_t *q) {
    double e = 0.0;
    const float id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < G; i++) {
        q[i] = (uint8_t)clamp_q4((x[i] - m) * id);
        const double r = (double)d * q[i] + m - x[i];
        e += (w ? w[i] : 1.0) * r * r;
    }
    return e;
}

/* One group: min/max start, then a search over 19 scales around
 * 15 / (max - min), each refined by a least-squares fit of (d, m) (the
 * idea of ggml's make_qkx2_quants, without its min <= 0 rule). d and m are
 * rounded to fp16 before the final quants are chosen, so the stored values
 * are the ones the error was measured with. */
static void quantize_group_q4(const float *x, const float *w, int G, uint8_t *blk) {
    float mn = x[0], mx = x[0];
    for (int i = 1; i < G; i++) {
        mn = x[i] < mn ? x[i] : mn;
        mx = x[i] > mx ? x[i] : mx;
    }
    uint8_t q[128], qt[128];
    float bd = (mx - mn) / 15.0f, bm = mn;
    if (mx > mn) {
        double best = err_dm(x, w, G, FP16(codi_fp32_to_fp16(bd)), FP16(codi_fp32_to_fp16(bm)), q);
        for (int is = -9; is <= 9; is++) {
            const float iscale = (15.0f + 0.1f * (float)is) / (mx - mn);
            for (int i = 0; i < G; i++)
                qt[i] = (uint8_t)clamp_q4(iscale * (x[i] - mn));
            float d, m;
            if (!fit_dm(x, w, qt, G, &d, &m))
                continue;
            d = FP16(codi_fp32_to_fp16(d));
            m = FP16(codi_fp32_to_fp16(m));
            if (!(d > 0.0f) || !isfinite(m))
                continue;
            const double e = err_dm(x, w, G, d, m, qt);
            if (e < best) {
                best = e;
                bd = d;
                bm = m;
            }
        }
    } else {
        bd = 0.0f;
    }
    const uint16_t d16 = codi_fp32_to_fp16(bd), m16 = codi_fp32_to_fp16(bm);
    err_dm(x, NULL, G, FP16(d16), FP16(m16), q);
    wr16(blk, d16);
    wr16(blk + 2, m16);
    uint8_t *qs = blk + 4;
    for (int k = 0; k < G / 32; k++)
        for (int j = 0; j < 16; j++)
            qs[16 * k + j] = (uint8_t)(q[32 * k + j] | (q[32 * k + j + 16] << 4));
}

void codi_quantize_row_q4g(const float *x, void *vy, int64_t n, int G, const float *imp) {
    CODI_ASSERT(G == 32 || G == 64 || G == 128);
    CODI_ASSERT(n >= 0 && n % G == 0);
    uint8_t *y = vy;
    for (int64_t i = 0; i < n / G; i++)
        quantize_group_q4(x + i * G, imp ? imp + i * G : NULL, G, y + i * CODI_Q4G_BYTES(G));
}

void codi_dequantize_row_q4g(const void *vx, float *y, int64_t n, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q4G_BYTES(G), y += G) {
        const float d = FP16(rd16(b)), m = FP16(rd16(b + 2));
        const uint8_t *qs = b + 4;
        for (int k = 0; k < G / 32; k++)
            for (int j = 0; j < 16; j++) {
                y[32 * k + j] = (qs[16 * k + j] & 0x0F) * d + m;
                y[32 * k + j + 16] = (qs[16 * k + j] >> 4) * d + m;
            }
    }
}

void codi_vec_dot_q4g_q8_1(int64_t n, float *s, const void *vx, const void *vy, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q4G_BYTES(G)) {
        const float d = FP16(rd16(b)), m = FP16(rd16(b + 2));
        const uint8_t *qs = b + 4;
        for (int k = 0; k < G / 32; k++, y++) {
            int sumi = 0;
            for (int j = 0; j < 16; j++)
                sumi += (qs[16 * k + j] & 0x0F) * y->qs[j] + (qs[16 * k + j] >> 4) * y->qs[j + 16];
            sumf += (d * FP16(y->d)) * (float)sumi + m * FP16(y->s);
        }
    }
    *s = sumf;
}

/* ---- GQSA ---- */

void codi_quantize_row_gqsa(const float *x, void *vy, int64_t n, int G, const int32_t *keep, int k,
                            const float *imp) {
    CODI_ASSERT(G == 32 || G == 64 || G == 128);
    CODI_ASSERT(n >= 0 && n % G == 0);
    uint8_t *b = vy;
    uint8_t tmp[CODI_Q4G_BYTES(128)];
    for (int i = 0; i < k; i++, b += CODI_GQSA_BYTES(G)) {
        const int32_t g = keep[i];
        CODI_ASSERT(g >= 0 && (int64_t)g < n / G && g <= 65535);
        quantize_group_q4(x + (int64_t)g * G, imp ? imp + (int64_t)g * G : NULL, G, tmp);
        memcpy(b, tmp, 4);
        wr16(b + 4, (uint16_t)g);
        memcpy(b + 6, tmp + 4, (size_t)G / 2);
    }
}

int codi_gqsa_check(const void *data, int type, int64_t n_stored, int64_t rows, int64_t ne0) {
    const int G = codi_type_group_size(type);
    if (!codi_type_is_sparse(type) || !G || n_stored % G || ne0 % G || n_stored > ne0)
        return CODI_EFORMAT;
    const int64_t k = n_stored / G;
    const uint8_t *b = data;
    for (int64_t r = 0; r < rows; r++) {
        int64_t prev = -1;
        for (int64_t i = 0; i < k; i++, b += CODI_GQSA_BYTES(G)) {
            const int64_t idx = rd16(b + 4);
            if (idx <= prev || idx >= ne0 / G)
                return CODI_EFORMAT;
            prev = idx;
        }
    }
    return 0;
}

/* The stored groups one after another (the removed ones are not there). */
static void dequantize_row_gqsa(const void *vx, float *y, int64_t n, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    uint8_t tmp[CODI_Q4G_BYTES(128)];
    for (int64_t i = 0; i < n / G; i++, b += CODI_GQSA_BYTES(G), y += G) {
        memcpy(tmp, b, 4);
        memcpy(tmp + 4, b + 6, (size_t)G / 2);
        codi_dequantize_row_q4g(tmp, y, G, G);
    }
}

/* Every group kept, in order (a GQSA row without pruning). */
static void quantize_row_gqsa_dense(const float *x, void *vy, int64_t n, int G) {
    int32_t keep[1024];
    for (int64_t g0 = 0; g0 < n / G; g0 += 1024) {
        const int k = (int)(n / G - g0 < 1024 ? n / G - g0 : 1024);
        for (int i = 0; i < k; i++)
            keep[i] = (int32_t)i;
        codi_quantize_row_gqsa(x + g0 * G, (uint8_t *)vy + g0 * CODI_GQSA_BYTES(G), (int64_t)k * G, G, keep, k,
                               NULL);
        /* indices are relative to the chunk: make them absolute */
        for (int i = 0; i < k; i++)
            wr16((uint8_t *)vy + (g0 + i) * CODI_GQSA_BYTES(G) + 4, (uint16_t)(g0 + i));
    }
}

void codi_vec_dot_gqsa_q8_1(int64_t n, float *s, const void *vx, const void *vy, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y0 = vy;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / G; i++, b += CODI_GQSA_BYTES(G)) {
        const float d = FP16(rd16(b)), m = FP16(rd16(b + 2));
        const codi_block_q8_1 *y = y0 + (size_t)rd16(b + 4) * (G / 32);
        const uint8_t *qs = b + 6;
        for (int k = 0; k < G / 32; k++, y++) {
            int sumi = 0;
            for (int j = 0; j < 16; j++)
                sumi += (qs[16 * k + j] & 0x0F) * y->qs[j] + (qs[16 * k + j] >> 4) * y->qs[j + 16];
            sumf += (d * FP16(y->d)) * (float)sumi + m * FP16(y->s);
        }
    }
    *s = sumf;
}

/* ---- Q8G ---- */

void codi_quantize_row_q8g(const float *x, void *vy, int64_t n, int G) {
    CODI_ASSERT(G == 32 || G == 64 || G == 128);
    CODI_ASSERT(n >= 0 && n % G == 0);
    uint8_t *b = vy;
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q8G_BYTES(G), x += G) {
        float amax = 0.0f;
        for (int j = 0; j < G; j++)
            amax = fabsf(x[j]) > amax ? fabsf(x[j]) : amax;
        const float d = amax / 127.0f;
        const float id = d > 0.0f ? 1.0f / d : 0.0f;
        wr16(b, codi_fp32_to_fp16(d));
        int8_t *qs = (int8_t *)(b + 2);
        for (int j = 0; j < G; j++)
            qs[j] = (int8_t)lrintf(x[j] * id);
    }
}

void codi_dequantize_row_q8g(const void *vx, float *y, int64_t n, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q8G_BYTES(G), y += G) {
        const float d = FP16(rd16(b));
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int j = 0; j < G; j++)
            y[j] = qs[j] * d;
    }
}

void codi_vec_dot_q8g_q8_0(int64_t n, float *s, const void *vx, const void *vy, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_0 *y = vy;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q8G_BYTES(G)) {
        const float d = FP16(rd16(b));
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int k = 0; k < G / 32; k++, y++) {
            int sumi = 0;
            for (int j = 0; j < 32; j++)
                sumi += qs[32 * k + j] * y->qs[j];
            sumf += (d * FP16(y->d)) * (float)sumi;
        }
    }
    *s = sumf;
}

void codi_vec_dot_q8g_q8_1(int64_t n, float *s, const void *vx, const void *vy, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_q8_1 *y = vy;
    float sumf = 0.0f;
    for (int64_t i = 0; i < n / G; i++, b += CODI_Q8G_BYTES(G)) {
        const float d = FP16(rd16(b));
        const int8_t *qs = (const int8_t *)(b + 2);
        for (int k = 0; k < G / 32; k++, y++) {
            int sumi = 0;
            for (int j = 0; j < 32; j++)
                sumi += qs[32 * k + j] * y->qs[j];
            sumf += (d * FP16(y->d)) * (float)sumi;
        }
    }
    *s = sumf;
}

static void dot_q8g32_q8_1_ref(int64_t n, float *s, const void *x, const void *y) {
    codi_vec_dot_q8g_q8_1(n, s, x, y, 32);
}
static void dot_q8g64_q8_1_ref(int64_t n, float *s, const void *x, const void *y) {
    codi_vec_dot_q8g_q8_1(n, s, x, y, 64);
}
static void dot_q8g128_q8_1_ref(int64_t n, float *s, const void *x, const void *y) {
    codi_vec_dot_q8g_q8_1(n, s, x, y, 128);
}

codi_vec_dot_fn codi_kernel_vec_dot_q8g_q8_1(int type) {
#if defined(__x86_64__) || defined(__i386__)
    if (!strcmp(codi_kernel_backend(), "avx2")) {
        switch (type) {
        case CODI_TYPE_Q8G32: return codi_vec_dot_q8g32_q8_1_avx2;
        case CODI_TYPE_Q8G64: return codi_vec_dot_q8g64_q8_1_avx2;
        case CODI_TYPE_Q8G128: return codi_vec_dot_q8g128_q8_1_avx2;
        default: break;
        }
    }
#endif
    switch (type) {
    case CODI_TYPE_Q8G32: return dot_q8g32_q8_1_ref;
    case CODI_TYPE_Q8G64: return dot_q8g64_q8_1_ref;
    case CODI_TYPE_Q8G128: return dot_q8g128_q8_1_ref;
    default: return NULL;
    }
}

/* ---- W4A8 ---- */

void codi_quantize_row_a8_ref(const float *x, void *vy, int64_t n) {
    CODI_ASSERT(n >= 0 && n % 32 == 0);
    codi_block_a8 *y = vy;
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    const float d = amax / 127.0f, id = d > 0.0f ? 1.0f / d : 0.0f;
    for (int64_t b = 0; b < n / 32; b++) {
        int sum = 0;
        for (int j = 0; j < 32; j++) {
            const int q = (int)lrintf(x[b * 32 + j] * id);
            y[b].qs[j] = (int8_t)(q > 127 ? 127 : q < -127 ? -127 : q);
            sum += y[b].qs[j];
        }
        y[b].d = d;
        y[b].sum = (int16_t)sum;
        y[b].pad = 0;
    }
}

void codi_dequantize_row_a8_ref(const void *vx, float *y, int64_t n) {
    const codi_block_a8 *x = vx;
    for (int64_t i = 0; i < n; i++)
        y[i] = x[i / 32].qs[i % 32] * x[i / 32].d;
}

enum { W4A8_SEARCH = 2 }; /* sg and z tried around the min/max choice */
/* The code of v (int8 units) for group scale sg and zero z: nearest in
 * 0..15, and kept so that sg * (q - z) fits an int8. */
static int w4a8_code(float v, int sg, int z) {
    int q = (int)lrintf(v / (float)sg) + z;
    q = q < 0 ? 0 : q > 15 ? 15 : q;
    while (q > 0 && sg * (q - z) > 127)
        q--;
    while (q < 15 && sg * (q - z) < -128)
        q++;
    return q;
}

void codi_quantize_row_w4a8(const float *x, void *vy, int64_t n, int G, float *row_scale) {
    CODI_ASSERT(G == 32 || G == 64 || G == 128);
    CODI_ASSERT(n >= 0 && n % G == 0);
    float amax = 0.0f;
    for (int64_t i = 0; i < n; i++)
        amax = fabsf(x[i]) > amax ? fabsf(x[i]) : amax;
    /* QServe's protective range: int8 steps of max|w| / 119, so that
     * sg * (q - z) stays within int8 after the group step (|w8| <= 119,
     * sg <= 16: at most 119 + 8); the AMX kernel multiplies those. */
    const float sc = amax / 119.0f, isc = sc > 0.0f ? 1.0f / sc : 0.0f;
    if (row_scale)
        *row_scale = sc;
    uint8_t *b = vy;
    for (int64_t g = 0; g < n / G; g++, b += CODI_W4A8_BYTES(G)) {
        float v[128];
        int mn = 127, mx = -127;
        for (int j = 0; j < G; j++) {
            v[j] = x[g * G + j] * isc;
            const int w8 = (int)lrintf(v[j] > 119.0f ? 119.0f : v[j] < -119.0f ? -119.0f : v[j]);
            mn = w8 < mn ? w8 : mn;
            mx = w8 > mx ? w8 : mx;
        }
        const int s0 = CODI_MAX(1, (mx - mn + 14) / 15);
        int best_sg = s0, best_z = (int)lrintf((float)-mn / (float)s0);
        float best = INFINITY;
        for (int sg = CODI_MAX(1, s0 - W4A8_SEARCH); sg <= s0 + W4A8_SEARCH; sg++) {
            const int zc = (int)lrintf((float)-mn / (float)sg);
            for (int z = zc - W4A8_SEARCH; z <= zc + W4A8_SEARCH; z++) {
                if (z < -128 || z > 127)
                    continue;
                float e = 0.0f;
                for (int j = 0; j < G; j++) {
                    const int q = w4a8_code(v[j], sg, z);
                    const float d = (float)(sg * (q - z)) - v[j];
                    e += d * d;
                }
                if (e < best) {
                    best = e;
                    best_sg = sg;
                    best_z = z;
                }
            }
        }
        b[0] = (uint8_t)best_sg;
        b[1] = (uint8_t)(int8_t)best_z;
        uint8_t *qs = b + 2;
        for (int k = 0; k < G / 32; k++)
            for (int j = 0; j < 16; j++)
                qs[16 * k + j] = (uint8_t)(w4a8_code(v[32 * k + j], best_sg, best_z) |
                                           w4a8_code(v[32 * k + j + 16], best_sg, best_z) << 4);
    }
}

bool codi_w4a8_row_fits_int8(const void *vx, int64_t n, int G) {
    const uint8_t *b = vx;
    for (int64_t g = 0; g < n / G; g++, b += CODI_W4A8_BYTES(G)) {
        const int sg = b[0], z = (int8_t)b[1];
        if (sg * (0 - z) >= -128 && sg * (15 - z) <= 127)
            continue;
        int qmin = 15, qmax = 0;
        for (int j = 0; j < G / 2; j++) {
            const int lo = b[2 + j] & 15, hi = b[2 + j] >> 4;
            qmin = CODI_MIN(qmin, CODI_MIN(lo, hi));
            qmax = CODI_MAX(qmax, CODI_MAX(lo, hi));
        }
        if (sg * (qmin - z) < -128 || sg * (qmax - z) > 127)
            return false;
    }
    return true;
}

/* In int8 units (times the row scale gives the weights). */
static void dequantize_row_w4a8(const void *vx, float *y, int64_t n, int G) {
    const uint8_t *b = vx;
    for (int64_t g = 0; g < n / G; g++, b += CODI_W4A8_BYTES(G), y += G) {
        const int sg = b[0], z = (int8_t)b[1];
        for (int k = 0; k < G / 32; k++)
            for (int j = 0; j < 16; j++) {
                y[32 * k + j] = (float)(sg * ((b[2 + 16 * k + j] & 15) - z));
                y[32 * k + j + 16] = (float)(sg * ((b[2 + 16 * k + j] >> 4) - z));
            }
    }
}

void codi_vec_dot_w4a8_a8(int64_t n, float *s, const void *vx, const void *vy, int G) {
    CODI_ASSERT(n >= 0 && n % G == 0);
    const uint8_t *b = vx;
    const codi_block_a8 *y = vy;
    int64_t total = 0;
    for (int64_t g = 0; g < n / G; g++, b += CODI_W4A8_BYTES(G)) {
        const int sg = b[0], z = (int8_t)b[1];
        int64_t t = 0;
        for (int k = 0; k < G / 32; k++) {
            const codi_block_a8 *a = &y[g * (G / 32) + k];
            int sumi = 0;
            for (int j = 0; j < 16; j++)
                sumi += (b[2 + 16 * k + j] & 15) * a->qs[j] + (b[2 + 16 * k + j] >> 4) * a->qs[j + 16];
            t += sumi - z * a->sum;
        }
        total += sg * t;
    }
    *s = n > 0 ? y[0].d * (float)total : 0.0f;
}

/* ---- fixed-G entry points of the traits table ---- */

#define DEFINE_GROUP(G)                                                                    \
    void codi_dequantize_row_q4g##G##_ref(const void *x, float *y, int64_t n) {            \
        codi_dequantize_row_q4g(x, y, n, G);                                               \
    }                                                                                      \
    void codi_quantize_row_q4g##G##_ref(const float *x, void *y, int64_t n) {              \
        codi_quantize_row_q4g(x, y, n, G, NULL);                                           \
    }                                                                                      \
    void codi_vec_dot_q4g##G##_q8_1_ref(int64_t n, float *s, const void *x, const void *y) { \
        codi_vec_dot_q4g_q8_1(n, s, x, y, G);                                              \
    }                                                                                      \
    void codi_dequantize_row_q8g##G##_ref(const void *x, float *y, int64_t n) {            \
        codi_dequantize_row_q8g(x, y, n, G);                                               \
    }                                                                                      \
    void codi_quantize_row_q8g##G##_ref(const float *x, void *y, int64_t n) {              \
        codi_quantize_row_q8g(x, y, n, G);                                                 \
    }                                                                                      \
    void codi_vec_dot_q8g##G##_q8_0_ref(int64_t n, float *s, const void *x, const void *y) { \
        codi_vec_dot_q8g_q8_0(n, s, x, y, G);                                              \
    }                                                                                      \
    void codi_dequantize_row_gqsa##G##_ref(const void *x, float *y, int64_t n) {           \
        dequantize_row_gqsa(x, y, n, G);                                                   \
    }                                                                                      \
    void codi_quantize_row_gqsa##G##_ref(const float *x, void *y, int64_t n) {             \
        quantize_row_gqsa_dense(x, y, n, G);                                               \
    }                                                                                      \
    void codi_vec_dot_gqsa##G##_q8_1_ref(int64_t n, float *s, const void *x, const void *y) { \
        codi_vec_dot_gqsa_q8_1(n, s, x, y, G);                                             \
    }                                                                                      \
    void codi_dequantize_row_w4a8_##G##_ref(const void *x, float *y, int64_t n) {          \
        dequantize_row_w4a8(x, y, n, G);                                                   \
    }                                                                                      \
    void codi_quantize_row_w4a8_##G##_ref(const float *x, void *y, int64_t n) {            \
        codi_quantize_row_w4a8(x, y, n, G, NULL);                                          \
    }                                                                                      \
    void codi_vec_dot_w4a8_##G##_a8_ref(int64_t n, float *s, const void *x, const void *y) { \
        codi_vec_dot_w4a8_a8(n, s, x, y, G);                                               \
    }
DEFINE_GROUP(32)
DEFINE_GROUP(64)
DEFINE_GROUP(128)
