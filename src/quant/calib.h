/* Calibration pass of codi quantize: run the model over a text and
 * collect, for every weight matrix, E[x_j^2] of each input feature j of
 * the activations entering it (the diagonal of the layer's Hessian up to
 * a factor, as GPTQ / OBS-style salience uses it). */
#ifndef CODI_QUANT_CALIB_H
#define CODI_QUANT_CALIB_H

#include <stddef.h>
#include <stdint.h>

typedef struct codi_calib codi_calib;

/* At most max_tokens of text (0: 4096) in windows of 512 tokens. */
int codi_calib_run(const char *model_path, const char *text, size_t len, int n_threads, int max_tokens,
                   codi_calib **out, char *err, size_t errlen);
int codi_calib_tokens(const codi_calib *c);
/* E[x^2] per input feature of the matrix named `name` (ne0 floats), or
 * NULL when that matrix saw no activations (e.g. token_embd). The
 * signature matches codi_quant_params.imp. */
const float *codi_calib_importance(void *calib, const char *name, int64_t ne0);
void codi_calib_free(codi_calib *c);

#endif
