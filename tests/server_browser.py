#!/usr/bin/env python3
"""The chat page of `codi serve` in a real browser: headless Debian chromium
driven by selenium (chromium-driver), typing a message and watching the
streamed answer grow.

    python3 tests/server_browser.py path/to/codi MODEL [THREADS]

Fails (exit 1) -- never skips -- when selenium, chromium or chromedriver is
missing: .ci/run installs them.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

CODI, MODEL = sys.argv[1], sys.argv[2]
THREADS = sys.argv[3] if len(sys.argv) > 3 else "2"
KEY = "browser-key-42"
QUESTION = "What is the capital of France?"
CHROMIUM = os.environ.get("CODI_CHROMIUM", "/usr/bin/chromium")
DRIVER = os.environ.get("CODI_CHROMEDRIVER", "/usr/bin/chromedriver")


def fatal(msg):
    print("FAIL " + msg, flush=True)
    sys.exit(1)


try:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError as e:
    fatal("selenium is not importable (%s); .ci/run installs it" % e)
for path in (CHROMIUM, DRIVER):
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        fatal("%s is missing (apt-get install chromium chromium-driver; .ci/run does)" % path)

tmp = tempfile.mkdtemp(prefix="codi-browser-")
log = open(os.path.join(tmp, "serve.log"), "w+")
srv = subprocess.Popen([CODI, "serve", "-m", MODEL, "--port", "0", "-t", THREADS, "--parallel", "2",
                        "--ctx-per-slot", "1024", "--api-key", KEY],
                       stdout=subprocess.DEVNULL, stderr=log)
port = None
t_end = time.time() + 60
while time.time() < t_end and srv.poll() is None and not port:
    log.seek(0)
    m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
    port = m and int(m.group(1))
    time.sleep(0.05)
if not port:
    log.seek(0)
    fatal("server did not start: " + log.read()[-2000:])

opts = Options()
opts.binary_location = CHROMIUM
for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
          "--no-first-run", "--user-data-dir=" + os.path.join(tmp, "profile")):
    opts.add_argument(a)
failures = []
driver = None
try:
    driver = webdriver.Chrome(service=Service(executable_path=DRIVER), options=opts)
    driver.set_page_load_timeout(30)
    driver.get("http://127.0.0.1:%d/" % port)
    # The page asks for the key (this server has --api-key); the model name
    # appears once /v1/models answered with it.
    driver.find_element(By.ID, "key").send_keys(KEY)
    driver.execute_script("document.getElementById('key').dispatchEvent(new Event('change'))")
    driver.find_element(By.ID, "temp").clear()
    driver.find_element(By.ID, "temp").send_keys("0")
    driver.find_element(By.ID, "maxtok").clear()
    driver.find_element(By.ID, "maxtok").send_keys("48")
    # Record every length the answer's text takes while it streams.
    driver.execute_script("""
        window.__lens = [];
        new MutationObserver(() => {
          const a = document.getElementById('answer-1');
          if (a) window.__lens.push(a.textContent.length);
        }).observe(document.getElementById('log'),
                   {childList: true, subtree: true, characterData: true});""")
    box = driver.find_element(By.ID, "input")
    box.send_keys(QUESTION)
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 120).until(
        lambda d: d.execute_script(
            "const a = document.getElementById('answer-1'); return a && a.dataset.done === '1';"))
    ans = driver.find_element(By.ID, "answer-1")
    text = driver.execute_script("return arguments[0].textContent;", ans)
    lens = sorted(set(x for x in driver.execute_script("return window.__lens;") if x > 0))
    print("     answer: %r (%d distinct lengths while streaming)" % (text, len(lens)), flush=True)
    if "error" in (ans.get_attribute("class") or ""):
        failures.append("the page shows an error: %r" % text)
    elif not text.strip():
        failures.append("empty answer")
    else:
        # The same request through the API, not streamed: the same greedy text.
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        c.request("POST", "/v1/chat/completions",
                  json.dumps({"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 48,
                              "temperature": 0}),
                  {"Content-Type": "application/json", "Authorization": "Bearer " + KEY})
        want = json.loads(c.getresponse().read())["choices"][0]["message"]["content"]
        if text != want:
            failures.append("page shows %r, the API answers %r" % (text, want))
    if len(lens) < 3:
        failures.append("answer did not stream (text lengths seen: %r)" % lens)
    want = os.path.basename(MODEL)[:-5]
    try:
        WebDriverWait(driver, 10).until(lambda d: d.find_element(By.ID, "model").text == want)
    except Exception:  # noqa: BLE001
        failures.append("model name on the page: %r, expected %r"
                        % (driver.find_element(By.ID, "model").text, want))
    # A second turn: the conversation goes back with it.
    box.send_keys("And of Italy?")
    box.send_keys(Keys.ENTER)
    WebDriverWait(driver, 120).until(
        lambda d: d.execute_script(
            "const a = document.getElementById('answer-3'); return a && a.dataset.done === '1';"))
    t2 = driver.find_element(By.ID, "answer-3").text
    print("     second answer: %r" % t2, flush=True)
    if not t2.strip() or "error" in (driver.find_element(By.ID, "answer-3").get_attribute("class") or ""):
        failures.append("second turn: %r" % t2)
    if len(driver.find_elements(By.CSS_SELECTOR, "#log .msg")) != 4:
        failures.append("expected 4 messages in the log")
except Exception as e:  # noqa: BLE001 - any exception fails the test
    failures.append("%s: %s" % (type(e).__name__, str(e).splitlines()[0] if str(e) else ""))
finally:
    if driver:
        driver.quit()
    srv.send_signal(signal.SIGTERM)
    try:
        rc = srv.wait(30)
    except subprocess.TimeoutExpired:
        srv.kill()
        rc = "hung"
    if rc != 0:
        log.seek(0)
        failures.append("server exit status %r: %s" % (rc, log.read()[-1000:]))
    shutil.rmtree(tmp, ignore_errors=True)

if failures:
    for f in failures:
        print("FAIL chat page in chromium: " + f)
    sys.exit(1)
print("ok   chat page in chromium: typed a message, the answer streamed in")
