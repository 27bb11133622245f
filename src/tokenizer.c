/* Tokenizer: llama.cpp's token ids from GGUF metadata.
 *
 * Two families:
 *  - byte-level BPE (tokenizer.ggml.model "gpt2"): text is split into words
 *    by the pre-tokenizer named in tokenizer.ggml.pre (hand-written regex
 *    equivalents in unicode.c), each word's UTF-8 bytes are mapped to GPT-2's
 *    printable code points, then merged by merge rank.
 *  - SentencePiece BPE (tokenizer.ggml.model "llama": Llama-2, Gemma):
 *    spaces become U+2581, adjacent pieces are merged by token score, and
 *    what is left unmerged falls back to <0xXX> byte tokens.
 * Before either, special-token text is cut out of the input (control tokens
 * only when parse_special; user-defined ones always), in llama.cpp's order:
 * longest token first.
 *
 * The load also reproduces llama.cpp's fix-ups that change ids or
 * attributes: tokens recognised by their text (EOT, FIM, EOG lists), control
 * tokens named "unused", and the defaults each model type gets. */
#include "tokenizer.h"

#include <string.h>

#include "common.h"
#include "unicode.h"

/* ------------------------------------------------------------ constants */

enum vocab_type { VOCAB_SPM, VOCAB_BPE };

/* GGUF tokenizer.ggml.token_type values */
enum {
    TT_UNDEFINED = 0,
    TT_NORMAL = 1,
    TT_UNKNOWN = 2,
    TT_CONTROL = 3,
    TT_USER_DEFINED = 4,
    TT_UNUSED = 5,
    TT_BYTE = 6,
};

/* Token attributes: llama.cpp's llama_token_attr bits, plus our EOG bit. */
enum {
    ATTR_UNKNOWN = 1 << 0,
    ATTR_UNUSED = 1 << 1,
    ATTR_NORMAL = 1 << 2,
    ATTR_CONTROL = 1 << 3,
    ATTR_USER_DEFINED = 1 << 4,
    ATTR_BYTE = 1 << 5,
    ATTR_LSTRIP = 1 << 7,
    ATTR_RSTRIP = 1 << 8,
    ATTR_EOG = 1 << 15,
};

#define MAX_SPLITS 4

/* A pre-tokenizer: the splits applied in order, as llama.cpp's regex list. */
typedef struct pre_def {
    const char *names; /* '|'-separated tokenizer.ggml.pre values */
    int n_splits;
    enum codi_split_kind splits[MAX_SPLITS];
    bool ignore_merges; /* a word that is a token is used whole */
    bool add_bos;       /* default of add_bos_token */
    bool no_bos;        /* BOS id defaults to none */
} pre_def;

static const pre_def PRE_DEFS[] = {
    {"default", 4,
     {CODI_SPLIT_PUNCT_RUNS, CODI_SPLIT_GPT2, CODI_SPLIT_DIGITS,
      CODI_SPLIT_ASCII_TRIPLES},
     false, false, false},
    {"gpt-2|phi-2|mpt|olmo|jais|exaone4|trillion|granite-docling|mellum|"
     "gigachat|a.x-4.0",
     1, {CODI_SPLIT_GPT2}, false, false, false},
    {"starcoder|refact|command-r|smollm|codeshell|exaone|minerva-7b|mellum2",
     2, {CODI_SPLIT_DIGIT, CODI_SPLIT_GPT2}, false, false, false},
    {"llama3|llama-v3|llama-bpe|falcon3|falcon-h1|pixtral|midm-2.0|lfm2|"
     "jina-v5-nano",
     1, {CODI_SPLIT_LLAMA3}, true, true, false},
    {"dbrx|smaug-bpe", 1, {CODI_SPLIT_LLAMA3}, false, false, false},
    {"chatglm-bpe", 1, {CODI_SPLIT_LLAMA3}, false, false, true},
    {"glm4|glm5", 1, {CODI_SPLIT_LLAMA3}, true, false, true},
    {"qwen2|deepseek-r1-qwen|kormo|f2llmv2|stablelm2|hunyuan|solar-open", 1,
     {CODI_SPLIT_QWEN2}, false, false, false},
};

/* Texts llama.cpp recognises (it matches on text because converters did not
 * always record these ids). */
static const char *const EOT_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
    "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
    "<end_of_utterance>", NULL};
static const char *const EOM_TEXTS[] = {"<|eom_id|>", NULL};
static const char *const FIM_PRE_TEXTS[] = {
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>",
    "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "begin\xEF\xBD\x9C>", "<PRE>",
    "\xE2\x96\x81<PRE>", "<|code_prefix|>", "<|prefix|>", NULL};
static const char *const FIM_SUF_TEXTS[] = {
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>",
    "<\xEF\xBD\x9C" "fim\xE2\x96\x81hole\xEF\xBD\x9C>", "<SUF>",
    "\xE2\x96\x81<SUF>", "<|code_suffix|>", "<|suffix|>", NULL};
static const char *const FIM_MID_TEXTS[] = {
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>",
    "<\xEF\xBD\x9C" "fim\xE2\x96\x81" "end\xEF\xBD\x9C>", "<MID>",
    "\xE2\x96\x81<MID>", "<|code_middle|>", "<|middle|>", NULL};
static const char *const FIM_PAD_TEXTS[] = {
    "<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]", NULL};
static const char *const FIM_REP_TEXTS[] = {
    "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
    NULL};
static const char *const FIM_SEP_TEXTS[] = {"<|file_sep|>", NULL};
static const char *const EOG_TEXTS[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>",
    "<|flush|>", "<|calls|>", "<end_of_turn>", "<|endoftext|>", "</s>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>",
    "[e~[", NULL};

#define SPACE_MARK "\xE2\x96\x81" /* U+2581, SentencePiece's space */

/* ------------------------------------------------------------- hashing */

static uint64_t hash_bytes(uint64_t h, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        h ^= (uint8_t)s[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

#define HASH_SEED 0xCBF29CE484222325ull

static uint32_t table_size_for(size_t n) {
    uint32_t cap = 16;
    while (cap < 2 * n)
        cap <<= 1;
    return cap;
}

/* ---------------------------------------------------------------- vocab */

/* GPT-2 byte encoding of a byte: its code point's UTF-8 (1 or 2 bytes). */
typedef struct byte_enc {
    char s[2];
    uint8_t n;
} byte_enc;

#define BYTE_CPT_MAX 324 /* byte images are below U+0144 */

typedef struct trie_node {
    int32_t child;   /* first child, -1 when none */
    int32_t sibling; /* next sibling, -1 when none */
    int32_t special; /* index into specials ending here, -1 when none */
    uint8_t byte;
} trie_node;

struct codi_vocab {
    enum vocab_type type;
    const pre_def *pre; /* BPE only */
    int32_t n_tokens;

    char *text;         /* token texts, concatenated */
    uint32_t *text_off; /* [n_tokens + 1] */
    float *scores;      /* [n_tokens] */
    uint16_t *attr;     /* [n_tokens] */
    char *piece;        /* token_to_piece(special = true) of every token */
    uint32_t *piece_off;/* [n_tokens + 1] */

    int32_t *tok_table; /* open addressing: token id or -1 */
    uint32_t tok_mask;

    /* merges "first second", kept as text with the split position */
    char *merge_text;
    uint32_t *merge_off;   /* [n_merges + 1] */
    uint32_t *merge_split; /* length of "first" */
    int32_t n_merges;
    int32_t *merge_table;  /* merge index (= rank) or -1 */
    uint32_t merge_mask;

    int32_t bos, eos, eot, eom, unk;
    bool add_bos, add_eos, add_space_prefix;

    int32_t byte_token[256]; /* SPM byte fallback; BPE one-byte texts */
    byte_enc byte_enc[256];  /* byte-level BPE: byte -> code point text */
    int16_t cpt_byte[BYTE_CPT_MAX]; /* and back; -1 for other code points */

    /* special tokens (CONTROL | USER_DEFINED | UNKNOWN), longest first */
    int32_t *specials;
    int32_t n_specials;
    trie_node *trie; /* node 0 is the root */
    int32_t n_trie;
    bool trie_first[256]; /* some special token starts with this byte */
};

static const char *tok_text(const codi_vocab *v, int32_t id, size_t *len) {
    *len = v->text_off[id + 1] - v->text_off[id];
    return v->text + v->text_off[id];
}

static int32_t text_to_token(const codi_vocab *v, const char *s, size_t n) {
    uint32_t i = (uint32_t)hash_bytes(HASH_SEED, s, n) & v->tok_mask;
    for (;;) {
        int32_t id = v->tok_table[i];
        if (id < 0)
            return -1;
        size_t len;
        const char *t = tok_text(v, id, &len);
        if (len == n && memcmp(t, s, n) == 0)
            return id;
        i = (i + 1) & v->tok_mask;
    }
}

static int32_t cstr_to_token(const codi_vocab *v, const char *s) {
    return text_to_token(v, s, strlen(s));
}

static uint64_t merge_hash(const char *a, size_t na, const char *b,
                           size_t nb) {
    uint64_t h = hash_bytes(HASH_SEED, a, na);
    h = hash_bytes(h, " ", 1);
    return hash_bytes(h, b, nb);
}

/* Rank of merging a and b, -1 when they do not merge. */
static int32_t merge_rank(const codi_vocab *v, const char *a, size_t na,
                          const char *b, size_t nb) {
    uint32_t i = (uint32_t)merge_hash(a, na, b, nb) & v->merge_mask;
    for (;;) {
        int32_t m = v->merge_table[i];
        if (m < 0)
            return -1;
        const char *t = v->merge_text + v->merge_off[m];
        uint32_t split = v->merge_split[m];
        uint32_t len = v->merge_off[m + 1] - v->merge_off[m];
        if (split == na && len == na + 1 + nb && memcmp(t, a, na) == 0 &&
            memcmp(t + na + 1, b, nb) == 0)
            return m;
        i = (i + 1) & v->merge_mask;
    }
}

void codi_vocab_free(codi_vocab *v) {
    if (!v)
        return;
    free(v->text);
    free(v->text_off);
    free(v->scores);
    free(v->attr);
    free(v->piece);
    free(v->piece_off);
    free(v->tok_table);
    free(v->merge_text);
    free(v->merge_off);
    free(v->merge_split);
    free(v->merge_table);
    free(v->specials);
    free(v->trie);
    free(v);
}

int32_t codi_vocab_n_tokens(const codi_vocab *v) { return v->n_tokens; }
int32_t codi_vocab_bos(const codi_vocab *v) { return v->bos; }
int32_t codi_vocab_eos(const codi_vocab *v) { return v->eos; }
bool codi_vocab_add_bos(const codi_vocab *v) { return v->add_bos; }
bool codi_vocab_add_eos(const codi_vocab *v) { return v->add_eos; }

bool codi_vocab_is_eog(const codi_vocab *v, int32_t token) {
    return token >= 0 && token < v->n_tokens &&
           (v->attr[token] & ATTR_EOG) != 0;
}

bool codi_vocab_is_control(const codi_vocab *v, int32_t token) {
    return token >= 0 && token < v->n_tokens &&
           (v->attr[token] & ATTR_CONTROL) != 0;
}

/* ----------------------------------------------------------------- load */

static const pre_def *find_pre(const char *name) {
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof PRE_DEFS / sizeof PRE_DEFS[0]; i++) {
        const char *p = PRE_DEFS[i].names;
        while (*p) {
            const char *bar = strchr(p, '|');
            size_t len = bar ? (size_t)(bar - p) : strlen(p);
            if (len == n && memcmp(p, name, n) == 0)
                return &PRE_DEFS[i];
            p += len + (bar != NULL);
        }
    }
    return NULL;
}

/* Array key with elements of type t1 or t2: 0 and *kv (NULL when absent),
 * or CODI_EFORMAT when the key holds something else. */
static int find_array(const codi_gguf *g, const char *key, int t1, int t2,
                      const codi_gguf_kv **kv) {
    *kv = codi_gguf_find(g, key);
    if (!*kv)
        return 0;
    if ((*kv)->type != CODI_GGUF_ARRAY ||
        ((*kv)->arr_type != t1 && (*kv)->arr_type != t2))
        return CODI_EFORMAT;
    if ((*kv)->arr_type == CODI_GGUF_STRING && (*kv)->arr_n &&
        !(*kv)->arr_str)
        return CODI_EFORMAT;
    return 0;
}

/* Optional token id key: keeps *id when absent. */
static int read_id(const codi_gguf *g, const char *key, int32_t n_tokens,
                   int32_t *id, char *err, size_t errlen) {
    int32_t val;
    int rc = codi_gguf_get_i32(g, key, &val);
    if (rc == CODI_ENOTFOUND)
        return 0;
    if (rc != 0)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "%s: not an integer", key);
    if (val < 0 || val >= n_tokens)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "%s = %d is out of range (%d tokens)", key,
                           (int)val, (int)n_tokens);
    *id = val;
    return 0;
}

static int read_flag(const codi_gguf *g, const char *key, bool *flag,
                     char *err, size_t errlen) {
    int rc = codi_gguf_get_bool(g, key, flag);
    if (rc == CODI_ENOTFOUND)
        return 0;
    if (rc != 0)
        return codi_errorf(err, errlen, CODI_EFORMAT, "%s: not a bool", key);
    return 0;
}

static int load_tokens(codi_vocab *v, const codi_gguf *g, char *err,
                       size_t errlen) {
    const codi_gguf_kv *toks, *scores, *types;
    if (find_array(g, "tokenizer.ggml.tokens", CODI_GGUF_STRING,
                   CODI_GGUF_STRING, &toks))
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.tokens is not a string array");
    if (!toks)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.tokens is missing");
    if (toks->arr_n == 0 || toks->arr_n > INT32_MAX / 2)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.tokens has %llu entries",
                           (unsigned long long)toks->arr_n);
    int32_t n = (int32_t)toks->arr_n;
    v->n_tokens = n;

    if (find_array(g, "tokenizer.ggml.scores", CODI_GGUF_FLOAT32,
                   CODI_GGUF_INT32, &scores))
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.scores is not a float32/int32 "
                           "array");
    if (scores && scores->arr_n != (uint64_t)n)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.scores has %llu entries, tokens "
                           "%d",
                           (unsigned long long)scores->arr_n, (int)n);
    if (find_array(g, "tokenizer.ggml.token_type", CODI_GGUF_INT32,
                   CODI_GGUF_INT32, &types))
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.token_type is not an int32 array");
    if (types && types->arr_n != (uint64_t)n)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.token_type has %llu entries, "
                           "tokens %d",
                           (unsigned long long)types->arr_n, (int)n);

    /* Texts; an empty one becomes "[EMPTY_<id>]" as in llama.cpp. */
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += toks->arr_str[i].len ? toks->arr_str[i].len : 24;
    if (total > UINT32_MAX - 1)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.tokens: %llu bytes of text",
                           (unsigned long long)total);
    v->text = malloc(total + 1);
    v->text_off = malloc(((size_t)n + 1) * sizeof *v->text_off);
    v->scores = calloc((size_t)n, sizeof *v->scores);
    v->attr = calloc((size_t)n, sizeof *v->attr);
    v->tok_mask = table_size_for((size_t)n) - 1;
    v->tok_table = malloc(((size_t)v->tok_mask + 1) * sizeof *v->tok_table);
    if (!v->text || !v->text_off || !v->scores || !v->attr || !v->tok_table)
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "out of memory loading %d tokens", (int)n);
    memset(v->tok_table, 0xFF,
           ((size_t)v->tok_mask + 1) * sizeof *v->tok_table);

    uint32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        const codi_gguf_str *s = &toks->arr_str[i];
        v->text_off[i] = off;
        if (s->len) {
            memcpy(v->text + off, s->ptr, s->len);
            off += (uint32_t)s->len;
        } else {
            off += (uint32_t)snprintf(v->text + off, 25, "[EMPTY_%d]", (int)i);
        }
    }
    v->text_off[n] = off;

    for (int32_t i = 0; i < n; i++) {
        size_t len;
        const char *t = tok_text(v, i, &len);
        uint32_t h = (uint32_t)hash_bytes(HASH_SEED, t, len) & v->tok_mask;
        for (;;) {
            int32_t id = v->tok_table[h];
            if (id < 0) {
                v->tok_table[h] = i;
                break;
            }
            size_t l2;
            const char *t2 = tok_text(v, id, &l2);
            if (l2 == len && memcmp(t, t2, len) == 0)
                return codi_errorf(err, errlen, CODI_EFORMAT,
                                   "tokenizer.ggml.tokens: ids %d and %d "
                                   "have the same text",
                                   (int)id, (int)i);
            h = (h + 1) & v->tok_mask;
        }
        if (scores)
            v->scores[i] = (float)codi_gguf_arr_f64(scores, (uint64_t)i);
        uint16_t a = ATTR_NORMAL;
        if (types) {
            switch (codi_gguf_arr_i64(types, (uint64_t)i)) {
            case TT_UNKNOWN: a = ATTR_UNKNOWN; break;
            case TT_UNUSED: a = ATTR_UNUSED; break;
            case TT_NORMAL: a = ATTR_NORMAL; break;
            case TT_CONTROL: a = ATTR_CONTROL; break;
            case TT_USER_DEFINED: a = ATTR_USER_DEFINED; break;
            case TT_BYTE: a = ATTR_BYTE; break;
            default: a = 0; break; /* undefined */
            }
        }
        v->attr[i] = a;
    }
    return 0;
}

static int load_merges(codi_vocab *v, const codi_gguf *g, char *err,
                       size_t errlen) {
    const codi_gguf_kv *kv;
    if (find_array(g, "tokenizer.ggml.merges", CODI_GGUF_STRING,
                   CODI_GGUF_STRING, &kv))
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.merges is not a string array");
    if (!kv)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.merges is missing");
    if (kv->arr_n > INT32_MAX / 2)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.merges has %llu entries",
                           (unsigned long long)kv->arr_n);
    int32_t n = (int32_t)kv->arr_n;
    uint64_t total = 0;
    for (int32_t i = 0; i < n; i++)
        total += kv->arr_str[i].len;
    if (total > UINT32_MAX - 1)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "tokenizer.ggml.merges: %llu bytes of text",
                           (unsigned long long)total);
    v->n_merges = n;
    v->merge_text = malloc(total + 1);
    v->merge_off = malloc(((size_t)n + 1) * sizeof *v->merge_off);
    v->merge_split = malloc(((size_t)n + 1) * sizeof *v->merge_split);
    v->merge_mask = table_size_for((size_t)n) - 1;
    v->merge_table =
        malloc(((size_t)v->merge_mask + 1) * sizeof *v->merge_table);
    if (!v->merge_text || !v->merge_off || !v->merge_split ||
        !v->merge_table)
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "out of memory loading %d merges", (int)n);
    memset(v->merge_table, 0xFF,
           ((size_t)v->merge_mask + 1) * sizeof *v->merge_table);

    uint32_t off = 0;
    for (int32_t i = 0; i < n; i++) {
        const codi_gguf_str *s = &kv->arr_str[i];
        /* "first second": split at the first space after the first byte,
         * as llama.cpp does, so a first part may itself start with ' '. */
        const char *sp =
            s->len > 1 ? memchr(s->ptr + 1, ' ', s->len - 1) : NULL;
        if (!sp || (uint64_t)(sp - s->ptr) + 1 >= s->len)
            return codi_errorf(err, errlen, CODI_EFORMAT,
                               "tokenizer.ggml.merges[%d] is not \"first "
                               "second\"",
                               (int)i);
        v->merge_off[i] = off;
        v->merge_split[i] = (uint32_t)(sp - s->ptr);
        memcpy(v->merge_text + off, s->ptr, s->len);
        off += (uint32_t)s->len;
    }
    v->merge_off[n] = off;

    for (int32_t i = 0; i < n; i++) {
        const char *t = v->merge_text + v->merge_off[i];
        size_t na = v->merge_split[i];
        size_t nb = v->merge_off[i + 1] - v->merge_off[i] - na - 1;
        if (merge_rank(v, t, na, t + na + 1, nb) >= 0)
            continue; /* a repeated pair keeps its first (best) rank */
        uint32_t h = (uint32_t)merge_hash(t, na, t + na + 1, nb) &
                     v->merge_mask;
        while (v->merge_table[h] >= 0)
            h = (h + 1) & v->merge_mask;
        v->merge_table[h] = i;
    }
    return 0;
}

/* First token (by id) whose text is in texts, or -1. */
static int32_t find_by_texts(const codi_vocab *v, const char *const *texts) {
    int32_t best = -1;
    for (; *texts; texts++) {
        int32_t id = cstr_to_token(v, *texts);
        if (id >= 0 && (best < 0 || id < best))
            best = id;
    }
    return best;
}

/* FIM ids (only pad, rep and sep matter: they end generation). */
enum { FIM_PRE, FIM_SUF, FIM_MID, FIM_PAD, FIM_REP, FIM_SEP, FIM_N };

/* llama.cpp's text-based fix-ups of special tokens and the EOG set. A token
 * found by its text (only for roles metadata left unset) becomes CONTROL. */
static void detect_specials(codi_vocab *v, int32_t fim[FIM_N]) {
    struct {
        int32_t *id;
        const char *const *texts;
    } detect[] = {
        {&v->eot, EOT_TEXTS},          {&v->eom, EOM_TEXTS},
        {&fim[FIM_PRE], FIM_PRE_TEXTS}, {&fim[FIM_SUF], FIM_SUF_TEXTS},
        {&fim[FIM_MID], FIM_MID_TEXTS}, {&fim[FIM_PAD], FIM_PAD_TEXTS},
        {&fim[FIM_REP], FIM_REP_TEXTS}, {&fim[FIM_SEP], FIM_SEP_TEXTS},
    };
    for (size_t k = 0; k < sizeof detect / sizeof detect[0]; k++) {
        if (*detect[k].id >= 0)
            continue;
        int32_t id = find_by_texts(v, detect[k].texts);
        if (id >= 0) {
            *detect[k].id = id;
            v->attr[id] |= ATTR_CONTROL;
        }
    }

    for (int32_t i = 0; i < v->n_tokens; i++) {
        if (!(v->attr[i] & ATTR_CONTROL) || (v->attr[i] & ATTR_UNUSED))
            continue;
        size_t len;
        const char *t = tok_text(v, i, &len);
        for (size_t j = 0; j + 6 <= len; j++)
            if (memcmp(t + j, "unused", 6) == 0) {
                v->attr[i] |= ATTR_UNUSED;
                break;
            }
    }

    for (int k = FIM_PAD; k <= FIM_SEP; k++)
        if (fim[k] >= 0)
            v->attr[fim[k]] |= ATTR_EOG;
    for (const char *const *t = EOG_TEXTS; *t; t++) {
        int32_t id = cstr_to_token(v, *t);
        if (id >= 0)
            v->attr[id] |= ATTR_EOG | ATTR_CONTROL;
    }
    /* gpt-oss: always rendered */
    static const char *const user_texts[] = {"<|channel|>", "<|message|>",
                                             "<|start|>", "<|constrain|>",
                                             NULL};
    for (const char *const *t = user_texts; *t; t++) {
        int32_t id = cstr_to_token(v, *t);
        if (id >= 0)
            v->attr[id] = ATTR_USER_DEFINED | (v->attr[id] & ATTR_EOG);
    }
    if (v->eos >= 0)
        v->attr[v->eos] |= ATTR_EOG;
    if (v->eot >= 0)
        v->attr[v->eot] |= ATTR_EOG;
    if (v->eom >= 0)
        v->attr[v->eom] |= ATTR_EOG;

    /* o200k_harmony / solar-open: <|end|> is not EOG there. */
    int32_t ret = cstr_to_token(v, "<|return|>");
    int32_t call = cstr_to_token(v, "<|call|>");
    int32_t calls = cstr_to_token(v, "<|calls|>");
    int32_t flush = cstr_to_token(v, "<|flush|>");
    int32_t end = cstr_to_token(v, "<|end|>");
#define EOG_ID(id) ((id) >= 0 && (v->attr[id] & ATTR_EOG))
    bool has_call = EOG_ID(call) || EOG_ID(calls);
    if (EOG_ID(end) && ((EOG_ID(ret) && has_call) ||
                        (has_call && EOG_ID(flush))))
        v->attr[end] = ATTR_USER_DEFINED;
    /* gemma4 / plamo: </s> is a normal token there. */
    int32_t s_end = cstr_to_token(v, "</s>");
    int32_t tool = cstr_to_token(v, "<|tool_response>");
    int32_t plamo = cstr_to_token(v, "<|plamo:eos|>");
    if (EOG_ID(s_end) && (EOG_ID(tool) || EOG_ID(plamo)))
        v->attr[s_end] = ATTR_NORMAL;
#undef EOG_ID
}

/* Bytes of GPT-2's byte-to-code-point map: printable Latin-1 maps to
 * itself, the rest to U+0100.. in byte order. */
static uint32_t byte_to_cpt(uint8_t b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE)
        return b;
    uint32_t n = 0;
    for (uint32_t c = 0; c < b; c++)
        if (!((c >= 0x21 && c <= 0x7E) || (c >= 0xA1 && c <= 0xAC) ||
              c >= 0xAE))
            n++;
    return 256 + n;
}

static void build_byte_maps(codi_vocab *v) {
    for (int i = 0; i < BYTE_CPT_MAX; i++)
        v->cpt_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        uint32_t cpt = byte_to_cpt((uint8_t)b);
        char tmp[4];
        size_t n = codi_utf8_encode(cpt, tmp);
        v->byte_enc[b].s[0] = tmp[0];
        v->byte_enc[b].s[1] = n > 1 ? tmp[1] : 0;
        v->byte_enc[b].n = (uint8_t)n;
        v->cpt_byte[cpt] = (int16_t)b;
    }
}

/* Inverse of byte_to_cpt, -1 when cpt is no byte's image. */
static int cpt_to_byte(const codi_vocab *v, uint32_t cpt) {
    return cpt < BYTE_CPT_MAX ? v->cpt_byte[cpt] : -1;
}

/* Growable byte buffer. */
typedef struct bytes {
    char *p;
    size_t n, cap;
    bool oom;
} bytes;

static void bytes_put(bytes *b, const void *s, size_t n) {
    if (b->oom)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->n + n)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The byte of a BYTE token: its text's characters 3..4 read as hex
 * ("<0x41>"), stopping at the first non-hex one as strtol does. */
static uint8_t byte_of_token(const char *t, size_t len) {
    int val = 0;
    for (size_t i = 3; i < 5 && i < len; i++) {
        int d = hexval(t[i]);
        if (d < 0)
            break;
        val = val * 16 + d;
    }
    return (uint8_t)val;
}

/* Most bytes the piece of a token of len bytes takes (see make_piece). */
#define PIECE_CAP(len) (32 * (size_t)(len) + 1024)

/* Piece of token id as llama.cpp's token_to_piece(special = true). */
static void make_piece(const codi_vocab *v, int32_t id, bytes *out) {
    size_t len;
    const char *t = tok_text(v, id, &len);
    uint16_t a = v->attr[id];
    if (a & (ATTR_UNKNOWN | ATTR_CONTROL | ATTR_USER_DEFINED)) {
        bytes_put(out, t, len);
    } else if (a & ATTR_NORMAL) {
        if (v->type == VOCAB_SPM) {
            for (size_t i = 0; i < len;) {
                if (len - i >= 3 && memcmp(t + i, SPACE_MARK, 3) == 0) {
                    bytes_put(out, " ", 1);
                    i += 3;
                } else {
                    bytes_put(out, t + i, 1);
                    i++;
                }
            }
            return;
        }
        /* Each code point outside the map costs a marker holding the whole
         * text (llama.cpp's output), so a long token of such code points
         * would be quadratic in the file: a token's piece stops growing at
         * PIECE_CAP(len) bytes, far above anything a real vocabulary needs. */
        const size_t start = out->n;
        for (size_t i = 0; i < len;) {
            size_t used;
            uint32_t cpt = codi_utf8_decode(t + i, len - i, &used);
            i += used;
            int b = cpt_to_byte(v, cpt);
            if (b >= 0) {
                char c = (char)b;
                bytes_put(out, &c, 1);
                continue;
            }
            if (out->n - start + 21 + len > PIECE_CAP(len))
                break;
            /* llama.cpp's marker for a code point outside the map */
            char enc[4], hex[16];
            size_t ne = codi_utf8_encode(cpt, enc);
            bytes_put(out, "[UNK_BYTE_0x", 12);
            for (size_t k = 0; k < ne; k++) {
                snprintf(hex, sizeof hex, "%02x", (unsigned)(uint8_t)enc[k]);
                bytes_put(out, hex, 2);
            }
            bytes_put(out, t, len);
            bytes_put(out, "]", 1);
        }
    } else if (a & ATTR_BYTE) {
        char c = (char)byte_of_token(t, len);
        bytes_put(out, &c, 1);
    }
    /* UNUSED-only and undefined tokens render as nothing */
}

static int build_pieces(codi_vocab *v, char *err, size_t errlen) {
    bytes b = {0};
    v->piece_off = malloc(((size_t)v->n_tokens + 1) * sizeof *v->piece_off);
    if (!v->piece_off)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    for (int32_t i = 0; i < v->n_tokens; i++) {
        v->piece_off[i] = (uint32_t)b.n;
        make_piece(v, i, &b);
        if (b.n > UINT32_MAX - 1)
            b.oom = true;
        if (b.oom)
            break;
    }
    if (b.oom) {
        free(b.p);
        return codi_errorf(err, errlen, CODI_ENOMEM,
                           "out of memory building token pieces");
    }
    v->piece_off[v->n_tokens] = (uint32_t)b.n;
    v->piece = b.p ? b.p : malloc(1);
    if (!v->piece)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    return 0;
}

typedef struct special_key {
    uint32_t len;
    int32_t id;
} special_key;

/* Longest first; llama.cpp's sort is unstable on ties, ours takes ids in
 * order. */
static int cmp_special(const void *a, const void *b) {
    const special_key *x = a, *y = b;
    if (x->len != y->len)
        return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

static int build_specials(codi_vocab *v, char *err, size_t errlen) {
    int32_t n = 0;
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN))
            n++;
    v->specials = malloc(((size_t)n + 1) * sizeof *v->specials);
    special_key *keys = malloc(((size_t)n + 1) * sizeof *keys);
    if (!v->specials || !keys) {
        free(keys);
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    }
    n = 0;
    size_t total = 0;
    for (int32_t i = 0; i < v->n_tokens; i++)
        if (v->attr[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)) {
            keys[n].len = v->text_off[i + 1] - v->text_off[i];
            keys[n++].id = i;
            total += v->text_off[i + 1] - v->text_off[i];
        }
    v->n_specials = n;
    qsort(keys, (size_t)n, sizeof *keys, cmp_special);
    for (int32_t k = 0; k < n; k++)
        v->specials[k] = keys[k].id;
    free(keys);

    if (total > INT32_MAX - 1)
        return codi_errorf(err, errlen, CODI_EFORMAT,
                           "special tokens too long");
    v->trie = malloc((total + 1) * sizeof *v->trie);
    if (!v->trie)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    v->trie[0] = (trie_node){-1, -1, -1, 0};
    v->n_trie = 1;
    for (int32_t s = 0; s < n; s++) {
        size_t len;
        const char *t = tok_text(v, v->specials[s], &len);
        int32_t node = 0;
        v->trie_first[(uint8_t)t[0]] = true;
        for (size_t k = 0; k < len; k++) {
            int32_t c = v->trie[node].child;
            while (c >= 0 && v->trie[c].byte != (uint8_t)t[k])
                c = v->trie[c].sibling;
            if (c < 0) {
                c = v->n_trie++;
                v->trie[c] = (trie_node){-1, v->trie[node].child, -1,
                                         (uint8_t)t[k]};
                v->trie[node].child = c;
            }
            node = c;
        }
        v->trie[node].special = s;
    }
    return 0;
}

static bool contains_ci(const char *hay, const char *needle) {
    size_t n = strlen(needle);
    for (; *hay; hay++) {
        size_t k = 0;
        while (k < n && hay[k] &&
               (hay[k] | (hay[k] >= 'A' && hay[k] <= 'Z' ? 0x20 : 0)) ==
                   needle[k])
            k++;
        if (k == n)
            return true;
    }
    return false;
}

int codi_vocab_load(const codi_gguf *g, codi_vocab **out, char *err,
                    size_t errlen) {
    *out = NULL;
    codi_vocab *v = calloc(1, sizeof *v);
    if (!v)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    char *model = NULL, *pre = NULL, *name = NULL;
    int rc = codi_gguf_get_str(g, "tokenizer.ggml.model", &model);
    if (rc == CODI_ENOTFOUND) {
        rc = codi_errorf(err, errlen, CODI_EFORMAT,
                         "tokenizer.ggml.model is missing");
        goto fail;
    }
    if (rc) {
        rc = codi_errorf(err, errlen, rc == CODI_ENOMEM ? rc : CODI_EFORMAT,
                         "tokenizer.ggml.model is not a string");
        goto fail;
    }
    bool no_bos = false;
    if (strcmp(model, "llama") == 0) {
        v->type = VOCAB_SPM;
        v->bos = 1;
        v->eos = 2;
        v->unk = 0;
        v->add_space_prefix = true;
        v->add_bos = true;
    } else if (strcmp(model, "gpt2") == 0) {
        v->type = VOCAB_BPE;
        v->bos = 11;
        v->eos = 11;
        v->unk = -1;
        rc = codi_gguf_get_str(g, "tokenizer.ggml.pre", &pre);
        if (rc && rc != CODI_ENOTFOUND) {
            rc = codi_errorf(err, errlen, CODI_EFORMAT,
                             "tokenizer.ggml.pre is not a string");
            goto fail;
        }
        /* llama.cpp falls back to "default" (with a warning) when absent */
        v->pre = find_pre(pre && *pre ? pre : "default");
        if (!v->pre) {
            rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                             "unknown pre-tokenizer type: '%s'", pre);
            goto fail;
        }
        v->add_bos = v->pre->add_bos;
        no_bos = v->pre->no_bos;
    } else {
        rc = codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                         "tokenizer model '%s' is not supported (only "
                         "'gpt2' and 'llama')",
                         model);
        goto fail;
    }
    v->eot = v->eom = -1;

    if ((rc = read_flag(g, "tokenizer.ggml.add_space_prefix",
                        &v->add_space_prefix, err, errlen)))
        goto fail;
    if ((rc = load_tokens(v, g, err, errlen)))
        goto fail;
    if (v->type == VOCAB_BPE && (rc = load_merges(v, g, err, errlen)))
        goto fail;

    /* defaults that fall outside the vocabulary mean "none" */
    if (v->bos >= v->n_tokens || no_bos)
        v->bos = -1;
    if (v->eos >= v->n_tokens)
        v->eos = -1;
    if (v->unk >= v->n_tokens)
        v->unk = -1;
    int32_t fim[FIM_N] = {-1, -1, -1, -1, -1, -1};
    int32_t unused_id = -1;
    struct {
        const char *key;
        int32_t *id;
    } ids[] = {
        {"tokenizer.ggml.bos_token_id", &v->bos},
        {"tokenizer.ggml.eos_token_id", &v->eos},
        {"tokenizer.ggml.eot_token_id", &v->eot},
        {"tokenizer.ggml.eom_token_id", &v->eom},
        {"tokenizer.ggml.unknown_token_id", &v->unk},
        {"tokenizer.ggml.seperator_token_id", &unused_id},
        {"tokenizer.ggml.padding_token_id", &unused_id},
        {"tokenizer.ggml.fim_pre_token_id", &fim[FIM_PRE]},
        {"tokenizer.ggml.fim_suf_token_id", &fim[FIM_SUF]},
        {"tokenizer.ggml.fim_mid_token_id", &fim[FIM_MID]},
        {"tokenizer.ggml.fim_pad_token_id", &fim[FIM_PAD]},
        {"tokenizer.ggml.fim_rep_token_id", &fim[FIM_REP]},
        {"tokenizer.ggml.fim_sep_token_id", &fim[FIM_SEP]},
        {"tokenizer.ggml.prefix_token_id", &fim[FIM_PRE]},
        {"tokenizer.ggml.suffix_token_id", &fim[FIM_SUF]},
        {"tokenizer.ggml.middle_token_id", &fim[FIM_MID]},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        if ((rc = read_id(g, ids[i].key, v->n_tokens, ids[i].id, err,
                          errlen)))
            goto fail;
    if ((rc = read_flag(g, "tokenizer.ggml.add_bos_token", &v->add_bos, err,
                        errlen)) ||
        (rc = read_flag(g, "tokenizer.ggml.add_eos_token", &v->add_eos, err,
                        errlen)))
        goto fail;
    if (v->add_bos && v->bos < 0) {
        rc = codi_errorf(err, errlen, CODI_EFORMAT,
                         "add_bos_token is set but there is no BOS token");
        goto fail;
    }
    if (v->add_eos && v->eos < 0) {
        rc = codi_errorf(err, errlen, CODI_EFORMAT,
                         "add_eos_token is set but there is no EOS token");
        goto fail;
    }

    detect_specials(v, fim);
    build_byte_maps(v);
    if ((rc = build_pieces(v, err, errlen)) ||
        (rc = build_specials(v, err, errlen)))
        goto fail;

    /* Phi-3: special tokens eat the whitespace after them. */
    if (codi_gguf_get_str(g, "general.name", &name) == 0 &&
        (contains_ci(name, "phi-3") || contains_ci(name, "phi3"))) {
        for (int32_t s = 0; s < v->n_specials; s++)
            v->attr[v->specials[s]] |= ATTR_RSTRIP;
        int32_t id = cstr_to_token(v, "</s>");
        if (id >= 0)
            v->attr[id] |= ATTR_RSTRIP;
        static const char *const keep[] = {"<unk>", "<s>", "<|endoftext|>"};
        for (int k = 0; k < 3; k++)
            if ((id = cstr_to_token(v, keep[k])) >= 0)
                v->attr[id] &= (uint16_t)~ATTR_RSTRIP;
    }

    for (int b = 0; b < 256; b++) {
        char c = (char)b;
        if (v->type == VOCAB_SPM) {
            char hex[8];
            snprintf(hex, sizeof hex, "<0x%02X>", b);
            int32_t id = cstr_to_token(v, hex);
            v->byte_token[b] = id >= 0 ? id : text_to_token(v, &c, 1);
        } else {
            v->byte_token[b] = text_to_token(v, &c, 1);
        }
    }

    free(model);
    free(pre);
    free(name);
    *out = v;
    return 0;

fail:
    /* Names quoted from the file may hold any byte: one printable line. */
    for (char *p = errlen ? err : NULL; p && *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    free(model);
    free(pre);
    free(name);
    codi_vocab_free(v);
    return rc;
}

/* ----------------------------------------------------------- tokenizing */

/* Growable token list. */
typedef struct toks {
    int32_t *p;
    size_t n, cap;
    bool oom;
} toks;

static void toks_put(toks *t, int32_t id) {
    if (t->oom)
        return;
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 256;
        int32_t *p = realloc(t->p, cap * sizeof *p);
        if (!p) {
            t->oom = true;
            return;
        }
        t->p = p;
        t->cap = cap;
    }
    t->p[t->n++] = id;
}

/* A piece of the input: raw text (token < 0) or a special token. */
typedef struct frag {
    size_t off, len;
    int32_t token;
} frag;

typedef struct frags {
    frag *p;
    size_t n, cap;
    bool oom;
} frags;

static void frags_put(frags *f, size_t off, size_t len, int32_t token) {
    if (f->oom)
        return;
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        frag *p = realloc(f->p, cap * sizeof *p);
        if (!p) {
            f->oom = true;
            return;
        }
        f->p = p;
        f->cap = cap;
    }
    f->p[f->n++] = (frag){off, len, token};
}

static bool c_isspace(char c) {
    return c == ' ' || (c >= '\t' && c <= '\r');
}

static bool special_allowed(const codi_vocab *v, int32_t id,
                            bool parse_special) {
    return parse_special ||
           !(v->attr[id] & (ATTR_CONTROL | ATTR_UNKNOWN));
}

/* Cut special tokens out of text, as llama.cpp's tokenizer_st_partition:
 * for each special token, longest first, split every raw fragment at each
 * of its occurrences. Only tokens that occur in the text matter, so they
 * are found first with one pass of the trie. */
static int partition(const codi_vocab *v, const char *text, size_t len,
                     bool parse_special, frags *out) {
    frags_put(out, 0, len, -1);
    if (len == 0 || v->n_specials == 0)
        return out->oom ? CODI_ENOMEM : 0;

    uint8_t *present = calloc((size_t)v->n_specials, 1);
    if (!present)
        return CODI_ENOMEM;
    bool any = false;
    for (size_t i = 0; i < len; i++) {
        if (!v->trie_first[(uint8_t)text[i]])
            continue;
        int32_t node = 0;
        for (size_t k = i; k < len; k++) {
            int32_t c = v->trie[node].child;
            while (c >= 0 && v->trie[c].byte != (uint8_t)text[k])
                c = v->trie[c].sibling;
            if (c < 0)
                break;
            node = c;
            int32_t s = v->trie[node].special;
            if (s >= 0 && special_allowed(v, v->specials[s], parse_special)) {
                present[s] = 1;
                any = true;
            }
        }
    }
    if (!any) {
        free(present);
        return out->oom ? CODI_ENOMEM : 0;
    }

    frags next = {0};
    for (int32_t s = 0; s < v->n_specials && !out->oom; s++) {
        if (!present[s])
            continue;
        int32_t id = v->specials[s];
        size_t tlen;
        const char *t = tok_text(v, id, &tlen);
        uint16_t attr = v->attr[id];
        next.n = 0;
        for (size_t f = 0; f < out->n; f++) {
            frag fr = out->p[f];
            if (fr.token >= 0) {
                frags_put(&next, fr.off, fr.len, fr.token);
                continue;
            }
            size_t off = fr.off, flen = fr.len;
            for (;;) {
                const char *m =
                    flen >= tlen ? memmem(text + off, flen, t, tlen) : NULL;
                if (!m) {
                    if (flen > 0)
                        frags_put(&next, off, flen, -1);
                    break;
                }
                size_t match = (size_t)(m - text);
                size_t left = match - off;
                if (attr & ATTR_LSTRIP)
                    while (left > 0 && c_isspace(text[off + left - 1]))
                        left--;
                if (left > 0)
                    frags_put(&next, off, left, -1);
                frags_put(&next, match, tlen, id);
                size_t roff = match + tlen;
                size_t rlen = off + flen - roff;
                if (rlen == 0)
                    break;
                if (attr & ATTR_RSTRIP)
                    while (rlen > 0 && c_isspace(text[roff])) {
                        roff++;
                        rlen--;
                    }
                off = roff;
                flen = rlen;
            }
        }
        frags tmp = *out;
        *out = next;
        next = tmp;
        if (next.oom)
            out->oom = true;
    }
    free(next.p);
    free(present);
    return out->oom ? CODI_ENOMEM : 0;
}

/* Merge state shared by both algorithms. */
typedef struct symbol {
    int32_t prev, next;
    uint32_t off, n; /* bytes within the word; n == 0 once merged away */
} symbol;

typedef struct bigram {
    int32_t left, right;
    float score; /* SPM: higher first */
    int32_t rank;/* BPE: lower first */
    uint32_t size;
} bigram;

typedef struct scratch {
    symbol *sym;
    size_t sym_cap;
    bigram *heap;
    size_t heap_n, heap_cap;
    bool spm; /* ordering of the heap */
    bool oom;
} scratch;

/* Heap order: does a come out before b? Ties go to the leftmost pair. */
static bool bigram_before(const scratch *s, const bigram *a,
                          const bigram *b) {
    if (s->spm) {
        if (a->score != b->score)
            return a->score > b->score;
    } else if (a->rank != b->rank) {
        return a->rank < b->rank;
    }
    return a->left < b->left;
}

static void heap_push(scratch *s, bigram b) {
    if (s->heap_n == s->heap_cap) {
        size_t cap = s->heap_cap ? s->heap_cap * 2 : 64;
        bigram *p = realloc(s->heap, cap * sizeof *p);
        if (!p) {
            s->oom = true;
            return;
        }
        s->heap = p;
        s->heap_cap = cap;
    }
    size_t i = s->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!bigram_before(s, &b, &s->heap[parent]))
            break;
        s->heap[i] = s->heap[parent];
        i = parent;
    }
    s->heap[i] = b;
}

static bigram heap_pop(scratch *s) {
    bigram top = s->heap[0];
    bigram last = s->heap[--s->heap_n];
    size_t i = 0, n = s->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && bigram_before(s, &s->heap[c + 1], &s->heap[c]))
            c++;
        if (!bigram_before(s, &s->heap[c], &last))
            break;
        s->heap[i] = s->heap[c];
        i = c;
    }
    if (n > 0)
        s->heap[i] = last;
    return top;
}

/* Split word[0..n) into one symbol per UTF-8 character (by lead byte, as
 * llama.cpp: a broken sequence still yields symbols, never overruns). */
static int32_t make_symbols(scratch *s, size_t n, const char *word) {
    if (n > s->sym_cap) {
        size_t cap = s->sym_cap ? s->sym_cap : 64;
        while (cap < n)
            cap *= 2;
        symbol *p = realloc(s->sym, cap * sizeof *p);
        if (!p) {
            s->oom = true;
            return 0;
        }
        s->sym = p;
        s->sym_cap = cap;
    }
    int32_t count = 0;
    for (size_t off = 0; off < n;) {
        size_t len = codi_utf8_len((uint8_t)word[off]);
        if (len > n - off)
            len = n - off;
        s->sym[count] = (symbol){count - 1, -1, (uint32_t)off,
                                 (uint32_t)len};
        if (count > 0)
            s->sym[count - 1].next = count;
        count++;
        off += len;
    }
    return count;
}

static void bpe_add_bigram(const codi_vocab *v, scratch *s, const char *word,
                           int32_t left, int32_t right) {
    if (left < 0 || right < 0)
        return;
    const symbol *l = &s->sym[left], *r = &s->sym[right];
    int32_t rank = merge_rank(v, word + l->off, l->n, word + r->off, r->n);
    if (rank < 0)
        return;
    heap_push(s, (bigram){left, right, 0.0f, rank, l->n + r->n});
}

/* One pre-tokenized, byte-encoded word of a byte-level BPE vocabulary. */
static void bpe_word(const codi_vocab *v, scratch *s, const char *word,
                     size_t n, toks *out) {
    if (v->pre->ignore_merges) {
        int32_t id = text_to_token(v, word, n);
        if (id >= 0) {
            toks_put(out, id);
            return;
        }
    }
    int32_t count = make_symbols(s, n, word);
    if (s->oom)
        return;
    s->spm = false;
    s->heap_n = 0;
    for (int32_t i = 1; i < count; i++)
        bpe_add_bigram(v, s, word, i - 1, i);
    while (s->heap_n > 0 && !s->oom) {
        bigram b = heap_pop(s);
        symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue; /* stale: one side changed since it was queued */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->sym[r->next].prev = b.left;
        bpe_add_bigram(v, s, word, l->prev, b.left);
        bpe_add_bigram(v, s, word, b.left, l->next);
    }
    for (int32_t i = 0; i < count; i++) {
        const symbol *sy = &s->sym[i];
        if (sy->n == 0)
            continue;
        int32_t id = text_to_token(v, word + sy->off, sy->n);
        if (id >= 0) {
            toks_put(out, id);
            continue;
        }
        /* llama.cpp then tries each byte of the encoded text on its own
         * and drops the bytes that are no token */
        for (uint32_t k = 0; k < sy->n; k++) {
            int32_t bt = v->byte_token[(uint8_t)word[sy->off + k]];
            if (bt >= 0)
                toks_put(out, bt);
        }
    }
}

static int bpe_fragment(const codi_vocab *v, scratch *s, const char *text,
                        size_t len, toks *out) {
    int rc = 0;
    uint32_t *cpts = malloc((len ? len : 1) * sizeof *cpts);
    size_t *wa = malloc((len ? len : 1) * sizeof *wa);
    size_t *wb = malloc((len ? len : 1) * sizeof *wb);
    bytes word = {0};
    if (!cpts || !wa || !wb) {
        rc = CODI_ENOMEM;
        goto done;
    }
    size_t n = codi_utf8_decode_all(text, len, cpts);
    size_t nw = 1;
    wa[0] = n;
    for (int k = 0; k < v->pre->n_splits; k++) {
        nw = codi_unicode_split(v->pre->splits[k], cpts, wa, nw, wb);
        size_t *t = wa;
        wa = wb;
        wb = t;
    }
    const byte_enc *enc = v->byte_enc;
    size_t c = 0;
    for (size_t w = 0; w < nw; w++) {
        word.n = 0;
        for (size_t k = 0; k < wa[w]; k++, c++) {
            char u[4];
            size_t nu = codi_utf8_encode(cpts[c], u);
            for (size_t j = 0; j < nu; j++) {
                const byte_enc *e = &enc[(uint8_t)u[j]];
                bytes_put(&word, e->s, e->n);
            }
        }
        if (word.oom) {
            rc = CODI_ENOMEM;
            goto done;
        }
        bpe_word(v, s, word.p, word.n, out);
        if (s->oom) {
            rc = CODI_ENOMEM;
            goto done;
        }
    }
done:
    free(cpts);
    free(wa);
    free(wb);
    free(word.p);
    return rc;
}

static void spm_add_bigram(const codi_vocab *v, scratch *s, const char *text,
                           int32_t left, int32_t right) {
    if (left < 0 || right < 0)
        return;
    const symbol *l = &s->sym[left], *r = &s->sym[right];
    /* adjacent symbols are contiguous in text */
    int32_t id = text_to_token(v, text + l->off, l->n + r->n);
    if (id < 0)
        return;
    heap_push(s, (bigram){left, right, v->scores[id], 0, l->n + r->n});
}

/* SentencePiece BPE over text (spaces already escaped). */
static int spm_text(const codi_vocab *v, scratch *s, const char *text,
                    size_t len, toks *out) {
    int32_t count = make_symbols(s, len, text);
    if (s->oom)
        return CODI_ENOMEM;
    s->spm = true;
    s->heap_n = 0;
    for (int32_t i = 1; i < count; i++)
        spm_add_bigram(v, s, text, i - 1, i);
    while (s->heap_n > 0 && !s->oom) {
        bigram b = heap_pop(s);
        symbol *l = &s->sym[b.left], *r = &s->sym[b.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
            continue;
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0)
            s->sym[r->next].prev = b.left;
        spm_add_bigram(v, s, text, l->prev, b.left);
        spm_add_bigram(v, s, text, b.left, l->next);
    }
    if (s->oom)
        return CODI_ENOMEM;
    /* Every merged symbol is a token (a pair is queued only when its text
     * is one), so only single characters can be unknown: they go out as
     * byte tokens, or <unk> when the vocabulary lacks those. */
    for (int32_t i = 0; count > 0 && i != -1; i = s->sym[i].next) {
        const symbol *sy = &s->sym[i];
        int32_t id = text_to_token(v, text + sy->off, sy->n);
        if (id >= 0) {
            toks_put(out, id);
            continue;
        }
        for (uint32_t k = 0; k < sy->n; k++) {
            int32_t bt = v->byte_token[(uint8_t)text[sy->off + k]];
            if (bt < 0)
                bt = v->unk;
            if (bt >= 0)
                toks_put(out, bt);
        }
    }
    return 0;
}

static int spm_fragment(const codi_vocab *v, scratch *s, const char *text,
                        size_t len, bool space_prefix, toks *out) {
    bytes esc = {0};
    if (space_prefix)
        bytes_put(&esc, SPACE_MARK, 3);
    for (size_t i = 0; i < len; i++) {
        if (text[i] == ' ')
            bytes_put(&esc, SPACE_MARK, 3);
        else
            bytes_put(&esc, text + i, 1);
    }
    int rc = esc.oom ? CODI_ENOMEM : spm_text(v, s, esc.p, esc.n, out);
    free(esc.p);
    return rc;
}

int32_t codi_vocab_tokenize(const codi_vocab *v, const char *text, size_t len,
                            int32_t *tokens, int32_t n_max, bool add_special,
                            bool parse_special) {
    if (!text || len == 0) {
        text = "";
        len = 0;
    }
    if (len > INT32_MAX / 4)
        return INT32_MIN; /* offsets inside are 32-bit */
    frags fr = {0};
    toks out = {0};
    scratch s = {0};
    int rc = partition(v, text, len, parse_special, &fr);

    if (add_special && v->add_bos)
        toks_put(&out, v->bos);
    bool prev_special = true; /* SPM: a space before the first text */
    for (size_t f = 0; f < fr.n && rc == 0; f++) {
        const frag *p = &fr.p[f];
        if (p->token >= 0) {
            toks_put(&out, p->token);
            prev_special = true;
            continue;
        }
        if (v->type == VOCAB_SPM) {
            rc = spm_fragment(v, &s, text + p->off, p->len,
                              v->add_space_prefix && prev_special, &out);
            prev_special = false;
        } else {
            rc = bpe_fragment(v, &s, text + p->off, p->len, &out);
        }
    }
    if (add_special && v->add_eos)
        toks_put(&out, v->eos);

    int32_t result;
    if (rc != 0 || out.oom || out.n > INT32_MAX) {
        result = INT32_MIN; /* no memory, or more tokens than int32 counts */
    } else if (out.n > (size_t)(n_max > 0 ? n_max : 0)) {
        result = -(int32_t)out.n;
    } else {
        if (out.n)
            memcpy(tokens, out.p, out.n * sizeof *tokens);
        result = (int32_t)out.n;
    }
    free(fr.p);
    free(out.p);
    free(s.sym);
    free(s.heap);
    return result;
}

int32_t codi_vocab_token_to_piece(const codi_vocab *v, int32_t token,
                                  char *buf, int32_t len, bool special) {
    if (token < 0 || token >= v->n_tokens)
        return 0;
    if (!special && (v->attr[token] & (ATTR_UNKNOWN | ATTR_CONTROL)))
        return 0;
    uint32_t n = v->piece_off[token + 1] - v->piece_off[token];
    if (n > INT32_MAX)
        return 0;
    if (len < (int32_t)n)
        return -(int32_t)n;
    if (n)
        memcpy(buf, v->piece + v->piece_off[token], n);
    return (int32_t)n;
}
