/* Chat templates: recognise the Jinja template stored in
 * tokenizer.chat_template by its markers and render a conversation the way
 * that template would (ChatML, Llama-3, Gemma, Llama-2, ...). No general
 * Jinja engine: an unknown template is a clear error. */
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

#endif
