/* F32, F16, BF16: conversion rows and dot products (reference). */
#include <string.h>

#include "common.h"
#include "tensor/quants.h"

void codi_dequantize_row_f32_ref(const void *x, float *y, int64_t n) {
    CODI_ASSERT(n >= 0);
    if (n > 0)
        memcpy(y, x, (size_t)n * sizeof(float));
}

void codi_quantize_row_f32_ref(const float *x, void *y, int64_t n) {
    CODI_ASSERT(n >= 0);
    if (n > 0)
        memcpy(y, x, (size_t)n * sizeof(float));
}

void codi_dequantize_row_f16_ref(const void *x, float *y, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++)
        y[i] = codi_fp16_to_fp32(h[i]);
}

void codi_quantize_row_f16_ref(const float *x, void *y, int64_t n) {
    uint16_t *h = y;
    for (int64_t i = 0; i < n; i++)
        h[i] = codi_fp32_to_fp16(x[i]);
}

void codi_dequantize_row_bf16_ref(const void *x, float *y, int64_t n) {
    const uint16_t *h = x;
    for (int64_t i = 0; i < n; i++)
        y[i] = codi_bf16_to_fp32(h[i]);
}

void codi_quantize_row_bf16_ref(const float *x, void *y, int64_t n) {
    uint16_t *h = y;
    for (int64_t i = 0; i < n; i++)
        h[i] = codi_fp32_to_bf16(x[i]);
}

/* Each product is rounded to float, then summed in double: ggml's scalar
 * ggml_vec_dot_{f32,f16,bf16} (ggml_float accumulator). */
void codi_vec_dot_f32_ref(int64_t n, float *s, const void *vx,
                          const void *vy) {
    const float *x = vx, *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(x[i] * y[i]);
    *s = (float)sum;
}

void codi_vec_dot_f16_ref(int64_t n, float *s, const void *vx,
                          const void *vy) {
    const uint16_t *x = vx, *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(codi_fp16_to_fp32(x[i]) * codi_fp16_to_fp32(y[i]));
    *s = (float)sum;
}

void codi_vec_dot_bf16_ref(int64_t n, float *s, const void *vx,
                           const void *vy) {
    const uint16_t *x = vx, *y = vy;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += (double)(codi_bf16_to_fp32(x[i]) * codi_bf16_to_fp32(y[i]));
    *s = (float)sum;
}
