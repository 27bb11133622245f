/* The server's engine: one worker thread owns the codi_context and runs
 * continuous batching over n_parallel slots. HTTP threads only build a
 * srv_req, submit it and read the text it produces (under req->mu). */
#ifndef CODI_SERVER_ENGINE_H
#define CODI_SERVER_ENGINE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "codi.h"

#define SRV_MAX_STOP 4

enum { SRV_QUEUED = 0, SRV_RUNNING = 1, SRV_DONE = 2 };

typedef struct srv_req {
    /* Set by the submitter; read-only once submitted. */
    int32_t *prompt; /* malloc'd, owned */
    int32_t n_prompt;
    int32_t max_tokens;
    codi_sampler_params sp;
    char *stop[SRV_MAX_STOP]; /* malloc'd, owned */
    size_t stop_len[SRV_MAX_STOP];
    int n_stop;
    bool ignore_eos; /* benchmarks: generate max_tokens regardless */
    double deadline; /* CLOCK_MONOTONIC seconds (srv_now); 0: none. A request
                        still queued then fails (503), a running one ends
                        with finish "length" and the text so far */

    /* Shared with the worker: guarded by mu, signalled on cv. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    char *text; /* generated text so far, whole UTF-8 characters only */
    size_t text_len, text_cap;
    int state;          /* SRV_QUEUED / SRV_RUNNING / SRV_DONE */
    const char *finish; /* "stop" / "length" once done */
    char error[256];    /* non-empty: failed */
    int error_status;   /* HTTP status for error; 0: 500 */
    const char *error_code; /* OpenAI error code for error; NULL: null */
    int32_t n_gen;

    atomic_bool cancelled; /* the client went away: the worker drops it */
    atomic_int refs;
} srv_req;

/* A request with one reference (the caller's). */
srv_req *srv_req_new(void);
void srv_req_retain(srv_req *r);
void srv_req_release(srv_req *r);

typedef struct srv_engine srv_engine;

typedef struct srv_metrics {
    uint64_t requests_total;   /* submitted */
    uint64_t requests_done;
    uint64_t requests_rejected;/* queue full or shutting down */
    uint64_t requests_cancelled;
    uint64_t requests_timed_out;/* hit their deadline (queued or running) */
    uint64_t prompt_tokens;    /* prompt tokens evaluated */
    uint64_t gen_tokens;       /* tokens generated */
    uint64_t steps;            /* batched decode passes */
    double decode_seconds;     /* time inside codi_decode_batch */
    int queue_depth;
    int slots_busy;
    int slots_total;
} srv_metrics;

int srv_engine_create(codi_model *model, int32_t n_parallel, int32_t n_ctx,
                      int32_t n_threads, int32_t max_queue, const codi_context_params *kv,
                      srv_engine **out, char *err, size_t errlen);
/* Queue r (the engine takes its own reference). 0, CODI_ERANGE when the
 * queue is full, CODI_EINVAL when the engine is shutting down. */
int srv_engine_submit(srv_engine *e, srv_req *r);
int32_t srv_engine_n_ctx(const srv_engine *e);
/* CLOCK_MONOTONIC in seconds (the clock of srv_req.deadline). */
double srv_now(void);
void srv_engine_metrics(srv_engine *e, srv_metrics *m);
/* Refuse new requests; let running ones finish for up to timeout_s, then
 * cut them (error "server shutting down"). */
void srv_engine_drain(srv_engine *e, double timeout_s);
/* Drain (if not yet), stop the worker and free everything. NULL: no-op. */
void srv_engine_free(srv_engine *e);

/* UTF-8 helpers (text.c). */
/* Length of the longest prefix of s[0..n) that does not end inside a
 * UTF-8 sequence that could still be completed. */
size_t srv_utf8_complete_len(const char *s, size_t n);
bool srv_utf8_valid(const char *s, size_t n);
/* Append s[0..n) as a JSON string literal (with quotes) to *buf; invalid
 * UTF-8 becomes U+FFFD. Returns 0 or CODI_ENOMEM. */
typedef struct srv_buf {
    char *p;
    size_t len, cap;
} srv_buf;
int srv_buf_put(srv_buf *b, const char *s, size_t n);
int srv_buf_puts(srv_buf *b, const char *s);
int srv_buf_printf(srv_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
int srv_buf_json_str(srv_buf *b, const char *s, size_t n);
void srv_buf_free(srv_buf *b);
/* False when JSON text s[0..n) nests arrays/objects deeper than max_depth
 * (checked before parsing: cJSON's parser recurses). */
bool srv_json_depth_ok(const char *s, size_t n, int max_depth);

#endif
