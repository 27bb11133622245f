#!/usr/bin/env bash
# End-to-end tests of the codi CLI on bad input.
#
#   bash tests/cli_errors.sh path/to/codi      (from the repository root)
#
# Every case must: exit non-zero but not by a signal (status < 128), print
# nothing on stdout, and print exactly one line on stderr that matches a
# pattern naming the problem. Each command runs under `timeout 60`, so a
# hang is a failure (status 124/137), not a stuck test. Broken model files
# are made on the fly from the real model in a private temporary directory
# (removed on exit): truncated copies (head -c) and copies with single
# fields patched (offsets found by a small python3 stdlib GGUF parser,
# gguf_info in tests/lib_cli.sh).

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

M=$MODEL
T=(-t "$THREADS")

# expect_error NAME PATTERN CMD...: CMD (stdin /dev/null) must fail cleanly
# with one stderr line matching the extended regexp PATTERN (case-insensitive).
expect_error() {
    local name=$1 pat=$2
    shift 2
    timeout -k 5 60 "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    RC=$?
    check_error "$name" "$pat"
}

# check_error NAME PATTERN: judge $RC, $TMP/out, $TMP/err.
check_error() {
    local name=$1 pat=$2 lines
    lines=$(awk 'END { print NR }' "$TMP/err")
    if [ "$RC" -eq 124 ] || [ "$RC" -eq 137 ]; then
        ko "$name" "timed out after 60 s (hang?)"
    elif [ "$RC" -eq 0 ]; then
        ko "$name" "exit status 0, expected an error"
    elif [ "$RC" -ge 128 ]; then
        ko "$name" "killed by a signal / crashed (exit status $RC)"
    elif [ -s "$TMP/out" ]; then
        ko "$name" "exit $RC but printed $(wc -c <"$TMP/out") bytes on stdout, expected none"
    elif [ "$lines" -ne 1 ]; then
        ko "$name" "exit $RC but $lines lines on stderr, expected exactly 1"
    elif ! grep -Eqi -e "$pat" "$TMP/err"; then
        ko "$name" "exit $RC, stderr does not match /$pat/"
    else
        ok "$name (exit $RC): $(head -c 160 "$TMP/err")"
    fi
}

# ------------------------------------------------------------ command line
# No command at all: the usage (several lines) on stderr, status 2.
run_capture "$CODI"
if [ "$RC" -eq 2 ] && [ ! -s "$TMP/out" ] && grep -q '^usage: codi' "$TMP/err"; then
    ok "no command: usage on stderr, exit 2"
else
    ko "no command: usage on stderr, exit 2" "exit $RC"
fi
expect_error "unknown command" "unknown command.*frobnicate" "$CODI" frobnicate -m "$M"
expect_error "unknown flag" "unknown option.*--frobnicate" "$CODI" run -m "$M" -p hi --frobnicate
expect_error "unknown short flag" "unknown option.*-Z" "$CODI" tokenize -m "$M" -p hi -Z
expect_error "flag for another command" "--kl.*(apply|run)" "$CODI" run -m "$M" -p hi --kl x
expect_error "flag missing its value (-m)" "-m.*value" "$CODI" run -p hi -m
expect_error "flag missing its value (-n)" "-n.*value" "$CODI" run -m "$M" -p hi -n
expect_error "flag missing its value (--temp=)" "--temp" "$CODI" run -m "$M" -p hi --temp=
expect_error "value given to a plain flag" "--no-display-prompt.*value" \
    "$CODI" run -m "$M" -p hi --no-display-prompt=1
expect_error "stray argument" "unexpected argument.*stray" "$CODI" run -m "$M" -p hi stray
expect_error "inspect: two files" "unexpected argument" "$CODI" inspect "$M" "$M"
expect_error "inspect: no file" "inspect.*model" "$CODI" inspect

# non-numeric values
expect_error "-n abc" "-n.*abc" "$CODI" run -m "$M" -p hi -n abc
expect_error "-n 12abc" "-n.*12abc" "$CODI" run -m "$M" -p hi -n 12abc
expect_error "-n 1.5" "-n.*1\.5" "$CODI" run -m "$M" -p hi -n 1.5
expect_error "-c abc" "-c.*abc" "$CODI" run -m "$M" -p hi -c abc
expect_error "-c empty" "-c.*''" "$CODI" run -m "$M" -p hi -c ""
expect_error "-t abc" "-t.*abc" "$CODI" run -m "$M" -p hi -t abc
expect_error "--temp abc" "--temp.*abc" "$CODI" run -m "$M" -p hi --temp abc
expect_error "--temp nan" "--temp.*nan" "$CODI" run -m "$M" -p hi --temp nan
expect_error "--seed abc" "--seed.*abc" "$CODI" run -m "$M" -p hi --seed abc
expect_error "--chunks abc" "--chunks.*abc" "$CODI" ppl -m "$M" -f tests/data/eval.txt --chunks abc

# out-of-range values
expect_error "--top-p 2" "--top-p.*2" "$CODI" run -m "$M" -p hi --top-p 2
expect_error "--min-p -0.5" "--min-p" "$CODI" run -m "$M" -p hi --min-p -0.5
expect_error "--temp -1" "--temp" "$CODI" run -m "$M" -p hi --temp -1
expect_error "-t 0" "-t.*0" "$CODI" run -m "$M" -p hi -t 0
expect_error "-t 100000" "-t.*100000" "$CODI" run -m "$M" -p hi -t 100000
expect_error "-c 0" "-c.*0" "$CODI" run -m "$M" -p hi -c 0
expect_error "-c -5" "-c.*-5" "$CODI" run -m "$M" -p hi -c -5
expect_error "-n -2" "-n.*-2" "$CODI" run -m "$M" -p hi -n -2
expect_error "-n overflow" "-n.*99999999999999999999" "$CODI" run -m "$M" -p hi -n 99999999999999999999
expect_error "--seed -1" "--seed.*-1" "$CODI" run -m "$M" -p hi --seed -1
expect_error "--top-k -1" "--top-k.*-1" "$CODI" run -m "$M" -p hi --top-k -1

# required / exclusive options
expect_error "tokenize with -p and -f" "-p.*-f|both|exactly one" \
    "$CODI" tokenize -m "$M" -p hi -f tests/data/eval.txt
expect_error "tokenize without -p/-f" "-p.*-f" "$CODI" tokenize -m "$M"
expect_error "tokenize without -m" "-m|model" "$CODI" tokenize -p hi
expect_error "run without -p" "-p" "$CODI" run -m "$M" "${T[@]}"
expect_error "run without -m" "-m|model" "$CODI" run -p hi
expect_error "ppl without -f" "-f" "$CODI" ppl -m "$M" "${T[@]}"
expect_error "ppl with --kl and --kl-base" "--kl" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt --kl "$TMP/a" --kl-base "$TMP/b"
expect_error "ppl -c 2 (too small)" "context|-c" "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 2

# nonexistent files given with -f / --kl / --kl-base
expect_error "run -f nonexistent" "no-such-file\.txt" "$CODI" run -m "$M" -f "$TMP/no-such-file.txt" "${T[@]}"
expect_error "ppl -f nonexistent" "no-such-file\.txt" "$CODI" ppl -m "$M" -f "$TMP/no-such-file.txt" "${T[@]}"
expect_error "tokenize -f nonexistent" "no-such-file\.txt" "$CODI" tokenize -m "$M" -f "$TMP/no-such-file.txt"
expect_error "ppl -f a directory" "$TMP|director" "$CODI" ppl -m "$M" -f "$TMP" "${T[@]}"
expect_error "ppl --kl nonexistent" "no-such-kl" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 16 --chunks 1 --kl "$TMP/no-such-kl" "${T[@]}"
expect_error "ppl --kl-base in a missing directory" "no-such-dir" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 16 --chunks 1 --kl-base "$TMP/no-such-dir/kl" "${T[@]}"

# ------------------------------------------------------------ model files
expect_error "missing model file" "no-such-model.*(no such file|cannot open|not found)" \
    "$CODI" run -m "$TMP/no-such-model.gguf" -p hi "${T[@]}"
expect_error "inspect missing model file" "no-such-model" "$CODI" inspect "$TMP/no-such-model.gguf"
mkdir -p "$TMP/dir.gguf"
expect_error "directory as model" "director|regular file" "$CODI" run -m "$TMP/dir.gguf" -p hi "${T[@]}"
expect_error "inspect a directory" "director|regular file" "$CODI" inspect "$TMP/dir.gguf"
: >"$TMP/empty.gguf"
expect_error "empty model file" "empty|truncat|too small|size 0" "$CODI" run -m "$TMP/empty.gguf" -p hi "${T[@]}"
expect_error "inspect an empty file" "empty|truncat|too small|size 0" "$CODI" inspect "$TMP/empty.gguf"
{ printf 'GGML'; tail -c +5 "$M" | head -c 4096; } >"$TMP/magic.gguf"
expect_error "wrong magic" "magic|not a GGUF" "$CODI" run -m "$TMP/magic.gguf" -p hi "${T[@]}"
expect_error "inspect wrong magic" "magic|not a GGUF" "$CODI" inspect "$TMP/magic.gguf"
head -c 4096 tests/data/eval.txt >"$TMP/text.gguf"
expect_error "text file as model" "magic|not a GGUF" "$CODI" tokenize -m "$TMP/text.gguf" -p hi
{ head -c 4 "$M"; printf '\x63\x00\x00\x00'; tail -c +9 "$M" | head -c 4096; } >"$TMP/version.gguf"
expect_error "unsupported GGUF version 99" "version" "$CODI" inspect "$TMP/version.gguf"

if ! gguf_info "$M" >"$TMP/info"; then
    ko "gguf_info" "cannot parse $M with the python3 helper"
    finish
fi
off() { awk -v k="$1" '$1 == k { print $2 }' "$TMP/info"; }
SIZE=$(off size)
TOK=$(off kv_value.tokenizer.ggml.tokens)
MERGES=$(off kv_value.tokenizer.ggml.merges)
KV_END=$(off kv_end)
TENS_END=$(off tensors_end)
DATA=$(off data_start)

# Truncated copies of the real model. name:length
TRUNC_PAT="truncat|past end|end of file|cannot fit|too small|short|incomplete"
for cut in "in the magic:2" "in the header:14" "after the header:24" \
    "in the first key:40" \
    "in tokenizer.ggml.tokens:$((TOK + 300000))" \
    "in tokenizer.ggml.merges:$((MERGES + 400000))" \
    "at the start of the tensor table:$((KV_END + 30))" \
    "in the middle of the tensor table:$(((KV_END + TENS_END) / 2))" \
    "at the end of the tensor table:$((TENS_END - 5))" \
    "at the start of the tensor data:$((DATA + 1000))" \
    "in the middle of the tensor data:$(((DATA + SIZE) / 2))" \
    "one byte short:$((SIZE - 1))"; do
    what=${cut%:*} len=${cut##*:}
    head -c "$len" "$M" >"$TMP/trunc.gguf"
    expect_error "model truncated $what ($len bytes)" "$TRUNC_PAT" \
        "$CODI" run -m "$TMP/trunc.gguf" -p hi -n 1 "${T[@]}"
    expect_error "inspect model truncated $what" "$TRUNC_PAT" "$CODI" inspect "$TMP/trunc.gguf"
done

# No hang: a broken model given to chat whose stdin stays open (a FIFO with a
# writer that never writes) must fail at once instead of waiting for input.
open_stdin "$TMP/fifo" ""
timeout -k 5 60 "$CODI" chat -m "$TMP/trunc.gguf" "${T[@]}" >"$TMP/out" 2>"$TMP/err" <"$TMP/fifo"
RC=$?
close_stdin
check_error "no hang: chat, broken model, stdin open (timeout 60)" "$TRUNC_PAT"
rm -f "$TMP/trunc.gguf"

# Patched copies: one field changed, then changed back (one 94 MiB copy).
cp "$M" "$TMP/patched.gguf"
P=$TMP/patched.gguf
ARCH=$(off kv_value.general.architecture)
QTYPE=$(off tensor_type.blk.0.attn_q.weight)
EMBTYPE=$(off tensor_type.token_embd.weight)
HKV=$(off kv_value.llama.attention.head_count_kv)
NHEAD=$(off kv_value.llama.attention.head_count)
NLAYER=$(off kv_value.llama.block_count)

# patched_case NAME PATTERN OFFSET NEWHEX OLDHEX [inspect]: patch, run, restore.
patched_case() {
    local name=$1 pat=$2 at=$3 new=$4 old=$5
    patch_bytes "$P" "$at" "$new"
    expect_error "$name" "$pat" "$CODI" run -m "$P" -p hi -n 1 "${T[@]}"
    if [ "${6:-}" = inspect ]; then
        expect_error "inspect: $name" "$pat" "$CODI" inspect "$P"
    fi
    patch_bytes "$P" "$at" "$old"
}

# general.architecture is a string: u64 length, then the bytes.
patched_case "unsupported architecture 'llamb'" "architecture.*llamb" \
    $((ARCH + 8)) 6c6c616d62 6c6c616d61
patched_case "tensor type id 200 (unknown)" "blk\.0\.attn_q\.weight.*type|type.*200" \
    "$QTYPE" c8000000 03000000 inspect
patched_case "tensor type id 0xffffffff" "blk\.0\.attn_q\.weight.*type|type.*4294967295" \
    "$QTYPE" ffffffff 03000000 inspect
patched_case "tensor type id 4 (removed Q4_2)" "blk\.0\.attn_q\.weight.*type" \
    "$QTYPE" 04000000 03000000 inspect
patched_case "token_embd type F32 (size mismatch with the file)" "token_embd|type|size|past end|overlap" \
    "$EMBTYPE" 00000000 08000000
patched_case "head_count_kv 4 (9 % 4 != 0)" "head_count" "$HKV" 04000000 03000000
# head_count_kv 0: the loader may take 0 as "same as head_count" (as for a
# missing key) and then find attn_k's shape wrong; either message will do.
patched_case "head_count_kv 0" "head_count|attn_k.*shape" "$HKV" 00000000 03000000
patched_case "head_count 0" "head_count" "$NHEAD" 00000000 09000000
patched_case "block_count 31 (tensors missing)" "blk\.30|missing|block_count|tensor" \
    "$NLAYER" 1f000000 1e000000
patched_case "block_count 0xffffffff" "block_count|layer" "$NLAYER" ffffffff 1e000000
if cmp -s "$P" "$M"; then ok "patched copy restored"; else ko "patched copy restored" "bytes differ"; fi
rm -f "$P"

# ------------------------------------------------------------ run-time errors
LONG=$(head -c 2000 tests/data/eval.txt)
expect_error "run: prompt longer than the context (-c 16)" "context|-c" \
    "$CODI" run -m "$M" -c 16 -p "$LONG" -n 4 "${T[@]}"
expect_error "run: empty prompt" "empty" "$CODI" run -m "$M" -p "" -n 4 "${T[@]}"

# chat: the first message does not fit the context; stdin stays open.
open_stdin "$TMP/fifo" "$(printf '%s' "$LONG" | tr '\n' ' ')
"
timeout -k 5 60 "$CODI" chat -m "$M" -c 16 -n 4 "${T[@]}" >"$TMP/out" 2>"$TMP/err" <"$TMP/fifo"
RC=$?
close_stdin
check_error "chat: message longer than the context (-c 16), stdin open" "context|-c"

printf 'Too short.\n' >"$TMP/short.txt"
expect_error "ppl: text too short for the context" "tokens|short" \
    "$CODI" ppl -m "$M" -f "$TMP/short.txt" -c 128 "${T[@]}"
: >"$TMP/empty.txt"
expect_error "ppl: empty text" "tokens|short|empty" \
    "$CODI" ppl -m "$M" -f "$TMP/empty.txt" -c 128 "${T[@]}"
expect_error "ppl --kl with a non-KL file" "kl|not a codi" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 16 --chunks 1 --kl tests/data/eval.txt "${T[@]}"
printf 'CODIKL' >"$TMP/tiny.kl"
expect_error "ppl --kl with a 6-byte file" "tiny\.kl|truncat|kl" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 16 --chunks 1 --kl "$TMP/tiny.kl" "${T[@]}"

# A real --kl-base file (2 windows of 16 tokens), then misuse of it.
timeout -k 5 60 "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 16 --chunks 2 \
    --kl-base "$TMP/base.kl" "${T[@]}" >"$TMP/out" 2>"$TMP/err" </dev/null
RC=$?
if [ "$RC" -ne 0 ] || [ ! -s "$TMP/base.kl" ]; then
    ko "make a --kl-base file" "exit $RC"
else
    ok "make a --kl-base file"
    expect_error "ppl --kl with another context size" "context|16|32" \
        "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 32 --chunks 1 --kl "$TMP/base.kl" "${T[@]}"
    tail -c +200 tests/data/eval.txt >"$TMP/other.txt"
    expect_error "ppl --kl with another text" "different|text|token" \
        "$CODI" ppl -m "$M" -f "$TMP/other.txt" -c 16 --chunks 2 --kl "$TMP/base.kl" "${T[@]}"
    # header + tokens + the scored positions of window 1 only: window 2 is
    # cut off. Header 24 bytes, tokens 2*16*4, 7 positions * (8 + 2*49152).
    head -c $((24 + 128 + 7 * (8 + 2 * 49152) + 1000)) "$TMP/base.kl" >"$TMP/cut.kl"
    expect_error "ppl --kl with a file cut in window 2" "^codi: .*(truncat|cut\.kl)" \
        "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 16 --chunks 2 --kl "$TMP/cut.kl" "${T[@]}"
fi

# KV cache options (issue 6)
expect_error "--ubatch 0" "--ubatch.*integer" "$CODI" run -m "$M" -p hi -n 1 --ubatch 0 "${T[@]}"
expect_error "--kv-type unknown" "--kv-type.*f16, q8 or q4.*q5" "$CODI" run -m "$M" -p hi -n 1 --kv-type q5 "${T[@]}"
expect_error "--kv-policy unknown" "--kv-policy.*alisa" "$CODI" run -m "$M" -p hi -n 1 --kv-policy lru "${T[@]}"
expect_error "--kv-budget 0%" "--kv-budget.*percentage" "$CODI" run -m "$M" -p hi -n 1 --kv-budget 0% "${T[@]}"
expect_error "--kv-budget smaller than the window" "budget 20 is too small.*window of 16" \
    "$CODI" run -m "$M" -p hi -n 1 --kv-budget 20 --kv-window 16 "${T[@]}"
expect_error "--kv-smooth on with f16" "smoothing.*q8/q4" "$CODI" run -m "$M" -p hi -n 1 --kv-smooth on "${T[@]}"
expect_error "--kv-keys unknown" "--kv-keys.*channel or token.*rows" "$CODI" run -m "$M" -p hi -n 1 --kv-type q4 --kv-keys rows "${T[@]}"
expect_error "--kv-keys channel with a budget" "per-channel keys.*without a token budget" \
    "$CODI" run -m "$M" -p hi -n 1 --kv-type q4 --kv-keys channel --kv-budget 64 "${T[@]}"
expect_error "--kv-recompute without a budget" "recompute.*needs a token budget" \
    "$CODI" run -m "$M" -p hi -n 1 --kv-recompute 64 "${T[@]}"
expect_error "--kv-recompute 0" "--kv-recompute.*integer.*'0'" \
    "$CODI" run -m "$M" -p hi -n 1 --kv-budget 64 --kv-recompute 0 "${T[@]}"
expect_error "--kv-recompute larger than the context" "recompute interval 1000 is larger than the context size 256" \
    "$CODI" ppl -m "$M" -f tests/data/eval.txt -c 256 --kv-budget 64 --kv-recompute 1000 "${T[@]}"
expect_error "--kv-calib missing file" "cannot open.*nope" \
    "$CODI" run -m "$M" -p hi -n 1 --kv-type q4 --kv-calib "$TMP/nope.txt" "${T[@]}"

# MoE options (issue 5), on the tiny Mixtral-style fixture
MX=tests/fixtures/synthetic/mixtral-tiny.gguf
expect_error "--moe-mode unknown" "--moe-mode.*resident, ondemand, prefetch or lookahead.*lazy" \
    "$CODI" run -m "$MX" -p hi -n 1 --moe-mode lazy "${T[@]}"
expect_error "--expert-budget 0%" "--expert-budget.*percentage in \(0, 100\]" "$CODI" run -m "$MX" -p hi -n 1 --expert-budget 0% "${T[@]}"
expect_error "--expert-budget junk" "--expert-budget.*BYTES" "$CODI" run -m "$MX" -p hi -n 1 --expert-budget 12X "${T[@]}"
expect_error "--expert-policy unknown" "--expert-policy.*lru, lfu or next" \
    "$CODI" run -m "$MX" -p hi -n 1 --expert-policy mru "${T[@]}"
expect_error "--expert-io unknown" "--expert-io.*direct or buffered" \
    "$CODI" run -m "$MX" -p hi -n 1 --expert-io mmap "${T[@]}"
expect_error "--moe-lookahead 9" "--moe-lookahead" "$CODI" run -m "$MX" -p hi -n 1 --moe-lookahead 9 "${T[@]}"
expect_error "--moe-bits 6" "--moe-bits.*4, 8 or auto" "$CODI" run -m "$MX" -p hi -n 1 --moe-bits 6 "${T[@]}"
expect_error "nest without output" "nest needs an MoE model and an output file" "$CODI" nest "$MX"
expect_error "nest a dense model" "not an MoE model" "$CODI" nest "$M" "$TMP/nested.gguf"
expect_error "nest a missing file" "cannot open|no such file" "$CODI" nest "$TMP/none.gguf" "$TMP/nested.gguf"
expect_error "--expert-budget below one layer's experts" "below one layer's 2 active experts: the minimum is [0-9]+ bytes" \
    "$CODI" run -m "$MX" -p hi -n 1 --moe-mode ondemand --expert-budget 1K "${T[@]}"

# codi moefy (issue 5 section 3): argument errors, before anything is written
MF_OUT=$TMP/moefy-out.gguf
: >"$TMP/empty.txt"
expect_error "moefy without OUT" "moefy needs an input and an output file" "$CODI" moefy "$M" --experts 8 --top-k 2
expect_error "moefy without --experts" "needs --experts" "$CODI" moefy "$M" "$MF_OUT" --top-k 2
expect_error "moefy --top-k > E" "--top-k must be between 1 and the 8 experts, got 9" \
    "$CODI" moefy "$M" "$MF_OUT" --experts 8 --top-k 9
expect_error "moefy --experts 1" "--experts must be between 2 and 256" "$CODI" moefy "$M" "$MF_OUT" --experts 1 --top-k 1
expect_error "moefy E not dividing n_ff" "--experts 7 does not divide the FFN width 1536" \
    "$CODI" moefy "$M" "$MF_OUT" --experts 7 --top-k 2 "${T[@]}"
expect_error "moefy --router unknown" "--router expects layer or decoupled" \
    "$CODI" moefy "$M" "$MF_OUT" --experts 8 --top-k 2 --router lookahead
expect_error "moefy --type unknown" "--type expects keep, q8_0, f16 or f32" \
    "$CODI" moefy "$M" "$MF_OUT" --experts 8 --top-k 2 --type q4_0
expect_error "moefy --calib missing" "cannot open.*nope" \
    "$CODI" moefy "$M" "$MF_OUT" --experts 8 --top-k 2 --calib "$TMP/nope.txt"
expect_error "moefy --calib empty" "calibration file .* is empty" \
    "$CODI" moefy "$M" "$MF_OUT" --experts 8 --top-k 2 --calib "$TMP/empty.txt"
expect_error "moefy non-llama arch" "supports dense llama-architecture models.*qwen2" \
    "$CODI" moefy tests/fixtures/synthetic/qwen2-tiny.gguf "$MF_OUT" --experts 4 --top-k 2 "${T[@]}"
expect_error "moefy an MoE model" "already a mixture of experts" \
    "$CODI" moefy "$MX" "$MF_OUT" --experts 4 --top-k 2 "${T[@]}"
if [ -e "$MF_OUT" ] || [ -e "$MF_OUT.tmp" ]; then ko "moefy refused runs leave no file" "$MF_OUT exists"; fi

finish
