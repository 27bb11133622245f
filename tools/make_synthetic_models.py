#!/usr/bin/env python3
"""make_synthetic_models.py - tiny random-weight Qwen2 / Qwen3 GGUF files.

Written with the `gguf` PyPI package (the writer llama.cpp's own converter
uses), so they are GGUF files as llama.cpp expects them for these
architectures. They are small enough (< 200 KB) to be committed under
tests/fixtures/synthetic/, next to the llama.cpp reference logits that
tools/make_reference_model.py computes for them; test_qwen.c compares codi
against those.

    bench/.peer/venv/bin/python tools/make_synthetic_models.py

qwen2-tiny.gguf: n_embd 64, 4 heads (2 KV heads) of 16, 2 layers, n_ff 128,
    Q/K/V biases, tied output (no output.weight), Q8_0 matrices.
qwen3-tiny.gguf: n_embd 64, 4 heads (2 KV heads) of 32 (key_length 32, so
    n_head * head_dim != n_embd), 2 layers, n_ff 128, per-head Q/K RMS
    norms, separate output.weight, Q8_0 matrices except attn_v in F16 (two
    activation types in one fused Q/K/V product).
Both: byte-level BPE vocabulary (256 byte tokens, 48 merges, 3 control
tokens, pre-tokenizer "qwen2"), rope base 1e6, NeoX rope (implied by the
architecture), context 256. Weights come from numpy's legacy RandomState
(stable stream) with a fixed seed per file, so reruns give the same bytes.
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


def main():
    os.makedirs(OUTDIR, exist_ok=True)
    write_model("qwen2", os.path.join(OUTDIR, "qwen2-tiny.gguf"), 2)
    write_model("qwen3", os.path.join(OUTDIR, "qwen3-tiny.gguf"), 3)


if __name__ == "__main__":
    sys.exit(main())
