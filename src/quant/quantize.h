/* codi quantize: rewrite a GGUF model with codi's weight formats
 * (docs/formats.md). Every input type codi can dequantize is accepted;
 * matrices are dequantized to float row by row and requantized, so no
 * more than a row (plus one output tensor in the writer) is in memory. */
#ifndef CODI_QUANT_QUANTIZE_H
#define CODI_QUANT_QUANTIZE_H

#include <stddef.h>
#include <stdint.h>

enum codi_quant_kind {
    CODI_QUANT_F32 = 0, /* plain float bases (for quality references) */
    CODI_QUANT_F16,
    CODI_QUANT_Q4G,     /* asymmetric 4-bit groups */
    CODI_QUANT_Q8G,     /* symmetric 8-bit groups */
    CODI_QUANT_GQSA,    /* 4-bit groups, a fraction of groups removed */
    CODI_QUANT_MIX,     /* 4/8-bit output features ranked model-wide */
    CODI_QUANT_W4A8,    /* QoQ: int8 per channel, then int4 groups */
    CODI_QUANT_KIND_COUNT
};

typedef struct codi_quant_params {
    int kind;       /* enum codi_quant_kind */
    int group;      /* 32, 64 or 128 */
    float sparsity; /* GQSA: fraction of groups removed per row, [0, 1) */
    float bits;     /* MIX: target average bits per weight of the block
                       matrices, scales and output order included, [4, 8] */
    /* Optional importance per input feature of each matrix (E[x^2] of the
     * activations, from a calibration pass): imp(user, tensor name, ne0)
     * returns ne0 floats or NULL. */
    const float *(*imp)(void *user, const char *name, int64_t ne0);
    void *imp_user;
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *progress_user;
} codi_quant_params;

/* "q4g" -> CODI_QUANT_Q4G ...; -1 when unknown. */
int codi_quant_kind_from_name(const char *name);
const char *codi_quant_kind_name(int kind);

/* Check the parameters (group size); 0 or CODI_EINVAL with a message. */
int codi_quant_check_params(const codi_quant_params *p, char *err, size_t errlen);

/* Read in_path, write the quantized model to out_path (which the caller
 * makes a temporary name and renames: see cmd_quantize.c). On failure
 * out_path is removed. Fills *bpw (bits per weight over all matrices,
 * scales included) when not NULL. */
int codi_quantize_file(const char *in_path, const char *out_path, const codi_quant_params *p, double *bpw,
                       char *err, size_t errlen);

/* What a MIX run chose (for the CLI's summary line). */
typedef struct codi_mix_report {
    int64_t rows_hi, rows;   /* 8-bit output features / all ranked ones */
    double bits;             /* achieved average over the ranked matrices */
    double floor_bits;       /* the average with every feature at 4 bits */
} codi_mix_report;
int codi_quantize_file_ex(const char *in_path, const char *out_path, const codi_quant_params *p, double *bpw,
                          codi_mix_report *mix, char *err, size_t errlen);

#endif
