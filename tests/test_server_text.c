/* codi serve's text helpers (src/server/text.c): holding back an unfinished
 * UTF-8 character at the end of generated text, UTF-8 validation of request
 * bodies, the hand-written JSON string escaper of SSE chunks (checked by
 * parsing its output with cJSON), and the JSON nesting limit. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#include "server/engine.h"

/* Valid text mixing 1- to 4-byte characters. */
static const char MIXED[] = "a\xC3\xA9" "b\xE6\x97\xA5\xE6\x9C\xAC" "c\xF0\x9F\x98\x80\xF0\x9F\x98\x83" "d";

static void utf8_complete_prefixes(void **state) {
    (void)state;
    const size_t n = strlen(MIXED);
    /* The longest complete prefix of each prefix ends at the last character
     * boundary at or before it. */
    size_t last_boundary = 0;
    for (size_t len = 0; len <= n; len++) {
        if (len == n || ((unsigned char)MIXED[len] & 0xC0) != 0x80)
            last_boundary = len;
        assert_int_equal(srv_utf8_complete_len(MIXED, len), last_boundary);
    }
    assert_true(srv_utf8_valid(MIXED, n));
}

static void utf8_complete_invalid_tails(void **state) {
    (void)state;
    /* Bytes that can never complete a character are not held back (the
     * escaper turns them into U+FFFD): a lone continuation byte, 0xFF, an
     * overlong lead, a lead followed by a non-continuation byte. */
    assert_int_equal(srv_utf8_complete_len("ab\x80", 3), 3);
    assert_int_equal(srv_utf8_complete_len("ab\xFF", 3), 3);
    assert_int_equal(srv_utf8_complete_len("ab\xC0", 3), 3);
    assert_int_equal(srv_utf8_complete_len("a\xE6" "b", 3), 3);
    /* Impossible second bytes are known at once. */
    assert_int_equal(srv_utf8_complete_len("a\xE0\x80", 3), 3);  /* overlong */
    assert_int_equal(srv_utf8_complete_len("a\xED\xA0", 3), 3);  /* surrogate */
    assert_int_equal(srv_utf8_complete_len("a\xF4\x90", 3), 3);  /* > U+10FFFF */
    /* A possible start is held. */
    assert_int_equal(srv_utf8_complete_len("a\xF0\x9F\x98", 4), 1);
    assert_int_equal(srv_utf8_complete_len("\xE6", 1), 0);
    assert_int_equal(srv_utf8_complete_len("", 0), 0);
}

static void utf8_valid(void **state) {
    (void)state;
    assert_true(srv_utf8_valid("", 0));
    assert_true(srv_utf8_valid("\xF4\x8F\xBF\xBF", 4));     /* U+10FFFF */
    assert_true(srv_utf8_valid("\xED\x9F\xBF", 3));         /* U+D7FF */
    assert_false(srv_utf8_valid("\xC0\x80", 2));            /* overlong NUL */
    assert_false(srv_utf8_valid("\xE0\x80\x80", 3));        /* overlong */
    assert_false(srv_utf8_valid("\xED\xA0\x80", 3));        /* surrogate */
    assert_false(srv_utf8_valid("\xF4\x90\x80\x80", 4));    /* > U+10FFFF */
    assert_false(srv_utf8_valid("\xF0\x9F\x98", 3));        /* truncated */
    assert_false(srv_utf8_valid("a\xFF" "b", 3));
}

/* Escape s[0..n) and parse the literal back with cJSON. */
static char *round_trip(const char *s, size_t n) {
    srv_buf b = {0};
    assert_int_equal(srv_buf_json_str(&b, s, n), 0);
    assert_true(srv_utf8_valid(b.p, b.len));
    for (size_t i = 0; i < b.len; i++)
        assert_true((unsigned char)b.p[i] >= 0x20); /* no raw control bytes */
    cJSON *j = cJSON_ParseWithLength(b.p, b.len);
    assert_non_null(j);
    assert_true(cJSON_IsString(j));
    char *out = strdup(j->valuestring);
    cJSON_Delete(j);
    srv_buf_free(&b);
    return out;
}

static void json_escaper(void **state) {
    (void)state;
    const char *cases[] = {"plain", "quote \" backslash \\ slash /", "tab\tnl\ncr\r",
                           "\x01\x1f\x7f", MIXED, ""};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char *out = round_trip(cases[i], strlen(cases[i]));
        assert_string_equal(out, cases[i]);
        free(out);
    }
    /* Invalid bytes become U+FFFD, one per byte. */
    char *out = round_trip("a\xFF" "b\xC3", 4);
    assert_string_equal(out, "a\xEF\xBF\xBD" "b\xEF\xBF\xBD");
    free(out);
    /* Random bytes: always a valid JSON string of valid UTF-8. */
    uint32_t x = 2463534242u;
    char buf[64];
    for (int r = 0; r < 2000; r++) {
        size_t n = (size_t)(r % 64);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            buf[i] = (char)(x & 0xFF);
            if (buf[i] == 0)
                buf[i] = 1; /* cJSON's valuestring stops at NUL */
        }
        free(round_trip(buf, n));
    }
}

static void json_depth(void **state) {
    (void)state;
    char s[200];
    for (int depth = 1; depth <= 40; depth++) {
        size_t k = 0;
        for (int i = 0; i < depth; i++)
            s[k++] = i % 2 ? '{' : '[';
        for (int i = depth - 1; i >= 0; i--)
            s[k++] = i % 2 ? '}' : ']';
        assert_int_equal(srv_json_depth_ok(s, k, 32), depth <= 32);
    }
    /* Brackets inside strings (with escaped quotes) do not count. */
    const char *str = "{\"a\": \"[[[[\\\"[[[[\", \"b\": [1]}";
    assert_true(srv_json_depth_ok(str, strlen(str), 2));
    assert_false(srv_json_depth_ok(str, strlen(str), 1));
    /* Unbalanced or truncated input is cJSON's to reject, not a crash. */
    assert_true(srv_json_depth_ok("]]]]", 4, 1));
    assert_true(srv_json_depth_ok("\"\\", 2, 1));
}

static void buffers(void **state) {
    (void)state;
    srv_buf b = {0};
    for (int i = 0; i < 1000; i++)
        assert_int_equal(srv_buf_printf(&b, "%d,", i), 0);
    assert_int_equal(b.p[b.len], '\0');
    assert_int_equal(strncmp(b.p, "0,1,2,", 6), 0);
    assert_int_equal(strlen(b.p), b.len);
    srv_buf_free(&b);
    srv_buf_free(&b); /* twice: harmless */
    assert_null(b.p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(utf8_complete_prefixes), cmocka_unit_test(utf8_complete_invalid_tails),
        cmocka_unit_test(utf8_valid),             cmocka_unit_test(json_escaper),
        cmocka_unit_test(json_depth),             cmocka_unit_test(buffers),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
