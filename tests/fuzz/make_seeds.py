#!/usr/bin/env python3
"""Write the fuzz seed corpora under tests/fuzz/corpus/ (python3 stdlib only).

    python3 tests/fuzz/make_seeds.py [MODELS_DIR]

The seeds are small (a few KiB each): tiny llama models with random F32
weights and a byte-level BPE or SentencePiece vocabulary that load and
decode; the real SmolLM2 / Gemma metadata with the tokenizer arrays cut
short; truncated prefixes of the real files. Whole models are never written.
Re-running gives the same bytes (fixed seeds), so the committed corpus can
be regenerated and diffed.
"""
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MODELS = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "models")
SMOL = os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf")
GEMMA = os.path.join(MODELS, "gemma-3-270m-q4_k_m.gguf")
CORPUS = os.path.join(HERE, "corpus")

# GGUF value types
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i",
          F32: "<f", BOOL: "<?", U64: "<Q", I64: "<q", F64: "<d"}


# ------------------------------------------------------------------ reader
def read_gguf(path):
    """(version, [(key, type, value)], tensor count) of a GGUF file; array
    values are (elem_type, [elements])."""
    with open(path, "rb") as f:
        data = f.read(64 << 20)  # metadata is well inside the first 64 MiB
    off = 0

    def take(fmt):
        nonlocal off
        v = struct.unpack_from(fmt, data, off)[0]
        off += struct.calcsize(fmt)
        return v

    def string():
        nonlocal off
        n = take("<Q")
        s = data[off:off + n]
        off += n
        return s

    def value(t):
        if t == STR:
            return string()
        if t == ARR:
            et, n = take("<I"), take("<Q")
            return (et, [value(et) for _ in range(n)])
        return take(SCALAR[t])

    assert data[:4] == b"GGUF"
    off = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    kvs = []
    for _ in range(n_kv):
        k = string().decode()
        t = take("<I")
        kvs.append((k, t, value(t)))
    return version, kvs, n_tensors


# ------------------------------------------------------------------ writer
def enc_value(t, v):
    if t == STR:
        b = v if isinstance(v, bytes) else v.encode()
        return struct.pack("<Q", len(b)) + b
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(
            enc_value(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def write_gguf(kvs, tensors, version=3, align=32):
    """kvs: [(key, type, value)]; tensors: [(name, [ne...], type, bytes)]."""
    out = bytearray(b"GGUF")
    out += struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += enc_value(STR, k) + struct.pack("<I", t) + enc_value(t, v)
    off = 0
    offs = []
    for name, ne, typ, data in tensors:
        offs.append(off)
        off += (len(data) + align - 1) // align * align
    for (name, ne, typ, data), o in zip(tensors, offs):
        out += enc_value(STR, name) + struct.pack("<I", len(ne))
        out += b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", typ, o)
    out += b"\0" * (-len(out) % align)
    for (name, ne, typ, data), o in zip(tensors, offs):
        out += data + b"\0" * (-len(data) % align)
    return bytes(out)


def f32s(rng, n, scale=0.5):
    return struct.pack("<%df" % n, *[rng.uniform(-scale, scale) for _ in range(n)])


def tiny_tensors(rng, n_vocab, d=8, n_head=2, n_head_kv=1, ff=16, n_layer=1,
                 tied=True):
    hd = d // n_head
    ts = [("token_embd.weight", [d, n_vocab], 0, f32s(rng, d * n_vocab)),
          ("output_norm.weight", [d], 0, struct.pack("<%df" % d, *[1.0] * d))]
    if not tied:
        ts.append(("output.weight", [d, n_vocab], 0, f32s(rng, d * n_vocab)))
    for l in range(n_layer):
        p = "blk.%d." % l
        ts += [(p + "attn_norm.weight", [d], 0, struct.pack("<%df" % d, *[1.0] * d)),
               (p + "attn_q.weight", [d, n_head * hd], 0, f32s(rng, d * n_head * hd)),
               (p + "attn_k.weight", [d, n_head_kv * hd], 0, f32s(rng, d * n_head_kv * hd)),
               (p + "attn_v.weight", [d, n_head_kv * hd], 0, f32s(rng, d * n_head_kv * hd)),
               (p + "attn_output.weight", [n_head * hd, d], 0, f32s(rng, d * n_head * hd)),
               (p + "ffn_norm.weight", [d], 0, struct.pack("<%df" % d, *[1.0] * d)),
               (p + "ffn_gate.weight", [d, ff], 0, f32s(rng, d * ff)),
               (p + "ffn_up.weight", [d, ff], 0, f32s(rng, d * ff)),
               (p + "ffn_down.weight", [ff, d], 0, f32s(rng, d * ff))]
    return ts


def quant_rows(rng, typ, ne0, rows):
    """Rows of random quantized blocks with sane fp16 scales (the fuzzer
    mutates them into NaN/inf): Q4_1 (3), Q8_0 (8), Q4_K (12)."""
    half = lambda x: struct.pack("<e", x)
    out = bytearray()
    for _ in range(rows):
        if typ == 3:
            for _ in range(ne0 // 32):
                out += half(0.01) + half(-0.05) + bytes(rng.randrange(256) for _ in range(16))
        elif typ == 8:
            for _ in range(ne0 // 32):
                out += half(0.01) + bytes(rng.randrange(256) for _ in range(32))
        elif typ == 12:
            for _ in range(ne0 // 256):
                out += half(0.01) + half(0.005) + bytes(rng.randrange(256) for _ in range(12 + 128))
    return bytes(out)


def quant_tensors(rng, n_vocab, d=32, n_head=2, n_head_kv=1, ff=256):
    """One layer of quantized weights: Q8_0 where ne0 = 32, Q4_K for
    ffn_down (ne0 = 256), Q4_1 output."""
    hd = d // n_head
    ones = struct.pack("<%df" % d, *[1.0] * d)
    return [("token_embd.weight", [d, n_vocab], 8, quant_rows(rng, 8, d, n_vocab)),
            ("output_norm.weight", [d], 0, ones),
            ("output.weight", [d, n_vocab], 3, quant_rows(rng, 3, d, n_vocab)),
            ("blk.0.attn_norm.weight", [d], 0, ones),
            ("blk.0.attn_q.weight", [d, n_head * hd], 8, quant_rows(rng, 8, d, n_head * hd)),
            ("blk.0.attn_k.weight", [d, n_head_kv * hd], 8, quant_rows(rng, 8, d, n_head_kv * hd)),
            ("blk.0.attn_v.weight", [d, n_head_kv * hd], 8, quant_rows(rng, 8, d, n_head_kv * hd)),
            ("blk.0.attn_output.weight", [n_head * hd, d], 8, quant_rows(rng, 8, n_head * hd, d)),
            ("blk.0.ffn_norm.weight", [d], 0, ones),
            ("blk.0.ffn_gate.weight", [d, ff], 8, quant_rows(rng, 8, d, ff)),
            ("blk.0.ffn_up.weight", [d, ff], 8, quant_rows(rng, 8, d, ff)),
            ("blk.0.ffn_down.weight", [ff, d], 12, quant_rows(rng, 12, ff, d))]


def llama_hparams(d=8, n_head=2, n_head_kv=1, ff=16, n_layer=1, ctx=64):
    return [("general.architecture", STR, "llama"),
            ("general.name", STR, "fuzz-tiny"),
            ("llama.embedding_length", U32, d),
            ("llama.block_count", U32, n_layer),
            ("llama.attention.head_count", U32, n_head),
            ("llama.attention.head_count_kv", U32, n_head_kv),
            ("llama.feed_forward_length", U32, ff),
            ("llama.context_length", U32, ctx),
            ("llama.attention.layer_norm_rms_epsilon", F32, 1e-5),
            ("llama.rope.freq_base", F32, 10000.0)]


def gpt2_bytes():
    """GPT-2's byte -> printable code point map, as strings."""
    keep = list(range(0x21, 0x7F)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    m, n = {}, 0
    for b in range(256):
        if b in keep:
            m[b] = chr(b)
        else:
            m[b] = chr(256 + n)
            n += 1
    return m


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + "
          "'\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if "
          "add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def bpe_vocab(pre="smollm"):
    bm = gpt2_bytes()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    toks = specials + [bm[b] for b in range(256)]
    merges = []
    for a, b in [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("i", "n"), ("Ġ", "a"),
                 ("e", "r"), ("o", "n"), ("Ġ", "c"), ("a", "t"), ("1", "2")]:
        merges.append(a + " " + b)
        if a + b not in toks:
            toks.append(a + b)
    types = [3] * len(specials) + [1] * (len(toks) - len(specials))
    return [("tokenizer.ggml.model", STR, "gpt2"),
            ("tokenizer.ggml.pre", STR, pre),
            ("tokenizer.ggml.tokens", ARR, (STR, toks)),
            ("tokenizer.ggml.token_type", ARR, (I32, types)),
            ("tokenizer.ggml.merges", ARR, (STR, merges)),
            ("tokenizer.ggml.bos_token_id", U32, 1),
            ("tokenizer.ggml.eos_token_id", U32, 2),
            ("tokenizer.ggml.add_bos_token", BOOL, False),
            ("tokenizer.chat_template", STR, CHATML)], len(toks)


def spm_vocab():
    toks = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    words = ["▁", "▁t", "he", "▁the", "▁a", "in", "▁in", "er", "on", "at",
             "<start_of_turn>", "<end_of_turn>"]
    for w in words:
        toks.append(w)
        types.append(3 if w.startswith("<") else 1)
    scores = [0.0] * 259 + [-float(i) for i in range(len(words))]
    return [("tokenizer.ggml.model", STR, "llama"),
            ("tokenizer.ggml.tokens", ARR, (STR, toks)),
            ("tokenizer.ggml.scores", ARR, (F32, scores)),
            ("tokenizer.ggml.token_type", ARR, (I32, types)),
            ("tokenizer.ggml.bos_token_id", U32, 1),
            ("tokenizer.ggml.eos_token_id", U32, 2),
            ("tokenizer.ggml.add_bos_token", BOOL, True),
            ("tokenizer.ggml.add_space_prefix", BOOL, False)], len(toks)


def cut_tokenizer(kvs, n_tok, n_merges):
    """Real metadata with the tokenizer arrays cut to their first entries
    (token ids kept in range) and size-implying keys dropped."""
    out = []
    for k, t, v in kvs:
        if k.endswith(".vocab_size"):
            continue
        if t == ARR and k in ("tokenizer.ggml.tokens", "tokenizer.ggml.scores",
                              "tokenizer.ggml.token_type"):
            v = (v[0], v[1][:n_tok])
        elif t == ARR and k == "tokenizer.ggml.merges":
            v = (v[0], v[1][:n_merges])
        elif k.startswith("tokenizer.ggml.") and k.endswith("_id") and t in (U32, I32):
            v = min(v, n_tok - 1)
        out.append((k, t, v))
    return out


def save(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def main():
    rng = random.Random(8)
    models = {}

    # Tiny loadable models.
    kv, nv = bpe_vocab()
    models["tiny-bpe.gguf"] = write_gguf(llama_hparams() + kv,
                                         tiny_tensors(rng, nv, tied=False))
    kv, nv = spm_vocab()
    models["tiny-spm.gguf"] = write_gguf(
        llama_hparams(d=16, n_head=4, n_head_kv=2, n_layer=2) + kv,
        tiny_tensors(rng, nv, d=16, n_head=4, n_head_kv=2, n_layer=2))
    kv, nv = bpe_vocab("llama-bpe")
    models["tiny-llama3-v2.gguf"] = write_gguf(
        llama_hparams() + kv + [("general.alignment", U32, 64)],
        tiny_tensors(rng, nv), version=2, align=64)

    kv, nv = bpe_vocab()
    models["tiny-quant.gguf"] = write_gguf(llama_hparams(d=32, ff=256) + kv,
                                           quant_tensors(random.Random(9), nv))

    if os.path.exists(SMOL):
        ver, kvs, _ = read_gguf(SMOL)
        real = cut_tokenizer(kvs, 400, 200)
        # real tokenizer + template, tiny llama weights: loads fully
        hp = {k for k, _, _ in llama_hparams()}
        mixed = [x for x in real if not x[0].startswith("llama.") and x[0] not in hp]
        models["smollm2-cut.gguf"] = write_gguf(llama_hparams() + mixed,
                                                tiny_tensors(rng, 400))
        # real metadata, no tensors (fails on hyper-parameters / tensors)
        models["smollm2-meta.gguf"] = write_gguf(real, [])
        with open(SMOL, "rb") as f:
            head = f.read(4096)
        models["smollm2-head4k.gguf"] = head
    if os.path.exists(GEMMA):
        ver, kvs, _ = read_gguf(GEMMA)
        models["gemma3-meta.gguf"] = write_gguf(cut_tokenizer(kvs, 600, 0), [])

    for name, data in models.items():
        save("gguf", name, data)
        save("model", name, data)

    # Tokenizer: flag byte (bit 0: Gemma, bit 1: add_special, bit 2:
    # parse_special) + text.
    texts = [b"Hello world! The capital of France is Paris.",
             b"  leading spaces\tand\ttabs\r\n\nnew lines 12345 67.89",
             "caf\u00e9 na\u00efve \u65e5\u672c\u8a9e \U0001F600 \u0416\u0416".encode(),
             b"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
             b"<start_of_turn>user\nhi<end_of_turn>\n<eos>",
             b"I'm can't we'll they've 'S 'LL",
             b"\xff\xfe\xc0\x80 broken \xe2\x82 utf8 \xf4\x90\x80\x80",
             b"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
    for i, t in enumerate(texts):
        for flags in (0, 1, 6, 7):
            save("tokenizer", "text%d-f%d" % (i, flags), bytes([flags]) + t)

    # Chat: flag byte (bit 0: add_assistant, bit 1: the model's own template)
    # + template \0 role \0 content \0 role \0 content ...
    conv = [b"system", b"Be brief.", b"user", b"Hi", b"assistant", b"Hello!",
            b"user", b"What is 2+2?"]
    tmpls = {
        "chatml": CHATML.encode(),
        "loop-if": b"{% for m in messages %}{% if m['role'] == 'user' %}U: "
                   b"{{ m['content'] | trim }}{% elif loop.first %}S: {{ m.content }}"
                   b"{% else %}A: {{ m.content }}{% endif %}\n{% endfor %}"
                   b"{% if add_generation_prompt %}A:{% endif %}",
        "set-ns": b"{% set ns = namespace(n=0) %}{% for m in messages %}"
                  b"{% set ns.n = ns.n + 1 %}{{ ns.n }}{{ m.role | upper }}"
                  b"{{ '\\n' }}{% endfor %}{{ bos_token }}",
        "raise": b"{% if messages[0]['role'] != 'system' %}{{ raise_exception("
                 b"'no system') }}{% endif %}{{ messages | length }}",
        "name": b"llama3",
        "gemma": b"{{ bos_token }}{% for message in messages %}<start_of_turn>"
                 b"{{ message['role'] }}\n{{ message['content'] | trim }}"
                 b"<end_of_turn>\n{% endfor %}",
        "llama2": b"{% for message in messages %}{% if message['role'] == 'user' %}"
                  b"{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
                  b"{% elif message['role'] == 'assistant' %}{{ ' ' + message['content']"
                  b" + eos_token }}{% endif %}{% endfor %}",
    }
    for name, t in tmpls.items():
        save("chat", name, bytes([1]) + t + b"\0" + b"\0".join(conv))
    save("chat", "model-template", bytes([3]) + b"\0" + b"\0".join(conv[2:]))

    # --kl files for the fuzz target's fixed setting (tests/fuzz/fuzz_kl.c):
    # byte b: the run has 1 + b % 3 windows; then the file; vocab 8, context 4.
    nv, n_ctx = 8, 4
    per = n_ctx - 1 - n_ctx // 2
    for n_win in (1, 2):
        body = b"CODIKL01" + struct.pack("<IIII", 1, nv, n_ctx, n_win)
        body += struct.pack("<%di" % (n_win * n_ctx), *[(i * 3) % nv for i in range(n_win * n_ctx)])
        for _ in range(n_win * per):
            body += struct.pack("<ff", -20.0, 20.0 / 65535) + struct.pack(
                "<%dH" % nv, *[rng.randrange(65536) for _ in range(nv)])
        save("kl", "win%d" % n_win, bytes([n_win - 1]) + body)

    # safetensors (codi convert): u64 header length, JSON header, data.
    import json
    tensors = [("model.embed_tokens.weight", "BF16", [4, 8]),
               ("model.norm.weight", "F32", [8]),
               ("lm_head.weight", "F16", [4, 8])]
    hdr, data = {"__metadata__": {"format": "pt"}}, b""
    for name, dt, shape in tensors:
        n = 1
        for x in shape:
            n *= x
        esz = 4 if dt == "F32" else 2
        hdr[name] = {"dtype": dt, "shape": shape,
                     "data_offsets": [len(data), len(data) + n * esz]}
        data += bytes(rng.randrange(256) for _ in range(n * esz))
    h = json.dumps(hdr, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    save("safetensors", "three-dtypes", struct.pack("<Q", len(h)) + h + data)

    # Hyper-parameters: raw codi_hparams fields (see fuzz_hparams.c).
    ok = struct.pack("<10i3f", 49152, 576, 30, 9, 3, 64, 1536, 8192, 64, 0,
                     10000.0, 1.0, 1e-5)
    save("hparams", "smollm2", ok)
    save("hparams", "tiny", struct.pack("<10i3f", 300, 8, 1, 2, 1, 4, 16, 64, 4, 1,
                                        10000.0, 1.0, 1e-5))


if __name__ == "__main__":
    main()
