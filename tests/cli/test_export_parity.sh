#!/usr/bin/env bash
# lowbit export parity on the llama3-mini fixture: every format's output unpacked by the
# consumer's own conventions (scripts/export_parity.py: GPTQModel's and AutoAWQ's unpacking,
# compressed_tensors' decompress, the gguf package's dequantize) against lowbit's weights.
# About a minute and a half on 2 cores (Python start-up per check): label slow.
set -u
B="$LOWBIT_BIN"
F="$LOWBIT_TEST_FIXTURES"
M="$LOWBIT_TEST_MODELS"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PARITY="$HERE/../../scripts/export_parity.py"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$HERE/expect.sh"

if ! python3 -c "import torch, safetensors, gguf, compressed_tensors" 2>/dev/null; then
  echo "skipped: python3 with torch, safetensors, gguf and compressed-tensors is needed for the parity checks"
  exit 77
fi
[[ -f "$M/stories260K/tok512.bin" ]] || { echo "skipped: $M/stories260K/tok512.bin is missing"; exit 77; }

# The mini model with a tokenizer (ids < 512 < its 1024 embeddings) so that GPTQ can calibrate.
mkdir -p "$T/mini"
cp "$F/models/llama3-mini-bf16/"{config.json,model.safetensors} "$M/stories260K/tok512.bin" "$T/mini/"
python3 -c "print(' '.join(['Once upon a time there was a little girl named Lily who loved to play.'] * 200))" > "$T/calib.txt"

quantize() {  # quantize NAME SPEC
  "$B" quantize --model "$T/mini" --method "$2" -o "$T/$1" --threads 2 --calib "$T/calib.txt" --nsamples 4 \
    --seqlen 64 >/dev/null 2>&1 || bad "quantize $2"
  "$B" export "$T/$1" --format hf -o "$T/$1-hf" >/dev/null || bad "export $1 hf"
}
# parity NAME FORMAT... : exports NAME in each format and runs the parity script on all of them.
parity() {
  local name="$1"; shift
  local args=()
  for f in "$@"; do
    local out="$T/$name-$f" flag="--$f"
    [[ $f == gguf ]] && out="$out.gguf"
    [[ $f == compressed-tensors ]] && flag="--ct"
    if "$B" export "$T/$name" --format "$f" -o "$out" >/dev/null; then args+=("$flag" "$out"); else bad "export $name $f"; fi
  done
  local res
  if res=$(python3 "$PARITY" --lowbit "$T/$name" --hf "$T/$name-hf" "${args[@]}" 2>&1); then ok; else bad "parity $name: $res"; fi
  echo "$name: $res"
}

quantize a4 "rtn:w=4,g=32"
parity a4 gptq awq compressed-tensors gguf
quantize s4 "rtn:w=4,g=64,sym=1"
parity s4 gptq awq compressed-tensors gguf
quantize s8 "rtn:w=8,g=32,sym=1"
parity s8 gptq compressed-tensors gguf
quantize a3 "rtn:w=3,g=32"
parity a3 gptq compressed-tensors
quantize c2 "rtn:w=2,g=-1"
parity c2 gptq compressed-tensors
quantize ao "gptq:w=4,g=32,act_order=1"
parity ao gptq compressed-tensors
"$B" export "$T/s4" --format gptq --gptq-format v2 -o "$T/s4-gptq2" >/dev/null || bad "export gptq v2"
if res=$(python3 "$PARITY" --lowbit "$T/s4" --hf "$T/s4-hf" --gptq "$T/s4-gptq2" 2>&1); then ok; else bad "parity gptq v2: $res"; fi
# compressed-tensors with fp32 scales holds lowbit's weights exactly (the parity script demands 0).
expect_ok "ct exact" "largest difference from the fake-quant weights: 0 \(exact\)" "$B" export "$T/a4" --format compressed-tensors -o "$T/a4-ct2"

expect_ok "gguf dequantize" "0 linears packed, 14 dense" "$B" export "$T/a3" --format gguf --dequantize -o "$T/a3-dense.gguf"
if res=$(python3 "$PARITY" --lowbit "$T/a3" --hf "$T/a3-hf" --gguf "$T/a3-dense.gguf" 2>&1) && grep -q "0 differ" <<<"$res"; then ok; else bad "gguf dense parity: $res"; fi

report
