#!/usr/bin/env bash
# The whole test suite: release build + ctest, then the same suite under
# AddressSanitizer + UBSan. Usage: tools/test.sh [--no-asan]
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
