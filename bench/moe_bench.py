#!/usr/bin/env python3
"""moe_bench.py - expert offloading under a memory budget (issue 5).

For one MoE GGUF file, runs `codi run` greedy generation for every
(mode, budget) pair and reports, per run: generation tokens/s, bytes read
from the file per token, the read bandwidth the expert store achieved, the
cache hit rate, the pre-gate's recall of the next layer's experts, the time
stalled on I/O, and peak RSS against codi's own accounting. It also computes
the limit each run could reach,

    per token: max(compute time when resident, missed bytes / probe bandwidth)

where the compute time comes from the `resident` run (all experts mapped and
warm in the page cache) and the probe bandwidth from reading part-sized
blocks (an expert's gate, up or down slice) of the same file with O_DIRECT
at the queue depth codi reaches: each I/O thread has an expert's three parts
in flight at once (Linux AIO), so 3 x I/O threads; and the fraction of that
limit each run achieved.

That limit takes reading as free for compute. On a virtual machine it is
not: the host's side of the virtual disk competes with the guest's cores.
So the resident run is repeated with a background O_DIRECT reader on the
same file (threads of this script, not codi), which gives the extra compute
time per MiB read and the bandwidth left while computing; the host limit,

    per token: max(compute + missed MiB x that cost,
                   missed bytes / (probe bandwidth x the share of its own
                                   bandwidth the reader kept under compute)),

and the fraction of it each run achieved are reported beside the first.

    python3 bench/moe_bench.py [--model models/bench/moe-q4_0.gguf]
        [--budgets 100,50,25,10] [--modes ondemand,prefetch] [-n 32] [-t 2]
        [--io-threads 2] [--policy next] [--out DIR] [--reps 1]

Prints a markdown table (and writes it, with the raw stderr of every run, to
--out when given). Each run reads the model afresh: O_DIRECT reads bypass
the page cache, so runs do not warm each other's expert reads.
"""
import argparse
import mmap
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODI = os.path.join(ROOT, "build", "codi")
PROMPT = ("The history of the river valley begins with the first farmers who settled along its "
          "banks, built terraces on the hills and traded grain with the towns downstream.")


def probe_bandwidth(path, block, n_threads, seconds=3.0):
    """O_DIRECT random reads of `block` bytes (4 KiB aligned) with n_threads
    in parallel; returns bytes/s."""
    size = os.path.getsize(path)
    block = (block + 4095) // 4096 * 4096
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    except OSError:
        fd = os.open(path, os.O_RDONLY)
    total = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(seed):
        buf = mmap.mmap(-1, block)  # page aligned, as O_DIRECT needs
        x = seed * 2654435761 % (1 << 32)
        n = 0
        while time.monotonic() < stop:
            x = (x * 1103515245 + 12345) % (1 << 31)
            off = (x % max(1, (size - block) // 4096)) * 4096
            n += os.preadv(fd, [buf], off)
        with lock:
            total[0] += n

    ths = [threading.Thread(target=worker, args=(i + 1,)) for i in range(n_threads)]
    t0 = time.monotonic()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    dt = time.monotonic() - t0
    os.close(fd)
    return total[0] / dt


class BackgroundReader:
    """O_DIRECT random reads of `block` bytes with n_threads in parallel,
    until stop(); stop() returns the bytes/s it read."""

    def __init__(self, path, block=1 << 20, n_threads=2):
        self.path, self.block, self.n = path, (block + 4095) // 4096 * 4096, n_threads
        self.size = os.path.getsize(path)
        self.total = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def _worker(self, seed, fd):
        buf = mmap.mmap(-1, self.block)
        x = seed * 2654435761 % (1 << 32)
        n = 0
        while not self.done.is_set():
            x = (x * 1103515245 + 12345) % (1 << 31)
            off = (x % max(1, (self.size - self.block) // 4096)) * 4096
            n += os.preadv(fd, [buf], off)
        with self.lock:
            self.total += n

    def start(self):
        try:
            self.fd = os.open(self.path, os.O_RDONLY | os.O_DIRECT)
        except OSError:
            self.fd = os.open(self.path, os.O_RDONLY)
        self.ths = [threading.Thread(target=self._worker, args=(i + 1, self.fd)) for i in range(self.n)]
        self.t0 = time.monotonic()
        for t in self.ths:
            t.start()

    def stop(self):
        self.done.set()
        for t in self.ths:
            t.join()
        dt = time.monotonic() - self.t0
        os.close(self.fd)
        return self.total / dt


def run_codi(model, mode, budget, n, threads, io_threads, policy, extra, bits=None):
    cmd = [CODI, "run", "-m", model, "-p", PROMPT, "-n", str(n), "--temp", "0", "-t", str(threads),
           "--no-display-prompt", "--moe-mode", mode, "--io-threads", str(io_threads),
           "--expert-policy", policy] + extra
    if bits:
        cmd += ["--moe-bits", bits]
    if mode != "resident":
        cmd += ["--expert-budget", "%g%%" % budget]
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("codi failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-2000:]))
    err = p.stderr
    r = {"cmd": " ".join(cmd), "stderr": err}
    m = re.search(r"generation:\s+(\d+) tokens in\s+([\d.]+) ms,\s+([\d.]+) tokens/s", err)
    r["gen_tokens"], r["gen_ms"], r["tps"] = int(m.group(1)), float(m.group(2)), float(m.group(3))
    m = re.search(r"rss: peak ([\d.]+) MiB, accounting ([\d.]+) MiB", err)
    r["rss"], r["acct"] = float(m.group(1)), float(m.group(2))
    m = re.search(r"moe: (\w+).*?cache ([\d.]+) MiB \((\d+) experts.*?hit rate ([\d.]+)%.*?"
                  r"(\d+) sync loads.*?\), recall ([\d.]+)%, read ([\d.]+) MiB/token at (\d+) MiB/s, "
                  r"stalled ([\d.]+) s", err)
    if m:
        r.update(cache_mib=float(m.group(2)), slots=int(m.group(3)), hit=float(m.group(4)),
                 sync=int(m.group(5)), recall=float(m.group(6)), mib_tok=float(m.group(7)),
                 bw=float(m.group(8)), stall=float(m.group(9)))
    else:
        r.update(cache_mib=0.0, slots=0, hit=100.0, sync=0, recall=float("nan"), mib_tok=0.0, bw=0.0,
                 stall=0.0)
    m = re.search(r"(\d+) in flight, (\d+) sync loads; (\d+) prefetched, (\d+) used", err)
    # experts brought in for use: sync loads + prefetched-and-used (an
    # in-flight wait is a prefetch that gets used: counted there once)
    r["missed"] = (int(m.group(2)) + int(m.group(4))) if m else 0
    m = re.search(r"([\d.]+)% of expert uses at 8 bits", err)
    r["bits8"] = float(m.group(1)) if m else float("nan")
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(ROOT, "models", "bench", "moe-q4_0.gguf"))
    ap.add_argument("--budgets", default="100,50,25,10")
    ap.add_argument("--modes", default="ondemand,prefetch")
    ap.add_argument("-n", type=int, default=32)
    ap.add_argument("-t", type=int, default=2)
    ap.add_argument("--io-threads", type=int, default=2)
    ap.add_argument("--policy", default="next", help="expert cache policies, comma separated")
    ap.add_argument("--bits", default="", help="bit-nested files: --moe-bits values, comma separated")
    ap.add_argument("--reps", type=int, default=1, help="runs per setting (median tokens/s)")
    ap.add_argument("--out", default=None)
    ap.add_argument("--extra", default="", help="more codi options, space separated")
    a = ap.parse_args()
    extra = a.extra.split() if a.extra else []
    budgets = [float(b) for b in a.budgets.split(",")]
    modes = a.modes.split(",")
    if a.out:
        os.makedirs(os.path.join(a.out, "raw"), exist_ok=True)

    policies = a.policy.split(",")
    bitsl = a.bits.split(",") if a.bits else [None]

    def once(mode, budget, policy=policies[0], bits=None):
        rs = [run_codi(a.model, mode, budget, a.n, a.t, a.io_threads, policy, extra, bits) for _ in range(a.reps)]
        rs.sort(key=lambda r: r["tps"])
        r = rs[len(rs) // 2]
        r["tps_all"] = [x["tps"] for x in rs]
        if a.out:
            tag = "%s-%g-%s%s" % (mode, budget, policy, "-" + bits if bits else "")
            with open(os.path.join(a.out, "raw", tag + ".txt"), "w") as f:
                f.write(r["cmd"] + "\n" + r["stderr"])
        return r

    base = once("resident", 100, policies[0], "8" if a.bits else None)
    t_compute = 1.0 / base["tps"]
    print("resident: %.2f tokens/s (compute %.1f ms/token), peak RSS %.1f MiB, accounting %.1f MiB"
          % (base["tps"], t_compute * 1e3, base["rss"], base["acct"]), file=sys.stderr)
    rows = []
    for budget in budgets:
        for mode in modes:
            for policy in policies:
                for bits in bitsl:
                    r = once(mode, budget, policy, bits)
                    r["policy"], r["bits"] = policy, bits or "-"
                    rows.append((mode, budget, r))
                    print("%s %g%% %s %s: %.2f t/s, hit %.1f%%, %.2f MiB/token" % (mode, budget, policy, bits or "",
                          r["tps"], r["hit"], r["mib_tok"]), file=sys.stderr)
    # expert block size for the probe: one expert's bytes from the cache size
    ref = next((r for _, _, r in rows if r["slots"] > 0), None)
    block = int(ref["cache_mib"] * 1048576 / ref["slots"] / 3) if ref else 1 << 20
    qd = 3 * a.io_threads  # every I/O thread reads an expert's 3 parts at once
    bw = {q: probe_bandwidth(a.model, block, q) for q in sorted({1, a.io_threads, qd})}
    bw_q = bw[qd]
    # What reading costs compute on this host, and what bandwidth is left
    # while it computes: the resident run again, with a background O_DIRECT
    # reader on the same file (its own process's threads, not codi's).
    under = []
    for _ in range(a.reps):
        rd = BackgroundReader(a.model, 1 << 20, 2)
        c0 = os.times()
        rd.start()
        time.sleep(0.2)
        r = run_codi(a.model, "resident", 100, a.n, a.t, a.io_threads, policies[0], extra, "8" if a.bits else None)
        bwr = rd.stop()
        c1 = os.times()
        # the reader's own CPU (this process, not codi), in cores
        cpu = (c1.user + c1.system - c0.user - c0.system) / max(1e-9, c1.elapsed - c0.elapsed)
        under.append((r["tps"], bwr, cpu))
    under.sort()
    tps_io, bw_io, cpu_io = under[len(under) // 2]
    if bw_io <= 0:
        sys.exit("moe_bench: the background reader read nothing from %s" % a.model)
    t_compute_io = 1.0 / tps_io
    # the share of the reader's idle bandwidth left to it under compute
    # scales the probe's bandwidth (codi's block size and queue depth)
    bw_idle_1m = probe_bandwidth(a.model, 1 << 20, 2)
    bw_host = bw_q * min(1.0, bw_io / bw_idle_1m)
    # extra compute time per MiB read while computing
    cost_per_mib = max(0.0, t_compute_io - t_compute) / (bw_io * t_compute_io / 1048576)
    print("resident under a background reader: %.2f tokens/s, reader %.0f MiB/s"
          % (tps_io, bw_io / 1048576), file=sys.stderr)
    lines = []
    lines.append("model `%s`, %d generated tokens, -t %d, %d I/O threads, policy %s; "
                 "O_DIRECT probe (blocks of %.2f MiB): %s"
                 % (os.path.basename(a.model), a.n, a.t, a.io_threads, a.policy, block / 1048576,
                    ", ".join("%.0f MiB/s at QD %d" % (v / 1048576, q) for q, v in sorted(bw.items()))))
    lines.append("")
    lines.append("resident (all experts mapped, page cache warm): %.2f tokens/s = %.1f ms/token compute; "
                 "peak RSS %.1f MiB, accounting %.1f MiB" % (base["tps"], t_compute * 1e3, base["rss"], base["acct"]))
    lines.append("")
    lines.append("resident with a background O_DIRECT reader (1 MiB blocks, 2 threads) on the same file: "
                 "%.2f tokens/s = %.1f ms/token compute (+%.0f%%) while the reader got %.0f MiB/s (%.0f MiB/s "
                 "alone): reading costs %.3f ms of compute per MiB on this host (the reader's threads used "
                 "%.2f cores), and the probe's bandwidth under compute is %.0f MiB/s"
                 % (tps_io, t_compute_io * 1e3, 100.0 * (t_compute_io / t_compute - 1.0), bw_io / 1048576,
                    bw_idle_1m / 1048576, cost_per_mib * 1e3, cpu_io, bw_host / 1048576))
    lines.append("")
    lines.append("limit: per token max(resident compute, missed bytes / probe bandwidth at QD %d); "
                 "host limit: max(resident compute + missed MiB x that cost, missed bytes / the probe's "
                 "bandwidth under compute)" % qd)
    lines.append("")
    lines.append("| mode | budget | policy | bits | 8-bit uses % | cache MiB | tg tok/s | MiB missed/tok | MiB read/tok "
                 "| read MiB/s per request | read MiB/s over the run "
                 "| hit % | recall % | stall s | limit tok/s | of limit | host limit tok/s | of host limit "
                 "| RSS MiB | accounting MiB |")
    lines.append("|---|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, budget, r in rows:
        # the bytes the run had to bring in for use: experts read on a miss
        # or prefetched and then used (wasted prefetches are the run's own
        # cost, not part of the limit)
        slot_mib = r["cache_mib"] / r["slots"] if r["slots"] else 0.0
        missed_mib = r["missed"] * slot_mib / max(1, r["gen_tokens"])
        r["missed_mib"] = missed_mib
        t_io = missed_mib * 1048576 / bw_q
        limit = 1.0 / max(t_compute, t_io)
        host = 1.0 / max(t_compute + missed_mib * cost_per_mib, missed_mib * 1048576 / bw_host)
        lines.append("| %s | %g%% | %s | %s | %s | %.1f | %.2f | %.2f | %.2f | %.0f | %.0f | %.1f | %s | %.2f | %.2f | %.0f%% "
                     "| %.2f | %.0f%% | %.1f | %.1f |"
                     % (mode, budget, r["policy"], r["bits"],
                        "-" if r["bits8"] != r["bits8"] else "%.0f" % r["bits8"], r["cache_mib"], r["tps"],
                        missed_mib, r["mib_tok"], r["bw"], r["mib_tok"] * r["tps"], r["hit"],
                        "%.1f" % r["recall"] if r["recall"] == r["recall"] and mode in ("prefetch", "lookahead") else "-",
                        r["stall"], limit, 100.0 * r["tps"] / limit, host, 100.0 * r["tps"] / host,
                        r["rss"], r["acct"]))
    out = "\n".join(lines) + "\n"
    print(out)
    if a.out:
        with open(os.path.join(a.out, "moe.md"), "w") as f:
            f.write(out)


if __name__ == "__main__":
    main()
