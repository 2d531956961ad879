#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds lowbit from scratch and runs its tests:
# the unit, model and CLI tests (ctest's default set) and each fuzzer for a fixed time.
# Usage: scripts/test.sh        (LOWBIT_FUZZ_SECONDS=N to change the fuzzing time, 0 to skip)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/scripts/install-deps.sh"
# SmolLM2-135M-Instruct (GGUF) into the models cache: the real model the model tests run on.
"$ROOT/scripts/fetch-smollm2.sh" >/dev/null
cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release
cmake --build "$ROOT/build"
ctest --test-dir "$ROOT/build" --output-on-failure -j"$(nproc)" -LE slow
FUZZ_SECONDS="${LOWBIT_FUZZ_SECONDS:-30}"
if [[ "$FUZZ_SECONDS" -gt 0 ]]; then "$ROOT/scripts/fuzz.sh" "$FUZZ_SECONDS"; fi
