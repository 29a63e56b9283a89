#!/usr/bin/env bash
# One-call GPU check for the device machine (writes results under $OUT):
#   rendering speed on the GPU, training throughput (bare step vs loop, fp32 and bf16+channels_last),
#   and StdM on the full default dataset (p_bias 0.7, 30 epochs) for SEEDS seeds.
# Needs only torch, numpy, Pillow and tqdm (MLflow is not used: --tracker none).
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out}
SEEDS=${SEEDS:-"0 1 2"}
EPOCHS=${EPOCHS:-30}
NTRAIN=${NTRAIN:-50000}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
PY=${PY:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $PY -c "import torch, numpy, PIL, tqdm; print('torch', torch.__version__, 'numpy', numpy.__version__, 'cuda', torch.cuda.is_available())"; } 2>&1 | tee "$OUT/env.txt"
$PY benchmarks/generate.py --device cuda 2>&1 | tee "$OUT/generate_gpu.txt"
$PY benchmarks/train.py --device cuda 2>&1 | tee "$OUT/train_gpu.txt"
DATA=/tmp/bmnist-full
$PY -m biasbench.cli data generate --out $DATA --n-train "$NTRAIN" 2>&1 | tee "$OUT/stdm.txt"
for s in $SEEDS; do
  start=$(date +%s)
  $PY -m biasbench.cli train --data $DATA --out /tmp/gpu-runs --seed "$s" --epochs "$EPOCHS" \
      --tracker none --no-progress > "$OUT/stdm_seed$s.txt" 2> "$OUT/stdm_seed$s.log"
  echo "seed $s: exit $? in $(( $(date +%s) - start )) s" | tee -a "$OUT/stdm.txt"
done
$PY -m biasbench.cli runs /tmp/gpu-runs 2>&1 | tee -a "$OUT/stdm.txt"
