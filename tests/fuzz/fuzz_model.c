/* Fuzz target: the model loader through the public API. The input is
 * written to a memfd and loaded with codi_model_load (GGUF reader, hyper-
 * parameters and their validation, tokenizer, weight binding); what loads is
 * inspected with codi_file_* as `codi inspect` does, its chat template is
 * applied, and two tokens are decoded in an 8-token context and sampled.
 * Input: a GGUF file. */
#include "fuzz_common.h"

#include <math.h>
#include <sys/mman.h>
#include <unistd.h>

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    fd = memfd_create("codi-fuzz-model", MFD_CLOEXEC);
    if (fd < 0) {
        perror("memfd_create");
        exit(1);
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return 0;
}

static void inspect(void) {
    codi_file *f = NULL;
    char err[512] = "";
    int rc = codi_file_open(path, &f, err, sizeof err);
    FUZZ_CHECK(rc == 0); /* the model loaded, so the file parses */
    for (int64_t i = 0; i < codi_file_n_meta(f); i++) {
        FUZZ_CHECK(codi_file_meta_key(f, i) != NULL);
        char buf[96];
        int n = codi_file_meta_format(f, i, buf, sizeof buf);
        FUZZ_CHECK(n >= 0 && strlen(buf) < sizeof buf);
    }
    FUZZ_CHECK(codi_file_meta_key(f, codi_file_n_meta(f)) == NULL);
    for (int64_t i = 0; i < codi_file_n_tensors(f); i++) {
        codi_tensor_info ti;
        FUZZ_CHECK(codi_file_tensor(f, i, &ti) == 0);
        FUZZ_CHECK(ti.n_dims >= 1 && ti.n_dims <= 4);
    }
    codi_file_close(f);
}

static void use(codi_model *m) {
    const int32_t nv = codi_model_n_vocab(m);
    FUZZ_CHECK(nv > 0 && codi_model_n_embd(m) > 0 && codi_model_n_layer(m) > 0);
    char err[512] = "";
    /* chat template of the file, if any */
    static const char *const roles[] = {"system", "user"};
    static const char *const contents[] = {"Be brief.", "Hi"};
    char *out = NULL;
    int rc = codi_chat_apply(m, NULL, roles, contents, 2, true, &out, err,
                             sizeof err);
    if (rc)
        fuzz_check_error(rc, err, sizeof err);
    else
        FUZZ_CHECK(out != NULL);
    free(out);

    int32_t toks[64];
    int32_t n = codi_tokenize(m, "Hi there", 8, toks, 64, true, false);
    FUZZ_CHECK(n >= 0 && n <= 64);
    for (int32_t i = 0; i < n; i++)
        FUZZ_CHECK(toks[i] >= 0 && toks[i] < nv);
    if (n < 2) {
        toks[0] = 0;
        toks[1] = nv - 1;
    }

    codi_context_params cp = codi_context_default_params();
    cp.n_ctx = 8;
    cp.n_batch = 8;
    cp.n_threads = 1;
    codi_context *c = NULL;
    rc = codi_context_create(m, &cp, &c, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
        return;
    }
    rc = codi_decode(c, toks, 2, 0, false, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
    } else {
        const float *logits = codi_get_logits(c, -1);
        FUZZ_CHECK(logits != NULL);
        codi_sampler *s = NULL;
        codi_sampler_params sp = codi_sampler_default_params();
        sp.temp = 0.0f;
        if (codi_sampler_create(&sp, nv, &s, err, sizeof err) == 0) {
            int32_t t = codi_sampler_sample(s, logits);
            FUZZ_CHECK(t >= 0 && t < nv);
            codi_sampler_free(s);
        }
    }
    codi_context_free(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        abort();
    codi_model *m = NULL;
    char err[512] = "";
    int rc = codi_model_load(path, NULL, &m, err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
        FUZZ_CHECK(m == NULL);
        return 0;
    }
    inspect();
    use(m);
    codi_model_free(m);
    return 0;
}
