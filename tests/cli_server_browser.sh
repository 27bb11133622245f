#!/usr/bin/env bash
# codi serve's chat page in a real browser: headless chromium driven by
# selenium types a message and watches the answer stream in
# (tests/server_browser.py starts the server on a free loopback port).
#
#   bash tests/cli_server_browser.sh path/to/codi      (from the repository root)
#
# Fails (never skips) when selenium, chromium or chromedriver is missing:
# .ci/run installs them.

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

TMPDIR=$TMP timeout -k 5 300 python3 "$(dirname "$0")/server_browser.py" "$CODI" "$MODEL" "$THREADS"
