#!/usr/bin/env bash
# The Triton kernels against the device machines' Triton, without a GPU: Triton 3.6.0 (the version beside
# torch 2.11 on the lent H100/H200 machines, /work/.library/device/KINDS.md) installed into a scratch folder
# and put ahead of the project's own (3.8, torch 2.14.1's) on PYTHONPATH, then
#   - the ahead-of-time compile tests (PTX for sm_90 and, through that Triton's ptxas, a cubin without spills;
#     vector loads and stores asserted), which is what the device's JIT will do with the kernels;
#   - with ALL=1 also every other Triton test through that version's interpreter.
# Usage: scripts/device_triton_check.sh [TRITON_VERSION]     (run from anywhere; needs .venv: make install)
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:-3.6.0}
target=${TRITON_TARGET:-/tmp/biasbench-triton-$version}
[ -d "$target/triton" ] || .venv/bin/pip install -q --no-deps --target "$target" "triton==$version"
PYTHONPATH="$target" .venv/bin/python -c "import triton; print('triton', triton.__version__, 'from', triton.__file__)"
filter=(-k compile)
[ "${ALL:-0}" = 1 ] && filter=()
PYTHONPATH="$target" .venv/bin/python -m pytest -p no:cacheprovider -q tests/test_maxpool.py tests/test_conv_pool.py \
    "${filter[@]}"
