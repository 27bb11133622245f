#!/usr/bin/env bash
# moe_bigger_than_ram.sh - an MoE whose file is larger than this machine's
# memory (issue 5): codi with an expert budget against llama.cpp on the same
# file (page cache), generation tokens/s and peak RSS side by side.
#
#   bench/moe_bigger_than_ram.sh [FILE] [N_GEN] [BUDGET...]
#
# FILE defaults to /work/bigmoe/moe-30g-q4_0.gguf, written once (outside
# git) by bench/make_models.py --big: Mixtral-style, hidden 2048, 24 layers,
# 256 experts, top-4, expert FFN 1408, Q4_0: 30.16 GB. Each run starts from
# a cold page cache when /proc/sys/vm/drop_caches is writable (root).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILE=${1:-/work/bigmoe/moe-30g-q4_0.gguf}
NGEN=${2:-64}
shift $(( $# > 2 ? 2 : $# ))
BUDGETS=("$@")
[ ${#BUDGETS[@]} -gt 0 ] || BUDGETS=(4G 8G)
PY="$ROOT/bench/.peer/venv/bin/python"
if [ ! -f "$FILE" ]; then
    mkdir -p "$(dirname "$FILE")"
    "$PY" "$ROOT/bench/make_models.py" --big "$FILE" --n-layer 24 --n-expert 256 --n-used 4 \
        --n-embd 2048 --n-ff-exp 1408 --n-head 16 --n-head-kv 4 --qtype q4_0 --pool 64
fi
cold() { sync; if [ -w /proc/sys/vm/drop_caches ]; then echo 3 > /proc/sys/vm/drop_caches; fi; }
PROMPT="The history of the river valley begins with"
echo "file $FILE ($(stat -c %s "$FILE") bytes), RAM $(free -b | awk '/Mem:/{print $2}') bytes"
for b in "${BUDGETS[@]}"; do
    cold
    echo "== codi, --expert-budget $b"
    "$ROOT/build/codi" run -m "$FILE" -p "$PROMPT" -n "$NGEN" --temp 0 -t 2 --no-display-prompt \
        --expert-budget "$b" 2>&1 >/dev/null | grep -E "prompt:|generation:|moe:|rss:"
done
cold
echo "== llama.cpp (llama-cpp-python, mmap)"
timeout 1800 "$PY" "$ROOT/bench/llama_moe_gen.py" "$FILE" "$NGEN" | tail -1
