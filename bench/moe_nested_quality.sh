#!/usr/bin/env bash
# moe_nested_quality.sh - quality of bit-nested experts (codi nest, D2MoE)
# per budget: perplexity, KL and same-top % against the same file at 8 bits
# (high parts + residuals, all resident), for --moe-bits 4, and for auto under
# expert budgets (the hottest experts get their residuals first), with the
# share of expert uses that ran at 8 bits.
#
#   bench/moe_nested_quality.sh NESTED.gguf [TEXT] [CTX] [CHUNKS] [BUDGET%...]
#
# NESTED.gguf comes from `codi nest` (e.g. of models/bench/moe-q8_0.gguf or a
# moefied model). Defaults: bench/data/licenses.txt, -c 256, 8 windows,
# budgets 50 25 10.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CODI="$ROOT/build/codi"
M=$1
TEXT=${2:-$ROOT/bench/data/licenses.txt}
CTX=${3:-256}
CHUNKS=${4:-8}
shift $(( $# > 4 ? 4 : $# ))
BUDGETS=("$@")
[ ${#BUDGETS[@]} -gt 0 ] || BUDGETS=(50 25 10)
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
common=(-f "$TEXT" -c "$CTX" --chunks "$CHUNKS" -t 2)
"$CODI" ppl -m "$M" "${common[@]}" --moe-bits 8 --kl-base "$TMP/base.kl" > "$TMP/base.out" 2> "$TMP/base.err"
echo "file $M, text $(basename "$TEXT"), -c $CTX, $CHUNKS windows; base: 8 bits, resident"
echo
echo "| setting | PPL | mean KL | same top % | 8-bit uses % |"
echo "|---|---:|---:|---:|---:|"
printf "| 8 bits, resident | %s | 0 | 100 | 100 |\n" "$(awk '/^ppl:/{print $2}' "$TMP/base.out")"
row() {
    local name=$1
    shift
    "$CODI" ppl -m "$M" "${common[@]}" --kl "$TMP/base.kl" "$@" > "$TMP/o" 2> "$TMP/e"
    local b8
    b8=$(grep -o '[0-9.]*% of expert uses at 8 bits' "$TMP/e" | head -1 | cut -d% -f1)
    printf "| %s | %s | %s | %s | %s |\n" "$name" "$(awk '/^ppl:/{print $2}' "$TMP/o")" \
        "$(awk '/^kl mean:/{print $3}' "$TMP/o")" "$(awk '/^same top:/{print $3}' "$TMP/o" | tr -d %)" "${b8:--}"
}
row "4 bits, resident" --moe-bits 4
for b in "${BUDGETS[@]}"; do
    row "auto, budget $b%" --moe-bits auto --moe-mode prefetch --expert-budget "$b%"
done
