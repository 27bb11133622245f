#!/usr/bin/env bash
# The chat page of codi serve in headless chromium (tests/server_page_test.py).
#
#   bash tests/cli_server_page.sh path/to/codi      (from the repository root)
#
# Fails (never skips) without selenium / chromium / chromium-driver: .ci/run
# installs them.

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

HOME=${HOME:-$TMP} TMPDIR=$TMP timeout -k 5 300 python3 "$(dirname "$0")/server_page_test.py" "$CODI" "$MODEL" "$THREADS"
