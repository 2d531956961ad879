#!/usr/bin/env bash
# One machine, several GPUs: starts one lowbit worker per visible GPU (CUDA_VISIBLE_DEVICES, or
# every GPU nvidia-smi lists; with none, WORKERS CPU workers), all on one study in one
# PostgreSQL database, and waits for them. Each worker's log goes to worker-N.log.
#
#   workers-per-gpu.sh SPEC postgresql://user@host/db [extra lowbit study options...]
#   WORKERS=2 workers-per-gpu.sh SPEC URI --threads 1     # CPU only: 2 workers
#
# Ctrl-C stops every worker; items they held are taken over by the next workers once their
# leases expire.
set -euo pipefail
SPEC="${1:?usage: workers-per-gpu.sh SPEC URI [lowbit study options]}"
DB="${2:?usage: workers-per-gpu.sh SPEC URI [lowbit study options]}"
shift 2
LOWBIT="${LOWBIT:-lowbit}"
LOGS="${LOGS:-.}"

gpus=()
if [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
  IFS=, read -r -a visible <<< "$CUDA_VISIBLE_DEVICES"
  for i in "${!visible[@]}"; do gpus+=("cuda:$i"); done
elif command -v nvidia-smi > /dev/null && n=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU'); then
  for ((i = 0; i < n; i++)); do gpus+=("cuda:$i"); done
fi
if [[ ${#gpus[@]} -eq 0 ]]; then
  for ((i = 0; i < ${WORKERS:-1}; i++)); do gpus+=("cpu"); done
fi

pids=()
trap 'kill "${pids[@]}" 2> /dev/null' INT TERM
for i in "${!gpus[@]}"; do
  "$LOWBIT" study "$SPEC" --db "$DB" --worker --device "${gpus[$i]}" "$@" > "$LOGS/worker-$i.log" 2>&1 &
  pids+=($!)
  echo "worker $i on ${gpus[$i]}: pid ${pids[-1]}, log $LOGS/worker-$i.log"
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=1; done
"$LOWBIT" study --status --db "$DB"
exit $rc
