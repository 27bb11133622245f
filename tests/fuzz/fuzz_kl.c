/* Fuzz target: the reader of `codi ppl --kl FILE` (src/cli/kl_file.c), as
 * cmd_ppl.c drives it, on a run with vocabulary 8 and context 4. Input: one
 * byte choosing how many windows the run has (1..3), then the file. Tokens
 * of the run: (i * 3) % 8, as tests/fuzz/make_seeds.py writes them. */
#include "fuzz_common.h"

#include <math.h>

#include "cli/kl_file.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    return 0;
}

enum { NV = 8, N_CTX = 4 };

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 2)
        return 0;
    const int32_t n_chunks = 1 + data[0] % 3;
    int32_t toks[3 * N_CTX];
    for (int32_t i = 0; i < 3 * N_CTX; i++)
        toks[i] = (i * 3) % NV;
    FILE *f = fmemopen((void *)(uintptr_t)(data + 1), size - 1, "rb");
    if (!f)
        return 0;
    char err[512] = "";
    if (kl_read_header(f, "fuzz.kl", NV, N_CTX, n_chunks, toks, err,
                       sizeof err)) {
        fuzz_check_error(CODI_EFORMAT, err, sizeof err);
        fclose(f);
        return 0;
    }
    uint16_t q[NV];
    float blp[NV];
    const int32_t per = N_CTX - 1 - N_CTX / 2;
    for (int32_t p = 0; p < n_chunks * per; p++) {
        if (kl_read_position(f, "fuzz.kl", NV, q, blp, err, sizeof err)) {
            fuzz_check_error(CODI_EFORMAT, err, sizeof err);
            break;
        }
        for (int i = 0; i < NV; i++)
            FUZZ_CHECK(isfinite(blp[i]));
    }
    fclose(f);
    return 0;
}
