#!/usr/bin/env bash
# DB-LLM's training cost at LLaMA-3-8B shapes (random weights): `lowbit distill` (fdb 2-bit g128
# initialization, then Deviation-Aware Distillation of the fdb scales from the 16-bit model) on
# the GPU for STEPS steps, at each layer count of LAYERS; prints the seconds per step, the peak
# GPU memory and the GPU minutes per 1,000 steps extrapolated to the 32-layer model (also
# WORK/table.md).
#
#   bench/gpu/dbllm_8b.sh LOWBIT DATA_DIR WORK_DIR TOKENIZER_DIR [LAYERS]
#
#   LOWBIT         a lowbit binary built with CUDA (a CPU build with DEVICE=cpu checks the script)
#   DATA_DIR       the data directory: ptb/ptb.train.txt (the distillation windows)
#   WORK_DIR       the output directory (a model of a layer count already there is reused)
#   TOKENIZER_DIR  a LLaMA-3 tokenizer directory (tokenizer.json), copied beside the model
#   LAYERS         decoder layer counts to build and time (default "2 4"); each model has the 8B
#                  shapes and that many decoder layers (the 16-bit model lives on the GPU in
#                  fp32, ~0.87 GB per layer plus 2.1 GB of LM head; the student is its fdb
#                  planes, group parameters and their gradients, ~0.1 GB per layer)
#
# Seconds per step: (elapsed at the end of the last step - at the end of the first) / (STEPS - 1)
# from the run's "elapsed" record, so the first step (cuBLAS start-up, buffer allocation) is left
# out. Peak GPU memory: lowbit's device buffers at their most (training.peak_gpu_bytes; the CUDA
# context and cuBLAS workspace come on top).
#
# Extrapolation to 32 layers. A step is a fixed part (the embedding, the teacher's and the
# student's LM head over the windows, the DAD loss) plus a part per decoder layer (the teacher's
# forward, the student's forward, recomputation and backward, the group gradients, the transfers
# and host AdamW of the layer's scales), every layer having the same shapes. With two or more
# layer counts, a least-squares line t(L) = a + b * L through the measured (L, seconds per step)
# is evaluated at L = 32 (and likewise for the peak memory); with one count L, t(32) = t(L) * 32 /
# L, which counts the fixed part 32 / L times (an upper bound). GPU minutes per 1,000 steps =
# t(32) * 1000 / 60.
#
# Variables (default): STEPS 10 (>= 2), BATCH 1, GRAD_ACCUM 1 (windows per step = BATCH *
# GRAD_ACCUM), SEQLEN 2048, NSAMPLES (BATCH * GRAD_ACCUM * STEPS windows), METHOD dbllm:g=128,
# DAD cross, LR 1e-4, SEED 0, DEVICE cuda (cpu checks the script), CONFIG
# bench/configs/llama3-8b.json (bench/configs/llama3-tiny.json for a check), THREADS 0, PYTHON
# python3, COMPUTE fp32 (`lowbit distill --compute`: fp32, tf32 or bf16, the precision of the GPU
# step's matrix products; the CPU takes fp32 only), PROFILE 0 (1: LOWBIT_TRAIN_PROFILE=1, each
# step's device seconds per phase in WORK/distill-<L>L.log, the last step's printed).
set -euo pipefail
if [[ $# -lt 4 || $# -gt 5 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LAYERS=${5:-"2 4"}
STEPS=${STEPS:-10} BATCH=${BATCH:-1} GRAD_ACCUM=${GRAD_ACCUM:-1} SEQLEN=${SEQLEN:-2048} SEED=${SEED:-0}
NSAMPLES=${NSAMPLES:-$((BATCH * GRAD_ACCUM * STEPS))} METHOD=${METHOD:-dbllm:g=128} DAD=${DAD:-cross} LR=${LR:-1e-4}
DEVICE=${DEVICE:-cuda} CONFIG=${CONFIG:-$ROOT/bench/configs/llama3-8b.json} THREADS=${THREADS:-0}
PYTHON=${PYTHON:-python3} COMPUTE=${COMPUTE:-fp32} PROFILE=${PROFILE:-0}
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "dbllm_8b.sh: $*" >&2; exit 1; }

# Every input a later step would stop on, checked before any work.
[[ -x "$1" && -f "$1" ]] || die "LOWBIT '$1' is not an executable file"
[[ -f "$2/ptb/ptb.train.txt" ]] || die "DATA_DIR '$2' has no ptb/ptb.train.txt (the distillation text)"
[[ -f "$4/tokenizer.json" ]] || die "TOKENIZER_DIR '$4' has no tokenizer.json (a LLaMA-3 tokenizer directory)"
[[ -f "$CONFIG" ]] || die "CONFIG '$CONFIG' does not exist"
for L in $LAYERS; do
  [[ "$L" =~ ^[1-9][0-9]*$ ]] || die "LAYERS: '$L' is not a positive integer"
done
[[ -n "${LAYERS// /}" ]] || die "LAYERS is empty"
[[ "$STEPS" =~ ^[0-9]+$ ]] && (( STEPS >= 2 )) || die "STEPS '$STEPS' must be an integer >= 2 (the first step is not timed)"
for v in BATCH GRAD_ACCUM SEQLEN NSAMPLES; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v '${!v}' must be a positive integer"
done
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || die "DEVICE '$DEVICE': cuda or cpu"
[[ "$COMPUTE" == fp32 || "$COMPUTE" == tf32 || "$COMPUTE" == bf16 ]] || die "COMPUTE '$COMPUTE': fp32, tf32 or bf16"
[[ "$DEVICE" == cuda || "$COMPUTE" == fp32 ]] || die "COMPUTE '$COMPUTE' on DEVICE cpu: the CPU trains in fp32 only"
[[ "$PROFILE" == 0 || "$PROFILE" == 1 ]] || die "PROFILE '$PROFILE': 0 or 1"
[[ "$METHOD" == dbllm* ]] || die "METHOD '$METHOD' is not a dbllm spec"
LOWBIT=$(realpath "$1") DATA=$(realpath "$2") TOK=$(realpath "$4") WORK=$3
"$PYTHON" -c "import torch, transformers, safetensors" || die "$PYTHON lacks torch, transformers or safetensors"
if [[ "$DEVICE" == cuda ]]; then
  # lowbit refuses a device it cannot use before it opens the (missing) model.
  if out=$("$LOWBIT" distill --model /nonexistent-model --device cuda -o /nonexistent-out 2>&1) ||
     grep -qi -- "--device\|device cuda" <<<"$out"; then
    die "$LOWBIT cannot train on the GPU: $out"
  fi
fi
mkdir -p "$WORK"
WORK=$(realpath "$WORK")

RUNS=()
for L in $LAYERS; do
  M=$WORK/$(basename "$CONFIG" .json)-random-${L}L
  if [[ ! -f "$M/config.json" ]]; then
    log "building $M (random weights, $L layers)"
    rm -rf "$M.partial"
    "$PYTHON" "$ROOT/scripts/device/make_random_llama.py" "$CONFIG" "$M.partial" --tokenizer "$TOK" --layers "$L" \
      --device "$DEVICE" >&2
    mv "$M.partial" "$M"
  fi
  D=$WORK/dbllm-${L}L
  rm -rf "$D"
  log "$L layers: lowbit distill --method $METHOD, $STEPS steps on $DEVICE, --compute $COMPUTE"
  LOWBIT_TRAIN_PROFILE=$PROFILE "$LOWBIT" distill --model "$M" --method "$METHOD" --calib ptb \
    --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --seed "$SEED" --data-dir "$DATA" --steps "$STEPS" --batch "$BATCH" \
    --grad-accum "$GRAD_ACCUM" --lr "$LR" --dad "$DAD" --device "$DEVICE" --compute "$COMPUTE" \
    --threads "$THREADS" -o "$D" > "$WORK/distill-${L}L.log" 2>&1 ||
    { tail -20 "$WORK/distill-${L}L.log" >&2; exit 1; }
  if [[ "$PROFILE" == 1 ]]; then
    grep "phases:" "$WORK/distill-${L}L.log" | tail -1 | sed "s/^/$L layers, /" >&2 ||
      log "$L layers: no phase timing in the log (a CPU run has none)"
  fi
  RUNS+=("$L=$D/model.safetensors")
done

"$PYTHON" - "$CONFIG" "$BATCH" "$GRAD_ACCUM" "$SEQLEN" "${RUNS[@]}" <<'PY' | tee "$WORK/table.md"
import json, struct, sys

config, batch, accum, seqlen = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rows = []
for arg in sys.argv[5:]:
    layers, path = arg.split("=", 1)
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        meta = json.loads(f.read(n))["__metadata__"]
    q = json.loads(meta["lowbit.quantization"])
    t = q["training"]
    el = t["elapsed"]
    per_step = (el[-1] - el[0]) / (len(el) - 1)
    rows.append((int(layers), per_step, float(t.get("peak_gpu_bytes", 0.0)), t["device"], q["method"]["spec"],
                 t.get("compute", "fp32")))

def at32(points):
    if len(points) == 1:
        L, y = points[0]
        return y * 32 / L, f"proportional from {L} layers"
    n = len(points)
    mx = sum(p[0] for p in points) / n
    my = sum(p[1] for p in points) / n
    sxx = sum((p[0] - mx) ** 2 for p in points)
    if sxx == 0:
        return my * 32 / points[0][0], "proportional"
    b = sum((p[0] - mx) * (p[1] - my) for p in points) / sxx
    return my + b * (32 - mx), f"line a + b L through {', '.join(str(p[0]) for p in points)} layers: a = {my - b * mx:.4g}, b = {b:.4g}"

c = json.load(open(config))
print(f"DB-LLM ({rows[0][4]}) distillation on {rows[0][3]} ({rows[0][5]} compute): {c['hidden_size']} hidden, "
      f"{c['intermediate_size']} MLP, vocabulary {c['vocab_size']}; {batch * accum} x {seqlen} tokens per step\n")
print("| layers | s / step | peak GPU memory (GiB) |")
print("|---:|---:|---:|")
for L, s, m, *_ in sorted(rows):
    print(f"| {L} | {s:.3f} | {m / 2**30:.2f} |")
t32, how_t = at32([(L, s) for L, s, *_ in rows])
m32, how_m = at32([(L, m) for L, _, m, *_ in rows])
print(f"| 32 (extrapolated) | {t32:.3f} | {m32 / 2**30:.2f} |\n")
print(f"GPU minutes per 1,000 steps at 32 layers: {t32 * 1000 / 60:.1f}")
print(f"(seconds per step: {how_t}; memory: {how_m})")
PY
