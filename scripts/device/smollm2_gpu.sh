#!/usr/bin/env bash
# SmolLM2-135M-Instruct (GGUF) on a GPU machine: lowbit's perplexity beside transformers' GGUF
# loading (GPU bf16 on every window of WikiText2 and PTB; CPU fp32 on the first LIMIT_CPU
# windows), then the full-set study (examples/smollm2-full.toml), resumable in WORK.
#
#   scripts/device/smollm2_gpu.sh LOWBIT GGUF DATA WORK [LIMIT_CPU] [STUDY_SECONDS]
set -euo pipefail
LOWBIT=$1 GGUF=$2 DATA=$3 WORK=$4 LIMIT_CPU=${5:-16} STUDY_SECONDS=${6:-0}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
mkdir -p "$WORK"
for s in wikitext2 ptb; do
  "$LOWBIT" ppl --model "$GGUF" --dataset "$s" --data-dir "$DATA" --device cuda --json > "$WORK/lowbit_gpu_$s.json"
  "$LOWBIT" ppl --model "$GGUF" --dataset "$s" --data-dir "$DATA" --limit "$LIMIT_CPU" --json > "$WORK/lowbit_cpu_$s.json"
done
python3 "$ROOT/scripts/device/gguf_ppl.py" "$GGUF" --data-dir "$DATA" --device cuda --dtype bfloat16 > "$WORK/hf_gpu.jsonl"
python3 "$ROOT/scripts/device/gguf_ppl.py" "$GGUF" --data-dir "$DATA" --device cpu --dtype float32 \
  --limit "$LIMIT_CPU" > "$WORK/hf_cpu.jsonl"
for f in "$WORK"/lowbit_*.json; do
  python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(sys.argv[1].split("/")[-1], j["windows"], "%.4f" % j["ppl"], "%.1f s" % j["seconds"], j["device"])' "$f"
done
cat "$WORK"/hf_*.jsonl
if [[ "$STUDY_SECONDS" -gt 0 ]]; then
  export LOWBIT_MODELS_CACHE="$(dirname "$GGUF")" LOWBIT_DATA="$DATA"
  timeout "$STUDY_SECONDS" "$LOWBIT" study "$ROOT/examples/smollm2-full.toml" --db "$WORK/smollm2-full.sqlite" --resume \
    || echo "study stopped after $STUDY_SECONDS s (resumable)"
  "$LOWBIT" report "$WORK/smollm2-full.sqlite" --format md
fi
