/* Parsing and validating the body of a completion request (chat or plain),
 * apart from HTTP so it can be tested and fuzzed on its own
 * (tests/fuzz/fuzz_request.c). */
#ifndef CODI_SERVER_REQUEST_H
#define CODI_SERVER_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codi.h"
#include "engine.h"

#define SRV_MAX_JSON_DEPTH 32 /* far more than any request needs */

typedef struct srv_request {
    int32_t *tokens; /* the prompt (chat: rendered by the template), malloc'd */
    int32_t n_tokens;
    int32_t max_tokens; /* -1: not given */
    codi_sampler_params sp;
    bool stream, include_usage, ignore_eos;
    char *stop[SRV_MAX_STOP]; /* malloc'd, non-empty */
    int n_stop;
} srv_request;

/* Parse body[0..len) of a /v1/chat/completions (chat) or /v1/completions
 * request: UTF-8 and nesting checked before parsing, options validated,
 * the prompt rendered and tokenized and checked against n_ctx, the tokens
 * of a slot. seed: the sampler seed when the request gives none. Returns 0
 * (fill *out; free with srv_request_free), or the HTTP status to answer
 * (400, 500) with *code the OpenAI error code (or NULL) and a one-line
 * message in msg. */
int srv_request_parse(const codi_model *model, const char *body, size_t len, bool chat,
                      uint64_t seed, int32_t n_ctx, srv_request *out, const char **code,
                      char *msg, size_t msglen);
/* Free what *r holds (not r); a zeroed or already freed one is harmless. */
void srv_request_free(srv_request *r);

#endif
