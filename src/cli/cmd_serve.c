/* codi serve: run the OpenAI-compatible server until SIGINT / SIGTERM,
 * then drain running requests and exit 0. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "../server/server.h"
#include "cli.h"

static volatile sig_atomic_t g_stop;

static void on_signal(int sig) {
    (void)sig;
    g_stop = 1;
}

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
    p.model_name = model_name;
    p.log = log_line;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char err[512];
    codi_server *s;
    if (codi_server_start(m, &p, &s, err, sizeof(err))) {
        fprintf(stderr, "codi: %s\n", err);
        codi_model_free(m);
        return 1;
    }
    while (!g_stop)
        pause();
    fprintf(stderr, "codi serve: stopping (draining running requests)\n");
    codi_server_stop(s, 10.0);
    codi_model_free(m);
    fprintf(stderr, "codi serve: stopped\n");
    return 0;
}
