#include "unicode.h"

#include <stdbool.h>

#include "unicode_data.h"

#define N_RANGES (sizeof codi_unicode_ranges / sizeof codi_unicode_ranges[0])
#define N_LOWER (sizeof codi_unicode_lower / sizeof codi_unicode_lower[0])

const char *codi_unicode_version(void) { return CODI_UNICODE_VERSION; }

/* Binary search over the range table. */
static uint16_t flags_lookup(uint32_t cpt) {
    size_t lo = 0, hi = N_RANGES - 1; /* last entry is the 0x110000 end */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (codi_unicode_ranges[mid].first <= cpt)
            lo = mid;
        else
            hi = mid;
    }
    return codi_unicode_ranges[lo].flags;
}

uint16_t codi_unicode_flags(uint32_t cpt) {
    if (cpt < 128)
        return codi_unicode_ascii[cpt];
    if (cpt >= CODI_UNICODE_MAX)
        return CODI_UCD_UNDEFINED;
    return flags_lookup(cpt);
}

uint32_t codi_unicode_tolower(uint32_t cpt) {
    size_t lo = 0, hi = N_LOWER;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (codi_unicode_lower[mid].from < cpt)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo < N_LOWER && codi_unicode_lower[lo].from == cpt)
        return codi_unicode_lower[lo].to;
    return cpt;
}

size_t codi_utf8_len(uint8_t lead) {
    static const uint8_t len[16] = {1, 1, 1, 1, 1, 1, 1, 1,
                                    1, 1, 1, 1, 2, 2, 3, 4};
    return len[lead >> 4];
}

static bool cont(const char *s, size_t i) {
    return ((uint8_t)s[i] & 0xC0) == 0x80;
}

uint32_t codi_utf8_decode(const char *s, size_t n, size_t *used) {
    uint8_t c = (uint8_t)s[0];
    *used = 1;
    if (c < 0x80)
        return c;
    if ((c & 0xE0) == 0xC0) {
        if (n < 2 || !cont(s, 1))
            return CODI_UNICODE_REPLACEMENT;
        *used = 2;
        return ((uint32_t)(c & 0x1F) << 6) | ((uint8_t)s[1] & 0x3F);
    }
    if ((c & 0xF0) == 0xE0) {
        if (n < 3 || !cont(s, 1) || !cont(s, 2))
            return CODI_UNICODE_REPLACEMENT;
        *used = 3;
        return ((uint32_t)(c & 0x0F) << 12) |
               ((uint32_t)((uint8_t)s[1] & 0x3F) << 6) |
               ((uint8_t)s[2] & 0x3F);
    }
    if ((c & 0xF8) == 0xF0) {
        if (n < 4 || !cont(s, 1) || !cont(s, 2) || !cont(s, 3))
            return CODI_UNICODE_REPLACEMENT;
        uint32_t cpt = ((uint32_t)(c & 0x07) << 18) |
                       ((uint32_t)((uint8_t)s[1] & 0x3F) << 12) |
                       ((uint32_t)((uint8_t)s[2] & 0x3F) << 6) |
                       ((uint8_t)s[3] & 0x3F);
        if (cpt >= CODI_UNICODE_MAX)
            return CODI_UNICODE_REPLACEMENT;
        *used = 4;
        return cpt;
    }
    /* continuation byte as lead, or 0xF8..0xFF */
    return CODI_UNICODE_REPLACEMENT;
}

size_t codi_utf8_decode_all(const char *s, size_t n, uint32_t *cpts) {
    size_t i = 0, k = 0;
    while (i < n) {
        size_t used;
        cpts[k++] = codi_utf8_decode(s + i, n - i, &used);
        i += used;
    }
    return k;
}

size_t codi_utf8_encode(uint32_t cpt, char out[4]) {
    if (cpt < 0x80) {
        out[0] = (char)cpt;
        return 1;
    }
    if (cpt < 0x800) {
        out[0] = (char)(0xC0 | (cpt >> 6));
        out[1] = (char)(0x80 | (cpt & 0x3F));
        return 2;
    }
    if (cpt < 0x10000) {
        out[0] = (char)(0xE0 | (cpt >> 12));
        out[1] = (char)(0x80 | ((cpt >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cpt & 0x3F));
        return 3;
    }
    if (cpt >= CODI_UNICODE_MAX)
        cpt = CODI_UNICODE_REPLACEMENT;
    if (cpt < 0x10000)
        return codi_utf8_encode(cpt, out);
    out[0] = (char)(0xF0 | (cpt >> 18));
    out[1] = (char)(0x80 | ((cpt >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cpt >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cpt & 0x3F));
    return 4;
}

/* ------------------------------------------------------------------ splits
 * The custom splits below walk one input word [ini, end) at a time.
 * Positions outside it read as "no code point" (flags 0, cpt OUT), which is
 * how the regex alternatives see the word's edges. */

#define OUT 0xFFFFFFFFu

typedef struct walker {
    const uint32_t *cpts;
    size_t ini, end;
    size_t prev_end; /* end of the last word emitted */
    size_t *out;
    size_t n_out;
} walker;

static uint32_t w_cpt(const walker *w, size_t pos) {
    return pos >= w->ini && pos < w->end ? w->cpts[pos] : OUT;
}

static uint16_t w_flags(const walker *w, size_t pos) {
    return pos >= w->ini && pos < w->end ? codi_unicode_flags(w->cpts[pos])
                                         : 0;
}

/* Emit [prev_end, end) when not empty; returns its length. */
static size_t w_emit(walker *w, size_t end) {
    size_t len = end - w->prev_end;
    if (len > 0)
        w->out[w->n_out++] = len;
    w->prev_end = end;
    return len;
}

#define IS_L(f) (((f) & CODI_UCD_LETTER) != 0)
#define IS_N(f) (((f) & CODI_UCD_NUMBER) != 0)
#define IS_WS(f) (((f) & CODI_UCD_WHITESPACE) != 0)
/* [^\s\p{L}\p{N}] at a position that holds a code point */
#define IS_OTHER(f)                                                         \
    (!((f) & (CODI_UCD_WHITESPACE | CODI_UCD_LETTER | CODI_UCD_NUMBER)) &&  \
     (f) != 0)

/* 's|'t|'re|'ve|'m|'ll|'d, case-folded when fold; returns the length
 * matched at pos (0 when none). */
static size_t contraction(const walker *w, size_t pos, bool fold) {
    if (w_cpt(w, pos) != '\'' || pos + 1 >= w->end)
        return 0;
    uint32_t c1 = w_cpt(w, pos + 1);
    if (fold)
        c1 = codi_unicode_tolower(c1);
    if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd')
        return 2;
    if (pos + 2 >= w->end)
        return 0;
    uint32_t c2 = w_cpt(w, pos + 2);
    if (fold)
        c2 = codi_unicode_tolower(c2);
    if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') ||
        (c1 == 'l' && c2 == 'l'))
        return 3;
    return 0;
}

static void split_gpt2(walker *w) {
    size_t pos = w->ini;
    while (pos < w->end) {
        uint32_t cpt = w_cpt(w, pos);
        uint16_t flags = w_flags(w, pos);

        size_t n = contraction(w, pos, false);
        if (n) {
            pos += w_emit(w, pos + n);
            continue;
        }
        /* the optional leading space of the next three alternatives */
        size_t sp = cpt == ' ';
        uint16_t f2 = sp ? w_flags(w, pos + 1) : flags;
        if (IS_L(f2)) { /* ' ?\p{L}+' */
            pos += sp;
            while (IS_L(w_flags(w, pos)))
                pos++;
            w_emit(w, pos);
            continue;
        }
        if (IS_N(f2)) { /* ' ?\p{N}+' */
            pos += sp;
            while (IS_N(w_flags(w, pos)))
                pos++;
            w_emit(w, pos);
            continue;
        }
        if (IS_OTHER(f2)) { /* ' ?[^\s\p{L}\p{N}]+' */
            pos += sp;
            while (IS_OTHER(w_flags(w, pos)))
                pos++;
            w_emit(w, pos);
            continue;
        }
        size_t nws = 0;
        while (IS_WS(w_flags(w, pos + nws)))
            nws++;
        if (nws > 1 && w_cpt(w, pos + nws) != OUT) { /* '\s+(?!\S)' */
            pos += nws - 1;
            w_emit(w, pos);
            continue;
        }
        if (nws > 0) { /* '\s+' */
            pos += nws;
            w_emit(w, pos);
            continue;
        }
        w_emit(w, ++pos); /* no alternative matched: one code point */
    }
}

/* llama3 (max_digits 3) and qwen2 (max_digits 1). */
static void split_llama3(walker *w, size_t max_digits) {
    size_t pos = w->ini;
    while (pos < w->end) {
        uint32_t cpt = w_cpt(w, pos);
        uint16_t flags = w_flags(w, pos);

        size_t n = contraction(w, pos, true);
        if (n) {
            pos += w_emit(w, pos + n);
            continue;
        }
        /* '[^\r\n\p{L}\p{N}]?\p{L}+' */
        if (!(cpt == '\r' || cpt == '\n' || IS_N(flags))) {
            if (IS_L(flags) || IS_L(w_flags(w, pos + 1))) {
                pos++;
                while (IS_L(w_flags(w, pos)))
                    pos++;
                w_emit(w, pos);
                continue;
            }
        }
        /* '\p{N}{1,max_digits}' */
        if (IS_N(flags)) {
            size_t ini = pos;
            while (IS_N(w_flags(w, pos))) {
                if (++pos - ini >= max_digits) {
                    w_emit(w, pos);
                    ini = pos;
                }
            }
            w_emit(w, pos);
            continue;
        }
        /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' (the flags test is on the code point
         * itself, not the one after the space, as in llama.cpp) */
        uint16_t f2 = cpt == ' ' ? w_flags(w, pos + 1) : flags;
        if (!(f2 & (CODI_UCD_WHITESPACE | CODI_UCD_LETTER | CODI_UCD_NUMBER)) &&
            flags != 0) {
            pos += cpt == ' ';
            while (IS_OTHER(w_flags(w, pos)))
                pos++;
            uint32_t c2 = w_cpt(w, pos);
            while (c2 == '\r' || c2 == '\n')
                c2 = w_cpt(w, ++pos);
            w_emit(w, pos);
            continue;
        }
        size_t nws = 0, last_rn = 0;
        while (IS_WS(w_flags(w, pos + nws))) {
            uint32_t c2 = w_cpt(w, pos + nws);
            if (c2 == '\r' || c2 == '\n')
                last_rn = pos + nws + 1;
            nws++;
        }
        if (last_rn > 0) { /* '\s*[\r\n]+' */
            pos = last_rn;
            w_emit(w, pos);
            continue;
        }
        if (nws > 1 && w_cpt(w, pos + nws) != OUT) { /* '\s+(?!\S)' */
            pos += nws - 1;
            w_emit(w, pos);
            continue;
        }
        if (nws > 0) { /* '\s+' */
            pos += nws;
            w_emit(w, pos);
            continue;
        }
        w_emit(w, ++pos);
    }
}

/* Class membership for the regex-run splits. Non-ASCII code points are
 * seen through their category only (whitespace wins), as llama.cpp's
 * "collapsed" std::regex fallback sees them. */
static bool in_class(enum codi_split_kind kind, uint32_t c) {
    if (kind == CODI_SPLIT_ASCII_TRIPLES)
        return c >= '0' && c <= '9';
    if (c < 128) {
        if (kind == CODI_SPLIT_PUNCT_RUNS)
            return c > ' ' && c < 127 && c != '`' &&
                   !(c >= '0' && c <= '9') &&
                   !((c | 0x20) >= 'a' && (c | 0x20) <= 'z');
        return c >= '0' && c <= '9';
    }
    uint16_t f = codi_unicode_flags(c);
    if (f & CODI_UCD_WHITESPACE)
        return false;
    f &= CODI_UCD_CATEGORIES;
    return kind == CODI_SPLIT_PUNCT_RUNS ? f == CODI_UCD_PUNCTUATION
                                         : f == CODI_UCD_NUMBER;
}

/* Regex-iterator splitting: each match is a word, and so is each stretch
 * between matches. */
static void split_class(walker *w, enum codi_split_kind kind) {
    size_t pos = w->ini;
    while (pos < w->end) {
        if (!in_class(kind, w->cpts[pos])) {
            pos++;
            continue;
        }
        size_t m = pos, e = pos + 1;
        if (kind == CODI_SPLIT_DIGITS || kind == CODI_SPLIT_PUNCT_RUNS) {
            while (e < w->end && in_class(kind, w->cpts[e]))
                e++;
        } else if (kind == CODI_SPLIT_ASCII_TRIPLES) {
            if (pos + 3 > w->end || !in_class(kind, w->cpts[pos + 1]) ||
                !in_class(kind, w->cpts[pos + 2])) {
                pos++;
                continue;
            }
            e = pos + 3;
        }
        w_emit(w, m); /* the stretch before the match */
        w_emit(w, e);
        pos = e;
    }
    w_emit(w, w->end);
}

size_t codi_unicode_split(enum codi_split_kind kind, const uint32_t *cpts,
                          const size_t *in, size_t n_in, size_t *out) {
    walker w = {.cpts = cpts, .out = out};
    size_t start = 0;
    for (size_t i = 0; i < n_in; i++) {
        w.ini = start;
        w.end = start + in[i];
        w.prev_end = start;
        start = w.end;
        switch (kind) {
        case CODI_SPLIT_GPT2: split_gpt2(&w); break;
        case CODI_SPLIT_LLAMA3: split_llama3(&w, 3); break;
        case CODI_SPLIT_QWEN2: split_llama3(&w, 1); break;
        default: split_class(&w, kind); break;
        }
    }
    return w.n_out;
}
