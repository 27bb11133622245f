#!/usr/bin/env bash
# quant_quality.sh - codi's weight formats (issue 4) against llama.cpp's
# quantizations: quality versus size, and speed.
#
#   bench/quant_quality.sh [--model smollm2|gemma|all] [--windows N] [--reps N] [--out DIR]
#
#   --model    SmolLM2-135M-Instruct (from its Q4_1 file) and/or Gemma 3 270M
#              (from its Q4_K_M file); default all
#   --windows  PPL windows of 512 tokens (default 6)
#   --reps     codi bench repetitions (default 3)
#   --out DIR  results (default bench/results/<UTC date>-quant)
#   --only llama|codi  only llama.cpp's or only codi's formats (default all)
#   CODI=PATH  codi binary (default build/codi)
#   PEER_BIN=DIR  llama.cpp tools (llama-quantize, llama-perplexity; default
#              bench/.peer/bin, built by tools/build_peer.sh --tools-only)
#
# For each model:
#   1. base = the model dequantized by codi to F16 (`codi quantize --type f16`);
#   2. llama.cpp's Q4_0, Q4_K_M, Q5_K_M, Q8_0 made from that base with
#      llama-quantize; codi's q4g, q8g (group 32), mix at 4.2 / 4.4 / 4.8 bits
#      (group 64) and 5.4 (group 32), gqsa at 25% and 50% sparsity (group 32),
#      w4a8 (group 32); mix and gqsa calibrated on bench/data/licenses.txt;
#   3. every file evaluated by codi on tests/data/eval.txt (GPL-3, not the
#      calibration text): PPL, mean KL / same-top % against the base
#      (`codi ppl --kl-base/--kl`), pp128 and tg32 tokens/s (`codi bench -t 2`);
#      bits per weight = 8 x tensor bytes / weights of the base (all scales,
#      indices and permutations included);
#   4. llama-perplexity on the Q4_K_M file as a cross-check of codi's PPL.
# Writes DIR/<model>.md and DIR/raw/*.
set -euo pipefail
cd "$(dirname "$0")/.."

MODELS=all WINDOWS=6 REPS=3 OUT="" ONLY=all
while (($#)); do
    case $1 in
    --model) MODELS=$2; shift 2 ;;
    --windows) WINDOWS=$2; shift 2 ;;
    --reps) REPS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --only) ONLY=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
CODI=${CODI:-build/codi}
PEER_BIN=${PEER_BIN:-bench/.peer/bin}
OUT=${OUT:-bench/results/$(date -u +%Y-%m-%d)-quant}
EVAL=tests/data/eval.txt
CALIB=bench/data/licenses.txt
mkdir -p "$OUT/raw"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/codi-quant.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# tensor bytes and weight count of a GGUF (codi inspect's table)
tensor_stats() {
    "$CODI" inspect "$1" | python3 -c '
import re, sys
b = e = 0
for line in sys.stdin:
    m = re.match(r"\s+\d+\s+(\S+)\s+(\S+)\s+\[([0-9, ]+)\]\s+(\d+)$", line)
    if not m: continue
    n = 1
    for x in m.group(3).split(","): n *= int(x)
    b += int(m.group(4)); e += n
print(b, e)'
}

run_model() {
    local key=$1 src=$2 md="$OUT/$1.md"
    local base="$WORK/$key-f16.gguf"
    echo "== $key: base" >&2
    "$CODI" quantize "$src" "$base" --type f16 2>"$OUT/raw/$key-base.quantize.txt"
    read -r _ BASE_W < <(tensor_stats "$base")
    "$CODI" ppl -m "$base" -f "$EVAL" -c 512 --chunks "$WINDOWS" -t 2 --kl-base "$WORK/$key.kl" \
        >"$OUT/raw/$key-base.ppl.txt" 2>&1
    local base_ppl
    base_ppl=$(grep '^ppl:' "$OUT/raw/$key-base.ppl.txt" | awk '{print $2}')
    {
        echo "### $key ($(basename "$src") dequantized to F16 by codi = base)"
        echo
        echo "Evaluation text tests/data/eval.txt, $WINDOWS windows of 512 tokens (second halves scored);"
        echo "calibration (mix, gqsa) bench/data/licenses.txt; codi $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)."
        echo "Base PPL $base_ppl."
        echo
        echo "| format | made by | bits/weight | file MB | PPL | mean KL | same top % | pp128 t/s | tg32 t/s |"
        echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
    } >"$md"
    local specs=(
        "Q4_0|llama|Q4_0" "Q4_K_M|llama|Q4_K_M" "Q5_K_M|llama|Q5_K_M" "Q8_0|llama|Q8_0"
        "q4g|codi|--type q4g" "q8g|codi|--type q8g"
        "mix 4.2|codi|--type mix --bits 4.2 --group 64 --calib $CALIB"
        "mix 4.4|codi|--type mix --bits 4.4 --group 64 --calib $CALIB"
        "mix 4.8|codi|--type mix --bits 4.8 --group 64 --calib $CALIB"
        "mix 5.4 g32|codi|--type mix --bits 5.4 --group 32 --calib $CALIB"
        "gqsa 25%|codi|--type gqsa --sparsity 0.25 --calib $CALIB"
        "gqsa 50%|codi|--type gqsa --sparsity 0.5 --calib $CALIB"
        "w4a8|codi|--type w4a8"
    )
    local s name by args f tag
    for s in "${specs[@]}"; do
        IFS='|' read -r name by args <<<"$s"
        [ "$ONLY" != all ] && [ "$ONLY" != "$by" ] && continue
        tag=$(echo "$name" | tr ' %.' '__p')
        f="$WORK/$key-$tag.gguf"
        echo "== $key: $name" >&2
        if [ "$by" = llama ]; then
            if ! "$PEER_BIN/llama-quantize" "$base" "$f" "$args" >"$OUT/raw/$key-$tag.quantize.txt" 2>&1; then
                echo "| $name | llama-quantize | (failed, see raw/$key-$tag.quantize.txt) | | | | | | |" >>"$md"
                continue
            fi
        else
            # shellcheck disable=SC2086
            "$CODI" quantize "$base" "$f" $args -t 2 2>&1 | tr '\r' '\n' | grep -v '^quantizing' \
                >"$OUT/raw/$key-$tag.quantize.txt"
        fi
        local bytes mb ppl kl top pp tg
        read -r bytes _ < <(tensor_stats "$f")
        mb=$(python3 -c "import os; print(f'{os.path.getsize(\"$f\")/1e6:.1f}')")
        local bpw
        bpw=$(python3 -c "print(f'{8*$bytes/$BASE_W:.3f}')")
        "$CODI" ppl -m "$f" -f "$EVAL" -c 512 --chunks "$WINDOWS" -t 2 --kl "$WORK/$key.kl" \
            >"$OUT/raw/$key-$tag.ppl.txt" 2>&1
        ppl=$(grep '^ppl:' "$OUT/raw/$key-$tag.ppl.txt" | awk '{print $2}')
        kl=$(grep '^kl mean:' "$OUT/raw/$key-$tag.ppl.txt" | awk '{print $3}')
        top=$(grep '^same top:' "$OUT/raw/$key-$tag.ppl.txt" | awk '{print $3}')
        "$CODI" bench -m "$f" -p 128 -n 32 -r "$REPS" -t 2 --json >"$OUT/raw/$key-$tag.bench.json" 2>/dev/null
        read -r pp tg < <(python3 -c "
import json
r = json.load(open('$OUT/raw/$key-$tag.bench.json'))
g = lambda k: next((x['tokens_per_s'] for x in r if x['test'].startswith(k)), 0)
print(f\"{g('pp'):.1f} {g('tg'):.1f}\")")
        echo "| $name | $by | $bpw | $mb | $ppl | $kl | $top | $pp | $tg |" >>"$md"
        if [ "$name" = Q4_K_M ] && [ -x "$PEER_BIN/llama-perplexity" ]; then
            "$PEER_BIN/llama-perplexity" -m "$f" -f "$EVAL" -c 512 --chunks "$WINDOWS" -t 2 \
                >"$OUT/raw/$key-$tag.llama-perplexity.txt" 2>&1 || true
            local lp
            lp=$(grep -o 'Final estimate: PPL = [0-9.]*' "$OUT/raw/$key-$tag.llama-perplexity.txt" | awk '{print $5}')
            echo "Q4_K_M cross-check: llama-perplexity PPL = ${lp:-?} (codi: $ppl)" >"$OUT/raw/$key-crosscheck.txt"
        fi
        rm -f "$f"
    done
    echo >>"$md"
    [ -f "$OUT/raw/$key-crosscheck.txt" ] && cat "$OUT/raw/$key-crosscheck.txt" >>"$md"
    rm -f "$WORK/$key.kl" "$base"
    cat "$md"
}

case $MODELS in
smollm2) run_model smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf ;;
gemma) run_model gemma models/gemma-3-270m-q4_k_m.gguf ;;
all)
    run_model smollm2 models/SmolLM2-135M-Instruct.Q4_1.gguf
    run_model gemma models/gemma-3-270m-q4_k_m.gguf
    ;;
*) echo "unknown model $MODELS" >&2; exit 2 ;;
esac
