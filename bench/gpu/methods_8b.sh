#!/usr/bin/env bash
# PB-LLM, BiLLM, SliM-LLM and QuIP at LLaMA-3-8B shapes (random weights): lowbit's quantization
# time per decoder layer beside the official code's (scripts/reference_pipeline.py driving the
# repositories' quantizers, as compare_reference_methods.sh does), on the same GPU, the same
# weights and the same 128 x 2048 PTB calibration windows. Prints one table (also WORK/table.md).
#
#   bench/gpu/methods_8b.sh LOWBIT DATA_DIR WORK_DIR TOKENIZER_DIR REFS [LAYERS]
#
#   LOWBIT         a lowbit binary (a CUDA build for DEVICE=cuda)
#   DATA_DIR       the data directory: ptb/ptb.train.txt (calibration)
#   WORK_DIR       the output directory; a step whose result is there is not run again, so the same
#                  command resumes an interrupted run
#   TOKENIZER_DIR  a LLaMA-3 tokenizer directory (tokenizer.json), copied beside the model
#   REFS           the official work trees: REFS/PB-LLM, REFS/BiLLM, REFS/SliM-LLM, REFS/QuIP (QuIP
#                  needs the primefac and scipy packages)
#   LAYERS         decoder layers timed (default 4): the model is built with the 8B shapes and
#                  MODEL_LAYERS decoder layers (default LAYERS; 32 is the whole 8B model, 16 GB in
#                  bf16); lowbit quantizes all of them, the reference the first LAYERS
#
# Quantization time is per decoder layer (every layer of the model has the same shapes), so both
# sides are compared per layer: lowbit's block_seconds (quantize --json: each block's statistics,
# quantization and propagation) and the reference's seconds_per_layer (reference_run.json: the
# same three steps, the GPU synchronized after each layer), each averaged over its layers.
#
# Variables (default):
#   CONFIGS     "pbllm-1.7 billm slim-2 quip-2", the study's rows: PB-LLM low_frac 0.9 with 8-bit
#               salient weights g128, BiLLM braq block 128, SliM-LLM 2-bit g128, QuIP 2-bit; also
#               known: pbllm-2 (low_frac 6/7), slim-3, quip-3, quip-4
#   DEVICE      cuda  both sides (lowbit quantize --device, reference_pipeline.py --device); cpu
#               checks the script on a small CONFIG
#   CONFIG      bench/configs/llama3-8b.json (the shapes; bench/configs/llama3-tiny.json for a check)
#   MODEL_LAYERS (LAYERS), NSAMPLES 128, SEQLEN 2048, SEED 0: the model and the calibration
#   QUIP_SEED 0, THREADS 0 (all cores), PYTHON python3, REF_DTYPE (empty: each repository's,
#               torch_dtype="auto" = bf16 here, QuIP float16)
set -euo pipefail
if [[ $# -lt 5 || $# -gt 6 ]]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
  exit 2
fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
LAYERS=${6:-4}
CONFIGS=${CONFIGS:-"pbllm-1.7 billm slim-2 quip-2"}
DEVICE=${DEVICE:-cuda} CONFIG=${CONFIG:-$ROOT/bench/configs/llama3-8b.json}
MODEL_LAYERS=${MODEL_LAYERS:-$LAYERS} NSAMPLES=${NSAMPLES:-128} SEQLEN=${SEQLEN:-2048} SEED=${SEED:-0}
QUIP_SEED=${QUIP_SEED:-0} THREADS=${THREADS:-0} PYTHON=${PYTHON:-python3} REF_DTYPE=${REF_DTYPE:-}
log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }
die() { echo "methods_8b.sh: $*" >&2; exit 1; }

# config NAME -> "method|configuration|lowbit spec|reference_pipeline.py arguments", at the
# study's groups of 128
source "$ROOT/scripts/device/reference_configs.sh"
PB_G=128 BILLM_BLOCK=128 SLIM_G=128
config() { reference_config "$1"; }

# Every input a later step would stop on, checked before any work.
[[ -x "$1" && -f "$1" ]] || die "LOWBIT '$1' is not an executable file"
[[ -f "$2/ptb/ptb.train.txt" ]] || die "DATA_DIR '$2' has no ptb/ptb.train.txt (the calibration text)"
[[ -f "$4/tokenizer.json" ]] || die "TOKENIZER_DIR '$4' has no tokenizer.json (a LLaMA-3 tokenizer directory)"
[[ -d "$5" ]] || die "REFS '$5' is not a directory (it holds the PB-LLM, BiLLM, SliM-LLM and QuIP work trees)"
[[ -f "$CONFIG" ]] || die "CONFIG '$CONFIG' does not exist"
[[ "$LAYERS" =~ ^[1-9][0-9]*$ && "$MODEL_LAYERS" =~ ^[1-9][0-9]*$ ]] ||
  die "LAYERS ('$LAYERS') and MODEL_LAYERS ('$MODEL_LAYERS') must be positive integers"
(( LAYERS <= MODEL_LAYERS )) || die "LAYERS $LAYERS exceeds MODEL_LAYERS $MODEL_LAYERS (the layers the model is built with)"
[[ "$DEVICE" == cuda || "$DEVICE" == cpu ]] || die "DEVICE '$DEVICE': cuda or cpu"
LOWBIT=$(realpath "$1") DATA=$(realpath "$2") TOK=$(realpath "$4") REFS=$(realpath "$5") WORK=$3
for c in $CONFIGS; do config "$c" >/dev/null || exit 1; done
"$PYTHON" -c "import torch, transformers, safetensors, numpy" ||
  die "$PYTHON lacks torch, transformers, safetensors or numpy"
if [[ "$DEVICE" == cuda ]]; then
  "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" ||
    die "DEVICE=cuda but torch sees no GPU (DEVICE=cpu runs both sides on the CPU)"
  # lowbit checks the device (parsing --device, then the GPU itself) before it opens the (missing) model.
  if out=$("$LOWBIT" quantize --model /nonexistent-model --method gptq --device cuda --no-save 2>&1) ||
     grep -qi -- "device\|cuda" <<<"$out"; then
    die "$LOWBIT cannot quantize on the GPU: $out"
  fi
fi
if [[ " $CONFIGS " == *" quip-"* ]]; then
  "$PYTHON" -c "import primefac, scipy" ||
    die "QuIP's method.py imports primefac and scipy: install them (pip install --target DIR primefac-*.whl, then PYTHONPATH=DIR)"
fi
for r in PB-LLM/gptq_pb/gptq.py BiLLM/bigptq.py SliM-LLM/slim-llm/slim_gptq.py QuIP/bal.py; do
  [[ -f "$REFS/$r" ]] || die "missing $REFS/$r (REFS holds the official work trees)"
done
mkdir -p "$WORK"
WORK=$(realpath "$WORK")

# The random model: the shapes of CONFIG, MODEL_LAYERS decoder layers, the tokenizer beside it.
M=$WORK/$(basename "$CONFIG" .json)-random-${MODEL_LAYERS}L
if [[ ! -f "$M/config.json" ]]; then
  log "building $M (random weights, $MODEL_LAYERS layers, on $DEVICE)"
  rm -rf "$M.partial"
  "$PYTHON" "$ROOT/scripts/device/make_random_llama.py" "$CONFIG" "$M.partial" --tokenizer "$TOK" \
    --layers "$MODEL_LAYERS" --device "$DEVICE" >&2
  mv "$M.partial" "$M"
fi

CAL=(--calib ptb --nsamples "$NSAMPLES" --seqlen "$SEQLEN" --seed "$SEED" --data-dir "$DATA")
FIRST_WINDOWS=""
for c in $CONFIGS; do
  IFS='|' read -r method desc spec refargs <<<"$(config "$c")"
  D=$WORK/$c
  mkdir -p "$D"
  printf '%s\n' "$method" "$desc" "$spec" "$refargs" > "$D/config.txt"
  if [[ ! -s "$D/lowbit.json" ]]; then
    log "$c: lowbit quantize --method $spec on $DEVICE ($MODEL_LAYERS layers)"
    LOWBIT_PHASE_PROFILE=1 "$LOWBIT" quantize --model "$M" --method "$spec" "${CAL[@]}" --save-calib "$D/windows.safetensors" \
      --device "$DEVICE" --threads "$THREADS" --no-save --json > "$D/lowbit.json.tmp" 2> "$D/lowbit.log" ||
      { tail -20 "$D/lowbit.log" >&2; exit 1; }
    mv "$D/lowbit.json.tmp" "$D/lowbit.json"
  fi
  if [[ -z "$FIRST_WINDOWS" ]]; then
    FIRST_WINDOWS=$D/windows.safetensors
  elif ! cmp -s "$FIRST_WINDOWS" "$D/windows.safetensors"; then
    die "$c: calibration windows differ from $FIRST_WINDOWS"
  fi
  if [[ ! -s "$D/reference/reference_run.json" ]]; then
    log "$c: reference $refargs on $DEVICE (first $LAYERS layers)"
    # shellcheck disable=SC2086  # refargs is a list of words
    "$PYTHON" "$ROOT/scripts/reference_pipeline.py" $refargs --model "$M" --windows "$D/windows.safetensors" \
      --device "$DEVICE" ${REF_DTYPE:+--dtype "$REF_DTYPE"} --threads "$THREADS" --layers "$LAYERS" --no-save \
      -o "$D/reference.partial" > "$D/reference.log" 2>&1 || { tail -20 "$D/reference.log" >&2; exit 1; }
    rm -rf "$D/reference"
    mv "$D/reference.partial" "$D/reference"
  fi
done

# shellcheck disable=SC2086  # CONFIGS is a list of words
"$PYTHON" "$ROOT/bench/gpu/summarize.py" methods "$M/config.json" "$WORK" $CONFIGS | tee "$WORK/table.md"
