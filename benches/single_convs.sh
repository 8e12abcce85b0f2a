#!/bin/sh
# The single-conv targets: 3x3 256 -> 256 on 2 x 33 x 33 (d1, d6, d12, d18) and ASPP's three on
# 2048 -> 256 x 17 x 17, forward / dx / dw, ours (`kernels/examples/time_conv.rs`, medians of 10
# calls) then PyTorch (`benches/torch/convs.py` on the same shapes, medians of 10), twice.
# Usage: benches/single_convs.sh PYTHON   (a Python with torch; run from the repository root,
# after `cargo build --release -p kernels --example time_conv`)
set -e
py=${1:-python3}
tc=target/release/examples/time_conv
for r in 1 2; do
  for s in "256 33 256 1" "256 33 256 6" "256 33 256 12" "256 33 256 18" "2048 17 256 6" "2048 17 256 12" "2048 17 256 18"; do
    set -- $s
    printf "ours %s fwd %s dx %s dw %s\n" "$s" "$($tc 2 $1 $2 $3 3 1 $4 0 10 | cut -d' ' -f2)" \
      "$($tc 2 $1 $2 $3 3 1 $4 1 10 | cut -d' ' -f2)" "$($tc 2 $1 $2 $3 3 1 $4 2 10 | cut -d' ' -f2)"
  done
  "$py" benches/torch/convs.py --shapes benches/results/single-convs-shapes.json --iters 10 --json | "$py" -c "
import json, sys
for c in json.load(sys.stdin)['convs']:
    print('torch %d %d %d %d fwd %.3f dx %.3f dw %.3f' % (c['c_in'], c['h'], c['c_out'], c['dilation'][0], c['torch_fwd_ms'], c['torch_dx_ms'], c['torch_dw_ms']))"
done
