#!/usr/bin/env python3
"""make_models.py - the GGUF files the speed benchmarks use (../shared/BENCH.md).

  models/bench/llama1b-q4_0.gguf, llama1b-q8_0.gguf
      synthetic `llama1b` (TinyLlama-1.1B shape: hidden 2048, 22 layers,
      32 heads, 4 KV heads, FFN 5632, vocab 32000), random weights, every
      matrix (embeddings and output head included) in the named type, norms
      F32. Speed does not depend on weight values. Vocabulary: a
      SentencePiece-style ("llama") list of <unk> <s> </s>, the 256 byte
      tokens and filler pieces, so llama.cpp and codi both load it.
  models/bench/smollm2-q8_0.gguf, smollm2-q4_0.gguf
      the default model requantized by llama.cpp's own llama-quantize
      (--allow-requantize), as the speed issue asks.

Run with the peer's venv (numpy + gguf):
    bench/.peer/venv/bin/python bench/make_models.py [--only llama1b|smollm2]
Idempotent: existing files are kept.
"""
import argparse
import os
import subprocess
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "bench")
QUANTIZE = os.path.join(ROOT, "bench", ".peer", "bin", "llama-quantize")
SMOL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

LLAMA1B = dict(n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, n_ctx=2048)


def spm_vocab(n):
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + [gguf.TokenType.BYTE] * 256
    i = 0
    while len(toks) < n:
        toks.append("\u2581w%d" % i)
        types.append(gguf.TokenType.NORMAL)
        i += 1
    scores = [0.0] * 259 + [-float(k) for k in range(n - 259)]
    return toks, scores, types


def write_llama1b(path, qtype):
    hp = LLAMA1B
    rng = np.random.default_rng(1234)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("llama1b-synthetic")
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff"])
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_rope_dimension_count(hp["n_embd"] // hp["n_head"])
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0 if qtype == QT.Q4_0 else gguf.LlamaFileType.MOSTLY_Q8_0)
    toks, scores, types = spm_vocab(hp["n_vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)

    def mat(name, n_out, n_in):
        a = (rng.standard_normal((n_out, n_in), dtype=np.float32) * 0.02).astype(np.float32)
        q = gguf.quants.quantize(a, qtype)
        w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)

    def vec(name, n):
        w.add_tensor(name, (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32))

    d, dkv = hp["n_embd"], hp["n_embd"] // hp["n_head"] * hp["n_head_kv"]
    mat("token_embd.weight", hp["n_vocab"], d)
    for l in range(hp["n_layer"]):
        p = "blk.%d." % l
        vec(p + "attn_norm.weight", d)
        mat(p + "attn_q.weight", d, d)
        mat(p + "attn_k.weight", dkv, d)
        mat(p + "attn_v.weight", dkv, d)
        mat(p + "attn_output.weight", d, d)
        vec(p + "ffn_norm.weight", d)
        mat(p + "ffn_gate.weight", hp["n_ff"], d)
        mat(p + "ffn_up.weight", hp["n_ff"], d)
        mat(p + "ffn_down.weight", d, hp["n_ff"])
        print("  layer %d/%d" % (l + 1, hp["n_layer"]), file=sys.stderr, flush=True)
    vec("output_norm.weight", d)
    mat("output.weight", hp["n_vocab"], d)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["llama1b", "smollm2"])
    a = ap.parse_args()
    os.makedirs(OUT, exist_ok=True)
    if a.only in (None, "smollm2"):
        for name, t in (("smollm2-q8_0.gguf", "Q8_0"), ("smollm2-q4_0.gguf", "Q4_0")):
            path = os.path.join(OUT, name)
            if not os.path.exists(path):
                subprocess.run([QUANTIZE, "--allow-requantize", SMOL, path, t], check=True,
                               stdout=subprocess.DEVNULL)
            print(path)
    if a.only in (None, "llama1b"):
        for name, t in (("llama1b-q4_0.gguf", QT.Q4_0), ("llama1b-q8_0.gguf", QT.Q8_0)):
            path = os.path.join(OUT, name)
            if not os.path.exists(path):
                print("writing %s ..." % path, file=sys.stderr, flush=True)
                write_llama1b(path + ".tmp", t)
                os.rename(path + ".tmp", path)
            print(path)


if __name__ == "__main__":
    main()
