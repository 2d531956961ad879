#!/usr/bin/env bash
# The lowbit CLI end to end: outputs, exit codes and error messages on bad input.
set -u
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

if [[ -d "$M/testbed-44m" ]]; then
  expect_ok "inspect hf" "parameters +43655680" "$B" inspect "$M/testbed-44m"
  expect_ok "inspect llama2c" "5 layers, hidden 64" "$B" inspect "$M/stories260K/stories260K.bin"
  expect_ok "inspect json" '"parameters": 260032' "$B" inspect --json "$M/stories260K/stories260K.bin"
  expect_ok "inspect tokenizer" "BOS added by default: no" "$B" inspect "$M/tokenizers/llama3/tokenizer.json"
  expect_ok "tokenize ids" '^\[9906, 1917\]$' "$B" tokenize --model "$M/tokenizers/llama3" --text "Hello world" --ids
  expect_ok "tokenize bos" '^\[128000, 9906, 1917\]$' "$B" tokenize --model "$M/tokenizers/llama3" --text "Hello world" --ids --bos on
  expect_ok "tokenize bos auto" '^\[9906, 1917\]$' "$B" tokenize --model "$M/tokenizers/llama3" --text "Hello world" --ids --bos auto
  expect_ok "tokenize bos off" '^\[9906, 1917\]$' "$B" tokenize --model "$M/tokenizers/llama3" --text "Hello world" --ids --bos off
  expect_err "tokenize bos value" "--bos: yes not in \{auto,on,off\}|--bos.*yes" "$B" tokenize --model "$M/tokenizers/llama3" --text "Hello world" --bos yes
  expect_ok "tokenize default" '^\[10994, 3186\]$' "$B" tokenize --model "$M/testbed-44m" --text "Hello world" --ids
  expect_ok "tokenize llama" '^\[15043, 3186\]$' "$B" tokenize --model "$M/testbed-44m" --text "Hello world" --ids --spm-convention llama
  expect_ok "tokenize spm bos" '^\[1, 15043, 3186\]$' "$B" tokenize --model "$M/testbed-44m" --text "Hello world" --ids --spm-convention sentencepiece
  expect_ok "tokenize no-bos" '^\[10994, 3186\]$' "$B" tokenize --model "$M/testbed-44m" --text "Hello world" --ids --bos off
  expect_ok "tokenize count" '^3$' "$B" tokenize --model "$M/testbed-44m" --text "Hello world" --count --bos on
  expect_ok "tokenize llama2c" "403 ' Once'" "$B" tokenize --model "$M/stories260K/stories260K.bin" --text "Once upon"
  printf 'Hello world' > "$T/in.txt"
  expect_ok "tokenize file" '^\[9906, 1917\]$' "$B" tokenize --model "$M/tokenizers/llama3/tokenizer.json" --file "$T/in.txt" --ids
fi

if [[ -d "$M/stories260K" ]]; then
  expect_ok "generate" "^Once upon a time, there was a little girl named Lily" "$B" generate --model "$M/stories260K/stories260K.bin" -n 20
  expect_ok "generate max-new-tokens" "^Once upon a time, there was a little girl named Lily" "$B" generate --model "$M/stories260K/stories260K.bin" --max-new-tokens 20
  expect_ok "generate speed" "prompt: 1 tokens in [0-9.]+ s \([0-9.]+ tokens/s\); decode: 19 tokens in [0-9.]+ s \([0-9.]+ tokens/s\); 20 new tokens" "$B" generate --model "$M/stories260K/stories260K.bin" -n 20
  expect_ok "generate prompt bos off" "prompt: 2 tokens in" "$B" generate --model "$M/stories260K/stories260K.bin" -n 2 --prompt "Once upon" --bos off
  expect_ok "generate prompt bos on" "prompt: 3 tokens in" "$B" generate --model "$M/stories260K/stories260K.bin" -n 2 --prompt "Once upon" --bos on
  expect_err "generate empty prompt" "the prompt has no tokens" "$B" generate --model "$M/stories260K/stories260K.bin" -n 2 --bos off
  expect_err "generate bad device" "--device: 'gpu': expected cpu, cuda or cuda:N" "$B" generate --model "$M/stories260K/stories260K.bin" -n 4 --device gpu
  # --device is checked while parsing: the missing model is never opened.
  expect_err "ppl bad device at parse time" "--device: 'cuda:x': 'x' is not a device index" "$B" ppl --model "$T/no-such-model" --device cuda:x
  expect_err "eval bad device at parse time" "--device: 'gpu': expected cpu, cuda or cuda:N" "$B" eval --model "$T/no-such-model" --device gpu
  expect_ok "logits" "" "$B" logits --model "$M/stories260K/stories260K.bin" --ids 1,403,407 -o "$T/l.safetensors"
  expect_ok "logits file" "F32: 1 tensors" "$B" inspect "$T/l.safetensors"
  expect_ok "logits --output" "logits \[3, 512\] written to" "$B" logits --model "$M/stories260K/stories260K.bin" --text "Once upon" --bos on --output "$T/l2.safetensors"
  expect_err "logits --out is gone" "--out" "$B" logits --model "$M/stories260K/stories260K.bin" --ids 1 --out "$T/l3.safetensors"
  expect_ok "ppl limit help" "--limit.*windows" "$B" ppl --help
  expect_ok "eval limit help" "--limit.*items" "$B" eval --help
  printf 'Once upon a time there was a little dog. The dog liked to run and play in the sun every day.\n%.0s' {1..40} > "$T/story.txt"
  expect_ok "ppl file" "^PPL = [0-9.]+ \+/- [0-9.]+$" "$B" ppl --model "$M/stories260K/stories260K.bin" --dataset "$T/story.txt" --seqlen 128
  expect_ok "ppl json" '"windows_available": [0-9]+' "$B" ppl --model "$M/stories260K/stories260K.bin" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json
  expect_ok "ppl json first forward" '"first_forward": \{' "$B" ppl --model "$M/stories260K/stories260K.bin" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json
  expect_err "ppl profile on cpu" "--profile times the GPU's ops: it needs --device cuda" "$B" ppl --model "$M/stories260K/stories260K.bin" --dataset "$T/story.txt" --seqlen 128 --profile
  expect_err "ppl seqlen" "exceeds the model's max_position_embeddings \(512\)" "$B" ppl --model "$M/stories260K/stories260K.bin" --dataset "$T/story.txt" --seqlen 1024
  expect_err "ppl missing data" "dataset 'wikitext2' needs wikitext2/wiki.test.raw" "$B" ppl --model "$M/stories260K/stories260K.bin" --seqlen 256 --data-dir "$T"
  expect_err "ppl missing c4" "c4-validation.00000-of-00008.json.gz" "$B" ppl --model "$M/stories260K/stories260K.bin" --seqlen 256 --dataset c4 --data-dir "$T"
  expect_err "ppl unknown dataset" "unknown dataset 'wikitext3'" "$B" ppl --model "$M/stories260K/stories260K.bin" --seqlen 256 --dataset wikitext3 --data-dir "$T"
  expect_err "ppl no data dir" "no data directory" env -u LOWBIT_DATA "$B" ppl --model "$M/stories260K/stories260K.bin" --seqlen 256
fi

if [[ -d "$M/stories260K" ]]; then
  S="$M/stories260K/stories260K.bin"
  printf 'Once upon a time there was a little dog. The dog liked to run and play in the sun every day.\n%.0s' {1..60} > "$T/calib.txt"
  expect_ok "methods" "^gptq" "$B" methods
  expect_ok "quantize rtn" "^wrote .*bits per linear weight" "$B" quantize --model "$S" --method rtn:w=4,g=32 -o "$T/q-rtn"
  expect_ok "quantized inspect" "quantization +rtn:w=4,g=32 \(rtn:w=4,g=32,sym=0,a=16,act=per_token\)" "$B" inspect "$T/q-rtn"
  expect_ok "quantized ppl" '"spec": "rtn:w=4,g=32"' "$B" ppl --model "$T/q-rtn" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json
  expect_ok "16-bit ppl method" '"spec": "fp16"' "$B" ppl --model "$S" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json
  expect_ok "ppl kl-base" "^KLD = [0-9.]+ \+/- [0-9.]+, top-1 agreement = [0-9.]+% \+/- [0-9.]+%, KLD p99 = [0-9.]+$" "$B" ppl --model "$T/q-rtn" --kl-base "$S" --dataset "$T/story.txt" --seqlen 128 --limit 2
  expect_ok "ppl kl-base json" '"top1_agreement": 0\.[0-9]+' "$B" ppl --model "$T/q-rtn" --kl-base "$S" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json
  expect_ok "ppl kl-base itself" "^KLD = 0\.000000 \+/- 0\.000000, top-1 agreement = 100\.000% \+/- 0\.000%, KLD p99 = 0\.000000$" "$B" ppl --model "$S" --kl-base "$S" --dataset "$T/story.txt" --seqlen 128 --limit 2
  mkdir -p "$T/tb-llama2c" && ln -s "$M/testbed-44m/config.json" "$M/testbed-44m/model.safetensors" "$T/tb-llama2c/" && cp "$M/tokenizers/llama2/tokenizer.bin" "$T/tb-llama2c/"
  expect_err "ppl kl-base other tokenizer" "--kl-base '.*tb-llama2c': its tokenizer '.*tokenizer.bin' gives other tokens than model '.*testbed-44m''s \(window 0, position 0: token [0-9]+ vs [0-9]+\)" "$B" ppl --model "$M/testbed-44m" --kl-base "$T/tb-llama2c" --dataset "$T/story.txt" --seqlen 128 --limit 2
  expect_err "ppl kl-base other vocabulary" "--kl-base '.*testbed-44m' has a vocabulary of 32000 tokens, model '.*stories260K.bin' 512" "$B" ppl --model "$S" --kl-base "$M/testbed-44m" --dataset "$T/story.txt" --seqlen 128 --limit 2
  expect_ok "quantized generate" "Once upon a time" "$B" generate --model "$T/q-rtn" -n 8 --prompt "Once upon a time"
  expect_ok "packed generate" "^packed: 35 linears, .* q8 activations" "$B" generate --model "$T/q-rtn" -n 8 --prompt "Once upon a time" --packed
  expect_ok "packed ppl" '"execution": "packed-f32"' "$B" ppl --model "$T/q-rtn" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json --packed --packed-act f32
  expect_ok "fake-quant ppl execution" '"execution": "fake-quant"' "$B" ppl --model "$T/q-rtn" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json
  expect_err "packed 16-bit model" "model '.*stories260K.bin' is not a quantized checkpoint: --packed needs one" "$B" generate --model "$S" -n 2 --packed
  expect_err "packed bad activations" "--packed-act: q4 not in \{q8,f32\}" "$B" generate --model "$T/q-rtn" -n 2 --packed --packed-act q4
  expect_ok "packed 8-bit head" '"execution": "packed-q8-head-q8"' "$B" ppl --model "$T/q-rtn" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json --packed --packed-head q8
  expect_err "packed bad head" "--packed-head: q4 not in \{stored,q8\}" "$B" generate --model "$T/q-rtn" -n 2 --packed --packed-head q4
  expect_err "packed bad parallel blocks" "LOWBIT_PACKED_PARALLEL_BLOCKS='-5' is not a non-negative number of blocks" \
    env LOWBIT_PACKED_PARALLEL_BLOCKS=-5 "$B" ppl --model "$T/q-rtn" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json --packed
  expect_ok "packed parallel blocks" '"execution": "packed-q8"' \
    env LOWBIT_PACKED_PARALLEL_BLOCKS=0 "$B" ppl --model "$T/q-rtn" --dataset "$T/story.txt" --seqlen 128 --limit 2 --json --packed
  expect_ok "quantize gptq" "^wrote" "$B" quantize --model "$S" --method gptq:w=4,g=32,act_order=1 --calib "$T/calib.txt" --nsamples 4 --seqlen 64 -o "$T/q-gptq"
  expect_ok "packed gptq act_order" "^packed: 35 linears" "$B" generate --model "$T/q-gptq" -n 8 --prompt "Once upon a time" --packed
  expect_ok "quantize awq" "^wrote" "$B" quantize --model "$S" --method awq:w=4,g=-1 --calib "$T/calib.txt" --nsamples 4 --seqlen 64 -o "$T/q-awq"
  expect_ok "quantize smoothquant" '"activation_bits": 6' "$B" quantize --model "$S" --method smoothquant:w=6,a=6 --calib "$T/calib.txt" --nsamples 4 --seqlen 64 -o "$T/q-sq" --json
  # --no-save --json: nothing written, one time per decoder block (5), within the whole quantization's.
  "$B" quantize --model "$S" --method gptq:w=4,g=32 --calib "$T/calib.txt" --nsamples 2 --seqlen 64 --no-save --json \
    > "$T/q-nosave.json" 2>&1 && python3 - "$T/q-nosave.json" <<'PY' && ok || bad "quantize block_seconds: $(cat "$T/q-nosave.json")"
import json, sys
j = json.load(open(sys.argv[1]))
b = j["block_seconds"]
assert len(b) == 5 and all(s > 0 for s in b) and sum(b) <= j["quantize_seconds"], (b, j["quantize_seconds"])
assert j["output_bytes"] == 0, j["output_bytes"]
PY
  expect_ok "stats" "^wrote .*layer 1 statistics" "$B" stats --model "$S" --layer 1 --calib "$T/calib.txt" --nsamples 2 --seqlen 64 -o "$T/stats.safetensors"
  expect_ok "stats calibration flags" "^wrote .*layer 1 statistics on 2 x 64 tokens" "$B" stats --model "$S" --layer 1 --calib "$T/calib.txt" --nsamples 2 --seqlen 64 --bos off --spm-convention auto --seed 3 -o "$T/stats-b.safetensors"
  # --save-calib writes the windows it draws; Python's random over lowbit's ids of the same text
  # draws the same ones.
  expect_ok "save-calib" "^wrote " "$B" stats --model "$S" --layer 0 --calib "$T/calib.txt" --nsamples 3 --seqlen 64 --seed 3 --save-calib "$T/windows.safetensors" -o "$T/stats-w.safetensors"
  "$B" tokenize --model "$S" --file "$T/calib.txt" --ids > "$T/calib_ids.json"
  python3 - "$T/windows.safetensors" "$T/calib_ids.json" <<'PY' && ok || bad "save-calib windows"
import json, random, struct, sys
b = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", b[:8])[0]
h = json.loads(b[8:8 + n])
e = h["windows"]
assert e["dtype"] == "I32" and e["shape"] == [3, 64], e
assert json.loads(h["__metadata__"]["calibration"])["seed"] == 3
raw = b[8 + n + e["data_offsets"][0]:8 + n + e["data_offsets"][1]]
got = list(struct.unpack("<%di" % (3 * 64), raw))
ids = json.load(open(sys.argv[2]))
random.seed(3)
want = []
for _ in range(3):
    i = random.randint(0, len(ids) - 64 - 1)
    want += ids[i:i + 64]
assert got == want
PY
  expect_err "stats seqlen" "--seqlen 1024 exceeds the model's max_position_embeddings \(512\)" "$B" stats --model "$S" --layer 1 --calib "$T/calib.txt" --seqlen 1024 -o "$T/stats3.safetensors"
  expect_err "stats bad device" "--device: 'cuda:x': 'x' is not a device index" "$B" stats --model "$S" --layer 1 --calib "$T/calib.txt" --nsamples 2 --seqlen 64 --device cuda:x -o "$T/stats2.safetensors"
  expect_err "quantize exists" "output '.*q-rtn' exists; remove it or pass --force" "$B" quantize --model "$S" --method rtn -o "$T/q-rtn"
  expect_err "quantize unknown method" "unknown method 'gptx' \(known: fp16, rtn, gptq, awq, slim, quip, dbllm, pbllm, billm, smoothquant, nf4, icq\)" "$B" quantize --model "$S" --method gptx -o "$T/q-x"
  expect_err "quantize bad option" "gptq: unknown option 'bits'" "$B" quantize --model "$S" --method gptq:bits=4 -o "$T/q-x"
  expect_err "quantize bits range" "gptq: option w=9 is out of range \[2, 8\]" "$B" quantize --model "$S" --method gptq:w=9 -o "$T/q-x"
  expect_err "quantize alpha range" "smoothquant: option alpha=1.5 is out of range \[0, 1\]" "$B" quantize --model "$S" --method smoothquant:alpha=1.5 -o "$T/q-x"
  expect_err "quantize activation bits" "gptq quantizes weights only: activation bits \(a=8\) need a weight-activation method \\(smoothquant, rtn\\)" "$B" quantize --model "$S" --method gptq:w=4,a=8 -o "$T/q-x"
  expect_err "quantize awq group" "awq: group size 128 does not divide the 64 input features of q_proj" "$B" quantize --model "$S" --method awq:w=4,g=128 --calib "$T/calib.txt" --nsamples 2 --seqlen 64 -o "$T/q-x"
  expect_err "quantize missing calib" "dataset 'wikitext2 \(calibration\)' needs wikitext2/wiki.train.raw" "$B" quantize --model "$S" --method gptq --seqlen 256 --data-dir "$T" -o "$T/q-x"
  expect_err "quantize requantize" "is already quantized" "$B" quantize --model "$T/q-rtn" --method rtn -o "$T/q-x"
  [[ ! -e "$T/q-x" ]] && ok || bad "a failed quantize left $T/q-x behind"
  ls -a "$T" | grep -q partial && bad "a .partial directory was left in $T" || ok
fi

D="${LOWBIT_TEST_DATA:-}"
if [[ -d "$M/stories260K" && -f "$D/hellaswag/hellaswag_val_full.txt" ]]; then
  expect_ok "eval hellaswag_derived" "^hellaswag_derived \(validation, 3 items\): acc [0-9.]+ \+/- [0-9.]+, acc_norm" \
    "$B" eval --model "$M/stories260K/stories260K.bin" --tasks hellaswag_derived --limit 3 --data-dir "$D"
  expect_ok "eval hellaswag_derived json" '"convention": "llama.cpp hellaswag_val_full.txt \(derived' \
    "$B" eval --model "$M/stories260K/stories260K.bin" --tasks hellaswag_derived --limit 2 --data-dir "$D" --json
  expect_err "eval hellaswag_derived missing" "dataset 'hellaswag_derived' needs hellaswag/hellaswag_val_full.txt" \
    "$B" eval --model "$M/stories260K/stories260K.bin" --tasks hellaswag_derived --data-dir "$T"
fi

# Bad input: clear message, non-zero exit, no partial output.
printf 'abc' > "$T/short.safetensors"
expect_err "truncated safetensors" "too short for the 8-byte header" "$B" inspect "$T/short.safetensors"
expect_ok "inspect gguf" "ggml types +BF16: 1 tensors" "$B" inspect "$LOWBIT_TEST_FIXTURES/gguf/reader.gguf"
printf 'GGUF\x01\x00\x00\x00' > "$T/v1.gguf"
expect_err "gguf v1" "GGUF version 1 is not supported" "$B" inspect "$T/v1.gguf"
expect_err "gguf model v1" "GGUF version 1 is not supported" "$B" ppl --model "$T/v1.gguf" --data-dir "$T"
printf '\xff\x00\x00\x00\x00\x00\x00\x00{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}' > "$T/bad.safetensors"
expect_err "header past eof" "header length 255 runs past the end" "$B" inspect "$T/bad.safetensors"
mkdir -p "$T/noweights" && printf '{"architectures":["LlamaForCausalLM"],"hidden_size":8,"intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"vocab_size":10}' > "$T/noweights/config.json"
expect_err "no weights" "has config.json but no weights" "$B" inspect "$T/noweights"
expect_err "ppl no weights" "has config.json but no weights" "$B" ppl --model "$T/noweights" --data-dir "$T"
printf '{"architectures":["LlamaForCausalLM"],"intermediate_size":16}' > "$T/noweights/config.json"
expect_err "missing field" "missing required field 'hidden_size'" "$B" inspect "$T/noweights"
printf '{"model": {"type": "BPE", "vocab": {"a": 0}}}' > "$T/tokenizer.json"
expect_err "tokenizer without merges" "no 'merges' array" "$B" inspect "$T/tokenizer.json"
expect_err "missing path" "does not exist" "$B" inspect "$T/nothing-here"
expect_err "unknown option" "--frobnicate" "$B" inspect --frobnicate "$T"
expect_err "text and file" "excludes|exactly one" "$B" tokenize --model "$T/tokenizer.json" --text a --file "$T/tokenizer.json"
expect_err "no subcommand" "subcommand" "$B"

# GGUF tokenizers (tests/fixtures/gguf_tokenizer; the ids are transformers' on these files, from
# its manifest.json).
G="$LOWBIT_TEST_FIXTURES/gguf_tokenizer"
expect_ok "tokenize gguf" '^\[56, 478, 95, 905\]$' "$B" tokenize --model "$G/smollm2-tiny.gguf" --text "Hello world" --ids
expect_ok "tokenize gguf bos" '^\[1, 56, 478, 95, 905\]$' "$B" tokenize --model "$G/smollm2-tiny.gguf" --text "Hello world" --ids --bos on
expect_ok "tokenize gguf specials" '^\[1, 376, 259, 198, 56, 89, 2, 198\]$' "$B" tokenize --model "$G/smollm2-tiny.gguf" --text $'<|im_start|>user\nHi<|im_end|>\n' --ids
expect_ok "tokenize gguf llama" '^\[1, 229, 153, 132, 75, 104, 111, 111, 114, ' "$B" tokenize --model "$G/llama2-tiny.gguf" --text "Hello world" --ids
expect_ok "tokenize gguf llama no-bos" '^\[229, 153, 132, 75, 104, 111, 111, 114, ' "$B" tokenize --model "$G/llama2-tiny.gguf" --text "Hello world" --ids --bos off
expect_err "gguf without tokenizer" "no tokenizer.ggml.model" "$B" tokenize --model "$LOWBIT_TEST_FIXTURES/gguf/reader.gguf" --text a

report
