#!/usr/bin/env python3
"""make_synthetic_models.py - tiny random-weight GGUF files: dense Qwen2 /
Qwen3 and four mixture-of-experts families.

Written with the `gguf` PyPI package (the writer llama.cpp's own converter
uses), so they are GGUF files as llama.cpp expects them for these
architectures. They are small enough (< 250 KB) to be committed under
tests/fixtures/synthetic/, next to the llama.cpp reference logits that
tools/make_reference_model.py computes for them; test_qwen.c and test_moe.c
compare codi against those.

    bench/.peer/venv/bin/python tools/make_synthetic_models.py [tag ...]
    (tags: qwen2 qwen3 mixtral qwen2moe qwen3moe olmoe; default all)

qwen2-tiny.gguf: n_embd 64, 4 heads (2 KV heads) of 16, 2 layers, n_ff 128,
    Q/K/V biases, tied output (no output.weight), Q8_0 matrices.
qwen3-tiny.gguf: n_embd 64, 4 heads (2 KV heads) of 32 (key_length 32, so
    n_head * head_dim != n_embd), 2 layers, n_ff 128, per-head Q/K RMS
    norms, separate output.weight, Q8_0 matrices except attn_v in F16 (two
    activation types in one fused Q/K/V product).
All: byte-level BPE vocabulary (256 byte tokens, 46 merges, 3 control
tokens, 305 in all, pre-tokenizer "qwen2"), context 256. Weights come from
numpy's legacy RandomState (stable stream) with a fixed seed per file, so
reruns give the same bytes.

MoE files
=========

Common shape: n_embd 64, 2 layers, 4 heads of 16, 8 experts, expert FFN 32
(the smallest Q8_0/Q4_0 allows: ne0 of ffn_down_exps is n_ff_exp), separate
output.weight, every layer an MoE layer. Tensors (ggml ne order, as
llama.cpp's create_tensor lists them; numpy shapes are the reverse):

    blk.N.ffn_gate_inp.weight   F32  [n_embd, n_expert]            router
    blk.N.ffn_gate_exps.weight       [n_embd, n_ff_exp, n_expert]  stacked
    blk.N.ffn_up_exps.weight         [n_embd, n_ff_exp, n_expert]
    blk.N.ffn_down_exps.weight       [n_ff_exp, n_embd, n_expert]
    (no dense blk.N.ffn_gate/ffn_up/ffn_down)

Expert e of a stacked tensor is the e-th [ne0, ne1] slice: rows of ne0
elements, expert e starting e * ne1 * row_size(ne0) bytes into the data.

Routing: llama.cpp's llm_graph_context::build_moe_ffn (src/llama-graph.cpp)
with gating LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX for all four families. For
each token, x = rms_norm(h) * ffn_norm:

    logits = ffn_gate_inp x                        [n_expert], F32 matmul
    p      = softmax(logits)                       over ALL experts, before top-k
    sel    = the n_expert_used largest p           (ggml_argsort_top_k)
    w_j    = p[sel_j]
    if norm_w:  w_j /= max(sum_j w_j, 6.103515625e-5)
    (w_scale = hparams.expert_weights_scale: 0 for these four archs, whose
     loaders never read *.expert_weights_scale, so no scaling)
    moe(x) = sum_j w_j * down_e(silu(gate_e x) * up_e x),  e = sel_j
    h     += moe(x) (+ shared expert, qwen2moe)

The routed weights multiply the expert outputs after ffn_down (not the
input: that is llama4 only). *.expert_weights_norm, *.expert_gating_func
and *.expert_weights_scale are not read for these archs (norm_w and the
gating are hard-coded per arch in src/models/<arch>.cpp), so the files do
not carry them, as the converter does not either.

mixtral-tiny.gguf  arch "llama" (src/models/llama.cpp; MixtralForCausalLM
    converts to "llama"). An MoE layer when llama.expert_count > 0 (then
    blk.N.ffn_gate_inp.weight is required): build_moe_ffn(..., LLM_FFN_SILU,
    norm_w = true, ..., SOFTMAX). Softmax over all 8, top-2, renormalised
    (= softmax over the 2 selected logits). Expert width = llama.feed_forward_length
    (n_ff; there is no expert_feed_forward_length for llama). Rope NORM
    (consecutive pairs, llama_model_rope_type), llama.rope.dimension_count
    16, llama.vocab_size written as the converter does. Keys:
    llama.expert_count 8, llama.expert_used_count 2, llama.feed_forward_length 32.
    Types: attention/embeddings/output Q8_0, gate_exps Q8_0, up_exps Q8_0,
    down_exps Q4_0, router F32.
qwen2moe-tiny.gguf  arch "qwen2moe" (src/models/qwen2moe.cpp). norm_w =
    false: softmax over all 8, top-4, weights are the raw softmax
    probabilities (they sum to < 1). Shared expert, added to the routed sum:
        g = ffn_gate_inp_shexp . x             (one scalar per token)
        shexp(x) = sigmoid(g) * down_shexp(silu(gate_shexp x) * up_shexp x)
    (llama.cpp computes sigmoid(g) as silu(g)/g). Expert width =
    qwen2moe.expert_feed_forward_length (32; if absent llama.cpp uses
    feed_forward_length / expert_used_count); shared width =
    qwen2moe.expert_shared_feed_forward_length (64; if absent
    feed_forward_length). feed_forward_length (96 here) is otherwise unused.
    Q/K/V biases (optional in llama.cpp, present in Qwen1.5-MoE), rope NEOX,
    head_dim 16 (llama.cpp requires n_head * head_dim = n_embd: attn_output
    is {n_embd, n_embd}), output.weight required. Shared tensors:
        blk.N.ffn_gate_inp_shexp.weight  F32 [n_embd, 1]  (llama.cpp asks for
            {n_embd}; the converter writes HF's Linear(hidden, 1) as a 2-D
            [n_embd, 1] tensor, which llama.cpp accepts: trailing 1s)
        blk.N.ffn_gate_shexp.weight, ffn_up_shexp.weight   [n_embd, n_ff_shexp]
        blk.N.ffn_down_shexp.weight                        [n_ff_shexp, n_embd]
    Types: experts gate/up Q8_0, down F16; shared expert Q8_0.
qwen3moe-tiny.gguf  arch "qwen3moe" (src/models/qwen3moe.cpp). norm_w = true
    (llama.cpp always renormalises for qwen3moe, whatever HF's
    norm_topk_prob): softmax over all 8, top-2, renormalised. Expert width
    = qwen3moe.expert_feed_forward_length (32); feed_forward_length (96)
    unused. Per-head Q/K RMS norms attn_q_norm/attn_k_norm [head_dim]
    applied before rope, as qwen3; key_length/value_length 16; no shared
    expert; rope NEOX. Types: gate_exps F16, up_exps Q4_0, down_exps Q8_0.
olmoe-tiny.gguf  arch "olmoe" (src/models/olmoe.cpp). norm_w = false:
    softmax over all 8, top-3, raw probabilities. Expert width =
    olmoe.feed_forward_length (32; olmoe reads no expert_feed_forward_length).
    Q/K norms over the WHOLE projected Q and K (RMS over n_head*head_dim
    resp. n_head_kv*head_dim values, before the reshape into heads and
    before rope): attn_q_norm.weight and attn_k_norm.weight are both
    {n_embd} in llama.cpp, so llama.cpp only loads OLMoE files with
    n_head_kv * head_dim == n_embd, i.e. no GQA: this file has 4 KV heads.
    No Q/K/V biases, rope NEOX. Heads of Q and K have unequal norms
    (qk_spread) so a per-head norm gives visibly different logits.
    Types: experts Q8_0, output F16.

Weight scales (see MOE): router logits have std 1-2.5 for unit-RMS input, so
the top-k choice has a clear margin for most tokens while the softmax mass
outside the top-k stays large enough that renormalising or not matters;
expert outputs dominate attention in the residual stream. Experts are
correlated (expert = sqrt(0.85) common + sqrt(0.15) own): the experts still
differ a lot (routing to the wrong experts costs KL 1.4-2.9), but a routing
flip at a near-tie between two experts, which float noise can cause,
changes little. tools/make_reference_model.py checks all this against an
independent numpy forward (np_forward) and deliberately wrong variants.
"""

import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUTDIR = os.path.join(ROOT, "tests", "fixtures", "synthetic")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    merges = []
    pairs = ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t",
             "e n", "Ġ w", "o r", "Ġ o", "i s", "Ġ c", "e s", "a n", "Ġ b", "i t",
             "Ġ f", "a r", "Ġ p", "Ġ m", "l l", "o u", "e d", "Ġ in", "Ġ d", "i c",
             "Ġ h", "Ġo f", "i on", "Ġa n", "Ġan d", "Ġ l", "Ġt o", "a l", "Ġ is",
             "o m", "Ġ th", "Ġ e", "s t", "Ġ n", "l e", "a s", "i ng", "Ġ g"]
    have = set(tokens)
    for p in pairs:
        a, b = p.split(" ")
        if a not in have:
            # add the left part through an earlier merge if needed
            continue
        if b not in have:
            continue
        merges.append(p)
        if a + b not in have:
            tokens.append(a + b)
            have.add(a + b)
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for s in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        tokens.append(s)
        types.append(gguf.TokenType.CONTROL)
    return tokens, types, merges


def q8(a):
    return gguf.quants.quantize(a.astype(np.float32), QT.Q8_0), QT.Q8_0


def write_model(arch, path, seed):
    rng = np.random.RandomState(seed)
    tokens, types, merges = vocab()
    n_vocab = len(tokens)
    n_embd, n_head, n_head_kv, n_layer, n_ff = 64, 4, 2, 2, 128
    head_dim = 16 if arch == "qwen2" else 32
    dq, dkv = n_head * head_dim, n_head_kv * head_dim

    w = gguf.GGUFWriter(path, arch)
    w.add_name("%s tiny random" % arch)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_rope_freq_base(1e6)
    if arch == "qwen3":
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 3)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(False)

    def mat(n_out, n_in, gain=1.0):
        # ggml shape [n_in, n_out] = numpy (n_out, n_in)
        return rng.normal(0.0, gain / np.sqrt(n_in), size=(n_out, n_in)).astype(np.float32)

    def vec(n, mean=1.0, sd=0.1):
        return (mean + sd * rng.normal(size=n)).astype(np.float32)

    def add_q(name, a, raw=None):
        if raw is None:
            data, t = q8(a)
        elif raw == QT.F16:
            data, t = a.astype(np.float16), QT.F16
        else:
            data, t = a.astype(np.float32), QT.F32
        w.add_tensor(name, data, raw_dtype=t)

    add_q("token_embd.weight", rng.normal(0.0, 1.0, size=(n_vocab, n_embd)).astype(np.float32))
    w.add_tensor("output_norm.weight", vec(n_embd))
    if arch == "qwen3":
        add_q("output.weight", mat(n_vocab, n_embd, gain=4.0))
    for l in range(n_layer):
        p = "blk.%d." % l
        w.add_tensor(p + "attn_norm.weight", vec(n_embd))
        add_q(p + "attn_q.weight", mat(dq, n_embd, 2.0))
        add_q(p + "attn_k.weight", mat(dkv, n_embd, 2.0))
        add_q(p + "attn_v.weight", mat(dkv, n_embd), QT.F16 if arch == "qwen3" else None)
        if arch == "qwen2":
            w.add_tensor(p + "attn_q.bias", vec(dq, 0.0, 0.5))
            w.add_tensor(p + "attn_k.bias", vec(dkv, 0.0, 0.5))
            w.add_tensor(p + "attn_v.bias", vec(dkv, 0.0, 0.5))
        else:
            w.add_tensor(p + "attn_q_norm.weight", vec(head_dim))
            w.add_tensor(p + "attn_k_norm.weight", vec(head_dim))
        add_q(p + "attn_output.weight", mat(n_embd, dq))
        w.add_tensor(p + "ffn_norm.weight", vec(n_embd))
        add_q(p + "ffn_gate.weight", mat(n_ff, n_embd))
        add_q(p + "ffn_up.weight", mat(n_ff, n_embd))
        add_q(p + "ffn_down.weight", mat(n_embd, n_ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("%s: %d bytes, %d tokens" % (path, os.path.getsize(path), n_vocab))


# --- MoE families -----------------------------------------------------------
#
# One spec per file. Types: "q8" Q8_0, "q4" Q4_0, "f16" F16, "f32" F32.
# gains: router = std of the router logits for a unit-RMS input (large, so
# the top-k choice is decisive for most tokens, yet not so large that the
# softmax puts all mass on one expert: then renormalising or not would not
# matter); exp = gain of the expert matrices (the MoE output dominates the
# attention output in the residual stream); out = gain of the output head.
MOE = {
    "mixtral": dict(arch="llama", seed=11, n_layer=2, n_head=4, n_head_kv=2, head_dim=16,
                    n_expert=8, n_used=2, n_ff_exp=32, n_ff=32, n_ff_sh=0,
                    types=dict(attn="q8", gate="q8", up="q8", down="q4", emb="q8", out="q8"),
                    rope_base=1e6, eps=1e-5, gains=dict(router=2.5, exp=1.5, exp_corr=0.85, qk=1.0, out=3.0)),
    "qwen2moe": dict(arch="qwen2moe", seed=12, n_layer=2, n_head=4, n_head_kv=2, head_dim=16,
                     n_expert=8, n_used=4, n_ff_exp=32, n_ff=96, n_ff_sh=64,
                     types=dict(attn="q8", gate="q8", up="q8", down="f16", sh="q8", emb="q8", out="q8"),
                     rope_base=1e6, eps=1e-6, gains=dict(router=1.0, exp=2.0, exp_corr=0.85, sh=1.5, sh_gate=2.0, qk=1.0,
                                                           out=3.0)),
    "qwen3moe": dict(arch="qwen3moe", seed=13, n_layer=2, n_head=4, n_head_kv=2, head_dim=16,
                     n_expert=8, n_used=2, n_ff_exp=32, n_ff=96, n_ff_sh=0,
                     types=dict(attn="q8", gate="f16", up="q4", down="q8", emb="q8", out="q8"),
                     rope_base=1e6, eps=1e-6, gains=dict(router=2.5, exp=2.0, exp_corr=0.85, out=3.0)),
    "olmoe": dict(arch="olmoe", seed=14, n_layer=2, n_head=4, n_head_kv=4, head_dim=16,
                  n_expert=8, n_used=3, n_ff_exp=32, n_ff=32, n_ff_sh=0,
                  types=dict(attn="q8", gate="q8", up="q8", down="q8", emb="q8", out="f16"),
                  rope_base=1e4, eps=1e-5, gains=dict(router=1.5, exp=2.0, exp_corr=0.85, qk_spread=2.0, out=3.0)),
}

QTYPES = {"q8": QT.Q8_0, "q4": QT.Q4_0, "f16": QT.F16, "f32": QT.F32}
FTYPES = {"q8": gguf.LlamaFileType.MOSTLY_Q8_0, "q4": gguf.LlamaFileType.MOSTLY_Q4_0,
          "f16": gguf.LlamaFileType.MOSTLY_F16}


def add_typed(w, name, a, kind):
    """a: numpy array in PyTorch order (reversed ggml ne order)."""
    t = QTYPES[kind]
    if t == QT.F32:
        w.add_tensor(name, a.astype(np.float32))
    elif t == QT.F16:
        w.add_tensor(name, a.astype(np.float16), raw_dtype=QT.F16)
    else:
        w.add_tensor(name, gguf.quants.quantize(a.astype(np.float32), t), raw_dtype=t)


def write_moe(tag, s, path):
    rng = np.random.RandomState(s["seed"])
    arch = s["arch"]
    tokens, types, merges = vocab()
    n_vocab = len(tokens)
    n_embd, n_head, n_head_kv, hd = 64, s["n_head"], s["n_head_kv"], s["head_dim"]
    n_layer, n_exp, n_ffe, n_sh = s["n_layer"], s["n_expert"], s["n_ff_exp"], s["n_ff_sh"]
    dq, dkv = n_head * hd, n_head_kv * hd
    g, ty = s["gains"], s["types"]

    w = gguf.GGUFWriter(path, arch)
    w.add_name("%s tiny random" % tag)
    w.add_context_length(256)
    w.add_embedding_length(n_embd)
    w.add_block_count(n_layer)
    # llama (Mixtral) and olmoe: the expert width IS feed_forward_length;
    # qwen2moe/qwen3moe: feed_forward_length is the (unused) dense width of
    # the HF config, experts are expert_feed_forward_length wide
    w.add_feed_forward_length(s["n_ff"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_rope_freq_base(s["rope_base"])
    w.add_layer_norm_rms_eps(s["eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(s["n_used"])
    if arch == "llama":
        w.add_vocab_size(n_vocab)
        w.add_rope_dimension_count(hd)
    if arch in ("qwen2moe", "qwen3moe"):
        w.add_expert_feed_forward_length(n_ffe)
    if arch == "qwen2moe":
        w.add_expert_shared_feed_forward_length(n_sh)
    if arch == "qwen3moe":
        w.add_key_length(hd)
        w.add_value_length(hd)
    w.add_file_type(FTYPES[ty["gate"]] if ty["gate"] in FTYPES else gguf.LlamaFileType.MOSTLY_Q8_0)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(n_vocab - 3)
    w.add_eos_token_id(n_vocab - 1)
    w.add_add_bos_token(False)

    def mat(n_out, n_in, gain=1.0, *lead):
        # ggml ne [n_in, n_out, *reversed(lead)] = numpy (*lead, n_out, n_in)
        return rng.normal(0.0, gain / np.sqrt(n_in), size=tuple(lead) + (n_out, n_in)).astype(np.float32)

    def vec(n, mean=1.0, sd=0.1):
        return (mean + sd * rng.normal(size=n)).astype(np.float32)

    add_typed(w, "token_embd.weight", rng.normal(0.0, 1.0, size=(n_vocab, n_embd)), ty["emb"])
    w.add_tensor("output_norm.weight", vec(n_embd))
    add_typed(w, "output.weight", mat(n_vocab, n_embd, g["out"]), ty["out"])
    for l in range(n_layer):
        p = "blk.%d." % l
        w.add_tensor(p + "attn_norm.weight", vec(n_embd))
        wq, wk = mat(dq, n_embd, g.get("qk", 2.0)), mat(dkv, n_embd, g.get("qk", 2.0))
        if "qk_spread" in g:  # heads of unequal norm (olmoe: whole-Q norm != per-head norm)
            f = np.linspace(1.0 / g["qk_spread"], g["qk_spread"], n_head).astype(np.float32)
            wq = (wq.reshape(n_head, hd, n_embd) * f[:, None, None]).reshape(dq, n_embd)
            fk = np.linspace(1.0 / g["qk_spread"], g["qk_spread"], n_head_kv).astype(np.float32)
            wk = (wk.reshape(n_head_kv, hd, n_embd) * fk[:, None, None]).reshape(dkv, n_embd)
        add_typed(w, p + "attn_q.weight", wq, ty["attn"])
        add_typed(w, p + "attn_k.weight", wk, ty["attn"])
        add_typed(w, p + "attn_v.weight", mat(dkv, n_embd), ty["attn"])
        if arch == "qwen2moe":
            w.add_tensor(p + "attn_q.bias", vec(dq, 0.0, 0.5))
            w.add_tensor(p + "attn_k.bias", vec(dkv, 0.0, 0.5))
            w.add_tensor(p + "attn_v.bias", vec(dkv, 0.0, 0.5))
        if arch == "qwen3moe":  # per head: [head_dim]
            w.add_tensor(p + "attn_q_norm.weight", vec(hd))
            w.add_tensor(p + "attn_k_norm.weight", vec(hd))
        if arch == "olmoe":  # over all heads: [n_head*head_dim], [n_head_kv*head_dim]
            w.add_tensor(p + "attn_q_norm.weight", vec(dq))
            w.add_tensor(p + "attn_k_norm.weight", vec(dkv))
        add_typed(w, p + "attn_output.weight", mat(n_embd, dq, 0.5), ty["attn"])
        w.add_tensor(p + "ffn_norm.weight", vec(n_embd))
        # router: F32 [n_embd, n_expert]; logits ~ N(0, router^2) for unit-RMS input
        w.add_tensor(p + "ffn_gate_inp.weight", mat(n_exp, n_embd, g["router"]))
        # stacked experts: gate/up ne [n_embd, n_ff_exp, n_expert], down ne [n_ff_exp, n_embd, n_expert]
        rho = g.get("exp_corr", 0.0)

        def experts(n_out, n_in):
            # expert e = sqrt(rho) * common + sqrt(1 - rho) * own: same scale,
            # correlated experts (see the note on exp_corr above)
            own = mat(n_out, n_in, g["exp"], n_exp)
            if rho == 0.0:
                return own
            common = mat(n_out, n_in, g["exp"])
            return (np.sqrt(rho) * common[None] + np.sqrt(1.0 - rho) * own).astype(np.float32)
        add_typed(w, p + "ffn_gate_exps.weight", experts(n_ffe, n_embd), ty["gate"])
        add_typed(w, p + "ffn_up_exps.weight", experts(n_ffe, n_embd), ty["up"])
        add_typed(w, p + "ffn_down_exps.weight", experts(n_embd, n_ffe), ty["down"])
        if n_sh:
            # shared-expert gate: F32, numpy (1, n_embd) = ne [n_embd, 1] as the
            # converter writes HF's Linear(hidden, 1) (llama.cpp asks for {n_embd})
            w.add_tensor(p + "ffn_gate_inp_shexp.weight", mat(1, n_embd, g["sh_gate"]))
            add_typed(w, p + "ffn_gate_shexp.weight", mat(n_sh, n_embd, g["sh"]), ty["sh"])
            add_typed(w, p + "ffn_up_shexp.weight", mat(n_sh, n_embd, g["sh"]), ty["sh"])
            add_typed(w, p + "ffn_down_shexp.weight", mat(n_embd, n_sh, g["sh"]), ty["sh"])
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("%s: %d bytes, %d tokens" % (path, os.path.getsize(path), n_vocab))


def main():
    os.makedirs(OUTDIR, exist_ok=True)
    only = sys.argv[1:]
    for arch, seed in (("qwen2", 2), ("qwen3", 3)):
        if not only or arch in only:
            write_model(arch, os.path.join(OUTDIR, "%s-tiny.gguf" % arch), seed)
    for tag, spec in MOE.items():
        if not only or tag in only:
            write_moe(tag, spec, os.path.join(OUTDIR, "%s-tiny.gguf" % tag))


if __name__ == "__main__":
    sys.exit(main())
