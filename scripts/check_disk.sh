#!/usr/bin/env bash
# Warn (never fail) when the disk holding DIR has less than GIB GiB free.
# Usage: scripts/check_disk.sh DIR GIB
# biasbench's installation is about 6.6 GB in .venv (torch's CUDA build with its CUDA libraries: 5.3 GB); a
# clean clone's `bash .ci/run` took 6.8 GiB of the disk at its peak (pip's cache off, as the Makefile sets it;
# with the cache, a second copy of the ~3 GB of wheels stays behind). A short disk otherwise shows up only as
# pip's "OSError: [Errno 28] No space left on device".
set -euo pipefail
dir=${1:-.}
need_gib=${2:-8}
free_kib=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
if [ -n "$free_kib" ] && [ "$free_kib" -lt $((need_gib * 1024 * 1024)) ]; then
    echo "warning: $(df -Ph "$dir" | awk 'NR == 2 {print $4}') free on the disk of $dir; installing biasbench" \
         "(PyTorch's CUDA build) needs about ${need_gib} GB at its peak. Free some space if pip fails with" \
         "'No space left on device'." >&2
fi
