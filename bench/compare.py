#!/usr/bin/env python3
"""compare.py - codi vs llama.cpp, side by side in one run (../shared/BENCH.md).

For each model, alternates `codi bench` and llama.cpp's `llama-bench`
(A B A B ...), one counted repetition per invocation after each program's
own warm-up, for prompt processing (pp, one batch of --pp tokens) and token
generation (tg, --tg tokens one at a time), both from an empty cache with
the same thread count. Prints a markdown table of medians, the median of
the per-pair ratios codi / llama.cpp, and for tg the roofline fraction:
tokens/s x bytes of weights read per token / read bandwidth (bench/stream.c,
measured at the start unless --bandwidth is given). Bytes per token: every
matrix once, the token embedding only when it doubles as the output head.

Usage:
  bench/compare.py [-m MODEL ...] [--pairs 5] [--pp 128,512] [--tg 64] [-t 2]
                   [--fa off|on] [--bandwidth GB/s] [--out FILE.md]
Needs build/codi (cmake build) and bench/.peer/bin/llama-bench
(tools/build_peer.sh); build/stream (gcc -O2 -mavx2 -pthread bench/stream.c
-o build/stream) for the roofline column.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODI = os.path.join(ROOT, "build", "codi")
LLAMA_BENCH = os.path.join(ROOT, "bench", ".peer", "bin", "llama-bench")


def codi_once(model, test, n, threads):
    args = [CODI, "bench", "-m", model, "-t", str(threads), "-r", "1", "--json"]
    args += ["-p", str(n), "-n", "0"] if test == "pp" else ["-p", "0", "-n", str(n)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out)[0]["tokens_per_s"])


def llama_once(model, test, n, threads, fa):
    args = [LLAMA_BENCH, "-m", model, "-t", str(threads), "-r", "1", "-o", "json", "-fa", "1" if fa == "on" else "0"]
    args += ["-p", str(n), "-n", "0"] if test == "pp" else ["-p", "0", "-n", str(n)]
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    res = json.loads(out)
    return float(res[0]["avg_ts"])


def bytes_per_token(model):
    """Weights read to generate one token, from codi's tensor table."""
    out = subprocess.run([CODI, "inspect", model], check=True, capture_output=True, text=True).stdout
    sizes = {}
    for line in out.splitlines():
        f = line.split()
        if len(f) >= 5 and f[0].isdigit() and f[-1].isdigit() and "[" in line:
            sizes[f[1]] = int(f[-1])
    total = sum(v for k, v in sizes.items() if k != "token_embd.weight")
    if "output.weight" not in sizes:  # tied: the embedding is the output head
        total += sizes.get("token_embd.weight", 0)
    return total


def bandwidth():
    exe = os.path.join(ROOT, "build", "stream")
    out = subprocess.run([exe, "2", "1024", "9"], check=True, capture_output=True, text=True).stdout
    print(out.strip(), file=sys.stderr)
    return float(out.split("median ")[1].split(" GB/s")[0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-m", "--model", action="append")
    ap.add_argument("--pairs", type=int, default=5)
    ap.add_argument("--pp", default="128,512")
    ap.add_argument("--tg", default="64")
    ap.add_argument("--bandwidth", type=float, help="read bandwidth in GB/s (default: measure)")
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--fa", default="off", choices=["off", "on"])
    ap.add_argument("--out")
    a = ap.parse_args()
    models = a.model or [os.path.join(ROOT, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")]
    for exe in (CODI, LLAMA_BENCH):
        if not os.access(exe, os.X_OK):
            sys.exit("compare.py: %s is missing (build codi / run tools/build_peer.sh)" % exe)
    bw = a.bandwidth if a.bandwidth else bandwidth()
    rows = ["| model | test | codi t/s (median) | llama.cpp t/s (median) | codi / llama.cpp (median of %d pairs) "
            "| codi roofline | llama.cpp roofline |" % a.pairs,
            "| ----- | ---- | ----------------: | ---------------------: | ----------------: | ---: | ---: |"]
    tests = [("pp", int(n)) for n in a.pp.split(",") if n] + [("tg", int(n)) for n in a.tg.split(",") if n]
    for model in models:
        bpt = bytes_per_token(model)
        for test, n in tests:
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
            mc, ml = statistics.median(cs), statistics.median(ls)
            roof = ("%.0f%%" % (100 * mc * bpt / (bw * 1e9)), "%.0f%%" % (100 * ml * bpt / (bw * 1e9))) \
                if test == "tg" else ("", "")
            rows.append("| %s | %s%d | %.2f | %.2f | %.3f | %s | %s |" % (os.path.basename(model), test, n, mc, ml,
                                                                        statistics.median(rs), roof[0], roof[1]))
    rows.append("")
    rows.append("read bandwidth %.2f GB/s; bytes per generated token: %s" % (
        bw, ", ".join("%s %.1f MB" % (os.path.basename(m), bytes_per_token(m) / 1e6) for m in models)))
    table = "\n".join(rows)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
