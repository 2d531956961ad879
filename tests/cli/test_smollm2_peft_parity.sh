#!/usr/bin/env bash
# LoRA training on SmolLM2-135M-Instruct against transformers + PEFT + torch
# (scripts/smollm2_peft_parity.py): the first step's gradients of every A and B and the loss of
# each step, from the same adapters on the same batches. SMOLLM2_PEFT_STEPS steps (default 5,
# about a minute and a half on 2 cores; the README's figures are of 50). Label slow; skipped
# without the model (scripts/fetch-smollm2.sh) or Python's torch, transformers and peft.
set -u
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
GGUF="${LOWBIT_MODELS_CACHE:-$HOME/.cache/lowbit/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$GGUF" ]] || { echo "skipped: $GGUF is missing (scripts/fetch-smollm2.sh)"; exit 77; }
[[ -f "$LOWBIT_TEST_DATA/alpaca/alpaca_5000.json" ]] || { echo "skipped: no alpaca_5000.json"; exit 77; }
if ! python3 -c "import torch, transformers, peft, safetensors" 2>/dev/null; then
  echo "skipped: python3 with torch, transformers, peft and safetensors is needed"
  exit 77
fi
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
python3 "$HERE/../../scripts/smollm2_peft_parity.py" --gguf "$GGUF" --lowbit "$LOWBIT_BIN" \
  --data "$LOWBIT_TEST_DATA/alpaca/alpaca_5000.json" --out "$T/run" --steps "${SMOLLM2_PEFT_STEPS:-5}" \
  >"$T/log" 2>&1
rc=$?
grep -Ev "^(step [0-9]+/|Loading weights|Failed to load CPU gemm)" "$T/log"
exit $rc
