#!/usr/bin/env python3
"""peer_noise_floor.py - how far llama.cpp is from itself.

The logits fixture (tests/fixtures/ref/logits_smollm2.bin, made by
make_reference.py) comes from llama.cpp with flash attention OFF. llama.cpp's
other CPU attention path (flash attention ON, the default of llama-perplexity
and llama-cli) rounds differently; this script measures how well that path
agrees with the fixture, with the same metrics test_e2e.c uses for codi:
top-1 agreement over all positions, top-1 agreement over "decisive" positions
(reference top-2 logit gap >= 0.5), and mean KL(ref || other) over the
reference's top-40 plus one bucket for the rest of the mass.

Run: bench/.peer/venv/bin/python tools/peer_noise_floor.py
Writes tests/fixtures/ref/noise_floor_smollm2.txt. Peer: llama-cpp-python 0.3.36.
"""
import os
import struct

import numpy as np
from llama_cpp import Llama

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODEL = os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
FIX = os.path.join(ROOT, "tests", "fixtures", "ref")
GAP = 0.5


def read_fixture(path):
    with open(path, "rb") as f:
        assert f.read(8) == b"CODIREF1"
        _ver, n = struct.unpack("<II", f.read(8))
        prompts = []
        for _ in range(n):
            (nt,) = struct.unpack("<I", f.read(4))
            toks = list(struct.unpack("<%di" % nt, f.read(4 * nt)))
            (k,) = struct.unpack("<I", f.read(4))
            ref = []
            for _p in range(nt):
                (lse,) = struct.unpack("<f", f.read(4))
                d = np.frombuffer(f.read(8 * k), dtype=[("id", "<i4"), ("v", "<f4")])
                ref.append((lse, d))
            prompts.append((toks, ref))
    return prompts


def compare(model, prompts):
    agree = tot = dec_agree = dec_tot = 0
    kls = []
    for toks, ref in prompts:
        model.reset()
        model.eval(toks)
        logits = np.array(model.scores[: len(toks)], dtype=np.float64)
        for p, (lse_r, d) in enumerate(ref):
            lg = logits[p]
            lse = np.log(np.exp(lg - lg.max()).sum()) + lg.max()
            lr = d["v"].astype(np.float64) - lse_r
            lc = lg[d["id"]] - lse
            pr = np.exp(lr)
            kl = (pr * (lr - lc)).sum()
            rr, rc = 1 - pr.sum(), 1 - np.exp(lc).sum()
            if rr > 1e-9 and rc > 1e-9:
                kl += rr * np.log(rr / rc)
            kls.append(max(kl, 0.0))
            ok = int(np.argmax(lg) == d["id"][0])
            agree += ok
            tot += 1
            if d["v"][0] - d["v"][1] >= GAP:
                dec_agree += ok
                dec_tot += 1
    return 100.0 * agree / tot, 100.0 * dec_agree / dec_tot, float(np.mean(kls)), tot


def read_greedy(path):
    recs, prompt = [], None
    for line in open(path):
        if line.startswith("P "):
            prompt = [int(t) for t in line.split()[1:]]
        elif line.startswith("G "):
            recs.append((prompt, [int(t) for t in line.split()[1:]]))
    return recs


def greedy_same(model, recs):
    """Prompts whose greedy continuation (same rule as the fixture: argmax,
    stop after an EOG token) is identical to the fixture's."""
    same = 0
    for prompt, gen in recs:
        model.reset()
        model.eval(prompt)
        out = []
        for _ in range(len(gen)):
            tok = int(np.argmax(np.array(model.scores[model.n_tokens - 1])))
            out.append(tok)
            if tok != gen[len(out) - 1]:
                break  # the fixture's last token may be EOG: loop ends there
            model.eval([tok])
        same += int(out == gen)
    return same, len(recs)


def main():
    prompts = read_fixture(os.path.join(FIX, "logits_smollm2.bin"))
    m = Llama(model_path=MODEL, n_ctx=512, n_batch=512, n_threads=2,
              logits_all=True, flash_attn=True, verbose=False)
    a, da, kl, n = compare(m, prompts)
    gs, gn = greedy_same(m, read_greedy(os.path.join(FIX, "greedy_smollm2.txt")))
    out = os.path.join(FIX, "noise_floor_smollm2.txt")
    with open(out, "w") as f:
        f.write("# llama.cpp flash-attention ON vs the flash-attention-OFF fixture\n")
        f.write("# llama-cpp-python 0.3.36, n_threads=2, %d positions, decisive = top-2 gap >= %.1f\n" % (n, GAP))
        f.write("agree %.4f\ndecisive_agree %.4f\nkl_mean %.6f\n" % (a, da, kl))
        f.write("# greedy: prompts of greedy_smollm2.txt whose continuation is identical\n")
        f.write("greedy_same %d of %d\n" % (gs, gn))
    print(open(out).read())


if __name__ == "__main__":
    main()
