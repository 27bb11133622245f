#!/usr/bin/env python3
"""Bounded load test of `codi serve` on loopback (standard library only).

    python3 bench/server_load.py --codi build/codi -m MODEL [--clients 64]
        [--requests 8] [--max-tokens 12] [--parallel 8] [-t 2] [--time-limit 300]

Starts a server on a free port, then CLIENTS threads send REQUESTS requests
each, mixed: streamed chat, non-streamed completions, clients that hang up
mid-stream, and malformed bodies. Every request must get a complete answer
or a well-formed OpenAI error (503 with Retry-After counts as well formed);
the server must stay up, and its RSS after the run must be within 10% of
its RSS after a warm-up round of 2 requests per client. Exit status 0 when all holds.
"""
import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("--codi", default="build/codi")
ap.add_argument("-m", "--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
ap.add_argument("--clients", type=int, default=64)
ap.add_argument("--requests", type=int, default=8)
ap.add_argument("--max-tokens", type=int, default=12)
ap.add_argument("--parallel", type=int, default=8)
ap.add_argument("-t", "--threads", default="2")
ap.add_argument("--queue", type=int, default=64)
ap.add_argument("--time-limit", type=float, default=300)
args = ap.parse_args()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1))


log = open("/tmp/codi-server-load-%d.log" % os.getpid(), "w+")
srv = subprocess.Popen([args.codi, "serve", "-m", args.model, "--port", "0", "-t", args.threads,
                        "--parallel", str(args.parallel), "--ctx-per-slot", "512",
                        "--queue", str(args.queue)], stderr=log, stdout=subprocess.DEVNULL)
port = None
for _ in range(600):
    log.seek(0)
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
    if m:
        port = int(m.group(1))
        break
    if srv.poll() is not None:
        break
    time.sleep(0.05)
if not port:
    log.seek(0)
    sys.exit("server did not start: " + log.read())

deadline = time.time() + args.time_limit
lock = threading.Lock()
stats = {"ok": 0, "error_ok": 0, "busy_503": 0, "hangup": 0, "bad": 0, "tokens": 0}
bad = []


def record(kind, why=None):
    with lock:
        stats[kind] += 1
        if why and len(bad) < 20:
            bad.append(why)


def well_formed_error(status, data, headers):
    try:
        e = json.loads(data)["error"]
        ok = isinstance(e["message"], str) and "type" in e
    except Exception:  # noqa: BLE001
        return False
    return ok and (status != 503 or "Retry-After" in headers)


def request(kind, rnd):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=max(5, deadline - time.time()))
    n = rnd.randint(1, args.max_tokens)
    if kind == "stream":
        body = json.dumps({"messages": [{"role": "user", "content": "Say something about %d." % rnd.randint(0, 999)}],
                           "max_tokens": n, "stream": True, "temperature": 0.8,
                           "stream_options": {"include_usage": True}})
        path = "/v1/chat/completions"
    elif kind == "plain":
        body = json.dumps({"prompt": "Number %d is" % rnd.randint(0, 999), "max_tokens": n})
        path = "/v1/completions"
    else:
        body = rnd.choice(['{"messages": [', '[]', '{"messages": "x"}', '{"prompt": 5}',
                           '{"prompt": "a", "max_tokens": -3}', '\xff', '{' * 3000])
        path = rnd.choice(["/v1/chat/completions", "/v1/completions"])
    c.request("POST", path, body=body.encode("utf-8", "surrogateescape") if isinstance(body, str) else body,
              headers={"Content-Type": "application/json"})
    r = c.getresponse()
    h = dict(r.getheaders())
    if kind == "malformed":
        d = r.read()
        if r.status == 400 and well_formed_error(r.status, d, h):
            record("error_ok")
        else:
            record("bad", "malformed -> %d %r" % (r.status, d[:200]))
        return
    if r.status != 200:
        d = r.read()
        if r.status == 503 and well_formed_error(r.status, d, h):
            record("busy_503")
        else:
            record("bad", "%s -> %d %r" % (kind, r.status, d[:200]))
        return
    if kind == "plain":
        j = json.loads(r.read())
        if j["choices"][0]["finish_reason"] in ("stop", "length") and "usage" in j:
            record("ok")
            with lock:
                stats["tokens"] += j["usage"]["completion_tokens"]
        else:
            record("bad", "plain: %r" % j)
        return
    hang = rnd.random() < 0.3
    got = b""
    while True:
        chunk = r.read1(4096) if hasattr(r, "read1") else r.read(4096)
        if not chunk:
            break
        got += chunk
        if hang and b"data:" in got:
            c.sock.shutdown(socket.SHUT_RDWR)
            c.close()
            record("hangup")
            return
    ev = [e for e in got.decode().split("\n\n") if e.strip()]
    if ev and ev[-1] == "data: [DONE]" and "error" not in ev[-2]:
        record("ok")
        u = json.loads(ev[-2][6:]).get("usage") or {}
        with lock:
            stats["tokens"] += u.get("completion_tokens", 0)
    else:
        record("bad", "stream: %r" % got[-300:])


def client(i, n_req=None):
    rnd = random.Random(i)
    for _ in range(n_req or args.requests):
        if time.time() > deadline:
            record("bad", "time limit")
            return
        kind = rnd.choices(["stream", "plain", "malformed"], [0.5, 0.3, 0.2])[0]
        try:
            request(kind, rnd)
        except Exception as e:  # noqa: BLE001
            record("bad", "%s: %s: %s" % (kind, type(e).__name__, e))


# Warm-up: one short round of the same mix (touches the slots' KV pages,
# the allocator's arenas and thread stacks), then RSS.
ths = [threading.Thread(target=client, args=(1000 + i, 2)) for i in range(args.clients)]
for t in ths:
    t.start()
for t in ths:
    t.join(max(1, deadline - time.time()))
for k in stats:
    stats[k] = 0
del bad[:]
time.sleep(0.5)
rss0 = rss_kib(srv.pid)
t0 = time.time()
ths = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
for t in ths:
    t.start()
for t in ths:
    t.join(max(1, deadline - time.time()))
wall = time.time() - t0
time.sleep(0.5)
alive = srv.poll() is None
rss1 = rss_kib(srv.pid) if alive else 0
hc = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
hc.request("GET", "/metrics")
metrics = hc.getresponse().read().decode() if alive else ""
busy = re.search(r"^codi_slots_busy (\d+)", metrics, re.M)
srv.send_signal(signal.SIGTERM)
try:
    rc = srv.wait(30)
except subprocess.TimeoutExpired:
    srv.kill()
    rc = "hung"
print("requests: %d clients x %d = %d in %.1f s; %s" % (args.clients, args.requests,
      args.clients * args.requests, wall, json.dumps(stats)))
print("generated %d tokens: %.1f tok/s aggregate" % (stats["tokens"], stats["tokens"] / wall))
print("RSS after warm-up %d KiB, after the run %d KiB (%+.1f%%)" % (rss0, rss1, 100.0 * (rss1 - rss0) / rss0))
print("slots busy after the run: %s; exit status after SIGTERM: %s" % (busy.group(1) if busy else "?", rc))
fails = list(bad)
if not alive:
    fails.append("server died")
if rss1 > rss0 * 1.10:
    fails.append("RSS grew more than 10%")
if not busy or busy.group(1) != "0":
    fails.append("slots still busy")
if rc != 0:
    fails.append("exit status %r" % rc)
for f in fails:
    print("FAIL " + f)
sys.exit(1 if fails else 0)
