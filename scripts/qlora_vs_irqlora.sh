#!/usr/bin/env bash
# QLoRA vs IR-QLoRA on one model, as README's "QLoRA vs IR-QLoRA, measured" ran it: both bases
# quantized once, then for each seed a QLoRA and an IR-QLoRA fine-tune on the Alpaca subset and
# their evaluation (held-out Alpaca loss from finetune, WikiText2 perplexity, MMLU 5-shot, PIQA and
# ARC-e) over the base each was trained over, plus the bases alone.
#
#   scripts/qlora_vs_irqlora.sh OUT [MODEL] [STEPS] [SEEDS]
#     MODEL  default ../shared/models/testbed-44m     STEPS  default 100     SEEDS  default "0 1"
#   Environment: LOWBIT (the binary; default build/tools/lowbit/lowbit), DATA (default ../shared/data),
#   SPM (--spm-convention; default sentencepiece), THREADS (default 2), PPL_WINDOWS (40),
#   ITEMS (first N items per task; 500).
# Results: OUT/<run>.{ppl,mmlu,zs}.txt and OUT/<run>/lowbit_adapter.json (loss log, held-out loss).
set -euo pipefail
OUT=${1:?usage: $0 OUT [MODEL] [STEPS] [SEEDS]}
MODEL=${2:-../shared/models/testbed-44m}
STEPS=${3:-100}
SEEDS=${4:-0 1}
LOWBIT=${LOWBIT:-build/tools/lowbit/lowbit}
DATA=${DATA:-../shared/data}
SPM=${SPM:-sentencepiece}
THREADS=${THREADS:-2}
PPL_WINDOWS=${PPL_WINDOWS:-40}
ITEMS=${ITEMS:-500}
mkdir -p "$OUT"
common=(--spm-convention "$SPM" --threads "$THREADS")

evaluate() {  # NAME MODEL [ADAPTER]
  local name=$1 model=$2 ad=()
  [[ $# -gt 2 ]] && ad=(--adapter "$3")
  "$LOWBIT" ppl --model "$model" "${ad[@]}" --dataset wikitext2 --data-dir "$DATA" --limit "$PPL_WINDOWS" \
    "${common[@]}" >"$OUT/$name.ppl.txt" 2>&1
  "$LOWBIT" eval --model "$model" "${ad[@]}" --tasks mmlu --mmlu-shots 5 --data-dir "$DATA" --limit "$ITEMS" \
    "${common[@]}" >"$OUT/$name.mmlu.txt" 2>&1
  "$LOWBIT" eval --model "$model" "${ad[@]}" --tasks piqa,arc_easy --data-dir "$DATA" --limit "$ITEMS" \
    "${common[@]}" >"$OUT/$name.zs.txt" 2>&1
  echo "$name: $(tail -n 1 "$OUT/$name.ppl.txt")"
}

# The bases: the same data-free quantizers finetune runs on the source.
[[ -d "$OUT/base-nf4" ]] || "$LOWBIT" quantize --model "$MODEL" --method nf4:dq=1 -o "$OUT/base-nf4"
[[ -d "$OUT/base-icq" ]] || "$LOWBIT" quantize --model "$MODEL" --method icq:tau_range=0.1,tau_n=100,dq=1 \
  -o "$OUT/base-icq"
evaluate nf4 "$OUT/base-nf4"
evaluate icq "$OUT/base-icq"

for seed in $SEEDS; do
  for method in qlora irqlora; do
    run=${method}_s${seed}_${STEPS}
    "$LOWBIT" finetune --model "$MODEL" --method "$method" --data "$DATA/alpaca/alpaca_5000.json" \
      --steps "$STEPS" --batch 4 --grad-accum 1 --eval-size 50 --seed "$seed" --data-seed $((42 + seed)) \
      --force "${common[@]}" -o "$OUT/$run" 2>"$OUT/$run.log"
    base=$OUT/base-nf4
    [[ $method == irqlora ]] && base=$OUT/base-icq
    evaluate "$run" "$base" "$OUT/$run"
  done
done
