/* Shared by the fuzz targets: the library's error contract, checked on every
 * failure (docs/errors.md). A violation aborts, which libFuzzer (and the
 * replay driver under ctest) reports as a crash with the input saved.
 *
 * Every target defines LLVMFuzzerInitialize and LLVMFuzzerTestOneInput;
 * built with -DCODI_FUZZ=ON they link against libFuzzer, otherwise against
 * replay.c, which runs every file given (or every file in a directory) once. */
#ifndef CODI_FUZZ_COMMON_H
#define CODI_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codi.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                     \
    do {                                                                     \
        if (!(cond)) {                                                       \
            fprintf(stderr, "fuzz check failed %s:%d: %s\n", __FILE__,       \
                    __LINE__, #cond);                                        \
            abort();                                                         \
        }                                                                    \
    } while (0)

/* A failing call returned rc and wrote err: rc is one of the CODI_E* codes
 * and the message is one non-empty line of printable text. */
static inline void fuzz_check_error(int rc, const char *err, size_t errlen) {
    if (rc >= 0 || rc < CODI_ENOTFOUND) {
        fprintf(stderr, "fuzz: bad error code %d (%s)\n", rc, err);
        abort();
    }
    size_t n = strnlen(err, errlen);
    if (n == 0 || n == errlen) {
        fprintf(stderr, "fuzz: error %d with an empty/unterminated message\n",
                rc);
        abort();
    }
    /* CODI_FUZZ_LAX_MESSAGES=1 skips this check, to look past a known
     * message bug for deeper ones. */
    static int lax = -1;
    if (lax < 0)
        lax = getenv("CODI_FUZZ_LAX_MESSAGES") != NULL;
    for (size_t i = 0; i < n && !lax; i++)
        if ((unsigned char)err[i] < 0x20 || err[i] == 0x7f) {
            fprintf(stderr, "fuzz: error message has control byte 0x%02x at "
                            "%zu: %s\n",
                    (unsigned char)err[i], i, err);
            abort();
        }
}

/* Path of a model the target needs: $CODI_FUZZ_MODELS/name, else
 * CODI_SOURCE_DIR/models/name. */
static inline const char *fuzz_model_path(const char *name, char *buf,
                                          size_t len) {
    const char *dir = getenv("CODI_FUZZ_MODELS");
    if (dir && *dir)
        snprintf(buf, len, "%s/%s", dir, name);
    else
        snprintf(buf, len, "%s/models/%s", CODI_SOURCE_DIR, name);
    return buf;
}

static inline codi_model *fuzz_load_model(const char *name) {
    char path[1024], err[512] = "";
    codi_model *m = NULL;
    if (codi_model_load(fuzz_model_path(name, path, sizeof path), NULL, &m, err,
                        sizeof err)) {
        fprintf(stderr, "fuzz: cannot load %s: %s (run tools/fetch_models.sh "
                        "or set CODI_FUZZ_MODELS)\n",
                path, err);
        exit(1);
    }
    return m;
}

#endif
