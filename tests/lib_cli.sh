# shellcheck shell=bash disable=SC2034
# Shared helpers for the CLI tests (tests/cli_*.sh). Sourced, not run.
#
#   source tests/lib_cli.sh "$@"     (first argument: path to the codi binary)
#
# Sets CODI, MODEL, TMP (a private mktemp -d directory removed on exit),
# PASS/FAIL counters, and defines:
#   ok NAME / ko NAME WHY...      record a result
#   run_capture CMD...            run CMD, stdout -> $TMP/out, stderr -> $TMP/err,
#                                 exit status -> $RC
#   finish                        print "N passed, M failed", exit 1 on failure
#   gguf_info FILE                python3 (stdlib) GGUF parser; prints
#                                 "name offset" lines (see below)
#   patch_bytes FILE OFFSET HEX   overwrite bytes at OFFSET in place
#   open_stdin FIFO TEXT          start a writer that writes TEXT into FIFO
#                                 and then keeps it open (never EOF); its
#                                 pid is $WRITER; stop it with close_stdin

set -u

CODI=${1:-build/codi}
case "$CODI" in /*) ;; *) CODI="$PWD/$CODI" ;; esac
MODEL=${CODI_TEST_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${CODI_TEST_THREADS:-2}
PASS=0
FAIL=0
RC=0

if [ ! -x "$CODI" ]; then
    echo "FATAL: codi binary '$CODI' not found or not executable" >&2
    exit 1
fi
if [ ! -f "$MODEL" ]; then
    echo "FATAL: model '$MODEL' missing (run tools/fetch_models.sh)" >&2
    exit 1
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/codi-cli-test.XXXXXX") || exit 1
BG_PIDS=""    # background helpers (FIFO writers, ...) killed on exit
cleanup() {
    local p
    for p in $BG_PIDS; do
        kill "$p" 2>/dev/null
    done
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

ok() {
    PASS=$((PASS + 1))
    printf 'ok   %s\n' "$1"
}

ko() {
    local name=$1
    shift
    FAIL=$((FAIL + 1))
    printf 'FAIL %s: %s\n' "$name" "$*"
    if [ -s "$TMP/err" ]; then
        printf '     stderr: '
        head -c 1500 "$TMP/err" | sed '2,$s/^/             /'
        echo
    fi
    if [ -s "$TMP/out" ]; then
        printf '     stdout: '
        head -c 600 "$TMP/out" | sed '2,$s/^/             /'
        echo
    fi
}

run_capture() {
    "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    RC=$?
}

finish() {
    echo "$PASS passed, $FAIL failed"
    [ "$FAIL" -eq 0 ]
    exit $?
}

# gguf_info FILE: walk a GGUF file (v2/v3, little endian) with the Python
# standard library and print one "name value" line per item:
#   size N                 file size
#   header_end N           offset just after magic/version/counts
#   kv_value.KEY N         offset of KEY's value (for strings: of the u64 length)
#   kv_end N               offset after the last key/value
#   tensor_type.NAME N     offset of tensor NAME's u32 type id
#   tensors_end N          offset after the tensor table
#   data_start N           first byte of the tensor data (aligned)
gguf_info() {
    python3 - "$1" <<'PY'
import struct, sys
path = sys.argv[1]
with open(path, "rb") as f:
    b = f.read()
p = 0
def rd(fmt):
    global p
    v = struct.unpack_from("<" + fmt, b, p)
    p += struct.calcsize("<" + fmt)
    return v[0]
def rstr():
    global p
    n = rd("Q")
    s = b[p:p + n]
    p += n
    return s.decode("utf-8", "replace")
SIZES = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "B", 10: "Q", 11: "q", 12: "d"}
def skip_val(t):
    global p
    if t in SIZES:
        return rd(SIZES[t])
    if t == 8:
        return rstr()
    if t == 9:
        at = rd("I")
        n = rd("Q")
        if at in SIZES:
            p += n * struct.calcsize(SIZES[at])
        else:
            for _ in range(n):
                skip_val(at)
        return None
    raise SystemExit("unknown kv type %d at %d" % (t, p))
assert b[:4] == b"GGUF", "not GGUF"
p = 4
ver = rd("I")
n_t = rd("Q")
n_kv = rd("Q")
print("size", len(b))
print("header_end", p)
align = 32
for _ in range(n_kv):
    key = rstr()
    t = rd("I")
    print("kv_value." + key, p)
    v = skip_val(t)
    if key == "general.alignment":
        align = v
print("kv_end", p)
for _ in range(n_t):
    name = rstr()
    nd = rd("I")
    p += 8 * nd
    print("tensor_type." + name, p)
    p += 4 + 8
print("tensors_end", p)
print("data_start", (p + align - 1) // align * align)
PY
}

# patch_bytes FILE OFFSET HEX: overwrite len(HEX)/2 bytes at OFFSET.
patch_bytes() {
    python3 - "$1" "$2" "$3" <<'PY'
import sys
path, off, hx = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "r+b") as f:
    f.seek(off)
    f.write(bytes.fromhex(hx))
PY
}

# open_stdin FIFO TEXT: background writer that sends TEXT and then holds the
# FIFO open without writing (the reader never sees end of file).
open_stdin() {
    [ -p "$1" ] || mkfifo "$1"
    { printf '%s' "$2"; exec sleep 300; } >"$1" 2>/dev/null &
    WRITER=$!
    BG_PIDS="$BG_PIDS $WRITER"
}

close_stdin() {
    kill "$WRITER" 2>/dev/null
    wait "$WRITER" 2>/dev/null
}
