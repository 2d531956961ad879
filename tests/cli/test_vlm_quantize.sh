#!/usr/bin/env bash
# lowbit quantize on the tiny random-weight LLaVA-Next of tests/fixtures/llava_next: the whole model
# written (the quantized language model beside the vision tower and projector), read by inspect,
# vlm-generate, vlm-logits and vlm-eval --store (Table 8), fake-quant and --packed, and ppl (its
# language model, as --language-model-only writes it alone); refusals of bad input before any
# work, with nothing written.
set -u
B="$LOWBIT_BIN"
F="$LOWBIT_TEST_FIXTURES"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

M="$T/llava"
mkdir -p "$M"
cp "$F/llava_next/config.json" "$F/llava_next/preprocessor_config.json" "$F/vlm/tokenizer.json" "$M/"
zstd -dq "$F/llava_next/model.safetensors.zst" -o "$M/model.safetensors"
IMG="$F/vision/tall_150x420.jpg"
IDS=$(sed -n 1p "$F/llava_next/cli_tall_150x420.txt")
for i in $(seq 1 40); do echo "The quick brown fox jumps over the lazy dog, number $i."; done >"$T/calib.txt"

expect_ok "quantize rtn" "wrote $T/q: 4.625 bits per linear weight" \
  "$B" quantize --model "$M" --method rtn:w=4,g=32 -o "$T/q" --threads 1
expect_ok "says what it keeps" "vision tower, projector and image_newline \(60 tensors\) are kept as stored" \
  "$B" quantize --model "$M" --method rtn:w=4,g=32 --no-save --threads 1
if cmp -s "$M/config.json" "$T/q/config.json" && cmp -s "$M/preprocessor_config.json" "$T/q/preprocessor_config.json"; then
  ok; else bad "config.json and preprocessor_config.json are not the source's"; fi
expect_ok "inspect" "multimodal +LlavaNextForConditionalGeneration: its language model quantized; vision tower, projector and image_newline kept as stored \(60 tensors" \
  "$B" inspect "$T/q"
expect_ok "inspect json" '"kept_tensors": 60' "$B" inspect "$T/q" --json
expect_ok "vlm-generate" "^[0-9]+(,[0-9]+){11}\$" "$B" vlm-generate --model "$T/q" --image "$IMG" --ids "$IDS" -n 12 --threads 1

# --packed: the language model from its packed codes, the vision tower and projector as stored;
# vlm-logits records the execution. With fp32 activations the logits are the fake-quant model's up
# to fp32 summation order (tests/model/test_llava_packed.cpp holds the same bar on both images).
expect_ok "vlm-generate packed" "^packed: 14 linears, .* q8 activations" \
  "$B" vlm-generate --model "$T/q" --image "$IMG" --ids "$IDS" -n 12 --threads 1 --packed
expect_ok "vlm-generate packed tokens" "^[0-9]+(,[0-9]+){11}\$" \
  "$B" vlm-generate --model "$T/q" --image "$IMG" --ids "$IDS" -n 12 --threads 1 --packed --packed-head q8
expect_ok "vlm-logits fake-quant" "written to" \
  "$B" vlm-logits --model "$T/q" --image "$IMG" --ids "$IDS" -o "$T/fake.safetensors" --threads 1
expect_ok "vlm-logits packed f32" "^packed: 14 linears, .* f32 activations" \
  "$B" vlm-logits --model "$T/q" --image "$IMG" --ids "$IDS" -o "$T/pf32.safetensors" --threads 1 --packed --packed-act f32
expect_ok "vlm-logits packed q8" "written to" \
  "$B" vlm-logits --model "$T/q" --image "$IMG" --ids "$IDS" -o "$T/pq8.safetensors" --threads 1 --packed --packed-head q8
execution() {
  python3 - "$1" <<'PY'
import json, struct, sys
with open(sys.argv[1], "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    print(json.loads(f.read(n))["__metadata__"].get("execution", "(none)"))
PY
}
for pair in "fake:fake-quant" "pf32:packed-f32" "pq8:packed-q8-head-q8"; do
  got=$(execution "$T/${pair%%:*}.safetensors")
  if [[ "$got" == "${pair#*:}" ]]; then ok; else bad "vlm-logits execution of ${pair%%:*}: '$got'"; fi
done
if python3 - "$T/pf32.safetensors" "$T/fake.safetensors" <<'PY'
import json, struct, sys
import numpy as np
def logits(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        h = json.loads(f.read(n))
        data = f.read()
    e = h["logits"]
    b, t = e["data_offsets"]
    return np.frombuffer(data[b:t], dtype=np.float32).reshape(e["shape"])
a, b = logits(sys.argv[1]), logits(sys.argv[2])
d = float(np.abs(a - b).max())
ok = a.shape == b.shape and d <= 1e-4 * max(1.0, float(np.abs(b).max())) and (a.argmax(1) == b.argmax(1)).all()
sys.exit(0 if ok and d > 0 else 1)  # close, and not the same computation
PY
then ok; else bad "packed f32 logits are not the fake-quant ones up to summation order"; fi
expect_err "packed 16-bit LLaVA" "model '$M' is not a quantized checkpoint: --packed needs one" \
  "$B" vlm-logits --model "$M" --image "$IMG" --ids "$IDS" -o "$T/bad.safetensors" --packed
expect_err "packed 16-bit LLaVA generate" "model '$M' is not a quantized checkpoint: --packed needs one" \
  "$B" vlm-generate --model "$M" --image "$IMG" --ids "$IDS" -n 2 --packed
expect_err "packed bad activations" "--packed-act: q4 not in \{q8,f32\}" \
  "$B" vlm-generate --model "$T/q" --image "$IMG" --ids "$IDS" -n 2 --packed --packed-act q4
if [[ ! -e "$T/bad.safetensors" ]]; then ok; else bad "a refused vlm-logits wrote its output"; fi

expect_ok "quantize gptq" "wrote $T/g:" "$B" quantize --model "$M" --method gptq:w=4,g=32 --calib "$T/calib.txt" \
  --nsamples 2 --seqlen 32 -o "$T/g" --threads 1
expect_ok "vlm-generate gptq" "^[0-9]+(,[0-9]+){11}\$" "$B" vlm-generate --model "$T/g" --image "$IMG" --ids "$IDS" -n 12 --threads 1

# The language model alone: a LLaMA checkpoint whose perplexity equals the whole checkpoint's.
expect_ok "language model only" "wrote $T/g-llm:" "$B" quantize --model "$M" --method gptq:w=4,g=32 \
  --calib "$T/calib.txt" --nsamples 2 --seqlen 32 -o "$T/g-llm" --language-model-only --threads 1
P1=$("$B" ppl --model "$T/g" --dataset "$T/calib.txt" --seqlen 32 --threads 1 2>/dev/null | grep -Eo 'PPL = [0-9.]+')
P2=$("$B" ppl --model "$T/g-llm" --dataset "$T/calib.txt" --seqlen 32 --threads 1 2>/dev/null | grep -Eo 'PPL = [0-9.]+')
if [[ -n "$P1" && "$P1" == "$P2" ]]; then ok; else bad "ppl of the LLM part: '$P1' vs '$P2'"; fi
# export writes the language model, as a LLaMA checkpoint with the text_config: its perplexity is
# the quantized checkpoint's (dense fake-quant weights, exact), and the 16-bit model's likewise.
expect_ok "export hf" "largest difference from the fake-quant weights: 0" "$B" export "$T/g" --format hf -o "$T/g-hf"
P3=$("$B" ppl --model "$T/g-hf" --dataset "$T/calib.txt" --seqlen 32 --threads 1 2>/dev/null | grep -Eo 'PPL = [0-9.]+')
if [[ -n "$P3" && "$P1" == "$P3" ]]; then ok; else bad "ppl of the export: '$P3' vs '$P1'"; fi
expect_ok "export hf 16-bit" "" "$B" export "$M" --format hf -o "$T/m-hf"
P4=$("$B" ppl --model "$M" --dataset "$T/calib.txt" --seqlen 32 --threads 1 2>/dev/null | grep -Eo 'PPL = [0-9.]+')
P5=$("$B" ppl --model "$T/m-hf" --dataset "$T/calib.txt" --seqlen 32 --threads 1 2>/dev/null | grep -Eo 'PPL = [0-9.]+')
if [[ -n "$P4" && "$P4" == "$P5" && "$P4" != "$P1" ]]; then ok; else bad "ppl of the 16-bit export: '$P5' vs '$P4' ('$P1' quantized)"; fi
expect_err "llm-only is no LLaVA" "is not a LLaVA-Next model directory" \
  "$B" vlm-generate --model "$T/g-llm" --image "$IMG" --ids "$IDS"

# vlm-eval --store on the quantized checkpoint: its cell is the method's, reported as Table 8.
mkdir -p "$T/vlm"
cp "$F/vision/la_24x20.png" "$F/vision/gray_20x13.jpg" "$T/vlm/"
cat >"$T/vlm/ai2d.jsonl" <<'EOF'
{"question": "Which label shows the sun?", "options": ["A", "B", "C", "D"], "answer": "1", "image": "la_24x20.png"}
{"question": "What eats the grasshopper?", "options": ["frog", "grass", "sun"], "answer": 0, "image": "gray_20x13.jpg"}
EOF
expect_ok "vlm-eval fp16" "written to" "$B" vlm-eval --model "$M" --task ai2d --data "$T/vlm" --max-new-tokens 4 \
  --store "$T/vlm.sqlite" --name llava --threads 1
expect_ok "vlm-eval rtn" "of cell llava\|rtn:w=4,g=32\|none written to" "$B" vlm-eval --model "$T/q" --task ai2d \
  --data "$T/vlm" --max-new-tokens 4 --store "$T/vlm.sqlite" --name llava --threads 1
expect_ok "vlm-eval gptq" "of cell llava\|gptq:w=4,g=32\|$T/calib.txt:n=2,seqlen=32,seed=0,bos=auto written to" \
  "$B" vlm-eval --model "$T/g" --task ai2d --data "$T/vlm" --max-new-tokens 4 --store "$T/vlm.sqlite" --name llava \
  --threads 1
expect_ok "Table 8 rows" "\| GPTQ +\| +4 +\| +16 +\| +32 +\|" "$B" report "$T/vlm.sqlite"
expect_ok "Table 8 rtn" "\| RTN +\| +4 +\| +16 +\| +32 +\|" "$B" report "$T/vlm.sqlite"
# A study of the same model, methods and calibration finds those results stored: its cells are the
# ones vlm-eval --store filled (the quantized checkpoints' source model, the same keys).
cat >"$T/vlm.toml" <<EOF
[study]
name = "vlm"
db = "vlm.sqlite"
threads = 1
[[model]]
name = "llava"
path = "llava"
[calibration]
set = "calib.txt"
nsamples = 2
seqlen = 32
[eval]
vlm_tasks = ["ai2d"]
vlm_data = "vlm"
vlm_max_new_tokens = 4
[[method]]
name = "fp16"
[[method]]
name = "rtn"
w = 4
g = 32
[[method]]
name = "gptq"
w = 4
g = 32
[[method]]
name = "rtn"
w = 3
g = 32
EOF
expect_ok "study finds vlm-eval's results" "1 of 4 evaluations to do" "$B" study "$T/vlm.toml" --dry-run
expect_ok "study adds a cell" "" "$B" study "$T/vlm.toml" --resume
expect_ok "Table 8 rtn 3-bit" "\| +\| +3 +\| +16 +\| +32 +\|" "$B" report "$T/vlm.sqlite"
# vlm-eval --packed: the execution in the identity and the key, so that --store keeps the packed
# result beside the cell's fake-quant one (the study's number) instead of refusing or replacing it.
expect_ok "vlm-eval packed json" '"execution": "packed-q8"' "$B" vlm-eval --model "$T/q" --task ai2d --data "$T/vlm" \
  --max-new-tokens 4 --json --threads 1 --packed
expect_ok "vlm-eval packed store" \
  "ai2d:conversation=llava,max_new_tokens=4,limit=0,execution=packed-q8 of cell llava\|rtn:w=4,g=32\|none written to" \
  "$B" vlm-eval --model "$T/q" --task ai2d --data "$T/vlm" --max-new-tokens 4 --store "$T/vlm.sqlite" --name llava \
  --threads 1 --packed
expect_ok "Table 8 packed column" "AI2D \[conversation=llava,max_new_tokens=4,limit=0,execution=packed-q8\]" \
  "$B" report "$T/vlm.sqlite"
expect_ok "Table 8 packed note" "execution=packed-q8\`: lmms-eval ai2d; .*; execution packed-q8" "$B" report "$T/vlm.sqlite"
expect_err "vlm-eval packed 16-bit" "model '$M' is not a quantized checkpoint: --packed needs one" \
  "$B" vlm-eval --model "$M" --task ai2d --data "$T/vlm" --max-new-tokens 4 --store "$T/refused.sqlite" --packed
if [[ ! -e "$T/refused.sqlite" ]]; then ok; else bad "a refused vlm-eval --store created its store"; fi

# Bad input: refused before any work, nothing written.
python3 - "$M/model.safetensors" "$T/broken" <<'EOF'
import json, os, shutil, struct, sys
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out)
for f in ("config.json", "preprocessor_config.json", "tokenizer.json"):
    shutil.copy(os.path.join(os.path.dirname(src), f), out)
with open(src, "rb") as f:
    n = struct.unpack("<Q", f.read(8))[0]
    header = json.loads(f.read(n))
    data = f.read()
drop = "multi_modal_projector.linear_2.weight"
kept, body = {}, b""
for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0] if kv[0] != "__metadata__" else -1):
    if name == "__metadata__" or name == drop:
        continue
    b, t = e["data_offsets"]
    kept[name] = {"dtype": e["dtype"], "shape": e["shape"], "data_offsets": [len(body), len(body) + t - b]}
    body += data[b:t]
h = json.dumps(kept).encode()
with open(os.path.join(out, "model.safetensors"), "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h + body)
EOF
expect_err "missing projector tensor" "LLaVA checkpoint: missing tensor 'multi_modal_projector.linear_2.weight'" \
  "$B" quantize --model "$T/broken" --method rtn:w=4,g=32 -o "$T/bad"
expect_err "already quantized" "is already quantized \(rtn:w=4,g=32\)" \
  "$B" quantize --model "$T/q" --method rtn:w=4,g=32 -o "$T/bad"
expect_err "output exists" "output '$T/q' exists" "$B" quantize --model "$M" --method rtn:w=4,g=32 -o "$T/q"
expect_err "bad method" "rtn: option w=9" "$B" quantize --model "$M" --method rtn:w=9 -o "$T/bad"
expect_err "method that cannot run" "awq: group size 128 does not divide the 64 input features of q_proj" \
  "$B" quantize --model "$M" --method awq:w=4,g=128 --calib "$T/nonexistent.txt" -o "$T/bad"
S="$LOWBIT_TEST_MODELS/stories260K/stories260K.bin"
if [[ -e "$S" ]]; then
  expect_err "llm-only on LLaMA" "--language-model-only: model '$S' is not a LLaVA-Next model" \
    "$B" quantize --model "$S" --method rtn:w=4,g=32 --language-model-only -o "$T/bad"
fi
if [[ ! -e "$T/bad" ]] && [[ -z "$(ls -A "$T" | grep partial)" ]]; then ok; else bad "a refused run left output"; fi
report
