#!/usr/bin/env bash
# StdM at full scale in fp32 eager (the paper's precision), 3 seeds in parallel on one GPU.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DATA=/tmp/bmnist-full
python3 -m biasbench.cli data generate --out $DATA > "$OUT/fp32.txt" 2>&1
start=$(date +%s)
for s in 0 1 2; do
  python3 -m biasbench.cli train --data $DATA --out /tmp/fp32-runs --seed $s --precision fp32 --channels-last off \
      --tracker none --no-progress > "$OUT/fp32_seed$s.txt" 2>&1 &
done
wait
echo "3 parallel fp32 runs: $(( $(date +%s) - start )) s" | tee -a "$OUT/fp32.txt"
python3 -m biasbench.cli runs /tmp/fp32-runs 2>&1 | tee -a "$OUT/fp32.txt"
