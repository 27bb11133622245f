/* codi serve: an OpenAI-compatible HTTP server (libmicrohttpd, one thread
 * per connection) in front of the batching engine (engine.h). */
#ifndef CODI_SERVER_H
#define CODI_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "codi.h"

typedef void (*codi_server_log_fn)(void *user, const char *line);

typedef struct codi_server_params {
    const char *host;      /* IPv4 address to bind; NULL: 127.0.0.1 */
    int port;              /* 0: any free port (see codi_server_port) */
    int32_t n_parallel;    /* slots; 0: 4 */
    int32_t n_ctx_slot;    /* KV tokens per slot; 0: 2048 or less */
    int32_t n_threads;     /* compute threads; 0: all cores */
    int32_t max_queue;     /* waiting requests before 503; 0: 64 */
    const char *api_key;   /* NULL: no auth */
    double timeout_s;      /* per request, queue wait + generation; 0: 600,
                              < 0: none */
    int idle_timeout_s;    /* close connections idle this long; 0: 30 */
    const char *model_name;/* reported by /v1/models */
    const codi_context_params *kv; /* KV cache type and budget of every slot
                              (kv_* fields); NULL: f16, no budget */
    codi_server_log_fn log;/* NULL: silent */
    void *log_user;
} codi_server_params;

typedef struct codi_server codi_server;

/* Start serving model (which must outlive the server). */
int codi_server_start(codi_model *model, const codi_server_params *params,
                      codi_server **out, char *err, size_t errlen);
int codi_server_port(const codi_server *s);
int32_t codi_server_n_ctx(const codi_server *s);
/* Stop accepting, drain running requests (up to drain_s), stop and free. */
void codi_server_stop(codi_server *s, double drain_s);

#endif
