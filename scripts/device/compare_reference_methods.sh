#!/usr/bin/env bash
# Whole-model comparison of lowbit's PB-LLM, BiLLM, SliM-LLM and QuIP with the official code: for
# each configuration, the official quantizers (scripts/reference_pipeline.py, on the GPU as their
# repositories run) and `lowbit quantize` calibrate on the very same windows of the very same
# weights; both fake-quantized models are then evaluated by one command, `lowbit ppl`, on
# WikiText2 and PTB test. Prints one table (also WORK/table.md).
#
#   scripts/device/compare_reference_methods.sh LOWBIT MODEL DATA REFS WORK
#
#   LOWBIT  a lowbit binary
#   MODEL   what lowbit quantizes: SmolLM2-135M-Instruct's .gguf (or any model file or HF directory)
#   DATA    the data directory: ptb/ptb.train.txt (calibration), wikitext2/wiki.test.raw, ptb/ptb.test.txt
#   REFS    the official work trees: REFS/PB-LLM (hahnyuan/PB-LLM), REFS/BiLLM (Aaronhuang-778/BiLLM),
#           REFS/SliM-LLM (Aaronhuang-778/SliM-LLM), REFS/QuIP (Cornell-RelaxML/QuIP; needs the
#           primefac package)
#   WORK    the output directory; a step whose result is there is not run again, so the same
#           command resumes an interrupted run
#
# Variables (default):
#   CONFIGS        "pbllm-1.7 pbllm-2 billm slim-2 slim-3 quip-2 quip-3 quip-4" (a subset runs those;
#                  quip-W-sN is quip-W with seed N, e.g. "quip-4 quip-4-s1 quip-4-s2" for a spread)
#   REF_DEVICE     cuda   the reference quantizers (reference_pipeline.py --device)
#   LOWBIT_DEVICE  cpu    lowbit quantize --device (these four methods quantize on the CPU today)
#   PPL_DEVICE     cpu    lowbit ppl --device, the same for both models (cuda with a CUDA build)
#   NSAMPLES 128, SEQLEN 2048, CALIB ptb, SEED 0: the calibration (the study's 128 x 2048; PTB train,
#                  WikiText2 train not being in the data directory)
#   PPL_SETS "wikitext2 ptb-new", PPL_SEQLEN 2048, PPL_LIMIT 0 (all windows): the evaluation
#   SPM auto (--spm-convention of quantize's calibration and of ppl), THREADS 0 (all cores)
#   QUIP_SEED 0    the seed of QuIP's butterflies on both sides (different generators: a spread over
#                  seeds is what compares; on SmolLM2 one seed's perplexity can be 30% off, see README)
#   PB_G 64, BILLM_BLOCK 64, SLIM_G 128: group sizes (see below); PYTHON python3; REF_DTYPE (empty:
#                  each repository's, torch_dtype="auto" and QuIP's float16)
#
# Calibration: lowbit draws the windows (--calib, Python's random.seed as GPTQ does) and writes
# them with --save-calib; the reference reads that file (--windows), so both quantize on the same
# token ids whatever the tokenizers. Every configuration's windows must be byte-identical to the
# first one's, which is checked.
#
# Weights: a GGUF file is exported by lowbit itself (`lowbit export MODEL --format hf --dtype f32`:
# the fp32 values lowbit dequantizes and quantizes from, equal to transformers' GGUF loading) into
# WORK/source-hf, which the reference loads; the script checks that lowbit's logits of the GGUF and
# of the export are bit-identical and that transformers' logits of the export agree with lowbit's.
# Under torch_dtype="auto" the reference then runs PB-LLM, BiLLM and SliM-LLM in fp32 (lowbit's
# CPU arithmetic) and QuIP in fp16 (its llama.py's cast).
#
# Group sizes on SmolLM2 (hidden 576 = 4.5 x 128 = 9 x 64, intermediate 1536 = 12 x 128):
# - PB-LLM g=128: the reference takes ceil(576/128) = 5 groups, the last of 64 columns (and a last
#   GPTQ block of 64); lowbit's pbllm requires g to divide the columns (and to be a multiple of
#   block) and refuses q/k/v/o/gate/up. Both run g=64, block=64 identically (PB_G).
# - BiLLM block=128: the same (the reference's last block is 64 columns, lowbit requires block to
#   divide the columns); both run block=64 (BILLM_BLOCK; up_lim 50 stays below it).
# - SliM-LLM g=128: both take ceil(576/128) = 5 groups with a last one of 64 columns, in the
#   salience search (the reference's rounds: 5 // 2 - 1 = 1 candidate, as lowbit's) and in GPTQ; it
#   runs at the study's g=128 (SLIM_G).
# - QuIP has no groups; its butterflies factor 576 = 24 x 24 and 1536 = 32 x 48 on both sides.
# Small calibrations: SliM-LLM's salience pass (get_salience) damps the Hessian by an absolute 0.01,
# so with fewer calibration tokens than down_proj's 1536 inputs its Cholesky factorization can
# fail (SmolLM2 at 2 x 128 tokens did); keep NSAMPLES x SEQLEN in the thousands for slim-*.
set -euo pipefail
if [[ $# -ne 5 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
LOWBIT=$(realpath "$1") MODEL=$(realpath "$2") DATA=$(realpath "$3") REFS=$(realpath "$4") WORK=$5
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
CONFIGS=${CONFIGS:-"pbllm-1.7 pbllm-2 billm slim-2 slim-3 quip-2 quip-3 quip-4"}
REF_DEVICE=${REF_DEVICE:-cuda} LOWBIT_DEVICE=${LOWBIT_DEVICE:-cpu} PPL_DEVICE=${PPL_DEVICE:-cpu}
NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-2048} CALIB=${CALIB:-ptb} SEED=${SEED:-0}
PPL_SETS=${PPL_SETS:-"wikitext2 ptb-new"} PPL_SEQLEN=${PPL_SEQLEN:-2048} PPL_LIMIT=${PPL_LIMIT:-0}
SPM=${SPM:-auto} THREADS=${THREADS:-0} QUIP_SEED=${QUIP_SEED:-0}
PB_G=${PB_G:-64} BILLM_BLOCK=${BILLM_BLOCK:-64} SLIM_G=${SLIM_G:-128}
PYTHON=${PYTHON:-python3} REF_DTYPE=${REF_DTYPE:-}
mkdir -p "$WORK"
WORK=$(realpath "$WORK")
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

# config NAME -> "method|config|lowbit spec|reference_pipeline.py arguments" (PB_G, BILLM_BLOCK, SLIM_G
# and QUIP_SEED above)
source "$ROOT/scripts/device/reference_configs.sh"
config() { reference_config "$1"; }
for c in $CONFIGS; do config "$c" >/dev/null; done
# What a later step would stop on, checked before any work.
[[ -x "$LOWBIT" ]] || { echo "LOWBIT '$LOWBIT' is not an executable" >&2; exit 1; }
[[ -f "$DATA/ptb/ptb.train.txt" || "$CALIB" != ptb ]] || { echo "missing $DATA/ptb/ptb.train.txt" >&2; exit 1; }
"$PYTHON" -c "import torch, transformers, safetensors, numpy" ||
  { echo "$PYTHON lacks torch, transformers, safetensors or numpy" >&2; exit 1; }
if [[ "$REF_DEVICE" == cuda ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
    { echo "REF_DEVICE=cuda but torch sees no GPU (REF_DEVICE=cpu runs the references on the CPU)" >&2; exit 1; }
fi
if [[ " $CONFIGS " == *" quip-"* ]]; then
  "$PYTHON" -c "import primefac, scipy" || { echo "QuIP's method.py imports primefac and scipy: install them (pip" \
    "install --target DIR primefac-*.whl, then PYTHONPATH=DIR)" >&2; exit 1; }
fi
for r in PB-LLM/gptq_pb/gptq.py BiLLM/bigptq.py SliM-LLM/slim-llm/slim_gptq.py QuIP/bal.py; do
  [[ -f "$REFS/$r" ]] || { echo "missing $REFS/$r (REFS holds the official work trees)" >&2; exit 1; }
done

# The weights the reference loads.
if [[ -d "$MODEL" ]]; then
  HF=$MODEL
else
  HF=$WORK/source-hf
  if [[ ! -d "$HF" ]]; then
    log "exporting $MODEL to $HF (f32, as lowbit reads it)"
    "$LOWBIT" export "$MODEL" --format hf --dtype f32 -o "$HF" >&2
  fi
  IDS=1,504,3458,282,260,2254,30,216,1476,28,2
  "$LOWBIT" logits --model "$MODEL" --ids $IDS -o "$WORK/logits_model.safetensors" 2>> "$WORK/logits.log"
  "$LOWBIT" logits --model "$HF" --ids $IDS -o "$WORK/logits_hf.safetensors" 2>> "$WORK/logits.log"
  "$PYTHON" - "$WORK/logits_model.safetensors" "$WORK/logits_hf.safetensors" "$HF" "$IDS" <<'PY'
import sys, torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM
a, b = load_file(sys.argv[1])["logits"], load_file(sys.argv[2])["logits"]
if not torch.equal(a, b):
    sys.exit(f"lowbit's logits of the model and of its export differ (max {(a - b).abs().max():.3g})")
m = AutoModelForCausalLM.from_pretrained(sys.argv[3], dtype=torch.float32)
ids = torch.tensor([[int(t) for t in sys.argv[4].split(",")]])
with torch.no_grad():
    t = m(ids).logits[0].float()
d = (t - a).abs().max().item()
print(f"weights: lowbit's logits of the model and of {sys.argv[3]} bit-identical; transformers' within {d:.2e}",
      file=sys.stderr)
if d > 1e-2 * max(1.0, a.abs().max().item()):
    sys.exit("transformers reads the export otherwise than lowbit")
PY
fi

CAL=(--calib "$CALIB" --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --seed "$SEED" --data-dir "$DATA" --spm-convention "$SPM")
PPL=(--data-dir "$DATA" --seqlen "$PPL_SEQLEN" --limit "$PPL_LIMIT" --spm-convention "$SPM" --threads "$THREADS" --device "$PPL_DEVICE" --json)
FIRST_WINDOWS=""

ppl() {  # ppl MODEL_DIR OUT_PREFIX
  for s in $PPL_SETS; do
    [[ -s "$2_$s.json" ]] && continue
    log "ppl $s: $1"
    "$LOWBIT" ppl --model "$1" --dataset "$s" "${PPL[@]}" > "$2_$s.json.tmp"
    mv "$2_$s.json.tmp" "$2_$s.json"
  done
}

ppl "$MODEL" "$WORK/source_ppl"
for c in $CONFIGS; do
  IFS='|' read -r method desc spec refargs <<<"$(config "$c")"
  D=$WORK/$c
  mkdir -p "$D"
  printf '%s\n' "$method" "$desc" "$spec" "$refargs" > "$D/config.txt"
  if [[ ! -s "$D/lowbit_quantize.json" ]]; then
    log "$c: lowbit quantize --method $spec on $LOWBIT_DEVICE"
    rm -rf "$D/lowbit"
    "$LOWBIT" quantize --model "$MODEL" --method "$spec" "${CAL[@]}" --save-calib "$D/windows.safetensors" \
      --device "$LOWBIT_DEVICE" --threads "$THREADS" --json -o "$D/lowbit" > "$D/lowbit_quantize.json.tmp" 2> "$D/lowbit_quantize.log"
    mv "$D/lowbit_quantize.json.tmp" "$D/lowbit_quantize.json"
  fi
  if [[ -z "$FIRST_WINDOWS" ]]; then
    FIRST_WINDOWS=$D/windows.safetensors
  elif ! cmp -s "$FIRST_WINDOWS" "$D/windows.safetensors"; then
    echo "$c: calibration windows differ from $FIRST_WINDOWS" >&2
    exit 1
  fi
  if [[ ! -s "$D/reference/reference_run.json" ]]; then
    log "$c: reference $refargs on $REF_DEVICE"
    # shellcheck disable=SC2086  # refargs is a list of words
    "$PYTHON" "$ROOT/scripts/reference_pipeline.py" $refargs --model "$HF" --windows "$D/windows.safetensors" \
      --device "$REF_DEVICE" ${REF_DTYPE:+--dtype "$REF_DTYPE"} --threads "$THREADS" -o "$D/reference.partial" \
      > "$D/reference.log" 2>&1 || { tail -20 "$D/reference.log" >&2; exit 1; }
    rm -rf "$D/reference"
    mv "$D/reference.partial" "$D/reference"
  fi
  ppl "$D/lowbit" "$D/ppl_lowbit"
  ppl "$D/reference" "$D/ppl_reference"
done

"$PYTHON" - "$WORK" "$PPL_SETS" $CONFIGS <<'PY' | tee "$WORK/table.md"
import json, os, sys
work, sets, configs = sys.argv[1], sys.argv[2].split(), sys.argv[3:]
names = {"wikitext2": "WikiText2", "ptb-new": "PTB test", "ptb": "PTB valid"}
def load(p):
    with open(p) as f:
        return json.load(f)
head = ["method", "config"]
for s in sets:
    n = names.get(s, s)
    head += [f"{n} ref", f"{n} lowbit", "ratio"]
head += ["ref s", "lowbit s"]
print("| " + " | ".join(head) + " |")
print("|" + "---|" * len(head))
src = ["16-bit source", "-"]
for s in sets:
    src += ["", f"{load(os.path.join(work, f'source_ppl_{s}.json'))['ppl']:.3f}", ""]
print("| " + " | ".join(src + ["", ""]) + " |")
for c in configs:
    d = os.path.join(work, c)
    ref = load(os.path.join(d, "reference", "reference_run.json"))
    lb = load(os.path.join(d, "lowbit_quantize.json"))
    with open(os.path.join(d, "config.txt")) as f:
        method, desc = f.read().split("\n")[:2]
    row = [method, f"{desc} (`{lb['method']['spec']}`)"]
    for s in sets:
        r, l = load(os.path.join(d, f"ppl_reference_{s}.json")), load(os.path.join(d, f"ppl_lowbit_{s}.json"))
        if (r["windows"], r["tokens"]) != (l["windows"], l["tokens"]):
            sys.exit(f"{c} {s}: the two evaluations saw different tokens ({r['windows']} windows, {r['tokens']} "
                     f"tokens vs {l['windows']}, {l['tokens']})")
        row += [f"{r['ppl']:.3f}", f"{l['ppl']:.3f}", f"{l['ppl'] / r['ppl']:.3f}"]
    row += [f"{ref['quantize_seconds']:.0f} ({ref['device']})", f"{lb['quantize_seconds']:.0f} ({lb['device']})"]
    print("| " + " | ".join(row) + " |")
ppl = load(os.path.join(work, f"source_ppl_{sets[0]}.json"))
print(f"\nratio = lowbit / reference; seconds: quantization as each program measures it (model load and save "
      f"excluded); perplexity: lowbit ppl on {ppl['device']}, {ppl['windows']} windows of {sets[0]}.")
PY
