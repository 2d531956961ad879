#!/usr/bin/env bash
# A LLaVA-Next model's language model quantized on the GPU (the GPU block driver) and written
# whole, beside the same quantization on the CPU: both checkpoints are inspected, their language
# models' perplexity is measured by one `lowbit ppl` (on PPL_DEVICE), and both answer the same
# image and question with vlm-generate (on VLM_DEVICE: the vision tower, projector and LLM in bf16
# on the GPU). Prints one line per method with both perplexities and both answers, and for each
# quantization its time and peak memory (host and GPU) as `lowbit quantize` reports them, and each
# answer's seconds and peak GPU memory. With PACKED=1 each quantized checkpoint also answers with
# `--packed` (its language model from its packed codes: on a GPU the W4A16 GEMM or the low-bit
# GEMV), and the packed logits of the prompt are compared with the fake-quant ones on VLM_DEVICE
# (relative L2, the largest |diff| and top-1 agreement over the prompt's positions; numpy).
#
#   scripts/device/llava_next_quantize_gpu.sh LOWBIT LLAVA_DIR DATA IMAGE WORK
#
#   LOWBIT     a lowbit binary built with CUDA (with DEVICE=cpu any build: the script's own check)
#   LLAVA_DIR  a LlavaNextForConditionalGeneration directory (llava-hf/llama3-llava-next-8b-hf, or the
#              random-weight 8B-config model llava_next_gpu_parity.py --build-only writes)
#   DATA       the data directory (CALIB's train file, wikitext2/wiki.test.raw)
#   IMAGE      a PNG or JPEG
#   WORK       the output directory (a checkpoint already there is not written again)
#
# Variables (default): METHODS "rtn:w=4,g=128 gptq:w=4,g=128 awq:w=4,g=128", DEVICE cuda (the
# quantization's), PPL_DEVICE cuda (none: no perplexity), CALIB wikitext2, NSAMPLES 128, SEQLEN 2048, PPL_SEQLEN 2048,
# PPL_LIMIT 40 (windows), PROMPT "What is shown in this image?", IDS (token ids holding the image's
# tokens, instead of PROMPT, for a model without a tokenizer), NEW 32 (tokens), VLM_DEVICE cuda,
# THREADS 0, CPU_TOO 1 (0: quantize on DEVICE only), PACKED 1 (0: fake-quant only).
set -euo pipefail
LOWBIT=$1 LLAVA=$2 DATA=$3 IMAGE=$4 WORK=$5
METHODS=${METHODS:-"rtn:w=4,g=128 gptq:w=4,g=128 awq:w=4,g=128"}
DEVICE=${DEVICE:-cuda} PPL_DEVICE=${PPL_DEVICE:-cuda} CALIB=${CALIB:-wikitext2}
NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-2048} PPL_SEQLEN=${PPL_SEQLEN:-2048} PPL_LIMIT=${PPL_LIMIT:-40}
PROMPT=${PROMPT:-"What is shown in this image?"} IDS=${IDS:-} NEW=${NEW:-32} THREADS=${THREADS:-0}
VLM_DEVICE=${VLM_DEVICE:-cuda} CPU_TOO=${CPU_TOO:-1} PACKED=${PACKED:-1}
mkdir -p "$WORK"

ppl() { [[ "$PPL_DEVICE" == none ]] && { echo n/a; return; }
        "$LOWBIT" ppl --model "$1" --data-dir "$DATA" --seqlen "$PPL_SEQLEN" --limit "$PPL_LIMIT" \
          --device "$PPL_DEVICE" --threads "$THREADS" 2>/dev/null | grep -Eo 'PPL = [0-9.eE+]+' | cut -d' ' -f3; }
# The answer, then (after " | ") vlm-generate's own line: its seconds, device and peak GPU memory.
# Extra arguments (--packed) go to vlm-generate.
answer() {
  local model=$1; shift
  local q=(--prompt "$PROMPT")
  [[ -n "$IDS" ]] && q=(--ids "$IDS")
  local err="$WORK/answer.err" text
  text=$("$LOWBIT" vlm-generate --model "$model" --image "$IMAGE" "${q[@]}" -n "$NEW" --threads "$THREADS" \
           --device "$VLM_DEVICE" "$@" 2>"$err" | head -c 200 | tr '\n' ' ') || true
  echo "$text | $(tail -n 1 "$err")"
}
# The prompt's logits fake-quant and --packed on VLM_DEVICE, compared.
packed_logits() {
  local q=(--prompt "$PROMPT")
  [[ -n "$IDS" ]] && q=(--ids "$IDS")
  "$LOWBIT" vlm-logits --model "$1" --image "$IMAGE" "${q[@]}" --device "$VLM_DEVICE" --threads "$THREADS" \
    -o "$WORK/fake.safetensors" 2>/dev/null || { echo "vlm-logits failed"; return; }
  "$LOWBIT" vlm-logits --model "$1" --image "$IMAGE" "${q[@]}" --device "$VLM_DEVICE" --threads "$THREADS" \
    --packed -o "$WORK/packed.safetensors" 2>"$WORK/packed.err" || { echo "vlm-logits --packed failed: $(tail -n 1 "$WORK/packed.err")"; return; }
  python3 - "$WORK/packed.safetensors" "$WORK/fake.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def read(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    b, t = h["logits"]["data_offsets"]
    return np.frombuffer(data[b:t], dtype=np.float32).reshape(h["logits"]["shape"]), h["__metadata__"]["execution"]
(a, ea), (b, eb) = read(sys.argv[1]), read(sys.argv[2])
rel = float(np.linalg.norm(a - b) / np.linalg.norm(b))
print(f"{ea} vs {eb}: logits rel. L2 {rel:.2e}, max |diff| {float(np.abs(a - b).max()):.3g} "
      f"(largest |logit| {float(np.abs(b).max()):.3g}), top-1 {int((a.argmax(1) == b.argmax(1)).sum())}/{a.shape[0]}")
PY
}
# quantize's summary line: its time and peak memory.
cost() { grep -Eo 'quantized in .*' "$1" | tail -n 1; }

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
    echo "$m quantized on $dev: $(cost "$out.log")"
    echo "$m quantized on $dev: ppl $(ppl "$out"); answer: $(answer "$out")"
    if [[ "$PACKED" == 1 ]]; then
      echo "$m quantized on $dev, --packed on $VLM_DEVICE: answer: $(answer "$out" --packed)"
      echo "$m quantized on $dev, prompt logits on $VLM_DEVICE: $(packed_logits "$out")"
    fi
    [[ "$dev" == cpu || "$CPU_TOO" == 0 ]] && break
  done
done
