#!/usr/bin/env bash
# Run CI as it runs after a session: `bash .ci/run` in a clean clone of this repository's HEAD, with the
# shared folder beside it, then delete the clone (its .venv alone is 6.6 GB; clones left behind by earlier
# checks once filled the disk and CI's pip failed with "No space left on device").
# Usage: scripts/ci_clean_clone.sh [LOG]     (LOG defaults to /tmp/ci-clean-clone.log)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
shared=$(cd "$repo/../shared" && pwd)
log=${1:-/tmp/ci-clean-clone.log}
work=$(mktemp -d /tmp/biasbench-ci.XXXXXX)
trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/main"
ln -s "$shared" "$work/shared"
echo "clean clone of $(git -C "$repo" rev-parse --short HEAD) in $work/main; log: $log"
start=$(date +%s)
set +e
(cd "$work/main" && bash .ci/run) > "$log" 2>&1
rc=$?
set -e
echo "exit $rc after $(( $(date +%s) - start )) s"
tail -n 3 "$log"
exit $rc
