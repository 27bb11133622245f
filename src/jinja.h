/* A small Jinja interpreter for chat templates: the subset real
 * tokenizer.chat_template strings use, rendered as Hugging Face transformers
 * renders them (jinja2 with trim_blocks, lstrip_blocks and loop controls):
 *   {{ expr }}, {% if/elif/else %}, {% for x in xs [if cond] %} with loop.*,
 *   {% for k, v in d.items() %}, {% set x = .. %}, {% set ns.attr = .. %},
 *   {% set x %}..{% endset %}, {% break %}/{% continue %}, {% macro %} and
 *   calls, {# comments #}, whitespace control (-), namespace(), range(),
 *   raise_exception(), string/list/dict literals, slicing, ~ + - * / // % **,
 *   comparisons, in / not in, and/or/not, x if c else y, `is` tests, filters
 *   (trim, length, default, join, tojson, ...) and Python string methods
 *   (strip, split, startswith, ...).
 * Anything else is an error naming the feature. Bounded: nesting depth,
 * macro recursion, loop iterations, output size and evaluation steps all
 * have fixed limits, so no template or input can exhaust the stack. */
#ifndef CODI_JINJA_H
#define CODI_JINJA_H

#include <stdbool.h>
#include <stddef.h>

typedef struct codi_jinja_chat {
    const char *const *roles;    /* [n] */
    const char *const *contents; /* [n] */
    size_t n;
    bool add_generation_prompt;
    const char *bos_token; /* NULL: "" */
    const char *eos_token; /* NULL: "" */
} codi_jinja_chat;

/* Render tmpl with messages = [{role, content}...], add_generation_prompt,
 * bos_token, eos_token defined. *out: malloc'd NUL-terminated text. Returns
 * 0 or a negative CODI_E* code with a one-line message in err. */
int codi_jinja_render_chat(const char *tmpl, const codi_jinja_chat *chat,
                           char **out, char *err, size_t errlen);

#endif
