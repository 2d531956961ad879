#!/usr/bin/env bash
# lowbit vlm-generate and vlm-logits on the tiny random-weight LLaVA-Next of
# tests/fixtures/llava_next (scripts/make_llava_next_fixture.py): greedy generation equal to
# transformers' generate, logits written, and refusals of bad input (corrupt and unsupported
# images, mismatched image tokens) that name the file and write nothing.
set -u
B="$LOWBIT_BIN"
F="$LOWBIT_TEST_FIXTURES"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

M="$T/model"
mkdir -p "$M"
cp "$F/llava_next/config.json" "$F/llava_next/preprocessor_config.json" "$M/"
zstd -dq "$F/llava_next/model.safetensors.zst" -o "$M/model.safetensors"
IMG="$F/vision/tall_150x420.jpg"
IDS=$(sed -n 1p "$F/llava_next/cli_tall_150x420.txt")
GEN=$(sed -n 2p "$F/llava_next/cli_tall_150x420.txt")

expect_ok "vlm-generate ids" "^$GEN\$" "$B" vlm-generate --model "$M" --image "$IMG" --ids "$IDS" -n 12 --threads 1
expect_ok "vlm-logits" "logits \[89, 320\] written" "$B" vlm-logits --model "$M" --image "$IMG" --ids "$IDS" \
  -o "$T/logits.safetensors"
if [[ -s "$T/logits.safetensors" ]]; then ok; else bad "vlm-logits wrote no file"; fi

head -c 5000 "$IMG" >"$T/cut.jpg"
expect_err "corrupt image" "image '$T/cut.jpg': corrupt JPEG" \
  "$B" vlm-logits --model "$M" --image "$T/cut.jpg" --ids "$IDS" -o "$T/bad.safetensors"
expect_err "unsupported mode" "cmyk_8x8.jpg' has an unsupported image mode: CMYK" \
  "$B" vlm-logits --model "$M" --image "$F/vision/cmyk_8x8.jpg" --ids "$IDS" -o "$T/bad.safetensors"
expect_err "16-bit grey" "gray16_8x8.png' has an unsupported image mode: 16-bit greyscale" \
  "$B" vlm-generate --model "$M" --image "$F/vision/gray16_8x8.png" --ids "$IDS"
expect_err "not an image" "not a PNG or JPEG" \
  "$B" vlm-generate --model "$M" --image "$F/llava_next/config.json" --ids "$IDS"
expect_err "token count" "the prompt has 76 image tokens \(id 300\) but the images have 152 features" \
  "$B" vlm-logits --model "$M" --image "$IMG" --image "$IMG" --ids "$IDS" -o "$T/bad.safetensors"
expect_err "no tokenizer" "has no tokenizer; pass --ids" "$B" vlm-generate --model "$M" --image "$IMG" --prompt hi
expect_err "prompt and ids" "" "$B" vlm-generate --model "$M" --image "$IMG" --prompt hi --ids 1
expect_ok "vlm-generate --device cpu" "^$GEN\$" "$B" vlm-generate --model "$M" --image "$IMG" --ids "$IDS" -n 12 \
  --threads 1 --device cpu
# --device is checked while parsing, before the model is opened.
expect_err "bad device" "--device: 'gpu': expected cpu, cuda or cuda:N" \
  "$B" vlm-logits --model "$T/no-such-model" --image "$IMG" --ids "$IDS" -o "$T/bad.safetensors" --device gpu
expect_err "vlm-eval bad device" "--device: 'cuda:x': 'x' is not a device index" \
  "$B" vlm-eval --model "$T/no-such-model" --task mme --data "$T" --device cuda:x
# LLaMA commands given the directory run its language model.
expect_ok "logits of the LLM part" "logits \[3, 320\] written" "$B" logits --model "$M" --ids 1,5,7 \
  -o "$T/text.safetensors"
if [[ ! -e "$T/bad.safetensors" ]]; then ok; else bad "a refused run wrote its output"; fi
report
