/* Fuzz target: codi serve's request handling, end to end in one process. A
 * server (src/server/, libmicrohttpd) runs on a loopback port with the tiny
 * seed model (tests/fuzz/corpus/model/tiny-bpe.gguf: 8-dim, ChatML), two
 * slots of 64 tokens and a 5 s request timeout. Input: one byte picking the
 * request, then the rest:
 *   0: POST /v1/chat/completions with the rest as the JSON body
 *   1: POST /v1/completions with the rest as the JSON body
 *   2: the rest sent as the whole raw HTTP request
 * Checked: the server answers every request with an HTTP status line, never
 * a 500 (a bug on our side), and keeps answering (a crash or hang is caught
 * by the sanitizers / libFuzzer's timeout). */
#include "fuzz_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "server/server.h"

static codi_model *model;
static codi_server *server;
static int port;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char err[512] = "";
    const char *path = CODI_SOURCE_DIR "/tests/fuzz/corpus/model/tiny-bpe.gguf";
    if (codi_model_load(path, NULL, &model, err, sizeof err)) {
        fprintf(stderr, "fuzz: cannot load %s: %s\n", path, err);
        exit(1);
    }
    codi_server_params p = {0};
    p.n_parallel = 2;
    p.n_ctx_slot = 64;
    p.n_threads = 1;
    p.max_queue = 8;
    p.timeout_s = 5;
    p.model_name = "fuzz";
    if (codi_server_start(model, &p, &server, err, sizeof err)) {
        fprintf(stderr, "fuzz: cannot start the server: %s\n", err);
        exit(1);
    }
    port = codi_server_port(server);
    return 0;
}

static void send_all(int fd, const void *p, size_t n) {
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* the server may close early (413, bad request) */
        c += w;
        n -= (size_t)w;
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1)
        return 0;
    const int mode = data[0] % 3;
    const char *body = (const char *)data + 1;
    const size_t len = size - 1;

    int fd = socket(AF_INET, SOCK_STREAM, 0);
    FUZZ_CHECK(fd >= 0);
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc;
    while ((rc = connect(fd, (struct sockaddr *)&a, sizeof a)) != 0 && errno == EINTR)
        ;
    FUZZ_CHECK(rc == 0);
    if (mode == 2) {
        send_all(fd, body, len);
    } else {
        char head[256];
        int n = snprintf(head, sizeof head,
                         "POST %s HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                         "application/json\r\nContent-Length: %zu\r\nConnection: "
                         "close\r\n\r\n",
                         mode == 0 ? "/v1/chat/completions" : "/v1/completions", len);
        send_all(fd, head, (size_t)n);
        send_all(fd, body, len);
    }
    /* A raw request may be incomplete: end it. A framed one is complete, and
     * half-closing it would look like a client that left (the server then
     * drops the request unanswered, by design). */
    if (mode == 2)
        shutdown(fd, SHUT_WR);
    char buf[4096];
    size_t got = 0;
    ssize_t r;
    /* libFuzzer's timer (SIGALRM) interrupts blocking calls: retry them. */
    while ((r = recv(fd, buf + got, sizeof buf - 1 - got, 0)) > 0 || (r < 0 && errno == EINTR)) {
        if (r < 0)
            continue;
        got += (size_t)r;
        if (got == sizeof buf - 1)
            got = 16; /* keep the status line, drop the rest */
    }
    buf[got] = '\0';
    close(fd);
    if (getenv("CODI_FUZZ_VERBOSE")) /* the answer's first line */
        fprintf(stderr, "mode %d: %.*s\n", mode, (int)strcspn(buf, "\r\n"), buf);
    if (mode != 2) {
        /* A well-framed request always gets a status line, never a 500. */
        if (got < 12 || memcmp(buf, "HTTP/1.", 7) != 0) {
            fprintf(stderr, "fuzz: no status line (%zu bytes, last recv %zd, errno %d): %.100s\n",
                    got, r, errno, buf);
            abort();
        }
        if (memcmp(buf + 9, "500", 3) == 0) {
            fprintf(stderr, "fuzz: 500 answer: %.300s\n", buf);
            abort();
        }
    } else if (got >= 12 && memcmp(buf + 9, "500", 3) == 0) {
        fprintf(stderr, "fuzz: 500 answer: %.300s\n", buf);
        abort();
    }
    return 0;
}
