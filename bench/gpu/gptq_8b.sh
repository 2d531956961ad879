#!/usr/bin/env bash
# GPTQ w4 g128 of a LLaMA-3-8B-shaped model (random weights) with 128 x 2048 PTB calibration
# windows, calibration included: lowbit on the GPU for the whole model, beside a straightforward
# PyTorch GPTQ (scripts/device/gptq_torch_reference.py, the paper's column loop) on the first
# REF_LAYERS decoder layers, extrapolated to the model. Same GPU, same run.
#
#   bench/gpu/gptq_8b.sh LOWBIT DATA_DIR WORK_DIR TOKENIZER_DIR [REF_LAYERS]
set -euo pipefail
LOWBIT=$1 DATA=$2 WORK=$3 TOK=$4 REF_LAYERS=${5:-2}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
M="$WORK/llama3-8b-random"
mkdir -p "$WORK"
[[ -f "$M/config.json" ]] || python3 "$ROOT/scripts/device/make_random_llama.py" "$ROOT/bench/configs/llama3-8b.json" \
  "$M" --tokenizer "$TOK"
LOWBIT_PHASE_PROFILE=1 "$LOWBIT" quantize --model "$M" --method gptq:w=4,g=128 --calib ptb --nsamples 128 --seqlen 2048 --data-dir "$DATA" \
  --device cuda --no-save --json > "$WORK/gptq_lowbit.json"
if [[ "$REF_LAYERS" -gt 0 ]]; then
  python3 "$ROOT/scripts/device/gptq_torch_reference.py" "$M" --data-dir "$DATA" --layers "$REF_LAYERS" \
    | tail -n 1 > "$WORK/gptq_reference.json"
fi
REF=()
[[ "$REF_LAYERS" -gt 0 ]] && REF=("$WORK/gptq_reference.json")
python3 "$ROOT/bench/gpu/summarize.py" gptq "$M/config.json" "$WORK/gptq_lowbit.json" "${REF[@]}"
