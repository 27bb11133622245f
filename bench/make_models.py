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

  models/bench/moe-q4_0.gguf, moe-q8_0.gguf
      synthetic `moe` (Mixtral-style, GGUF arch "llama" with experts:
      hidden 1024, 16 layers, 16 heads, 4 KV heads, 32 experts, top-4,
      expert FFN 768, vocab 32000), random weights, every matrix including
      the stacked experts in the named type, routers (ffn_gate_inp) and
      norms F32, as llama.cpp's converter + llama-quantize leave them.
      moe-q4_0.gguf is 0.75 GB, moe-q8_0.gguf 1.4 GB.

Larger MoE files (expert offloading, files beyond the RAM budget) with any
shape, written tensor by tensor and expert by expert (write_moe streams
through gguf.GGUFWriter's add_tensor_info + the data section written chunk
by chunk, so memory stays at one expert slice whatever the file size):

    bench/.peer/venv/bin/python bench/make_models.py --big models/bench/moe-big.gguf \
        --n-layer 48 --n-expert 128 --n-used 8 --n-embd 2048 --n-ff-exp 1408 --qtype q4_0 [--pool 16]

(that one is 30.3 GB; --dry-run prints the size without writing; the
options default to the `moe` shape). --pool N
fills the experts from N pre-quantized random slices (each expert slice
drawn at random from the pool) instead of fresh random numbers per expert:
disk-bound instead of ~50 M parameters/s of numpy, same speed behaviour.

Run with the peer's venv (numpy + gguf):
    bench/.peer/venv/bin/python bench/make_models.py [--only llama1b|smollm2|moe]
Idempotent: existing files are kept.
"""
import argparse
import os
import subprocess
import sys
import time

import numpy as np
import gguf
from gguf import GGMLQuantizationType as QT

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "models", "bench")
QUANTIZE = os.path.join(ROOT, "bench", ".peer", "bin", "llama-quantize")
SMOL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

LLAMA1B = dict(n_embd=2048, n_layer=22, n_head=32, n_head_kv=4, n_ff=5632, n_vocab=32000, n_ctx=2048)
MOE = dict(n_embd=1024, n_layer=16, n_head=16, n_head_kv=4, n_expert=32, n_used=4, n_ff_exp=768,
           n_vocab=32000, n_ctx=4096)
QTYPES = {"q4_0": QT.Q4_0, "q8_0": QT.Q8_0, "f16": QT.F16}


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


def moe_tensors(hp, qtype):
    """(name, ggml ne, type) of a Mixtral-style file, in file order."""
    d, dkv = hp["n_embd"], hp["n_embd"] // hp["n_head"] * hp["n_head_kv"]
    E, F = hp["n_expert"], hp["n_ff_exp"]
    out = [("token_embd.weight", (d, hp["n_vocab"]), qtype)]
    for l in range(hp["n_layer"]):
        p = "blk.%d." % l
        out += [(p + "attn_norm.weight", (d,), QT.F32),
                (p + "attn_q.weight", (d, d), qtype),
                (p + "attn_k.weight", (d, dkv), qtype),
                (p + "attn_v.weight", (d, dkv), qtype),
                (p + "attn_output.weight", (d, d), qtype),
                (p + "ffn_norm.weight", (d,), QT.F32),
                (p + "ffn_gate_inp.weight", (d, E), QT.F32),
                (p + "ffn_gate_exps.weight", (d, F, E), qtype),
                (p + "ffn_up_exps.weight", (d, F, E), qtype),
                (p + "ffn_down_exps.weight", (F, d, E), qtype)]
    out += [("output_norm.weight", (d,), QT.F32), ("output.weight", (d, hp["n_vocab"]), qtype)]
    return out


def tensor_nbytes(ne, qtype):
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    assert ne[0] % block == 0, "ne0 %d of a %s tensor is not a multiple of %d" % (ne[0], qtype.name, block)
    n = int(np.prod(ne, dtype=np.int64))
    return n // block * size


def moe_file_size(hp, qtype):
    return sum(tensor_nbytes(ne, t) for _n, ne, t in moe_tensors(hp, qtype))


def write_moe(path, hp, qtype, pool=0, seed=4321, quiet=False):
    """A Mixtral-style GGUF (arch llama + experts) written as it is generated:
    tensor infos first (shapes and types are known up front), then the data
    section one tensor, and for stacked experts one expert slice, at a time.
    Peak memory: one [n_ff_exp, n_embd] slice (or the embedding matrix)."""
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("moe-synthetic")
    w.add_context_length(hp["n_ctx"])
    w.add_embedding_length(hp["n_embd"])
    w.add_block_count(hp["n_layer"])
    w.add_feed_forward_length(hp["n_ff_exp"])  # llama + experts: the expert width
    w.add_head_count(hp["n_head"])
    w.add_head_count_kv(hp["n_head_kv"])
    w.add_rope_dimension_count(hp["n_embd"] // hp["n_head"])
    w.add_rope_freq_base(1e6)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_expert_count(hp["n_expert"])
    w.add_expert_used_count(hp["n_used"])
    w.add_vocab_size(hp["n_vocab"])
    w.add_file_type({QT.Q4_0: gguf.LlamaFileType.MOSTLY_Q4_0, QT.Q8_0: gguf.LlamaFileType.MOSTLY_Q8_0,
                     QT.F16: gguf.LlamaFileType.MOSTLY_F16}[qtype])
    toks, scores, types = spm_vocab(hp["n_vocab"])
    w.add_tokenizer_model("llama")
    w.add_token_list(toks)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_unk_token_id(0)
    w.add_add_bos_token(True)
    layout = moe_tensors(hp, qtype)
    for name, ne, t in layout:
        nb = tensor_nbytes(ne, t)
        # add_tensor_info takes the numpy (reversed) shape and, for quantized
        # types, the byte shape; only nbytes and the ggml shape end up in the file
        shape = tuple(reversed(ne))
        if t in (QT.F32, QT.F16):
            w.add_tensor_info(name, shape, np.dtype(np.float32 if t == QT.F32 else np.float16), nb, raw_dtype=t)
        else:
            w.add_tensor_info(name, gguf.quant_shape_to_byte_shape(shape, t), np.dtype(np.uint8), nb, raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]

    def quant(a, t):
        if t == QT.F32:
            return a.astype(np.float32)
        if t == QT.F16:
            return a.astype(np.float16)
        return gguf.quants.quantize(a, t)

    def rand(n_out, n_in, scale):
        return rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(scale)

    pools = {}
    t0, done, total = time.time(), 0, moe_file_size(hp, qtype)
    for name, ne, t in layout:
        ti_name = next(iter(w.tensors[0]))
        ti = w.tensors[0].pop(ti_name)
        assert ti_name == name and ti.nbytes == tensor_nbytes(ne, t)
        w.write_padding(fout, fout.tell())
        written = 0
        if len(ne) == 1:
            chunks = [(1.0 + 0.1 * rng.standard_normal(ne[0])).astype(np.float32)]
        elif len(ne) == 2:
            scale = 1.0 / np.sqrt(ne[0]) if name.endswith("ffn_gate_inp.weight") else 0.02
            chunks = [quant(rand(ne[1], ne[0], scale), t)]
        else:
            chunks = None
        if chunks is not None:
            for c in chunks:
                c.tofile(fout)
                written += c.nbytes
        else:  # stacked experts, one [ne1, ne0] slice at a time
            key = (ne[0], ne[1])
            if pool and key not in pools:
                pools[key] = [quant(rand(ne[1], ne[0], 0.02), t) for _ in range(pool)]
            for e in range(ne[2]):
                c = pools[key][rng.integers(pool)] if pool else quant(rand(ne[1], ne[0], 0.02), t)
                c.tofile(fout)
                written += c.nbytes
        assert written == ti.nbytes, (name, written, ti.nbytes)
        w.write_padding(fout, ti.nbytes)
        done += written
        if not quiet and name.endswith("ffn_down_exps.weight"):
            el = time.time() - t0
            print("  %s: %.2f of %.2f GB, %.0f s" % (name.split(".")[1], done / 1e9, total / 1e9, el),
                  file=sys.stderr, flush=True)
    w.state = gguf.gguf_writer.WriterState.WEIGHTS
    w.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", choices=["llama1b", "smollm2", "moe"])
    ap.add_argument("--big", metavar="PATH", help="write one Mixtral-style MoE of the shape below to PATH")
    ap.add_argument("--n-layer", type=int, default=MOE["n_layer"])
    ap.add_argument("--n-expert", type=int, default=MOE["n_expert"])
    ap.add_argument("--n-used", type=int, default=MOE["n_used"])
    ap.add_argument("--n-embd", type=int, default=MOE["n_embd"])
    ap.add_argument("--n-ff-exp", type=int, default=MOE["n_ff_exp"])
    ap.add_argument("--n-head", type=int, default=MOE["n_head"])
    ap.add_argument("--n-head-kv", type=int, default=MOE["n_head_kv"])
    ap.add_argument("--n-vocab", type=int, default=MOE["n_vocab"])
    ap.add_argument("--qtype", choices=sorted(QTYPES), default="q4_0")
    ap.add_argument("--pool", type=int, default=0, help="fill experts from N pre-quantized slices")
    ap.add_argument("--dry-run", action="store_true", help="with --big: print the size, write nothing")
    a = ap.parse_args()
    if a.big:
        hp = dict(MOE, n_layer=a.n_layer, n_expert=a.n_expert, n_used=a.n_used, n_embd=a.n_embd,
                  n_ff_exp=a.n_ff_exp, n_head=a.n_head, n_head_kv=a.n_head_kv, n_vocab=a.n_vocab)
        if not (0 < hp["n_used"] <= hp["n_expert"]) or hp["n_embd"] % hp["n_head"] or hp["n_head"] % hp["n_head_kv"]:
            sys.exit("bad shape %r" % hp)
        size = moe_file_size(hp, QTYPES[a.qtype])
        print("%s: %s, %.2f GB (%d bytes of tensor data)" % (a.big, hp, size / 1e9, size))
        if a.dry_run:
            return
        if os.path.exists(a.big):
            sys.exit("%s exists" % a.big)
        write_moe(a.big + ".tmp", hp, QTYPES[a.qtype], pool=a.pool)
        os.rename(a.big + ".tmp", a.big)
        print(a.big, os.path.getsize(a.big))
        return
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
    if a.only in (None, "moe"):
        for name, t in (("moe-q4_0.gguf", QT.Q4_0), ("moe-q8_0.gguf", QT.Q8_0)):
            path = os.path.join(OUT, name)
            if not os.path.exists(path):
                print("writing %s (%.2f GB) ..." % (path, moe_file_size(MOE, t) / 1e9), file=sys.stderr, flush=True)
                write_moe(path + ".tmp", MOE, t)
                os.rename(path + ".tmp", path)
            print(path)


if __name__ == "__main__":
    main()
