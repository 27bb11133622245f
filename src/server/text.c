/* Byte buffers, UTF-8 checks and the JSON string escaper of the server
 * (SSE chunks are written by hand: no cJSON tree per token). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

/* Length of the valid UTF-8 sequence at s[0..n), 0 if invalid; -k when
 * it is a valid but incomplete prefix (k bytes present). */
static int utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    int len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        min = 0x10000;
    } else {
        return 0;
    }
    unsigned cp = c & (0x3Fu >> (len - 1));
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -i;
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
        /* Reject overlongs / surrogates / > U+10FFFF as soon as known. */
        if (i == 1) {
            if (len == 3 && c == 0xE0 && s[1] < 0xA0)
                return 0;
            if (len == 3 && c == 0xED && s[1] > 0x9F)
                return 0;
            if (len == 4 && c == 0xF0 && s[1] < 0x90)
                return 0;
            if (len == 4 && c == 0xF4 && s[1] > 0x8F)
                return 0;
        }
    }
    if (cp < min)
        return 0;
    return len;
}

size_t srv_utf8_complete_len(const char *s, size_t n) {
    /* Only the last (up to 3) bytes can be an unfinished sequence. */
    size_t start = n > 3 ? n - 3 : 0;
    for (size_t i = start; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if ((c & 0xC0) == 0x80)
            continue;
        int k = utf8_seq((const unsigned char *)s + i, n - i);
        if (k < 0)
            return i;
    }
    return n;
}

bool srv_utf8_valid(const char *s, size_t n) {
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        int k = utf8_seq(u + i, n - i);
        if (k <= 0)
            return false;
        i += (size_t)k;
    }
    return true;
}

static int reserve(srv_buf *b, size_t extra) {
    if (b->len + extra + 1 <= b->cap)
        return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc < b->len + extra + 1)
        nc *= 2;
    char *p = realloc(b->p, nc);
    if (!p)
        return CODI_ENOMEM;
    b->p = p;
    b->cap = nc;
    return 0;
}

int srv_buf_put(srv_buf *b, const char *s, size_t n) {
    if (reserve(b, n))
        return CODI_ENOMEM;
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int srv_buf_puts(srv_buf *b, const char *s) { return srv_buf_put(b, s, strlen(s)); }

int srv_buf_printf(srv_buf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || reserve(b, (size_t)n))
        return CODI_ENOMEM;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int srv_buf_json_str(srv_buf *b, const char *s, size_t n) {
    if (reserve(b, n + 2))
        return CODI_ENOMEM;
    b->p[b->len++] = '"';
    const unsigned char *u = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = u[i];
        int rc = 0;
        if (c >= 0x80) {
            int k = utf8_seq(u + i, n - i);
            if (k <= 0) {
                rc = srv_buf_put(b, "\xEF\xBF\xBD", 3);
                i++;
            } else {
                rc = srv_buf_put(b, s + i, (size_t)k);
                i += (size_t)k;
            }
        } else {
            char esc[8];
            const char *e = NULL;
            switch (c) {
            case '"': e = "\\\""; break;
            case '\\': e = "\\\\"; break;
            case '\n': e = "\\n"; break;
            case '\r': e = "\\r"; break;
            case '\t': e = "\\t"; break;
            default:
                if (c < 0x20 || c == 0x7F) {
                    snprintf(esc, sizeof(esc), "\\u%04x", c);
                    e = esc;
                }
            }
            rc = e ? srv_buf_puts(b, e) : srv_buf_put(b, s + i, 1);
            i++;
        }
        if (rc)
            return rc;
    }
    return srv_buf_put(b, "\"", 1);
}

void srv_buf_free(srv_buf *b) {
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

bool srv_json_depth_ok(const char *s, size_t n, int max_depth) {
    int depth = 0;
    bool in_str = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_str) {
            if (c == '\\')
                i++; /* skip the escaped character (\" stays in the string) */
            else if (c == '"')
                in_str = false;
        } else if (c == '"') {
            in_str = true;
        } else if (c == '[' || c == '{') {
            if (++depth > max_depth)
                return false;
        } else if (c == ']' || c == '}') {
            depth--;
        }
    }
    return true;
}
