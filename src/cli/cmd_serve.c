/* codi serve: run the OpenAI-compatible server until SIGINT / SIGTERM,
 * then drain running requests and exit 0. */
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "../server/server.h"
#include "cli.h"

static void log_line(void *user, const char *line) {
    (void)user;
    fprintf(stderr, "codi serve: %s\n", line);
    fflush(stderr);
}

int cmd_serve(const cli_opts *o) {
    codi_model *m;
    int rc = cli_load(o, &m, NULL);
    if (rc)
        return rc;
    const char *name = strrchr(o->model, '/');
    name = name ? name + 1 : o->model;
    char model_name[256];
    snprintf(model_name, sizeof(model_name), "%s", name);
    size_t L = strlen(model_name);
    if (L > 5 && !strcmp(model_name + L - 5, ".gguf"))
        model_name[L - 5] = '\0';

    codi_server_params p;
    memset(&p, 0, sizeof(p));
    p.host = o->host ? o->host : "127.0.0.1";
    p.port = o->port >= 0 ? o->port : 8080;
    p.n_parallel = o->parallel;
    p.n_ctx_slot = o->ctx_per_slot;
    p.n_threads = o->n_threads;
    p.max_queue = o->queue;
    p.api_key = o->api_key;
    p.timeout_s = o->timeout < 0 ? 0.0 : o->timeout == 0 ? -1.0 : (double)o->timeout;
    p.idle_timeout_s = o->idle_timeout;
    p.model_name = model_name;
    codi_context_params kv;
    char *calib = NULL;
    /* --kv-budget P% is a share of a slot's context */
    int32_t slot_ctx = o->ctx_per_slot;
    if (slot_ctx <= 0)
        slot_ctx = CODI_CLI_MIN(codi_model_n_ctx_train(m) > 0 ? codi_model_n_ctx_train(m) : 2048, 2048);
    if (cli_context_params(o, m, slot_ctx, &kv, &calib)) {
        codi_model_free(m);
        return 1;
    }
    p.kv = &kv;
    p.log = log_line;

    /* SIGINT / SIGTERM blocked here and in every thread the server starts
     * (they inherit the mask); this thread takes them with sigwait. */
    sigset_t stop_set;
    sigemptyset(&stop_set);
    sigaddset(&stop_set, SIGINT);
    sigaddset(&stop_set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_set, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    codi_server *s;
    rc = codi_server_start(m, &p, &s, err, sizeof(err));
    free(calib);
    if (rc) {
        fprintf(stderr, "codi: %s\n", err);
        codi_model_free(m);
        return 1;
    }
    int sig = 0;
    while (sigwait(&stop_set, &sig) != 0)
        ;
    fprintf(stderr, "codi serve: stopping (draining running requests)\n");
    codi_server_stop(s, 10.0);
    codi_model_free(m);
    fprintf(stderr, "codi serve: stopped\n");
    return 0;
}
