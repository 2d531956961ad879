#!/usr/bin/env bash
# Training speed on one GPU, side by side in one run: lowbit's QLoRA step (`lowbit finetune
# --device cuda --compute COMPUTE`: NF4 + DQ base held compact, bf16 products by default) against transformers + PEFT (bf16
# LoRA on a bf16 base, scripts/device/peft_lora_step_bench.py), at the same model shape, rank,
# alpha, target linears (lowbit's QLoRA defaults: r 64, alpha 16, dropout 0, all seven),
# sequence length, batch and accumulation. Prints tokens/s of each and their ratio.
#
#   bench/gpu/qlora_vs_peft.sh LOWBIT WORK_DIR MODEL [LAYERS]
#
#   LOWBIT    a lowbit binary (a CUDA build)
#   WORK_DIR  the output directory (data, runs, results.json)
#   MODEL     a GGUF file or Hugging Face directory lowbit and transformers both read (e.g.
#             ~/.cache/lowbit/models/SmolLM2-135M-Instruct.Q4_1.gguf), or "8b": the LLaMA-3-8B
#             shapes (bench/configs/llama3-8b.json) with random weights (lowbit's random:DIR;
#             a random LlamaForCausalLM for transformers), which needs TOKENIZER_DIR
#   LAYERS    decoder layers of the "8b" model (default 4); ignored for a file
#
# Both sides see SEQ-token sequences: lowbit through records longer than its source and target
# limits (scripts/device/long_alpaca.py; SEQ split 3:1), the PEFT side through random token ids of
# that length. Each side's tokens/s is over the optimizer steps after its first (lowbit: its
# step_seconds; PEFT: after --warmup 1). Each step is ACCUM micro-batches forward and backward
# plus AdamW (lowbit's on the GPU with the adapters held there, PEFT's torch AdamW on the GPU).
# PEFT's side checkpoints every block's activations as QLoRA's script does (GRAD_CKPT=0: it keeps
# them; lowbit always recomputes each block in the backward). When the peft package does not
# import, the PEFT side runs its documented plain-torch LoRA fallback and the output says so.
#
# Variables (default): SEQ 512, BATCH 1, ACCUM 4, STEPS 4, METHOD qlora:r=64,alpha=16 (r and
# alpha are passed to the PEFT side too), COMPUTE bf16 (lowbit's --compute: fp32, tf32 or bf16;
# fp32 with DEVICE cpu), BASE_RESIDENT auto (lowbit's --base-resident: auto, on or off; on keeps the
# bf16 base expanded for the run instead of expanding each block per step), PROFILE 0 (1: LOWBIT_TRAIN_PROFILE=1, and the last step's time per phase
# is printed; the events cost a little time), GRAD_CKPT 1, DEVICE cuda (cpu checks the script on
# a small model), TOKENIZER_DIR (for "8b"), PEFT_IMPL auto (peft, or torch for the plain-torch
# LoRA even where PEFT is installed), PYTHON python3
set -euo pipefail
if [[ $# -lt 3 || $# -gt 4 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LOWBIT=$1 WORK=$2 MODEL=$3 LAYERS=${4:-4}
SEQ=${SEQ:-512} BATCH=${BATCH:-1} ACCUM=${ACCUM:-4} STEPS=${STEPS:-4} METHOD=${METHOD:-qlora:r=64,alpha=16}
GRAD_CKPT=${GRAD_CKPT:-1} DEVICE=${DEVICE:-cuda} PEFT_IMPL=${PEFT_IMPL:-auto} PYTHON=${PYTHON:-python3}
if [[ "$DEVICE" == cpu ]]; then COMPUTE=${COMPUTE:-fp32}; else COMPUTE=${COMPUTE:-bf16}; fi
PROFILE=${PROFILE:-0} BASE_RESIDENT=${BASE_RESIDENT:-auto}
die() { echo "qlora_vs_peft.sh: $*" >&2; exit 1; }
[[ -x "$LOWBIT" && -f "$LOWBIT" ]] || die "LOWBIT '$LOWBIT' is not an executable file"
[[ "$COMPUTE" == fp32 || "$COMPUTE" == tf32 || "$COMPUTE" == bf16 ]] || die "COMPUTE '$COMPUTE': fp32, tf32 or bf16"
[[ "$BASE_RESIDENT" == auto || "$BASE_RESIDENT" == on || "$BASE_RESIDENT" == off ]] ||
  die "BASE_RESIDENT '$BASE_RESIDENT': auto, on or off"
(( STEPS >= 2 )) || die "STEPS $STEPS: lowbit's throughput leaves out the first step, so at least 2 are needed"
R=$(sed -n 's/.*r=\([0-9]*\).*/\1/p' <<< "$METHOD") ALPHA=$(sed -n 's/.*alpha=\([0-9.]*\).*/\1/p' <<< "$METHOD")
[[ -n "$R" && -n "$ALPHA" ]] || die "METHOD '$METHOD' must give r= and alpha= (they are passed to the PEFT side)"
[[ "$METHOD" != *targets=* && "$METHOD" != *dropout=* ]] ||
  die "METHOD '$METHOD': the comparison runs all seven linears without dropout on both sides"
mkdir -p "$WORK"

if [[ "$MODEL" == 8b ]]; then
  [[ -n "${TOKENIZER_DIR:-}" && -f "$TOKENIZER_DIR/tokenizer.json" ]] ||
    die "MODEL 8b needs TOKENIZER_DIR, a LLaMA-3 tokenizer directory (tokenizer.json)"
  CONFIG=${CONFIG:-$ROOT/bench/configs/llama3-8b.json}
  M="$WORK/model-8b-$LAYERS"
  mkdir -p "$M"
  "$PYTHON" -c 'import json, sys; c = json.load(open(sys.argv[1])); c["num_hidden_layers"] = int(sys.argv[3]); json.dump(c, open(sys.argv[2], "w"), indent=1)' \
    "$CONFIG" "$M/config.json" "$LAYERS"
  for f in tokenizer.json tokenizer_config.json; do [[ -f "$TOKENIZER_DIR/$f" ]] && cp "$TOKENIZER_DIR/$f" "$M/"; done
  LOWBIT_MODEL="random:$M" PEFT_MODEL=(--config "$M/config.json")
else
  [[ -e "$MODEL" ]] || die "MODEL '$MODEL' does not exist (a GGUF file, a Hugging Face directory, or 8b)"
  LOWBIT_MODEL="$MODEL" PEFT_MODEL=(--model "$MODEL")
fi

DATA="$WORK/long_alpaca.json"
"$PYTHON" "$ROOT/scripts/device/long_alpaca.py" "$DATA" $(( STEPS * ACCUM * BATCH ))
SOURCE=$(( SEQ * 3 / 4 )) TARGET=$(( SEQ - SEQ * 3 / 4 ))

echo "lowbit: finetune $METHOD on $LOWBIT_MODEL, sequence $SEQ, batch $BATCH x $ACCUM, $STEPS steps, compute $COMPUTE, base resident $BASE_RESIDENT" >&2
LOWBIT_TRAIN_PROFILE=$PROFILE "$LOWBIT" finetune --model "$LOWBIT_MODEL" --method "$METHOD" --data "$DATA" --steps "$STEPS" --batch "$BATCH" \
  --grad-accum "$ACCUM" --source-max-len "$SOURCE" --target-max-len "$TARGET" --warmup-ratio 0 --save-every 0 \
  --device "$DEVICE" --compute "$COMPUTE" --base-resident "$BASE_RESIDENT" --force -o "$WORK/lowbit" 2> "$WORK/lowbit.log" || { tail -n 20 "$WORK/lowbit.log" >&2; exit 1; }

echo "transformers + PEFT: the same shape, bf16 LoRA on a bf16 base" >&2
CKPT=()
[[ "$GRAD_CKPT" == 1 ]] || CKPT=(--no-gradient-checkpointing)
"$PYTHON" -c 'import peft' 2> /dev/null ||
  echo "qlora_vs_peft.sh: the peft package does not import here; the PEFT side runs its plain-torch LoRA fallback" >&2
"$PYTHON" "$ROOT/scripts/device/peft_lora_step_bench.py" "${PEFT_MODEL[@]}" --layers "$( [[ "$MODEL" == 8b ]] && echo "$LAYERS" || echo 0 )" \
  --seq "$SEQ" --batch "$BATCH" --accum "$ACCUM" --steps $(( STEPS - 1 )) --warmup 1 --r "$R" --alpha "$ALPHA" \
  --impl "$PEFT_IMPL" --device "$DEVICE" "${CKPT[@]}" 2> "$WORK/peft.log" | tail -n 1 > "$WORK/peft.json" ||
  { tail -n 20 "$WORK/peft.log" >&2; exit 1; }

"$PYTHON" - "$WORK/lowbit/lowbit_adapter.json" "$WORK/peft.json" "$SEQ" "$WORK/lowbit.log" "$COMPUTE" <<'EOF' | tee "$WORK/results.txt"
import json, re, sys
lb, pf, seq, compute = json.load(open(sys.argv[1])), json.load(open(sys.argv[2])), int(sys.argv[3]), sys.argv[5]
log = open(sys.argv[4]).read()
if lb.get("compute", "fp32") != compute:
    sys.exit(f"lowbit ran in {lb.get('compute')} compute, COMPUTE asked for {compute}")
m = re.search(r"\((\d+) trainable parameters\)", log)
lb_params = int(m.group(1)) if m else None
if lb_params != pf["trainable_parameters"]:
    print(f"WARNING: trainable parameters differ: lowbit {lb_params}, PEFT side {pf['trainable_parameters']} "
          "(not the same model shape)")
secs = lb["step_seconds"]
tokens = [r["tokens"] for r in lb["log"][-len(secs):]]
lb_tps = sum(tokens[1:]) / sum(secs[1:])
g = lb.get("gpu_memory", {})
print(f"sequence {seq}, batch {pf['batch']} x {pf['accum']} micro-batches, {pf['layers']} layers, r {lb['run']['method']['r']} "
      f"alpha {lb['run']['method']['alpha']} on {', '.join(lb['run']['method']['targets'])}")
same = f"; {lb_params} trainable parameters on both sides" if lb_params == pf["trainable_parameters"] else ""
print(f"device: {g.get('device', 'cpu')} (lowbit), {pf['device']} ({pf['impl']}){same}")
print(f"lowbit compute: {compute}, base {'resident (expanded once)' if lb.get('base_resident') else 'expanded per block and step'}, "
      f"AdamW on the {lb.get('optimizer', 'host')}")
print(f"{'':34} {'tokens/s':>10} {'peak memory':>14}")
peak_lb = g.get("peak_in_use_bytes")
peak_pf = pf.get("peak_memory_bytes")
fmt = lambda b: f"{b / 2**30:10.2f} GiB" if b else f"{'n/a':>14}"
print(f"{'lowbit ' + lb['run']['method']['name'] + f' (NF4 base, {compute})':34} {lb_tps:10.1f} {fmt(peak_lb)}")
print(f"{'transformers + ' + pf['impl'] + ' (bf16)':34} {pf['tokens_per_second']:10.1f} {fmt(peak_pf)}")
print(f"ratio lowbit / PEFT: {lb_tps / pf['tokens_per_second']:.2f}x  (tokens per micro-batch: lowbit {tokens[0] // pf['accum']}, "
      f"PEFT {pf['batch'] * seq})")
print("peak memory: lowbit's is cudaMemGetInfo's in use (context included); PEFT's torch.cuda.max_memory_allocated")
phases = re.findall(r"^step (\d+) phases: (.*) \(sum ([0-9.]+) s\)$", log, re.M)
if phases:
    step, items, total = phases[-1]
    print(f"lowbit step {step} by phase (LOWBIT_TRAIN_PROFILE=1; device time, a host AdamW's wall time; sum {float(total):.4f} s, "
          f"step {secs[-1]:.4f} s):")
    for name, sec in re.findall(r"([^,]+?) ([0-9.]+) s(?:, |$)", items):
        print(f"  {name:28} {float(sec):8.4f} s {100 * float(sec) / secs[-1]:5.1f}%")
EOF
