/* Internal helpers shared by every module: error codes, error messages,
 * invariant checks. Nothing here prints to the user or exits. */
#ifndef CODI_COMMON_H
#define CODI_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "codi.h"

/* 1/d for a quantization scale, or 0 when d is 0 or so small (denormal)
 * that 1/d overflows: x * inf would give inf/NaN and an undefined
 * float-to-int conversion. Such blocks quantize to all zeros. */
static inline float codi_inv_scale(float d) {
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    return id - id == 0.0f ? id : 0.0f; /* 0 for +-inf */
}

/* Fill a caller's error buffer (may be NULL) and return code. */
int codi_errorf(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Internal invariants only (never for bytes from outside): on in release
 * builds, reports file:line. */
#define CODI_ASSERT(x)                                                       \
    do {                                                                     \
        if (!(x)) {                                                          \
            fprintf(stderr, "codi: internal error %s:%d: %s\n", __FILE__,    \
                    __LINE__, #x);                                           \
            abort();                                                         \
        }                                                                    \
    } while (0)

#define CODI_MIN(a, b) ((a) < (b) ? (a) : (b))
#define CODI_MAX(a, b) ((a) > (b) ? (a) : (b))

#endif
