/* Weights repacked at load time into groups of 8 rows ("x8" layouts), so
 * one pass over the weights gives 8 output rows in the 8 lanes of a vector:
 * no horizontal sums, one scale conversion per 8 rows, and each activation
 * byte quad loaded once for 8 rows (and, in prefill, each weight unpacked
 * once for 4 tokens).
 *
 * A group holds rows 8g .. 8g+7 of a matrix of n in-features (n a multiple
 * of 32); its blocks follow in order of the in-feature, each the 8 rows'
 * block i side by side:
 *
 *   Q4_0x8 (144 bytes): uint16 d[8]; uint8 qs[128]
 *   Q4_1x8 (160 bytes): uint16 d[8]; uint16 m[8]; uint8 qs[128]
 *   Q8_0x8 (272 bytes): uint16 d[8]; int8 qs[256]
 *   Q5_0x8 (176 bytes): uint16 d[8]; uint32 qh[8]; uint8 qs[128]
 *   Q5_1x8 (192 bytes): uint16 d[8]; uint16 m[8]; uint32 qh[8]; uint8 qs[128]
 *   Q4_Kx8 (1152 bytes per 256 in-features): uint16 d[8]; uint16 dmin[8];
 *       uint32 sc[3][8]; uint8 qs[1024]
 *   Q5_Kx8 (1408 bytes per 256 in-features): as Q4_Kx8 with uint32 qh[64]
 *       between sc and qs
 *   Q6_Kx8 (1680 bytes per 256 in-features): uint16 d[8]; int8 sc[16][8];
 *       uint8 ql[1024]; uint8 qh[512]
 *   W4A8_Gx8 (8 (2 + G / 2) bytes per group of G in-features):
 *       uint8 sg[8]; int8 z[8]; then G / 32 times uint8 qs[128]
 *
 * d and m of row r are those of the row's own block. 4-bit quants: byte
 * 32 k + 4 r + t (k < 4, t < 4) holds element 8 k + t of row r in its low
 * nibble and element 8 k + 4 + t in its high nibble. 8-bit: byte
 * 32 k + 4 r + t (k < 8) holds element 4 k + t of row r. So the low (high)
 * nibbles of 32 bytes, or 32 bytes of Q8_0x8, are 4 elements of each of 8
 * rows: one maddubs against 4 activation bytes broadcast gives each row's
 * partial sum in its own 32-bit lane. Q5_0's and Q5_1's nibbles are laid
 * out as Q4_0's; their fifth bits as 8 masks, one per vector of nibbles: bit
 * 4 r + t of qh[2 k + h] is the fifth bit of element 8 k + 4 h + t of row
 * r, i.e. of the low (h = 0) or high (h = 1) nibble of byte 32 k + 4 r + t.
 * Q4_K: sc[p][r] is bytes 4 p .. 4 p + 3 of row r's 12 packed scale bytes
 * (so one 32-bit lane per row unpacks every row's scale and min at once);
 * byte 256 j + 32 k + 4 r + t of qs holds element 64 j + 4 k + t of row r
 * in its low nibble (sub-block 2 j) and element 64 j + 32 + 4 k + t in its
 * high nibble (sub-block 2 j + 1). Q5_K's fifth bits: bit 4 r + t of
 * qh[2 (8 j + k) + h] is that of element 64 j + 32 h + 4 k + t of row r.
 * Q6_K: sc[s][r] is row r's scale of elements 16 s .. 16 s + 15. Let V_m
 * (m < 64) be the 32 bytes whose byte 4 r + t is the 6-bit quant of
 * element 4 m + t of row r. Byte i of ql vector k (32 bytes at 32 k) holds
 * the low 4 bits of byte i of V_2k in its low nibble and of V_2k+1 in its
 * high nibble; byte i of qh vector s (at 32 s) holds the top 2 bits of
 * byte i of V_4s, V_4s+1, V_4s+2, V_4s+3 in its bits 0-1, 2-3, 4-5, 6-7.
 *
 * A group is exactly as large as the 8 rows it came from. The layout is an
 * in-memory one: files keep llama.cpp's. */
#ifndef CODI_KERNELS_REPACK_H
#define CODI_KERNELS_REPACK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CODI_X8_ROWS 8

/* Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K and W4A8 have an x8 layout;
 * Q4G32 and Q8G32,
 * byte-identical to Q4_1 and Q8_0, use theirs. */
bool codi_x8_has_layout(int type);

/* Repack rows [0, 8) of src (n in-features, rows ldw bytes apart) into one
 * group at dst (8 * codi_row_size(type, n) bytes). */
void codi_x8_pack_group(int type, int64_t n, const void *src, size_t ldw, void *dst);

/* y[c * ldy + 8 g + r] = dot(row 8 g + r, activation row c) for g < ng,
 * r < 8, c < nc, over ng consecutive groups at w; x holds nc activation
 * rows of the type's vec_dot_type, ldx bytes apart. Equal, within float
 * rounding, to the type's reference vec_dot on the original rows. */
typedef void (*codi_gemm_x8_fn)(int64_t n, int ng, const void *w, int nc, const void *x,
                                size_t ldx, float *y, size_t ldy);

/* The x8 kernel for `type` on this CPU, or NULL (no layout, or no kernel
 * for this CPU: then weights stay as they are). CODI_NO_REPACK=1 in the
 * environment turns repacking off (for A/B measurements). */
codi_gemm_x8_fn codi_kernel_gemm_x8(int type);

/* The AMX kernels' type (below): an x8 kernel that also multiplies row r
 * by row_scale[r] (W4A8's per-row scale), unless row_scale is NULL. */
typedef void (*codi_gemm_x8_amx_fn)(int64_t n, int ng, const void *w, const float *row_scale, int nc,
                                    const void *x, size_t ldx, float *y, size_t ldy);

#if defined(__x86_64__) || defined(__i386__)
void codi_gemm_x8_q4_0_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q4_1_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q8_0_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q5_0_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q5_1_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q4_K_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q5_K_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
void codi_gemm_x8_q6_K_avx2(int64_t n, int ng, const void *w, int nc, const void *x, size_t ldx,
                            float *y, size_t ldy);
/* The same kernels with AVX-VNNI's vpdpbusd; equal to the AVX2 ones bit
 * for bit. Only on CPUs with AVX-VNNI (codi_cpu_features.avxvnni). */
void codi_gemm_x8_q4_0_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q4_1_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q8_0_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q5_0_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q5_1_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q4_K_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q5_K_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_q6_K_avxvnni(int64_t n, int ng, const void *w, int nc, const void *x,
                               size_t ldx, float *y, size_t ldy);
/* Q4_1 with AVX-512 (F, BW, VL, DQ, VNNI): two groups per 512-bit vector,
 * 8 tokens a tile; equal to codi_gemm_x8_q4_1_avxvnni bit for bit (which
 * it runs for one token). Only where codi_cpu_features.avx512 and
 * .avxvnni are set. */
void codi_gemm_x8_q4_1_avx512(int64_t n, int ng, const void *w, int nc, const void *x,
                              size_t ldx, float *y, size_t ldy);
/* Q8_0 likewise (activations staged as y + 128 for vpdpbusd). */
void codi_gemm_x8_q8_0_avx512(int64_t n, int ng, const void *w, int nc, const void *x,
                              size_t ldx, float *y, size_t ldy);
/* W4A8 on AMX tiles (kernels/w4a8_amx_avx2.c), for prefill: the x8
 * kernel's y, then times row_scale[r] (unless NULL), bit for bit, but only
 * for weights whose every sg * (q - z) fits an int8
 * (codi_w4a8_row_fits_int8); tokens past a multiple of 16 run the x8
 * kernel. Only where codi_cpu_features.amx is set. */
void codi_gemm_x8_w4a8_32_amx(int64_t n, int ng, const void *w, const float *row_scale, int nc,
                              const void *x, size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_w4a8_64_amx(int64_t n, int ng, const void *w, const float *row_scale, int nc,
                              const void *x, size_t ldx, float *y, size_t ldy);
void codi_gemm_x8_w4a8_128_amx(int64_t n, int ng, const void *w, const float *row_scale, int nc,
                               const void *x, size_t ldx, float *y, size_t ldy);
#endif

/* The AMX kernel for W4A8 `type` (see above), or NULL: no AMX, the OS
 * refused the tile state, another type, or CODI_NO_AMX=1 (A/B runs). */
codi_gemm_x8_amx_fn codi_kernel_gemm_x8_amx(int type);

#endif
