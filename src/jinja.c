/* A small Jinja interpreter for chat templates (see jinja.h for the subset).
 *
 * Pipeline: the template is cut into text / {{ }} / {% %} segments (with
 * jinja2's whitespace control, trim_blocks and lstrip_blocks as transformers
 * sets them), statements and expressions are parsed into a tree, and the
 * tree is evaluated. Every allocation comes from one arena freed after the
 * render; errors longjmp back to the entry point with a message. */
#include "jinja.h"

#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.h"

#define MAX_DEPTH 64             /* statement / expression nesting */
#define MAX_EVAL_DEPTH 1000      /* operands of one expression tree, in depth */
#define MAX_MACRO_DEPTH 16       /* macro calls in progress */
#define MAX_OUTPUT (64u << 20)   /* bytes of rendered text */
#define MAX_ARENA (64u << 20)    /* bytes of values, scopes and tree */
#define MAX_STEPS 50000000LL     /* evaluation steps */
#define MAX_ITEMS (1u << 24)     /* elements of one list / string repeat */
#define MAX_RANGE (1 << 20)      /* elements of one range() */

/* ------------------------------------------------------------ state */

typedef struct arena_blk {
    struct arena_blk *next;
    size_t used, cap;
    _Alignas(16) unsigned char data[];
} arena_blk;

typedef struct jstr {
    const char *p;
    size_t n;
} jstr;

enum vtype { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC, V_MACRO };

typedef struct jlist jlist;
typedef struct jdict jdict;
typedef struct node node;

typedef struct jv {
    int t;
    union {
        bool b;
        int64_t i;
        double f;
        jstr s;
        jlist *l;
        jdict *d;
        int fn;
        const node *macro;
    } u;
} jv;

struct jlist {
    size_t n, cap;
    jv *v;
    bool tuple; /* printed (a, b) */
};

struct jdict {
    size_t n, cap;
    jstr *k;
    jv *v;
    bool ns; /* namespace(): attributes may be assigned */
};

typedef struct frame {
    jdict *vars;
    bool barrier; /* a macro's frame: lookups skip to the globals */
} frame;

typedef struct obuf {
    char *p;
    size_t n, cap;
    struct obuf *next_tmp; /* every buffer is registered: freed on error */
} obuf;

typedef struct jctx {
    jmp_buf jb;
    char *err;
    size_t errlen;
    int rc;
    arena_blk *arena;
    size_t arena_total;
    const char *src;
    frame frames[MAX_DEPTH * 2 + 8];
    int n_frames;
    int macro_depth;
    long long steps;
    obuf *out; /* where output goes (a {% set %} block or macro redirects it) */
    obuf *tmps; /* all buffers, so an error (longjmp) frees them */
} jctx;

static _Noreturn void fail(jctx *J, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static _Noreturn void fail(jctx *J, int code, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* keep the message one printable line */
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = ' ';
    J->rc = codi_errorf(J->err, J->errlen, code, "chat template: %s", msg);
    longjmp(J->jb, 1);
}

static void *jalloc(jctx *J, size_t n) {
    n = (n + 15) & ~(size_t)15;
    if (!J->arena || J->arena->used + n > J->arena->cap) {
        size_t cap = n > 65536 ? n : 65536;
        if (J->arena_total + cap > MAX_ARENA)
            fail(J, CODI_ERANGE, "the template needs more than %u MB of working memory", MAX_ARENA >> 20);
        arena_blk *b = malloc(sizeof(arena_blk) + cap);
        if (!b)
            fail(J, CODI_ENOMEM, "out of memory");
        b->next = J->arena;
        b->used = 0;
        b->cap = cap;
        J->arena = b;
        J->arena_total += cap;
    }
    void *p = J->arena->data + J->arena->used;
    J->arena->used += n;
    memset(p, 0, n);
    return p;
}

static void step(jctx *J) {
    if (++J->steps > MAX_STEPS)
        fail(J, CODI_ERANGE, "evaluation takes more than %lld steps", MAX_STEPS);
}

/* ------------------------------------------------------------ values */

static jv mk_undef(void) { jv v = {V_UNDEF, {0}}; return v; }
static jv mk_none(void) { jv v = {V_NONE, {0}}; return v; }
static jv mk_bool(bool b) { jv v = {V_BOOL, {.b = b}}; return v; }
static jv mk_int(int64_t i) { jv v = {V_INT, {.i = i}}; return v; }
static jv mk_float(double f) { jv v = {V_FLOAT, {.f = f}}; return v; }

/* A string of n bytes copied from p (p NULL: zeroed, for the caller to fill). */
static jv mk_strn(jctx *J, const char *p, size_t n) {
    char *c = jalloc(J, n + 1);
    if (n && p)
        memcpy(c, p, n);
    jv v = {V_STR, {.s = {c, n}}};
    return v;
}

static jv mk_str(jctx *J, const char *p) { return mk_strn(J, p, strlen(p)); }

static jlist *list_new(jctx *J) { return jalloc(J, sizeof(jlist)); }

static void list_push(jctx *J, jlist *l, jv v) {
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        if (cap > MAX_ITEMS)
            fail(J, CODI_ERANGE, "a list grows past %u items", MAX_ITEMS);
        jv *nv = jalloc(J, cap * sizeof(jv));
        if (l->n)
            memcpy(nv, l->v, l->n * sizeof(jv));
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = v;
}

static jv mk_list(jlist *l) { jv v = {V_LIST, {.l = l}}; return v; }

static jdict *dict_new(jctx *J) { return jalloc(J, sizeof(jdict)); }

static bool str_eq(jstr a, const char *b, size_t bn) { return a.n == bn && memcmp(a.p, b, bn) == 0; }

static jv *dict_find(const jdict *d, const char *k, size_t kn) {
    for (size_t i = d->n; i-- > 0;)
        if (str_eq(d->k[i], k, kn))
            return &d->v[i];
    return NULL;
}

static void dict_set(jctx *J, jdict *d, jstr k, jv v) {
    jv *e = dict_find(d, k.p, k.n);
    if (e) {
        *e = v;
        return;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 8;
        if (cap > MAX_ITEMS)
            fail(J, CODI_ERANGE, "a mapping grows past %u items", MAX_ITEMS);
        jstr *nk = jalloc(J, cap * sizeof(jstr));
        jv *nv = jalloc(J, cap * sizeof(jv));
        if (d->n) {
            memcpy(nk, d->k, d->n * sizeof(jstr));
            memcpy(nv, d->v, d->n * sizeof(jv));
        }
        d->k = nk;
        d->v = nv;
        d->cap = cap;
    }
    d->k[d->n] = k;
    d->v[d->n++] = v;
}

static void dict_setc(jctx *J, jdict *d, const char *k, jv v) {
    jstr s = {k, strlen(k)};
    dict_set(J, d, s, v);
}

static jv mk_dict(jdict *d) { jv v = {V_DICT, {.d = d}}; return v; }

static const char *type_name(const jv *v) {
    switch (v->t) {
    case V_UNDEF: return "undefined";
    case V_NONE: return "none";
    case V_BOOL: return "bool";
    case V_INT: return "int";
    case V_FLOAT: return "float";
    case V_STR: return "str";
    case V_LIST: return "list";
    case V_DICT: return v->u.d->ns ? "namespace" : "dict";
    case V_FUNC: return "function";
    case V_MACRO: return "macro";
    }
    return "?";
}

static bool truthy(const jv *v) {
    switch (v->t) {
    case V_UNDEF:
    case V_NONE: return false;
    case V_BOOL: return v->u.b;
    case V_INT: return v->u.i != 0;
    case V_FLOAT: return v->u.f != 0.0;
    case V_STR: return v->u.s.n > 0;
    case V_LIST: return v->u.l->n > 0;
    case V_DICT: return v->u.d->ns || v->u.d->n > 0;
    default: return true;
    }
}

/* ------------------------------------------------------------ output */

static void ob_put(jctx *J, obuf *b, const char *s, size_t n) {
    if (n == 0)
        return;
    if (b->n + n + 1 > b->cap) {
        if (b->n + n > MAX_OUTPUT)
            fail(J, CODI_ERANGE, "the rendered text exceeds %u MB", MAX_OUTPUT >> 20);
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            fail(J, CODI_ENOMEM, "out of memory");
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void ob_puts(jctx *J, obuf *b, const char *s) { ob_put(J, b, s, strlen(s)); }

/* A text buffer in the arena, registered so its heap part is freed even
 * when an error unwinds past its user. */
static obuf *tmp_buf(jctx *J) {
    obuf *b = jalloc(J, sizeof(obuf));
    b->next_tmp = J->tmps;
    J->tmps = b;
    return b;
}

/* The buffer's text as an arena string; the buffer is emptied. */
static jv tmp_take(jctx *J, obuf *b);

/* Python's repr of a float: the shortest text that reads back the same. */
static void fmt_float(double f, char *buf, size_t cap) {
    if (isnan(f)) {
        snprintf(buf, cap, "nan");
        return;
    }
    if (isinf(f)) {
        snprintf(buf, cap, f > 0 ? "inf" : "-inf");
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, cap, "%.*g", prec, f);
        if (strtod(buf, NULL) == f)
            break;
    }
    /* Python switches to exponent notation at 1e16, %g at the precision */
    char *e = strchr(buf, 'e');
    if (!e && fabs(f) >= 1e16) {
        snprintf(buf, cap, "%.16e", f);
        for (int prec = 0; prec <= 16; prec++) {
            char t[64];
            snprintf(t, sizeof(t), "%.*e", prec, f);
            if (strtod(t, NULL) == f) {
                snprintf(buf, cap, "%s", t);
                break;
            }
        }
        e = strchr(buf, 'e');
    }
    if (e) {
        /* Python: 1e+20, 1e-05 (at least two exponent digits, as C) */
        return;
    }
    if (!strchr(buf, '.') && !strchr(buf, 'n') && !strchr(buf, 'i'))
        snprintf(buf + strlen(buf), cap - strlen(buf), ".0");
}

static void put_repr(jctx *J, obuf *b, const jv *v, int depth);

static void put_str_value(jctx *J, obuf *b, const jv *v, int depth) {
    char num[64];
    switch (v->t) {
    case V_UNDEF: return;
    case V_NONE: ob_puts(J, b, "None"); return;
    case V_BOOL: ob_puts(J, b, v->u.b ? "True" : "False"); return;
    case V_INT: snprintf(num, sizeof(num), "%lld", (long long)v->u.i); ob_puts(J, b, num); return;
    case V_FLOAT: fmt_float(v->u.f, num, sizeof(num)); ob_puts(J, b, num); return;
    case V_STR: ob_put(J, b, v->u.s.p, v->u.s.n); return;
    default: put_repr(J, b, v, depth); return;
    }
}

static void put_repr(jctx *J, obuf *b, const jv *v, int depth) {
    if (depth > MAX_DEPTH)
        fail(J, CODI_ERANGE, "a value nests deeper than %d levels", MAX_DEPTH);
    switch (v->t) {
    case V_STR: {
        /* Python picks ' unless the text holds ' and no " */
        const bool dq = memchr(v->u.s.p, '\'', v->u.s.n) && !memchr(v->u.s.p, '"', v->u.s.n);
        const char q = dq ? '"' : '\'';
        ob_put(J, b, &q, 1);
        for (size_t i = 0; i < v->u.s.n; i++) {
            const unsigned char c = (unsigned char)v->u.s.p[i];
            char e[8];
            if (c == '\\') ob_puts(J, b, "\\\\");
            else if (c == (unsigned char)q) { e[0] = '\\'; e[1] = (char)c; ob_put(J, b, e, 2); }
            else if (c == '\n') ob_puts(J, b, "\\n");
            else if (c == '\r') ob_puts(J, b, "\\r");
            else if (c == '\t') ob_puts(J, b, "\\t");
            else if (c < 0x20 || c == 0x7f) { snprintf(e, sizeof(e), "\\x%02x", c); ob_puts(J, b, e); }
            else ob_put(J, b, (const char *)&c, 1);
        }
        ob_put(J, b, &q, 1);
        return;
    }
    case V_LIST:
        ob_puts(J, b, v->u.l->tuple ? "(" : "[");
        for (size_t i = 0; i < v->u.l->n; i++) {
            if (i) ob_puts(J, b, ", ");
            put_repr(J, b, &v->u.l->v[i], depth + 1);
        }
        if (v->u.l->tuple && v->u.l->n == 1) ob_puts(J, b, ",");
        ob_puts(J, b, v->u.l->tuple ? ")" : "]");
        return;
    case V_DICT:
        if (v->u.d->ns) {
            ob_puts(J, b, "<Namespace>");
            return;
        }
        ob_puts(J, b, "{");
        for (size_t i = 0; i < v->u.d->n; i++) {
            if (i) ob_puts(J, b, ", ");
            jv k = {V_STR, {.s = v->u.d->k[i]}};
            put_repr(J, b, &k, depth + 1);
            ob_puts(J, b, ": ");
            put_repr(J, b, &v->u.d->v[i], depth + 1);
        }
        ob_puts(J, b, "}");
        return;
    case V_FUNC:
    case V_MACRO: ob_puts(J, b, "<function>"); return;
    default: put_str_value(J, b, v, depth); return;
    }
}

/* str(v) as an arena string */
static jv to_str(jctx *J, const jv *v) {
    if (v->t == V_STR)
        return *v;
    obuf *b = tmp_buf(J);
    put_str_value(J, b, v, 0);
    return tmp_take(J, b);
}

static jv tmp_take(jctx *J, obuf *b) {
    jv r = mk_strn(J, b->p ? b->p : "", b->n);
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    return r;
}

/* JSON text (transformers' tojson: json.dumps, ensure_ascii=False) */
static void put_json(jctx *J, obuf *b, const jv *v, int indent, int level) {
    if (level > MAX_DEPTH)
        fail(J, CODI_ERANGE, "a value nests deeper than %d levels", MAX_DEPTH);
    char num[64];
    switch (v->t) {
    case V_UNDEF:
    case V_NONE: ob_puts(J, b, "null"); return;
    case V_BOOL: ob_puts(J, b, v->u.b ? "true" : "false"); return;
    case V_INT: snprintf(num, sizeof(num), "%lld", (long long)v->u.i); ob_puts(J, b, num); return;
    case V_FLOAT:
        if (isnan(v->u.f)) ob_puts(J, b, "NaN");
        else if (isinf(v->u.f)) ob_puts(J, b, v->u.f > 0 ? "Infinity" : "-Infinity");
        else { fmt_float(v->u.f, num, sizeof(num)); ob_puts(J, b, num); }
        return;
    case V_STR:
        ob_puts(J, b, "\"");
        for (size_t i = 0; i < v->u.s.n; i++) {
            const unsigned char c = (unsigned char)v->u.s.p[i];
            char e[8];
            if (c == '"') ob_puts(J, b, "\\\"");
            else if (c == '\\') ob_puts(J, b, "\\\\");
            else if (c == '\n') ob_puts(J, b, "\\n");
            else if (c == '\r') ob_puts(J, b, "\\r");
            else if (c == '\t') ob_puts(J, b, "\\t");
            else if (c == '\b') ob_puts(J, b, "\\b");
            else if (c == '\f') ob_puts(J, b, "\\f");
            else if (c < 0x20 || c == 0x7f) { snprintf(e, sizeof(e), "\\u%04x", c); ob_puts(J, b, e); }
            else ob_put(J, b, (const char *)&c, 1);
        }
        ob_puts(J, b, "\"");
        return;
    case V_LIST:
    case V_DICT: {
        const bool is_list = v->t == V_LIST;
        const size_t n = is_list ? v->u.l->n : v->u.d->n;
        ob_puts(J, b, is_list ? "[" : "{");
        for (size_t i = 0; i < n; i++) {
            if (i) ob_puts(J, b, indent >= 0 ? "," : ", ");
            if (indent >= 0) {
                ob_puts(J, b, "\n");
                for (int s = 0; s < indent * (level + 1); s++) ob_puts(J, b, " ");
            }
            if (is_list) {
                put_json(J, b, &v->u.l->v[i], indent, level + 1);
            } else {
                jv k = {V_STR, {.s = v->u.d->k[i]}};
                put_json(J, b, &k, indent, level + 1);
                ob_puts(J, b, ": ");
                put_json(J, b, &v->u.d->v[i], indent, level + 1);
            }
        }
        if (indent >= 0 && n) {
            ob_puts(J, b, "\n");
            for (int s = 0; s < indent * level; s++) ob_puts(J, b, " ");
        }
        ob_puts(J, b, is_list ? "]" : "}");
        return;
    }
    default: fail(J, CODI_EINVAL, "tojson: cannot serialise a %s", type_name(v));
    }
}

/* ------------------------------------------------------------ segments */

enum seg_kind { SEG_TEXT, SEG_EXPR, SEG_STMT };

typedef struct seg {
    int kind;
    const char *p; /* content (TEXT: text; EXPR/STMT: inside the delimiters) */
    size_t n;
    int line;
} seg;

typedef struct segs {
    seg *v;
    size_t n, cap;
} segs;

static int line_of(const jctx *J, const char *p) {
    int line = 1;
    for (const char *s = J->src; s < p; s++)
        line += *s == '\n';
    return line;
}

static void seg_push(jctx *J, segs *S, int kind, const char *p, size_t n) {
    if (S->n == S->cap) {
        size_t cap = S->cap ? S->cap * 2 : 64;
        seg *nv = jalloc(J, cap * sizeof(seg));
        if (S->n)
            memcpy(nv, S->v, S->n * sizeof(seg));
        S->v = nv;
        S->cap = cap;
    }
    seg s = {kind, p, n, 0};
    S->v[S->n++] = s;
}

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }

/* End of a {{ }} or {% %} tag: the closer outside string literals. */
static const char *find_close(const char *p, char closer) {
    char q = 0;
    for (; *p; p++) {
        if (q) {
            if (*p == '\\' && p[1])
                p++;
            else if (*p == q)
                q = 0;
        } else if (*p == '\'' || *p == '"') {
            q = *p;
        } else if (*p == closer && p[1] == '}') {
            return p;
        }
    }
    return NULL;
}

static void segment(jctx *J, const char *src, segs *S) {
    const char *i = src;
    bool strip_next = false; /* previous tag ended with - */
    bool trim_nl = false;    /* previous tag was a block/comment (trim_blocks) */
    for (;;) {
        const char *j = i;
        while (*j && !(j[0] == '{' && (j[1] == '{' || j[1] == '%' || j[1] == '#')))
            j++;
        const char *ts = i, *te = j;
        if (strip_next) {
            while (ts < te && is_space(*ts)) ts++;
        } else if (trim_nl) {
            if (ts < te && *ts == '\n') ts++;
            else if (ts + 1 < te && ts[0] == '\r' && ts[1] == '\n') ts += 2;
        }
        if (!*j) {
            seg_push(J, S, SEG_TEXT, ts, (size_t)(te - ts));
            return;
        }
        const char kind = j[1];
        const char mod = j[2];
        if (mod == '-') {
            while (te > ts && is_space(te[-1])) te--;
        } else if (mod != '+' && (kind == '%' || kind == '#')) {
            /* lstrip_blocks: spaces/tabs from the start of the line */
            const char *k = te;
            while (k > ts && (k[-1] == ' ' || k[-1] == '\t')) k--;
            if ((k == src || k[-1] == '\n') && k >= ts)
                te = k;
        }
        seg_push(J, S, SEG_TEXT, ts, (size_t)(te - ts));
        const char *body = j + 2 + (mod == '-' || mod == '+');
        const char *close;
        if (kind == '#') {
            close = strstr(body, "#}");
            if (!close)
                fail(J, CODI_EFORMAT, "line %d: unterminated comment", line_of(J, j));
        } else {
            close = find_close(body, kind == '{' ? '}' : '%');
            if (!close)
                fail(J, CODI_EFORMAT, "line %d: missing '%s'", line_of(J, j), kind == '{' ? "}}" : "%}");
        }
        const char *bend = close;
        strip_next = false;
        if (bend > body && bend[-1] == '-') {
            bend--;
            strip_next = true;
        } else if (bend > body && bend[-1] == '+' && kind != '{') {
            bend--;
        }
        trim_nl = kind != '{';
        if (kind != '#') {
            seg_push(J, S, kind == '{' ? SEG_EXPR : SEG_STMT, body, (size_t)(bend - body));
            S->v[S->n - 1].line = line_of(J, j);
        }
        i = close + 2;
    }
}

/* ------------------------------------------------------------ tokens */

enum tok_kind { T_END, T_NAME, T_INT, T_FLOAT, T_STR, T_OP };

typedef struct tok {
    int kind;
    jstr s;     /* name, operator text, or string value */
    int64_t i;
    double f;
} tok;

typedef struct lexer {
    jctx *J;
    const char *p, *end;
    int line;
    tok cur;
} lexer;

static void lex_next(lexer *L) {
    jctx *J = L->J;
    while (L->p < L->end && is_space(*L->p)) L->p++;
    tok t = {T_END, {L->p, 0}, 0, 0.0};
    if (L->p >= L->end) {
        L->cur = t;
        return;
    }
    const char *s = L->p;
    const char c = *s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
        while (L->p < L->end && ((*L->p >= 'a' && *L->p <= 'z') || (*L->p >= 'A' && *L->p <= 'Z') ||
                                 (*L->p >= '0' && *L->p <= '9') || *L->p == '_'))
            L->p++;
        t.kind = T_NAME;
        t.s.p = s;
        t.s.n = (size_t)(L->p - s);
    } else if (c >= '0' && c <= '9') {
        bool is_float = false;
        const char *q = s;
        while (q < L->end && ((*q >= '0' && *q <= '9') || *q == '_')) q++;
        if (q + 1 < L->end && *q == '.' && q[1] >= '0' && q[1] <= '9') {
            is_float = true;
            q++;
            while (q < L->end && *q >= '0' && *q <= '9') q++;
        }
        if (q < L->end && (*q == 'e' || *q == 'E')) {
            const char *r = q + 1;
            if (r < L->end && (*r == '+' || *r == '-')) r++;
            if (r < L->end && *r >= '0' && *r <= '9') {
                is_float = true;
                q = r;
                while (q < L->end && *q >= '0' && *q <= '9') q++;
            }
        }
        char buf[64];
        size_t k = 0;
        for (const char *r = s; r < q && k + 1 < sizeof(buf); r++)
            if (*r != '_') buf[k++] = *r;
        buf[k] = '\0';
        if (is_float) {
            t.kind = T_FLOAT;
            t.f = strtod(buf, NULL);
        } else {
            t.kind = T_INT;
            char *e;
            unsigned long long v = strtoull(buf, &e, 10);
            if (v > (unsigned long long)INT64_MAX)
                fail(J, CODI_EUNSUPPORTED, "line %d: integer literal %s is too large", L->line, buf);
            t.i = (int64_t)v;
        }
        L->p = q;
    } else if (c == '\'' || c == '"') {
        const char *q = s + 1;
        /* unescape as Python does for the common escapes */
        char *tmp = jalloc(J, (size_t)(L->end - s) + 1);
        size_t n = 0;
        while (q < L->end && *q != c) {
            if (*q == '\\' && q + 1 < L->end) {
                q++;
                switch (*q) {
                case 'n': tmp[n++] = '\n'; break;
                case 't': tmp[n++] = '\t'; break;
                case 'r': tmp[n++] = '\r'; break;
                case '\\': tmp[n++] = '\\'; break;
                case '\'': tmp[n++] = '\''; break;
                case '"': tmp[n++] = '"'; break;
                case '\n': break;
                default: tmp[n++] = '\\'; tmp[n++] = *q; break;
                }
                q++;
            } else {
                tmp[n++] = *q++;
            }
        }
        if (q >= L->end)
            fail(J, CODI_EFORMAT, "line %d: unterminated string literal", L->line);
        t.kind = T_STR;
        t.s.p = tmp;
        t.s.n = n;
        L->p = q + 1;
    } else {
        static const char *const ops2[] = {"==", "!=", "<=", ">=", "//", "**"};
        t.kind = T_OP;
        t.s.p = s;
        t.s.n = 1;
        for (size_t k = 0; k < sizeof(ops2) / sizeof(ops2[0]); k++)
            if (L->p + 1 < L->end && s[0] == ops2[k][0] && s[1] == ops2[k][1])
                t.s.n = 2;
        if (t.s.n == 1 && !strchr("()[]{},:.|~+-*/%<>=!", c))
            fail(J, CODI_EFORMAT, "line %d: unexpected character '%c'", L->line, c);
        L->p += t.s.n;
    }
    L->cur = t;
}

static bool is_op(const lexer *L, const char *op) {
    return L->cur.kind == T_OP && str_eq(L->cur.s, op, strlen(op));
}

static bool is_kw(const lexer *L, const char *kw) {
    return L->cur.kind == T_NAME && str_eq(L->cur.s, kw, strlen(kw));
}

static void expect_op(lexer *L, const char *op) {
    if (!is_op(L, op))
        fail(L->J, CODI_EFORMAT, "line %d: expected '%s', found '%.*s'", L->line, op,
             (int)CODI_MIN(L->cur.s.n, 40), L->cur.kind == T_END ? "end of tag" : L->cur.s.p);
    lex_next(L);
}

static jstr expect_name(lexer *L) {
    if (L->cur.kind != T_NAME)
        fail(L->J, CODI_EFORMAT, "line %d: expected a name", L->line);
    jstr s = L->cur.s;
    lex_next(L);
    return s;
}

/* ------------------------------------------------------------ tree */

enum ntype {
    /* statements */
    N_TEXT, N_OUT, N_IF, N_FOR, N_SET, N_SETBLOCK, N_BREAK, N_CONTINUE, N_MACRO, N_BLOCK,
    /* expressions */
    E_LIT, E_NAME, E_ATTR, E_ITEM, E_SLICE, E_NEG, E_POS, E_NOT, E_BIN, E_AND, E_OR, E_COND,
    E_CALL, E_FILTER, E_TEST, E_LIST, E_DICT,
};

struct node {
    int type;
    int line;
    jstr name;         /* E_NAME/E_ATTR/E_FILTER/E_TEST/N_SET/N_MACRO/op of E_BIN; N_FOR: 1st target */
    jstr name2;        /* N_FOR second target; N_SET: attribute */
    jv lit;            /* E_LIT */
    node *a, *b, *c;   /* operands / iter / condition */
    node **args;       /* call/filter/test args, list items, dict k,v pairs, macro defaults */
    jstr *kw;          /* keyword names (NULL entries: positional) */
    int n_args;
    bool negate;       /* E_TEST: is not; E_BIN "not in" */
    node **body;       /* statements */
    int n_body;
    node **orelse;
    int n_orelse;
};

static node *mk_node(jctx *J, int type, int line) {
    node *n = jalloc(J, sizeof(node));
    n->type = type;
    n->line = line;
    return n;
}

typedef struct nvec {
    node **v;
    int n, cap;
} nvec;

static void nv_push(jctx *J, nvec *v, node *x) {
    if (v->n == v->cap) {
        int cap = v->cap ? v->cap * 2 : 8;
        node **nn = jalloc(J, (size_t)cap * sizeof(node *));
        if (v->n)
            memcpy(nn, v->v, (size_t)v->n * sizeof(node *));
        v->v = nn;
        v->cap = cap;
    }
    v->v[v->n++] = x;
}

static node *parse_expr(lexer *L, int depth);

static void check_depth(lexer *L, int depth) {
    if (depth > MAX_DEPTH)
        fail(L->J, CODI_ERANGE, "line %d: expression nests deeper than %d levels", L->line, MAX_DEPTH);
}

/* ( args ) after a call / filter / test; the '(' is current. */
static void parse_args(lexer *L, node *n, int depth) {
    jctx *J = L->J;
    expect_op(L, "(");
    nvec a = {0};
    jstr *kw = NULL;
    int kwcap = 0;
    while (!is_op(L, ")")) {
        jstr name = {NULL, 0};
        if (L->cur.kind == T_NAME) {
            /* name=value ? look ahead without consuming */
            const char *save_p = L->p;
            tok save = L->cur;
            lex_next(L);
            if (is_op(L, "=") ) {
                name = save.s;
                lex_next(L);
            } else {
                L->p = save_p;
                L->cur = save;
            }
        }
        node *e = parse_expr(L, depth + 1);
        nv_push(J, &a, e);
        if (a.n > kwcap) {
            int cap = kwcap ? kwcap * 2 : 8;
            jstr *nk = jalloc(J, (size_t)cap * sizeof(jstr));
            if (kwcap)
                memcpy(nk, kw, (size_t)kwcap * sizeof(jstr));
            kw = nk;
            kwcap = cap;
        }
        kw[a.n - 1] = name;
        if (!is_op(L, ","))
            break;
        lex_next(L);
    }
    expect_op(L, ")");
    n->args = a.v;
    n->n_args = a.n;
    n->kw = kw;
}

static node *parse_primary(lexer *L, int depth) {
    jctx *J = L->J;
    check_depth(L, depth);
    const tok t = L->cur;
    node *n;
    if (t.kind == T_INT || t.kind == T_FLOAT || t.kind == T_STR) {
        n = mk_node(J, E_LIT, L->line);
        if (t.kind == T_INT) n->lit = mk_int(t.i);
        else if (t.kind == T_FLOAT) n->lit = mk_float(t.f);
        else {
            n->lit.t = V_STR;
            n->lit.u.s = t.s;
        }
        lex_next(L);
        /* adjacent string literals concatenate, as in Python */
        while (t.kind == T_STR && L->cur.kind == T_STR) {
            jv s = mk_strn(J, NULL, n->lit.u.s.n + L->cur.s.n);
            memcpy((char *)s.u.s.p, n->lit.u.s.p, n->lit.u.s.n);
            memcpy((char *)s.u.s.p + n->lit.u.s.n, L->cur.s.p, L->cur.s.n);
            n->lit = s;
            lex_next(L);
        }
        return n;
    }
    if (t.kind == T_NAME) {
        lex_next(L);
        n = mk_node(J, E_LIT, L->line);
        if (str_eq(t.s, "true", 4) || str_eq(t.s, "True", 4)) n->lit = mk_bool(true);
        else if (str_eq(t.s, "false", 5) || str_eq(t.s, "False", 5)) n->lit = mk_bool(false);
        else if (str_eq(t.s, "none", 4) || str_eq(t.s, "None", 4)) n->lit = mk_none();
        else {
            n->type = E_NAME;
            n->name = t.s;
        }
        return n;
    }
    if (is_op(L, "(")) {
        lex_next(L);
        if (is_op(L, ")")) { /* empty tuple */
            lex_next(L);
            n = mk_node(J, E_LIST, L->line);
            n->negate = true; /* a tuple */
            return n;
        }
        node *e = parse_expr(L, depth + 1);
        if (is_op(L, ",")) { /* tuple */
            n = mk_node(J, E_LIST, L->line);
            n->negate = true;
            nvec items = {0};
            nv_push(J, &items, e);
            while (is_op(L, ",")) {
                lex_next(L);
                if (is_op(L, ")")) break;
                nv_push(J, &items, parse_expr(L, depth + 1));
            }
            n->args = items.v;
            n->n_args = items.n;
            e = n;
        }
        expect_op(L, ")");
        return e;
    }
    if (is_op(L, "[")) {
        lex_next(L);
        n = mk_node(J, E_LIST, L->line);
        nvec items = {0};
        while (!is_op(L, "]")) {
            nv_push(J, &items, parse_expr(L, depth + 1));
            if (!is_op(L, ",")) break;
            lex_next(L);
        }
        expect_op(L, "]");
        n->args = items.v;
        n->n_args = items.n;
        return n;
    }
    if (is_op(L, "{")) {
        lex_next(L);
        n = mk_node(J, E_DICT, L->line);
        nvec items = {0};
        while (!is_op(L, "}")) {
            nv_push(J, &items, parse_expr(L, depth + 1));
            expect_op(L, ":");
            nv_push(J, &items, parse_expr(L, depth + 1));
            if (!is_op(L, ",")) break;
            lex_next(L);
        }
        expect_op(L, "}");
        n->args = items.v;
        n->n_args = items.n;
        return n;
    }
    if (t.kind == T_END)
        fail(J, CODI_EFORMAT, "line %d: expression expected, found the end of the tag", L->line);
    fail(J, CODI_EFORMAT, "line %d: unexpected '%.*s'", L->line, (int)CODI_MIN(t.s.n, 20), t.s.p);
}

static node *parse_postfix(lexer *L, node *n, int depth) {
    jctx *J = L->J;
    for (;;) {
        if (is_op(L, ".")) {
            lex_next(L);
            node *a = mk_node(J, E_ATTR, L->line);
            a->a = n;
            if (L->cur.kind == T_INT) { /* x.0 is x[0] */
                a->type = E_ITEM;
                a->b = mk_node(J, E_LIT, L->line);
                a->b->lit = mk_int(L->cur.i);
                lex_next(L);
            } else {
                a->name = expect_name(L);
            }
            n = a;
        } else if (is_op(L, "[")) {
            lex_next(L);
            node *parts[3] = {NULL, NULL, NULL};
            int k = 0;
            bool slice = false;
            for (;;) {
                if (is_op(L, ":")) {
                    slice = true;
                    if (++k > 2)
                        fail(J, CODI_EFORMAT, "line %d: bad slice", L->line);
                    lex_next(L);
                    continue;
                }
                if (is_op(L, "]"))
                    break;
                if (parts[k])
                    fail(J, CODI_EFORMAT, "line %d: bad subscript", L->line);
                parts[k] = parse_expr(L, depth + 1);
            }
            expect_op(L, "]");
            node *a = mk_node(J, slice ? E_SLICE : E_ITEM, L->line);
            a->a = n;
            if (slice) {
                a->b = parts[0];
                a->c = parts[1];
                /* step goes into args[0] */
                a->args = jalloc(J, sizeof(node *));
                a->args[0] = parts[2];
                a->n_args = 1;
            } else {
                if (!parts[0])
                    fail(J, CODI_EFORMAT, "line %d: empty subscript", L->line);
                a->b = parts[0];
            }
            n = a;
        } else if (is_op(L, "(")) {
            node *c = mk_node(J, E_CALL, L->line);
            c->a = n;
            parse_args(L, c, depth);
            n = c;
        } else {
            return n;
        }
    }
}

/* filters (|) and tests (is) after a unary operand */
static node *parse_filters(lexer *L, node *n, int depth) {
    jctx *J = L->J;
    for (;;) {
        if (is_op(L, "|")) {
            lex_next(L);
            node *f = mk_node(J, E_FILTER, L->line);
            f->a = n;
            f->name = expect_name(L);
            while (is_op(L, ".")) { /* dotted filter names are not supported */
                fail(J, CODI_EUNSUPPORTED, "line %d: dotted filter names", L->line);
            }
            if (is_op(L, "("))
                parse_args(L, f, depth);
            n = parse_postfix(L, f, depth);
        } else if (is_kw(L, "is")) {
            lex_next(L);
            node *t = mk_node(J, E_TEST, L->line);
            t->a = n;
            if (is_kw(L, "not")) {
                t->negate = true;
                lex_next(L);
            }
            if (L->cur.kind == T_NAME) {
                t->name = expect_name(L);
            } else if (L->cur.kind == T_OP && (is_op(L, "==") || is_op(L, "!=") || is_op(L, "<") ||
                                               is_op(L, ">") || is_op(L, "<=") || is_op(L, ">="))) {
                t->name = L->cur.s;
                lex_next(L);
            } else {
                fail(J, CODI_EFORMAT, "line %d: test name expected after 'is'", L->line);
            }
            if (is_op(L, "(")) {
                parse_args(L, t, depth);
            } else if (L->cur.kind == T_INT || L->cur.kind == T_FLOAT || L->cur.kind == T_STR ||
                       (L->cur.kind == T_NAME && !is_kw(L, "and") && !is_kw(L, "or") &&
                        !is_kw(L, "else") && !is_kw(L, "if") && !is_kw(L, "is") && !is_kw(L, "in") &&
                        !is_kw(L, "not"))) {
                /* one argument without parentheses: "is divisibleby 3" */
                t->args = jalloc(J, sizeof(node *));
                t->kw = jalloc(J, sizeof(jstr));
                t->args[0] = parse_postfix(L, parse_primary(L, depth + 1), depth + 1);
                t->n_args = 1;
            }
            n = t;
        } else {
            return n;
        }
    }
}

static node *parse_unary(lexer *L, int depth, bool with_filter) {
    jctx *J = L->J;
    check_depth(L, depth);
    node *n;
    if (is_op(L, "-") || is_op(L, "+")) {
        const bool neg = is_op(L, "-");
        lex_next(L);
        n = mk_node(J, neg ? E_NEG : E_POS, L->line);
        n->a = parse_unary(L, depth + 1, false);
    } else {
        n = parse_primary(L, depth);
    }
    n = parse_postfix(L, n, depth);
    if (with_filter)
        n = parse_filters(L, n, depth);
    return n;
}

static node *mk_bin(jctx *J, const char *op, node *a, node *b, int line) {
    node *n = mk_node(J, E_BIN, line);
    n->name.p = op;
    n->name.n = strlen(op);
    n->a = a;
    n->b = b;
    return n;
}

static node *parse_pow(lexer *L, int depth) {
    node *a = parse_unary(L, depth, true);
    while (is_op(L, "**")) {
        lex_next(L);
        a = mk_bin(L->J, "**", a, parse_unary(L, depth, true), L->line);
    }
    return a;
}

static node *parse_math2(lexer *L, int depth) {
    check_depth(L, depth);
    node *a = parse_pow(L, depth);
    for (;;) {
        const char *op = is_op(L, "*") ? "*" : is_op(L, "/") ? "/" : is_op(L, "//") ? "//" :
                         is_op(L, "%") ? "%" : NULL;
        if (!op)
            return a;
        lex_next(L);
        a = mk_bin(L->J, op, a, parse_pow(L, depth), L->line);
    }
}

static node *parse_concat(lexer *L, int depth) {
    node *a = parse_math2(L, depth);
    while (is_op(L, "~")) {
        lex_next(L);
        a = mk_bin(L->J, "~", a, parse_math2(L, depth), L->line);
    }
    return a;
}

static node *parse_math1(lexer *L, int depth) {
    node *a = parse_concat(L, depth);
    for (;;) {
        const char *op = is_op(L, "+") ? "+" : is_op(L, "-") ? "-" : NULL;
        if (!op)
            return a;
        lex_next(L);
        a = mk_bin(L->J, op, a, parse_concat(L, depth), L->line);
    }
}

static node *parse_compare(lexer *L, int depth) {
    node *a = parse_math1(L, depth);
    for (;;) {
        static const char *const ops[] = {"==", "!=", "<=", ">=", "<", ">"};
        const char *op = NULL;
        for (size_t k = 0; k < sizeof(ops) / sizeof(ops[0]) && !op; k++)
            if (is_op(L, ops[k]))
                op = ops[k];
        bool negate = false;
        if (!op && is_kw(L, "in")) {
            op = "in";
        } else if (!op && is_kw(L, "not")) {
            /* "not in" */
            const char *save_p = L->p;
            tok save = L->cur;
            lex_next(L);
            if (!is_kw(L, "in")) {
                L->p = save_p;
                L->cur = save;
                return a;
            }
            op = "in";
            negate = true;
        }
        if (!op)
            return a;
        lex_next(L);
        a = mk_bin(L->J, op, a, parse_math1(L, depth), L->line);
        a->negate = negate;
    }
}

static node *parse_not(lexer *L, int depth) {
    check_depth(L, depth);
    if (is_kw(L, "not")) {
        lex_next(L);
        node *n = mk_node(L->J, E_NOT, L->line);
        n->a = parse_not(L, depth + 1);
        return n;
    }
    return parse_compare(L, depth);
}

static node *parse_and(lexer *L, int depth) {
    node *a = parse_not(L, depth);
    while (is_kw(L, "and")) {
        lex_next(L);
        node *n = mk_node(L->J, E_AND, L->line);
        n->a = a;
        n->b = parse_not(L, depth);
        a = n;
    }
    return a;
}

static node *parse_or(lexer *L, int depth) {
    node *a = parse_and(L, depth);
    while (is_kw(L, "or")) {
        lex_next(L);
        node *n = mk_node(L->J, E_OR, L->line);
        n->a = a;
        n->b = parse_and(L, depth);
        a = n;
    }
    return a;
}

static node *parse_expr(lexer *L, int depth) {
    check_depth(L, depth);
    node *a = parse_or(L, depth);
    while (is_kw(L, "if")) {
        lex_next(L);
        node *n = mk_node(L->J, E_COND, L->line);
        n->a = a;
        n->b = parse_or(L, depth);
        if (is_kw(L, "else")) {
            lex_next(L);
            n->c = parse_expr(L, depth + 1);
        }
        a = n;
    }
    return a;
}

/* ------------------------------------------------------------ statements */

typedef struct parser {
    jctx *J;
    segs *S;
    size_t i;
} parser;

static void lex_init(lexer *L, jctx *J, const seg *s) {
    L->J = J;
    L->p = s->p;
    L->end = s->p + s->n;
    L->line = s->line;
    lex_next(L);
}

static void expect_end(lexer *L) {
    if (L->cur.kind != T_END)
        fail(L->J, CODI_EFORMAT, "line %d: unexpected '%.*s' at the end of the tag", L->line,
             (int)CODI_MIN(L->cur.s.n, 20), L->cur.s.p);
}

/* First word of a statement segment. */
static jstr stmt_word(const seg *s) {
    const char *p = s->p, *e = s->p + s->n;
    while (p < e && is_space(*p)) p++;
    const char *w = p;
    while (p < e && ((*p >= 'a' && *p <= 'z') || *p == '_')) p++;
    jstr r = {w, (size_t)(p - w)};
    return r;
}

static bool word_in(jstr w, const char *const *set) {
    for (; set && *set; set++)
        if (str_eq(w, *set, strlen(*set)))
            return true;
    return false;
}

/* Parse statements until a {% word %} in ends (returned, not consumed;
 * NULL word when the template ends). */
static nvec parse_block(parser *P, const char *const *ends, jstr *end_word, int depth) {
    jctx *J = P->J;
    if (depth > MAX_DEPTH)
        fail(J, CODI_ERANGE, "blocks nest deeper than %d levels", MAX_DEPTH);
    nvec out = {0};
    while (P->i < P->S->n) {
        const seg *s = &P->S->v[P->i];
        if (s->kind == SEG_TEXT) {
            P->i++;
            if (s->n) {
                node *n = mk_node(J, N_TEXT, s->line);
                n->name.p = s->p;
                n->name.n = s->n;
                nv_push(J, &out, n);
            }
            continue;
        }
        if (s->kind == SEG_EXPR) {
            P->i++;
            lexer L;
            lex_init(&L, J, s);
            node *n = mk_node(J, N_OUT, s->line);
            n->a = parse_expr(&L, 0);
            expect_end(&L);
            nv_push(J, &out, n);
            continue;
        }
        const jstr w = stmt_word(s);
        if (word_in(w, ends)) {
            *end_word = w;
            return out;
        }
        P->i++;
        lexer L;
        lex_init(&L, J, s);
        lex_next(&L); /* past the keyword */
        node *n;
        if (str_eq(w, "if", 2)) {
            n = mk_node(J, N_IF, s->line);
            n->a = parse_expr(&L, 0);
            expect_end(&L);
            static const char *const if_ends[] = {"elif", "else", "endif", NULL};
            node *cur = n;
            for (;;) {
                jstr ew = {NULL, 0};
                nvec body = parse_block(P, if_ends, &ew, depth + 1);
                cur->body = body.v;
                cur->n_body = body.n;
                if (!ew.p)
                    fail(J, CODI_EFORMAT, "line %d: {%% if %%} without {%% endif %%}", s->line);
                const seg *es = &P->S->v[P->i++];
                lexer L2;
                lex_init(&L2, J, es);
                lex_next(&L2);
                if (str_eq(ew, "elif", 4)) {
                    node *e = mk_node(J, N_IF, es->line);
                    e->a = parse_expr(&L2, 0);
                    expect_end(&L2);
                    cur->orelse = jalloc(J, sizeof(node *));
                    cur->orelse[0] = e;
                    cur->n_orelse = 1;
                    cur = e;
                    continue;
                }
                expect_end(&L2);
                if (str_eq(ew, "else", 4)) {
                    static const char *const else_ends[] = {"endif", NULL};
                    jstr ew2 = {NULL, 0};
                    nvec eb = parse_block(P, else_ends, &ew2, depth + 1);
                    if (!ew2.p)
                        fail(J, CODI_EFORMAT, "line %d: {%% else %%} without {%% endif %%}", es->line);
                    cur->orelse = eb.v;
                    cur->n_orelse = eb.n;
                    lexer L3;
                    lex_init(&L3, J, &P->S->v[P->i++]);
                    lex_next(&L3);
                    expect_end(&L3);
                }
                break;
            }
        } else if (str_eq(w, "for", 3)) {
            n = mk_node(J, N_FOR, s->line);
            n->name = expect_name(&L);
            if (is_op(&L, ",")) {
                lex_next(&L);
                n->name2 = expect_name(&L);
            }
            if (!is_kw(&L, "in"))
                fail(J, CODI_EFORMAT, "line %d: expected 'in' in {%% for %%}", s->line);
            lex_next(&L);
            n->a = parse_or(&L, 0); /* not a conditional: "if" filters the loop */
            if (is_kw(&L, "if")) {
                lex_next(&L);
                n->b = parse_expr(&L, 0);
            }
            if (is_kw(&L, "recursive"))
                fail(J, CODI_EUNSUPPORTED, "line %d: recursive loops", s->line);
            expect_end(&L);
            static const char *const for_ends[] = {"else", "endfor", NULL};
            jstr ew = {NULL, 0};
            nvec body = parse_block(P, for_ends, &ew, depth + 1);
            if (!ew.p)
                fail(J, CODI_EFORMAT, "line %d: {%% for %%} without {%% endfor %%}", s->line);
            n->body = body.v;
            n->n_body = body.n;
            P->i++;
            if (str_eq(ew, "else", 4)) {
                static const char *const e2[] = {"endfor", NULL};
                jstr ew2 = {NULL, 0};
                nvec eb = parse_block(P, e2, &ew2, depth + 1);
                if (!ew2.p)
                    fail(J, CODI_EFORMAT, "line %d: {%% for %%} without {%% endfor %%}", s->line);
                n->orelse = eb.v;
                n->n_orelse = eb.n;
                P->i++;
            }
        } else if (str_eq(w, "set", 3)) {
            n = mk_node(J, N_SET, s->line);
            n->name = expect_name(&L);
            if (is_op(&L, ".")) {
                lex_next(&L);
                n->name2 = expect_name(&L);
            }
            if (is_op(&L, ","))
                fail(J, CODI_EUNSUPPORTED, "line %d: {%% set %%} of several names", s->line);
            if (L.cur.kind == T_END) { /* block set */
                if (n->name2.p)
                    fail(J, CODI_EUNSUPPORTED, "line %d: block {%% set %%} of an attribute", s->line);
                n->type = N_SETBLOCK;
                static const char *const e[] = {"endset", NULL};
                jstr ew = {NULL, 0};
                nvec body = parse_block(P, e, &ew, depth + 1);
                if (!ew.p)
                    fail(J, CODI_EFORMAT, "line %d: {%% set %%} without {%% endset %%}", s->line);
                n->body = body.v;
                n->n_body = body.n;
                P->i++;
            } else {
                expect_op(&L, "=");
                n->b = parse_expr(&L, 0);
                expect_end(&L);
            }
        } else if (str_eq(w, "break", 5) || str_eq(w, "continue", 8)) {
            n = mk_node(J, w.n == 5 ? N_BREAK : N_CONTINUE, s->line);
            expect_end(&L);
        } else if (str_eq(w, "macro", 5)) {
            n = mk_node(J, N_MACRO, s->line);
            n->name = expect_name(&L);
            expect_op(&L, "(");
            nvec defs = {0};
            jstr *params = jalloc(J, 64 * sizeof(jstr));
            int np = 0;
            while (!is_op(&L, ")")) {
                if (np == 64)
                    fail(J, CODI_ERANGE, "line %d: more than 64 macro parameters", s->line);
                params[np++] = expect_name(&L);
                node *d = NULL;
                if (is_op(&L, "=")) {
                    lex_next(&L);
                    d = parse_expr(&L, 0);
                }
                nv_push(J, &defs, d);
                if (!is_op(&L, ","))
                    break;
                lex_next(&L);
            }
            expect_op(&L, ")");
            expect_end(&L);
            n->kw = params;
            n->args = defs.v;
            n->n_args = np;
            static const char *const e[] = {"endmacro", NULL};
            jstr ew = {NULL, 0};
            nvec body = parse_block(P, e, &ew, depth + 1);
            if (!ew.p)
                fail(J, CODI_EFORMAT, "line %d: {%% macro %%} without {%% endmacro %%}", s->line);
            n->body = body.v;
            n->n_body = body.n;
            P->i++;
        } else if (str_eq(w, "generation", 10)) {
            /* transformers' assistant-mask marker: renders its body */
            n = mk_node(J, N_BLOCK, s->line);
            expect_end(&L);
            static const char *const e[] = {"endgeneration", NULL};
            jstr ew = {NULL, 0};
            nvec body = parse_block(P, e, &ew, depth + 1);
            if (!ew.p)
                fail(J, CODI_EFORMAT, "line %d: {%% generation %%} without {%% endgeneration %%}", s->line);
            n->body = body.v;
            n->n_body = body.n;
            P->i++;
        } else {
            if (w.n == 0)
                fail(J, CODI_EFORMAT, "line %d: empty or malformed {%% %%} tag", s->line);
            static const char *const known_unsupported[] = {
                "call", "filter", "include", "import", "from", "extends", "block", "with", "raw",
                "autoescape", "do", "trans", NULL};
            if (word_in(w, known_unsupported))
                fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja feature '{%% %.*s %%}'", s->line,
                     (int)w.n, w.p);
            fail(J, CODI_EFORMAT, "line %d: unexpected '{%% %.*s %%}'", s->line, (int)CODI_MIN(w.n, 40), w.p);
        }
        nv_push(J, &out, n);
    }
    end_word->p = NULL;
    return out;
}

/* ------------------------------------------------------------ scopes */

static void push_frame(jctx *J, bool barrier) {
    if (J->n_frames >= (int)(sizeof(J->frames) / sizeof(J->frames[0])))
        fail(J, CODI_ERANGE, "scopes nest deeper than %d levels", MAX_DEPTH);
    J->frames[J->n_frames].vars = dict_new(J);
    J->frames[J->n_frames].barrier = barrier;
    J->n_frames++;
}

static jv lookup(jctx *J, jstr name) {
    for (int f = J->n_frames - 1; f >= 0; f--) {
        jv *v = dict_find(J->frames[f].vars, name.p, name.n);
        if (v)
            return *v;
        if (J->frames[f].barrier && f > 2)
            f = 2; /* next: the template's top level (1), then the globals (0) */
    }
    return mk_undef();
}

static void assign(jctx *J, jstr name, jv v) { dict_set(J, J->frames[J->n_frames - 1].vars, name, v); }

/* ------------------------------------------------------------ evaluation */

enum { F_RAISE = 1, F_NAMESPACE, F_RANGE, F_STRFTIME, F_DICT };

static jv eval(jctx *J, const node *n, int depth);
static int exec_block(jctx *J, node *const *body, int nb, int depth);

static int64_t as_int(jctx *J, const jv *v, int line, const char *what) {
    if (v->t == V_INT) return v->u.i;
    if (v->t == V_BOOL) return v->u.b;
    if (v->t == V_FLOAT && v->u.f == floor(v->u.f) && fabs(v->u.f) < 9e18) return (int64_t)v->u.f;
    fail(J, CODI_EINVAL, "line %d: %s must be an integer, not %s", line, what, type_name(v));
}

static bool is_num(const jv *v) { return v->t == V_INT || v->t == V_FLOAT || v->t == V_BOOL; }

static double as_f(const jv *v) {
    return v->t == V_FLOAT ? v->u.f : v->t == V_INT ? (double)v->u.i : (double)v->u.b;
}

static bool values_equal(const jv *a, const jv *b, int depth) {
    if (depth > MAX_DEPTH) return false;
    if (is_num(a) && is_num(b)) {
        if (a->t != V_FLOAT && b->t != V_FLOAT) return as_f(a) == as_f(b) && (a->t == V_BOOL ? a->u.b : a->u.i) == (b->t == V_BOOL ? b->u.b : b->u.i);
        return as_f(a) == as_f(b);
    }
    if (a->t != b->t) return false;
    switch (a->t) {
    case V_UNDEF:
    case V_NONE: return true;
    case V_STR: return a->u.s.n == b->u.s.n && memcmp(a->u.s.p, b->u.s.p, a->u.s.n) == 0;
    case V_LIST:
        if (a->u.l->n != b->u.l->n) return false;
        for (size_t i = 0; i < a->u.l->n; i++)
            if (!values_equal(&a->u.l->v[i], &b->u.l->v[i], depth + 1)) return false;
        return true;
    case V_DICT:
        if (a->u.d == b->u.d) return true;
        if (a->u.d->n != b->u.d->n) return false;
        for (size_t i = 0; i < a->u.d->n; i++) {
            const jv *o = dict_find(b->u.d, a->u.d->k[i].p, a->u.d->k[i].n);
            if (!o || !values_equal(&a->u.d->v[i], o, depth + 1)) return false;
        }
        return true;
    default: return a->u.fn == b->u.fn;
    }
}

/* -1, 0, 1; fails for types Python cannot order */
static int compare(jctx *J, const jv *a, const jv *b, int line) {
    if (is_num(a) && is_num(b)) {
        const double x = as_f(a), y = as_f(b);
        return x < y ? -1 : x > y;
    }
    if (a->t == V_STR && b->t == V_STR) {
        const size_t m = CODI_MIN(a->u.s.n, b->u.s.n);
        int c = memcmp(a->u.s.p, b->u.s.p, m);
        if (c) return c < 0 ? -1 : 1;
        return a->u.s.n < b->u.s.n ? -1 : a->u.s.n > b->u.s.n;
    }
    fail(J, CODI_EINVAL, "line %d: cannot order %s and %s", line, type_name(a), type_name(b));
}

/* UTF-8 code points of a string: byte offset of each, plus the end. */
static size_t *cp_offsets(jctx *J, jstr s, size_t *n_cp) {
    size_t n = 0;
    for (size_t i = 0; i < s.n; i++)
        n += ((unsigned char)s.p[i] & 0xC0) != 0x80;
    size_t *off = jalloc(J, (n + 1) * sizeof(size_t));
    size_t k = 0;
    for (size_t i = 0; i < s.n; i++)
        if (((unsigned char)s.p[i] & 0xC0) != 0x80)
            off[k++] = i;
    off[k] = s.n;
    *n_cp = n;
    return off;
}

static size_t str_len_cp(jstr s) {
    size_t n = 0;
    for (size_t i = 0; i < s.n; i++)
        n += ((unsigned char)s.p[i] & 0xC0) != 0x80;
    return n;
}

static jv get_item(jctx *J, const jv *obj, const jv *key, int line) {
    if (obj->t == V_DICT) {
        if (key->t != V_STR)
            return mk_undef();
        const jv *v = dict_find(obj->u.d, key->u.s.p, key->u.s.n);
        return v ? *v : mk_undef();
    }
    if (obj->t == V_LIST || obj->t == V_STR) {
        if (key->t != V_INT && key->t != V_BOOL)
            return mk_undef();
        int64_t i = key->t == V_INT ? key->u.i : key->u.b;
        if (obj->t == V_LIST) {
            const int64_t n = (int64_t)obj->u.l->n;
            if (i < 0) i += n;
            if (i < 0 || i >= n) return mk_undef();
            return obj->u.l->v[i];
        }
        size_t ncp;
        size_t *off = cp_offsets(J, obj->u.s, &ncp);
        if (i < 0) i += (int64_t)ncp;
        if (i < 0 || i >= (int64_t)ncp) return mk_undef();
        return mk_strn(J, obj->u.s.p + off[i], off[i + 1] - off[i]);
    }
    if (obj->t == V_UNDEF)
        fail(J, CODI_EINVAL, "line %d: subscript of an undefined value", line);
    return mk_undef();
}

static jv slice(jctx *J, const jv *obj, const jv *a, const jv *b, const jv *c, int line) {
    int64_t stepv = c->t == V_UNDEF || c->t == V_NONE ? 1 : as_int(J, c, line, "slice step");
    if (stepv == 0)
        fail(J, CODI_EINVAL, "line %d: slice step cannot be zero", line);
    size_t ncp = 0, *off = NULL;
    int64_t n;
    if (obj->t == V_LIST) {
        n = (int64_t)obj->u.l->n;
    } else if (obj->t == V_STR) {
        off = cp_offsets(J, obj->u.s, &ncp);
        n = (int64_t)ncp;
    } else {
        fail(J, CODI_EINVAL, "line %d: cannot slice a %s", line, type_name(obj));
    }
    /* Python's slice.indices */
    int64_t lo, hi;
    if (stepv > 0) {
        lo = a->t == V_UNDEF || a->t == V_NONE ? 0 : as_int(J, a, line, "slice start");
        hi = b->t == V_UNDEF || b->t == V_NONE ? n : as_int(J, b, line, "slice end");
        if (lo < 0) lo = lo + n < 0 ? 0 : lo + n;
        if (lo > n) lo = n;
        if (hi < 0) hi = hi + n < 0 ? 0 : hi + n;
        if (hi > n) hi = n;
    } else {
        lo = a->t == V_UNDEF || a->t == V_NONE ? n - 1 : as_int(J, a, line, "slice start");
        hi = b->t == V_UNDEF || b->t == V_NONE ? -1 : as_int(J, b, line, "slice end");
        if (a->t != V_UNDEF && a->t != V_NONE) {
            if (lo < 0) lo = lo + n < 0 ? -1 : lo + n;
            if (lo >= n) lo = n - 1;
        }
        if (b->t != V_UNDEF && b->t != V_NONE) {
            if (hi < 0) hi = hi + n < 0 ? -1 : hi + n;
            if (hi >= n) hi = n - 1;
        }
    }
    if (obj->t == V_LIST) {
        jlist *l = list_new(J);
        for (int64_t i = lo; stepv > 0 ? i < hi : i > hi; i += stepv)
            list_push(J, l, obj->u.l->v[i]);
        return mk_list(l);
    }
    obuf *tmp = tmp_buf(J);
    for (int64_t i = lo; stepv > 0 ? i < hi : i > hi; i += stepv)
        ob_put(J, tmp, obj->u.s.p + off[i], off[i + 1] - off[i]);
    return tmp_take(J, tmp);
}

static jv concat_str(jctx *J, jstr a, jstr b) {
    jv r = mk_strn(J, NULL, a.n + b.n);
    if (a.n) memcpy((char *)r.u.s.p, a.p, a.n);
    if (b.n) memcpy((char *)r.u.s.p + a.n, b.p, b.n);
    return r;
}

static bool contains(jctx *J, const jv *hay, const jv *needle, int line) {
    if (hay->t == V_STR) {
        if (needle->t != V_STR)
            fail(J, CODI_EINVAL, "line %d: 'in <string>' needs a string, not %s", line, type_name(needle));
        if (needle->u.s.n == 0) return true;
        if (needle->u.s.n > hay->u.s.n) return false;
        for (size_t i = 0; i + needle->u.s.n <= hay->u.s.n; i++)
            if (memcmp(hay->u.s.p + i, needle->u.s.p, needle->u.s.n) == 0) return true;
        return false;
    }
    if (hay->t == V_LIST) {
        for (size_t i = 0; i < hay->u.l->n; i++)
            if (values_equal(&hay->u.l->v[i], needle, 0)) return true;
        return false;
    }
    if (hay->t == V_DICT)
        return needle->t == V_STR && dict_find(hay->u.d, needle->u.s.p, needle->u.s.n) != NULL;
    fail(J, CODI_EINVAL, "line %d: 'in' needs a string, list or mapping, not %s", line, type_name(hay));
}

static jv binop(jctx *J, const node *n, jv a, jv b) {
    const jstr op = n->name;
    const int line = n->line;
    if (str_eq(op, "~", 1)) {
        jv sa = to_str(J, &a), sb = to_str(J, &b);
        return concat_str(J, sa.u.s, sb.u.s);
    }
    if (str_eq(op, "==", 2)) return mk_bool(values_equal(&a, &b, 0));
    if (str_eq(op, "!=", 2)) return mk_bool(!values_equal(&a, &b, 0));
    if (str_eq(op, "<", 1)) return mk_bool(compare(J, &a, &b, line) < 0);
    if (str_eq(op, ">", 1)) return mk_bool(compare(J, &a, &b, line) > 0);
    if (str_eq(op, "<=", 2)) return mk_bool(compare(J, &a, &b, line) <= 0);
    if (str_eq(op, ">=", 2)) return mk_bool(compare(J, &a, &b, line) >= 0);
    if (str_eq(op, "in", 2)) return mk_bool(contains(J, &b, &a, line) != n->negate);
    if (str_eq(op, "+", 1)) {
        if (a.t == V_STR && b.t == V_STR) return concat_str(J, a.u.s, b.u.s);
        if (a.t == V_LIST && b.t == V_LIST) {
            jlist *l = list_new(J);
            for (size_t i = 0; i < a.u.l->n; i++) list_push(J, l, a.u.l->v[i]);
            for (size_t i = 0; i < b.u.l->n; i++) list_push(J, l, b.u.l->v[i]);
            return mk_list(l);
        }
    }
    if (str_eq(op, "*", 1)) {
        const jv *s = a.t == V_STR || a.t == V_LIST ? &a : b.t == V_STR || b.t == V_LIST ? &b : NULL;
        const jv *k = s == &a ? &b : &a;
        if (s && (k->t == V_INT || k->t == V_BOOL)) {
            int64_t times = k->t == V_INT ? k->u.i : k->u.b;
            if (times < 0) times = 0;
            const size_t unit = s->t == V_STR ? s->u.s.n : s->u.l->n;
            if (unit == 0)
                times = 0; /* '' * 10^10 is '' at once, not after 10^10 steps */
            if (unit && (uint64_t)times > MAX_ITEMS / unit)
                fail(J, CODI_ERANGE, "line %d: repetition larger than %u items", line, MAX_ITEMS);
            if (s->t == V_STR) {
                jv r = mk_strn(J, NULL, unit * (size_t)times);
                for (int64_t t = 0; t < times; t++)
                    memcpy((char *)r.u.s.p + (size_t)t * unit, s->u.s.p, unit);
                return r;
            }
            jlist *l = list_new(J);
            for (int64_t t = 0; t < times; t++)
                for (size_t i = 0; i < unit; i++) list_push(J, l, s->u.l->v[i]);
            return mk_list(l);
        }
    }
    if (!is_num(&a) || !is_num(&b)) {
        if (str_eq(op, "%", 1) && a.t == V_STR)
            fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja feature: '%%' string formatting", line);
        fail(J, CODI_EINVAL, "line %d: unsupported operand types for %.*s: '%s' and '%s'", line, (int)op.n,
             op.p, type_name(&a), type_name(&b));
    }
    const bool ints = a.t != V_FLOAT && b.t != V_FLOAT;
    const int64_t x = ints ? (a.t == V_INT ? a.u.i : a.u.b) : 0, y = ints ? (b.t == V_INT ? b.u.i : b.u.b) : 0;
    const double fx = as_f(&a), fy = as_f(&b);
    if (str_eq(op, "+", 1) || str_eq(op, "-", 1) || str_eq(op, "*", 1)) {
        if (ints) {
            int64_t r;
            bool ovf = str_eq(op, "+", 1) ? __builtin_add_overflow(x, y, &r)
                       : str_eq(op, "-", 1) ? __builtin_sub_overflow(x, y, &r)
                                            : __builtin_mul_overflow(x, y, &r);
            if (ovf)
                fail(J, CODI_ERANGE, "line %d: integer overflow", line);
            return mk_int(r);
        }
        return mk_float(str_eq(op, "+", 1) ? fx + fy : str_eq(op, "-", 1) ? fx - fy : fx * fy);
    }
    if (str_eq(op, "/", 1)) {
        if (fy == 0.0)
            fail(J, CODI_EINVAL, "line %d: division by zero", line);
        return mk_float(fx / fy);
    }
    if (str_eq(op, "//", 2) || str_eq(op, "%", 1)) {
        const bool floordiv = op.n == 2;
        if (ints) {
            if (y == 0)
                fail(J, CODI_EINVAL, "line %d: division by zero", line);
            if (x == INT64_MIN && y == -1)
                fail(J, CODI_ERANGE, "line %d: integer overflow", line);
            int64_t q = x / y, r = x % y;
            if (r != 0 && ((r < 0) != (y < 0))) {
                q -= 1;
                r += y;
            }
            return mk_int(floordiv ? q : r);
        }
        if (fy == 0.0)
            fail(J, CODI_EINVAL, "line %d: division by zero", line);
        const double q = floor(fx / fy);
        return mk_float(floordiv ? q : fx - q * fy);
    }
    if (str_eq(op, "**", 2)) {
        if (ints && y >= 0) {
            /* Square-and-multiply: at most 63 steps whatever y is (a loop
             * of y multiplications never ends for 1 ** 99999999999). */
            int64_t r = 1, b = x;
            for (int64_t e = y; e > 0; e >>= 1) {
                if ((e & 1) && __builtin_mul_overflow(r, b, &r))
                    fail(J, CODI_ERANGE, "line %d: integer overflow", line);
                if (e > 1 && __builtin_mul_overflow(b, b, &b))
                    fail(J, CODI_ERANGE, "line %d: integer overflow", line);
            }
            return mk_int(r);
        }
        return mk_float(pow(fx, fy));
    }
    fail(J, CODI_EFORMAT, "line %d: unknown operator '%.*s'", line, (int)op.n, op.p);
}

/* Arguments of a call: positional values and keyword values. */
typedef struct cargs {
    int n;
    jv v[16];
    jstr kw[16]; /* p == NULL: positional */
} cargs;

static void eval_args(jctx *J, const node *n, cargs *a, int depth) {
    if (n->n_args > 16)
        fail(J, CODI_ERANGE, "line %d: more than 16 arguments", n->line);
    a->n = n->n_args;
    for (int i = 0; i < n->n_args; i++) {
        a->v[i] = eval(J, n->args[i], depth + 1);
        a->kw[i] = n->kw ? n->kw[i] : (jstr){NULL, 0};
    }
}

/* positional argument i, or keyword name, or undefined */
static jv arg(const cargs *a, int i, const char *name) {
    int pos = 0;
    for (int k = 0; k < a->n; k++) {
        if (!a->kw[k].p) {
            if (pos++ == i) return a->v[k];
        } else if (name && str_eq(a->kw[k], name, strlen(name))) {
            return a->v[k];
        }
    }
    return mk_undef();
}

static jstr need_str(jctx *J, const jv *v, int line, const char *what) {
    if (v->t != V_STR)
        fail(J, CODI_EINVAL, "line %d: %s needs a string, not %s", line, what, type_name(v));
    return v->u.s;
}

/* strip chars (default whitespace) from the left and/or right */
static jv strip(jctx *J, jstr s, const jv *chars, bool left, bool right) {
    size_t a = 0, b = s.n;
    const bool ws = chars->t == V_UNDEF || chars->t == V_NONE;
    const jstr cs = ws ? (jstr){NULL, 0} : chars->u.s;
    if (!ws && chars->t != V_STR)
        fail(J, CODI_EINVAL, "strip characters must be a string");
#define IN_SET(c) (ws ? is_space(c) : memchr(cs.p, (c), cs.n) != NULL)
    if (left) while (a < b && IN_SET(s.p[a])) a++;
    if (right) while (b > a && IN_SET(s.p[b - 1])) b--;
#undef IN_SET
    jv r = {V_STR, {.s = {s.p + a, b - a}}};
    return r;
}

static jv split(jctx *J, jstr s, const jv *sep, int64_t maxsplit, int line) {
    jlist *l = list_new(J);
    if (sep->t == V_UNDEF || sep->t == V_NONE) {
        size_t i = 0;
        while (i < s.n) {
            while (i < s.n && is_space(s.p[i])) i++;
            if (i >= s.n) break;
            size_t j = i;
            if (maxsplit >= 0 && (int64_t)l->n >= maxsplit) {
                size_t e = s.n;
                while (e > i && is_space(s.p[e - 1])) e--;
                list_push(J, l, mk_strn(J, s.p + i, e - i));
                break;
            }
            while (j < s.n && !is_space(s.p[j])) j++;
            list_push(J, l, mk_strn(J, s.p + i, j - i));
            i = j;
        }
        return mk_list(l);
    }
    const jstr d = need_str(J, sep, line, "split");
    if (d.n == 0)
        fail(J, CODI_EINVAL, "line %d: empty separator", line);
    size_t i = 0;
    for (;;) {
        size_t j = i;
        bool found = false;
        if (maxsplit < 0 || (int64_t)l->n < maxsplit)
            for (; j + d.n <= s.n; j++)
                if (memcmp(s.p + j, d.p, d.n) == 0) {
                    found = true;
                    break;
                }
        if (!found) {
            list_push(J, l, mk_strn(J, s.p + i, s.n - i));
            break;
        }
        list_push(J, l, mk_strn(J, s.p + i, j - i));
        i = j + d.n;
    }
    return mk_list(l);
}

static jv replace(jctx *J, jstr s, jstr from, jstr to, int64_t count) {
    obuf *b = tmp_buf(J);
    size_t i = 0;
    int64_t done = 0;
    if (from.n == 0) {
        /* Python inserts `to` between every character (and at both ends) */
        for (; i <= s.n; i++) {
            if (count < 0 || done < count) {
                ob_put(J, b, to.p, to.n);
                done++;
            }
            if (i < s.n) ob_put(J, b, s.p + i, 1);
        }
    } else {
        while (i < s.n) {
            if ((count < 0 || done < count) && i + from.n <= s.n && memcmp(s.p + i, from.p, from.n) == 0) {
                ob_put(J, b, to.p, to.n);
                i += from.n;
                done++;
            } else {
                ob_put(J, b, s.p + i, 1);
                i++;
            }
        }
    }
    return tmp_take(J, b);
}

static jv case_map(jctx *J, jstr s, int mode) { /* 0 lower, 1 upper, 2 title, 3 capitalize */
    jv r = mk_strn(J, s.p, s.n);
    char *p = (char *)r.u.s.p;
    bool start = true;
    for (size_t i = 0; i < s.n; i++) {
        const char c = p[i];
        const bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
        bool up = mode == 1 || ((mode == 2 || mode == 3) && start && alpha);
        if (mode == 3 && !(start && i == 0)) up = false;
        if (mode == 3 && i == 0) up = true;
        if (up && c >= 'a' && c <= 'z') p[i] = (char)(c - 32);
        else if (!up && mode != 1 && c >= 'A' && c <= 'Z') p[i] = (char)(c + 32);
        if (mode == 2) start = !alpha;
        else start = false;
    }
    return r;
}

static jv list_of(jctx *J, const jv *v, int line) {
    if (v->t == V_LIST) return *v;
    jlist *l = list_new(J);
    if (v->t == V_STR) {
        size_t ncp, *off = cp_offsets(J, v->u.s, &ncp);
        for (size_t i = 0; i < ncp; i++) list_push(J, l, mk_strn(J, v->u.s.p + off[i], off[i + 1] - off[i]));
    } else if (v->t == V_DICT && !v->u.d->ns) {
        for (size_t i = 0; i < v->u.d->n; i++) {
            jv k = {V_STR, {.s = v->u.d->k[i]}};
            list_push(J, l, k);
        }
    } else if (v->t != V_UNDEF) {
        fail(J, CODI_EINVAL, "line %d: a %s is not iterable", line, type_name(v));
    }
    return mk_list(l);
}

static jv dict_items(jctx *J, const jdict *d) {
    jlist *l = list_new(J);
    for (size_t i = 0; i < d->n; i++) {
        jlist *pair = list_new(J);
        pair->tuple = true;
        jv k = {V_STR, {.s = d->k[i]}};
        list_push(J, pair, k);
        list_push(J, pair, d->v[i]);
        list_push(J, l, mk_list(pair));
    }
    return mk_list(l);
}

/* Python methods of strings, dicts and lists; false when name is none. */
static bool call_method(jctx *J, const jv *obj, jstr name, const cargs *a, int line, jv *out) {
#define M(s) str_eq(name, s, sizeof(s) - 1)
    if (obj->t == V_STR) {
        const jstr s = obj->u.s;
        jv a0 = arg(a, 0, NULL), a1 = arg(a, 1, NULL);
        if (M("strip")) { *out = strip(J, s, &a0, true, true); return true; }
        if (M("lstrip")) { *out = strip(J, s, &a0, true, false); return true; }
        if (M("rstrip")) { *out = strip(J, s, &a0, false, true); return true; }
        if (M("lower")) { *out = case_map(J, s, 0); return true; }
        if (M("upper")) { *out = case_map(J, s, 1); return true; }
        if (M("title")) { *out = case_map(J, s, 2); return true; }
        if (M("capitalize")) { *out = case_map(J, s, 3); return true; }
        if (M("split")) {
            jv sep = arg(a, 0, "sep"), mx = arg(a, 1, "maxsplit");
            *out = split(J, s, &sep, mx.t == V_UNDEF ? -1 : as_int(J, &mx, line, "maxsplit"), line);
            return true;
        }
        if (M("startswith") || M("endswith")) {
            const bool sw = M("startswith");
            jlist one = {1, 1, &a0, false};
            const jlist *cands = a0.t == V_LIST ? a0.u.l : &one;
            bool r = false;
            for (size_t i = 0; i < cands->n && !r; i++) {
                const jstr p = need_str(J, &cands->v[i], line, sw ? "startswith" : "endswith");
                r = p.n <= s.n && memcmp(sw ? s.p : s.p + s.n - p.n, p.p, p.n) == 0;
            }
            *out = mk_bool(r);
            return true;
        }
        if (M("replace")) {
            jv c = arg(a, 2, "count");
            *out = replace(J, s, need_str(J, &a0, line, "replace"), need_str(J, &a1, line, "replace"),
                           c.t == V_UNDEF ? -1 : as_int(J, &c, line, "count"));
            return true;
        }
        if (M("find") || M("count")) {
            const jstr sub = need_str(J, &a0, line, "find");
            int64_t pos = -1, cnt = 0;
            if (sub.n == 0) {
                pos = 0;
                cnt = (int64_t)str_len_cp(s) + 1;
            } else {
                for (size_t i = 0; i + sub.n <= s.n; i++)
                    if (memcmp(s.p + i, sub.p, sub.n) == 0) {
                        if (pos < 0) pos = (int64_t)str_len_cp((jstr){s.p, i});
                        cnt++;
                        i += sub.n - 1;
                    }
            }
            *out = mk_int(M("find") ? pos : cnt);
            return true;
        }
        if (M("join")) {
            jv items = list_of(J, &a0, line);
            jv r = mk_strn(J, "", 0);
            for (size_t i = 0; i < items.u.l->n; i++) {
                if (i) r = concat_str(J, r.u.s, s);
                r = concat_str(J, r.u.s, need_str(J, &items.u.l->v[i], line, "join"));
            }
            *out = r;
            return true;
        }
        if (M("isdigit") || M("isspace") || M("isalpha") || M("isalnum") || M("islower") || M("isupper")) {
            bool r = s.n > 0, cased = false;
            for (size_t i = 0; i < s.n && r; i++) {
                const char c = s.p[i];
                const bool dig = c >= '0' && c <= '9', lo = c >= 'a' && c <= 'z', hi = c >= 'A' && c <= 'Z';
                if (M("isdigit")) r = dig;
                else if (M("isspace")) r = is_space(c);
                else if (M("isalpha")) r = lo || hi;
                else if (M("isalnum")) r = lo || hi || dig;
                else if (M("islower")) { if (hi) r = false; cased |= lo; }
                else { if (lo) r = false; cased |= hi; }
            }
            if (M("islower") || M("isupper")) r = r && cased;
            *out = mk_bool(r);
            return true;
        }
        if (M("format"))
            fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja feature: str.format()", line);
        return false;
    }
    if (obj->t == V_DICT && !obj->u.d->ns) {
        if (M("items")) { *out = dict_items(J, obj->u.d); return true; }
        if (M("keys")) { *out = list_of(J, obj, line); return true; }
        if (M("values")) {
            jlist *l = list_new(J);
            for (size_t i = 0; i < obj->u.d->n; i++) list_push(J, l, obj->u.d->v[i]);
            *out = mk_list(l);
            return true;
        }
        if (M("get")) {
            jv k = arg(a, 0, NULL), def = arg(a, 1, NULL);
            jv v = k.t == V_STR ? get_item(J, obj, &k, line) : mk_undef();
            *out = v.t == V_UNDEF ? (def.t == V_UNDEF ? mk_none() : def) : v;
            return true;
        }
        return false;
    }
    if (obj->t == V_LIST) {
        if (M("append") || M("extend") || M("pop") || M("insert") || M("remove"))
            fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja feature: list.%.*s() (lists are immutable "
                 "in a sandboxed template)", line, (int)name.n, name.p);
        if (M("index") || M("count")) {
            jv x = arg(a, 0, NULL);
            int64_t idx = -1, cnt = 0;
            for (size_t i = 0; i < obj->u.l->n; i++)
                if (values_equal(&obj->u.l->v[i], &x, 0)) {
                    if (idx < 0) idx = (int64_t)i;
                    cnt++;
                }
            if (M("index") && idx < 0)
                fail(J, CODI_EINVAL, "line %d: list.index(): value not in list", line);
            *out = mk_int(M("index") ? idx : cnt);
            return true;
        }
    }
    return false;
#undef M
}

static jv call_macro(jctx *J, const node *m, const cargs *a, int line, int depth);

static jv call_value(jctx *J, const jv *f, const cargs *a, int line, int depth) {
    if (f->t == V_MACRO)
        return call_macro(J, f->u.macro, a, line, depth);
    if (f->t != V_FUNC)
        fail(J, f->t == V_UNDEF ? CODI_EUNSUPPORTED : CODI_EINVAL, "line %d: %s is not callable%s", line,
             type_name(f), f->t == V_UNDEF ? " (unknown function)" : "");
    switch (f->u.fn) {
    case F_RAISE: {
        jv m = arg(a, 0, NULL);
        jv s = to_str(J, &m);
        fail(J, CODI_EINVAL, "raised: %.*s", (int)CODI_MIN(s.u.s.n, 300), s.u.s.p);
    }
    case F_NAMESPACE:
    case F_DICT: {
        jdict *d = dict_new(J);
        d->ns = f->u.fn == F_NAMESPACE;
        for (int i = 0; i < a->n; i++) {
            if (!a->kw[i].p) {
                if (a->v[i].t == V_DICT) {
                    for (size_t k = 0; k < a->v[i].u.d->n; k++)
                        dict_set(J, d, a->v[i].u.d->k[k], a->v[i].u.d->v[k]);
                    continue;
                }
                fail(J, CODI_EINVAL, "line %d: namespace()/dict() take keyword arguments", line);
            }
            dict_set(J, d, a->kw[i], a->v[i]);
        }
        return mk_dict(d);
    }
    case F_RANGE: {
        int64_t lo = 0, hi, st = 1;
        jv a0 = arg(a, 0, NULL), a1 = arg(a, 1, NULL), a2 = arg(a, 2, NULL);
        if (a1.t == V_UNDEF) {
            hi = as_int(J, &a0, line, "range()");
        } else {
            lo = as_int(J, &a0, line, "range()");
            hi = as_int(J, &a1, line, "range()");
            if (a2.t != V_UNDEF) st = as_int(J, &a2, line, "range()");
        }
        if (st == 0)
            fail(J, CODI_EINVAL, "line %d: range() step is zero", line);
        const double count = ((double)hi - (double)lo) / (double)st;
        if (count > (double)MAX_RANGE)
            fail(J, CODI_ERANGE, "line %d: range() of more than %d items", line, MAX_RANGE);
        jlist *l = list_new(J);
        for (int64_t i = lo; st > 0 ? i < hi : i > hi; i += st) {
            list_push(J, l, mk_int(i));
            step(J);
        }
        return mk_list(l);
    }
    case F_STRFTIME: {
        jv fmt = arg(a, 0, NULL);
        const jstr fs = need_str(J, &fmt, line, "strftime_now");
        char fbuf[128], obufx[256];
        snprintf(fbuf, sizeof(fbuf), "%.*s", (int)CODI_MIN(fs.n, 120), fs.p);
        time_t now = time(NULL);
        struct tm tmv;
        localtime_r(&now, &tmv);
        size_t k = strftime(obufx, sizeof(obufx), fbuf, &tmv);
        return mk_strn(J, obufx, k);
    }
    }
    fail(J, CODI_EFORMAT, "line %d: bad function", line);
}

static jv call_macro(jctx *J, const node *m, const cargs *a, int line, int depth) {
    if (J->macro_depth >= MAX_MACRO_DEPTH)
        fail(J, CODI_ERANGE, "line %d: macro calls nest deeper than %d", line, MAX_MACRO_DEPTH);
    /* evaluate defaults in the caller's scope, then bind */
    jv vals[64];
    for (int i = 0; i < m->n_args; i++) {
        jv v = arg(a, i, NULL);
        char nm[128];
        snprintf(nm, sizeof(nm), "%.*s", (int)CODI_MIN(m->kw[i].n, 120), m->kw[i].p);
        jv k = arg(a, 1 << 20, nm);
        if (k.t != V_UNDEF) v = k;
        if (v.t == V_UNDEF && m->args[i]) v = eval(J, m->args[i], depth + 1);
        vals[i] = v;
    }
    push_frame(J, true);
    for (int i = 0; i < m->n_args; i++) assign(J, m->kw[i], vals[i]);
    obuf *body = tmp_buf(J);
    obuf *saved = J->out;
    J->out = body;
    J->macro_depth++;
    exec_block(J, m->body, m->n_body, depth + 1);
    J->macro_depth--;
    J->out = saved;
    J->n_frames--;
    return tmp_take(J, body);
}

static jv apply_filter(jctx *J, const node *n, jv v, const cargs *a) {
    const jstr f = n->name;
    const int line = n->line;
#define F(s) str_eq(f, s, sizeof(s) - 1)
    jv a0 = arg(a, 0, NULL);
    if (F("trim")) {
        jv chars = arg(a, 0, "chars");
        jv s = to_str(J, &v);
        return strip(J, s.u.s, &chars, true, true);
    }
    if (F("length") || F("count")) {
        if (v.t == V_STR) return mk_int((int64_t)str_len_cp(v.u.s));
        if (v.t == V_LIST) return mk_int((int64_t)v.u.l->n);
        if (v.t == V_DICT) return mk_int((int64_t)v.u.d->n);
        if (v.t == V_UNDEF) return mk_int(0);
        fail(J, CODI_EINVAL, "line %d: length of a %s", line, type_name(&v));
    }
    if (F("lower") || F("upper") || F("title") || F("capitalize")) {
        jv s = to_str(J, &v);
        return case_map(J, s.u.s, F("lower") ? 0 : F("upper") ? 1 : F("title") ? 2 : 3);
    }
    if (F("default") || F("d")) {
        jv def = arg(a, 0, "default_value"), boolean = arg(a, 1, "boolean");
        if (def.t == V_UNDEF) def = mk_str(J, "");
        if (v.t == V_UNDEF || (truthy(&boolean) && !truthy(&v))) return def;
        return v;
    }
    if (F("join")) {
        jv sep = arg(a, 0, "d"), attr = arg(a, 1, "attribute");
        jv items = list_of(J, &v, line);
        jv r = mk_strn(J, "", 0);
        const jstr sp = sep.t == V_UNDEF ? (jstr){"", 0} : to_str(J, &sep).u.s;
        for (size_t i = 0; i < items.u.l->n; i++) {
            jv it = items.u.l->v[i];
            if (attr.t == V_STR) it = get_item(J, &it, &attr, line);
            if (i) r = concat_str(J, r.u.s, sp);
            r = concat_str(J, r.u.s, to_str(J, &it).u.s);
        }
        return r;
    }
    if (F("first") || F("last")) {
        jv l = list_of(J, &v, line);
        if (!l.u.l->n) return mk_undef();
        return l.u.l->v[F("first") ? 0 : l.u.l->n - 1];
    }
    if (F("replace")) {
        jv a1 = arg(a, 1, NULL), c = arg(a, 2, "count");
        jv s = to_str(J, &v);
        return replace(J, s.u.s, to_str(J, &a0).u.s, to_str(J, &a1).u.s,
                       c.t == V_UNDEF ? -1 : as_int(J, &c, line, "count"));
    }
    if (F("string")) return to_str(J, &v);
    if (F("safe") || F("e") || F("escape") || F("forceescape")) {
        if (F("safe")) return v;
        fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja feature: '%.*s' filter", line, (int)f.n, f.p);
    }
    if (F("int")) {
        if (v.t == V_INT) return v;
        if (v.t == V_BOOL) return mk_int(v.u.b);
        if (v.t == V_FLOAT) return mk_int((int64_t)v.u.f);
        if (v.t == V_STR) {
            char buf[64];
            snprintf(buf, sizeof(buf), "%.*s", (int)CODI_MIN(v.u.s.n, 60), v.u.s.p);
            char *e;
            long long x = strtoll(buf, &e, 10);
            return mk_int(*e == '\0' && e != buf ? x : 0);
        }
        return mk_int(0);
    }
    if (F("float")) {
        if (is_num(&v)) return mk_float(as_f(&v));
        if (v.t == V_STR) {
            char buf[64];
            snprintf(buf, sizeof(buf), "%.*s", (int)CODI_MIN(v.u.s.n, 60), v.u.s.p);
            char *e;
            double x = strtod(buf, &e);
            return mk_float(*e == '\0' && e != buf ? x : 0.0);
        }
        return mk_float(0.0);
    }
    if (F("abs")) {
        if (v.t == V_INT) return mk_int(v.u.i < 0 ? -v.u.i : v.u.i);
        if (v.t == V_FLOAT) return mk_float(fabs(v.u.f));
        fail(J, CODI_EINVAL, "line %d: abs of a %s", line, type_name(&v));
    }
    if (F("list")) return list_of(J, &v, line);
    if (F("reverse")) {
        if (v.t == V_STR) {
            jv none = mk_none(), m1 = mk_int(-1);
            return slice(J, &v, &none, &none, &m1, line);
        }
        jv l = list_of(J, &v, line);
        jlist *r = list_new(J);
        for (size_t i = l.u.l->n; i-- > 0;) list_push(J, r, l.u.l->v[i]);
        return mk_list(r);
    }
    if (F("items")) {
        if (v.t == V_DICT) return dict_items(J, v.u.d);
        if (v.t == V_UNDEF) return mk_list(list_new(J));
        fail(J, CODI_EINVAL, "line %d: items of a %s", line, type_name(&v));
    }
    if (F("tojson")) {
        jv ind = arg(a, 0, "indent");
        obuf *b = tmp_buf(J);
        put_json(J, b, &v, ind.t == V_UNDEF || ind.t == V_NONE ? -1 : (int)as_int(J, &ind, line, "indent"), 0);
        return tmp_take(J, b);
    }
    if (F("map")) {
        jv attr = arg(a, 0, "attribute");
        if (a->n != 1 || attr.t != V_STR || !a->kw[0].p)
            fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja feature: map() other than map(attribute=...)", line);
        jv l = list_of(J, &v, line);
        jlist *r = list_new(J);
        for (size_t i = 0; i < l.u.l->n; i++) list_push(J, r, get_item(J, &l.u.l->v[i], &attr, line));
        return mk_list(r);
    }
    fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja filter '%.*s'", line, (int)CODI_MIN(f.n, 40), f.p);
#undef F
}

static bool apply_test(jctx *J, const node *n, const jv *v, const cargs *a) {
    const jstr t = n->name;
    const int line = n->line;
#define T(s) str_eq(t, s, sizeof(s) - 1)
    jv a0 = arg(a, 0, NULL);
    if (T("defined")) return v->t != V_UNDEF;
    if (T("undefined")) return v->t == V_UNDEF;
    if (T("none")) return v->t == V_NONE;
    if (T("string")) return v->t == V_STR;
    if (T("number")) return v->t == V_INT || v->t == V_FLOAT;
    if (T("integer")) return v->t == V_INT;
    if (T("float")) return v->t == V_FLOAT;
    if (T("boolean")) return v->t == V_BOOL;
    if (T("true")) return v->t == V_BOOL && v->u.b;
    if (T("false")) return v->t == V_BOOL && !v->u.b;
    if (T("mapping")) return v->t == V_DICT && !v->u.d->ns;
    if (T("iterable")) return v->t == V_STR || v->t == V_LIST || (v->t == V_DICT && !v->u.d->ns);
    if (T("sequence")) return v->t == V_STR || v->t == V_LIST || (v->t == V_DICT && !v->u.d->ns);
    if (T("callable")) return v->t == V_FUNC || v->t == V_MACRO;
    if (T("even") || T("odd")) {
        const int64_t x = as_int(J, v, line, "even/odd");
        return (x % 2 == 0) == T("even");
    }
    if (T("divisibleby")) {
        const int64_t d = as_int(J, &a0, line, "divisibleby");
        if (d == 0) fail(J, CODI_EINVAL, "line %d: divisibleby(0)", line);
        return as_int(J, v, line, "divisibleby") % d == 0;
    }
    if (T("eq") || T("equalto") || T("==")) return values_equal(v, &a0, 0);
    if (T("ne") || T("!=")) return !values_equal(v, &a0, 0);
    if (T("lt") || T("lessthan") || T("<")) return compare(J, v, &a0, line) < 0;
    if (T("gt") || T("greaterthan") || T(">")) return compare(J, v, &a0, line) > 0;
    if (T("le") || T("<=")) return compare(J, v, &a0, line) <= 0;
    if (T("ge") || T(">=")) return compare(J, v, &a0, line) >= 0;
    if (T("in")) return contains(J, &a0, v, line);
    if (T("sameas")) return v->t == a0.t && values_equal(v, &a0, 0);
    if (T("lower") || T("upper")) {
        if (v->t != V_STR) return false;
        jv r;
        cargs none = {0};
        call_method(J, v, T("lower") ? (jstr){"islower", 7} : (jstr){"isupper", 7}, &none, line, &r);
        return r.u.b;
    }
    fail(J, CODI_EUNSUPPORTED, "line %d: unsupported Jinja test '%.*s'", line, (int)CODI_MIN(t.n, 40), t.p);
#undef T
}

static jv eval(jctx *J, const node *n, int depth) {
    step(J);
    if (depth > MAX_EVAL_DEPTH)
        fail(J, CODI_ERANGE, "line %d: an expression nests deeper than %d operations", n->line, MAX_EVAL_DEPTH);
    switch (n->type) {
    case E_LIT:
        return n->lit;
    case E_NAME:
        return lookup(J, n->name);
    case E_ATTR: {
        jv o = eval(J, n->a, depth + 1);
        if (o.t == V_DICT) {
            const jv *v = dict_find(o.u.d, n->name.p, n->name.n);
            return v ? *v : mk_undef();
        }
        if (o.t == V_UNDEF)
            fail(J, CODI_EINVAL, "line %d: attribute '%.*s' of an undefined value", n->line,
                 (int)CODI_MIN(n->name.n, 40), n->name.p);
        return mk_undef();
    }
    case E_ITEM: {
        jv o = eval(J, n->a, depth + 1);
        jv k = eval(J, n->b, depth + 1);
        return get_item(J, &o, &k, n->line);
    }
    case E_SLICE: {
        jv o = eval(J, n->a, depth + 1);
        jv u = mk_undef();
        jv a = n->b ? eval(J, n->b, depth + 1) : u;
        jv b = n->c ? eval(J, n->c, depth + 1) : u;
        jv c = n->args[0] ? eval(J, n->args[0], depth + 1) : u;
        return slice(J, &o, &a, &b, &c, n->line);
    }
    case E_NEG:
    case E_POS: {
        jv v = eval(J, n->a, depth + 1);
        if (v.t == V_INT) {
            if (n->type == E_NEG && v.u.i == INT64_MIN) fail(J, CODI_ERANGE, "line %d: integer overflow", n->line);
            return mk_int(n->type == E_NEG ? -v.u.i : v.u.i);
        }
        if (v.t == V_FLOAT) return mk_float(n->type == E_NEG ? -v.u.f : v.u.f);
        if (v.t == V_BOOL) return mk_int(n->type == E_NEG ? -(int64_t)v.u.b : v.u.b);
        fail(J, CODI_EINVAL, "line %d: bad operand type for unary %c: '%s'", n->line,
             n->type == E_NEG ? '-' : '+', type_name(&v));
    }
    case E_NOT: {
        jv v = eval(J, n->a, depth + 1);
        return mk_bool(!truthy(&v));
    }
    case E_AND: {
        jv a = eval(J, n->a, depth + 1);
        return truthy(&a) ? eval(J, n->b, depth + 1) : a;
    }
    case E_OR: {
        jv a = eval(J, n->a, depth + 1);
        return truthy(&a) ? a : eval(J, n->b, depth + 1);
    }
    case E_COND: {
        jv c = eval(J, n->b, depth + 1);
        if (truthy(&c)) return eval(J, n->a, depth + 1);
        return n->c ? eval(J, n->c, depth + 1) : mk_undef();
    }
    case E_BIN: {
        jv a = eval(J, n->a, depth + 1);
        jv b = eval(J, n->b, depth + 1);
        return binop(J, n, a, b);
    }
    case E_LIST: {
        jlist *l = list_new(J);
        l->tuple = n->negate;
        for (int i = 0; i < n->n_args; i++) list_push(J, l, eval(J, n->args[i], depth + 1));
        return mk_list(l);
    }
    case E_DICT: {
        jdict *d = dict_new(J);
        for (int i = 0; i + 1 < n->n_args; i += 2) {
            jv k = eval(J, n->args[i], depth + 1);
            if (k.t != V_STR)
                fail(J, CODI_EUNSUPPORTED, "line %d: mapping keys other than strings", n->line);
            dict_set(J, d, k.u.s, eval(J, n->args[i + 1], depth + 1));
        }
        return mk_dict(d);
    }
    case E_CALL: {
        cargs a;
        eval_args(J, n, &a, depth);
        if (n->a->type == E_ATTR) {
            jv obj = eval(J, n->a->a, depth + 1);
            jv r;
            if (call_method(J, &obj, n->a->name, &a, n->line, &r))
                return r;
            if (obj.t != V_DICT)
                fail(J, CODI_EUNSUPPORTED, "line %d: unsupported method %s.%.*s()", n->line, type_name(&obj),
                     (int)CODI_MIN(n->a->name.n, 40), n->a->name.p);
        }
        jv f = eval(J, n->a, depth + 1);
        if (f.t == V_UNDEF && n->a->type == E_NAME)
            fail(J, CODI_EUNSUPPORTED, "line %d: unknown function '%.*s'", n->line,
                 (int)CODI_MIN(n->a->name.n, 40), n->a->name.p);
        return call_value(J, &f, &a, n->line, depth);
    }
    case E_FILTER: {
        jv v = eval(J, n->a, depth + 1);
        cargs a;
        eval_args(J, n, &a, depth);
        return apply_filter(J, n, v, &a);
    }
    case E_TEST: {
        jv v = eval(J, n->a, depth + 1);
        cargs a;
        eval_args(J, n, &a, depth);
        return mk_bool(apply_test(J, n, &v, &a) != n->negate);
    }
    }
    fail(J, CODI_EFORMAT, "line %d: bad expression", n->line);
}

enum { FLOW_NONE = 0, FLOW_BREAK, FLOW_CONTINUE };

static int exec_block(jctx *J, node *const *body, int nb, int depth) {
    if (depth > MAX_DEPTH * 2)
        fail(J, CODI_ERANGE, "blocks nest too deep");
    for (int i = 0; i < nb; i++) {
        const node *n = body[i];
        step(J);
        switch (n->type) {
        case N_TEXT:
            ob_put(J, J->out, n->name.p, n->name.n);
            break;
        case N_OUT: {
            jv v = eval(J, n->a, depth + 1);
            put_str_value(J, J->out, &v, 0);
            break;
        }
        case N_IF: {
            jv c = eval(J, n->a, depth + 1);
            int fl = truthy(&c) ? exec_block(J, n->body, n->n_body, depth + 1)
                                : exec_block(J, n->orelse, n->n_orelse, depth + 1);
            if (fl) return fl;
            break;
        }
        case N_FOR: {
            jv it = eval(J, n->a, depth + 1);
            if (it.t == V_DICT && !it.u.d->ns)
                it = list_of(J, &it, n->line);
            else if (it.t == V_STR || it.t == V_UNDEF)
                it = list_of(J, &it, n->line);
            else if (it.t != V_LIST)
                fail(J, CODI_EINVAL, "line %d: cannot loop over a %s", n->line, type_name(&it));
            /* the loop filter is applied first: loop.* count kept items */
            jlist *items = it.u.l;
            if (n->b) {
                jlist *kept = list_new(J);
                for (size_t k = 0; k < items->n; k++) {
                    push_frame(J, false);
                    if (n->name2.p) {
                        const jv *e = &items->v[k];
                        if (e->t != V_LIST || e->u.l->n != 2)
                            fail(J, CODI_EINVAL, "line %d: cannot unpack into two names", n->line);
                        assign(J, n->name, e->u.l->v[0]);
                        assign(J, n->name2, e->u.l->v[1]);
                    } else {
                        assign(J, n->name, items->v[k]);
                    }
                    jv c = eval(J, n->b, depth + 1);
                    J->n_frames--;
                    if (truthy(&c)) list_push(J, kept, items->v[k]);
                }
                items = kept;
            }
            if (items->n == 0) {
                int fl = exec_block(J, n->orelse, n->n_orelse, depth + 1);
                if (fl) return fl;
                break;
            }
            const size_t len = items->n;
            for (size_t k = 0; k < len; k++) {
                push_frame(J, false);
                jdict *loop = dict_new(J);
                dict_setc(J, loop, "index", mk_int((int64_t)k + 1));
                dict_setc(J, loop, "index0", mk_int((int64_t)k));
                dict_setc(J, loop, "revindex", mk_int((int64_t)(len - k)));
                dict_setc(J, loop, "revindex0", mk_int((int64_t)(len - k - 1)));
                dict_setc(J, loop, "first", mk_bool(k == 0));
                dict_setc(J, loop, "last", mk_bool(k + 1 == len));
                dict_setc(J, loop, "length", mk_int((int64_t)len));
                dict_setc(J, loop, "previtem", k ? items->v[k - 1] : mk_undef());
                dict_setc(J, loop, "nextitem", k + 1 < len ? items->v[k + 1] : mk_undef());
                dict_setc(J, loop, "depth", mk_int(1));
                dict_setc(J, loop, "depth0", mk_int(0));
                assign(J, (jstr){"loop", 4}, mk_dict(loop));
                if (n->name2.p) {
                    const jv *e = &items->v[k];
                    if (e->t != V_LIST || e->u.l->n != 2)
                        fail(J, CODI_EINVAL, "line %d: cannot unpack into two names", n->line);
                    assign(J, n->name, e->u.l->v[0]);
                    assign(J, n->name2, e->u.l->v[1]);
                } else {
                    assign(J, n->name, items->v[k]);
                }
                int fl = exec_block(J, n->body, n->n_body, depth + 1);
                J->n_frames--;
                if (fl == FLOW_BREAK) break;
            }
            break;
        }
        case N_SET: {
            jv v = eval(J, n->b, depth + 1);
            if (n->name2.p) {
                jv ns = lookup(J, n->name);
                if (ns.t != V_DICT || !ns.u.d->ns)
                    fail(J, CODI_EINVAL, "line %d: cannot set an attribute of a %s (only of a namespace)",
                         n->line, type_name(&ns));
                dict_set(J, ns.u.d, n->name2, v);
            } else {
                assign(J, n->name, v);
            }
            break;
        }
        case N_SETBLOCK: {
            obuf *b = tmp_buf(J);
            obuf *saved = J->out;
            J->out = b;
            exec_block(J, n->body, n->n_body, depth + 1);
            J->out = saved;
            assign(J, n->name, tmp_take(J, b));
            break;
        }
        case N_MACRO: {
            jv m = {V_MACRO, {.macro = n}};
            assign(J, n->name, m);
            break;
        }
        case N_BLOCK: {
            int fl = exec_block(J, n->body, n->n_body, depth + 1);
            if (fl) return fl;
            break;
        }
        case N_BREAK:
            return FLOW_BREAK;
        case N_CONTINUE:
            return FLOW_CONTINUE;
        default:
            fail(J, CODI_EFORMAT, "line %d: bad statement", n->line);
        }
    }
    return FLOW_NONE;
}

/* ------------------------------------------------------------ entry */

static void define_fn(jctx *J, const char *name, int fn) {
    jv v = {V_FUNC, {.fn = fn}};
    dict_setc(J, J->frames[0].vars, name, v);
}

int codi_jinja_render_chat(const char *tmpl, const codi_jinja_chat *chat, char **out, char *err,
                           size_t errlen) {
    if (!out)
        return codi_errorf(err, errlen, CODI_EINVAL, "chat: out is NULL");
    *out = NULL;
    if (!tmpl || !chat)
        return codi_errorf(err, errlen, CODI_EINVAL, "chat: no template");
    jctx *J = calloc(1, sizeof(jctx));
    if (!J)
        return codi_errorf(err, errlen, CODI_ENOMEM, "out of memory");
    J->err = err;
    J->errlen = errlen;
    J->src = tmpl;
    char *volatile text = NULL;
    if (setjmp(J->jb) == 0) {
        segs S = {0};
        segment(J, tmpl, &S);
        parser P = {J, &S, 0};
        jstr ew = {NULL, 0};
        nvec prog = parse_block(&P, NULL, &ew, 0);
        if (P.i < S.n) {
            const jstr w = stmt_word(&S.v[P.i]);
            fail(J, CODI_EFORMAT, "line %d: unexpected '{%% %.*s %%}'", S.v[P.i].line, (int)CODI_MIN(w.n, 40), w.p);
        }
        push_frame(J, false); /* globals */
        define_fn(J, "raise_exception", F_RAISE);
        define_fn(J, "namespace", F_NAMESPACE);
        define_fn(J, "range", F_RANGE);
        define_fn(J, "strftime_now", F_STRFTIME);
        define_fn(J, "dict", F_DICT);
        jlist *msgs = list_new(J);
        for (size_t i = 0; i < chat->n; i++) {
            jdict *m = dict_new(J);
            dict_setc(J, m, "role", mk_str(J, chat->roles[i]));
            dict_setc(J, m, "content", mk_str(J, chat->contents[i]));
            list_push(J, msgs, mk_dict(m));
        }
        dict_setc(J, J->frames[0].vars, "messages", mk_list(msgs));
        dict_setc(J, J->frames[0].vars, "add_generation_prompt", mk_bool(chat->add_generation_prompt));
        dict_setc(J, J->frames[0].vars, "bos_token", mk_str(J, chat->bos_token ? chat->bos_token : ""));
        dict_setc(J, J->frames[0].vars, "eos_token", mk_str(J, chat->eos_token ? chat->eos_token : ""));
        push_frame(J, false); /* template top level */
        obuf *result = tmp_buf(J);
        J->out = result;
        exec_block(J, prog.v, prog.n, 0);
        if (!result->p) {
            result->p = malloc(1);
            if (!result->p)
                fail(J, CODI_ENOMEM, "out of memory");
            result->p[0] = '\0';
        }
        text = result->p;
        result->p = NULL;
    }
    const int rc = J->rc;
    for (obuf *b = J->tmps; b; b = b->next_tmp)
        free(b->p);
    while (J->arena) {
        arena_blk *nx = J->arena->next;
        free(J->arena);
        J->arena = nx;
    }
    free(J);
    if (rc) {
        free(text);
        return rc;
    }
    *out = text;
    return 0;
}
