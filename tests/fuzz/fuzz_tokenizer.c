/* Fuzz target: tokenizing arbitrary bytes with the real vocabularies (the
 * SmolLM2 byte-level BPE and the Gemma 3 SentencePiece BPE, loaded once
 * from the GGUF metadata with codi_vocab_load, which codi_tokenize and
 * codi_token_to_piece pass straight through to; the vocabulary loads
 * whatever the architecture).
 * Input: one flag byte (bit 0: Gemma, bit 1: add_special, bit 2:
 * parse_special), then the text.
 *
 * Checked: the size query (n_max 0) and the real call agree; every id is in
 * the vocabulary; codi_token_to_piece reports sizes consistently; and, where
 * it is defined, the round trip: for valid UTF-8 text and no BOS/EOS
 * added, the concatenated pieces (special = true) give the text back,
 * except for bytes the vocabulary cannot express at all. Those are dropped,
 * as llama.cpp drops them: SmolLM2 has no token for the byte images of
 * 0x04, 0x06, 0x13, 0x14, 0x16, 0x1d, 0xf1, 0xf2 (and of bytes UTF-8 never
 * uses); Gemma has all 256 <0xXX> byte tokens and no space prefix, but
 * SentencePiece writes a space as U+2581 and renders every U+2581 as a
 * space, so one in the text comes back as ' ' (llama.cpp too). Which
 * bytes are missing is measured at start-up, one probe character each. */
#include "fuzz_common.h"

#include <stdbool.h>

#include "gguf.h"
#include "tokenizer.h"

static codi_gguf *files[2];
static codi_vocab *models[2];

static codi_vocab *load_vocab(const char *name, codi_gguf **g) {
    char path[1024], err[512] = "";
    codi_vocab *v = NULL;
    if (codi_gguf_open(fuzz_model_path(name, path, sizeof path), g, err,
                       sizeof err) ||
        codi_vocab_load(*g, &v, err, sizeof err)) {
        fprintf(stderr, "fuzz: cannot load the vocabulary of %s: %s (run "
                        "tools/fetch_models.sh or set CODI_FUZZ_MODELS)\n",
                path, err);
        exit(1);
    }
    return v;
}
static bool dropped[2][256]; /* byte b never comes back from model i */

/* Text of toks[0..n) with special = true; malloc'd, length in *len. */
static char *detokenize(const codi_vocab *m, const int32_t *toks, int32_t n,
                        size_t *len);

/* A valid UTF-8 character containing byte b (0 bytes when none can). */
static size_t probe_char(int b, uint8_t out[4]) {
    if (b < 0x80)
        return out[0] = (uint8_t)b, 1;
    if (b <= 0xBF)
        return out[0] = 0xC2, out[1] = (uint8_t)b, 2;
    if (b < 0xC2 || b > 0xF4)
        return 0;
    out[0] = (uint8_t)b;
    out[1] = b == 0xE0 ? 0xA0 : b == 0xF0 ? 0x90 : 0x80;
    out[2] = out[3] = 0x80;
    return b <= 0xDF ? 2 : b <= 0xEF ? 3 : 4;
}

static void measure_dropped(int i) {
    for (int b = 0; b < 256; b++) {
        uint8_t c[4];
        size_t n = probe_char(b, c);
        if (!n)
            continue;
        int32_t toks[16];
        int32_t k = codi_vocab_tokenize(models[i], (const char *)c, n, toks, 16,
                                  false, false);
        FUZZ_CHECK(k >= 0);
        size_t len;
        char *back = detokenize(models[i], toks, k, &len);
        dropped[i][b] = memchr(back, b, len) == NULL;
        free(back);
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    models[0] = load_vocab("SmolLM2-135M-Instruct.Q4_1.gguf", &files[0]);
    models[1] = load_vocab("gemma-3-270m-q4_k_m.gguf", &files[1]);
    measure_dropped(0);
    measure_dropped(1);
    return 0;
}

static char *detokenize(const codi_vocab *m, const int32_t *toks, int32_t n,
                        size_t *len) {
    size_t cap = 64, got = 0;
    char *back = malloc(cap);
    FUZZ_CHECK(back != NULL);
    for (int32_t i = 0; i < n; i++) {
        int32_t k = codi_vocab_token_to_piece(m, toks[i], NULL, 0, true);
        FUZZ_CHECK(k <= 0);
        if (k == 0)
            continue;
        k = -k;
        if (got + (size_t)k > cap) {
            cap = (got + (size_t)k) * 2;
            back = realloc(back, cap);
            FUZZ_CHECK(back != NULL);
        }
        FUZZ_CHECK(codi_vocab_token_to_piece(m, toks[i], back + got, k, true) == k);
        got += (size_t)k;
        char tiny[2];
        int32_t k2 = codi_vocab_token_to_piece(m, toks[i], tiny, 2, false);
        FUZZ_CHECK(k2 <= 2 && k2 >= -k);
    }
    *len = got;
    return back;
}

/* Strict UTF-8: no overlong forms, surrogates or code points past U+10FFFF. */
static bool valid_utf8(const uint8_t *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        if (n - i < len)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += len;
    }
    return true;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const uint8_t flags = data[0];
    const codi_vocab *m = models[flags & 1];
    const bool add_special = flags & 2, parse_special = flags & 4;
    const char *text = (const char *)data + 1;
    const size_t len = size - 1;
    const int32_t nv = codi_vocab_n_tokens(m);

    int32_t need = codi_vocab_tokenize(m, text, len, NULL, 0, add_special,
                                 parse_special);
    FUZZ_CHECK(need != INT32_MIN);
    need = need < 0 ? -need : need;
    int32_t *toks = malloc(((size_t)need + 1) * sizeof *toks);
    FUZZ_CHECK(toks != NULL);
    int32_t n = codi_vocab_tokenize(m, text, len, toks, need, add_special,
                              parse_special);
    FUZZ_CHECK(n == need);
    if (n > 0 && len < 64) /* one short: the size again, nothing else */
        FUZZ_CHECK(codi_vocab_tokenize(m, text, len, toks, n - 1, add_special,
                                 parse_special) == -n);

    for (int32_t i = 0; i < n; i++)
        FUZZ_CHECK(toks[i] >= 0 && toks[i] < nv);
    size_t got;
    char *back = detokenize(m, toks, n, &got);
    if (!add_special && valid_utf8(data + 1, len)) {
        char *want = malloc(len + 1);
        FUZZ_CHECK(want != NULL);
        size_t nw = 0;
        for (size_t i = 0; i < len; i++) {
            if ((flags & 1) && len - i >= 3 && memcmp(text + i, "\xe2\x96\x81", 3) == 0) {
                want[nw++] = ' ';
                i += 2;
            } else if (!dropped[flags & 1][(uint8_t)text[i]]) {
                want[nw++] = text[i];
            }
        }
        if (got != nw || memcmp(back, want, nw) != 0) {
            fprintf(stderr, "round trip: %zu bytes in (%zu expressible), "
                            "%zu bytes back\n",
                    len, nw, got);
            abort();
        }
        free(want);
    }
    free(back);
    free(toks);
    return 0;
}
