#!/usr/bin/env bash
# Full-scale runs of the mitigation methods on one GPU (p_bias 0.7, 30 epochs, seed 0, explicit =
# distractor_shape for the explicit methods), most important first; each result is written as it ends.
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}; mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
METHODS=${METHODS:-"lff upweight group_dro sd rubi irm lnl"}
DATA=/tmp/bmnist-full
python3 -m biasbench.cli data generate --out $DATA > "$OUT/methods.txt" 2>&1
for m in $METHODS; do
  start=$(date +%s)
  python3 -m biasbench.cli train --data $DATA --out /tmp/m-runs --method "$m" --tracker none --no-progress \
      > "$OUT/$m.txt" 2> "$OUT/$m.log"
  echo "$m: exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/methods.txt"
  python3 -m biasbench.cli runs /tmp/m-runs > "$OUT/runs.txt" 2>&1
done
