#!/usr/bin/env bash
# lowbit vlm-eval on the tiny random-weight LLaVA-Next (tests/fixtures/llava_next) with the test
# tokenizer (tests/fixtures/vlm/tokenizer.json): sample parquet files in the lmms-lab datasets'
# layout (scripts/make_vlm_sample_parquet.py) converted by scripts/vlm_parquet_to_jsonl.py, every
# benchmark run to its metrics, results stored and reported as Table 8, and refusals of bad input (unknown task, missing field, corrupt
# image, no tokenizer) that name the item and write nothing. Skipped (77) without pyarrow.
set -u
B="$LOWBIT_BIN"
F="$LOWBIT_TEST_FIXTURES"
S="$(dirname "${BASH_SOURCE[0]}")/../../scripts"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"
python3 -c "import pyarrow" 2>/dev/null || { echo "pyarrow not installed: skipped"; exit 77; }

M="$T/model"
mkdir -p "$M"
cp "$F/llava_next/config.json" "$F/llava_next/preprocessor_config.json" "$F/vlm/tokenizer.json" "$M/"
zstd -dq "$F/llava_next/model.safetensors.zst" -o "$M/model.safetensors"

python3 "$S/make_vlm_sample_parquet.py" --images "$F/vision" --out "$T/pq" >/dev/null || bad "sample parquet"
D="$T/data"
declare -A N=([ai2d]=3 [chartqa]=2 [docvqa]=2 [mmbench_en]=3 [mme]=4)
declare -A KEYS=([ai2d]="exact_match" [chartqa]="relaxed_overall relaxed_human_split relaxed_augmented_split"
  [docvqa]="anls" [mmbench_en]="gpt_eval_score" [mme]="mme_perception_score mme_cognition_score")
for t in ai2d chartqa docvqa mmbench_en mme; do
  expect_ok "convert $t" "$t.jsonl: ${N[$t]} items" python3 "$S/vlm_parquet_to_jsonl.py" --task "$t" --out "$D" "$T/pq/$t.parquet"
  out=$("$B" vlm-eval --model "$M" --task "$t" --data "$D" --max-new-tokens 4 --threads 1 --json \
    --predictions "$T/$t.pred.jsonl" 2>"$T/log")
  if [[ $? -eq 0 ]]; then ok; else bad "vlm-eval $t: $(cat "$T/log")"; fi
  grep -q "\"items\": ${N[$t]}," <<<"$out" && ok || bad "$t item count: $out"
  grep -Eq "\"weights_sha256\": \"[0-9a-f]{64}\"" <<<"$out" && grep -q "\"path\": \"$D/$t.jsonl\"" <<<"$out" && ok ||
    bad "$t identity: $out"
  for k in ${KEYS[$t]}; do
    grep -Eq "\"$k\": [0-9.e+-]+" <<<"$out" && ok || bad "$t metric $k: $out"
  done
  [[ $(wc -l <"$T/$t.pred.jsonl") -eq ${N[$t]} ]] && ok || bad "$t predictions file"
  [[ $(grep -c "^\[[0-9]*/${N[$t]}\] " "$T/log") -eq ${N[$t]} ]] && ok || bad "$t per-item lines: $(cat "$T/log")"
done
expect_ok "text output" "mme_cognition_score = [0-9]" "$B" vlm-eval --model "$M" --task mme --data "$D/mme.jsonl" \
  --max-new-tokens 2 --threads 1
expect_ok "limit" "ai2d \(lmms-eval ai2d, test split, 1 items, max_new_tokens 2, conversation llava" "$B" vlm-eval --model "$M" --task ai2d --data "$D" \
  --limit 1 --max-new-tokens 2 --threads 1
expect_ok "llava_hf conversation and identity" "\"key\": \"docvqa:conversation=llava_hf,max_new_tokens=2,limit=0\"" "$B" vlm-eval --model "$M" --task docvqa --data "$D" \
  --max-new-tokens 2 --threads 1 --conversation llava_hf --json

# Results into a study store, laid out as Table 8 by lowbit report.
for t in ai2d mme; do
  expect_ok "store $t" "written to $T/vlm.sqlite" "$B" vlm-eval --model "$M" --task "$t" --data "$D" --max-new-tokens 2 \
    --threads 1 --store "$T/vlm.sqlite" --name llava-tiny
done
expect_err "stored twice" "already holds ai2d:conversation=llava,max_new_tokens=2,limit=0 of cell llava-tiny\|fp16\|none" \
  "$B" vlm-eval --model "$M" --task ai2d --data "$D" --max-new-tokens 2 --threads 1 --store "$T/vlm.sqlite" --name llava-tiny
expect_ok "Table 8 layout" "\| AI2D +\| MME Cognition +\| MME Perception +\|" "$B" report "$T/vlm.sqlite"

expect_err "unknown task" "unknown vision-language task 'mmbench_cn' \(known: ai2d, chartqa, docvqa, mmbench_en, mme\)" \
  "$B" vlm-eval --model "$M" --task mmbench_cn --data "$D"
sed '2s/"answer": "B", //' "$D/mmbench_en.jsonl" >"$D/broken.jsonl"
expect_err "missing field" "broken.jsonl:2: mmbench_en item has no field 'answer'" \
  "$B" vlm-eval --model "$M" --task mmbench_en --data "$D/broken.jsonl" --predictions "$T/bad.jsonl"
cp -r "$D" "$T/cut"
head -c 100 "$D/chartqa_images/000001.jpg" >"$T/cut/chartqa_images/000001.jpg"
expect_err "corrupt image" "chartqa.jsonl:2: image '.*000001.jpg': corrupt JPEG" \
  "$B" vlm-eval --model "$M" --task chartqa --data "$T/cut" --predictions "$T/bad.jsonl" --threads 1
mkdir -p "$T/notok" && cp "$M/config.json" "$M/preprocessor_config.json" "$M/model.safetensors" "$T/notok/"
expect_err "no tokenizer" "has no tokenizer" "$B" vlm-eval --model "$T/notok" --task mme --data "$D"
if [[ ! -e "$T/bad.jsonl" ]]; then ok; else bad "a refused run wrote its predictions"; fi
report
