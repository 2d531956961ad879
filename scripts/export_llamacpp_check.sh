#!/usr/bin/env bash
# llama.cpp on a lowbit GGUF export: loads it, checks llama.cpp's tokenization of a text against
# lowbit's, and compares llama.cpp's perplexity with lowbit's on the same windows.
#
#   scripts/export_llamacpp_check.sh LLAMA_CPP_SRC QUANTIZED_DIR EXPORT.gguf TEXT_FILE [SEQLEN] [SPM]
#
# LLAMA_CPP_SRC: llama.cpp's sources (e.g. vendor/llama.cpp of the llama-cpp-python sdist); its
# libllama is built once into $LLAMA_CPP_BUILD (default /tmp/llama.cpp-build) with one compile job.
# lowbit's ppl runs on the quantized checkpoint (the fake-quant model) with --dataset TEXT_FILE;
# llama.cpp runs on the GGUF with the ids `lowbit tokenize` gives for the same file.
set -euo pipefail
SRC="$1"; Q="$2"; G="$3"; TEXT="$4"; SEQLEN="${5:-512}"; SPM="${6:-auto}"
B="${LOWBIT_BIN:-$(dirname "$0")/../build/tools/lowbit/lowbit}"
BUILD="${LLAMA_CPP_BUILD:-/tmp/llama.cpp-build}"
if [[ ! -f "$BUILD/bin/llamacpp_window_ppl" ]]; then
  cmake -S "$SRC" -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_COMMON=OFF >/dev/null
  cmake --build "$BUILD" -j1 --target llama >/dev/null
  mkdir -p "$BUILD/bin"
  g++ -O2 -std=c++17 "$(dirname "$0")/llamacpp_window_ppl.cpp" -I"$SRC/include" -I"$SRC/ggml/include" \
    "$BUILD/src/libllama.a" $(find "$BUILD/ggml/src" -name 'libggml*.a' | sort -r) -fopenmp -lpthread -ldl \
    -o "$BUILD/bin/llamacpp_window_ppl"
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
"$B" tokenize --model "$Q" --file "$TEXT" --ids --spm-convention "$SPM" > "$T/ids.txt"
echo "lowbit: $("$B" ppl --model "$Q" --dataset "$TEXT" --seqlen "$SEQLEN" --threads 2 --spm-convention "$SPM" 2>/dev/null | tail -1)"
"$BUILD/bin/llamacpp_window_ppl" "$G" "$T/ids.txt" "$SEQLEN" 1000000 "$TEXT" 2>/dev/null
