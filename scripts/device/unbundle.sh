# Unpacks on the GPU machine what scripts/device/bundle.sh packed, into PREFIX; source it:
#
#   source scripts/device/unbundle.sh BUNDLE [PREFIX]
#
# Each run unpacks what BUNDLE holds now and was not unpacked before (so the parts of a large file
# may arrive in separate copies of BUNDLE: each is kept in PREFIX/parts until all are there, then
# joined and checked against SHA256SUMS). Exports L (lowbit), TC (test_cuda), DATA, MODELS, TOK
# (the LLaMA-3 tokenizer folder), LD_LIBRARY_PATH (the bundle's libraries, then CUDA's found on the
# machine) and the test suite's LOWBIT_TEST_DATA / LOWBIT_TEST_MODELS; whole files are in
# PREFIX/files. Prints what it did.
BUNDLE=${1:?usage: source scripts/device/unbundle.sh BUNDLE [PREFIX]}
PREFIX=${2:-/tmp/lowbit-bundle}
mkdir -p "$PREFIX/parts" "$PREFIX/files"
for a in bin data; do
  f="$BUNDLE/$a/$a.txz"
  [[ -f "$f" ]] || continue
  sum=$(md5sum "$f" | cut -c1-16)
  if [[ ! -f "$PREFIX/.$a.$sum" ]]; then
    rm -rf "${PREFIX:?}/$a" && mkdir -p "$PREFIX/$a" && xz -dc "$f" | tar xf - -C "$PREFIX/$a" && touch "$PREFIX/.$a.$sum" &&
      echo "unbundle: $a unpacked"
  fi
done
[[ -f "$BUNDLE/bin/SHA256SUMS" ]] && cp "$BUNDLE/bin/SHA256SUMS" "$PREFIX/parts/"
for d in "$BUNDLE"/*.p[0-9][0-9]; do
  [[ -d "$d" ]] && cp -n "$d"/* "$PREFIX/parts/" 2>/dev/null
done
if [[ -f "$PREFIX/parts/SHA256SUMS" ]]; then
  while read -r sum name; do
    [[ -f "$PREFIX/files/$name" ]] && continue
    parts=("$PREFIX/parts/$name".p*)
    [[ -f "${parts[0]}" ]] || continue
    cat "${parts[@]}" > "$PREFIX/files/$name.tmp"
    if [[ "$(sha256sum "$PREFIX/files/$name.tmp" | cut -d' ' -f1)" == "$sum" ]]; then
      mv "$PREFIX/files/$name.tmp" "$PREFIX/files/$name" && echo "unbundle: $name joined from ${#parts[@]} parts"
    else
      rm -f "$PREFIX/files/$name.tmp"; echo "unbundle: $name: ${#parts[@]} parts so far"
    fi
  done < "$PREFIX/parts/SHA256SUMS"
fi
CUDA_LIBS=""
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do [[ -d $d ]] && CUDA_LIBS="$CUDA_LIBS:$d"; done
for d in $(python3 -c "import nvidia, os; p = nvidia.__path__[0]; print(' '.join(os.path.join(p, x, 'lib') for x in os.listdir(p)))" 2>/dev/null); do
  [[ -d $d ]] && CUDA_LIBS="$CUDA_LIBS:$d"
done
export LD_LIBRARY_PATH="$PREFIX/bin/lib$CUDA_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export L="$PREFIX/bin/bin/lowbit" TC="$PREFIX/bin/bin/test_cuda"
export DATA="$PREFIX/data/data" MODELS="$PREFIX/data/models" TOK="$PREFIX/data/models/tokenizers/llama3"
export LOWBIT_TEST_DATA="$DATA" LOWBIT_TEST_MODELS="$MODELS" LOWBIT_DATA="$DATA" LOWBIT_MODELS="$MODELS"
if [[ -x "$L" ]]; then
  missing=$(ldd "$L" | grep "not found")
  [[ -z "$missing" ]] && echo "unbundle: lowbit runs ($L)" || echo "unbundle: lowbit lacks: $missing"
fi
