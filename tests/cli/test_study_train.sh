#!/usr/bin/env bash
# A study's trained cells end to end on stories260K: QLoRA and IR-QLoRA ([[finetune]]) and DB-LLM
# ([[distill]]) cells trained a few steps, stored and reported with the paper's labels; each
# cell's perplexity equal, to the last bit, to what the standalone commands give with the same
# options (lowbit finetune + lowbit quantize + lowbit ppl --adapter; lowbit distill + lowbit ppl);
# a resumed study that has everything stored trains nothing; a missing data file is refused
# before any work.
set -u
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

S="$M/stories260K/stories260K.bin"
A="$D/alpaca/alpaca_5000.json"
if [[ ! -f "$S" || ! -f "$A" || ! -f "$D/ptb/ptb.train.txt" ]]; then
  echo "skipped: stories260K, Alpaca or PTB are not available"
  exit 0
fi

# write_spec FILE DATA: QLoRA and IR-QLoRA at r 4, and DB-LLM at g 4, a few steps each.
write_spec() {
  cat > "$1" <<EOF
[study]
name = "train"
db = "train.sqlite"
threads = 1
data_dir = "$D"

[[model]]
name = "stories260K"
path = "$S"

[calibration]
set = "ptb"
nsamples = 4
seqlen = 64

[eval]
ppl = ["ptb"]
seqlen = 64
limit = 2

[[method]]
name = "nf4"
dq = 1

[[finetune]]
method = ["qlora", "irqlora"]
data = "$2"
r = 4
alpha = 8
steps = 3
batch = 2
grad_accum = 2
limit = 120

[[distill]]
g = 4
steps = 2
grad_accum = 2
lr = 1e-3
EOF
}

write_spec "$T/bad.toml" "$T/no-such-alpaca.json"
expect_err "missing data" "bad.toml:27:8: fine-tuning data '$T/no-such-alpaca.json' does not exist" \
  "$B" study "$T/bad.toml"
if [[ ! -e "$T/train.sqlite" ]]; then ok; else bad "a refused spec created the store"; fi

write_spec "$T/train.toml" "$A"
expect_ok "study" "4 evaluations run, 4 results written" "$B" study "$T/train.toml"
rows=$("$B" report "$T/train.sqlite" --format rows 2>&1)
md=$("$B" report "$T/train.sqlite" 2>&1)
for label in "QLoRA \(alpha=8, r=4\) +\| +4 \| +16 \| +64" "IR-QLoRA \(alpha=8, r=4\) +\| +4 \| +16 \| +64" \
             "DB-LLM +\| +2 \| +16 \| +4" "NormalFloat \(dq=1\)"; do
  if grep -Eq "^\| $label" <<<"$md"; then ok; else bad "no row '$label' in the report: $md"; fi
done
# The study's value of the cell whose key starts with PREFIX.
study_ppl() { awk -F'\t' -v p="$1" 'index($1, p) == 1 && $3 == "ppl" { print $4 }' <<<"$rows"; }
# Same double (awk reads both texts with strtod).
same() { awk -v a="$2" -v b="$3" 'BEGIN { exit !(a != "" && b != "" && a + 0 == b + 0) }' && ok || bad "$1: study $2, command $3"; }
cmd_ppl() { "$B" ppl --model "$1" "${@:2}" --dataset ptb --data-dir "$D" --seqlen 64 --limit 2 --threads 1 --json 2>/dev/null |
            grep -Eo '"ppl": *[0-9.e+-]+' | head -1 | grep -Eo '[0-9.e+-]+$'; }

F=(--model "$S" --data "$A" --steps 3 --batch 2 --grad-accum 2 --limit 120 --threads 1)
"$B" finetune "${F[@]}" --method "qlora:r=4,alpha=8" -o "$T/qlora" >/dev/null 2>&1
"$B" finetune "${F[@]}" --method "irqlora:r=4,alpha=8" -o "$T/irqlora" >/dev/null 2>&1
"$B" quantize --model "$S" --method nf4:dq=1 -o "$T/nf4" --threads 1 >/dev/null 2>&1
"$B" quantize --model "$S" --method icq:tau_range=0.1,tau_n=100,dq=1 -o "$T/icq" --threads 1 >/dev/null 2>&1
same "qlora" "$(study_ppl 'stories260K|qlora:')" "$(cmd_ppl "$T/nf4" --adapter "$T/qlora")"
same "irqlora" "$(study_ppl 'stories260K|irqlora:')" "$(cmd_ppl "$T/icq" --adapter "$T/irqlora")"
"$B" distill --model "$S" --method dbllm:g=4 --calib ptb --data-dir "$D" --nsamples 4 --seqlen 64 --steps 2 \
  --grad-accum 2 --lr 1e-3 --threads 1 -o "$T/dbllm" >/dev/null 2>&1
same "dbllm" "$(study_ppl 'stories260K|dbllm:')" "$(cmd_ppl "$T/dbllm")"
same "nf4" "$(study_ppl 'stories260K|nf4:')" "$(cmd_ppl "$T/nf4")"

# Resumed with everything stored: nothing is trained or evaluated again.
out=$("$B" study "$T/train.toml" --resume 2>&1)
if grep -q "0 evaluations run" <<<"$out" && ! grep -q "trained" <<<"$out"; then ok; else
  bad "a resumed study retrained: $out"; fi
report
