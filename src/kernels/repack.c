/* x8 repacking (kernels/repack.h): plain C, run once at load time. */
#include "kernels/repack.h"

#include <string.h>

#include "tensor/blocks.h"
#include "tensor/quant_codi.h"
#include "tensor/types.h"

bool codi_x8_has_layout(int type) {
    switch (type) {
    case CODI_TYPE_Q4_0: case CODI_TYPE_Q4_1: case CODI_TYPE_Q5_0: case CODI_TYPE_Q5_1:
    case CODI_TYPE_Q8_0: case CODI_TYPE_Q4_K: case CODI_TYPE_Q5_K: case CODI_TYPE_Q6_K:
    case CODI_TYPE_Q4G32: case CODI_TYPE_Q8G32:
        return true;
    default:
        return codi_type_is_w4a8(type);
    }
}

/* Element j (< 32) of a legacy 4-bit block's nibbles. */
static inline uint8_t nib(const uint8_t *qs, int j) {
    return j < 16 ? (uint8_t)(qs[j] & 0x0F) : (uint8_t)(qs[j - 16] >> 4);
}

static void pack_nibbles(uint8_t *dst, const uint8_t *const qs[CODI_X8_ROWS]) {
    for (int k = 0; k < 4; k++)
        for (int r = 0; r < CODI_X8_ROWS; r++)
            for (int t = 0; t < 4; t++)
                dst[32 * k + 4 * r + t] =
                    (uint8_t)(nib(qs[r], 8 * k + t) | nib(qs[r], 8 * k + 4 + t) << 4);
}

/* Q5_0's or Q5_1's fifth bits of the 8 rows' blocks as the masks of
 * repack.h. */
static void pack_fifth_bits(uint32_t mask[8], const uint8_t *const qh[CODI_X8_ROWS]) {
    for (int v = 0; v < 8; v++) {
        const int k = v / 2, h = v % 2;
        uint32_t m = 0;
        for (int r = 0; r < CODI_X8_ROWS; r++) {
            uint32_t bits;
            memcpy(&bits, qh[r], sizeof bits); /* bit j: element j (little endian) */
            for (int t = 0; t < 4; t++)
                m |= ((bits >> (8 * k + 4 * h + t)) & 1u) << (4 * r + t);
        }
        mask[v] = m;
    }
}

/* Q4_K and Q5_K (five): per super-block of 256 in-features, as repack.h
 * lays them out. Both blocks start d, dmin, scales; Q5_K then has qh. */
static void pack_k4(bool five, int64_t n, const uint8_t *s, size_t ldw, uint8_t *o) {
    const size_t bb = five ? sizeof(codi_block_q5_K) : sizeof(codi_block_q4_K);
    for (int64_t i = 0; i < n / CODI_QK_K; i++) {
        const codi_block_q4_K *b[CODI_X8_ROWS]; /* d, dmin, scales */
        const uint8_t *qh[CODI_X8_ROWS], *qs[CODI_X8_ROWS];
        for (int r = 0; r < CODI_X8_ROWS; r++) {
            const uint8_t *blk = s + (size_t)r * ldw + (size_t)i * bb;
            b[r] = (const codi_block_q4_K *)blk;
            qh[r] = five ? ((const codi_block_q5_K *)blk)->qh : NULL;
            qs[r] = five ? ((const codi_block_q5_K *)blk)->qs : b[r]->qs;
            memcpy(o + 2 * r, &b[r]->d, 2);
            memcpy(o + 16 + 2 * r, &b[r]->dmin, 2);
            for (int p = 0; p < 3; p++)
                memcpy(o + 32 + 32 * p + 4 * r, b[r]->scales + 4 * p, 4);
        }
        uint8_t *q = o + 128;
        if (five) {
            uint32_t mask[64] = {0};
            for (int j = 0; j < 4; j++)
                for (int k = 0; k < 8; k++)
                    for (int h = 0; h < 2; h++)
                        for (int r = 0; r < CODI_X8_ROWS; r++)
                            for (int t = 0; t < 4; t++)
                                mask[2 * (8 * j + k) + h] |= (uint32_t)((qh[r][4 * k + t] >> (2 * j + h)) & 1u)
                                                             << (4 * r + t);
            memcpy(q, mask, sizeof mask);
            q += sizeof mask;
        }
        for (int j = 0; j < 4; j++)
            for (int k = 0; k < 8; k++)
                for (int r = 0; r < CODI_X8_ROWS; r++)
                    for (int t = 0; t < 4; t++) /* lo: element 64j+4k+t, hi: +32 */
                        q[256 * j + 32 * k + 4 * r + t] = qs[r][32 * j + 4 * k + t];
        o += bb * CODI_X8_ROWS;
    }
}

/* The 6-bit quant (0..63) of element e (< 256) of a Q6_K block, as
 * llama.cpp lays them out: halves of 128, quarters of 32 within. */
static uint8_t q6_quant(const codi_block_q6_K *b, int e) {
    const int n = e / 128, q = (e % 128) / 32, l = e % 32;
    const uint8_t ql = b->ql[64 * n + l + 32 * (q & 1)];
    const uint8_t lo = q < 2 ? (uint8_t)(ql & 0x0F) : (uint8_t)(ql >> 4);
    return (uint8_t)(lo | ((b->qh[32 * n + l] >> (2 * q)) & 3) << 4);
}

/* Q6_K: per super-block of 256 in-features, as repack.h lays it out. */
static void pack_q6_K(int64_t n, const uint8_t *s, size_t ldw, uint8_t *o) {
    for (int64_t i = 0; i < n / CODI_QK_K; i++) {
        const codi_block_q6_K *b[CODI_X8_ROWS];
        for (int r = 0; r < CODI_X8_ROWS; r++) {
            b[r] = (const codi_block_q6_K *)(s + (size_t)r * ldw) + i;
            memcpy(o + 2 * r, &b[r]->d, 2);
            for (int sb = 0; sb < 16; sb++)
                o[16 + 8 * sb + r] = (uint8_t)b[r]->scales[sb];
        }
        uint8_t *ql = o + 144, *qh = o + 144 + 1024;
        memset(ql, 0, 1024);
        memset(qh, 0, 512);
        for (int m = 0; m < 64; m++)
            for (int r = 0; r < CODI_X8_ROWS; r++)
                for (int t = 0; t < 4; t++) {
                    const uint8_t v = q6_quant(b[r], 4 * m + t);
                    const int i8 = 4 * r + t;
                    ql[32 * (m / 2) + i8] |= (uint8_t)((v & 0x0F) << (4 * (m % 2)));
                    qh[32 * (m / 4) + i8] |= (uint8_t)((v >> 4) << (2 * (m % 4)));
                }
        o += sizeof(codi_block_q6_K) * CODI_X8_ROWS;
    }
}

/* W4A8_G: per group of G in-features, the 8 rows' group scales, then their
 * zero points, then G / 32 blocks of nibbles as Q4_0x8's. */
static void pack_w4a8(int G, int64_t n, const uint8_t *s, size_t ldw, uint8_t *o) {
    for (int64_t g = 0; g < n / G; g++) {
        const uint8_t *b[CODI_X8_ROWS];
        for (int r = 0; r < CODI_X8_ROWS; r++) {
            b[r] = s + (size_t)r * ldw + (size_t)g * CODI_W4A8_BYTES(G);
            o[r] = b[r][0];
            o[CODI_X8_ROWS + r] = b[r][1];
        }
        o += 2 * CODI_X8_ROWS;
        for (int k = 0; k < G / 32; k++, o += 16 * CODI_X8_ROWS) {
            const uint8_t *qs[CODI_X8_ROWS];
            for (int r = 0; r < CODI_X8_ROWS; r++)
                qs[r] = b[r] + 2 + 16 * k;
            pack_nibbles(o, qs);
        }
    }
}

void codi_x8_pack_group(int type, int64_t n, const void *src, size_t ldw, void *dst) {
    const uint8_t *s = src;
    uint8_t *o = dst;
    if (codi_type_is_w4a8(type)) {
        pack_w4a8(codi_type_group_size(type), n, s, ldw, o);
        return;
    }
    if (type == CODI_TYPE_Q4_K || type == CODI_TYPE_Q5_K) {
        pack_k4(type == CODI_TYPE_Q5_K, n, s, ldw, o);
        return;
    }
    if (type == CODI_TYPE_Q6_K) {
        pack_q6_K(n, s, ldw, o);
        return;
    }
    if (type == CODI_TYPE_Q4G32) /* byte-identical to Q4_1 (docs/formats.md) */
        type = CODI_TYPE_Q4_1;
    if (type == CODI_TYPE_Q8G32) /* and to Q8_0 */
        type = CODI_TYPE_Q8_0;
    const int64_t nb = n / CODI_QK;
    for (int64_t i = 0; i < nb; i++) {
        const uint8_t *qs[CODI_X8_ROWS];
        uint16_t d[CODI_X8_ROWS], m[CODI_X8_ROWS];
        if (type == CODI_TYPE_Q4_0) {
            for (int r = 0; r < CODI_X8_ROWS; r++) {
                const codi_block_q4_0 *b = (const codi_block_q4_0 *)(s + (size_t)r * ldw) + i;
                d[r] = b->d;
                qs[r] = b->qs;
            }
            memcpy(o, d, sizeof d);
            pack_nibbles(o + sizeof d, qs);
            o += sizeof(codi_block_q4_0) * CODI_X8_ROWS;
        } else if (type == CODI_TYPE_Q4_1) {
            for (int r = 0; r < CODI_X8_ROWS; r++) {
                const codi_block_q4_1 *b = (const codi_block_q4_1 *)(s + (size_t)r * ldw) + i;
                d[r] = b->d;
                m[r] = b->m;
                qs[r] = b->qs;
            }
            memcpy(o, d, sizeof d);
            memcpy(o + sizeof d, m, sizeof m);
            pack_nibbles(o + sizeof d + sizeof m, qs);
            o += sizeof(codi_block_q4_1) * CODI_X8_ROWS;
        } else if (type == CODI_TYPE_Q5_0 || type == CODI_TYPE_Q5_1) {
            /* d (and Q5_1's m), the fifth-bit masks, the nibbles */
            const bool q51 = type == CODI_TYPE_Q5_1;
            const uint8_t *qh[CODI_X8_ROWS];
            uint32_t mask[8];
            for (int r = 0; r < CODI_X8_ROWS; r++) {
                const uint8_t *row = s + (size_t)r * ldw;
                if (q51) {
                    const codi_block_q5_1 *b = (const codi_block_q5_1 *)row + i;
                    d[r] = b->d;
                    m[r] = b->m;
                    qh[r] = b->qh;
                    qs[r] = b->qs;
                } else {
                    const codi_block_q5_0 *b = (const codi_block_q5_0 *)row + i;
                    d[r] = b->d;
                    qh[r] = b->qh;
                    qs[r] = b->qs;
                }
            }
            pack_fifth_bits(mask, qh);
            uint8_t *p = o;
            memcpy(p, d, sizeof d);
            p += sizeof d;
            if (q51) {
                memcpy(p, m, sizeof m);
                p += sizeof m;
            }
            memcpy(p, mask, sizeof mask);
            pack_nibbles(p + sizeof mask, qs);
            o += (q51 ? sizeof(codi_block_q5_1) : sizeof(codi_block_q5_0)) * CODI_X8_ROWS;
        } else { /* Q8_0 */
            for (int r = 0; r < CODI_X8_ROWS; r++) {
                const codi_block_q8_0 *b = (const codi_block_q8_0 *)(s + (size_t)r * ldw) + i;
                d[r] = b->d;
                for (int k = 0; k < 8; k++)
                    memcpy(o + sizeof d + 32 * k + 4 * r, b->qs + 4 * k, 4);
            }
            memcpy(o, d, sizeof d);
            o += sizeof(codi_block_q8_0) * CODI_X8_ROWS;
        }
    }
}
