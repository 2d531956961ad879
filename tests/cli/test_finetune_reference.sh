#!/usr/bin/env bash
# What lowbit finetune gives an outside reference of the same training, on the 260K-parameter
# llama2.c model: --init-adapter (the adapters a run starts from; refusals of a mismatching
# adapter), --save-batches (every micro-batch, checked against the run's own per-step log) and
# --dump-grads (the first step's gradient, checked against the logged gradient norm).
set -u
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

S="$M/stories260K/stories260K.bin"
if [[ -f "$S" && -f "$D/alpaca/alpaca_5000.json" ]]; then
  C=(--model "$S" --data "$D/alpaca/alpaca_5000.json" --batch 2 --grad-accum 2 --limit 40 --threads 1)
  L=(--method "lora:r=4,alpha=8")
  "$B" finetune "${C[@]}" "${L[@]}" --steps 3 -o "$T/a" --save-batches "$T/a.jsonl" --dump-grads "$T/a_grads.safetensors" \
    >/dev/null 2>&1 || bad "finetune with --save-batches and --dump-grads failed"

  # --save-batches: 3 steps x 2 micro-batches of 2 sequences; each step's padded tokens and
  # target tokens are what the run logged for it; a target is the next token of its sequence.
  # --dump-grads: the tensors of the adapter, their global norm the logged step-1 gradient norm.
  python3 - "$T/a.jsonl" "$T/a/lowbit_adapter.json" "$T/a_grads.safetensors" "$T/a/adapter_model.safetensors" <<'PY' \
    && ok || bad "--save-batches / --dump-grads do not match the run's log"
import json, math, sys
from safetensors.numpy import load_file
rows = [json.loads(l) for l in open(sys.argv[1])]
log = json.load(open(sys.argv[2]))["log"]
assert [(r["step"], r["micro"]) for r in rows] == [(s, a) for s in (1, 2, 3) for a in (0, 1)], "step/micro order"
for s in (1, 2, 3):
    micro = [r for r in rows if r["step"] == s]
    tokens = sum(len(r["tokens"]) * len(r["tokens"][0]) for r in micro)
    targets = sum(t >= 0 for r in micro for seq in r["targets"] for t in seq)
    assert tokens == log[s - 1]["tokens"] and targets == log[s - 1]["targets"], (s, tokens, targets, log[s - 1])
    for r in micro:
        assert len(r["tokens"]) == 2 and all(len(x) == len(r["tokens"][0]) for x in r["tokens"] + r["targets"])
        for tok, tgt in zip(r["tokens"], r["targets"]):
            assert all(g == tok[t + 1] for t, g in enumerate(tgt) if g >= 0), "a target is not the next token"
            assert tgt[-1] == -100
g = load_file(sys.argv[3])
a = load_file(sys.argv[4])
assert sorted(g) == sorted(a) and all(g[k].shape == a[k].shape for k in g), "gradient names/shapes"
norm = math.sqrt(sum(float((v.astype("float64") ** 2).sum()) for v in g.values()))
assert abs(norm - log[0]["grad_norm"]) <= 1e-6 * norm, (norm, log[0]["grad_norm"])
PY

  # --init-adapter: one step whose learning rate is 0 (the first of a warmup) leaves the adapters
  # as given, so the adapter written is the one started from, byte for byte; the seeded init
  # gives another.
  expect_ok "init adapter lr 0" "step 1/1 loss [0-9.]+ lr 0 " "$B" finetune "${C[@]}" "${L[@]}" --steps 1 \
    --warmup-ratio 1 --init-adapter "$T/a" -o "$T/b"
  if cmp -s "$T/a/adapter_model.safetensors" "$T/b/adapter_model.safetensors"; then ok; else
    bad "the adapter after a step at lr 0 is not the --init-adapter one"; fi
  "$B" finetune "${C[@]}" "${L[@]}" --steps 1 --warmup-ratio 1 -o "$T/c" >/dev/null 2>&1
  if ! cmp -s "$T/a/adapter_model.safetensors" "$T/c/adapter_model.safetensors"; then ok; else
    bad "the seeded init equals the trained adapter"; fi
  # Training from it: stopped and resumed (the init adapter is part of the run's identity).
  "$B" finetune "${C[@]}" "${L[@]}" --steps 3 --init-adapter "$T/a" -o "$T/d" >/dev/null 2>&1
  "$B" finetune "${C[@]}" "${L[@]}" --steps 3 --init-adapter "$T/a" -o "$T/e" --stop-after 1 >/dev/null 2>&1
  expect_err "resume without the init adapter" "belongs to another run: its init_adapter is .*, this run has none" \
    "$B" finetune "${C[@]}" "${L[@]}" --steps 3 -o "$T/e" --resume
  expect_ok "resume with the init adapter" "resumed from .* at step 1" \
    "$B" finetune "${C[@]}" "${L[@]}" --steps 3 --init-adapter "$T/a" -o "$T/e" --resume
  if cmp -s "$T/d/adapter_model.safetensors" "$T/e/adapter_model.safetensors"; then ok; else
    bad "a run from --init-adapter stopped and resumed differs from the uninterrupted one"; fi
  # A run with IEC from an adapter without scalars starts them at 0 (the step at lr 0 keeps them).
  "$B" finetune "${C[@]}" --method "lora:r=4,alpha=8,iec=1" --steps 1 --warmup-ratio 1 --init-adapter "$T/a" \
    -o "$T/iec" >/dev/null 2>&1
  python3 - "$T/a/adapter_model.safetensors" "$T/iec/adapter_model.safetensors" <<'PY' \
    && ok || bad "--init-adapter into an IEC run"
import sys
from safetensors.numpy import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
scalars = [k for k in b if k.endswith("_scale")]
assert scalars and all(float(b[k][0]) == 0.0 for k in scalars), "IEC scalars not 0"
assert all((a[k] == b[k]).all() for k in a), "A/B differ from the init adapter"
PY

  # Refusals, naming the file, the field and both values; nothing written.
  expect_err "init rank" "init-adapter '.*/a/adapter_config.json': r is 4, the run's 8" \
    "$B" finetune "${C[@]}" --method "lora:r=8,alpha=8" --init-adapter "$T/a" -o "$T/x"
  expect_err "init alpha" "lora_alpha is 8, the run's 16" \
    "$B" finetune "${C[@]}" --method "lora:r=4,alpha=16" --init-adapter "$T/a" -o "$T/x"
  expect_err "init targets" \
    "target_modules are q_proj\+k_proj\+v_proj\+o_proj\+gate_proj\+up_proj\+down_proj, the run's q_proj\+v_proj" \
    "$B" finetune "${C[@]}" --method "lora:r=4,alpha=8,targets=q_proj+v_proj" --init-adapter "$T/a" -o "$T/x"
  expect_err "init iec" "the adapter holds IEC scalars, the run has no IEC" \
    "$B" finetune "${C[@]}" "${L[@]}" --init-adapter "$T/iec" -o "$T/x"
  expect_err "init missing" "adapter '$T/none': no adapter_config.json" \
    "$B" finetune "${C[@]}" "${L[@]}" --init-adapter "$T/none" -o "$T/x"
  if [[ ! -e "$T/x" ]]; then ok; else bad "a refused run left output"; fi
fi

report
