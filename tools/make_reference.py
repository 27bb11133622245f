#!/usr/bin/env python3
"""make_reference.py - reference data from llama.cpp for codi's end-to-end tests.

Run (from the repo root, after tools/fetch_models.sh and tools/build_peer.sh):

    bench/.peer/venv/bin/python tools/make_reference.py

Peer: llama-cpp-python 0.3.36 (and the llama.cpp it vendors), CPU, n_threads=2,
flash attention off, logits_all=True. Model: models/SmolLM2-135M-Instruct.Q4_1.gguf
(sha256 b179c952..., see models.sha256). Its metadata says add_bos_token=false,
so no BOS is added anywhere below (the code asks the model, it does not assume).

Writes into tests/fixtures/ref/:

logits_smollm2.bin -- full-sequence logits, summarised. Little endian:
    char[8]  magic  "CODIREF1"
    u32      version = 1
    u32      n_prompts
    per prompt:
        u32  n_tokens
        i32  tokens[n_tokens]      (llama.cpp tokenization, special tokens parsed)
        u32  k                     (= 40)
        per position p = 0 .. n_tokens-1 (logits after feeding tokens[0..p]):
            f32  lse               log(sum_v exp(logit_v)) over the whole vocab
                                   (computed in float64 from the f32 logits)
            k x { i32 id, f32 logit }   top-k, sorted by logit descending
                                        (ties: smaller id first)
    The whole prompt is evaluated in one llama_decode batch (n_ctx=512,
    n_batch=512). log-prob of token t at p = logit_t - lse.

logits_smollm2_prompts.txt -- the text of those prompts, one line per prompt
    in the same order: "T <hex of the UTF-8 bytes>" (lines starting with '#'
    are comments), so tokenizer tests can check text -> tokens as well.

greedy_smollm2.txt -- greedy generations. '#' lines are comments/header; then
    per prompt exactly two lines (preceded by a '#' line giving the smallest
    top1-top2 logit gap seen while generating it):
        P <prompt token ids, space separated>
        G <generated token ids, space separated>
    Decoding: prompt evaluated in one batch, then one token per llama_decode;
    next token = argmax of the f32 logits (first index on ties); temperature 0,
    no repeat penalty, no other samplers. 32 tokens are generated unless an
    end-of-generation token (llama_vocab_is_eog: EOS/<|im_end|>, id 2 for this
    model, plus <|endoftext|> if llama.cpp marks it EOG) is produced: then that
    token is the last id on the G line and the line is shorter.

greedy_smollm2_prompts.txt -- the prompt texts, "T <hex>" per prompt in order.

ppl_smollm2.txt -- perplexity of tests/data/eval.txt, lines
        ctx <n_ctx> chunks <n_chunks> ppl <value>
    computed like llama.cpp's llama-perplexity (tools/perplexity/perplexity.cpp,
    perplexity()): tokenize the whole file (add BOS only if the model says so,
    special tokens NOT parsed); split into non-overlapping windows of n_ctx
    tokens; for each window (fresh KV cache) replace the first token with BOS
    if the model adds BOS; evaluate the window; score positions
    first = n_ctx/2 .. n_ctx-2, each predicting the next token, NLL = lse -
    logit[next]; ppl = exp(mean NLL over all scored positions of all windows).
    Done for n_ctx=128 x 4 windows and n_ctx=512 x 2 windows, attention
    without flash attention (plain softmax(QK^T)V, f16 KV cache). If
    bench/.peer/bin/llama-perplexity exists, its "Final estimate" for the same
    settings (-t 2) is recorded in '#' comment lines for comparison, both with
    "-fa off" (matches the Python value to all printed digits) and with its
    default (flash attention auto -> on for CPU, which computes attention in
    reduced precision and gives a ppl about 1-2% different on these short runs).

tests/data/eval.txt is a verbatim copy of /usr/share/common-licenses/GPL-3 from
Debian 12 (the text of the GNU General Public License v3, 29 June 2007; the
FSF permits everyone to copy and distribute verbatim copies of it). It is real
English prose that was not written for this project.
"""

import math
import os
import re
import struct
import subprocess
import sys

import numpy as np
import llama_cpp
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUTDIR = os.path.join(ROOT, "tests", "fixtures", "ref")
EVAL_TXT = os.path.join(ROOT, "tests", "data", "eval.txt")
PEER_PPL = os.path.join(ROOT, "bench", ".peer", "bin", "llama-perplexity")
N_THREADS = 2
TOPK = 40
N_GEN = 32
PEER = "llama-cpp-python %s" % llama_cpp.__version__


def chatml(user, system=None):
    s = ""
    if system is not None:
        s += "<|im_start|>system\n%s<|im_end|>\n" % system
    s += "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n" % user
    return s


LONG_PARAGRAPH = (
    "The lighthouse stood at the end of a narrow spit of rock, and for most of "
    "the year it was the only building anyone could see from the harbour. Its "
    "keeper, a patient woman named Ida, kept a logbook in which she wrote down "
    "the weather every morning at six, the ships that passed before noon, and "
    "any birds that rested on the railing of the lamp room. Over twenty years "
    "the logbook grew into eleven volumes. When the lamp was finally automated, "
    "a historian from the city came to read them and was surprised to find "
    "that they were not dull at all: between the wind speeds and the tide "
    "tables, Ida had recorded storms that flattened the dunes, a winter when "
    "the bay froze solid enough to walk on, the night a fishing boat lost its "
    "rudder and drifted past with its crew waving lanterns, and the slow return "
    "of the seals after the factory upstream was closed. The historian copied "
    "out several pages by hand, because she felt that a photograph would miss "
    "something about the way the ink had faded."
)

LOGIT_PROMPTS = [
    # English
    "The quick brown fox jumps over the lazy dog. Meanwhile, in the old town, "
    "the baker had already opened his shop and the smell of fresh bread drifted "
    "down the street.",
    # ChatML chat prompt with special tokens
    chatml("What is the capital of France? Answer in one sentence.",
           system="You are a helpful assistant."),
    # code
    "def fibonacci(n: int) -> list[int]:\n"
    "    \"\"\"Return the first n Fibonacci numbers.\"\"\"\n"
    "    seq = [0, 1]\n"
    "    while len(seq) < n:\n"
    "        seq.append(seq[-1] + seq[-2])\n"
    "    return seq[:n]\n\n"
    "if __name__ == \"__main__\":\n"
    "    print(fibonacci(10))  # [0, 1, 1, 2, 3, 5, 8, 13, 21, 34]\n",
    # a list
    "Things to pack for the weekend:\n"
    "1. Rain jacket\n"
    "2. Two pairs of socks\n"
    "3. Toothbrush & toothpaste\n"
    "- phone charger (USB-C)\n"
    "- a paperback book\n"
    "* snacks: apples, nuts, 3x granola bars\n",
    # Unicode
    "Café au lait, déjà vu, naïve coöperation — «quotes» and “curly quotes”. "
    "Привет, мир! Γειά σου κόσμε. 日本語のテキストです。 中文也可以。 "
    "Emoji: 🙂🚀🌍 Math: ∑ ∫ √2 ≈ 1.41421, π ≠ 3, x² + y² = z².",
    # long paragraph (~200 tokens)
    LONG_PARAGRAPH,
]

GREEDY_PROMPTS = [
    chatml("What is the capital of France?"),
    chatml("Write a haiku about the sea.", system="You are a helpful assistant."),
    chatml("List three primary colors."),
    chatml("Translate 'good morning' into Spanish."),
    chatml("What is 12 times 7?", system="You are a concise math tutor."),
    "Once upon a time, in a small village by the sea,",
    "The following Python function computes the factorial of a number:\n\n"
    "def factorial(n):",
    "The capital of Germany is",
    "1, 2, 3, 4, 5,",
    "Water boils at a temperature of",
]


def load(n_ctx):
    return Llama(
        model_path=MODEL,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=N_THREADS,
        n_threads_batch=N_THREADS,
        logits_all=True,
        flash_attn=False,
        seed=0,
        verbose=False,
    )


def add_bos(llm):
    return bool(llm._model.add_bos_token())


def tokenize(llm, text, special=True):
    return llm.tokenize(text.encode("utf-8"), add_bos=add_bos(llm), special=special)


def eval_logits(llm, tokens):
    """Fresh sequence; returns a (len(tokens), n_vocab) float32 copy of the logits."""
    llm.reset()
    llm.eval(tokens)
    return np.array(llm.scores[: len(tokens), :], dtype=np.float32, copy=True)


def lse_rows(logits):
    x = logits.astype(np.float64)
    m = x.max(axis=1, keepdims=True)
    return (m[:, 0] + np.log(np.exp(x - m).sum(axis=1)))


def hexline(text):
    return "T " + text.encode("utf-8").hex()


def header(f, what):
    f.write("# %s\n" % what)
    f.write("# generated by tools/make_reference.py with %s (llama.cpp CPU, "
            "n_threads=%d, flash_attn off)\n" % (PEER, N_THREADS))
    f.write("# model: models/SmolLM2-135M-Instruct.Q4_1.gguf (add_bos_token=false)\n")


def make_logits():
    llm = load(512)
    out = bytearray()
    out += b"CODIREF1"
    out += struct.pack("<II", 1, len(LOGIT_PROMPTS))
    for text in LOGIT_PROMPTS:
        toks = tokenize(llm, text)
        assert len(toks) <= 512
        logits = eval_logits(llm, toks)
        lse = lse_rows(logits)
        out += struct.pack("<I", len(toks))
        out += struct.pack("<%di" % len(toks), *toks)
        out += struct.pack("<I", TOPK)
        for p in range(len(toks)):
            row = logits[p]
            order = np.argsort(-row, kind="stable")[:TOPK]
            out += struct.pack("<f", float(lse[p]))
            for tid in order:
                out += struct.pack("<if", int(tid), float(row[tid]))
        print("logits: %3d tokens, top1 at last pos = %d" % (len(toks), int(np.argmax(logits[-1]))))
    with open(os.path.join(OUTDIR, "logits_smollm2.bin"), "wb") as f:
        f.write(out)
    with open(os.path.join(OUTDIR, "logits_smollm2_prompts.txt"), "w") as f:
        header(f, "texts of the prompts in logits_smollm2.bin, in order: T <hex of UTF-8 bytes>")
        f.write("# tokenized with special tokens parsed, no BOS\n")
        for text in LOGIT_PROMPTS:
            f.write(hexline(text) + "\n")
    del llm


def make_greedy():
    llm = load(512)
    vocab = llama_cpp.llama_model_get_vocab(llm._model.model)
    n_vocab = llm.n_vocab()
    eog = [i for i in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, i)]
    recs = []
    for text in GREEDY_PROMPTS:
        toks = tokenize(llm, text)
        llm.reset()
        llm.eval(toks)
        gen = []
        gaps = []
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
        recs.append((toks, gen, gaps[gi], gi))
        print("greedy: %3d prompt tokens -> %2d generated: %r" % (
            len(toks), len(gen), llm.detokenize(gen).decode("utf-8", "replace")))
    with open(os.path.join(OUTDIR, "greedy_smollm2.txt"), "w") as f:
        header(f, "greedy decoding reference: per prompt 'P <prompt ids>' then 'G <generated ids>'")
        f.write("# argmax of f32 logits (first index on ties), temperature 0, no penalties; "
                "up to %d tokens, stops after an EOG token (EOG ids: %s), which is included\n"
                % (N_GEN, " ".join(map(str, eog))))
        f.write("# before each record: the smallest top1-top2 logit gap over its generated steps "
                "(a small gap means a near-tie that f32 rounding differences could flip)\n")
        for toks, gen, gap, gi in recs:
            f.write("# min gap %.4f at generated step %d\n" % (gap, gi))
            f.write("P " + " ".join(map(str, toks)) + "\n")
            f.write("G " + " ".join(map(str, gen)) + "\n")
    with open(os.path.join(OUTDIR, "greedy_smollm2_prompts.txt"), "w") as f:
        header(f, "texts of the prompts in greedy_smollm2.txt, in order: T <hex of UTF-8 bytes>")
        f.write("# tokenized with special tokens parsed, no BOS\n")
        for text in GREEDY_PROMPTS:
            f.write(hexline(text) + "\n")
    del llm


def ppl_python(n_ctx, n_chunks, text):
    llm = load(n_ctx)
    # llama-perplexity: common_tokenize(ctx, prompt, add_special=true, parse_special=false)
    tokens = tokenize(llm, text, special=False)
    n_chunk_max = len(tokens) // n_ctx
    assert n_chunks <= n_chunk_max, (len(tokens), n_ctx, n_chunks)
    first = n_ctx // 2
    nll = 0.0
    count = 0
    for i in range(n_chunks):
        win = list(tokens[i * n_ctx:(i + 1) * n_ctx])
        if add_bos(llm):
            win[0] = llm.token_bos()
        logits = eval_logits(llm, win)
        lse = lse_rows(logits[first:n_ctx - 1])
        nxt = tokens[i * n_ctx + first + 1:(i + 1) * n_ctx]   # original tokens
        tgt = logits[np.arange(first, n_ctx - 1), nxt].astype(np.float64)
        nll += float((lse - tgt).sum())
        count += n_ctx - 1 - first
    del llm
    return math.exp(nll / count), len(tokens), count


def ppl_peer(n_ctx, n_chunks, extra=()):
    if not os.access(PEER_PPL, os.X_OK):
        return None
    cmd = [PEER_PPL, "-m", MODEL, "-f", EVAL_TXT, "-c", str(n_ctx),
           "--chunks", str(n_chunks), "-t", str(N_THREADS)] + list(extra)
    r = subprocess.run(cmd, capture_output=True, text=True)
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", r.stdout + r.stderr)
    if r.returncode != 0 or not m:
        print("llama-perplexity failed (%d):\n%s" % (r.returncode, (r.stdout + r.stderr)[-2000:]))
        return None
    return float(m.group(1)), " ".join(os.path.relpath(c, ROOT) if os.path.isabs(c) else c for c in cmd)


def make_ppl():
    with open(EVAL_TXT, "r", encoding="utf-8") as f:
        text = f.read()
    lines = []
    comments = []
    for n_ctx, n_chunks in ((128, 4), (512, 2), (512, 4), (512, 14)):
        ppl, ntok, count = ppl_python(n_ctx, n_chunks, text)
        lines.append("ctx %d chunks %d ppl %.6f" % (n_ctx, n_chunks, ppl))
        comments.append("# ctx %d chunks %d: %d scored tokens (file tokenizes to %d tokens)"
                        % (n_ctx, n_chunks, count, ntok))
        print("ppl python: ctx %d chunks %d ppl %.6f" % (n_ctx, n_chunks, ppl))
        for extra, what in ((["-fa", "off"], "flash attn off, same as above"),
                            ([], "default flash attn auto = on for CPU")):
            peer = ppl_peer(n_ctx, n_chunks, extra)
            if peer is not None:
                comments.append("# llama-perplexity (%s): ctx %d chunks %d ppl %.4f   (%s)"
                                % (what, n_ctx, n_chunks, peer[0], peer[1]))
                print("ppl llama-perplexity %s: ctx %d chunks %d ppl %.4f"
                      % (" ".join(extra) or "(default)", n_ctx, n_chunks, peer[0]))
    with open(os.path.join(OUTDIR, "ppl_smollm2.txt"), "w") as f:
        header(f, "perplexity of tests/data/eval.txt, llama-perplexity procedure "
                  "(second half of each n_ctx window scored)")
        for c in comments:
            f.write(c + "\n")
        for l in lines:
            f.write(l + "\n")


def main():
    if not os.path.exists(MODEL):
        sys.exit("missing %s: run tools/fetch_models.sh" % MODEL)
    os.makedirs(OUTDIR, exist_ok=True)
    what = sys.argv[1:] or ["logits", "greedy", "ppl"]
    if "logits" in what:
        make_logits()
    if "greedy" in what:
        make_greedy()
    if "ppl" in what:
        make_ppl()


if __name__ == "__main__":
    main()
