/* Fuzz target: chat templates through the public API, codi_chat_apply with
 * a template string taken from the input (or the model's own). Input: one
 * flag byte (bit 0: add_assistant, bit 1: use the model's template), then
 * template \0 role \0 content \0 role \0 content ... (at most 16 messages;
 * a missing content is ""). The model (SmolLM2) is loaded once: it supplies
 * the BOS text and the default template. */
#include "fuzz_common.h"

static codi_model *model;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    model = fuzz_load_model("SmolLM2-135M-Instruct.Q4_1.gguf");
    return 0;
}

#define MAX_MSG 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const uint8_t flags = data[0];
    /* NUL-terminated copy, split in place at each NUL. */
    char *buf = malloc(size);
    FUZZ_CHECK(buf != NULL);
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';
    const char *fields[1 + 2 * MAX_MSG];
    size_t nf = 0;
    for (size_t i = 0; i < size && nf < 1 + 2 * MAX_MSG;) {
        fields[nf++] = buf + i;
        i += strlen(buf + i) + 1;
    }
    const char *roles[MAX_MSG], *contents[MAX_MSG];
    size_t n = 0;
    for (size_t f = 1; f < nf && n < MAX_MSG; f += 2, n++) {
        roles[n] = fields[f];
        contents[n] = f + 1 < nf ? fields[f + 1] : "";
    }
    const char *tmpl = (flags & 2) ? NULL : fields[0];
    char *out = NULL;
    char err[512] = "";
    int rc = codi_chat_apply(model, tmpl, roles, contents, n, flags & 1, &out,
                             err, sizeof err);
    if (rc) {
        fuzz_check_error(rc, err, sizeof err);
    } else {
        FUZZ_CHECK(out != NULL);
        volatile size_t sink = strlen(out);
        (void)sink;
    }
    free(out);
    free(buf);
    return 0;
}
