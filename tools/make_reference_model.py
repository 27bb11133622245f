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
        if "greedy_prompts" in spec and (only is None or "greedy" in only):
            make_greedy(tag, spec)
            make_greedy(tag, spec, flash=True)
        if spec["ppl"] and (only is None or "ppl" in only):
            make_ppl(tag, spec)


if __name__ == "__main__":
    main()
