#!/usr/bin/env bash
# Run on the GPU machine from the folder scripts/build-gpu-bundle.sh filled:
#   1. driver / device facts (nvidia-smi),
#   2. the CUDA parity tests (they print max errors per op) and the kernels' own tests,
#   3. `segnet bench --device cuda` when the bundle has segnet.
# Results go to $OUT (the device tool's output folder) when set, else ./gpu-results.
# SEGNET_CUDA_SYNC=1 attributes asynchronous kernel faults to the launch that caused them.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
RES=${OUT:-$HERE/gpu-results}
mkdir -p "$RES"
status=0
{ nvidia-smi || true; } 2>&1 | tee "$RES/nvidia-smi.txt"
export SEGNET_CUDA_SYNC=${SEGNET_CUDA_SYNC:-1}
for t in "$HERE"/tests/cuda_parity "$HERE"/tests/kernels; do
  [ -x "$t" ] || continue
  name=$(basename "$t")
  echo "== $name"
  if ! (cd "$HERE" && "$t" --test-threads=1 --nocapture) > "$RES/$name.txt" 2>&1; then status=1; fi
  grep -E "^test |skipped|max \|err\||panicked|result" "$RES/$name.txt" | tail -80
done
if [ -x "$HERE/segnet" ]; then
  echo "== segnet bench --device cuda"
  if ! "$HERE/segnet" bench --device cuda > "$RES/segnet-bench.txt" 2>&1; then status=1; fi
  tail -40 "$RES/segnet-bench.txt"
fi
exit $status
