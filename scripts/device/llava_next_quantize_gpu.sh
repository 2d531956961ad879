#!/usr/bin/env bash
# A LLaVA-Next model's language model quantized on the GPU (the GPU block driver) and written
# whole, beside the same quantization on the CPU: both checkpoints are inspected, their language
# models' perplexity is measured by one `lowbit ppl` (on PPL_DEVICE), and both answer the same
# image and question with vlm-generate (on the CPU: LLaVA-Next has no GPU path). Prints one line
# per method with both perplexities and both answers.
#
#   scripts/device/llava_next_quantize_gpu.sh LOWBIT LLAVA_DIR DATA IMAGE WORK
#
#   LOWBIT     a lowbit binary built with CUDA (with DEVICE=cpu any build: the script's own check)
#   LLAVA_DIR  a LlavaNextForConditionalGeneration directory (llava-hf/llama3-llava-next-8b-hf)
#   DATA       the data directory (CALIB's train file, wikitext2/wiki.test.raw)
#   IMAGE      a PNG or JPEG
#   WORK       the output directory (a checkpoint already there is not written again)
#
# Variables (default): METHODS "rtn:w=4,g=128 gptq:w=4,g=128 awq:w=4,g=128", DEVICE cuda (the
# quantization's), PPL_DEVICE cuda, CALIB wikitext2, NSAMPLES 128, SEQLEN 2048, PPL_SEQLEN 2048,
# PPL_LIMIT 40 (windows), PROMPT "What is shown in this image?", NEW 32 (tokens), THREADS 0.
set -euo pipefail
LOWBIT=$1 LLAVA=$2 DATA=$3 IMAGE=$4 WORK=$5
METHODS=${METHODS:-"rtn:w=4,g=128 gptq:w=4,g=128 awq:w=4,g=128"}
DEVICE=${DEVICE:-cuda} PPL_DEVICE=${PPL_DEVICE:-cuda} CALIB=${CALIB:-wikitext2}
NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-2048} PPL_SEQLEN=${PPL_SEQLEN:-2048} PPL_LIMIT=${PPL_LIMIT:-40}
PROMPT=${PROMPT:-"What is shown in this image?"} NEW=${NEW:-32} THREADS=${THREADS:-0}
mkdir -p "$WORK"

ppl() { "$LOWBIT" ppl --model "$1" --data-dir "$DATA" --seqlen "$PPL_SEQLEN" --limit "$PPL_LIMIT" \
          --device "$PPL_DEVICE" --threads "$THREADS" 2>/dev/null | grep -Eo 'PPL = [0-9.eE+]+' | cut -d' ' -f3; }
answer() { "$LOWBIT" vlm-generate --model "$1" --image "$IMAGE" --prompt "$PROMPT" -n "$NEW" --threads "$THREADS" \
             2>/dev/null | head -c 200 | tr '\n' ' '; }

echo "16-bit: ppl $(ppl "$LLAVA"); answer: $(answer "$LLAVA")"
for m in $METHODS; do
  for dev in "$DEVICE" cpu; do
    out="$WORK/$(echo "$m" | tr ':,=' '___')-$dev"
    if [[ ! -d "$out" ]]; then
      "$LOWBIT" quantize --model "$LLAVA" --method "$m" --calib "$CALIB" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" \
        --data-dir "$DATA" --device "$dev" --threads "$THREADS" -o "$out" >"$out.log" 2>&1 \
        || { echo "$m on $dev: quantize failed (see $out.log)"; continue; }
    fi
    "$LOWBIT" inspect "$out" | grep -E '^(quantization|multimodal)' | sed "s|^|  $m $dev: |"
    echo "$m quantized on $dev: ppl $(ppl "$out"); answer: $(answer "$out")"
    [[ "$dev" == cpu ]] && break
  done
done
