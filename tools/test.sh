#!/usr/bin/env bash
# The whole test suite: release build + ctest, then the same suite under
# AddressSanitizer + UBSan, then the fuzzers (tools/fuzz.sh) and one run
# under valgrind. Usage: tools/test.sh [--no-asan] [--no-fuzz]
# (--no-asan skips everything after the release suite; --no-fuzz the fuzzers
# and valgrind.)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"
(cd build && ctest --output-on-failure -j"$jobs")
if [ "${1:-}" != "--no-asan" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Release -DCODI_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$jobs"
  (cd build-asan && CODI_TEST_QUICK=1 ASAN_OPTIONS=detect_leaks=1 ctest --output-on-failure -j"$jobs")
fi
# Fuzzing: every libFuzzer target ~60 s, after replaying its corpus and past
# crashes (tools/fuzz.sh). Then one short generation under valgrind: no
# errors, no definite leaks.
case " $* " in *" --no-asan "* | *" --no-fuzz "*) fuzz=no ;; *) fuzz=yes ;; esac
if [ "$fuzz" = yes ]; then
  tools/fuzz.sh
  valgrind -q --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite \
    build/codi run -m models/SmolLM2-135M-Instruct.Q4_1.gguf \
    -p "The capital of France is" -n 8 -t 2 --temp 0 >/dev/null
  echo "valgrind: codi run (8 tokens): no errors, no definite leaks"
fi
