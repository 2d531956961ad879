#!/usr/bin/env bash
# lowbit export's refusals and errors on the llama3-mini fixture, each leaving nothing behind
# (the parity of what it writes: test_export_parity.sh).
set -u
B="$LOWBIT_BIN"
F="$LOWBIT_TEST_FIXTURES"
M="$LOWBIT_TEST_MODELS"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$HERE/expect.sh"

[[ -f "$M/stories260K/tok512.bin" ]] || { echo "skipped: $M/stories260K/tok512.bin is missing"; exit 77; }

# The mini model with a tokenizer (ids < 512 < its 1024 embeddings) so that GPTQ can calibrate.
mkdir -p "$T/mini"
cp "$F/models/llama3-mini-bf16/"{config.json,model.safetensors} "$M/stories260K/tok512.bin" "$T/mini/"
for i in $(seq 200); do printf 'Once upon a time there was a little girl named Lily who loved to play. '; done > "$T/calib.txt"

quantize() {  # quantize NAME SPEC
  "$B" quantize --model "$T/mini" --method "$2" -o "$T/$1" --threads 2 --calib "$T/calib.txt" --nsamples 4 \
    --seqlen 64 >/dev/null 2>&1 || bad "quantize $2"
  "$B" export "$T/$1" --format hf -o "$T/$1-hf" >/dev/null || bad "export $1 hf"
}

quantize a3 "rtn:w=3,g=32"
quantize ao "gptq:w=4,g=32,act_order=1"
quantize a4 "rtn:w=4,g=32"
"$B" export "$T/a4" --format gptq -o "$T/a4-gptq" >/dev/null || bad "export a4 gptq"
# The GPTQ export's dense tensors are fp16 and its config says so under both spellings.
python3 - "$T/a4-gptq/config.json" <<'PY' && ok || bad "gptq config dtype"
import json, sys
c = json.load(open(sys.argv[1]))
q = c["quantization_config"]
assert c["dtype"] == "float16" and c["torch_dtype"] == "float16", c
assert q["quant_method"] == "gptq" and q["bits"] == 4 and q["group_size"] == 32 and q["checkpoint_format"] == "gptq", q
PY
expect_err "awq 3-bit" "format awq cannot hold .*AWQ's GEMM layout packs 4 bits, not 3; formats that hold it: gptq, compressed-tensors" "$B" export "$T/a3" --format awq -o "$T/x"
expect_err "awq act-order" "act-order group map .*formats that hold it: gptq, compressed-tensors" "$B" export "$T/ao" --format awq -o "$T/x"
expect_err "gguf 3-bit" "format gguf cannot hold .*not 3-bit asymmetric.*--dequantize" "$B" export "$T/a3" --format gguf -o "$T/x.gguf"
quantize nf "nf4"
expect_err "nf4 everywhere" "format 'codebook' is not an affine int grid; none of the export formats holds it" "$B" export "$T/nf" --format compressed-tensors -o "$T/x"
expect_err "gptq dequantize" "has no place for dense linears" "$B" export "$T/nf" --format gptq --dequantize -o "$T/x"
expect_ok "ct dequantize" "0 linears packed, 14 dense" "$B" export "$T/nf" --format compressed-tensors --dequantize -o "$T/nf-ct"
grep -q '"ignore"' "$T/nf-ct/config.json" && ok || bad "nf-ct ignore list"
# A model that is not quantized exports to hf as lowbit reads it: the exported directory gives
# the very logits of its source (a bf16 safetensors directory; a GGUF file, dequantized to f32).
same_logits() {  # same_logits NAME MODEL_A MODEL_B
  "$B" logits --model "$2" --ids 1,5,9,300,41 -o "$T/la.safetensors" >/dev/null 2>&1 &&
    "$B" logits --model "$3" --ids 1,5,9,300,41 -o "$T/lb.safetensors" >/dev/null 2>&1 &&
    python3 - "$T/la.safetensors" "$T/lb.safetensors" <<'PY' && ok || bad "$1: logits differ"
import json, struct, sys
def logits(path):
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    e = json.loads(b[8:8 + n])["logits"]
    return b[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]]
a, b = logits(sys.argv[1]), logits(sys.argv[2])
assert len(a) > 0 and a == b
PY
}
expect_ok "dense model hf" "0 linears packed, 0 dense" "$B" export "$T/mini" --format hf -o "$T/mini-hf"
same_logits "dense model hf" "$T/mini" "$T/mini-hf"
zstd -dq "$F/gguf/llama3-mini-bf16.gguf.zst" -o "$T/mini.gguf"
expect_ok "gguf hf" "not quantized.*F32" "$B" export "$T/mini.gguf" --format hf --dtype f32 -o "$T/gguf-hf"
grep -q '"torch_dtype": "float32"' "$T/gguf-hf/config.json" && [[ -f "$T/gguf-hf/tokenizer.json" ]] && ok ||
  bad "gguf hf config and tokenizer"
same_logits "gguf hf" "$T/mini.gguf" "$T/gguf-hf"

# Bad input: nothing partial is left behind.
expect_err "missing dir" "export: '$T/none' does not exist" "$B" export "$T/none" --format gptq -o "$T/x"
expect_err "output exists" "output '$T/a4-gptq' exists" "$B" export "$T/a4" --format gptq -o "$T/a4-gptq"
expect_err "not quantized" "is not a lowbit quantized checkpoint .*only --format hf writes a model that is not quantized" "$B" export "$T/mini" --format gptq -o "$T/x"
expect_err "unknown format" "unknown export format 'exl2' \(known: gptq, awq, compressed-tensors, gguf, hf\)" "$B" export "$T/a4" --format exl2 -o "$T/x"
expect_err "no parent" "directory '$T/no/such' does not exist" "$B" export "$T/a4" --format gptq -o "$T/no/such/x"
cp -r "$T/a4" "$T/corrupt"
truncate -s 100000 "$T/corrupt/model.safetensors"
expect_err "corrupt" "model.safetensors" "$B" export "$T/corrupt" --format gguf -o "$T/x.gguf"
[[ ! -e "$T/x" && ! -e "$T/x.gguf" ]] && ok || bad "an output was left behind"
ls -a "$T" | grep -q partial && bad "a partial output was left behind: $(ls -a "$T" | grep partial)" || ok

expect_ok "help" "compressed-tensors  compressed-tensors pack-quantized" "$B" export --help
report
