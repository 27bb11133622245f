/* Internal helpers shared by every module: error codes, error messages,
 * invariant checks. Nothing here prints to the user or exits. */
#ifndef CODI_COMMON_H
#define CODI_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "codi.h"

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
