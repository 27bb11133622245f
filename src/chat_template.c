/* Chat templates. A Jinja template (tokenizer.chat_template) is rendered by
 * codi's Jinja interpreter (jinja.c) exactly as transformers renders it with
 * jinja2. The short names "chatml", "llama3", "gemma", "llama2", "zephyr",
 * "phi3" pick the built-in renderers below, which render as llama.cpp's
 * llm_chat_apply_template does (src/llama-chat.cpp); codi_chat_detect
 * recognises a template's family by the same markers in the same order.
 *
 * Where codi departs from llama.cpp, on purpose:
 *  - ChatML: a default system message written into the template as a
 *    literal ('<|im_start|>system\n...<|im_end|>', SmolLM2, Qwen2.5) is
 *    emitted when the first message is not a system message, as the Jinja
 *    template would. llama.cpp's built-in renderer drops it.
 *  - Zephyr: llama.cpp only reaches its Zephyr renderer for templates with
 *    <|user|> + <|endoftext|> and no <|assistant|>, and always ends turns
 *    with <|endoftext|>. Here every <|user|> template that is not Phi-3 is
 *    Zephyr, and turns end with </s> when the template names </s> and not
 *    <|endoftext|> (HuggingFaceH4/zephyr-7b-beta), else <|endoftext|>.
 *  - Phi-3 is recognised by <|end|> with <|user|> or <|assistant|>.
 *  - Templates llama.cpp renders in formats codi lacks (the official
 *    Mistral v1/v3/v7 [INST] templates, Phi-4's <|im_sep|> ChatML) are
 *    reported as unsupported rather than rendered as Llama-2 / ChatML.
 *
 * As in llama.cpp, no template prints BOS itself except Llama-2's
 * "bos inside history" variant (between turns); the tokenizer adds the
 * leading BOS. Roles are passed through as given (Gemma maps "assistant" to
 * "model"; Llama-2 treats every role but system/user as the assistant). */
#include "chat_template.h"

#include <string.h>

#include "common.h"
#include "jinja.h"

/* Llama-2 variants, picked from the template like llama.cpp does. */
enum llama2_variant {
    L2_PLAIN,     /* system text folded into the first [INST] */
    L2_SYS,       /* <<SYS>> block */
    L2_SYS_BOS,   /* <<SYS>>, and BOS before every later [INST] */
    L2_SYS_STRIP, /* <<SYS>>, contents trimmed */
};

static const struct {
    const char *name;
    enum codi_chat_format fmt;
} short_names[] = {
    {"chatml", CODI_CHAT_CHATML}, {"llama3", CODI_CHAT_LLAMA3},
    {"gemma", CODI_CHAT_GEMMA},   {"llama2", CODI_CHAT_LLAMA2},
    {"zephyr", CODI_CHAT_ZEPHYR}, {"phi3", CODI_CHAT_PHI3},
};

static bool has(const char *s, const char *needle) {
    return strstr(s, needle) != NULL;
}

/* llama.cpp's names "mistral-v1", "-v3", "-v3-tekken", "-v7" and the
 * official Mistral templates: formats codi does not render. Plain
 * "mistral" is the old pre-v1 format, which is Llama-2's. */
static bool is_mistral_official(const char *t) {
    return strncmp(t, "mistral-v", 9) == 0 || has(t, "[SYSTEM_PROMPT]") ||
           has(t, "' [INST] ' + system_message") || has(t, "[AVAILABLE_TOOLS]");
}

enum codi_chat_format codi_chat_detect(const char *t) {
    if (!t || !*t) return CODI_CHAT_UNKNOWN;
    for (size_t i = 0; i < sizeof(short_names) / sizeof(short_names[0]); i++)
        if (strcmp(t, short_names[i].name) == 0) return short_names[i].fmt;

    if (has(t, "<|im_start|>"))
        return has(t, "<|im_sep|>") ? CODI_CHAT_UNKNOWN : CODI_CHAT_CHATML;
    if (strncmp(t, "mistral", 7) == 0 || has(t, "[INST]"))
        return is_mistral_official(t) ? CODI_CHAT_UNKNOWN : CODI_CHAT_LLAMA2;
    if (has(t, "<|end|>") && (has(t, "<|user|>") || has(t, "<|assistant|>")))
        return CODI_CHAT_PHI3;
    if (has(t, "<|user|>")) return CODI_CHAT_ZEPHYR;
    if (has(t, "<start_of_turn>")) return CODI_CHAT_GEMMA;
    if (has(t, "<|start_header_id|>") && has(t, "<|end_header_id|>"))
        return CODI_CHAT_LLAMA3;
    return CODI_CHAT_UNKNOWN;
}

const char *codi_chat_format_name(enum codi_chat_format f) {
    for (size_t i = 0; i < sizeof(short_names) / sizeof(short_names[0]); i++)
        if (short_names[i].fmt == f) return short_names[i].name;
    return "unknown";
}

static enum llama2_variant llama2_variant_of(const char *t) {
    if (has(t, "content.strip()")) return L2_SYS_STRIP;
    if (has(t, "bos_token + '[INST]")) return L2_SYS_BOS;
    if (has(t, "<<SYS>>")) return L2_SYS;
    return L2_PLAIN;
}

/* -------------------------------------------------------------- buffer */

typedef struct sbuf {
    char *p;
    size_t len, cap;
    bool oom;
} sbuf;

static void sb_putn(sbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1) cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->oom = true;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_put(sbuf *b, const char *s) { sb_putn(b, s, strlen(s)); }

static bool is_ws(char c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
           c == '\r';
}

/* Append s without leading/trailing whitespace (llama.cpp's trim()). */
static void sb_put_trim(sbuf *b, const char *s) {
    size_t n = strlen(s), i = 0;
    while (i < n && is_ws(s[i])) i++;
    while (n > i && is_ws(s[n - 1])) n--;
    sb_putn(b, s + i, n - i);
}

/* --------------------------------------------- ChatML default system */

/* Find a string literal in the template that opens with
 * <|im_start|>system + newline (real or written "\n") and holds <|im_end|>
 * before it closes: its text up to <|im_end|> is the default system
 * message. Returns false when there is none. */
static bool find_default_system(const char *t, const char **beg,
                                const char **end) {
    static const char marker[] = "<|im_start|>system";
    for (const char *m = strstr(t, marker); m; m = strstr(m + 1, marker)) {
        if (m == t || (m[-1] != '\'' && m[-1] != '"')) continue;
        char quote = m[-1];
        const char *s = m + sizeof(marker) - 1;
        if (s[0] == '\n') s += 1;
        else if (s[0] == '\\' && s[1] == 'n') s += 2;
        else continue;
        /* The literal ends at the first unescaped quote. */
        const char *q = s;
        while (*q && *q != quote) q += (q[0] == '\\' && q[1]) ? 2 : 1;
        const char *e = strstr(s, "<|im_end|>");
        if (!e || e >= q || e == s) continue;
        *beg = s;
        *end = e;
        return true;
    }
    return false;
}

/* Append a Jinja string literal's text with its escapes undone. */
static void sb_put_literal(sbuf *b, const char *s, const char *e) {
    while (s < e) {
        const char *run = s;
        while (s < e && *s != '\\') s++;
        sb_putn(b, run, (size_t)(s - run));
        if (s + 1 >= e) {
            if (s < e) sb_putn(b, s++, 1);
            break;
        }
        char c = s[1], o;
        switch (c) {
        case 'n': o = '\n'; break;
        case 't': o = '\t'; break;
        case 'r': o = '\r'; break;
        default: o = c; break; /* \' \" \\ and anything else: the char */
        }
        sb_putn(b, &o, 1);
        s += 2;
    }
}

/* ------------------------------------------------------------ renderers */

static void render_chatml(sbuf *b, const char *tmpl, const char *const *roles,
                          const char *const *contents, size_t n, bool add_ass) {
    const char *ds, *de;
    if (n > 0 && strcmp(roles[0], "system") != 0 &&
        find_default_system(tmpl, &ds, &de)) {
        sb_put(b, "<|im_start|>system\n");
        sb_put_literal(b, ds, de);
        sb_put(b, "<|im_end|>\n");
    }
    for (size_t i = 0; i < n; i++) {
        sb_put(b, "<|im_start|>");
        sb_put(b, roles[i]);
        sb_put(b, "\n");
        sb_put(b, contents[i]);
        sb_put(b, "<|im_end|>\n");
    }
    if (add_ass) sb_put(b, "<|im_start|>assistant\n");
}

static void render_llama3(sbuf *b, const char *const *roles,
                          const char *const *contents, size_t n, bool add_ass) {
    for (size_t i = 0; i < n; i++) {
        sb_put(b, "<|start_header_id|>");
        sb_put(b, roles[i]);
        sb_put(b, "<|end_header_id|>\n\n");
        sb_put_trim(b, contents[i]);
        sb_put(b, "<|eot_id|>");
    }
    if (add_ass) sb_put(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

/* Gemma has no system role: the (trimmed) system text opens the next
 * non-model turn. */
static void render_gemma(sbuf *b, const char *const *roles,
                         const char *const *contents, size_t n, bool add_ass) {
    const char *sys = NULL;
    for (size_t i = 0; i < n; i++) {
        if (strcmp(roles[i], "system") == 0) {
            sys = contents[i];
            continue;
        }
        bool model = strcmp(roles[i], "assistant") == 0 ||
                     strcmp(roles[i], "model") == 0;
        sb_put(b, "<start_of_turn>");
        sb_put(b, strcmp(roles[i], "assistant") == 0 ? "model" : roles[i]);
        sb_put(b, "\n");
        if (sys && !model) {
            size_t before = b->len;
            sb_put_trim(b, sys);
            if (b->len != before) sb_put(b, "\n\n"); /* empty after trim: none */
            sys = NULL;
        }
        sb_put_trim(b, contents[i]);
        sb_put(b, "<end_of_turn>\n");
    }
    if (add_ass) sb_put(b, "<start_of_turn>model\n");
}

/* Llama-2 has no generation prompt: add_ass is ignored, as in llama.cpp. */
static void render_llama2(sbuf *b, enum llama2_variant v, const char *bos,
                          const char *const *roles, const char *const *contents,
                          size_t n) {
    bool inside = true; /* the first [INST] is written without BOS */
    sb_put(b, "[INST] ");
    for (size_t i = 0; i < n; i++) {
        if (!inside) {
            inside = true;
            if (v == L2_SYS_BOS) sb_put(b, bos && *bos ? bos : "<s>");
            sb_put(b, "[INST] ");
        }
        void (*put)(sbuf *, const char *) = v == L2_SYS_STRIP ? sb_put_trim : sb_put;
        if (strcmp(roles[i], "system") == 0) {
            if (v == L2_PLAIN) {
                put(b, contents[i]);
                sb_put(b, "\n");
            } else {
                sb_put(b, "<<SYS>>\n");
                put(b, contents[i]);
                sb_put(b, "\n<</SYS>>\n\n");
            }
        } else if (strcmp(roles[i], "user") == 0) {
            put(b, contents[i]);
            sb_put(b, " [/INST]");
        } else {
            put(b, contents[i]);
            sb_put(b, "</s>");
            inside = false;
        }
    }
}

/* "<|role|>\ncontent" + end-of-turn + "\n": Zephyr and Phi-3. */
static void render_pipe_roles(sbuf *b, const char *eot, const char *const *roles,
                              const char *const *contents, size_t n,
                              bool add_ass) {
    for (size_t i = 0; i < n; i++) {
        sb_put(b, "<|");
        sb_put(b, roles[i]);
        sb_put(b, "|>\n");
        sb_put(b, contents[i]);
        sb_put(b, eot);
        sb_put(b, "\n");
    }
    if (add_ass) sb_put(b, "<|assistant|>\n");
}

static const char *zephyr_eot(const char *t) {
    if (!has(t, "<|endoftext|>") && has(t, "</s>")) return "</s>";
    return "<|endoftext|>";
}

/* ---------------------------------------------------------------- entry */

/* First ~40 bytes of the template, control characters escaped, cut on a
 * UTF-8 boundary. */
static void template_prefix(const char *t, char *dst, size_t cap) {
    size_t n = strlen(t), lim = 40, j = 0;
    if (n > lim) {
        n = lim;
        while (n > 0 && ((unsigned char)t[n] & 0xC0) == 0x80) n--;
    }
    for (size_t i = 0; i < n && j + 5 < cap; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c == '\n') j += (size_t)snprintf(dst + j, cap - j, "\\n");
        else if (c == '\r') j += (size_t)snprintf(dst + j, cap - j, "\\r");
        else if (c == '\t') j += (size_t)snprintf(dst + j, cap - j, "\\t");
        else if (c < 0x20 || c == 0x7f)
            j += (size_t)snprintf(dst + j, cap - j, "\\x%02x", c);
        else dst[j++] = (char)c;
    }
    if (n < strlen(t) && j + 4 < cap) j += (size_t)snprintf(dst + j, cap - j, "...");
    dst[j] = '\0';
}

/* True for the short names ("chatml", ...) that pick a built-in renderer
 * (a text without Jinja tags is looked up by name as well). */
static bool is_short_name(const char *t) {
    for (size_t i = 0; i < sizeof(short_names) / sizeof(short_names[0]); i++)
        if (strcmp(t, short_names[i].name) == 0) return true;
    return false;
}

int codi_chat_render(const char *tmpl, const char *bos,
                     const char *const *roles, const char *const *contents,
                     size_t n, bool add_assistant, char **out, char *err,
                     size_t errlen) {
    return codi_chat_render_tokens(tmpl, bos, NULL, roles, contents, n,
                                   add_assistant, out, err, errlen);
}

int codi_chat_render_tokens(const char *tmpl, const char *bos, const char *eos,
                            const char *const *roles, const char *const *contents,
                            size_t n, bool add_assistant, char **out, char *err,
                            size_t errlen) {
    if (!out) return codi_errorf(err, errlen, CODI_EINVAL, "chat: out is NULL");
    *out = NULL;
    if (!tmpl || !*tmpl)
        return codi_errorf(err, errlen, CODI_EINVAL, "chat: no chat template");
    if (n > 0 && (!roles || !contents))
        return codi_errorf(err, errlen, CODI_EINVAL,
                           "chat: %zu messages but roles or contents is NULL", n);
    for (size_t i = 0; i < n; i++)
        if (!roles[i] || !contents[i])
            return codi_errorf(err, errlen, CODI_EINVAL,
                               "chat: message %zu has no %s", i,
                               roles[i] ? "content" : "role");

    /* A real template is rendered by the Jinja interpreter, as transformers
     * renders it; a short name ("chatml", "mistral", ...) picks llama.cpp's
     * built-in format. */
    if (!is_short_name(tmpl) && (strstr(tmpl, "{{") || strstr(tmpl, "{%") || strstr(tmpl, "{#"))) {
        codi_jinja_chat chat = {roles, contents, n, add_assistant, bos, eos};
        return codi_jinja_render_chat(tmpl, &chat, out, err, errlen);
    }

    enum codi_chat_format f = codi_chat_detect(tmpl);
    if (f == CODI_CHAT_UNKNOWN) {
        char pre[200];
        template_prefix(tmpl, pre, sizeof(pre));
        return codi_errorf(err, errlen, CODI_EUNSUPPORTED,
                           "unsupported chat template (starts with: '%s')", pre);
    }

    sbuf b = {0};
    sb_put(&b, ""); /* an empty render is still a string */
    switch (f) {
    case CODI_CHAT_CHATML: render_chatml(&b, tmpl, roles, contents, n, add_assistant); break;
    case CODI_CHAT_LLAMA3: render_llama3(&b, roles, contents, n, add_assistant); break;
    case CODI_CHAT_GEMMA: render_gemma(&b, roles, contents, n, add_assistant); break;
    case CODI_CHAT_LLAMA2:
        render_llama2(&b, llama2_variant_of(tmpl), bos, roles, contents, n);
        break;
    case CODI_CHAT_ZEPHYR:
        render_pipe_roles(&b, zephyr_eot(tmpl), roles, contents, n, add_assistant);
        break;
    case CODI_CHAT_PHI3:
        render_pipe_roles(&b, "<|end|>", roles, contents, n, add_assistant);
        break;
    case CODI_CHAT_UNKNOWN: break;
    }
    if (b.oom) {
        free(b.p);
        return codi_errorf(err, errlen, CODI_ENOMEM, "chat: out of memory");
    }
    *out = b.p;
    return CODI_OK;
}
