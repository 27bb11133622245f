#!/usr/bin/env python3
"""make_hf_fixtures.py - tiny random-weight Hugging Face model folders and
their reference logits, for tests/test_convert.c.

Writes tests/fixtures/hf/<name>/ with what a Hugging Face checkpoint holds:
config.json, safetensors weights (written here byte by byte: u64 header
length, JSON header, data), tokenizer.json (byte-level BPE), and
tokenizer_config.json (special tokens, chat template); plus ref_logits.bin,
the logits of a fixed token sequence computed by the small NumPy reference
forward below (float64, Hugging Face semantics: rotate_half rope on the
unpermuted Q/K, GQA, RMS norm, SwiGLU), which codi must reproduce after
`codi convert`.

    python3 tools/make_hf_fixtures.py      (needs numpy)

qwen2-tiny: Qwen2ForCausalLM, hidden 32, 4 heads / 2 KV heads, 2 layers,
    Q/K/V biases, tied embeddings, one model.safetensors in BF16, pre-tokenizer
    Qwen2's regex.
llama-tiny: LlamaForCausalLM, hidden 32, 4 heads / 2 KV heads, 2 layers,
    separate lm_head, sharded into two files with model.safetensors.index.json,
    F32 and F16 tensors, SmolLM's pre-tokenizer (digits + byte level).
ref_logits.bin: "CODIHF01", u32 n, i32 tokens[n], u32 n_vocab,
    f32 logits[n][n_vocab] (logits after each prefix).
Weights come from numpy's legacy RandomState with fixed seeds.
"""

import json
import os
import struct
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "hf")

QWEN2_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
            "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def bpe_vocab():
    b2u = bytes_to_unicode()
    tokens = [b2u[b] for b in range(256)]
    have = set(tokens)
    merges = []
    for p in ["Ġ t", "h e", "Ġ a", "i n", "Ġt he", "e r", "o n", "Ġ s", "r e", "a t", "e n", "Ġ w", "o r",
              "Ġ o", "i s", "Ġ c", "e s", "a n", "Ġ b", "i t", "Ġ f", "a r", "Ġ th", "Ġth e", "l l", "o u"]:
        a, b = p.split(" ")
        if a in have and b in have:
            merges.append([a, b])
            if a + b not in have:
                tokens.append(a + b)
                have.add(a + b)
    return tokens, merges


def bf16_round(x):
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return r, (r.astype(np.uint32) << 16).view(np.float32)


def safetensors_bytes(tensors):
    """tensors: list of (name, dtype 'F32'|'F16'|'BF16', np array) -> (bytes, values as stored)."""
    header, blobs, off, stored = {}, [], 0, {}
    for name, dt, a in tensors:
        if dt == "F32":
            b = a.astype("<f4").tobytes()
            stored[name] = a.astype(np.float32)
        elif dt == "F16":
            b = a.astype("<f2").tobytes()
            stored[name] = a.astype(np.float16).astype(np.float32)
        else:
            raw, val = bf16_round(a)
            b = raw.astype("<u2").tobytes()
            stored[name] = val.reshape(a.shape)
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs), stored


def rms(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def rope_hf(x, base, hd):
    # x: (n, heads, hd); Hugging Face rotate_half convention
    n = x.shape[0]
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos = np.concatenate([np.cos(ang), np.cos(ang)], -1)[:, None, :]
    sin = np.concatenate([np.sin(ang), np.sin(ang)], -1)[:, None, :]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * cos + rot * sin


def forward(cfg, W, toks):
    d, nh, nkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    hd = d // nh
    eps, base = cfg["rms_norm_eps"], cfg["rope_theta"]
    g = lambda k: W[k].astype(np.float64)
    x = g("model.embed_tokens.weight")[toks]
    n = len(toks)
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        h = rms(x, g(p + "input_layernorm.weight"), eps)
        q = h @ g(p + "self_attn.q_proj.weight").T
        k = h @ g(p + "self_attn.k_proj.weight").T
        v = h @ g(p + "self_attn.v_proj.weight").T
        if p + "self_attn.q_proj.bias" in W:
            q = q + g(p + "self_attn.q_proj.bias")
            k = k + g(p + "self_attn.k_proj.bias")
            v = v + g(p + "self_attn.v_proj.bias")
        q = rope_hf(q.reshape(n, nh, hd), base, hd)
        k = rope_hf(k.reshape(n, nkv, hd), base, hd)
        v = v.reshape(n, nkv, hd)
        rep = nh // nkv
        k = np.repeat(k, rep, axis=1)
        v = np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd)
        s = s + np.triu(np.full((n, n), -np.inf), 1)[None]
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, nh * hd)
        x = x + o @ g(p + "self_attn.o_proj.weight").T
        h = rms(x, g(p + "post_attention_layernorm.weight"), eps)
        gt = h @ g(p + "mlp.gate_proj.weight").T
        up = h @ g(p + "mlp.up_proj.weight").T
        x = x + ((gt / (1 + np.exp(-gt))) * up) @ g(p + "mlp.down_proj.weight").T
    x = rms(x, g("model.norm.weight"), eps)
    head = g("lm_head.weight") if "lm_head.weight" in W else g("model.embed_tokens.weight")
    return x @ head.T


def make(name, arch, d, n_ff, seed, tied, dtype_of, shards, pre_tokenizer):
    rng = np.random.RandomState(seed)
    tokens, merges = bpe_vocab()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    n_vocab = len(tokens) + len(specials) + 5  # a few unused ids at the end, as real configs have
    nh, nkv, nl = 4, 2, 2
    hd = d // nh
    cfg = {
        "architectures": [arch], "model_type": "qwen2" if arch.startswith("Qwen2") else "llama",
        "hidden_size": d, "intermediate_size": n_ff, "num_hidden_layers": nl, "num_attention_heads": nh,
        "num_key_value_heads": nkv, "vocab_size": n_vocab, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0 if arch.startswith("Qwen2") else 10000.0,
        "tie_word_embeddings": tied, "torch_dtype": "bfloat16", "bos_token_id": len(tokens) + 1,
        "eos_token_id": len(tokens) + 2,
    }
    mat = lambda o, i, gain=1.0: rng.normal(0, gain / np.sqrt(i), size=(o, i)).astype(np.float32)
    vec = lambda n, m=1.0, s=0.1: (m + s * rng.normal(size=n)).astype(np.float32)
    T = [("model.embed_tokens.weight", rng.normal(0, 1, size=(n_vocab, d)).astype(np.float32))]
    for l in range(nl):
        p = "model.layers.%d." % l
        T += [(p + "input_layernorm.weight", vec(d)),
              (p + "self_attn.q_proj.weight", mat(nh * hd, d, 2.0)),
              (p + "self_attn.k_proj.weight", mat(nkv * hd, d, 2.0)),
              (p + "self_attn.v_proj.weight", mat(nkv * hd, d)),
              (p + "self_attn.o_proj.weight", mat(d, nh * hd))]
        if arch.startswith("Qwen2"):
            T += [(p + "self_attn.q_proj.bias", vec(nh * hd, 0, 0.5)),
                  (p + "self_attn.k_proj.bias", vec(nkv * hd, 0, 0.5)),
                  (p + "self_attn.v_proj.bias", vec(nkv * hd, 0, 0.5))]
        T += [(p + "post_attention_layernorm.weight", vec(d)),
              (p + "mlp.gate_proj.weight", mat(n_ff, d)),
              (p + "mlp.up_proj.weight", mat(n_ff, d)),
              (p + "mlp.down_proj.weight", mat(d, n_ff))]
    T.append(("model.norm.weight", vec(d)))
    if not tied:
        T.append(("lm_head.weight", mat(n_vocab, d, 4.0)))
    typed = [(nm, dtype_of(nm), a) for nm, a in T]
    folder = os.path.join(OUT, name)
    os.makedirs(folder, exist_ok=True)
    for f in os.listdir(folder):
        os.remove(os.path.join(folder, f))
    W = {}
    if shards == 1:
        b, st = safetensors_bytes(typed)
        open(os.path.join(folder, "model.safetensors"), "wb").write(b)
        W.update(st)
    else:
        per = (len(typed) + shards - 1) // shards
        wmap = {}
        for s in range(shards):
            fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
            part = typed[s * per:(s + 1) * per]
            b, st = safetensors_bytes(part)
            open(os.path.join(folder, fn), "wb").write(b)
            W.update(st)
            for nm, _, _ in part:
                wmap[nm] = fn
        json.dump({"metadata": {"total_size": 0}, "weight_map": wmap},
                  open(os.path.join(folder, "model.safetensors.index.json"), "w"), indent=2)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=2)
    vocab = {t: i for i, t in enumerate(tokens)}
    added = [{"id": len(tokens) + i, "content": s, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True} for i, s in enumerate(specials)]
    tok = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
           "normalizer": None, "pre_tokenizer": pre_tokenizer,
           "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
           "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
           "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                     "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                     "ignore_merges": False, "vocab": vocab, "merges": merges}}
    json.dump(tok, open(os.path.join(folder, "tokenizer.json"), "w"), ensure_ascii=False)
    tcfg = {"add_bos_token": False, "bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"},
            "pad_token": "<|endoftext|>", "model_max_length": 512,
            "chat_template": "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
                             "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}"
                             "{{ '<|im_start|>assistant\\n' }}{% endif %}"}
    json.dump(tcfg, open(os.path.join(folder, "tokenizer_config.json"), "w"), indent=2)
    toks = [int(t) for t in np.random.RandomState(seed + 100).randint(0, len(tokens) + len(specials), size=24)]
    logits = forward(cfg, W, toks).astype(np.float32)
    with open(os.path.join(folder, "ref_logits.bin"), "wb") as f:
        f.write(b"CODIHF01" + struct.pack("<I", len(toks)) + struct.pack("<%di" % len(toks), *toks))
        f.write(struct.pack("<I", n_vocab) + logits.astype("<f4").tobytes())
    size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
    print("%s: %d files, %d bytes, vocab %d" % (folder, len(os.listdir(folder)), size, n_vocab))


def main():
    make("qwen2-tiny", "Qwen2ForCausalLM", 32, 64, 21, True, lambda n: "BF16", 1,
         {"type": "Sequence", "pretokenizers": [
             {"type": "Split", "pattern": {"Regex": QWEN2_RE}, "behavior": "Isolated", "invert": False},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]})
    make("llama-tiny", "LlamaForCausalLM", 32, 64, 22, False,
         lambda n: "F16" if ("proj" in n and "layers.1." in n) else "F32", 2,
         {"type": "Sequence", "pretokenizers": [
             {"type": "Digits", "individual_digits": True},
             {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]})


if __name__ == "__main__":
    sys.exit(main())
