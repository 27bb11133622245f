#!/usr/bin/env python3
"""The chat page of `codi serve` in a real browser: headless Debian chromium
driven by selenium (chromium-driver). Types a message, sends it with Enter
and checks the answer arrives streamed (several SSE chunks rendered).

    python3 tests/server_page_test.py path/to/codi MODEL [THREADS]

Fails (never skips) when selenium or chromium is missing: .ci/run installs
them."""
import os
import re
import subprocess
import sys
import tempfile
import time

CODI, MODEL = sys.argv[1], sys.argv[2]
THREADS = sys.argv[3] if len(sys.argv) > 3 else "2"
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError as e:
    print("FAIL selenium: not importable (%s); .ci/run installs it" % e)
    sys.exit(1)
for exe in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
    if not os.access(exe, os.X_OK):
        print("FAIL browser: %s missing (apt-get install chromium chromium-driver)" % exe)
        sys.exit(1)

log = tempfile.TemporaryFile("w+")
srv = subprocess.Popen([CODI, "serve", "-m", MODEL, "--port", "0", "-t", THREADS, "--parallel", "2",
                        "--ctx-per-slot", "512"], stderr=log, stdout=subprocess.DEVNULL)
driver = None
rc = 1
try:
    port = None
    for _ in range(600):
        log.seek(0)
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
        if m:
            port = int(m.group(1))
            break
        time.sleep(0.05)
    assert port, "server did not start"
    opts = webdriver.ChromeOptions()
    opts.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    driver.set_page_load_timeout(30)
    driver.get("http://127.0.0.1:%d/" % port)
    assert driver.title == "codi chat", "title %r" % driver.title
    t = driver.find_element(By.ID, "temp")
    t.clear()
    t.send_keys("0")
    mt = driver.find_element(By.ID, "maxtok")
    mt.clear()
    mt.send_keys("60")
    box = driver.find_element(By.ID, "input")
    box.send_keys("What is the capital of France?")
    box.send_keys(Keys.ENTER)
    t0 = time.time()
    ans = None
    while time.time() - t0 < 60:
        found = driver.find_elements(By.ID, "answer-1")
        if found and found[0].get_attribute("data-done") == "1":
            ans = found[0]
            break
        time.sleep(0.05)
    assert ans is not None, "no finished answer after 60 s"
    text = ans.text
    chunks = int(ans.get_attribute("data-chunks") or "0")
    cls = ans.get_attribute("class")
    user = driver.find_elements(By.CSS_SELECTOR, ".msg.user")
    assert "error" not in cls, "error shown: %r" % text
    assert user and user[0].text == "What is the capital of France?", "user message not shown"
    assert "Paris" in text, "answer %r" % text
    assert chunks >= 3, "answer arrived in %d chunks, not streamed" % chunks
    print("ok   chat page: streamed answer in %d chunks: %r" % (chunks, text[:80]))
    rc = 0
except Exception as e:  # noqa: BLE001
    print("FAIL chat page: %s: %s" % (type(e).__name__, e))
finally:
    if driver:
        driver.quit()
    srv.terminate()
    try:
        srv.wait(20)
    except subprocess.TimeoutExpired:
        srv.kill()
sys.exit(rc)
