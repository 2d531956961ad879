#!/usr/bin/env bash
# WikiText2 perplexity (141 windows of 2048 tokens) of a LLaMA-3-8B-shaped model with random
# weights: lowbit on the GPU beside transformers (sdpa, bf16, one window per forward), same GPU,
# same run. Writes WORK/ppl_transformers.json, WORK/ppl_lowbit.json and prints the comparison.
#
#   bench/gpu/ppl_8b.sh LOWBIT DATA_DIR WORK_DIR TOKENIZER_DIR [LIMIT]
set -euo pipefail
LOWBIT=$1 DATA=$2 WORK=$3 TOK=$4 LIMIT=${5:-0}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
M="$WORK/llama3-8b-random"
mkdir -p "$WORK"
[[ -f "$M/config.json" ]] || python3 "$ROOT/scripts/device/make_random_llama.py" "$ROOT/bench/configs/llama3-8b.json" \
  "$M" --tokenizer "$TOK"
python3 "$ROOT/scripts/device/transformers_ppl.py" "$M" --data-dir "$DATA" --limit "$LIMIT" > "$WORK/ppl_transformers.json"
"$LOWBIT" ppl --model "$M" --dataset wikitext2 --data-dir "$DATA" --device cuda --limit "$LIMIT" --json \
  > "$WORK/ppl_lowbit.json"
python3 "$ROOT/bench/gpu/summarize.py" ppl "$M/config.json" "$WORK/ppl_transformers.json" "$WORK/ppl_lowbit.json"
