/* codi CLI: argument parsing, help, and the small commands (tokenize,
 * inspect). Bad input -> one line on stderr and a non-zero exit. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cli.h"

#define ALL_MODEL (CMD_RUN | CMD_CHAT | CMD_PPL | CMD_TOKENIZE | CMD_BENCH)
#define GEN (CMD_RUN | CMD_CHAT)
#define EVAL (CMD_RUN | CMD_CHAT | CMD_PPL | CMD_BENCH)
#define KVOPT (EVAL | CMD_SERVE)

typedef enum {
    O_MODEL, O_PROMPT, O_FILE, O_NPREDICT, O_TEMP, O_TOPK, O_TOPP, O_MINP,
    O_REPPEN, O_REPLAST, O_SEED, O_CTX, O_THREADS, O_BATCH, O_SYSTEM,
    O_KLBASE, O_KL, O_CHUNKS, O_NODISP, O_NPROMPT, O_NGEN, O_JSON, O_REPS, O_TYPE,
    O_HOST, O_PORT, O_PARALLEL, O_CTXSLOT, O_APIKEY, O_QUEUE, O_TIMEOUT, O_IDLE,
    O_UBATCH, O_FLASHATTN, O_KVTYPE, O_KVBUDGET, O_KVPOLICY, O_KVWINDOW, O_KVSINKS, O_KVSMOOTH, O_KVKEYS,
    O_KVCALIB, O_KVRECOMPUTE,
    O_MOEMODE, O_EXPBUDGET, O_EXPPOLICY, O_IOTHREADS, O_EXPIO, O_MOELOOK, O_MOEBITS,
    O_QTYPE, O_CALIB, O_BITS, O_SPARSITY, O_GROUP,
    O_MFEXPERTS, O_MFTOPK, O_MFCALIB, O_MFEVAL, O_MFROUTER, O_MFTOKENS, O_MFSHARED, O_MFACTIVE,
} opt_id;

typedef struct {
    opt_id id;
    const char *s, *l; /* short, long */
    const char *arg;   /* NULL: flag without value */
    int cmds;
    const char *help;
} opt_def;

static const opt_def OPTS[] = {
    {O_MODEL, "-m", "--model", "FILE", ALL_MODEL | CMD_INSPECT | CMD_SERVE, "model file (GGUF)"},
    {O_PROMPT, "-p", "--prompt", "TEXT", CMD_RUN | CMD_TOKENIZE, "prompt text"},
    {O_FILE, "-f", "--file", "FILE", CMD_RUN | CMD_PPL | CMD_TOKENIZE, "read the prompt / text from FILE"},
    {O_NPREDICT, "-n", "--n-predict", "N", GEN, "tokens to generate (default 128; -1 = until the context is full)"},
    {O_NPROMPT, "-p", "--n-prompt", "N[,N...]", CMD_BENCH, "prompt lengths of the pp tests (default 512; 0 = none)"},
    {O_NGEN, "-n", "--n-gen", "N[,N...]", CMD_BENCH, "generated tokens of the tg tests (default 128; 0 = none)"},
    {O_JSON, NULL, "--json", NULL, CMD_BENCH, "print a JSON array instead of a markdown table"},
    {O_REPS, "-r", "--repetitions", "N", CMD_BENCH, "counted runs per test after one warm-up (default 5)"},
    {O_TEMP, NULL, "--temp", "T", GEN, "temperature (default 0.8; 0 = greedy)"},
    {O_TOPK, NULL, "--top-k", "K", GEN, "top-k sampling (default 40; 0 = off)"},
    {O_TOPP, NULL, "--top-p", "P", GEN, "top-p sampling (default 0.95; 1 = off)"},
    {O_MINP, NULL, "--min-p", "P", GEN, "min-p sampling (default 0.05; 0 = off)"},
    {O_REPPEN, NULL, "--repeat-penalty", "R", GEN, "repetition penalty (default 1.0 = off)"},
    {O_REPLAST, NULL, "--repeat-last-n", "N", GEN, "tokens the penalty looks back (default 64)"},
    {O_SEED, "-s", "--seed", "S", ALL_MODEL, "random seed (default 49361)"},
    {O_CTX, "-c", "--ctx-size", "N", ALL_MODEL, "context size in tokens (default: 4096 or the model's, smaller; ppl: 512)"},
    {O_THREADS, "-t", "--threads", "N", ALL_MODEL | CMD_SERVE | CMD_QUANTIZE | CMD_MOEFY, "compute threads (default: all cores)"},
    {O_BATCH, "-b", "--batch-size", "N", EVAL, "tokens per forward batch (default 512)"},
    {O_UBATCH, NULL, "--ubatch", "N", EVAL, "the same: prompts are evaluated in chunks of N tokens, scratch memory bounded by N"},
    {O_FLASHATTN, "-fa", "--flash-attn", "on|off|auto", KVOPT, "prefill attention with an online softmax, block by block (auto = default: off; docs/kernels.md)"},
    {O_KVTYPE, NULL, "--kv-type", "TYPE", KVOPT, "KV cache storage: f16 (default), q8 or q4"},
    {O_KVBUDGET, NULL, "--kv-budget", "N|P%", KVOPT, "keep at most N tokens (or P% of the context) per layer in the KV cache"},
    {O_KVPOLICY, NULL, "--kv-policy", "NAME", KVOPT, "which tokens a budget keeps: alisa (default), window or h2o"},
    {O_KVWINDOW, NULL, "--kv-window", "N", KVOPT, "recent tokens a budget always keeps (default: half the budget)"},
    {O_KVSINKS, NULL, "--kv-sinks", "N", KVOPT, "first tokens a budget always keeps (default 4)"},
    {O_KVRECOMPUTE, NULL, "--kv-recompute", "R", KVOPT, "with --kv-budget: every R tokens rebuild the cache from the token ids with full attention, so evicted tokens that matter again come back (default off)"},
    {O_KVSMOOTH, NULL, "--kv-smooth", "on|off", KVOPT, "key smoothing for q8/q4 keys (default: on for q4 keys grouped per token)"},
    {O_KVKEYS, NULL, "--kv-keys", "channel|token", KVOPT, "q8/q4 key groups: per channel over 16 tokens or per token over 32 channels (default: channel for q4 without --kv-budget)"},
    {O_KVCALIB, NULL, "--kv-calib", "FILE", KVOPT, "text that sets the key smoothing scales (default: built in)"},
    {O_MOEMODE, NULL, "--moe-mode", "MODE", KVOPT, "MoE experts: resident (default), ondemand, prefetch or lookahead (docs/moe.md)"},
    {O_MOELOOK, NULL, "--moe-lookahead", "N", KVOPT, "layers ahead the lookahead mode prefetches (default 3, at most 4)"},
    {O_MOEBITS, NULL, "--moe-bits", "4|8|auto", KVOPT, "bit-nested experts: 4-bit high parts only, 8 bits always, or auto (default: 8 bits where cached, hottest first)"},
    {O_EXPBUDGET, NULL, "--expert-budget", "BYTES|P%", KVOPT, "expert cache size (K/M/G suffixes) or share of the experts (default 100%)"},
    {O_EXPPOLICY, NULL, "--expert-policy", "lru|lfu|next", KVOPT, "which expert the cache evicts (default next: furthest expected next use)"},
    {O_IOTHREADS, NULL, "--io-threads", "N", KVOPT, "expert prefetch I/O threads (default 2)"},
    {O_EXPIO, NULL, "--expert-io", "direct|buffered", KVOPT, "read experts with O_DIRECT (default, falls back) or through the page cache"},
    {O_SYSTEM, NULL, "--system", "TEXT", CMD_CHAT, "system message"},
    {O_KLBASE, NULL, "--kl-base", "FILE", CMD_PPL, "save the next-token distributions to FILE"},
    {O_KL, NULL, "--kl", "FILE", CMD_PPL, "compare with distributions saved by --kl-base"},
    {O_CHUNKS, NULL, "--chunks", "N", CMD_PPL, "evaluate at most N windows (default: all)"},
    {O_NODISP, NULL, "--no-display-prompt", NULL, CMD_RUN, "do not echo the prompt"},
    {O_TYPE, NULL, "--type", "TYPE", CMD_CONVERT, "weight type of the matrices: f16 (default), f32 or q8_0"},
    {O_QTYPE, NULL, "--type", "TYPE", CMD_QUANTIZE, "weight format: q4g, q8g, gqsa, mix, w4a8 (docs/formats.md), f16 or f32"},
    {O_GROUP, NULL, "--group", "G", CMD_QUANTIZE, "group size along the input dimension: 32 (default), 64 or 128"},
    {O_CALIB, NULL, "--calib", "FILE", CMD_QUANTIZE, "calibration text: activation statistics weight the rounding"},
    {O_BITS, NULL, "--bits", "AVG", CMD_QUANTIZE, "average bits per weight, scales included, in [4, 8] (mix)"},
    {O_SPARSITY, NULL, "--sparsity", "S", CMD_QUANTIZE, "fraction of weight groups removed, in [0, 1) (gqsa)"},
    {O_TYPE, NULL, "--type", "TYPE", CMD_MOEFY, "expert weights: keep (gate/up rows as in IN, down q8_0; default), q8_0, f16 or f32"},
    {O_MFEXPERTS, NULL, "--experts", "E", CMD_MOEFY, "experts per layer (divides the FFN width)"},
    {O_MFTOPK, NULL, "--top-k", "K", CMD_MOEFY, "experts used per token (1..E)"},
    {O_MFCALIB, NULL, "--calib", "FILE", CMD_MOEFY, "calibration text (default: a short built-in text)"},
    {O_MFEVAL, NULL, "--eval", "FILE", CMD_MOEFY, "text the router accuracy is measured on (default: the calibration text)"},
    {O_MFROUTER, NULL, "--router", "KIND", CMD_MOEFY, "layer (default: each layer's FFN input) or decoupled (all read layer 0's)"},
    {O_MFSHARED, NULL, "--shared", "N", CMD_MOEFY, "the N most active neurons of each FFN go into every expert, counted once (default 0)"},
    {O_MFACTIVE, NULL, "--active-frac", "F", CMD_MOEFY, "clustering: the share F of neurons counted active per token (default 0.1; 1 = cluster raw |activations|)"},
    {O_MFTOKENS, NULL, "--calib-tokens", "N", CMD_MOEFY, "calibration tokens used at most (default 8192)"},
    {O_HOST, NULL, "--host", "ADDR", CMD_SERVE, "IPv4 address to listen on (default 127.0.0.1)"},
    {O_PORT, NULL, "--port", "N", CMD_SERVE, "TCP port (default 8080; 0 = any free port)"},
    {O_PARALLEL, "-np", "--parallel", "N", CMD_SERVE, "slots: requests generated together (default 4)"},
    {O_CTXSLOT, NULL, "--ctx-per-slot", "N", CMD_SERVE, "KV cache tokens per slot (default 2048 or the model's, smaller)"},
    {O_APIKEY, NULL, "--api-key", "KEY", CMD_SERVE, "require 'Authorization: Bearer KEY' on /v1/* and /metrics"},
    {O_QUEUE, NULL, "--queue", "N", CMD_SERVE, "requests that may wait for a slot before 503 (default 64)"},
    {O_TIMEOUT, NULL, "--timeout", "S", CMD_SERVE, "seconds a request may take, queue wait included (default 600; 0 = no limit)"},
    {O_IDLE, NULL, "--idle-timeout", "S", CMD_SERVE, "seconds before an idle connection is closed (default 30)"},
};
#define N_OPTS (sizeof(OPTS) / sizeof(OPTS[0]))

static const struct {
    const char *name;
    int cmd;
    const char *usage;
    const char *what;
} CMDS[] = {
    {"run", CMD_RUN, "codi run -m MODEL -p TEXT [options]", "generate a continuation of a prompt"},
    {"chat", CMD_CHAT, "codi chat -m MODEL [--system TEXT] [options]", "interactive chat with the model's template"},
    {"ppl", CMD_PPL, "codi ppl -m MODEL -f TEXTFILE [-c CTX] [--kl-base FILE | --kl FILE]", "perplexity (and KL divergence) over a text"},
    {"tokenize", CMD_TOKENIZE, "codi tokenize -m MODEL (-p TEXT | -f FILE)", "print token ids"},
    {"bench", CMD_BENCH, "codi bench -m MODEL [-p N,N...] [-n N,N...] [-r N] [-t N] [--json]", "prompt processing and generation speed (like llama-bench)"},
    {"inspect", CMD_INSPECT, "codi inspect MODEL (or -m MODEL)", "print metadata and the tensor table"},
    {"convert", CMD_CONVERT, "codi convert DIR OUT.gguf [--type f16|f32|q8_0]", "convert a Hugging Face model folder (safetensors) to GGUF"},
    {"nest", CMD_NEST, "codi nest IN.gguf OUT.gguf", "bit-nested experts of an MoE model: 4-bit high parts + 4-bit residuals (docs/moe.md)"},
    {"quantize", CMD_QUANTIZE, "codi quantize IN.gguf OUT.gguf --type TYPE [--calib TEXTFILE] [--bits AVG] [--sparsity S] [--group G]", "rewrite a model in codi's weight formats (docs/formats.md)"},
    {"moefy", CMD_MOEFY, "codi moefy IN.gguf OUT.gguf --experts E --top-k K [--calib FILE] [--eval FILE] [--router layer|decoupled] [--shared N] [--type keep|q8_0|f16|f32]", "split a dense model's FFNs into a mixture of experts with fitted routers (Read-ME)"},
    {"serve", CMD_SERVE, "codi serve -m MODEL [--host ADDR] [--port N] [--parallel N] [--ctx-per-slot N] [--api-key KEY] [--queue N] [--timeout S] [--idle-timeout S]", "OpenAI-compatible HTTP server with continuous batching"},
};
#define N_CMDS (sizeof(CMDS) / sizeof(CMDS[0]))

static void usage_main(FILE *f) {
    fprintf(f, "usage: codi COMMAND [options]\n\ncommands:\n");
    for (size_t i = 0; i < N_CMDS; i++)
        fprintf(f, "  %-10s %s\n", CMDS[i].name, CMDS[i].what);
    fprintf(f, "\ncommon options (same meaning in every command):\n"
               "  -m, --model FILE     model file (GGUF)\n"
               "  -c, --ctx-size N     context size in tokens\n"
               "  -t, --threads N      compute threads\n"
               "  -s, --seed S         random seed\n"
               "\n'codi COMMAND --help' lists a command's options.\n");
}

static void usage_cmd(FILE *f, int ci) {
    fprintf(f, "usage: %s\n%s\n\noptions:\n", CMDS[ci].usage, CMDS[ci].what);
    for (size_t i = 0; i < N_OPTS; i++) {
        if (!(OPTS[i].cmds & CMDS[ci].cmd))
            continue;
        char lhs[64];
        snprintf(lhs, sizeof(lhs), "%s%s%s %s", OPTS[i].s ? OPTS[i].s : "",
                 OPTS[i].s ? ", " : "    ", OPTS[i].l, OPTS[i].arg ? OPTS[i].arg : "");
        fprintf(f, "  %-28s %s\n", lhs, OPTS[i].help);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "show this help");
}

static int bad(const char *fmt, const char *a, const char *b) {
    fprintf(stderr, "codi: ");
    fprintf(stderr, fmt, a, b);
    fprintf(stderr, " (see 'codi --help')\n");
    return 2;
}

static int parse_i32(const char *name, const char *v, int32_t lo, int32_t hi, int32_t *out) {
    char *end;
    errno = 0;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v || *end || x < lo || x > hi) {
        fprintf(stderr, "codi: %s expects an integer in [%d, %d], got '%s'\n", name, lo, hi, v);
        return 2;
    }
    *out = (int32_t)x;
    return 0;
}

/* "N[,N...]": up to 16 integers in [0, 2^20]. */
static int cli_parse_list(const char *name, const char *v, int32_t *out, int *n) {
    *n = 0;
    const char *p = v;
    for (;;) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (errno || end == p || x < 0 || x > (1 << 20) || *n == 16 || (*end && *end != ',')) {
            fprintf(stderr, "codi: %s expects up to 16 comma-separated integers in [0, %d], got '%s'\n",
                    name, 1 << 20, v);
            return 2;
        }
        out[(*n)++] = (int32_t)x;
        if (!*end)
            return 0;
        p = end + 1;
    }
}

static int parse_f32(const char *name, const char *v, float lo, float hi, float *out) {
    char *end;
    errno = 0;
    float x = strtof(v, &end);
    if (errno || end == v || *end || !(x >= lo && x <= hi)) {
        fprintf(stderr, "codi: %s expects a number in [%g, %g], got '%s'\n", name, lo, hi, v);
        return 2;
    }
    *out = x;
    return 0;
}

static int parse_args(int argc, char **argv, cli_opts *o, int *help) {
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            *help = 1;
            return 0;
        }
        if (a[0] != '-' || a[1] == '\0') {
            const bool two = o->cmd == CMD_CONVERT || o->cmd == CMD_NEST || o->cmd == CMD_QUANTIZE ||
                             o->cmd == CMD_MOEFY; /* IN OUT */
            if ((o->cmd == CMD_INSPECT || two) && !o->positional) {
                o->positional = a;
                continue;
            }
            if (two && !o->positional2) {
                o->positional2 = a;
                continue;
            }
            return bad("unexpected argument '%s' for '%s'", a, o->cmd_name);
        }
        const char *val = NULL;
        char name[64];
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq) {
            snprintf(name, sizeof(name), "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(name, sizeof(name), "%s", a);
        }
        /* The entry of that name for this command (-p and -n mean prompt
         * text / tokens to generate, but test sizes for bench). */
        const opt_def *d = NULL;
        for (size_t k = 0; k < N_OPTS; k++)
            if (((OPTS[k].s && !strcmp(name, OPTS[k].s)) || !strcmp(name, OPTS[k].l)) &&
                (!d || (OPTS[k].cmds & o->cmd)))
                d = &OPTS[k];
        if (!d)
            return bad("unknown option '%s' for '%s'", name, o->cmd_name);
        if (!(d->cmds & o->cmd))
            return bad("option '%s' does not apply to '%s'", name, o->cmd_name);
        if (d->arg && !val) {
            if (i + 1 >= argc)
                return bad("option '%s' needs a value%s", name, "");
            val = argv[++i];
        } else if (!d->arg && val) {
            return bad("option '%s' takes no value%s", name, "");
        }
        int rc = 0;
        switch (d->id) {
        case O_MODEL: o->model = val; break;
        case O_PROMPT: o->prompt = val; break;
        case O_FILE: o->file = val; break;
        case O_SYSTEM: o->system = val; break;
        case O_KLBASE: o->kl_base = val; break;
        case O_KL: o->kl = val; break;
        case O_NODISP: o->no_display_prompt = true; break;
        case O_TYPE:
        case O_QTYPE: o->out_type = val; break;
        case O_CALIB: o->calib = val; break;
        case O_BITS: rc = parse_f32(name, val, 4.0f, 8.0f, &o->q_bits); break;
        case O_SPARSITY: {
            char *end;
            errno = 0;
            const float x = strtof(val, &end);
            if (errno || end == val || *end || !(x >= 0.0f && x < 1.0f)) {
                fprintf(stderr, "codi: %s expects a fraction in [0, 1), got '%s'\n", name, val);
                return 2;
            }
            o->q_sparsity = x;
            break;
        }
        case O_GROUP:
            rc = parse_i32(name, val, 1, 1 << 20, &o->q_group);
            if (!rc && o->q_group != 32 && o->q_group != 64 && o->q_group != 128) {
                fprintf(stderr, "codi: %s expects 32, 64 or 128, got '%s'\n", name, val);
                return 2;
            }
            break;
        case O_MFEXPERTS: rc = parse_i32(name, val, 1, 1 << 20, &o->mf_experts); break;
        case O_MFTOPK: rc = parse_i32(name, val, 0, 1 << 20, &o->mf_top_k); break;
        case O_MFTOKENS: rc = parse_i32(name, val, 64, 1 << 24, &o->mf_max_tokens); break;
        case O_MFSHARED: rc = parse_i32(name, val, 0, 1 << 24, &o->mf_shared); break;
        case O_MFACTIVE: rc = parse_f32(name, val, 0.001f, 1.0f, &o->mf_active); break;
        case O_MFCALIB: o->mf_calib = val; break;
        case O_MFEVAL: o->mf_eval = val; break;
        case O_MFROUTER: o->mf_router = val; break;
        case O_HOST: o->host = val; break;
        case O_APIKEY: o->api_key = val; break;
        case O_PORT: rc = parse_i32(name, val, 0, 65535, &o->port); break;
        case O_PARALLEL: rc = parse_i32(name, val, 1, 256, &o->parallel); break;
        case O_CTXSLOT: rc = parse_i32(name, val, 16, 1 << 20, &o->ctx_per_slot); break;
        case O_QUEUE: rc = parse_i32(name, val, 1, 1 << 16, &o->queue); break;
        case O_TIMEOUT: rc = parse_i32(name, val, 0, 1 << 24, &o->timeout); break;
        case O_IDLE: rc = parse_i32(name, val, 1, 86400, &o->idle_timeout); break;
        case O_NPREDICT: rc = parse_i32(name, val, -1, 1 << 24, &o->n_predict); break;
        case O_CTX: rc = parse_i32(name, val, 1, 1 << 20, &o->n_ctx); break;
        case O_THREADS: rc = parse_i32(name, val, 1, 256, &o->n_threads); break;
        case O_BATCH:
        case O_UBATCH: rc = parse_i32(name, val, 1, 1 << 16, &o->n_batch); break;
        case O_KVTYPE:
            o->kv_type = codi_kv_type_from_name(val);
            if (o->kv_type < 0) {
                fprintf(stderr, "codi: %s expects f16, q8 or q4, got '%s'\n", name, val);
                return 2;
            }
            break;
        case O_KVPOLICY:
            o->kv_policy = codi_kv_policy_from_name(val);
            if (o->kv_policy < 0) {
                fprintf(stderr, "codi: %s expects alisa, window or h2o, got '%s'\n", name, val);
                return 2;
            }
            break;
        case O_FLASHATTN:
            if (strcmp(val, "on") && strcmp(val, "off") && strcmp(val, "auto")) {
                fprintf(stderr, "codi: %s expects on, off or auto, got '%s'\n", name, val);
                return 2;
            }
            o->flash_attn = !strcmp(val, "auto") ? -1 : !strcmp(val, "on");
            break;
        case O_KVSMOOTH:
            if (strcmp(val, "on") && strcmp(val, "off")) {
                fprintf(stderr, "codi: %s expects on or off, got '%s'\n", name, val);
                return 2;
            }
            o->kv_smooth = !strcmp(val, "on");
            break;
        case O_KVKEYS:
            if (strcmp(val, "channel") && strcmp(val, "token")) {
                fprintf(stderr, "codi: %s expects channel or token, got '%s'\n", name, val);
                return 2;
            }
            o->kv_keys = !strcmp(val, "channel") ? CODI_KV_KEYS_CHANNEL : CODI_KV_KEYS_TOKEN;
            break;
        case O_KVBUDGET: {
            const size_t L = strlen(val);
            if (L > 1 && val[L - 1] == '%') {
                char num[32];
                char *end;
                snprintf(num, sizeof(num), "%.*s", (int)(L - 1), val);
                errno = 0;
                const double pc = strtod(num, &end);
                if (errno || end == num || *end || !(pc > 0.0) || pc > 100.0) {
                    fprintf(stderr, "codi: %s expects N or a percentage in (0, 100], got '%s'\n", name, val);
                    return 2;
                }
                o->kv_budget_pct = pc;
            } else {
                rc = parse_i32(name, val, 1, 1 << 20, &o->kv_budget);
            }
            break;
        }
        case O_MOEMODE:
            o->moe_mode = codi_moe_mode_from_name(val);
            if (o->moe_mode < 0) {
                fprintf(stderr, "codi: %s expects resident, ondemand, prefetch or lookahead, got '%s'\n", name, val);
                return 2;
            }
            break;
        case O_EXPPOLICY:
            o->expert_policy = codi_expert_policy_from_name(val);
            if (o->expert_policy < 0) {
                fprintf(stderr, "codi: %s expects lru, lfu or next, got '%s'\n", name, val);
                return 2;
            }
            break;
        case O_EXPIO:
            if (strcmp(val, "direct") && strcmp(val, "buffered")) {
                fprintf(stderr, "codi: %s expects direct or buffered, got '%s'\n", name, val);
                return 2;
            }
            o->expert_direct = !strcmp(val, "direct");
            break;
        case O_IOTHREADS: rc = parse_i32(name, val, 1, 64, &o->io_threads); break;
        case O_MOEBITS:
            if (strcmp(val, "4") && strcmp(val, "8") && strcmp(val, "auto")) {
                fprintf(stderr, "codi: %s expects 4, 8 or auto, got '%s'\n", name, val);
                return 2;
            }
            o->moe_bits = strcmp(val, "auto") ? atoi(val) : 0;
            break;
        case O_MOELOOK: rc = parse_i32(name, val, 1, CODI_MOE_MAX_LOOKAHEAD, &o->moe_lookahead); break;
        case O_EXPBUDGET: {
            const size_t L = strlen(val);
            char *end;
            errno = 0;
            const double v = strtod(val, &end);
            double mul = 1.0;
            if (L > 0 && val[L - 1] == '%' && end == val + L - 1) {
                if (errno || !(v > 0.0) || v > 100.0) {
                    fprintf(stderr, "codi: %s expects a size or a percentage in (0, 100], got '%s'\n", name, val);
                    return 2;
                }
                o->expert_budget_pct = v;
                break;
            }
            if (end != val && *end && !end[1] && strchr("kKmMgG", *end))
                mul = (*end == 'k' || *end == 'K') ? 1024.0 : (*end == 'm' || *end == 'M') ? 1048576.0 : 1073741824.0;
            else if (end == val || *end)
                mul = -1.0;
            if (errno || mul < 0.0 || !(v > 0.0) || v * mul > 9.0e18) {
                fprintf(stderr, "codi: %s expects BYTES (K/M/G suffixes) or P%%, got '%s'\n", name, val);
                return 2;
            }
            o->expert_budget = (int64_t)(v * mul);
            break;
        }
        case O_KVWINDOW: rc = parse_i32(name, val, 1, 1 << 20, &o->kv_window); break;
        case O_KVSINKS: rc = parse_i32(name, val, 0, 1 << 20, &o->kv_sinks); break;
        case O_KVRECOMPUTE: rc = parse_i32(name, val, 1, 1 << 20, &o->kv_recompute); break;
        case O_KVCALIB: o->kv_calib = val; break;
        case O_NPROMPT: rc = cli_parse_list(name, val, o->bench_pp, &o->n_bench_pp); break;
        case O_NGEN: rc = cli_parse_list(name, val, o->bench_tg, &o->n_bench_tg); break;
        case O_JSON: o->json = true; break;
        case O_REPS: rc = parse_i32(name, val, 1, 1000, &o->reps); break;
        case O_CHUNKS: rc = parse_i32(name, val, 1, 1 << 24, &o->chunks); break;
        case O_TOPK: rc = parse_i32(name, val, 0, 1 << 24, &o->sp.top_k); break;
        case O_REPLAST: rc = parse_i32(name, val, 0, 1 << 24, &o->sp.repeat_last_n); break;
        case O_TEMP: rc = parse_f32(name, val, 0.0f, 100.0f, &o->sp.temp); break;
        case O_TOPP: rc = parse_f32(name, val, 0.0f, 1.0f, &o->sp.top_p); break;
        case O_MINP: rc = parse_f32(name, val, 0.0f, 1.0f, &o->sp.min_p); break;
        case O_REPPEN: rc = parse_f32(name, val, 0.0f, 100.0f, &o->sp.repeat_penalty); break;
        case O_SEED: {
            char *end;
            errno = 0;
            unsigned long long s = strtoull(val, &end, 10);
            if (errno || end == val || *end || val[0] == '-') {
                fprintf(stderr, "codi: %s expects a non-negative integer, got '%s'\n", name, val);
                return 2;
            }
            o->sp.seed = s;
            break;
        }
        }
        if (rc)
            return rc;
    }
    return 0;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "codi: cannot open '%s': %s\n", path, strerror(errno));
        return NULL;
    }
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n < cap) {
            if (ferror(f)) {
                fprintf(stderr, "codi: error reading '%s'\n", path);
                free(buf);
                buf = NULL;
            }
            break;
        }
        if (cap > ((size_t)1 << 31)) {
            fprintf(stderr, "codi: '%s' is too large\n", path);
            free(buf);
            buf = NULL;
            break;
        }
        cap *= 2;
        char *nb = realloc(buf, cap + 1);
        if (!nb)
            free(buf);
        buf = nb;
    }
    fclose(f);
    if (!buf)
        return NULL;
    buf[n] = '\0';
    *len = n;
    return buf;
}

int32_t *cli_tokenize(const codi_model *m, const char *text, size_t len,
                      bool add_special, bool parse_special, int32_t *n_out) {
    int32_t cap = (int32_t)(len < (1u << 28) ? len + 8 : (1u << 28));
    int32_t *toks = malloc((size_t)cap * sizeof(int32_t));
    if (!toks) {
        fprintf(stderr, "codi: out of memory tokenizing %zu bytes\n", len);
        return NULL;
    }
    int32_t n = codi_tokenize(m, text, len, toks, cap, add_special, parse_special);
    if (n < 0) {
        cap = -n;
        int32_t *nt = realloc(toks, (size_t)cap * sizeof(int32_t));
        if (!nt) {
            free(toks);
            fprintf(stderr, "codi: out of memory tokenizing %zu bytes\n", len);
            return NULL;
        }
        toks = nt;
        n = codi_tokenize(m, text, len, toks, cap, add_special, parse_special);
        if (n < 0) {
            free(toks);
            fprintf(stderr, "codi: tokenization failed\n");
            return NULL;
        }
    }
    *n_out = n;
    return toks;
}

void cli_bar_update(void *user, uint64_t done, uint64_t total) {
    cli_bar *bar = user;
    const int pct = total ? (int)(done * 100 / total) : 100;
    if (pct == bar->last)
        return;
    bar->last = pct;
    char b[41];
    const int fill = pct * 40 / 100;
    for (int i = 0; i < 40; i++)
        b[i] = i < fill ? '#' : '.';
    b[40] = '\0';
    fprintf(stderr, "\r%s [%s] %3d%%  %.1f / %.1f MB", bar->label, b, pct, (double)done / 1e6,
            (double)total / 1e6);
    if (done == total)
        fprintf(stderr, "\n");
    fflush(stderr);
}

void cli_bar_end(const cli_bar *b) {
    if (b->last >= 0 && b->last < 100)
        fprintf(stderr, "\n");
}

/* VmRSS / VmHWM of this process in bytes (0 when /proc is unreadable). */
uint64_t cli_rss_bytes(bool peak) {
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    unsigned long long kb = 0;
    const char *key = peak ? "VmHWM:" : "VmRSS:";
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, key, strlen(key)) == 0) {
            sscanf(line + strlen(key), "%llu", &kb);
            break;
        }
    fclose(f);
    return (uint64_t)kb * 1024;
}

static uint64_t g_rss_load; /* RSS right after the model was loaded */

int cli_load(const cli_opts *o, codi_model **m, codi_context **c) {
    char err[512];
    *m = NULL;
    if (c)
        *c = NULL;
    if (!o->model) {
        fprintf(stderr, "codi: %s needs a model: -m FILE\n", o->cmd_name);
        return 2;
    }
    if (codi_model_load(o->model, NULL, m, err, sizeof(err))) {
        fprintf(stderr, "codi: %s\n", err);
        return 1;
    }
    g_rss_load = cli_rss_bytes(false);
    if (!c)
        return 0;
    codi_context_params cp;
    char *calib = NULL;
    if (cli_context_params(o, *m, o->n_ctx, &cp, &calib)) {
        codi_model_free(*m);
        *m = NULL;
        return 1;
    }
    int rc = codi_context_create(*m, &cp, c, err, sizeof(err));
    free(calib);
    if (rc) {
        fprintf(stderr, "codi: %s\n", err);
        codi_model_free(*m);
        *m = NULL;
        return 1;
    }
    cli_moe_notice(*c, &cp, o->model);
    return 0;
}

void cli_moe_notice(const codi_context *c, const codi_context_params *cp, const char *path) {
    codi_moe_info mo;
    codi_moe_stats(c, &mo);
    if (mo.n_expert > 0 && mo.mode != CODI_MOE_RESIDENT && cp->expert_direct != 0 && !mo.direct)
        fprintf(stderr, "codi: note: %s cannot be read with O_DIRECT here; experts are read through the page cache\n",
                path);
}

int cli_context_params(const cli_opts *o, const codi_model *m, int32_t n_ctx, codi_context_params *out,
                       char **calib_text) {
    codi_context_params cp = codi_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_threads = o->n_threads;
    if (o->n_batch)
        cp.n_batch = o->n_batch;
    cp.kv_type = o->kv_type;
    cp.kv_policy = o->kv_policy;
    cp.kv_window = o->kv_window;
    cp.kv_sinks = o->kv_sinks;
    cp.kv_smooth = o->kv_smooth;
    cp.kv_keys = o->kv_keys;
    cp.flash_attn = o->flash_attn;
    cp.kv_budget = o->kv_budget;
    cp.kv_recompute = o->kv_recompute;
    cp.moe_mode = o->moe_mode < 0 ? CODI_MOE_RESIDENT : o->moe_mode;
    cp.expert_budget = o->expert_budget;
    cp.expert_budget_pct = (float)o->expert_budget_pct;
    cp.expert_policy = o->expert_policy;
    cp.io_threads = o->io_threads;
    cp.expert_direct = o->expert_direct;
    cp.moe_lookahead = o->moe_lookahead;
    cp.moe_bits = o->moe_bits;
    if (o->moe_mode < 0 && (o->expert_budget > 0 || o->expert_budget_pct > 0.0))
        cp.moe_mode = CODI_MOE_PREFETCH; /* a budget implies offloading */
    *calib_text = NULL;
    if (o->kv_budget_pct > 0.0) {
        const int32_t ctx = n_ctx ? n_ctx : CODI_CLI_MIN(codi_model_n_ctx_train(m), 4096);
        cp.kv_budget = (int32_t)(o->kv_budget_pct / 100.0 * ctx + 0.5);
        if (cp.kv_budget < 1)
            cp.kv_budget = 1;
    }
    if (o->kv_calib) {
        size_t len;
        *calib_text = cli_read_file(o->kv_calib, &len);
        if (!*calib_text)
            return 1;
        cp.kv_calib = *calib_text;
    }
    *out = cp;
    return 0;
}

void cli_print_memory(const codi_context *c, int kv_type) {
    static const char *const names[] = {"f16", "q8", "q4"};
    codi_memory_info mi;
    codi_context_memory(c, &mi);
    fprintf(stderr,
            "memory: KV %s %.2f MiB (%d slots per layer and sequence), tokens kept %lld, evicted %lld; "
            "scratch %.2f MiB; logits %.2f MiB\n",
            names[kv_type >= 0 && kv_type <= 2 ? kv_type : 0], mi.kv_bytes / 1048576.0, mi.kv_slots,
            (long long)mi.kv_kept, (long long)mi.kv_evicted, mi.scratch_bytes / 1048576.0,
            mi.logits_bytes / 1048576.0);
    if (mi.recompute_bytes > 0)
        fprintf(stderr,
                "recompute: %lld rebuilds in %.3f s (%.1f ms each), tokens restored %lld per layer; "
                "scratch %.2f MiB\n",
                (long long)mi.recomputes, mi.recompute_seconds,
                mi.recomputes ? 1e3 * mi.recompute_seconds / (double)mi.recomputes : 0.0,
                (long long)mi.recompute_restored, mi.recompute_bytes / 1048576.0);
    cli_print_moe(c);
}

static void print_moe_offload(const codi_moe_info *mo) {
    static const char *const modes[] = {"resident", "ondemand", "prefetch", "lookahead"};
    const double MiB = 1048576.0, tok = mo->tokens ? (double)mo->tokens : 1.0;
    const uint64_t acq = mo->hits + mo->sync_loads + mo->inflight_waits;
    fprintf(stderr,
            "moe: %s%s, cache %.2f MiB (%lld experts of %d x %d, %.1f%%), dense %.2f MiB; "
            "hit rate %.1f%% (%llu hits, %llu in flight, %llu sync loads; %llu prefetched, %llu used), "
            "recall %.1f%%, read %.2f MiB/token at %.0f MiB/s, stalled %.3f s\n",
            modes[mo->mode >= 0 && mo->mode <= 3 ? mo->mode : 0], mo->direct ? (mo->aio ? " (O_DIRECT, AIO)" : " (O_DIRECT)") : " (buffered)",
            mo->cache_bytes / MiB, (long long)mo->cache_slots, mo->n_layer_moe, mo->n_expert,
            mo->expert_bytes ? 100.0 * (double)mo->cache_bytes / (double)mo->expert_bytes : 0.0,
            mo->dense_bytes / MiB, acq ? 100.0 * (double)mo->hits / (double)acq : 0.0,
            (unsigned long long)mo->hits, (unsigned long long)mo->inflight_waits,
            (unsigned long long)mo->sync_loads, (unsigned long long)mo->prefetches,
            (unsigned long long)mo->prefetch_used,
            mo->next_used ? 100.0 * (double)mo->predicted_right / (double)mo->next_used : 0.0,
            (double)mo->bytes_read / tok / MiB,
            mo->read_seconds > 0 ? (double)mo->bytes_read / MiB / mo->read_seconds : 0.0,
            mo->stall_seconds);
    if (mo->look_used[1] > 0) { /* lookahead: recall per distance */
        fprintf(stderr, "moe: recall by distance%s:", mo->decoupled_router ? " (decoupled router)" : "");
        for (int d = 0; d < CODI_MOE_MAX_LOOKAHEAD && mo->look_used[d] > 0; d++)
            fprintf(stderr, " %d: %.1f%%", d + 1, 100.0 * (double)mo->look_right[d] / (double)mo->look_used[d]);
        fprintf(stderr, "\n");
    }
}

void cli_print_moe(const codi_context *c) {
    codi_moe_info mo;
    codi_moe_stats(c, &mo);
    if (mo.n_expert == 0)
        return;
    const double MiB = 1048576.0;
    if (mo.mode == CODI_MOE_RESIDENT)
        fprintf(stderr, "moe: resident, %d experts (%d used), experts %.2f MiB + dense %.2f MiB mapped\n",
                mo.n_expert, mo.n_expert_used, mo.expert_bytes / MiB, mo.dense_bytes / MiB);
    else
        print_moe_offload(&mo);
    if (mo.mode != CODI_MOE_RESIDENT && mo.stall_seconds > 0.0 && mo.tokens > 0) {
        /* where the waits were: the token's first layers, whose experts
         * are known only once it is sampled, or all along */
        const int nl = codi_moe_layer_stalls(c, NULL, 0);
        double *ls = nl > 0 ? malloc((size_t)nl * sizeof(double)) : NULL;
        if (ls && codi_moe_layer_stalls(c, ls, nl) == nl) {
            fprintf(stderr, "moe: stalled by layer (ms per evaluated token):");
            for (int l = 0; l < nl; l++)
                fprintf(stderr, " %d: %.3f", l, 1e3 * ls[l] / (double)mo.tokens);
            fprintf(stderr, "\n");
        }
        free(ls);
    }
    if (mo.nested)
        fprintf(stderr, "moe: bit-nested experts, %.1f%% of expert uses at 8 bits\n",
                mo.expert_uses ? 100.0 * (double)mo.uses_8bit / (double)mo.expert_uses : 0.0);
    /* what RSS may reach: the process after loading (tokenizer, metadata)
     * + the dense weights (mapped, touched) + the experts (mapped when
     * resident, else the cache: offloaded experts are never mapped in) +
     * KV + scratch + logits */
    const uint64_t exp_mem = mo.mode == CODI_MOE_RESIDENT ? mo.expert_bytes : mo.cache_bytes;
    codi_memory_info mi;
    codi_context_memory(c, &mi);
    const uint64_t acct = g_rss_load + mo.dense_bytes + exp_mem + mi.kv_bytes +
                          mi.scratch_bytes + mi.logits_bytes;
    fprintf(stderr,
            "rss: peak %.1f MiB, accounting %.1f MiB (after load %.1f + dense %.1f + experts %.1f "
            "+ KV %.1f + scratch %.1f + logits %.1f)\n",
            cli_rss_bytes(true) / MiB, acct / MiB, g_rss_load / MiB, mo.dense_bytes / MiB,
            exp_mem / MiB, mi.kv_bytes / MiB, mi.scratch_bytes / MiB, mi.logits_bytes / MiB);
}

static int cmd_tokenize(const cli_opts *o) {
    if (!!o->prompt == !!o->file) {
        fprintf(stderr, "codi: tokenize needs exactly one of -p TEXT or -f FILE\n");
        return 2;
    }
    codi_model *m;
    int rc = cli_load(o, &m, NULL);
    if (rc)
        return rc;
    size_t len = 0;
    char *text = NULL;
    if (o->file) {
        text = cli_read_file(o->file, &len);
        if (!text) {
            codi_model_free(m);
            return 1;
        }
    }
    const char *src = text ? text : o->prompt;
    if (!text)
        len = strlen(src);
    int32_t n = 0;
    int32_t *toks = cli_tokenize(m, src, len, true, true, &n);
    if (toks) {
        for (int32_t i = 0; i < n; i++)
            printf(i ? " %d" : "%d", toks[i]);
        printf("\n");
    }
    free(toks);
    free(text);
    codi_model_free(m);
    return toks ? 0 : 1;
}

/* A name from a file, for the terminal: control bytes as \xNN (a key could
 * otherwise carry newlines or terminal escape sequences). */
static const char *printable(const char *s, char *buf, size_t len) {
    size_t n = 0;
    for (; s && *s && n + 5 < len; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch < 0x20 || ch == 0x7f)
            n += (size_t)snprintf(buf + n, len - n, "\\x%02x", ch);
        else
            buf[n++] = (char)ch;
    }
    buf[n] = '\0';
    return buf;
}

static int cmd_inspect(const cli_opts *o) {
    const char *path = o->positional ? o->positional : o->model;
    if (!path) {
        fprintf(stderr, "codi: inspect needs a model file: codi inspect MODEL\n");
        return 2;
    }
    char err[512];
    codi_file *f;
    if (codi_file_open(path, &f, err, sizeof(err))) {
        fprintf(stderr, "codi: %s\n", err);
        return 1;
    }
    printf("file: %s\nGGUF version: %u\nmetadata: %" PRId64 " entries\n", path,
           codi_file_version(f), codi_file_n_meta(f));
    char val[1024];
    for (int64_t i = 0; i < codi_file_n_meta(f); i++) {
        codi_file_meta_format(f, i, val, sizeof(val));
        char key[256];
        printf("  %-45s = %s\n", printable(codi_file_meta_key(f, i), key, sizeof(key)), val);
    }
    printf("tensors: %" PRId64 "\n", codi_file_n_tensors(f));
    printf("  %-5s %-40s %-6s %-24s %12s\n", "#", "name", "type", "shape", "bytes");
    uint64_t total = 0;
    for (int64_t i = 0; i < codi_file_n_tensors(f); i++) {
        codi_tensor_info ti;
        codi_file_tensor(f, i, &ti);
        char shape[64];
        int p = snprintf(shape, sizeof(shape), "[");
        for (int d = 0; d < ti.n_dims; d++)
            p += snprintf(shape + p, sizeof(shape) - (size_t)p, d ? ", %" PRId64 : "%" PRId64, ti.ne[d]);
        snprintf(shape + p, sizeof(shape) - (size_t)p, "]");
        char name[256];
        printf("  %-5" PRId64 " %-40s %-6s %-24s %12" PRIu64 "\n", i, printable(ti.name, name, sizeof(name)),
               ti.type_name, shape, ti.nbytes);
        total += ti.nbytes;
    }
    printf("total tensor bytes: %" PRIu64 " (%.2f MiB)\n", total, total / 1048576.0);
    codi_file_close(f);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "-h") || !strcmp(argv[1], "--help")) {
        usage_main(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    int ci = -1;
    for (size_t i = 0; i < N_CMDS; i++)
        if (!strcmp(argv[1], CMDS[i].name))
            ci = (int)i;
    if (ci < 0) {
        fprintf(stderr, "codi: unknown command '%s' (see 'codi --help')\n", argv[1]);
        return 2;
    }
    cli_opts o;
    memset(&o, 0, sizeof(o));
    o.cmd = CMDS[ci].cmd;
    o.cmd_name = CMDS[ci].name;
    o.sp = codi_sampler_default_params();
    o.n_predict = 128;
    o.n_bench_pp = o.n_bench_tg = -1;
    o.port = -1;
    o.timeout = -1;
    o.kv_sinks = -1;
    o.kv_smooth = -1;
    o.flash_attn = -1;
    o.expert_direct = -1;
    o.expert_policy = CODI_EXPERT_EVICT_NEXT;
    o.moe_mode = -1; /* unset: resident, or prefetch when a budget is given */
    o.q_sparsity = -1.0f;
    int help = 0;
    int rc = parse_args(argc, argv, &o, &help);
    if (rc)
        return rc;
    if (help) {
        usage_cmd(stdout, ci);
        return 0;
    }
    switch (o.cmd) {
    case CMD_RUN: return cmd_run(&o);
    case CMD_CHAT: return cmd_chat(&o);
    case CMD_PPL: return cmd_ppl(&o);
    case CMD_TOKENIZE: return cmd_tokenize(&o);
    case CMD_INSPECT: return cmd_inspect(&o);
    case CMD_BENCH: return cmd_bench(&o);
    case CMD_CONVERT: return cmd_convert(&o);
    case CMD_QUANTIZE: return cmd_quantize(&o);
    case CMD_SERVE: return cmd_serve(&o);
    case CMD_NEST: return cmd_nest(&o);
    case CMD_MOEFY: return cmd_moefy(&o);
    }
    return 2;
}
