#!/usr/bin/env bash
# lowbit distill end to end on the 260K-parameter llama2.c model: the FDB initialization alone
# (perplexity equal to 2-bit RTN's), a few steps of DAD (the checkpoint records the training and
# reads back), DAD on windows the model generates itself (--data generated), and refusals of bad
# input before any work.
set -u
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

S="$M/stories260K/stories260K.bin"
if [[ -f "$S" && -f "$D/ptb/ptb.train.txt" ]]; then
  C0=(--model "$S" --calib ptb --nsamples 8 --seqlen 64 --threads 1)
  C=("${C0[@]}" --data-dir "$D" --method "dbllm:g=4")
  P=(--dataset ptb --data-dir "$D" --seqlen 64 --limit 4 --threads 1)
  expect_ok "init only" "wrote .*: 0 steps of DAD" "$B" distill "${C[@]}" --steps 0 -o "$T/init"
  expect_ok "rtn" "wrote" "$B" quantize --model "$S" --method "rtn:w=2,g=4" -o "$T/rtn" --threads 1
  ppl_init=$("$B" ppl --model "$T/init" "${P[@]}" 2>/dev/null | grep -Eo "PPL = [0-9.]+")
  ppl_rtn=$("$B" ppl --model "$T/rtn" "${P[@]}" 2>/dev/null | grep -Eo "PPL = [0-9.]+")
  if [[ -n "$ppl_init" && "$ppl_init" == "$ppl_rtn" ]]; then ok; else
    bad "FDB init perplexity '$ppl_init' differs from 2-bit RTN's '$ppl_rtn'"; fi
  expect_ok "train" "step 3/3: DAD loss [0-9.]+, KL [0-9.]+" "$B" distill "${C[@]}" --steps 3 --grad-accum 2 \
    --lr 1e-3 -o "$T/dad"
  expect_ok "inspect" "quantization  dbllm:g=4 \(dbllm:g=4,init=rtn,offset=1\)" "$B" inspect "$T/dad"
  expect_ok "ppl of trained" "PPL = [0-9.]+" "$B" ppl --model "$T/dad" "${P[@]}"
  if grep -aq 'dad_weight' "$T/dad/model.safetensors"; then ok; else bad "no training record in the metadata"; fi
  # The products' precision is recorded (fp32: the default, and the CPU's only mode).
  if grep -aq '\\"compute\\":\\"fp32\\"' "$T/dad/model.safetensors"; then ok; else
    bad "the training record has no \"compute\": \"fp32\""; fi

  # Data-free: windows the model writes itself (no calibration text read: no --data-dir), the
  # data recorded in the checkpoint, and the same seed giving the same checkpoint.
  G0=(--model "$S" --method "dbllm:g=4" --gen-nsamples 4 --gen-seed 5 --threads 1)
  G=("${G0[@]}" --data generated --gen-seqlen 32)
  expect_ok "generated" "step 3/3: DAD loss [0-9.]+" "$B" distill "${G[@]}" --steps 3 --grad-accum 2 --lr 1e-3 \
    -o "$T/gen"
  if grep -aq 'LLM-QAT data-free' "$T/gen/model.safetensors"; then ok; else
    bad "no generated data identity in the metadata"; fi
  if grep -aq '\\"compute\\":\\"fp32\\"' "$T/gen/model.safetensors"; then ok; else
    bad "the generated run's training record has no \"compute\": \"fp32\""; fi
  expect_ok "generated again" "wrote" "$B" distill "${G[@]}" --steps 3 --grad-accum 2 --lr 1e-3 -o "$T/gen2"
  ppl_gen=$("$B" ppl --model "$T/gen" "${P[@]}" 2>/dev/null | grep -Eo "PPL = [0-9.]+")
  ppl_gen2=$("$B" ppl --model "$T/gen2" "${P[@]}" 2>/dev/null | grep -Eo "PPL = [0-9.]+")
  if [[ -n "$ppl_gen" && "$ppl_gen" == "$ppl_gen2" ]]; then ok; else
    bad "the same --gen-seed gave perplexities '$ppl_gen' and '$ppl_gen2'"; fi
  expect_err "bad data" "--data 'web' is not one of calib, generated" "$B" distill "${G0[@]}" --data web -o "$T/x"
  expect_err "bad greedy" "--gen-greedy '5-3': LO 5 is more than HI 3" "$B" distill "${G[@]}" --gen-greedy 5-3 -o "$T/x"
  expect_err "bad top-k" "--gen-top-k -2 must be >= 0" "$B" distill "${G[@]}" --gen-top-k -2 -o "$T/x"
  expect_err "bad eos" "--gen-eos 'never' is not one of stop, continue" "$B" distill "${G[@]}" --gen-eos never -o "$T/x"
  expect_err "gen seqlen" "--gen-seqlen 4096 exceeds the model's max_position_embeddings" "$B" distill "${G0[@]}" \
    --data generated --gen-seqlen 4096 -o "$T/x"
  expect_err "gen flag on calib" "--gen-seed does not apply to --data calib" "$B" distill "${C[@]}" --gen-seed 3 -o "$T/x"
  expect_err "calib flag on generated" "--nsamples does not apply to --data generated" "$B" distill "${G[@]}" \
    --nsamples 8 -o "$T/x"

  # Bad input, refused before any output.
  expect_err "not dbllm" "give a dbllm spec" "$B" distill "${C0[@]}" --data-dir "$D" --method "rtn:w=2" -o "$T/x"
  expect_err "bad dad" "DAD weight 'focal' is not one of" "$B" distill "${C[@]}" --dad focal -o "$T/x"
  expect_err "bad group" "option g=128 does not divide" "$B" distill "${C0[@]}" --data-dir "$D" --method "dbllm:g=128" -o "$T/x"
  expect_err "gptq without offset" "offset=0 .* needs init=rtn" "$B" distill "${C0[@]}" \
    --data-dir "$D" --method "dbllm:init=gptq,offset=0" -o "$T/x"
  expect_err "missing gpu" "cuda:99" "$B" distill "${C[@]}" --device cuda:99 -o "$T/x"
  expect_err "bad device" "--device" "$B" distill "${C[@]}" --device gpu -o "$T/x"
  # The CPU trains in fp32 only: tf32 and bf16 are refused naming the option and the device.
  for p in bf16 tf32; do
    expect_err "--compute $p on the CPU" "--compute $p on device cpu: the CPU trains in fp32 only" \
      "$B" distill "${C[@]}" --compute $p -o "$T/x"
  done
  expect_err "--compute bf16 with generated data on the CPU" "--compute bf16 on device cpu" \
    "$B" distill "${G[@]}" --compute bf16 -o "$T/x"
  expect_err "unknown precision" "--compute: fp16 not in" "$B" distill "${C[@]}" --compute fp16 -o "$T/x"
  expect_err "existing output" "exists; remove it or pass --force" "$B" distill "${C[@]}" -o "$T/init"
  expect_err "missing data" "ptb" "$B" distill "${C0[@]}" --method "dbllm:g=4" --data-dir "$T/nodata" -o "$T/x"
  if [[ ! -e "$T/x" ]]; then ok; else bad "a refused run left output"; fi
else
  echo "SKIP: $S or $D/ptb absent"
fi
report
