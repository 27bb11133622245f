#!/usr/bin/env python3
"""compare.py - codi vs llama.cpp, side by side in one run (../shared/BENCH.md).

For each model, alternates `codi bench` and llama.cpp's `llama-bench`
(A B A B ...), one counted repetition per invocation after each program's
own warm-up, for prompt processing (pp, one batch of --pp tokens) and token
generation (tg, --tg tokens one at a time), both from an empty cache with
the same thread count. Prints a markdown table of medians and the median of
the per-pair ratios codi / llama.cpp.

Usage:
  bench/compare.py [-m MODEL ...] [--pairs 5] [--pp 512] [--tg 128] [-t 2]
                   [--fa off|on] [--out FILE.md]
Needs build/codi (cmake build) and bench/.peer/bin/llama-bench
(tools/build_peer.sh).
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODI = os.path.join(ROOT, "build", "codi")
LLAMA_BENCH = os.path.join(ROOT, "bench", ".peer", "bin", "llama-bench")


def codi_once(model, test, n, threads):
    args = [CODI, "bench", "-m", model, "-t", str(threads), "-r", "1"]
    args += ["--n-prompt", str(n), "-n", "0"] if test == "pp" else ["--n-prompt", "0", "-n", str(n)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 5 and re.fullmatch(r"(pp|tg)\d+", cells[3]):
            return float(cells[4])
    raise RuntimeError("no result in codi bench output:\n" + out)


def llama_once(model, test, n, threads, fa):
    args = [LLAMA_BENCH, "-m", model, "-t", str(threads), "-r", "1", "-o", "json", "-fa", "1" if fa == "on" else "0"]
    args += ["-p", str(n), "-n", "0"] if test == "pp" else ["-p", "0", "-n", str(n)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    return float(res[0]["avg_ts"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", action="append")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--fa", default="off", choices=["off", "on"])
    ap.add_argument("--tests", default="pp,tg")
    ap.add_argument("--out")
    a = ap.parse_args()
    models = a.model or [os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")]
    for exe in (CODI, LLAMA_BENCH):
        if not os.access(exe, os.X_OK):
            sys.exit("compare.py: %s is missing (build codi / run tools/build_peer.sh)" % exe)
    rows = ["| model | test | codi t/s (median) | llama.cpp t/s (median) | codi / llama.cpp (median of %d pairs) |" % a.pairs,
            "| ----- | ---- | ----------------: | ---------------------: | ----------------: |"]
    for model in models:
        for test in a.tests.split(","):
            n = a.pp if test == "pp" else a.tg
            cs, ls, rs = [], [], []
            for i in range(a.pairs):
                # alternate who goes first so drift does not favour one side
                if i % 2 == 0:
                    c = codi_once(model, test, n, a.threads)
                    l = llama_once(model, test, n, a.threads, a.fa)
                else:
                    l = llama_once(model, test, n, a.threads, a.fa)
                    c = codi_once(model, test, n, a.threads)
                cs.append(c)
                ls.append(l)
                rs.append(c / l)
                print("%s %s%d pair %d: codi %.2f llama.cpp %.2f ratio %.3f" %
                      (os.path.basename(model), test, n, i + 1, c, l, c / l), file=sys.stderr, flush=True)
            rows.append("| %s | %s%d | %.2f | %.2f | %.3f |" % (os.path.basename(model), test, n, statistics.median(cs),
                                                              statistics.median(ls), statistics.median(rs)))
    table = "\n".join(rows)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
