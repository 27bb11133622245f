/* Completion request bodies: JSON (cJSON) to a validated srv_request. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "request.h"

typedef struct gen_opts {
    int32_t max_tokens; /* -1: not given */
    codi_sampler_params sp;
    bool stream, include_usage, ignore_eos;
    const cJSON *stop;
} gen_opts;

static bool num(const cJSON *j, double *v) {
    if (!cJSON_IsNumber(j))
        return false;
    *v = j->valuedouble;
    return isfinite(*v);
}

/* Common sampling options. Returns NULL or an error message. */
static const char *parse_opts(const cJSON *root, gen_opts *o, uint64_t seed0) {
    memset(o, 0, sizeof(*o));
    o->max_tokens = -1;
    o->sp = codi_sampler_default_params();
    o->sp.temp = 1.0f; /* OpenAI's defaults: plain softmax sampling */
    o->sp.top_k = 0;
    o->sp.top_p = 1.0f;
    o->sp.min_p = 0.0f;
    o->sp.repeat_penalty = 1.0f;
    o->sp.seed = seed0;
    const cJSON *j;
    double v;
    const char *mt[] = {"max_tokens", "max_completion_tokens", "n_predict"};
    for (int i = 0; i < 3; i++) {
        j = cJSON_GetObjectItemCaseSensitive(root, mt[i]);
        if (j && !cJSON_IsNull(j)) {
            if (!num(j, &v) || v != floor(v) || v < 1 || v > 1e7)
                return "'max_tokens' must be an integer >= 1";
            o->max_tokens = (int32_t)v;
        }
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "temperature");
    if (j && !cJSON_IsNull(j)) {
        if (!num(j, &v) || v < 0 || v > 2)
            return "'temperature' must be a number in [0, 2]";
        o->sp.temp = (float)v;
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "top_p");
    if (j && !cJSON_IsNull(j)) {
        if (!num(j, &v) || v <= 0 || v > 1)
            return "'top_p' must be a number in (0, 1]";
        o->sp.top_p = (float)v;
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "top_k");
    if (j && !cJSON_IsNull(j)) {
        if (!num(j, &v) || v != floor(v) || v < 0 || v > 1e6)
            return "'top_k' must be an integer >= 0";
        o->sp.top_k = (int32_t)v;
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "min_p");
    if (j && !cJSON_IsNull(j)) {
        if (!num(j, &v) || v < 0 || v > 1)
            return "'min_p' must be a number in [0, 1]";
        o->sp.min_p = (float)v;
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "seed");
    if (j && !cJSON_IsNull(j)) {
        if (!num(j, &v) || v != floor(v) || fabs(v) > 9007199254740992.0)
            return "'seed' must be an integer";
        o->sp.seed = (uint64_t)(int64_t)v;
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "n");
    if (j && !cJSON_IsNull(j) && (!num(j, &v) || v != 1))
        return "only 'n' = 1 is supported";
    j = cJSON_GetObjectItemCaseSensitive(root, "stream");
    if (j && !cJSON_IsNull(j)) {
        if (!cJSON_IsBool(j))
            return "'stream' must be a boolean";
        o->stream = cJSON_IsTrue(j);
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "ignore_eos"); /* llama.cpp's extension */
    if (j && !cJSON_IsNull(j)) {
        if (!cJSON_IsBool(j))
            return "'ignore_eos' must be a boolean";
        o->ignore_eos = cJSON_IsTrue(j);
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "stream_options");
    if (j && cJSON_IsObject(j)) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "include_usage");
        o->include_usage = cJSON_IsTrue(u);
    }
    j = cJSON_GetObjectItemCaseSensitive(root, "stop");
    if (j && !cJSON_IsNull(j)) {
        if (cJSON_IsString(j)) {
            if (!j->valuestring[0])
                return "'stop' strings must not be empty";
        } else if (cJSON_IsArray(j)) {
            int n = cJSON_GetArraySize(j);
            if (n > SRV_MAX_STOP)
                return "'stop' holds at most 4 strings";
            const cJSON *x;
            cJSON_ArrayForEach(x, j) if (!cJSON_IsString(x) || !x->valuestring[0])
                return "'stop' must be a string or an array of non-empty strings";
        } else {
            return "'stop' must be a string or an array of strings";
        }
        o->stop = j;
    }
    return NULL;
}

/* Text of a message's content: a string, null, or an array of
 * {"type":"text","text":...} parts (joined). Returns malloc'd or NULL. */
static char *content_text(const cJSON *c, const char **why) {
    if (cJSON_IsNull(c))
        return strdup("");
    if (cJSON_IsString(c))
        return strdup(c->valuestring);
    if (!cJSON_IsArray(c)) {
        *why = "message 'content' must be a string or an array of text parts";
        return NULL;
    }
    srv_buf b = {0};
    srv_buf_puts(&b, "");
    const cJSON *p;
    cJSON_ArrayForEach(p, c) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(p, "type");
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(p, "text");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text") || !cJSON_IsString(x)) {
            *why = "only text content parts are supported";
            srv_buf_free(&b);
            return NULL;
        }
        srv_buf_puts(&b, x->valuestring);
    }
    return b.p;
}

/* The prompt text of a chat request (rendered template) or NULL with
 * *status and msg set. */
static char *chat_prompt(const codi_model *model, const cJSON *root, int *status, char *msg, size_t msglen) {
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(root, "messages");
    if (!cJSON_IsArray(msgs) || cJSON_GetArraySize(msgs) == 0) {
        *status = 400;
        snprintf(msg, msglen, "'messages' must be a non-empty array");
        return NULL;
    }
    size_t n = (size_t)cJSON_GetArraySize(msgs);
    char **roles = calloc(n, sizeof(char *)), **texts = calloc(n, sizeof(char *));
    char *out = NULL;
    *status = 400;
    if (!roles || !texts) {
        *status = 500;
        snprintf(msg, msglen, "out of memory");
        goto done;
    }
    size_t i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs) {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsObject(m) || !cJSON_IsString(role) || !content) {
            snprintf(msg, msglen, "messages[%zu] needs a string 'role' and a 'content'", i);
            goto done;
        }
        const char *why = "out of memory";
        roles[i] = strdup(role->valuestring);
        texts[i] = content_text(content, &why);
        if (!roles[i] || !texts[i]) {
            snprintf(msg, msglen, "messages[%zu]: %s", i, why);
            goto done;
        }
        i++;
    }
    char err[256];
    if (codi_chat_apply(model, NULL, (const char *const *)roles, (const char *const *)texts, n,
                        true, &out, err, sizeof(err))) {
        *status = 500;
        snprintf(msg, msglen, "chat template: %s", err);
        out = NULL;
    }
done:
    for (size_t k = 0; k < n; k++) {
        if (roles)
            free(roles[k]);
        if (texts)
            free(texts[k]);
    }
    free(roles);
    free(texts);
    return out;
}

static int32_t *tokenize(const codi_model *model, const char *text, int32_t *n_out) {
    size_t len = strlen(text);
    int32_t cap = (int32_t)(len + 8);
    int32_t *t = malloc((size_t)cap * sizeof(int32_t));
    if (!t)
        return NULL;
    int32_t n = codi_tokenize(model, text, len, t, cap, true, true);
    if (n < 0) {
        cap = -n;
        int32_t *nt = realloc(t, (size_t)cap * sizeof(int32_t));
        if (!nt) {
            free(t);
            return NULL;
        }
        t = nt;
        n = codi_tokenize(model, text, len, t, cap, true, true);
        if (n < 0) {
            free(t);
            return NULL;
        }
    }
    *n_out = n;
    return t;
}
void srv_request_free(srv_request *r) {
    if (!r)
        return;
    free(r->tokens);
    for (int i = 0; i < r->n_stop; i++)
        free(r->stop[i]);
    memset(r, 0, sizeof(*r));
}

int srv_request_parse(const codi_model *model, const char *body, size_t len, bool chat,
                      uint64_t seed, int32_t n_ctx, srv_request *out, const char **code,
                      char *msg, size_t msglen) {
    memset(out, 0, sizeof(*out));
    *code = NULL;
    if (!body)
        body = "";
    if (!srv_utf8_valid(body, len)) {
        *code = "invalid_utf8";
        snprintf(msg, msglen, "the request body is not valid UTF-8");
        return 400;
    }
    *code = "invalid_json";
    if (!srv_json_depth_ok(body, len, SRV_MAX_JSON_DEPTH)) {
        snprintf(msg, msglen, "the request body nests deeper than %d levels", SRV_MAX_JSON_DEPTH);
        return 400;
    }
    /* cJSON stops at the end of the first value (or at a NUL byte):
     * anything but whitespace after it makes the body invalid. */
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
    size_t used = root && end ? (size_t)(end - body) : len;
    while (used < len && (body[used] == ' ' || body[used] == '\t' || body[used] == '\n' ||
                          body[used] == '\r'))
        used++;
    if (!root || used != len) {
        cJSON_Delete(root);
        snprintf(msg, msglen, "the request body is not valid JSON");
        return 400;
    }
    int status = 400;
    char *prompt = NULL;
    if (!cJSON_IsObject(root)) {
        snprintf(msg, msglen, "the request body must be a JSON object");
        goto fail;
    }
    *code = "invalid_value";
    gen_opts o;
    const char *why = parse_opts(root, &o, seed);
    if (why) {
        snprintf(msg, msglen, "%s", why);
        goto fail;
    }
    if (chat) {
        prompt = chat_prompt(model, root, &status, msg, msglen);
        if (!prompt) {
            if (status != 400)
                *code = NULL;
            goto fail;
        }
    } else {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(root, "prompt");
        if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1)
            p = cJSON_GetArrayItem(p, 0);
        if (!cJSON_IsString(p)) {
            snprintf(msg, msglen, "'prompt' must be a string");
            goto fail;
        }
        if (!(prompt = strdup(p->valuestring)))
            goto oom;
    }
    if (!(out->tokens = tokenize(model, prompt, &out->n_tokens)))
        goto oom;
    if (out->n_tokens == 0) {
        snprintf(msg, msglen, "the prompt is empty");
        goto fail;
    }
    if (out->n_tokens >= n_ctx) {
        *code = "context_length_exceeded";
        snprintf(msg, msglen, "the prompt has %d tokens but a slot holds %d (server --ctx-per-slot)",
                 out->n_tokens, n_ctx);
        goto fail;
    }
    out->max_tokens = o.max_tokens;
    out->sp = o.sp;
    out->stream = o.stream;
    out->include_usage = o.include_usage;
    out->ignore_eos = o.ignore_eos;
    if (o.stop) {
        const cJSON *x;
        if (cJSON_IsString(o.stop)) {
            if (!(out->stop[out->n_stop++] = strdup(o.stop->valuestring)))
                goto oom;
        } else {
            cJSON_ArrayForEach(x, o.stop) {
                if (!(out->stop[out->n_stop++] = strdup(x->valuestring)))
                    goto oom;
            }
        }
    }
    free(prompt);
    cJSON_Delete(root);
    *code = NULL;
    return 0;
oom:
    status = 500;
    *code = NULL;
    snprintf(msg, msglen, "out of memory");
fail:
    free(prompt);
    cJSON_Delete(root);
    srv_request_free(out);
    return status;
}
