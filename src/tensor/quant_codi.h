/* codi's own weight types (layouts in docs/formats.md):
 *
 *   Q4G<G>  asymmetric 4-bit in groups of G (32, 64, 128) along a row:
 *           per group  u16 d (fp16), u16 m (fp16), u8 qs[G/2];
 *           w = d * q + m, q in 0..15. The quants of each 32 consecutive
 *           elements 32k..32k+31 of the group sit in qs[16k..16k+15]:
 *           element 32k + j in the low nibble of qs[16k + j], element
 *           32k + j + 16 in its high nibble. Q4G32 is byte-identical to
 *           ggml's Q4_1.
 *   Q8G<G>  symmetric 8-bit: per group u16 d (fp16), i8 qs[G]; w = d * q,
 *           q in -127..127. Q8G32 is byte-identical to Q8_0.
 *
 *   GQSA<G> group-sparse Q4G: per KEPT group  u16 d, u16 m, u16 idx,
 *           u8 qs[G/2] (qs as Q4G); idx is the group's position along the
 *           row (elements idx*G .. idx*G+G-1 of the input). A row holds the
 *           same number k of kept groups, in increasing idx; the removed
 *           groups are zero. The GGUF tensor has ne[0] = k*G (stored
 *           elements); the model's in-features come from its shape in the
 *           architecture. vec_dot(n = k*G, x, y) reads y (the whole
 *           activation row) at each block's idx.
 *
 * Activations pair as Q8_1 (Q4G: the sums s give the min term) and Q8_0
 * (Q8G), both in blocks of 32: a weight group spans G/32 activation
 * blocks. The references here are the test oracles of the AVX2 kernels. */
#ifndef CODI_TENSOR_QUANT_CODI_H
#define CODI_TENSOR_QUANT_CODI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tensor/types.h"

#define CODI_Q4G_BYTES(G) (4 + (G) / 2)
#define CODI_Q8G_BYTES(G) (2 + (G))
#define CODI_GQSA_BYTES(G) (6 + (G) / 2)
#define CODI_W4A8_BYTES(G) (2 + (G) / 2)

/* A8: per-token int8 activations in blocks of 32. d is the scale of the
 * whole row (the same in every block: max|x| / 127); sum = the block's
 * sum of qs, for the weights' zero points. */
typedef struct codi_block_a8 {
    float d;
    int16_t sum;
    int16_t pad;
    int8_t qs[32];
} codi_block_a8;
_Static_assert(sizeof(codi_block_a8) == 40, "a8 size");

static inline int codi_type_is_w4a8(int type) {
    return type >= CODI_TYPE_W4A8_32 && type <= CODI_TYPE_W4A8_128;
}
void codi_dequantize_row_a8_ref(const void *x, float *y, int64_t n);
void codi_quantize_row_a8_ref(const float *x, void *y, int64_t n);
/* W4A8 row of n weights: *row_scale = max|w| / 119 (the per-channel int8
 * step, QServe's protective range), then per group of G the values
 * v = w / row_scale as sg * (q - z), q in 0..15: of sg within 2 of
 * s0 = max(1, ceil((max - min) / 15)) (max, min of the rounded v) and z
 * within 2 of round(-min / sg), the pair with the least squared error in
 * the group. Every sg * (q - z) written fits an int8. */
void codi_quantize_row_w4a8(const float *x, void *y, int64_t n, int G, float *row_scale);
/* True when every weight of the row, sg * (q - z) in int8 units, fits an
 * int8 (rows written by codi_quantize_row_w4a8 do; files from before the
 * protective range, or made elsewhere, may not): the condition for the
 * AMX kernel, which multiplies those int8 values. */
bool codi_w4a8_row_fits_int8(const void *x, int64_t n, int G);
/* Exact integer dot in int8 units: d_x * sum_g sg_g sum_j (q_j - z_g) x_j
 * (int64 total, one float multiply); the caller multiplies by the row
 * scale. */
void codi_vec_dot_w4a8_a8(int64_t n, float *s, const void *x, const void *y, int G);

/* True for the GQSA types. */
static inline int codi_type_is_sparse(int type) {
    return type >= CODI_TYPE_GQSA32 && type <= CODI_TYPE_GQSA128;
}

/* A GQSA row of k kept groups from a dense row x of n elements: keep[]
 * holds k increasing group indices (< n / G); imp as for Q4G. */
void codi_quantize_row_gqsa(const float *x, void *y, int64_t n, int G, const int32_t *keep, int k,
                            const float *imp);
/* Check every index of rows x n_stored stored elements: increasing and
 * < ne0 / G. 0 or CODI_EFORMAT (bytes from a file: never assumed). */
int codi_gqsa_check(const void *data, int type, int64_t n_stored, int64_t rows, int64_t ne0);
void codi_vec_dot_gqsa_q8_1(int64_t n, float *s, const void *x, const void *y, int G);
/* Q8G weights against Q8_1 activations (their sums unused): the 8-bit rows
 * of a mix matrix share the activation row of its Q4G rows. */
void codi_vec_dot_q8g_q8_1(int64_t n, float *s, const void *x, const void *y, int G);
/* That dot product for a Q8G type, the fastest this CPU has; NULL for any
 * other type. */
codi_vec_dot_fn codi_kernel_vec_dot_q8g_q8_1(int type);

/* The type of a family (4, 8, or -4 for GQSA) and group size; -1 when
 * there is none. */
int codi_type_codi_group(int bits, int group);
/* Group size of a codi group type; 0 for any other type. */
int codi_type_group_size(int type);

/* Quantize one row of n elements (a multiple of G) into Q4G<G>; imp
 * (n weights >= 0, or NULL for all ones) weights the squared error that the
 * scale/min search minimises: imp = E[x^2] of the activations makes the
 * rounding calibration-aware. */
void codi_quantize_row_q4g(const float *x, void *y, int64_t n, int G, const float *imp);
void codi_quantize_row_q8g(const float *x, void *y, int64_t n, int G);
void codi_dequantize_row_q4g(const void *x, float *y, int64_t n, int G);
void codi_dequantize_row_q8g(const void *x, float *y, int64_t n, int G);
/* Float sum over 32-element sub-blocks in order:
 * q4g: s += (d_w d_y) * sumi + m_w * s_y;  q8g: s += (d_w d_y) * sumi. */
void codi_vec_dot_q4g_q8_1(int64_t n, float *s, const void *x, const void *y, int G);
void codi_vec_dot_q8g_q8_0(int64_t n, float *s, const void *x, const void *y, int G);

#define CODI_DECL_GROUP(G)                                                             \
    void codi_dequantize_row_q4g##G##_ref(const void *x, float *y, int64_t n);         \
    void codi_quantize_row_q4g##G##_ref(const float *x, void *y, int64_t n);           \
    void codi_vec_dot_q4g##G##_q8_1_ref(int64_t n, float *s, const void *x, const void *y); \
    void codi_dequantize_row_q8g##G##_ref(const void *x, float *y, int64_t n);         \
    void codi_quantize_row_q8g##G##_ref(const float *x, void *y, int64_t n);           \
    void codi_vec_dot_q8g##G##_q8_0_ref(int64_t n, float *s, const void *x, const void *y); \
    void codi_dequantize_row_gqsa##G##_ref(const void *x, float *y, int64_t n);        \
    void codi_quantize_row_gqsa##G##_ref(const float *x, void *y, int64_t n);          \
    void codi_vec_dot_gqsa##G##_q8_1_ref(int64_t n, float *s, const void *x, const void *y); \
    void codi_dequantize_row_w4a8_##G##_ref(const void *x, float *y, int64_t n);       \
    void codi_quantize_row_w4a8_##G##_ref(const float *x, void *y, int64_t n);         \
    void codi_vec_dot_w4a8_##G##_a8_ref(int64_t n, float *s, const void *x, const void *y);
CODI_DECL_GROUP(32)
CODI_DECL_GROUP(64)
CODI_DECL_GROUP(128)
#undef CODI_DECL_GROUP

#endif
