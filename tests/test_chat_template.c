/* Chat template detection and rendering. Expected strings for the
 * six-message conversation under a short name ("chatml", ...) are llama.cpp's
 * (tests/test-chat-template.cpp, "expected_output", i.e. its built-in
 * renderer). Real Jinja templates are rendered by codi's Jinja interpreter
 * as jinja2 renders them: test_jinja.c checks them against jinja2's output;
 * the few here show where that differs from llama.cpp's built-ins. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "chat_template.h"
#include "codi.h"

/* llama.cpp's test conversation. */
static const char *const conv_roles[] = {"system", "user",      "assistant",
                                         "user",   "assistant", "user"};
static const char *const conv_contents[] = {
    "You are a helpful assistant", "Hello", "Hi there", "Who are you",
    "   I am an assistant   ",     "Another question"};
#define CONV_N 6

/* system + user + assistant + user */
static const char *const short_roles[] = {"system", "user", "assistant", "user"};
static const char *const short_contents[] = {"Be brief.", "Hi", "Hello!",
                                             "What is 2+2?"};
#define SHORT_N 4

static char *render_ok(const char *tmpl, const char *bos,
                       const char *const *roles, const char *const *contents,
                       size_t n, bool add_ass) {
    char *out = NULL;
    char err[256] = "";
    int rc = codi_chat_render(tmpl, bos, roles, contents, n, add_ass, &out, err,
                              sizeof(err));
    if (rc != CODI_OK) fail_msg("render failed (%d): %s", rc, err);
    assert_non_null(out);
    return out;
}

static void expect_render(const char *tmpl, const char *const *roles,
                          const char *const *contents, size_t n, bool add_ass,
                          const char *expected) {
    char *out = render_ok(tmpl, NULL, roles, contents, n, add_ass);
    assert_string_equal(out, expected);
    free(out);
}

static void expect_conv(const char *tmpl, const char *expected) {
    expect_render(tmpl, conv_roles, conv_contents, CONV_N, true, expected);
}

/* ------------------------------------------------------------ templates */

static const char *const T_CHATML =
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
    "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if "
    "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/* As stored in GGUF: the JSON "\n" inside the literal is a real newline. */
static const char *const T_SMOLLM2 =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != "
    "'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named "
    "SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif "
    "%}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";

static const char *const T_MISTRAL_V02 =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == "
    "'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation "
    "roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% "
    "if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' "
    "[/INST]' }}{% elif message['role'] == 'assistant' %}{{ "
    "message['content'] + eos_token}}{% else %}{{ raise_exception('Only user "
    "and assistant roles are supported!') }}{% endif %}{% endfor %}";

static const char *const T_FUSIONNET =
    "{%- for idx in range(0, messages|length) -%}\n{%- if "
    "messages[idx]['role'] == 'user' -%}\n{%- if idx > 1 -%}\n{{- bos_token + "
    "'[INST] ' + messages[idx]['content'] + ' [/INST]' -}}\n{%- else "
    "-%}\n{{- messages[idx]['content'] + ' [/INST]' -}}\n{%- endif -%}\n{% "
    "elif messages[idx]['role'] == 'system' %}\n{{- '[INST] <<SYS>>\\n' + "
    "messages[idx]['content'] + '\\n<</SYS>>\\n\\n' -}}\n{%- elif "
    "messages[idx]['role'] == 'assistant' -%}\n{{- ' '  + "
    "messages[idx]['content'] + ' ' + eos_token -}}\n{% endif %}\n{% endfor %}";

static const char *const T_VIGOGNE =
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set "
    "loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% "
    "set system_message = false %}{% endif %}{% for message in loop_messages "
    "%}{% if loop.index0 == 0 and system_message != false %}{% set content = "
    "'<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] "
    "%}{% else %}{% set content = message['content'] %}{% endif %}{% if "
    "message['role'] == 'user' %}{{ '[INST] ' + content.strip() + ' [/INST]' "
    "}}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' "
    "' + eos_token }}{% endif %}{% endfor %}";

static const char *const T_GEMMA =
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role "
    "not supported') }}{% endif %}{% for message in messages %}{% if "
    "(message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% "
    "set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + "
    "'\\n' + message['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% "
    "if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}";

static const char *const T_LLAMA3 =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% "
    "set content = '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if "
    "loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ "
    "content }}{% endfor %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}";

static const char *const T_PHI3_MINI =
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == "
    "'user') %}{{'<|user|>' + '\n' + message['content'] + '<|end|>' + '\n' + "
    "'<|assistant|>' + '\n'}}{% elif (message['role'] == 'assistant') "
    "%}{{message['content'] + '<|end|>' + '\n'}}{% endif %}{% endfor %}";

static const char *const T_PHI3_VISION =
    "{% for message in messages %}{{'<|' + message['role'] + '|>' + '\n' + "
    "message['content'] + '<|end|>\n' }}{% endfor %}{% if "
    "add_generation_prompt and messages[-1]['role'] != 'assistant' %}{{- "
    "'<|assistant|>\n' -}}{% endif %}";

/* stabilityai/stablelm-2-zephyr-1_6b: eos_token is <|endoftext|>. */
static const char *const T_ZEPHYR_STABLELM =
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ "
    "'<|user|>\n' + message['content'] + '<|endoftext|>' }}\n{% elif "
    "message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + "
    "'<|endoftext|>' }}\n{% elif message['role'] == 'assistant' %}\n{{ "
    "'<|assistant|>\n'  + message['content'] + '<|endoftext|>' }}\n{% endif "
    "%}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' "
    "}}\n{% endif %}\n{% endfor %}";

/* A Zephyr template that names </s>. */
static const char *const T_ZEPHYR_S =
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ "
    "'<|user|>\n' + message['content'] + '</s>' }}{% elif message['role'] == "
    "'system' %}{{ '<|system|>\n' + message['content'] + '</s>' }}{% elif "
    "message['role'] == 'assistant' %}{{ '<|assistant|>\n'  + "
    "message['content'] + '</s>' }}{% endif %}{% if loop.last and "
    "add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}{% endfor %}";

/* ------------------------------------------------------------ detection */

static void test_detect(void **state) {
    (void)state;
    assert_int_equal(codi_chat_detect(T_CHATML), CODI_CHAT_CHATML);
    assert_int_equal(codi_chat_detect(T_SMOLLM2), CODI_CHAT_CHATML);
    assert_int_equal(codi_chat_detect(T_MISTRAL_V02), CODI_CHAT_LLAMA2);
    assert_int_equal(codi_chat_detect(T_FUSIONNET), CODI_CHAT_LLAMA2);
    assert_int_equal(codi_chat_detect(T_VIGOGNE), CODI_CHAT_LLAMA2);
    assert_int_equal(codi_chat_detect(T_GEMMA), CODI_CHAT_GEMMA);
    assert_int_equal(codi_chat_detect(T_LLAMA3), CODI_CHAT_LLAMA3);
    assert_int_equal(codi_chat_detect(T_PHI3_MINI), CODI_CHAT_PHI3);
    assert_int_equal(codi_chat_detect(T_PHI3_VISION), CODI_CHAT_PHI3);
    assert_int_equal(codi_chat_detect(T_ZEPHYR_STABLELM), CODI_CHAT_ZEPHYR);
    assert_int_equal(codi_chat_detect(T_ZEPHYR_S), CODI_CHAT_ZEPHYR);

    static const char *const names[] = {"chatml", "llama3", "gemma",
                                        "llama2", "zephyr", "phi3"};
    static const enum codi_chat_format fmts[] = {
        CODI_CHAT_CHATML, CODI_CHAT_LLAMA3, CODI_CHAT_GEMMA,
        CODI_CHAT_LLAMA2, CODI_CHAT_ZEPHYR, CODI_CHAT_PHI3};
    for (size_t i = 0; i < 6; i++) {
        assert_int_equal(codi_chat_detect(names[i]), fmts[i]);
        assert_string_equal(codi_chat_format_name(fmts[i]), names[i]);
    }
    assert_string_equal(codi_chat_format_name(CODI_CHAT_UNKNOWN), "unknown");
    assert_int_equal(codi_chat_detect("mistral"), CODI_CHAT_LLAMA2);

    assert_int_equal(codi_chat_detect(NULL), CODI_CHAT_UNKNOWN);
    assert_int_equal(codi_chat_detect(""), CODI_CHAT_UNKNOWN);
    assert_int_equal(codi_chat_detect("INVALID TEMPLATE"), CODI_CHAT_UNKNOWN);
    /* Formats llama.cpp knows but codi does not render. */
    assert_int_equal(codi_chat_detect("mistral-v7"), CODI_CHAT_UNKNOWN);
    assert_int_equal(codi_chat_detect("{{ '[SYSTEM_PROMPT] ' }}{{ '[INST] ' }}"),
                     CODI_CHAT_UNKNOWN);
    assert_int_equal(
        codi_chat_detect("{{'<|im_start|>system<|im_sep|>' + message['content']}}"),
        CODI_CHAT_UNKNOWN);
}

/* ------------------------------------------- llama.cpp's conversation */

static void test_llamacpp_chatml(void **state) {
    (void)state;
    expect_conv(T_CHATML,
                "<|im_start|>system\nYou are a helpful assistant<|im_end|>\n"
                "<|im_start|>user\nHello<|im_end|>\n"
                "<|im_start|>assistant\nHi there<|im_end|>\n"
                "<|im_start|>user\nWho are you<|im_end|>\n"
                "<|im_start|>assistant\n   I am an assistant   <|im_end|>\n"
                "<|im_start|>user\nAnother question<|im_end|>\n"
                "<|im_start|>assistant\n");
}

static void test_llamacpp_llama2(void **state) {
    (void)state;
    expect_conv("mistral",
                "[INST] You are a helpful assistant\nHello [/INST]Hi there</s>"
                "[INST] Who are you [/INST]   I am an assistant   </s>"
                "[INST] Another question [/INST]");
    /* The real Mistral template refuses a system message (jinja2 raises
     * in raise_exception; llama.cpp's renderer folds it in). */
    char *out = (char *)0x1;
    char err[256] = "";
    assert_int_equal(codi_chat_render(T_MISTRAL_V02, "<s>", conv_roles, conv_contents, CONV_N, true,
                                      &out, err, sizeof(err)),
                     CODI_EINVAL);
    assert_null(out);
    assert_non_null(strstr(err, "Conversation roles must alternate"));
    /* The BOS-inside-history template prints the model's BOS text. */
    out = render_ok(T_FUSIONNET, "<BOS>", conv_roles, conv_contents, CONV_N, true);
    assert_non_null(strstr(out, " Hi there <BOS>[INST] Who are you")); /* eos_token "" here */
    free(out);
}

static void test_llamacpp_gemma(void **state) {
    (void)state;
    /* The Gemma (1/2) template raises on a system message; the built-in
     * renderer folds it into the first user turn as llama.cpp does. */
    char *out = (char *)0x1;
    char err[256] = "";
    assert_int_equal(codi_chat_render(T_GEMMA, NULL, conv_roles, conv_contents, CONV_N, true, &out,
                                      err, sizeof(err)),
                     CODI_EINVAL);
    assert_string_equal(err, "chat template: raised: System role not supported");
    expect_render(T_GEMMA, conv_roles + 1, conv_contents + 1, CONV_N - 1, true,
                  "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
                  "<start_of_turn>user\nWho are you<end_of_turn>\n"
                  "<start_of_turn>model\nI am an assistant<end_of_turn>\n"
                  "<start_of_turn>user\nAnother question<end_of_turn>\n"
                  "<start_of_turn>model\n");
    expect_conv("gemma",
                "<start_of_turn>user\nYou are a helpful assistant\n\nHello"
                "<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
                "<start_of_turn>user\nWho are you<end_of_turn>\n"
                "<start_of_turn>model\nI am an assistant<end_of_turn>\n"
                "<start_of_turn>user\nAnother question<end_of_turn>\n"
                "<start_of_turn>model\n");
}

static void test_llamacpp_llama3(void **state) {
    (void)state;
    expect_conv(T_LLAMA3,
                "<|start_header_id|>system<|end_header_id|>\n\nYou are a "
                "helpful assistant<|eot_id|><|start_header_id|>user<|end_header_id|>"
                "\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
                "\n\nHi there<|eot_id|><|start_header_id|>user<|end_header_id|>"
                "\n\nWho are you<|eot_id|><|start_header_id|>assistant"
                "<|end_header_id|>\n\nI am an assistant<|eot_id|>"
                "<|start_header_id|>user<|end_header_id|>\n\nAnother question"
                "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n");
}

static void test_llamacpp_phi3(void **state) {
    (void)state;
    const char *expected =
        "<|system|>\nYou are a helpful assistant<|end|>\n<|user|>\nHello<|end|>\n"
        "<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n"
        "<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother "
        "question<|end|>\n<|assistant|>\n";
    expect_conv(T_PHI3_VISION, expected);
    expect_conv("phi3", expected);
    /* Phi-3 mini's own template has no system branch: jinja2 drops it. */
    expect_conv(T_PHI3_MINI,
                "<|user|>\nHello<|end|>\n<|assistant|>\nHi there<|end|>\n<|user|>\nWho are you<|end|>\n"
                "<|assistant|>\n   I am an assistant   <|end|>\n<|user|>\nAnother question<|end|>\n"
                "<|assistant|>\n");
}

/* ---------------------------- system + user + assistant + user, ± prompt */

struct fmt_case {
    const char *tmpl;
    const char *with_prompt;
    const char *without_prompt;
};

static void test_short_conversation(void **state) {
    (void)state;
    static const struct fmt_case cases[] = {
        {"chatml",
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
         "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is "
         "2+2?<|im_end|>\n<|im_start|>assistant\n",
         "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
         "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is "
         "2+2?<|im_end|>\n"},
        {"llama3",
         "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\n",
         "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
         "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>"
         "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"},
        {"gemma",
         "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
         "Hello!<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"
         "<start_of_turn>model\n",
         "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
         "Hello!<end_of_turn>\n<start_of_turn>user\nWhat is 2+2?<end_of_turn>\n"},
        /* Llama-2 has no generation prompt: both the same. */
        {"llama2",
         "[INST] Be brief.\nHi [/INST]Hello!</s>[INST] What is 2+2? [/INST]",
         "[INST] Be brief.\nHi [/INST]Hello!</s>[INST] What is 2+2? [/INST]"},
        {"zephyr",
         "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n"
         "<|assistant|>\nHello!<|endoftext|>\n<|user|>\nWhat is "
         "2+2?<|endoftext|>\n<|assistant|>\n",
         "<|system|>\nBe brief.<|endoftext|>\n<|user|>\nHi<|endoftext|>\n"
         "<|assistant|>\nHello!<|endoftext|>\n<|user|>\nWhat is "
         "2+2?<|endoftext|>\n"},
        {"phi3",
         "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
         "Hello!<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n<|assistant|>\n",
         "<|system|>\nBe brief.<|end|>\n<|user|>\nHi<|end|>\n<|assistant|>\n"
         "Hello!<|end|>\n<|user|>\nWhat is 2+2?<|end|>\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        expect_render(cases[i].tmpl, short_roles, short_contents, SHORT_N, true,
                      cases[i].with_prompt);
        expect_render(cases[i].tmpl, short_roles, short_contents, SHORT_N, false,
                      cases[i].without_prompt);
    }
    /* The full Jinja texts render as their short names do. */
    expect_render(T_LLAMA3, short_roles, short_contents, SHORT_N, true,
                  cases[1].with_prompt);
    expect_render(T_ZEPHYR_STABLELM, short_roles, short_contents, SHORT_N, true,
                  cases[4].with_prompt);
}

static void test_zephyr_eos_from_template(void **state) {
    (void)state;
    /* Rendered as written: no newline between turns, no newline after the
     * final <|assistant|> (llama.cpp's built-in adds both). */
    expect_render(T_ZEPHYR_S, short_roles, short_contents, SHORT_N, true,
                  "<|system|>\nBe brief.</s><|user|>\nHi</s><|assistant|>\n"
                  "Hello!</s><|user|>\nWhat is 2+2?</s><|assistant|>");
}

static void test_gemma_system_folding(void **state) {
    (void)state;
    /* System text is trimmed and opens the next user turn, even after a
     * model turn; contents are trimmed. */
    static const char *const roles[] = {"assistant", "system", "user"};
    static const char *const contents[] = {" Hey ", "  Sys  ", " Q "};
    expect_render("gemma", roles, contents, 3, true,
                  "<start_of_turn>model\nHey<end_of_turn>\n"
                  "<start_of_turn>user\nSys\n\nQ<end_of_turn>\n"
                  "<start_of_turn>model\n");
    /* A system message alone renders nothing but the prompt. */
    expect_render("gemma", roles + 1, contents + 1, 1, true,
                  "<start_of_turn>model\n");
}

/* ------------------------------------------------------- SmolLM2 default */

static void test_smollm2_default_system(void **state) {
    (void)state;
    static const char *const roles[] = {"user"};
    static const char *const contents[] = {"Hi"};
    expect_render(T_SMOLLM2, roles, contents, 1, true,
                  "<|im_start|>system\nYou are a helpful AI assistant named "
                  "SmolLM, trained by Hugging Face<|im_end|>\n"
                  "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
    /* An explicit system message replaces the default. */
    expect_render(T_SMOLLM2, short_roles, short_contents, 2, false,
                  "<|im_start|>system\nBe brief.<|im_end|>\n"
                  "<|im_start|>user\nHi<|im_end|>\n");
    /* No messages: the loop never runs, only the prompt. */
    expect_render(T_SMOLLM2, NULL, NULL, 0, true, "<|im_start|>assistant\n");
    /* The same template with escaped "\n" (as written in Jinja source). */
    const char *escaped =
        "{% for message in messages %}{% if loop.first and messages[0]['role'] "
        "!= 'system' %}{{ '<|im_start|>system\\nYou\\'re \\\"Smol\\\"<|im_end|>\\n' "
        "}}{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + "
        "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}";
    expect_render(escaped, roles, contents, 1, false,
                  "<|im_start|>system\nYou're \"Smol\"<|im_end|>\n"
                  "<|im_start|>user\nHi<|im_end|>\n");
    /* A template prints what it prints: this one only the system turn. */
    const char *qwen_like =
        "{% if messages[0]['role'] == 'system' %}{{ '<|im_start|>system\\n' + "
        "messages[0]['content'] + '<|im_end|>\\n' }}{% endif %}";
    expect_render(qwen_like, roles, contents, 1, false, "");
    /* Plain "chatml" has no default. */
    expect_render("chatml", roles, contents, 1, false,
                  "<|im_start|>user\nHi<|im_end|>\n");
}

/* --------------------------------------------------------------- errors */

static void test_unknown_template(void **state) {
    (void)state;
    char *out = (char *)0x1;
    char err[256] = "";
    const char *tmpl = "{% for m in messages %}\n{{ m.role }}: {{ m.content }}\n"
                       "{% endfor %}{% include 'footer.jinja' %}";
    int rc = codi_chat_render(tmpl, NULL, short_roles, short_contents, SHORT_N,
                              true, &out, err, sizeof(err));
    assert_int_equal(rc, CODI_EUNSUPPORTED);
    assert_null(out);
    assert_string_equal(err, "chat template: line 3: unsupported Jinja feature '{% include %}'");

    rc = codi_chat_render("short one", NULL, NULL, NULL, 0, true, &out, err,
                          sizeof(err));
    assert_int_equal(rc, CODI_EUNSUPPORTED);
    assert_string_equal(err, "unsupported chat template (starts with: 'short one')");

    /* A NULL error buffer is fine. */
    rc = codi_chat_render("nope", NULL, NULL, NULL, 0, true, &out, NULL, 0);
    assert_int_equal(rc, CODI_EUNSUPPORTED);
}

static void test_null_and_empty(void **state) {
    (void)state;
    char *out = NULL;
    char err[256];

    assert_int_equal(codi_chat_render(NULL, NULL, short_roles, short_contents,
                                      SHORT_N, true, &out, err, sizeof(err)),
                     CODI_EINVAL);
    assert_null(out);
    assert_int_equal(codi_chat_render("", NULL, short_roles, short_contents,
                                      SHORT_N, true, &out, err, sizeof(err)),
                     CODI_EINVAL);
    assert_int_equal(codi_chat_render("chatml", NULL, short_roles, short_contents,
                                      SHORT_N, true, NULL, err, sizeof(err)),
                     CODI_EINVAL);
    assert_int_equal(codi_chat_render("chatml", NULL, NULL, short_contents, 2,
                                      true, &out, err, sizeof(err)),
                     CODI_EINVAL);
    assert_int_equal(codi_chat_render("chatml", NULL, short_roles, NULL, 2, true,
                                      &out, err, sizeof(err)),
                     CODI_EINVAL);
    static const char *const roles_null[] = {"user", NULL};
    static const char *const contents_null[] = {"a", NULL};
    assert_int_equal(codi_chat_render("chatml", NULL, roles_null, short_contents,
                                      2, true, &out, err, sizeof(err)),
                     CODI_EINVAL);
    assert_non_null(strstr(err, "message 1 has no role"));
    assert_int_equal(codi_chat_render("chatml", NULL, short_roles, contents_null,
                                      2, true, &out, err, sizeof(err)),
                     CODI_EINVAL);
    assert_non_null(strstr(err, "message 1 has no content"));
    assert_null(out);

    /* No messages: only the generation prompt (or nothing). */
    expect_render("chatml", NULL, NULL, 0, true, "<|im_start|>assistant\n");
    expect_render("chatml", NULL, NULL, 0, false, "");
    expect_render("llama3", NULL, NULL, 0, false, "");
    expect_render("llama2", NULL, NULL, 0, true, "[INST] ");

    /* Empty contents are kept. */
    static const char *const r1[] = {"user"};
    static const char *const c1[] = {""};
    expect_render("chatml", r1, c1, 1, false, "<|im_start|>user\n<|im_end|>\n");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_detect),
        cmocka_unit_test(test_llamacpp_chatml),
        cmocka_unit_test(test_llamacpp_llama2),
        cmocka_unit_test(test_llamacpp_gemma),
        cmocka_unit_test(test_llamacpp_llama3),
        cmocka_unit_test(test_llamacpp_phi3),
        cmocka_unit_test(test_short_conversation),
        cmocka_unit_test(test_zephyr_eos_from_template),
        cmocka_unit_test(test_gemma_system_folding),
        cmocka_unit_test(test_smollm2_default_system),
        cmocka_unit_test(test_unknown_template),
        cmocka_unit_test(test_null_and_empty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
