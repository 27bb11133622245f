#!/usr/bin/env python3
"""make_reference_model.py - llama.cpp reference data for one more model.

The sibling of make_reference.py (which makes the SmolLM2 fixtures), for the
other models codi runs: Gemma 3 270M and the random-weight Qwen2/Qwen3 files
of tools/make_synthetic_models.py. Same peer (llama-cpp-python 0.3.36, CPU,
n_threads=2, flash attention off, logits_all=True) and the same file formats
as make_reference.py describes, with <tag> in the names:

    logits_<tag>.bin          CODIREF1 top-k summaries of every position
    greedy_<tag>.txt          P/G lines of greedy generations (--greedy)
    ppl_<tag>.txt             "ctx C chunks N ppl V" lines (--ppl)
    noise_floor_<tag>.txt     llama.cpp flash-attention ON vs this fixture
                              (agree / decisive_agree / kl_mean lines, as
                              tools/peer_noise_floor.py writes for SmolLM2)

Run from the repo root:

    bench/.peer/venv/bin/python tools/make_reference_model.py gemma3
    bench/.peer/venv/bin/python tools/make_reference_model.py qwen2
    bench/.peer/venv/bin/python tools/make_reference_model.py qwen3

gemma3: models/gemma-3-270m-q4_k_m.gguf (tools/fetch_models.sh); prompts are
make_reference.py's texts with Gemma's chat turns instead of ChatML, plus one
prompt of ~700 tokens so positions beyond the 512-token sliding window of the
local layers are checked; BOS is added (the model's add_bos_token). ppl for
n_ctx=128 x 4 windows and n_ctx=1024 x 2 windows of tests/data/eval.txt.

qwen2 / qwen3: tests/fixtures/synthetic/<tag>-tiny.gguf; prompts are fixed
pseudo-random token ids (seeded), evaluated as ids (no tokenizer involved).

mixtral / qwen2moe / qwen3moe / olmoe: the tiny MoE files of
tools/make_synthetic_models.py (routing semantics in its docstring), as
qwen2/qwen3 (4 seeded random prompts of 24, 60, 150, 256 tokens, 490
positions), test_moe.c compares codi against them:

    bench/.peer/venv/bin/python tools/make_synthetic_models.py mixtral qwen2moe qwen3moe olmoe
    bench/.peer/venv/bin/python tools/make_reference_model.py mixtral qwen2moe qwen3moe olmoe

For these the script also runs np_forward, an independent float64 numpy
forward of the file (llama.cpp's routing; matmul inputs rounded to Q8_0 /
F16 as llama.cpp's CPU backend does) and deliberately wrong variants of it
(WRONG: other expert, renormalising or not, shared-expert gate missing or
without sigmoid, rope style, Q/K norm per head, top-1), and appends their
mean KL against the fixture to noise_floor_<tag>.txt as '#' lines. It
fails when the numpy forward is above KL 0.005 (the notes would not
describe what llama.cpp computes) or a wrong variant below 0.05 (the
fixture would not catch that mistake; test_moe.c's bound is 0.01).
It also fails on non-finite llama.cpp logits.
"""

import os
import struct
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import make_reference as mr  # noqa: E402  (prompt texts, lse, ppl procedure)

ROOT = mr.ROOT
OUTDIR = os.path.join(ROOT, "tests", "fixtures", "ref")
N_THREADS = 2
TOPK = 40
N_GEN = 32
GAP = 0.5


def gemma_turn(user, system=None):
    # Gemma has no system role: its template puts the system text in front
    # of the first user turn.
    text = user if system is None else system + "\n\n" + user
    return "<start_of_turn>user\n%s<end_of_turn>\n<start_of_turn>model\n" % text


MODELS = {
    "gemma3": dict(
        path=os.path.join(ROOT, "models", "gemma-3-270m-q4_k_m.gguf"),
        n_ctx=1024,
        logit_prompts=[
            mr.LOGIT_PROMPTS[0],
            gemma_turn("What is the capital of France? Answer in one sentence.",
                       system="You are a helpful assistant."),
            mr.LOGIT_PROMPTS[2],
            mr.LOGIT_PROMPTS[3],
            mr.LOGIT_PROMPTS[4],
            # ~700 tokens: crosses the 512-token sliding window
            " ".join([mr.LONG_PARAGRAPH] * 3),
        ],
        greedy_prompts=[
            gemma_turn("What is the capital of France?"),
            gemma_turn("Write a haiku about the sea.", system="You are a helpful assistant."),
            gemma_turn("List three primary colors."),
            gemma_turn("Translate 'good morning' into Spanish."),
            gemma_turn("What is 12 times 7?"),
            "Once upon a time, in a small village by the sea,",
            "The following Python function computes the factorial of a number:\n\n"
            "def factorial(n):",
            "The capital of Germany is",
            "1, 2, 3, 4, 5,",
            "Water boils at a temperature of",
        ],
        # 128 x 4 (as for SmolLM2) is recorded but too few tokens for this
        # model: llama.cpp's own flash-attention path is 0.8% off there
        ppl=((128, 4), (1024, 1), (1024, 2)),
    ),
    "qwen2": dict(path=os.path.join(ROOT, "tests", "fixtures", "synthetic", "qwen2-tiny.gguf"),
                  n_ctx=256, random_prompts=(7, [24, 60, 150, 256]), ppl=()),
    "qwen3": dict(path=os.path.join(ROOT, "tests", "fixtures", "synthetic", "qwen3-tiny.gguf"),
                  n_ctx=256, random_prompts=(8, [24, 60, 150, 256]), ppl=()),
}
# the tiny MoE files (tools/make_synthetic_models.py): same procedure as
# qwen2/qwen3, plus the numpy cross-check of np_forward (moe=True)
for _i, _tag in enumerate(("mixtral", "qwen2moe", "qwen3moe", "olmoe")):
    MODELS[_tag] = dict(path=os.path.join(ROOT, "tests", "fixtures", "synthetic", "%s-tiny.gguf" % _tag),
                        n_ctx=256, random_prompts=(21 + _i, [24, 60, 150, 256]), ppl=(), moe=True)


# ---------------------------------------------------------------------------
# Independent numpy forward of the tiny MoE files (weights dequantized from
# the file with gguf-py, everything in float64). It checks that the routing
# notes in tools/make_synthetic_models.py describe what llama.cpp computes,
# and that the fixture discriminates: deliberately wrong variants (see
# WRONG) must land far above test_moe.c's KL bound of 0.01.

WRONG = {
    "mixtral": ["expert_off_by_one", "no_renorm", "raw_logit_weights", "top1", "neox_rope"],
    "qwen2moe": ["expert_off_by_one", "renorm", "shexp_no_gate", "shexp_gate_no_sigmoid", "no_shexp"],
    "qwen3moe": ["expert_off_by_one", "no_renorm", "qk_norm_off", "top1"],
    "olmoe": ["expert_off_by_one", "renorm", "qk_norm_per_head_first", "norm_rope"],
}


def np_load(path):
    import gguf
    r = gguf.GGUFReader(path)
    arch = bytes(r.fields["general.architecture"].parts[-1]).decode()

    def kv(key, default=None):
        f = r.fields.get("%s.%s" % (arch, key))
        return default if f is None else f.parts[-1][0].item()
    t = {}
    types = {}
    for ti in r.tensors:
        types[ti.name] = ti.tensor_type
        shape = tuple(int(x) for x in reversed(ti.shape.tolist()))  # numpy order
        a = gguf.quants.dequantize(ti.data, ti.tensor_type).astype(np.float64)
        t[ti.name] = a.reshape(shape)
    hp = dict(arch=arch, n_layer=kv("block_count"), n_head=kv("attention.head_count"),
              n_head_kv=kv("attention.head_count_kv"), eps=kv("attention.layer_norm_rms_epsilon"),
              base=kv("rope.freq_base", 10000.0), n_used=kv("expert_used_count"), types=types)
    return hp, t


def q8_act(x):
    """ggml's Q8_0 quantization of an activation row (what llama.cpp's CPU
    matmul does to the input of a Q8_0/Q4_0 weight), dequantized again."""
    sh = x.shape
    b = x.reshape(-1, 32)
    d = np.abs(b).max(-1, keepdims=True) / 127.0
    dd = d.astype(np.float16).astype(np.float64)
    q = np.round(np.divide(b, d, out=np.zeros_like(b), where=d > 0))
    return (q * dd).reshape(sh)


def np_forward(hp, t, toks, variant=None, qact=False):
    """variant: None (llama.cpp's semantics) or one of WRONG[tag]; qact:
    round matmul inputs as llama.cpp's CPU backend does (Q8_0 for Q8_0/Q4_0
    weights, F16 for F16 weights)."""
    import gguf
    arch, v = hp["arch"], variant or ""

    def mm(x, name, e=None):
        w = t[name] if e is None else t[name][e]
        ty = hp["types"][name]
        if qact and ty in (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0):
            x = q8_act(x)
        elif qact and ty == gguf.GGMLQuantizationType.F16:
            x = x.astype(np.float16).astype(np.float64)
        return x @ w.T
    eps, nh, nkv = hp["eps"], hp["n_head"], hp["n_head_kv"]
    n_embd = t["token_embd.weight"].shape[1]
    hd = t["blk.0.attn_q.weight"].shape[0] // nh
    T = len(toks)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w

    neox = arch != "llama"
    if v == "neox_rope":
        neox = True
    if v == "norm_rope":
        neox = False
    inv = hp["base"] ** (-np.arange(0, hd, 2) / hd)
    ang = np.arange(T)[:, None] * inv[None, :]  # [T, hd/2]
    cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]

    def rope(x):  # [T, H, hd]
        if neox:
            a, b = x[..., : hd // 2], x[..., hd // 2:]
            return np.concatenate([a * cos - b * sin, a * sin + b * cos], -1)
        a, b = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
        return out

    def silu(x):
        return x / (1.0 + np.exp(-x))

    h = t["token_embd.weight"][toks]
    mask = np.triu(np.full((T, T), -np.inf), 1)
    norm_w = arch in ("llama", "qwen3moe")
    if v == "no_renorm":
        norm_w = False
    if v == "renorm":
        norm_w = True
    k_used = 1 if v == "top1" else hp["n_used"]
    for l in range(hp["n_layer"]):
        p = "blk.%d." % l
        x = rms(h, t[p + "attn_norm.weight"])
        q, k, val = mm(x, p + "attn_q.weight"), mm(x, p + "attn_k.weight"), mm(x, p + "attn_v.weight")
        if p + "attn_q.bias" in t:
            q, k, val = q + t[p + "attn_q.bias"], k + t[p + "attn_k.bias"], val + t[p + "attn_v.bias"]
        if arch == "olmoe" and v != "qk_norm_per_head_first":
            q, k = rms(q, t[p + "attn_q_norm.weight"]), rms(k, t[p + "attn_k_norm.weight"])
        q, k, val = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), val.reshape(T, nkv, hd)
        if arch == "olmoe" and v == "qk_norm_per_head_first":
            q = rms(q, t[p + "attn_q_norm.weight"].reshape(nh, hd))
            k = rms(k, t[p + "attn_k_norm.weight"].reshape(nkv, hd))
        if arch == "qwen3moe" and v != "qk_norm_off":
            q, k = rms(q, t[p + "attn_q_norm.weight"]), rms(k, t[p + "attn_k_norm.weight"])
        q, k = rope(q), rope(k)
        att = np.zeros((T, nh, hd))
        for hh in range(nh):
            kh = hh // (nh // nkv)
            s = q[:, hh] @ k[:, kh].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            att[:, hh] = s @ val[:, kh]
        h = h + mm(att.reshape(T, nh * hd), p + "attn_output.weight")
        x = rms(h, t[p + "ffn_norm.weight"])
        logits = x @ t[p + "ffn_gate_inp.weight"].T  # [T, n_expert]
        pr = np.exp(logits - logits.max(-1, keepdims=True))
        pr /= pr.sum(-1, keepdims=True)
        if v == "raw_logit_weights":  # weights = raw router logits, no softmax
            pr = logits
        sel = np.argsort(-pr, axis=-1, kind="stable")[:, :k_used]
        wts = np.take_along_axis(pr, sel, -1)
        if norm_w:
            wts = wts / np.maximum(wts.sum(-1, keepdims=True), 6.103515625e-5)
        moe = np.zeros_like(h)
        for i in range(T):
            for j in range(k_used):
                e = sel[i, j]
                if v == "expert_off_by_one":
                    e = (e + 1) % pr.shape[-1]
                a = silu(mm(x[i], p + "ffn_gate_exps.weight", e)) * mm(x[i], p + "ffn_up_exps.weight", e)
                moe[i] += wts[i, j] * mm(a, p + "ffn_down_exps.weight", e)
        if p + "ffn_gate_inp_shexp.weight" in t and v != "no_shexp":
            sh = mm(silu(mm(x, p + "ffn_gate_shexp.weight")) * mm(x, p + "ffn_up_shexp.weight"),
                    p + "ffn_down_shexp.weight")
            gl = x @ t[p + "ffn_gate_inp_shexp.weight"].reshape(-1)  # [T]
            gate = 1.0 / (1.0 + np.exp(-gl))
            if v == "shexp_no_gate":
                gate = np.ones_like(gl)
            if v == "shexp_gate_no_sigmoid":
                gate = gl
            moe = moe + gate[:, None] * sh
        h = h + moe
    h = rms(h, t["output_norm.weight"])
    return mm(h, "output.weight")


def kl_rows(ref, other):
    """mean KL(softmax(ref) || softmax(other)) over rows, full vocabulary."""
    a = ref - ref.max(-1, keepdims=True)
    a = a - np.log(np.exp(a).sum(-1, keepdims=True))
    b = other - other.max(-1, keepdims=True)
    b = b - np.log(np.exp(b).sum(-1, keepdims=True))
    return float((np.exp(a) * (a - b)).sum(-1).mean())


def moe_check(tag, spec, kept):
    """numpy forward (llama.cpp's semantics, and the WRONG variants) against
    the fixture logits; results appended to noise_floor_<tag>.txt as '#'
    lines. Exits non-zero when the numpy forward does not reproduce
    llama.cpp or a wrong variant comes within 5x of test_moe.c's KL bound."""
    hp, t = np_load(spec["path"])
    ref_top1 = np.array([ids[0] for _toks, r in kept for _lse, ids, _vals in r])
    lines = []

    def score(variant):
        lg = np.concatenate([np_forward(hp, t, toks, variant, qact=True) for toks, _ in kept])
        return topk_kl(kept, lg), float(np.mean(ref_top1 == lg.argmax(-1)))
    kl0, agree0 = score(None)
    lines.append("# numpy forward (tools/make_reference_model.py np_forward, llama.cpp's routing, Q8_0/F16 "
                 "activation rounding) vs this fixture: kl_mean %.6f, top-1 agreement %.2f%%" % (kl0, 100 * agree0))
    ok = kl0 <= 0.005
    for wv in WRONG[tag]:
        kl, agree = score(wv)
        lines.append("# wrong variant %-26s kl_mean %.4f, top-1 agreement %.2f%%" % (wv, kl, 100 * agree))
        ok = ok and kl >= 0.05
    nf = os.path.join(OUTDIR, "noise_floor_%s.txt" % tag)
    with open(nf, "a") as f:
        for line in lines:
            f.write(line + "\n")
    for line in lines:
        print("%s %s" % (tag, line[2:]))
    if not ok:
        sys.exit("%s: numpy cross-check failed (see above)" % tag)


def topk_kl(kept, lg):
    """mean KL(fixture || lg) over the fixture's top-k plus one bucket for
    the rest, as tests/ref_compare.h computes it."""
    kls, row = [], 0
    for toks, ref in kept:
        for lse_r, ids, vals in ref:
            x = lg[row].astype(np.float64)
            row += 1
            mx = x.max()
            lse = mx + np.log(np.exp(x - mx).sum())
            lr = vals.astype(np.float64) - lse_r
            lc = x[ids] - lse
            pr = np.exp(lr)
            kl = float((pr * (lr - lc)).sum())
            rr, rc = 1 - pr.sum(), 1 - np.exp(lc).sum()
            if rr > 1e-9 and rc > 1e-9:
                kl += rr * np.log(rr / rc)
            kls.append(max(kl, 0.0))
    return float(np.mean(kls))


def load(path, n_ctx, flash=False):
    return Llama(model_path=path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                 n_threads=N_THREADS, n_threads_batch=N_THREADS, logits_all=True,
                 flash_attn=flash, seed=0, verbose=False)


def add_bos(llm):
    return bool(llm._model.add_bos_token())


def prompts_tokens(llm, spec):
    if "random_prompts" in spec:
        seed, lens = spec["random_prompts"]
        rng = np.random.RandomState(seed)
        n_vocab = llm.n_vocab()
        return [[int(t) for t in rng.randint(0, n_vocab, size=n)] for n in lens], None
    texts = spec["logit_prompts"]
    return [llm.tokenize(t.encode("utf-8"), add_bos=add_bos(llm), special=True) for t in texts], texts


def eval_logits(llm, tokens):
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens), :], dtype=np.float32, copy=True)


def header(f, tag, spec, what):
    f.write("# %s\n" % what)
    f.write("# generated by tools/make_reference_model.py %s with llama-cpp-python %s "
            "(llama.cpp CPU, n_threads=%d, flash_attn off)\n" % (tag, llama_cpp.__version__, N_THREADS))
    f.write("# model: %s\n" % os.path.relpath(spec["path"], ROOT))


def make_logits(tag, spec):
    llm = load(spec["path"], spec["n_ctx"])
    toks_list, texts = prompts_tokens(llm, spec)
    out = bytearray(b"CODIREF1")
    out += struct.pack("<II", 1, len(toks_list))
    kept = []
    for toks in toks_list:
        assert len(toks) <= spec["n_ctx"]
        logits = eval_logits(llm, toks)
        if not np.isfinite(logits).all():
            sys.exit("%s: llama.cpp gave non-finite logits" % tag)
        lse = mr.lse_rows(logits)
        out += struct.pack("<I", len(toks))
        out += struct.pack("<%di" % len(toks), *toks)
        out += struct.pack("<I", TOPK)
        ref = []
        for p in range(len(toks)):
            row = logits[p]
            order = np.argsort(-row, kind="stable")[:TOPK]
            out += struct.pack("<f", float(lse[p]))
            for tid in order:
                out += struct.pack("<if", int(tid), float(row[tid]))
            ref.append((float(lse[p]), order, row[order]))
        kept.append((toks, ref))
        print("%s logits: %3d tokens, top1 at last pos = %d" % (tag, len(toks), int(np.argmax(logits[-1]))))
    with open(os.path.join(OUTDIR, "logits_%s.bin" % tag), "wb") as f:
        f.write(out)
    if texts is not None:
        with open(os.path.join(OUTDIR, "logits_%s_prompts.txt" % tag), "w") as f:
            header(f, tag, spec, "texts of the prompts in logits_%s.bin, in order: T <hex of UTF-8 bytes>" % tag)
            f.write("# tokenized with special tokens parsed, BOS as the model asks\n")
            for t in texts:
                f.write(mr.hexline(t) + "\n")
    del llm
    return kept


def noise_floor(tag, spec, kept):
    """llama.cpp's flash-attention path against the non-flash fixture."""
    llm = load(spec["path"], spec["n_ctx"], flash=True)
    agree = tot = dagree = dtot = 0
    kls = []
    for toks, ref in kept:
        lg_all = eval_logits(llm, toks).astype(np.float64)
        for p, (lse_r, ids, vals) in enumerate(ref):
            lg = lg_all[p]
            mx = lg.max()
            lse = mx + np.log(np.exp(lg - mx).sum())
            lr = vals.astype(np.float64) - lse_r
            lc = lg[ids] - lse
            pr = np.exp(lr)
            kl = float((pr * (lr - lc)).sum())
            rr, rc = 1 - pr.sum(), 1 - np.exp(lc).sum()
            if rr > 1e-9 and rc > 1e-9:
                kl += rr * np.log(rr / rc)
            kls.append(max(kl, 0.0))
            ok = int(np.argmax(lg) == ids[0])
            agree += ok
            tot += 1
            if vals[0] - vals[1] >= GAP:
                dagree += ok
                dtot += 1
    del llm
    with open(os.path.join(OUTDIR, "noise_floor_%s.txt" % tag), "w") as f:
        f.write("# llama.cpp flash-attention ON vs the flash-attention-OFF fixture logits_%s.bin\n" % tag)
        f.write("# llama-cpp-python %s, n_threads=%d, %d positions, decisive = top-2 gap >= %.1f\n"
                % (llama_cpp.__version__, N_THREADS, tot, GAP))
        f.write("agree %.4f\n" % (100.0 * agree / tot))
        f.write("decisive_agree %.4f\n" % (100.0 * dagree / max(dtot, 1)))
        f.write("kl_mean %.6f\n" % float(np.mean(kls)))
    print("%s noise floor: agree %.2f%% decisive %.2f%% kl %.6f" %
          (tag, 100.0 * agree / tot, 100.0 * dagree / max(dtot, 1), float(np.mean(kls))))


def make_greedy(tag, spec, flash=False):
    """Greedy references; with flash=True instead count how many prompts
    llama.cpp's flash-attention path generates identically (the peer's own
    noise floor for this check), appended to noise_floor_<tag>.txt."""
    llm = load(spec["path"], spec["n_ctx"], flash=flash)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    eog = [i for i in range(llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    recs = []
    for text in spec["greedy_prompts"]:
        toks = llm.tokenize(text.encode("utf-8"), add_bos=add_bos(llm), special=True)
        llm.reset()
        llm.eval(toks)
        gen, gaps = [], []
        for _ in range(N_GEN):
            row = np.asarray(llm.scores[llm.n_tokens - 1, :], dtype=np.float32)
            nxt = int(np.argmax(row))
            top2 = np.partition(row, -2)[-2:]
            gaps.append(float(top2[1] - top2[0]))
            gen.append(nxt)
            if nxt in eog:
                break
            llm.eval([nxt])
        gi = int(np.argmin(gaps))
        recs.append((toks, gen, gaps[gi], gi, gaps))
        if flash:
            continue
        print("%s greedy: %3d prompt tokens -> %r" % (tag, len(toks), llm.detokenize(gen).decode("utf-8", "replace")))
    if flash:
        ref = read_greedy(os.path.join(OUTDIR, "greedy_%s.txt" % tag))
        same = sum(1 for (t, g, _a, _b, _c), (rt, rg) in zip(recs, ref) if t == rt and g == rg)
        nf = os.path.join(OUTDIR, "noise_floor_%s.txt" % tag)
        with open(nf) as f:
            keep = [l for l in f if not l.startswith("greedy_same ")]
        with open(nf, "w") as f:
            f.writelines(keep)
            f.write("greedy_same %d of %d\n" % (same, len(ref)))
        print("%s greedy noise floor: flash attention ON generates %d of %d prompts identically"
              % (tag, same, len(ref)))
        del llm
        return
    with open(os.path.join(OUTDIR, "greedy_%s.txt" % tag), "w") as f:
        header(f, tag, spec, "greedy decoding reference: per prompt 'P <prompt ids>' then 'G <generated ids>'")
        f.write("# argmax of f32 logits, up to %d tokens, stops after an EOG token (included)\n" % N_GEN)
        f.write("# '# gaps' lines: llama.cpp's top1-top2 logit gap at every generated step\n")
        for toks, gen, gap, gi, gaps in recs:
            f.write("# min gap %.4f at generated step %d\n" % (gap, gi))
            f.write("# gaps " + " ".join("%.4f" % g for g in gaps) + "\n")
            f.write("P " + " ".join(map(str, toks)) + "\n")
            f.write("G " + " ".join(map(str, gen)) + "\n")
    del llm


def read_greedy(path):
    recs, p = [], None
    with open(path) as f:
        for line in f:
            if line.startswith("P "):
                p = [int(x) for x in line[2:].split()]
            elif line.startswith("G "):
                recs.append((p, [int(x) for x in line[2:].split()]))
    return recs


def make_ppl(tag, spec):
    with open(mr.EVAL_TXT, "r", encoding="utf-8") as f:
        text = f.read()
    mr.MODEL = spec["path"]  # make_reference's ppl procedure, on this model
    lines = []
    for n_ctx, n_chunks in spec["ppl"]:
        ppl, ntok, count = mr.ppl_python(n_ctx, n_chunks, text)
        lines.append("ctx %d chunks %d ppl %.6f" % (n_ctx, n_chunks, ppl))
        print("%s ppl: ctx %d chunks %d ppl %.6f (%d tokens scored of %d)" % (tag, n_ctx, n_chunks, ppl, count, ntok))
    with open(os.path.join(OUTDIR, "ppl_%s.txt" % tag), "w") as f:
        header(f, tag, spec, "perplexity of tests/data/eval.txt, llama-perplexity procedure "
                             "(second half of each n_ctx window scored)")
        for line in lines:
            f.write(line + "\n")


def main():
    args = sys.argv[1:]
    only = None
    if args and args[0].startswith("--only="):
        only = args.pop(0)[len("--only="):].split(",")  # logits,greedy,ppl
    tags = args or ["gemma3", "qwen2", "qwen3"]
    os.makedirs(OUTDIR, exist_ok=True)
    for tag in tags:
        spec = MODELS[tag]
        if not os.path.exists(spec["path"]):
            sys.exit("missing %s (run tools/fetch_models.sh or tools/make_synthetic_models.py)" % spec["path"])
        if only is None or "logits" in only:
            kept = make_logits(tag, spec)
            noise_floor(tag, spec, kept)
            if spec.get("moe"):
                moe_check(tag, spec, kept)
        if "greedy_prompts" in spec and (only is None or "greedy" in only):
            make_greedy(tag, spec)
            make_greedy(tag, spec, flash=True)
        if spec["ppl"] and (only is None or "ppl" in only):
            make_ppl(tag, spec)


if __name__ == "__main__":
    main()
