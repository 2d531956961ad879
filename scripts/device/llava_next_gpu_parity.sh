#!/usr/bin/env bash
# LLaVA-Next on a GPU at llava-hf/llama3-llava-next-8b-hf's dimensions, random weights (transformers
# and torch on the machine, no network needed):
#   1. logits: llava_next_gpu_parity.py on a model with 2 LLaMA and 4 CLIP layers: `lowbit
#      vlm-logits --device cuda` against transformers bf16 and fp32 on the GPU, per image (one JSON
#      line each: max |diff|, top-1 agreement, transformers' own bf16-vs-fp32 difference);
#   2. greedy generation of that model on IMAGE's prompt ids (those of step 1), on the GPU and on
#      the CPU: the new token ids of both;
#   3. the full-depth model (32 LLaMA layers, 24 CLIP layers, bf16 weights) quantized with GPTQ w4
#      g128 on the GPU by llava_next_quantize_gpu.sh: the quantization's time and peak memory (host
#      and GPU), the LLM part's perplexity, and the quantized model's new tokens on the GPU.
# A random model's tokens are random ids of LLaMA-3's vocabulary, so prompts are token ids and
# answers are printed as ids; the tokenizer beside the models serves the calibration text.
#
#   scripts/device/llava_next_gpu_parity.sh LOWBIT WORK [DATA]
#
#   LOWBIT  a lowbit binary built with CUDA (DEVICE=cpu: any build, a check of the script)
#   WORK    where the random models and results go (models are built once and reused)
#   DATA    a data directory with wikitext2/ (calibration and perplexity); without it the
#           calibration text is the repository's README.md and perplexity is skipped
#
# Variables (default): IMAGES the three tests/fixtures/vision images (JPEG, JPEG, PNG), IMAGE the
# first of IMAGES (steps 2 and 3), TOKENIZER (a tokenizer.json
# for the random models; the repository's byte-level tests/fixtures/vlm/tokenizer.json), DEVICE
# cuda, SHAPE real (tiny: small dimensions, for DEVICE=cpu checks), FULL 1 (0: skip step 3),
# FULL_TEXT_LAYERS 32, FULL_VISION_LAYERS 24, NSAMPLES 128, SEQLEN 2048, NEW 16.
set -euo pipefail
LOWBIT=$1 WORK=$2 DATA=${3:-}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
V="$ROOT/tests/fixtures/vision"
IMAGES=${IMAGES:-"$V/wide_1100x300.jpg $V/tall_150x420.jpg $V/rgb_240x180.png"}
IMAGE=${IMAGE:-${IMAGES%% *}}
TOKENIZER=${TOKENIZER:-$ROOT/tests/fixtures/vlm/tokenizer.json}
DEVICE=${DEVICE:-cuda} SHAPE=${SHAPE:-real} FULL=${FULL:-1}
FULL_TEXT_LAYERS=${FULL_TEXT_LAYERS:-32} FULL_VISION_LAYERS=${FULL_VISION_LAYERS:-24}
NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-2048} NEW=${NEW:-16}
mkdir -p "$WORK"
SMALL="$WORK/llava-next-$SHAPE-t2v4"

echo "== 1. logits against transformers ($DEVICE)"
python3 "$ROOT/scripts/device/llava_next_gpu_parity.py" "$LOWBIT" --dir "$SMALL" --shape "$SHAPE" \
  --text-layers 2 --vision-layers 4 --device "$DEVICE" --tokenizer "$TOKENIZER" --ids-out "$WORK/ids" \
  $IMAGES 2> "$WORK/parity.err" | tee "$WORK/parity.jsonl"
IDS=$(cat "$WORK/ids/$(basename "$IMAGE").ids")

echo "== 2. greedy generation on $(basename "$IMAGE"), $DEVICE and cpu"
for dev in "$DEVICE" cpu; do
  out=$("$LOWBIT" vlm-generate --model "$SMALL" --image "$IMAGE" --ids "$IDS" -n "$NEW" --device "$dev" \
          2> "$WORK/generate-$dev.err" | tr '\n' ' ')
  echo "$dev: $out | $(tail -n 1 "$WORK/generate-$dev.err")"
done

[[ "$FULL" == 0 ]] && exit 0
echo "== 3. full depth ($FULL_TEXT_LAYERS LLaMA, $FULL_VISION_LAYERS CLIP layers), GPTQ w4 g128 on $DEVICE"
FULLDIR="$WORK/llava-next-$SHAPE-full"
python3 "$ROOT/scripts/device/llava_next_gpu_parity.py" "$LOWBIT" --dir "$FULLDIR" --shape "$SHAPE" \
  --text-layers "$FULL_TEXT_LAYERS" --vision-layers "$FULL_VISION_LAYERS" --save-dtype bfloat16 \
  --tokenizer "$TOKENIZER" --build-only 2> "$WORK/build-full.err"
if [[ -n "$DATA" && -f "$DATA/wikitext2/wiki.train.raw" ]]; then
  CALIB=wikitext2 PPL_DEVICE=$DEVICE
elif [[ -n "$DATA" && -d "$DATA/ptb" ]]; then  # WikiText2 train absent: PTB train, as the studies do
  CALIB=ptb PPL_DEVICE=$DEVICE
else  # no data: the quantization and the answers only
  CALIB="$ROOT/README.md" PPL_DEVICE=none DATA=${DATA:-$WORK}
fi
METHODS="gptq:w=4,g=128" DEVICE=$DEVICE PPL_DEVICE=$PPL_DEVICE VLM_DEVICE=$DEVICE CALIB=$CALIB CPU_TOO=0 \
  NSAMPLES=$NSAMPLES SEQLEN=$SEQLEN PPL_SEQLEN=$SEQLEN NEW=$NEW IDS="$IDS" \
  bash "$ROOT/scripts/device/llava_next_quantize_gpu.sh" "$LOWBIT" "$FULLDIR" "$DATA" "$IMAGE" "$WORK/quantized"
