#!/usr/bin/env bash
# The README's main job: a small end-to-end demo. Called by `make demo` after installation.
# Builds a small Biased MNIST (full 96x96 images, 5,000 training images), prints its statistics
# and writes a sample grid PNG.
set -euo pipefail
OUT=${1:-demo-out}
BB=${BIASBENCH:-.venv/bin/biasbench}
mkdir -p "$OUT"
echo "== 1. Biased MNIST (p_bias 0.7, paper mode) -> $OUT/data"
"$BB" data generate --out "$OUT/data" --n-train 5000 --n-val 1000 --n-test 2000
echo
echo "== 2. Statistics"
"$BB" data stats "$OUT/data"
echo
echo "== 3. Sample grid"
"$BB" data show "$OUT/data" --out "$OUT/samples.png"
