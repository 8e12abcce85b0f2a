#!/usr/bin/env bash
# Build everything the GPU machine runs, with `--features cuda`, into one folder for the device
# tool: the test binaries (GPU parity tests and the rest of segnet-tests), the `segnet` binary when
# it builds, and scripts/run-gpu-bundle.sh. The binaries need only libcuda.so.1 (the driver) and
# glibc >= 2.34 there; the stub used to link them here is NOT copied.
#
# Usage: scripts/build-gpu-bundle.sh [OUT_DIR]   (default target/gpu-bundle, ignored by git)
# Then, with the device tool: run(command="bash target/gpu-bundle/run-gpu-bundle.sh",
#   carry=["target/gpu-bundle"]); results come back under $OUT.
# Environment: CUDA_VENV (default .venv-cuda), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
OUT=${1:-$ROOT/target/gpu-bundle}
VENV=${CUDA_VENV:-$ROOT/.venv-cuda}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}

if [ ! -x "$VENV/bin/python3" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r requirements-cuda.txt
export NVCC="$("$VENV/bin/python3" -c 'import nvidia.cu13 as m; print(list(m.__path__)[0])')/bin/nvcc"
export CUDA_STUB_DIR=${CUDA_STUB_DIR:-$CARGO_TARGET_DIR/cuda-stub}
bash scripts/make-cuda-stub.sh
export CUDA_LIBRARY_PATH=$CUDA_STUB_DIR

rm -rf "$OUT"
mkdir -p "$OUT/tests"
# Test binaries: ask cargo for their paths (JSON messages) instead of guessing hashes.
cargo test -p segnet-tests -p kernels --features segnet-tests/cuda,kernels/cuda --no-run --message-format=json \
  | python3 -c '
import json, sys
for line in sys.stdin:
    try: m = json.loads(line)
    except ValueError: continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] != ["custom-build"]:
        print(m["target"]["name"] + " " + m["executable"])
' | while read -r name exe; do cp "$exe" "$OUT/tests/$name"; done

if cargo build --release -p segnet --features cuda; then
  cp "$CARGO_TARGET_DIR/release/segnet" "$OUT/segnet"
else
  echo "warning: segnet --features cuda did not build; bundle has the tests only" >&2
fi
cp scripts/run-gpu-bundle.sh "$OUT/"
# Fixture files the tests read at run time (include!d ones are compiled in).
if [ -d tests/fixtures ]; then cp -r tests/fixtures "$OUT/fixtures"; fi
du -sh "$OUT"
ls -la "$OUT" "$OUT/tests"
