#!/usr/bin/env bash
# QLoRA on a LLaMA-3-8B-shaped model (random weights) on one GPU: `lowbit finetune --device cuda
# --compute COMPUTE` at sequence 512 (source 384 + target 128 tokens, QLoRA's Alpaca limits, every record long
# enough to fill both), batch 1 with gradient accumulation, r 64, alpha 16 on all seven linears.
# Prints the GPU memory the model holds (as allocated and as gpu_model_bytes() predicts it), the
# peak device memory, and the training throughput (tokens/s over the steps after the first).
#
#   bench/gpu/qlora_8b.sh LOWBIT WORK_DIR TOKENIZER_DIR [LAYERS]
#
#   LOWBIT         a lowbit binary (a CUDA build)
#   WORK_DIR       the output directory (the model's config, the data, the run)
#   TOKENIZER_DIR  a LLaMA-3 tokenizer directory (tokenizer.json), copied beside the config
#   LAYERS         decoder layers (default 32, the whole 8B model; fewer for a quick look: the
#                  per-layer memory and time scale linearly, the LM head and embedding do not)
#
# The model is lowbit's `random:DIR` checkpoint (bf16 weights generated on request from the
# config, so no 16 GB file is written); the base is quantized NF4 with double quantization on
# the host, as `lowbit finetune --method qlora` always does, before the GPU steps.
#
# Variables (default):
#   STEPS 4, ACCUM 4 (micro-batches of one sequence per optimizer step), METHOD
#   qlora:r=64,alpha=16, DEVICE cuda (cpu checks the script with CONFIG=bench/configs/llama3-tiny.json),
#   CONFIG bench/configs/llama3-8b.json, SEQ 512 (split 3:1 into source and target limits),
#   TARGET_GB 12 (the issue's bar for the peak, in 10^9 bytes), COMPUTE bf16 (--compute: fp32,
#   tf32 or bf16; fp32 with DEVICE cpu), BASE_RESIDENT off (--base-resident: off measures the compact
#   base against TARGET_GB; on or auto keep the bf16 base expanded, ~13 GiB more at 32 layers), PROFILE 0 (1: LOWBIT_TRAIN_PROFILE=1, each step's time
#   per phase in the log), PYTHON python3
set -euo pipefail
if [[ $# -lt 3 || $# -gt 4 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOWBIT=$1 WORK=$2 TOK=$3 LAYERS=${4:-32}
STEPS=${STEPS:-4} ACCUM=${ACCUM:-4} METHOD=${METHOD:-qlora:r=64,alpha=16} DEVICE=${DEVICE:-cuda}
CONFIG=${CONFIG:-$ROOT/bench/configs/llama3-8b.json} SEQ=${SEQ:-512} TARGET_GB=${TARGET_GB:-12}
PYTHON=${PYTHON:-python3} PROFILE=${PROFILE:-0}
if [[ "$DEVICE" == cpu ]]; then COMPUTE=${COMPUTE:-fp32}; else COMPUTE=${COMPUTE:-bf16}; fi
die() { echo "qlora_8b.sh: $*" >&2; exit 1; }
[[ -x "$LOWBIT" && -f "$LOWBIT" ]] || die "LOWBIT '$LOWBIT' is not an executable file"
[[ -f "$TOK/tokenizer.json" ]] || die "TOKENIZER_DIR '$TOK' has no tokenizer.json (a LLaMA-3 tokenizer directory)"
[[ -f "$CONFIG" ]] || die "CONFIG '$CONFIG' does not exist"
[[ "$COMPUTE" == fp32 || "$COMPUTE" == tf32 || "$COMPUTE" == bf16 ]] || die "COMPUTE '$COMPUTE': fp32, tf32 or bf16"
BASE_RESIDENT=${BASE_RESIDENT:-off}
[[ "$BASE_RESIDENT" == auto || "$BASE_RESIDENT" == on || "$BASE_RESIDENT" == off ]] ||
  die "BASE_RESIDENT '$BASE_RESIDENT': auto, on or off"
[[ "$LAYERS" =~ ^[1-9][0-9]*$ ]] || die "LAYERS '$LAYERS' is not a positive number"
(( STEPS >= 2 )) || die "STEPS $STEPS: the throughput leaves out the first step, so at least 2 are needed"

SOURCE=$(( SEQ * 3 / 4 )) TARGET=$(( SEQ - SEQ * 3 / 4 ))
M="$WORK/model-$LAYERS"
mkdir -p "$M"
"$PYTHON" - "$CONFIG" "$M/config.json" "$LAYERS" <<'EOF'
import json, sys
cfg = json.load(open(sys.argv[1]))
cfg["num_hidden_layers"] = int(sys.argv[3])
json.dump(cfg, open(sys.argv[2], "w"), indent=1)
EOF
for f in tokenizer.json tokenizer_config.json; do [[ -f "$TOK/$f" ]] && cp "$TOK/$f" "$M/"; done

# Records far longer than the limits: every sequence is SOURCE + TARGET tokens.
DATA="$WORK/long_alpaca.json"
"$PYTHON" "$ROOT/scripts/device/long_alpaca.py" "$DATA" $(( STEPS * ACCUM ))

OUT="$WORK/run-$LAYERS"
echo "finetune: $METHOD on $CONFIG with $LAYERS layers, sequence $SEQ ($SOURCE + $TARGET), batch 1 x $ACCUM," \
     "$STEPS steps, --device $DEVICE --compute $COMPUTE --base-resident $BASE_RESIDENT" >&2
LOWBIT_TRAIN_PROFILE=$PROFILE "$LOWBIT" finetune --model "random:$M" --method "$METHOD" --data "$DATA" --steps "$STEPS" --batch 1 \
  --grad-accum "$ACCUM" --source-max-len "$SOURCE" --target-max-len "$TARGET" --warmup-ratio 0 --save-every 0 \
  --device "$DEVICE" --compute "$COMPUTE" --base-resident "$BASE_RESIDENT" --force -o "$OUT" 2> >(tee "$WORK/finetune-$LAYERS.log" >&2)

"$PYTHON" - "$OUT/lowbit_adapter.json" "$SEQ" "$TARGET_GB" "$LAYERS" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
seq, target, layers = int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
GiB = float(1 << 30)
log, secs = s["log"], s["step_seconds"]
tokens = [r["tokens"] for r in log[-len(secs):]]
if any(t % seq for t in tokens):
    print(f"note: some micro-batches are shorter than {seq} tokens: tokens per step {tokens}")
steady = sum(tokens[1:]) / sum(secs[1:])
print(f"layers {layers}, sequence {seq}, {len(secs)} steps of {tokens[0]} tokens, compute {s.get('compute', 'fp32')}")
print(f"  tokens/s (steps 2..{len(secs)})      {steady:10.1f}")
print(f"  seconds per step (all)           {' '.join(f'{x:.2f}' for x in secs)}")
print(f"  host peak RSS                    {s['peak_rss_bytes'] / GiB:10.2f} GiB")
g = s.get("gpu_memory")
if g is None:
    print("  (no GPU: the run was on the CPU)")
    sys.exit(0)
m, p = g["model_bytes"], g.get("model_bytes_predicted")
print(f"  device                           {g['device']}")
print(f"  base as held                     {g['base_layout']}")
for k in ("linears", "norms", "head", "scratch", "resident", "total"):
    pred = f"   (gpu_model_bytes: {p[k] / GiB:.3f})" if p else ""
    print(f"  model {k:<26} {m[k] / GiB:10.3f} GiB{pred}")
print(f"  adapters + gradients (predicted) {g['adapter_bytes'] / GiB:10.3f} GiB")
print(f"  peak of lowbit's device buffers  {g['peak_allocated_bytes'] / GiB:10.2f} GiB")
peak = g["peak_in_use_bytes"]
verdict = "within" if peak <= target * 1e9 else "ABOVE"
print(f"  peak in use (cudaMemGetInfo)     {peak / GiB:10.2f} GiB = {peak / 1e9:.2f} GB ({verdict} the {target:g} GB target)")
EOF
