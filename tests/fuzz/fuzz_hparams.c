/* Fuzz target: hyper-parameter validation (codi_model_validate_hparams) on
 * arbitrary values. Input: ten little-endian int32 (n_vocab, n_embd,
 * n_layer, n_head, n_head_kv, head_dim, n_ff, n_ctx_train, n_rot,
 * rope_neox) and three float32 (rope_base, rope_freq_scale, norm_eps).
 *
 * Whatever validation accepts must be safe for the loader and the context:
 * the invariants the forward pass relies on hold and the sizes it computes
 * (weights per layer, KV rows, scratch) fit in 64 bits. */
#include "fuzz_common.h"

#include <math.h>

#include "model/model.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    int32_t iv[10] = {0};
    float fv[3] = {0};
    memcpy(iv, data, size < sizeof iv ? size : sizeof iv);
    if (size > sizeof iv)
        memcpy(fv, data + sizeof iv,
               size - sizeof iv < sizeof fv ? size - sizeof iv : sizeof fv);
    codi_hparams hp = {.n_vocab = iv[0], .n_embd = iv[1], .n_layer = iv[2],
                       .n_head = iv[3], .n_head_kv = iv[4], .head_dim = iv[5],
                       .n_ff = iv[6], .n_ctx_train = iv[7], .n_rot = iv[8],
                       .rope_neox = iv[9] & 1, .rope_base = fv[0],
                       .rope_freq_scale = fv[1], .norm_eps = fv[2]};
    snprintf(hp.arch, sizeof hp.arch, "llama");
    char err[512] = "";
    int rc = codi_model_validate_hparams(&hp, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
        return 0;
    }
    FUZZ_CHECK(hp.n_vocab > 0 && hp.n_embd > 0 && hp.n_layer > 0);
    FUZZ_CHECK(hp.n_head > 0 && hp.n_head_kv > 0 &&
               hp.n_head % hp.n_head_kv == 0);
    FUZZ_CHECK(hp.head_dim > 0 && hp.head_dim % 2 == 0);
    FUZZ_CHECK(hp.n_rot > 0 && hp.n_rot <= hp.head_dim && hp.n_rot % 2 == 0);
    FUZZ_CHECK(hp.n_ff > 0 && hp.n_ctx_train > 0);
    FUZZ_CHECK(isfinite(hp.rope_base) && hp.rope_base > 0.0f);
    FUZZ_CHECK(isfinite(hp.rope_freq_scale) && hp.rope_freq_scale > 0.0f);
    FUZZ_CHECK(isfinite(hp.norm_eps) && hp.norm_eps > 0.0f);
    /* Sizes computed from them (in elements) stay far from overflow. */
    const uint64_t d = (uint64_t)hp.n_embd, dq = (uint64_t)hp.n_head * (uint64_t)hp.head_dim;
    const uint64_t emb = d * (uint64_t)hp.n_vocab;
    FUZZ_CHECK(emb / d == (uint64_t)hp.n_vocab && emb < (1ull << 62));
    FUZZ_CHECK(dq * d < (1ull << 62) && d * (uint64_t)hp.n_ff < (1ull << 62));
    const uint64_t kv = (uint64_t)hp.n_layer * 4096u * (uint64_t)hp.n_head_kv *
                        (uint64_t)hp.head_dim * 1024u; /* 1024 sequences */
    FUZZ_CHECK(kv < (1ull << 62));
    return 0;
}
