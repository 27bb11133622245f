#!/usr/bin/env python3
"""End-to-end tests of `codi serve` with the official openai client.

    python3 tests/server_test.py path/to/codi MODEL [THREADS]

Starts real servers on free loopback ports (--port 0, the port is read from
the server's "listening on" line), runs each check, and fails (exit 1) when
any check fails -- including when the openai package is missing.
"""
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

CODI, MODEL = sys.argv[1], sys.argv[2]
THREADS = sys.argv[3] if len(sys.argv) > 3 else "2"
KEY = "test-key-123"
QUICK = bool(os.environ.get("CODI_TEST_QUICK"))  # sanitizer runs: fewer tokens
N_LOAD = 16 if QUICK else 64
PASS = FAIL = 0


def ok(name):
    global PASS
    PASS += 1
    print("ok   " + name, flush=True)


def ko(name, why):
    global FAIL
    FAIL += 1
    print("FAIL %s: %s" % (name, why), flush=True)


def check(name, fn):
    try:
        r = fn()
        if r is None or r is True:
            ok(name)
        else:
            ko(name, r)
    except Exception as e:  # noqa: BLE001 - any exception is a failed check
        ko(name, "%s: %s" % (type(e).__name__, e))


try:
    import openai
except ImportError as e:
    print("FAIL openai: the openai package is not importable (%s); .ci/run installs it" % e)
    sys.exit(1)


class Server:
    def __init__(self, *args):
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"),
                                     "codi-serve-%d-%d.log" % (os.getpid(), id(self))), "w+")
        self.p = subprocess.Popen([CODI, "serve", "-m", MODEL, "--port", "0", "-t", THREADS] + list(args),
                                  stdout=subprocess.DEVNULL, stderr=self.log)
        t_end = time.time() + 60
        self.port = None
        while time.time() < t_end and self.p.poll() is None:
            self.log.seek(0)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", self.log.read())
            if m:
                self.port = int(m.group(1))
                break
            time.sleep(0.05)
        if not self.port:
            self.log.seek(0)
            raise RuntimeError("server did not start: " + self.log.read()[-2000:])

    def stderr(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self, timeout=20):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return "hung"


def raw(port, method, path, body=None, headers=None, timeout=60):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"Authorization": "Bearer " + KEY}
    if headers is not None:
        h = headers
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
        h["Content-Type"] = "application/json"
    c.request(method, path, body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, dict(r.getheaders()), data


def metrics(port):
    _, _, d = raw(port, "GET", "/metrics")
    out = {}
    for line in d.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split()
            out[k] = float(v)
    return out


def error_of(status, data, want_status, want_code=None):
    if status != want_status:
        return "status %d, expected %d: %r" % (status, want_status, data[:300])
    j = json.loads(data)
    e = j.get("error")
    if not isinstance(e, dict) or not isinstance(e.get("message"), str) or "type" not in e:
        return "not an OpenAI error object: %r" % data[:300]
    if want_code and e.get("code") != want_code:
        return "code %r, expected %r" % (e.get("code"), want_code)
    return None


CHAT = [{"role": "user", "content": "What is the capital of France?"}]

srv = Server("--parallel", "4", "--ctx-per-slot", "512", "--api-key", KEY, "--queue", "16")
base = "http://127.0.0.1:%d/v1" % srv.port
client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=120)
results = {}


def t_chat():
    r = client.chat.completions.create(model="x", messages=CHAT, max_tokens=24, temperature=0)
    c = r.choices[0]
    results["chat"] = c.message.content
    if not c.message.content or c.message.role != "assistant":
        return "empty answer: %r" % r
    if c.finish_reason not in ("stop", "length"):
        return "finish_reason %r" % c.finish_reason
    if not (r.usage and r.usage.prompt_tokens > 0 and 0 < r.usage.completion_tokens <= 24
            and r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens):
        return "bad usage %r" % r.usage


def t_stream():
    chunks = list(client.chat.completions.create(model="x", messages=CHAT, max_tokens=24,
                                                 temperature=0, stream=True))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    fins = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    if len(chunks) < 3:
        return "only %d chunks" % len(chunks)
    if fins != [fins[-1]] or fins[-1] not in ("stop", "length"):
        return "finish reasons %r" % fins
    if text != results.get("chat"):
        return "streamed %r differs from non-streamed %r" % (text, results.get("chat"))


def t_stream_done():
    st, h, d = raw(srv.port, "POST", "/v1/chat/completions",
                   {"messages": CHAT, "max_tokens": 8, "stream": True,
                    "stream_options": {"include_usage": True}})
    if st != 200 or not h.get("Content-Type", "").startswith("text/event-stream"):
        return "status %d headers %r" % (st, h)
    events = [e for e in d.decode().split("\n\n") if e.strip()]
    if events[-1] != "data: [DONE]":
        return "last event %r" % events[-1]
    last = json.loads(events[-2][6:])
    if last.get("usage", {}).get("completion_tokens", 0) < 1:
        return "no usage chunk: %r" % events[-2]


def t_completions():
    r = client.completions.create(model="x", prompt="The capital of France is", max_tokens=12,
                                  temperature=0)
    if not r.choices[0].text or r.usage.completion_tokens < 1:
        return "empty: %r" % r
    if "Paris" not in r.choices[0].text:  # llama.cpp's greedy answer too
        return "greedy continuation lacks 'Paris': %r" % r.choices[0].text
    chunks = list(client.completions.create(model="x", prompt="The capital of France is",
                                            max_tokens=12, temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    if text != r.choices[0].text:
        return "stream %r vs %r" % (text, r.choices[0].text)


def t_stop():
    r = client.completions.create(model="x", prompt="1, 2, 3, 4, 5,", max_tokens=30,
                                  temperature=0, stop=[" 8"])
    t = r.choices[0].text
    if " 8" in t or r.choices[0].finish_reason != "stop" or "7" not in t:
        return "text %r finish %r" % (t, r.choices[0].finish_reason)


def t_utf8():
    """Emoji and CJK take several tokens each: a streamed piece never ends
    inside a character (no U+FFFD, held back until complete), and the
    pieces add up to the non-streamed text."""
    for prompt in ("Emoji list: \U0001F600 \U0001F603 \U0001F604 \U0001F601 \U0001F606",
                   "\u65e5\u672c\u8a9e\u306e\u6587\u7ae0: \u6771\u4eac\u306f"):
        st, _, d = raw(srv.port, "POST", "/v1/completions",
                       {"prompt": prompt, "max_tokens": 24, "temperature": 0, "stream": True,
                        "stream_options": {"include_usage": True}})
        evs = [json.loads(e[6:]) for e in d.decode("utf-8").split("\n\n") if e.startswith("data: {")]
        parts = [e["choices"][0]["text"] for e in evs if e.get("choices")]
        n_tok = evs[-1]["usage"]["completion_tokens"]
        whole = client.completions.create(model="x", prompt=prompt, max_tokens=24, temperature=0)
        if any("\ufffd" in x for x in parts):
            return "broken character in %r" % parts
        if "".join(parts) != whole.choices[0].text:
            return "stream %r vs %r" % ("".join(parts), whole.choices[0].text)
        if len([x for x in parts if x]) >= n_tok:
            return "no piece was held back for %r (%d pieces, %d tokens)" % (prompt, len(parts), n_tok)


def t_sampling():
    a = client.completions.create(model="x", prompt="Once upon a time", max_tokens=16,
                                  temperature=1.0, top_p=0.9, seed=42)
    b = client.completions.create(model="x", prompt="Once upon a time", max_tokens=16,
                                  temperature=1.0, top_p=0.9, seed=42)
    if a.choices[0].text != b.choices[0].text:
        return "same seed, different text: %r / %r" % (a.choices[0].text, b.choices[0].text)


def t_models():
    m = client.models.list()
    ids = [x.id for x in m.data]
    if ids != [os.path.basename(MODEL)[:-5]]:
        return "models %r" % ids


def t_auth():
    bad = openai.OpenAI(base_url=base, api_key="wrong", max_retries=0)
    try:
        bad.chat.completions.create(model="x", messages=CHAT, max_tokens=4)
        return "no error with a wrong key"
    except openai.AuthenticationError as e:
        if e.status_code != 401:
            return "status %r" % e.status_code
    st, _, d = raw(srv.port, "GET", "/v1/models", headers={})
    return error_of(st, d, 401, "invalid_api_key")


def t_long_prompt():
    try:
        client.completions.create(model="x", prompt="hello " * 2000, max_tokens=4)
        return "no error for a prompt longer than the slot"
    except openai.BadRequestError as e:
        if e.status_code != 400 or e.code != "context_length_exceeded":
            return "wrong error: %s" % e


def t_bad_input():
    P = srv.port
    cases = [
        ("malformed JSON", "POST", "/v1/chat/completions", '{"messages": [', 400, "invalid_json"),
        ("not an object", "POST", "/v1/chat/completions", "[1,2]", 400, "invalid_json"),
        ("empty body", "POST", "/v1/completions", "", 400, "invalid_json"),
        ("data after the JSON value", "POST", "/v1/completions", '{"prompt": "hi"} x', 400, "invalid_json"),
        ("NUL bytes after the JSON value", "POST", "/v1/completions", '{"prompt": "hi"}\x00\x00', 400,
         "invalid_json"),
        ("missing messages", "POST", "/v1/chat/completions", {"model": "x"}, 400, "invalid_value"),
        ("messages wrong type", "POST", "/v1/chat/completions", {"messages": "hi"}, 400, "invalid_value"),
        ("message without role", "POST", "/v1/chat/completions", {"messages": [{"content": "x"}]}, 400, None),
        ("max_tokens wrong type", "POST", "/v1/chat/completions",
         {"messages": CHAT, "max_tokens": "ten"}, 400, "invalid_value"),
        ("temperature out of range", "POST", "/v1/completions", {"prompt": "a", "temperature": 7}, 400, None),
        ("n = 2", "POST", "/v1/completions", {"prompt": "a", "n": 2}, 400, None),
        ("stop wrong type", "POST", "/v1/completions", {"prompt": "a", "stop": 5}, 400, None),
        ("prompt missing", "POST", "/v1/completions", {"max_tokens": 3}, 400, None),
        ("empty prompt", "POST", "/v1/completions", {"prompt": ""}, 400, None),
        ("invalid UTF-8", "POST", "/v1/completions", b'{"prompt": "\xff\xfe"}', 400, "invalid_utf8"),
        ("deep nesting", "POST", "/v1/completions", "[" * 5000 + "]" * 5000, 400, None),
        ("unknown path", "GET", "/v2/nothing", None, 404, "not_found"),
        ("wrong method", "GET", "/v1/chat/completions", None, 405, None),
    ]
    errs = []
    for name, m, path, body, want, code in cases:
        try:
            st, _, d = raw(P, m, path, body)
            e = error_of(st, d, want, code)
        except Exception as ex:  # noqa: BLE001
            e = "%s: %s" % (type(ex).__name__, ex)
        if e:
            errs.append("%s: %s" % (name, e))
    for chunked in (False, True):
        try:
            st, d = post_big(P, 2 << 20, chunked)
            e = error_of(st, d, 413, "body_too_large")
        except Exception as ex:  # noqa: BLE001
            e = "%s: %s" % (type(ex).__name__, ex)
        if e:
            errs.append("huge body (%s): %s" % ("chunked" if chunked else "Content-Length", e))
    # unknown fields are ignored
    st, _, d = raw(P, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 2, "frobnicate": [1]})
    if st != 200:
        errs.append("unknown field: status %d" % st)
    # headers dribbled byte by byte, then a normal request
    s = socket.create_connection(("127.0.0.1", P), timeout=10)
    for ch in b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n":
        s.send(bytes([ch]))
        time.sleep(0.005)
    resp = s.recv(4096)
    s.close()
    if not resp.startswith(b"HTTP/1.1 200"):
        errs.append("slow headers: %r" % resp[:100])
    return "; ".join(errs) or None


def post_big(port, n, chunked):
    """POST n bytes to /v1/completions on a raw socket (the server may answer
    and close before it is all sent); return (status, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
    head += b"\r\nTransfer-Encoding: chunked\r\n\r\n" if chunked else b"\r\nContent-Length: %d\r\n\r\n" % n
    try:
        s.sendall(head)
        piece = b"x" * 65536
        for _ in range(n // len(piece)):
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
        if chunked:
            s.sendall(b"0\r\n\r\n")
    except OSError:
        pass
    got = b""
    try:
        while True:
            c = s.recv(65536)
            if not c:
                break
            got += c
            h, _, body = got.partition(b"\r\n\r\n")
            m = re.search(rb"Content-Length: (\d+)", h, re.I)
            if m and len(body) >= int(m.group(1)):
                break
    except OSError:
        pass
    s.close()
    h, _, body = got.partition(b"\r\n\r\n")
    return int(h.split()[1]), body


def t_page():
    st, h, d = raw(srv.port, "GET", "/", headers={})
    if st != 200 or not h.get("Content-Type", "").startswith("text/html") or b"/v1/chat/completions" not in d:
        return "GET / -> %d %r" % (st, h)


def t_health_metrics():
    st, _, d = raw(srv.port, "GET", "/health", headers={})
    if st != 200 or json.loads(d).get("status") != "ok":
        return "health %d %r" % (st, d)
    m = metrics(srv.port)
    for k in ("codi_requests_total", "codi_tokens_generated_total", "codi_queue_depth",
              "codi_slots_busy", "codi_tokens_per_second"):
        if k not in m:
            return "metric %s missing" % k
    if m["codi_tokens_generated_total"] <= 0:
        return "no tokens counted"


def stream_socket(port, body):
    """Start a streaming request on a raw socket; return it after the first
    bytes of the answer arrived."""
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
    got = b""
    while b"data:" not in got:
        chunk = s.recv(4096)
        if not chunk:
            break
        got += chunk
    return s, got


def t_disconnect():
    before = metrics(srv.port)
    s, got = stream_socket(srv.port, {"prompt": "Tell me a long story.", "max_tokens": 400,
                                      "temperature": 0.8, "stream": True, "ignore_eos": True})
    if b"200 OK" not in got:
        return "stream did not start: %r" % got[:200]
    s.close()
    t0 = time.time()
    while time.time() - t0 < 5:
        m = metrics(srv.port)
        if m["codi_slots_busy"] == 0 and m["codi_requests_cancelled_total"] > before["codi_requests_cancelled_total"]:
            break
        time.sleep(0.05)
    else:
        return "slot still busy 5 s after the client left: %r" % m
    freed = time.time() - t0
    r = client.chat.completions.create(model="x", messages=CHAT, max_tokens=8, temperature=0)
    if not r.choices[0].message.content:
        return "no answer after the disconnect"
    print("     slot freed %.2f s after the client left" % freed)


def t_prefill_interleaved():
    """A long prompt is prefilled in chunks between decode steps: a stream
    that is already running keeps getting tokens while it is read."""
    s, got = stream_socket(srv.port, {"prompt": "Once upon a time", "max_tokens": 400,
                                      "stream": True, "ignore_eos": True})
    times = []
    stop = threading.Event()

    def reader():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                d = s.recv(65536)
            except socket.timeout:
                continue
            if not d:
                break
            times.append((time.time(), d.count(b"data: ")))
    th = threading.Thread(target=reader)
    th.start()
    time.sleep(0.3)
    t0 = time.time()
    st, _, d = raw(srv.port, "POST", "/v1/completions", {"prompt": "word " * 450, "max_tokens": 1})
    t1 = time.time()
    stop.set()
    th.join(10)
    s.close()
    if st != 200:
        return "long prompt: %d %r" % (st, d[:200])
    n_prompt = json.loads(d)["usage"]["prompt_tokens"]
    during = sum(n for t, n in times if t0 <= t <= t1)
    if during < 4:
        return "the running stream got %d events while %d prompt tokens were read (%.2f s)" % (
            during, n_prompt, t1 - t0)
    print("     %d stream events during a %d-token prefill (%.2f s)" % (during, n_prompt, t1 - t0))


def gen_stream(n_tok, out, i):
    t0 = time.time()
    n = 0
    first = None
    for ch in client.completions.create(model="x", prompt="Write a story about a dragon number %d." % i,
                                        max_tokens=n_tok, temperature=0.7, seed=i, stream=True,
                                        stream_options={"include_usage": True},
                                        extra_body={"ignore_eos": True}):
        if ch.choices and ch.choices[0].text and first is None:
            first = time.time() - t0
        if ch.usage:
            n = ch.usage.completion_tokens
    out[i] = (n, time.time() - t0, first)


def t_load():
    one = {}
    t0 = time.time()
    gen_stream(N_LOAD, one, 0)
    t1 = time.time() - t0
    many = {}
    ths = [threading.Thread(target=gen_stream, args=(N_LOAD, many, i)) for i in range(8)]
    t0 = time.time()
    for t in ths:
        t.start()
    for t in ths:
        t.join(300)
    t8 = time.time() - t0
    if len(many) != 8 or any(v[0] != N_LOAD for v in many.values()):
        return "not every stream completed: %r" % many
    r1 = one[0][0] / t1
    r8 = sum(v[0] for v in many.values()) / t8
    print("     1 stream: %d tokens in %.2f s = %.1f tok/s; 8 streams: %d tokens in %.2f s = %.1f tok/s (%.2fx)"
          % (one[0][0], t1, r1, sum(v[0] for v in many.values()), t8, r8, r8 / r1))


for name, fn in [("chat completion", t_chat), ("streaming chat completion", t_stream),
                 ("SSE ends with [DONE] and a usage chunk", t_stream_done),
                 ("completions (plain and streamed)", t_completions), ("stop strings", t_stop), ("UTF-8 split across tokens", t_utf8),
                 ("seeded sampling is reproducible", t_sampling), ("models list", t_models),
                 ("auth failure -> 401", t_auth), ("over-long prompt -> 400", t_long_prompt),
                 ("bad input -> proper HTTP errors", t_bad_input),
                 ("client vanishing mid-stream frees its slot", t_disconnect),
                 ("long prompt prefilled between decode steps", t_prefill_interleaved),
                 ("8 concurrent streams", t_load), ("health and metrics", t_health_metrics),
                 ("chat page at /", t_page)]:
    check(name, fn)

rc = srv.stop()
if rc == 0:
    ok("SIGTERM: exit 0")
else:
    ko("SIGTERM", "exit status %r\n%s" % (rc, srv.stderr()[-2000:]))


def t_queue_full_and_drain():
    s2 = Server("--parallel", "1", "--queue", "1", "--ctx-per-slot", "256")
    try:
        a, _ = stream_socket(s2.port, {"prompt": "Count: 1, 2, 3,", "max_tokens": 30 if QUICK else 120, "stream": True,
                                       "ignore_eos": True})
        b_res = {}

        def queued():
            b_res["r"] = raw(s2.port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 4})
        tb = threading.Thread(target=queued)
        tb.start()
        t0 = time.time()
        while metrics(s2.port)["codi_queue_depth"] < 1 and time.time() - t0 < 10:
            time.sleep(0.02)
        st, h, d = raw(s2.port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 4})
        e = error_of(st, d, 503, "queue_full")
        if not e and "Retry-After" not in h:
            e = "no Retry-After header"
        # SIGTERM while a stream runs: it finishes (drains), then exit 0.
        s2.p.send_signal(signal.SIGTERM)
        # While it drains, new connections are still answered: /health and
        # new generation requests with 503 shutting_down.
        t0 = time.time()
        while not e and time.time() - t0 < 5:
            st, h, d = raw(s2.port, "GET", "/health", headers={})
            if st == 503:
                break
            time.sleep(0.02)
        else:
            e = e or "/health did not turn 503 after SIGTERM"
        if not e:
            st, h, d = raw(s2.port, "POST", "/v1/completions", {"prompt": "Hi", "max_tokens": 4})
            e = error_of(st, d, 503, "shutting_down")
            if not e and "Retry-After" not in h:
                e = "no Retry-After on shutting_down"
        rest = b""
        a.settimeout(30)
        while True:
            c = a.recv(65536)
            if not c:
                break
            rest += c
            if b"[DONE]" in rest:
                break
        a.close()
        tb.join(30)
        rc = s2.stop(30)
        if not e and b"data: [DONE]" not in rest:
            e = "running stream was not completed on SIGTERM: %r" % rest[-300:]
        if not e and b_res.get("r", (0,))[0] != 200:
            e = "queued request during drain: %r" % (b_res.get("r"),)
        if not e and rc != 0:
            e = "exit status %r after SIGTERM" % rc
        return e
    finally:
        s2.stop()


check("queue full -> 503 + Retry-After; SIGTERM drains", t_queue_full_and_drain)


def t_start_errors():
    """Bad --host, a port in use, a bad option value: exit status 1 or 2
    and one line on stderr, no traceback of threads left behind."""
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    busy_port = taken.getsockname()[1]
    cases = [(["--host", "999.1.1.1"], 1, "bad address"),
             (["--host", "127.0.0.1", "--port", str(busy_port)], 1, "cannot listen"),
             (["--parallel", "0"], 2, "--parallel"),
             (["--idle-timeout", "x"], 2, "--idle-timeout")]
    try:
        for args, want_rc, want in cases:
            p = subprocess.run([CODI, "serve", "-m", MODEL, "-t", THREADS] + args, capture_output=True,
                               timeout=60, text=True)
            lines = p.stderr.strip().splitlines()
            if p.returncode != want_rc or len(lines) != 1 or want not in lines[0]:
                return "%r: exit %d, stderr %r" % (args, p.returncode, p.stderr[-300:])
    finally:
        taken.close()


check("start-up errors: one line, exit 1/2", t_start_errors)


def t_timeout():
    """--timeout 2, one slot: A runs, B and C wait (sent 1 s apart). A ends
    at its deadline with the text so far and finish_reason "length"; B gets
    the slot and ends the same way at its own deadline; C then gets the slot
    (requests run in order, so one that waits is never past its deadline
    before those ahead of it are) and ends by max_tokens or its deadline."""
    s3 = Server("--parallel", "1", "--queue", "4", "--ctx-per-slot", "2048", "--timeout", "2")
    try:
        res = {}

        def one(k, n):
            t0 = time.time()
            st, _, d = raw(s3.port, "POST", "/v1/completions",
                           {"prompt": "Tell me a story.", "max_tokens": n, "ignore_eos": True})
            res[k] = (st, json.loads(d), time.time() - t0)
        ths = []
        for k, n in (("a", 2000), ("b", 2000), ("c", 4)):
            ths.append(threading.Thread(target=one, args=(k, n)))
            ths[-1].start()
            time.sleep(1.0)
        for t in ths:
            t.join(60)
        for k in "abc":
            st, j, dt = res.get(k, (None, {}, 0))
            fin = j.get("choices", [{}])[0].get("finish_reason")
            n = j.get("usage", {}).get("completion_tokens", 0)
            if st != 200 or fin != "length" or not (0 < n < 2000 if k != "c" else 0 < n <= 4) \
                    or (k != "c" and not 1.5 < dt < 15):
                return "request %s: %r %r after %.1f s" % (k, st, j, dt)
        n = metrics(s3.port).get("codi_requests_timed_out_total")
        if not n or n < 2:
            return "codi_requests_timed_out_total %r, expected 2 or 3" % n
    finally:
        s3.stop()


check("--timeout: running requests cut with 'length'", t_timeout)


def t_keepalive():
    """--idle-timeout 3, the one slot held by a stream for 6 s: two streams
    queued behind it stay open (SSE keep-alive comments every second), and
    the openai client, which skips comments, gets its whole answer."""
    s4 = Server("--parallel", "1", "--queue", "4", "--ctx-per-slot", "4096", "--idle-timeout", "3")
    try:
        cl = openai.OpenAI(base_url="http://127.0.0.1:%d/v1" % s4.port, api_key="x", max_retries=0,
                           timeout=60)
        a, got = stream_socket(s4.port, {"prompt": "Tell me a story.", "max_tokens": 3000,
                                         "stream": True, "ignore_eos": True})
        if b"200 OK" not in got:
            return "the first stream did not start: %r" % got[:200]
        res = {}

        def via_openai():
            res["c"] = list(cl.completions.create(model="x", prompt="Hi", max_tokens=4, stream=True))

        def via_raw():
            res["b"] = raw(s4.port, "POST", "/v1/completions",
                           {"prompt": "Hi", "max_tokens": 4, "stream": True}, timeout=60)
        ths = [threading.Thread(target=via_openai), threading.Thread(target=via_raw)]
        t0 = time.time()
        for t in ths:
            t.start()
        while time.time() - t0 < 6:  # keep reading the first stream
            a.settimeout(max(0.05, 6 - (time.time() - t0)))
            try:
                a.recv(65536)
            except socket.timeout:
                pass
        a.close()  # frees the slot
        for t in ths:
            t.join(60)
        st, _, d = res.get("b", (None, {}, b""))
        chunks = res.get("c")
        if st != 200 or b": keep-alive" not in d or not d.rstrip().endswith(b"data: [DONE]"):
            return "queued raw stream: %r %r" % (st, d[:300])
        if not chunks or chunks[-1].choices[0].finish_reason != "length":
            return "openai stream after the wait: %r" % chunks
        print("     two streams queued for %.1f s with --idle-timeout 3" % (time.time() - t0))
    finally:
        s4.stop()


check("a stream queued past --idle-timeout stays open (keep-alive comments)", t_keepalive)
print("%d passed, %d failed" % (PASS, FAIL))
sys.exit(1 if FAIL else 0)
