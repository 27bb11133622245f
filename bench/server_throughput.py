#!/usr/bin/env python3
"""Aggregate generation speed of an OpenAI-compatible server: one stream
alone, then P streams at once (standard library only).

    python3 bench/server_throughput.py [--server codi|llama] [--bin PATH]
        [-m MODEL] [--streams 8] [--tokens 128] [-t 2] [--rounds 2]

Starts the server on a free loopback port with P slots of 512 tokens
(`codi serve --parallel P` or llama.cpp's `llama-server -np P -c 512*P`,
built by tools/build_peer.sh into bench/.peer/bin), then streams
/v1/completions with ignore_eos (so every stream generates exactly
--tokens tokens), temperature 0.8 and a different seed and prompt per
stream. Reports generated tokens / wall second for 1 stream and for P
streams (best of --rounds each) and the ratio.
"""
import argparse
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--server", choices=["codi", "llama"], default="codi")
ap.add_argument("--bin", help="server binary (default build/codi or bench/.peer/bin/llama-server)")
ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--streams", type=int, default=8)
ap.add_argument("--tokens", type=int, default=128)
ap.add_argument("-t", "--threads", default="2")
ap.add_argument("--rounds", type=int, default=2)
ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
args = ap.parse_args()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


port = free_port()
P = args.streams
if args.server == "codi":
    exe = args.bin or "build/codi"
    cmd = [exe, "serve", "-m", args.model, "--port", str(port), "-t", args.threads,
           "--parallel", str(P), "--ctx-per-slot", "512", "--queue", str(4 * P)]
else:
    exe = args.bin or "bench/.peer/bin/llama-server"
    cmd = [exe, "-m", args.model, "--port", str(port), "--host", "127.0.0.1", "-t", args.threads,
           "-tb", args.threads, "-np", str(P), "-c", str(512 * P), "--no-webui"]
if not os.access(exe, os.X_OK):
    sys.exit("%s not found (build it: cmake --build build / tools/build_peer.sh)" % exe)
log = open("/tmp/server-throughput-%d.log" % os.getpid(), "w+")
srv = subprocess.Popen(cmd, stdout=log, stderr=log)


def get(path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    c.request("GET", path)
    r = c.getresponse()
    r.read()
    return r.status


t_end = time.time() + 120
while True:
    try:
        if get("/health") == 200:
            break
    except OSError:
        pass
    if srv.poll() is not None or time.time() > t_end:
        log.seek(0)
        sys.exit("server did not start: " + log.read()[-2000:])
    time.sleep(0.1)


def stream(i, out):
    body = json.dumps({"prompt": "Write a story about a dragon number %d." % i, "max_tokens": args.tokens,
                       "temperature": 0.8, "seed": i, "stream": True, "ignore_eos": True,
                       "stream_options": {"include_usage": True}})
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.time()
    c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
    r = c.getresponse()
    buf = b""
    chunks = usage = 0
    first = None
    while True:
        d = r.read1(65536)
        if not d:
            break
        buf += d
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            if not ev.startswith(b"data: ") or ev == b"data: [DONE]":
                continue
            j = json.loads(ev[6:])
            if j.get("usage"):
                usage = j["usage"].get("completion_tokens", 0)
            if j.get("choices") and j["choices"][0].get("text"):
                chunks += 1
                if first is None:
                    first = time.time() - t0
    out[i] = (usage or chunks, time.time() - t0, first)


def run(n):
    out = {}
    ths = [threading.Thread(target=stream, args=(1000 * n + i, out)) for i in range(n)]
    t0 = time.time()
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    wall = time.time() - t0
    toks = sum(v[0] for v in out.values())
    if len(out) != n or any(v[0] != args.tokens for v in out.values()):
        sys.exit("not every stream generated %d tokens: %r" % (args.tokens, out))
    return toks / wall, toks, wall, max(v[2] or 0 for v in out.values())


try:
    run(1)  # warm-up
    res = {}
    for n in (1, P):
        best = max((run(n) for _ in range(args.rounds)), key=lambda x: x[0])
        res[n] = best
        print("%s: %d stream%s: %d tokens in %.2f s = %.1f tok/s (first token after %.2f s at most)"
              % (args.server, n, "" if n == 1 else "s", best[1], best[2], best[0], best[3]), flush=True)
    ratio = res[P][0] / res[1][0]
    print("%s: %d streams / 1 stream = %.2fx" % (args.server, P, ratio))
    if args.json:
        print(json.dumps({"server": args.server, "streams": P, "tokens": args.tokens, "threads": args.threads,
                          "tok_s_1": round(res[1][0], 1), "tok_s_n": round(res[P][0], 1),
                          "ratio": round(ratio, 2)}))
finally:
    srv.send_signal(signal.SIGTERM)
    try:
        srv.wait(30)
    except subprocess.TimeoutExpired:
        srv.kill()
