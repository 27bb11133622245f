/* codi's Jinja interpreter against Python jinja2: every case of
 * tests/fixtures/jinja/cases.txt (written by tools/make_jinja_fixtures.py
 * with jinja2 configured as transformers configures it) must render to the
 * same bytes, or fail where jinja2 raised. Plus bad templates and the
 * interpreter's limits: each a clear error, never a crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "chat_template.h"
#include "codi.h"

#define CASES "tests/fixtures/jinja/cases.txt"

static char *unhex(const char *h, size_t *n_out) {
    while (*h == ' ')
        h++;
    size_t n = 0;
    while (h[n] && h[n] != '\n' && h[n] != ' ')
        n++;
    char *s = malloc(n / 2 + 1);
    assert_non_null(s);
    if (n == 1 && h[0] == '-')
        n = 0;
    for (size_t i = 0; i + 1 < n; i += 2) {
        unsigned v;
        assert_int_equal(sscanf(h + i, "%2x", &v), 1);
        s[i / 2] = (char)v;
    }
    s[n / 2] = '\0';
    if (n_out)
        *n_out = n / 2;
    return s;
}

static void test_vs_jinja2(void **state) {
    (void)state;
    FILE *f = fopen(CASES, "r");
    assert_non_null(f);
    static char line[1 << 20];
    char name[256] = "", *tmpl = NULL, *bos = NULL, *eos = NULL, *want = NULL;
    char *roles[32], *contents[32];
    int n_msg = 0, gen = 0, want_err = 0, n_cases = 0, n_bad = 0, n_err_cases = 0;
    while (fgets(line, sizeof(line), f)) {
        if (line[0] == '#')
            continue;
        if (strncmp(line, "case ", 5) == 0) {
            snprintf(name, sizeof(name), "%.200s", line + 5);
            name[strcspn(name, "\n")] = '\0';
            n_msg = 0;
        } else if (strncmp(line, "tmpl ", 5) == 0) {
            tmpl = unhex(line + 5, NULL);
        } else if (strncmp(line, "bos ", 4) == 0) {
            bos = unhex(line + 4, NULL);
        } else if (strncmp(line, "eos ", 4) == 0) {
            eos = unhex(line + 4, NULL);
        } else if (strncmp(line, "gen ", 4) == 0) {
            gen = atoi(line + 4);
        } else if (strncmp(line, "msg ", 4) == 0) {
            assert_true(n_msg < 32);
            roles[n_msg] = unhex(line + 4, NULL);
            contents[n_msg] = unhex(strchr(line + 4, ' ') + 1, NULL);
            n_msg++;
        } else if (strncmp(line, "out ", 4) == 0) {
            want = unhex(line + 4, NULL);
            want_err = 0;
        } else if (strncmp(line, "err ", 4) == 0) {
            want = unhex(line + 4, NULL);
            want_err = 1;
        } else if (strncmp(line, "end", 3) == 0) {
            char *out = NULL;
            char err[512] = "";
            int rc = codi_chat_render_tokens(tmpl, bos, eos, (const char *const *)roles,
                                             (const char *const *)contents, (size_t)n_msg, gen != 0, &out,
                                             err, sizeof(err));
            n_cases++;
            if (want_err) {
                n_err_cases++;
                if (rc == 0) {
                    printf("case %s: jinja2 raised '%s', codi rendered '%s'\n", name, want, out);
                    n_bad++;
                } else if (strstr(want, "no system") && !strstr(err, want)) {
                    /* raise_exception messages are passed through */
                    printf("case %s: codi's error '%s' lacks jinja2's '%s'\n", name, err, want);
                    n_bad++;
                }
            } else if (rc != 0) {
                printf("case %s: codi failed: %s\n", name, err);
                n_bad++;
            } else if (strcmp(out, want) != 0) {
                size_t i = 0;
                while (out[i] && out[i] == want[i])
                    i++;
                printf("case %s: differs at byte %zu:\n  codi:   '%.60s'\n  jinja2: '%.60s'\n", name, i,
                       out + (i > 10 ? i - 10 : 0), want + (i > 10 ? i - 10 : 0));
                n_bad++;
            }
            free(out);
            free(tmpl);
            free(bos);
            free(eos);
            free(want);
            for (int i = 0; i < n_msg; i++) {
                free(roles[i]);
                free(contents[i]);
            }
            tmpl = bos = eos = want = NULL;
            n_msg = 0;
        }
    }
    fclose(f);
    printf("jinja2 cases: %d, %d of them errors in jinja2 too; %d differ\n", n_cases, n_err_cases, n_bad);
    assert_true(n_cases > 100);
    assert_int_equal(n_bad, 0);
}

static void expect_error(const char *tmpl, int code, const char *needle) {
    static const char *const roles[] = {"user"};
    static const char *const contents[] = {"Hi"};
    char *out = (char *)0x1;
    char err[512] = "";
    int rc = codi_chat_render_tokens(tmpl, "<s>", "</s>", roles, contents, 1, true, &out, err, sizeof(err));
    if (rc != code || !strstr(err, needle))
        printf("template '%.60s': rc %d, error '%s' (expected %d and '%s')\n", tmpl, rc, err, code, needle);
    assert_int_equal(rc, code);
    assert_null(out);
    assert_non_null(strstr(err, needle));
    assert_null(strchr(err, '\n'));
}

static void test_bad_templates(void **state) {
    (void)state;
    expect_error("{% if x %}never closed", CODI_EFORMAT, "without {% endif %}");
    expect_error("{{ 1 + }}", CODI_EFORMAT, "expression expected");
    expect_error("{{ 'abc }}", CODI_EFORMAT, "missing '}}'");
    expect_error("{% endfor %}", CODI_EFORMAT, "unexpected '{% endfor %}'");
    expect_error("{# open comment", CODI_EFORMAT, "unterminated comment");
    expect_error("{{ x ? y }}", CODI_EFORMAT, "unexpected character '?'");
    expect_error("line\n{% include 'x.j2' %}", CODI_EUNSUPPORTED, "line 2: unsupported Jinja feature '{% include %}'");
    expect_error("{% extends 'base' %}", CODI_EUNSUPPORTED, "'{% extends %}'");
    expect_error("{% call foo() %}{% endcall %}", CODI_EUNSUPPORTED, "'{% call %}'");
    expect_error("{{ messages|selectattr('role') }}", CODI_EUNSUPPORTED, "unsupported Jinja filter 'selectattr'");
    expect_error("{{ 1 is prime }}", CODI_EUNSUPPORTED, "unsupported Jinja test 'prime'");
    expect_error("{{ lipsum() }}", CODI_EUNSUPPORTED, "unknown function 'lipsum'");
    expect_error("{{ '%s' % 1 }}", CODI_EUNSUPPORTED, "string formatting");
    expect_error("{{ '{}'.format(1) }}", CODI_EUNSUPPORTED, "str.format()");
    expect_error("{% set l = [] %}{{ l.append(1) }}", CODI_EUNSUPPORTED, "list.append()");
    expect_error("{{ raise_exception('Bad roles') }}", CODI_EINVAL, "raised: Bad roles");
    expect_error("{{ 1 / 0 }}", CODI_EINVAL, "division by zero");
    expect_error("{{ 'a' + 1 }}", CODI_EINVAL, "unsupported operand types for +: 'str' and 'int'");
    expect_error("{{ foo.bar }}", CODI_EINVAL, "attribute 'bar' of an undefined value");
    expect_error("{% set x = 1 %}{% set x.y = 2 %}", CODI_EINVAL, "only of a namespace");
    expect_error("{{ 9223372036854775807 + 1 }}", CODI_ERANGE, "integer overflow");
}

static void test_limits(void **state) {
    (void)state;
    /* ordinary depth is fine: 40 nested parentheses, a 500-term chain */
    {
        static const char *const roles[] = {"user"};
        static const char *const contents[] = {"Hi"};
        char t[4096] = "{{ ";
        for (int i = 0; i < 40; i++) strcat(t, "(");
        strcat(t, "1");
        for (int i = 0; i < 40; i++) strcat(t, ")");
        strcat(t, " }}|{{ 0");
        for (int i = 0; i < 500; i++) strcat(t, "+1");
        strcat(t, " }}");
        char *out = NULL, err[256];
        assert_int_equal(codi_chat_render_tokens(t, "", "", roles, contents, 1, true, &out, err, sizeof(err)), 0);
        assert_string_equal(out, "1|500");
        free(out);
    }
    /* deep nesting of expressions and blocks: refused, not a stack overflow */
    char *deep = malloc(200000);
    assert_non_null(deep);
    strcpy(deep, "{{ ");
    for (int i = 0; i < 50000; i++)
        strcat(deep + 3 + i, "(");
    strcat(deep, "1 }}");
    expect_error(deep, CODI_ERANGE, "nests deeper than");
    deep[0] = '\0';
    for (int i = 0; i < 10000; i++)
        strcat(deep + (size_t)i * 10, "{% if 1 %}");
    expect_error(deep, CODI_ERANGE, "nest deeper than");
    free(deep);
    /* runaway loops and output */
    expect_error("{% for i in range(100000000) %}{% endfor %}", CODI_ERANGE, "range() of more than");
    expect_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{% endfor %}{% endfor %}", CODI_ERANGE,
                 "more than");
    expect_error("{% for i in range(1000000) %}{% for j in range(1000000) %}{% if j > 1 %}{% break %}{% endif %}"
                 "{% endfor %}{% endfor %}{% for i in range(1000000) %}{% for j in range(100) %}{% endfor %}{% endfor %}",
                 CODI_ERANGE, "more than");
    expect_error("{{ 'x' * 100000000 }}", CODI_ERANGE, "repetition larger than");
    /* a huge exponent costs ~63 squarings, not 10^11 multiplications
     * (fuzz_chat timed out on 1 ** 99999999999) */
    {
        static const char *const roles[] = {"user"};
        static const char *const contents[] = {"Hi"};
        char *out = NULL, err[256];
        assert_int_equal(codi_chat_render_tokens("{{ 1 ** 99999999999 }}|{{ (-1) ** 99999999999 }}|{{ 0 ** 9999999999 }}"
                                                 "|{{ 3 ** 5 }}|{{ 2 ** 62 }}|{{ (-2) ** 63 }}|{{ 7 ** 0 }}",
                                                 "", "", roles, contents, 1, true, &out, err, sizeof(err)),
                         0);
        assert_string_equal(out, "1|-1|0|243|4611686018427387904|-9223372036854775808|1");
        free(out);
        /* empty sequences repeated 10^10 times (a fuzz_chat timeout) */
        assert_int_equal(codi_chat_render_tokens("[{{ '' * 9999999999 }}]{{ (() * 7203685999)|length }}"
                                                 "{{ ([] * 9999999999)|length }}",
                                                 "", "", roles, contents, 1, true, &out, err, sizeof(err)),
                         0);
        assert_string_equal(out, "[]00");
        free(out);
    }
    expect_error("{{ 2 ** 63 }}", CODI_ERANGE, "integer overflow");
    expect_error("{{ 3 ** 99999999999 }}", CODI_ERANGE, "integer overflow");
    expect_error("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", CODI_ERANGE,
                 "macro calls nest deeper than");
    expect_error("{% set s = 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx' * 100000 %}"
                 "{% for i in range(10000) %}{{ s }}{% endfor %}",
                 CODI_ERANGE, "exceeds");
}

/* The model's own template goes through codi_chat_apply with its BOS/EOS. */
static void test_model_template(void **state) {
    (void)state;
    codi_model *m = NULL;
    char err[512];
    if (codi_model_load("models/SmolLM2-135M-Instruct.Q4_1.gguf", NULL, &m, err, sizeof(err)) != 0) {
        fprintf(stderr, "%s\n", err);
        fail();
    }
    static const char *const roles[] = {"user"};
    static const char *const contents[] = {"Hi"};
    char *out = NULL;
    assert_int_equal(codi_chat_apply(m, NULL, roles, contents, 1, true, &out, err, sizeof(err)), 0);
    assert_string_equal(out, "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                             "Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    free(out);
    /* an explicit template: eos_token is the model's */
    assert_int_equal(codi_chat_apply(m, "{{ bos_token }}|{{ eos_token }}", roles, contents, 1, true, &out, err,
                                     sizeof(err)),
                     0);
    assert_string_equal(out, "<|im_start|>|<|im_end|>");
    free(out);
    codi_model_free(m);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_vs_jinja2),
        cmocka_unit_test(test_bad_templates),
        cmocka_unit_test(test_limits),
        cmocka_unit_test(test_model_template),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
