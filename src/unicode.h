/* Unicode helpers for the tokenizer: UTF-8 decoding that never fails (as
 * llama.cpp decodes), code point classes (\p{L}, \p{N}, whitespace, ...)
 * from the generated tables in unicode_data.h, and the hand-written
 * pre-tokenizer splits that stand in for the regexes of byte-level BPE
 * models (mirroring llama.cpp's unicode_regex_split_custom_* functions). */
#ifndef CODI_UNICODE_H
#define CODI_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Code point flags; category bits share llama.cpp's layout. */
enum {
    CODI_UCD_UNDEFINED = 0x0001,   /* Cn, unassigned */
    CODI_UCD_NUMBER = 0x0002,      /* \p{N} */
    CODI_UCD_LETTER = 0x0004,      /* \p{L} */
    CODI_UCD_SEPARATOR = 0x0008,   /* \p{Z} */
    CODI_UCD_MARK = 0x0010,        /* \p{M} */
    CODI_UCD_PUNCTUATION = 0x0020, /* \p{P} */
    CODI_UCD_SYMBOL = 0x0040,      /* \p{S} */
    CODI_UCD_CONTROL = 0x0080,     /* \p{C} other than Cn */
    CODI_UCD_CATEGORIES = 0x00FF,
    CODI_UCD_WHITESPACE = 0x0100,  /* \s (White_Space property) */
};

#define CODI_UNICODE_MAX 0x110000u
#define CODI_UNICODE_REPLACEMENT 0xFFFDu

/* Unicode version the tables were generated from. */
const char *codi_unicode_version(void);

/* Flags of a code point; CODI_UCD_UNDEFINED beyond U+10FFFF. */
uint16_t codi_unicode_flags(uint32_t cpt);
/* Simple lowercase mapping; the code point itself when it has none. */
uint32_t codi_unicode_tolower(uint32_t cpt);

/* Length of the UTF-8 sequence a lead byte announces (1 for continuation
 * and invalid bytes), as llama.cpp's unicode_len_utf8. */
size_t codi_utf8_len(uint8_t lead);

/* Decode one code point from s[0..n), n > 0; *used gets the bytes taken.
 * An invalid or truncated sequence decodes as U+FFFD taking one byte, as
 * llama.cpp does. Overlong forms and surrogates are accepted as llama.cpp
 * accepts them; 4-byte forms above U+10FFFF (llama.cpp throws on those
 * later) are treated as invalid. */
uint32_t codi_utf8_decode(const char *s, size_t n, size_t *used);
/* Decode all of s[0..n) into cpts (room for n entries); returns the count. */
size_t codi_utf8_decode_all(const char *s, size_t n, uint32_t *cpts);
/* Encode cpt (<= U+10FFFF) into out; returns the byte count (1..4). */
size_t codi_utf8_encode(uint32_t cpt, char out[4]);

/* Pre-tokenizer splits. Each refines a segmentation of cpts[0..n): words
 * in[0..n_in) are lengths in code points summing to n; the refined lengths
 * go to out (room for n entries, never more are needed) and the count is
 * returned. Words never straddle an input boundary. */
enum codi_split_kind {
    /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    CODI_SPLIT_GPT2,
    /* (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
     *  ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
    CODI_SPLIT_LLAMA3,
    /* as LLAMA3 with \p{N} instead of \p{N}{1,3} */
    CODI_SPLIT_QWEN2,
    /* \p{N}: every number code point alone */
    CODI_SPLIT_DIGIT,
    /* \p{N}+: runs of number code points */
    CODI_SPLIT_DIGITS,
    /* [\p{P}\$\+<=>\^~\|]+: runs of punctuation and those ASCII symbols */
    CODI_SPLIT_PUNCT_RUNS,
    /* [0-9][0-9][0-9]: ASCII digit triples, left to right */
    CODI_SPLIT_ASCII_TRIPLES,
};

size_t codi_unicode_split(enum codi_split_kind kind, const uint32_t *cpts,
                          const size_t *in, size_t n_in, size_t *out);

#endif
