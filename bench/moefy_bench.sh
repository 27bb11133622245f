#!/usr/bin/env bash
# moefy_bench.sh - quality of codi moefy (issue 5 section 3): a dense
# SmolLM2 refactored into MoEs of several (experts, top-k, shared) shapes,
# PPL and KL against the dense model on a text that is not the calibration
# text, plus the router accuracy moefy prints.
#
#   bench/moefy_bench.sh [--chunks N] [--tokens N] [--out DIR] [CONFIG ...]
#
#   CONFIG      E:K:SHARED:ROUTER[:ACTIVE] (default: the list below)
#   --chunks N  512-token windows of tests/data/eval.txt scored (default 4)
#   --tokens N  calibration tokens of bench/data/licenses.txt (default 4096)
#   --out DIR   results folder (default bench/results/<UTC date>-moefy)
#   CODI=PATH   the codi binary (default build/codi), THREADS (default 2)
#
# Writes DIR/moefy.md (the table), DIR/raw/<config>.txt (moefy's output with
# the per-layer router table, and codi ppl's) and prints the table.
set -u
cd "$(dirname "$0")/.."
CODI=${CODI:-build/codi}
THREADS=${THREADS:-2}
MODEL=models/SmolLM2-135M-Instruct.Q4_1.gguf
CALIB=bench/data/licenses.txt
EVAL=tests/data/eval.txt
CHUNKS=4
TOKENS=4096
OUT=bench/results/$(date -u +%Y-%m-%d)-moefy
CONFIGS=()
while [ $# -gt 0 ]; do
    case $1 in
    --chunks) CHUNKS=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) CONFIGS+=("$1"); shift ;;
    esac
done
[ ${#CONFIGS[@]} -gt 0 ] || CONFIGS=(8:8:0:layer 8:2:0:layer 8:2:256:layer 8:4:0:layer 8:4:256:layer
                                     16:4:0:layer 16:4:512:layer 8:4:256:decoupled)
mkdir -p "$OUT/raw"
TMPD=$(mktemp -d /tmp/moefy-bench.XXXXXX)
trap 'rm -rf "$TMPD"' EXIT

"$CODI" ppl -m "$MODEL" -f "$EVAL" -t "$THREADS" --chunks "$CHUNKS" --kl-base "$TMPD/base.kl" \
    >"$OUT/raw/dense.txt" 2>&1 || { echo "dense ppl failed"; exit 1; }
DPPL=$(awk '/^ppl:/ {print $2}' "$OUT/raw/dense.txt")
{
    echo "# codi moefy on SmolLM2-135M-Instruct Q4_1"
    echo
    echo "Calibration: $TOKENS tokens of $CALIB. Evaluation: $CHUNKS windows of 512 tokens of $EVAL"
    echo "(\`codi ppl -c 512 --chunks $CHUNKS\`; KL against the dense model's distributions)."
    echo "Router accuracy on $EVAL: mean over layers of |router top-K & oracle top-K| / K, and the share"
    echo "of the routed score mass the router's top-K keeps vs the oracle's (moefy's table, raw/)."
    echo "Active: FFN neurons computed per token (shared + K x routed width) / n_ff 1536."
    echo
    echo "| E | K | shared | router | active | PPL | PPL / dense | KL mean | same top | router match | mass router / oracle | file MB | moefy s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    echo "| dense | | | | 100% | $DPPL | 1.000 | 0 | 100% | | | $(( $(stat -c %s "$MODEL") / 1000000 )) | |"
} >"$OUT/moefy.md"
for c in "${CONFIGS[@]}"; do
    IFS=: read -r E K S R A <<<"$c"
    tag="e${E}k${K}s${S}-${R}${A:+-a$A}"
    f=$TMPD/$tag.gguf
    t0=$(date +%s.%N)
    "$CODI" moefy "$MODEL" "$f" --experts "$E" --top-k "$K" --shared "$S" --router "$R" ${A:+--active-frac $A} \
        --calib "$CALIB" --eval "$EVAL" --calib-tokens "$TOKENS" -t "$THREADS" >"$OUT/raw/$tag.txt" 2>&1 ||
        { echo "moefy $c failed"; tail -2 "$OUT/raw/$tag.txt"; continue; }
    t1=$(date +%s.%N)
    "$CODI" ppl -m "$f" -f "$EVAL" -t "$THREADS" --chunks "$CHUNKS" --kl "$TMPD/base.kl" >>"$OUT/raw/$tag.txt" 2>&1
    P=$(awk '/^ppl:/ {print $2}' "$OUT/raw/$tag.txt")
    KL=$(awk '/^kl mean:/ {print $3}' "$OUT/raw/$tag.txt")
    ST=$(awk '/^same top:/ {print $3}' "$OUT/raw/$tag.txt")
    # mean line: layer-router decoupled dec-vs-layer mass(layer) mass(dec) mass(oracle)
    read -r ML MD _ MSL MSD MSO < <(awk '$1 == "mean" {print $2, $3, $4, $5, $6, $7}' "$OUT/raw/$tag.txt")
    if [ "$R" = decoupled ]; then MATCH=$MD; MASS=$MSD; else MATCH=$ML; MASS=$MSL; fi
    ACT=$(awk -v e="$E" -v k="$K" -v s="$S" 'BEGIN { printf "%.1f%%", 100 * (s + k * (1536 - s) / e) / 1536 }')
    echo "| $E | $K | $S | $R${A:+ (active-frac $A)} | $ACT | $P | $(awk -v a="$P" -v b="$DPPL" 'BEGIN{printf "%.3f", a/b}') | $KL | $ST | $MATCH | $MASS / $MSO | $(( $(stat -c %s "$f") / 1000000 )) | $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.0f", b-a}') |" >>"$OUT/moefy.md"
    rm -f "$f"
done
cat "$OUT/moefy.md"
