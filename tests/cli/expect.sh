# Assertions of the CLI tests (sourced): each records a pass or prints FAIL. The sourcing script
# sets T (a scratch directory) first and ends with `report`.
pass=0
fail=0
ok() { pass=$((pass + 1)); }
bad() { fail=$((fail + 1)); echo "FAIL: $*"; }

# expect_ok NAME REGEX CMD...: exit 0 and stdout+stderr matching REGEX
expect_ok() {
  local name="$1" re="$2"; shift 2
  local out
  if out=$("$@" 2>&1) && grep -Eq -- "$re" <<<"$out"; then ok; else bad "$name: $out"; fi
}
# expect_err NAME REGEX CMD...: non-zero exit, stderr matching REGEX, nothing on stdout
expect_err() {
  local name="$1" re="$2"; shift 2
  local out err rc
  out=$("$@" 2>"$T/err"); rc=$?
  err=$(cat "$T/err")
  if [[ $rc -ne 0 ]] && grep -Eq -- "$re" <<<"$err" && [[ -z "$out" ]]; then ok; else bad "$name (rc=$rc): $err / $out"; fi
}

# The counts; fails the script when anything failed.
report() {
  echo "$pass passed, $fail failed"
  [[ $fail -eq 0 ]]
}
