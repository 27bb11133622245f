#!/usr/bin/env bash
# moe_all.sh - every MoE table of BENCHMARKS.md (issue 5) in one run.
#
#   bench/moe_all.sh [OUT_DIR]        (default bench/results/<UTC date>-moe)
#
# Needs: build/codi, the peer venv (tools/build_peer.sh --venv-only), and
# the models it makes when missing:
#   models/bench/moe-q4_0.gguf, moe-q8_0.gguf   bench/make_models.py --only moe
#   models/bench/moe-nested.gguf                 codi nest moe-q8_0.gguf
#   models/bench/smollm2-moe-8-4-dec.gguf        codi moefy (SmolLM2, E=8, K=4,
#                                                decoupled router, calibrated on
#                                                bench/data/licenses.txt)
#   models/bench/smollm2-moe-8-4-layer.gguf      the same with per-layer routers
# Tables (markdown, one file each in OUT_DIR, raw stderr under OUT_DIR/raw):
#   synthetic.md   moe shape Q4_0: budgets x ondemand/prefetch/lookahead
#   policies.md    moe shape Q4_0: next/lru/lfu at 25% and 10%, ondemand
#   nested.md      moe shape nested: --moe-bits 4/8/auto x budgets, prefetch
#   moefied-*.md   moefied SmolLM2, decoupled and per-layer routers
#   peer.md        llama.cpp generation on moe-q4_0.gguf (resident, mmap)
# All codi runs under nice -n -20 when permitted (timing on a shared machine).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT=${1:-bench/results/$(date -u +%Y-%m-%d)-moe}
mkdir -p "$OUT"
PY=bench/.peer/venv/bin/python
CODI=build/codi
NICE=()
if nice -n -20 true 2>/dev/null; then NICE=(nice -n -20); fi
B=models/bench
[ -f $B/moe-q4_0.gguf ] && [ -f $B/moe-q8_0.gguf ] || $PY bench/make_models.py --only moe
[ -f $B/moe-nested.gguf ] || $CODI nest $B/moe-q8_0.gguf $B/moe-nested.gguf
SMOL=models/SmolLM2-135M-Instruct.Q4_1.gguf
for r in dec layer; do
    f=$B/smollm2-moe-8-4-$r.gguf
    [ -f "$f" ] || $CODI moefy $SMOL "$f" --experts 8 --top-k 4 --calib bench/data/licenses.txt \
        --router "$([ $r = dec ] && echo decoupled || echo layer)" --type q8_0
done
run() { local name=$1; shift; "${NICE[@]}" python3 bench/moe_bench.py --out "$OUT/$name" "$@" \
    && mv "$OUT/$name/moe.md" "$OUT/$name.md"; }
run synthetic --model $B/moe-q4_0.gguf --budgets 100,50,25,15,10 --modes ondemand,prefetch,lookahead -n 32
run policies --model $B/moe-q4_0.gguf --budgets 25,10 --modes ondemand --policy next,lru,lfu -n 32
run nested --model $B/moe-nested.gguf --budgets 50,25,10 --modes prefetch --bits 4,8,auto -n 32
run moefied-decoupled --model $B/smollm2-moe-8-4-dec.gguf --budgets 75,50,25 --modes ondemand,prefetch,lookahead -n 64
run moefied-layer --model $B/smollm2-moe-8-4-layer.gguf --budgets 50,25 --modes ondemand,prefetch,lookahead -n 64
{
    echo "llama.cpp (llama-cpp-python 0.3.36, 2 threads, its defaults incl. repacked weights, greedy) on $B/moe-q4_0.gguf:"
    LLAMA_REPACK=1 "${NICE[@]}" $PY bench/llama_moe_gen.py $B/moe-q4_0.gguf 32 | tail -1
    echo "codi resident on the same file:"
    "${NICE[@]}" $CODI run -m $B/moe-q4_0.gguf -p "The history of the river valley begins with" -n 32 \
        --temp 0 -t 2 --no-display-prompt 2>&1 >/dev/null | grep -E "generation:"
} > "$OUT/peer.md"
cat "$OUT"/*.md
