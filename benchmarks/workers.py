"""Wall time of a local sweep one unit at a time against ``--workers N`` processes (each with its share of the
torch threads, ``sweep.runners.worker_threads``). Each configuration runs `biasbench sweep` in a fresh process on
its own output folder (the dataset is generated once, before the timings) and prints a table.

    python benchmarks/workers.py [--preset more-methods] [--scale tiny] [--workers 1,2]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="more-methods")
    ap.add_argument("--scale", default="tiny")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        base = [sys.executable, "-m", "biasbench.cli", "sweep", args.preset, "--scale", args.scale, "--data", str(data),
                "--tracker", "none"]
        from biasbench.sweep.spec import expand, load_spec
        from biasbench.sweep.trial import ensure_dataset

        for trial in expand(load_spec(args.preset), args.scale):  # (a no-op once a dataset exists)
            ensure_dataset(data, trial.dataset)
        rows = []
        for w in counts:
            start = time.perf_counter()
            subprocess.run(base + ["--out", str(Path(tmp) / f"w{w}"), "--workers", str(w)], check=True, env=env,
                           capture_output=True)
            rows.append((w, time.perf_counter() - start))
    print(f"{args.preset} --scale {args.scale}, {os.cpu_count()} CPUs")
    print(f"{'workers':>8s}{'wall s':>10s}{'speed-up':>10s}")
    for w, t in rows:
        print(f"{w:>8d}{t:>10.1f}{rows[0][1] / t:>10.2f}")


if __name__ == "__main__":
    main()
