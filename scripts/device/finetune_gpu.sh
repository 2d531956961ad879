#!/usr/bin/env bash
# LoRA training on a GPU machine: the GPU training tests (test_cuda), then QLoRA with the recipe of
# examples/smollm2-lora-ft.toml (r 64, alpha 16, lr 2e-4, batch 4, the Alpaca subset) for STEPS
# steps with --device cuda, and the first CPU_STEPS steps of the same run on the CPU: both
# progress logs (loss, gradient norm, tokens/s per step) and their wall times.
#
#   scripts/device/finetune_gpu.sh BUILD MODEL DATA WORK [STEPS] [CPU_STEPS] [METHOD]
#   (BUILD: a -DLOWBIT_CUDA=ON build directory with test_cuda and lowbit; MODEL: e.g. the
#   SmolLM2-135M-Instruct GGUF; DATA: the data directory holding alpaca/alpaca_5000.json)
set -euo pipefail
BUILD=$1 MODEL=$2 DATA=$3 WORK=$4 STEPS=${5:-200} CPU_STEPS=${6:-5} METHOD=${7:-qlora:r=64,alpha=16}
mkdir -p "$WORK"
"$BUILD/tests/test_cuda" --gtest_filter='*CudaTrain*:*CudaFinetune*' 2>&1 | tee "$WORK/test_cuda_train.log"
run=(finetune --model "$MODEL" --method "$METHOD" --data "$DATA/alpaca/alpaca_5000.json" --steps "$STEPS"
     --batch 4 --grad-accum 1 --lr 2e-4 --eval-size 50 --seed 0 --data-seed 42 --force)
t0=$(date +%s)
"$BUILD/tools/lowbit/lowbit" "${run[@]}" --device cuda -o "$WORK/gpu" 2> "$WORK/gpu.log"
t1=$(date +%s)
"$BUILD/tools/lowbit/lowbit" "${run[@]}" --device cpu --stop-after "$CPU_STEPS" -o "$WORK/cpu" 2> "$WORK/cpu.log"
t2=$(date +%s)
echo "GPU: $STEPS steps in $((t1 - t0)) s; CPU: $CPU_STEPS steps in $((t2 - t1)) s (model loading and quantization included)"
paste <(grep '^step' "$WORK/gpu.log" | head -n "$CPU_STEPS") <(grep '^step' "$WORK/cpu.log")
tail -n 3 "$WORK/gpu.log"
