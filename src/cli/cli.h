/* The codi command line: the only code that prints for users or exits. */
#ifndef CODI_CLI_H
#define CODI_CLI_H

#include <stdbool.h>
#include <stdint.h>

#include "codi.h"

enum cli_cmd {
    CMD_RUN = 1 << 0,
    CMD_CHAT = 1 << 1,
    CMD_PPL = 1 << 2,
    CMD_TOKENIZE = 1 << 3,
    CMD_INSPECT = 1 << 4,
    CMD_BENCH = 1 << 5,
    CMD_CONVERT = 1 << 6,
    CMD_SERVE = 1 << 7,
    CMD_QUANTIZE = 1 << 8,
    CMD_NEST = 1 << 12,
    CMD_MOEFY = 1 << 14,
};

typedef struct cli_opts {
    int cmd;
    const char *cmd_name;
    const char *model;
    const char *prompt;
    const char *file;
    const char *system;
    const char *kl_base;
    const char *kl;
    const char *positional;
    const char *positional2; /* convert: OUT.gguf */
    const char *out_type;    /* convert, quantize: --type */
    /* quantize */
    const char *calib;       /* --calib FILE */
    float q_bits;            /* --bits (0: default) */
    float q_sparsity;        /* --sparsity (-1: not given) */
    int32_t q_group;         /* --group (0: default 32) */
    int32_t n_ctx;
    int32_t n_threads;
    int32_t n_batch;
    int32_t n_predict;
    int32_t chunks;
    int32_t bench_pp[16], bench_tg[16]; /* bench: -p / -n lists */
    int n_bench_pp, n_bench_tg;          /* -1: not given */
    bool json;                           /* bench --json */
    int32_t reps;     /* bench: -r N */
    codi_sampler_params sp;
    bool no_display_prompt;
    /* serve */
    const char *host, *api_key;
    int32_t port, parallel, ctx_per_slot, queue; /* port -1: default */
    int32_t timeout; /* seconds; -1: default, 0: none */
    int32_t idle_timeout; /* seconds; 0: default */
    /* KV cache (run, chat, ppl, bench) */
    int32_t kv_type, kv_policy, kv_budget, kv_window, kv_sinks, kv_smooth, kv_keys;
    int32_t kv_recompute; /* --kv-recompute R: 0 = off */
    double kv_budget_pct; /* --kv-budget P%: > 0 */
    const char *kv_calib;
    int32_t flash_attn; /* -fa: -1 auto, 0 off, 1 on */
    /* MoE expert offloading */
    int32_t moe_mode, expert_policy, io_threads, expert_direct; /* direct -1: default */
    int32_t moe_lookahead, moe_bits;
    /* moefy */
    int32_t mf_experts, mf_top_k, mf_max_tokens, mf_shared; /* 0: not given */
    const char *mf_calib, *mf_eval, *mf_router;
    float mf_active;
    int64_t expert_budget;    /* bytes, 0: none */
    double expert_budget_pct; /* > 0: share of the experts */
} cli_opts;

#define CODI_CLI_MIN(a, b) ((a) < (b) ? (a) : (b))

int cmd_run(const cli_opts *o);
int cmd_convert(const cli_opts *o);
int cmd_quantize(const cli_opts *o);
int cmd_chat(const cli_opts *o);
int cmd_ppl(const cli_opts *o);
int cmd_bench(const cli_opts *o);
int cmd_serve(const cli_opts *o);
int cmd_nest(const cli_opts *o);
int cmd_moefy(const cli_opts *o);

/* Shared helpers (main.c). */
int cli_load(const cli_opts *o, codi_model **m, codi_context **c);
char *cli_read_file(const char *path, size_t *len);
/* Tokenize text; prints an error and returns NULL on failure. */
int32_t *cli_tokenize(const codi_model *m, const char *text, size_t len,
                      bool add_special, bool parse_special, int32_t *n_out);
double cli_now(void);
/* Context parameters of the common options (-t, -b, --kv-*), n_ctx tokens
 * (0 = default); *calib_text: the --kv-calib text, to free after the
 * context is created. Prints an error and returns 1 on failure. */
int cli_context_params(const cli_opts *o, const codi_model *m, int32_t n_ctx, codi_context_params *out,
                       char **calib_text);
/* One stderr line: KV bytes, slots, kept/evicted tokens, scratch, logits. */
void cli_print_memory(const codi_context *c, int kv_type);
/* One stderr line for MoE models: the expert cache and its counters. */
void cli_print_moe(const codi_context *c);
/* A notice when expert offloading asked for O_DIRECT and fell back. */
void cli_moe_notice(const codi_context *c, const codi_context_params *cp, const char *path);
uint64_t cli_rss_bytes(bool peak); /* VmRSS or VmHWM; 0 when unknown */
/* A progress bar on stderr for codi_progress_fn: user is a cli_bar whose
 * label names the work ("converting"); last starts at -1. cli_bar_end
 * finishes the line of a bar cut short by an error. */
typedef struct {
    const char *label;
    int last;
} cli_bar;
void cli_bar_update(void *user, uint64_t done, uint64_t total);
void cli_bar_end(const cli_bar *b);

#endif
