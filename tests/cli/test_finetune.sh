#!/usr/bin/env bash
# lowbit finetune end to end on the 260K-parameter llama2.c model: a QLoRA run (NF4 base, LoRA
# dropout on), the same run stopped and resumed twice (identical adapter bytes), evaluation with
# the adapter, and refusals of bad input.
set -u
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

S="$M/stories260K/stories260K.bin"
if [[ -f "$S" && -f "$D/alpaca/alpaca_5000.json" ]]; then
  C=(--model "$S" --method "qlora:r=4,alpha=8,dropout=0.1" --data "$D/alpaca/alpaca_5000.json" --batch 2
     --grad-accum 2 --limit 120 --eval-size 10 --threads 1)
  A=("${C[@]}" --steps 5 --save-every 2)
  expect_ok "finetune qlora" "wrote .*: final loss [0-9.]+, held-out loss [0-9.]+, 5 steps" "$B" finetune "${A[@]}" -o "$T/full"
  expect_ok "progress line" "step 5/5 loss [0-9.]+ lr 0.0002 \|g\| [0-9.]+ [0-9]+ tok/s ETA" \
    "$B" finetune "${A[@]}" -o "$T/full" --force
  for f in adapter_config.json adapter_model.safetensors lowbit_adapter.json checkpoint/optimizer.safetensors; do
    if [[ -f "$T/full/$f" ]]; then ok; else bad "finetune wrote no $f"; fi
  done
  # The products' precision is recorded: fp32, the CPU's only mode.
  if grep -q '"compute": "fp32"' "$T/full/lowbit_adapter.json"; then ok; else
    bad "lowbit_adapter.json does not record \"compute\": \"fp32\""; fi
  # So is the resident base's choice: auto, the default, is off on the CPU.
  if grep -q '"base_resident": false' "$T/full/lowbit_adapter.json"; then ok; else
    bad "lowbit_adapter.json does not record \"base_resident\": false"; fi
  expect_ok "stop after 2" "stopped after 2 steps" "$B" finetune "${A[@]}" -o "$T/part" --stop-after 2
  expect_err "existing run" "holds a run; pass --resume" "$B" finetune "${A[@]}" -o "$T/part"
  expect_ok "resume stop" "resumed from .* at step 2" "$B" finetune "${A[@]}" -o "$T/part" --resume --stop-after 1
  expect_ok "resume to end" "resumed from .* at step 3" "$B" finetune "${A[@]}" -o "$T/part" --resume
  if cmp -s "$T/full/adapter_model.safetensors" "$T/part/adapter_model.safetensors"; then ok; else
    bad "a stopped and resumed run's adapter differs from the uninterrupted run's"; fi
  # Killed (SIGKILL) at an arbitrary moment, checkpointing every step, then resumed: the same bytes.
  K=("${C[@]}" --steps 8 --save-every 1)
  "$B" finetune "${K[@]}" -o "$T/ref" >/dev/null 2>&1
  "$B" finetune "${K[@]}" -o "$T/kill" >/dev/null 2>&1 &
  pid=$!
  sleep 0.$((RANDOM % 8 + 1))
  kill -9 "$pid" 2>/dev/null
  wait "$pid" 2>/dev/null
  if [[ -d "$T/kill/checkpoint" || -d "$T/kill/checkpoint.old" ]]; then
    "$B" finetune "${K[@]}" -o "$T/kill" --resume >/dev/null 2>&1
  else
    "$B" finetune "${K[@]}" -o "$T/kill" --force >/dev/null 2>&1  # killed before its first checkpoint
  fi
  if cmp -s "$T/ref/adapter_model.safetensors" "$T/kill/adapter_model.safetensors"; then ok; else
    bad "a killed and resumed run's adapter differs from the uninterrupted run's"; fi
  expect_err "resume other options" "belongs to another run: its lr is 0.0002, this run's 0.001" \
    "$B" finetune "${A[@]}" --lr 1e-3 -o "$T/part" --resume

  # Bad input.
  printf '[{"instruction": "a", "output": "b"}, {"instruction": "c", "input": 5, "output": "d"}]' > "$T/bad.json"
  expect_err "malformed record" "bad.json': record 1's \"input\" is a number" \
    "$B" finetune --model "$S" --data "$T/bad.json" -o "$T/x"
  expect_err "unknown method" "unknown fine-tuning method 'dora'" "$B" finetune --model "$S" --method dora \
    --data "$D/alpaca/alpaca_5000.json" -o "$T/x"
  expect_err "unknown method option" "unknown option 'rank'" "$B" finetune --model "$S" --method "lora:rank=4" \
    --data "$D/alpaca/alpaca_5000.json" -o "$T/x"
  expect_err "unknown target" "unknown LoRA target 'qkv_proj'" "$B" finetune --model "$S" \
    --method "lora:targets=qkv_proj" --data "$D/alpaca/alpaca_5000.json" -o "$T/x"
  # The CPU trains in fp32 only: tf32 and bf16 are refused naming the option and the device.
  for p in bf16 tf32; do
    expect_err "--compute $p on the CPU" "--compute $p on device cpu: the CPU trains in fp32 only" \
      "$B" finetune --model "$S" --compute $p --data "$D/alpaca/alpaca_5000.json" -o "$T/x"
  done
  # A resident base is the GPU's bf16 mode's: on is refused on the CPU naming the option.
  expect_err "--base-resident on on the CPU" "--base-resident on with --compute fp32 on device cpu" \
    "$B" finetune --model "$S" --base-resident on --data "$D/alpaca/alpaca_5000.json" -o "$T/x"
  expect_err "--base-resident unknown" "--base-resident: maybe not in \{auto,on,off\}" \
    "$B" finetune --model "$S" --base-resident maybe --data "$D/alpaca/alpaca_5000.json" -o "$T/x"
  if [[ ! -e "$T/x" ]]; then ok; else bad "a refused run left output"; fi

  # Evaluation with the adapter (merged); another base model is refused.
  printf 'Once upon a time there was a little girl. She liked to play in the park with her dog.\n%.0s' {1..40} > "$T/text.txt"
  expect_ok "ppl with adapter" "PPL = [0-9.]+" "$B" ppl --model "$S" --adapter "$T/full" --dataset "$T/text.txt" --seqlen 64
  # IR-QLoRA: ICQ base + IEC scalars (saved under IR-QLoRA's names), evaluated over the ICQ base
  # quantized separately from the same source; a rank that does not divide the linears is refused.
  expect_ok "finetune irqlora" "wrote .*: final loss [0-9.]+, held-out loss [0-9.]+, 3 steps" "$B" finetune \
    --model "$S" --method "irqlora:r=4,alpha=8,dropout=0.1" --data "$D/alpaca/alpaca_5000.json" --batch 2 \
    --grad-accum 2 --limit 120 --eval-size 10 --threads 1 --steps 3 -o "$T/irq"
  if grep -aq "layers.0.self_attn.q_proj.lora_default_A_scale" "$T/irq/adapter_model.safetensors"; then ok; else
    bad "the IR-QLoRA adapter has no IEC scalars"; fi
  # Stopped and resumed (the scalars and their AdamW moments in the checkpoint): the same bytes.
  "$B" finetune --model "$S" --method "irqlora:r=4,alpha=8,dropout=0.1" --data "$D/alpaca/alpaca_5000.json" \
    --batch 2 --grad-accum 2 --limit 120 --eval-size 10 --threads 1 --steps 3 -o "$T/irq2" --stop-after 2 >/dev/null 2>&1
  expect_ok "irqlora resume" "resumed from .* at step 2" "$B" finetune --model "$S" \
    --method "irqlora:r=4,alpha=8,dropout=0.1" --data "$D/alpaca/alpaca_5000.json" --batch 2 --grad-accum 2 \
    --limit 120 --eval-size 10 --threads 1 --steps 3 -o "$T/irq2" --resume
  if cmp -s "$T/irq/adapter_model.safetensors" "$T/irq2/adapter_model.safetensors"; then ok; else
    bad "a stopped and resumed IR-QLoRA run's adapter differs from the uninterrupted run's"; fi
  expect_err "irqlora rank" "r = 3 does not divide q_proj's input \(64\) and output \(64\)" "$B" finetune \
    --model "$S" --method "irqlora:r=3" --data "$D/alpaca/alpaca_5000.json" -o "$T/y"
  if [[ ! -e "$T/y" ]]; then ok; else bad "a refused run left output"; fi
  expect_err "iec option" "iec must be 0 or 1" "$B" finetune --model "$S" --method "qlora:iec=yes" \
    --data "$D/alpaca/alpaca_5000.json" -o "$T/y"
  "$B" quantize --model "$S" --method "icq:tau_range=0.1,tau_n=100,dq=1" -o "$T/icq" >/dev/null 2>&1
  expect_ok "ppl irqlora adapter on the icq base" "trained over a base quantized with icq" "$B" ppl --model "$T/icq" \
    --adapter "$T/irq" --dataset "$T/text.txt" --seqlen 64
  if [[ -d "$M/testbed-44m" ]]; then
    expect_err "adapter on another base" "trained on another base model: hidden_size is 64 there, 512 here" \
      "$B" ppl --model "$M/testbed-44m" --adapter "$T/full" --dataset "$T/text.txt" --seqlen 64
  fi
fi

report
