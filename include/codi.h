/* codi — LLM inference engine. The one public header of libcodi.
 *
 * Conventions: handles are opaque; functions that can fail return 0 or a
 * negative CODI_E* code and, where they take (err, errlen), write a one-line
 * message there. Nothing in the library prints to the user or exits. */
#ifndef CODI_H
#define CODI_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum {
    CODI_OK = 0,
    CODI_EINVAL = -1,      /* bad argument from the caller */
    CODI_EIO = -2,         /* file could not be opened / read */
    CODI_EFORMAT = -3,     /* file contents are malformed */
    CODI_ENOMEM = -4,      /* allocation failed */
    CODI_ERANGE = -5,      /* value out of range (context full, bad id) */
    CODI_EUNSUPPORTED = -6,/* valid but not supported (arch, type, template) */
    CODI_ENOTFOUND = -7,   /* key / tensor not present */
};

const char *codi_strerror(int code);

typedef struct codi_model codi_model;
typedef struct codi_context codi_context;
typedef struct codi_sampler codi_sampler;

/* ---------------------------------------------------------------- model */

typedef struct codi_model_params {
    int reserved; /* zero-initialise; room for future options */
} codi_model_params;

int codi_model_load(const char *path, const codi_model_params *params,
                    codi_model **out, char *err, size_t errlen);
void codi_model_free(codi_model *model);

int32_t codi_model_n_vocab(const codi_model *model);
int32_t codi_model_n_ctx_train(const codi_model *model);
int32_t codi_model_n_embd(const codi_model *model);
int32_t codi_model_n_layer(const codi_model *model);
int32_t codi_model_n_head_kv(const codi_model *model); /* KV heads per layer */
const char *codi_model_arch(const codi_model *model);
/* Bytes of tensor data the model maps. */
uint64_t codi_model_size_bytes(const codi_model *model);
/* The model's tokenizer.chat_template, or NULL. Valid as long as the model. */
const char *codi_model_chat_template(const codi_model *model);

/* ------------------------------------------------------------ vocabulary */

int32_t codi_token_bos(const codi_model *model); /* -1 when none */
int32_t codi_token_eos(const codi_model *model);
bool codi_token_is_eog(const codi_model *model, int32_t token);
/* True when the model's metadata asks for BOS at the start. */
bool codi_model_add_bos(const codi_model *model);

/* Tokenize text[0..len). add_special: prepend BOS/append EOS as the model's
 * metadata asks. parse_special: recognise special-token text such as
 * "<|im_start|>". Returns the number of tokens; when n_max is too small
 * returns -(number needed). Returns CODI_EINVAL-like negatives never: any
 * negative is a size. */
int32_t codi_tokenize(const codi_model *model, const char *text, size_t len,
                      int32_t *tokens, int32_t n_max, bool add_special,
                      bool parse_special);

/* Bytes of one token (raw, possibly a partial UTF-8 sequence). special:
 * render control tokens' text too. Returns bytes written, -(needed) when buf
 * is too small, or CODI_ERANGE-sized... 0 for an out-of-range id. */
int32_t codi_token_to_piece(const codi_model *model, int32_t token,
                            char *buf, int32_t len, bool special);

/* Render a chat with the model's template (tokenizer.chat_template), or
 * with tmpl when not NULL. roles[i] / contents[i], n messages.
 * add_assistant: append the prefix that starts the assistant's turn.
 * Writes a NUL-terminated string into a malloc'd *out. */
int codi_chat_apply(const codi_model *model, const char *tmpl,
                    const char *const *roles, const char *const *contents,
                    size_t n, bool add_assistant, char **out, char *err,
                    size_t errlen);

/* -------------------------------------------------------------- context */

typedef struct codi_context_params {
    int32_t n_ctx;     /* KV cache size in tokens (per sequence); 0 =
                          min(train ctx, 4096) */
    int32_t n_batch;   /* tokens per forward pass (larger calls are split);
                          0 = 512 */
    int32_t n_threads; /* 0 = number of cores */
    int32_t n_seq;     /* independent sequences (server slots), each with
                          its own KV cache of n_ctx tokens; 0 = 1 */
    /* KV cache storage and budget (docs/kv-cache.md). */
    int32_t kv_type;   /* enum codi_kv_type */
    int32_t kv_smooth; /* key smoothing of q8/q4 keys: -1 = default (on
                          for q4 keys grouped per token), 0 = off, 1 = on */
    int32_t kv_keys;   /* enum codi_kv_keys: how q8/q4 keys are grouped */
    const char *kv_calib; /* text whose keys set the smoothing scales;
                             NULL = a built-in English paragraph */
    int32_t kv_budget; /* most tokens each sequence keeps per layer; 0 = no
                          budget (every token of the context) */
    int32_t kv_policy; /* enum codi_kv_policy: which tokens a budget keeps */
    int32_t kv_window; /* recent tokens always kept; 0 = default: half the
                          budget (window policy: budget - sinks) */
    int32_t kv_sinks;  /* first tokens always kept; -1 = default (4) */
    int32_t kv_recompute; /* with a budget: every kv_recompute tokens a
                             sequence gains, rebuild its cache from its token
                             ids with full attention, so evicted tokens that
                             matter again come back; 0 = off */
    /* Mixture-of-experts models: where the experts' weights live
     * (docs/moe.md). Ignored for dense models. */
    int32_t moe_mode;       /* enum codi_moe_mode */
    int64_t expert_budget;  /* bytes of the expert cache (ondemand/prefetch);
                               0 = expert_budget_pct */
    float expert_budget_pct;/* or this percentage of all experts' bytes;
                               0 with expert_budget 0 = 100 */
    int32_t expert_policy;  /* enum codi_expert_policy_public: what the cache
                               evicts (default CODI_EXPERT_EVICT_NEXT) */
    int32_t io_threads;     /* prefetch I/O threads; 0 = default (2) */
    int32_t expert_direct;  /* O_DIRECT reads: -1 = default (try it), 0 = off */
    int32_t moe_bits;       /* bit-nested experts (D2MoE): 4 = the 4-bit
                               high parts only (half the reads), 8 = high +
                               residual always, 0 = default: 8 bits for the
                               experts whose residual is cached (resident:
                               all), hottest first, 4 bits for the rest */
    int32_t moe_lookahead;  /* layers ahead the lookahead mode prefetches;
                               0 = default (3), at most CODI_MOE_MAX_LOOKAHEAD */
    int32_t flash_attn;     /* prefill attention with an online softmax
                               (flash-attention style, docs/kernels.md):
                               -1 = default (auto), 0 = off (scores, softmax,
                               fp16 weights, values: llama.cpp's numerics
                               without flash attention), 1 = on. Applies
                               where prefill tiles do: fp16 KV, no budget */
} codi_context_params;

enum codi_moe_mode {
    CODI_MOE_RESIDENT = 0, /* all experts used from the mapped file */
    CODI_MOE_ONDEMAND = 1, /* experts read into a bounded cache on a miss */
    CODI_MOE_PREFETCH = 2, /* ... and layer l+1's router, applied to layer
                              l's FFN input, prefetches its experts (T1) */
    CODI_MOE_LOOKAHEAD = 3,/* ... for layers l+1 .. l+moe_lookahead; exact
                              with a decoupled router (codi moefy, T2) */
};
#define CODI_MOE_MAX_LOOKAHEAD 4

enum codi_expert_policy_public {
    CODI_EXPERT_EVICT_LRU = 0, /* least recently used */
    CODI_EXPERT_EVICT_LFU = 1, /* least frequently used */
    CODI_EXPERT_EVICT_NEXT = 2,/* furthest expected next use (layers run in a
                                  cycle; rarely used experts come back late) */
};

/* Expert offloading counters of a context since creation or the last
 * codi_moe_reset. */
typedef struct codi_moe_info {
    int32_t mode;            /* enum codi_moe_mode */
    int32_t n_expert, n_expert_used, n_layer_moe;
    uint64_t expert_bytes;   /* all experts in the file */
    uint64_t dense_bytes;    /* weights that stay resident (non-expert) */
    uint64_t cache_bytes;    /* the expert cache (0 when resident) */
    int64_t cache_slots;     /* experts the cache holds */
    uint64_t expert_uses;    /* (token-pass, layer, expert) uses */
    uint64_t hits, sync_loads, inflight_waits;
    uint64_t prefetches, prefetch_used;
    uint64_t bytes_read;     /* from the file by the expert store */
    double read_seconds;     /* time inside reads (all I/O threads) */
    double stall_seconds;    /* compute thread waiting for experts */
    uint64_t predicted, predicted_right; /* pre-gate: experts predicted for
                               the next layer, and how many it then used */
    uint64_t next_used;      /* experts the next layers used (recall
                               denominator) */
    uint64_t look_right[CODI_MOE_MAX_LOOKAHEAD]; /* as predicted_right and */
    uint64_t look_used[CODI_MOE_MAX_LOOKAHEAD];  /* next_used, per distance 1.. */
    bool decoupled_router;   /* routes of every layer from one early state */
    bool nested;             /* the model has bit-nested experts */
    uint64_t uses_8bit;      /* of expert_uses, those run at 8 bits */
    uint64_t tokens;         /* tokens evaluated */
    bool direct;             /* O_DIRECT in use */
    bool aio;                /* ... with each expert's parts read in parallel
                                through Linux AIO */
} codi_moe_info;
void codi_moe_stats(const codi_context *ctx, codi_moe_info *out);
void codi_moe_reset(codi_context *ctx);
/* Of stall_seconds, the part each layer's experts were waited for: fills
 * out[0 .. min(cap, n_layer) - 1] and returns n_layer (0 for a dense model).
 * out may be NULL to ask for n_layer. */
int codi_moe_layer_stalls(const codi_context *ctx, double *out, int cap);
/* "resident" | "ondemand" | "prefetch" | "lookahead" and "lru" | "lfu" |
 * "next"; -1 when unknown. */
int codi_moe_mode_from_name(const char *name);
int codi_expert_policy_from_name(const char *name);

enum codi_kv_type {
    CODI_KV_F16 = 0, /* fp16, as llama.cpp */
    CODI_KV_Q8 = 1,  /* 8-bit codes, fp16 scale + min per 32 channels */
    CODI_KV_Q4 = 2,  /* 4-bit codes, fp16 scale + min per 32 channels */
};

/* Quantization groups of q8/q4 keys (docs/kv-cache.md). DEFAULT: per
 * channel for q4 without a token budget, per token otherwise. */
enum codi_kv_keys {
    CODI_KV_KEYS_DEFAULT = 0,
    CODI_KV_KEYS_TOKEN = 1,   /* each token's channels in groups of 32 */
    CODI_KV_KEYS_CHANNEL = 2, /* each channel's keys in groups of 16 tokens (KIVI) */
};

enum codi_kv_policy {
    CODI_KV_ALISA = 0,  /* sinks + recent window + tokens with the most
                           attention from recent queries (ALISA's sparse
                           window attention) */
    CODI_KV_WINDOW = 1, /* sinks + recent window (StreamingLLM) */
    CODI_KV_H2O = 2,    /* sinks + recent window + tokens with the most
                           attention accumulated over all queries (H2O) */
};

/* Memory of a context (codi_context_memory). */
typedef struct codi_memory_info {
    uint64_t kv_bytes;      /* K/V codes/values, scales, slot tables */
    uint64_t scratch_bytes; /* activations and attention scratch (bounded
                               by n_batch) */
    uint64_t logits_bytes;  /* logits kept of the last decode call */
    int32_t kv_slots;       /* cache slots per sequence and layer */
    int64_t kv_kept;        /* tokens cached now, summed over sequences
                               (the largest layer) */
    int64_t kv_evicted;     /* tokens evicted so far (per layer, mean) */
    uint64_t recompute_bytes;  /* kv_recompute: token ids, one layer's hidden
                                  states and K/V of the history, scratch */
    int64_t recomputes;        /* caches rebuilt (sequences) */
    int64_t recompute_restored;/* tokens back in the cache that were evicted
                                  before (per layer, mean) */
    double recompute_seconds;  /* time spent rebuilding */
} codi_memory_info;

codi_context_params codi_context_default_params(void);

int codi_context_create(codi_model *model, const codi_context_params *params,
                        codi_context **out, char *err, size_t errlen);
void codi_context_free(codi_context *ctx);
int32_t codi_context_n_ctx(const codi_context *ctx);
void codi_context_memory(const codi_context *ctx, codi_memory_info *out);
/* Positions cached for sequence seq in layer `layer`, KV head kv_head
 * (with a budget, the tokens that head kept: every KV head keeps its own,
 * as many as the others; without, 0..len-1), in cache slot order, into
 * out[n_max]. Returns how many there are (possibly more than n_max), or -1
 * for a bad sequence, layer or head. */
int32_t codi_kv_seq_positions(const codi_context *ctx, int32_t seq, int32_t layer,
                              int32_t kv_head, int32_t *out, int32_t n_max);
/* Parse "f16" | "q8" | "q4" (enum codi_kv_type) and "alisa" | "window" |
 * "h2o" (enum codi_kv_policy); -1 when unknown. */
int codi_kv_type_from_name(const char *name);
int codi_kv_policy_from_name(const char *name);

/* Evaluate n tokens at positions pos..pos+n-1 (pos must equal the number of
 * tokens already in the cache, or less to overwrite a suffix). When
 * logits_all, logits of every token are kept, else only the last one's.
 * n may exceed n_batch: it is split internally. */
int codi_decode(codi_context *ctx, const int32_t *tokens, int32_t n,
                int32_t pos, bool logits_all, char *err, size_t errlen);

/* Logits of the i-th token of the last codi_decode call (i = -1: last).
 * NULL if not kept. */
const float *codi_get_logits(const codi_context *ctx, int32_t i);

/* Forget cached tokens of sequence 0 from position pos on. */
void codi_kv_truncate(codi_context *ctx, int32_t pos);

/* A batch of tokens from one or more sequences, evaluated in one pass (each
 * weight matrix is read once for all of them: continuous batching). */
typedef struct codi_batch {
    int32_t n;
    const int32_t *token; /* [n] */
    const int32_t *pos;   /* [n] position of each token in its sequence */
    const int32_t *seq;   /* [n] sequence 0..n_seq-1; NULL: all sequence 0 */
    const bool *logits;   /* [n] keep this token's logits; NULL: last only */
} codi_batch;

/* The tokens of each sequence must appear in the batch in order, at
 * consecutive positions, the first at most the sequence's cached length
 * (less overwrites a suffix). Afterwards codi_get_logits(ctx, i) gives the
 * logits of batch token i when they were kept. On error nothing is cached
 * for any sequence past what it held before. */
int codi_decode_batch(codi_context *ctx, const codi_batch *batch, char *err,
                      size_t errlen);
int32_t codi_context_n_seq(const codi_context *ctx);
/* Tokens cached for sequence seq (0 for a bad seq). */
int32_t codi_kv_seq_len(const codi_context *ctx, int32_t seq);
/* Forget cached tokens of sequence seq from position pos on. */
void codi_kv_seq_truncate(codi_context *ctx, int32_t seq, int32_t pos);

/* ------------------------------------------------------------- moefy */

/* codi moefy (Read-ME, issue 5 section 3): a dense llama-family model's
 * FFNs split into n_expert experts of n_ff / n_expert neurons grouped by
 * their activations on a calibration text (balanced k-means), with a
 * linear router per layer fitted by ridge least squares; written as a
 * Mixtral-style MoE GGUF. docs/moefy.md has the format and the scaling. */
enum codi_moefy_router {
    CODI_MOEFY_ROUTER_LAYER = 0,     /* layer l's router reads layer l's FFN input */
    CODI_MOEFY_ROUTER_DECOUPLED = 1, /* every router reads layer 0's FFN input */
};

typedef struct codi_moefy_layer_stats {
    float match_oracle;     /* |top-K of the written router & oracle top-K| / K */
    float match_layer;      /* per-layer router's top-K vs the oracle's */
    float match_decoupled;  /* decoupled router's top-K vs the oracle's */
    float dec_vs_layer;     /* decoupled vs per-layer router top-K overlap / K */
    float mass_layer;       /* share of the oracle's score mass in the per-layer router's top-K */
    float mass_decoupled;   /*   ... in the decoupled router's top-K */
    float mass_oracle;      /* share in the oracle top-K (the upper bound) */
} codi_moefy_layer_stats;

typedef struct codi_moefy_params {
    int32_t n_expert;        /* E: divides n_ff */
    int32_t n_expert_used;   /* K: 1..E */
    int32_t n_shared;        /* S neurons (the most active) copied into every
                                expert, counted once (0: none); E divides n_ff - S */
    int router;              /* enum codi_moefy_router */
    const char *calib_text;  /* NULL: a built-in text */
    size_t calib_len;
    const char *eval_text;   /* router accuracy measured here; NULL: on calib_text */
    size_t eval_len;
    int32_t max_tokens;      /* calibration tokens used (0: 8192) */
    float active_frac;       /* clustering features: per token, the share of
                                neurons carrying the most output count as
                                active (co-activation, 0: 0.1); >= 1: raw |h| */
    int expert_type;         /* -1: gate/up rows copied in the source type,
                                down Q8_0; else an enum codi_type id
                                (F32, F16, Q8_0) for all three */
    int32_t n_threads;       /* 0: all cores */
    uint32_t seed;           /* k-means seed */
    void (*progress)(void *user, const char *line); /* status lines, or NULL */
    void *progress_user;
    /* optional outputs */
    int32_t *perm;           /* [n_layer * n_ff]: layer l's shared neurons
                                perm[l*n_ff + 0..S), then expert e's own
                                perm[l*n_ff + S + e*(n_ff-S)/E ...] */
    codi_moefy_layer_stats *stats; /* [n_layer] */
} codi_moefy_params;

codi_moefy_params codi_moefy_default_params(void);
/* Writes out_path.tmp, then renames it to out_path. */
int codi_moefy(const char *in_path, const char *out_path, const codi_moefy_params *params,
               char *err, size_t errlen);

/* ------------------------------------------------------ file inspection */

/* A GGUF file opened for inspection only (any architecture). */
typedef struct codi_file codi_file;

typedef struct codi_tensor_info {
    const char *name;      /* valid as long as the file */
    const char *type_name; /* "Q4_1", ... */
    int n_dims;
    int64_t ne[4];
    uint64_t nbytes;
    uint64_t offset;       /* within the data section */
} codi_tensor_info;

int codi_file_open(const char *path, codi_file **out, char *err, size_t errlen);
void codi_file_close(codi_file *f);
uint32_t codi_file_version(const codi_file *f);
int64_t codi_file_n_meta(const codi_file *f);
const char *codi_file_meta_key(const codi_file *f, int64_t i);
/* Value of metadata entry i as text (arrays: type, length and the first
 * few elements). Returns the length it needed, like snprintf. */
int codi_file_meta_format(const codi_file *f, int64_t i, char *buf, size_t len);
int64_t codi_file_n_tensors(const codi_file *f);
int codi_file_tensor(const codi_file *f, int64_t i, codi_tensor_info *info);

/* ------------------------------------------------------------- sampling */

typedef struct codi_sampler_params {
    float temp;           /* <= 0: greedy */
    int32_t top_k;        /* <= 0: off */
    float top_p;          /* >= 1: off */
    float min_p;          /* <= 0: off */
    float repeat_penalty; /* 1: off */
    int32_t repeat_last_n;/* tokens looked back for the penalty */
    uint64_t seed;
} codi_sampler_params;

codi_sampler_params codi_sampler_default_params(void);
int codi_sampler_create(const codi_sampler_params *params, int32_t n_vocab,
                        codi_sampler **out, char *err, size_t errlen);
void codi_sampler_free(codi_sampler *s);
/* Pick the next token from logits[n_vocab]. Does not modify logits. */
int32_t codi_sampler_sample(codi_sampler *s, const float *logits);
/* Tell the sampler a token was appended (for the repetition penalty). */
void codi_sampler_accept(codi_sampler *s, int32_t token);
/* out[j] = codi_sampler_sample(s[j], codi_get_logits(ctx, rows[j])) for
 * j < n, shared out over the context's compute threads (each sampler is
 * used by one thread only, so the draws are those of the serial loop).
 * The n samplers must be distinct. Returns 0, or CODI_EINVAL (bad
 * arguments, or a row without logits: its out[j] is then -1). */
int codi_sample_rows(codi_context *ctx, int32_t n, codi_sampler *const *s, const int32_t *rows,
                     int32_t *out);
void codi_sampler_reset(codi_sampler *s);

/* ------------------------------------------------------------ convert */

enum {
    CODI_CONVERT_F16 = 0, /* matrices F16, vectors F32 (default) */
    CODI_CONVERT_F32 = 1,
    CODI_CONVERT_Q8_0 = 2, /* F16 for a matrix whose rows are not whole blocks */
};

/* Called after each tensor with bytes of tensor data written so far. */
typedef void (*codi_progress_fn)(void *user, uint64_t done, uint64_t total);

typedef struct codi_convert_params {
    int out_type; /* CODI_CONVERT_* */
    codi_progress_fn progress; /* NULL: none */
    void *progress_user;
} codi_convert_params;

/* Convert a Hugging Face model folder (config.json, model.safetensors or
 * model.safetensors.index.json with its shards, tokenizer.json,
 * tokenizer_config.json) of a Llama, Qwen2, Qwen3 or Gemma 3 model with a
 * byte-level BPE tokenizer into a GGUF file at out_path. params NULL: F16.
 * On failure nothing is left at out_path. */
int codi_convert_hf(const char *dir, const char *out_path,
                    const codi_convert_params *params, char *err,
                    size_t errlen);

/* Bit-nested experts (D2MoE): writes in_path's MoE model to out_path with
 * every stacked expert tensor as a Q4_0 high part (same name) and a Q4_0
 * residual (`*_exps_lo.weight`); everything else copied. The runtime then
 * runs an expert at 4 bits from the high part alone or at ~8 bits from
 * both (codi_context_params.moe_bits). Nothing is left at out_path on
 * failure. */
int codi_nest_experts(const char *in_path, const char *out_path, codi_progress_fn progress,
                      void *progress_user, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
