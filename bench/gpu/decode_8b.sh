#!/usr/bin/env bash
# Batch-1 greedy decode of a LLaMA-3-8B-shaped model (random weights) on one GPU: lowbit's packed
# 4-bit model (RTN w4 g128 quantized on the GPU, run from its codes by the W4A16 kernels with
# `generate --packed --device cuda`) beside transformers' bf16 model (sdpa, dynamic KV cache), same
# GPU, same run, same prompt length and number of new tokens. Prints decode tokens/s of both, the
# ratio, the memory-bandwidth bound of the 4-bit model (the bytes one token reads: packed codes
# with their bf16 scale/zero pairs, the bf16 LM head; divided into PEAK_GBS) and the peak GPU memory
# of both (lowbit: its own allocations' high-water mark; transformers: max_memory_allocated).
#
#   bench/gpu/decode_8b.sh LOWBIT DATA_DIR WORK_DIR TOKENIZER_DIR [PEAK_GBS]   (3350 H100 SXM, 4800 H200)
#
# Variables (default): NEW 128 (new tokens), ROUNDS 3 (lowbit runs; the median is printed),
# METHOD rtn:w=4,g=128. The model is `random:DIR` (weights generated on request, nothing on disk
# but the 4-bit checkpoint, about 6 GB). lowbit's one-token steps replay a CUDA graph (printed as
# "decode steps"); LOWBIT_CUDA_GRAPHS=0 in the environment measures the eager steps instead.
set -euo pipefail
LOWBIT=$1 DATA=$2 WORK=$3 TOK=$4 PEAK=${5:-3350}
NEW=${NEW:-128} ROUNDS=${ROUNDS:-3} METHOD=${METHOD:-rtn:w=4,g=128}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
M="$WORK/llama3-8b-shape" Q="$WORK/llama3-8b-w4"
mkdir -p "$M"
cp "$ROOT/bench/configs/llama3-8b.json" "$M/config.json"
for f in tokenizer.json tokenizer_config.json; do [[ -f "$TOK/$f" ]] && cp "$TOK/$f" "$M/"; done
if [[ ! -e "$Q/.done" ]]; then
  rm -rf "$Q"
  "$LOWBIT" quantize --model "random:$M" --method "$METHOD" --device cuda -o "$Q" --json > "$WORK/quantize.json"
  touch "$Q/.done"
fi
# A prompt of about 128 tokens from WikiText2's test text.
PROMPT=$(head -c 600 "$DATA/wikitext2/wiki.test.raw" | tr '\n' ' ')
for r in $(seq "$ROUNDS"); do
  "$LOWBIT" generate --model "$Q" --packed --device cuda --prompt "$PROMPT" -n "$NEW" > /dev/null 2> "$WORK/lowbit_decode_$r.log"
done
PT=$(grep -Eo 'prompt: [0-9]+ tokens' "$WORK/lowbit_decode_1.log" | grep -Eo '[0-9]+')
python3 "$ROOT/scripts/device/transformers_decode.py" "$M/config.json" --prompt-tokens "$PT" --new "$NEW" \
  | tail -n 1 > "$WORK/transformers_decode.json"
python3 - "$M/config.json" "$WORK" "$ROUNDS" "$PEAK" <<'PY'
import json, re, statistics, sys
cfg, work, rounds, peak = json.load(open(sys.argv[1])), sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
h, f, L, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"], cfg["vocab_size"]
kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
linear = L * (h * h * 2 + h * kv * 2 + h * f * 3)            # q, o, k, v, gate, up, down weights
w4_bytes = linear * 0.5 + linear / 128 * 4                   # 4-bit codes, a bf16 (scale, zero) pair per 128
head_bytes = V * h * 2                                       # the bf16 LM head
bf16_bytes = (linear + V * h) * 2
runs, paths = [], set()
for r in range(1, rounds + 1):
    t = open(f"{work}/lowbit_decode_{r}.log").read()
    d = re.search(r"decode steps: (.*)", t)
    paths.add(d.group(1) if d else "not printed")
    m = re.search(r"decode: (\d+) tokens in ([0-9.]+) s \(([0-9.]+) tokens/s\)", t)
    p = re.search(r"peak GPU memory: ([0-9]+) bytes", t)
    runs.append((float(m.group(3)), float(p.group(1)) if p else float("nan")))
lb = statistics.median(r[0] for r in runs)
tf = json.load(open(f"{work}/transformers_decode.json"))
bound = peak * 1e9 / (w4_bytes + head_bytes)
bound16 = peak * 1e9 / bf16_bytes
print(f"GPU {tf['gpu']}, prompt {tf['prompt_tokens']} tokens, {tf['decode_steps']} decode steps")
print(f"lowbit decode steps: {', '.join(sorted(paths))}")
print(f"| engine | decode tokens/s | peak GPU memory GiB | bandwidth bound tokens/s ({peak:.0f} GB/s) | share of bound |")
print("| --- | --: | --: | --: | --: |")
print(f"| lowbit 4-bit packed (median of {rounds}: {', '.join(f'{r[0]:.1f}' for r in runs)}) | {lb:.1f} | "
      f"{max(r[1] for r in runs) / 2**30:.2f} | {bound:.0f} | {lb / bound:.1%} |")
print(f"| transformers bf16 | {tf['decode_tokens_per_s']:.1f} | {tf['peak_gpu_bytes'] / 2**30:.2f} | {bound16:.0f} | "
      f"{tf['decode_tokens_per_s'] / bound16:.1%} |")
print(f"lowbit / transformers: {lb / tf['decode_tokens_per_s']:.2f}x; 4-bit bytes per token "
      f"{(w4_bytes + head_bytes) / 1e9:.2f} GB, bf16 {bf16_bytes / 1e9:.2f} GB")
PY
