#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds lowbit and runs its main job on the default model and
# data: the testbed-44m checkpoint and the datasets in ../shared (or MODELS / DATA): what the
# checkpoint holds, then its WikiText2 perplexity.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MODELS="${MODELS:-$ROOT/../shared/models}"
DATA="${DATA:-$ROOT/../shared/data}"
"$ROOT/scripts/install-deps.sh"
cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$ROOT/build" --target lowbit
LOWBIT="$ROOT/build/tools/lowbit/lowbit"
"$LOWBIT" inspect "$MODELS/testbed-44m"
# WikiText2 perplexity under GPTQ's protocol (166 windows of 2048 tokens; a few minutes on 2 cores)
"$LOWBIT" ppl --model "$MODELS/testbed-44m" --dataset wikitext2 --data-dir "$DATA"
