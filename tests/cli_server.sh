#!/usr/bin/env bash
# codi serve end to end: the official openai client against a real server
# (tests/server_test.py starts it on a free loopback port).
#
#   bash tests/cli_server.sh path/to/codi      (from the repository root)
#
# Fails (never skips) when python3's openai package is missing: .ci/run
# installs it.

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

TMPDIR=$TMP timeout -k 5 600 python3 "$(dirname "$0")/server_test.py" "$CODI" "$MODEL" "$THREADS"
