/* HTTP side of codi serve. Connection threads (libmicrohttpd, one thread
 * per connection) parse and validate a request, tokenize it, hand it to
 * the engine and stream back what the engine's worker produces; they
 * never touch the context. Errors use OpenAI's shape:
 * {"error":{"message","type","code"}}. */
#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "request.h"
#include "server.h"

#define MAX_BODY (1u << 20)
#define WAIT_MS 100 /* how often a waiting connection checks its client */
/* A stream with nothing to say for this long (queued behind busy slots)
 * sends an SSE comment: libmicrohttpd drops a connection idle for its
 * timeout (--idle-timeout), and proxies do the same. At most a third of
 * the idle timeout. */
#define KEEPALIVE_MS 10000

extern const char codi_server_page_html[]; /* page.c */

struct codi_server {
    struct MHD_Daemon *d;
    srv_engine *e;
    codi_model *model;
    char *api_key;
    double timeout_s; /* per request; <= 0: none */
    int keepalive_ms; /* SSE comment after this much silence */
    char model_name[256];
    int port;
    codi_server_log_fn log;
    void *log_user;
    atomic_uint_fast64_t http_total, http_errors, id_counter;
    atomic_bool stopping;
    atomic_bool listening; /* MHD_start_daemon returned: log its messages */
    atomic_int in_flight; /* connections holding a generation request */
    time_t started;
};

typedef struct conn {
    srv_buf body;
    bool too_big;
    srv_req *req; /* submitted request, if any */
} conn;

static void logf_(codi_server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void logf_(codi_server *s, const char *fmt, ...) {
    if (!s->log)
        return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    s->log(s->log_user, line);
}

/* ------------------------------------------------------------ responses */

static enum MHD_Result send_buf(struct MHD_Connection *mc, unsigned status,
                                const char *type, const char *data, size_t n) {
    struct MHD_Response *r =
        MHD_create_response_from_buffer(n, (void *)data, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, "Content-Type", type);
    if (status == 503)
        MHD_add_response_header(r, "Retry-After", "1");
    if (status == 401)
        MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
    enum MHD_Result ret = MHD_queue_response(mc, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result send_json(struct MHD_Connection *mc, unsigned status, const char *json) {
    return send_buf(mc, status, "application/json", json, strlen(json));
}

static const char *err_type(unsigned status) {
    switch (status) {
    case 400: case 404: case 405: case 413: return "invalid_request_error";
    case 401: return "authentication_error";
    case 503: return "server_overloaded";
    default: return "server_error";
    }
}

static void put_error(srv_buf *b, unsigned status, const char *code, const char *msg) {
    srv_buf_puts(b, "{\"error\":{\"message\":");
    srv_buf_json_str(b, msg, strlen(msg));
    srv_buf_printf(b, ",\"type\":\"%s\",\"param\":null,\"code\":", err_type(status));
    if (code)
        srv_buf_printf(b, "\"%s\"}}", code);
    else
        srv_buf_puts(b, "null}}");
}

static enum MHD_Result send_error(codi_server *s, struct MHD_Connection *mc, unsigned status,
                                  const char *code, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static enum MHD_Result send_error(codi_server *s, struct MHD_Connection *mc, unsigned status,
                                  const char *code, const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    atomic_fetch_add(&s->http_errors, 1);
    srv_buf b = {0};
    put_error(&b, status, code, msg);
    enum MHD_Result ret = b.p ? send_json(mc, status, b.p) : MHD_NO;
    srv_buf_free(&b);
    return ret;
}

/* The client closed its end (or the socket failed). */
static bool client_gone(struct MHD_Connection *mc) {
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci)
        return false;
    struct pollfd p = {.fd = ci->connect_fd, .events = POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    return (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
}

/* Wait until r has text past `have` or is done: 0. -1: the client left
 * (the request is marked cancelled). 1: neither within max_ms (0: no
 * limit). */
static int wait_req(srv_req *r, struct MHD_Connection *mc, size_t have, int max_ms) {
    int waited_ms = 0;
    pthread_mutex_lock(&r->mu);
    while (r->text_len == have && r->state != SRV_DONE) {
        if (max_ms > 0 && waited_ms >= max_ms) {
            pthread_mutex_unlock(&r->mu);
            return 1;
        }
        waited_ms += WAIT_MS;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += WAIT_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT) {
            pthread_mutex_unlock(&r->mu);
            if (client_gone(mc)) {
                atomic_store(&r->cancelled, true);
                return -1;
            }
            pthread_mutex_lock(&r->mu);
        }
    }
    pthread_mutex_unlock(&r->mu);
    return 0;
}

/* ------------------------------------------------------------ streaming */

typedef struct stream {
    codi_server *s;
    srv_req *r;
    struct MHD_Connection *mc;
    bool chat, include_usage;
    char id[48];
    long long created;
    int phase; /* 0: role chunk next, 1: content, 2: all queued */
    srv_buf out;
    size_t off;      /* bytes of out already handed to MHD */
    size_t text_off; /* bytes of r->text already sent */
} stream;

static void chunk_head(stream *st) {
    srv_buf_printf(&st->out, "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":",
                   st->id, st->chat ? "chat.completion.chunk" : "text_completion", st->created);
    srv_buf_json_str(&st->out, st->s->model_name, strlen(st->s->model_name));
    srv_buf_puts(&st->out, ",\"choices\":[");
}

/* One chunk: text (may be NULL) and finish reason (NULL: none yet). */
static void chunk(stream *st, const char *text, size_t n, const char *finish, bool role) {
    chunk_head(st);
    if (st->chat) {
        srv_buf_puts(&st->out, "{\"index\":0,\"delta\":{");
        if (role)
            srv_buf_puts(&st->out, "\"role\":\"assistant\",\"content\":\"\"");
        else if (text) {
            srv_buf_puts(&st->out, "\"content\":");
            srv_buf_json_str(&st->out, text, n);
        }
        srv_buf_puts(&st->out, "},\"logprobs\":null");
    } else {
        srv_buf_puts(&st->out, "{\"index\":0,\"text\":");
        srv_buf_json_str(&st->out, text ? text : "", text ? n : 0);
        srv_buf_puts(&st->out, ",\"logprobs\":null");
    }
    if (finish)
        srv_buf_printf(&st->out, ",\"finish_reason\":\"%s\"}]}\n\n", finish);
    else
        srv_buf_puts(&st->out, ",\"finish_reason\":null}]}\n\n");
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream *st = cls;
    while (st->off == st->out.len) {
        st->off = 0;
        st->out.len = 0;
        if (st->phase == 2)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (st->phase == 0) {
            st->phase = 1;
            if (st->chat) {
                chunk(st, NULL, 0, NULL, true);
                continue;
            }
        }
        int w = wait_req(st->r, st->mc, st->text_off, st->s->keepalive_ms);
        if (w < 0)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (w > 0) { /* clients skip SSE comments */
            if (srv_buf_puts(&st->out, ": keep-alive\n\n"))
                return MHD_CONTENT_READER_END_WITH_ERROR;
            continue;
        }
        srv_req *r = st->r;
        pthread_mutex_lock(&r->mu);
        size_t n = r->text_len - st->text_off;
        char *piece = NULL;
        if (n) {
            piece = malloc(n);
            if (piece)
                memcpy(piece, r->text + st->text_off, n);
            st->text_off = r->text_len;
        }
        bool done = r->state == SRV_DONE;
        char error[256];
        snprintf(error, sizeof(error), "%s", r->error);
        const char *finish = r->finish;
        int32_t n_gen = r->n_gen;
        pthread_mutex_unlock(&r->mu);
        if (n && !piece)
            return MHD_CONTENT_READER_END_WITH_ERROR;
        if (piece)
            chunk(st, piece, n, NULL, false);
        free(piece);
        if (done) {
            if (error[0]) {
                srv_buf b = {0};
                put_error(&b, 500, NULL, error);
                srv_buf_printf(&st->out, "data: %s\n\n", b.p ? b.p : "{}");
                srv_buf_free(&b);
            } else {
                chunk(st, NULL, 0, finish ? finish : "stop", false);
                if (st->include_usage) {
                    chunk_head(st);
                    srv_buf_printf(&st->out,
                                   "],\"usage\":{\"prompt_tokens\":%d,\"completion_tokens\":%d,"
                                   "\"total_tokens\":%d}}\n\n",
                                   r->n_prompt, n_gen, r->n_prompt + n_gen);
                }
            }
            srv_buf_puts(&st->out, "data: [DONE]\n\n");
            st->phase = 2;
        }
        if (!st->out.p)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = st->out.len - st->off;
    if (n > max)
        n = max;
    memcpy(buf, st->out.p + st->off, n);
    st->off += n;
    return (ssize_t)n;
}

static void stream_free(void *cls) {
    stream *st = cls;
    atomic_store(&st->r->cancelled, true); /* no-op once done */
    srv_req_release(st->r);
    srv_buf_free(&st->out);
    free(st);
}

/* ---------------------------------------------------------- completions */

/* POST /v1/chat/completions and /v1/completions: parse (request.c), queue,
 * then stream the answer or wait for all of it. */
static enum MHD_Result handle_completion(codi_server *s, struct MHD_Connection *mc, conn *c,
                                         bool chat) {
    uint64_t id = atomic_fetch_add(&s->id_counter, 1);
    srv_request q;
    const char *code;
    char msg[512];
    int status = srv_request_parse(s->model, c->body.p, c->body.len, chat,
                                   (uint64_t)time(NULL) * 1000003u + id, srv_engine_n_ctx(s->e), &q,
                                   &code, msg, sizeof(msg));
    if (status)
        return send_error(s, mc, (unsigned)status, code, "%s", msg);
    enum MHD_Result ret;
    srv_req *r = srv_req_new();
    if (!r) {
        srv_request_free(&q);
        return send_error(s, mc, 500, NULL, "out of memory");
    }
    /* The request takes the prompt and the stop strings. */
    r->prompt = q.tokens;
    r->n_prompt = q.n_tokens;
    for (int k = 0; k < q.n_stop; k++) {
        r->stop[k] = q.stop[k];
        r->stop_len[k] = strlen(q.stop[k]);
    }
    r->n_stop = q.n_stop;
    r->max_tokens = q.max_tokens > 0 ? q.max_tokens : srv_engine_n_ctx(s->e) - q.n_tokens;
    r->sp = q.sp;
    r->ignore_eos = q.ignore_eos;
    if (s->timeout_s > 0)
        r->deadline = srv_now() + s->timeout_s;
    const bool streamed = q.stream, include_usage = q.include_usage;
    int rc = srv_engine_submit(s->e, r);
    if (rc) {
        ret = send_error(s, mc, 503, rc == CODI_ERANGE ? "queue_full" : "shutting_down",
                         rc == CODI_ERANGE ? "the server is busy: the request queue is full, retry later"
                                           : "the server is shutting down");
        goto done;
    }
    srv_req_retain(r);
    c->req = r; /* the connection's reference: cancels on disconnect */
    atomic_fetch_add(&s->in_flight, 1);
    char idbuf[48];
    snprintf(idbuf, sizeof(idbuf), "%s-%llx%06llx", chat ? "chatcmpl" : "cmpl",
             (unsigned long long)s->started, (unsigned long long)id);
    if (streamed) {
        stream *st = calloc(1, sizeof(*st));
        if (!st) {
            atomic_store(&r->cancelled, true);
            ret = send_error(s, mc, 500, NULL, "out of memory");
            goto done;
        }
        st->s = s;
        st->r = r;
        srv_req_retain(r);
        st->mc = mc;
        st->chat = chat;
        st->include_usage = include_usage;
        snprintf(st->id, sizeof(st->id), "%s", idbuf);
        st->created = (long long)time(NULL);
        struct MHD_Response *resp =
            MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, st, stream_free);
        if (!resp) {
            stream_free(st);
            ret = MHD_NO;
            goto done;
        }
        MHD_add_response_header(resp, "Content-Type", "text/event-stream");
        MHD_add_response_header(resp, "Cache-Control", "no-cache");
        ret = MHD_queue_response(mc, 200, resp);
        MHD_destroy_response(resp);
        goto done;
    }
    /* Not streamed: wait for the whole answer. */
    for (;;) {
        pthread_mutex_lock(&r->mu);
        bool done = r->state == SRV_DONE;
        size_t have = r->text_len;
        pthread_mutex_unlock(&r->mu);
        if (done)
            break;
        if (wait_req(r, mc, have, 0) < 0) {
            ret = MHD_NO; /* the client left: drop the connection */
            goto done;
        }
    }
    if (r->error[0]) {
        unsigned st = r->error_status ? (unsigned)r->error_status : 500;
        ret = send_error(s, mc, st, r->error_code, "%s", r->error);
        goto done;
    }
    srv_buf b = {0};
    srv_buf_printf(&b, "{\"id\":\"%s\",\"object\":\"%s\",\"created\":%lld,\"model\":", idbuf,
                   chat ? "chat.completion" : "text_completion", (long long)time(NULL));
    srv_buf_json_str(&b, s->model_name, strlen(s->model_name));
    if (chat) {
        srv_buf_puts(&b, ",\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":");
        srv_buf_json_str(&b, r->text ? r->text : "", r->text_len);
        srv_buf_puts(&b, "},\"logprobs\":null");
    } else {
        srv_buf_puts(&b, ",\"choices\":[{\"index\":0,\"text\":");
        srv_buf_json_str(&b, r->text ? r->text : "", r->text_len);
        srv_buf_puts(&b, ",\"logprobs\":null");
    }
    srv_buf_printf(&b,
                   ",\"finish_reason\":\"%s\"}],\"usage\":{\"prompt_tokens\":%d,"
                   "\"completion_tokens\":%d,\"total_tokens\":%d}}",
                   r->finish ? r->finish : "stop", r->n_prompt, r->n_gen, r->n_prompt + r->n_gen);
    ret = b.p ? send_json(mc, 200, b.p) : MHD_NO;
    srv_buf_free(&b);
done:
    srv_req_release(r);
    return ret;
}

/* ------------------------------------------------------- small endpoints */

static enum MHD_Result handle_models(codi_server *s, struct MHD_Connection *mc) {
    srv_buf b = {0};
    srv_buf_puts(&b, "{\"object\":\"list\",\"data\":[{\"id\":");
    srv_buf_json_str(&b, s->model_name, strlen(s->model_name));
    srv_buf_printf(&b, ",\"object\":\"model\",\"created\":%lld,\"owned_by\":\"codi\",\"meta\":{\"n_ctx_slot\":%d}}]}",
                   (long long)s->started, srv_engine_n_ctx(s->e));
    enum MHD_Result ret = b.p ? send_json(mc, 200, b.p) : MHD_NO;
    srv_buf_free(&b);
    return ret;
}

static enum MHD_Result handle_metrics(codi_server *s, struct MHD_Connection *mc) {
    srv_metrics m;
    srv_engine_metrics(s->e, &m);
    srv_buf b = {0};
    srv_buf_printf(&b,
        "# HELP codi_http_requests_total HTTP requests received.\n"
        "# TYPE codi_http_requests_total counter\ncodi_http_requests_total %llu\n"
        "# HELP codi_http_errors_total HTTP requests answered with an error.\n"
        "# TYPE codi_http_errors_total counter\ncodi_http_errors_total %llu\n"
        "# HELP codi_requests_total Generation requests accepted into the queue.\n"
        "# TYPE codi_requests_total counter\ncodi_requests_total %llu\n"
        "# HELP codi_requests_completed_total Generation requests finished.\n"
        "# TYPE codi_requests_completed_total counter\ncodi_requests_completed_total %llu\n"
        "# HELP codi_requests_cancelled_total Requests dropped because the client left.\n"
        "# TYPE codi_requests_cancelled_total counter\ncodi_requests_cancelled_total %llu\n"
        "# HELP codi_requests_rejected_total Requests refused (queue full or shutting down).\n"
        "# TYPE codi_requests_rejected_total counter\ncodi_requests_rejected_total %llu\n"
        "# HELP codi_requests_timed_out_total Requests that reached the --timeout (queued or running).\n"
        "# TYPE codi_requests_timed_out_total counter\ncodi_requests_timed_out_total %llu\n"
        "# HELP codi_prompt_tokens_total Prompt tokens evaluated.\n"
        "# TYPE codi_prompt_tokens_total counter\ncodi_prompt_tokens_total %llu\n"
        "# HELP codi_tokens_generated_total Tokens generated.\n"
        "# TYPE codi_tokens_generated_total counter\ncodi_tokens_generated_total %llu\n"
        "# HELP codi_decode_steps_total Batched decode passes.\n"
        "# TYPE codi_decode_steps_total counter\ncodi_decode_steps_total %llu\n"
        "# HELP codi_decode_seconds_total Seconds spent in batched decode passes.\n"
        "# TYPE codi_decode_seconds_total counter\ncodi_decode_seconds_total %.6f\n"
        "# HELP codi_tokens_per_second Generated tokens per second of decode time.\n"
        "# TYPE codi_tokens_per_second gauge\ncodi_tokens_per_second %.3f\n"
        "# HELP codi_queue_depth Requests waiting for a slot.\n"
        "# TYPE codi_queue_depth gauge\ncodi_queue_depth %d\n"
        "# HELP codi_slots_busy Slots holding a request.\n"
        "# TYPE codi_slots_busy gauge\ncodi_slots_busy %d\n"
        "# HELP codi_slots_total Slots.\n"
        "# TYPE codi_slots_total gauge\ncodi_slots_total %d\n",
        (unsigned long long)atomic_load(&s->http_total), (unsigned long long)atomic_load(&s->http_errors),
        (unsigned long long)m.requests_total, (unsigned long long)m.requests_done,
        (unsigned long long)m.requests_cancelled, (unsigned long long)m.requests_rejected,
        (unsigned long long)m.requests_timed_out,
        (unsigned long long)m.prompt_tokens, (unsigned long long)m.gen_tokens,
        (unsigned long long)m.steps, m.decode_seconds,
        m.decode_seconds > 0 ? (double)m.gen_tokens / m.decode_seconds : 0.0, m.queue_depth,
        m.slots_busy, m.slots_total);
    enum MHD_Result ret =
        b.p ? send_buf(mc, 200, "text/plain; version=0.0.4", b.p, b.len) : MHD_NO;
    srv_buf_free(&b);
    return ret;
}

static bool auth_ok(codi_server *s, struct MHD_Connection *mc) {
    if (!s->api_key)
        return true;
    const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Authorization");
    if (!h || strncmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    size_t a = strlen(h), k = strlen(s->api_key);
    unsigned diff = (unsigned)(a != k);
    for (size_t i = 0; i < k; i++)
        diff |= (unsigned)(unsigned char)s->api_key[i] ^ (unsigned)(unsigned char)(i < a ? h[i] : 0);
    return diff == 0;
}

enum route { R_NONE, R_PAGE, R_HEALTH, R_METRICS, R_MODELS, R_CHAT, R_COMPL };

static enum route find_route(const char *url, const char **method_needed) {
    static const struct { const char *path; const char *method; enum route r; } T[] = {
        {"/", "GET", R_PAGE},
        {"/index.html", "GET", R_PAGE},
        {"/health", "GET", R_HEALTH},
        {"/metrics", "GET", R_METRICS},
        {"/v1/models", "GET", R_MODELS},
        {"/models", "GET", R_MODELS},
        {"/v1/chat/completions", "POST", R_CHAT},
        {"/chat/completions", "POST", R_CHAT},
        {"/v1/completions", "POST", R_COMPL},
        {"/completions", "POST", R_COMPL},
    };
    for (size_t i = 0; i < sizeof(T) / sizeof(T[0]); i++)
        if (!strcmp(url, T[i].path)) {
            *method_needed = T[i].method;
            return T[i].r;
        }
    return R_NONE;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls) {
    (void)version;
    codi_server *s = cls;
    conn *c = *con_cls;
    const char *need = NULL;
    enum route r = find_route(url, &need);
    if (!c) {
        atomic_fetch_add(&s->http_total, 1);
        c = calloc(1, sizeof(*c));
        if (!c)
            return MHD_NO;
        *con_cls = c;
        if (r == R_NONE)
            return send_error(s, mc, 404, "not_found", "no such endpoint: %s %s", method, url);
        if (strcmp(method, need) != 0 && !(r == R_PAGE && !strcmp(method, "HEAD")))
            return send_error(s, mc, 405, "method_not_allowed", "%s needs %s", url, need);
        if (atomic_load(&s->stopping) && (r == R_CHAT || r == R_COMPL))
            return send_error(s, mc, 503, "shutting_down", "the server is shutting down");
        bool open = r == R_PAGE || r == R_HEALTH;
        if (!open && !auth_ok(s, mc))
            return send_error(s, mc, 401, "invalid_api_key",
                              "missing or wrong API key (Authorization: Bearer KEY)");
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > MAX_BODY)
            return send_error(s, mc, 413, "body_too_large", "the request body exceeds %u bytes",
                              MAX_BODY);
        switch (r) {
        case R_PAGE:
            return send_buf(mc, 200, "text/html; charset=utf-8", codi_server_page_html,
                            strlen(codi_server_page_html));
        case R_HEALTH:
            return atomic_load(&s->stopping)
                       ? send_json(mc, 503, "{\"status\":\"shutting_down\"}")
                       : send_json(mc, 200, "{\"status\":\"ok\"}");
        case R_METRICS: return handle_metrics(s, mc);
        case R_MODELS: return handle_models(s, mc);
        default: return MHD_YES; /* POST: wait for the body */
        }
    }
    if (*upload_data_size) {
        if (!c->too_big) {
            if (c->body.len + *upload_data_size > MAX_BODY) {
                c->too_big = true;
                srv_buf_free(&c->body);
            } else if (srv_buf_put(&c->body, upload_data, *upload_data_size)) {
                return MHD_NO;
            }
        }
        *upload_data_size = 0;
        return MHD_YES;
    }
    if (c->too_big)
        return send_error(s, mc, 413, "body_too_large", "the request body exceeds %u bytes", MAX_BODY);
    return handle_completion(s, mc, c, r == R_CHAT);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)mc;
    (void)toe;
    codi_server *s = cls;
    conn *c = *con_cls;
    if (!c)
        return;
    if (c->req) {
        atomic_store(&c->req->cancelled, true); /* no-op once done */
        srv_req_release(c->req);
        atomic_fetch_sub(&s->in_flight, 1);
    }
    srv_buf_free(&c->body);
    free(c);
    *con_cls = NULL;
}

static void mhd_log(void *cls, const char *fmt, va_list ap) {
    codi_server *s = cls;
    /* Before the daemon runs, its complaint (bind failed) is in the one
     * error line codi_server_start returns. */
    if (!s->log || !atomic_load(&s->listening))
        return;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    size_t n = strlen(line);
    while (n && line[n - 1] == '\n')
        line[--n] = '\0';
    s->log(s->log_user, line);
}

int codi_server_start(codi_model *model, const codi_server_params *p, codi_server **out,
                      char *err, size_t errlen) {
    *out = NULL;
    codi_server *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "server: out of memory");
        return CODI_ENOMEM;
    }
    s->model = model;
    s->log = p->log;
    s->log_user = p->log_user;
    s->started = time(NULL);
    s->timeout_s = p->timeout_s == 0 ? 600.0 : p->timeout_s;
    const unsigned idle_s = p->idle_timeout_s > 0 ? (unsigned)p->idle_timeout_s : 30u;
    s->keepalive_ms = (int)(idle_s * 1000u / 3u);
    if (s->keepalive_ms > KEEPALIVE_MS)
        s->keepalive_ms = KEEPALIVE_MS;
    snprintf(s->model_name, sizeof(s->model_name), "%s", p->model_name ? p->model_name : "codi");
    if (p->api_key && p->api_key[0] && !(s->api_key = strdup(p->api_key))) {
        free(s);
        snprintf(err, errlen, "server: out of memory");
        return CODI_ENOMEM;
    }
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)p->port);
    const char *host = p->host ? p->host : "127.0.0.1";
    if (p->port < 0 || p->port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        snprintf(err, errlen, "server: bad address %s:%d (an IPv4 address and a port 0..65535)",
                 host, p->port);
        free(s->api_key);
        free(s);
        return CODI_EINVAL;
    }
    int32_t n_par = p->n_parallel > 0 ? p->n_parallel : 4;
    int32_t n_ctx = p->n_ctx_slot > 0 ? p->n_ctx_slot : 2048;
    int32_t train = codi_model_n_ctx_train(model);
    if (p->n_ctx_slot <= 0 && train > 0 && train < n_ctx)
        n_ctx = train;
    int rc = srv_engine_create(model, n_par, n_ctx, p->n_threads, p->max_queue > 0 ? p->max_queue : 64,
                               p->kv, &s->e, err, errlen);
    if (rc) {
        free(s->api_key);
        free(s);
        return rc;
    }
    s->d = MHD_start_daemon(
        MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG |
            MHD_USE_POLL | MHD_USE_ITC,
        (uint16_t)p->port, NULL, NULL, on_request, s,
        MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
        MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
        MHD_OPTION_CONNECTION_TIMEOUT, idle_s,
        MHD_OPTION_CONNECTION_LIMIT, (unsigned)512,
        MHD_OPTION_END);
    if (!s->d) {
        snprintf(err, errlen, "server: cannot listen on %s:%d: %s", host, p->port, strerror(errno));
        srv_engine_free(s->e);
        free(s->api_key);
        free(s);
        return CODI_EIO;
    }
    atomic_store(&s->listening, true);
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
    s->port = di ? di->port : p->port;
    logf_(s, "listening on http://%s:%d (%d slots x %d tokens)", host, s->port, n_par,
          srv_engine_n_ctx(s->e));
    *out = s;
    return 0;
}

int codi_server_port(const codi_server *s) { return s->port; }
int32_t codi_server_n_ctx(const codi_server *s) { return srv_engine_n_ctx(s->e); }

void codi_server_stop(codi_server *s, double drain_s) {
    if (!s)
        return;
    /* Connections are still accepted while running requests drain: new
     * generation requests get 503 shutting_down and /health 503 (rather
     * than a connection left hanging in the listen backlog until it is
     * reset), so a client or load balancer learns at once. */
    atomic_store(&s->stopping, true);
    srv_engine_drain(s->e, drain_s);
    /* Let the connections whose requests just finished send their answers
     * (MHD_stop_daemon would close them mid-response). */
    for (int i = 0; i < 200 && atomic_load(&s->in_flight) > 0; i++) {
        struct timespec ts = {0, 25 * 1000000L};
        nanosleep(&ts, NULL);
    }
    MHD_stop_daemon(s->d); /* closes the listener, waits for connection threads */
    srv_engine_free(s->e);
    free(s->api_key);
    free(s);
}
