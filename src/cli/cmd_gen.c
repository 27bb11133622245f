/* codi run / codi chat: prompt evaluation and streamed generation. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

static void install_sigint(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_sigint;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
}

typedef struct gen_stats {
    int32_t n_prompt, n_gen;
    double t_prompt, t_gen;
} gen_stats;

static void print_piece(const codi_model *m, int32_t tok) {
    char buf[256];
    int32_t n = codi_token_to_piece(m, tok, buf, (int32_t)sizeof(buf), false);
    if (n > 0)
        fwrite(buf, 1, (size_t)n, stdout);
    fflush(stdout);
}

/* Evaluate toks[n_keep..n) after a cache holding n_keep tokens, then
 * sample up to n_predict tokens, streaming them. Appends generated tokens to
 * *out (if not NULL). Returns 0, or 1 on error (printed). */
static int generate(codi_context *c, const codi_model *m, codi_sampler *s,
                    const int32_t *toks, int32_t n, int32_t n_keep,
                    int32_t n_predict, gen_stats *st, int32_t **out,
                    int32_t *n_out) {
    char err[512];
    const int32_t n_ctx = codi_context_n_ctx(c);
    if (n > n_ctx) {
        fprintf(stderr, "codi: the prompt has %d tokens but the context holds %d (raise -c)\n", n, n_ctx);
        return 1;
    }
    if (n_keep >= n)
        n_keep = n - 1; /* always evaluate at least one token for logits */
    for (int32_t i = 0; i < n; i++)
        codi_sampler_accept(s, toks[i]);
    double t0 = cli_now();
    if (codi_decode(c, toks + n_keep, n - n_keep, n_keep, false, err, sizeof(err))) {
        fprintf(stderr, "codi: %s\n", err);
        return 1;
    }
    st->t_prompt += cli_now() - t0;
    st->n_prompt += n - n_keep;
    codi_moe_reset(c); /* the expert counters printed cover generation */
    int32_t pos = n;
    t0 = cli_now();
    for (int32_t i = 0; n_predict < 0 || i < n_predict; i++) {
        if (g_interrupted)
            break;
        int32_t tok = codi_sampler_sample(s, codi_get_logits(c, -1));
        codi_sampler_accept(s, tok);
        if (out) {
            int32_t *nb = realloc(*out, (size_t)(*n_out + 1) * sizeof(int32_t));
            if (!nb) {
                fprintf(stderr, "codi: out of memory\n");
                return 1;
            }
            *out = nb;
            (*out)[(*n_out)++] = tok;
        }
        if (codi_token_is_eog(m, tok))
            break;
        print_piece(m, tok);
        st->n_gen++;
        if (pos >= n_ctx) {
            fprintf(stderr, "\ncodi: context full (%d tokens)\n", n_ctx);
            break;
        }
        if (codi_decode(c, &tok, 1, pos, false, err, sizeof(err))) {
            fprintf(stderr, "\ncodi: %s\n", err);
            return 1;
        }
        pos++;
    }
    st->t_gen += cli_now() - t0;
    return 0;
}

static void print_stats(const gen_stats *st) {
    fprintf(stderr, "\nprompt:     %5d tokens in %8.2f ms, %8.2f tokens/s\n", st->n_prompt,
            st->t_prompt * 1e3, st->t_prompt > 0 ? st->n_prompt / st->t_prompt : 0.0);
    fprintf(stderr, "generation: %5d tokens in %8.2f ms, %8.2f tokens/s\n", st->n_gen,
            st->t_gen * 1e3, st->t_gen > 0 ? st->n_gen / st->t_gen : 0.0);
}

static int make_sampler(const cli_opts *o, const codi_model *m, codi_sampler **s) {
    char err[512];
    if (codi_sampler_create(&o->sp, codi_model_n_vocab(m), s, err, sizeof(err))) {
        fprintf(stderr, "codi: %s\n", err);
        return 1;
    }
    return 0;
}

int cmd_run(const cli_opts *o) {
    if (!!o->prompt == !!o->file) {
        fprintf(stderr, "codi: run needs exactly one of -p TEXT or -f FILE\n");
        return 2;
    }
    char *text = NULL;
    size_t len = 0;
    if (o->file && !(text = cli_read_file(o->file, &len)))
        return 1;
    const char *prompt = text ? text : o->prompt;
    if (!text)
        len = strlen(prompt);
    codi_model *m;
    codi_context *c;
    int rc = cli_load(o, &m, &c);
    if (rc) {
        free(text);
        return rc;
    }
    codi_sampler *s = NULL;
    int32_t n = 0;
    int32_t *toks = cli_tokenize(m, prompt, len, true, true, &n);
    rc = 1;
    if (!toks || make_sampler(o, m, &s))
        goto done;
    if (n == 0) {
        fprintf(stderr, "codi: the prompt is empty\n");
        goto done;
    }
    if (n > codi_context_n_ctx(c)) {
        fprintf(stderr, "codi: the prompt has %d tokens but the context holds %d (raise -c)\n", n,
                codi_context_n_ctx(c));
        goto done;
    }
    if (!o->no_display_prompt) {
        fwrite(prompt, 1, len, stdout);
        fflush(stdout);
    }
    install_sigint();
    gen_stats st = {0};
    rc = generate(c, m, s, toks, n, 0, o->n_predict, &st, NULL, NULL);
    printf("\n");
    fflush(stdout);
    if (rc == 0) {
        print_stats(&st);
        cli_print_memory(c, o->kv_type);
    }
    if (g_interrupted)
        fprintf(stderr, "codi: interrupted\n");
done:
    free(toks);
    free(text);
    codi_sampler_free(s);
    codi_context_free(c);
    codi_model_free(m);
    return rc;
}

/* ---------------------------------------------------------------- chat */

typedef struct {
    char **roles, **contents;
    size_t n, cap;
} chat_log;

static int chat_push(chat_log *l, const char *role, const char *content, size_t clen) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 8;
        char **r = realloc(l->roles, nc * sizeof(char *));
        if (!r)
            return 1;
        l->roles = r;
        char **c = realloc(l->contents, nc * sizeof(char *));
        if (!c)
            return 1;
        l->contents = c;
        l->cap = nc;
    }
    l->roles[l->n] = strdup(role);
    l->contents[l->n] = strndup(content, clen);
    if (!l->roles[l->n] || !l->contents[l->n])
        return 1;
    l->n++;
    return 0;
}

static void chat_free(chat_log *l) {
    for (size_t i = 0; i < l->n; i++) {
        free(l->roles[i]);
        free(l->contents[i]);
    }
    free(l->roles);
    free(l->contents);
}

int cmd_chat(const cli_opts *o) {
    codi_model *m;
    codi_context *c;
    int rc = cli_load(o, &m, &c);
    if (rc)
        return rc;
    codi_sampler *s = NULL;
    chat_log log = {0};
    int32_t *cached = NULL; /* tokens in the KV cache */
    int32_t n_cached = 0;
    char err[512];
    char *line = NULL;
    size_t cap = 0;
    gen_stats st = {0};
    rc = 1;
    if (make_sampler(o, m, &s))
        goto done;
    /* Check the template once up front so an unsupported one fails fast. */
    {
        const char *r[1] = {"user"}, *t[1] = {"hi"};
        char *probe = NULL;
        if (codi_chat_apply(m, NULL, r, t, 1, true, &probe, err, sizeof(err))) {
            fprintf(stderr, "codi: %s\n", err);
            goto done;
        }
        free(probe);
    }
    if (o->system && chat_push(&log, "system", o->system, strlen(o->system)))
        goto oom;
    install_sigint();
    const bool tty = isatty(0);
    for (;;) {
        if (tty) {
            fprintf(stdout, "> ");
            fflush(stdout);
        }
        g_interrupted = 0;
        ssize_t r = getline(&line, &cap, stdin);
        if (r < 0)
            break;
        while (r > 0 && (line[r - 1] == '\n' || line[r - 1] == '\r'))
            line[--r] = '\0';
        if (r == 0)
            continue;
        if (chat_push(&log, "user", line, (size_t)r))
            goto oom;
        char *prompt = NULL;
        if (codi_chat_apply(m, NULL, (const char *const *)log.roles,
                            (const char *const *)log.contents, log.n, true,
                            &prompt, err, sizeof(err))) {
            fprintf(stderr, "codi: %s\n", err);
            goto done;
        }
        int32_t n = 0;
        int32_t *toks = cli_tokenize(m, prompt, strlen(prompt), true, true, &n);
        free(prompt);
        if (!toks)
            goto done;
        /* Reuse the cached prefix: only the new turn is evaluated. */
        int32_t keep = 0;
        while (keep < n_cached && keep < n && cached[keep] == toks[keep])
            keep++;
        codi_kv_truncate(c, keep);
        codi_sampler_reset(s);
        int32_t *gen = NULL, n_gen = 0;
        int grc = generate(c, m, s, toks, n, keep, o->n_predict, &st, &gen, &n_gen);
        if (grc == 0 || n_gen > 0) {
            printf("\n");
            fflush(stdout);
        }
        if (grc) {
            free(toks);
            free(gen);
            goto done;
        }
        /* The cache now holds toks + all generated tokens except the last
         * sampled one (never evaluated). */
        int32_t total = n + (n_gen > 0 ? n_gen - 1 : 0);
        int32_t *nc = realloc(cached, (size_t)(total > 0 ? total : 1) * sizeof(int32_t));
        if (!nc) {
            free(toks);
            free(gen);
            goto oom;
        }
        cached = nc;
        memcpy(cached, toks, (size_t)n * sizeof(int32_t));
        if (n_gen > 1)
            memcpy(cached + n, gen, (size_t)(n_gen - 1) * sizeof(int32_t));
        n_cached = total;
        /* Assistant text = detokenized generation without the end token. */
        size_t alen = 0, acap = 256;
        char *ans = malloc(acap);
        for (int32_t i = 0; ans && i < n_gen; i++) {
            if (codi_token_is_eog(m, gen[i]))
                break;
            char piece[256];
            int32_t pn = codi_token_to_piece(m, gen[i], piece, (int32_t)sizeof(piece), false);
            if (pn <= 0)
                continue;
            if (alen + (size_t)pn + 1 > acap) {
                acap = (alen + (size_t)pn + 1) * 2;
                char *na = realloc(ans, acap);
                if (!na) {
                    free(ans);
                    ans = NULL;
                    break;
                }
                ans = na;
            }
            memcpy(ans + alen, piece, (size_t)pn);
            alen += (size_t)pn;
        }
        free(toks);
        free(gen);
        if (!ans || chat_push(&log, "assistant", ans, alen)) {
            free(ans);
            goto oom;
        }
        free(ans);
    }
    print_stats(&st);
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "codi: out of memory\n");
done:
    free(line);
    free(cached);
    chat_free(&log);
    codi_sampler_free(s);
    codi_context_free(c);
    codi_model_free(m);
    return rc;
}
