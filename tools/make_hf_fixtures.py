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
    python3 tools/make_hf_fixtures.py --gemma3 GEMMA.gguf OUTDIR
        (a Gemma 3 folder with the real Gemma 3 tokenizer; needs numpy and
        tokenizers; tests/test_convert.c runs it, see "Gemma 3" below)

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


# ------------------------------------------------------------ Gemma 3
#
# --gemma3 GEMMA.gguf OUTDIR writes a Gemma 3 Hugging Face folder whose
# tokenizer is the real Gemma 3 tokenizer (taken from the vocabulary of a
# llama.cpp GGUF of Gemma 3) in the form Hugging Face ships it: tokenizer.json
# as transformers' GemmaConverter writes it (SentencePiece BPE: Replace
# normalizer ' ' -> '▁', byte fallback, merges generated from the piece
# scores by generate_merges), tokenizer_config.json and chat_template.jinja;
# with a tiny random-weight Gemma3ForCausalLM (config.json as the 270M's, BF16
# model.safetensors) and ref_logits.bin from the NumPy forward below. It then
# checks with Hugging Face's own `tokenizers` (pip install tokenizers) that
# the generated tokenizer.json encodes the tokenizer corpus to llama.cpp's ids
# (tests/fixtures/tokens/gemma-3-270m-q4_k_m.txt), and exits 1 if not.
# tests/test_convert.c runs this at test time (the folder is too big to
# commit and derives from models/, which is not committed).

GEMMA_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "tokens", "gemma-3-270m-q4_k_m.txt")
# llama.cpp's end-of-generation token texts (llama-vocab.cpp; src/tokenizer.c EOG_TEXTS)
LLAMA_CPP_EOG_TEXTS = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
    "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
    "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~["}
GGUF_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def read_gguf_meta(path):
    """Key -> value of a GGUF file's metadata (strings as bytes)."""
    f = open(path, "rb")

    def rd(fmt):
        return struct.unpack("<" + fmt, f.read(struct.calcsize(fmt)))[0]

    def value(t):
        if t in GGUF_SCALARS:
            return rd(GGUF_SCALARS[t])
        if t == 8:
            return f.read(rd("Q"))
        if t == 9:
            et, n = rd("I"), rd("Q")
            if et in GGUF_SCALARS:
                fmt = GGUF_SCALARS[et]
                return list(struct.unpack("<%d%s" % (n, fmt), f.read(n * struct.calcsize(fmt))))
            return [value(et) for _ in range(n)]
        sys.exit("%s: GGUF value type %d" % (path, t))

    if f.read(4) != b"GGUF":
        sys.exit("%s is not a GGUF file" % path)
    rd("I")
    rd("Q")
    meta = {}
    for _ in range(rd("Q")):
        key = f.read(rd("Q")).decode()
        meta[key] = value(rd("I"))
    return meta


def generate_merges(vocab, vocab_scores):
    """transformers' convert_slow_tokenizer.generate_merges: every split of a
    piece into two pieces, ordered by the piece's score (highest first)."""
    merges = []
    for merge, piece_score in vocab_scores.items():
        local = []
        for index in range(1, len(merge)):
            piece_l, piece_r = merge[:index], merge[index:]
            if piece_l in vocab and piece_r in vocab:
                local.append((piece_l, piece_r, piece_score))
        local = sorted(local, key=lambda x: (vocab[x[0]], vocab[x[1]]))
        merges.extend(local)
    merges = sorted(merges, key=lambda val: (val[2], len(val[0]), len(val[1])), reverse=True)
    return [[a, b] for a, b, _ in merges]


def gemma3_tokenizer(meta):
    """tokenizer.json and tokenizer_config.json of Gemma 3 from its GGUF metadata."""
    toks = [t.decode("utf-8") for t in meta["tokenizer.ggml.tokens"]]
    types = meta["tokenizer.ggml.token_type"]
    scores = meta["tokenizer.ggml.scores"]
    n = len(toks)
    # The SentencePiece pieces: llama.cpp wrote user-defined pieces with ' '
    # for '▁'. Their scores: llama.cpp set -1000 for control and
    # user-defined pieces, SentencePiece has 0 there (and for byte pieces).
    pieces = [t.replace(" ", "\u2581") if ty == 4 else t for t, ty in zip(toks, types)]
    piece_scores = [float(s) if ty == 1 else 0.0 for s, ty in zip(scores, types)]
    # The BPE vocabulary holds every piece under its id (transformers'
    # GemmaConverter once renamed "<0x09>" to "\t", for Gemma 1, which had no
    # "\t" piece; Gemma 3 has one, and its tokenizer.json keeps "<0x09>":
    # the image token it adds at id 262144 is only that id when the
    # vocabulary has no hole). Merges: generate_merges over the pieces.
    vocab_scores = list(zip(pieces, piece_scores))
    bpe_vocab = {w: i for i, (w, _) in enumerate(vocab_scores)}
    merges = generate_merges(bpe_vocab, dict(vocab_scores))
    added = [{"id": i, "content": pieces[i], "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": types[i] == 3} for i in range(n) if types[i] in (3, 4)]
    # the processor's image placeholder: an id past the model's vocabulary
    added.append({"id": n, "content": "<image_soft_token>", "single_word": False, "lstrip": False,
                  "rstrip": False, "normalized": False, "special": True})
    bos = toks[meta["tokenizer.ggml.bos_token_id"]]
    bos_id = meta["tokenizer.ggml.bos_token_id"]
    tok = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"},
        "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious",
                          "invert": False},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": bos, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": bos, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {bos: {"id": bos, "ids": [bos_id], "tokens": [bos]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": toks[meta["tokenizer.ggml.unknown_token_id"]],
                  "continuing_subword_prefix": None, "end_of_word_suffix": None, "fuse_unk": True,
                  "byte_fallback": True, "ignore_merges": False, "vocab": bpe_vocab, "merges": merges},
    }
    tcfg = {
        "add_bos_token": bool(meta["tokenizer.ggml.add_bos_token"]),
        "add_eos_token": bool(meta["tokenizer.ggml.add_eos_token"]),
        "added_tokens_decoder": {str(a["id"]): {k: a[k] for k in a if k != "id"} for a in added},
        "bos_token": bos, "eos_token": toks[meta["tokenizer.ggml.eos_token_id"]],
        "pad_token": toks[meta["tokenizer.ggml.padding_token_id"]],
        "unk_token": toks[meta["tokenizer.ggml.unknown_token_id"]],
        "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>",
        "clean_up_tokenization_spaces": False, "model_max_length": 1000000000000000019884624838656,
        "sp_model_kwargs": None, "spaces_between_special_tokens": False, "tokenizer_class": "GemmaTokenizer",
        "use_default_system_prompt": False,
    }
    return tok, tcfg, len(merges)


def read_token_fixture(path):
    """(mode, input bytes, ids) of each record of a tests/fixtures/tokens file."""
    recs, cur = [], None
    for line in open(path, encoding="ascii"):
        line = line.rstrip("\n")
        if line.startswith("S "):
            _, _, mode, h = line.split(" ", 3)
            cur = (mode, b"" if h == "-" else bytes.fromhex(h))
        elif line.startswith("T"):
            recs.append((cur[0], cur[1], [int(x) for x in line[1:].split()]))
    return recs


def check_hf_tokenizer(folder, fixture):
    """Hugging Face tokenizers on folder/tokenizer.json vs llama.cpp's ids."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        print("the Python package 'tokenizers' is missing: pip install tokenizers (.ci/run installs it)")
        return False
    tk = Tokenizer.from_file(os.path.join(folder, "tokenizer.json"))
    # llama.cpp makes tokens with end-of-generation texts control tokens
    # (llama-vocab.cpp, "special_eog_ids"), so unlike Hugging Face it does
    # not cut a user-defined one ("</s>" in Gemma 3) out of text when special
    # tokens are not parsed: such records cannot agree.
    tj = json.load(open(os.path.join(folder, "tokenizer.json"), encoding="utf-8"))
    promoted = [a["content"] for a in tj["added_tokens"] if not a["special"] and a["content"] in LLAMA_CPP_EOG_TEXTS]
    recs = read_token_fixture(fixture)
    ok = n = not_utf8 = eog = 0
    for mode, text, want in recs:
        try:
            s = text.decode("utf-8")
        except UnicodeDecodeError:
            not_utf8 += 1  # tokenizers takes str
            continue
        if mode != "s" and any(t in s for t in promoted):
            eog += 1
            continue
        # 'p': BOS, special-token text is text; 's': BOS, parsed; 'r': neither
        tk.encode_special_tokens = mode != "s"
        got = tk.encode(s, add_special_tokens=mode != "r").ids
        n += 1
        if got == want:
            ok += 1
        elif n - ok <= 5:
            k = 0
            while k < min(len(got), len(want)) and got[k] == want[k]:
                k += 1
            print("  HF tokenizers, mode %s, %r: first difference at %d: %s vs llama.cpp %s" %
                  (mode, s[:60], k, got[k:k + 4], want[k:k + 4]))
    print("HF tokenizers %s on the generated tokenizer.json: ids match %d/%d records of %s "
          "(not compared: %d records that are not UTF-8, %d where llama.cpp does not cut out the "
          "user-defined %s)" % (__import__("tokenizers").__version__, ok, n, os.path.relpath(fixture, ROOT),
                                not_utf8, eog, " ".join(promoted) or "-"))
    return n > 300 and ok == n


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def forward_gemma3(cfg, W, toks):
    """Gemma3ForCausalLM in float64: embeddings * sqrt(hidden), RMS norms
    times (1 + w), per-head Q/K norms, rotate_half rope with the local base
    on sliding layers, sliding-window causal mask, attention scaled by
    query_pre_attn_scalar^-0.5, post-attention / pre- and post-FFN norms,
    GELU(tanh) gated FFN, tied output, optional final soft-capping."""
    d, nh, nkv, hd = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps = cfg["rms_norm_eps"]
    g = lambda k: W[k].astype(np.float64)
    norm = lambda x, w: x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * (1.0 + w)
    n = len(toks)
    x = g("model.embed_tokens.weight")[toks] * np.sqrt(d)
    i, j = np.arange(n)[:, None], np.arange(n)[None, :]
    for l in range(cfg["num_hidden_layers"]):
        p = "model.layers.%d." % l
        sliding = cfg["layer_types"][l] == "sliding_attention"
        base = cfg["rope_local_base_freq"] if sliding else cfg["rope_theta"]
        h = norm(x, g(p + "input_layernorm.weight"))
        q = norm((h @ g(p + "self_attn.q_proj.weight").T).reshape(n, nh, hd), g(p + "self_attn.q_norm.weight"))
        k = norm((h @ g(p + "self_attn.k_proj.weight").T).reshape(n, nkv, hd), g(p + "self_attn.k_norm.weight"))
        v = (h @ g(p + "self_attn.v_proj.weight").T).reshape(n, nkv, hd)
        q, k = rope_hf(q, base, hd), rope_hf(k, base, hd)
        k, v = np.repeat(k, nh // nkv, axis=1), np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) * cfg["query_pre_attn_scalar"] ** -0.5
        masked = (j > i) | ((i - j >= cfg["sliding_window"]) & sliding)
        s = np.where(masked[None], -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, nh * hd)
        x = x + norm(o @ g(p + "self_attn.o_proj.weight").T, g(p + "post_attention_layernorm.weight"))
        h = norm(x, g(p + "pre_feedforward_layernorm.weight"))
        f = gelu_tanh(h @ g(p + "mlp.gate_proj.weight").T) * (h @ g(p + "mlp.up_proj.weight").T)
        x = x + norm(f @ g(p + "mlp.down_proj.weight").T, g(p + "post_feedforward_layernorm.weight"))
    x = norm(x, g("model.norm.weight"))
    logits = x @ g("model.embed_tokens.weight").T
    cap = cfg.get("final_logit_softcapping")
    return np.tanh(logits / cap) * cap if cap else logits


def make_gemma3(gguf_path, folder):
    if not os.path.isfile(gguf_path):
        sys.exit("%s is missing: run tools/fetch_models.sh" % gguf_path)
    meta = read_gguf_meta(gguf_path)
    if meta.get("tokenizer.ggml.model") != b"llama" or meta.get("general.architecture") != b"gemma3":
        sys.exit("%s is not a Gemma 3 GGUF with a SentencePiece vocabulary" % gguf_path)
    tok, tcfg, n_merges = gemma3_tokenizer(meta)
    n_vocab = len(meta["tokenizer.ggml.tokens"])
    os.makedirs(folder, exist_ok=True)
    json.dump(tok, open(os.path.join(folder, "tokenizer.json"), "w", encoding="utf-8"), ensure_ascii=False)
    json.dump(tcfg, open(os.path.join(folder, "tokenizer_config.json"), "w"), indent=2)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from make_jinja_fixtures import GEMMA3 as GEMMA3_TEMPLATE
    open(os.path.join(folder, "chat_template.jinja"), "w").write(GEMMA3_TEMPLATE)

    # gemma-3-270m's config.json, shrunk: 3 layers (two sliding, one
    # global), head_dim 16 with 4 query heads over hidden 32, one KV head.
    nl, d, nh, nkv, hd, n_ff = 3, 32, 4, 1, 16, 64
    layer_types = ["sliding_attention", "sliding_attention", "full_attention"]
    cfg = {
        "_sliding_window_pattern": 3, "architectures": ["Gemma3ForCausalLM"], "attention_bias": False,
        "attention_dropout": 0.0, "attn_logit_softcapping": None, "bos_token_id": 2, "eos_token_id": 1,
        "final_logit_softcapping": None, "head_dim": hd, "hidden_activation": "gelu_pytorch_tanh",
        "hidden_size": d, "initializer_range": 0.02, "intermediate_size": n_ff, "layer_types": layer_types,
        "max_position_embeddings": 32768, "model_type": "gemma3_text", "num_attention_heads": nh,
        "num_hidden_layers": nl, "num_key_value_heads": nkv, "pad_token_id": 0, "query_pre_attn_scalar": hd,
        "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000.0, "rope_scaling": None, "rope_theta": 1000000.0,
        "sliding_window": 5, "torch_dtype": "bfloat16", "transformers_version": "4.55.0.dev0",
        "use_bidirectional_attention": False, "use_cache": True, "vocab_size": n_vocab,
    }
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"), indent=2)
    rng = np.random.RandomState(23)
    mat = lambda o, i, gain=1.0: rng.normal(0, gain / np.sqrt(i), size=(o, i)).astype(np.float32)
    vec = lambda n: (0.2 * rng.normal(size=n)).astype(np.float32)  # HF norms apply 1 + w
    T = [("model.embed_tokens.weight", rng.normal(0, 1 / np.sqrt(d), size=(n_vocab, d)).astype(np.float32))]
    for l in range(nl):
        p = "model.layers.%d." % l
        T += [(p + "input_layernorm.weight", vec(d)),
              (p + "self_attn.q_proj.weight", mat(nh * hd, d, 2.0)),
              (p + "self_attn.k_proj.weight", mat(nkv * hd, d, 2.0)),
              (p + "self_attn.v_proj.weight", mat(nkv * hd, d)),
              (p + "self_attn.o_proj.weight", mat(d, nh * hd)),
              (p + "self_attn.q_norm.weight", vec(hd)),
              (p + "self_attn.k_norm.weight", vec(hd)),
              (p + "post_attention_layernorm.weight", vec(d)),
              (p + "pre_feedforward_layernorm.weight", vec(d)),
              (p + "post_feedforward_layernorm.weight", vec(d)),
              (p + "mlp.gate_proj.weight", mat(n_ff, d)),
              (p + "mlp.up_proj.weight", mat(n_ff, d)),
              (p + "mlp.down_proj.weight", mat(d, n_ff))]
    T.append(("model.norm.weight", vec(d)))
    b, W = safetensors_bytes([(nm, "BF16", a) for nm, a in T])
    open(os.path.join(folder, "model.safetensors"), "wb").write(b)
    toks = [2] + [int(t) for t in np.random.RandomState(123).randint(494, 255968, size=23)]
    logits = forward_gemma3(cfg, W, toks).astype(np.float32)
    with open(os.path.join(folder, "ref_logits.bin"), "wb") as f:
        f.write(b"CODIHF01" + struct.pack("<I", len(toks)) + struct.pack("<%di" % len(toks), *toks))
        f.write(struct.pack("<I", n_vocab) + logits.astype("<f4").tobytes())
    print("%s: Gemma 3 folder, vocab %d, %d merges" % (folder, n_vocab, n_merges))
    return 0 if check_hf_tokenizer(folder, GEMMA_FIXTURE) else 1




def main():
    if len(sys.argv) > 1:
        if len(sys.argv) != 4 or sys.argv[1] != "--gemma3":
            sys.exit("usage: make_hf_fixtures.py [--gemma3 GEMMA.gguf OUTDIR]")
        return make_gemma3(sys.argv[2], sys.argv[3])
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
