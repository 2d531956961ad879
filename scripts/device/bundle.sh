#!/usr/bin/env bash
# Packs what a GPU machine needs to run lowbit's GPU tests and benchmarks when it has neither this
# machine's shared libraries nor a network: the binaries with the non-system shared libraries they
# link, the evaluation data and small models, and larger files (models) split into parts that can
# be copied one at a time. scripts/device/unbundle.sh unpacks them there.
#
#   scripts/device/bundle.sh OUT [FILE...]
#
#   OUT    the bundle folder (made anew): OUT/bin/bin.txz, OUT/data/data.txz, and for each FILE
#          OUT/<name>.pNN/<name>.pNN (one folder per part, at most PART_MB each)
#   FILE   files to carry whole (a GGUF model, a tar of a model directory, ...)
#
# Variables (default): BUILD build-dev (a -DLOWBIT_CUDA=ON -DLOWBIT_NATIVE=OFF build), BINARIES
# "tools/lowbit/lowbit tests/test_cuda" (relative to BUILD; those missing are skipped), SHARED
# ../shared (DATA_SETS of SHARED/data and MODEL_DIRS of SHARED/models go into data.txz), DATA_SETS
# "ptb wikitext2 alpaca", MODEL_DIRS "stories260K tokenizers/llama3 configs", PART_MB 30.
# CUDA's own libraries (cudart, cuBLAS, cuSOLVER, NCCL) and glibc's are left out: the GPU machine's
# CUDA installation provides them (unbundle.sh puts its library folders on LD_LIBRARY_PATH).
set -euo pipefail
if [[ $# -lt 1 ]]; then sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 2; fi
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT=$1; shift
BUILD=${BUILD:-$ROOT/build-dev} SHARED=${SHARED:-$ROOT/../shared} PART_MB=${PART_MB:-30}
BINARIES=${BINARIES:-"tools/lowbit/lowbit tests/test_cuda"}
DATA_SETS=${DATA_SETS:-"ptb wikitext2 alpaca"} MODEL_DIRS=${MODEL_DIRS:-"stories260K tokenizers/llama3 configs"}
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/data"
STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
mkdir -p "$STAGE/bin" "$STAGE/lib"
for b in $BINARIES; do
  if [[ -x "$BUILD/$b" ]]; then cp "$BUILD/$b" "$STAGE/bin/"; else echo "bundle: $BUILD/$b not built, skipped" >&2; fi
done
[[ -n "$(ls "$STAGE/bin")" ]] || { echo "bundle: no binary found in $BUILD" >&2; exit 1; }
strip "$STAGE"/bin/* 2>/dev/null || true
for b in "$STAGE"/bin/*; do ldd "$b"; done | awk '/=>/ {print $3}' | sort -u | while read -r l; do
  case "$(basename "$l")" in
    libc.so*|libm.so*|libdl.so*|libpthread.so*|librt.so*|ld-linux*|libcuda.so*|libcudart*|libcublas*|libcusolver*|\
    libcusparse*|libnccl*|libnvJitLink*|libcurand*) ;;
    *) cp -L "$l" "$STAGE/lib/" ;;
  esac
done
tar cf - -C "$STAGE" bin lib | xz -9 -T0 > "$OUT/bin/bin.txz"
items=()
for d in $DATA_SETS; do [[ -d "$SHARED/data/$d" ]] && items+=("data/$d"); done
for m in $MODEL_DIRS; do [[ -d "$SHARED/models/$m" ]] && items+=("models/$m"); done
tar cf - -C "$SHARED" "${items[@]}" | xz -9 -T0 > "$OUT/data/data.txz"
for f in "$@"; do
  name=$(basename "$f")
  split -d -a 2 -b "${PART_MB}000000" "$f" "$STAGE/$name.p"
  for p in "$STAGE/$name".p*; do
    mkdir -p "$OUT/$(basename "$p")" && mv "$p" "$OUT/$(basename "$p")/"
  done
  sha256sum "$f" | awk -v n="$name" '{print $1 "  " n}' >> "$OUT/bin/SHA256SUMS"
done
du -b "$OUT"/*/* | sort -k2 | awk '{printf "%10.1f MB  %s\n", $1 / 1e6, $2}'
