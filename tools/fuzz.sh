#!/usr/bin/env bash
# Fuzzing: build the libFuzzer targets (tests/fuzz/, clang, ASan + UBSan) in
# build-fuzz/, replay every seed (tests/fuzz/corpus/<target>/) and every past
# crash (tests/fuzz/regress/<target>/), then fuzz each target for SECONDS
# (default 60, or $FUZZ_SECONDS), up to $FUZZ_JOBS targets at a time
# (default: the number of cores, at most 4). New inputs go to a temporary
# directory; the committed corpus is only read.
#
#   tools/fuzz.sh [SECONDS] [TARGET...]
#
# A crash, a leak, a hang (> 10 s on one input) or a single allocation over
# 512 MiB fails the run; the input is kept as build-fuzz/artifacts/<target>-*
# (copy it to tests/fuzz/regress/<target>/ with the fix). Prints one line
# per target: executions, exec/s, coverage (cov: edges, ft: features).
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-${FUZZ_SECONDS:-60}}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf model tokenizer chat kl hparams safetensors server)
jobs=${FUZZ_JOBS:-$(nproc)}
[ "$jobs" -le 4 ] || jobs=4

if ! command -v clang >/dev/null; then
  echo "fuzz.sh: clang not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
fi
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Release -DCODI_FUZZ=ON \
  -DCODI_BUILD_TESTS=OFF >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]/#/fuzz_}"

bin=build-fuzz/tests/fuzz
art=build-fuzz/artifacts
mkdir -p "$art"
work=$(mktemp -d "${TMPDIR:-/tmp}/codi-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
opts=(-timeout=10 -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1)

# 1. Replay: every seed and every past crash once.
for t in "${targets[@]}"; do
  dirs=(tests/fuzz/corpus/"$t")
  [ -d tests/fuzz/regress/"$t" ] && dirs+=(tests/fuzz/regress/"$t")
  files=$(find "${dirs[@]}" -type f | sort)
  # shellcheck disable=SC2086
  if ! "$bin/fuzz_$t" "${opts[@]}" -artifact_prefix="$art/$t-" $files \
      >"$work/replay-$t.log" 2>&1; then
    tail -n 40 "$work/replay-$t.log" >&2
    echo "fuzz.sh: $t: replaying the corpus failed" >&2
    exit 1
  fi
  echo "replay $t: $(echo "$files" | wc -l) files ok"
done

# 2. Fuzz each target for $secs seconds.
fuzz_one() {
  local t=$1 rc=0
  mkdir -p "$work/corpus-$t"
  local dirs=(tests/fuzz/corpus/"$t")
  [ -d tests/fuzz/regress/"$t" ] && dirs+=(tests/fuzz/regress/"$t")
  "$bin/fuzz_$t" "${opts[@]}" -max_total_time="$secs" \
    -artifact_prefix="$art/$t-" "$work/corpus-$t" "${dirs[@]}" \
    >"$work/fuzz-$t.log" 2>&1 || rc=$?
  echo "$rc" >"$work/rc-$t"
}
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    sleep 1
  done
  fuzz_one "$t" &
done
wait

status=0
for t in "${targets[@]}"; do
  log=$work/fuzz-$t.log
  execs=$(awk '/stat::number_of_executed_units/ { print $2 }' "$log")
  rate=$(awk '/stat::average_exec_per_sec/ { print $2 }' "$log")
  cov=$(grep -ao 'cov: [0-9]* ft: [0-9]*' "$log" | tail -n 1)
  if [ "$(cat "$work/rc-$t")" != 0 ]; then
    echo "FAIL fuzz $t: see below; input saved under $art/" >&2
    grep -a -A 30 -m 1 -e 'ERROR' -e 'fuzz check failed' -e 'runtime error' "$log" >&2
    status=1
  fi
  printf 'fuzz %-9s %ss: %s execs, %s exec/s, %s\n' "$t" "$secs" \
    "${execs:-?}" "${rate:-?}" "${cov:-cov: ?}"
done
exit $status
