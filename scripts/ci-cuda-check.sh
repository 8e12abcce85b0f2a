#!/usr/bin/env bash
# CI check of the CUDA backend on a machine without a GPU (2 cores, a few minutes):
#   1. pinned nvcc wheels (requirements-cuda.txt) into a venv outside the sources (ignored folder),
#   2. the link-time libcuda stub (scripts/make-cuda-stub.sh),
#   3. the engine and every test binary built with `--features cuda` (`--no-run`: a binary that
#      calls the driver cannot start without libcuda.so.1, so nothing here runs one), plus the
#      kernels crate's own unit tests, which never call the driver (PTX embedded, buckets),
#   4. ptxas -arch=sm_90 on every PTX the build embedded, so GPU code cannot rot unnoticed,
#   5. a summary.
# Environment: CUDA_VENV (default .venv-cuda), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
VENV=${CUDA_VENV:-$ROOT/.venv-cuda}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
export CARGO_TERM_COLOR=never

step() { echo "== [$(( $(date +%s) - START ))s] $*"; }

step "nvcc wheels (pinned) in $VENV"
if [ ! -x "$VENV/bin/python3" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-cuda.txt
CU13=$("$VENV/bin/python3" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')
export NVCC="$CU13/bin/nvcc"
PTXAS="$CU13/bin/ptxas"
"$NVCC" --version | tail -1

step "libcuda link stub"
export CUDA_STUB_DIR=${CUDA_STUB_DIR:-$CARGO_TARGET_DIR/cuda-stub}
bash scripts/make-cuda-stub.sh
export CUDA_LIBRARY_PATH=$CUDA_STUB_DIR   # the directory above lib64 (cust_raw's rule)

# One build in the test profile covers the engine, the kernels and every test binary with the
# feature (a separate `cargo build` would compile the dependencies a second time, in the dev profile).
step "cargo test -p segnet-tests -p kernels -p segnet --features cuda --no-run (build only; includes the segnet binary with --device cuda)"
cargo test -p segnet-tests -p kernels -p segnet --features segnet-tests/cuda,kernels/cuda,segnet/cuda --no-run

step "cargo test -p kernels --features cuda --lib (host-only tests: no driver call)"
cargo test -p kernels --features cuda --lib

step "the CUDA parity suite against the stub driver: every test must report why it skipped"
# The stub (every call returns CUDA_ERROR_STUB_LIBRARY) is put on LD_LIBRARY_PATH for this one run
# only, under its SONAME, so the test binary starts; each test must then print `skipped: <reason>`
# and pass. A test that neither skips nor fails would mean a GPU path ran nowhere.
PARITY=$(ls -t "$CARGO_TARGET_DIR"/debug/deps/cuda_parity-* 2>/dev/null | grep -v '\.d$' | head -1)
RUNLIB=$CARGO_TARGET_DIR/cuda-stub-run
mkdir -p "$RUNLIB"
ln -sf "$CUDA_STUB_DIR/lib64/libcuda.so" "$RUNLIB/libcuda.so.1"
ntests=$(LD_LIBRARY_PATH=$RUNLIB "$PARITY" --list 2>/dev/null | grep -c ': test$')
LD_LIBRARY_PATH=$RUNLIB "$PARITY" --test-threads 1 --nocapture > "$RUNLIB/parity.log" 2>&1 || { cat "$RUNLIB/parity.log"; echo "cuda_parity failed on the stub"; exit 1; }
# With --nocapture a test's output follows its `test NAME ... ` line.
nskip=$(grep -c '^test .* \.\.\. skipped: ' "$RUNLIB/parity.log" || true)
echo "cuda_parity: $ntests tests, $nskip skipped; reasons:"
grep -o '\.\.\. skipped: .*' "$RUNLIB/parity.log" | cut -c5- | sort | uniq -c
grep '^test result' "$RUNLIB/parity.log"
if [ "$ntests" -eq 0 ] || [ "$nskip" -ne "$ntests" ]; then
  echo "expected every one of the $ntests tests to print 'skipped: <reason>' without a GPU"; exit 1
fi

step "segnet --device cuda without a GPU: a clear error, no panic"
SEGNET_BIN=$(ls -t "$CARGO_TARGET_DIR"/debug/segnet 2>/dev/null | head -1)
if out=$(LD_LIBRARY_PATH=$RUNLIB "$SEGNET_BIN" train --device cuda --steps 1 --quiet --out "$RUNLIB/run" 2>&1); then
  echo "$out"; echo "segnet train --device cuda succeeded on the stub driver"; exit 1
fi
echo "$out" | tail -2
if echo "$out" | grep -q panicked; then echo "segnet panicked"; exit 1; fi

step "ptxas -arch=sm_90 on every embedded PTX"
# Keep only the newest build dir's PTX (stale OUT_DIRs of older builds may linger).
NEWEST=$(ls -td "$CARGO_TARGET_DIR"/debug/build/kernels-*/out 2>/dev/null | while read -r d; do [ -n "$(ls "$d"/*.ptx 2>/dev/null)" ] && echo "$d" && break; done)
mapfile -t PTX < <(ls "$NEWEST"/*.ptx | sort)
expected=$(ls kernels/cuda/*.cu | wc -l)
fail=0
printf '%-16s %-8s %-8s %8s %s\n' module isa target kernels "ptxas sm_90"
for f in "${PTX[@]}"; do
  name=$(basename "$f" .ptx)
  isa=$(awk '/^\.version/{print $2; exit}' "$f")
  tgt=$(awk '/^\.target/{print $2; exit}' "$f")
  n=$(grep -c '^\.visible \.entry' "$f" || true)
  if out=$("$PTXAS" -arch=sm_90 -O3 "$f" -o /dev/null 2>&1); then
    res=ok
  else
    res=FAIL; fail=1; echo "$out"
  fi
  printf '%-16s %-8s %-8s %8s %s\n' "$name" "$isa" "$tgt" "$n" "$res"
done
if [ "${#PTX[@]}" -ne "$expected" ]; then
  echo "expected $expected PTX files (one per kernels/cuda/*.cu), found ${#PTX[@]} in $NEWEST"; fail=1
fi

step "summary"
echo "nvcc: $NVCC"
echo "PTX modules checked: ${#PTX[@]} (kernels/cuda/*.cu: $expected), ptxas sm_90: $([ $fail = 0 ] && echo all ok || echo FAILED)"
echo "total: $(( $(date +%s) - START ))s"
exit $fail
