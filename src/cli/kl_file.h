/* The --kl-base / --kl file of `codi ppl` (layout in cmd_ppl.c). Reading is
 * split out of cmd_ppl.c so tests/fuzz/fuzz_kl.c can run it on any bytes.
 * Both functions return 0, or 1 with a one-line message in err (no "codi: "
 * prefix); they never print. */
#ifndef CODI_CLI_KL_FILE_H
#define CODI_CLI_KL_FILE_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Check the header against this run (vocabulary nv, context n_ctx, at least
 * n_chunks windows), the file size against what the header implies, and
 * the stored tokens against toks[n_chunks * n_ctx]. Leaves f at the first
 * scored position. */
int kl_read_header(FILE *f, const char *path, int32_t nv, int32_t n_ctx,
                   int32_t n_chunks, const int32_t *toks, char *err,
                   size_t errlen);

/* Read the next scored position into blp[nv] (log-probabilities); q is
 * scratch of nv entries. */
int kl_read_position(FILE *f, const char *path, int32_t nv, uint16_t *q,
                     float *blp, char *err, size_t errlen);

#endif
