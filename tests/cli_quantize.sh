#!/usr/bin/env bash
# codi quantize end to end:
#   - bad arguments fail with exit 2 (1 for files), one stderr line that
#     names the problem, nothing on stdout, and no OUT file;
#   - a tiny synthetic model (tests/fixtures/synthetic/qwen2-tiny.gguf, Q8_0)
#     quantized to each codi type (with and without --calib, groups that
#     must fall back to a smaller size) then runs with `codi run`, and its
#     tensors have the expected types;
#   - a failed quantize keeps an existing OUT byte for byte; an
#     interrupted one (SIGINT during the SmolLM2 run) leaves neither OUT
#     nor a temporary file.
#
#   bash tests/cli_quantize.sh path/to/codi      (from the repository root)

# shellcheck source=tests/lib_cli.sh
source "$(dirname "$0")/lib_cli.sh" "$@"

TINY=tests/fixtures/synthetic/qwen2-tiny.gguf
EVAL=tests/data/eval.txt

# expect_error NAME STATUS PATTERN ARGS...: codi quantize ARGS must fail with
# STATUS, one matching stderr line, and leave no $TMP/out.gguf.
expect_error() {
    local name=$1 want=$2 pat=$3 lines
    shift 3
    rm -f "$TMP/out.gguf"
    timeout -k 5 60 "$CODI" quantize "$@" >"$TMP/out" 2>"$TMP/err" </dev/null
    RC=$?
    lines=$(awk 'END { print NR }' "$TMP/err")
    if [ "$RC" -ne "$want" ]; then
        ko "$name" "exit $RC, expected $want"
    elif [ -s "$TMP/out" ] || [ "$lines" -ne 1 ]; then
        ko "$name" "stdout not empty or $lines stderr lines"
    elif ! grep -Eqi -e "$pat" "$TMP/err"; then
        ko "$name" "stderr does not match /$pat/"
    elif [ -e "$TMP/out.gguf" ] || compgen -G "$TMP/out.gguf.tmp-*" >/dev/null; then
        ko "$name" "left an output file behind"
    else
        ok "$name: $(head -c 140 "$TMP/err")"
    fi
}

O="$TMP/out.gguf"
: >"$TMP/empty.txt"
expect_error "no type" 2 "needs --type" "$TINY" "$O"
expect_error "unknown type" 2 "unknown quantization type 'q3x'" "$TINY" "$O" --type q3x
expect_error "no output" 2 "needs an input and an output" "$TINY" --type q4g
expect_error "group 48" 2 "--group expects 32, 64 or 128" "$TINY" "$O" --type q4g --group 48
expect_error "sparsity 1" 2 "--sparsity expects a fraction in \[0, 1\)" "$TINY" "$O" --type q4g --sparsity 1
expect_error "sparsity -0.1" 2 "--sparsity expects a fraction" "$TINY" "$O" --type q4g --sparsity -0.1
expect_error "bits 3.9" 2 "--bits expects a number in \[4, 8\]" "$TINY" "$O" --type q4g --bits 3.9
expect_error "bits 8.5" 2 "--bits expects a number in \[4, 8\]" "$TINY" "$O" --type q4g --bits 8.5
expect_error "calib missing" 1 "calibration file '.*nope.txt'.*No such file" "$TINY" "$O" --type q4g --calib "$TMP/nope.txt"
expect_error "calib empty" 1 "calibration file '.*empty.txt' is empty" "$TINY" "$O" --type q4g --calib "$TMP/empty.txt"
expect_error "input missing" 1 "quantize: .*no-such.gguf" "$TMP/no-such.gguf" "$O" --type q4g
expect_error "sparsity without gqsa" 2 "--sparsity applies to --type gqsa" "$TINY" "$O" --type q4g --sparsity 0.5
expect_error "same file" 2 "must not be the input" "$TINY" "$TINY" --type q4g
head -c 5000 "$TINY" >"$TMP/trunc.gguf"
expect_error "truncated input" 1 "quantize: " "$TMP/trunc.gguf" "$O" --type q8g

# A failed run keeps an existing OUT untouched.
printf 'precious' >"$TMP/keep.gguf"
timeout -k 5 60 "$CODI" quantize "$TMP/trunc.gguf" "$TMP/keep.gguf" --type q4g >/dev/null 2>&1
if [ "$(cat "$TMP/keep.gguf")" = precious ]; then ok "failed run keeps the old OUT"; else ko "failed run keeps the old OUT" "changed"; fi

# quantize_ok NAME WANT_TYPES ARGS...: succeeds, the file runs, and inspect
# shows every pattern of WANT_TYPES (space separated "name type" pairs).
quantize_ok() {
    local name=$1 want=$2
    shift 2
    rm -f "$O"
    run_capture timeout -k 5 120 "$CODI" quantize "$@"
    if [ "$RC" -ne 0 ] || [ ! -s "$O" ]; then
        ko "$name" "exit $RC"
        return
    fi
    run_capture timeout -k 5 60 "$CODI" inspect "$O"
    local pair
    while read -r t ty; do
        [ -z "$t" ] && continue
        if ! grep -Eq "^ +[0-9]+ +$t +$ty " "$TMP/out"; then
            ko "$name" "tensor $t is not $ty"
            return
        fi
    done <<<"$want"
    run_capture timeout -k 5 60 "$CODI" run -m "$O" -p "hello world" -n 8 --temp 0 -t "$THREADS"
    if [ "$RC" -ne 0 ]; then
        ko "$name" "codi run failed (exit $RC)"
        return
    fi
    ok "$name"
}

quantize_ok "q4g g32" "blk.0.attn_q.weight Q4G32
blk.1.ffn_down.weight Q4G32
token_embd.weight Q8G32
blk.0.attn_norm.weight F32" "$TINY" "$O" --type q4g
quantize_ok "q4g g128 falls back to 64" "blk.0.attn_q.weight Q4G64
blk.0.ffn_down.weight Q4G128" "$TINY" "$O" --type q4g --group 128
quantize_ok "q8g g64" "blk.0.attn_k.weight Q8G64
token_embd.weight Q8G64" "$TINY" "$O" --type q8g --group 64
quantize_ok "q4g with --calib" "blk.0.ffn_up.weight Q4G32" "$TINY" "$O" --type q4g --calib "$EVAL"
quantize_ok "gqsa 50%" "blk.0.attn_q.weight GQSA32
blk.0.ffn_down.weight GQSA32
token_embd.weight Q8G32" "$TINY" "$O" --type gqsa --sparsity 0.5
# 64 in-features, 2 groups of 32, keep 1: the stored shape is [32, rows]
if grep -Eq "blk.0.attn_q.weight +GQSA32 +\[32, 64\]" "$TMP/out" 2>/dev/null || "$CODI" inspect "$O" | grep -Eq "blk.0.attn_q.weight +GQSA32 +\[32, 64\]"; then
    ok "gqsa stores only the kept groups"
else
    ko "gqsa stores only the kept groups" "$("$CODI" inspect "$O" | grep attn_q)"
fi
quantize_ok "gqsa 25% with --calib, group 64" "blk.1.ffn_up.weight GQSA64" "$TINY" "$O" --type gqsa --sparsity 0.25 --group 64 --calib "$EVAL"
cp "$O" "$TMP/gqsa.gguf"
expect_error "gqsa input" 1 "a codi layout spread over several tensors" "$TMP/gqsa.gguf" "$O" --type q4g
quantize_ok "mix 6 bits" "token_embd.weight Q8G32" "$TINY" "$O" --type mix --bits 6 --calib "$EVAL"
if "$CODI" inspect "$O" | grep -Eq "\.perm +I16"; then ok "mix writes .q8 and .perm parts"; else ko "mix writes .q8 and .perm parts" "none"; fi
expect_error "mix without calib" 2 "--type mix needs --calib" "$TINY" "$O" --type mix --bits 4.4
expect_error "bits without mix" 2 "--bits applies to --type mix" "$TINY" "$O" --type q4g --bits 4.4
quantize_ok "w4a8" "blk.0.attn_q.weight W4A8_32
blk.0.attn_q.weight.wscale F32
token_embd.weight Q8G32" "$TINY" "$O" --type w4a8
# W4A8's dots are integer end to end: the x8 kernel (weights repacked at
# load) and the per-row one give the same logits, so the same greedy text.
run_capture "$CODI" run -m "$O" -p "hello world" -n 16 --temp 0 -t "$THREADS"
cp "$TMP/out" "$TMP/w4a8_x8"
CODI_NO_REPACK=1 run_capture "$CODI" run -m "$O" -p "hello world" -n 16 --temp 0 -t "$THREADS"
if [ -s "$TMP/out" ] && cmp -s "$TMP/out" "$TMP/w4a8_x8"; then
    ok "w4a8: x8 and per-row kernels give the same text"
else
    ko "w4a8: x8 and per-row kernels give the same text" "outputs differ"
fi
# Prefill of 16 tokens or more runs W4A8 on AMX tiles where the CPU has
# them (same integer sums and roundings as the x8 kernel): the same PPL.
run_capture "$CODI" ppl -m "$O" -f tests/data/eval.txt -c 64 --chunks 3 -t "$THREADS"
grep '^ppl:' "$TMP/out" >"$TMP/w4a8_ppl"
CODI_NO_AMX=1 run_capture "$CODI" ppl -m "$O" -f tests/data/eval.txt -c 64 --chunks 3 -t "$THREADS"
if [ -s "$TMP/w4a8_ppl" ] && grep '^ppl:' "$TMP/out" | cmp -s - "$TMP/w4a8_ppl"; then
    ok "w4a8: prefill with and without AMX gives the same PPL"
else
    ko "w4a8: prefill with and without AMX gives the same PPL" "$(cat "$TMP/w4a8_ppl") vs $(grep '^ppl:' "$TMP/out")"
fi
# A W4A8 group whose weights do not fit an int8 (sg 64, z 0, code 15: 960,
# as no codi quantizer writes but a file may hold): the loader must keep
# that matrix off the AMX kernel, so AMX and the x8 kernel still agree.
if gguf_info "$O" >"$TMP/w4a8_info"; then
    tt=$(awk '$1 == "tensor_type.blk.0.attn_q.weight" { print $2 }' "$TMP/w4a8_info")
    ds=$(awk '$1 == "data_start" { print $2 }' "$TMP/w4a8_info")
    toff=$(python3 -c 'import struct,sys; f=open(sys.argv[1],"rb"); f.seek(int(sys.argv[2])+4); print(struct.unpack("<Q", f.read(8))[0])' "$O" "$tt")
    cp "$O" "$TMP/w4a8_wide.gguf"
    patch_bytes "$TMP/w4a8_wide.gguf" $((ds + toff)) 4000ff
    run_capture "$CODI" ppl -m "$TMP/w4a8_wide.gguf" -f tests/data/eval.txt -c 64 --chunks 3 -t "$THREADS"
    grep '^ppl:' "$TMP/out" >"$TMP/w4a8_wide_ppl"
    CODI_NO_AMX=1 run_capture "$CODI" ppl -m "$TMP/w4a8_wide.gguf" -f tests/data/eval.txt -c 64 --chunks 3 -t "$THREADS"
    if [ -s "$TMP/w4a8_wide_ppl" ] && grep '^ppl:' "$TMP/out" | cmp -s - "$TMP/w4a8_wide_ppl" &&
        ! cmp -s "$TMP/w4a8_wide_ppl" "$TMP/w4a8_ppl"; then
        ok "w4a8: a group past int8 stays off AMX (same PPL both ways, not the unpatched one)"
    else
        ko "w4a8: a group past int8 stays off AMX" "$(cat "$TMP/w4a8_wide_ppl") vs $(grep '^ppl:' "$TMP/out")"
    fi
else
    ko "w4a8: gguf_info" "cannot parse $O"
fi
quantize_ok "f16 base" "blk.0.ffn_up.weight F16" "$TINY" "$O" --type f16
quantize_ok "f32 base" "blk.0.ffn_up.weight F32" "$TINY" "$O" --type f32

# The metadata survives: same tokenizer, so the same tokens.
run_capture "$CODI" tokenize -m "$TINY" -p "the quick brown fox"
cp "$TMP/out" "$TMP/tok_in"
"$CODI" quantize "$TINY" "$O" --type q8g >/dev/null 2>&1
run_capture "$CODI" tokenize -m "$O" -p "the quick brown fox"
if cmp -s "$TMP/out" "$TMP/tok_in"; then ok "metadata copied (same tokens)"; else ko "metadata copied" "tokens differ"; fi

# Interrupted: SIGINT while the (17 s) SmolLM2 quantize runs.
rm -f "$O"
"$CODI" quantize "$MODEL" "$O" --type q4g -t 1 >/dev/null 2>&1 &
QP=$!
sleep 2
kill -INT "$QP" 2>/dev/null
wait "$QP"
QRC=$?
if [ "$QRC" -eq 0 ]; then
    ok "interrupted quantize (finished before the signal)"
elif [ -e "$O" ] || compgen -G "$O.tmp-*" >/dev/null; then
    ko "interrupted quantize" "left $(ls "$TMP")"
else
    ok "interrupted quantize (status $QRC): no OUT, no temporary file"
fi

finish
