/* Tensor types (ggml numbering, so GGUF files read as-is) and their traits:
 * block size, bytes per block, reference dequantize/quantize and the
 * reference dot product against the activation type they pair with. */
#ifndef CODI_TYPES_H
#define CODI_TYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum codi_type {
    CODI_TYPE_F32 = 0,
    CODI_TYPE_F16 = 1,
    CODI_TYPE_Q4_0 = 2,
    CODI_TYPE_Q4_1 = 3,
    CODI_TYPE_Q5_0 = 6,
    CODI_TYPE_Q5_1 = 7,
    CODI_TYPE_Q8_0 = 8,
    CODI_TYPE_Q8_1 = 9,
    CODI_TYPE_Q2_K = 10,
    CODI_TYPE_Q3_K = 11,
    CODI_TYPE_Q4_K = 12,
    CODI_TYPE_Q5_K = 13,
    CODI_TYPE_Q6_K = 14,
    CODI_TYPE_Q8_K = 15,
    CODI_TYPE_I16 = 17, /* integer data (codi's mix permutations): no dot */
    CODI_TYPE_BF16 = 30,
    /* codi's own types (docs/formats.md), well above llama.cpp's ids. One
     * id per group size so that every type keeps a fixed block size. */
    CODI_TYPE_Q4G32 = 48, /* asymmetric 4-bit, fp16 scale + min per group */
    CODI_TYPE_Q4G64 = 49,
    CODI_TYPE_Q4G128 = 50,
    CODI_TYPE_Q8G32 = 51, /* symmetric 8-bit, fp16 scale per group */
    CODI_TYPE_Q8G64 = 52,
    CODI_TYPE_Q8G128 = 53,
    /* group-sparse 4-bit (GQSA): only kept groups are stored, each with its
     * group index; a tensor's ne[0] counts the stored elements */
    CODI_TYPE_GQSA32 = 54,
    CODI_TYPE_GQSA64 = 55,
    CODI_TYPE_GQSA128 = 56,
    /* W4A8 (QServe QoQ): 4-bit codes in int8 units with u8 group scale and
     * zero; the per-row float scale is a separate tensor */
    CODI_TYPE_W4A8_32 = 57,
    CODI_TYPE_W4A8_64 = 58,
    CODI_TYPE_W4A8_128 = 59,
    CODI_TYPE_A8 = 60, /* activations: int8 with one scale per token row */
    CODI_TYPE_COUNT = 64 /* table size */
};

#define CODI_QK 32   /* block size of the legacy quants */
#define CODI_QK_K 256 /* super-block size of the k-quants */

typedef void (*codi_to_float_fn)(const void *x, float *y, int64_t n);
typedef void (*codi_from_float_fn)(const float *x, void *y, int64_t n);
/* s = dot(x[0..n), y[0..n)), x of the weight type, y of its vec_dot_type;
 * n is a multiple of the block size. */
typedef void (*codi_vec_dot_fn)(int64_t n, float *s, const void *x,
                                const void *y);

typedef struct codi_type_traits {
    const char *name;  /* "Q4_0", as llama.cpp prints it */
    int64_t blck_size; /* elements per block */
    size_t type_size;  /* bytes per block */
    codi_to_float_fn to_float;     /* reference dequantize */
    codi_from_float_fn from_float; /* reference quantize (may be NULL) */
    int vec_dot_type;              /* type y must be in for vec_dot */
    codi_vec_dot_fn vec_dot;       /* reference dot product */
} codi_type_traits;

/* NULL for an unknown or unsupported type id. */
const codi_type_traits *codi_type_get(int type);
const char *codi_type_name(int type); /* "?" when unknown */
/* Bytes of a row of ne0 elements; 0 when ne0 is not a multiple of the block
 * size or the type is unknown. */
size_t codi_row_size(int type, int64_t ne0);

/* fp16 / bf16 conversions (scalar, exact round-to-nearest-even). */
float codi_fp16_to_fp32(uint16_t h);
uint16_t codi_fp32_to_fp16(float f);
float codi_bf16_to_fp32(uint16_t h);
uint16_t codi_fp32_to_bf16(float f);

#endif
