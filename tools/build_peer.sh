#!/usr/bin/env bash
# build_peer.sh - build the llama.cpp "peer" codi is compared against.
#
# Produces (all under bench/.peer/, git-ignored):
#   bench/.peer/venv/   Python venv with llama-cpp-python==0.3.36 (built from
#                       source for PEER_ISA, below), numpy, gguf.
#                       Used by tools/make_reference.py and the benchmarks.
#   bench/.peer/bin/    llama.cpp's own tools, built from the very llama.cpp
#                       that llama-cpp-python 0.3.36 vendors (sdist
#                       vendor/llama.cpp): llama-bench, llama-perplexity,
#                       llama-quantize, llama-cli, llama-server (statically linked;
#                       llama-server: bench/server_throughput.py --server llama).
#   bench/.peer/src/, bench/.peer/build/   sdist and cmake build tree.
#
# Usage: tools/build_peer.sh [--venv-only | --tools-only] [--force]
#   --venv-only   only create/refresh the venv
#   --tools-only  only build the llama.cpp tools
#   --force       rebuild even if the results already exist
# Env: JOBS (default 2) parallel compile jobs; PYTHON (default python3);
#      PEER_ISA (default avx2): the instruction set llama.cpp is built for.
#      "avx2" = AVX2+FMA+F16C, no AVX-512/AMX: the machine the speed issue
#      names (2 cores, AVX2+FMA) and what codi's kernels use, whatever
#      the host; "native" = -DGGML_NATIVE=ON (everything the host has; on a
#      host that lists AMX without granting its tile state, llama.cpp's
#      AMX path crashes in ggml_backend_amx_mul_mat).
#
# Requirements (Debian 12): apt-get install python3 python3-venv python3-pip \
#   build-essential cmake git   (ninja-build optional)
# Takes a while on 2 cores (the pip build compiles llama.cpp once, the tools
# build compiles it again).

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PEER="$ROOT/bench/.peer"
VENV="$PEER/venv"
BIN="$PEER/bin"
SRC="$PEER/src"
BUILD="$PEER/build"
PY="${PYTHON:-python3}"
JOBS="${JOBS:-2}"
VERSION=0.3.36
PEER_ISA="${PEER_ISA:-avx2}"
case "$PEER_ISA" in
    avx2) ISA_FLAGS=(-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON
                     -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF
                     -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF) ;;
    native) ISA_FLAGS=(-DGGML_NATIVE=ON) ;;
    *) echo "build_peer.sh: PEER_ISA must be avx2 or native" >&2; exit 2 ;;
esac
TOOLS=(llama-bench llama-perplexity llama-quantize llama-cli llama-server)

do_venv=1; do_tools=1; force=0
for arg in "$@"; do
    case "$arg" in
        --venv-only) do_tools=0 ;;
        --tools-only) do_venv=0 ;;
        --force) force=1 ;;
        -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build_peer.sh: unknown argument '$arg'" >&2; exit 2 ;;
    esac
done

die() { echo "build_peer.sh: error: $*" >&2; exit 1; }
log() { echo "build_peer.sh: $*"; }
t0=$(date +%s)
mkdir -p "$PEER"

build_venv() {
    if [ "$force" = 0 ] && [ -x "$VENV/bin/python" ] && \
       "$VENV/bin/python" -c "import llama_cpp, numpy, gguf, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
        log "venv already has llama-cpp-python $VERSION, numpy, gguf"
        return
    fi
    log "creating venv $VENV"
    "$PY" -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    log "pip install llama-cpp-python==$VERSION numpy gguf (compiles llama.cpp; slow)"
    CMAKE_ARGS="${ISA_FLAGS[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$JOBS" \
        "$VENV/bin/python" -m pip install --no-cache-dir --verbose \
        "llama-cpp-python==$VERSION" numpy gguf
    "$VENV/bin/python" -c "import llama_cpp; print('llama_cpp', llama_cpp.__version__)"
}

build_tools() {
    local have=1 t
    for t in "${TOOLS[@]}"; do [ -x "$BIN/$t" ] || have=0; done
    [ "$(cat "$BIN/.isa" 2>/dev/null)" = "$PEER_ISA" ] || have=0
    if [ "$force" = 0 ] && [ "$have" = 1 ]; then
        log "tools already in $BIN: ${TOOLS[*]}"
        return
    fi
    command -v cmake >/dev/null 2>&1 || die "cmake not found (apt-get install cmake)"
    command -v c++ >/dev/null 2>&1 || die "no C++ compiler (apt-get install build-essential)"

    local tarball="$SRC/llama_cpp_python-$VERSION.tar.gz"
    local srcdir="$SRC/llama_cpp_python-$VERSION"
    mkdir -p "$SRC"
    if [ ! -f "$tarball" ]; then
        log "downloading llama-cpp-python==$VERSION sdist"
        "$PY" -m pip download --disable-pip-version-check --no-deps \
            --no-binary :all: "llama-cpp-python==$VERSION" -d "$SRC"
    fi
    [ -f "$tarball" ] || die "sdist $tarball not found after pip download"
    if [ ! -f "$srcdir/vendor/llama.cpp/CMakeLists.txt" ]; then
        log "extracting $tarball"
        tar -xzf "$tarball" -C "$SRC"
    fi

    local gen=()
    command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
    log "configuring llama.cpp (PEER_ISA=$PEER_ISA, static) in $BUILD"
    cmake -S "$srcdir/vendor/llama.cpp" -B "$BUILD" "${gen[@]}" \
        -DCMAKE_BUILD_TYPE=Release \
        "${ISA_FLAGS[@]}" \
        -DLLAMA_CURL=OFF \
        -DLLAMA_OPENSSL=OFF \
        -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF \
        -DLLAMA_BUILD_SERVER=ON \
        -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF
    log "building ${TOOLS[*]} with -j$JOBS"
    cmake --build "$BUILD" --config Release -j "$JOBS" --target "${TOOLS[@]}"
    mkdir -p "$BIN"
    for t in "${TOOLS[@]}"; do
        [ -x "$BUILD/bin/$t" ] || die "$BUILD/bin/$t was not built"
        cp -f "$BUILD/bin/$t" "$BIN/$t"
    done
    echo "$PEER_ISA" > "$BIN/.isa"
    log "tools installed in $BIN (PEER_ISA=$PEER_ISA)"
}

[ "$do_venv" = 1 ] && build_venv
[ "$do_tools" = 1 ] && build_tools
log "done in $(( $(date +%s) - t0 )) s"
