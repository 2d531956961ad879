#!/usr/bin/env bash
# `lowbit study` and `lowbit report` end to end on stories260K: a tiny study, its reports in every
# format, the store semantics (--resume), and bad specs, which must fail before any work (no
# store created) with a message naming the spec's line.
set -u
B="$LOWBIT_BIN"
M="$LOWBIT_TEST_MODELS"
D="$LOWBIT_TEST_DATA"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
source "$(dirname "${BASH_SOURCE[0]}")/expect.sh"

if [[ ! -f "$M/stories260K/stories260K.bin" || ! -f "$D/piqa/valid.jsonl" ]]; then
  echo "skipped: stories260K or the data are not available"
  exit 0
fi

export LOWBIT_MODELS="$M" LOWBIT_DATA="$D"
# write_spec FILE METHODS [EVAL]: a tiny study on stories260K
write_spec() {
  local eval="${3:-ppl = [\"ptb\"]
seqlen = 128
limit = 2
tasks = [\"piqa\", \"winogrande\"]
task_limit = 8}"
  cat > "$1" <<EOF
[study]
name = "cli"
db = "cli.sqlite"
threads = 2

[[model]]
name = "stories260K"
path = "\${LOWBIT_MODELS}/stories260K/stories260K.bin"

[calibration]
set = "ptb"
nsamples = 4
seqlen = 128

[eval]
$eval

$2
EOF
}

METHODS='[[method]]
name = "fp16"

[[method]]
name = "rtn"
w = [4, 2]
g = 32

[[method]]
name = "gptq"
w = 3
g = 32'

mkdir -p "$T/s"
write_spec "$T/s/cli.toml" "$METHODS"
expect_ok "dry run" "^12 of 12 evaluations to do$" "$B" study "$T/s/cli.toml" --dry-run
[[ ! -e "$T/s/cli.sqlite" ]] && ok || bad "--dry-run created the store"
expect_ok "study" "12 evaluations run, 16 results written" "$B" study "$T/s/cli.toml"
expect_ok "study progress" "\[4/4\] stories260K gptq:w=3,g=32 \(calibration ptb:n=4,seqlen=128,seed=0,bos=auto\)" \
  "$B" study "$T/s/cli.toml" --db "$T/s/again.sqlite"
expect_err "study exists" "already holds 16 results of study 'cli'; pass --resume" "$B" study "$T/s/cli.toml"
expect_ok "study resume" "0 evaluations run, 0 results written.*holds 16 results" "$B" study "$T/s/cli.toml" --resume
expect_ok "report md" "^\| RTN +\| +4 \| +16 \| +32 \|" "$B" report "$T/s/cli.sqlite"
expect_ok "report md baseline" "^\| stories260K +\| +16 \| +16 \| +- \|" "$B" report "$T/s/cli.sqlite" --format md
expect_ok "report csv" "^stories260K,GPTQ,\"gptq:w=3,g=32\",\"ptb:n=4,seqlen=128,seed=0,bos=auto\",3,16,32," \
  "$B" report "$T/s/cli.sqlite" --format csv
expect_ok "report latex" "\\\\begin\{tabular\}" "$B" report "$T/s/cli.sqlite" --format latex
expect_ok "report rows" "^stories260K\|fp16\|none	ptb:seqlen=128,limit=2,bos=auto	ppl	" "$B" report "$T/s/cli.sqlite" --format rows
[[ $("$B" report "$T/s/cli.sqlite" --format rows | wc -l) -eq 16 ]] && ok || bad "rows: expected 16 results"
[[ "$("$B" report "$T/s/cli.sqlite" --format rows)" == "$("$B" report "$T/s/again.sqlite" --format rows)" ]] && ok ||
  bad "two runs of the same study differ"
expect_ok "report html" "wrote .*report.html \(16 results, 4 cells\)" "$B" report "$T/s/cli.sqlite" --format html -o "$T/s/report.html"
grep -q "<th>PIQA</th>" "$T/s/report.html" && ok || bad "report.html has no PIQA column"
if command -v gnuplot >/dev/null; then
  grep -q "data:image/svg+xml;base64," "$T/s/report.html" && ok || bad "report.html has no plots"
  expect_ok "report plots" "wrote" "$B" report "$T/s/cli.sqlite" -o "$T/s/report.md" --plots "$T/s/plots"
  grep -q "!\[stories260K: PTB perplexity vs weight bits\](plots/stories260K-ppl-PTB.svg)" "$T/s/report.md" && ok ||
    bad "report.md does not link its plots: $(tail -5 "$T/s/report.md")"
fi
LOWBIT_GNUPLOT=/nonexistent expect_ok "report without gnuplot" "no plots: gnuplot was not found" \
  "$B" report "$T/s/cli.sqlite" --format html -o "$T/s/noplots.html"
grep -q "<th>PIQA</th>" "$T/s/noplots.html" && ok || bad "without gnuplot the report lost its tables"
expect_err "report missing" "results store '.*nothing.sqlite' does not exist" "$B" report "$T/s/nothing.sqlite"
printf 'not a database at all, just some text that is long enough..........................' > "$T/s/junk.sqlite"
expect_err "report junk" "junk.sqlite" "$B" report "$T/s/junk.sqlite"

# hellaswag_derived (llama.cpp's derived HellaSwag text): accepted by the spec, and reported in
# HellaSwag's column position under a header that names it as derived.
if [[ -f "$D/hellaswag/hellaswag_val_full.txt" ]]; then
  mkdir -p "$T/h"
  write_spec "$T/h/cli.toml" '[[method]]
name = "fp16"' 'tasks = ["winogrande", "hellaswag_derived", "piqa"]
task_limit = 4'
  expect_ok "study hellaswag_derived" "3 evaluations run" "$B" study "$T/h/cli.toml"
  expect_ok "report hellaswag_derived" "\| PIQA \| HellaSwag \(derived text\) \| Wino \| Avg\. \|" "$B" report "$T/h/cli.sqlite"
fi

# Bad specs: non-zero exit, the spec's file:line:column, and no store.
mkdir -p "$T/b"
write_spec "$T/b/s.toml" '[[method]]
name = "rtx"'
expect_err "unknown method" "s.toml:23:8: unknown method 'rtx' \(known: fp16, rtn, gptq, awq, slim, quip, dbllm, pbllm, billm, smoothquant, nf4, icq\)" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" '[[method]]
name = "rtn"
w = [4, 9]'
expect_err "bits out of range" "s.toml:24:9: rtn: option w=9 is out of range \[2, 8\]" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" "$METHODS" 'ppl = ["ptb"]
tasks = ["piqa", "hellaswog"]'
expect_err "unknown task" "s.toml:17:18: unknown task 'hellaswog'" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" "$METHODS" 'ppl = ["wikitext3"]'
expect_err "unknown dataset" "s.toml:16:8: unknown dataset 'wikitext3'" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" "$METHODS"
sed -i 's|stories260K/stories260K.bin|stories999K/stories999K.bin|' "$T/b/s.toml"
expect_err "missing model" "s.toml:8:8: model 'stories260K' not found: .*stories999K.bin does not exist" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" "$METHODS"
mkdir -p "$T/nodata"
sed -i "s|^threads = 2|threads = 2\ndata_dir = \"$T/nodata\"|" "$T/b/s.toml"
expect_err "missing data" "s.toml:17:8: dataset 'ptb' needs ptb/ptb.valid.txt" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" "$METHODS"
sed -i 's|^seqlen = 128$|seqlen = 4096|' "$T/b/s.toml"
expect_err "seqlen too long" "exceeds model 'stories260K''s max_position_embeddings \(512\)" "$B" study "$T/b/s.toml"
write_spec "$T/b/s.toml" '[[method]]
name = "awq"
w = 4
g = 32'
expect_err "awq group" "s.toml:22:1: awq:w=4,g=32 on model 'stories260K': awq: group size 32 does not divide the 172 input features of down_proj" "$B" study "$T/b/s.toml"
printf '[study]\nname = "x"\nnmae = 3\n' > "$T/b/s.toml"
expect_err "unknown key" "s.toml:3:1: unknown key 'nmae' in \[study\]" "$B" study "$T/b/s.toml"
printf '[study]\nname = "x\n' > "$T/b/s.toml"
expect_err "toml syntax" "s.toml:2:" "$B" study "$T/b/s.toml"
expect_err "no spec" "cannot read study spec" "$B" study "$T/b/none.toml"
[[ -z "$(ls "$T/b" | grep -v '^s.toml$')" ]] && ok || bad "a bad spec left files behind: $(ls "$T/b")"

report
