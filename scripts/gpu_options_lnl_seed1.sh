#!/usr/bin/env bash
# One device call for the next GPU session (written in the sixth session; about 560 s on an H100; run from the
# repository root with OUT set, as the device tool does):
#   bash scripts/gpu_options_lnl_seed1.sh > $OUT/log.txt 2>&1; tail -c 6000 $OUT/log.txt
# 1. times the first block's options in the captured loop: the new default (the Triton pool, pool_kernel=auto)
#    and PyTorch's pool (torchpool), the sixth session's best (fold+tconv+tfwd) beside the new combinations
#    (conv1's Triton forward with the plain Triton pool, the kernel-summed addend gradient, and the seventh
#    session's Triton weight gradient, twg), checks them on the device, and profiles the fastest set that passed
#    (about 110 s);
# 2. LNL at seed 1 with and without the fold (docs/reproduction/lnl-seed1-check.yaml, 4 trials in 4 threads,
#    about 3 minutes): tells whether the fold or the seed made four of seed 1's LNL runs unstable;
# 3. finishes the seed-1 Table-1 sweep with the options it was started with (fold + Triton pool; 12 trials
#    left, about 4 minutes), from the records committed in docs/reproduction/paper-table1-seed1.
# Each part writes its own files under $OUT (bench/, lnl.txt and lnl-check.tgz, s1/); a part cut by the
# deadline still leaves its finished records, and a second call on the warm machine continues:
#   PARTS="lnl s1" DEADLINE=<seconds the lease has left, less 30> bash scripts/gpu_options_lnl_seed1.sh ...
# (finished trials are skipped, interrupted ones resume from their last epoch's checkpoint).
set -uo pipefail
: "${OUT:?set OUT to the output folder}"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
DEADLINE=${DEADLINE:-560}
DEVICE=${DEVICE:-auto}  # DEVICE=cpu SCALE=tiny GRAPHS=off DEADLINE=300: a check of the script on a CPU
SCALE=${SCALE:-full}
GRAPHS=${GRAPHS:-on}
PARTS=${PARTS:-"bench lnl s1"}
want() { [[ " $PARTS " == *" $1 "* ]]; }
start=$(date +%s)
left() { echo $(( DEADLINE - ($(date +%s) - start) )); }
stamp() { echo "[$(( $(date +%s) - start ))s] $*"; }

[ -d .gpu/sweep-s1 ] || { mkdir -p .gpu && cp -r docs/reproduction/paper-table1-seed1/sweep .gpu/sweep-s1; }

want bench && stamp "1. options" && python3 benchmarks/gpu.py --out "$OUT/bench" --benchmarks train,firstblock,anatomy --train-only graphs \
    --train-options torchpool,fold+triton,fold+tconv+tfwd,fold+triton+tfwd,fold+triton+tfwd+ksum,fold+triton+tfwd+twg,triton+tfwd+ksum,triton+tfwd+twg \
    --no-bench-compile --bench-limit 60 --model-options measured --skip-sweep --device "$DEVICE" 2>&1 | grep -v "^\[ *[0-9]*s\] *\["

if want lnl; then
  reserve=10; want s1 && reserve=250  # seconds kept for part 3
  budget=$(( $(left) - reserve ))
  stamp "2. LNL check ($budget s at most)"
  timeout $budget python3 -m biasbench.cli sweep docs/reproduction/lnl-seed1-check.yaml --data .gpu/data \
      --out .gpu/lnl-check --seeds 1 --scale "$SCALE" --device "$DEVICE" --streams 4 --cuda-graphs "$GRAPHS" \
      > "$OUT/lnl.txt" 2>&1
  stamp "LNL check: exit $?"
  grep -v "^\[ *[0-9]*s\] *\[" "$OUT/lnl.txt" | tail -8
  [ -d .gpu/lnl-check ] && (cd .gpu && find lnl-check -name "*.json" | tar czf "$OUT/lnl-check.tgz" -T -)
fi

want s1 && stamp "3. seed 1, the rest ($(( $(left) - 10 )) s at most)" && python3 benchmarks/gpu.py --out "$OUT/s1" --skip-benchmarks --model-kwarg fold_input_bn=true --model-kwarg pool_kernel=triton \
    --seed 1 --streams 4 --cuda-graphs "$GRAPHS" --fuse 1 --first lnl,lff,stdm,sd,rubi,irm,upweight,group_dro \
    --sweep-dir .gpu/sweep-s1 --data .gpu/data --deadline $(( $(left) - 10 )) --archive --no-report \
    --scale "$SCALE" --device "$DEVICE" 2>&1 \
    | grep -v "^\[ *[0-9]*s\] *\["
rm -f "$OUT/s1/sweep-trials.yaml"
stamp "done"
