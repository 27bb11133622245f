/* Chat templates: a Jinja template (tokenizer.chat_template) is rendered by
 * codi's Jinja interpreter as transformers/jinja2 renders it; a short name
 * ("chatml", "llama3", "gemma", "llama2", "zephyr", "phi3") selects a
 * built-in renderer that matches llama.cpp's. Unsupported Jinja features
 * are a clear error naming the feature. */
#ifndef CODI_CHAT_TEMPLATE_H
#define CODI_CHAT_TEMPLATE_H

#include <stdbool.h>
#include <stddef.h>

enum codi_chat_format {
    CODI_CHAT_UNKNOWN = 0,
    CODI_CHAT_CHATML,
    CODI_CHAT_LLAMA3,
    CODI_CHAT_GEMMA,
    CODI_CHAT_LLAMA2,
    CODI_CHAT_ZEPHYR,
    CODI_CHAT_PHI3,
};

/* Detect the format from a Jinja template or a short name ("chatml",
 * "llama3", "gemma", "llama2", "zephyr", "phi3"). */
enum codi_chat_format codi_chat_detect(const char *tmpl);
const char *codi_chat_format_name(enum codi_chat_format f);

/* Render into a malloc'd NUL-terminated *out. bos is the model's BOS text
 * (some templates print it; NULL or "" when none). The default system
 * prompt of a template (ChatML in SmolLM2 adds one when the first message is
 * not a system message) is taken from tmpl when recognisable. */
int codi_chat_render(const char *tmpl, const char *bos,
                     const char *const *roles, const char *const *contents,
                     size_t n, bool add_assistant, char **out, char *err,
                     size_t errlen);

/* The same with eos_token defined too (templates that print it). */
int codi_chat_render_tokens(const char *tmpl, const char *bos, const char *eos,
                            const char *const *roles, const char *const *contents,
                            size_t n, bool add_assistant, char **out, char *err,
                            size_t errlen);

#endif
