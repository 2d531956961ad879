#!/usr/bin/env bash
# GPTQ w4 g128 of a LLaMA-3-70B-shaped model block by block on one GPU. The weights are
# generated on request (`random:DIR`: config.json and tokenizer, no 140 GB checkpoint on disk);
# prints lowbit's seconds and peak GPU memory, and the process's peak host memory.
#
#   bench/gpu/gptq_70b.sh LOWBIT DATA_DIR WORK_DIR TOKENIZER_DIR [NSAMPLES]
set -euo pipefail
LOWBIT=$1 DATA=$2 WORK=$3 TOK=$4 NSAMPLES=${5:-128}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
M="$WORK/llama3-70b-shape"
mkdir -p "$M"
cp "$ROOT/bench/configs/llama3-70b.json" "$M/config.json"
for f in tokenizer.json tokenizer_config.json; do [[ -f "$TOK/$f" ]] && cp "$TOK/$f" "$M/"; done
"$LOWBIT" quantize --model "random:$M" --method gptq:w=4,g=128 --calib ptb --nsamples "$NSAMPLES" --seqlen 2048 \
  --data-dir "$DATA" --device cuda --no-save --json > "$WORK/gptq70_lowbit.json"
python3 "$ROOT/bench/gpu/summarize.py" gptq "$M/config.json" "$WORK/gptq70_lowbit.json"
