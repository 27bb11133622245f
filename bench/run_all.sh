#!/usr/bin/env bash
# run_all.sh - the speed benchmarks behind BENCHMARKS.md, side by side with
# llama.cpp (see ../shared/BENCH.md). Needs: build/codi (cmake build),
# bench/.peer (tools/build_peer.sh), models/bench (bench/make_models.py).
#
#   bench/run_all.sh [PAIRS]      (default 5 pairs per test; ~25 min)
#
# Writes bench/results/<date>/*.md and prints them.
set -euo pipefail
cd "$(dirname "$0")/.."
PAIRS=${1:-5}
OUT=bench/results/$(date -u +%Y-%m-%d)
mkdir -p "$OUT"
gcc -O2 -mavx2 -pthread bench/stream.c -o build/stream
{
  echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), codi $(git rev-parse --short HEAD), llama-cpp-python 0.3.36 (llama.cpp commit $(bench/.peer/bin/llama-bench --version 2>&1 | sed -n 's/.*commit \([0-9a-f]*\).*/\1/p' | head -1))"
  echo "# $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
  build/stream 2 1024 9
} | tee "$OUT/machine.md"
run() { # name, extra compare.py args...
  local name=$1
  shift
  python3 bench/compare.py --pairs "$PAIRS" "$@" --out "$OUT/$name.md"
}
# The default model, flash attention off and on for llama.cpp (its default
# is on): the faster of the two is the peer to beat.
run smollm2-q4_1-fa-off -m models/SmolLM2-135M-Instruct.Q4_1.gguf --fa off
run smollm2-q4_1-fa-on -m models/SmolLM2-135M-Instruct.Q4_1.gguf --fa on
run smollm2-q8_0-q4_0 -m models/bench/smollm2-q8_0.gguf -m models/bench/smollm2-q4_0.gguf --fa on
# llama1b: token generation is the bandwidth-bound test; pp on 128 tokens
# keeps the run short.
run llama1b -m models/bench/llama1b-q4_0.gguf -m models/bench/llama1b-q8_0.gguf --pp 128 --tg 32 --fa on
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.md"
cat "$OUT"/*.md
